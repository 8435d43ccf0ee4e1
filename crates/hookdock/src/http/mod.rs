//! HTTP: serving connections (`serve`), routes, the admin-token guard and error mapping.
//! Handlers here only extract, call the domain (`ingest`, `store`, `events`, `hooks`) and map
//! its typed errors to statuses.

mod api;
mod error;
mod extract;
mod health;
mod login;
pub(crate) mod metrics;
mod records;
mod repos;
mod serve;
mod webhook;

use std::sync::Arc;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::SecretString;
use tokio::sync::Notify;
use tower_http::trace::TraceLayer;

pub use api::encode_cursor;
pub use error::ApiError;
pub use serve::serve;

use crate::auth::Auth;
use crate::handlers::HandlerRegistry;
use crate::hooks::HookManager;
use crate::ingest::{Ingestor, SourceGuard};
use crate::store::Store;

/// Shared by every route.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub ingestor: Ingestor,
    pub hooks: HookManager,
    pub auth: Auth,
    pub source: Arc<SourceGuard>,
    pub store: Store,
    pub registry: HandlerRegistry,
    pub automations: Option<Arc<crate::handlers::automation::AutomationSet>>,
    pub admin_token: Option<SecretString>,
    pub metrics: PrometheusHandle,
    pub queue_gauges: crate::telemetry::QueueGauges,
    /// What the metrics routes need beyond the store: teams, calendars, background backfills.
    pub metrics_api: Arc<metrics::MetricsApi>,
    pub jobs_ready: Arc<Notify>,
    /// How long a delivery's body may take to arrive after its headers (`read_timeout_secs`).
    pub body_timeout: std::time::Duration,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route("/api/v1/events", get(api::list_events))
        .route("/api/v1/events/replay-dead", post(api::replay_dead))
        .route("/api/v1/events/{id}", get(api::show_event))
        .route("/api/v1/events/{id}/payload", get(api::event_payload))
        .route("/api/v1/events/{id}/replay", post(api::replay_event))
        .route("/api/v1/events/{id}/release", post(api::release_event))
        .route("/api/v1/activity", get(api::activity))
        .route("/api/v1/metrics/pulls", get(metrics::pulls))
        .route("/api/v1/metrics/summary", get(metrics::summary))
        .route("/api/v1/records/{kind}", get(records::list))
        .route("/api/v1/metrics/backfill", post(metrics::start_backfill))
        .route(
            "/api/v1/metrics/backfill/{owner}/{name}",
            get(metrics::backfill_status),
        )
        .route("/api/v1/repos", get(repos::list))
        .route("/api/v1/repos/{owner}/{repo}", get(repos::show))
        .route(
            "/api/v1/repos/{owner}/{repo}/pulls/{number}/reviews",
            get(api::pull_reviews),
        )
        .route("/api/v1/orgs/{org}", get(repos::show))
        .route(
            "/api/v1/repos/{owner}/{repo}/install",
            post(repos::install).delete(repos::uninstall),
        )
        .route(
            "/api/v1/orgs/{org}/install",
            post(repos::install).delete(repos::uninstall),
        )
        .route(
            "/api/v1/repos/{owner}/{repo}/rotate-secret",
            post(repos::rotate),
        )
        .route("/api/v1/orgs/{org}/rotate-secret", post(repos::rotate))
        .route("/api/v1/repos/{owner}/{repo}/ping", post(repos::ping))
        .route("/api/v1/orgs/{org}/ping", post(repos::ping))
        .route("/api/v1/hooks/check", post(repos::check))
        .route("/api/v1/hooks/redeliver", post(repos::redeliver))
        .route_layer(from_fn_with_state(state.clone(), api::require_admin));
    Router::new()
        .route(crate::hooks::WEBHOOK_PATH, post(webhook::receive))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/auth/github/login", get(login::login))
        .route("/auth/github/callback", get(login::callback))
        .route("/auth/logout", post(login::logout))
        .route("/auth/me", get(login::me))
        .merge(admin)
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such route; webhooks go to POST /api/v1/webhooks/github",
            )
        })
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                ApiError::new(
                    axum::http::StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!(
                        "{method} is not allowed on {}; the Allow header lists what is",
                        uri.path()
                    ),
                )
            },
        )
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
