//! The gateway binary alone, in front of an Optimizer and a Storage service
//! started as binaries of their own, as they are deployed: each process's
//! logs and memory can be watched apart.

use nws_runtime::testing::{
    ServiceProcess, eventually, files_under, large_png, test_image, workspace_binary,
};

struct Deployed {
    storage_dir: tempfile::TempDir,
    _storage: ServiceProcess,
    optimizer: ServiceProcess,
    gateway: ServiceProcess,
    http: reqwest::Client,
}

impl Deployed {
    fn start(gateway_env: &[(&str, &str)]) -> Self {
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
                // Every pipeline stage is logged, to see where work stops.
                ("RUST_LOG", "info,optimizer_svc=debug"),
            ],
            &["optimizer"],
        );
        let optimizer_url = optimizer.url("optimizer");
        let mut env = vec![
            ("NWS_HTTP_ADDR", "127.0.0.1:0"),
            ("NWS_OPTIMIZER_URL", optimizer_url.as_str()),
            ("NWS_STORAGE_URL", storage_url.as_str()),
        ];
        env.extend_from_slice(gateway_env);
        let gateway = ServiceProcess::start(&workspace_binary("gateway"), &env, &["gateway"]);
        Self {
            storage_dir,
            _storage: storage,
            optimizer,
            gateway,
            http: reqwest::Client::new(),
        }
    }

    async fn upload(&self, query: &str, body: Vec<u8>) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/watermark{query}", self.gateway.url("gateway")))
            .body(body)
            .send()
            .await
            .unwrap()
    }

    fn stored(&self, namespace: &str) -> Vec<std::path::PathBuf> {
        files_under(&self.storage_dir.path().join(namespace))
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
    eventually("the result kept in storage", async || {
        mesh.stored("results")
            .iter()
            .any(|path| path.ends_with(&key))
            .then_some(())
    })
    .await;
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
    // 49 MP in a few kilobytes: stored well within 100 ms, but its decode
    // alone takes longer.
    let response = mesh.upload("?format=jpeg", large_png(7000, 7000)).await;
    assert_eq!(response.status(), 504);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "DEADLINE_EXCEEDED", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("NWS_UPSTREAM_TIMEOUT"),
        "{body}"
    );
    // The deadline travelled with the call: the optimizer stopped the job.
    mesh.optimizer
        .until_logged("pipeline stopped before a stage: its call was cancelled", 1)
        .await;
    assert_eq!(mesh.optimizer.count_logged("optimized"), 0);
    // The original is kept for a later try.
    assert_eq!(mesh.stored("originals").len(), 1);
}
