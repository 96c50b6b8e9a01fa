//! What happened to a job, kept in Redis where every gateway reads it and
//! every change is announced on one pub/sub channel.
//!
//! Per job: the latest record (`<prefix><id>`), its last changes in order
//! (`<prefix><id>:events`, for Server-Sent Events resumed with
//! `Last-Event-ID`), and a sequence number; one script writes all three
//! and publishes the record, so a reader never sees one without the other.
//! `done` is final: a late or duplicate delivery cannot turn a finished job
//! back into a running one.
//!
//! Status is a view, not the truth: the truth of `done` is the result in
//! Storage, and the truth of "queued" is the message in RabbitMQ. A status
//! write that fails (Redis down) is logged and the job goes on.

use std::{sync::Arc, time::Duration};

use deadpool_redis::{Config, Pool, PoolConfig, Runtime, Timeouts, redis};
use futures_util::StreamExt as _;
use nws_runtime::config::SecretUrl;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Persisted by the broker, waiting for a consumer.
    Queued,
    /// A consumer is rendering it.
    Processing,
    /// An attempt failed; it waits in a delay queue for the next.
    Retrying,
    /// The result is in Storage.
    Done,
    /// Dead-lettered: attempts used up, or it can never succeed.
    Failed,
}

impl State {
    pub fn is_final(self) -> bool {
        matches!(self, State::Done | State::Failed)
    }
}

/// One state of a job, as stored, announced and served (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub state: State,
    /// Attempts started so far.
    pub attempts: u32,
    /// The key the result is kept under (`done` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_key: Option<String>,
    /// The last failure's gRPC code name and reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the next attempt is due (`retrying`), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
    /// What the attempt that rendered it took (`done`, when this job's
    /// attempt rendered the result; not when it was found already kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
    /// When this state began, RFC 3339.
    pub updated: String,
    /// Position among the job's changes (the SSE event id); set by the
    /// store.
    #[serde(default)]
    pub seq: u64,
}

/// Where a job's rendering time went, in microseconds: the whole attempt
/// (waiting for a worker, reading the original, keeping the result
/// included), and the pipeline's stages inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    pub render_us: u64,
    pub decode_us: u64,
    pub resize_us: u64,
    pub watermark_us: u64,
    pub encode_us: u64,
}

impl Record {
    pub fn new(id: impl Into<String>, state: State, attempts: u32) -> Self {
        Self {
            id: id.into(),
            state,
            attempts,
            result_key: None,
            error_code: None,
            error: None,
            retry_at: None,
            timings: None,
            updated: now(),
            seq: 0,
        }
    }
}

/// Now, as records write it.
pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Changes kept per job for resumed event streams.
const EVENTS_KEPT: i64 = 64;

/// Writes a record unless it would go back in time: nothing follows
/// `done`, and `queued` does not follow a consumer's `processing` or
/// `retrying` (the publisher records `queued` after the broker's confirm,
/// when a quick consumer may already have started). Returns its sequence
/// number, or 0 when it was refused.
const RECORD: &str = r"
local record = cjson.decode(ARGV[1])
local current = redis.call('GET', KEYS[1])
if current then
  local state = cjson.decode(current)['state']
  if state == 'done' then
    return 0
  end
  if record['state'] == 'queued' and (state == 'processing' or state == 'retrying') then
    return 0
  end
end
local seq = redis.call('INCR', KEYS[3])
record['seq'] = seq
local text = cjson.encode(record)
redis.call('SET', KEYS[1], text, 'EX', ARGV[2])
redis.call('RPUSH', KEYS[2], text)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[2])
redis.call('PUBLISH', ARGV[3], text)
return seq
";

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("redis: {0}")]
    Redis(String),
    #[error("redis did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("a stored job status is not valid JSON: {0}")]
    Corrupt(#[from] serde_json::Error),
}

#[derive(Clone)]
pub struct StatusStore {
    pool: Pool,
    client: redis::Client,
    prefix: Arc<str>,
    ttl_seconds: u64,
    timeout: Duration,
}

impl StatusStore {
    /// Prepares the connections; none is made until first use.
    pub fn new(url: &SecretUrl, prefix: &str, ttl: Duration, timeout: Duration) -> anyhow::Result<Self> {
        let mut config = Config::from_url(url.expose());
        config.pool = Some(PoolConfig {
            max_size: 8,
            timeouts: Timeouts {
                wait: Some(timeout),
                create: Some(timeout),
                recycle: Some(timeout),
            },
            ..PoolConfig::default()
        });
        let pool = config
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| anyhow::anyhow!("NWS_REDIS_URL {url} is not usable: {e}"))?;
        let client = redis::Client::open(url.expose())
            .map_err(|e| anyhow::anyhow!("NWS_REDIS_URL {url} is not usable: {e}"))?;
        Ok(Self {
            pool,
            client,
            prefix: prefix.into(),
            ttl_seconds: ttl.as_secs().max(1),
            timeout,
        })
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// Records a change and announces it; `None` when it would go back in
    /// time (a finished job stays finished; a running one is not queued).
    pub async fn record(&self, record: &Record) -> Result<Option<u64>, StatusError> {
        let key = self.key(&record.id);
        let mut script = redis::cmd("EVAL");
        script
            .arg(RECORD)
            .arg(3)
            .arg(&key)
            .arg(format!("{key}:events"))
            .arg(format!("{key}:seq"))
            .arg(serde_json::to_string(record)?)
            .arg(self.ttl_seconds)
            .arg(self.channel())
            .arg(EVENTS_KEPT);
        let seq: u64 = self.run(&script).await?;
        Ok((seq > 0).then_some(seq))
    }

    /// The latest record of job `id`, if Redis has one.
    pub async fn get(&self, id: &str) -> Result<Option<Record>, StatusError> {
        let mut get = redis::cmd("GET");
        get.arg(self.key(id));
        let text: Option<String> = self.run(&get).await?;
        Ok(text.map(|text| serde_json::from_str(&text)).transpose()?)
    }

    /// The job's changes after sequence number `after`, oldest first.
    pub async fn changes_after(&self, id: &str, after: u64) -> Result<Vec<Record>, StatusError> {
        let mut range = redis::cmd("LRANGE");
        range.arg(format!("{}:events", self.key(id))).arg(0).arg(-1);
        let texts: Vec<String> = self.run(&range).await?;
        let mut records = Vec::with_capacity(texts.len());
        for text in texts {
            let record: Record = serde_json::from_str(&text)?;
            if record.seq > after {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), StatusError> {
        self.run::<String>(&redis::cmd("PING")).await.map(drop)
    }

    async fn run<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, StatusError> {
        let attempt = async {
            let mut connection = self
                .pool
                .get()
                .await
                .map_err(|e| StatusError::Redis(format!("connection: {e}")))?;
            command
                .query_async::<T>(&mut connection)
                .await
                .map_err(|e| StatusError::Redis(e.to_string()))
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or(Err(StatusError::TimedOut(self.timeout)))
    }

    /// Relays every announced change to the returned channel until `stop`,
    /// resubscribing (with backoff) whenever Redis goes away. Changes
    /// announced while it is away are missed: readers also look at the
    /// stored record from time to time.
    pub fn watch(&self, stop: CancellationToken) -> broadcast::Sender<Arc<Record>> {
        let (sender, _) = broadcast::channel(1024);
        let relay = sender.clone();
        let client = self.client.clone();
        let channel = self.channel();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let subscribed = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                };
                let pubsub = tokio::select! {
                    () = stop.cancelled() => return,
                    pubsub = subscribed => pubsub,
                };
                match pubsub {
                    Ok(mut pubsub) => {
                        tracing::debug!(%channel, "watching job status changes");
                        backoff = Duration::from_millis(100);
                        let mut messages = pubsub.on_message();
                        loop {
                            let message = tokio::select! {
                                () = stop.cancelled() => return,
                                message = messages.next() => message,
                            };
                            let Some(message) = message else { break };
                            let Ok(text) = message.get_payload::<String>() else {
                                continue;
                            };
                            match serde_json::from_str::<Record>(&text) {
                                Ok(record) => {
                                    let _ = relay.send(Arc::new(record));
                                }
                                Err(error) => {
                                    tracing::warn!(%error, "an announced job status is not valid JSON")
                                }
                            }
                        }
                        tracing::warn!(%channel, "job status announcements stopped (redis went away); resubscribing");
                    }
                    Err(error) => {
                        tracing::debug!(%error, "cannot watch job status changes yet");
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        sender
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_as_documented() {
        let mut record = Record::new("ab".repeat(32), State::Retrying, 2);
        record.error_code = Some("UNAVAILABLE".to_owned());
        record.error = Some("storage is down".to_owned());
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["state"], "retrying");
        assert_eq!(json["attempts"], 2);
        assert!(json.get("result_key").is_none(), "absent, not null: {json}");
        let back: Record = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
        assert!(State::Done.is_final() && State::Failed.is_final() && !State::Retrying.is_final());
    }
}
