//! Signing in with GitHub through the fake's OAuth web flow: state checks, the session cookie,
//! the allow-list, logout, acting on GitHub with the user's own token, and no token at rest.

use reqwest::StatusCode;
use reqwest::header::{LOCATION, SET_COOKIE};
use serde_json::Value;

use hookdock_testkit::FakeGitHub;

use crate::helpers::{Backend, TestApp, json_answer};

const PAT: &str = "ghp_operator_token_0123456789abcdef";
const CLIENT_ID: &str = "Iv1.hookdocktest";
const CLIENT_SECRET: &str = "oauth-client-secret-for-tests";

struct Env {
    github: FakeGitHub,
    app: TestApp,
    /// A client that does not follow redirects, like a browser we drive by hand.
    browser: reqwest::Client,
}

async fn env() -> Env {
    let github = FakeGitHub::start().await;
    github.add_token(PAT, "operator", &["admin:repo_hook", "repo"]);
    github.add_repo("octocat", "hello");
    github.oauth_app(CLIENT_ID, CLIENT_SECRET);
    let port = crate::helpers::free_port();
    let api = github.url();
    let app = TestApp::spawn_with(
        &Backend::Sqlite,
        move |s| {
            s.set("listen", format!("127.0.0.1:{port}"))
                .set("public_url", format!("http://127.0.0.1:{port}"))
                .set("github_api_url", api)
                .set("github_token", PAT)
                .set("github_client_id", CLIENT_ID)
                .set("github_client_secret", CLIENT_SECRET)
                .set("github.write_interval_ms", 0)
                .set("auth.allowed_users", "octocat, hubot")
                .set("hooks.sweep_interval_secs", 0)
                .set("hooks.check_interval_secs", 0)
        },
        Vec::new(),
    )
    .await;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    Env {
        github,
        app,
        browser,
    }
}

impl Env {
    /// Walks the flow: hookdock's login → GitHub's authorize page → hookdock's callback.
    /// Returns the callback URL and the callback's answer.
    async fn sign_in(&self) -> (String, reqwest::Response) {
        let login = self
            .browser
            .get(format!("{}/auth/github/login", self.app.base))
            .send()
            .await
            .expect("login");
        assert!(login.status().is_redirection(), "{}", login.status());
        let authorize = location(&login);
        assert!(authorize.starts_with(&format!("{}/login/oauth/authorize?", self.github.url())));
        assert!(authorize.contains("state=") && authorize.contains("client_id=Iv1.hookdocktest"));
        let github = self
            .browser
            .get(&authorize)
            .send()
            .await
            .expect("authorize");
        assert_eq!(github.status(), StatusCode::FOUND);
        let callback = location(&github);
        assert!(callback.starts_with(&format!("{}/auth/github/callback?", self.app.base)));
        let answer = self.browser.get(&callback).send().await.expect("callback");
        (callback, answer)
    }

    async fn get_with_cookie(&self, path: &str, cookie: &str) -> (StatusCode, Value) {
        let response = self
            .browser
            .get(format!("{}{path}", self.app.base))
            .header("Cookie", cookie)
            .send()
            .await
            .expect("request");
        json_answer(response).await
    }
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .expect("a Location header")
        .to_owned()
}

#[tokio::test]
async fn sign_in_starts_a_session_that_acts_with_the_users_token() {
    let env = env().await;
    let (callback, answer) = env.sign_in().await;
    assert_eq!(answer.status(), StatusCode::OK);
    let set_cookie = answer
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_owned();
    assert!(set_cookie.starts_with("hookdock_session="), "{set_cookie}");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(
            set_cookie.contains(attribute),
            "{attribute} in {set_cookie}"
        );
    }
    assert!(
        !set_cookie.contains("Secure"),
        "served over plain http: {set_cookie}"
    );
    let body: Value = answer.json().await.expect("JSON");
    assert_eq!(body["login"], "octocat");
    let cookie = set_cookie.split(';').next().expect("pair").to_owned();

    // The state is single-use: the same callback again is refused and starts no session.
    let replay = env.browser.get(&callback).send().await.expect("replay");
    let (status, body) = json_answer(replay).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_state"))
    );

    let (status, me) = env.get_with_cookie("/auth/me", &cookie).await;
    assert_eq!(
        (status, me["login"].as_str()),
        (StatusCode::OK, Some("octocat"))
    );
    let (status, _) = env.get_with_cookie("/api/v1/repos", &cookie).await;
    assert_eq!(status, StatusCode::OK);

    // Installing as the signed-in user uses their token, not the operator's.
    let install = env
        .browser
        .post(format!(
            "{}/api/v1/repos/octocat/hello/install",
            env.app.base
        ))
        .header("Cookie", &cookie)
        .send()
        .await
        .expect("install");
    assert_eq!(install.status(), StatusCode::CREATED);
    let requests = env.github.requests();
    let create = requests
        .iter()
        .find(|r| r.method == "POST" && r.path == "/repos/octocat/hello/hooks")
        .expect("hook created");
    let used = create
        .header("authorization")
        .expect("authenticated")
        .to_owned();
    assert!(!used.contains(PAT), "the operator's token was used");
    let user_token = used.split_whitespace().last().expect("token").to_owned();

    // The user's token is sealed at rest.
    let mut conn =
        <sqlx::AnyConnection as sqlx::Connection>::connect(&env.app.settings.database_url)
            .await
            .expect("connect");
    let tokens: Vec<(String, String)> = sqlx::query_as("SELECT token, login FROM sessions")
        .fetch_all(&mut conn)
        .await
        .expect("sessions");
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].1, "octocat");
    assert!(!tokens[0].0.contains(&user_token));
    let session_id = cookie.trim_start_matches("hookdock_session=");
    let ids: Vec<(String,)> = sqlx::query_as("SELECT id_hash FROM sessions")
        .fetch_all(&mut conn)
        .await
        .expect("ids");
    assert_ne!(
        ids[0].0, session_id,
        "only a hash of the session id is stored"
    );

    // Retention keeps live sessions.
    let now = hookdock::store::now_ms();
    assert_eq!(env.app.store.purge_sessions(now).await.expect("purge"), 0);

    // Logout ends the session for good.
    let out = env
        .browser
        .post(format!("{}/auth/logout", env.app.base))
        .header("Cookie", &cookie)
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status(), StatusCode::OK);
    assert!(
        out.headers()
            .get(SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.contains("Max-Age=0"))
    );
    let (status, body) = env.get_with_cookie("/api/v1/repos", &cookie).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // A session past its end (168 h) is purged and no longer signs anyone in.
    let (_, answer) = env.sign_in().await;
    let again = answer
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("a new session cookie")
        .to_owned();
    assert_eq!(
        env.get_with_cookie("/auth/me", &again).await.0,
        StatusCode::OK
    );
    let after_expiry = now + 169 * 3_600_000;
    assert_eq!(
        env.app
            .store
            .purge_sessions(after_expiry)
            .await
            .expect("purge"),
        1
    );
    assert_eq!(
        env.get_with_cookie("/auth/me", &again).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(env.github.contract_violations(), Vec::<String>::new());
    env.app.stop().await;
}

#[tokio::test]
async fn users_outside_the_allow_list_and_forged_states_are_refused() {
    let env = env().await;
    env.github.set_oauth_user("mallory");
    let (_, answer) = env.sign_in().await;
    assert!(answer.headers().get(SET_COOKIE).is_none());
    let (status, body) = json_answer(answer).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("not_allowed")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("allowed_users"))
    );

    let forged = env
        .browser
        .get(format!(
            "{}/auth/github/callback?code=abc&state=forged",
            env.app.base
        ))
        .send()
        .await
        .expect("callback");
    let (status, body) = json_answer(forged).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_state"))
    );

    let (status, _) = env
        .get_with_cookie("/api/v1/repos", "hookdock_session=deadbeef")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    env.app.stop().await;
}

#[tokio::test]
async fn sign_in_without_an_oauth_app_says_what_to_set() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let (status, body) = json_answer(
        app.client
            .get(format!("{}/auth/github/login", app.base))
            .send()
            .await
            .expect("login"),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("HOOKDOCK_GITHUB_CLIENT_ID"))
    );
    app.stop().await;
}
