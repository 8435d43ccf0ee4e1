//! The one place where SQLite and PostgreSQL differ at run time. Everything else is shared SQL.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn from_url(url: &str) -> Option<Dialect> {
        if url.starts_with("sqlite:") {
            Some(Dialect::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Dialect::Postgres)
        } else {
            None
        }
    }

    /// Row locking for the claim query. PostgreSQL lets concurrent claimers skip rows another
    /// instance is taking; SQLite has a single writer, so the claim is already exclusive.
    pub fn claim_lock(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => "FOR UPDATE OF j SKIP LOCKED",
        }
    }

    /// Row locking for the jobs a claim takes behind a head (see `store::jobs`): they are
    /// read, then taken, in one transaction, so PostgreSQL locks them as they are read and
    /// waits for any other writer of them (none skipped: a chain must have no gap).
    pub fn chain_lock(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => "FOR UPDATE",
        }
    }

    /// Statements run on every new connection.
    pub fn connection_setup(self, writer: bool) -> &'static [&'static str] {
        match (self, writer) {
            // WAL lets readers run beside the writer. Commits do not fsync
            // (synchronous=NORMAL): the store's syncer fdatasyncs the WAL file after a commit
            // and only then are the writes that must be durable answered (see
            // `store::syncer`), so the next transaction runs while the disk flushes the last.
            // Checkpoints still sync in NORMAL mode.
            (Dialect::Sqlite, true) => &[
                "PRAGMA journal_mode = WAL",
                "PRAGMA synchronous = NORMAL",
                "PRAGMA busy_timeout = 10000",
                "PRAGMA foreign_keys = ON",
                // Multi-row statements keep their statement journal in memory, not /var/tmp.
                "PRAGMA temp_store = MEMORY",
                // Checkpoints run beside the writer (see `store::checkpoints`); the writer only
                // checkpoints itself if those fall far behind.
                "PRAGMA wal_autocheckpoint = 20000",
            ],
            (Dialect::Sqlite, false) => {
                &["PRAGMA busy_timeout = 10000", "PRAGMA foreign_keys = ON"]
            }
            (Dialect::Postgres, _) => &[],
        }
    }

    /// How a write transaction starts. On PostgreSQL only transactions that hold deliveries
    /// GitHub is waiting for are `durable` (flushed at commit); queue bookkeeping (claims,
    /// finishes, releases) is not: losing its last commits to a power cut only means a job
    /// runs again, and a job's effects commit with its finish, so they still apply once.
    /// SQLite commits never fsync; durability comes from the syncer. `None`: a plain `BEGIN`.
    pub fn begin_write(self, durable: bool) -> Option<&'static str> {
        match (self, durable) {
            (Dialect::Sqlite, _) => Some(self.begin_immediate()),
            (Dialect::Postgres, true) => None,
            (Dialect::Postgres, false) => Some("BEGIN; SET LOCAL synchronous_commit = off"),
        }
    }

    /// `BEGIN` for a transaction that writes. On SQLite it takes the write lock at once: the
    /// group-commit writer has a connection of its own beside the pool's, and a transaction
    /// that read first and wrote later could otherwise find its snapshot stale and fail
    /// instead of waiting its turn.
    pub fn begin_immediate(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        }
    }

    /// Whether job claims go through the group-commit writer. SQLite has one write connection,
    /// so a claim joins the writer's next transaction instead of waiting for the connection;
    /// on PostgreSQL claims run on their own connections beside the writer.
    pub fn claims_through_writer(self) -> bool {
        self == Dialect::Sqlite
    }

    /// Whether transactions that decide a key's head job take advisory locks on the keys
    /// (PostgreSQL: several instances write at once; SQLite has a single writer).
    pub fn needs_key_locks(self) -> bool {
        self == Dialect::Postgres
    }

    /// Whether queries built for this dialect use `?` placeholders rather than `$n`. sqlx binds
    /// SQLite's `$n` parameters by looking each one up by name (a linear search per parameter,
    /// so quadratic in a multi-row statement); `?` binds by position. PostgreSQL only takes `$n`.
    pub fn positional_placeholders(self) -> bool {
        self == Dialect::Sqlite
    }

    /// Whether multi-row statements are padded to a power-of-two number of rows rather than
    /// split into power-of-two statements (see `sql::padded_chunks`). PostgreSQL's round trips
    /// make fewer statements worth a few skipped rows; on SQLite a spare row costs as much to
    /// skip as a row to insert.
    pub fn pads_statements(self) -> bool {
        self == Dialect::Postgres
    }

    /// Wraps `columns` (a list of column names of the subquery `t` that follows) so that the
    /// whole result arrives as one JSON text, an array of row arrays (`[]` for no rows). A
    /// large read then costs one row through the driver instead of one per row.
    pub fn json_rows(self, columns: &str) -> String {
        match self {
            Dialect::Sqlite => format!("SELECT json_group_array(json_array({columns})) FROM ("),
            Dialect::Postgres => format!(
                "SELECT COALESCE(json_agg(json_build_array({columns})), '[]'::json)::text FROM ("
            ),
        }
    }

    /// Whether a database error says that a table does not exist (PostgreSQL's
    /// `undefined_table`, SQLite's "no such table"), as opposed to any other failure to read.
    pub fn missing_table(self, error: &dyn sqlx::error::DatabaseError) -> bool {
        match self {
            Dialect::Sqlite => error.message().starts_with("no such table"),
            Dialect::Postgres => error.code().as_deref() == Some("42P01"),
        }
    }

    /// Whether the server ended the connection and said so (PostgreSQL's SQLSTATE class 57P:
    /// shut down by the operator or a restart, a server process crash, starting up, the
    /// database dropped, an idle timeout; a failover or a restart sends every connection one of
    /// these before closing it). SQLite has no server to do that.
    pub fn connection_ended(self, error: &sqlx::Error) -> bool {
        match self {
            Dialect::Sqlite => false,
            Dialect::Postgres => error
                .as_database_error()
                .and_then(|e| e.code())
                .is_some_and(|code| code.starts_with("57P")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }
}
