//! Calls to the Optimizer and Storage services: each with the configured
//! deadline, each error tagged with the upstream that produced it.

use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use nws_runtime::{
    config::InvalidSetting,
    grpc::client::{Unready, UpstreamChannel, channel_with, check_health, finish_in_background},
    telemetry::GATEWAY,
    tls::UpstreamTls,
};
use nws_watermark::{
    pb::{
        DeleteRequest, GetRequest, Namespace, ObjectInfo, OptimizeHeader, PutResponse, RenderPriority,
        StatRequest, optimizer_client::OptimizerClient, storage_client::StorageClient,
    },
    render::RenderJob,
    stream::{self, ByteStream},
};

use crate::error::{ApiError, Upstream};

/// Largest result the gateway holds to serve and cache. The optimizer's
/// box is at most 8192² pixels, whose PNG can approach this.
const MAX_RESULT_BYTES: u64 = 256 * 1024 * 1024;

/// Clients for both upstreams, over channels that connect lazily and
/// reconnect by themselves.
#[derive(Clone)]
pub struct Upstreams {
    optimizer: UpstreamChannel,
    storage: UpstreamChannel,
    timeout: Duration,
}

impl Upstreams {
    /// Over plain-text channels (`http://` URLs), for the unit tests'
    /// inline upstreams.
    #[cfg(test)]
    pub fn connect_lazy(optimizer: Uri, storage: Uri, timeout: Duration) -> Self {
        Self {
            optimizer: nws_runtime::grpc::client::channel(optimizer, GATEWAY.name),
            storage: nws_runtime::grpc::client::channel(storage, GATEWAY.name),
            timeout,
        }
    }

    /// Over TLS, with `tls`, for `https://` URLs.
    pub fn connect_lazy_with(
        optimizer: Uri,
        storage: Uri,
        timeout: Duration,
        tls: &UpstreamTls,
    ) -> Result<Self, InvalidSetting> {
        Ok(Self {
            optimizer: channel_with(optimizer, GATEWAY.name, tls)?,
            storage: channel_with(storage, GATEWAY.name, tls)?,
            timeout,
        })
    }

    pub fn channel(&self, upstream: Upstream) -> UpstreamChannel {
        match upstream {
            Upstream::Optimizer => self.optimizer.clone(),
            Upstream::Storage => self.storage.clone(),
        }
    }

    pub fn storage(&self) -> StorageClient<UpstreamChannel> {
        StorageClient::new(self.storage.clone())
    }

    /// Wraps a message in a request carrying the configured deadline, which
    /// tonic sends as `grpc-timeout` so the server stops work past it too.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// Has the optimizer render `job` from the original Storage keeps, and
    /// keep the result there. Returns the result once its last byte is in:
    /// the optimizer's write to Storage finishes on its own.
    pub async fn render(
        &self,
        job: &RenderJob,
        priority: RenderPriority,
    ) -> Result<(OptimizeHeader, Bytes), ApiError> {
        let read = async {
            let responses = OptimizerClient::new(self.optimizer.clone())
                .render(self.request(job.request(true, priority)))
                .await?
                .into_inner();
            let (header, mut bytes) = stream::open(responses).await?;
            let result = stream::collect(&mut bytes, header.size, MAX_RESULT_BYTES).await?;
            finish_in_background(
                bytes,
                "the optimizer served a result it could not keep in storage",
            );
            Ok((header, result))
        };
        read.await.map_err(ApiError::from_stream(Upstream::Optimizer))
    }

    /// Opens a stored object: its description, then its bytes as a stream.
    /// The future borrows nothing, so it can run on behalf of other requests.
    pub fn open(
        &self,
        namespace: Namespace,
        key: &str,
    ) -> impl Future<Output = Result<(ObjectInfo, ByteStream), ApiError>> + Send + 'static {
        let mut storage = self.storage();
        let request = self.request(GetRequest {
            sha256: key.to_owned(),
            namespace: namespace.into(),
        });
        async move {
            let open = async {
                let responses = storage.get(request).await?.into_inner();
                stream::open(responses).await
            };
            open.await.map_err(ApiError::from_stream(Upstream::Storage))
        }
    }

    /// A stored object's bytes, whole.
    pub async fn read(&self, namespace: Namespace, key: &str) -> Result<Bytes, ApiError> {
        let (info, mut bytes) = self.open(namespace, key).await?;
        let object = stream::collect(&mut bytes, info.size, MAX_RESULT_BYTES)
            .await
            .map_err(ApiError::from_stream(Upstream::Storage))?;
        finish_in_background(bytes, "storage failed after sending a whole object");
        Ok(object)
    }

    /// A stored object's description.
    pub async fn stat(&self, namespace: Namespace, key: &str) -> Result<ObjectInfo, ApiError> {
        self.storage()
            .stat(self.request(StatRequest {
                sha256: key.to_owned(),
                namespace: namespace.into(),
            }))
            .await
            .map_err(ApiError::from_status(Upstream::Storage))?
            .into_inner()
            .info
            .ok_or(ApiError::Protocol {
                upstream: Upstream::Storage,
                what: "Stat answered without the object's info",
            })
    }

    /// Removes an original that turned out to be no image the optimizer can
    /// read, unless an earlier upload stored it.
    pub async fn forget_original(&self, original: &PutResponse) {
        if original.deduplicated {
            return;
        }
        let request = self.request(DeleteRequest {
            sha256: original.sha256.clone(),
            namespace: Namespace::Originals.into(),
        });
        if let Err(status) = self.storage().delete(request).await {
            tracing::warn!(sha256 = %original.sha256, %status, "could not remove an unreadable upload");
        }
    }

    /// Each upstream's answer to its gRPC health check.
    pub async fn readiness(&self) -> [(Upstream, Result<(), Unready>); 2] {
        let (optimizer, storage) = tokio::join!(
            check_health(self.optimizer.clone(), "watermark.v1.Optimizer"),
            check_health(self.storage.clone(), "watermark.v1.Storage"),
        );
        [(Upstream::Optimizer, optimizer), (Upstream::Storage, storage)]
    }
}
