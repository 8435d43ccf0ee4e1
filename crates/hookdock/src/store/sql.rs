//! A small SQL text builder. [`Sql::new`] writes `$n` placeholders, which both SQLite and
//! PostgreSQL accept (sqlx's `QueryBuilder` for the `Any` driver writes `?`, which PostgreSQL
//! rejects). [`Sql::with`] writes the placeholders the dialect binds fastest (see
//! [`Dialect::positional_placeholders`]); the hot paths use it.

use std::borrow::Cow;

use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Executor};

use super::Dialect;

/// One bound value: borrowed where the caller's data outlives the statement, so that a
/// multi-row insert does not copy every text and body it binds.
#[derive(Debug, Clone)]
pub(crate) enum Arg<'a> {
    Int(Option<i64>),
    Text(Option<Cow<'a, str>>),
    Bytes(Cow<'a, [u8]>),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}
impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}
impl From<String> for Arg<'_> {
    fn from(v: String) -> Self {
        Arg::Text(Some(Cow::Owned(v)))
    }
}
impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(Some(Cow::Borrowed(v)))
    }
}
impl From<Option<String>> for Arg<'_> {
    fn from(v: Option<String>) -> Self {
        Arg::Text(v.map(Cow::Owned))
    }
}
impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::Text(v.map(Cow::Borrowed))
    }
}
impl From<Vec<u8>> for Arg<'_> {
    fn from(v: Vec<u8>) -> Self {
        Arg::Bytes(Cow::Owned(v))
    }
}
impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(v: &'a [u8]) -> Self {
        Arg::Bytes(Cow::Borrowed(v))
    }
}

#[derive(Debug, Default)]
pub(crate) struct Sql<'a> {
    text: String,
    args: Vec<Arg<'a>>,
    /// `?` instead of `$n`.
    positional: bool,
}

impl<'a> Sql<'a> {
    /// SQL with `$n` placeholders, valid on every dialect.
    pub fn new(text: &str) -> Sql<'a> {
        Sql {
            text: text.to_owned(),
            args: Vec::new(),
            positional: false,
        }
    }

    /// SQL for `dialect`, with the placeholders it binds fastest.
    pub fn with(dialect: Dialect, text: &str) -> Sql<'a> {
        Sql {
            positional: dialect.positional_placeholders(),
            ..Sql::new(text)
        }
    }

    pub fn push(&mut self, text: &str) -> &mut Sql<'a> {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder for `value`.
    pub fn bind(&mut self, value: impl Into<Arg<'a>>) -> &mut Sql<'a> {
        self.args.push(value.into());
        if self.positional {
            self.text.push('?');
        } else {
            use std::fmt::Write;
            let _ = write!(self.text, "${}", self.args.len());
        }
        self
    }

    /// Appends `(v1, v2, …)` with one placeholder per value.
    pub fn bind_list<A: Into<Arg<'a>>>(
        &mut self,
        values: impl IntoIterator<Item = A>,
    ) -> &mut Sql<'a> {
        self.text.push('(');
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.bind(v);
        }
        self.text.push(')');
        self
    }

    fn query(&self) -> Query<'_, Any, AnyArguments> {
        // The text is built from the store's own statements; every value is bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(self.text.as_str()));
        for arg in &self.args {
            q = match arg {
                Arg::Int(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.as_deref()),
                Arg::Bytes(v) => q.bind(v.as_ref()),
            };
        }
        q
    }

    pub async fn fetch_all<'e, E>(&self, executor: E) -> Result<Vec<AnyRow>, sqlx::Error>
    where
        E: Executor<'e, Database = Any>,
    {
        self.query().fetch_all(executor).await
    }

    pub async fn fetch_optional<'e, E>(&self, executor: E) -> Result<Option<AnyRow>, sqlx::Error>
    where
        E: Executor<'e, Database = Any>,
    {
        self.query().fetch_optional(executor).await
    }

    pub async fn execute<'e, E>(&self, executor: E) -> Result<AnyQueryResult, sqlx::Error>
    where
        E: Executor<'e, Database = Any>,
    {
        self.query().execute(executor).await
    }
}

/// A connection the write path runs its statements on: sqlx's (every database, and reads) or
/// the group-commit writer's own SQLite connection ([`Direct`]). The queue's and handlers'
/// writes are written once against this and run on either.
pub(crate) trait WriteConn {
    /// Runs a statement; returns the number of rows it changed.
    async fn exec(&mut self, sql: &Sql<'_>) -> Result<u64, sqlx::Error>;
    /// Runs a statement and returns its rows.
    async fn rows(&mut self, sql: &Sql<'_>) -> Result<Vec<Row>, sqlx::Error>;
    /// Runs a statement and returns its first row, if any.
    async fn row(&mut self, sql: &Sql<'_>) -> Result<Option<Row>, sqlx::Error> {
        Ok(self.rows(sql).await?.into_iter().next())
    }
}

impl WriteConn for sqlx::AnyConnection {
    async fn exec(&mut self, sql: &Sql<'_>) -> Result<u64, sqlx::Error> {
        Ok(sql.execute(&mut *self).await?.rows_affected())
    }

    async fn rows(&mut self, sql: &Sql<'_>) -> Result<Vec<Row>, sqlx::Error> {
        Ok(sql
            .fetch_all(&mut *self)
            .await?
            .into_iter()
            .map(Row::Any)
            .collect())
    }
}

/// A row from either kind of connection.
pub(crate) enum Row {
    Any(AnyRow),
    Direct {
        values: Vec<rusqlite::types::Value>,
        names: std::sync::Arc<[String]>,
    },
}

impl Row {
    /// The value of a column, by position or name.
    pub fn try_get<T: Column, I: ColumnIndex>(&self, index: I) -> Result<T, sqlx::Error> {
        match self {
            Row::Any(row) => sqlx::Row::try_get::<T, I>(row, index),
            Row::Direct { values, names } => {
                let i = index.position(names)?;
                let value = values
                    .get(i)
                    .ok_or_else(|| sqlx::Error::ColumnIndexOutOfBounds {
                        index: i,
                        len: values.len(),
                    })?;
                T::from_direct(value).map_err(|reason| sqlx::Error::ColumnDecode {
                    index: i.to_string(),
                    source: reason.into(),
                })
            }
        }
    }
}

/// A column position or name.
pub(crate) trait ColumnIndex: sqlx::ColumnIndex<AnyRow> {
    fn position(&self, names: &[String]) -> Result<usize, sqlx::Error>;
}

impl ColumnIndex for usize {
    fn position(&self, _names: &[String]) -> Result<usize, sqlx::Error> {
        Ok(*self)
    }
}

impl ColumnIndex for &str {
    fn position(&self, names: &[String]) -> Result<usize, sqlx::Error> {
        names
            .iter()
            .position(|n| n == self)
            .ok_or_else(|| sqlx::Error::ColumnNotFound((*self).to_owned()))
    }
}

/// A type the write path reads out of rows.
pub(crate) trait Column: Sized + for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any> {
    fn from_direct(value: &rusqlite::types::Value) -> Result<Self, String>;
}

fn mismatch(want: &str, got: &rusqlite::types::Value) -> String {
    format!("expected {want}, found {:?}", got.data_type())
}

impl Column for i64 {
    fn from_direct(value: &rusqlite::types::Value) -> Result<Self, String> {
        match value {
            rusqlite::types::Value::Integer(v) => Ok(*v),
            other => Err(mismatch("an integer", other)),
        }
    }
}

impl Column for String {
    fn from_direct(value: &rusqlite::types::Value) -> Result<Self, String> {
        match value {
            rusqlite::types::Value::Text(v) => Ok(v.clone()),
            other => Err(mismatch("text", other)),
        }
    }
}

impl Column for Vec<u8> {
    fn from_direct(value: &rusqlite::types::Value) -> Result<Self, String> {
        match value {
            rusqlite::types::Value::Blob(v) => Ok(v.clone()),
            // As SQLite (and sqlx) read a text value as a blob: its bytes.
            rusqlite::types::Value::Text(v) => Ok(v.as_bytes().to_vec()),
            other => Err(mismatch("a blob", other)),
        }
    }
}

impl<T: Column> Column for Option<T>
where
    Option<T>: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    fn from_direct(value: &rusqlite::types::Value) -> Result<Self, String> {
        match value {
            rusqlite::types::Value::Null => Ok(None),
            other => T::from_direct(other).map(Some),
        }
    }
}

/// The group-commit writer's own SQLite connection, called directly on the writer's thread:
/// no hand-off to another thread per statement, as sqlx's SQLite driver makes. Its methods
/// never wait, so futures of the write path driven on it finish in one poll ([`ready`]).
pub(crate) struct Direct<'c> {
    pub conn: &'c rusqlite::Connection,
}

/// A SQLite error of the writer's connection, as sqlx reports errors: what SQLite refused
/// (`database or disk is full`) as a database error with its code, anything else as a
/// protocol error.
pub(crate) fn direct_error(e: rusqlite::Error) -> sqlx::Error {
    match e {
        rusqlite::Error::SqliteFailure(failure, message) => {
            sqlx::Error::Database(Box::new(CopiedDatabaseError {
                code: Some(failure.extended_code.to_string()),
                message: message.unwrap_or_else(|| failure.to_string()),
            }))
        }
        other => sqlx::Error::Protocol(format!("SQLite: {other}")),
    }
}

/// sqlx errors are not `Clone`: callers sharing a failed batch each get a copy that reads as
/// the original does (a database error stays one, with its code and message; a pool that timed
/// out or an I/O error stays that).
pub(crate) fn copy_error(error: &sqlx::Error) -> sqlx::Error {
    match error {
        sqlx::Error::Database(e) => sqlx::Error::Database(Box::new(CopiedDatabaseError {
            code: e.code().map(Cow::into_owned),
            message: e.message().to_owned(),
        })),
        sqlx::Error::Io(e) => sqlx::Error::Io(std::io::Error::new(e.kind(), e.to_string())),
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        sqlx::Error::WorkerCrashed => sqlx::Error::WorkerCrashed,
        sqlx::Error::Protocol(message) => sqlx::Error::Protocol(message.clone()),
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

/// A database error from the writer's own SQLite connection, or a copy of one: shown as sqlx
/// shows SQLite's, `(code: 13) database or disk is full`.
#[derive(Debug)]
struct CopiedDatabaseError {
    code: Option<String>,
    message: String,
}

impl std::fmt::Display for CopiedDatabaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.code {
            Some(code) => write!(f, "(code: {code}) {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for CopiedDatabaseError {}

impl sqlx::error::DatabaseError for CopiedDatabaseError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        self.code.as_deref().map(Cow::Borrowed)
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::Other
    }
}

impl Direct<'_> {
    fn prepare(&self, sql: &Sql<'_>) -> Result<rusqlite::CachedStatement<'_>, sqlx::Error> {
        let mut statement = self.conn.prepare_cached(&sql.text).map_err(direct_error)?;
        for (i, arg) in sql.args.iter().enumerate() {
            let bound = match arg {
                Arg::Int(v) => statement.raw_bind_parameter(i + 1, v),
                Arg::Text(v) => statement.raw_bind_parameter(i + 1, v.as_deref()),
                Arg::Bytes(v) => statement.raw_bind_parameter(i + 1, v.as_ref()),
            };
            bound.map_err(direct_error)?;
        }
        Ok(statement)
    }
}

impl WriteConn for Direct<'_> {
    async fn exec(&mut self, sql: &Sql<'_>) -> Result<u64, sqlx::Error> {
        let mut statement = self.prepare(sql)?;
        let changed = statement.raw_execute().map_err(direct_error)?;
        Ok(u64::try_from(changed).unwrap_or(0))
    }

    async fn rows(&mut self, sql: &Sql<'_>) -> Result<Vec<Row>, sqlx::Error> {
        let mut statement = self.prepare(sql)?;
        let names: std::sync::Arc<[String]> = statement
            .column_names()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let width = names.len();
        let mut rows = statement.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(direct_error)? {
            let values = (0..width)
                .map(|i| row.get::<_, rusqlite::types::Value>(i))
                .collect::<Result<Vec<_>, _>>()
                .map_err(direct_error)?;
            out.push(Row::Direct {
                values,
                names: std::sync::Arc::clone(&names),
            });
        }
        Ok(out)
    }
}

/// Drives a future that never waits (the write path on a [`Direct`] connection) to its end.
pub(crate) fn ready<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// Splits `n` rows into statements of at most `max` rows: `(start, rows, slots)`, so that
/// multi-row statements come in few distinct shapes (powers of two) and stay in the statement
/// cache, which holds every shape it sees (each a compiled program of its own: all sizes up to
/// `max` held 10 MB more). Where [`Dialect::pads_statements`], a batch takes one statement per
/// `max` rows, padded to a power-of-two number of row slots: the caller fills the
/// `slots - rows` spare slots with copies of a row that the statement's `ON CONFLICT … DO
/// NOTHING` skips. Elsewhere a spare row would cost as much as a real one, so there is one
/// statement per set bit of the size instead, and `slots == rows`.
pub(crate) fn padded_chunks(dialect: Dialect, n: usize, max: usize) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let left = (n - start).min(max);
        let (rows, slots) = if dialect.pads_statements() {
            (left, left.next_power_of_two().min(max.max(left)))
        } else {
            // The largest power of two that fits: one statement per set bit of the size.
            let rows = 1 << left.ilog2();
            (rows, rows)
        };
        out.push((start, rows, slots));
        start += rows;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal of the writer's SQLite connection reads as sqlx's own SQLite errors do, and
    /// each copy handed to the callers of a failed batch (a copy of a copy too) reads as its
    /// original, whatever the error.
    #[test]
    fn sqlite_refusals_read_as_database_errors_and_copies_read_the_same() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full".to_owned()),
        );
        let error = direct_error(full);
        let text = "error returned from database: (code: 13) database or disk is full";
        assert_eq!(error.to_string(), text);
        assert!(matches!(error, sqlx::Error::Database(_)));
        assert_eq!(copy_error(&copy_error(&error)).to_string(), text);
        for other in [
            sqlx::Error::Protocol("stored body hash of 3 bytes".into()),
            sqlx::Error::PoolTimedOut,
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "Connection refused (os error 111)",
            )),
        ] {
            assert_eq!(copy_error(&other).to_string(), other.to_string());
        }
    }

    #[test]
    fn placeholders_are_numbered_in_order() {
        let mut sql = Sql::new("SELECT 1 WHERE a = ");
        sql.bind(1i64).push(" AND b IN ").bind_list(["x", "y"]);
        assert_eq!(sql.text, "SELECT 1 WHERE a = $1 AND b IN ($2, $3)");
        assert_eq!(sql.args.len(), 3);
    }

    #[test]
    fn sqlite_placeholders_are_positional() {
        let mut sql = Sql::with(Dialect::Sqlite, "SELECT 1 WHERE a = ");
        sql.bind(1i64).push(" AND b IN ").bind_list(["x", "y"]);
        assert_eq!(sql.text, "SELECT 1 WHERE a = ? AND b IN (?, ?)");
        let mut sql = Sql::with(Dialect::Postgres, "SELECT ");
        sql.bind(1i64).push(", ").bind(2i64);
        assert_eq!(sql.text, "SELECT $1, $2");
    }

    #[test]
    fn chunks_cover_n_in_power_of_two_slots() {
        for dialect in [Dialect::Postgres, Dialect::Sqlite] {
            for n in 0..600 {
                let chunks = padded_chunks(dialect, n, 64);
                assert_eq!(chunks.iter().map(|c| c.1).sum::<usize>(), n);
                let mut next = 0;
                for &(start, rows, slots) in &chunks {
                    assert_eq!(start, next);
                    next += rows;
                    assert!(rows >= 1 && rows <= slots && slots <= 64, "{n}: {chunks:?}");
                    assert!(slots.is_power_of_two(), "{n}: {chunks:?}");
                    assert!(
                        dialect.pads_statements() || rows == slots,
                        "{n}: {chunks:?}"
                    );
                }
                let statements = match dialect {
                    Dialect::Postgres => n.div_ceil(64),
                    Dialect::Sqlite => n / 64 + (n % 64).count_ones() as usize,
                };
                assert_eq!(chunks.len(), statements, "{n}: {chunks:?}");
            }
        }
        assert_eq!(padded_chunks(Dialect::Postgres, 13, 256), [(0, 13, 16)]);
        assert_eq!(
            padded_chunks(Dialect::Sqlite, 13, 256),
            [(0, 8, 8), (8, 4, 4), (12, 1, 1)]
        );
        assert_eq!(
            padded_chunks(Dialect::Postgres, 70, 64),
            [(0, 64, 64), (64, 6, 8)]
        );
        assert_eq!(
            padded_chunks(Dialect::Sqlite, 70, 64),
            [(0, 64, 64), (64, 4, 4), (68, 2, 2)]
        );
    }
}
