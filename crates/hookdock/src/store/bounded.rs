//! Deadlines on PostgreSQL queries. A network partition leaves a connection open and silent:
//! the server's answer never arrives and, with the request acknowledged, nothing makes the
//! operating system give the connection up, so an unbounded query waits for good. Every query
//! the store runs on its pool goes through [`Bounded`] (and its transactions through
//! [`Store::bounded`](super::Store::bounded)): with no answer within the database timeout it
//! fails, and the pool closes its connection when it is handed back ([`check_released`])
//! instead of keeping the slot for good.

use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt, TryFutureExt, TryStreamExt, future::BoxFuture};
use sqlx::any::{AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo};
use sqlx::{Any, AnyPool, Describe, Either, Execute, Executor};

/// A pool whose queries fail with a timeout after `limit` without an answer; `None`: no limit
/// (SQLite: a local file answers or fails by itself).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounded<'p> {
    pub pool: &'p AnyPool,
    pub limit: Option<Duration>,
}

/// The error a query without an answer within `limit` ends with.
pub(crate) fn no_answer(limit: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "no answer from the database within {} s (setting `database_timeout_secs`); the \
             connection is closed",
            limit.as_secs()
        ),
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

/// The pool's check of a connection handed back (`after_release`): true to keep it; an error
/// to close it, when it does not answer a ping within `limit`. sqlx closes a connection with
/// the protocol's goodbye, which over TLS waits for the server (its flush reads): on a silent
/// connection that close, and the pool slot with it, would wait for good. A silent connection
/// is therefore closed here, by dropping it, and the pool is given a stand-in to close (an
/// in-memory SQLite connection, opened in a fraction of a millisecond).
pub(crate) async fn check_released(
    conn: &mut sqlx::AnyConnection,
    limit: Duration,
) -> Result<bool, sqlx::Error> {
    use sqlx::Connection;
    match tokio::time::timeout(limit, conn.ping()).await {
        Ok(answered) => answered.map(|()| true),
        Err(_) => {
            let stand_in = sqlx::AnyConnection::connect("sqlite::memory:").await?;
            drop(std::mem::replace(conn, stand_in));
            Err(no_answer(limit))
        }
    }
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

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [AnyTypeInfo],
    ) -> BoxFuture<'e, Result<AnyStatement<'q>, sqlx::Error>>
    where
        'p: 'e,
    {
        match self.limit {
            None => self.pool.prepare_with(sql, parameters),
            limit => within(limit, self.pool.prepare_with(sql, parameters)).boxed(),
        }
    }

    fn describe<'e, 'q: 'e>(self, sql: &'q str) -> BoxFuture<'e, Result<Describe<Any>, sqlx::Error>>
    where
        'p: 'e,
    {
        match self.limit {
            None => self.pool.describe(sql),
            limit => within(limit, self.pool.describe(sql)).boxed(),
        }
    }
}
