use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};

use crate::{TOKEN, assert_clean, call, client, fixture, github, header};

/// `octo/hello` with the pull request of a real `pull_request.opened` payload (number 2) and
/// 45 changed files.
async fn github_with_pull() -> (hookdock_testkit::FakeGitHub, Value) {
    let (github, _) = github().await;
    let payload: Value = serde_json::from_slice(&fixture("pull_request.opened.0.json")).unwrap();
    let pull = payload["pull_request"].clone();
    github.add_pull("octo", "hello", pull.clone());
    let files = (0..45)
        .map(|i| {
            json!({
                "sha": "bbcd538c8e72b8c175046e27cc8f907076331401",
                "filename": format!("src/file{i}.rs"),
                "status": "modified",
                "additions": 2,
                "deletions": 1,
                "changes": 3,
                "blob_url": "https://github.com/octo/hello/blob/x/src/file.rs",
                "raw_url": "https://github.com/octo/hello/raw/x/src/file.rs",
                "contents_url": "https://api.github.com/repos/octo/hello/contents/src/file.rs?ref=x",
                "patch": "@@ -10,3 +10,4 @@\n context\n-old\n+new\n+more\n end"
            })
        })
        .collect();
    github.set_pull_files("octo", "hello", 2, files);
    (github, pull)
}

#[tokio::test]
async fn pull_request_files_and_reviews_follow_the_contract() {
    let (github, pull) = github_with_pull().await;
    let (status, _, got) = call(&github, Method::GET, "/repos/octo/hello/pulls/2", None).await;
    assert_eq!(status, 200);
    assert_eq!(got["head"]["sha"], pull["head"]["sha"]);

    let (status, headers, page) = call(
        &github,
        Method::GET,
        "/repos/octo/hello/pulls/2/files?per_page=20",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page.as_array().unwrap().len(), 20);
    let link = header(&headers, "link");
    assert!(link.contains("page=2>; rel=\"next\""), "{link}");
    assert!(link.contains("page=3>; rel=\"last\""), "{link}");
    let (_, headers, page) = call(
        &github,
        Method::GET,
        "/repos/octo/hello/pulls/2/files?per_page=20&page=3",
        None,
    )
    .await;
    assert_eq!(page.as_array().unwrap().len(), 5);
    assert!(!header(&headers, "link").contains("rel=\"next\""));

    let diff = client()
        .get(format!("{}/repos/octo/hello/pulls/2", github.url()))
        .bearer_auth(TOKEN)
        .header("accept", "application/vnd.github.diff")
        .send()
        .await
        .unwrap();
    assert_eq!(diff.status(), 200);
    assert!(
        diff.text()
            .await
            .unwrap()
            .contains("diff --git a/src/file0.rs")
    );

    let review = json!({
        "commit_id": pull["head"]["sha"],
        "body": "Looks good with one nit",
        "event": "COMMENT",
        "comments": [{"path": "src/file3.rs", "body": "nit", "line": 11, "side": "RIGHT"}]
    });
    let (status, _, created) = call(
        &github,
        Method::POST,
        "/repos/octo/hello/pulls/2/reviews",
        Some(review),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["state"], "COMMENTED");
    assert_eq!(created["user"]["login"], "octo");
    assert_eq!(github.reviews("octo", "hello", 2).len(), 1);
    assert_eq!(github.review_comments("octo", "hello", 2).len(), 1);

    // A line outside the diff fails the whole review, as on GitHub.
    let (status, _, err) = call(
        &github,
        Method::POST,
        "/repos/octo/hello/pulls/2/reviews",
        Some(json!({"event": "COMMENT", "body": "x",
            "comments": [{"path": "src/file3.rs", "body": "far away", "line": 99}]})),
    )
    .await;
    assert_eq!(status, 422);
    assert!(
        err["errors"][0]
            .as_str()
            .unwrap()
            .contains("must be part of the diff")
    );
    assert_eq!(github.reviews("octo", "hello", 2).len(), 1);

    let (status, _, list) = call(
        &github,
        Method::GET,
        "/repos/octo/hello/pulls/2/reviews",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);

    let (status, _, comment) = call(
        &github,
        Method::POST,
        "/repos/octo/hello/pulls/2/comments",
        Some(json!({"body": "single", "commit_id": pull["head"]["sha"], "path": "src/file1.rs", "line": 12, "side": "RIGHT"})),
    )
    .await;
    assert_eq!(status, 201, "{comment}");
    let (_, _, list) = call(
        &github,
        Method::GET,
        "/repos/octo/hello/pulls/2/comments",
        None,
    )
    .await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_clean(&github);
}

#[tokio::test]
async fn issue_comments_labels_assignees_and_issue_updates_are_stored() {
    let (github, _) = github_with_pull().await;
    let (status, _, comment) = call(
        &github,
        Method::POST,
        "/repos/octo/hello/issues/2/comments",
        Some(json!({"body": "first"})),
    )
    .await;
    assert_eq!(status, 201, "{comment}");
    let id = comment["id"].as_u64().unwrap();
    let (status, _, updated) = call(
        &github,
        Method::PATCH,
        &format!("/repos/octo/hello/issues/comments/{id}"),
        Some(json!({"body": "edited"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(updated["body"], "edited");
    assert_eq!(
        github.issue_comments("octo", "hello", 2)[0]["body"],
        "edited"
    );
    let (_, _, list) = call(
        &github,
        Method::GET,
        "/repos/octo/hello/issues/2/comments",
        None,
    )
    .await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    let (status, _, labels) = call(
        &github,
        Method::POST,
        "/repos/octo/hello/issues/2/labels",
        Some(json!({"labels": ["bug", "needs review"]})),
    )
    .await;
    assert_eq!(status, 200, "{labels}");
    assert_eq!(
        github.labels("octo", "hello", 2),
        vec!["bug", "needs review"]
    );
    let (status, _, _) = call(
        &github,
        Method::DELETE,
        "/repos/octo/hello/issues/2/labels/needs%20review",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(github.labels("octo", "hello", 2), vec!["bug"]);
    let (status, _, _) = call(
        &github,
        Method::DELETE,
        "/repos/octo/hello/issues/2/labels/nope",
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (_, _, list) = call(
        &github,
        Method::GET,
        "/repos/octo/hello/issues/2/labels",
        None,
    )
    .await;
    assert_eq!(list[0]["name"], "bug");

    let (status, _, issue) = call(
        &github,
        Method::POST,
        "/repos/octo/hello/issues/2/assignees",
        Some(json!({"assignees": ["hubot"]})),
    )
    .await;
    assert_eq!(status, 201, "{issue}");
    assert_eq!(issue["assignees"][0]["login"], "hubot");

    let (status, _, issue) = call(
        &github,
        Method::PATCH,
        "/repos/octo/hello/issues/2",
        Some(json!({"state": "closed", "state_reason": "completed"})),
    )
    .await;
    assert_eq!(status, 200, "{issue}");
    assert_eq!(issue["state"], "closed");
    let (_, _, issue) = call(&github, Method::GET, "/repos/octo/hello/issues/2", None).await;
    assert_eq!(issue["state"], "closed");
    assert!(issue["pull_request"]["url"].is_string());
    assert_eq!(
        call(&github, Method::GET, "/repos/octo/hello/issues/999", None)
            .await
            .0,
        404
    );
    assert_clean(&github);
}

#[tokio::test]
async fn contents_user_repo_rate_limit_and_permission_are_served() {
    let (github, repo_id) = github().await;
    github.put_file(
        "octo",
        "hello",
        ".github/hookdock.toml",
        b"[review]\nenabled = true\n",
    );
    let (status, headers, file) = call(
        &github,
        Method::GET,
        "/repos/octo/hello/contents/.github/hookdock.toml?ref=main",
        None,
    )
    .await;
    assert_eq!(status, 200, "{file}");
    assert!(!header(&headers, "etag").is_empty());
    let content: String = file["content"].as_str().unwrap().split('\n').collect();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(content)
        .unwrap();
    assert_eq!(decoded, b"[review]\nenabled = true\n");
    assert_eq!(file["sha"].as_str().unwrap().len(), 40);
    let (status, _, dir) = call(
        &github,
        Method::GET,
        "/repos/octo/hello/contents/.github",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(dir[0]["type"], "file");
    let (status, _, _) = call(
        &github,
        Method::GET,
        "/repos/octo/hello/contents/missing.txt",
        None,
    )
    .await;
    assert_eq!(status, 404);

    let (status, _, user) = call(&github, Method::GET, "/user", None).await;
    assert_eq!((status, user["login"].as_str()), (200, Some("octo")));
    let (status, _, repo) = call(&github, Method::GET, "/repos/octo/hello", None).await;
    assert_eq!(status, 200);
    assert_eq!(repo["id"], repo_id);
    assert_eq!(repo["full_name"], "octo/hello");
    let (status, _, limits) = call(&github, Method::GET, "/rate_limit", None).await;
    assert_eq!(status, 200);
    assert_eq!(limits["resources"]["core"]["limit"], 5000);
    assert_eq!(
        call(&github, Method::GET, "/repos/octo/missing", None)
            .await
            .0,
        404
    );

    github.set_permission("octo", "hello", "hubot", "write");
    let (status, _, perm) = call(
        &github,
        Method::GET,
        "/repos/octo/hello/collaborators/hubot/permission",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(perm["permission"], "write");
    assert_eq!(perm["user"]["login"], "hubot");
    assert_clean(&github);
}

#[tokio::test]
async fn operations_without_state_answer_githubs_examples_that_fit_the_schema() {
    let (github, _) = github().await;
    for (method, path, body) in [
        (Method::GET, "/repos/octo/hello/languages", None),
        (
            Method::GET,
            "/repos/octo/hello/contributors?per_page=100",
            None,
        ),
        (Method::GET, "/repos/octo/hello/issues?state=all", None),
        (Method::GET, "/repos/octo/hello/pulls?state=open", None),
        (Method::GET, "/user/repos?per_page=100", None),
        (Method::GET, "/app/installations", None),
        (Method::GET, "/app/hook/deliveries?per_page=10", None),
        (Method::POST, "/app/hook/deliveries/1/attempts", None),
        (
            Method::POST,
            "/app/installations/1/access_tokens",
            Some(json!({"repositories": ["hello"]})),
        ),
        (
            Method::PATCH,
            "/repos/octo/hello/check-runs/4",
            Some(json!({"status": "completed", "conclusion": "success"})),
        ),
        (
            Method::POST,
            "/repos/octo/hello/statuses/6dcb09b5b57875f334f61aebed695e2e4193db5e",
            Some(json!({"state": "success", "context": "hookdock"})),
        ),
        (
            Method::POST,
            "/repos/octo/hello/check-runs",
            Some(
                json!({"name": "hookdock", "head_sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e"}),
            ),
        ),
    ] {
        let (status, _, answer) = call(&github, method, path, body).await;
        assert!((200..300).contains(&status), "{path}: {status} {answer}");
    }
    assert_clean(&github);
}

#[tokio::test]
async fn every_pull_request_of_the_webhook_fixtures_is_served_as_a_valid_rest_object() {
    let (github, _) = github().await;
    let dir = format!(
        "{}/../../../shared/fixtures/webhooks",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut served = 0;
    for (i, entry) in std::fs::read_dir(dir).unwrap().enumerate() {
        let path = entry.unwrap().path();
        let payload: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let Some(pull) = payload.get("pull_request").filter(|p| p["number"].is_u64()) else {
            continue;
        };
        let repo = format!("r{i}");
        github.add_repo("octo", &repo);
        github.add_pull("octo", &repo, pull.clone());
        let number = pull["number"].as_u64().unwrap();
        for what in ["pulls", "issues"] {
            let (status, _, _) = call(
                &github,
                Method::GET,
                &format!("/repos/octo/{repo}/{what}/{number}"),
                None,
            )
            .await;
            assert_eq!(status, 200, "{}", path.display());
        }
        served += 1;
    }
    assert!(served > 20, "{served}");
    assert_clean(&github);
}

#[tokio::test]
async fn an_answer_breaking_the_response_schema_is_reported_as_a_fake_bug() {
    let (github, _) = github().await;
    github.add_pull("octo", "hello", json!({"number": 7, "state": 5}));
    let (status, _, _) = call(&github, Method::GET, "/repos/octo/hello/pulls/7", None).await;
    assert_eq!(status, 200);
    let bugs = github.fake_bugs();
    assert_eq!(bugs.len(), 1, "{bugs:?}");
    assert!(
        bugs[0].contains("pulls/get 200 response: $.state: expected string"),
        "{bugs:?}"
    );
    assert!(github.contract_violations().is_empty());
}

/// Commits the fake made up for a pull request added without any, then ones a test pushed:
/// GitHub's `commit` objects, oldest first, paged with `Link` headers, at most 250.
#[tokio::test]
async fn pull_request_commits_are_listed_oldest_first_in_pages_of_at_most_250() {
    use hookdock_testkit::FakeCommit;
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    let (github, pull) = github_with_pull().await;
    // The fixture's pull request: one commit, its head, written an hour before it was opened.
    let (status, _, page) = call(
        &github,
        Method::GET,
        "/repos/octo/hello/pulls/2/commits",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let commits = page.as_array().unwrap();
    assert_eq!(commits.len(), 1);
    assert_eq!(commits[0]["sha"], pull["head"]["sha"]);
    assert_eq!(
        commits[0]["commit"]["author"]["date"],
        "2019-05-15T14:20:33Z"
    );
    assert_eq!(
        commits[0]["commit"]["committer"]["date"],
        "2019-05-15T14:20:33Z"
    );
    assert_eq!(commits[0]["author"]["login"], pull["user"]["login"]);
    assert_eq!(commits[0]["parents"], json!([]));

    let t0 = OffsetDateTime::parse("2024-03-01T10:00:00Z", &Rfc3339).unwrap();
    let pushed: Vec<FakeCommit> = (0..260u32)
        .map(|i| {
            let mut c = FakeCommit::new(
                &format!("{i:040x}"),
                "monalisa",
                t0 + time::Duration::minutes(i64::from(i)),
            );
            // Rebased: written earlier than committed.
            c.committed_at = t0 + time::Duration::days(1);
            c
        })
        .collect();
    github.set_pull_commits("octo", "hello", 2, &pushed);
    let (_, _, pr) = call(&github, Method::GET, "/repos/octo/hello/pulls/2", None).await;
    assert_eq!(pr["commits"], 260, "the count follows the push");
    assert_eq!(pr["head"]["sha"], format!("{:040x}", 259));

    let (status, headers, first) = call(
        &github,
        Method::GET,
        "/repos/octo/hello/pulls/2/commits?per_page=100",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let first = first.as_array().unwrap().clone();
    assert_eq!(first.len(), 100);
    assert_eq!(first[0]["sha"], format!("{:040x}", 0));
    assert_eq!(first[0]["commit"]["author"]["date"], "2024-03-01T10:00:00Z");
    assert_eq!(
        first[0]["commit"]["committer"]["date"],
        "2024-03-02T10:00:00Z"
    );
    assert_eq!(first[1]["parents"][0]["sha"], format!("{:040x}", 0));
    let link = header(&headers, "link");
    assert!(link.contains("page=2>; rel=\"next\""), "{link}");
    assert!(link.contains("page=3>; rel=\"last\""), "{link}");
    let (_, headers, last) = call(
        &github,
        Method::GET,
        "/repos/octo/hello/pulls/2/commits?per_page=100&page=3",
        None,
    )
    .await;
    let last = last.as_array().unwrap();
    assert_eq!(last.len(), 50, "GitHub lists at most 250 commits");
    assert_eq!(last[49]["sha"], format!("{:040x}", 249));
    assert!(!header(&headers, "link").contains("rel=\"next\""));

    let (status, _, _) = call(
        &github,
        Method::GET,
        "/repos/octo/hello/pulls/99/commits",
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_clean(&github);
}

/// Draft changes and label changes are issue events, oldest first, and change the pull
/// request as GitHub does.
#[tokio::test]
async fn draft_changes_and_labels_are_listed_as_issue_events() {
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    let (github, _) = github_with_pull().await;
    let at = |t: &str| OffsetDateTime::parse(t, &Rfc3339).unwrap();
    github.set_draft("octo", "hello", 2, "octo", at("2024-03-01T10:00:00Z"), true);
    let (_, _, pr) = call(&github, Method::GET, "/repos/octo/hello/pulls/2", None).await;
    assert_eq!(
        (&pr["draft"], &pr["updated_at"]),
        (&json!(true), &json!("2024-03-01T10:00:00Z"))
    );
    call(
        &github,
        Method::POST,
        "/repos/octo/hello/issues/2/labels",
        Some(json!({"labels": ["bug"]})),
    )
    .await;
    github.set_draft(
        "octo",
        "hello",
        2,
        "octo",
        at("2024-03-01T12:30:00Z"),
        false,
    );
    let (_, _, pr) = call(&github, Method::GET, "/repos/octo/hello/pulls/2", None).await;
    assert_eq!(pr["draft"], false);

    let (status, _, events) = call(
        &github,
        Method::GET,
        "/repos/octo/hello/issues/2/events?per_page=2",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let events = events.as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event"], "convert_to_draft");
    assert_eq!(events[0]["created_at"], "2024-03-01T10:00:00Z");
    assert_eq!(events[0]["actor"]["login"], "octo");
    assert_eq!(events[1]["event"], "labeled");
    assert_eq!(events[1]["label"]["name"], "bug");
    let (_, _, rest) = call(
        &github,
        Method::GET,
        "/repos/octo/hello/issues/2/events?per_page=2&page=2",
        None,
    )
    .await;
    assert_eq!(rest[0]["event"], "ready_for_review");
    assert_eq!(rest[0]["created_at"], "2024-03-01T12:30:00Z");
    assert_eq!(github.issue_events("octo", "hello", 2).len(), 3);

    let (status, _, _) = call(
        &github,
        Method::GET,
        "/repos/octo/hello/issues/99/events",
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_clean(&github);
}
