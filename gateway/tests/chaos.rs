//! Chaos: a steady stream of uploads while the optimizer, Redis and
//! RabbitMQ are killed and started again at random; then every upload that
//! was answered 200 or 202 must end with its result. Loopback only, private
//! Redis and RabbitMQ, bounded: `NWS_CHAOS_UPLOADS` uploads (default 30),
//! one every 200 ms, a fault every `NWS_CHAOS_FAULT_EVERY` of them.
//!
//! The long run: `NWS_CHAOS_UPLOADS=3000 cargo test -p gateway --test chaos -- --nocapture`
//! (about ten minutes).

use std::time::{Duration, SystemTime};

use nws_runtime::testing::{
    Deployment, PrivateRabbit, PrivateRedis, ServiceProcess, eventually, test_image, unique_queue,
};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small, seedable generator: the run prints its seed, so a failure can
/// be replayed with NWS_CHAOS_SEED.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % sides
    }
}

#[derive(Debug)]
enum Answer {
    /// 200: the result's key (its ETag).
    Served(String),
    /// 202: the job's id, which is the result's key.
    Queued(String),
    /// Refused with 503 + Retry-After: no promise was made.
    Refused,
    /// The connection failed before an answer: no promise either.
    Unanswered,
}

#[tokio::test]
async fn no_accepted_upload_is_lost_while_parts_fail() {
    let uploads = setting("NWS_CHAOS_UPLOADS", 30);
    let fault_every = setting("NWS_CHAOS_FAULT_EVERY", 4).max(1);
    let seed = std::env::var("NWS_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("chaos: {uploads} uploads, a fault every {fault_every}, seed {seed}");
    let mut dice = Dice(seed);

    let mut broker = PrivateRabbit::start();
    let mut redis = PrivateRedis::start();
    let queue = unique_queue("chaos");
    let env: Vec<(&str, String)> = vec![
        ("NWS_AMQP_URL", broker.url()),
        ("NWS_JOB_QUEUE", queue.clone()),
        ("NWS_REDIS_URL", redis.url()),
        ("NWS_JOB_RETRY_BASE", "200ms".to_owned()),
        ("NWS_JOB_RETRY_CAP", "1s".to_owned()),
        ("NWS_JOB_MAX_ATTEMPTS", "5".to_owned()),
        ("NWS_BREAKER_FAILURES", "2".to_owned()),
        ("NWS_BREAKER_COOLDOWN", "1s".to_owned()),
        ("NWS_DRAIN_TIMEOUT", "2s".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut deployment = Deployment::start(&env, &[]);
    let gateway = deployment.gateway_url();
    let optimizer_addr = deployment.optimizer.addr("optimizer").to_string();
    let mut optimizer_env = env.clone();
    optimizer_env.push(("NWS_OPTIMIZER_ADDR", optimizer_addr.as_str()));
    let mut optimizer: Option<ServiceProcess> = None;
    let mut optimizer_up = true;
    let mut redis_up = true;
    let mut broker_up = true;

    let image = test_image("tiny_16x16.jpg");
    // Idle connections are dropped before the gateway closes them
    // (NWS_HEADER_READ_TIMEOUT, 10 s): a fault's restart can pause the
    // stream that long, and reusing a connection as the server closes it
    // is a race no server can win.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut answers = Vec::with_capacity(uploads);
    for n in 0..uploads {
        if n % fault_every == fault_every - 1 {
            match dice.roll(3) {
                0 if optimizer_up => {
                    match optimizer.as_mut() {
                        Some(process) => process.kill(),
                        None => deployment.optimizer.kill(),
                    }
                    optimizer_up = false;
                }
                0 => {
                    optimizer = Some(deployment.start_optimizer(&optimizer_env));
                    optimizer_up = true;
                }
                1 if redis_up => {
                    redis.stop();
                    redis_up = false;
                }
                1 => {
                    redis.restart();
                    redis_up = true;
                }
                _ if broker_up => {
                    broker.kill();
                    broker_up = false;
                }
                _ => {
                    broker.restart();
                    broker_up = true;
                }
            }
            println!("after upload {n}: optimizer {optimizer_up}, redis {redis_up}, broker {broker_up}");
        }
        let sent = client
            .post(format!("{gateway}/v1/watermark?format=jpeg&wm_text=chaos-{n}"))
            .body(image.clone())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            // No answer, no promise; counted, and told apart from refusals.
            Err(error) => {
                println!("upload {n}: no answer: {error}");
                answers.push(Answer::Unanswered);
                continue;
            }
        };
        let status = response.status().as_u16();
        let answer = match status {
            200 => Answer::Served(
                response.headers()["etag"]
                    .to_str()
                    .unwrap()
                    .trim_matches('"')
                    .to_owned(),
            ),
            202 => Answer::Queued(
                response.headers()["location"].to_str().unwrap()["/v1/jobs/".len()..].to_owned(),
            ),
            503 => {
                assert!(
                    response.headers().contains_key("retry-after"),
                    "every 503 says when to retry"
                );
                Answer::Refused
            }
            other => panic!("upload {n}: {other} {:?}", response.text().await),
        };
        answers.push(answer);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Everything back; every promise kept.
    if !optimizer_up {
        optimizer = Some(deployment.start_optimizer(&optimizer_env));
    }
    if !redis_up {
        redis.restart();
    }
    if !broker_up {
        broker.restart();
    }
    let accepted: Vec<&str> = answers
        .iter()
        .filter_map(|answer| match answer {
            Answer::Served(key) | Answer::Queued(key) => Some(key.as_str()),
            Answer::Refused | Answer::Unanswered => None,
        })
        .collect();
    let queued = answers.iter().filter(|a| matches!(a, Answer::Queued(_))).count();
    let mut completed = 0;
    for key in &accepted {
        let done = tokio::time::timeout(
            Duration::from_secs(90),
            eventually(&format!("result {key}"), async || {
                let response = client
                    .get(format!("{gateway}/v1/images/{key}"))
                    .send()
                    .await
                    .ok()?;
                (response.status() == 200).then_some(())
            }),
        )
        .await;
        if done.is_ok() {
            completed += 1;
        }
    }
    let unanswered = answers.iter().filter(|a| matches!(a, Answer::Unanswered)).count();
    let refused = answers.len() - accepted.len() - unanswered;
    println!(
        "accepted / completed / lost: {} / {completed} / {} ({queued} of them queued; {refused} refused with 503 + Retry-After, {unanswered} unanswered)",
        accepted.len(),
        accepted.len() - completed
    );
    assert!(
        unanswered * 20 <= uploads,
        "{unanswered} of {uploads} uploads got no answer"
    );
    assert_eq!(completed, accepted.len(), "lost uploads (seed {seed})");
    drop(optimizer);
}
