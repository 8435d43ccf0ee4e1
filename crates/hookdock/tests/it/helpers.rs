//! Test support: a hookdock app on port 0 with a fresh database per test (a SQLite file, or a
//! PostgreSQL database of its own), signed posting, fixtures and polling with deadlines.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hookdock::config::{Settings, Sources};
use hookdock::handlers::{Handler, HandlerRegistry};
use hookdock::ingest::sign;
use hookdock::store::Store;
use hookdock::{App, queue::Worker};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-webhook-secret";
pub const TOKEN: &str = "test-admin-token-0123456789";

/// Which database a test runs on.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    /// The PostgreSQL backend when `HOOKDOCK_TEST_DATABASE_URL` is set. Without it the test is
    /// skipped locally, and fails in CI, where PostgreSQL tests must run.
    pub fn postgres(test: &str) -> Option<Backend> {
        match std::env::var("HOOKDOCK_TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => Some(Backend::Postgres(url)),
            _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!(
                    "CI=true but HOOKDOCK_TEST_DATABASE_URL is not set: PostgreSQL tests must run in CI"
                )
            }
            _ => {
                eprintln!("skipped {test} on PostgreSQL: HOOKDOCK_TEST_DATABASE_URL is not set");
                None
            }
        }
    }
}

/// Runs each listed `async fn name(backend: Backend)` as a test on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(backend) = $crate::helpers::Backend::postgres(stringify!($name)) {
                        super::$name(backend).await
                    }
                }
            )*
        }
    };
}

/// A database that exists for one test and is removed after it.
pub struct TestDb {
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    None,
    Dir(PathBuf),
    Postgres { admin_url: String, name: String },
}

impl TestDb {
    pub async fn create(backend: &Backend) -> TestDb {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(format!("hookdock-it-{unique}"));
                std::fs::create_dir_all(&dir).expect("temp dir");
                TestDb {
                    url: format!("sqlite://{}/hookdock.db", dir.display()),
                    cleanup: Cleanup::Dir(dir),
                }
            }
            Backend::Postgres(admin_url) => {
                let name = format!("hookdock_it_{unique}");
                sqlx::any::install_default_drivers();
                let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(admin_url)
                    .await
                    .expect("connect to HOOKDOCK_TEST_DATABASE_URL");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                TestDb {
                    url: replace_database(admin_url, &name),
                    cleanup: Cleanup::Postgres {
                        admin_url: admin_url.clone(),
                        name,
                    },
                }
            }
        }
    }
}

/// `postgres://u@h:p/db?x` with another database name.
impl TestDb {
    /// A placeholder that owns nothing.
    fn none() -> TestDb {
        TestDb {
            url: String::new(),
            cleanup: Cleanup::None,
        }
    }
}

pub fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{}", &base[..host_end], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::None => {}
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres { admin_url, name } => {
                let (admin_url, name) = (admin_url.clone(), name.clone());
                // Drop runs inside the test's runtime; use a thread with its own.
                let _ = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .ok()?;
                    rt.block_on(async {
                        let mut conn =
                            <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url)
                                .await
                                .ok()?;
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await
                        .ok()
                    })
                })
                .join();
            }
        }
    }
}

/// The migration files of `backend`'s dialect.
fn migrations_dir(backend: &Backend) -> PathBuf {
    let dialect = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres(_) => "postgres",
    };
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dialect)
}

/// How many of `backend`'s migrations are `version` or newer: those a database migrated
/// before `version` (see [`pool_migrated_before`]) still has to apply.
pub fn migrations_from(backend: &Backend, version: &str) -> usize {
    std::fs::read_dir(migrations_dir(backend))
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .as_ref()
                >= version
        })
        .count()
}

/// A pool on `db` with only the migrations older than `version` applied, from a copy of the
/// migration files: the schema as an earlier hookdock left it, to seed before migrating on.
pub async fn pool_migrated_before(db: &TestDb, backend: &Backend, version: &str) -> sqlx::AnyPool {
    let all = migrations_dir(backend);
    let before = std::env::temp_dir().join(format!("hookdock-mig-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&before).unwrap();
    for entry in std::fs::read_dir(&all).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < version {
            std::fs::copy(&path, before.join(&name)).unwrap();
        }
    }
    sqlx::any::install_default_drivers();
    let url = match backend {
        Backend::Sqlite => format!("{}?mode=rwc", db.url),
        Backend::Postgres(_) => db.url.clone(),
    };
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::migrate::Migrator::new(before.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    std::fs::remove_dir_all(&before).ok();
    pool
}

/// Settings every test starts from; `configure` adjusts them.
pub fn test_sources(db_url: &str) -> Sources {
    Sources::default()
        .set("listen", "127.0.0.1:0")
        .set("database_url", db_url)
        .set("webhook_secret", SECRET)
        .set("admin_token", TOKEN)
        .set("log", "warn")
        .set("queue.poll_interval_ms", 20)
        .set("queue.retry_base_ms", 10)
        .set("queue.retry_cap_secs", 1)
        // Tests of the automations turn them on; elsewhere their jobs would only add noise.
        .set("handlers.automations.enabled", false)
}

/// An app that was stopped; [`StoppedApp::start`] brings it back on the same database and
/// address.
pub struct StoppedApp {
    settings: Settings,
    db: TestDb,
}

impl StoppedApp {
    pub async fn start(self) -> TestApp {
        TestApp::start(self.settings, Vec::new(), self.db).await
    }
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub store: Store,
    pub registry: HandlerRegistry,
    pub settings: Settings,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<Result<(), hookdock::AppError>>>,
    _db: TestDb,
}

impl TestApp {
    pub async fn spawn(backend: &Backend) -> TestApp {
        TestApp::spawn_with(backend, |s| s, Vec::new()).await
    }

    pub async fn spawn_with(
        backend: &Backend,
        configure: impl FnOnce(Sources) -> Sources,
        handlers: Vec<Arc<dyn Handler>>,
    ) -> TestApp {
        let db = TestDb::create(backend).await;
        let settings =
            Settings::load(&configure(test_sources(&db.url))).expect("test settings are valid");
        TestApp::start(settings, handlers, db).await
    }

    /// Like [`TestApp::spawn`], on `db` reached through `url`: the same database with other
    /// connection parameters.
    pub async fn spawn_on(db: TestDb, url: &str) -> TestApp {
        let settings = Settings::load(&test_sources(url)).expect("test settings are valid");
        TestApp::start(settings, Vec::new(), db).await
    }

    /// Starts an app with these settings and handlers on `db`.
    pub async fn start(settings: Settings, handlers: Vec<Arc<dyn Handler>>, db: TestDb) -> TestApp {
        let app = App::build_with_handlers(settings.clone(), handlers)
            .await
            .expect("app starts");
        let base = format!("http://{}", app.local_addr());
        let store = app.store().clone();
        let registry = app.registry().clone();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        TestApp {
            base,
            client: reqwest::Client::new(),
            store,
            registry,
            settings,
            shutdown,
            server: Some(server),
            _db: db,
        }
    }

    /// A second instance on the same database and settings (its own port), as a scaled-out
    /// deployment runs; stop it before this one, which owns the database.
    pub async fn spawn_beside(&self) -> TestApp {
        TestApp::start(self.settings.clone(), Vec::new(), TestDb::none()).await
    }

    /// Stops the app and returns what it needs to start again on the same database.
    pub async fn stop_keeping_data(mut self) -> StoppedApp {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(30), server)
                .await
                .expect("the app stops within 30 s")
                .expect("server task")
                .expect("server stopped cleanly");
        }
        StoppedApp {
            settings: self.settings.clone(),
            db: std::mem::replace(&mut self._db, TestDb::none()),
        }
    }

    pub fn webhook_url(&self) -> String {
        format!("{}/api/v1/webhooks/github", self.base)
    }

    /// Posts `body` signed with the test secret, with the headers GitHub sends.
    pub async fn post(&self, event: &str, body: &[u8], delivery: &str) -> (StatusCode, Value) {
        self.post_with(event, body, delivery, "application/json", Some(SECRET))
            .await
    }

    pub async fn post_with(
        &self,
        event: &str,
        body: &[u8],
        delivery: &str,
        content_type: &str,
        secret: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .post(self.webhook_url())
            .header("Content-Type", content_type)
            .header("User-Agent", "GitHub-Hookshot/test")
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery);
        if let Some(secret) = secret {
            request = request.header("X-Hub-Signature-256", sign(secret.as_bytes(), body));
        }
        let response = request
            .body(body.to_vec())
            .send()
            .await
            .expect("request sent");
        json_answer(response).await
    }

    /// `GET /metrics` as text.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A pool of its own on the app's database, for what a test sets or reads directly.
    pub async fn raw_pool(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::AnyPool::connect(&self.settings.database_url)
            .await
            .expect("a second pool on the test database")
    }

    pub async fn api_get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request sent");
        json_answer(response).await
    }

    /// A GET without credentials (health probes), as JSON.
    pub async fn probe(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request sent");
        json_answer(response).await
    }

    pub async fn api_post(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request sent");
        json_answer(response).await
    }

    pub async fn api_delete(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .delete(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request sent");
        json_answer(response).await
    }

    /// Waits until no job is pending, processing or failed.
    pub async fn wait_until_idle(&self) {
        let store = self.store.clone();
        poll_until("all jobs finished", Duration::from_secs(20), || {
            let store = store.clone();
            async move { store.unfinished_jobs().await.expect("count jobs") == 0 }
        })
        .await;
    }

    /// A worker the test drives step by step (use with `queue.workers = 0`).
    /// A worker driven by the test (`run_once`), with the default concurrency even when the
    /// app itself runs no background workers.
    pub fn manual_worker(&self) -> Arc<Worker> {
        let mut queue = self.settings.queue.clone();
        queue.workers = 8;
        Arc::new(Worker::new(
            self.store.clone(),
            self.registry.clone(),
            &queue,
            Arc::new(Notify::new()),
        ))
    }

    /// The `handler` job of an event, as the events API shows it.
    pub async fn job(&self, event_id: i64, handler: &str) -> Value {
        let (_, detail) = self.api_get(&format!("/api/v1/events/{event_id}")).await;
        detail["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .find(|j| j["handler"] == handler)
            .cloned()
            .unwrap_or_else(|| panic!("no {handler} job in {detail}"))
    }

    pub async fn count_events(&self) -> i64 {
        self.store
            .count_events_by_status()
            .await
            .expect("count")
            .values()
            .sum()
    }

    pub async fn stop(self) {
        drop(self.stop_keeping_data().await);
    }
}

/// A delivery over a bare connection, for what an HTTP client does not do: declare a body
/// length and send less of it, or stop part-way.
pub struct RawDelivery {
    stream: tokio::net::TcpStream,
    /// Bytes read past the `100 Continue`.
    read: Vec<u8>,
}

impl RawDelivery {
    /// Sends the head of a signed delivery to the server at `base`: GitHub's headers,
    /// `Content-Length: declared`, `Expect: 100-continue` (answered once the handler reads the
    /// body) and `Connection: close` (the server closes after its answer).
    pub async fn head(
        base: &str,
        event: &str,
        delivery: &str,
        signature: &str,
        declared: usize,
    ) -> RawDelivery {
        let addr = base.trim_start_matches("http://");
        let head = format!(
            "POST /api/v1/webhooks/github HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nX-GitHub-Event: {event}\r\n\
             X-GitHub-Delivery: {delivery}\r\nX-Hub-Signature-256: {signature}\r\n\
             Expect: 100-continue\r\nContent-Length: {declared}\r\n\r\n"
        );
        RawDelivery::connect(base, head.as_bytes()).await
    }

    /// Connects to the server at `base` (`http://host:port`) and sends `bytes`, whatever they
    /// are.
    pub async fn connect(base: &str, bytes: &[u8]) -> RawDelivery {
        let addr = base.trim_start_matches("http://");
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut raw = RawDelivery {
            stream,
            read: Vec::new(),
        };
        raw.send(bytes).await;
        raw
    }

    /// Waits for the server's `100 Continue`: from then on the request is in its handler,
    /// which is reading the body.
    pub async fn continued(&mut self) {
        use tokio::io::AsyncReadExt;
        let read = async {
            while !self.read.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 256];
                let n = self.stream.read(&mut chunk).await.expect("read");
                assert!(n > 0, "connection closed before 100 Continue");
                self.read.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the server asks for the body within 10 s");
        let end = self
            .read
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |i| i + 4);
        let interim: Vec<u8> = self.read.drain(..end).collect();
        assert!(
            interim.starts_with(b"HTTP/1.1 100"),
            "expected 100 Continue, got {}",
            String::from_utf8_lossy(&interim)
        );
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.expect("write body");
    }

    /// Asserts that the server closes the connection (within 10 s) without answering.
    pub async fn closed_unanswered(mut self) {
        use tokio::io::AsyncReadExt;
        let mut raw = std::mem::take(&mut self.read);
        let read = tokio::time::timeout(Duration::from_secs(10), self.stream.read_to_end(&mut raw))
            .await
            .expect("the server closes the connection within 10 s");
        // A reset is a close too.
        if let Err(e) = read {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        }
        assert!(
            raw.is_empty(),
            "closed without an answer, got: {}",
            String::from_utf8_lossy(&raw)
        );
    }

    /// The answer's status and JSON body, read until the server closes (at most 10 s).
    pub async fn answer(mut self) -> (u16, Value) {
        use tokio::io::AsyncReadExt;
        let mut raw = std::mem::take(&mut self.read);
        tokio::time::timeout(Duration::from_secs(10), self.stream.read_to_end(&mut raw))
            .await
            .expect("the server answers within 10 s")
            .expect("read answer");
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").expect("a complete HTTP answer");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        (
            status,
            serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
        )
    }
}

pub async fn json_answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// Polls `check` until it holds or the deadline passes (then panics naming `what`).
pub async fn poll_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Where `HOST:PORT` is in `postgres://user@HOST:PORT/db…`.
fn host_port(url: &str) -> std::ops::Range<usize> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    let start = url[start..end].rfind('@').map_or(start, |i| start + i + 1);
    start..end
}

/// An app on a new PostgreSQL test database that it reaches through a
/// [`hookdock_testkit::TcpProxy`] that can cut the network, with the test settings that
/// `configure` changes and `handlers`: the app, a pool connected to the database directly
/// (which no partition touches), and the proxy. `None` (the test skips) without PostgreSQL.
pub async fn app_behind_a_proxy(
    test: &str,
    configure: impl FnOnce(Sources) -> Sources,
    handlers: Vec<Arc<dyn Handler>>,
) -> Option<(TestApp, sqlx::AnyPool, hookdock_testkit::TcpProxy)> {
    let (db, direct, proxy, url) = database_behind_a_proxy(test).await?;
    let settings = Settings::load(&configure(test_sources(&url))).expect("test settings are valid");
    let app = TestApp::start(settings, handlers, db).await;
    Some((app, direct, proxy))
}

/// A new PostgreSQL test database, a pool connected to it directly (which no partition
/// touches), a [`hookdock_testkit::TcpProxy`] to it that can cut the network, and the
/// database's URL through the proxy. `None` (the test skips) without PostgreSQL.
pub async fn database_behind_a_proxy(
    test: &str,
) -> Option<(TestDb, sqlx::AnyPool, hookdock_testkit::TcpProxy, String)> {
    let backend = Backend::postgres(test)?;
    capture_warnings();
    let db = TestDb::create(&backend).await;
    let direct = sqlx::AnyPool::connect(&db.url)
        .await
        .expect("connect to the test database");
    let at = host_port(&db.url);
    let proxy = hookdock_testkit::TcpProxy::start(&db.url[at.clone()]).await;
    let mut url = db.url.clone();
    url.replace_range(at, &proxy.addr().to_string());
    Some((db, direct, proxy, url))
}

/// [`app_behind_a_proxy`] without queue workers (nothing but the test's requests uses the
/// pool), with one delivery stored: the partition and reset tests' start.
pub async fn ingest_app_behind_a_proxy(
    test: &str,
) -> Option<(TestApp, sqlx::AnyPool, hookdock_testkit::TcpProxy)> {
    let configure = |s: Sources| s.set("queue.workers", 0);
    let (app, direct, proxy) = app_behind_a_proxy(test, configure, Vec::new()).await?;
    store_push(&app, 0).await;
    Some((app, direct, proxy))
}

/// Posts the `push` fixture made unique by `seq` ([`unique_body`]) under a new delivery id, and
/// asserts that it was stored (200).
pub async fn store_push(app: &TestApp, seq: u64) {
    let (status, answer) = app
        .post("push", &unique_body("push.none.0", seq), &new_delivery_id())
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
}

/// Makes every `operation` (`INSERT`, `UPDATE OF column`, …) on `table` take two seconds on
/// the PostgreSQL server, until [`drop_slow_trigger`].
pub async fn slow_trigger(direct: &sqlx::AnyPool, operation: &str, table: &str) {
    let timing = format!("BEFORE {operation} ON {table} FOR EACH ROW");
    sleeping_trigger(direct, "slow", "TRIGGER", &timing).await;
}

/// Removes what [`slow_trigger`] made.
pub async fn drop_slow_trigger(direct: &sqlx::AnyPool, table: &str) {
    drop_sleeping_trigger(direct, "slow", table).await;
}

/// Makes the commit of a transaction that did `operation` (`INSERT`, `UPDATE`) on a row of
/// `table` for which `when` holds take two seconds on the PostgreSQL server (a deferred
/// trigger, run in the commit), until [`drop_slow_commit`]. A client that goes away meanwhile
/// does not stop the commit.
pub async fn slow_commit(direct: &sqlx::AnyPool, operation: &str, table: &str, when: &str) {
    let timing = format!(
        "AFTER {operation} ON {table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN ({when})"
    );
    sleeping_trigger(direct, "slow_commit", "CONSTRAINT TRIGGER", &timing).await;
}

/// Once a commit [`slow_commit`] holds on `table` is sleeping on the server: resets every
/// connection through `proxy` (the server completes the commit all the same), waits for the
/// commit to end and removes the trigger.
pub async fn reset_while_a_commit_sleeps(
    direct: &sqlx::AnyPool,
    proxy: &hookdock_testkit::TcpProxy,
    table: &str,
) {
    until_the_server_sleeps(direct).await;
    proxy.reset();
    until_the_server_wakes(direct).await;
    drop_slow_commit(direct, table).await;
}

/// Removes what [`slow_commit`] made.
pub async fn drop_slow_commit(direct: &sqlx::AnyPool, table: &str) {
    drop_sleeping_trigger(direct, "slow_commit", table).await;
}

/// A trigger (`kind`: `TRIGGER` or `CONSTRAINT TRIGGER`) `name`, fired as `timing` says, whose
/// function, also `name`, sleeps two seconds.
async fn sleeping_trigger(direct: &sqlx::AnyPool, name: &str, kind: &str, timing: &str) {
    for statement in [
        format!(
            "CREATE FUNCTION {name}() RETURNS trigger AS $$ BEGIN PERFORM pg_sleep(2); RETURN NEW; END $$ LANGUAGE plpgsql"
        ),
        format!("CREATE {kind} {name} {timing} EXECUTE FUNCTION {name}()"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(direct)
            .await
            .expect("create the sleeping trigger");
    }
}

/// Removes what [`sleeping_trigger`] made.
async fn drop_sleeping_trigger(direct: &sqlx::AnyPool, name: &str, table: &str) {
    for statement in [
        format!("DROP TRIGGER {name} ON {table}"),
        format!("DROP FUNCTION {name}()"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(direct)
            .await
            .expect("drop the sleeping trigger");
    }
}

/// Takes a lock on the events table in a transaction of `direct`'s: reads of it wait on the
/// server until [`cut_off_reads_waiting_on`] releases it.
pub async fn lock_events(direct: &sqlx::AnyPool) -> sqlx::Transaction<'static, sqlx::Any> {
    let mut lock = direct.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    lock
}

/// Once `reads` API requests listing events wait on `lock` ([`lock_events`]) on the server
/// (other reads of the table, the retention purge's, may wait beside them): starts a
/// partition, releases the lock (the server answers the reads into the cut) and forwards new
/// connections again, those the partition holds staying silent. How many it holds.
pub async fn cut_off_reads_waiting_on(
    lock: sqlx::Transaction<'static, sqlx::Any>,
    direct: &sqlx::AnyPool,
    proxy: &hookdock_testkit::TcpProxy,
    reads: i64,
) -> usize {
    until_reads_wait(direct, reads).await;
    proxy.cut();
    lock.rollback().await.unwrap();
    proxy.forget();
    proxy.silenced()
}

/// Returns once `reads` API requests listing events wait on [`lock_events`] on the server.
async fn until_reads_wait(direct: &sqlx::AnyPool, reads: i64) {
    let listing = "wait_event_type = 'Lock' AND query LIKE '%SELECT id, delivery_id, event,%'";
    poll_until(
        "API reads waiting on the lock",
        Duration::from_secs(10),
        || async { sessions_where(direct, listing).await >= reads },
    )
    .await;
}

/// Makes the app's pool open `reads` connections at once (as many API requests listing
/// events, each held on the server by [`lock_events`] until all of them are), so that at least
/// that many sit idle in it afterwards.
pub async fn open_connections_for_reads(app: &TestApp, direct: &sqlx::AnyPool, reads: usize) {
    let lock = lock_events(direct).await;
    let listed = futures_util::future::join_all((0..reads).map(|_| app.api_get("/api/v1/events")));
    let release = async {
        until_reads_wait(direct, i64::try_from(reads).unwrap()).await;
        lock.rollback().await.unwrap();
    };
    let (answers, ()) = tokio::join!(listed, release);
    for (status, answer) in answers {
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
}

/// Cuts `proxy` once a statement the [`slow_trigger`] slows is running on the server.
pub async fn cut_while_the_server_sleeps(
    direct: &sqlx::AnyPool,
    proxy: &hookdock_testkit::TcpProxy,
) {
    until_the_server_sleeps(direct).await;
    proxy.cut();
}

/// On an [`ingest_app_behind_a_proxy`]: posts a new `push` delivery and resets every
/// connection through `proxy` once a statement a test trigger slows is running on the server;
/// asserts that the delivery was answered 200 `received` with its event's id and stored once,
/// after the app's first. Its body and id.
pub async fn store_through_a_reset(
    app: &TestApp,
    direct: &sqlx::AnyPool,
    proxy: &hookdock_testkit::TcpProxy,
) -> (Vec<u8>, String) {
    store_through(app, direct, async { proxy.reset() }).await
}

/// [`store_through_a_reset`], with every connection reset again once the write tried again on
/// a new connection is under way too (its statement sleeping beside the first try's): a
/// restart or a failover that also resets a connection opened as it began.
pub async fn store_through_two_resets(
    app: &TestApp,
    direct: &sqlx::AnyPool,
    proxy: &hookdock_testkit::TcpProxy,
) -> (Vec<u8>, String) {
    let resets = async {
        proxy.reset();
        poll_until(
            "the write tried again under way beside the first",
            Duration::from_secs(10),
            || async { sleeping_on_server(direct).await >= 2 },
        )
        .await;
        proxy.reset();
    };
    store_through(app, direct, resets).await
}

/// [`store_through_a_reset`] with the server closing the connection whose statement sleeps
/// (`pg_terminate_backend`: the notice a restart or a failover sends each connection).
pub async fn store_through_a_server_close(
    app: &TestApp,
    direct: &sqlx::AnyPool,
) -> (Vec<u8>, String) {
    let close = async {
        let closed: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event = 'PgSleep'",
        )
        .fetch_one(direct)
        .await
        .expect("close the sleeping connection");
        assert_eq!(closed, 1, "connections closed");
    };
    store_through(app, direct, close).await
}

/// Posts a new `push` delivery and runs `interrupt` once a statement a test trigger slows is
/// running on the server; asserts as [`store_through_a_reset`] says.
async fn store_through(
    app: &TestApp,
    direct: &sqlx::AnyPool,
    interrupt: impl Future<Output = ()>,
) -> (Vec<u8>, String) {
    let delivery = new_delivery_id();
    let body = unique_body("push.none.0", 1);
    let interrupt = async {
        until_the_server_sleeps(direct).await;
        interrupt.await;
    };
    let ((status, answer), ()) = tokio::join!(app.post("push", &body, &delivery), interrupt);
    assert_eq!(
        status,
        reqwest::StatusCode::OK,
        "{answer}\n{}",
        connection_log(app)
    );
    assert_eq!(answer["status"], "received", "{answer}");
    let stored: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, delivery_id FROM events ORDER BY id")
            .fetch_all(direct)
            .await
            .unwrap();
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[1].1, delivery);
    assert_eq!(answer["event_id"], stored[1].0, "{answer}");
    (body, delivery)
}

/// Returns once a statement the [`slow_trigger`] slows is running on the server.
pub async fn until_the_server_sleeps(direct: &sqlx::AnyPool) {
    poll_until(
        "a slowed statement under way on the server",
        Duration::from_secs(10),
        || async { sleeping_on_server(direct).await > 0 },
    )
    .await;
}

/// Returns once no statement a test trigger slows is running on the server any more.
pub async fn until_the_server_wakes(direct: &sqlx::AnyPool) {
    poll_until(
        "no slowed statement under way on the server",
        Duration::from_secs(10),
        || async { sleeping_on_server(direct).await == 0 },
    )
    .await;
}

/// How many of the connections to `pool`'s PostgreSQL database are in `pg_sleep` now (a test's
/// slow trigger running); -1 if that cannot be read.
pub async fn sleeping_on_server(pool: &sqlx::AnyPool) -> i64 {
    sessions_where(pool, "wait_event = 'PgSleep'").await
}

async fn sessions_where(pool: &sqlx::AnyPool, condition: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND {condition}"
    )))
    .fetch_one(pool)
    .await
    .unwrap_or(-1)
}

/// hookdock's and sqlx's warnings in this test process, kept in memory from the first
/// [`capture_warnings`] on (the last 1,000 lines; every test's, as they run side by side),
/// with what the test proxies did to each connection (`hookdock_testkit::partition`, debug),
/// so that a test of connection failures can show what the writer, the pool and the proxy
/// did when it fails.
static WARNINGS: std::sync::Mutex<std::collections::VecDeque<String>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

struct WarningLines;

impl std::io::Write for WarningLines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut lines = WARNINGS.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == 1000 {
            lines.pop_front();
        }
        lines.push_back(String::from_utf8_lossy(bytes).trim_end().to_owned());
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts keeping warnings (see [`WARNINGS`]); once per process, later calls do nothing.
pub fn capture_warnings() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("hookdock=warn,sqlx=warn,hookdock_testkit::partition=debug")
            .with_ansi(false)
            .with_writer(|| WarningLines)
            .finish();
        // Another global subscriber (none is set by the tests today) keeps its place.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// The warnings kept so far, oldest first, for a failing test's message.
fn captured_warnings() -> String {
    let lines = WARNINGS.lock().unwrap_or_else(|e| e.into_inner());
    let all: Vec<&str> = lines.iter().map(String::as_str).collect();
    format!(
        "hookdock's and sqlx's last warnings, and the test proxies' connections, in this \
         process:\n{}",
        all.join("\n")
    )
}

/// For a failing test of an app behind a proxy: the app's database URL (whose port is its
/// proxy's, which the proxy's lines name) and [`captured_warnings`].
pub fn connection_log(app: &TestApp) -> String {
    format!(
        "the app's database, through its proxy: {}\n{}",
        app.settings.database_url,
        captured_warnings()
    )
}

/// The value of one series (`name{labels}` as rendered) in a /metrics text; 0 when absent.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// The shared fixtures directory (`../shared/fixtures/webhooks` beside the checkout).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/webhooks")
}

/// Every fixture as (file stem, event name, bytes), sorted by name.
pub fn fixtures() -> Vec<(String, String, Vec<u8>)> {
    let dir = fixtures_dir();
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fixtures at {}: {e}", dir.display()))
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path
                .file_name()?
                .to_str()?
                .strip_suffix(".json")?
                .to_owned();
            let event = name.split('.').next()?.to_owned();
            let bytes = std::fs::read(&path).ok()?;
            Some((name, event, bytes))
        })
        .collect();
    out.sort();
    out
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(format!("{name}.json"))).expect("fixture exists")
}

/// A real payload with one extra field, so its body (and hash) is unique.
pub fn unique_body(name: &str, seq: u64) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(&fixture(name)).expect("fixture is JSON");
    value["hookdock_test_seq"] = Value::from(seq);
    serde_json::to_vec(&value).expect("serialize")
}

/// A port nothing listens on right now, for a server whose address must be known before it
/// starts (to tell GitHub where to deliver) and that may start again on it.
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`), where no `bind` to port 0
/// and no outgoing connection ever puts a socket, and never handed out twice: not by this
/// process, and not by another test process while this one runs (each port is claimed for the
/// process's life under an abstract socket name, which the kernel lets one process hold and
/// drops when it exits). A port that binding port 0 picked could be picked again by another
/// test's socket in the moments before its server binds it, or while it is stopped, and that
/// start would fail with "address in use". Ports something else listens on are passed over.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|low| *low > 11_024);
    let Some(low) = ephemeral_low else {
        return std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
    };
    // Ports [low - 10,000, low), walked from a place that differs between processes, far
    // apart even for processes started one after the other.
    const SPAN: u32 = 10_000;
    let start = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(low - SPAN + (start + n) % SPAN).expect("a port number");
        if claim_port(port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {}..{low}", low - SPAN)
}

/// Claims `port` among the test processes on this machine until this one exits; `false` when
/// another holds it.
#[cfg(target_os = "linux")]
fn claim_port(port: u16) -> bool {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    static HELD: std::sync::Mutex<Vec<UnixListener>> = std::sync::Mutex::new(Vec::new());
    let claimed = SocketAddr::from_abstract_name(format!("hookdock-test-port-{port}"))
        .and_then(|name| UnixListener::bind_addr(&name));
    match claimed {
        Ok(claim) => {
            HELD.lock().unwrap_or_else(|e| e.into_inner()).push(claim);
            true
        }
        Err(_) => false,
    }
}

#[cfg(not(target_os = "linux"))]
fn claim_port(_port: u16) -> bool {
    true
}

/// Two ports handed out are different, free to listen on, and claimed: another claim of either
/// (as another test process would make) is refused.
#[test]
fn a_port_handed_out_is_claimed_and_listenable() {
    let (one, two) = (free_port(), free_port());
    assert_ne!(one, two);
    for port in [one, two] {
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        if cfg!(target_os = "linux") {
            assert!(!claim_port(port), "port {port} claimed twice");
        }
    }
}

pub fn new_delivery_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
