//! The queue's SQL: claiming jobs with a lease, recording results, renewing and releasing
//! leases, and replaying events.
//!
//! A job may be claimed when it is due (pending, or failed with its retry time reached, or
//! processing with an expired lease) and no earlier job of the same handler and ordering key is
//! still unfinished (pending, processing or failed). Done and dead jobs never hold a key back.
//!
//! That rule is kept as a flag: the one unfinished job of a key that may run is its head, the
//! others are `blocked`. A job inserted behind an unfinished one starts blocked; when a head is
//! done or dead, the oldest unfinished job of its key becomes the head. Claims then only look
//! at heads.
//!
//! A claim may take a head together with the next jobs of its key, in the order the key would
//! run them (a chain; see [`Chains`]): one worker then runs them one after the other and
//! records their results in one transaction, instead of a claim, a commit and a flush per job
//! on a busy key. The jobs behind the head stay blocked while they are processing, so nothing
//! else claims them; after a crash their leases expire with the head's, and the head's next
//! claim takes them again, in the same order.

use std::collections::{BTreeSet, HashMap};

use sha2::{Digest, Sha256};
use sqlx::Row;

use super::sql::{Sql, WriteConn, padded_chunks};
use super::{Dialect, Effect, EventStatus, JobStatus, Store, StoreError};

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
    /// The delivery's body as stored (content type, zstd bytes), read with the claim so a
    /// handler that needs the payload does not read it again.
    pub stored: Option<(String, Vec<u8>)>,
}

/// The jobs a claim hands to one worker to run in order: a head, then the next jobs of its key
/// (only the head for handlers that do not run in chains).
pub type ClaimedChain = Vec<ClaimedJob>;

/// Which handlers' jobs a claim takes in chains, and how many jobs a chain holds at most.
///
/// Only for handlers whose work is a pure function of their job (its event and payload), so
/// that running a job before the effects of the one ahead of it are committed changes nothing:
/// the chain's effects are committed together, in order.
#[derive(Debug, Clone)]
pub struct Chains {
    pub handlers: std::sync::Arc<[&'static str]>,
    pub max: u32,
}

impl Default for Chains {
    /// No chains: every claim takes heads alone.
    fn default() -> Chains {
        Chains {
            handlers: std::sync::Arc::new([]),
            max: 1,
        }
    }
}

impl Chains {
    /// The same handlers, each head claimed alone (no allocation).
    pub(crate) fn heads_only(&self) -> Chains {
        Chains {
            handlers: std::sync::Arc::clone(&self.handlers),
            max: 1,
        }
    }

    /// Most jobs of one chain of `handler`'s (1: the head alone).
    fn limit(&self, handler: &str) -> u32 {
        if self.handlers.contains(&handler) {
            self.max.max(1)
        } else {
            1
        }
    }
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
    /// Not run (a job ahead of it in its chain did not succeed): given back to the queue
    /// without counting an attempt.
    Released {
        reason: String,
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

/// A job's status while it is not finished (pending, processing, failed): it holds its key.
///
/// The partial indexes on unfinished jobs have this condition word for word (so that queries
/// saying it can use them), and SQLite evaluates it for each of them on every row a statement
/// writes: named by the two finished statuses, it is two comparisons, where a list of the three
/// others cost a temporary B-tree per index and statement (migration 0013).
///
/// A macro, so that statements embed it with `concat!` at compile time (the ingest path
/// builds one such fragment per job row).
macro_rules! unfinished {
    () => {
        "NOT IN ('done', 'dead')"
    };
}
pub(crate) use unfinished;

/// An event's status from its jobs (the worst of them), and its last error.
const EVENT_STATUS_FROM_JOBS: &str = "(SELECT CASE COALESCE(MAX(CASE jobs.status \
        WHEN 'dead' THEN 5 WHEN 'failed' THEN 4 WHEN 'processing' THEN 3 WHEN 'pending' THEN 2 \
        ELSE 1 END), 0) \
    WHEN 5 THEN 'dead' WHEN 4 THEN 'failed' WHEN 3 THEN 'processing' WHEN 2 THEN 'pending' \
    WHEN 1 THEN 'done' ELSE 'ignored' END FROM jobs WHERE jobs.event_id = events.id)";
const EVENT_ERROR_FROM_JOBS: &str = "(SELECT jobs.last_error FROM jobs WHERE jobs.event_id = events.id \
    AND jobs.last_error IS NOT NULL ORDER BY jobs.updated_at DESC LIMIT 1)";

/// Recomputes the status and last error of events from their jobs. Rows whose status and error
/// are unchanged are not written (most job transitions leave their event as it was).
async fn refresh_events(
    conn: &mut impl WriteConn,
    dialect: Dialect,
    event_ids: impl IntoIterator<Item = i64>,
    now: i64,
) -> Result<(), sqlx::Error> {
    let ids: BTreeSet<i64> = event_ids.into_iter().collect();
    if ids.is_empty() {
        return Ok(());
    }
    let mut sql = Sql::with(dialect, "UPDATE events SET updated_at = ");
    sql.bind(now);
    sql.push(&format!(
        ", status = {EVENT_STATUS_FROM_JOBS}, last_error = {EVENT_ERROR_FROM_JOBS} WHERE id IN "
    ));
    sql.bind_list(ids);
    sql.push(&format!(
        " AND (status <> {EVENT_STATUS_FROM_JOBS} OR last_error IS DISTINCT FROM {EVENT_ERROR_FROM_JOBS})"
    ));
    conn.exec(&sql).await?;
    Ok(())
}

/// A stable 64-bit number for a (handler, ordering key), for PostgreSQL's advisory locks.
fn key_lock_id(handler: &str, key: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(handler.as_bytes())
        .chain_update([0u8])
        .chain_update(key.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// Serializes, across instances, the transactions that decide which job heads a key: inserting
/// jobs (blocked or not), finishing a head (promoting the next) and replaying. Without it, on
/// PostgreSQL, a job inserted while its key's head is being finished by another instance could
/// stay blocked with no head left to promote it. The locks are taken in one sorted order, so
/// two transactions never wait for each other in a cycle, and held until commit. SQLite has
/// one writer, so nothing is taken there.
pub(super) async fn lock_keys<'k>(
    conn: &mut impl WriteConn,
    dialect: Dialect,
    keys: impl IntoIterator<Item = (&'k str, &'k str)>,
) -> Result<(), sqlx::Error> {
    if !dialect.needs_key_locks() {
        return Ok(());
    }
    let ids: BTreeSet<i64> = keys.into_iter().map(|(h, k)| key_lock_id(h, k)).collect();
    if ids.is_empty() {
        return Ok(());
    }
    let mut sql = Sql::with(
        dialect,
        "SELECT pg_advisory_xact_lock(t.column1) FROM (VALUES ",
    );
    for (n, id) in ids.into_iter().enumerate() {
        sql.push(if n == 0 { "(CAST(" } else { ", (CAST(" });
        sql.bind(id)
            .push(" AS BIGINT), ")
            .bind(i64::try_from(n).unwrap_or(i64::MAX))
            .push(")");
    }
    sql.push(") AS t ORDER BY t.column2");
    conn.rows(&sql).await?;
    Ok(())
}

/// Jobs by status, and events held as suspected replays: the queue's gauges on `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueState {
    pub pending: i64,
    pub processing: i64,
    /// Failed and waiting for a retry.
    pub failed: i64,
    pub dead: i64,
    pub replay_suspected: i64,
}

/// Most job rows in one multi-row statement (10 parameters each).
const MAX_JOBS_PER_STATEMENT: usize = 128;

/// Creates pending jobs `(event_id, handler, ordering_key)`, runnable now unless an earlier
/// unfinished job of their key exists (then they start blocked). Jobs that exist already are
/// left as they are.
pub(crate) async fn insert_jobs(
    conn: &mut impl WriteConn,
    dialect: Dialect,
    jobs: &[(i64, &'static str, &str)],
    now: i64,
) -> Result<(), sqlx::Error> {
    if jobs.is_empty() {
        return Ok(());
    }
    lock_keys(&mut *conn, dialect, jobs.iter().map(|(_, h, k)| (*h, *k))).await?;
    // A job behind another of the same key in this batch is blocked by it; the first of each
    // key asks the table (a statement does not see its own rows on PostgreSQL).
    let mut seen: std::collections::HashSet<(&str, &str)> = std::collections::HashSet::new();
    let first: Vec<bool> = jobs.iter().map(|(_, h, k)| seen.insert((*h, *k))).collect();
    for (start, rows, slots) in padded_chunks(dialect, jobs.len(), MAX_JOBS_PER_STATEMENT) {
        let mut sql = Sql::with(
            dialect,
            "INSERT INTO jobs (event_id, handler, ordering_key, status, attempts, run_at, \
             created_at, updated_at, blocked) VALUES ",
        );
        for n in 0..slots {
            // Spare slots repeat the last job, which `ON CONFLICT` then skips.
            let i = start + n.min(rows - 1);
            let (event_id, handler, key) = jobs[i];
            sql.push(if n == 0 { "(" } else { ", (" });
            sql.bind(event_id)
                .push(", ")
                .bind(handler)
                .push(", ")
                .bind(key);
            sql.push(", 'pending', 0, ")
                .bind(now)
                .push(", ")
                .bind(now)
                .push(", ")
                .bind(now);
            // The same text for every row, so that the statement stays in the cache.
            sql.push(", CASE WHEN ")
                .bind(i64::from(!first[i]))
                .push(" <> 0 OR EXISTS (SELECT 1 FROM jobs e WHERE e.handler = ")
                .bind(handler)
                .push(" AND e.ordering_key = ")
                .bind(key);
            sql.push(concat!(
                " AND e.status ",
                unfinished!(),
                ") THEN 1 ELSE 0 END)"
            ));
        }
        sql.push(" ON CONFLICT (event_id, handler) DO NOTHING");
        conn.exec(&sql).await?;
    }
    Ok(())
}

/// Lets the oldest unfinished job of each key run once its head is done or dead. A key that
/// still has a head (or no unfinished job) is left as it is.
async fn promote_heads(
    conn: &mut impl WriteConn,
    dialect: Dialect,
    keys: &BTreeSet<(String, String)>,
) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    lock_keys(
        &mut *conn,
        dialect,
        keys.iter().map(|(h, k)| (h.as_str(), k.as_str())),
    )
    .await?;
    let keys: Vec<&(String, String)> = keys.iter().collect();
    for chunk in keys.chunks(128) {
        let mut sql = Sql::with(
            dialect,
            concat!(
                "UPDATE jobs SET blocked = 0 WHERE blocked = 1 AND id IN (SELECT \
                 (SELECT MIN(j.id) FROM jobs j WHERE j.handler = k.column1 \
                 AND j.ordering_key = k.column2 AND j.status ",
                unfinished!(),
                ") FROM (VALUES "
            ),
        );
        for (n, (handler, key)) in chunk.iter().enumerate() {
            sql.push(if n == 0 { "(" } else { ", (" });
            sql.bind(handler.as_str())
                .push(", ")
                .bind(key.as_str())
                .push(")");
        }
        sql.push(concat!(
            ") AS k WHERE NOT EXISTS (SELECT 1 FROM jobs h WHERE h.handler = k.column1 \
             AND h.ordering_key = k.column2 AND h.blocked = 0 AND h.status ",
            unfinished!(),
            "))"
        ));
        conn.exec(&sql).await?;
    }
    Ok(())
}

async fn record_history(
    conn: &mut impl WriteConn,
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
        conn.exec(&sql).await?;
    }
    Ok(())
}

pub(super) async fn apply_effect(
    conn: &mut impl WriteConn,
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
            conn.exec(&sql).await?;
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
/// recorded (false: the lease had moved to another worker, nothing written for it). A job that
/// is done or dead frees its key: the next job of the key becomes its head.
pub(crate) async fn finish_jobs(
    conn: &mut impl WriteConn,
    dialect: Dialect,
    finishes: &[JobFinish],
    now: i64,
) -> Result<Vec<bool>, sqlx::Error> {
    let mut recorded = vec![false; finishes.len()];
    let mut history: Vec<(i64, i64, &str, i64, Option<&str>)> = Vec::new();
    let mut touched_events = Vec::new();
    let mut freed: BTreeSet<(String, String)> = BTreeSet::new();

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
            sql.push(" RETURNING id, handler, ordering_key");
            let mut confirmed = BTreeSet::new();
            for row in conn.rows(&sql).await? {
                confirmed.insert(row.try_get::<i64, _>(0)?);
                freed.insert((row.try_get(1)?, row.try_get(2)?));
            }
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
            JobOutcome::Done { .. } | JobOutcome::Released { .. } => continue,
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
        sql.push(" RETURNING handler, ordering_key");
        if let Some(row) = conn.row(&sql).await? {
            if status == JobStatus::Dead {
                freed.insert((row.try_get(0)?, row.try_get(1)?));
            }
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

    // Jobs given back, per owner and reason (one chain's share both).
    let mut released: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    for (i, f) in finishes.iter().enumerate() {
        if let JobOutcome::Released { reason } = &f.outcome {
            released
                .entry((f.lease_owner.as_str(), reason.as_str()))
                .or_default()
                .push(i);
        }
    }
    for ((owner, reason), indexes) in released {
        let ids: Vec<i64> = indexes.iter().map(|&i| finishes[i].job_id).collect();
        let mut given_back = BTreeSet::new();
        for (job, event, status, attempt) in release_in(conn, dialect, owner, &ids, now).await? {
            given_back.insert(job);
            history.push((job, event, status, attempt, Some(reason)));
            touched_events.push(event);
        }
        for i in indexes {
            recorded[i] = given_back.contains(&finishes[i].job_id);
        }
    }

    promote_heads(conn, dialect, &freed).await?;
    record_history(conn, dialect, &history, now).await?;
    refresh_events(conn, dialect, touched_events, now).await?;
    Ok(recorded)
}

/// After a write tried again because its connection broke: the job results it found not
/// recordable (the job no longer held under the lease) that an earlier try recorded (its
/// commit reached the server and only the answer was lost). Each claim leaves a `processing`
/// entry in the job's history at its attempt; that try's entry is the one after the latest of
/// those at the result's attempt: at that attempt with the result's status, or for a job
/// given back (which gives the attempt back) at the attempt before, with the reason as its
/// error. (A job given back keeps its attempt number for its next claim, so an earlier claim
/// may have left the same entries: only those after the latest claim count.)
pub(crate) async fn own_earlier_finishes(
    conn: &mut impl WriteConn,
    dialect: Dialect,
    finishes: &[JobFinish],
    recorded: &mut [bool],
) -> Result<(), sqlx::Error> {
    let ids: BTreeSet<i64> = finishes
        .iter()
        .zip(recorded.iter())
        .filter(|(_, recorded)| !**recorded)
        .map(|(f, _)| f.job_id)
        .collect();
    let ids: Vec<i64> = ids.into_iter().collect();
    let mut histories: HashMap<i64, Vec<HistoryEntry>> = HashMap::new();
    for chunk in ids.chunks(256) {
        let mut sql = Sql::with(
            dialect,
            "SELECT job_id, attempt, status, error FROM job_history WHERE job_id IN ",
        );
        sql.bind_list(chunk.iter().copied()).push(" ORDER BY id");
        for row in conn.rows(&sql).await? {
            histories
                .entry(row.try_get(0)?)
                .or_default()
                .push(HistoryEntry {
                    attempt: row.try_get(1)?,
                    status: row.try_get(2)?,
                    error: row.try_get(3)?,
                });
        }
    }
    for (f, recorded) in finishes.iter().zip(recorded.iter_mut()) {
        if !*recorded && let Some(history) = histories.get(&f.job_id) {
            *recorded = recorded_after_its_claim(f, history);
        }
    }
    Ok(())
}

/// One entry of a job's history, as [`own_earlier_finishes`] reads it.
#[cfg_attr(test, derive(Clone))]
struct HistoryEntry {
    attempt: i64,
    status: String,
    error: Option<String>,
}

/// Whether `history` (the job's entries, oldest first) holds `f`'s result after the latest
/// claim at its attempt (see [`own_earlier_finishes`]).
fn recorded_after_its_claim(f: &JobFinish, history: &[HistoryEntry]) -> bool {
    let attempt = i64::from(f.attempt);
    let claimed = JobStatus::Processing.as_str();
    let Some(claim) = history
        .iter()
        .rposition(|e| e.status == claimed && e.attempt == attempt)
    else {
        return false;
    };
    let since = &history[claim + 1..];
    let status = match &f.outcome {
        JobOutcome::Done { .. } => JobStatus::Done,
        JobOutcome::Retry { .. } => JobStatus::Failed,
        JobOutcome::Dead { .. } => JobStatus::Dead,
        JobOutcome::Released { reason } => {
            return since.iter().any(|e| {
                e.attempt == attempt - 1
                    && e.status != claimed
                    && e.error.as_deref() == Some(reason.as_str())
            });
        }
    };
    since
        .iter()
        .any(|e| e.attempt == attempt && e.status == status.as_str())
}

/// A job given back: id, event id, its status now, attempts.
type GivenBack = (i64, i64, &'static str, i64);

/// Gives back jobs `owner` holds and will not run: pending again (failed, if an earlier attempt
/// failed), runnable now, the attempt they were claimed for not counted. The caller records
/// them in the history and refreshes their events.
async fn release_in(
    conn: &mut impl WriteConn,
    dialect: Dialect,
    owner: &str,
    job_ids: &[i64],
    now: i64,
) -> Result<Vec<GivenBack>, sqlx::Error> {
    let mut given_back = Vec::with_capacity(job_ids.len());
    for chunk in job_ids.chunks(256) {
        let mut sql = Sql::with(
            dialect,
            "UPDATE jobs SET status = CASE WHEN attempts > 1 THEN 'failed' ELSE 'pending' END, \
             attempts = attempts - 1, lease_owner = NULL, lease_until = NULL, run_at = ",
        );
        sql.bind(now).push(", updated_at = ").bind(now);
        sql.push(" WHERE status = 'processing' AND lease_owner = ")
            .bind(owner);
        sql.push(" AND id IN ").bind_list(chunk.iter().copied());
        sql.push(" RETURNING id, event_id, status, attempts");
        for r in conn.rows(&sql).await? {
            let status: String = r.try_get(2)?;
            let status = if status == JobStatus::Failed.as_str() {
                JobStatus::Failed
            } else {
                JobStatus::Pending
            };
            given_back.push((r.try_get(0)?, r.try_get(1)?, status.as_str(), r.try_get(3)?));
        }
    }
    Ok(given_back)
}

/// What a claim asks for.
#[derive(Debug, Clone)]
pub(crate) struct ClaimRequest {
    pub owner: String,
    /// Most chains (heads) taken.
    pub limit: u32,
    pub lease_until: i64,
    pub now: i64,
    pub chains: Chains,
}

/// Claims due jobs in the caller's transaction: heads of their key (pending, failed with the
/// retry time reached, or processing with an expired lease), oldest first, each with the jobs
/// its chain takes behind it, and with what their handlers need of the event.
///
/// `now` is the transaction's clock: the claim takes what is due then, at least the jobs the
/// transaction inserted (due at its `now`), however long before the request was made (its
/// lease is pushed back as much). A request made in the millisecond before would otherwise
/// leave them to the next poll.
pub(crate) async fn claim_in(
    conn: &mut impl WriteConn,
    dialect: Dialect,
    request: &ClaimRequest,
    now: i64,
) -> Result<Vec<ClaimedChain>, sqlx::Error> {
    let later;
    let request = if request.now < now {
        later = ClaimRequest {
            now,
            lease_until: request.lease_until.saturating_add(now - request.now),
            ..request.clone()
        };
        &later
    } else {
        request
    };
    let now = request.now;
    let mut sql = take_jobs(dialect, request);
    sql.push(concat!(
        " WHERE id IN (SELECT j.id FROM jobs j WHERE j.blocked = 0 AND j.status ",
        unfinished!(),
        " \
         AND ((j.status = 'processing' AND j.lease_until < "
    ));
    sql.bind(now)
        .push(") OR (j.status <> 'processing' AND j.run_at <= ")
        .bind(now);
    sql.push(")) ORDER BY j.id LIMIT ")
        .bind(i64::from(request.limit))
        .push(" ")
        .push(dialect.claim_lock());
    sql.push(") RETURNING id, event_id, handler, attempts, ordering_key");
    let mut heads: Vec<(Taken, String)> = conn
        .rows(&sql)
        .await?
        .iter()
        .map(|r| {
            Ok((
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?),
                r.try_get(4)?,
            ))
        })
        .collect::<Result<_, sqlx::Error>>()?;
    if heads.is_empty() {
        return Ok(Vec::new());
    }
    heads.sort_by_key(|h| h.0.0);
    let mut chains: Vec<Vec<Taken>> = Vec::with_capacity(heads.len());
    for (head, key) in heads {
        let limit = request.chains.limit(&head.2);
        let mut chain = vec![head];
        if limit > 1 {
            let behind = take_behind(conn, dialect, request, &chain[0], &key, limit - 1).await?;
            chain.extend(behind);
        }
        chains.push(chain);
    }
    let claimed: Vec<&Taken> = chains.iter().flatten().collect();
    let history: Vec<_> = claimed
        .iter()
        .map(|(job, event, _, attempt)| (*job, *event, "processing", *attempt, None))
        .collect();
    record_history(&mut *conn, dialect, &history, now).await?;
    let event_ids: BTreeSet<i64> = claimed.iter().map(|c| c.1).collect();
    let mut sql = Sql::with(
        dialect,
        "UPDATE events SET status = 'processing', updated_at = ",
    );
    sql.bind(now)
        .push(" WHERE status IN ('pending', 'failed') AND id IN ");
    sql.bind_list(event_ids.iter().copied());
    conn.exec(&sql).await?;

    let mut sql = Sql::with(
        dialect,
        "SELECT id, delivery_id, event, action, repository, organization, installation_id, \
         sender, ordering_key, received_at, content_type, body FROM events WHERE id IN ",
    );
    sql.bind_list(event_ids);
    let mut events = HashMap::new();
    for r in conn.rows(&sql).await? {
        events.insert(r.try_get::<i64, _>(0)?, r);
    }
    let mut claimed_chains = Vec::with_capacity(chains.len());
    for chain in chains {
        let mut jobs = Vec::with_capacity(chain.len());
        for (job_id, event_id, handler, attempts) in chain {
            // Jobs reference their event (foreign key): it is there.
            let Some(r) = events.get(&event_id) else {
                continue;
            };
            jobs.push(ClaimedJob {
                job_id,
                event_id,
                handler,
                attempt: u32::try_from(attempts).unwrap_or(u32::MAX),
                delivery_id: r.try_get(1)?,
                event: r.try_get(2)?,
                action: r.try_get(3)?,
                repository: r.try_get(4)?,
                organization: r.try_get(5)?,
                installation_id: r.try_get(6)?,
                sender: r.try_get(7)?,
                ordering_key: r.try_get(8)?,
                received_at: r.try_get(9)?,
                stored: Some((r.try_get(10)?, r.try_get(11)?)),
            });
        }
        claimed_chains.push(jobs);
    }
    Ok(claimed_chains)
}

/// The start of a statement that takes jobs for the claim's owner (`… WHERE` follows).
fn take_jobs<'a>(dialect: Dialect, request: &'a ClaimRequest) -> Sql<'a> {
    let mut sql = Sql::with(
        dialect,
        "UPDATE jobs SET status = 'processing', lease_owner = ",
    );
    sql.bind(request.owner.as_str());
    sql.push(", lease_until = ").bind(request.lease_until);
    sql.push(", attempts = attempts + 1, updated_at = ")
        .bind(request.now);
    sql
}

/// A job a claim took: id, event id, handler, attempt number.
type Taken = (i64, i64, String, i64);

/// Takes up to `limit` jobs of `head`'s key to run after it, in the order the key would run
/// them once the head is finished (its unfinished jobs by id, as [`promote_heads`] picks
/// them): the jobs before the first that is not ready to run now (failed and waiting for a
/// retry, or claimed by a worker whose lease still runs) — nothing may overtake it.
async fn take_behind(
    conn: &mut impl WriteConn,
    dialect: Dialect,
    request: &ClaimRequest,
    head: &Taken,
    key: &str,
    limit: u32,
) -> Result<Vec<Taken>, sqlx::Error> {
    let now = request.now;
    let mut sql = Sql::with(
        dialect,
        "SELECT id, CASE WHEN blocked = 1 AND ((status = 'pending' AND run_at <= ",
    );
    sql.bind(now)
        .push(") OR (status = 'processing' AND lease_until < ")
        .bind(now);
    sql.push(")) THEN 1 ELSE 0 END FROM jobs WHERE handler = ")
        .bind(head.2.as_str())
        .push(" AND ordering_key = ")
        .bind(key);
    sql.push(concat!(" AND status ", unfinished!(), " AND id <> "))
        .bind(head.0)
        .push(" ORDER BY id LIMIT ")
        .bind(i64::from(limit))
        .push(" ")
        .push(dialect.chain_lock());
    let mut ready = Vec::new();
    for row in conn.rows(&sql).await? {
        if row.try_get::<i64, _>(1)? == 0 {
            break;
        }
        ready.push(row.try_get::<i64, _>(0)?);
    }
    if ready.is_empty() {
        return Ok(Vec::new());
    }
    let mut sql = take_jobs(dialect, request);
    sql.push(" WHERE id IN ").bind_list(ready.iter().copied());
    sql.push(" RETURNING id, event_id, handler, attempts");
    let mut taken: HashMap<i64, Taken> = HashMap::new();
    for r in conn.rows(&sql).await? {
        let t: Taken = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
        taken.insert(t.0, t);
    }
    Ok(ready.iter().filter_map(|id| taken.remove(id)).collect())
}

impl Store {
    /// Claims up to `limit` chains of runnable jobs (see [`Chains`]) for `owner` until
    /// `lease_until`.
    pub async fn claim_jobs(
        &self,
        owner: &str,
        limit: u32,
        lease_until: i64,
        now: i64,
        chains: &Chains,
    ) -> Result<Vec<ClaimedChain>, StoreError> {
        let request = ClaimRequest {
            owner: owner.to_owned(),
            limit,
            lease_until,
            now,
            chains: chains.clone(),
        };
        // On SQLite the claim joins the writer's next transaction (one write connection, one
        // commit for everything queued); on PostgreSQL claims run beside the writer.
        let claimed = if self.inner.dialect.claims_through_writer() {
            self.inner.writer.claim(request).await?
        } else {
            self.bounded(async {
                let mut conn = self.inner.write.acquire().await?;
                let mut tx = super::begin_write(&mut conn, self.inner.dialect, false).await?;
                let claimed =
                    claim_in(&mut *tx, self.inner.dialect, &request, super::now_ms()).await?;
                tx.commit().await?;
                Ok(claimed)
            })
            .await?
        };
        Ok(claimed)
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
        Ok(sql.execute(self.inner.writes()).await?.rows_affected())
    }

    /// Gives back jobs a worker will not finish (shutdown): they run again as soon as another
    /// worker looks, and the interrupted attempt does not count.
    pub async fn release_jobs(&self, owner: &str, job_ids: &[i64]) -> Result<u64, StoreError> {
        self.bounded(async {
            if job_ids.is_empty() {
                return Ok(0);
            }
            let now = super::now_ms();
            let mut tx = self.write_transaction().await?;
            let dialect = self.inner.dialect;
            let released = release_in(&mut *tx, dialect, owner, job_ids, now).await?;
            let history: Vec<_> = released
                .iter()
                .map(|&(job, event, status, attempt)| {
                    (job, event, status, attempt, Some("released at shutdown"))
                })
                .collect();
            record_history(&mut *tx, dialect, &history, now).await?;
            refresh_events(&mut *tx, dialect, released.iter().map(|r| r.1), now).await?;
            tx.commit().await?;
            self.sync().await?;
            Ok(released.len() as u64)
        })
        .await
    }

    /// Queues an event's jobs again. `subscribed` are the handlers that take this event now.
    pub async fn replay_event(
        &self,
        event_id: i64,
        subscribed: &[&'static str],
        mode: ReplayMode,
    ) -> Result<ReplayReport, StoreError> {
        self.bounded(async {
            let now = super::now_ms();
            let mut tx = self.write_transaction().await?;
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
            sql.bind(event_id).push(" ORDER BY id");
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
            let keys: Vec<(&str, &str)> = existing
                .iter()
                .map(|e| (e.1.as_str(), key.as_str()))
                .chain(subscribed.iter().map(|h| (*h, key.as_str())))
                .collect();
            lock_keys(&mut *tx, self.inner.dialect, keys).await?;
            if !reset.is_empty() {
                // A finished job queued again waits behind any unfinished job of its key; one that
                // is still unfinished keeps its place.
                let mut sql = Sql::with(
                    self.inner.dialect,
                    concat!(
                        "UPDATE jobs SET blocked = CASE WHEN status ",
                        unfinished!(),
                        " THEN blocked \
                         WHEN EXISTS (SELECT 1 FROM jobs e WHERE e.handler = jobs.handler \
                         AND e.ordering_key = jobs.ordering_key AND e.status ",
                        unfinished!(),
                        " \
                         AND e.id <> jobs.id) THEN 1 ELSE 0 END, \
                         status = 'pending', attempts = 0, lease_owner = NULL, \
                         lease_until = NULL, last_error = NULL, run_at = "
                    ),
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
                insert_jobs(&mut *tx, self.inner.dialect, &missing, now).await?;
                report.queued.extend(missing.iter().map(|m| m.1.to_owned()));
            }
            record_history(&mut *tx, self.inner.dialect, &history, now).await?;
            refresh_events(&mut *tx, self.inner.dialect, [event_id], now).await?;
            let mut sql = Sql::with(self.inner.dialect, "SELECT status FROM events WHERE id = ");
            sql.bind(event_id);
            report.status = match sql.fetch_optional(&mut *tx).await? {
                Some(r) => r.try_get(0)?,
                None => EventStatus::Ignored.as_str().to_owned(),
            };
            tx.commit().await?;
            self.sync().await?;
            Ok(report)
        })
        .await
    }

    /// Ids of events with at least one dead job, oldest first.
    pub async fn dead_event_ids(&self, limit: u32) -> Result<Vec<i64>, StoreError> {
        let mut sql = Sql::with(
            self.inner.dialect,
            "SELECT DISTINCT event_id FROM jobs WHERE status = 'dead' ORDER BY event_id LIMIT ",
        );
        sql.bind(i64::from(limit));
        Ok(sql
            .fetch_all(self.inner.reads())
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()?)
    }

    /// What the queue holds now: jobs by status (all but done) and events held as suspected
    /// replays. Each count reads an index whose condition matches it (the unfinished jobs',
    /// the dead jobs', the events' status), never the done jobs.
    pub async fn queue_state(&self) -> Result<QueueState, StoreError> {
        let mut state = QueueState::default();
        let unfinished = sqlx::query(concat!(
            "SELECT status, COUNT(*) FROM jobs WHERE status ",
            unfinished!(),
            " GROUP BY status"
        ))
        .fetch_all(self.inner.reads())
        .await?;
        for row in &unfinished {
            let count: i64 = row.try_get(1)?;
            match row.try_get::<String, _>(0)?.as_str() {
                "pending" => state.pending = count,
                "processing" => state.processing = count,
                "failed" => state.failed = count,
                other => {
                    return Err(StoreError::Corrupt(format!(
                        "{count} job(s) with the unknown status {other:?}"
                    )));
                }
            }
        }
        let count = |sql: &'static str| async move {
            let row = sqlx::query(sql).fetch_one(self.inner.reads()).await?;
            Ok::<i64, StoreError>(row.try_get(0)?)
        };
        state.dead = count("SELECT COUNT(*) FROM jobs WHERE status = 'dead'").await?;
        state.replay_suspected =
            count("SELECT COUNT(*) FROM events WHERE status = 'replay_suspected'").await?;
        Ok(state)
    }

    /// Number of jobs not yet finished (pending, processing, failed).
    pub async fn unfinished_jobs(&self) -> Result<i64, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT COUNT(*) FROM jobs WHERE status ",
            unfinished!()
        ))
        .fetch_one(self.inner.reads())
        .await?;
        Ok(row.try_get(0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finish(attempt: u32, outcome: JobOutcome) -> JobFinish {
        JobFinish {
            job_id: 7,
            event_id: 3,
            lease_owner: "worker".into(),
            attempt,
            outcome,
        }
    }

    fn entry(attempt: i64, status: &str, error: Option<&str>) -> HistoryEntry {
        HistoryEntry {
            attempt,
            status: status.into(),
            error: error.map(str::to_owned),
        }
    }

    fn released(reason: &str) -> JobOutcome {
        JobOutcome::Released {
            reason: reason.into(),
        }
    }

    #[test]
    fn a_result_counts_as_recorded_only_after_its_own_claim() {
        let done = finish(2, JobOutcome::Done { effects: vec![] });
        let claimed = [
            entry(1, "processing", None),
            entry(1, "failed", Some("boom")),
        ];
        let claimed_again = [&claimed[..], &[entry(2, "processing", None)]].concat();
        assert!(!recorded_after_its_claim(&done, &claimed_again));
        let finished = [&claimed_again[..], &[entry(2, "done", None)]].concat();
        assert!(recorded_after_its_claim(&done, &finished));
        let retry = finish(
            1,
            JobOutcome::Retry {
                error: "boom".into(),
                run_at: 0,
            },
        );
        assert!(!recorded_after_its_claim(&retry, &claimed[..1]));
        assert!(recorded_after_its_claim(&retry, &claimed));
        let dead = finish(
            2,
            JobOutcome::Dead {
                error: "gone".into(),
            },
        );
        assert!(!recorded_after_its_claim(&dead, &finished));
        assert!(!recorded_after_its_claim(&done, &[]));
    }

    #[test]
    fn a_job_given_back_counts_as_recorded_by_its_entry_after_its_own_claim() {
        let reason = "not run: job 6 ahead of it on its key did not succeed";
        let given_back = [
            entry(1, "processing", None),
            entry(0, "pending", Some(reason)),
        ];
        assert!(recorded_after_its_claim(
            &finish(1, released(reason)),
            &given_back
        ));
        // Claimed again at the same attempt: the earlier claim's entry is not this one's.
        let claimed_again = [&given_back[..], &[entry(1, "processing", None)]].concat();
        assert!(!recorded_after_its_claim(
            &finish(1, released(reason)),
            &claimed_again
        ));
        let other_reason = "not run: job 5 ahead of it on its key did not succeed";
        assert!(!recorded_after_its_claim(
            &finish(1, released(other_reason)),
            &given_back
        ));
        // Given back after a failed attempt: failed again, at the attempt before.
        let after_a_failure = [
            entry(1, "processing", None),
            entry(1, "failed", Some("boom")),
            entry(2, "processing", None),
            entry(1, "failed", Some(reason)),
        ];
        assert!(recorded_after_its_claim(
            &finish(2, released(reason)),
            &after_a_failure
        ));
        assert!(!recorded_after_its_claim(
            &finish(2, released("shutdown")),
            &after_a_failure
        ));
    }
}
