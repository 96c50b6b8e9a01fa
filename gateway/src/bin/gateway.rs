use std::process::ExitCode;

use gateway::mesh::{self, MeshConfig};
use nws_watermark::config::{exit_code, parse_or_exit};

#[tokio::main]
async fn main() -> ExitCode {
    let config: MeshConfig = parse_or_exit();
    nws_watermark::telemetry::init(config.common.log_format);
    exit_code(mesh::run(config, nws_watermark::shutdown::on_signal()).await)
}
