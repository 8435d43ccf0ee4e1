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

    /// Statements run on every new connection.
    pub fn connection_setup(self, writer: bool) -> &'static [&'static str] {
        match (self, writer) {
            // WAL lets readers run beside the writer; synchronous=FULL fsyncs the WAL at each
            // commit, so a committed delivery survives power loss, not just a crash.
            (Dialect::Sqlite, true) => &[
                "PRAGMA journal_mode = WAL",
                "PRAGMA synchronous = FULL",
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

    /// How a write transaction starts. Only transactions that hold deliveries GitHub is
    /// waiting for are `durable` (fsynced at commit); queue bookkeeping (claims, finishes,
    /// releases) is not: losing its last commits to a power cut only means a job runs again,
    /// and a job's effects commit with its finish, so they still apply once.
    ///
    /// SQLite's sync level is per connection, so every write transaction sets it; the PRAGMA
    /// and the `BEGIN` go to the database in one call (one hand-off to sqlx's SQLite thread).
    /// `None`: a plain `BEGIN`.
    pub fn begin_write(self, durable: bool) -> Option<&'static str> {
        match (self, durable) {
            (Dialect::Sqlite, true) => Some("PRAGMA synchronous = FULL; BEGIN"),
            (Dialect::Sqlite, false) => Some("PRAGMA synchronous = NORMAL; BEGIN"),
            (Dialect::Postgres, true) => None,
            (Dialect::Postgres, false) => Some("BEGIN; SET LOCAL synchronous_commit = off"),
        }
    }

    /// Whether queries built for this dialect use `?` placeholders rather than `$n`. sqlx binds
    /// SQLite's `$n` parameters by looking each one up by name (a linear search per parameter,
    /// so quadratic in a multi-row statement); `?` binds by position. PostgreSQL only takes `$n`.
    pub fn positional_placeholders(self) -> bool {
        self == Dialect::Sqlite
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

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }
}
