//! Which secrets may have signed a delivery. Looked up from headers only (hook id and
//! installation target), so verification happens before the body is parsed.
//!
//! Precedence: secrets of the hook (`X-GitHub-Hook-ID`), else of the repository or organization
//! the hook is installed on (`X-GitHub-Hook-Installation-Target-*`), else the global secret.
//! A scope may hold several secrets at once, which is how a rotation overlaps old and new.

use std::collections::HashMap;

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

/// The configured webhook secrets, indexed by scope.
#[derive(Default)]
pub struct WebhookSecrets {
    global: Option<SecretString>,
    scoped: HashMap<Scope, Vec<SecretString>>,
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSecrets")
            .field("global", &self.global.is_some())
            .field("scopes", &self.scoped.len())
            .finish()
    }
}

impl WebhookSecrets {
    pub fn from_settings(settings: &Settings) -> WebhookSecrets {
        let mut secrets = WebhookSecrets {
            global: settings.webhook_secret.clone(),
            scoped: HashMap::new(),
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

    /// The secrets to try for a delivery; empty when none is configured for it.
    pub fn candidates(
        &self,
        hook_id: Option<u64>,
        target: Option<(TargetType, u64)>,
    ) -> impl Iterator<Item = &[u8]> {
        let scoped = hook_id
            .and_then(|h| self.scoped.get(&Scope::Hook(h)))
            .or_else(|| target.and_then(|(t, id)| self.scoped.get(&Scope::Target(t, id))));
        let list: &[SecretString] = match (scoped, &self.global) {
            (Some(list), _) => list,
            (None, Some(global)) => std::slice::from_ref(global),
            (None, None) => &[],
        };
        list.iter().map(|s| s.expose_secret().as_bytes())
    }
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

    fn names(
        secrets: &WebhookSecrets,
        hook: Option<u64>,
        target: Option<(TargetType, u64)>,
    ) -> Vec<String> {
        secrets
            .candidates(hook, target)
            .map(|s| String::from_utf8(s.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn hook_then_target_then_global() {
        let secrets = WebhookSecrets::from_settings(&settings());
        let repo42 = Some((TargetType::Repository, 42));
        assert_eq!(names(&secrets, Some(1), repo42), ["hook-1"]);
        assert_eq!(names(&secrets, Some(2), repo42), ["repo-old", "repo-new"]);
        assert_eq!(
            names(&secrets, None, Some((TargetType::Organization, 42))),
            ["global"]
        );
        assert_eq!(names(&secrets, None, None), ["global"]);
        assert!(
            WebhookSecrets::default()
                .candidates(None, None)
                .next()
                .is_none()
        );
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
