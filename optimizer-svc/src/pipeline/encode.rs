//! Encoding the result. Encoders write no metadata, so EXIF (GPS included)
//! never reaches the output; the same pixels and options always give the
//! same bytes. JPEG is libjpeg-turbo's (SIMD; 4:2:0 chroma, as libvips and
//! browsers' own encoders use below quality 90, 4:4:4 from 90 up).

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

/// rav1e's speed (0 slowest … 10 fastest). AV1 is slow to encode in any
/// case (about a second for a 1440×1080 photo on one core at 10, 2.5 s at
/// 8); the fastest setting keeps most of its compression.
const AVIF_SPEED: u8 = 10;

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
            let encoded = encoder
                .encode_simple(false, f32::from(quality))
                .map_err(|e| anyhow::anyhow!("libwebp: {e:?}"))?;
            out = encoded.to_vec();
        }
        // One thread: the worker pool already gives each image one core,
        // and the output stays the same from run to run.
        ImageFormat::Avif => AvifEncoder::new_with_speed_quality(&mut out, AVIF_SPEED, quality)
            .with_num_threads(Some(1))
            .write_image(&pixels.data, pixels.width, pixels.height, color)?,
        ImageFormat::Gif | ImageFormat::Unspecified => {
            anyhow::bail!("no encoder for {format:?}: options validation should have refused it")
        }
    }
    Ok(out)
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
