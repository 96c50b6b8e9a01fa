//! Metadata stripped by default, kept on request and then made safe.

use crate::*;

/// EXIF with orientation 6, a camera make, and a thumbnail in IFD1.
fn rich_exif() -> Vec<u8> {
    let be16 = |v: u16| v.to_be_bytes();
    let be32 = |v: u32| v.to_be_bytes();
    let entry = |tag: u16, kind: u16, count: u32, value: [u8; 4]| {
        [&be16(tag)[..], &be16(kind), &be32(count), &value].concat()
    };
    // Layout: header (8) | IFD0: 2 entries (2 + 24 + 4) | make (8) | IFD1: 2 entries (2 + 24 + 4) | thumbnail
    let make_at = 8 + 30;
    let ifd1_at = make_at + 8;
    let thumb_at = ifd1_at + 30;
    let thumbnail = b"THUMBNAIL-WITHOUT-WATERMARK";
    let mut tiff = b"MM\0*".to_vec();
    tiff.extend_from_slice(&be32(8));
    tiff.extend_from_slice(&be16(2));
    tiff.extend_from_slice(&entry(0x010F, 2, 7, be32(make_at as u32))); // Make
    tiff.extend_from_slice(&entry(0x0112, 3, 1, [0, 6, 0, 0])); // Orientation 6
    tiff.extend_from_slice(&be32(ifd1_at as u32));
    tiff.extend_from_slice(b"NWSCAM\0\0");
    tiff.extend_from_slice(&be16(2));
    tiff.extend_from_slice(&entry(0x0201, 4, 1, be32(thumb_at as u32)));
    tiff.extend_from_slice(&entry(0x0202, 4, 1, be32(thumbnail.len() as u32)));
    tiff.extend_from_slice(&be32(0));
    tiff.extend_from_slice(thumbnail);
    tiff
}

#[tokio::test]
async fn metadata_is_stripped_unless_kept_and_then_made_safe() {
    let rgb: Vec<u8> = (0..320 * 240).flat_map(|i| [(i % 320) as u8, 100, 150]).collect();
    let plain = jpeg_from_rgb(320, 240, &rgb);
    let exif = [&b"Exif\0\0"[..], &rich_exif()].concat();
    let mut input = plain[..2].to_vec();
    input.extend_from_slice(&[0xFF, 0xE1]);
    input.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
    input.extend_from_slice(&exif);
    input.extend_from_slice(&plain[2..]);

    let process = start(&[]);
    let mut client = client(&process).await;
    let contains = |bytes: &[u8], needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);

    let (header, stripped) = optimize(&mut client, OptimizeOptions::default(), &input)
        .await
        .unwrap();
    assert_eq!((header.width, header.height), (240, 320), "orientation 6 applied");
    assert!(!contains(&stripped, b"Exif\0\0") && !contains(&stripped, b"NWSCAM"));

    let keep = OptimizeOptions {
        keep_metadata: true,
        ..Default::default()
    };
    let (_, kept) = optimize(&mut client, keep.clone(), &input).await.unwrap();
    assert!(
        contains(&kept, b"Exif\0\0") && contains(&kept, b"NWSCAM"),
        "EXIF kept"
    );
    assert!(
        !contains(&kept, b"THUMBNAIL"),
        "the unwatermarked thumbnail is erased"
    );
    let mut decoder = image::codecs::jpeg::JpegDecoder::new(std::io::Cursor::new(&kept)).unwrap();
    use image::ImageDecoder as _;
    assert_eq!(
        decoder.orientation().unwrap(),
        image::metadata::Orientation::NoTransforms,
        "the pixels are upright, so the tag says so"
    );
    assert_eq!(decoded_size(&kept), (240, 320));

    // Other outputs never carry it.
    let (_, png) = optimize(
        &mut client,
        OptimizeOptions {
            format: ImageFormat::Png as i32,
            ..keep
        },
        &input,
    )
    .await
    .unwrap();
    assert!(!contains(&png, b"NWSCAM"));
}
