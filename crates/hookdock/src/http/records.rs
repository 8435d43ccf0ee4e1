//! Repository records route (behind the admin guard):
//! `GET /api/v1/records/{kind}?repo=owner/name&limit=&cursor=`, newest first, paged by cursor
//! like `GET /api/v1/events`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use super::extract::Api;
use crate::store::{RecordFilter, RecordRow};

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;

/// The record kinds the route serves.
pub const KINDS: [&str; 5] = ["pushes", "releases", "ci_runs", "deployments", "stars"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsQuery {
    repo: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

fn invalid(message: String) -> ApiError {
    ApiError::bad_request("invalid_parameter", message)
}

fn filter(q: RecordsQuery) -> Result<RecordFilter, ApiError> {
    let repository = match q.repo.filter(|s| !s.trim().is_empty()) {
        None => None,
        Some(repo) => match repo.split_once('/') {
            Some((owner, name)) if !owner.is_empty() && !name.is_empty() && !name.contains('/') => {
                Some(repo)
            }
            _ => return Err(invalid(format!("repo={repo:?} is not owner/name"))),
        },
    };
    let limit = match q.limit.as_deref() {
        None | Some("") => DEFAULT_LIMIT,
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(invalid(format!(
                    "limit={s:?} must be a number from 1 to {MAX_LIMIT}"
                )));
            }
        },
    };
    let before_id = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(s) => Some(decode_cursor(s).ok_or_else(|| {
            invalid(
                "cursor is not one this API returned; pass next_cursor from the previous page"
                    .to_owned(),
            )
        })?),
    };
    Ok(RecordFilter {
        repository,
        before_id,
        // One more than asked, to know whether there is a next page.
        limit: limit + 1,
    })
}

fn encode_cursor(id: i64) -> String {
    format!("r{id}")
}

fn decode_cursor(s: &str) -> Option<i64> {
    s.strip_prefix('r')?.parse().ok().filter(|n: &i64| *n > 0)
}

/// The page and the cursor of the next one.
fn page<T: Serialize>(
    mut rows: Vec<RecordRow<T>>,
    probe_limit: u32,
) -> (Vec<RecordRow<T>>, Option<String>) {
    let limit = probe_limit.saturating_sub(1) as usize;
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(|r| encode_cursor(r.id));
        (rows, next)
    } else {
        (rows, None)
    }
}

pub async fn list(
    State(state): State<AppState>,
    Api(Path(kind)): Api<Path<String>>,
    query: Result<Query<RecordsQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !KINDS.contains(&kind.as_str()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_kind",
            format!(
                "no records of kind {kind:?}; use one of {}",
                KINDS.join(", ")
            ),
        ));
    }
    // Read here, not as an extractor, so that an unknown kind is a 404 whatever the query.
    let Query(query) = query?;
    let filter = filter(query)?;
    let store = &state.store;
    let n = filter.limit;
    let body = match kind.as_str() {
        "pushes" => json(&kind, page(store.pushes(&filter).await?, n)),
        "releases" => json(&kind, page(store.releases(&filter).await?, n)),
        "ci_runs" => json(&kind, page(store.ci_runs(&filter).await?, n)),
        "deployments" => json(&kind, page(store.deployment_statuses(&filter).await?, n)),
        _ => {
            let mut body = json(&kind, page(store.social_events(&filter).await?, n));
            let counts = store.social_counts(filter.repository.as_deref()).await?;
            body["counts"] = serde_json::to_value(counts).unwrap_or_default();
            body
        }
    };
    Ok(Json(body))
}

fn json<T: Serialize>(
    kind: &str,
    (rows, next): (Vec<RecordRow<T>>, Option<String>),
) -> serde_json::Value {
    let mut body = serde_json::Map::new();
    body.insert(
        kind.to_owned(),
        serde_json::to_value(rows).unwrap_or_default(),
    );
    body.insert("next_cursor".to_owned(), next.into());
    serde_json::Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_roundtrip_and_reject_others() {
        assert_eq!(decode_cursor(&encode_cursor(42)), Some(42));
        assert_eq!(decode_cursor("e42"), None);
        assert_eq!(decode_cursor("r0"), None);
        assert_eq!(decode_cursor("rx"), None);
    }
}
