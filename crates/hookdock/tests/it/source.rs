//! The optional source check: only GitHub's webhook ranges (from the fake's `GET /meta`) may
//! deliver, and a forwarded-for header counts only when a trusted proxy sent it.

use std::time::Duration;

use hookdock::ingest::sign;
use hookdock_testkit::FakeGitHub;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Backend, SECRET, TestApp, json_answer, poll_until, unique_body};

async fn post_from(app: &TestApp, forwarded: Option<&str>, seq: u64) -> (StatusCode, Value) {
    let body = unique_body("issues.opened.0", seq);
    let mut request = app
        .client
        .post(app.webhook_url())
        .header("Content-Type", "application/json")
        .header("X-GitHub-Event", "issues")
        .header("X-GitHub-Delivery", uuid::Uuid::new_v4().to_string())
        .header("X-Hub-Signature-256", sign(SECRET.as_bytes(), &body));
    if let Some(forwarded) = forwarded {
        request = request.header("X-Forwarded-For", forwarded);
    }
    json_answer(request.body(body).send().await.expect("sent")).await
}

async fn app_with(github: &FakeGitHub, proxies: &'static str) -> TestApp {
    let api = github.url();
    TestApp::spawn_with(
        &Backend::Sqlite,
        move |s| {
            let s = s
                .set("github_api_url", api)
                .set("source_check.enabled", true);
            if proxies.is_empty() {
                s
            } else {
                s.set("source_check.forwarded_header", "X-Forwarded-For")
                    .set("source_check.trusted_proxies", proxies)
            }
        },
        Vec::new(),
    )
    .await
}

/// Waits until GitHub's ranges are loaded (until then deliveries get 503).
async fn ranges_loaded(app: &TestApp) {
    let mut seq = 1_000;
    poll_until(
        "GitHub's ranges are loaded",
        Duration::from_secs(10),
        || {
            seq += 1;
            async move { post_from(app, None, seq).await.0 != StatusCode::SERVICE_UNAVAILABLE }
        },
    )
    .await;
}

#[tokio::test]
async fn only_githubs_ranges_deliver_and_forwarded_for_counts_only_from_a_trusted_proxy() {
    let github = FakeGitHub::start().await;
    // The test client (127.0.0.1) plays a trusted reverse proxy.
    let app = app_with(&github, "127.0.0.1, 10.0.0.0/8").await;
    ranges_loaded(&app).await;
    let before = app.count_events().await;

    let (status, body) = post_from(&app, None, 1).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "source_not_allowed");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("127.0.0.1"))
    );
    let (status, body) = post_from(&app, Some("203.0.113.5"), 2).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        app.count_events().await,
        before,
        "refused deliveries store nothing"
    );

    // GitHub's address, as the proxy forwards it (a forged left-most entry changes nothing).
    let (status, body) = post_from(&app, Some("203.0.113.5, 140.82.115.1"), 3).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("received")),
        "{body}"
    );
    assert_eq!(app.count_events().await, before + 1);
    app.stop().await;
}

#[tokio::test]
async fn without_trusted_proxies_the_forwarded_header_is_ignored() {
    let github = FakeGitHub::start().await;
    github.set_meta_hooks(&["127.0.0.0/8"]);
    let app = app_with(&github, "").await;
    ranges_loaded(&app).await;
    let (status, body) = post_from(&app, Some("203.0.113.5"), 4).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("received")),
        "{body}"
    );

    github.set_meta_hooks(&["140.82.112.0/20"]);
    let other = app_with(&github, "").await;
    ranges_loaded(&other).await;
    let (status, body) = post_from(&other, Some("140.82.115.1"), 5).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a forged header from an untrusted peer: {body}"
    );
    app.stop().await;
    other.stop().await;
}

#[test]
fn a_forwarded_header_without_trusted_proxies_is_a_configuration_error() {
    let err = hookdock::Settings::load(
        &hookdock::Sources::default().set("source_check.forwarded_header", "X-Forwarded-For"),
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        err.contains("source_check.forwarded_header") && err.contains("trusted_proxies"),
        "{err}"
    );
    let err = hookdock::Settings::load(
        &hookdock::Sources::default().set("source_check.trusted_proxies", "10.0.0.0/33"),
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("source_check.trusted_proxies[0]"), "{err}");
}
