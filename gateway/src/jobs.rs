//! Durable jobs at the edge: an upload the optimizer cannot serve now (or
//! one that asks for it with `Prefer: respond-async`) is kept as a job in
//! RabbitMQ and answered `202 Accepted`; its status is read from Redis,
//! whose announcements reach whichever gateway holds a client's event
//! stream, and from Storage, which holds the truth of `done`.

use std::{sync::Arc, time::Duration};

use http::HeaderMap;
use nws_jobs::{Broker, PublishError, Record, State, StatusStore};
use nws_runtime::{policy::UrlSigner, telemetry::propagation::inject_span};
use nws_watermark::{
    pb::Namespace,
    render::{RenderJob, ResultKey},
};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::{
    error::{ApiError, Upstream},
    upstream::Upstreams,
};

/// A queued or running job whose status has not changed for this long is
/// published again when the same upload comes back: its status may be
/// stale (written while Redis was away), and a job is idempotent.
const STALE_AFTER: Duration = Duration::from_secs(15 * 60);

/// The job queue and job status, as far as they are configured.
#[derive(Clone)]
pub struct Jobs {
    broker: Option<Broker>,
    status: Option<StatusStore>,
    /// Every status change any consumer announced.
    changes: Option<broadcast::Sender<Arc<Record>>>,
    pub heartbeat: Duration,
    /// Fires when the gateway starts to stop: event streams end (clients
    /// reconnect, with Last-Event-ID, to another replica) rather than hold
    /// the drain.
    pub stopping: CancellationToken,
}

impl Jobs {
    pub fn new(
        broker: Option<Broker>,
        status: Option<StatusStore>,
        heartbeat: Duration,
        background: CancellationToken,
        stopping: CancellationToken,
    ) -> Self {
        let changes = status.as_ref().map(|status| status.watch(background));
        Self {
            broker,
            status,
            changes,
            heartbeat,
            stopping,
        }
    }

    /// Whether an upload could be queued right now.
    pub fn can_queue(&self) -> bool {
        self.broker.as_ref().is_some_and(|broker| broker.status().is_ok())
    }

    pub fn is_configured(&self) -> bool {
        self.broker.is_some()
    }

    /// Keeps `job` until a consumer has rendered it; returns its status
    /// once the broker has confirmed it is persisted. A job already queued
    /// or running is the same job: it is not queued twice.
    pub async fn submit(&self, job: &RenderJob) -> Result<Record, ApiError> {
        let broker = self.broker.as_ref().ok_or(ApiError::NoQueue)?;
        let id = job.key().to_string();
        if let Ok(Some(current)) = self.current(&id).await
            && !current.state.is_final()
            && !is_stale(&current)
        {
            tracing::info!(job = %id, state = ?current.state, "the same job is already queued");
            return Ok(current);
        }
        let mut trace = HeaderMap::new();
        inject_span(&tracing::Span::current(), &mut trace);
        broker.submit(job, &trace).await.map_err(ApiError::from)?;
        metrics::counter!("nws_jobs_submitted_total", "service" => nws_runtime::telemetry::GATEWAY.name)
            .increment(1);
        let mut record = Record::new(id, State::Queued, 0);
        if let Some(status) = &self.status {
            match status.record(&record).await {
                Ok(Some(seq)) => record.seq = seq,
                // A consumer was quicker: it is running, or done.
                Ok(None) => {
                    if let Ok(Some(done)) = self.current(&record.id).await {
                        record = done;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, job = %record.id, "job queued, but its status could not be recorded")
                }
            }
        }
        tracing::info!(job = %record.id, original = job.original_sha256(), "upload queued as a durable job");
        Ok(record)
    }

    /// The job's latest status from Redis, if any; `Err` when Redis is
    /// configured but does not answer.
    async fn current(&self, id: &str) -> Result<Option<Record>, ()> {
        let Some(status) = self.status.as_ref() else {
            return Ok(None);
        };
        status.get(id).await.map_err(|error| {
            tracing::warn!(%error, job = id, "job status unavailable");
        })
    }

    /// What is known of job `id`: Storage's result first (the truth of
    /// `done`, whatever Redis says), then the recorded status.
    pub async fn lookup(&self, id: ResultKey, upstreams: &Upstreams) -> Result<Lookup, ApiError> {
        let recorded = self.current(&id.to_string()).await;
        if let Ok(Some(record)) = &recorded
            && record.state == State::Done
        {
            return Ok(Lookup::Found(Box::new(record.clone())));
        }
        let stored = match is_stored(id, upstreams).await {
            Ok(stored) => stored,
            // Storage away: what Redis says is the best answer there is.
            Err(error) => match &recorded {
                Ok(Some(record)) => {
                    tracing::debug!(%error, job = %id, "storage unavailable; answering with the recorded status");
                    return Ok(Lookup::Found(Box::new(record.clone())));
                }
                _ => return Err(error),
            },
        };
        if stored {
            let previous = recorded.as_ref().ok().and_then(Option::as_ref);
            let mut done = Record::new(id.to_string(), State::Done, previous.map_or(0, |r| r.attempts));
            done.result_key = Some(id.to_string());
            return Ok(Lookup::Found(Box::new(done)));
        }
        Ok(match recorded {
            Ok(Some(record)) => Lookup::Found(Box::new(record)),
            // Without Redis a queued job is known only once it is done.
            Ok(None) if self.status.is_none() => Lookup::NotYetKnown,
            Ok(None) => Lookup::Unknown,
            Err(()) => Lookup::NotYetKnown,
        })
    }

    /// Changes of job `id` after event `after`, from Redis.
    pub async fn changes_after(&self, id: &str, after: u64) -> Vec<Record> {
        let Some(status) = &self.status else {
            return Vec::new();
        };
        status.changes_after(id, after).await.unwrap_or_else(|error| {
            tracing::debug!(%error, job = id, "job changes unavailable");
            Vec::new()
        })
    }

    /// Every change announced from now on.
    pub fn subscribe(&self) -> Option<broadcast::Receiver<Arc<Record>>> {
        self.changes.as_ref().map(broadcast::Sender::subscribe)
    }

    pub fn broker(&self) -> Result<&Broker, ApiError> {
        self.broker.as_ref().ok_or(ApiError::NoQueue)
    }

    /// Records that replayed jobs are queued again.
    pub async fn requeued(&self, ids: &[ResultKey]) {
        if let Some(status) = &self.status {
            for id in ids {
                if let Err(error) = status
                    .record(&Record::new(id.to_string(), State::Queued, 0))
                    .await
                {
                    tracing::warn!(%error, job = %id, "job replayed, but its status could not be recorded");
                }
            }
        }
    }

    /// The `jobs` section of `/readyz`.
    pub async fn readiness(&self) -> Value {
        let queue = match &self.broker {
            None => {
                json!({ "status": "DISABLED", "reason": "NWS_AMQP_URL is not set: uploads the optimizer cannot serve get 503" })
            }
            Some(broker) => match broker.status() {
                Ok(()) => json!({ "status": "SERVING", "queue": broker.topology().work }),
                Err(reason) => {
                    json!({ "status": "UNAVAILABLE", "queue": broker.topology().work, "reason": reason })
                }
            },
        };
        let status = match &self.status {
            None => {
                json!({ "status": "DISABLED", "reason": "NWS_REDIS_URL is not set: job status comes from Storage only (done or unknown)" })
            }
            Some(store) => match store.ping().await {
                Ok(()) => json!({ "status": "SERVING" }),
                Err(error) => json!({ "status": "UNAVAILABLE", "reason": error.to_string() }),
            },
        };
        json!({ "fallback": queue, "status": status })
    }
}

/// What a job lookup found.
pub enum Lookup {
    Found(Box<Record>),
    /// Nothing anywhere: no such job.
    Unknown,
    /// No result yet, and no status to say more (Redis is not configured,
    /// or does not answer).
    NotYetKnown,
}

/// Whether Storage holds the result `id`.
async fn is_stored(id: ResultKey, upstreams: &Upstreams) -> Result<bool, ApiError> {
    match upstreams.stat(Namespace::Results, &id.to_string()).await {
        Ok(_) => Ok(true),
        Err(error) if error.upstream_code(Upstream::Storage) == Some(tonic::Code::NotFound) => Ok(false),
        Err(error) => Err(error),
    }
}

fn is_stale(record: &Record) -> bool {
    humantime::parse_rfc3339(&record.updated)
        .ok()
        .and_then(|at| at.elapsed().ok())
        .is_some_and(|age| age > STALE_AFTER)
}

/// A job as clients read it (`GET /v1/jobs/{id}`, each event, the 202
/// body): its status, and where to find the rest.
pub fn view(record: &Record, signer: Option<&UrlSigner>) -> Value {
    let sign = |path: String| signer.map_or_else(|| path.clone(), |signer| signer.sign(&path));
    let mut view = json!({
        "id": record.id,
        "status": record.state,
        "attempts": record.attempts,
        "updated": record.updated,
        "location": sign(format!("/v1/jobs/{}", record.id)),
        "events": sign(format!("/v1/jobs/{}/events", record.id)),
    });
    let object = view.as_object_mut().expect("a JSON object");
    if let Some(key) = &record.result_key {
        object.insert(
            "result".to_owned(),
            Value::String(sign(format!("/v1/images/{key}"))),
        );
    }
    if let Some(timings) = &record.timings {
        object.insert(
            "timings".to_owned(),
            serde_json::to_value(timings).expect("integers serialise"),
        );
    }
    for (name, value) in [
        ("error_code", &record.error_code),
        ("error", &record.error),
        ("retry_at", &record.retry_at),
    ] {
        if let Some(value) = value {
            object.insert(name.to_owned(), Value::String(value.clone()));
        }
    }
    view
}

impl From<PublishError> for ApiError {
    fn from(error: PublishError) -> Self {
        ApiError::QueueUnavailable(error.to_string())
    }
}
