//! `POST /v1/watermark` (and the Go original's `POST /upload`): an image in,
//! a watermarked image out, streaming both ways.
//!
//! Two request shapes: `multipart/form-data` with the file in field `image`
//! and the options as fields, or the raw image as the body with the options
//! as query parameters. Options are `wm_text`, `wm_position`, `format`,
//! `quality`, `progressive`, `max_width`, `max_height`, `wm_opacity`,
//! `wm_tiled`, `resize`, `keep_metadata`.

use axum::{
    body::Body,
    extract::{FromRequest, Multipart, RawQuery, Request, State, multipart::MultipartError},
    response::{IntoResponse, Response},
};
use futures_util::TryStreamExt;
use http::{HeaderMap, HeaderValue, header};
use http_body_util::{LengthLimitError, Limited};
use nws_watermark::pb::{ImageFormat, OptimizeOptions, Position, ResizeFilter};

use super::AppState;
use crate::{
    error::ApiError,
    upload::{self, Keep, Processed},
};

const IMAGE_FIELD: &str = "image";
/// Longest option value read from a form; `wm_text` is at most 200 characters.
const MAX_OPTION_BYTES: usize = 4096;

pub async fn upload(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
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
    let mut options = FormOptions::for_request(&request);
    let processed = if is_form {
        from_form(&state, request, limit, options).await?
    } else {
        for (name, value) in form_pairs(query.as_deref().unwrap_or(""))? {
            options.set(&name, &value)?;
        }
        let bytes = TryStreamExt::map_err(request.into_body().into_data_stream(), move |e| {
            body_error(&e, limit)
        });
        upload::process(
            &state.upstreams,
            options.to_proto(),
            Box::pin(bytes),
            Keep::Original,
        )
        .await?
    };
    Ok(image_response(processed))
}

async fn from_form(
    state: &AppState,
    request: Request,
    limit: u64,
    mut options: FormOptions,
) -> Result<Processed, ApiError> {
    let form_error = move |e: MultipartError| multipart_error(e, limit);
    let mut form = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::BadRequest(format!("not a multipart form: {}", e.body_text())))?;
    let mut processed: Option<(Processed, FormOptions)> = None;

    while let Some(mut field) = form.next_field().await.map_err(form_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == IMAGE_FIELD {
            if processed.is_some() {
                return Err(ApiError::BadRequest(
                    "the form has more than one `image` field".to_owned(),
                ));
            }
            let bytes = field.map_err(form_error);
            let done = upload::process(
                &state.upstreams,
                options.to_proto(),
                Box::pin(bytes),
                Keep::Original,
            )
            .await?;
            processed = Some((done, options.clone()));
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

    let (processed, options_used) =
        processed.ok_or_else(|| ApiError::BadRequest("the form has no `image` field".to_owned()))?;
    if options_used == options {
        return Ok(processed);
    }
    // Options came after the file: the image streamed with the options known
    // then. Run it again from the stored original with all of them.
    let Processed { original, .. } = processed;
    let original = original.expect("fresh uploads are stored");
    let mut redone = upload::process_stored(&state.upstreams, &original.sha256, options.to_proto()).await?;
    redone.original = Some(original);
    Ok(redone)
}

/// The options an upload may carry, as parsed from text, and the request's
/// Accept values for `format=auto`. Ranges are the optimizer's to check, so
/// the rules live in one place.
#[derive(Debug, Clone, Default, PartialEq)]
struct FormOptions {
    wire: OptimizeOptions,
    request_accept: Vec<String>,
}

impl FormOptions {
    fn for_request(request: &Request) -> Self {
        let request_accept = request
            .headers()
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .map(str::to_owned)
            .collect();
        Self {
            wire: OptimizeOptions::default(),
            request_accept,
        }
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

    fn to_proto(&self) -> OptimizeOptions {
        self.wire.clone()
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
        "" => ImageFormat::Unspecified,
        "auto" => return Ok(None),
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

fn form_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let malformed = |detail: String| ApiError::BadRequest(format!("malformed query string: {detail}"));
    let uri: http::Uri = format!("/?{query}")
        .parse()
        .map_err(|e| malformed(format!("{e}")))?;
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| malformed(e.body_text()))
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn body_error(error: &axum::Error, limit: u64) -> ApiError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.is::<LengthLimitError>() {
            return ApiError::PayloadTooLarge { limit };
        }
        cause = e.source();
    }
    ApiError::BadRequest(format!("the upload broke off: {error}"))
}

fn multipart_error(error: MultipartError, limit: u64) -> ApiError {
    if error.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit }
    } else {
        ApiError::BadRequest(format!("malformed multipart form: {}", error.body_text()))
    }
}

fn image_response(processed: Processed) -> Response {
    let Processed {
        header,
        original,
        result,
    } = processed;
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    put("content-type", header.media_type.clone());
    put("content-length", header.size.to_string());
    put("x-image-width", header.width.to_string());
    put("x-image-height", header.height.to_string());
    if let Some(timings) = &header.timings {
        let ms = |micros: u64| micros as f64 / 1000.0;
        put(
            "server-timing",
            format!(
                "decode;dur={:.3}, resize;dur={:.3}, watermark;dur={:.3}, encode;dur={:.3}",
                ms(timings.decode_micros),
                ms(timings.resize_micros),
                ms(timings.watermark_micros),
                ms(timings.encode_micros)
            ),
        );
    }
    if let Some(original) = &original {
        put("x-original-sha256", original.sha256.clone());
        put("x-original-deduplicated", original.deduplicated.to_string());
        put("link", format!("</image/{}>; rel=\"original\"", original.sha256));
    }
    (headers, Body::from_stream(upload::result_bytes(result))).into_response()
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

    #[test]
    fn query_pairs_decode() {
        let pairs = form_pairs("wm_text=NWS%20%C2%A9&wm_position=center").unwrap();
        assert_eq!(pairs[0], ("wm_text".to_owned(), "NWS ©".to_owned()));
        assert_eq!(pairs[1].1, "center");
    }
}
