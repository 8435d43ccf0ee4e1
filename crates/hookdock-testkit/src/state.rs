//! What the fake GitHub knows: tokens, repositories, organizations, hooks, deliveries, pull
//! requests with their commits, issues with their events, files, rate limit, and the record of every request, contract violation and
//! fake bug. Plain data behind one mutex; the other modules read and change it, this one only
//! defines it and offers small look-ups and the JSON templates built from GitHub's examples.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::contract;
use crate::faults::FaultRule;

/// A request as the fake received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string, without `?` (empty when there was none).
    pub query: String,
    /// Header names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON, or `Value::Null` when it was empty or not JSON.
    pub body: Value,
    pub raw_body: Vec<u8>,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Where a hook is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOwner {
    Repository {
        owner: String,
        repo: String,
        id: u64,
    },
    Organization {
        org: String,
        id: u64,
    },
}

impl HookOwner {
    /// `X-GitHub-Hook-Installation-Target-Type`.
    pub fn target_type(&self) -> &'static str {
        match self {
            HookOwner::Repository { .. } => "repository",
            HookOwner::Organization { .. } => "organization",
        }
    }

    /// `X-GitHub-Hook-Installation-Target-ID`.
    pub fn target_id(&self) -> u64 {
        match self {
            HookOwner::Repository { id, .. } | HookOwner::Organization { id, .. } => *id,
        }
    }

    /// The API path of the hook collection: `/repos/o/r/hooks` or `/orgs/o/hooks`.
    pub fn hooks_path(&self) -> String {
        match self {
            HookOwner::Repository { owner, repo, .. } => format!("/repos/{owner}/{repo}/hooks"),
            HookOwner::Organization { org, .. } => format!("/orgs/{org}/hooks"),
        }
    }
}

/// A webhook as the fake stores it (the secret in clear, as GitHub keeps it).
#[derive(Debug, Clone, PartialEq)]
pub struct FakeHook {
    pub id: u64,
    pub url: String,
    /// `json` or `form`.
    pub content_type: String,
    pub secret: Option<String>,
    pub insecure_ssl: String,
    pub events: Vec<String>,
    pub active: bool,
    pub owner: HookOwner,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// `last_response` of the hook object: `{code, status, message}`.
    pub last_response: Value,
}

/// One attempt to deliver an event to a hook, as GitHub lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeDelivery {
    pub id: u64,
    pub guid: String,
    pub hook_id: u64,
    pub delivered_at: OffsetDateTime,
    pub redelivery: bool,
    /// Seconds.
    pub duration: f64,
    /// `OK`, or why it failed (`Invalid HTTP Response: 500`, `failed to connect to host`).
    pub status: String,
    /// The receiver's status code; 0 when no answer was received.
    pub status_code: u16,
    pub event: String,
    pub action: Option<String>,
    pub installation_id: Option<u64>,
    pub repository_id: Option<u64>,
    pub request_headers: Vec<(String, String)>,
    /// The event payload (JSON), kept for redelivery; a form delivery sent it as `payload=`.
    pub payload: Vec<u8>,
    pub response_headers: Vec<(String, String)>,
    pub response_body: String,
}

impl FakeDelivery {
    /// Whether the receiver answered 2xx.
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.status_code)
    }
}

/// A label of a repository (GitHub creates one when an unknown label is added to an issue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeLabel {
    pub id: u64,
    pub name: String,
    /// Six hex digits, without `#`.
    pub color: String,
    pub description: Option<String>,
}

/// A commit of a pull request, as a test describes it; the fake serves it as GitHub's
/// `commit` object of `GET /repos/{owner}/{repo}/pulls/{pull_number}/commits`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeCommit {
    /// 40 hex digits.
    pub sha: String,
    /// Login of the GitHub user who wrote it (also its committer).
    pub author: String,
    /// `commit.author.date`: when it was written; a rebase keeps it.
    pub authored_at: OffsetDateTime,
    /// `commit.committer.date`: when it was last applied; a rebase moves it.
    pub committed_at: OffsetDateTime,
    pub message: String,
}

impl FakeCommit {
    /// A commit written and committed at `at` by `author`.
    pub fn new(sha: &str, author: &str, at: OffsetDateTime) -> FakeCommit {
        FakeCommit {
            sha: sha.to_owned(),
            author: author.to_owned(),
            authored_at: at,
            committed_at: at,
            message: format!("Change {}", &sha[..sha.len().min(7)]),
        }
    }
}

/// GitHub's `hooks` ranges of `GET /meta`: where webhook deliveries come from.
pub const DEFAULT_META_HOOKS: &[&str] = &[
    "192.30.252.0/22",
    "185.199.108.0/22",
    "140.82.112.0/20",
    "143.55.64.0/20",
    "2a0a:a440::/29",
    "2606:50c0::/32",
];

#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub login: String,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Repo {
    pub id: u64,
    pub owner: String,
    pub name: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Org {
    pub id: u64,
    pub login: String,
}

/// A comment or review stored for one pull request / issue.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub repo: String,
    pub number: u64,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub(crate) struct RateLimit {
    pub limit: u32,
    pub remaining: u32,
    pub reset: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct OAuthCode {
    pub client_id: String,
    pub login: String,
    pub scope: String,
}

#[derive(Debug)]
pub(crate) struct State {
    pub base_url: String,
    next_id: u64,
    pub tokens: HashMap<String, Token>,
    pub user_ids: HashMap<String, u64>,
    /// Keyed by lowercase `owner/name` (GitHub's names are case-insensitive).
    pub repos: BTreeMap<String, Repo>,
    pub orgs: BTreeMap<String, Org>,
    pub hooks: BTreeMap<u64, FakeHook>,
    /// Oldest first.
    pub deliveries: Vec<FakeDelivery>,
    pub redelivery_requests: Vec<(u64, u64)>,
    pub pulls: BTreeMap<(String, u64), Value>,
    pub pull_files: HashMap<(String, u64), Vec<Value>>,
    /// The commits of each pull request, oldest first.
    pub pull_commits: HashMap<(String, u64), Vec<FakeCommit>>,
    pub issues: BTreeMap<(String, u64), Value>,
    pub labels: HashMap<(String, u64), Vec<String>>,
    /// Labels defined in each repository (key: lowercase `owner/name`), oldest first.
    pub repo_labels: HashMap<String, Vec<FakeLabel>>,
    pub issue_comments: Vec<Item>,
    pub review_comments: Vec<Item>,
    pub reviews: Vec<Item>,
    /// Issue events (`labeled`, `convert_to_draft`, `ready_for_review`, …), oldest first.
    pub issue_events: Vec<Item>,
    pub files: BTreeMap<(String, String), Vec<u8>>,
    /// Files that differ at one ref (branch or commit): `(repo, path, ref)`.
    pub files_at: BTreeMap<(String, String, String), Vec<u8>>,
    pub permissions: HashMap<(String, String), String>,
    /// The `hooks` list of `GET /meta`.
    pub meta_hooks: Vec<String>,
    pub faults: Vec<FaultRule>,
    /// Mutating requests being answered now, and the most there were at once.
    pub writes_in_flight: u32,
    pub max_writes_in_flight: u32,
    pub rate: RateLimit,
    pub requests: Vec<RecordedRequest>,
    pub violations: Vec<String>,
    pub fake_bugs: Vec<String>,
    pub oauth_apps: HashMap<String, String>,
    pub oauth_user: String,
    pub oauth_codes: HashMap<String, OAuthCode>,
}

/// The key of a repository: lowercase `owner/name`.
pub(crate) fn repo_key(owner: &str, repo: &str) -> String {
    format!("{owner}/{repo}").to_ascii_lowercase()
}

/// What is percent-encoded in a segment of a URL path.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `path` for a URL: each `/`-separated segment percent-encoded (`read me.md` → `read%20me.md`).
pub(crate) fn encode_path(path: &str) -> String {
    path.split('/')
        .map(|s| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// GitHub's timestamp format: `2011-09-06T17:26:27Z`.
pub(crate) fn timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Replaces GitHub's example host and repository in every string of a template.
pub(crate) fn localize(value: &mut Value, base: &str, full_name: Option<&str>) {
    match value {
        Value::String(s) => {
            if s.contains("https://api.github.com") {
                *s = s.replace("https://api.github.com", base);
            }
            if let Some(full) = full_name
                && s.contains("octocat/Hello-World")
            {
                *s = s.replace("octocat/Hello-World", full);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| localize(v, base, full_name)),
        Value::Object(map) => map.values_mut().for_each(|v| localize(v, base, full_name)),
        _ => {}
    }
}

/// GitHub's example response of `operation_id` for `status`; panics when the description has
/// none, since the fake's answers are built from them.
pub(crate) fn example(operation_id: &str, status: u16) -> Value {
    contract::contract()
        .operation(operation_id)
        .and_then(|op| op.example(status))
        .unwrap_or_else(|| panic!("no example for {operation_id} {status} in the description"))
}

/// Completes `value` to what `operation_id` answers with `status` (see [`contract::Operation::complete`]).
pub(crate) fn complete(operation_id: &str, status: u16, value: &mut Value) {
    if let Some(op) = contract::contract().operation(operation_id) {
        op.complete(status, value);
    }
}

impl State {
    pub fn new(base_url: String) -> State {
        State {
            base_url,
            next_id: 1000,
            tokens: HashMap::new(),
            user_ids: HashMap::new(),
            repos: BTreeMap::new(),
            orgs: BTreeMap::new(),
            hooks: BTreeMap::new(),
            deliveries: Vec::new(),
            redelivery_requests: Vec::new(),
            pulls: BTreeMap::new(),
            pull_files: HashMap::new(),
            pull_commits: HashMap::new(),
            issues: BTreeMap::new(),
            labels: HashMap::new(),
            repo_labels: HashMap::new(),
            issue_comments: Vec::new(),
            review_comments: Vec::new(),
            reviews: Vec::new(),
            issue_events: Vec::new(),
            files: BTreeMap::new(),
            files_at: BTreeMap::new(),
            permissions: HashMap::new(),
            meta_hooks: DEFAULT_META_HOOKS.iter().map(|s| (*s).to_owned()).collect(),
            faults: Vec::new(),
            writes_in_flight: 0,
            max_writes_in_flight: 0,
            rate: RateLimit {
                limit: 5000,
                remaining: 5000,
                reset: OffsetDateTime::now_utc().unix_timestamp() + 3600,
            },
            requests: Vec::new(),
            violations: Vec::new(),
            fake_bugs: Vec::new(),
            oauth_apps: HashMap::new(),
            oauth_user: "octocat".into(),
            oauth_codes: HashMap::new(),
        }
    }

    /// A fresh id, unique across every kind of object of this fake.
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn repo(&self, owner: &str, repo: &str) -> Option<&Repo> {
        self.repos.get(&repo_key(owner, repo))
    }

    /// The repository label named `name` (case-insensitive), created with GitHub's default
    /// colour when it does not exist yet, as adding an unknown label to an issue does.
    pub fn repo_label(&mut self, key: &str, name: &str) -> FakeLabel {
        if let Some(label) = self.find_repo_label(key, name) {
            return label;
        }
        let label = FakeLabel {
            id: self.next_id(),
            name: name.to_owned(),
            color: "ededed".into(),
            description: None,
        };
        self.repo_labels
            .entry(key.to_owned())
            .or_default()
            .push(label.clone());
        label
    }

    /// The repository label named `name` (case-insensitive), if defined.
    pub fn find_repo_label(&self, key: &str, name: &str) -> Option<FakeLabel> {
        self.repo_labels
            .get(key)?
            .iter()
            .find(|l| l.name.eq_ignore_ascii_case(name))
            .cloned()
    }

    pub fn org(&self, org: &str) -> Option<&Org> {
        self.orgs.get(&org.to_ascii_lowercase())
    }

    pub fn user_id(&mut self, login: &str) -> u64 {
        if let Some(id) = self.user_ids.get(&login.to_ascii_lowercase()) {
            return *id;
        }
        let id = self.next_id();
        self.user_ids.insert(login.to_ascii_lowercase(), id);
        id
    }

    /// A `simple-user` object for `login`.
    pub fn user_json(&mut self, login: &str) -> Value {
        let id = self.user_id(login);
        let base = self.base_url.clone();
        let mut user = example("issues/create-comment", 201)["user"].clone();
        rename_user(&mut user, login, id, &base);
        user
    }

    /// The full `repository` object of `repos/get` for a stored repository.
    pub fn repo_json(&mut self, key: &str) -> Value {
        let Some(repo) = self.repos.get(key).cloned() else {
            return Value::Null;
        };
        let full = format!("{}/{}", repo.owner, repo.name);
        let mut v = example("repos/get", 200);
        let base = self.base_url.clone();
        localize(&mut v, &base, Some(&full));
        v["id"] = json!(repo.id);
        v["name"] = json!(repo.name);
        v["full_name"] = json!(full);
        v["private"] = json!(false);
        let owner_id = self.user_id(&repo.owner);
        rename_user(&mut v["owner"], &repo.owner, owner_id, &base);
        for key in ["organization", "parent", "source", "template_repository"] {
            if let Some(map) = v.as_object_mut() {
                map.remove(key);
            }
        }
        complete("repos/get", 200, &mut v);
        v
    }
}

/// Rewrites a user object of GitHub's examples (`octocat`) for `login`.
pub(crate) fn rename_user(user: &mut Value, login: &str, id: u64, base: &str) {
    fn walk(v: &mut Value, login: &str) {
        match v {
            Value::String(s) if s.contains("octocat") => *s = s.replace("octocat", login),
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, login)),
            Value::Object(map) => map.values_mut().for_each(|v| walk(v, login)),
            _ => {}
        }
    }
    localize(user, base, None);
    walk(user, login);
    if user.is_object() {
        user["login"] = json!(login);
        user["id"] = json!(id);
    }
}
