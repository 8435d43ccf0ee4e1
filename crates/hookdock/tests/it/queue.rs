//! The queue, driven step by step with `Worker::run_once` (no background worker): retries,
//! dead letters, replay, ordering per key, leases.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookdock::handlers::{Handler, HandlerError, HandlerFuture, JobContext};
use hookdock::store::{Chains, JobFinish, JobOutcome, now_ms};
use reqwest::StatusCode;

use crate::helpers::*;

/// Records the order in which it sees events, and fails as told.
struct Recorder {
    name: &'static str,
    seen: Mutex<Vec<(String, i64, i64)>>,
    /// Fails with a retryable error while the event's number is listed here.
    failing: Mutex<Vec<i64>>,
    /// Fails while the delivery's sequence number is listed here.
    failing_seqs: Mutex<Vec<i64>>,
    permanent: bool,
    /// Declares that it runs in chains.
    chains: bool,
}

impl Recorder {
    fn new(failing: Vec<i64>, permanent: bool) -> Arc<Recorder> {
        Arc::new(Recorder {
            name: "recorder",
            seen: Mutex::new(Vec::new()),
            failing: Mutex::new(failing),
            failing_seqs: Mutex::new(Vec::new()),
            permanent,
            chains: false,
        })
    }

    /// One that runs in chains and fails on the deliveries numbered `failing_seqs`.
    fn chained(failing_seqs: Vec<i64>, permanent: bool) -> Arc<Recorder> {
        Recorder::chained_as("recorder", failing_seqs, permanent)
    }

    /// [`Recorder::chained`] as a handler named `name` (the metrics are the whole test
    /// binary's).
    fn chained_as(name: &'static str, failing_seqs: Vec<i64>, permanent: bool) -> Arc<Recorder> {
        Arc::new(Recorder {
            name,
            seen: Mutex::new(Vec::new()),
            failing: Mutex::new(Vec::new()),
            failing_seqs: Mutex::new(failing_seqs),
            permanent,
            chains: true,
        })
    }

    /// The sequence numbers of the deliveries of issue `number`, in the order it saw them.
    fn seen_of(&self, number: i64) -> Vec<i64> {
        self.seen()
            .iter()
            .filter(|s| s.1 == number)
            .map(|s| s.2)
            .collect()
    }

    fn seen(&self) -> Vec<(String, i64, i64)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Handler for Recorder {
    fn name(&self) -> &'static str {
        self.name
    }

    fn subscribes(&self, event: &str, _action: Option<&str>) -> bool {
        event == "issues"
    }

    fn runs_in_chains(&self) -> bool {
        self.chains
    }

    fn handle<'a>(&'a self, ctx: &'a JobContext<'a>) -> HandlerFuture<'a> {
        Box::pin(async move {
            let payload = ctx.payload().await?;
            let number = payload["issue"]["number"].as_i64().unwrap_or(-1);
            let seq = payload["hookdock_test_seq"].as_i64().unwrap_or(-1);
            self.seen
                .lock()
                .unwrap()
                .push((ctx.job.ordering_key.clone(), number, seq));
            if self.failing.lock().unwrap().contains(&number)
                || self.failing_seqs.lock().unwrap().contains(&seq)
            {
                return Err(if self.permanent {
                    HandlerError::Permanent(format!("issue {number} cannot be handled"))
                } else {
                    HandlerError::Retry {
                        message: format!("issue {number} failed"),
                        retry_after: None,
                    }
                });
            }
            Ok(Vec::new())
        })
    }
}

/// An issues.opened payload for issue `number`, with a unique body.
fn issue(number: i64, seq: u64) -> Vec<u8> {
    let mut value: serde_json::Value = serde_json::from_slice(&fixture("issues.opened.0")).unwrap();
    value["issue"]["number"] = number.into();
    value["hookdock_test_seq"] = seq.into();
    serde_json::to_vec(&value).unwrap()
}

async fn manual_app(
    backend: &Backend,
    recorder: Arc<Recorder>,
    configure: impl FnOnce(hookdock::Sources) -> hookdock::Sources,
) -> TestApp {
    TestApp::spawn_with(
        backend,
        |s| {
            configure(
                s.set("queue.workers", 0)
                    .set("handlers.activity.enabled", false),
            )
        },
        vec![recorder as Arc<dyn Handler>],
    )
    .await
}

async fn post_issue(app: &TestApp, number: i64, seq: u64) -> i64 {
    let (status, answer) = app
        .post("issues", &issue(number, seq), &new_delivery_id())
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["event_id"].as_i64().unwrap()
}

async fn jobs_of_one_key_run_in_delivery_order_one_at_a_time(backend: Backend) {
    let recorder = Recorder::new(vec![], false);
    let app = manual_app(&backend, recorder.clone(), |s| s).await;
    // Issue 1 three times, issue 2 twice, interleaved.
    for (seq, number) in [1, 2, 1, 2, 1].into_iter().enumerate() {
        post_issue(&app, number, seq as u64).await;
    }
    let worker = app.manual_worker();
    // Each step takes only the oldest unfinished job of each key.
    assert_eq!(worker.run_once().await.unwrap(), 2);
    assert_eq!(worker.run_once().await.unwrap(), 2);
    assert_eq!(worker.run_once().await.unwrap(), 1);
    assert_eq!(worker.run_once().await.unwrap(), 0);
    let seen = recorder.seen();
    let order_of = |n: i64| {
        seen.iter()
            .filter(|s| s.1 == n)
            .map(|s| s.2)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        order_of(1),
        [0, 2, 4],
        "issue 1's deliveries in the order received"
    );
    assert_eq!(order_of(2), [1, 3]);
    assert!(
        seen.iter()
            .all(|s| s.0 == format!("Codertocat/Hello-World#{}", s.1)),
        "{seen:?}"
    );
    app.stop().await;
}

async fn failing_job_retries_then_dies_and_holds_back_only_its_key_while_retrying(
    backend: Backend,
) {
    let recorder = Recorder::new(vec![1], false);
    let app = manual_app(&backend, recorder.clone(), |s| {
        s.set("queue.max_attempts", 3)
            .set("queue.retry_base_ms", 20)
    })
    .await;
    let failing = post_issue(&app, 1, 0).await;
    let blocked = post_issue(&app, 1, 1).await;
    let other = post_issue(&app, 2, 2).await;
    let worker = app.manual_worker();
    assert_eq!(
        worker.run_once().await.unwrap(),
        2,
        "issue 1 (first) and issue 2 run"
    );
    let (_, detail) = app.api_get(&format!("/api/v1/events/{failing}")).await;
    assert_eq!(detail["status"], "failed", "{detail}");
    assert_eq!(detail["jobs"][0]["attempts"], 1);
    assert_eq!(detail["last_error"], "issue 1 failed");
    let (_, other_detail) = app.api_get(&format!("/api/v1/events/{other}")).await;
    assert_eq!(other_detail["status"], "done");
    // Until it is dead, the failing job keeps issue 1's later event waiting.
    let store = app.store.clone();
    let rounds = run_until_status(&worker, &store, failing, "dead").await;
    assert!(rounds >= 2);
    let (_, detail) = app.api_get(&format!("/api/v1/events/{failing}")).await;
    assert_eq!(detail["jobs"][0]["attempts"], 3);
    assert!(
        detail["last_error"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 attempts"),
        "{detail}"
    );
    let statuses: Vec<&str> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "processing",
            "failed",
            "processing",
            "failed",
            "processing",
            "dead"
        ]
    );
    let blocked_runs_before = recorder.seen().iter().filter(|s| s.1 == 1).count();
    assert_eq!(
        blocked_runs_before, 3,
        "the later issue-1 event did not run while the first was retrying"
    );
    // Dead no longer holds the key: the later event (which the handler now accepts) runs.
    recorder.failing.lock().unwrap().clear();
    run_until_status(&worker, &store, blocked, "done").await;
    // Dead events are listed, and replay re-runs only the dead job.
    let (_, dead) = app.api_get("/api/v1/events?status=dead").await;
    let ids: Vec<i64> = dead["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [failing]);
    let (status, report) = app
        .api_post(&format!("/api/v1/events/{failing}/replay?dead_only=true"))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["queued"], serde_json::json!(["recorder"]));
    assert_eq!(worker.run_once().await.unwrap(), 1);
    assert_eq!(store_status(&store, failing).await, "done");
    let (_, detail) = app.api_get(&format!("/api/v1/events/{failing}")).await;
    assert_eq!(detail["last_error"], serde_json::Value::Null);
    app.stop().await;
}

async fn store_status(store: &hookdock::store::Store, id: i64) -> String {
    store.event_summary(id).await.unwrap().status
}

/// Runs the worker step by step until event `id` has `status` (10 s at most); returns the
/// number of steps.
async fn run_until_status(
    worker: &Arc<hookdock::queue::Worker>,
    store: &hookdock::store::Store,
    id: i64,
    status: &str,
) -> usize {
    let mut rounds = 0;
    poll_until(
        &format!("event {id} is {status}"),
        Duration::from_secs(10),
        || {
            rounds += 1;
            let worker = Arc::clone(worker);
            let store = store.clone();
            async move {
                worker.run_once().await.unwrap();
                store_status(&store, id).await == status
            }
        },
    )
    .await;
    rounds
}

async fn permanent_errors_go_straight_to_dead_and_replay_dead_requeues_all(backend: Backend) {
    let recorder = Recorder::new(vec![5, 6], true);
    let app = manual_app(&backend, recorder.clone(), |s| s).await;
    let a = post_issue(&app, 5, 0).await;
    let b = post_issue(&app, 6, 1).await;
    let worker = app.manual_worker();
    assert_eq!(worker.run_once().await.unwrap(), 2);
    assert_eq!(store_status(&app.store, a).await, "dead");
    assert_eq!(store_status(&app.store, b).await, "dead");
    recorder.failing.lock().unwrap().clear();
    let (status, answer) = app.api_post("/api/v1/events/replay-dead").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["replayed"].as_array().map(Vec::len), Some(2));
    assert_eq!(worker.run_once().await.unwrap(), 2);
    assert_eq!(store_status(&app.store, a).await, "done");
    assert_eq!(store_status(&app.store, b).await, "done");
    app.stop().await;
}

async fn expired_lease_is_claimed_again_and_the_late_result_is_discarded(backend: Backend) {
    let recorder = Recorder::new(vec![], false);
    let app = manual_app(&backend, recorder.clone(), |s| s).await;
    let id = post_issue(&app, 9, 0).await;
    // A worker that "died": it claimed the job with a lease that has already run out.
    let now = now_ms();
    let stale = app
        .store
        .claim_jobs("dead-worker", 10, now - 1, now, &Chains::default())
        .await
        .unwrap();
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].len(), 1);
    let worker = app.manual_worker();
    assert_eq!(
        worker.run_once().await.unwrap(),
        1,
        "expired lease is claimed again"
    );
    assert_eq!(store_status(&app.store, id).await, "done");
    let recorded = app
        .store
        .finish_job(JobFinish {
            job_id: stale[0][0].job_id,
            event_id: id,
            lease_owner: "dead-worker".into(),
            attempt: 1,
            outcome: JobOutcome::Dead {
                error: "late".into(),
            },
        })
        .await
        .unwrap();
    assert!(!recorded, "a result from a lost lease is not recorded");
    assert_eq!(store_status(&app.store, id).await, "done");
    let (_, detail) = app.api_get(&format!("/api/v1/events/{id}")).await;
    assert_eq!(detail["jobs"][0]["attempts"], 2);
    app.stop().await;
}

async fn released_jobs_run_again_without_counting_the_attempt(backend: Backend) {
    let recorder = Recorder::new(vec![], false);
    let app = manual_app(&backend, recorder.clone(), |s| s).await;
    let id = post_issue(&app, 3, 0).await;
    let now = now_ms();
    let held = app
        .store
        .claim_jobs("stopping-worker", 10, now + 60_000, now, &Chains::default())
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].len(), 1);
    assert_eq!(store_status(&app.store, id).await, "processing");
    assert_eq!(
        app.manual_worker().run_once().await.unwrap(),
        0,
        "a live lease is respected"
    );
    let released = app
        .store
        .release_jobs("stopping-worker", &[held[0][0].job_id])
        .await
        .unwrap();
    assert_eq!(released, 1);
    assert_eq!(store_status(&app.store, id).await, "pending");
    assert_eq!(app.manual_worker().run_once().await.unwrap(), 1);
    let (_, detail) = app.api_get(&format!("/api/v1/events/{id}")).await;
    assert_eq!(detail["status"], "done");
    assert_eq!(detail["jobs"][0]["attempts"], 1);
    app.stop().await;
}

async fn replay_of_a_done_event_runs_its_handlers_again(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let (_, answer) = app
        .post("push", &fixture("push.none.0"), &new_delivery_id())
        .await;
    let id = answer["event_id"].as_i64().unwrap();
    app.wait_until_idle().await;
    let (status, report) = app.api_post(&format!("/api/v1/events/{id}/replay")).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["queued"], serde_json::json!(["activity", "records"]));
    app.wait_until_idle().await;
    let activity = app.store.activity().await.unwrap();
    assert_eq!(activity.iter().map(|a| a.events_handled).sum::<i64>(), 2);
    let (status, _) = app.api_post("/api/v1/events/999999/replay").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}

async fn retention_purges_only_old_finished_events(backend: Backend) {
    let recorder = Recorder::new(vec![8], true);
    let app = manual_app(&backend, recorder, |s| s).await;
    let done = post_issue(&app, 7, 0).await;
    let dead = post_issue(&app, 8, 1).await;
    let worker = app.manual_worker();
    assert_eq!(worker.run_once().await.unwrap(), 2);
    let pending = post_issue(&app, 10, 2).await;
    let purged = app.store.purge_finished(now_ms() + 1).await.unwrap();
    assert_eq!(purged, 1);
    assert!(
        app.store.event_summary(done).await.is_err(),
        "done event purged"
    );
    assert_eq!(store_status(&app.store, dead).await, "dead");
    assert_eq!(store_status(&app.store, pending).await, "pending");
    assert_eq!(
        app.store.purge_finished(now_ms() - 60_000).await.unwrap(),
        0,
        "nothing older"
    );
    app.stop().await;
}

/// The queue's gauge lines of `/metrics`.
async fn queue_gauges(app: &TestApp) -> Vec<String> {
    let text = app.metrics_text().await;
    let lines: Vec<String> = text
        .lines()
        .filter(|l| {
            l.starts_with("hookdock_queue_jobs{") || l.starts_with("hookdock_events_replay")
        })
        .map(str::to_owned)
        .collect();
    assert_eq!(
        text.contains("# TYPE hookdock_queue_jobs gauge"),
        !lines.is_empty(),
        "{text}"
    );
    lines
}

/// `/metrics` shows what the queue holds now, read from the database: jobs by status and
/// events held as suspected replays; a later scrape sees the queue drained.
async fn metrics_show_the_queue_by_status(backend: Backend) {
    let recorder = Recorder::new(vec![8], true);
    let app = manual_app(&backend, recorder, |s| s).await;
    post_issue(&app, 7, 0).await;
    post_issue(&app, 8, 1).await;
    assert_eq!(app.manual_worker().run_once().await.unwrap(), 2);
    post_issue(&app, 10, 2).await;
    post_issue(&app, 11, 3).await;
    let (status, held) = app.post("issues", &issue(11, 3), &new_delivery_id()).await;
    assert_eq!(status, StatusCode::OK, "{held}");
    assert_eq!(held["held"], "replay_suspected");

    assert_eq!(
        queue_gauges(&app).await,
        [
            "hookdock_queue_jobs{status=\"pending\"} 2",
            "hookdock_queue_jobs{status=\"processing\"} 0",
            "hookdock_queue_jobs{status=\"failed\"} 0",
            "hookdock_queue_jobs{status=\"dead\"} 1",
            "hookdock_events_replay_suspected 1",
        ]
    );
    assert_eq!(app.manual_worker().run_once().await.unwrap(), 2);
    let drained = [
        "hookdock_queue_jobs{status=\"pending\"} 0",
        "hookdock_queue_jobs{status=\"processing\"} 0",
        "hookdock_queue_jobs{status=\"failed\"} 0",
        "hookdock_queue_jobs{status=\"dead\"} 1",
        "hookdock_events_replay_suspected 1",
    ];
    // Read at most once a second: poll until the scrape shows the drained queue.
    let until = |expected: Vec<String>| {
        let app = &app;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let now = queue_gauges(app).await;
                if now == expected {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "still {now:?} after 10 s, expected {expected:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    until(drained.map(str::to_owned).to_vec()).await;
    // A database that cannot be read leaves the gauges out instead of showing old values.
    app.store.close().await;
    until(Vec::new()).await;
    let text = app.metrics_text().await;
    assert!(text.contains("hookdock_webhook_deliveries_total"), "{text}");
    app.stop().await;
}

/// The purge reads only up to the first event received since the cutoff (ids grow with
/// arrival); clocks that jumped must neither stop it nor make it delete a recent event.
async fn retention_purge_holds_with_clocks_that_jumped(backend: Backend) {
    use sqlx::Row;
    let recorder = Recorder::new(vec![], true);
    let app = manual_app(&backend, recorder, |s| s).await;
    let mut ids = Vec::new();
    for seq in 0..6 {
        ids.push(post_issue(&app, 20 + seq as i64, seq).await);
    }
    assert_eq!(app.manual_worker().run_once().await.unwrap(), 6);
    let day = 86_400_000;
    let now = now_ms();
    // In delivery order: stamped a year ahead, expired, recent, expired (the clock set back),
    // recent, expired.
    let stamps = [
        now + 365 * day,
        now - 40 * day,
        now - day,
        now - 41 * day,
        now - day,
        now - 40 * day,
    ];
    let pool = app.raw_pool().await;
    for (id, at) in ids.iter().zip(stamps) {
        sqlx::query("UPDATE events SET received_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
    }
    let remaining = |pool: sqlx::AnyPool| async move {
        let rows = sqlx::query("SELECT id FROM events ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        rows.iter()
            .map(|r| r.try_get::<i64, _>(0).unwrap())
            .collect::<Vec<_>>()
    };
    // The future stamp does not bound the purge; the first recent event does, so the
    // set-back one after it waits for a later purge.
    assert_eq!(app.store.purge_finished(now - 30 * day).await.unwrap(), 1);
    assert_eq!(
        remaining(pool.clone()).await,
        [ids[0], ids[2], ids[3], ids[4], ids[5]]
    );
    // Once the recent ones have expired too, everything old enough goes; the one stamped
    // ahead stays until its own time has passed.
    assert_eq!(app.store.purge_finished(now).await.unwrap(), 4);
    assert_eq!(remaining(pool.clone()).await, [ids[0]]);
    assert_eq!(app.store.purge_finished(i64::MAX).await.unwrap(), 1);
    assert!(remaining(pool.clone()).await.is_empty());
    pool.close().await;
    app.stop().await;
}

async fn a_replayed_dead_job_waits_for_its_keys_head_then_runs_in_delivery_order(backend: Backend) {
    let recorder = Recorder::new(vec![4], true);
    let app = manual_app(&backend, recorder.clone(), |s| s).await;
    let first = post_issue(&app, 4, 0).await;
    let worker = app.manual_worker();
    assert_eq!(worker.run_once().await.unwrap(), 1);
    assert_eq!(store_status(&app.store, first).await, "dead");
    // Two more deliveries for the same issue; the first of them is the key's head now.
    let second = post_issue(&app, 4, 1).await;
    let third = post_issue(&app, 4, 2).await;
    recorder.failing.lock().unwrap().clear();
    let (status, report) = app
        .api_post(&format!("/api/v1/events/{first}/replay"))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "pending");
    // One job of the key at a time: the head (the second delivery) first; then the replayed
    // job takes its place in delivery order, before the third.
    for _ in 0..3 {
        assert_eq!(worker.run_once().await.unwrap(), 1);
    }
    assert_eq!(worker.run_once().await.unwrap(), 0);
    let seqs: Vec<i64> = recorder.seen().iter().map(|s| s.2).collect();
    assert_eq!(seqs, [0, 1, 0, 2]);
    for id in [first, second, third] {
        assert_eq!(store_status(&app.store, id).await, "done");
    }
    app.stop().await;
}

async fn a_long_backlog_behind_one_key_is_claimed_one_job_at_a_time(backend: Backend) {
    let recorder = Recorder::new(vec![], false);
    let app = manual_app(&backend, recorder.clone(), |s| s).await;
    for seq in 0..40 {
        post_issue(&app, 11, seq).await;
    }
    post_issue(&app, 12, 40).await;
    let worker = app.manual_worker();
    // The first step takes the head of each key; after that only issue 11 has jobs left.
    assert_eq!(worker.run_once().await.unwrap(), 2);
    for _ in 0..39 {
        assert_eq!(worker.run_once().await.unwrap(), 1);
    }
    assert_eq!(worker.run_once().await.unwrap(), 0);
    let of_11: Vec<i64> = recorder
        .seen()
        .iter()
        .filter(|s| s.1 == 11)
        .map(|s| s.2)
        .collect();
    assert_eq!(of_11, (0..40).collect::<Vec<i64>>());
    assert_eq!(app.store.unfinished_jobs().await.unwrap(), 0);
    app.stop().await;
}

/// Migration 0011 gives jobs queued before it their place: only the oldest unfinished job of
/// each key may run, whatever state the others are in.
async fn jobs_queued_before_the_head_flag_keep_their_order(backend: Backend) {
    use sqlx::Row;
    let db = TestDb::create(&backend).await;
    // The schema as it was before 0011.
    let pool = pool_migrated_before(&db, &backend, "0011").await;
    // Jobs of handler h on key a (done, failed, pending, pending), on key b (done, pending),
    // and of handler g on key a (processing with a live lease, pending); one event each.
    let jobs = [
        ("h", "a", "done"),
        ("h", "a", "failed"),
        ("h", "a", "pending"),
        ("h", "a", "pending"),
        ("h", "b", "done"),
        ("h", "b", "pending"),
        ("g", "a", "processing"),
        ("g", "a", "pending"),
    ];
    let far = now_ms() + 3_600_000;
    let mut ids = Vec::new();
    for (n, (handler, key, status)) in jobs.into_iter().enumerate() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO events (delivery_id, event, status, ordering_key, content_type, \
             headers, received_at, updated_at, body_size, body_sha256, body) VALUES \
             ('d{n}', 'issues', 'pending', '{key}', 'application/json', '{{}}', 1, 1, 0, \
             '{n}', '')"
        )))
        .execute(&pool)
        .await
        .unwrap();
        let lease = if status == "processing" {
            format!("'w0', {far}")
        } else {
            "NULL, NULL".to_owned()
        };
        let id: i64 = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO jobs (event_id, handler, ordering_key, status, attempts, run_at, \
             lease_owner, lease_until, created_at, updated_at) SELECT id, '{handler}', '{key}', \
             '{status}', 1, 0, {lease}, 0, 0 FROM events WHERE delivery_id = 'd{n}' RETURNING id"
        )))
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
        ids.push(id);
    }
    pool.close().await;
    let store = hookdock::store::Store::connect(&db.url, Default::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    assert!(store.migrations_current().await.unwrap());
    let now = now_ms();
    let mut claimed: Vec<i64> = store
        .claim_jobs("w", 10, now + 60_000, now, &Chains::default())
        .await
        .unwrap()
        .into_iter()
        .flatten()
        .map(|j| j.job_id)
        .collect();
    claimed.sort();
    // h/a: the failed job (due) is its key's head; h/b: its pending job. g/a is held by the
    // processing job's live lease, and everything else waits behind a head.
    assert_eq!(claimed, [ids[1], ids[5]]);
    assert_eq!(
        store
            .claim_jobs("w", 10, now + 60_000, now, &Chains::default())
            .await
            .unwrap()
            .len(),
        0
    );
    store.close().await;
}

/// Jobs start as soon as their delivery is stored and as soon as the job ahead of them on their
/// key is done, not at the worker's next poll (here ten minutes away; the worker claims once
/// when it starts, before these deliveries are sent).
async fn jobs_run_as_soon_as_they_can_without_waiting_for_a_poll(backend: Backend) {
    let recorder = Recorder::new(vec![], false);
    let app = TestApp::spawn_with(
        &backend,
        |s| {
            s.set("queue.poll_interval_ms", 600_000)
                .set("handlers.activity.enabled", false)
        },
        vec![recorder.clone() as Arc<dyn Handler>],
    )
    .await;
    for (seq, number) in [21, 21, 21, 22].into_iter().enumerate() {
        post_issue(&app, number, seq as u64).await;
    }
    app.wait_until_idle().await;
    let of_21: Vec<i64> = recorder
        .seen()
        .iter()
        .filter(|s| s.1 == 21)
        .map(|s| s.2)
        .collect();
    assert_eq!(of_21, [0, 1, 2], "one key's jobs in delivery order");
    assert_eq!(recorder.seen().len(), 4);
    app.stop().await;
}

/// A job whose handler ran but whose result cannot be written at once (the database refuses
/// the write: a full disk, a lost connection) is recorded as soon as the database takes it
/// again: it does not run a second time, and its key is not held back until its lease (a
/// minute here) expires.
async fn a_result_that_cannot_be_written_at_once_is_written_when_it_can(backend: Backend) {
    let recorder = Recorder::new(vec![], false);
    let app = TestApp::spawn_with(
        &backend,
        |s| {
            s.set("queue.lease_secs", 60)
                .set("handlers.activity.enabled", false)
        },
        vec![recorder.clone() as Arc<dyn Handler>],
    )
    .await;
    let admin = app.raw_pool().await;
    let (fail, heal): (&[&str], &[&str]) = match backend {
        Backend::Sqlite => (
            &[
                "CREATE TRIGGER refuse BEFORE UPDATE OF status ON jobs WHEN NEW.status = 'done' \
                 BEGIN SELECT RAISE(ABORT, 'disk full'); END",
            ],
            &["DROP TRIGGER refuse"],
        ),
        Backend::Postgres(_) => (
            &[
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER refuse BEFORE UPDATE ON jobs FOR EACH ROW WHEN (NEW.status = 'done') \
                 EXECUTE FUNCTION refuse()",
            ],
            &["DROP TRIGGER refuse ON jobs", "DROP FUNCTION refuse()"],
        ),
    };
    for statement in fail {
        sqlx::query(sqlx::AssertSqlSafe(*statement))
            .execute(&admin)
            .await
            .unwrap();
    }
    let errors = |text: &str| {
        metric(
            text,
            &format!(
                "hookdock_store_write_errors_total{{dialect=\"{}\"}}",
                match backend {
                    Backend::Sqlite => "sqlite",
                    Backend::Postgres(_) => "postgres",
                }
            ),
        )
    };
    let before = errors(&app.metrics_text().await);
    let first = post_issue(&app, 31, 0).await;
    poll_until("the handler ran", Duration::from_secs(10), || async {
        recorder.seen().len() == 1
    })
    .await;
    poll_until(
        "a refused write of the result",
        Duration::from_secs(10),
        || async { errors(&app.metrics_text().await) > before },
    )
    .await;
    assert_eq!(app.job(first, "recorder").await["status"], "processing");
    // The next delivery on the same key waits behind it meanwhile.
    let second = post_issue(&app, 31, 1).await;
    assert_eq!(app.job(second, "recorder").await["status"], "pending");
    for statement in heal {
        sqlx::query(sqlx::AssertSqlSafe(*statement))
            .execute(&admin)
            .await
            .unwrap();
    }
    poll_until(
        "both jobs done, well within the lease",
        Duration::from_secs(15),
        || async {
            app.job(first, "recorder").await["status"] == "done"
                && app.job(second, "recorder").await["status"] == "done"
        },
    )
    .await;
    assert_eq!(app.job(first, "recorder").await["attempts"], 1);
    assert_eq!(recorder.seen_of(31), [0, 1], "each ran once, in order");
    admin.close().await;
    app.stop().await;
}

/// Runs issue 41's job until told to finish; records every issue number it is given.
struct Blocker {
    name: &'static str,
    seen: Mutex<Vec<i64>>,
    release: tokio::sync::Notify,
}

impl Blocker {
    fn named(name: &'static str) -> Arc<Blocker> {
        Arc::new(Blocker {
            name,
            seen: Mutex::new(Vec::new()),
            release: tokio::sync::Notify::new(),
        })
    }
}

impl Handler for Blocker {
    fn name(&self) -> &'static str {
        self.name
    }

    fn subscribes(&self, event: &str, _action: Option<&str>) -> bool {
        event == "issues"
    }

    fn handle<'a>(&'a self, ctx: &'a JobContext<'a>) -> HandlerFuture<'a> {
        Box::pin(async move {
            let payload = ctx.payload().await?;
            let number = payload["issue"]["number"].as_i64().unwrap_or(-1);
            self.seen.lock().unwrap().push(number);
            if number == 41 {
                self.release.notified().await;
            }
            Ok(Vec::new())
        })
    }
}

/// A lease renewal cut off by a network partition while the server runs it, on a connection
/// the server then forgets (nothing ever answers it, nothing closes it): the worker gives the
/// renewal up at its next turn instead of waiting on it for good, so it goes on claiming and
/// running other keys' jobs once the database can be reached again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_renewal_cut_off_by_a_partition_does_not_stall_the_worker() {
    let test = "a_lease_renewal_cut_off_by_a_partition_does_not_stall_the_worker";
    let blocker = Blocker::named("blocker");
    let configure = |s: hookdock::config::Sources| {
        s.set("queue.lease_secs", 3)
            .set("handlers.activity.enabled", false)
    };
    let handlers = vec![blocker.clone() as Arc<dyn Handler>];
    let Some((app, direct, proxy)) = app_behind_a_proxy(test, configure, handlers).await else {
        return;
    };
    hold_issue_41(&app, &blocker).await;
    // The next renewal (every second) takes two seconds on the server; the partition starts
    // meanwhile, and the server forgets the connection.
    slow_trigger(&direct, "UPDATE OF lease_until", "jobs").await;
    cut_while_the_server_sleeps(&direct, &proxy).await;
    // The renewal's transaction ends on the server; the network is back for new connections.
    until_the_server_wakes(&direct).await;
    drop_slow_trigger(&direct, "jobs").await;
    proxy.forget();
    // Another key's delivery: stored, claimed and run by the same worker.
    poll_until(
        "a delivery stored after the partition",
        Duration::from_secs(40),
        || async {
            app.post("issues", &issue(42, 1), &new_delivery_id())
                .await
                .0
                == StatusCode::OK
        },
    )
    .await;
    poll_until("issue 42's job run", Duration::from_secs(40), || async {
        blocker.seen.lock().unwrap().contains(&42)
    })
    .await;
    blocker.release.notify_one();
    direct.close().await;
    app.stop().await;
}

/// A worker whose lease passed to another while its handler ran (cut off from the database,
/// or stalled, it could not renew it) has its result discarded, and the discard is counted
/// (`hookdock_job_results_discarded_total`) for the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_whose_lease_was_lost_is_discarded_and_counted() {
    let test = "a_result_whose_lease_was_lost_is_discarded_and_counted";
    let blocker = Blocker::named(test);
    let app = TestApp::spawn_with(
        &Backend::Sqlite,
        |s| s.set("handlers.activity.enabled", false),
        vec![blocker.clone() as Arc<dyn Handler>],
    )
    .await;
    let held = hold_issue_41(&app, &blocker).await;
    let other = app.raw_pool().await;
    sqlx::query("UPDATE jobs SET lease_owner = 'another-worker' WHERE event_id = ?")
        .bind(held)
        .execute(&other)
        .await
        .unwrap();
    blocker.release.notify_one();
    let series = format!("hookdock_job_results_discarded_total{{handler=\"{test}\"}} 1");
    poll_until("the discard counted", Duration::from_secs(10), || async {
        app.metrics_text().await.contains(&series)
    })
    .await;
    let (status, owner): (String, String) =
        sqlx::query_as("SELECT status, lease_owner FROM jobs WHERE event_id = ?")
            .bind(held)
            .fetch_one(&other)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), owner.as_str()),
        ("processing", "another-worker")
    );
    other.close().await;
    app.stop().await;
}

/// Posts issue 41 and returns its event's id once `blocker` is running its job (until
/// released).
async fn hold_issue_41(app: &TestApp, blocker: &Blocker) -> i64 {
    let held = post_issue(app, 41, 0).await;
    poll_until(
        "issue 41's job running",
        Duration::from_secs(10),
        || async { blocker.seen.lock().unwrap().contains(&41) },
    )
    .await;
    held
}

/// An app on PostgreSQL behind a [`hookdock_testkit::TcpProxy`] whose only handler of issues
/// is a [`Blocker`] named after the test (the metrics are the whole test binary's), running
/// issue 41's job (the event's id last) until released.
async fn blocked_behind_a_proxy(
    test: &'static str,
) -> Option<(
    TestApp,
    sqlx::AnyPool,
    hookdock_testkit::TcpProxy,
    Arc<Blocker>,
    i64,
)> {
    let blocker = Blocker::named(test);
    let configure = |s: hookdock::config::Sources| s.set("handlers.activity.enabled", false);
    let handlers = vec![blocker.clone() as Arc<dyn Handler>];
    let (app, direct, proxy) = app_behind_a_proxy(test, configure, handlers).await?;
    let held = hold_issue_41(&app, &blocker).await;
    Some((app, direct, proxy, blocker, held))
}

/// `handler`'s job of the event is done after one attempt, and no result of its jobs was
/// discarded (`hookdock_job_results_discarded_total`).
async fn assert_recorded_once(app: &TestApp, direct: &sqlx::AnyPool, handler: &str, event_id: i64) {
    assert_eq!(
        job_of(direct, handler, event_id).await,
        ("done".to_owned(), 1)
    );
    assert_none_discarded(app, handler).await;
}

/// No result of `handler`'s jobs was discarded (`hookdock_job_results_discarded_total`).
async fn assert_none_discarded(app: &TestApp, handler: &str) {
    let metrics = app.metrics_text().await;
    let series = format!("hookdock_job_results_discarded_total{{handler=\"{handler}\"}}");
    assert!(
        !metrics.contains(&series),
        "a result was discarded:\n{metrics}\n{}",
        connection_log(app)
    );
}

/// The id of `handler`'s job of an event.
async fn job_id(direct: &sqlx::AnyPool, handler: &str, event_id: i64) -> i64 {
    sqlx::query_scalar("SELECT id FROM jobs WHERE event_id = $1 AND handler = $2")
        .bind(event_id)
        .bind(handler)
        .fetch_one(direct)
        .await
        .unwrap()
}

/// The status and attempts of `handler`'s job of an event.
async fn job_of(direct: &sqlx::AnyPool, handler: &str, event_id: i64) -> (String, i64) {
    sqlx::query_as("SELECT status, attempts FROM jobs WHERE event_id = $1 AND handler = $2")
        .bind(event_id)
        .bind(handler)
        .fetch_one(direct)
        .await
        .unwrap()
}

/// A connection reset under the second of a write's two PostgreSQL transactions (the
/// deliveries'), after the first (a job's result) has committed: only the deliveries are
/// written again. (Written again whole, the result was found already recorded and counted as
/// discarded, with a warning that the job's lease had expired, though it had not.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_a_jobs_result_committed_writes_only_the_deliveries_again() {
    let test = "a_reset_after_a_jobs_result_committed_writes_only_the_deliveries_again";
    let Some((app, direct, proxy, blocker, held)) = blocked_behind_a_proxy(test).await else {
        return;
    };

    // A delivery's write takes two seconds on the server. Meanwhile issue 41's job finishes
    // and another delivery arrives: the next write records the one in its first transaction
    // and stores the other in its second, whose connection is reset.
    slow_trigger(&direct, "INSERT", "events").await;
    let (slow, last) = (new_delivery_id(), new_delivery_id());
    let (slow_body, last_body) = (issue(43, 1), issue(44, 2));
    let reset_in_the_next_write = async {
        until_the_server_sleeps(&direct).await;
        blocker.release.notify_one();
        let reset = async {
            poll_until(
                "the first delivery stored and the next write's insert under way",
                Duration::from_secs(10),
                || async {
                    let stored: i64 =
                        sqlx::query_scalar("SELECT count(*) FROM events WHERE delivery_id = $1")
                            .bind(slow.as_str())
                            .fetch_one(&direct)
                            .await
                            .unwrap();
                    stored == 1 && sleeping_on_server(&direct).await > 0
                },
            )
            .await;
            proxy.reset();
        };
        tokio::join!(app.post("issues", &last_body, &last), reset).0
    };
    let ((status, answer), (last_status, last_answer)) = tokio::join!(
        app.post("issues", &slow_body, &slow),
        reset_in_the_next_write
    );
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(last_status, StatusCode::OK, "{last_answer}");
    assert_eq!(last_answer["status"], "received", "{last_answer}");
    drop_slow_trigger(&direct, "events").await;

    assert_recorded_once(&app, &direct, blocker.name, held).await;
    direct.close().await;
    app.stop().await;
}

/// A connection reset while the server commits a job's result (the commit goes through; the
/// answer is lost with the connection): the result written again is found recorded by that
/// first try, not counted as discarded (nor warned of as a lease that expired).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_result_whose_commit_landed_before_a_reset_is_not_discarded() {
    let test = "a_jobs_result_whose_commit_landed_before_a_reset_is_not_discarded";
    let Some((app, direct, proxy, blocker, held)) = blocked_behind_a_proxy(test).await else {
        return;
    };
    // Marking a job done takes two seconds in its commit on the server.
    slow_commit(&direct, "UPDATE", "jobs", "NEW.status = 'done'").await;
    blocker.release.notify_one();
    reset_while_a_commit_sleeps(&direct, &proxy, "jobs").await;
    // A later delivery's job, recorded after the retried result: once it is done, the worker
    // has had the retried result's answer.
    let later = post_issue(&app, 42, 1).await;
    poll_until("issue 42's job done", Duration::from_secs(15), || async {
        job_of(&direct, blocker.name, later).await.0 == "done"
    })
    .await;
    assert_recorded_once(&app, &direct, blocker.name, held).await;
    direct.close().await;
    app.stop().await;
}

/// A connection reset while the server commits a chain's results, its head's failure and the
/// job behind it given back (the commit goes through; the answer is lost with the connection):
/// the job given back, found no longer held when the write is tried again, counts as given
/// back by that first try, not as a result discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_given_back_in_a_commit_that_landed_before_a_reset_is_not_discarded() {
    let test = "a_job_given_back_in_a_commit_that_landed_before_a_reset_is_not_discarded";
    let recorder = Recorder::chained_as(test, vec![0], false);
    let configure = |s: hookdock::config::Sources| {
        s.set("queue.workers", 0)
            .set("queue.chain_max", 4)
            .set("handlers.activity.enabled", false)
    };
    let handlers = vec![recorder.clone() as Arc<dyn Handler>];
    let Some((app, direct, proxy)) = app_behind_a_proxy(test, configure, handlers).await else {
        return;
    };
    let head = post_issue(&app, 7, 0).await;
    let behind = post_issue(&app, 7, 1).await;
    // Giving a job back takes two seconds in its commit on the server.
    let given_back = "OLD.status = 'processing' AND NEW.status = 'pending'";
    slow_commit(&direct, "UPDATE", "jobs", given_back).await;
    let worker = app.manual_worker();
    let run = tokio::spawn(async move { worker.run_once().await });
    reset_while_a_commit_sleeps(&direct, &proxy, "jobs").await;
    assert_eq!(
        run.await.unwrap().unwrap(),
        2,
        "the head and the job behind it"
    );
    assert_eq!(recorder.seen_of(7), [0]);
    assert_eq!(job_of(&direct, test, head).await, ("failed".to_owned(), 1));
    assert_eq!(
        job_of(&direct, test, behind).await,
        ("pending".to_owned(), 0)
    );
    let reason = format!(
        "not run: job {} ahead of it on its key did not succeed",
        job_id(&direct, test, head).await
    );
    assert_eq!(
        history(&app, behind).await,
        [
            ("processing".into(), None),
            ("pending".into(), Some(reason))
        ]
    );
    assert_none_discarded(&app, test).await;
    direct.close().await;
    app.stop().await;
}

/// The statuses in an event's history, and the errors recorded with them.
async fn history(app: &TestApp, event_id: i64) -> Vec<(String, Option<String>)> {
    let (_, detail) = app.api_get(&format!("/api/v1/events/{event_id}")).await;
    detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["status"].as_str().unwrap().to_owned(),
                h["error"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

async fn a_chain_takes_a_keys_backlog_in_one_claim_and_runs_it_in_order(backend: Backend) {
    let recorder = Recorder::chained(vec![], false);
    let app = manual_app(&backend, recorder.clone(), |s| s.set("queue.chain_max", 4)).await;
    let mut ids = Vec::new();
    for seq in 0..6 {
        ids.push(post_issue(&app, 1, seq).await);
    }
    let other = post_issue(&app, 2, 6).await;
    let worker = app.manual_worker();
    assert_eq!(
        worker.run_once().await.unwrap(),
        5,
        "issue 1's head with the 3 jobs behind it (chain_max 4), and issue 2's job"
    );
    assert_eq!(recorder.seen_of(1), [0, 1, 2, 3]);
    assert_eq!(recorder.seen_of(2), [6]);
    for &id in &ids[..4] {
        assert_eq!(store_status(&app.store, id).await, "done");
        assert_eq!(
            history(&app, id).await,
            [("processing".into(), None), ("done".into(), None)]
        );
    }
    assert_eq!(store_status(&app.store, ids[4]).await, "pending");
    assert_eq!(store_status(&app.store, other).await, "done");
    assert_eq!(worker.run_once().await.unwrap(), 2);
    assert_eq!(recorder.seen_of(1), [0, 1, 2, 3, 4, 5]);
    assert_eq!(store_status(&app.store, ids[5]).await, "done");
    assert_eq!(worker.run_once().await.unwrap(), 0);
    app.stop().await;
}

async fn a_failure_stops_its_chain_and_the_rest_waits_without_losing_an_attempt(backend: Backend) {
    let recorder = Recorder::chained(vec![2], false);
    let app = manual_app(&backend, recorder.clone(), |s| {
        s.set("queue.retry_base_ms", 20)
    })
    .await;
    let mut ids = Vec::new();
    for seq in 0..5 {
        ids.push(post_issue(&app, 7, seq).await);
    }
    let worker = app.manual_worker();
    assert_eq!(
        worker.run_once().await.unwrap(),
        5,
        "the whole backlog is claimed"
    );
    assert_eq!(
        recorder.seen_of(7),
        [0, 1, 2],
        "nothing ran after the failure"
    );
    assert_eq!(store_status(&app.store, ids[1]).await, "done");
    assert_eq!(store_status(&app.store, ids[2]).await, "failed");
    for &id in &ids[3..] {
        assert_eq!(store_status(&app.store, id).await, "pending");
        let given_back = history(&app, id).await;
        assert_eq!(given_back.len(), 2, "{given_back:?}");
        assert_eq!(given_back[1].0, "pending");
        let reason = given_back[1].1.clone().unwrap_or_default();
        assert!(reason.starts_with("not run"), "{reason}");
        assert_eq!(app.job(id, "recorder").await["attempts"], 0);
    }
    // While the failed job retries, the key waits for it; then the rest runs in order.
    recorder.failing_seqs.lock().unwrap().clear();
    run_until_status(&worker, &app.store, ids[4], "done").await;
    assert_eq!(recorder.seen_of(7), [0, 1, 2, 2, 3, 4]);
    assert_eq!(app.job(ids[2], "recorder").await["attempts"], 2);
    assert_eq!(app.job(ids[3], "recorder").await["attempts"], 1);
    app.stop().await;
}

async fn a_dead_job_in_a_chain_lets_the_rest_of_its_key_run(backend: Backend) {
    let recorder = Recorder::chained(vec![1], true);
    let app = manual_app(&backend, recorder.clone(), |s| s).await;
    let ids = [
        post_issue(&app, 8, 0).await,
        post_issue(&app, 8, 1).await,
        post_issue(&app, 8, 2).await,
    ];
    let worker = app.manual_worker();
    assert_eq!(worker.run_once().await.unwrap(), 3);
    assert_eq!(recorder.seen_of(8), [0, 1]);
    assert_eq!(store_status(&app.store, ids[1]).await, "dead");
    assert_eq!(store_status(&app.store, ids[2]).await, "pending");
    assert_eq!(
        worker.run_once().await.unwrap(),
        1,
        "dead does not hold the key"
    );
    assert_eq!(recorder.seen_of(8), [0, 1, 2]);
    assert_eq!(store_status(&app.store, ids[2]).await, "done");
    app.stop().await;
}

async fn a_chain_whose_worker_died_runs_again_in_order(backend: Backend) {
    let recorder = Recorder::chained(vec![], false);
    let app = manual_app(&backend, recorder.clone(), |s| s).await;
    let mut ids = Vec::new();
    for seq in 0..4 {
        ids.push(post_issue(&app, 3, seq).await);
    }
    // A worker that "died" holding the key's whole backlog: its lease has already run out.
    let now = now_ms();
    let chains = Chains {
        handlers: Arc::from(["recorder"]),
        max: 16,
    };
    let stale = app
        .store
        .claim_jobs("dead-worker", 10, now - 1, now, &chains)
        .await
        .unwrap();
    assert_eq!(stale.len(), 1, "one chain");
    let chain_events: Vec<i64> = stale[0].iter().map(|j| j.event_id).collect();
    assert_eq!(chain_events, ids, "in delivery order");
    for &id in &ids {
        assert_eq!(store_status(&app.store, id).await, "processing");
    }
    let worker = app.manual_worker();
    assert_eq!(
        worker.run_once().await.unwrap(),
        4,
        "claimed again, all of it"
    );
    assert_eq!(recorder.seen_of(3), [0, 1, 2, 3]);
    let late: Vec<JobFinish> = stale[0]
        .iter()
        .map(|j| JobFinish {
            job_id: j.job_id,
            event_id: j.event_id,
            lease_owner: "dead-worker".into(),
            attempt: j.attempt,
            outcome: JobOutcome::Done {
                effects: Vec::new(),
            },
        })
        .collect();
    assert_eq!(
        app.store.finish_jobs(late).await.unwrap(),
        [false; 4],
        "the dead worker's results are not recorded"
    );
    for &id in &ids {
        assert_eq!(store_status(&app.store, id).await, "done");
        assert_eq!(app.job(id, "recorder").await["attempts"], 2);
    }
    app.stop().await;
}

/// SQLite hands jobs to the attached worker's free slots as its commits make them due; a job
/// that became due while no slot was free is handed over when the worker asks (at its start,
/// after a replay, at each poll), with the slot that asked. The worker never takes its slots
/// for a claim of its own: one in flight while a commit made jobs due left them to the next
/// poll (10 minutes in `jobs_run_as_soon_as_they_can_without_waiting_for_a_poll`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_hands_a_job_due_while_no_slot_was_free_to_the_worker_that_asks() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let recorder = Recorder::new(vec![], false);
    let app = manual_app(&Backend::Sqlite, recorder, |s| s).await;
    let idle = Arc::new(AtomicUsize::new(0));
    let mut handed = app
        .store
        .attach_worker(
            "asking-worker",
            Duration::from_secs(60),
            Arc::clone(&idle),
            Chains::default(),
        )
        .await
        .unwrap()
        .expect("SQLite hands jobs over");
    let id = post_issue(&app, 7, 0).await;
    app.store.offer_jobs().await.unwrap();
    // The writer takes operations in order: once a claim sent after the request is answered,
    // the request has been through a transaction.
    let now = now_ms();
    let barrier = app
        .store
        .claim_jobs("barrier", 0, now, now, &Chains::default())
        .await
        .unwrap();
    assert!(barrier.is_empty());
    assert_eq!(
        store_status(&app.store, id).await,
        "pending",
        "no free slot, nothing claimed"
    );
    idle.store(1, Ordering::SeqCst);
    app.store.offer_jobs().await.unwrap();
    let chain = tokio::time::timeout(Duration::from_secs(10), handed.recv())
        .await
        .expect("handed over within 10 s")
        .expect("the channel is open");
    let events: Vec<i64> = chain.iter().map(|j| j.event_id).collect();
    assert_eq!(events, [id]);
    assert_eq!(idle.load(Ordering::SeqCst), 0, "the chain took the slot");
    assert_eq!(store_status(&app.store, id).await, "processing");
    app.store.detach_worker().await.unwrap();
    assert!(handed.try_recv().is_err(), "handed over once");
    app.stop().await;
}

/// A claim takes what is due when it runs, whatever clock it was asked with: the job's due
/// time is the inserting transaction's clock, and an offer made in the millisecond before
/// that transaction (the writer's, on SQLite) once left it to the next poll.
async fn a_claim_takes_what_is_due_when_it_runs_whatever_clock_it_was_asked_with(backend: Backend) {
    let recorder = Recorder::new(vec![], false);
    let app = manual_app(&backend, recorder, |s| s).await;
    let id = post_issue(&app, 8, 0).await;
    let a_minute_ago = now_ms() - 60_000;
    let claimed = app
        .store
        .claim_jobs(
            "slow-clock",
            10,
            a_minute_ago + 30_000,
            a_minute_ago,
            &Chains::default(),
        )
        .await
        .unwrap();
    let events: Vec<i64> = claimed.iter().flatten().map(|j| j.event_id).collect();
    assert_eq!(events, [id]);
    assert_eq!(store_status(&app.store, id).await, "processing");
    // Its lease runs 30 s from the claim, not from the request's clock: another claim made
    // now does not take it again.
    let again = app
        .store
        .claim_jobs("other", 10, now_ms() + 30_000, now_ms(), &Chains::default())
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    app.stop().await;
}

/// SQLite evaluates each partial index's condition on every row a statement writes; with an
/// `IN` list of three values that cost a temporary B-tree per index and statement (three per
/// job inserted, six per job updated). Since migration 0013 the unfinished-job indexes name the
/// two finished statuses, which SQLite compares directly, and the claim still finds the heads
/// through their index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_job_writes_build_no_temporary_b_trees_and_claims_read_the_heads_index() {
    let db = TestDb::create(&Backend::Sqlite).await;
    let store = hookdock::store::Store::connect(&db.url, Default::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    for statement in [
        "INSERT INTO jobs (event_id, handler, ordering_key, status, attempts, run_at, \
         created_at, updated_at, blocked) VALUES (1, 'h', 'k', 'pending', 0, 0, 0, 0, 0)",
        "UPDATE jobs SET status = 'done', updated_at = 1 WHERE id = 1",
        "UPDATE jobs SET blocked = 0 WHERE id = 1",
    ] {
        // EXPLAIN's rows: addr, opcode, …
        let opcodes = text_column(&pool, &format!("EXPLAIN {statement}"), 1).await;
        assert!(
            opcodes.iter().any(|op| op == "IdxInsert"),
            "{statement}: {opcodes:?}"
        );
        assert!(
            !opcodes.iter().any(|op| op == "OpenEphemeral"),
            "{statement} builds a temporary B-tree: {opcodes:?}"
        );
    }
    // EXPLAIN QUERY PLAN's rows: id, parent, notused, detail.
    let plan = text_column(
        &pool,
        "EXPLAIN QUERY PLAN SELECT j.id FROM jobs j WHERE j.blocked = 0 \
         AND j.status NOT IN ('done', 'dead') ORDER BY j.id LIMIT 8",
        3,
    )
    .await;
    assert_eq!(plan, ["SCAN j USING INDEX jobs_heads"]);
    pool.close().await;
    store.close().await;
}

/// Column `index` of every row `sql` returns, as text.
async fn text_column(pool: &sqlx::AnyPool, sql: &str, index: usize) -> Vec<String> {
    use sqlx::Row;
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>(index))
        .collect()
}

crate::backend_tests!(
    a_claim_takes_what_is_due_when_it_runs_whatever_clock_it_was_asked_with,
    a_chain_takes_a_keys_backlog_in_one_claim_and_runs_it_in_order,
    a_failure_stops_its_chain_and_the_rest_waits_without_losing_an_attempt,
    a_dead_job_in_a_chain_lets_the_rest_of_its_key_run,
    a_chain_whose_worker_died_runs_again_in_order,
    jobs_run_as_soon_as_they_can_without_waiting_for_a_poll,
    jobs_queued_before_the_head_flag_keep_their_order,
    a_replayed_dead_job_waits_for_its_keys_head_then_runs_in_delivery_order,
    a_long_backlog_behind_one_key_is_claimed_one_job_at_a_time,
    jobs_of_one_key_run_in_delivery_order_one_at_a_time,
    failing_job_retries_then_dies_and_holds_back_only_its_key_while_retrying,
    permanent_errors_go_straight_to_dead_and_replay_dead_requeues_all,
    expired_lease_is_claimed_again_and_the_late_result_is_discarded,
    released_jobs_run_again_without_counting_the_attempt,
    replay_of_a_done_event_runs_its_handlers_again,
    retention_purges_only_old_finished_events,
    retention_purge_holds_with_clocks_that_jumped,
    metrics_show_the_queue_by_status,
    a_result_that_cannot_be_written_at_once_is_written_when_it_can,
);
