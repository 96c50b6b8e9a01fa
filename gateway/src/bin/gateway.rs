use std::process::ExitCode;

use clap::Parser;
use gateway::GatewayConfig;
use nws_runtime::{
    config::{CommonConfig, parse_or_exit, parse_upstream_url},
    grpc::target::UpstreamTarget,
    telemetry::{GATEWAY, Services},
};

// Every allocation through jemalloc, the C codecs' too: it hands idle memory
// back to the system (BENCHMARKS.md, "Memory").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// NWS Watermark gateway: the HTTP edge, in front of Optimizer and Storage
/// services started apart (for everything in one process, run `nws-mesh`).
#[derive(Parser)]
#[command(name = "gateway", version)]
struct Cli {
    #[command(flatten)]
    gateway: GatewayConfig,

    /// URL of the Optimizer gRPC service, e.g. `http://optimizer:50051`, or
    /// `dns:///optimizer-headless:50051` to spread calls over every address
    /// of the name (NWS_OPTIMIZER_ROUTING says how).
    #[arg(long, env = "NWS_OPTIMIZER_URL", value_parser = parse_upstream_url)]
    optimizer_url: UpstreamTarget,

    /// URL of the Storage gRPC service, e.g. `http://storage:50052` (or
    /// `dns:///…`, balanced by load).
    #[arg(long, env = "NWS_STORAGE_URL", value_parser = parse_upstream_url)]
    storage_url: UpstreamTarget,

    #[command(flatten)]
    common: CommonConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = parse_or_exit();
    // The gateway's /metrics is on its HTTP port: no admin listener unless asked.
    nws_runtime::process::run(Services(&[GATEWAY]), &cli.common, None, async |shutdown| {
        let tls = cli.common.tls.load()?;
        let upstream_tls = cli.common.upstream_tls.load()?;
        let app = gateway::build(
            &cli.gateway,
            &cli.common.policy,
            cli.optimizer_url.resolved_every(cli.common.resolve_interval),
            cli.storage_url.resolved_every(cli.common.resolve_interval),
            &upstream_tls,
        )
        .await?
        .with_tls(tls);
        app.run_until_stopped(shutdown.cancelled_owned(), cli.common.drain())
            .await
    })
    .await
}
