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
            ],
            (Dialect::Sqlite, false) => {
                &["PRAGMA busy_timeout = 10000", "PRAGMA foreign_keys = ON"]
            }
            (Dialect::Postgres, _) => &[],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }
}
