//! W3C trace context (`traceparent`, `tracestate`) and `baggage` in and out
//! of any carrier: HTTP headers and gRPC metadata here, and anything else
//! (a queued message's headers) through [`Injector`]/[`Extractor`].
//!
//! Which formats are read and written follows `OTEL_PROPAGATORS` (default
//! `tracecontext,baggage`), installed once by [`super::init`].

use http::{HeaderMap, HeaderName, HeaderValue};
pub use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::{
    Context,
    baggage::BaggageExt as _,
    propagation::{TextMapCompositePropagator, TextMapPropagator},
    trace::TraceContextExt as _,
};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The propagator `OTEL_PROPAGATORS` names: `tracecontext`, `baggage` or
/// `none`, comma-separated. Names of formats this build does not speak are
/// returned apart, for a warning (the specification says to ignore them).
pub(crate) fn from_env(value: Option<&str>) -> (TextMapCompositePropagator, Vec<String>) {
    let value = value.map(str::trim).filter(|v| !v.is_empty());
    let mut propagators: Vec<Box<dyn TextMapPropagator + Send + Sync>> = Vec::new();
    let mut unknown = Vec::new();
    let mut seen = Vec::new();
    for name in value.unwrap_or("tracecontext,baggage").split(',').map(str::trim) {
        if seen.contains(&name) {
            continue;
        }
        seen.push(name);
        match name {
            "tracecontext" => propagators.push(Box::new(TraceContextPropagator::new())),
            "baggage" => propagators.push(Box::new(BaggagePropagator::new())),
            "none" => {}
            other => unknown.push(other.to_owned()),
        }
    }
    if seen.contains(&"none") {
        propagators.clear();
    }
    (TextMapCompositePropagator::new(propagators), unknown)
}

/// The caller's context from any carrier.
pub fn extract(carrier: &dyn Extractor) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(carrier))
}

/// Writes `context` into any carrier.
pub fn inject(context: &Context, carrier: &mut dyn Injector) {
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.inject_context(context, carrier));
}

/// The caller's context from HTTP headers or gRPC metadata (which are HTTP/2
/// headers).
pub fn extract_headers(headers: &HeaderMap) -> Context {
    extract(&Headers(headers))
}

/// Writes `context` into HTTP headers or gRPC metadata.
pub fn inject_headers(context: &Context, headers: &mut HeaderMap) {
    inject(context, &mut HeadersMut(headers));
}

/// Writes `span`'s context into headers: how work handed to another
/// process (a queued job's message) carries the trace that set it going.
pub fn inject_span(span: &tracing::Span, headers: &mut HeaderMap) {
    inject_headers(&span.context(), headers);
}

/// Makes `span` a child of the caller's context in `headers`, when they
/// carry one; otherwise the span starts a trace of its own.
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    let parent = extract_headers(headers);
    if parent.span().span_context().is_valid() || !parent.baggage().is_empty() {
        let _ = span.set_parent(parent);
    }
}

/// Work that outlives its request (a background render, a cache fill) gets
/// a span of its own, made with `parent: None` so that the request's span
/// can end; this links it into the request's trace as a child all the
/// same, so the trace shows what the request set going.
pub fn follows_current(span: tracing::Span) -> tracing::Span {
    let _ = span.set_parent(tracing::Span::current().context());
    span
}

/// The trace id and span id of `span`, as lowercase hex, when it has a
/// valid context (a trace is being recorded or propagated).
pub fn ids(span: &tracing::Span) -> Option<(String, String)> {
    let context = span.context();
    let span_ref = context.span();
    let span_context = span_ref.span_context();
    span_context.is_valid().then(|| {
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    })
}

/// The `traceparent` value naming `span`, for a response header.
pub fn traceparent(span: &tracing::Span) -> Option<HeaderValue> {
    let context = span.context();
    let mut headers = HeaderMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut HeadersMut(&mut headers));
    headers.remove("traceparent")
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// What a server does with a request's headers, and a client of it with
    /// its call's: the trace continues, baggage and tracestate travel on.
    #[test]
    fn context_continues_from_incoming_headers_to_outgoing_ones() {
        let (propagator, _) = from_env(None);
        opentelemetry::global::set_text_map_propagator(propagator);
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let mut incoming = HeaderMap::new();
            incoming.insert(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                    .parse()
                    .unwrap(),
            );
            incoming.insert("tracestate", "vendor=opaque".parse().unwrap());
            incoming.insert("baggage", "tenant=acme,plan=pro".parse().unwrap());
            let server = tracing::info_span!("server");
            continue_trace(&server, &incoming);
            let (trace_id, server_id) = ids(&server).unwrap();
            assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_ne!(server_id, "00f067aa0ba902b7", "a span of its own");

            let client = server.in_scope(|| tracing::info_span!("client"));
            let mut outgoing = HeaderMap::new();
            inject_headers(&client.context(), &mut outgoing);
            let (_, client_id) = ids(&client).unwrap();
            assert_eq!(
                outgoing["traceparent"],
                format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{client_id}-01")
            );
            assert_eq!(outgoing["tracestate"], "vendor=opaque");
            let mut baggage: Vec<&str> = outgoing["baggage"].to_str().unwrap().split(',').collect();
            baggage.sort_unstable();
            assert_eq!(baggage, ["plan=pro", "tenant=acme"]);

            // The response names the server's span.
            assert_eq!(
                traceparent(&server).unwrap(),
                format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{server_id}-01")
            );
            // Without context, a trace starts; nothing else is made up.
            let root = tracing::info_span!("root");
            continue_trace(&root, &HeaderMap::new());
            let mut headers = HeaderMap::new();
            inject_headers(&root.context(), &mut headers);
            assert!(headers.contains_key("traceparent"));
            assert!(!headers.contains_key("baggage"));
        });
    }

    #[test]
    fn otel_propagators_are_read_as_the_specification_says() {
        let fields = |value: Option<&str>| {
            let (propagator, unknown) = from_env(value);
            let mut fields: Vec<String> = propagator.fields().map(str::to_owned).collect();
            fields.sort();
            (fields, unknown)
        };
        let both = (
            vec![
                "baggage".to_owned(),
                "traceparent".to_owned(),
                "tracestate".to_owned(),
            ],
            vec![],
        );
        assert_eq!(fields(None), both);
        assert_eq!(fields(Some("")), both);
        assert_eq!(fields(Some("tracecontext, baggage,tracecontext")), both);
        assert_eq!(
            fields(Some("tracecontext,b3")),
            (
                vec!["traceparent".to_owned(), "tracestate".to_owned()],
                vec!["b3".to_owned()]
            )
        );
        assert_eq!(fields(Some("none")), (vec![], vec![]));
        assert_eq!(fields(Some("baggage,none")), (vec![], vec![]));
    }
}
