//! Animated GIF and WebP under both policies: `first` makes a still of the
//! first frame; `keep` fits, watermarks and re-encodes every frame into an
//! animated WebP with the source's timing and loop count, within
//! NWS_MAX_ANIMATION_PIXELS, checked before any frame is decoded.

use std::{borrow::Cow, io::Cursor};

use image::{AnimationDecoder as _, RgbaImage, codecs::webp::WebPDecoder, imageops, metadata::LoopCount};
use nws_runtime::testing::test_image;
use nws_watermark::pb::{Animation, ImageFormat, ResizeFilter};
use optimizer_svc::{
    OptimizeError,
    pipeline::{self, Limits, Options, Pixels},
};
use tokio_util::sync::CancellationToken;

const LIMITS: Limits = Limits {
    max_input_bytes: 25 << 20,
    max_pixels: 50_000_000,
    max_side: 40_000,
    max_animation_pixels: 100_000_000,
};

/// A camera pan over a real photo: `count` frames of 480×360 cut from the
/// 12 MP photo shrunk to 960×720, each further right, shown for `delay`
/// hundredths of a second (the last twice as long), repeated as `repeat`
/// says (for `Finite(0)` the gif crate writes no NETSCAPE block: the GIF
/// plays once).
fn panning_gif(count: u16, delay: u16, repeat: gif::Repeat) -> (Vec<u8>, Vec<RgbaImage>) {
    let photo = image::load_from_memory(&test_image("kleiber_4000x3000.jpg"))
        .unwrap()
        .resize_exact(960, 720, imageops::FilterType::Triangle)
        .to_rgba8();
    let mut gif = Vec::new();
    let mut frames = Vec::new();
    {
        let mut encoder = gif::Encoder::new(&mut gif, 480, 360, &[]).unwrap();
        encoder.set_repeat(repeat).unwrap();
        for i in 0..count {
            let cut = imageops::crop_imm(&photo, u32::from(i) * 60, 180, 480, 360).to_image();
            let mut rgba = cut.clone().into_raw();
            let mut frame = gif::Frame::from_rgba_speed(480, 360, &mut rgba, 30);
            frame.delay = if i + 1 == count { 2 * delay } else { delay };
            encoder.write_frame(&frame).unwrap();
            // What a viewer shows: the frame after palette quantisation.
            frames.push(decoded_frame(&frame));
        }
    }
    (gif, frames)
}

/// The RGBA pixels a palette frame stands for.
fn decoded_frame(frame: &gif::Frame) -> RgbaImage {
    let palette = frame.palette.as_deref().unwrap();
    let pixels = frame
        .buffer
        .iter()
        .flat_map(|&i| {
            let at = usize::from(i) * 3;
            let alpha = if Some(i) == frame.transparent { 0 } else { 255 };
            [palette[at], palette[at + 1], palette[at + 2], alpha]
        })
        .collect();
    RgbaImage::from_raw(u32::from(frame.width), u32::from(frame.height), pixels).unwrap()
}

fn keep(max_width: u32, max_height: u32) -> Options {
    Options {
        animated: Animation::Keep,
        format: ImageFormat::Webp,
        max_width,
        max_height,
        ..Options::default()
    }
}

fn run(input: &[u8], options: &Options, limits: &Limits) -> Result<pipeline::Output, OptimizeError> {
    pipeline::run(input, options, None, limits, &CancellationToken::new())
}

/// An animated WebP's frames, how long each shows (ms) and how many times
/// it plays (`None`: forever).
fn webp_frames(webp: &[u8]) -> (Vec<RgbaImage>, Vec<u32>, Option<u32>) {
    let decoder = WebPDecoder::new(Cursor::new(webp)).unwrap();
    assert!(decoder.has_animation(), "the output is animated");
    let plays = match image::AnimationDecoder::loop_count(&decoder) {
        LoopCount::Infinite => None,
        LoopCount::Finite(n) => Some(n.get()),
    };
    let frames = decoder.into_frames().collect_frames().unwrap();
    let durations = frames
        .iter()
        .map(|frame| {
            let (numer, denom) = frame.delay().numer_denom_ms();
            numer / denom
        })
        .collect();
    (
        frames.into_iter().map(|frame| frame.into_buffer()).collect(),
        durations,
        plays,
    )
}

/// Mean absolute difference per colour sample of two images over a region.
fn difference(a: &RgbaImage, b: &RgbaImage, region: (u32, u32, u32, u32)) -> f64 {
    let (x0, y0, w, h) = region;
    let mut total = 0u64;
    for y in y0..y0 + h {
        for x in x0..x0 + w {
            for c in 0..3 {
                total += u64::from(a.get_pixel(x, y)[c].abs_diff(b.get_pixel(x, y)[c]));
            }
        }
    }
    total as f64 / f64::from(w * h * 3)
}

#[test]
fn every_frame_is_fitted_watermarked_and_timed_as_the_source() {
    let (gif, sources) = panning_gif(6, 8, gif::Repeat::Finite(2));
    let output = run(&gif, &keep(320, 240), &LIMITS).unwrap();
    assert_eq!(
        (output.format, output.width, output.height, output.frames),
        (ImageFormat::Webp, 320, 240, 6)
    );
    assert_eq!(
        (output.source.format, output.source.width, output.source.height),
        (ImageFormat::Gif, 480, 360)
    );

    let (frames, durations, plays) = webp_frames(&output.bytes);
    assert_eq!(durations, [80, 80, 80, 80, 80, 160]);
    // Two repeats after the first play: three plays, as browsers show it.
    assert_eq!(plays, Some(3));
    assert_eq!(frames.len(), 6);
    // Each frame is its source, fitted; the default mark is in its
    // bottom-right corner, and only there.
    let corner = (200, 215, 110, 18);
    let elsewhere = (10, 10, 150, 100);
    for (i, (frame, source)) in frames.iter().zip(&sources).enumerate() {
        assert_eq!(frame.dimensions(), (320, 240));
        let fitted = pipeline::resize::resize(
            Pixels {
                width: 480,
                height: 360,
                channels: 4,
                data: source.as_raw().clone(),
            },
            320,
            240,
            ResizeFilter::Lanczos3,
        )
        .unwrap();
        let fitted = RgbaImage::from_raw(320, 240, fitted.data).unwrap();
        let unmarked = difference(frame, &fitted, elsewhere);
        let marked = difference(frame, &fitted, corner);
        assert!(
            unmarked < 6.0,
            "frame {i}: {unmarked:.1} from its source away from the mark"
        );
        assert!(
            marked > 3.0 * unmarked + 6.0,
            "frame {i}: the corner ({marked:.1}) is not marked"
        );
    }
}

#[test]
fn the_first_frame_policy_makes_a_still() {
    let (gif, sources) = panning_gif(4, 10, gif::Repeat::Finite(0));
    let output = run(
        &gif,
        &Options {
            max_width: 320,
            max_height: 240,
            format: ImageFormat::Png,
            ..Options::default()
        },
        &LIMITS,
    )
    .unwrap();
    assert_eq!((output.format, output.frames), (ImageFormat::Png, 1));
    let still = image::load_from_memory(&output.bytes).unwrap().to_rgba8();
    let first = imageops::resize(&sources[0], 320, 240, imageops::FilterType::Triangle);
    let last = imageops::resize(&sources[3], 320, 240, imageops::FilterType::Triangle);
    let region = (10, 10, 150, 100);
    assert!(difference(&still, &first, region) < difference(&still, &last, region) / 2.0);
}

#[test]
fn our_own_animated_webp_is_kept_as_well() {
    let (gif, _) = panning_gif(3, 5, gif::Repeat::Infinite);
    let webp = run(&gif, &keep(320, 240), &LIMITS).unwrap().bytes;
    let again = run(&webp, &keep(160, 120), &LIMITS).unwrap();
    assert_eq!(
        (again.source.format, again.frames, again.width, again.height),
        (ImageFormat::Webp, 3, 160, 120)
    );
    let (frames, durations, plays) = webp_frames(&again.bytes);
    assert_eq!(frames.len(), 3);
    assert_eq!(durations, [50, 50, 100]);
    // A GIF's repeat count of 0 (in the NETSCAPE block) is forever.
    assert_eq!(plays, None);
}

#[test]
fn transparency_survives_every_frame() {
    // Two 64×64 frames, the left half transparent in the first, the right
    // half in the second (disposal: back to the background each time).
    let mut gif = Vec::new();
    {
        let palette = [255, 0, 0, 0, 0, 255];
        let mut encoder = gif::Encoder::new(&mut gif, 64, 64, &palette).unwrap();
        for transparent_left in [true, false] {
            let pixels: Vec<u8> = (0..64 * 64)
                .map(|i| u8::from((i % 64 < 32) != transparent_left))
                .collect();
            let mut frame = gif::Frame::from_indexed_pixels(64, 64, pixels, Some(0));
            frame.delay = 10;
            frame.dispose = gif::DisposalMethod::Background;
            encoder.write_frame(&frame).unwrap();
        }
    }
    let output = run(&gif, &keep(64, 64), &LIMITS).unwrap();
    let (frames, _, _) = webp_frames(&output.bytes);
    assert_eq!(frames.len(), 2);
    let alpha = |frame: &RgbaImage, x| frame.get_pixel(x, 8).0[3];
    assert_eq!((alpha(&frames[0], 8), alpha(&frames[0], 56)), (0, 255));
    assert_eq!((alpha(&frames[1], 8), alpha(&frames[1], 56)), (255, 0));
}

/// A GIF bomb: `frames` 1×1 images on a `side`×`side` canvas, 15 bytes
/// each. Their LZW data is garbage, so decoding any frame fails: a refusal
/// for the size proves that no frame was decoded before it.
fn gif_bomb(frames: u32, side: u16) -> Vec<u8> {
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&side.to_le_bytes());
    gif.extend_from_slice(&side.to_le_bytes());
    gif.extend_from_slice(&[0, 0, 0]); // no global colour table
    for _ in 0..frames {
        // Descriptor at (0, 0), 1×1, no local table; code size 2; one
        // two-byte sub-block; the end of the data.
        gif.extend_from_slice(&[0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 0xFF, 0xFF, 0]);
    }
    gif.push(0x3B);
    gif
}

#[test]
fn an_animation_bomb_is_refused_before_any_frame_is_decoded() {
    let bomb = gif_bomb(10_000, 1000);
    assert!(bomb.len() < 200_000, "a small file: {} bytes", bomb.len());
    let error = run(&bomb, &keep(1920, 1080), &LIMITS).unwrap_err();
    assert!(
        matches!(
            error,
            OptimizeError::TooManyAnimationPixels {
                frames: 10_000,
                width: 1000,
                height: 1000,
                total: 10_000_000_000,
                limit: 100_000_000,
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("NWS_MAX_ANIMATION_PIXELS"), "{message}");
    assert!(message.contains("animated=first"), "{message}");
    assert_eq!(tonic::Status::from(error).code(), tonic::Code::InvalidArgument);

    // A canvas of nothing is refused from the header too.
    let error = run(&gif_bomb(3, 0), &keep(1920, 1080), &LIMITS).unwrap_err();
    assert!(
        matches!(&error, OptimizeError::Corrupt(message) if message == "the animation's canvas is 0×0"),
        "{error:?}"
    );
}

#[test]
fn the_limit_counts_frames_times_the_canvas_exactly() {
    let (gif, _) = panning_gif(3, 10, gif::Repeat::Finite(0));
    let exact = 3 * 480 * 360;
    let at_limit = Limits {
        max_animation_pixels: exact,
        ..LIMITS
    };
    let kept = run(&gif, &keep(320, 240), &at_limit).unwrap();
    assert_eq!(kept.frames, 3);
    // No NETSCAPE block: the GIF plays once, and so does the WebP.
    assert_eq!(webp_frames(&kept.bytes).2, Some(1));
    let below = Limits {
        max_animation_pixels: exact - 1,
        ..LIMITS
    };
    let error = run(&gif, &keep(320, 240), &below).unwrap_err();
    assert!(
        matches!(error, OptimizeError::TooManyAnimationPixels { frames: 3, .. }),
        "{error:?}"
    );
    // The first frame alone is a still, held to the still limits only.
    let still = run(&gif, &Options::default(), &below).unwrap();
    assert_eq!(still.frames, 1);

    // The canvas itself is a frame's size: NWS_MAX_PIXELS holds for it.
    let small_frames = Limits {
        max_pixels: 480 * 360 - 1,
        ..LIMITS
    };
    let error = run(&gif, &keep(320, 240), &small_frames).unwrap_err();
    assert!(matches!(error, OptimizeError::TooManyPixels { .. }), "{error:?}");
}

#[test]
fn damage_and_cancellation_stop_the_frames() {
    let (gif, _) = panning_gif(4, 10, gif::Repeat::Finite(0));
    // Cut in the middle of the third frame's data.
    let truncated = &gif[..gif.len() * 5 / 8];
    let error = run(truncated, &keep(320, 240), &LIMITS).unwrap_err();
    assert!(matches!(error, OptimizeError::Corrupt(_)), "{error:?}");

    let cancel = CancellationToken::new();
    cancel.cancel();
    let error = pipeline::run(&gif, &keep(320, 240), None, &LIMITS, &cancel).unwrap_err();
    assert!(
        matches!(error, OptimizeError::Cancelled { stage: "frame" }),
        "{error:?}"
    );
}

#[test]
fn a_still_gif_with_keep_is_a_still_webp() {
    let mut gif = Vec::new();
    {
        let mut encoder = gif::Encoder::new(&mut gif, 40, 30, &[10, 200, 30]).unwrap();
        let frame = gif::Frame {
            width: 40,
            height: 30,
            buffer: Cow::Owned(vec![0; 1200]),
            ..gif::Frame::default()
        };
        encoder.write_frame(&frame).unwrap();
    }
    let output = run(&gif, &keep(1920, 1080), &LIMITS).unwrap();
    assert_eq!((output.format, output.frames), (ImageFormat::Webp, 1));
    let decoder = WebPDecoder::new(Cursor::new(&output.bytes)).unwrap();
    assert!(!decoder.has_animation());
}
