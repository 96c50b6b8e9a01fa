use std::{net::SocketAddr, time::Duration};

use clap::Args;
use nws_runtime::{
    config::{SecretUrl, parse_duration, parse_redis_url, parse_size, parse_size_or_zero},
    grpc::balance::Routing,
    http::HttpConfig,
};

use crate::breaker::BreakerConfig;

/// Gateway settings; flags with `NWS_*` environment fallbacks. Where the
/// upstreams are is the binary's to say (the gateway alone needs both
/// URLs; the all-in-one mesh starts what is not given).
#[derive(Debug, Clone, Args)]
pub struct GatewayConfig {
    /// Address the HTTP gateway listens on.
    #[arg(long, env = "NWS_HTTP_ADDR", default_value = "127.0.0.1:3000")]
    pub http_addr: SocketAddr,

    /// Largest request body accepted (e.g. `25MiB`); larger uploads get 413.
    #[arg(long, env = "NWS_MAX_UPLOAD_BYTES", default_value = "25MiB", value_parser = parse_size)]
    pub max_upload_bytes: u64,

    /// How renders are spread over the optimizers when NWS_OPTIMIZER_URL is
    /// `dns:///…`: `least` (the one with the fewest calls in flight) or
    /// `hash` (by the result's cache key, rendezvous hashing: a repeated or
    /// related request goes to the replica that has its inputs warm, and
    /// when one of N leaves only its 1/N of the keys move).
    #[arg(long, env = "NWS_OPTIMIZER_ROUTING", value_enum, default_value_t = Routing::Least)]
    pub optimizer_routing: Routing,

    /// Deadline of each call to an upstream service (sent as `grpc-timeout`).
    #[arg(long, env = "NWS_UPSTREAM_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,

    /// Memory for the in-process result cache (L1), e.g. `256MiB`; `0`
    /// turns it off (identical requests in flight are still coalesced).
    #[arg(long, env = "NWS_CACHE_MEMORY", default_value = "256MiB", value_parser = parse_size_or_zero)]
    pub cache_memory: u64,

    /// Redis for the shared result cache (L2), e.g. `redis://redis:6379/0`
    /// (a password in it is never logged). Unset: no L2; results still come
    /// from memory, storage or the optimizer.
    #[arg(long, env = "NWS_REDIS_URL", value_parser = parse_redis_url, hide_env_values = true)]
    pub redis_url: Option<SecretUrl>,

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

    /// Let `format=auto` make the request wait for AVIF (or WebP) when its
    /// Accept names it, as imgproxy's IMGPROXY_AUTO_AVIF does. Off: the
    /// request gets JPEG (PNG for transparency) at once, and the compact
    /// format is made in the background for the next request.
    #[arg(long, env = "NWS_AUTO_AVIF", default_value_t = false, action = clap::ArgAction::Set)]
    pub auto_avif: bool,

    /// Renders of compact variants (for `format=auto`) running at once in
    /// the background, each only while an optimizer worker is idle; `0`
    /// turns them off.
    #[arg(long, env = "NWS_BACKGROUND_RENDERS", default_value_t = 1)]
    pub background_renders: usize,

    #[command(flatten)]
    pub http: HttpConfig,

    #[command(flatten)]
    pub breaker: BreakerConfig,

    #[command(flatten)]
    pub jobs: nws_jobs::JobsConfig,

    /// An image file (PNG or WebP with transparency, usually) drawn as the
    /// watermark of every upload that names no image of its own
    /// (`wm_image`, `wm_image_sha256`; `wm_image_sha256=none` opts out).
    /// With it, the text is drawn only when an upload gives `wm_text`.
    /// Read at start (at most 8 MiB), kept in Storage on first use.
    #[arg(long, env = "NWS_WATERMARK_IMAGE")]
    pub watermark_image: Option<std::path::PathBuf>,

    /// Interval of the comments that keep an idle job event stream
    /// (`/v1/jobs/{id}/events`) open through proxies.
    #[arg(long, env = "NWS_SSE_HEARTBEAT", default_value = "15s", value_parser = parse_duration)]
    pub sse_heartbeat: Duration,

    /// Serve the browser front-end at `/` (the page, its assets, and
    /// `/ui/config.json`). The API is the same either way.
    #[arg(long, env = "NWS_WEB_UI", default_value_t = true, action = clap::ArgAction::Set)]
    pub web_ui: bool,

    /// A trace viewer's link for one trace, with `{trace_id}` where the id
    /// goes (Jaeger: `http://localhost:16686/trace/{trace_id}`); the page
    /// links each result's trace id to it.
    #[arg(long, env = "NWS_TRACE_VIEWER_URL", value_parser = parse_trace_viewer_url)]
    pub trace_viewer_url: Option<String>,
}

fn parse_trace_viewer_url(value: &str) -> Result<String, String> {
    let value = value.trim();
    if !(value.starts_with("http://") || value.starts_with("https://")) {
        return Err(format!("{value:?} is not an http:// or https:// URL"));
    }
    if !value.contains("{trace_id}") {
        return Err(format!(
            "{value:?} has no `{{trace_id}}` for the trace's id (e.g. http://localhost:16686/trace/{{trace_id}})"
        ));
    }
    Ok(value.to_owned())
}
