//! The `watermark.v1.Storage` gRPC service over the filesystem store.

use std::pin::Pin;

use bytes::BytesMut;
use futures_util::{Stream, StreamExt as _, stream};
use nws_watermark::{
    chunk::CHUNK_SIZE,
    media,
    pb::{
        DeleteRequest, DeleteResponse, GetRequest, GetResponse, ObjectInfo, PutRequest, PutResponse,
        StatRequest, StatResponse, get_response, put_request, storage_server::Storage,
    },
};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    ObjectKey, StorageError,
    fs_store::{FsStore, ObjectMeta},
};

pub struct StorageService {
    store: FsStore,
    max_object_bytes: u64,
}

impl StorageService {
    pub fn new(store: FsStore, max_object_bytes: u64) -> Self {
        Self {
            store,
            max_object_bytes,
        }
    }

    async fn put(&self, mut upload: Streaming<PutRequest>) -> Result<PutResponse, StorageError> {
        let mut expected = None;
        let mut pending = self.store.begin_put().await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut head = Vec::with_capacity(media::SNIFF_LEN);
        let mut first = true;

        while let Some(message) = upload.message().await.map_err(StorageError::Upload)? {
            match message.payload {
                Some(put_request::Payload::Options(options)) if first => {
                    if !options.expected_sha256.is_empty() {
                        expected = Some(ObjectKey::parse(&options.expected_sha256)?);
                    }
                }
                Some(put_request::Payload::Options(_)) => {
                    return Err(StorageError::BadRequest(
                        "options may only come in the first message",
                    ));
                }
                Some(put_request::Payload::Chunk(chunk)) => {
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
                    pending.write(&chunk).await?;
                }
                None => {
                    return Err(StorageError::BadRequest(
                        "a Put message carries neither options nor a chunk",
                    ));
                }
            }
            first = false;
        }

        let key = ObjectKey::from_digest(&hasher.finalize().into());
        if let Some(expected) = expected
            && expected != key
        {
            return Err(StorageError::HashMismatch {
                expected: expected.to_string(),
                actual: key.to_string(),
            });
        }
        let deduplicated = pending.commit(&key).await?;
        tracing::info!(%key, size, deduplicated, "put");
        Ok(PutResponse {
            sha256: key.to_string(),
            size,
            deduplicated,
            media_type: media::sniff_media_type(&head).to_owned(),
        })
    }
}

fn object_info(key: &ObjectKey, meta: &ObjectMeta) -> ObjectInfo {
    ObjectInfo {
        sha256: key.to_string(),
        size: meta.size,
        media_type: meta.media_type.to_owned(),
        created: Some(prost_types::Timestamp::from(meta.created)),
    }
}

type GetStream = Pin<Box<dyn Stream<Item = Result<GetResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Storage for StorageService {
    async fn put(&self, request: Request<Streaming<PutRequest>>) -> Result<Response<PutResponse>, Status> {
        Ok(Response::new(self.put(request.into_inner()).await?))
    }

    type GetStream = GetStream;

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<Self::GetStream>, Status> {
        let key = ObjectKey::parse(&request.get_ref().sha256)?;
        let (meta, file) = self.store.open_object(&key).await?;
        let info = GetResponse {
            payload: Some(get_response::Payload::Info(object_info(&key, &meta))),
        };
        // The info message first, then the file in bounded chunks read on
        // demand: a slow reader holds one chunk in memory, never the object.
        let chunks = stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buffer = BytesMut::with_capacity(CHUNK_SIZE);
            match (&mut file).take(CHUNK_SIZE as u64).read_buf(&mut buffer).await {
                Ok(0) => None,
                Ok(_) => Some((
                    Ok(GetResponse {
                        payload: Some(get_response::Payload::Chunk(buffer.freeze())),
                    }),
                    Some(file),
                )),
                Err(e) => Some((Err(StorageError::backend("read an object")(e).into()), None)),
            }
        });
        Ok(Response::new(Box::pin(
            stream::once(async { Ok(info) }).chain(chunks),
        )))
    }

    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let key = ObjectKey::parse(&request.get_ref().sha256)?;
        let (meta, _file) = self.store.open_object(&key).await?;
        Ok(Response::new(StatResponse {
            info: Some(object_info(&key, &meta)),
        }))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let key = ObjectKey::parse(&request.get_ref().sha256)?;
        let deleted = self.store.delete(&key).await?;
        tracing::info!(%key, deleted, "delete");
        Ok(Response::new(DeleteResponse { deleted }))
    }
}
