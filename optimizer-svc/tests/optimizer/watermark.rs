//! The mark's options, located in real renders: the same photo rendered
//! with two different texts differs exactly where the mark is.

use crate::*;

const WIDTH: u32 = 1440;
const HEIGHT: u32 = 1080;

/// Where and how much two renders differ.
struct Difference {
    /// Bounding box of the changed pixels: (left, top, right, bottom).
    bounds: (u32, u32, u32, u32),
    /// Pixels where a channel moved by more than 40.
    strong: usize,
    /// Sum of every channel's change.
    total: u64,
}

fn difference(a: &image::RgbImage, b: &image::RgbImage) -> Difference {
    let (mut left, mut top, mut right, mut bottom) = (u32::MAX, u32::MAX, 0, 0);
    let (mut strong, mut total) = (0, 0u64);
    for (x, y, p) in a.enumerate_pixels() {
        let q = b.get_pixel(x, y);
        let moved = [0, 1, 2].map(|c| p[c].abs_diff(q[c]));
        total += moved.iter().map(|&m| u64::from(m)).sum::<u64>();
        if moved.iter().any(|&m| m > 40) {
            strong += 1;
            (left, top) = (left.min(x), top.min(y));
            (right, bottom) = (right.max(x), bottom.max(y));
        }
    }
    Difference {
        bounds: (left, top, right, bottom),
        strong,
        total,
    }
}

#[tokio::test]
async fn the_mark_lands_where_asked_tiles_fades_and_the_fast_filter_stays_close() {
    let process = start(&[]);
    let client = client(&process).await;
    let input = test_image("kleiber_4000x3000.jpg");
    let render = |options: OptimizeOptions| {
        let mut client = client.clone();
        let input = input.clone();
        async move {
            let (header, bytes) = optimize(&mut client, options, &input).await.unwrap();
            assert_eq!((header.width, header.height), (WIDTH, HEIGHT));
            image::load_from_memory(&bytes).unwrap().to_rgb8()
        }
    };
    // Lossless output, so only the mark differs between two texts.
    let with = |text: &str, position: Position, opacity: f32, tiled: bool| OptimizeOptions {
        watermark_text: text.to_owned(),
        position: position as i32,
        opacity,
        tiled,
        format: ImageFormat::Png as i32,
        ..Default::default()
    };
    let located = |position: Position, opacity: f32, tiled: bool| {
        let render = &render;
        async move {
            let a = render(with("NWS Watermark", position, opacity, tiled)).await;
            let b = render(with("Another mark", position, opacity, tiled)).await;
            difference(&a, &b)
        }
    };

    let (half_w, half_h) = (WIDTH / 2, HEIGHT / 2);
    for position in [
        Position::TopLeft,
        Position::TopRight,
        Position::BottomLeft,
        Position::BottomRight,
        Position::Center,
    ] {
        let found = located(position, 0.0, false).await;
        let (left, top, right, bottom) = found.bounds;
        assert!(found.strong > 500, "{position:?}: the mark is visible");
        let inside = match position {
            Position::TopLeft => right < half_w && bottom < half_h,
            Position::TopRight => left >= half_w && bottom < half_h,
            Position::BottomLeft => right < half_w && top >= half_h,
            Position::BottomRight => left >= half_w && top >= half_h,
            _ => {
                let centre = ((left + right) / 2, (top + bottom) / 2);
                centre.0.abs_diff(half_w) < 20 && centre.1.abs_diff(half_h) < 20
            }
        };
        assert!(inside, "{position:?}: mark found at {:?}", found.bounds);
    }

    // Tiled: the mark reaches every corner of the picture.
    let tiled = located(Position::BottomRight, 0.0, true).await;
    let (left, top, right, bottom) = tiled.bounds;
    assert!(
        left < 200 && top < 200 && right > WIDTH - 200 && bottom > HEIGHT - 200,
        "tiles cover the picture: {:?}",
        tiled.bounds
    );

    // A faint mark (0.1) changes far less than the default one, in the
    // same place.
    let default = located(Position::BottomRight, 0.0, false).await;
    let faint = located(Position::BottomRight, 0.1, false).await;
    assert!(
        faint.total * 3 < default.total,
        "faint {} against default {}",
        faint.total,
        default.total
    );
    assert!(
        faint.strong < default.strong / 3,
        "{} vs {}",
        faint.strong,
        default.strong
    );
    assert!(faint.total > 0, "a faint mark is still drawn");

    // Bilinear against Lanczos3: the same picture, a little softer.
    let fast = render(OptimizeOptions {
        resize_filter: nws_watermark::pb::ResizeFilter::Fast as i32,
        ..with("NWS", Position::BottomRight, 0.0, false)
    })
    .await;
    let lanczos = render(with("NWS", Position::BottomRight, 0.0, false)).await;
    let mean = difference(&lanczos, &fast).total as f64 / f64::from(WIDTH * HEIGHT * 3);
    assert!(mean < 6.0, "bilinear stays close to Lanczos3: {mean}");
    assert!(mean > 0.0, "the filter option is honoured");
}
