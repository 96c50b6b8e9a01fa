//! Any bytes through the whole pipeline (sniff, header, limits, decode,
//! resize, watermark, encode): it may refuse them, never crash or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use optimizer_svc::pipeline::{self, Limits, Options};
use tokio_util::sync::CancellationToken;

fuzz_target!(|data: &[u8]| {
    // Small limits keep each run fast; the checks are the same at any size.
    let limits = Limits {
        max_input_bytes: 1 << 20,
        max_pixels: 4_000_000,
        max_side: 8192,
        max_animation_pixels: 20_000_000,
    };
    let options = Options {
        max_width: 256,
        max_height: 256,
        ..Options::default()
    };
    let _ = pipeline::run(data, &options, None, &limits, &CancellationToken::new());
});
