//! Bad, hostile and odd input: refused with INVALID_ARGUMENT naming the
//! problem, before any pixel is decoded where the header tells, or decoded
//! when every viewer would show it.

use crate::*;

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
async fn fuzz_regressions_are_refused_cleanly() {
    // Each input the fuzzer found, and what its refusal must say: the check
    // that now stops it before a codec allocates what the bytes claim.
    let keep = OptimizeOptions {
        animated: nws_watermark::pb::Animation::Keep as i32,
        ..Default::default()
    };
    let cases = [
        (
            "webp-exif-chunk-claims-4gb.webp",
            OptimizeOptions::default(),
            "claims 4278190",
        ),
        (
            "gif-frame-larger-than-canvas-6gb.gif",
            OptimizeOptions::default(),
            "limit",
        ),
        (
            "webp-frame-bitstream-larger-than-its-anmf.webp",
            keep.clone(),
            "64×1 in its ANMF header but 64×48 in its bitstream",
        ),
        (
            "webp-frame-bitstream-larger-than-its-anmf.webp",
            OptimizeOptions::default(),
            "64×1 in its ANMF header but 64×48 in its bitstream",
        ),
        (
            "avif-empty-av1-data-dav1d-leaks-40-bytes.avif",
            OptimizeOptions::default(),
            "could not be decoded: libheif",
        ),
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
    let named: std::collections::BTreeSet<&str> = cases.iter().map(|case| case.0).collect();
    assert_eq!(kept, named.len(), "every kept input has a case here");

    let process = start(&[]);
    let mut client = client(&process).await;
    for (file, options, expected) in cases {
        let input = std::fs::read(dir.join(file)).unwrap();
        let status = optimize(&mut client, options, &input).await.expect_err(file);
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

/// `jpeg` with a segment (`marker`, `payload`) inserted right after the
/// first segment whose marker is `after` (SOI, 0xD8, has no length).
fn with_segment_after(jpeg: &[u8], after: u8, marker: u8, payload: &[u8]) -> Vec<u8> {
    let at = jpeg
        .windows(2)
        .position(|w| w == [0xFF, after])
        .expect("the marker is there");
    let end = match after {
        0xD8 => at + 2,
        _ => at + 2 + usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]])),
    };
    let mut out = jpeg[..end].to_vec();
    out.extend_from_slice(&[0xFF, marker]);
    out.extend_from_slice(&u16::try_from(payload.len() + 2).unwrap().to_be_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&jpeg[end..]);
    out
}

#[tokio::test]
async fn jpegs_that_every_viewer_opens_are_decoded() {
    let process = start(&[]);
    let mut client = client(&process).await;
    // Red and blue halves: a wrong decode would show.
    let rgb: Vec<u8> = (0..300)
        .flat_map(|_| (0..400).flat_map(|x| if x < 200 { [230u8, 20, 20] } else { [20, 20, 230] }))
        .collect();
    let clean = jpeg_from_rgb(400, 300, &rgb);
    let (_, expected) = optimize(&mut client, OptimizeOptions::default(), &clean)
        .await
        .unwrap();

    // Junk between two segments ("Corrupt JPEG data: 3 extraneous bytes
    // before marker 0xdb"), and an Adobe APP14 segment with a transform
    // code libjpeg does not know (it assumes YCbCr, which these are).
    let dqt = clean.windows(2).position(|w| w == [0xFF, 0xDB]).unwrap();
    let junk = [&clean[..dqt], &[0x00, 0x13, 0x37][..], &clean[dqt..]].concat();
    let adobe = with_segment_after(&clean, 0xD8, 0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x07");
    for (what, quirky) in [
        ("junk before a marker", &junk),
        ("unknown Adobe transform", &adobe),
    ] {
        let (header, bytes) = optimize(&mut client, OptimizeOptions::default(), quirky)
            .await
            .unwrap_or_else(|status| panic!("{what}: {status:?}"));
        assert_eq!((header.width, header.height), (400, 300), "{what}");
        assert!(bytes == expected, "{what}: the same pixels as the clean file");
        let probe = client
            .probe(ProbeRequest {
                header: quirky.clone().into(),
            })
            .await
            .unwrap_or_else(|status| panic!("{what}: probe {status:?}"))
            .into_inner();
        assert_eq!((probe.width, probe.height), (400, 300), "{what}");
    }
    assert!(
        process.logs().contains("extraneous bytes before marker"),
        "the warning is logged"
    );

    // An ICC profile after the frame header still counts: the same colours
    // as with the profile before it (here, red and blue swapped).
    let red = [0.4361, 0.2225, 0.0139];
    let green = [0.3851, 0.7169, 0.0971];
    let blue = [0.1431, 0.0606, 0.7141];
    let swapped = crate::orientation_colour::icc_profile([blue, green, red]);
    let before = crate::orientation_colour::with_icc(&clean, &swapped);
    let after = with_segment_after(
        &clean,
        0xC0,
        0xE2,
        &[&b"ICC_PROFILE\0\x01\x01"[..], &swapped].concat(),
    );
    let (_, from_before) = optimize(&mut client, OptimizeOptions::default(), &before)
        .await
        .unwrap();
    let (_, from_after) = optimize(&mut client, OptimizeOptions::default(), &after)
        .await
        .unwrap();
    assert!(from_after == from_before, "the profile after SOF is applied");
    assert!(from_after != expected, "and it changes the colours");

    // Still refused: a file cut short.
    let status = optimize(&mut client, OptimizeOptions::default(), &junk[..junk.len() - 200])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("truncated"), "{}", status.message());
}
