//! Probes: `/healthz` (the process answers), `/readyz` (database reachable, schema current,
//! writes still taken and reaching the disk),
//! `/metrics` (Prometheus text).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::AppState;
use crate::store::StoreError;

pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    // Deliveries get 503 once nothing takes writes any more; the database is not asked then.
    let checked = if state.store.writing() {
        Some(state.store.migrations_current().await)
    } else {
        None
    };
    let (database, migrations) = match &checked {
        None => (
            "writer stopped (shutting down, or failed: see the log): restart hookdock",
            "unknown",
        ),
        Some(Ok(true)) => ("ok", "current"),
        Some(Ok(false)) => ("ok", "pending: run `hookdock migrate`"),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "readiness check: the schema version cannot be read");
            // The database answered, with an error: not a network matter.
            let database = match e {
                StoreError::Database(sqlx::Error::Database(_)) => "unreadable: see the log",
                _ => "unreachable",
            };
            (database, "unknown")
        }
    };
    // Writes can no longer be made durable (a failed flush): deliveries get 503, whatever the
    // database answers to reads (a lost disk may fail them too).
    let database = if checked.is_some() && !state.store.durable() {
        "flush to disk failed: restart hookdock"
    } else {
        database
    };
    let (status, ready) = if database == "ok" && migrations == "current" {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    (
        status,
        Json(
            serde_json::json!({ "status": ready, "database": database, "migrations": migrations }),
        ),
    )
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.metrics.render();
    text.push_str(&state.queue_gauges.render().await);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
