//! The accept loop of every HTTP server. axum::serve offers no header read timeout,
//! so connections are served by hyper directly: HTTP/1.1, and HTTP/2 with
//! prior knowledge (h2c) or by ALPN over TLS, with a deadline for a
//! request's headers so a client that opens connections and trickles bytes
//! cannot hold them.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{
        conn::auto,
        graceful::{GracefulShutdown, Watcher},
    },
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};
use tower::ServiceExt as _;

use crate::tls::{self, Acceptors};

/// Serves `router` (over TLS when `tls` is given) until `stop` completes,
/// then waits for the connections still open to finish their requests.
/// Each request carries its client's address as `ConnectInfo<SocketAddr>`.
pub(super) async fn serve(
    listener: TcpListener,
    mut tls: Option<Acceptors>,
    router: Router,
    header_read_timeout: Duration,
    stop: impl Future<Output = ()>,
) -> Result<(), Infallible> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = crate::accept(&listener) => accepted,
        };
        let router = router.clone();
        // Taken before the handshake, so that a drain waits for (at most
        // HANDSHAKE_TIMEOUT of) a handshake under way too.
        let watcher = graceful.watcher();
        let builder = builder.clone();
        match tls.as_mut().map(Acceptors::current) {
            None => {
                tokio::spawn(serve_connection(builder, stream, peer, router, watcher));
            }
            // The handshake runs on the connection's task: a slow client
            // never holds the accept loop.
            Some(acceptor) => {
                tokio::spawn(async move {
                    if let Some(stream) = tls::handshake(acceptor, stream, peer).await {
                        serve_connection(builder, stream, peer, router, watcher).await;
                    }
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

async fn serve_connection<I>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    io: I,
    peer: SocketAddr,
    router: Router,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = router.map_request(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    });
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service))
        .into_owned();
    // Errors here are the client's (reset, timeout, bad framing).
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(%error, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn each_request_carries_its_clients_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route(
            "/",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, None, router, Duration::from_secs(5), async {
            let _ = stopped.await;
        }));

        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let client_addr = client.local_addr().unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        client.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with(&client_addr.to_string()), "{response}");

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
