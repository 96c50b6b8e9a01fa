use std::{net::SocketAddr, time::Duration};

use clap::Args;
use nws_runtime::config::{parse_duration, parse_size};

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

    /// Most pixels an animation kept frame by frame (`animated=keep`) may
    /// have in all: frames × canvas width × canvas height, counted from the
    /// container before any frame is decoded. Bounds the CPU an animation
    /// costs, as NWS_MAX_PIXELS bounds a still image's memory: a GIF of
    /// thousands of tiny frames on a large canvas is refused at once.
    /// Each frame is also held to NWS_MAX_PIXELS and NWS_MAX_SIDE.
    #[arg(long, env = "NWS_MAX_ANIMATION_PIXELS", default_value_t = 100_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_animation_pixels: u64,

    /// Longest side accepted, in pixels.
    #[arg(long, env = "NWS_MAX_SIDE", default_value_t = 40_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_side: u32,

    /// Images processed at once; 0 means one per CPU core.
    #[arg(long, env = "NWS_OPTIMIZER_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// Longest expected wait for a worker a caller is admitted with (e.g.
    /// `2s`): a call whose expected start (the calls ahead of it ÷ workers
    /// × the measured time a call holds a worker) is later is refused at
    /// once with RESOURCE_EXHAUSTED and a RetryInfo saying when the line
    /// will have room. Calls for a waiting caller only: queued jobs wait
    /// as long as it takes, background renders need an idle worker.
    #[arg(long, env = "NWS_QUEUE_WAIT", default_value = "2s", value_parser = parse_duration)]
    pub queue_wait: Duration,

    /// Calls that may be admitted beyond one per worker (uploading, or
    /// waiting for a worker), of every priority: a memory bound, since each
    /// holds its input bytes (up to NWS_MAX_INPUT_BYTES). Past workers +
    /// this, a call is refused at once with RESOURCE_EXHAUSTED.
    /// NWS_QUEUE_WAIT is what bounds the waiting line; this ceiling only
    /// stops a burst of small images from holding more memory than planned.
    /// 0 means sixteen per worker.
    #[arg(long, env = "NWS_OPTIMIZER_QUEUE", default_value_t = 0)]
    pub queue: usize,
}

/// Calls admitted beyond the workers', per worker, when NWS_OPTIMIZER_QUEUE
/// is 0.
const CALLS_PER_WORKER: usize = 16;

impl OptimizerConfig {
    pub(crate) fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// The most calls admitted at once: the workers' and
    /// NWS_OPTIMIZER_QUEUE's.
    pub(crate) fn call_ceiling(&self) -> usize {
        let queue = if self.queue > 0 {
            self.queue
        } else {
            CALLS_PER_WORKER * self.worker_count()
        };
        self.worker_count() + queue
    }
}
