//! The HTTP layer under every GitHub call: authentication, rate limits, conditional requests,
//! one mutating request at a time per token, and typed errors.
//!
//! Built on reqwest rather than octocrab: hookdock needs to see and control every request
//! (waiting out secondary rate limits on an injectable clock, serving 304s from its own ETag
//! cache, serialising writes per token, refusing to send a token to a host other than the
//! configured API), which octocrab's typed builders hide.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::error::GithubError;
use crate::clock::Clock;

/// How to reach GitHub and how patient to be with it.
#[derive(Debug, Clone)]
pub struct GithubConfig {
    /// `https://api.github.com`, or `https://HOST/api/v3` for GitHub Enterprise Server.
    pub api_url: String,
    pub timeout: Duration,
    /// Longest rate-limit wait taken inline; beyond it the call fails with `RateLimited`.
    pub max_rate_wait: Duration,
    /// Pause between two mutating requests with one token (GitHub asks for about a second).
    pub write_interval: Duration,
    /// Attempts after a rate limit or (for reads) a 5xx.
    pub max_retries: u32,
}

impl Default for GithubConfig {
    fn default() -> GithubConfig {
        GithubConfig {
            api_url: "https://api.github.com".to_owned(),
            timeout: Duration::from_secs(10),
            max_rate_wait: Duration::from_secs(15 * 60),
            write_interval: Duration::from_secs(1),
            max_retries: 3,
        }
    }
}

impl GithubConfig {
    pub fn from_settings(settings: &crate::config::Settings) -> GithubConfig {
        GithubConfig {
            api_url: settings.github_api_url.clone(),
            timeout: Duration::from_secs(settings.github.timeout_secs),
            max_rate_wait: Duration::from_secs(settings.github.max_rate_wait_secs),
            write_interval: Duration::from_millis(settings.github.write_interval_ms),
            ..GithubConfig::default()
        }
    }
}

const USER_AGENT: &str = concat!("hookdock/", env!("CARGO_PKG_VERSION"));
/// Bytes the ETag cache may hold (keys, ETags and bodies): a file of the contents API alone can
/// be a megabyte, so it is bounded by size, not by entries.
const ETAG_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Shared by every client of the process: one connection pool, one ETag cache, the per-token
/// write locks and rate-limit state.
#[derive(Clone)]
pub struct Github {
    shared: Arc<Shared>,
}

struct Shared {
    http: reqwest::Client,
    api: String,
    config: GithubConfig,
    clock: Arc<dyn Clock>,
    etags: moka::sync::Cache<String, Arc<(String, Bytes)>>,
    tokens: Mutex<HashMap<[u8; 32], Arc<TokenState>>>,
}

#[derive(Default)]
struct TokenState {
    /// Held for the whole of a mutating request; holds when the last one was made.
    write: tokio::sync::Mutex<Option<SystemTime>>,
    /// `(remaining, reset)` from the last answer.
    rate: Mutex<Option<(u64, SystemTime)>>,
}

impl Github {
    pub fn new(config: GithubConfig, clock: Arc<dyn Clock>) -> Result<Github, GithubError> {
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| GithubError::Network {
                what: "the HTTP client".into(),
                message: e.to_string(),
            })?;
        Ok(Github {
            shared: Arc::new(Shared {
                http,
                api: config.api_url.trim_end_matches('/').to_owned(),
                config,
                clock,
                etags: moka::sync::Cache::builder()
                    .max_capacity(ETAG_CACHE_BYTES)
                    .weigher(|key: &String, entry: &Arc<(String, Bytes)>| {
                        u32::try_from(key.len() + entry.0.len() + entry.1.len()).unwrap_or(u32::MAX)
                    })
                    .build(),
                tokens: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn api_url(&self) -> &str {
        &self.shared.api
    }

    /// The HTTP client underneath (for GitHub's non-API pages, e.g. the OAuth exchange).
    pub(super) fn http(&self) -> &reqwest::Client {
        &self.shared.http
    }

    /// A client that acts with `token` (or anonymously).
    pub fn client(&self, token: Option<SecretString>) -> GithubClient {
        let key: [u8; 32] = match &token {
            Some(t) => Sha256::digest(t.expose_secret().as_bytes()).into(),
            None => [0; 32],
        };
        let state = match self.shared.tokens.lock() {
            Ok(mut map) => Arc::clone(map.entry(key).or_default()),
            Err(_) => Arc::new(TokenState::default()),
        };
        GithubClient {
            max_rate_wait: self.shared.config.max_rate_wait,
            shared: Arc::clone(&self.shared),
            token,
            cache_prefix: hex::encode(&key[..8]),
            state,
        }
    }
}

/// Calls GitHub as one token.
#[derive(Clone)]
pub struct GithubClient {
    shared: Arc<Shared>,
    token: Option<SecretString>,
    cache_prefix: String,
    state: Arc<TokenState>,
    /// Longest rate-limit wait taken inline (the configured one unless lowered).
    max_rate_wait: Duration,
}

impl std::fmt::Debug for GithubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubClient")
            .field("api", &self.shared.api)
            .field("authenticated", &self.token.is_some())
            .finish()
    }
}

/// An answer with a success status.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Served from the ETag cache after a 304.
    pub cached: bool,
}

impl Answer {
    pub fn json<T: DeserializeOwned>(&self, what: &str) -> Result<T, GithubError> {
        serde_json::from_slice(&self.body).map_err(|e| GithubError::Decode {
            what: what.to_owned(),
            message: e.to_string(),
        })
    }

    /// The `rel="next"` URL of the `Link` header.
    pub fn next_page(&self) -> Option<String> {
        let link = self.headers.get("link")?.to_str().ok()?;
        link.split(',').find_map(|part| {
            let (url, params) = part.split_once(';')?;
            params
                .split(';')
                .any(|p| p.trim() == "rel=\"next\"")
                .then(|| {
                    url.trim()
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_owned()
                })
        })
    }
}

/// One request to send.
pub struct Call<'a> {
    pub method: Method,
    /// `/repos/o/r/hooks?per_page=100`, or a full URL under the API (pagination links).
    pub path: &'a str,
    pub body: Option<serde_json::Value>,
    pub accept: &'a str,
    /// What the request is about, for errors: "hook 12 of octo/repo".
    pub what: &'a str,
}

impl<'a> Call<'a> {
    pub fn new(method: Method, path: &'a str, what: &'a str) -> Call<'a> {
        Call {
            method,
            path,
            body: None,
            accept: "application/vnd.github+json",
            what,
        }
    }

    pub fn json(mut self, body: &impl Serialize) -> Call<'a> {
        self.body = serde_json::to_value(body).ok();
        self
    }

    pub fn accept(mut self, accept: &'a str) -> Call<'a> {
        self.accept = accept;
        self
    }
}

impl GithubClient {
    pub fn is_authenticated(&self) -> bool {
        self.token.is_some()
    }

    /// The same client, waiting out rate limits inline for at most `max` (never longer than
    /// configured); beyond it calls fail with `RateLimited`, for callers that can come back
    /// later (queue jobs with a timeout of their own).
    pub fn with_max_rate_wait(mut self, max: Duration) -> GithubClient {
        self.max_rate_wait = self.max_rate_wait.min(max);
        self
    }

    pub fn api_url(&self) -> &str {
        &self.shared.api
    }

    /// Who this client is to caches: a prefix of the token's hash, never the token.
    pub(super) fn cache_identity(&self) -> &str {
        &self.cache_prefix
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str, what: &str) -> Result<T, GithubError> {
        self.send(Call::new(Method::GET, path, what))
            .await?
            .json(what)
    }

    /// Every page of a list, following `Link: rel="next"`, up to `max_items`.
    pub async fn get_all<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
        max_items: usize,
    ) -> Result<Vec<T>, GithubError> {
        let mut items = Vec::new();
        let mut next = Some(path.to_owned());
        while let Some(url) = next.take() {
            let answer = self.send(Call::new(Method::GET, &url, what)).await?;
            let page: Vec<T> = answer.json(what)?;
            let empty = page.is_empty();
            items.extend(page);
            if items.len() >= max_items {
                items.truncate(max_items);
                break;
            }
            if !empty {
                next = answer.next_page();
            }
        }
        Ok(items)
    }

    /// Sends a call, waiting out rate limits and retrying reads on GitHub's 5xx.
    pub async fn send(&self, call: Call<'_>) -> Result<Answer, GithubError> {
        let url = self.url(call.path, call.what)?;
        let mutating = call.method != Method::GET && call.method != Method::HEAD;
        // Writes go one at a time per token, spaced by the write interval.
        let mut write_guard = None;
        if mutating {
            let mut last = self.state.write.lock().await;
            if let Some(at) = *last {
                let since = self
                    .shared
                    .clock
                    .now()
                    .duration_since(at)
                    .unwrap_or_default();
                if let Some(wait) = self.shared.config.write_interval.checked_sub(since)
                    && !wait.is_zero()
                {
                    self.shared.clock.sleep(wait).await;
                }
            }
            *last = Some(self.shared.clock.now());
            write_guard = Some(last);
        }
        // One entry per token, media type and URL: a diff and the JSON of the same pull request
        // are two representations with their own ETags.
        let cache_key = format!("{}:{}:{url}", self.cache_prefix, call.accept);
        let mut attempt = 0u32;
        loop {
            self.wait_for_primary_reset(call.what).await?;
            let cached = if call.method == Method::GET {
                self.shared.etags.get(&cache_key)
            } else {
                None
            };
            let mut request = self
                .shared
                .http
                .request(call.method.clone(), &url)
                .header("accept", call.accept)
                .header("x-github-api-version", "2022-11-28");
            if let Some(token) = &self.token {
                request = request.bearer_auth(token.expose_secret());
            }
            if let Some(entry) = &cached {
                request = request.header("if-none-match", entry.0.as_str());
            }
            if let Some(body) = &call.body {
                request = request.json(body);
            }
            let response = request.send().await.map_err(|e| network(call.what, &e))?;
            let status = response.status();
            let headers = response.headers().clone();
            self.note_rate(&headers);
            let body = response.bytes().await.map_err(|e| network(call.what, &e))?;
            if status == StatusCode::NOT_MODIFIED
                && let Some(entry) = cached
            {
                return Ok(Answer {
                    status: StatusCode::OK,
                    headers,
                    body: entry.1.clone(),
                    cached: true,
                });
            }
            if status.is_success() {
                if call.method == Method::GET
                    && let Some(etag) = headers.get("etag").and_then(|v| v.to_str().ok())
                {
                    self.shared
                        .etags
                        .insert(cache_key.clone(), Arc::new((etag.to_owned(), body.clone())));
                }
                drop(write_guard);
                return Ok(Answer {
                    status,
                    headers,
                    body,
                    cached: false,
                });
            }
            let message = error_message(&body);
            if let Some(wait) = self.rate_limit_wait(status, &headers, &message, attempt) {
                let until = self.shared.clock.now() + wait;
                if attempt >= self.shared.config.max_retries || wait > self.max_rate_wait {
                    return Err(GithubError::RateLimited { until });
                }
                tracing::warn!(
                    what = call.what,
                    wait_secs = wait.as_secs(),
                    "GitHub rate limit; waiting"
                );
                self.shared.clock.sleep(wait).await;
                attempt += 1;
                continue;
            }
            if status.is_server_error()
                && !mutating
                && attempt < self.shared.config.max_retries.min(2)
            {
                attempt += 1;
                self.shared
                    .clock
                    .sleep(Duration::from_secs(1 << attempt))
                    .await;
                continue;
            }
            return Err(classify(status, &headers, message, &body, call.what));
        }
    }

    /// Resolves `path` against the API, and refuses URLs elsewhere: a token is never sent to
    /// another host, whatever a `Link` header says.
    fn url(&self, path: &str, what: &str) -> Result<String, GithubError> {
        if path.starts_with('/') {
            Ok(format!("{}{path}", self.shared.api))
        } else if path.starts_with(&format!("{}/", self.shared.api)) {
            Ok(path.to_owned())
        } else {
            Err(GithubError::Decode {
                what: what.to_owned(),
                message: format!("refusing to follow a link outside {}", self.shared.api),
            })
        }
    }

    fn note_rate(&self, headers: &HeaderMap) {
        let remaining = header_u64(headers, "x-ratelimit-remaining");
        let reset = header_u64(headers, "x-ratelimit-reset");
        if let (Some(remaining), Some(reset), Ok(mut rate)) =
            (remaining, reset, self.state.rate.lock())
        {
            *rate = Some((
                remaining,
                SystemTime::UNIX_EPOCH + Duration::from_secs(reset),
            ));
        }
    }

    /// Before sending: if the last answer said the quota is spent, wait for its reset.
    async fn wait_for_primary_reset(&self, what: &str) -> Result<(), GithubError> {
        let spent_until = self
            .state
            .rate
            .lock()
            .ok()
            .and_then(|r| *r)
            .filter(|(remaining, _)| *remaining == 0)
            .map(|(_, reset)| reset);
        let Some(reset) = spent_until else {
            return Ok(());
        };
        let Ok(wait) = reset.duration_since(self.shared.clock.now()) else {
            return Ok(());
        };
        if wait > self.max_rate_wait {
            return Err(GithubError::RateLimited { until: reset });
        }
        tracing::warn!(
            what,
            wait_secs = wait.as_secs(),
            "GitHub quota spent; waiting for reset"
        );
        self.shared.clock.sleep(wait).await;
        if let Ok(mut rate) = self.state.rate.lock() {
            *rate = None;
        }
        Ok(())
    }

    /// GitHub's rules: `retry-after` if given; else, with the quota spent, until
    /// `x-ratelimit-reset`; else at least a minute, doubling per attempt.
    fn rate_limit_wait(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        message: &str,
        attempt: u32,
    ) -> Option<Duration> {
        let remaining = header_u64(headers, "x-ratelimit-remaining");
        let retry_after = header_u64(headers, "retry-after");
        let limited = status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::FORBIDDEN
                && (remaining == Some(0)
                    || retry_after.is_some()
                    || message.to_ascii_lowercase().contains("rate limit")));
        if !limited {
            return None;
        }
        if let Ok(mut rate) = self.state.rate.lock() {
            *rate = None;
        }
        if let Some(secs) = retry_after {
            return Some(Duration::from_secs(secs));
        }
        if remaining == Some(0)
            && let Some(reset) = header_u64(headers, "x-ratelimit-reset")
        {
            let reset = SystemTime::UNIX_EPOCH + Duration::from_secs(reset);
            let wait = reset
                .duration_since(self.shared.clock.now())
                .unwrap_or_default();
            return Some(wait + Duration::from_secs(1));
        }
        Some(Duration::from_secs(60) * 2u32.saturating_pow(attempt.min(6)))
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn network(what: &str, e: &reqwest::Error) -> GithubError {
    let message = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else {
        // reqwest's text names the URL, which never carries a secret here.
        e.to_string()
    };
    GithubError::Network {
        what: what.to_owned(),
        message,
    }
}

fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    message: String,
    body: &[u8],
    what: &str,
) -> GithubError {
    let what = what.to_owned();
    match status {
        StatusCode::NOT_FOUND => GithubError::NotFound { what },
        StatusCode::UNAUTHORIZED => GithubError::Unauthorized { message },
        StatusCode::FORBIDDEN => GithubError::Forbidden {
            what,
            message,
            missing_scopes: missing_scopes(headers),
        },
        StatusCode::UNPROCESSABLE_ENTITY => GithubError::Validation {
            what,
            message,
            errors: validation_errors(body),
        },
        _ => GithubError::Status {
            status: status.as_u16(),
            what,
            message,
        },
    }
}

/// Scopes the endpoint accepts (`x-accepted-oauth-scopes`) that the token lacks (`x-oauth-scopes`).
fn missing_scopes(headers: &HeaderMap) -> Vec<String> {
    let list = |name: &str| -> Vec<String> {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let have = list("x-oauth-scopes");
    let accepted = list("x-accepted-oauth-scopes");
    if accepted.iter().any(|a| have.contains(a)) {
        return Vec::new();
    }
    accepted
}

fn validation_errors(body: &[u8]) -> Vec<String> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    value
        .get("errors")
        .and_then(|e| e.as_array())
        .map(|errors| {
            errors
                .iter()
                .map(|e| match e {
                    serde_json::Value::String(s) => s.clone(),
                    other => other
                        .get("message")
                        .and_then(|m| m.as_str())
                        .map(str::to_owned)
                        .unwrap_or_else(|| {
                            let field = other.get("field").and_then(|f| f.as_str()).unwrap_or("?");
                            let code = other
                                .get("code")
                                .and_then(|c| c.as_str())
                                .unwrap_or("invalid");
                            format!("{field}: {code}")
                        }),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(link: &str) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert("link", HeaderValue::from_str(link).expect("header"));
        Answer {
            status: StatusCode::OK,
            headers,
            body: Bytes::new(),
            cached: false,
        }
    }

    #[test]
    fn next_page_comes_from_the_link_header() {
        let a = answer(
            "<https://api.github.com/repos/o/r/hooks/1/deliveries?cursor=v1_2>; rel=\"next\", <https://api.github.com/x?page=1>; rel=\"first\"",
        );
        assert_eq!(
            a.next_page().as_deref(),
            Some("https://api.github.com/repos/o/r/hooks/1/deliveries?cursor=v1_2")
        );
        assert_eq!(answer("<https://x/1>; rel=\"prev\"").next_page(), None);
    }

    #[test]
    fn missing_scopes_are_what_the_endpoint_accepts_and_the_token_lacks() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-oauth-scopes",
            HeaderValue::from_static("read:user, repo:status"),
        );
        h.insert(
            "x-accepted-oauth-scopes",
            HeaderValue::from_static("admin:repo_hook, repo"),
        );
        assert_eq!(missing_scopes(&h), ["admin:repo_hook", "repo"]);
        h.insert("x-oauth-scopes", HeaderValue::from_static("repo"));
        assert!(missing_scopes(&h).is_empty());
    }

    #[test]
    fn validation_errors_are_listed() {
        let body = br#"{"message":"Validation Failed","errors":[{"resource":"Hook","code":"custom","message":"Hook already exists on this repository"},{"field":"url","code":"missing"}]}"#;
        assert_eq!(
            validation_errors(body),
            ["Hook already exists on this repository", "url: missing"]
        );
    }

    #[test]
    fn links_outside_the_api_are_refused() {
        let gh = Github::new(
            GithubConfig {
                api_url: "https://ghe.example/api/v3/".into(),
                ..GithubConfig::default()
            },
            Arc::new(crate::clock::SystemClock),
        )
        .expect("client");
        let c = gh.client(None);
        assert_eq!(
            c.url("/user", "u").expect("path"),
            "https://ghe.example/api/v3/user"
        );
        assert!(c.url("https://ghe.example/api/v3/user?page=2", "u").is_ok());
        assert!(c.url("https://evil.example/api/v3/user", "u").is_err());
        assert!(c.url("https://ghe.example/api/v3.evil/user", "u").is_err());
    }
}
