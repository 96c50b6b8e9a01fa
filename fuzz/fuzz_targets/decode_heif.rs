//! Any bytes sniffed as HEIC or AVIF (libheif, with libde265 and dav1d)
//! through the decode stage: refused or decoded, never a crash, a hang or
//! an allocation past the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nws_watermark::pb::ImageFormat;

#[path = "decode_common.rs"]
mod decode_common;

fuzz_target!(|data: &[u8]| decode_common::decode_if(data, &[ImageFormat::Heic, ImageFormat::Avif]));
