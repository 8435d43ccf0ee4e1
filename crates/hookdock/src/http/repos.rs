//! Routes for hookdock's webhooks on GitHub: install, remove, rotate, ping, status, check and
//! redelivery. Each extracts the path, calls [`crate::hooks::HookManager`] and maps its error.

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::api::Caller;
use super::error::ApiError;
use crate::github::{GithubError, HookScope};
use crate::hooks::{HookError, InstallAction};

type Answer = Result<Response, ApiError>;

fn repo(Path((owner, repo)): Path<(String, String)>) -> HookScope {
    HookScope::repository(&owner, &repo)
}

fn org(Path(org): Path<String>) -> HookScope {
    HookScope::organization(&org)
}

fn ok(value: impl serde::Serialize) -> Answer {
    Ok(Json(value).into_response())
}

pub async fn list(State(state): State<AppState>) -> Answer {
    ok(serde_json::json!({ "items": state.hooks.list().await? }))
}

pub async fn show_repo(State(state): State<AppState>, path: Path<(String, String)>) -> Answer {
    ok(state.hooks.status(&repo(path)).await?)
}

pub async fn show_org(State(state): State<AppState>, path: Path<String>) -> Answer {
    ok(state.hooks.status(&org(path)).await?)
}

async fn install(state: AppState, caller: Caller, scope: HookScope) -> Answer {
    let outcome = state
        .hooks
        .acting_as(caller.github_token())
        .install(&scope)
        .await?;
    let status = match outcome.action {
        InstallAction::Created => StatusCode::CREATED,
        InstallAction::Adopted | InstallAction::Repaired => StatusCode::OK,
    };
    Ok((status, Json(outcome)).into_response())
}

pub async fn install_repo(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Path<(String, String)>,
) -> Answer {
    install(state, caller, repo(path)).await
}

pub async fn install_org(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Path<String>,
) -> Answer {
    install(state, caller, org(path)).await
}

pub async fn uninstall_repo(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Path<(String, String)>,
) -> Answer {
    ok(state
        .hooks
        .acting_as(caller.github_token())
        .uninstall(&repo(path))
        .await?)
}

pub async fn uninstall_org(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Path<String>,
) -> Answer {
    ok(state
        .hooks
        .acting_as(caller.github_token())
        .uninstall(&org(path))
        .await?)
}

pub async fn rotate_repo(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Path<(String, String)>,
) -> Answer {
    ok(state
        .hooks
        .acting_as(caller.github_token())
        .rotate_secret(&repo(path))
        .await?)
}

pub async fn rotate_org(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Path<String>,
) -> Answer {
    ok(state
        .hooks
        .acting_as(caller.github_token())
        .rotate_secret(&org(path))
        .await?)
}

pub async fn ping_repo(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Path<(String, String)>,
) -> Answer {
    ok(state
        .hooks
        .acting_as(caller.github_token())
        .ping(&repo(path))
        .await?)
}

pub async fn ping_org(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Path<String>,
) -> Answer {
    ok(state
        .hooks
        .acting_as(caller.github_token())
        .ping(&org(path))
        .await?)
}

pub async fn check(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Answer {
    ok(
        serde_json::json!({ "items": state.hooks.acting_as(caller.github_token()).check_all().await? }),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedeliverQuery {
    since: Option<String>,
}

pub async fn redeliver(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<RedeliverQuery>,
) -> Answer {
    let since = match q.since.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            crate::config::parse_span(text)
                .map_err(|e| ApiError::bad_request("invalid_parameter", format!("since: {e}")))?,
        ),
    };
    ok(state
        .hooks
        .acting_as(caller.github_token())
        .sweep(since)
        .await?)
}

impl From<HookError> for ApiError {
    fn from(e: HookError) -> ApiError {
        let message = e.to_string();
        match e {
            HookError::NoPublicUrl | HookError::NoToken | HookError::NoKey => {
                ApiError::new(StatusCode::CONFLICT, "not_configured", message)
            }
            HookError::NotTracked(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_tracked", message)
            }
            HookError::NotInstalled(_) => {
                ApiError::new(StatusCode::CONFLICT, "not_installed", message)
            }
            HookError::BadName { .. } => ApiError::bad_request("invalid_name", message),
            HookError::Store(store) => store.into(),
            HookError::Crypto(_) => {
                tracing::error!(error = %message, "a sealed secret could not be opened");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "secret_unreadable",
                    message,
                )
            }
            HookError::Github(github) => {
                let (status, code) = match &github {
                    GithubError::NotFound { .. } => (StatusCode::NOT_FOUND, "github_not_found"),
                    GithubError::Validation { .. } => {
                        (StatusCode::UNPROCESSABLE_ENTITY, "github_validation")
                    }
                    GithubError::Unauthorized { .. } => {
                        (StatusCode::BAD_GATEWAY, "github_unauthorized")
                    }
                    GithubError::Forbidden { .. } => (StatusCode::BAD_GATEWAY, "github_forbidden"),
                    GithubError::RateLimited { .. } => {
                        (StatusCode::SERVICE_UNAVAILABLE, "github_rate_limited")
                    }
                    GithubError::Network { .. } => (StatusCode::BAD_GATEWAY, "github_unreachable"),
                    GithubError::Status { .. } | GithubError::Decode { .. } => {
                        (StatusCode::BAD_GATEWAY, "github_error")
                    }
                };
                ApiError::new(status, code, message)
            }
        }
    }
}
