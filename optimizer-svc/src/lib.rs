//! NWS Watermark Optimizer: decode → fit the box → adaptive text watermark →
//! encode, served over gRPC. Images arrive in the call (`Optimize`) or are
//! read from Storage by their hash (`Render`, which can keep the result
//! there too).
#![forbid(unsafe_code)]

mod config;
mod error;
pub mod pipeline;
mod service;
mod storage;

use http::Uri;
use nws_runtime::{grpc::GrpcServer, tls::UpstreamTls};
use nws_watermark::pb::optimizer_server::OptimizerServer;

pub use config::OptimizerConfig;
pub use error::OptimizeError;

use crate::{service::OptimizerService, storage::OriginalStore};

/// A bound server: `local_addr()`, then `run_until_stopped(shutdown, drain)`.
pub type App = GrpcServer;

/// Binds the listener and sets up the worker pool; nothing is served until
/// [`App::run_until_stopped`]. With `storage` (the Storage service's URL;
/// over TLS, with `upstream_tls`, when `https://`), `Render` reads
/// originals from it and keeps results in it; without, only `Optimize` and
/// `Probe` work.
pub async fn build(
    config: OptimizerConfig,
    storage: Option<Uri>,
    upstream_tls: &UpstreamTls,
) -> anyhow::Result<App> {
    let store = storage
        .map(|url| OriginalStore::connect_lazy(url, upstream_tls))
        .transpose()?;
    if store.is_none() {
        tracing::info!("no NWS_STORAGE_URL: Render is unavailable, Optimize and Probe work");
    }
    let service = OptimizerService::new(&config, store);
    let server = GrpcServer::bind("optimizer", config.optimizer_addr)
        .await?
        .add_service(OptimizerServer::new(service))
        .await;
    Ok(server)
}
