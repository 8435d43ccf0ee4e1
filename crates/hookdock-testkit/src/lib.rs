//! Test support for hookdock: a fake GitHub server held to GitHub's REST contract.
//!
//! [`FakeGitHub::start`] serves, on `127.0.0.1` and a port of its own, the REST endpoints hookdock
//! uses (webhooks, deliveries, pull requests and their commits, issues and their events, labels,
//! contents, `/meta`, …) and GitHub's OAuth web flow.
//! Every request is checked against GitHub's OpenAPI description (`shared/fixtures/
//! github-rest-openapi.json`, or the file named by `HOOKDOCK_GITHUB_OPENAPI`): what does not fit
//! is answered as GitHub would (404/422/…) *and* listed by [`FakeGitHub::contract_violations`],
//! which tests assert to be empty. Deliveries are real signed HTTP POSTs to the hook's URL.
//!
//! ```no_run
//! # async fn demo() {
//! use hookdock_testkit::FakeGitHub;
//! let github = FakeGitHub::start().await;
//! github.add_token("ghp_test", "octocat", &["admin:repo_hook"]);
//! github.add_repo("octocat", "hello");
//! // … point the client under test at github.url() …
//! assert!(github.contract_violations().is_empty());
//! # }
//! ```

pub mod contract;
mod deliveries;
mod faults;
mod hooks;
mod issues;
mod llm;
mod meta;
mod oauth;
mod partition;
mod pulls;
mod repos;
mod server;
mod state;

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use time::OffsetDateTime;

pub use contract::EXTRA_ENDPOINTS;
pub use deliveries::{signature_256, signature_sha1};
pub use faults::Fault;
pub use llm::{FakeLlm, LlmReply};
pub use partition::TcpProxy;
pub use state::{
    DEFAULT_META_HOOKS, FakeCommit, FakeDelivery, FakeHook, FakeLabel, HookOwner, RecordedRequest,
};

use server::Shared;
use state::{Org, Repo, Token, repo_key};

/// The values of `items` that belong to issue or pull request `number`, oldest first.
fn items_of(items: &[state::Item], owner: &str, repo: &str, number: u64) -> Vec<Value> {
    let key = repo_key(owner, repo);
    items
        .iter()
        .filter(|i| i.repo == key && i.number == number)
        .map(|i| i.value.clone())
        .collect()
}

/// A fake GitHub (REST API and OAuth web flow) on `127.0.0.1`, stopped when dropped.
pub struct FakeGitHub {
    shared: Arc<Shared>,
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeGitHub {
    /// Binds `127.0.0.1:0` and serves until dropped. Loads the OpenAPI description on first use.
    pub async fn start() -> FakeGitHub {
        let _ = contract::contract();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let shared = Arc::new(Shared {
            state: Mutex::new(state::State::new(url.clone())),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("reqwest client"),
        });
        let app = axum::Router::new()
            .fallback(server::handle)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeGitHub { shared, url, task }
    }

    /// `http://127.0.0.1:PORT`: the REST API base and the OAuth web base alike.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Accepts `token` (as `Bearer` or `token`) for `login` with these OAuth scopes.
    pub fn add_token(&self, token: &str, login: &str, scopes: &[&str]) {
        let mut st = self.shared.lock();
        st.user_id(login);
        st.tokens.insert(
            token.to_owned(),
            Token {
                login: login.to_owned(),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            },
        );
    }

    /// Adds a repository (names are case-insensitive, as on GitHub); returns its id. Adding it
    /// again returns the same id.
    pub fn add_repo(&self, owner: &str, name: &str) -> u64 {
        let mut st = self.shared.lock();
        if let Some(repo) = st.repo(owner, name) {
            return repo.id;
        }
        let id = st.next_id();
        st.repos.insert(
            repo_key(owner, name),
            Repo {
                id,
                owner: owner.to_owned(),
                name: name.to_owned(),
            },
        );
        id
    }

    /// Adds an organization; returns its id (the same one when added again).
    pub fn add_org(&self, org: &str) -> u64 {
        let mut st = self.shared.lock();
        if let Some(o) = st.org(org) {
            return o.id;
        }
        let id = st.next_id();
        st.orgs.insert(
            org.to_ascii_lowercase(),
            Org {
                id,
                login: org.to_owned(),
            },
        );
        id
    }

    /// The hooks of a repository, oldest first.
    pub fn repo_hooks(&self, owner: &str, repo: &str) -> Vec<FakeHook> {
        let key = repo_key(owner, repo);
        self.shared
            .lock()
            .hooks
            .values()
            .filter(|h| matches!(&h.owner, HookOwner::Repository { owner, repo, .. } if repo_key(owner, repo) == key))
            .cloned()
            .collect()
    }

    /// The hooks of an organization, oldest first.
    pub fn org_hooks(&self, org: &str) -> Vec<FakeHook> {
        self.shared
            .lock()
            .hooks
            .values()
            .filter(|h| matches!(&h.owner, HookOwner::Organization { org: o, .. } if o.eq_ignore_ascii_case(org)))
            .cloned()
            .collect()
    }

    /// One hook by id.
    pub fn hook(&self, hook_id: u64) -> Option<FakeHook> {
        self.shared.lock().hooks.get(&hook_id).cloned()
    }

    /// Deletes a hook as someone on GitHub would.
    pub fn remove_hook(&self, hook_id: u64) {
        self.shared.lock().hooks.remove(&hook_id);
    }

    /// Turns a hook on or off as someone on GitHub would.
    pub fn set_hook_active(&self, hook_id: u64, active: bool) {
        if let Some(hook) = self.shared.lock().hooks.get_mut(&hook_id) {
            hook.active = active;
            hook.updated_at = OffsetDateTime::now_utc();
        }
    }

    /// Sends `body` as event `event` to the hook's URL now, exactly as GitHub does, and returns
    /// the recorded delivery. It sends even to an inactive hook or one not subscribed to the
    /// event (the test asked for it); [`FakeGitHub::emit`] applies GitHub's choice of hooks.
    /// Panics when there is no such hook.
    pub async fn deliver(&self, hook_id: u64, event: &str, body: &[u8]) -> FakeDelivery {
        let out = deliveries::Outgoing::new(hook_id, event, body.to_vec());
        deliveries::perform(&self.shared, out)
            .await
            .unwrap_or_else(|| panic!("deliver: no hook {hook_id}"))
    }

    /// What GitHub does when `event` happens in a repository: delivers `body` to every active
    /// hook of the repository and of its owner organization (if added) that subscribes to the
    /// event (or `*`), one after the other; returns the recorded deliveries.
    pub async fn emit(
        &self,
        owner: &str,
        repo: &str,
        event: &str,
        body: &[u8],
    ) -> Vec<FakeDelivery> {
        let key = repo_key(owner, repo);
        let targets: Vec<u64> = self
            .shared
            .lock()
            .hooks
            .values()
            .filter(|h| h.active && h.events.iter().any(|e| e == event || e == "*"))
            .filter(|h| match &h.owner {
                HookOwner::Repository { owner, repo, .. } => repo_key(owner, repo) == key,
                HookOwner::Organization { org, .. } => org.eq_ignore_ascii_case(owner),
            })
            .map(|h| h.id)
            .collect();
        let mut sent = Vec::new();
        for hook_id in targets {
            sent.push(self.deliver(hook_id, event, body).await);
        }
        sent
    }

    /// Records a delivery GitHub attempted and that failed with `status_code` (0: no connection),
    /// without sending anything; its body is kept for redelivery.
    pub fn record_failed_delivery(
        &self,
        hook_id: u64,
        event: &str,
        body: &[u8],
        status_code: u16,
        delivered_at: OffsetDateTime,
    ) -> FakeDelivery {
        let mut st = self.shared.lock();
        deliveries::failed(&mut st, hook_id, event, body, status_code, delivered_at)
    }

    /// Every delivery of a hook, newest first (as GitHub lists them).
    pub fn deliveries(&self, hook_id: u64) -> Vec<FakeDelivery> {
        self.shared
            .lock()
            .deliveries
            .iter()
            .rev()
            .filter(|d| d.hook_id == hook_id)
            .cloned()
            .collect()
    }

    /// Waits until the hook has at least `n` deliveries (pings and redeliveries are sent in the
    /// background), at most `timeout`; returns them newest first.
    pub async fn wait_for_deliveries(
        &self,
        hook_id: u64,
        n: usize,
        timeout: std::time::Duration,
    ) -> Vec<FakeDelivery> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let list = self.deliveries(hook_id);
            if list.len() >= n || tokio::time::Instant::now() >= deadline {
                return list;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Ids of the deliveries of this hook for which `POST …/attempts` was called, in order.
    pub fn redelivery_requests(&self, hook_id: u64) -> Vec<u64> {
        self.shared
            .lock()
            .redelivery_requests
            .iter()
            .filter(|(h, _)| *h == hook_id)
            .map(|(_, d)| *d)
            .collect()
    }

    /// Every request received, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Every request that broke GitHub's contract, one line each. Tests assert it is empty.
    pub fn contract_violations(&self) -> Vec<String> {
        self.shared.lock().violations.clone()
    }

    /// Every answer of the fake itself that broke the contract's response schemas (a bug in
    /// this crate, not in the client under test).
    pub fn fake_bugs(&self) -> Vec<String> {
        self.shared.lock().fake_bugs.clone()
    }

    /// The next `fault.times` requests with this method and path (exact, or with `*` for any
    /// one segment) get `fault` instead of their answer; a [`Fault::slow`] gets their own
    /// answer, late.
    pub fn fail_next(&self, method: &str, path: &str, fault: Fault) {
        self.shared.lock().faults.push(faults::FaultRule {
            method: method.to_owned(),
            pattern: path.to_owned(),
            fault,
        });
    }

    /// Sets the primary rate limit: `x-ratelimit-*` headers reflect it, each counted request
    /// spends one, and with none left requests get GitHub's 403 until `reset` (epoch seconds).
    pub fn set_rate_limit(&self, remaining: u32, reset: i64) {
        let mut st = self.shared.lock();
        st.rate.remaining = remaining.min(st.rate.limit);
        st.rate.reset = reset;
    }

    /// Registers an OAuth app for the web flow.
    pub fn oauth_app(&self, client_id: &str, client_secret: &str) {
        self.shared
            .lock()
            .oauth_apps
            .insert(client_id.to_owned(), client_secret.to_owned());
    }

    /// Who "signs in" at `/login/oauth/authorize` (default `octocat`).
    pub fn set_oauth_user(&self, login: &str) {
        self.shared.lock().oauth_user = login.to_owned();
    }

    /// Sets `login`'s permission on a repository (`admin`, `maintain`, `write`, `triage`,
    /// `read`, `none`); by default the owner is `admin` and everyone else `none`.
    pub fn set_permission(&self, owner: &str, repo: &str, login: &str, permission: &str) {
        self.shared.lock().permissions.insert(
            (repo_key(owner, repo), login.to_ascii_lowercase()),
            permission.to_owned(),
        );
    }

    /// Adds a pull request (e.g. a webhook payload's `pull_request`), with its issue and labels.
    /// Added for the first time, it gets as many commits as its `commits` says (at least one),
    /// by its author, written one hour apart, the last one an hour before its `created_at` and
    /// being its `head.sha`; [`FakeGitHub::set_pull_commits`] replaces them. Adding it again
    /// keeps its commits.
    pub fn add_pull(&self, owner: &str, repo: &str, pull: Value) {
        pulls::add_pull(&mut self.shared.lock(), owner, repo, pull);
    }

    /// Replaces the commits of a pull request (oldest first), as a push or force-push does: its
    /// `commits` count and `head.sha` follow (its `updated_at` is the test's to set). Panics
    /// when there is no such pull request.
    pub fn set_pull_commits(&self, owner: &str, repo: &str, number: u64, commits: &[FakeCommit]) {
        let key = repo_key(owner, repo);
        let set = pulls::set_commits(&mut self.shared.lock(), &key, number, commits.to_vec());
        assert!(set, "set_pull_commits: no pull request {key}#{number}");
    }

    /// The commits of a pull request, oldest first.
    pub fn pull_commits(&self, owner: &str, repo: &str, number: u64) -> Vec<FakeCommit> {
        self.shared
            .lock()
            .pull_commits
            .get(&(repo_key(owner, repo), number))
            .cloned()
            .unwrap_or_default()
    }

    /// Turns an open pull request into a draft (`draft`) or marks it ready for review, as
    /// `actor` does on GitHub at `at`: `draft` changes, `updated_at` becomes `at`, and a
    /// `convert_to_draft` or `ready_for_review` issue event is recorded (and returned). Panics
    /// when there is no such pull request.
    pub fn set_draft(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
        actor: &str,
        at: OffsetDateTime,
        draft: bool,
    ) -> Value {
        let key = repo_key(owner, repo);
        let mut st = self.shared.lock();
        let updated = json!(state::timestamp(at));
        let Some(pull) = st.pulls.get_mut(&(key.clone(), number)) else {
            panic!("no pull request {key}#{number}");
        };
        pull["draft"] = json!(draft);
        pull["updated_at"] = updated.clone();
        if let Some(issue) = st.issues.get_mut(&(key.clone(), number)) {
            issue["updated_at"] = updated;
        }
        let event = if draft {
            "convert_to_draft"
        } else {
            "ready_for_review"
        };
        issues::record_event(&mut st, &key, number, actor, event, at, json!({}))
    }

    /// The events of an issue or pull request, oldest first (as the events API lists them).
    pub fn issue_events(&self, owner: &str, repo: &str, number: u64) -> Vec<Value> {
        items_of(&self.shared.lock().issue_events, owner, repo, number)
    }

    /// Adds an issue that is not a pull request (e.g. a webhook payload's `issue`), with its
    /// labels and assignees.
    pub fn add_issue(&self, owner: &str, repo: &str, issue: Value) {
        issues::add_issue(&mut self.shared.lock(), owner, repo, issue);
    }

    /// The files API answer of a pull request (objects with `filename`, `status`, `patch`, …);
    /// also what review comments are checked against.
    pub fn set_pull_files(&self, owner: &str, repo: &str, number: u64, files: Vec<Value>) {
        self.shared
            .lock()
            .pull_files
            .insert((repo_key(owner, repo), number), files);
    }

    /// A file for the contents API.
    pub fn put_file(&self, owner: &str, repo: &str, path: &str, content: &[u8]) {
        self.shared.lock().files.insert(
            (repo_key(owner, repo), path.trim_matches('/').to_owned()),
            content.to_vec(),
        );
    }

    /// A file for the contents API at one ref only (`?ref=`), e.g. a pull request's head
    /// commit; other refs see the file given to [`FakeGitHub::put_file`], if any.
    pub fn put_file_at(&self, owner: &str, repo: &str, path: &str, git_ref: &str, content: &[u8]) {
        self.shared.lock().files_at.insert(
            (
                repo_key(owner, repo),
                path.trim_matches('/').to_owned(),
                git_ref.to_owned(),
            ),
            content.to_vec(),
        );
    }

    /// Comments on an issue or pull request, oldest first.
    pub fn issue_comments(&self, owner: &str, repo: &str, number: u64) -> Vec<Value> {
        items_of(&self.shared.lock().issue_comments, owner, repo, number)
    }

    /// Reviews of a pull request, oldest first.
    pub fn reviews(&self, owner: &str, repo: &str, number: u64) -> Vec<Value> {
        items_of(&self.shared.lock().reviews, owner, repo, number)
    }

    /// Review comments of a pull request, oldest first.
    pub fn review_comments(&self, owner: &str, repo: &str, number: u64) -> Vec<Value> {
        items_of(&self.shared.lock().review_comments, owner, repo, number)
    }

    /// The `hooks` CIDR ranges `GET /meta` lists (default [`DEFAULT_META_HOOKS`], GitHub's).
    pub fn set_meta_hooks(&self, ranges: &[&str]) {
        self.shared.lock().meta_hooks = ranges.iter().map(|r| (*r).to_owned()).collect();
    }

    /// Defines a label in a repository as someone on GitHub would; returns it. An existing label
    /// of that name (case-insensitive) is returned unchanged.
    pub fn add_label(&self, owner: &str, repo: &str, name: &str, color: &str) -> FakeLabel {
        let key = repo_key(owner, repo);
        let mut st = self.shared.lock();
        if let Some(label) = st.find_repo_label(&key, name) {
            return label;
        }
        let label = FakeLabel {
            id: st.next_id(),
            name: name.to_owned(),
            color: color.trim_start_matches('#').to_ascii_lowercase(),
            description: None,
        };
        st.repo_labels.entry(key).or_default().push(label.clone());
        label
    }

    /// The labels defined in a repository, oldest first.
    pub fn repo_labels(&self, owner: &str, repo: &str) -> Vec<FakeLabel> {
        self.shared
            .lock()
            .repo_labels
            .get(&repo_key(owner, repo))
            .cloned()
            .unwrap_or_default()
    }

    /// Logins assigned to an issue or pull request.
    pub fn assignees(&self, owner: &str, repo: &str, number: u64) -> Vec<String> {
        self.shared
            .lock()
            .issues
            .get(&(repo_key(owner, repo), number))
            .and_then(|i| i["assignees"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|u| u["login"].as_str().map(str::to_owned))
            .collect()
    }

    /// The most mutating requests (anything but `GET`/`HEAD`) that were being answered at once
    /// since the fake started: 1 for a client that makes its writes one at a time.
    pub fn max_concurrent_writes(&self) -> u32 {
        self.shared.lock().max_writes_in_flight
    }

    /// Label names of an issue or pull request.
    pub fn labels(&self, owner: &str, repo: &str, number: u64) -> Vec<String> {
        self.shared
            .lock()
            .labels
            .get(&(repo_key(owner, repo), number))
            .cloned()
            .unwrap_or_default()
    }
}
