//! The queue's SQL: claiming jobs with a lease, recording results, renewing and releasing
//! leases, and replaying events.
//!
//! A job may be claimed when it is due (pending, or failed with its retry time reached, or
//! processing with an expired lease) and no earlier job of the same handler and ordering key is
//! still unfinished (pending, processing or failed). Done and dead jobs never hold a key back.

use std::collections::{BTreeSet, HashMap};

use sqlx::{AnyConnection, Row};

use super::events::insert_jobs;
use super::sql::Sql;
use super::{Dialect, Effect, EventStatus, JobStatus, Store, StoreError, opt_text};

/// A job this worker now holds a lease on, with what its handler needs of the event.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub job_id: i64,
    pub event_id: i64,
    pub handler: String,
    /// Attempt number of this run, starting at 1.
    pub attempt: u32,
    pub delivery_id: String,
    pub event: String,
    pub action: Option<String>,
    pub repository: Option<String>,
    pub organization: Option<String>,
    pub installation_id: Option<i64>,
    pub sender: Option<String>,
    pub ordering_key: String,
    pub received_at: i64,
}

/// How a job attempt ended.
#[derive(Debug, Clone)]
pub enum JobOutcome {
    Done {
        effects: Vec<Effect>,
    },
    /// Try again at `run_at` (Unix ms).
    Retry {
        error: String,
        run_at: i64,
    },
    Dead {
        error: String,
    },
}

/// The result of one attempt, handed to the writer.
#[derive(Debug, Clone)]
pub struct JobFinish {
    pub job_id: i64,
    pub event_id: i64,
    pub lease_owner: String,
    pub attempt: u32,
    pub outcome: JobOutcome,
}

/// What a replay should re-run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayMode {
    /// Every handler subscribed to the event now (also releases a `replay_suspected` event).
    All,
    /// Only jobs that are dead.
    DeadOnly,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayReport {
    pub event_id: i64,
    /// Handlers whose jobs were queued again.
    pub queued: Vec<String>,
    /// Handlers skipped because a worker is running them right now.
    pub skipped_running: Vec<String>,
    pub status: String,
}

const EVENT_STATUS_FROM_JOBS: &str = "status = CASE \
    WHEN EXISTS (SELECT 1 FROM jobs WHERE jobs.event_id = events.id AND jobs.status = 'dead') THEN 'dead' \
    WHEN EXISTS (SELECT 1 FROM jobs WHERE jobs.event_id = events.id AND jobs.status = 'failed') THEN 'failed' \
    WHEN EXISTS (SELECT 1 FROM jobs WHERE jobs.event_id = events.id AND jobs.status = 'processing') THEN 'processing' \
    WHEN EXISTS (SELECT 1 FROM jobs WHERE jobs.event_id = events.id AND jobs.status = 'pending') THEN 'pending' \
    WHEN EXISTS (SELECT 1 FROM jobs WHERE jobs.event_id = events.id) THEN 'done' \
    ELSE 'ignored' END, \
    last_error = (SELECT jobs.last_error FROM jobs WHERE jobs.event_id = events.id \
        AND jobs.last_error IS NOT NULL ORDER BY jobs.updated_at DESC LIMIT 1)";

/// Recomputes the status of events from their jobs.
async fn refresh_events(
    conn: &mut AnyConnection,
    dialect: Dialect,
    event_ids: impl IntoIterator<Item = i64>,
    now: i64,
) -> Result<(), sqlx::Error> {
    let ids: BTreeSet<i64> = event_ids.into_iter().collect();
    if ids.is_empty() {
        return Ok(());
    }
    let mut sql = Sql::with(dialect, "UPDATE events SET updated_at = ");
    sql.bind(now).push(", ").push(EVENT_STATUS_FROM_JOBS);
    sql.push(" WHERE id IN ").bind_list(ids);
    sql.execute(conn).await?;
    Ok(())
}

async fn record_history(
    conn: &mut AnyConnection,
    dialect: Dialect,
    entries: &[(i64, i64, &str, i64, Option<&str>)],
    now: i64,
) -> Result<(), sqlx::Error> {
    for chunk in entries.chunks(64) {
        let mut sql = Sql::with(
            dialect,
            "INSERT INTO job_history (job_id, event_id, status, attempt, at, error) VALUES ",
        );
        for (n, (job, event, status, attempt, error)) in chunk.iter().enumerate() {
            sql.push(if n == 0 { "(" } else { ", (" });
            sql.bind(*job)
                .push(", ")
                .bind(*event)
                .push(", ")
                .bind(*status)
                .push(", ");
            sql.bind(*attempt)
                .push(", ")
                .bind(now)
                .push(", ")
                .bind(*error)
                .push(")");
        }
        sql.execute(&mut *conn).await?;
    }
    Ok(())
}

pub(super) async fn apply_effect(
    conn: &mut AnyConnection,
    effect: &Effect,
) -> Result<(), sqlx::Error> {
    match effect {
        Effect::RecordActivity {
            scope,
            event,
            event_id,
            received_at,
        } => {
            let mut sql = Sql::new(
                "INSERT INTO repo_activity (repository, event, last_event_id, last_received_at, \
                 events_handled) VALUES (",
            );
            sql.bind(scope.as_str())
                .push(", ")
                .bind(event.as_str())
                .push(", ");
            sql.bind(*event_id)
                .push(", ")
                .bind(*received_at)
                .push(", 1)");
            sql.push(
                " ON CONFLICT (repository, event) DO UPDATE SET \
                 events_handled = repo_activity.events_handled + 1, \
                 last_event_id = CASE WHEN excluded.last_received_at >= repo_activity.last_received_at \
                     THEN excluded.last_event_id ELSE repo_activity.last_event_id END, \
                 last_received_at = CASE WHEN excluded.last_received_at > repo_activity.last_received_at \
                     THEN excluded.last_received_at ELSE repo_activity.last_received_at END",
            );
            sql.execute(conn).await?;
        }
        Effect::UpsertMember(member) => super::metrics::upsert_member(conn, member).await?,
        Effect::UpsertPullRequest(pr) => super::metrics::upsert_pull_request(conn, pr).await?,
        Effect::UpsertReview(review) => super::metrics::upsert_review(conn, review).await?,
        Effect::RecordPrActivity(activity) => {
            super::metrics::record_pr_activity(conn, activity).await?
        }
        Effect::RecordPrCommits(c) => super::metrics::record_pr_commits(conn, c).await?,
        Effect::RecordDraftChanges(d) => super::metrics::draft_changes(conn, d).await?,
        Effect::KeepApiSnapshot(s) => super::backfill::keep_snapshot(conn, s).await?,
        Effect::RecordAutomation(record) => super::automation::record(conn, record).await?,
        Effect::Record(record) => super::records::apply(conn, record).await?,
    }
    Ok(())
}

/// Records job results in the caller's transaction. Returns, per finish, whether it was
/// recorded (false: the lease had moved to another worker, nothing written for it).
pub(crate) async fn finish_jobs(
    conn: &mut AnyConnection,
    dialect: Dialect,
    finishes: &[JobFinish],
    now: i64,
) -> Result<Vec<bool>, sqlx::Error> {
    let mut recorded = vec![false; finishes.len()];
    let mut history: Vec<(i64, i64, &str, i64, Option<&str>)> = Vec::new();
    let mut touched_events = Vec::new();

    // Successful jobs of one lease owner are marked done in one statement.
    let mut done_by_owner: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, f) in finishes.iter().enumerate() {
        if matches!(f.outcome, JobOutcome::Done { .. }) {
            done_by_owner
                .entry(f.lease_owner.as_str())
                .or_default()
                .push(i);
        }
    }
    for (owner, indexes) in done_by_owner {
        for chunk in indexes.chunks(256) {
            let mut sql = Sql::with(
                dialect,
                "UPDATE jobs SET status = 'done', lease_owner = NULL, lease_until = NULL, \
                 last_error = NULL, updated_at = ",
            );
            sql.bind(now)
                .push(" WHERE status = 'processing' AND lease_owner = ")
                .bind(owner);
            sql.push(" AND id IN ")
                .bind_list(chunk.iter().map(|&i| finishes[i].job_id));
            sql.push(" RETURNING id");
            let confirmed: BTreeSet<i64> = sql
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|r| r.try_get::<i64, _>(0))
                .collect::<Result<_, _>>()?;
            for &i in chunk {
                let f = &finishes[i];
                if !confirmed.contains(&f.job_id) {
                    continue;
                }
                if let JobOutcome::Done { effects } = &f.outcome {
                    for effect in effects {
                        apply_effect(conn, effect).await?;
                    }
                }
                recorded[i] = true;
                history.push((
                    f.job_id,
                    f.event_id,
                    JobStatus::Done.as_str(),
                    f.attempt.into(),
                    None,
                ));
                touched_events.push(f.event_id);
            }
        }
    }

    for (i, f) in finishes.iter().enumerate() {
        let (status, run_at, error) = match &f.outcome {
            JobOutcome::Done { .. } => continue,
            JobOutcome::Retry { error, run_at } => (JobStatus::Failed, *run_at, error.as_str()),
            JobOutcome::Dead { error } => (JobStatus::Dead, now, error.as_str()),
        };
        let mut sql = Sql::with(dialect, "UPDATE jobs SET status = ");
        sql.bind(status.as_str()).push(", run_at = ").bind(run_at);
        sql.push(", last_error = ")
            .bind(error)
            .push(", updated_at = ")
            .bind(now);
        sql.push(", lease_owner = NULL, lease_until = NULL WHERE id = ")
            .bind(f.job_id);
        sql.push(" AND status = 'processing' AND lease_owner = ")
            .bind(f.lease_owner.as_str());
        if sql.execute(&mut *conn).await?.rows_affected() == 1 {
            recorded[i] = true;
            history.push((
                f.job_id,
                f.event_id,
                status.as_str(),
                f.attempt.into(),
                Some(error),
            ));
            touched_events.push(f.event_id);
        }
    }

    record_history(conn, dialect, &history, now).await?;
    refresh_events(conn, dialect, touched_events, now).await?;
    Ok(recorded)
}

impl Store {
    /// Claims up to `limit` runnable jobs for `owner` until `lease_until`.
    pub async fn claim_jobs(
        &self,
        owner: &str,
        limit: u32,
        lease_until: i64,
        now: i64,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let mut conn = self.inner.write.acquire().await?;
        let mut tx = super::begin_write(&mut conn, self.inner.dialect, false).await?;
        // Only the head of each (handler, ordering key) may run: the oldest job of the key that
        // is not finished. Heads come from a scan of the ordering index alone (one entry per
        // active job, no table reads), so a long backlog behind one key stays cheap to skip.
        let mut sql = Sql::with(
            self.inner.dialect,
            "WITH heads AS (SELECT MIN(id) AS id FROM jobs WHERE status IN ('pending', 'failed', 'processing') \
             GROUP BY handler, ordering_key), \
             c AS (SELECT j.id FROM jobs j WHERE j.id IN (SELECT id FROM heads) AND ((j.status = 'processing' AND j.lease_until < ",
        );
        sql.bind(now)
            .push(") OR (j.status <> 'processing' AND j.run_at <= ")
            .bind(now);
        sql.push(")) ORDER BY j.id LIMIT ");
        sql.bind(i64::from(limit))
            .push(" ")
            .push(self.inner.dialect.claim_lock());
        sql.push(") UPDATE jobs SET status = 'processing', lease_owner = ")
            .bind(owner);
        sql.push(", lease_until = ").bind(lease_until);
        sql.push(", attempts = attempts + 1, updated_at = ")
            .bind(now);
        sql.push(" WHERE id IN (SELECT id FROM c) RETURNING id, event_id, handler, attempts");
        let claimed: Vec<(i64, i64, String, i64)> = sql
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let history: Vec<_> = claimed
            .iter()
            .map(|(job, event, _, attempt)| (*job, *event, "processing", *attempt, None))
            .collect();
        record_history(&mut tx, self.inner.dialect, &history, now).await?;
        let mut sql = Sql::with(
            self.inner.dialect,
            "UPDATE events SET status = 'processing', updated_at = ",
        );
        sql.bind(now)
            .push(" WHERE status IN ('pending', 'failed') AND id IN ");
        sql.bind_list(claimed.iter().map(|c| c.1).collect::<BTreeSet<_>>());
        sql.execute(&mut *tx).await?;
        tx.commit().await?;

        // Event fields for the handlers, read after commit.
        let mut sql = Sql::with(
            self.inner.dialect,
            "SELECT id, delivery_id, event, action, repository, organization, installation_id, \
             sender, ordering_key, received_at FROM events WHERE id IN ",
        );
        sql.bind_list(claimed.iter().map(|c| c.1).collect::<BTreeSet<_>>());
        let mut events = HashMap::new();
        for r in sql.fetch_all(&self.inner.read).await? {
            let id: i64 = r.try_get("id")?;
            events.insert(id, r);
        }
        let mut jobs = Vec::with_capacity(claimed.len());
        for (job_id, event_id, handler, attempts) in claimed {
            let Some(r) = events.get(&event_id) else {
                continue;
            };
            jobs.push(ClaimedJob {
                job_id,
                event_id,
                handler,
                attempt: u32::try_from(attempts).unwrap_or(u32::MAX),
                delivery_id: r.try_get("delivery_id")?,
                event: r.try_get("event")?,
                action: opt_text(r, "action")?,
                repository: opt_text(r, "repository")?,
                organization: opt_text(r, "organization")?,
                installation_id: r.try_get("installation_id")?,
                sender: opt_text(r, "sender")?,
                ordering_key: r.try_get("ordering_key")?,
                received_at: r.try_get("received_at")?,
            });
        }
        Ok(jobs)
    }

    /// Extends the leases `owner` holds on `job_ids`; returns how many it still held.
    pub async fn renew_leases(
        &self,
        owner: &str,
        job_ids: &[i64],
        lease_until: i64,
    ) -> Result<u64, StoreError> {
        if job_ids.is_empty() {
            return Ok(0);
        }
        let mut sql = Sql::with(self.inner.dialect, "UPDATE jobs SET lease_until = ");
        sql.bind(lease_until)
            .push(" WHERE status = 'processing' AND lease_owner = ")
            .bind(owner);
        sql.push(" AND id IN ").bind_list(job_ids.iter().copied());
        Ok(sql.execute(&self.inner.write).await?.rows_affected())
    }

    /// Gives back jobs a worker will not finish (shutdown): they run again as soon as another
    /// worker looks, and the interrupted attempt does not count.
    pub async fn release_jobs(&self, owner: &str, job_ids: &[i64]) -> Result<u64, StoreError> {
        if job_ids.is_empty() {
            return Ok(0);
        }
        let now = super::now_ms();
        let mut tx = self.inner.write.begin().await?;
        let mut sql = Sql::with(
            self.inner.dialect,
            "UPDATE jobs SET status = CASE WHEN attempts > 1 THEN 'failed' ELSE 'pending' END, \
             attempts = attempts - 1, lease_owner = NULL, lease_until = NULL, run_at = ",
        );
        sql.bind(now).push(", updated_at = ").bind(now);
        sql.push(" WHERE status = 'processing' AND lease_owner = ")
            .bind(owner);
        sql.push(" AND id IN ").bind_list(job_ids.iter().copied());
        sql.push(" RETURNING id, event_id, status, attempts");
        let released: Vec<(i64, i64, String, i64)> = sql
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        let history: Vec<_> = released
            .iter()
            .map(|(job, event, status, attempt)| {
                (
                    *job,
                    *event,
                    status.as_str(),
                    *attempt,
                    Some("released at shutdown"),
                )
            })
            .collect();
        record_history(&mut tx, self.inner.dialect, &history, now).await?;
        refresh_events(
            &mut tx,
            self.inner.dialect,
            released.iter().map(|r| r.1),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(released.len() as u64)
    }

    /// Queues an event's jobs again. `subscribed` are the handlers that take this event now.
    pub async fn replay_event(
        &self,
        event_id: i64,
        subscribed: &[&'static str],
        mode: ReplayMode,
    ) -> Result<ReplayReport, StoreError> {
        let now = super::now_ms();
        let mut tx = self.inner.write.begin().await?;
        let mut sql = Sql::with(
            self.inner.dialect,
            "SELECT ordering_key FROM events WHERE id = ",
        );
        sql.bind(event_id);
        let key: String = match sql.fetch_optional(&mut *tx).await? {
            Some(r) => r.try_get(0)?,
            None => return Err(StoreError::EventNotFound(event_id)),
        };
        let mut sql = Sql::with(
            self.inner.dialect,
            "SELECT id, handler, status, attempts FROM jobs WHERE event_id = ",
        );
        sql.bind(event_id);
        let existing: Vec<(i64, String, String, i64)> = sql
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect::<Result<_, sqlx::Error>>()?;

        let mut report = ReplayReport {
            event_id,
            queued: Vec::new(),
            skipped_running: Vec::new(),
            status: String::new(),
        };
        let mut reset = Vec::new();
        let mut history = Vec::new();
        for (job_id, handler, status, attempts) in &existing {
            let wanted = match mode {
                ReplayMode::All => subscribed.contains(&handler.as_str()),
                ReplayMode::DeadOnly => status == JobStatus::Dead.as_str(),
            };
            if !wanted {
                continue;
            }
            if status == JobStatus::Processing.as_str() {
                report.skipped_running.push(handler.clone());
                continue;
            }
            reset.push(*job_id);
            report.queued.push(handler.clone());
            history.push((*job_id, event_id, "pending", *attempts, Some("replayed")));
        }
        if !reset.is_empty() {
            let mut sql = Sql::with(
                self.inner.dialect,
                "UPDATE jobs SET status = 'pending', attempts = 0, lease_owner = NULL, \
                 lease_until = NULL, last_error = NULL, run_at = ",
            );
            sql.bind(now).push(", updated_at = ").bind(now);
            sql.push(" WHERE id IN ").bind_list(reset.iter().copied());
            sql.execute(&mut *tx).await?;
        }
        if mode == ReplayMode::All {
            let missing: Vec<(i64, &'static str, &str)> = subscribed
                .iter()
                .filter(|h| !existing.iter().any(|e| e.1 == **h))
                .map(|h| (event_id, *h, key.as_str()))
                .collect();
            insert_jobs(&mut tx, self.inner.dialect, &missing, now).await?;
            report.queued.extend(missing.iter().map(|m| m.1.to_owned()));
        }
        record_history(&mut tx, self.inner.dialect, &history, now).await?;
        refresh_events(&mut tx, self.inner.dialect, [event_id], now).await?;
        let mut sql = Sql::with(self.inner.dialect, "SELECT status FROM events WHERE id = ");
        sql.bind(event_id);
        report.status = match sql.fetch_optional(&mut *tx).await? {
            Some(r) => r.try_get(0)?,
            None => EventStatus::Ignored.as_str().to_owned(),
        };
        tx.commit().await?;
        Ok(report)
    }

    /// Ids of events with at least one dead job, oldest first.
    pub async fn dead_event_ids(&self, limit: u32) -> Result<Vec<i64>, StoreError> {
        let mut sql = Sql::with(
            self.inner.dialect,
            "SELECT DISTINCT event_id FROM jobs WHERE status = 'dead' ORDER BY event_id LIMIT ",
        );
        sql.bind(i64::from(limit));
        Ok(sql
            .fetch_all(&self.inner.read)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()?)
    }

    /// Number of jobs not yet finished (pending, processing, failed).
    pub async fn unfinished_jobs(&self) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM jobs WHERE status IN ('pending', 'processing', 'failed')",
        )
        .fetch_one(&self.inner.read)
        .await?;
        Ok(row.try_get(0)?)
    }
}
