//! Settings: loaded once at start-up, validated, then passed down explicitly.
//!
//! Layers, lowest first: built-in defaults, `hookdock.toml` (optional), `HOOKDOCK_*` environment
//! variables (`__` separates nested keys, e.g. `HOOKDOCK_QUEUE__WORKERS`), then command-line flags.
//! No other module reads the environment. Unknown keys are errors that name the key and where it
//! came from, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Environment variables with this prefix belong to the test suite, not to the service.
const TEST_ENV_PREFIX: &str = "HOOKDOCK_TEST_";

/// The default config file, read from the working directory when present.
pub const DEFAULT_CONFIG_FILE: &str = "hookdock.toml";

/// A configuration problem, reported before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(String),
    #[error("invalid setting `{key}`{}: {reason}", origin_note(.origin.as_deref()))]
    Invalid {
        key: String,
        /// Where the value came from (`from environment variable HOOKDOCK_LISTEN`), when it
        /// was not a default.
        origin: Option<String>,
        reason: String,
    },
    #[error("config file {path} cannot be read: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        origin: None,
        reason: reason.into(),
    }
}

fn origin_note(origin: Option<&str>) -> String {
    origin.map(|o| format!(" ({o})")).unwrap_or_default()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address the HTTP server binds (`HOOKDOCK_LISTEN`).
    pub listen: SocketAddr,
    /// `sqlite://path` (embedded default) or `postgres://…` (`HOOKDOCK_DATABASE_URL`).
    pub database_url: String,
    /// PostgreSQL: a query without an answer for this many seconds fails and its connection is
    /// closed (a network partition leaves a connection open and silent). Deliveries' writes
    /// give up sooner, in time to answer GitHub.
    pub database_timeout_secs: u64,
    /// Global webhook secret, used when no per-hook or per-repository secret exists.
    #[serde(default, deserialize_with = "optional_secret")]
    pub webhook_secret: Option<SecretString>,
    /// Secrets scoped to one hook, repository or organization. Several for one scope are all
    /// accepted (rotation).
    #[serde(default)]
    pub webhook_secrets: Vec<ScopedSecret>,
    /// Accept deliveries without `X-Hub-Signature-256`. Off unless the operator says so.
    pub allow_unsigned: bool,
    /// Bearer token for the JSON API; without it the API answers 401.
    #[serde(default, deserialize_with = "optional_secret")]
    pub admin_token: Option<SecretString>,
    /// Log filter in `tracing` syntax (`HOOKDOCK_LOG`), e.g. `info` or `hookdock=debug`.
    pub log: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Seconds running jobs and requests in flight get to finish after SIGTERM/Ctrl-C.
    pub shutdown_grace_secs: u64,
    /// A delivery's body must arrive within this many seconds of its headers (else 408): a
    /// stalled or trickling sender holds no request open for longer.
    pub read_timeout_secs: u64,
    /// A connection that brings no complete request head for this many seconds is closed: a
    /// keep-alive connection left idle, or a sender stalled in its headers. Keep it above the
    /// idle timeout of a proxy in front (60 s to 2 min for nginx, ALB, Caddy), so that the proxy
    /// gives up an idle connection before hookdock closes it under a delivery.
    pub idle_timeout_secs: u64,
    /// Most client connections open at once. At the limit hookdock accepts no more until one
    /// closes (new ones wait in the kernel's queue), so a flood of connections cannot use up
    /// the process's file descriptors, which the database and GitHub calls need too.
    pub max_connections: usize,
    /// The address GitHub reaches hookdock at (`HOOKDOCK_PUBLIC_URL`), e.g.
    /// `https://hooks.example.com`; installed webhooks point at it + `/api/v1/webhooks/github`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// GitHub's REST API (`HOOKDOCK_GITHUB_API_URL`); `https://HOST/api/v3` for Enterprise Server.
    pub github_api_url: String,
    /// Token hookdock acts with when no signed-in user's token applies
    /// (`HOOKDOCK_GITHUB_TOKEN`, else `GITHUB_TOKEN`).
    #[serde(default, deserialize_with = "optional_secret")]
    pub github_token: Option<SecretString>,
    /// Key sealing secrets at rest (`HOOKDOCK_SECRET_KEY`, 32 bytes as base64 or hex). Without
    /// it, an embedded (SQLite) install keeps a generated key in `secret.key` beside the database.
    #[serde(default, deserialize_with = "optional_secret")]
    pub secret_key: Option<SecretString>,
    /// Retired keys that still open old values until `hookdock rotate-key` reseals them.
    #[serde(default, deserialize_with = "secret_list")]
    pub secret_old_keys: Vec<SecretString>,
    /// OAuth app for signing in with GitHub (`HOOKDOCK_GITHUB_CLIENT_ID`).
    #[serde(default)]
    pub github_client_id: Option<String>,
    /// `HOOKDOCK_GITHUB_CLIENT_SECRET`.
    #[serde(default, deserialize_with = "optional_secret")]
    pub github_client_secret: Option<SecretString>,
    /// GitHub's web address for the OAuth flow; derived from `github_api_url` when unset
    /// (`https://github.com`, or `https://HOST` for Enterprise Server).
    #[serde(default)]
    pub github_web_url: Option<String>,
    pub github: GithubSettings,
    pub auth: AuthSettings,
    pub source_check: SourceCheckSettings,
    pub hooks: HookSettings,
    pub ingest: IngestSettings,
    pub queue: QueueSettings,
    pub retention: RetentionSettings,
    pub handlers: HandlerSettings,
    /// Server defaults for the automations (`[automations]`): the same keys as a repository's
    /// `.github/hookdock.yml`, which is merged over them.
    #[serde(default = "empty_table")]
    pub automations: serde_json::Value,
    /// The language model of the LLM reviewer (`HOOKDOCK_LLM_BASE_URL`, `HOOKDOCK_LLM_MODEL`,
    /// `HOOKDOCK_LLM_API_KEY`, …).
    pub llm: LlmSettings,
}

fn empty_table() -> serde_json::Value {
    serde_json::json!({})
}

/// An OpenAI-compatible chat-completions endpoint (OpenAI, Ollama, vLLM, LiteLLM).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSettings {
    /// e.g. `https://api.openai.com/v1` or `http://localhost:11434/v1`; unset disables the LLM
    /// reviewer (repositories asking for it get the rule reviewer and a note saying why).
    #[serde(default)]
    pub base_url: Option<String>,
    pub model: String,
    #[serde(default, deserialize_with = "optional_secret")]
    pub api_key: Option<SecretString>,
    pub timeout_secs: u64,
    /// Further attempts after a timeout, 429 or 5xx.
    pub max_retries: u32,
    /// Prompt bytes at most; files beyond are left out and the review says so.
    pub max_input_bytes: usize,
    /// Findings kept from one answer (the most severe first).
    pub max_findings: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedSecret {
    pub hook_id: Option<u64>,
    pub repository_id: Option<u64>,
    pub organization_id: Option<u64>,
    #[serde(deserialize_with = "secret")]
    pub secret: SecretString,
}

impl std::fmt::Debug for ScopedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopedSecret")
            .field("hook_id", &self.hook_id)
            .field("repository_id", &self.repository_id)
            .field("organization_id", &self.organization_id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubSettings {
    /// Seconds before a GitHub request is abandoned.
    pub timeout_secs: u64,
    /// Longest rate-limit wait taken inline; longer ones fail the call (and its job retries).
    pub max_rate_wait_secs: u64,
    /// Pause between two writes with one token (GitHub asks for about a second).
    pub write_interval_ms: u64,
}

/// Accepting deliveries only from GitHub's webhook addresses. Off by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceCheckSettings {
    pub enabled: bool,
    /// How often GitHub's ranges are read again from `GET /meta`.
    pub refresh_hours: u64,
    /// Header carrying the client address behind a proxy (e.g. `X-Forwarded-For`); read only
    /// on requests from `trusted_proxies`.
    #[serde(default)]
    pub forwarded_header: Option<String>,
    /// Addresses or CIDR ranges of the proxies in front of hookdock.
    #[serde(deserialize_with = "string_list")]
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// GitHub logins allowed to sign in (a list, or comma-separated in
    /// `HOOKDOCK_AUTH__ALLOWED_USERS`); nobody can sign in while it is empty.
    #[serde(deserialize_with = "string_list")]
    pub allowed_users: Vec<String>,
    /// How long a sign-in lasts.
    pub session_hours: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookSettings {
    /// Events installed webhooks subscribe to.
    #[serde(deserialize_with = "string_list")]
    pub events: Vec<String>,
    /// How long the previous secret stays valid after a rotation.
    pub rotation_grace_secs: u64,
    /// Rotate every hook's secret this often; 0 turns scheduled rotation off.
    pub rotation_interval_days: u64,
    /// How often hooks are checked on GitHub (deleted or disabled behind hookdock's back).
    pub check_interval_secs: u64,
    /// How often failed deliveries are looked for and redelivered; 0 turns the sweep off.
    pub sweep_interval_secs: u64,
    /// GitHub redelivers only this far back: 72 h on github.com, 168 h on Enterprise Server.
    /// 0 (the default) picks between the two from `github_api_url`.
    pub redelivery_window_hours: u64,
    /// How often managed secrets are reloaded from the database (changes made by other
    /// instances or by the CLI).
    pub reload_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    /// Most deliveries written in one transaction (group commit).
    pub max_batch: usize,
    /// zstd level for stored bodies (1 = fastest).
    pub zstd_level: i32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// Jobs run at once by this instance; 0 runs no worker (ingest only).
    pub workers: usize,
    /// How long a claimed job belongs to its worker before another may take it.
    pub lease_secs: u64,
    /// First retry delay; doubles per attempt up to `retry_cap_secs`, with jitter.
    pub retry_base_ms: u64,
    pub retry_cap_secs: u64,
    /// Attempts before a job is dead.
    pub max_attempts: u32,
    /// How often idle workers look for jobs written by other instances.
    pub poll_interval_ms: u64,
    /// A handler taking longer fails its attempt.
    pub job_timeout_secs: u64,
    /// Most jobs of one ordering key a worker takes at once, for the handlers whose work
    /// depends only on their event (activity, metrics, records): it runs them in order and
    /// records their results together. 1 takes every job alone.
    pub chain_max: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Done and ignored events older than this are purged; 0 keeps everything.
    pub done_days: u32,
    pub interval_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerSettings {
    pub activity: ActivitySettings,
    pub metrics: MetricsSettings,
    /// Review, labels, slash commands and config simulation; they run only with a GitHub token.
    pub automations: AutomationSettings,
    pub records: RecordsSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutomationSettings {
    pub enabled: bool,
}

/// The repository records handler (`handlers.records`): pushes, releases, CI runs,
/// deployment statuses, stars, forks and watches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsSettings {
    pub enabled: bool,
}

/// The pull request metrics handler (`handlers.metrics`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    pub enabled: bool,
    /// A pull request whose head branch starts with one of these is a hotfix.
    pub hotfix_branch_prefixes: Vec<String>,
    /// A pull request with one of these labels (case-insensitive) is a hotfix.
    pub hotfix_labels: Vec<String>,
    /// Whether a bot's review or comment can be a pull request's first review.
    pub count_bot_reviews: bool,
    /// Whether, with a GitHub token, each pull request's commits are read from GitHub's API
    /// after its `opened`, `synchronize`, `reopened` and `closed` webhooks (its first commit).
    pub fetch_commits: bool,
    /// Default working-hours calendar: IANA time zone, e.g. `Europe/Berlin`.
    pub timezone: String,
    /// `mon` … `sun`.
    pub working_days: Vec<String>,
    /// Local `HH:MM-HH:MM`, e.g. `09:00-17:00`.
    pub working_hours: String,
    /// Local dates without working hours, `YYYY-MM-DD`.
    pub holidays: Vec<String>,
    /// `[[handlers.metrics.teams]]`.
    pub teams: Vec<TeamSettings>,
}

/// One team of `handlers.metrics.teams`; calendar keys left out take the global ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamSettings {
    pub name: String,
    /// GitHub logins, matched case-insensitively (and by user id once seen).
    pub members: Vec<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub working_days: Option<Vec<String>>,
    #[serde(default)]
    pub working_hours: Option<String>,
    #[serde(default)]
    pub holidays: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivitySettings {
    pub enabled: bool,
    /// Event names it subscribes to; `*` is every event.
    pub events: Vec<String>,
}

/// `HOOKDOCK_*` variables as a figment layer. Reads the given list rather than the process
/// environment so that tests and the real process go through the same code.
struct EnvVars<'a>(&'a [(String, String)]);

impl Provider for EnvVars<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        // GitHub's conventional variable, used when hookdock's own is not set.
        if let Some((_, token)) = self.0.iter().find(|(k, _)| k == "GITHUB_TOKEN")
            && !self.0.iter().any(|(k, _)| k == "HOOKDOCK_GITHUB_TOKEN")
        {
            root.insert("github_token".into(), Value::from(token.clone()));
        }
        for (key, raw) in self.0 {
            let Some(path) = env_setting_path(key) else {
                continue;
            };
            let value: Value = raw.parse().unwrap_or_else(|_| Value::from(raw.clone()));
            insert_path(&mut root, &path, value);
        }
        let mut map = Map::new();
        map.insert(Profile::Default, root);
        Ok(map)
    }
}

/// Values given as command-line flags, named as such in errors.
struct Flags<'a>(&'a serde_json::Map<String, serde_json::Value>);

/// What errors call the flags' layer.
const FLAGS_SOURCE: &str = "command-line flag";

impl Provider for Flags<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::named(FLAGS_SOURCE)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(serde_json::Value::Object(self.0.clone())).data()
    }
}

/// The setting an environment variable names (`HOOKDOCK_QUEUE__WORKERS` → `queue.workers`), if
/// it is one of hookdock's.
fn env_setting_path(key: &str) -> Option<Vec<String>> {
    let name = key.strip_prefix("HOOKDOCK_")?;
    if key.starts_with(TEST_ENV_PREFIX) || name.is_empty() {
        return None;
    }
    let path: Vec<String> = name.split("__").map(|p| p.to_lowercase()).collect();
    // The conventional names HOOKDOCK_LLM_BASE_URL, _MODEL, _API_KEY belong to `llm`.
    if let [single] = path.as_slice()
        && let Some(rest) = single.strip_prefix("llm_")
    {
        return Some(vec!["llm".to_owned(), rest.to_owned()]);
    }
    Some(path)
}

fn insert_path(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

/// Secrets may look like numbers (`HOOKDOCK_WEBHOOK_SECRET=123456`); accept them as text.
#[derive(Deserialize)]
#[serde(untagged)]
enum SecretText {
    S(String),
    U(u64),
    I(i64),
    F(f64),
    B(bool),
}

impl From<SecretText> for SecretString {
    fn from(t: SecretText) -> SecretString {
        SecretString::from(match t {
            SecretText::S(s) => s,
            SecretText::U(n) => n.to_string(),
            SecretText::I(n) => n.to_string(),
            SecretText::F(n) => n.to_string(),
            SecretText::B(b) => b.to_string(),
        })
    }
}

fn secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    SecretText::deserialize(d).map(SecretString::from)
}

fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(secret_list(d)?
        .into_iter()
        .map(|s| s.expose_secret().to_owned())
        .collect())
}

fn secret_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SecretString>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<SecretText>),
        One(String),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::Many(list) => list.into_iter().map(SecretString::from).collect(),
        // From the environment: comma-separated.
        OneOrMany::One(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| SecretString::from(s.to_owned()))
            .collect(),
    })
}

fn optional_secret<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SecretString>, D::Error> {
    Ok(Option::<SecretText>::deserialize(d)?.map(SecretString::from))
}

/// Built-in defaults, the lowest layer.
fn defaults() -> serde_json::Value {
    serde_json::json!({
        "listen": "127.0.0.1:3000",
        "database_url": "sqlite://hookdock-data/hookdock.db",
        "database_timeout_secs": 30,
        "allow_unsigned": false,
        "log": "info",
        "log_format": "text",
        "shutdown_grace_secs": 20,
        "read_timeout_secs": 30,
        "idle_timeout_secs": 300,
        "max_connections": 512,
        "github_api_url": "https://api.github.com",
        "github": { "timeout_secs": 10, "max_rate_wait_secs": 900, "write_interval_ms": 1000 },
        "auth": { "allowed_users": [], "session_hours": 168 },
        "source_check": { "enabled": false, "refresh_hours": 24, "trusted_proxies": [] },
        "hooks": {
            "events": [
                "pull_request", "pull_request_review", "pull_request_review_comment", "issues",
                "issue_comment", "push",
                "release", "workflow_run", "check_run", "deployment_status", "star", "fork", "watch"
            ],
            "rotation_grace_secs": 900,
            "rotation_interval_days": 90,
            "check_interval_secs": 3600,
            "sweep_interval_secs": 300,
            "redelivery_window_hours": 0,
            "reload_secs": 10
        },
        "ingest": { "max_batch": 256, "zstd_level": 1 },
        "queue": {
            "workers": 8,
            "lease_secs": 60,
            "retry_base_ms": 1000,
            "retry_cap_secs": 3600,
            "max_attempts": 8,
            "poll_interval_ms": 1000,
            "job_timeout_secs": 30,
            "chain_max": 16
        },
        "retention": { "done_days": 30, "interval_secs": 3600 },
        "handlers": {
            "activity": { "enabled": true, "events": ["*"] },
            "metrics": {
                "enabled": true,
                "hotfix_branch_prefixes": ["hotfix/", "hotfix-"],
                "hotfix_labels": ["hotfix"],
                "count_bot_reviews": false,
                "fetch_commits": true,
                "timezone": "UTC",
                "working_days": ["mon", "tue", "wed", "thu", "fri"],
                "working_hours": "09:00-17:00",
                "holidays": [],
                "teams": []
            },
            "automations": { "enabled": true },
            "records": { "enabled": true }
        },
        "llm": {
            "model": "gpt-4o-mini",
            "timeout_secs": 60,
            "max_retries": 2,
            "max_input_bytes": 120000,
            "max_findings": 50
        }
    })
}

/// Where settings come from; tests build one by hand instead of touching the process.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// Explicit config file (must exist). Without it `hookdock.toml` is read if present.
    pub file: Option<PathBuf>,
    /// Environment variables to consider, usually `std::env::vars()`.
    pub env: Vec<(String, String)>,
    /// Values given as flags, highest priority; keys as in the file.
    pub overrides: serde_json::Map<String, serde_json::Value>,
}

impl Sources {
    /// The sources of a real process: its environment and `hookdock.toml` in the working dir.
    pub fn from_process(file: Option<PathBuf>) -> Self {
        Sources {
            file,
            env: std::env::vars().collect(),
            overrides: Default::default(),
        }
    }

    /// Sets a value as a flag would; `key` may be dotted (`queue.workers`).
    pub fn set(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().unwrap_or(key);
        let mut map = &mut self.overrides;
        for part in parts {
            let entry = map
                .entry(part.to_owned())
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if !entry.is_object() {
                *entry = serde_json::Value::Object(Default::default());
            }
            match entry {
                serde_json::Value::Object(inner) => map = inner,
                _ => unreachable!("just made an object"),
            }
        }
        map.insert(last.to_owned(), value.into());
        self
    }
}

impl Settings {
    /// Loads and validates settings from all layers.
    pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(defaults()));
        match &sources.file {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::File {
                        path: path.clone(),
                        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                    });
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE));
            }
            None => {}
        }
        figment = figment.merge(EnvVars(&sources.env));
        figment = figment.merge(Flags(&sources.overrides));
        let settings: Settings = figment
            .extract()
            .map_err(|e| describe_figment_error(e, &sources.env))?;
        settings.validate().map_err(|e| match e {
            ConfigError::Invalid { key, reason, .. } => {
                // An array item's value is told by its array's (figment finds dict keys only).
                let path: Vec<String> = key
                    .split('[')
                    .next()
                    .unwrap_or_default()
                    .split('.')
                    .map(str::to_owned)
                    .collect();
                let meta = figment.find_metadata(&path.join("."));
                ConfigError::Invalid {
                    origin: value_origin(&path, meta, &sources.env),
                    key,
                    reason,
                }
            }
            other => other,
        })?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let url = self.database_url.as_str();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database_url",
                "must start with sqlite: (embedded) or postgres:// (shared)",
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return Err(invalid(
                "log",
                format!("is not a log filter ({e}); use e.g. `info` or `hookdock=debug,warn`"),
            ));
        }
        if let Some(url) = &self.public_url
            && !is_http_url(url)
        {
            return Err(invalid(
                "public_url",
                "must be the http(s) address GitHub reaches hookdock at, e.g. https://hooks.example.com",
            ));
        }
        if !is_http_url(&self.github_api_url) {
            return Err(invalid(
                "github_api_url",
                "must be an http(s) URL: https://api.github.com, or https://HOST/api/v3 for GitHub Enterprise Server",
            ));
        }
        if let Some(secret) = &self.webhook_secret
            && secret.expose_secret().is_empty()
        {
            return Err(invalid(
                "webhook_secret",
                "is empty; remove it or set a real secret",
            ));
        }
        for (i, scoped) in self.webhook_secrets.iter().enumerate() {
            let scopes = [
                scoped.hook_id.is_some(),
                scoped.repository_id.is_some(),
                scoped.organization_id.is_some(),
            ];
            if scopes.iter().filter(|s| **s).count() != 1 {
                return Err(invalid(
                    &format!("webhook_secrets[{i}]"),
                    "needs exactly one of hook_id, repository_id, organization_id",
                ));
            }
            if scoped.secret.expose_secret().is_empty() {
                return Err(invalid(&format!("webhook_secrets[{i}].secret"), "is empty"));
            }
        }
        if let Some(token) = &self.admin_token
            && token.expose_secret().len() < 16
        {
            return Err(invalid(
                "admin_token",
                "must be at least 16 characters (use a random token)",
            ));
        }
        for (i, proxy) in self.source_check.trusted_proxies.iter().enumerate() {
            if crate::ingest::parse_net(proxy).is_none() {
                return Err(invalid(
                    &format!("source_check.trusted_proxies[{i}]"),
                    format!("{proxy:?} is not an IP address or CIDR range (e.g. 10.0.0.0/8)"),
                ));
            }
        }
        if let Some(header) = &self.source_check.forwarded_header {
            if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(invalid(
                    "source_check.forwarded_header",
                    format!("{header:?} is not a header name (e.g. X-Forwarded-For)"),
                ));
            }
            if self.source_check.trusted_proxies.is_empty() {
                return Err(invalid(
                    "source_check.forwarded_header",
                    "is read only on requests from source_check.trusted_proxies, which is empty; list your proxies there",
                ));
            }
        }
        if self.source_check.refresh_hours == 0 {
            return Err(invalid("source_check.refresh_hours", "must be at least 1"));
        }
        if let Some(key) = &self.secret_key {
            crate::crypto::KeyRing::new(key, &self.secret_old_keys)
                .map_err(|e| invalid("secret_key", e.to_string()))?;
        }
        crate::handlers::repo_config::ConfigDefaults::new(&self.automations).map_err(|e| {
            invalid(
                &format!(
                    "automations{}",
                    e.key.map(|k| format!(".{k}")).unwrap_or_default()
                ),
                e.message,
            )
        })?;
        if let Some(url) = &self.llm.base_url
            && !is_http_url(url)
        {
            return Err(invalid(
                "llm.base_url",
                format!("`{url}` is not an http(s) URL (e.g. http://localhost:11434/v1)"),
            ));
        }
        if self.llm.timeout_secs == 0 {
            return Err(invalid("llm.timeout_secs", "must be at least 1"));
        }
        let metrics = &self.handlers.metrics;
        for (i, prefix) in metrics.hotfix_branch_prefixes.iter().enumerate() {
            if prefix.trim().is_empty() {
                return Err(invalid(
                    &format!("handlers.metrics.hotfix_branch_prefixes[{i}]"),
                    "is empty, which would make every pull request a hotfix",
                ));
            }
        }
        for (i, label) in metrics.hotfix_labels.iter().enumerate() {
            if label.trim().is_empty() {
                return Err(invalid(
                    &format!("handlers.metrics.hotfix_labels[{i}]"),
                    "is empty; give a label name",
                ));
            }
        }
        crate::metrics::Teams::from_settings(metrics).map_err(|e| invalid(&e.key, e.reason))?;
        if self.ingest.max_batch == 0 || self.ingest.max_batch > 1024 {
            return Err(invalid("ingest.max_batch", "must be between 1 and 1024"));
        }
        if !(1..=19).contains(&self.ingest.zstd_level) {
            return Err(invalid("ingest.zstd_level", "must be between 1 and 19"));
        }
        if !(1..=3600).contains(&self.database_timeout_secs) {
            return Err(invalid(
                "database_timeout_secs",
                "must be between 1 and 3600 seconds",
            ));
        }
        if !(1..=3600).contains(&self.read_timeout_secs) {
            return Err(invalid(
                "read_timeout_secs",
                "must be between 1 and 3600 seconds",
            ));
        }
        if !(1..=86_400).contains(&self.idle_timeout_secs) {
            return Err(invalid(
                "idle_timeout_secs",
                "must be between 1 and 86400 seconds",
            ));
        }
        if !(1..=65_536).contains(&self.max_connections) {
            return Err(invalid("max_connections", "must be between 1 and 65536"));
        }
        if self.queue.lease_secs < 2 {
            return Err(invalid("queue.lease_secs", "must be at least 2"));
        }
        if self.queue.max_attempts == 0 {
            return Err(invalid("queue.max_attempts", "must be at least 1"));
        }
        if self.queue.retry_base_ms == 0 {
            return Err(invalid("queue.retry_base_ms", "must be at least 1"));
        }
        if self.queue.poll_interval_ms == 0 {
            return Err(invalid("queue.poll_interval_ms", "must be at least 1"));
        }
        if self.queue.job_timeout_secs == 0 {
            return Err(invalid("queue.job_timeout_secs", "must be at least 1"));
        }
        if self.queue.chain_max == 0 {
            return Err(invalid("queue.chain_max", "must be at least 1"));
        }
        if self.retention.interval_secs == 0 {
            return Err(invalid("retention.interval_secs", "must be at least 1"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log)
            .map_err(|e| invalid("log", format!("is not a valid log filter: {e}")))?;
        Ok(())
    }

    /// GitHub's web address (OAuth pages), from `github_web_url` or `github_api_url`.
    pub fn github_web_url(&self) -> String {
        if let Some(url) = &self.github_web_url {
            return url.trim_end_matches('/').to_owned();
        }
        let api = self.github_api_url.trim_end_matches('/');
        if api == "https://api.github.com" {
            "https://github.com".to_owned()
        } else {
            api.strip_suffix("/api/v3").unwrap_or(api).to_owned()
        }
    }

    /// How far back GitHub redelivers: `hooks.redelivery_window_hours`, or 72 h on github.com
    /// and 168 h on Enterprise Server (`…/api/v3`).
    pub fn redelivery_window_hours(&self) -> u64 {
        match self.hooks.redelivery_window_hours {
            0 if self
                .github_api_url
                .trim_end_matches('/')
                .ends_with("/api/v3") =>
            {
                168
            }
            0 => 72,
            hours => hours,
        }
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    pub fn database_timeout(&self) -> Duration {
        Duration::from_secs(self.database_timeout_secs)
    }

    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.read_timeout_secs)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// True when no delivery could be verified: no secret anywhere and unsigned not allowed.
    pub fn has_no_webhook_secret(&self) -> bool {
        self.webhook_secret.is_none() && self.webhook_secrets.is_empty()
    }
}

/// Turns figment's error into one line per problem, naming the setting as README writes it
/// and where its value came from: the file, or the exact environment variable.
fn describe_figment_error(error: figment::Error, env: &[(String, String)]) -> ConfigError {
    let mut lines = Vec::new();
    for e in error {
        // figment's path ends with the offending key, for unknown keys too.
        let name = setting_name(&e.path);
        let source = setting_source(&e, env);
        lines.push(match &e.kind {
            figment::error::Kind::UnknownField(..) => format!(
                "unknown setting `{name}` ({source}); see README for the settings hookdock knows"
            ),
            kind if name.is_empty() => format!("invalid settings ({source}): {kind}"),
            kind => ConfigError::Invalid {
                key: name,
                origin: Some(source),
                reason: kind.to_string(),
            }
            .to_string(),
        });
    }
    ConfigError::Load(lines.join("; "))
}

/// `queue.workers`, `webhook_secrets[0].secret`.
fn setting_name(path: &[String]) -> String {
    let mut name = String::new();
    for part in path {
        if part.parse::<usize>().is_ok() {
            name.push_str(&format!("[{part}]"));
        } else {
            if !name.is_empty() {
                name.push('.');
            }
            name.push_str(part);
        }
    }
    name
}

/// Where the value behind an error came from, as precisely as can be told.
fn setting_source(e: &figment::Error, env: &[(String, String)]) -> String {
    value_origin(&e.path, e.metadata.as_ref(), env).unwrap_or_else(|| match &e.metadata {
        Some(meta) => format!("from {}", meta.name),
        None => format!("in {DEFAULT_CONFIG_FILE} or a HOOKDOCK_ environment variable"),
    })
}

/// Where the value at `path` came from: the file, the command-line flag, or the exact
/// environment variable; `None` when that cannot be told (a default).
fn value_origin(
    path: &[String],
    meta: Option<&figment::Metadata>,
    env: &[(String, String)],
) -> Option<String> {
    // The variable holding the value, or the table or array around it
    // (`HOOKDOCK_WEBHOOK_SECRETS` for `webhook_secrets[0].repo`).
    let variable = || {
        env.iter()
            .filter_map(|(key, _)| Some((key, env_setting_path(key)?)))
            .filter(|(_, p)| path.starts_with(p))
            .max_by_key(|(_, p)| p.len())
            .map(|(key, _)| format!("from environment variable {key}"))
    };
    match meta {
        Some(meta) => match &meta.source {
            Some(figment::Source::File(file)) => Some(format!("in {}", file.display())),
            _ if meta.name == FLAGS_SOURCE => Some(match path {
                [key] => format!("from command-line flag --{}", key.replace('_', "-")),
                _ => format!("from a {FLAGS_SOURCE}"),
            }),
            _ => variable(),
        },
        None => variable(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every URL setting takes an absolute http(s) URL with a host, and nothing less.
    #[test]
    fn http_urls_need_a_scheme_and_a_host() {
        for good in [
            "https://api.github.com",
            "https://ghe.example.com/api/v3",
            "http://localhost:11434/v1",
            "http://127.0.0.1:3000/api/v1/webhooks/github",
        ] {
            assert!(is_http_url(good), "{good}");
        }
        for bad in [
            "",
            "127.0.0.1:3000",
            "ftp://host/x",
            "http://",
            "api.github.com",
        ] {
            assert!(!is_http_url(bad), "{bad}");
        }
        let refused = Settings::load(&no_file(&[("HOOKDOCK_GITHUB_API_URL", "https://")]))
            .expect_err("a URL without a host");
        assert!(
            refused.to_string().contains("`github_api_url`"),
            "{refused}"
        );
    }

    fn env(pairs: &[(&str, &str)]) -> Sources {
        Sources {
            file: Some(PathBuf::from("/nonexistent-hookdock-test-dir/none.toml")),
            env: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            overrides: Default::default(),
        }
    }

    fn no_file(pairs: &[(&str, &str)]) -> Sources {
        Sources {
            file: None,
            ..env(pairs)
        }
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let s = Settings::load(&no_file(&[])).expect("defaults load");
        assert_eq!(s.listen.to_string(), "127.0.0.1:3000");
        assert_eq!(s.database_url, "sqlite://hookdock-data/hookdock.db");
        assert!(!s.allow_unsigned);
        assert!(s.admin_token.is_none());
        assert_eq!(s.retention.done_days, 30);
    }

    #[test]
    fn env_overrides_defaults_and_flags_override_env() {
        let sources = no_file(&[
            ("HOOKDOCK_LISTEN", "0.0.0.0:8080"),
            ("HOOKDOCK_QUEUE__WORKERS", "3"),
            ("HOOKDOCK_WEBHOOK_SECRET", "s3cret"),
            ("HOOKDOCK_TEST_DATABASE_URL", "postgres://ignored"),
        ])
        .set("listen", "127.0.0.1:9999");
        let s = Settings::load(&sources).expect("loads");
        assert_eq!(s.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(s.queue.workers, 3);
        assert_eq!(
            s.webhook_secret
                .as_ref()
                .map(|s| s.expose_secret().to_owned()),
            Some("s3cret".to_owned())
        );
    }

    #[test]
    fn llm_variables_and_automation_defaults() {
        let s = Settings::load(&no_file(&[
            ("HOOKDOCK_LLM_BASE_URL", "http://localhost:11434/v1"),
            ("HOOKDOCK_LLM_MODEL", "qwen2.5-coder"),
            ("HOOKDOCK_LLM_API_KEY", "sk-123"),
            ("HOOKDOCK_LLM__TIMEOUT_SECS", "5"),
        ]))
        .expect("loads");
        assert_eq!(s.llm.base_url.as_deref(), Some("http://localhost:11434/v1"));
        assert_eq!(s.llm.model, "qwen2.5-coder");
        assert_eq!(
            s.llm.api_key.as_ref().map(|k| k.expose_secret().to_owned()),
            Some("sk-123".to_owned())
        );
        assert_eq!(s.llm.timeout_secs, 5);

        let e = Settings::load(&no_file(&[]).set("llm.base_url", "localhost:11434"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`llm.base_url`"), "{e}");

        let e = Settings::load(&no_file(&[]).set(
            "automations",
            serde_json::json!({"review": {"max_comments": "x"}}),
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("`automations"), "{e}");
        let e = Settings::load(&no_file(&[]).set("automations", serde_json::json!({"reveiw": {}})))
            .unwrap_err()
            .to_string();
        assert!(e.contains("reveiw"), "{e}");
        let ok = Settings::load(&no_file(&[]).set(
            "automations",
            serde_json::json!({"review": {"max_comments": 3}}),
        ))
        .expect("valid defaults load");
        assert_eq!(ok.automations["review"]["max_comments"], 3);
    }

    #[test]
    fn dotted_overrides_merge_with_defaults() {
        let s = Settings::load(
            &no_file(&[])
                .set("queue.workers", 0)
                .set("queue.lease_secs", 5)
                .set("handlers.activity.events", serde_json::json!(["push"])),
        )
        .expect("loads");
        assert_eq!((s.queue.workers, s.queue.lease_secs), (0, 5));
        assert_eq!(
            s.queue.max_attempts, 8,
            "untouched keys keep their defaults"
        );
        assert_eq!(s.handlers.activity.events, ["push"]);
    }

    #[test]
    fn metrics_settings_default_and_validate() {
        let s = Settings::load(&no_file(&[])).expect("loads");
        let m = &s.handlers.metrics;
        assert!(m.enabled && !m.count_bot_reviews && m.fetch_commits);
        assert_eq!(m.hotfix_branch_prefixes, ["hotfix/", "hotfix-"]);
        assert_eq!(m.hotfix_labels, ["hotfix"]);
        let err = Settings::load(&no_file(&[]).set(
            "handlers.metrics.hotfix_branch_prefixes",
            serde_json::json!(["x/", ""]),
        ))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("handlers.metrics.hotfix_branch_prefixes[1]"),
            "{err}"
        );
        let err =
            Settings::load(&no_file(&[]).set("handlers.metrics.count_bots", true)).unwrap_err();
        assert!(err.to_string().contains("count_bots"), "{err}");
        assert_eq!(m.timezone, "UTC");
        assert_eq!(m.working_hours, "09:00-17:00");
        assert!(m.teams.is_empty());
        for (key, value, named) in [
            (
                "handlers.metrics.timezone",
                serde_json::json!("Europe/Atlantis"),
                "handlers.metrics.timezone",
            ),
            (
                "handlers.metrics.working_hours",
                serde_json::json!("9 to 5"),
                "handlers.metrics.working_hours",
            ),
            (
                "handlers.metrics.working_days",
                serde_json::json!(["mon", "funday"]),
                "handlers.metrics.working_days[1]",
            ),
            (
                "handlers.metrics.holidays",
                serde_json::json!(["25.12.2026"]),
                "handlers.metrics.holidays[0]",
            ),
            (
                "handlers.metrics.teams",
                serde_json::json!([{"name": "core", "members": ["ann"], "timezone": "Nowhere/Else"}]),
                "handlers.metrics.teams[0].timezone",
            ),
            (
                "handlers.metrics.teams",
                serde_json::json!([{"name": "a", "members": ["x"]}, {"name": "A", "members": ["y"]}]),
                "handlers.metrics.teams[1].name",
            ),
            (
                "handlers.metrics.teams",
                serde_json::json!([{"name": "a", "members": []}]),
                "handlers.metrics.teams[0].members",
            ),
        ] {
            let err = Settings::load(&no_file(&[]).set(key, value)).unwrap_err();
            assert!(
                err.to_string().contains(&format!("`{named}`")),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn numeric_looking_secret_is_text() {
        let s = Settings::load(&no_file(&[("HOOKDOCK_WEBHOOK_SECRET", "123456")])).expect("loads");
        assert_eq!(
            s.webhook_secret
                .map(|s| s.expose_secret().to_owned())
                .as_deref(),
            Some("123456")
        );
    }

    fn load_error(sources: &Sources) -> String {
        match Settings::load(sources) {
            Ok(_) => panic!("{sources:?} loaded"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn unknown_env_setting_is_named_with_its_variable() {
        for (variable, setting) in [
            ("HOOKDOCK_LISTNE", "listne"),
            ("HOOKDOCK_QUEUE__WORKERZ", "queue.workerz"),
            ("HOOKDOCK_LLM_MODLE", "llm.modle"),
        ] {
            assert_eq!(
                load_error(&no_file(&[(variable, "x")])),
                format!(
                    "unknown setting `{setting}` (from environment variable {variable}); \
                     see README for the settings hookdock knows"
                )
            );
        }
    }

    #[test]
    fn invalid_flag_and_variable_are_named() {
        assert_eq!(
            load_error(&no_file(&[]).set("listen", "nonsense")),
            "invalid setting `listen` (from command-line flag --listen): invalid socket address syntax"
        );
        assert_eq!(
            load_error(&no_file(&[("HOOKDOCK_LISTEN", "nonsense")])),
            "invalid setting `listen` (from environment variable HOOKDOCK_LISTEN): invalid socket address syntax"
        );
        assert_eq!(
            load_error(&no_file(&[("HOOKDOCK_QUEUE__WORKERS", "many")])),
            "invalid setting `queue.workers` (from environment variable HOOKDOCK_QUEUE__WORKERS): \
             invalid type: found string \"many\", expected usize"
        );
    }

    /// Values that parse but fail validation name their origin like the parse errors above.
    #[test]
    fn refused_value_is_named_with_where_it_came_from() {
        let url_rule = "must start with sqlite: (embedded) or postgres:// (shared)";
        for (sources, expected) in [
            (
                no_file(&[("HOOKDOCK_DATABASE_URL", "mysql://x")]),
                format!(
                    "invalid setting `database_url` (from environment variable HOOKDOCK_DATABASE_URL): {url_rule}"
                ),
            ),
            (
                no_file(&[]).set("database_url", "mysql://x"),
                format!(
                    "invalid setting `database_url` (from command-line flag --database-url): {url_rule}"
                ),
            ),
            (
                no_file(&[("HOOKDOCK_ADMIN_TOKEN", "short")]),
                "invalid setting `admin_token` (from environment variable HOOKDOCK_ADMIN_TOKEN): \
                 must be at least 16 characters (use a random token)"
                    .to_owned(),
            ),
            (
                no_file(&[("HOOKDOCK_QUEUE__CHAIN_MAX", "0")]),
                "invalid setting `queue.chain_max` (from environment variable \
                 HOOKDOCK_QUEUE__CHAIN_MAX): must be at least 1"
                    .to_owned(),
            ),
            (
                no_file(&[("HOOKDOCK_DATABASE_TIMEOUT_SECS", "0")]),
                "invalid setting `database_timeout_secs` (from environment variable \
                 HOOKDOCK_DATABASE_TIMEOUT_SECS): must be between 1 and 3600 seconds"
                    .to_owned(),
            ),
            (
                no_file(&[("HOOKDOCK_READ_TIMEOUT_SECS", "0")]),
                "invalid setting `read_timeout_secs` (from environment variable \
                 HOOKDOCK_READ_TIMEOUT_SECS): must be between 1 and 3600 seconds"
                    .to_owned(),
            ),
            (
                no_file(&[("HOOKDOCK_IDLE_TIMEOUT_SECS", "0")]),
                "invalid setting `idle_timeout_secs` (from environment variable \
                 HOOKDOCK_IDLE_TIMEOUT_SECS): must be between 1 and 86400 seconds"
                    .to_owned(),
            ),
            (
                no_file(&[("HOOKDOCK_MAX_CONNECTIONS", "0")]),
                "invalid setting `max_connections` (from environment variable \
                 HOOKDOCK_MAX_CONNECTIONS): must be between 1 and 65536"
                    .to_owned(),
            ),
            // A value inside a table or array given whole is told by that variable.
            (
                no_file(&[("HOOKDOCK_QUEUE", "{chain_max = 0}")]),
                "invalid setting `queue.chain_max` (from environment variable HOOKDOCK_QUEUE): \
                 must be at least 1"
                    .to_owned(),
            ),
            (
                no_file(&[(
                    "HOOKDOCK_WEBHOOK_SECRETS",
                    "[{repository_id = 5, secret = \"\"}]",
                )]),
                "invalid setting `webhook_secrets[0].secret` (from environment variable \
                 HOOKDOCK_WEBHOOK_SECRETS): is empty"
                    .to_owned(),
            ),
            (
                no_file(&[(
                    "HOOKDOCK_WEBHOOK_SECRETS",
                    "[{repository_id = 5, secret = \"a\", repo = 1}]",
                )]),
                "unknown setting `webhook_secrets[0].repo` (from environment variable \
                 HOOKDOCK_WEBHOOK_SECRETS); see README for the settings hookdock knows"
                    .to_owned(),
            ),
        ] {
            assert_eq!(load_error(&sources), expected, "{sources:?}");
        }
        let log = load_error(&no_file(&[("HOOKDOCK_LOG", "hookdock=loud")]));
        assert!(
            log.starts_with(
                "invalid setting `log` (from environment variable HOOKDOCK_LOG): is not a log filter"
            ),
            "{log}"
        );
    }

    #[test]
    fn missing_explicit_file_is_an_error_naming_it() {
        let err = Settings::load(&env(&[])).unwrap_err();
        assert!(err.to_string().contains("none.toml"), "{err}");
    }

    #[test]
    fn file_layer_with_scoped_secrets_and_unknown_key() {
        let dir = std::env::temp_dir().join(format!("hookdock-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hookdock.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:4000\"\n[[webhook_secrets]]\nrepository_id = 42\nsecret = \"a\"\n",
        )
        .unwrap();
        let mut sources = env(&[("HOOKDOCK_LISTEN", "127.0.0.1:5000")]);
        sources.file = Some(path.clone());
        let s = Settings::load(&sources).expect("loads");
        assert_eq!(s.listen.port(), 5000, "env beats file");
        assert_eq!(s.webhook_secrets[0].repository_id, Some(42));
        assert!(!format!("{:?}", s.webhook_secrets).contains("\"a\""));

        std::fs::write(&path, "[queue]\nworkerz = 2\n").unwrap();
        assert_eq!(
            load_error(&sources),
            format!(
                "unknown setting `queue.workerz` (in {}); see README for the settings hookdock knows",
                path.display()
            )
        );
        std::fs::write(
            &path,
            "[[webhook_secrets]]\nrepository_id = 4\nsecret = \"a\"\nbogus = 1\n",
        )
        .unwrap();
        assert_eq!(
            load_error(&sources),
            format!(
                "unknown setting `webhook_secrets[0].bogus` (in {}); see README for the settings hookdock knows",
                path.display()
            )
        );
        std::fs::write(&path, "[queue]\nworkers = \"x\"\n").unwrap();
        assert_eq!(
            load_error(&sources),
            format!(
                "invalid setting `queue.workers` (in {}): invalid type: found string \"x\", expected usize",
                path.display()
            )
        );

        std::fs::write(&path, "[[webhook_secrets]]\nsecret = \"a\"\n").unwrap();
        let err = Settings::load(&sources).unwrap_err().to_string();
        assert!(err.contains("webhook_secrets[0]"), "{err}");
        std::fs::write(
            &path,
            "admin_token = \"short\"\n[[webhook_secrets]]\nrepository_id = 4\nsecret = \"a\"\n",
        )
        .unwrap();
        assert_eq!(
            load_error(&sources),
            format!(
                "invalid setting `admin_token` (in {}): must be at least 16 characters (use a random token)",
                path.display()
            )
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// An absolute http(s) URL with a host: what every URL setting and `hookdock send --url` need.
pub fn is_http_url(text: &str) -> bool {
    reqwest::Url::parse(text)
        .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
}

/// Parses a span such as `90s`, `15m`, `24h` or `7d` (a bare number is seconds).
pub fn parse_span(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a span; use e.g. 90s, 15m, 24h or 7d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit; use s, m, h or d (e.g. 24h)"
            ));
        }
    };
    n.checked_mul(secs)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod span_tests {
    use super::parse_span;
    use std::time::Duration;

    #[test]
    fn spans_parse_with_units_and_name_what_is_wrong() {
        assert_eq!(parse_span("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_span("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_span("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_span("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_span("1w").unwrap_err().contains("unknown unit"));
        assert!(parse_span("h").unwrap_err().contains("not a span"));
        assert!(parse_span("99999999999999999999d").is_err());
    }
}
