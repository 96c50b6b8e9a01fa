//! HTTP behaviour around the handlers: limits on slow and excess clients,
//! compression, JSON transcoding of annotated RPCs, OpenAPI, cancellation.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use nws_runtime::testing::{large_png, test_image};

use crate::{KLEIBER, Mesh, assert_json_error, base64, sha256_hex, tool};

/// Reads what the server sends until it closes or `limit` passes.
fn read_reply(stream: &mut TcpStream, limit: Duration) -> String {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut reply = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&buffer[..n]),
        }
    }
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_excess_requests_shed_with_retry_after() {
    let mesh = Mesh::start_with(&[
        // Long enough that a busy machine still serves the requests below
        // well within them; short enough to keep the test quick.
        ("NWS_HEADER_READ_TIMEOUT", "2s"),
        ("NWS_BODY_READ_TIMEOUT", "3s"),
        ("NWS_MAX_CONCURRENT_REQUESTS", "1"),
        ("RUST_LOG", "info,tower_http=debug,nws_runtime::http=debug"),
    ]);
    let address = mesh.process.addr("gateway");

    // Headers that never finish: the connection is closed.
    let mut trickle = TcpStream::connect(address).unwrap();
    trickle
        .write_all(b"POST /v1/watermark HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // The point is the timeout: closed an order of magnitude sooner than
    // the 30 s this read would wait.
    let started = Instant::now();
    read_reply(&mut trickle, Duration::from_secs(30));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "headers timed out late"
    );

    // A body that stalls: it holds the only request slot until it is cut off.
    let mut stalled = TcpStream::connect(address).unwrap();
    stalled
        .write_all(
            b"POST /v1/watermark HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n\xFF\xD8\xFF\xE0",
        )
        .unwrap();
    // Once the stalled request holds the slot (logged as "request admitted"),
    // others are shed. Polling with requests would compete for the slot.
    mesh.process
        .until("the stalled upload holding the slot", |events| {
            events
                .iter()
                .any(|e| e["message"] == "request admitted" && e["span"]["url.path"] == "/v1/watermark")
                .then_some(())
        })
        .await;
    let shed = mesh.get("/openapi.json").await;
    assert_eq!(shed.headers()["retry-after"], "1");
    assert_json_error(shed, 503, "UNAVAILABLE").await;
    let health = mesh.get("/healthz").await;
    assert_eq!(health.status(), 200, "health checks are never shed");

    let reply = read_reply(&mut stalled, Duration::from_secs(30));
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("NWS_BODY_READ_TIMEOUT"), "{reply}");
    // The slot is free again. (On a new connection: an idle keep-alive
    // connection is closed after NWS_HEADER_READ_TIMEOUT too.)
    let after = reqwest::get(mesh.url("/openapi.json")).await.unwrap();
    assert_eq!(after.status(), 200);
}

#[tokio::test]
async fn http2_with_prior_knowledge_serves_uploads_and_results() {
    // Room for every stream below in the optimizer's waiting line.
    let mesh = Mesh::start_with(&[("NWS_OPTIMIZER_QUEUE", "32")]);
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let uploaded = h2c
        .post(mesh.url("/v1/watermark?format=png"))
        .body(test_image("tiny_16x16.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.version(), reqwest::Version::HTTP_2);
    assert_eq!(uploaded.status(), 200);
    let location = uploaded.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = uploaded.bytes().await.unwrap();
    let served = h2c.get(mesh.url(&location)).send().await.unwrap();
    assert_eq!(served.version(), reqwest::Version::HTTP_2);
    assert_eq!(served.headers()["x-cache"], "HIT-L1");
    assert_eq!(served.bytes().await.unwrap(), body);

    // Many streams at once on the connection now open, each with a body
    // far over HTTP/2's 64 KiB initial window: flow control has to work
    // both ways for every one of them.
    let photo = test_image(KLEIBER);
    let uploads = (0..16).map(|i| {
        let request = h2c
            .post(mesh.url(&format!("/v1/watermark?format=jpeg&wm_text=stream{i}")))
            .body(photo.clone())
            .send();
        async move {
            let response = request.await.expect("an answer on its stream");
            assert_eq!(response.version(), reqwest::Version::HTTP_2);
            assert_eq!(response.status(), 200, "stream {i}");
            let bytes = response.bytes().await.unwrap();
            let image = image::load_from_memory(&bytes).expect("a whole image");
            assert_eq!((image.width(), image.height()), (1440, 1080));
            bytes
        }
    });
    let results = futures_util::future::join_all(uploads).await;
    let distinct: std::collections::HashSet<_> = results.iter().collect();
    assert_eq!(distinct.len(), 16, "each stream got its own result");
}

#[tokio::test]
async fn json_and_text_are_compressed_and_images_never_are() {
    let mesh = Mesh::start();
    let plain = mesh.get("/openapi.json").await;
    assert!(plain.headers().get("content-encoding").is_none(), "not asked for");
    let plain = plain.bytes().await.unwrap();
    for encoding in ["gzip", "br", "zstd"] {
        let response = mesh
            .http
            .get(mesh.url("/openapi.json"))
            .header("accept-encoding", encoding)
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["content-encoding"], encoding);
        let body = response.bytes().await.unwrap();
        assert!(
            body.len() < plain.len() / 3,
            "{encoding}: {} of {} bytes",
            body.len(),
            plain.len()
        );
        let mut decoded = Vec::new();
        match encoding {
            "gzip" => flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut decoded),
            "br" => brotli_decompressor::Decompressor::new(&body[..], 4096).read_to_end(&mut decoded),
            _ => zstd::stream::read::Decoder::new(&body[..])
                .unwrap()
                .read_to_end(&mut decoded),
        }
        .unwrap_or_else(|e| panic!("{encoding} body does not decode: {e}"));
        assert_eq!(decoded, plain, "{encoding} decodes to the same document");
    }
    let response = mesh
        .http
        .post(mesh.url("/v1/watermark?format=png"))
        .header("accept-encoding", "gzip, br, zstd")
        .body(test_image("tiny_16x16.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-encoding").is_none());
    image::load_from_memory(&response.bytes().await.unwrap()).expect("an image, as sent");
}

#[tokio::test]
async fn annotated_rpcs_answer_json_and_openapi_describes_every_route() {
    let mesh = Mesh::start();
    let photo = test_image("tiny_16x16.jpg");
    let uploaded = mesh.post("/v1/watermark?format=jpeg", photo.clone()).await;
    let key = uploaded.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let sha = sha256_hex(&photo);

    let original: serde_json::Value = mesh
        .get(&format!("/v1/originals/{sha}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(original["info"]["sha256"], sha.as_str());
    assert_eq!(
        original["info"]["size"],
        photo.len().to_string(),
        "uint64 is a string in proto3 JSON"
    );
    assert_eq!(original["info"]["media_type"], "image/jpeg");

    let result = mesh.until_result_stored(&key).await;
    assert_eq!(result["info"]["sha256"], key.as_str());

    let encoded = base64(&photo);
    let probe: serde_json::Value = mesh
        .http
        .post(mesh.url("/v1/probe"))
        .json(&serde_json::json!({ "header": encoded }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (probe["width"].as_u64(), probe["height"].as_u64()),
        (Some(16), Some(16)),
        "{probe}"
    );
    assert_eq!(probe["format"], "IMAGE_FORMAT_JPEG");

    let missing = mesh.get(&format!("/v1/originals/{}", "0".repeat(64))).await;
    assert_json_error(missing, 404, "NOT_FOUND").await;
    let malformed = mesh.get("/v1/originals/nope").await;
    assert_json_error(malformed, 400, "INVALID_ARGUMENT").await;
    let unknown_field = mesh.get(&format!("/v1/originals/{sha}?colour=red")).await;
    let message = assert_json_error(unknown_field, 400, "INVALID_ARGUMENT").await;
    assert!(message.contains("colour"), "{message}");
    let bad_json = mesh.post("/v1/probe", "{\"header\": 5}").await;
    assert_json_error(bad_json, 400, "INVALID_ARGUMENT").await;

    let openapi: serde_json::Value = mesh.get("/openapi.json").await.json().await.unwrap();
    assert_eq!(openapi["openapi"], "3.1.0");
    for (path, method) in [
        ("/v1/originals/{sha256}", "get"),
        ("/v1/objects/{sha256}", "get"),
        ("/v1/probe", "post"),
        ("/v1/watermark", "post"),
        ("/v1/images/{key}", "get"),
        ("/readyz", "get"),
        ("/ui/config.json", "get"),
    ] {
        assert!(
            openapi["paths"][path][method].is_object(),
            "{path} {method} missing"
        );
    }
    assert!(openapi["components"]["schemas"]["watermark.v1.ObjectInfo"]["properties"]["sha256"].is_object());
    let upload_options: Vec<&str> = openapi["paths"]["/v1/watermark"]["post"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(upload_options.contains(&"wm_position"), "{upload_options:?}");

    // A real validator, as client generators run one.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&openapi).unwrap()).unwrap();
    let output = std::process::Command::new(tool("NWS_TEST_PYTHON"))
        .args(["-m", "openapi_spec_validator"])
        .arg(file.path())
        .output()
        .expect("run openapi-spec-validator");
    assert!(
        output.status.success(),
        "not a valid OpenAPI document:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_client_that_disconnects_stops_the_optimizer_between_stages() {
    // The optimizer announces each pipeline stage at debug level.
    let mesh = Mesh::start_with(&[("RUST_LOG", "info,optimizer_svc=debug")]);
    let stages = || -> Vec<String> {
        mesh.process
            .events()
            .iter()
            .filter(|e| e["message"] == "pipeline stage")
            .filter_map(|e| e["stage"].as_str().map(str::to_owned))
            .collect()
    };
    // 49 MP: its decode and resize take long enough to be interrupted.
    let png = large_png(7000, 7000);
    let mut connection = TcpStream::connect(mesh.process.addr("gateway")).unwrap();
    let head = format!(
        "POST /v1/watermark?format=jpeg HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        png.len()
    );
    connection.write_all(head.as_bytes()).unwrap();
    connection.write_all(&png).unwrap();
    mesh.process
        .until("the decode stage", |_| {
            stages().contains(&"decode".to_owned()).then_some(())
        })
        .await;
    drop(connection);

    let stopped = mesh
        .process
        .until_logged("pipeline stopped before a stage: its call was cancelled", 1)
        .await;
    let stage = stopped[0]["stage"].as_str().unwrap();
    let all = ["decode", "resize", "watermark", "encode"];
    let position = all.iter().position(|s| *s == stage).unwrap();
    assert!(position >= 1, "stopped after the decode it was in");
    assert_eq!(stages(), all[..position], "no stage ran after it stopped");
    assert_eq!(mesh.process.count_logged("optimized"), 0);
}
