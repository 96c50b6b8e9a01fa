//! One observer for every gRPC call, on both sides: a span named and
//! attributed as OpenTelemetry's RPC conventions say, continuing (server)
//! or carrying (client) the caller's W3C trace context, and a duration
//! histogram per method and status code.
//!
//! A call's status is known only at its end: in the response headers when
//! it fails at once (trailers-only), else in the trailers after the last
//! message. [`Observed`] bodies watch for it; a body dropped before its end
//! is a cancelled call.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::HeaderMap;
use http_body::Frame;
use tonic::{Code, Status};
use tracing::{Instrument as _, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{
    http::code_name,
    telemetry::propagation::{continue_trace, inject_headers},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Server,
    Client,
}

impl Side {
    /// The span kind OpenTelemetry gives this side of a call.
    fn kind(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
        }
    }
}

/// A call being watched; finished once, with its status.
struct Call {
    side: Side,
    span: Span,
    started: Instant,
    /// The service of this process the call belongs to.
    service: &'static str,
    rpc_service: String,
    rpc_method: String,
}

/// `/package.Service/Method` → (`package.Service`, `Method`).
fn split_path(path: &str) -> (&str, &str) {
    path.trim_start_matches('/').split_once('/').unwrap_or(("", ""))
}

impl Call {
    fn start(side: Side, service: &'static str, request: &http::Request<impl Sized>) -> Self {
        let (rpc_service, rpc_method) = split_path(request.uri().path());
        let name = format!("{rpc_service}/{rpc_method}");
        let span = if rpc_service == crate::grpc::HEALTH_SERVICE {
            // Probes every few seconds would bury the traces worth reading.
            Span::none()
        } else {
            tracing::info_span!(
                "grpc",
                otel.name = name,
                otel.kind = side.kind(),
                otel.status_code = Empty,
                otel.status_description = Empty,
                rpc.system = "grpc",
                rpc.service = rpc_service,
                rpc.method = rpc_method,
                rpc.grpc.status_code = Empty,
                server.address = Empty,
                server.port = Empty,
                nws.service = service,
            )
        };
        if side == Side::Client {
            // Where the call goes: the peer, as the client sees it.
            span.record("server.address", request.uri().host().unwrap_or_default());
            span.record("server.port", request.uri().port_u16().unwrap_or_default());
        }
        Self {
            side,
            span,
            started: Instant::now(),
            service,
            rpc_service: rpc_service.to_owned(),
            rpc_method: rpc_method.to_owned(),
        }
    }

    /// Ends the call with the status the peer sent (or the one its end
    /// implies).
    fn finish(self, status: Status) {
        let code = status.code();
        let elapsed = self.started.elapsed();
        self.span.record("rpc.grpc.status_code", code as i64);
        let failed = match self.side {
            // The server's own failures; refusing a bad request is the
            // service working (the conventions say the same).
            Side::Server => is_server_error(code),
            // A client that stops reading once it has what it needs (the
            // gateway after a result's last byte: the optimizer's write to
            // Storage finishes on its own) ends the call CANCELLED by choice.
            Side::Client => !matches!(code, Code::Ok | Code::Cancelled),
        };
        if failed {
            self.span.record("otel.status_code", "ERROR");
            self.span.record(
                "otel.status_description",
                format!("{}: {}", code_name(code), status.message()),
            );
        }
        // A method nobody serves is not a label value: callers choose it.
        let (rpc_service, rpc_method) = if code == Code::Unimplemented {
            ("unknown".to_owned(), "unknown".to_owned())
        } else {
            (self.rpc_service, self.rpc_method)
        };
        let labels = [
            ("service", self.service.to_owned()),
            ("rpc_service", rpc_service),
            ("rpc_method", rpc_method),
            ("code", code_name(code).to_owned()),
        ];
        match self.side {
            Side::Server => {
                if failed {
                    self.span.in_scope(|| {
                        tracing::warn!(
                            code = code_name(code),
                            latency_ms = elapsed.as_millis() as u64,
                            "call failed"
                        );
                    });
                }
                metrics::histogram!("rpc_server_call_duration_seconds", &labels).record(elapsed);
            }
            Side::Client => metrics::histogram!("rpc_client_call_duration_seconds", &labels).record(elapsed),
        }
    }
}

/// Codes that mean the server failed, not the request.
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::Internal
            | Code::DataLoss
            | Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unimplemented
    )
}

/// The status in response headers (a call that failed at once) or
/// trailers, message decoded.
fn status_in(headers: &HeaderMap) -> Option<Status> {
    Status::from_header_map(headers)
}

/// A status whose end the peer did not say: a code and why.
fn ended(code: Code, why: &'static str) -> Status {
    Status::new(code, why)
}

pin_project_lite::pin_project! {
    /// A response body that finishes its call's observation at its end.
    pub struct Observed<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }

    impl<B> PinnedDrop for Observed<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(call) = this.project().call.take() {
                call.finish(ended(Code::Cancelled, "the response was dropped before its end"));
            }
        }
    }
}

impl<B> http_body::Body for Observed<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(call) = this.call.take()
                {
                    call.finish(
                        status_in(trailers)
                            .unwrap_or_else(|| ended(Code::Unknown, "trailers without grpc-status")),
                    );
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = this.call.take() {
                    call.finish(ended(Code::Unavailable, "the response stream broke"));
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = this.call.take() {
                    call.finish(ended(Code::Unknown, "the response ended without a status"));
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps a response: finished at once when its headers carry the status.
fn observe<B>(call: Call, response: http::Response<B>) -> http::Response<Observed<B>> {
    let call = match status_in(response.headers()) {
        Some(status) => {
            call.finish(status);
            None
        }
        None => Some(call),
    };
    response.map(|inner| Observed { inner, call })
}

/// The server side: a tower layer for `tonic::transport::Server::layer`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerLayer {
    pub(crate) service: &'static str,
}

impl<S> tower::Layer<S> for ServerLayer {
    type Service = ObservedService<S>;

    fn layer(&self, inner: S) -> ObservedService<S> {
        ObservedService {
            inner,
            side: Side::Server,
            service: self.service,
        }
    }
}

/// A gRPC service (server side) or channel (client side) whose calls are
/// observed.
#[derive(Debug, Clone)]
pub struct ObservedService<S> {
    inner: S,
    side: Side,
    service: &'static str,
}

impl<S> ObservedService<S> {
    /// Calls made through `inner` on behalf of `service` (a span per call,
    /// its context sent along).
    pub(crate) fn client(inner: S, service: &'static str) -> Self {
        Self {
            inner,
            side: Side::Client,
            service,
        }
    }

    /// The service calls go through.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for ObservedService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: 'static,
{
    type Response = http::Response<Observed<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let call = Call::start(self.side, self.service, &request);
        match self.side {
            Side::Server => continue_trace(&call.span, request.headers()),
            Side::Client => {
                inject_headers(&call.span.context(), request.headers_mut());
                crate::policy::authorize_upstream(request.headers_mut());
            }
        }
        let span = call.span.clone();
        let response = self.inner.call(request).instrument(span);
        Box::pin(async move {
            match response.await {
                Ok(response) => Ok(observe(call, response)),
                Err(error) => {
                    call.finish(ended(Code::Unavailable, "the call failed before a response"));
                    Err(error)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/watermark.v1.Optimizer/Render"),
            ("watermark.v1.Optimizer", "Render")
        );
        assert_eq!(split_path("/nonsense"), ("", ""));
    }

    #[test]
    fn statuses_are_read_from_headers_or_trailers() {
        let mut headers = HeaderMap::new();
        assert!(status_in(&headers).is_none());
        headers.insert("grpc-status", "5".parse().unwrap());
        headers.insert("grpc-message", "no%20such%20object".parse().unwrap());
        let status = status_in(&headers).unwrap();
        assert_eq!(
            (status.code(), status.message()),
            (Code::NotFound, "no such object")
        );
        assert!(is_server_error(Code::Internal));
        assert!(!is_server_error(Code::InvalidArgument));
    }
}
