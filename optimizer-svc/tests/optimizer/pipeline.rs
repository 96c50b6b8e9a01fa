//! What comes out: every test photo fitted and encoded, formats, boxes,
//! negotiation, determinism, shrink-on-load, every input format.

use crate::*;

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
        // An ISO-BMFF `ftyp` box of any size whose brand is AVIF.
        (ImageFormat::Avif, &b"ftypavif"[..]),
    ] {
        let options = OptimizeOptions {
            format: format as i32,
            max_width: 640,
            max_height: 640,
            ..Default::default()
        };
        let (header, bytes) = optimize(&mut client, options, &input).await.unwrap();
        assert_eq!(header.format(), format);
        let at = if format == ImageFormat::Avif { 4 } else { 0 };
        assert!(
            bytes[at..].starts_with(magic),
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

/// What Pillow (an independent decoder) reads back from a rendered file.
#[derive(Debug)]
struct Decoded {
    format: String,
    width: u32,
    height: u32,
    mode: String,
    psnr: f64,
    alpha_psnr: Option<f64>,
}

/// Decodes `candidate` with Pillow and compares it with the lossless
/// `reference` render.
fn decode_and_compare(reference: &[u8], candidate: &[u8]) -> Decoded {
    let dir = tempfile::tempdir().unwrap();
    let (reference_path, candidate_path) = (dir.path().join("reference"), dir.path().join("candidate"));
    std::fs::write(&reference_path, reference).unwrap();
    std::fs::write(&candidate_path, candidate).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/compare.py");
    let output = std::process::Command::new(nws_runtime::testing::tool("NWS_TEST_PYTHON"))
        .arg(script)
        .args([&reference_path, &candidate_path])
        .output()
        .expect("run the Python decoder");
    assert!(
        output.status.success(),
        "Pillow could not read it: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON report");
    let text = |field: &str| report[field].as_str().expect("a text field").to_owned();
    let number = |field: &str| report[field].as_f64().expect("a number field");
    Decoded {
        format: text("format"),
        width: number("width") as u32,
        height: number("height") as u32,
        mode: text("mode"),
        psnr: number("psnr"),
        alpha_psnr: report["alpha_psnr"].as_f64(),
    }
}

/// Floors, in dB against the lossless render at each format's default
/// quality; measured values are about 3 dB above them (see the test's
/// failure message), so a codec change that visibly damages the picture,
/// or a file other decoders can't read, fails here.
const PSNR_FLOORS: [(ImageFormat, &str, f64); 3] = [
    (ImageFormat::Jpeg, "JPEG", 36.0),
    (ImageFormat::Webp, "WEBP", 36.0),
    (ImageFormat::Avif, "AVIF", 36.0),
];

#[tokio::test]
async fn lossy_outputs_decode_elsewhere_to_the_lossless_render() {
    let process = start(&[]);
    let mut client = client(&process).await;
    for (photo, size, mode) in [
        ("kleiber_4000x3000.jpg", (1440, 1080), "RGB"),
        ("seeding_alpha_2000x1125.png", (1920, 1080), "RGBA"),
    ] {
        let input = test_image(photo);
        let as_format = |format: ImageFormat| OptimizeOptions {
            format: format as i32,
            ..Default::default()
        };
        let (_, reference) = optimize(&mut client, as_format(ImageFormat::Png), &input)
            .await
            .unwrap();
        let lossless = decode_and_compare(&reference, &reference);
        assert_eq!((lossless.format.as_str(), lossless.mode.as_str()), ("PNG", mode));
        for (format, name, floor) in PSNR_FLOORS {
            if format == ImageFormat::Jpeg && mode == "RGBA" {
                continue; // JPEG has no alpha: an RGBA source is never sent as JPEG.
            }
            let (_, bytes) = optimize(&mut client, as_format(format), &input).await.unwrap();
            let decoded = decode_and_compare(&reference, &bytes);
            assert_eq!(decoded.format, name, "{photo}");
            assert_eq!((decoded.width, decoded.height), size, "{photo} as {name}");
            if name != "JPEG" {
                assert_eq!(
                    decoded.mode, mode,
                    "{photo} as {name} keeps its alpha or has none"
                );
            }
            assert!(
                decoded.psnr >= floor,
                "{photo} as {name}: {:.2} dB, floor {floor} dB",
                decoded.psnr
            );
            if mode == "RGBA" {
                let alpha = decoded.alpha_psnr.expect("the alpha compared");
                assert!(
                    alpha >= floor,
                    "{photo} as {name}: alpha at {alpha:.2} dB, floor {floor} dB"
                );
            }
            eprintln!("{photo} as {name}: {decoded:?}, {} bytes", bytes.len());
        }
    }
}
