//! The gateway binary alone, in front of an Optimizer and a Storage service
//! started as binaries of their own, as they are deployed: each process's
//! logs and memory can be watched apart.

use nws_runtime::testing::{
    Deployment, OtlpReceiver, Scrape, assert_upload_tree, eventually, large_png, test_image, upload_trace,
};

/// The three services as separate processes, and a client for the gateway.
struct Deployed {
    services: Deployment,
    http: reqwest::Client,
}

impl std::ops::Deref for Deployed {
    type Target = Deployment;

    fn deref(&self) -> &Deployment {
        &self.services
    }
}

impl Deployed {
    fn start(gateway_env: &[(&str, &str)]) -> Self {
        Self::start_with(&[], gateway_env)
    }

    /// With `every_env` given to the three processes, `gateway_env` to the
    /// gateway only.
    fn start_with(every_env: &[(&str, &str)], gateway_env: &[(&str, &str)]) -> Self {
        Self {
            services: Deployment::start(every_env, gateway_env),
            http: reqwest::Client::new(),
        }
    }

    async fn upload(&self, query: &str, body: Vec<u8>) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/watermark{query}", self.gateway_url()))
            .body(body)
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn the_gateway_serves_uploads_through_services_started_apart() {
    let mesh = Deployed::start(&[]);
    let response = mesh
        .upload("?wm_position=center", test_image("picos_orient6.jpg"))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-image-width"], "1440");
    assert_eq!(response.headers()["content-type"], "image/jpeg");
    let key = response.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_owned();

    // The original and the result are in the separate storage's directory:
    // the gateway stored the one, the optimizer kept the other.
    assert_eq!(
        mesh.stored("originals").len(),
        1,
        "{:?}",
        mesh.stored("originals")
    );
    mesh.until_result_kept(&key).await;
    // The log line travels through a pipe of its own: wait for it.
    mesh.optimizer.until_logged("optimized", 1).await;
    assert_eq!(mesh.optimizer.count_logged("optimized"), 1);
    assert!(mesh.optimizer.logs().contains("\"rpc\":\"Render\""));
}

/// Random pixels: incompressible, so the PNG is as large as its pixels.
fn noise_png(width: u32, height: u32) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let pixels: Vec<u8> = (0..width * height * 3)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new_with_quality(
            &mut png,
            image::codecs::png::CompressionType::Fast,
            image::codecs::png::FilterType::NoFilter,
        ),
        &pixels,
        width,
        height,
        image::ExtendedColorType::Rgb8,
    )
    .unwrap();
    png
}

#[tokio::test]
async fn an_upload_near_the_25_mib_limit_streams_through_the_gateway() {
    let mesh = Deployed::start(&[]);
    let limit = 25 << 20;
    let photo = noise_png(2900, 2900);
    assert!(
        photo.len() > limit * 95 / 100 && photo.len() < limit,
        "{} bytes",
        photo.len()
    );
    let before = mesh.gateway.peak_rss();
    let response = mesh.upload("?format=jpeg", photo.clone()).await;
    assert_eq!(response.status(), 200);
    let result = image::load_from_memory(&response.bytes().await.unwrap()).unwrap();
    assert_eq!((result.width(), result.height()), (1080, 1080));
    assert_eq!(mesh.stored("originals").len(), 1);
    let stored = std::fs::metadata(&mesh.stored("originals")[0]).unwrap().len();
    assert_eq!(stored, photo.len() as u64, "stored whole");

    // The body streams through: the gateway never holds the upload. (Holding
    // it would add its 24 MiB to the peak; the result it caches is ~1 MiB.)
    let grown = mesh.gateway.peak_rss().saturating_sub(before);
    eprintln!(
        "gateway peak RSS: {} MiB before, grew by {} KiB for a {} KiB upload",
        before >> 20,
        grown >> 10,
        photo.len() >> 10
    );
    assert!(
        grown < (limit as u64) / 3,
        "the gateway's peak memory grew by {} MiB for a {} MiB upload",
        grown >> 20,
        photo.len() >> 20
    );
}

#[tokio::test]
async fn nws_upstream_timeout_answers_504_and_the_optimizer_stops_its_job() {
    let mesh = Deployed::start(&[("NWS_UPSTREAM_TIMEOUT", "100ms")]);
    // A small upload first opens the connections (gateway → optimizer →
    // storage), so the deadline below is spent on the job, not on
    // handshakes: on a loaded machine they alone can take 100 ms, and the
    // call then never reaches the optimizer. Its answer does not matter.
    let warm = mesh.upload("", test_image("tiny_16x16.jpg")).await;
    let rendered = usize::from(warm.status() == 200);
    if rendered == 1 {
        mesh.optimizer.until_logged("optimized", 1).await;
    }
    // 49 MP in a few kilobytes: stored well within the deadline, but its
    // decode and resize take longer. The deadline is every upstream call's:
    // on a loaded machine the store itself may run out of it (504 naming
    // the storage service); the upload is tried again until the deadline
    // runs out on the optimizer, a bounded number of times.
    let mut reached_optimizer = false;
    for _ in 0..5 {
        let response = mesh.upload("?format=jpeg", large_png(7000, 7000)).await;
        assert_eq!(response.status(), 504);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], "DEADLINE_EXCEEDED", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("NWS_UPSTREAM_TIMEOUT"), "{body}");
        if message.contains("optimizer") {
            reached_optimizer = true;
            break;
        }
    }
    assert!(reached_optimizer, "the deadline never ran out on the optimizer");
    // The deadline travelled with the call: the optimizer dropped the call
    // and stopped its work (between stages, or before its first).
    mesh.optimizer
        .until_logged("call cancelled by the client or its deadline; its work stops", 1)
        .await;
    assert_eq!(mesh.optimizer.count_logged("optimized"), rendered);
    // The original is kept for a later try (beside the small one).
    assert_eq!(mesh.stored("originals").len(), 2);
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn one_upload_is_one_trace_across_three_processes_exported_over_otlp() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let mesh = Deployed::start_with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())], &[]);
    let response = mesh
        .http
        .post(format!(
            "{}/v1/watermark?format=jpeg",
            mesh.gateway.url("gateway")
        ))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01"))
        .body(test_image("picos_orient6.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The answer names the trace, three ways.
    let headers = response.headers();
    let traceparent = headers["traceparent"].to_str().unwrap();
    assert!(
        traceparent.starts_with(&format!("00-{TRACE_ID}-")),
        "{traceparent}"
    );
    assert!(traceparent.ends_with("-01"), "{traceparent}");
    assert_eq!(headers["x-trace-id"], TRACE_ID);
    let timing = headers["server-timing"].to_str().unwrap();
    assert!(
        timing.starts_with(&format!("trace;desc=\"{TRACE_ID}\"")),
        "{timing}"
    );

    let services = ["nws-gateway", "nws-optimizer", "nws-storage"];
    let spans = receiver
        .until("the upload's spans from the three services", |spans| {
            upload_trace(spans, TRACE_ID, services)
        })
        .await;
    assert_upload_tree(&spans, CALLER_SPAN_ID, services);
    // The gateway's span is the one its answer named.
    let http = spans.iter().find(|s| s.name == "POST /v1/watermark").unwrap();
    assert_eq!(traceparent, format!("00-{TRACE_ID}-{}-01", http.span_id));

    // Logs name their trace too.
    let logged = mesh
        .optimizer
        .events()
        .into_iter()
        .find(|event| event["message"] == "optimized")
        .expect("the optimizer logged the result");
    assert_eq!(logged["trace_id"], TRACE_ID, "{logged}");
    assert!(
        logged["span_id"].as_str().is_some_and(|id| id.len() == 16),
        "{logged}"
    );
}

#[tokio::test]
async fn a_collector_that_is_down_or_silent_changes_no_answer() {
    // One that refuses connections, one that accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_endpoint = format!("http://{}", silent.local_addr().unwrap());
    let refusing = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refusing_endpoint = format!("http://{}", refusing.local_addr().unwrap());
    drop(refusing);
    let reference = Deployed::start(&[]);
    let image = test_image("picos_orient6.jpg");
    let expected = reference
        .upload("?format=jpeg&wm_text=traced", image.clone())
        .await;
    assert_eq!(expected.status(), 200);
    let expected = expected.bytes().await.unwrap();

    for endpoint in [refusing_endpoint, silent_endpoint] {
        let mesh = Deployed::start_with(
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
            ],
            &[],
        );
        for round in 0..3 {
            let response = mesh.upload("?format=jpeg&wm_text=traced", image.clone()).await;
            assert_eq!(response.status(), 200, "{endpoint}, round {round}");
            assert_eq!(response.bytes().await.unwrap(), expected, "{endpoint}");
        }
        // The spans that could not leave are counted, not waited for.
        let metrics_url = format!("{}/metrics", mesh.gateway.url("gateway"));
        eventually("the failed exports counted", async || {
            let metrics = Scrape::fetch(&metrics_url).await;
            let failed = [("service", "gateway"), ("outcome", "dropped_export_failed")];
            (metrics.sum("nws_trace_spans_total", &failed) > 0.0).then_some(())
        })
        .await;
    }
    drop(silent);
}

#[tokio::test]
async fn each_service_counts_known_traffic_in_prometheus_text() {
    let mesh = Deployed::start(&[]);
    let image = test_image("picos_orient6.jpg");
    let first = mesh.upload("?format=jpeg", image.clone()).await;
    assert_eq!(first.headers()["x-cache"], "MISS");
    let key = first.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let again = mesh.upload("?format=jpeg", image).await;
    assert_eq!(again.headers()["x-cache"], "HIT-L1");
    let gateway = mesh.gateway.url("gateway");
    let by_key = mesh
        .http
        .get(format!("{gateway}/v1/images/{key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_key.headers()["x-cache"], "HIT-L1");
    let unknown = mesh
        .http
        .get(format!("{gateway}/v1/images/{}", "0".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    let gw = ("service", "gateway");
    let calls = "rpc_client_call_duration_seconds_count";
    // The gateway's render call ends once the optimizer has kept the result.
    let public = format!("{gateway}/metrics");
    let edge = eventually("the render's call counted", async || {
        let metrics = Scrape::fetch(&public).await;
        (metrics.sum(calls, &[gw, ("rpc_method", "Render")]) > 0.0).then_some(metrics)
    })
    .await;
    assert_eq!(edge.sum("nws_results_total", &[gw, ("source", "MISS")]), 1.0);
    assert_eq!(edge.sum("nws_results_total", &[gw, ("source", "HIT-L1")]), 2.0);
    let requests = "http_server_request_duration_seconds_count";
    let route = |route, status| [gw, ("http_route", route), ("http_response_status_code", status)];
    assert_eq!(edge.sum(requests, &route("/v1/watermark", "200")), 2.0);
    assert_eq!(edge.sum(requests, &route("/v1/images/{key}", "200")), 1.0);
    assert_eq!(edge.sum(requests, &route("/v1/images/{key}", "404")), 1.0);
    let lookups = "nws_cache_lookups_total";
    assert_eq!(edge.sum(lookups, &[("tier", "memory"), ("outcome", "hit")]), 2.0);
    assert_eq!(edge.sum(lookups, &[("tier", "memory"), ("outcome", "miss")]), 2.0);
    assert_eq!(
        edge.sum(lookups, &[("tier", "storage"), ("outcome", "miss")]),
        2.0
    );
    assert_eq!(
        edge.sum(calls, &[gw, ("rpc_method", "Render"), ("code", "OK")]),
        1.0
    );
    assert_eq!(
        edge.sum(
            calls,
            &[gw, ("rpc_service", "watermark.v1.Storage"), ("rpc_method", "Put")]
        ),
        2.0
    );
    assert_eq!(
        edge.family_type("http_server_request_duration_seconds")
            .as_deref(),
        Some("histogram")
    );
    assert_eq!(edge.sum("nws_build_info", &[gw]), 1.0);
    for described in [
        "http_server_request_duration_seconds",
        "nws_results_total",
        "nws_cache_lookups_total",
        "rpc_client_call_duration_seconds",
    ] {
        assert!(edge.help(described).is_some(), "{described} has no # HELP");
    }

    let served = "rpc_server_call_duration_seconds_count";
    let op = ("service", "optimizer");
    // The render's call ends once the optimizer has kept the result.
    let admin = format!("{}/metrics", mesh.optimizer.url("admin"));
    let optimizer = eventually("the render's call counted", async || {
        let metrics = Scrape::fetch(&admin).await;
        (metrics.sum(served, &[op, ("rpc_method", "Render")]) > 0.0).then_some(metrics)
    })
    .await;
    let stages = "nws_optimizer_stage_duration_seconds_count";
    assert_eq!(
        optimizer.label_values(stages, "stage"),
        ["decode", "encode", "resize", "watermark"]
    );
    for stage in ["decode", "resize", "watermark", "encode"] {
        assert_eq!(optimizer.sum(stages, &[("stage", stage)]), 1.0, "{stage}");
    }
    let served = "rpc_server_call_duration_seconds_count";
    let op = ("service", "optimizer");
    assert_eq!(
        optimizer.sum(served, &[op, ("rpc_method", "Render"), ("code", "OK")]),
        1.0
    );
    assert_eq!(
        optimizer.sum("nws_optimizer_input_bytes_count", &[("format", "image/jpeg")]),
        1.0
    );
    assert_eq!(optimizer.sum("nws_optimizer_refused_calls_total", &[]), 0.0);
    assert_eq!(optimizer.sum("nws_optimizer_busy_workers", &[op]), 0.0);
    assert_eq!(optimizer.sum("nws_build_info", &[op]), 1.0);
    assert!(optimizer.help("nws_optimizer_stage_duration_seconds").is_some());
    assert!(optimizer.help("nws_optimizer_refused_calls_total").is_some());

    let storage = Scrape::fetch(&format!("{}/metrics", mesh.storage.url("admin"))).await;
    let st = ("service", "storage");
    // Two originals (the second deduplicated) and one result.
    assert_eq!(
        storage.sum(served, &[st, ("rpc_method", "Put"), ("code", "OK")]),
        3.0
    );
    let backend = "nws_storage_backend_operation_duration_seconds";
    assert!(storage.help(backend).is_some());
    // The first upload's and the unknown key's results, looked up in vain;
    // the original, read by the optimizer.
    let backend = "nws_storage_backend_operation_duration_seconds_count";
    assert_eq!(
        storage.sum(backend, &[("operation", "get"), ("outcome", "not_found")]),
        2.0
    );
    assert_eq!(
        storage.sum(backend, &[("operation", "get"), ("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        storage.sum(served, &[st, ("rpc_method", "Get"), ("code", "NOT_FOUND")]),
        2.0
    );
}
