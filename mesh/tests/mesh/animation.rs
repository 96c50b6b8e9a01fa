//! Animated GIFs through the mesh, over HTTP and gRPC: `animated=keep`
//! answers an animated WebP of every frame, the default a still, and an
//! animation bomb is refused before the optimizer decodes a frame.

use std::io::Cursor;

use image::{AnimationDecoder as _, codecs::webp::WebPDecoder};
use nws_watermark::pb::{Animation, ImageFormat, OptimizeOptions};

use crate::{Mesh, assert_json_error, optimize_over_grpc};

const COLOURS: [[u8; 3]; 3] = [[220, 30, 30], [30, 190, 60], [30, 60, 220]];

/// Three 96×64 frames of one colour each, shown 70, 70 and 140 ms, forever.
fn traffic_light_gif() -> Vec<u8> {
    let mut gif = Vec::new();
    let mut encoder = gif::Encoder::new(&mut gif, 96, 64, COLOURS.as_flattened()).unwrap();
    encoder.set_repeat(gif::Repeat::Infinite).unwrap();
    for (i, delay) in [7, 7, 14].into_iter().enumerate() {
        let mut frame = gif::Frame::from_indexed_pixels(96, 64, vec![i as u8; 96 * 64], None);
        frame.delay = delay;
        encoder.write_frame(&frame).unwrap();
    }
    drop(encoder);
    gif
}

/// Each frame's colour at its top-left quarter (away from the mark) and
/// how long it shows, in ms.
fn frames_of(webp: &[u8]) -> Vec<([u8; 3], u32)> {
    let frames = WebPDecoder::new(Cursor::new(webp))
        .unwrap()
        .into_frames()
        .collect_frames()
        .unwrap();
    frames
        .iter()
        .map(|frame| {
            let [r, g, b, _] = frame.buffer().get_pixel(20, 15).0;
            let (numer, denom) = frame.delay().numer_denom_ms();
            ([r, g, b], numer / denom)
        })
        .collect()
}

fn close(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 16)
}

#[tokio::test]
async fn keep_answers_every_frame_over_http_and_grpc_and_first_a_still() {
    let mesh = Mesh::start();
    let gif = traffic_light_gif();

    let response = mesh
        .post("/v1/watermark?animated=keep&wm_text=NWS", gif.clone())
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/webp");
    assert_eq!(response.headers()["x-image-frames"], "3");
    let over_http = response.bytes().await.unwrap().to_vec();
    let frames = frames_of(&over_http);
    assert_eq!(frames.len(), 3);
    for ((colour, shown), (expected, ms)) in frames.iter().zip(COLOURS.iter().zip([70, 70, 140])) {
        assert!(close(*colour, *expected), "{colour:?} is not {expected:?}");
        assert_eq!(*shown, ms);
    }

    let options = OptimizeOptions {
        watermark_text: "NWS".into(),
        animated: Animation::Keep as i32,
        ..Default::default()
    };
    let (header, over_grpc) = optimize_over_grpc(&mesh, options, gif.clone()).await;
    assert_eq!((header.format, header.frames), (ImageFormat::Webp as i32, 3));
    assert_eq!(
        (header.source_format, header.source_width),
        (ImageFormat::Gif as i32, 96)
    );
    assert_eq!(over_grpc, over_http, "one pipeline behind both");

    let still = mesh.post("/v1/watermark?wm_text=NWS", gif).await;
    assert_eq!(still.status(), 200);
    assert_eq!(still.headers()["content-type"], "image/jpeg");
}

#[tokio::test]
async fn an_animation_bomb_and_keep_with_a_still_format_are_refused_naming_why() {
    let mesh = Mesh::start();
    // 10,000 one-pixel frames on a 1000×1000 canvas: about 150 kB that would
    // decode to 10 billion pixels.
    let mut bomb = Vec::new();
    let mut encoder = gif::Encoder::new(&mut bomb, 1000, 1000, &[0, 0, 0]).unwrap();
    for _ in 0..10_000 {
        encoder
            .write_frame(&gif::Frame::from_indexed_pixels(1, 1, vec![0], None))
            .unwrap();
    }
    drop(encoder);
    let response = mesh.post("/v1/watermark?animated=keep", bomb).await;
    let message = assert_json_error(response, 400, "INVALID_ARGUMENT").await;
    assert!(message.contains("10000 frames of 1000×1000"), "{message}");
    assert!(message.contains("NWS_MAX_ANIMATION_PIXELS"), "{message}");

    let response = mesh
        .post("/v1/watermark?animated=keep&format=jpeg", traffic_light_gif())
        .await;
    let message = assert_json_error(response, 400, "INVALID_ARGUMENT").await;
    assert!(message.starts_with("animated=keep writes WebP"), "{message}");
}
