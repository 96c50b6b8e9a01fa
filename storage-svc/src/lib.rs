//! NWS Watermark Storage: originals kept under the SHA-256 of their bytes
//! and results under their cache keys, deduplicated, written atomically, on
//! the local disk or in an S3 bucket, served over gRPC.
#![forbid(unsafe_code)]

mod backend;
mod config;
mod error;
mod key;
mod service;

use std::{sync::Arc, time::Duration};

use nws_runtime::grpc::GrpcServer;
use nws_watermark::pb::storage_server::{SERVICE_NAME, StorageServer};

pub use config::{BackendKind, S3Config, StorageConfig};
pub use error::StorageError;
pub use key::ObjectKey;

use crate::{
    backend::{Backend, fs::FsStore, s3::S3Store},
    service::StorageService,
};

/// A bound server: `local_addr()`, then `run_until_stopped(shutdown, drain)`.
pub type App = GrpcServer;

/// Opens the configured backend and binds the listener; nothing is served
/// until [`App::run_until_stopped`]. A backend that cannot be reached yet
/// is not fatal: health reports NOT_SERVING until it answers.
pub async fn build(config: StorageConfig) -> anyhow::Result<App> {
    let server = GrpcServer::bind("storage", config.storage_addr).await?;
    match config.storage_backend {
        BackendKind::Fs => serve(server, FsStore::open(&config.data_dir).await?, "fs", &config).await,
        BackendKind::S3 => {
            let store = S3Store::new(&config.s3, config.storage_timeout, config.max_object_bytes)?;
            serve(server, store, "s3", &config).await
        }
    }
}

async fn serve<B: Backend>(
    server: GrpcServer,
    backend: B,
    backend_name: &'static str,
    config: &StorageConfig,
) -> anyhow::Result<App> {
    let backend = Arc::new(backend);
    let timeout = config.storage_timeout;
    let checked = backend.clone();
    let server = server
        .add_service(StorageServer::new(StorageService::new(
            backend,
            backend_name,
            config.max_object_bytes,
            timeout,
        )))
        .await
        .watch_health(SERVICE_NAME, config.storage_health_interval, move || {
            let backend = checked.clone();
            Box::pin(async move { check_within(&*backend, backend_name, timeout).await })
        });
    Ok(server)
}

async fn check_within(
    backend: &impl Backend,
    backend_name: &'static str,
    timeout: Duration,
) -> Result<(), String> {
    service::bounded(backend_name, timeout, service::Operation::Check, backend.check())
        .await
        .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
}
