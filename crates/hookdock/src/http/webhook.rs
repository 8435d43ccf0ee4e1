//! `POST /api/v1/webhooks/github`: reads the raw body (bounded), hands it to ingest, answers.

use axum::Json;
use axum::body::Body;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::AppState;
use super::error::ApiError;
use crate::ingest::{
    DeliveryHeaders, IngestError, MAX_BODY_BYTES, Receipt, SourceRefusal, header as gh,
};

pub async fn receive(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Receipt>, ApiError> {
    if state.source.enabled() {
        let forwarded = state
            .source
            .forwarded_header()
            .and_then(|name| headers.get(name))
            .and_then(|v| v.to_str().ok());
        if let Err(refusal) = state.source.admit(peer.ip(), forwarded) {
            let status = match refusal {
                SourceRefusal::NotGithub(_) => StatusCode::FORBIDDEN,
                SourceRefusal::RangesUnknown => StatusCode::SERVICE_UNAVAILABLE,
            };
            metrics::counter!("hookdock_webhook_rejected_total", "reason" => refusal.code())
                .increment(1);
            tracing::info!(%refusal, "delivery refused by the source check");
            return Err(ApiError::new(status, refusal.code(), refusal.to_string()));
        }
    }
    let body = read_body(
        headers.get(header::CONTENT_LENGTH),
        body,
        state.body_timeout,
    )
    .await
    .map_err(|refusal| {
        refusal.count();
        ApiError::from(refusal)
    })?;
    let text = |name: &'static str| -> Result<Option<&str>, ApiError> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => v.to_str().map(Some).map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_header",
                    format!("header {name} is not visible ASCII"),
                )
            }),
        }
    };
    let delivery = DeliveryHeaders {
        event: text(gh::EVENT)?,
        delivery: text(gh::DELIVERY)?,
        signature_256: text(gh::SIGNATURE_256)?,
        content_type: text("content-type")?,
        hook_id: text(gh::HOOK_ID)?,
        target_type: text(gh::TARGET_TYPE)?,
        target_id: text(gh::TARGET_ID)?,
        user_agent: text("user-agent")?,
    };
    let receipt = state.ingestor.ingest(&delivery, body).await?;
    Ok(Json(receipt))
}

/// The whole body, refused when it is declared or turns out larger than GitHub's cap, cannot
/// be read, or has not fully arrived within `timeout`: a stalled sender holds no request (and no
/// shutdown) open for longer.
async fn read_body(
    declared: Option<&HeaderValue>,
    body: Body,
    timeout: Duration,
) -> Result<Bytes, IngestError> {
    let declared = declared
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(IngestError::PayloadTooLarge);
    }
    match tokio::time::timeout(timeout, Limited::new(body, MAX_BODY_BYTES).collect()).await {
        Err(_) => Err(IngestError::BodyTimeout(timeout.as_secs())),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(IngestError::PayloadTooLarge),
        Ok(Err(e)) => Err(IngestError::BodyUnreadable(e.to_string())),
    }
}
