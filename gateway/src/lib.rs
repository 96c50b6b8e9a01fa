//! NWS Watermark gateway: the HTTP/JSON edge in front of the Optimizer and
//! Storage gRPC services, with the result cache tiers. It links no image
//! codec and no storage client: everything heavy happens upstream.
#![forbid(unsafe_code)]

pub mod breaker;
pub mod config;
pub mod error;
mod jobs;
mod mark_image;
mod openapi;
mod query;
mod results;
mod routes;
mod timing;
mod transcode;
mod upload;
mod upstream;
mod web;

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::Router;
use nws_runtime::{
    grpc::target::UpstreamTarget,
    http::{HttpConfig, HttpServer},
    policy::{Policy, PolicyConfig, Role},
    shutdown::Drain,
    tls::{ServerTls, UpstreamTls},
};
use tokio_util::sync::CancellationToken;

pub use config::GatewayConfig;

use crate::{
    results::{RedisTier, Results},
    routes::{AppState, Shared},
    upstream::Upstreams,
};

/// The HTTP gateway, bound and ready to serve.
pub struct App {
    server: HttpServer,
    router: Router,
    http: HttpConfig,
    redis: Option<RedisTier>,
    /// Stops the policy's background work (JWKS refresh, bucket sweeps),
    /// the broker connection and the job status watch.
    background: CancellationToken,
    /// Ends the job event streams as shutdown starts.
    streams: CancellationToken,
}

/// Binds the HTTP listener and prepares lazy connections to the upstreams
/// (over TLS, with `upstream_tls`, for `https://` URLs) and to Redis;
/// nothing waits for them, so the gateway starts (and says what is missing
/// on `/readyz`) while they are down. The policy's keys are loaded first:
/// keys that cannot be read stop the start.
pub async fn build(
    config: &GatewayConfig,
    policy: &PolicyConfig,
    optimizer: UpstreamTarget,
    storage: UpstreamTarget,
    upstream_tls: &UpstreamTls,
) -> anyhow::Result<App> {
    let redis = config
        .redis_url
        .as_ref()
        .map(|url| {
            RedisTier::new(
                url,
                config.redis_timeout,
                config.redis_prefix.clone(),
                config.cache_ttl,
            )
        })
        .transpose()?;
    let background = CancellationToken::new();
    let mut edge_policy = Policy::build(policy, Role::Edge, background.clone()).await?;
    if policy.rate_limit_redis {
        let redis = redis.clone().ok_or_else(|| {
            nws_runtime::config::InvalidSetting::new(
                "NWS_RATE_LIMIT_REDIS",
                "is true, but NWS_REDIS_URL is not set",
            )
        })?;
        edge_policy = edge_policy.with_shared_limiter(std::sync::Arc::new(redis));
    }
    edge_policy.describe("gateway");
    config.jobs.validate()?;
    let broker = nws_jobs::Broker::start(&config.jobs, "gateway", background.clone());
    let job_status = match (&broker, &config.redis_url) {
        (Some(_), Some(url)) => Some(nws_jobs::StatusStore::new(
            url,
            &config.jobs.status_prefix,
            config.jobs.status_ttl,
            config.redis_timeout.max(std::time::Duration::from_millis(500)),
        )?),
        _ => None,
    };
    match &broker {
        Some(broker) => tracing::info!(
            queue = %broker.topology().work,
            status = if job_status.is_some() { "redis" } else { "storage only (NWS_REDIS_URL unset)" },
            "durable jobs: uploads the optimizer cannot serve are queued"
        ),
        None => tracing::info!(
            "durable jobs off (NWS_AMQP_URL unset): uploads the optimizer cannot serve get 503"
        ),
    }
    let streams = CancellationToken::new();
    let jobs = jobs::Jobs::new(
        broker,
        job_status,
        config.sse_heartbeat,
        background.clone(),
        streams.clone(),
    );
    let default_mark = config
        .watermark_image
        .as_deref()
        .map(mark_image::DefaultMark::load)
        .transpose()?;
    if let Some(mark) = &default_mark {
        tracing::info!(
            sha256 = mark.sha256(),
            "default watermark image (NWS_WATERMARK_IMAGE)"
        );
    }
    let bindings = transcode::bindings(nws_watermark::pb::FILE_DESCRIPTOR_SET)
        .context("gateway: the google.api.http annotations in proto/")?;
    let server = HttpServer::bind("gateway", config.http_addr).await?;
    let optimizer = optimizer.routed_by(config.optimizer_routing);
    tracing::info!(%optimizer, routing = ?config.optimizer_routing, "optimizer upstream");
    let upstreams = Upstreams::connect_lazy_with(optimizer, storage, config.upstream_timeout, upstream_tls)?
        .with_breaker(&config.breaker)?;
    let state = AppState::new(Shared {
        results: Results::new(
            config.cache_memory,
            redis.clone(),
            upstreams.clone(),
            config.background_renders,
        ),
        upstreams,
        max_upload_bytes: config.max_upload_bytes,
        body_read_timeout: config.http.body_read_timeout,
        auto_avif: config.auto_avif,
        policy: edge_policy.clone(),
        jobs,
        default_mark,
        trace_viewer: config.trace_viewer_url.clone(),
        web_ui: config.web_ui,
    });
    Ok(App {
        server,
        router: routes::router(state, &bindings, &config.http, &edge_policy),
        http: config.http.clone(),
        redis,
        background,
        streams,
    })
}

impl App {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves HTTPS only, with `tls` (when given): HTTP/2 by ALPN, or
    /// HTTP/1.1.
    pub fn with_tls(mut self, tls: Option<ServerTls>) -> Self {
        self.server = self.server.with_tls(tls);
        self
    }

    /// Serves HTTP/1.1 and HTTP/2 (h2c) until `shutdown` completes, then
    /// stops as `drain` says.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
        drain: Drain,
    ) -> anyhow::Result<()> {
        let Self {
            server,
            router,
            http,
            redis,
            background,
            streams,
        } = self;
        let _stop_background = background.drop_guard();
        let watching = CancellationToken::new();
        if let Some(redis) = redis {
            tokio::spawn(redis.watch(watching.clone()));
        }
        let _stop_watching = watching.drop_guard();
        let shutdown = async move {
            shutdown.await;
            streams.cancel();
        };
        server.run_until_stopped(router, &http, shutdown, drain).await
    }
}
