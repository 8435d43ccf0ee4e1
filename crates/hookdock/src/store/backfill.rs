//! SQL for `hookdock metrics backfill`: the per-repository progress row that makes a run
//! resumable, the transaction that applies one pull request's effects together with the
//! progress it represents (so the recorded progress never runs ahead of the stored rows), and
//! the REST API answers kept for `metrics rebuild`.

use std::collections::HashMap;

use sqlx::Row;

use super::sql::{Sql, WriteConn};
use super::{Effect, Store, StoreError};

/// Where a repository's backfill stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillProgress {
    pub repo: String,
    /// When the run began listing (Unix ms, hookdock's clock).
    pub started_at: i64,
    /// The run's lower bound on GitHub's `updated_at` (Unix ms).
    pub since: i64,
    /// The last fully processed pull request in listing order (`updated_at` descending,
    /// Unix ms) and its number.
    pub cursor: Option<(i64, i64)>,
    /// Pull requests the run has processed (over all its attempts).
    pub pulls_done: i64,
    pub updated: i64,
    /// Set once the run reached its end.
    pub completed_at: Option<i64>,
}

/// A REST API answer as a payload of the event it stands for (see the migrations
/// `0009_api_snapshots` and `0010_first_commits_and_backfill_runs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSnapshot {
    /// GitHub's `owner/name`.
    pub repo: String,
    pub kind: String,
    pub action: Option<String>,
    /// The pull request's number, or the review's or comment's id.
    pub key: i64,
    pub payload: serde_json::Value,
    /// When hookdock read it (Unix ms): a snapshot never replaces a newer one.
    pub fetched_at: i64,
}

/// Keeps `snapshot`, unless a newer answer for the same object is kept.
pub(crate) async fn keep_snapshot(
    conn: &mut impl WriteConn,
    snapshot: &ApiSnapshot,
) -> Result<(), sqlx::Error> {
    let corrupt = |e: std::io::Error| sqlx::Error::Encode(format!("API snapshot: {e}").into());
    let json = serde_json::to_vec(&snapshot.payload)
        .map_err(|e| sqlx::Error::Encode(format!("API snapshot: {e}").into()))?;
    let packed = zstd::encode_all(json.as_slice(), 3).map_err(corrupt)?;
    let mut sql = Sql::new(
        "INSERT INTO api_snapshots (repo, kind, action, object_key, payload, fetched_at) VALUES (",
    );
    sql.bind(snapshot.repo.as_str())
        .push(", ")
        .bind(snapshot.kind.as_str())
        .push(", ")
        .bind(snapshot.action.clone())
        .push(", ");
    sql.bind(snapshot.key)
        .push(", ")
        .bind(packed)
        .push(", ")
        .bind(snapshot.fetched_at)
        .push(
            ") ON CONFLICT (repo, kind, object_key) DO UPDATE SET action = excluded.action, \
             payload = excluded.payload, fetched_at = excluded.fetched_at \
             WHERE excluded.fetched_at >= api_snapshots.fetched_at",
        );
    conn.exec(&sql).await?;
    Ok(())
}

impl Store {
    /// The backfill progress of `repo` (GitHub's `owner/name`), if a run ever started.
    pub async fn backfill_progress(
        &self,
        repo: &str,
    ) -> Result<Option<BackfillProgress>, StoreError> {
        let mut sql = Sql::new(
            "SELECT repo, started_at, since_at, cursor_updated_at, cursor_number, pulls_done, \
             updated, completed_at FROM backfill_progress WHERE repo = ",
        );
        sql.bind(repo);
        let Some(r) = sql.fetch_optional(self.inner.reads()).await? else {
            return Ok(None);
        };
        let cursor_at: Option<i64> = r.try_get(3)?;
        let cursor_number: Option<i64> = r.try_get(4)?;
        Ok(Some(BackfillProgress {
            repo: r.try_get(0)?,
            started_at: r.try_get(1)?,
            since: r.try_get(2)?,
            cursor: cursor_at.zip(cursor_number),
            pulls_done: r.try_get(5)?,
            updated: r.try_get(6)?,
            completed_at: r.try_get(7)?,
        }))
    }

    /// Starts a new run for `repo`, forgetting any earlier one.
    pub async fn start_backfill(
        &self,
        repo: &str,
        started_at: i64,
        since: i64,
    ) -> Result<(), StoreError> {
        let mut sql = Sql::new(
            "INSERT INTO backfill_progress (repo, started_at, since_at, cursor_updated_at, \
             cursor_number, pulls_done, updated, completed_at) VALUES (",
        );
        sql.bind(repo).push(", ").bind(started_at).push(", ");
        sql.bind(since)
            .push(", NULL, NULL, 0, ")
            .bind(started_at)
            .push(", NULL)");
        sql.push(
            " ON CONFLICT (repo) DO UPDATE SET started_at = excluded.started_at, \
             since_at = excluded.since_at, cursor_updated_at = NULL, cursor_number = NULL, \
             pulls_done = 0, updated = excluded.updated, completed_at = NULL",
        );
        sql.execute(self.inner.writes()).await?;
        Ok(())
    }

    /// Applies one pull request's effects (among them the API answers they came from, kept
    /// newest per object) and records the run's new cursor (`None` keeps it), in one
    /// transaction.
    pub async fn apply_backfilled_pull(
        &self,
        repo: &str,
        effects: &[Effect],
        cursor: Option<(i64, i64)>,
        now: i64,
    ) -> Result<(), StoreError> {
        self.bounded(async {
            let mut tx = self.write_transaction().await?;
            for effect in effects {
                super::jobs::apply_effect(&mut *tx, effect).await?;
            }
            let mut sql = Sql::new("UPDATE backfill_progress SET pulls_done = pulls_done + 1, ");
            if let Some((at, number)) = cursor {
                sql.push("cursor_updated_at = ")
                    .bind(at)
                    .push(", cursor_number = ")
                    .bind(number)
                    .push(", ");
            }
            sql.push("updated = ")
                .bind(now)
                .push(" WHERE repo = ")
                .bind(repo);
            sql.execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Marks `repo`'s run as complete.
    pub async fn finish_backfill(&self, repo: &str, now: i64) -> Result<(), StoreError> {
        let mut sql = Sql::new("UPDATE backfill_progress SET completed_at = ");
        sql.bind(now)
            .push(", updated = ")
            .bind(now)
            .push(" WHERE repo = ")
            .bind(repo);
        sql.execute(self.inner.writes()).await?;
        Ok(())
    }

    /// GitHub's `updated_at` of every stored pull request of `repo`, by number.
    pub async fn pull_request_versions(&self, repo: &str) -> Result<HashMap<i64, i64>, StoreError> {
        let mut sql = Sql::new("SELECT number, updated_at FROM pull_requests WHERE repo = ");
        sql.bind(repo);
        Ok(sql
            .fetch_all(self.inner.reads())
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?)
    }
}

impl Store {
    /// Kept API snapshots after `after` (an id), oldest first, with their ids.
    pub async fn api_snapshots(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, ApiSnapshot)>, StoreError> {
        let mut sql = Sql::new(
            "SELECT id, kind, action, object_key, payload, repo, fetched_at FROM api_snapshots \
             WHERE id > ",
        );
        sql.bind(after)
            .push(" ORDER BY id LIMIT ")
            .bind(i64::from(limit));
        let rows = sql.fetch_all(self.inner.reads()).await?;
        rows.iter()
            .map(|r| {
                let id: i64 = r.try_get(0)?;
                let packed: Vec<u8> = r.try_get(4)?;
                let payload = zstd::decode_all(packed.as_slice())
                    .ok()
                    .and_then(|json| serde_json::from_slice(&json).ok())
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!("API snapshot {id} cannot be read back"))
                    })?;
                Ok((
                    id,
                    ApiSnapshot {
                        repo: r.try_get(5)?,
                        kind: r.try_get(1)?,
                        action: r.try_get(2)?,
                        key: r.try_get(3)?,
                        payload,
                        fetched_at: r.try_get(6)?,
                    },
                ))
            })
            .collect()
    }
}

/// A repository's latest backfill run, as stored (migration 0010).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillRunRow {
    /// `owner/name` as requested.
    pub repo: String,
    pub run_id: String,
    /// `api` or `cli`.
    pub started_by: String,
    pub since: String,
    /// `running`, `done`, `failed` or `interrupted`, as last written (a running run whose
    /// lease lapsed is the caller's to call interrupted).
    pub state: String,
    pub lease_until: Option<i64>,
    pub started_at: i64,
    pub updated: i64,
    pub finished_at: Option<i64>,
    pub progress: RunProgress,
    /// JSON of the run's report.
    pub report: Option<String>,
    pub error: Option<String>,
}

/// How far a run got: pull requests listed, and done out of `total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunProgress {
    pub listed: i64,
    pub done: i64,
    pub total: i64,
}

/// A run to claim a repository for.
#[derive(Debug, Clone)]
pub struct NewBackfillRun<'a> {
    /// Lowercase `owner/name`.
    pub repo_key: &'a str,
    pub repo: &'a str,
    pub run_id: &'a str,
    pub started_by: &'a str,
    pub since: &'a str,
    pub now: i64,
    pub lease_until: i64,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd<'a> {
    Done { report: &'a str },
    Failed { error: &'a str },
    Interrupted { error: &'a str },
}

const RUN_COLUMNS: &str = "repo, run_id, started_by, since, state, lease_until, started_at, \
    updated, finished_at, listed, done, total, report, error";

impl Store {
    /// Makes `run` the repository's run unless another one is running with a lease that has not
    /// lapsed at `run.now`; whether it did.
    pub async fn claim_backfill_run(&self, run: &NewBackfillRun<'_>) -> Result<bool, StoreError> {
        let mut sql = Sql::new(&format!(
            "INSERT INTO backfill_runs (repo_key, {RUN_COLUMNS}) VALUES ("
        ));
        sql.bind(run.repo_key).push(", ").bind(run.repo);
        sql.push(", ")
            .bind(run.run_id)
            .push(", ")
            .bind(run.started_by);
        sql.push(", ")
            .bind(run.since)
            .push(", 'running', ")
            .bind(run.lease_until);
        sql.push(", ").bind(run.now).push(", ").bind(run.now);
        sql.push(", NULL, 0, 0, 0, NULL, NULL) ON CONFLICT (repo_key) DO UPDATE SET ");
        let columns: Vec<String> = RUN_COLUMNS
            .split(", ")
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        sql.push(&columns.join(", "));
        sql.push(
            " WHERE backfill_runs.state <> 'running' OR backfill_runs.lease_until IS NULL \
             OR backfill_runs.lease_until < ",
        )
        .bind(run.now);
        Ok(sql.execute(self.inner.writes()).await?.rows_affected() == 1)
    }

    /// The latest run of a repository (lowercase `owner/name`).
    pub async fn backfill_run(&self, repo_key: &str) -> Result<Option<BackfillRunRow>, StoreError> {
        let mut sql = Sql::new(&format!(
            "SELECT {RUN_COLUMNS} FROM backfill_runs WHERE repo_key = "
        ));
        sql.bind(repo_key);
        let Some(r) = sql.fetch_optional(self.inner.reads()).await? else {
            return Ok(None);
        };
        Ok(Some(BackfillRunRow {
            repo: r.try_get(0)?,
            run_id: r.try_get(1)?,
            started_by: r.try_get(2)?,
            since: r.try_get(3)?,
            state: r.try_get(4)?,
            lease_until: r.try_get(5)?,
            started_at: r.try_get(6)?,
            updated: r.try_get(7)?,
            finished_at: r.try_get(8)?,
            progress: RunProgress {
                listed: r.try_get(9)?,
                done: r.try_get(10)?,
                total: r.try_get(11)?,
            },
            report: r.try_get(12)?,
            error: r.try_get(13)?,
        }))
    }

    /// Records a running run's progress and extends its lease; false when the repository's run
    /// is no longer this one or no longer running (another took over after its lease lapsed).
    pub async fn renew_backfill_run(
        &self,
        repo_key: &str,
        run_id: &str,
        progress: RunProgress,
        lease_until: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut sql = Sql::new("UPDATE backfill_runs SET lease_until = ");
        sql.bind(lease_until).push(", updated = ").bind(now);
        push_progress(&mut sql, progress);
        sql.push(" WHERE repo_key = ").bind(repo_key);
        sql.push(" AND run_id = ")
            .bind(run_id)
            .push(" AND state = 'running'");
        Ok(sql.execute(self.inner.writes()).await?.rows_affected() == 1)
    }

    /// Records how a run ended (and its last progress), unless the repository's run is another
    /// one by now; whether it did.
    pub async fn finish_backfill_run(
        &self,
        repo_key: &str,
        run_id: &str,
        end: RunEnd<'_>,
        progress: RunProgress,
        now: i64,
    ) -> Result<bool, StoreError> {
        let (state, report, error) = match end {
            RunEnd::Done { report } => ("done", Some(report), None),
            RunEnd::Failed { error } => ("failed", None, Some(error)),
            RunEnd::Interrupted { error } => ("interrupted", None, Some(error)),
        };
        let mut sql = Sql::new("UPDATE backfill_runs SET state = ");
        sql.bind(state).push(", report = ").bind(report);
        sql.push(", error = ").bind(error);
        sql.push(", lease_until = NULL, finished_at = ")
            .bind(now)
            .push(", updated = ")
            .bind(now);
        push_progress(&mut sql, progress);
        sql.push(" WHERE repo_key = ").bind(repo_key);
        sql.push(" AND run_id = ")
            .bind(run_id)
            .push(" AND state = 'running'");
        Ok(sql.execute(self.inner.writes()).await?.rows_affected() == 1)
    }
}

fn push_progress(sql: &mut Sql, p: RunProgress) {
    sql.push(", listed = ").bind(p.listed);
    sql.push(", done = ").bind(p.done);
    sql.push(", total = ").bind(p.total);
}
