//! Objects in an S3-compatible bucket (AWS S3, MinIO, s3s), path-style:
//! `originals/<sha256>` and `results/<key>`.
//!
//! S3 makes an object visible only when its PutObject,
//! CompleteMultipartUpload or CopyObject finishes, so no reader ever sees a
//! torn object. Small objects are buffered and sent in one PutObject at
//! commit, when the key is known. Larger ones stream as a multipart upload
//! in parts of `NWS_S3_PART_SIZE`: straight to the final key when it is
//! known in advance, otherwise to `tmp/…` and then copied into place on the
//! server. An upload that is dropped is aborted, so its parts never become
//! an object; a crash leaves at most an incomplete multipart upload (invisible;
//! a bucket lifecycle rule expires them) or a `tmp/` object, which the first
//! successful health check after a start removes once it is an hour old.

use std::{
    hash::{BuildHasher as _, RandomState},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures_util::StreamExt as _;
use nws_watermark::media;
use s3::{Bucket, BucketConfiguration, Region, creds::Credentials, error::S3Error, serde_types::Part};

use super::{Backend, ByteStream, Namespace, ObjectMeta, Upload};
use crate::{ObjectKey, StorageError, config::S3Config};

const TEMP_PREFIX: &str = "tmp/";
/// A `tmp/` object younger than this may belong to a live upload elsewhere.
const STALE_AFTER: Duration = Duration::from_secs(3600);
/// CopyObject copies at most 5 GiB in one call.
const MAX_COPY_BYTES: u64 = 5 * 1024 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;

pub struct S3Store {
    bucket: Arc<Bucket>,
    part_size: usize,
    create_bucket: bool,
    swept: AtomicBool,
    temp_names: TempNames,
}

impl S3Store {
    /// Checks the settings; nothing is sent to the server here, so a store
    /// that is down at start-up is reported by health checks, not fatal.
    pub fn new(config: &S3Config, request_timeout: Duration, max_object_bytes: u64) -> anyhow::Result<Self> {
        if max_object_bytes > MAX_COPY_BYTES {
            bail!("NWS_STORAGE_MAX_OBJECT_BYTES is above 5GiB, the largest object the S3 backend can place");
        }
        if max_object_bytes.div_ceil(config.s3_part_size) > MAX_PARTS {
            bail!(
                "NWS_S3_PART_SIZE {} is too small for NWS_STORAGE_MAX_OBJECT_BYTES {max_object_bytes}: \
                 S3 allows at most {MAX_PARTS} parts",
                config.s3_part_size
            );
        }
        let (Some(access_key), Some(secret_key)) = (&config.aws_access_key_id, &config.aws_secret_access_key)
        else {
            bail!("NWS_STORAGE_BACKEND=s3 needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
        };
        let credentials = Credentials::new(
            Some(access_key),
            Some(secret_key),
            config.aws_session_token.as_deref(),
            None,
            None,
        )
        .context("invalid S3 credentials")?;
        let region = match &config.s3_endpoint {
            Some(endpoint) => {
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    bail!("NWS_S3_ENDPOINT must start with http:// or https://, got {endpoint:?}");
                }
                Region::Custom {
                    region: config.s3_region.clone(),
                    endpoint: endpoint.trim_end_matches('/').to_owned(),
                }
            }
            None => config
                .s3_region
                .parse()
                .with_context(|| format!("unknown NWS_S3_REGION {:?}", config.s3_region))?,
        };
        let mut bucket = Bucket::new(&config.s3_bucket, region, credentials)
            .with_context(|| format!("invalid NWS_S3_BUCKET {:?}", config.s3_bucket))?
            .with_path_style();
        bucket.set_request_timeout(Some(request_timeout));
        tracing::info!(
            endpoint = %bucket.host(),
            bucket = %config.s3_bucket,
            part_size = config.s3_part_size,
            "S3 store configured"
        );
        Ok(Self {
            bucket: Arc::from(bucket),
            part_size: usize::try_from(config.s3_part_size)
                .context("NWS_S3_PART_SIZE does not fit in memory")?,
            create_bucket: config.s3_create_bucket,
            swept: AtomicBool::new(false),
            temp_names: TempNames::new(),
        })
    }

    async fn head(&self, namespace: Namespace, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        match self.bucket.head_object(object_path(namespace, key)).await {
            Ok((head, _)) => Ok(ObjectMeta {
                size: head
                    .content_length
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0),
                created: head
                    .last_modified
                    .as_deref()
                    .and_then(|date| httpdate::parse_http_date(date).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                media_type: head
                    .content_type
                    .unwrap_or_else(|| media::OCTET_STREAM.to_owned()),
            }),
            Err(e) if is_not_found(&e) => Err(StorageError::NotFound(key.to_string())),
            Err(e) => Err(StorageError::backend("describe an object")(e)),
        }
    }

    /// Removes `tmp/` objects left by a process that died between completing
    /// an upload and copying it into place.
    async fn sweep_stale_temporaries(&self) -> Result<usize, S3Error> {
        let mut removed = 0;
        for page in self.bucket.list(TEMP_PREFIX.to_owned(), None).await? {
            for object in page.contents {
                let stale = humantime::parse_rfc3339_weak(&object.last_modified)
                    .ok()
                    .and_then(|modified| modified.elapsed().ok())
                    .is_some_and(|age| age > STALE_AFTER);
                if stale {
                    self.bucket.delete_object(&object.key).await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    async fn create_missing_bucket(&self) -> Result<(), StorageError> {
        let created = Bucket::create_with_path_style(
            &self.bucket.name(),
            self.bucket.region(),
            self.bucket
                .credentials()
                .await
                .map_err(StorageError::backend("read the S3 credentials"))?,
            BucketConfiguration::default(),
        )
        .await;
        match created {
            Ok(_) => {
                tracing::info!(bucket = %self.bucket.name(), "created the bucket");
                Ok(())
            }
            // Another replica created it first.
            Err(S3Error::HttpFailWithBody(409, body)) if body.contains("BucketAlreadyOwnedByYou") => Ok(()),
            Err(e) => Err(StorageError::backend("create the bucket")(e)),
        }
    }
}

impl Backend for S3Store {
    type Upload = S3Upload;

    async fn begin_put(
        &self,
        namespace: Namespace,
        key: Option<&ObjectKey>,
    ) -> Result<S3Upload, StorageError> {
        Ok(S3Upload {
            bucket: self.bucket.clone(),
            namespace,
            multipart_path: match key {
                Some(key) => object_path(namespace, key),
                None => self.temp_names.next(),
            },
            part_size: self.part_size,
            buffer: Vec::new(),
            content_type: None,
            multipart: None,
        })
    }

    async fn stat(&self, namespace: Namespace, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        self.head(namespace, key).await
    }

    async fn get(
        &self,
        namespace: Namespace,
        key: &ObjectKey,
    ) -> Result<(ObjectMeta, ByteStream), StorageError> {
        let meta = self.head(namespace, key).await?;
        let response = match self.bucket.get_object_stream(object_path(namespace, key)).await {
            Ok(response) => response,
            Err(e) if is_not_found(&e) => return Err(StorageError::NotFound(key.to_string())),
            Err(e) => return Err(StorageError::backend("read an object")(e)),
        };
        let bytes = response
            .bytes
            .map(|piece| piece.map_err(StorageError::backend("read an object")));
        Ok((meta, Box::pin(bytes)))
    }

    async fn delete(&self, namespace: Namespace, key: &ObjectKey) -> Result<bool, StorageError> {
        let path = object_path(namespace, key);
        // S3 answers a DELETE the same way whether or not the object existed.
        if !exists(&self.bucket, &path).await? {
            return Ok(false);
        }
        self.bucket
            .delete_object(&path)
            .await
            .map_err(StorageError::backend("delete an object"))?;
        Ok(true)
    }

    /// The bucket answers a one-key listing. A missing bucket is created
    /// when allowed; the first success after start sweeps stale temporaries.
    async fn check(&self) -> Result<(), StorageError> {
        let listed = self
            .bucket
            .list_page(String::new(), None, None, None, Some(1))
            .await;
        match listed {
            Ok(_) => {}
            Err(S3Error::HttpFailWithBody(404, body))
                if body.contains("NoSuchBucket") && self.create_bucket =>
            {
                self.create_missing_bucket().await?;
            }
            Err(S3Error::HttpFailWithBody(404, body)) if body.contains("NoSuchBucket") => {
                return Err(StorageError::backend("find the bucket")(format!(
                    "bucket {} does not exist and NWS_S3_CREATE_BUCKET is false",
                    self.bucket.name()
                )));
            }
            Err(e) => return Err(StorageError::backend("list the bucket")(e)),
        }
        if !self.swept.swap(true, Ordering::Relaxed) {
            match self.sweep_stale_temporaries().await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "removed unfinished uploads from an earlier run"),
                Err(e) => {
                    self.swept.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, "could not sweep stale temporary objects");
                }
            }
        }
        Ok(())
    }
}

/// An object on its way to S3: at most one part in memory.
pub struct S3Upload {
    bucket: Arc<Bucket>,
    namespace: Namespace,
    /// Where the multipart upload goes: the final key when known, else `tmp/…`.
    multipart_path: String,
    part_size: usize,
    buffer: Vec<u8>,
    content_type: Option<&'static str>,
    multipart: Option<Multipart>,
}

struct Multipart {
    upload_id: String,
    parts: Vec<Part>,
}

impl S3Upload {
    fn content_type(&mut self) -> &'static str {
        let buffer = &self.buffer;
        self.content_type
            .get_or_insert_with(|| media::sniff_media_type(buffer))
    }

    async fn send_part(&mut self) -> Result<(), StorageError> {
        let content_type = self.content_type();
        if self.multipart.is_none() {
            let started = self
                .bucket
                .initiate_multipart_upload(&self.multipart_path, content_type)
                .await
                .map_err(StorageError::backend("start a multipart upload"))?;
            self.multipart = Some(Multipart {
                upload_id: started.upload_id,
                parts: Vec::new(),
            });
        }
        let multipart = self.multipart.as_mut().expect("started above");
        let part_number = multipart.parts.len() as u32 + 1;
        let part = std::mem::replace(&mut self.buffer, Vec::with_capacity(self.part_size));
        let sent = self
            .bucket
            .put_multipart_chunk(
                part,
                &self.multipart_path,
                part_number,
                &multipart.upload_id,
                content_type,
            )
            .await
            .map_err(StorageError::backend("upload a part"))?;
        multipart.parts.push(sent);
        Ok(())
    }

    async fn complete(&mut self, final_path: &str) -> Result<(), StorageError> {
        let multipart = self.multipart.take().expect("a multipart upload is in progress");
        let completed = self
            .bucket
            .complete_multipart_upload(&self.multipart_path, &multipart.upload_id, multipart.parts)
            .await;
        if let Err(e) = completed {
            self.multipart = Some(Multipart {
                upload_id: multipart.upload_id,
                parts: Vec::new(),
            });
            return Err(StorageError::backend("complete a multipart upload")(e));
        }
        if self.multipart_path != final_path {
            let copied = self
                .bucket
                .copy_object_internal(&self.multipart_path, final_path)
                .await;
            // The temporary copy goes whether or not the copy worked.
            let removed = self.bucket.delete_object(&self.multipart_path).await;
            copied.map_err(StorageError::backend("copy an object into place"))?;
            if let Err(e) = removed {
                tracing::warn!(path = %self.multipart_path, error = %e, "could not remove a temporary object");
            }
        }
        Ok(())
    }
}

impl Upload for S3Upload {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        self.buffer.extend_from_slice(&chunk);
        if self.buffer.len() >= self.part_size {
            self.send_part().await?;
        }
        Ok(())
    }

    async fn commit(mut self, key: &ObjectKey) -> Result<bool, StorageError> {
        let final_path = object_path(self.namespace, key);
        if self.multipart.is_none() {
            if exists(&self.bucket, &final_path).await? {
                return Ok(true);
            }
            let content_type = self.content_type();
            self.bucket
                .put_object_with_content_type(&final_path, &self.buffer, content_type)
                .await
                .map_err(StorageError::backend("write an object"))?;
            return Ok(false);
        }
        if !self.buffer.is_empty() {
            self.send_part().await?;
        }
        if exists(&self.bucket, &final_path).await? {
            return Ok(true); // the upload is aborted on drop
        }
        self.complete(&final_path).await?;
        Ok(false)
    }
}

impl Drop for S3Upload {
    /// Parts of an upload that never completed are abandoned on the server.
    fn drop(&mut self) {
        let Some(multipart) = self.multipart.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let bucket = self.bucket.clone();
        let path = std::mem::take(&mut self.multipart_path);
        runtime.spawn(async move {
            if let Err(e) = bucket.abort_upload(&path, &multipart.upload_id).await {
                tracing::warn!(%path, error = %e, "could not abort a multipart upload");
            }
        });
    }
}

fn object_path(namespace: Namespace, key: &ObjectKey) -> String {
    format!("{}/{key}", namespace.prefix())
}

async fn exists(bucket: &Bucket, path: &str) -> Result<bool, StorageError> {
    match bucket.head_object(path).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(StorageError::backend("look up an object")(e)),
    }
}

fn is_not_found(error: &S3Error) -> bool {
    matches!(error, S3Error::HttpFailWithBody(404, _))
}

/// Names for temporary objects, unique across processes sharing a bucket
/// (pids repeat across containers, so a random per-process prefix is used).
struct TempNames {
    process: u64,
    counter: AtomicU64,
}

impl TempNames {
    fn new() -> Self {
        Self {
            process: RandomState::new().hash_one(SystemTime::now()),
            counter: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{TEMP_PREFIX}{:016x}-{n}", self.process)
    }
}
