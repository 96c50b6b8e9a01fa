use std::{net::SocketAddr, process::ExitCode};

use nws_mesh::MeshConfig;
use nws_runtime::{
    config::parse_or_exit,
    telemetry::{GATEWAY, OPTIMIZER, STORAGE, Services},
};

// Every allocation through jemalloc, the C codecs' too: it hands idle memory
// back to the system (BENCHMARKS.md, "Memory").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
