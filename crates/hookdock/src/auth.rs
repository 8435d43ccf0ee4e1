//! Signing in with GitHub (OAuth web flow) and the sessions it starts.
//!
//! `begin` keeps a random `state` (its hash, for ten minutes, used once) and returns GitHub's
//! authorize URL; `finish` checks the state, exchanges the code for the user's token, checks
//! the login against `auth.allowed_users`, seals the token and starts a session whose id only
//! the cookie holds (the database keeps its SHA-256). A session's token is what hookdock acts
//! with on GitHub for that user; the configured token is the fallback. No HTTP framework here.

use std::sync::Arc;

use rand::RngCore;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use crate::config::Settings;
use crate::crypto::{CryptoError, KeyRing};
use crate::github::{Github, GithubError, authorize_url};
use crate::store::{SessionRow, Store, StoreError, now_ms};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "hookdock_session";
/// Scopes asked for: managing repository and organization webhooks, reading private repos.
pub const OAUTH_SCOPES: &str = "admin:repo_hook admin:org_hook repo";
const STATE_TTL_MS: i64 = 10 * 60 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "sign-in with GitHub is not configured: set HOOKDOCK_GITHUB_CLIENT_ID, HOOKDOCK_GITHUB_CLIENT_SECRET, HOOKDOCK_PUBLIC_URL and a secret key"
    )]
    NotConfigured,
    #[error(
        "the sign-in link expired or was already used (state unknown); start again at /auth/github/login"
    )]
    BadState,
    #[error("GitHub did not sign you in: {0}")]
    Denied(String),
    #[error(
        "GitHub user {0} may not sign in to this hookdock; an operator can add the login to auth.allowed_users (HOOKDOCK_AUTH__ALLOWED_USERS)"
    )]
    NotAllowed(String),
    #[error(transparent)]
    Github(#[from] GithubError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// A signed-in user, as the API sees them.
#[derive(Clone)]
pub struct SessionUser {
    pub login: String,
    pub user_id: i64,
    pub token: SecretString,
}

impl std::fmt::Debug for SessionUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionUser")
            .field("login", &self.login)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// A session that was just started: the cookie value and how long it lasts.
pub struct NewSession {
    pub cookie_value: SecretString,
    pub max_age_secs: u64,
    pub login: String,
}

struct OauthApp {
    client_id: String,
    client_secret: SecretString,
    web_url: String,
    callback_url: String,
}

#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    github: Github,
    keys: Option<Arc<KeyRing>>,
    app: Option<OauthApp>,
    allowed: Vec<String>,
    session_ms: i64,
    /// Cookies get `Secure` when hookdock is served over HTTPS.
    secure_cookies: bool,
}

impl Auth {
    pub fn new(
        settings: &Settings,
        store: Store,
        github: Github,
        keys: Option<Arc<KeyRing>>,
    ) -> Auth {
        let app = match (
            &settings.github_client_id,
            &settings.github_client_secret,
            &settings.public_url,
        ) {
            (Some(id), Some(secret), Some(public)) => Some(OauthApp {
                client_id: id.clone(),
                client_secret: secret.clone(),
                web_url: settings.github_web_url(),
                callback_url: format!("{}/auth/github/callback", public.trim_end_matches('/')),
            }),
            _ => None,
        };
        Auth {
            inner: Arc::new(Inner {
                store,
                github,
                keys,
                app,
                allowed: settings
                    .auth
                    .allowed_users
                    .iter()
                    .map(|u| u.to_ascii_lowercase())
                    .collect(),
                session_ms: i64::try_from(settings.auth.session_hours)
                    .unwrap_or(24)
                    .saturating_mul(3_600_000),
                secure_cookies: served_over_https(settings),
            }),
        }
    }

    pub fn secure_cookies(&self) -> bool {
        self.inner.secure_cookies
    }

    fn configured(&self) -> Result<(&OauthApp, &KeyRing), AuthError> {
        match (&self.inner.app, self.inner.keys.as_deref()) {
            (Some(app), Some(keys)) => Ok((app, keys)),
            _ => Err(AuthError::NotConfigured),
        }
    }

    /// Starts a sign-in: remembers a fresh state and returns where to send the browser.
    pub async fn begin(&self) -> Result<String, AuthError> {
        let (app, _) = self.configured()?;
        let state = random_token();
        self.inner.store.put_oauth_state(&digest(&state)).await?;
        Ok(authorize_url(
            &app.web_url,
            &app.client_id,
            &app.callback_url,
            &state,
            OAUTH_SCOPES,
        ))
    }

    /// Completes a sign-in from GitHub's callback parameters.
    pub async fn finish(
        &self,
        code: Option<&str>,
        state: Option<&str>,
        error: Option<&str>,
    ) -> Result<NewSession, AuthError> {
        let (app, keys) = self.configured()?;
        let state = state.filter(|s| !s.is_empty()).ok_or(AuthError::BadState)?;
        if !self
            .inner
            .store
            .take_oauth_state(&digest(state), now_ms() - STATE_TTL_MS)
            .await?
        {
            return Err(AuthError::BadState);
        }
        if let Some(error) = error {
            return Err(AuthError::Denied(error.to_owned()));
        }
        let code = code
            .filter(|c| !c.is_empty())
            .ok_or_else(|| AuthError::Denied("the callback carried no code".into()))?;
        let token = self
            .inner
            .github
            .exchange_oauth_code(
                &app.web_url,
                &app.client_id,
                &app.client_secret,
                code,
                &app.callback_url,
            )
            .await?;
        let user = self
            .inner
            .github
            .client(Some(token.access_token.clone()))
            .user()
            .await?;
        if !self
            .inner
            .allowed
            .contains(&user.login.to_ascii_lowercase())
        {
            tracing::warn!(login = %user.login, "sign-in refused: not in auth.allowed_users");
            return Err(AuthError::NotAllowed(user.login));
        }
        let session_id = random_token();
        let id_hash = digest(&session_id);
        let sealed = keys.seal_str(&token.access_token, &token_context(&id_hash));
        self.inner
            .store
            .create_session(&SessionRow {
                id_hash,
                user_id: i64::try_from(user.id).unwrap_or_default(),
                login: user.login.clone(),
                token: sealed,
                scopes: token.scope,
                expires_at: now_ms() + self.inner.session_ms,
            })
            .await?;
        tracing::info!(login = %user.login, "signed in with GitHub");
        Ok(NewSession {
            cookie_value: SecretString::from(session_id),
            max_age_secs: u64::try_from(self.inner.session_ms / 1_000).unwrap_or(0),
            login: user.login,
        })
    }

    /// The user of a session cookie; `None` when it is unknown or expired.
    pub async fn session(&self, cookie_value: &str) -> Result<Option<SessionUser>, AuthError> {
        let Some(keys) = self.inner.keys.as_deref() else {
            return Ok(None);
        };
        let id_hash = digest(cookie_value);
        let Some(row) = self.inner.store.session(&id_hash, now_ms()).await? else {
            return Ok(None);
        };
        let token = keys.open(&row.token, &token_context(&id_hash))?;
        Ok(Some(SessionUser {
            login: row.login,
            user_id: row.user_id,
            token,
        }))
    }

    /// Ends a session; true when there was one.
    pub async fn logout(&self, cookie_value: &str) -> Result<bool, AuthError> {
        Ok(self
            .inner
            .store
            .delete_session(&digest(cookie_value))
            .await?)
    }
}

/// Whether browsers reach hookdock over HTTPS (its `public_url`), so cookies can be `Secure`.
fn served_over_https(settings: &Settings) -> bool {
    settings
        .public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"))
}

/// What a session's token is bound to when sealed.
pub(crate) fn token_context(id_hash: &str) -> String {
    format!("github-token:session:{id_hash}")
}

/// 32 random bytes, URL-safe (hex).
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn digest(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_secure_when_hookdock_is_served_over_https() {
        let served = |public_url: Option<&str>| {
            let mut sources = crate::config::Sources::default();
            if let Some(url) = public_url {
                sources = sources.set("public_url", url);
            }
            served_over_https(&Settings::load(&sources).unwrap())
        };
        assert!(served(Some("https://hooks.example.com")));
        assert!(!served(Some("http://127.0.0.1:3000")));
        assert!(!served(None));
    }

    #[test]
    fn session_user_debug_hides_the_token() {
        let user = SessionUser {
            login: "octocat".into(),
            user_id: 1,
            token: SecretString::from("gho_secret_value"),
        };
        let shown = format!("{user:?}");
        assert!(
            shown.contains("octocat") && !shown.contains("gho_secret_value"),
            "{shown}"
        );
    }

    #[test]
    fn tokens_are_random_and_only_hashes_are_kept() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(digest(&a).len(), 64);
        assert_ne!(digest(&a), a);
    }
}
