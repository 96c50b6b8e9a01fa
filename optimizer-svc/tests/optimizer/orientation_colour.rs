//! EXIF orientation and ICC colour: what a viewer shows is what comes out.

use crate::*;

#[tokio::test]
async fn exif_orientation_is_applied_and_metadata_stripped() {
    let process = start(&[]);
    let mut client = client(&process).await;
    let input = test_image("picos_orient6.jpg");
    let (header, bytes) = optimize(&mut client, OptimizeOptions::default(), &input)
        .await
        .unwrap();
    // Stored 2448×3264 with orientation 6: displayed landscape.
    assert_eq!((header.source_width, header.source_height), (3264, 2448));
    assert_eq!((header.width, header.height), (1440, 1080));
    assert!(
        !bytes.windows(6).any(|w| w == b"Exif\0\0"),
        "EXIF must not reach the output"
    );
}

/// Inserts an EXIF block carrying only `orientation` after the SOI marker.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0*\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one IFD entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // one value
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // padding, no next IFD
    let payload = [&b"Exif\0\0"[..], &tiff].concat();
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[tokio::test]
async fn all_eight_exif_orientations_are_applied() {
    // Four coloured quadrants, stored 400×240: red, green / blue, yellow.
    let (width, height) = (400usize, 240usize);
    let colours = [[220u8, 30, 30], [30, 200, 30], [30, 30, 220], [230, 220, 40]];
    let rgb: Vec<u8> = (0..width * height)
        .flat_map(|i| {
            let (x, y) = (i % width, i / width);
            colours[usize::from(y >= height / 2) * 2 + usize::from(x >= width / 2)]
        })
        .collect();
    let stored = jpeg_from_rgb(width, height, &rgb);
    let process = start(&[]);
    let mut client = client(&process).await;
    for orientation in 1..=8u8 {
        let input = with_exif_orientation(&stored, u16::from(orientation));
        let (header, bytes) = optimize(&mut client, OptimizeOptions::default(), &input)
            .await
            .unwrap_or_else(|s| panic!("orientation {orientation}: {s:?}"));
        let mut expected = image::load_from_memory(&stored).unwrap();
        expected.apply_orientation(image::metadata::Orientation::from_exif(orientation).unwrap());
        let expected = expected.to_rgb8();
        let output = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(
            output.dimensions(),
            expected.dimensions(),
            "orientation {orientation}"
        );
        assert_eq!((header.width, header.height), expected.dimensions());
        // Three quadrant centres; the fourth holds the watermark.
        let (w, h) = output.dimensions();
        for (x, y) in [(w / 4, h / 4), (3 * w / 4, h / 4), (w / 4, 3 * h / 4)] {
            let (got, want) = (mean_rgb(&output, x, y, 16), mean_rgb(&expected, x, y, 16));
            assert!(
                close(got, want, 12.0),
                "orientation {orientation} at ({x}, {y}): {got:?} vs {want:?}"
            );
        }
    }
}

/// A minimal ICC v2 RGB display profile: the given primaries (XYZ, D50),
/// gamma 2.2 curves, D50 white.
pub(crate) fn icc_profile(primaries: [[f64; 3]; 3]) -> Vec<u8> {
    let s15 = |v: f64| ((v * 65536.0).round() as i32).to_be_bytes();
    let xyz = |v: [f64; 3]| {
        let mut tag = b"XYZ \0\0\0\0".to_vec();
        for c in v {
            tag.extend_from_slice(&s15(c));
        }
        tag
    };
    let curve = {
        let mut tag = b"curv\0\0\0\0".to_vec();
        tag.extend_from_slice(&1u32.to_be_bytes());
        tag.extend_from_slice(&[0x02, 0x33, 0, 0]); // gamma 2.2 (u8Fixed8), padded
        tag
    };
    let tags: Vec<(&[u8; 4], Vec<u8>)> = vec![
        (b"rXYZ", xyz(primaries[0])),
        (b"gXYZ", xyz(primaries[1])),
        (b"bXYZ", xyz(primaries[2])),
        (b"wtpt", xyz([0.9642, 1.0, 0.8249])),
        (b"rTRC", curve.clone()),
        (b"gTRC", curve.clone()),
        (b"bTRC", curve),
    ];
    let mut data = Vec::new();
    let mut table = (tags.len() as u32).to_be_bytes().to_vec();
    let data_start = 128 + 4 + 12 * tags.len();
    for (signature, tag) in &tags {
        table.extend_from_slice(*signature);
        table.extend_from_slice(&((data_start + data.len()) as u32).to_be_bytes());
        table.extend_from_slice(&(tag.len() as u32).to_be_bytes());
        data.extend_from_slice(tag);
        while data.len() % 4 != 0 {
            data.push(0);
        }
    }
    let size = data_start + data.len();
    let mut header = vec![0u8; 128];
    header[0..4].copy_from_slice(&(size as u32).to_be_bytes());
    header[8..12].copy_from_slice(&[2, 0x10, 0, 0]);
    header[12..16].copy_from_slice(b"mntr");
    header[16..20].copy_from_slice(b"RGB ");
    header[20..24].copy_from_slice(b"XYZ ");
    header[36..40].copy_from_slice(b"acsp");
    for (i, c) in [0.9642, 1.0, 0.8249].into_iter().enumerate() {
        header[68 + 4 * i..72 + 4 * i].copy_from_slice(&s15(c));
    }
    [header, table, data].concat()
}

/// Inserts `icc` as an APP2 ICC_PROFILE segment after the SOI marker.
pub(crate) fn with_icc(jpeg: &[u8], icc: &[u8]) -> Vec<u8> {
    let payload = [&b"ICC_PROFILE\0\x01\x01"[..], icc].concat();
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE2]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[tokio::test]
async fn icc_tagged_images_are_converted_to_srgb() {
    // sRGB's own primaries (D50), and the same with red and blue swapped:
    // in the second, a "red" pixel means sRGB blue.
    let red = [0.4361, 0.2225, 0.0139];
    let green = [0.3851, 0.7169, 0.0971];
    let blue = [0.1431, 0.0606, 0.7141];
    let srgb_like = icc_profile([red, green, blue]);
    let swapped = icc_profile([blue, green, red]);
    let rgb: Vec<u8> = (0..400 * 300).flat_map(|_| [230u8, 20, 20]).collect();
    let plain = jpeg_from_rgb(400, 300, &rgb);

    let process = start(&[]);
    let mut client = client(&process).await;
    let centre = |bytes: &[u8]| {
        let image = image::load_from_memory(bytes).unwrap().to_rgb8();
        mean_rgb(&image, 100, 75, 16)
    };
    let (_, untagged) = optimize(&mut client, OptimizeOptions::default(), &plain)
        .await
        .unwrap();
    let (_, tagged_srgb) = optimize(
        &mut client,
        OptimizeOptions::default(),
        &with_icc(&plain, &srgb_like),
    )
    .await
    .unwrap();
    let (_, tagged_swapped) = optimize(
        &mut client,
        OptimizeOptions::default(),
        &with_icc(&plain, &swapped),
    )
    .await
    .unwrap();
    let (untagged, tagged_srgb, tagged_swapped) =
        (centre(&untagged), centre(&tagged_srgb), centre(&tagged_swapped));
    assert!(
        close(untagged, tagged_srgb, 6.0),
        "{untagged:?} vs {tagged_srgb:?}"
    );
    assert!(
        tagged_swapped[2] > 180.0 && tagged_swapped[0] < 80.0,
        "red in the swapped profile is sRGB blue: {tagged_swapped:?}"
    );
}
