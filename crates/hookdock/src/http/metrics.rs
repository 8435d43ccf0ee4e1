//! Pull request metrics routes (behind the admin guard): per pull request rows as JSON or CSV,
//! a summary over a window, and backfills started in the background with their status. They
//! parse parameters (400 naming the parameter), read from the store and leave every
//! computation to [`crate::metrics`] and every backfill to [`crate::handlers::backfill`].

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::extract::Api;
use crate::config::MetricsSettings;
use crate::handlers::backfill::{
    BackfillError, BackfillRuns, BackfillStatus, BackfillTask, backfill_status as stored_status,
};
use crate::metrics::{self, CalendarError, Clocks, SummaryRequest, Teams, Window};
use crate::store::{PullFilter, now_ms};

/// What the metrics routes need beyond the store.
pub struct MetricsApi {
    pub teams: Teams,
    pub settings: MetricsSettings,
    /// The background backfills this instance runs (their status is in the database).
    pub backfills: Arc<BackfillRuns>,
}

impl MetricsApi {
    pub fn new(settings: &MetricsSettings) -> Result<MetricsApi, CalendarError> {
        Ok(MetricsApi {
            teams: Teams::from_settings(settings)?,
            settings: settings.clone(),
            backfills: Arc::default(),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullsQuery {
    repo: Option<String>,
    author: Option<String>,
    team: Option<String>,
    since: Option<String>,
    until: Option<String>,
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryQuery {
    repo: Option<String>,
    team: Option<String>,
    window: Option<String>,
    until: Option<String>,
}

const DEFAULT_WINDOW: &str = "30d";

fn invalid(parameter: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_parameter", format!("{parameter}: {message}"))
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

/// A repository parameter must be `owner/name`.
fn repo_param(v: Option<String>) -> Result<Option<String>, ApiError> {
    match non_empty(v) {
        Some(repo) => match repo.split_once('/') {
            Some((owner, name)) if !owner.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Some(repo))
            }
            _ => Err(invalid("repo", format!("{repo:?} is not owner/name"))),
        },
        None => Ok(None),
    }
}

/// An instant: RFC 3339 (`2024-05-01T12:00:00Z`), a UTC date (`2024-05-01`), or a span back
/// from now (`90d`, `12h`).
fn instant(parameter: &str, text: &str, now: i64) -> Result<i64, ApiError> {
    let text = text.trim();
    if let Some(ms) = crate::handlers::payload::parse_time(text) {
        return Ok(ms);
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(date) = time::Date::parse(text, &date_format) {
        let t = date.midnight().assume_utc();
        return Ok(t.unix_timestamp() * 1000);
    }
    if text.starts_with(|c: char| c.is_ascii_digit())
        && let Ok(span) = crate::config::parse_span(text)
    {
        let ms = i64::try_from(span.as_millis()).unwrap_or(i64::MAX);
        return Ok(now.saturating_sub(ms));
    }
    Err(invalid(
        parameter,
        format!(
            "{text:?} is not a time; use RFC 3339 (2024-05-01T12:00:00Z), a date (2024-05-01) or a span back from now (30d)"
        ),
    ))
}

/// The team named by `team=`; an unknown name is refused naming the configured ones.
fn team_param(teams: &Teams, v: Option<String>) -> Result<Option<usize>, ApiError> {
    let Some(name) = non_empty(v) else {
        return Ok(None);
    };
    teams.find(&name).map(Some).ok_or_else(|| {
        let known = teams.names();
        invalid(
            "team",
            if known.is_empty() {
                format!(
                    "{name:?} is not a team: no team is configured; add [[handlers.metrics.teams]] to hookdock.toml"
                )
            } else {
                format!(
                    "{name:?} is not a team; use one of: {}",
                    known.join(", ")
                )
            },
        )
    })
}

/// `GET /api/v1/metrics/pulls?repo=&author=&team=&since=&until=&format=json|csv`: pull
/// requests created in [since, until), with their durations, raw and in working hours.
pub async fn pulls(
    State(state): State<AppState>,
    Api(Query(q)): Api<Query<PullsQuery>>,
) -> Result<Response, ApiError> {
    let now = now_ms();
    let csv = match non_empty(q.format).as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return Err(invalid("format", format!("{other:?} is not json or csv"))),
    };
    let teams = &state.metrics_api.teams;
    let team = team_param(teams, q.team)?;
    let known = state.store.known_logins(&teams.all_logins()).await?;
    let resolved = teams.resolve(&known);
    let filter = PullFilter {
        repo: repo_param(q.repo)?,
        author: non_empty(q.author),
        author_ids: team.map(|t| resolved.member_ids(t)),
        created_from: non_empty(q.since)
            .map(|s| instant("since", &s, now))
            .transpose()?,
        created_to: non_empty(q.until)
            .map(|s| instant("until", &s, now))
            .transpose()?,
        ..PullFilter::default()
    };
    if let (Some(from), Some(to)) = (filter.created_from, filter.created_to)
        && from >= to
    {
        return Err(invalid("until", "must be later than since"));
    }
    let rows = state.store.pull_requests(&filter).await?;
    let clocks = Clocks::new(&resolved, &rows);
    let rows: Vec<_> = rows
        .iter()
        .map(|r| metrics::pull_metrics(r, &clocks, team))
        .collect();
    if csv {
        Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            metrics::to_csv(&rows),
        )
            .into_response())
    } else {
        Ok(Json(serde_json::json!({ "pulls": rows })).into_response())
    }
}

/// `GET /api/v1/metrics/summary?repo=&team=&window=30d&until=`: the flow metrics of pull
/// requests merged in [until - window, until), raw and in working hours.
pub async fn summary(
    State(state): State<AppState>,
    Api(Query(q)): Api<Query<SummaryQuery>>,
) -> Result<Json<metrics::Summary>, ApiError> {
    let team = team_param(&state.metrics_api.teams, q.team)?;
    let now = now_ms();
    let repo = repo_param(q.repo)?;
    let window_text = non_empty(q.window).unwrap_or_else(|| DEFAULT_WINDOW.to_owned());
    let span = crate::config::parse_span(&window_text).map_err(|e| invalid("window", e))?;
    let span = i64::try_from(span.as_millis()).unwrap_or(i64::MAX);
    if span <= 0 {
        return Err(invalid("window", "must be longer than zero, e.g. 30d"));
    }
    let until = non_empty(q.until)
        .map(|s| instant("until", &s, now))
        .transpose()?
        .unwrap_or(now);
    let request = SummaryRequest {
        repo,
        team,
        window: Window {
            since: until.saturating_sub(span),
            until,
        },
    };
    Ok(Json(
        metrics::load_summary(&state.store, &state.metrics_api.teams, &request).await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    repo: Option<String>,
    since: Option<String>,
}

const DEFAULT_BACKFILL_SPAN: &str = "90d";

fn status_url(repo: &str) -> String {
    format!("/api/v1/metrics/backfill/{repo}")
}

fn status_body(status: &BackfillStatus) -> serde_json::Value {
    let mut body = serde_json::to_value(status).unwrap_or_default();
    body["status_url"] = serde_json::Value::String(status_url(&status.repo));
    body
}

/// `POST /api/v1/metrics/backfill` `{"repo": "owner/name", "since": "90d"}`: starts a backfill
/// of the repository in the background (as `hookdock metrics backfill` does) and answers 202
/// with the URL of its status; 409 with the running one's status while a backfill of the same
/// repository runs anywhere (another instance, the CLI).
pub async fn start_backfill(
    State(state): State<AppState>,
    body: Result<Json<BackfillRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| {
        ApiError::bad_request(
            "invalid_parameter",
            format!(
                "body: {}; send {{\"repo\": \"owner/name\", \"since\": \"90d\"}}",
                e.body_text()
            ),
        )
    })?;
    let repo = repo_param(body.repo)?
        .ok_or_else(|| invalid("repo", "is required: the repository as owner/name"))?;
    let since_text = non_empty(body.since).unwrap_or_else(|| DEFAULT_BACKFILL_SPAN.to_owned());
    let since = crate::config::parse_span(&since_text).map_err(|e| invalid("since", e))?;
    if since.is_zero() {
        return Err(invalid("since", "must be longer than zero, e.g. 90d"));
    }
    let github = state.hooks.client().map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_github_token",
            format!("a backfill reads GitHub's API: {e}"),
        )
    })?;
    let task = BackfillTask {
        store: state.store.clone(),
        github,
        clock: state.hooks.clock(),
        settings: state.metrics_api.settings.clone(),
    };
    match state
        .metrics_api
        .backfills
        .start(task, &repo, &since_text, since)
        .await
    {
        Ok(status) => {
            let url = status_url(&status.repo);
            Ok((
                StatusCode::ACCEPTED,
                [(header::LOCATION, url)],
                Json(status_body(&status)),
            )
                .into_response())
        }
        Err(BackfillError::AlreadyRunning(running)) => {
            Ok((StatusCode::CONFLICT, Json(status_body(&running))).into_response())
        }
        Err(e @ BackfillError::BadRepo(_)) => Err(invalid("repo", e)),
        Err(BackfillError::Store(e)) => Err(e.into()),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "backfill_not_started",
            e.to_string(),
        )),
    }
}

/// `GET /api/v1/metrics/backfill/{owner}/{name}`: the progress of the repository's latest
/// backfill, whichever instance (or the CLI) runs or ran it.
pub async fn backfill_status(
    State(state): State<AppState>,
    Api(Path((owner, name))): Api<Path<(String, String)>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let repo = format!("{owner}/{name}");
    let clock = state.hooks.clock();
    match stored_status(&state.store, clock.as_ref(), &repo).await? {
        Some(status) => Ok(Json(status_body(&status))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no backfill of {repo} was started; start one with POST /api/v1/metrics/backfill"
            ),
        )),
    }
}
