//! Animated GIF and WebP, kept frame by frame (`animated=keep`).
//!
//! The container is walked first, without decoding a pixel: its blocks
//! (GIF) or chunks (WebP) say how many frames there are and how large the
//! canvas is, so an animation over NWS_MAX_ANIMATION_PIXELS is refused
//! before any work. Then frames are decoded one at a time, each composited
//! onto the canvas as a viewer shows it, and the decoder is held to the
//! count the walk found.

use std::{io::Cursor, time::Duration};

use image::{
    AnimationDecoder, ImageDecoder as _,
    codecs::{gif::GifDecoder, webp::WebPDecoder},
    metadata::Orientation,
};
use nws_watermark::{media, pb::ImageFormat};

use super::{
    Header, Limits, Pixels, check_animation_frame, check_limits, check_size, codec_limits, decode_error,
    webp_chunks,
};
use crate::OptimizeError;

/// What a container says about its animation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Animation {
    pub format: ImageFormat,
    /// The canvas every frame is composited onto.
    pub width: u32,
    pub height: u32,
    /// Frames in the container: an upper bound on what its decoder yields.
    pub frames: u32,
    /// Times it plays; 0 means forever.
    pub loop_count: u16,
}

impl Animation {
    /// The canvas as a still image's header.
    pub fn header(&self) -> Header {
        Header {
            format: self.format,
            width: self.width,
            height: self.height,
            orientation: Orientation::NoTransforms,
        }
    }

    /// Pixels decoded in all when every frame is.
    pub fn total_pixels(&self) -> u64 {
        u64::from(self.frames) * u64::from(self.width) * u64::from(self.height)
    }
}

/// The animation `bytes` hold, when they are a GIF or WebP of more than
/// one frame; `None` for everything else, stills included. Reads the
/// container only, and refuses an animation over `limits`: its bytes, its
/// canvas, or its frames in all.
pub fn scan(bytes: &[u8], limits: &Limits) -> Result<Option<Animation>, OptimizeError> {
    check_size(bytes, limits)?;
    let animation = match media::sniff(bytes) {
        Some(ImageFormat::Gif) => scan_gif(bytes),
        Some(ImageFormat::Webp) => scan_webp(bytes)?,
        _ => None,
    };
    let Some(animation) = animation.filter(|animation| animation.frames > 1) else {
        return Ok(None);
    };
    check(&animation, limits)?;
    Ok(Some(animation))
}

fn check(animation: &Animation, limits: &Limits) -> Result<(), OptimizeError> {
    if animation.width == 0 || animation.height == 0 {
        return Err(OptimizeError::Corrupt(format!(
            "the animation's canvas is {}×{}",
            animation.width, animation.height
        )));
    }
    check_limits(&animation.header(), limits)?;
    let total = animation.total_pixels();
    if total > limits.max_animation_pixels {
        return Err(OptimizeError::TooManyAnimationPixels {
            frames: animation.frames,
            width: animation.width,
            height: animation.height,
            total,
            limit: limits.max_animation_pixels,
        });
    }
    Ok(())
}

/// A GIF's logical screen, frames and loop count, from its blocks: each
/// image descriptor is a frame, and data sub-blocks are skipped by their
/// lengths. A file that ends early, or has a block no decoder knows, is
/// counted up to there (the decoder stops there too).
fn scan_gif(bytes: &[u8]) -> Option<Animation> {
    let u16_at = |at: usize| bytes.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let width = u32::from(u16_at(6)?);
    let height = u32::from(u16_at(8)?);
    let flags = *bytes.get(10)?;
    let colour_table = |flags: u8| {
        if flags & 0x80 != 0 {
            3 << ((flags & 7) + 1)
        } else {
            0
        }
    };
    let mut at = 13 + colour_table(flags);
    let mut frames = 0u32;
    let mut loop_count = 1; // a GIF without the NETSCAPE extension plays once
    // Skips a run of data sub-blocks (a length byte, then that many
    // bytes), ending after the empty one; `None` when the data ends first.
    let skip_sub_blocks = |mut at: usize| loop {
        let size = usize::from(*bytes.get(at)?);
        at += 1;
        if size == 0 {
            return Some(at);
        }
        at += size;
    };
    while let Some(&introducer) = bytes.get(at) {
        match introducer {
            // An image descriptor: position and size (8 bytes), flags, the
            // local colour table, the LZW code size, then the data.
            0x2C => {
                frames += 1;
                let Some(&flags) = bytes.get(at + 9) else { break };
                at = match skip_sub_blocks(at + 10 + colour_table(flags) + 1) {
                    Some(end) => end,
                    None => break,
                };
            }
            // An extension: its label, then sub-blocks. The NETSCAPE2.0
            // application extension holds the loop count.
            0x21 => {
                let label = bytes.get(at + 1).copied();
                if label == Some(0xFF)
                    && bytes.get(at + 2) == Some(&11)
                    && matches!(bytes.get(at + 3..at + 14), Some(b"NETSCAPE2.0" | b"ANIMEXTS1.0"))
                    && bytes.get(at + 14..at + 16) == Some(&[3, 1])
                {
                    // 0 is forever; n repeats n times after the first play.
                    loop_count = match u16_at(at + 16) {
                        Some(0) => 0,
                        Some(n) => n.saturating_add(1),
                        None => break,
                    };
                }
                at = match skip_sub_blocks(at + 2) {
                    Some(end) => end,
                    None => break,
                };
            }
            // The trailer, or a block no decoder reads past.
            _ => break,
        }
    }
    Some(Animation {
        format: ImageFormat::Gif,
        width,
        height,
        frames,
        loop_count,
    })
}

/// An animated WebP's canvas (VP8X), loop count (ANIM) and frames (ANMF);
/// `None` for a still WebP.
fn scan_webp(bytes: &[u8]) -> Result<Option<Animation>, OptimizeError> {
    const ANIMATED: u8 = 0x02;
    let u24 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], 0]);
    let mut canvas = None;
    let mut loop_count = 0;
    let mut frames = 0u32;
    for chunk in webp_chunks(bytes) {
        let (name, payload) = chunk?;
        match &name {
            b"VP8X" if payload.len() >= 10 => {
                if payload[0] & ANIMATED == 0 {
                    return Ok(None);
                }
                canvas = Some((u24(&payload[4..7]) + 1, u24(&payload[7..10]) + 1));
            }
            b"ANIM" if payload.len() >= 6 => loop_count = u16::from_le_bytes([payload[4], payload[5]]),
            b"ANMF" => {
                check_animation_frame(payload)?;
                frames += 1;
            }
            _ => {}
        }
    }
    Ok(canvas.map(|(width, height)| Animation {
        format: ImageFormat::Webp,
        width,
        height,
        frames,
        loop_count,
    }))
}

/// The frames of `animation`, decoded one at a time: each is the whole
/// canvas (RGBA) and how long it shows. Yields an error, and nothing after
/// it, for a damaged frame, or for more frames than the scan counted.
/// `animation` is what [`scan`] found in `bytes`.
pub fn frames<'a>(
    bytes: &'a [u8],
    animation: &Animation,
    limits: &Limits,
) -> Result<impl Iterator<Item = Result<(Pixels, Duration), OptimizeError>> + 'a, OptimizeError> {
    let cursor = Cursor::new(bytes);
    let decoded = match animation.format {
        ImageFormat::Gif => {
            let mut decoder = GifDecoder::new(cursor).map_err(decode_error)?;
            decoder.set_limits(codec_limits(limits)).map_err(decode_error)?;
            decoder.into_frames()
        }
        ImageFormat::Webp => {
            let mut decoder = WebPDecoder::new(cursor).map_err(decode_error)?;
            decoder.set_limits(codec_limits(limits)).map_err(decode_error)?;
            decoder.into_frames()
        }
        other => {
            return Err(OptimizeError::Internal(anyhow::anyhow!(
                "{other:?} is not an animation format"
            )));
        }
    };
    let (format, expected, canvas) = (
        animation.format,
        animation.frames,
        (animation.width, animation.height),
    );
    let mut seen = 0u32;
    let mut failed = false;
    Ok(decoded.map_while(move |frame| {
        if failed {
            return None;
        }
        seen += 1;
        let result = frame.map_err(decode_error).and_then(|frame| {
            if seen > expected {
                return Err(OptimizeError::Corrupt(format!(
                    "the decoder found more frames than the {expected} the container holds"
                )));
            }
            let (numer, denom) = frame.delay().numer_denom_ms();
            let mut shown = Duration::from_secs_f64(f64::from(numer) / f64::from(denom.max(1)) / 1000.0);
            // Browsers show GIF frames of 10 ms or less for 100 ms; so do we
            // (as libwebp's gif2webp does), or they would flash by.
            if format == ImageFormat::Gif && shown <= Duration::from_millis(10) {
                shown = Duration::from_millis(100);
            }
            let buffer = frame.into_buffer();
            if buffer.dimensions() != canvas {
                return Err(OptimizeError::Corrupt(format!(
                    "a frame is {}×{}, not the {}×{} canvas",
                    buffer.width(),
                    buffer.height(),
                    canvas.0,
                    canvas.1
                )));
            }
            let (width, height) = buffer.dimensions();
            Ok((
                Pixels {
                    width,
                    height,
                    channels: 4,
                    data: buffer.into_raw(),
                },
                shown,
            ))
        });
        failed = result.is_err();
        Some(result)
    }))
}
