//! Each pipeline stage alone, on the 12 MP anchor photo (and the whole
//! pipeline), so a change to one stage shows in its own number; and the
//! greyscale photo's decode, and its resize in one channel against three:
//! `cargo bench -p optimizer-svc --bench stages`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use nws_runtime::testing::test_image;
use nws_watermark::pb::{ImageFormat, Position, ResizeFilter};
use optimizer_svc::pipeline::{self, Limits, Options, decode, encode, fit_within, resize, watermark};
use tokio_util::sync::CancellationToken;

const LIMITS: Limits = Limits {
    max_input_bytes: 25 << 20,
    max_pixels: 50_000_000,
    max_side: 40_000,
    max_animation_pixels: 100_000_000,
};

fn stages(c: &mut Criterion) {
    let input = test_image("kleiber_4000x3000.jpg");
    let (header, decoded) = decode::decode(&input, &LIMITS, (1920, 1080)).expect("decode");
    let (w, h) = header.display_size();
    let (width, height) = fit_within(w, h, 1920, 1080);
    let resized = resize::resize(decoded.clone(), width, height, ResizeFilter::Lanczos3).expect("resize");
    let mark = watermark::Mark::text("NWS Watermark", Position::BottomRight);

    let mut group = c.benchmark_group("kleiber_4000x3000");
    group.sample_size(20);
    group.bench_function("decode (shrink-on-load to 2000x1500)", |b| {
        b.iter(|| decode::decode(black_box(&input), &LIMITS, (1920, 1080)).unwrap())
    });
    group.bench_function("decode (full size)", |b| {
        b.iter(|| decode::decode(black_box(&input), &LIMITS, (4000, 3000)).unwrap())
    });
    for (name, filter) in [("lanczos3", ResizeFilter::Lanczos3), ("fast", ResizeFilter::Fast)] {
        group.bench_function(format!("resize {name} to 1440x1080"), |b| {
            b.iter_batched(
                || decoded.clone(),
                |pixels| resize::resize(pixels, width, height, filter).unwrap(),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    group.bench_function("watermark", |b| {
        b.iter_batched_ref(
            || resized.clone(),
            |pixels| watermark::draw(pixels, &mark),
            criterion::BatchSize::LargeInput,
        )
    });
    group.bench_function("watermark tiled", |b| {
        let tiled = watermark::Mark { tiled: true, ..mark };
        b.iter_batched_ref(
            || resized.clone(),
            |pixels| watermark::draw(pixels, &tiled),
            criterion::BatchSize::LargeInput,
        )
    });
    group.bench_function("watermark tiled, rotated -30", |b| {
        let diagonal = watermark::Mark {
            tiled: true,
            rotate: -30.0,
            ..mark
        };
        b.iter_batched_ref(
            || resized.clone(),
            |pixels| watermark::draw(pixels, &diagonal),
            criterion::BatchSize::LargeInput,
        )
    });
    for format in [
        ImageFormat::Jpeg,
        ImageFormat::Webp,
        ImageFormat::Png,
        ImageFormat::Avif,
    ] {
        group.bench_function(format!("encode {format:?} q85"), |b| {
            b.iter(|| encode::encode(black_box(&resized), format, 85, false).unwrap())
        });
    }
    group.bench_function("whole pipeline (JPEG q85)", |b| {
        let options = Options::default();
        let cancel = CancellationToken::new();
        b.iter(|| pipeline::run(black_box(&input), &options, None, &LIMITS, &cancel).unwrap())
    });
    group.finish();
}

fn grey(c: &mut Criterion) {
    let input = test_image("life_gray_3088x2056.jpg");
    let (header, decoded) = decode::decode(&input, &LIMITS, (1920, 1080)).expect("decode");
    assert_eq!(decoded.channels, 1);
    let (width, height) = fit_within(header.width, header.height, 1920, 1080);
    let widened = decoded.clone().into_colour();

    let mut group = c.benchmark_group("life_gray_3088x2056");
    group.sample_size(20);
    group.bench_function("decode grey (5/8, 1930x1285)", |b| {
        b.iter(|| decode::decode(black_box(&input), &LIMITS, (1920, 1080)).unwrap())
    });
    for (name, pixels) in [("1 channel", &decoded), ("3 channels", &widened)] {
        group.bench_function(format!("resize lanczos3 to 1622x1080, {name}"), |b| {
            b.iter_batched(
                || pixels.clone(),
                |pixels| resize::resize(pixels, width, height, ResizeFilter::Lanczos3).unwrap(),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, stages, grey);
criterion_main!(benches);
