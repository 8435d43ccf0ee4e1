//! hookdock's webhooks on GitHub, against the fake GitHub held to GitHub's REST contract:
//! install (create, adopt on 422, repair), uninstall, secret rotation with a grace period,
//! the periodic check, and the recovery of failed deliveries. Deliveries travel for real:
//! the fake signs them with the secret hookdock gave it and posts them to hookdock's port.

use std::sync::Arc;
use std::time::Duration;

use hookdock::clock::SystemClock;
use hookdock::hooks::{HookManager, rotate_key};
use hookdock::ingest::{WebhookSecrets, sign};
use hookdock_testkit::FakeGitHub;
use reqwest::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::helpers::{Backend, TestApp, fixture, free_port, poll_until, unique_body};

const GH_TOKEN: &str = "ghp_hookdock_test_token_0123456789";
const OWNER: &str = "octo-org";
const REPO: &str = "hello-world";
const KEY: &str = "4f1c9a0e7b2d3c5a8e6f0b1d2c3e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4";

struct Env {
    github: FakeGitHub,
    app: TestApp,
}

/// hookdock and a fake GitHub that knows it: a token with the hook scopes, one repository.
async fn env_with(backend: &Backend, grace_secs: u64) -> Env {
    let github = FakeGitHub::start().await;
    github.add_token(GH_TOKEN, "octocat", &["admin:repo_hook", "repo"]);
    github.add_repo(OWNER, REPO);
    let port = free_port();
    let api = github.url();
    let postgres = matches!(backend, Backend::Postgres(_));
    let app = TestApp::spawn_with(
        backend,
        move |s| {
            let s = s
                .set("listen", format!("127.0.0.1:{port}"))
                .set("public_url", format!("http://127.0.0.1:{port}"))
                .set("github_api_url", api)
                .set("github_token", GH_TOKEN)
                .set("github.write_interval_ms", 0)
                .set("hooks.rotation_grace_secs", grace_secs)
                // The background upkeep is driven by the tests through the API.
                .set("hooks.sweep_interval_secs", 0)
                .set("hooks.check_interval_secs", 0)
                .set("hooks.rotation_interval_days", 0);
            // An embedded install keeps its key beside the database; a shared one is given it.
            if postgres {
                s.set("secret_key", KEY)
            } else {
                s
            }
        },
        Vec::new(),
    )
    .await;
    Env { github, app }
}

async fn env(backend: &Backend) -> Env {
    env_with(backend, 900).await
}

fn repo_path(action: &str) -> String {
    format!("/api/v1/repos/{OWNER}/{REPO}/{action}")
}

impl Env {
    async fn install(&self) -> (StatusCode, Value) {
        self.app.api_post(&repo_path("install")).await
    }

    fn only_hook(&self) -> hookdock_testkit::FakeHook {
        let hooks = self.github.repo_hooks(OWNER, REPO);
        assert_eq!(hooks.len(), 1, "one hook on GitHub: {hooks:?}");
        hooks.into_iter().next().expect("one hook")
    }

    async fn stored_delivery(&self, guid: &str) -> Option<i64> {
        self.app
            .store
            .stored_delivery_ids(&[guid.to_owned()])
            .await
            .expect("query")
            .contains(guid)
            .then_some(1)
    }

    /// Posts a delivery as if hook `hook_id` sent it, signed with `secret`.
    async fn post_signed(&self, hook_id: u64, secret: &str, seq: u64) -> StatusCode {
        let body = unique_body("issues.opened.0", seq);
        self.app
            .client
            .post(self.app.webhook_url())
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", "issues")
            .header("X-GitHub-Delivery", uuid::Uuid::new_v4().to_string())
            .header("X-GitHub-Hook-ID", hook_id.to_string())
            .header("X-Hub-Signature-256", sign(secret.as_bytes(), &body))
            .body(body)
            .send()
            .await
            .expect("request sent")
            .status()
    }

    fn assert_contract_kept(&self) {
        assert_eq!(self.github.contract_violations(), Vec::<String>::new());
    }
}

async fn install_creates_a_verified_hook(backend: Backend) {
    let env = env(&backend).await;
    let (status, body) = env.install().await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["action"], "created");
    let hook = env.only_hook();
    assert_eq!(body["hook"]["hook_id"], hook.id);
    assert_eq!(body["hook"]["status"], "registered");
    assert_eq!(
        hook.url,
        format!(
            "{}/api/v1/webhooks/github",
            env.app.settings.public_url.clone().expect("public url")
        )
    );
    assert_eq!(hook.content_type, "json");
    assert_eq!(hook.insecure_ssl, "0");
    assert!(hook.active);
    for event in [
        "pull_request",
        "pull_request_review",
        "issues",
        "issue_comment",
    ] {
        assert!(
            hook.events.iter().any(|e| e == event),
            "{event} in {:?}",
            hook.events
        );
    }
    let secret = hook.secret.clone().expect("hook has a secret");
    assert_eq!(secret.len(), 64, "32 random bytes, hex");

    // GitHub pinged the new hook at once; the ping verified with the new secret and is stored.
    let pings = env
        .github
        .wait_for_deliveries(hook.id, 1, Duration::from_secs(10))
        .await;
    let ping = pings.last().expect("a ping was sent");
    assert_eq!(
        (ping.event.as_str(), ping.status_code),
        ("ping", 200),
        "{} after {:.2} s: {}",
        ping.status,
        ping.duration,
        ping.response_body
    );
    assert!(env.stored_delivery(&ping.guid).await.is_some());

    // A real event from GitHub is accepted and stored byte for byte.
    let payload = fixture("pull_request.opened.0");
    let delivery = env.github.deliver(hook.id, "pull_request", &payload).await;
    assert_eq!(delivery.status_code, 200, "{}", delivery.response_body);
    let answer: Value = serde_json::from_str(&delivery.response_body).expect("JSON answer");
    assert_eq!(answer["status"], "received");
    let event_id = answer["event_id"].as_i64().expect("event id");
    let stored = env
        .app
        .client
        .get(format!("{}/api/v1/events/{event_id}/payload", env.app.base))
        .bearer_auth(crate::helpers::TOKEN)
        .send()
        .await
        .expect("payload")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(stored.as_ref(), payload.as_slice());

    // A delivery signed with anything else is refused.
    assert_eq!(
        env.post_signed(hook.id, "not-the-secret", 1).await,
        StatusCode::FORBIDDEN
    );

    // The status API shows the hook and the last event, and no secret anywhere.
    let (status, list) = env.app.api_get("/api/v1/repos").await;
    assert_eq!(status, StatusCode::OK);
    let item = &list["items"][0];
    assert_eq!(item["name"], format!("{OWNER}/{REPO}"));
    assert_eq!(item["status"], "registered");
    assert_eq!(item["last_event"]["event"], "pull_request");
    assert!(!list.to_string().contains(&secret));

    // At rest the secret is sealed: no column of any row holds it.
    let rows = sqlx_dump(&env.app, "SELECT * FROM hook_registrations").await;
    assert!(rows.contains(&format!("{OWNER}/{REPO}")), "{rows}");
    assert!(!rows.contains(&secret), "plaintext secret in the database");
    env.assert_contract_kept();
    env.app.stop().await;
}

/// Every column of every row, as text.
async fn sqlx_dump(app: &TestApp, query: &str) -> String {
    use sqlx::{Column, Row};
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&app.settings.database_url)
        .await
        .expect("connect");
    let rows = sqlx::query(sqlx::AssertSqlSafe(query))
        .fetch_all(&mut conn)
        .await
        .expect("query");
    let mut out = String::new();
    for row in &rows {
        for (i, column) in row.columns().iter().enumerate() {
            let text = row
                .try_get::<Option<String>, _>(i)
                .ok()
                .flatten()
                .or_else(|| {
                    row.try_get::<Option<i64>, _>(i)
                        .ok()
                        .flatten()
                        .map(|n| n.to_string())
                })
                .unwrap_or_default();
            out.push_str(&format!("{}={text};", column.name()));
        }
        out.push('\n');
    }
    out
}

async fn install_adopts_the_hook_github_already_has(backend: Backend) {
    let env = env(&backend).await;
    let url = format!(
        "{}/api/v1/webhooks/github",
        env.app.settings.public_url.clone().expect("public url")
    );
    // Someone created a hook at hookdock's URL by hand, with a secret hookdock does not know.
    let created = env
        .app
        .client
        .post(format!("{}/repos/{OWNER}/{REPO}/hooks", env.github.url()))
        .bearer_auth(GH_TOKEN)
        .header("User-Agent", "test")
        .json(&json!({"name": "web", "active": true, "events": ["push"],
            "config": {"url": url, "content_type": "json", "secret": "pasted-by-hand", "insecure_ssl": "0"}}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), StatusCode::CREATED);
    let before = env.only_hook();

    let (status, body) = env.install().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["action"], "adopted");
    let after = env.only_hook();
    assert_eq!(
        after.id, before.id,
        "the existing hook is reused, not duplicated"
    );
    let secret = after.secret.clone().expect("secret");
    assert_ne!(secret, "pasted-by-hand");
    assert!(after.events.iter().any(|e| e == "pull_request"));
    assert_eq!(env.post_signed(after.id, &secret, 2).await, StatusCode::OK);
    env.assert_contract_kept();
    env.app.stop().await;
}

async fn rotation_keeps_the_old_secret_valid_for_the_grace_period(backend: Backend) {
    let env = env(&backend).await;
    assert_eq!(env.install().await.0, StatusCode::CREATED);
    let old = env.only_hook().secret.expect("secret");
    let (status, body) = env.app.api_post(&repo_path("rotate-secret")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let hook = env.only_hook();
    let new = hook.secret.clone().expect("secret");
    assert_ne!(new, old, "GitHub got a new secret");
    assert!(!body.to_string().contains(&new) && !body.to_string().contains(&old));
    // In-flight deliveries signed with the old secret still verify; new ones too.
    assert_eq!(env.post_signed(hook.id, &old, 3).await, StatusCode::OK);
    assert_eq!(env.post_signed(hook.id, &new, 4).await, StatusCode::OK);
    let delivery = env
        .github
        .deliver(hook.id, "issues", &unique_body("issues.opened.0", 5))
        .await;
    assert_eq!(delivery.status_code, 200, "{}", delivery.response_body);
    env.assert_contract_kept();
    env.app.stop().await;
}

async fn rotation_without_grace_refuses_the_old_secret(backend: Backend) {
    let env = env_with(&backend, 0).await;
    assert_eq!(env.install().await.0, StatusCode::CREATED);
    let old = env.only_hook().secret.expect("secret");
    assert_eq!(
        env.app.api_post(&repo_path("rotate-secret")).await.0,
        StatusCode::OK
    );
    let hook = env.only_hook();
    let mut seq = 10;
    poll_until("the old secret expires", Duration::from_secs(5), || {
        seq += 1;
        let (env, old) = (&env, &old);
        async move { env.post_signed(hook.id, old, seq).await == StatusCode::FORBIDDEN }
    })
    .await;
    let new = hook.secret.clone().expect("secret");
    assert_eq!(env.post_signed(hook.id, &new, 30).await, StatusCode::OK);
    env.app.stop().await;
}

async fn check_finds_deleted_and_disabled_hooks_and_install_repairs_them(backend: Backend) {
    let env = env(&backend).await;
    assert_eq!(env.install().await.0, StatusCode::CREATED);
    let first = env.only_hook();

    env.github.set_hook_active(first.id, false);
    let (status, body) = env.app.api_post("/api/v1/hooks/check").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["items"][0]["status"], "disabled");
    let (status, body) = env.install().await;
    assert_eq!(
        (status, body["action"].as_str()),
        (StatusCode::OK, Some("repaired")),
        "{body}"
    );
    assert!(env.only_hook().active);

    env.github.remove_hook(first.id);
    let (_, body) = env.app.api_post("/api/v1/hooks/check").await;
    assert_eq!(body["items"][0]["status"], "missing");
    assert!(
        body["items"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("install"))
    );
    let (status, body) = env.install().await;
    assert_eq!(
        (status, body["action"].as_str()),
        (StatusCode::CREATED, Some("created")),
        "{body}"
    );
    let second = env.only_hook();
    assert_ne!(second.id, first.id);
    assert_eq!(body["hook"]["status"], "registered");
    let delivery = env
        .github
        .deliver(second.id, "issues", &unique_body("issues.opened.0", 40))
        .await;
    assert_eq!(delivery.status_code, 200, "{}", delivery.response_body);
    env.assert_contract_kept();
    env.app.stop().await;
}

async fn uninstall_deletes_the_hook_and_tolerates_one_already_gone(backend: Backend) {
    let env = env(&backend).await;
    assert_eq!(env.install().await.0, StatusCode::CREATED);
    let (status, body) = env.app.api_delete(&repo_path("install")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(env.github.repo_hooks(OWNER, REPO).is_empty());
    assert_eq!(body["warnings"], json!([]));
    let (_, list) = env.app.api_get("/api/v1/repos").await;
    assert_eq!(list["items"], json!([]));

    assert_eq!(env.install().await.0, StatusCode::CREATED);
    let hook = env.only_hook();
    env.github.remove_hook(hook.id);
    let (status, body) = env.app.api_delete(&repo_path("install")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("already gone")),
        "{body}"
    );
    let (status, body) = env.app.api_delete(&repo_path("install")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "not_tracked");
    env.assert_contract_kept();
    env.app.stop().await;
}

async fn sweep_redelivers_failed_deliveries_once(backend: Backend) {
    let env = env(&backend).await;
    assert_eq!(env.install().await.0, StatusCode::CREATED);
    let hook = env.only_hook();
    env.github
        .wait_for_deliveries(hook.id, 1, Duration::from_secs(10))
        .await;
    let now = OffsetDateTime::now_utc();
    // hookdock was down: GitHub could not connect. One too old to redeliver, one inside the
    // window (recorded in time order, as GitHub lists them).
    let too_old = env.github.record_failed_delivery(
        hook.id,
        "issues",
        &unique_body("issues.opened.0", 51),
        503,
        now - time::Duration::days(4),
    );
    let lost = env.github.record_failed_delivery(
        hook.id,
        "issues",
        &unique_body("issues.opened.0", 50),
        0,
        now - time::Duration::minutes(10),
    );
    // One that GitHub reports failed (hookdock timed out answering) but hookdock has.
    let ok = env
        .github
        .deliver(hook.id, "issues", &unique_body("issues.opened.0", 52))
        .await;
    assert_eq!(ok.status_code, 200);

    let (status, report) = env.app.api_post("/api/v1/hooks/redeliver?since=5d").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        report["redelivered"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert_eq!(report["redelivered"][0]["guid"], lost.guid);
    assert_eq!(env.github.redelivery_requests(hook.id), vec![lost.id]);
    // GitHub redelivers with the same guid; hookdock stores it.
    poll_until(
        "the redelivery is stored",
        Duration::from_secs(10),
        || async { env.stored_delivery(&lost.guid).await.is_some() },
    )
    .await;
    assert!(env.stored_delivery(&too_old.guid).await.is_none());

    // A second sweep asks for nothing more.
    let (_, report) = env.app.api_post("/api/v1/hooks/redeliver?since=24h").await;
    assert_eq!(report["redelivered"], json!([]), "{report}");
    assert_eq!(env.github.redelivery_requests(hook.id).len(), 1);
    let (status, bad) = env
        .app
        .api_post("/api/v1/hooks/redeliver?since=yesterday")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(bad["message"].as_str().is_some_and(|m| m.contains("since")));
    // A misspelt parameter is named in the API's JSON error.
    let (status, bad) = env.app.api_post("/api/v1/hooks/redeliver?sinse=1h").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    assert_eq!(bad["error"], "invalid_parameter", "{bad}");
    assert!(
        bad["message"].as_str().is_some_and(|m| m.contains("sinse")),
        "{bad}"
    );
    env.assert_contract_kept();
    env.app.stop().await;
}

async fn organization_hooks_install_and_uninstall(backend: Backend) {
    let env = env(&backend).await;
    env.github.add_token(
        GH_TOKEN,
        "octocat",
        &["admin:repo_hook", "admin:org_hook", "repo"],
    );
    env.github.add_org(OWNER);
    let (status, body) = env
        .app
        .api_post(&format!("/api/v1/orgs/{OWNER}/install"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let hooks = env.github.org_hooks(OWNER);
    assert_eq!(hooks.len(), 1);
    let delivery = env
        .github
        .deliver(hooks[0].id, "issues", &unique_body("issues.opened.0", 60))
        .await;
    assert_eq!(delivery.status_code, 200, "{}", delivery.response_body);
    // The sweep covers organization hooks too.
    let lost = env.github.record_failed_delivery(
        hooks[0].id,
        "issues",
        &unique_body("issues.opened.0", 61),
        502,
        OffsetDateTime::now_utc(),
    );
    let (status, report) = env.app.api_post("/api/v1/hooks/redeliver?since=1h").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["redelivered"][0]["guid"], lost.guid, "{report}");
    assert_eq!(report["redelivered"][0]["scope"], "organization");
    poll_until(
        "the organization's redelivery is stored",
        Duration::from_secs(10),
        || async { env.stored_delivery(&lost.guid).await.is_some() },
    )
    .await;
    let (status, body) = env
        .app
        .api_delete(&format!("/api/v1/orgs/{OWNER}/install"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(env.github.org_hooks(OWNER).is_empty());
    env.assert_contract_kept();
    env.app.stop().await;
}

async fn deliveries_missed_while_down_are_recovered_exactly_once(backend: Backend) {
    let env = env(&backend).await;
    assert_eq!(env.install().await.0, StatusCode::CREATED);
    let hook = env.only_hook();
    env.github
        .wait_for_deliveries(hook.id, 1, Duration::from_secs(10))
        .await;
    // An explicit ping goes through GitHub and arrives verified.
    let (status, body) = env.app.api_post(&repo_path("ping")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let pings = env
        .github
        .wait_for_deliveries(hook.id, 2, Duration::from_secs(10))
        .await;
    assert_eq!(
        (pings[0].event.as_str(), pings[0].status_code),
        ("ping", 200)
    );

    // hookdock goes down; GitHub's deliveries meanwhile fail to connect.
    let Env { github, app } = env;
    let stopped = app.stop_keeping_data().await;
    let mut missed = Vec::new();
    for seq in 0..5 {
        let d = github
            .deliver(
                hook.id,
                "issues",
                &unique_body("issues.opened.0", 100 + seq),
            )
            .await;
        assert_eq!(d.status_code, 0, "hookdock is down: {}", d.status);
        missed.push(d.guid);
    }
    let env = Env {
        github,
        app: stopped.start().await,
    };
    for guid in &missed {
        assert!(env.stored_delivery(guid).await.is_none());
    }

    // Back up: the sweep asks for each missed delivery once, and each arrives and is stored.
    let (status, report) = env.app.api_post("/api/v1/hooks/redeliver?since=1h").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let mut asked: Vec<String> = report["redelivered"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|r| r["guid"].as_str().map(str::to_owned))
        .collect();
    asked.sort();
    let mut expected = missed.clone();
    expected.sort();
    assert_eq!(asked, expected, "{report}");
    poll_until(
        "every missed delivery is stored",
        Duration::from_secs(10),
        || async {
            let ids = env
                .app
                .store
                .stored_delivery_ids(&missed)
                .await
                .expect("query");
            ids.len() == missed.len()
        },
    )
    .await;
    let (_, again) = env.app.api_post("/api/v1/hooks/redeliver?since=1h").await;
    assert_eq!(again["redelivered"], json!([]), "{again}");
    assert_eq!(env.github.redelivery_requests(hook.id).len(), missed.len());
    // Each event once: GitHub's guid is hookdock's delivery id, and it is unique.
    let (_, events) = env
        .app
        .api_get("/api/v1/events?event=issues&limit=100")
        .await;
    let stored = events["events"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(stored, missed.len(), "{events}");
    env.assert_contract_kept();
    env.app.stop().await;
}

/// A guid is asked for again only when GitHub tried after the last request and failed again,
/// and at most three times; every request is recorded.
async fn redelivery_requests_are_recorded_and_capped(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let store = &app.store;
    let events = vec!["issues".to_owned()];
    let registration = store
        .save_hook_registration(&hookdock::store::RegistrationUpdate {
            scope: "repository",
            name: "octo/hello",
            target_id: None,
            hook_id: Some(7),
            url: "https://hooks.example.com/api/v1/webhooks/github",
            events: &events,
            status: "registered",
            secret: None,
            last_error: None,
        })
        .await
        .expect("registration");
    let claim = |failed_since: i64| {
        store.claim_redelivery(registration.id, "guid-1", 11, "issues", failed_since, 3)
    };
    let later = hookdock::store::now_ms() + 60_000;
    assert!(claim(0).await.expect("first"), "a new guid is asked for");
    assert!(
        !claim(0).await.expect("no new failure"),
        "no failed attempt since the request: not asked again"
    );
    assert!(claim(later).await.expect("second"));
    assert!(claim(later).await.expect("third"));
    assert!(
        !claim(later).await.expect("fourth"),
        "at most three requests"
    );
    let recorded = store.redeliveries(registration.id).await.expect("list");
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        (
            recorded[0].guid.as_str(),
            recorded[0].event.as_str(),
            recorded[0].attempts
        ),
        ("guid-1", "issues", 3)
    );
    app.stop().await;
}

crate::backend_tests!(
    redelivery_requests_are_recorded_and_capped,
    deliveries_missed_while_down_are_recovered_exactly_once,
    install_creates_a_verified_hook,
    install_adopts_the_hook_github_already_has,
    rotation_keeps_the_old_secret_valid_for_the_grace_period,
    rotation_without_grace_refuses_the_old_secret,
    check_finds_deleted_and_disabled_hooks_and_install_repairs_them,
    uninstall_deletes_the_hook_and_tolerates_one_already_gone,
    sweep_redelivers_failed_deliveries_once,
    organization_hooks_install_and_uninstall,
);

#[tokio::test]
async fn refusals_say_what_to_configure() {
    let github = FakeGitHub::start().await;
    github.add_token(GH_TOKEN, "octocat", &["read:user"]);
    github.add_repo(OWNER, REPO);
    let api = github.url();
    let app = TestApp::spawn_with(
        &Backend::Sqlite,
        |s| s.set("github_api_url", api).set("github_token", GH_TOKEN),
        Vec::new(),
    )
    .await;
    let (status, body) = app.api_post(&repo_path("install")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "not_configured");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("HOOKDOCK_PUBLIC_URL"))
    );
    let (status, body) = app.api_post("/api/v1/repos/octo/..%2Fx/install").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app
        .api_post("/api/v1/repos/octo/unknown/rotate-secret")
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_tracked"))
    );
    assert!(!body.to_string().contains(GH_TOKEN));
    app.stop().await;
}

#[tokio::test]
async fn a_token_without_the_hook_scope_is_reported() {
    let github = FakeGitHub::start().await;
    github.add_token(GH_TOKEN, "octocat", &["read:user"]);
    github.add_repo(OWNER, REPO);
    let api = github.url();
    let app = TestApp::spawn_with(
        &Backend::Sqlite,
        |s| {
            s.set("github_api_url", api)
                .set("github_token", GH_TOKEN)
                .set("public_url", "https://hooks.example.com")
                .set("github.write_interval_ms", 0)
        },
        Vec::new(),
    )
    .await;
    let (status, body) = app.api_post(&repo_path("install")).await;
    // GitHub hides the hooks of a repository the token may not administer behind a 404.
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "github_not_found");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("`repo` scope"), "{body}");
    assert!(!body.to_string().contains(GH_TOKEN));
    // Nothing half-installed is left registered: the attempt is recorded as failed.
    let (_, list) = app.api_get("/api/v1/repos").await;
    assert_eq!(list["items"][0]["status"], "failed", "{list}");
    assert!(
        list["items"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("404")),
        "{list}"
    );
    assert!(github.repo_hooks(OWNER, REPO).is_empty());
    app.stop().await;
}

#[tokio::test]
async fn rotate_key_reseals_every_secret_under_a_new_key() {
    let env = env(&Backend::Sqlite).await;
    assert_eq!(env.install().await.0, StatusCode::CREATED);
    let secret = env.only_hook().secret.expect("secret");
    let before = sqlx_dump(&env.app, "SELECT secret_key_id FROM hook_registrations").await;
    let done = rotate_key(&env.app.settings, &env.app.store)
        .await
        .expect("rotate-key");
    assert_eq!(done.resealed, 1);
    assert!(
        done.key_file
            .as_deref()
            .is_some_and(|f| f.ends_with("secret.key"))
    );
    let after = sqlx_dump(&env.app, "SELECT secret_key_id FROM hook_registrations").await;
    assert_ne!(before, after);
    assert!(after.contains(&done.key_id));
    // A fresh start (new key file only) opens the resealed secret, and it is the same secret.
    let secrets = Arc::new(WebhookSecrets::from_settings(&env.app.settings));
    let hooks = HookManager::from_settings(
        &env.app.settings,
        env.app.store.clone(),
        Arc::clone(&secrets),
        Arc::new(SystemClock),
    )
    .expect("manager");
    assert_eq!(hooks.refresh_secrets().await.expect("opens"), 1);
    let body = b"{}";
    let signature =
        hookdock::ingest::Signature::parse(&sign(secret.as_bytes(), body)).expect("sig");
    let hook_id = env.only_hook().id;
    assert!(
        secrets
            .verify(Some(hook_id), None, &signature, body, 0)
            .is_ok()
    );
    env.app.stop().await;
}
