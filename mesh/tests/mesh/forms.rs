//! Multipart forms at their edges: repeated and oversized fields, forms
//! that stall or run over the limit, and watermark text in every script up
//! to its 200-character limit. Whatever is refused keeps nothing.

use nws_runtime::testing::test_image;
use tokio::io::AsyncWriteExt as _;

use crate::{Mesh, assert_json_error, form, read_json_response};

const TINY: &str = "tiny_16x16.jpg";
const BOUNDARY: &str = "nws-test-boundary";

/// The head of a multipart request (with `length`, or chunked without)
/// and the start of a file part named `image`.
fn form_head(length: Option<usize>) -> Vec<u8> {
    let framing = match length {
        Some(length) => format!("Content-Length: {length}"),
        None => "Transfer-Encoding: chunked".to_owned(),
    };
    format!(
        "POST /v1/watermark HTTP/1.1\r\nHost: test\r\n{framing}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
    )
    .into_bytes()
}

fn file_part_head() -> Vec<u8> {
    format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\
         Content-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn repeated_and_oversized_fields_are_refused_and_keep_nothing() {
    let mesh = Mesh::start();
    let photo = test_image(TINY);

    let twice = reqwest::multipart::Form::new()
        .part("image", reqwest::multipart::Part::bytes(photo.clone()))
        .part("image", reqwest::multipart::Part::bytes(photo.clone()));
    let message = assert_json_error(
        mesh.post_form("/v1/watermark", twice).await,
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    assert_eq!(message, "the form has more than one `image` field");
    assert!(mesh.stored_originals().is_empty(), "the first image is not kept");

    // An option field is text of a few bytes: one over 4096 bytes is
    // refused as soon as it passes them, before or after the image. (Kept
    // small enough to be sent whole before the answer: an HTTP/1.1 client
    // still writing a body the server has refused sees a broken pipe.)
    let huge = "x".repeat(5000);
    for before in [true, false] {
        let form = if before {
            reqwest::multipart::Form::new()
                .text("wm_text", huge.clone())
                .part("image", reqwest::multipart::Part::bytes(photo.clone()))
        } else {
            form(photo.clone(), &[("wm_text", &huge)])
        };
        let message = assert_json_error(
            mesh.post_form("/v1/watermark", form).await,
            400,
            "INVALID_ARGUMENT",
        )
        .await;
        assert_eq!(message, "form field `wm_text` is over 4096 bytes");
        assert!(mesh.stored_originals().is_empty(), "before the image: {before}");
    }
}

#[tokio::test]
async fn a_stalled_form_gets_408_and_a_form_over_the_limit_413() {
    let mesh = Mesh::start_with(&[("NWS_BODY_READ_TIMEOUT", "1s"), ("NWS_MAX_UPLOAD_BYTES", "1MiB")]);
    let addr = mesh.process.addr("gateway");
    let photo = test_image("kleiber_4000x3000.jpg");

    // Half a file part, then nothing: cut off after NWS_BODY_READ_TIMEOUT.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = form_head(Some(900_000));
    request.extend_from_slice(&file_part_head());
    request.extend_from_slice(&photo[..200_000]);
    stalled.write_all(&request).await.unwrap();
    let (status, body) = read_json_response(&mut stalled).await;
    assert_eq!(status, 408, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("NWS_BODY_READ_TIMEOUT"),
        "{body}"
    );

    // A chunked form (no length to refuse it by) that runs past 1 MiB.
    let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut body_bytes = file_part_head();
    body_bytes.extend_from_slice(&photo[..(1 << 20) + (256 << 10)]);
    let mut request = form_head(None);
    for chunk in body_bytes.chunks(64 << 10) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    // The server may answer and close before reading it all.
    let _ = over.write_all(&request).await;
    let (status, body) = read_json_response(&mut over).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("NWS_MAX_UPLOAD_BYTES"),
        "{body}"
    );

    assert!(
        mesh.stored_originals().is_empty(),
        "{:?}",
        mesh.stored_originals()
    );
}

#[tokio::test]
async fn watermark_text_in_any_script_is_drawn_up_to_200_characters() {
    let mesh = Mesh::start();
    let photo = test_image(TINY);
    // Right-to-left Hebrew and Arabic, emoji (a ZWJ family is five
    // characters), and letters with combining accents: counted as Unicode
    // scalar values, whatever their bytes.
    let samples = ["שלום ", "مرحبا ", "👨‍👩‍👧 ", "é", "a\u{301}\u{308} ", "日本語 "];
    let mut text = String::new();
    for sample in samples.iter().cycle() {
        if text.chars().count() + sample.chars().count() > 200 {
            break;
        }
        text.push_str(sample);
    }
    while text.chars().count() < 200 {
        text.push('\u{301}');
    }
    assert_eq!(text.chars().count(), 200);
    assert!(text.len() > 300, "multi-byte: {} bytes", text.len());

    let render = |text: String| {
        let mesh = &mesh;
        let photo = photo.clone();
        async move {
            mesh.post_form("/v1/watermark?format=png", form(photo, &[("wm_text", &text)]))
                .await
        }
    };
    let at_limit = render(text.clone()).await;
    assert_eq!(at_limit.status(), 200);
    let marked = at_limit.bytes().await.unwrap();
    let plain = render("x".to_owned()).await.bytes().await.unwrap();
    assert_ne!(marked, plain, "the text is drawn");

    let over = render(format!("{text}ש")).await;
    let message = assert_json_error(over, 400, "INVALID_ARGUMENT").await;
    assert_eq!(
        message,
        "watermark_text has 201 characters; at most 200 are allowed"
    );
}
