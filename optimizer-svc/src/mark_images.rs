//! Image marks (logos), named by the SHA-256 of an original in Storage:
//! uploaded once, drawn on any number of renders. Each is read and decoded
//! once and then kept decoded, bounded by bytes, so a popular logo costs a
//! lookup; concurrent first uses of one logo share one read.

use std::sync::Arc;

use moka::future::Cache;
use nws_watermark::options::{MAX_MARK_IMAGE_BYTES, MAX_MARK_IMAGE_PIXELS, MAX_MARK_IMAGE_SIDE};
use nws_watermark::stream::StreamError;
use tonic::Status;

use crate::{
    OptimizeError,
    pipeline::{Limits, decode, watermark::Logo},
    storage::OriginalStore,
};

/// The largest mark image: a 10000×10000 "logo" is refused from its
/// header.
pub const MARK_IMAGE_LIMITS: Limits = Limits {
    max_input_bytes: MAX_MARK_IMAGE_BYTES,
    max_pixels: MAX_MARK_IMAGE_PIXELS,
    max_side: MAX_MARK_IMAGE_SIDE,
    // A mark is drawn as a still: an animated one gives its first frame.
    max_animation_pixels: 0,
};

/// Decoded marks kept: at most 4 MP × 4 bytes each, so this holds several
/// of the largest and hundreds of usual ones.
const KEPT_BYTES: u64 = 64 << 20;

#[derive(Clone)]
pub struct MarkImages {
    store: Option<OriginalStore>,
    decoded: Cache<String, Arc<Logo>>,
}

impl MarkImages {
    pub fn new(store: Option<OriginalStore>) -> Self {
        Self {
            store,
            decoded: Cache::builder()
                .max_capacity(KEPT_BYTES)
                .weigher(|_, logo: &Arc<Logo>| u32::try_from(logo.data.len()).unwrap_or(u32::MAX))
                .build(),
        }
    }

    /// The mark image stored under `sha256`, decoded (upright, sRGB).
    pub async fn get(&self, sha256: &str) -> Result<Arc<Logo>, OptimizeError> {
        self.decoded
            .try_get_with(sha256.to_owned(), self.load(sha256))
            .await
            .map_err(|shared: Arc<OptimizeError>| {
                Arc::try_unwrap(shared).unwrap_or_else(|shared| reissued(&shared))
            })
    }

    async fn load(&self, sha256: &str) -> Result<Arc<Logo>, OptimizeError> {
        let bad = |problem: String| OptimizeError::BadMarkImage {
            sha256: sha256.to_owned(),
            problem,
        };
        let store = self.store.as_ref().ok_or(OptimizeError::NoStorage)?;
        let bytes = match store.original(sha256, MARK_IMAGE_LIMITS.max_input_bytes).await {
            Ok(bytes) => bytes,
            Err(OptimizeError::OriginalNotFound(_)) => {
                return Err(bad(
                    "is not stored: upload it first (the form part wm_image, or Storage.Put)".to_owned(),
                ));
            }
            Err(OptimizeError::TooManyBytes { limit }) => {
                return Err(bad(format!(
                    "is larger than the {limit}-byte limit for watermark images"
                )));
            }
            Err(other) => return Err(other),
        };
        // Decoding is CPU work: off the async runtime, like every codec call.
        let decoded = tokio::task::spawn_blocking(move || {
            decode::decode(
                &bytes,
                &MARK_IMAGE_LIMITS,
                (MARK_IMAGE_LIMITS.max_side, MARK_IMAGE_LIMITS.max_side),
            )
        })
        .await
        .map_err(|panic| {
            OptimizeError::Internal(anyhow::anyhow!(
                "decoding a watermark image panicked: {}",
                nws_runtime::panic::join_error_message(panic)
            ))
        })?;
        match decoded {
            Ok((_, pixels)) => Ok(Arc::new(pixels.into_colour())),
            Err(
                error @ (OptimizeError::TooManyPixels { .. }
                | OptimizeError::SideTooLong { .. }
                | OptimizeError::UnsupportedFormat
                | OptimizeError::Empty
                | OptimizeError::Corrupt(_)),
            ) => Err(bad(mark_image_problem(&error))),
            Err(other) => Err(other),
        }
    }
}

/// A failure shared by every caller that waited on one load, as each
/// caller's own error, of the same kind (a bad image stays permanent,
/// Storage unavailable stays transient).
fn reissued(shared: &OptimizeError) -> OptimizeError {
    match shared {
        OptimizeError::BadMarkImage { sha256, problem } => OptimizeError::BadMarkImage {
            sha256: sha256.clone(),
            problem: problem.clone(),
        },
        OptimizeError::NoStorage => OptimizeError::NoStorage,
        OptimizeError::Storage { doing, cause } => OptimizeError::Storage {
            doing,
            cause: match cause {
                StreamError::Status(status) => {
                    StreamError::Status(Status::new(status.code(), status.message()))
                }
                StreamError::Protocol(what) => StreamError::Protocol(what),
            },
        },
        other => OptimizeError::Internal(anyhow::anyhow!("reading a watermark image: {other}")),
    }
}

/// What is wrong with a mark image, in the words of the limits of marks.
fn mark_image_problem(error: &OptimizeError) -> String {
    let limits = MARK_IMAGE_LIMITS;
    match error {
        OptimizeError::TooManyPixels { width, height, .. }
        | OptimizeError::SideTooLong { width, height, .. } => {
            format!(
                "is {width}×{height}: watermark images may have at most {} pixels a side and {} pixels in all",
                limits.max_side, limits.max_pixels
            )
        }
        other => format!("cannot be used: {other}"),
    }
}
