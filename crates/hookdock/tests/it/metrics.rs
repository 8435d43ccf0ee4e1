//! Pull request metrics end to end: real fixture payloads, adjusted into coherent pull request
//! timelines, posted signed through the webhook endpoint; then the stored rows and the metrics
//! API (JSON and CSV) checked value by value. Plus a property test: any order of one pull
//! request's events leaves the same rows.

use std::sync::atomic::{AtomicUsize, Ordering};

use hookdock::config::MetricsSettings;
use hookdock::handlers::metrics::effects_for;
use hookdock::store::{PullFilter, Store, rfc3339};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

const REPO: &str = "Codertocat/Hello-World";
/// 2024-01-01T00:00:00Z, a Monday.
const T0: i64 = 1_704_067_200_000;
const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

#[derive(Debug, Clone, Copy)]
struct User {
    id: i64,
    login: &'static str,
    bot: bool,
}

const ANN: User = User {
    id: 21031067,
    login: "Codertocat",
    bot: false,
};
const BOB: User = User {
    id: 9001,
    login: "bob",
    bot: false,
};
const CAROL: User = User {
    id: 9002,
    login: "carol",
    bot: false,
};
const BOT: User = User {
    id: 9003,
    login: "renovate[bot]",
    bot: true,
};

fn user_json(u: User) -> Value {
    json!({ "id": u.id, "login": u.login, "type": if u.bot { "Bot" } else { "User" } })
}

fn time(ms: i64) -> String {
    rfc3339(ms)
}

/// A pull request as it stands at one moment of its timeline.
#[derive(Debug, Clone)]
struct Pr {
    repo: String,
    number: i64,
    title: String,
    body: String,
    author: User,
    draft: bool,
    head_ref: String,
    head_sha: String,
    created_at: i64,
    updated_at: i64,
    closed_at: Option<i64>,
    merged_at: Option<i64>,
    merge_commit_sha: Option<String>,
    size: (i64, i64, i64, i64),
    labels: Vec<&'static str>,
}

impl Pr {
    fn new(number: i64, created_at: i64) -> Pr {
        Pr {
            repo: REPO.to_owned(),
            number,
            title: format!("Change {number}"),
            body: "A change.".to_owned(),
            author: ANN,
            draft: false,
            head_ref: format!("feature-{number}"),
            head_sha: format!("{number:040x}"),
            created_at,
            updated_at: created_at,
            closed_at: None,
            merged_at: None,
            merge_commit_sha: None,
            size: (10, 4, 2, 1),
            labels: Vec::new(),
        }
    }

    /// The same pull request later.
    fn at(&self, t: i64) -> Pr {
        Pr {
            updated_at: t,
            ..self.clone()
        }
    }

    fn merged(&self, t: i64, sha: &str) -> Pr {
        Pr {
            updated_at: t,
            closed_at: Some(t),
            merged_at: Some(t),
            merge_commit_sha: Some(sha.to_owned()),
            ..self.clone()
        }
    }

    fn closed(&self, t: i64) -> Pr {
        Pr {
            updated_at: t,
            closed_at: Some(t),
            ..self.clone()
        }
    }

    /// Writes this state into a payload's `pull_request` object; `full` adds what only
    /// `pull_request` events carry.
    fn write(&self, doc: &mut Value, full: bool) {
        doc["repository"]["full_name"] = json!(self.repo);
        let pr = &mut doc["pull_request"];
        pr["number"] = json!(self.number);
        pr["id"] = json!(1_000_000 + self.number);
        pr["title"] = json!(self.title);
        pr["body"] = json!(self.body);
        pr["user"] = user_json(self.author);
        pr["draft"] = json!(self.draft);
        pr["state"] = json!(if self.closed_at.is_some() {
            "closed"
        } else {
            "open"
        });
        pr["head"]["ref"] = json!(self.head_ref);
        pr["head"]["sha"] = json!(self.head_sha);
        pr["created_at"] = json!(time(self.created_at));
        pr["updated_at"] = json!(time(self.updated_at));
        pr["closed_at"] = json!(self.closed_at.map(time));
        pr["merged_at"] = json!(self.merged_at.map(time));
        pr["merge_commit_sha"] = json!(self.merge_commit_sha);
        pr["labels"] = json!(
            self.labels
                .iter()
                .map(|l| json!({ "name": l }))
                .collect::<Vec<_>>()
        );
        if full {
            pr["merged"] = json!(self.merged_at.is_some());
            let (additions, deletions, changed_files, commits) = self.size;
            pr["additions"] = json!(additions);
            pr["deletions"] = json!(deletions);
            pr["changed_files"] = json!(changed_files);
            pr["commits"] = json!(commits);
        }
    }
}

/// One webhook delivery: event name and body.
#[derive(Debug, Clone)]
struct Delivery {
    event: &'static str,
    action: &'static str,
    doc: Value,
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).expect("fixture is JSON")
}

/// A `pull_request` event from the real `pull_request.opened.0` payload.
fn pr_event(action: &'static str, pr: &Pr) -> Delivery {
    let mut doc = fixture_json("pull_request.opened.0");
    doc["action"] = json!(action);
    pr.write(&mut doc, true);
    Delivery {
        event: "pull_request",
        action,
        doc,
    }
}

/// A `pull_request_review` event from the real `pull_request_review.submitted.1` payload.
fn review_event(
    action: &'static str,
    pr: &Pr,
    review_id: i64,
    reviewer: User,
    state: &str,
    submitted_at: i64,
) -> Delivery {
    let mut doc = fixture_json("pull_request_review.submitted.1");
    doc["action"] = json!(action);
    pr.write(&mut doc, false);
    doc["review"]["id"] = json!(review_id);
    doc["review"]["user"] = user_json(reviewer);
    doc["review"]["state"] = json!(state);
    doc["review"]["submitted_at"] = json!(time(submitted_at));
    Delivery {
        event: "pull_request_review",
        action,
        doc,
    }
}

/// A review comment from the real `pull_request_review_comment.created.0` payload.
fn review_comment_event(pr: &Pr, id: i64, review_id: i64, user: User, at: i64) -> Delivery {
    let mut doc = fixture_json("pull_request_review_comment.created.0");
    pr.write(&mut doc, false);
    doc["comment"]["id"] = json!(id);
    doc["comment"]["pull_request_review_id"] = json!(review_id);
    doc["comment"]["user"] = user_json(user);
    doc["comment"]["created_at"] = json!(time(at));
    doc["comment"]["updated_at"] = json!(time(at));
    Delivery {
        event: "pull_request_review_comment",
        action: "created",
        doc,
    }
}

/// A comment on the pull request's conversation, from the real `issue_comment.created.0`.
fn issue_comment_event(pr: &Pr, id: i64, user: User, at: i64) -> Delivery {
    let mut doc = fixture_json("issue_comment.created.0");
    doc["repository"]["full_name"] = json!(pr.repo);
    doc["issue"]["number"] = json!(pr.number);
    doc["issue"]["user"] = user_json(pr.author);
    doc["issue"]["pull_request"] =
        json!({ "url": format!("https://api.github.com/repos/{}/pulls/{}", pr.repo, pr.number) });
    doc["comment"]["id"] = json!(id);
    doc["comment"]["user"] = user_json(user);
    doc["comment"]["created_at"] = json!(time(at));
    doc["comment"]["updated_at"] = json!(time(at));
    Delivery {
        event: "issue_comment",
        action: "created",
        doc,
    }
}

async fn post_all(app: &TestApp, deliveries: &[Delivery]) {
    for d in deliveries {
        let body = serde_json::to_vec(&d.doc).expect("serialize");
        let (status, answer) = app.post(d.event, &body, &new_delivery_id()).await;
        assert_eq!(status, StatusCode::OK, "{}.{}: {answer}", d.event, d.action);
        assert_eq!(answer["status"], "received", "{answer}");
        assert_eq!(answer["held"], Value::Null, "bodies are unique: {answer}");
    }
    app.wait_until_idle().await;
    let counts = app.store.count_events_by_status().await.expect("counts");
    assert_eq!(
        counts.get("done").copied().unwrap_or(0),
        counts.values().sum::<i64>(),
        "every event handled: {counts:?}"
    );
}

async fn pulls(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, body) = app.api_get(&format!("/api/v1/metrics/pulls{query}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["pulls"].as_array().expect("pulls array").clone()
}

/// `/api/v1/metrics/pulls{query}` as CSV (`text/csv`, CRLF lines, a header row): each row by
/// column name. Only for values without commas or quotes.
async fn csv_rows(app: &TestApp, query: &str) -> Vec<std::collections::HashMap<String, String>> {
    let sep = if query.is_empty() { "?" } else { "&" };
    let response = app
        .client
        .get(format!(
            "{}/api/v1/metrics/pulls{query}{sep}format=csv",
            app.base
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let csv = response.text().await.expect("body");
    let mut lines = csv.split("\r\n").filter(|l| !l.is_empty());
    let header: Vec<&str> = lines.next().expect("a header row").split(',').collect();
    lines
        .map(|line| {
            let values: Vec<&str> = line.split(',').collect();
            assert_eq!(values.len(), header.len(), "{line}");
            header
                .iter()
                .zip(values)
                .map(|(h, v)| ((*h).to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

fn by_number(rows: &[Value], number: i64) -> &Value {
    rows.iter()
        .find(|r| r["number"] == number)
        .unwrap_or_else(|| panic!("no PR {number} in {rows:?}"))
}

async fn merged_pull_request_with_reviews_has_expected_metrics(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    assert!(
        !app.registry.names().contains(&"metrics_commits"),
        "without a GitHub token no commits are read: coding time stays empty"
    );
    let opened = Pr::new(20, T0);
    let mut pushed = opened.at(T0 + 2 * HOUR);
    pushed.size = (12, 4, 2, 2);
    pushed.head_sha = "b".repeat(40);
    let merged = pushed.merged(T0 + 5 * HOUR, &"a".repeat(40));
    post_all(
        &app,
        &[
            pr_event("opened", &opened),
            // The author's own comment is not a review.
            issue_comment_event(&opened.at(T0 + 10 * MIN), 8001, ANN, T0 + 10 * MIN),
            review_comment_event(&opened.at(T0 + 90 * MIN), 6001, 7001, BOB, T0 + 90 * MIN),
            review_event(
                "submitted",
                &opened.at(T0 + 90 * MIN),
                7001,
                BOB,
                "commented",
                T0 + 90 * MIN,
            ),
            pr_event("synchronize", &pushed),
            review_event(
                "submitted",
                &pushed.at(T0 + 3 * HOUR),
                7002,
                CAROL,
                "APPROVED",
                T0 + 3 * HOUR,
            ),
            pr_event("closed", &merged),
        ],
    )
    .await;

    let rows = pulls(&app, &format!("?repo={REPO}")).await;
    assert_eq!(rows.len(), 1);
    let pr = &rows[0];
    let expected = json!({
        "repo": REPO, "number": 20, "title": "Change 20", "author": "Codertocat",
        "author_is_bot": false, "state": "merged", "draft": false, "base_ref": "master",
        "head_ref": "feature-20",
        "created_at": "2024-01-01T00:00:00.000Z", "ready_for_review_at": null,
        "first_commit_at": null, "first_review_at": "2024-01-01T01:30:00.000Z",
        "merged_at": "2024-01-01T05:00:00.000Z", "closed_at": "2024-01-01T05:00:00.000Z",
        "team": null,
        "coding_hours": null, "pickup_hours": 1.5, "review_hours": 3.5, "cycle_hours": 5.0,
        "time_to_merge_hours": 5.0,
        // Monday 00:00-05:00 UTC is outside the default 09:00-17:00.
        "coding_working_hours": null, "pickup_working_hours": 0.0,
        "review_working_hours": 0.0, "cycle_working_hours": 0.0,
        "time_to_merge_working_hours": 0.0, "additions": 12, "deletions": 4, "size": 16,
        "changed_files": 2, "commits": 2, "reviews": 2, "is_revert": false,
        "reverts_number": null, "reverted": false, "is_hotfix": false, "labels": []
    });
    assert_eq!(pr, &expected);

    let reviews = app.store.reviews_of(REPO, 20).await.expect("reviews");
    let summary: Vec<_> = reviews
        .iter()
        .map(|r| {
            (
                r.github_id,
                r.reviewer_id,
                r.state.as_str(),
                r.comment_count,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (7001, BOB.id, "commented", 1),
            (7002, CAROL.id, "approved", 0)
        ]
    );
    let members: Vec<_> = app
        .store
        .members()
        .await
        .expect("members")
        .into_iter()
        .map(|m| (m.github_id, m.login, m.is_bot))
        .collect();
    assert_eq!(
        members,
        [
            (BOB.id, "bob".to_owned(), false),
            (CAROL.id, "carol".to_owned(), false),
            (ANN.id, "Codertocat".to_owned(), false),
        ]
    );

    // CSV: a header row, then the same values.
    let csv = csv_rows(&app, &format!("?repo={REPO}")).await;
    assert_eq!(csv.len(), 1);
    let cell = |name: &str| csv[0][name].as_str();
    assert_eq!(cell("repo"), REPO);
    assert_eq!(cell("number"), "20");
    assert_eq!(cell("state"), "merged");
    assert_eq!(cell("first_review_at"), "2024-01-01T01:30:00.000Z");
    assert_eq!(cell("coding_hours"), "");
    assert_eq!(cell("pickup_hours"), "1.5");
    assert_eq!(cell("review_hours"), "3.5");
    assert_eq!(cell("cycle_hours"), "5");
    assert_eq!(cell("size"), "16");
    assert_eq!(cell("reviews"), "2");
    assert_eq!(cell("reverted"), "false");

    let (status, s) = app
        .api_get(&format!(
            "/api/v1/metrics/summary?repo={REPO}&window=7d&until=2024-01-08"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{s}");
    assert_eq!(s["since"], "2024-01-01T00:00:00.000Z");
    assert_eq!(s["until"], "2024-01-08T00:00:00.000Z");
    assert_eq!(
        s["pull_requests"],
        json!({"opened": 1, "merged": 1, "closed_without_merge": 0})
    );
    let one = |h: f64| json!({"count": 1, "median_hours": h, "p75_hours": h, "p90_hours": h});
    assert_eq!(s["pickup_time"], one(1.5));
    assert_eq!(s["review_time"], one(3.5));
    assert_eq!(s["cycle_time"], one(5.0));
    assert_eq!(s["time_to_merge"], one(5.0));
    assert_eq!(
        s["coding_time"],
        json!({"count": 0, "median_hours": null, "p75_hours": null, "p90_hours": null})
    );
    assert_eq!(
        s["size"],
        json!({"count": 1, "median": 16.0, "p75": 16.0, "p90": 16.0})
    );
    assert_eq!(s["throughput_per_week"], 1.0);
    assert_eq!(s["revert_rate"], 0.0);
    assert_eq!(s["hotfix_rate"], 0.0);
    assert_eq!(s["review_coverage"], 1.0);
    assert_eq!(s["author_match_rate"], Value::Null, "no team configured");
    assert_eq!(s["team"], Value::Null);
    assert_eq!(
        s["reviews_per_reviewer"],
        json!({"reviewers": 2, "reviews": 2, "average": 1.0, "by_reviewer": [
            {"login": "bob", "reviews": 1}, {"login": "carol", "reviews": 1}]})
    );
    assert_eq!(
        s["weekly"],
        json!([{"week_start": "2024-01-01", "opened": 1, "merged": 1, "median_cycle_hours": 5.0,
            "median_cycle_working_hours": 0.0}])
    );

    // Outside the window: nothing.
    let (_, s) = app
        .api_get(&format!(
            "/api/v1/metrics/summary?repo={REPO}&window=7d&until=2024-01-01"
        ))
        .await;
    assert_eq!(s["pull_requests"]["merged"], 0);
    assert_eq!(s["revert_rate"], Value::Null);
    app.stop().await;
}

async fn drafts_reopens_reverts_and_ignored_reviews_have_expected_metrics(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let sha30 = "3".repeat(40);
    let sha31 = "c1".repeat(20);

    // #30: opened as a draft, ready after 2 h, reviewed 1 h later, merged; reverted by #32.
    let mut draft = Pr::new(30, T0);
    draft.draft = true;
    let mut ready = draft.at(T0 + 2 * HOUR);
    ready.draft = false;
    // #31: the author's and a bot's reviews do not count; a comment by carol does. Closed,
    // reopened, merged; reverted by commit through #34, which arrives before #31's merge.
    let p31 = Pr::new(31, T0);
    let reopened = Pr {
        closed_at: None,
        ..p31.closed(T0 + 4 * HOUR)
    };
    // #32: GitHub's revert pull request of #30.
    let mut revert = Pr::new(32, T0 + 5 * HOUR);
    revert.title = "Revert \"Change 30\"".to_owned();
    revert.body = format!("Reverts {REPO}#30");
    // #33: a hotfix branch, closed without merge.
    let mut hotfix = Pr::new(33, T0 + HOUR);
    hotfix.head_ref = "hotfix/login".to_owned();
    // #34: `git revert` of #31's merge commit.
    let mut by_commit = Pr::new(34, T0 + 6 * HOUR + 30 * MIN);
    by_commit.body = format!("This reverts commit {sha31}.");

    post_all(
        &app,
        &[
            pr_event("opened", &draft),
            pr_event("ready_for_review", &ready),
            review_event(
                "submitted",
                &ready.at(T0 + 3 * HOUR),
                7301,
                BOB,
                "approved",
                T0 + 3 * HOUR,
            ),
            pr_event("closed", &ready.merged(T0 + 4 * HOUR, &sha30)),
            pr_event("opened", &p31),
            review_event(
                "submitted",
                &p31.at(T0 + 5 * MIN),
                7311,
                ANN,
                "approved",
                T0 + 5 * MIN,
            ),
            review_event(
                "submitted",
                &p31.at(T0 + 10 * MIN),
                7312,
                BOT,
                "commented",
                T0 + 10 * MIN,
            ),
            issue_comment_event(&p31, 8311, CAROL, T0 + 2 * HOUR),
            pr_event("closed", &p31.closed(T0 + 3 * HOUR)),
            pr_event("reopened", &reopened),
            pr_event("opened", &by_commit),
            pr_event("closed", &by_commit.merged(T0 + 7 * HOUR, &"d".repeat(40))),
            pr_event("closed", &reopened.merged(T0 + 6 * HOUR, &sha31)),
            pr_event("opened", &revert),
            pr_event(
                "closed",
                &revert.merged(T0 + 5 * HOUR + 30 * MIN, &"e".repeat(40)),
            ),
            pr_event("opened", &hotfix),
            pr_event("closed", &hotfix.closed(T0 + 2 * HOUR)),
        ],
    )
    .await;

    let rows = pulls(&app, "?since=2024-01-01&until=2024-01-02").await;
    assert_eq!(
        rows.iter().map(|r| r["number"].clone()).collect::<Vec<_>>(),
        [json!(30), json!(31), json!(33), json!(32), json!(34)],
        "ordered by creation"
    );
    let pick = |n: i64, keys: &[&str]| -> Value {
        let row = by_number(&rows, n);
        Value::Object(
            keys.iter()
                .map(|k| (k.to_string(), row[*k].clone()))
                .collect(),
        )
    };
    let keys = [
        "state",
        "draft",
        "ready_for_review_at",
        "first_review_at",
        "pickup_hours",
        "review_hours",
        "cycle_hours",
        "reviews",
        "is_revert",
        "reverts_number",
        "reverted",
        "is_hotfix",
    ];
    assert_eq!(
        pick(30, &keys),
        json!({"state": "merged", "draft": false,
            "ready_for_review_at": "2024-01-01T02:00:00.000Z",
            "first_review_at": "2024-01-01T03:00:00.000Z", "pickup_hours": 1.0,
            "review_hours": 1.0, "cycle_hours": 4.0, "reviews": 1, "is_revert": false,
            "reverts_number": null, "reverted": true, "is_hotfix": false})
    );
    assert_eq!(
        pick(31, &keys),
        json!({"state": "merged", "draft": false, "ready_for_review_at": null,
            "first_review_at": "2024-01-01T02:00:00.000Z", "pickup_hours": 2.0,
            "review_hours": 4.0, "cycle_hours": 6.0, "reviews": 0, "is_revert": false,
            "reverts_number": null, "reverted": true, "is_hotfix": false})
    );
    assert_eq!(
        pick(32, &keys),
        json!({"state": "merged", "draft": false, "ready_for_review_at": null,
            "first_review_at": null, "pickup_hours": null, "review_hours": null,
            "cycle_hours": 0.5, "reviews": 0, "is_revert": true, "reverts_number": 30,
            "reverted": false, "is_hotfix": false})
    );
    assert_eq!(
        pick(33, &keys),
        json!({"state": "closed", "draft": false, "ready_for_review_at": null,
            "first_review_at": null, "pickup_hours": null, "review_hours": null,
            "cycle_hours": null, "reviews": 0, "is_revert": false, "reverts_number": null,
            "reverted": false, "is_hotfix": true})
    );
    assert_eq!(
        pick(34, &["is_revert", "reverts_number", "cycle_hours"]),
        json!({"is_revert": true, "reverts_number": 31, "cycle_hours": 0.5})
    );
    let bot = app
        .store
        .members()
        .await
        .expect("members")
        .into_iter()
        .find(|m| m.github_id == BOT.id)
        .expect("bot stored as a member");
    assert!(bot.is_bot);

    let filtered = pulls(&app, "?author=codertocat&since=2024-01-01T05:00:00Z").await;
    assert_eq!(
        filtered
            .iter()
            .map(|r| r["number"].clone())
            .collect::<Vec<_>>(),
        [json!(32), json!(34)]
    );
    assert!(pulls(&app, "?author=bob").await.is_empty());

    let (status, s) = app
        .api_get("/api/v1/metrics/summary?window=14d&until=2024-01-15T00:00:00Z")
        .await;
    assert_eq!(status, StatusCode::OK, "{s}");
    assert_eq!(
        s["pull_requests"],
        json!({"opened": 5, "merged": 4, "closed_without_merge": 1})
    );
    // Cycle times of the merged: 0.5 h (#32, #34), 4 h (#30), 6 h (#31).
    assert_eq!(
        s["cycle_time"],
        json!({"count": 4, "median_hours": 2.25, "p75_hours": 4.5, "p90_hours": 5.4})
    );
    assert_eq!(
        s["pickup_time"],
        json!({"count": 2, "median_hours": 1.5, "p75_hours": 1.75, "p90_hours": 1.9})
    );
    assert_eq!(s["throughput_per_week"], 2.0);
    assert_eq!(s["revert_rate"], 0.5);
    // Per author: every merged pull request of a known author is counted once.
    let by_author = s["revert_rate_by_author"].as_array().expect("list");
    let sum = |key: &str| {
        by_author
            .iter()
            .filter_map(|a| a[key].as_u64())
            .sum::<u64>()
    };
    assert_eq!((sum("merged"), sum("reverted")), (4, 2), "{by_author:?}");
    assert_eq!(s["hotfix_rate"], 0.0);
    assert_eq!(s["review_coverage"], 0.25);
    assert_eq!(
        s["reviews_per_reviewer"],
        json!({"reviewers": 1, "reviews": 1, "average": 1.0,
            "by_reviewer": [{"login": "bob", "reviews": 1}]})
    );
    assert_eq!(
        s["weekly"],
        json!([
            {"week_start": "2024-01-01", "opened": 5, "merged": 4, "median_cycle_hours": 2.25,
                "median_cycle_working_hours": 0.0},
            {"week_start": "2024-01-08", "opened": 0, "merged": 0, "median_cycle_hours": null,
                "median_cycle_working_hours": null}
        ])
    );
    app.stop().await;
}

async fn bot_reviews_count_when_configured(backend: Backend) {
    let app = TestApp::spawn_with(
        &backend,
        |s| s.set("handlers.metrics.count_bot_reviews", true),
        vec![],
    )
    .await;
    let pr = Pr::new(50, T0);
    post_all(
        &app,
        &[
            pr_event("opened", &pr),
            review_event(
                "submitted",
                &pr.at(T0 + 10 * MIN),
                7501,
                BOT,
                "commented",
                T0 + 10 * MIN,
            ),
        ],
    )
    .await;
    let rows = pulls(&app, "").await;
    assert_eq!(rows[0]["first_review_at"], "2024-01-01T00:10:00.000Z");
    assert_eq!(rows[0]["pickup_hours"], 0.1667);
    assert_eq!(rows[0]["reviews"], 1);
    app.stop().await;
}

async fn older_events_never_overwrite_newer_state_and_partial_data_fills_in(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let mut first = Pr::new(40, T0);
    first.title = "T0".to_owned();
    let mut reviewed = first.at(T0 + HOUR);
    reviewed.title = "T1".to_owned();
    let mut pushed = first.at(T0 + 2 * HOUR);
    pushed.title = "T2".to_owned();
    pushed.size = (99, 99, 9, 9);
    let mut merged = first.merged(T0 + 3 * HOUR, &"f".repeat(40));
    merged.title = "T3".to_owned();
    merged.size = (30, 3, 3, 3);

    // The review arrives first: the PR is created from the review's reduced object.
    post_all(
        &app,
        &[review_event(
            "submitted",
            &reviewed,
            7401,
            BOB,
            "approved",
            T0 + HOUR,
        )],
    )
    .await;
    let rows = pulls(&app, "").await;
    assert_eq!(
        (
            &rows[0]["title"],
            &rows[0]["state"],
            &rows[0]["additions"],
            &rows[0]["size"]
        ),
        (&json!("T1"), &json!("open"), &Value::Null, &Value::Null)
    );

    post_all(&app, &[pr_event("closed", &merged)]).await;
    // Older events, full and partial, arrive late.
    post_all(
        &app,
        &[
            pr_event("opened", &first),
            pr_event("synchronize", &pushed),
            review_event(
                "edited",
                &reviewed.at(T0 + HOUR + MIN),
                7401,
                BOB,
                "approved",
                T0 + HOUR,
            ),
        ],
    )
    .await;
    let rows = pulls(&app, "").await;
    let pr = &rows[0];
    assert_eq!(pr["title"], "T3");
    assert_eq!(pr["state"], "merged");
    assert_eq!(pr["merged_at"], "2024-01-01T03:00:00.000Z");
    assert_eq!(
        (&pr["additions"], &pr["deletions"], &pr["commits"]),
        (&json!(30), &json!(3), &json!(3))
    );
    assert_eq!(pr["first_review_at"], "2024-01-01T01:00:00.000Z");
    assert_eq!(pr["review_hours"], 2.0);

    // A rebuild from the stored events gives the same rows.
    let before = pulls(&app, "").await;
    let report = hookdock::handlers::metrics::rebuild(&app.store, &app.settings.handlers.metrics)
        .await
        .expect("rebuild");
    assert_eq!((report.events, report.skipped), (5, 0));
    assert_eq!(pulls(&app, "").await, before);
    app.stop().await;
}

async fn rebuild_command_recomputes_rows_under_changed_settings(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let pr = Pr::new(60, T0);
    post_all(
        &app,
        &[
            pr_event("opened", &pr),
            review_event(
                "submitted",
                &pr.at(T0 + 10 * MIN),
                7601,
                BOT,
                "commented",
                T0 + 10 * MIN,
            ),
            review_event(
                "submitted",
                &pr.at(T0 + HOUR),
                7602,
                BOB,
                "approved",
                T0 + HOUR,
            ),
        ],
    )
    .await;
    let rows = pulls(&app, "").await;
    assert_eq!(
        (&rows[0]["first_review_at"], &rows[0]["reviews"]),
        (&json!("2024-01-01T01:00:00.000Z"), &json!(1))
    );

    // Counting bots changes the definition: `hookdock metrics rebuild` recomputes the rows.
    let url = app.settings.database_url.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_hookdock"));
        command
            .args(["metrics", "rebuild"])
            .env_clear()
            .env("HOOKDOCK_DATABASE_URL", url)
            .env("HOOKDOCK_HANDLERS__METRICS__COUNT_BOT_REVIEWS", "true")
            .current_dir(std::env::temp_dir());
        if let Ok(path) = std::env::var("PATH") {
            command.env("PATH", path);
        }
        command.output().expect("run hookdock")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("metrics rebuilt from 3 event(s) and 0 API answer(s); 0 skipped"),
        "{stdout}"
    );
    let rows = pulls(&app, "").await;
    assert_eq!(
        (&rows[0]["first_review_at"], &rows[0]["reviews"]),
        (&json!("2024-01-01T00:10:00.000Z"), &json!(2))
    );
    app.stop().await;
}

async fn bad_parameters_are_refused_naming_the_parameter(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let cases = [
        ("/api/v1/metrics/pulls?repo=nope", "repo"),
        ("/api/v1/metrics/pulls?since=yesterday", "since"),
        ("/api/v1/metrics/pulls?until=2024-13-01", "until"),
        (
            "/api/v1/metrics/pulls?since=2024-02-01&until=2024-01-01",
            "until",
        ),
        ("/api/v1/metrics/pulls?format=xml", "format"),
        ("/api/v1/metrics/pulls?colour=red", "colour"),
        ("/api/v1/metrics/summary?window=0d", "window"),
        ("/api/v1/metrics/summary?window=month", "window"),
        ("/api/v1/metrics/summary?team=core", "team"),
        ("/api/v1/metrics/pulls?team=core", "no team is configured"),
        ("/api/v1/metrics/summary?until=soon", "until"),
    ];
    for (path, parameter) in cases {
        let (status, body) = app.api_get(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"], "invalid_parameter", "{path}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(parameter), "{path}: {message}");
    }
    let response = app
        .client
        .get(format!("{}/api/v1/metrics/summary", app.base))
        .send()
        .await
        .expect("request");
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "behind the admin guard"
    );
    app.stop().await;
}

/// An answer of GitHub's commits API for `pr`, read at `fetched_at`, with commits written at
/// `written` (as the commits job and backfills keep it).
fn commits_answer(pr: &Pr, fetched_at: i64, written: &[i64]) -> Delivery {
    let commits: Vec<Value> = written
        .iter()
        .enumerate()
        .map(|(i, at)| {
            json!({"sha": format!("{:040x}", 0xc0 + i), "commit": {"author": {"date": time(*at)},
                "committer": {"date": time(fetched_at)}}})
        })
        .collect();
    Delivery {
        event: hookdock::handlers::metrics::COMMITS_ANSWER,
        action: "",
        doc: json!({"repository": {"full_name": pr.repo}, "pull_request": {"number": pr.number},
            "fetched_at": time(fetched_at), "commits": commits}),
    }
}

/// The draft issue events of `pr` as a backfill keeps them.
fn draft_events_answer(pr: &Pr, fetched_at: i64, events: &[(&str, i64)]) -> Delivery {
    let events: Vec<Value> = events
        .iter()
        .map(|(event, at)| json!({"event": event, "created_at": time(*at)}))
        .collect();
    Delivery {
        event: hookdock::handlers::metrics::DRAFT_EVENTS_ANSWER,
        action: "",
        doc: json!({"repository": {"full_name": pr.repo},
            "pull_request": {"number": pr.number, "created_at": time(pr.created_at), "draft": false},
            "fetched_at": time(fetched_at), "events": events}),
    }
}

/// One pull request's events, from real payloads, for `repo`, and the API answers read about
/// it; review and comment ids are shifted by `ids` so that several timelines can share a
/// database.
fn timeline(repo: &str, ids: i64) -> Vec<Delivery> {
    let mut opened = Pr::new(2, T0);
    opened.repo = repo.to_owned();
    // Turned into a draft for ten minutes: the webhook of the conversion arrived, the one of
    // the ready-for-review was missed and a backfill read both from the issue events.
    let mut drafted = opened.at(T0 + 10 * MIN);
    drafted.draft = true;
    let mut pushed = opened.at(T0 + HOUR);
    pushed.size = (20, 5, 3, 2);
    pushed.head_sha = "9".repeat(40);
    let merged = pushed.merged(T0 + 3 * HOUR, &"8".repeat(40));
    let mut labeled = pushed.at(T0 + 2 * HOUR + 30 * MIN);
    labeled.labels = vec!["hotfix"];
    let merged_labeled = Pr {
        labels: vec!["hotfix"],
        ..merged.clone()
    };
    vec![
        pr_event("opened", &opened),
        // Read after `opened`: one commit. After the force-push of `synchronize`: two, the
        // first written later than the one they replace; the newer answer wins.
        commits_answer(&opened, T0 + MIN, &[T0 - 3 * HOUR]),
        pr_event("converted_to_draft", &drafted),
        draft_events_answer(
            &opened,
            T0 + 4 * HOUR,
            &[
                ("convert_to_draft", T0 + 10 * MIN),
                ("ready_for_review", T0 + 20 * MIN),
            ],
        ),
        issue_comment_event(&opened, 8201 + ids, CAROL, T0 + 30 * MIN),
        pr_event("synchronize", &pushed),
        commits_answer(&pushed, T0 + HOUR + MIN, &[T0 - 2 * HOUR, T0 + 50 * MIN]),
        review_comment_event(
            &pushed.at(T0 + 110 * MIN),
            6201 + ids,
            7201 + ids,
            BOB,
            T0 + 110 * MIN,
        ),
        review_event(
            "submitted",
            &pushed.at(T0 + 2 * HOUR),
            7201 + ids,
            BOB,
            "approved",
            T0 + 2 * HOUR,
        ),
        review_event(
            "submitted",
            &pushed.at(T0 + 2 * HOUR + 10 * MIN),
            7202 + ids,
            BOT,
            "commented",
            T0 + 2 * HOUR + 10 * MIN,
        ),
        pr_event("labeled", &labeled),
        pr_event("closed", &merged_labeled),
        review_event(
            "dismissed",
            &merged_labeled.at(T0 + 4 * HOUR),
            7201 + ids,
            BOB,
            "dismissed",
            T0 + 2 * HOUR,
        ),
    ]
}

/// Everything stored about one repository's pull request, without the repository name and
/// the id shift.
async fn snapshot(store: &Store, repo: &str, ids: i64) -> String {
    let mut prs = store
        .pull_requests(&PullFilter {
            repo: Some(repo.to_owned()),
            ..PullFilter::default()
        })
        .await
        .expect("pull requests");
    for pr in &mut prs {
        pr.repo.clear();
    }
    let mut reviews = store.reviews_of(repo, 2).await.expect("reviews");
    for r in &mut reviews {
        r.repo.clear();
        r.github_id -= ids;
    }
    let members = store.members().await.expect("members");
    format!("{prs:?}\n{reviews:?}\n{members:?}")
}

async fn apply_in_order(
    store: &Store,
    settings: &MetricsSettings,
    events: &[Delivery],
    order: &[usize],
) {
    for &i in order {
        let e = &events[i];
        let action = (!e.action.is_empty()).then_some(e.action);
        let effects = effects_for(e.event, action, &e.doc, settings).expect("parses");
        store.apply_effects(&effects).await.expect("applied");
    }
}

async fn any_order_of_a_pull_requests_events_gives_the_same_rows(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let settings = app.settings.handlers.metrics.clone();
    let canonical = timeline("prop/canonical", 0);
    let in_order: Vec<usize> = (0..canonical.len()).collect();
    apply_in_order(&app.store, &settings, &canonical, &in_order).await;
    let expected = snapshot(&app.store, "prop/canonical", 0).await;
    // The chronological result is the right one, not just a stable one.
    let rows = app
        .store
        .pull_requests(&PullFilter {
            repo: Some("prop/canonical".into()),
            ..PullFilter::default()
        })
        .await
        .expect("rows");
    let pr = &rows[0];
    assert_eq!(
        (pr.state.as_str(), pr.additions, pr.commits, pr.is_hotfix),
        ("merged", Some(20), Some(2), true)
    );
    assert_eq!(pr.first_review_at, Some(T0 + 30 * MIN));
    assert_eq!(pr.reviews, 1, "bob's; the bot's does not count");
    assert_eq!(
        pr.first_commit_at,
        Some(T0 - 2 * HOUR),
        "from the newest commits answer"
    );
    assert_eq!(pr.draft_intervals, [(T0 + 10 * MIN, Some(T0 + 20 * MIN))]);
    assert_eq!(pr.ready_for_review_at, Some(T0 + 20 * MIN));
    let reviews = app
        .store
        .reviews_of("prop/canonical", 2)
        .await
        .expect("reviews");
    assert_eq!(
        reviews
            .iter()
            .map(|r| (r.github_id, r.state.as_str(), r.comment_count))
            .collect::<Vec<_>>(),
        [(7201, "dismissed", 1), (7202, "commented", 0)]
    );

    let case = AtomicUsize::new(0);
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config {
        cases: 32,
        failure_persistence: None,
        ..Config::default()
    });
    let result = tokio::task::block_in_place(|| {
        runner.run(&Just(in_order.clone()).prop_shuffle(), |order| {
            let n = case.fetch_add(1, Ordering::Relaxed) as i64 + 1;
            let repo = format!("prop/case-{n}");
            let events = timeline(&repo, n * 100_000);
            let got = handle.block_on(async {
                apply_in_order(&app.store, &settings, &events, &order).await;
                snapshot(&app.store, &repo, n * 100_000).await
            });
            prop_assert_eq!(&got, &expected, "order {:?}", order);
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    app.stop().await;
}

const DAVE: User = User {
    id: 9004,
    login: "dave",
    bot: false,
};
/// Carol after renaming her account: same user id.
const CAROL_RENAMED: User = User {
    id: 9002,
    login: "Carol-Renamed",
    bot: false,
};

fn ts(text: &str) -> i64 {
    hookdock::handlers::metrics::parse_time(text).expect("RFC 3339")
}

/// Teams with their own calendars, hand-built timelines with known working-hours durations:
/// across a weekend and the Berlin DST change, over a holiday, from a draft marked ready
/// outside working hours, across the US DST change, and an author in no team (default UTC
/// calendar) whose pull request was opened before working hours.
async fn teams_filter_and_working_hours_follow_the_calendars(backend: Backend) {
    let app = TestApp::spawn_with(
        &backend,
        |s| {
            s.set(
                "handlers.metrics.teams",
                json!([
                    {"name": "core", "members": ["codertocat", "BOB"],
                     "timezone": "Europe/Berlin", "holidays": ["2026-12-25"]},
                    {"name": "web", "members": ["carol"], "timezone": "America/New_York",
                     "working_hours": "10:00-18:00"},
                    {"name": "ghosts", "members": ["nobody"]}
                ]),
            )
        },
        vec![],
    )
    .await;

    // #101 (core): Friday 16:00 CET → first review Monday 10:00 CEST → merged 15:00 CEST.
    let p101 = Pr::new(101, ts("2026-03-27T15:00:00Z"));
    // #102 (core): draft Wednesday 11:00 CET, ready Thursday 24th 21:00 (after hours), Friday
    // 25th a holiday, reviewed Monday 28th 10:30, merged 13:00.
    let mut p102 = Pr::new(102, ts("2026-12-23T10:00:00Z"));
    p102.draft = true;
    let mut p102_ready = p102.at(ts("2026-12-24T20:00:00Z"));
    p102_ready.draft = false;
    // #103 (web, New York 10:00-18:00): Friday 17:00 EST → Monday 11:00 EDT → 12:00 EDT.
    let mut p103 = Pr::new(103, ts("2026-03-06T22:00:00Z"));
    p103.author = CAROL;
    // #104 (dave, no team: UTC 09:00-17:00): opened Monday 06:00, merged 10:00, no review.
    let mut p104 = Pr::new(104, ts("2026-03-30T06:00:00Z"));
    p104.author = DAVE;
    post_all(
        &app,
        &[
            pr_event("opened", &p101),
            review_event(
                "submitted",
                &p101.at(ts("2026-03-30T08:00:00Z")),
                9101,
                CAROL,
                "approved",
                ts("2026-03-30T08:00:00Z"),
            ),
            pr_event(
                "closed",
                &p101.merged(ts("2026-03-30T13:00:00Z"), &"1".repeat(40)),
            ),
            pr_event("opened", &p102),
            pr_event("ready_for_review", &p102_ready),
            review_event(
                "submitted",
                &p102_ready.at(ts("2026-12-28T09:30:00Z")),
                9102,
                BOB,
                "approved",
                ts("2026-12-28T09:30:00Z"),
            ),
            pr_event(
                "closed",
                &p102_ready.merged(ts("2026-12-28T12:00:00Z"), &"2".repeat(40)),
            ),
            pr_event("opened", &p103),
            review_event(
                "submitted",
                &p103.at(ts("2026-03-09T15:00:00Z")),
                9103,
                BOB,
                "approved",
                ts("2026-03-09T15:00:00Z"),
            ),
            pr_event(
                "closed",
                &p103.merged(ts("2026-03-09T16:00:00Z"), &"3".repeat(40)),
            ),
            pr_event("opened", &p104),
            pr_event(
                "closed",
                &p104.merged(ts("2026-03-30T10:00:00Z"), &"4".repeat(40)),
            ),
            // Carol renames her account; she stays in `web` by user id.
            issue_comment_event(&p101, 9201, CAROL_RENAMED, ts("2026-03-30T12:00:00Z")),
        ],
    )
    .await;

    let keys = [
        "author",
        "team",
        "pickup_hours",
        "pickup_working_hours",
        "review_hours",
        "review_working_hours",
        "cycle_hours",
        "cycle_working_hours",
        "time_to_merge_hours",
        "time_to_merge_working_hours",
    ];
    let pick = |row: &Value| -> Value {
        Value::Object(
            keys.iter()
                .map(|k| (k.to_string(), row[*k].clone()))
                .collect(),
        )
    };
    let expect = |author: &str, team: Value, d: [f64; 8]| {
        json!({"author": author, "team": team,
            "pickup_hours": d[0], "pickup_working_hours": d[1],
            "review_hours": d[2], "review_working_hours": d[3],
            "cycle_hours": d[4], "cycle_working_hours": d[5],
            "time_to_merge_hours": d[6], "time_to_merge_working_hours": d[7]})
    };
    let rows = pulls(&app, "").await;
    assert_eq!(rows.len(), 4);
    assert_eq!(
        pick(by_number(&rows, 101)),
        expect(
            "Codertocat",
            json!("core"),
            [65.0, 2.0, 5.0, 5.0, 70.0, 7.0, 70.0, 7.0]
        )
    );
    assert_eq!(
        pick(by_number(&rows, 102)),
        expect(
            "Codertocat",
            json!("core"),
            [85.5, 1.5, 2.5, 2.5, 122.0, 18.0, 122.0, 18.0]
        )
    );
    assert_eq!(
        pick(by_number(&rows, 103)),
        expect(
            "Carol-Renamed",
            json!("web"),
            [65.0, 2.0, 1.0, 1.0, 66.0, 3.0, 66.0, 3.0]
        )
    );
    let p104_row = by_number(&rows, 104);
    assert_eq!(
        (
            &p104_row["team"],
            &p104_row["pickup_hours"],
            &p104_row["time_to_merge_hours"],
            &p104_row["time_to_merge_working_hours"]
        ),
        (&Value::Null, &Value::Null, &json!(4.0), &json!(1.0))
    );

    let numbers = |rows: Vec<Value>| -> Vec<i64> {
        rows.iter().filter_map(|r| r["number"].as_i64()).collect()
    };
    assert_eq!(numbers(pulls(&app, "?team=CORE").await), [101, 102]);
    assert_eq!(numbers(pulls(&app, "?team=web").await), [103]);
    assert!(pulls(&app, "?team=ghosts").await.is_empty());
    let (status, body) = app.api_get("/api/v1/metrics/pulls?team=mobile").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["message"],
        "team: \"mobile\" is not a team; use one of: core, web, ghosts"
    );

    // Mar 1 2026 to Jan 1 2027.
    let summary = |team: &str| {
        let path =
            format!("/api/v1/metrics/summary?repo={REPO}&window=306d&until=2027-01-01{team}");
        let app = &app;
        async move {
            let (status, s) = app.api_get(&path).await;
            assert_eq!(status, StatusCode::OK, "{s}");
            s
        }
    };
    let stats = |count: usize, median: f64, p75: f64, p90: f64| json!({"count": count, "median_hours": median, "p75_hours": p75, "p90_hours": p90});
    let s = summary("&team=core").await;
    assert_eq!(s["team"], "core");
    assert_eq!(s["since"], "2026-03-01T00:00:00.000Z");
    assert_eq!(
        s["pull_requests"],
        json!({"opened": 2, "merged": 2, "closed_without_merge": 0})
    );
    // Raw pickup 65 h and 85.5 h; working 2 h and 1.5 h. Percentiles round to the minute.
    assert_eq!(s["pickup_time"], stats(2, 75.25, 80.3833, 83.45));
    assert_eq!(
        s["working_time"],
        json!({
            "calendar": {"timezone": "Europe/Berlin",
                "working_days": ["mon", "tue", "wed", "thu", "fri"],
                "working_hours": "09:00-17:00", "holidays": ["2026-12-25"]},
            "coding_time": {"count": 0, "median_hours": null, "p75_hours": null, "p90_hours": null},
            "pickup_time": stats(2, 1.75, 1.8833, 1.95),
            "review_time": stats(2, 3.75, 4.3833, 4.75),
            "cycle_time": stats(2, 12.5, 15.25, 16.9),
            "time_to_merge": stats(2, 12.5, 15.25, 16.9),
        })
    );
    assert_eq!(s["cycle_time"], stats(2, 96.0, 109.0, 116.8));
    // Three of the four merged pull requests have an author in a team.
    assert_eq!(s["author_match_rate"], 0.75);
    // Reviews given by the team's members.
    assert_eq!(
        s["reviews_per_reviewer"],
        json!({"reviewers": 1, "reviews": 2, "average": 2.0,
            "by_reviewer": [{"login": "bob", "reviews": 2}]})
    );

    let s = summary("&team=web").await;
    assert_eq!(s["pull_requests"]["merged"], 1);
    assert_eq!(s["working_time"]["cycle_time"], stats(1, 3.0, 3.0, 3.0));
    assert_eq!(
        s["working_time"]["calendar"]["working_hours"],
        "10:00-18:00"
    );
    assert_eq!(
        s["reviews_per_reviewer"]["by_reviewer"],
        json!([{"login": "Carol-Renamed", "reviews": 1}])
    );

    let s = summary("&team=ghosts").await;
    assert_eq!(s["pull_requests"]["merged"], 0);
    assert_eq!(s["reviews_per_reviewer"]["reviews"], 0);

    // Every pull request, each in its author's team's calendar (dave's: the default).
    let s = summary("").await;
    assert_eq!(s["team"], Value::Null);
    assert_eq!(s["author_match_rate"], 0.75);
    // Raw 4, 66, 70, 122 h; working 1, 3, 7, 18 h.
    assert_eq!(s["time_to_merge"], stats(4, 68.0, 83.0, 106.4));
    assert_eq!(
        s["working_time"]["time_to_merge"],
        stats(4, 5.0, 9.75, 14.7)
    );
    assert_eq!(s["working_time"]["calendar"]["timezone"], "UTC");
    app.stop().await;
}

/// Every draft interval recorded from `opened` (as a draft), `converted_to_draft` and
/// `ready_for_review` webhooks is left out of pickup time, whatever order they arrive in.
async fn every_draft_interval_is_left_out_of_pickup_time(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    // Monday 2024-01-01, default calendar UTC 09:00-17:00. Draft 08:00-09:30, ready, draft
    // again 11:00-12:00, ready, first review 18:00.
    let mut opened = Pr::new(70, T0 + 8 * HOUR);
    opened.draft = true;
    let mut ready = opened.at(T0 + 9 * HOUR + 30 * MIN);
    ready.draft = false;
    let mut again = opened.at(T0 + 11 * HOUR);
    again.draft = true;
    let mut ready_again = opened.at(T0 + 12 * HOUR);
    ready_again.draft = false;
    post_all(
        &app,
        &[
            pr_event("ready_for_review", &ready_again),
            pr_event("converted_to_draft", &again),
            review_event(
                "submitted",
                &ready_again.at(T0 + 18 * HOUR),
                7701,
                BOB,
                "approved",
                T0 + 18 * HOUR,
            ),
            pr_event("opened", &opened),
            pr_event("ready_for_review", &ready),
        ],
    )
    .await;
    let rows = pulls(&app, "").await;
    let pr = by_number(&rows, 70);
    // 10 h less 2.5 h in draft; working: 09:00-17:00 less 09:00-09:30 and 11:00-12:00.
    assert_eq!(
        (
            &pr["ready_for_review_at"],
            &pr["pickup_hours"],
            &pr["pickup_working_hours"]
        ),
        (&json!("2024-01-01T09:30:00.000Z"), &json!(7.5), &json!(6.5))
    );
    // A rebuild from the stored events gives the same.
    hookdock::handlers::metrics::rebuild(&app.store, &app.settings.handlers.metrics)
        .await
        .expect("rebuild");
    assert_eq!(pulls(&app, "").await, rows);
    app.stop().await;
}

const GITHUB_TOKEN: &str = "ghp_hookdock_metrics_it_0123456789abcdef";

fn at(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).expect("a time")
}

/// Posts one delivery and waits until its jobs (and every other) are finished; its event id.
async fn post_one(app: &TestApp, d: &Delivery) -> i64 {
    let body = serde_json::to_vec(&d.doc).expect("serialize");
    let (status, answer) = app.post(d.event, &body, &new_delivery_id()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    app.wait_until_idle().await;
    answer["event_id"].as_i64().expect("event id")
}

/// With a GitHub token, `opened`, `synchronize` and `closed` webhooks each queue a job that
/// reads the pull request's commits: its first commit fills coding time and starts cycle time
/// (JSON, CSV and summary checked value by value). A rate-limited read is retried at GitHub's
/// `retry-after`; other actions read nothing; a rebuild keeps what was read.
async fn first_commits_are_read_after_webhooks_with_a_token(backend: Backend) {
    use hookdock_testkit::{FakeCommit, FakeGitHub, Fault};

    let fake = FakeGitHub::start().await;
    fake.add_token(GITHUB_TOKEN, "hookdock-bot", &["repo"]);
    fake.add_repo("Codertocat", "Hello-World");
    let api = fake.url();
    let app = TestApp::spawn_with(
        &backend,
        |s| {
            s.set("github_api_url", api)
                .set("github_token", GITHUB_TOKEN)
                // Any rate limit becomes a retry of the job rather than a wait inside it.
                .set("github.max_rate_wait_secs", 0)
        },
        vec![],
    )
    .await;
    // Opened Monday 10:00 UTC with commits written at 07:00 and 09:00.
    let mut opened = Pr::new(80, T0 + 10 * HOUR);
    opened.size = (10, 4, 2, 2);
    let opened_event = pr_event("opened", &opened);
    fake.add_pull(
        "Codertocat",
        "Hello-World",
        opened_event.doc["pull_request"].clone(),
    );
    let commit = |sha: &str, written: i64| FakeCommit::new(sha, "Codertocat", at(written));
    fake.set_pull_commits(
        "Codertocat",
        "Hello-World",
        80,
        &[
            commit(&"1".repeat(40), T0 + 7 * HOUR),
            commit(&opened.head_sha, T0 + 9 * HOUR),
        ],
    );
    let commits_path = "/repos/Codertocat/Hello-World/pulls/80/commits";
    fake.fail_next("GET", commits_path, Fault::secondary_rate_limit(1));

    let event_id = post_one(&app, &opened_event).await;
    let read = app.job(event_id, "metrics_commits").await;
    assert_eq!(
        (&read["status"], &read["attempts"]),
        (&json!("done"), &json!(2))
    );
    let rows = pulls(&app, "").await;
    assert_eq!(
        (
            &rows[0]["first_commit_at"],
            &rows[0]["coding_hours"],
            &rows[0]["coding_working_hours"]
        ),
        (&json!("2024-01-01T07:00:00.000Z"), &json!(3.0), &json!(1.0))
    );

    // At 12:00 a force-push rewrote the history: the earliest written commit is now 08:00.
    let mut pushed = opened.at(T0 + 12 * HOUR);
    pushed.head_sha = "2".repeat(40);
    fake.set_pull_commits(
        "Codertocat",
        "Hello-World",
        80,
        &[
            commit(&"3".repeat(40), T0 + 8 * HOUR),
            commit(&pushed.head_sha, T0 + 11 * HOUR + 30 * MIN),
        ],
    );
    post_one(&app, &pr_event("synchronize", &pushed)).await;
    // A label reads nothing.
    let mut labeled = pushed.at(T0 + 13 * HOUR);
    labeled.labels = vec!["bug"];
    let labeled_id = post_one(&app, &pr_event("labeled", &labeled)).await;
    let (_, detail) = app.api_get(&format!("/api/v1/events/{labeled_id}")).await;
    let handlers: Vec<&str> = detail["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["handler"].as_str())
        .collect();
    assert!(!handlers.contains(&"metrics_commits"), "{handlers:?}");
    post_one(
        &app,
        &pr_event("closed", &labeled.merged(T0 + 15 * HOUR, &"4".repeat(40))),
    )
    .await;

    let rows = pulls(&app, "").await;
    let expected = json!({
        "repo": REPO, "number": 80, "title": "Change 80", "author": "Codertocat",
        "author_is_bot": false, "team": null, "state": "merged", "draft": false,
        "base_ref": "master", "head_ref": "feature-80",
        "created_at": "2024-01-01T10:00:00.000Z", "ready_for_review_at": null,
        "first_commit_at": "2024-01-01T08:00:00.000Z", "first_review_at": null,
        "merged_at": "2024-01-01T15:00:00.000Z", "closed_at": "2024-01-01T15:00:00.000Z",
        // 08:00 → 10:00, of which 09:00-10:00 is working time.
        "coding_hours": 2.0, "coding_working_hours": 1.0,
        "pickup_hours": null, "pickup_working_hours": null,
        "review_hours": null, "review_working_hours": null,
        // 08:00 → 15:00, working from 09:00.
        "cycle_hours": 7.0, "cycle_working_hours": 6.0,
        "time_to_merge_hours": 5.0, "time_to_merge_working_hours": 5.0,
        "additions": 10, "deletions": 4, "size": 14, "changed_files": 2, "commits": 2,
        "reviews": 0, "is_revert": false, "reverts_number": null, "reverted": false,
        "is_hotfix": false, "labels": ["bug"]
    });
    assert_eq!(rows, [expected]);

    let csv = csv_rows(&app, "").await;
    let cell = |name: &str| csv[0][name].as_str();
    for (name, value) in [
        ("first_commit_at", "2024-01-01T08:00:00.000Z"),
        ("coding_hours", "2"),
        ("coding_working_hours", "1"),
        ("cycle_hours", "7"),
        ("cycle_working_hours", "6"),
        ("time_to_merge_hours", "5"),
    ] {
        assert_eq!(cell(name), value, "{name}");
    }

    let (_, s) = app
        .api_get(&format!(
            "/api/v1/metrics/summary?repo={REPO}&window=7d&until=2024-01-08"
        ))
        .await;
    let one = |h: f64| json!({"count": 1, "median_hours": h, "p75_hours": h, "p90_hours": h});
    assert_eq!(s["coding_time"], one(2.0), "{s}");
    assert_eq!(s["cycle_time"], one(7.0));
    assert_eq!(s["working_time"]["coding_time"], one(1.0));
    assert_eq!(s["working_time"]["cycle_time"], one(6.0));

    let reads = fake
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == commits_path)
        .count();
    assert_eq!(reads, 4, "opened (twice), synchronize, closed");

    // The newest answer is kept: a rebuild gives the same rows.
    let report = hookdock::handlers::metrics::rebuild(&app.store, &app.settings.handlers.metrics)
        .await
        .expect("rebuild");
    assert_eq!((report.events, report.snapshots), (4, 1));
    assert_eq!(pulls(&app, "").await, rows);
    app.stop().await;
    assert_eq!(fake.contract_violations(), Vec::<String>::new());
    assert_eq!(fake.fake_bugs(), Vec::<String>::new());
}

crate::backend_tests!(
    first_commits_are_read_after_webhooks_with_a_token,
    merged_pull_request_with_reviews_has_expected_metrics,
    drafts_reopens_reverts_and_ignored_reviews_have_expected_metrics,
    bot_reviews_count_when_configured,
    older_events_never_overwrite_newer_state_and_partial_data_fills_in,
    rebuild_command_recomputes_rows_under_changed_settings,
    bad_parameters_are_refused_naming_the_parameter,
    any_order_of_a_pull_requests_events_gives_the_same_rows,
    teams_filter_and_working_hours_follow_the_calendars,
    every_draft_interval_is_left_out_of_pickup_time,
);
