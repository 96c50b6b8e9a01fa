//! The all-in-one run observed as a deployment would be: its three
//! services report their spans under their own names, in one trace per
//! upload, and one admin listener serves the three services' metrics.

use nws_runtime::testing::{OtlpReceiver, Scrape, assert_upload_tree, eventually, test_image, upload_trace};

use crate::{KLEIBER, Mesh};

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN_ID: &str = "b7ad6b7169203331";

#[tokio::test]
async fn each_embedded_service_reports_its_spans_under_its_own_name() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let mesh = Mesh::start_with(&[
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "watermarks"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test"),
    ]);
    let response = mesh
        .http
        .post(mesh.url("/v1/watermark?format=jpeg"))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01"))
        .body(test_image(KLEIBER))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-trace-id"], TRACE_ID);

    let services = ["watermarks-gateway", "watermarks-optimizer", "watermarks-storage"];
    let spans = receiver
        .until("the upload's spans from the three embedded services", |spans| {
            upload_trace(spans, TRACE_ID, services)
        })
        .await;
    assert_upload_tree(&spans, CALLER_SPAN_ID, services);
}

#[tokio::test]
async fn a_request_without_trace_context_starts_a_trace_and_sampling_follows_the_caller() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let mesh = Mesh::start_with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())]);

    // No traceparent: the gateway starts a trace, and says which.
    let response = mesh.get("/v1/images/".to_owned().as_str()).await;
    let started = response.headers()["x-trace-id"].to_str().unwrap().to_owned();
    assert_eq!(started.len(), 32);
    receiver
        .until("the gateway's root span", |spans| {
            spans
                .iter()
                .find(|s| s.trace_id == started && s.parent_span_id.is_empty())
                .map(|s| assert_eq!(s.service_name, "nws-gateway"))
        })
        .await;

    // A caller that did not sample: the trace is propagated, not recorded.
    let unsampled = "5e8f7bd2a7c24e0d9a6b3c1d2e3f4a5b";
    let response = mesh
        .http
        .get(mesh.url("/openapi.json"))
        .header("traceparent", format!("00-{unsampled}-{CALLER_SPAN_ID}-00"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-trace-id"], unsampled);
    assert!(
        response.headers()["traceparent"]
            .to_str()
            .unwrap()
            .ends_with("-00"),
        "the sampling decision travels on"
    );
    // A sampled request after it is exported: had the unsampled one been,
    // it would have been by then (they share the batch queue).
    let sampled = "6e8f7bd2a7c24e0d9a6b3c1d2e3f4a5b";
    mesh.http
        .get(mesh.url("/openapi.json"))
        .header("traceparent", format!("00-{sampled}-{CALLER_SPAN_ID}-01"))
        .send()
        .await
        .unwrap();
    receiver
        .until("the sampled request's span", |spans| {
            spans.iter().any(|s| s.trace_id == sampled).then_some(())
        })
        .await;
    assert!(!receiver.spans().iter().any(|s| s.trace_id == unsampled));
}

#[tokio::test]
async fn one_admin_listener_serves_the_three_services_metrics() {
    let mesh = Mesh::start();
    let response = mesh.post("/v1/watermark?format=webp", test_image(KLEIBER)).await;
    assert_eq!(response.status(), 200);
    let served = "rpc_server_call_duration_seconds_count";
    // The render's call ends after the answer: once the optimizer has kept
    // the result in Storage.
    let admin = format!("{}/metrics", mesh.process.url("admin"));
    let metrics = eventually("the render's call counted", async || {
        let metrics = Scrape::fetch(&admin).await;
        let rendered = metrics.sum(served, &[("service", "optimizer"), ("rpc_method", "Render")]);
        (rendered > 0.0).then_some(metrics)
    })
    .await;
    assert_eq!(
        metrics.label_values(served, "service"),
        ["optimizer", "storage"],
        "the gateway serves HTTP only"
    );
    assert_eq!(
        metrics.sum(served, &[("service", "optimizer"), ("rpc_method", "Render")]),
        1.0
    );
    assert_eq!(
        metrics.sum(
            "http_server_request_duration_seconds_count",
            &[("service", "gateway"), ("http_route", "/v1/watermark")]
        ),
        1.0
    );
    assert_eq!(
        metrics.sum("nws_optimizer_output_bytes_count", &[("format", "image/webp")]),
        1.0
    );
    // No spans are exported without a collector, and none are counted.
    assert_eq!(metrics.sum("nws_trace_spans_total", &[]), 0.0);
    // The gateway's public /metrics is the same registry.
    let public = Scrape::fetch(&mesh.url("/metrics")).await;
    assert_eq!(
        public.sum(served, &[("service", "storage")]),
        metrics.sum(served, &[("service", "storage")])
    );
    // Health on the admin port.
    let health = reqwest::get(format!("{}/healthz", mesh.process.url("admin")))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}
