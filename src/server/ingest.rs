//! `POST /api/v1/ingest`: bulk metric ingest of many runs and keys per
//! request, as columnar JSON, NDJSON (streamed) or an Arrow IPC stream,
//! chosen by `Content-Type`. A request is decoded and checked whole, then
//! written as one durable WAL record; the answer comes once it is durable.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::header;
use axum::{Json, RequestExt};
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::auth::Access;
use super::error::ApiError;
use super::extract::{body_error, body_stream_error};
use crate::bulk::ndjson::NdjsonDecoder;
use crate::bulk::{self, ARROW_STREAM, COLUMNAR_JSON, NDJSON, RunBatches};
use crate::engine::Engine;
use crate::model::now_millis;

/// Most points one bulk request may carry.
pub const MAX_POINTS_PER_REQUEST: usize = 4_000_000;

/// The `/api/v1/ingest` route.
pub fn routes() -> axum::Router<Arc<Engine>> {
    axum::Router::new().route("/api/v1/ingest", axum::routing::post(ingest))
}

fn media_type(request: &Request) -> String {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

async fn ingest(
    State(engine): State<Arc<Engine>>,
    access: Access,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let now = now_millis();
    let media_type = media_type(&request);
    let runs: RunBatches = match media_type.as_str() {
        NDJSON | "application/jsonl" | "application/json-seq" => {
            let mut decoder = NdjsonDecoder::new(now, MAX_POINTS_PER_REQUEST);
            // The body limit applies to streamed bodies too.
            let mut stream = request.into_limited_body().into_data_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(body_stream_error)?;
                decoder.feed(&chunk)?;
            }
            decoder.finish()?
        }
        COLUMNAR_JSON | ARROW_STREAM => {
            let body = Bytes::from_request(request, &engine)
                .await
                .map_err(body_error)?;
            let arrow = media_type == ARROW_STREAM;
            // Decoding a large body is CPU work: keep it off the I/O threads.
            tokio::task::spawn_blocking(move || {
                if arrow {
                    bulk::arrow_ipc::decode(body, now, MAX_POINTS_PER_REQUEST)
                } else {
                    bulk::columnar::decode(&body, now, MAX_POINTS_PER_REQUEST)
                }
            })
            .await
            .map_err(|error| ApiError::malformed(format!("decoding failed: {error}")))??
        }
        other => {
            return Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "INVALID_PARAMETER_VALUE",
                format!(
                    "unsupported Content-Type '{other}': use {COLUMNAR_JSON} (columnar JSON), \
                     {NDJSON} (one point per line) or {ARROW_STREAM} (Arrow IPC stream)"
                ),
            ));
        }
    };
    let batches = runs.finish();
    // Every run is checked before anything is written: a request is
    // accepted whole or not at all.
    for (run_id, _) in &batches {
        engine.check_run_access(&access, *run_id)?;
    }
    let run_count = batches.len();
    let accepted = engine.log_metric_batches(batches).await?;
    Ok(Json(json!({ "accepted": accepted, "runs": run_count })))
}
