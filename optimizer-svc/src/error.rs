use tonic::Status;

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

    #[error(
        "not a supported image: the bytes are not JPEG, PNG, WebP or GIF (AVIF is an output format only)"
    )]
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

    /// The caller left (cancelled, or its deadline passed): nobody reads
    /// this error, it only stops the work.
    #[error("the call was cancelled before the {stage} stage")]
    Cancelled { stage: &'static str },

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
        match &error {
            OptimizeError::Upload(status) => Status::new(status.code(), error.to_string()),
            OptimizeError::Internal(cause) => {
                // The client gets a short message; the cause chain goes to the logs.
                tracing::error!(error = %error, cause = format!("{cause:#}"), "optimizer failure");
                Status::internal(error.to_string())
            }
            OptimizeError::Busy { .. } => Status::resource_exhausted(error.to_string()),
            OptimizeError::Cancelled { .. } => Status::cancelled(error.to_string()),
            OptimizeError::ShortUpload { .. } => Status::aborted(error.to_string()),
            _ => {
                tracing::info!(error = %error, "call refused");
                Status::invalid_argument(error.to_string())
            }
        }
    }
}
