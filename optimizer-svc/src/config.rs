use std::net::SocketAddr;

use clap::Args;
use nws_runtime::config::parse_size;

/// Optimizer settings; flags with `NWS_*` environment fallbacks.
#[derive(Debug, Clone, Args)]
pub struct OptimizerConfig {
    /// Address the Optimizer gRPC server listens on.
    #[arg(long, env = "NWS_OPTIMIZER_ADDR", default_value = "127.0.0.1:50051")]
    pub optimizer_addr: SocketAddr,

    /// Largest input image accepted, in bytes (e.g. `25MiB`).
    #[arg(long, env = "NWS_MAX_INPUT_BYTES", default_value = "25MiB", value_parser = parse_size)]
    pub max_input_bytes: u64,

    /// Largest input image accepted, in pixels (width × height), checked
    /// from the header before any pixel is decoded.
    #[arg(long, env = "NWS_MAX_PIXELS", default_value_t = 50_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pixels: u64,

    /// Longest side accepted, in pixels.
    #[arg(long, env = "NWS_MAX_SIDE", default_value_t = 40_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_side: u32,

    /// Images processed at once; 0 means one per CPU core.
    #[arg(long, env = "NWS_OPTIMIZER_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// Calls that may wait for a worker (uploading or queued); past it a
    /// call is refused at once with RESOURCE_EXHAUSTED. 0 means four per
    /// worker.
    #[arg(long, env = "NWS_OPTIMIZER_QUEUE", default_value_t = 0)]
    pub queue: usize,
}

impl OptimizerConfig {
    pub(crate) fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    pub(crate) fn queue_length(&self) -> usize {
        if self.queue > 0 {
            self.queue
        } else {
            4 * self.worker_count()
        }
    }
}
