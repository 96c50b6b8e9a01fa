//! The input formats beyond JPEG, PNG, WebP and GIF: each decoded from a
//! real or generated sample to the right picture, our own AVIF output read
//! back, and crafted files refused with a message naming the problem, the
//! oversized ones from their header alone.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat as Codec, RgbImage, RgbaImage};
use nws_runtime::testing::test_image;
use nws_watermark::{
    media,
    pb::{ImageFormat, ResizeFilter},
};
use optimizer_svc::{
    OptimizeError,
    pipeline::{self, Limits, Options, Pixels, decode},
};
use tokio_util::sync::CancellationToken;

const LIMITS: Limits = Limits {
    max_input_bytes: 25 << 20,
    max_pixels: 50_000_000,
    max_side: 40_000,
    max_animation_pixels: 100_000_000,
};

fn sample(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn decode_all(bytes: &[u8]) -> Result<(decode::Header, Pixels), OptimizeError> {
    decode::decode(bytes, &LIMITS, (u32::MAX, u32::MAX))
}

fn rgb(pixels: &Pixels) -> RgbImage {
    assert_eq!(pixels.channels, 3, "an opaque photo decodes to RGB");
    RgbImage::from_raw(pixels.width, pixels.height, pixels.data.clone()).unwrap()
}

/// Mean absolute difference per sample over the centre half of two images
/// of one size (away from the borders, where resamplers differ most).
fn mean_difference(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let (w, h) = a.dimensions();
    let (mut total, mut count) = (0u64, 0u64);
    for y in h / 4..h * 3 / 4 {
        for x in w / 4..w * 3 / 4 {
            for c in 0..3 {
                total += u64::from(a.get_pixel(x, y)[c].abs_diff(b.get_pixel(x, y)[c]));
                count += 1;
            }
        }
    }
    total as f64 / count as f64
}

/// A test photo brought to `width`×`height` by the JPEG path (the
/// reference the other formats' samples were made from).
fn reference(photo: &str, width: u32, height: u32) -> RgbImage {
    let (_, pixels) = decode::decode(&test_image(photo), &LIMITS, (width, height)).unwrap();
    let resized = pipeline::resize::resize(pixels, width, height, ResizeFilter::Lanczos3).unwrap();
    rgb(&resized)
}

#[test]
fn heic_from_a_phone_and_in_ten_bits_decodes_to_the_photo() {
    for (file, photo) in [
        ("phone_640x480.heic", "picos_orient6.jpg"),
        (
            "dragonfly_640x480_10bit.heic",
            "dragonfly_4224x3168_progressive.jpg",
        ),
    ] {
        let bytes = sample(file);
        assert_eq!(media::sniff(&bytes), Some(ImageFormat::Heic), "{file}");
        let (header, pixels) = decode_all(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            (header.format, header.width, header.height),
            (ImageFormat::Heic, 640, 480)
        );
        assert_eq!(pipeline::probe(&bytes).unwrap(), header, "{file}");
        let difference = mean_difference(&rgb(&pixels), &reference(photo, 640, 480));
        // Lossy twice over (HEVC at q40–50, and two resamplers): a wrong
        // turn, channel order or bit depth is 40 and more.
        assert!(difference < 8.0, "{file}: {difference:.1} from the photo");
    }
}

#[test]
fn avif_and_jpeg_xl_samples_decode_upright() {
    let kleiber = reference("kleiber_4000x3000.jpg", 640, 480);

    let jxl = sample("kleiber_640x480.jxl");
    assert_eq!(media::sniff(&jxl), Some(ImageFormat::Jxl));
    let (header, pixels) = decode_all(&jxl).unwrap();
    assert_eq!(
        (header.format, header.width, header.height),
        (ImageFormat::Jxl, 640, 480)
    );
    assert_eq!(pipeline::probe(&jxl).unwrap(), header);
    let difference = mean_difference(&rgb(&pixels), &kleiber);
    assert!(difference < 8.0, "JPEG XL: {difference:.1} from the photo");

    // Stored 640×480 with an `irot` of 90° anticlockwise: shown 480×640.
    let avif = sample("kleiber_640x480_irot90.avif");
    assert_eq!(media::sniff(&avif), Some(ImageFormat::Avif));
    let (header, pixels) = decode_all(&avif).unwrap();
    assert_eq!(
        (header.format, header.width, header.height),
        (ImageFormat::Avif, 480, 640)
    );
    let turned_back = image::imageops::rotate90(&rgb(&pixels));
    let difference = mean_difference(&turned_back, &kleiber);
    assert!(
        difference < 8.0,
        "AVIF turned back: {difference:.1} from the photo"
    );
    let wrong_way = image::imageops::rotate270(&rgb(&pixels));
    assert!(
        mean_difference(&wrong_way, &kleiber) > 20.0,
        "the turn has a direction"
    );
}

/// A gradient with some structure, so a decode that swaps channels, flips
/// rows or loses alpha shows.
fn gradient(width: u32, height: u32) -> RgbaImage {
    RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([
            (x * 255 / width) as u8,
            (y * 255 / height) as u8,
            ((x ^ y) & 0xFF) as u8,
            if x < width / 2 { 255 } else { 96 },
        ])
    })
}

fn encoded(image: &DynamicImage, codec: Codec) -> Vec<u8> {
    let mut out = Vec::new();
    image.write_to(&mut Cursor::new(&mut out), codec).unwrap();
    out
}

#[test]
fn bmp_tiff_and_ico_decode_losslessly() {
    let rgba = gradient(120, 90);
    let opaque = DynamicImage::ImageRgba8(rgba.clone()).to_rgb8();
    let icon = gradient(64, 48);
    let cases = [
        (
            ImageFormat::Bmp,
            encoded(&DynamicImage::ImageRgb8(opaque.clone()), Codec::Bmp),
            3,
        ),
        (
            ImageFormat::Tiff,
            encoded(&DynamicImage::ImageRgb8(opaque.clone()), Codec::Tiff),
            3,
        ),
        (
            ImageFormat::Tiff,
            encoded(&DynamicImage::ImageRgba8(rgba.clone()), Codec::Tiff),
            4,
        ),
        (
            ImageFormat::Ico,
            encoded(&DynamicImage::ImageRgba8(icon.clone()), Codec::Ico),
            4,
        ),
    ];
    for (format, bytes, channels) in cases {
        let what = format!("{format:?} with {channels} channels");
        assert_eq!(media::sniff(&bytes), Some(format), "{what}");
        let (header, pixels) = decode_all(&bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(header.format, format, "{what}");
        assert_eq!(pixels.channels, channels, "{what}");
        let expected = match (format, channels) {
            (ImageFormat::Ico, _) => icon.clone().into_raw(),
            (_, 4) => rgba.clone().into_raw(),
            _ => opaque.clone().into_raw(),
        };
        assert!(pixels.data == expected, "{what}: the pixels written");
    }
}

#[test]
fn our_own_avif_output_is_read_back() {
    let photo = test_image("kleiber_4000x3000.jpg");
    let render = |input: &[u8], format| {
        let options = Options {
            format,
            max_width: 800,
            max_height: 600,
            ..Options::default()
        };
        pipeline::run(input, &options, None, &LIMITS, &CancellationToken::new()).unwrap()
    };
    let avif = render(&photo, ImageFormat::Avif);
    assert_eq!(media::sniff(&avif.bytes), Some(ImageFormat::Avif));
    let png = render(&photo, ImageFormat::Png);

    let again = render(&avif.bytes, ImageFormat::Png);
    assert_eq!(again.source.format, ImageFormat::Avif);
    assert_eq!((again.width, again.height), (800, 600));
    let (_, from_avif) = decode_all(&avif.bytes).unwrap();
    let (_, from_png) = decode_all(&png.bytes).unwrap();
    let difference = mean_difference(&rgb(&from_avif), &rgb(&from_png));
    assert!(difference < 6.0, "our AVIF is {difference:.1} from our PNG");
}

/// `bytes` with the 32-bit big-endian words after the first `name` box
/// header's version and flags replaced by `values`.
fn with_box_words(bytes: &[u8], name: &[u8; 4], values: &[u32]) -> Vec<u8> {
    let at = bytes
        .windows(4)
        .position(|w| w == name)
        .unwrap_or_else(|| panic!("no {} box", String::from_utf8_lossy(name)));
    let mut out = bytes.to_vec();
    for (i, value) in values.iter().enumerate() {
        let word = at + 8 + 4 * i;
        out[word..word + 4].copy_from_slice(&value.to_be_bytes());
    }
    out
}

/// Bits written least significant first, as JPEG XL reads them.
#[derive(Default)]
struct Bits {
    bytes: Vec<u8>,
    used: usize,
}

impl Bits {
    fn put(&mut self, value: u64, count: usize) {
        for i in 0..count {
            if self.used.is_multiple_of(8) {
                self.bytes.push(0);
            }
            let bit = ((value >> i) & 1) as u8;
            *self.bytes.last_mut().unwrap() |= bit << (self.used % 8);
            self.used += 1;
        }
    }
}

/// A bare JPEG XL codestream whose header claims `side`×`side` pixels and
/// nothing else (default metadata), without a frame.
fn jxl_claiming(side: u32) -> Vec<u8> {
    let mut bits = Bits::default();
    bits.put(0x0AFF, 16); // signature
    bits.put(0, 1); // not a multiple of 8
    bits.put(3, 2); // height - 1 in 30 bits
    bits.put(u64::from(side - 1), 30);
    bits.put(0, 3); // no ratio: the width follows
    bits.put(3, 2);
    bits.put(u64::from(side - 1), 30);
    bits.put(1, 1); // all_default metadata
    bits.put(1, 1); // default transform data
    bits.bytes
}

/// A BMP header (BITMAPINFOHEADER, 24 bits) claiming `width`×`height`,
/// with a few bytes of pixels.
fn bmp_claiming(width: i32, height: i32) -> Vec<u8> {
    let mut out = b"BM".to_vec();
    out.extend_from_slice(&(54u32 + 16).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&54u32.to_le_bytes());
    out.extend_from_slice(&40u32.to_le_bytes());
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&height.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&24u16.to_le_bytes());
    out.extend_from_slice(&[0; 24]);
    out.extend_from_slice(&[0x80; 16]);
    out
}

/// A TIFF written by `image`, with its width and height tags made to
/// claim `width`×`height` (as LONG values).
fn tiff_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut out = encoded(&DynamicImage::ImageRgb8(RgbImage::new(8, 8)), Codec::Tiff);
    assert_eq!(&out[..2], b"II");
    let ifd = u32::from_le_bytes(out[4..8].try_into().unwrap()) as usize;
    let entries = u16::from_le_bytes(out[ifd..ifd + 2].try_into().unwrap()) as usize;
    for entry in (0..entries).map(|i| ifd + 2 + 12 * i) {
        let value = match u16::from_le_bytes(out[entry..entry + 2].try_into().unwrap()) {
            256 => width,
            257 => height,
            // One strip for the whole claimed height, as the 8×8 file has
            // one strip: the layout stays consistent, only the size lies.
            278 => height,
            _ => continue,
        };
        out[entry + 2..entry + 4].copy_from_slice(&4u16.to_le_bytes()); // LONG
        out[entry + 8..entry + 12].copy_from_slice(&value.to_le_bytes());
    }
    out
}

#[test]
fn oversized_headers_are_refused_before_decoding_naming_the_limit() {
    let limits = Limits {
        max_side: 20_000,
        ..LIMITS
    };
    // Each file's coded pixels are small (or absent): only the header
    // claims the size the refusal names, so the check ran on the header.
    // What the file is, its bytes, the size its header claims, the refusal.
    type Case = (&'static str, Vec<u8>, (u32, u32), &'static str);
    let cases: [Case; 6] = [
        (
            "HEIC whose ispe claims 30000×30000",
            with_box_words(&sample("phone_640x480.heic"), b"ispe", &[30_000, 30_000]),
            (30_000, 30_000),
            "30000×30000 = 900000000 pixels, over the 50000000-pixel limit (NWS_MAX_PIXELS)",
        ),
        (
            "AVIF whose ispe claims 30000×30000",
            with_box_words(&sample("kleiber_640x480_irot90.avif"), b"ispe", &[30_000, 30_000]),
            (30_000, 30_000),
            "900000000 pixels, over the 50000000-pixel limit (NWS_MAX_PIXELS)",
        ),
        (
            "HEIC whose ispe claims a 25000-pixel side",
            with_box_words(&sample("phone_640x480.heic"), b"ispe", &[25_000, 8]),
            (25_000, 8),
            "25000×8, a side over the 20000-pixel limit (NWS_MAX_SIDE)",
        ),
        (
            "JPEG XL claiming 100000×100000",
            jxl_claiming(100_000),
            (100_000, 100_000),
            "100000×100000 = 10000000000 pixels, over the 50000000-pixel limit (NWS_MAX_PIXELS)",
        ),
        (
            "BMP claiming 60000×60000",
            bmp_claiming(60_000, 60_000),
            (60_000, 60_000),
            "over the 50000000-pixel limit (NWS_MAX_PIXELS)",
        ),
        (
            "TIFF claiming 60000×60000",
            tiff_claiming(60_000, 60_000),
            (60_000, 60_000),
            "over the 50000000-pixel limit (NWS_MAX_PIXELS)",
        ),
    ];
    for (what, bytes, claimed, expected) in cases {
        let error = decode::decode(&bytes, &limits, (1920, 1080)).expect_err(what);
        assert!(
            matches!(
                error,
                OptimizeError::TooManyPixels { .. } | OptimizeError::SideTooLong { .. }
            ),
            "{what}: {error}"
        );
        assert!(error.to_string().contains(expected), "{what}: {error}");
        // Probing describes the claim without refusing it.
        let header = pipeline::probe(&bytes).unwrap_or_else(|e| panic!("{what}: probe {e}"));
        assert_eq!((header.width, header.height), claimed, "{what}");
    }

    // Past libheif's own ceiling, libheif refuses it while parsing, and says so.
    let wide = with_box_words(&sample("phone_640x480.heic"), b"ispe", &[45_000, 8]);
    let error = decode_all(&wide).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("exceeds the maximum image size 32768x32768"),
        "{error}"
    );
}

#[test]
fn truncated_and_damaged_files_are_refused_as_undecodable() {
    let icon = encoded(&DynamicImage::ImageRgba8(gradient(64, 48)), Codec::Ico);
    let tiff = encoded(&DynamicImage::ImageRgb8(RgbImage::new(120, 90)), Codec::Tiff);
    let bmp = encoded(&DynamicImage::ImageRgb8(RgbImage::new(120, 90)), Codec::Bmp);
    let whole = [
        ("HEIC", sample("phone_640x480.heic")),
        ("10-bit HEIC", sample("dragonfly_640x480_10bit.heic")),
        ("AVIF", sample("kleiber_640x480_irot90.avif")),
        ("JPEG XL", sample("kleiber_640x480.jxl")),
        ("ICO", icon),
        ("TIFF", tiff),
        ("BMP", bmp),
    ];
    for (what, bytes) in whole {
        for cut in [bytes.len() / 2, 40] {
            let error = decode_all(&bytes[..cut]).expect_err(what);
            assert!(
                matches!(error, OptimizeError::Corrupt(_)),
                "{what} cut at {cut}: {error}"
            );
            assert!(
                error.to_string().starts_with("the image could not be decoded"),
                "{what} cut at {cut}: {error}"
            );
        }
    }
    // Sniffed as HEIC, but nothing after the ftyp box.
    let error = decode_all(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic").unwrap_err();
    assert!(matches!(error, OptimizeError::Corrupt(_)), "{error}");
}

/// Not a check: the decode time of each input format for one 640×480 photo,
/// median of 50, against the JPEG path in the same run. Run with
/// `cargo test -p optimizer-svc --test formats -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
fn decode_times_per_format() {
    let kleiber = reference("kleiber_4000x3000.jpg", 640, 480);
    let photo = DynamicImage::ImageRgb8(kleiber);
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&photo)
        .unwrap();
    let inputs = [
        ("JPEG q90 (libjpeg-turbo)", jpeg),
        ("AVIF (libheif + dav1d)", sample("kleiber_640x480_irot90.avif")),
        ("HEIC 8-bit (libheif + libde265)", sample("phone_640x480.heic")),
        (
            "HEIC 10-bit (libheif + libde265)",
            sample("dragonfly_640x480_10bit.heic"),
        ),
        ("JPEG XL (jxl-oxide)", sample("kleiber_640x480.jxl")),
        ("BMP (image)", encoded(&photo, Codec::Bmp)),
        ("TIFF (image)", encoded(&photo, Codec::Tiff)),
    ];
    let median = |input: &[u8]| {
        let mut times: Vec<_> = (0..50)
            .map(|_| {
                let started = std::time::Instant::now();
                decode::decode(input, &LIMITS, (640, 480)).unwrap();
                started.elapsed()
            })
            .collect();
        times.sort();
        times[times.len() / 2]
    };
    let jpeg_time = median(&inputs[0].1);
    println!("| input (640×480) | bytes | median decode | × JPEG |\n|---|---:|---:|---:|");
    for (name, input) in &inputs {
        let time = median(input);
        println!(
            "| {name} | {} | {:.2} ms | {:.1} |",
            input.len(),
            time.as_secs_f64() * 1e3,
            time.as_secs_f64() / jpeg_time.as_secs_f64()
        );
    }
}
