//! The LLM reviewer: any OpenAI-compatible chat-completions endpoint, asked for JSON findings.
//!
//! One review is one prompt (the pull request and as many whole patches as fit in
//! [`LlmConfig::max_input_bytes`]) sent with `response_format: json_object`. Transient failures
//! (timeouts, connection errors, 429, 5xx) are retried up to [`LlmConfig::max_retries`] times,
//! waiting `Retry-After` or an exponential backoff on the injected [`Clock`]; an answer that is
//! not a valid review (or was cut off) is asked for once more, since models are
//! nondeterministic. Every call is reported in [`LlmOutcome::calls`] for the audit record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::{Value, json};

use super::{ChangedFile, Finding, ReviewInput, Severity};
use crate::clock::Clock;

/// Where the model is and how much to send it.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// The API base, e.g. `https://api.openai.com/v1`; requests go to `{base_url}/chat/completions`.
    pub base_url: String,
    pub model: String,
    /// Sent as `Authorization: Bearer`; local servers often need none.
    pub api_key: Option<SecretString>,
    /// For one whole request, answer included.
    pub timeout: Duration,
    /// Extra attempts after a timeout, a connection error, 429 or 5xx.
    pub max_retries: u32,
    /// First backoff wait when the server gives no `Retry-After`; doubled per retry.
    pub retry_base: Duration,
    /// Most bytes of prompt (system and user messages); whole files are left out to fit.
    pub max_input_bytes: usize,
    /// Most findings kept (the most severe).
    pub max_findings: usize,
}

impl Default for LlmConfig {
    fn default() -> LlmConfig {
        LlmConfig {
            base_url: "https://api.openai.com/v1".to_owned(),
            model: "gpt-4o-mini".to_owned(),
            api_key: None,
            timeout: Duration::from_secs(60),
            max_retries: 2,
            retry_base: Duration::from_secs(2),
            max_input_bytes: 96 * 1024,
            max_findings: 20,
        }
    }
}

/// Why a review could not be had. Messages never contain the API key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    #[error("the LLM endpoint did not answer within the timeout")]
    Timeout,
    #[error("the LLM endpoint answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("could not reach the LLM endpoint: {0}")]
    Transport(String),
    #[error(
        "the model's answer was cut off at its output limit (finish_reason \"length\"); send less or allow more output tokens"
    )]
    Truncated,
    #[error("the model's answer is not a valid review: {0}")]
    InvalidOutput(String),
}

impl LlmError {
    /// Worth trying again later: timeouts, connection errors, 429 and 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            LlmError::Timeout | LlmError::Transport(_) => true,
            LlmError::Status { status, .. } => *status == 429 || *status >= 500,
            LlmError::Truncated | LlmError::InvalidOutput(_) => false,
        }
    }

    /// The short outcome recorded in [`LlmCall::outcome`].
    fn outcome(&self) -> String {
        match self {
            LlmError::Timeout => "timeout".to_owned(),
            LlmError::Status { status, .. } => format!("http {status}"),
            LlmError::Transport(message) => format!("transport: {message}"),
            LlmError::Truncated => "truncated".to_owned(),
            LlmError::InvalidOutput(reason) => format!("invalid output: {reason}"),
        }
    }
}

/// What the model found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LlmReview {
    pub summary: String,
    /// Most severe first (stable otherwise), at most `max_findings`; `source` is `llm`.
    pub findings: Vec<Finding>,
}

/// One request to the endpoint, for the audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LlmCall {
    pub model: String,
    pub prompt_bytes: usize,
    pub duration_ms: u64,
    /// `ok`, `timeout`, `http 429`, `truncated`, `invalid output: …`, `transport: …`.
    pub outcome: String,
    /// From 1.
    pub attempt: u32,
}

/// The result of [`LlmReviewer::review`] with what it took to get it.
#[derive(Debug, Clone)]
pub struct LlmOutcome {
    pub result: Result<LlmReview, LlmError>,
    /// Every request made, in order.
    pub calls: Vec<LlmCall>,
    /// Files of `input.files` left out of the prompt to respect `max_input_bytes`.
    pub omitted: Vec<String>,
}

/// Reviews pull requests with an OpenAI-compatible endpoint.
pub struct LlmReviewer {
    http: reqwest::Client,
    url: String,
    config: LlmConfig,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for LlmReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmReviewer")
            .field("url", &self.url)
            .field("model", &self.config.model)
            .field("authenticated", &self.config.api_key.is_some())
            .finish()
    }
}

const USER_AGENT: &str = concat!("hookdock/", env!("CARGO_PKG_VERSION"));
/// Longest `Retry-After` honoured; longer asks are waited this long.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);
/// Bytes of the pull request description put in the prompt.
const MAX_BODY_BYTES: usize = 4 * 1024;
/// Bytes of an error body quoted when it has no OpenAI error message.
const MAX_QUOTED_BYTES: usize = 200;

const SYSTEM_PROMPT: &str = r####"You are an experienced code reviewer. Review the pull request below and report real problems in the lines it adds or changes: bugs, security issues, data loss, race conditions, error handling, unclear or misleading code. Do not comment on unchanged code, do not praise, do not restate what the change does, and skip matters of taste. Be concise: one or two sentences per finding.

Answer with one JSON object and nothing else, exactly of this shape:
{"summary": string, "findings": [{"path": string, "line": integer, "severity": "info" | "warning" | "error", "message": string}]}

- "summary": one or two sentences on the change as a whole.
- "path": the file's path exactly as given after "### ".
- "line": the line number in the NEW version of the file. Each added or unchanged line of a patch is prefixed with that number; removed lines have none and cannot be commented on.
- "severity": "error" for bugs and security problems, "warning" for likely problems, "info" for minor suggestions.
- "findings": an empty array when there is nothing worth saying."####;

impl LlmReviewer {
    pub fn new(config: LlmConfig, clock: Arc<dyn Clock>) -> Result<LlmReviewer, LlmError> {
        let base = config.base_url.trim_end_matches('/');
        if !crate::config::is_http_url(base) {
            return Err(LlmError::Transport(
                "the LLM base URL must be an http:// or https:// URL with a host, e.g. http://localhost:11434/v1".to_owned(),
            ));
        }
        let url = format!("{base}/chat/completions");
        // No redirects: the key goes to the configured host only.
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| LlmError::Transport(format!("the HTTP client: {}", error_chain(&e))))?;
        Ok(LlmReviewer {
            http,
            url,
            config,
            clock,
        })
    }

    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    /// Asks the model for a review of `input`, retrying as described in the module docs.
    pub async fn review(&self, input: &ReviewInput) -> LlmOutcome {
        let (user, omitted) = user_message(input, self.config.max_input_bytes);
        let prompt_bytes = SYSTEM_PROMPT.len() + user.len();
        let body = json!({
            "model": self.config.model,
            "temperature": 0,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": user},
            ],
        });
        let mut calls = Vec::new();
        let mut transient_retries = 0u32;
        let mut output_retried = false;
        let result = loop {
            let started = Instant::now();
            let (result, retry_after) = match self.call(&body).await {
                Ok(review) => (Ok(review), None),
                Err((error, retry_after)) => (Err(self.redact(error)), retry_after),
            };
            calls.push(LlmCall {
                model: self.config.model.clone(),
                prompt_bytes,
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                outcome: match &result {
                    Ok(_) => "ok".to_owned(),
                    Err(e) => e.outcome(),
                },
                attempt: u32::try_from(calls.len() + 1).unwrap_or(u32::MAX),
            });
            let error = match result {
                Ok(review) => break Ok(review),
                Err(error) => error,
            };
            if error.is_transient() && transient_retries < self.config.max_retries {
                let wait = retry_after
                    .map(|w| w.min(MAX_RETRY_WAIT))
                    .unwrap_or_else(|| self.backoff(transient_retries));
                transient_retries += 1;
                tracing::warn!(
                    error = %error,
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "LLM call failed; retrying"
                );
                self.clock.sleep(wait).await;
                continue;
            }
            if matches!(error, LlmError::Truncated | LlmError::InvalidOutput(_)) && !output_retried
            {
                output_retried = true;
                tracing::warn!(error = %error, "unusable LLM answer; asking once more");
                continue;
            }
            break Err(error);
        };
        let result = result.map(|mut review| {
            cap_findings(&mut review.findings, self.config.max_findings);
            review
        });
        LlmOutcome {
            result,
            calls,
            omitted,
        }
    }

    /// `retry_base` doubled per retry already made, at most [`MAX_RETRY_WAIT`].
    fn backoff(&self, retries: u32) -> Duration {
        self.config
            .retry_base
            .saturating_mul(2u32.saturating_pow(retries.min(16)))
            .min(MAX_RETRY_WAIT)
    }

    /// One request: the review, or the error with the server's `Retry-After`.
    async fn call(&self, body: &Value) -> Result<LlmReview, (LlmError, Option<Duration>)> {
        let mut request = self.http.post(&self.url).json(body);
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key.expose_secret());
        }
        let response = request.send().await.map_err(|e| (transport(&e), None))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let bytes = response.bytes().await.map_err(|e| (transport(&e), None))?;
        if !status.is_success() {
            return Err((
                LlmError::Status {
                    status: status.as_u16(),
                    message: error_message(status, &bytes),
                },
                retry_after,
            ));
        }
        parse_completion(&bytes).map_err(|e| (e, None))
    }

    /// Removes the API key from a message that quotes the server or the model.
    fn redact(&self, error: LlmError) -> LlmError {
        let Some(key) = self
            .config
            .api_key
            .as_ref()
            .map(|k| k.expose_secret())
            .filter(|k| !k.is_empty())
        else {
            return error;
        };
        let clean = |s: String| s.replace(key, "[redacted]");
        match error {
            LlmError::Status { status, message } => LlmError::Status {
                status,
                message: clean(message),
            },
            LlmError::Transport(m) => LlmError::Transport(clean(m)),
            LlmError::InvalidOutput(m) => LlmError::InvalidOutput(clean(m)),
            other => other,
        }
    }
}

fn transport(e: &reqwest::Error) -> LlmError {
    if e.is_timeout() {
        LlmError::Timeout
    } else if e.is_connect() {
        LlmError::Transport(format!("connection failed ({})", error_chain(e)))
    } else {
        LlmError::Transport(error_chain(e))
    }
}

/// The error and its causes, without the URL.
fn error_chain(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    parts.dedup();
    parts.join(": ")
}

/// `Retry-After` (seconds) or `retry-after-ms`.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = |name: &str| -> Option<f64> {
        let v: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (v.is_finite() && v >= 0.0).then_some(v)
    };
    value("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms.min(3_600_000.0) / 1000.0))
        .or_else(|| value("retry-after").map(|s| Duration::from_secs_f64(s.min(3600.0))))
}

/// OpenAI's `error.message`, a bare `message`, or the start of the body.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let from_json = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    match from_json {
        Some(m) if !m.trim().is_empty() => m,
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("no message").to_owned()
            } else {
                truncate(text, MAX_QUOTED_BYTES).to_owned()
            }
        }
    }
}

/// The review in a chat completion's body.
fn parse_completion(body: &[u8]) -> Result<LlmReview, LlmError> {
    let invalid = |m: &str| LlmError::InvalidOutput(m.to_owned());
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        let text = String::from_utf8_lossy(body);
        LlmError::InvalidOutput(format!(
            "the response body is not JSON: {:?}",
            truncate(text.trim(), 80)
        ))
    })?;
    let choice = value
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| invalid("the response has no choices"))?;
    if choice.get("finish_reason").and_then(Value::as_str) == Some("length") {
        return Err(LlmError::Truncated);
    }
    let message = choice.get("message");
    match message
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
    {
        Some(content) => parse_review(content),
        None => match message
            .and_then(|m| m.get("refusal"))
            .and_then(Value::as_str)
        {
            Some(refusal) => Err(LlmError::InvalidOutput(format!(
                "the model refused: {}",
                truncate(refusal, MAX_QUOTED_BYTES)
            ))),
            None => Err(invalid("choices[0].message.content is not a string")),
        },
    }
}

/// The review in the model's text: a JSON object, bare or in a ``` fence.
fn parse_review(content: &str) -> Result<LlmReview, LlmError> {
    let text = unfence(content);
    let value: Value = serde_json::from_str(text).map_err(|e| {
        LlmError::InvalidOutput(format!(
            "the content is not JSON ({e}): {:?}",
            truncate(text, 80)
        ))
    })?;
    let object = value
        .as_object()
        .ok_or_else(|| LlmError::InvalidOutput("the content is not a JSON object".to_owned()))?;
    let summary = match object.get("summary") {
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(other) => {
            return Err(LlmError::InvalidOutput(format!(
                "\"summary\" is {}, expected a string",
                kind(other)
            )));
        }
        None => return Err(LlmError::InvalidOutput("no \"summary\"".to_owned())),
    };
    let items = match object.get("findings") {
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(LlmError::InvalidOutput(format!(
                "\"findings\" is {}, expected an array",
                kind(other)
            )));
        }
        None => return Err(LlmError::InvalidOutput("no \"findings\"".to_owned())),
    };
    let mut findings = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if let Some(finding) = parse_finding(i, item)? {
            findings.push(finding);
        }
    }
    Ok(LlmReview { summary, findings })
}

/// One finding; `None` for one without a message.
fn parse_finding(i: usize, item: &Value) -> Result<Option<Finding>, LlmError> {
    let wrong = |field: &str, value: &Value, expected: &str| {
        LlmError::InvalidOutput(format!(
            "findings[{i}].{field} is {}, expected {expected}",
            kind(value)
        ))
    };
    let Some(object) = item.as_object() else {
        return Err(LlmError::InvalidOutput(format!(
            "findings[{i}] is {}, expected an object",
            kind(item)
        )));
    };
    let message = match object.get("message") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(m)) if m.trim().is_empty() => return Ok(None),
        Some(Value::String(m)) => m.trim().to_owned(),
        Some(other) => return Err(wrong("message", other, "a string")),
    };
    let path = match object.get("path") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) => Some(p.trim().to_owned()).filter(|p| !p.is_empty()),
        Some(other) => return Err(wrong("path", other, "a string")),
    };
    let line = match object.get("line") {
        None | Some(Value::Null) => None,
        Some(value @ Value::Number(n)) => {
            let whole = n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                    .map(|f| f as i64)
            });
            match whole {
                Some(n) => u64::try_from(n).ok().filter(|n| *n > 0),
                None => return Err(wrong("line", value, "an integer")),
            }
        }
        Some(other) => return Err(wrong("line", other, "an integer")),
    };
    let severity = match object.get("severity") {
        None | Some(Value::Null) => Severity::Warning,
        Some(Value::String(s)) => severity(s),
        Some(other) => return Err(wrong("severity", other, "a string")),
    };
    Ok(Some(Finding {
        // A line means nothing without its file.
        line: line.filter(|_| path.is_some()),
        path,
        severity,
        message,
        source: "llm".to_owned(),
    }))
}

/// The model's severity word, mapped onto ours; unknown words are warnings.
fn severity(word: &str) -> Severity {
    match word.trim().to_ascii_lowercase().as_str() {
        "info" | "low" | "note" | "nit" | "suggestion" => Severity::Info,
        "error" | "high" | "critical" | "blocker" => Severity::Error,
        _ => Severity::Warning,
    }
}

/// Keeps the `max` most severe findings, most severe first, in the model's order otherwise.
fn cap_findings(findings: &mut Vec<Finding>, max: usize) {
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    findings.truncate(max);
}

/// The text inside the first ``` fence (its info string, e.g. `json`, dropped); the whole text
/// when there is no fence.
fn unfence(content: &str) -> &str {
    let trimmed = content.trim();
    if trimmed.starts_with('{') {
        return trimmed;
    }
    let Some(start) = trimmed.find("```") else {
        return trimmed;
    };
    let after = &trimmed[start + 3..];
    let Some(newline) = after.find('\n') else {
        return trimmed;
    };
    let inner = &after[newline + 1..];
    match inner.find("```") {
        Some(end) => inner[..end].trim(),
        None => inner.trim(),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The user message, and the files left out of it so the prompt fits in `max_input_bytes`:
/// whole files are dropped from the end, never half a patch.
fn user_message(input: &ReviewInput, max_input_bytes: usize) -> (String, Vec<String>) {
    let head = header(input);
    let tail = footer(input);
    let sections: Vec<String> = input.files.iter().map(file_section).collect();
    let budget = max_input_bytes.saturating_sub(SYSTEM_PROMPT.len());
    let mut kept = sections.len();
    loop {
        let omitted: Vec<String> = input.files[kept..].iter().map(|f| f.path.clone()).collect();
        let message = assemble(&head, &sections[..kept], &omitted, &tail);
        // With no file left it is sent as it is: the title and lists are still worth a look.
        if message.len() <= budget || kept == 0 {
            return (message, omitted);
        }
        kept -= 1;
    }
}

fn assemble(head: &str, sections: &[String], omitted: &[String], tail: &str) -> String {
    let mut out = String::with_capacity(
        head.len() + tail.len() + sections.iter().map(String::len).sum::<usize>(),
    );
    out.push_str(head);
    for section in sections {
        out.push_str(section);
    }
    if !omitted.is_empty() {
        out.push_str("\n## Files left out (the prompt would be too long); do not review them\n");
        for path in omitted {
            out.push_str("- ");
            out.push_str(path);
            out.push('\n');
        }
    }
    out.push_str(tail);
    out
}

fn header(input: &ReviewInput) -> String {
    let pull = &input.pull;
    let mut out = format!(
        "Pull request {}#{}\nTitle: {}\nAuthor: {}\nBase branch: {}\n",
        pull.repository, pull.number, pull.title, pull.author, pull.base_ref
    );
    let body = pull.body.trim();
    if !body.is_empty() {
        out.push_str("\nDescription:\n");
        out.push_str(truncate(body, MAX_BODY_BYTES));
        if body.len() > MAX_BODY_BYTES {
            out.push_str("\n[description truncated]");
        }
        out.push('\n');
    }
    if !input.files.is_empty() {
        out.push_str("\n## Changed files\n");
    }
    out
}

fn footer(input: &ReviewInput) -> String {
    let mut out = String::new();
    if !input.summarized.is_empty() {
        out.push_str("\n## Files changed but too large to show (name and size only)\n");
        for file in &input.summarized {
            out.push_str(&format!(
                "- {} ({}, +{} -{})\n",
                file.path,
                status(file),
                file.additions,
                file.deletions
            ));
        }
    }
    if !input.skipped.is_empty() {
        out.push_str("\n## Files not reviewed\n");
        for file in &input.skipped {
            out.push_str(&format!("- {}: {}\n", file.path, file.reason));
        }
    }
    out
}

fn status(file: &ChangedFile) -> &str {
    if file.status.is_empty() {
        "modified"
    } else {
        &file.status
    }
}

/// One file of the prompt: a `### path` header and its patch in a fence. The raw patch for now;
/// it is the place to put new-side line numbers in once the diff module provides them.
fn file_section(file: &ChangedFile) -> String {
    let mut out = format!("\n### {}\n", file.path);
    out.push_str(&format!(
        "({}, +{} -{}",
        status(file),
        file.additions,
        file.deletions
    ));
    if let Some(previous) = &file.previous_filename {
        out.push_str(&format!(", renamed from {previous}"));
    }
    out.push_str(")\n");
    match &file.patch {
        Some(patch) => {
            let patch = super::diff::annotate(patch);
            // A fence longer than any backtick run in the patch, so a Markdown file's own
            // fences do not end it.
            let mut fence = "```".to_owned();
            while patch.contains(fence.as_str()) {
                fence.push('`');
            }
            out.push_str(&format!("{fence}diff\n{}\n{fence}\n", patch.trim_end()));
        }
        None => out.push_str("(no patch: binary or too large to show)\n"),
    }
    out
}
