use std::{net::SocketAddr, process::ExitCode};

use nws_mesh::MeshConfig;
use nws_runtime::{
    config::parse_or_exit,
    telemetry::{GATEWAY, OPTIMIZER, STORAGE, Services},
};

#[tokio::main]
async fn main() -> ExitCode {
    let config: MeshConfig = parse_or_exit();
    let common = config.common.clone();
    // One admin listener serves the three services' metrics.
    let admin = SocketAddr::from(([127, 0, 0, 1], 9464));
    nws_runtime::process::run(
        Services(&[GATEWAY, OPTIMIZER, STORAGE]),
        &common,
        Some(admin),
        |shutdown| nws_mesh::run(config, shutdown),
    )
    .await
}
