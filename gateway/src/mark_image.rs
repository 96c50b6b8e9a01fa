//! Image marks (logos) at the edge: the form part `wm_image`, stored like an
//! original and named by its SHA-256, and the server's default mark
//! (NWS_WATERMARK_IMAGE), drawn on every upload that names no mark of its
//! own (`wm_image_sha256=none` opts out).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::{StreamExt as _, stream};
use nws_runtime::config::InvalidSetting;
use nws_watermark::{media, options::MAX_MARK_IMAGE_BYTES};
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;

use crate::{
    error::ApiError,
    upload::{self, ByteSource},
    upstream::Upstreams,
};

/// The form part that carries a mark image.
pub const FIELD: &str = "wm_image";
/// What `wm_image_sha256` says to draw no mark image, not even the default.
pub const NONE: &str = "none";

/// NWS_WATERMARK_IMAGE: read once at start, stored in Storage on first use
/// (so the gateway starts whether or not Storage is up yet).
pub struct DefaultMark {
    path: PathBuf,
    sha256: String,
    bytes: Bytes,
    stored: OnceCell<()>,
}

impl DefaultMark {
    /// Reads and checks the file: an image the optimizer reads, within the
    /// size of a mark image. Failing here stops the gateway with the reason.
    pub fn load(path: &Path) -> Result<Self, InvalidSetting> {
        let invalid = |why: String| InvalidSetting::new("NWS_WATERMARK_IMAGE", why);
        let bytes =
            std::fs::read(path).map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        if bytes.len() as u64 > MAX_MARK_IMAGE_BYTES {
            return Err(invalid(format!(
                "{} has {} bytes; a watermark image may have at most {MAX_MARK_IMAGE_BYTES}",
                path.display(),
                bytes.len()
            )));
        }
        match media::sniff(&bytes) {
            Some(format) if media::is_input(format) => {}
            _ => {
                return Err(invalid(format!(
                    "{} is not {}",
                    path.display(),
                    media::INPUT_FORMATS_TEXT
                )));
            }
        }
        Ok(Self {
            path: path.to_owned(),
            sha256: hex::encode(Sha256::digest(&bytes)),
            bytes: Bytes::from(bytes),
            stored: OnceCell::new(),
        })
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Stores the image once; concurrent first uses share one Put, and a
    /// failed one is tried again by the next request.
    pub async fn ensure_stored(&self, upstreams: &Upstreams) -> Result<(), ApiError> {
        self.stored
            .get_or_try_init(|| async {
                let bytes: ByteSource<'_> = Box::pin(stream::iter([Ok(self.bytes.clone())]));
                let stored = upload::store_original(upstreams, bytes).await?;
                tracing::info!(path = %self.path.display(), sha256 = %stored.sha256, "default watermark image stored");
                Ok(())
            })
            .await
            .map(|_| ())
    }
}

/// Stores a `wm_image` form part, refusing it past the size of a mark
/// image while it streams.
pub async fn store(upstreams: &Upstreams, part: ByteSource<'_>) -> Result<String, ApiError> {
    let mut seen = 0u64;
    let bounded = part.map(move |chunk| {
        let chunk = chunk?;
        seen += chunk.len() as u64;
        if seen > MAX_MARK_IMAGE_BYTES {
            return Err(ApiError::BadRequest(format!(
                "the form part `{FIELD}` is over {MAX_MARK_IMAGE_BYTES} bytes, the limit for watermark images"
            )));
        }
        Ok(chunk)
    });
    let stored = upload::store_original(upstreams, Box::pin(bounded)).await?;
    Ok(stored.sha256)
}
