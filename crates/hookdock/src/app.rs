//! Start-up: the one place that picks concrete implementations and wires them together.
//! `App::build` connects, migrates and binds (port 0 in tests); `run_until_stopped` serves until
//! the token is cancelled, then shuts down in the order that loses nothing: stop accepting and
//! finish in-flight requests, let running jobs finish (or release them), stop background
//! backfills (recorded as interrupted), commit what the writer holds, close the database.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::crypto::{KeySource, load_key_ring};
use crate::github::GithubClient;
use crate::github::{Github, GithubConfig};
use crate::handlers::automation::{AutomationSet, Automations, llm_reviewer};
use crate::handlers::repo_config::ConfigDefaults;
use crate::handlers::{Handler, HandlerRegistry, PullCommitsHandler};
use crate::hooks::{HookError, HookManager};
use crate::http::{AppState, Shared, router};
use crate::ingest::{Ingestor, SourceGuard, WebhookSecrets};
use crate::queue::Worker;
use crate::store::{Store, StoreError, StoreOptions, now_ms, redact_url};
use crate::telemetry::{QueueGauges, metrics_handle};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("invalid setting `llm.base_url`: {0}")]
    Llm(#[from] crate::handlers::review::llm::LlmError),
    #[error("invalid setting in [automations]: {0}")]
    Automations(#[from] crate::handlers::repo_config::RepoConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "cannot listen on {addr}: {source} (set --listen or HOOKDOCK_LISTEN to a free address)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Hooks(#[from] HookError),
    #[error(transparent)]
    MetricsTeams(#[from] crate::metrics::CalendarError),
}

pub struct App {
    listener: TcpListener,
    addr: SocketAddr,
    state: AppState,
    store: Store,
    worker: Option<Arc<Worker>>,
    hooks: HookManager,
    github: Github,
    source: Arc<SourceGuard>,
    settings: Settings,
}

/// The store's options from the settings (`ingest.max_batch`, `database_timeout_secs`).
pub fn store_options(settings: &Settings) -> StoreOptions {
    StoreOptions {
        max_batch: settings.ingest.max_batch,
        timeout: settings.database_timeout(),
        ..StoreOptions::default()
    }
}

impl App {
    pub async fn build(settings: Settings) -> Result<App, AppError> {
        App::build_with_handlers(settings, Vec::new()).await
    }

    /// Like [`App::build`], with handlers beyond the built-in ones (tests, embedders).
    pub async fn build_with_handlers(
        settings: Settings,
        extra: Vec<Arc<dyn Handler>>,
    ) -> Result<App, AppError> {
        let store = Store::connect(&settings.database_url, store_options(&settings)).await?;
        let applied = store.migrate().await?;
        if applied > 0 {
            tracing::info!(applied, "database migrations applied");
        }
        let jobs_ready = Arc::new(Notify::new());
        let secrets = Arc::new(WebhookSecrets::from_settings(&settings));
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let github = Github::new(GithubConfig::from_settings(&settings), Arc::clone(&clock))
            .map_err(HookError::from)?;
        let (mut registry, automations) =
            handler_registry(&settings, &github, &store, Arc::clone(&clock))?;
        for handler in extra {
            registry.register(handler);
        }
        let keys = load_key_ring(&settings)
            .map_err(HookError::from)?
            .map(|(ring, source)| {
                if let KeySource::File(path) = &source {
                    tracing::debug!(path = %path.display(), "secrets at rest are sealed with the key file");
                }
                Arc::new(ring)
            });
        if keys.is_none() {
            tracing::warn!(
                "no secret_key (HOOKDOCK_SECRET_KEY): managed webhooks and sign-in are unavailable on this shared database until every instance is given the same key"
            );
        }
        let hooks = HookManager::with_parts(
            &settings,
            store.clone(),
            github.clone(),
            keys.clone(),
            Arc::clone(&secrets),
            clock,
        );
        let auth = Auth::new(&settings, store.clone(), github.clone(), keys);
        let source = Arc::new(SourceGuard::new(&settings.source_check));
        // Managed secrets verify from the first request on.
        hooks.refresh_secrets().await?;
        let ingestor = Ingestor::new(
            Arc::clone(&secrets),
            settings.allow_unsigned,
            registry.clone(),
            store.clone(),
            settings.ingest.zstd_level,
            Arc::clone(&jobs_ready),
        );
        let worker = (settings.queue.workers > 0).then(|| {
            Arc::new(Worker::new(
                store.clone(),
                registry.clone(),
                &settings.queue,
                Arc::clone(&jobs_ready),
            ))
        });
        let state = AppState::new(Shared {
            ingestor,
            hooks: hooks.clone(),
            auth,
            source: Arc::clone(&source),
            store: store.clone(),
            registry,
            automations: automations.clone(),
            admin_token: settings.admin_token.clone(),
            metrics: metrics_handle(),
            queue_gauges: QueueGauges::new(store.clone()),
            metrics_api: Arc::new(crate::http::metrics::MetricsApi::new(
                &settings.handlers.metrics,
            )?),
            jobs_ready,
            body_timeout: settings.read_timeout(),
        });
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| AppError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| AppError::Bind {
            addr: settings.listen,
            source,
        })?;
        if settings.has_no_webhook_secret() && !settings.allow_unsigned {
            tracing::warn!(
                "no webhook secret configured: every delivery will be refused until HOOKDOCK_WEBHOOK_SECRET is set"
            );
        }
        if settings.admin_token.is_none() {
            tracing::warn!("HOOKDOCK_ADMIN_TOKEN is not set: the JSON API answers 401");
        }
        tracing::info!(
            %addr,
            database = %redact_url(&settings.database_url),
            dialect = store.dialect().name(),
            workers = settings.queue.workers,
            "hookdock listening"
        );
        Ok(App {
            listener,
            addr,
            state,
            store,
            worker,
            hooks,
            github,
            source,
            settings,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn registry(&self) -> &HandlerRegistry {
        &self.state.registry
    }

    /// The automations, when they are on.
    pub fn automations(&self) -> Option<Arc<AutomationSet>> {
        self.state.automations.clone()
    }

    pub fn hooks(&self) -> &HookManager {
        &self.hooks
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The worker, for tests that drive the queue step by step (`workers = 0` builds none that
    /// runs by itself; tests then construct one).
    pub fn worker(&self) -> Option<Arc<Worker>> {
        self.worker.clone()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let grace = self.settings.shutdown_grace();
        let workers = self
            .worker
            .map(|w| tokio::spawn(w.run(shutdown.clone(), grace)));
        let retention = tokio::spawn(retention_loop(
            self.store.clone(),
            self.settings.retention.done_days,
            Duration::from_secs(self.settings.retention.interval_secs),
            shutdown.clone(),
        ));
        let upkeep = tokio::spawn(self.hooks.clone().run(shutdown.clone()));
        let ranges = self.source.enabled().then(|| {
            tokio::spawn(source_ranges_loop(
                Arc::clone(&self.source),
                self.github.client(self.settings.github_token.clone()),
                Duration::from_secs(self.settings.source_check.refresh_hours * 3_600),
                shutdown.clone(),
            ))
        });
        let backfills = Arc::clone(&self.state.metrics_api.backfills);
        // Requests in flight get the grace period too: one whose sender stalls must not hold
        // the shutdown. Closed unanswered, it was never acknowledged (its delivery is either
        // committed and then a duplicate when redelivered, or not stored at all).
        crate::http::serve(
            self.listener,
            router(self.state),
            self.settings.idle_timeout(),
            self.settings.max_connections,
            grace,
            shutdown.cancelled(),
        )
        .await;
        tracing::info!("HTTP server stopped; waiting for workers");
        if let Some(workers) = workers
            && let Err(e) = workers.await
        {
            tracing::error!(error = %e, "worker task ended abnormally");
        }
        // Background backfills stop and record that they were interrupted (they resume when
        // started again).
        backfills.shutdown().await;
        retention.abort();
        upkeep.abort();
        if let Some(ranges) = ranges {
            ranges.abort();
        }
        self.store.close().await;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// The enabled handlers, the commits job and the automations among them (when a GitHub token
/// lets them act).
/// The CLI builds the same registry, so a replay from it queues the same jobs.
pub fn handler_registry(
    settings: &Settings,
    github: &Github,
    store: &Store,
    clock: Arc<dyn Clock>,
) -> Result<(HandlerRegistry, Option<Arc<AutomationSet>>), AppError> {
    let mut registry = HandlerRegistry::from_settings(&settings.handlers);
    if let Some(commits) = commits_handler(settings, github, Arc::clone(&clock)) {
        registry.register(commits);
    }
    let automations = automation_set(settings, github, store, clock)?;
    if let Some(set) = &automations {
        for handler in set.handlers() {
            registry.register(handler);
        }
    }
    Ok((registry, automations))
}

/// The job that reads pull requests' commits (first commits), when metrics are on and a GitHub
/// token lets it read them. Its rate-limit waits stay within half the job timeout: a longer
/// one becomes a retry at GitHub's reset time.
fn commits_handler(
    settings: &Settings,
    github: &Github,
    clock: Arc<dyn Clock>,
) -> Option<Arc<dyn Handler>> {
    let metrics = &settings.handlers.metrics;
    if !metrics.enabled || !metrics.fetch_commits {
        return None;
    }
    let Some(token) = settings.github_token.clone() else {
        tracing::info!(
            "first commits of pull requests come only from backfills: reading them after webhooks needs HOOKDOCK_GITHUB_TOKEN"
        );
        return None;
    };
    let patience = Duration::from_secs(settings.queue.job_timeout_secs) / 2;
    let client = github.client(Some(token)).with_max_rate_wait(patience);
    Some(Arc::new(PullCommitsHandler::new(
        client,
        clock,
        metrics.clone(),
    )))
}

/// The automations, when enabled and a GitHub token lets them act.
fn automation_set(
    settings: &Settings,
    github: &Github,
    store: &Store,
    clock: Arc<dyn Clock>,
) -> Result<Option<Arc<AutomationSet>>, AppError> {
    if !settings.handlers.automations.enabled {
        return Ok(None);
    }
    if settings.github_token.is_none() {
        tracing::info!(
            "automations (review, labels, commands) are off: they need HOOKDOCK_GITHUB_TOKEN"
        );
        return Ok(None);
    }
    let defaults = ConfigDefaults::new(&settings.automations)?;
    let llm = llm_reviewer(&settings.llm, clock)?;
    let services = Arc::new(Automations::new(
        github.clone(),
        settings.github_token.clone(),
        store.clone(),
        defaults,
        llm,
    ));
    Ok(Some(Arc::new(AutomationSet::new(services))))
}

async fn retention_loop(store: Store, days: u32, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Expired sign-ins go whatever the event retention.
        if let Err(error) = store.purge_sessions(now_ms()).await {
            tracing::warn!(%error, "purging expired sessions failed; will retry");
        }
        if days == 0 {
            continue;
        }
        let cutoff = now_ms() - i64::from(days) * 86_400_000;
        match store.purge_finished(cutoff).await {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!("hookdock_retention_purged_total").increment(n);
                tracing::info!(purged = n, days, "retention purged finished events");
            }
            Err(error) => tracing::warn!(%error, "retention purge failed; will retry"),
        }
    }
}

/// Keeps GitHub's webhook address ranges current (`GET /meta`): at start, then every `every`;
/// after a failure, again within a minute.
async fn source_ranges_loop(
    guard: Arc<SourceGuard>,
    github: GithubClient,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let wait = match github
            .get::<serde_json::Value>("/meta", "GitHub's address ranges")
            .await
        {
            Ok(meta) => {
                let cidrs: Vec<&str> = meta
                    .get("hooks")
                    .and_then(|h| h.as_array())
                    .map(|list| list.iter().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                let count = guard.set_ranges(&cidrs);
                tracing::info!(ranges = count, "loaded GitHub's webhook address ranges");
                every
            }
            Err(error) => {
                tracing::warn!(%error, "could not load GitHub's webhook address ranges; retrying in a minute");
                Duration::from_secs(60)
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
