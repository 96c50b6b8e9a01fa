//! NWS Watermark Storage: objects kept under the SHA-256 of their bytes,
//! deduplicated, written atomically, served over gRPC.
#![forbid(unsafe_code)]

mod config;
mod error;
mod fs_store;
mod key;
mod service;

use std::net::SocketAddr;

use nws_watermark::{grpc::GrpcServer, pb::storage_server::StorageServer};

pub use config::StorageConfig;
pub use error::StorageError;
pub use key::ObjectKey;

use crate::{fs_store::FsStore, service::StorageService};

/// A Storage server, bound and ready to serve.
pub struct App {
    server: GrpcServer,
}

/// Opens the store and binds the listener; nothing is served until
/// [`App::run_until_stopped`].
pub async fn build(config: StorageConfig) -> anyhow::Result<App> {
    let store = FsStore::open(&config.data_dir).await?;
    let service = StorageService::new(store, config.max_object_bytes);
    let server = GrpcServer::bind("storage", config.storage_addr)
        .await?
        .add_service(StorageServer::new(service))
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
