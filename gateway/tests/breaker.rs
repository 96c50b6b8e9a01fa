//! The optimizer's circuit breaker through the network, with the three
//! services as processes of their own: the optimizer killed as a crash
//! would, uploads refused at once while the breaker is open, and a new
//! optimizer on the same address taken back after the cool-down.

use nws_runtime::testing::{Deployment, Scrape, ServiceProcess, eventually, test_image, workspace_binary};
use serde_json::Value;

const OPENED: &str = "circuit breaker opened: calls are refused until the cool-down is over";
const CLOSED: &str = "circuit breaker closed";

struct Deployed {
    services: Deployment,
    http: reqwest::Client,
    photo: Vec<u8>,
}

/// What an upload answered.
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

impl Answer {
    /// The breaker's own refusal: the optimizer was not called.
    fn is_breaker_refusal(&self) -> bool {
        self.status == 503 && self.body["code"] == "UNAVAILABLE" && self.message().contains("not called")
    }

    fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }
}

impl Deployed {
    fn gateway(&self) -> String {
        self.services.gateway_url()
    }

    /// Uploads the photo with options of its own (`wm_text=<text>`), so no
    /// cache tier holds the result and only the optimizer can answer.
    async fn upload(&self, text: &str) -> Answer {
        let response = self
            .http
            .post(format!(
                "{}/v1/watermark?format=jpeg&wm_text={text}",
                self.gateway()
            ))
            .body(self.photo.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse().expect("Retry-After in whole seconds"));
        let body = if status == 200 {
            Value::Null
        } else {
            response.json().await.unwrap()
        };
        Answer {
            status,
            retry_after,
            body,
        }
    }

    /// The optimizer's entry of `/readyz`.
    async fn optimizer_readiness(&self) -> Value {
        let ready: Value = self
            .http
            .get(format!("{}/readyz", self.gateway()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ready["upstreams"]["optimizer"].clone()
    }

    async fn metrics(&self) -> Scrape {
        Scrape::fetch(&format!("{}/metrics", self.gateway())).await
    }
}

const OPTIMIZER: (&str, &str) = ("upstream", "optimizer");

#[tokio::test]
async fn a_dead_optimizer_opens_the_breaker_and_a_new_one_on_its_address_closes_it() {
    let mut mesh = Deployed {
        services: Deployment::start(
            &[],
            &[("NWS_BREAKER_FAILURES", "3"), ("NWS_BREAKER_COOLDOWN", "2s")],
        ),
        http: reqwest::Client::new(),
        photo: test_image("tiny_16x16.jpg"),
    };
    assert_eq!(mesh.upload("before").await.status, 200);
    let ready = mesh.optimizer_readiness().await;
    assert_eq!(
        ready["breaker"],
        serde_json::json!({ "state": "closed" }),
        "{ready}"
    );

    let address = mesh.services.optimizer.addr("optimizer");
    mesh.services.optimizer.kill();

    // Each upload reaches for the optimizer and fails (refused, or the
    // connection it had broken off), until the third failure in a row
    // opens the breaker.
    let mut tries = 0;
    let refused = eventually("an upload refused by the open breaker", async || {
        tries += 1;
        let answer = mesh.upload(&format!("down-{tries}")).await;
        assert!(answer.status >= 500, "{} {}", answer.status, answer.body);
        if answer.status == 503 {
            assert!(answer.retry_after.is_some(), "every 503 says when to retry");
        }
        answer.is_breaker_refusal().then_some(answer)
    })
    .await;
    assert!(tries > 3, "three failures came first: {tries} tries");
    let retry_after = refused.retry_after.expect("Retry-After");
    assert!(
        (1..=2).contains(&retry_after),
        "within the 2 s cool-down: {retry_after}"
    );
    assert!(refused.message().contains("retry in"), "{}", refused.message());
    let opened = mesh.services.gateway.until_logged(OPENED, 1).await;
    assert_eq!(opened[0]["upstream"], "optimizer", "{}", opened[0]);
    assert!(
        opened[0]["reason"]
            .as_str()
            .is_some_and(|reason| reason.starts_with("3 consecutive failures")),
        "{}",
        opened[0]
    );

    // The refusals were the breaker's: counted, and no call was made.
    let metrics = mesh.metrics().await;
    let gateway = ("service", "gateway");
    assert!(metrics.sum("nws_breaker_rejected_calls_total", &[gateway, OPTIMIZER]) >= 1.0);
    assert!(
        metrics.sum(
            "nws_breaker_transitions_total",
            &[gateway, OPTIMIZER, ("to", "open")]
        ) >= 1.0
    );
    assert!(metrics.help("nws_breaker_state").is_some());
    assert!(metrics.help("nws_breaker_rejected_calls_total").is_some());
    let rejected = eventually("the breaker open for /readyz", async || {
        let ready = mesh.optimizer_readiness().await;
        (ready["breaker"]["state"] == "open").then_some(ready)
    })
    .await;
    let retry_in = rejected["breaker"]["retry_in_s"]
        .as_u64()
        .expect("retry_in_s while open");
    assert!((1..=2).contains(&retry_in), "{rejected}");
    assert_eq!(
        rejected["status"], "UNAVAILABLE",
        "the health check sees it down too"
    );

    // A new optimizer on the old address: after the cool-down a trial call
    // reaches it, succeeds, and closes the breaker.
    let storage_url = mesh.services.storage.url("storage");
    let address = address.to_string();
    mesh.services.optimizer = ServiceProcess::start(
        &workspace_binary("optimizer-svc"),
        &[
            ("NWS_OPTIMIZER_ADDR", address.as_str()),
            ("NWS_STORAGE_URL", storage_url.as_str()),
        ],
        &["optimizer"],
    );
    let mut tries = 0;
    eventually("an upload served again", async || {
        tries += 1;
        let answer = mesh.upload(&format!("back-{tries}")).await;
        (answer.status == 200).then_some(())
    })
    .await;
    mesh.services.gateway.until_logged(CLOSED, 1).await;
    let ready = mesh.optimizer_readiness().await;
    assert_eq!(
        ready["breaker"],
        serde_json::json!({ "state": "closed" }),
        "{ready}"
    );
    let metrics = mesh.metrics().await;
    assert_eq!(metrics.sum("nws_breaker_state", &[gateway, OPTIMIZER]), 0.0);
    assert_eq!(
        metrics.sum(
            "nws_breaker_transitions_total",
            &[gateway, OPTIMIZER, ("to", "closed")]
        ),
        1.0
    );
    assert!(
        metrics.sum(
            "nws_breaker_transitions_total",
            &[gateway, OPTIMIZER, ("to", "half_open")]
        ) >= 1.0
    );
    assert_eq!(mesh.upload("after").await.status, 200);
}
