//! Which secrets may have signed a delivery. Looked up from headers only (hook id and
//! installation target), so verification happens before the body is parsed.
//!
//! Precedence: secrets of the hook (`X-GitHub-Hook-ID`), else of the repository or organization
//! the hook is installed on (`X-GitHub-Hook-Installation-Target-*`), else the global secret.
//! A scope may hold several secrets at once, which is how a rotation overlaps old and new.
//!
//! Two layers: the secrets from the configuration, fixed at start, and the secrets of the
//! webhooks hookdock manages on GitHub, replaced as a whole whenever they change (install,
//! rotation, or a reload from the database that brings in another instance's changes).
//! A managed hook's secrets take precedence; a managed secret still waiting for its hook id
//! (an install in progress: GitHub pings the hook before the id is known) is tried beside the
//! configured fallback. Managed secrets may carry an expiry (the grace period of a rotation).

use std::collections::HashMap;
use std::sync::RwLock;

use secrecy::{ExposeSecret, SecretString};

use crate::config::Settings;

/// What a hook is installed on, from `X-GitHub-Hook-Installation-Target-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetType {
    Repository,
    Organization,
    Integration,
}

impl TargetType {
    /// The target types hookdock accepts; others (business, marketplace, sponsors) are refused.
    pub fn parse(value: &str) -> Option<TargetType> {
        match value {
            "repository" => Some(TargetType::Repository),
            "organization" => Some(TargetType::Organization),
            "integration" => Some(TargetType::Integration),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TargetType::Repository => "repository",
            TargetType::Organization => "organization",
            TargetType::Integration => "integration",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scope {
    Hook(u64),
    Target(TargetType, u64),
}

/// A secret of a webhook hookdock manages.
#[derive(Clone)]
pub struct ManagedSecret {
    /// `None` while the install that created it has not learnt the hook id yet.
    pub hook_id: Option<u64>,
    pub secret: SecretString,
    /// Unix milliseconds after which it no longer verifies.
    pub valid_until: Option<i64>,
}

#[derive(Default)]
struct Managed {
    by_hook: HashMap<u64, Vec<(SecretString, Option<i64>)>>,
    pending: Vec<(SecretString, Option<i64>)>,
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unverified {
    /// No secret applies to this delivery.
    NoSecret,
    /// None of the applicable secrets produced the signature.
    Mismatch,
}

/// The webhook secrets, indexed by scope.
#[derive(Default)]
pub struct WebhookSecrets {
    global: Option<SecretString>,
    scoped: HashMap<Scope, Vec<SecretString>>,
    managed: RwLock<Managed>,
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSecrets")
            .field("global", &self.global.is_some())
            .field("scopes", &self.scoped.len())
            .field(
                "managed_hooks",
                &self.managed.read().map(|m| m.by_hook.len()).unwrap_or(0),
            )
            .finish()
    }
}

impl WebhookSecrets {
    pub fn from_settings(settings: &Settings) -> WebhookSecrets {
        let mut secrets = WebhookSecrets {
            global: settings.webhook_secret.clone(),
            scoped: HashMap::new(),
            managed: RwLock::default(),
        };
        for s in &settings.webhook_secrets {
            let scope = match (s.hook_id, s.repository_id, s.organization_id) {
                (Some(h), _, _) => Scope::Hook(h),
                (_, Some(r), _) => Scope::Target(TargetType::Repository, r),
                (_, _, Some(o)) => Scope::Target(TargetType::Organization, o),
                // Settings validation guarantees exactly one scope.
                _ => continue,
            };
            secrets
                .scoped
                .entry(scope)
                .or_default()
                .push(s.secret.clone());
        }
        secrets
    }

    /// Replaces the managed layer.
    pub fn set_managed(&self, secrets: Vec<ManagedSecret>) {
        let mut managed = Managed::default();
        for s in secrets {
            let entry = (s.secret, s.valid_until);
            match s.hook_id {
                Some(h) => managed.by_hook.entry(h).or_default().push(entry),
                None => managed.pending.push(entry),
            }
        }
        match self.managed.write() {
            Ok(mut guard) => *guard = managed,
            Err(poisoned) => *poisoned.into_inner() = managed,
        }
    }

    /// Checks `signature` over `body` against every secret that applies, in constant time per
    /// secret. `now` (Unix ms) decides which rotated-out secrets are still in their grace period.
    /// Verified, returns the body's SHA-256, computed in the same pass over the body (see
    /// [`super::digest`]).
    pub fn verify(
        &self,
        hook_id: Option<u64>,
        target: Option<(TargetType, u64)>,
        signature: &super::Signature,
        body: &[u8],
        now: i64,
    ) -> Result<[u8; 32], Unverified> {
        let managed = match self.managed.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        fn live(entry: &(SecretString, Option<i64>), now: i64) -> Option<&[u8]> {
            let (secret, until) = entry;
            until
                .is_none_or(|u| now <= u)
                .then(|| secret.expose_secret().as_bytes())
        }
        if let Some(list) = hook_id.and_then(|h| managed.by_hook.get(&h)) {
            return check(signature, body, list.iter().filter_map(|e| live(e, now)));
        }
        let scoped = hook_id
            .and_then(|h| self.scoped.get(&Scope::Hook(h)))
            .or_else(|| target.and_then(|(t, id)| self.scoped.get(&Scope::Target(t, id))));
        let configured: &[SecretString] = match (scoped, &self.global) {
            (Some(list), _) => list,
            (None, Some(global)) => std::slice::from_ref(global),
            (None, None) => &[],
        };
        let candidates = configured
            .iter()
            .map(|s| s.expose_secret().as_bytes())
            .chain(managed.pending.iter().filter_map(|e| live(e, now)));
        check(signature, body, candidates)
    }
}

/// `NoSecret` when there is nothing to try, else whether one of `candidates` signed `body`;
/// if one did, the body's SHA-256.
fn check<'s>(
    signature: &super::Signature,
    body: &[u8],
    candidates: impl Iterator<Item = &'s [u8]>,
) -> Result<[u8; 32], Unverified> {
    let keys: Vec<&[u8]> = candidates.collect();
    if keys.is_empty() {
        return Err(Unverified::NoSecret);
    }
    signature.verify(body, &keys).ok_or(Unverified::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ScopedSecret, Sources};

    fn settings() -> Settings {
        let mut s = Settings::load(&Sources::default().set("webhook_secret", "global")).unwrap();
        let scoped = |hook_id, repository_id, secret: &str| ScopedSecret {
            hook_id,
            repository_id,
            organization_id: None,
            secret: SecretString::from(secret),
        };
        s.webhook_secrets = vec![
            scoped(Some(1), None, "hook-1"),
            scoped(None, Some(42), "repo-old"),
            scoped(None, Some(42), "repo-new"),
        ];
        s
    }

    const BODY: &[u8] = b"{\"zen\":\"Keep it logically awesome.\"}";

    fn signed_with(secret: &str) -> crate::ingest::Signature {
        crate::ingest::Signature::parse(&crate::ingest::sign(secret.as_bytes(), BODY)).unwrap()
    }

    /// Which of `tried` verify for a delivery from `hook` on `target` at time `now`.
    fn accepted(
        secrets: &WebhookSecrets,
        hook: Option<u64>,
        target: Option<(TargetType, u64)>,
        now: i64,
        tried: &[&str],
    ) -> Vec<String> {
        tried
            .iter()
            .filter(|s| {
                secrets
                    .verify(hook, target, &signed_with(s), BODY, now)
                    .is_ok()
            })
            .map(|s| s.to_string())
            .collect()
    }

    const ALL: &[&str] = &[
        "global", "hook-1", "repo-old", "repo-new", "m-new", "m-old", "pend",
    ];

    #[test]
    fn hook_then_target_then_global() {
        let secrets = WebhookSecrets::from_settings(&settings());
        let repo42 = Some((TargetType::Repository, 42));
        assert_eq!(accepted(&secrets, Some(1), repo42, 0, ALL), ["hook-1"]);
        assert_eq!(
            accepted(&secrets, Some(2), repo42, 0, ALL),
            ["repo-old", "repo-new"]
        );
        let org42 = Some((TargetType::Organization, 42));
        assert_eq!(accepted(&secrets, None, org42, 0, ALL), ["global"]);
        assert_eq!(accepted(&secrets, None, None, 0, ALL), ["global"]);
        assert_eq!(
            WebhookSecrets::default().verify(None, None, &signed_with("x"), BODY, 0),
            Err(Unverified::NoSecret)
        );
        assert_eq!(
            secrets.verify(None, None, &signed_with("nope"), BODY, 0),
            Err(Unverified::Mismatch)
        );
    }

    #[test]
    fn managed_hooks_take_precedence_and_expire() {
        let secrets = WebhookSecrets::from_settings(&settings());
        let managed = |hook_id, secret: &str, valid_until| ManagedSecret {
            hook_id,
            secret: SecretString::from(secret),
            valid_until,
        };
        secrets.set_managed(vec![
            managed(Some(1), "m-new", None),
            managed(Some(1), "m-old", Some(1_000)),
            managed(None, "pend", Some(5_000)),
        ]);
        // Hook 2 is not managed: its configured (repository) secrets still apply.
        assert_eq!(
            accepted(
                &secrets,
                Some(2),
                Some((TargetType::Repository, 42)),
                0,
                ALL
            ),
            ["repo-old", "repo-new", "pend"]
        );
        // The managed hook replaces the configured secret of hook 1; the old one has a grace.
        assert_eq!(
            accepted(&secrets, Some(1), None, 1_000, ALL),
            ["m-new", "m-old"]
        );
        assert_eq!(accepted(&secrets, Some(1), None, 1_001, ALL), ["m-new"]);
        // A hook being installed (id not known yet) verifies with the pending secret.
        assert_eq!(
            accepted(&secrets, Some(9), None, 4_000, ALL),
            ["global", "pend"]
        );
        assert_eq!(accepted(&secrets, Some(9), None, 5_001, ALL), ["global"]);
        // Replacing the layer drops what is gone.
        secrets.set_managed(Vec::new());
        assert_eq!(accepted(&secrets, Some(1), None, 0, ALL), ["hook-1"]);
    }

    #[test]
    fn debug_output_has_no_secret() {
        let secrets = WebhookSecrets::from_settings(&settings());
        let shown = format!("{secrets:?}");
        assert!(
            !shown.contains("global\"") && !shown.contains("repo-new"),
            "{shown}"
        );
    }
}
