use std::{net::SocketAddr, time::Duration};

use clap::Args;
use http::Uri;
use nws_watermark::config::{parse_duration, parse_size};

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
