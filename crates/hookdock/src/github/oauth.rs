//! GitHub's OAuth web flow, the part on github.com rather than the REST API: the authorize
//! page hookdock redirects to, and the code-for-token exchange.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::client::Github;
use super::error::GithubError;

/// What the token exchange returns.
pub struct OauthToken {
    pub access_token: SecretString,
    /// Scopes granted, comma-separated as GitHub sends them.
    pub scope: String,
}

/// The page that asks the user to authorize the app.
pub fn authorize_url(
    web_url: &str,
    client_id: &str,
    redirect_uri: &str,
    state: &str,
    scope: &str,
) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("state", state)
        .append_pair("scope", scope)
        .append_pair("allow_signup", "false")
        .finish();
    format!(
        "{}/login/oauth/authorize?{query}",
        web_url.trim_end_matches('/')
    )
}

#[derive(Deserialize)]
struct ExchangeAnswer {
    access_token: Option<String>,
    #[serde(default)]
    scope: String,
    error: Option<String>,
    error_description: Option<String>,
}

impl Github {
    /// Exchanges the code GitHub handed to the callback for the user's token.
    pub async fn exchange_oauth_code(
        &self,
        web_url: &str,
        client_id: &str,
        client_secret: &SecretString,
        code: &str,
        redirect_uri: &str,
    ) -> Result<OauthToken, GithubError> {
        let what = "the OAuth code exchange";
        let network = |e: reqwest::Error| GithubError::Network {
            what: what.into(),
            message: e.without_url().to_string(),
        };
        let response = self
            .http()
            .post(format!(
                "{}/login/oauth/access_token",
                web_url.trim_end_matches('/')
            ))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&[
                ("client_id", client_id),
                ("client_secret", client_secret.expose_secret()),
                ("code", code),
                ("redirect_uri", redirect_uri),
            ])
            .send()
            .await
            .map_err(network)?;
        let status = response.status();
        let body = response.bytes().await.map_err(network)?;
        if !status.is_success() {
            return Err(GithubError::Status {
                status: status.as_u16(),
                what: what.into(),
                message: String::from_utf8_lossy(&body).chars().take(200).collect(),
            });
        }
        let answer: ExchangeAnswer =
            serde_json::from_slice(&body).map_err(|e| GithubError::Decode {
                what: what.into(),
                message: e.to_string(),
            })?;
        match (answer.access_token, answer.error) {
            (Some(token), None) if !token.is_empty() => Ok(OauthToken {
                access_token: SecretString::from(token),
                scope: answer.scope,
            }),
            (_, error) => Err(GithubError::Validation {
                what: what.into(),
                message: error.unwrap_or_else(|| "no access token".into()),
                errors: answer.error_description.into_iter().collect(),
            }),
        }
    }
}
