//! SQL for the automations: the actions they took (or, in dry run, would have taken) on GitHub,
//! the reviews they ran per head commit with their findings, the audit of language-model calls,
//! and the queue lookups review coalescing and config simulation need.

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::sql::{Sql, WriteConn};
use super::{Store, StoreError, opt_text, ser_time};

/// One write an automation made on GitHub (or would have made, when `dry_run`), or a decision
/// it recorded instead of writing (`skipped`, `superseded`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionRecord {
    pub event_id: i64,
    pub handler: String,
    pub repository: String,
    pub number: Option<i64>,
    pub dry_run: bool,
    pub kind: String,
    pub detail: Value,
    #[serde(serialize_with = "ser_time")]
    pub created_at: i64,
}

/// A finding as stored with its review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FindingRecord {
    pub path: Option<String>,
    pub line: Option<i64>,
    pub severity: String,
    pub message: String,
    pub source: String,
    /// `inline` or `summary`.
    pub placement: String,
}

/// A review run on one head commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReviewRunRecord {
    pub repository: String,
    pub number: i64,
    pub head_sha: String,
    pub event_id: i64,
    /// `reviewed`, `superseded` or `skipped`.
    pub status: String,
    pub reviewer: Option<String>,
    pub github_review_id: Option<i64>,
    pub summary: Option<String>,
    pub coverage: Option<Value>,
    pub findings: Vec<FindingRecord>,
    #[serde(serialize_with = "ser_time")]
    pub created_at: i64,
}

/// One call to the language model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LlmCallRecord {
    pub event_id: i64,
    pub repository: String,
    pub number: i64,
    pub head_sha: String,
    pub model: String,
    pub attempt: i64,
    pub prompt_bytes: i64,
    pub duration_ms: i64,
    pub outcome: String,
    #[serde(serialize_with = "ser_time")]
    pub created_at: i64,
}

/// What one automation run leaves in the database; committed with its job.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AutomationRecord {
    pub actions: Vec<ActionRecord>,
    pub review: Option<ReviewRunRecord>,
    pub llm_calls: Vec<LlmCallRecord>,
}

/// A stored review run, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReviewRunRow {
    pub id: i64,
    #[serde(flatten)]
    pub run: ReviewRunRecord,
}

/// A stored event the config simulation replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedEvent {
    pub event_id: i64,
    pub event: String,
    pub action: Option<String>,
}

pub(super) async fn record(
    conn: &mut impl WriteConn,
    record: &AutomationRecord,
) -> Result<(), sqlx::Error> {
    if !record.actions.is_empty() {
        let mut sql = Sql::new(
            "INSERT INTO automation_actions (event_id, handler, repository, number, dry_run, \
             kind, detail, created_at) VALUES ",
        );
        for (i, a) in record.actions.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.push("(")
                .bind(a.event_id)
                .push(", ")
                .bind(a.handler.as_str())
                .push(", ")
                .bind(a.repository.as_str())
                .push(", ");
            sql.bind(a.number)
                .push(", ")
                .bind(i64::from(a.dry_run))
                .push(", ")
                .bind(a.kind.as_str())
                .push(", ");
            sql.bind(a.detail.to_string())
                .push(", ")
                .bind(a.created_at)
                .push(")");
        }
        conn.exec(&sql).await?;
    }
    if let Some(review) = &record.review {
        let mut sql = Sql::new(
            "INSERT INTO automated_reviews (repository, number, head_sha, event_id, status, \
             reviewer, github_review_id, summary, coverage, created_at) VALUES (",
        );
        sql.bind(review.repository.as_str())
            .push(", ")
            .bind(review.number)
            .push(", ")
            .bind(review.head_sha.as_str())
            .push(", ");
        sql.bind(review.event_id)
            .push(", ")
            .bind(review.status.as_str())
            .push(", ")
            .bind(review.reviewer.clone())
            .push(", ");
        sql.bind(review.github_review_id)
            .push(", ")
            .bind(review.summary.clone())
            .push(", ")
            .bind(review.coverage.as_ref().map(Value::to_string))
            .push(", ");
        // A head already reviewed (a retry after a crash between GitHub and here) stays as it is.
        sql.bind(review.created_at)
            .push(") ON CONFLICT DO NOTHING RETURNING id");
        if let Some(row) = conn.row(&sql).await? {
            let review_id: i64 = row.try_get(0)?;
            if !review.findings.is_empty() {
                let mut sql = Sql::new(
                    "INSERT INTO automated_review_findings (review_id, position, path, line, \
                     severity, message, source, placement) VALUES ",
                );
                for (i, f) in review.findings.iter().enumerate() {
                    if i > 0 {
                        sql.push(", ");
                    }
                    sql.push("(")
                        .bind(review_id)
                        .push(", ")
                        .bind(i64::try_from(i).unwrap_or(i64::MAX))
                        .push(", ")
                        .bind(f.path.clone())
                        .push(", ");
                    sql.bind(f.line)
                        .push(", ")
                        .bind(f.severity.as_str())
                        .push(", ")
                        .bind(f.message.as_str())
                        .push(", ");
                    sql.bind(f.source.as_str())
                        .push(", ")
                        .bind(f.placement.as_str())
                        .push(")");
                }
                conn.exec(&sql).await?;
            }
        }
    }
    if !record.llm_calls.is_empty() {
        let mut sql = Sql::new(
            "INSERT INTO llm_calls (event_id, repository, number, head_sha, model, attempt, \
             prompt_bytes, duration_ms, outcome, created_at) VALUES ",
        );
        for (i, c) in record.llm_calls.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.push("(")
                .bind(c.event_id)
                .push(", ")
                .bind(c.repository.as_str())
                .push(", ")
                .bind(c.number)
                .push(", ");
            sql.bind(c.head_sha.as_str())
                .push(", ")
                .bind(c.model.as_str())
                .push(", ")
                .bind(c.attempt)
                .push(", ");
            sql.bind(c.prompt_bytes)
                .push(", ")
                .bind(c.duration_ms)
                .push(", ")
                .bind(c.outcome.as_str())
                .push(", ")
                .bind(c.created_at)
                .push(")");
        }
        conn.exec(&sql).await?;
    }
    Ok(())
}

fn action_row(r: &AnyRow) -> Result<ActionRecord, StoreError> {
    let detail: String = r.try_get("detail")?;
    Ok(ActionRecord {
        event_id: r.try_get("event_id")?,
        handler: r.try_get("handler")?,
        repository: r.try_get("repository")?,
        number: r.try_get("number")?,
        dry_run: r.try_get::<i64, _>("dry_run")? != 0,
        kind: r.try_get("kind")?,
        detail: serde_json::from_str(&detail)
            .map_err(|e| StoreError::Corrupt(format!("automation action detail: {e}")))?,
        created_at: r.try_get("created_at")?,
    })
}

const ACTION_COLUMNS: &str = "SELECT event_id, handler, repository, number, dry_run, kind, detail, created_at \
     FROM automation_actions";

impl Store {
    /// The actions recorded for an event, oldest first.
    pub async fn event_actions(&self, event_id: i64) -> Result<Vec<ActionRecord>, StoreError> {
        let mut sql = Sql::new(ACTION_COLUMNS);
        sql.push(" WHERE event_id = ")
            .bind(event_id)
            .push(" ORDER BY id");
        sql.fetch_all(self.inner.reads())
            .await?
            .iter()
            .map(action_row)
            .collect()
    }

    /// The review run that reviewed this head commit, if any.
    pub async fn reviewed_head(
        &self,
        repository: &str,
        number: i64,
        head_sha: &str,
    ) -> Result<Option<ReviewRunRow>, StoreError> {
        let mut sql = Sql::new(REVIEW_COLUMNS);
        sql.push(" WHERE repository = ")
            .bind(repository)
            .push(" AND number = ")
            .bind(number)
            .push(" AND head_sha = ")
            .bind(head_sha)
            .push(" AND status = 'reviewed'");
        match sql.fetch_optional(self.inner.reads()).await? {
            Some(row) => Ok(Some(self.review_row(&row).await?)),
            None => Ok(None),
        }
    }

    /// Every review run of a pull request, oldest first, with findings.
    pub async fn review_runs(
        &self,
        repository: &str,
        number: i64,
    ) -> Result<Vec<ReviewRunRow>, StoreError> {
        let mut sql = Sql::new(REVIEW_COLUMNS);
        sql.push(" WHERE repository = ")
            .bind(repository)
            .push(" AND number = ")
            .bind(number)
            .push(" ORDER BY id");
        let rows = sql.fetch_all(self.inner.reads()).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(self.review_row(row).await?);
        }
        Ok(out)
    }

    async fn review_row(&self, r: &AnyRow) -> Result<ReviewRunRow, StoreError> {
        let id: i64 = r.try_get("id")?;
        let coverage = opt_text(r, "coverage")?
            .map(|c| serde_json::from_str(&c))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("review coverage: {e}")))?;
        let mut sql = Sql::new(
            "SELECT path, line, severity, message, source, placement \
             FROM automated_review_findings WHERE review_id = ",
        );
        sql.bind(id).push(" ORDER BY position");
        let findings = sql
            .fetch_all(self.inner.reads())
            .await?
            .iter()
            .map(|f| {
                Ok(FindingRecord {
                    path: opt_text(f, "path")?,
                    line: f.try_get("line")?,
                    severity: f.try_get("severity")?,
                    message: f.try_get("message")?,
                    source: f.try_get("source")?,
                    placement: f.try_get("placement")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(ReviewRunRow {
            id,
            run: ReviewRunRecord {
                repository: r.try_get("repository")?,
                number: r.try_get("number")?,
                head_sha: r.try_get("head_sha")?,
                event_id: r.try_get("event_id")?,
                status: r.try_get("status")?,
                reviewer: opt_text(r, "reviewer")?,
                github_review_id: r.try_get("github_review_id")?,
                summary: opt_text(r, "summary")?,
                coverage,
                findings,
                created_at: r.try_get("created_at")?,
            },
        })
    }

    /// Calls to the language model for a pull request, oldest first.
    pub async fn llm_calls(
        &self,
        repository: &str,
        number: i64,
    ) -> Result<Vec<LlmCallRecord>, StoreError> {
        let mut sql = Sql::new(
            "SELECT event_id, repository, number, head_sha, model, attempt, prompt_bytes, \
             duration_ms, outcome, created_at FROM llm_calls WHERE repository = ",
        );
        sql.bind(repository)
            .push(" AND number = ")
            .bind(number)
            .push(" ORDER BY id");
        sql.fetch_all(self.inner.reads())
            .await?
            .iter()
            .map(|r| {
                Ok(LlmCallRecord {
                    event_id: r.try_get(0)?,
                    repository: r.try_get(1)?,
                    number: r.try_get(2)?,
                    head_sha: r.try_get(3)?,
                    model: r.try_get(4)?,
                    attempt: r.try_get(5)?,
                    prompt_bytes: r.try_get(6)?,
                    duration_ms: r.try_get(7)?,
                    outcome: r.try_get(8)?,
                    created_at: r.try_get(9)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// The newest `event` delivery (with one of `actions`) after `event_id` whose `handler`
    /// job with the same ordering key is still waiting or running: the job at `event_id` is
    /// then superseded by it.
    pub async fn newer_waiting_job(
        &self,
        handler: &str,
        ordering_key: &str,
        event_id: i64,
        event: &str,
        actions: &[&str],
    ) -> Result<Option<i64>, StoreError> {
        let mut sql = Sql::new(
            "SELECT MAX(j.event_id) FROM jobs j JOIN events e ON e.id = j.event_id \
             WHERE j.handler = ",
        );
        sql.bind(handler)
            .push(" AND j.ordering_key = ")
            .bind(ordering_key)
            .push(" AND j.event_id > ")
            .bind(event_id)
            .push(concat!(
                " AND j.status ",
                super::jobs::unfinished!(),
                " AND e.event = "
            ))
            .bind(event)
            .push(" AND e.action IN ")
            .bind_list(actions.iter().copied());
        let row = sql.fetch_optional(self.inner.reads()).await?;
        Ok(row.and_then(|r| r.try_get::<Option<i64>, _>(0).ok().flatten()))
    }

    /// Stored events of a repository received at or after `since` (Unix ms), oldest first,
    /// except those suspected to be replays.
    pub async fn repository_events_since(
        &self,
        repository: &str,
        since: i64,
        limit: i64,
    ) -> Result<Vec<SimulatedEvent>, StoreError> {
        let mut sql = Sql::new("SELECT id, event, action FROM events WHERE repository = ");
        sql.bind(repository)
            .push(" AND received_at >= ")
            .bind(since)
            .push(" AND status <> 'replay_suspected' ORDER BY id LIMIT ")
            .bind(limit);
        sql.fetch_all(self.inner.reads())
            .await?
            .iter()
            .map(|r| {
                Ok(SimulatedEvent {
                    event_id: r.try_get(0)?,
                    event: r.try_get(1)?,
                    action: opt_text(r, "action")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}

const REVIEW_COLUMNS: &str = "SELECT id, repository, number, head_sha, event_id, status, \
     reviewer, github_review_id, summary, coverage, created_at FROM automated_reviews";
