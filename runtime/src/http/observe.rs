//! Every HTTP request observed the OpenTelemetry way: a server span named
//! `METHOD route` that continues the caller's trace, a duration histogram
//! per route template (never the raw path: its cardinality is the
//! client's to choose) and status, and a response that names its trace.

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};
use http::{HeaderName, HeaderValue, Method};
use tracing::{Span, field::Empty};

use super::PROBE_PATHS;
use crate::telemetry::propagation::{continue_trace, ids, traceparent};

/// The header that carries a response's trace id on its own, for users to
/// quote and for log searches.
pub const TRACE_ID_HEADER: HeaderName = HeaderName::from_static("x-trace-id");

/// Paths whose requests are counted but not traced: probes and scrapes
/// every few seconds would bury the traces worth reading.
fn untraced(path: &str) -> bool {
    PROBE_PATHS.contains(&path) || path == "/metrics"
}

#[derive(Debug, Clone, Copy)]
pub(super) struct MakeRequestSpan {
    pub(super) service: &'static str,
}

impl<B> tower_http::trace::MakeSpan<B> for MakeRequestSpan {
    fn make_span(&mut self, request: &http::Request<B>) -> Span {
        let path = request.uri().path();
        if untraced(path) {
            return Span::none();
        }
        let method = known_method(request.method());
        let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
        let query = request.uri().query().map(without_signature);
        let span = tracing::info_span!(
            "http.server",
            otel.name = format!("{method} {}", route.unwrap_or_default()).trim_end(),
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = method,
            http.route = route,
            url.path = path,
            url.query = query.as_deref(),
            http.response.status_code = Empty,
            nws.service = self.service,
        );
        continue_trace(&span, request.headers());
        span
    }
}

/// A query with a signed link's signature masked: traces are read by more
/// people than the link was given to.
fn without_signature(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            if pair.starts_with("sig=") {
                "sig=REDACTED"
            } else {
                pair
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Methods outside HTTP's own set are one label value, as the conventions
/// say: a client must not be able to mint series.
fn known_method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// Counts the request and names its trace in the response.
pub(super) async fn observe(State(service): State<&'static str>, request: Request, next: Next) -> Response {
    let method = known_method(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let started = std::time::Instant::now();
    let mut response = next.run(request).await;
    let status = response.status();

    let span = Span::current();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    if let Some((trace_id, _)) = ids(&span) {
        let headers = response.headers_mut();
        if let Some(value) = traceparent(&span) {
            headers.insert(HeaderName::from_static("traceparent"), value);
        }
        if let Ok(value) = HeaderValue::try_from(trace_id) {
            headers.insert(TRACE_ID_HEADER, value);
        }
    }
    metrics::histogram!(
        "http_server_request_duration_seconds",
        "service" => service,
        "http_request_method" => method,
        "http_route" => route,
        "http_response_status_code" => status.as_str().to_owned(),
    )
    .record(started.elapsed());
    response
}
