//! The gateway binary alone, in front of an Optimizer and a Storage service
//! started as binaries of their own, as they are deployed.

use nws_runtime::testing::{ServiceProcess, files_under, test_image, workspace_binary};

#[tokio::test]
async fn the_gateway_serves_uploads_through_services_started_apart() {
    let storage_dir = tempfile::tempdir().unwrap();
    let storage = ServiceProcess::start(
        &workspace_binary("storage-svc"),
        &[
            ("NWS_STORAGE_ADDR", "127.0.0.1:0"),
            ("NWS_DATA_DIR", storage_dir.path().to_str().unwrap()),
        ],
        &["storage"],
    );
    let storage_url = storage.url("storage");
    let optimizer = ServiceProcess::start(
        &workspace_binary("optimizer-svc"),
        &[
            ("NWS_OPTIMIZER_ADDR", "127.0.0.1:0"),
            ("NWS_STORAGE_URL", storage_url.as_str()),
        ],
        &["optimizer"],
    );
    let optimizer_url = optimizer.url("optimizer");
    let gateway = ServiceProcess::start(
        &workspace_binary("gateway"),
        &[
            ("NWS_HTTP_ADDR", "127.0.0.1:0"),
            ("NWS_OPTIMIZER_URL", optimizer_url.as_str()),
            ("NWS_STORAGE_URL", storage_url.as_str()),
        ],
        &["gateway"],
    );

    let photo = test_image("picos_orient6.jpg");
    let response = reqwest::Client::new()
        .post(format!(
            "{}/v1/watermark?wm_position=center",
            gateway.url("gateway")
        ))
        .body(photo)
        .send()
        .await
        .unwrap();
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
    let originals = files_under(&storage_dir.path().join("originals"));
    assert_eq!(originals.len(), 1, "{originals:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !files_under(&storage_dir.path().join("results"))
        .iter()
        .any(|path| path.ends_with(&key))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the result {key} was never kept"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        optimizer.logs().contains("\"rpc\":\"Render\""),
        "{}",
        optimizer.logs()
    );
}
