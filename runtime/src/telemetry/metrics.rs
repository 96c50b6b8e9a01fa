//! Prometheus metrics: every crate records through the `metrics` facade,
//! one recorder per process renders the text format. Every series carries a
//! `service` label, so the all-in-one run serves its three services' series
//! side by side.
//!
//! Conventions: base units in names (`_seconds`, `_bytes`), `_total` on
//! counters, labels of bounded cardinality (route templates, never paths).

use std::{sync::OnceLock, time::Duration};

use axum::response::{IntoResponse, Response};
use http::header;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Durations: from a cache hit (sub-millisecond) to an AVIF encode of a
/// large image (tens of seconds).
const SECONDS_BUCKETS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// Sizes: powers of four from 1 KiB to 256 MiB.
const BYTES_BUCKETS: [f64; 10] = [
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder (once) and keeps histograms compacted.
pub(super) fn install() {
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)
            .and_then(|builder| {
                builder.set_buckets_for_metric(Matcher::Suffix("_bytes".to_owned()), &BYTES_BUCKETS)
            })
            .and_then(PrometheusBuilder::install_recorder)
            .expect("the metrics recorder is installed once, with valid buckets");
        let upkeep = handle.clone();
        // Histogram samples are held until folded into their buckets; fold
        // them even when nobody scrapes, so they cannot pile up.
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
        describe();
        handle
    });
}

/// `# HELP` for the series the runtime records itself.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        "http_server_request_duration_seconds",
        Unit::Seconds,
        "HTTP requests by route template and status, until the response headers"
    );
    describe_histogram!(
        "rpc_server_call_duration_seconds",
        Unit::Seconds,
        "gRPC calls served, by method and status code, until their last message"
    );
    describe_histogram!(
        "rpc_client_call_duration_seconds",
        Unit::Seconds,
        "gRPC calls made, by method and status code, until their last message"
    );
    describe_counter!(
        "nws_trace_spans_total",
        "Finished spans by what became of them: exported, or dropped (queue full, export failed, shutdown)"
    );
    describe_counter!(
        "nws_rate_limit_decisions_total",
        "Calls checked against a caller's rate limit, by bucket (upload, read) and outcome (allowed, limited)"
    );
    describe_gauge!(
        "nws_upstream_endpoints",
        "Addresses an upstream given as dns:///name:port resolves to, that calls are spread over"
    );
    describe_gauge!(
        "nws_build_info",
        "1, labelled with the version and pipeline version"
    );
}

/// `nws_build_info`: 1, labelled with the service and what built it.
pub(super) fn build_info(service: &'static str) {
    metrics::gauge!(
        "nws_build_info",
        "service" => service,
        "version" => env!("CARGO_PKG_VERSION"),
        "pipeline_version" => nws_watermark::options::PIPELINE_VERSION,
    )
    .set(1.0);
}

/// The process's metrics in the Prometheus text format.
pub fn render() -> String {
    HANDLE.get().map(PrometheusHandle::render).unwrap_or_default()
}

/// A `GET /metrics` handler.
pub async fn handler() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        render(),
    )
        .into_response()
}
