//! The mark's options: tiled, faint, and the fast resize filter.

use crate::*;

#[tokio::test]
async fn tiled_marks_faint_marks_and_the_fast_filter_are_honoured() {
    let process = start(&[]);
    let client = client(&process).await;
    let input = test_image("kleiber_4000x3000.jpg");
    let render = |options: OptimizeOptions| {
        let mut client = client.clone();
        let input = input.clone();
        async move {
            let (header, bytes) = optimize(&mut client, options, &input).await.unwrap();
            assert_eq!((header.width, header.height), (1440, 1080));
            image::load_from_memory(&bytes).unwrap().to_rgb8()
        }
    };
    let single = render(OptimizeOptions::default()).await;
    let tiled = render(OptimizeOptions {
        tiled: true,
        ..Default::default()
    })
    .await;
    let faint = render(OptimizeOptions {
        opacity: 0.1,
        ..Default::default()
    })
    .await;
    let fast = render(OptimizeOptions {
        resize_filter: nws_watermark::pb::ResizeFilter::Fast as i32,
        ..Default::default()
    })
    .await;
    // The top-left quarter: untouched by a bottom-right mark, marked when tiled.
    let differing = |a: &image::RgbImage, b: &image::RgbImage, x0: u32, y0: u32| {
        (y0..y0 + 270)
            .flat_map(|y| (x0..x0 + 360).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let (p, q) = (a.get_pixel(x, y).0, b.get_pixel(x, y).0);
                (0..3).any(|c| p[c].abs_diff(q[c]) > 40)
            })
            .count()
    };
    assert!(differing(&single, &tiled, 0, 0) > 500, "tiles reach the top-left");
    // Bottom-right, where the single mark is: a faint mark changes less.
    let bottom_right = (1440 - 360, 1080 - 270);
    let faint_vs_strong = differing(&single, &faint, bottom_right.0, bottom_right.1);
    assert!(
        faint_vs_strong > 100,
        "the faint mark differs from the default one"
    );
    // Bilinear against Lanczos3: the same picture, a little softer.
    let (mut total, mut count) = (0f64, 0f64);
    for y in 0..540 {
        for x in 0..1440 {
            let (p, q) = (single.get_pixel(x, y).0, fast.get_pixel(x, y).0);
            for c in 0..3 {
                total += f64::from(p[c].abs_diff(q[c]));
                count += 1.0;
            }
        }
    }
    assert!(
        total / count < 6.0,
        "bilinear stays close to Lanczos3: {}",
        total / count
    );
}
