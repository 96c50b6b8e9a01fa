//! Calls to the Optimizer and Storage services: each with the configured
//! deadline, each error tagged with the upstream that produced it. Renders
//! go through the optimizer's circuit breaker ([`crate::breaker`]), and the
//! wait its last refusal asked for is remembered for
//! [`Upstreams::optimizer_admits`].

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
#[cfg(test)]
use http::Uri;
use nws_runtime::{
    config::InvalidSetting,
    grpc::{
        balance::RoutingKey,
        client::{Unready, UpstreamChannel, channel_with, check_health, finish_in_background},
        target::UpstreamTarget,
    },
    telemetry::GATEWAY,
    tls::UpstreamTls,
};
use nws_watermark::{
    pb::{
        DeleteRequest, GetRequest, Namespace, ObjectInfo, OptimizeHeader, PutResponse, RenderPriority,
        StatRequest, optimizer_client::OptimizerClient, storage_client::StorageClient,
    },
    render::RenderJob,
    stream::{self, ByteStream},
};

use tokio::time::Instant;

use crate::{
    breaker::{self, Breaker, BreakerConfig, Outcome},
    error::{ApiError, Upstream},
};

/// Largest result the gateway holds to serve and cache. The optimizer's
/// box is at most 8192² pixels, whose PNG can approach this.
const MAX_RESULT_BYTES: u64 = 256 * 1024 * 1024;

/// Clients for both upstreams, over channels that connect lazily and
/// reconnect by themselves.
#[derive(Clone)]
pub struct Upstreams {
    optimizer: UpstreamChannel,
    storage: UpstreamChannel,
    timeout: Duration,
    breaker: Breaker,
    busy: BusyUntil,
}

/// Until when the optimizer asked not to be sent work: the RetryInfo of its
/// latest RESOURCE_EXHAUSTED, forgotten once a render succeeds.
#[derive(Clone, Default)]
struct BusyUntil(Arc<Mutex<Option<Instant>>>);

impl BusyUntil {
    fn set(&self, until: Option<Instant>) {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = until;
    }

    /// How much of the wait is left, if any.
    fn left(&self) -> Option<Duration> {
        let until = (*self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

impl Upstreams {
    /// Over plain-text channels (`http://` URLs), for the unit tests'
    /// inline upstreams.
    #[cfg(test)]
    pub fn connect_lazy(optimizer: Uri, storage: Uri, timeout: Duration) -> Self {
        Self {
            optimizer: nws_runtime::grpc::client::channel(optimizer, GATEWAY.name),
            storage: nws_runtime::grpc::client::channel(storage, GATEWAY.name),
            timeout,
            breaker: Breaker::new("optimizer", &BreakerConfig::default()).expect("the defaults are valid"),
            busy: BusyUntil::default(),
        }
    }

    /// Over TLS, with `tls`, for `https://` URLs.
    pub fn connect_lazy_with(
        optimizer: UpstreamTarget,
        storage: UpstreamTarget,
        timeout: Duration,
        tls: &UpstreamTls,
    ) -> Result<Self, InvalidSetting> {
        Ok(Self {
            optimizer: channel_with(optimizer, GATEWAY.name, tls)?,
            storage: channel_with(storage, GATEWAY.name, tls)?,
            timeout,
            breaker: Breaker::new("optimizer", &BreakerConfig::default())?,
            busy: BusyUntil::default(),
        })
    }

    /// With the optimizer's circuit breaker set as `config` says.
    pub fn with_breaker(mut self, config: &BreakerConfig) -> Result<Self, InvalidSetting> {
        self.breaker = Breaker::new("optimizer", config)?;
        Ok(self)
    }

    /// Whether work only the optimizer can do is worth starting now (an
    /// upload's body read, to be rendered): a 503 with `Retry-After` while
    /// the optimizer's breaker is open, or while the wait its latest
    /// refusal (RESOURCE_EXHAUSTED with RetryInfo) asked for is not over.
    /// Takes no trial slot of a half-open breaker: it passes.
    pub fn optimizer_admits(&self) -> Result<(), ApiError> {
        if let Err(rejected) = self.breaker.check() {
            return Err(ApiError::BreakerOpen {
                upstream: Upstream::Optimizer,
                retry_after: rejected.retry_after,
            });
        }
        match self.busy.left() {
            Some(retry_after) => Err(ApiError::Busy {
                upstream: Upstream::Optimizer,
                retry_after,
            }),
            None => Ok(()),
        }
    }

    /// The optimizer's circuit breaker now, for `/readyz`.
    pub fn optimizer_breaker(&self) -> breaker::Status {
        self.breaker.status()
    }

    pub fn channel(&self, upstream: Upstream) -> UpstreamChannel {
        match upstream {
            Upstream::Optimizer => self.optimizer.clone(),
            Upstream::Storage => self.storage.clone(),
        }
    }

    pub fn storage(&self) -> StorageClient<UpstreamChannel> {
        StorageClient::new(self.storage.clone())
    }

    /// Wraps a message in a request carrying the configured deadline, which
    /// tonic sends as `grpc-timeout` so the server stops work past it too.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// Has the optimizer render `job` from the original Storage keeps, and
    /// keep the result there. Returns the result once its last byte is in:
    /// the optimizer's write to Storage finishes on its own.
    ///
    /// Through the optimizer's circuit breaker: while it is open the call
    /// is not made ([`ApiError::BreakerOpen`]). A render dropped before it
    /// ends counts neither way.
    pub async fn render(
        &self,
        job: &RenderJob,
        priority: RenderPriority,
    ) -> Result<(OptimizeHeader, Bytes), ApiError> {
        let call = self.breaker.admit().map_err(|rejected| ApiError::BreakerOpen {
            upstream: Upstream::Optimizer,
            retry_after: rejected.retry_after,
        })?;
        // One deadline for the render, however many replicas it takes.
        let deadline = Instant::now() + self.timeout;
        let mut result = self.render_now(job, priority, self.timeout).await;
        // A render is the same whoever makes it (its result is keyed by
        // what it is made of), so one an optimizer replica could not serve
        // (its connection refused or cut: killed, restarting, scaled in;
        // or its line full) is made by another; the balancer has already
        // taken that one out of turn. As many tries as there are replicas,
        // within the deadline.
        let mut tries = 1;
        while let Err(error) = &result
            && tries < self.optimizer.inner().endpoints()
            && (error.is_connection_failure_of(Upstream::Optimizer)
                || error.upstream_code(Upstream::Optimizer) == Some(tonic::Code::ResourceExhausted))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tracing::warn!(%error, tries, "an optimizer replica could not take the render; making it on another");
            result = self.render_now(job, priority, left).await;
            tries += 1;
        }
        call.finish(match &result {
            Err(error) if error.is_outage_of(Upstream::Optimizer) => Outcome::Failure,
            _ => Outcome::Success,
        });
        self.note_busy(&result, priority);
        result
    }

    /// Remembers the wait the optimizer's refusal asks for, and forgets it
    /// once a render succeeds. A background render's refusal only says no
    /// worker is idle right now: waiting callers may still be served.
    fn note_busy<T>(&self, result: &Result<T, ApiError>, priority: RenderPriority) {
        match result {
            Ok(_) => self.busy.set(None),
            Err(error)
                if priority != RenderPriority::Background
                    && error.upstream_code(Upstream::Optimizer) == Some(tonic::Code::ResourceExhausted) =>
            {
                if let Some(wait) = error.retry_after() {
                    self.busy.set(Some(Instant::now() + wait));
                }
            }
            Err(_) => {}
        }
    }

    /// One call to one optimizer replica, with `timeout` as its deadline.
    async fn render_now(
        &self,
        job: &RenderJob,
        priority: RenderPriority,
        timeout: Duration,
    ) -> Result<(OptimizeHeader, Bytes), ApiError> {
        let read = async {
            let mut request = tonic::Request::new(job.request(true, priority));
            request.set_timeout(timeout);
            // NWS_OPTIMIZER_ROUTING=hash sends a key to the replica that
            // made it before.
            request
                .extensions_mut()
                .insert(RoutingKey::of(job.key().to_string()));
            let responses = OptimizerClient::new(self.optimizer.clone())
                .render(request)
                .await?
                .into_inner();
            let (header, mut bytes) = stream::open(responses).await?;
            let result = stream::collect(&mut bytes, header.size, MAX_RESULT_BYTES).await?;
            finish_in_background(
                bytes,
                "the optimizer served a result it could not keep in storage",
            );
            Ok((header, result))
        };
        read.await.map_err(ApiError::from_stream(Upstream::Optimizer))
    }

    /// Opens a stored object: its description, then its bytes as a stream.
    /// The future borrows nothing, so it can run on behalf of other requests.
    pub fn open(
        &self,
        namespace: Namespace,
        key: &str,
    ) -> impl Future<Output = Result<(ObjectInfo, ByteStream), ApiError>> + Send + 'static {
        let mut storage = self.storage();
        let request = self.request(GetRequest {
            sha256: key.to_owned(),
            namespace: namespace.into(),
        });
        async move {
            let open = async {
                let responses = storage.get(request).await?.into_inner();
                stream::open(responses).await
            };
            open.await.map_err(ApiError::from_stream(Upstream::Storage))
        }
    }

    /// A stored object's bytes, whole.
    pub async fn read(&self, namespace: Namespace, key: &str) -> Result<Bytes, ApiError> {
        let (info, mut bytes) = self.open(namespace, key).await?;
        let object = stream::collect(&mut bytes, info.size, MAX_RESULT_BYTES)
            .await
            .map_err(ApiError::from_stream(Upstream::Storage))?;
        finish_in_background(bytes, "storage failed after sending a whole object");
        Ok(object)
    }

    /// A stored object's description.
    pub async fn stat(&self, namespace: Namespace, key: &str) -> Result<ObjectInfo, ApiError> {
        self.storage()
            .stat(self.request(StatRequest {
                sha256: key.to_owned(),
                namespace: namespace.into(),
            }))
            .await
            .map_err(ApiError::from_status(Upstream::Storage))?
            .into_inner()
            .info
            .ok_or(ApiError::Protocol {
                upstream: Upstream::Storage,
                what: "Stat answered without the object's info",
            })
    }

    /// Removes an original that turned out to be no image the optimizer can
    /// read, unless an earlier upload stored it.
    pub async fn forget_original(&self, original: &PutResponse) {
        if original.deduplicated {
            return;
        }
        let request = self.request(DeleteRequest {
            sha256: original.sha256.clone(),
            namespace: Namespace::Originals.into(),
        });
        if let Err(status) = self.storage().delete(request).await {
            tracing::warn!(sha256 = %original.sha256, %status, "could not remove an unreadable upload");
        }
    }

    /// Each upstream's answer to its gRPC health check.
    pub async fn readiness(&self) -> [(Upstream, Result<(), Unready>); 2] {
        let (optimizer, storage) = tokio::join!(
            check_health(self.optimizer.clone(), "watermark.v1.Optimizer"),
            check_health(self.storage.clone(), "watermark.v1.Storage"),
        );
        [(Upstream::Optimizer, optimizer), (Upstream::Storage, storage)]
    }
}

#[cfg(test)]
mod tests {
    use std::{
        pin::Pin,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use futures_util::{Stream, stream};
    use nws_runtime::{grpc::GrpcServer, shutdown::Drain};
    use nws_watermark::{
        options::Options,
        pb::{
            OptimizeOptions, OptimizeRequest, OptimizeResponse, ProbeRequest, ProbeResponse, RenderRequest,
            RenderResponse,
            optimizer_server::{Optimizer, OptimizerServer},
            render_response,
        },
    };
    use tokio_util::sync::{CancellationToken, DropGuard};
    use tonic::{Code, Request, Response, Status, Streaming};
    use tonic_types::{ErrorDetails, StatusExt as _};

    use super::*;
    use crate::breaker::State;

    const ORIGINAL: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const RESULT: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3, 4];

    /// A tiny inline Optimizer whose Render answers with the status it is
    /// given, or a result, and counts the calls that reach it.
    #[derive(Clone, Default)]
    struct Scripted {
        answer: Arc<Mutex<Option<Status>>>,
        calls: Arc<AtomicUsize>,
    }

    impl Scripted {
        fn answer(&self, status: Option<Status>) {
            *self.answer.lock().unwrap() = status;
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    type Messages<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

    #[tonic::async_trait]
    impl Optimizer for Scripted {
        type OptimizeStream = Messages<OptimizeResponse>;
        type RenderStream = Messages<RenderResponse>;

        async fn render(&self, _: Request<RenderRequest>) -> Result<Response<Self::RenderStream>, Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if let Some(status) = self.answer.lock().unwrap().clone() {
                return Err(status);
            }
            let header = OptimizeHeader {
                size: RESULT.len() as u64,
                result_key: job().key().to_string(),
                ..OptimizeHeader::default()
            };
            let messages = [
                render_response::Payload::Header(header),
                render_response::Payload::Chunk(Bytes::from_static(RESULT)),
            ]
            .map(|payload| {
                Ok(RenderResponse {
                    payload: Some(payload),
                })
            });
            Ok(Response::new(Box::pin(stream::iter(messages))))
        }

        async fn optimize(
            &self,
            _: Request<Streaming<OptimizeRequest>>,
        ) -> Result<Response<Self::OptimizeStream>, Status> {
            Err(Status::unimplemented("not needed"))
        }

        async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
            Err(Status::unimplemented("not needed"))
        }
    }

    /// Upstreams whose optimizer is a served [`Scripted`], behind a breaker
    /// set as `breaker`; the server stops with the returned guard.
    async fn serve(breaker: &BreakerConfig) -> (Upstreams, Scripted, DropGuard) {
        let (addr, optimizer, stop) = serve_on("127.0.0.1:0".parse().unwrap()).await;
        let uri: Uri = format!("http://{addr}").parse().unwrap();
        let upstreams = Upstreams::connect_lazy(uri.clone(), uri, Duration::from_secs(10))
            .with_breaker(breaker)
            .unwrap();
        (upstreams, optimizer, stop)
    }

    /// A [`Scripted`] optimizer served on `addr`, until the guard drops.
    async fn serve_on(addr: std::net::SocketAddr) -> (std::net::SocketAddr, Scripted, DropGuard) {
        let optimizer = Scripted::default();
        let server = GrpcServer::bind("optimizer", addr)
            .await
            .unwrap()
            .add_service(OptimizerServer::new(optimizer.clone()))
            .await;
        let addr = server.local_addr();
        let stop = CancellationToken::new();
        let drain = Drain {
            delay: Duration::ZERO,
            timeout: Duration::from_secs(1),
        };
        tokio::spawn(server.run_until_stopped(stop.clone().cancelled_owned(), drain));
        (addr, optimizer, stop.drop_guard())
    }

    fn job() -> RenderJob {
        RenderJob::new(
            ORIGINAL.to_owned(),
            Options::try_from(OptimizeOptions::default()).unwrap(),
        )
    }

    fn two_failures_open_it() -> BreakerConfig {
        BreakerConfig {
            failures: 2,
            cooldown: Duration::from_secs(60),
            ..BreakerConfig::default()
        }
    }

    async fn render(upstreams: &Upstreams, priority: RenderPriority) -> Result<(), ApiError> {
        upstreams.render(&job(), priority).await.map(|_| ())
    }

    /// The optimizer's refusal of the load: busy, come back in `wait`.
    fn busy(wait: Option<Duration>) -> Status {
        let mut details = ErrorDetails::with_localized_message("en-US", "the optimizer is busy; retry later");
        if let Some(wait) = wait {
            details.set_retry_info(Some(wait));
        }
        Status::with_error_details(Code::ResourceExhausted, "queue full", details)
    }

    #[tokio::test]
    async fn an_open_breaker_fails_renders_at_once_without_calling_the_optimizer() {
        let (upstreams, optimizer, _server) = serve(&two_failures_open_it()).await;
        assert_eq!(upstreams.optimizer_admits().err().map(|e| e.to_string()), None);
        optimizer.answer(Some(Status::unavailable("going away")));
        for _ in 0..2 {
            let error = render(&upstreams, RenderPriority::Interactive).await.unwrap_err();
            assert!(error.is_outage_of(Upstream::Optimizer), "{error}");
            assert!(error.optimizer_cannot_serve());
        }
        assert_eq!(optimizer.calls(), 2);
        assert_eq!(upstreams.optimizer_breaker().state, State::Open);

        optimizer.answer(None);
        for priority in [RenderPriority::Interactive, RenderPriority::Background] {
            let refused = render(&upstreams, priority).await.unwrap_err();
            let ApiError::BreakerOpen {
                upstream: Upstream::Optimizer,
                retry_after,
            } = refused
            else {
                panic!("not the breaker's refusal: {refused}");
            };
            assert!(retry_after > Duration::from_secs(50), "{retry_after:?}");
            assert!(refused.optimizer_cannot_serve());
            assert_eq!(refused.retry_after(), Some(retry_after));
        }
        assert_eq!(optimizer.calls(), 2, "not called while open");
        assert!(matches!(
            upstreams.optimizer_admits(),
            Err(ApiError::BreakerOpen {
                upstream: Upstream::Optimizer,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn refusals_of_the_request_or_of_the_load_are_answers_not_failures() {
        let (upstreams, optimizer, _server) = serve(&two_failures_open_it()).await;
        let refusals = [
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::FailedPrecondition,
            Code::ResourceExhausted,
            // Its own failure with one image, sent as an answer.
            Code::Internal,
        ];
        for code in refusals.into_iter().chain(refusals) {
            optimizer.answer(Some(Status::new(code, "refused")));
            let error = render(&upstreams, RenderPriority::Interactive).await.unwrap_err();
            assert_eq!(error.upstream_code(Upstream::Optimizer), Some(code));
            assert!(!error.is_outage_of(Upstream::Optimizer), "{code:?}");
        }
        assert_eq!(optimizer.calls(), 14);
        assert_eq!(upstreams.optimizer_breaker().state, State::Closed);

        // UNKNOWN, and a deadline that ran out on the optimizer (tonic's
        // CANCELLED), are failures; a refusal between them breaks the run.
        optimizer.answer(Some(Status::unknown("panicked")));
        render(&upstreams, RenderPriority::Interactive).await.unwrap_err();
        optimizer.answer(Some(Status::invalid_argument("not an image")));
        render(&upstreams, RenderPriority::Interactive).await.unwrap_err();
        optimizer.answer(Some(Status::cancelled("Timeout expired")));
        render(&upstreams, RenderPriority::Interactive).await.unwrap_err();
        assert_eq!(upstreams.optimizer_breaker().state, State::Closed);
        optimizer.answer(Some(Status::unknown("panicked")));
        render(&upstreams, RenderPriority::Interactive).await.unwrap_err();
        assert_eq!(upstreams.optimizer_breaker().state, State::Open);
    }

    #[tokio::test]
    async fn the_optimizer_asking_to_wait_holds_uploads_off_until_then() {
        let (upstreams, optimizer, _server) = serve(&BreakerConfig::default()).await;
        let wait = Duration::from_secs(30);

        // A background render refused says only that no worker is idle.
        optimizer.answer(Some(busy(Some(wait))));
        render(&upstreams, RenderPriority::Background).await.unwrap_err();
        assert!(upstreams.optimizer_admits().is_ok());

        // Without RetryInfo, nothing says how long to wait.
        optimizer.answer(Some(busy(None)));
        let refused = render(&upstreams, RenderPriority::Interactive).await.unwrap_err();
        assert_eq!(refused.retry_after(), None);
        assert!(refused.optimizer_cannot_serve());
        assert!(upstreams.optimizer_admits().is_ok());

        optimizer.answer(Some(busy(Some(wait))));
        let refused = render(&upstreams, RenderPriority::Interactive).await.unwrap_err();
        assert_eq!(refused.retry_after(), Some(wait));
        assert!(refused.optimizer_cannot_serve());
        let held_off = upstreams.optimizer_admits().unwrap_err();
        let ApiError::Busy {
            upstream: Upstream::Optimizer,
            retry_after,
        } = held_off
        else {
            panic!("not held off as busy: {held_off}");
        };
        assert!(
            retry_after <= wait && retry_after > wait - Duration::from_secs(5),
            "{retry_after:?}"
        );
        assert!(held_off.optimizer_cannot_serve());
        assert_eq!(held_off.retry_after(), Some(retry_after));
        assert_eq!(upstreams.optimizer_breaker().state, State::Closed);

        // Renders still go to the optimizer; one that succeeds ends the wait.
        optimizer.answer(None);
        let (header, bytes) = upstreams
            .render(&job(), RenderPriority::Interactive)
            .await
            .unwrap();
        assert_eq!((header.result_key, &bytes[..]), (job().key().to_string(), RESULT));
        assert!(upstreams.optimizer_admits().is_ok());
    }

    #[tokio::test]
    async fn an_unreachable_optimizer_is_a_failure() {
        let refusing = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let uri: Uri = format!("http://{refusing}").parse().unwrap();
        let upstreams = Upstreams::connect_lazy(uri.clone(), uri, Duration::from_secs(10))
            .with_breaker(&two_failures_open_it())
            .unwrap();
        for _ in 0..2 {
            let error = render(&upstreams, RenderPriority::Interactive).await.unwrap_err();
            assert!(error.is_outage_of(Upstream::Optimizer), "{error}");
        }
        assert_eq!(upstreams.optimizer_breaker().state, State::Open);
    }

    /// Two replicas behind one name, routed by the job's key: the one the
    /// key ranks first refuses for load, so the render is made on the
    /// other, and the next one goes there straight away.
    #[tokio::test]
    async fn a_replica_that_refuses_for_load_passes_the_render_to_the_next() {
        use nws_runtime::grpc::balance::{Routing, RoutingKey, endpoint_id, rendezvous};

        let ips = [
            std::net::Ipv4Addr::new(127, 0, 0, 2),
            std::net::Ipv4Addr::new(127, 0, 0, 3),
        ];
        let port = {
            let probe = std::net::TcpListener::bind((ips[0], 0)).unwrap();
            probe.local_addr().unwrap().port()
        };
        let mut replicas = Vec::new();
        for ip in ips {
            replicas.push(serve_on(std::net::SocketAddr::from((ip, port))).await);
        }
        let addrs: Vec<_> = replicas.iter().map(|(addr, ..)| *addr).collect();
        let first = rendezvous(
            RoutingKey::of(job().key().to_string()),
            addrs.iter().map(|addr| endpoint_id(*addr)),
        )
        .unwrap();
        let (preferred, other) = (&replicas[first].1, &replicas[1 - first].1);
        preferred.answer(Some(busy(Some(Duration::from_secs(30)))));

        let dns = nws_runtime::testing::DnsServer::start("optimizer.test", &ips);
        let target: UpstreamTarget = dns
            .url(port)
            .parse::<UpstreamTarget>()
            .unwrap()
            .routed_by(Routing::Hash);
        let storage: Uri = "http://127.0.0.1:9".parse().unwrap();
        let upstreams = Upstreams::connect_lazy_with(
            target,
            storage.into(),
            Duration::from_secs(10),
            &UpstreamTls::default(),
        )
        .unwrap();

        render(&upstreams, RenderPriority::Interactive).await.unwrap();
        assert_eq!((preferred.calls(), other.calls()), (1, 1));
        assert!(
            upstreams.optimizer_admits().is_ok(),
            "one full replica holds nothing off"
        );
        render(&upstreams, RenderPriority::Interactive).await.unwrap();
        assert_eq!(
            (preferred.calls(), other.calls()),
            (1, 2),
            "the full one sits out"
        );
    }
}
