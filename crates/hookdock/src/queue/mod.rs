//! The worker side of the queue: claim due jobs with a lease, run their handlers, record the
//! outcome, retry with exponential backoff and jitter, and give up (`dead`) after the configured
//! attempts. Several instances on one PostgreSQL database share the work safely: claims skip
//! rows another instance is taking, and a result is only recorded while its lease is held.
//!
//! A claim may hand a worker a chain of one key's jobs (see [`crate::store::Chains`]): the
//! worker runs them in order, stops at the first that does not succeed, and records the
//! results together, giving back the jobs it did not run.
//!
//! [`Worker::run_once`] is one deterministic step (claim, run, record) for tests;
//! [`Worker::run`] loops until shutdown, then lets running jobs finish within the grace period
//! and releases the leases of any it had to abandon.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::QueueSettings;
use crate::handlers::{HandlerError, HandlerRegistry, JobContext};
use crate::store::{
    Chains, ClaimedChain, ClaimedJob, JobFinish, JobOutcome, SLOTS_CLOSED, Store, StoreError,
    free_slots, now_ms,
};

/// Exponential backoff with jitter: attempt n waits between half and all of
/// `min(cap, base * 2^(n-1))`, so retries of many jobs spread out instead of arriving together.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    pub max_attempts: u32,
}

impl RetryPolicy {
    pub fn from_settings(s: &QueueSettings) -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(s.retry_base_ms),
            cap: Duration::from_secs(s.retry_cap_secs),
            max_attempts: s.max_attempts,
        }
    }

    /// Delay before the attempt after `attempt` (1-based) failed.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let exp = attempt.saturating_sub(1).min(32);
        let full = self.base.saturating_mul(1u32 << exp.min(31)).min(self.cap);
        let half = full / 2;
        let jitter_ms = rng.random_range(0..=half.as_millis().max(1) as u64);
        half + Duration::from_millis(jitter_ms).min(full - half)
    }

    /// The outcome of a failed attempt.
    pub fn on_failure(&self, attempt: u32, error: &HandlerError, now: i64) -> JobOutcome {
        match error {
            HandlerError::Permanent(message) => JobOutcome::Dead {
                error: message.clone(),
            },
            HandlerError::Retry { message, .. } if attempt >= self.max_attempts => {
                JobOutcome::Dead {
                    error: format!("gave up after {attempt} attempts: {message}"),
                }
            }
            HandlerError::Retry {
                message,
                retry_after,
            } => {
                let wait = retry_after.unwrap_or_else(|| self.delay(attempt, &mut rand::rng()));
                JobOutcome::Retry {
                    error: message.clone(),
                    run_at: now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)),
                }
            }
        }
    }
}

/// The first pause before a failed write of job results is tried again, and the longest.
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(50);
const RECORD_RETRY_CAP: Duration = Duration::from_secs(5);

pub struct Worker {
    store: Store,
    registry: HandlerRegistry,
    policy: RetryPolicy,
    /// Identifies this instance's leases.
    owner: String,
    concurrency: usize,
    lease: Duration,
    poll: Duration,
    job_timeout: Duration,
    chains: Chains,
    wake: Arc<Notify>,
}

impl Worker {
    pub fn new(
        store: Store,
        registry: HandlerRegistry,
        settings: &QueueSettings,
        wake: Arc<Notify>,
    ) -> Worker {
        Worker {
            store,
            policy: RetryPolicy::from_settings(settings),
            owner: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
            concurrency: settings.workers.max(1),
            lease: Duration::from_secs(settings.lease_secs),
            poll: Duration::from_millis(settings.poll_interval_ms),
            job_timeout: Duration::from_secs(settings.job_timeout_secs),
            chains: registry.chains(settings.chain_max),
            registry,
            wake,
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn lease_until(&self) -> i64 {
        now_ms() + i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX / 2)
    }

    async fn claim(&self, limit: usize) -> Result<Vec<ClaimedChain>, StoreError> {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        self.store
            .claim_jobs(
                &self.owner,
                limit,
                self.lease_until(),
                now_ms(),
                &self.chains,
            )
            .await
    }

    /// Claims what is due (up to the concurrency, in chains), runs it, records the results.
    /// Returns how many jobs were claimed.
    pub async fn run_once(self: &Arc<Self>) -> Result<usize, StoreError> {
        let chains = self.claim(self.concurrency).await?;
        let n = chains.iter().map(Vec::len).sum();
        let mut set = JoinSet::new();
        for chain in chains {
            let worker = Arc::clone(self);
            set.spawn(async move { worker.execute(chain, None).await });
        }
        while let Some(done) = set.join_next().await {
            if let Ok(Err(e)) = done {
                return Err(e);
            }
        }
        Ok(n)
    }

    /// Runs a chain's jobs in order until one does not succeed, then records their outcomes
    /// in one go and gives back the jobs it did not run. `slots` (the free slots of a running
    /// worker) gets the chain's slot back before the outcomes are recorded, so the writer can
    /// hand the slot the next jobs of the key in the same transaction.
    async fn execute(
        &self,
        chain: ClaimedChain,
        slots: Option<&AtomicUsize>,
    ) -> Result<(), StoreError> {
        let mut finishes = Vec::with_capacity(chain.len());
        let mut jobs = chain.iter();
        for job in jobs.by_ref() {
            let outcome = self.run_job(job).await;
            let done = matches!(outcome, JobOutcome::Done { .. });
            finishes.push(self.finish(job, outcome));
            if !done {
                break;
            }
        }
        for job in jobs {
            let reason = format!(
                "not run: job {} ahead of it on its key did not succeed",
                finishes.last().map_or(0, |f: &JobFinish| f.job_id)
            );
            finishes.push(self.finish(job, JobOutcome::Released { reason }));
        }
        if let Some(slots) = slots {
            free_slots(slots, 1);
        }
        // One result per job of the chain, in its order.
        let recorded = self.record(finishes).await?;
        for (job, recorded) in chain.iter().zip(recorded) {
            if !recorded {
                tracing::warn!(
                    job_id = job.job_id,
                    "lease expired before the job finished; its result was discarded"
                );
                metrics::counter!("hookdock_job_results_discarded_total", "handler" => job.handler.clone())
                    .increment(1);
            }
        }
        Ok(())
    }

    /// Records a chain's results. A write the database refuses (a full disk, a lost
    /// connection) is tried again with backoff for up to a lease's time, while the running
    /// worker keeps renewing the chain's leases: a job whose handler ran is not run a second
    /// time, nor its key held back until its lease expires, only because its result could not
    /// be written at once. A result written after the lease passed to another worker is
    /// discarded as usual.
    async fn record(&self, finishes: Vec<JobFinish>) -> Result<Vec<bool>, StoreError> {
        let deadline = tokio::time::Instant::now() + self.lease;
        let mut pause = RECORD_RETRY_FIRST;
        loop {
            match self.store.finish_jobs(finishes.clone()).await {
                // A refused transaction may go through later; a closed or failed writer won't.
                Err(StoreError::Database(error))
                    if tokio::time::Instant::now() + pause < deadline =>
                {
                    tracing::warn!(
                        %error,
                        retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                        "recording job results failed; trying again"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RECORD_RETRY_CAP);
                }
                result => return result,
            }
        }
    }

    fn finish(&self, job: &ClaimedJob, outcome: JobOutcome) -> JobFinish {
        JobFinish {
            job_id: job.job_id,
            event_id: job.event_id,
            lease_owner: self.owner.clone(),
            attempt: job.attempt,
            outcome,
        }
    }

    /// Runs one job's handler (within the job timeout); returns how the attempt ended.
    async fn run_job(&self, job: &ClaimedJob) -> JobOutcome {
        let span = tracing::info_span!(
            "job",
            job_id = job.job_id,
            handler = %job.handler,
            delivery = %job.delivery_id,
            repository = job.repository.as_deref().unwrap_or("-"),
            attempt = job.attempt,
        );
        async {
            let started = std::time::Instant::now();
            let result = match self.registry.get(&job.handler) {
                Some(handler) => {
                    let ctx = JobContext {
                        job,
                        store: &self.store,
                    };
                    match tokio::time::timeout(self.job_timeout, handler.handle(&ctx)).await {
                        Ok(result) => result,
                        Err(_) => Err(HandlerError::Retry {
                            message: format!(
                                "handler timed out after {} s",
                                self.job_timeout.as_secs()
                            ),
                            retry_after: None,
                        }),
                    }
                }
                None => Err(HandlerError::Permanent(format!(
                    "handler `{}` is not enabled on this instance; enable it and replay the event",
                    job.handler
                ))),
            };
            let outcome = match result {
                Ok(effects) => JobOutcome::Done { effects },
                Err(error) => self.policy.on_failure(job.attempt, &error, now_ms()),
            };
            let label = match &outcome {
                JobOutcome::Done { .. } => "done",
                JobOutcome::Retry { .. } => "failed",
                JobOutcome::Dead { .. } => "dead",
                JobOutcome::Released { .. } => "released",
            };
            match &outcome {
                JobOutcome::Done { .. } => tracing::debug!("job done"),
                JobOutcome::Retry { error, .. } => tracing::warn!(%error, "job failed; will retry"),
                JobOutcome::Dead { error } => tracing::error!(%error, "job dead"),
                JobOutcome::Released { .. } => {}
            }
            metrics::counter!("hookdock_jobs_total", "handler" => job.handler.clone(), "outcome" => label)
                .increment(1);
            metrics::histogram!("hookdock_job_seconds", "handler" => job.handler.clone())
                .record(started.elapsed().as_secs_f64());
            outcome
        }
        .instrument(span)
        .await
    }

    /// Works until `shutdown`, then waits up to `grace` for running jobs and releases the rest.
    ///
    /// Where the store hands jobs over as it inserts or unblocks them (SQLite), the worker
    /// never claims for itself: at start, when woken (a replay) and at each poll (retries that
    /// became due, leases of a dead instance) it asks the store to hand over what is due, so
    /// that only the store takes its free slots. Elsewhere it claims at those times and
    /// whenever a job ends.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        let slots = Arc::new(AtomicUsize::new(self.concurrency));
        let mut pushed = match self
            .store
            .attach_worker(
                &self.owner,
                self.lease,
                Arc::clone(&slots),
                self.chains.clone(),
            )
            .await
        {
            Ok(rx) => rx,
            Err(error) => {
                tracing::error!(%error, "cannot receive jobs from the store; claiming them instead");
                None
            }
        };
        let mut running = Running::default();
        let mut renew = tokio::time::interval(self.lease / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut claim_backoff = Duration::ZERO;
        let mut claim_now = true;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if claim_now && claim_backoff.is_zero() {
                claim_now = false;
                if pushed.is_some() {
                    if let Err(error) = self.store.offer_jobs().await {
                        tracing::error!(%error, "asking for jobs failed");
                        claim_backoff = self.poll;
                    }
                } else {
                    let free = take_slots(&slots);
                    if free > 0 {
                        match self.claim(free).await {
                            Ok(chains) => {
                                free_slots(&slots, free - chains.len().min(free));
                                for chain in chains {
                                    running.start(&self, &slots, chain);
                                }
                            }
                            Err(error) => {
                                free_slots(&slots, free);
                                tracing::error!(%error, "claiming jobs failed");
                                claim_backoff = self.poll;
                            }
                        }
                    }
                }
            }
            let pause = if claim_backoff.is_zero() {
                self.poll
            } else {
                claim_backoff
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(joined) = running.set.join_next_with_id(), if !running.set.is_empty() => {
                    let joined = running.ended(joined);
                    match joined {
                        Ok((_, Err(error))) => tracing::error!(%error, "recording a job result failed; it will run again when its lease expires"),
                        // A task that panicked or was aborted did not give its slot back,
                        // nor sent a result whose commit would fill it.
                        Err(_) => {
                            free_slots(&slots, 1);
                            claim_now = true;
                        }
                        Ok(_) => {}
                    }
                    if pushed.is_none() {
                        claim_now = true;
                    }
                }
                Some(chain) = recv(&mut pushed) => running.start(&self, &slots, chain),
                _ = self.wake.notified() => claim_now = true,
                _ = tokio::time::sleep(pause) => {
                    claim_backoff = Duration::ZERO;
                    claim_now = true;
                }
                _ = renew.tick() => {
                    // Bounded by the renewal interval: a renewal whose connection went silent
                    // (a network partition) would otherwise hold this loop, and every claim
                    // and result with it, until the connection dies.
                    let ids = running.job_ids();
                    let renewal = self.store.renew_leases(&self.owner, &ids, self.lease_until());
                    match tokio::time::timeout(self.lease / 3, renewal).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => tracing::warn!(%error, "renewing leases failed"),
                        Err(_) => tracing::warn!(
                            wait_ms = u64::try_from((self.lease / 3).as_millis()).unwrap_or(u64::MAX),
                            "renewing leases got no answer in time; trying again at the next renewal"
                        ),
                    }
                }
            }
        }

        // No more jobs handed over (not even for the slots of jobs that end now); those
        // already on their way are given back.
        slots.fetch_or(SLOTS_CLOSED, Ordering::AcqRel);
        if let Some(rx) = pushed.as_mut() {
            if let Err(error) = self.store.detach_worker().await {
                tracing::warn!(%error, "stopping the hand-over of jobs failed");
            }
            let mut handed = Vec::new();
            while let Ok(chain) = rx.try_recv() {
                handed.extend(chain.iter().map(|job| job.job_id));
            }
            rx.close();
            if !handed.is_empty() {
                match self.store.release_jobs(&self.owner, &handed).await {
                    Ok(n) => tracing::info!(released = n, "released jobs handed over at shutdown"),
                    Err(error) => {
                        tracing::error!(%error, "releasing leases failed; they expire on their own")
                    }
                }
            }
        }
        if !running.set.is_empty() {
            tracing::info!(
                jobs = running.set.len(),
                grace_secs = grace.as_secs(),
                "waiting for running jobs"
            );
        }
        let drained = tokio::time::timeout(grace, async {
            while let Some(joined) = running.set.join_next_with_id().await {
                let _ = running.ended(joined);
            }
        })
        .await;
        if drained.is_err() {
            running.set.abort_all();
            let ids = running.job_ids();
            match self.store.release_jobs(&self.owner, &ids).await {
                Ok(n) => tracing::warn!(
                    released = n,
                    "released jobs that did not finish in the grace period"
                ),
                Err(error) => {
                    tracing::error!(%error, "releasing leases failed; they expire on their own")
                }
            }
        }
    }
}

/// The chains a running worker is executing, and the ids of their jobs (whose leases it
/// renews), per task.
#[derive(Default)]
struct Running {
    set: JoinSet<Result<(), StoreError>>,
    tasks: std::collections::HashMap<tokio::task::Id, Vec<i64>>,
}

type Joined = Result<(tokio::task::Id, Result<(), StoreError>), tokio::task::JoinError>;

impl Running {
    fn start(&mut self, worker: &Arc<Worker>, slots: &Arc<AtomicUsize>, chain: ClaimedChain) {
        let job_ids: Vec<i64> = chain.iter().map(|job| job.job_id).collect();
        let worker = Arc::clone(worker);
        let slots = Arc::clone(slots);
        let handle = self
            .set
            .spawn(async move { worker.execute(chain, Some(&slots)).await });
        self.tasks.insert(handle.id(), job_ids);
    }

    /// Forgets a chain whose task ended; returns how it ended.
    fn ended(&mut self, joined: Joined) -> Joined {
        let id = match &joined {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        self.tasks.remove(&id);
        joined
    }

    /// The jobs of every chain still running.
    fn job_ids(&self) -> Vec<i64> {
        self.tasks.values().flatten().copied().collect()
    }
}

/// Takes every free slot (none once the worker stopped taking jobs).
fn take_slots(slots: &AtomicUsize) -> usize {
    slots
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            (v & SLOTS_CLOSED == 0 && v > 0).then_some(0)
        })
        .unwrap_or(0)
}

/// The next job handed over, or never when none are.
async fn recv(
    pushed: &mut Option<tokio::sync::mpsc::UnboundedReceiver<ClaimedChain>>,
) -> Option<ClaimedChain> {
    match pushed {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(1000),
            cap: Duration::from_secs(60),
            max_attempts: 5,
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let p = policy();
        for attempt in 1..=12u32 {
            let full = Duration::from_millis(1000 * (1u64 << (attempt - 1))).min(p.cap);
            for _ in 0..50 {
                let d = p.delay(attempt, &mut rng);
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempt}: {d:?} vs {full:?}"
                );
            }
        }
    }

    #[test]
    fn failures_retry_until_max_attempts_then_die() {
        let p = policy();
        let retry = HandlerError::Retry {
            message: "boom".into(),
            retry_after: None,
        };
        match p.on_failure(1, &retry, 1_000) {
            JobOutcome::Retry { run_at, error } => {
                assert!((1_500..=2_000).contains(&run_at), "{run_at}");
                assert_eq!(error, "boom");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(p.on_failure(5, &retry, 0), JobOutcome::Dead { error } if error.contains("5 attempts"))
        );
        let later = HandlerError::Retry {
            message: "rate limited".into(),
            retry_after: Some(Duration::from_secs(30)),
        };
        assert!(matches!(
            p.on_failure(2, &later, 0),
            JobOutcome::Retry { run_at: 30_000, .. }
        ));
        assert!(matches!(
            p.on_failure(1, &HandlerError::Permanent("bad".into()), 0),
            JobOutcome::Dead { .. }
        ));
    }
}
