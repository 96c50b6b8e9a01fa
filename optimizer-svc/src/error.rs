use nws_runtime::grpc::status::for_user;
use nws_watermark::{media::INPUT_FORMATS_TEXT, stream::StreamError};
use tonic::{Code, Status};

/// Everything an Optimizer call can fail with; [`From<OptimizeError> for
/// Status`] is the one place that turns it into a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum OptimizeError {
    #[error("{0}")]
    BadOptions(String),

    #[error("{0}")]
    BadStream(&'static str),

    #[error("no image bytes were sent")]
    Empty,

    #[error("the upload ended after {received} of the {declared} bytes its input_size announced")]
    ShortUpload { received: u64, declared: u64 },

    #[error("not a supported image: the bytes are not {INPUT_FORMATS_TEXT}")]
    UnsupportedFormat,

    #[error("the image is larger than the {limit}-byte input limit (NWS_MAX_INPUT_BYTES)")]
    TooManyBytes { limit: u64 },

    #[error("the image is {width}×{height} = {pixels} pixels, over the {limit}-pixel limit (NWS_MAX_PIXELS)")]
    TooManyPixels {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },

    #[error("the image is {width}×{height}, a side over the {limit}-pixel limit (NWS_MAX_SIDE)")]
    SideTooLong { width: u32, height: u32, limit: u32 },

    #[error("the image could not be decoded: {0}")]
    Corrupt(String),

    #[error("the upload stream failed: {0}")]
    Upload(#[source] Status),

    #[error(
        "the optimizer is busy: {admitted} images in progress or waiting, its limit \
         (NWS_OPTIMIZER_WORKERS + NWS_OPTIMIZER_QUEUE); retry later"
    )]
    Busy { admitted: usize },

    #[error("no worker is idle for a background render; it runs only on an idle worker")]
    NoIdleWorker,

    /// The caller left (cancelled, or its deadline passed): nobody reads
    /// this error, it only stops the work.
    #[error("the call was cancelled before the {stage} stage")]
    Cancelled { stage: &'static str },

    #[error("Render needs Storage: this optimizer has none (set NWS_STORAGE_URL)")]
    NoStorage,

    #[error("no original with hash {0} is stored")]
    OriginalNotFound(String),

    #[error("reading the original from storage failed: {0}")]
    Storage(#[source] StreamError),

    #[error("the image could not be processed")]
    Internal(#[source] anyhow::Error),
}

impl From<nws_watermark::options::BadOptions> for OptimizeError {
    fn from(error: nws_watermark::options::BadOptions) -> Self {
        Self::BadOptions(error.0)
    }
}

impl From<OptimizeError> for Status {
    fn from(error: OptimizeError) -> Self {
        let message = error.to_string();
        match &error {
            OptimizeError::Upload(status) => Status::new(status.code(), message),
            OptimizeError::Internal(cause) => {
                // The client gets a short message; the cause chain goes to the logs.
                tracing::error!(error = %message, cause = format!("{cause:#}"), "optimizer failure");
                Status::internal(message)
            }
            OptimizeError::Storage(cause) => {
                tracing::error!(error = %message, %cause, "storage failure");
                Status::unavailable(message)
            }
            OptimizeError::NoStorage => Status::failed_precondition(message),
            OptimizeError::Busy { .. } | OptimizeError::NoIdleWorker => {
                for_user(Code::ResourceExhausted, message)
            }
            OptimizeError::Cancelled { .. } => Status::cancelled(message),
            OptimizeError::ShortUpload { .. } => for_user(Code::Aborted, message),
            OptimizeError::OriginalNotFound(_) => for_user(Code::NotFound, message),
            OptimizeError::BadOptions(_)
            | OptimizeError::BadStream(_)
            | OptimizeError::Empty
            | OptimizeError::UnsupportedFormat
            | OptimizeError::TooManyBytes { .. }
            | OptimizeError::TooManyPixels { .. }
            | OptimizeError::SideTooLong { .. }
            | OptimizeError::Corrupt(_) => {
                tracing::info!(error = %message, "call refused");
                for_user(Code::InvalidArgument, message)
            }
        }
    }
}
