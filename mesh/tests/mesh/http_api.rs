//! The HTTP API, through the gateway, to real upstreams.

use nws_runtime::testing::{eventually, test_image};

use crate::{KLEIBER, Mesh, assert_json_error, form, read_json_response, refusing_url, sha256_hex};

fn decode(bytes: &[u8]) -> image::DynamicImage {
    image::load_from_memory(bytes).expect("the response is an image")
}

#[tokio::test]
async fn an_upload_returns_a_watermarked_image_that_fits_1920x1080() {
    let mesh = Mesh::start();
    let photo = test_image(KLEIBER);
    let response = mesh
        .post_form(
            "/v1/watermark",
            form(
                photo.clone(),
                &[("wm_text", "NWS © 2026"), ("wm_position", "bottom-right")],
            ),
        )
        .await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "image/jpeg");
    assert_eq!(headers["x-original-sha256"], sha256_hex(&photo).as_str());
    let timing = headers["server-timing"].to_str().unwrap();
    for stage in [
        "upload;",
        "l1;",
        "store;",
        "decode;",
        "resize;",
        "watermark;",
        "encode;",
        "total;",
    ] {
        let entry = timing.split(", ").find(|entry| entry.starts_with(stage));
        assert!(entry.is_some_and(|e| e.contains(";dur=")), "{stage} in {timing}");
    }
    assert_eq!(headers["x-cache"], "MISS");
    let body = response.bytes().await.unwrap();
    assert_eq!(headers["content-length"], body.len().to_string().as_str());
    let image = decode(&body);
    assert_eq!((image.width(), image.height()), (1440, 1080));

    // The watermark is really there: the unwatermarked render of the same
    // photo differs in the bottom-right corner only.
    let plain =
        image::load_from_memory(&photo)
            .unwrap()
            .resize(1440, 1080, image::imageops::FilterType::Lanczos3);
    let (rgb, plain) = (image.to_rgb8(), plain.to_rgb8());
    let difference = |x0: u32, y0: u32| -> f64 {
        let mut total = 0f64;
        for y in y0..y0 + 100 {
            for x in x0..x0 + 300 {
                let (a, b) = (rgb.get_pixel(x, y), plain.get_pixel(x, y));
                total += (0..3).map(|c| f64::from(a[c].abs_diff(b[c]))).sum::<f64>();
            }
        }
        total / 30_000.0
    };
    let corner = difference(1440 - 300, 1080 - 100);
    let elsewhere = difference(0, 0);
    assert!(
        corner > elsewhere * 3.0 + 5.0,
        "corner {corner:.1} vs elsewhere {elsewhere:.1}"
    );
}

#[tokio::test]
async fn a_raw_body_takes_its_options_from_the_query() {
    let mesh = Mesh::start();
    let response = mesh
        .post(
            "/v1/watermark?format=webp&wm_position=top-left&max_width=800&max_height=800",
            test_image("seeding_alpha_2000x1125.png"),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/webp");
    let image = decode(&response.bytes().await.unwrap());
    assert_eq!((image.width(), image.height()), (800, 450));
    assert!(image.color().has_alpha(), "transparency survives");
}

#[tokio::test]
async fn the_same_bytes_uploaded_twice_are_stored_once() {
    let mesh = Mesh::start();
    let photo = test_image("dragonfly_4224x3168_progressive.jpg");
    let mut answers = Vec::new();
    // The Go original's route and the versioned one share the store.
    for route in ["/upload", "/v1/watermark"] {
        let response = mesh.post_form(route, form(photo.clone(), &[])).await;
        assert_eq!(response.status(), 200, "{route}");
        answers.push((
            response.headers()["x-original-sha256"]
                .to_str()
                .unwrap()
                .to_owned(),
            response.headers()["x-original-deduplicated"]
                .to_str()
                .unwrap()
                .to_owned(),
        ));
    }
    let key = sha256_hex(&photo);
    assert_eq!(
        answers,
        [
            (key.clone(), "false".to_owned()),
            (key.clone(), "true".to_owned())
        ]
    );
    assert_eq!(mesh.stored_originals().len(), 1, "{:?}", mesh.stored_originals());

    let status: serde_json::Value = mesh.get(&format!("/status/{key}")).await.json().await.unwrap();
    assert_eq!(status["size"], photo.len());
    assert_eq!(status["media_type"], "image/jpeg");

    let original = mesh.get(&format!("/image/{key}")).await;
    assert_eq!(original.status(), 200);
    assert_eq!(original.headers()["etag"], format!("\"{key}\"").as_str());
    assert_eq!(original.headers()["content-type"], "image/jpeg");
    assert!(
        original.bytes().await.unwrap() == photo,
        "the original comes back byte for byte"
    );
}

#[tokio::test]
async fn options_sent_after_the_image_field_still_apply() {
    let mesh = Mesh::start();
    let response = mesh
        .post_form(
            "/v1/watermark",
            form(test_image(KLEIBER), &[("format", "png"), ("max_width", "400")]),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    let image = decode(&response.bytes().await.unwrap());
    assert_eq!((image.width(), image.height()), (400, 300));
}

#[tokio::test]
async fn bad_requests_get_json_errors_with_grpc_gateway_statuses() {
    let mesh = Mesh::start();
    let post =
        |body: reqwest::multipart::Form| mesh.http.post(mesh.url("/v1/watermark")).multipart(body).send();

    let message = assert_json_error(
        post(form(b"just some text, no image".to_vec(), &[]))
            .await
            .unwrap(),
        415,
        "INVALID_ARGUMENT",
    )
    .await;
    assert!(
        message.contains(
            "the upload is not an image; send JPEG, PNG, WebP, GIF, AVIF, HEIC, BMP, TIFF, ICO or JPEG XL"
        ),
        "{message}"
    );

    let message = assert_json_error(
        post(form(test_image("tiny_16x16.jpg"), &[("quality", "500")]))
            .await
            .unwrap(),
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    assert!(message.contains("quality 500"), "{message}");

    let message = assert_json_error(
        mesh.post("/v1/watermark?wm_position=nowhere", test_image("tiny_16x16.jpg"))
            .await,
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    assert!(message.contains("wm_position"), "{message}");

    let no_image = reqwest::multipart::Form::new().text("wm_text", "hello");
    let message = assert_json_error(post(no_image).await.unwrap(), 400, "INVALID_ARGUMENT").await;
    assert!(message.contains("no `image` field"), "{message}");

    // A truncated JPEG is refused and its bytes are not kept.
    let photo = test_image(KLEIBER);
    let truncated = photo[..photo.len() / 2].to_vec();
    let message = assert_json_error(
        post(form(truncated.clone(), &[])).await.unwrap(),
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    assert!(message.contains("truncated"), "{message}");
    let truncated_key = sha256_hex(&truncated);
    assert!(
        !mesh
            .stored_originals()
            .iter()
            .any(|p| p.ends_with(&truncated_key)),
        "an unreadable upload was kept"
    );

    let unknown = "0".repeat(64);
    let get = |path: String| mesh.http.get(mesh.url(&path)).send();
    assert_json_error(get(format!("/status/{unknown}")).await.unwrap(), 404, "NOT_FOUND").await;
    assert_json_error(get(format!("/image/{unknown}")).await.unwrap(), 404, "NOT_FOUND").await;
    let message = assert_json_error(
        get("/status/not-a-hash".into()).await.unwrap(),
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    assert!(message.contains("64 lowercase hex"), "{message}");
    assert_json_error(get("/no/such/route".into()).await.unwrap(), 404, "NOT_FOUND").await;
    assert_json_error(get("/v1/watermark".into()).await.unwrap(), 405, "UNIMPLEMENTED").await;
}

#[tokio::test]
async fn unknown_options_are_refused_naming_the_known_ones() {
    let mesh = Mesh::start();
    let photo = test_image("tiny_16x16.jpg");
    let typo = mesh.post("/v1/watermark?wm_positon=center", photo.clone()).await;
    let message = assert_json_error(typo, 400, "INVALID_ARGUMENT").await;
    assert!(
        message.starts_with(
            "unknown option `wm_positon` (did you mean `wm_position`?); the options are wm_text,"
        ),
        "{message}"
    );
    // In a form, before or after the image: refused, and nothing kept.
    for fields in [
        vec![("wm_txt", "hello")],
        vec![("wm_text", "hello"), ("colour", "red")],
    ] {
        let mut form = reqwest::multipart::Form::new();
        let (first, rest) = fields.split_first().unwrap();
        form = form.text(first.0.to_owned(), first.1.to_owned());
        form = form.part("image", reqwest::multipart::Part::bytes(photo.clone()));
        for (name, value) in rest {
            form = form.text(name.to_string(), value.to_string());
        }
        let response = mesh.post_form("/v1/watermark", form).await;
        let message = assert_json_error(response, 400, "INVALID_ARGUMENT").await;
        assert!(message.contains("unknown option"), "{message}");
        assert!(
            message.contains("the image goes in the field `image`"),
            "{message}"
        );
        assert!(
            mesh.stored_originals().is_empty(),
            "{fields:?}: an upload refused was kept"
        );
    }
}

#[tokio::test]
async fn our_own_avif_output_is_accepted_as_an_upload() {
    let mesh = Mesh::start();
    let avif = mesh
        .post("/v1/watermark?format=avif", test_image("tiny_16x16.jpg"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(&avif[4..12], b"ftypavif");
    let response = mesh.post("/v1/watermark?format=png", avif.to_vec()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    let image = decode(&response.bytes().await.unwrap());
    assert_eq!((image.width(), image.height()), (16, 16));
}

#[tokio::test]
async fn uploads_over_the_body_limit_get_413_before_the_body_is_read() {
    let mesh = Mesh::start_with(&[("NWS_MAX_UPLOAD_BYTES", "1MiB")]);
    let addr = mesh.process.addr("gateway");
    let photo = test_image(KLEIBER);

    // A declared length over the limit is refused on the headers alone:
    // not one byte of the body is sent.
    let head = format!(
        "POST /v1/watermark HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        photo.len()
    );
    let (status, body) = raw_exchange(addr, head.as_bytes()).await;
    assert_eq!(status, 413);
    assert_eq!(body["code"], "INVALID_ARGUMENT");
    assert!(
        body["message"].as_str().unwrap().contains("NWS_MAX_UPLOAD_BYTES"),
        "{body}"
    );

    // No declared length: the stream is cut off once it passes the limit.
    let mut request =
        b"POST /v1/watermark HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in photo[..(1 << 20) + (128 << 10)].chunks(64 << 10) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    let (status, body) = raw_exchange(addr, &request).await;
    assert_eq!(status, 413, "{body}");
    assert!(mesh.stored_originals().is_empty());
}

/// Writes `request` on a fresh connection and reads one response (status and
/// JSON body) without sending anything more.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> (u16, serde_json::Value) {
    use tokio::io::AsyncWriteExt as _;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_json_response(&mut stream).await
}

#[tokio::test]
async fn health_and_readiness() {
    let mesh = Mesh::start();
    let live = mesh.get("/healthz").await;
    assert_eq!(live.status(), 200);
    // Ready once Storage's first backend check has passed, moments after start.
    let ready = eventually("ready", async || {
        let ready = mesh.get("/readyz").await;
        (ready.status() == 200).then_some(ready)
    })
    .await;
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["upstreams"]["optimizer"]["status"], "SERVING");
    assert_eq!(body["upstreams"]["storage"]["status"], "SERVING");

    // Storage pointed at a port where nothing listens: not ready, and
    // uploads get 503 rather than hanging.
    let (_reserved, dead_url) = refusing_url();
    let degraded = Mesh::start_with(&[("NWS_STORAGE_URL", &dead_url)]);
    let ready = degraded.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["upstreams"]["optimizer"]["status"], "SERVING");
    assert_eq!(body["upstreams"]["storage"]["status"], "UNAVAILABLE");
    let upload = degraded
        .post_form("/v1/watermark", form(test_image("tiny_16x16.jpg"), &[]))
        .await;
    let message = assert_json_error(upload, 503, "UNAVAILABLE").await;
    assert_eq!(message, "the storage service is unavailable; retry shortly");
}

#[tokio::test]
async fn with_the_optimizer_down_readiness_says_so_and_uploads_get_503() {
    let (_reserved, dead_url) = refusing_url();
    let mesh = Mesh::start_with(&[("NWS_OPTIMIZER_URL", &dead_url)]);
    // Once Storage's first check has passed, only the optimizer is missing.
    let body = eventually("storage SERVING", async || {
        let ready = mesh.get("/readyz").await;
        assert_eq!(ready.status(), 503);
        let body: serde_json::Value = ready.json().await.unwrap();
        (body["upstreams"]["storage"]["status"] == "SERVING").then_some(body)
    })
    .await;
    assert_eq!(body["upstreams"]["optimizer"]["status"], "UNAVAILABLE", "{body}");
    assert_eq!(body["status"], "not ready", "{body}");
    let photo = test_image("tiny_16x16.jpg");
    let upload = mesh.post_form("/v1/watermark", form(photo.clone(), &[])).await;
    let message = assert_json_error(upload, 503, "UNAVAILABLE").await;
    assert_eq!(message, "the optimizer service is unavailable; retry shortly");
    // The original was kept all the same, for a later try.
    assert_eq!(mesh.stored_originals().len(), 1);
    let stat = mesh.get(&format!("/v1/originals/{}", sha256_hex(&photo))).await;
    assert_eq!(stat.status(), 200);
}

#[tokio::test]
async fn format_auto_follows_the_accept_header_and_bytes_decide_the_input_type() {
    let mesh = Mesh::start_with(&[("NWS_AUTO_AVIF", "true")]);
    let photo = test_image("tiny_16x16.jpg");
    for (accept, media_type) in [
        ("image/avif,image/webp,*/*;q=0.8", "image/avif"),
        ("image/webp,*/*", "image/webp"),
        ("*/*", "image/jpeg"),
    ] {
        let response = mesh
            .http
            .post(mesh.url("/v1/watermark?format=auto"))
            .header("accept", accept)
            .body(photo.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{accept}");
        assert_eq!(response.headers()["content-type"], media_type, "{accept}");
    }

    // PNG bytes sent as `photo.jpg` with an image/jpeg type are a PNG.
    let png = test_image("seeding_alpha_2000x1125.png");
    let part = reqwest::multipart::Part::bytes(png)
        .file_name("photo.jpg")
        .mime_str("image/jpeg")
        .unwrap();
    let response = mesh
        .post_form(
            "/v1/watermark",
            reqwest::multipart::Form::new().part("image", part),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "image/png",
        "transparency kept"
    );
}
