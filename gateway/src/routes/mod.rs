//! The HTTP surface and the layer stack in front of it.

mod health;
mod images;
mod objects;
mod watermark;

use std::{
    any::Any,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, Request, State},
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};
use http::{HeaderValue, StatusCode, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Code;
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    compression::CompressionLayer,
    timeout::{RequestBodyTimeoutLayer, TimeoutBody},
    trace::TraceLayer,
};

use crate::{
    cache::ResultCache,
    error::{ApiError, json_error},
    transcode::Binding,
    upstream::Upstreams,
};

/// What every handler shares. Extractors clone it for each request, so it
/// is one reference count, not a copy of every client handle.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub upstreams: Upstreams,
    pub cache: ResultCache,
    pub max_upload_bytes: u64,
    pub body_read_timeout: Duration,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Limits the layer stack enforces.
pub struct HttpLimits {
    pub max_concurrent_requests: usize,
    pub body_read_timeout: Duration,
}

pub fn router(state: AppState, bindings: &[Binding], limits: &HttpLimits) -> Router {
    let openapi = Bytes::from(
        serde_json::to_vec(&crate::openapi::document(bindings)).expect("a JSON value serialises"),
    );
    let router = Router::new()
        .route("/v1/watermark", post(watermark::upload))
        .route("/upload", post(watermark::upload))
        .route("/v1/images/{key}", get(images::get))
        .route("/image/{sha256}", get(objects::original))
        .route("/status/{sha256}", get(objects::status))
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .route(
            "/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], openapi.clone()) }),
        )
        .merge(crate::transcode::routes(bindings, &state.upstreams))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        // Upload handlers enforce NWS_MAX_UPLOAD_BYTES themselves, while
        // streaming; axum's buffered default must not cut in first.
        .layer(DefaultBodyLimit::disable());
    with_layer_stack(router, limits)
}

/// The layers around every route, outermost first:
/// 1. the trace span covers everything, so no request goes unlogged;
/// 2. a panic becomes a JSON 500 instead of a dropped connection;
/// 3. load shedding answers 503 at once past the concurrency bound, before
///    any work (later: trace context, auth and rate limits go above it,
///    so refused requests cost nothing downstream);
/// 4. a stalled request body fails after NWS_BODY_READ_TIMEOUT;
/// 5. JSON and text responses are compressed (gzip, br, zstd) when the
///    client asks; images never are, they are compressed already.
fn with_layer_stack(router: Router, limits: &HttpLimits) -> Router {
    let permits = Arc::new(Semaphore::new(limits.max_concurrent_requests));
    router.layer(
        ServiceBuilder::new()
            .layer(TraceLayer::new_for_http())
            .layer(CatchPanicLayer::custom(panic_response))
            .layer(middleware::from_fn_with_state(permits, shed_load))
            .layer(RequestBodyTimeoutLayer::new(limits.body_read_timeout))
            .map_request(|request: Request<TimeoutBody<Body>>| request.map(Body::new))
            .layer(CompressionLayer::new()),
    )
}

/// Refuses a request when NWS_MAX_CONCURRENT_REQUESTS are already in
/// flight; a request counts until its response body is sent. Health
/// checks are never shed, so an overloaded gateway is not restarted for it.
async fn shed_load(State(permits): State<Arc<Semaphore>>, request: Request, next: Next) -> Response {
    if matches!(request.uri().path(), "/healthz" | "/readyz") {
        return next.run(request).await;
    }
    let Ok(permit) = permits.try_acquire_owned() else {
        let mut response = json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::Unavailable,
            "the gateway is at its concurrent request limit (NWS_MAX_CONCURRENT_REQUESTS); retry shortly",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    next.run(request).await.map(|body| {
        Body::new(HoldsPermit {
            body,
            _permit: permit,
        })
    })
}

/// A response body that keeps its request's concurrency permit until it
/// is sent or dropped.
struct HoldsPermit {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for HoldsPermit {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A query string's `name=value` pairs, percent-decoded, in order.
pub(crate) fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let malformed = |detail: String| ApiError::BadRequest(format!("malformed query string: {detail}"));
    let uri: http::Uri = format!("/?{}", query.unwrap_or(""))
        .parse()
        .map_err(|e| malformed(format!("{e}")))?;
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| malformed(e.body_text()))
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %detail, "handler panicked");
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        "internal error",
    )
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, Code::NotFound, "no such route")
}

async fn method_not_allowed() -> Response {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        Code::Unimplemented,
        "this route does not take that method",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_decode() {
        let pairs = query_pairs(Some("wm_text=NWS%20%C2%A9&wm_position=center")).unwrap();
        assert_eq!(pairs[0], ("wm_text".to_owned(), "NWS ©".to_owned()));
        assert_eq!(pairs[1].1, "center");
        assert!(query_pairs(None).unwrap().is_empty());
    }
}
