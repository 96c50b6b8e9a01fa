//! The Optimizer's own client of the Storage service: it reads the
//! originals `Render` (and a queued job) names, keeps the results it makes,
//! and says whether a result is kept already.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use nws_runtime::{
    config::InvalidSetting,
    grpc::client::{UpstreamChannel, channel_with, finish_in_background},
    grpc::target::UpstreamTarget,
    telemetry::OPTIMIZER,
    tls::UpstreamTls,
};
use nws_watermark::{
    chunk,
    pb::{
        GetRequest, Namespace, PutOptions, PutRequest, StatRequest, put_request,
        storage_client::StorageClient,
    },
    render::ResultKey,
    stream::{self as framed, StreamError},
};
use tonic::Code;

use crate::OptimizeError;

/// Deadline of one Storage call: far above a healthy one (Storage bounds
/// each backend operation itself), so only a stuck connection reaches it.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct OriginalStore {
    client: StorageClient<UpstreamChannel>,
}

impl OriginalStore {
    pub fn connect_lazy(url: UpstreamTarget, tls: &UpstreamTls) -> Result<Self, InvalidSetting> {
        Ok(Self {
            client: StorageClient::new(channel_with(url, OPTIMIZER.name, tls)?),
        })
    }

    /// The original stored under `sha256`, refused before a byte is read
    /// when it is larger than `max_bytes` (NWS_MAX_INPUT_BYTES).
    pub async fn original(&self, sha256: &str, max_bytes: u64) -> Result<Bytes, OptimizeError> {
        let failed = |error: StreamError| match error {
            StreamError::Status(status) if status.code() == Code::NotFound => {
                OptimizeError::OriginalNotFound(sha256.to_owned())
            }
            other => OptimizeError::Storage {
                doing: READING,
                cause: other,
            },
        };
        let responses = self
            .client
            .clone()
            .get(bounded(GetRequest {
                sha256: sha256.to_owned(),
                namespace: Namespace::Originals.into(),
            }))
            .await
            .map_err(|status| failed(status.into()))?
            .into_inner();
        let (info, mut bytes) = framed::open(responses).await.map_err(failed)?;
        if info.size > max_bytes {
            return Err(OptimizeError::TooManyBytes { limit: max_bytes });
        }
        let original = framed::collect(&mut bytes, info.size, max_bytes)
            .await
            .map_err(|cause| OptimizeError::Storage {
                doing: READING,
                cause,
            })?;
        finish_in_background(bytes, "storage failed after sending a whole original");
        Ok(original)
    }

    /// Keeps `bytes` as the result `key`; a result already kept under that
    /// key stays as it is (the same job gives the same bytes).
    pub async fn keep_result(&self, key: ResultKey, bytes: Bytes) -> Result<(), OptimizeError> {
        let options = PutRequest {
            payload: Some(put_request::Payload::Options(PutOptions {
                namespace: Namespace::Results.into(),
                key: key.to_string(),
                ..PutOptions::default()
            })),
        };
        let chunks = chunk::split(bytes).map(|chunk| PutRequest {
            payload: Some(put_request::Payload::Chunk(chunk)),
        });
        self.client
            .clone()
            .put(bounded(stream::iter(std::iter::once(options).chain(chunks))))
            .await
            .map_err(|status| OptimizeError::Storage {
                doing: "keeping the result in storage",
                cause: status.into(),
            })?;
        Ok(())
    }

    /// Whether a result is kept under `key` (a `Stat`, nothing read).
    pub async fn has_result(&self, key: ResultKey) -> Result<bool, OptimizeError> {
        let stat = self
            .client
            .clone()
            .stat(bounded(StatRequest {
                sha256: key.to_string(),
                namespace: Namespace::Results.into(),
            }))
            .await;
        match stat {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(OptimizeError::Storage {
                doing: "looking the result up in storage",
                cause: status.into(),
            }),
        }
    }
}

const READING: &str = "reading the original from storage";

fn bounded<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}
