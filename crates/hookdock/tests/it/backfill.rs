//! `metrics backfill` against the fake GitHub held to GitHub's REST contract: pull requests
//! built from real webhook payloads (`pull_request` objects given their own numbers, ids and
//! times), reviews submitted through the fake's API. Checked: the stored rows value by value, a
//! second run and a run after the webhooks change nothing, a secondary rate limit is waited out
//! on the manual clock, and an interrupted run resumes without fetching again what it had done.
//!
//! The fake lists pull requests by number, newest first, whatever `sort` asks; so here numbers
//! follow the order of `updated_at`, as GitHub's `sort=updated&direction=desc` would list them.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hookdock::clock::{Clock, ManualClock};
use hookdock::config::MetricsSettings;
use hookdock::github::{Github, GithubClient, GithubConfig};
use hookdock::handlers::backfill::{Backfill, BackfillError, BackfillProgress, BackfillReport};
use hookdock::handlers::metrics::effects_for;
use hookdock::store::{
    MemberRow, PullFilter, PullRequestRow, ReviewRow, Store, StoreOptions, rfc3339,
};
use hookdock_testkit::{FakeCommit, FakeGitHub, Fault};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{
    Backend, TOKEN as ADMIN_TOKEN, TestApp, TestDb, fixture, json_answer, poll_until,
};

const OWNER: &str = "Codertocat";
const NAME: &str = "Hello-World";
const REPO: &str = "Codertocat/Hello-World";
const TOKEN: &str = "ghp_hookdock_backfill_it_0123456789abcdef";
const BOB_TOKEN: &str = "ghp_hookdock_backfill_bob_0123456789abcd";
const CAROL_TOKEN: &str = "ghp_hookdock_backfill_carol_0123456789ab";
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const NINETY_DAYS: Duration = Duration::from_secs(90 * 86_400);

struct Env {
    fake: FakeGitHub,
    clock: ManualClock,
    client: GithubClient,
    store: Store,
    _db: TestDb,
    /// The manual clock's start (Unix ms): pull request times are set relative to it.
    now: i64,
}

impl Env {
    async fn new(backend: &Backend) -> Env {
        let fake = FakeGitHub::start().await;
        fake.add_token(TOKEN, "octocat", &["repo"]);
        fake.add_token(BOB_TOKEN, "bob", &["repo"]);
        fake.add_token(CAROL_TOKEN, "carol", &["repo"]);
        fake.add_repo(OWNER, NAME);
        let start = this_second();
        let clock = ManualClock::new(start);
        let github = Github::new(
            GithubConfig {
                api_url: fake.url(),
                ..GithubConfig::default()
            },
            Arc::new(clock.clone()),
        )
        .expect("client");
        let client = github.client(Some(SecretString::from(TOKEN)));
        let db = TestDb::create(backend).await;
        let store = Store::connect(&db.url, StoreOptions::default())
            .await
            .expect("store");
        store.migrate().await.expect("migrate");
        Env {
            fake,
            clock,
            client,
            store,
            _db: db,
            now: ms(start),
        }
    }

    async fn backfill(&self) -> Result<(BackfillReport, Vec<BackfillProgress>), BackfillError> {
        let settings = settings();
        let backfill = Backfill {
            store: &self.store,
            github: &self.client,
            clock: &self.clock,
            settings: &settings,
        };
        let mut seen = Vec::new();
        let report = backfill
            .run(REPO, NINETY_DAYS, &mut |p| seen.push(p))
            .await?;
        Ok((report, seen))
    }

    /// A hookdock instance on a database of its own that acts on the fake with [`TOKEN`].
    async fn app(&self, backend: &Backend) -> TestApp {
        let api = self.fake.url();
        TestApp::spawn_with(
            backend,
            |s| s.set("github_api_url", api).set("github_token", TOKEN),
            vec![],
        )
        .await
    }

    /// The repository's latest backfill run, as of the manual clock.
    async fn run_status(&self) -> hookdock::handlers::backfill::BackfillStatus {
        hookdock::handlers::backfill::backfill_status(&self.store, &self.clock, REPO)
            .await
            .expect("status")
            .expect("a run")
    }

    /// GETs of exactly this path.
    fn gets(&self, path: &str) -> usize {
        self.fake
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == path)
            .count()
    }

    async fn review(&self, token: &str, number: i64, body: Value) {
        let response = reqwest::Client::new()
            .post(format!(
                "{}/repos/{OWNER}/{NAME}/pulls/{number}/reviews",
                self.fake.url()
            ))
            .bearer_auth(token)
            .header("accept", "application/vnd.github+json")
            .header("user-agent", "hookdock-test")
            .json(&body)
            .send()
            .await
            .expect("review request");
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
    }

    /// Comments in the conversation of pull request `number` as the token's user.
    async fn comment(&self, token: &str, number: i64, body: &str) {
        let response = reqwest::Client::new()
            .post(format!(
                "{}/repos/{OWNER}/{NAME}/issues/{number}/comments",
                self.fake.url()
            ))
            .bearer_auth(token)
            .header("accept", "application/vnd.github+json")
            .header("user-agent", "hookdock-test")
            .json(&json!({ "body": body }))
            .send()
            .await
            .expect("comment request");
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
    }

    async fn rows(&self) -> Rows {
        let pulls = self
            .store
            .pull_requests(&PullFilter {
                repo: Some(REPO.into()),
                ..PullFilter::default()
            })
            .await
            .expect("pulls");
        let mut reviews = Vec::new();
        for p in &pulls {
            reviews.extend(
                self.store
                    .reviews_of(REPO, p.number)
                    .await
                    .expect("reviews"),
            );
        }
        Rows {
            pulls,
            reviews,
            members: self.store.members().await.expect("members"),
        }
    }

    fn assert_clean(&self) {
        assert_eq!(self.fake.contract_violations(), Vec::<String>::new());
        assert_eq!(self.fake.fake_bugs(), Vec::<String>::new());
    }
}

#[derive(Debug, PartialEq)]
struct Rows {
    pulls: Vec<PullRequestRow>,
    reviews: Vec<ReviewRow>,
    members: Vec<MemberRow>,
}

fn settings() -> MetricsSettings {
    MetricsSettings {
        enabled: true,
        hotfix_branch_prefixes: vec!["hotfix/".into(), "hotfix-".into()],
        hotfix_labels: vec!["hotfix".into()],
        count_bot_reviews: false,
        fetch_commits: true,
        timezone: "UTC".into(),
        working_days: vec![
            "mon".into(),
            "tue".into(),
            "wed".into(),
            "thu".into(),
            "fri".into(),
        ],
        working_hours: "09:00-17:00".into(),
        holidays: vec![],
        teams: vec![],
    }
}

fn this_second() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn ms(t: SystemTime) -> i64 {
    i64::try_from(
        t.duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("i64")
}

/// Whole seconds, as GitHub writes times.
fn time(ms: i64) -> String {
    rfc3339(ms - ms.rem_euclid(1000)).replace(".000Z", "Z")
}

fn secs(ms: i64) -> i64 {
    ms - ms.rem_euclid(1000)
}

/// The `pull_request` object of a real payload, made pull request `number`.
fn pull(fixture_name: &str, number: i64, created: i64, updated: i64) -> Value {
    let payload: Value = serde_json::from_slice(&fixture(fixture_name)).expect("JSON fixture");
    let mut pr = payload["pull_request"].clone();
    let base = pr["url"]
        .as_str()
        .expect("url")
        .trim_end_matches("/2")
        .to_owned();
    pr["number"] = json!(number);
    pr["id"] = json!(279_147_400 + number);
    pr["node_id"] = json!(format!("MDExOlB1bGxSZXF1ZXN0{number}"));
    pr["url"] = json!(format!("{base}/{number}"));
    pr["title"] = json!(format!("Change number {number}"));
    pr["created_at"] = json!(time(created));
    pr["updated_at"] = json!(time(updated));
    pr
}

/// #12 merged with two reviews, #11 closed (label `bug`) with a comment review and a pending
/// one, #10 open, and #9, last updated 100 days ago, outside the window.
async fn seed(env: &Env) -> Vec<Value> {
    let now = env.now;
    let mut merged = pull("pull_request.closed.0", 12, now - 5 * DAY, now - 2 * DAY);
    merged["merged"] = json!(true);
    merged["merged_at"] = json!(time(now - 2 * DAY));
    merged["closed_at"] = json!(time(now - 2 * DAY));
    merged["merge_commit_sha"] = json!("1111111111111111111111111111111111111111");
    merged["labels"] = json!([]);
    merged["additions"] = json!(30);
    merged["deletions"] = json!(4);
    merged["changed_files"] = json!(3);
    merged["commits"] = json!(2);
    let mut closed = pull("pull_request.closed.0", 11, now - 15 * DAY, now - 14 * DAY);
    closed["closed_at"] = json!(time(now - 14 * DAY));
    let open = pull("pull_request.opened.0", 10, now - 20 * DAY, now - 19 * DAY);
    let old = pull("pull_request.opened.0", 9, now - 200 * DAY, now - 100 * DAY);
    let pulls = vec![merged, closed, open, old];
    for p in &pulls {
        env.fake.add_pull(OWNER, NAME, p.clone());
    }
    env.review(BOB_TOKEN, 12, json!({"event": "APPROVE", "body": "LGTM"}))
        .await;
    env.review(
        CAROL_TOKEN,
        12,
        json!({"event": "REQUEST_CHANGES", "body": "Please add a test"}),
    )
    .await;
    env.review(BOB_TOKEN, 11, json!({"event": "COMMENT", "body": "Why?"}))
        .await;
    env.review(CAROL_TOKEN, 11, json!({"body": "draft thoughts"}))
        .await;
    // The open pull request has no review, only bob's question in the conversation.
    env.comment(BOB_TOKEN, 10, "Is this still needed?").await;
    pulls
}

/// The reviews the fake holds for `number`: `(id, submitted_at)` of the submitted ones.
fn submitted(env: &Env, number: u64) -> Vec<(i64, i64)> {
    env.fake
        .reviews(OWNER, NAME, number)
        .iter()
        .filter_map(|r| {
            let at = r["submitted_at"].as_str()?;
            let at = hookdock::handlers::metrics::parse_time(at)?;
            Some((r["id"].as_i64()?, at))
        })
        .collect()
}

async fn check_rows(env: &Env) {
    let now = env.now;
    let rows = env.rows().await;
    let numbers: Vec<i64> = rows.pulls.iter().map(|p| p.number).collect();
    assert_eq!(numbers, [10, 11, 12], "by creation time");

    let merged = &rows.pulls[2];
    let reviews_12 = submitted(env, 12);
    assert_eq!(reviews_12.len(), 2);
    assert_eq!(merged.repo, REPO);
    assert_eq!(merged.github_id, 279_147_412);
    assert_eq!(merged.title, "Change number 12");
    assert_eq!(merged.author.as_deref(), Some("Codertocat"));
    assert_eq!(merged.state, "merged");
    assert!(!merged.draft);
    assert_eq!(merged.created_at, secs(now - 5 * DAY));
    assert_eq!(merged.updated_at, secs(now - 2 * DAY));
    assert_eq!(merged.merged_at, Some(secs(now - 2 * DAY)));
    assert_eq!(merged.closed_at, Some(secs(now - 2 * DAY)));
    assert_eq!(
        (
            merged.additions,
            merged.deletions,
            merged.changed_files,
            merged.commits
        ),
        (Some(30), Some(4), Some(3), Some(2))
    );
    assert_eq!(
        merged.merge_commit_sha.as_deref(),
        Some("1111111111111111111111111111111111111111")
    );
    assert_eq!(merged.reviews, 2);
    assert_eq!(
        merged.first_review_at,
        reviews_12.iter().map(|r| r.1).min(),
        "the earliest review by someone else"
    );
    // The fake's commits: #12 has two, written 2 h and 1 h before it was opened.
    assert_eq!(
        merged.first_commit_at,
        Some(secs(now - 5 * DAY) - 2 * HOUR),
        "the earliest written of its commits"
    );
    assert!(merged.labels.is_empty());

    let closed = &rows.pulls[1];
    assert_eq!(closed.state, "closed");
    assert_eq!(closed.merged_at, None);
    assert_eq!(closed.closed_at, Some(secs(now - 14 * DAY)));
    assert_eq!(closed.labels, ["bug"]);
    assert_eq!(closed.reviews, 1, "the pending review is not one");
    assert_eq!((closed.additions, closed.deletions), (Some(1), Some(1)));
    assert_eq!(closed.first_commit_at, Some(secs(now - 15 * DAY) - HOUR));

    let open = &rows.pulls[0];
    assert_eq!(open.state, "open");
    let commented = env.fake.issue_comments(OWNER, NAME, 10);
    let commented_at = commented[0]["created_at"]
        .as_str()
        .and_then(hookdock::handlers::metrics::parse_time);
    assert!(commented_at.is_some(), "{commented:?}");
    assert_eq!(
        (open.reviews, open.first_review_at),
        (0, commented_at),
        "a comment by someone else is the first review, not a review"
    );
    assert_eq!(open.created_at, secs(now - 20 * DAY));
    assert_eq!(open.first_commit_at, Some(secs(now - 20 * DAY) - HOUR));
    for p in &rows.pulls {
        assert_eq!(
            (p.draft_intervals.as_slice(), p.ready_for_review_at),
            (&[][..], None),
            "#{} was never a draft",
            p.number
        );
    }

    let states: Vec<(i64, &str, i64)> = rows
        .reviews
        .iter()
        .map(|r| (r.pr_number, r.state.as_str(), r.github_id))
        .collect();
    let r12 = submitted(env, 12);
    let r11 = submitted(env, 11);
    assert_eq!(r11.len(), 1);
    assert_eq!(
        states,
        [
            (11, "commented", r11[0].0),
            (12, "approved", r12[0].0),
            (12, "changes_requested", r12[1].0),
        ],
        "REST states normalized to lowercase"
    );
    for r in &rows.reviews {
        let at = r12
            .iter()
            .chain(&r11)
            .find(|s| s.0 == r.github_id)
            .expect("known");
        assert_eq!(r.submitted_at, at.1);
    }

    let logins: Vec<&str> = rows.members.iter().map(|m| m.login.as_str()).collect();
    assert_eq!(rows.members.len(), 3, "{logins:?}");
    for login in ["Codertocat", "bob", "carol"] {
        assert!(logins.contains(&login), "{logins:?}");
    }
}

async fn stores_pull_requests_and_reviews_and_a_second_run_changes_nothing(backend: Backend) {
    let env = Env::new(&backend).await;
    seed(&env).await;

    let (report, progress) = env.backfill().await.expect("backfill");
    assert_eq!(
        report,
        BackfillReport {
            repo: REPO.into(),
            listed: 3,
            fetched: 3,
            resumed: 0,
            reviews: 3,
            reviews_skipped: 1,
            comments: 1,
            commits: 4,
            draft_changes: 0,
        }
    );
    assert_eq!(
        progress,
        [
            BackfillProgress::Listed { pulls: 3 },
            BackfillProgress::Pulls { done: 1, total: 3 },
            BackfillProgress::Pulls { done: 2, total: 3 },
            BackfillProgress::Pulls { done: 3, total: 3 },
        ]
    );
    check_rows(&env).await;
    assert_eq!(
        env.gets("/repos/Codertocat/Hello-World/pulls/9"),
        0,
        "older than the window"
    );
    let list = env
        .fake
        .requests()
        .into_iter()
        .find(|r| r.method == "GET" && r.path == "/repos/Codertocat/Hello-World/pulls")
        .expect("listed");
    for param in [
        "state=all",
        "sort=updated",
        "direction=desc",
        "per_page=100",
    ] {
        assert!(list.query.contains(param), "{}", list.query);
    }
    let progress_row = env
        .store
        .backfill_progress(REPO)
        .await
        .expect("progress")
        .expect("row");
    assert!(progress_row.completed_at.is_some());
    assert_eq!(progress_row.pulls_done, 3);

    let before = env.rows().await;
    let (again, _) = env.backfill().await.expect("second backfill");
    assert_eq!(
        (again.fetched, again.resumed),
        (3, 0),
        "a finished run starts afresh"
    );
    assert_eq!(env.rows().await, before, "a second run changes nothing");
    // The second run asked with the ETags of the first (a 304 costs no rate limit).
    for path in [
        "/repos/Codertocat/Hello-World/pulls/12",
        "/repos/Codertocat/Hello-World/pulls/12/commits",
        "/repos/Codertocat/Hello-World/issues/12/events",
    ] {
        let asked: Vec<bool> = env
            .fake
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == path)
            .map(|r| r.header("if-none-match").is_some())
            .collect();
        assert_eq!(asked, [false, true], "{path}");
    }
    env.assert_clean();
}

async fn agrees_with_the_webhook_data_whatever_comes_first(backend: Backend) {
    // One database fed the webhooks' view first, then the backfill; the other only backfilled.
    let hooks_first = Env::new(&backend).await;
    let pulls = seed(&hooks_first).await;
    let settings = settings();
    let mut effects = Vec::new();
    for (pr, action) in pulls.iter().take(3).zip(["closed", "closed", "opened"]) {
        let payload = json!({
            "action": action,
            "pull_request": pr,
            "repository": {"full_name": REPO},
        });
        effects.extend(
            effects_for("pull_request", Some(action), &payload, &settings).expect("parses"),
        );
    }
    hooks_first
        .store
        .apply_effects(&effects)
        .await
        .expect("webhooks");
    hooks_first.backfill().await.expect("backfill");
    check_rows(&hooks_first).await;
    hooks_first.assert_clean();
}

async fn waits_out_a_secondary_rate_limit(backend: Backend) {
    let env = Env::new(&backend).await;
    seed(&env).await;
    // The quota is spent when #12's issue events are asked for (reset in two minutes), and a
    // secondary limit hits #11.
    env.fake.fail_next(
        "GET",
        "/repos/Codertocat/Hello-World/issues/12/events",
        Fault::primary_rate_limit(env.now / 1000 + 120),
    );
    env.fake.fail_next(
        "GET",
        "/repos/Codertocat/Hello-World/pulls/11",
        Fault::secondary_rate_limit(90),
    );
    let started = env.clock.now();
    env.backfill().await.expect("backfill");
    assert_eq!(
        env.clock.sleeps(),
        [Duration::from_secs(121), Duration::from_secs(90)],
        "until a second after the reset, then retry-after"
    );
    assert_eq!(
        env.clock.now().duration_since(started).expect("forward"),
        Duration::from_secs(211)
    );
    assert_eq!(
        env.gets("/repos/Codertocat/Hello-World/issues/12/events"),
        2
    );
    assert_eq!(env.gets("/repos/Codertocat/Hello-World/pulls/11"), 2);
    check_rows(&env).await;
    env.assert_clean();
}

async fn an_interrupted_run_resumes_where_it_stopped(backend: Backend) {
    let env = Env::new(&backend).await;
    seed(&env).await;
    // GitHub fails #11 on the first attempt and both retries: the run stops after #12.
    env.fake.fail_next(
        "GET",
        "/repos/Codertocat/Hello-World/pulls/11/reviews",
        Fault::server_error().times(3),
    );
    let err = env.backfill().await.expect_err("GitHub kept failing");
    assert!(matches!(err, BackfillError::Github(_)), "{err}");
    assert!(
        err.to_string().contains("run the same backfill again"),
        "{err}"
    );
    let progress = env
        .store
        .backfill_progress(REPO)
        .await
        .expect("progress")
        .expect("row");
    assert_eq!(progress.completed_at, None);
    assert_eq!(progress.pulls_done, 1);
    assert_eq!(progress.cursor, Some((secs(env.now - 2 * DAY), 12)));
    let stored: Vec<i64> = env.rows().await.pulls.iter().map(|p| p.number).collect();
    assert_eq!(stored, [12], "#11 is not half stored");

    let (report, progress) = env.backfill().await.expect("resumed backfill");
    assert_eq!((report.listed, report.fetched, report.resumed), (3, 2, 1));
    assert_eq!(
        progress.last(),
        Some(&BackfillProgress::Pulls { done: 3, total: 3 })
    );
    assert_eq!(
        env.gets("/repos/Codertocat/Hello-World/pulls/12"),
        1,
        "not fetched again"
    );
    assert_eq!(
        env.gets("/repos/Codertocat/Hello-World/pulls/12/reviews"),
        1
    );
    assert_eq!(env.gets("/repos/Codertocat/Hello-World/pulls/11"), 2);
    assert_eq!(env.gets("/repos/Codertocat/Hello-World/pulls/10"), 1);
    for n in [12, 11, 10] {
        assert_eq!(
            env.gets(&format!("/repos/Codertocat/Hello-World/pulls/{n}/commits")),
            1,
            "#{n}: the stopped run had not reached #11's commits"
        );
        assert_eq!(
            env.gets(&format!("/repos/Codertocat/Hello-World/issues/{n}/events")),
            1
        );
    }
    check_rows(&env).await;
    let done = env
        .store
        .backfill_progress(REPO)
        .await
        .expect("progress")
        .expect("row");
    assert!(done.completed_at.is_some());
    assert_eq!(done.pulls_done, 3);
    env.assert_clean();
}

async fn a_resumed_run_fetches_again_what_changed_or_was_lost(backend: Backend) {
    let env = Env::new(&backend).await;
    seed(&env).await;
    let fail_10 = || {
        env.fake.fail_next(
            "GET",
            "/repos/Codertocat/Hello-World/pulls/10",
            Fault::server_error().times(3),
        )
    };
    fail_10();
    env.backfill().await.expect_err("GitHub kept failing");
    assert_eq!(env.rows().await.pulls.len(), 2);

    // #12 is renamed on GitHub after the run began: fetched again, and #11 is not.
    env.clock.advance(Duration::from_secs(3600));
    let mut renamed = pull(
        "pull_request.closed.0",
        12,
        env.now - 5 * DAY,
        env.now + 30 * 60_000,
    );
    renamed["merged"] = json!(true);
    renamed["merged_at"] = json!(time(env.now - 2 * DAY));
    renamed["closed_at"] = json!(time(env.now - 2 * DAY));
    renamed["title"] = json!("Renamed after merge");
    env.fake.add_pull(OWNER, NAME, renamed);
    fail_10();
    env.backfill().await.expect_err("GitHub failed again");
    assert_eq!(env.gets("/repos/Codertocat/Hello-World/pulls/12"), 2);
    assert_eq!(env.gets("/repos/Codertocat/Hello-World/pulls/11"), 1);
    let rows = env.rows().await;
    assert_eq!(
        rows.pulls.last().map(|p| p.title.as_str()),
        Some("Renamed after merge")
    );

    // A rebuild recomputes the backfilled rows from the API answers the runs kept.
    let before = env.rows().await;
    let rebuilt = hookdock::handlers::metrics::rebuild(&env.store, &settings())
        .await
        .expect("rebuild");
    assert_eq!(rebuilt.events, 0, "no webhook events here");
    assert_eq!(
        rebuilt.snapshots as usize,
        3 * before.pulls.len() + before.reviews.len(),
        "per pull request its own, its commits and its issue events; one per review"
    );
    let after = env.rows().await;
    assert_eq!(after.pulls, before.pulls);
    assert_eq!(after.reviews, before.reviews);
    assert_eq!(after.members, before.members);

    // Rows lost otherwise (the tables emptied by hand) are fetched again.
    env.store.clear_metrics().await.expect("clear");
    let (report, _) = env.backfill().await.expect("resumed backfill");
    assert_eq!((report.fetched, report.resumed), (3, 0));
    let rows = env.rows().await;
    assert_eq!(rows.pulls.len(), 3);
    assert_eq!(rows.reviews.len(), 3);
    env.assert_clean();
}

fn at(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).expect("a time")
}

/// Turns #20 into a draft (`true`) or marks it ready on GitHub, `hours` after `created`.
fn change_drafts(fake: &FakeGitHub, created: i64, changes: &[(i64, bool)]) {
    for &(hours, draft) in changes {
        fake.set_draft(
            OWNER,
            NAME,
            20,
            "Codertocat",
            at(created + hours * HOUR),
            draft,
        );
    }
}

/// #20, opened as a draft ten days ago: marked ready 2 h later, turned back into a draft at
/// +5 h, ready again at +6 h. Its 130 commits (two pages) were rebased: the earliest written is
/// the 41st listed. The same pull request as its webhooks describe it, in another database.
async fn first_commits_and_draft_intervals_are_backfilled_as_the_webhooks_give_them(
    backend: Backend,
) {
    let env = Env::new(&backend).await;
    let created = secs(env.now - 10 * DAY);
    let mut opened = pull("pull_request.opened.0", 20, created, created);
    opened["draft"] = json!(true);
    let commits: Vec<FakeCommit> = (0..130i64)
        .map(|i| {
            let written = if i == 40 {
                created - 3 * DAY
            } else {
                created - 2 * DAY + i * 60_000
            };
            let mut c = FakeCommit::new(&format!("{:040x}", 0xc000 + i), "Codertocat", at(written));
            c.committed_at = at(created - 10 * 60_000);
            c
        })
        .collect();
    opened["head"]["sha"] = json!(commits[129].sha);
    opened["commits"] = json!(130);
    env.fake.add_pull(OWNER, NAME, opened.clone());
    env.fake.set_pull_commits(OWNER, NAME, 20, &commits);
    let changes = [(2, false), (5, true), (6, false)];
    change_drafts(&env.fake, created, &changes);

    let (report, _) = env.backfill().await.expect("backfill");
    assert_eq!(
        (report.fetched, report.commits, report.draft_changes),
        (1, 130, 3)
    );
    assert_eq!(
        env.gets("/repos/Codertocat/Hello-World/pulls/20/commits"),
        2,
        "two pages of commits"
    );
    let backfilled = env.rows().await;
    let pr = &backfilled.pulls[0];
    assert_eq!(
        pr.first_commit_at,
        Some(created - 3 * DAY),
        "the 41st listed"
    );
    assert_eq!(pr.ready_for_review_at, Some(created + 2 * HOUR));
    assert_eq!(
        pr.draft_intervals,
        [
            (created, Some(created + 2 * HOUR)),
            (created + 5 * HOUR, Some(created + 6 * HOUR))
        ]
    );
    assert!(!pr.draft);
    let d = hookdock::metrics::durations(pr);
    assert_eq!(
        d.coding,
        Some(3 * 24 * 60),
        "first commit to opened: 3 days"
    );

    // The webhooks of the same changes give the same draft intervals; the backfill after them
    // changes nothing but adds the first commit.
    let hooks = Env::new(&backend).await;
    let mut effects = Vec::new();
    let mut state = opened.clone();
    let mut events = vec![("opened", state.clone())];
    for (hours, draft) in changes {
        state["draft"] = json!(draft);
        state["updated_at"] = json!(time(created + hours * HOUR));
        let action = if draft {
            "converted_to_draft"
        } else {
            "ready_for_review"
        };
        events.push((action, state.clone()));
    }
    for (action, pr) in &events {
        let payload =
            json!({"action": action, "pull_request": pr, "repository": {"full_name": REPO}});
        effects.extend(
            effects_for("pull_request", Some(action), &payload, &settings()).expect("parses"),
        );
    }
    hooks.store.apply_effects(&effects).await.expect("webhooks");
    let from_hooks = hooks.rows().await;
    assert_eq!(from_hooks.pulls[0].draft_intervals, pr.draft_intervals);
    assert_eq!(
        from_hooks.pulls[0].ready_for_review_at,
        pr.ready_for_review_at
    );
    assert_eq!(
        from_hooks.pulls[0].first_commit_at, None,
        "webhooks carry no commit times"
    );
    hooks.fake.add_repo(OWNER, NAME);
    hooks.fake.add_pull(OWNER, NAME, opened.clone());
    hooks.fake.set_pull_commits(OWNER, NAME, 20, &commits);
    change_drafts(&hooks.fake, created, &changes);
    hooks.backfill().await.expect("backfill after the webhooks");
    assert_eq!(hooks.rows().await.pulls, backfilled.pulls);

    // A rebuild recomputes both from the kept answers.
    let rebuilt = hookdock::handlers::metrics::rebuild(&env.store, &settings())
        .await
        .expect("rebuild");
    assert_eq!((rebuilt.snapshots, rebuilt.skipped), (3, 0));
    assert_eq!(env.rows().await, backfilled);
    env.assert_clean();
    hooks.assert_clean();
}

async fn names_a_repository_github_does_not_have(backend: Backend) {
    let env = Env::new(&backend).await;
    let settings = settings();
    let backfill = Backfill {
        store: &env.store,
        github: &env.client,
        clock: &env.clock,
        settings: &settings,
    };
    let err = backfill
        .run("Codertocat/missing", NINETY_DAYS, &mut |_| {})
        .await
        .expect_err("no such repository");
    assert!(err.to_string().contains("404"), "{err}");
    let err = backfill
        .run("not-a-repo", NINETY_DAYS, &mut |_| {})
        .await
        .expect_err("bad name");
    assert!(matches!(err, BackfillError::BadRepo(_)), "{err}");
    env.assert_clean();
}

/// `POST /api/v1/metrics/backfill` runs the same backfill in the background: 202 with a status
/// URL whose progress ends `done` with the run's report; the rows are those of a CLI run.
async fn the_api_starts_a_backfill_in_the_background(backend: Backend) {
    let env = Env::new(&backend).await;
    seed(&env).await;
    let app = env.app(&backend).await;
    let post = |body: Value| post_backfill(&app, body);

    for (body, named) in [
        (json!({"since": "30d"}), "repo"),
        (json!({"repo": "nope"}), "repo"),
        (json!({"repo": REPO, "since": "soon"}), "since"),
        (json!({"repo": REPO, "since": "0d"}), "since"),
        (json!({"repo": REPO, "colour": "red"}), "colour"),
    ] {
        let (status, answer) = post(body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"], "invalid_parameter", "{answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(named), "{body}: {message}");
    }
    let (status, answer) = app
        .api_get("/api/v1/metrics/backfill/Codertocat/Hello-World")
        .await;
    assert_eq!(status, 404, "nothing started yet: {answer}");

    let (status, started) = post(json!({"repo": REPO, "since": "90d"})).await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(
        started["status_url"],
        "/api/v1/metrics/backfill/Codertocat/Hello-World"
    );
    assert_eq!(
        (&started["state"], &started["since"]),
        (&json!("running"), &json!("90d"))
    );
    let last = std::cell::RefCell::new(Value::Null);
    poll_until("the backfill to finish", Duration::from_secs(30), || {
        let (app, last) = (&app, &last);
        async move {
            let (status, body) = app
                .api_get("/api/v1/metrics/backfill/codertocat/hello-world")
                .await;
            assert_eq!(status, 200, "{body}");
            let finished = body["state"] != "running";
            *last.borrow_mut() = body;
            finished
        }
    })
    .await;
    let last = last.into_inner();
    assert_eq!(last["state"], "done", "{last}");
    assert_eq!(
        (
            &last["listed"],
            &last["done"],
            &last["total"],
            &last["error"]
        ),
        (&json!(3), &json!(3), &json!(3), &Value::Null)
    );
    assert_eq!(
        last["report"],
        json!({"repo": REPO, "listed": 3, "fetched": 3, "resumed": 0, "reviews": 3,
            "reviews_skipped": 1, "comments": 1, "commits": 4, "draft_changes": 0})
    );
    let pulls = app
        .store
        .pull_requests(&PullFilter {
            repo: Some(REPO.into()),
            ..PullFilter::default()
        })
        .await
        .expect("pulls");
    assert_eq!(
        pulls.iter().map(|p| p.number).collect::<Vec<_>>(),
        [10, 11, 12]
    );
    assert_eq!(
        app.store.reviews_of(REPO, 12).await.expect("reviews").len(),
        2
    );

    // A repository GitHub does not have: the run fails and says why.
    let (status, _) = post(json!({"repo": "Codertocat/missing"})).await;
    assert_eq!(status, 202);
    let failed = std::cell::RefCell::new(Value::Null);
    poll_until(
        "the failing backfill to end",
        Duration::from_secs(30),
        || {
            let (app, failed) = (&app, &failed);
            async move {
                let (_, body) = app
                    .api_get("/api/v1/metrics/backfill/Codertocat/missing")
                    .await;
                let finished = body["state"] != "running";
                *failed.borrow_mut() = body;
                finished
            }
        },
    )
    .await;
    let failed = failed.into_inner();
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["since"], "90d", "the default span");
    assert!(
        failed["error"].as_str().unwrap_or_default().contains("404"),
        "{failed}"
    );
    app.stop().await;
    env.assert_clean();
}

/// Polls `path` on `app` until `done(body)` holds; the last body.
async fn status_until(
    app: &TestApp,
    path: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let last = std::cell::RefCell::new(Value::Null);
    poll_until(what, Duration::from_secs(30), || {
        let last = &last;
        let done = &done;
        async move {
            let (status, body) = app.api_get(path).await;
            assert!(status == 200 || status == 404, "{status}: {body}");
            let reached = done(&body);
            *last.borrow_mut() = body;
            reached
        }
    })
    .await;
    last.into_inner()
}

/// Whether the fake has taken the run's `GET` of #11 (and with it the fault holding it back):
/// from then on the run is waiting there, and a stop finds #12 done and #11 not.
fn holding_11(env: &Env) -> bool {
    env.fake
        .requests()
        .iter()
        .any(|r| r.method == "GET" && r.path == "/repos/Codertocat/Hello-World/pulls/11")
}

async fn post_backfill(app: &TestApp, body: Value) -> (reqwest::StatusCode, Value) {
    let request = app
        .client
        .post(format!("{}/api/v1/metrics/backfill", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body);
    json_answer(request.send().await.expect("request")).await
}

const STATUS: &str = "/api/v1/metrics/backfill/Codertocat/Hello-World";

/// Two instances share one database: a backfill started on one is refused (409) on the other
/// and by the CLI while it runs, and both answer its status. The instance running it shuts down
/// mid-way: once restarted it shows the run interrupted, and a new start resumes it.
async fn a_backfill_runs_once_across_instances_and_survives_a_restart_as_interrupted(
    backend: Backend,
) {
    let env = Env::new(&backend).await;
    seed(&env).await;
    let a = env.app(&backend).await;
    let b = a.spawn_beside().await;
    // GitHub holds #11 back: the run stops there, with #12 done.
    env.fake.fail_next(
        "GET",
        "/repos/Codertocat/Hello-World/pulls/11",
        Fault::slow(Duration::from_secs(600)),
    );
    let (status, started) = post_backfill(&a, json!({"repo": REPO})).await;
    assert_eq!(status, 202, "{started}");
    let running = status_until(&b, STATUS, "#12 done, seen from the other instance", |s| {
        s["done"] == 1
    })
    .await;
    poll_until("GitHub to hold #11", Duration::from_secs(30), || async {
        holding_11(&env)
    })
    .await;
    assert_eq!(
        (
            &running["state"],
            &running["started_by"],
            &running["listed"],
            &running["total"]
        ),
        (&json!("running"), &json!("api"), &json!(3), &json!(3))
    );
    assert_eq!(running["started_at"], started["started_at"]);

    let (status, refused) = post_backfill(&b, json!({"repo": "codertocat/hello-world"})).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(
        (&refused["state"], &refused["started_at"]),
        (&json!("running"), &started["started_at"])
    );
    let url = a.settings.database_url.clone();
    let fake_url = env.fake.url();
    let cli = tokio::task::spawn_blocking(move || cli_backfill(&["backfill"], &url, &fake_url))
        .await
        .expect("join");
    assert!(!cli.status.success());
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(
        stderr.contains(
            "a backfill of Codertocat/Hello-World is already running (started by the api"
        ),
        "{stderr}"
    );

    b.stop().await;
    let stopped = a.stop_keeping_data().await;
    let a = stopped.start().await;
    let (_, interrupted) = a.api_get(STATUS).await;
    assert_eq!(
        (&interrupted["state"], &interrupted["done"]),
        (&json!("interrupted"), &json!(1)),
        "{interrupted}"
    );
    assert!(
        interrupted["error"]
            .as_str()
            .is_some_and(|e| e.contains("stopped before the end")),
        "{interrupted}"
    );
    assert!(interrupted["finished_at"].is_string(), "{interrupted}");

    let (status, again) = post_backfill(&a, json!({"repo": REPO})).await;
    assert_eq!(status, 202, "{again}");
    let done = status_until(&a, STATUS, "the resumed run to end", |s| {
        s["state"] != "running"
    })
    .await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        (&done["report"]["fetched"], &done["report"]["resumed"]),
        (&json!(2), &json!(1)),
        "{done}"
    );
    assert_eq!(env.gets("/repos/Codertocat/Hello-World/pulls/12"), 1);
    let pulls = a
        .store
        .pull_requests(&PullFilter::default())
        .await
        .expect("pulls");
    assert_eq!(pulls.len(), 3);
    a.stop().await;
    env.assert_clean();
}

/// `hookdock metrics backfill` (`args`: its words before the repository) on the configured
/// database, against the fake GitHub.
fn cli_command(args: &[&str], database_url: &str, api_url: &str) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_hookdock"));
    command
        .args(args)
        .args([REPO, "--since", "90d"])
        .env_clear()
        .env("HOOKDOCK_DATABASE_URL", database_url)
        .env("HOOKDOCK_GITHUB_API_URL", api_url)
        .env("HOOKDOCK_GITHUB_TOKEN", TOKEN)
        .current_dir(std::env::temp_dir());
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    command
}

fn cli_backfill(args: &[&str], database_url: &str, api_url: &str) -> std::process::Output {
    cli_command(args, database_url, api_url)
        .output()
        .expect("run hookdock")
}

/// Ctrl-C stops the CLI's backfill, which records it as interrupted; the next run resumes it.
async fn a_cli_backfill_stopped_with_ctrl_c_is_shown_interrupted(backend: Backend) {
    cli_backfill_stopped_by(backend, "-INT").await;
}

/// So does SIGTERM (a service manager stopping it, `timeout`, `docker stop`).
async fn a_cli_backfill_stopped_with_sigterm_is_shown_interrupted(backend: Backend) {
    cli_backfill_stopped_by(backend, "-TERM").await;
}

/// Stops the CLI's backfill with `signal` (an argument of `kill`) once a pull request is done,
/// and checks that it is recorded as interrupted and that the next run resumes it.
async fn cli_backfill_stopped_by(backend: Backend, signal: &str) {
    let env = Env::new(&backend).await;
    seed(&env).await;
    env.fake.fail_next(
        "GET",
        "/repos/Codertocat/Hello-World/pulls/11",
        Fault::slow(Duration::from_secs(600)),
    );
    let app = TestApp::spawn(&backend).await;
    let url = app.settings.database_url.clone();
    let mut child = cli_command(&["metrics", "backfill"], &url, &env.fake.url())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start hookdock");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let running = loop {
        let (_, body) = app.api_get(STATUS).await;
        // #12 done is recorded a moment before #11 is asked for; a signal in between would
        // leave the fault for the next run.
        if body["done"] == 1 && holding_11(&env) {
            break body;
        }
        if child.try_wait().expect("poll hookdock").is_some() {
            let out = child.wait_with_output().expect("hookdock's output");
            panic!(
                "the CLI ended before #12 was done ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for the CLI's run with #12 done and #11 held; last status {body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        (&running["state"], &running["started_by"]),
        (&json!("running"), &json!("cli")),
        "{running}"
    );
    let killed = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success(), "kill {signal} {}", child.id());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("hookdock ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Exit status 1 from an orderly stop, not the end by the signal itself (no code).
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("stopped before the end (shutdown or Ctrl-C); the progress is saved"),
        "{stderr}"
    );
    let (_, stopped) = app.api_get(STATUS).await;
    assert_eq!(
        (&stopped["state"], &stopped["done"]),
        (&json!("interrupted"), &json!(1)),
        "{stopped}"
    );

    let fake_url = env.fake.url();
    let out = tokio::task::spawn_blocking(move || cli_backfill(&["backfill"], &url, &fake_url))
        .await
        .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("2 fetched, 1 done by an earlier run"),
        "{stdout}"
    );
    let (_, done) = app.api_get(STATUS).await;
    assert_eq!(done["state"], "done", "{done}");
    app.stop().await;
    env.assert_clean();
}

/// The CLI reports its progress on stderr and its summary on stdout, and its run is the
/// repository's run any instance shows.
async fn the_cli_backfills_with_progress_and_its_run_shows_in_the_api(backend: Backend) {
    let env = Env::new(&backend).await;
    seed(&env).await;
    let app = TestApp::spawn(&backend).await;
    let url = app.settings.database_url.clone();
    let fake_url = env.fake.url();
    let out = tokio::task::spawn_blocking(move || {
        cli_backfill(&["metrics", "backfill"], &url, &fake_url)
    })
    .await
    .expect("join");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("backfill "))
            .collect::<Vec<_>>(),
        ["backfill Codertocat/Hello-World: 3/3 pull requests"],
        "not a terminal: a line per 10 pull requests and the last; {stderr}"
    );
    assert!(
        stdout.contains(
            "backfilled Codertocat/Hello-World: 3 pull request(s) updated in the last 90d: 3 fetched, 0 done by an earlier run; 3 review(s) stored, 1 pending or by deleted accounts left out; 1 comment(s), 4 commit(s), 0 draft change(s) read"
        ),
        "{stdout}"
    );
    let (status, body) = app.api_get(STATUS).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            &body["state"],
            &body["started_by"],
            &body["done"],
            &body["report"]["fetched"]
        ),
        (&json!("done"), &json!("cli"), &json!(3), &json!(3))
    );
    app.stop().await;
    env.assert_clean();
}

/// A run whose process died shows as running while its lease holds, then as interrupted; a new
/// start takes over, and the old run, were it still alive, stops at its next renewal.
async fn a_dead_run_shows_as_interrupted_once_its_lease_lapses(backend: Backend) {
    use hookdock::handlers::backfill::claim;
    use tokio_util::sync::CancellationToken;

    let env = Env::new(&backend).await;
    seed(&env).await;
    let dead = claim(&env.store, &env.clock, REPO, "90d", "cli")
        .await
        .expect("claimed");
    let status = env.run_status().await;
    assert_eq!(
        (status.state.as_str(), status.started_by.as_str()),
        ("running", "cli")
    );
    let err = claim(&env.store, &env.clock, REPO, "30d", "api")
        .await
        .expect_err("the lease holds");
    assert!(
        matches!(&err, BackfillError::AlreadyRunning(s) if s.since == "90d"),
        "{err}"
    );

    env.clock.advance(Duration::from_secs(61));
    let status = env.run_status().await;
    assert_eq!(status.state, "interrupted");
    assert!(
        status
            .error
            .as_deref()
            .is_some_and(|e| e.contains("stopped without finishing")),
        "{status:?}"
    );
    let fresh = claim(&env.store, &env.clock, REPO, "30d", "api")
        .await
        .expect("a lapsed lease is taken over");

    let settings = settings();
    let backfill = Backfill {
        store: &env.store,
        github: &env.client,
        clock: &env.clock,
        settings: &settings,
    };
    let never = CancellationToken::new();
    let err = dead
        .run(&backfill, NINETY_DAYS, &never, &mut |_| {})
        .await
        .expect_err("taken over");
    assert!(
        err.to_string()
            .contains("another run of the repository took over"),
        "{err}"
    );
    let report = fresh
        .run(&backfill, NINETY_DAYS, &never, &mut |_| {})
        .await
        .expect("the new run");
    let status = env.run_status().await;
    assert_eq!(
        (
            status.state.as_str(),
            status.since.as_str(),
            status.started_by.as_str()
        ),
        ("done", "30d", "api")
    );
    assert_eq!(
        status.report,
        Some(serde_json::to_value(&report).expect("JSON"))
    );
    assert_eq!((status.done, status.total), (3, 3));
    env.assert_clean();
}

backend_tests!(
    a_backfill_runs_once_across_instances_and_survives_a_restart_as_interrupted,
    the_cli_backfills_with_progress_and_its_run_shows_in_the_api,
    a_cli_backfill_stopped_with_ctrl_c_is_shown_interrupted,
    a_cli_backfill_stopped_with_sigterm_is_shown_interrupted,
    a_dead_run_shows_as_interrupted_once_its_lease_lapses,
    stores_pull_requests_and_reviews_and_a_second_run_changes_nothing,
    agrees_with_the_webhook_data_whatever_comes_first,
    waits_out_a_secondary_rate_limit,
    an_interrupted_run_resumes_where_it_stopped,
    a_resumed_run_fetches_again_what_changed_or_was_lost,
    first_commits_and_draft_intervals_are_backfilled_as_the_webhooks_give_them,
    names_a_repository_github_does_not_have,
    the_api_starts_a_backfill_in_the_background,
);
