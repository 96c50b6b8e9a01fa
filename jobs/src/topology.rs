//! The queues a job moves through, declared the same way by every process
//! that connects (declaring is idempotent while the arguments agree).
//!
//! ```text
//!  publish ──► <queue>  (quorum, durable) ──► consumer ── ack after the result is stored
//!                ▲   │ consumer died 5 times (x-delivery-limit)
//!                │   └──────────────────────────────────────────────┐
//!                │ TTL expires (dead-lettered back)                  ▼
//!  <queue>.retry.<n> ◄── failed attempt n, per-message TTL     <queue>.dead ◄── attempts used up,
//!                                                                             or can never succeed
//! ```
//!
//! Retries wait in a delay queue per attempt, not in a consumer: a message
//! published there with a per-message TTL (the jittered backoff) is
//! dead-lettered back to the work queue when it expires. A delay queue
//! releases messages in order, so a short delay queued behind a long one
//! waits for it; one queue per attempt keeps that within the attempt's
//! backoff ceiling.

use lapin::{
    Channel,
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable},
};

/// Deliveries of one job whose consumer died before acking it (SIGKILL,
/// out of memory) before the broker dead-letters it: a job that kills its
/// consumer every time must not kill them all forever.
pub const CRASH_DELIVERY_LIMIT: i64 = 5;

#[derive(Debug, Clone)]
pub struct Topology {
    pub work: String,
    pub dead: String,
    /// `retry[n - 1]` holds jobs waiting for attempt `n + 1`.
    retry: Vec<String>,
}

impl Topology {
    pub fn new(work: &str, max_attempts: u32) -> Self {
        Self {
            work: work.to_owned(),
            dead: format!("{work}.dead"),
            retry: (1..max_attempts).map(|n| format!("{work}.retry.{n}")).collect(),
        }
    }

    /// The delay queue for jobs that failed attempt `failed` (1-based).
    pub fn retry_queue(&self, failed: u32) -> Option<&str> {
        let index = usize::try_from(failed.checked_sub(1)?).ok()?;
        self.retry.get(index).map(String::as_str)
    }

    /// Declares every queue; the broker refuses (and closes the channel)
    /// when one exists with other arguments.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let mut work = FieldTable::default();
        work.insert("x-queue-type".into(), text("quorum"));
        work.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(CRASH_DELIVERY_LIMIT),
        );
        work.insert("x-dead-letter-exchange".into(), text(""));
        work.insert("x-dead-letter-routing-key".into(), text(&self.dead));
        channel
            .queue_declare(self.work.as_str().into(), durable, work)
            .await?;

        let mut dead = FieldTable::default();
        dead.insert("x-queue-type".into(), text("quorum"));
        channel
            .queue_declare(self.dead.as_str().into(), durable, dead)
            .await?;

        for queue in &self.retry {
            let mut delay = FieldTable::default();
            delay.insert("x-dead-letter-exchange".into(), text(""));
            delay.insert("x-dead-letter-routing-key".into(), text(&self.work));
            channel
                .queue_declare(queue.as_str().into(), durable, delay)
                .await?;
        }
        Ok(())
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// A header's value as text, whatever string type the sender used.
pub(crate) fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(value) => Some(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        _ => None,
    }
}

/// A header's value as a whole number, whatever integer type the sender
/// used.
pub(crate) fn header_number(headers: &FieldTable, name: &str) -> Option<i64> {
    match headers.inner().get(name)? {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_delay_queue_per_retry() {
        let topology = Topology::new("nws.render", 3);
        assert_eq!(topology.dead, "nws.render.dead");
        assert_eq!(topology.retry_queue(1), Some("nws.render.retry.1"));
        assert_eq!(topology.retry_queue(2), Some("nws.render.retry.2"));
        assert_eq!(topology.retry_queue(3), None, "the last attempt has no retry");
        assert_eq!(topology.retry_queue(0), None);
        assert_eq!(Topology::new("q", 1).retry_queue(1), None);
    }
}
