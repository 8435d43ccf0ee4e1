//! Handlers: what hookdock does with a stored delivery. Each handler names the events it takes;
//! the queue runs one job per (event, handler) so handlers fail, retry and replay independently.
//!
//! A handler must not assume it runs once: a lease can expire or a replay can run it again.
//! Writes to hookdock's own tables are returned as [`Effect`]s and committed atomically with the
//! job's completion; writes elsewhere must be idempotent.

mod activity;
pub mod automation;
pub mod backfill;
pub mod commands;
pub mod labeling;
pub mod labels;
pub mod metrics;
pub(crate) mod payload;
pub mod pull_commits;
pub mod records;
pub mod repo_config;
pub mod review;
pub mod simulate;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use activity::ActivityHandler;
pub use metrics::MetricsHandler;
pub use pull_commits::PullCommitsHandler;
pub use records::RecordsHandler;

use crate::config::HandlerSettings;
use crate::store::{Chains, ClaimedJob, Effect, Store, StoreError};

use payload::Prune;

pub type HandlerFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Effect>, HandlerError>> + Send + 'a>>;

/// How a handler failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandlerError {
    /// Worth another attempt (network, rate limit). `retry_after` overrides the backoff.
    #[error("{message}")]
    Retry {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Will fail the same way every time; the job goes straight to `dead`.
    #[error("{0}")]
    Permanent(String),
}

impl From<StoreError> for HandlerError {
    fn from(e: StoreError) -> Self {
        HandlerError::Retry {
            message: e.to_string(),
            retry_after: None,
        }
    }
}

/// What a handler is given: the claimed job with the event's routing fields, and the store
/// to read the body from when it needs it.
pub struct JobContext<'a> {
    pub job: &'a ClaimedJob,
    pub store: &'a Store,
}

impl JobContext<'_> {
    /// The delivery's JSON document (decoded from the form field for form-encoded hooks).
    pub async fn payload(&self) -> Result<serde_json::Value, HandlerError> {
        self.payload_with(&Prune::Keep).await
    }

    /// The parts of the delivery's JSON document that `prune` keeps.
    pub(crate) async fn payload_with(
        &self,
        prune: &Prune,
    ) -> Result<serde_json::Value, HandlerError> {
        match &self.job.stored {
            // Read with the claim.
            Some((content_type, compressed)) => {
                let bytes = crate::store::decompress_body(compressed).map_err(|reason| {
                    HandlerError::Permanent(format!(
                        "stored body of event {} cannot be read back: {reason}",
                        self.job.event_id
                    ))
                })?;
                parse_payload(content_type, &bytes, prune)
            }
            None => read_payload(self.store, self.job.event_id, prune).await,
        }
    }
}

/// A stored event's JSON document (decoded from the form field for form-encoded hooks).
pub async fn stored_payload(
    store: &Store,
    event_id: i64,
) -> Result<serde_json::Value, HandlerError> {
    read_payload(store, event_id, &Prune::Keep).await
}

async fn read_payload(
    store: &Store,
    event_id: i64,
    prune: &Prune,
) -> Result<serde_json::Value, HandlerError> {
    let body = store.event_body(event_id).await?;
    parse_payload(&body.content_type, &body.bytes, prune)
}

/// The JSON document of a body received with `content_type`, as much of it as `prune` keeps.
fn parse_payload(
    content_type: &str,
    bytes: &[u8],
    prune: &Prune,
) -> Result<serde_json::Value, HandlerError> {
    let content_type =
        crate::ingest::ContentType::parse(content_type).unwrap_or(crate::ingest::ContentType::Json);
    let doc = crate::ingest::json_document(content_type, bytes)
        .map_err(|e| HandlerError::Permanent(e.to_string()))?;
    payload::parse_pruned(&doc, prune).map_err(|e| HandlerError::Permanent(e.to_string()))
}

pub trait Handler: Send + Sync + 'static {
    /// Stable name, stored with each job.
    fn name(&self) -> &'static str;
    fn subscribes(&self, event: &str, action: Option<&str>) -> bool;
    fn handle<'a>(&'a self, ctx: &'a JobContext<'a>) -> HandlerFuture<'a>;

    /// Whether a worker may take several of this handler's jobs of one ordering key at once,
    /// run them in order and commit their effects together (see `store::Chains`). Only for a
    /// handler whose result depends on nothing but its job (the event and its payload), never
    /// on what an earlier job wrote: that is not committed yet when the next one runs.
    fn runs_in_chains(&self) -> bool {
        false
    }
}

/// The enabled handlers.
#[derive(Clone, Default)]
pub struct HandlerRegistry {
    handlers: Vec<Arc<dyn Handler>>,
}

impl HandlerRegistry {
    /// The built-in handlers, as enabled by configuration.
    pub fn from_settings(settings: &HandlerSettings) -> HandlerRegistry {
        let mut registry = HandlerRegistry::default();
        if settings.activity.enabled {
            registry.register(Arc::new(ActivityHandler::new(
                settings.activity.events.clone(),
            )));
        }
        if settings.metrics.enabled {
            registry.register(Arc::new(MetricsHandler::new(settings.metrics.clone())));
        }
        if settings.records.enabled {
            registry.register(Arc::new(RecordsHandler));
        }
        registry
    }

    pub fn register(&mut self, handler: Arc<dyn Handler>) {
        self.handlers.push(handler);
    }

    /// Names of the handlers that take this event.
    pub fn subscribers(&self, event: &str, action: Option<&str>) -> Vec<&'static str> {
        self.handlers
            .iter()
            .filter(|h| h.subscribes(event, action))
            .map(|h| h.name())
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Handler>> {
        self.handlers.iter().find(|h| h.name() == name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.handlers.iter().map(|h| h.name()).collect()
    }

    /// The claims' chains: the handlers that run in them, at most `max` jobs each.
    pub fn chains(&self, max: u32) -> Chains {
        Chains {
            handlers: self
                .handlers
                .iter()
                .filter(|h| h.runs_in_chains())
                .map(|h| h.name())
                .collect(),
            max,
        }
    }
}

/// The shared webhook fixtures (`../shared/fixtures/webhooks`) a handler subscribes to, for
/// tests: each one's file name, event, action and bytes.
#[cfg(test)]
pub(crate) fn subscribed_fixtures(handler: &dyn Handler) -> Vec<SubscribedFixture> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/webhooks");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("fixtures") {
        let path = entry.expect("entry").path();
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let mut parts = name.split('.');
        let (Some(event), Some(action)) = (parts.next(), parts.next()) else {
            continue;
        };
        let action = (action != "none").then_some(action);
        if handler.subscribes(event, action) {
            out.push(SubscribedFixture {
                name: name.to_owned(),
                event: event.to_owned(),
                action: action.map(str::to_owned),
                bytes: std::fs::read(&path).expect("read"),
            });
        }
    }
    out
}

/// Every fixture `handler` subscribes to gives effects (those of `may_give_none` events may
/// give none), and the same ones whether its payload is parsed whole or as `reads` prunes it,
/// which must leave something out; at least `at_least` fixtures.
#[cfg(test)]
pub(crate) fn assert_reads_as_a_whole_parse_does(
    handler: &dyn Handler,
    reads: &payload::Prune,
    at_least: usize,
    may_give_none: &[&str],
    effects_for: impl Fn(&str, Option<&str>, &serde_json::Value) -> Result<Vec<Effect>, HandlerError>,
) {
    let fixtures = subscribed_fixtures(handler);
    for f in &fixtures {
        let (name, event, action) = (&f.name, f.event.as_str(), f.action.as_deref());
        let whole: serde_json::Value = serde_json::from_slice(&f.bytes).expect("JSON");
        let effects = effects_for(event, action, &whole).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            may_give_none.contains(&event) || !effects.is_empty(),
            "{name} gave no effects"
        );
        let pruned = payload::parse_pruned(&f.bytes, reads).expect("JSON");
        assert!(
            pruned.to_string().len() < whole.to_string().len(),
            "{name}: nothing left out"
        );
        assert_eq!(
            effects_for(event, action, &pruned).ok(),
            Some(effects),
            "{name}: the pruned parse gives other effects"
        );
    }
    assert!(
        fixtures.len() >= at_least,
        "only {} fixtures",
        fixtures.len()
    );
}

/// See [`subscribed_fixtures`].
#[cfg(test)]
pub(crate) struct SubscribedFixture {
    pub name: String,
    pub event: String,
    pub action: Option<String>,
    pub bytes: Vec<u8>,
}
