//! All SQL lives here: deliveries, jobs, their history, and what handlers record.
//!
//! One `Store` serves SQLite (embedded default) and PostgreSQL (several instances sharing one
//! database) through sqlx's `Any` driver with runtime-checked queries written once in SQL both
//! accept; the few differences sit in [`Dialect`]. Every query is exercised by the integration
//! suite on both databases.
//!
//! Writes that must be durable before anyone is told (ingested deliveries, job results) go
//! through a single group-commit writer ([`writer`]): many operations share one transaction and
//! one fsync. On SQLite all writes share one connection, so writers queue in order instead of
//! sleeping on the file lock.

mod automation;
mod backfill;
mod bounded;
mod dialect;
mod events;
mod hooks;
mod jobs;
mod keys;
mod metrics;
mod records;
mod sessions;
mod sql;
mod syncer;
mod walvfs;
mod writer;

use std::sync::{Arc, Once};
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Row};

pub use automation::{
    ActionRecord, AutomationRecord, FindingRecord, LlmCallRecord, ReviewRunRecord, ReviewRunRow,
    SimulatedEvent,
};
pub use backfill::{
    ApiSnapshot, BackfillProgress, BackfillRunRow, NewBackfillRun, RunEnd, RunProgress,
};
pub use dialect::Dialect;
pub(crate) use events::BODY_DICTIONARY;
pub use events::{
    EventDetail, EventFilter, EventPage, EventSummary, HistoryEntry, JobSummary, StoredBody,
    decompress_body,
};
pub use hooks::{HookRegistration, LastDelivery, LastEvent, Redelivery, RegistrationUpdate};
pub use jobs::{
    Chains, ClaimedChain, ClaimedJob, JobFinish, JobOutcome, QueueState, ReplayMode, ReplayReport,
};
pub use metrics::{
    ActivityKind, DraftChangesRecord, MemberRecord, MemberRow, PrActivityRecord, PrCommitsRecord,
    PullFilter, PullRequestRecord, PullRequestRow, PullRequestSize, ReviewRecord, ReviewRow,
    StoredEventRef,
};
pub use records::{
    CI_KINDS, CiRunRecord, DeploymentStatusRecord, PushRecord, RecordEffect, RecordFilter,
    RecordRow, ReleaseRecord, SocialCounts, SocialEventRecord,
};
pub use sessions::SessionRow;
pub(crate) use writer::{SLOTS_CLOSED, free_slots};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// A storage failure. Callers map it to 503 (ingest) or 500; it never carries secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// In words, from [`migration_problem`].
    #[error("database migration failed: {0}")]
    Migrate(String),
    #[error("cannot open database {url}: {reason}")]
    Open { url: String, reason: String },
    #[error("the store is shutting down")]
    Closed,
    #[error("stored body of event {event_id} cannot be read back: {reason}")]
    CorruptBody { event_id: i64, reason: String },
    #[error("event {0} not found")]
    EventNotFound(i64),
    #[error("stored data cannot be read back: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Durability(String),
}

/// Status of a stored delivery, derived from its jobs once it has any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    Pending,
    Processing,
    Done,
    Failed,
    Dead,
    Ignored,
    ReplaySuspected,
}

impl EventStatus {
    pub const ALL: [EventStatus; 7] = [
        EventStatus::Pending,
        EventStatus::Processing,
        EventStatus::Done,
        EventStatus::Failed,
        EventStatus::Dead,
        EventStatus::Ignored,
        EventStatus::ReplaySuspected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Pending => "pending",
            EventStatus::Processing => "processing",
            EventStatus::Done => "done",
            EventStatus::Failed => "failed",
            EventStatus::Dead => "dead",
            EventStatus::Ignored => "ignored",
            EventStatus::ReplaySuspected => "replay_suspected",
        }
    }

    pub fn parse(s: &str) -> Option<EventStatus> {
        EventStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Status of one (event, handler) job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Processing,
    Done,
    Failed,
    Dead,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Processing => "processing",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Dead => "dead",
        }
    }
}

/// A verified delivery ready to be written.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub delivery_id: String,
    pub event: String,
    pub action: Option<String>,
    pub repository: Option<String>,
    pub repository_id: Option<i64>,
    pub organization: Option<String>,
    pub installation_id: Option<i64>,
    pub hook_id: Option<i64>,
    pub target_type: Option<&'static str>,
    pub target_id: Option<i64>,
    pub sender: Option<String>,
    pub ordering_key: String,
    pub content_type: &'static str,
    /// JSON object of the delivery headers hookdock keeps.
    pub headers_json: String,
    pub body_zstd: Vec<u8>,
    pub body_size: i64,
    pub body_sha256: [u8; 32],
    /// Handlers subscribed to this event; empty means the event is stored as `ignored`.
    pub handlers: Vec<&'static str>,
    pub received_at: i64,
}

/// What the store did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Newly stored, with its initial status (pending, ignored or replay_suspected).
    Stored { event_id: i64, status: EventStatus },
    /// The delivery id was already stored; nothing changed.
    Duplicate { event_id: i64 },
}

/// A write to hookdock's own tables that a handler asks for. It is applied in the same
/// transaction that marks its job done, so a retried or crashed job never applies it twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Count one handled event for `scope` (a repository, or `org:NAME`) and event type.
    RecordActivity {
        scope: String,
        event: String,
        event_id: i64,
        received_at: i64,
    },
    /// Create or refresh a GitHub user (pull request metrics).
    UpsertMember(MemberRecord),
    /// Merge what an event says about a pull request; newer GitHub state wins.
    UpsertPullRequest(Box<PullRequestRecord>),
    /// Create or refresh a submitted review.
    UpsertReview(ReviewRecord),
    /// Record a review, review comment or issue comment on a pull request (first review time,
    /// review comment counts).
    RecordPrActivity(PrActivityRecord),
    /// What one answer of GitHub's commits API says of a pull request's first commit (the
    /// newest answer wins).
    RecordPrCommits(PrCommitsRecord),
    /// Changes of a pull request's draft state (draft intervals, ready-for-review time).
    RecordDraftChanges(DraftChangesRecord),
    /// Keep a REST API answer (newest per object), so `metrics rebuild` recomputes what came
    /// from it.
    KeepApiSnapshot(Box<ApiSnapshot>),
    /// What an automation did or would have done on GitHub, its review run and model calls.
    RecordAutomation(Box<AutomationRecord>),
    /// Record a push, release, CI run, deployment status, or star/fork/watch (repository
    /// records; see `store::records`).
    Record(Box<RecordEffect>),
}

/// One row of the activity table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Activity {
    pub repository: String,
    pub event: String,
    pub last_event_id: i64,
    #[serde(serialize_with = "ser_time")]
    pub last_received_at: i64,
    pub events_handled: i64,
}

/// Pool sizes, batching and the database timeout.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_batch: usize,
    pub max_connections: u32,
    /// PostgreSQL: a query (or a transaction the store runs) without an answer for this long
    /// fails and its connection is closed (see [`bounded`]). The group-commit writer's
    /// transactions have their own, shorter limit (a delivery is answered within GitHub's 10 s).
    pub timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_batch: 256,
            max_connections: 8,
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dialect: Dialect,
    /// Used by reads; on SQLite separate connections so reads never wait for the writer.
    read: AnyPool,
    /// Used by every write; a single connection on SQLite.
    write: AnyPool,
    writer: writer::WriterHandle,
    /// SQLite: flushes the WAL after commits (see [`syncer`]).
    syncer: Option<syncer::Syncer>,
    /// A worker is attached to the writer.
    pushes_jobs: std::sync::atomic::AtomicBool,
    /// How long a query may go unanswered ([`StoreOptions::timeout`]); `None` on SQLite, whose
    /// local file answers or fails by itself.
    limit: Option<Duration>,
}

impl Inner {
    /// The read pool, every query bounded by the database timeout.
    fn reads(&self) -> bounded::Bounded<'_> {
        bounded::Bounded {
            pool: &self.read,
            limit: self.limit,
        }
    }

    /// The write pool, every query bounded by the database timeout.
    fn writes(&self) -> bounded::Bounded<'_> {
        bounded::Bounded {
            pool: &self.write,
            limit: self.limit,
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dialect", &self.inner.dialect)
            .finish()
    }
}

/// Current time as Unix milliseconds.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// Unix milliseconds as RFC 3339 UTC with millisecond precision.
pub fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// Serializes a Unix-milliseconds field as RFC 3339.
pub(crate) fn ser_time<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*ms))
}

/// The URL without its password, for messages. Everything up to the last `@` counts as
/// user and password, so a password with characters that should have been escaped is still
/// hidden; so is a `password=` query parameter (PostgreSQL takes one there too). A URL without
/// a password is shown as it is.
pub fn redact_url(url: &str) -> String {
    // The query starts after the user info (an unescaped `?` may be in the password).
    let after_at = url.rfind('@').unwrap_or(0);
    let (base, query) = match url[after_at..].find('?') {
        Some(i) => (&url[..after_at + i], Some(&url[after_at + i + 1..])),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &base[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    format!("{}{}:***{}", &base[..scheme_end + 3], user, &base[at..])
                }
                None => base.to_owned(),
            }
        }
        _ => base.to_owned(),
    };
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

fn install_drivers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(sqlx::any::install_default_drivers);
}

impl Store {
    /// Connects (creating a SQLite file and its directory on first use) and starts the writer.
    /// Does not migrate; call [`Store::migrate`].
    pub async fn connect(url: &str, options: StoreOptions) -> Result<Store, StoreError> {
        install_drivers();
        let open_error = |reason: String| StoreError::Open {
            url: redact_url(url),
            reason,
        };
        let dialect = Dialect::from_url(url).ok_or_else(|| {
            open_error("unsupported scheme; use sqlite:// or postgres://".to_owned())
        })?;
        let (read, write, backend) = match dialect {
            Dialect::Sqlite => {
                let (url, path) = prepare_sqlite_url(url).map_err(open_error)?;
                let write = pool(dialect, true, 1, &url, None)
                    .await
                    .map_err(open_error)?;
                let read = pool(dialect, false, options.max_connections.max(2), &url, None)
                    .await
                    .map_err(open_error)?;
                let conn = writer::open_sqlite(&path).map_err(open_error)?;
                let syncer = syncer::Syncer::spawn(path)?;
                let backend = writer::Backend::Sqlite(writer::SqliteWriter { conn, syncer });
                (read, write, backend)
            }
            Dialect::Postgres => {
                let checks = Arc::new(bounded::PoolChecks::new(options.timeout));
                let pool = pool(
                    dialect,
                    true,
                    options.max_connections.max(4),
                    url,
                    Some(Arc::clone(&checks)),
                )
                .await
                .map_err(open_error)?;
                (
                    pool.clone(),
                    pool.clone(),
                    writer::Backend::Pool(pool, checks),
                )
            }
        };
        let syncer = match &backend {
            writer::Backend::Sqlite(sqlite) => Some(sqlite.syncer.clone()),
            writer::Backend::Pool(..) => None,
        };
        let writer = writer::spawn(dialect, backend, options.max_batch)?;
        if let Some(syncer) = &syncer {
            tokio::spawn(checkpoints(read.clone(), syncer.flushed()));
        }
        Ok(Store {
            inner: Arc::new(Inner {
                dialect,
                read,
                write,
                writer,
                syncer,
                pushes_jobs: std::sync::atomic::AtomicBool::new(false),
                limit: (dialect == Dialect::Postgres).then_some(options.timeout),
            }),
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.inner.dialect
    }

    /// `work`, a transaction (or several queries) on the store's pools, failed if it does not
    /// end within the database timeout (PostgreSQL; see [`bounded`]).
    pub(crate) async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        bounded::within(self.inner.limit, work).await
    }

    fn migrator(&self) -> &'static Migrator {
        match self.inner.dialect {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::Postgres => &POSTGRES_MIGRATIONS,
        }
    }

    /// Applies pending migrations; returns how many were applied.
    ///
    /// On SQLite foreign keys are off while they run, as SQLite's procedure for changing a
    /// table asks: a migration that rebuilds a table drops the old one, which would otherwise
    /// delete the rows that refer to it. Whether every reference still holds is checked after.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let before = self.applied_migrations().await.unwrap_or_default().len();
        match self.inner.dialect {
            Dialect::Sqlite => {
                let mut conn = self.inner.write.acquire().await?;
                sqlx::query("PRAGMA foreign_keys = OFF")
                    .execute(&mut *conn)
                    .await?;
                let migrated = self.migrator().run(&mut *conn).await;
                let broken = sqlx::query("PRAGMA foreign_key_check")
                    .fetch_all(&mut *conn)
                    .await;
                if let Err(error) = sqlx::query("PRAGMA foreign_keys = ON")
                    .execute(&mut *conn)
                    .await
                {
                    // Never hand the pool a connection that ignores foreign keys.
                    conn.close_on_drop();
                    return Err(error.into());
                }
                migrated?;
                let broken = broken?;
                if let Some(row) = broken.first() {
                    let table: String = row.try_get(0)?;
                    return Err(StoreError::Corrupt(format!(
                        "after migrating, {} rows of {table} (and maybe others) refer to rows that do not exist",
                        broken.len()
                    )));
                }
            }
            Dialect::Postgres => self.migrator().run(&self.inner.write).await?,
        }
        let after = self.applied_migrations().await?.len();
        Ok(after.saturating_sub(before))
    }

    async fn applied_migrations(&self) -> Result<Vec<i64>, StoreError> {
        let rows =
            sqlx::query("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                .fetch_all(self.inner.reads())
                .await?;
        rows.iter()
            .map(|r| r.try_get::<i64, _>(0).map_err(StoreError::from))
            .collect()
    }

    /// True when the database answers and has exactly the migrations this binary knows; an
    /// error when it cannot be read.
    pub async fn migrations_current(&self) -> Result<bool, StoreError> {
        let applied = match self.applied_migrations().await {
            Ok(v) => v,
            // No migrations table yet: reachable, but not migrated.
            Err(StoreError::Database(sqlx::Error::Database(e)))
                if self.inner.dialect.missing_table(&*e) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let known: Vec<i64> = self.migrator().iter().map(|m| m.version).collect();
        Ok(applied == known)
    }

    /// Lets the group-commit writer hand jobs to a worker of this process as soon as it can
    /// claim them, in the transaction that inserts them or frees their key (SQLite). `idle` is
    /// the worker's free slots, one per chain: the writer takes the slots it fills, and claims
    /// in `chains`. Returns where the jobs
    /// arrive, or `None` where claims do not go through the writer (PostgreSQL: the worker
    /// claims them itself).
    pub async fn attach_worker(
        &self,
        owner: &str,
        lease: Duration,
        idle: Arc<std::sync::atomic::AtomicUsize>,
        chains: Chains,
    ) -> Result<Option<tokio::sync::mpsc::UnboundedReceiver<ClaimedChain>>, StoreError> {
        if !self.inner.dialect.claims_through_writer() {
            return Ok(None);
        }
        let (jobs, rx) = tokio::sync::mpsc::unbounded_channel();
        self.inner
            .writer
            .attach(writer::Attached {
                owner: owner.to_owned(),
                lease_ms: i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2),
                idle,
                chains,
                jobs,
            })
            .await?;
        self.inner
            .pushes_jobs
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(Some(rx))
    }

    /// Asks the writer to claim what is due for the attached worker's free slots, in its next
    /// transaction (see [`Store::attach_worker`]); the jobs arrive in the worker's channel.
    pub async fn offer_jobs(&self) -> Result<(), StoreError> {
        self.inner.writer.offer().await
    }

    /// Stops handing jobs to the attached worker (see [`Store::attach_worker`]); returns once
    /// every job handed to it before has arrived in its channel.
    pub async fn detach_worker(&self) -> Result<(), StoreError> {
        if !self.inner.dialect.claims_through_writer() {
            return Ok(());
        }
        self.inner
            .pushes_jobs
            .store(false, std::sync::atomic::Ordering::Release);
        self.inner.writer.detach().await
    }

    /// Whether new jobs reach a worker of this process without it asking (see
    /// [`Store::attach_worker`]).
    pub fn pushes_jobs(&self) -> bool {
        self.inner
            .pushes_jobs
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stores a delivery through the group-commit writer; returns once it is committed.
    pub async fn ingest(&self, delivery: NewDelivery) -> Result<IngestOutcome, StoreError> {
        self.inner.writer.ingest(delivery).await
    }

    /// Records a job's result (and its effects) through the group-commit writer. Returns false
    /// when the job's lease had passed to another worker, in which case nothing was written.
    pub async fn finish_job(&self, finish: JobFinish) -> Result<bool, StoreError> {
        let recorded = self.finish_jobs(vec![finish]).await?;
        Ok(recorded.first().copied().unwrap_or(false))
    }

    /// Records the results of a chain's jobs (see [`Chains`]) in one transaction, in order;
    /// says for each whether it was recorded (see [`Store::finish_job`]).
    pub async fn finish_jobs(&self, finishes: Vec<JobFinish>) -> Result<Vec<bool>, StoreError> {
        self.inner.writer.finish(finishes).await
    }

    /// Returns once every write committed before the call is on disk. Writes outside the
    /// group-commit writer that must survive a power cut call this after committing (SQLite
    /// commits do not wait for the disk; PostgreSQL's do, so this is a no-op there).
    pub async fn sync(&self) -> Result<(), StoreError> {
        match &self.inner.syncer {
            Some(syncer) => syncer.barrier().await,
            None => Ok(()),
        }
    }

    /// Whether writes are still taken: false once the group-commit writer stopped (the store
    /// was closed, or the writer's thread died), when every write fails with
    /// [`StoreError::Closed`].
    pub fn writing(&self) -> bool {
        self.inner.writer.running()
    }

    /// False once flushing to disk has failed (SQLite): the store then refuses deliveries.
    pub fn durable(&self) -> bool {
        self.inner.syncer.as_ref().is_none_or(|s| !s.failed())
    }

    /// Stops the writer after it has committed everything already handed to it, then closes
    /// the pools. Later writes fail with [`StoreError::Closed`].
    pub async fn close(&self) {
        self.inner.writer.shutdown().await;
        // Closing says goodbye on each idle connection, which a live server takes at once and
        // which waits for good on one a partition silenced: bounded as a ping is, so a
        // shutdown never hangs on it (the connections left are dropped, their sockets closed).
        let pools = async {
            self.inner.read.close().await;
            self.inner.write.close().await;
            Ok::<_, StoreError>(())
        };
        let _ = bounded::within(self.inner.limit.map(bounded::answer_wait), pools).await;
    }

    /// A transaction on the write pool that holds the write lock from its start (see
    /// [`Dialect::begin_immediate`]).
    pub(crate) async fn write_transaction(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        self.inner
            .write
            .begin_with(self.inner.dialect.begin_immediate())
            .await
    }

    /// Reachability check for `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(self.inner.reads()).await?;
        Ok(())
    }

    pub async fn activity(&self) -> Result<Vec<Activity>, StoreError> {
        let rows = sqlx::query(
            "SELECT repository, event, last_event_id, last_received_at, events_handled \
             FROM repo_activity ORDER BY repository, event",
        )
        .fetch_all(self.inner.reads())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Activity {
                    repository: r.try_get(0)?,
                    event: r.try_get(1)?,
                    last_event_id: r.try_get(2)?,
                    last_received_at: r.try_get(3)?,
                    events_handled: r.try_get(4)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}

/// Least time between two checkpoints. Each one copies the frames committed since the last
/// into the database file and syncs that file, and a WAL flush that runs meanwhile waits for
/// the disk behind it: frequent small checkpoints keep that wait short (measured against a
/// fixed 50 ms tick in BENCHMARKS.md: lower p99 in the open and the closed loop).
const CHECKPOINT_GAP: Duration = Duration::from_millis(10);

/// Moves SQLite's write-ahead log into the database file from a reader connection, so the
/// group-commit writer does not stall on checkpoints (a passive checkpoint never blocks it).
/// Runs after WAL flushes (`flushed`), at most once per [`CHECKPOINT_GAP`], so an idle store
/// does no work; once a second regardless, for commits made outside the writer. Ends when the
/// store is closed.
async fn checkpoints(read: AnyPool, flushed: Arc<tokio::sync::Notify>) {
    loop {
        // Either outcome checkpoints: a timeout only means nothing was flushed meanwhile.
        let _ = tokio::time::timeout(Duration::from_secs(1), flushed.notified()).await;
        if read.is_closed() {
            return;
        }
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&read)
            .await
        {
            if read.is_closed() {
                return;
            }
            tracing::debug!(%error, "WAL checkpoint failed; will try again");
        }
        tokio::time::sleep(CHECKPOINT_GAP).await;
    }
}

/// Starts a write transaction on `conn` with the durability `durable` asks for
/// (see [`Dialect::begin_write`]).
pub(crate) async fn begin_write(
    conn: &mut sqlx::AnyConnection,
    dialect: Dialect,
    durable: bool,
) -> Result<sqlx::Transaction<'_, sqlx::Any>, sqlx::Error> {
    use sqlx::Connection;
    match dialect.begin_write(durable) {
        Some(statement) => conn.begin_with(statement).await,
        None => conn.begin().await,
    }
}

/// The path and the query of a `sqlite:` URL.
fn sqlite_parts(url: &str) -> Option<(&str, Option<&str>)> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    Some(match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    })
}

/// The database file a `sqlite:` URL names (relative to the current directory if relative);
/// `None` for other databases.
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    sqlite_parts(url)
        .map(|(path, _)| path)
        .filter(|path| names_a_file(path))
        .map(std::path::PathBuf::from)
}

/// Whether a `sqlite:` URL's path is a file rather than an in-memory database.
fn names_a_file(path: &str) -> bool {
    !path.is_empty() && path != ":memory:"
}

/// Makes sure the SQLite file's directory exists and that the file is created on first use.
fn prepare_sqlite_url(url: &str) -> Result<(String, std::path::PathBuf), String> {
    let (path, query) = sqlite_parts(url).ok_or_else(|| "not a sqlite URL".to_owned())?;
    if !names_a_file(path) {
        return Err(
            "an in-memory SQLite database would lose every delivery; give a file path".into(),
        );
    }
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create directory {}: {e}", parent.display()))?;
    }
    let mode = query.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("mode=")));
    let mut out = format!("sqlite://{path}");
    match (query, mode) {
        (Some(q), true) => out.push_str(&format!("?{q}")),
        (Some(q), false) => out.push_str(&format!("?{q}&mode=rwc")),
        (None, _) => out.push_str("?mode=rwc"),
    }
    Ok((out, std::path::PathBuf::from(path)))
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> StoreError {
        StoreError::Migrate(migration_problem(&e))
    }
}

/// What a failed migration means for the operator: the cases that come from running another
/// version of hookdock on the database say so and what to do.
fn migration_problem(e: &sqlx::migrate::MigrateError) -> String {
    use sqlx::migrate::MigrateError;
    match e {
        MigrateError::VersionMissing(v) => format!(
            "the database has migration {v}, which this hookdock does not know: a newer hookdock \
             has migrated it; run that version (or restore a backup taken before the upgrade)"
        ),
        MigrateError::VersionMismatch(v) => format!(
            "migration {v} in the database differs from this hookdock's: another build of \
             hookdock has migrated it; run that build (or restore a backup taken before it ran)"
        ),
        MigrateError::Dirty(v) => format!(
            "migration {v} was started but did not finish; restore a backup taken before it ran"
        ),
        other => other.to_string(),
    }
}

/// How long opening the store waits for a first connection (the server may be starting).
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// A pool of connections set up for `dialect`; why not, in words, if none can be opened.
/// `checks`: the bounded checks of its connections in place of sqlx's (a server over the
/// network).
async fn pool(
    dialect: Dialect,
    writer: bool,
    size: u32,
    url: &str,
    checks: Option<Arc<bounded::PoolChecks>>,
) -> Result<AnyPool, String> {
    let setup = dialect.connection_setup(writer);
    if dialect == Dialect::Sqlite {
        // A local file opens at once or not at all: say why now, not after the pool's retries.
        connect_once(url, setup).await?;
    }
    let mut options = AnyPoolOptions::new()
        .max_connections(size)
        .min_connections(if writer { 1 } else { 0 })
        .acquire_timeout(CONNECT_WAIT);
    if dialect == Dialect::Sqlite {
        // A local file does not drop connections: no ping (a round trip to the connection's
        // thread) before each use, and the write connection is kept for the life of the store.
        options = options.test_before_acquire(false);
        if writer {
            options = options.max_lifetime(None).idle_timeout(None);
        }
    }
    if let Some(checks) = checks {
        // A network partition leaves connections open and silent: every check of a connection
        // is bounded, and sqlx's own (an unbounded ping before use, closing idle or old
        // connections with a goodbye that waits for the server) is replaced (see [`bounded`]).
        let released = Arc::clone(&checks);
        // No connection kept open regardless: sqlx opens those in the background with a 5
        // minute deadline, so one started as a partition began would hold its socket and
        // its pool slot that long.
        options = options
            .min_connections(0)
            .test_before_acquire(false)
            .idle_timeout(None)
            .max_lifetime(None)
            .before_acquire(move |conn, meta| {
                let checks = Arc::clone(&checks);
                Box::pin(async move { checks.idle(conn, meta).await })
            })
            .after_release(move |conn, meta| {
                let checks = Arc::clone(&released);
                Box::pin(async move { checks.released(conn, meta).await })
            });
    }
    let connected = options
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                for &statement in setup {
                    sqlx::query(statement).execute(&mut *conn).await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await;
    match connected {
        Ok(pool) => Ok(pool),
        // The pool retried until its deadline and kept no cause: one more attempt shows it
        // (connection refused, unknown host, ...).
        Err(sqlx::Error::PoolTimedOut) => Err(format!(
            "no connection within {} s ({})",
            CONNECT_WAIT.as_secs(),
            connect_once(url, setup)
                .await
                .err()
                .unwrap_or_else(|| "the server answered too slowly".to_owned())
        )),
        Err(e) => Err(connection_problem(&e)),
    }
}

/// Opens one connection to `url` and sets it up as the pool's are; the first error, in words.
async fn connect_once(url: &str, setup: &'static [&'static str]) -> Result<(), String> {
    use sqlx::Connection;
    let attempt = async {
        let mut conn = sqlx::AnyConnection::connect(url).await?;
        for &statement in setup {
            sqlx::query(statement).execute(&mut conn).await?;
        }
        conn.close().await
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(connection_problem(&e)),
        Err(_) => Err("no answer within 5 s".to_owned()),
    }
}

/// A connection error, with what to do where the fix is the operator's.
fn connection_problem(e: &sqlx::Error) -> String {
    let text = e.to_string();
    // SQLITE_READONLY (8) and its extended codes (8 + n * 256: the file, its directory, ...).
    let read_only = e
        .as_database_error()
        .and_then(|d| d.code()?.parse::<i32>().ok())
        .is_some_and(|code| code & 0xff == 8);
    if read_only {
        format!(
            "{text}; hookdock must be able to write the database file and to create files \
             beside it (its -wal and -shm): check the permissions of both"
        )
    } else if text.contains("certificate not valid for name") {
        // The TLS library's words for a certificate that does not name the URL's host.
        format!(
            "{text}; sslmode=verify-full checks that the certificate names the URL's host: \
             connect by a name it gives, or use sslmode=verify-ca to check the certificate alone"
        )
    } else {
        text
    }
}

/// Reads an optional text column.
pub(crate) fn opt_text(row: &AnyRow, col: &str) -> Result<Option<String>, sqlx::Error> {
    row.try_get::<Option<String>, _>(col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_redacted() {
        assert_eq!(
            redact_url("postgres://user:hunter2@db:5432/x"),
            "postgres://user:***@db:5432/x"
        );
        assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
        // No password: nothing to hide, and no `***` to suggest there was one.
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/test"),
            "postgres://postgres@127.0.0.1:5432/test"
        );
        // An unescaped `@` or `/` in the password is still hidden.
        assert_eq!(
            redact_url("postgres://user:p@ss/w@db/x"),
            "postgres://user:***@db/x"
        );
        assert_eq!(
            redact_url("postgres://user:p?ss@db/x?sslmode=require"),
            "postgres://user:***@db/x?sslmode=require"
        );
        // A password given as a query parameter, alone or beside one in the user info.
        assert_eq!(
            redact_url("postgres://user@db/x?sslmode=require&password=hunter2&x=1"),
            "postgres://user@db/x?sslmode=require&password=***&x=1"
        );
        assert_eq!(
            redact_url("postgres://user:a@db/x?PASSWORD=b"),
            "postgres://user:***@db/x?PASSWORD=***"
        );
    }

    #[test]
    fn sqlite_urls_get_create_mode() {
        let dir = std::env::temp_dir().join(format!("hookdock-url-{}", std::process::id()));
        let file = dir.join("a/b.db");
        let url = format!("sqlite://{}", file.display());
        assert_eq!(
            prepare_sqlite_url(&url).unwrap(),
            (format!("{url}?mode=rwc"), file.clone())
        );
        assert!(dir.join("a").is_dir());
        assert_eq!(
            prepare_sqlite_url(&format!("{url}?mode=ro")).unwrap().0,
            format!("{url}?mode=ro")
        );
        assert!(prepare_sqlite_url("sqlite::memory:").is_err());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn statuses_roundtrip() {
        for s in EventStatus::ALL {
            assert_eq!(EventStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(EventStatus::parse("nope"), None);
    }
}
