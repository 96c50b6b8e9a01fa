//! The Optimizer binary, started for real and called over gRPC.

use std::path::Path;

use nws_watermark::{
    pb::{
        ImageFormat, OptimizeHeader, OptimizeOptions, OptimizeRequest, Position, ProbeRequest,
        optimize_request, optimize_response, optimizer_client::OptimizerClient,
    },
    testing::{ServiceProcess, test_image},
};
use tonic::{Code, transport::Channel};

const IMAGES: [&str; 6] = [
    "kleiber_4000x3000.jpg",
    "dragonfly_4224x3168_progressive.jpg",
    "picos_orient6.jpg",
    "life_gray_3088x2056.jpg",
    "seeding_alpha_2000x1125.png",
    "tiny_16x16.jpg",
];

fn start(env: &[(&str, &str)]) -> ServiceProcess {
    let mut env = env.to_vec();
    env.push(("NWS_OPTIMIZER_ADDR", "127.0.0.1:0"));
    ServiceProcess::start(
        Path::new(env!("CARGO_BIN_EXE_optimizer-svc")),
        &env,
        &["optimizer"],
    )
}

async fn client(process: &ServiceProcess) -> OptimizerClient<Channel> {
    OptimizerClient::connect(process.url("optimizer"))
        .await
        .expect("connect")
}

/// Streams `input` in 64 KiB chunks after `options`; returns the header and
/// the reassembled result.
async fn optimize(
    client: &mut OptimizerClient<Channel>,
    options: OptimizeOptions,
    input: &[u8],
) -> Result<(OptimizeHeader, Vec<u8>), tonic::Status> {
    let mut messages = vec![OptimizeRequest {
        payload: Some(optimize_request::Payload::Options(options)),
    }];
    messages.extend(input.chunks(64 * 1024).map(|chunk| OptimizeRequest {
        payload: Some(optimize_request::Payload::Chunk(chunk.to_vec().into())),
    }));
    let mut responses = client.optimize(tokio_stream::iter(messages)).await?.into_inner();
    let header = match responses.message().await?.and_then(|m| m.payload) {
        Some(optimize_response::Payload::Header(header)) => header,
        other => panic!("expected a header first, got {other:?}"),
    };
    let mut bytes = Vec::new();
    while let Some(message) = responses.message().await? {
        match message.payload {
            Some(optimize_response::Payload::Chunk(chunk)) => {
                assert!(chunk.len() <= 64 * 1024, "chunk of {} bytes", chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            other => panic!("expected only chunks after the header, got {other:?}"),
        }
    }
    Ok((header, bytes))
}

fn decoded_size(bytes: &[u8]) -> (u32, u32) {
    let image = image::load_from_memory(bytes).expect("the result decodes");
    (image.width(), image.height())
}

#[tokio::test]
async fn every_test_photo_is_fitted_watermarked_and_encoded() {
    let process = start(&[]);
    let mut client = client(&process).await;
    for name in IMAGES {
        let input = test_image(name);
        let (header, bytes) = optimize(&mut client, OptimizeOptions::default(), &input)
            .await
            .unwrap_or_else(|status| panic!("{name}: {status:?}"));
        assert!(
            header.width <= 1920 && header.height <= 1080,
            "{name}: {header:?}"
        );
        assert_eq!(header.size, bytes.len() as u64, "{name}");
        assert_eq!(decoded_size(&bytes), (header.width, header.height), "{name}");
        // Aspect ratio kept (to rounding), never enlarged.
        let source_ratio = f64::from(header.source_width) / f64::from(header.source_height);
        let ratio = f64::from(header.width) / f64::from(header.height);
        assert!(
            (source_ratio - ratio).abs() < 0.01,
            "{name}: {source_ratio} vs {ratio}"
        );
        assert!(header.width <= header.source_width, "{name}");
        assert!(header.timings.is_some(), "{name}");
        let expected_format = if name.ends_with(".png") {
            ImageFormat::Png
        } else {
            ImageFormat::Jpeg
        };
        assert_eq!(
            header.format(),
            expected_format,
            "{name}: transparency decides PNG"
        );
    }
}

#[tokio::test]
async fn exif_orientation_is_applied_and_metadata_stripped() {
    let process = start(&[]);
    let mut client = client(&process).await;
    let input = test_image("picos_orient6.jpg");
    let (header, bytes) = optimize(&mut client, OptimizeOptions::default(), &input)
        .await
        .unwrap();
    // Stored 2448×3264 with orientation 6: displayed landscape.
    assert_eq!((header.source_width, header.source_height), (3264, 2448));
    assert_eq!((header.width, header.height), (1440, 1080));
    assert!(
        !bytes.windows(6).any(|w| w == b"Exif\0\0"),
        "EXIF must not reach the output"
    );
}

#[tokio::test]
async fn output_is_byte_identical_for_the_same_input_and_options() {
    let process = start(&[]);
    let mut client = client(&process).await;
    let input = test_image("kleiber_4000x3000.jpg");
    let options = OptimizeOptions {
        watermark_text: "NWS © 2026 — été".into(),
        position: Position::Center as i32,
        quality: 80,
        ..Default::default()
    };
    let (_, first) = optimize(&mut client, options.clone(), &input).await.unwrap();
    let (_, second) = optimize(&mut client, options, &input).await.unwrap();
    assert!(first == second, "outputs differ");
}

#[tokio::test]
async fn requested_formats_and_boxes_are_honoured() {
    let process = start(&[]);
    let mut client = client(&process).await;
    let input = test_image("dragonfly_4224x3168_progressive.jpg");
    for (format, magic) in [
        (ImageFormat::Png, &b"\x89PNG"[..]),
        (ImageFormat::Webp, &b"RIFF"[..]),
        (ImageFormat::Jpeg, &b"\xFF\xD8\xFF"[..]),
    ] {
        let options = OptimizeOptions {
            format: format as i32,
            max_width: 640,
            max_height: 640,
            ..Default::default()
        };
        let (header, bytes) = optimize(&mut client, options, &input).await.unwrap();
        assert_eq!(header.format(), format);
        assert!(bytes.starts_with(magic), "{format:?}");
        assert_eq!((header.width, header.height), (640, 480));
        assert_eq!(decoded_size(&bytes), (640, 480));
    }
}

#[tokio::test]
async fn bad_input_gets_invalid_argument_naming_the_problem() {
    let process = start(&[]);
    let mut client = client(&process).await;
    let jpeg = test_image("kleiber_4000x3000.jpg");
    let cases: Vec<(&str, OptimizeOptions, Vec<u8>, &str)> = vec![
        (
            "not an image",
            OptimizeOptions::default(),
            b"hello, this is text".to_vec(),
            "not a supported image",
        ),
        ("empty", OptimizeOptions::default(), Vec::new(), "no image bytes"),
        (
            "truncated JPEG",
            OptimizeOptions::default(),
            jpeg[..jpeg.len() / 3].to_vec(),
            "could not be decoded",
        ),
        ("bomb", OptimizeOptions::default(), png_bomb(), "NWS_MAX_PIXELS"),
        (
            "bad quality",
            OptimizeOptions {
                quality: 500,
                ..Default::default()
            },
            jpeg.clone(),
            "quality 500",
        ),
    ];
    for (what, options, input, expected) in cases {
        let status = optimize(&mut client, options, &input).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            status.message().contains(expected),
            "{what}: {}",
            status.message()
        );
    }

    // A stream that does not start with the options.
    let chunk_first = vec![OptimizeRequest {
        payload: Some(optimize_request::Payload::Chunk(jpeg[..1024].to_vec().into())),
    }];
    let status = client
        .optimize(tokio_stream::iter(chunk_first))
        .await
        .expect_err("no options");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("first message"), "{}", status.message());
}

#[tokio::test]
async fn input_limits_are_configurable_and_named() {
    let process = start(&[("NWS_MAX_INPUT_BYTES", "2MiB"), ("NWS_MAX_PIXELS", "1000000")]);
    let mut client = client(&process).await;
    let status = optimize(
        &mut client,
        OptimizeOptions::default(),
        &test_image("kleiber_4000x3000.jpg"),
    )
    .await
    .expect_err("2.5 MB is over 2 MiB");
    assert!(
        status.message().contains("NWS_MAX_INPUT_BYTES"),
        "{}",
        status.message()
    );
    let status = optimize(
        &mut client,
        OptimizeOptions::default(),
        &test_image("life_gray_3088x2056.jpg"),
    )
    .await
    .expect_err("6.3 MP is over a megapixel");
    assert!(
        status.message().contains("NWS_MAX_PIXELS"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn probe_reads_the_header_only() {
    let process = start(&[]);
    let mut client = client(&process).await;
    let jpeg = test_image("picos_orient6.jpg");
    let probe = client
        .probe(ProbeRequest {
            header: jpeg[..64 * 1024].to_vec().into(),
        })
        .await
        .expect("probe from the first 64 KiB")
        .into_inner();
    assert_eq!(probe.format(), ImageFormat::Jpeg);
    assert_eq!((probe.width, probe.height, probe.orientation), (2448, 3264, 6));
    assert_eq!((probe.display_width, probe.display_height), (3264, 2448));

    // A bomb is described without being decoded.
    let probe = client
        .probe(ProbeRequest {
            header: png_bomb().into(),
        })
        .await
        .expect("probe a bomb")
        .into_inner();
    assert_eq!((probe.width, probe.height), (100_000, 100_000));

    let status = client
        .probe(ProbeRequest {
            header: b"GIF89a".to_vec().into(),
        })
        .await
        .expect_err("too short to have dimensions");
    assert_eq!(status.code(), Code::InvalidArgument);
}

/// A hundred bytes of PNG that claim 100000×100000 pixels (40 GB decoded).
fn png_bomb() -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, 100_000, 100_000);
    encoder.set_color(png::ColorType::Rgba);
    let mut writer = encoder.write_header().expect("header");
    // The start of a zlib stream: enough for a decoder to begin.
    writer
        .write_chunk(
            png::chunk::IDAT,
            &[0x78, 0x9c, 0xed, 0xc1, 0x01, 0x0d, 0x00, 0x00],
        )
        .expect("IDAT");
    drop(writer);
    out
}
