//! One shutdown signal for every server in the process.

use tokio_util::sync::CancellationToken;

/// Completes on the first SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "shutting down"),
        () = terminate => tracing::info!(signal = "SIGTERM", "shutting down"),
    }
}

/// A token cancelled at the first SIGINT or SIGTERM; clone it into every
/// server so that they all stop together.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        signal().await;
        trigger.cancel();
    });
    token
}

/// Runs a server built by `serve` (which is handed the future that tells it
/// to stop accepting) until `shutdown` completes; then runs `before_drain`
/// (e.g. reporting NOT_SERVING), stops accepting, and waits at most
/// `drain_timeout` for in-flight work before giving up on it.
pub async fn serve_with_drain<S, E>(
    name: &'static str,
    serve: impl FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> S,
    shutdown: impl Future<Output = ()>,
    before_drain: impl Future<Output = ()>,
    drain_timeout: std::time::Duration,
) -> anyhow::Result<()>
where
    S: Future<Output = Result<(), E>>,
    E: Into<anyhow::Error>,
{
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = serve(Box::pin(async {
        let _ = stop_rx.await;
    }));
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => {
            return result.map_err(|e| e.into().context(format!("{name}: server failed")));
        }
        () = shutdown => {}
    }
    before_drain.await;
    let _ = stop_tx.send(());
    tracing::info!(service = name, ?drain_timeout, "draining in-flight requests");
    match tokio::time::timeout(drain_timeout, server).await {
        Ok(result) => {
            result.map_err(|e| e.into().context(format!("{name}: server failed while draining")))?
        }
        Err(_) => tracing::warn!(
            service = name,
            ?drain_timeout,
            "requests still in flight at the drain deadline; abandoning them"
        ),
    }
    tracing::info!(service = name, "stopped");
    Ok(())
}
