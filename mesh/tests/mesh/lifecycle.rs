//! Start-up, separate deployment and shutdown.

use std::time::Duration;

use nws_runtime::testing::{S3Server, run_to_exit, test_image, workspace_binary};

use crate::{KLEIBER, Mesh, files_under, form, sha256_hex};

#[test]
fn a_bad_setting_stops_start_up_with_one_line_naming_it() {
    let cases = [
        ("nws-mesh", "NWS_HTTP_ADDR", "not-an-address"),
        ("nws-mesh", "NWS_MAX_UPLOAD_BYTES", "lots"),
        ("nws-mesh", "NWS_DRAIN_TIMEOUT", "soon"),
        ("nws-mesh", "NWS_AUTO_AVIF", "sometimes"),
        ("gateway", "NWS_OPTIMIZER_URL", "ftp://optimizer"),
        ("optimizer-svc", "NWS_MAX_PIXELS", "-5"),
        ("optimizer-svc", "NWS_STORAGE_URL", "storage:50052"),
        ("storage-svc", "NWS_STORAGE_ADDR", "127.0.0.1:99999"),
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

#[tokio::test]
async fn sigterm_lets_an_in_flight_upload_finish_then_exits_zero() {
    let mut mesh = Mesh::start();
    let photo = test_image(KLEIBER);
    let (first_half, second_half) = photo.split_at(photo.len() / 2);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let upload = mesh.http.post(mesh.url("/v1/watermark")).body(body).send();
    let upload = tokio::spawn(upload);
    tx.send(Ok(first_half.to_vec())).await.unwrap();

    // The upload is in flight once its bytes are landing in storage.
    let tmp = mesh.data_dir.path().join("tmp");
    let landing = || {
        files_under(&tmp).iter().any(|file| {
            file.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("put-"))
        })
    };
    for _ in 0..500 {
        if landing() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(landing(), "the upload never reached storage");

    let pid = mesh.process.pid();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.send(Ok(second_half.to_vec())).await.unwrap();
    drop(tx);

    let response = upload.await.unwrap().expect("the in-flight upload is answered");
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.unwrap();
    assert!(image::load_from_memory(&bytes).is_ok());
    let status = mesh.process.wait(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");

    // New connections are refused once it has gone.
    assert!(mesh.http.get(mesh.url("/healthz")).send().await.is_err());
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
        let mut seen = (0, String::new());
        for _ in 0..100 {
            let ready = mesh.get("/readyz").await;
            let code = ready.status().as_u16();
            let body: serde_json::Value = ready.json().await.unwrap();
            seen = (code, body["upstreams"]["storage"].to_string());
            if code == wanted {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    };
    s3.stop();
    let down = readiness_becomes(503).await;
    assert!(down.0 == 503 && down.1.contains("NOT_SERVING"), "{down:?}");
    s3.restart();
    let up = readiness_becomes(200).await;
    assert!(up.0 == 200 && up.1.contains("\"SERVING\""), "{up:?}");
}
