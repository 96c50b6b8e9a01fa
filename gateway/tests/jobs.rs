//! Durable jobs, for real: the three services as separate processes, the
//! machine's RabbitMQ (or a private broker when a test stops it) and Redis.
//! Every test has its own queues and status keys, so tests share a broker.

use std::time::Duration;

use futures_util::StreamExt as _;
use nws_runtime::testing::{
    Deployment, PrivateRabbit, ServiceProcess, amqp_url, eventually, redis_url, test_image, unique_queue,
    until_job_queue,
};
use nws_watermark::pb::{
    ImageFormat, OptimizeOptions, OptimizeRequest, optimize_request, optimize_response,
    optimizer_client::OptimizerClient,
};
use serde_json::Value;

/// The settings of one test's queue, given to every process.
struct Queue {
    env: Vec<(&'static str, String)>,
}

impl Queue {
    fn on(amqp: &str) -> Self {
        let queue = unique_queue("jobs");
        Self {
            env: vec![
                ("NWS_AMQP_URL", amqp.to_owned()),
                ("NWS_JOB_QUEUE", queue.clone()),
                ("NWS_JOB_STATUS_PREFIX", format!("{queue}:")),
                ("NWS_REDIS_URL", redis_url()),
                ("NWS_REDIS_PREFIX", format!("{queue}:result:")),
                ("NWS_JOB_RETRY_BASE", "100ms".to_owned()),
                ("NWS_JOB_RETRY_CAP", "300ms".to_owned()),
                ("NWS_SSE_HEARTBEAT", "200ms".to_owned()),
                // The optimizer's outage is noticed at once.
                ("NWS_BREAKER_FAILURES", "1".to_owned()),
                ("NWS_BREAKER_COOLDOWN", "1s".to_owned()),
            ],
        }
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    async fn deployment(&self) -> Deployment {
        let deployment = Deployment::start(&self.env(), &[]);
        until_job_queue(&deployment.gateway_url(), "SERVING").await;
        deployment
    }
}

const WM: &str = "queued";

async fn upload(gateway: &str, image: Vec<u8>, query: &str, respond_async: bool) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{gateway}/v1/watermark?{query}"))
        .body(image);
    if respond_async {
        request = request.header("prefer", "respond-async");
    }
    request.send().await.unwrap()
}

async fn accepted(response: reqwest::Response) -> (String, Value) {
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["location"], location.as_str());
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    (id, body)
}

async fn job(gateway: &str, id: &str) -> Value {
    let response = reqwest::get(format!("{gateway}/v1/jobs/{id}")).await.unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    response.json().await.unwrap()
}

async fn until_status(gateway: &str, id: &str, wanted: &str) -> Value {
    eventually(&format!("job {id} {wanted}"), async || {
        let job = job(gateway, id).await;
        (job["status"] == wanted).then_some(job)
    })
    .await
}

/// A Server-Sent Events stream, read as it comes.
struct Events {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
    comments: usize,
}

/// One event: its id and JSON data.
#[derive(Debug)]
struct Event {
    id: Option<u64>,
    data: Value,
}

impl Events {
    async fn open(gateway: &str, id: &str, last_event_id: Option<u64>) -> Self {
        let mut request = reqwest::Client::new().get(format!("{gateway}/v1/jobs/{id}/events"));
        if let Some(last) = last_event_id {
            request = request.header("last-event-id", last.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
            comments: 0,
        }
    }

    /// The next event; `None` when the server ended the stream.
    async fn next(&mut self) -> Option<Event> {
        let read = async {
            loop {
                while let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let mut id = None;
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(value) = line.strip_prefix("id:") {
                            id = value.trim().parse().ok();
                        } else if let Some(value) = line.strip_prefix("data:") {
                            data.push_str(value.trim_start());
                        } else if line.starts_with(':') {
                            self.comments += 1;
                        }
                    }
                    if !data.is_empty() {
                        return Some(Event {
                            id,
                            data: serde_json::from_str(&data).unwrap(),
                        });
                    }
                }
                match self.body.next().await {
                    Some(chunk) => self
                        .buffer
                        .push_str(std::str::from_utf8(&chunk.unwrap()).unwrap()),
                    None => return None,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("an event within a minute")
    }

    /// Events until the stream ends (after a final state).
    async fn until_end(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}

/// The optimizer's own answer for `image` with `options`, called directly.
async fn direct(optimizer: &ServiceProcess, image: &[u8], options: OptimizeOptions) -> Vec<u8> {
    let mut client = OptimizerClient::connect(optimizer.url("optimizer"))
        .await
        .unwrap();
    let mut messages = vec![OptimizeRequest {
        payload: Some(optimize_request::Payload::Options(options)),
    }];
    messages.extend(image.chunks(64 * 1024).map(|chunk| OptimizeRequest {
        payload: Some(optimize_request::Payload::Chunk(chunk.to_vec().into())),
    }));
    let mut responses = client
        .optimize(futures_util::stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(message) = responses.next().await {
        if let Some(optimize_response::Payload::Chunk(chunk)) = message.unwrap().payload {
            bytes.extend_from_slice(&chunk);
        }
    }
    bytes
}

#[tokio::test]
async fn an_upload_the_optimizer_cannot_take_is_queued_and_finished_when_it_returns() {
    let queue = Queue::on(&amqp_url());
    let mut deployment = queue.deployment().await;
    let gateway = deployment.gateway_url();
    deployment.optimizer.kill();

    let image = test_image("kleiber_4000x3000.jpg");
    let query = format!("format=jpeg&wm_text={WM}");
    let (id, body) = accepted(upload(&gateway, image.clone(), &query, false).await).await;
    assert_eq!(body["status"], "queued", "{body}");
    assert_eq!(body["events"], format!("/v1/jobs/{id}/events"));
    assert!(body["original"]["sha256"].as_str().is_some(), "{body}");
    assert_eq!(job(&gateway, &id).await["status"], "queued");

    // The same upload again is the same job, not a second one.
    let (again, _) = accepted(upload(&gateway, image.clone(), &query, false).await).await;
    assert_eq!(again, id);

    let mut events = Events::open(&gateway, &id, None).await;
    let first = events.next().await.expect("the current state");
    assert_eq!(first.data["status"], "queued");
    // Idle: only heartbeats (NWS_SSE_HEARTBEAT=200ms) until the optimizer
    // is back.
    tokio::time::sleep(Duration::from_millis(700)).await;

    let optimizer = deployment.start_optimizer(&queue.env());
    let rest = events.until_end().await;
    let states: Vec<&str> = rest.iter().filter_map(|e| e.data["status"].as_str()).collect();
    assert_eq!(states.last(), Some(&"done"), "{rest:?}");
    assert!(states.contains(&"processing"), "{states:?}");
    assert!(events.comments >= 2, "heartbeats while idle: {}", events.comments);
    let ids: Vec<u64> = std::iter::once(&first)
        .chain(&rest)
        .filter_map(|e| e.id)
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "event ids grow: {ids:?}");

    // The result is the one a direct call makes.
    let done = job(&gateway, &id).await;
    assert_eq!(done["attempts"], 1);
    // What its render took, stage by stage, inside the whole attempt.
    let timings = &done["timings"];
    let micros = |name: &str| {
        timings[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} in {done}"))
    };
    let stages = ["decode_us", "resize_us", "watermark_us", "encode_us"].map(micros);
    assert!(stages[0] > 0 && stages[3] > 0, "{timings}");
    assert!(micros("render_us") >= stages.iter().sum::<u64>(), "{timings}");
    let result = reqwest::get(format!("{gateway}{}", done["result"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(result.status(), 200);
    let served = result.bytes().await.unwrap();
    let options = OptimizeOptions {
        format: ImageFormat::Jpeg as i32,
        watermark_text: WM.to_owned(),
        ..OptimizeOptions::default()
    };
    assert!(
        served == direct(&optimizer, &image, options).await,
        "byte-identical to a direct call"
    );

    // A stream resumed after the first event gets the rest only; one
    // resumed after the last ends at once with nothing.
    let resumed = Events::open(&gateway, &id, first.id).await.until_end().await;
    assert_eq!(
        resumed.first().and_then(|e| e.id),
        rest.first().and_then(|e| e.id)
    );
    assert_eq!(resumed.last().unwrap().data["status"], "done");
    let last = ids.last().copied();
    assert!(
        Events::open(&gateway, &id, last)
            .await
            .until_end()
            .await
            .is_empty()
    );

    // The Go original's status route still answers for the original.
    let original = body["original"]["sha256"].as_str().unwrap();
    let status = reqwest::get(format!("{gateway}/status/{original}"))
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
}

#[tokio::test]
async fn prefer_respond_async_always_queues_and_a_job_survives_its_consumer_being_killed() {
    let queue = Queue::on(&amqp_url());
    let mut deployment = queue.deployment().await;
    let gateway = deployment.gateway_url();
    // The deployment's own optimizer consumes too; only one consumer may
    // hold the job when it is killed.
    deployment.optimizer.kill();
    let mut first = deployment.start_optimizer(&queue.env());

    // AVIF of the 12 MP photo: long enough to be killed mid-job.
    let image = test_image("kleiber_4000x3000.jpg");
    let response = upload(&gateway, image, "format=avif&quality=90&wm_text=killed", true).await;
    assert_eq!(response.headers()["preference-applied"], "respond-async");
    let (id, _) = accepted(response).await;
    until_status(&gateway, &id, "processing").await;
    first.kill();

    let _second = deployment.start_optimizer(&queue.env());
    let done = until_status(&gateway, &id, "done").await;
    // The kill was no failed attempt: the broker redelivered the job.
    assert_eq!(done["attempts"], 1, "{done}");
    deployment.until_result_kept(&id).await;
    let kept: Vec<_> = deployment.stored("results");
    assert_eq!(
        kept.iter().filter(|p| p.ends_with(&id)).count(),
        1,
        "exactly one result: {kept:?}"
    );
    let served = reqwest::get(format!("{gateway}/v1/images/{id}")).await.unwrap();
    assert_eq!(served.headers()["content-type"], "image/avif");
}

#[tokio::test]
async fn poison_jobs_are_dead_lettered_after_their_attempts_and_replay_once_fixed() {
    let queue = Queue::on(&amqp_url());
    let mut deployment = queue.deployment().await;
    let gateway = deployment.gateway_url();
    deployment.optimizer.kill();

    // Not an image past its first bytes: it can never succeed (one attempt).
    let mut corrupt = test_image("tiny_16x16.jpg")[..200].to_vec();
    corrupt.extend(std::iter::repeat_n(0xA5, 4000));
    let (corrupt_id, _) = accepted(upload(&gateway, corrupt, "wm_text=poison", true).await).await;
    // A good job queued behind it is not blocked by it.
    let good = test_image("tiny_16x16.jpg");
    let (good_id, _) = accepted(upload(&gateway, good.clone(), "wm_text=good", true).await).await;

    let optimizer = deployment.start_optimizer(&queue.env());
    until_status(&gateway, &good_id, "done").await;
    let dead = until_status(&gateway, &corrupt_id, "failed").await;
    assert_eq!(dead["attempts"], 1, "an invalid image gets one attempt: {dead}");
    assert_eq!(dead["error_code"], "INVALID_ARGUMENT", "{dead}");
    drop(optimizer);

    // Storage goes away before a consumer reads this one's original: failed
    // attempts until the last (NWS_JOB_MAX_ATTEMPTS=3), each after a backoff.
    let (storage_down_id, _) = accepted(
        upload(
            &gateway,
            test_image("tiny_16x16.jpg"),
            "wm_text=storage-down",
            true,
        )
        .await,
    )
    .await;
    deployment.storage.kill();
    let _optimizer = deployment.start_optimizer(&queue.env());
    let failed = until_status(&gateway, &storage_down_id, "failed").await;
    assert_eq!(failed["attempts"], 3, "{failed}");
    assert_eq!(failed["error_code"], "UNAVAILABLE", "{failed}");

    let listed: Value = reqwest::get(format!("{gateway}/v1/admin/dead-jobs"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jobs = listed["jobs"].as_array().unwrap();
    let entry = |id: &str| jobs.iter().find(|j| j["id"] == id).cloned();
    assert_eq!(entry(&corrupt_id).unwrap()["attempts"], 1, "{listed}");
    let storage_down = entry(&storage_down_id).unwrap();
    assert_eq!(storage_down["attempts"], 3, "{listed}");
    assert_eq!(storage_down["error_code"], "UNAVAILABLE");
    assert!(storage_down["error"].as_str().is_some_and(|e| !e.is_empty()));
    // Listing leaves them where they are.
    let again: Value = reqwest::get(format!("{gateway}/v1/admin/dead-jobs"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["jobs"].as_array().unwrap().len(), jobs.len());

    // The cause fixed, a replay finishes it; the invalid image stays dead.
    deployment.restart_storage(&[]);
    let replay = reqwest::Client::new()
        .post(format!(
            "{gateway}/v1/admin/dead-jobs/replay?id={storage_down_id}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 200);
    let replayed: Value = replay.json().await.unwrap();
    assert_eq!(replayed["replayed"], serde_json::json!([storage_down_id]));
    until_status(&gateway, &storage_down_id, "done").await;
    let remaining: Value = reqwest::get(format!("{gateway}/v1/admin/dead-jobs"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = remaining["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    assert_eq!(ids, [corrupt_id.as_str()]);
}

#[tokio::test]
async fn with_the_broker_down_no_upload_is_accepted_without_a_persisted_job() {
    let mut broker = PrivateRabbit::start();
    let queue = Queue::on(&broker.url());
    let mut deployment = queue.deployment().await;
    let gateway = deployment.gateway_url();
    deployment.optimizer.kill();
    let image = test_image("tiny_16x16.jpg");
    let mut accepted_ids = Vec::new();

    let (id, _) = accepted(upload(&gateway, image.clone(), "wm_text=before", false).await).await;
    accepted_ids.push(id);

    broker.kill();
    until_job_queue(&gateway, "UNAVAILABLE").await;
    let refused = upload(&gateway, image.clone(), "wm_text=during", false).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("optimizer"), "{body}");

    // Back, with the job it had persisted; the gateway reconnects alone.
    broker.restart();
    until_job_queue(&gateway, "SERVING").await;
    let (id, _) = accepted(upload(&gateway, image.clone(), "wm_text=after", false).await).await;
    accepted_ids.push(id);

    let _optimizer = deployment.start_optimizer(&queue.env());
    for id in &accepted_ids {
        until_status(&gateway, id, "done").await;
    }
}

#[tokio::test]
async fn an_event_stream_on_one_gateway_follows_a_job_queued_through_another() {
    let queue = Queue::on(&amqp_url());
    let mut deployment = queue.deployment().await;
    deployment.optimizer.kill();
    let second = deployment.another_gateway(&queue.env());
    until_job_queue(&second.url("gateway"), "SERVING").await;
    let (id, _) = accepted(
        upload(
            &deployment.gateway_url(),
            test_image("tiny_16x16.jpg"),
            "wm_text=elsewhere",
            true,
        )
        .await,
    )
    .await;
    let mut events = Events::open(&second.url("gateway"), &id, None).await;
    assert_eq!(events.next().await.unwrap().data["status"], "queued");
    let _optimizer = deployment.start_optimizer(&queue.env());
    let rest = events.until_end().await;
    assert_eq!(rest.last().unwrap().data["status"], "done", "{rest:?}");
}

#[tokio::test]
async fn without_a_queue_readiness_says_the_fallback_is_off_and_unknown_jobs_are_404() {
    let deployment = Deployment::start(&[], &[]);
    let gateway = deployment.gateway_url();
    let ready: Value = reqwest::get(format!("{gateway}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["jobs"]["fallback"]["status"], "DISABLED", "{ready}");
    assert!(
        ready["jobs"]["fallback"]["reason"]
            .as_str()
            .unwrap()
            .contains("NWS_AMQP_URL")
    );
    let unknown = reqwest::get(format!("{gateway}/v1/jobs/{}", "0".repeat(64)))
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let bad = reqwest::get(format!("{gateway}/v1/jobs/nope")).await.unwrap();
    assert_eq!(bad.status(), 400);
    // respond-async cannot be honoured: the upload is served as usual.
    let response = upload(&gateway, test_image("tiny_16x16.jpg"), "wm_text=sync", true).await;
    assert_eq!(response.status(), 200);
    assert!(!response.headers().contains_key("preference-applied"));
}

#[tokio::test]
async fn a_stopping_consumer_finishes_the_job_in_hand_or_hands_it_back() {
    let queue = Queue::on(&amqp_url());
    let mut deployment = queue.deployment().await;
    let gateway = deployment.gateway_url();
    deployment.optimizer.kill();
    let image = test_image("kleiber_4000x3000.jpg");
    let with_drain = |drain: &'static str| {
        let mut env = queue.env();
        env.push(("NWS_DRAIN_TIMEOUT", drain));
        env
    };

    // Time enough: the job in hand is finished before the process exits.
    let mut patient = deployment.start_optimizer(&with_drain("30s"));
    let (finished, _) =
        accepted(upload(&gateway, image.clone(), "format=avif&wm_text=patient", true).await).await;
    until_status(&gateway, &finished, "processing").await;
    assert!(patient.terminate().success(), "{}", patient.logs());
    assert_eq!(
        patient.count_logged("finishing the jobs in hand before stopping"),
        1
    );
    let done = job(&gateway, &finished).await;
    assert_eq!(
        (done["status"].as_str(), done["attempts"].as_u64()),
        (Some("done"), Some(1)),
        "{done}"
    );

    // Not enough: the job goes back to the queue, and the next consumer
    // finishes it; being handed back is no failed attempt.
    let mut hasty = deployment.start_optimizer(&with_drain("100ms"));
    let (handed_back, _) = accepted(upload(&gateway, image, "format=avif&wm_text=hasty", true).await).await;
    until_status(&gateway, &handed_back, "processing").await;
    assert!(hasty.terminate().success(), "{}", hasty.logs());
    assert_eq!(
        hasty.count_logged("drain deadline passed: handing the jobs in hand back to the queue"),
        1,
        "{}",
        hasty.logs()
    );
    let _next = deployment.start_optimizer(&queue.env());
    let done = until_status(&gateway, &handed_back, "done").await;
    assert_eq!(done["attempts"], 1, "{done}");
}
