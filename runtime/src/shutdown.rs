//! One shutdown signal for every server in the process.

use std::time::Duration;

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

/// How a server stops once told to: it reports itself not ready and keeps
/// serving for `delay`, then stops accepting and gives in-flight work at
/// most `timeout` before abandoning it.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    pub delay: Duration,
    pub timeout: Duration,
}

/// Runs a server built by `serve` (which is handed the future that tells it
/// to stop accepting) until `shutdown` completes; then runs `not_ready`
/// (e.g. reporting NOT_SERVING), keeps serving for the drain's delay, stops
/// accepting, and waits at most the drain's timeout for in-flight work.
pub async fn serve_with_drain<S, E>(
    name: &'static str,
    serve: impl FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> S,
    shutdown: impl Future<Output = ()>,
    not_ready: impl Future<Output = ()>,
    drain: Drain,
) -> anyhow::Result<()>
where
    S: Future<Output = Result<(), E>>,
    E: Into<anyhow::Error>,
{
    let failed = |e: E, when: &str| e.into().context(format!("{name}: server failed{when}"));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = serve(Box::pin(async {
        let _ = stop_rx.await;
    }));
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.map_err(|e| failed(e, "")),
        () = shutdown => {}
    }
    not_ready.await;
    tracing::info!(service = name, delay = ?drain.delay, "not ready: still serving until the delay ends");
    tokio::select! {
        result = &mut server => return result.map_err(|e| failed(e, " while shutting down")),
        () = tokio::time::sleep(drain.delay) => {}
    }
    let _ = stop_tx.send(());
    tracing::info!(service = name, timeout = ?drain.timeout, "draining in-flight requests");
    match tokio::time::timeout(drain.timeout, server).await {
        Ok(result) => result.map_err(|e| failed(e, " while draining"))?,
        Err(_) => tracing::warn!(
            service = name,
            timeout = ?drain.timeout,
            "requests still in flight at the drain deadline; abandoning them"
        ),
    }
    tracing::info!(service = name, "stopped");
    Ok(())
}
