use std::{net::SocketAddr, time::Duration};

use clap::Args;
use http::Uri;
use nws_watermark::config::{parse_duration, parse_size, parse_size_or_zero};

/// Gateway settings; flags with `NWS_*` environment fallbacks.
#[derive(Debug, Clone, Args)]
pub struct GatewayConfig {
    /// Address the HTTP gateway listens on.
    #[arg(long, env = "NWS_HTTP_ADDR", default_value = "127.0.0.1:3000")]
    pub http_addr: SocketAddr,

    /// URL of the Optimizer gRPC service (e.g. `http://optimizer:50051`).
    /// Unset: an Optimizer runs embedded in this process on NWS_OPTIMIZER_ADDR.
    #[arg(long, env = "NWS_OPTIMIZER_URL", value_parser = parse_upstream_url)]
    pub optimizer_url: Option<Uri>,

    /// URL of the Storage gRPC service (e.g. `http://storage:50052`).
    /// Unset: a Storage service runs embedded in this process on NWS_STORAGE_ADDR.
    #[arg(long, env = "NWS_STORAGE_URL", value_parser = parse_upstream_url)]
    pub storage_url: Option<Uri>,

    /// Largest request body accepted (e.g. `25MiB`); larger uploads get 413.
    #[arg(long, env = "NWS_MAX_UPLOAD_BYTES", default_value = "25MiB", value_parser = parse_size)]
    pub max_upload_bytes: u64,

    /// Deadline of each call to an upstream service (sent as `grpc-timeout`).
    #[arg(long, env = "NWS_UPSTREAM_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,

    /// Memory for the in-process result cache (L1), e.g. `256MiB`; `0`
    /// turns it off (identical requests in flight are still coalesced).
    #[arg(long, env = "NWS_CACHE_MEMORY", default_value = "256MiB", value_parser = parse_size_or_zero)]
    pub cache_memory: u64,

    /// Redis for the shared result cache (L2), e.g. `redis://redis:6379/0`.
    /// Unset: no L2; results still come from memory, storage or the optimizer.
    #[arg(long, env = "NWS_REDIS_URL", value_parser = parse_redis_url)]
    pub redis_url: Option<String>,

    /// How long Redis keeps a result (`EX`), e.g. `24h`.
    #[arg(long, env = "NWS_CACHE_TTL", default_value = "24h", value_parser = parse_duration)]
    pub cache_ttl: Duration,

    /// Deadline of each Redis call (connection included). Past it the call
    /// counts as a miss, and Redis is skipped until a ping succeeds again.
    #[arg(long, env = "NWS_REDIS_TIMEOUT", default_value = "100ms", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// Prefix of the gateway's Redis keys, to share one Redis between
    /// deployments.
    #[arg(long, env = "NWS_REDIS_PREFIX", default_value = "nws:result:")]
    pub redis_prefix: String,

    /// Requests handled at once; past it, new ones get 503 with Retry-After
    /// straight away instead of queueing.
    #[arg(long, env = "NWS_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,

    /// Time a client has to send a request's headers (HTTP/1.1).
    #[arg(long, env = "NWS_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Longest pause allowed between two pieces of a request body; a client
    /// that stalls longer gets 408.
    #[arg(long, env = "NWS_BODY_READ_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
}

fn parse_redis_url(value: &str) -> Result<String, String> {
    match value.split_once("://") {
        Some(("redis" | "rediss" | "redis+unix" | "unix", rest)) if !rest.is_empty() => Ok(value.to_owned()),
        _ => Err("expected redis://host:port[/db]".to_owned()),
    }
}

fn parse_upstream_url(value: &str) -> Result<Uri, String> {
    let uri: Uri = value.parse().map_err(|e| format!("not a URL ({e})"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err("expected http://host:port or https://host:port".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_upstream_url;

    #[test]
    fn upstream_urls_need_a_scheme_and_host() {
        assert!(parse_upstream_url("http://127.0.0.1:50051").is_ok());
        assert!(parse_upstream_url("https://optimizer.svc:443").is_ok());
        assert!(parse_upstream_url("127.0.0.1:50051").is_err());
        assert!(parse_upstream_url("ftp://x").is_err());
        assert!(parse_upstream_url("not a url").is_err());
    }
}
