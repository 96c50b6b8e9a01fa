use clap::Parser;
use nws_watermark::config::{CommonConfig, parse_or_exit};
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
async fn main() -> anyhow::Result<()> {
    let cli: Cli = parse_or_exit();
    nws_watermark::telemetry::init(cli.common.log_format);
    let app = storage_svc::build(cli.storage).await?;
    app.run_until_stopped(nws_watermark::shutdown::signal(), cli.common.drain_timeout)
        .await
}
