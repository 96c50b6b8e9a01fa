//! The admin listener: Prometheus `/metrics`, `/healthz` and CPU profiles
//! ([`profile`]) on a port of their own (`NWS_ADMIN_ADDR`, loopback by
//! default), so that what only operators should reach never shares the
//! public port.

mod profile;

use std::{net::SocketAddr, time::Duration};

use axum::{Json, Router, routing::get};

use crate::{
    http::{HttpConfig, HttpServer},
    shutdown::Drain,
    telemetry::metrics,
};

/// An admin listener, bound but not yet serving.
pub struct AdminServer {
    server: HttpServer,
}

impl AdminServer {
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            server: HttpServer::bind("admin", addr).await?,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until `shutdown` completes. Scrapes are short: a second is
    /// enough to let one finish.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let config = HttpConfig {
            max_concurrent_requests: 16,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
        };
        let drain = Drain {
            delay: Duration::ZERO,
            timeout: Duration::from_secs(1),
        };
        self.server
            .run_until_stopped(router(), &config, shutdown, drain)
            .await
    }
}

fn router() -> Router {
    Router::new()
        .route("/metrics", get(metrics::handler))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route("/debug/pprof/profile", get(profile::pprof))
        .route("/debug/pprof/flamegraph", get(profile::flamegraph))
        .with_state(profile::Profiler::new())
}
