//! NWS Watermark runtime: the plumbing every server shares, so that a
//! cross-cutting concern (trace context, authentication, rate limits,
//! metrics) is written once and every server gets it.
//!
//! - [`config`]: flags with `NWS_*` environment fallbacks, fail-fast messages,
//!   secrets that never reach a log;
//! - [`grpc`]: the gRPC server builder (health, reflection, the gRPC layer
//!   stack, graceful drain), upstream channels, and user-facing status
//!   messages;
//! - [`http`]: the HTTP accept loop and the HTTP layer stack, with JSON errors
//!   that use grpc-gateway's status table;
//! - [`policy`]: authentication, scopes, signed links, rate limits, CORS;
//! - [`telemetry`]: logs that name their trace, W3C trace context, OTLP
//!   export, Prometheus metrics; [`admin`]: the operators' listener;
//! - [`tls`]: TLS and mTLS on every listener and upstream channel, with
//!   certificates reloaded from disk;
//! - [`process`]: the life of every binary; [`shutdown`], [`panic`];
//! - `testing` (feature `test-support`): start real binaries on `127.0.0.1:0`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod grpc;
pub mod http;
pub mod panic;
pub mod policy;
pub mod process;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

#[cfg(feature = "test-support")]
pub mod testing;

use std::net::SocketAddr;

use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};

/// Binds a server's listener first (port 0 picks a free port), so that it
/// can report the address it really has before it serves.
async fn bind(name: &'static str, addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("{name}: cannot listen on {addr}"))?;
    let local_addr = listener.local_addr()?;
    Ok((listener, local_addr))
}

/// Pause after a failed accept (e.g. out of file descriptors), so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The next connection of every server's accept loop (HTTP, and gRPC over
/// TLS), with Nagle off. A failed accept is the server's condition, not a
/// client's: it is logged and retried after a pause. Cancel-safe.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
