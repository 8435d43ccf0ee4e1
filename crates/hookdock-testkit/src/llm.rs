//! A fake OpenAI-compatible chat-completions server for tests of the LLM reviewer.
//!
//! [`FakeLlm::start`] serves `POST /v1/chat/completions` on `127.0.0.1` and a port of its own.
//! Every request is recorded and checked to be a well-formed chat-completions call (JSON body,
//! a `model` string, a `messages` array of `{role, content}`, the bearer key when one is
//! required); a malformed one is answered as OpenAI does (400/401/404 with its `error` object)
//! and listed by [`FakeLlm::violations`]. Well-formed calls get the scripted replies
//! ([`FakeLlm::push_reply`]) in order, then the default reply ([`FakeLlm::set_default`]).
//!
//! ```no_run
//! # async fn demo() {
//! use hookdock_testkit::{FakeLlm, LlmReply};
//! let llm = FakeLlm::start().await;
//! llm.push_reply(LlmReply::Status(429, serde_json::json!({}), Some(3)));
//! llm.push_reply(LlmReply::findings("One problem", &[("src/lib.rs", 12, "error", "Overflow")]));
//! // … point the client under test at llm.url() …
//! assert_eq!(llm.request_count(), 2);
//! # }
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

/// Largest request body the fake reads.
const MAX_BODY: usize = 16 * 1024 * 1024;
const COMPLETIONS_PATH: &str = "/v1/chat/completions";
const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

/// What the fake answers to one well-formed request.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmReply {
    /// A normal chat completion whose message content is this text (`finish_reason: "stop"`).
    Content(String),
    /// A completion cut off at the token limit (`finish_reason: "length"`) with this partial text.
    Truncated(String),
    /// This HTTP status and JSON body, with a `Retry-After` header (seconds) when given.
    Status(u16, Value, Option<u64>),
    /// The inner reply, sent only after this much real time (for client timeouts).
    Delay(Duration, Box<LlmReply>),
    /// A `200 OK` whose body is this text, not JSON (a misbehaving proxy).
    Raw(String),
}

impl LlmReply {
    /// The review JSON the reviewer asks for: `{"summary", "findings": [{path, line, severity,
    /// message}]}`, as text.
    pub fn findings_json(summary: &str, findings: &[(&str, i64, &str, &str)]) -> String {
        let findings: Vec<Value> = findings
            .iter()
            .map(|(path, line, severity, message)| {
                json!({"path": path, "line": line, "severity": severity, "message": message})
            })
            .collect();
        json!({"summary": summary, "findings": findings}).to_string()
    }

    /// A completion whose content is [`LlmReply::findings_json`].
    pub fn findings(summary: &str, findings: &[(&str, i64, &str, &str)]) -> LlmReply {
        LlmReply::Content(LlmReply::findings_json(summary, findings))
    }

    /// An error status with OpenAI's error object (`{"error": {"message", "type", …}}`).
    pub fn error(status: u16, message: &str) -> LlmReply {
        LlmReply::Status(status, openai_error(status, message, None), None)
    }

    /// `reply`, sent after `delay`.
    pub fn delayed(delay: Duration, reply: LlmReply) -> LlmReply {
        LlmReply::Delay(delay, Box::new(reply))
    }
}

/// OpenAI's error body.
fn openai_error(status: u16, message: &str, code: Option<&str>) -> Value {
    let kind = match status {
        401 => "invalid_request_error",
        429 => "rate_limit_exceeded",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide every later assertion behind a poisoned lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct State {
    queue: VecDeque<LlmReply>,
    default: LlmReply,
    key: Option<String>,
    /// Bodies (JSON, or the text when not JSON), oldest first.
    requests: Vec<Value>,
    authorizations: Vec<Option<String>>,
    violations: Vec<String>,
    served: u64,
}

/// A fake OpenAI-compatible server on `127.0.0.1`, stopped when dropped.
pub struct FakeLlm {
    shared: Arc<Shared>,
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeLlm {
    /// Binds `127.0.0.1:0` and serves until dropped.
    pub async fn start() -> FakeLlm {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let url = format!("http://{}/v1", listener.local_addr().expect("local addr"));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                default: LlmReply::findings("No problems found.", &[]),
                key: None,
                requests: Vec::new(),
                authorizations: Vec::new(),
                violations: Vec::new(),
                served: 0,
            }),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeLlm { shared, url, task }
    }

    /// `http://127.0.0.1:PORT/v1`: clients POST `{url}/chat/completions`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Queues a reply; queued replies answer well-formed requests in order.
    pub fn push_reply(&self, reply: LlmReply) {
        self.shared.lock().queue.push_back(reply);
    }

    /// The reply once the queue is empty (initially a valid review with no findings).
    pub fn set_default(&self, reply: LlmReply) {
        self.shared.lock().default = reply;
    }

    /// Requires `Authorization: Bearer {key}`; other requests get OpenAI's 401.
    pub fn require_key(&self, key: &str) {
        self.shared.lock().key = Some(key.to_owned());
    }

    /// Every request body received (JSON, or a string when it was not JSON), oldest first.
    pub fn requests(&self) -> Vec<Value> {
        self.shared.lock().requests.clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// The `Authorization` header of every request, oldest first.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.shared.lock().authorizations.clone()
    }

    /// Every request that was not a well-formed chat-completions call, one line each.
    pub fn violations(&self) -> Vec<String> {
        self.shared.lock().violations.clone()
    }

    /// Replies still queued.
    pub fn queued(&self) -> usize {
        self.shared.lock().queue.len()
    }
}

async fn handle(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    request: Request<Body>,
) -> Response {
    let (parts, body) = request.into_parts();
    let raw = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let authorization = parts
        .headers
        .get("authorization")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let decided = {
        let mut st = shared.lock();
        st.requests.push(
            serde_json::from_slice(&raw)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into_owned())),
        );
        st.authorizations.push(authorization.clone());
        match check(
            parts.method.as_str(),
            parts.uri.path(),
            &parts.headers,
            authorization.as_deref(),
            st.key.as_deref(),
            &raw,
        ) {
            Err((problem, status, body)) => {
                st.violations.push(problem);
                Err((status, body))
            }
            Ok(model) => {
                st.served += 1;
                let reply = st.queue.pop_front().unwrap_or_else(|| st.default.clone());
                Ok((model, reply, st.served))
            }
        }
    };
    match decided {
        Err((status, body)) => respond(status, "application/json", body.to_string(), None),
        Ok((model, reply, id)) => answer(reply, &model, id).await,
    }
}

/// The request's model when it is a well-formed chat-completions call; else the problem and
/// OpenAI's answer to it.
fn check(
    method: &str,
    path: &str,
    headers: &HeaderMap,
    authorization: Option<&str>,
    key: Option<&str>,
    raw: &[u8],
) -> Result<String, (String, u16, Value)> {
    let bad = |status: u16, problem: String, message: &str, code: Option<&str>| {
        (
            format!("{method} {path}: {problem}"),
            status,
            openai_error(status, message, code),
        )
    };
    if path != COMPLETIONS_PATH || method != "POST" {
        return Err(bad(
            404,
            "not the chat-completions endpoint".into(),
            &format!("Invalid URL ({method} {path})"),
            None,
        ));
    }
    if let Some(key) = key {
        let given = authorization.and_then(|v| {
            let (kind, token) = v.split_once(' ')?;
            kind.eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
        match given {
            None => {
                return Err(bad(
                    401,
                    "no bearer key".into(),
                    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    None,
                ));
            }
            Some(given) if given != key => {
                return Err(bad(
                    401,
                    "wrong bearer key".into(),
                    &format!(
                        "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                        mask(&given)
                    ),
                    Some("invalid_api_key"),
                ));
            }
            Some(_) => {}
        }
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .eq_ignore_ascii_case("application/json")
    {
        return Err(bad(
            400,
            format!("Content-Type {content_type:?}, expected application/json"),
            "Invalid Content-Type header, expected application/json.",
            None,
        ));
    }
    let body: Value = serde_json::from_slice(raw).map_err(|e| {
        bad(
            400,
            format!("body is not JSON: {e}"),
            "We could not parse the JSON body of your request.",
            None,
        )
    })?;
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        return Err(bad(
            400,
            "no model string".into(),
            "you must provide a model parameter",
            None,
        ));
    };
    let messages = match body.get("messages").and_then(Value::as_array) {
        Some(m) if !m.is_empty() => m,
        _ => {
            return Err(bad(
                400,
                "messages is not a non-empty array".into(),
                "Missing required parameter: 'messages'.",
                Some("missing_required_parameter"),
            ));
        }
    };
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str);
        if !role.is_some_and(|r| ROLES.contains(&r)) {
            return Err(bad(
                400,
                format!("messages[{i}].role is {:?}", message.get("role")),
                &format!("Invalid value for 'messages[{i}].role'."),
                Some("invalid_value"),
            ));
        }
        if !message.get("content").is_some_and(Value::is_string) {
            return Err(bad(
                400,
                format!("messages[{i}].content is not a string"),
                &format!("Invalid type for 'messages[{i}].content': expected a string."),
                Some("invalid_type"),
            ));
        }
    }
    if let Some(format) = body.get("response_format") {
        let kind = format.get("type").and_then(Value::as_str);
        if !kind.is_some_and(|k| ["text", "json_object", "json_schema"].contains(&k)) {
            return Err(bad(
                400,
                format!("response_format is {format}"),
                "Invalid value for 'response_format.type'.",
                Some("invalid_value"),
            ));
        }
    }
    if let Some(t) = body.get("temperature")
        && !t.as_f64().is_some_and(|t| (0.0..=2.0).contains(&t))
    {
        return Err(bad(
            400,
            format!("temperature is {t}"),
            "Invalid value for 'temperature': expected a number from 0 to 2.",
            Some("invalid_value"),
        ));
    }
    Ok(model.to_owned())
}

/// `sk-abc…xyz` as OpenAI shows a wrong key: a few characters at each end.
fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

async fn answer(mut reply: LlmReply, model: &str, id: u64) -> Response {
    // Nested delays add up; the answer is held outside the state lock.
    let mut delay = Duration::ZERO;
    while let LlmReply::Delay(d, inner) = reply {
        delay += d;
        reply = *inner;
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match reply {
        LlmReply::Content(text) => completion(model, id, &text, "stop"),
        LlmReply::Truncated(text) => completion(model, id, &text, "length"),
        LlmReply::Status(status, body, retry_after) => {
            respond(status, "application/json", body.to_string(), retry_after)
        }
        LlmReply::Raw(text) => respond(200, "text/html; charset=utf-8", text, None),
        LlmReply::Delay(..) => respond(500, "text/plain", String::new(), None),
    }
}

fn completion(model: &str, id: u64, content: &str, finish_reason: &str) -> Response {
    let completion_tokens = content.len().div_ceil(4);
    let body = json!({
        "id": format!("chatcmpl-fake{id:06}"),
        "object": "chat.completion",
        "created": time::OffsetDateTime::now_utc().unix_timestamp(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": null},
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": completion_tokens,
            "total_tokens": 100 + completion_tokens,
        },
        "system_fingerprint": "fp_fake",
    });
    respond(200, "application/json", body.to_string(), None)
}

fn respond(status: u16, content_type: &str, body: String, retry_after: Option<u64>) -> Response {
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", content_type)
        .header("x-request-id", "req_fake");
    if let Some(secs) = retry_after {
        builder = builder.header("retry-after", secs.to_string());
    }
    builder
        .body(Body::from(body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(model: &str) -> Value {
        json!({
            "model": model,
            "messages": [{"role": "system", "content": "review"}, {"role": "user", "content": "diff"}],
        })
    }

    async fn post(llm: &FakeLlm, key: Option<&str>, body: &Value) -> (u16, HeaderMap, String) {
        let mut request = reqwest::Client::new()
            .post(format!("{}/chat/completions", llm.url()))
            .json(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.text().await.expect("body"))
    }

    fn content(text: &str) -> (String, String) {
        let v: Value = serde_json::from_str(text).expect("completion is JSON");
        (
            v["choices"][0]["message"]["content"]
                .as_str()
                .expect("content")
                .to_owned(),
            v["choices"][0]["finish_reason"]
                .as_str()
                .expect("finish_reason")
                .to_owned(),
        )
    }

    #[tokio::test]
    async fn replies_are_used_in_order_then_the_default() {
        let llm = FakeLlm::start().await;
        assert!(llm.url().ends_with("/v1"));
        llm.push_reply(LlmReply::Content("first".into()));
        llm.push_reply(LlmReply::Truncated("{\"summ".into()));
        llm.push_reply(LlmReply::Status(
            429,
            json!({"error": {"message": "slow down"}}),
            Some(7),
        ));
        llm.push_reply(LlmReply::Raw("<html>bad gateway</html>".into()));

        let (status, _, text) = post(&llm, None, &chat("m1")).await;
        assert_eq!(status, 200);
        assert_eq!(content(&text), ("first".into(), "stop".into()));
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["model"], "m1");
        assert_eq!(v["object"], "chat.completion");

        let (status, _, text) = post(&llm, None, &chat("m1")).await;
        assert_eq!(status, 200);
        assert_eq!(content(&text), ("{\"summ".into(), "length".into()));

        let (status, headers, text) = post(&llm, None, &chat("m1")).await;
        assert_eq!(status, 429);
        assert_eq!(headers["retry-after"], "7");
        assert_eq!(text, r#"{"error":{"message":"slow down"}}"#);

        let (status, headers, text) = post(&llm, None, &chat("m1")).await;
        assert_eq!(status, 200);
        assert!(
            headers["content-type"]
                .to_str()
                .expect("ascii")
                .starts_with("text/html")
        );
        assert_eq!(text, "<html>bad gateway</html>");

        // The queue is empty: the default, a valid empty review.
        let (status, _, text) = post(&llm, None, &chat("m1")).await;
        assert_eq!(status, 200);
        let review: Value = serde_json::from_str(&content(&text).0).expect("review JSON");
        assert_eq!(review["findings"], json!([]));
        assert!(review["summary"].is_string());

        llm.set_default(LlmReply::findings("s", &[("a.rs", 3, "error", "boom")]));
        let (_, _, text) = post(&llm, None, &chat("m1")).await;
        let review: Value = serde_json::from_str(&content(&text).0).expect("review JSON");
        assert_eq!(
            review["findings"],
            json!([{"path": "a.rs", "line": 3, "severity": "error", "message": "boom"}])
        );
        assert_eq!(llm.request_count(), 6);
        assert_eq!(llm.requests()[0], chat("m1"));
        assert!(llm.violations().is_empty());
    }

    #[tokio::test]
    async fn a_required_key_is_checked_with_openais_error_shape() {
        let llm = FakeLlm::start().await;
        llm.require_key("sk-test-right-key-123456");
        llm.push_reply(LlmReply::Content("for the right key".into()));

        let (status, _, text) = post(&llm, None, &chat("m")).await;
        assert_eq!(status, 401);
        let v: Value = serde_json::from_str(&text).expect("json");
        assert!(
            v["error"]["message"]
                .as_str()
                .expect("message")
                .contains("didn't provide an API key")
        );

        let (status, _, text) = post(&llm, Some("sk-test-wrong-key-654321"), &chat("m")).await;
        assert_eq!(status, 401);
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let message = v["error"]["message"].as_str().expect("message");
        assert!(message.contains("sk-"), "{message}");
        assert!(
            !message.contains("wrong-key"),
            "the key is masked: {message}"
        );

        // Rejected requests do not use up scripted replies.
        let (status, _, text) = post(&llm, Some("sk-test-right-key-123456"), &chat("m")).await;
        assert_eq!(status, 200);
        assert_eq!(content(&text).0, "for the right key");
        assert_eq!(llm.request_count(), 3);
        assert_eq!(
            llm.authorizations(),
            [
                None,
                Some("Bearer sk-test-wrong-key-654321".to_owned()),
                Some("Bearer sk-test-right-key-123456".to_owned())
            ]
        );
        assert_eq!(llm.violations().len(), 2);
    }

    #[tokio::test]
    async fn malformed_calls_are_rejected_and_listed() {
        let llm = FakeLlm::start().await;
        for (body, needle) in [
            (
                json!({"messages": [{"role": "user", "content": "x"}]}),
                "model",
            ),
            (json!({"model": "m", "messages": []}), "messages"),
            (
                json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}),
                "role",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": 3}]}),
                "content",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}}),
                "response_format",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 5}),
                "temperature",
            ),
        ] {
            let (status, _, text) = post(&llm, None, &body).await;
            assert_eq!(status, 400, "{body}");
            let v: Value = serde_json::from_str(&text).expect("json");
            assert!(v["error"]["message"].is_string());
            let last = llm.violations().pop().expect("listed");
            assert!(last.contains(needle), "{last}");
        }
        let response = reqwest::Client::new()
            .post(format!("{}/chat/completions", llm.url()))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 400);
        let response = reqwest::Client::new()
            .get(format!("{}/chat/completions", llm.url()))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 404);
        assert_eq!(llm.violations().len(), 8);
        assert_eq!(llm.request_count(), 8);
        assert_eq!(llm.requests()[6], Value::String("{not json".into()));
    }

    #[tokio::test]
    async fn a_delayed_reply_comes_late() {
        let llm = FakeLlm::start().await;
        llm.push_reply(LlmReply::delayed(
            Duration::from_millis(300),
            LlmReply::Content("late".into()),
        ));
        let started = std::time::Instant::now();
        let (status, _, text) = post(&llm, None, &chat("m")).await;
        assert_eq!(status, 200);
        assert_eq!(content(&text).0, "late");
        assert!(started.elapsed() >= Duration::from_millis(300));

        let short = reqwest::Client::builder()
            .timeout(Duration::from_millis(50))
            .build()
            .expect("client");
        llm.push_reply(LlmReply::delayed(
            Duration::from_secs(5),
            LlmReply::Content("too late".into()),
        ));
        let err = short
            .post(format!("{}/chat/completions", llm.url()))
            .json(&chat("m"))
            .send()
            .await
            .expect_err("times out");
        assert!(err.is_timeout());
        assert_eq!(llm.request_count(), 2);
    }

    #[test]
    fn findings_json_has_the_review_shape() {
        let text = LlmReply::findings_json("sum", &[("a.rs", 1, "warning", "m")]);
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(
            v,
            json!({"summary": "sum", "findings": [{"path": "a.rs", "line": 1, "severity": "warning", "message": "m"}]})
        );
        assert_eq!(mask("sk-abcdefghijkl"), "sk-********ijkl");
    }
}
