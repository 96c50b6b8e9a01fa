//! Image formats recognised from their magic bytes, never from a name or a
//! declared content type.

use crate::pb::ImageFormat;

/// Media type for bytes that are not a recognised image.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// How many leading bytes [`sniff`] needs to recognise every format: an
/// ISO-BMFF `ftyp` box with its first four compatible brands (a HEIF
/// whose major brand is the generic `mif1` names its codec there).
pub const SNIFF_LEN: usize = 32;

/// The image format whose signature starts `bytes`, if any.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    match bytes {
        [0xFF, 0xD8, 0xFF, ..] => Some(ImageFormat::Jpeg),
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some(ImageFormat::Png),
        [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some(ImageFormat::Gif),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some(ImageFormat::Webp),
        [_, _, _, _, b'f', b't', b'y', b'p', ..] => heif_brand(bytes),
        // A bare codestream, or the ISO-BMFF container's signature box.
        [0xFF, 0x0A, ..] | [0, 0, 0, 0x0C, b'J', b'X', b'L', b' ', 0x0D, 0x0A, 0x87, 0x0A, ..] => {
            Some(ImageFormat::Jxl)
        }
        // Little- and big-endian, classic and BigTIFF.
        [b'I', b'I', 0x2A | 0x2B, 0, ..] | [b'M', b'M', 0, 0x2A | 0x2B, ..] => Some(ImageFormat::Tiff),
        // "BM" alone is too weak: the reserved words are zero and the DIB
        // header has one of the sizes Windows and OS/2 define.
        [
            b'B',
            b'M',
            _,
            _,
            _,
            _,
            0,
            0,
            0,
            0,
            _,
            _,
            _,
            _,
            12 | 16 | 40 | 52 | 56 | 64 | 108 | 124,
            0,
            0,
            0,
            ..,
        ] => Some(ImageFormat::Bmp),
        // Reserved word, type 1 (icon, not cursor), at least one image,
        // and the first entry's reserved byte zero.
        [0, 0, 1, 0, count_low, count_high, _, _, _, 0, ..] if (*count_low, *count_high) != (0, 0) => {
            Some(ImageFormat::Ico)
        }
        _ => None,
    }
}

/// AVIF or HEIC from an ISO-BMFF `ftyp` box: the major brand, or for the
/// generic HEIF brands the compatible ones the box lists.
fn heif_brand(bytes: &[u8]) -> Option<ImageFormat> {
    const AVIF: [&[u8; 4]; 2] = [b"avif", b"avis"];
    const HEIC: [&[u8; 4]; 6] = [b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"];
    const GENERIC: [&[u8; 4]; 2] = [b"mif1", b"msf1"];
    let major: &[u8; 4] = bytes.get(8..12)?.try_into().ok()?;
    if AVIF.contains(&major) {
        return Some(ImageFormat::Avif);
    }
    if HEIC.contains(&major) {
        return Some(ImageFormat::Heic);
    }
    if !GENERIC.contains(&major) {
        return None;
    }
    let box_size = u32::from_be_bytes(bytes[..4].try_into().ok()?) as usize;
    // After the major brand comes a minor version, then the compatible brands.
    let compatible = bytes.get(16..box_size.min(bytes.len()))?;
    if compatible
        .chunks_exact(4)
        .any(|brand| AVIF.iter().any(|avif| brand == *avif))
    {
        Some(ImageFormat::Avif)
    } else {
        // Other HEIF (HEVC, or codecs libheif reads) is decoded as HEIC.
        Some(ImageFormat::Heic)
    }
}

/// The formats the optimizer decodes; anything else is refused before it
/// is stored.
pub const INPUT_FORMATS: [ImageFormat; 10] = [
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::Webp,
    ImageFormat::Gif,
    ImageFormat::Avif,
    ImageFormat::Heic,
    ImageFormat::Bmp,
    ImageFormat::Tiff,
    ImageFormat::Ico,
    ImageFormat::Jxl,
];

/// [`INPUT_FORMATS`] as messages list them.
pub const INPUT_FORMATS_TEXT: &str = "JPEG, PNG, WebP, GIF, AVIF, HEIC, BMP, TIFF, ICO or JPEG XL";

/// Whether the optimizer can decode `format`.
pub fn is_input(format: ImageFormat) -> bool {
    INPUT_FORMATS.contains(&format)
}

/// The formats the optimizer encodes.
pub const OUTPUT_FORMATS: [ImageFormat; 4] = [
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::Webp,
    ImageFormat::Avif,
];

/// Whether the optimizer can encode `format`.
pub fn is_output(format: ImageFormat) -> bool {
    OUTPUT_FORMATS.contains(&format)
}

/// The format's usual name, e.g. `AVIF`.
pub fn name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::Gif => "GIF",
        ImageFormat::Webp => "WebP",
        ImageFormat::Avif => "AVIF",
        ImageFormat::Heic => "HEIC",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        ImageFormat::Ico => "ICO",
        ImageFormat::Jxl => "JPEG XL",
        ImageFormat::Unspecified => "unknown",
    }
}

/// The media type for `format`, e.g. `image/jpeg`.
pub fn media_type(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "image/jpeg",
        ImageFormat::Png => "image/png",
        ImageFormat::Gif => "image/gif",
        ImageFormat::Webp => "image/webp",
        ImageFormat::Avif => "image/avif",
        ImageFormat::Heic => "image/heic",
        ImageFormat::Bmp => "image/bmp",
        ImageFormat::Tiff => "image/tiff",
        // The registered type; browsers also send image/x-icon.
        ImageFormat::Ico => "image/vnd.microsoft.icon",
        ImageFormat::Jxl => "image/jxl",
        ImageFormat::Unspecified => OCTET_STREAM,
    }
}

/// The media type of `bytes` judged from their signature.
pub fn sniff_media_type(bytes: &[u8]) -> &'static str {
    sniff(bytes).map_or(OCTET_STREAM, media_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_each_signature_and_nothing_else() {
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some(ImageFormat::Jpeg));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0"), Some(ImageFormat::Png));
        assert_eq!(sniff(b"GIF89a...."), Some(ImageFormat::Gif));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(ImageFormat::Webp));
        assert_eq!(sniff(b"RIFF\0\0\0\0WAVEfmt "), None);
        assert_eq!(sniff(b"\0\0\0\x1cftypavif"), Some(ImageFormat::Avif));
        assert_eq!(sniff(b"\0\0\0\x1cftypisom"), None);
        // An iPhone's HEIC, and generic HEIF naming its codec among the
        // compatible brands (or none: read as HEIC).
        assert_eq!(
            sniff(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic"),
            Some(ImageFormat::Heic)
        );
        assert_eq!(
            sniff(b"\0\0\0\x18ftypmif1\0\0\0\0mif1avif"),
            Some(ImageFormat::Avif)
        );
        assert_eq!(
            sniff(b"\0\0\0\x18ftypmif1\0\0\0\0mif1heic"),
            Some(ImageFormat::Heic)
        );
        assert_eq!(sniff(b"\0\0\0\x10ftypmif1\0\0\0\0"), Some(ImageFormat::Heic));
        // A compatible brand past the end of the box does not count.
        assert_eq!(
            sniff(b"\0\0\0\x14ftypmif1\0\0\0\0mif1avif"),
            Some(ImageFormat::Heic)
        );
        assert_eq!(sniff(b"\0\0\0\x18ftypmp42\0\0\0\0mif1heic"), None);
        assert_eq!(sniff(&[0xFF, 0x0A, 0xFA]), Some(ImageFormat::Jxl));
        assert_eq!(sniff(b"\0\0\0\x0cJXL \r\n\x87\n"), Some(ImageFormat::Jxl));
        assert_eq!(sniff(b"II*\0\x08\0\0\0"), Some(ImageFormat::Tiff));
        assert_eq!(sniff(b"MM\0*\0\0\0\x08"), Some(ImageFormat::Tiff));
        assert_eq!(sniff(b"II+\0\x08\0\0\0"), Some(ImageFormat::Tiff));
        let bmp = b"BM\x36\0\0\0\0\0\0\0\x36\0\0\0\x28\0\0\0\x01\0";
        assert_eq!(sniff(bmp), Some(ImageFormat::Bmp));
        assert_eq!(sniff(b"BMW is not a bitmap, whatever it starts with"), None);
        assert_eq!(
            sniff(b"\0\0\x01\0\x01\0\x10\x10\0\0\x01\0"),
            Some(ImageFormat::Ico)
        );
        assert_eq!(sniff(b"\0\0\x01\0\0\0\x10\x10\0\0\x01\0"), None, "no image in it");
        assert_eq!(sniff(b"\0\0\x02\0\x01\0\x10\x10\0\0\x01\0"), None, "a cursor");
        assert_eq!(sniff(b"<svg"), None);
        assert_eq!(sniff(&[0xFF, 0xD8]), None);
        assert_eq!(sniff_media_type(b"hello"), OCTET_STREAM);
        assert!(
            INPUT_FORMATS
                .iter()
                .all(|f| INPUT_FORMATS_TEXT.contains(name(*f)))
        );
        assert!(
            INPUT_FORMATS
                .iter()
                .all(|f| !media_type(*f).is_empty() && *f != ImageFormat::Unspecified)
        );
        assert!(is_input(ImageFormat::Avif) && is_input(ImageFormat::Heic));
        assert!(!is_input(ImageFormat::Unspecified));
    }
}
