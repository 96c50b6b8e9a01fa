//! Any bytes sniffed as GIF or WebP through the pipeline with
//! `animated=keep`: the container walk that counts frames, the limit, and
//! every frame decoded, fitted, watermarked and encoded. Refused or
//! processed, never a crash, a hang or an allocation past the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nws_watermark::{
    media,
    pb::{Animation, ImageFormat},
};
use optimizer_svc::pipeline::{self, Limits, Options};
use tokio_util::sync::CancellationToken;

fuzz_target!(|data: &[u8]| {
    if !matches!(media::sniff(data), Some(ImageFormat::Gif | ImageFormat::Webp)) {
        return;
    }
    // Small limits keep each run fast; the checks are the same at any size.
    let limits = Limits {
        max_input_bytes: 1 << 20,
        max_pixels: 1_000_000,
        max_side: 4096,
        max_animation_pixels: 4_000_000,
    };
    let options = Options {
        animated: Animation::Keep,
        format: ImageFormat::Webp,
        max_width: 64,
        max_height: 64,
        ..Options::default()
    };
    let _ = pipeline::run(data, &options, None, &limits, &CancellationToken::new());
});
