//! `GET /v1/jobs/{id}`, `GET /v1/jobs/{id}/events` (Server-Sent Events),
//! and the dead-letter admin routes.

use std::{convert::Infallible, time::Duration};

use axum::{
    Json,
    extract::{Path, Query, State},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures_util::Stream;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use nws_jobs::Record;
use nws_runtime::policy::UrlSigner;
use nws_watermark::pb::PutResponse;
use nws_watermark::render::ResultKey;
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use crate::{
    error::ApiError,
    jobs::{Lookup, view},
    timing::ServerTiming,
};

/// How often an open event stream looks at the stored status, in case an
/// announcement was missed (Redis restarted, another gateway's change).
const POLL: Duration = Duration::from_secs(2);

fn job_id(id: &str) -> Result<ResultKey, ApiError> {
    ResultKey::parse(id)
        .ok_or_else(|| ApiError::BadRequest(format!("{id:?} is not a job id (64 lowercase hex characters)")))
}

fn unknown(id: ResultKey) -> ApiError {
    ApiError::NotFound(format!("no job with id {id}"))
}

/// The job's status as JSON.
pub async fn status(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    match state.jobs.lookup(id, &state.upstreams).await? {
        Lookup::Found(record) => Ok(Json(view(&record, state.policy.signer())).into_response()),
        Lookup::Unknown => Err(unknown(id)),
        Lookup::NotYetKnown => Err(ApiError::NotFound(format!(
            "job {id} has no result yet, and no status is available (NWS_REDIS_URL unset or not answering); its event stream follows it"
        ))),
    }
}

/// The job's changes as Server-Sent Events, from the one after
/// `Last-Event-ID`, ending with `done` or `failed`; comments keep idle
/// connections open.
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = job_id(&id)?;
    let last_seen: u64 = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    // Subscribed before the first look, so no change falls between them.
    let announced = state.jobs.subscribe();
    let first = match state.jobs.lookup(id, &state.upstreams).await? {
        Lookup::Found(record) => Some(*record),
        Lookup::Unknown => return Err(unknown(id)),
        Lookup::NotYetKnown => None,
    };
    let heartbeat = state.jobs.heartbeat;
    let (events, receiver) = tokio::sync::mpsc::channel(16);
    tokio::spawn(follow(state, id, first, last_seen, announced, events));
    let mut receiver = receiver;
    let stream = futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx));
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat")))
}

/// Sends job `id`'s changes after `last_seen` to `events`, until a final
/// one, the client leaving, or the gateway stopping.
async fn follow(
    state: AppState,
    id: ResultKey,
    first: Option<Record>,
    last_seen: u64,
    mut announced: Option<tokio::sync::broadcast::Receiver<std::sync::Arc<Record>>>,
    events: tokio::sync::mpsc::Sender<Result<Event, Infallible>>,
) {
    let key = id.to_string();
    let signer = state.policy.signer().cloned();
    let mut sent = last_seen;
    // `Some(true)` once a final state went out; `None` once the client left.
    let mut send = async |record: &Record| {
        // Records made from Storage alone (done, Redis knew nothing) have
        // no sequence number: always sent.
        if record.seq != 0 && record.seq <= sent {
            // Seen already; if it was the last, the stream is over.
            return Some(record.state.is_final());
        }
        sent = sent.max(record.seq);
        let mut event = Event::default()
            .json_data(view(record, signer.as_ref()))
            .expect("JSON serialises");
        if record.seq != 0 {
            event = event.id(record.seq.to_string());
        }
        events.send(Ok(event)).await.ok()?;
        Some(record.state.is_final())
    };
    // Missed changes first (a resumed stream), then the current state.
    let mut backlog = state.jobs.changes_after(&key, last_seen).await;
    backlog.extend(first);
    for record in &backlog {
        if send(record).await != Some(false) {
            return;
        }
    }
    let mut poll = tokio::time::interval(POLL);
    poll.tick().await;
    loop {
        let changed = tokio::select! {
            () = state.jobs.stopping.cancelled() => return,
            () = events.closed() => return,
            _ = poll.tick() => match state.jobs.lookup(id, &state.upstreams).await {
                Ok(Lookup::Found(record)) => Some(*record),
                _ => None,
            },
            change = recv(&mut announced) => change.filter(|record| record.id == key).map(|record| (*record).clone()),
        };
        if let Some(record) = changed
            && send(&record).await != Some(false)
        {
            return;
        }
    }
}

/// The next announced change; pends forever without announcements.
async fn recv(
    announced: &mut Option<tokio::sync::broadcast::Receiver<std::sync::Arc<Record>>>,
) -> Option<std::sync::Arc<Record>> {
    loop {
        match announced {
            None => std::future::pending::<()>().await,
            Some(receiver) => match receiver.recv().await {
                Ok(record) => return Some(record),
                // Fell behind: the poll catches up.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return None,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => *announced = None,
            },
        }
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
}

/// `GET /v1/admin/dead-jobs`: the dead-lettered jobs, oldest first, with
/// why each failed; they stay in their queue.
pub async fn dead(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let broker = state.jobs.broker()?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let jobs = broker.dead_letters(limit).await?;
    Ok(Json(json!({ "queue": broker.topology().dead, "jobs": jobs })).into_response())
}

#[derive(Deserialize)]
pub struct ReplayQuery {
    id: Option<String>,
}

/// `POST /v1/admin/dead-jobs/replay[?id=]`: dead-lettered jobs (all, or
/// one) go back to the work queue with fresh attempts.
pub async fn replay(
    State(state): State<AppState>,
    Query(query): Query<ReplayQuery>,
) -> Result<Response, ApiError> {
    let only = query.id.as_deref().map(job_id).transpose()?;
    let broker = state.jobs.broker()?;
    let replayed = broker.replay(only).await?;
    state.jobs.requeued(&replayed).await;
    if let (Some(id), true) = (only, replayed.is_empty()) {
        return Err(ApiError::NotFound(format!("no dead-lettered job with id {id}")));
    }
    let ids: Vec<String> = replayed.iter().map(ToString::to_string).collect();
    tracing::info!(count = ids.len(), "dead-lettered jobs replayed");
    Ok((StatusCode::OK, Json(json!({ "replayed": ids }))).into_response())
}

/// `202 Accepted` for an upload kept as a job: where to follow it, and
/// the original it will be made from.
pub fn accepted(
    record: &Record,
    original: &PutResponse,
    signer: Option<&UrlSigner>,
    timing: &ServerTiming,
    preference_applied: bool,
) -> Response {
    let mut body = view(record, signer);
    let original_url = format!("/image/{}", original.sha256);
    body["original"] = json!({
        "sha256": original.sha256,
        "deduplicated": original.deduplicated,
        "url": signer.map_or_else(|| original_url.clone(), |signer| signer.sign(&original_url)),
    });
    let mut headers = HeaderMap::new();
    if let Some(location) = body["location"]
        .as_str()
        .and_then(|l| HeaderValue::try_from(l).ok())
    {
        headers.insert(header::LOCATION, location);
    }
    if preference_applied {
        headers.insert("preference-applied", HeaderValue::from_static("respond-async"));
    }
    headers.insert("server-timing", timing.header_value());
    if let Ok(sha256) = HeaderValue::try_from(original.sha256.as_str()) {
        headers.insert("x-original-sha256", sha256);
    }
    (StatusCode::ACCEPTED, headers, Json(body)).into_response()
}

/// Whether the request asks to be answered before the work is done
/// (`Prefer: respond-async`, RFC 7240).
pub fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|preference| {
            preference
                .split(';')
                .next()
                .is_some_and(|token| token.trim().eq_ignore_ascii_case("respond-async"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respond_async_is_read_as_rfc_7240_writes_it() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("prefer", HeaderValue::from_static(value));
            prefers_async(&headers)
        };
        assert!(with("respond-async"));
        assert!(with("Respond-Async, wait=10"));
        assert!(with("handling=lenient, respond-async; x=1"));
        assert!(!with("return=minimal"));
        assert!(!with("respond-asynchronously"));
        assert!(!prefers_async(&HeaderMap::new()));
    }
}
