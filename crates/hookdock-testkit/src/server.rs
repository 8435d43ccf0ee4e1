//! The HTTP side of the fake: one axum fallback handler that records each request, holds it to
//! the contract (user agent, path, parameters, body), authenticates it, applies the rate limit
//! and injected faults, hands it to the module owning the operation, and finishes the answer
//! (rate-limit and request-id headers, ETag and `304`, the check of the fake's own response).
//! It owns that pipeline, not the behaviour of any endpoint.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Body as AxumBody;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::contract::{self, NoMatch, Operation};
use crate::deliveries::{self, Outgoing};
use crate::state::{RecordedRequest, State};
use crate::{faults, hooks, issues, meta, oauth, pulls, repos};

/// Largest request body the fake reads (GitHub's payload cap).
const MAX_BODY: usize = 25 * 1024 * 1024;

pub(crate) struct Shared {
    pub state: Mutex<State>,
    pub client: reqwest::Client,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide every later assertion behind a poisoned lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A response body.
#[derive(Debug)]
pub(crate) enum Body {
    Empty,
    Json(Value),
    Raw {
        content_type: String,
        bytes: Vec<u8>,
    },
}

/// What an endpoint answers.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Body::Json(body),
        }
    }

    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Body::Empty,
        }
    }

    pub fn message(status: u16, message: &str) -> Reply {
        Reply::json(
            status,
            json!({
                "message": message,
                "documentation_url": "https://docs.github.com/rest",
                "status": status.to_string(),
            }),
        )
    }

    pub fn not_found() -> Reply {
        Reply::message(404, "Not Found")
    }

    /// GitHub's 422 with one error object.
    pub fn validation_failed(
        resource: &str,
        code: &str,
        field: Option<&str>,
        message: &str,
    ) -> Reply {
        let mut error = json!({"resource": resource, "code": code, "message": message});
        if let Some(field) = field {
            error["field"] = json!(field);
        }
        Reply::json(
            422,
            json!({
                "message": "Validation Failed",
                "errors": [error],
                "documentation_url": "https://docs.github.com/rest",
                "status": "422",
            }),
        )
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }
}

/// A request matched to its operation, with the state locked, as endpoint modules see it.
pub(crate) struct Ctx<'a> {
    pub st: &'a mut State,
    pub operation_id: &'static str,
    pub params: BTreeMap<String, String>,
    pub query: Vec<(String, String)>,
    pub body: Value,
    pub headers: &'a HeaderMap,
    pub login: String,
    pub scopes: Vec<String>,
    /// Deliveries to send once the answer is on its way (pings, redeliveries).
    pub outgoing: Vec<Outgoing>,
}

impl Ctx<'_> {
    pub fn param(&self, name: &str) -> &str {
        self.params
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// An integer path parameter (the contract has checked its type).
    pub fn id(&self, name: &str) -> u64 {
        self.param(name).parse().unwrap_or(0)
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `per_page` (default 30, at most 100) and `page` (from 1).
    pub fn page(&self) -> (usize, usize) {
        let per_page = self
            .query("per_page")
            .and_then(|v| v.parse().ok())
            .unwrap_or(30usize)
            .clamp(1, 100);
        let page = self
            .query("page")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1usize)
            .max(1);
        (per_page, page)
    }

    /// Lowercase `owner/repo` of the request.
    pub fn repo_key(&self) -> String {
        crate::state::repo_key(self.param("owner"), self.param("repo"))
    }

    pub fn has_scope(&self, any_of: &[&str]) -> bool {
        self.scopes.iter().any(|s| any_of.contains(&s.as_str()))
    }
}

/// What most repository endpoints need from a request, worked out once.
pub(crate) struct Scope {
    /// Lowercase `owner/repo`.
    pub key: String,
    /// `owner/repo` as the repository was added.
    pub full: String,
    pub base: String,
    /// Now, as GitHub writes timestamps.
    pub now: String,
    /// `pull_number` or `issue_number` (0 when there is none).
    pub number: u64,
    pub per_page: usize,
    pub page: usize,
}

impl Ctx<'_> {
    pub fn scope(&self) -> Scope {
        let key = self.repo_key();
        let full = self
            .st
            .repos
            .get(&key)
            .map(|r| format!("{}/{}", r.owner, r.name))
            .unwrap_or_default();
        let number = self
            .params
            .get("pull_number")
            .or_else(|| self.params.get("issue_number"))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        let (per_page, page) = self.page();
        Scope {
            key,
            full,
            base: self.st.base_url.clone(),
            now: crate::state::timestamp(time::OffsetDateTime::now_utc()),
            number,
            per_page,
            page,
        }
    }
}

/// A page of `items` with GitHub's `Link` header (`first`, `prev`, `next`, `last`).
pub(crate) fn paginate<T>(
    ctx: &mut Ctx,
    path: &str,
    items: Vec<T>,
    per_page: usize,
    page: usize,
    mut to_json: impl FnMut(&mut State, T) -> Value,
) -> Reply {
    let total = items.len();
    let last = total.div_ceil(per_page).max(1);
    let page_items: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|item| to_json(ctx.st, item))
        .collect();
    let url = |p: usize| format!("<{}{path}?per_page={per_page}&page={p}>", ctx.st.base_url);
    let mut links = Vec::new();
    if page > 1 {
        links.push(format!("{}; rel=\"prev\"", url(page - 1)));
    }
    if page < last {
        links.push(format!("{}; rel=\"next\"", url(page + 1)));
        links.push(format!("{}; rel=\"last\"", url(last)));
    }
    if page > 1 {
        links.push(format!("{}; rel=\"first\"", url(1)));
    }
    let reply = Reply::json(200, Value::Array(page_items));
    if links.is_empty() {
        reply
    } else {
        reply.header("link", links.join(", "))
    }
}

/// The fallback handler serving every request.
pub(crate) async fn handle(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    request: Request<AxumBody>,
) -> Response {
    let (parts, body) = request.into_parts();
    let raw = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let query_string = parts.uri.query().unwrap_or_default().to_owned();
    let query: Vec<(String, String)> = form_urlencoded::parse(query_string.as_bytes())
        .into_owned()
        .collect();
    let headers = parts.headers;

    let recorded = RecordedRequest {
        method: method.clone(),
        path: path.clone(),
        query: query_string.clone(),
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
        raw_body: raw.clone(),
    };

    let _write = (method != "GET" && method != "HEAD").then(|| WriteInFlight::start(&shared));
    let processed = {
        let mut st = shared.lock();
        st.requests.push(recorded);
        if path.starts_with("/login/oauth/") {
            let reply = oauth::handle(&mut st, &method, &path, &query, &headers, &raw);
            drop(st);
            return finish(&shared, reply, None, &headers, &method, false, None, None);
        }
        process(&mut st, &method, &path, &query, &headers, &raw)
    };
    let Processed {
        reply,
        outgoing,
        counted,
        scopes,
        accepted,
        delay,
    } = processed;
    if let Some(delay) = delay {
        // Outside the state lock: other requests are served meanwhile.
        tokio::time::sleep(delay).await;
    }
    let operation = contract::contract()
        .match_request(&method, &path)
        .ok()
        .map(|m| m.operation);
    let response = finish(
        &shared, reply, operation, &headers, &method, counted, scopes, accepted,
    );
    for out in outgoing {
        let shared = shared.clone();
        tokio::spawn(async move {
            deliveries::perform(&shared, out).await;
        });
    }
    response
}

/// Counts a mutating request as being answered until dropped (also when the client hangs up
/// and the handler is dropped mid-way).
struct WriteInFlight<'a>(&'a Shared);

impl<'a> WriteInFlight<'a> {
    fn start(shared: &'a Shared) -> WriteInFlight<'a> {
        let mut st = shared.lock();
        st.writes_in_flight += 1;
        st.max_writes_in_flight = st.max_writes_in_flight.max(st.writes_in_flight);
        WriteInFlight(shared)
    }
}

impl Drop for WriteInFlight<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.writes_in_flight = st.writes_in_flight.saturating_sub(1);
    }
}

/// What [`process`] decided: the answer and how to finish it.
struct Processed {
    reply: Reply,
    /// Deliveries to send once the answer is on its way.
    outgoing: Vec<Outgoing>,
    /// Whether the request spends one of the primary rate limit.
    counted: bool,
    /// `x-oauth-scopes` of the token.
    scopes: Option<String>,
    /// `x-accepted-oauth-scopes` of the operation.
    accepted: Option<String>,
    /// How long to hold the answer back (a slow fault).
    delay: Option<std::time::Duration>,
}

impl Processed {
    fn new(reply: Reply, counted: bool) -> Processed {
        Processed {
            reply,
            outgoing: Vec::new(),
            counted,
            scopes: None,
            accepted: None,
            delay: None,
        }
    }
}

/// Operations GitHub answers without authentication too (the fake requires a token elsewhere).
const ANONYMOUS_OPERATIONS: &[&str] = &["meta/get"];

/// Everything from the contract check to the endpoint, under the state lock.
fn process(
    st: &mut State,
    method: &str,
    path: &str,
    query: &[(String, String)],
    headers: &HeaderMap,
    raw: &[u8],
) -> Processed {
    let violation = |st: &mut State, what: String, reply: Reply| -> Processed {
        st.violations.push(format!("{method} {path}: {what}"));
        Processed::new(reply, false)
    };
    if headers.get("user-agent").is_none_or(|v| v.is_empty()) {
        return violation(
            st,
            "no User-Agent header".into(),
            Reply::message(
                403,
                "Request forbidden by administrative rules. Please make sure your request has a User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). Check https://developer.github.com for other possible causes.",
            ),
        );
    }
    let matched = match contract::contract().match_request(method, path) {
        Ok(m) => m,
        Err(NoMatch::UnknownPath) => {
            return violation(
                st,
                "no such path in GitHub's REST API".into(),
                Reply::not_found(),
            );
        }
        Err(NoMatch::MethodNotAllowed) => {
            return violation(
                st,
                format!("method {method} is not defined for this path"),
                Reply::not_found(),
            );
        }
        Err(NoMatch::BadPathParam(problem)) => {
            return violation(st, problem, Reply::not_found());
        }
    };
    let op: &'static Operation = matched.operation;
    let problems = op.check_query(query);
    if !problems.is_empty() {
        let text = problems.join("; ");
        return violation(
            st,
            format!("{}: {text}", op.operation_id),
            Reply::message(422, &format!("Invalid request.\n\n{text}")),
        );
    }
    let body = match parse_body(op, headers, raw) {
        Ok(body) => body,
        Err((what, reply)) => return violation(st, format!("{}: {what}", op.operation_id), reply),
    };

    // Authentication: `Authorization: Bearer T` or `token T`.
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (kind, token) = v.split_once(' ')?;
            (kind.eq_ignore_ascii_case("bearer") || kind.eq_ignore_ascii_case("token"))
                .then(|| token.trim().to_owned())
        });
    let known = match token {
        Some(token) => match st.tokens.get(&token).cloned() {
            Some(known) => Some(known),
            None => return Processed::new(Reply::message(401, "Bad credentials"), true),
        },
        None if ANONYMOUS_OPERATIONS.contains(&op.operation_id.as_str()) => None,
        None => return Processed::new(Reply::message(401, "Requires authentication"), true),
    };
    let scopes_header = known.as_ref().map(|k| k.scopes.join(", "));
    let (login, scopes) = known.map(|k| (k.login, k.scopes)).unwrap_or_default();

    // Primary rate limit: spent until the reset time, then a fresh hour.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if st.rate.reset <= now {
        st.rate.remaining = st.rate.limit;
        st.rate.reset = now + 3600;
    }
    if st.rate.remaining == 0 {
        let fault = faults::Fault::primary_rate_limit(st.rate.reset);
        let mut reply = Reply::json(fault.status, fault.body);
        reply.headers = fault.headers;
        return Processed {
            scopes: scopes_header,
            ..Processed::new(reply, false)
        };
    }

    let accepted = hooks::accepted_scopes(&op.operation_id, method).map(str::to_owned);
    let mut delay = None;
    if let Some(fault) = faults::take(&mut st.faults, method, path) {
        delay = fault.delay;
        if fault.replaces_answer {
            let mut reply = Reply::json(fault.status, fault.body);
            reply.headers = fault.headers;
            return Processed {
                scopes: scopes_header,
                accepted,
                delay,
                ..Processed::new(reply, true)
            };
        }
    }

    let mut ctx = Ctx {
        st,
        operation_id: op.operation_id.as_str(),
        params: matched.path_params,
        query: query.to_vec(),
        body,
        headers,
        login,
        scopes,
        outgoing: Vec::new(),
    };
    let reply = dispatch(&mut ctx);
    Processed {
        reply,
        outgoing: std::mem::take(&mut ctx.outgoing),
        counted: true,
        scopes: scopes_header,
        accepted,
        delay,
    }
}

/// Parses and checks the request body of `op`.
fn parse_body(op: &Operation, headers: &HeaderMap, raw: &[u8]) -> Result<Value, (String, Reply)> {
    let text = String::from_utf8_lossy(raw);
    let blank = text.trim().is_empty();
    if !op.takes_body() {
        if blank || op.extra {
            return Ok(serde_json::from_slice(raw).unwrap_or(Value::Null));
        }
        // Clients commonly send `{}` with body-less POSTs; GitHub ignores it.
        return match serde_json::from_slice::<Value>(raw) {
            Ok(v) if v.as_object().is_some_and(|m| m.is_empty()) => Ok(Value::Null),
            _ => Err((
                "the operation takes no request body but one was sent".into(),
                Reply::message(400, "Problems parsing JSON"),
            )),
        };
    }
    if blank {
        if op.body_required() {
            return Err((
                "request body is required".into(),
                Reply::message(400, "Problems parsing JSON"),
            ));
        }
        return Ok(Value::Null);
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence != "application/json" {
        return Err((
            format!(
                "request body sent with Content-Type {content_type:?}, expected application/json"
            ),
            Reply::message(415, "Unsupported 'Content-Type' header"),
        ));
    }
    let body: Value = serde_json::from_slice(raw).map_err(|e| {
        (
            format!("request body is not JSON: {e}"),
            Reply::message(400, "Problems parsing JSON"),
        )
    })?;
    let problems = op.check_body(&body);
    if !problems.is_empty() {
        let text = problems.join("; ");
        return Err((
            format!("request body does not match the schema: {text}"),
            Reply::message(422, &format!("Invalid request.\n\n{text}")),
        ));
    }
    Ok(body)
}

/// Sends the request to the module owning its operation.
fn dispatch(ctx: &mut Ctx) -> Reply {
    if ctx.params.contains_key("owner") && ctx.params.contains_key("repo") {
        let key = ctx.repo_key();
        if !ctx.st.repos.contains_key(&key) {
            return Reply::not_found();
        }
    }
    if ctx.params.contains_key("org") && ctx.st.org(ctx.param("org")).is_none() {
        return Reply::not_found();
    }
    if let Some(reply) = hooks::handle(ctx) {
        return reply;
    }
    for handle in [pulls::handle, issues::handle, repos::handle, meta::handle] {
        if let Some(reply) = handle(ctx) {
            return reply;
        }
    }
    // Operations without state of their own are answered with GitHub's own example.
    let op = contract::contract()
        .operation(ctx.operation_id)
        .expect("matched operation exists");
    for status in [200u16, 201, 202, 204] {
        if op.documents_status(status) {
            let mut body = op.example(status);
            if let Some(body) = body.as_mut() {
                let base = ctx.st.base_url.clone();
                let full = format!("{}/{}", ctx.param("owner"), ctx.param("repo"));
                crate::state::localize(body, &base, Some(&full));
                op.complete(status, body);
            }
            return match body {
                Some(body) => Reply::json(status, body),
                None => Reply::empty(status),
            };
        }
    }
    Reply::not_found()
}

/// Builds the HTTP response: GitHub's headers, ETag/304, and the check of the body against the
/// operation's response schema (problems go to `fake_bugs`).
#[allow(clippy::too_many_arguments)]
fn finish(
    shared: &Shared,
    reply: Reply,
    operation: Option<&'static Operation>,
    request_headers: &HeaderMap,
    method: &str,
    counted: bool,
    scopes: Option<String>,
    accepted: Option<String>,
) -> Response {
    let (content_type, bytes) = match &reply.body {
        Body::Empty => (None, Vec::new()),
        Body::Json(v) => (
            Some("application/json; charset=utf-8".to_owned()),
            serde_json::to_vec(v).unwrap_or_default(),
        ),
        Body::Raw {
            content_type,
            bytes,
        } => (Some(content_type.clone()), bytes.clone()),
    };
    let etag = (method == "GET" && reply.status == 200 && !bytes.is_empty())
        .then(|| format!("W/\"{}\"", hex::encode(Sha256::digest(&bytes))));
    let not_modified = etag.as_ref().is_some_and(|etag| {
        request_headers
            .get("if-none-match")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|inm| {
                inm.split(',').any(|t| {
                    t.trim() == "*"
                        || t.trim().trim_start_matches("W/") == etag.trim_start_matches("W/")
                })
            })
    });

    let mut st = shared.lock();
    if counted && !not_modified && st.rate.remaining > 0 {
        st.rate.remaining -= 1;
    }
    if let (Some(op), Body::Json(body), false) = (operation, &reply.body, not_modified) {
        check_own_response(&mut st, op, reply.status, body);
    }
    let rate = st.rate.clone();
    let request_number = st.requests.len();
    drop(st);

    let status = if not_modified { 304 } else { reply.status };
    let mut builder =
        Response::builder().status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK));
    let mut headers: Vec<(String, String)> = vec![
        ("x-ratelimit-limit".into(), rate.limit.to_string()),
        ("x-ratelimit-remaining".into(), rate.remaining.to_string()),
        ("x-ratelimit-reset".into(), rate.reset.to_string()),
        (
            "x-ratelimit-used".into(),
            (rate.limit - rate.remaining).to_string(),
        ),
        ("x-ratelimit-resource".into(), "core".into()),
        (
            "x-github-request-id".into(),
            format!("FAKE:{request_number:04X}:{:08X}", std::process::id()),
        ),
        (
            "x-github-media-type".into(),
            "github.v3; format=json".into(),
        ),
    ];
    if let Some(scopes) = scopes {
        headers.push(("x-oauth-scopes".into(), scopes));
    }
    if let Some(accepted) = accepted {
        headers.push(("x-accepted-oauth-scopes".into(), accepted));
    }
    if let Some(etag) = &etag {
        headers.push(("etag".into(), etag.clone()));
    }
    if let (Some(ct), false) = (&content_type, not_modified) {
        headers.push(("content-type".into(), ct.clone()));
    }
    for (name, value) in reply.headers {
        headers.retain(|(n, _)| *n != name);
        headers.push((name, value));
    }
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            builder = builder.header(n, v);
        }
    }
    let body = if not_modified { Vec::new() } else { bytes };
    builder
        .body(AxumBody::from(body))
        .unwrap_or_else(|_| Response::new(AxumBody::empty()))
}

/// Records in `fake_bugs` every way the fake's own answer breaks the contract.
fn check_own_response(st: &mut State, op: &Operation, status: u16, body: &Value) {
    if op.extra {
        return;
    }
    if !op.documents_status(status) {
        if (200..300).contains(&status) {
            st.fake_bugs.push(format!(
                "{} answered {status}, which the description does not list",
                op.operation_id
            ));
        }
        return;
    }
    if let Some(schema) = op.response_schema(status) {
        let problems = contract::validate_schema(schema, body);
        if !problems.is_empty() {
            st.fake_bugs.push(format!(
                "{} {status} response: {}",
                op.operation_id,
                problems.join("; ")
            ));
        }
    }
}
