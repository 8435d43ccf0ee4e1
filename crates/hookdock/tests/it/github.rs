//! hookdock's GitHub client against the fake GitHub held to GitHub's REST contract: every call
//! does what it says (checked in the fake's state), and the HTTP layer under them keeps GitHub's
//! rules: rate limits waited out as GitHub asks, reads retried on 5xx and writes not, timeouts,
//! ETags, one write at a time per token, typed errors that never show a token. Waits run on a
//! `ManualClock`, so they are asserted from its recorded sleeps, never slept for real.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hookdock::clock::{Clock, ManualClock};
use hookdock::github::{
    Call, Github, GithubClient, GithubConfig, GithubError, HookScope, HookSpec, InlineComment,
    LabelCreation, NewLabel, NewReview, PrCache, ReviewEvent, Side,
};
use hookdock_testkit::{DEFAULT_META_HOOKS, FakeGitHub, Fault, RecordedRequest};
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};
use time::OffsetDateTime;

const TOKEN: &str = "ghp_hookdock_github_it_0123456789abcdef";
const OTHER_TOKEN: &str = "ghp_hookdock_github_it_other_fedcba9876";
const OWNER: &str = "octo";
const REPO: &str = "hello";
/// A URL nothing listens on: the fake's pings to it fail, which is all these tests need.
const HOOK_URL: &str = "http://127.0.0.1:9/api/v1/webhooks/github";
/// The patch of every file of the test pull request: lines 10–13 on the right, 10–12 on the left.
const PATCH: &str = "@@ -10,3 +10,4 @@\n context\n-old\n+new\n+more\n end";

struct Env {
    fake: FakeGitHub,
    github: Github,
    clock: ManualClock,
    client: GithubClient,
}

impl Env {
    /// The manual clock's time: what the client computes its waits from.
    fn now(&self) -> SystemTime {
        self.clock.now()
    }

    fn client_for(&self, token: &str) -> GithubClient {
        self.github
            .client(Some(SecretString::from(token.to_owned())))
    }

    /// Requests the fake received with this method and path, oldest first.
    fn requests(&self, method: &str, path: &str) -> Vec<RecordedRequest> {
        self.fake
            .requests()
            .into_iter()
            .filter(|r| r.method == method && r.path == path)
            .collect()
    }

    fn assert_clean(&self) {
        assert_eq!(self.fake.contract_violations(), Vec::<String>::new());
        assert_eq!(self.fake.fake_bugs(), Vec::<String>::new());
    }
}

/// The current time, whole seconds: GitHub's reset times are whole seconds, so waits computed
/// from them are exact.
fn this_second() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn epoch(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs()).expect("i64")
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

async fn setup() -> Env {
    setup_with(|_| {}).await
}

/// A fake GitHub with `octo/hello` and a token for `octo`, and the client under test on a
/// manual clock that starts now.
async fn setup_with(configure: impl FnOnce(&mut GithubConfig)) -> Env {
    let fake = FakeGitHub::start().await;
    fake.add_token(
        TOKEN,
        "octo",
        &["repo", "admin:repo_hook", "admin:org_hook"],
    );
    fake.add_repo(OWNER, REPO);
    let clock = ManualClock::new(this_second());
    let mut config = GithubConfig {
        api_url: fake.url(),
        ..GithubConfig::default()
    };
    configure(&mut config);
    let github = Github::new(config, Arc::new(clock.clone())).expect("client");
    let client = github.client(Some(SecretString::from(TOKEN)));
    Env {
        fake,
        github,
        clock,
        client,
    }
}

/// Adds the pull request of a real `pull_request.opened` payload with `files` changed files;
/// returns its number and head SHA.
fn add_pull(env: &Env, files: usize) -> (u64, String) {
    let payload: Value = serde_json::from_slice(
        &std::fs::read(format!(
            "{}/../../../shared/fixtures/webhooks/pull_request.opened.0.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("fixture"),
    )
    .expect("JSON fixture");
    let pull = payload["pull_request"].clone();
    let number = pull["number"].as_u64().expect("number");
    let head = pull["head"]["sha"].as_str().expect("head sha").to_owned();
    env.fake.add_pull(OWNER, REPO, pull);
    let files = (0..files)
        .map(|i| {
            json!({
                "sha": "bbcd538c8e72b8c175046e27cc8f907076331401",
                "filename": format!("src/file{i}.rs"),
                "status": "modified",
                "additions": 2,
                "deletions": 1,
                "changes": 3,
                "blob_url": format!("https://github.com/octo/hello/blob/{head}/src/file{i}.rs"),
                "raw_url": format!("https://github.com/octo/hello/raw/{head}/src/file{i}.rs"),
                "contents_url": format!("https://api.github.com/repos/octo/hello/contents/src/file{i}.rs?ref={head}"),
                "patch": PATCH,
            })
        })
        .collect();
    env.fake.set_pull_files(OWNER, REPO, number, files);
    (number, head)
}

fn repo() -> HookScope {
    HookScope::repository(OWNER, REPO)
}

// ---------------------------------------------------------------------------------------------
// Every call, checked in the fake's state.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hooks_are_created_read_updated_pinged_and_deleted() {
    let env = setup().await;
    let secret = SecretString::from("first-secret-0123456789");
    let events = vec!["pull_request".to_owned(), "issue_comment".to_owned()];
    let spec = HookSpec {
        url: HOOK_URL,
        secret: &secret,
        events: &events,
    };
    let hook = env
        .client
        .create_hook(&repo(), &spec)
        .await
        .expect("create");
    let stored = env.fake.hook(hook.id).expect("hook on GitHub");
    assert_eq!(stored.url, HOOK_URL);
    assert_eq!(stored.content_type, "json");
    assert_eq!(stored.secret.as_deref(), Some("first-secret-0123456789"));
    assert_eq!(stored.events, events);
    assert!(hook.active);

    let listed = env.client.list_hooks(&repo()).await.expect("list");
    assert_eq!(listed.iter().map(|h| h.id).collect::<Vec<_>>(), [hook.id]);
    let got = env.client.get_hook(&repo(), hook.id).await.expect("get");
    assert_eq!(got.config.url.as_deref(), Some(HOOK_URL));
    assert_eq!(got.config.content_type.as_deref(), Some("json"));

    let more = vec!["*".to_owned()];
    let updated = env
        .client
        .update_hook(
            &repo(),
            hook.id,
            &HookSpec {
                url: HOOK_URL,
                secret: &secret,
                events: &more,
            },
        )
        .await
        .expect("update");
    assert_eq!(updated.events, more);
    assert_eq!(env.fake.hook(hook.id).expect("hook").events, more);

    let rotated = SecretString::from("second-secret-0123456789");
    env.client
        .set_hook_secret(&repo(), hook.id, HOOK_URL, &rotated)
        .await
        .expect("rotate");
    let stored = env.fake.hook(hook.id).expect("hook");
    assert_eq!(stored.secret.as_deref(), Some("second-secret-0123456789"));
    assert_eq!(stored.url, HOOK_URL);

    // Creating sent a ping; ping_hook sends another.
    env.fake.wait_for_deliveries(hook.id, 1, secs(5)).await;
    env.client.ping_hook(&repo(), hook.id).await.expect("ping");
    let pings = env.fake.wait_for_deliveries(hook.id, 2, secs(5)).await;
    assert_eq!(pings.len(), 2);
    assert!(pings.iter().all(|d| d.event == "ping"));

    env.client
        .delete_hook(&repo(), hook.id)
        .await
        .expect("delete");
    assert!(env.fake.hook(hook.id).is_none());
    let gone = env.client.get_hook(&repo(), hook.id).await.unwrap_err();
    assert!(gone.is_not_found(), "{gone}");
    env.assert_clean();
}

#[tokio::test]
async fn organization_hooks_are_created_and_their_secret_rotated() {
    let env = setup().await;
    env.fake.add_org("acme");
    let org = HookScope::organization("acme");
    let secret = SecretString::from("org-secret-0123456789");
    let events = vec!["push".to_owned()];
    let hook = env
        .client
        .create_hook(
            &org,
            &HookSpec {
                url: HOOK_URL,
                secret: &secret,
                events: &events,
            },
        )
        .await
        .expect("create");
    assert_eq!(env.fake.org_hooks("acme").len(), 1);
    env.client
        .set_hook_secret(
            &org,
            hook.id,
            HOOK_URL,
            &SecretString::from("org-secret-rotated-0123"),
        )
        .await
        .expect("rotate");
    assert_eq!(
        env.fake.hook(hook.id).expect("hook").secret.as_deref(),
        Some("org-secret-rotated-0123")
    );
    env.assert_clean();
}

#[tokio::test]
async fn deliveries_are_paged_by_cursor_until_the_oldest_wanted_and_redelivered() {
    let env = setup().await;
    let secret = SecretString::from("deliveries-secret-012345");
    let events = vec!["push".to_owned()];
    let hook = env
        .client
        .create_hook(
            &repo(),
            &HookSpec {
                url: HOOK_URL,
                secret: &secret,
                events: &events,
            },
        )
        .await
        .expect("create");
    // The ping of the creation first, so that it is the oldest in GitHub's (newest first) list.
    env.fake.wait_for_deliveries(hook.id, 1, secs(5)).await;
    let base = OffsetDateTime::now_utc() - time::Duration::days(1);
    for i in 0..150i64 {
        env.fake.record_failed_delivery(
            hook.id,
            "push",
            br#"{"ref":"refs/heads/main"}"#,
            502,
            base + time::Duration::minutes(i),
        );
    }

    let all = env
        .client
        .hook_deliveries(&repo(), hook.id, 0, 1_000)
        .await
        .expect("deliveries");
    assert_eq!(all.len(), 151);
    assert_eq!(all.last().map(|d| d.event.as_str()), Some("ping"));
    assert!(all[..150].iter().all(|d| d.status_code == 502));
    let pages = env.requests(
        "GET",
        &format!("/repos/octo/hello/hooks/{}/deliveries", hook.id),
    );
    assert_eq!(pages.len(), 2);
    assert!(pages[1].query.contains("cursor="), "{}", pages[1].query);

    // Only what was delivered since a point in time: newest first, stopping at the first older.
    let since = (base + time::Duration::minutes(100)).unix_timestamp();
    let recent = env
        .client
        .hook_deliveries(&repo(), hook.id, since, 1_000)
        .await
        .expect("recent deliveries");
    assert_eq!(recent.len(), 50);
    assert!(
        recent
            .iter()
            .all(|d| d.delivered_at_ms().is_some_and(|t| t >= since * 1_000))
    );
    let capped = env
        .client
        .hook_deliveries(&repo(), hook.id, 0, 120)
        .await
        .expect("capped");
    assert_eq!(capped.len(), 120);

    let failed = all[0].id;
    env.client
        .redeliver(&repo(), hook.id, failed)
        .await
        .expect("redeliver");
    assert_eq!(env.fake.redelivery_requests(hook.id), [failed]);
    env.assert_clean();
}

#[tokio::test]
async fn pull_requests_are_read_as_json_diff_and_paged_files() {
    let env = setup().await;
    let (number, head) = add_pull(&env, 250);
    let pull = env
        .client
        .pull_request(OWNER, REPO, number)
        .await
        .expect("pull");
    assert_eq!(pull["number"], number);
    assert_eq!(pull["head"]["sha"], head.as_str());

    let diff = env
        .client
        .pull_request_diff(OWNER, REPO, number)
        .await
        .expect("diff");
    assert!(
        diff.starts_with("diff --git a/src/file0.rs b/src/file0.rs"),
        "{diff:.80}"
    );
    assert!(diff.contains("+more"));

    let files = env
        .client
        .pull_request_files(OWNER, REPO, number)
        .await
        .expect("files");
    assert_eq!(files.len(), 250);
    assert_eq!(files[249]["filename"], "src/file249.rs");
    let pages: Vec<String> = env
        .requests("GET", &format!("/repos/octo/hello/pulls/{number}/files"))
        .into_iter()
        .map(|r| r.query)
        .collect();
    assert_eq!(pages.len(), 3, "{pages:?}");
    assert!(pages[2].contains("page=3"), "{pages:?}");
    env.assert_clean();
}

#[tokio::test]
async fn reviews_and_review_comments_are_posted_on_lines_of_the_diff_and_listed() {
    let env = setup().await;
    let (number, head) = add_pull(&env, 3);
    let comments = [
        InlineComment {
            path: "src/file0.rs",
            line: 11,
            side: Side::Right,
            body: "Is `new` the right name?",
        },
        InlineComment {
            path: "src/file1.rs",
            line: 11,
            side: Side::Left,
            body: "Why was `old` removed?",
        },
    ];
    let review = env
        .client
        .create_review(
            OWNER,
            REPO,
            number,
            &NewReview {
                commit_id: Some(&head),
                body: "hookdock found two things",
                event: ReviewEvent::Comment,
                comments: &comments,
            },
        )
        .await
        .expect("review");
    assert_eq!(review.state, "COMMENTED");
    assert_eq!(review.body.as_deref(), Some("hookdock found two things"));
    assert_eq!(review.commit_id.as_deref(), Some(head.as_str()));
    let posted = env.requests("POST", &format!("/repos/octo/hello/pulls/{number}/reviews"));
    assert_eq!(posted[0].body["event"], "COMMENT");
    assert_eq!(posted[0].body["comments"][1]["side"], "LEFT");

    let stored = env.fake.review_comments(OWNER, REPO, number);
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0]["path"], "src/file0.rs");
    assert_eq!(stored[0]["line"], 11);
    assert_eq!(stored[0]["side"], "RIGHT");
    assert_eq!(stored[1]["side"], "LEFT");
    assert_eq!(stored[0]["pull_request_review_id"], review.id);

    let reviews = env
        .client
        .list_reviews(OWNER, REPO, number)
        .await
        .expect("reviews");
    assert_eq!(
        reviews.iter().map(|r| r.id).collect::<Vec<_>>(),
        [review.id]
    );
    assert_eq!(
        reviews[0].user.as_ref().map(|u| u.login.as_str()),
        Some("octo")
    );

    let single = env
        .client
        .create_review_comment(
            OWNER,
            REPO,
            number,
            &head,
            &InlineComment {
                path: "src/file2.rs",
                line: 12,
                side: Side::Right,
                body: "And `more`?",
            },
        )
        .await
        .expect("review comment");
    assert_eq!(single.path, "src/file2.rs");
    assert_eq!(single.line, Some(12));
    assert_eq!(single.side.as_deref(), Some("RIGHT"));
    let listed = env
        .client
        .list_review_comments(OWNER, REPO, number)
        .await
        .expect("review comments");
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[2].id, single.id);
    assert_eq!(listed[2].body, "And `more`?");

    // One comment off the diff and GitHub refuses the whole review.
    let err = env
        .client
        .create_review(
            OWNER,
            REPO,
            number,
            &NewReview {
                commit_id: None,
                body: "out of range",
                event: ReviewEvent::Comment,
                comments: &[InlineComment {
                    path: "src/file0.rs",
                    line: 99,
                    side: Side::Right,
                    body: "nowhere",
                }],
            },
        )
        .await
        .unwrap_err();
    match &err {
        GithubError::Validation { errors, .. } => assert!(
            errors
                .iter()
                .any(|e| e.contains("must be part of the diff")),
            "{errors:?}"
        ),
        other => panic!("expected a validation error, got {other:?}"),
    }
    assert_eq!(env.fake.reviews(OWNER, REPO, number).len(), 1);
    env.assert_clean();
}

#[tokio::test]
async fn issue_comments_are_created_updated_and_listed() {
    let env = setup().await;
    let (number, _) = add_pull(&env, 1);
    let comment = env
        .client
        .create_issue_comment(OWNER, REPO, number, "hookdock received this")
        .await
        .expect("comment");
    assert_eq!(comment.body.as_deref(), Some("hookdock received this"));
    assert_eq!(
        comment.user.as_ref().map(|u| u.login.as_str()),
        Some("octo")
    );

    let updated = env
        .client
        .update_issue_comment(OWNER, REPO, comment.id, "hookdock handled this")
        .await
        .expect("update");
    assert_eq!(updated.id, comment.id);
    assert_eq!(
        env.fake.issue_comments(OWNER, REPO, number)[0]["body"],
        "hookdock handled this"
    );

    // The generic calls underneath the typed ones.
    let raw = env
        .client
        .create(
            OWNER,
            REPO,
            &format!("issues/{number}/comments"),
            &json!({"body": "a second one"}),
            "a comment",
        )
        .await
        .expect("generic create");
    assert_eq!(raw["body"], "a second one");
    let listed = env
        .client
        .list_issue_comments(OWNER, REPO, number)
        .await
        .expect("list");
    assert_eq!(
        listed
            .iter()
            .map(|c| c.body.as_deref().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["hookdock handled this", "a second one"]
    );
    let generic = env
        .client
        .list(
            OWNER,
            REPO,
            &format!("issues/{number}/comments"),
            "comments",
        )
        .await
        .expect("generic list");
    assert_eq!(generic.len(), 2);
    env.assert_clean();
}

#[tokio::test]
async fn labels_and_assignees_change_the_issue_and_the_repository() {
    let env = setup().await;
    let (number, _) = add_pull(&env, 1);

    let created = env
        .client
        .create_label(
            OWNER,
            REPO,
            &NewLabel {
                name: "needs review",
                color: "fbca04",
                description: Some("Waiting for a reviewer"),
            },
        )
        .await
        .expect("create label");
    assert_eq!(created, LabelCreation::Created);
    // Asking again (as every start-up may) is not an error and defines nothing new.
    let again = env
        .client
        .create_label(
            OWNER,
            REPO,
            &NewLabel {
                name: "Needs Review",
                color: "000000",
                description: None,
            },
        )
        .await
        .expect("existing label");
    assert_eq!(again, LabelCreation::AlreadyExisted);
    let defined = env.fake.repo_labels(OWNER, REPO);
    assert_eq!(defined.len(), 1);
    assert_eq!(defined[0].color, "fbca04");
    assert_eq!(
        defined[0].description.as_deref(),
        Some("Waiting for a reviewer")
    );

    let now = env
        .client
        .add_labels(OWNER, REPO, number, &["needs review", "bug"])
        .await
        .expect("add labels");
    assert!(now.contains(&"needs review".to_owned()), "{now:?}");
    assert!(now.contains(&"bug".to_owned()), "{now:?}");
    let on_github = env.fake.labels(OWNER, REPO, number);
    assert!(on_github.iter().any(|l| l == "needs review"));

    // A name with a space goes into the path as `%20` (a `+` would name another label).
    env.client
        .remove_label(OWNER, REPO, number, "needs review")
        .await
        .expect("remove label");
    assert!(
        !env.fake
            .labels(OWNER, REPO, number)
            .iter()
            .any(|l| l == "needs review")
    );
    let unchanged = env
        .client
        .add_labels(OWNER, REPO, number, &[])
        .await
        .expect("no labels to add");
    assert_eq!(unchanged, env.fake.labels(OWNER, REPO, number));
    assert_eq!(
        env.requests("POST", &format!("/repos/octo/hello/issues/{number}/labels"))
            .len(),
        1,
        "an empty list is not sent"
    );

    let assigned = env
        .client
        .add_assignees(OWNER, REPO, number, &["octo", "hubot"])
        .await
        .expect("assign");
    assert!(assigned.contains(&"octo".to_owned()) && assigned.contains(&"hubot".to_owned()));
    let on_github = env.fake.assignees(OWNER, REPO, number);
    assert!(on_github.contains(&"hubot".to_owned()), "{on_github:?}");
    env.assert_clean();
}

#[tokio::test]
async fn repository_contents_permission_user_rate_limit_and_meta_are_read() {
    let env = setup().await;
    let repository = env.client.repository(OWNER, REPO).await.expect("repo");
    assert_eq!(repository.full_name, "octo/hello");

    env.fake.put_file(
        OWNER,
        REPO,
        ".github/hookdock.toml",
        b"[review]\nenabled = true\n",
    );
    env.fake
        .put_file(OWNER, REPO, "docs/read me.md", b"# spaced out\n");
    let config = env
        .client
        .file_contents(OWNER, REPO, ".github/hookdock.toml", "main")
        .await
        .expect("contents");
    assert_eq!(config.as_deref(), Some(&b"[review]\nenabled = true\n"[..]));
    let spaced = env
        .client
        .file_contents(OWNER, REPO, "docs/read me.md", "topic#1")
        .await
        .expect("contents with a space");
    assert_eq!(spaced.as_deref(), Some(&b"# spaced out\n"[..]));
    // Path and ref are encoded: a raw `#` would cut the ref short as a fragment.
    let sent = env.requests("GET", "/repos/octo/hello/contents/docs/read%20me.md");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].query, "ref=topic%231");
    let missing = env
        .client
        .file_contents(OWNER, REPO, "nope.toml", "main")
        .await
        .expect("missing file");
    assert_eq!(missing, None);

    env.fake.set_permission(OWNER, REPO, "hubot", "write");
    let owner = env
        .client
        .collaborator_permission(OWNER, REPO, "octo")
        .await
        .expect("owner permission");
    assert_eq!(owner, "admin");
    let hubot = env
        .client
        .collaborator_permission(OWNER, REPO, "hubot")
        .await
        .expect("permission");
    assert_eq!(hubot, "write");
    let stranger = env
        .client
        .collaborator_permission(OWNER, REPO, "stranger")
        .await
        .expect("permission");
    assert_eq!(stranger, "none");

    let user = env.client.user().await.expect("user");
    assert_eq!(user.login, "octo");
    let rate = env.client.rate_limit().await.expect("rate limit");
    assert_eq!(rate["resources"]["core"]["limit"], 5000);

    let ranges = env.client.meta_hook_ranges().await.expect("meta");
    assert_eq!(ranges, DEFAULT_META_HOOKS);
    env.fake.set_meta_hooks(&["10.1.0.0/16", "fd00:1::/32"]);
    // /meta needs no token.
    let anonymous = env.github.client(None);
    assert!(!anonymous.is_authenticated());
    let ranges = anonymous.meta_hook_ranges().await.expect("anonymous meta");
    assert_eq!(ranges, ["10.1.0.0/16", "fd00:1::/32"]);
    env.assert_clean();
}

#[tokio::test]
async fn the_pull_request_cache_answers_repeats_and_refetches_after_invalidation() {
    let env = setup().await;
    let (number, head) = add_pull(&env, 1);
    let cache = PrCache::new();
    let path = format!("/repos/octo/hello/pulls/{number}");
    let first = cache
        .get_or_fetch(&env.client, OWNER, REPO, number)
        .await
        .expect("fetch");
    assert_eq!(first["head"]["sha"], head.as_str());
    let again = cache
        .get_or_fetch(&env.client, "Octo", "Hello", number)
        .await
        .expect("cached");
    assert!(Arc::ptr_eq(&first, &again));
    assert_eq!(env.requests("GET", &path).len(), 1);

    // Another token does not see what this one fetched.
    env.fake.add_token(OTHER_TOKEN, "hubot", &["repo"]);
    cache
        .get_or_fetch(&env.client_for(OTHER_TOKEN), OWNER, REPO, number)
        .await
        .expect("fetch as another token");
    assert_eq!(env.requests("GET", &path).len(), 2);

    cache.invalidate(OWNER, REPO, number);
    cache
        .get_or_fetch(&env.client, OWNER, REPO, number)
        .await
        .expect("refetch");
    assert_eq!(env.requests("GET", &path).len(), 3);
    env.assert_clean();
}

// ---------------------------------------------------------------------------------------------
// Rate limits, retries and timeouts.
// ---------------------------------------------------------------------------------------------

/// GitHub's secondary-limit answer without `retry-after`.
fn secondary_without_retry_after() -> Fault {
    let mut fault = Fault::secondary_rate_limit(1);
    fault.headers.retain(|(name, _)| name != "retry-after");
    fault
}

#[tokio::test]
async fn a_secondary_limit_with_retry_after_is_waited_exactly_then_the_call_succeeds() {
    let env = setup().await;
    env.fake
        .fail_next("GET", "/user", Fault::secondary_rate_limit(7));
    let user = env.client.user().await.expect("user after the wait");
    assert_eq!(user.login, "octo");
    assert_eq!(env.clock.sleeps(), [secs(7)]);
    assert_eq!(env.requests("GET", "/user").len(), 2);

    // A write refused by the limit was not done, so it is sent again after the wait.
    let (number, _) = add_pull(&env, 1);
    env.fake.fail_next(
        "POST",
        &format!("/repos/octo/hello/issues/{number}/comments"),
        Fault::secondary_rate_limit(30),
    );
    env.client
        .create_issue_comment(OWNER, REPO, number, "once")
        .await
        .expect("comment after the wait");
    assert_eq!(env.clock.sleeps(), [secs(7), secs(30)]);
    assert_eq!(env.fake.issue_comments(OWNER, REPO, number).len(), 1);
    env.assert_clean();
}

#[tokio::test]
async fn a_secondary_limit_without_retry_after_waits_until_the_reset() {
    let env = setup().await;
    let reset = epoch(env.now()) + 42;
    env.fake.fail_next(
        "GET",
        "/user",
        secondary_without_retry_after()
            .header("x-ratelimit-remaining", "0")
            .header("x-ratelimit-reset", &reset.to_string()),
    );
    env.client.user().await.expect("user after the reset");
    // Until the reset, plus the one second GitHub's whole-second reset may be early by.
    assert_eq!(env.clock.sleeps(), [secs(43)]);
    assert!(epoch(env.now()) > reset);
    env.assert_clean();
}

#[tokio::test]
async fn a_secondary_limit_with_neither_header_backs_off_from_a_minute() {
    let env = setup().await;
    env.fake
        .fail_next("GET", "/user", secondary_without_retry_after().times(3));
    env.client.user().await.expect("user after backing off");
    assert_eq!(env.clock.sleeps(), [secs(60), secs(120), secs(240)]);
    assert_eq!(env.requests("GET", "/user").len(), 4);

    // A 429 without headers is a secondary limit too; past max_retries the call gives up.
    env.fake.fail_next(
        "GET",
        "/repos/octo/hello",
        Fault::new(429, json!({"message": "Too Many Requests"})).times(10),
    );
    let err = env.client.repository(OWNER, REPO).await.unwrap_err();
    let now = env.now();
    match err {
        GithubError::RateLimited { until } => assert_eq!(until, now + secs(480)),
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(
        env.clock.sleeps()[3..],
        [secs(60), secs(120), secs(240)],
        "each call backs off from a minute again"
    );
    assert_eq!(env.requests("GET", "/repos/octo/hello").len(), 4);
    env.assert_clean();
}

#[tokio::test]
async fn the_primary_limit_is_waited_out_until_the_reset() {
    let env = setup().await;
    let start = epoch(env.now());
    env.fake
        .fail_next("GET", "/user", Fault::primary_rate_limit(start + 100));
    env.client.user().await.expect("user after the reset");
    assert_eq!(env.clock.sleeps(), [secs(101)]);
    env.assert_clean();

    // A spent quota seen in an answer: the next call waits for the reset before sending, rather
    // than spending a request on a certain 403.
    let env = setup().await;
    let start = epoch(env.now());
    env.fake.set_rate_limit(1, start + 120);
    env.client.user().await.expect("last request of the hour");
    env.fake.set_rate_limit(5000, start + 3600); // GitHub's hour turned over
    env.client
        .user()
        .await
        .expect("first request of the next hour");
    assert_eq!(env.clock.sleeps(), [secs(120)]);
    assert_eq!(env.requests("GET", "/user").len(), 2);
    env.assert_clean();
}

#[tokio::test]
async fn a_wait_longer_than_max_rate_wait_fails_at_once_with_rate_limited() {
    let env = setup_with(|c| c.max_rate_wait = secs(900)).await;
    let now = env.now();
    env.fake
        .fail_next("GET", "/user", Fault::secondary_rate_limit(3600));
    match env.client.user().await.unwrap_err() {
        GithubError::RateLimited { until } => assert_eq!(until, now + secs(3600)),
        other => panic!("expected RateLimited, got {other:?}"),
    }
    let reset = epoch(now) + 7200;
    env.fake
        .fail_next("GET", "/user", Fault::primary_rate_limit(reset));
    let err = env.client.user().await.unwrap_err();
    match &err {
        GithubError::RateLimited { until } => {
            assert_eq!(*until, UNIX_EPOCH + secs(reset as u64 + 1))
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert!(err.is_transient());
    assert!(err.to_string().contains("rate limit"), "{err}");
    assert_eq!(env.clock.sleeps(), Vec::<Duration>::new());
    assert_eq!(env.requests("GET", "/user").len(), 2);
    env.assert_clean();

    // Known in advance from an answer: refused without sending anything.
    let env = setup_with(|c| c.max_rate_wait = secs(900)).await;
    let start = epoch(env.now());
    env.fake.set_rate_limit(1, start + 3000);
    env.client.user().await.expect("last request of the hour");
    match env.client.user().await.unwrap_err() {
        GithubError::RateLimited { until } => {
            assert_eq!(until, UNIX_EPOCH + secs(start as u64 + 3000))
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(env.requests("GET", "/user").len(), 1);
    assert_eq!(env.clock.sleeps(), Vec::<Duration>::new());
    env.assert_clean();
}

#[tokio::test]
async fn server_errors_on_reads_are_retried_twice_with_backoff() {
    let env = setup().await;
    env.fake
        .fail_next("GET", "/user", Fault::server_error().times(2));
    assert_eq!(env.client.user().await.expect("user").login, "octo");
    assert_eq!(env.clock.sleeps(), [secs(2), secs(4)]);
    assert_eq!(env.requests("GET", "/user").len(), 3);

    env.fake.fail_next(
        "GET",
        "/repos/octo/hello",
        Fault::new(502, json!({"message": "Server Error"})).times(3),
    );
    let err = env.client.repository(OWNER, REPO).await.unwrap_err();
    assert!(
        matches!(err, GithubError::Status { status: 502, .. }),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(env.requests("GET", "/repos/octo/hello").len(), 3);
    env.assert_clean();
}

#[tokio::test]
async fn a_write_answered_with_a_server_error_is_not_sent_again() {
    let env = setup().await;
    let (number, _) = add_pull(&env, 1);
    let path = format!("/repos/octo/hello/issues/{number}/comments");
    env.fake.fail_next("POST", &path, Fault::server_error());
    let err = env
        .client
        .create_issue_comment(OWNER, REPO, number, "maybe posted")
        .await
        .unwrap_err();
    assert!(
        matches!(err, GithubError::Status { status: 500, .. }),
        "{err:?}"
    );
    // Transient for the caller's queue to decide, but never repeated blindly here: GitHub may
    // have posted it.
    assert!(err.is_transient());
    assert_eq!(env.requests("POST", &path).len(), 1);

    let secret = SecretString::from("patch-secret-0123456789");
    let events = vec!["push".to_owned()];
    let spec = HookSpec {
        url: HOOK_URL,
        secret: &secret,
        events: &events,
    };
    let hook = env.client.create_hook(&repo(), &spec).await.expect("hook");
    let hook_path = format!("/repos/octo/hello/hooks/{}", hook.id);
    env.fake.fail_next(
        "PATCH",
        &hook_path,
        Fault::new(502, json!({"message": "Bad Gateway"})),
    );
    let err = env
        .client
        .update_hook(&repo(), hook.id, &spec)
        .await
        .unwrap_err();
    assert!(matches!(err, GithubError::Status { status: 502, .. }));
    assert_eq!(env.requests("PATCH", &hook_path).len(), 1);
    // Only the spacing between the writes was waited for; no backoff.
    assert!(env.clock.sleeps().iter().all(|s| *s == secs(1)));
    env.assert_clean();
}

#[tokio::test]
async fn an_answer_slower_than_the_timeout_is_a_network_error_that_says_it_timed_out() {
    let env = setup_with(|c| c.timeout = Duration::from_millis(300)).await;
    env.fake.fail_next("GET", "/user", Fault::slow(secs(5)));
    let err = env.client.user().await.unwrap_err();
    match &err {
        GithubError::Network { message, .. } => assert_eq!(message, "timed out"),
        other => panic!("expected a network error, got {other:?}"),
    }
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(err.is_transient());
    assert_eq!(env.requests("GET", "/user").len(), 1);

    // A write that timed out may well have been done: it is not sent again.
    let (number, _) = add_pull(&env, 1);
    let path = format!("/repos/octo/hello/issues/{number}/comments");
    env.fake.fail_next("POST", &path, Fault::slow(secs(5)));
    let err = env
        .client
        .create_issue_comment(OWNER, REPO, number, "slow")
        .await
        .unwrap_err();
    assert!(matches!(err, GithubError::Network { .. }), "{err:?}");
    assert_eq!(env.requests("POST", &path).len(), 1);
    assert_eq!(env.fake.issue_comments(OWNER, REPO, number).len(), 1);
    env.assert_clean();
}

// ---------------------------------------------------------------------------------------------
// Conditional requests and write pacing.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_repeated_read_is_answered_304_from_the_cache_without_spending_the_quota() {
    let env = setup().await;
    let path = "/repos/octo/hello/hooks?per_page=100";
    let first = env
        .client
        .send(Call::new(Method::GET, path, "the hooks"))
        .await
        .expect("first");
    assert!(!first.cached);
    let etag = first.headers["etag"].to_str().expect("etag").to_owned();
    let remaining = first.headers["x-ratelimit-remaining"].clone();
    let second = env
        .client
        .send(Call::new(Method::GET, path, "the hooks"))
        .await
        .expect("second");
    assert!(second.cached);
    assert_eq!(second.body, first.body);
    assert_eq!(second.headers["x-ratelimit-remaining"], remaining);
    let sent = env.requests("GET", "/repos/octo/hello/hooks");
    assert_eq!(sent[0].header("if-none-match"), None);
    assert_eq!(sent[1].header("if-none-match"), Some(etag.as_str()));

    // The typed calls go through the same cache.
    env.client.user().await.expect("user");
    let user = env.client.user().await.expect("cached user");
    assert_eq!(user.login, "octo");
    assert!(
        env.requests("GET", "/user")[1]
            .header("if-none-match")
            .is_some()
    );

    // The JSON and the diff of a pull request are two representations with their own ETags.
    let (number, _) = add_pull(&env, 1);
    let pull = env
        .client
        .pull_request(OWNER, REPO, number)
        .await
        .expect("pull");
    let diff = env
        .client
        .pull_request_diff(OWNER, REPO, number)
        .await
        .expect("diff");
    assert!(diff.starts_with("diff --git"));
    let again = env
        .client
        .pull_request(OWNER, REPO, number)
        .await
        .expect("pull again");
    assert_eq!(again, pull);
    let sent = env.requests("GET", &format!("/repos/octo/hello/pulls/{number}"));
    assert_eq!(
        sent[1].header("accept"),
        Some("application/vnd.github.diff")
    );
    assert_eq!(
        sent[1].header("if-none-match"),
        None,
        "no JSON ETag for the diff"
    );
    assert!(sent[2].header("if-none-match").is_some());

    // Another token's cache is its own.
    env.fake.add_token(OTHER_TOKEN, "hubot", &["repo"]);
    env.client_for(OTHER_TOKEN)
        .user()
        .await
        .expect("other user");
    let sent = env.requests("GET", "/user");
    assert_eq!(sent[2].header("if-none-match"), None);
    env.assert_clean();
}

#[tokio::test]
async fn writes_with_one_token_go_one_at_a_time_spaced_by_the_write_interval() {
    let env = setup_with(|c| c.write_interval = Duration::from_millis(2500)).await;
    let (number, _) = add_pull(&env, 1);
    let path = format!("/repos/octo/hello/issues/{number}/comments");
    // Slow answers widen the window in which unserialised writes would overlap.
    env.fake.fail_next(
        "POST",
        &path,
        Fault::slow(Duration::from_millis(150)).times(3),
    );
    let (a, b, c) = (
        env.client.clone(),
        env.client.clone(),
        env.client_for(TOKEN),
    );
    let (ra, rb, rc) = tokio::join!(
        a.create_issue_comment(OWNER, REPO, number, "one"),
        b.create_issue_comment(OWNER, REPO, number, "two"),
        c.create_issue_comment(OWNER, REPO, number, "three"),
    );
    for r in [ra, rb, rc] {
        r.expect("comment");
    }
    assert_eq!(env.fake.max_concurrent_writes(), 1);
    assert_eq!(env.fake.issue_comments(OWNER, REPO, number).len(), 3);
    let spacing = Duration::from_millis(2500);
    assert_eq!(env.clock.sleeps(), [spacing, spacing]);

    // Reads are neither serialised nor spaced.
    env.client.user().await.expect("read");
    assert_eq!(env.clock.sleeps().len(), 2);

    // Once the interval has passed, a write goes at once.
    env.clock.advance(secs(3));
    env.client
        .create_issue_comment(OWNER, REPO, number, "later")
        .await
        .expect("later comment");
    assert_eq!(env.clock.sleeps().len(), 2);

    // Another token has its own pace.
    env.fake.add_token(OTHER_TOKEN, "hubot", &["repo"]);
    env.client_for(OTHER_TOKEN)
        .create_issue_comment(OWNER, REPO, number, "from hubot")
        .await
        .expect("other token");
    assert_eq!(env.clock.sleeps().len(), 2);
    let authors: Vec<Value> = env
        .fake
        .issue_comments(OWNER, REPO, number)
        .iter()
        .map(|c| c["user"]["login"].clone())
        .collect();
    assert_eq!(authors.last(), Some(&json!("hubot")));
    env.assert_clean();
}

// ---------------------------------------------------------------------------------------------
// Typed errors.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn githubs_refusals_become_typed_errors_that_never_show_a_token() {
    let env = setup().await;
    let bad_token = "ghp_not_a_token_github_knows_0000000";
    let readonly_token = "ghp_read_user_only_token_11111111111";
    env.fake.add_token(readonly_token, "reader", &["read:user"]);
    let mut errors = Vec::new();

    let not_found = env.client.get_hook(&repo(), 424242).await.unwrap_err();
    assert!(
        matches!(&not_found, GithubError::NotFound { what } if what.contains("424242")),
        "{not_found:?}"
    );
    errors.push(not_found);

    // 403 naming what the endpoint accepts (`x-accepted-oauth-scopes`) when the token
    // (`x-oauth-scopes`) has none of it.
    env.fake.fail_next(
        "POST",
        "/repos/octo/hello/hooks",
        Fault::new(
            403,
            json!({"message": "Resource not accessible by personal access token", "status": "403"}),
        ),
    );
    let secret = SecretString::from("error-secret-0123456789");
    let events = vec!["push".to_owned()];
    let spec = HookSpec {
        url: HOOK_URL,
        secret: &secret,
        events: &events,
    };
    let forbidden = env
        .client_for(readonly_token)
        .create_hook(&repo(), &spec)
        .await
        .unwrap_err();
    match &forbidden {
        GithubError::Forbidden {
            message,
            missing_scopes,
            ..
        } => {
            assert_eq!(message, "Resource not accessible by personal access token");
            assert!(
                missing_scopes.contains(&"admin:repo_hook".to_owned()),
                "{missing_scopes:?}"
            );
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    assert!(
        forbidden.to_string().contains("admin:repo_hook"),
        "{forbidden}"
    );
    assert_eq!(
        env.clock.sleeps(),
        Vec::<Duration>::new(),
        "not a rate limit"
    );
    errors.push(forbidden);

    // 422 with GitHub's message and its errors.
    env.client
        .create_hook(&repo(), &spec)
        .await
        .expect("first hook");
    let invalid = env.client.create_hook(&repo(), &spec).await.unwrap_err();
    match &invalid {
        GithubError::Validation {
            message, errors, ..
        } => {
            assert_eq!(message, "Validation Failed");
            assert_eq!(errors, &["Hook already exists on this repository"]);
        }
        other => panic!("expected Validation, got {other:?}"),
    }
    assert!(
        invalid.to_string().contains("Hook already exists"),
        "{invalid}"
    );
    errors.push(invalid);

    let unauthorized = env.client_for(bad_token).user().await.unwrap_err();
    assert!(
        matches!(&unauthorized, GithubError::Unauthorized { message } if message == "Bad credentials"),
        "{unauthorized:?}"
    );
    errors.push(unauthorized);

    for err in &errors {
        assert!(!err.is_transient(), "{err:?}");
        for shown in [err.to_string(), format!("{err:?}")] {
            for token in [TOKEN, bad_token, readonly_token] {
                assert!(!shown.contains(token), "{shown}");
            }
        }
    }
    let client_debug = format!("{:?}", env.client_for(bad_token));
    assert!(!client_debug.contains(bad_token), "{client_debug}");
    env.assert_clean();
}
