use std::time::Duration;

use clap::Args;
use nws_runtime::config::{InvalidSetting, SecretUrl, parse_amqp_url, parse_duration};

/// Durable job settings, shared by the gateway (which publishes jobs) and
/// the optimizer (which consumes them); flags with `NWS_*` environment
/// fallbacks. Without `NWS_AMQP_URL` there is no queue: uploads the
/// optimizer cannot serve are refused with 503 and `Retry-After`.
#[derive(Debug, Clone, Args)]
pub struct JobsConfig {
    /// RabbitMQ broker for durable render jobs, e.g.
    /// `amqp://user:password@rabbitmq:5672/%2f` (the password is never
    /// logged). Unset: no queue.
    #[arg(long, env = "NWS_AMQP_URL", value_parser = parse_amqp_url, hide_env_values = true)]
    pub amqp_url: Option<SecretUrl>,

    /// Name of the work queue; the retry queues (`<name>.retry.<n>`) and
    /// the dead-letter queue (`<name>.dead`) are named after it, so
    /// deployments can share a broker.
    #[arg(long, env = "NWS_JOB_QUEUE", default_value = "nws.render")]
    pub job_queue: String,

    /// Attempts a job gets before it is dead-lettered. A job whose image
    /// can never be processed (not an image, over a limit) gets one.
    #[arg(long, env = "NWS_JOB_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub max_attempts: u32,

    /// Backoff before the second attempt; it doubles per attempt, up to
    /// NWS_JOB_RETRY_CAP, and the actual delay is drawn uniformly below it
    /// (full jitter).
    #[arg(long, env = "NWS_JOB_RETRY_BASE", default_value = "1s", value_parser = parse_duration)]
    pub retry_base: Duration,

    /// Longest backoff between two attempts.
    #[arg(long, env = "NWS_JOB_RETRY_CAP", default_value = "60s", value_parser = parse_duration)]
    pub retry_cap: Duration,

    /// How long a publisher waits for the broker to confirm a job is
    /// persisted; past it the upload is refused (503), never answered 202.
    #[arg(long, env = "NWS_AMQP_CONFIRM_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub confirm_timeout: Duration,

    /// Jobs a consumer (optimizer-svc) works on at once, which is also its
    /// prefetch; 0 means one per optimizer worker.
    #[arg(long, env = "NWS_JOB_WORKERS", default_value_t = 0)]
    pub job_workers: usize,

    /// Prefix of the job status keys in Redis (NWS_REDIS_URL).
    #[arg(long, env = "NWS_JOB_STATUS_PREFIX", default_value = "nws:job:")]
    pub status_prefix: String,

    /// How long Redis keeps a job's status after its last change.
    #[arg(long, env = "NWS_JOB_STATUS_TTL", default_value = "7d", value_parser = parse_duration)]
    pub status_ttl: Duration,
}

impl JobsConfig {
    /// Settings that parse but cannot work together.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.job_queue.is_empty() || self.job_queue.len() > 200 {
            return Err(InvalidSetting::new(
                "NWS_JOB_QUEUE",
                "must be 1 to 200 characters (AMQP queue names are at most 255)",
            ));
        }
        if self.retry_base.is_zero() || self.retry_base > self.retry_cap {
            return Err(InvalidSetting::new(
                "NWS_JOB_RETRY_BASE",
                format!(
                    "must be above zero and at most NWS_JOB_RETRY_CAP ({})",
                    humantime::format_duration(self.retry_cap)
                ),
            ));
        }
        if self.retry_cap > Duration::from_secs(24 * 3600) {
            return Err(InvalidSetting::new("NWS_JOB_RETRY_CAP", "must be at most 24h"));
        }
        if self.confirm_timeout.is_zero() {
            return Err(InvalidSetting::new(
                "NWS_AMQP_CONFIRM_TIMEOUT",
                "must be above zero",
            ));
        }
        Ok(())
    }

    /// The delay before attempt `next` (2 for the first retry): uniform in
    /// [0, min(cap, base × 2^(next−2))] ("full jitter"), so that jobs that
    /// failed together do not come back together.
    pub fn backoff(&self, next: u32) -> Duration {
        let ceiling = self
            .retry_base
            .saturating_mul(1 << next.saturating_sub(2).min(20))
            .min(self.retry_cap);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=millis))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        jobs: JobsConfig,
    }

    fn parse(args: &[&str]) -> Result<JobsConfig, String> {
        let mut all = vec!["test"];
        all.extend(args);
        Cli::try_parse_from(all)
            .map(|cli| cli.jobs)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn backoff_stays_under_its_doubling_ceiling_and_the_cap() {
        let config = parse(&["--retry-base", "100ms", "--retry-cap", "1s"]).unwrap();
        for _ in 0..200 {
            assert!(config.backoff(2) <= Duration::from_millis(100));
            assert!(config.backoff(3) <= Duration::from_millis(200));
            assert!(config.backoff(10) <= Duration::from_secs(1));
        }
        // Jittered: not always the ceiling.
        let draws: std::collections::HashSet<_> = (0..50).map(|_| config.backoff(10)).collect();
        assert!(draws.len() > 10, "{draws:?}");
    }

    #[test]
    fn settings_are_checked_together() {
        assert!(parse(&[]).unwrap().validate().is_ok());
        let error = parse(&["--retry-base", "2m"]).unwrap().validate().unwrap_err();
        assert_eq!(error.setting(), "NWS_JOB_RETRY_BASE");
        assert!(
            parse(&["--amqp-url", "amqps://broker"])
                .unwrap_err()
                .contains("amqps://")
        );
        assert!(parse(&["--amqp-url", "amqp://guest:guest@127.0.0.1:5672/%2f"]).is_ok());
        assert!(parse(&["--max-attempts", "0"]).is_err());
    }
}
