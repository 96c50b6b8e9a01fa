//! EXIF carried over on request (`keep_metadata`), for JPEG to JPEG only:
//! the source's EXIF block, with its orientation set to 1 (the pixels are
//! upright now) and its embedded thumbnail erased, since that thumbnail is
//! the original picture without the watermark.

/// The source JPEG's EXIF block, made safe to copy; `None` when there is
/// none or it cannot be read.
pub fn exif_for_output(source_jpeg: &[u8]) -> Option<Vec<u8>> {
    let mut payload = find_exif(source_jpeg)?.to_vec();
    let tiff = &mut payload[EXIF_HEADER.len()..];
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
    Some(payload)
}

/// Inserts an APP1 segment carrying `exif` (as returned by
/// [`exif_for_output`]) right after the output's SOI marker.
pub fn insert_exif(jpeg: Vec<u8>, exif: &[u8]) -> Vec<u8> {
    let Ok(length) = u16::try_from(exif.len() + 2) else {
        return jpeg; // cannot happen: it came from an APP1 segment
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
}
