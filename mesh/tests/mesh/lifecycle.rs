//! Start-up, separate deployment and shutdown.

use std::time::Duration;

use nws_runtime::testing::{S3Server, eventually, run_to_exit, test_image, workspace_binary};

use crate::{KLEIBER, Mesh, files_under, form, sha256_hex};

#[test]
fn a_bad_setting_stops_start_up_with_one_line_naming_it() {
    let cases = [
        ("nws-mesh", "NWS_HTTP_ADDR", "not-an-address"),
        ("nws-mesh", "NWS_MAX_UPLOAD_BYTES", "lots"),
        ("nws-mesh", "NWS_DRAIN_TIMEOUT", "soon"),
        ("nws-mesh", "NWS_AUTO_AVIF", "sometimes"),
        ("nws-mesh", "NWS_TRACE_VIEWER_URL", "http://jaeger:16686/trace/"),
        ("gateway", "NWS_WEB_UI", "maybe"),
        ("gateway", "NWS_OPTIMIZER_URL", "ftp://optimizer"),
        ("gateway", "NWS_OPTIMIZER_URL", "dns:///optimizer-headless"),
        ("gateway", "NWS_OPTIMIZER_ROUTING", "random"),
        ("storage-svc", "NWS_RESOLVE_INTERVAL", "often"),
        ("optimizer-svc", "NWS_MAX_PIXELS", "-5"),
        ("optimizer-svc", "NWS_STORAGE_URL", "storage:50052"),
        ("storage-svc", "NWS_STORAGE_ADDR", "127.0.0.1:99999"),
        ("storage-svc", "NWS_ADMIN_ADDR", "nowhere"),
        ("optimizer-svc", "OTEL_EXPORTER_OTLP_ENDPOINT", "not a url"),
    ];
    for (program, setting, value) in cases {
        let (status, stderr) = run_to_exit(&workspace_binary(program), &[(setting, value)]);
        assert_eq!(status.code(), Some(64), "{program} {setting}={value}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{program} {setting}={value}: {stderr}");
        assert!(
            lines[0].contains(setting) && lines[0].contains(value),
            "{program}: {}",
            lines[0]
        );
    }
}

#[test]
fn settings_that_hold_secrets_are_never_echoed_and_missing_ones_are_named() {
    let (status, stderr) = run_to_exit(
        &workspace_binary("nws-mesh"),
        &[("NWS_REDIS_URL", "http://:hunter2@redis:6379")],
    );
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("NWS_REDIS_URL"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password was echoed: {stderr}");

    // The gateway alone cannot embed its upstreams: it names what it needs.
    let (status, stderr) = run_to_exit(&workspace_binary("gateway"), &[]);
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "error: missing setting: NWS_OPTIMIZER_URL (--optimizer-url), NWS_STORAGE_URL (--storage-url)"
    );
}

#[test]
fn a_port_in_use_stops_start_up_with_one_line_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data_dir = tempfile::tempdir().unwrap();
    let (status, stderr) = run_to_exit(
        &workspace_binary("nws-mesh"),
        &[
            ("NWS_HTTP_ADDR", addr.as_str()),
            ("NWS_OPTIMIZER_ADDR", "127.0.0.1:0"),
            ("NWS_STORAGE_ADDR", "127.0.0.1:0"),
            ("NWS_DATA_DIR", data_dir.path().to_str().unwrap()),
            ("RUST_BACKTRACE", "1"),
        ],
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("cannot listen on") && lines[0].contains(&addr),
        "{}",
        lines[0]
    );
}

/// An upload whose body is half sent; the test sends the rest later.
struct HalfUpload {
    rest: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    response: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
    second_half: Vec<u8>,
}

impl HalfUpload {
    /// Starts the upload and returns once its bytes are landing in storage.
    async fn start(mesh: &Mesh, photo: &[u8]) -> Self {
        let (first_half, second_half) = photo.split_at(photo.len() / 2);
        let (rest, body) = tokio::sync::mpsc::channel(1);
        let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(body));
        let response = tokio::spawn(mesh.http.post(mesh.url("/v1/watermark")).body(body).send());
        rest.send(Ok(first_half.to_vec())).await.unwrap();
        let tmp = mesh.data_dir.path().join("tmp");
        eventually("the upload landing in storage", async || {
            files_under(&tmp)
                .iter()
                .any(|file| {
                    file.file_name()
                        .is_some_and(|name| name.to_string_lossy().starts_with("put-"))
                })
                .then_some(())
        })
        .await;
        Self {
            rest,
            response,
            second_half: second_half.to_vec(),
        }
    }

    async fn finish(self) -> reqwest::Result<reqwest::Response> {
        let _ = self.rest.send(Ok(self.second_half)).await;
        drop(self.rest);
        self.response.await.unwrap()
    }
}

/// Waits for `message` from the gateway's own server (the embedded
/// services log the same words once the gateway is done).
async fn until_gateway_logged(mesh: &Mesh, message: &str) {
    mesh.process
        .until(message, |events| {
            events
                .iter()
                .any(|e| e["message"] == message && e["service"] == "gateway")
                .then_some(())
        })
        .await;
}

#[tokio::test]
async fn sigterm_turns_readyz_503_then_closes_the_port_and_lets_the_upload_in_flight_finish() {
    // Two seconds of not-ready serving: ample for the probes below.
    let mut mesh = Mesh::start_with(&[("NWS_SHUTDOWN_DELAY", "2s")]);
    let upload = HalfUpload::start(&mesh, &test_image(KLEIBER)).await;

    mesh.process.signal("TERM");
    until_gateway_logged(&mesh, "not ready: still serving until the delay ends").await;
    // A new connection is still served, and told to go elsewhere.
    let fresh = reqwest::Client::new();
    let ready = fresh
        .get(mesh.url("/readyz"))
        .send()
        .await
        .expect("still accepting");
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "draining", "{body}");
    let live = fresh.get(mesh.url("/healthz")).send().await.unwrap();
    assert_eq!(live.status(), 200, "alive while it drains");

    // Then the port closes while the upload is still in flight.
    until_gateway_logged(&mesh, "draining in-flight requests").await;
    let addr = mesh.process.addr("gateway");
    eventually("the port closing", async || {
        std::net::TcpStream::connect(addr).is_err().then_some(())
    })
    .await;
    assert!(
        !mesh.process.has_exited(),
        "the upload in flight keeps the process up"
    );

    let response = upload.finish().await.expect("the in-flight upload is answered");
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.unwrap();
    assert!(image::load_from_memory(&bytes).is_ok());
    let status = mesh.process.wait(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn the_drain_deadline_cuts_off_an_upload_that_never_ends() {
    let mut mesh = Mesh::start_with(&[("NWS_DRAIN_TIMEOUT", "500ms")]);
    let upload = HalfUpload::start(&mesh, &test_image(KLEIBER)).await;

    mesh.process.signal("TERM");
    until_gateway_logged(
        &mesh,
        "requests still in flight at the drain deadline; abandoning them",
    )
    .await;
    let status = mesh.process.wait(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    let HalfUpload { rest, response, .. } = upload;
    let outcome = response.await.unwrap();
    drop(rest);
    assert!(
        outcome.is_err(),
        "the abandoned upload gets no answer: {outcome:?}"
    );
    // Nothing half-written is left behind as an original.
    assert!(
        mesh.stored_originals().is_empty(),
        "{:?}",
        mesh.stored_originals()
    );
}

#[tokio::test]
async fn the_embedded_storage_uses_s3_when_configured() {
    let mut s3 = S3Server::start();
    let settings = s3.storage_env();
    let mut env: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("NWS_STORAGE_HEALTH_INTERVAL", "100ms"));
    let mesh = Mesh::start_with(&env);
    let photo = test_image(KLEIBER);
    let response = mesh.post_form("/v1/watermark", form(photo.clone(), &[])).await;
    assert_eq!(response.status(), 200);
    let key = sha256_hex(&photo);
    assert_eq!(response.headers()["x-original-sha256"], key.as_str());

    // In the bucket, not on the local disk.
    let object = s3.root().join(S3Server::BUCKET).join("originals").join(&key);
    assert!(std::fs::read(&object).expect("object in the bucket") == photo);
    assert!(mesh.stored_originals().is_empty());
    let original = mesh.get(&format!("/image/{key}")).await;
    assert_eq!(original.status(), 200);
    assert!(original.bytes().await.unwrap() == photo);

    // Readiness follows the bucket: down while S3 is, back when it is.
    let mesh = &mesh;
    let readiness_becomes = |wanted: u16| async move {
        eventually(&format!("/readyz {wanted}"), async || {
            let ready = mesh.get("/readyz").await;
            let code = ready.status().as_u16();
            let body: serde_json::Value = ready.json().await.unwrap();
            (code == wanted).then(|| (code, body["upstreams"]["storage"].to_string()))
        })
        .await
    };
    s3.stop();
    let down = readiness_becomes(503).await;
    assert!(down.0 == 503 && down.1.contains("NOT_SERVING"), "{down:?}");
    s3.restart();
    let up = readiness_becomes(200).await;
    assert!(up.0 == 200 && up.1.contains("\"SERVING\""), "{up:?}");
}
