//! NWS Watermark Optimizer: decode → fit the box → adaptive text watermark →
//! encode, served over gRPC. Images arrive in the call (`Optimize`) or are
//! read from Storage by their hash (`Render`, which can keep the result
//! there too); with a job queue (NWS_AMQP_URL), durable jobs are taken from
//! it and rendered on the same workers, after every waiting caller.
#![forbid(unsafe_code)]

mod config;
mod error;
mod jobs;
mod mark_images;
pub mod pipeline;
mod service;
mod storage;

use std::{net::SocketAddr, sync::Arc};

use nws_jobs::{Broker, JobsConfig, StatusStore, consumer::Consumer};
use nws_runtime::{
    config::SecretUrl,
    grpc::GrpcServer,
    grpc::target::UpstreamTarget,
    policy::Policy,
    shutdown::Drain,
    telemetry::OPTIMIZER,
    tls::{ServerTls, UpstreamTls},
};
use nws_watermark::pb::optimizer_server::OptimizerServer;
use tokio_util::sync::CancellationToken;

pub use config::OptimizerConfig;
pub use error::OptimizeError;

use crate::{jobs::QueuedRenders, service::OptimizerService, storage::OriginalStore};

/// Where durable jobs come from, and where their status goes.
pub struct JobSource<'a> {
    pub config: &'a JobsConfig,
    /// NWS_REDIS_URL: job status for the gateways to read.
    pub redis: Option<&'a SecretUrl>,
}

/// A bound server (and, with a queue, its job consumer): `local_addr()`,
/// then `run_until_stopped(shutdown, drain)`.
pub struct App {
    server: GrpcServer,
    /// The consumer, with what stops its broker connection: only after
    /// it has finished (acknowledged) the jobs in hand.
    consumer: Option<(Consumer<QueuedRenders>, CancellationToken)>,
}

/// Binds the listener and sets up the worker pool; nothing is served until
/// [`App::run_until_stopped`]. With `storage` (the Storage service's URL;
/// over TLS, with `upstream_tls`, when `https://`), `Render` reads
/// originals from it and keeps results in it; without, only `Optimize` and
/// `Probe` work. With a queue in `jobs` (and `storage`), queued jobs are
/// consumed too.
pub async fn build(
    config: OptimizerConfig,
    storage: Option<UpstreamTarget>,
    upstream_tls: &UpstreamTls,
    jobs: JobSource<'_>,
) -> anyhow::Result<App> {
    jobs.config.validate()?;
    let store = storage
        .map(|url| OriginalStore::connect_lazy(url, upstream_tls))
        .transpose()?;
    if store.is_none() {
        tracing::info!("no NWS_STORAGE_URL: Render is unavailable, Optimize and Probe work");
    }
    let has_store = store.is_some();
    let service = Arc::new(OptimizerService::new(&config, store));
    let server = GrpcServer::bind("optimizer", config.optimizer_addr)
        .await?
        .add_service(OptimizerServer::from_arc(Arc::clone(&service)))
        .await;
    let consumer = match (jobs.config.amqp_url.is_some(), has_store) {
        (false, _) => None,
        (true, false) => {
            tracing::warn!(
                "NWS_AMQP_URL is set but NWS_STORAGE_URL is not: jobs need Storage, so none is consumed here"
            );
            None
        }
        (true, true) => {
            let disconnect = CancellationToken::new();
            let broker =
                Broker::start(jobs.config, OPTIMIZER.name, disconnect.clone()).expect("a URL is set");
            let status = jobs
                .redis
                .map(|url| {
                    StatusStore::new(
                        url,
                        &jobs.config.status_prefix,
                        jobs.config.status_ttl,
                        std::time::Duration::from_secs(1),
                    )
                })
                .transpose()?;
            if status.is_none() {
                tracing::info!(
                    "no NWS_REDIS_URL: job status is not recorded (gateways see a job when its result is stored)"
                );
            }
            let concurrency = match jobs.config.job_workers {
                0 => config.worker_count(),
                n => n,
            };
            let consumer = Consumer {
                broker,
                status,
                renderer: Arc::new(QueuedRenders(service)),
                config: jobs.config.clone(),
                concurrency,
                service: OPTIMIZER.name,
            };
            Some((consumer, disconnect))
        }
    };
    Ok(App { server, consumer })
}

impl App {
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves over TLS only, with `tls` (when given).
    pub fn with_tls(mut self, tls: Option<ServerTls>) -> Self {
        self.server = self.server.with_tls(tls);
        self
    }

    /// Checks calls against `policy`.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.server = self.server.with_policy(policy);
        self
    }

    /// Serves (and consumes jobs) until `shutdown` completes. Then the
    /// consumer takes no new job and has the drain's timeout to finish the
    /// ones in hand (the rest go back to the queue), while the server
    /// drains its calls.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        drain: Drain,
    ) -> anyhow::Result<()> {
        let Some((consumer, disconnect)) = self.consumer else {
            return self.server.run_until_stopped(shutdown, drain).await;
        };
        let stop = CancellationToken::new();
        let consuming = tokio::spawn(consumer.run(stop.clone(), drain.timeout));
        let stopping = stop.clone();
        let shutdown = async move {
            shutdown.await;
            stopping.cancel();
        };
        let served = self.server.run_until_stopped(shutdown, drain).await;
        stop.cancel();
        let _ = consuming.await;
        disconnect.cancel();
        served
    }
}
