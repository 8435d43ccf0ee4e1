//! Backfill runs shared by every instance: one run per repository at a time, whoever starts it
//! (`POST /api/v1/metrics/backfill` on any instance, or `hookdock metrics backfill`), with its
//! status in the database (`backfill_runs`), so any instance answers it.
//!
//! A run claims its repository with a lease and renews it, with its progress, every second. A
//! start while the lease holds is refused with the running run's status. A run stopped in an
//! orderly way (shutdown of the instance, Ctrl-C of the CLI) is recorded as interrupted; one
//! whose process died lets its lease lapse, is reported as interrupted from then on, and may be
//! taken over by a new start. A run that finds its lease taken over stops. Whichever way a run
//! ended, the next one resumes from the progress [`super::Backfill`] saved.
//!
//! Nothing here talks to GitHub or builds SQL; times come from the clock it is given.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Backfill, BackfillError, BackfillProgress, BackfillReport, split_repo};
use crate::clock::{Clock, unix_ms};
use crate::config::MetricsSettings;
use crate::github::GithubClient;
use crate::store::{NewBackfillRun, RunEnd, RunProgress, Store, StoreError, rfc3339};

/// How long a run's claim holds without renewal: the longest a dead run shows as running.
const LEASE: Duration = Duration::from_secs(60);
/// How often a run renews its lease and records its progress.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Where a repository's latest backfill stands, as `GET /api/v1/metrics/backfill/{owner}/{name}`
/// shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BackfillStatus {
    /// As requested (`owner/name`).
    pub repo: String,
    /// The span asked for, e.g. `90d`.
    pub since: String,
    /// `running`, `done`, `failed`, or `interrupted` (stopped before the end: an instance shut
    /// down, the CLI was stopped, or its process died and its lease lapsed).
    pub state: String,
    /// `api` or `cli`.
    pub started_by: String,
    pub started_at: String,
    /// Last sign of life: progress recorded, or the end.
    pub updated_at: String,
    pub finished_at: Option<String>,
    /// Pull requests listed so far.
    pub listed: i64,
    /// Pull requests done out of `total` (known once listing ended).
    pub done: i64,
    pub total: i64,
    pub report: Option<serde_json::Value>,
    pub error: Option<String>,
}

/// The latest backfill of `repo` (`owner/name`, any case) by anyone, as of `clock`'s now.
pub async fn backfill_status(
    store: &Store,
    clock: &dyn Clock,
    repo: &str,
) -> Result<Option<BackfillStatus>, StoreError> {
    let Some(row) = store.backfill_run(&repo_key(repo)).await? else {
        return Ok(None);
    };
    let now = unix_ms(clock.now());
    let lapsed = row.state == "running" && row.lease_until.is_none_or(|until| until < now);
    let report = row
        .report
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("backfill report of {}: {e}", row.repo)))?;
    let (state, error) = if lapsed {
        (
            "interrupted".to_owned(),
            Some(format!(
                "the process running it stopped without finishing (no sign of life since {}); start the same backfill again to resume",
                rfc3339(row.updated)
            )),
        )
    } else {
        (row.state, row.error)
    };
    Ok(Some(BackfillStatus {
        repo: row.repo,
        since: row.since,
        state,
        started_by: row.started_by,
        started_at: rfc3339(row.started_at),
        updated_at: rfc3339(row.updated),
        finished_at: row.finished_at.map(rfc3339),
        listed: row.progress.listed,
        done: row.progress.done,
        total: row.progress.total,
        report,
        error,
    }))
}

fn repo_key(repo: &str) -> String {
    repo.to_ascii_lowercase()
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

/// A repository claimed for one run.
#[derive(Debug)]
pub struct RunClaim {
    repo: String,
    key: String,
    run_id: String,
}

/// Claims `repo` for a run started by `started_by` (`api` or `cli`) for `since_text`, unless
/// one is running: then [`BackfillError::AlreadyRunning`] with its status.
pub async fn claim(
    store: &Store,
    clock: &dyn Clock,
    repo: &str,
    since_text: &str,
    started_by: &str,
) -> Result<RunClaim, BackfillError> {
    split_repo(repo)?;
    let key = repo_key(repo);
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let now = unix_ms(clock.now());
    let claimed = store
        .claim_backfill_run(&NewBackfillRun {
            repo_key: &key,
            repo,
            run_id: &run_id,
            started_by,
            since: since_text,
            now,
            lease_until: now.saturating_add(ms(LEASE)),
        })
        .await?;
    if !claimed {
        // Gone meanwhile: the caller may try again.
        let running = backfill_status(store, clock, repo).await?.ok_or_else(|| {
            BackfillError::Interrupted(format!("the running backfill of {repo} just ended"))
        })?;
        return Err(BackfillError::AlreadyRunning(Box::new(running)));
    }
    Ok(RunClaim {
        repo: repo.to_owned(),
        key,
        run_id,
    })
}

/// How the loop around a run ended.
enum Ended {
    Finished(Result<BackfillReport, BackfillError>),
    Cancelled,
    TakenOver,
}

impl RunClaim {
    /// Runs the claimed backfill, renewing the lease with its progress, until it ends or
    /// `cancel` fires; records the end (done with its report, failed with its error,
    /// interrupted). `progress` sees every step, as [`Backfill::run`]'s does.
    pub async fn run(
        self,
        backfill: &Backfill<'_>,
        since: Duration,
        cancel: &CancellationToken,
        progress: &mut (dyn FnMut(BackfillProgress) + Send),
    ) -> Result<BackfillReport, BackfillError> {
        let seen = Arc::new(Mutex::new(RunProgress::default()));
        let ended = {
            let tracked = Arc::clone(&seen);
            let mut track = move |p: BackfillProgress| {
                let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
                let mut s = tracked.lock().unwrap_or_else(PoisonError::into_inner);
                match p {
                    BackfillProgress::Listed { pulls } => s.listed = count(pulls),
                    BackfillProgress::Pulls { done, total } => {
                        s.done = count(done);
                        s.total = count(total);
                    }
                }
                drop(s);
                progress(p);
            };
            let run = backfill.run(&self.repo, since, &mut track);
            tokio::pin!(run);
            let mut beat = tokio::time::interval(HEARTBEAT);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    result = &mut run => break Ended::Finished(result),
                    () = cancel.cancelled() => break Ended::Cancelled,
                    _ = beat.tick() => {
                        let now = unix_ms(backfill.clock.now());
                        let renewed = backfill
                            .store
                            .renew_backfill_run(
                                &self.key,
                                &self.run_id,
                                current(&seen),
                                now.saturating_add(ms(LEASE)),
                                now,
                            )
                            .await;
                        match renewed {
                            Ok(true) => {}
                            Ok(false) => break Ended::TakenOver,
                            // The lease has slack for a few missed renewals.
                            Err(error) => tracing::warn!(repo = %self.repo, %error, "could not renew the backfill's lease"),
                        }
                    }
                }
            }
        };
        let done = current(&seen);
        match ended {
            Ended::Finished(Ok(report)) => {
                let json = serde_json::to_string(&report).unwrap_or_else(|_| "null".to_owned());
                self.record(backfill, RunEnd::Done { report: &json }, done)
                    .await;
                Ok(report)
            }
            Ended::Finished(Err(e)) => {
                let error = e.to_string();
                self.record(backfill, RunEnd::Failed { error: &error }, done)
                    .await;
                Err(e)
            }
            Ended::Cancelled => {
                let error = "stopped before the end (shutdown or Ctrl-C)";
                self.record(backfill, RunEnd::Interrupted { error }, done)
                    .await;
                Err(BackfillError::Interrupted(error.to_owned()))
            }
            Ended::TakenOver => Err(BackfillError::Interrupted(
                "its lease lapsed and another run of the repository took over".to_owned(),
            )),
        }
    }

    /// Records the end; a failure to record it only leaves the status to the lease.
    async fn record(&self, backfill: &Backfill<'_>, end: RunEnd<'_>, done: RunProgress) {
        let now = unix_ms(backfill.clock.now());
        match backfill
            .store
            .finish_backfill_run(&self.key, &self.run_id, end, done, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(repo = %self.repo, "the backfill's status belongs to another run now")
            }
            Err(error) => {
                tracing::warn!(repo = %self.repo, %error, "could not record the end of the backfill")
            }
        }
    }
}

fn current(seen: &Mutex<RunProgress>) -> RunProgress {
    *seen.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a background backfill runs with (owned, as it outlives the request).
pub struct BackfillTask {
    pub store: Store,
    pub github: GithubClient,
    pub clock: Arc<dyn Clock>,
    pub settings: MetricsSettings,
}

/// The background backfills this process started, so that a shutdown stops them in an orderly
/// way (recorded as interrupted) instead of leaving them to their leases.
#[derive(Debug, Default)]
pub struct BackfillRuns {
    local: Mutex<HashMap<String, (CancellationToken, tokio::task::JoinHandle<()>)>>,
}

impl BackfillRuns {
    /// Claims `repo` and backfills it in the background; the new run's status, or
    /// [`BackfillError::AlreadyRunning`].
    pub async fn start(
        self: &Arc<Self>,
        task: BackfillTask,
        repo: &str,
        since_text: &str,
        since: Duration,
    ) -> Result<BackfillStatus, BackfillError> {
        let claim = claim(&task.store, task.clock.as_ref(), repo, since_text, "api").await?;
        let status = backfill_status(&task.store, task.clock.as_ref(), repo)
            .await?
            .ok_or_else(|| {
                BackfillError::Interrupted(format!("the backfill of {repo} vanished"))
            })?;
        let cancel = CancellationToken::new();
        let run_id = claim.run_id.clone();
        let runs = Arc::clone(self);
        let stop = cancel.clone();
        let id = run_id.clone();
        let handle = tokio::spawn(async move {
            let backfill = Backfill {
                store: &task.store,
                github: &task.github,
                clock: task.clock.as_ref(),
                settings: &task.settings,
            };
            let repo = claim.repo.clone();
            match claim.run(&backfill, since, &stop, &mut |_| {}).await {
                Ok(report) => {
                    tracing::info!(repo = %report.repo, fetched = report.fetched, "backfill done")
                }
                Err(error) => tracing::warn!(%repo, %error, "backfill ended early"),
            }
            runs.with(|local| local.remove(&id));
        });
        self.with(|local| local.insert(run_id, (cancel, handle)));
        Ok(status)
    }

    /// Stops this process's background backfills and waits until each has recorded that it
    /// was interrupted.
    pub async fn shutdown(&self) {
        let running: Vec<_> = self.with(|local| local.drain().map(|(_, run)| run).collect());
        for (cancel, _) in &running {
            cancel.cancel();
        }
        for (_, handle) in running {
            if let Err(error) = handle.await {
                tracing::warn!(%error, "a background backfill ended abnormally");
            }
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut HashMap<String, (CancellationToken, tokio::task::JoinHandle<()>)>) -> T,
    ) -> T {
        // A panic while holding the lock leaves plain data behind: keep using it.
        f(&mut self.local.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
