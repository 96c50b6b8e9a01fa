//! The browser front-end in real headless Chromium (Debian's `chromium`,
//! driven by `playwright-core` from `web/e2e/browser.mjs`) against the three
//! services as separate processes, with the machine's Redis and RabbitMQ.
//! This side owns the processes: the script asks on its stdout when a
//! scenario needs the optimizer stopped or started again. Screenshots are
//! kept in `web/test-results/` (or NWS_E2E_ARTIFACTS).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use nws_runtime::testing::{
    Deployment, amqp_url, redis_url, test_images_dir, tool, unique_queue, until_job_queue,
};
use serde_json::Value;

/// Bounds the whole browser run; it takes about ten seconds.
const RUN_BOUND: Duration = Duration::from_secs(600);
const TRACE_VIEWER: &str = "http://traces.example/trace/{trace_id}";

#[tokio::test(flavor = "multi_thread")]
async fn the_page_works_in_a_real_browser() {
    let queue = unique_queue("browser");
    let amqp = amqp_url();
    let redis = redis_url();
    let status_prefix = format!("{queue}:");
    let result_prefix = format!("{queue}:result:");
    let every = [
        ("NWS_AMQP_URL", amqp.as_str()),
        ("NWS_JOB_QUEUE", queue.as_str()),
        ("NWS_JOB_STATUS_PREFIX", status_prefix.as_str()),
        ("NWS_REDIS_URL", redis.as_str()),
        ("NWS_REDIS_PREFIX", result_prefix.as_str()),
        ("NWS_SSE_HEARTBEAT", "1s"),
        // The optimizer's outage is noticed by the first upload.
        ("NWS_BREAKER_FAILURES", "1"),
        ("NWS_BREAKER_COOLDOWN", "1s"),
    ];
    let mut deployment = Deployment::start(&every, &[("NWS_TRACE_VIEWER_URL", TRACE_VIEWER)]);
    let gateway = deployment.gateway_url();
    until_job_queue(&gateway, "SERVING").await;

    let web = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../web");
    let artifacts =
        std::env::var_os("NWS_E2E_ARTIFACTS").map_or_else(|| web.join("test-results"), PathBuf::from);
    let mut script = Script(
        Command::new(tool("NWS_TEST_NODE"))
            .arg("e2e/browser.mjs")
            .current_dir(&web)
            .env("NWS_E2E_BASE_URL", &gateway)
            .env("NWS_TEST_IMAGES", test_images_dir())
            .env("NWS_CHROMIUM", tool("NWS_CHROMIUM"))
            .env("NWS_E2E_ARTIFACTS", &artifacts)
            .env("NWS_E2E_TRACE_VIEWER", TRACE_VIEWER)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node with web/e2e/browser.mjs"),
    );
    let mut answers = script.0.stdin.take().unwrap();
    // The script's lines, read on a thread of their own as they come.
    let (sender, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = BufReader::new(script.0.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut restarted = None;
    let mut passed = false;
    let run = async {
        while let Some(line) = lines.recv().await {
            let Ok(message) = serde_json::from_str::<Value>(&line) else {
                println!("browser: {line}");
                continue;
            };
            if let Some(step) = message["step"].as_str() {
                println!("browser: {step}");
                passed |= step == "all scenarios passed";
                continue;
            }
            match message["ask"].as_str() {
                Some("stop-optimizer") => deployment.optimizer.kill(),
                // Back where the gateway expects it: the job it consumes
                // renders the queued upload, and later uploads go to it.
                Some("start-optimizer") => {
                    let addr = deployment.optimizer.addr("optimizer").to_string();
                    let mut env = every.to_vec();
                    env.push(("NWS_OPTIMIZER_ADDR", addr.as_str()));
                    restarted = Some(deployment.start_optimizer(&env));
                }
                other => panic!("the script asked for {other:?}"),
            }
            answers.write_all(b"ok\n").unwrap();
        }
    };
    tokio::time::timeout(RUN_BOUND, run)
        .await
        .expect("the browser run ends within its bound");
    let status = script.0.wait().unwrap();
    assert!(
        status.success() && passed,
        "the browser scenarios failed ({status}); see the output above and the screenshots in {}",
        artifacts.display()
    );
    drop(restarted);
}

/// The browser script, killed if the test ends first.
struct Script(Child);

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
