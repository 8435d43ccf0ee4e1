//! The JSON API: authentication, listing with filters and cursors, details, health, metrics.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::*;

async fn api_requires_the_admin_token_but_health_does_not(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let get = |path: &str, token: Option<&str>| {
        let mut request = app.client.get(format!("{}{path}", app.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(get("/api/v1/events", None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get("/api/v1/events", Some("wrong-token-wrong-token")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(get("/api/v1/events", Some(TOKEN)).await, StatusCode::OK);
    assert_eq!(
        get("/api/v1/events/1/payload", None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(get("/healthz", None).await, StatusCode::OK);
    assert_eq!(get("/readyz", None).await, StatusCode::OK);
    app.stop().await;

    // Without a configured token the API is closed entirely.
    let closed = TestApp::spawn_with(
        &backend,
        |s| s.set("admin_token", serde_json::Value::Null),
        vec![],
    )
    .await;
    let response = closed
        .client
        .get(format!("{}/api/v1/events", closed.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let (status, body) = json_answer(response).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("HOOKDOCK_ADMIN_TOKEN"),
        "{body}"
    );
    closed.stop().await;
}

async fn events_are_listed_newest_first_with_filters_and_cursor_pages(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let mut ids = Vec::new();
    for seq in 0..7u64 {
        let (event, fixture_name) = if seq % 2 == 0 {
            ("push", "push.none.0")
        } else {
            ("issues", "issues.opened.0")
        };
        let (_, answer) = app
            .post(
                event,
                &unique_body(fixture_name, seq),
                &format!("delivery-{seq}"),
            )
            .await;
        ids.push(answer["event_id"].as_i64().unwrap());
    }
    app.wait_until_idle().await;
    let mut pages = Vec::new();
    let mut cursor = String::new();
    for _ in 0..5 {
        let (status, page) = app
            .api_get(&format!("/api/v1/events?limit=3&cursor={cursor}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let page_ids: Vec<i64> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_i64().unwrap())
            .collect();
        pages.push(page_ids);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    let listed: Vec<i64> = pages.concat();
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(listed, expected, "newest first, no gaps or repeats");

    let count = |q: &'static str| {
        let app = &app;
        async move {
            let (status, page) = app.api_get(&format!("/api/v1/events?{q}")).await;
            assert_eq!(status, StatusCode::OK, "{q}: {page}");
            page["events"].as_array().unwrap().len()
        }
    };
    assert_eq!(count("event=push").await, 4);
    assert_eq!(count("event=issues.opened").await, 3);
    assert_eq!(count("event=issues.closed").await, 0);
    assert_eq!(count("status=done").await, 7);
    assert_eq!(count("status=dead").await, 0);
    assert_eq!(count("delivery_id=delivery-3").await, 1);
    assert_eq!(count("repo=Codertocat/Hello-World").await, 7);
    assert_eq!(count("repo=other/repo").await, 0);

    for (query, names) in [
        ("status=bogus", "status"),
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("cursor=zzz", "cursor"),
        ("stauts=done", "stauts"),
    ] {
        let (status, body) = app.api_get(&format!("/api/v1/events?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert!(
            body["message"].as_str().unwrap().contains(names),
            "{query}: {body}"
        );
    }
    app.stop().await;
}

async fn event_detail_shows_headers_jobs_and_history(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let (_, answer) = app
        .post(
            "pull_request",
            &fixture("pull_request.opened.0"),
            "detail-1",
        )
        .await;
    let id = answer["event_id"].as_i64().unwrap();
    app.wait_until_idle().await;
    let (status, detail) = app.api_get(&format!("/api/v1/events/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["delivery_id"], "detail-1");
    assert_eq!(detail["event"], "pull_request");
    assert_eq!(detail["action"], "opened");
    assert_eq!(detail["repository"], "Codertocat/Hello-World");
    assert_eq!(detail["ordering_key"], "Codertocat/Hello-World#2");
    assert_eq!(detail["status"], "done");
    assert_eq!(detail["headers"]["X-GitHub-Delivery"], "detail-1");
    assert_eq!(detail["jobs"][0]["handler"], "activity");
    assert_eq!(detail["jobs"][0]["status"], "done");
    let history: HashSet<&str> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(history, HashSet::from(["processing", "done"]));
    assert!(detail["received_at"].as_str().unwrap().ends_with('Z'));
    let (status, missing) = app.api_get("/api/v1/events/424242").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    // A malformed id gets the API's JSON error, not the router's plain text.
    for (path, value) in [
        ("/api/v1/events/abc", "abc"),
        ("/api/v1/events/1x/payload", "1x"),
        ("/api/v1/repos/o/r/pulls/two/reviews", "two"),
    ] {
        let (status, body) = app.api_get(path).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::BAD_REQUEST,
                serde_json::json!({
                    "error": "invalid_parameter",
                    "message": format!("\"{value}\" in the path must be a whole number"),
                })
            ),
            "{path}"
        );
    }
    let (status, body) = app.api_post("/api/v1/events/abc/replay").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_parameter");
    let (_, activity) = app.api_get("/api/v1/activity").await;
    assert_eq!(
        activity["activity"][0]["repository"],
        "Codertocat/Hello-World"
    );
    assert_eq!(activity["activity"][0]["events_handled"], 1);
    app.stop().await;
}

async fn readiness_reports_database_and_metrics_are_prometheus_text(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    app.post("ping", &fixture("ping.none.0"), &new_delivery_id())
        .await;
    let (status, body) = app.probe("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["migrations"], "current");
    let response = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    assert!(
        text.contains("# TYPE hookdock_webhook_deliveries_total counter"),
        "{text}"
    );
    let response = app
        .client
        .get(format!("{}/nope", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    // A known path with the wrong method: 405, the methods it takes, and the JSON error.
    let response = app.client.get(app.webhook_url()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST");
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({
            "error": "method_not_allowed",
            "message": "GET is not allowed on /api/v1/webhooks/github; the Allow header lists what is",
        })
    );
    app.stop().await;
}

/// Once the store's writer no longer takes writes (closed here; a writer thread that died is
/// the same to a caller) every delivery would get 503, so the instance is not ready either,
/// while it is still alive.
async fn readiness_fails_once_the_writer_takes_no_more_writes(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    assert_eq!(app.probe("/readyz").await.0, StatusCode::OK);
    app.store.close().await;
    let (status, answer) = app
        .post("push", &fixture("push.none.0"), &new_delivery_id())
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    let (status, ready) = app.probe("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["status"], "not_ready");
    assert_eq!(
        ready["database"],
        "writer stopped (shutting down, or failed: see the log): restart hookdock"
    );
    assert_eq!(app.probe("/healthz").await.0, StatusCode::OK);
    app.stop().await;
}

/// A body whose bytes no longer decode (a damaged disk, a row edited by hand) is a server
/// error that says which event, not "the database is unavailable": retrying cannot help. A
/// database that cannot be reached is that 503.
async fn an_unreadable_stored_body_is_a_500_naming_the_event(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let (status, answer) = app
        .post("push", &fixture("push.none.0"), &new_delivery_id())
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let id = answer["event_id"].as_i64().unwrap();
    let pool = app.raw_pool().await;
    let damaged = sqlx::query("UPDATE events SET body = $1 WHERE id = $2")
        .bind(vec![0u8, 1, 2, 3])
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(damaged.rows_affected(), 1);
    pool.close().await;
    let (status, error) = app.api_get(&format!("/api/v1/events/{id}/payload")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{error}");
    assert_eq!(error["error"], "stored_data_unreadable");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "stored body of event {id} cannot be read back: zstd"
        )),
        "{message}"
    );
    // The event's other fields still read.
    let (status, detail) = app.api_get(&format!("/api/v1/events/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["id"], id);
    // A database that cannot be reached is another matter: 503, to be retried.
    app.store.close().await;
    let (status, error) = app.api_get(&format!("/api/v1/events/{id}")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert_eq!(error["error"], "storage_unavailable");
    app.stop().await;
}

crate::backend_tests!(
    an_unreadable_stored_body_is_a_500_naming_the_event,
    readiness_fails_once_the_writer_takes_no_more_writes,
    api_requires_the_admin_token_but_health_does_not,
    events_are_listed_newest_first_with_filters_and_cursor_pages,
    event_detail_shows_headers_jobs_and_history,
    readiness_reports_database_and_metrics_are_prometheus_text,
    readiness_fails_when_the_schema_version_cannot_be_read,
);

/// A migrations table the database answers for with an error (here a column renamed under
/// hookdock) makes the instance not ready, "unreadable", rather than ready or waiting for
/// `hookdock migrate`; once it can be read again, the instance is ready again.
async fn readiness_fails_when_the_schema_version_cannot_be_read(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    assert_eq!(app.probe("/readyz").await.0, StatusCode::OK);
    let admin = crate::ingest::sqlx_pool(&app).await;
    sqlx::query("ALTER TABLE _sqlx_migrations RENAME COLUMN success TO succeeded")
        .execute(&admin)
        .await
        .unwrap();
    let (status, ready) = app.probe("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(
        ready,
        serde_json::json!({
            "status": "not_ready",
            "database": "unreadable: see the log",
            "migrations": "unknown",
        })
    );
    sqlx::query("ALTER TABLE _sqlx_migrations RENAME COLUMN succeeded TO success")
        .execute(&admin)
        .await
        .unwrap();
    let (status, ready) = app.probe("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    admin.close().await;
    app.stop().await;
}

/// The API lists the one event stored: it answers again once the network is back.
async fn lists_the_one_event(app: &TestApp) {
    let (status, body) = app.api_get("/api/v1/events").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events"].as_array().map(Vec::len), Some(1), "{body}");
}

/// API requests whose PostgreSQL connections a network partition silences mid-query: each is
/// answered once `database_timeout_secs` has passed (503) rather than never, and every
/// connection the partition silenced is closed rather than kept for good (a pool slot each);
/// once the network is back, the API answers again with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_cut_off_by_a_partition_are_answered_503_and_free_their_connections() {
    let test = "api_requests_cut_off_by_a_partition_are_answered_503_and_free_their_connections";
    let configure = |s: hookdock::config::Sources| {
        s.set("database_timeout_secs", 2)
            .set("handlers.activity.enabled", false)
    };
    let Some((app, direct, proxy)) = app_behind_a_proxy(test, configure, Vec::new()).await else {
        return;
    };
    store_push(&app, 0).await;

    let lock = lock_events(&direct).await;
    let listed = || async {
        tokio::time::timeout(Duration::from_secs(40), app.api_get("/api/v1/events")).await
    };
    let (answers, _) = tokio::join!(
        futures_util::future::join_all((0..4).map(|_| listed())),
        cut_off_reads_waiting_on(lock, &direct, &proxy, 4)
    );
    for answer in answers {
        let (status, body) = answer.expect("an API request unanswered 40 s into a partition");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"], "storage_unavailable", "{body}");
    }
    poll_until(
        "every connection the partition silenced closed",
        Duration::from_secs(30),
        || async { proxy.silenced() == 0 },
    )
    .await;
    lists_the_one_event(&app).await;
    direct.close().await;
    app.stop().await;
}

/// An API request whose client goes away while its query is cut off by a network partition:
/// the PostgreSQL connection it hands back mid-query is closed once it fails a ping that waits
/// at most 5 s, rather than kept in the pool or held until `database_timeout_secs` (20 here);
/// once the network is back, the API answers again with no restart, and the shutdown waits on
/// the idle connections the partition still silences no longer than such a ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_handed_back_by_a_request_whose_client_went_away_is_closed_if_silent() {
    let test = "a_connection_handed_back_by_a_request_whose_client_went_away_is_closed_if_silent";
    // No workers: nothing else takes a connection the partition silenced.
    let configure = |s: hookdock::config::Sources| {
        s.set("database_timeout_secs", 20)
            .set("queue.workers", 0)
            .set("handlers.activity.enabled", false)
    };
    let Some((app, direct, proxy)) = app_behind_a_proxy(test, configure, Vec::new()).await else {
        return;
    };
    store_push(&app, 0).await;
    // Connections idle in the pool when the partition starts.
    let listed = futures_util::future::join_all((0..4).map(|_| app.api_get("/api/v1/events")));
    for (status, body) in listed.await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let lock = lock_events(&direct).await;
    let request = app.api_get("/api/v1/events");
    let silenced = tokio::select! {
        answer = request => panic!("answered before the partition: {answer:?}"),
        silenced = cut_off_reads_waiting_on(lock, &direct, &proxy, 1) => silenced,
    };
    // The request is dropped: its client went away. The ping gives up 5 s later.
    poll_until(
        "the connection the request handed back closed",
        Duration::from_secs(8),
        || async { proxy.silenced() < silenced },
    )
    .await;
    assert_eq!(
        proxy.silenced(),
        silenced - 1,
        "only that connection was used"
    );
    lists_the_one_event(&app).await;
    direct.close().await;
    let stopping = std::time::Instant::now();
    app.stop().await;
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");
}
