//! The waiting line, bounded by time: a caller is admitted while its
//! expected start is within NWS_QUEUE_WAIT and refused at once past it,
//! told when to retry; and deadlines.

use nws_runtime::{
    grpc::status::user_message,
    testing::{Scrape, ServiceProcess},
};
use nws_watermark::pb::OptimizeResponse;
use tokio::{sync::mpsc, task::JoinHandle};
use tonic::{Response, Status, Streaming};
use tonic_types::StatusExt as _;

use crate::*;

const CHUNK: usize = 64 * 1024;

/// A call that has sent its options and a first chunk and holds back the
/// rest: admitted, it stays in line, uploading.
struct Held {
    rest: mpsc::Sender<OptimizeRequest>,
    call: JoinHandle<Result<Response<Streaming<OptimizeResponse>>, Status>>,
}

async fn hold(client: &OptimizerClient<Channel>, jpeg: &[u8]) -> Held {
    let (rest, rx) = mpsc::channel(4);
    for payload in [
        optimize_request::Payload::Options(OptimizeOptions::default()),
        optimize_request::Payload::Chunk(jpeg[..CHUNK].to_vec().into()),
    ] {
        rest.send(OptimizeRequest {
            payload: Some(payload),
        })
        .await
        .unwrap();
    }
    let mut client = client.clone();
    let call = tokio::spawn(async move {
        client
            .optimize(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    Held { rest, call }
}

impl Held {
    /// Sends the rest of the image and waits for the result.
    async fn finish(self, jpeg: &[u8]) {
        for chunk in jpeg[CHUNK..].chunks(CHUNK) {
            self.rest
                .send(OptimizeRequest {
                    payload: Some(optimize_request::Payload::Chunk(chunk.to_vec().into())),
                })
                .await
                .unwrap();
        }
        drop(self.rest);
        let mut responses = self
            .call
            .await
            .unwrap()
            .expect("the held call is served")
            .into_inner();
        while responses.message().await.expect("the whole result").is_some() {}
    }
}

/// Calls decided at admission so far: admitted and refused.
fn decided(events: &[serde_json::Value]) -> (usize, usize) {
    let count = |message: &str| events.iter().filter(|e| e["message"] == message).count();
    (count("call admitted"), count("call refused at admission"))
}

#[tokio::test]
async fn a_call_expected_to_start_past_the_queue_wait_is_refused_at_once_and_told_when_to_retry() {
    let process = ServiceProcess::start(
        Path::new(env!("CARGO_BIN_EXE_optimizer-svc")),
        &[
            ("NWS_OPTIMIZER_ADDR", "127.0.0.1:0"),
            ("NWS_OPTIMIZER_WORKERS", "1"),
            ("NWS_QUEUE_WAIT", "500ms"),
            OBSERVED,
        ],
        &["optimizer", "admin"],
    );
    let metrics = format!("{}/metrics", process.url("admin"));
    let client = client(&process).await;
    let jpeg = test_image("kleiber_4000x3000.jpg");

    // Calls that hold their uploads form a line; each newcomer's expected
    // start is later, until one is past NWS_QUEUE_WAIT.
    let mut line = Vec::new();
    let refused = loop {
        assert!(line.len() < 20, "never refused: {}", process.logs());
        let held = hold(&client, &jpeg).await;
        let (admitted, refused) = process
            .until("the call admitted or refused", |events| {
                let (admitted, refused) = decided(events);
                (admitted + refused > line.len()).then_some((admitted, refused))
            })
            .await;
        if refused == 0 {
            assert_eq!(admitted, line.len() + 1);
            line.push(held);
        } else {
            break held.call.await.unwrap().expect_err("refused");
        }
    };
    // A line, not a count of one: bounded by time.
    assert!(line.len() >= 2, "only {} admitted", line.len());
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let retry = refused
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a RetryInfo with a delay");
    assert!(retry > std::time::Duration::ZERO, "{retry:?}");
    let text = user_message(&refused).expect("a message for the user");
    assert!(text.contains("expected wait"), "{text}");
    assert!(text.contains("NWS_QUEUE_WAIT"), "{text}");

    // The operators see the line's expected wait and why calls are refused.
    let scrape = Scrape::fetch(&metrics).await;
    assert!(scrape.sum("nws_optimizer_expected_wait_seconds", &[]) > 0.0);
    assert!(scrape.sum("nws_optimizer_service_time_seconds", &[]) > 0.0);
    assert_eq!(
        scrape.sum("nws_optimizer_refused_calls_total", &[("reason", "queue_wait")]),
        1.0
    );
    assert_eq!(scrape.sum("nws_optimizer_admitted_calls", &[]), line.len() as f64);

    // The line drains: every held call is served...
    for held in line {
        held.finish(&jpeg).await;
    }
    // ...and a caller is admitted again.
    let mut again = client.clone();
    optimize(&mut again, OptimizeOptions::default(), &jpeg)
        .await
        .expect("admitted once the line has drained");
    let scrape = Scrape::fetch(&metrics).await;
    assert_eq!(scrape.sum("nws_optimizer_expected_wait_seconds", &[]), 0.0);
    assert_eq!(scrape.sum("nws_optimizer_admitted_calls", &[]), 0.0);
}

#[tokio::test]
async fn a_call_whose_deadline_passes_is_dropped_before_it_runs() {
    let process = start(&[("NWS_OPTIMIZER_WORKERS", "1"), OBSERVED]);
    let client = client(&process).await;
    let photo = test_image("dragonfly_4224x3168_progressive.jpg");

    // The one worker is busy with a slow progressive photo...
    let mut busy = client.clone();
    let busy_photo = photo.clone();
    let first =
        tokio::spawn(async move { optimize(&mut busy, OptimizeOptions::default(), &busy_photo).await });
    process
        .until("the first call's decode", |events| {
            events
                .iter()
                .find(|e| e["message"] == "pipeline stage" && e["stage"] == "decode")
                .cloned()
        })
        .await;
    // ...while a call with a short deadline waits behind it.
    let mut messages = vec![OptimizeRequest {
        payload: Some(optimize_request::Payload::Options(OptimizeOptions::default())),
    }];
    messages.extend(photo.chunks(64 * 1024).map(|chunk| OptimizeRequest {
        payload: Some(optimize_request::Payload::Chunk(chunk.to_vec().into())),
    }));
    let mut request = tonic::Request::new(tokio_stream::iter(messages));
    request.set_timeout(std::time::Duration::from_millis(30));
    let mut hurried = client.clone();
    let status = hurried.optimize(request).await.expect_err("deadline passes");
    // tonic reports its own client-side timer as CANCELLED.
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );

    first.await.unwrap().expect("the first call completes");
    // The server dropped the late call before it reached a worker: one job
    // ran the pipeline, and the late one never started a stage.
    process
        .until_logged("call cancelled by the client or its deadline; its work stops", 1)
        .await;
    // The first call's answer can reach the test before its log line does.
    process.until_logged("optimized", 1).await;
    assert_eq!(process.count_logged("optimized"), 1, "{}", process.logs());
    let decodes = process
        .events()
        .iter()
        .filter(|e| e["message"] == "pipeline stage" && e["stage"] == "decode")
        .count();
    assert_eq!(decodes, 1, "{}", process.logs());
}
