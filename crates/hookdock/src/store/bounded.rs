//! Deadlines on PostgreSQL queries. A network partition leaves a connection open and silent:
//! the server's answer never arrives and, with the request acknowledged, nothing makes the
//! operating system give the connection up, so an unbounded query waits for good. Every query
//! the store runs on its pool goes through [`Bounded`] (and its transactions through
//! [`Store::bounded`](super::Store::bounded)): with no answer within the database timeout it
//! fails. The pool's own checks of its connections ([`PoolChecks`]) are bounded too, and close
//! a silent connection without the protocol's goodbye, which would wait for good: a partition
//! neither holds a request nor uses up the pool.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt, TryFutureExt, TryStreamExt, future::BoxFuture};
use sqlx::any::{AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo};
use sqlx::pool::PoolConnectionMetadata;
use sqlx::{Any, AnyPool, Describe, Either, Execute, Executor, SqlStr};

/// A pool whose queries fail with a timeout after `limit` without an answer; `None`: no limit
/// (SQLite: a local file answers or fails by itself).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounded<'p> {
    pub pool: &'p AnyPool,
    pub limit: Option<Duration>,
}

/// A timeout, in words, as the store's errors give it.
pub(crate) fn timed_out(message: impl Into<String>) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        message.into(),
    ))
}

/// The error a query without an answer within `limit` ends with.
fn no_answer(limit: Duration) -> sqlx::Error {
    timed_out(format!(
        "no answer from the database within {} s (setting `database_timeout_secs`); the \
         connection is closed",
        limit.as_secs()
    ))
}

/// `work`, failed with [`no_answer`] if it does not end within `limit`.
pub(crate) async fn within<T, E: From<sqlx::Error>>(
    limit: Option<Duration>,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    match limit {
        None => work.await,
        Some(limit) => match tokio::time::timeout(limit, work).await {
            Ok(result) => result,
            Err(_) => Err(no_answer(limit).into()),
        },
    }
}

/// Longest wait for a ping before its connection is taken for silent (a live server answers
/// one at once); shorter where the database timeout is.
const PING_WAIT: Duration = Duration::from_secs(5);

/// How long a connection is given to answer something a live server answers at once (a ping,
/// the goodbye when the pool closes): [`PING_WAIT`], or `limit` (the database timeout) if
/// shorter.
pub(crate) fn answer_wait(limit: Duration) -> Duration {
    limit.min(PING_WAIT)
}

/// Age after which a connection handed back is closed and later replaced, as sqlx's own
/// `max_lifetime` would (a server name that moved, the server process's memory); sqlx's is off
/// because it closes with the protocol's goodbye, before any check, a connection that may be
/// silent (see [`PoolChecks::released`]).
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// The pool's checks of its connections, in place of sqlx's unbounded ones: before handing an
/// idle connection out (`before_acquire`) and when one is handed back (`after_release`).
/// Each pings within `wait`; a connection that stays silent is closed by dropping it (see
/// [`close_silent`]). The time a connection was last lost is kept, found silent here or broken
/// under a write ([`PoolChecks::lost`]), and connections that have sat idle since before then
/// are given up without a ping: most likely the same partition cut them off, so requests do not
/// wait `wait` for every one of them in turn, or the same restart or failover is ending them,
/// one server process after another, so one that still answers a ping may be ended before the
/// next statement, and a write tried again on it would be lost to it as well.
#[derive(Debug)]
pub(crate) struct PoolChecks {
    wait: Duration,
    epoch: Instant,
    /// When a connection was last lost: microseconds after `epoch`, plus one; 0: never.
    lost_at: AtomicU64,
}

impl PoolChecks {
    /// Checks whose pings wait at most [`PING_WAIT`], or `limit` if shorter.
    pub fn new(limit: Duration) -> PoolChecks {
        PoolChecks {
            wait: answer_wait(limit),
            epoch: Instant::now(),
            lost_at: AtomicU64::new(0),
        }
    }

    /// Before use: true to hand the connection out; an error to close it (the pool then opens
    /// another), when it went idle before a connection was last lost, or does not answer a
    /// ping in time.
    pub async fn idle(
        &self,
        conn: &mut sqlx::AnyConnection,
        meta: PoolConnectionMetadata,
    ) -> Result<bool, sqlx::Error> {
        if self.predates(meta.idle_for) {
            close_silent(conn).await?;
            return Err(timed_out(
                "idle since before another connection to the database was lost (found silent, \
                 or broken under a write); closed",
            ));
        }
        self.ping(conn).await.map(|()| true)
    }

    /// Handed back, maybe in the middle of a query its caller gave up on (a deadline, a request
    /// whose client went away): true to keep it; false to close it (past [`MAX_LIFETIME`]); an
    /// error to close it, when it does not answer a ping in time (a connection a partition
    /// silenced never does: sqlx's own ping, and the pool slot with it, would wait for good).
    pub async fn released(
        &self,
        conn: &mut sqlx::AnyConnection,
        meta: PoolConnectionMetadata,
    ) -> Result<bool, sqlx::Error> {
        self.ping(conn).await?;
        Ok(meta.age < MAX_LIFETIME)
    }

    async fn ping(&self, conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
        use sqlx::Connection;
        match tokio::time::timeout(self.wait, conn.ping()).await {
            Ok(answered) => answered,
            Err(_) => {
                self.lost();
                close_silent(conn).await?;
                Err(timed_out(format!(
                    "a database connection did not answer a ping within {} s (a network \
                     partition, or the server gone); it is closed and a new one opened",
                    self.wait.as_secs()
                )))
            }
        }
    }

    /// A connection was lost just now (found silent by a ping here, or broken under a write):
    /// the connections idle since before now are given up unused when next taken.
    pub fn lost(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.lost_at.store(now.saturating_add(1), Ordering::Relaxed);
    }

    /// True when a connection idle for `idle_for` went idle before one was last lost.
    fn predates(&self, idle_for: Duration) -> bool {
        match self.lost_at.load(Ordering::Relaxed) {
            0 => false,
            last => {
                let idle_since = self.epoch.elapsed().saturating_sub(idle_for);
                idle_since < Duration::from_micros(last - 1)
            }
        }
    }
}

/// Closes a silent connection by dropping it (its socket closes), leaving the pool an
/// in-memory SQLite stand-in (opened in a fraction of a millisecond) to close in its place:
/// sqlx closes with the protocol's goodbye, whose TLS flush waits for the server, so on a silent
/// connection that close, and the pool slot with it, would wait for good.
async fn close_silent(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let stand_in = sqlx::AnyConnection::connect("sqlite::memory:").await?;
    drop(std::mem::replace(conn, stand_in));
    Ok(())
}

impl<'p> Executor<'p> for Bounded<'p> {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Any>,
    {
        let Some(limit) = self.limit else {
            return self.pool.fetch_many(query);
        };
        // The store reads whole results anyway: one deadline for all of it.
        let all = within(
            Some(limit),
            self.pool.fetch_many(query).try_collect::<Vec<_>>(),
        );
        all.map_ok(|items| futures_util::stream::iter(items.into_iter().map(Ok)))
            .try_flatten_stream()
            .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<AnyRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Any>,
    {
        match self.limit {
            None => self.pool.fetch_optional(query),
            limit => within(limit, self.pool.fetch_optional(query)).boxed(),
        }
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [AnyTypeInfo],
    ) -> BoxFuture<'e, Result<AnyStatement, sqlx::Error>>
    where
        'p: 'e,
    {
        match self.limit {
            None => self.pool.prepare_with(sql, parameters),
            limit => within(limit, self.pool.prepare_with(sql, parameters)).boxed(),
        }
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<Describe<Any>, sqlx::Error>>
    where
        'p: 'e,
    {
        match self.limit {
            None => self.pool.describe(sql),
            limit => within(limit, self.pool.describe(sql)).boxed(),
        }
    }
}
