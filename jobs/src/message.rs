//! A job as a message: the Optimizer's own `RenderRequest` (protobuf) as
//! the body, so a client in any language can queue one, and what the queue
//! needs to know in the headers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable},
};
use nws_watermark::{
    options::Options,
    pb::{RenderPriority, RenderRequest},
    render::{RenderJob, ResultKey, is_sha256_hex},
};
use prost::Message as _;

use crate::topology::{header_number, header_text};

pub const CONTENT_TYPE: &str = "application/x-protobuf";
pub const MESSAGE_TYPE: &str = "watermark.v1.RenderRequest";

/// Attempts already made (0 when first published).
const ATTEMPTS: &str = "x-nws-attempts";
/// When the job was first queued, in milliseconds since the epoch.
const QUEUED_AT: &str = "x-nws-queued-at";
/// The last attempt's failure: a gRPC code name and the reason.
const ERROR_CODE: &str = "x-nws-error-code";
const ERROR: &str = "x-nws-error";
/// The trace context of the request that queued the job.
const TRACE_HEADERS: [&str; 3] = ["traceparent", "tracestate", "baggage"];

/// A job taken from a queue.
#[derive(Debug, Clone)]
pub struct Queued {
    pub job: RenderJob,
    /// The job's id as published: the result key the publisher computed.
    /// Equal to `job.key()` unless publisher and consumer run different
    /// pipeline versions.
    pub id: ResultKey,
    pub attempts: u32,
    pub queued_at: Option<SystemTime>,
    pub last_error: Option<Failure>,
    /// `traceparent` and friends, to continue the publisher's trace.
    pub trace: HeaderMap,
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The gRPC code name (`INVALID_ARGUMENT`, `UNAVAILABLE`…).
    pub code: String,
    pub reason: String,
    /// It will fail again however often it is tried (not an image, over a
    /// limit): dead-letter it now.
    pub permanent: bool,
}

/// The body and properties of `job`'s message: persistent, named by the
/// job's id, with its attempts so far and the failure that sent it back.
pub fn encode(
    job: &RenderJob,
    id: ResultKey,
    attempts: u32,
    queued_at: SystemTime,
    last_error: Option<&Failure>,
    trace: &HeaderMap,
) -> (Vec<u8>, BasicProperties) {
    let body = job.request(true, RenderPriority::Queued).encode_to_vec();
    let mut headers = FieldTable::default();
    headers.insert(ATTEMPTS.into(), AMQPValue::LongLongInt(i64::from(attempts)));
    let millis = queued_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    headers.insert(
        QUEUED_AT.into(),
        AMQPValue::LongLongInt(i64::try_from(millis).unwrap_or(i64::MAX)),
    );
    for name in TRACE_HEADERS {
        if let Some(value) = trace.get(name).and_then(|v| v.to_str().ok()) {
            headers.insert(name.into(), AMQPValue::LongString(value.into()));
        }
    }
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(CONTENT_TYPE.into())
        .with_type(MESSAGE_TYPE.into())
        .with_message_id(id.to_string().into())
        .with_timestamp(queued_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs())
        .with_headers(headers);
    let properties = match last_error {
        Some(failure) => with_failure(properties, failure),
        None => properties,
    };
    (body, properties)
}

/// `properties` with `failure` in the headers, where the dead-letter queue
/// and the next attempt read it.
pub fn with_failure(properties: BasicProperties, failure: &Failure) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        ERROR_CODE.into(),
        AMQPValue::LongString(failure.code.as_str().into()),
    );
    headers.insert(
        ERROR.into(),
        AMQPValue::LongString(failure.reason.as_str().into()),
    );
    properties.with_headers(headers)
}

/// Reads a delivered message; `Err` names what makes it no job (it goes
/// to the dead-letter queue, never back to the work queue).
pub fn decode(body: &[u8], properties: &BasicProperties) -> Result<Queued, String> {
    let request = RenderRequest::decode(body).map_err(|e| format!("the body is no {MESSAGE_TYPE} ({e})"))?;
    if !is_sha256_hex(&request.original_sha256) {
        return Err(format!(
            "original_sha256 {:?} is not a SHA-256 (64 lowercase hex characters)",
            request.original_sha256
        ));
    }
    let options = Options::try_from(request.options.unwrap_or_default())
        .map_err(|bad| format!("bad options: {}", bad.0))?;
    let job = RenderJob::new(request.original_sha256, options);
    let id = match properties.message_id() {
        Some(id) => ResultKey::parse(id.as_str())
            .ok_or_else(|| format!("message_id {:?} is not a result key", id.as_str()))?,
        None => job.key(),
    };
    let empty = FieldTable::default();
    let headers = properties.headers().as_ref().unwrap_or(&empty);
    let attempts = header_number(headers, ATTEMPTS)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0);
    let queued_at = header_number(headers, QUEUED_AT)
        .and_then(|millis| u64::try_from(millis).ok())
        .map(|millis| UNIX_EPOCH + Duration::from_millis(millis));
    let last_error = header_text(headers, ERROR).map(|reason| Failure {
        code: header_text(headers, ERROR_CODE).unwrap_or_else(|| "UNKNOWN".to_owned()),
        reason,
        permanent: false,
    });
    let mut trace = HeaderMap::new();
    for name in TRACE_HEADERS {
        if let Some(value) = header_text(headers, name).and_then(|v| HeaderValue::try_from(v).ok()) {
            trace.insert(HeaderName::from_static(name), value);
        }
    }
    Ok(Queued {
        job,
        id,
        attempts,
        queued_at,
        last_error,
        trace,
    })
}

#[cfg(test)]
mod tests {
    use nws_watermark::pb::OptimizeOptions;

    use super::*;

    const ORIGINAL: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn a_job_survives_the_trip_through_a_message() {
        let options = Options::try_from(OptimizeOptions {
            quality: 70,
            watermark_text: "© NWS".to_owned(),
            ..OptimizeOptions::default()
        })
        .unwrap();
        let job = RenderJob::new(ORIGINAL.to_owned(), options);
        let mut trace = HeaderMap::new();
        trace.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        let failure = Failure {
            code: "UNAVAILABLE".to_owned(),
            reason: "storage is down".to_owned(),
            permanent: false,
        };
        let queued_at = UNIX_EPOCH + Duration::from_millis(1_790_000_000_123);
        let (body, properties) = encode(&job, job.key(), 2, queued_at, Some(&failure), &trace);
        assert_eq!(properties.delivery_mode(), &Some(2), "persistent");
        let queued = decode(&body, &properties).unwrap();
        assert_eq!(queued.job, job);
        assert_eq!(queued.id, job.key());
        assert_eq!(queued.attempts, 2);
        assert_eq!(queued.queued_at, Some(queued_at));
        assert_eq!(queued.last_error, Some(failure));
        assert_eq!(queued.trace, trace);
    }

    #[test]
    fn what_is_no_job_says_why() {
        let properties = BasicProperties::default();
        assert!(
            decode(b"\xff\xff", &properties)
                .unwrap_err()
                .contains("RenderRequest")
        );
        let bad_hash = RenderRequest {
            original_sha256: "abc".to_owned(),
            ..RenderRequest::default()
        }
        .encode_to_vec();
        assert!(decode(&bad_hash, &properties).unwrap_err().contains("SHA-256"));
        let bad_options = RenderRequest {
            original_sha256: ORIGINAL.to_owned(),
            options: Some(OptimizeOptions {
                quality: 101,
                ..OptimizeOptions::default()
            }),
            ..RenderRequest::default()
        }
        .encode_to_vec();
        assert!(
            decode(&bad_options, &properties)
                .unwrap_err()
                .contains("bad options")
        );
    }
}
