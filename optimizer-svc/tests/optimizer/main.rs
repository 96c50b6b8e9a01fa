//! The Optimizer binary, started for real and called over gRPC, one module
//! per theme.

mod admission;
mod cancellation;
mod drain;
mod inputs;
mod metadata;
mod orientation_colour;
mod pipeline;
mod priority;
mod render;
mod watermark;

use std::path::Path;

use nws_runtime::testing::{ServiceProcess, test_image};
use nws_watermark::pb::{
    ImageFormat, OptimizeHeader, OptimizeOptions, OptimizeRequest, Position, ProbeRequest, optimize_request,
    optimize_response, optimizer_client::OptimizerClient,
};
use tonic::{Code, transport::Channel};

const IMAGES: [&str; 6] = [
    "kleiber_4000x3000.jpg",
    "dragonfly_4224x3168_progressive.jpg",
    "picos_orient6.jpg",
    "life_gray_3088x2056.jpg",
    "seeding_alpha_2000x1125.png",
    "tiny_16x16.jpg",
];

/// Logs what the tests watch for: admissions and every pipeline stage.
const OBSERVED: (&str, &str) = ("RUST_LOG", "info,optimizer_svc=debug");

fn start(env: &[(&str, &str)]) -> ServiceProcess {
    let mut env = env.to_vec();
    env.push(("NWS_OPTIMIZER_ADDR", "127.0.0.1:0"));
    ServiceProcess::start(
        Path::new(env!("CARGO_BIN_EXE_optimizer-svc")),
        &env,
        &["optimizer"],
    )
}

async fn client(process: &ServiceProcess) -> OptimizerClient<Channel> {
    OptimizerClient::connect(process.url("optimizer"))
        .await
        .expect("connect")
}

/// Streams `input` in 64 KiB chunks after `options`; returns the header and
/// the reassembled result.
async fn optimize(
    client: &mut OptimizerClient<Channel>,
    options: OptimizeOptions,
    input: &[u8],
) -> Result<(OptimizeHeader, Vec<u8>), tonic::Status> {
    let mut messages = vec![OptimizeRequest {
        payload: Some(optimize_request::Payload::Options(options)),
    }];
    messages.extend(input.chunks(64 * 1024).map(|chunk| OptimizeRequest {
        payload: Some(optimize_request::Payload::Chunk(chunk.to_vec().into())),
    }));
    let mut responses = client.optimize(tokio_stream::iter(messages)).await?.into_inner();
    let header = match responses.message().await?.and_then(|m| m.payload) {
        Some(optimize_response::Payload::Header(header)) => header,
        other => panic!("expected a header first, got {other:?}"),
    };
    let mut bytes = Vec::new();
    while let Some(message) = responses.message().await? {
        match message.payload {
            Some(optimize_response::Payload::Chunk(chunk)) => {
                assert!(chunk.len() <= 64 * 1024, "chunk of {} bytes", chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            other => panic!("expected only chunks after the header, got {other:?}"),
        }
    }
    Ok((header, bytes))
}

fn decoded_size(bytes: &[u8]) -> (u32, u32) {
    let image = image::load_from_memory(bytes).expect("the result decodes");
    (image.width(), image.height())
}

/// Encodes RGB pixels as a baseline JPEG (libjpeg-turbo, 4:4:4, q95).
fn jpeg_from_rgb(width: usize, height: usize, rgb: &[u8]) -> Vec<u8> {
    let mut compressor = turbojpeg::Compressor::new().unwrap();
    compressor.set_quality(95).unwrap();
    compressor.set_subsamp(turbojpeg::Subsamp::None).unwrap();
    compressor
        .compress_to_vec(turbojpeg::Image {
            pixels: rgb,
            width,
            pitch: width * 3,
            height,
            format: turbojpeg::PixelFormat::RGB,
        })
        .unwrap()
}

/// Mean colour of a `size`-pixel square centred on (x, y).
fn mean_rgb(image: &image::RgbImage, x: u32, y: u32, size: u32) -> [f64; 3] {
    let mut sum = [0f64; 3];
    for dy in 0..size {
        for dx in 0..size {
            let p = image.get_pixel(x - size / 2 + dx, y - size / 2 + dy).0;
            for c in 0..3 {
                sum[c] += f64::from(p[c]);
            }
        }
    }
    sum.map(|s| s / f64::from(size * size))
}

fn close(a: [f64; 3], b: [f64; 3], tolerance: f64) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tolerance)
}
