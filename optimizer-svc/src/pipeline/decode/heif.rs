//! HEIC and AVIF through libheif (the system's: libde265 decodes HEVC,
//! dav1d AV1), the reader phones' photos and our own AVIF output share.
//!
//! libheif applies the container's transforms (`irot`, `imir`, `clap`) as
//! it decodes, and reports the size after them, so the header describes the
//! image as displayed and its orientation is always "no transforms". An
//! EXIF orientation inside the file is ignored, as the HEIF specification
//! asks and as libheif-based viewers do: phones write the same rotation in
//! both places, and applying both would turn the photo twice. Images of 10
//! or 12 bits are decoded to 8, and an ICC profile (an iPhone's Display P3)
//! is converted to sRGB like any other input's.
//!
//! libheif refuses by itself, at parse time, an image with a side over
//! 32768 pixels ("Security limit exceeded").
//!
//! libheif allocates with the C++ allocator, outside our codec budget: the
//! pixel limits are checked on the `ispe` size before anything is decoded,
//! and libheif's own checks refuse a coded stream whose size disagrees.

use image::{DynamicImage, ImageBuffer, Rgba, metadata::Orientation};
use libheif_rs::{
    ColorProfile as _, ColorSpace, HeifContext, HeifError, HeifErrorSubCode, ImageHandle, LibHeif, RgbChroma,
    color_profile_types,
};
use nws_watermark::pb::ImageFormat;

use super::{Header, Limits, Pixels, check_limits, to_srgb, truncated};
use crate::OptimizeError;

/// The primary image's header, without decoding it.
pub(super) fn probe(bytes: &[u8], format: ImageFormat) -> Result<Header, OptimizeError> {
    let context = HeifContext::read_from_bytes(bytes).map_err(heif_error)?;
    let handle = context.primary_image_handle().map_err(heif_error)?;
    header(&handle, format)
}

/// The primary image, upright, in 8-bit sRGB; refused before decoding when
/// its size is over `limits`.
pub(super) fn decode(
    bytes: &[u8],
    format: ImageFormat,
    limits: &Limits,
) -> Result<(Header, Pixels), OptimizeError> {
    let mut context = HeifContext::read_from_bytes(bytes).map_err(heif_error)?;
    // Tiles of a grid image (how phones store photos) are decoded one after
    // the other on this thread: the worker pool gives each image one core.
    context.set_max_decoding_threads(0);
    let handle = context.primary_image_handle().map_err(heif_error)?;
    let header = header(&handle, format)?;
    check_limits(&header, limits)?;

    let alpha = handle.has_alpha_channel();
    let chroma = if alpha { RgbChroma::Rgba } else { RgbChroma::Rgb };
    // No decoding options: with libheif 1.15 and these bindings, passing
    // any makes libheif skip the transforms. Without them, 10- and 12-bit
    // images are still brought to 8 bits, since 8-bit RGB is asked for.
    let image = LibHeif::new()
        .decode(&handle, ColorSpace::Rgb(chroma), None)
        .map_err(heif_error)?;
    let planes = image.planes();
    let plane = planes
        .interleaved
        .ok_or_else(|| OptimizeError::Corrupt("libheif decoded no RGB plane".into()))?;
    if (plane.width, plane.height) != (header.width, header.height) || plane.bits_per_pixel > 8 * 4 {
        return Err(OptimizeError::Corrupt(format!(
            "the coded image is {}×{}, the header says {}×{}",
            plane.width, plane.height, header.width, header.height
        )));
    }
    let channels: usize = if alpha { 4 } else { 3 };
    let row = header.width as usize * channels;
    // libheif pads rows; the pipeline wants them packed.
    let mut data = super::super::buffers::take(row * header.height as usize);
    for (packed, padded) in data.chunks_exact_mut(row).zip(plane.data.chunks(plane.stride)) {
        let source = padded
            .get(..row)
            .ok_or_else(|| OptimizeError::Corrupt("libheif returned a short row".into()))?;
        packed.copy_from_slice(source);
    }
    let mut pixels = if alpha {
        // Through `from_image`, which drops an alpha channel that is opaque
        // everywhere, as for every other format.
        let buffer = ImageBuffer::<Rgba<u8>, _>::from_raw(header.width, header.height, data)
            .expect("the buffer was sized for these dimensions");
        Pixels::from_image(DynamicImage::ImageRgba8(buffer))
    } else {
        Pixels {
            width: header.width,
            height: header.height,
            channels: 3,
            data,
        }
    };
    if let Some(profile) = handle.color_profile_raw()
        && matches!(
            profile.profile_type(),
            color_profile_types::PROF | color_profile_types::R_ICC
        )
    {
        to_srgb(&mut pixels, &profile.data);
    }
    Ok((header, pixels))
}

fn header(handle: &ImageHandle, format: ImageFormat) -> Result<Header, OptimizeError> {
    let (width, height) = (handle.width(), handle.height());
    if width == 0 || height == 0 {
        return Err(OptimizeError::Corrupt(format!(
            "the header claims a {width}×{height} image"
        )));
    }
    Ok(Header {
        format,
        width,
        height,
        orientation: Orientation::NoTransforms,
    })
}

fn heif_error(error: HeifError) -> OptimizeError {
    if matches!(error.sub_code, HeifErrorSubCode::EndOfData) {
        return truncated();
    }
    let message = match error.message.as_str() {
        "" | "Success" => format!("{:?} ({:?})", error.code, error.sub_code),
        message => message.to_owned(),
    };
    OptimizeError::Corrupt(format!("libheif: {message}"))
}
