//! Sign-in with GitHub: the OAuth redirect, its callback, logout, and who is signed in. The
//! session cookie is HttpOnly, SameSite=Lax, and Secure when hookdock is served over HTTPS.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::extract::Api;
use crate::auth::{AuthError, SESSION_COOKIE, SessionUser};

pub async fn login(State(state): State<AppState>) -> Result<Response, ApiError> {
    let url = state.auth.begin().await?;
    Ok(Redirect::to(&url).into_response())
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

pub async fn callback(
    State(state): State<AppState>,
    Api(Query(q)): Api<Query<CallbackQuery>>,
) -> Result<Response, ApiError> {
    let session = state
        .auth
        .finish(q.code.as_deref(), q.state.as_deref(), q.error.as_deref())
        .await?;
    let cookie = session_cookie(
        session.cookie_value.expose_secret(),
        session.max_age_secs,
        state.auth.secure_cookies(),
    );
    let mut response =
        Json(serde_json::json!({ "status": "signed_in", "login": session.login })).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ended = match session_cookie_value(&headers) {
        Some(value) => state.auth.logout(value).await?,
        None => false,
    };
    let mut response =
        Json(serde_json::json!({ "status": if ended { "signed_out" } else { "not_signed_in" } }))
            .into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie("", 0, state.auth.secure_cookies()),
    );
    Ok(response)
}

pub async fn me(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    match session_user(&state, &headers).await? {
        Some(user) => Ok(
            Json(serde_json::json!({ "login": user.login, "user_id": user.user_id }))
                .into_response(),
        ),
        None => Err(ApiError::unauthorized(
            "not signed in; sign in at /auth/github/login",
        )),
    }
}

/// The user of the request's session cookie, if it holds a live session.
pub async fn session_user(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<SessionUser>, ApiError> {
    match session_cookie_value(headers) {
        Some(value) => Ok(state.auth.session(value).await?),
        None => Ok(None),
    }
}

fn session_cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
        .filter(|v| !v.is_empty())
}

fn session_cookie(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    );
    // Session values are hex, so the header is always valid.
    HeaderValue::from_str(&text)
        .unwrap_or_else(|_| HeaderValue::from_static("hookdock_session=; Max-Age=0"))
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        let message = e.to_string();
        match e {
            AuthError::NotConfigured => {
                ApiError::new(StatusCode::CONFLICT, "not_configured", message)
            }
            AuthError::BadState => ApiError::bad_request("invalid_state", message),
            AuthError::Denied(_) => ApiError::new(StatusCode::FORBIDDEN, "sign_in_denied", message),
            AuthError::NotAllowed(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "not_allowed", message)
            }
            AuthError::Github(_) => ApiError::new(StatusCode::BAD_GATEWAY, "github_error", message),
            AuthError::Store(store) => store.into(),
            AuthError::Crypto(_) => {
                tracing::error!(error = %message, "a session token could not be opened");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "secret_unreadable",
                    message,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_secure_only_over_https_and_always_http_only() {
        let plain = session_cookie("abc", 60, false);
        let https = session_cookie("abc", 60, true);
        let plain = plain.to_str().unwrap();
        let https = https.to_str().unwrap();
        for cookie in [plain, https] {
            assert!(cookie.starts_with("hookdock_session=abc; "), "{cookie}");
            assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"));
            assert!(cookie.contains("Max-Age=60"));
        }
        assert!(!plain.contains("Secure"));
        assert!(https.ends_with("; Secure"), "{https}");
    }
}
