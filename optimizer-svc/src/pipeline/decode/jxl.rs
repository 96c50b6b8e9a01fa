//! JPEG XL through jxl-oxide (pure Rust), on the calling thread, with every
//! allocation counted against the codec budget.
//!
//! The header (size, orientation) is parsed before any frame is read; the
//! size jxl-oxide reports is the displayed one, and the frame comes out
//! already turned, so the header's orientation is "no transforms". Colours
//! are rendered in sRGB (moxcms converts images in other spaces); only the
//! first keyframe of an animation is read.

use image::{DynamicImage, GrayAlphaImage, GrayImage, RgbImage, RgbaImage, metadata::Orientation};
use jxl_oxide::{
    AllocTracker, EnumColourEncoding, InitializeResult, JxlImage, JxlThreadPool, RenderingIntent,
};
use nws_watermark::pb::ImageFormat;

use super::{Header, Limits, Pixels, check_limits, codec_budget, truncated};
use crate::OptimizeError;

/// The header, without reading any frame.
pub(super) fn probe(bytes: &[u8]) -> Result<Header, OptimizeError> {
    let (image, _) = open(bytes, None)?;
    header(&image)
}

/// The first keyframe, upright, in 8-bit sRGB; refused before any frame
/// is read when its size is over `limits`.
pub(super) fn decode(bytes: &[u8], limits: &Limits) -> Result<(Header, Pixels), OptimizeError> {
    let budget = usize::try_from(codec_budget(limits)).unwrap_or(usize::MAX);
    let (mut image, consumed) = open(bytes, Some(AllocTracker::with_limit(budget)))?;
    let header = header(&image)?;
    check_limits(&header, limits)?;

    let mut rest = &bytes[consumed..];
    while !rest.is_empty() {
        let fed = image.feed_bytes(rest).map_err(jxl_error)?;
        if fed == 0 {
            break;
        }
        rest = &rest[fed..];
    }
    image.finalize().map_err(jxl_error)?;
    if image.num_loaded_keyframes() == 0 {
        return Err(truncated());
    }
    image.request_color_encoding(EnumColourEncoding::srgb(RenderingIntent::Relative));
    let render = image.render_frame(0).map_err(jxl_error)?;
    let mut stream = render.stream();
    let (width, height, channels) = (stream.width(), stream.height(), stream.channels());
    if (width, height) != (header.width, header.height) {
        return Err(OptimizeError::Corrupt(format!(
            "the frame is {width}×{height}, the header says {}×{}",
            header.width, header.height
        )));
    }
    let mut data = vec![0u8; width as usize * height as usize * channels as usize];
    if stream.write_to_buffer(&mut data) != data.len() {
        return Err(truncated());
    }
    let image = match channels {
        1 => GrayImage::from_raw(width, height, data).map(DynamicImage::ImageLuma8),
        2 => GrayAlphaImage::from_raw(width, height, data).map(DynamicImage::ImageLumaA8),
        3 => RgbImage::from_raw(width, height, data).map(DynamicImage::ImageRgb8),
        4 => RgbaImage::from_raw(width, height, data).map(DynamicImage::ImageRgba8),
        _ => None,
    }
    .ok_or_else(|| OptimizeError::Corrupt(format!("unsupported variant: {channels} channels")))?;
    Ok((header, Pixels::from_image(image)))
}

/// Parses the header from `bytes`; returns the image and how many bytes
/// the parser took (the rest is fed later).
fn open(bytes: &[u8], tracker: Option<AllocTracker>) -> Result<(JxlImage, usize), OptimizeError> {
    if bytes.is_empty() {
        return Err(OptimizeError::Empty);
    }
    let mut builder = JxlImage::builder().pool(JxlThreadPool::none());
    if let Some(tracker) = tracker {
        builder = builder.alloc_tracker(tracker);
    }
    let mut uninit = builder.build_uninit();
    let consumed = uninit.feed_bytes(bytes).map_err(jxl_error)?;
    match uninit.try_init().map_err(jxl_error)? {
        InitializeResult::Initialized(image) => Ok((image, consumed)),
        InitializeResult::NeedMoreData(_) => Err(truncated()),
    }
}

fn header(image: &JxlImage) -> Result<Header, OptimizeError> {
    let (width, height) = (image.width(), image.height());
    if width == 0 || height == 0 {
        return Err(OptimizeError::Corrupt(format!(
            "the header claims a {width}×{height} image"
        )));
    }
    Ok(Header {
        format: ImageFormat::Jxl,
        width,
        height,
        orientation: Orientation::NoTransforms,
    })
}

/// What jxl-oxide fails with: a boxed error of one of its crates.
type JxlError = Box<dyn std::error::Error + Send + Sync>;

fn jxl_error(error: JxlError) -> OptimizeError {
    OptimizeError::Corrupt(format!("JPEG XL: {error}"))
}
