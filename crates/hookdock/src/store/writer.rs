//! Group commit: one task owns the queue's writes. It takes every operation waiting in its
//! queue (up to a batch limit), applies them all in one transaction, commits once, then answers
//! each caller. Under load batches grow by themselves, so durability costs one flush per batch
//! rather than per delivery; when idle a lone delivery commits at once.
//!
//! In one transaction, in this order: job results (which free their keys), deliveries and their
//! new jobs, then claims (SQLite only), which can take the jobs just inserted.
//!
//! On SQLite the commit does not wait for the disk; deliveries and claims are answered by the
//! syncer once the WAL is flushed, while this task already runs the next transaction. At most
//! [`IN_FLIGHT`] batches with deliveries wait for their flush at a time, so that batches stay
//! large under load instead of becoming many small commits. On PostgreSQL the commit itself is
//! durable; job results commit first in a transaction of their own that does not wait for the
//! WAL flush, so their keys are free again without waiting for the disk.
//!
//! If a batch fails, its operations are retried one by one so that a single bad operation
//! cannot fail its neighbours; an operation that fails alone is answered with its error.

use std::sync::Arc;
use std::time::Instant;

use sqlx::AnyPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::events::insert_deliveries;
use super::jobs::{ClaimRequest, ClaimedRow, JobFinish, claim_in, finish_jobs};
use super::syncer::Syncer;
use super::{Dialect, IngestOutcome, NewDelivery, StoreError, now_ms};

/// Pending operations beyond this make callers wait to enqueue (back-pressure).
const QUEUE_CAPACITY: usize = 8192;

/// Batches with deliveries that may be committed but not yet flushed at once (SQLite): one
/// being flushed, one being written.
const IN_FLIGHT: usize = 2;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A caller and the answer it will get.
type Answer<T> = (Reply<T>, Result<T, StoreError>);

enum Op {
    Ingest(Box<NewDelivery>, Reply<IngestOutcome>),
    Finish(JobFinish, Reply<bool>),
    Claim(ClaimRequest, Reply<Vec<ClaimedRow>>),
    Shutdown(oneshot::Sender<()>),
}

#[derive(Clone)]
pub(crate) struct WriterHandle {
    tx: mpsc::Sender<Op>,
}

pub(crate) fn spawn(
    dialect: Dialect,
    pool: AnyPool,
    max_batch: usize,
    syncer: Option<Syncer>,
) -> WriterHandle {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let writer = Writer {
        dialect,
        pool,
        max_batch: max_batch.max(1),
        syncer,
        in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
    };
    if dialect.writer_thread() {
        // Its own thread: on the shared runtime, each statement's answer from SQLite's thread
        // would wait for a free worker behind the request tasks before the next could start.
        let spawned = std::thread::Builder::new()
            .name("hookdock-writer".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(writer.run(rx)),
                    Err(error) => tracing::error!(%error, "cannot start the writer's runtime"),
                }
            });
        if let Err(error) = spawned {
            // The handle's sends then fail: every write is answered `StoreError::Closed`.
            tracing::error!(%error, "cannot start the writer thread");
        }
    } else {
        tokio::spawn(writer.run(rx));
    }
    WriterHandle { tx }
}

impl WriterHandle {
    async fn call<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(op(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub async fn ingest(&self, delivery: NewDelivery) -> Result<IngestOutcome, StoreError> {
        self.call(|reply| Op::Ingest(Box::new(delivery), reply))
            .await
    }

    pub async fn finish(&self, finish: JobFinish) -> Result<bool, StoreError> {
        self.call(|reply| Op::Finish(finish, reply)).await
    }

    pub async fn claim(&self, request: ClaimRequest) -> Result<Vec<ClaimedRow>, StoreError> {
        self.call(|reply| Op::Claim(request, reply)).await
    }

    /// Waits until everything enqueued before this call is committed, then stops the task.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Op::Shutdown(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

struct Writer {
    dialect: Dialect,
    pool: AnyPool,
    max_batch: usize,
    syncer: Option<Syncer>,
    in_flight: Arc<Semaphore>,
}

/// The operations of one batch.
#[derive(Default)]
struct Batch {
    ingests: Vec<(NewDelivery, Reply<IngestOutcome>)>,
    finishes: Vec<(JobFinish, Reply<bool>)>,
    claims: Vec<(ClaimRequest, Reply<Vec<ClaimedRow>>)>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Batch {
    fn len(&self) -> usize {
        self.ingests.len() + self.finishes.len() + self.claims.len()
    }

    fn take(&mut self, op: Op) {
        match op {
            Op::Ingest(d, reply) => self.ingests.push((*d, reply)),
            Op::Finish(f, reply) => self.finishes.push((f, reply)),
            Op::Claim(c, reply) => self.claims.push((c, reply)),
            Op::Shutdown(reply) => self.shutdown = Some(reply),
        }
    }
}

/// What one transaction produced, per operation.
struct Written {
    ingested: Vec<IngestOutcome>,
    finished: Vec<bool>,
    claimed: Vec<Vec<ClaimedRow>>,
}

/// Answers that may only be given once the commit is on disk.
#[derive(Default)]
struct Durable {
    ingests: Vec<Answer<IngestOutcome>>,
    claims: Vec<Answer<Vec<ClaimedRow>>>,
}

impl Durable {
    fn is_empty(&self) -> bool {
        self.ingests.is_empty() && self.claims.is_empty()
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
    }
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Op>) {
        while let Some(first) = rx.recv().await {
            let mut batch = Batch::default();
            batch.take(first);
            self.fill(&mut batch, &mut rx);
            // A batch with deliveries waits for a flush slot; whatever arrives meanwhile joins it.
            let permit = match &self.syncer {
                Some(_) if !batch.ingests.is_empty() => {
                    let permit = Arc::clone(&self.in_flight).acquire_owned().await.ok();
                    self.fill(&mut batch, &mut rx);
                    permit
                }
                _ => None,
            };
            let shutdown = batch.shutdown.take();
            if batch.len() > 0 {
                self.commit(batch, permit).await;
            }
            if let Some(reply) = shutdown {
                // Anything sent after the shutdown request is refused.
                rx.close();
                while let Ok(op) = rx.try_recv() {
                    refuse(op);
                }
                // Answered once every batch before it is flushed.
                if let Some(syncer) = &self.syncer {
                    let _ = syncer.barrier().await;
                }
                let _ = reply.send(());
                return;
            }
        }
    }

    fn fill(&self, batch: &mut Batch, rx: &mut mpsc::Receiver<Op>) {
        while batch.len() < self.max_batch && batch.shutdown.is_none() {
            match rx.try_recv() {
                Ok(op) => batch.take(op),
                Err(_) => break,
            }
        }
    }

    async fn commit(&self, mut batch: Batch, permit: Option<tokio::sync::OwnedSemaphorePermit>) {
        let started = Instant::now();
        let size = batch.len();
        let dialect = self.dialect;
        let deliveries: Vec<&NewDelivery> = batch.ingests.iter().map(|(d, _)| d).collect();
        let finishes: Vec<JobFinish> = batch.finishes.iter().map(|(f, _)| f.clone()).collect();
        let claims: Vec<ClaimRequest> = batch.claims.iter().map(|(c, _)| c.clone()).collect();
        let result = self.write(&deliveries, &finishes, &claims).await;
        drop(deliveries);
        let mut durable = Durable::default();
        match result {
            Ok(written) => {
                for ((_, reply), recorded) in batch.finishes.drain(..).zip(written.finished) {
                    let _ = reply.send(Ok(recorded));
                }
                for ((_, reply), outcome) in batch.ingests.drain(..).zip(written.ingested) {
                    durable.ingests.push((reply, Ok(outcome)));
                }
                for ((_, reply), claimed) in batch.claims.drain(..).zip(written.claimed) {
                    durable.claims.push((reply, Ok(claimed)));
                }
            }
            Err(error) if size == 1 => {
                tracing::error!(%error, "write failed");
                let failed = || StoreError::Database(clone_error(&error));
                for (_, reply) in batch.finishes.drain(..) {
                    let _ = reply.send(Err(failed()));
                }
                for (_, reply) in batch.ingests.drain(..) {
                    durable.ingests.push((reply, Err(failed())));
                }
                for (_, reply) in batch.claims.drain(..) {
                    durable.claims.push((reply, Err(failed())));
                }
            }
            Err(error) => {
                tracing::warn!(%error, size, "batch write failed; retrying its operations one by one");
                for (f, reply) in batch.finishes.drain(..) {
                    let result = self
                        .write(&[], std::slice::from_ref(&f), &[])
                        .await
                        .map(|mut w| w.finished.remove(0));
                    let _ = reply.send(result.map_err(StoreError::Database));
                }
                for (d, reply) in batch.ingests.drain(..) {
                    let result = self
                        .write(&[&d], &[], &[])
                        .await
                        .map(|mut w| w.ingested.remove(0));
                    durable
                        .ingests
                        .push((reply, result.map_err(StoreError::Database)));
                }
                for (c, reply) in batch.claims.drain(..) {
                    let result = self
                        .write(&[], &[], std::slice::from_ref(&c))
                        .await
                        .map(|mut w| w.claimed.remove(0));
                    durable
                        .claims
                        .push((reply, result.map_err(StoreError::Database)));
                }
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
            // Claims wait for the flush too, so that no handler runs for a delivery that is
            // not on disk yet (it may be in this batch or in the one still being flushed).
            Some(syncer) => syncer.after_commit(Box::new(move |flushed| {
                durable.answer(flushed);
                drop(permit);
            })),
            None => durable.answer(Ok(())),
        }
    }

    /// One transaction (on PostgreSQL, job results first in one of their own).
    async fn write(
        &self,
        deliveries: &[&NewDelivery],
        finishes: &[JobFinish],
        claims: &[ClaimRequest],
    ) -> Result<Written, sqlx::Error> {
        let separate = !self.dialect.syncs_separately()
            && !deliveries.is_empty()
            && (!finishes.is_empty() || !claims.is_empty());
        if separate {
            let first = self.transaction(&[], finishes, claims).await?;
            let second = self.transaction(deliveries, &[], &[]).await?;
            return Ok(Written {
                ingested: second.ingested,
                ..first
            });
        }
        self.transaction(deliveries, finishes, claims).await
    }

    async fn transaction(
        &self,
        deliveries: &[&NewDelivery],
        finishes: &[JobFinish],
        claims: &[ClaimRequest],
    ) -> Result<Written, sqlx::Error> {
        let now = now_ms();
        let dialect = self.dialect;
        if let Some(syncer) = &self.syncer
            && syncer.failed()
            && !deliveries.is_empty()
        {
            return Err(sqlx::Error::Protocol(
                "an earlier flush of the database to disk failed; restart hookdock".into(),
            ));
        }
        let mut conn = self.pool.acquire().await?;
        let mut tx = super::begin_write(&mut conn, dialect, !deliveries.is_empty()).await?;
        let finished = if finishes.is_empty() {
            Vec::new()
        } else {
            finish_jobs(&mut tx, dialect, finishes, now).await?
        };
        let ingested = if deliveries.is_empty() {
            Vec::new()
        } else {
            insert_deliveries(&mut tx, dialect, deliveries, now).await?
        };
        let mut claimed = Vec::with_capacity(claims.len());
        for claim in claims {
            claimed.push(claim_in(&mut tx, dialect, claim).await?);
        }
        tx.commit().await?;
        Ok(Written {
            ingested,
            finished,
            claimed,
        })
    }
}

fn refuse(op: Op) {
    match op {
        Op::Ingest(_, reply) => {
            let _ = reply.send(Err(StoreError::Closed));
        }
        Op::Finish(_, reply) => {
            let _ = reply.send(Err(StoreError::Closed));
        }
        Op::Claim(_, reply) => {
            let _ = reply.send(Err(StoreError::Closed));
        }
        Op::Shutdown(reply) => {
            let _ = reply.send(());
        }
    }
}

/// sqlx errors are not `Clone`; callers sharing a failed batch each get its description.
fn clone_error(error: &sqlx::Error) -> sqlx::Error {
    sqlx::Error::Protocol(error.to_string())
}
