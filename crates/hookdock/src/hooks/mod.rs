//! hookdock's own webhooks on GitHub: install (or adopt, or repair), remove, rotate secrets,
//! ping, check that they still exist, and recover deliveries GitHub failed to hand over.
//!
//! Secrets are generated here (32 random bytes), sealed with the key ring before they reach the
//! store, and published to the ingest path's [`WebhookSecrets`] before GitHub can use them:
//! an install stores its secret first (GitHub pings a new hook at once), and a rotation keeps
//! the previous secret valid for a grace period so deliveries in flight still verify.
//! Everything here talks to GitHub through [`GithubClient`] and knows nothing of HTTP servers.

mod sweep;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rand::RngCore;
use secrecy::SecretString;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use sweep::{RedeliveryPlan, plan_redeliveries};

use crate::clock::Clock;
use crate::config::{HookSettings, Settings};
use crate::crypto::{CryptoError, KeyRing, load_key_ring};
use crate::github::{
    Github, GithubClient, GithubConfig, GithubError, HookDelivery, HookScope, HookSpec,
};
use crate::ingest::{ManagedSecret, WebhookSecrets};
use crate::store::{
    HookRegistration, LastDelivery, LastEvent, RegistrationUpdate, Store, StoreError,
};

/// The path GitHub posts deliveries to, below the public URL.
pub const WEBHOOK_PATH: &str = "/api/v1/webhooks/github";

/// How long the secret of an install in progress verifies before the hook id is known.
const PENDING_SECRET_TTL_MS: i64 = 15 * 60 * 1000;
/// Sweeps look this far before the previous sweep, for deliveries GitHub listed late.
const SWEEP_OVERLAP_MS: i64 = 5 * 60 * 1000;
/// How often hookdock asks for one delivery guid before giving up on it.
const MAX_REDELIVERY_REQUESTS: i64 = 3;
/// Newest deliveries read per hook and sweep.
const MAX_DELIVERIES_PER_SWEEP: usize = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error(
        "public_url (HOOKDOCK_PUBLIC_URL) is not set: GitHub needs the address it reaches hookdock at, e.g. https://hooks.example.com"
    )]
    NoPublicUrl,
    #[error(
        "no GitHub token: set HOOKDOCK_GITHUB_TOKEN (a classic token with the admin:repo_hook and repo scopes, admin:org_hook for organizations, or a fine-grained token with Webhooks read and write), or sign in: `gh auth login` for the CLI, /auth/github/login for the API"
    )]
    NoToken,
    #[error(
        "no key to seal webhook secrets: set secret_key (HOOKDOCK_SECRET_KEY, 32 random bytes as base64, e.g. from `openssl rand -base64 32`); every instance sharing the database needs the same key"
    )]
    NoKey,
    #[error("{0} is not tracked by hookdock; install its webhook first")]
    NotTracked(String),
    #[error("{0} has no webhook on GitHub yet; install it first")]
    NotInstalled(String),
    #[error(
        "{name:?} is not a valid {kind} name: use owner/repo for a repository and the login for an organization"
    )]
    BadName { kind: &'static str, name: String },
    #[error(transparent)]
    Github(#[from] GithubError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// What [`HookManager::install`] did on GitHub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstallAction {
    /// A new webhook was created.
    Created,
    /// A webhook with hookdock's URL existed (GitHub answered 422) and was taken over.
    Adopted,
    /// The webhook hookdock already tracked was updated in place.
    Repaired,
}

/// A tracked repository or organization as the API and CLI show it. Never holds a secret.
#[derive(Debug, Clone, Serialize)]
pub struct HookStatus {
    pub scope: String,
    pub name: String,
    pub hook_id: Option<i64>,
    pub url: String,
    pub events: Vec<String>,
    /// `pending`, `registered`, `failed`, `missing` (deleted on GitHub) or `disabled`.
    pub status: String,
    pub last_error: Option<String>,
    /// The newest delivery GitHub reported at the last check or sweep.
    pub last_delivery: Option<LastDelivery>,
    /// The newest event hookdock stored from its hook.
    pub last_event: Option<LastEvent>,
    #[serde(serialize_with = "ser_opt_time")]
    pub secret_rotated_at: Option<i64>,
    #[serde(serialize_with = "ser_opt_time")]
    pub checked_at: Option<i64>,
    #[serde(serialize_with = "ser_opt_time")]
    pub swept_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstallOutcome {
    pub action: InstallAction,
    pub hook: HookStatus,
}

#[derive(Debug, Clone, Serialize)]
pub struct UninstallOutcome {
    pub scope: String,
    pub name: String,
    pub hook_id: Option<i64>,
    /// Things that did not stop the removal (e.g. the hook was already gone on GitHub).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RotateOutcome {
    pub scope: String,
    pub name: String,
    pub hook_id: i64,
    /// Until when deliveries signed with the previous secret still verify.
    #[serde(serialize_with = "crate::store::ser_time")]
    pub previous_valid_until: i64,
}

/// One redelivery asked for by a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct Redelivered {
    pub scope: String,
    pub name: String,
    pub hook_id: i64,
    pub guid: String,
    pub event: String,
    pub delivery_id: u64,
}

/// What a sweep found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SweepReport {
    pub hooks_swept: usize,
    pub deliveries_seen: usize,
    /// Guids with no successful attempt that hookdock already had (nothing to do).
    pub failed_but_stored: usize,
    pub redelivered: Vec<Redelivered>,
    /// Hooks that could not be swept, with why.
    pub errors: Vec<String>,
}

/// Where the webhooks point and how they are kept.
#[derive(Debug, Clone)]
pub struct HookOptions {
    pub public_url: Option<String>,
    pub settings: HookSettings,
}

/// Manages hookdock's webhooks. Cheap to clone.
#[derive(Clone)]
pub struct HookManager {
    inner: Arc<Inner>,
    /// A signed-in user's token, preferred over the configured one.
    acting_as: Option<SecretString>,
}

struct Inner {
    store: Store,
    github: Github,
    token: Option<SecretString>,
    keys: Option<Arc<KeyRing>>,
    secrets: Arc<WebhookSecrets>,
    options: HookOptions,
    clock: Arc<dyn Clock>,
}

impl HookManager {
    pub fn new(
        store: Store,
        github: Github,
        token: Option<SecretString>,
        keys: Option<Arc<KeyRing>>,
        secrets: Arc<WebhookSecrets>,
        options: HookOptions,
        clock: Arc<dyn Clock>,
    ) -> HookManager {
        HookManager {
            inner: Arc::new(Inner {
                store,
                github,
                token,
                keys,
                secrets,
                options,
                clock,
            }),
            acting_as: None,
        }
    }

    /// The same manager acting on GitHub with a signed-in user's token (when given) instead
    /// of the configured one.
    pub fn acting_as(&self, user_token: Option<SecretString>) -> HookManager {
        HookManager {
            inner: Arc::clone(&self.inner),
            acting_as: user_token.or_else(|| self.acting_as.clone()),
        }
    }

    /// The manager for these settings: GitHub at `github_api_url` with `github_token`, secrets
    /// sealed by the key ring of [`crate::crypto::load_key_ring`].
    pub fn from_settings(
        settings: &Settings,
        store: Store,
        secrets: Arc<WebhookSecrets>,
        clock: Arc<dyn Clock>,
    ) -> Result<HookManager, HookError> {
        let github = Github::new(GithubConfig::from_settings(settings), Arc::clone(&clock))?;
        let keys = load_key_ring(settings)?.map(|(ring, _)| Arc::new(ring));
        Ok(HookManager::with_parts(
            settings, store, github, keys, secrets, clock,
        ))
    }

    /// Like [`HookManager::from_settings`], with the GitHub client and key ring given.
    pub fn with_parts(
        settings: &Settings,
        store: Store,
        github: Github,
        keys: Option<Arc<KeyRing>>,
        secrets: Arc<WebhookSecrets>,
        clock: Arc<dyn Clock>,
    ) -> HookManager {
        HookManager::new(
            store,
            github,
            settings.github_token.clone(),
            keys,
            secrets,
            HookOptions {
                public_url: settings.public_url.clone(),
                settings: HookSettings {
                    redelivery_window_hours: settings.redelivery_window_hours(),
                    ..settings.hooks.clone()
                },
            },
            clock,
        )
    }

    /// The URL installed webhooks point at.
    pub fn hook_url(&self) -> Result<String, HookError> {
        let base = self
            .inner
            .options
            .public_url
            .as_deref()
            .ok_or(HookError::NoPublicUrl)?;
        Ok(format!("{}{WEBHOOK_PATH}", base.trim_end_matches('/')))
    }

    fn keys(&self) -> Result<&KeyRing, HookError> {
        self.inner.keys.as_deref().ok_or(HookError::NoKey)
    }

    /// A GitHub client acting with the signed-in user's token, else the configured one.
    pub fn client(&self) -> Result<GithubClient, HookError> {
        let token = self
            .acting_as
            .clone()
            .or_else(|| self.inner.token.clone())
            .ok_or(HookError::NoToken)?;
        Ok(self.inner.github.client(Some(token)))
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.inner.clock)
    }

    fn now_ms(&self) -> i64 {
        self.inner
            .clock
            .now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    fn grace_ms(&self) -> i64 {
        i64::try_from(self.inner.options.settings.rotation_grace_secs)
            .unwrap_or(i64::MAX / 2_000)
            .saturating_mul(1_000)
    }

    /// Reads every managed secret from the store and publishes them to the ingest path.
    /// Called after each change here, and periodically to pick up other instances' changes.
    pub async fn refresh_secrets(&self) -> Result<usize, HookError> {
        let Some(keys) = self.inner.keys.as_deref() else {
            return Ok(0);
        };
        let registrations = self.inner.store.hook_registrations().await?;
        let mut managed = Vec::new();
        for r in &registrations {
            let context = secret_context(&r.scope, &r.name);
            let hook_id = r.hook_id.and_then(|h| u64::try_from(h).ok());
            // An install that has not learnt its hook id yet verifies for a while by itself.
            let pending_until = hook_id
                .is_none()
                .then_some(r.updated_at + PENDING_SECRET_TTL_MS);
            if let Some(sealed) = &r.secret {
                managed.push(ManagedSecret {
                    hook_id,
                    secret: keys.open(sealed, &context)?,
                    valid_until: pending_until,
                });
            }
            if let (Some(sealed), Some(until)) = (&r.old_secret, r.old_secret_until) {
                managed.push(ManagedSecret {
                    hook_id,
                    secret: keys.open(sealed, &context)?,
                    valid_until: Some(until),
                });
            }
        }
        let count = managed.len();
        self.inner.secrets.set_managed(managed);
        Ok(count)
    }

    /// Creates hookdock's webhook on a repository or organization, adopts the one GitHub says
    /// already exists at hookdock's URL, or repairs the one hookdock tracks.
    pub async fn install(&self, scope: &HookScope) -> Result<InstallOutcome, HookError> {
        validate_scope(scope)?;
        let url = self.hook_url()?;
        let keys = self.keys()?;
        let client = self.client()?;
        let store = &self.inner.store;
        let (kind, name) = (scope.kind(), scope.name());
        let events = self.inner.options.settings.events.clone();

        let target_id = match scope {
            HookScope::Repository { owner, repo } => client
                .repository(owner, repo)
                .await
                .ok()
                .and_then(|r| i64::try_from(r.id).ok()),
            HookScope::Organization { .. } => None,
        };
        let existing = store.hook_registration(kind, &name).await?;
        let secret = new_secret();
        let sealed = keys.seal_str(&secret, &secret_context(kind, &name));

        // The secret is stored and published before GitHub learns it: a new hook is pinged at
        // once, and a repaired one may deliver before this call returns.
        let pending = store
            .save_hook_registration(&RegistrationUpdate {
                scope: kind,
                name: &name,
                target_id,
                hook_id: existing.as_ref().and_then(|r| r.hook_id),
                url: &url,
                events: &events,
                status: "pending",
                secret: Some(&sealed),
                last_error: None,
            })
            .await?;
        if let Some(previous) = existing.as_ref().and_then(|r| r.secret.as_ref()) {
            let until = self.now_ms() + self.grace_ms();
            store
                .rotate_hook_secret(pending.id, &sealed, Some(previous), until)
                .await?;
        }
        self.refresh_secrets().await?;

        let spec = HookSpec {
            url: &url,
            secret: &secret,
            events: &events,
        };
        let result = self
            .put_hook(&client, scope, pending.hook_id, &url, &spec)
            .await;
        let (action, hook) = match result {
            Ok(done) => done,
            Err(e) => {
                store
                    .set_hook_status(pending.id, "failed", Some(&e.to_string()), None)
                    .await?;
                return Err(e);
            }
        };
        let saved = store
            .save_hook_registration(&RegistrationUpdate {
                scope: kind,
                name: &name,
                target_id,
                hook_id: i64::try_from(hook.id).ok(),
                url: &url,
                events: if hook.events.is_empty() {
                    &events
                } else {
                    &hook.events
                },
                status: if hook.active {
                    "registered"
                } else {
                    "disabled"
                },
                secret: None,
                last_error: None,
            })
            .await?;
        self.refresh_secrets().await?;
        tracing::info!(
            scope = kind,
            name,
            hook_id = hook.id,
            ?action,
            "webhook installed"
        );
        Ok(InstallOutcome {
            action,
            hook: self.status_of(saved).await?,
        })
    }

    async fn put_hook(
        &self,
        client: &GithubClient,
        scope: &HookScope,
        known: Option<i64>,
        url: &str,
        spec: &HookSpec<'_>,
    ) -> Result<(InstallAction, crate::github::Hook), HookError> {
        if let Some(id) = known.and_then(|h| u64::try_from(h).ok()) {
            match client.update_hook(scope, id, spec).await {
                Ok(hook) => return Ok((InstallAction::Repaired, hook)),
                Err(e) if e.is_not_found() => {
                    tracing::info!(hook_id = id, name = %scope.name(), "tracked webhook is gone on GitHub; creating it again");
                }
                Err(e) => return Err(e.into()),
            }
        }
        match client.create_hook(scope, spec).await {
            Ok(hook) => Ok((InstallAction::Created, hook)),
            Err(GithubError::Validation {
                what,
                message,
                errors,
            }) if errors
                .iter()
                .chain(std::iter::once(&message))
                .any(|m| m.contains("already exists")) =>
            {
                let found = client
                    .list_hooks(scope)
                    .await?
                    .into_iter()
                    .find(|h| h.config.url.as_deref() == Some(url));
                let Some(existing) = found else {
                    return Err(GithubError::Validation {
                        what,
                        message,
                        errors,
                    }
                    .into());
                };
                let hook = client.update_hook(scope, existing.id, spec).await?;
                Ok((InstallAction::Adopted, hook))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes hookdock's webhook and stops tracking. A hook already gone on GitHub is a
    /// warning, not a failure.
    pub async fn uninstall(&self, scope: &HookScope) -> Result<UninstallOutcome, HookError> {
        validate_scope(scope)?;
        let (kind, name) = (scope.kind(), scope.name());
        let registration = self
            .inner
            .store
            .hook_registration(kind, &name)
            .await?
            .ok_or_else(|| HookError::NotTracked(name.clone()))?;
        let mut warnings = Vec::new();
        if let Some(id) = registration.hook_id.and_then(|h| u64::try_from(h).ok()) {
            match self.client()?.delete_hook(scope, id).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {
                    let warning = format!(
                        "webhook {id} was already gone from {name} on GitHub (or the token cannot see it); stopped tracking it all the same"
                    );
                    tracing::warn!("{warning}");
                    warnings.push(warning);
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.inner
            .store
            .delete_hook_registration(registration.id)
            .await?;
        self.refresh_secrets().await?;
        tracing::info!(scope = kind, name, "webhook removed");
        Ok(UninstallOutcome {
            scope: kind.to_owned(),
            name,
            hook_id: registration.hook_id,
            warnings,
        })
    }

    /// Gives the webhook a new secret; the previous one verifies for the grace period.
    pub async fn rotate_secret(&self, scope: &HookScope) -> Result<RotateOutcome, HookError> {
        validate_scope(scope)?;
        let registration = self.tracked(scope).await?;
        let hook_id = registration
            .hook_id
            .ok_or_else(|| HookError::NotInstalled(registration.name.clone()))?;
        let github_id =
            u64::try_from(hook_id).map_err(|_| HookError::NotInstalled(scope.name()))?;
        self.rotate(scope, &registration, github_id).await
    }

    async fn rotate(
        &self,
        scope: &HookScope,
        registration: &HookRegistration,
        github_id: u64,
    ) -> Result<RotateOutcome, HookError> {
        let keys = self.keys()?;
        let client = self.client()?;
        let store = &self.inner.store;
        let secret = new_secret();
        let sealed = keys.seal_str(
            &secret,
            &secret_context(&registration.scope, &registration.name),
        );
        let until = self.now_ms() + self.grace_ms();
        let previous = registration.secret.as_ref();
        // Both secrets verify from here on; GitHub switches when the PATCH lands.
        store
            .rotate_hook_secret(registration.id, &sealed, previous, until)
            .await?;
        self.refresh_secrets().await?;
        if let Err(e) = client
            .set_hook_secret(scope, github_id, &registration.url, &secret)
            .await
        {
            // GitHub kept the previous secret: make it current again. The new one stays
            // accepted for the grace period in case the change landed after all.
            if let Some(previous) = previous {
                store
                    .rotate_hook_secret(registration.id, previous, Some(&sealed), until)
                    .await?;
            }
            self.refresh_secrets().await?;
            return Err(e.into());
        }
        tracing::info!(scope = %registration.scope, name = %registration.name, hook_id = github_id, "webhook secret rotated");
        Ok(RotateOutcome {
            scope: registration.scope.clone(),
            name: registration.name.clone(),
            hook_id: registration.hook_id.unwrap_or_default(),
            previous_valid_until: until,
        })
    }

    /// Rotates every secret older than `rotation_interval_days` (0 turns this off).
    pub async fn rotate_due(&self) -> Result<Vec<RotateOutcome>, HookError> {
        let days = self.inner.options.settings.rotation_interval_days;
        if days == 0 {
            return Ok(Vec::new());
        }
        let cutoff = self.now_ms() - i64::try_from(days).unwrap_or(0) * 86_400_000;
        let mut done = Vec::new();
        for r in self.inner.store.hook_registrations().await? {
            let Some(github_id) = r.hook_id.and_then(|h| u64::try_from(h).ok()) else {
                continue;
            };
            if r.status != "registered" || r.rotated_at.unwrap_or(r.created_at) > cutoff {
                continue;
            }
            let scope = scope_of(&r)?;
            match self.rotate(&scope, &r, github_id).await {
                Ok(outcome) => done.push(outcome),
                Err(error) => {
                    tracing::warn!(name = %r.name, %error, "scheduled secret rotation failed; will retry");
                }
            }
        }
        Ok(done)
    }

    /// Asks GitHub to send the hook a `ping`.
    pub async fn ping(&self, scope: &HookScope) -> Result<HookStatus, HookError> {
        validate_scope(scope)?;
        let registration = self.tracked(scope).await?;
        let hook_id = registration
            .hook_id
            .and_then(|h| u64::try_from(h).ok())
            .ok_or_else(|| HookError::NotInstalled(registration.name.clone()))?;
        self.client()?.ping_hook(scope, hook_id).await?;
        self.status_of(registration).await
    }

    /// Every tracked repository and organization with its hook's status.
    pub async fn list(&self) -> Result<Vec<HookStatus>, HookError> {
        let mut out = Vec::new();
        for r in self.inner.store.hook_registrations().await? {
            out.push(self.status_of(r).await?);
        }
        Ok(out)
    }

    pub async fn status(&self, scope: &HookScope) -> Result<HookStatus, HookError> {
        let registration = self.tracked(scope).await?;
        self.status_of(registration).await
    }

    async fn tracked(&self, scope: &HookScope) -> Result<HookRegistration, HookError> {
        self.inner
            .store
            .hook_registration(scope.kind(), &scope.name())
            .await?
            .ok_or_else(|| HookError::NotTracked(scope.name()))
    }

    async fn status_of(&self, r: HookRegistration) -> Result<HookStatus, HookError> {
        let last_event = match r.hook_id {
            Some(hook_id) => self.inner.store.last_event(hook_id).await?,
            None => None,
        };
        Ok(HookStatus {
            scope: r.scope,
            name: r.name,
            hook_id: r.hook_id,
            url: r.url,
            events: r.events,
            status: r.status,
            last_error: r.last_error,
            last_delivery: r.last_delivery,
            last_event,
            secret_rotated_at: r.rotated_at,
            checked_at: r.checked_at,
            swept_at: r.swept_at,
        })
    }

    /// Looks at every tracked hook on GitHub: deleted ones become `missing`, inactive ones
    /// `disabled`, ones pointing elsewhere `failed`; `install` repairs all three.
    pub async fn check_all(&self) -> Result<Vec<HookStatus>, HookError> {
        let client = self.client()?;
        let store = &self.inner.store;
        let url = self.hook_url().ok();
        for r in store.hook_registrations().await? {
            let Some(id) = r.hook_id.and_then(|h| u64::try_from(h).ok()) else {
                continue;
            };
            let scope = scope_of(&r)?;
            match client.get_hook(&scope, id).await {
                Ok(hook) => {
                    let points_at = hook.config.url.clone().unwrap_or_default();
                    let expected = url.as_deref().unwrap_or(&r.url);
                    let (status, error) = if points_at != expected {
                        (
                            "failed",
                            Some(format!(
                                "the webhook points at {points_at}, not {expected}; run install again to repair it"
                            )),
                        )
                    } else if !hook.active {
                        (
                            "disabled",
                            Some(
                                "the webhook is disabled on GitHub; run install again to enable it"
                                    .to_owned(),
                            ),
                        )
                    } else {
                        ("registered", None)
                    };
                    let last = match client.hook_deliveries(&scope, id, 0, 1).await {
                        Ok(list) => list.first().and_then(last_delivery),
                        Err(error) => {
                            tracing::debug!(%error, hook_id = id, "could not read the newest delivery");
                            None
                        }
                    };
                    store
                        .set_hook_status(r.id, status, error.as_deref(), last.as_ref())
                        .await?;
                }
                Err(e) if e.is_not_found() => {
                    tracing::warn!(name = %r.name, hook_id = id, "webhook is gone on GitHub");
                    store
                        .set_hook_status(
                            r.id,
                            "missing",
                            Some("the webhook was deleted on GitHub; run install again to recreate it"),
                            None,
                        )
                        .await?;
                }
                Err(e) => {
                    tracing::warn!(name = %r.name, hook_id = id, error = %e, "webhook check failed");
                    store
                        .set_hook_status(r.id, &r.status, Some(&e.to_string()), None)
                        .await?;
                }
            }
        }
        self.list().await
    }

    /// Asks GitHub to redeliver every delivery of the tracked hooks that failed, that hookdock
    /// does not have, and that is still inside GitHub's redelivery window. Without `since`, each
    /// hook is read from its previous sweep on.
    pub async fn sweep(&self, since: Option<Duration>) -> Result<SweepReport, HookError> {
        let client = self.client()?;
        let store = &self.inner.store;
        let now = self.now_ms();
        let window_hours =
            i64::try_from(self.inner.options.settings.redelivery_window_hours).unwrap_or(72);
        let window_start = now - window_hours * 3_600_000;
        let mut report = SweepReport::default();
        for r in store.hook_registrations().await? {
            let Some(hook_id) = r.hook_id.and_then(|h| u64::try_from(h).ok()) else {
                continue;
            };
            if r.status == "missing" {
                continue;
            }
            let scope = scope_of(&r)?;
            let from = match since {
                Some(d) => now - i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2),
                None => r.swept_at.unwrap_or(r.created_at) - SWEEP_OVERLAP_MS,
            }
            .max(window_start);
            let deliveries = match client
                .hook_deliveries(&scope, hook_id, from / 1_000, MAX_DELIVERIES_PER_SWEEP)
                .await
            {
                Ok(list) => list,
                Err(e) => {
                    report
                        .errors
                        .push(format!("{} (webhook {hook_id}): {e}", r.name));
                    continue;
                }
            };
            report.hooks_swept += 1;
            report.deliveries_seen += deliveries.len();
            let plans = plan_redeliveries(&deliveries, window_start);
            let guids: Vec<String> = plans.iter().map(|p| p.guid.clone()).collect();
            let stored = store.stored_delivery_ids(&guids).await?;
            for plan in plans {
                if stored.contains(&plan.guid) {
                    report.failed_but_stored += 1;
                    continue;
                }
                let claimed = store
                    .claim_redelivery(
                        r.id,
                        &plan.guid,
                        i64::try_from(plan.delivery_id).unwrap_or(i64::MAX),
                        &plan.event,
                        plan.last_failed_at,
                        MAX_REDELIVERY_REQUESTS,
                    )
                    .await?;
                if !claimed {
                    continue;
                }
                match client.redeliver(&scope, hook_id, plan.delivery_id).await {
                    Ok(()) => {
                        metrics::counter!("hookdock_redeliveries_requested_total").increment(1);
                        tracing::info!(name = %r.name, guid = %plan.guid, event = %plan.event, "asked GitHub to redeliver a failed delivery");
                        report.redelivered.push(Redelivered {
                            scope: r.scope.clone(),
                            name: r.name.clone(),
                            hook_id: i64::try_from(hook_id).unwrap_or_default(),
                            guid: plan.guid,
                            event: plan.event,
                            delivery_id: plan.delivery_id,
                        });
                    }
                    Err(e) => report.errors.push(format!(
                        "{}: redelivery of {} failed: {e}",
                        r.name, plan.guid
                    )),
                }
            }
            if let Some(newest) = deliveries.first().and_then(last_delivery) {
                store
                    .set_hook_status(r.id, &r.status, r.last_error.as_deref(), Some(&newest))
                    .await?;
            }
            store.set_hook_swept(r.id, now).await?;
        }
        Ok(report)
    }

    /// Background upkeep until `shutdown`: reloads secrets (other instances' changes), sweeps
    /// for failed deliveries, checks the hooks and rotates secrets when they are due.
    pub async fn run(self, shutdown: CancellationToken) {
        let settings = self.inner.options.settings.clone();
        let every = |secs: u64| {
            let mut t = tokio::time::interval(Duration::from_secs(secs.max(1)));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        };
        let mut reload = every(settings.reload_secs);
        let mut sweep = every(settings.sweep_interval_secs);
        let mut check = every(settings.check_interval_secs);
        let mut rotation = every(3_600);
        let github_ready = self.inner.token.is_some() && self.inner.keys.is_some();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = reload.tick() => {
                    if let Err(error) = self.refresh_secrets().await {
                        tracing::warn!(%error, "could not reload webhook secrets");
                    }
                }
                _ = sweep.tick(), if github_ready && settings.sweep_interval_secs > 0 => {
                    match self.sweep(None).await {
                        Ok(report) => {
                            for e in &report.errors {
                                tracing::warn!(error = %e, "redelivery sweep");
                            }
                        }
                        Err(error) => tracing::warn!(%error, "redelivery sweep failed"),
                    }
                }
                _ = check.tick(), if github_ready && settings.check_interval_secs > 0 => {
                    if let Err(error) = self.check_all().await {
                        tracing::warn!(%error, "webhook check failed");
                    }
                }
                _ = rotation.tick(), if github_ready => {
                    if let Err(error) = self.rotate_due().await {
                        tracing::warn!(%error, "scheduled secret rotation failed");
                    }
                }
            }
        }
    }
}

/// What `hookdock rotate-key` did.
#[derive(Debug, Clone, Serialize)]
pub struct KeyRotation {
    /// Id of the key everything is sealed with now.
    pub key_id: String,
    /// Sealed values rewritten under it.
    pub resealed: usize,
    /// The key file that now holds a newly generated key (embedded installs), if any.
    pub key_file: Option<String>,
}

/// Reseals every stored secret under the current key. With `secret_key` set, the operator has
/// put the new key there and the previous one in `secret_old_keys`; with a key file (embedded
/// install) a new key is generated, and the file keeps the old one until everything is resealed.
pub async fn rotate_key(settings: &Settings, store: &Store) -> Result<KeyRotation, HookError> {
    let (ring, source) = load_key_ring(settings)?.ok_or(HookError::NoKey)?;
    match source {
        crate::crypto::KeySource::Setting => Ok(KeyRotation {
            key_id: ring.current_key_id().to_owned(),
            resealed: reseal_all(store, &ring).await?,
            key_file: None,
        }),
        crate::crypto::KeySource::File(path) => {
            let ring = crate::crypto::rotate_key_file(&path, &settings.secret_old_keys)?;
            let resealed = reseal_all(store, &ring).await?;
            crate::crypto::finish_key_file_rotation(&path)?;
            Ok(KeyRotation {
                key_id: ring.current_key_id().to_owned(),
                resealed,
                key_file: Some(path.display().to_string()),
            })
        }
    }
}

/// Reseals webhook secrets and session tokens under the current key.
async fn reseal_all(store: &Store, keys: &KeyRing) -> Result<usize, HookError> {
    let reseal = |sealed: &crate::crypto::Sealed, context: &str| {
        if sealed.key_id == keys.current_key_id() {
            return Ok(None);
        }
        let plain = keys.open(sealed, context).map_err(|e| e.to_string())?;
        Ok(Some(keys.seal_str(&plain, context)))
    };
    let secrets = store
        .reseal_hook_secrets(|r, sealed, _column| {
            reseal(sealed, &secret_context(&r.scope, &r.name))
        })
        .await?;
    let tokens = store
        .reseal_session_tokens(|id_hash, sealed| {
            reseal(sealed, &crate::auth::token_context(id_hash))
        })
        .await?;
    Ok(secrets + tokens)
}

/// A fresh webhook secret: 32 random bytes, hex.
fn new_secret() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    SecretString::from(hex::encode(bytes))
}

/// What a webhook secret is bound to when sealed: its row, not its column, so a rotation can
/// move the current value into the previous slot.
fn secret_context(scope: &str, name: &str) -> String {
    format!("webhook-secret:{scope}:{name}")
}

fn scope_of(r: &HookRegistration) -> Result<HookScope, HookError> {
    match (r.scope.as_str(), r.name.split_once('/')) {
        ("repository", Some((owner, repo))) => Ok(HookScope::repository(owner, repo)),
        ("organization", None) => Ok(HookScope::organization(&r.name)),
        _ => Err(HookError::Store(StoreError::Corrupt(format!(
            "hook_registrations row {} has scope {:?} and name {:?}",
            r.id, r.scope, r.name
        )))),
    }
}

/// Names GitHub accepts: letters, digits, `-`, `_`, `.`; no path tricks.
fn validate_scope(scope: &HookScope) -> Result<(), HookError> {
    let ok = |part: &str| {
        !part.is_empty()
            && part.len() <= 100
            && part != "."
            && part != ".."
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    let valid = match scope {
        HookScope::Repository { owner, repo } => ok(owner) && ok(repo),
        HookScope::Organization { org } => ok(org),
    };
    if valid {
        Ok(())
    } else {
        Err(HookError::BadName {
            kind: scope.kind(),
            name: scope.name(),
        })
    }
}

/// Parses `owner/repo`.
pub fn parse_repository(text: &str) -> Result<HookScope, HookError> {
    let scope = match text.split_once('/') {
        Some((owner, repo)) => HookScope::repository(owner, repo),
        None => {
            return Err(HookError::BadName {
                kind: "repository",
                name: text.to_owned(),
            });
        }
    };
    validate_scope(&scope)?;
    Ok(scope)
}

fn last_delivery(d: &HookDelivery) -> Option<LastDelivery> {
    Some(LastDelivery {
        at: d.delivered_at_ms()?,
        code: d.status_code,
        status: d.status.clone(),
    })
}

fn ser_opt_time<S: serde::Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_str(&crate::store::rfc3339(*ms)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_they_reach_a_url() {
        assert!(parse_repository("octo-org/hello.world_2").is_ok());
        for bad in [
            "octo", "octo/", "/repo", "a/b/c", "../x", "octo/..", "o o/r", "o/r?x=1",
        ] {
            let err = parse_repository(bad).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains("owner/repo")),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn secrets_are_fresh_and_long() {
        use secrecy::ExposeSecret;
        let (a, b) = (new_secret(), new_secret());
        assert_eq!(a.expose_secret().len(), 64);
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
