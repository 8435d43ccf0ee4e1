//! The webhook endpoint over real HTTP: what is accepted, stored and served back, and what is
//! refused without storing anything.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::helpers::*;

async fn every_fixture_is_received_stored_served_back_and_deduplicated(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let fixtures = fixtures();
    assert!(
        fixtures.len() >= 250,
        "expected the shared fixtures, found {}",
        fixtures.len()
    );
    let mut seen_bodies = HashSet::new();
    let mut sent = Vec::new();
    for (name, event, bytes) in &fixtures {
        let delivery = new_delivery_id();
        let (status, answer) = app.post(event, bytes, &delivery).await;
        assert_eq!(status, StatusCode::OK, "{name}: {answer}");
        assert_eq!(answer["status"], "received", "{name}: {answer}");
        assert_eq!(answer["delivery_id"], delivery.as_str());
        let label = answer["event"].as_str().unwrap_or_default().to_owned();
        assert!(
            label == *event || label.starts_with(&format!("{event}.")),
            "{name}: {label}"
        );
        let identical_to_earlier = !seen_bodies.insert(Sha256::digest(bytes).to_vec());
        let expected_hold = if identical_to_earlier {
            Value::from("replay_suspected")
        } else {
            Value::Null
        };
        assert_eq!(answer["held"], expected_hold, "{name}: {answer}");
        let id = answer["event_id"].as_i64().expect("event id");
        sent.push((name, event, bytes, delivery, id, identical_to_earlier));
    }
    for (name, _, bytes, _, id, _) in &sent {
        let response = app
            .client
            .get(format!("{}/api/v1/events/{id}/payload", app.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{name}"
        );
        assert_eq!(
            response.bytes().await.unwrap().as_ref(),
            bytes.as_slice(),
            "{name}: payload differs"
        );
    }
    // The same deliveries again: all skipped, nothing new stored.
    let before = app.count_events().await;
    assert_eq!(before, sent.len() as i64);
    for (name, event, bytes, delivery, id, _) in &sent {
        let (status, answer) = app.post(event, bytes, delivery).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(answer["status"], "duplicate_skipped", "{name}: {answer}");
        assert_eq!(answer["event_id"].as_i64(), Some(*id), "{name}");
    }
    assert_eq!(app.count_events().await, before);
    app.wait_until_idle().await;
    let counts = app.store.count_events_by_status().await.unwrap();
    let held = sent.iter().filter(|s| s.5).count() as i64;
    assert_eq!(counts.get("replay_suspected").copied().unwrap_or(0), held);
    assert_eq!(
        counts.get("done").copied().unwrap_or(0),
        sent.len() as i64 - held
    );
    app.stop().await;
}

async fn signature_is_checked_before_parsing(backend: Backend) {
    // GitHub's documented vector: it verifies, so the refusal is about the JSON, not the signature.
    let app = TestApp::spawn_with(
        &backend,
        |s| s.set("webhook_secret", "It's a Secret to Everybody"),
        vec![],
    )
    .await;
    let body = b"Hello, World!";
    let response = app
        .client
        .post(app.webhook_url())
        .header("Content-Type", "application/json")
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", new_delivery_id())
        .header(
            "X-Hub-Signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let (status, answer) = json_answer(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"], "invalid_json");
    assert_eq!(app.count_events().await, 0);
    app.stop().await;
}

async fn bad_input_is_refused_with_the_right_status_and_nothing_is_stored(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let body = fixture("pull_request.opened.0");
    let signature = hookdock::ingest::sign(SECRET.as_bytes(), &body);
    let before = app.metrics_text().await;

    struct Case {
        name: &'static str,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
        status: StatusCode,
        code: &'static str,
    }
    let base = |sig: &str| {
        vec![
            ("Content-Type", "application/json".to_owned()),
            ("X-GitHub-Event", "pull_request".to_owned()),
            ("X-GitHub-Delivery", new_delivery_id()),
            ("X-Hub-Signature-256", sig.to_owned()),
        ]
    };
    let without = |name: &str| {
        base(&signature)
            .into_iter()
            .filter(|(k, _)| *k != name)
            .collect::<Vec<_>>()
    };
    let with = |name: &'static str, value: &str| {
        let mut h = without(name);
        h.push((name, value.to_owned()));
        h
    };
    let mut truncated = body.clone();
    truncated.truncate(body.len() / 2);
    let invalid_json = b"{\"action\": \"opened\",".to_vec();
    let cases = vec![
        Case {
            name: "missing signature",
            headers: without("X-Hub-Signature-256"),
            body: body.clone(),
            status: StatusCode::UNAUTHORIZED,
            code: "missing_signature",
        },
        Case {
            name: "wrong signature",
            headers: base(&format!("sha256={}", "0".repeat(64))),
            body: body.clone(),
            status: StatusCode::FORBIDDEN,
            code: "invalid_signature",
        },
        Case {
            name: "malformed signature",
            headers: base("sha1=abc"),
            body: body.clone(),
            status: StatusCode::FORBIDDEN,
            code: "invalid_signature",
        },
        Case {
            name: "wrong secret",
            headers: base(&hookdock::ingest::sign(b"not-the-secret", &body)),
            body: body.clone(),
            status: StatusCode::FORBIDDEN,
            code: "invalid_signature",
        },
        Case {
            name: "truncated body",
            headers: base(&signature),
            body: truncated,
            status: StatusCode::FORBIDDEN,
            code: "invalid_signature",
        },
        Case {
            name: "missing event header",
            headers: without("X-GitHub-Event"),
            body: body.clone(),
            status: StatusCode::BAD_REQUEST,
            code: "missing_header",
        },
        Case {
            name: "missing delivery header",
            headers: without("X-GitHub-Delivery"),
            body: body.clone(),
            status: StatusCode::BAD_REQUEST,
            code: "missing_header",
        },
        Case {
            name: "invalid delivery id",
            headers: with("X-GitHub-Delivery", "has spaces"),
            body: body.clone(),
            status: StatusCode::BAD_REQUEST,
            code: "invalid_header",
        },
        Case {
            name: "unsupported content type",
            headers: with("Content-Type", "text/plain"),
            body: body.clone(),
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_content_type",
        },
        Case {
            name: "signed invalid JSON",
            headers: base(&hookdock::ingest::sign(SECRET.as_bytes(), &invalid_json)),
            body: invalid_json.clone(),
            status: StatusCode::BAD_REQUEST,
            code: "invalid_json",
        },
        Case {
            name: "form without payload field",
            headers: {
                let mut h = with("Content-Type", "application/x-www-form-urlencoded");
                h.retain(|(k, _)| *k != "X-Hub-Signature-256");
                h.push((
                    "X-Hub-Signature-256",
                    hookdock::ingest::sign(SECRET.as_bytes(), b"other=1"),
                ));
                h
            },
            body: b"other=1".to_vec(),
            status: StatusCode::BAD_REQUEST,
            code: "invalid_form",
        },
        Case {
            name: "business target",
            headers: {
                let mut h = base(&signature);
                h.push(("X-GitHub-Hook-Installation-Target-Type", "business".into()));
                h
            },
            body: body.clone(),
            status: StatusCode::BAD_REQUEST,
            code: "unsupported_target",
        },
    ];
    // Over GitHub's 25 MB cap: refused from the declared length, before the body is read. Sent
    // raw so that the client does not race the early answer with its upload.
    let delivery = new_delivery_id();
    let oversized = hookdock::ingest::MAX_BODY_BYTES + 1;
    let raw = RawDelivery::head(&app.base, "pull_request", &delivery, &signature, oversized).await;
    let (status, answer) = raw.answer().await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"], "payload_too_large", "{answer}");
    for case in cases {
        let mut request = app.client.post(app.webhook_url());
        for (k, v) in &case.headers {
            request = request.header(*k, v);
        }
        let response = request.body(case.body).send().await.unwrap();
        let (status, answer) = json_answer(response).await;
        assert_eq!(status, case.status, "{}: {answer}", case.name);
        assert_eq!(answer["error"], case.code, "{}: {answer}", case.name);
        assert!(
            answer["message"].as_str().is_some_and(|m| m.len() > 10),
            "{}: {answer}",
            case.name
        );
    }
    let named = app.post("pull_request", &body, "").await;
    assert_eq!(named.0, StatusCode::BAD_REQUEST);
    assert!(
        named.1["message"]
            .as_str()
            .unwrap()
            .contains("X-GitHub-Delivery"),
        "{}",
        named.1
    );

    // Valid JSON, but which action is meant is unclear: refused, saying so.
    let twice = br#"{"action":"opened","action":"closed"}"#;
    let answer = app.post("pull_request", twice, &new_delivery_id()).await;
    assert_refused(
        &answer,
        400,
        "invalid_json",
        &["names a field twice", "`action`"],
    );

    // An event GitHub does not send: answered, not stored.
    let (status, answer) = app
        .post("not_a_github_event", &body, &new_delivery_id())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["status"], "ignored");
    assert_eq!(answer["event_id"], Value::Null);

    assert_eq!(
        app.count_events().await,
        0,
        "nothing may be stored for refused deliveries"
    );
    let after = app.metrics_text().await;
    for (series, at_least) in [
        (
            "hookdock_webhook_rejected_total{reason=\"missing_signature\"}",
            1.0,
        ),
        (
            "hookdock_webhook_rejected_total{reason=\"invalid_signature\"}",
            4.0,
        ),
        (
            "hookdock_webhook_rejected_total{reason=\"invalid_json\"}",
            1.0,
        ),
        (
            "hookdock_webhook_deliveries_total{outcome=\"unknown_event\"}",
            1.0,
        ),
    ] {
        let grew = metric(&after, series) - metric(&before, series);
        assert!(
            grew >= at_least,
            "{series} grew by {grew}, expected at least {at_least}"
        );
    }
    app.stop().await;
}

async fn form_encoded_delivery_is_verified_on_the_form_body_and_kept_verbatim(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let json = fixture("issues.opened.0");
    let form = format!(
        "payload={}",
        form_urlencoded::byte_serialize(&json).collect::<String>()
    )
    .into_bytes();
    let delivery = new_delivery_id();
    let (status, answer) = app
        .post_with(
            "issues",
            &form,
            &delivery,
            "application/x-www-form-urlencoded",
            Some(SECRET),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["event"], "issues.opened");
    let id = answer["event_id"].as_i64().unwrap();
    let response = app
        .client
        .get(format!("{}/api/v1/events/{id}/payload", app.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), form.as_slice());
    let (_, detail) = app.api_get(&format!("/api/v1/events/{id}")).await;
    assert_eq!(detail["repository"], "Codertocat/Hello-World");
    assert_eq!(detail["action"], "opened");
    app.stop().await;
}

async fn same_delivery_posted_50_times_at_once_is_stored_once(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let body = fixture("pull_request.opened.0");
    let delivery = new_delivery_id();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (client, url, body, delivery) = (
            app.client.clone(),
            app.webhook_url(),
            body.clone(),
            delivery.clone(),
        );
        tasks.spawn(async move {
            let response = client
                .post(url)
                .header("Content-Type", "application/json")
                .header("X-GitHub-Event", "pull_request")
                .header("X-GitHub-Delivery", delivery)
                .header(
                    "X-Hub-Signature-256",
                    hookdock::ingest::sign(SECRET.as_bytes(), &body),
                )
                .body(body)
                .send()
                .await
                .unwrap();
            json_answer(response).await
        });
    }
    let mut statuses = Vec::new();
    let mut ids = HashSet::new();
    while let Some(result) = tasks.join_next().await {
        let (status, answer) = result.unwrap();
        assert_eq!(status, StatusCode::OK, "{answer}");
        statuses.push(answer["status"].as_str().unwrap().to_owned());
        ids.insert(answer["event_id"].as_i64().unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| *s == "received").count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| *s == "duplicate_skipped")
            .count(),
        49
    );
    assert_eq!(ids.len(), 1, "every answer names the one stored event");
    assert_eq!(app.count_events().await, 1);
    app.wait_until_idle().await;
    let activity = app.store.activity().await.unwrap();
    assert_eq!(
        activity.iter().map(|a| a.events_handled).sum::<i64>(),
        1,
        "handled once"
    );
    app.stop().await;
}

async fn replayed_body_with_new_delivery_id_is_held_until_released(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let body = fixture("push.none.0");
    let (_, first) = app.post("push", &body, &new_delivery_id()).await;
    assert_eq!(first["status"], "received");
    assert!(first.get("held").is_none(), "{first}");
    let (status, second) = app.post("push", &body, &new_delivery_id()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(second["status"], "received");
    assert_eq!(second["held"], "replay_suspected");
    let id = second["event_id"].as_i64().unwrap();
    app.wait_until_idle().await;
    let (_, detail) = app.api_get(&format!("/api/v1/events/{id}")).await;
    assert_eq!(detail["status"], "replay_suspected");
    assert_eq!(
        detail["jobs"].as_array().map(Vec::len),
        Some(0),
        "held events get no jobs"
    );
    let (_, list) = app.api_get("/api/v1/events?status=replay_suspected").await;
    assert_eq!(list["events"].as_array().map(Vec::len), Some(1));

    // Releasing a normal event is refused; releasing the held one runs its handlers.
    let first_id = first["event_id"].as_i64().unwrap();
    let (status, refused) = app
        .api_post(&format!("/api/v1/events/{first_id}/release"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let (status, released) = app.api_post(&format!("/api/v1/events/{id}/release")).await;
    assert_eq!(status, StatusCode::OK, "{released}");
    assert_eq!(
        released["queued"],
        serde_json::json!(["activity", "records"])
    );
    app.wait_until_idle().await;
    let (_, detail) = app.api_get(&format!("/api/v1/events/{id}")).await;
    assert_eq!(detail["status"], "done", "{detail}");
    let handled: i64 = app
        .store
        .activity()
        .await
        .unwrap()
        .iter()
        .map(|a| a.events_handled)
        .sum();
    assert_eq!(handled, 2);
    app.stop().await;
}

async fn scoped_secrets_take_precedence_and_rotate(backend: Backend) {
    // pull_request.opened.0 is about repository id 186853002.
    let repo_id = 186853002u64;
    let app = TestApp::spawn_with(
        &backend,
        |s| {
            s.set(
                "webhook_secrets",
                serde_json::json!([
                    { "repository_id": repo_id, "secret": "repo-old" },
                    { "repository_id": repo_id, "secret": "repo-new" },
                    { "hook_id": 77, "secret": "hook-secret" }
                ]),
            )
        },
        vec![],
    )
    .await;
    let body = fixture("pull_request.opened.0");
    let post = |secret: &'static str, hook: Option<&'static str>, target: bool| {
        let mut request = app
            .client
            .post(app.webhook_url())
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", "pull_request")
            .header("X-GitHub-Delivery", new_delivery_id())
            .header(
                "X-Hub-Signature-256",
                hookdock::ingest::sign(secret.as_bytes(), &body),
            );
        if let Some(hook) = hook {
            request = request.header("X-GitHub-Hook-ID", hook);
        }
        if target {
            request = request
                .header("X-GitHub-Hook-Installation-Target-Type", "repository")
                .header("X-GitHub-Hook-Installation-Target-ID", repo_id.to_string());
        }
        let request = request.body(body.clone());
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(
        post("repo-old", None, true).await,
        StatusCode::OK,
        "old secret still valid"
    );
    assert_eq!(
        post("repo-new", None, true).await,
        StatusCode::OK,
        "new secret valid"
    );
    assert_eq!(
        post(SECRET, None, true).await,
        StatusCode::FORBIDDEN,
        "global secret is not the repo's"
    );
    assert_eq!(
        post(SECRET, None, false).await,
        StatusCode::OK,
        "no target: global secret"
    );
    assert_eq!(
        post("hook-secret", Some("77"), true).await,
        StatusCode::OK,
        "hook secret wins"
    );
    assert_eq!(
        post("repo-new", Some("77"), true).await,
        StatusCode::FORBIDDEN
    );
    app.stop().await;
}

/// A sender that stops part-way through the body is answered 408 once
/// `read_timeout_secs` has passed, not held open; nothing of it is stored, and the same
/// delivery sent whole afterwards is received.
async fn a_body_that_stops_arriving_is_answered_408_and_nothing_is_stored(backend: Backend) {
    let app = TestApp::spawn_with(&backend, |s| s.set("read_timeout_secs", 1), vec![]).await;
    let body = fixture("pull_request.opened.0");
    let signature = hookdock::ingest::sign(SECRET.as_bytes(), &body);
    let delivery = new_delivery_id();
    let before = app.metrics_text().await;

    // Before the server can start its clock.
    let asked = std::time::Instant::now();
    let mut raw =
        RawDelivery::head(&app.base, "pull_request", &delivery, &signature, body.len()).await;
    raw.continued().await;
    raw.send(&body[..body.len() / 2]).await;
    let answer = raw.answer().await;
    assert_refused(
        &answer,
        408,
        "body_timeout",
        &["within 1 s", "read_timeout_secs"],
    );
    assert!(
        asked.elapsed() >= std::time::Duration::from_secs(1),
        "answered only once the timeout had passed"
    );
    assert_eq!(app.count_events().await, 0, "nothing stored");
    let grew = metric(
        &app.metrics_text().await,
        "hookdock_webhook_rejected_total{reason=\"body_timeout\"}",
    ) - metric(
        &before,
        "hookdock_webhook_rejected_total{reason=\"body_timeout\"}",
    );
    assert!(grew >= 1.0, "the refusal is counted (grew by {grew})");

    let (status, answer) = app.post("pull_request", &body, &delivery).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "received", "{answer}");
    assert_eq!(app.count_events().await, 1);
    app.stop().await;
}

/// A sender that stops part-way through its headers is disconnected once `idle_timeout_secs`
/// has passed instead of holding its connection (and a task) for good, others being served
/// meanwhile; so is a keep-alive connection left idle.
async fn a_sender_that_stops_in_its_headers_is_disconnected(backend: Backend) {
    let app = TestApp::spawn_with(&backend, |s| s.set("idle_timeout_secs", 1), vec![]).await;
    // Before the server can start its clock.
    let started = std::time::Instant::now();
    let stalled = RawDelivery::connect(
        &app.base,
        b"POST /api/v1/webhooks/github HTTP/1.1\r\nHost: hookdock\r\nX-GitHub-Ev",
    )
    .await;
    let (status, answer) = app.probe("/healthz").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    stalled.closed_unanswered().await;
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "disconnected only once the timeout had passed"
    );
    // A keep-alive connection is answered, then closed once idle that long (the answer is
    // read until the server closes).
    let idle = RawDelivery::connect(
        &app.base,
        b"GET /healthz HTTP/1.1\r\nHost: hookdock\r\n\r\n",
    )
    .await;
    let (status, answer) = idle.answer().await;
    assert_eq!(status, 200, "{answer}");
    app.stop().await;
}

async fn unsigned_deliveries_only_when_allowed(backend: Backend) {
    let app = TestApp::spawn_with(&backend, |s| s.set("allow_unsigned", true), vec![]).await;
    let body = fixture("ping.none.0");
    let (status, answer) = app
        .post_with("ping", &body, &new_delivery_id(), "application/json", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "received");
    // A signature that is present is still checked.
    let (status, _) = app
        .post_with(
            "ping",
            &body,
            &new_delivery_id(),
            "application/json",
            Some("wrong"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    app.stop().await;
}

async fn events_without_subscribers_are_stored_as_ignored(backend: Backend) {
    let app = TestApp::spawn_with(
        &backend,
        |s| s.set("handlers.activity.events", serde_json::json!(["push"])),
        vec![],
    )
    .await;
    let (status, answer) = app
        .post("issues", &fixture("issues.opened.0"), &new_delivery_id())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["status"], "ignored");
    let id = answer["event_id"]
        .as_i64()
        .expect("ignored events are stored");
    let (_, detail) = app.api_get(&format!("/api/v1/events/{id}")).await;
    assert_eq!(detail["status"], "ignored");
    let (_, replay) = app.api_post(&format!("/api/v1/events/{id}/replay")).await;
    assert_eq!(replay["status"], "ignored", "still no subscriber: {replay}");
    let (_, answer) = app
        .post("push", &fixture("push.none.0"), &new_delivery_id())
        .await;
    assert_eq!(answer["status"], "received");
    app.stop().await;
}

async fn storage_failure_answers_503_and_stores_nothing(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let body = fixture("push.none.0");
    // Make the write impossible: the database refuses every insert into events.
    let admin = sqlx_pool(&app).await;
    let (fail, heal): (&[&str], &[&str]) = match backend {
        Backend::Sqlite => (
            &[
                "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk full'); END",
            ],
            &["DROP TRIGGER refuse"],
        ),
        Backend::Postgres(_) => (
            &[
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse()",
            ],
            &["DROP TRIGGER refuse ON events", "DROP FUNCTION refuse()"],
        ),
    };
    for statement in fail {
        sqlx::query(sqlx::AssertSqlSafe(*statement))
            .execute(&admin)
            .await
            .unwrap();
    }
    let delivery = new_delivery_id();
    let (status, answer) = app.post("push", &body, &delivery).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["error"], "storage_unavailable");
    // The database's own words, once, as sqlx words a database error.
    let message = answer["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "the delivery could not be stored (database error: error returned from database: "
        ) && message.contains("disk full")
            && !message.contains("unexpected or invalid data"),
        "{answer}"
    );
    for statement in heal {
        sqlx::query(sqlx::AssertSqlSafe(*statement))
            .execute(&admin)
            .await
            .unwrap();
    }
    assert_eq!(app.count_events().await, 0);
    // GitHub's redelivery (same delivery id) then succeeds.
    let (status, answer) = app.post("push", &body, &delivery).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "received");
    admin.close().await;
    app.stop().await;
}

/// A network partition between hookdock and PostgreSQL in the middle of a write (the server's
/// answer never arrives, nor does a reset, as when a link drops packets or a failed-over host
/// vanishes): the delivery is answered 503 within GitHub's wait rather than never (the request
/// was acknowledged, so the operating system does not give the connection up), `/readyz` says
/// the database is unreachable, and once the network is back deliveries are stored again
/// without a restart. The delivery answered 503 is not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_from_postgres_mid_write_is_answered_503_and_heals_without_a_restart() {
    let test = "a_partition_from_postgres_mid_write_is_answered_503_and_heals_without_a_restart";
    let Some((app, direct, proxy)) = app_behind_a_proxy(test, |s| s, Vec::new()).await else {
        return;
    };
    store_push(&app, 0).await;

    // The next write takes two seconds on the server; the partition starts meanwhile.
    slow_trigger(&direct, "INSERT", "events").await;
    let lost = new_delivery_id();
    let body = unique_body("push.none.0", 1);
    let partition = cut_while_the_server_sleeps(&direct, &proxy);
    let answered = tokio::time::timeout(Duration::from_secs(40), async {
        tokio::join!(app.post("push", &body, &lost), partition).0
    })
    .await;
    let (status, answer) = answered.expect("no answer within 40 s of a partition");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["error"], "storage_unavailable", "{answer}");
    let ready = tokio::time::timeout(Duration::from_secs(20), app.probe("/readyz"))
        .await
        .expect("/readyz answers during the partition");
    assert_eq!(ready.0, StatusCode::SERVICE_UNAVAILABLE, "{}", ready.1);
    assert_eq!(ready.1["database"], "unreachable");

    heal_and_store_again(&app, &direct, &proxy, &[lost], 2).await;
    direct.close().await;
    app.stop().await;
}

/// Ends the partition of a test that stored one delivery, then cut `proxy` during a write
/// slowed by [`slow_trigger`] on `events`: heals it, drops the trigger, and checks that a
/// delivery (body `seq`) is stored again without a restart and that none of `lost`, answered
/// 503 during the partition, was stored.
async fn heal_and_store_again(
    app: &TestApp,
    direct: &sqlx::AnyPool,
    proxy: &hookdock_testkit::TcpProxy,
    lost: &[String],
    seq: u64,
) {
    // The server rolls the cut-off write back once the healed network closes its connection;
    // until then that write's locks keep the trigger from being dropped.
    proxy.heal();
    drop_slow_trigger(direct, "events").await;
    let back = new_delivery_id();
    let back_body = unique_body("push.none.0", seq);
    poll_until(
        "a delivery stored after the partition",
        Duration::from_secs(30),
        || async { app.post("push", &back_body, &back).await.0 == StatusCode::OK },
    )
    .await;
    let stored: Vec<String> = sqlx::query_scalar("SELECT delivery_id FROM events ORDER BY id")
        .fetch_all(direct)
        .await
        .unwrap();
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(
        stored.iter().all(|id| !lost.contains(id)),
        "a delivery answered 503 was stored: {stored:?}"
    );
    assert_eq!(stored[1], back);
}

/// Deliveries that reach hookdock while PostgreSQL cannot be reached (a partition silences the
/// connection in use, and new connections get no answer either) are each answered 503 within
/// GitHub's 10 s of their own sending: the one whose write the partition cut off, and those
/// queued behind that write, which are not tried again from the start (nor one by one) once
/// it fails. None is stored, and deliveries are stored again once the network is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_queued_during_a_partition_are_each_answered_503_within_githubs_wait() {
    let test = "deliveries_queued_during_a_partition_are_each_answered_503_within_githubs_wait";
    let Some((app, direct, proxy)) = ingest_app_behind_a_proxy(test).await else {
        return;
    };

    // A write under way on the server when the partition begins, then four deliveries queued
    // behind it.
    slow_trigger(&direct, "INSERT", "events").await;
    let timed_post = |i: u64| {
        let app = &app;
        async move {
            let id = new_delivery_id();
            let sent = std::time::Instant::now();
            let (status, answer) = app.post("push", &unique_body("push.none.0", i), &id).await;
            (id, status, answer, sent.elapsed())
        }
    };
    let (first, queued) = tokio::join!(timed_post(1), async {
        cut_while_the_server_sleeps(&direct, &proxy).await;
        futures_util::future::join_all((2..6).map(timed_post)).await
    });
    let mut lost = Vec::new();
    for (id, status, answer, took) in std::iter::once(first).chain(queued) {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
        assert_eq!(answer["error"], "storage_unavailable", "{answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("the database took no write within 8 s of the delivery's arrival"),
            "{answer}"
        );
        assert!(
            took < Duration::from_secs(10),
            "answered {took:?} after it was sent, when GitHub has stopped waiting: {answer}"
        );
        lost.push(id);
    }

    heal_and_store_again(&app, &direct, &proxy, &lost, 6).await;
    direct.close().await;
    app.stop().await;
}

/// A connection reset under a delivery's write (a restarted server, a failover) does not cost
/// the delivery a 503: the write is tried again on a new connection, within the delivery's
/// 8 s, and the delivery is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_under_a_write_is_tried_again_on_another() {
    let test = "a_connection_reset_under_a_write_is_tried_again_on_another";
    with_a_slowed_insert(test, async |app, direct, proxy| {
        store_through_a_reset(app, direct, proxy).await;
    })
    .await;
}

/// On an [`ingest_app_behind_a_proxy`] for `test`, with every insert into `events` taking two
/// seconds on the server ([`slow_trigger`]): runs `store`, then removes the trigger and stops
/// the app. Nothing without PostgreSQL.
async fn with_a_slowed_insert(
    test: &str,
    store: impl AsyncFnOnce(&TestApp, &sqlx::AnyPool, &hookdock_testkit::TcpProxy),
) {
    let Some((app, direct, proxy)) = ingest_app_behind_a_proxy(test).await else {
        return;
    };
    slow_trigger(&direct, "INSERT", "events").await;
    store(&app, &direct, &proxy).await;
    drop_slow_trigger(&direct, "events").await;
    direct.close().await;
    app.stop().await;
}

/// A restart or a failover may also reset a connection opened as it was under way: a write
/// whose try on a new connection after a reset is reset in turn is tried a third time, and the
/// delivery is stored once and answered `received`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_reset_again_on_its_new_connection_is_tried_a_third_time() {
    let test = "a_write_reset_again_on_its_new_connection_is_tried_a_third_time";
    with_a_slowed_insert(test, async |app, direct, proxy| {
        store_through_two_resets(app, direct, proxy).await;
    })
    .await;
}

/// A restart or a failover ends the server's connections one after another, so one left idle
/// may still answer a ping just before it goes: once a write's connection is closed under it,
/// the write is tried again on a connection opened for it, not on one of those idle since
/// before the break (they are closed unused), and the delivery is stored once. Here the server
/// closes only the write's connection, so an idle one would answer and take the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_write_is_not_tried_again_on_a_connection_idle_before_the_break() {
    let test = "a_broken_write_is_not_tried_again_on_a_connection_idle_before_the_break";
    with_a_slowed_insert(test, async |app, direct, proxy| {
        // Connections idle beside the one the write will take.
        open_connections_for_reads(app, direct, 2).await;
        let accepted = proxy.accepted();
        store_through_a_server_close(app, direct).await;
        assert!(
            proxy.accepted() > accepted,
            "no connection was opened for the write tried again: it went to one idle since \
             before the break\n{}",
            connection_log(app)
        );
    })
    .await;
}

/// Every connection hookdock holds closed by the server, as a restart or a failover of
/// PostgreSQL closes them (`pg_terminate_backend` sends each the notice a shutdown sends):
/// without a restart of hookdock, the next delivery is stored and answered `received` within
/// GitHub's 10 s wait, its job runs, the API lists it and `/readyz` is ready, all on new
/// connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_server_closed_are_replaced_without_a_restart() {
    let test = "connections_the_server_closed_are_replaced_without_a_restart";
    let Some(backend) = Backend::postgres(test) else {
        return;
    };
    let app = TestApp::spawn(&backend).await;
    // Connections in the pool: the writer's, the workers', the API's.
    for seq in 0..4 {
        store_push(&app, seq).await;
    }
    app.wait_until_idle().await;
    let (status, _) = app.api_get("/api/v1/events").await;
    assert_eq!(status, StatusCode::OK);

    // One connection, so that `pg_backend_pid()` is always the test's own.
    let direct = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&app.settings.database_url)
        .await
        .expect("a connection of the test's own");
    let hookdocks = || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        )
        .fetch_all(&direct)
        .await
        .expect("list hookdock's connections")
    };
    let held = hookdocks().await;
    assert!(
        !held.is_empty(),
        "hookdock holds no connection to its database"
    );
    let mut closed = 0;
    for pid in &held {
        // False only for a connection that ended by itself meanwhile.
        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&direct)
            .await
            .expect("close a connection of hookdock's");
        closed += usize::from(ended);
    }
    assert!(
        closed > 0,
        "none of hookdock's connections {held:?} was closed"
    );
    // Their server processes end at once; hookdock is not told until it uses them.
    poll_until(
        "the closed connections ended",
        Duration::from_secs(10),
        || async { !hookdocks().await.iter().any(|pid| held.contains(pid)) },
    )
    .await;

    let body = unique_body("push.none.0", 4);
    let delivery = new_delivery_id();
    let (status, answer) =
        tokio::time::timeout(Duration::from_secs(10), app.post("push", &body, &delivery))
            .await
            .expect("the delivery answered within GitHub's 10 s");
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "received", "{answer}");
    let event_id = answer["event_id"].as_i64().expect("event_id");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE delivery_id = $1")
        .bind(&delivery)
        .fetch_one(&direct)
        .await
        .expect("count the delivery");
    assert_eq!(stored, 1);
    app.wait_until_idle().await;
    assert_eq!(app.job(event_id, "activity").await["status"], "done");
    let (status, listed) = app
        .api_get(&format!("/api/v1/events?delivery_id={delivery}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["events"][0]["id"], event_id, "{listed}");
    let (status, ready) = app.probe("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{ready}");

    let now = hookdocks().await;
    assert!(
        !now.is_empty(),
        "hookdock holds no connection after its connections were closed"
    );
    assert!(
        !now.iter().any(|pid| held.contains(pid)),
        "a closed connection is still listed: {now:?} / {held:?}"
    );
    direct.close().await;
    app.stop().await;
}

/// A delivery's write under way when the server closes its connection (a restart or a
/// failover, which send each connection the notice `pg_terminate_backend` sends) is tried again
/// on another connection, as one reset under it is, and stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_connection_the_server_closed_is_tried_again_on_another() {
    let test = "a_write_whose_connection_the_server_closed_is_tried_again_on_another";
    with_a_slowed_insert(test, async |app, direct, _proxy| {
        store_through_a_server_close(app, direct).await;
    })
    .await;
}

/// A connection reset while the server commits a write (its commit goes through; the answer
/// is lost with the connection): the write tried again finds the delivery stored, by its own
/// first try, and answers it `received`, not `duplicate_skipped`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_commit_landed_before_a_reset_is_answered_received() {
    let test = "a_delivery_whose_commit_landed_before_a_reset_is_answered_received";
    let Some((app, direct, proxy)) = ingest_app_behind_a_proxy(test).await else {
        return;
    };

    // The commit takes two seconds on the server (a deferred trigger runs in it); the
    // connection is reset meanwhile, and the server completes the commit all the same.
    slow_commit(&direct, "INSERT", "events", "true").await;
    let (body, delivery) = store_through_a_reset(&app, &direct, &proxy).await;
    // The same delivery again is a duplicate, as ever.
    let (_, again) = app.post("push", &body, &delivery).await;
    assert_eq!(again["status"], "duplicate_skipped", "{again}");
    direct.close().await;
    app.stop().await;
}

/// Connections that sat idle in the pool through a network partition that the server did not
/// outlive for them (it dropped them, or moved to another address): the first delivery after
/// the network is back is stored and answered within GitHub's 10 s wait rather than after
/// the pool's wait on a silent connection, the next ones wait on none of them, and a shutdown
/// during a partition is not held by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_a_partition_silenced_hold_neither_deliveries_nor_the_shutdown() {
    let test = "connections_a_partition_silenced_hold_neither_deliveries_nor_the_shutdown";
    // No worker: nothing but the test's requests uses the pool, whose idle connections the
    // partitions silence.
    let configure =
        |s: hookdock::config::Sources| s.set("database_timeout_secs", 2).set("queue.workers", 0);
    let Some((app, direct, proxy)) = app_behind_a_proxy(test, configure, Vec::new()).await else {
        return;
    };
    // Several connections in the pool, idle once these are answered.
    let deliveries: Vec<(Vec<u8>, String)> = (0..8)
        .map(|i| (unique_body("push.none.0", i), new_delivery_id()))
        .collect();
    let answers = futures_util::future::join_all(
        deliveries
            .iter()
            .map(|(body, id)| app.post("push", body, id)),
    )
    .await;
    for (status, answer) in answers {
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let listed =
        futures_util::future::join_all((0..6).map(|_| app.api_get("/api/v1/events"))).await;
    for (status, answer) in listed {
        assert_eq!(status, StatusCode::OK, "{answer}");
    }

    proxy.cut();
    proxy.forget();
    let after = new_delivery_id();
    let body = unique_body("push.none.0", 8);
    let (status, answer) =
        tokio::time::timeout(Duration::from_secs(10), app.post("push", &body, &after))
            .await
            .expect("a delivery after the partition answered within GitHub's 10 s");
    assert_eq!(status, StatusCode::OK, "{answer}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE delivery_id = $1")
        .bind(&after)
        .fetch_one(&direct)
        .await
        .unwrap();
    assert_eq!(stored, 1);
    // The next ones do not wait on the other connections the partition silenced, one by one
    // (the ping wait is 2 s here): once one is found silent, those idle since are given up.
    let next = tokio::time::timeout(Duration::from_secs(3), async {
        for i in 9..12 {
            let (status, answer) = app
                .post("push", &unique_body("push.none.0", i), &new_delivery_id())
                .await;
            assert_eq!(status, StatusCode::OK, "{answer}");
        }
    });
    next.await
        .expect("three more deliveries answered within 3 s of the first");

    // Another partition, and a shutdown during it: idle connections it silenced are in the
    // pool when it closes (TestApp::stop allows 30 s).
    proxy.cut();
    proxy.forget();
    direct.close().await;
    app.stop().await;
}

/// At `max_connections` open connections hookdock accepts no more until one closes: the next
/// waits unanswered in the kernel's queue and is served as soon as a place frees, and
/// `/metrics` counts the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_wait_until_one_closes() {
    let app = TestApp::spawn_with(&Backend::Sqlite, |s| s.set("max_connections", 2), vec![]).await;
    // Two connections stalled in their headers hold both places (for idle_timeout_secs, 300 s).
    let first = RawDelivery::connect(&app.base, b"GET /healthz HTTP/1.1\r\nHost: h").await;
    let second = RawDelivery::connect(&app.base, b"GET /healthz HTTP/1.1\r\nHost: h").await;
    let waiting = RawDelivery::connect(
        &app.base,
        b"GET /metrics HTTP/1.1\r\nHost: hookdock\r\nConnection: close\r\n\r\n",
    )
    .await;
    let mut answer = tokio::spawn(waiting.answer());
    // Unanswered while both places are taken (the answer would come within milliseconds).
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut answer)
            .await
            .is_err(),
        "a third connection was served while max_connections = 2 were open"
    );
    drop(first);
    let (status, metrics) = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("served within 10 s of a place freeing")
        .expect("answer task");
    assert_eq!(status, 200, "{metrics}");
    let metrics = metrics.as_str().unwrap_or_default();
    let reached = metric(metrics, "hookdock_http_connection_limit_reached_total");
    assert!(reached >= 1.0, "{metrics}");
    drop(second);
    app.stop().await;
}

/// Once the write-ahead log cannot be flushed, nothing more is acknowledged: the delivery whose
/// flush failed and every later one get 503 (so GitHub records failures it can redeliver), and
/// the instance reports itself not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_to_disk_is_never_answered_2xx() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let (status, answer) = app
        .post("push", &fixture("push.none.0"), &new_delivery_id())
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // The database's directory goes away under the running instance (a lost disk): SQLite
    // still writes to its open files, but no flush can reach them.
    let path = app
        .settings
        .database_url
        .trim_start_matches("sqlite://")
        .to_owned();
    let dir = std::path::Path::new(&path).parent().unwrap().to_path_buf();
    std::fs::remove_dir_all(&dir).unwrap();
    for seq in 0..2 {
        let (status, answer) = app
            .post("push", &unique_body("push.none.0", seq), &new_delivery_id())
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
        assert_eq!(answer["error"], "storage_unavailable", "{answer}");
    }
    let (status, ready) = app.probe("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["database"], "flush to disk failed: restart hookdock");
    app.stop().await;
}

/// Migration 0012 (SQLite) moves the deduplication keys out of the events table: deliveries
/// stored before it are still duplicates, their bodies still replays, their jobs are kept, and
/// no event id is given twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_stored_before_the_key_tables_are_still_recognised() {
    use hookdock::store::{EventStatus, IngestOutcome, NewDelivery, Store};
    let db = TestDb::create(&Backend::Sqlite).await;
    let pool = pool_migrated_before(&db, &Backend::Sqlite, "0012").await;
    let hash = |n: u8| [n; 32];
    for n in 1..=4u8 {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO events (delivery_id, event, status, ordering_key, content_type, \
             headers, received_at, updated_at, body_size, body_sha256, body) VALUES \
             ('old-{n}', 'issues', 'done', 'k', 'application/json', '{{}}', 1, 1, 0, \
             x'{}', x'')",
            hex::encode(hash(n))
        )))
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO jobs (event_id, handler, ordering_key, status, run_at, created_at, \
         updated_at) VALUES (1, 'activity', 'k', 'done', 0, 0, 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM events WHERE id = 4")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = Store::connect(&db.url, Default::default()).await.unwrap();
    assert_eq!(
        store.migrate().await.unwrap(),
        migrations_from(&Backend::Sqlite, "0012")
    );
    assert!(store.migrations_current().await.unwrap());
    assert_eq!(store.event_detail(1).await.unwrap().jobs.len(), 1);
    let delivery = |id: &str, body: [u8; 32]| NewDelivery {
        delivery_id: id.to_owned(),
        event: "issues".into(),
        action: None,
        repository: None,
        repository_id: None,
        organization: None,
        installation_id: None,
        hook_id: None,
        target_type: None,
        target_id: None,
        sender: None,
        ordering_key: "k".into(),
        content_type: "application/json",
        headers_json: "{}".into(),
        body_zstd: Vec::new(),
        body_size: 0,
        body_sha256: body,
        handlers: vec!["activity"],
        received_at: 1,
    };
    assert_eq!(
        store.ingest(delivery("old-2", hash(9))).await.unwrap(),
        IngestOutcome::Duplicate { event_id: 2 }
    );
    assert_eq!(
        store.ingest(delivery("new-1", hash(3))).await.unwrap(),
        IngestOutcome::Stored {
            event_id: 5,
            status: EventStatus::ReplaySuspected
        }
    );
    // The deleted event's delivery id and body are forgotten, as before.
    assert_eq!(
        store.ingest(delivery("old-4", hash(4))).await.unwrap(),
        IngestOutcome::Stored {
            event_id: 6,
            status: EventStatus::Pending
        }
    );
    store.close().await;
}

/// A separate connection to the test's database.
pub async fn sqlx_pool(app: &TestApp) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&app.settings.database_url)
        .await
        .unwrap()
}

crate::backend_tests!(
    every_fixture_is_received_stored_served_back_and_deduplicated,
    signature_is_checked_before_parsing,
    bad_input_is_refused_with_the_right_status_and_nothing_is_stored,
    form_encoded_delivery_is_verified_on_the_form_body_and_kept_verbatim,
    same_delivery_posted_50_times_at_once_is_stored_once,
    replayed_body_with_new_delivery_id_is_held_until_released,
    scoped_secrets_take_precedence_and_rotate,
    unsigned_deliveries_only_when_allowed,
    a_body_that_stops_arriving_is_answered_408_and_nothing_is_stored,
    a_sender_that_stops_in_its_headers_is_disconnected,
    events_without_subscribers_are_stored_as_ignored,
    storage_failure_answers_503_and_stores_nothing,
);

/// A refusal: `status`, the JSON error `code`, and a message that says each of `says`.
fn assert_refused<S: Into<u16> + Copy>(
    answer: &(S, Value),
    status: u16,
    code: &str,
    says: &[&str],
) {
    let (got, body) = answer;
    assert_eq!((*got).into(), status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    for needle in says {
        assert!(
            message.contains(needle),
            "the message should say {needle:?}: {body}"
        );
    }
}
