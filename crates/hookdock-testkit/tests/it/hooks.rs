use std::time::Duration;

use hookdock_testkit::{FakeGitHub, signature_256};
use reqwest::Method;
use serde_json::json;
use time::OffsetDateTime;

use crate::{Receiver, assert_clean, call, fixture, github, header};

fn hook_body(url: &str, secret: &str, content_type: &str) -> serde_json::Value {
    json!({
        "name": "web",
        "active": true,
        "events": ["push", "pull_request"],
        "config": {"url": url, "content_type": content_type, "secret": secret, "insecure_ssl": "0"}
    })
}

#[tokio::test]
async fn hook_is_created_listed_refused_twice_and_deleted() {
    let (github, _) = github().await;
    let (status, headers, hook) = call(
        &github,
        Method::POST,
        "/repos/octo/hello/hooks",
        Some(hook_body("http://127.0.0.1:9/hook", "s3cret", "json")),
    )
    .await;
    assert_eq!(status, 201, "{hook}");
    let id = hook["id"].as_u64().unwrap();
    assert_eq!(hook["config"]["secret"], "********");
    assert_eq!(hook["type"], "Repository");
    assert!(header(&headers, "location").ends_with(&format!("/repos/octo/hello/hooks/{id}")));
    assert_eq!(
        header(&headers, "x-accepted-oauth-scopes"),
        "admin:repo_hook, repo, write:repo_hook"
    );

    let (status, _, list) = call(&github, Method::GET, "/repos/octo/hello/hooks", None).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let stored = github.repo_hooks("octo", "hello");
    assert_eq!(stored[0].secret.as_deref(), Some("s3cret"));
    assert_eq!(stored[0].content_type, "json");

    let (status, _, err) = call(
        &github,
        Method::POST,
        "/repos/octo/hello/hooks",
        Some(hook_body("http://127.0.0.1:9/hook", "other", "json")),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(err["message"], "Validation Failed");
    assert_eq!(
        err["errors"][0]["message"],
        "Hook already exists on this repository"
    );

    let (status, _, _) = call(
        &github,
        Method::PATCH,
        &format!("/repos/octo/hello/hooks/{id}"),
        Some(json!({"add_events": ["issues"], "remove_events": ["push"], "active": false})),
    )
    .await;
    assert_eq!(status, 200);
    let hook = github.hook(id).unwrap();
    assert_eq!(hook.events, vec!["pull_request", "issues"]);
    assert!(!hook.active);

    let path = format!("/repos/octo/hello/hooks/{id}");
    assert_eq!(call(&github, Method::DELETE, &path, None).await.0, 204);
    let (status, _, err) = call(&github, Method::GET, &path, None).await;
    assert_eq!(status, 404);
    assert_eq!(err["message"], "Not Found");
    assert_clean(&github);
}

#[tokio::test]
async fn ping_and_deliveries_arrive_signed_like_github() {
    let (github, repo_id) = github().await;
    let receiver = Receiver::start().await;
    let (_, _, hook) = call(
        &github,
        Method::POST,
        "/repos/octo/hello/hooks",
        Some(hook_body(
            &receiver.url,
            "It's a Secret to Everybody",
            "json",
        )),
    )
    .await;
    let id = hook["id"].as_u64().unwrap();
    let got = receiver.wait_for(1).await;
    let ping = &got[0];
    assert_eq!(crate::header(&ping.headers, "x-github-event"), "ping");
    assert_eq!(
        crate::header(&ping.headers, "x-hub-signature-256"),
        signature_256("It's a Secret to Everybody", &ping.body)
    );
    assert_eq!(
        crate::header(&ping.headers, "x-github-hook-id"),
        id.to_string()
    );
    assert_eq!(
        crate::header(&ping.headers, "x-github-hook-installation-target-type"),
        "repository"
    );
    assert_eq!(
        crate::header(&ping.headers, "x-github-hook-installation-target-id"),
        repo_id.to_string()
    );
    assert!(crate::header(&ping.headers, "user-agent").starts_with("GitHub-Hookshot/"));
    let payload: serde_json::Value = serde_json::from_slice(&ping.body).unwrap();
    assert_eq!(payload["hook_id"], id);
    assert!(payload["zen"].is_string());

    let body = fixture("push.none.0.json");
    let delivery = github.deliver(id, "push", &body).await;
    assert_eq!(
        (delivery.status.as_str(), delivery.status_code),
        ("OK", 200)
    );
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].body.as_ref(), body.as_slice());
    assert_eq!(
        crate::header(&got[1].headers, "x-github-delivery"),
        delivery.guid
    );
    assert_eq!(
        crate::header(&got[1].headers, "content-type"),
        "application/json"
    );

    // A form hook sends `payload=` and signs what it sends.
    github.add_repo("octo", "form");
    call(
        &github,
        Method::POST,
        "/repos/octo/form/hooks",
        Some(json!({"config": {"url": receiver.url, "secret": "k"}})),
    )
    .await;
    let got = receiver.wait_for(3).await;
    let form = &got[2];
    assert_eq!(
        crate::header(&form.headers, "content-type"),
        "application/x-www-form-urlencoded"
    );
    assert!(form.body.starts_with(b"payload="));
    assert_eq!(
        crate::header(&form.headers, "x-hub-signature-256"),
        signature_256("k", &form.body)
    );
    assert_clean(&github);
}

#[tokio::test]
async fn unreachable_receiver_is_recorded_as_failed_delivery() {
    let (github, _) = github().await;
    let (_, _, hook) = call(
        &github,
        Method::POST,
        "/repos/octo/hello/hooks",
        Some(hook_body("http://127.0.0.1:9/nothing-here", "s", "json")),
    )
    .await;
    let id = hook["id"].as_u64().unwrap();
    let list = github
        .wait_for_deliveries(id, 1, Duration::from_secs(5))
        .await;
    assert_eq!(list[0].status_code, 0);
    assert_eq!(list[0].event, "ping");
    assert_ne!(list[0].status, "OK");
    let (_, _, hook) = call(
        &github,
        Method::GET,
        &format!("/repos/octo/hello/hooks/{id}"),
        None,
    )
    .await;
    assert_eq!(hook["last_response"]["status"], "failed");
    assert_clean(&github);
}

#[tokio::test]
async fn deliveries_are_listed_newest_first_with_cursor_pagination() {
    let (github, _) = github().await;
    let (_, _, hook) = call(
        &github,
        Method::POST,
        "/repos/octo/hello/hooks",
        Some(hook_body("http://127.0.0.1:9/x", "s", "json")),
    )
    .await;
    let id = hook["id"].as_u64().unwrap();
    github
        .wait_for_deliveries(id, 1, Duration::from_secs(5))
        .await;
    let mut recorded = Vec::new();
    for i in 0..5 {
        let body = serde_json::to_vec(&json!({"action": "opened", "number": i})).unwrap();
        let at = OffsetDateTime::now_utc() - time::Duration::minutes(10 - i);
        recorded.push(
            github
                .record_failed_delivery(id, "pull_request", &body, 502, at)
                .id,
        );
    }
    let mut seen = Vec::new();
    let mut next = Some(format!(
        "/repos/octo/hello/hooks/{id}/deliveries?per_page=2"
    ));
    let mut pages = 0;
    while let Some(url) = next.take() {
        let (status, headers, page) = call(&github, Method::GET, &url, None).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for d in page.as_array().unwrap() {
            seen.push(d["id"].as_u64().unwrap());
            assert!(d.get("throttled_at").is_some());
        }
        let link = header(&headers, "link");
        if let Some(start) = link.find('<') {
            let end = link.find('>').unwrap();
            assert!(link.contains("rel=\"next\""));
            next = Some(link[start + 1..end].to_owned());
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 6);
    let expected: Vec<u64> = recorded.iter().rev().copied().collect();
    assert_eq!(&seen[..5], expected.as_slice());

    let (status, _, list) = call(
        &github,
        Method::GET,
        &format!("/repos/octo/hello/hooks/{id}/deliveries?status=failure&per_page=100"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 6);
    assert_eq!(list[0]["action"], "opened");
    assert_eq!(list[0]["status"], "Invalid HTTP Response: 502");

    let (status, _, one) = call(
        &github,
        Method::GET,
        &format!("/repos/octo/hello/hooks/{id}/deliveries/{}", recorded[0]),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(one["request"]["payload"]["number"], 0);
    assert_clean(&github);
}

#[tokio::test]
async fn redelivery_resends_the_stored_body_with_the_same_guid() {
    let (github, _) = github().await;
    let receiver = Receiver::start().await;
    let (_, _, hook) = call(
        &github,
        Method::POST,
        "/repos/octo/hello/hooks",
        Some(hook_body(&receiver.url, "s", "json")),
    )
    .await;
    let id = hook["id"].as_u64().unwrap();
    receiver.wait_for(1).await;
    let body = fixture("pull_request.opened.0.json");
    let failed = github.record_failed_delivery(
        id,
        "pull_request",
        &body,
        500,
        OffsetDateTime::now_utc() - time::Duration::hours(1),
    );
    let (status, _, _) = call(
        &github,
        Method::POST,
        &format!(
            "/repos/octo/hello/hooks/{id}/deliveries/{}/attempts",
            failed.id
        ),
        None,
    )
    .await;
    assert_eq!(status, 202);
    let got = receiver.wait_for(2).await;
    assert_eq!(
        crate::header(&got[1].headers, "x-github-delivery"),
        failed.guid
    );
    assert_eq!(got[1].body.as_ref(), body.as_slice());
    assert_eq!(github.redelivery_requests(id), vec![failed.id]);
    let list = github
        .wait_for_deliveries(id, 3, Duration::from_secs(5))
        .await;
    assert!(list[0].redelivery);
    assert_eq!(list[0].guid, failed.guid);
    assert_ne!(list[0].id, failed.id);
    assert_eq!(list[0].status_code, 200);

    // Deliveries older than three days cannot be redelivered.
    let old = github.record_failed_delivery(
        id,
        "push",
        b"{}",
        500,
        OffsetDateTime::now_utc() - time::Duration::days(4),
    );
    let (status, _, _) = call(
        &github,
        Method::POST,
        &format!(
            "/repos/octo/hello/hooks/{id}/deliveries/{}/attempts",
            old.id
        ),
        None,
    )
    .await;
    assert_eq!(status, 422);
    assert_clean(&github);
}

#[tokio::test]
async fn config_is_read_masked_and_secret_rotated() {
    let (github, _) = github().await;
    let receiver = Receiver::start().await;
    let (_, _, hook) = call(
        &github,
        Method::POST,
        "/repos/octo/hello/hooks",
        Some(hook_body(&receiver.url, "old", "json")),
    )
    .await;
    let id = hook["id"].as_u64().unwrap();
    let path = format!("/repos/octo/hello/hooks/{id}/config");
    let (status, _, config) = call(&github, Method::GET, &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(config["secret"], "********");
    let (status, _, _) = call(
        &github,
        Method::PATCH,
        &path,
        Some(json!({"secret": "new"})),
    )
    .await;
    assert_eq!(status, 200);
    receiver.wait_for(1).await;
    let (status, _, _) = call(
        &github,
        Method::POST,
        &format!("/repos/octo/hello/hooks/{id}/pings"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let got = receiver.wait_for(2).await;
    assert_eq!(
        crate::header(&got[1].headers, "x-hub-signature-256"),
        signature_256("new", &got[1].body)
    );
    assert_clean(&github);
}

#[tokio::test]
async fn organization_hooks_work_including_endpoints_missing_from_the_trimmed_spec() {
    let (github, _) = github().await;
    let org_id = github.add_org("acme");
    let receiver = Receiver::start().await;
    let (status, _, hook) = call(
        &github,
        Method::POST,
        "/orgs/acme/hooks",
        Some(hook_body(&receiver.url, "s", "json")),
    )
    .await;
    assert_eq!(status, 201, "{hook}");
    let id = hook["id"].as_u64().unwrap();
    let got = receiver.wait_for(1).await;
    assert_eq!(
        crate::header(&got[0].headers, "x-github-hook-installation-target-type"),
        "organization"
    );
    assert_eq!(
        crate::header(&got[0].headers, "x-github-hook-installation-target-id"),
        org_id.to_string()
    );
    assert_eq!(github.org_hooks("acme").len(), 1);
    for path in ["", "/config", "/deliveries"] {
        let (status, _, _) = call(
            &github,
            Method::GET,
            &format!("/orgs/acme/hooks/{id}{path}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{path}");
    }
    let (status, _, _) = call(
        &github,
        Method::POST,
        &format!("/orgs/acme/hooks/{id}/pings"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    receiver.wait_for(2).await;
    let (status, _, _) = call(
        &github,
        Method::DELETE,
        &format!("/orgs/acme/hooks/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_clean(&github);
}

#[tokio::test]
async fn token_without_hook_scope_gets_404_and_scope_headers() {
    let github = FakeGitHub::start().await;
    github.add_repo("octo", "hello");
    github.add_token("weak", "octo", &["read:user"]);
    let response = crate::client()
        .get(format!("{}/repos/octo/hello/hooks", github.url()))
        .header("authorization", "token weak")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(header(response.headers(), "x-oauth-scopes"), "read:user");
    assert_eq!(
        header(response.headers(), "x-accepted-oauth-scopes"),
        "admin:repo_hook, read:repo_hook, repo"
    );
    for auth in [None, Some("Bearer nope")] {
        let mut request = crate::client().get(format!("{}/repos/octo/hello/hooks", github.url()));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        let body: serde_json::Value = response.json().await.unwrap();
        let expected = if auth.is_some() {
            "Bad credentials"
        } else {
            "Requires authentication"
        };
        assert_eq!(body["message"], expected);
    }
    assert_clean(&github);
}

#[tokio::test]
async fn an_event_reaches_only_active_subscribed_hooks_of_the_repository_and_its_org() {
    let (github, _) = github().await;
    github.add_org("octo");
    let receiver = Receiver::start().await;
    let mut ids = Vec::new();
    for (path, events, suffix) in [
        ("/repos/octo/hello/hooks", json!(["push"]), "a"),
        ("/repos/octo/hello/hooks", json!(["issues"]), "b"),
        ("/orgs/octo/hooks", json!(["*"]), "c"),
        ("/repos/octo/hello/hooks", json!(["push"]), "d"),
    ] {
        let url = format!("{}?{suffix}", receiver.url);
        let (status, _, hook) = call(
            &github,
            Method::POST,
            path,
            Some(json!({"name": "web", "events": events, "config": {"url": url, "content_type": "json"}})),
        )
        .await;
        assert_eq!(status, 201, "{hook}");
        ids.push(hook["id"].as_u64().unwrap());
    }
    receiver.wait_for(4).await; // the pings
    github.set_hook_active(ids[3], false);
    let sent = github
        .emit("octo", "hello", "push", &fixture("push.none.0.json"))
        .await;
    let mut hooks: Vec<u64> = sent.iter().map(|d| d.hook_id).collect();
    hooks.sort_unstable();
    assert_eq!(hooks, vec![ids[0], ids[2]]);
    let got = receiver.wait_for(6).await;
    assert!(
        got[4..]
            .iter()
            .all(|r| crate::header(&r.headers, "x-github-event") == "push")
    );
    assert!(
        got[4..]
            .iter()
            .all(|r| r.headers.get("x-hub-signature-256").is_none())
    );
    assert_clean(&github);
}
