//! Group commit: one task owns durable writes. It takes every operation waiting in its queue
//! (up to a batch limit), applies them all in one transaction, commits once (one fsync), then
//! answers each caller. Under load batches grow by themselves, so durability costs one fsync
//! per batch rather than per delivery; when idle a lone delivery commits at once.
//!
//! If a batch fails, its operations are retried one by one so that a single bad operation
//! cannot fail its neighbours; an operation that fails alone is answered with its error.

use std::time::Instant;

use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot};

use super::events::insert_deliveries;
use super::jobs::{JobFinish, finish_jobs};
use super::{Dialect, IngestOutcome, NewDelivery, StoreError, now_ms};

/// Pending operations beyond this make callers wait to enqueue (back-pressure).
const QUEUE_CAPACITY: usize = 8192;

enum Op {
    Ingest(
        Box<NewDelivery>,
        oneshot::Sender<Result<IngestOutcome, StoreError>>,
    ),
    Finish(JobFinish, oneshot::Sender<Result<bool, StoreError>>),
    Shutdown(oneshot::Sender<()>),
}

#[derive(Clone)]
pub(crate) struct WriterHandle {
    tx: mpsc::Sender<Op>,
}

pub(crate) fn spawn(dialect: Dialect, pool: AnyPool, max_batch: usize) -> WriterHandle {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    tokio::spawn(run(dialect, pool, rx, max_batch.max(1)));
    WriterHandle { tx }
}

impl WriterHandle {
    pub async fn ingest(&self, delivery: NewDelivery) -> Result<IngestOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Ingest(Box::new(delivery), reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub async fn finish(&self, finish: JobFinish) -> Result<bool, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Finish(finish, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Waits until everything enqueued before this call is committed, then stops the task.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Op::Shutdown(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn run(dialect: Dialect, pool: AnyPool, mut rx: mpsc::Receiver<Op>, max_batch: usize) {
    let mut ingests = Vec::with_capacity(max_batch);
    let mut finishes = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        let mut shutdown = None;
        let mut take = |op: Op| match op {
            Op::Ingest(d, reply) => ingests.push((*d, reply)),
            Op::Finish(f, reply) => finishes.push((f, reply)),
            Op::Shutdown(reply) => shutdown = Some(reply),
        };
        take(first);
        let mut taken = 1;
        while taken < max_batch {
            match rx.try_recv() {
                Ok(op) => {
                    take(op);
                    taken += 1;
                }
                Err(_) => break,
            }
        }
        if !ingests.is_empty() || !finishes.is_empty() {
            commit_batch(dialect, &pool, &mut ingests, &mut finishes).await;
        }
        if let Some(reply) = shutdown {
            // Anything sent after the shutdown request is refused.
            rx.close();
            while let Ok(op) = rx.try_recv() {
                refuse(op);
            }
            let _ = reply.send(());
            return;
        }
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
        Op::Shutdown(reply) => {
            let _ = reply.send(());
        }
    }
}

type IngestOp = (
    NewDelivery,
    oneshot::Sender<Result<IngestOutcome, StoreError>>,
);
type FinishOp = (JobFinish, oneshot::Sender<Result<bool, StoreError>>);

async fn commit_batch(
    dialect: Dialect,
    pool: &AnyPool,
    ingests: &mut Vec<IngestOp>,
    finishes: &mut Vec<FinishOp>,
) {
    let started = Instant::now();
    let size = ingests.len() + finishes.len();
    let deliveries: Vec<&NewDelivery> = ingests.iter().map(|(d, _)| d).collect();
    let jobs: Vec<JobFinish> = finishes.iter().map(|(f, _)| f.clone()).collect();
    // Job completions go first in a transaction of their own that is not fsynced (see
    // `Dialect::begin_write`), so a job's key is free again without waiting for the disk;
    // the deliveries then commit durably.
    let result = if !deliveries.is_empty() && !jobs.is_empty() {
        match write(dialect, pool, &[], &jobs).await {
            Ok((_, finished)) => write(dialect, pool, &deliveries, &[])
                .await
                .map(|(ingested, _)| (ingested, finished)),
            Err(e) => Err(e),
        }
    } else {
        write(dialect, pool, &deliveries, &jobs).await
    };
    drop(deliveries);
    match result {
        Ok((ingested, finished)) => {
            for ((_, reply), outcome) in ingests.drain(..).zip(ingested) {
                let _ = reply.send(Ok(outcome));
            }
            for ((_, reply), recorded) in finishes.drain(..).zip(finished) {
                let _ = reply.send(Ok(recorded));
            }
        }
        Err(error) if size == 1 => {
            tracing::error!(%error, "write failed");
            for (_, reply) in ingests.drain(..) {
                let _ = reply.send(Err(StoreError::Database(clone_error(&error))));
            }
            for (_, reply) in finishes.drain(..) {
                let _ = reply.send(Err(StoreError::Database(clone_error(&error))));
            }
        }
        Err(error) => {
            tracing::warn!(%error, size, "batch write failed; retrying its operations one by one");
            for (d, reply) in ingests.drain(..) {
                let result = write(dialect, pool, &[&d], &[])
                    .await
                    .map(|(mut o, _)| o.remove(0));
                let _ = reply.send(result.map_err(StoreError::Database));
            }
            for (f, reply) in finishes.drain(..) {
                let result = write(dialect, pool, &[], std::slice::from_ref(&f))
                    .await
                    .map(|(_, mut r)| r.remove(0));
                let _ = reply.send(result.map_err(StoreError::Database));
            }
        }
    }
    metrics::histogram!("hookdock_store_batch_size", "dialect" => dialect.name())
        .record(size as f64);
    metrics::histogram!("hookdock_store_batch_seconds", "dialect" => dialect.name())
        .record(started.elapsed().as_secs_f64());
}

/// One transaction; fsynced at commit only when it holds deliveries.
async fn write(
    dialect: Dialect,
    pool: &AnyPool,
    deliveries: &[&NewDelivery],
    finishes: &[JobFinish],
) -> Result<(Vec<IngestOutcome>, Vec<bool>), sqlx::Error> {
    let now = now_ms();
    let mut conn = pool.acquire().await?;
    let mut tx = super::begin_write(&mut conn, dialect, !deliveries.is_empty()).await?;
    let ingested = if deliveries.is_empty() {
        Vec::new()
    } else {
        insert_deliveries(&mut tx, dialect, deliveries, now).await?
    };
    let finished = if finishes.is_empty() {
        Vec::new()
    } else {
        finish_jobs(&mut tx, dialect, finishes, now).await?
    };
    tx.commit().await?;
    Ok((ingested, finished))
}

/// sqlx errors are not `Clone`; callers sharing a failed batch each get its description.
fn clone_error(error: &sqlx::Error) -> sqlx::Error {
    sqlx::Error::Protocol(error.to_string())
}
