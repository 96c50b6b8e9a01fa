use std::process::ExitCode;

use nws_mesh::MeshConfig;
use nws_runtime::config::{exit_code, parse_or_exit};

#[tokio::main]
async fn main() -> ExitCode {
    let config: MeshConfig = parse_or_exit();
    nws_runtime::telemetry::init(config.common.log_format);
    exit_code(nws_mesh::run(config, nws_runtime::shutdown::on_signal()).await)
}
