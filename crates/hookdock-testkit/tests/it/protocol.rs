use hookdock_testkit::Fault;
use reqwest::Method;
use serde_json::json;

use crate::{TOKEN, assert_clean, call, client, github, header};

#[tokio::test]
async fn requests_breaking_the_contract_are_answered_like_github_and_listed() {
    let (github, _) = github().await;
    // A body that fails the request schema.
    let (status, _, body) = call(
        &github,
        Method::POST,
        "/repos/octo/hello/hooks",
        Some(json!({"config": {"url": "http://127.0.0.1:9/x"}, "active": "yes"})),
    )
    .await;
    assert_eq!(status, 422);
    assert!(
        body["message"].as_str().unwrap().contains("$.active"),
        "{body}"
    );
    // A path GitHub does not have, a method it does not allow, an id that is not an integer.
    assert_eq!(
        call(&github, Method::GET, "/repos/octo/hello/webhooks", None)
            .await
            .0,
        404
    );
    assert_eq!(
        call(&github, Method::PUT, "/repos/octo/hello/hooks/1", None)
            .await
            .0,
        404
    );
    assert_eq!(
        call(&github, Method::GET, "/repos/octo/hello/hooks/abc", None)
            .await
            .0,
        404
    );
    // A query parameter of the wrong type and one that does not exist.
    assert_eq!(
        call(
            &github,
            Method::GET,
            "/repos/octo/hello/hooks?per_page=many",
            None
        )
        .await
        .0,
        422
    );
    assert_eq!(
        call(
            &github,
            Method::GET,
            "/repos/octo/hello/hooks?perpage=5",
            None
        )
        .await
        .0,
        422
    );
    // A JSON body sent as a form.
    let response = client()
        .post(format!(
            "{}/repos/octo/hello/issues/1/comments",
            github.url()
        ))
        .bearer_auth(TOKEN)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"body":"hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    // No User-Agent.
    let bare = reqwest::Client::new();
    let response = bare
        .get(format!("{}/user", github.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    let violations = github.contract_violations();
    assert_eq!(violations.len(), 8, "{violations:#?}");
    assert!(violations[0].contains("request body does not match the schema"));
    assert!(violations[1].contains("no such path"));
    assert!(violations[2].contains("method PUT"));
    assert!(violations[3].contains("hook_id"));
    assert!(violations[5].contains("unknown query parameter `perpage`"));
    assert!(violations[6].contains("Content-Type"));
    assert!(violations[7].contains("User-Agent"));
    assert_eq!(github.fake_bugs(), Vec::<String>::new());
}

#[tokio::test]
async fn injected_faults_are_answered_then_normal_service_resumes() {
    let (github, _) = github().await;
    github.fail_next("GET", "/repos/*/*/hooks", Fault::secondary_rate_limit(7));
    let (status, headers, body) = call(&github, Method::GET, "/repos/octo/hello/hooks", None).await;
    assert_eq!(status, 403);
    assert_eq!(header(&headers, "retry-after"), "7");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("secondary rate limit")
    );
    assert_eq!(
        call(&github, Method::GET, "/repos/octo/hello/hooks", None)
            .await
            .0,
        200
    );

    github.fail_next("GET", "/user", Fault::primary_rate_limit(1_900_000_000));
    let (status, headers, _) = call(&github, Method::GET, "/user", None).await;
    assert_eq!(status, 403);
    assert_eq!(header(&headers, "x-ratelimit-remaining"), "0");
    assert_eq!(header(&headers, "x-ratelimit-reset"), "1900000000");

    github.fail_next("GET", "/user", Fault::server_error().times(2));
    assert_eq!(call(&github, Method::GET, "/user", None).await.0, 500);
    assert_eq!(call(&github, Method::GET, "/user", None).await.0, 500);
    assert_eq!(call(&github, Method::GET, "/user", None).await.0, 200);
    github.fail_next("GET", "/repos/octo/hello", Fault::not_found());
    assert_eq!(
        call(&github, Method::GET, "/repos/octo/hello", None)
            .await
            .0,
        404
    );
    assert_clean(&github);
}

#[tokio::test]
async fn rate_limit_headers_count_down_and_an_empty_budget_is_refused() {
    let (github, _) = github().await;
    let reset = time::OffsetDateTime::now_utc().unix_timestamp() + 600;
    github.set_rate_limit(2, reset);
    let (_, headers, _) = call(&github, Method::GET, "/user", None).await;
    assert_eq!(header(&headers, "x-ratelimit-remaining"), "1");
    assert_eq!(header(&headers, "x-ratelimit-reset"), reset.to_string());
    assert_eq!(header(&headers, "x-ratelimit-limit"), "5000");
    assert_eq!(header(&headers, "x-ratelimit-resource"), "core");
    assert!(!header(&headers, "x-github-request-id").is_empty());
    let (_, headers, _) = call(&github, Method::GET, "/user", None).await;
    assert_eq!(header(&headers, "x-ratelimit-remaining"), "0");
    let (status, _, body) = call(&github, Method::GET, "/user", None).await;
    assert_eq!(status, 403);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("API rate limit exceeded")
    );
    assert_clean(&github);
}

#[tokio::test]
async fn conditional_get_with_etag_answers_304_without_spending_the_rate_limit() {
    let (github, _) = github().await;
    let url = format!("{}/repos/octo/hello/hooks", github.url());
    let first = client().get(&url).bearer_auth(TOKEN).send().await.unwrap();
    let etag = header(first.headers(), "etag").to_owned();
    assert!(etag.starts_with("W/\""), "{etag}");
    let remaining: u32 = header(first.headers(), "x-ratelimit-remaining")
        .parse()
        .unwrap();
    let second = client()
        .get(&url)
        .bearer_auth(TOKEN)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 304);
    assert_eq!(
        header(second.headers(), "x-ratelimit-remaining"),
        remaining.to_string()
    );
    assert!(second.bytes().await.unwrap().is_empty());
    assert_clean(&github);
}
