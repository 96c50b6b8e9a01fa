//! Any bytes sniffed as BMP (`image`) through the decode stage: refused or
//! decoded, never a crash, a hang or an allocation past the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nws_watermark::pb::ImageFormat;

#[path = "decode_common.rs"]
mod decode_common;

fuzz_target!(|data: &[u8]| decode_common::decode_if(data, &[ImageFormat::Bmp]));
