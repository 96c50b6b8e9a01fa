//! NWS Watermark gateway: HTTP/JSON for browsers and other HTTP clients in
//! front of the Optimizer and Storage gRPC services, with the result cache
//! tiers, and [`mesh`], which runs the whole mesh in one process.
#![forbid(unsafe_code)]

mod cache;
pub mod config;
pub mod error;
pub mod mesh;
mod openapi;
mod routes;
mod server;
mod timing;
mod transcode;
mod transfer;
mod upstream;

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use axum::Router;
use http::Uri;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::GatewayConfig;

use crate::{
    cache::{RedisTier, ResultCache},
    routes::{AppState, HttpLimits, Shared},
    upstream::Upstreams,
};

/// The HTTP gateway, bound and ready to serve.
pub struct App {
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    redis: Option<RedisTier>,
}

/// Binds the HTTP listener and prepares lazy connections to the upstreams
/// and to Redis; nothing waits for them, so the gateway starts (and says
/// what is missing on `/readyz`) while they are down.
pub async fn build(config: &GatewayConfig, optimizer: Uri, storage: Uri) -> anyhow::Result<App> {
    let redis = config
        .redis_url
        .as_deref()
        .map(|url| {
            RedisTier::new(
                url,
                config.redis_timeout,
                config.redis_prefix.clone(),
                config.cache_ttl,
            )
        })
        .transpose()?;
    let bindings = transcode::bindings(nws_watermark::pb::FILE_DESCRIPTOR_SET)
        .context("gateway: the google.api.http annotations in proto/")?;
    let listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("gateway: cannot listen on {} (NWS_HTTP_ADDR)", config.http_addr))?;
    let upstreams = Upstreams::connect_lazy(optimizer, storage, config.upstream_timeout);
    let state = AppState::new(Shared {
        cache: ResultCache::new(config.cache_memory, redis.clone(), upstreams.clone()),
        upstreams,
        max_upload_bytes: config.max_upload_bytes,
        body_read_timeout: config.body_read_timeout,
    });
    let limits = HttpLimits {
        max_concurrent_requests: config.max_concurrent_requests,
        body_read_timeout: config.body_read_timeout,
    };
    Ok(App {
        listener,
        router: routes::router(state, &bindings, &limits),
        header_read_timeout: config.header_read_timeout,
        redis,
    })
}

impl App {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves HTTP/1.1 and HTTP/2 (h2c) until `shutdown` completes, then
    /// drains for at most `drain_timeout`.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
        drain_timeout: Duration,
    ) -> anyhow::Result<()> {
        tracing::info!(service = "gateway", addr = %self.local_addr(), "listening");
        let Self {
            listener,
            router,
            header_read_timeout,
            redis,
        } = self;
        let watching = CancellationToken::new();
        if let Some(redis) = redis {
            tokio::spawn(redis.watch(watching.clone()));
        }
        let _stop_watching = watching.drop_guard();
        nws_watermark::shutdown::serve_with_drain(
            "gateway",
            |stop| server::serve(listener, router, header_read_timeout, stop),
            shutdown,
            async {},
            drain_timeout,
        )
        .await
    }
}
