//! The Optimizer binary, started for real and called over gRPC.

use std::path::Path;

use nws_runtime::testing::{ServiceProcess, test_image};
use nws_watermark::pb::{
    ImageFormat, OptimizeHeader, OptimizeOptions, OptimizeRequest, Position, ProbeRequest, optimize_request,
    optimize_response, optimizer_client::OptimizerClient,
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

    // Every encoder, not only JPEG's.
    for format in [ImageFormat::Png, ImageFormat::Webp, ImageFormat::Avif] {
        let options = OptimizeOptions {
            format: format as i32,
            max_width: 400,
            max_height: 400,
            ..Default::default()
        };
        let (_, first) = optimize(&mut client, options.clone(), &input).await.unwrap();
        let (_, second) = optimize(&mut client, options, &input).await.unwrap();
        assert!(first == second, "{format:?} outputs differ");
    }
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
        (ImageFormat::Avif, &b"\0\0\0\x18ftypavif"[..]),
    ] {
        let options = OptimizeOptions {
            format: format as i32,
            max_width: 640,
            max_height: 640,
            ..Default::default()
        };
        let (header, bytes) = optimize(&mut client, options, &input).await.unwrap();
        assert_eq!(header.format(), format);
        assert!(
            bytes.starts_with(magic),
            "{format:?}: {:?}",
            &bytes[..16.min(bytes.len())]
        );
        assert_eq!((header.width, header.height), (640, 480));
        assert_eq!(header.media_type, nws_watermark::media::media_type(format));
        if format != ImageFormat::Avif {
            // (`image` has no AVIF decoder here.)
            assert_eq!(decoded_size(&bytes), (640, 480));
        }
    }

    // Lossy WebP follows the quality.
    let webp_at = |quality| OptimizeOptions {
        format: ImageFormat::Webp as i32,
        quality,
        ..Default::default()
    };
    let (_, low) = optimize(&mut client, webp_at(30), &input).await.unwrap();
    let (_, high) = optimize(&mut client, webp_at(90), &input).await.unwrap();
    assert!(
        low.len() * 2 < high.len(),
        "q30 {} bytes vs q90 {}",
        low.len(),
        high.len()
    );
}

#[tokio::test]
async fn an_unspecified_format_follows_the_callers_accept_values() {
    let process = start(&[]);
    let mut client = client(&process).await;
    let photo = test_image("picos_orient6.jpg");
    let alpha = test_image("seeding_alpha_2000x1125.png");
    let cases = [
        (
            &photo,
            "image/avif,image/webp,image/apng,*/*;q=0.8",
            ImageFormat::Avif,
        ),
        (&photo, "image/webp,*/*", ImageFormat::Webp),
        (&photo, "image/avif;q=0,image/webp;q=0.9", ImageFormat::Webp),
        (&photo, "*/*", ImageFormat::Jpeg),
        (&alpha, "image/webp,*/*", ImageFormat::Webp),
        (&alpha, "*/*", ImageFormat::Png),
    ];
    for (input, accept, expected) in cases {
        let options = OptimizeOptions {
            accept: vec![accept.to_owned()],
            max_width: 320,
            max_height: 320,
            ..Default::default()
        };
        let (header, _) = optimize(&mut client, options, input).await.unwrap();
        assert_eq!(header.format(), expected, "Accept: {accept}");
    }
}

#[tokio::test]
async fn an_upload_that_ends_short_of_its_declared_size_is_aborted() {
    let process = start(&[]);
    let mut client = client(&process).await;
    let jpeg = test_image("tiny_16x16.jpg");
    let declared = |size: usize| OptimizeOptions {
        input_size: size as u64,
        ..Default::default()
    };

    // A clean end with bytes missing: refused, not decoded as a short image.
    let status = optimize(&mut client, declared(jpeg.len() + 100), &jpeg)
        .await
        .expect_err("a short upload is refused");
    assert_eq!(status.code(), tonic::Code::Aborted);
    assert!(
        status
            .message()
            .contains(&format!("{} of the {}", jpeg.len(), jpeg.len() + 100)),
        "{}",
        status.message()
    );
    let status = optimize(&mut client, declared(10), &jpeg)
        .await
        .expect_err("a longer upload is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("input_size"), "{}", status.message());

    // The exact size, or none at all, is accepted.
    optimize(&mut client, declared(jpeg.len()), &jpeg)
        .await
        .expect("exact size");
    optimize(&mut client, declared(0), &jpeg)
        .await
        .expect("size not given");
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
        (
            "bad opacity",
            OptimizeOptions {
                opacity: 1.5,
                ..Default::default()
            },
            jpeg.clone(),
            "opacity 1.5",
        ),
        (
            "unknown filter",
            OptimizeOptions {
                resize_filter: 9,
                ..Default::default()
            },
            jpeg.clone(),
            "resize_filter 9",
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

/// Encodes RGB pixels as a baseline JPEG (libjpeg-turbo, 4:4:4, q95).
fn jpeg_from_rgb(width: usize, height: usize, rgb: &[u8]) -> Vec<u8> {
    let mut compressor = turbojpeg::Compressor::new().unwrap();
    compressor.set_quality(95).unwrap();
    compressor.set_subsamp(turbojpeg::Subsamp::None).unwrap();
    compressor
        .compress_to_vec(turbojpeg::Image {
            pixels: rgb,
            width,
            pitch: width * 3,
            height,
            format: turbojpeg::PixelFormat::RGB,
        })
        .unwrap()
}

/// Inserts an EXIF block carrying only `orientation` after the SOI marker.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0*\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one IFD entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // one value
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // padding, no next IFD
    let payload = [&b"Exif\0\0"[..], &tiff].concat();
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// Mean colour of a `size`-pixel square centred on (x, y).
fn mean_rgb(image: &image::RgbImage, x: u32, y: u32, size: u32) -> [f64; 3] {
    let mut sum = [0f64; 3];
    for dy in 0..size {
        for dx in 0..size {
            let p = image.get_pixel(x - size / 2 + dx, y - size / 2 + dy).0;
            for c in 0..3 {
                sum[c] += f64::from(p[c]);
            }
        }
    }
    sum.map(|s| s / f64::from(size * size))
}

fn close(a: [f64; 3], b: [f64; 3], tolerance: f64) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tolerance)
}

#[tokio::test]
async fn all_eight_exif_orientations_are_applied() {
    // Four coloured quadrants, stored 400×240: red, green / blue, yellow.
    let (width, height) = (400usize, 240usize);
    let colours = [[220u8, 30, 30], [30, 200, 30], [30, 30, 220], [230, 220, 40]];
    let rgb: Vec<u8> = (0..width * height)
        .flat_map(|i| {
            let (x, y) = (i % width, i / width);
            colours[usize::from(y >= height / 2) * 2 + usize::from(x >= width / 2)]
        })
        .collect();
    let stored = jpeg_from_rgb(width, height, &rgb);
    let process = start(&[]);
    let mut client = client(&process).await;
    for orientation in 1..=8u8 {
        let input = with_exif_orientation(&stored, u16::from(orientation));
        let (header, bytes) = optimize(&mut client, OptimizeOptions::default(), &input)
            .await
            .unwrap_or_else(|s| panic!("orientation {orientation}: {s:?}"));
        let mut expected = image::load_from_memory(&stored).unwrap();
        expected.apply_orientation(image::metadata::Orientation::from_exif(orientation).unwrap());
        let expected = expected.to_rgb8();
        let output = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(
            output.dimensions(),
            expected.dimensions(),
            "orientation {orientation}"
        );
        assert_eq!((header.width, header.height), expected.dimensions());
        // Three quadrant centres; the fourth holds the watermark.
        let (w, h) = output.dimensions();
        for (x, y) in [(w / 4, h / 4), (3 * w / 4, h / 4), (w / 4, 3 * h / 4)] {
            let (got, want) = (mean_rgb(&output, x, y, 16), mean_rgb(&expected, x, y, 16));
            assert!(
                close(got, want, 12.0),
                "orientation {orientation} at ({x}, {y}): {got:?} vs {want:?}"
            );
        }
    }
}

#[tokio::test]
async fn shrink_on_load_matches_a_full_size_decode_and_resize() {
    let input = test_image("kleiber_4000x3000.jpg");
    let process = start(&[]);
    let mut client = client(&process).await;
    let (header, bytes) = optimize(&mut client, OptimizeOptions::default(), &input)
        .await
        .unwrap();
    assert_eq!((header.width, header.height), (1440, 1080));
    let output = image::load_from_memory(&bytes).unwrap().to_rgb8();
    let reference = image::load_from_memory(&input)
        .unwrap()
        .resize_exact(1440, 1080, image::imageops::FilterType::Lanczos3)
        .to_rgb8();
    // The top half, away from the bottom-right watermark.
    let mut total = 0f64;
    let mut count = 0f64;
    for y in 0..540 {
        for x in 0..1440 {
            let (a, b) = (output.get_pixel(x, y).0, reference.get_pixel(x, y).0);
            for c in 0..3 {
                total += (f64::from(a[c]) - f64::from(b[c])).abs();
                count += 1.0;
            }
        }
    }
    let mean_error = total / count;
    assert!(
        mean_error < 4.0,
        "mean absolute difference {mean_error:.2} from a full-size decode"
    );
}

#[tokio::test]
async fn odd_inputs_are_processed() {
    let process = start(&[]);
    let mut client = client(&process).await;

    // CMYK (Adobe YCCK), which libjpeg-turbo cannot turn into RGB itself.
    let cmyk: Vec<u8> = (0..320 * 200)
        .flat_map(|i| [(i % 320) as u8, 40, 200, 10])
        .collect();
    let mut compressor = turbojpeg::Compressor::new().unwrap();
    compressor.set_quality(90).unwrap();
    let cmyk_jpeg = compressor
        .compress_to_vec(turbojpeg::Image {
            pixels: &cmyk[..],
            width: 320,
            pitch: 320 * 4,
            height: 200,
            format: turbojpeg::PixelFormat::CMYK,
        })
        .unwrap();
    // 16-bit RGB PNG.
    let mut png16 = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png16, 300, 200);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Sixteen);
        let data: Vec<u8> = (0..300 * 200)
            .flat_map(|i: u32| {
                let v = ((i % 300) * 218) as u16;
                [v.to_be_bytes(), 20000u16.to_be_bytes(), 60000u16.to_be_bytes()].concat()
            })
            .collect();
        encoder.write_header().unwrap().write_image_data(&data).unwrap();
    }
    // 1×1 PNG with alpha, and a 30000×10 panorama.
    let mut one = Vec::new();
    image::RgbaImage::from_pixel(1, 1, image::Rgba([10, 20, 30, 128]))
        .write_to(&mut std::io::Cursor::new(&mut one), image::ImageFormat::Png)
        .unwrap();
    let panorama_rgb: Vec<u8> = (0..30000 * 10).flat_map(|i| [(i % 251) as u8, 90, 160]).collect();
    let panorama = jpeg_from_rgb(30000, 10, &panorama_rgb);

    type Case = (&'static str, Vec<u8>, (u32, u32), ImageFormat);
    let cases: [Case; 4] = [
        ("CMYK JPEG", cmyk_jpeg.clone(), (320, 200), ImageFormat::Jpeg),
        ("16-bit PNG", png16, (300, 200), ImageFormat::Png),
        ("1×1 with alpha", one, (1, 1), ImageFormat::Png),
        ("30000×10 panorama", panorama, (1920, 1), ImageFormat::Jpeg),
    ];
    for (what, input, size, source_format) in cases {
        let (header, bytes) = optimize(&mut client, OptimizeOptions::default(), &input)
            .await
            .unwrap_or_else(|s| panic!("{what}: {s:?}"));
        assert_eq!((header.width, header.height), size, "{what}");
        assert_eq!(header.source_format(), source_format, "{what}");
        assert_eq!(decoded_size(&bytes), size, "{what}");
    }

    // The CMYK photo's colours are the reference decoder's, not garbage.
    let (_, bytes) = optimize(&mut client, OptimizeOptions::default(), &cmyk_jpeg)
        .await
        .unwrap();
    let output = image::load_from_memory(&bytes).unwrap().to_rgb8();
    let reference = image::load_from_memory(&cmyk_jpeg).unwrap().to_rgb8();
    for x in [40, 160] {
        let (got, want) = (mean_rgb(&output, x, 50, 8), mean_rgb(&reference, x, 50, 8));
        assert!(close(got, want, 12.0), "CMYK at x={x}: {got:?} vs {want:?}");
    }

    // PNG bytes, whatever a client calls them, are read as PNG.
    let (header, _) = optimize(
        &mut client,
        OptimizeOptions::default(),
        &test_image("seeding_alpha_2000x1125.png"),
    )
    .await
    .unwrap();
    assert_eq!(header.source_format(), ImageFormat::Png);
}

#[tokio::test]
async fn past_the_waiting_line_calls_are_refused_at_once() {
    let process = start(&[("NWS_OPTIMIZER_WORKERS", "1"), ("NWS_OPTIMIZER_QUEUE", "1")]);
    let client = client(&process).await;
    let jpeg = test_image("kleiber_4000x3000.jpg");

    // Two calls hold the worker's place and the queue's: they send their
    // options and a first chunk, then wait.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(OptimizeRequest {
            payload: Some(optimize_request::Payload::Options(OptimizeOptions::default())),
        })
        .await
        .unwrap();
        tx.send(OptimizeRequest {
            payload: Some(optimize_request::Payload::Chunk(jpeg[..65536].to_vec().into())),
        })
        .await
        .unwrap();
        let mut held = client.clone();
        let call = tokio::spawn(async move {
            held.optimize(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        holders.push((tx, call));
    }
    // Give their headers time to reach the server (only this test's setup
    // waits on it; the refusal itself is immediate).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        holders.iter().all(|(_, call)| !call.is_finished()),
        "holders admitted and waiting"
    );
    let mut third = client.clone();
    let status = optimize(&mut third, OptimizeOptions::default(), &jpeg)
        .await
        .expect_err("a third call is refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("NWS_OPTIMIZER_QUEUE"),
        "{}",
        status.message()
    );

    // Once the holders finish, there is room again.
    for (tx, call) in holders {
        for chunk in jpeg[65536..].chunks(65536) {
            tx.send(OptimizeRequest {
                payload: Some(optimize_request::Payload::Chunk(chunk.to_vec().into())),
            })
            .await
            .unwrap();
        }
        drop(tx);
        call.await.unwrap().expect("the held call completes");
    }
    let mut client = client.clone();
    optimize(&mut client, OptimizeOptions::default(), &jpeg)
        .await
        .expect("room again");
}

#[tokio::test]
async fn a_call_whose_deadline_passes_is_dropped_before_it_runs() {
    let process = start(&[("NWS_OPTIMIZER_WORKERS", "1")]);
    let client = client(&process).await;
    let photo = test_image("dragonfly_4224x3168_progressive.jpg");

    // The one worker is busy with a slow progressive photo...
    let mut busy = client.clone();
    let busy_photo = photo.clone();
    let first =
        tokio::spawn(async move { optimize(&mut busy, OptimizeOptions::default(), &busy_photo).await });
    // ...while a call with a short deadline waits behind it.
    let mut messages = vec![OptimizeRequest {
        payload: Some(optimize_request::Payload::Options(OptimizeOptions::default())),
    }];
    messages.extend(photo.chunks(64 * 1024).map(|chunk| OptimizeRequest {
        payload: Some(optimize_request::Payload::Chunk(chunk.to_vec().into())),
    }));
    let mut request = tonic::Request::new(tokio_stream::iter(messages));
    request.set_timeout(std::time::Duration::from_millis(30));
    let mut hurried = client.clone();
    let status = hurried.optimize(request).await.expect_err("deadline passes");
    // tonic reports its own client-side timer as CANCELLED.
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );

    first.await.unwrap().expect("the first call completes");
    // The server dropped the late call: it was never optimized.
    // (Logs arrive through a pipe: wait for both lines.)
    for _ in 0..100 {
        let logs = process.logs();
        if logs.contains("call cancelled") && logs.contains("\"optimized\"") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let logs = process.logs();
    assert!(logs.contains("call cancelled"), "{logs}");
    assert_eq!(logs.matches("\"optimized\"").count(), 1, "{logs}");
}

/// A minimal ICC v2 RGB display profile: the given primaries (XYZ, D50),
/// gamma 2.2 curves, D50 white.
fn icc_profile(primaries: [[f64; 3]; 3]) -> Vec<u8> {
    let s15 = |v: f64| ((v * 65536.0).round() as i32).to_be_bytes();
    let xyz = |v: [f64; 3]| {
        let mut tag = b"XYZ \0\0\0\0".to_vec();
        for c in v {
            tag.extend_from_slice(&s15(c));
        }
        tag
    };
    let curve = {
        let mut tag = b"curv\0\0\0\0".to_vec();
        tag.extend_from_slice(&1u32.to_be_bytes());
        tag.extend_from_slice(&[0x02, 0x33, 0, 0]); // gamma 2.2 (u8Fixed8), padded
        tag
    };
    let tags: Vec<(&[u8; 4], Vec<u8>)> = vec![
        (b"rXYZ", xyz(primaries[0])),
        (b"gXYZ", xyz(primaries[1])),
        (b"bXYZ", xyz(primaries[2])),
        (b"wtpt", xyz([0.9642, 1.0, 0.8249])),
        (b"rTRC", curve.clone()),
        (b"gTRC", curve.clone()),
        (b"bTRC", curve),
    ];
    let mut data = Vec::new();
    let mut table = (tags.len() as u32).to_be_bytes().to_vec();
    let data_start = 128 + 4 + 12 * tags.len();
    for (signature, tag) in &tags {
        table.extend_from_slice(*signature);
        table.extend_from_slice(&((data_start + data.len()) as u32).to_be_bytes());
        table.extend_from_slice(&(tag.len() as u32).to_be_bytes());
        data.extend_from_slice(tag);
        while data.len() % 4 != 0 {
            data.push(0);
        }
    }
    let size = data_start + data.len();
    let mut header = vec![0u8; 128];
    header[0..4].copy_from_slice(&(size as u32).to_be_bytes());
    header[8..12].copy_from_slice(&[2, 0x10, 0, 0]);
    header[12..16].copy_from_slice(b"mntr");
    header[16..20].copy_from_slice(b"RGB ");
    header[20..24].copy_from_slice(b"XYZ ");
    header[36..40].copy_from_slice(b"acsp");
    for (i, c) in [0.9642, 1.0, 0.8249].into_iter().enumerate() {
        header[68 + 4 * i..72 + 4 * i].copy_from_slice(&s15(c));
    }
    [header, table, data].concat()
}

/// Inserts `icc` as an APP2 ICC_PROFILE segment after the SOI marker.
fn with_icc(jpeg: &[u8], icc: &[u8]) -> Vec<u8> {
    let payload = [&b"ICC_PROFILE\0\x01\x01"[..], icc].concat();
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE2]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[tokio::test]
async fn icc_tagged_images_are_converted_to_srgb() {
    // sRGB's own primaries (D50), and the same with red and blue swapped:
    // in the second, a "red" pixel means sRGB blue.
    let red = [0.4361, 0.2225, 0.0139];
    let green = [0.3851, 0.7169, 0.0971];
    let blue = [0.1431, 0.0606, 0.7141];
    let srgb_like = icc_profile([red, green, blue]);
    let swapped = icc_profile([blue, green, red]);
    let rgb: Vec<u8> = (0..400 * 300).flat_map(|_| [230u8, 20, 20]).collect();
    let plain = jpeg_from_rgb(400, 300, &rgb);

    let process = start(&[]);
    let mut client = client(&process).await;
    let centre = |bytes: &[u8]| {
        let image = image::load_from_memory(bytes).unwrap().to_rgb8();
        mean_rgb(&image, 100, 75, 16)
    };
    let (_, untagged) = optimize(&mut client, OptimizeOptions::default(), &plain)
        .await
        .unwrap();
    let (_, tagged_srgb) = optimize(
        &mut client,
        OptimizeOptions::default(),
        &with_icc(&plain, &srgb_like),
    )
    .await
    .unwrap();
    let (_, tagged_swapped) = optimize(
        &mut client,
        OptimizeOptions::default(),
        &with_icc(&plain, &swapped),
    )
    .await
    .unwrap();
    let (untagged, tagged_srgb, tagged_swapped) =
        (centre(&untagged), centre(&tagged_srgb), centre(&tagged_swapped));
    assert!(
        close(untagged, tagged_srgb, 6.0),
        "{untagged:?} vs {tagged_srgb:?}"
    );
    assert!(
        tagged_swapped[2] > 180.0 && tagged_swapped[0] < 80.0,
        "red in the swapped profile is sRGB blue: {tagged_swapped:?}"
    );
}

#[tokio::test]
async fn tiled_marks_faint_marks_and_the_fast_filter_are_honoured() {
    let process = start(&[]);
    let client = client(&process).await;
    let input = test_image("kleiber_4000x3000.jpg");
    let render = |options: OptimizeOptions| {
        let mut client = client.clone();
        let input = input.clone();
        async move {
            let (header, bytes) = optimize(&mut client, options, &input).await.unwrap();
            assert_eq!((header.width, header.height), (1440, 1080));
            image::load_from_memory(&bytes).unwrap().to_rgb8()
        }
    };
    let single = render(OptimizeOptions::default()).await;
    let tiled = render(OptimizeOptions {
        tiled: true,
        ..Default::default()
    })
    .await;
    let faint = render(OptimizeOptions {
        opacity: 0.1,
        ..Default::default()
    })
    .await;
    let fast = render(OptimizeOptions {
        resize_filter: nws_watermark::pb::ResizeFilter::Fast as i32,
        ..Default::default()
    })
    .await;
    // The top-left quarter: untouched by a bottom-right mark, marked when tiled.
    let differing = |a: &image::RgbImage, b: &image::RgbImage, x0: u32, y0: u32| {
        (y0..y0 + 270)
            .flat_map(|y| (x0..x0 + 360).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let (p, q) = (a.get_pixel(x, y).0, b.get_pixel(x, y).0);
                (0..3).any(|c| p[c].abs_diff(q[c]) > 40)
            })
            .count()
    };
    assert!(differing(&single, &tiled, 0, 0) > 500, "tiles reach the top-left");
    // Bottom-right, where the single mark is: a faint mark changes less.
    let bottom_right = (1440 - 360, 1080 - 270);
    let faint_vs_strong = differing(&single, &faint, bottom_right.0, bottom_right.1);
    assert!(
        faint_vs_strong > 100,
        "the faint mark differs from the default one"
    );
    // Bilinear against Lanczos3: the same picture, a little softer.
    let (mut total, mut count) = (0f64, 0f64);
    for y in 0..540 {
        for x in 0..1440 {
            let (p, q) = (single.get_pixel(x, y).0, fast.get_pixel(x, y).0);
            for c in 0..3 {
                total += f64::from(p[c].abs_diff(q[c]));
                count += 1.0;
            }
        }
    }
    assert!(
        total / count < 6.0,
        "bilinear stays close to Lanczos3: {}",
        total / count
    );
}

/// EXIF with orientation 6, a camera make, and a thumbnail in IFD1.
fn rich_exif() -> Vec<u8> {
    let be16 = |v: u16| v.to_be_bytes();
    let be32 = |v: u32| v.to_be_bytes();
    let entry = |tag: u16, kind: u16, count: u32, value: [u8; 4]| {
        [&be16(tag)[..], &be16(kind), &be32(count), &value].concat()
    };
    // Layout: header (8) | IFD0: 2 entries (2 + 24 + 4) | make (8) | IFD1: 2 entries (2 + 24 + 4) | thumbnail
    let make_at = 8 + 30;
    let ifd1_at = make_at + 8;
    let thumb_at = ifd1_at + 30;
    let thumbnail = b"THUMBNAIL-WITHOUT-WATERMARK";
    let mut tiff = b"MM\0*".to_vec();
    tiff.extend_from_slice(&be32(8));
    tiff.extend_from_slice(&be16(2));
    tiff.extend_from_slice(&entry(0x010F, 2, 7, be32(make_at as u32))); // Make
    tiff.extend_from_slice(&entry(0x0112, 3, 1, [0, 6, 0, 0])); // Orientation 6
    tiff.extend_from_slice(&be32(ifd1_at as u32));
    tiff.extend_from_slice(b"NWSCAM\0\0");
    tiff.extend_from_slice(&be16(2));
    tiff.extend_from_slice(&entry(0x0201, 4, 1, be32(thumb_at as u32)));
    tiff.extend_from_slice(&entry(0x0202, 4, 1, be32(thumbnail.len() as u32)));
    tiff.extend_from_slice(&be32(0));
    tiff.extend_from_slice(thumbnail);
    tiff
}

#[tokio::test]
async fn metadata_is_stripped_unless_kept_and_then_made_safe() {
    let rgb: Vec<u8> = (0..320 * 240).flat_map(|i| [(i % 320) as u8, 100, 150]).collect();
    let plain = jpeg_from_rgb(320, 240, &rgb);
    let exif = [&b"Exif\0\0"[..], &rich_exif()].concat();
    let mut input = plain[..2].to_vec();
    input.extend_from_slice(&[0xFF, 0xE1]);
    input.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
    input.extend_from_slice(&exif);
    input.extend_from_slice(&plain[2..]);

    let process = start(&[]);
    let mut client = client(&process).await;
    let contains = |bytes: &[u8], needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);

    let (header, stripped) = optimize(&mut client, OptimizeOptions::default(), &input)
        .await
        .unwrap();
    assert_eq!((header.width, header.height), (240, 320), "orientation 6 applied");
    assert!(!contains(&stripped, b"Exif\0\0") && !contains(&stripped, b"NWSCAM"));

    let keep = OptimizeOptions {
        keep_metadata: true,
        ..Default::default()
    };
    let (_, kept) = optimize(&mut client, keep.clone(), &input).await.unwrap();
    assert!(
        contains(&kept, b"Exif\0\0") && contains(&kept, b"NWSCAM"),
        "EXIF kept"
    );
    assert!(
        !contains(&kept, b"THUMBNAIL"),
        "the unwatermarked thumbnail is erased"
    );
    let mut decoder = image::codecs::jpeg::JpegDecoder::new(std::io::Cursor::new(&kept)).unwrap();
    use image::ImageDecoder as _;
    assert_eq!(
        decoder.orientation().unwrap(),
        image::metadata::Orientation::NoTransforms,
        "the pixels are upright, so the tag says so"
    );
    assert_eq!(decoded_size(&kept), (240, 320));

    // Other outputs never carry it.
    let (_, png) = optimize(
        &mut client,
        OptimizeOptions {
            format: ImageFormat::Png as i32,
            ..keep
        },
        &input,
    )
    .await
    .unwrap();
    assert!(!contains(&png, b"NWSCAM"));
}

#[tokio::test]
async fn fuzz_regressions_are_refused_cleanly() {
    // Each input the fuzzer found, and what its refusal must say: the check
    // that now stops it before a codec allocates what the bytes claim.
    let cases = [
        ("webp-exif-chunk-claims-4gb.webp", "claims 4278190"),
        ("gif-frame-larger-than-canvas-6gb.gif", "limit"),
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let kept = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .unwrap()
                .path()
                .extension()
                .is_none_or(|e| e != "md")
        })
        .count();
    assert_eq!(kept, cases.len(), "every kept input has a case here");

    let process = start(&[]);
    let mut client = client(&process).await;
    for (file, expected) in cases {
        let input = std::fs::read(dir.join(file)).unwrap();
        let status = optimize(&mut client, OptimizeOptions::default(), &input)
            .await
            .expect_err(file);
        assert_eq!(status.code(), Code::InvalidArgument, "{file}: {status:?}");
        assert!(
            status.message().contains(expected),
            "{file}: {}",
            status.message()
        );
    }
    // The process is still there and still works.
    optimize(
        &mut client,
        OptimizeOptions::default(),
        &test_image("tiny_16x16.jpg"),
    )
    .await
    .expect("still serving");
}

#[tokio::test]
async fn gif_and_webp_inputs_are_read() {
    let rgba = image::RgbaImage::from_fn(300, 200, |x, y| {
        image::Rgba([(x % 256) as u8, (y % 256) as u8, 90, 255])
    });
    let encode = |format| {
        let mut bytes = Vec::new();
        image::DynamicImage::ImageRgba8(rgba.clone())
            .write_to(&mut std::io::Cursor::new(&mut bytes), format)
            .unwrap();
        bytes
    };
    let process = start(&[]);
    let mut client = client(&process).await;
    for (format, source) in [
        (image::ImageFormat::Gif, ImageFormat::Gif),
        (image::ImageFormat::WebP, ImageFormat::Webp),
    ] {
        let (header, bytes) = optimize(&mut client, OptimizeOptions::default(), &encode(format))
            .await
            .unwrap_or_else(|s| panic!("{format:?}: {s:?}"));
        assert_eq!(header.source_format(), source);
        assert_eq!((header.width, header.height), (300, 200));
        assert_eq!(header.format(), ImageFormat::Jpeg, "opaque, so JPEG");
        let output = image::load_from_memory(&bytes).unwrap().to_rgb8();
        let centre = mean_rgb(&output, 60, 50, 8);
        assert!(close(centre, [60.0, 50.0, 90.0], 14.0), "{format:?}: {centre:?}");
    }
}
