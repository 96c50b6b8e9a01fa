//! `GET /v1/images/{key}`: a result by its key, with the headers of an
//! immutable resource, and the response every image route shares.

use axum::{
    body::Body,
    extract::{Path, State},
    response::{IntoResponse, Response},
};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use nws_runtime::policy::UrlSigner;
use nws_watermark::{pb::PutResponse, render::ResultKey};

use super::AppState;
use crate::{error::ApiError, results::Found, timing::ServerTiming};

/// A key names one rendering of one original for good: caches anywhere
/// may keep it for a year without asking again.
pub const IMMUTABLE: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");

pub async fn get(
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = ResultKey::parse(&key).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "{key:?} is not a result key (64 lowercase hex characters)"
        ))
    })?;
    let etag = crate::results::etag(&key);
    if if_none_match(&headers, &etag) {
        // The representation behind a key never changes, so the client's
        // copy is current without looking anything up.
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        response.headers_mut().insert(header::ETAG, etag);
        response.headers_mut().insert(header::CACHE_CONTROL, IMMUTABLE);
        return Ok(response);
    }
    let mut timing = ServerTiming::start();
    let found = state.results.find(key, &mut timing).await?;
    Ok(image_response(&found, &timing, Negotiated::No, None, None))
}

/// Whether the response's format was chosen from the request's Accept.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Negotiated {
    Yes,
    No,
}

/// The response for a result: the bytes, with what a browser, a CDN and a
/// person debugging need to know about them. With `signer` (an upload's
/// answer when NWS_URL_SIGNING_KEY is set), the result's and the
/// original's links are signed, so an `<img>` tag can use them without a
/// token.
pub fn image_response(
    found: &Found,
    timing: &ServerTiming,
    negotiated: Negotiated,
    original: Option<&PutResponse>,
    signer: Option<&UrlSigner>,
) -> Response {
    let image = &found.image;
    let mut headers = HeaderMap::with_capacity(14);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(image.media_type));
    headers.insert(header::ETAG, image.etag.clone());
    let signed = |path: &str| signer.map_or_else(|| path.to_owned(), |signer| signer.sign(path));
    match (signer, image.location.to_str()) {
        (Some(_), Ok(path)) => {
            if let Ok(location) = HeaderValue::try_from(signed(path)) {
                headers.insert(header::CONTENT_LOCATION, location);
            }
        }
        _ => {
            headers.insert(header::CONTENT_LOCATION, image.location.clone());
        }
    }
    headers.insert(header::CACHE_CONTROL, IMMUTABLE);
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("x-cache", HeaderValue::from_static(found.source.header_value()));
    headers.insert("server-timing", timing.header_value());
    if negotiated == Negotiated::Yes {
        headers.insert(header::VARY, HeaderValue::from_static("accept"));
    }
    let mut put = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    };
    if let Some(header) = &found.header {
        put("x-image-width", header.width.to_string());
        put("x-image-height", header.height.to_string());
        if header.frames > 1 {
            put("x-image-frames", header.frames.to_string());
        }
    }
    // Where the result lives is already in Content-Location; an upload
    // also links the original it came from.
    if let Some(original) = original {
        put("x-original-sha256", original.sha256.clone());
        put("x-original-deduplicated", original.deduplicated.to_string());
        put(
            "link",
            format!(
                "<{}>; rel=\"original\"",
                signed(&format!("/image/{}", original.sha256))
            ),
        );
    }
    // The bytes are shared with the cache: no copy.
    (headers, Body::from(image.bytes.clone())).into_response()
}

/// `If-None-Match` as RFC 9110 reads it for GET: weak comparison, a list,
/// or `*`.
pub fn if_none_match(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let ours = etag.as_bytes();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_weakly_and_reads_lists() {
        let etag = HeaderValue::from_static("\"abc\"");
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static(value));
            if_none_match(&headers, &etag)
        };
        assert!(with("\"abc\""));
        assert!(with("W/\"abc\""));
        assert!(with("\"x\", \"abc\""));
        assert!(with("*"));
        assert!(!with("\"abd\""));
        assert!(!with("abc"));
        assert!(!if_none_match(&HeaderMap::new(), &etag));
    }
}
