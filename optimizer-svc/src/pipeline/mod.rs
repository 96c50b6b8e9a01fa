//! The image pipeline: decode → fit the box → watermark → encode, timed per
//! stage. Pure and synchronous: the service runs it on the worker pool.

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
use nws_watermark::{media, pb::ImageFormat};
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;

pub use decode::{Header, Limits, probe};
pub use nws_watermark::options::{self, Options};
pub use resize::fit_within;
pub use watermark::Ink;

use crate::OptimizeError;

/// Interleaved 8-bit pixels: RGB, or RGBA when the image has transparency.
#[derive(Debug, Clone)]
pub struct Pixels {
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    pub data: Vec<u8>,
}

impl Pixels {
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
            let rgb = DynamicImage::ImageRgba8(rgba).into_rgb8();
            return Self {
                width,
                height,
                channels: 3,
                data: rgb.into_raw(),
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
    pub ink: Ink,
    pub timings: Timings,
}

/// Runs the whole pipeline over an encoded image, stopping between stages
/// once `cancel` is cancelled.
pub fn run(
    input: &[u8],
    options: &Options,
    limits: &Limits,
    cancel: &CancellationToken,
) -> Result<Output, OptimizeError> {
    let mut timings = Timings::default();
    // Each stage is announced (at debug level) before it starts, so what
    // ran for a job, and where a cancelled one stopped, can be seen.
    let go_on = |stage| {
        if cancel.is_cancelled() {
            tracing::info!(stage, "pipeline stopped before a stage: its call was cancelled");
            return Err(OptimizeError::Cancelled { stage });
        }
        tracing::debug!(stage, "pipeline stage");
        Ok(())
    };

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
        .map_err(OptimizeError::Internal)?;
    timings.resize = started.elapsed();
    drop(span);

    go_on("watermark")?;
    let started = Instant::now();
    let span = tracing::info_span!(
        "pipeline.watermark",
        nws.watermark.position = ?options.position,
        nws.watermark.tiled = options.tiled,
        nws.watermark.ink = Empty,
    );
    let mark = watermark::Mark {
        text: &options.text,
        position: options.position,
        opacity: options.opacity,
        tiled: options.tiled,
    };
    let ink = span.in_scope(|| watermark::draw(&mut pixels, &mark));
    span.record("nws.watermark.ink", tracing::field::debug(ink));
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
    })
}
