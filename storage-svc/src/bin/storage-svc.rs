use std::process::ExitCode;

use clap::Parser;
use nws_runtime::config::{CommonConfig, exit_code, parse_or_exit};
use storage_svc::StorageConfig;

/// NWS Watermark Storage service.
#[derive(Parser)]
#[command(name = "storage-svc", version)]
struct Cli {
    #[command(flatten)]
    storage: StorageConfig,
    #[command(flatten)]
    common: CommonConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = parse_or_exit();
    nws_runtime::telemetry::init(cli.common.log_format);
    let run = async {
        let app = storage_svc::build(cli.storage).await?;
        app.run_until_stopped(nws_runtime::shutdown::signal(), cli.common.drain())
            .await
    };
    exit_code(run.await)
}
