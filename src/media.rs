//! Image formats recognised from their magic bytes, never from a name or a
//! declared content type.

use crate::pb::ImageFormat;

/// Media type for bytes that are not a recognised image.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// How many leading bytes [`sniff`] needs to recognise every format.
pub const SNIFF_LEN: usize = 12;

/// The image format whose signature starts `bytes`, if any.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    match bytes {
        [0xFF, 0xD8, 0xFF, ..] => Some(ImageFormat::Jpeg),
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some(ImageFormat::Png),
        [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some(ImageFormat::Gif),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some(ImageFormat::Webp),
        // An ISO-BMFF `ftyp` box whose major brand is AVIF (image or sequence).
        [
            _,
            _,
            _,
            _,
            b'f',
            b't',
            b'y',
            b'p',
            b'a',
            b'v',
            b'i',
            b'f' | b's',
            ..,
        ] => Some(ImageFormat::Avif),
        _ => None,
    }
}

/// The formats the optimizer decodes; anything else is refused before it
/// is stored.
pub const INPUT_FORMATS: [ImageFormat; 4] = [
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::Webp,
    ImageFormat::Gif,
];

/// [`INPUT_FORMATS`] as messages list them.
pub const INPUT_FORMATS_TEXT: &str = "JPEG, PNG, WebP or GIF";

/// Whether the optimizer can decode `format`.
pub fn is_input(format: ImageFormat) -> bool {
    INPUT_FORMATS.contains(&format)
}

/// The format's usual name, e.g. `AVIF`.
pub fn name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::Gif => "GIF",
        ImageFormat::Webp => "WebP",
        ImageFormat::Avif => "AVIF",
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
        assert_eq!(sniff(b"<svg"), None);
        assert_eq!(sniff(&[0xFF, 0xD8]), None);
        assert_eq!(sniff_media_type(b"hello"), OCTET_STREAM);
        assert!(
            INPUT_FORMATS
                .iter()
                .all(|f| INPUT_FORMATS_TEXT.contains(name(*f)))
        );
        assert!(!is_input(ImageFormat::Avif));
    }
}
