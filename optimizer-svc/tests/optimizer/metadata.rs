//! Metadata: stripped by default; on request (`keep_metadata`) the source's
//! EXIF is kept in a JPEG output, GPS included, and made safe.
//!
//! A matrix: the same picture as JPEG, PNG and WebP, each carrying EXIF
//! (GPS IFD, orientation, make, IFD1 thumbnail), XMP, IPTC (not in WebP,
//! which has no standard place for it) and a non-sRGB ICC profile, sent to
//! each output (JPEG, PNG, WebP, AVIF) with keep_metadata off and on. Every
//! input is first shown to carry everything the outputs are checked for,
//! by the same inspectors and by the `image` crate's own readers.

use std::{borrow::Cow, io::Cursor};

use image::{ExtendedColorType, ImageDecoder as _, metadata::Orientation};
use nws_watermark::options::Options;

use crate::{
    orientation_colour::{icc_profile, with_icc},
    *,
};

/// Stored landscape; EXIF orientation 6 shows it portrait.
const STORED: (u32, u32) = (320, 240);
const DISPLAYED: (u32, u32) = (240, 320);
/// Red in the source profile: sRGB blue once converted (see [`swapped_icc`]).
const RED: [u8; 3] = [230, 20, 20];

const MAKE: &[u8] = b"NWSCAM";
const GPS_MARKER: &[u8] = b"NWS-GPS-MARKER";
const THUMBNAIL: &[u8] = b"THUMBNAIL-WITHOUT-WATERMARK";
const XMP_MARKER: &[u8] = b"NWS-XMP-MARKER";
const IPTC_MARKER: &[u8] = b"NWS-IPTC-MARKER";
const XMP_NAMESPACE: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";
const PNG_XMP_KEYWORD: &str = "XML:com.adobe.xmp";
const PNG_IPTC_KEYWORD: &str = "Raw profile type iptc";
/// The signature every ICC profile has at offset 36.
const ICC_SIGNATURE: &[u8] = b"acsp";

/// sRGB's primaries with red and blue swapped: a "red" pixel is sRGB blue.
fn swapped_icc() -> Vec<u8> {
    let red = [0.4361, 0.2225, 0.0139];
    let green = [0.3851, 0.7169, 0.0971];
    let blue = [0.1431, 0.0606, 0.7141];
    icc_profile([blue, green, red])
}

/// A big-endian EXIF block (TIFF structure, no APP1 header): IFD0 with
/// Make, Orientation and a GPSInfo pointer; a GPS IFD with version,
/// latitude and a map datum holding [`GPS_MARKER`]; an IFD1 thumbnail.
/// `safe` gives what the optimizer should write instead: orientation 1,
/// IFD1 unlinked, thumbnail bytes zeroed, everything else as it was.
fn exif_tiff(safe: bool) -> Vec<u8> {
    let be16 = |v: u16| v.to_be_bytes();
    let be32 = |v: u32| v.to_be_bytes();
    let at = |offset: usize| be32(u32::try_from(offset).unwrap());
    let entry = |tag: u16, kind: u16, count: u32, value: [u8; 4]| {
        [&be16(tag)[..], &be16(kind), &be32(count), &value].concat()
    };
    let ifd = |entries: usize| 2 + 12 * entries + 4;
    let (make, datum) = (b"NWSCAM\0\0", b"NWS-GPS-MARKER\0\0");
    let make_at = 8 + ifd(3);
    let gps_at = make_at + make.len();
    let latitude_at = gps_at + ifd(4);
    let datum_at = latitude_at + 3 * 8;
    let ifd1_at = datum_at + datum.len();
    let thumbnail_at = ifd1_at + ifd(2);
    let orientation = if safe { 1 } else { 6 };

    let mut tiff = b"MM\0*".to_vec();
    tiff.extend(be32(8));
    tiff.extend(be16(3));
    tiff.extend(entry(0x010F, 2, 7, at(make_at))); // Make, ASCII
    tiff.extend(entry(0x0112, 3, 1, [0, orientation, 0, 0])); // Orientation, SHORT
    tiff.extend(entry(0x8825, 4, 1, at(gps_at))); // GPSInfo IFD pointer
    tiff.extend(if safe { be32(0) } else { at(ifd1_at) });
    tiff.extend(make);
    tiff.extend(be16(4));
    tiff.extend(entry(0x0000, 1, 4, [2, 3, 0, 0])); // GPSVersionID
    tiff.extend(entry(0x0001, 2, 2, *b"N\0\0\0")); // GPSLatitudeRef
    tiff.extend(entry(0x0002, 5, 3, at(latitude_at))); // GPSLatitude, 3 RATIONAL
    tiff.extend(entry(0x0012, 2, 15, at(datum_at))); // GPSMapDatum, ASCII
    tiff.extend(be32(0));
    for (numerator, denominator) in [(52, 1), (31, 1), (1234, 100)] {
        tiff.extend(be32(numerator));
        tiff.extend(be32(denominator));
    }
    tiff.extend(datum);
    tiff.extend(be16(2));
    tiff.extend(entry(0x0201, 4, 1, at(thumbnail_at))); // JPEGInterchangeFormat
    tiff.extend(entry(0x0202, 4, 1, at(THUMBNAIL.len()))); // …Length
    tiff.extend(be32(0));
    if safe {
        tiff.extend(vec![0; THUMBNAIL.len()]);
    } else {
        tiff.extend(THUMBNAIL);
    }
    assert_eq!(tiff.len(), thumbnail_at + THUMBNAIL.len());
    tiff
}

/// An XMP packet with [`XMP_MARKER`] (and a GPS position, as phones write).
fn xmp() -> String {
    let marker = std::str::from_utf8(XMP_MARKER).unwrap();
    format!(
        "<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\
         <x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\
         <rdf:Description rdf:about=\"\" xmlns:dc=\"http://purl.org/dc/elements/1.1/\" \
         xmlns:exif=\"http://ns.adobe.com/exif/1.0/\" exif:GPSLatitude=\"52,31.2N\">\
         <dc:description>{marker}</dc:description></rdf:Description></rdf:RDF></x:xmpmeta>\
         <?xpacket end=\"w\"?>"
    )
}

/// IPTC IIM: record version, then a caption holding [`IPTC_MARKER`].
fn iptc_iim() -> Vec<u8> {
    let dataset = |number: u8, data: &[u8]| {
        [
            &[0x1C, 2, number][..],
            &u16::try_from(data.len()).unwrap().to_be_bytes(),
            data,
        ]
        .concat()
    };
    [dataset(0, &[0, 4]), dataset(120, IPTC_MARKER)].concat()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn picture() -> Vec<u8> {
    (0..STORED.0 * STORED.1).flat_map(|_| RED).collect()
}

/// APP1 EXIF, APP1 XMP, APP13 Photoshop IRB with an IPTC resource (0x0404),
/// and APP2 ICC_PROFILE when `icc` is given.
fn jpeg_input(icc: Option<&[u8]>) -> Vec<u8> {
    let (width, height) = (STORED.0 as usize, STORED.1 as usize);
    let plain = jpeg_from_rgb(width, height, &picture());
    let plain = match icc {
        Some(icc) => with_icc(&plain, icc),
        None => plain,
    };
    let iim = iptc_iim();
    let mut irb = b"Photoshop 3.0\0".to_vec();
    irb.extend(b"8BIM");
    irb.extend(0x0404u16.to_be_bytes());
    irb.extend([0, 0]); // empty name, padded to even
    irb.extend(u32::try_from(iim.len()).unwrap().to_be_bytes());
    irb.extend(&iim);
    if iim.len() % 2 == 1 {
        irb.push(0);
    }
    let segments = [
        (0xE1, [&b"Exif\0\0"[..], &exif_tiff(false)].concat()),
        (0xE1, [XMP_NAMESPACE, xmp().as_bytes()].concat()),
        (0xED, irb),
    ];
    let mut out = plain[..2].to_vec();
    for (marker, payload) in segments {
        out.extend([0xFF, marker]);
        out.extend(u16::try_from(payload.len() + 2).unwrap().to_be_bytes());
        out.extend(payload);
    }
    out.extend(&plain[2..]);
    out
}

/// eXIf, iCCP (zlib, by the `png` crate) when `icc` is given, iTXt XMP and
/// zTXt "Raw profile type iptc" (ImageMagick's form: hex in lines).
fn png_input(icc: Option<&[u8]>) -> Vec<u8> {
    let mut info = png::Info::with_size(STORED.0, STORED.1);
    info.color_type = png::ColorType::Rgb;
    info.bit_depth = png::BitDepth::Eight;
    info.exif_metadata = Some(Cow::Owned(exif_tiff(false)));
    info.icc_profile = icc.map(|icc| Cow::Owned(icc.to_vec()));
    let iim = iptc_iim();
    let mut raw_profile = format!("\niptc\n{:8}\n", iim.len());
    for line in hex(&iim).as_bytes().chunks(72) {
        raw_profile.push_str(std::str::from_utf8(line).unwrap());
        raw_profile.push('\n');
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::with_info(&mut out, info).unwrap();
    encoder.add_itxt_chunk(PNG_XMP_KEYWORD.into(), xmp()).unwrap();
    encoder
        .add_ztxt_chunk(PNG_IPTC_KEYWORD.into(), raw_profile)
        .unwrap();
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&picture()).unwrap();
    writer.finish().unwrap();
    out
}

/// An extended WebP built around the `image` encoder's lossless VP8L
/// chunk: VP8X, ICCP when `icc` is given, VP8L, EXIF, "XMP ". WebP defines
/// no IPTC chunk: IPTC in WebP lives in its XMP, so there is none here.
fn webp_input(icc: Option<&[u8]>) -> Vec<u8> {
    let mut lossless = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut lossless)
        .encode(&picture(), STORED.0, STORED.1, ExtendedColorType::Rgb8)
        .unwrap();
    let chunks = riff_chunks(&lossless);
    assert_eq!(chunks.len(), 1, "a simple lossless WebP");
    let (fourcc, vp8l) = &chunks[0];
    assert_eq!(fourcc, b"VP8L");

    const ICC: u8 = 0x20;
    const EXIF: u8 = 0x08;
    const XMP: u8 = 0x04;
    let mut vp8x = vec![EXIF | XMP | if icc.is_some() { ICC } else { 0 }, 0, 0, 0];
    vp8x.extend(&(STORED.0 - 1).to_le_bytes()[..3]);
    vp8x.extend(&(STORED.1 - 1).to_le_bytes()[..3]);
    let mut chunks: Vec<(&[u8; 4], Vec<u8>)> = vec![(b"VP8X", vp8x)];
    if let Some(icc) = icc {
        chunks.push((b"ICCP", icc.to_vec()));
    }
    chunks.push((b"VP8L", vp8l.clone()));
    chunks.push((b"EXIF", exif_tiff(false)));
    chunks.push((b"XMP ", xmp().into_bytes()));

    let mut body = b"WEBP".to_vec();
    for (fourcc, data) in chunks {
        body.extend(fourcc);
        body.extend(u32::try_from(data.len()).unwrap().to_le_bytes());
        body.extend(&data);
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

fn input(format: ImageFormat, icc: Option<&[u8]>) -> Vec<u8> {
    match format {
        ImageFormat::Jpeg => jpeg_input(icc),
        ImageFormat::Png => png_input(icc),
        ImageFormat::Webp => webp_input(icc),
        other => unreachable!("no {other:?} source"),
    }
}

/// The metadata a file carries, by its container's own structure.
#[derive(Debug, Default, PartialEq)]
struct Found {
    /// The EXIF block, without the APP1 header (empty for AVIF: only
    /// whether there is one is looked at).
    exif: Option<Vec<u8>>,
    xmp: bool,
    iptc: bool,
    icc: bool,
    /// Every segment, chunk or box seen, to show the walk really happened.
    parts: Vec<String>,
}

fn found(format: ImageFormat, bytes: &[u8]) -> Found {
    match format {
        ImageFormat::Jpeg => jpeg_found(bytes),
        ImageFormat::Png => png_found(bytes),
        ImageFormat::Webp => webp_found(bytes),
        ImageFormat::Avif => avif_found(bytes),
        other => unreachable!("no {other:?} inspector"),
    }
}

/// A JPEG's marker segments up to the first scan.
fn jpeg_found(jpeg: &[u8]) -> Found {
    assert_eq!(jpeg[..2], [0xFF, 0xD8], "SOI");
    let mut found = Found::default();
    let mut at = 2;
    while let [0xFF, marker, high, low, ..] = jpeg[at..] {
        if marker == 0xDA {
            break;
        }
        let length = usize::from(u16::from_be_bytes([high, low]));
        let payload = &jpeg[at + 4..at + 2 + length];
        found.parts.push(format!("{marker:02X}"));
        match marker {
            0xE1 if payload.starts_with(b"Exif\0\0") => found.exif = Some(payload[6..].to_vec()),
            0xE1 if payload.starts_with(XMP_NAMESPACE) => found.xmp = true,
            0xED if payload.starts_with(b"Photoshop 3.0\0") => found.iptc = true,
            0xE2 if payload.starts_with(b"ICC_PROFILE\0") => found.icc = true,
            _ => {}
        }
        at += 2 + length;
    }
    found
}

/// A PNG's chunks.
fn png_found(png: &[u8]) -> Found {
    assert_eq!(png[..8], *b"\x89PNG\r\n\x1a\n", "PNG signature");
    let mut found = Found::default();
    let mut at = 8;
    while at + 8 <= png.len() {
        let length = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let kind = &png[at + 4..at + 8];
        let data = &png[at + 8..at + 8 + length];
        found.parts.push(String::from_utf8_lossy(kind).into_owned());
        let keyword = data.split(|b| *b == 0).next().unwrap_or_default();
        match kind {
            b"eXIf" => found.exif = Some(data.to_vec()),
            b"iCCP" => found.icc = true,
            b"tEXt" | b"zTXt" | b"iTXt" => {
                found.xmp |= keyword == PNG_XMP_KEYWORD.as_bytes();
                found.iptc |= keyword.starts_with(b"Raw profile type iptc")
                    || keyword.starts_with(b"Raw profile type 8bim");
            }
            _ => {}
        }
        at += 12 + length;
    }
    found
}

/// The chunks of a RIFF file after its header.
fn riff_chunks(riff: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
    assert_eq!((&riff[..4], &riff[8..12]), (&b"RIFF"[..], &b"WEBP"[..]));
    let mut chunks = Vec::new();
    let mut at = 12;
    while at + 8 <= riff.len() {
        let fourcc: [u8; 4] = riff[at..at + 4].try_into().unwrap();
        let size = u32::from_le_bytes(riff[at + 4..at + 8].try_into().unwrap()) as usize;
        chunks.push((fourcc, riff[at + 8..at + 8 + size].to_vec()));
        at += 8 + size + size % 2;
    }
    chunks
}

/// A WebP's chunks. WebP defines no IPTC chunk.
fn webp_found(webp: &[u8]) -> Found {
    let mut found = Found::default();
    for (fourcc, data) in riff_chunks(webp) {
        found.parts.push(String::from_utf8_lossy(&fourcc).into_owned());
        match &fourcc {
            b"EXIF" => found.exif = Some(data),
            b"XMP " => found.xmp = true,
            b"ICCP" => found.icc = true,
            _ => {}
        }
    }
    found
}

/// An AVIF's boxes (HEIF): EXIF is an item of type `Exif`, XMP an item of
/// type `mime`, a profile a `colr` property of type `prof` or `rICC`; IPTC
/// has no place of its own.
fn avif_found(avif: &[u8]) -> Found {
    fn walk(data: &[u8], found: &mut Found) {
        let mut at = 0;
        while at + 8 <= data.len() {
            let size = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
            let size = if size == 0 { data.len() - at } else { size };
            assert!(size >= 8, "box sizes over 4 GB are not expected here");
            let kind = String::from_utf8_lossy(&data[at + 4..at + 8]).into_owned();
            let body = &data[at + 8..at + size];
            at += size;
            match kind.as_str() {
                // Full boxes start with a version and flags; iinf then
                // counts its entries (2 bytes in version 0, else 4).
                "meta" => walk(&body[4..], found),
                "iinf" => walk(&body[if body[0] == 0 { 6 } else { 8 }..], found),
                "iprp" | "ipco" => walk(body, found),
                "infe" if body[0] >= 2 => {
                    // item ID (2 bytes in version 2, 4 in 3), protection index, type
                    let type_at = 4 + if body[0] == 2 { 2 } else { 4 } + 2;
                    let item_type = &body[type_at..type_at + 4];
                    if item_type == b"Exif" {
                        found.exif = Some(Vec::new());
                    }
                    found.xmp |= item_type == b"mime";
                    found
                        .parts
                        .push(format!("infe:{}", String::from_utf8_lossy(item_type)));
                    continue;
                }
                "colr" => {
                    found.icc |= matches!(&body[..4], b"prof" | b"rICC");
                    found
                        .parts
                        .push(format!("colr:{}", String::from_utf8_lossy(&body[..4])));
                    continue;
                }
                _ => {}
            }
            found.parts.push(kind);
        }
    }
    let mut found = Found::default();
    walk(avif, &mut found);
    found
}

fn contains(bytes: &[u8], needle: &[u8]) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// The AVIF inspector cannot be shown to work on an input (none of the
/// sources is AVIF): it is shown on hand-made boxes instead.
#[test]
fn the_avif_inspector_finds_exif_xmp_and_profiles() {
    let boxed = |kind: &[u8; 4], body: &[u8]| {
        [
            &u32::try_from(body.len() + 8).unwrap().to_be_bytes()[..],
            kind,
            body,
        ]
        .concat()
    };
    let infe = |item_type: &[u8; 4]| {
        boxed(
            b"infe",
            &[&[2, 0, 0, 0, 0, 1, 0, 0][..], item_type, b"\0"].concat(),
        )
    };
    let iinf = boxed(
        b"iinf",
        &[&[0, 0, 0, 0, 0, 2][..], &infe(b"Exif"), &infe(b"mime")].concat(),
    );
    let ipco = boxed(b"ipco", &boxed(b"colr", &[&b"prof"[..], &swapped_icc()].concat()));
    let meta = boxed(
        b"meta",
        &[&[0, 0, 0, 0][..], &iinf, &boxed(b"iprp", &ipco)].concat(),
    );
    let found = avif_found(&[boxed(b"ftyp", b"avif"), meta].concat());
    assert!(found.exif.is_some() && found.xmp && found.icc, "{found:?}");
}

/// Every input carries every kind of metadata its format can, as our
/// inspectors and the `image` crate's readers both see it.
fn assert_carries_everything(format: ImageFormat, input: &[u8], icc: &[u8]) {
    let found = found(format, input);
    assert_eq!(
        found.exif.as_deref(),
        Some(&exif_tiff(false)[..]),
        "{format:?} EXIF"
    );
    assert!(found.xmp, "{format:?} XMP: {found:?}");
    assert_eq!(
        found.iptc,
        format != ImageFormat::Webp,
        "{format:?} IPTC: {found:?}"
    );
    assert!(found.icc, "{format:?} ICC: {found:?}");
    for needle in [MAKE, GPS_MARKER, THUMBNAIL, XMP_MARKER] {
        assert!(
            contains(input, needle),
            "{format:?} lacks {}",
            String::from_utf8_lossy(needle)
        );
    }

    let mut decoder = image::ImageReader::new(Cursor::new(input))
        .with_guessed_format()
        .unwrap()
        .into_decoder()
        .unwrap();
    assert_eq!(
        decoder.orientation().unwrap(),
        Orientation::Rotate90,
        "{format:?}"
    );
    let exif = decoder.exif_metadata().unwrap().expect("EXIF");
    assert!(contains(&exif, GPS_MARKER), "{format:?} EXIF has the GPS IFD");
    let xmp = decoder.xmp_metadata().unwrap().expect("XMP");
    assert!(contains(&xmp, XMP_MARKER), "{format:?} XMP");
    let iptc = decoder.iptc_metadata().unwrap();
    match format {
        ImageFormat::Webp => assert_eq!(iptc, None, "no IPTC in WebP"),
        _ => {
            let iptc = iptc.expect("IPTC");
            assert!(
                contains(&iptc, IPTC_MARKER) || contains(&iptc, hex(IPTC_MARKER).as_bytes()),
                "{format:?} IPTC"
            );
        }
    }
    assert_eq!(
        decoder.icc_profile().unwrap().as_deref(),
        Some(icc),
        "{format:?} ICC"
    );
}

/// Mean colour of a patch in the upper left quarter, away from the mark.
fn patch(bytes: &[u8]) -> [f64; 3] {
    let image = image::load_from_memory(bytes).unwrap().to_rgb8();
    let (width, height) = image.dimensions();
    mean_rgb(&image, width / 4, height / 4, 16)
}

fn is_blue(rgb: [f64; 3]) -> bool {
    rgb[2] > 180.0 && rgb[0] < 80.0
}

fn is_red(rgb: [f64; 3]) -> bool {
    rgb[0] > 180.0 && rgb[2] < 80.0
}

#[tokio::test]
async fn metadata_matrix_per_source_output_and_keep_metadata() {
    let icc = swapped_icc();
    let sources = [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::Webp];
    let outputs = [
        ImageFormat::Jpeg,
        ImageFormat::Png,
        ImageFormat::Webp,
        ImageFormat::Avif,
    ];
    let options = |format: ImageFormat, keep_metadata: bool| OptimizeOptions {
        format: format as i32,
        keep_metadata,
        ..Default::default()
    };

    // The cache key agrees: keep_metadata only counts where JPEG may come out.
    for output in outputs {
        let canonical = |keep| Options::try_from(options(output, keep)).unwrap().canonical();
        assert_eq!(
            canonical(true) != canonical(false),
            output == ImageFormat::Jpeg,
            "{output:?}"
        );
    }

    let process = start(&[]);
    let mut client = client(&process).await;
    let mut table = Vec::new();
    for source in sources {
        let tagged = input(source, Some(&icc));
        assert_carries_everything(source, &tagged, &icc);
        let untagged = input(source, None);
        assert!(!found(source, &untagged).icc, "{source:?} untagged");

        // The profile is applied: the same picture without it stays red.
        let (_, reference) = optimize(&mut client, options(ImageFormat::Jpeg, true), &untagged)
            .await
            .unwrap();
        assert!(
            is_red(patch(&reference)),
            "{source:?} untagged: {:?}",
            patch(&reference)
        );

        for output in outputs {
            let mut bytes_by_keep = Vec::new();
            for keep in [false, true] {
                let cell = format!("{source:?} → {output:?}, keep_metadata {keep}");
                let (header, bytes) = optimize(&mut client, options(output, keep), &tagged)
                    .await
                    .unwrap_or_else(|s| panic!("{cell}: {s:?}"));
                assert_eq!(header.format, output as i32, "{cell}");
                assert_eq!(header.source_format, source as i32, "{cell}");
                assert_eq!(
                    (header.width, header.height),
                    DISPLAYED,
                    "{cell}: orientation 6 applied"
                );

                let found = found(output, &bytes);
                let walked = match output {
                    ImageFormat::Jpeg => "E0", // JFIF
                    ImageFormat::Png => "IDAT",
                    ImageFormat::Webp => "VP8 ",
                    _ => "infe:av01",
                };
                assert!(found.parts.iter().any(|p| p == walked), "{cell}: {found:?}");
                let kept = keep && output == ImageFormat::Jpeg;
                if output == ImageFormat::Jpeg {
                    // APPn markers, in order: the EXIF segment, then JFIF.
                    let apps: Vec<_> = found.parts.iter().filter(|p| p.starts_with('E')).collect();
                    let expected = if kept { &["E1", "E0"][..] } else { &["E0"] };
                    assert_eq!(apps, expected, "{cell}: only EXIF is ever added");
                }
                if kept {
                    assert_eq!(
                        found.exif.as_deref(),
                        Some(&exif_tiff(true)[..]),
                        "{cell}: the EXIF, GPS included, orientation 1, thumbnail erased and unlinked"
                    );
                    let mut decoder = image::codecs::jpeg::JpegDecoder::new(Cursor::new(&bytes)).unwrap();
                    assert_eq!(
                        decoder.orientation().unwrap(),
                        Orientation::NoTransforms,
                        "{cell}: the pixels are upright, so the tag says so"
                    );
                    for needle in [MAKE, GPS_MARKER] {
                        assert!(contains(&bytes, needle), "{cell}");
                    }
                } else {
                    assert_eq!(found.exif, None, "{cell}: EXIF stripped");
                    for needle in [MAKE, GPS_MARKER, b"Exif"] {
                        assert!(
                            !contains(&bytes, needle),
                            "{cell}: {}",
                            String::from_utf8_lossy(needle)
                        );
                    }
                }
                assert!(
                    !found.xmp && !found.iptc && !found.icc,
                    "{cell}: XMP, IPTC and ICC never carried: {found:?}"
                );
                for needle in [
                    THUMBNAIL,
                    XMP_MARKER,
                    IPTC_MARKER,
                    hex(IPTC_MARKER).as_bytes(),
                    ICC_SIGNATURE,
                ] {
                    assert!(
                        !contains(&bytes, needle),
                        "{cell}: {}",
                        String::from_utf8_lossy(needle)
                    );
                }
                // The pixels were converted to sRGB (no AVIF decoder here).
                if output != ImageFormat::Avif {
                    assert_eq!(decoded_size(&bytes), DISPLAYED, "{cell}");
                    assert!(is_blue(patch(&bytes)), "{cell}: {:?}", patch(&bytes));
                }
                table.push(format!(
                    "{cell}: {}",
                    if kept { "EXIF+GPS kept" } else { "all stripped" }
                ));
                bytes_by_keep.push(bytes);
            }
            // Where keep_metadata is out of the cache key, it changes nothing.
            if output != ImageFormat::Jpeg {
                assert!(bytes_by_keep[0] == bytes_by_keep[1], "{source:?} → {output:?}");
            }
        }
    }
    println!("{}", table.join("\n"));
}
