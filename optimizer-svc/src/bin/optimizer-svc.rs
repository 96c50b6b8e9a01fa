use std::{net::SocketAddr, process::ExitCode};

use clap::Parser;
use http::Uri;
use nws_runtime::{
    config::{CommonConfig, parse_or_exit, parse_upstream_url},
    policy::{Policy, Role},
    telemetry::{OPTIMIZER, Services},
};
use optimizer_svc::OptimizerConfig;

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
    storage_url: Option<Uri>,

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
            let app = optimizer_svc::build(cli.optimizer, cli.storage_url, &upstream_tls)
                .await?
                .with_tls(tls)
                .with_policy(policy);
            app.run_until_stopped(shutdown.cancelled_owned(), cli.common.drain())
                .await
        },
    )
    .await
}
