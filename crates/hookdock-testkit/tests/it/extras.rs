//! The fake's slow answers, `GET /meta`, repository labels and its count of concurrent writes.

use std::time::{Duration, Instant};

use hookdock_testkit::{DEFAULT_META_HOOKS, Fault};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{TOKEN, assert_clean, call, client, fixture, github, header};

async fn github_with_issue() -> hookdock_testkit::FakeGitHub {
    let (github, _) = github().await;
    let payload: Value = serde_json::from_slice(&fixture("pull_request.opened.0.json")).unwrap();
    github.add_pull("octo", "hello", payload["pull_request"].clone());
    github
}

#[tokio::test]
async fn a_slow_fault_answers_late_and_a_client_timeout_fires_first() {
    let (github, _) = github().await;
    github.fail_next("GET", "/user", Fault::slow(Duration::from_secs(5)));
    let impatient = reqwest::Client::builder()
        .user_agent("hookdock-testkit-tests")
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let err = impatient
        .get(format!("{}/user", github.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");

    // Without a timeout the real answer comes, after the delay.
    github.fail_next(
        "POST",
        "/repos/*/*/labels",
        Fault::slow(Duration::from_millis(300)),
    );
    let started = Instant::now();
    let (status, _, label) = call(
        &github,
        Method::POST,
        "/repos/octo/hello/labels",
        Some(json!({"name": "slow", "color": "00ff00"})),
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(status, 201);
    assert_eq!(label["name"], "slow");

    // A delay on a replacing fault delays that fault's answer.
    github.fail_next(
        "GET",
        "/user",
        Fault::server_error().delay(Duration::from_millis(200)),
    );
    let started = Instant::now();
    assert_eq!(call(&github, Method::GET, "/user", None).await.0, 500);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(call(&github, Method::GET, "/user", None).await.0, 200);
    assert_clean(&github);
}

#[tokio::test]
async fn meta_lists_githubs_hook_ranges_or_the_ones_set_with_or_without_a_token() {
    let (github, _) = github().await;
    let (status, _, meta) = call(&github, Method::GET, "/meta", None).await;
    assert_eq!(status, 200);
    assert_eq!(meta["hooks"], json!(DEFAULT_META_HOOKS));
    assert!(meta["api"].as_array().is_some_and(|a| !a.is_empty()));
    assert_eq!(meta["verifiable_password_authentication"], false);

    github.set_meta_hooks(&["10.0.0.0/8", "fd00::/8"]);
    let anonymous = client()
        .get(format!("{}/meta", github.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 200);
    assert!(!header(anonymous.headers(), "etag").is_empty());
    let meta: Value = anonymous.json().await.unwrap();
    assert_eq!(meta["hooks"], json!(["10.0.0.0/8", "fd00::/8"]));

    let bad_token = client()
        .get(format!("{}/meta", github.url()))
        .bearer_auth("ghp_unknown")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_token.status(), 401);
    assert_clean(&github);
}

#[tokio::test]
async fn repository_labels_are_created_once_and_found_by_name() {
    let github = github_with_issue().await;
    let (status, headers, label) = call(
        &github,
        Method::POST,
        "/repos/octo/hello/labels",
        Some(json!({"name": "needs review", "color": "FBCA04", "description": "Waiting for a reviewer"})),
    )
    .await;
    assert_eq!(status, 201, "{label}");
    assert_eq!(label["name"], "needs review");
    assert_eq!(label["color"], "fbca04");
    assert_eq!(label["description"], "Waiting for a reviewer");
    assert_eq!(label["default"], false);
    assert!(
        header(&headers, "location").ends_with("/repos/octo/hello/labels/needs%20review"),
        "{headers:?}"
    );

    // The same name, in another case: GitHub's 422 `already_exists`.
    let (status, _, err) = call(
        &github,
        Method::POST,
        "/repos/octo/hello/labels",
        Some(json!({"name": "Needs Review", "color": "000000"})),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(err["message"], "Validation Failed");
    assert_eq!(err["errors"][0]["code"], "already_exists");
    assert_eq!(err["errors"][0]["field"], "name");

    // A colour that is not six hex digits.
    let (status, _, err) = call(
        &github,
        Method::POST,
        "/repos/octo/hello/labels",
        Some(json!({"name": "bad", "color": "#12345"})),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(err["errors"][0]["code"], "invalid");
    assert_eq!(err["errors"][0]["field"], "color");

    let (status, _, got) = call(
        &github,
        Method::GET,
        "/repos/octo/hello/labels/needs%20review",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(got["id"], label["id"]);
    assert_eq!(
        call(&github, Method::GET, "/repos/octo/hello/labels/nope", None)
            .await
            .0,
        404
    );

    // Adding an unknown label to an issue defines it in the repository, with the default colour;
    // a known one keeps its colour.
    let (status, _, on_issue) = call(
        &github,
        Method::POST,
        "/repos/octo/hello/issues/2/labels",
        Some(json!({"labels": ["needs review", "triage"]})),
    )
    .await;
    assert_eq!(status, 200);
    let colours: Vec<(&str, &str)> = on_issue
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["name"].as_str().unwrap(), l["color"].as_str().unwrap()))
        .collect();
    assert!(colours.contains(&("needs review", "fbca04")), "{colours:?}");
    assert!(colours.contains(&("triage", "ededed")), "{colours:?}");
    let names: Vec<String> = github
        .repo_labels("octo", "hello")
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert!(names.contains(&"needs review".to_owned()));
    assert!(names.contains(&"triage".to_owned()));
    let (_, _, listed) = call(&github, Method::GET, "/repos/octo/hello/labels", None).await;
    assert_eq!(listed.as_array().unwrap().len(), names.len());

    // A label seeded by the test is there for the API too.
    github.add_label("octo", "hello", "bug", "#d73a4a");
    let (status, _, bug) = call(&github, Method::GET, "/repos/octo/hello/labels/bug", None).await;
    assert_eq!(status, 200);
    assert_eq!(bug["color"], "d73a4a");
    assert_clean(&github);
}

#[tokio::test]
async fn a_label_body_github_would_reject_is_a_contract_violation() {
    let (github, _) = github().await;
    let (status, _, _) = call(
        &github,
        Method::POST,
        "/repos/octo/hello/labels",
        Some(json!({"colour": "ffffff"})),
    )
    .await;
    assert_eq!(status, 422);
    let violations = github.contract_violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].contains("`name` (string) is required"));
    assert!(violations[0].contains("unknown property `colour`"));
}

#[tokio::test]
async fn concurrent_writes_are_counted() {
    let github = github_with_issue().await;
    assert_eq!(github.max_concurrent_writes(), 0);
    github.fail_next(
        "POST",
        "/repos/octo/hello/issues/2/comments",
        Fault::slow(Duration::from_millis(200)).times(2),
    );
    let post = |n: u32| {
        client()
            .post(format!(
                "{}/repos/octo/hello/issues/2/comments",
                github.url()
            ))
            .bearer_auth(TOKEN)
            .json(&json!({"body": format!("comment {n}")}))
            .send()
    };
    let (a, b) = tokio::join!(post(1), post(2));
    assert_eq!(a.unwrap().status(), 201);
    assert_eq!(b.unwrap().status(), 201);
    assert_eq!(github.max_concurrent_writes(), 2);
    // Reads are not counted.
    let _ = tokio::join!(
        call(&github, Method::GET, "/user", None),
        call(&github, Method::GET, "/user", None)
    );
    assert_eq!(github.max_concurrent_writes(), 2);
    assert_eq!(github.issue_comments("octo", "hello", 2).len(), 2);
    assert_clean(&github);
}

#[tokio::test]
async fn file_urls_in_contents_answers_are_percent_encoded() {
    let (github, _) = github().await;
    github.put_file("octo", "hello", "docs/read me.md", b"hello\n");
    let (status, _, file) = call(
        &github,
        Method::GET,
        "/repos/octo/hello/contents/docs/read%20me.md",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(file["path"], "docs/read me.md");
    assert!(
        file["url"]
            .as_str()
            .unwrap()
            .contains("/contents/docs/read%20me.md?"),
        "{file}"
    );
    assert_clean(&github);
}
