//! One connection to RabbitMQ per process, kept up by a supervisor: it
//! connects with backoff, declares the topology, opens a publisher channel
//! in confirm mode, and starts over whenever the connection fails. Users
//! see either a live link or the reason there is none; nothing waits for a
//! broker that is down.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use futures_util::StreamExt as _;
use http::HeaderMap;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event,
    options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions},
};
use nws_runtime::config::SecretUrl;
use nws_watermark::render::{RenderJob, ResultKey};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    JobsConfig,
    message::{self, Failure},
    topology::Topology,
};

/// Why a job was not persisted: the publisher must not answer 202.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error("the job queue is unavailable: {0}")]
    Down(String),
    #[error("the broker did not confirm the job within {0:?} (NWS_AMQP_CONFIRM_TIMEOUT)")]
    Unconfirmed(Duration),
    #[error("the broker refused the job (nack)")]
    Nacked,
    #[error("the broker could not route the job to queue {0} (it does not exist)")]
    Unroutable(String),
    #[error("the broker failed: {0}")]
    Broker(String),
}

/// A live connection and its publisher channel.
#[derive(Clone)]
pub struct Link {
    pub connection: Arc<Connection>,
    publisher: Channel,
}

#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    topology: Topology,
    confirm_timeout: Duration,
    link: watch::Sender<Option<Link>>,
    down: Mutex<String>,
}

impl Broker {
    /// Starts the supervisor (until `stop`); `None` without NWS_AMQP_URL.
    pub fn start(config: &JobsConfig, process: &'static str, stop: CancellationToken) -> Option<Self> {
        let url = config.amqp_url.clone()?;
        let broker = Self {
            inner: Arc::new(Inner {
                topology: Topology::new(&config.job_queue, config.max_attempts),
                confirm_timeout: config.confirm_timeout,
                link: watch::channel(None).0,
                down: Mutex::new("not connected yet".to_owned()),
            }),
        };
        tokio::spawn(broker.clone().supervise(url, process, stop));
        Some(broker)
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// `Ok` while connected, or why not, for `/readyz` and refusals.
    pub fn status(&self) -> Result<(), String> {
        match &*self.inner.link.borrow() {
            Some(_) => Ok(()),
            None => Err(self.inner.down.lock().expect("never poisoned").clone()),
        }
    }

    /// The live link, once there is one (consumers wait here while the
    /// broker is down).
    pub async fn connected(&self) -> Link {
        let mut link = self.inner.link.subscribe();
        let found = link
            .wait_for(Option::is_some)
            .await
            .expect("the sender lives in self");
        found.clone().expect("waited for Some")
    }

    /// Resolves when `link` is no longer the live one.
    pub async fn lost(&self, link: &Link) {
        let mut current = self.inner.link.subscribe();
        let _ = current
            .wait_for(|now| {
                now.as_ref()
                    .is_none_or(|now| !Arc::ptr_eq(&now.connection, &link.connection))
            })
            .await;
    }

    /// Publishes `job` to the work queue as a new job, and returns once the
    /// broker has confirmed it is persisted.
    pub async fn submit(&self, job: &RenderJob, trace: &HeaderMap) -> Result<(), PublishError> {
        let (body, properties) = message::encode(job, job.key(), 0, SystemTime::now(), None, trace);
        let queue = self.inner.topology.work.clone();
        self.publish(&queue, &body, properties).await
    }

    /// Publishes a message to `queue` through the default exchange, and
    /// returns once the broker has confirmed it is persisted (and routed:
    /// the publish is mandatory).
    pub async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let link = self.inner.link.borrow().clone();
        let Some(link) = link else {
            return Err(PublishError::Down(self.status().err().unwrap_or_default()));
        };
        let confirmed = async {
            link.publisher
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties,
                )
                .await?
                .await
        };
        match tokio::time::timeout(self.inner.confirm_timeout, confirmed).await {
            Err(_) => Err(PublishError::Unconfirmed(self.inner.confirm_timeout)),
            Ok(Err(error)) => Err(PublishError::Broker(error.to_string())),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(PublishError::Unroutable(queue.to_owned())),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Broker(
                "the publisher channel is not in confirm mode".to_owned(),
            )),
        }
    }

    async fn supervise(self, url: SecretUrl, process: &'static str, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut reported = false;
        loop {
            let attempt = tokio::select! {
                () = stop.cancelled() => return,
                attempt = connect(&url, process, &self.inner.topology) => attempt,
            };
            match attempt {
                Ok((link, mut events)) => {
                    tracing::info!(broker = %url, queue = %self.inner.topology.work, "job queue connected");
                    backoff = Duration::from_millis(100);
                    reported = false;
                    self.inner.link.send_replace(Some(link.clone()));
                    let reason = loop {
                        tokio::select! {
                            () = stop.cancelled() => {
                                self.inner.link.send_replace(None);
                                let _ = link.connection.close(200, "shutting down".into()).await;
                                return;
                            }
                            event = events.next() => match event {
                                Some(Event::Error(error)) => break error.to_string(),
                                Some(Event::ConnectionBlocked(reason)) => {
                                    tracing::warn!(%reason, "the broker blocks publishing (a resource alarm)");
                                }
                                Some(_) => {}
                                None => break "the connection ended".to_owned(),
                            },
                            // A connection can end without an error event
                            // (closed by the broker): look now and then.
                            () = tokio::time::sleep(Duration::from_secs(1)) => {
                                if !link.connection.status().connected() || !link.publisher.status().connected() {
                                    break "the connection closed".to_owned();
                                }
                            }
                        }
                    };
                    *self.inner.down.lock().expect("never poisoned") =
                        format!("broker connection lost: {reason}");
                    self.inner.link.send_replace(None);
                    tracing::warn!(%reason, "job queue connection lost; reconnecting");
                }
                Err(error) => {
                    *self.inner.down.lock().expect("never poisoned") =
                        format!("cannot reach the broker: {error}");
                    if !reported {
                        tracing::warn!(broker = %url, %error, "job queue unavailable; retrying with backoff");
                        reported = true;
                    } else {
                        tracing::debug!(broker = %url, %error, "job queue still unavailable");
                    }
                }
            }
            let pause = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Up to `limit` dead-lettered jobs, oldest first, left in their queue.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, PublishError> {
        let link = self.link_now()?;
        let channel = open(&link).await?;
        let mut found = Vec::new();
        while found.len() < limit {
            let got = self.next_dead(&channel).await?;
            let Some(got) = got else { break };
            found.push(DeadLetter::read(&got.delivery.data, &got.delivery.properties));
            if got.message_count == 0 {
                break;
            }
        }
        // Unacknowledged, the messages go back to the queue as the channel closes.
        let _ = channel.close(200, "listed".into()).await;
        Ok(found)
    }

    /// Sends dead-lettered jobs back to the work queue with fresh attempts:
    /// all of them, or those with id `only`. Returns their ids.
    pub async fn replay(&self, only: Option<ResultKey>) -> Result<Vec<ResultKey>, PublishError> {
        let link = self.link_now()?;
        let channel = open(&link).await?;
        let mut replayed = Vec::new();
        let mut remaining = None;
        while remaining != Some(0) {
            let got = self.next_dead(&channel).await?;
            let Some(got) = got else { break };
            remaining = Some(got.message_count);
            let Ok(queued) = message::decode(&got.delivery.data, &got.delivery.properties) else {
                continue;
            };
            if only.is_some_and(|id| id != queued.id) {
                continue;
            }
            let (body, properties) = message::encode(
                &queued.job,
                queued.id,
                0,
                queued.queued_at.unwrap_or_else(SystemTime::now),
                None,
                &queued.trace,
            );
            self.publish(&self.inner.topology.work, &body, properties).await?;
            got.delivery
                .acker
                .ack(lapin::options::BasicAckOptions::default())
                .await
                .map_err(|e| PublishError::Broker(e.to_string()))?;
            replayed.push(queued.id);
        }
        let _ = channel.close(200, "replayed".into()).await;
        Ok(replayed)
    }

    /// The next dead-lettered message, held unacknowledged on `channel`.
    async fn next_dead(
        &self,
        channel: &Channel,
    ) -> Result<Option<lapin::message::BasicGetMessage>, PublishError> {
        channel
            .basic_get(
                self.inner.topology.dead.as_str().into(),
                BasicGetOptions::default(),
            )
            .await
            .map_err(|e| PublishError::Broker(e.to_string()))
    }

    fn link_now(&self) -> Result<Link, PublishError> {
        self.inner
            .link
            .borrow()
            .clone()
            .ok_or_else(|| PublishError::Down(self.status().err().unwrap_or_default()))
    }
}

/// A connection's events (errors, blocking), owned apart from it.
type Events = std::pin::Pin<Box<dyn futures_util::Stream<Item = Event> + Send>>;

async fn open(link: &Link) -> Result<Channel, PublishError> {
    link.connection
        .create_channel()
        .await
        .map_err(|e| PublishError::Broker(e.to_string()))
}

async fn connect(
    url: &SecretUrl,
    process: &'static str,
    topology: &Topology,
) -> lapin::Result<(Link, Events)> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("nws {process} {}", std::process::id()).into());
    let connection = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url.expose(), properties),
    )
    .await
    .map_err(|_| lapin::Error::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
    let events: Events = Box::pin(connection.events_listener());
    let publisher = connection.create_channel().await?;
    topology.declare(&publisher).await?;
    publisher.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok((
        Link {
            connection: Arc::new(connection),
            publisher,
        },
        events,
    ))
}

/// A dead-lettered job, as the admin route lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub id: Option<String>,
    pub original_sha256: Option<String>,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<String>,
}

impl DeadLetter {
    fn read(body: &[u8], properties: &BasicProperties) -> Self {
        match message::decode(body, properties) {
            Ok(queued) => {
                let failure = queued.last_error.or_else(|| crash_looped(properties));
                Self {
                    id: Some(queued.id.to_string()),
                    original_sha256: Some(queued.job.original_sha256().to_owned()),
                    attempts: queued.attempts,
                    error_code: failure.as_ref().map(|f| f.code.clone()),
                    error: failure.map(|f| f.reason),
                    queued_at: queued
                        .queued_at
                        .map(|at| humantime::format_rfc3339_millis(at).to_string()),
                }
            }
            Err(reason) => Self {
                id: properties.message_id().as_ref().map(|id| id.to_string()),
                original_sha256: None,
                attempts: 0,
                error_code: Some("INVALID_ARGUMENT".to_owned()),
                error: Some(format!("not a job: {reason}")),
                queued_at: None,
            },
        }
    }
}

/// The broker dead-lettered it itself: its consumers died holding it
/// (x-delivery-limit).
fn crash_looped(properties: &BasicProperties) -> Option<Failure> {
    let headers = properties.headers().as_ref()?;
    headers.contains_key("x-death").then(|| Failure {
        code: "ABORTED".to_owned(),
        reason: format!(
            "its consumers stopped {} times while holding it (x-delivery-limit)",
            crate::topology::CRASH_DELIVERY_LIMIT
        ),
        permanent: true,
    })
}
