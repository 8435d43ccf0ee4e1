//! The review and size-label automations end to end: real `pull_request` payloads signed and
//! posted to hookdock, which reviews through the fake GitHub (and the fake language model) and
//! labels; the tests check what a user sees on GitHub and what hookdock stored.

use std::time::Duration;

use hookdock_testkit::{FakeGitHub, FakeLlm, LlmReply};
use serde_json::{Value, json};

use hookdock::config::Sources;

use crate::helpers::*;

const OWNER: &str = "Codertocat";
const REPO: &str = "Hello-World";
const GH_TOKEN: &str = "ghp_automations0123456789abcdefghijklmnop";
/// Who hookdock acts as on GitHub.
const BOT: &str = "hookdock-bot";

const LIB_PATCH: &str =
    "@@ -1,3 +1,6 @@\n fn a() {}\n+fn b() {\n+    dbg!(1);\n+}\n // end\n+// TODO: more\n";

struct Env {
    github: FakeGitHub,
    llm: FakeLlm,
    app: TestApp,
}

async fn env(backend: &Backend, configure: impl FnOnce(Sources) -> Sources) -> Env {
    let github = FakeGitHub::start().await;
    github.add_token(GH_TOKEN, BOT, &["repo"]);
    github.add_repo(OWNER, REPO);
    let llm = FakeLlm::start().await;
    let api = github.url();
    let llm_url = llm.url();
    let app = TestApp::spawn_with(
        backend,
        move |s| {
            configure(
                s.set("github_api_url", api)
                    .set("github_token", GH_TOKEN)
                    .set("github.write_interval_ms", 0)
                    .set("hooks.sweep_interval_secs", 0)
                    .set("hooks.check_interval_secs", 0)
                    .set("hooks.rotation_interval_days", 0)
                    .set("handlers.automations.enabled", true)
                    .set("handlers.metrics.enabled", false)
                    .set("llm.base_url", llm_url)
                    .set("llm.max_retries", 0),
            )
        },
        Vec::new(),
    )
    .await;
    Env { github, llm, app }
}

/// `pull_request.opened.0` (a real payload) turned into `action` on PR `number` at `sha`.
fn pull_event(action: &str, number: u64, sha: &str) -> Value {
    let mut event: Value =
        serde_json::from_slice(&fixture("pull_request.opened.0")).expect("fixture is JSON");
    event["action"] = json!(action);
    event["number"] = json!(number);
    let pull = &mut event["pull_request"];
    pull["number"] = json!(number);
    pull["id"] = json!(1_000 + number);
    pull["head"]["sha"] = json!(sha);
    pull["draft"] = json!(false);
    event
}

fn file(path: &str, patch: Option<&str>, additions: u64, deletions: u64) -> Value {
    let mut f = json!({
        "sha": "bbcd538c8e72b8c175046e27cc8f907076331401",
        "filename": path,
        "status": "modified",
        "additions": additions,
        "deletions": deletions,
        "changes": additions + deletions,
        "blob_url": format!("https://github.com/{OWNER}/{REPO}/blob/x/{path}"),
        "raw_url": format!("https://github.com/{OWNER}/{REPO}/raw/x/{path}"),
        "contents_url": format!("https://api.github.com/repos/{OWNER}/{REPO}/contents/{path}"),
    });
    if let Some(p) = patch {
        f["patch"] = json!(p);
    }
    f
}

impl Env {
    /// Makes the fake GitHub know the pull request as `event` describes it, with `files`.
    fn publish(&self, event: &Value, files: Vec<Value>) {
        let number = event["pull_request"]["number"].as_u64().expect("number");
        self.github
            .add_pull(OWNER, REPO, event["pull_request"].clone());
        self.github.set_pull_files(OWNER, REPO, number, files);
    }

    async fn deliver(&self, event_name: &str, event: &Value) -> i64 {
        let body = serde_json::to_vec(event).expect("serializes");
        let (status, answer) = self.app.post(event_name, &body, &new_delivery_id()).await;
        assert_eq!(status, 200, "{answer}");
        answer["event_id"].as_i64().expect("event id")
    }

    fn reviews(&self, number: u64) -> Vec<Value> {
        self.github.reviews(OWNER, REPO, number)
    }

    fn hookdock_comments(&self, number: u64) -> Vec<String> {
        self.github
            .issue_comments(OWNER, REPO, number)
            .iter()
            .filter(|c| c["user"]["login"] == BOT)
            .filter_map(|c| c["body"].as_str().map(str::to_owned))
            .collect()
    }

    async fn review_runs(&self, number: u64) -> Value {
        let (status, body) = self
            .app
            .api_get(&format!(
                "/api/v1/repos/{OWNER}/{REPO}/pulls/{number}/reviews"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Runs the queue step by step (`queue.workers = 0`) until no job is left.
    async fn drain(&self) {
        let worker = self.app.manual_worker();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.app.store.unfinished_jobs().await.expect("count") > 0 {
            assert!(std::time::Instant::now() < deadline, "jobs did not finish");
            worker.run_once().await.expect("worker step");
        }
    }

    /// The `handler` job of an event, as the events API shows it.
    async fn job(&self, event_id: i64, handler: &str) -> Value {
        self.app.job(event_id, handler).await
    }

    fn assert_contract_kept(&self) {
        assert_eq!(self.github.contract_violations(), Vec::<String>::new());
        assert_eq!(self.github.fake_bugs(), Vec::<String>::new());
    }
}

crate::backend_tests!(
    rule_review_posts_inline_comments_a_summary_and_a_size_label,
    replaying_a_finished_review_posts_nothing_new,
    a_review_posted_before_a_crash_is_adopted_not_repeated,
    a_burst_of_pushes_gets_one_review_of_the_newest_head,
    a_plain_comment_does_not_supersede_a_waiting_review,
    llm_findings_outside_the_diff_go_to_the_review_body,
    unusable_llm_output_falls_back_to_the_rules_and_says_so,
    llm_timeout_retries_the_job_and_keeps_the_audit,
    generated_files_do_not_count_and_the_old_size_label_goes,
    drafts_and_bot_pull_requests_are_skipped_unless_configured,
    an_invalid_config_file_is_reported_on_the_pull_request,
);

async fn rule_review_posts_inline_comments_a_summary_and_a_size_label(backend: Backend) {
    let env = env(&backend, |s| s).await;
    let sha = "1111111aaaaaaa0000000000000000000000000a";
    let event = pull_event("opened", 7, sha);
    env.publish(
        &event,
        vec![
            file("src/lib.rs", Some(LIB_PATCH), 4, 0),
            file("Cargo.lock", Some("@@ -1 +1,2 @@\n a\n+b\n"), 1, 0),
        ],
    );
    let event_id = env.deliver("pull_request", &event).await;
    env.app.wait_until_idle().await;

    let reviews = env.reviews(7);
    assert_eq!(reviews.len(), 1, "{reviews:?}");
    assert_eq!(reviews[0]["state"], "COMMENTED");
    assert_eq!(reviews[0]["commit_id"], sha);
    let body = reviews[0]["body"].as_str().unwrap_or_default();
    assert!(body.contains("hookdock review of `1111111`"), "{body}");
    assert!(
        body.contains("Cargo.lock"),
        "skipped files are listed: {body}"
    );
    assert!(
        body.contains("missing-tests"),
        "PR-level finding in the body: {body}"
    );
    let mut comments: Vec<(String, u64, String)> = env
        .github
        .review_comments(OWNER, REPO, 7)
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap_or_default().to_owned(),
                c["line"].as_u64().unwrap_or_default(),
                c["body"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    comments.sort();
    assert_eq!(comments.len(), 2, "{comments:?}");
    assert_eq!((comments[0].0.as_str(), comments[0].1), ("src/lib.rs", 3));
    assert!(comments[0].2.contains("debug-print"), "{comments:?}");
    assert_eq!((comments[1].0.as_str(), comments[1].1), ("src/lib.rs", 6));
    assert!(comments[1].2.contains("todo"), "{comments:?}");

    let summaries = env.hookdock_comments(7);
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    assert!(summaries[0].contains("<!-- hookdock:review-summary -->"));
    assert!(
        summaries[0].contains("Reviewed `1111111` with rules: 3 findings (2 on lines of the diff)"),
        "{}",
        summaries[0]
    );

    // 4 changed lines counted; the lock file is not.
    assert_eq!(env.github.labels(OWNER, REPO, 7), ["size/XS"]);

    let runs = env.review_runs(7).await;
    let run = &runs["reviews"][0];
    assert_eq!(run["status"], "reviewed");
    assert_eq!(run["head_sha"], sha);
    assert_eq!(run["reviewer"], "rules");
    assert_eq!(run["event_id"], event_id);
    let placements: Vec<(&str, &str)> = run["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["source"].as_str().unwrap_or(""),
                f["placement"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(placements.len(), 3, "{placements:?}");
    assert!(placements.contains(&("debug-print", "inline")));
    assert!(placements.contains(&("todo", "inline")));
    assert!(placements.contains(&("missing-tests", "summary")));

    let (_, detail) = env.app.api_get(&format!("/api/v1/events/{event_id}")).await;
    let kinds: Vec<&str> = detail["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|a| a["handler"] == "review")
        .map(|a| a["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds, ["create_review", "create_comment"]);
    env.assert_contract_kept();
    env.app.stop().await;
}

async fn replaying_a_finished_review_posts_nothing_new(backend: Backend) {
    let env = env(&backend, |s| s).await;
    let event = pull_event("opened", 8, "2222222bbbbbbb0000000000000000000000000b");
    env.publish(&event, vec![file("src/lib.rs", Some(LIB_PATCH), 4, 0)]);
    let event_id = env.deliver("pull_request", &event).await;
    env.app.wait_until_idle().await;
    assert_eq!(env.reviews(8).len(), 1);

    let (status, body) = env
        .app
        .api_post(&format!("/api/v1/events/{event_id}/replay"))
        .await;
    assert_eq!(status, 200, "{body}");
    env.app.wait_until_idle().await;
    assert_eq!(env.reviews(8).len(), 1, "no second review");
    assert_eq!(env.hookdock_comments(8).len(), 1, "no second summary");
    assert_eq!(env.github.labels(OWNER, REPO, 8), ["size/XS"]);
    let (_, detail) = env.app.api_get(&format!("/api/v1/events/{event_id}")).await;
    let skipped = detail["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|a| a["handler"] == "review" && a["kind"] == "skipped")
        .count();
    assert_eq!(skipped, 1, "the replay says why it did nothing: {detail}");
    env.assert_contract_kept();
    env.app.stop().await;
}

/// hookdock posted the review, then died before recording it: the job runs again, finds its
/// review on GitHub by the SHA in the hidden marker, and records it instead of posting twice.
async fn a_review_posted_before_a_crash_is_adopted_not_repeated(backend: Backend) {
    let env = env(&backend, |s| s).await;
    let sha = "2323232bbbbbbb0000000000000000000000000b";
    let event = pull_event("opened", 18, sha);
    env.publish(&event, vec![file("src/lib.rs", Some(LIB_PATCH), 4, 0)]);
    let response = env
        .app
        .client
        .post(format!(
            "{}/repos/{OWNER}/{REPO}/pulls/18/reviews",
            env.github.url()
        ))
        .bearer_auth(GH_TOKEN)
        .header("user-agent", "test")
        .json(&json!({
            "commit_id": sha,
            "body": format!("<!-- hookdock:review sha={sha} -->\n### hookdock review"),
            "event": "COMMENT",
        }))
        .send()
        .await
        .expect("review posted");
    assert!(response.status().is_success(), "{}", response.status());
    let posted: Value = response.json().await.expect("review JSON");

    let event_id = env.deliver("pull_request", &event).await;
    env.app.wait_until_idle().await;
    assert_eq!(env.reviews(18).len(), 1, "no second review");
    let runs = env.review_runs(18).await;
    assert_eq!(runs["reviews"][0]["status"], "reviewed");
    assert_eq!(runs["reviews"][0]["github_review_id"], posted["id"]);
    let (_, detail) = env.app.api_get(&format!("/api/v1/events/{event_id}")).await;
    let reasons: Vec<&str> = detail["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|a| a["handler"] == "review")
        .filter_map(|a| a["detail"]["reason"].as_str())
        .collect();
    assert_eq!(reasons, ["already posted"]);
    env.assert_contract_kept();
    env.app.stop().await;
}

async fn a_burst_of_pushes_gets_one_review_of_the_newest_head(backend: Backend) {
    let env = env(&backend, |s| s.set("queue.workers", 0)).await;
    let shas = [
        "3333333aaaaaaa0000000000000000000000000a",
        "3333333bbbbbbb0000000000000000000000000b",
        "3333333ccccccc0000000000000000000000000c",
    ];
    let mut ids = Vec::new();
    for (i, sha) in shas.iter().enumerate() {
        let event = pull_event(if i == 0 { "opened" } else { "synchronize" }, 9, sha);
        env.publish(&event, vec![file("src/lib.rs", Some(LIB_PATCH), 4, 0)]);
        ids.push(env.deliver("pull_request", &event).await);
    }
    env.drain().await;
    let reviews = env.reviews(9);
    assert_eq!(reviews.len(), 1, "{reviews:?}");
    assert_eq!(reviews[0]["commit_id"], shas[2]);
    let runs = env.review_runs(9).await;
    let statuses: Vec<(&str, &str)> = runs["reviews"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| {
            (
                r["head_sha"].as_str().unwrap_or(""),
                r["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            (shas[0], "superseded"),
            (shas[1], "superseded"),
            (shas[2], "reviewed")
        ]
    );
    let summaries = env.hookdock_comments(9);
    assert_eq!(summaries.len(), 1);
    assert!(summaries[0].contains("Reviewed `3333333`"));
    env.assert_contract_kept();
    env.app.stop().await;
}

async fn a_plain_comment_does_not_supersede_a_waiting_review(backend: Backend) {
    let env = env(&backend, |s| s.set("queue.workers", 0)).await;
    let sha = "3434343aaaaaaa0000000000000000000000000a";
    let event = pull_event("opened", 19, sha);
    env.publish(&event, vec![file("src/lib.rs", Some(LIB_PATCH), 4, 0)]);
    env.deliver("pull_request", &event).await;
    // A comment on the same pull request (same ordering key) waits behind it.
    let mut comment: Value =
        serde_json::from_slice(&fixture("issue_comment.created.0")).expect("fixture is JSON");
    comment["repository"] = event["repository"].clone();
    comment["issue"]["number"] = json!(19);
    comment["issue"]["pull_request"] =
        json!({ "url": format!("https://api.github.com/repos/{OWNER}/{REPO}/pulls/19") });
    comment["comment"]["body"] = json!("Looks fine to me.");
    env.deliver("issue_comment", &comment).await;
    env.drain().await;
    let reviews = env.reviews(19);
    assert_eq!(reviews.len(), 1, "the head is reviewed: {reviews:?}");
    assert_eq!(reviews[0]["commit_id"], sha);
    let runs = env.review_runs(19).await;
    assert_eq!(runs["reviews"].as_array().map(Vec::len), Some(1));
    assert_eq!(runs["reviews"][0]["status"], "reviewed");
    env.assert_contract_kept();
    env.app.stop().await;
}

fn llm_config(s: Sources) -> Sources {
    s.set("automations", json!({ "review": { "reviewer": "llm" } }))
}

async fn llm_findings_outside_the_diff_go_to_the_review_body(backend: Backend) {
    let env = env(&backend, llm_config).await;
    env.llm.push_reply(LlmReply::findings(
        "Adds b().",
        &[
            ("src/lib.rs", 2, "error", "b() never returns a value"),
            ("src/lib.rs", 40, "warning", "this line is not in the diff"),
        ],
    ));
    let event = pull_event("opened", 10, "4444444aaaaaaa0000000000000000000000000a");
    env.publish(&event, vec![file("src/lib.rs", Some(LIB_PATCH), 4, 0)]);
    env.deliver("pull_request", &event).await;
    env.app.wait_until_idle().await;

    let comments = env.github.review_comments(OWNER, REPO, 10);
    let lines: Vec<u64> = comments.iter().filter_map(|c| c["line"].as_u64()).collect();
    assert!(lines.contains(&2), "{comments:?}");
    assert!(!lines.contains(&40), "GitHub would refuse it: {comments:?}");
    let review = &env.reviews(10)[0];
    let body = review["body"].as_str().unwrap_or_default();
    assert!(body.contains("Adds b()."), "{body}");
    assert!(
        body.contains("`src/lib.rs:40`") && body.contains("not in the diff"),
        "{body}"
    );
    let request = &env.llm.requests()[0];
    let prompt = request["messages"][1]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(prompt.contains("dbg!(1);"), "the patch is sent: {prompt}");
    let runs = env.review_runs(10).await;
    assert!(
        runs["reviews"][0]["reviewer"]
            .as_str()
            .unwrap_or_default()
            .starts_with("llm")
    );
    let calls = runs["llm_calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["outcome"], "ok");
    assert!(calls[0]["prompt_bytes"].as_i64().unwrap_or(0) > 100);
    env.assert_contract_kept();
    env.app.stop().await;
}

async fn unusable_llm_output_falls_back_to_the_rules_and_says_so(backend: Backend) {
    let env = env(&backend, llm_config).await;
    env.llm.push_reply(LlmReply::Content(
        "Sure! Here is my review: looks good".into(),
    ));
    env.llm
        .push_reply(LlmReply::Truncated("{\"summary\": \"cut of".into()));
    let event = pull_event("opened", 11, "5555555aaaaaaa0000000000000000000000000a");
    env.publish(&event, vec![file("src/lib.rs", Some(LIB_PATCH), 4, 0)]);
    env.deliver("pull_request", &event).await;
    env.app.wait_until_idle().await;

    let reviews = env.reviews(11);
    assert_eq!(reviews.len(), 1);
    let body = reviews[0]["body"].as_str().unwrap_or_default();
    assert!(body.contains("could not be used"), "{body}");
    assert_eq!(
        env.github.review_comments(OWNER, REPO, 11).len(),
        2,
        "rule findings"
    );
    let runs = env.review_runs(11).await;
    let outcomes: Vec<&str> = runs["llm_calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| c["outcome"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert!(outcomes[0].starts_with("invalid output"), "{outcomes:?}");
    assert_eq!(outcomes[1], "truncated");
    env.app.stop().await;
}

async fn llm_timeout_retries_the_job_and_keeps_the_audit(backend: Backend) {
    let env = env(&backend, |s| llm_config(s).set("llm.timeout_secs", 1)).await;
    env.llm.push_reply(LlmReply::delayed(
        Duration::from_secs(3),
        LlmReply::findings("late", &[]),
    ));
    env.llm.push_reply(LlmReply::findings(
        "Fine.",
        &[("src/lib.rs", 3, "warning", "remove the dbg! call")],
    ));
    let event = pull_event("opened", 12, "6666666aaaaaaa0000000000000000000000000a");
    env.publish(&event, vec![file("src/lib.rs", Some(LIB_PATCH), 4, 0)]);
    let event_id = env.deliver("pull_request", &event).await;
    env.app.wait_until_idle().await;

    assert_eq!(env.reviews(12).len(), 1, "one review after the retry");
    let runs = env.review_runs(12).await;
    let outcomes: Vec<&str> = runs["llm_calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| c["outcome"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(outcomes, ["timeout", "ok"]);
    let review_job = env.job(event_id, "review").await;
    assert_eq!(review_job["status"], "done");
    assert_eq!(review_job["attempts"], 2, "{review_job}");
    env.app.stop().await;
}

async fn generated_files_do_not_count_and_the_old_size_label_goes(backend: Backend) {
    let env = env(&backend, |s| s).await;
    env.github.put_file(
        OWNER,
        REPO,
        ".gitattributes",
        b"schema/*.json linguist-generated\n",
    );
    let event = pull_event(
        "synchronize",
        13,
        "7777777aaaaaaa0000000000000000000000000a",
    );
    env.github
        .add_pull(OWNER, REPO, event["pull_request"].clone());
    env.github.add_label(OWNER, REPO, "size/L", "ededed");
    // The pull request carries the label from an earlier size.
    let (status, _) = env
        .app
        .client
        .post(format!(
            "{}/repos/{OWNER}/{REPO}/issues/13/labels",
            env.github.url()
        ))
        .bearer_auth(GH_TOKEN)
        .header("user-agent", "test")
        .json(&json!({ "labels": ["size/L"] }))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .expect("label added");
    assert!(status.is_success());
    env.github.set_pull_files(
        OWNER,
        REPO,
        13,
        vec![
            file("schema/api.json", None, 55_000, 0),
            file("src/lib.rs", Some(LIB_PATCH), 4, 0),
        ],
    );
    env.deliver("pull_request", &event).await;
    env.app.wait_until_idle().await;
    assert_eq!(env.github.labels(OWNER, REPO, 13), ["size/XS"]);
    let created = env
        .github
        .repo_labels(OWNER, REPO)
        .into_iter()
        .find(|l| l.name == "size/XS")
        .expect("label defined");
    assert_eq!(created.color, "ededed");
    env.assert_contract_kept();
    env.app.stop().await;
}

async fn drafts_and_bot_pull_requests_are_skipped_unless_configured(backend: Backend) {
    let env = env(&backend, |s| s).await;
    let mut draft = pull_event("opened", 14, "8888888aaaaaaa0000000000000000000000000a");
    draft["pull_request"]["draft"] = json!(true);
    env.publish(&draft, vec![file("src/lib.rs", Some(LIB_PATCH), 4, 0)]);
    env.deliver("pull_request", &draft).await;
    let mut bot = pull_event("opened", 15, "9999999aaaaaaa0000000000000000000000000a");
    bot["pull_request"]["user"]["login"] = json!("dependabot[bot]");
    bot["pull_request"]["user"]["type"] = json!("Bot");
    env.publish(&bot, vec![file("src/lib.rs", Some(LIB_PATCH), 4, 0)]);
    env.deliver("pull_request", &bot).await;
    env.app.wait_until_idle().await;
    assert!(env.reviews(14).is_empty(), "drafts are not reviewed");
    assert_eq!(env.github.labels(OWNER, REPO, 14), ["size/XS"], "but sized");
    assert!(env.reviews(15).is_empty(), "bot PRs are not reviewed");
    assert!(
        env.github.labels(OWNER, REPO, 15).is_empty(),
        "nor labelled"
    );

    // A repository that wants both.
    env.github.put_file(
        OWNER,
        REPO,
        ".github/hookdock.yml",
        b"bots: true\nreview:\n  drafts: true\n",
    );
    let mut draft = pull_event(
        "ready_for_review",
        16,
        "aaaaaaa1111111000000000000000000000000a0",
    );
    draft["pull_request"]["draft"] = json!(true);
    draft["pull_request"]["user"]["login"] = json!("renovate[bot]");
    draft["pull_request"]["user"]["type"] = json!("Bot");
    env.publish(&draft, vec![file("src/lib.rs", Some(LIB_PATCH), 4, 0)]);
    env.deliver("pull_request", &draft).await;
    env.app.wait_until_idle().await;
    assert_eq!(env.reviews(16).len(), 1);
    env.assert_contract_kept();
    env.app.stop().await;
}

async fn an_invalid_config_file_is_reported_on_the_pull_request(backend: Backend) {
    let env = env(&backend, |s| s).await;
    env.github.put_file(
        OWNER,
        REPO,
        ".github/hookdock.yml",
        b"review:\n  enabled: true\n  max_comments: many\n",
    );
    let event = pull_event("opened", 17, "bbbbbbb1111111000000000000000000000000b0");
    env.publish(&event, vec![file("src/lib.rs", Some(LIB_PATCH), 4, 0)]);
    let event_id = env.deliver("pull_request", &event).await;
    env.app.wait_until_idle().await;
    assert!(env.reviews(17).is_empty());
    let comments = env.hookdock_comments(17);
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert!(
        comments[0].contains(".github/hookdock.yml line 3, key `review.max_comments`"),
        "{}",
        comments[0]
    );
    let review_job = env.job(event_id, "review").await;
    assert_eq!(review_job["status"], "dead");
    let error = review_job["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains(".github/hookdock.yml line 3, key `review.max_comments`"),
        "{error}"
    );
    env.assert_contract_kept();
    env.app.stop().await;
}
