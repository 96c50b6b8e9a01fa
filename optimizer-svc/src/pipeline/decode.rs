//! Header inspection and pixel decoding, with the limits checked between
//! the two: nothing is decoded for an image that is too large.
//!
//! JPEGs are read and decoded by libjpeg-turbo at the smallest M/8 scale
//! (1/8, 2/8, …, 8/8) that still covers the output size (shrink-on-load):
//! the DCT does most of the downscaling for free, and the resampler only
//! finishes the job. Damage libjpeg decodes through (junk before a marker,
//! an unknown Adobe transform, a corrupt ICC chunk) is logged, not refused,
//! as every viewer shows such files; a truncated file is refused. Everything
//! else, and CMYK/YCCK JPEGs, go through `image`.
//!
//! HEIC and AVIF are read by libheif (`heif`), JPEG XL by jxl-oxide (`jxl`),
//! each with its header checked against the limits before decoding; BMP,
//! TIFF and ICO by `image`, like PNG, WebP and GIF.
//!
//! An RGB image tagged with an ICC profile other than sRGB is converted to
//! sRGB (moxcms) after decoding, so colours look the same in a browser once
//! the output, which carries no profile, is shown as sRGB.

use std::io::Cursor;

use image::{
    DynamicImage, ImageBuffer, ImageDecoder, ImageError, ImageReader, Luma, Rgb, metadata::Orientation,
};
use moxcms::{ColorProfile, DataColorSpace, Layout, TransformOptions};
use nws_jpeg::{Colorspace, Decompressor, Samples, Scale};
use nws_watermark::{media, pb::ImageFormat};

use super::{Pixels, fit_within, metadata};
use crate::OptimizeError;

pub mod animation;
mod heif;
mod jxl;

/// Most scans a progressive JPEG may have: each is a pass over the whole
/// image, so a few hundred bytes of tiny scans could cost minutes of CPU.
/// Real encoders write about ten.
const MAX_PROGRESSIVE_SCANS: u32 = 500;

/// Ceilings on what an input may be; checked before any pixel is decoded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_input_bytes: u64,
    pub max_pixels: u64,
    pub max_side: u32,
    /// Frames × canvas pixels of an animation kept frame by frame.
    pub max_animation_pixels: u64,
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
    match media::sniff(bytes) {
        Some(format @ (ImageFormat::Heic | ImageFormat::Avif)) => return heif::probe(bytes, format),
        Some(ImageFormat::Jxl) => return jxl::probe(bytes),
        _ => {}
    }
    if media::sniff(bytes) == Some(ImageFormat::Jpeg) {
        let mut turbo = turbo(jpeg_limits(&PROBE_LIMITS))?;
        return jpeg_header(&mut turbo, bytes).map(|(header, _)| header);
    }
    let (header, _decoder) = open(bytes, image::Limits::default())?;
    Ok(header)
}

/// What a probe may cost: it reads headers only.
const PROBE_LIMITS: Limits = Limits {
    max_input_bytes: u64::MAX,
    max_pixels: 0,
    max_side: u32::MAX,
    max_animation_pixels: 0,
};

/// Decodes `bytes` into upright pixels. When the format can decode smaller
/// for less, the pixels are only as large as needed to cover the image
/// fitted into `max_box`; otherwise they are full size. Images over
/// `limits` are refused before their pixels are decoded.
pub fn decode(bytes: &[u8], limits: &Limits, max_box: (u32, u32)) -> Result<(Header, Pixels), OptimizeError> {
    check_size(bytes, limits)?;
    if media::sniff(bytes) == Some(ImageFormat::Jpeg)
        && let Some(decoded) = decode_jpeg(bytes, limits, max_box)?
    {
        return Ok(decoded);
    }
    match media::sniff(bytes) {
        Some(format @ (ImageFormat::Heic | ImageFormat::Avif)) => return heif::decode(bytes, format, limits),
        Some(ImageFormat::Jxl) => return jxl::decode(bytes, limits),
        _ => {}
    }
    let (header, mut decoder) = open(bytes, codec_limits(limits))?;
    check_limits(&header, limits)?;
    // A damaged profile is not worth refusing the photo for.
    let icc = decoder.icc_profile().ok().flatten();
    if header.format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(truncated());
    }
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    image.apply_orientation(header.orientation);
    let mut pixels = Pixels::from_image(image);
    if let Some(icc) = icc {
        to_srgb(&mut pixels, &icc);
    }
    Ok((header, pixels))
}

/// A JPEG through libjpeg-turbo, at the smallest M/8 DCT scale whose
/// result still covers the output; `None` for CMYK and YCCK, which libjpeg cannot
/// turn into RGB.
fn decode_jpeg(
    bytes: &[u8],
    limits: &Limits,
    max_box: (u32, u32),
) -> Result<Option<(Header, Pixels)>, OptimizeError> {
    let mut turbo = turbo(jpeg_limits(limits))?;
    let (header, jpeg) = jpeg_header(&mut turbo, bytes)?;
    check_limits(&header, limits)?;
    if !jpeg_is_complete(bytes) {
        // libjpeg fills missing scans with grey and calls it a warning.
        return Err(truncated());
    }
    if !jpeg.colorspace.decodes_to_rgb() {
        return Ok(None);
    }
    let (display_width, display_height) = header.display_size();
    let covering = fit_within(display_width, display_height, max_box.0, max_box.1);
    // Compared in stored orientation: swap the target for rotated images.
    let (cover_w, cover_h) = match header.display_size() == (header.width, header.height) {
        true => covering,
        false => (covering.1, covering.0),
    };
    // Smallest first: the first scale that covers the output is the one
    // that leaves the least to decode and resample. Covering keeps the
    // resampler's step a downscale (or none), where its Lanczos filter,
    // not the DCT's block-wise one, decides the final look.
    let scale = Scale::ALL
        .into_iter()
        .find(|scale| scale.apply(header.width) >= cover_w && scale.apply(header.height) >= cover_h)
        .unwrap_or(Scale::FULL);
    let (width, height) = (scale.apply(header.width), scale.apply(header.height));
    // A greyscale photo stays one channel until it is resized: a third of
    // the bytes to decode into and resample.
    let samples = if jpeg.colorspace == Colorspace::Gray {
        Samples::Gray
    } else {
        Samples::Rgb
    };
    let mut data = super::buffers::take(width as usize * height as usize * samples.bytes_per_pixel());
    let decoded = turbo
        .decode(bytes, scale, samples, &mut data)
        .map_err(|e| OptimizeError::Corrupt(e.0))?;
    log_warning(decoded.warning);
    let sized = "the buffer was sized for these dimensions";
    let mut pixels = match (header.orientation, samples) {
        (Orientation::NoTransforms, _) => Pixels {
            width,
            height,
            channels: samples.bytes_per_pixel() as u8,
            data,
        },
        (orientation, Samples::Gray) => {
            let mut upright = DynamicImage::ImageLuma8(
                ImageBuffer::<Luma<u8>, _>::from_raw(width, height, data).expect(sized),
            );
            upright.apply_orientation(orientation);
            let (width, height) = (upright.width(), upright.height());
            Pixels {
                width,
                height,
                channels: 1,
                data: upright.into_luma8().into_raw(),
            }
        }
        (orientation, Samples::Rgb) => {
            let mut upright = DynamicImage::ImageRgb8(
                ImageBuffer::<Rgb<u8>, _>::from_raw(width, height, data).expect(sized),
            );
            upright.apply_orientation(orientation);
            Pixels::from_image(upright)
        }
    };
    if let Some(icc) = jpeg.icc_profile {
        to_srgb(&mut pixels, &icc);
    }
    Ok(Some((header, pixels)))
}

/// A JPEG's header as libjpeg reads it, with the orientation of its EXIF.
fn jpeg_header(turbo: &mut Decompressor, bytes: &[u8]) -> Result<(Header, nws_jpeg::Header), OptimizeError> {
    let decoded = turbo
        .read_header(bytes)
        .map_err(|e| OptimizeError::Corrupt(e.0))?;
    log_warning(decoded.warning);
    let jpeg = decoded.value;
    if jpeg.width == 0 || jpeg.height == 0 {
        return Err(OptimizeError::Corrupt(format!(
            "the header claims a {}×{} image",
            jpeg.width, jpeg.height
        )));
    }
    let header = Header {
        format: ImageFormat::Jpeg,
        width: jpeg.width,
        height: jpeg.height,
        // A damaged EXIF block is not worth refusing the photo for.
        orientation: metadata::exif_orientation(bytes).unwrap_or(Orientation::NoTransforms),
    };
    Ok((header, jpeg))
}

fn turbo(limits: nws_jpeg::Limits) -> Result<Decompressor, OptimizeError> {
    Decompressor::new(limits)
        .map_err(|e| OptimizeError::Internal(anyhow::Error::new(e).context("libjpeg-turbo")))
}

/// libjpeg's own ceilings: its buffers (a progressive image's coefficients)
/// within the budget every codec gets, and a bounded number of scans.
fn jpeg_limits(limits: &Limits) -> nws_jpeg::Limits {
    nws_jpeg::Limits {
        max_memory_mib: u32::try_from(codec_budget(limits) >> 20).unwrap_or(u32::MAX),
        max_scans: MAX_PROGRESSIVE_SCANS,
    }
}

/// Damage libjpeg decoded through: the image is served, the log says why
/// it may look odd.
fn log_warning(warning: Option<String>) {
    if let Some(warning) = warning {
        tracing::info!(%warning, "JPEG decoded despite damage libjpeg warned about");
    }
}

fn truncated() -> OptimizeError {
    OptimizeError::Corrupt("the data ends early (truncated file)".into())
}

/// Converts pixels tagged with an RGB profile to sRGB; profiles that are
/// sRGB already, not RGB (grey, CMYK) or unreadable leave them as they are.
fn to_srgb(pixels: &mut Pixels, icc: &[u8]) {
    if pixels.channels == 1 {
        // Grey samples: an RGB profile does not describe them.
        return;
    }
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
    let transform = match source.create_transform_8bit(layout, &srgb, layout, TransformOptions::default()) {
        Ok(transform) => transform,
        Err(e) => {
            tracing::debug!(error = %e, "ICC profile not applied");
            return;
        }
    };
    // The transform cannot write over its input: strip by strip through a
    // small buffer, rather than into a second image as large as the first.
    let strip = ICC_STRIP_BYTES / usize::from(pixels.channels) * usize::from(pixels.channels);
    let mut converted = vec![0u8; strip.min(pixels.data.len())];
    for part in pixels.data.chunks_mut(strip) {
        let out = &mut converted[..part.len()];
        // Its only failures are lengths that are not whole pixels, the same
        // for every strip: the first fails before any pixel changed.
        if let Err(e) = transform.transform(part, out) {
            tracing::debug!(error = %e, "ICC profile not applied");
            return;
        }
        part.copy_from_slice(out);
    }
}

/// Bytes converted to sRGB at a time (whole pixels of it).
const ICC_STRIP_BYTES: usize = 1 << 20;

/// sRGB tags (most cameras and phones write one) need no work.
fn same_primaries(a: &ColorProfile, b: &ColorProfile) -> bool {
    let close = |p: &moxcms::Xyzd, q: &moxcms::Xyzd| {
        (p.x - q.x).abs() < 2e-3 && (p.y - q.y).abs() < 2e-3 && (p.z - q.z).abs() < 2e-3
    };
    close(&a.red_colorant, &b.red_colorant)
        && close(&a.green_colorant, &b.green_colorant)
        && close(&a.blue_colorant, &b.blue_colorant)
}

fn check_size(bytes: &[u8], limits: &Limits) -> Result<(), OptimizeError> {
    if bytes.len() as u64 > limits.max_input_bytes {
        return Err(OptimizeError::TooManyBytes {
            limit: limits.max_input_bytes,
        });
    }
    Ok(())
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
    codec.max_alloc = Some(codec_budget(limits));
    codec
}

/// Bytes a codec may allocate under `limits`.
fn codec_budget(limits: &Limits) -> u64 {
    limits.max_pixels.saturating_mul(8).max(64 << 20)
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
        ImageFormat::Bmp => image::ImageFormat::Bmp,
        ImageFormat::Tiff => image::ImageFormat::Tiff,
        ImageFormat::Ico => image::ImageFormat::Ico,
        // Read by libheif and jxl-oxide before `open` is reached.
        ImageFormat::Avif | ImageFormat::Heic | ImageFormat::Jxl | ImageFormat::Unspecified => {
            return Err(OptimizeError::UnsupportedFormat);
        }
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
    for chunk in webp_chunks(bytes) {
        let (name, payload) = chunk?;
        if &name == b"ANMF" {
            check_animation_frame(payload)?;
        }
    }
    Ok(())
}

/// An animation frame's bitstream must have the size its ANMF header
/// gives. The WebP decoder checks that for frames without alpha only; a
/// frame with an ALPH chunk and a larger bitstream made it index past its
/// alpha buffer and panic (found by fuzzing; kept in
/// tests/fuzz-regressions).
fn check_animation_frame(anmf: &[u8]) -> Result<(), OptimizeError> {
    let u24 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], 0]);
    let u16_at = |b: &[u8], at: usize| u32::from(u16::from_le_bytes([b[at], b[at + 1]]));
    // Position (6 bytes), width - 1 and height - 1 (3 each), duration and
    // flags (4), then the frame's own chunks.
    if anmf.len() < 16 {
        return Err(OptimizeError::Corrupt(format!(
            "a WebP animation frame (ANMF) of {} bytes, shorter than its 16-byte header",
            anmf.len()
        )));
    }
    let declared = (u24(&anmf[6..9]) + 1, u24(&anmf[9..12]) + 1);
    let mut at = 16;
    while at + 8 <= anmf.len() {
        let size = u32::from_le_bytes(anmf[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        let data = &anmf[at + 8..(at + 8).saturating_add(size).min(anmf.len())];
        // A lossy keyframe's size follows its tag and start code; a
        // lossless one's its signature byte (14 bits each, minus one).
        let coded = match &anmf[at..at + 4] {
            b"VP8 " if data.len() >= 10 => Some((u16_at(data, 6) & 0x3FFF, u16_at(data, 8) & 0x3FFF)),
            b"VP8L" if data.len() >= 5 => {
                let bits = u32::from_le_bytes(data[1..5].try_into().expect("4 bytes"));
                Some(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
            }
            _ => None,
        };
        if let Some(coded) = coded {
            if coded != declared {
                return Err(OptimizeError::Corrupt(format!(
                    "a WebP animation frame is {}×{} in its ANMF header but {}×{} in its bitstream",
                    declared.0, declared.1, coded.0, coded.1
                )));
            }
            return Ok(());
        }
        at = (at + 8).saturating_add(size).saturating_add(size & 1);
    }
    Ok(())
}

/// A WebP's RIFF chunks, name and payload, after the file header; an error
/// (and nothing after it) for a chunk that claims more bytes than follow.
fn webp_chunks(bytes: &[u8]) -> impl Iterator<Item = Result<([u8; 4], &[u8]), OptimizeError>> {
    let mut at = 12; // "RIFF", size, "WEBP"
    std::iter::from_fn(move || {
        if at + 8 > bytes.len() {
            return None;
        }
        let name: [u8; 4] = bytes[at..at + 4].try_into().expect("4 bytes");
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        let start = at + 8;
        let end = start.saturating_add(size);
        if end > bytes.len() {
            at = bytes.len(); // nothing after the damage
            return Some(Err(OptimizeError::Corrupt(format!(
                "the WebP chunk {:?} claims {size} bytes, past the end of the data (truncated or corrupt)",
                String::from_utf8_lossy(&name)
            ))));
        }
        at = end + (size & 1); // chunks are padded to an even length
        Some(Ok((name, &bytes[start..end])))
    })
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

#[cfg(test)]
mod to_srgb_tests {
    use super::*;

    /// Display P3's primaries (D50-adapted, as an ICC profile stores them).
    fn display_p3() -> Vec<u8> {
        ColorProfile::new_display_p3()
            .encode()
            .expect("moxcms encodes its own profiles")
    }

    #[test]
    fn converts_every_strip_as_one_whole_transform_would() {
        for channels in [3u8, 4] {
            // Over two strips, with a pattern that differs from pixel to pixel.
            let (width, height) = (1000u32, 700u32);
            let data: Vec<u8> = (0..width as usize * height as usize * usize::from(channels))
                .map(|i| (i * 7 % 251) as u8)
                .collect();
            assert!(data.len() > 2 * ICC_STRIP_BYTES);
            let layout = if channels == 4 { Layout::Rgba } else { Layout::Rgb };
            let icc = display_p3();
            let whole = {
                let transform = ColorProfile::new_from_slice(&icc)
                    .unwrap()
                    .create_transform_8bit(
                        layout,
                        &ColorProfile::new_srgb(),
                        layout,
                        TransformOptions::default(),
                    )
                    .unwrap();
                let mut out = vec![0; data.len()];
                transform.transform(&data, &mut out).unwrap();
                out
            };
            assert_ne!(whole, data, "P3 to sRGB changes colours");
            let mut pixels = Pixels {
                width,
                height,
                channels,
                data,
            };
            to_srgb(&mut pixels, &icc);
            assert!(
                pixels.data == whole,
                "{channels} channels: strips differ from one transform"
            );
        }
    }

    #[test]
    fn srgb_grey_and_unreadable_profiles_leave_pixels_alone() {
        let data: Vec<u8> = (0..300 * 3).map(|i| (i % 256) as u8).collect();
        let srgb = ColorProfile::new_srgb().encode().unwrap();
        let grey = ColorProfile::new_gray_with_gamma(2.2).encode().unwrap();
        for icc in [&srgb[..], &grey[..], b"not a profile"] {
            let mut pixels = Pixels {
                width: 300,
                height: 1,
                channels: 3,
                data: data.clone(),
            };
            to_srgb(&mut pixels, icc);
            assert!(pixels.data == data);
        }
    }
}
