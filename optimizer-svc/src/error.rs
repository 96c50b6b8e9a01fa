use std::{fmt, time::Duration};

use nws_runtime::grpc::status::for_user;
use nws_watermark::{media::INPUT_FORMATS_TEXT, stream::StreamError};
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

/// Everything an Optimizer call can fail with; [`From<OptimizeError> for
/// Status`] is the one place that turns it into a gRPC status, and
/// [`OptimizeError::is_permanent`] says whether trying again can help.
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

    /// Counted from the container before any frame is decoded.
    #[error(
        "the animation has {frames} frames of {width}×{height}, {total} pixels in all, over the \
         {limit}-pixel limit for keeping every frame (NWS_MAX_ANIMATION_PIXELS); animated=first \
         processes its first frame alone"
    )]
    TooManyAnimationPixels {
        frames: u32,
        width: u32,
        height: u32,
        total: u64,
        limit: u64,
    },

    #[error("the image could not be decoded: {0}")]
    Corrupt(String),

    #[error("the upload stream failed: {0}")]
    Upload(#[source] Status),

    /// The expected start of a call for a waiting caller is past
    /// NWS_QUEUE_WAIT.
    #[error(
        "the optimizer is busy: the expected wait for a worker is {}, over the {} limit \
         (NWS_QUEUE_WAIT); retry in {}",
        Took(*expected),
        Took(*limit),
        Took(*retry_after)
    )]
    LineTooLong {
        expected: Duration,
        limit: Duration,
        retry_after: Duration,
    },

    /// The memory bound: as many calls admitted as it allows.
    #[error(
        "the optimizer is busy: {admitted} images in progress or waiting, its limit \
         (NWS_OPTIMIZER_WORKERS + NWS_OPTIMIZER_QUEUE); retry in {}",
        Took(*retry_after)
    )]
    Busy { admitted: usize, retry_after: Duration },

    #[error("no worker is idle for a background render; it runs only on an idle worker")]
    NoIdleWorker,

    /// The caller left (cancelled, or its deadline passed), or the job's
    /// consumer is stopping: nobody reads this error, it only stops the
    /// work.
    #[error("the call was cancelled before the {stage} stage")]
    Cancelled { stage: &'static str },

    #[error("Render needs Storage: this optimizer has none (set NWS_STORAGE_URL)")]
    NoStorage,

    #[error("no original with hash {0} is stored")]
    OriginalNotFound(String),

    /// The image the mark names (`image_sha256`) cannot be drawn: not
    /// stored, not an image, or over the limits of a mark image.
    #[error("the watermark image {sha256} {problem}")]
    BadMarkImage { sha256: String, problem: String },

    /// Storage failed or could not be reached while the optimizer was
    /// `doing` something (reading the original, keeping the result…).
    #[error("{doing} failed: {cause}")]
    Storage {
        doing: &'static str,
        #[source]
        cause: StreamError,
    },

    #[error("the image could not be processed")]
    Internal(#[source] anyhow::Error),
}

impl OptimizeError {
    /// The gRPC code the call ends with.
    pub fn code(&self) -> Code {
        match self {
            Self::Upload(status) => status.code(),
            Self::Internal(_) => Code::Internal,
            Self::Storage { .. } => Code::Unavailable,
            Self::NoStorage => Code::FailedPrecondition,
            Self::LineTooLong { .. } | Self::Busy { .. } | Self::NoIdleWorker => Code::ResourceExhausted,
            Self::Cancelled { .. } => Code::Cancelled,
            Self::ShortUpload { .. } => Code::Aborted,
            Self::OriginalNotFound(_) => Code::NotFound,
            Self::BadOptions(_)
            | Self::BadStream(_)
            | Self::Empty
            | Self::UnsupportedFormat
            | Self::TooManyBytes { .. }
            | Self::TooManyPixels { .. }
            | Self::SideTooLong { .. }
            | Self::TooManyAnimationPixels { .. }
            | Self::Corrupt(_)
            | Self::BadMarkImage { .. } => Code::InvalidArgument,
        }
    }

    /// Whether the same call can never succeed, however often it is tried
    /// again: the image is invalid, unsupported or over a limit, the
    /// options are bad, or the original does not exist. Everything else
    /// (storage unavailable, the optimizer busy or misconfigured, an
    /// internal failure, a cancelled call) may pass on a later try; a
    /// durable job that fails so is retried, not dropped.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::BadOptions(_)
            | Self::BadStream(_)
            | Self::Empty
            | Self::UnsupportedFormat
            | Self::TooManyBytes { .. }
            | Self::TooManyPixels { .. }
            | Self::SideTooLong { .. }
            | Self::TooManyAnimationPixels { .. }
            | Self::Corrupt(_)
            | Self::BadMarkImage { .. }
            | Self::OriginalNotFound(_) => true,
            Self::ShortUpload { .. }
            | Self::Upload(_)
            | Self::LineTooLong { .. }
            | Self::Busy { .. }
            | Self::NoIdleWorker
            | Self::Cancelled { .. }
            | Self::NoStorage
            | Self::Storage { .. }
            | Self::Internal(_) => false,
        }
    }

    /// When to try again, for a refusal that says.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::LineTooLong { retry_after, .. } | Self::Busy { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl From<nws_watermark::options::BadOptions> for OptimizeError {
    fn from(error: nws_watermark::options::BadOptions) -> Self {
        Self::BadOptions(error.0)
    }
}

impl From<OptimizeError> for Status {
    fn from(error: OptimizeError) -> Self {
        let message = error.to_string();
        let code = error.code();
        match &error {
            OptimizeError::Upload(_) => Status::new(code, message),
            OptimizeError::Internal(cause) => {
                // The client gets a short message; the cause chain goes to the logs.
                tracing::error!(error = %message, cause = format!("{cause:#}"), "optimizer failure");
                Status::new(code, message)
            }
            OptimizeError::Storage { cause, .. } => {
                tracing::error!(error = %message, %cause, "storage failure");
                Status::new(code, message)
            }
            OptimizeError::NoStorage | OptimizeError::Cancelled { .. } => Status::new(code, message),
            OptimizeError::LineTooLong { retry_after, .. } | OptimizeError::Busy { retry_after, .. } => {
                // What the user reads, and when the line will have room.
                let mut details = for_user(code, message.clone()).get_error_details();
                details.set_retry_info(Some(*retry_after));
                Status::with_error_details(code, message, details)
            }
            OptimizeError::BadMarkImage { .. } => {
                // A bad option, not a bad image: the field says which, so a
                // caller (the gateway) keeps the original it uploaded.
                tracing::info!(error = %message, "call refused");
                let mut details = for_user(code, message.clone()).get_error_details();
                details.add_bad_request_violation(MARK_IMAGE_FIELD, message.clone());
                Status::with_error_details(code, message, details)
            }
            OptimizeError::NoIdleWorker
            | OptimizeError::ShortUpload { .. }
            | OptimizeError::OriginalNotFound(_) => for_user(code, message),
            OptimizeError::BadOptions(_)
            | OptimizeError::BadStream(_)
            | OptimizeError::Empty
            | OptimizeError::UnsupportedFormat
            | OptimizeError::TooManyBytes { .. }
            | OptimizeError::TooManyPixels { .. }
            | OptimizeError::SideTooLong { .. }
            | OptimizeError::TooManyAnimationPixels { .. }
            | OptimizeError::Corrupt(_) => {
                tracing::info!(error = %message, "call refused");
                for_user(code, message)
            }
        }
    }
}

/// The option a [`OptimizeError::BadMarkImage`] names in its
/// `google.rpc.BadRequest`.
pub const MARK_IMAGE_FIELD: &str = "image_sha256";

/// A wait as people read it: `350 ms`, `2 s`, `2.4 s`.
struct Took(Duration);

impl fmt::Display for Took {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < Duration::from_secs(1) {
            write!(f, "{} ms", self.0.as_millis())
        } else if self.0.subsec_millis() == 0 {
            write!(f, "{} s", self.0.as_secs())
        } else {
            write!(f, "{:.1} s", self.0.as_secs_f64())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_for_a_long_line_says_when_to_retry_in_words_and_in_retry_info() {
        let error = OptimizeError::LineTooLong {
            expected: Duration::from_millis(5_300),
            limit: Duration::from_secs(2),
            retry_after: Duration::from_millis(3_400),
        };
        assert!(!error.is_permanent());
        let status = Status::from(error);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_millis(3_400))
        );
        assert_eq!(
            nws_runtime::grpc::status::user_message(&status).as_deref(),
            Some(
                "the optimizer is busy: the expected wait for a worker is 5.3 s, over the 2 s \
                 limit (NWS_QUEUE_WAIT); retry in 3.4 s"
            )
        );
    }

    #[test]
    fn bad_inputs_are_permanent_and_conditions_of_the_moment_are_not() {
        let permanent = [
            OptimizeError::BadOptions("quality 0".into()),
            OptimizeError::UnsupportedFormat,
            OptimizeError::TooManyBytes { limit: 1 },
            OptimizeError::Corrupt("truncated".into()),
            OptimizeError::OriginalNotFound("ab".repeat(32)),
        ];
        for error in permanent {
            assert!(error.is_permanent(), "{error:?}");
            let code = error.code();
            assert!(
                matches!(code, Code::InvalidArgument | Code::NotFound),
                "{error:?}"
            );
            assert_eq!(Status::from(error).code(), code);
        }
        let transient = [
            OptimizeError::Storage {
                doing: "keeping the result in storage",
                cause: StreamError::Status(Status::unavailable("down")),
            },
            OptimizeError::Internal(anyhow::anyhow!("codec panic")),
            OptimizeError::Cancelled { stage: "decode" },
            OptimizeError::NoStorage,
            OptimizeError::Busy {
                admitted: 3,
                retry_after: Duration::from_millis(100),
            },
        ];
        for error in transient {
            assert!(!error.is_permanent(), "{error:?}");
            let code = error.code();
            assert_eq!(Status::from(error).code(), code);
        }
    }
}
