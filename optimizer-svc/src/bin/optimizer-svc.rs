use std::process::ExitCode;

use clap::Parser;
use nws_watermark::config::{CommonConfig, exit_code, parse_or_exit};
use optimizer_svc::OptimizerConfig;

/// NWS Watermark Optimizer service.
#[derive(Parser)]
#[command(name = "optimizer-svc", version)]
struct Cli {
    #[command(flatten)]
    optimizer: OptimizerConfig,
    #[command(flatten)]
    common: CommonConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = parse_or_exit();
    nws_watermark::telemetry::init(cli.common.log_format);
    let run = async {
        let app = optimizer_svc::build(cli.optimizer).await?;
        app.run_until_stopped(nws_watermark::shutdown::signal(), cli.common.drain_timeout)
            .await
    };
    exit_code(run.await)
}
