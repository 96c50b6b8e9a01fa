use axum::{Json, extract::State, response::IntoResponse};
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::AppState;

/// Liveness: the process answers.
pub async fn live() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Readiness: both upstreams answer their gRPC health checks.
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let checks = state.upstreams.readiness().await;
    let ready = checks.iter().all(|(_, result)| result.is_ok());
    let upstreams: Map<String, Value> = checks
        .into_iter()
        .map(|(upstream, result)| {
            let value = match result {
                Ok(()) => json!({ "status": "SERVING" }),
                Err(reason) => json!({ "status": "UNAVAILABLE", "reason": reason }),
            };
            (upstream.to_string(), value)
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "status": if ready { "ready" } else { "not ready" }, "upstreams": upstreams });
    (status, Json(body))
}
