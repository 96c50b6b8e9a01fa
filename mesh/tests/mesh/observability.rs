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
        // What is logged does not decide what is traced: the services'
        // own spans (cache lookups, stages, storage) are all expected.
        ("RUST_LOG", "warn,nws_runtime=info"),
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

    // A failed call is recorded as an error, with its status.
    let failing = "7e8f7bd2a7c24e0d9a6b3c1d2e3f4a5b";
    let response = mesh
        .http
        .get(mesh.url(&format!("/v1/images/{}", "0".repeat(64))))
        .header("traceparent", format!("00-{failing}-{CALLER_SPAN_ID}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let get = receiver
        .until("the gateway's failed Storage/Get", |spans| {
            spans
                .iter()
                .find(|s| s.trace_id == failing && s.kind == 3 && s.name == "watermark.v1.Storage/Get")
                .cloned()
        })
        .await;
    assert_eq!(get.status_code, 2, "{get:?}");
    assert!(get.status_message.starts_with("NOT_FOUND: "), "{get:?}");
    assert_eq!(get.attribute("rpc.grpc.status_code"), Some("5"));
    let lookup = receiver
        .until("the storage tier's lookup", |spans| {
            spans
                .iter()
                .find(|s| s.trace_id == failing && s.name == "cache.lookup")
                .cloned()
        })
        .await;
    assert_eq!(lookup.attribute("nws.cache.outcome"), Some("miss"));
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
    assert_eq!(
        metrics.label_values("nws_build_info", "service"),
        ["gateway", "optimizer", "storage"]
    );
    // No spans are exported without a collector, and none are counted.
    assert_eq!(metrics.sum("nws_trace_spans_total", &[]), 0.0);
    // The gateway's public /metrics is the same registry.
    let public = Scrape::fetch(&mesh.url("/metrics")).await;
    assert_eq!(
        public.sum(served, &[("service", "storage")]),
        metrics.sum(served, &[("service", "storage")])
    );
    // With no collector, nothing this process starts is recorded, but every
    // answer still names its trace, and a caller's sampled trace stays
    // sampled for the services after it.
    let root = mesh.get("/openapi.json").await;
    let trace_id = root.headers()["x-trace-id"].to_str().unwrap().to_owned();
    assert_eq!(trace_id.len(), 32);
    let traceparent = root.headers()["traceparent"].to_str().unwrap();
    assert!(traceparent.starts_with(&format!("00-{trace_id}-")) && traceparent.ends_with("-00"));
    let sampled = mesh
        .http
        .get(mesh.url("/openapi.json"))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01"))
        .send()
        .await
        .unwrap();
    let traceparent = sampled.headers()["traceparent"].to_str().unwrap();
    assert!(traceparent.starts_with(&format!("00-{TRACE_ID}-")) && traceparent.ends_with("-01"));
    // Health on the admin port.
    let health = reqwest::get(format!("{}/healthz", mesh.process.url("admin")))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn the_dashboard_charts_only_series_the_services_expose() {
    let dashboard: serde_json::Value = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana/nws-watermark.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    let mut names: Vec<String> = exprs
        .iter()
        .flat_map(|expr| {
            expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| {
                    ["nws_", "http_server_", "rpc_server_", "rpc_client_"]
                        .iter()
                        .any(|p| word.starts_with(p))
                })
                .map(|word| {
                    ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|suffix| word.strip_suffix(suffix))
                        .unwrap_or(word)
                        .to_owned()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 15, "{names:?}");

    // Everything the dashboard reads exists once the mesh has served one
    // upload with Redis and a collector configured.
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let redis = nws_runtime::testing::redis_url();
    let prefix = format!("nws-dashboard-test:{}:", std::process::id());
    let mesh = Mesh::start_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("NWS_REDIS_URL", redis.as_str()),
        ("NWS_REDIS_PREFIX", prefix.as_str()),
    ]);
    let response = mesh.post("/v1/watermark?format=jpeg", test_image(KLEIBER)).await;
    assert_eq!(response.status(), 200);
    let admin = format!("{}/metrics", mesh.process.url("admin"));
    let metrics = eventually("the render's call and a span export counted", async || {
        let metrics = Scrape::fetch(&admin).await;
        let rendered = metrics.sum(
            "rpc_server_call_duration_seconds_count",
            &[("service", "optimizer"), ("rpc_method", "Render")],
        );
        let exported = metrics.sum("nws_trace_spans_total", &[("outcome", "exported")]);
        (rendered > 0.0 && exported > 0.0).then_some(metrics)
    })
    .await;
    let missing: Vec<&String> = names.iter().filter(|name| !metrics.has(name)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard charts series nobody exposes: {missing:?}"
    );
}

/// Every `expr` of the dashboard's queries.
fn collect_exprs(value: &serde_json::Value, exprs: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => exprs.push(expr.clone()),
                    _ => collect_exprs(value, exprs),
                }
            }
        }
        serde_json::Value::Array(values) => values.iter().for_each(|value| collect_exprs(value, exprs)),
        _ => {}
    }
}

#[tokio::test]
async fn the_admin_listener_profiles_the_cpu_and_the_public_port_does_not() {
    use pprof::protos::Message as _;
    let mesh = Mesh::start();
    let admin = mesh.process.url("admin");
    let photo = test_image(KLEIBER);
    // Work to sample for as long as the profile runs (at most 40 uploads):
    // a fixed few could all finish before a slow start of the profiler.
    let profiling = reqwest::get(format!("{admin}/debug/pprof/profile?seconds=2"));
    tokio::pin!(profiling);
    let mut round = 0;
    let profile = loop {
        let path = format!("/v1/watermark?format=jpeg&wm_text=profiled%20{round}");
        tokio::select! {
            profile = &mut profiling => break profile,
            response = mesh.post(&path, photo.clone()), if round < 40 => {
                assert_eq!(response.status(), 200);
                round += 1;
            }
        }
    };
    let profile = profile.unwrap();
    assert_eq!(profile.status(), 200);
    assert_eq!(profile.headers()["content-type"], "application/octet-stream");
    let profile =
        pprof::protos::Profile::parse_from_bytes(&profile.bytes().await.unwrap()).expect("pprof's protobuf");
    assert!(!profile.sample.is_empty(), "samples were taken");
    assert!(
        profile
            .string_table
            .iter()
            .any(|name| name.contains("optimizer_svc")),
        "the pipeline's functions are named"
    );

    // One at a time: a second profile while a flamegraph is drawn is refused.
    let flamegraph = tokio::spawn(reqwest::get(format!("{admin}/debug/pprof/flamegraph?seconds=2")));
    let response = mesh
        .post("/v1/watermark?format=jpeg&wm_text=flamegraph", photo.clone())
        .await;
    assert_eq!(response.status(), 200);
    let refused = eventually("the second profile refused", async || {
        let response = reqwest::get(format!("{admin}/debug/pprof/profile?seconds=1"))
            .await
            .ok()?;
        (response.status() == 409).then_some(response)
    })
    .await;
    let refusal: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(refusal["code"], "ABORTED");
    let flamegraph = flamegraph.await.unwrap().unwrap();
    assert_eq!(flamegraph.status(), 200);
    assert_eq!(flamegraph.headers()["content-type"], "image/svg+xml");
    let svg = flamegraph.text().await.unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("optimizer_svc"),
        "{svg:.200}"
    );

    let bad = reqwest::get(format!("{admin}/debug/pprof/profile?seconds=600"))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // Never on the public port.
    assert_eq!(mesh.get("/debug/pprof/profile?seconds=1").await.status(), 404);
}
