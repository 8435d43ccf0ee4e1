//! Group commit: one task owns the queue's writes. It takes every operation waiting in its
//! queue (up to a batch limit), applies them all in one transaction, commits once, then answers
//! each caller. Under load batches grow by themselves, so durability costs one flush per batch
//! rather than per delivery; when idle a lone delivery commits at once.
//!
//! In one transaction, in this order: job results (which free their keys), deliveries and their
//! new jobs, then claims (SQLite only), which can take the jobs just inserted. Claims take
//! chains of a key's jobs, except in a burst of deliveries ([`BurstGauge`]).
//!
//! On SQLite the writer is a thread with a SQLite connection of its own, called directly (no
//! hand-off to a driver thread per statement), which writes each commit's log frames at once
//! ([`walvfs`](super::walvfs)). Its commits do not wait for the disk;
//! deliveries and claims are answered by the syncer once the WAL is flushed, while this thread
//! already runs the next transaction. At most [`IN_FLIGHT`] batches with deliveries wait for
//! their flush at a time, so that batches stay large under load instead of becoming many small
//! commits. Other writes (the pool's connection) take SQLite's write lock in turn with it.
//!
//! On PostgreSQL the writer is a task on the runtime and its commit itself is durable; job
//! results commit first in a transaction of their own that does not wait for the WAL flush, so
//! their keys are free again without waiting for the disk.
//!
//! If a batch fails on an error the database reported, its operations are retried one by one
//! so that a single bad operation cannot fail its neighbours; an operation that fails alone is
//! answered with its error. If the connection failed (no answer, no connection to be had), the
//! batch's operations are answered with that error at once: one by one, each would wait as long
//! again. A transaction whose connection broke under it (closed or reset) is tried again on
//! another connection, up to [`BROKEN_TRIES`] times in all, never one left idle before the
//! break: the pool's checks close those unused (`bounded::PoolChecks`).
//!
//! On PostgreSQL a delivery is answered within [`WRITE_WAIT`] of reaching the writer: the wait
//! for a connection and the transaction are bounded by the earliest delivery's deadline, and a
//! delivery whose deadline passed while it was queued (behind a write the database did not
//! answer) is answered 503 without being tried, so that GitHub hears the failure before it stops
//! waiting and the queue does not pile up during an outage.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot};

use super::bounded::PoolChecks;
use super::events::{insert_deliveries, own_earlier_commit};
use super::jobs::{
    Chains, ClaimRequest, ClaimedChain, JobFinish, claim_in, finish_jobs, own_earlier_finishes,
};
use super::keys::DeliveryKeys;
use super::sql::{Direct, WriteConn, copy_error, direct_error, ready};
use super::syncer::Syncer;
use super::{Dialect, IngestOutcome, NewDelivery, StoreError, now_ms};

/// Pending operations beyond this make callers wait to enqueue (back-pressure).
const QUEUE_CAPACITY: usize = 8192;

/// How many times in all a transaction is tried while each try's connection breaks under it
/// ([`connection_broke`]): a restart or a failover resets the connections it finds, and one
/// opened as it was under way may be reset in turn.
const BROKEN_TRIES: u32 = 3;

/// Longest wait of a batch of job results alone for other operations to share its commit...
const FINISH_WAIT: std::time::Duration = std::time::Duration::from_micros(500);
/// ...and while deliveries are coming in (one arrived within this time), when the next one
/// will most likely come before it: at 1,000 deliveries a second, results then share the
/// deliveries' commits instead of taking one of their own (5 % less CPU per delivery with two
/// handlers, measured in BENCHMARKS.md). Without deliveries, the jobs queued behind a key are
/// not held up by it.
const FINISH_WAIT_WITH_DELIVERIES: std::time::Duration = std::time::Duration::from_millis(2);

/// Deliveries per batch lately (a moving average, 1/8 for each new batch), to tell a burst.
///
/// In a burst the claim for the attached worker takes each key's head alone, as it would
/// without chains (see `store::jobs::Chains`), so that the burst's answers do not wait behind
/// the work of its jobs; the backlog is taken in chains once the burst is over.
#[derive(Default)]
struct BurstGauge {
    /// The average, in sixteenths of a delivery.
    sixteenths: AtomicUsize,
}

impl BurstGauge {
    /// Most deliveries per batch that are not a burst. At 1,000 deliveries a second a batch
    /// holds one or two; 64 connections at full speed fill them with dozens.
    const MOST_PER_BATCH: usize = 4;

    fn record(&self, deliveries: usize) {
        let average = self.sixteenths.load(Ordering::Relaxed);
        let next = average - average / 8 + deliveries.min(1 << 20) * 2;
        self.sixteenths.store(next, Ordering::Relaxed);
    }

    fn burst(&self) -> bool {
        self.sixteenths.load(Ordering::Relaxed) > Self::MOST_PER_BATCH * 16
    }
}

/// Batches with deliveries that may be committed but not yet flushed at once (SQLite): one
/// being flushed, one being written.
const IN_FLIGHT: usize = 2;

/// How often an idle SQLite writer is reminded to merge deduplication keys (`store::keys`);
/// a busy one merges in its transactions.
const MAINTAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A caller and the answer it will get.
type Answer<T> = (Reply<T>, Result<T, StoreError>);

/// Set in an attached worker's free-slot count once it stops taking jobs.
pub(crate) const SLOTS_CLOSED: usize = 1 << (usize::BITS - 1);

/// Adds `n` free slots unless the worker stopped taking jobs.
pub(crate) fn free_slots(idle: &AtomicUsize, n: usize) {
    let _ = idle.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
        (v & SLOTS_CLOSED == 0).then(|| v.saturating_add(n))
    });
}

/// A claim for the attached worker: the request, the slots it took, and where jobs go.
type Offer = (ClaimRequest, usize, Handover);

/// Where claimed chains go, and the free slots they took (given back if they cannot go).
struct Handover {
    to: mpsc::UnboundedSender<ClaimedChain>,
    idle: Arc<AtomicUsize>,
}

enum Op {
    /// Shared with the caller, who drops it last, once answered: so its memory is freed on the
    /// thread that allocated it, not on the writer's (a free across threads costs the writer
    /// the allocator's locks).
    /// With the time it was queued, from which its deadline runs (PostgreSQL).
    Ingest(Arc<NewDelivery>, Reply<IngestOutcome>, Instant),
    /// One job's result, or a chain's results in order.
    Finish(Vec<JobFinish>, Reply<Vec<bool>>),
    Claim(ClaimRequest, Reply<Vec<ClaimedChain>>),
    Attach(Attached),
    /// Asks for a claim for the attached worker's free slots (see [`WriterHandle::offer`]).
    Offer,
    /// Stops handing jobs over; answered once every job handed over before is on its way.
    Detach(oneshot::Sender<()>),
    /// Housekeeping that waits for no caller: merging deduplication keys when idle.
    Maintain,
    Shutdown(oneshot::Sender<()>),
    /// Makes the writer's thread panic, for tests of a writer that died.
    #[cfg(test)]
    Panic,
}

/// A worker of this process that the writer hands jobs to as soon as it can claim them: in
/// the transaction that inserts them, or that finishes the job holding their key back. It
/// saves the worker a claim of its own (a transaction) per job.
pub(crate) struct Attached {
    pub owner: String,
    /// Lease length in milliseconds.
    pub lease_ms: i64,
    /// Free slots of the worker, one per chain; the writer takes what it fills and gives back
    /// the rest. [`SLOTS_CLOSED`] set: the worker is stopping and takes no more.
    pub idle: Arc<AtomicUsize>,
    /// The chains the worker runs.
    pub chains: Chains,
    pub jobs: mpsc::UnboundedSender<ClaimedChain>,
}

#[derive(Clone)]
pub(crate) struct WriterHandle {
    tx: mpsc::Sender<Op>,
    /// The SQLite writer's thread, woken by every operation sent, in case it waits for company.
    thread: Option<std::thread::Thread>,
}

/// The SQLite writer's own connection and the flusher that makes its commits durable.
pub(crate) struct SqliteWriter {
    pub conn: rusqlite::Connection,
    pub syncer: Syncer,
}

/// How long a group-commit transaction on a database server may take, the wait for a
/// connection included, and how long after it was queued a delivery may wait for its write:
/// under the 10 s GitHub waits for its answer, and far over what a write takes.
const WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(8);

/// Opens the writer's SQLite connection on the database file at `path`.
pub(crate) fn open_sqlite(path: &std::path::Path) -> Result<rusqlite::Connection, String> {
    // Each commit's log frames written at once (see `walvfs`).
    let conn = super::walvfs::open(path)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!(
            "the database cannot use write-ahead logging (journal mode {mode}); put it on a local file system"
        ));
    }
    // See `Dialect::connection_setup` for the pool's write connection, which matches this.
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY; \
         PRAGMA wal_autocheckpoint = 20000;",
    )
    .map_err(|e| e.to_string())?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

/// What the writer writes through.
pub(crate) enum Backend {
    /// SQLite: the writer's own connection and the flusher that makes its commits durable.
    Sqlite(SqliteWriter),
    /// PostgreSQL: transactions on the pool, whose checks are told when a connection broke
    /// under a write.
    Pool(AnyPool, Arc<PoolChecks>),
}

pub(crate) fn spawn(
    dialect: Dialect,
    backend: Backend,
    max_batch: usize,
) -> Result<WriterHandle, StoreError> {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let max_batch = max_batch.max(1);
    match backend {
        Backend::Sqlite(SqliteWriter { conn, syncer }) => {
            let writer = Writer {
                dialect,
                conn: Conn::Direct(Mutex::new(conn)),
                max_batch,
                syncer: Some(syncer),
                in_flight: Arc::new(InFlight::default()),
                attached: Mutex::new(None),
                burst: BurstGauge::default(),
                keys: Mutex::new(DeliveryKeys::new(dialect)),
            };
            let weak = tx.downgrade();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(MAINTAIN_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    // Gone once every handle is dropped, or refused once the writer stopped.
                    let Some(tx) = weak.upgrade() else { return };
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Op::Maintain) {
                        return;
                    }
                }
            });
            let thread = std::thread::Builder::new()
                .name("hookdock-writer".into())
                .spawn(move || writer.run_blocking(rx))
                .map_err(|e| StoreError::Open {
                    url: "sqlite".into(),
                    reason: format!("cannot start the writer thread: {e}"),
                })?;
            return Ok(WriterHandle {
                tx,
                thread: Some(thread.thread().clone()),
            });
        }
        Backend::Pool(pool, checks) => {
            let writer = Writer {
                dialect,
                conn: Conn::Pool(pool, checks),
                max_batch,
                syncer: None,
                in_flight: Arc::new(InFlight::default()),
                attached: Mutex::new(None),
                burst: BurstGauge::default(),
                keys: Mutex::new(DeliveryKeys::new(dialect)),
            };
            tokio::spawn(writer.run(rx));
        }
    }
    Ok(WriterHandle { tx, thread: None })
}

impl WriterHandle {
    /// Whether the writer still takes operations (it stops at shutdown, or if its thread died).
    pub fn running(&self) -> bool {
        !self.tx.is_closed()
    }

    async fn send(&self, op: Op) -> Result<(), StoreError> {
        self.tx.send(op).await.map_err(|_| StoreError::Closed)?;
        if let Some(thread) = &self.thread {
            thread.unpark();
        }
        Ok(())
    }

    async fn call<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(op(reply)).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub async fn ingest(&self, delivery: NewDelivery) -> Result<IngestOutcome, StoreError> {
        let delivery = Arc::new(delivery);
        let outcome = self
            .call(|reply| Op::Ingest(Arc::clone(&delivery), reply, Instant::now()))
            .await;
        drop(delivery);
        outcome
    }

    pub async fn finish(&self, finishes: Vec<JobFinish>) -> Result<Vec<bool>, StoreError> {
        self.call(|reply| Op::Finish(finishes, reply)).await
    }

    pub async fn claim(&self, request: ClaimRequest) -> Result<Vec<ClaimedChain>, StoreError> {
        self.call(|reply| Op::Claim(request, reply)).await
    }

    /// Stops handing jobs to the attached worker. Returns once every job handed to it before
    /// is in its channel.
    pub async fn detach(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Detach(reply)).await?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Asks the writer to claim what is due for the attached worker's free slots now (at its
    /// start, after a replay, at each poll), in its next transaction; the jobs arrive in the
    /// worker's channel. The worker never takes its slots itself: a claim of its own that held
    /// them while a commit made jobs claimable would leave those jobs to the next poll.
    pub async fn offer(&self) -> Result<(), StoreError> {
        self.send(Op::Offer).await
    }

    /// Makes the writer's thread panic, as a bug in it would.
    #[cfg(test)]
    pub(crate) async fn panic(&self) -> Result<(), StoreError> {
        self.send(Op::Panic).await
    }

    /// Lets the writer claim jobs for `worker` (see [`Attached`]).
    pub async fn attach(&self, worker: Attached) -> Result<(), StoreError> {
        self.send(Op::Attach(worker)).await
    }

    /// Waits until everything enqueued before this call is committed (and, on SQLite,
    /// flushed), then stops the writer.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.send(Op::Shutdown(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

enum Conn {
    /// PostgreSQL: transactions on the pool, whose checks are told when a connection broke
    /// under a write.
    Pool(AnyPool, Arc<PoolChecks>),
    /// SQLite: the writer's own connection, only ever used on its thread (the mutex only makes
    /// the writer shareable; it is never contended).
    Direct(Mutex<rusqlite::Connection>),
}

/// Commits with deliveries that are not flushed yet (see [`IN_FLIGHT`]).
#[derive(Default)]
struct InFlight {
    count: Mutex<usize>,
    freed: Condvar,
}

impl InFlight {
    fn acquire(self: &Arc<Self>) -> Slot {
        let mut count = self.count.lock().unwrap_or_else(|e| e.into_inner());
        while *count >= IN_FLIGHT {
            count = self.freed.wait(count).unwrap_or_else(|e| e.into_inner());
        }
        *count += 1;
        Slot(Arc::clone(self))
    }
}

impl InFlight {
    /// Whether a batch with deliveries is waiting for its flush.
    fn busy(&self) -> bool {
        *self.count.lock().unwrap_or_else(|e| e.into_inner()) > 0
    }
}

/// Frees its place in [`InFlight`] when dropped (once the batch's flush has answered).
struct Slot(Arc<InFlight>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut count = self.0.count.lock().unwrap_or_else(|e| e.into_inner());
        *count = count.saturating_sub(1);
        self.0.freed.notify_one();
    }
}

struct Writer {
    dialect: Dialect,
    conn: Conn,
    max_batch: usize,
    syncer: Option<Syncer>,
    in_flight: Arc<InFlight>,
    attached: Mutex<Option<Attached>>,
    burst: BurstGauge,
    /// What the SQLite writer knows of stored delivery ids and bodies; only its transactions
    /// use it.
    keys: Mutex<DeliveryKeys>,
}

/// The operations of one batch.
#[derive(Default)]
struct Batch {
    ingests: Vec<(Arc<NewDelivery>, Reply<IngestOutcome>, Instant)>,
    /// Job results of every `Finish` operation, in order, and per operation how many of them
    /// are its own and where its answer goes.
    finishes: Vec<JobFinish>,
    finished_by: Vec<(usize, Reply<Vec<bool>>)>,
    claims: Vec<(ClaimRequest, Reply<Vec<ClaimedChain>>)>,
    attach: Option<Attached>,
    detach: Option<oneshot::Sender<()>>,
    /// The attached worker asked for jobs.
    offer: bool,
    maintain: bool,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Batch {
    fn len(&self) -> usize {
        self.ingests.len() + self.finished_by.len() + self.claims.len() + usize::from(self.offer)
    }

    fn take(&mut self, op: Op) {
        match op {
            Op::Ingest(d, reply, queued) => self.ingests.push((d, reply, queued)),
            Op::Finish(f, reply) => {
                self.finished_by.push((f.len(), reply));
                self.finishes.extend(f);
            }
            Op::Claim(c, reply) => self.claims.push((c, reply)),
            Op::Attach(worker) => self.attach = Some(worker),
            Op::Offer => self.offer = true,
            Op::Detach(reply) => self.detach = Some(reply),
            Op::Maintain => self.maintain = true,
            Op::Shutdown(reply) => self.shutdown = Some(reply),
            #[cfg(test)]
            Op::Panic => panic!("the writer was asked to panic (a test of a writer that died)"),
        }
    }

    fn fill(&mut self, rx: &mut mpsc::Receiver<Op>, max: usize) {
        while self.len() < max && self.shutdown.is_none() {
            match rx.try_recv() {
                Ok(op) => self.take(op),
                Err(_) => break,
            }
        }
    }
}

/// What one transaction produced, per operation.
struct Written {
    ingested: Vec<IngestOutcome>,
    /// Per job result, in the order of the operations.
    finished: Vec<bool>,
    claimed: Vec<Vec<ClaimedChain>>,
}

/// Answers that may only be given once the commit is on disk.
#[derive(Default)]
struct Durable {
    ingests: Vec<Answer<IngestOutcome>>,
    claims: Vec<Answer<Vec<ClaimedChain>>>,
    /// Chains claimed for the attached worker, and where they go.
    offered: Option<(Handover, Vec<ClaimedChain>)>,
}

impl Durable {
    fn is_empty(&self) -> bool {
        self.ingests.is_empty() && self.claims.is_empty() && self.offered.is_none()
    }

    /// Answers everyone with their result, or with the flush's failure.
    fn answer(self, flushed: Result<(), String>) {
        fn send<T>(reply: Reply<T>, result: Result<T, StoreError>, flushed: &Result<(), String>) {
            let _ = reply.send(match flushed {
                Ok(()) => result,
                Err(reason) => Err(StoreError::Durability(reason.clone())),
            });
        }
        for (reply, result) in self.ingests {
            send(reply, result, &flushed);
        }
        for (reply, result) in self.claims {
            send(reply, result, &flushed);
        }
        if let Some((handover, chains)) = self.offered {
            // After a failed flush they are not handed over (their slots are given back);
            // their leases run out and they are claimed again.
            if flushed.is_err() {
                free_slots(&handover.idle, chains.len());
            } else {
                for chain in chains {
                    if handover.to.send(chain).is_err() {
                        tracing::warn!(
                            "the worker stopped; a job claimed for it runs again when its lease expires"
                        );
                        break;
                    }
                }
            }
        }
    }
}

/// Hands out a successful batch's results (the durable ones to `durable`, for after the flush).
fn answer_written(batch: &mut Batch, written: Written, durable: &mut Durable) {
    let mut finished = written.finished.into_iter();
    for (n, reply) in batch.finished_by.drain(..) {
        let _ = reply.send(Ok(finished.by_ref().take(n).collect()));
    }
    for ((_, reply, _), outcome) in batch.ingests.drain(..).zip(written.ingested) {
        durable.ingests.push((reply, Ok(outcome)));
    }
    for ((_, reply), claimed) in batch.claims.drain(..).zip(written.claimed) {
        durable.claims.push((reply, Ok(claimed)));
    }
}

/// Everything a transaction does between its `BEGIN` and `COMMIT`, on either connection:
/// also a slice of deduplication keys when some are due for merging.
async fn apply<C: WriteConn>(
    conn: &mut C,
    dialect: Dialect,
    keys: &mut DeliveryKeys,
    deliveries: &[&NewDelivery],
    finishes: &[JobFinish],
    claims: &[ClaimRequest],
) -> Result<Written, sqlx::Error> {
    let now = now_ms();
    let finished = if finishes.is_empty() {
        Vec::new()
    } else {
        finish_jobs(conn, dialect, finishes, now).await?
    };
    let ingested = if deliveries.is_empty() {
        Vec::new()
    } else {
        insert_deliveries(conn, dialect, keys, deliveries, now).await?
    };
    if keys.merge_due() {
        if deliveries.is_empty() {
            keys.sync(conn).await?;
        }
        keys.merge_step(conn).await?;
    }
    let mut claimed = Vec::with_capacity(claims.len());
    for claim in claims {
        claimed.push(claim_in(conn, dialect, claim, now).await?);
    }
    Ok(Written {
        ingested,
        finished,
        claimed,
    })
}

impl Writer {
    /// The SQLite writer's thread.
    fn run_blocking(self, mut rx: mpsc::Receiver<Op>) {
        let mut last_delivery: Option<Instant> = None;
        while let Some(first) = rx.blocking_recv() {
            let mut batch = Batch::default();
            batch.take(first);
            batch.fill(&mut rx, self.max_batch);
            // Job results alone wait a moment for company (the results of the event's other
            // jobs, the next delivery): each commit rewrites the pages it touches, and at low
            // rates most of a job's cost is its own commit. Nobody waits on them but the job's
            // worker slot and the jobs behind it on its key; anything else that arrives ends the
            // wait (senders wake this thread).
            let started = Instant::now();
            let wait = match last_delivery {
                Some(at) if started.duration_since(at) < FINISH_WAIT_WITH_DELIVERIES => {
                    FINISH_WAIT_WITH_DELIVERIES
                }
                _ => FINISH_WAIT,
            };
            while !batch.finished_by.is_empty()
                && batch.ingests.is_empty()
                && batch.claims.is_empty()
                && batch.shutdown.is_none()
                && batch.attach.is_none()
                && batch.detach.is_none()
                && !batch.offer
                && batch.len() < self.max_batch
            {
                let Some(left) = wait.checked_sub(started.elapsed()) else {
                    break;
                };
                std::thread::park_timeout(left);
                batch.fill(&mut rx, self.max_batch);
            }
            if !batch.ingests.is_empty() {
                last_delivery = Some(Instant::now());
            }
            // A batch with deliveries waits for a flush slot; whatever arrives meanwhile joins it.
            let slot = if batch.ingests.is_empty() {
                None
            } else {
                let slot = self.in_flight.acquire();
                batch.fill(&mut rx, self.max_batch);
                Some(slot)
            };
            self.take_attach(&mut batch);
            let shutdown = batch.shutdown.take();
            if batch.len() > 0 {
                if ready(self.commit(batch, slot)).is_none() {
                    tracing::error!(
                        "a write on the writer's own connection waited; it was dropped"
                    );
                }
            } else if batch.maintain {
                self.maintain();
            }
            if let Some(reply) = shutdown {
                self.stop(&mut rx);
                if let Some(syncer) = &self.syncer {
                    let _ = syncer.barrier_blocking();
                }
                let _ = reply.send(());
                return;
            }
        }
    }

    /// The PostgreSQL writer's task.
    async fn run(self, mut rx: mpsc::Receiver<Op>) {
        while let Some(first) = rx.recv().await {
            let mut batch = Batch::default();
            batch.take(first);
            batch.fill(&mut rx, self.max_batch);
            self.take_attach(&mut batch);
            let shutdown = batch.shutdown.take();
            if batch.len() > 0 {
                self.commit(batch, None).await;
            }
            if let Some(reply) = shutdown {
                self.stop(&mut rx);
                let _ = reply.send(());
                return;
            }
        }
    }

    /// Attaches or detaches the worker before the batch's transaction. A detach is answered
    /// behind every answer already queued for the flush thread, so after it no job handed
    /// over earlier is still on its way.
    fn take_attach(&self, batch: &mut Batch) {
        if let Some(worker) = batch.attach.take() {
            *self.attached.lock().unwrap_or_else(|e| e.into_inner()) = Some(worker);
        }
        if let Some(reply) = batch.detach.take() {
            *self.attached.lock().unwrap_or_else(|e| e.into_inner()) = None;
            match &self.syncer {
                Some(syncer) => syncer.after_commit(Box::new(move |_| {
                    let _ = reply.send(());
                })),
                None => {
                    let _ = reply.send(());
                }
            }
        }
    }

    /// A claim for the attached worker's free slots, taken from them, when this batch may
    /// have made jobs claimable (new jobs, or finished heads) or the worker asked for one.
    ///
    /// Only the writer takes the worker's free slots (the worker's running chains hold the
    /// rest and give theirs back before their results are sent here), so a batch that finds
    /// none free is followed by one that offers: the finish of a running chain.
    fn offer(&self, batch: &Batch) -> Option<Offer> {
        if batch.ingests.is_empty() && batch.finished_by.is_empty() && !batch.offer {
            return None;
        }
        let attached = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        let worker = attached.as_ref()?;
        if worker.jobs.is_closed() {
            return None;
        }
        let Ok(free) = worker
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v & SLOTS_CLOSED == 0 && v > 0).then_some(0)
            })
        else {
            return None;
        };
        let now = now_ms();
        let request = ClaimRequest {
            owner: worker.owner.clone(),
            limit: u32::try_from(free).unwrap_or(u32::MAX),
            lease_until: now.saturating_add(worker.lease_ms),
            now,
            chains: if self.burst.burst() {
                worker.chains.heads_only()
            } else {
                worker.chains.clone()
            },
        };
        let handover = Handover {
            to: worker.jobs.clone(),
            idle: Arc::clone(&worker.idle),
        };
        Some((request, free, handover))
    }

    /// Gives unfilled slots back to the attached worker.
    fn give_back(&self, slots: usize) {
        if slots == 0 {
            return;
        }
        if let Some(worker) = self
            .attached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            free_slots(&worker.idle, slots);
        }
    }

    /// Refuses anything sent after the shutdown request.
    fn stop(&self, rx: &mut mpsc::Receiver<Op>) {
        rx.close();
        while let Ok(op) = rx.try_recv() {
            refuse(op);
        }
    }

    async fn commit(&self, mut batch: Batch, slot: Option<Slot>) {
        let started = Instant::now();
        if matches!(self.conn, Conn::Pool(..)) {
            refuse_expired(&mut batch.ingests, started);
        }
        let size = batch.len();
        let dialect = self.dialect;
        let deliveries: Vec<&NewDelivery> = batch.ingests.iter().map(|(d, ..)| &**d).collect();
        let deadline = batch
            .ingests
            .iter()
            .map(|(.., queued)| deadline_of(*queued))
            .min();
        let mut claims: Vec<ClaimRequest> = batch.claims.iter().map(|(c, _)| c.clone()).collect();
        self.burst.record(batch.ingests.len());
        let offer = self.offer(&batch);
        if offer.is_none() && batch.len() == usize::from(batch.offer) {
            // Only the worker's request, and no free slot to fill (or no worker any more).
            if batch.maintain {
                self.maintain();
            }
            return;
        }
        if let Some((request, _, _)) = &offer {
            claims.push(request.clone());
        }
        let result = self
            .write(&deliveries, &batch.finishes, &claims, deadline)
            .await;
        drop(deliveries);
        let mut durable = Durable::default();
        match (result, offer) {
            (Ok(mut written), Some((_, free, handover))) => {
                let chains = written.claimed.pop().unwrap_or_default();
                self.give_back(free.saturating_sub(chains.len()));
                if !chains.is_empty() {
                    durable.offered = Some((handover, chains));
                }
                answer_written(&mut batch, written, &mut durable);
            }
            (Err(error), Some((_, free, _))) => {
                self.give_back(free);
                self.answer_failed(&mut batch, error, size, &mut durable)
                    .await;
            }
            (Ok(written), None) => answer_written(&mut batch, written, &mut durable),
            (Err(error), None) => {
                self.answer_failed(&mut batch, error, size, &mut durable)
                    .await
            }
        }
        metrics::histogram!("hookdock_store_batch_size", "dialect" => dialect.name())
            .record(size as f64);
        metrics::histogram!("hookdock_store_batch_seconds", "dialect" => dialect.name())
            .record(started.elapsed().as_secs_f64());
        if durable.is_empty() {
            return;
        }
        match &self.syncer {
            // Without deliveries in this batch or in one still being flushed, nothing answered
            // here depends on data not yet on disk.
            Some(_) if durable.ingests.is_empty() && slot.is_none() && !self.in_flight.busy() => {
                durable.answer(Ok(()));
            }
            // Claims wait for the flush too, so that no handler runs for a delivery that is
            // not on disk yet (it may be in this batch or in the one still being flushed).
            Some(syncer) => syncer.after_commit(Box::new(move |flushed| {
                durable.answer(flushed);
                drop(slot);
            })),
            None => durable.answer(Ok(())),
        }
    }

    /// A batch failed: one operation alone gets the error; several are tried one by one.
    async fn answer_failed(
        &self,
        batch: &mut Batch,
        error: sqlx::Error,
        size: usize,
        durable: &mut Durable,
    ) {
        // On a failed connection, one by one each would wait as long again.
        if size == 1 || connection_failed(self.dialect, &error) {
            tracing::error!(%error, size, "write failed");
            let failed = || StoreError::Database(copy_error(&error));
            for (_, reply) in batch.finished_by.drain(..) {
                let _ = reply.send(Err(failed()));
            }
            for (_, reply, _) in batch.ingests.drain(..) {
                durable.ingests.push((reply, Err(failed())));
            }
            for (_, reply) in batch.claims.drain(..) {
                durable.claims.push((reply, Err(failed())));
            }
            return;
        }
        tracing::warn!(%error, size, "batch write failed; retrying its operations one by one");
        let mut start = 0;
        for (n, reply) in batch.finished_by.drain(..) {
            let own = &batch.finishes[start..start + n];
            start += n;
            let result = self.write(&[], own, &[], None).await.map(|w| w.finished);
            let _ = reply.send(result.map_err(StoreError::Database));
        }
        for (d, reply, queued) in batch.ingests.drain(..) {
            let result = self
                .write(&[&d], &[], &[], Some(deadline_of(queued)))
                .await
                .map(|mut w| w.ingested.remove(0));
            durable
                .ingests
                .push((reply, result.map_err(StoreError::Database)));
        }
        for (c, reply) in batch.claims.drain(..) {
            let result = self
                .write(&[], &[], std::slice::from_ref(&c), None)
                .await
                .map(|mut w| w.claimed.remove(0));
            durable
                .claims
                .push((reply, result.map_err(StoreError::Database)));
        }
    }

    /// A transaction of housekeeping alone, when some is due (SQLite, idle writer).
    fn maintain(&self) {
        let due = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .merge_due();
        if !due {
            return;
        }
        match ready(self.write(&[], &[], &[], None)) {
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                tracing::warn!(%error, "merging deduplication keys failed; will try again")
            }
            None => {
                tracing::error!("a write on the writer's own connection waited; it was dropped")
            }
        }
    }

    /// One transaction (on PostgreSQL, job results first in one of their own, each tried once
    /// more on another connection if its own broke under it; both, with the waits for a
    /// connection, given up at `deadline` or after [`WRITE_WAIT`]). If it fails, it is
    /// counted (`hookdock_store_write_errors_total`) and what the writer knows of stored keys
    /// is read again from the database next time.
    async fn write(
        &self,
        deliveries: &[&NewDelivery],
        finishes: &[JobFinish],
        claims: &[ClaimRequest],
        deadline: Option<Instant>,
    ) -> Result<Written, sqlx::Error> {
        let result = self
            .write_once(deliveries, finishes, claims, deadline)
            .await;
        if result.is_err() {
            metrics::counter!("hookdock_store_write_errors_total", "dialect" => self.dialect.name())
                .increment(1);
            self.keys
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .invalidate();
        }
        result
    }

    async fn write_once(
        &self,
        deliveries: &[&NewDelivery],
        finishes: &[JobFinish],
        claims: &[ClaimRequest],
        deadline: Option<Instant>,
    ) -> Result<Written, sqlx::Error> {
        if let Some(syncer) = &self.syncer
            && syncer.failed()
            && !deliveries.is_empty()
        {
            return Err(sqlx::Error::Protocol(
                "an earlier flush of the database to disk failed; restart hookdock".into(),
            ));
        }
        match &self.conn {
            Conn::Direct(conn) => {
                let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
                self.direct_transaction(&conn, deliveries, finishes, claims)
            }
            Conn::Pool(pool, checks) => {
                let limit = deadline.map_or(WRITE_WAIT, |d| {
                    d.saturating_duration_since(Instant::now()).min(WRITE_WAIT)
                });
                if limit.is_zero() {
                    return Err(not_taken(true));
                }
                let separate =
                    !deliveries.is_empty() && (!finishes.is_empty() || !claims.is_empty());
                // Each transaction is tried again alone: once the first has committed, its job
                // results are recorded, and written again they would be found so and counted as
                // discarded, as if the jobs' leases had expired.
                let work = async {
                    if separate {
                        let first = self
                            .pool_attempts(pool, checks, &[], finishes, claims)
                            .await?;
                        let second = self
                            .pool_attempts(pool, checks, deliveries, &[], &[])
                            .await?;
                        return Ok(Written {
                            ingested: second.ingested,
                            ..first
                        });
                    }
                    self.pool_attempts(pool, checks, deliveries, finishes, claims)
                        .await
                };
                // No answer (a network partition leaves a connection open and silent, and with
                // the request acknowledged nothing makes the operating system give it up), or
                // no connection to be had: the connection, if any, goes back to the pool, whose
                // release check closes it if it stays silent (`bounded::PoolChecks`).
                tokio::time::timeout(limit, work)
                    .await
                    .unwrap_or_else(|_| Err(not_taken(deadline.is_some())))
            }
        }
    }

    /// A transaction on a connection from the pool, tried again on another while its own broke
    /// under it ([`connection_broke`]), up to [`BROKEN_TRIES`] times in all. The pool's
    /// `checks` are told of each break, so that a try again is not made on a connection left
    /// idle before it ([`PoolChecks::lost`]): a restart or a failover ends them all, one
    /// after another.
    async fn pool_attempts(
        &self,
        pool: &AnyPool,
        checks: &PoolChecks,
        deliveries: &[&NewDelivery],
        finishes: &[JobFinish],
        claims: &[ClaimRequest],
    ) -> Result<Written, sqlx::Error> {
        let mut tries = 1;
        loop {
            match self
                .pool_transaction(pool, deliveries, finishes, claims)
                .await
            {
                Err(error) if connection_broke(self.dialect, &error) => {
                    checks.lost();
                    if tries == BROKEN_TRIES {
                        return Err(error);
                    }
                    tracing::warn!(%error, tries, "a write's connection broke; trying it again on another");
                    tries += 1;
                }
                // A try after a broken one is committed: a failed look at what the earlier
                // tries wrote only leaves their deliveries answered as duplicates (stored, 200)
                // and their job results counted as discarded.
                Ok(mut written) if tries > 1 => {
                    if let Err(error) = self
                        .own_earlier_tries(pool, deliveries, finishes, &mut written)
                        .await
                    {
                        tracing::warn!(%error, "could not tell what a broken write's earlier tries wrote");
                    }
                    return Ok(written);
                }
                result => return result,
            }
        }
    }

    /// What a write's earlier tries wrote before their connections broke (only one of them can
    /// have stored anything), as the try that went through found it: deliveries stored and job
    /// results recorded by such a try are answered as such ([`own_earlier_commit`],
    /// [`own_earlier_finishes`]) rather than as duplicates and discarded results. Reads only
    /// when the last try found any.
    async fn own_earlier_tries(
        &self,
        pool: &AnyPool,
        deliveries: &[&NewDelivery],
        finishes: &[JobFinish],
        written: &mut Written,
    ) -> Result<(), sqlx::Error> {
        let duplicates = written
            .ingested
            .iter()
            .any(|o| matches!(o, IngestOutcome::Duplicate { .. }));
        let unrecorded = written.finished.iter().any(|r| !r);
        if !duplicates && !unrecorded {
            return Ok(());
        }
        let mut conn = pool.acquire().await?;
        if duplicates {
            own_earlier_commit(&mut *conn, self.dialect, deliveries, &mut written.ingested).await?;
        }
        if unrecorded {
            own_earlier_finishes(&mut *conn, self.dialect, finishes, &mut written.finished).await?;
        }
        Ok(())
    }

    async fn pool_transaction(
        &self,
        pool: &AnyPool,
        deliveries: &[&NewDelivery],
        finishes: &[JobFinish],
        claims: &[ClaimRequest],
    ) -> Result<Written, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        let dialect = self.dialect;
        let mut tx = super::begin_write(&mut conn, dialect, !deliveries.is_empty()).await?;
        // PostgreSQL's keys are the events table itself: nothing is kept between transactions.
        let mut keys = DeliveryKeys::new(dialect);
        let written = apply(&mut *tx, dialect, &mut keys, deliveries, finishes, claims).await?;
        tx.commit().await?;
        Ok(written)
    }

    fn direct_transaction(
        &self,
        conn: &rusqlite::Connection,
        deliveries: &[&NewDelivery],
        finishes: &[JobFinish],
        claims: &[ClaimRequest],
    ) -> Result<Written, sqlx::Error> {
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(direct_error)?;
        let mut direct = Direct { conn };
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = ready(apply(
            &mut direct,
            self.dialect,
            &mut keys,
            deliveries,
            finishes,
            claims,
        ))
        .unwrap_or_else(|| {
            Err(sqlx::Error::Protocol(
                "a write on the writer's own connection waited".into(),
            ))
        })
        .and_then(|written| {
            conn.execute_batch("COMMIT").map_err(direct_error)?;
            Ok(written)
        });
        if outcome.is_err()
            && !conn.is_autocommit()
            && let Err(error) = conn.execute_batch("ROLLBACK")
        {
            tracing::error!(%error, "rolling back a failed write failed");
        }
        outcome
    }
}

/// When a delivery queued at `queued` is answered 503 if the database has not taken it.
fn deadline_of(queued: Instant) -> Instant {
    queued + WRITE_WAIT
}

/// Whether a write failed on its connection (no answer, none to be had, broken, ended by the
/// server) rather than on something the database said about one of its operations.
fn connection_failed(dialect: Dialect, error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    ) || dialect.connection_ended(error)
}

/// Whether a write failed because its connection was closed or reset under it (a server
/// restarted, a failover: the socket reset, or the server's notice that it ends the
/// connection, [`Dialect::connection_ended`]), as opposed to one that went unanswered: tried
/// again at once on another connection, within the same deadline, it may well go through. (If
/// its commit had reached the server after all, its deliveries and job results are then found
/// written by that earlier try and answered as such ([`own_earlier_commit`],
/// [`own_earlier_finishes`]).)
fn connection_broke(dialect: Dialect, error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Io(e) if e.kind() != std::io::ErrorKind::TimedOut)
        || dialect.connection_ended(error)
}

/// The error of a write the database did not take within [`WRITE_WAIT`]: of the earliest
/// delivery's arrival at the writer, when it holds deliveries.
fn not_taken(deliveries: bool) -> sqlx::Error {
    super::bounded::timed_out(format!(
        "the database took no write within {} s{} (no connection could be had, or no answer \
         came); a connection left silent is closed",
        WRITE_WAIT.as_secs(),
        if deliveries {
            " of the delivery's arrival"
        } else {
            ""
        }
    ))
}

/// Answers the deliveries that waited [`WRITE_WAIT`] or longer in the queue (behind writes
/// the database did not take) with [`not_taken`] instead of trying them: GitHub stops waiting
/// soon after. The others stay in the batch.
fn refuse_expired(
    ingests: &mut Vec<(Arc<NewDelivery>, Reply<IngestOutcome>, Instant)>,
    now: Instant,
) {
    let expired = |queued: &Instant| deadline_of(*queued) <= now;
    if !ingests.iter().any(|(.., queued)| expired(queued)) {
        return;
    }
    let mut refused = 0usize;
    for (_, reply, _) in ingests.extract_if(.., |(.., queued)| expired(queued)) {
        refused += 1;
        let _ = reply.send(Err(StoreError::Database(not_taken(true))));
    }
    tracing::error!(
        refused,
        "deliveries refused without a try: they waited {} s for the database",
        WRITE_WAIT.as_secs()
    );
}

fn refuse(op: Op) {
    match op {
        Op::Ingest(_, reply, _) => {
            let _ = reply.send(Err(StoreError::Closed));
        }
        Op::Finish(_, reply) => {
            let _ = reply.send(Err(StoreError::Closed));
        }
        Op::Claim(_, reply) => {
            let _ = reply.send(Err(StoreError::Closed));
        }
        Op::Attach(_) | Op::Offer | Op::Maintain => {}
        Op::Detach(reply) => {
            let _ = reply.send(());
        }
        Op::Shutdown(reply) => {
            let _ = reply.send(());
        }
        #[cfg(test)]
        Op::Panic => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::mpsc;

    use super::{BurstGauge, Durable, Handover, SLOTS_CLOSED};

    /// Two chains claimed for a worker whose free-slot count is now `idle`, as the writer
    /// offers them.
    fn offered(
        idle: usize,
    ) -> (
        Durable,
        Arc<AtomicUsize>,
        mpsc::UnboundedReceiver<super::ClaimedChain>,
    ) {
        let idle = Arc::new(AtomicUsize::new(idle));
        let (to, rx) = mpsc::unbounded_channel();
        let durable = Durable {
            offered: Some((
                Handover {
                    to,
                    idle: Arc::clone(&idle),
                },
                vec![Vec::new(), Vec::new()],
            )),
            ..Durable::default()
        };
        (durable, idle, rx)
    }

    #[tokio::test]
    async fn a_writer_that_died_refuses_deliveries_instead_of_leaving_them_waiting() {
        use crate::store::events::tests::{delivery, sqlite_store};
        use crate::store::{EventFilter, IngestOutcome, StoreError};

        let (store, dir) = sqlite_store("hookdock-writer-died").await;
        let before = store.ingest(delivery("before", 1, vec![])).await.unwrap();
        let IngestOutcome::Stored { event_id, .. } = before else {
            panic!("expected the first delivery stored, got {before:?}");
        };
        assert!(store.writing());

        store.inner.writer.panic().await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.writing() {
            assert!(
                std::time::Instant::now() < deadline,
                "the store still says it takes writes after its writer died"
            );
            tokio::task::yield_now().await;
        }
        // Answered at once with an error (a 503 for GitHub to redeliver), not left waiting.
        let after = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            store.ingest(delivery("after", 2, vec![])),
        )
        .await
        .expect("a delivery sent to a dead writer waited for an answer");
        assert!(matches!(after, Err(StoreError::Closed)), "{after:?}");
        // What was committed before is still there; nothing of the refused delivery is.
        let all = EventFilter {
            limit: 10,
            ..EventFilter::default()
        };
        let stored: Vec<(i64, String)> = store
            .list_events(&all)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.id, e.delivery_id))
            .collect();
        assert_eq!(stored, vec![(event_id, "before".to_owned())]);

        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn chains_claimed_in_a_commit_that_did_not_reach_the_disk_give_their_slots_back() {
        let (durable, idle, mut rx) = offered(1);
        durable.answer(Err("fdatasync failed".into()));
        assert!(
            rx.try_recv().is_err(),
            "no chain may run for a commit not on disk"
        );
        assert_eq!(idle.load(Ordering::Acquire), 3, "both slots are free again");

        // Once the commit is on disk they are handed over and keep their slots.
        let (durable, idle, mut rx) = offered(1);
        durable.answer(Ok(()));
        assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok());
        assert_eq!(idle.load(Ordering::Acquire), 1);

        // A worker that stopped taking jobs gets no slots back.
        let (durable, idle, _rx) = offered(SLOTS_CLOSED);
        durable.answer(Err("fdatasync failed".into()));
        assert_eq!(idle.load(Ordering::Acquire), SLOTS_CLOSED);
    }

    #[test]
    fn a_burst_is_many_deliveries_per_batch_for_a_while() {
        let gauge = BurstGauge::default();
        // A steady 1,000/s: one or two deliveries per batch, job results alone between them.
        for n in [1, 2, 0, 1, 1, 0, 2, 1].into_iter().cycle().take(200) {
            gauge.record(n);
            assert!(!gauge.burst());
        }
        // A few more at once is not a burst yet; a run of them is.
        gauge.record(8);
        assert!(!gauge.burst());
        for _ in 0..10 {
            gauge.record(30);
        }
        assert!(gauge.burst());
        // Job results alone between full batches keep it a burst.
        for n in [40, 0].into_iter().cycle().take(100) {
            gauge.record(n);
        }
        assert!(gauge.burst());
        // Once the deliveries stop, a few batches of job results end it.
        let mut batches = 0;
        while gauge.burst() {
            gauge.record(0);
            batches += 1;
        }
        assert!((10..=30).contains(&batches), "{batches}");
    }
}
