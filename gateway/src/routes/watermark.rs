//! `POST /v1/watermark` (and the Go original's `POST /upload`): an image in,
//! a watermarked image out.
//!
//! Two request shapes: `multipart/form-data` with the file in field `image`
//! and the options as fields (in any order) or query parameters, or the raw
//! image as the body with the options as query parameters. The options are
//! [`nws_watermark::params::PARAMS`]; any other name is refused, naming the
//! known ones.
//!
//! A form may carry a mark image too, in the part `wm_image`: it is stored
//! like an original and drawn as `wm_image_sha256` names it.
//!
//! The original is stored first (Storage keys it by its SHA-256), then the
//! result is found or rendered through the results seam.

use std::time::Instant;

use axum::{
    body::Body,
    extract::{FromRequest, Multipart, RawQuery, Request, State, multipart::MultipartError},
    response::{IntoResponse, Response},
};
use futures_util::TryStreamExt;
use http::{HeaderMap, header};
use http_body_util::{LengthLimitError, Limited};
use nws_watermark::{
    options::Options,
    params,
    pb::{OptimizeOptions, PutResponse},
};

use super::{
    AppState,
    images::{Negotiated, image_response},
    jobs,
};
use crate::{error::ApiError, mark_image, query, results::Plan, timing::ServerTiming, upload};

const IMAGE_FIELD: &str = "image";
/// Longest option value read from a form; `wm_text` is at most 200 characters.
const MAX_OPTION_BYTES: usize = 4096;

pub async fn upload(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let mut timing = ServerTiming::start();
    let limit = state.max_upload_bytes;
    let version = request.version();
    if declared_length(request.headers()).is_some_and(|length| length > limit) {
        return Ok(unread_body(ApiError::PayloadTooLarge { limit }, version));
    }
    let respond_async = jobs::prefers_async(request.headers()) && state.jobs.can_queue();
    if !state.jobs.can_queue()
        && let Err(refusal) = state.upstreams.optimizer_admits()
    {
        // Neither the optimizer nor a queue would take it: refuse before
        // reading (and storing) the body, so refusals cost nothing. A
        // repeat upload whose result is cached is refused too, for the few
        // seconds the optimizer asked; GET /v1/images/{key} still serves it.
        return Ok(unread_body(refusal, version));
    }
    let (parts, body) = request.into_parts();
    let body = Body::new(Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)));
    let request = Request::from_parts(parts, body);

    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    // Options in the query apply to both shapes; a form's fields come after
    // them and win.
    let default_mark = state.default_mark.as_ref().map(mark_image::DefaultMark::sha256);
    let mut options = FormOptions::for_request(request.headers(), default_mark);
    for (name, value) in query::pairs(query.as_deref())? {
        options.set(&name, &value)?;
    }
    let reading = Instant::now();
    let (original, options) = if is_form {
        from_form(&state, request, limit, options).await?
    } else {
        // Bad options are refused before a byte of the body is read.
        let options = options.validate()?;
        let stall = state.body_read_timeout;
        let bytes = TryStreamExt::map_err(request.into_body().into_data_stream(), move |e| {
            body_error(&e, limit, stall)
        });
        let original = upload::store_original(&state.upstreams, Box::pin(bytes)).await?;
        (original, options)
    };
    timing.since("upload", "gateway: read and store the original", reading);
    if let Some(mark) = &state.default_mark
        && options.image_sha256.as_deref() == Some(mark.sha256())
    {
        mark.ensure_stored(&state.upstreams).await?;
    }

    let negotiated = if options.format_follows_accept() {
        Negotiated::Yes
    } else {
        Negotiated::No
    };
    let plan = Plan::new(&original.sha256, options, state.auto_avif);
    let signer = state.policy.signer();
    if respond_async {
        let record = state.jobs.submit(&plan.now).await?;
        return Ok(jobs::accepted(&record, &original, signer, &timing, true));
    }
    let job = plan.now.clone();
    let found = match state.results.answer(plan, &mut timing).await {
        Ok(found) => found,
        Err(error) if error.optimizer_cannot_serve() && state.jobs.is_configured() => {
            // The original is stored: keep the work as a job, answered 202
            // only once the broker confirmed it.
            return match state.jobs.submit(&job).await {
                Ok(record) => Ok(jobs::accepted(&record, &original, signer, &timing, false)),
                Err(queue_error) => {
                    tracing::warn!(%queue_error, %error, "the optimizer cannot serve and the job queue cannot keep the upload");
                    Err(error)
                }
            };
        }
        Err(error) => {
            if is_unreadable_image(&error) {
                state.upstreams.forget_original(&original).await;
            }
            return Err(error);
        }
    };
    if let Some(stages) = found.header.as_ref().and_then(|h| h.timings.as_ref()) {
        timing.add_stages(stages);
    }
    Ok(image_response(
        &found,
        &timing,
        negotiated,
        Some(&original),
        signer,
    ))
}

/// A refusal sent before the body was read. Over HTTP/1.1 the connection
/// cannot carry another request after an unread body, so the response says
/// `Connection: close`: a client must not reuse it (and race its closing).
fn unread_body(refusal: ApiError, version: http::Version) -> Response {
    let mut response = refusal.into_response();
    if version <= http::Version::HTTP_11 {
        response
            .headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    response
}

/// Whether the optimizer refused the image itself: the original it was
/// asked to render is no image it can read, so it is not worth keeping. A
/// refusal that names a field (a mark image that cannot be drawn) is about
/// the options, not the original.
fn is_unreadable_image(error: &ApiError) -> bool {
    error.upstream_code(crate::error::Upstream::Optimizer) == Some(tonic::Code::InvalidArgument)
        && !error.names_a_field()
}

/// Reads a form whose fields may come in any order: the image streams into
/// Storage as it arrives; options before it are checked before it is
/// stored, options after it once the form ends.
async fn from_form(
    state: &AppState,
    request: Request,
    limit: u64,
    mut options: FormOptions,
) -> Result<(PutResponse, Options), ApiError> {
    let stall = state.body_read_timeout;
    let form_error = move |e: MultipartError| multipart_error(e, limit, stall);
    let mut form = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::BadRequest(format!("not a multipart form: {}", e.body_text())))?;
    let mut original = None;
    let read = read_form(state, &mut form, &mut original, &mut options, form_error).await;
    let options = read.and_then(|()| options.validate());
    match (original, options) {
        (Some(original), Ok(options)) => Ok((original, options)),
        (None, Ok(_)) => Err(ApiError::BadRequest("the form has no `image` field".to_owned())),
        (stored, Err(error)) => {
            // Refused after the image was stored: keep nothing of it.
            if let Some(original) = stored {
                state.upstreams.forget_original(&original).await;
            }
            Err(error)
        }
    }
}

async fn read_form(
    state: &AppState,
    form: &mut Multipart,
    original: &mut Option<PutResponse>,
    options: &mut FormOptions,
    form_error: impl Fn(MultipartError) -> ApiError + Copy + Send + 'static,
) -> Result<(), ApiError> {
    while let Some(mut field) = form.next_field().await.map_err(form_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == mark_image::FIELD {
            if options.names_a_mark_image() {
                return Err(ApiError::BadRequest(format!(
                    "the form has more than one mark image: give one `{}` part or `wm_image_sha256`",
                    mark_image::FIELD
                )));
            }
            let bytes = field.map_err(form_error);
            options.wire.image_sha256 = mark_image::store(&state.upstreams, Box::pin(bytes)).await?;
        } else if name == IMAGE_FIELD {
            if original.is_some() {
                return Err(ApiError::BadRequest(
                    "the form has more than one `image` field".to_owned(),
                ));
            }
            options.validate()?;
            let bytes = field.map_err(form_error);
            *original = Some(upload::store_original(&state.upstreams, Box::pin(bytes)).await?);
        } else {
            // An unknown name is refused before its value is read.
            params::find(&name).map_err(|bad| {
                ApiError::BadRequest(format!("{}; the image goes in the field `{IMAGE_FIELD}`", bad.0))
            })?;
            let mut value = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(form_error)? {
                value.extend_from_slice(&chunk);
                if value.len() > MAX_OPTION_BYTES {
                    return Err(ApiError::BadRequest(format!(
                        "form field `{name}` is over {MAX_OPTION_BYTES} bytes"
                    )));
                }
            }
            let value = String::from_utf8(value)
                .map_err(|_| ApiError::BadRequest(format!("form field `{name}` is not UTF-8 text")))?;
            options.set(&name, &value)?;
        }
    }
    Ok(())
}

/// The options an upload carries, as parsed from text, with the request's
/// Accept values for `format=auto`. The rules on values are [`Options`]',
/// shared with the optimizer.
#[derive(Debug, Clone, Default, PartialEq)]
struct FormOptions {
    wire: OptimizeOptions,
    /// The server's mark image (NWS_WATERMARK_IMAGE), for an upload that
    /// names none.
    default_mark: Option<String>,
}

impl FormOptions {
    /// The defaults for a request: `format=auto`, so its Accept decides,
    /// and the server's mark image, if it has one.
    fn for_request(headers: &HeaderMap, default_mark: Option<&str>) -> Self {
        let accept = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .map(str::to_owned)
            .collect();
        Self {
            wire: OptimizeOptions {
                accept,
                ..OptimizeOptions::default()
            },
            default_mark: default_mark.map(str::to_owned),
        }
    }

    fn validate(&self) -> Result<Options, ApiError> {
        let mut wire = self.wire.clone();
        if wire.image_sha256.is_empty() {
            wire.image_sha256 = self.default_mark.clone().unwrap_or_default();
        } else if wire.image_sha256 == mark_image::NONE {
            wire.image_sha256.clear();
        }
        Options::try_from(wire).map_err(|bad| ApiError::BadRequest(bad.0))
    }

    /// Whether the upload named its own mark image (or opted out of one).
    fn names_a_mark_image(&self) -> bool {
        !self.wire.image_sha256.is_empty()
    }

    fn set(&mut self, name: &str, value: &str) -> Result<(), ApiError> {
        params::find(name)
            .and_then(|param| param.apply(&mut self.wire, value))
            .map_err(|bad| ApiError::BadRequest(bad.0))
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn body_error(error: &axum::Error, limit: u64, stall: std::time::Duration) -> ApiError {
    match read_failure(error) {
        Some(ReadFailure::TooLarge) => ApiError::PayloadTooLarge { limit },
        Some(ReadFailure::Stalled) => ApiError::BodyTimeout(stall),
        None => ApiError::BadRequest(format!("the upload broke off: {error}")),
    }
}

fn multipart_error(error: MultipartError, limit: u64, stall: std::time::Duration) -> ApiError {
    match read_failure(&error) {
        Some(ReadFailure::Stalled) => ApiError::BodyTimeout(stall),
        _ if error.status() == http::StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge { limit },
        _ => ApiError::BadRequest(format!("malformed multipart form: {}", error.body_text())),
    }
}

enum ReadFailure {
    TooLarge,
    Stalled,
}

/// Why reading the body failed, when a limit did it: found in the error's
/// cause chain, where the body's layers put it.
fn read_failure(error: &(dyn std::error::Error + 'static)) -> Option<ReadFailure> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<LengthLimitError>() {
            return Some(ReadFailure::TooLarge);
        }
        if e.is::<tower_http::timeout::TimeoutError>() {
            return Some(ReadFailure::Stalled);
        }
        cause = e.source();
    }
    None
}
