//! GitHub's OAuth web flow on the fake's own address: `GET /login/oauth/authorize` signs the
//! chosen user in at once and redirects back with a code; `POST /login/oauth/access_token`
//! exchanges the code for a token that the API then accepts. It owns the codes and the OAuth
//! app registrations, not the REST API.

use axum::http::HeaderMap;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};

use crate::server::{Body, Reply};
use crate::state::{OAuthCode, State, Token};

fn random(n: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

fn oauth_error(error: &str, description: &str, anchor: &str) -> Value {
    json!({
        "error": error,
        "error_description": description,
        "error_uri": format!("https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#{anchor}"),
    })
}

/// Answers `/login/oauth/*`.
pub(crate) fn handle(
    st: &mut State,
    method: &str,
    path: &str,
    query: &[(String, String)],
    headers: &HeaderMap,
    raw: &[u8],
) -> Reply {
    let get = |params: &[(String, String)], name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    match (method, path) {
        ("GET", "/login/oauth/authorize") => {
            let client_id = get(query, "client_id").unwrap_or_default();
            if !st.oauth_apps.contains_key(&client_id) {
                return Reply::message(404, "Not Found");
            }
            let Some(redirect_uri) = get(query, "redirect_uri") else {
                return Reply::message(400, "redirect_uri is required by the fake");
            };
            let code = random(20);
            st.oauth_codes.insert(
                code.clone(),
                OAuthCode {
                    client_id,
                    login: st.oauth_user.clone(),
                    scope: get(query, "scope").unwrap_or_default(),
                },
            );
            let mut location = form_urlencoded::Serializer::new(String::new());
            location.append_pair("code", &code);
            if let Some(state) = get(query, "state") {
                location.append_pair("state", &state);
            }
            let sep = if redirect_uri.contains('?') { '&' } else { '?' };
            Reply::empty(302).header(
                "location",
                format!("{redirect_uri}{sep}{}", location.finish()),
            )
        }
        ("POST", "/login/oauth/access_token") => {
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let mut params: Vec<(String, String)> = query.to_vec();
            if content_type.contains("json") {
                if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(raw) {
                    params.extend(
                        map.into_iter()
                            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned()))),
                    );
                }
            } else {
                params.extend(form_urlencoded::parse(raw).into_owned());
            }
            let client_id = get(&params, "client_id").unwrap_or_default();
            let secret = get(&params, "client_secret").unwrap_or_default();
            let answer = if st.oauth_apps.get(&client_id) != Some(&secret) {
                oauth_error(
                    "incorrect_client_credentials",
                    "The client_id and/or client_secret passed are incorrect.",
                    "incorrect-client-credentials",
                )
            } else {
                let code = get(&params, "code").unwrap_or_default();
                match st.oauth_codes.get(&code).cloned() {
                    Some(grant) if grant.client_id == client_id => {
                        st.oauth_codes.remove(&code);
                        let token = format!("gho_{}", random(36));
                        let scopes: Vec<String> = grant
                            .scope
                            .split([' ', ','])
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect();
                        st.tokens.insert(
                            token.clone(),
                            Token {
                                login: grant.login,
                                scopes: scopes.clone(),
                            },
                        );
                        json!({"access_token": token, "token_type": "bearer", "scope": scopes.join(",")})
                    }
                    _ => oauth_error(
                        "bad_verification_code",
                        "The code passed is incorrect or expired.",
                        "bad-verification-code",
                    ),
                }
            };
            let accept = headers
                .get("accept")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if accept.contains("application/json") {
                Reply::json(200, answer)
            } else {
                let mut form = form_urlencoded::Serializer::new(String::new());
                if let Some(map) = answer.as_object() {
                    for (k, v) in map {
                        form.append_pair(k, v.as_str().unwrap_or_default());
                    }
                }
                Reply {
                    status: 200,
                    headers: Vec::new(),
                    body: Body::Raw {
                        content_type: "application/x-www-form-urlencoded; charset=utf-8".into(),
                        bytes: form.finish().into_bytes(),
                    },
                }
            }
        }
        _ => Reply::message(404, "Not Found"),
    }
}
