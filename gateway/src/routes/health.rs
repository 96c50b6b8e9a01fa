use axum::{Json, extract::State, response::IntoResponse};
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::AppState;

/// Liveness: the process answers.
pub async fn live() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Readiness: both upstreams answer their gRPC health checks. Redis only
/// makes results faster (and rate limits global), so without it the
/// gateway is `degraded` but still ready (200): taking it out of rotation
/// would lose more than the cache, and each replica then applies the rate
/// limits alone.
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let checks = state.upstreams.readiness().await;
    let ready = checks.iter().all(|(_, result)| result.is_ok());
    let upstreams: Map<String, Value> = checks
        .into_iter()
        .map(|(upstream, result)| (upstream.to_string(), status_json(result)))
        .collect();
    let redis = state.results.redis().map(|redis| redis.status());
    let shared_limits = state.policy.shared_limiter_status();
    let degraded =
        redis.as_ref().is_some_and(Result::is_err) || shared_limits.as_ref().is_some_and(Result::is_err);
    let rate_limits = match shared_limits {
        Some(Ok(())) => json!({ "status": "SERVING", "scope": "global (Redis)" }),
        Some(Err(reason)) => {
            json!({ "status": "UNAVAILABLE", "scope": "this replica only", "reason": reason })
        }
        None => {
            json!({ "status": "DISABLED", "scope": "this replica only", "reason": "NWS_RATE_LIMIT_REDIS is not set" })
        }
    };
    let cache = match redis {
        Some(result) => json!({ "redis": status_json(result) }),
        None => json!({ "redis": { "status": "DISABLED", "reason": "NWS_REDIS_URL is not set" } }),
    };
    let (status, word) = match (ready, degraded) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "not ready"),
        (true, true) => (StatusCode::OK, "degraded"),
        (true, false) => (StatusCode::OK, "ready"),
    };
    (
        status,
        Json(json!({ "status": word, "upstreams": upstreams, "cache": cache, "rate_limits": rate_limits })),
    )
}

/// A dependency's state; the reason is a stable phrase, the details are in
/// the log.
fn status_json(result: Result<(), impl std::fmt::Display>) -> Value {
    match result {
        Ok(()) => json!({ "status": "SERVING" }),
        Err(reason) => json!({ "status": "UNAVAILABLE", "reason": reason.to_string() }),
    }
}
