//! What every per-format decode target shares: limits small enough to keep
//! each run fast (the checks are the same at any size), and the decode
//! stage alone, fed only bytes sniffed as the target's formats so the time
//! goes to that decoder. Seed each target's corpus with the samples in
//! optimizer-svc/tests/data (and images the tests generate).

use nws_watermark::{media, pb::ImageFormat};
use optimizer_svc::pipeline::{Limits, decode};

pub fn decode_if(data: &[u8], formats: &[ImageFormat]) {
    if !media::sniff(data).is_some_and(|format| formats.contains(&format)) {
        return;
    }
    let limits = Limits {
        max_input_bytes: 1 << 20,
        max_pixels: 4_000_000,
        max_side: 8192,
        max_animation_pixels: 20_000_000,
    };
    let _ = decode::probe(data);
    let _ = decode::decode(data, &limits, (256, 256));
}
