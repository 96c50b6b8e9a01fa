//! Errors as HTTP clients see them: a status and `{"code", "message"}`,
//! with gRPC codes mapped to HTTP the way grpc-gateway does.

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use http::StatusCode;
use tonic::Code;

/// Which upstream a gRPC error came from, for messages and logs.
#[derive(Debug, Clone, Copy)]
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
    #[error("{upstream}: {}", status.message())]
    Upstream {
        upstream: Upstream,
        status: tonic::Status,
    },

    #[error("{0}")]
    BadRequest(String),

    #[error("unsupported media: the upload is not a JPEG, PNG, WebP or GIF image")]
    UnsupportedMedia,

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
        move |status| Self::Upstream { upstream, status }
    }

    fn code_and_status(&self) -> (Code, StatusCode) {
        match self {
            ApiError::Upstream { status, .. } => (status.code(), http_status(status.code())),
            ApiError::BadRequest(_) => (Code::InvalidArgument, StatusCode::BAD_REQUEST),
            ApiError::UnsupportedMedia => (Code::InvalidArgument, StatusCode::UNSUPPORTED_MEDIA_TYPE),
            ApiError::PayloadTooLarge { .. } => (Code::InvalidArgument, StatusCode::PAYLOAD_TOO_LARGE),
            ApiError::Protocol { .. } => (Code::Internal, StatusCode::BAD_GATEWAY),
            ApiError::NotFound(_) => (Code::NotFound, StatusCode::NOT_FOUND),
            ApiError::BodyTimeout(_) => (Code::DeadlineExceeded, StatusCode::REQUEST_TIMEOUT),
        }
    }
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

/// A JSON error response.
pub fn json_error(status: StatusCode, code: Code, message: &str) -> Response {
    let body = serde_json::json!({ "code": code_name(code), "message": message });
    (status, Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status) = self.code_and_status();
        if status.is_server_error() {
            tracing::error!(error = %self, code = code_name(code), "request failed");
        } else {
            tracing::info!(error = %self, code = code_name(code), "request refused");
        }
        json_error(status, code, &self.to_string())
    }
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
