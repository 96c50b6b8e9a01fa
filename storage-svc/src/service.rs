//! The `watermark.v1.Storage` gRPC service over any [`Backend`]; every
//! backend operation runs under the configured deadline.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use futures_util::{Stream, StreamExt as _, stream};
use nws_watermark::{
    chunk, media,
    pb::{
        DeleteRequest, DeleteResponse, GetRequest, GetResponse, ObjectInfo, PutOptions, PutRequest,
        PutResponse, StatRequest, StatResponse, get_response, put_request, storage_server::Storage,
    },
};
use sha2::{Digest as _, Sha256};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use nws_runtime::telemetry::STORAGE;
use tracing::{Span, field::Empty};

use crate::{
    ObjectKey, StorageError,
    backend::{Backend, Namespace, ObjectMeta, Upload},
};

pub struct StorageService<B> {
    backend: Arc<B>,
    /// `fs` or `s3`: the `backend` label of the metrics.
    backend_name: &'static str,
    max_object_bytes: u64,
    timeout: Duration,
}

/// Where a Put goes, from its options.
struct PutTarget {
    namespace: Namespace,
    /// Known before the bytes: a result's key, or an original's expected hash.
    key: Option<ObjectKey>,
    expected_sha256: Option<ObjectKey>,
}

impl PutTarget {
    fn from_options(options: PutOptions) -> Result<Self, StorageError> {
        let namespace = Namespace::from_wire(options.namespace)?;
        let expected_sha256 = match options.expected_sha256.as_str() {
            "" => None,
            hash => Some(ObjectKey::parse(hash)?),
        };
        let key = match (namespace, options.key.as_str()) {
            (Namespace::Originals, "") => expected_sha256,
            (Namespace::Originals, _) => {
                return Err(StorageError::BadRequest(
                    "an original's key is the SHA-256 of its bytes: leave `key` empty (use expected_sha256)",
                ));
            }
            (Namespace::Results, "") => {
                return Err(StorageError::BadRequest(
                    "a result needs its `key` in the options",
                ));
            }
            (Namespace::Results, key) => Some(ObjectKey::parse(key)?),
        };
        Ok(Self {
            namespace,
            key,
            expected_sha256,
        })
    }
}

impl<B: Backend> StorageService<B> {
    pub fn new(
        backend: Arc<B>,
        backend_name: &'static str,
        max_object_bytes: u64,
        timeout: Duration,
    ) -> Self {
        metrics::describe_histogram!(
            "nws_storage_backend_operation_duration_seconds",
            metrics::Unit::Seconds,
            "Backend operations by backend, operation and outcome (ok, not_found, error, timeout)"
        );
        Self {
            backend,
            backend_name,
            max_object_bytes,
            timeout,
        }
    }

    #[tracing::instrument(
        name = "storage.put",
        skip_all,
        fields(
            nws.storage.backend = self.backend_name,
            nws.storage.namespace = Empty,
            nws.storage.bytes = Empty,
            nws.storage.deduplicated = Empty,
        )
    )]
    async fn put(&self, mut upload: Streaming<PutRequest>) -> Result<PutResponse, StorageError> {
        let mut pending_chunk = None;
        let target = match next(&mut upload).await?.map(|m| m.payload) {
            Some(Some(put_request::Payload::Options(options))) => PutTarget::from_options(options)?,
            Some(Some(put_request::Payload::Chunk(chunk))) => {
                pending_chunk = Some(chunk);
                PutTarget::from_options(PutOptions::default())?
            }
            Some(None) => return Err(no_payload()),
            None => PutTarget::from_options(PutOptions::default())?,
        };

        // A key known in advance that is already stored needs no write: the
        // bytes are still read, to check the limit and the expected hash.
        let already_stored = match &target.key {
            Some(key) => self.exists(target.namespace, key).await?,
            None => false,
        };
        let mut writer = if already_stored {
            None
        } else {
            Some(
                bounded(
                    self.backend_name,
                    self.timeout,
                    Operation::BeginPut,
                    self.backend.begin_put(target.namespace, target.key.as_ref()),
                )
                .await?,
            )
        };

        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut head = Vec::with_capacity(media::SNIFF_LEN);
        loop {
            let chunk = match pending_chunk.take() {
                Some(chunk) => chunk,
                None => match next(&mut upload).await?.map(|m| m.payload) {
                    Some(Some(put_request::Payload::Chunk(chunk))) => chunk,
                    Some(Some(put_request::Payload::Options(_))) => {
                        return Err(StorageError::BadRequest(
                            "options may only come in the first message",
                        ));
                    }
                    Some(None) => return Err(no_payload()),
                    None => break,
                },
            };
            size += chunk.len() as u64;
            if size > self.max_object_bytes {
                return Err(StorageError::TooLarge {
                    limit: self.max_object_bytes,
                });
            }
            if head.len() < media::SNIFF_LEN {
                let take = (media::SNIFF_LEN - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
            }
            hasher.update(&chunk);
            if let Some(writer) = writer.as_mut() {
                bounded(
                    self.backend_name,
                    self.timeout,
                    Operation::Write,
                    writer.write(chunk),
                )
                .await?;
            }
        }

        let content_sha256 = ObjectKey::from_digest(&hasher.finalize().into());
        if let Some(expected) = target.expected_sha256
            && expected != content_sha256
        {
            return Err(StorageError::HashMismatch {
                expected: expected.to_string(),
                actual: content_sha256.to_string(),
            });
        }
        let key = target.key.unwrap_or(content_sha256);
        let deduplicated = match writer {
            Some(writer) => {
                bounded(
                    self.backend_name,
                    self.timeout,
                    Operation::Commit,
                    writer.commit(&key),
                )
                .await?
            }
            None => true,
        };
        let span = Span::current();
        span.record("nws.storage.namespace", target.namespace.prefix());
        span.record("nws.storage.bytes", size);
        span.record("nws.storage.deduplicated", deduplicated);
        tracing::info!(%key, namespace = target.namespace.prefix(), size, deduplicated, "put");
        Ok(PutResponse {
            sha256: key.to_string(),
            size,
            deduplicated,
            media_type: media::sniff_media_type(&head).to_owned(),
        })
    }

    async fn exists(&self, namespace: Namespace, key: &ObjectKey) -> Result<bool, StorageError> {
        match bounded(
            self.backend_name,
            self.timeout,
            Operation::Stat,
            self.backend.stat(namespace, key),
        )
        .await
        {
            Ok(_) => Ok(true),
            Err(StorageError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

async fn next(upload: &mut Streaming<PutRequest>) -> Result<Option<PutRequest>, StorageError> {
    upload.message().await.map_err(StorageError::Upload)
}

fn no_payload() -> StorageError {
    StorageError::BadRequest("a Put message carries neither options nor a chunk")
}

/// A backend operation: its metric label, and what it was doing in words
/// for error messages.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Operation {
    BeginPut,
    Write,
    Commit,
    Stat,
    Get,
    Read,
    Delete,
    Check,
}

impl Operation {
    fn label(self) -> &'static str {
        match self {
            Operation::BeginPut => "begin_put",
            Operation::Write => "write",
            Operation::Commit => "commit",
            Operation::Stat => "stat",
            Operation::Get => "get",
            Operation::Read => "read",
            Operation::Delete => "delete",
            Operation::Check => "check",
        }
    }

    fn action(self) -> &'static str {
        match self {
            Operation::BeginPut => "start a write",
            Operation::Write => "store a chunk",
            Operation::Commit => "commit an object",
            Operation::Stat => "describe an object",
            Operation::Get => "open an object",
            Operation::Read => "read an object",
            Operation::Delete => "delete an object",
            Operation::Check => "answer a health check",
        }
    }
}

/// Runs a backend operation under the deadline, and counts it: latency by
/// backend, operation and outcome (`ok`, `not_found`, `error`, `timeout`).
pub(crate) async fn bounded<T>(
    backend: &'static str,
    timeout: Duration,
    operation: Operation,
    work: impl Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    let started = std::time::Instant::now();
    let result = match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(StorageError::Timeout {
            action: operation.action(),
            after: timeout,
        }),
    };
    let outcome = match &result {
        Ok(_) => "ok",
        Err(StorageError::NotFound(_)) => "not_found",
        Err(StorageError::Timeout { .. }) => "timeout",
        Err(_) => "error",
    };
    metrics::histogram!(
        "nws_storage_backend_operation_duration_seconds",
        "service" => STORAGE.name,
        "backend" => backend,
        "operation" => operation.label(),
        "outcome" => outcome,
    )
    .record(started.elapsed());
    result
}

/// The object a Get, Stat or Delete names.
fn object_named(sha256: &str, namespace: i32) -> Result<(Namespace, ObjectKey), StorageError> {
    Ok((Namespace::from_wire(namespace)?, ObjectKey::parse(sha256)?))
}

fn object_info(key: &ObjectKey, meta: ObjectMeta) -> ObjectInfo {
    ObjectInfo {
        sha256: key.to_string(),
        size: meta.size,
        media_type: meta.media_type,
        created: Some(prost_types::Timestamp::from(meta.created)),
    }
}

type GetStream = Pin<Box<dyn Stream<Item = Result<GetResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<B: Backend> Storage for StorageService<B> {
    async fn put(&self, request: Request<Streaming<PutRequest>>) -> Result<Response<PutResponse>, Status> {
        Ok(Response::new(self.put(request.into_inner()).await?))
    }

    type GetStream = GetStream;

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<Self::GetStream>, Status> {
        let request = request.into_inner();
        let (namespace, key) = object_named(&request.sha256, request.namespace)?;
        let span = tracing::info_span!(
            "storage.get",
            nws.storage.backend = self.backend_name,
            nws.storage.namespace = namespace.prefix(),
            nws.storage.bytes = Empty
        );
        let (meta, body) = bounded(
            self.backend_name,
            self.timeout,
            Operation::Get,
            self.backend.get(namespace, &key),
        )
        .instrument(span.clone())
        .await?;
        span.record("nws.storage.bytes", meta.size);
        let info = GetResponse {
            payload: Some(get_response::Payload::Info(object_info(&key, meta))),
        };
        // Each piece is read under the deadline, so a backend that stalls
        // mid-object ends the stream with UNAVAILABLE instead of hanging it.
        let timeout = self.timeout;
        let backend_name = self.backend_name;
        let pieces = stream::unfold(Some(body), move |body| async move {
            let mut body = body?;
            match bounded(backend_name, timeout, Operation::Read, async {
                body.next().await.transpose()
            })
            .await
            {
                Ok(Some(piece)) => Some((Ok(piece), Some(body))),
                Ok(None) => None,
                Err(e) => Some((Err(Status::from(e)), None)),
            }
        });
        let chunks = pieces.flat_map(|piece| match piece {
            Ok(piece) => stream::iter(chunk::split(piece))
                .map(|chunk| {
                    Ok(GetResponse {
                        payload: Some(get_response::Payload::Chunk(chunk)),
                    })
                })
                .left_stream(),
            Err(status) => stream::once(async { Err(status) }).right_stream(),
        });
        Ok(Response::new(Box::pin(
            stream::once(async { Ok(info) }).chain(chunks),
        )))
    }

    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let request = request.into_inner();
        let (namespace, key) = object_named(&request.sha256, request.namespace)?;
        let span = tracing::info_span!(
            "storage.stat",
            nws.storage.backend = self.backend_name,
            nws.storage.namespace = namespace.prefix(),
            nws.storage.bytes = Empty
        );
        let meta = bounded(
            self.backend_name,
            self.timeout,
            Operation::Stat,
            self.backend.stat(namespace, &key),
        )
        .instrument(span.clone())
        .await?;
        span.record("nws.storage.bytes", meta.size);
        Ok(Response::new(StatResponse {
            info: Some(object_info(&key, meta)),
        }))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let request = request.into_inner();
        let (namespace, key) = object_named(&request.sha256, request.namespace)?;
        let deleted = bounded(
            self.backend_name,
            self.timeout,
            Operation::Delete,
            self.backend.delete(namespace, &key),
        )
        .await?;
        tracing::info!(%key, namespace = namespace.prefix(), deleted, "delete");
        Ok(Response::new(DeleteResponse { deleted }))
    }
}
