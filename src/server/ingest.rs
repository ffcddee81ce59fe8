//! `POST /api/v1/ingest`: bulk metric ingest of many runs and keys per
//! request, as columnar JSON, NDJSON (streamed) or an Arrow IPC stream,
//! chosen by `Content-Type`. A request is decoded and checked whole, then
//! written as one durable WAL record; the answer comes once it is durable.
//!
//! A request may carry an `Idempotency-Key` header (the IETF draft's):
//! sent again with the same key and body, it is answered as the first time
//! (with `Idempotent-Replayed: true`) and nothing is written, even after a
//! restart; while the first is still being written, 409; with another
//! body, 422. Keys are kept for a day (see [`crate::catalog::receipts`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, RequestExt};
use futures_util::StreamExt;
use serde_json::json;

use super::auth::Access;
use super::error::ApiError;
use super::extract::{body_error, body_stream_error};
use crate::bulk::ndjson::NdjsonDecoder;
use crate::bulk::{self, ARROW_STREAM, COLUMNAR_JSON, NDJSON, RunBatches};
use crate::catalog::receipts::{BodyFingerprint, IngestReceipt, KeyState, MAX_KEY_BYTES};
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

/// The request header naming a keyed request.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The answer header marking an answer given from a receipt.
const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The request's `Idempotency-Key`, if any: 1 to 255 visible ASCII
/// characters (quotes around it, as a structured-field string, are taken
/// off).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::invalid(format!(
            "the Idempotency-Key header must be 1 to {MAX_KEY_BYTES} visible ASCII characters \
             (a UUID is a good key)"
        ))
    };
    let text = value.to_str().map_err(|_| invalid())?.trim();
    let text = text
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(text);
    let visible = text.bytes().all(|byte| byte.is_ascii_graphic());
    if text.is_empty() || text.len() > MAX_KEY_BYTES || !visible {
        return Err(invalid());
    }
    Ok(Some(text.to_string()))
}

fn answer(accepted: u64, runs: u64, replayed: bool) -> Response {
    let mut response = Json(json!({ "accepted": accepted, "runs": runs })).into_response();
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

async fn ingest(
    State(engine): State<Arc<Engine>>,
    access: Access,
    request: Request,
) -> Result<Response, ApiError> {
    let now = now_millis();
    let key = idempotency_key(request.headers())?;
    let media_type = media_type(&request);
    let mut fingerprint = BodyFingerprint::default();
    let mut claim = None;
    let runs: RunBatches = match media_type.as_str() {
        NDJSON | "application/jsonl" | "application/json-seq" => {
            let mut decoder = NdjsonDecoder::new(now, MAX_POINTS_PER_REQUEST);
            // The body limit applies to streamed bodies too.
            let mut stream = request.into_limited_body().into_data_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(body_stream_error)?;
                if key.is_some() {
                    fingerprint.update(&chunk);
                }
                decoder.feed(&chunk)?;
            }
            decoder.finish()?
        }
        COLUMNAR_JSON | ARROW_STREAM => {
            let body = Bytes::from_request(request, &engine)
                .await
                .map_err(body_error)?;
            if let Some(key) = &key {
                // A repeat is answered before its body is decoded again.
                fingerprint = BodyFingerprint::of(&body);
                match claim_key(&engine, key, fingerprint)? {
                    Claimed::Replay(response) => return Ok(response),
                    Claimed::New(new) => claim = Some(new),
                }
            }
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
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
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
    let run_count = batches.len() as u64;
    let Some(key) = key else {
        let accepted = engine.log_metric_batches(batches).await?;
        return Ok(answer(accepted as u64, run_count, false));
    };
    let claim = match claim {
        Some(claim) => claim,
        // A streamed body: its fingerprint is known only now.
        None => match claim_key(&engine, &key, fingerprint)? {
            Claimed::Replay(response) => return Ok(response),
            Claimed::New(claim) => claim,
        },
    };
    let receipt = IngestReceipt {
        key,
        body_crc: fingerprint.crc,
        body_len: fingerprint.len,
        points: 0,
        runs: run_count,
        time: now,
    };
    let accepted = engine
        .log_keyed_metric_batches(batches, claim, receipt)
        .await?;
    Ok(answer(accepted as u64, run_count, false))
}

/// What a keyed request found.
enum Claimed {
    /// Accepted before: this answer repeats the first.
    Replay(Response),
    /// New: the key is the caller's until it writes.
    New(crate::catalog::receipts::KeyClaim),
}

fn claim_key(
    engine: &Engine,
    key: &str,
    fingerprint: BodyFingerprint,
) -> Result<Claimed, ApiError> {
    match engine.claim_ingest_key(key, fingerprint) {
        KeyState::New(claim) => Ok(Claimed::New(claim)),
        KeyState::Accepted(receipt) => {
            tracing::debug!(
                key,
                points = receipt.points,
                "keyed ingest request sent again; answered from its receipt"
            );
            Ok(Claimed::Replay(answer(receipt.points, receipt.runs, true)))
        }
        KeyState::InProgress => Err(ApiError::new(
            StatusCode::CONFLICT,
            "RESOURCE_CONFLICT",
            format!(
                "a request with Idempotency-Key '{key}' is still being written; retry shortly \
                 for its answer"
            ),
        )),
        KeyState::Mismatch(receipt) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_PARAMETER_VALUE",
            format!(
                "Idempotency-Key '{key}' was used for another request body ({} bytes, accepted \
                 at {} ms since the epoch); use a new key for each batch",
                receipt.body_len, receipt.time
            ),
        )),
    }
}
