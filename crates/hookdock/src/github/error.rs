//! What can go wrong talking to GitHub, typed so callers can branch and users see what to do.

use std::time::SystemTime;

#[derive(Debug, Clone, thiserror::Error)]
pub enum GithubError {
    #[error(
        "GitHub has no {what} (404): check the name, and that the token can see it (private repositories need the `repo` scope)"
    )]
    NotFound { what: String },
    #[error(
        "GitHub rejected the credentials (401: {message}); set a valid HOOKDOCK_GITHUB_TOKEN or sign in again"
    )]
    Unauthorized { message: String },
    #[error("GitHub refused {what} (403: {message}){}", scope_hint(.missing_scopes))]
    Forbidden {
        what: String,
        message: String,
        missing_scopes: Vec<String>,
    },
    #[error("GitHub did not accept {what} (422: {message}{})", detail(.errors))]
    Validation {
        what: String,
        message: String,
        errors: Vec<String>,
    },
    #[error("GitHub's rate limit is exhausted until {}; hookdock will try again then", crate::store::rfc3339(system_ms(*.until)))]
    RateLimited { until: SystemTime },
    #[error("GitHub answered {status} to {what}: {message}")]
    Status {
        status: u16,
        what: String,
        message: String,
    },
    #[error(
        "could not reach GitHub for {what}: {message} (check HOOKDOCK_GITHUB_API_URL and the network)"
    )]
    Network { what: String, message: String },
    #[error("GitHub's answer to {what} could not be read: {message}")]
    Decode { what: String, message: String },
}

impl GithubError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, GithubError::NotFound { .. })
    }

    /// Worth trying again later (network trouble, rate limits, GitHub's own 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            GithubError::RateLimited { .. } | GithubError::Network { .. } => true,
            GithubError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

fn scope_hint(missing: &[String]) -> String {
    if missing.is_empty() {
        String::new()
    } else {
        format!(
            "; the token lacks the scope {}: grant it or use a token that has it",
            missing.join(", ")
        )
    }
}

fn detail(errors: &[String]) -> String {
    if errors.is_empty() {
        String::new()
    } else {
        format!(": {}", errors.join("; "))
    }
}

fn system_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
