use axum::{Json, extract::State, response::IntoResponse};
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::AppState;
use crate::{breaker, error::Upstream};

/// Liveness: the process answers.
pub async fn live() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Readiness: both upstreams answer their gRPC health checks. Redis only
/// makes results faster (and rate limits global), so without it the
/// gateway is `degraded` but still ready (200): taking it out of rotation
/// would lose more than the cache, and each replica then applies the rate
/// limits alone. The optimizer's circuit breaker is shown, and decides
/// nothing here: every replica sees the same optimizer.
///
/// The body is one section per concern, each saying what it does to the
/// whole ([`Effect`]); a new concern is one more [`Section`].
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let sections = [
        upstreams(&state).await,
        cache(&state),
        rate_limits(&state),
        jobs(&state).await,
    ];
    let (status, word) = match sections.iter().map(|s| s.effect).max().unwrap_or(Effect::None) {
        Effect::Unready => (StatusCode::SERVICE_UNAVAILABLE, "not ready"),
        Effect::Degrades => (StatusCode::OK, "degraded"),
        Effect::None => (StatusCode::OK, "ready"),
    };
    let mut body = Map::new();
    body.insert("status".to_owned(), json!(word));
    for section in sections {
        body.insert(section.name.to_owned(), section.body);
    }
    (status, Json(Value::Object(body)))
}

/// What a section's state does to the gateway's readiness, mildest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Effect {
    None,
    /// Still ready (200), but `degraded`.
    Degrades,
    /// Not ready (503).
    Unready,
}

/// One key of the readiness body.
struct Section {
    name: &'static str,
    body: Value,
    effect: Effect,
}

/// Each upstream's health check; the optimizer's entry also carries its
/// circuit breaker.
async fn upstreams(state: &AppState) -> Section {
    let checks = state.upstreams.readiness().await;
    // Without the optimizer, uploads still succeed (202) while the job
    // queue takes them: degraded, not unready. Without Storage nothing does.
    let queue_covers = state.jobs.can_queue();
    let effect = checks
        .iter()
        .map(|(upstream, result)| match (upstream, result) {
            (_, Ok(())) => Effect::None,
            (Upstream::Optimizer, Err(_)) if queue_covers => Effect::Degrades,
            (_, Err(_)) => Effect::Unready,
        })
        .max()
        .unwrap_or(Effect::None);
    let body: Map<String, Value> = checks
        .into_iter()
        .map(|(upstream, result)| {
            let mut entry = status_json(result);
            if upstream == Upstream::Optimizer {
                entry["breaker"] = breaker_json(state.upstreams.optimizer_breaker());
            }
            (upstream.to_string(), entry)
        })
        .collect();
    Section {
        name: "upstreams",
        body: Value::Object(body),
        effect,
    }
}

/// The job queue (the fallback when the optimizer cannot serve) and the
/// job status store. A queue that is configured but unreachable degrades
/// the gateway: uploads the optimizer cannot serve get 503 meanwhile.
async fn jobs(state: &AppState) -> Section {
    let body = state.jobs.readiness().await;
    let unavailable = |section: &str| body[section]["status"] == "UNAVAILABLE";
    Section {
        name: "jobs",
        effect: if unavailable("fallback") || unavailable("status") {
            Effect::Degrades
        } else {
            Effect::None
        },
        body,
    }
}

fn cache(state: &AppState) -> Section {
    let redis = state.results.redis().map(|redis| redis.status());
    let effect = match &redis {
        Some(Err(_)) => Effect::Degrades,
        _ => Effect::None,
    };
    let body = match redis {
        Some(result) => json!({ "redis": status_json(result) }),
        None => json!({ "redis": { "status": "DISABLED", "reason": "NWS_REDIS_URL is not set" } }),
    };
    Section {
        name: "cache",
        body,
        effect,
    }
}

fn rate_limits(state: &AppState) -> Section {
    let (body, effect) = match state.policy.shared_limiter_status() {
        Some(Ok(())) => (
            json!({ "status": "SERVING", "scope": "global (Redis)" }),
            Effect::None,
        ),
        Some(Err(reason)) => (
            json!({ "status": "UNAVAILABLE", "scope": "this replica only", "reason": reason }),
            Effect::Degrades,
        ),
        None => (
            json!({ "status": "DISABLED", "scope": "this replica only", "reason": "NWS_RATE_LIMIT_REDIS is not set" }),
            Effect::None,
        ),
    };
    Section {
        name: "rate_limits",
        body,
        effect,
    }
}

/// A dependency's state; the reason is a stable phrase, the details are in
/// the log.
fn status_json(result: Result<(), impl std::fmt::Display>) -> Value {
    match result {
        Ok(()) => json!({ "status": "SERVING" }),
        Err(reason) => json!({ "status": "UNAVAILABLE", "reason": reason.to_string() }),
    }
}

/// `{"state": "open", "retry_in_s": 3}`: while open, the whole seconds
/// (rounded up) until trial calls go through.
fn breaker_json(status: breaker::Status) -> Value {
    match status.retry_in {
        Some(wait) => json!({
            "state": status.state.name(),
            "retry_in_s": wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        }),
        None => json!({ "state": status.state.name() }),
    }
}
