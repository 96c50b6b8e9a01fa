//! The HTTP surface: one module per group of routes, all behind the
//! runtime's HTTP layer stack.

mod health;
mod images;
mod jobs;
mod objects;
mod watermark;

pub use images::{IMMUTABLE, if_none_match};

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Bytes,
    extract::DefaultBodyLimit,
    routing::{get, post},
};
use http::{Method, header};
use nws_runtime::{
    http::HttpConfig,
    policy::{HttpRules, Policy},
    telemetry::GATEWAY,
};
use nws_watermark::access::{self, Access, RateClass};

use crate::{results::Results, transcode::Binding, upstream::Upstreams};

/// What every handler shares. Extractors clone it for each request, so it
/// is one reference count, not a copy of every client handle.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub upstreams: Upstreams,
    pub results: Results,
    pub max_upload_bytes: u64,
    pub body_read_timeout: Duration,
    /// NWS_AUTO_AVIF: `format=auto` waits for the most compact format.
    pub auto_avif: bool,
    /// Who may call what; signs the links uploads answer with.
    pub policy: Policy,
    /// The durable job queue (when NWS_AMQP_URL is set) and job status.
    pub jobs: crate::jobs::Jobs,
    /// NWS_WATERMARK_IMAGE: the mark image of uploads that name none.
    pub default_mark: Option<crate::mark_image::DefaultMark>,
    /// NWS_TRACE_VIEWER_URL: where the page links a trace id.
    pub trace_viewer: Option<String>,
    /// NWS_WEB_UI: serve the browser front-end at `/`.
    pub web_ui: bool,
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

pub fn router(state: AppState, bindings: &[Binding], http: &HttpConfig, policy: &Policy) -> Router {
    let openapi = Bytes::from(
        serde_json::to_vec(&crate::openapi::document(bindings)).expect("a JSON value serialises"),
    );
    let web_ui = state.web_ui;
    let mut router = Router::new()
        .route("/v1/watermark", post(watermark::upload))
        .route("/upload", post(watermark::upload))
        .route("/v1/images/{key}", get(images::get))
        .route("/image/{sha256}", get(objects::original))
        .route("/status/{sha256}", get(objects::status))
        .route("/v1/jobs/{id}", get(jobs::status))
        .route("/v1/jobs/{id}/events", get(jobs::events))
        .route("/v1/admin/dead-jobs", get(jobs::dead))
        .route("/v1/admin/dead-jobs/replay", post(jobs::replay))
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(nws_runtime::telemetry::metrics::handler))
        .route(
            "/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], openapi.clone()) }),
        )
        .merge(crate::transcode::routes(bindings, &state.upstreams));
    if web_ui {
        router = router.merge(crate::web::routes());
    }
    let router = router
        .with_state(state)
        // Upload handlers enforce NWS_MAX_UPLOAD_BYTES themselves, while
        // streaming; axum's buffered default must not cut in first.
        .layer(DefaultBodyLimit::disable());
    nws_runtime::http::layer_stack(router, GATEWAY.name, http, policy, rules(bindings, web_ui))
}

const JOBS_ADMIN: Access = Access::Scoped {
    scope: access::JOBS_ADMIN,
    class: RateClass::Read,
};

/// What each route needs. Results and originals also open to signed links
/// (for `<img>` tags, which cannot send a token); a transcoded route needs
/// what its RPC needs.
fn rules(bindings: &[Binding], web_ui: bool) -> HttpRules {
    let mut rules = HttpRules::new();
    rules
        .insert(Method::POST, "/v1/watermark", Access::WRITE)
        .insert(Method::POST, "/upload", Access::WRITE)
        .insert_signed(Method::GET, "/v1/images/{key}", Access::READ)
        .insert_signed(Method::GET, "/image/{sha256}", Access::READ)
        .insert(Method::GET, "/status/{sha256}", Access::READ)
        // Signed too: a browser's EventSource cannot send a token.
        .insert_signed(Method::GET, "/v1/jobs/{id}", Access::READ)
        .insert_signed(Method::GET, "/v1/jobs/{id}/events", Access::READ)
        .insert(Method::GET, "/v1/admin/dead-jobs", JOBS_ADMIN)
        .insert(Method::POST, "/v1/admin/dead-jobs/replay", JOBS_ADMIN)
        .insert(Method::GET, "/healthz", Access::Open)
        .insert(Method::GET, "/readyz", Access::Open)
        .insert(Method::GET, "/openapi.json", Access::Open)
        .insert(
            Method::GET,
            "/metrics",
            Access::Scoped {
                scope: access::METRICS_READ,
                class: RateClass::Read,
            },
        );
    if web_ui {
        // The page itself is public; what it calls is not.
        rules
            .insert(Method::GET, "/", Access::Open)
            .insert(Method::GET, "/assets/{file}", Access::Open)
            .insert(Method::GET, "/ui/config.json", Access::Open);
        for path in crate::web::top_level_paths() {
            rules.insert(Method::GET, path, Access::Open);
        }
    }
    for binding in bindings {
        let path = format!(
            "/{}/{}",
            binding.method.parent_service().full_name(),
            binding.method.name()
        );
        let needs = access::for_method(&path).unwrap_or(Access::WRITE);
        rules.insert(binding.http_method.clone(), &binding.template, needs);
    }
    rules
}
