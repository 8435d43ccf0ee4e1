//! Probes: `/healthz` (the process answers), `/readyz` (database reachable, schema current,
//! writes still taken and reaching the disk),
//! `/metrics` (Prometheus text).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::AppState;

pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (status, database, migrations) = match state.store.migrations_current().await {
        // Deliveries get 503: nothing takes writes any more.
        _ if !state.store.writing() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "writer stopped (shutting down, or failed: see the log): restart hookdock",
            "unknown",
        ),
        // Writes can no longer be made durable (a failed flush): deliveries get 503.
        Ok(true) if !state.store.durable() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "flush to disk failed: restart hookdock",
            "current",
        ),
        Ok(true) => (StatusCode::OK, "ok", "current"),
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "ok",
            "pending: run `hookdock migrate`",
        ),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "unreachable", "unknown")
        }
    };
    let ready = if status == StatusCode::OK {
        "ready"
    } else {
        "not_ready"
    };
    (
        status,
        Json(
            serde_json::json!({ "status": ready, "database": database, "migrations": migrations }),
        ),
    )
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
