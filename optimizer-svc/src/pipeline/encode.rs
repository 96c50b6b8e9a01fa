//! Encoding the result. Encoders write no metadata, so EXIF (GPS included)
//! never reaches the output; the same pixels and options always give the
//! same bytes. JPEG is libjpeg-turbo's (SIMD; 4:2:0 chroma, as libvips and
//! browsers' own encoders use below quality 90, 4:4:4 from 90 up); AVIF
//! follows the same chroma rule.
//!
//! Every encoder runs on one thread: the worker pool already gives each
//! image one core, and the output stays the same from run to run.

use image::{
    ExtendedColorType, ImageEncoder as _,
    codecs::{
        avif::AvifEncoder,
        png::{CompressionType, FilterType, PngEncoder},
    },
};
use nws_watermark::{options::preferred_by_accept, pb::ImageFormat};
use turbojpeg::{Compressor, PixelFormat, Subsamp};

use super::Pixels;

/// libaom's speed through libavif (0 slowest … 10 fastest). At 10 a
/// 1440×1080 photo takes 55–75 ms on one core, where rav1e at its fastest
/// took 0.35–1.5 s; at quality 85 its SSIM (0.986) is above rav1e's
/// (0.982) and JPEG's (0.985), in 57% of JPEG's bytes (BENCHMARKS.md).
/// Speed 8 gains no quality worth three times the time.
const AVIF_SPEED: u8 = 10;

/// rav1e's speed, for what libavif does not take: images with transparency
/// (the safe libavif binding has no way to hand over an alpha plane), and
/// outputs past AV1 level 6 (8192×4352), which libavif refuses with the
/// libaom 3.6.0 we link because of a bug that version has with them.
const RAV1E_SPEED: u8 = 10;

/// libwebp's effort (0 fastest … 6 slowest). Its default, 4, spends about
/// 120 ms on a 1440×1080 photo; 2 about 45 ms, for an SSIM 0.002 lower and
/// 4% more bytes at quality 85. Below 2 the files grow by a quarter.
const WEBP_METHOD: i32 = 2;

/// The output format when the caller left it to us: the most compact one
/// its Accept values name (AVIF, then WebP); otherwise PNG to keep
/// transparency, JPEG for everything else.
pub fn resolve_format(requested: ImageFormat, accept: &[String], pixels: &Pixels) -> ImageFormat {
    if requested != ImageFormat::Unspecified {
        return requested;
    }
    if let Some(format) = preferred_by_accept(accept) {
        format
    } else if pixels.channels == 4 {
        ImageFormat::Png
    } else {
        ImageFormat::Jpeg
    }
}

pub fn encode(
    pixels: &Pixels,
    format: ImageFormat,
    quality: u8,
    progressive: bool,
) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(pixels.data.len() / 8);
    let color = if pixels.channels == 4 {
        ExtendedColorType::Rgba8
    } else {
        ExtendedColorType::Rgb8
    };
    match format {
        ImageFormat::Jpeg => {
            let flattened;
            let rgb = if pixels.channels == 4 {
                flattened = flatten_on_white(&pixels.data);
                &flattened
            } else {
                &pixels.data
            };
            let mut compressor = Compressor::new()?;
            compressor.set_quality(i32::from(quality))?;
            compressor.set_subsamp(if quality >= 90 {
                Subsamp::None
            } else {
                Subsamp::Sub2x2
            })?;
            compressor.set_progressive(progressive)?;
            out = compressor.compress_to_vec(turbojpeg::Image {
                pixels: rgb.as_slice(),
                width: pixels.width as usize,
                pitch: pixels.width as usize * 3,
                height: pixels.height as usize,
                format: PixelFormat::RGB,
            })?;
        }
        ImageFormat::Png => PngEncoder::new_with_quality(
            &mut out,
            CompressionType::Fast,
            FilterType::Adaptive,
        )
        .write_image(&pixels.data, pixels.width, pixels.height, color)?,
        ImageFormat::Webp => {
            let encoder = if pixels.channels == 4 {
                webp::Encoder::from_rgba(&pixels.data, pixels.width, pixels.height)
            } else {
                webp::Encoder::from_rgb(&pixels.data, pixels.width, pixels.height)
            };
            let mut config =
                webp::WebPConfig::new().map_err(|()| anyhow::anyhow!("libwebp: no default configuration"))?;
            config.quality = f32::from(quality);
            config.method = WEBP_METHOD;
            let encoded = encoder
                .encode_advanced(&config)
                .map_err(|e| anyhow::anyhow!("libwebp: {e:?}"))?;
            out = encoded.to_vec();
        }
        ImageFormat::Avif => match (pixels.channels == 3).then(|| encode_avif(pixels, quality)) {
            Some(Ok(encoded)) => out = encoded,
            not_by_libavif => {
                if let Some(Err(e)) = not_by_libavif {
                    tracing::debug!(error = %e, "libavif refused the image; rav1e encodes it");
                }
                AvifEncoder::new_with_speed_quality(&mut out, RAV1E_SPEED, quality)
                    .with_num_threads(Some(1))
                    .write_image(&pixels.data, pixels.width, pixels.height, color)?
            }
        },
        ImageFormat::Gif
        | ImageFormat::Heic
        | ImageFormat::Bmp
        | ImageFormat::Tiff
        | ImageFormat::Ico
        | ImageFormat::Jxl
        | ImageFormat::Unspecified => {
            anyhow::bail!("no encoder for {format:?}: options validation should have refused it")
        }
    }
    Ok(out)
}

/// An animated WebP, written frame by frame with the stills' settings
/// (quality, libwebp's effort); `loop_count` 0 plays forever.
pub fn animated_webp(
    width: u32,
    height: u32,
    quality: u8,
    loop_count: u16,
) -> anyhow::Result<nws_webp::AnimEncoder> {
    let settings = nws_webp::Settings {
        quality: f32::from(quality),
        method: WEBP_METHOD,
        loop_count,
    };
    Ok(nws_webp::AnimEncoder::new(width, height, &settings)?)
}

/// Opaque pixels as AVIF through libavif and libaom.
fn encode_avif(pixels: &Pixels, quality: u8) -> anyhow::Result<Vec<u8>> {
    let rgb = libavif::RgbPixels::new(pixels.width, pixels.height, &pixels.data)?;
    let yuv = rgb.to_image(if quality >= 90 {
        libavif::YuvFormat::Yuv444
    } else {
        libavif::YuvFormat::Yuv420
    });
    let mut encoder = libavif::Encoder::new();
    encoder
        .set_speed(AVIF_SPEED)
        .set_quality(quality)
        .set_max_threads(1);
    Ok(encoder.encode(&yuv)?.to_vec())
}

/// JPEG has no alpha: composite over white, as browsers show transparency.
fn flatten_on_white(rgba: &[u8]) -> Vec<u8> {
    rgba.chunks_exact(4)
        .flat_map(|p| {
            let a = u16::from(p[3]);
            let over = |c: u8| ((u16::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
            [over(p[0]), over(p[1]), over(p[2])]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixels(channels: u8) -> Pixels {
        Pixels {
            width: 1,
            height: 1,
            channels,
            data: vec![0; usize::from(channels)],
        }
    }

    #[test]
    fn accept_picks_avif_then_webp_then_jpeg_or_png() {
        let chrome = ["image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8".to_owned()];
        let older = ["image/webp,*/*".to_owned()];
        let refuses_avif = ["image/avif;q=0, image/webp;q=0.5".to_owned()];
        let anything = ["*/*".to_owned()];
        let rgb = pixels(3);
        let rgba = pixels(4);
        assert_eq!(
            resolve_format(ImageFormat::Unspecified, &chrome, &rgb),
            ImageFormat::Avif
        );
        assert_eq!(
            resolve_format(ImageFormat::Unspecified, &older, &rgb),
            ImageFormat::Webp
        );
        assert_eq!(
            resolve_format(ImageFormat::Unspecified, &refuses_avif, &rgb),
            ImageFormat::Webp
        );
        assert_eq!(
            resolve_format(ImageFormat::Unspecified, &anything, &rgb),
            ImageFormat::Jpeg
        );
        assert_eq!(
            resolve_format(ImageFormat::Unspecified, &anything, &rgba),
            ImageFormat::Png
        );
        assert_eq!(
            resolve_format(ImageFormat::Unspecified, &[], &rgb),
            ImageFormat::Jpeg
        );
        assert_eq!(resolve_format(ImageFormat::Png, &chrome, &rgb), ImageFormat::Png);
    }

    /// A vertical ramp: each row's value is its own, so a wrong row stride
    /// shows.
    fn ramp(width: u32, height: u32, channels: u8) -> Pixels {
        let data = (0..height)
            .flat_map(|y| {
                (0..width * u32::from(channels)).map(move |i| {
                    if channels == 4 && i % 4 == 3 {
                        255
                    } else {
                        (y * 255 / (height - 1)) as u8
                    }
                })
            })
            .collect();
        Pixels {
            width,
            height,
            channels,
            data,
        }
    }

    #[test]
    fn each_format_encodes_the_pixels_at_their_size() {
        for channels in [3, 4] {
            let pixels = ramp(24, 16, channels);
            for format in [
                ImageFormat::Jpeg,
                ImageFormat::Png,
                ImageFormat::Webp,
                ImageFormat::Avif,
            ] {
                let encoded = encode(&pixels, format, 90, false).unwrap();
                assert_eq!(nws_watermark::media::sniff(&encoded), Some(format), "{channels}");
                if format == ImageFormat::Avif {
                    // No AVIF decoder here: its size is in the `ispe` box
                    // (version and flags, then width and height).
                    let at = encoded.windows(4).position(|w| w == b"ispe").unwrap() + 8;
                    let side = |at: usize| u32::from_be_bytes(encoded[at..at + 4].try_into().unwrap());
                    assert_eq!((side(at), side(at + 4)), (24, 16), "{channels}");
                    continue;
                }
                let decoded = image::load_from_memory(&encoded).unwrap().to_rgb8();
                assert_eq!(decoded.dimensions(), (24, 16), "{format:?} {channels}");
                // Rows keep their own values: top dark, bottom light.
                for (y, expected) in [(0, 0), (8, 136), (15, 255)] {
                    let value = i32::from(decoded.get_pixel(12, y)[0]);
                    assert!(
                        (value - expected).abs() <= 24,
                        "{format:?} {channels}: row {y} is {value}"
                    );
                }
            }
            assert!(encode(&pixels, ImageFormat::Gif, 90, false).is_err());
            assert!(encode(&pixels, ImageFormat::Unspecified, 90, false).is_err());
        }
    }

    /// AVIF decoded again (libavif, with libaom's decoder): the rows keep
    /// their values, and transparency survives (rav1e encodes those).
    #[test]
    fn avif_round_trips_with_its_transparency() {
        for channels in [3, 4] {
            let mut pixels = ramp(48, 32, channels);
            if channels == 4 {
                // The left half transparent.
                for (i, pixel) in pixels.data.chunks_exact_mut(4).enumerate() {
                    if i % 48 < 24 {
                        pixel[3] = 0;
                    }
                }
            }
            let encoded = encode(&pixels, ImageFormat::Avif, 85, false).unwrap();
            let decoded = libavif::decode_rgb(&encoded).unwrap();
            assert_eq!((decoded.width(), decoded.height()), (48, 32), "{channels}");
            for (y, expected) in [(0, 0), (16, 131), (31, 255)] {
                let (value, _, _, alpha) = decoded.pixel(36, y);
                let value = i32::from(value);
                assert!((value - expected).abs() <= 16, "{channels}: row {y} is {value}");
                assert_eq!(alpha, 255, "{channels}: opaque on the right");
            }
            let (_, _, _, left_alpha) = decoded.pixel(4, 16);
            let expected = if channels == 4 { 0 } else { 255 };
            assert!(
                (i32::from(left_alpha) - expected).abs() <= 8,
                "{channels}: alpha {left_alpha} on the left"
            );
        }
    }

    #[test]
    fn avif_subsamples_chroma_below_quality_90_only() {
        let pixels = ramp(32, 32, 3);
        // The AV1 configuration box: after its type, a marker/version
        // byte, profile and level, then a byte whose bits 3 and 2 are the
        // horizontal and vertical chroma subsampling.
        let subsampling = |quality: u8| {
            let avif = encode(&pixels, ImageFormat::Avif, quality, false).unwrap();
            let at = avif.windows(4).position(|w| w == b"av1C").unwrap() + 4;
            (avif[at + 2] >> 2) & 0b11
        };
        assert_eq!(subsampling(89), 0b11, "4:2:0");
        assert_eq!(subsampling(90), 0b00, "4:4:4");
    }

    #[test]
    fn jpeg_subsamples_chroma_below_quality_90_only_and_is_progressive_on_request() {
        let pixels = ramp(32, 32, 3);
        let subsampling = |quality: u8| {
            let jpeg = encode(&pixels, ImageFormat::Jpeg, quality, false).unwrap();
            turbojpeg::read_header(&jpeg).unwrap().subsamp
        };
        assert_eq!(subsampling(89), Subsamp::Sub2x2);
        assert_eq!(subsampling(90), Subsamp::None);
        let baseline = encode(&pixels, ImageFormat::Jpeg, 85, false).unwrap();
        let progressive = encode(&pixels, ImageFormat::Jpeg, 85, true).unwrap();
        // SOF0 is baseline, SOF2 progressive.
        assert!(baseline.windows(2).any(|m| m == [0xFF, 0xC0]));
        assert!(progressive.windows(2).any(|m| m == [0xFF, 0xC2]));
        assert!(!progressive.windows(2).any(|m| m == [0xFF, 0xC0]));
    }

    #[test]
    fn transparency_is_composited_over_white_for_jpeg() {
        let rgba = [
            10, 20, 30, 255, // opaque: unchanged
            10, 20, 30, 0, // transparent: white
            0, 0, 0, 128, // half: halfway to white, rounded
            200, 100, 0, 64,
        ];
        assert_eq!(
            flatten_on_white(&rgba),
            [10, 20, 30, 255, 255, 255, 127, 127, 127, 241, 216, 191]
        );
    }
}
