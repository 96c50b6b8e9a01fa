//! `POST /v1/watermark` (and the Go original's `POST /upload`): an image in,
//! a watermarked image out, streaming both ways.
//!
//! Two request shapes: `multipart/form-data` with the file in field `image`
//! and the options as fields, or the raw image as the body with the options
//! as query parameters. Options are `wm_text`, `wm_position`, `format`,
//! `quality`, `progressive`, `max_width`, `max_height`, `wm_opacity`,
//! `wm_tiled`, `resize`, `keep_metadata`.

//! `POST /v1/watermark` (and the Go original's `POST /upload`): an image in,
//! a watermarked image out.
//!
//! Two request shapes: `multipart/form-data` with the file in field `image`
//! and the options as fields (in any order), or the raw image as the body
//! with the options as query parameters. Options are `wm_text`,
//! `wm_position`, `format` (`auto`, the default, picks AVIF, WebP or JPEG
//! from Accept), `quality`, `progressive`, `max_width`, `max_height`,
//! `wm_opacity`, `wm_tiled`, `resize`, `keep_metadata`.
//!
//! The original is stored first (Storage keys it by its SHA-256), then the
//! result is looked up by its key in the cache tiers and computed only when
//! none has it.

use std::time::Instant;

use axum::{
    body::Body,
    extract::{FromRequest, Multipart, RawQuery, Request, State, multipart::MultipartError},
    response::Response,
};
use futures_util::TryStreamExt;
use http::{HeaderMap, header};
use http_body_util::{LengthLimitError, Limited};
use nws_watermark::{
    options::Options,
    pb::{ImageFormat, OptimizeOptions, Position, PutResponse, ResizeFilter},
};

use super::{
    AppState,
    images::{Negotiated, image_response},
    query_pairs,
};
use crate::{
    cache::{CachedImage, Computed, ResultKey},
    error::ApiError,
    timing::ServerTiming,
    transfer,
};

const IMAGE_FIELD: &str = "image";
/// Longest option value read from a form; `wm_text` is at most 200 characters.
const MAX_OPTION_BYTES: usize = 4096;

pub async fn upload(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let mut timing = ServerTiming::start();
    let limit = state.max_upload_bytes;
    if declared_length(request.headers()).is_some_and(|length| length > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let (parts, body) = request.into_parts();
    let body = Body::new(Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)));
    let request = Request::from_parts(parts, body);

    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let mut options = FormOptions::for_request(request.headers());
    let reading = Instant::now();
    let (original, options) = if is_form {
        from_form(&state, request, limit, options).await?
    } else {
        for (name, value) in query_pairs(query.as_deref())? {
            options.set(&name, &value)?;
        }
        // Bad options are refused before a byte of the body is read.
        let options = options.validate()?;
        let stall = state.body_read_timeout;
        let bytes = TryStreamExt::map_err(request.into_body().into_data_stream(), move |e| {
            body_error(&e, limit, stall)
        });
        let original = transfer::store_original(&state.upstreams, Box::pin(bytes)).await?;
        (original, options)
    };
    timing.since("upload", "gateway: read and store the original", reading);

    let key = ResultKey::derive(&original.sha256, &options);
    let negotiated = if options.format_follows_accept() {
        Negotiated::Yes
    } else {
        Negotiated::No
    };
    let upstreams = &state.upstreams;
    let wire = options.negotiate().to_wire();
    let compute = transfer::optimize_stored(upstreams.clone(), original.sha256.clone(), wire);
    let compute = async move {
        let (header, bytes) = compute.await?;
        Ok(Computed {
            image: CachedImage::new(&key, bytes),
            header,
        })
    };
    let found = match state.cache.find(key, &mut timing, Some(compute)).await {
        Ok(found) => found,
        Err(error) => {
            if transfer::is_bad_image(&error) {
                transfer::forget_original(upstreams, &original).await;
            }
            return Err(error);
        }
    };
    if let Some(stages) = found.header.as_ref().and_then(|h| h.timings.as_ref()) {
        timing.add_stages(stages);
    }
    Ok(image_response(&found, &timing, negotiated, Some(&original)))
}

/// Reads a form whose fields may come in any order: the image streams into
/// Storage as it arrives; options before it are checked before it is
/// stored, options after it once the form ends.
async fn from_form(
    state: &AppState,
    request: Request,
    limit: u64,
    mut options: FormOptions,
) -> Result<(PutResponse, Options), ApiError> {
    let stall = state.body_read_timeout;
    let form_error = move |e: MultipartError| multipart_error(e, limit, stall);
    let mut form = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::BadRequest(format!("not a multipart form: {}", e.body_text())))?;
    let mut original = None;

    while let Some(mut field) = form.next_field().await.map_err(form_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == IMAGE_FIELD {
            if original.is_some() {
                return Err(ApiError::BadRequest(
                    "the form has more than one `image` field".to_owned(),
                ));
            }
            options.validate()?;
            let bytes = field.map_err(form_error);
            original = Some(transfer::store_original(&state.upstreams, Box::pin(bytes)).await?);
        } else if FormOptions::NAMES.contains(&name.as_str()) {
            let mut value = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(form_error)? {
                value.extend_from_slice(&chunk);
                if value.len() > MAX_OPTION_BYTES {
                    return Err(ApiError::BadRequest(format!(
                        "form field `{name}` is over {MAX_OPTION_BYTES} bytes"
                    )));
                }
            }
            let value = String::from_utf8(value)
                .map_err(|_| ApiError::BadRequest(format!("form field `{name}` is not UTF-8 text")))?;
            options.set(&name, &value)?;
        } else {
            // Unknown fields are ignored, as the Go original did; still read
            // them so the form can go on (the body limit bounds them).
            while field.chunk().await.map_err(form_error)?.is_some() {}
        }
    }

    let original =
        original.ok_or_else(|| ApiError::BadRequest("the form has no `image` field".to_owned()))?;
    Ok((original, options.validate()?))
}

/// The options an upload may carry, as parsed from text, and the request's
/// Accept values for `format=auto`. The rules on values are
/// [`Options`]', shared with the optimizer.
#[derive(Debug, Clone, Default, PartialEq)]
struct FormOptions {
    wire: OptimizeOptions,
    request_accept: Vec<String>,
}

impl FormOptions {
    /// The defaults for a request: `format=auto`, so its Accept decides.
    fn for_request(headers: &HeaderMap) -> Self {
        let request_accept: Vec<String> = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .map(str::to_owned)
            .collect();
        Self {
            wire: OptimizeOptions {
                accept: request_accept.clone(),
                ..OptimizeOptions::default()
            },
            request_accept,
        }
    }

    fn validate(&self) -> Result<Options, ApiError> {
        Options::try_from(self.wire.clone()).map_err(|bad| ApiError::BadRequest(bad.0))
    }

    const NAMES: [&'static str; 11] = [
        "keep_metadata",
        "wm_text",
        "wm_position",
        "wm_opacity",
        "wm_tiled",
        "resize",
        "format",
        "quality",
        "progressive",
        "max_width",
        "max_height",
    ];

    fn set(&mut self, name: &str, value: &str) -> Result<(), ApiError> {
        let options = &mut self.wire;
        match name {
            "wm_text" => options.watermark_text = value.to_owned(),
            "wm_position" => options.position = parse_position(value)? as i32,
            "format" => match parse_format(value)? {
                Some(format) => {
                    options.format = format as i32;
                    options.accept.clear();
                }
                None => {
                    options.format = ImageFormat::Unspecified as i32;
                    options.accept = self.request_accept.clone();
                }
            },
            "quality" => options.quality = parse_number(name, value)?,
            "progressive" => options.progressive = parse_flag(name, value)?,
            "wm_tiled" => options.tiled = parse_flag(name, value)?,
            "keep_metadata" => options.keep_metadata = parse_flag(name, value)?,
            "wm_opacity" => {
                options.opacity = match value.trim() {
                    "" => 0.0,
                    text => text
                        .parse()
                        .map_err(|_| ApiError::BadRequest(format!("{name} {text:?} is not a number")))?,
                }
            }
            "resize" => {
                options.resize_filter = match value.trim().to_ascii_lowercase().as_str() {
                    "" => ResizeFilter::Unspecified,
                    "lanczos3" => ResizeFilter::Lanczos3,
                    "fast" | "bilinear" => ResizeFilter::Fast,
                    other => {
                        return Err(ApiError::BadRequest(format!(
                            "resize {other:?} is not one of lanczos3, fast"
                        )));
                    }
                } as i32
            }
            "max_width" => options.max_width = parse_number(name, value)?,
            "max_height" => options.max_height = parse_number(name, value)?,
            _ => {} // not an option
        }
        Ok(())
    }
}

fn parse_position(value: &str) -> Result<Position, ApiError> {
    Ok(
        match value.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "" => Position::Unspecified,
            "top-left" => Position::TopLeft,
            "top-right" => Position::TopRight,
            "bottom-left" => Position::BottomLeft,
            "bottom-right" => Position::BottomRight,
            "center" | "centre" => Position::Center,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "wm_position {value:?} is not one of top-left, top-right, bottom-left, bottom-right, center"
                )));
            }
        },
    )
}

/// `None` for `auto`: the optimizer chooses from the request's Accept.
fn parse_format(value: &str) -> Result<Option<ImageFormat>, ApiError> {
    Ok(Some(match value.trim().to_ascii_lowercase().as_str() {
        "" | "auto" => return Ok(None),
        "jpeg" | "jpg" | "image/jpeg" => ImageFormat::Jpeg,
        "png" | "image/png" => ImageFormat::Png,
        "webp" | "image/webp" => ImageFormat::Webp,
        "avif" | "image/avif" => ImageFormat::Avif,
        _ => {
            return Err(ApiError::BadRequest(format!(
                "format {value:?} is not one of auto, avif, webp, jpeg, png"
            )));
        }
    }))
}

fn parse_number(name: &str, value: &str) -> Result<u32, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(0);
    }
    value
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{name} {value:?} is not a whole number")))
}

fn parse_flag(name: &str, value: &str) -> Result<bool, ApiError> {
    match value.trim() {
        "" | "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(ApiError::BadRequest(format!(
            "{name} {other:?} is not true or false"
        ))),
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn body_error(error: &axum::Error, limit: u64, stall: std::time::Duration) -> ApiError {
    match read_failure(error) {
        Some(ReadFailure::TooLarge) => ApiError::PayloadTooLarge { limit },
        Some(ReadFailure::Stalled) => ApiError::BodyTimeout(stall),
        None => ApiError::BadRequest(format!("the upload broke off: {error}")),
    }
}

fn multipart_error(error: MultipartError, limit: u64, stall: std::time::Duration) -> ApiError {
    match read_failure(&error) {
        Some(ReadFailure::Stalled) => ApiError::BodyTimeout(stall),
        _ if error.status() == http::StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge { limit },
        _ => ApiError::BadRequest(format!("malformed multipart form: {}", error.body_text())),
    }
}

enum ReadFailure {
    TooLarge,
    Stalled,
}

/// Why reading the body failed, when a limit did it: found in the error's
/// cause chain, where the body's layers put it.
fn read_failure(error: &(dyn std::error::Error + 'static)) -> Option<ReadFailure> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<LengthLimitError>() {
            return Some(ReadFailure::TooLarge);
        }
        if e.is::<tower_http::timeout::TimeoutError>() {
            return Some(ReadFailure::Stalled);
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_text_parses_or_names_the_problem() {
        let mut options = FormOptions::default();
        options.set("wm_position", "top_left").unwrap();
        options.set("format", "JPG").unwrap();
        options.set("quality", " 70 ").unwrap();
        options.set("unrelated", "x").unwrap();
        assert_eq!(options.wire.position, Position::TopLeft as i32);
        assert_eq!(options.wire.format, ImageFormat::Jpeg as i32);
        assert_eq!(options.wire.quality, 70);
        for (name, value, expected) in [
            ("wm_position", "middle", "wm_position \"middle\""),
            ("format", "bmp", "format \"bmp\""),
            ("quality", "high", "quality \"high\""),
        ] {
            let message = FormOptions::default().set(name, value).unwrap_err().to_string();
            assert!(message.contains(expected), "{message}");
        }
    }
}
