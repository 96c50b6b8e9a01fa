//! Stored originals: `GET /image/{sha256}` and `GET /status/{sha256}`.

use axum::{
    Json,
    body::Body,
    extract::{Path, State},
    response::{IntoResponse, Response},
};
use http::header;
use nws_watermark::pb::{Namespace, ObjectInfo};
use serde_json::json;

use super::AppState;
use crate::error::ApiError;

/// Streams a stored original. The key is the content's hash, so the
/// response never changes: it is cacheable forever.
pub async fn original(
    State(state): State<AppState>,
    Path(sha256): Path<String>,
) -> Result<Response, ApiError> {
    let (info, bytes) = state.upstreams.open(Namespace::Originals, &sha256).await?;
    Ok((
        [
            (header::CONTENT_TYPE, info.media_type.clone()),
            (header::CONTENT_LENGTH, info.size.to_string()),
            (header::ETAG, format!("\"{}\"", info.sha256)),
            (
                header::CACHE_CONTROL,
                "public, max-age=31536000, immutable".to_owned(),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
        ],
        Body::from_stream(bytes),
    )
        .into_response())
}

/// Describes a stored original as JSON.
pub async fn status(State(state): State<AppState>, Path(sha256): Path<String>) -> Result<Response, ApiError> {
    let info = state.upstreams.stat(Namespace::Originals, &sha256).await?;
    Ok(Json(info_json(&info)).into_response())
}

fn info_json(info: &ObjectInfo) -> serde_json::Value {
    let created = info
        .created
        .and_then(|t| std::time::SystemTime::try_from(t).ok())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string());
    json!({
        "sha256": info.sha256,
        "size": info.size,
        "media_type": info.media_type,
        "created": created,
        "url": format!("/image/{}", info.sha256),
    })
}
