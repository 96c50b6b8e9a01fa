use std::process::ExitCode;

use clap::Parser;
use http::Uri;
use nws_runtime::config::{CommonConfig, exit_code, parse_or_exit, parse_upstream_url};
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
    nws_runtime::telemetry::init(cli.common.log_format);
    let run = async {
        let app = optimizer_svc::build(cli.optimizer, cli.storage_url).await?;
        app.run_until_stopped(nws_runtime::shutdown::signal(), cli.common.drain())
            .await
    };
    exit_code(run.await)
}
