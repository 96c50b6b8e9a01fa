//! Encoding the result. Encoders write no metadata, so EXIF (GPS included)
//! never reaches the output; the same pixels and options always give the
//! same bytes. JPEG is libjpeg-turbo's (SIMD; 4:2:0 chroma, as libvips and
//! browsers' own encoders use below quality 90, 4:4:4 from 90 up).

use image::{
    ExtendedColorType, ImageEncoder as _,
    codecs::{
        png::{CompressionType, FilterType, PngEncoder},
        webp::WebPEncoder,
    },
};
use nws_watermark::pb::ImageFormat;
use turbojpeg::{Compressor, PixelFormat, Subsamp};

use super::Pixels;

/// The output format when the caller left it to us: PNG keeps transparency,
/// JPEG is smallest for everything else.
pub fn resolve_format(requested: ImageFormat, pixels: &Pixels) -> ImageFormat {
    match requested {
        ImageFormat::Unspecified if pixels.channels == 4 => ImageFormat::Png,
        ImageFormat::Unspecified => ImageFormat::Jpeg,
        other => other,
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
            WebPEncoder::new_lossless(&mut out).encode(&pixels.data, pixels.width, pixels.height, color)?
        }
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
