//! NWS Watermark gateway: HTTP/JSON for browsers and other HTTP clients in
//! front of the Optimizer and Storage gRPC services, and [`mesh`], which runs
//! the whole mesh in one process.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod mesh;
mod routes;
mod upload;
mod upstream;

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use axum::Router;
use http::Uri;
use tokio::net::TcpListener;

pub use config::GatewayConfig;

use crate::{routes::AppState, upstream::Upstreams};

/// The HTTP gateway, bound and ready to serve.
pub struct App {
    listener: TcpListener,
    router: Router,
}

/// Binds the HTTP listener and prepares lazy connections to the upstreams.
pub async fn build(config: &GatewayConfig, optimizer: Uri, storage: Uri) -> anyhow::Result<App> {
    let listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("gateway: cannot listen on {} (NWS_HTTP_ADDR)", config.http_addr))?;
    let state = AppState {
        upstreams: Upstreams::connect_lazy(optimizer, storage, config.upstream_timeout),
        max_upload_bytes: config.max_upload_bytes,
    };
    Ok(App {
        listener,
        router: routes::router(state),
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
        let Self { listener, router } = self;
        nws_watermark::shutdown::serve_with_drain(
            "gateway",
            |stop| {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stop)
                    .into_future()
            },
            shutdown,
            async {},
            drain_timeout,
        )
        .await
    }
}
