//! NWS Watermark Optimizer: decode → fit the box → adaptive text watermark →
//! encode, served over gRPC.
#![forbid(unsafe_code)]

mod config;
mod error;
pub mod pipeline;
mod service;

use nws_watermark::{grpc::GrpcServer, pb::optimizer_server::OptimizerServer};

pub use config::OptimizerConfig;
pub use error::OptimizeError;

use crate::service::OptimizerService;

/// A bound server: `local_addr()`, then `run_until_stopped(shutdown, drain_timeout)`.
pub type App = GrpcServer;

/// Binds the listener and sets up the worker pool; nothing is served until
/// [`App::run_until_stopped`].
pub async fn build(config: OptimizerConfig) -> anyhow::Result<App> {
    let service = OptimizerService::new(&config);
    let server = GrpcServer::bind("optimizer", config.optimizer_addr)
        .await?
        .add_service(OptimizerServer::new(service))
        .await;
    Ok(server)
}
