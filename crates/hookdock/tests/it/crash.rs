//! Crash and shutdown tests on the real `hookdock serve` process: many concurrent senders,
//! `kill -9` in the middle of the load, SIGTERM while deliveries arrive, and two instances
//! sharing one PostgreSQL database. One test runs the app in-process instead, with a handler it
//! holds, so that jobs are certainly running when the shutdown starts (grace period, release).
//!
//! Each test checks what an operator would: every delivery answered 2xx is stored with its
//! exact bytes, nothing is half-stored, and every stored event's handler took effect exactly
//! once (its `repo_activity` count), whatever attempt finally ran it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// Payloads the senders cycle through: (fixture, event header).
const PAYLOADS: &[(&str, &str)] = &[
    ("pull_request.opened.0", "pull_request"),
    ("issues.opened.0", "issues"),
    ("push.none.0", "push"),
    ("issue_comment.created.0", "issue_comment"),
    ("star.created.0", "star"),
];

/// A directory for one test's server logs. On a panic it prints every log; otherwise it is
/// removed.
struct Scratch {
    dir: PathBuf,
    starts: AtomicUsize,
}

impl Scratch {
    fn new() -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("hookdock-crash-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        Scratch {
            dir,
            starts: AtomicUsize::new(0),
        }
    }

    fn next_log(&self, name: &str) -> PathBuf {
        let n = self.starts.fetch_add(1, Ordering::SeqCst);
        self.dir.join(format!("{n:02}-{name}.log"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
            return;
        }
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        logs.sort();
        for log in logs {
            eprintln!("===== {} =====\n{}", log.display(), tail(&log, 20_000));
        }
        eprintln!("(logs kept in {})", self.dir.display());
    }
}

/// The last `max` bytes of a file, as text.
fn tail(path: &Path, max: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// A running `hookdock serve` child process. Killed if dropped while running.
struct Server {
    name: String,
    child: tokio::process::Child,
    base: String,
    log: PathBuf,
}

impl Server {
    /// Starts the binary on a free port with the test settings (2 s leases, 5 s shutdown grace)
    /// and waits until `/healthz` answers. Picks another port if the chosen one was taken in
    /// the meantime.
    async fn start(scratch: &Scratch, name: &str, db_url: &str) -> Server {
        Server::start_with(scratch, name, db_url, &[]).await
    }

    /// [`Server::start`] with more settings in the environment.
    async fn start_with(
        scratch: &Scratch,
        name: &str,
        db_url: &str,
        more: &[(&str, &str)],
    ) -> Server {
        let client = reqwest::Client::new();
        for _ in 0..5 {
            let port = crate::helpers::free_port();
            let log = scratch.next_log(name);
            let file = std::fs::File::create(&log).expect("create the log file");
            let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookdock"));
            command
                .arg("serve")
                .current_dir(&scratch.dir)
                .stdin(Stdio::null())
                .stdout(file.try_clone().expect("log file handle"))
                .stderr(file)
                .kill_on_drop(true);
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("HOOKDOCK_") {
                    command.env_remove(key);
                }
            }
            let listen = format!("127.0.0.1:{port}");
            let settings = [
                ("HOOKDOCK_LISTEN", listen.as_str()),
                ("HOOKDOCK_DATABASE_URL", db_url),
                ("HOOKDOCK_WEBHOOK_SECRET", SECRET),
                ("HOOKDOCK_ADMIN_TOKEN", TOKEN),
                ("HOOKDOCK_LOG", "info"),
                ("HOOKDOCK_QUEUE__LEASE_SECS", "2"),
                ("HOOKDOCK_QUEUE__POLL_INTERVAL_MS", "50"),
                ("HOOKDOCK_QUEUE__RETRY_BASE_MS", "10"),
                ("HOOKDOCK_QUEUE__RETRY_CAP_SECS", "1"),
                ("HOOKDOCK_SHUTDOWN_GRACE_SECS", "5"),
                // The invariants below count `activity` jobs only.
                ("HOOKDOCK_HANDLERS__METRICS__ENABLED", "false"),
                ("HOOKDOCK_HANDLERS__RECORDS__ENABLED", "false"),
            ];
            command.envs(settings).envs(more.iter().copied());
            let mut child = command.spawn().expect("start the hookdock binary");
            let base = format!("http://{listen}");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = child.try_wait().expect("check the child") {
                    let text = tail(&log, 20_000);
                    if text.contains("Address already in use") {
                        break; // the port was taken after we looked: try another one
                    }
                    panic!("{name} exited at start-up with {status}:\n{text}");
                }
                let health = client.get(format!("{base}/healthz")).send().await;
                if health.is_ok_and(|r| r.status() == StatusCode::OK) {
                    return Server {
                        name: name.to_owned(),
                        child,
                        base,
                        log,
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} did not answer /healthz within 20 s:\n{}",
                    tail(&log, 20_000)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("{name}: no free port after 5 attempts");
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("the server is running")
    }

    /// SIGKILL: no shutdown code runs.
    async fn kill_9(&mut self) {
        self.child.start_kill().expect("send SIGKILL");
        let status = self.child.wait().await.expect("reap the killed server");
        assert_eq!(status.code(), None, "{} was killed by a signal", self.name);
    }

    /// SIGTERM, as a service manager stops it.
    fn terminate(&self) {
        self.signal("TERM");
    }

    /// `kill -NAME`: `TERM`, or `INT` as Ctrl-C sends it.
    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Waits for the process to end; panics after `timeout`.
    async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for the server"),
            Err(_) => panic!(
                "{} still running {} s after SIGTERM",
                self.name,
                timeout.as_secs()
            ),
        }
    }

    fn log_text(&self) -> String {
        tail(&self.log, 1_000_000)
    }

    /// The stored body of event `id` through the API.
    async fn payload(&self, client: &reqwest::Client, id: i64) -> (StatusCode, Vec<u8>) {
        let response = client
            .get(format!("{}/api/v1/events/{id}/payload", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("payload request answered");
        let status = response.status();
        let bytes = response.bytes().await.expect("payload body").to_vec();
        (status, bytes)
    }

    /// Sum of the `hookdock_jobs_total` counters with `outcome="done"`: how many times this
    /// instance ran a handler to success.
    async fn jobs_done_metric(&self, client: &reqwest::Client) -> u64 {
        let text = client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics answered")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .filter(|l| l.starts_with("hookdock_jobs_total{") && l.contains("outcome=\"done\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

/// What a sender got back for one delivery.
#[derive(Debug, Clone)]
enum Outcome {
    Answered(StatusCode, Value),
    /// The connection failed or closed before a complete answer.
    NoAnswer(String),
}

impl Outcome {
    /// The event id of a `200 received` answer: the delivery was acknowledged as stored.
    fn received(&self) -> Option<i64> {
        match self {
            Outcome::Answered(StatusCode::OK, v) if v["status"] == "received" => {
                v["event_id"].as_i64()
            }
            _ => None,
        }
    }

    fn status_field(&self) -> Option<&str> {
        match self {
            Outcome::Answered(StatusCode::OK, v) => v["status"].as_str(),
            _ => None,
        }
    }
}

/// One delivery a sender attempted.
#[derive(Debug, Clone)]
struct Sent {
    delivery: String,
    body: Vec<u8>,
    outcome: Outcome,
}

/// Posts a signed delivery the way GitHub does. Transport failures are an outcome, not a panic:
/// the server may be killed while the request is in flight.
async fn post_delivery(
    client: &reqwest::Client,
    base: &str,
    event: &str,
    body: &[u8],
    delivery: &str,
) -> Outcome {
    let sent = client
        .post(format!("{base}/api/v1/webhooks/github"))
        .header("Content-Type", "application/json")
        .header("User-Agent", "GitHub-Hookshot/test")
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header(
            "X-Hub-Signature-256",
            hookdock::ingest::sign(SECRET.as_bytes(), body),
        )
        .body(body.to_vec())
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => return Outcome::NoAnswer(error_chain(&e)),
    };
    let status = response.status();
    match response.bytes().await {
        Ok(bytes) => Outcome::Answered(
            status,
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())),
        ),
        Err(e) => Outcome::NoAnswer(format!("answer cut off: {}", error_chain(&e))),
    }
}

/// An error with its causes, which say what happened to the connection.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Senders posting unique deliveries in a loop until stopped, round-robin over `targets`.
struct Load {
    stop: CancellationToken,
    acked: Arc<AtomicUsize>,
    tasks: tokio::task::JoinSet<Vec<Sent>>,
}

impl Load {
    fn start(senders: usize, targets: Vec<String>, seq: Arc<AtomicU64>) -> Load {
        let stop = CancellationToken::new();
        let acked = Arc::new(AtomicUsize::new(0));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("http client");
        let mut tasks = tokio::task::JoinSet::new();
        for sender in 0..senders {
            let (stop, acked, client, targets, seq) = (
                stop.clone(),
                Arc::clone(&acked),
                client.clone(),
                targets.clone(),
                Arc::clone(&seq),
            );
            tasks.spawn(async move {
                let mut sent = Vec::new();
                while !stop.is_cancelled() {
                    let n = seq.fetch_add(1, Ordering::SeqCst);
                    let (fixture, event) = PAYLOADS[n as usize % PAYLOADS.len()];
                    let body = unique_body(fixture, n);
                    let delivery = new_delivery_id();
                    let target = &targets[(sender + n as usize) % targets.len()];
                    let outcome = post_delivery(&client, target, event, &body, &delivery).await;
                    if outcome.received().is_some() {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    // A sender whose server went away stops rather than spin on refusals.
                    let gone = matches!(outcome, Outcome::NoAnswer(_));
                    sent.push(Sent {
                        delivery,
                        body,
                        outcome,
                    });
                    if gone {
                        break;
                    }
                }
                sent
            });
        }
        Load { stop, acked, tasks }
    }

    async fn wait_for_acks(&self, n: usize) {
        let acked = Arc::clone(&self.acked);
        poll_until(
            &format!("{n} deliveries acknowledged"),
            Duration::from_secs(30),
            || {
                let acked = Arc::clone(&acked);
                async move { acked.load(Ordering::SeqCst) >= n }
            },
        )
        .await;
    }

    /// Stops the senders and returns everything they attempted.
    async fn finish(mut self) -> Vec<Sent> {
        self.stop.cancel();
        let mut all = Vec::new();
        while let Some(sent) = self.tasks.join_next().await {
            all.extend(sent.expect("sender task"));
        }
        all
    }
}

/// The `application_name` of the test's own PostgreSQL sessions.
const TEST_SESSION: &str = "hookdock-crash-test";

/// A connection of the test's own to the database, for checking rows directly (on PostgreSQL
/// its sessions are named [`TEST_SESSION`]).
async fn db_pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let url = if url.starts_with("postgres") {
        let joint = if url.contains('?') { '&' } else { '?' };
        format!("{url}{joint}application_name={TEST_SESSION}")
    } else {
        url.to_owned()
    };
    sqlx::any::AnyPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .expect("connect to the test database")
}

/// After `kill -9` on PostgreSQL: waits until the killed server's sessions have ended. A
/// session may still run a COMMIT its client sent just before it died, so rows counted before
/// then can grow afterwards. (SQLite has no server: what the process wrote is all there is.)
async fn wait_for_killed_sessions(backend: &Backend, pool: &sqlx::AnyPool) {
    if !matches!(backend, Backend::Postgres(_)) {
        return;
    }
    let sql = format!(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name <> '{TEST_SESSION}'"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(pool, &sql).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the killed server's database sessions did not end within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn count(pool: &sqlx::AnyPool, sql: &str) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .try_get(0)
        .expect("a count")
}

/// Job counts per status, for the test's progress notes.
async fn job_states(pool: &sqlx::AnyPool) -> Vec<(String, i64)> {
    sqlx::query("SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status")
        .fetch_all(pool)
        .await
        .expect("count jobs by status")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn wait_until_all_jobs_done(pool: &sqlx::AnyPool) {
    poll_until(
        "every job done after the restart",
        Duration::from_secs(25),
        || async { count(pool, "SELECT COUNT(*) FROM jobs WHERE status <> 'done'").await == 0 },
    )
    .await;
}

/// What the consistency check found, for the assertions specific to each test.
struct Checked {
    stored: usize,
    acked: usize,
    no_answer: usize,
    /// What the first sender without an answer saw.
    first_failure: Option<String>,
    /// Attempts of each job, by job id.
    attempts: HashMap<i64, i64>,
}

/// The invariants every test shares, checked once all jobs are done:
/// - every acknowledged delivery is stored under the event id it was answered with;
/// - every stored event is a delivery that was sent, and its payload (through the API, which
///   checks the stored SHA-256) is byte-identical to what was sent: nothing is half-stored;
/// - every stored event has exactly one `activity` job, done, holding no lease, recorded done
///   exactly once in its history;
/// - `repo_activity` counts, per repository and event type, exactly the stored events: each
///   handler's effect was applied once, however many attempts ran it.
async fn check_consistency(
    pool: &sqlx::AnyPool,
    server: &Server,
    client: &reqwest::Client,
    sent: &[Sent],
) -> Checked {
    let by_delivery: HashMap<&str, &Sent> = sent.iter().map(|s| (s.delivery.as_str(), s)).collect();
    assert_eq!(by_delivery.len(), sent.len(), "delivery ids are unique");

    let rows = sqlx::query(
        "SELECT id, delivery_id, event, status, repository, organization, body_size \
         FROM events ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("read stored events");
    let mut stored: HashMap<String, i64> = HashMap::new();
    let mut expected_activity: HashMap<(String, String), i64> = HashMap::new();
    for row in &rows {
        let id: i64 = row.get("id");
        let delivery: String = row.get("delivery_id");
        let event: String = row.get("event");
        let status: String = row.get("status");
        let repository: Option<String> = row.get("repository");
        let organization: Option<String> = row.get("organization");
        let body_size: i64 = row.get("body_size");
        let attempt = by_delivery
            .get(delivery.as_str())
            .unwrap_or_else(|| panic!("event {id} has delivery id {delivery}, never sent"));
        assert_eq!(body_size, attempt.body.len() as i64, "event {id} body_size");
        assert_eq!(status, "done", "event {id} ({delivery}) status");
        stored.insert(delivery, id);
        let scope = match (repository, organization) {
            (Some(repo), _) => repo,
            (None, Some(org)) => format!("org:{org}"),
            (None, None) => "(none)".to_owned(),
        };
        *expected_activity.entry((scope, event)).or_default() += 1;
    }

    assert_eq!(
        count(pool, "SELECT COUNT(*) FROM events WHERE length(body) = 0").await,
        0,
        "events stored without a body"
    );

    let mut acked = 0;
    let mut no_answer = 0;
    let mut first_failure = None;
    for s in sent {
        match (&s.outcome, s.outcome.received()) {
            (_, Some(event_id)) => {
                acked += 1;
                assert_eq!(
                    stored.get(&s.delivery),
                    Some(&event_id),
                    "acknowledged delivery {} (event {event_id}) is stored under that id",
                    s.delivery
                );
            }
            (Outcome::NoAnswer(error), None) => {
                no_answer += 1;
                first_failure.get_or_insert_with(|| error.clone());
            }
            (Outcome::Answered(status, body), None) => {
                panic!("delivery {} answered {status}: {body}", s.delivery)
            }
        }
    }

    // Every stored body, read back through the API, is exactly what was sent.
    for (delivery, &id) in &stored {
        let (status, bytes) = server.payload(client, id).await;
        assert_eq!(status, StatusCode::OK, "payload of event {id}");
        assert!(
            bytes == by_delivery[delivery.as_str()].body,
            "payload of event {id} ({delivery}) differs from what was sent"
        );
    }

    let jobs = sqlx::query(
        "SELECT id, event_id, handler, status, attempts, lease_owner, lease_until FROM jobs",
    )
    .fetch_all(pool)
    .await
    .expect("read jobs");
    let event_ids: HashSet<i64> = stored.values().copied().collect();
    let mut jobs_per_event: HashMap<i64, usize> = HashMap::new();
    let mut attempts = HashMap::new();
    for job in &jobs {
        let id: i64 = job.get("id");
        let event_id: i64 = job.get("event_id");
        let handler: String = job.get("handler");
        let status: String = job.get("status");
        let lease_owner: Option<String> = job.get("lease_owner");
        let lease_until: Option<i64> = job.get("lease_until");
        assert!(event_ids.contains(&event_id), "job {id} of unknown event");
        assert_eq!(handler, "activity", "job {id}");
        assert_eq!(status, "done", "job {id}");
        assert_eq!(
            (lease_owner, lease_until),
            (None, None),
            "job {id} holds no lease"
        );
        *jobs_per_event.entry(event_id).or_default() += 1;
        attempts.insert(id, job.get::<i64, _>("attempts"));
    }
    for id in &event_ids {
        assert_eq!(
            jobs_per_event.get(id),
            Some(&1),
            "event {id} has one activity job"
        );
    }
    let done_twice: Vec<(i64, i64)> = sqlx::query(
        "SELECT job_id, COUNT(*) FROM job_history WHERE status = 'done' GROUP BY job_id \
         HAVING COUNT(*) <> 1",
    )
    .fetch_all(pool)
    .await
    .expect("read job history")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    assert!(
        done_twice.is_empty(),
        "jobs recorded done more than once: {done_twice:?}"
    );

    let activity: HashMap<(String, String), i64> =
        sqlx::query("SELECT repository, event, events_handled FROM repo_activity")
            .fetch_all(pool)
            .await
            .expect("read repo_activity")
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
    assert_eq!(
        activity, expected_activity,
        "events handled per repository and type == events stored"
    );
    assert_eq!(
        activity.values().sum::<i64>(),
        rows.len() as i64,
        "sum(events_handled) == stored events"
    );

    Checked {
        stored: rows.len(),
        acked,
        no_answer,
        first_failure,
        attempts,
    }
}

fn backend_name(backend: &Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres(_) => "postgres",
    }
}

/// `kill -9` while 16 senders post: every acknowledged delivery survives, nothing is half-stored,
/// and after the restart each stored event's handler takes effect exactly once (a job that was
/// running at the kill runs again when its lease expires, but its effect counts once).
async fn kill_9_under_load_loses_no_acknowledged_delivery_and_handles_each_once(backend: Backend) {
    let started = Instant::now();
    let db = TestDb::create(&backend).await;
    let scratch = Scratch::new();
    let seq = Arc::new(AtomicU64::new(0));

    let mut server = Server::start(&scratch, "first", &db.url).await;
    let pool = db_pool(&db.url).await;
    let load = Load::start(16, vec![server.base.clone()], Arc::clone(&seq));
    load.wait_for_acks(300).await;
    // Killed with requests in flight: the senders are still running.
    server.kill_9().await;
    let sent = load.finish().await;
    wait_for_killed_sessions(&backend, &pool).await;
    let at_kill = job_states(&pool).await;
    let stored_at_kill = count(&pool, "SELECT COUNT(*) FROM events").await;

    let server = Server::start(&scratch, "restarted", &db.url).await;
    wait_until_all_jobs_done(&pool).await;
    let client = reqwest::Client::new();
    let checked = check_consistency(&pool, &server, &client, &sent).await;

    assert!(checked.acked >= 300, "{} acknowledged", checked.acked);
    assert_eq!(
        checked.stored as i64, stored_at_kill,
        "the restart stored nothing new and lost nothing"
    );
    // One crash: a job is run at most once before it and once after it.
    let retried = checked.attempts.values().filter(|&&a| a == 2).count();
    assert!(
        checked.attempts.values().all(|&a| (1..=2).contains(&a)),
        "attempts per job: {:?}",
        checked.attempts.values().collect::<HashSet<_>>()
    );
    eprintln!(
        "kill -9 ({}): {} sent, {} acknowledged, {} without answer ({:?}), {} stored; \
         jobs at kill {at_kill:?}; {retried} job(s) ran again after their lease expired; {:?}",
        backend_name(&backend),
        sent.len(),
        checked.acked,
        checked.no_answer,
        checked.first_failure,
        checked.stored,
        started.elapsed()
    );
    pool.close().await;
    drop(server);
}

/// SIGTERM while senders post: in-flight requests are answered and stored, the process exits
/// 0, no job is left leased, and a restart finishes the pending jobs, each run once.
async fn sigterm_under_load_answers_in_flight_requests_and_exits_cleanly(backend: Backend) {
    let started = Instant::now();
    let db = TestDb::create(&backend).await;
    let scratch = Scratch::new();
    let seq = Arc::new(AtomicU64::new(0));

    let mut server = Server::start(&scratch, "first", &db.url).await;
    let pool = db_pool(&db.url).await;
    let load = Load::start(8, vec![server.base.clone()], Arc::clone(&seq));
    load.wait_for_acks(150).await;
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(30)).await;
    let sent = load.finish().await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM:\n{}",
        server.log_text()
    );
    let log = server.log_text();
    assert!(
        log.contains("SIGTERM received") && log.contains("shutdown complete"),
        "the shutdown is logged:\n{log}"
    );
    // Leases released: nothing is left claimed by the stopped instance.
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) FROM jobs WHERE status = 'processing' OR lease_owner IS NOT NULL \
             OR lease_until IS NOT NULL"
        )
        .await,
        0,
        "jobs still leased after a clean stop: {:?}",
        job_states(&pool).await
    );
    let at_stop = job_states(&pool).await;

    let mut server = Server::start(&scratch, "restarted", &db.url).await;
    wait_until_all_jobs_done(&pool).await;
    let client = reqwest::Client::new();
    let checked = check_consistency(&pool, &server, &client, &sent).await;
    assert!(checked.acked >= 150, "{} acknowledged", checked.acked);
    assert!(
        checked.attempts.values().all(|&a| a == 1),
        "after a clean stop no job runs twice: {:?}",
        checked.attempts.values().collect::<HashSet<_>>()
    );

    // The restarted instance stops cleanly when idle too.
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", server.log_text());
    eprintln!(
        "SIGTERM ({}): {} sent, {} acknowledged, {} without answer ({:?}), {} stored; \
         jobs at stop {at_stop:?}; {:?}",
        backend_name(&backend),
        sent.len(),
        checked.acked,
        checked.no_answer,
        checked.first_failure,
        checked.stored,
        started.elapsed()
    );
    pool.close().await;
}

/// Two instances on one PostgreSQL database: deliveries split across both, and the same
/// delivery id posted to both at once. Each delivery is stored once and each job runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_instances_store_each_delivery_once_and_run_each_job_once() {
    let Some(backend) =
        Backend::postgres("two_postgres_instances_store_each_delivery_once_and_run_each_job_once")
    else {
        return;
    };
    let started = Instant::now();
    let db = TestDb::create(&backend).await;
    let scratch = Scratch::new();
    // The first start migrates; the second finds the schema current.
    let a = Server::start(&scratch, "a", &db.url).await;
    let b = Server::start(&scratch, "b", &db.url).await;
    let pool = db_pool(&db.url).await;
    let client = reqwest::Client::new();
    let seq = Arc::new(AtomicU64::new(0));

    // The same delivery posted to both instances at the same moment, 20 times over.
    let mut pairs = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let n = seq.fetch_add(1, Ordering::SeqCst);
        let (fixture, event) = PAYLOADS[n as usize % PAYLOADS.len()];
        let body = unique_body(fixture, n);
        let delivery = new_delivery_id();
        let (client, a_base, b_base) = (client.clone(), a.base.clone(), b.base.clone());
        pairs.spawn(async move {
            let (to_a, to_b) = tokio::join!(
                post_delivery(&client, &a_base, event, &body, &delivery),
                post_delivery(&client, &b_base, event, &body, &delivery),
            );
            (delivery, body, to_a, to_b)
        });
    }
    // Meanwhile, unique deliveries from 8 senders, alternating between the instances.
    let load = Load::start(8, vec![a.base.clone(), b.base.clone()], Arc::clone(&seq));
    let mut sent = Vec::new();
    while let Some(pair) = pairs.join_next().await {
        let (delivery, body, to_a, to_b) = pair.expect("pair task");
        let mut statuses = [to_a.status_field(), to_b.status_field()];
        statuses.sort();
        assert_eq!(
            statuses,
            [Some("duplicate_skipped"), Some("received")],
            "{delivery} posted to both instances: {to_a:?} / {to_b:?}"
        );
        let ids: Vec<Option<i64>> = [&to_a, &to_b]
            .iter()
            .map(|o| match o {
                Outcome::Answered(_, v) => v["event_id"].as_i64(),
                Outcome::NoAnswer(_) => None,
            })
            .collect();
        assert!(
            ids[0].is_some() && ids[0] == ids[1],
            "both answers name the one stored event: {ids:?}"
        );
        let outcome = if to_a.received().is_some() {
            to_a
        } else {
            to_b
        };
        sent.push(Sent {
            delivery,
            body,
            outcome,
        });
    }
    load.wait_for_acks(300).await;
    sent.extend(load.finish().await);
    assert!(
        sent.iter().all(|s| s.outcome.received().is_some()),
        "every delivery answered received: {:?}",
        sent.iter()
            .find(|s| s.outcome.received().is_none())
            .map(|s| &s.outcome)
    );

    wait_until_all_jobs_done(&pool).await;
    let checked = check_consistency(&pool, &a, &client, &sent).await;
    assert_eq!(checked.stored, sent.len(), "each delivery stored once");
    assert!(
        checked.attempts.values().all(|&a| a == 1),
        "no job was claimed twice: {:?}",
        checked
            .attempts
            .iter()
            .filter(|(_, a)| **a != 1)
            .collect::<Vec<_>>()
    );
    let claimed_twice = count(
        &pool,
        "SELECT COUNT(*) FROM (SELECT job_id FROM job_history WHERE status = 'processing' \
         GROUP BY job_id HAVING COUNT(*) > 1) AS t",
    )
    .await;
    assert_eq!(claimed_twice, 0, "jobs claimed more than once");
    // Handler runs counted by the instances themselves: one per job across both.
    let (ran_a, ran_b) = (
        a.jobs_done_metric(&client).await,
        b.jobs_done_metric(&client).await,
    );
    assert_eq!(
        ran_a + ran_b,
        checked.attempts.len() as u64,
        "handler runs on a ({ran_a}) and b ({ran_b}) == jobs"
    );
    assert!(
        ran_a > 0 && ran_b > 0,
        "both instances ran jobs: a {ran_a}, b {ran_b}"
    );
    eprintln!(
        "two instances: {} stored, handler runs a {ran_a} / b {ran_b}; {:?}",
        checked.stored,
        started.elapsed()
    );
    pool.close().await;
}

/// A handler the test holds: the job of `QUICK_SEQ` finishes when the test adds a permit, the
/// job of `STUCK_SEQ` never finishes while `hold_stuck` is set. Each records its own activity
/// row (`gated-SEQ`), so the effect of every job can be counted.
struct GatedHandler {
    runs: std::sync::Mutex<HashMap<i64, usize>>,
    quick: tokio::sync::Semaphore,
    hold_stuck: std::sync::atomic::AtomicBool,
}

const QUICK_SEQ: i64 = 1;
const STUCK_SEQ: i64 = 2;

impl GatedHandler {
    fn runs(&self, seq: i64) -> usize {
        self.runs.lock().unwrap().get(&seq).copied().unwrap_or(0)
    }
}

impl hookdock::handlers::Handler for GatedHandler {
    fn name(&self) -> &'static str {
        "gated"
    }

    fn subscribes(&self, event: &str, _action: Option<&str>) -> bool {
        event == "issues"
    }

    fn handle<'a>(
        &'a self,
        ctx: &'a hookdock::handlers::JobContext<'a>,
    ) -> hookdock::handlers::HandlerFuture<'a> {
        Box::pin(async move {
            let seq = ctx.payload().await?["hookdock_test_seq"]
                .as_i64()
                .unwrap_or(-1);
            *self.runs.lock().unwrap().entry(seq).or_default() += 1;
            if seq == QUICK_SEQ {
                self.quick.acquire().await.expect("semaphore open").forget();
            } else if seq == STUCK_SEQ && self.hold_stuck.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Ok(vec![hookdock::store::Effect::RecordActivity {
                scope: format!("gated-{seq}"),
                event: ctx.job.event.clone(),
                event_id: ctx.job.event_id,
                received_at: ctx.job.received_at,
            }])
        })
    }
}

/// An issues.opened delivery with its own issue number, so each gets its own ordering key and
/// both jobs run at once.
fn issue_body(seq: i64) -> Vec<u8> {
    let mut value: Value =
        serde_json::from_slice(&unique_body("issues.opened.0", seq as u64)).expect("JSON");
    value["issue"]["number"] = Value::from(1000 + seq);
    serde_json::to_vec(&value).expect("serialize")
}

/// The gated app's shutdown grace period: long enough that the test sees the shutdown under
/// way before it ends, on a loaded machine.
const GATED_GRACE: Duration = Duration::from_secs(3);

/// The app as `serve` runs it, with the gated handler and a grace period of [`GATED_GRACE`].
async fn start_gated(
    db: &TestDb,
    handler: &Arc<GatedHandler>,
) -> (
    String,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), hookdock::AppError>>,
) {
    let settings = hookdock::Settings::load(
        &test_sources(&db.url)
            .set("shutdown_grace_secs", GATED_GRACE.as_secs())
            .set("handlers.activity.enabled", false),
    )
    .expect("settings");
    let handlers: Vec<Arc<dyn hookdock::handlers::Handler>> = vec![handler.clone()];
    let app = hookdock::App::build_with_handlers(settings, handlers)
        .await
        .expect("app starts");
    let addr = app.local_addr().to_string();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    (addr, shutdown, server)
}

/// Job row `(status, attempts, lease_owner, lease_until)` of the event stored for `delivery`.
async fn job_of(
    pool: &sqlx::AnyPool,
    delivery: &str,
) -> (String, i64, Option<String>, Option<i64>) {
    let row = sqlx::query(
        "SELECT j.status, j.attempts, j.lease_owner, j.lease_until FROM jobs j \
         JOIN events e ON e.id = j.event_id WHERE e.delivery_id = $1",
    )
    .bind(delivery)
    .fetch_one(pool)
    .await
    .expect("the delivery's job");
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

async fn handled(pool: &sqlx::AnyPool, seq: i64) -> i64 {
    sqlx::query("SELECT events_handled FROM repo_activity WHERE repository = $1")
        .bind(format!("gated-{seq}"))
        .fetch_optional(pool)
        .await
        .expect("read repo_activity")
        .map_or(0, |r| r.get(0))
}

/// Shutdown with two jobs running: the listener closes at once, the job that finishes within
/// the grace period is recorded done, the one that does not is released (pending again, the
/// interrupted attempt not counted, no lease), and runs once after a restart.
async fn shutdown_finishes_running_jobs_within_grace_and_releases_the_rest(backend: Backend) {
    let db = TestDb::create(&backend).await;
    let handler = Arc::new(GatedHandler {
        runs: Default::default(),
        quick: tokio::sync::Semaphore::new(0),
        hold_stuck: true.into(),
    });
    let (addr, shutdown, server) = start_gated(&db, &handler).await;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let (quick, stuck) = (new_delivery_id(), new_delivery_id());
    for (seq, delivery) in [(QUICK_SEQ, &quick), (STUCK_SEQ, &stuck)] {
        let outcome = post_delivery(&client, &base, "issues", &issue_body(seq), delivery).await;
        assert!(outcome.received().is_some(), "{outcome:?}");
    }
    let running = Arc::clone(&handler);
    poll_until("both jobs running", Duration::from_secs(10), || {
        let h = Arc::clone(&running);
        async move { h.runs(QUICK_SEQ) == 1 && h.runs(STUCK_SEQ) == 1 }
    })
    .await;

    let stopping = Instant::now();
    shutdown.cancel();
    poll_until("new connections refused", GATED_GRACE / 2, || async {
        tokio::net::TcpStream::connect(&addr).await.is_err()
    })
    .await;
    assert!(
        !server.is_finished(),
        "connections are refused while running jobs still have their grace period"
    );
    handler.quick.add_permits(1);
    server.await.expect("server task").expect("stopped cleanly");
    let took = stopping.elapsed();
    assert!(
        took >= GATED_GRACE && took < GATED_GRACE + Duration::from_secs(4),
        "waited the grace period for the stuck job, then stopped: {took:?}"
    );

    let pool = db_pool(&db.url).await;
    assert_eq!(
        job_of(&pool, &quick).await,
        ("done".to_owned(), 1, None, None),
        "the job that finished within the grace period is recorded"
    );
    assert_eq!(handled(&pool, QUICK_SEQ).await, 1);
    assert_eq!(
        job_of(&pool, &stuck).await,
        ("pending".to_owned(), 0, None, None),
        "the job still running after the grace period is released, its attempt not counted"
    );
    assert_eq!(
        handled(&pool, STUCK_SEQ).await,
        0,
        "no effect from the aborted run"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) FROM job_history WHERE error = 'released at shutdown'"
        )
        .await,
        1,
        "the release is in the job's history"
    );

    handler.hold_stuck.store(false, Ordering::SeqCst);
    let (_, shutdown, server) = start_gated(&db, &handler).await;
    wait_until_all_jobs_done(&pool).await;
    assert_eq!(
        job_of(&pool, &stuck).await,
        ("done".to_owned(), 1, None, None)
    );
    assert_eq!(handled(&pool, STUCK_SEQ).await, 1);
    assert_eq!(handled(&pool, QUICK_SEQ).await, 1);
    assert_eq!(
        (handler.runs(QUICK_SEQ), handler.runs(STUCK_SEQ)),
        (1, 2),
        "the finished job did not run again; the released one ran once more"
    );
    shutdown.cancel();
    server.await.expect("server task").expect("stopped cleanly");
    pool.close().await;
}

/// A request whose sender stalls part-way through its body holds the shutdown for the grace
/// period at most (1 s here; its read timeout is the default 30 s): its connection is then
/// closed unanswered, the app stops, the delivery acknowledged before is kept, and the stalled
/// one is not stored.
async fn a_stalled_request_holds_the_shutdown_only_for_the_grace_period(backend: Backend) {
    let app = TestApp::spawn_with(&backend, |s| s.set("shutdown_grace_secs", 1), vec![]).await;
    let body = fixture("issues.opened.0");
    let acknowledged = new_delivery_id();
    let (status, answer) = app.post("issues", &body, &acknowledged).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "received", "{answer}");

    let stalled = new_delivery_id();
    let signature = hookdock::ingest::sign(SECRET.as_bytes(), &body);
    let mut raw = RawDelivery::head(&app.base, "issues", &stalled, &signature, body.len()).await;
    raw.continued().await;
    raw.send(&body[..100]).await;

    let stopping = Instant::now();
    let stopped = app.stop_keeping_data().await;
    let took = stopping.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "the stalled request had its 1 s grace period, then the app stopped: {took:?}"
    );
    raw.closed_unanswered().await;

    let app = stopped.start().await;
    for (delivery, stored) in [(&acknowledged, 1), (&stalled, 0)] {
        let (status, page) = app
            .api_get(&format!("/api/v1/events?delivery_id={delivery}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(
            page["events"].as_array().map(Vec::len),
            Some(stored),
            "delivery {delivery}: {page}"
        );
    }
    app.stop().await;
}

/// A second SIGTERM while the shutdown waits ends the process at once, with exit status 143,
/// and a second Ctrl-C (SIGINT) with 130: here a request stalled part-way through its body
/// would otherwise hold the shutdown for the 5 s grace period, and the clean stop exits with 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_signal_stops_at_once() {
    for (signal, logged, status) in [
        ("TERM", "SIGTERM received", 143),
        ("INT", "Ctrl-C received", 130),
    ] {
        let db = TestDb::create(&Backend::Sqlite).await;
        let scratch = Scratch::new();
        let mut server = Server::start(&scratch, "server", &db.url).await;
        let body = fixture("issues.opened.0");
        let signature = hookdock::ingest::sign(SECRET.as_bytes(), &body);
        let mut stalled = RawDelivery::head(
            &server.base,
            "issues",
            &new_delivery_id(),
            &signature,
            body.len(),
        )
        .await;
        stalled.continued().await;
        stalled.send(&body[..100]).await;

        server.signal(signal);
        let log = server.log.clone();
        poll_until(
            "the first signal is logged",
            Duration::from_secs(10),
            || {
                let log = log.clone();
                async move { tail(&log, 1_000_000).contains(logged) }
            },
        )
        .await;
        server.signal(signal);
        let exit = server.wait_exit(Duration::from_secs(20)).await;
        let log = server.log_text();
        assert_eq!(
            exit.code(),
            Some(status),
            "SIG{signal}, exit status:\n{log}"
        );
        assert!(
            log.contains("second stop signal: exiting at once")
                && !log.contains("shutdown complete"),
            "the forced exit is logged:\n{log}"
        );
    }
}

crate::backend_tests!(
    a_stalled_request_holds_the_shutdown_only_for_the_grace_period,
    kill_9_under_load_loses_no_acknowledged_delivery_and_handles_each_once,
    sigterm_under_load_answers_in_flight_requests_and_exits_cleanly,
    shutdown_finishes_running_jobs_within_grace_and_releases_the_rest,
);

/// The binary on PostgreSQL, an API request whose query a network partition cuts off: it is
/// answered 503 `storage_unavailable` once `database_timeout_secs` (2 here) has passed, and
/// the server log names that timeout and the setting, so an operator can tell a partition
/// from a slow query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_log_names_the_database_timeout_an_api_request_ran_into() {
    let test = "the_server_log_names_the_database_timeout_an_api_request_ran_into";
    let Some((_db, direct, proxy, url)) = database_behind_a_proxy(test).await else {
        return;
    };
    let scratch = Scratch::new();
    let timeout = [("HOOKDOCK_DATABASE_TIMEOUT_SECS", "2")];
    let mut server = Server::start_with(&scratch, "server", &url, &timeout).await;
    let client = reqwest::Client::new();
    let lock = lock_events(&direct).await;
    let listed = client
        .get(format!("{}/api/v1/events", server.base))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(20))
        .send();
    let (answer, _) = tokio::join!(listed, cut_off_reads_waiting_on(lock, &direct, &proxy, 1));
    let answer = answer.expect("the API request answered");
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = answer.json().await.expect("a JSON error");
    assert_eq!(body["error"], "storage_unavailable", "{body}");
    let named = "no answer from the database within 2 s (setting `database_timeout_secs`)";
    poll_until(
        "the API's timeout in the log",
        Duration::from_secs(5),
        || async {
            let log = server.log_text();
            log.lines()
                .any(|l| l.contains("hookdock::http::error") && l.contains(named))
        },
    )
    .await;
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(20)).await.success());
    direct.close().await;
}
