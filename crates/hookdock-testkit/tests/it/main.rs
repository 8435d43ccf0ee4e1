//! Integration tests of the fake GitHub, driven over HTTP with reqwest as a client would.

mod extras;
mod hooks;
mod oauth;
mod protocol;
mod pulls;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hookdock_testkit::FakeGitHub;
use serde_json::Value;

pub const TOKEN: &str = "ghp_testkit_token";

/// A fake with one user token (`admin:repo_hook`, `repo`, `admin:org_hook`) and `octo/hello`.
pub async fn github() -> (FakeGitHub, u64) {
    let github = FakeGitHub::start().await;
    github.add_token(
        TOKEN,
        "octo",
        &["admin:repo_hook", "repo", "admin:org_hook"],
    );
    let repo_id = github.add_repo("octo", "hello");
    (github, repo_id)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent("hookdock-testkit-tests")
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub async fn call(
    github: &FakeGitHub,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, HeaderMap, Value) {
    let url = if path.starts_with("http") {
        path.to_owned()
    } else {
        format!("{}{path}", github.url())
    };
    let mut request = client()
        .request(method, url)
        .bearer_auth(TOKEN)
        .header("accept", "application/vnd.github+json");
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../../../shared/fixtures/webhooks/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Asserts the fake saw no contract violation and made no mistake of its own.
pub fn assert_clean(github: &FakeGitHub) {
    assert_eq!(github.contract_violations(), Vec::<String>::new());
    assert_eq!(github.fake_bugs(), Vec::<String>::new());
}

/// A request as a local webhook receiver got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A local HTTP receiver of webhook deliveries answering `status`.
pub struct Receiver {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub status: Arc<Mutex<u16>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let status = Arc::new(Mutex::new(200u16));
        let (r, s) = (received.clone(), status.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (r, s) = (r.clone(), s.clone());
                async move {
                    r.lock().unwrap().push(Received { headers, body });
                    let code = *s.lock().unwrap();
                    (StatusCode::from_u16(code).unwrap(), "thanks")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            url,
            received,
            status,
        }
    }

    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..500 {
            let got = self.received.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("receiver got fewer than {n} deliveries");
    }
}

pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_default()
}
