//! The one way every gRPC server in the mesh is built: bound before it
//! serves, with health and reflection, one layer stack, and a graceful drain
//! with a deadline.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Stream, TryStreamExt as _};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
};
use tokio_util::{either::Either, sync::CancellationToken};
use tonic::{
    body::Body,
    server::NamedService,
    service::RoutesBuilder,
    transport::{
        Server,
        server::{Connected, TcpConnectInfo, TcpIncoming},
    },
};
use tonic_health::{ServingStatus, server::HealthReporter};

use nws_watermark::pb::FILE_DESCRIPTOR_SET;

use super::{observe::ServerLayer, policy::PolicyLayer};
use crate::{
    policy::Policy,
    shutdown::Drain,
    tls::{Acceptors, ServerTls},
};

/// Fully-qualified name of the standard health service.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// A gRPC server that is bound but not yet serving.
pub struct GrpcServer {
    name: &'static str,
    listener: TcpListener,
    local_addr: SocketAddr,
    routes: RoutesBuilder,
    service_names: Vec<&'static str>,
    health: HealthReporter,
    health_watches: Vec<HealthWatch>,
    tls: Option<ServerTls>,
    policy: Policy,
}

/// The answer of a dependency check: `Err` says, for the logs, why the
/// service cannot serve.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A service whose health follows a dependency (a storage backend, a
/// broker): checked every `interval` while the server runs.
struct HealthWatch {
    service: &'static str,
    interval: Duration,
    check: Arc<dyn Fn() -> CheckFuture + Send + Sync>,
}

impl GrpcServer {
    /// Binds `addr` (port 0 picks a free port); `name` labels the logs.
    pub async fn bind(name: &'static str, addr: SocketAddr) -> anyhow::Result<Self> {
        let (listener, local_addr) = crate::bind(name, addr).await?;
        Ok(Self {
            name,
            listener,
            local_addr,
            routes: RoutesBuilder::default(),
            service_names: Vec::new(),
            health: HealthReporter::new(),
            health_watches: Vec::new(),
            tls: None,
            policy: Policy::open(),
        })
    }

    /// Serves gRPC over TLS only, with `tls` (when given), which may
    /// require client certificates.
    pub fn with_tls(mut self, tls: Option<ServerTls>) -> Self {
        self.tls = tls;
        self
    }

    /// Checks every call against `policy` (tokens, scopes, rate limits),
    /// and serves reflection only if it allows.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The reporter behind `grpc.health.v1.Health`, for services whose
    /// health depends on something they reach (a backend, a broker).
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Adds an application service, reported SERVING by health checks and
    /// listed by reflection.
    pub async fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.health
            .set_service_status(S::NAME, ServingStatus::Serving)
            .await;
        self.service_names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Reports `service` SERVING or NOT_SERVING from `check`, run as soon as
    /// the server starts (NOT_SERVING until then) and then every `interval`
    /// until the drain begins. Changes are logged with their reason, so an
    /// outage and its end are both visible.
    pub fn watch_health(
        mut self,
        service: &'static str,
        interval: Duration,
        check: impl Fn() -> CheckFuture + Send + Sync + 'static,
    ) -> Self {
        self.health_watches.push(HealthWatch {
            service,
            interval,
            check: Arc::new(check),
        });
        self
    }

    /// Serves until `shutdown` completes, then reports NOT_SERVING, keeps
    /// serving for the drain's delay, stops accepting, and lets in-flight
    /// calls finish for at most the drain's timeout.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
        drain: Drain,
    ) -> anyhow::Result<()> {
        let Self {
            name,
            listener,
            local_addr,
            mut routes,
            service_names,
            health,
            health_watches,
            tls,
            policy,
        } = self;

        for watch in &health_watches {
            health
                .set_service_status(watch.service, ServingStatus::NotServing)
                .await;
        }
        let watches_stop = CancellationToken::new();
        let watches: Vec<_> = health_watches
            .into_iter()
            .map(|watch| tokio::spawn(watch.run(health.clone(), watches_stop.clone())))
            .collect();

        routes.add_service(tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(health.clone()),
        ));
        if policy.reflection() {
            routes
                .add_service(reflection_builder(&service_names).build_v1()?)
                .add_service(reflection_builder(&service_names).build_v1alpha()?);
        }
        policy.describe(name);

        let server = Server::builder()
            .layer(layer_stack(name, policy))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_routes(routes.routes());
        tracing::info!(
            service = name,
            addr = %local_addr,
            tls = ServerTls::mode(tls.as_ref()),
            "listening"
        );
        let report_not_serving = async {
            // Health watchers (Kubernetes probes, balancers) see NOT_SERVING
            // while the in-flight calls drain; dependency checks end first
            // so that none of them can report SERVING again.
            watches_stop.cancel();
            for watch in watches {
                let _ = watch.await;
            }
            for service in service_names.iter().copied().chain([""]) {
                health
                    .set_service_status(service, ServingStatus::NotServing)
                    .await;
            }
        };
        let incoming: Incoming = match tls {
            None => Box::pin(
                TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .map_ok(Connection::plain),
            ),
            Some(tls) => Box::pin(tls_incoming(listener, tls.acceptors(crate::tls::ALPN_GRPC))),
        };
        crate::shutdown::serve_with_drain(
            name,
            |stop| server.serve_with_incoming_shutdown(incoming, stop),
            shutdown,
            report_not_serving,
            drain,
        )
        .await
    }
}

/// The connections a gRPC server takes, plain or TLS alike.
type Incoming = Pin<Box<dyn Stream<Item = Result<Connection, std::io::Error>> + Send>>;

/// Handshakes under way at once on one listener; past it, new connections
/// wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;

/// Connections whose handshake is done, waiting for the server to take them.
const HANDSHAKEN_QUEUE: usize = 64;

/// The connections of a TLS listener, handshake done. Handshakes run on
/// tasks of their own, so a slow or failing client never holds the accept
/// loop. The listener closes when the server drops the stream (as it stops
/// accepting).
fn tls_incoming(
    listener: TcpListener,
    mut acceptors: Acceptors,
) -> impl Stream<Item = Result<Connection, std::io::Error>> + Send {
    let (ready, mut connections) = mpsc::channel(HANDSHAKEN_QUEUE);
    tokio::spawn(async move {
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            let permit = tokio::select! {
                () = ready.closed() => break,
                permit = handshakes.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                () = ready.closed() => break,
                accepted = crate::accept(&listener) => accepted,
            };
            let info = TcpConnectInfo {
                local_addr: stream.local_addr().ok(),
                remote_addr: Some(peer),
            };
            let acceptor = acceptors.current();
            let ready = ready.clone();
            tokio::spawn(async move {
                let stream = crate::tls::handshake(acceptor, stream, peer).await;
                drop(permit);
                if let Some(stream) = stream {
                    let _ = ready
                        .send(Ok(Connection {
                            stream: Either::Right(stream),
                            info,
                        }))
                        .await;
                }
            });
        }
    });
    futures_util::stream::poll_fn(move |cx| connections.poll_recv(cx))
}

/// A connection, plain or TLS, that tells tonic its TCP addresses, so that
/// `Request::remote_addr` and the `TcpConnectInfo` extension work the same
/// with TLS and without.
struct Connection {
    stream: Either<TcpStream, tokio_rustls::server::TlsStream<TcpStream>>,
    info: TcpConnectInfo,
}

impl Connection {
    fn plain(stream: TcpStream) -> Self {
        let info = stream.connect_info();
        Self {
            stream: Either::Left(stream),
            info,
        }
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl HealthWatch {
    /// The service is NOT_SERVING until its first check passes.
    async fn run(self, health: HealthReporter, stop: CancellationToken) {
        let mut serving = None;
        loop {
            let verdict = tokio::select! {
                verdict = (self.check)() => verdict,
                () = stop.cancelled() => return,
            };
            if serving != Some(verdict.is_ok()) {
                let status = match &verdict {
                    Ok(()) => {
                        tracing::info!(service = self.service, "dependency reachable: SERVING");
                        ServingStatus::Serving
                    }
                    Err(reason) => {
                        tracing::warn!(service = self.service, %reason, "dependency down: NOT_SERVING");
                        ServingStatus::NotServing
                    }
                };
                health.set_service_status(self.service, status).await;
                serving = Some(verdict.is_ok());
            }
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

/// Reflection lists exactly the services this server runs, plus health, in
/// both protocol versions so that old and new grpcurl clients work.
fn reflection_builder(service_names: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(HEALTH_SERVICE);
    for name in service_names {
        builder = builder.with_service_name(*name);
    }
    builder
}

/// The layers every gRPC server runs, outermost first. `service` names the
/// server in every call's span and metrics, so the spans, logs and series
/// of several services in one process (the all-in-one mesh) stay apart.
///
/// 1. Observation: the call's span continues the caller's W3C trace from
///    the metadata (before anything that logs, so every line names the
///    trace), and its duration is counted per method and status code. It
///    is outermost so that refusals below are seen too.
/// 2. Policy: the bearer token from `authorization` (the scope the method
///    needs, [`nws_watermark::access`]), then the caller's rate limit, which
///    needs the identity the token gives. A refused caller costs nothing
///    below; health and reflection are open.
///
/// The service's own admission control (the optimizer's bounded waiting
/// line) stays inside the service, where it knows the cost of a call.
fn layer_stack(
    service: &'static str,
    policy: Policy,
) -> tower::ServiceBuilder<
    tower::layer::util::Stack<
        PolicyLayer,
        tower::layer::util::Stack<ServerLayer, tower::layer::util::Identity>,
    >,
> {
    tower::ServiceBuilder::new()
        .layer(ServerLayer { service })
        .layer(PolicyLayer { policy })
}
