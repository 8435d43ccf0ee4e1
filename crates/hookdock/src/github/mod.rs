//! Everything hookdock asks of GitHub: the HTTP client (authentication, rate limits, ETags,
//! typed errors), the REST calls built on it, and a short-lived cache of pull requests. Nothing
//! here touches the database.

mod api;
mod client;
mod error;
mod oauth;
mod pr_cache;

pub use api::{
    Hook, HookConfig, HookDelivery, HookScope, HookSpec, InlineComment, IssueComment,
    LabelCreation, NewLabel, NewReview, Repository, Review, ReviewComment, ReviewEvent, Side, User,
};
pub use client::{Answer, Call, Github, GithubClient, GithubConfig};
pub use error::GithubError;
pub use oauth::{OauthToken, authorize_url};
pub use pr_cache::{CLOSED_TTL, MAX_ENTRIES, OPEN_TTL, PrCache};
