//! A call that ends early (its client gone, or its `grpc-timeout` deadline
//! passed on the server) stops its job at the next stage boundary. The
//! pipeline announces each stage before it starts, so the tests see
//! exactly which stages ran.

use std::sync::OnceLock;

use nws_runtime::testing::large_png;

use crate::*;

const STAGES: [&str; 4] = ["decode", "resize", "watermark", "encode"];
const STOPPED: &str = "pipeline stopped before a stage: its call was cancelled";

/// 7000 × 7000 (49 MP, under the default 50 MP limit): kilobytes to send,
/// hundreds of milliseconds to decode and resize.
fn slow_input() -> &'static [u8] {
    static PNG: OnceLock<Vec<u8>> = OnceLock::new();
    PNG.get_or_init(|| large_png(7000, 7000))
}

fn stages_started(process: &ServiceProcess) -> Vec<String> {
    process
        .events()
        .iter()
        .filter(|e| e["message"] == "pipeline stage")
        .filter_map(|e| e["stage"].as_str().map(str::to_owned))
        .collect()
}

async fn until_stage_started(process: &ServiceProcess, stage: &str) {
    process
        .until(&format!("the {stage} stage"), |events| {
            events
                .iter()
                .any(|e| e["message"] == "pipeline stage" && e["stage"] == stage)
                .then_some(())
        })
        .await;
}

/// The job stopped at a boundary after its decode had started, and no
/// stage ran after the one it stopped before.
async fn assert_stopped_between_stages(process: &ServiceProcess) {
    let stopped = process.until_logged(STOPPED, 1).await;
    let stage = stopped[0]["stage"].as_str().expect("the stage it stopped before");
    let position = STAGES
        .iter()
        .position(|s| *s == stage)
        .unwrap_or_else(|| panic!("unknown stage {stage}"));
    assert!(position >= 1, "the decode had started, so it stops after it");
    assert_eq!(
        stages_started(process),
        STAGES[..position],
        "no stage ran after the one it stopped before"
    );
    assert_eq!(process.count_logged("optimized"), 0, "{}", process.logs());
}

/// The worker the job held is free again: a new call is served.
async fn assert_worker_freed(client: &mut OptimizerClient<Channel>) {
    let small = jpeg_from_rgb(64, 48, &[128; 64 * 48 * 3]);
    optimize(client, OptimizeOptions::default(), &small)
        .await
        .expect("the worker is free again");
}

#[tokio::test]
async fn a_client_that_goes_away_stops_its_job_between_stages() {
    let process = start(&[("NWS_OPTIMIZER_WORKERS", "1"), OBSERVED]);
    let mut client = client(&process).await;
    let mut leaving = client.clone();
    let call =
        tokio::spawn(async move { optimize(&mut leaving, OptimizeOptions::default(), slow_input()).await });

    until_stage_started(&process, "decode").await;
    // Dropping the call resets its HTTP/2 stream, as a client that
    // crashes or gives up does.
    call.abort();

    assert_stopped_between_stages(&process).await;
    assert_worker_freed(&mut client).await;
}

#[tokio::test]
async fn a_deadline_that_passes_on_the_server_stops_its_job_between_stages() {
    let process = start(&[("NWS_OPTIMIZER_WORKERS", "1"), OBSERVED]);
    let mut client = client(&process).await;
    let mut messages = vec![OptimizeRequest {
        payload: Some(optimize_request::Payload::Options(OptimizeOptions::default())),
    }];
    messages.extend(slow_input().chunks(64 * 1024).map(|chunk| OptimizeRequest {
        payload: Some(optimize_request::Payload::Chunk(chunk.to_vec().into())),
    }));
    let mut request = tonic::Request::new(tokio_stream::iter(messages));
    // The header alone: the client keeps no timer of its own, so only the
    // server's deadline can end this call (50 ms: the upload of a few
    // kilobytes is in well before, the decode alone takes longer).
    request
        .metadata_mut()
        .insert("grpc-timeout", "50m".parse().expect("header value"));
    let status = client
        .optimize(request)
        .await
        .expect_err("the server ends the call at its deadline");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );

    assert_stopped_between_stages(&process).await;
    assert_worker_freed(&mut client).await;
}
