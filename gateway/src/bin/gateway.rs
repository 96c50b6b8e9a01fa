use gateway::mesh::{self, MeshConfig};
use nws_watermark::config::parse_or_exit;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: MeshConfig = parse_or_exit();
    nws_watermark::telemetry::init(config.common.log_format);
    mesh::run(config, nws_watermark::shutdown::on_signal()).await
}
