//! NWS Watermark, the whole mesh in one process: the gateway, plus an
//! Optimizer and a Storage service for each upstream URL left unset. They
//! still talk over real gRPC on loopback, exactly as when deployed apart,
//! and the embedded Optimizer reads originals from, and keeps results in,
//! the same Storage as the gateway.
#![forbid(unsafe_code)]

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use gateway::GatewayConfig;
use http::Uri;
use nws_runtime::{
    config::{CommonConfig, parse_upstream_url},
    grpc::GrpcServer,
    grpc::target::UpstreamTarget,
    policy::{Policy, Role},
    shutdown::Drain,
};
use optimizer_svc::OptimizerConfig;
use storage_svc::StorageConfig;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Every setting of the all-in-one binary.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "nws-mesh",
    version,
    about = "NWS Watermark: the gateway, Optimizer and Storage in one process"
)]
pub struct MeshConfig {
    #[command(flatten)]
    pub gateway: GatewayConfig,
    #[command(flatten)]
    pub optimizer: OptimizerConfig,
    #[command(flatten)]
    pub storage: StorageConfig,

    /// URL of an Optimizer gRPC service to use (e.g. `http://optimizer:50051`).
    /// Unset: an Optimizer runs in this process on NWS_OPTIMIZER_ADDR.
    #[arg(long, env = "NWS_OPTIMIZER_URL", value_parser = parse_upstream_url)]
    pub optimizer_url: Option<UpstreamTarget>,

    /// URL of a Storage gRPC service to use (e.g. `http://storage:50052`),
    /// by the gateway and the embedded Optimizer alike. Unset: a Storage
    /// service runs in this process on NWS_STORAGE_ADDR.
    #[arg(long, env = "NWS_STORAGE_URL", value_parser = parse_upstream_url)]
    pub storage_url: Option<UpstreamTarget>,

    #[command(flatten)]
    pub common: CommonConfig,
}

/// Runs until `shutdown` is cancelled or a service fails. The gateway
/// drains first, so the embedded services finish the calls it still makes.
pub async fn run(config: MeshConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let drain = config.common.drain();
    // The embedded services stop once the gateway has drained: nothing
    // balances traffic to them, so they need no not-ready delay.
    let embedded_drain = Drain {
        delay: Duration::ZERO,
        ..drain
    };
    let services_stop = CancellationToken::new();
    let mut embedded = JoinSet::new();
    // NWS_TLS_* are the public port's: the embedded services listen on
    // loopback in plain text. NWS_UPSTREAM_TLS_* serve https:// upstream
    // URLs given here.
    let tls = config.common.tls.load()?;
    let upstream_tls = config.common.upstream_tls.load()?;

    // The embedded services answer only this gateway, which enforces the
    // policy; they check tokens too when it sends one of its own.
    let embedded_policy = Policy::build(&config.common.policy, Role::Embedded, services_stop.clone()).await?;
    let storage_url = upstream(
        config
            .storage_url
            .clone()
            .map(|url| url.resolved_every(config.common.resolve_interval)),
        async {
            Ok(Embedded::Storage(
                storage_svc::build(config.storage.clone())
                    .await?
                    .with_policy(embedded_policy.clone()),
            ))
        },
        &mut embedded,
        &services_stop,
        embedded_drain,
    )
    .await?;
    let optimizer_url = upstream(
        config
            .optimizer_url
            .clone()
            .map(|url| url.resolved_every(config.common.resolve_interval)),
        async {
            // It consumes the jobs its gateway queues, with the same settings.
            let jobs = optimizer_svc::JobSource {
                config: &config.gateway.jobs,
                redis: config.gateway.redis_url.as_ref(),
            };
            let app = optimizer_svc::build(
                config.optimizer.clone(),
                Some(storage_url.clone()),
                &upstream_tls,
                jobs,
            )
            .await?;
            Ok(Embedded::Optimizer(Box::new(
                app.with_policy(embedded_policy.clone()),
            )))
        },
        &mut embedded,
        &services_stop,
        embedded_drain,
    )
    .await?;
    tracing::info!(optimizer = %optimizer_url, storage = %storage_url, "upstreams");
    let gateway = gateway::build(
        &config.gateway,
        &config.common.policy,
        optimizer_url,
        storage_url,
        &upstream_tls,
    )
    .await?
    .with_tls(tls);

    // A failing embedded service stops the whole process rather than
    // leaving a gateway that can only answer 503.
    let gateway_stop = shutdown.clone();
    let watch_embedded = async {
        while let Some(result) = embedded.join_next().await {
            let failure = match result {
                Ok(Ok(())) if services_stop.is_cancelled() => continue,
                Ok(Ok(())) => anyhow::anyhow!("an embedded service stopped unexpectedly"),
                Ok(Err(error)) => error,
                Err(join_error) => anyhow::Error::new(join_error).context("an embedded service panicked"),
            };
            gateway_stop.cancel();
            return Err(failure);
        }
        Ok(())
    };

    let serve = async {
        let result = gateway.run_until_stopped(shutdown.cancelled(), drain).await;
        services_stop.cancel();
        result
    };
    let (served, embedded_result) = tokio::join!(serve, watch_embedded);
    embedded_result?;
    served
}

/// The configured upstream URL; or, when there is none, the URL of the
/// service `build` starts here (the future is not run otherwise).
/// A service this process runs for its gateway.
enum Embedded {
    Storage(GrpcServer),
    Optimizer(Box<optimizer_svc::App>),
}

impl Embedded {
    fn local_addr(&self) -> std::net::SocketAddr {
        match self {
            Embedded::Storage(app) => app.local_addr(),
            Embedded::Optimizer(app) => app.local_addr(),
        }
    }

    async fn run_until_stopped(self, stop: CancellationToken, drain: Drain) -> anyhow::Result<()> {
        match self {
            Embedded::Storage(app) => app.run_until_stopped(stop.cancelled_owned(), drain).await,
            Embedded::Optimizer(app) => app.run_until_stopped(stop.cancelled_owned(), drain).await,
        }
    }
}

async fn upstream(
    url: Option<UpstreamTarget>,
    build: impl Future<Output = anyhow::Result<Embedded>>,
    embedded: &mut JoinSet<anyhow::Result<()>>,
    stop: &CancellationToken,
    drain: Drain,
) -> anyhow::Result<UpstreamTarget> {
    if let Some(url) = url {
        return Ok(url);
    }
    let app = build.await?;
    let url = loopback_url(app.local_addr())?;
    embedded.spawn(app.run_until_stopped(stop.clone(), drain));
    Ok(url.into())
}

fn loopback_url(addr: std::net::SocketAddr) -> anyhow::Result<Uri> {
    // A wildcard listen address is reachable on loopback.
    let host = if addr.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    format!("http://{host}").parse().context("embedded service URL")
}
