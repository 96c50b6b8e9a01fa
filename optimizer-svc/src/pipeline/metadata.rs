//! EXIF carried over on request (`keep_metadata`) into a JPEG output: the
//! source's EXIF block (a JPEG's APP1 segment, a PNG's `eXIf` chunk or a
//! WebP's `EXIF` chunk), GPS included, with its orientation set to 1 (the
//! pixels are upright now) and its embedded thumbnail erased, since that
//! thumbnail is the original picture without the watermark. Nothing else
//! is carried: not XMP or IPTC, and not the ICC profile, since the pixels
//! were converted to sRGB, which an untagged JPEG means by convention.
//!
//! The containers are read here, not by the decoder: a few bounds-checked
//! steps over the chunk headers, no pixels decoded twice, and a malformed
//! container only means there is no EXIF to keep.

use nws_watermark::pb::ImageFormat;

/// The EXIF block of a `source` image, as the payload of a JPEG APP1
/// segment and made safe to copy; `None` when there is none, it cannot be
/// read, or it is too large for one APP1 segment.
pub fn exif_for_output(source: ImageFormat, input: &[u8]) -> Option<Vec<u8>> {
    let tiff = match source {
        ImageFormat::Jpeg => find_exif(input)?.get(EXIF_HEADER.len()..)?,
        // The chunk holds the TIFF block itself; some writers put the
        // APP1 header before it all the same.
        ImageFormat::Png => strip_exif_header(png_exif(input)?),
        ImageFormat::Webp => strip_exif_header(webp_exif(input)?),
        // Input-only formats: their EXIF is not carried over (yet).
        ImageFormat::Gif
        | ImageFormat::Avif
        | ImageFormat::Heic
        | ImageFormat::Bmp
        | ImageFormat::Tiff
        | ImageFormat::Ico
        | ImageFormat::Jxl
        | ImageFormat::Unspecified => return None,
    };
    if EXIF_HEADER.len() + tiff.len() > MAX_APP1_PAYLOAD {
        return None;
    }
    let mut payload = [EXIF_HEADER, tiff].concat();
    make_safe(&mut payload[EXIF_HEADER.len()..])?;
    Some(payload)
}

/// Sets the orientation to 1 and erases and unlinks the thumbnail (IFD1)
/// of a TIFF-structured EXIF block; `None` when the block is malformed.
fn make_safe(tiff: &mut [u8]) -> Option<()> {
    let order = ByteOrder::of(tiff)?;
    let ifd0 = order.u32(tiff, 4)? as usize;
    let next_ifd = for_each_entry(tiff, order, ifd0, |tiff, entry| {
        if order.u16(tiff, entry)? == ORIENTATION {
            order.put_u16(tiff, entry + 8, 1)?;
        }
        Some(())
    })?;
    // IFD1 describes the thumbnail: erase its bytes, then unlink it.
    let ifd1 = order.u32(tiff, next_ifd)? as usize;
    if ifd1 != 0 {
        let (mut start, mut length) = (None, None);
        for_each_entry(tiff, order, ifd1, |tiff, entry| {
            match order.u16(tiff, entry)? {
                THUMBNAIL_OFFSET => start = Some(order.u32(tiff, entry + 8)? as usize),
                THUMBNAIL_LENGTH => length = Some(order.u32(tiff, entry + 8)? as usize),
                _ => {}
            }
            Some(())
        })?;
        if let (Some(start), Some(length)) = (start, length) {
            tiff.get_mut(start..start.checked_add(length)?)?.fill(0);
        }
        order.put_u32(tiff, next_ifd, 0)?;
    }
    Some(())
}

/// Inserts an APP1 segment carrying `exif` (as returned by
/// [`exif_for_output`]) right after the output's SOI marker.
pub fn insert_exif(jpeg: Vec<u8>, exif: &[u8]) -> Vec<u8> {
    let Ok(length) = u16::try_from(exif.len() + 2) else {
        return jpeg; // cannot happen: exif_for_output refuses larger blocks
    };
    let mut out = Vec::with_capacity(jpeg.len() + exif.len() + 4);
    out.extend_from_slice(&jpeg[..2]);
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(exif);
    out.extend_from_slice(&jpeg[2..]);
    out
}

const EXIF_HEADER: &[u8] = b"Exif\0\0";
/// An APP1 segment's length field counts itself: 65535 − 2 bytes remain.
const MAX_APP1_PAYLOAD: usize = u16::MAX as usize - 2;
const ORIENTATION: u16 = 0x0112;
const THUMBNAIL_OFFSET: u16 = 0x0201;
const THUMBNAIL_LENGTH: u16 = 0x0202;

/// The EXIF orientation of a JPEG, when it has a readable one.
pub fn exif_orientation(jpeg: &[u8]) -> Option<image::metadata::Orientation> {
    let payload = find_exif(jpeg)?;
    let tiff = payload.get(EXIF_HEADER.len()..)?;
    let order = ByteOrder::of(tiff)?;
    let ifd0 = order.u32(tiff, 4)? as usize;
    let count = usize::from(order.u16(tiff, ifd0)?);
    (0..count)
        .map(|i| ifd0 + 2 + 12 * i)
        .find(|entry| order.u16(tiff, *entry) == Some(ORIENTATION))
        .and_then(|entry| order.u16(tiff, entry + 8))
        .and_then(|value| image::metadata::Orientation::from_exif(u8::try_from(value).ok()?))
}

/// The payload of the first APP1 segment that holds EXIF, before the scan.
fn find_exif(jpeg: &[u8]) -> Option<&[u8]> {
    segments(jpeg)
        .find_map(|(marker, payload)| (marker == 0xE1 && payload.starts_with(EXIF_HEADER)).then_some(payload))
}

/// The marker segments of a JPEG before its first scan, as libjpeg reads
/// them: bytes that are not a marker between two segments (junk some
/// writers leave) are skipped, as are 0xFF fill bytes.
fn segments(jpeg: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut at = 2; // after SOI
    std::iter::from_fn(move || {
        loop {
            // libjpeg's next_marker: skip to a 0xFF, then past fill bytes.
            while at < jpeg.len() && jpeg[at] != 0xFF {
                at += 1;
            }
            while at + 1 < jpeg.len() && jpeg[at + 1] == 0xFF {
                at += 1;
            }
            let marker = *jpeg.get(at + 1)?;
            match marker {
                0xDA | 0xD9 => return None,           // start of scan or end: no more metadata
                0x00 | 0x01 | 0xD0..=0xD7 => at += 2, // not a segment
                _ => {
                    let length = usize::from(u16::from_be_bytes([*jpeg.get(at + 2)?, *jpeg.get(at + 3)?]));
                    let payload = jpeg.get(at + 4..(at + 2 + length).max(at + 4))?;
                    at += 2 + length.max(2);
                    return Some((marker, payload));
                }
            }
        }
    })
}

fn strip_exif_header(block: &[u8]) -> &[u8] {
    block.strip_prefix(EXIF_HEADER).unwrap_or(block)
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The data of a PNG's `eXIf` chunk. Only chunks before the image data
/// count, as for the decoder that read the orientation from it.
fn png_exif(png: &[u8]) -> Option<&[u8]> {
    let mut at = PNG_SIGNATURE.len();
    if !png.starts_with(PNG_SIGNATURE) {
        return None;
    }
    loop {
        // length (4), type (4), data, CRC (4)
        let length = usize::try_from(u32::from_be_bytes(png.get(at..at + 4)?.try_into().ok()?)).ok()?;
        let kind = png.get(at + 4..at + 8)?;
        let data_end = (at + 8).checked_add(length)?;
        let data = png.get(at + 8..data_end)?;
        match kind {
            b"eXIf" => return Some(data),
            b"IDAT" | b"IEND" => return None,
            _ => at = data_end.checked_add(4)?,
        }
    }
}

/// The data of an extended WebP's first `EXIF` chunk. A simple WebP (no
/// `VP8X` chunk first) has no metadata, and the decoder ignores chunks past
/// the RIFF size, so they do not count here either.
fn webp_exif(webp: &[u8]) -> Option<&[u8]> {
    if webp.get(0..4)? != b"RIFF" || webp.get(8..12)? != b"WEBP" {
        return None;
    }
    let riff_size = usize::try_from(u32::from_le_bytes(webp.get(4..8)?.try_into().ok()?)).ok()?;
    let webp = &webp[..webp.len().min(riff_size.saturating_add(8))];
    let mut chunks = riff_chunks(webp);
    let (first, _) = chunks.next()?;
    if &first != b"VP8X" {
        return None;
    }
    chunks.find_map(|(fourcc, data)| (&fourcc == b"EXIF").then_some(data))
}

/// The chunks of a RIFF file after its 12-byte header, up to the first one
/// that does not fit inside the data.
fn riff_chunks(riff: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    let mut at = 12;
    std::iter::from_fn(move || {
        let fourcc: [u8; 4] = riff.get(at..at + 4)?.try_into().ok()?;
        let size = usize::try_from(u32::from_le_bytes(riff.get(at + 4..at + 8)?.try_into().ok()?)).ok()?;
        let data_end = (at + 8).checked_add(size)?;
        let data = riff.get(at + 8..data_end)?;
        at = data_end + (size & 1); // chunks are padded to an even length
        Some((fourcc, data))
    })
}

/// Calls `visit` with the offset of each 12-byte entry of the IFD at
/// `ifd`; returns the offset of the IFD's next-IFD link.
fn for_each_entry(
    tiff: &mut [u8],
    order: ByteOrder,
    ifd: usize,
    mut visit: impl FnMut(&mut [u8], usize) -> Option<()>,
) -> Option<usize> {
    let count = usize::from(order.u16(tiff, ifd)?);
    for i in 0..count {
        visit(tiff, ifd + 2 + 12 * i)?;
    }
    let next = ifd + 2 + 12 * count;
    order.u32(tiff, next)?; // the link must be inside the block
    Some(next)
}

#[derive(Clone, Copy)]
enum ByteOrder {
    Little,
    Big,
}

impl ByteOrder {
    fn of(tiff: &[u8]) -> Option<Self> {
        match tiff.get(0..4)? {
            [b'I', b'I', 42, 0] => Some(Self::Little),
            [b'M', b'M', 0, 42] => Some(Self::Big),
            _ => None,
        }
    }

    fn u16(self, bytes: &[u8], at: usize) -> Option<u16> {
        let b: [u8; 2] = bytes.get(at..at + 2)?.try_into().ok()?;
        Some(match self {
            Self::Little => u16::from_le_bytes(b),
            Self::Big => u16::from_be_bytes(b),
        })
    }

    fn u32(self, bytes: &[u8], at: usize) -> Option<u32> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(match self {
            Self::Little => u32::from_le_bytes(b),
            Self::Big => u32::from_be_bytes(b),
        })
    }

    fn put_u16(self, bytes: &mut [u8], at: usize, value: u16) -> Option<()> {
        let b = match self {
            Self::Little => value.to_le_bytes(),
            Self::Big => value.to_be_bytes(),
        };
        bytes.get_mut(at..at + 2)?.copy_from_slice(&b);
        Some(())
    }

    fn put_u32(self, bytes: &mut [u8], at: usize, value: u32) -> Option<()> {
        let b = match self {
            Self::Little => value.to_le_bytes(),
            Self::Big => value.to_be_bytes(),
        };
        bytes.get_mut(at..at + 4)?.copy_from_slice(&b);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use image::metadata::Orientation;

    use super::*;

    /// SOI, an APP1 EXIF segment with IFD0 holding one orientation entry,
    /// then `rest`.
    fn with_orientation(value: u16, junk: &[u8]) -> Vec<u8> {
        let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
        tiff.extend_from_slice(&1u16.to_be_bytes());
        tiff.extend_from_slice(&ORIENTATION.to_be_bytes());
        tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_be_bytes());
        tiff.extend_from_slice(&value.to_be_bytes());
        tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // padding, next IFD = 0
        let payload = [EXIF_HEADER, &tiff].concat();
        let mut jpeg = vec![0xFF, 0xD8];
        jpeg.extend_from_slice(junk);
        jpeg.extend_from_slice(&[0xFF, 0xE1]);
        jpeg.extend_from_slice(&u16::try_from(payload.len() + 2).unwrap().to_be_bytes());
        jpeg.extend_from_slice(&payload);
        jpeg.extend_from_slice(&[0xFF, 0xDA, 0, 2, 0xFF, 0xD9]);
        jpeg
    }

    #[test]
    fn orientation_is_read_past_junk_and_fill_bytes() {
        assert_eq!(
            exif_orientation(&with_orientation(6, &[])),
            Some(Orientation::Rotate90)
        );
        assert_eq!(
            exif_orientation(&with_orientation(3, &[0x00, 0x42, 0xFF, 0xFF])),
            Some(Orientation::Rotate180)
        );
        assert_eq!(
            exif_orientation(&with_orientation(9, &[])),
            None,
            "not an orientation"
        );
        assert_eq!(exif_orientation(&[0xFF, 0xD8, 0xFF, 0xDA]), None);
        assert_eq!(
            exif_orientation(&[0xFF, 0xD8, 0xFF, 0xE1, 0xFF]),
            None,
            "cut short"
        );
    }

    const THUMBNAIL: &[u8] = b"THUMB";

    /// A little-endian EXIF block: IFD0 with `orientation`, linked to an
    /// IFD1 that points at a 5-byte thumbnail, or not linked with the
    /// thumbnail bytes zeroed (what [`make_safe`] should leave).
    fn tiff(orientation: u16, safe: bool) -> Vec<u8> {
        let entry = |tag: u16, kind: u16, value: u32| {
            [
                &tag.to_le_bytes()[..],
                &kind.to_le_bytes(),
                &1u32.to_le_bytes(),
                &value.to_le_bytes(),
            ]
            .concat()
        };
        let (ifd1_at, thumbnail_at) = (8 + 18, 8 + 18 + 30);
        let mut tiff = b"II\x2a\0\x08\0\0\0".to_vec();
        tiff.extend_from_slice(&1u16.to_le_bytes());
        tiff.extend_from_slice(&entry(ORIENTATION, 3, u32::from(orientation)));
        tiff.extend_from_slice(&(if safe { 0u32 } else { ifd1_at }).to_le_bytes());
        tiff.extend_from_slice(&2u16.to_le_bytes());
        tiff.extend_from_slice(&entry(THUMBNAIL_OFFSET, 4, thumbnail_at));
        tiff.extend_from_slice(&entry(THUMBNAIL_LENGTH, 4, THUMBNAIL.len() as u32));
        tiff.extend_from_slice(&0u32.to_le_bytes());
        match safe {
            true => tiff.extend_from_slice(&[0; THUMBNAIL.len()]),
            false => tiff.extend_from_slice(THUMBNAIL),
        }
        tiff
    }

    /// A PNG signature and these chunks (CRCs are not checked here).
    fn png(chunks: &[(&[u8; 4], &[u8])]) -> Vec<u8> {
        let mut png = PNG_SIGNATURE.to_vec();
        for (kind, data) in chunks {
            png.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
            png.extend_from_slice(*kind);
            png.extend_from_slice(data);
            png.extend_from_slice(&[0; 4]);
        }
        png
    }

    /// A RIFF/WEBP file of these chunks, each padded to an even length.
    fn webp(chunks: &[(&[u8; 4], &[u8])]) -> Vec<u8> {
        let mut body = b"WEBP".to_vec();
        for (fourcc, data) in chunks {
            body.extend_from_slice(*fourcc);
            body.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
            body.extend_from_slice(data);
            if data.len() % 2 == 1 {
                body.push(0);
            }
        }
        [
            &b"RIFF"[..],
            &u32::try_from(body.len()).unwrap().to_le_bytes(),
            &body,
        ]
        .concat()
    }

    fn jpeg(app1: &[u8]) -> Vec<u8> {
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE1];
        jpeg.extend_from_slice(&u16::try_from(app1.len() + 2).unwrap().to_be_bytes());
        jpeg.extend_from_slice(app1);
        jpeg.extend_from_slice(&[0xFF, 0xDA, 0, 2, 0xFF, 0xD9]);
        jpeg
    }

    const VP8X: &[u8] = &[0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0]; // EXIF flag, 1×1 canvas
    const IMAGE_DATA: &[u8] = b"pixels";

    /// The same EXIF block in each container: JPEG APP1, PNG eXIf (raw TIFF,
    /// or after an APP1 header as some writers do), WebP EXIF.
    fn containers(tiff: &[u8]) -> Vec<(ImageFormat, Vec<u8>)> {
        let with_header = [EXIF_HEADER, tiff].concat();
        vec![
            (ImageFormat::Jpeg, jpeg(&with_header)),
            (
                ImageFormat::Png,
                png(&[
                    (b"IHDR", &[0; 13]),
                    (b"eXIf", tiff),
                    (b"IDAT", IMAGE_DATA),
                    (b"IEND", &[]),
                ]),
            ),
            (
                ImageFormat::Png,
                png(&[
                    (b"IHDR", &[0; 13]),
                    (b"eXIf", &with_header),
                    (b"IDAT", IMAGE_DATA),
                ]),
            ),
            (
                ImageFormat::Webp,
                webp(&[(b"VP8X", VP8X), (b"VP8L", IMAGE_DATA), (b"EXIF", tiff)]),
            ),
            (
                ImageFormat::Webp,
                webp(&[
                    (b"VP8X", VP8X),
                    (b"ICCP", b"odd"),
                    (b"VP8L", IMAGE_DATA),
                    (b"EXIF", &with_header),
                ]),
            ),
        ]
    }

    #[test]
    fn exif_is_found_in_jpeg_png_and_webp_and_made_safe() {
        let safe = [EXIF_HEADER, &tiff(1, true)].concat();
        for (format, input) in containers(&tiff(6, false)) {
            assert_eq!(
                exif_for_output(format, &input).as_deref(),
                Some(&safe[..]),
                "{format:?}: orientation 1, thumbnail erased and unlinked"
            );
        }
        assert_eq!(
            exif_for_output(ImageFormat::Gif, b"GIF89a"),
            None,
            "GIF has no EXIF"
        );
    }

    #[test]
    fn png_exif_counts_only_before_the_image_data() {
        let tiff = tiff(6, false);
        let after = png(&[
            (b"IHDR", &[0; 13]),
            (b"IDAT", IMAGE_DATA),
            (b"eXIf", &tiff),
            (b"IEND", &[]),
        ]);
        assert_eq!(png_exif(&after), None, "after IDAT");
        let after_end = png(&[(b"IHDR", &[0; 13]), (b"IEND", &[]), (b"eXIf", &tiff)]);
        assert_eq!(png_exif(&after_end), None, "after IEND");
        let mut not_png = png(&[(b"eXIf", &tiff)]);
        not_png[1] = b'Q';
        assert_eq!(png_exif(&not_png), None, "no PNG signature");
        assert_eq!(png_exif(&png(&[(b"IHDR", &[0; 13])])), None, "no chunk at all");
    }

    #[test]
    fn webp_exif_counts_only_in_extended_files_within_the_riff_size() {
        let tiff = tiff(6, false);
        let simple = webp(&[(b"VP8L", IMAGE_DATA), (b"EXIF", &tiff)]);
        assert_eq!(webp_exif(&simple), None, "no VP8X chunk first");
        let mut past_riff = webp(&[(b"VP8X", VP8X), (b"VP8L", IMAGE_DATA)]);
        past_riff.extend_from_slice(b"EXIF");
        past_riff.extend_from_slice(&u32::try_from(tiff.len()).unwrap().to_le_bytes());
        past_riff.extend_from_slice(&tiff);
        assert_eq!(webp_exif(&past_riff), None, "after the RIFF size");
        let mut not_webp = webp(&[(b"VP8X", VP8X), (b"EXIF", &tiff)]);
        not_webp[8..12].copy_from_slice(b"WAVE");
        assert_eq!(webp_exif(&not_webp), None, "not WEBP");
    }

    #[test]
    fn chunks_claiming_more_than_the_data_give_no_exif() {
        let tiff = tiff(6, false);
        // PNG: IHDR claims 4 GB; eXIf claims one byte more than it has.
        let mut huge = png(&[(b"IHDR", &[0; 13]), (b"eXIf", &tiff)]);
        huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(png_exif(&huge), None);
        let mut long = png(&[(b"IHDR", &[0; 13]), (b"eXIf", &tiff)]);
        let length_at = 8 + 12 + 13;
        long[length_at..length_at + 4].copy_from_slice(&u32::try_from(tiff.len() + 5).unwrap().to_be_bytes());
        assert_eq!(png_exif(&long), None);
        // WebP: a chunk before EXIF claims 4 GB, and the RIFF size too.
        let mut huge = webp(&[(b"VP8X", VP8X), (b"VP8L", IMAGE_DATA), (b"EXIF", &tiff)]);
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let vp8l_size_at = 12 + 8 + VP8X.len() + 4;
        huge[vp8l_size_at..vp8l_size_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(webp_exif(&huge), None);
    }

    #[test]
    fn truncated_or_damaged_containers_never_panic() {
        let safe = [EXIF_HEADER, &tiff(1, true)].concat();
        for (format, input) in containers(&tiff(6, false)) {
            // Cut anywhere: the EXIF is whole and made safe, or there is none.
            for end in 0..input.len() {
                let kept = exif_for_output(format, &input[..end]);
                assert!(
                    kept.is_none() || kept.as_deref() == Some(&safe[..]),
                    "{format:?} cut at {end}: {kept:?}"
                );
            }
            // Any one byte set to 0x00 or 0xFF: no panic, whatever comes out.
            for at in 0..input.len() {
                for value in [0x00, 0xFF] {
                    let mut damaged = input.clone();
                    damaged[at] = value;
                    let _ = exif_for_output(format, &damaged);
                }
            }
        }
    }

    #[test]
    fn unreadable_exif_blocks_are_not_kept() {
        let mut wrong_order = tiff(6, false);
        wrong_order[..2].copy_from_slice(b"XX");
        let mut ifd0_outside = tiff(6, false);
        ifd0_outside[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut ifd1_outside = tiff(6, false);
        ifd1_outside[8 + 14..8 + 18].copy_from_slice(&10_000u32.to_le_bytes());
        let mut thumbnail_outside = tiff(6, false);
        thumbnail_outside[8 + 18 + 2 + 8..8 + 18 + 2 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        for (name, block) in [
            ("byte order", wrong_order),
            ("IFD0 offset", ifd0_outside),
            ("IFD1 offset", ifd1_outside),
            ("thumbnail offset", thumbnail_outside),
        ] {
            for (format, input) in containers(&block) {
                assert_eq!(exif_for_output(format, &input), None, "{name} in {format:?}");
            }
        }
    }

    #[test]
    fn exif_too_large_for_one_app1_segment_is_not_kept() {
        // Room after the block is allowed: pad it to the exact limit.
        let fits = |extra: usize| {
            let mut block = tiff(6, false);
            block.resize(MAX_APP1_PAYLOAD - EXIF_HEADER.len() + extra, 0);
            png(&[(b"IHDR", &[0; 13]), (b"eXIf", &block), (b"IDAT", IMAGE_DATA)])
        };
        let kept = exif_for_output(ImageFormat::Png, &fits(0)).expect("at the limit");
        assert_eq!(kept.len(), MAX_APP1_PAYLOAD);
        let output = insert_exif(vec![0xFF, 0xD8, 0xFF, 0xD9], &kept);
        assert_eq!(output[4..6], [0xFF, 0xFF], "APP1 length 65535");
        assert_eq!(exif_for_output(ImageFormat::Png, &fits(1)), None, "one byte over");
    }
}
