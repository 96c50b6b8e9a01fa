//! The image pipeline: decode → fit the box → watermark → encode, timed per
//! stage. Pure and synchronous: the service runs it on the worker pool.

mod animation;
mod buffers;
// The stages are public for the per-stage benchmarks (benches/stages.rs).
pub mod decode;
pub mod encode;
mod metadata;
pub mod resize;
pub mod watermark;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use image::DynamicImage;
use nws_watermark::{
    media,
    pb::{Animation, ImageFormat},
};
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;

pub use decode::{Header, Limits, probe};
pub use nws_watermark::options::{self, Options};
pub use resize::fit_within;
pub use watermark::Ink;

use crate::OptimizeError;

/// Interleaved 8-bit pixels: RGB, or RGBA when the image has transparency;
/// grey (one channel) from a greyscale JPEG, until it is resized.
#[derive(Debug, Clone)]
pub struct Pixels {
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    pub data: Vec<u8>,
}

impl Pixels {
    /// Grey pixels as RGB, for the stages that draw in colour (the mark) and
    /// the encoders; other pixels as they are.
    pub fn into_colour(self) -> Self {
        if self.channels != 1 {
            return self;
        }
        Self {
            channels: 3,
            data: self.data.iter().flat_map(|&value| [value; 3]).collect(),
            ..self
        }
    }

    /// Converts any decoded image to 8-bit RGB(A). An alpha channel that is
    /// opaque everywhere is dropped, so it costs nothing downstream.
    fn from_image(image: DynamicImage) -> Self {
        let (width, height) = (image.width(), image.height());
        if image.color().has_alpha() {
            let rgba = image.into_rgba8();
            if rgba.pixels().any(|p| p.0[3] != u8::MAX) {
                return Self {
                    width,
                    height,
                    channels: 4,
                    data: rgba.into_raw(),
                };
            }
            // The alpha bytes are squeezed out in place, rather than into a
            // second image three quarters the size of the first.
            let mut data = rgba.into_raw();
            let count = data.len() / 4;
            for i in 1..count {
                let (from, to) = (4 * i, 3 * i);
                data[to] = data[from];
                data[to + 1] = data[from + 1];
                data[to + 2] = data[from + 2];
            }
            data.truncate(3 * count);
            return Self {
                width,
                height,
                channels: 3,
                data,
            };
        }
        Self {
            width,
            height,
            channels: 3,
            data: image.into_rgb8().into_raw(),
        }
    }
}

#[cfg(test)]
mod from_image_tests {
    use image::{GrayImage, RgbaImage};

    use super::*;

    fn rgba(width: u32, height: u32, alpha: impl Fn(u32, u32) -> u8) -> RgbaImage {
        RgbaImage::from_fn(width, height, |x, y| {
            image::Rgba([(x * 7) as u8, (y * 5) as u8, (x + y) as u8, alpha(x, y)])
        })
    }

    #[test]
    fn an_opaque_alpha_channel_is_dropped_keeping_every_colour() {
        let image = rgba(33, 17, |_, _| u8::MAX);
        let expected = DynamicImage::ImageRgba8(image.clone()).to_rgb8().into_raw();
        let pixels = Pixels::from_image(DynamicImage::ImageRgba8(image));
        assert_eq!((pixels.width, pixels.height, pixels.channels), (33, 17, 3));
        assert!(pixels.data == expected);
    }

    #[test]
    fn transparency_keeps_rgba_and_grey_becomes_rgb() {
        let image = rgba(8, 4, |x, y| if (x, y) == (7, 3) { 200 } else { u8::MAX });
        let pixels = Pixels::from_image(DynamicImage::ImageRgba8(image.clone()));
        assert_eq!(pixels.channels, 4);
        assert!(pixels.data == image.into_raw());

        let grey = GrayImage::from_fn(5, 3, |x, y| image::Luma([(x * 40 + y) as u8]));
        let pixels = Pixels::from_image(DynamicImage::ImageLuma8(grey.clone()));
        assert_eq!(pixels.channels, 3);
        let expected: Vec<u8> = grey.into_raw().into_iter().flat_map(|v| [v, v, v]).collect();
        assert!(pixels.data == expected);
    }
}

/// Time spent in each stage.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub decode: Duration,
    pub resize: Duration,
    pub watermark: Duration,
    pub encode: Duration,
}

/// A processed image and how it was made.
#[derive(Debug, Clone)]
pub struct Output {
    pub bytes: Vec<u8>,
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    pub source: Header,
    /// The text's ink; `None` for an image mark alone.
    pub ink: Option<Ink>,
    /// Each stage's time; for an animation, summed over its frames.
    pub timings: Timings,
    /// 1 for a still image.
    pub frames: u32,
}

/// Runs the whole pipeline over an encoded image, stopping between stages
/// once `cancel` is cancelled. `mark_image` is the decoded image that
/// `options.image_sha256` names, if it names one.
pub fn run(
    input: &[u8],
    options: &Options,
    mark_image: Option<&watermark::Logo>,
    limits: &Limits,
    cancel: &CancellationToken,
) -> Result<Output, OptimizeError> {
    if options.animated == Animation::Keep
        && let Some(found) = decode::animation::scan(input, limits)?
    {
        return animation::run(input, &found, options, mark_image, limits, cancel);
    }

    let mut timings = Timings::default();
    let go_on = |stage| go_on(cancel, stage);

    // A span per stage, child of the call's `optimize` span, with what the
    // stage worked on: enough to see in a trace why one image was slow.
    go_on("decode")?;
    let started = Instant::now();
    let span = tracing::info_span!(
        "pipeline.decode",
        nws.input.bytes = input.len(),
        nws.image.source_format = Empty,
        nws.image.source_width = Empty,
        nws.image.source_height = Empty,
        nws.image.decoded_width = Empty,
        nws.image.decoded_height = Empty,
        nws.decode.scale = Empty,
    );
    let (source, pixels) =
        span.in_scope(|| decode::decode(input, limits, (options.max_width, options.max_height)))?;
    timings.decode = started.elapsed();
    span.record("nws.image.source_format", media::media_type(source.format));
    span.record("nws.image.source_width", source.width);
    span.record("nws.image.source_height", source.height);
    span.record("nws.image.decoded_width", pixels.width);
    span.record("nws.image.decoded_height", pixels.height);
    // Shrink-on-load: the fraction of the stored size the decoder produced.
    let scale =
        f64::from(pixels.width.max(pixels.height)) / f64::from(source.width.max(source.height).max(1));
    span.record("nws.decode.scale", scale);
    drop(span);

    let (display_width, display_height) = source.display_size();
    let (width, height) = fit_within(
        display_width,
        display_height,
        options.max_width,
        options.max_height,
    );

    go_on("resize")?;
    let started = Instant::now();
    let span = tracing::info_span!(
        "pipeline.resize",
        nws.resize.from_width = pixels.width,
        nws.resize.from_height = pixels.height,
        nws.resize.to_width = width,
        nws.resize.to_height = height,
        nws.resize.filter = ?options.resize_filter,
    );
    let mut pixels = span
        .in_scope(|| resize::resize(pixels, width, height, options.resize_filter))
        .context("resize")
        .map_err(OptimizeError::Internal)?
        .into_colour();
    timings.resize = started.elapsed();
    drop(span);

    go_on("watermark")?;
    let started = Instant::now();
    let span = tracing::info_span!(
        "pipeline.watermark",
        nws.watermark.position = ?options.position,
        nws.watermark.tiled = options.tiled,
        nws.watermark.rotate = options.rotate,
        nws.watermark.image = options.image_sha256.as_deref(),
        nws.watermark.ink = Empty,
    );
    let mark = watermark::Mark::new(options, mark_image);
    let ink = span.in_scope(|| watermark::draw(&mut pixels, &mark));
    if let Some(ink) = ink {
        span.record("nws.watermark.ink", tracing::field::debug(ink));
    }
    timings.watermark = started.elapsed();
    drop(span);

    go_on("encode")?;
    let started = Instant::now();
    let format = encode::resolve_format(options.format, &options.accept, &pixels);
    let span = tracing::info_span!(
        "pipeline.encode",
        nws.image.format = media::media_type(format),
        nws.encode.quality = options.quality,
        nws.output.bytes = Empty,
    );
    let bytes = span.in_scope(|| {
        let mut bytes = encode::encode(&pixels, format, options.quality, options.progressive)
            .with_context(|| format!("encode {format:?}"))
            .map_err(OptimizeError::Internal)?;
        if options.keep_metadata
            && format == ImageFormat::Jpeg
            && let Some(exif) = metadata::exif_for_output(source.format, input)
        {
            bytes = metadata::insert_exif(bytes, &exif);
        }
        Ok::<_, OptimizeError>(bytes)
    })?;
    span.record("nws.output.bytes", bytes.len());
    timings.encode = started.elapsed();
    drop(span);

    buffers::give_back(pixels.data);

    Ok(Output {
        bytes,
        format,
        width,
        height,
        source,
        ink,
        timings,
        frames: 1,
    })
}

/// Whether the next stage may start: not once `cancel` is cancelled. Each
/// stage is announced (at debug level) before it starts, so what ran for a
/// job, and where a cancelled one stopped, can be seen.
fn go_on(cancel: &CancellationToken, stage: &'static str) -> Result<(), OptimizeError> {
    if cancel.is_cancelled() {
        tracing::info!(stage, "pipeline stopped before a stage: its call was cancelled");
        return Err(OptimizeError::Cancelled { stage });
    }
    tracing::debug!(stage, "pipeline stage");
    Ok(())
}
