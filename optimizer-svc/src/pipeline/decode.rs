//! Header inspection and pixel decoding, with the limits checked between
//! the two: nothing is decoded for an image that is too large.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageError, ImageReader, metadata::Orientation};
use nws_watermark::{media, pb::ImageFormat};

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
    let (header, _decoder) = open(bytes)?;
    Ok(header)
}

/// Decodes `bytes` into upright pixels, refusing images over `limits`
/// before their pixels are decoded.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<(Header, DynamicImage), OptimizeError> {
    if bytes.len() as u64 > limits.max_input_bytes {
        return Err(OptimizeError::TooManyBytes {
            limit: limits.max_input_bytes,
        });
    }
    let (header, decoder) = open(bytes)?;
    check_limits(&header, limits)?;
    if header.format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // JPEG decoders fill missing scans with grey and call it success.
        return Err(OptimizeError::Corrupt(
            "the data ends early (truncated file)".into(),
        ));
    }
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    image.apply_orientation(header.orientation);
    Ok((header, image))
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

fn open(bytes: &[u8]) -> Result<(Header, impl ImageDecoder + '_), OptimizeError> {
    if bytes.is_empty() {
        return Err(OptimizeError::Empty);
    }
    let format = media::sniff(bytes).ok_or(OptimizeError::UnsupportedFormat)?;
    let codec = match format {
        ImageFormat::Jpeg => image::ImageFormat::Jpeg,
        ImageFormat::Png => image::ImageFormat::Png,
        ImageFormat::Webp => image::ImageFormat::WebP,
        ImageFormat::Gif => image::ImageFormat::Gif,
        ImageFormat::Unspecified => return Err(OptimizeError::UnsupportedFormat),
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), codec);
    // Our own checks run first with clearer messages; these stay as a
    // backstop inside the codecs.
    reader.no_limits();
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
