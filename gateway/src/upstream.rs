//! Connections to the Optimizer and Storage services.

use std::time::Duration;

use http::Uri;
use nws_watermark::pb::{optimizer_client::OptimizerClient, storage_client::StorageClient};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::error::Upstream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Clients for both upstreams. Channels connect lazily and reconnect by
/// themselves, so the gateway starts (and reports not ready) while an
/// upstream is down, and recovers when it returns.
#[derive(Clone)]
pub struct Upstreams {
    optimizer: Channel,
    storage: Channel,
    timeout: Duration,
}

impl Upstreams {
    pub fn connect_lazy(optimizer: Uri, storage: Uri, timeout: Duration) -> Self {
        let channel = |uri: Uri| {
            Endpoint::from(uri)
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true)
                .connect_lazy()
        };
        Self {
            optimizer: channel(optimizer),
            storage: channel(storage),
            timeout,
        }
    }

    pub fn channel(&self, upstream: Upstream) -> Channel {
        match upstream {
            Upstream::Optimizer => self.optimizer.clone(),
            Upstream::Storage => self.storage.clone(),
        }
    }

    pub fn optimizer(&self) -> OptimizerClient<Channel> {
        OptimizerClient::new(self.optimizer.clone())
    }

    pub fn storage(&self) -> StorageClient<Channel> {
        StorageClient::new(self.storage.clone())
    }

    /// Wraps a message in a request carrying the configured deadline, which
    /// tonic sends as `grpc-timeout` so the server stops work past it too.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// Each upstream's answer to its gRPC health check.
    pub async fn readiness(&self) -> [(Upstream, Result<(), String>); 2] {
        let (optimizer, storage) = tokio::join!(
            check(self.optimizer.clone(), "watermark.v1.Optimizer"),
            check(self.storage.clone(), "watermark.v1.Storage"),
        );
        [(Upstream::Optimizer, optimizer), (Upstream::Storage, storage)]
    }
}

async fn check(channel: Channel, service: &str) -> Result<(), String> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    request.set_timeout(HEALTH_TIMEOUT);
    let mut client = HealthClient::new(channel);
    match tokio::time::timeout(HEALTH_TIMEOUT, client.check(request)).await {
        Err(_) => Err("health check timed out".to_owned()),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Ok(Ok(response)) => match response.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            other => Err(format!("reports {}", other.as_str_name())),
        },
    }
}
