//! Errors as HTTP clients see them: a status and `{"code", "message"}`,
//! with gRPC codes mapped to HTTP the way grpc-gateway does.
//!
//! What an upstream says stays upstream: its status message and transport
//! errors go to the log with their whole cause chain, and the client gets
//! the gateway's own words for the code, or the text the upstream marked
//! as meant for end users (`google.rpc.LocalizedMessage`), such as which
//! image limit was passed.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use nws_runtime::{
    grpc::status::user_message,
    http::{code_name, http_status, json_error},
};
use nws_watermark::{media, stream::StreamError};
use tonic::Code;

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
    BodyTimeout(std::time::Duration),
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

    fn code_and_status(&self) -> (Code, StatusCode) {
        match self {
            ApiError::Upstream { status, .. } => (status.code(), http_status(status.code())),
            ApiError::BadRequest(_) => (Code::InvalidArgument, StatusCode::BAD_REQUEST),
            ApiError::UnsupportedMedia { .. } => (Code::InvalidArgument, StatusCode::UNSUPPORTED_MEDIA_TYPE),
            ApiError::PayloadTooLarge { .. } => (Code::InvalidArgument, StatusCode::PAYLOAD_TOO_LARGE),
            ApiError::Protocol { .. } => (Code::Internal, StatusCode::BAD_GATEWAY),
            ApiError::NotFound(_) => (Code::NotFound, StatusCode::NOT_FOUND),
            ApiError::BodyTimeout(_) => (Code::DeadlineExceeded, StatusCode::REQUEST_TIMEOUT),
        }
    }

    /// What the HTTP client reads.
    fn client_message(&self) -> String {
        match self {
            ApiError::Upstream { upstream, status } => {
                user_message(status).unwrap_or_else(|| stable_message(*upstream, status.code()))
            }
            ApiError::Protocol { upstream, .. } => format!("the {upstream} service answered incorrectly"),
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
        if status.is_server_error() {
            tracing::error!(error = %detail, code = code_name(code), "request failed");
        } else {
            tracing::info!(error = %detail, code = code_name(code), "request refused");
        }
        json_error(status, code, &message)
    }
}

#[cfg(test)]
mod tests {
    use nws_runtime::grpc::status::for_user;

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
}
