//! Where objects live. The gRPC service speaks to one [`Backend`]; each
//! backend keeps the same promises:
//! - an object appears whole under its key or not at all, whatever fails
//!   and whenever the process dies;
//! - an [`Upload`] dropped before [`Upload::commit`] leaves nothing visible;
//! - committing a key that already exists keeps the existing object.
//!
//! Deadlines are not the backends' business: the service bounds every call.

pub mod fs;
pub mod s3;

use std::{future::Future, pin::Pin, time::SystemTime};

use bytes::Bytes;
use futures_util::Stream;
use nws_watermark::pb;

use crate::{ObjectKey, StorageError};

/// The two sets of objects, each with its own keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    /// Uploads, under the SHA-256 of their bytes.
    Originals,
    /// Optimizer outputs, under the gateway's cache key.
    Results,
}

impl Namespace {
    /// The directory (filesystem) or key prefix (S3) of the namespace.
    pub fn prefix(self) -> &'static str {
        match self {
            Namespace::Originals => "originals",
            Namespace::Results => "results",
        }
    }

    pub fn from_wire(value: i32) -> Result<Self, StorageError> {
        match pb::Namespace::try_from(value) {
            Ok(pb::Namespace::Unspecified | pb::Namespace::Originals) => Ok(Namespace::Originals),
            Ok(pb::Namespace::Results) => Ok(Namespace::Results),
            Err(_) => Err(StorageError::BadRequest(
                "unknown namespace: use NAMESPACE_ORIGINALS or NAMESPACE_RESULTS",
            )),
        }
    }
}

/// What is known about a stored object without reading all of it.
#[derive(Debug, Clone)]
pub struct ObjectMeta {
    pub size: u64,
    pub created: SystemTime,
    pub media_type: String,
}

/// An object's bytes, in pieces of whatever size the backend reads.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StorageError>> + Send>>;

pub trait Backend: Send + Sync + 'static {
    type Upload: Upload;

    /// Starts an object. `key` is given when it is known before the bytes
    /// (results, and originals with an expected hash), so that a backend
    /// can write straight to its final place.
    fn begin_put(
        &self,
        namespace: Namespace,
        key: Option<&ObjectKey>,
    ) -> impl Future<Output = Result<Self::Upload, StorageError>> + Send;

    /// [`StorageError::NotFound`] when there is no such object.
    fn stat(
        &self,
        namespace: Namespace,
        key: &ObjectKey,
    ) -> impl Future<Output = Result<ObjectMeta, StorageError>> + Send;

    /// Opens an object for reading.
    fn get(
        &self,
        namespace: Namespace,
        key: &ObjectKey,
    ) -> impl Future<Output = Result<(ObjectMeta, ByteStream), StorageError>> + Send;

    /// Removes an object; `false` when there was none.
    fn delete(
        &self,
        namespace: Namespace,
        key: &ObjectKey,
    ) -> impl Future<Output = Result<bool, StorageError>> + Send;

    /// Succeeds when the backend can take reads and writes now.
    fn check(&self) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// An object being written.
pub trait Upload: Send + 'static {
    fn write(&mut self, chunk: Bytes) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Makes the object durable under `key`. Returns `true` when an object
    /// with that key already existed, in which case it is kept as it was.
    fn commit(self, key: &ObjectKey) -> impl Future<Output = Result<bool, StorageError>> + Send;
}
