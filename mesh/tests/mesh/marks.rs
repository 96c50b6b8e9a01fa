//! The whole watermark through the mesh: image marks (a form part, a stored
//! hash, the server's default), placement, rotation, colour and fonts,
//! over HTTP and gRPC alike, judged by the pixels of lossless outputs.

use image::{GenericImageView as _, ImageEncoder as _, Rgba, RgbaImage};
use nws_runtime::testing::bounds;
use nws_watermark::pb::{ImageFormat, OptimizeOptions};

use crate::{Mesh, assert_json_error, optimize_over_grpc, sha256_hex};

const GREY: [u8; 3] = [128, 128, 128];

/// A flat grey photo: any change in the output is the mark's.
fn grey_png(width: u32, height: u32) -> Vec<u8> {
    let pixels: Vec<u8> = GREY.repeat((width * height) as usize);
    encode_png(&pixels, width, height, image::ExtendedColorType::Rgb8)
}

fn encode_png(pixels: &[u8], width: u32, height: u32, colour: image::ExtendedColorType) -> Vec<u8> {
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(pixels, width, height, colour)
        .expect("encode a PNG");
    png
}

/// A 200×100 logo: an opaque red square in the middle of transparency.
fn logo_png() -> Vec<u8> {
    let logo = RgbaImage::from_fn(200, 100, |x, y| {
        if (50..150).contains(&x) && (25..75).contains(&y) {
            Rgba([255, 0, 0, 255])
        } else {
            Rgba([0, 0, 255, 0])
        }
    });
    encode_png(logo.as_raw(), 200, 100, image::ExtendedColorType::Rgba8)
}

/// A PNG whose header claims `side`×`side` pixels, with no pixel data: it
/// must be refused from the header alone.
fn huge_header_png(side: u32) -> Vec<u8> {
    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut crc_input = kind.to_vec();
        crc_input.extend_from_slice(data);
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&crc_input);
        out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
        out
    }
    let mut ihdr = side.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    // The start of the pixel data (an empty zlib stream), as a bomb has.
    png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
    png.extend(chunk(b"IEND", &[]));
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                0xEDB8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The form: the photo, a mark image, then text fields.
fn form_with_mark(photo: Vec<u8>, mark: Vec<u8>, fields: &[(&str, &str)]) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new()
        .part(
            "wm_image",
            reqwest::multipart::Part::bytes(mark).file_name("logo.png"),
        )
        .part(
            "image",
            reqwest::multipart::Part::bytes(photo).file_name("photo.png"),
        );
    for (name, value) in fields {
        form = form.text(name.to_string(), value.to_string());
    }
    form
}

/// The output's pixels that are not the grey background, as (x, y).
fn marked(png: &[u8]) -> (Vec<(u32, u32)>, image::DynamicImage) {
    let image = image::load_from_memory(png).expect("the output decodes");
    let changed = image
        .pixels()
        .filter(|(_, _, p)| p.0[..3] != GREY)
        .map(|(x, y, _)| (x, y))
        .collect();
    (changed, image)
}

async fn ok_bytes(response: reqwest::Response) -> (reqwest::header::HeaderMap, Vec<u8>) {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap().to_vec();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    (headers, body)
}

#[tokio::test]
async fn a_logo_uploaded_once_is_drawn_where_asked_and_reused_by_its_hash() {
    let mesh = Mesh::start();
    let logo = logo_png();
    let photo = grey_png(1000, 500);
    let fields = [
        ("format", "png"),
        ("wm_position", "top-left"),
        ("wm_scale", "0.4"),
        ("wm_opacity", "1"),
    ];
    let (headers, first) = ok_bytes(
        mesh.post_form(
            "/v1/watermark",
            form_with_mark(photo.clone(), logo.clone(), &fields),
        )
        .await,
    )
    .await;

    // 0.4 × 1000 = a 400×200 logo whose opaque middle (200×100 at 100, 50)
    // is red, inset by the margin of a logo alone (1000/50); its enlarged
    // edges blur a few pixels out, nothing more: no text is drawn when an
    // image is given and wm_text is not.
    let (changed, image) = marked(&first);
    let red: Vec<(u32, u32)> = changed
        .iter()
        .copied()
        .filter(|&(x, y)| {
            let p = image.get_pixel(x, y).0;
            p[0] > 192 && p[1] < 64 && p[2] < 64
        })
        .collect();
    let (x0, y0, x1, y1) = bounds(&red);
    assert!(
        x0.abs_diff(120) <= 2 && y0.abs_diff(70) <= 2 && x1.abs_diff(319) <= 2 && y1.abs_diff(169) <= 2,
        "{:?}",
        (x0, y0, x1, y1)
    );
    let (x0, y0, x1, y1) = bounds(&changed);
    assert!(
        x0 >= 110 && y0 >= 60 && x1 <= 330 && y1 <= 180,
        "{:?}",
        (x0, y0, x1, y1)
    );
    assert_eq!(image.get_pixel(220, 120).0, [255, 0, 0, 255]);

    // The logo is an original in Storage now: its hash draws it again,
    // from a raw upload, to the very same result (same key).
    let hash = sha256_hex(&logo);
    let query = format!("?format=png&wm_position=top-left&wm_scale=0.4&wm_opacity=1&wm_image_sha256={hash}");
    let (again_headers, again) =
        ok_bytes(mesh.post(&format!("/v1/watermark{query}"), photo.clone()).await).await;
    assert_eq!(again_headers["etag"], headers["etag"]);
    assert_eq!(again, first);

    // With text too, the text goes under the logo.
    let (_, both) = ok_bytes(
        mesh.post(
            &format!("/v1/watermark{query}&wm_text=Below&wm_color=%2300ff00"),
            photo,
        )
        .await,
    )
    .await;
    let (changed, image) = marked(&both);
    let green: Vec<(u32, u32)> = changed
        .iter()
        .copied()
        .filter(|&(x, y)| {
            let p = image.get_pixel(x, y).0;
            p[1] > 200 && p[0] < 100
        })
        .collect();
    assert!(!green.is_empty(), "the text is drawn in the colour asked");
    assert!(bounds(&green).1 > 169, "below the logo: {:?}", bounds(&green));
}

#[tokio::test]
async fn a_logo_over_the_limits_or_not_stored_is_refused_naming_it_and_the_photo_is_kept() {
    let mesh = Mesh::start();
    let photo = grey_png(64, 64);
    let response = mesh
        .post_form(
            "/v1/watermark",
            form_with_mark(photo.clone(), huge_header_png(10_000), &[("format", "png")]),
        )
        .await;
    let message = assert_json_error(response, 400, "INVALID_ARGUMENT").await;
    assert!(message.contains("watermark image"), "{message}");
    assert!(message.contains("10000×10000"), "{message}");
    assert!(message.contains("4096"), "{message}");
    // The photo was fine: it stays stored (with the refused logo).
    assert_eq!(mesh.stored_originals().len(), 2);

    let unknown = "0".repeat(64);
    let response = mesh
        .post(&format!("/v1/watermark?wm_image_sha256={unknown}"), photo.clone())
        .await;
    let message = assert_json_error(response, 400, "INVALID_ARGUMENT").await;
    assert!(message.contains("is not stored: upload it first"), "{message}");

    let response = mesh.post("/v1/watermark?wm_image_sha256=abc", photo).await;
    let message = assert_json_error(response, 400, "INVALID_ARGUMENT").await;
    assert!(
        message.starts_with("image_sha256 \"abc\" is not a SHA-256"),
        "{message}"
    );
}

#[tokio::test]
async fn the_server_default_logo_marks_uploads_that_name_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logo.png");
    std::fs::write(&path, logo_png()).unwrap();
    let mesh = Mesh::start_with(&[("NWS_WATERMARK_IMAGE", path.to_str().unwrap())]);
    let photo = grey_png(1000, 500);
    let red = |png: &[u8]| {
        let (changed, image) = marked(png);
        changed
            .into_iter()
            .filter(|&(x, y)| image.get_pixel(x, y).0[..3] == [255, 0, 0])
            .count()
    };
    let (_, by_default) = ok_bytes(
        mesh.post("/v1/watermark?format=png&wm_opacity=1", photo.clone())
            .await,
    )
    .await;
    // 0.2 × 1000 = a 200×100 logo: its opaque middle is 100×50.
    assert!(red(&by_default).abs_diff(5000) < 300, "{}", red(&by_default));
    let (_, opted_out) = ok_bytes(
        mesh.post(
            "/v1/watermark?format=png&wm_opacity=1&wm_image_sha256=none",
            photo,
        )
        .await,
    )
    .await;
    assert_eq!(red(&opted_out), 0);
    assert!(!marked(&opted_out).0.is_empty(), "the default text instead");
}

#[tokio::test]
async fn a_rotated_tiled_mark_covers_the_image_and_grpc_draws_what_http_does() {
    let mesh = Mesh::start();
    let photo = grey_png(1200, 800);
    let query = "?format=png&wm_text=NWS&wm_tiled=1&wm_rotate=-30&wm_font=serif&wm_size=0.05&wm_spacing=40";
    let (_, over_http) = ok_bytes(mesh.post(&format!("/v1/watermark{query}"), photo.clone()).await).await;
    let (changed, _) = marked(&over_http);
    // Every 200×200 cell holds part of the pattern.
    for cy in 0..4 {
        for cx in 0..6 {
            assert!(
                changed.iter().any(|&(x, y)| x / 200 == cx && y / 200 == cy),
                "cell ({cx}, {cy}) untouched"
            );
        }
    }

    let options = OptimizeOptions {
        watermark_text: "NWS".into(),
        tiled: true,
        rotate: -30.0,
        font: nws_watermark::pb::Font::Serif as i32,
        text_size: 0.05,
        spacing: 40.0,
        format: ImageFormat::Png as i32,
        ..Default::default()
    };
    let (_, over_grpc) = optimize_over_grpc(&mesh, options, photo).await;
    assert_eq!(over_grpc, over_http);
}
