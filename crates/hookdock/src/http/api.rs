//! The JSON API behind `Authorization: Bearer <admin token>`: events, payloads, replay,
//! activity.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use super::extract::Api;
use crate::auth::SessionUser;
use crate::store::{EventFilter, EventStatus, ReplayMode};

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;

/// Who is calling the API.
#[derive(Clone, Debug)]
pub enum Caller {
    /// Holder of the admin bearer token.
    Admin,
    /// A user signed in with GitHub (session cookie).
    User(SessionUser),
}

impl Caller {
    /// The token to act on GitHub with for this caller, when it has its own.
    pub fn github_token(&self) -> Option<SecretString> {
        match self {
            Caller::Admin => None,
            Caller::User(user) => Some(user.token.clone()),
        }
    }
}

/// Lets through the admin bearer token or a signed-in user's session cookie; everything else
/// gets 401. Tokens are compared as SHA-256 digests in constant time, so neither content nor
/// length leaks through timing. The caller is passed on as a [`Caller`] extension.
pub async fn require_admin(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let caller = match presented {
        Some(Some(presented)) => {
            let Some(expected) = &state.admin_token else {
                return ApiError::unauthorized(
                    "the admin token is not configured: set HOOKDOCK_ADMIN_TOKEN and send it as `Authorization: Bearer <token>`, or sign in at /auth/github/login",
                )
                .into_response();
            };
            let a = Sha256::digest(presented.trim().as_bytes());
            let b = Sha256::digest(expected.expose_secret().as_bytes());
            if !bool::from(a.ct_eq(&b)) {
                return ApiError::unauthorized("the bearer token is not the admin token")
                    .into_response();
            }
            Caller::Admin
        }
        Some(None) => {
            return ApiError::unauthorized(
                "the Authorization header must be `Bearer <admin token>`",
            )
            .into_response();
        }
        None => match super::login::session_user(&state, request.headers()).await {
            Ok(Some(user)) => Caller::User(user),
            Ok(None) if state.admin_token.is_none() => {
                return ApiError::unauthorized(
                    "the JSON API needs HOOKDOCK_ADMIN_TOKEN (sent as `Authorization: Bearer <token>`) or a sign-in at /auth/github/login",
                )
                .into_response();
            }
            Ok(None) => {
                return ApiError::unauthorized(
                    "missing `Authorization: Bearer <admin token>` header (or sign in at /auth/github/login)",
                )
                .into_response();
            }
            Err(e) => return e.into_response(),
        },
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    delivery_id: Option<String>,
    status: Option<String>,
    event: Option<String>,
    repo: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// Builds the store filter from query parameters, naming the parameter that is wrong.
pub fn event_filter(q: ListQuery) -> Result<EventFilter, ApiError> {
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(EventStatus::parse(s).ok_or_else(|| {
            let known: Vec<&str> = EventStatus::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad_request(
                "invalid_parameter",
                format!(
                    "status={s:?} is not a status; use one of {}",
                    known.join(", ")
                ),
            )
        })?),
    };
    let limit = match q.limit.as_deref() {
        None | Some("") => DEFAULT_LIMIT,
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_parameter",
                    format!("limit={s:?} must be a number from 1 to {MAX_LIMIT}"),
                ));
            }
        },
    };
    let before_id = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(s) => Some(decode_cursor(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_parameter",
                "cursor is not one this API returned; pass next_cursor from the previous page",
            )
        })?),
    };
    let (event, action) = match q.event.as_deref() {
        None | Some("") => (None, None),
        Some(e) => match e.split_once('.') {
            Some((name, action)) => (Some(name.to_owned()), Some(action.to_owned())),
            None => (Some(e.to_owned()), None),
        },
    };
    Ok(EventFilter {
        delivery_id: q.delivery_id.filter(|s| !s.is_empty()),
        status,
        event,
        action,
        repository: q.repo.filter(|s| !s.is_empty()),
        before_id,
        limit,
    })
}

pub fn encode_cursor(id: i64) -> String {
    format!("e{id}")
}

fn decode_cursor(s: &str) -> Option<i64> {
    s.strip_prefix('e')?.parse().ok().filter(|n: &i64| *n > 0)
}

pub async fn list_events(
    State(state): State<AppState>,
    Api(Query(query)): Api<Query<ListQuery>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let page = state.store.list_events_page(&event_filter(query)?).await?;
    let next_cursor = page.next_before.map(encode_cursor);
    Ok(Json(
        serde_json::json!({ "events": page.events, "next_cursor": next_cursor }),
    ))
}

pub async fn show_event(
    State(state): State<AppState>,
    Api(Path(id)): Api<Path<i64>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let detail = state.store.event_detail(id).await?;
    let actions = state.store.event_actions(id).await?;
    let mut value = serde_json::to_value(detail).unwrap_or_default();
    value["actions"] = serde_json::to_value(actions).unwrap_or_default();
    Ok(Json(value))
}

pub async fn event_payload(
    State(state): State<AppState>,
    Api(Path(id)): Api<Path<i64>>,
) -> Result<Response, ApiError> {
    let body = state.store.event_body(id).await?;
    Ok((
        [(header::CONTENT_TYPE, body.content_type)],
        Body::from(body.bytes),
    )
        .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayQuery {
    #[serde(default)]
    dead_only: bool,
    /// Run the automations in process and report what they would write, writing nothing.
    #[serde(default)]
    dry_run: bool,
}

pub async fn replay_event(
    State(state): State<AppState>,
    Api(Path(id)): Api<Path<i64>>,
    Api(Query(query)): Api<Query<ReplayQuery>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if query.dry_run {
        let Some(automations) = &state.automations else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "automations_off",
                "a dry run replays the automations, which are off: set HOOKDOCK_GITHUB_TOKEN (and leave handlers.automations.enabled on)",
            ));
        };
        state.store.event_summary(id).await?;
        let reports = automations
            .dry_run(id)
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "dry_run_failed", e.to_string()))?;
        return Ok(Json(
            serde_json::json!({ "event_id": id, "dry_run": true, "automations": reports }),
        ));
    }
    let mode = if query.dead_only {
        ReplayMode::DeadOnly
    } else {
        ReplayMode::All
    };
    let report = crate::events::replay(&state.store, &state.registry, id, mode).await?;
    state.jobs_ready.notify_one();
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}

/// Releases an event held as `replay_suspected` after an operator judged it genuine.
pub async fn release_event(
    State(state): State<AppState>,
    Api(Path(id)): Api<Path<i64>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let summary = state.store.event_summary(id).await?;
    if summary.status != EventStatus::ReplaySuspected.as_str() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_held",
            format!(
                "event {id} is {}, not replay_suspected; use replay instead",
                summary.status
            ),
        ));
    }
    let report = crate::events::replay(&state.store, &state.registry, id, ReplayMode::All).await?;
    state.jobs_ready.notify_one();
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}

/// Replays the dead jobs of every event that has one.
pub async fn replay_dead(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let reports = crate::events::replay_all_dead(&state.store, &state.registry).await?;
    state.jobs_ready.notify_one();
    Ok(Json(serde_json::json!({ "replayed": reports })))
}

/// Review runs of a pull request (reviewed, superseded) with their findings, and the calls
/// made to the language model for it.
pub async fn pull_reviews(
    State(state): State<AppState>,
    Api(Path((owner, repo, number))): Api<Path<(String, String, i64)>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let repository = format!("{owner}/{repo}");
    let reviews = state.store.review_runs(&repository, number).await?;
    let llm_calls = state.store.llm_calls(&repository, number).await?;
    Ok(Json(
        serde_json::json!({ "repository": repository, "number": number, "reviews": reviews, "llm_calls": llm_calls }),
    ))
}

pub async fn activity(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let rows = state.store.activity().await?;
    Ok(Json(serde_json::json!({ "activity": rows })))
}
