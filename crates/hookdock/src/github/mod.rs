//! Everything hookdock asks of GitHub: the HTTP client (authentication, rate limits, ETags,
//! typed errors) and the REST calls built on it. Nothing here touches the database.

mod api;
mod client;
mod error;
mod oauth;

pub use api::{Hook, HookConfig, HookDelivery, HookScope, HookSpec, Repository, User};
pub use client::{Answer, Call, Github, GithubClient, GithubConfig};
pub use error::GithubError;
pub use oauth::{OauthToken, authorize_url};
