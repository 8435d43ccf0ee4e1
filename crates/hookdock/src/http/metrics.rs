//! Pull request metrics routes (behind the admin guard): per pull request rows as JSON or CSV,
//! and a summary over a window. They parse parameters (400 naming the parameter), read from the
//! store and leave every computation to [`crate::metrics`].

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use crate::metrics::{self, Window};
use crate::store::{PullFilter, now_ms};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullsQuery {
    repo: Option<String>,
    author: Option<String>,
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
    if let Some(ms) = crate::handlers::metrics::parse_time(text) {
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

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("invalid_parameter", e.body_text()))
}

/// `GET /api/v1/metrics/pulls?repo=&author=&since=&until=&format=json|csv`: pull requests
/// created in [since, until), with their durations.
pub async fn pulls(
    State(state): State<AppState>,
    q: Result<Query<PullsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let now = now_ms();
    let csv = match non_empty(q.format).as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return Err(invalid("format", format!("{other:?} is not json or csv"))),
    };
    let filter = PullFilter {
        repo: repo_param(q.repo)?,
        author: non_empty(q.author),
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
    let rows: Vec<_> = state
        .store
        .pull_requests(&filter)
        .await?
        .iter()
        .map(metrics::pull_metrics)
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

/// `GET /api/v1/metrics/summary?repo=&window=30d&until=`: the flow metrics of pull requests
/// merged in [until - window, until).
pub async fn summary(
    State(state): State<AppState>,
    q: Result<Query<SummaryQuery>, QueryRejection>,
) -> Result<Json<metrics::Summary>, ApiError> {
    let q = query(q)?;
    if non_empty(q.team).is_some() {
        return Err(invalid(
            "team",
            "teams are not modelled yet; filter by repo instead",
        ));
    }
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
    let window = Window {
        since: until.saturating_sub(span),
        until,
    };
    let filter = PullFilter {
        repo: repo.clone(),
        created_from: Some(window.since),
        created_to: Some(window.until),
        ended_from: Some(window.since),
        ended_to: Some(window.until),
        ..PullFilter::default()
    };
    let rows = state.store.pull_requests(&filter).await?;
    let reviewers = state
        .store
        .reviews_per_reviewer(repo.as_deref(), window.since, window.until)
        .await?;
    Ok(Json(metrics::summarize(
        repo.as_deref(),
        &rows,
        reviewers,
        window,
    )))
}
