//! Errors as HTTP clients see them: a status and `{"code", "message"}`,
//! with gRPC codes mapped to HTTP the way grpc-gateway does.
//!
//! What an upstream says stays upstream: its status message and transport
//! errors go to the log with their whole cause chain, and the client gets
//! the gateway's own words for the code, or the text the upstream marked
//! as meant for end users (`google.rpc.LocalizedMessage`), such as which
//! image limit was passed.
//!
//! An optimizer that cannot take the work now (its waiting line is full:
//! RESOURCE_EXHAUSTED; or its circuit breaker is open) answers 503 with
//! `Retry-After`, as does every 503: 429 is only ever a client over its own
//! rate limit, which the policy layer answers.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use nws_runtime::{
    grpc::status::user_message,
    http::{code_name, http_status, json_error},
};
use nws_watermark::{media, stream::StreamError};
use tonic::Code;
use tonic_types::StatusExt as _;

/// `Retry-After` of a 503 that carries no better hint.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Which upstream a gRPC error came from, for messages and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    Optimizer,
    Storage,
}

impl Upstream {
    /// The upstream that serves a gRPC service, by its full name.
    pub fn serving(service: &str) -> Option<Self> {
        match service {
            "watermark.v1.Optimizer" => Some(Upstream::Optimizer),
            "watermark.v1.Storage" => Some(Upstream::Storage),
            _ => None,
        }
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Upstream::Optimizer => "optimizer",
            Upstream::Storage => "storage",
        })
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// An upstream failed the call, or the call never reached it.
    #[error("{upstream}: {status}")]
    Upstream {
        upstream: Upstream,
        status: tonic::Status,
    },

    #[error("{0}")]
    BadRequest(String),

    #[error(
        "unsupported media: {}; send {}",
        .detected.map_or_else(|| "the upload is not an image".to_owned(), |f| format!("{f} images are not accepted as input")),
        media::INPUT_FORMATS_TEXT
    )]
    UnsupportedMedia { detected: Option<&'static str> },

    #[error("request body exceeds the {limit}-byte limit (NWS_MAX_UPLOAD_BYTES)")]
    PayloadTooLarge { limit: u64 },

    #[error("{upstream} broke the protocol: {what}")]
    Protocol { upstream: Upstream, what: &'static str },

    #[error("{0}")]
    NotFound(String),

    #[error("the request body stalled for longer than {0:?} (NWS_BODY_READ_TIMEOUT)")]
    BodyTimeout(Duration),

    /// Not called: the upstream's circuit breaker is open (or every trial
    /// call of a half-open one is under way).
    #[error("{upstream} not called: its circuit breaker is open (NWS_BREAKER_*); retry in {retry_after:?}")]
    BreakerOpen {
        upstream: Upstream,
        retry_after: Duration,
    },

    /// Not called: the upstream's last refusal (RESOURCE_EXHAUSTED with
    /// `google.rpc.RetryInfo`) asked to wait until later.
    #[error("{upstream} not called: it refused work as busy, asking to wait; retry in {retry_after:?}")]
    Busy {
        upstream: Upstream,
        retry_after: Duration,
    },

    /// Job routes on a gateway without a queue.
    #[error("there is no job queue here (NWS_AMQP_URL is not set)")]
    NoQueue,

    /// The broker did not persist a job: never answered 202.
    #[error("{0}")]
    QueueUnavailable(String),
}

impl ApiError {
    pub fn from_status(upstream: Upstream) -> impl FnOnce(tonic::Status) -> Self {
        move |status| Self::Upstream {
            upstream,
            status: deadline_as_such(status),
        }
    }

    pub fn from_stream(upstream: Upstream) -> impl FnOnce(StreamError) -> Self {
        move |error| match error {
            StreamError::Status(status) => Self::from_status(upstream)(status),
            StreamError::Protocol(what) => Self::Protocol { upstream, what },
        }
    }

    /// The gRPC code of an upstream's refusal, if that is what this is.
    pub fn upstream_code(&self, from: Upstream) -> Option<Code> {
        match self {
            ApiError::Upstream { upstream, status } if *upstream == from => Some(status.code()),
            _ => None,
        }
    }

    /// Whether an upstream's refusal names a field of the request
    /// (`google.rpc.BadRequest`): an option was at fault, not the image.
    pub fn names_a_field(&self) -> bool {
        match self {
            ApiError::Upstream { status, .. } => status
                .get_details_bad_request()
                .is_some_and(|bad| !bad.field_violations.is_empty()),
            _ => false,
        }
    }

    /// Whether this says the optimizer cannot serve now, though the request
    /// itself is fine: the same work may succeed later (queued, retried).
    /// True for an open breaker, a busy optimizer (RESOURCE_EXHAUSTED, or
    /// its last refusal's wait not over), and an outage: UNAVAILABLE,
    /// DEADLINE_EXCEEDED, UNKNOWN, a broken connection.
    pub fn optimizer_cannot_serve(&self) -> bool {
        match self {
            ApiError::BreakerOpen { upstream, .. } | ApiError::Busy { upstream, .. } => {
                *upstream == Upstream::Optimizer
            }
            ApiError::Upstream {
                upstream: Upstream::Optimizer,
                status,
            } => status.code() == Code::ResourceExhausted || is_outage(status),
            _ => false,
        }
    }

    /// Whether `from` failed in a way that says it cannot serve at all
    /// (UNAVAILABLE, DEADLINE_EXCEEDED, UNKNOWN, a transport error): what
    /// counts against its circuit breaker. A refusal of the request
    /// (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED,
    /// FAILED_PRECONDITION) or of the load (RESOURCE_EXHAUSTED) is an
    /// answer: the upstream is there.
    pub fn is_outage_of(&self, from: Upstream) -> bool {
        matches!(self, ApiError::Upstream { upstream, status } if *upstream == from && is_outage(status))
    }

    /// Whether `from`'s connection failed rather than the call: refused,
    /// reset, cut mid-call, or the server going away (UNAVAILABLE). Another
    /// replica of `from` may serve the same call.
    pub fn is_connection_failure_of(&self, from: Upstream) -> bool {
        matches!(self, ApiError::Upstream { upstream, status }
            if *upstream == from && (status.code() == Code::Unavailable || is_transport_error(status)))
    }

    /// How long to wait before trying again, when something says: the
    /// upstream's `google.rpc.RetryInfo`, the rest of the breaker's
    /// cool-down, or of the wait the optimizer's last refusal asked for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::BreakerOpen { retry_after, .. } | ApiError::Busy { retry_after, .. } => {
                Some(*retry_after)
            }
            ApiError::Upstream { status, .. } => {
                status.get_details_retry_info().and_then(|info| info.retry_delay)
            }
            _ => None,
        }
    }

    fn code_and_status(&self) -> (Code, StatusCode) {
        match self {
            ApiError::Upstream {
                upstream: Upstream::Optimizer,
                status,
            } if status.code() == Code::ResourceExhausted => {
                (Code::ResourceExhausted, StatusCode::SERVICE_UNAVAILABLE)
            }
            ApiError::Upstream { status, .. } => (status.code(), http_status(status.code())),
            ApiError::BadRequest(_) => (Code::InvalidArgument, StatusCode::BAD_REQUEST),
            ApiError::UnsupportedMedia { .. } => (Code::InvalidArgument, StatusCode::UNSUPPORTED_MEDIA_TYPE),
            ApiError::PayloadTooLarge { .. } => (Code::InvalidArgument, StatusCode::PAYLOAD_TOO_LARGE),
            ApiError::Protocol { .. } => (Code::Internal, StatusCode::BAD_GATEWAY),
            ApiError::NotFound(_) => (Code::NotFound, StatusCode::NOT_FOUND),
            ApiError::BodyTimeout(_) => (Code::DeadlineExceeded, StatusCode::REQUEST_TIMEOUT),
            ApiError::BreakerOpen { .. } => (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
            ApiError::Busy { .. } => (Code::ResourceExhausted, StatusCode::SERVICE_UNAVAILABLE),
            ApiError::NoQueue => (Code::NotFound, StatusCode::NOT_FOUND),
            ApiError::QueueUnavailable(_) => (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
        }
    }

    /// The gateway's own refusals to call the optimizer, and its own
    /// refusal of work, are expected under load: logged as refusals, not
    /// failures (each opening of the breaker is logged once, with why).
    fn is_refusal(&self) -> bool {
        match self {
            ApiError::BreakerOpen { .. } | ApiError::Busy { .. } => true,
            ApiError::Upstream { status, .. } if status.code() == Code::ResourceExhausted => true,
            _ => !self.code_and_status().1.is_server_error(),
        }
    }

    /// The `Retry-After` of the response: every 503 has one.
    fn retry_after_header(&self, status: StatusCode) -> Option<Duration> {
        self.retry_after()
            .or((status == StatusCode::SERVICE_UNAVAILABLE).then_some(DEFAULT_RETRY_AFTER))
    }

    /// What the HTTP client reads.
    fn client_message(&self) -> String {
        match self {
            ApiError::Upstream { upstream, status } => {
                user_message(status).unwrap_or_else(|| stable_message(*upstream, status.code()))
            }
            ApiError::Protocol { upstream, .. } => format!("the {upstream} service answered incorrectly"),
            ApiError::BreakerOpen {
                upstream,
                retry_after,
            } => format!(
                "the {upstream} service is unavailable: its recent calls failed, so it is not called \
                 for now; retry in {} s",
                whole_seconds(*retry_after)
            ),
            ApiError::Busy {
                upstream,
                retry_after,
            } => format!(
                "the {upstream} service is busy; retry in {} s",
                whole_seconds(*retry_after)
            ),
            other => other.to_string(),
        }
    }
}

/// A tonic server whose `grpc-timeout` deadline passes answers CANCELLED
/// ("Timeout expired"), where the gRPC spec says DEADLINE_EXCEEDED. The
/// gateway never reads the status of a call it cancelled itself (dropping
/// a call leaves no status to read), so an upstream's CANCELLED always
/// means the deadline the gateway sent ran out: it is reported as such
/// (504, naming NWS_UPSTREAM_TIMEOUT), not as a client that went away.
fn deadline_as_such(status: tonic::Status) -> tonic::Status {
    if status.code() != Code::Cancelled {
        return status;
    }
    tonic::Status::with_details_and_metadata(
        Code::DeadlineExceeded,
        status.message(),
        status.details().to_vec().into(),
        status.metadata().clone(),
    )
}

/// An upstream status that says it cannot serve at all, rather than
/// refusing this request or this load.
fn is_outage(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown => true,
        Code::InvalidArgument
        | Code::NotFound
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition
        | Code::ResourceExhausted => false,
        _ => is_transport_error(status),
    }
}

/// A status the client made from an error of its own (a connection reset,
/// an HTTP/2 stream broken off), not one the upstream sent: only those
/// carry a source (an answer read off the wire has none).
fn is_transport_error(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// A wait in whole seconds, rounded up, at least 1: `Retry-After`'s unit.
fn whole_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// The gateway's own words for an upstream's status code.
fn stable_message(upstream: Upstream, code: Code) -> String {
    match code {
        Code::Unavailable => format!("the {upstream} service is unavailable; retry shortly"),
        Code::DeadlineExceeded => {
            format!("the {upstream} service did not answer in time (NWS_UPSTREAM_TIMEOUT)")
        }
        Code::ResourceExhausted => format!("the {upstream} service is busy; retry shortly"),
        Code::Cancelled => "the request was cancelled".to_owned(),
        Code::NotFound => "not found".to_owned(),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            format!("the {upstream} service refused the request")
        }
        Code::AlreadyExists | Code::Aborted => {
            format!("the {upstream} service could not complete the request; retry it")
        }
        Code::Unauthenticated => "authentication is required".to_owned(),
        Code::PermissionDenied => "this is not allowed".to_owned(),
        Code::Unimplemented => format!("the {upstream} service does not offer this"),
        Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => {
            format!("the {upstream} service failed")
        }
    }
}

/// An error and all its causes, for the log.
fn cause_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status) = self.code_and_status();
        let message = self.client_message();
        let detail = cause_chain(&self);
        if self.is_refusal() {
            tracing::info!(error = %detail, code = code_name(code), "request refused");
        } else {
            tracing::error!(error = %detail, code = code_name(code), "request failed");
        }
        let mut response = json_error(status, code, &message);
        if let Some(wait) = self.retry_after_header(status) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(whole_seconds(wait)));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use nws_runtime::grpc::status::for_user;
    use tonic_types::ErrorDetails;

    use super::*;

    #[test]
    fn upstream_text_stays_upstream_unless_meant_for_users() {
        let internal = ApiError::Upstream {
            upstream: Upstream::Storage,
            status: tonic::Status::unavailable("open /var/lib/nws/originals/ab: Input/output error"),
        };
        assert_eq!(
            internal.client_message(),
            "the storage service is unavailable; retry shortly"
        );
        assert!(
            cause_chain(&internal).contains("/var/lib/nws"),
            "the log keeps it"
        );

        let refusal = ApiError::Upstream {
            upstream: Upstream::Optimizer,
            status: for_user(Code::InvalidArgument, "the image is 9×9, over the limit"),
        };
        assert_eq!(refusal.client_message(), "the image is 9×9, over the limit");
        assert_eq!(refusal.code_and_status().1, StatusCode::BAD_REQUEST);

        // tonic's words for a server-side grpc-timeout expiry.
        let expired = ApiError::from_status(Upstream::Optimizer)(tonic::Status::cancelled("Timeout expired"));
        assert_eq!(
            expired.client_message(),
            "the optimizer service did not answer in time (NWS_UPSTREAM_TIMEOUT)"
        );
        assert_eq!(
            expired.code_and_status(),
            (Code::DeadlineExceeded, StatusCode::GATEWAY_TIMEOUT)
        );

        let broken = ApiError::from_stream(Upstream::Optimizer)(StreamError::Protocol("short"));
        assert_eq!(
            broken.client_message(),
            "the optimizer service answered incorrectly"
        );
    }

    fn optimizer(status: tonic::Status) -> ApiError {
        ApiError::from_status(Upstream::Optimizer)(status)
    }

    /// The optimizer's refusal of the load, as it sends it.
    fn busy(wait: Option<Duration>) -> tonic::Status {
        let mut details = ErrorDetails::with_localized_message(
            "en-US",
            "the optimizer is busy: 12 images in progress or waiting; retry later",
        );
        if let Some(wait) = wait {
            details.set_retry_info(Some(wait));
        }
        tonic::Status::with_error_details(Code::ResourceExhausted, "queue full", details)
    }

    /// Status, `Retry-After`, and the JSON body of the response.
    async fn respond(error: ApiError) -> (u16, Option<String>, serde_json::Value) {
        let response = error.into_response();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, retry_after, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn overload_and_an_open_breaker_answer_503_with_retry_after() {
        let (status, retry_after, body) = respond(optimizer(busy(Some(Duration::from_millis(2200))))).await;
        assert_eq!((status, retry_after.as_deref()), (503, Some("3")));
        assert_eq!(body["code"], "RESOURCE_EXHAUSTED");
        assert_eq!(
            body["message"],
            "the optimizer is busy: 12 images in progress or waiting; retry later"
        );

        let (status, retry_after, _) = respond(optimizer(busy(None))).await;
        assert_eq!((status, retry_after.as_deref()), (503, Some("1")));

        let open = ApiError::BreakerOpen {
            upstream: Upstream::Optimizer,
            retry_after: Duration::from_millis(4001),
        };
        let (status, retry_after, body) = respond(open).await;
        assert_eq!((status, retry_after.as_deref()), (503, Some("5")));
        assert_eq!(body["code"], "UNAVAILABLE");
        assert_eq!(
            body["message"],
            "the optimizer service is unavailable: its recent calls failed, so it is not called for now; \
             retry in 5 s"
        );
        // Half-open with every trial slot taken, or the very end of a cool-down.
        let almost = ApiError::BreakerOpen {
            upstream: Upstream::Optimizer,
            retry_after: Duration::from_millis(1),
        };
        assert_eq!(respond(almost).await.1.as_deref(), Some("1"));
        let zero = ApiError::BreakerOpen {
            upstream: Upstream::Optimizer,
            retry_after: Duration::ZERO,
        };
        assert_eq!(respond(zero).await.1.as_deref(), Some("1"), "at least 1");

        let held_off = ApiError::Busy {
            upstream: Upstream::Optimizer,
            retry_after: Duration::from_secs(7),
        };
        let (status, retry_after, body) = respond(held_off).await;
        assert_eq!((status, retry_after.as_deref()), (503, Some("7")));
        assert_eq!(body["code"], "RESOURCE_EXHAUSTED");
        assert_eq!(body["message"], "the optimizer service is busy; retry in 7 s");

        // UNAVAILABLE keeps its words, and gets a Retry-After too.
        let (status, retry_after, body) = respond(optimizer(tonic::Status::unavailable("refused"))).await;
        assert_eq!((status, retry_after.as_deref()), (503, Some("1")));
        assert_eq!(body["code"], "UNAVAILABLE");
        assert_eq!(
            body["message"],
            "the optimizer service is unavailable; retry shortly"
        );
        let unavailable_with_hint = tonic::Status::with_error_details(
            Code::Unavailable,
            "draining",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(2))),
        );
        assert_eq!(
            respond(optimizer(unavailable_with_hint)).await.1.as_deref(),
            Some("2")
        );
    }

    #[tokio::test]
    async fn other_answers_keep_their_status_and_get_no_retry_after() {
        // Storage's RESOURCE_EXHAUSTED is its limit on this caller: 429.
        let storage = ApiError::from_status(Upstream::Storage)(tonic::Status::resource_exhausted("limit"));
        assert_eq!(respond(storage).await.0, 429);
        for (error, status) in [
            (optimizer(tonic::Status::cancelled("Timeout expired")), 504),
            (optimizer(tonic::Status::invalid_argument("bad")), 400),
            (optimizer(tonic::Status::unknown("bug")), 500),
            (ApiError::BadRequest("bad".to_owned()), 400),
        ] {
            let (got, retry_after, _) = respond(error).await;
            assert_eq!((got, retry_after), (status, None));
        }
    }

    /// An error of the client's own transport whose cause is a status, as
    /// a broken HTTP/2 stream is.
    #[derive(Debug)]
    struct Broken(tonic::Status);

    impl std::fmt::Display for Broken {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("connection broken")
        }
    }

    impl std::error::Error for Broken {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn what_says_the_optimizer_cannot_serve() {
        let cases = [
            (tonic::Status::unavailable("refused"), true, true),
            (tonic::Status::cancelled("Timeout expired"), true, true),
            (tonic::Status::deadline_exceeded("late"), true, true),
            (tonic::Status::unknown("panicked"), true, true),
            (busy(Some(Duration::from_secs(1))), true, false),
            (tonic::Status::invalid_argument("not an image"), false, false),
            (tonic::Status::not_found("no original"), false, false),
            (tonic::Status::permission_denied("scope"), false, false),
            (tonic::Status::unauthenticated("token"), false, false),
            (tonic::Status::failed_precondition("no storage"), false, false),
            // An optimizer's own INTERNAL is about one image...
            (tonic::Status::internal("could not process"), false, false),
            // ...a stream the transport broke off is an outage.
            (
                tonic::Status::from_error(Box::new(Broken(tonic::Status::internal("h2 reset")))),
                true,
                true,
            ),
            (
                tonic::Status::from_error(Box::new(std::io::Error::other("connection reset"))),
                true,
                true,
            ),
        ];
        for (status, cannot_serve, outage) in cases {
            let what = format!("{status:?}");
            let error = optimizer(status);
            assert_eq!(error.optimizer_cannot_serve(), cannot_serve, "{what}");
            assert_eq!(error.is_outage_of(Upstream::Optimizer), outage, "{what}");
            assert!(!error.is_outage_of(Upstream::Storage), "{what}");
        }
        let storage_down = ApiError::from_status(Upstream::Storage)(tonic::Status::unavailable("down"));
        assert!(!storage_down.optimizer_cannot_serve());
        assert!(storage_down.is_outage_of(Upstream::Storage));
        for error in [
            ApiError::BreakerOpen {
                upstream: Upstream::Optimizer,
                retry_after: Duration::from_secs(1),
            },
            ApiError::Busy {
                upstream: Upstream::Optimizer,
                retry_after: Duration::from_secs(1),
            },
        ] {
            assert!(error.optimizer_cannot_serve(), "{error}");
            assert_eq!(error.retry_after(), Some(Duration::from_secs(1)));
            assert_eq!(error.upstream_code(Upstream::Optimizer), None);
        }
        assert!(!ApiError::BadRequest("bad".to_owned()).optimizer_cannot_serve());
        assert!(
            !ApiError::Protocol {
                upstream: Upstream::Optimizer,
                what: "short"
            }
            .optimizer_cannot_serve()
        );
        assert_eq!(
            optimizer(busy(Some(Duration::from_millis(1500)))).retry_after(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(optimizer(busy(None)).retry_after(), None);
    }
}
