//! A short-lived cache of pull requests, so that a burst of events about one pull request asks
//! GitHub for it once: 60 s for an open one (it changes), 300 s for a closed one (it rarely
//! does), at most 500 of them, least recently used out first. Entries are kept per token, so a
//! token never sees a pull request fetched with another's access. It only caches; it does not
//! decide when a pull request changed: callers `invalidate` on a `pull_request` event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use serde_json::Value;

use super::client::GithubClient;
use super::error::GithubError;

/// How long an open (or draft) pull request is served from the cache.
pub const OPEN_TTL: Duration = Duration::from_secs(60);
/// How long a closed (or merged) pull request is served from the cache.
pub const CLOSED_TTL: Duration = Duration::from_secs(300);
/// Most pull requests kept.
pub const MAX_ENTRIES: u64 = 500;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PrKey {
    /// The token's cache identity (a hash prefix, never the token).
    token: String,
    /// Lowercase `owner/repo`: GitHub's names are case-insensitive.
    repo: String,
    number: u64,
}

impl PrKey {
    fn new(token: &str, owner: &str, repo: &str, number: u64) -> PrKey {
        PrKey {
            token: token.to_owned(),
            repo: format!("{owner}/{repo}").to_ascii_lowercase(),
            number,
        }
    }
}

/// The time to live of a pull request's JSON: by its `state`, open when unknown (the shorter).
pub fn ttl_for(pull: &Value) -> Duration {
    match pull.get("state").and_then(Value::as_str) {
        Some("closed") => CLOSED_TTL,
        _ => OPEN_TTL,
    }
}

/// moka's per-entry expiry: the TTL of the state the pull request had when stored.
struct PrExpiry;

impl Expiry<PrKey, Arc<Value>> for PrExpiry {
    fn expire_after_create(
        &self,
        _key: &PrKey,
        value: &Arc<Value>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(ttl_for(value))
    }

    /// A refreshed pull request (say, now closed) gets the TTL of its new state.
    fn expire_after_update(
        &self,
        _key: &PrKey,
        value: &Arc<Value>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(ttl_for(value))
    }
}

/// Pull requests as GitHub answered them, shared by every client of the process.
#[derive(Clone)]
pub struct PrCache {
    entries: moka::sync::Cache<PrKey, Arc<Value>>,
}

impl Default for PrCache {
    fn default() -> PrCache {
        PrCache::new()
    }
}

impl std::fmt::Debug for PrCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrCache")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl PrCache {
    /// [`MAX_ENTRIES`] pull requests at most.
    pub fn new() -> PrCache {
        PrCache::with_capacity(MAX_ENTRIES)
    }

    pub fn with_capacity(max_entries: u64) -> PrCache {
        PrCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PrExpiry)
                .build(),
        }
    }

    /// Most pull requests kept.
    pub fn max_capacity(&self) -> Option<u64> {
        self.entries.policy().max_capacity()
    }

    /// The pull request from the cache, or from GitHub (then cached). Two callers missing at
    /// once both ask GitHub; the ETag layer below makes the second answer a free 304.
    pub async fn get_or_fetch(
        &self,
        client: &GithubClient,
        owner: &str,
        repo: &str,
        number: u64,
    ) -> Result<Arc<Value>, GithubError> {
        let key = PrKey::new(client.cache_identity(), owner, repo, number);
        if let Some(pull) = self.entries.get(&key) {
            return Ok(pull);
        }
        let pull = Arc::new(client.pull_request(owner, repo, number).await?);
        self.entries.insert(key, Arc::clone(&pull));
        Ok(pull)
    }

    /// Forgets the pull request for every token (call it when an event says it changed).
    pub fn invalidate(&self, owner: &str, repo: &str, number: u64) {
        let repo = format!("{owner}/{repo}").to_ascii_lowercase();
        let stale: Vec<Arc<PrKey>> = self
            .entries
            .iter()
            .map(|(key, _)| key)
            .filter(|key| key.repo == repo && key.number == number)
            .collect();
        for key in stale {
            self.entries.invalidate(key.as_ref());
        }
    }

    #[cfg(test)]
    fn remember(&self, token: &str, owner: &str, repo: &str, number: u64, pull: Value) {
        self.entries
            .insert(PrKey::new(token, owner, repo, number), Arc::new(pull));
    }

    #[cfg(test)]
    fn cached(&self, token: &str, owner: &str, repo: &str, number: u64) -> Option<Arc<Value>> {
        self.entries.get(&PrKey::new(token, owner, repo, number))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key() -> PrKey {
        PrKey::new("t", "octo", "hello", 1)
    }

    #[test]
    fn open_pull_requests_live_a_minute_and_closed_ones_five() {
        let now = Instant::now();
        let open = Arc::new(json!({"number": 1, "state": "open", "draft": true}));
        let closed = Arc::new(json!({"number": 1, "state": "closed", "merged": true}));
        let unknown = Arc::new(json!({"number": 1}));
        assert_eq!(
            PrExpiry.expire_after_create(&key(), &open, now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            PrExpiry.expire_after_create(&key(), &closed, now),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            PrExpiry.expire_after_create(&key(), &unknown, now),
            Some(OPEN_TTL)
        );
        // Stored again after it closed: the closed TTL, whatever was left of the open one.
        assert_eq!(
            PrExpiry.expire_after_update(&key(), &closed, now, Some(Duration::from_secs(10))),
            Some(CLOSED_TTL)
        );
        assert_eq!(
            PrExpiry.expire_after_update(&key(), &open, now, Some(Duration::from_secs(200))),
            Some(OPEN_TTL)
        );
    }

    #[test]
    fn the_cache_holds_at_most_500_pull_requests() {
        let cache = PrCache::new();
        assert_eq!(cache.max_capacity(), Some(500));
        for n in 0..600 {
            cache.remember(
                "t",
                "octo",
                "hello",
                n,
                json!({"number": n, "state": "open"}),
            );
        }
        cache.entries.run_pending_tasks();
        let count = cache.entries.entry_count();
        assert!(count <= 500 && count > 0, "{count}");
        assert_eq!(PrCache::with_capacity(3).max_capacity(), Some(3));
    }

    #[test]
    fn invalidating_forgets_the_pull_request_for_every_token_and_nothing_else() {
        let cache = PrCache::new();
        let pull = json!({"number": 7, "state": "open"});
        cache.remember("a", "Octo", "Hello", 7, pull.clone());
        cache.remember("b", "octo", "hello", 7, pull.clone());
        cache.remember("a", "octo", "hello", 8, pull.clone());
        assert!(cache.cached("a", "octo", "HELLO", 7).is_some());
        cache.invalidate("OCTO", "hello", 7);
        assert!(cache.cached("a", "octo", "hello", 7).is_none());
        assert!(cache.cached("b", "octo", "hello", 7).is_none());
        assert!(cache.cached("a", "octo", "hello", 8).is_some());
    }
}
