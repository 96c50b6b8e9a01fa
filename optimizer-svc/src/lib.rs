//! NWS Watermark Optimizer: decode → fit the box → adaptive text watermark →
//! encode, served over gRPC.
#![forbid(unsafe_code)]

mod config;
mod error;
pub mod pipeline;
mod service;

use std::net::SocketAddr;

use nws_watermark::{grpc::GrpcServer, pb::optimizer_server::OptimizerServer};

pub use config::OptimizerConfig;
pub use error::OptimizeError;

use crate::service::OptimizerService;

/// An Optimizer server, bound and ready to serve.
pub struct App {
    server: GrpcServer,
}

/// Binds the listener and sets up the worker pool; nothing is served until
/// [`App::run_until_stopped`].
pub async fn build(config: OptimizerConfig) -> anyhow::Result<App> {
    let service = OptimizerService::new(&config);
    let server = GrpcServer::bind("optimizer", config.optimizer_addr)
        .await?
        .add_service(OptimizerServer::new(service))
        .await;
    Ok(App { server })
}

impl App {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until `shutdown` completes, then drains for at most `drain_timeout`.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
        drain_timeout: std::time::Duration,
    ) -> anyhow::Result<()> {
        self.server.run_until_stopped(shutdown, drain_timeout).await
    }
}
