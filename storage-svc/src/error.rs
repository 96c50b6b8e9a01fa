use std::time::Duration;

use nws_runtime::grpc::status::for_user;
use tonic::{Code, Status};

/// Everything a Storage call can fail with; [`From<StorageError> for
/// Status`] is the one place that turns it into a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid key {0:?}: a key is a SHA-256, exactly 64 lowercase hex characters")]
    InvalidKey(String),

    #[error("no object with key {0}")]
    NotFound(String),

    #[error("the bytes hash to {actual}, not the expected {expected}; nothing was kept")]
    HashMismatch { expected: String, actual: String },

    #[error("object exceeds the {limit}-byte limit (NWS_STORAGE_MAX_OBJECT_BYTES); nothing was kept")]
    TooLarge { limit: u64 },

    #[error("{0}")]
    BadRequest(&'static str),

    #[error("the upload stream failed: {0}")]
    Upload(#[source] Status),

    #[error("storage backend failed while trying to {action}")]
    Backend {
        action: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("storage backend did not {action} within {after:?} (NWS_STORAGE_TIMEOUT)")]
    Timeout { action: &'static str, after: Duration },
}

impl StorageError {
    pub(crate) fn backend<E>(action: &'static str) -> impl FnOnce(E) -> Self
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        move |source| Self::Backend {
            action,
            source: source.into(),
        }
    }
}

impl From<StorageError> for Status {
    fn from(error: StorageError) -> Self {
        // Refusals a caller can act on carry a message meant for end users.
        match &error {
            StorageError::InvalidKey(_) | StorageError::TooLarge { .. } | StorageError::BadRequest(_) => {
                for_user(Code::InvalidArgument, error.to_string())
            }
            StorageError::NotFound(_) => for_user(Code::NotFound, error.to_string()),
            StorageError::HashMismatch { .. } => for_user(Code::FailedPrecondition, error.to_string()),
            StorageError::Upload(status) => Status::new(status.code(), error.to_string()),
            StorageError::Backend { source, .. } => {
                // The client learns what failed; the cause (paths, errno) stays in the logs.
                tracing::error!(error = %error, cause = %source, "storage backend error");
                Status::unavailable(error.to_string())
            }
            StorageError::Timeout { .. } => {
                tracing::error!(error = %error, "storage backend timeout");
                Status::unavailable(error.to_string())
            }
        }
    }
}
