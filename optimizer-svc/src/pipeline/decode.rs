//! Header inspection and pixel decoding, with the limits checked between
//! the two: nothing is decoded for an image that is too large.
//!
//! JPEGs are decoded by libjpeg-turbo at the smallest of 1/8, 1/4, 1/2 or
//! full scale that still covers the output size (shrink-on-load): the DCT
//! does most of the downscaling for free, and the resampler only finishes
//! the job. Everything else, and CMYK/YCCK JPEGs, go through `image`.
//!
//! An RGB image tagged with an ICC profile other than sRGB is converted to
//! sRGB (moxcms) after decoding, so colours look the same in a browser once
//! the output, which carries no profile, is shown as sRGB.

use std::io::Cursor;

use image::{DynamicImage, ImageBuffer, ImageDecoder, ImageError, ImageReader, Rgb, metadata::Orientation};
use moxcms::{ColorProfile, DataColorSpace, Layout, TransformOptions};
use nws_watermark::{media, pb::ImageFormat};
use turbojpeg::{Colorspace, Decompressor, PixelFormat, ScalingFactor};

use super::{Pixels, fit_within};
use crate::OptimizeError;

/// Ceilings on what an input may be; checked before any pixel is decoded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_input_bytes: u64,
    pub max_pixels: u64,
    pub max_side: u32,
}

/// What an image's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub format: ImageFormat,
    /// Width as stored.
    pub width: u32,
    /// Height as stored.
    pub height: u32,
    pub orientation: Orientation,
}

impl Header {
    /// Dimensions once the EXIF orientation is applied.
    pub fn display_size(&self) -> (u32, u32) {
        match self.orientation {
            Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH => (self.height, self.width),
            _ => (self.width, self.height),
        }
    }
}

/// Reads the header only: format, dimensions and orientation.
pub fn probe(bytes: &[u8]) -> Result<Header, OptimizeError> {
    let (header, _decoder) = open(bytes, image::Limits::default())?;
    Ok(header)
}

/// Decodes `bytes` into upright pixels. When the format can decode smaller
/// for less, the pixels are only as large as needed to cover the image
/// fitted into `max_box`; otherwise they are full size. Images over
/// `limits` are refused before their pixels are decoded.
pub fn decode(bytes: &[u8], limits: &Limits, max_box: (u32, u32)) -> Result<(Header, Pixels), OptimizeError> {
    if bytes.len() as u64 > limits.max_input_bytes {
        return Err(OptimizeError::TooManyBytes {
            limit: limits.max_input_bytes,
        });
    }
    let (header, mut decoder) = open(bytes, codec_limits(limits))?;
    check_limits(&header, limits)?;
    // A damaged profile is not worth refusing the photo for.
    let icc = decoder.icc_profile().ok().flatten();
    if header.format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // JPEG decoders fill missing scans with grey and call it success.
        return Err(OptimizeError::Corrupt(
            "the data ends early (truncated file)".into(),
        ));
    }
    let (display_width, display_height) = header.display_size();
    let covering = fit_within(display_width, display_height, max_box.0, max_box.1);
    let mut pixels = match header.format {
        ImageFormat::Jpeg => decode_jpeg_scaled(bytes, &header, covering)?,
        _ => None,
    };
    if pixels.is_none() {
        let mut image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
        image.apply_orientation(header.orientation);
        pixels = Some(Pixels::from_image(image));
    }
    let mut pixels = pixels.expect("decoded above");
    if let Some(icc) = icc {
        to_srgb(&mut pixels, &icc);
    }
    Ok((header, pixels))
}

/// Converts pixels tagged with an RGB profile to sRGB; profiles that are
/// sRGB already, not RGB (grey, CMYK) or unreadable leave them as they are.
fn to_srgb(pixels: &mut Pixels, icc: &[u8]) {
    let Ok(source) = ColorProfile::new_from_slice(icc) else {
        tracing::debug!("unreadable ICC profile ignored");
        return;
    };
    let srgb = ColorProfile::new_srgb();
    if source.color_space != DataColorSpace::Rgb || same_primaries(&source, &srgb) {
        return;
    }
    let layout = if pixels.channels == 4 {
        Layout::Rgba
    } else {
        Layout::Rgb
    };
    let converted = source
        .create_transform_8bit(layout, &srgb, layout, TransformOptions::default())
        .and_then(|transform| {
            let mut out = vec![0u8; pixels.data.len()];
            transform.transform(&pixels.data, &mut out).map(|()| out)
        });
    match converted {
        Ok(out) => pixels.data = out,
        Err(e) => tracing::debug!(error = %e, "ICC profile not applied"),
    }
}

/// sRGB tags (most cameras and phones write one) need no work.
fn same_primaries(a: &ColorProfile, b: &ColorProfile) -> bool {
    let close = |p: &moxcms::Xyzd, q: &moxcms::Xyzd| {
        (p.x - q.x).abs() < 2e-3 && (p.y - q.y).abs() < 2e-3 && (p.z - q.z).abs() < 2e-3
    };
    close(&a.red_colorant, &b.red_colorant)
        && close(&a.green_colorant, &b.green_colorant)
        && close(&a.blue_colorant, &b.blue_colorant)
}

/// The largest libjpeg-turbo downscale whose result still covers `covering`
/// (upright), or `None` for the colour spaces it cannot turn into RGB.
fn decode_jpeg_scaled(
    bytes: &[u8],
    header: &Header,
    covering: (u32, u32),
) -> Result<Option<Pixels>, OptimizeError> {
    let mut decompressor = Decompressor::new().map_err(turbo_error)?;
    let jpeg = decompressor.read_header(bytes).map_err(turbo_error)?;
    if matches!(jpeg.colorspace, Colorspace::CMYK | Colorspace::YCCK) {
        return Ok(None);
    }
    // Compared in stored orientation: swap the target for rotated images.
    let (cover_w, cover_h) = match header.display_size() == (header.width, header.height) {
        true => covering,
        false => (covering.1, covering.0),
    };
    let factor = [8, 4, 2]
        .into_iter()
        .map(|denom| ScalingFactor::new(1, denom))
        .find(|factor| {
            factor.scale(jpeg.width) >= cover_w as usize && factor.scale(jpeg.height) >= cover_h as usize
        })
        .unwrap_or(ScalingFactor::ONE);
    decompressor.set_scaling_factor(factor).map_err(turbo_error)?;
    let scaled = jpeg.scaled(factor);
    let mut image = turbojpeg::Image {
        pixels: super::buffers::take(scaled.width * scaled.height * 3),
        width: scaled.width,
        pitch: scaled.width * 3,
        height: scaled.height,
        format: PixelFormat::RGB,
    };
    decompressor
        .decompress(bytes, image.as_deref_mut())
        .map_err(turbo_error)?;
    let (width, height) = (scaled.width as u32, scaled.height as u32);
    if header.orientation == Orientation::NoTransforms {
        return Ok(Some(Pixels {
            width,
            height,
            channels: 3,
            data: image.pixels,
        }));
    }
    let buffer = ImageBuffer::<Rgb<u8>, _>::from_raw(width, height, image.pixels)
        .expect("the buffer was sized for these dimensions");
    let mut upright = DynamicImage::ImageRgb8(buffer);
    upright.apply_orientation(header.orientation);
    Ok(Some(Pixels::from_image(upright)))
}

fn turbo_error(error: turbojpeg::Error) -> OptimizeError {
    OptimizeError::Corrupt(error.to_string())
}

fn check_limits(header: &Header, limits: &Limits) -> Result<(), OptimizeError> {
    let (width, height) = (header.width, header.height);
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(OptimizeError::TooManyPixels {
            width,
            height,
            pixels,
            limit: limits.max_pixels,
        });
    }
    if width > limits.max_side || height > limits.max_side {
        return Err(OptimizeError::SideTooLong {
            width,
            height,
            limit: limits.max_side,
        });
    }
    Ok(())
}

/// What the codecs may allocate: a decoded image at the pixel limit in the
/// widest sample layout (RGBA, 16 bits). Our own checks come first with
/// clearer messages; this catches what a header does not tell, such as a
/// GIF frame far larger than its canvas (found by fuzzing).
fn codec_limits(limits: &Limits) -> image::Limits {
    let mut codec = image::Limits::no_limits();
    codec.max_alloc = Some(limits.max_pixels.saturating_mul(8).max(64 << 20));
    codec
}

fn open(
    bytes: &[u8],
    codec_limits: image::Limits,
) -> Result<(Header, impl ImageDecoder + '_), OptimizeError> {
    if bytes.is_empty() {
        return Err(OptimizeError::Empty);
    }
    let format = media::sniff(bytes).ok_or(OptimizeError::UnsupportedFormat)?;
    if format == ImageFormat::Webp {
        check_webp_chunks(bytes)?;
    }
    let codec = match format {
        ImageFormat::Jpeg => image::ImageFormat::Jpeg,
        ImageFormat::Png => image::ImageFormat::Png,
        ImageFormat::Webp => image::ImageFormat::WebP,
        ImageFormat::Gif => image::ImageFormat::Gif,
        ImageFormat::Avif | ImageFormat::Unspecified => return Err(OptimizeError::UnsupportedFormat),
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), codec);
    reader.limits(codec_limits);
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(OptimizeError::Corrupt(format!(
            "the header claims a {width}×{height} image"
        )));
    }
    // A damaged EXIF block is not worth refusing the photo for.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    Ok((
        Header {
            format,
            width,
            height,
            orientation,
        },
        decoder,
    ))
}

/// Every RIFF chunk of a WebP must lie inside the data. The WebP decoder
/// allocates a chunk's declared size before reading it (EXIF, ICC), so a
/// few hundred bytes claiming a 4 GB chunk would otherwise cost 4 GB (found
/// by fuzzing; kept in tests/fuzz-regressions).
fn check_webp_chunks(bytes: &[u8]) -> Result<(), OptimizeError> {
    let mut at = 12; // "RIFF", size, "WEBP"
    while at + 8 <= bytes.len() {
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        let end = (at + 8).saturating_add(size);
        if end > bytes.len() {
            let name = String::from_utf8_lossy(&bytes[at..at + 4]).into_owned();
            return Err(OptimizeError::Corrupt(format!(
                "the WebP chunk {name:?} claims {size} bytes, past the end of the data (truncated or corrupt)"
            )));
        }
        at = end + (size & 1); // chunks are padded to an even length
    }
    Ok(())
}

/// Whether an end-of-image marker follows the first start-of-scan. Inside
/// entropy-coded data every 0xFF is followed by 0x00 or a restart marker,
/// so 0xFF 0xD9 there can only be the real end.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let Some(scan) = bytes.windows(2).position(|w| w == [0xFF, 0xDA]) else {
        return false;
    };
    bytes[scan..].windows(2).any(|w| w == [0xFF, 0xD9])
}

fn decode_error(error: ImageError) -> OptimizeError {
    match error {
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            OptimizeError::Corrupt("the data ends early (truncated file)".into())
        }
        ImageError::Unsupported(e) => OptimizeError::Corrupt(format!("unsupported variant: {e}")),
        ImageError::Limits(e) => OptimizeError::Corrupt(format!("over a decoder limit: {e}")),
        other => OptimizeError::Corrupt(other.to_string()),
    }
}
