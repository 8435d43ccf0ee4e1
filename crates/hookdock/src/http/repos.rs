//! Routes for hookdock's webhooks on GitHub: install, remove, rotate, ping, status, check and
//! redelivery. Each extracts the path, calls [`crate::hooks::HookManager`] and maps its error.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::api::Caller;
use super::error::ApiError;
use super::extract::Api;
use crate::github::{GithubError, HookScope};
use crate::hooks::{HookError, HookManager, InstallAction};

type Answer = Result<Response, ApiError>;

/// The repository (`{owner}/{repo}`) or organization (`{org}`) a route names.
pub struct Target(HookScope);

impl<S: Send + Sync> FromRequestParts<S> for Target {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Target, ApiError> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))?;
        match (params.get("owner"), params.get("repo"), params.get("org")) {
            (Some(owner), Some(repo), _) => Ok(Target(HookScope::repository(owner, repo))),
            (_, _, Some(org)) => Ok(Target(HookScope::organization(org))),
            _ => Err(ApiError::bad_request(
                "invalid_path",
                "the path names neither owner/repo nor an organization",
            )),
        }
    }
}

/// The hook manager acting for the caller: with a signed-in user's own GitHub token, else
/// with the configured one.
pub struct Hooks(HookManager);

impl FromRequestParts<AppState> for Hooks {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Hooks, ApiError> {
        let token = parts
            .extensions
            .get::<Caller>()
            .and_then(Caller::github_token);
        Ok(Hooks(state.hooks.acting_as(token)))
    }
}

fn ok(value: impl serde::Serialize) -> Answer {
    Ok(Json(value).into_response())
}

pub async fn list(Hooks(hooks): Hooks) -> Answer {
    ok(serde_json::json!({ "items": hooks.list().await? }))
}

pub async fn show(Hooks(hooks): Hooks, Target(scope): Target) -> Answer {
    ok(hooks.status(&scope).await?)
}

pub async fn install(Hooks(hooks): Hooks, Target(scope): Target) -> Answer {
    let outcome = hooks.install(&scope).await?;
    let status = match outcome.action {
        InstallAction::Created => StatusCode::CREATED,
        InstallAction::Adopted | InstallAction::Repaired => StatusCode::OK,
    };
    Ok((status, Json(outcome)).into_response())
}

pub async fn uninstall(Hooks(hooks): Hooks, Target(scope): Target) -> Answer {
    ok(hooks.uninstall(&scope).await?)
}

pub async fn rotate(Hooks(hooks): Hooks, Target(scope): Target) -> Answer {
    ok(hooks.rotate_secret(&scope).await?)
}

pub async fn ping(Hooks(hooks): Hooks, Target(scope): Target) -> Answer {
    ok(hooks.ping(&scope).await?)
}

pub async fn check(Hooks(hooks): Hooks) -> Answer {
    ok(serde_json::json!({ "items": hooks.check_all().await? }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedeliverQuery {
    since: Option<String>,
}

pub async fn redeliver(Hooks(hooks): Hooks, Api(Query(q)): Api<Query<RedeliverQuery>>) -> Answer {
    let since = match q.since.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            crate::config::parse_span(text)
                .map_err(|e| ApiError::bad_request("invalid_parameter", format!("since: {e}")))?,
        ),
    };
    ok(hooks.sweep(since).await?)
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
