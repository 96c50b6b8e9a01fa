//! The HTTP surface and the layer stack in front of it.

mod health;
mod objects;
mod watermark;

use std::any::Any;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    response::Response,
    routing::{get, post},
};
use http::StatusCode;
use tonic::Code;
use tower::ServiceBuilder;
use tower_http::{catch_panic::CatchPanicLayer, trace::TraceLayer};

use crate::{error::json_error, upstream::Upstreams};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub upstreams: Upstreams,
    pub max_upload_bytes: u64,
}

pub fn router(state: AppState) -> Router {
    let router = Router::new()
        .route("/v1/watermark", post(watermark::upload))
        .route("/upload", post(watermark::upload))
        .route("/image/{sha256}", get(objects::original))
        .route("/status/{sha256}", get(objects::status))
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        // Upload handlers enforce NWS_MAX_UPLOAD_BYTES themselves, while
        // streaming; axum's buffered default must not cut in first.
        .layer(DefaultBodyLimit::disable());
    with_layer_stack(router)
}

/// The layers around every route, outermost first: the trace span covers
/// everything, including a panic turned into a JSON 500 by the layer below
/// it, so no request goes unlogged and no panic reaches a client as a
/// dropped connection or a stack trace. Later layers (trace context, auth,
/// rate limits, load shedding) slot in below these two.
fn with_layer_stack(router: Router) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(TraceLayer::new_for_http())
            .layer(CatchPanicLayer::custom(panic_response)),
    )
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
