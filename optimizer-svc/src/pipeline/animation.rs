//! The pipeline for an animation kept frame by frame (`animated=keep`):
//! each frame is decoded, fitted into the box, watermarked and handed to
//! the animated WebP encoder before the next is decoded, so one frame's
//! pixels are held at a time whatever the length.
//!
//! The mark is laid out once for the output size, and its ink chosen on
//! the first frame, so the text does not move or change colour from frame
//! to frame.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use nws_watermark::{media, pb::ImageFormat};
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;

use super::{
    Limits, Options, Output, Timings, decode, decode::animation::Animation, encode, fit_within, go_on,
    resize, watermark,
};
use crate::OptimizeError;

/// Runs the pipeline over every frame of `animation`, what
/// `decode::animation::scan` found in `input` within `limits`.
pub(super) fn run(
    input: &[u8],
    animation: &Animation,
    options: &Options,
    mark_image: Option<&watermark::Logo>,
    limits: &Limits,
    cancel: &CancellationToken,
) -> Result<Output, OptimizeError> {
    let (width, height) = fit_within(
        animation.width,
        animation.height,
        options.max_width,
        options.max_height,
    );
    let span = tracing::info_span!(
        "pipeline.animation",
        nws.image.source_format = media::media_type(animation.format),
        nws.image.source_width = animation.width,
        nws.image.source_height = animation.height,
        nws.animation.frames = animation.frames,
        nws.resize.to_width = width,
        nws.resize.to_height = height,
        nws.output.bytes = Empty,
    );
    let _entered = span.enter();

    let mark = watermark::Mark::new(options, mark_image);
    let mut drawing = watermark::Drawing::new(&mark, width, height);
    let mut encoder = encode::animated_webp(width, height, options.quality, animation.loop_count)
        .context("start an animated WebP")
        .map_err(OptimizeError::Internal)?;
    let mut frames = decode::animation::frames(input, animation, limits)?;
    let mut timings = Timings::default();
    let mut ink = None;
    let mut shown_until = Duration::ZERO;
    loop {
        go_on(cancel, "frame")?;
        let started = Instant::now();
        let Some(frame) = frames.next() else { break };
        let (pixels, shown_for) = frame?;
        timings.decode += started.elapsed();

        let started = Instant::now();
        let mut pixels = resize::resize(pixels, width, height, options.resize_filter)
            .context("resize a frame")
            .map_err(OptimizeError::Internal)?;
        timings.resize += started.elapsed();

        let started = Instant::now();
        let frame_ink = drawing.paint(&mut pixels);
        ink = ink.or(frame_ink);
        timings.watermark += started.elapsed();

        let started = Instant::now();
        encoder
            .add_rgba(&pixels.data, millis(shown_until)?)
            .context("encode a frame")
            .map_err(OptimizeError::Internal)?;
        shown_until += shown_for;
        timings.encode += started.elapsed();
    }
    if encoder.frames() == 0 {
        return Err(OptimizeError::Corrupt(
            "the animation has no frame that decodes".into(),
        ));
    }
    let frames = encoder.frames();
    let started = Instant::now();
    let bytes = encoder
        .finish(millis(shown_until)?)
        .context("finish an animated WebP")
        .map_err(OptimizeError::Internal)?;
    timings.encode += started.elapsed();
    span.record("nws.output.bytes", bytes.len());

    Ok(Output {
        bytes,
        format: ImageFormat::Webp,
        width,
        height,
        source: animation.header(),
        ink,
        timings,
        frames,
    })
}

/// A time in the animation, in whole milliseconds.
fn millis(at: Duration) -> Result<u32, OptimizeError> {
    u32::try_from(at.as_millis()).map_err(|_| {
        OptimizeError::Corrupt(format!("the animation is {at:?} long, longer than WebP can say"))
    })
}
