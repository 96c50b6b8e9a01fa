//! Shrink-on-load at every M/8 scale libjpeg-turbo offers, on the test
//! photos: each decodes at the smallest scale that still covers the output
//! box, and what the resampler then makes of it looks like a full-size
//! decode resampled the same way. A greyscale photo stays one channel
//! until the mark.

use nws_runtime::testing::test_image;
use nws_watermark::pb::{ImageFormat, ResizeFilter};
use optimizer_svc::pipeline::{self, Limits, Options, decode, fit_within, resize};
use tokio_util::sync::CancellationToken;

const LIMITS: Limits = Limits {
    max_input_bytes: 25 << 20,
    max_pixels: 50_000_000,
    max_side: 40_000,
    max_animation_pixels: 100_000_000,
};

/// The 1920×1080 box of the default options.
const BOX: (u32, u32) = (1920, 1080);

#[test]
fn each_photo_decodes_at_the_smallest_eighth_that_covers_the_box() {
    // (photo, decoded size upright, output size): the scale is the first
    // M/8 whose size covers the output in both directions.
    let cases = [
        // 5/8 of 3088×2056 is 1930×1285 (4/8, 1544×1028, is too short).
        ("life_gray_3088x2056.jpg", (1930, 1285), (1622, 1080)),
        // 3/8 of 4000×3000 is 1500×1125.
        ("kleiber_4000x3000.jpg", (1500, 1125), (1440, 1080)),
        // 3/8 of 4224×3168 is 1584×1188.
        ("dragonfly_4224x3168_progressive.jpg", (1584, 1188), (1440, 1080)),
        // Stored 2448×3264, shown 3264×2448: 4/8 (3/8 is 918 wide
        // stored, short of the 1080 the upright output needs).
        ("picos_orient6.jpg", (1632, 1224), (1440, 1080)),
        // Never enlarged: full size.
        ("tiny_16x16.jpg", (16, 16), (16, 16)),
    ];
    for (name, decoded_size, output_size) in cases {
        let (header, pixels) = decode::decode(&test_image(name), &LIMITS, BOX).unwrap();
        let (width, height) = header.display_size();
        let output = fit_within(width, height, BOX.0, BOX.1);
        assert_eq!(output, output_size, "{name}");
        assert_eq!((pixels.width, pixels.height), decoded_size, "{name}");
        // What the resampler is left with is a downscale (or nothing).
        assert!(pixels.width >= output.0 && pixels.height >= output.1, "{name}");
    }
}

/// The DCT's scaled IDCT works block by block; covering the output keeps
/// the last step a Lanczos downscale, so the result stays close to a
/// full-size decode resampled by the same filter.
#[test]
fn shrunk_decodes_resample_like_full_size_ones() {
    for name in ["life_gray_3088x2056.jpg", "kleiber_4000x3000.jpg"] {
        let input = test_image(name);
        let (header, shrunk) = decode::decode(&input, &LIMITS, BOX).unwrap();
        let (_, full) = decode::decode(&input, &LIMITS, (u32::MAX, u32::MAX)).unwrap();
        assert!(shrunk.width < full.width, "{name} was shrunk on load");
        let (width, height) = header.display_size();
        let (width, height) = fit_within(width, height, BOX.0, BOX.1);
        let shrunk = resize::resize(shrunk, width, height, ResizeFilter::Lanczos3).unwrap();
        let full = resize::resize(full, width, height, ResizeFilter::Lanczos3).unwrap();
        let psnr = psnr(&shrunk.data, &full.data);
        // 48 dB (grey photo, 5/8) and 45 dB (12 MP, 3/8) when written;
        // a misread size (shifted rows) falls far below.
        assert!(psnr > 38.0, "{name}: {psnr:.1} dB from a full-size decode");
    }
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let squared: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    let mse = squared / a.len() as f64;
    10.0 * (255f64 * 255.0 / mse.max(1e-9)).log10()
}

#[test]
fn a_greyscale_photo_is_decoded_and_resampled_grey_then_marked_in_colour() {
    let input = test_image("life_gray_3088x2056.jpg");
    let (_, pixels) = decode::decode(&input, &LIMITS, BOX).unwrap();
    assert_eq!(pixels.channels, 1, "one byte a pixel");
    assert_eq!(pixels.data.len(), 1930 * 1285);

    let render = |color: Option<[u8; 4]>| {
        let options = Options {
            format: ImageFormat::Png,
            color,
            ..Options::default()
        };
        let output = pipeline::run(&input, &options, None, &LIMITS, &CancellationToken::new()).unwrap();
        assert_eq!((output.width, output.height), (1622, 1080));
        image::load_from_memory(&output.bytes).unwrap().to_rgb8()
    };
    let grey = |pixel: &image::Rgb<u8>| pixel[0] == pixel[1] && pixel[1] == pixel[2];
    // Widened to RGB before the mark: a grey mark keeps every pixel grey,
    // a red one is drawn red.
    assert!(render(None).pixels().all(grey));
    let red = render(Some([220, 20, 20, 255]));
    assert!(
        red.pixels().any(|p| p[0] > 150 && p[1] < 80),
        "the red mark is red"
    );
    assert!(red.pixels().filter(|p| !grey(p)).count() < red.pixels().count() / 20);
}
