//! HTTP servers: the accept loop ([`HttpServer`]), the one layer stack every
//! HTTP router runs behind ([`layer_stack`]), and JSON errors whose status
//! follows grpc-gateway's table of gRPC codes.

mod observe;
mod serve;

pub use observe::TRACE_ID_HEADER;

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, MatchedPath, Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use clap::Args;
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use nws_watermark::access::Access;
use tokio::{
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tonic::Code;
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    compression::CompressionLayer,
    cors::{AllowOrigin, CorsLayer},
    timeout::{RequestBodyTimeoutLayer, TimeoutBody},
    trace::TraceLayer,
};

use tokio_util::sync::CancellationToken;

use crate::{
    config::parse_duration,
    policy::{CALLER, CallInfo, HttpRules, Policy, insert_rate_limit, record_caller},
    shutdown::Drain,
    tls::ServerTls,
};

/// Paths every HTTP server answers for probes: never shed, so an
/// overloaded process is not also restarted for it.
pub const PROBE_PATHS: [&str; 2] = ["/healthz", READINESS_PATH];

/// Where every HTTP server answers whether it should be sent traffic.
pub const READINESS_PATH: &str = "/readyz";

/// Settings of an HTTP server's protocol and limits; flags with `NWS_*`
/// environment fallbacks.
#[derive(Debug, Clone, Args)]
pub struct HttpConfig {
    /// Requests handled at once; past it, new ones get 503 with Retry-After
    /// straight away instead of queueing.
    #[arg(long, env = "NWS_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,

    /// Time a client has to send a request's headers (HTTP/1.1).
    #[arg(long, env = "NWS_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Longest pause allowed between two pieces of a request body; a client
    /// that stalls longer gets 408.
    #[arg(long, env = "NWS_BODY_READ_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
}

/// An HTTP server that is bound but not yet serving.
pub struct HttpServer {
    name: &'static str,
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<ServerTls>,
}

impl HttpServer {
    /// Binds `addr` (port 0 picks a free port); `name` labels the logs.
    pub async fn bind(name: &'static str, addr: SocketAddr) -> anyhow::Result<Self> {
        let (listener, local_addr) = crate::bind(name, addr).await?;
        Ok(Self {
            name,
            listener,
            local_addr,
            tls: None,
        })
    }

    /// Serves HTTPS only, with `tls` (when given): HTTP/2 when the client
    /// offers `h2` by ALPN, else HTTP/1.1.
    pub fn with_tls(mut self, tls: Option<ServerTls>) -> Self {
        self.tls = tls;
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `router` over HTTP/1.1 and HTTP/2 (h2c, or by ALPN over TLS)
    /// until `shutdown` completes; then `/readyz` answers 503 for the drain's delay while
    /// everything else is still served, the port closes, and in-flight
    /// requests get at most the drain's timeout.
    pub async fn run_until_stopped(
        self,
        router: Router,
        config: &HttpConfig,
        shutdown: impl Future<Output = ()> + Send,
        drain: Drain,
    ) -> anyhow::Result<()> {
        let Self {
            name,
            listener,
            local_addr,
            tls,
        } = self;
        tracing::info!(
            service = name,
            addr = %local_addr,
            tls = ServerTls::mode(tls.as_ref()),
            "listening"
        );
        let tls = tls.map(|tls| tls.acceptors(crate::tls::ALPN_HTTP));
        let header_read_timeout = config.header_read_timeout;
        let draining = CancellationToken::new();
        let router = router.layer(middleware::from_fn_with_state(
            draining.clone(),
            not_ready_while_draining,
        ));
        crate::shutdown::serve_with_drain(
            name,
            |stop| serve::serve(listener, tls, router, header_read_timeout, stop),
            shutdown,
            async move { draining.cancel() },
            drain,
        )
        .await
    }
}

/// Once the server is stopping, `/readyz` says so, whatever the service's
/// own readiness, so balancers stop sending before the port closes.
async fn not_ready_while_draining(
    State(draining): State<CancellationToken>,
    request: Request,
    next: Next,
) -> Response {
    if draining.is_cancelled() && request.uri().path() == READINESS_PATH {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "draining", "reason": "the server is shutting down" })),
        )
            .into_response();
    }
    next.run(request).await
}

/// The layers around every route of an HTTP server, outermost first:
/// 1. the trace span covers everything, so no request goes unlogged; it
///    continues the caller's `traceparent`, so everything below, refusals
///    included, belongs to the caller's trace;
/// 2. observation: request duration per route template and status, and the
///    response names its trace (`traceparent`, `x-trace-id`);
/// 3. a panic becomes a JSON 500 instead of a dropped connection;
/// 4. CORS for the origins NWS_CORS_ORIGINS lists: preflights are answered
///    here, before any token is asked for, and refusals below still carry
///    the headers a page needs to read them;
/// 5. load shedding answers 503 at once past the concurrency bound, before
///    any work (probes are never shed), tokens included: an overloaded
///    server spends nothing on signatures, and a shed request takes
///    nothing from its caller's rate limit;
/// 6. policy: the token (or signed link) the route's rule asks for, then
///    the caller's rate limit, which needs the identity the token gives;
///    refused requests cost nothing below, and the caller goes into the
///    request's extensions, the span and the task (to forward its token);
/// 7. a stalled request body fails after NWS_BODY_READ_TIMEOUT;
/// 8. JSON and text responses are compressed (gzip, br, zstd) when the
///    client asks; images never are, they are compressed already.
///
/// Unknown routes and methods get JSON errors too.
///
/// `service` names the server in spans and metrics; `rules` say what each
/// route needs.
pub fn layer_stack(
    router: Router,
    service: &'static str,
    config: &HttpConfig,
    policy: &Policy,
    rules: HttpRules,
) -> Router {
    let permits = Arc::new(Semaphore::new(config.max_concurrent_requests));
    let enforcing = Arc::new((policy.clone(), rules));
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(TraceLayer::new_for_http().make_span_with(observe::MakeRequestSpan { service }))
                .layer(middleware::from_fn_with_state(service, observe::observe))
                .layer(CatchPanicLayer::custom(panic_response))
                .option_layer(cors(policy.cors_origins()))
                .layer(middleware::from_fn_with_state(permits, shed_load))
                .layer(middleware::from_fn_with_state(enforcing, enforce_policy))
                .layer(RequestBodyTimeoutLayer::new(config.body_read_timeout))
                .map_request(|request: Request<TimeoutBody<Body>>| request.map(Body::new))
                .layer(CompressionLayer::new()),
        )
}

/// Web pages from `origins` may call the API, with credentials, and read
/// the headers that explain an answer; nothing when none are listed.
fn cors(origins: &[HeaderValue]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let exposed = [
        "server-timing",
        "x-cache",
        "x-trace-id",
        "traceparent",
        "ratelimit",
        "ratelimit-policy",
        "retry-after",
        "content-location",
        "link",
        "location",
        "x-image-width",
        "x-image-height",
        "x-original-sha256",
    ];
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.iter().cloned()))
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                header::IF_NONE_MATCH,
                HeaderName::from_static("traceparent"),
                HeaderName::from_static("tracestate"),
                HeaderName::from_static("prefer"),
            ])
            .expose_headers(exposed.map(HeaderName::from_static))
            .max_age(Duration::from_secs(600)),
    )
}

/// Lets a request through when the route's rule is met: a token with the
/// scope, or a signed link where the route takes them, then a token from
/// the caller's bucket.
async fn enforce_policy(
    State(enforcing): State<Arc<(Policy, HttpRules)>>,
    mut request: Request,
    next: Next,
) -> Response {
    let (policy, rules) = &*enforcing;
    let template = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let rule = rules.get(request.method(), template);
    if rule.access == Access::Open {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let info = CallInfo {
        headers: request.headers(),
        path: request.uri().path(),
        query: request.uri().query(),
        peer,
        signed_links: rule.signed_links,
    };
    let admitted = match policy.admit(rule.access, &info).await {
        Ok(admitted) => admitted,
        Err(refusal) => {
            let mut response = json_error(refusal.http_status(), refusal.code(), &refusal.message());
            response.headers_mut().extend(refusal.http_headers());
            return response;
        }
    };
    record_caller(&admitted);
    if let Some(caller) = &admitted.caller {
        request.extensions_mut().insert(caller.clone());
    }
    let mut response = CALLER.scope(admitted.caller, next.run(request)).await;
    if let Some(state) = admitted.rate_limit {
        insert_rate_limit(
            response.headers_mut(),
            state.class,
            state.rate,
            state.remaining,
            state.reset,
        );
    }
    response
}

/// Refuses a request when NWS_MAX_CONCURRENT_REQUESTS are already in
/// flight; a request counts until its response body is sent.
async fn shed_load(State(permits): State<Arc<Semaphore>>, request: Request, next: Next) -> Response {
    if PROBE_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let Ok(permit) = permits.try_acquire_owned() else {
        let mut response = json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::Unavailable,
            "the server is at its concurrent request limit (NWS_MAX_CONCURRENT_REQUESTS); retry shortly",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    // What a test (or an operator at debug level) can wait for: the
    // request holds a slot from here on.
    tracing::debug!("request admitted");
    next.run(request).await.map(|body| {
        Body::new(HoldsPermit {
            body,
            _permit: permit,
        })
    })
}

/// A response body that keeps its request's concurrency permit until it
/// is sent or dropped.
struct HoldsPermit {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for HoldsPermit {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!(panic = %crate::panic::message(&*panic), "handler panicked");
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        "internal error",
    )
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, Code::NotFound, "no such route")
}

async fn method_not_allowed() -> Response {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        Code::Unimplemented,
        "this route does not take that method",
    )
}

/// The HTTP status for a gRPC code, as grpc-gateway maps them.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status"),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The canonical name of a gRPC code, e.g. `INVALID_ARGUMENT`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A JSON error response: `{"code": "<gRPC code name>", "message": "..."}`.
pub fn json_error(status: StatusCode, code: Code, message: &str) -> Response {
    let body = serde_json::json!({ "code": code_name(code), "message": message });
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_like_grpc_gateway() {
        let expected = [
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 400),
            (Code::OutOfRange, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::Aborted, 409),
            (Code::ResourceExhausted, 429),
            (Code::Cancelled, 499),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Unknown, 500),
            (Code::Internal, 500),
            (Code::DataLoss, 500),
        ];
        for (code, status) in expected {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
        assert_eq!(code_name(Code::InvalidArgument), "INVALID_ARGUMENT");
    }
}
