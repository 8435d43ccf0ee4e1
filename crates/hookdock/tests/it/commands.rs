//! The automations end to end against the fake GitHub: slash commands in comments, keyword
//! labels on issues, repository settings (`.github/hookdock.yml`, dry run, invalid files),
//! dry-run replays and the config simulation on pull requests that change the settings.
//! Deliveries are real payloads retargeted at the fake's repository.

use std::sync::atomic::{AtomicU64, Ordering};

use hookdock_testkit::FakeGitHub;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, fixture, new_delivery_id};

const GH_TOKEN: &str = "ghp_hookdock_commands_token_0123456789";
const OWNER: &str = "octo-org";
const REPO: &str = "widgets";
/// Who hookdock acts as on GitHub (the token's user).
const HOOKDOCK: &str = "hookdock-bot";
const WRITER: &str = "wanda";
const READER: &str = "rick";
const CONFIG: &str = ".github/hookdock.yml";

struct Env {
    github: FakeGitHub,
    app: TestApp,
    seq: AtomicU64,
}

/// hookdock with the automations on, acting as [`HOOKDOCK`] on a fake GitHub with one
/// repository where [`WRITER`] may write and [`READER`] may read.
async fn env(backend: &Backend) -> Env {
    env_with(backend, true).await
}

async fn env_with(backend: &Backend, automations: bool) -> Env {
    let github = FakeGitHub::start().await;
    github.add_token(GH_TOKEN, HOOKDOCK, &["repo"]);
    github.add_repo(OWNER, REPO);
    github.set_permission(OWNER, REPO, WRITER, "write");
    github.set_permission(OWNER, REPO, READER, "read");
    let api = github.url();
    let app = TestApp::spawn_with(
        backend,
        move |s| {
            s.set("github_api_url", api)
                .set("github_token", GH_TOKEN)
                .set("github.write_interval_ms", 0)
                .set("handlers.automations.enabled", automations)
        },
        Vec::new(),
    )
    .await;
    Env {
        github,
        app,
        seq: AtomicU64::new(1),
    }
}

/// A fixture as JSON, moved to the fake's repository.
fn payload(name: &str) -> Value {
    let mut value: Value = serde_json::from_slice(&fixture(name)).expect("fixture is JSON");
    value["repository"]["full_name"] = json!(format!("{OWNER}/{REPO}"));
    value["repository"]["name"] = json!(REPO);
    value["repository"]["owner"]["login"] = json!(OWNER);
    value
}

fn set_sender(value: &mut Value, login: &str, kind: &str) {
    value["sender"]["login"] = json!(login);
    value["sender"]["type"] = json!(kind);
}

/// An issue without labels or assignees.
fn fresh_issue(issue: &mut Value, number: u64, title: &str, body: &str) {
    issue["number"] = json!(number);
    issue["title"] = json!(title);
    issue["body"] = json!(body);
    issue["labels"] = json!([]);
    issue["assignees"] = json!([]);
    issue["assignee"] = Value::Null;
}

impl Env {
    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// An `issues.opened` delivery for a new issue `number` (also put on the fake).
    fn issue_opened(&self, number: u64, title: &str, body: &str) -> Value {
        let mut value = payload("issues.opened.0");
        fresh_issue(&mut value["issue"], number, title, body);
        set_sender(&mut value, WRITER, "User");
        self.github.add_issue(OWNER, REPO, value["issue"].clone());
        value
    }

    /// An `issue_comment.created` delivery of `body` by `login` on issue `number` (put on the
    /// fake without labels when it is not there yet).
    fn comment(&self, number: u64, body: &str, login: &str, kind: &str) -> Value {
        let mut value = payload("issue_comment.created.0");
        fresh_issue(
            &mut value["issue"],
            number,
            "Spelling error in the README",
            "",
        );
        set_sender(&mut value, login, kind);
        let id = 900_000 + self.next();
        value["comment"]["id"] = json!(id);
        value["comment"]["body"] = json!(body);
        value["comment"]["user"]["login"] = json!(login);
        value["comment"]["user"]["type"] = json!(kind);
        if self.github.labels(OWNER, REPO, number).is_empty()
            && self.github.assignees(OWNER, REPO, number).is_empty()
        {
            self.github.add_issue(OWNER, REPO, value["issue"].clone());
        }
        value
    }

    /// Posts a delivery signed; returns its event id.
    async fn deliver(&self, event: &str, value: &Value) -> i64 {
        let body = serde_json::to_vec(value).expect("serialize");
        let (status, answer) = self.app.post(event, &body, &new_delivery_id()).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer["event_id"].as_i64().expect("event id")
    }

    /// Delivers and waits until every job it started is finished.
    async fn deliver_and_wait(&self, event: &str, value: &Value) -> i64 {
        let id = self.deliver(event, value).await;
        self.app.wait_until_idle().await;
        id
    }

    /// Bodies of the comments hookdock wrote on issue `number`.
    fn replies(&self, number: u64) -> Vec<String> {
        self.github
            .issue_comments(OWNER, REPO, number)
            .iter()
            .filter(|c| c["user"]["login"] == HOOKDOCK)
            .map(|c| c["body"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn only_reply(&self, number: u64) -> String {
        let replies = self.replies(number);
        assert_eq!(replies.len(), 1, "one reply from hookdock: {replies:#?}");
        replies.into_iter().next().expect("one")
    }

    async fn event(&self, id: i64) -> Value {
        let (status, event) = self.app.api_get(&format!("/api/v1/events/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{event}");
        event
    }

    async fn actions(&self, id: i64) -> Vec<Value> {
        self.event(id).await["actions"]
            .as_array()
            .cloned()
            .expect("actions listed")
    }

    /// Requests that would change something on GitHub, from the `from`-th request on.
    fn writes_since(&self, from: usize) -> Vec<String> {
        self.github.requests()[from..]
            .iter()
            .filter(|r| !matches!(r.method.as_str(), "GET" | "HEAD"))
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    fn assert_contract_kept(&self) {
        assert_eq!(self.github.contract_violations(), Vec::<String>::new());
        assert_eq!(self.github.fake_bugs(), Vec::<String>::new());
    }

    fn put_config(&self, text: &str) {
        self.github.put_file(OWNER, REPO, CONFIG, text.as_bytes());
    }
}

fn kinds(actions: &[Value]) -> Vec<String> {
    actions
        .iter()
        .map(|a| a["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn action<'a>(actions: &'a [Value], kind: &str) -> &'a Value {
    actions
        .iter()
        .find(|a| a["kind"] == kind)
        .unwrap_or_else(|| panic!("a `{kind}` action in {actions:#?}"))
}

async fn label_command_labels_replies_once_and_replay_changes_nothing(backend: Backend) {
    let env = env(&backend).await;
    let comment = env.comment(7, "/label bug \"good first issue\"", WRITER, "User");
    let id = env.deliver_and_wait("issue_comment", &comment).await;

    assert_eq!(
        env.github.labels(OWNER, REPO, 7),
        ["bug", "good first issue"]
    );
    let reply = env.only_reply(7);
    assert!(
        reply.contains("<!-- hookdock:command-reply:"),
        "hidden marker: {reply}"
    );
    assert!(reply.contains(&format!("@{WRITER}")), "{reply}");
    assert!(
        reply.contains("`/label`: added `bug`, `good first issue`."),
        "{reply}"
    );

    let actions = env.actions(id).await;
    assert_eq!(kinds(&actions), ["add_labels", "create_comment"]);
    let added = action(&actions, "add_labels");
    assert_eq!(
        added["detail"]["labels"],
        json!(["bug", "good first issue"])
    );
    assert_eq!(added["handler"], "commands");
    assert_eq!(added["number"], 7);
    assert_eq!(added["dry_run"], false);
    assert_eq!(added["repository"], format!("{OWNER}/{REPO}"));

    // A replay runs the command again: nothing is left to do, and the reply stays as it was.
    let before = env.github.requests().len();
    let (status, answer) = env
        .app
        .api_post(&format!("/api/v1/events/{id}/replay"))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    env.app.wait_until_idle().await;
    assert_eq!(
        env.github.labels(OWNER, REPO, 7),
        ["bug", "good first issue"]
    );
    assert_eq!(
        env.only_reply(7),
        reply,
        "the reply is neither added nor rewritten"
    );
    assert_eq!(env.writes_since(before), Vec::<String>::new());
    let actions = env.actions(id).await;
    assert_eq!(kinds(&actions), ["add_labels", "create_comment", "skipped"]);
    let reason = actions[2]["detail"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("answered already"), "{reason}");
    env.assert_contract_kept();
}

async fn several_commands_in_one_comment_and_code_blocks_ignored(backend: Backend) {
    let env = env(&backend).await;
    let mut issue = env.issue_opened(8, "Rename the widget", "");
    issue["issue"]["labels"] = json!([{ "name": "y" }]);
    env.github.add_issue(OWNER, REPO, issue["issue"].clone());
    let body = "Triage:\n/label x\n/assign @alice\n/unlabel y\n\n```\n/label never\n```\n";
    let id = env
        .deliver_and_wait("issue_comment", &env.comment(8, body, WRITER, "User"))
        .await;

    assert_eq!(env.github.labels(OWNER, REPO, 8), ["x"]);
    assert_eq!(env.github.assignees(OWNER, REPO, 8), ["alice"]);
    let reply = env.only_reply(8);
    let lines: Vec<&str> = reply.lines().filter(|l| l.starts_with("- ")).collect();
    assert_eq!(
        lines,
        [
            "- `/label`: added `x`.",
            "- `/assign`: assigned `alice`.",
            "- `/unlabel`: removed `y`.",
        ],
        "{reply}"
    );
    assert!(!reply.contains("never"), "{reply}");
    assert_eq!(
        kinds(&env.actions(id).await),
        ["add_labels", "assign", "remove_label", "create_comment"]
    );
    // Three mutating commands by one user: the permission is asked once (cached).
    let permission_calls = env
        .github
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/permission"))
        .count();
    assert_eq!(permission_calls, 1);
    env.assert_contract_kept();
}

async fn read_permission_is_refused_and_help_works_for_anyone(backend: Backend) {
    let env = env(&backend).await;
    let id = env
        .deliver_and_wait(
            "issue_comment",
            &env.comment(9, "/label bug", READER, "User"),
        )
        .await;
    assert_eq!(env.github.labels(OWNER, REPO, 9), Vec::<String>::new());
    let reply = env.only_reply(9);
    assert!(reply.contains(&format!("@{READER}")), "{reply}");
    assert!(
        reply.contains(&format!(
            "`/label` needs write, maintain or admin permission on {OWNER}/{REPO}; you have `read`."
        )),
        "{reply}"
    );
    assert_eq!(kinds(&env.actions(id).await), ["create_comment"]);

    // Someone who is not even a collaborator may ask for help.
    env.deliver_and_wait(
        "issue_comment",
        &env.comment(10, "/help", "stranger", "User"),
    )
    .await;
    let help = env.only_reply(10);
    for command in [
        "/label",
        "/unlabel",
        "/assign",
        "/unassign",
        "/review",
        "/size",
        "/help",
    ] {
        assert!(help.contains(command), "help lists {command}: {help}");
    }
    assert_eq!(env.github.labels(OWNER, REPO, 10), Vec::<String>::new());
    env.assert_contract_kept();
}

async fn unknown_commands_get_help_and_bots_and_hookdock_itself_are_ignored(backend: Backend) {
    let env = env(&backend).await;
    env.deliver_and_wait(
        "issue_comment",
        &env.comment(11, "/frobnicate now", WRITER, "User"),
    )
    .await;
    let reply = env.only_reply(11);
    assert!(
        reply.contains("`/frobnicate` is not a command hookdock knows."),
        "{reply}"
    );
    assert!(reply.contains("/label"), "help follows: {reply}");

    let bot = env
        .deliver_and_wait(
            "issue_comment",
            &env.comment(12, "/label bug", "dependabot[bot]", "Bot"),
        )
        .await;
    assert_eq!(env.github.labels(OWNER, REPO, 12), Vec::<String>::new());
    assert_eq!(env.replies(12), Vec::<String>::new());
    let actions = env.actions(bot).await;
    assert_eq!(kinds(&actions), ["skipped"], "{actions:#?}");

    let own = env
        .deliver_and_wait(
            "issue_comment",
            &env.comment(13, "/label bug", HOOKDOCK, "User"),
        )
        .await;
    assert_eq!(env.github.labels(OWNER, REPO, 13), Vec::<String>::new());
    assert_eq!(env.replies(13), Vec::<String>::new());
    assert_eq!(env.actions(own).await, Vec::<Value>::new());
    env.assert_contract_kept();
}

async fn unassign_removes_only_the_named_user(backend: Backend) {
    let env = env(&backend).await;
    let mut issue = env.issue_opened(14, "Rename the widget", "");
    issue["issue"]["assignees"] = json!([{ "login": "alice" }, { "login": "bob" }]);
    issue["issue"]["assignee"] = json!({ "login": "alice" });
    env.github.add_issue(OWNER, REPO, issue["issue"].clone());
    assert_eq!(env.github.assignees(OWNER, REPO, 14), ["alice", "bob"]);

    let id = env
        .deliver_and_wait(
            "issue_comment",
            &env.comment(14, "/unassign @alice", WRITER, "User"),
        )
        .await;
    assert_eq!(env.github.assignees(OWNER, REPO, 14), ["bob"]);
    assert!(
        env.only_reply(14)
            .contains("`/unassign`: unassigned `alice`."),
        "{:?}",
        env.replies(14)
    );
    let actions = env.actions(id).await;
    assert_eq!(
        action(&actions, "unassign")["detail"]["logins"],
        json!(["alice"])
    );
    env.assert_contract_kept();
}

async fn issues_get_keyword_labels_under_the_repository_settings(backend: Backend) {
    let env = env(&backend).await;
    let crash = env
        .deliver_and_wait("issues", &env.issue_opened(20, "App crashes on start", ""))
        .await;
    assert_eq!(env.github.labels(OWNER, REPO, 20), ["bug"]);
    let actions = env.actions(crash).await;
    assert_eq!(
        action(&actions, "add_labels")["detail"]["labels"],
        json!(["bug"])
    );
    assert_eq!(action(&actions, "add_labels")["handler"], "issue_labels");

    env.deliver_and_wait(
        "issues",
        &env.issue_opened(21, "Parser notes", "I was debugging the tokenizer today."),
    )
    .await;
    assert_eq!(env.github.labels(OWNER, REPO, 21), Vec::<String>::new());

    // The repository's own rules replace the defaults.
    env.put_config(
        "labels:\n  issues:\n    rules:\n      - label: area/ui\n        keywords: [\"button\", \"dialog\"]\n",
    );
    env.deliver_and_wait(
        "issues",
        &env.issue_opened(22, "Save button crashes the app", ""),
    )
    .await;
    assert_eq!(env.github.labels(OWNER, REPO, 22), ["area/ui"]);

    env.put_config("labels:\n  issues:\n    enabled: false\n");
    let off = env
        .deliver_and_wait("issues", &env.issue_opened(23, "App crashes on start", ""))
        .await;
    assert_eq!(env.github.labels(OWNER, REPO, 23), Vec::<String>::new());
    assert_eq!(env.actions(off).await, Vec::<Value>::new());
    env.assert_contract_kept();
}

async fn an_invalid_config_file_kills_the_job_naming_file_line_and_key(backend: Backend) {
    let env = env(&backend).await;
    env.put_config("review:\n  enabled: true\nlabels:\n  size:\n    tiers: 3\n");
    let id = env
        .deliver_and_wait("issues", &env.issue_opened(30, "App crashes on start", ""))
        .await;
    assert_eq!(env.github.labels(OWNER, REPO, 30), Vec::<String>::new());
    let event = env.event(id).await;
    let jobs = event["jobs"].as_array().expect("jobs");
    let job = jobs
        .iter()
        .find(|j| j["handler"] == "issue_labels")
        .unwrap_or_else(|| panic!("issue_labels job in {event:#}"));
    assert_eq!(job["status"], "dead", "{job}");
    assert_eq!(job["attempts"], 1, "a bad file is not retried: {job}");
    let error = job["last_error"].as_str().expect("last_error");
    assert!(
        error.contains(".github/hookdock.yml line 5, key `labels.size.tiers`"),
        "{error}"
    );
    assert_eq!(event["actions"], json!([]));
    env.assert_contract_kept();
}

async fn dry_run_settings_record_actions_without_writing(backend: Backend) {
    let env = env(&backend).await;
    env.put_config("dry_run: true\n");
    let comment = env.comment(40, "/label bug", WRITER, "User");
    let before = env.github.requests().len();
    let id = env.deliver_and_wait("issue_comment", &comment).await;
    assert_eq!(env.github.labels(OWNER, REPO, 40), Vec::<String>::new());
    assert_eq!(env.replies(40), Vec::<String>::new());
    assert_eq!(env.writes_since(before), Vec::<String>::new());
    let actions = env.actions(id).await;
    assert_eq!(kinds(&actions), ["add_labels", "create_comment"]);
    for a in &actions {
        assert_eq!(a["dry_run"], true, "{a}");
    }
    assert_eq!(
        action(&actions, "add_labels")["detail"]["labels"],
        json!(["bug"])
    );
    env.assert_contract_kept();
}

async fn dry_run_replay_reports_what_it_would_do_and_writes_nothing(backend: Backend) {
    let env = env(&backend).await;
    // Stored while issue labels were off on the repository; then they are turned on.
    env.put_config("labels:\n  issues:\n    enabled: false\n");
    let id = env
        .deliver_and_wait("issues", &env.issue_opened(50, "App crashes on start", ""))
        .await;
    assert_eq!(env.actions(id).await, Vec::<Value>::new());
    env.put_config("labels:\n  issues:\n    enabled: true\n");

    let before = env.github.requests().len();
    let (status, answer) = env
        .app
        .api_post(&format!("/api/v1/events/{id}/replay?dry_run=true"))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["dry_run"], true);
    let runs = answer["automations"].as_array().expect("automations");
    let labels = runs
        .iter()
        .find(|r| r["automation"] == "issue_labels")
        .unwrap_or_else(|| panic!("issue_labels in {answer:#}"));
    assert_eq!(labels["error"], Value::Null);
    assert_eq!(labels["actions"][0]["kind"], "add_labels");
    assert_eq!(labels["actions"][0]["detail"]["labels"], json!(["bug"]));
    assert_eq!(labels["actions"][0]["dry_run"], true);
    assert_eq!(env.writes_since(before), Vec::<String>::new());
    assert_eq!(env.github.labels(OWNER, REPO, 50), Vec::<String>::new());
    // What it would do is kept with the event, marked as a dry run.
    let actions = env.actions(id).await;
    assert_eq!(kinds(&actions), ["add_labels"]);
    assert_eq!(actions[0]["dry_run"], true);
    env.assert_contract_kept();

    let off = env_with(&backend, false).await;
    let id = off
        .deliver_and_wait("issues", &off.issue_opened(51, "App crashes on start", ""))
        .await;
    let (status, answer) = off
        .app
        .api_post(&format!("/api/v1/events/{id}/replay?dry_run=true"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(answer.to_string().contains("automations_off"), "{answer}");
    assert_eq!(off.github.requests().len(), 0, "nothing asked of GitHub");
}

/// A pull request `number` changing `.github/hookdock.yml` to `proposed` at its head commit.
fn config_pull(env: &Env, number: u64, head: &str, proposed: &str) -> Value {
    let mut value = payload("pull_request.opened.0");
    set_sender(&mut value, WRITER, "User");
    let pull = &mut value["pull_request"];
    pull["number"] = json!(number);
    pull["head"]["sha"] = json!(head);
    pull["labels"] = json!([]);
    pull["assignees"] = json!([]);
    pull["assignee"] = Value::Null;
    pull["user"]["login"] = json!(WRITER);
    pull["draft"] = json!(false);
    value["number"] = json!(number);
    env.github
        .add_pull(OWNER, REPO, value["pull_request"].clone());
    env.github.set_pull_files(
        OWNER,
        REPO,
        number,
        vec![json!({
            "sha": "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
            "filename": CONFIG,
            "status": "modified",
            "additions": 2,
            "deletions": 0,
            "changes": 2,
            "blob_url": format!("https://github.com/{OWNER}/{REPO}/blob/{head}/{CONFIG}"),
            "raw_url": format!("https://github.com/{OWNER}/{REPO}/raw/{head}/{CONFIG}"),
            "contents_url": format!("https://api.github.com/repos/{OWNER}/{REPO}/contents/{CONFIG}?ref={head}"),
            "patch": "@@ -1,2 +1,4 @@\n review:\n   enabled: false\n+labels:\n+  issues:\n",
        })],
    );
    env.github
        .put_file_at(OWNER, REPO, CONFIG, head, proposed.as_bytes());
    value
}

async fn config_simulation_comments_what_a_proposed_file_would_change(backend: Backend) {
    let env = env(&backend).await;
    env.put_config("review:\n  enabled: false\n");
    let first = env
        .deliver_and_wait("issues", &env.issue_opened(60, "App crashes on start", ""))
        .await;
    let second = env
        .deliver_and_wait("issues", &env.issue_opened(61, "Error when saving", ""))
        .await;
    assert_eq!(env.github.labels(OWNER, REPO, 60), ["bug"]);
    assert_eq!(env.github.labels(OWNER, REPO, 61), ["bug"]);

    let head = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";
    let pull = config_pull(
        &env,
        62,
        head,
        "review:\n  enabled: false\nlabels:\n  issues:\n    enabled: false\n",
    );
    env.deliver_and_wait("pull_request", &pull).await;
    let comments: Vec<String> = env
        .replies(62)
        .into_iter()
        .filter(|c| c.contains("<!-- hookdock:config-simulation -->"))
        .collect();
    assert_eq!(comments.len(), 1, "{:#?}", env.replies(62));
    let comment = &comments[0];
    assert!(
        comment.contains("### hookdock config simulation"),
        "{comment}"
    );
    assert!(
        comment.contains("`a1b2c3d`"),
        "names the head commit: {comment}"
    );
    assert!(
        comment.contains("2 event(s) would be handled differently"),
        "{comment}"
    );
    for id in [first, second] {
        let row = format!("| issues.opened (#{id}) | issue_labels: add `bug` | nothing |");
        assert!(comment.contains(&row), "row {row:?} in {comment}");
    }
    // The issues keep their labels: the simulation only reads.
    assert_eq!(env.github.labels(OWNER, REPO, 60), ["bug"]);

    let bad_head = "b2c3d4e5f60718293a4b5c6d7e8f9012345678a1";
    let bad = config_pull(
        &env,
        63,
        bad_head,
        "review:\n  enabled: false\nlabels:\n  size:\n    tiers: 3\n",
    );
    env.deliver_and_wait("pull_request", &bad).await;
    let comments: Vec<String> = env
        .replies(63)
        .into_iter()
        .filter(|c| c.contains("<!-- hookdock:config-simulation -->"))
        .collect();
    assert_eq!(comments.len(), 1, "{:#?}", env.replies(63));
    assert!(
        comments[0].contains("is not valid")
            && comments[0].contains(".github/hookdock.yml line 5, key `labels.size.tiers`"),
        "{}",
        comments[0]
    );
    env.assert_contract_kept();
}

crate::backend_tests!(
    label_command_labels_replies_once_and_replay_changes_nothing,
    several_commands_in_one_comment_and_code_blocks_ignored,
    read_permission_is_refused_and_help_works_for_anyone,
    unknown_commands_get_help_and_bots_and_hookdock_itself_are_ignored,
    unassign_removes_only_the_named_user,
    issues_get_keyword_labels_under_the_repository_settings,
    an_invalid_config_file_kills_the_job_naming_file_line_and_key,
    dry_run_settings_record_actions_without_writing,
    dry_run_replay_reports_what_it_would_do_and_writes_nothing,
    config_simulation_comments_what_a_proposed_file_would_change,
);
