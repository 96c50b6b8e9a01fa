//! L2: results shared by every gateway, in Redis.
//!
//! Redis only ever makes a request faster, so it must never make one
//! slower by much or fail it: every call has a short deadline, a failure
//! counts as a miss, and after one the tier is skipped outright until a
//! background ping succeeds again. Redis coming back is picked up by that
//! ping, without a restart.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use bytes::Bytes;
use deadpool_redis::{Config, Pool, PoolConfig, PoolError, Runtime, Timeouts, redis};
use nws_runtime::{
    config::SecretUrl,
    policy::{Decision, Rate, SharedLimiter},
};
use nws_watermark::render::ResultKey;
use tokio_util::sync::CancellationToken;

/// How often Redis' health is checked, and so how soon its return is
/// noticed.
const PING_INTERVAL: Duration = Duration::from_secs(1);

/// Connections kept open to Redis; commands are pipelined on them, so a
/// few carry a whole gateway's traffic.
const POOL_SIZE: usize = 16;

#[derive(Clone)]
pub struct RedisTier {
    pool: Pool,
    timeout: Duration,
    prefix: String,
    ttl_seconds: u64,
    health: Arc<Health>,
}

struct Health {
    up: AtomicBool,
    /// Why Redis is being skipped, when it is.
    reason: Mutex<Down>,
}

/// Why a Redis call failed: a stable word for `/readyz`, and the details
/// for the log.
#[derive(Debug, Clone)]
struct Failure {
    down: Down,
    detail: String,
}

#[derive(Debug, Clone, Copy)]
pub enum Down {
    /// No answer within NWS_REDIS_TIMEOUT.
    TimedOut,
    /// Connection refused or reset, or an error reply.
    Failed,
}

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Down::TimedOut => "no answer within NWS_REDIS_TIMEOUT",
            Down::Failed => "unreachable or failing",
        })
    }
}

impl RedisTier {
    /// Prepares the pool; no connection is made until first use, so the
    /// gateway starts (degraded) while Redis is down.
    pub fn new(url: &SecretUrl, timeout: Duration, prefix: String, ttl: Duration) -> anyhow::Result<Self> {
        let mut config = Config::from_url(url.expose());
        config.pool = Some(PoolConfig {
            max_size: POOL_SIZE,
            timeouts: Timeouts {
                wait: Some(timeout),
                create: Some(timeout),
                recycle: Some(timeout),
            },
            ..PoolConfig::default()
        });
        let pool = config
            .create_pool(Some(Runtime::Tokio1))
            .with_context(|| format!("gateway: NWS_REDIS_URL {url} is not usable"))?;
        Ok(Self {
            pool,
            timeout,
            prefix,
            ttl_seconds: ttl.as_secs().max(1),
            health: Arc::new(Health {
                up: AtomicBool::new(true),
                reason: Mutex::new(Down::Failed),
            }),
        })
    }

    /// The cached bytes for `key`; `None` on a miss, and also when Redis
    /// is down or slow.
    pub async fn get(&self, key: &ResultKey) -> Option<Bytes> {
        if !self.is_up() {
            return None;
        }
        let mut command = redis::cmd("GET");
        command.arg(self.redis_key(key));
        match self.run::<Option<Vec<u8>>>(&command).await {
            Ok(value) => value.map(Bytes::from),
            Err(reason) => {
                self.mark_down(&reason);
                None
            }
        }
    }

    /// Stores `bytes` under `key` with the configured TTL; best effort.
    pub async fn set(&self, key: &ResultKey, bytes: &[u8]) {
        if !self.is_up() {
            return;
        }
        let mut command = redis::cmd("SET");
        command
            .arg(self.redis_key(key))
            .arg(bytes)
            .arg("EX")
            .arg(self.ttl_seconds);
        if let Err(reason) = self.run::<()>(&command).await {
            self.mark_down(&reason);
        }
    }

    /// Takes one request from `identity`'s `class` bucket, kept in Redis so
    /// that every replica draws from the same one. GCRA in one script: the
    /// read, the decision and the write are one atomic step, timed by
    /// Redis' own clock so replicas' clocks need not agree. A bucket
    /// expires once it would be full again.
    pub async fn take_token(&self, class: &str, identity: &str, rate: Rate) -> Result<Decision, String> {
        if !self.is_up() {
            return Err(format!("redis {}", self.status().err().unwrap_or(Down::Failed)));
        }
        let interval_us = (rate.interval().as_micros()).max(1);
        let mut command = redis::cmd("EVAL");
        command
            .arg(GCRA_SCRIPT)
            .arg(1)
            .arg(format!("{}ratelimit:{class}:{identity}", self.prefix))
            .arg(u64::try_from(interval_us).unwrap_or(u64::MAX))
            .arg(rate.burst);
        match self.run::<(i64, i64, i64, i64)>(&command).await {
            Ok((1, _, remaining, reset_us)) => Ok(Decision::Allowed {
                remaining: u32::try_from(remaining).unwrap_or(0),
                reset: micros(reset_us),
            }),
            Ok((_, retry_us, _, _)) => Ok(Decision::Limited {
                retry_after: micros(retry_us),
            }),
            Err(failure) => {
                self.mark_down(&failure);
                Err(format!("redis {}", failure.down))
            }
        }
    }

    /// `Ok` while Redis answers, or why it is being skipped.
    pub fn status(&self) -> Result<(), Down> {
        if self.is_up() {
            Ok(())
        } else {
            Err(*self.health.reason.lock().expect("never poisoned"))
        }
    }

    /// Pings Redis every [`PING_INTERVAL`] until `stop`, marking it up or
    /// down; the first ping is immediate.
    pub async fn watch(self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(PING_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.run::<String>(&redis::cmd("PING")).await {
                Ok(_) => self.mark_up(),
                Err(reason) => self.mark_down(&reason),
            }
        }
    }

    fn is_up(&self) -> bool {
        self.health.up.load(Ordering::Relaxed)
    }

    fn mark_up(&self) {
        up_gauge().set(1.0);
        if !self.health.up.swap(true, Ordering::Relaxed) {
            tracing::info!("redis answers again: the L2 cache is back in use");
        }
    }

    fn mark_down(&self, failure: &Failure) {
        up_gauge().set(0.0);
        *self.health.reason.lock().expect("never poisoned") = failure.down;
        if self.health.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                reason = %failure.down,
                detail = %failure.detail,
                "redis failed: serving without the L2 cache until it answers a ping"
            );
        }
    }

    fn redis_key(&self, key: &ResultKey) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs one command under the deadline, connection included.
    async fn run<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, Failure> {
        let failed = |detail: String| Failure {
            down: Down::Failed,
            detail,
        };
        let attempt = async {
            let mut connection = self.pool.get().await.map_err(|e| match e {
                // The pool's own deadlines are NWS_REDIS_TIMEOUT too (a
                // connection that is made or checked but never answered).
                PoolError::Timeout(_) => Failure {
                    down: Down::TimedOut,
                    detail: format!("connection: {e}"),
                },
                e => failed(format!("connection: {e}")),
            })?;
            command
                .query_async::<T>(&mut connection)
                .await
                .map_err(|e| failed(e.to_string()))
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Failure {
                down: Down::TimedOut,
                detail: format!("{:?}", self.timeout),
            }),
        }
    }
}

impl SharedLimiter for RedisTier {
    fn check<'a>(
        &'a self,
        class: &'static str,
        identity: &'a str,
        rate: Rate,
    ) -> futures_util::future::BoxFuture<'a, Result<Decision, String>> {
        Box::pin(self.take_token(class, identity, rate))
    }

    fn status(&self) -> Result<(), String> {
        RedisTier::status(self).map_err(|down| format!("redis {down}"))
    }
}

fn micros(value: i64) -> Duration {
    Duration::from_micros(u64::try_from(value).unwrap_or(0))
}

/// GCRA (see `nws_runtime::policy::limit`), in microseconds of Redis' clock.
/// KEYS[1]: the bucket; ARGV: emission interval, burst. Returns allowed
/// (1/0), retry after, remaining, time until full.
const GCRA_SCRIPT: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if now < allow_at then
  return {0, allow_at - now, 0, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0, math.floor((now + interval * burst - new_tat) / interval), new_tat - now}
";

/// `nws_redis_up`: 1 while Redis answers, 0 while the L2 tier is skipped.
fn up_gauge() -> metrics::Gauge {
    metrics::gauge!("nws_redis_up", "service" => nws_runtime::telemetry::GATEWAY.name)
}

#[cfg(test)]
mod tests {
    //! Against a real Redis: the test command's (NWS_TEST_REDIS_URL), or
    //! the one on the default port, with a key prefix per test.

    use nws_runtime::testing::eventually;

    use super::*;

    fn redis_url() -> SecretUrl {
        SecretUrl::new(
            std::env::var("NWS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
        )
    }

    fn tier_at(url: SecretUrl, timeout: Duration, name: &str) -> RedisTier {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let prefix = format!("nws-unit:{}:{nanos}:{name}:", std::process::id());
        RedisTier::new(&url, timeout, prefix, Duration::from_secs(60)).unwrap()
    }

    fn key(byte: u8) -> ResultKey {
        ResultKey::parse(&format!("{byte:02x}").repeat(32)).unwrap()
    }

    #[tokio::test]
    async fn results_round_trip_under_the_tiers_own_prefix() {
        let tier = tier_at(redis_url(), Duration::from_secs(2), "a");
        let other = tier_at(redis_url(), Duration::from_secs(2), "b");
        assert_eq!(tier.get(&key(1)).await, None, "a miss is None");
        tier.set(&key(1), b"image bytes").await;
        assert_eq!(tier.get(&key(1)).await.as_deref(), Some(&b"image bytes"[..]));
        assert_eq!(tier.get(&key(2)).await, None, "another key");
        assert_eq!(other.get(&key(1)).await, None, "another prefix");
        assert!(tier.status().is_ok());
    }

    #[tokio::test]
    async fn a_failure_makes_every_call_a_miss_until_a_ping_succeeds() {
        // Nothing listens on a port just released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tier = tier_at(
            SecretUrl::new(format!("redis://127.0.0.1:{port}")),
            Duration::from_secs(2),
            "down",
        );
        assert!(tier.status().is_ok(), "assumed up until a call fails");
        assert_eq!(tier.get(&key(1)).await, None);
        let reason = tier.status().unwrap_err();
        assert_eq!(reason.to_string(), "unreachable or failing");

        // A tier marked down skips Redis even while it answers, and the
        // watcher's ping brings it back.
        let tier = tier_at(redis_url(), Duration::from_secs(2), "back");
        tier.set(&key(3), b"kept").await;
        tier.mark_down(&Failure {
            down: Down::TimedOut,
            detail: "test".to_owned(),
        });
        assert_eq!(
            tier.status().unwrap_err().to_string(),
            "no answer within NWS_REDIS_TIMEOUT"
        );
        assert_eq!(tier.get(&key(3)).await, None, "skipped while down");
        tier.set(&key(4), b"dropped").await;
        let stop = CancellationToken::new();
        let watcher = tokio::spawn(tier.clone().watch(stop.clone()));
        eventually("redis marked up again", async || tier.status().ok()).await;
        stop.cancel();
        watcher.await.unwrap();
        assert_eq!(tier.get(&key(3)).await.as_deref(), Some(&b"kept"[..]));
        assert_eq!(tier.get(&key(4)).await, None, "a set while down is not sent");
    }

    #[tokio::test]
    async fn a_redis_that_does_not_answer_in_time_is_a_miss() {
        // Accepts connections (the kernel's backlog) but never replies.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = SecretUrl::new(format!("redis://{}", silent.local_addr().unwrap()));
        let tier = tier_at(url, Duration::from_millis(100), "silent");
        // The point is the timeout: a miss an order of magnitude sooner
        // than a hang would show.
        let started = std::time::Instant::now();
        assert_eq!(tier.get(&key(1)).await, None);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            tier.status().unwrap_err().to_string(),
            "no answer within NWS_REDIS_TIMEOUT"
        );
    }
}
