//! NWS Watermark Storage: objects kept under the SHA-256 of their bytes,
//! deduplicated, written atomically, served over gRPC.
#![forbid(unsafe_code)]

mod config;
mod error;
mod fs_store;
mod key;
mod service;

use nws_watermark::{grpc::GrpcServer, pb::storage_server::StorageServer};

pub use config::StorageConfig;
pub use error::StorageError;
pub use key::ObjectKey;

use crate::{fs_store::FsStore, service::StorageService};

/// A bound server: `local_addr()`, then `run_until_stopped(shutdown, drain_timeout)`.
pub type App = GrpcServer;

/// Opens the store and binds the listener; nothing is served until
/// [`App::run_until_stopped`].
pub async fn build(config: StorageConfig) -> anyhow::Result<App> {
    let store = FsStore::open(&config.data_dir).await?;
    let service = StorageService::new(store, config.max_object_bytes);
    let server = GrpcServer::bind("storage", config.storage_addr)
        .await?
        .add_service(StorageServer::new(service))
        .await;
    Ok(server)
}
