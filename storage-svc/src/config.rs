use std::{net::SocketAddr, path::PathBuf};

use clap::Args;
use nws_watermark::config::parse_size;

/// Storage settings; flags with `NWS_*` environment fallbacks.
#[derive(Debug, Clone, Args)]
pub struct StorageConfig {
    /// Address the Storage gRPC server listens on.
    #[arg(long, env = "NWS_STORAGE_ADDR", default_value = "127.0.0.1:50052")]
    pub storage_addr: SocketAddr,

    /// Directory that holds the stored objects (created when missing).
    #[arg(long, env = "NWS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Largest object a Put accepts (e.g. `1GiB`).
    #[arg(long, env = "NWS_STORAGE_MAX_OBJECT_BYTES", default_value = "1GiB", value_parser = parse_size)]
    pub max_object_bytes: u64,
}
