//! Priorities sharing one worker: a queued render (a durable job) waits
//! without a time bound, but takes a worker only while no caller waits
//! for one; callers are bounded by NWS_QUEUE_WAIT.

use std::sync::OnceLock;

use nws_runtime::testing::{large_png, workspace_binary};
use nws_watermark::{
    options::Options,
    pb::{PutRequest, RenderPriority, put_request, storage_client::StorageClient},
    render::RenderJob,
};
use tokio::task::JoinHandle;

use crate::*;

/// 7000 × 7000: kilobytes to send; decoded, watermarked and encoded at
/// full size (`slow_options`), long enough for the other calls to line up
/// behind it.
fn slow_input() -> &'static [u8] {
    static PNG: OnceLock<Vec<u8>> = OnceLock::new();
    PNG.get_or_init(|| large_png(7000, 7000))
}

fn slow_options() -> OptimizeOptions {
    OptimizeOptions {
        max_width: 7000,
        max_height: 7000,
        ..OptimizeOptions::default()
    }
}

/// A Storage service of the test's own, over a temporary directory.
struct Storage {
    process: ServiceProcess,
    _dir: tempfile::TempDir,
}

impl Storage {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let process = ServiceProcess::start(
            &workspace_binary("storage-svc"),
            &[
                ("NWS_STORAGE_ADDR", "127.0.0.1:0"),
                ("NWS_DATA_DIR", dir.path().to_str().unwrap()),
            ],
            &["storage"],
        );
        Self { process, _dir: dir }
    }

    /// Stores `bytes` as an original and returns its hash.
    async fn put(&self, bytes: &[u8]) -> String {
        let chunks: Vec<PutRequest> = bytes
            .chunks(64 * 1024)
            .map(|chunk| PutRequest {
                payload: Some(put_request::Payload::Chunk(chunk.to_vec().into())),
            })
            .collect();
        let mut client = StorageClient::connect(self.process.url("storage")).await.unwrap();
        client
            .put(tokio_stream::iter(chunks))
            .await
            .expect("put")
            .into_inner()
            .sha256
    }
}

/// A Render at QUEUED priority, read to its end.
fn render_queued(
    client: &OptimizerClient<Channel>,
    job: &RenderJob,
) -> JoinHandle<Result<(), tonic::Status>> {
    let mut client = client.clone();
    let request = job.request(true, RenderPriority::Queued);
    tokio::spawn(async move {
        let mut responses = client.render(request).await?.into_inner();
        while responses.message().await?.is_some() {}
        Ok(())
    })
}

fn optimize_in_background(
    client: &OptimizerClient<Channel>,
    options: OptimizeOptions,
    input: &'static [u8],
) -> JoinHandle<Result<(OptimizeHeader, Vec<u8>), tonic::Status>> {
    let mut client = client.clone();
    tokio::spawn(async move { optimize(&mut client, options, input).await })
}

/// The priorities of the calls that logged `message`, in order.
fn priorities(events: &[serde_json::Value], message: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["message"] == message)
        .filter_map(|e| e["priority"].as_str().map(str::to_owned))
        .collect()
}

async fn until_waiting(process: &ServiceProcess, priorities_waiting: &[&str]) {
    process
        .until(
            &format!("{priorities_waiting:?} waiting for a worker"),
            |events| (priorities(events, "waiting for a worker") == priorities_waiting).then_some(()),
        )
        .await;
}

#[tokio::test]
async fn a_queued_render_yields_the_worker_to_a_waiting_caller_and_is_never_refused_for_the_wait() {
    let storage = Storage::start();
    let process = start(&[
        ("NWS_STORAGE_URL", &storage.process.url("storage")),
        ("NWS_OPTIMIZER_WORKERS", "1"),
        // Only a caller with nobody ahead is admitted.
        ("NWS_QUEUE_WAIT", "1ms"),
        OBSERVED,
    ]);
    let client = client(&process).await;
    static TINY: OnceLock<Vec<u8>> = OnceLock::new();
    let tiny = TINY.get_or_init(|| test_image("tiny_16x16.jpg"));
    let original = storage.put(tiny).await;
    let job = |quality| {
        let options = OptimizeOptions {
            quality,
            ..OptimizeOptions::default()
        };
        RenderJob::new(original.clone(), Options::try_from(options).unwrap())
    };

    // A caller holds the one worker with a slow image...
    let running = optimize_in_background(&client, slow_options(), slow_input());
    process.until_logged("worker taken", 1).await;
    // ...a queued job waits for it first...
    let first_job = render_queued(&client, &job(60));
    until_waiting(&process, &["queued"]).await;
    // ...then a caller.
    let caller = optimize_in_background(&client, OptimizeOptions::default(), tiny);
    until_waiting(&process, &["queued", "interactive"]).await;

    // One caller waits: a second would start past NWS_QUEUE_WAIT and is
    // refused at once...
    let mut refused = client.clone();
    let status = optimize(&mut refused, OptimizeOptions::default(), tiny)
        .await
        .expect_err("refused for the wait");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // ...while a queued job is admitted all the same: it waits.
    let second_job = render_queued(&client, &job(61));
    until_waiting(&process, &["queued", "interactive", "queued"]).await;

    running.await.unwrap().expect("the first caller is served");
    caller.await.unwrap().expect("the waiting caller is served");
    first_job.await.unwrap().expect("the first job is rendered");
    second_job.await.unwrap().expect("the second job is rendered");

    // The waiting caller took the freed worker ahead of the job that had
    // waited longer; the jobs ran once no caller waited. (The first caller
    // found the worker idle: it never waited.)
    assert_eq!(
        priorities(&process.events(), "worker taken"),
        ["interactive", "interactive", "queued", "queued"],
        "{}",
        process.logs()
    );
}
