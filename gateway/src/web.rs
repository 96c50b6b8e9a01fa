//! The browser front-end at `/`: the files of `web/dist`, embedded at
//! build time (`build.rs`), served with what a page that handles tokens
//! and uploads needs: a strict Content-Security-Policy, long cache
//! lifetimes for the content-hashed files, ETags for the rest, and the
//! Brotli or gzip copy made at build time when the client takes it. And
//! `GET /ui/config.json`: what the page needs to know about this gateway.

use std::{collections::HashMap, sync::LazyLock};

use axum::{
    Json, Router,
    extract::{Path, State},
    response::{IntoResponse, Response},
    routing::get,
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use nws_watermark::params::PARAMS;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use crate::{error::ApiError, routes::AppState};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/web_files.rs"));
}

/// Where Vite puts the files whose names carry a hash of their content.
const HASHED_DIR: &str = "/assets/";

/// Nothing but this origin's own scripts, styles and requests; images
/// also from `blob:` (the page shows files before and after upload from
/// memory). No inline code, no plugins, no framing, and DOM sinks take
/// only trusted types: the page writes no HTML from strings.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; require-trusted-types-for 'script'";

const REVALIDATE: HeaderValue = HeaderValue::from_static("no-cache");

struct WebFile {
    media_type: &'static str,
    immutable: bool,
    /// Its Brotli and gzip copies when the build made them
    /// (`web/scripts/compress.mjs`), best first, then the file as built.
    encodings: Vec<Encoded>,
}

struct Encoded {
    /// `None`: the bytes as they are.
    coding: Option<&'static str>,
    bytes: &'static [u8],
    /// Each encoding is its own representation, with its own tag.
    etag: HeaderValue,
}

/// The copies the build compresses, by suffix, in the order preferred.
const CODINGS: [(&str, &str); 2] = [("br", ".br"), ("gzip", ".gz")];

/// The embedded files by the path they are served at; compressed copies
/// are encodings of their file, not paths of their own.
static FILES: LazyLock<HashMap<&'static str, WebFile>> = LazyLock::new(|| {
    let all: HashMap<&str, &[u8]> = embedded::FILES.iter().copied().collect();
    let is_copy = |path: &str| CODINGS.iter().any(|(_, suffix)| path.ends_with(suffix));
    all.iter()
        .filter(|(path, _)| !is_copy(path))
        .map(|(&path, &bytes)| {
            let digest = hex::encode(&Sha256::digest(bytes)[..12]);
            let tag = |suffix: &str| {
                HeaderValue::try_from(format!("\"{digest}{suffix}\"")).expect("hex is a valid header")
            };
            let mut encodings: Vec<Encoded> = CODINGS
                .iter()
                .filter_map(|&(coding, suffix)| {
                    let copy = all.get(format!("{path}{suffix}").as_str())?;
                    Some(Encoded {
                        coding: Some(coding),
                        bytes: copy,
                        etag: tag(&format!("-{coding}")),
                    })
                })
                .collect();
            encodings.push(Encoded {
                coding: None,
                bytes,
                etag: tag(""),
            });
            let file = WebFile {
                media_type: media_type(path),
                immutable: path.starts_with(HASHED_DIR),
                encodings,
            };
            (path, file)
        })
        .collect()
});

/// Whether `Accept-Encoding` takes `coding` (named, or `*`, with a
/// quality above 0).
fn accepts(request: &HeaderMap, coding: &str) -> bool {
    request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let quality = parts
                .filter_map(|param| param.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (name.eq_ignore_ascii_case(coding) || name == "*") && quality > 0.0
        })
}

fn media_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, extension)| extension) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json" | "webmanifest") => "application/json",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// The page's routes: `/`, one route per top-level file, `/assets/{file}`,
/// and `/ui/config.json`. Paths the page does not have get the API's 404.
pub fn routes() -> Router<AppState> {
    let mut router = Router::new()
        .route(
            "/",
            get(|headers: HeaderMap| async move { serve("/index.html", &headers) }),
        )
        .route(
            "/assets/{file}",
            get(|Path(file): Path<String>, headers: HeaderMap| async move {
                serve(&format!("{HASHED_DIR}{file}"), &headers)
            }),
        )
        .route("/ui/config.json", get(config));
    for path in top_level_paths() {
        router = router.route(
            path,
            get(move |headers: HeaderMap| async move { serve(path, &headers) }),
        );
    }
    router
}

/// The embedded files outside `/assets/` (index.html, the icon), each
/// served at its own path.
pub fn top_level_paths() -> impl Iterator<Item = &'static str> {
    FILES.keys().copied().filter(|path| !path.starts_with(HASHED_DIR))
}

fn serve(path: &str, request: &HeaderMap) -> Result<Response, ApiError> {
    let file = FILES
        .get(path)
        .ok_or_else(|| ApiError::NotFound(format!("no file {path} in the web front-end")))?;
    let chosen = file
        .encodings
        .iter()
        .find(|encoded| encoded.coding.is_none_or(|coding| accepts(request, coding)))
        .expect("every file has its plain bytes");
    let mut headers = security_headers();
    headers.insert(header::ETAG, chosen.etag.clone());
    headers.insert(
        header::CACHE_CONTROL,
        if file.immutable {
            crate::routes::IMMUTABLE
        } else {
            REVALIDATE
        },
    );
    if file.encodings.len() > 1 {
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    if crate::routes::if_none_match(request, &chosen.etag) {
        return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(file.media_type));
    if let Some(coding) = chosen.coding {
        // Already compressed: the compression layer leaves it as it is.
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
    }
    Ok((headers, chosen.bytes).into_response())
}

fn security_headers() -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(10);
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
        (
            HeaderName::from_static("permissions-policy"),
            "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
}

/// `GET /ui/config.json`: this gateway's limits, whether it wants a token,
/// and every upload option with its default and range (the schemas the
/// OpenAPI document gives, from the parser's own table).
async fn config(State(state): State<AppState>) -> Response {
    let options: Map<String, Value> = PARAMS
        .iter()
        .map(|param| (param.name.to_owned(), crate::openapi::param_schema(param.kind)))
        .collect();
    let body = json!({
        "max_upload_bytes": state.max_upload_bytes,
        "auth": state.policy.authenticates(),
        "signed_links": state.policy.signer().is_some(),
        "queue": state.jobs.is_configured(),
        "trace_viewer": state.trace_viewer,
        "options": options,
    });
    ([(header::CACHE_CONTROL, REVALIDATE)], Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_embedded_with_its_hashed_assets() {
        let index = FILES.get("/index.html").expect("web/dist/index.html is embedded");
        let html = std::str::from_utf8(index.encodings.last().unwrap().bytes).expect("UTF-8");
        assert!(
            !index.immutable,
            "index.html names the current assets: revalidated"
        );
        let mut referenced = 0;
        for attribute in ["src=\"", "href=\""] {
            for piece in html.split(attribute).skip(1) {
                let target = piece.split('"').next().unwrap();
                if target.starts_with(HASHED_DIR) {
                    let file = FILES
                        .get(target)
                        .unwrap_or_else(|| panic!("{target} is referenced but not embedded"));
                    assert!(file.immutable);
                    let codings: Vec<_> = file.encodings.iter().map(|e| e.coding).collect();
                    assert_eq!(
                        codings,
                        [Some("br"), Some("gzip"), None],
                        "{target} is precompressed"
                    );
                    referenced += 1;
                }
            }
        }
        assert!(
            referenced >= 2,
            "the page loads its script and stylesheet from /assets/: {html}"
        );
        assert!(
            !html.contains("<script>") && !html.contains("<style"),
            "no inline code: the CSP forbids it"
        );
    }

    #[test]
    fn the_best_encoding_the_request_takes_is_served() {
        let script = FILES
            .iter()
            .find(|(path, _)| path.ends_with(".js"))
            .map(|(path, _)| *path)
            .expect("the page has a script");
        let served = |accept: Option<&'static str>| {
            let mut request = HeaderMap::new();
            if let Some(accept) = accept {
                request.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(accept));
            }
            let response = serve(script, &request).unwrap();
            assert_eq!(response.headers()[header::VARY], "accept-encoding");
            response
                .headers()
                .get(header::CONTENT_ENCODING)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(served(Some("gzip, deflate, br, zstd")).as_deref(), Some("br"));
        assert_eq!(served(Some("gzip")).as_deref(), Some("gzip"));
        assert_eq!(served(Some("br;q=0, gzip;q=0.5")).as_deref(), Some("gzip"));
        assert_eq!(served(Some("*")).as_deref(), Some("br"));
        assert_eq!(served(Some("identity")), None);
        assert_eq!(served(None), None);
    }

    #[test]
    fn a_current_copy_is_answered_with_304_per_encoding() {
        let mut request = HeaderMap::new();
        request.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("br"));
        let first = serve("/index.html", &request).unwrap();
        let etag = first.headers()[header::ETAG].clone();
        assert_eq!(first.headers()[header::CACHE_CONTROL], "no-cache");
        request.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(
            serve("/index.html", &request).unwrap().status(),
            StatusCode::NOT_MODIFIED
        );
        assert!(serve("/nothing.html", &request).is_err());
    }

    #[test]
    fn media_types_follow_extensions() {
        assert_eq!(media_type("/index.html"), "text/html; charset=utf-8");
        assert_eq!(
            media_type("/assets/index-abc.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(media_type("/favicon.svg"), "image/svg+xml");
        assert_eq!(media_type("/x.unknown"), "application/octet-stream");
    }
}
