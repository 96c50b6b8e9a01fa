//! Channels to the services this process calls, all built the same way, so
//! that client-side layers (a span per call carrying its W3C trace context,
//! call metrics; TLS and client certificates for `https://` URLs;
//! credentials when they come) are added once, here, for every upstream.

use std::{fmt, time::Duration};

use http::Uri;
use nws_watermark::stream::ByteStream;
use tonic::transport::Endpoint;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tracing::Instrument as _;

use super::{ObservedService, balance::Balanced, target::UpstreamTarget};
use crate::{config::InvalidSetting, tls::UpstreamTls};

/// The channel type every upstream client uses. Client layers wrap it here
/// and nowhere else.
pub type UpstreamChannel = ObservedService<Balanced>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// A channel to `target` for calls made on behalf of `caller` (the service
/// of this process that makes them: their spans and metrics are its). It
/// connects on first use and reconnects by itself, so a process starts (and
/// reports not ready) while an upstream is down, and recovers when it
/// returns. A `dns:` target gets a connection per address, and each call
/// goes to one of them ([`super::balance`]).
///
/// Without client TLS settings: an `https://` URL gets a channel whose
/// every connection attempt fails (never plain text); use [`channel_with`].
pub fn channel(target: impl Into<UpstreamTarget>, caller: &'static str) -> UpstreamChannel {
    lazy(target.into(), caller, &UpstreamTls::default())
}

/// As [`channel`], with `tls` for an `https://` URL: the upstream's
/// certificate is checked against NWS_UPSTREAM_TLS_CA, and the client
/// certificate, if any, presented. An `https://` URL without
/// NWS_UPSTREAM_TLS_CA is a configuration error. A `dns:` target speaks TLS
/// to each address when NWS_UPSTREAM_TLS_CA is set (each certificate must
/// name the DNS name), plain text (h2c) otherwise.
pub fn channel_with(
    target: impl Into<UpstreamTarget>,
    caller: &'static str,
    tls: &UpstreamTls,
) -> Result<UpstreamChannel, InvalidSetting> {
    let target = target.into();
    if target.is_https() && !tls.is_configured() {
        return Err(InvalidSetting::new(
            "NWS_UPSTREAM_TLS_CA",
            format!(
                "unset, and the upstream {target} is https://: set it to the CA that signed its certificate"
            ),
        ));
    }
    Ok(lazy(target, caller, tls))
}

fn lazy(target: UpstreamTarget, caller: &'static str, tls: &UpstreamTls) -> UpstreamChannel {
    let balanced = match target {
        UpstreamTarget::Url(uri) if uri.scheme_str() == Some("https") => {
            // tonic's own connector would speak plain text to an https://
            // URL (its TLS features, which would bring a second TLS stack,
            // are off).
            Balanced::one(endpoint(uri).connect_with_connector_lazy(tls.connector()))
        }
        UpstreamTarget::Url(uri) => Balanced::one(endpoint(uri).connect_lazy()),
        UpstreamTarget::Dns(target) if tls.is_configured() => {
            let tls = tls.clone();
            let uri = Uri::try_from(format!("https://{}:{}", target.host, target.port))
                .expect("a DNS target's name and port make a valid authority");
            Balanced::resolve(target, caller, move |addr| {
                endpoint(uri.clone()).connect_with_connector_lazy(tls.connector_to(addr))
            })
        }
        UpstreamTarget::Dns(target) => Balanced::resolve(target, caller, |addr| {
            let uri = Uri::try_from(format!("http://{addr}")).expect("an address is a valid authority");
            endpoint(uri).connect_lazy()
        }),
    };
    ObservedService::client(balanced, caller)
}

fn endpoint(uri: Uri) -> Endpoint {
    Endpoint::from(uri)
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
}

/// Reads the rest of a response stream whose bytes the caller already has
/// (its status, after the writes the sender finishes first) on a task of
/// its own, so the caller answers at once and the call still ends as the
/// upstream ended it, in its span and metrics. A failure reported there is
/// logged as `what`.
pub fn finish_in_background(rest: ByteStream, what: &'static str) {
    tokio::spawn(
        async move {
            if let Err(error) = nws_watermark::stream::finish(rest).await {
                tracing::warn!(%error, "{what}");
            }
        }
        .in_current_span(),
    );
}

/// Why an upstream is not ready, in words that are safe to publish (on
/// `/readyz`); the details go to the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unready {
    /// No answer: connection refused, reset, or a transport failure.
    Unreachable,
    /// It answered, but reports that it cannot serve (e.g. its backend is down).
    NotServing,
    /// No answer within the health check's deadline.
    TimedOut,
}

impl fmt::Display for Unready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unready::Unreachable => "unreachable",
            Unready::NotServing => "reports NOT_SERVING",
            Unready::TimedOut => "health check timed out",
        })
    }
}

/// Asks `service`'s health over `channel` (`grpc.health.v1.Health/Check`).
pub async fn check_health(channel: UpstreamChannel, service: &str) -> Result<(), Unready> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    request.set_timeout(HEALTH_TIMEOUT);
    let mut client = HealthClient::new(channel);
    match tokio::time::timeout(HEALTH_TIMEOUT, client.check(request)).await {
        Err(_) => Err(Unready::TimedOut),
        Ok(Err(status)) => {
            tracing::debug!(service, %status, "health check failed");
            Err(if status.code() == tonic::Code::DeadlineExceeded {
                Unready::TimedOut
            } else {
                Unready::Unreachable
            })
        }
        Ok(Ok(response)) => match response.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            _ => Err(Unready::NotServing),
        },
    }
}
