use std::{net::SocketAddr, process::ExitCode};

use clap::Parser;
use nws_jobs::JobsConfig;
use nws_runtime::{
    config::{CommonConfig, SecretUrl, parse_or_exit, parse_redis_url, parse_upstream_url},
    grpc::target::UpstreamTarget,
    policy::{Policy, Role},
    telemetry::{OPTIMIZER, Services},
};
use optimizer_svc::{JobSource, OptimizerConfig};

// Every allocation through jemalloc, the C codecs' too: it hands idle memory
// back to the system (BENCHMARKS.md, "Memory").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// NWS Watermark Optimizer service.
#[derive(Parser)]
#[command(name = "optimizer-svc", version)]
struct Cli {
    #[command(flatten)]
    optimizer: OptimizerConfig,

    /// URL of the Storage gRPC service (e.g. `http://storage:50052`), which
    /// Render reads originals from and keeps results in. Unset: Render is
    /// refused; Optimize and Probe work.
    #[arg(long, env = "NWS_STORAGE_URL", value_parser = parse_upstream_url)]
    storage_url: Option<UpstreamTarget>,

    #[command(flatten)]
    jobs: JobsConfig,

    /// Redis where the status of durable jobs is recorded for the gateways
    /// (the same NWS_REDIS_URL as theirs). Unset: jobs still run, and a
    /// gateway sees one only once its result is stored.
    #[arg(long, env = "NWS_REDIS_URL", value_parser = parse_redis_url, hide_env_values = true)]
    redis_url: Option<SecretUrl>,

    #[command(flatten)]
    common: CommonConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = parse_or_exit();
    let admin = SocketAddr::from(([127, 0, 0, 1], 9465));
    nws_runtime::process::run(
        Services(&[OPTIMIZER]),
        &cli.common,
        Some(admin),
        async |shutdown| {
            let tls = cli.common.tls.load()?;
            let upstream_tls = cli.common.upstream_tls.load()?;
            let policy = Policy::build(&cli.common.policy, Role::Service, shutdown.clone()).await?;
            let jobs = JobSource {
                config: &cli.jobs,
                redis: cli.redis_url.as_ref(),
            };
            let app = optimizer_svc::build(
                cli.optimizer,
                cli.storage_url
                    .map(|url| url.resolved_every(cli.common.resolve_interval)),
                &upstream_tls,
                jobs,
            )
            .await?
            .with_tls(tls)
            .with_policy(policy);
            app.run_until_stopped(shutdown.cancelled_owned(), cli.common.drain())
                .await
        },
    )
    .await
}
