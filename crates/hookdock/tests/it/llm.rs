//! The LLM reviewer against the fake OpenAI-compatible server: the request it sends, how it reads
//! the model's answer (bare or fenced JSON, lenient severities, capped findings), the prompt
//! budget, and its retries (transient errors with `Retry-After` or backoff, one more try for an
//! unusable answer, none for other 4xx). Waits run on a `ManualClock` and are asserted from its
//! recorded sleeps.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hookdock::clock::ManualClock;
use hookdock::handlers::review::diff::annotate;
use hookdock::handlers::review::llm::{LlmConfig, LlmError, LlmOutcome, LlmReviewer};
use hookdock::handlers::review::{
    ChangedFile, Finding, PullInfo, ReviewInput, Severity, SkippedFile,
};
use hookdock_testkit::{FakeLlm, LlmReply};
use secrecy::SecretString;
use serde_json::{Value, json};

const KEY: &str = "sk-hookdock-llm-it-0123456789abcdef";
const MODEL: &str = "review-model-1";
const PATCH_A: &str = "@@ -1,3 +1,4 @@\n fn main() {\n-    run();\n+    let n = input.parse::<u8>().unwrap();\n+    run(n);\n }";
const PATCH_B: &str = "@@ -10,2 +10,3 @@\n context\n+let secret = \"hunter2\";\n end";

struct Env {
    llm: FakeLlm,
    clock: ManualClock,
    reviewer: LlmReviewer,
}

fn config(url: String) -> LlmConfig {
    LlmConfig {
        base_url: url,
        model: MODEL.to_owned(),
        api_key: Some(SecretString::from(KEY)),
        timeout: Duration::from_secs(10),
        max_retries: 2,
        retry_base: Duration::from_millis(500),
        max_input_bytes: 64 * 1024,
        max_findings: 20,
    }
}

impl Env {
    async fn new() -> Env {
        Env::with(|c| c).await
    }

    async fn with(configure: impl FnOnce(LlmConfig) -> LlmConfig) -> Env {
        let llm = FakeLlm::start().await;
        llm.require_key(KEY);
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let reviewer = LlmReviewer::new(configure(config(llm.url())), Arc::new(clock.clone()))
            .expect("reviewer");
        Env {
            llm,
            clock,
            reviewer,
        }
    }

    async fn review(&self) -> LlmOutcome {
        self.reviewer.review(&input()).await
    }

    /// The user message of the `i`th request.
    fn user_message(&self, i: usize) -> String {
        self.llm.requests()[i]["messages"][1]["content"]
            .as_str()
            .expect("user message")
            .to_owned()
    }

    fn outcomes(outcome: &LlmOutcome) -> Vec<String> {
        outcome.calls.iter().map(|c| c.outcome.clone()).collect()
    }
}

fn file(path: &str, patch: &str) -> ChangedFile {
    ChangedFile {
        path: path.to_owned(),
        status: "modified".to_owned(),
        additions: 2,
        deletions: 1,
        patch: Some(patch.to_owned()),
        previous_filename: None,
    }
}

fn input() -> ReviewInput {
    ReviewInput {
        pull: PullInfo {
            repository: "octo/hello".to_owned(),
            number: 42,
            title: "Parse the count from the input".to_owned(),
            body: "Reads the count instead of hard-coding it.".to_owned(),
            author: "mona".to_owned(),
            base_ref: "main".to_owned(),
            head_sha: "0123456789abcdef0123456789abcdef01234567".to_owned(),
        },
        files: vec![file("src/main.rs", PATCH_A), file("src/config.rs", PATCH_B)],
        summarized: vec![ChangedFile {
            path: "src/huge.rs".to_owned(),
            status: "added".to_owned(),
            additions: 5000,
            deletions: 0,
            patch: None,
            previous_filename: None,
        }],
        skipped: vec![SkippedFile {
            path: "Cargo.lock".to_owned(),
            reason: "lock file".to_owned(),
        }],
    }
}

fn finding(path: &str, line: Option<u64>, severity: Severity, message: &str) -> Finding {
    Finding {
        path: Some(path.to_owned()),
        line,
        severity,
        message: message.to_owned(),
        source: "llm".to_owned(),
    }
}

#[tokio::test]
async fn a_valid_review_is_read_value_by_value() {
    let env = Env::new().await;
    env.llm.push_reply(LlmReply::Content(
        json!({
            "summary": "  Parses the count; one crash.  ",
            "findings": [
                {"path": "src/main.rs", "line": 2, "severity": "error", "message": "unwrap() panics on bad input."},
                {"path": "src/config.rs", "line": 11, "severity": "high", "message": "Hard-coded secret."},
                {"path": "src/main.rs", "line": 3, "severity": "low", "message": "Name n better."},
                {"path": "src/main.rs", "line": 0, "severity": "medium", "message": "Whole-file remark."},
                {"path": "src/main.rs", "severity": "bogus", "message": "No line."},
                {"path": "src/main.rs", "line": 4, "severity": "critical", "message": "   "},
                {"path": "src/main.rs", "line": 4, "severity": "warning"},
                {"line": 9, "severity": "info", "message": "About the whole change."},
            ],
        })
        .to_string(),
    ));
    let outcome = env.review().await;
    let review = outcome.result.clone().expect("review");
    assert_eq!(review.summary, "Parses the count; one crash.");
    let general = Finding {
        path: None,
        line: None,
        severity: Severity::Info,
        message: "About the whole change.".to_owned(),
        source: "llm".to_owned(),
    };
    // Most severe first, in the model's order otherwise; empty messages dropped.
    assert_eq!(
        review.findings,
        vec![
            finding(
                "src/main.rs",
                Some(2),
                Severity::Error,
                "unwrap() panics on bad input."
            ),
            finding(
                "src/config.rs",
                Some(11),
                Severity::Error,
                "Hard-coded secret."
            ),
            finding("src/main.rs", None, Severity::Warning, "Whole-file remark."),
            finding("src/main.rs", None, Severity::Warning, "No line."),
            finding("src/main.rs", Some(3), Severity::Info, "Name n better."),
            general,
        ]
    );
    assert!(outcome.omitted.is_empty());
    assert_eq!(outcome.calls.len(), 1);
    let call = &outcome.calls[0];
    assert_eq!(
        (call.model.as_str(), call.outcome.as_str(), call.attempt),
        (MODEL, "ok", 1)
    );
    let request = &env.llm.requests()[0];
    let sent_bytes = request["messages"][0]["content"]
        .as_str()
        .expect("system")
        .len()
        + request["messages"][1]["content"]
            .as_str()
            .expect("user")
            .len();
    assert_eq!(call.prompt_bytes, sent_bytes);
    let audit = serde_json::to_value(call).expect("serializable");
    assert_eq!(audit["outcome"], "ok");
    assert_eq!(audit["attempt"], 1);
    assert!(env.clock.sleeps().is_empty());
    assert!(env.llm.violations().is_empty());
}

#[tokio::test]
async fn the_request_is_a_json_mode_chat_completion_with_the_patches_and_the_key() {
    let env = Env::with(|c| LlmConfig {
        base_url: format!("{}/", c.base_url),
        ..c
    })
    .await;
    let outcome = env.review().await;
    assert_eq!(
        outcome.result.expect("review").findings,
        Vec::<Finding>::new()
    );
    assert_eq!(env.llm.request_count(), 1);
    assert!(
        env.llm.violations().is_empty(),
        "{:?}",
        env.llm.violations()
    );
    assert_eq!(env.llm.authorizations(), [Some(format!("Bearer {KEY}"))]);
    let request = &env.llm.requests()[0];
    assert_eq!(request["model"], MODEL);
    assert_eq!(request["temperature"], 0);
    assert_eq!(request["response_format"], json!({"type": "json_object"}));
    let roles: Vec<&str> = request["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["role"].as_str().expect("role"))
        .collect();
    assert_eq!(roles, ["system", "user"]);
    let system = request["messages"][0]["content"].as_str().expect("system");
    for needle in [
        "\"summary\"",
        "\"findings\"",
        "\"line\"",
        "\"info\" | \"warning\" | \"error\"",
        "NEW",
    ] {
        assert!(system.contains(needle), "system prompt lacks {needle}");
    }
    let user = env.user_message(0);
    for needle in [
        "Title: Parse the count from the input",
        "Author: mona",
        "Base branch: main",
        "Reads the count instead of hard-coding it.",
        "### src/main.rs",
        &annotate(PATCH_A),
        "### src/config.rs",
        &annotate(PATCH_B),
        "- src/huge.rs (added, +5000 -0)",
        "- Cargo.lock: lock file",
    ] {
        assert!(
            user.contains(needle),
            "user message lacks {needle:?}:\n{user}"
        );
    }
    assert!(
        !user.contains("src/huge.rs\n```"),
        "no patch for a summarized file"
    );
    assert!(
        user.find("### src/main.rs") < user.find("### src/config.rs"),
        "files in GitHub's order"
    );
}

#[tokio::test]
async fn a_long_description_is_cut_to_about_four_kilobytes() {
    let env = Env::new().await;
    let mut input = input();
    input.pull.body = format!("{}TAIL-MARKER", "é".repeat(5000));
    env.reviewer.review(&input).await.result.expect("review");
    let user = env.user_message(0);
    assert!(!user.contains("TAIL-MARKER"));
    assert!(user.contains("[description truncated]"));
    assert!(user.len() < 4096 + 2048, "{}", user.len());
}

#[tokio::test]
async fn fenced_json_is_accepted() {
    let env = Env::new().await;
    let json = LlmReply::findings_json("Fenced.", &[("src/main.rs", 2, "warning", "Check it.")]);
    env.llm
        .push_reply(LlmReply::Content(format!("```json\n{json}\n```")));
    env.llm.push_reply(LlmReply::Content(format!(
        "Here is my review:\n\n```\n{json}\n```\nThanks."
    )));
    for _ in 0..2 {
        let review = env.review().await.result.expect("review");
        assert_eq!(review.summary, "Fenced.");
        assert_eq!(
            review.findings,
            [finding(
                "src/main.rs",
                Some(2),
                Severity::Warning,
                "Check it."
            )]
        );
    }
    assert_eq!(env.llm.request_count(), 2);
}

#[tokio::test]
async fn malformed_output_is_asked_for_once_more_then_is_an_error() {
    let env = Env::new().await;
    env.llm
        .push_reply(LlmReply::Content("Looks good to me!".into()));
    env.llm.push_reply(LlmReply::Content(
        r#"{"summary": "x", "findings": "none"}"#.into(),
    ));
    let outcome = env.review().await;
    assert_eq!(env.llm.request_count(), 2);
    match &outcome.result {
        Err(LlmError::InvalidOutput(reason)) => {
            assert!(reason.contains("\"findings\" is a string"), "{reason}")
        }
        other => panic!("expected InvalidOutput, got {other:?}"),
    }
    let outcomes = Env::outcomes(&outcome);
    assert_eq!(outcomes.len(), 2);
    assert!(outcomes[0].starts_with("invalid output: the content is not JSON"));
    assert!(outcomes[1].starts_with("invalid output: \"findings\" is a string"));
    assert_eq!(
        outcome.calls.iter().map(|c| c.attempt).collect::<Vec<_>>(),
        [1, 2]
    );
    assert!(env.clock.sleeps().is_empty(), "no wait before asking again");

    // Once only: a good second answer is used.
    env.llm.push_reply(LlmReply::Content(
        r#"{"summary": 3, "findings": []}"#.into(),
    ));
    env.llm
        .push_reply(LlmReply::findings("Fine.", &[("a.rs", 1, "info", "ok")]));
    let outcome = env.review().await;
    assert_eq!(outcome.result.expect("review").summary, "Fine.");
    assert_eq!(env.llm.request_count(), 4);
}

#[tokio::test]
async fn wrongly_typed_fields_are_invalid_output() {
    let env = Env::new().await;
    for (content, expected) in [
        (json!({"findings": []}), "no \"summary\""),
        (json!({"summary": "s"}), "no \"findings\""),
        (
            json!({"summary": "s", "findings": [{"path": "a", "line": "12", "message": "m"}]}),
            "findings[0].line is a string",
        ),
        (
            json!({"summary": "s", "findings": [{"path": "a", "line": 1.5, "message": "m"}]}),
            "findings[0].line is a number",
        ),
        (
            json!({"summary": "s", "findings": [{"path": 7, "message": "m"}]}),
            "findings[0].path is a number",
        ),
        (
            json!({"summary": "s", "findings": ["m"]}),
            "findings[0] is a string",
        ),
        (json!(["s"]), "not a JSON object"),
    ] {
        let before = env.llm.request_count();
        env.llm.push_reply(LlmReply::Content(content.to_string()));
        env.llm.push_reply(LlmReply::Content(content.to_string()));
        let outcome = env.review().await;
        match outcome.result {
            Err(LlmError::InvalidOutput(reason)) => {
                assert!(reason.contains(expected), "{content}: {reason}")
            }
            other => panic!("{content}: expected InvalidOutput, got {other:?}"),
        }
        assert_eq!(env.llm.request_count(), before + 2);
    }
}

#[tokio::test]
async fn a_non_json_body_is_invalid_output() {
    let env = Env::new().await;
    env.llm
        .push_reply(LlmReply::Raw("<html>upstream hiccup</html>".into()));
    env.llm
        .push_reply(LlmReply::Raw("<html>upstream hiccup</html>".into()));
    let outcome = env.review().await;
    match outcome.result {
        Err(LlmError::InvalidOutput(reason)) => {
            assert!(reason.contains("not JSON"), "{reason}");
            assert!(reason.contains("upstream hiccup"), "{reason}");
        }
        other => panic!("expected InvalidOutput, got {other:?}"),
    }
    assert_eq!(env.llm.request_count(), 2);
}

#[tokio::test]
async fn a_truncated_answer_is_asked_for_once_more() {
    let env = Env::new().await;
    env.llm
        .push_reply(LlmReply::Truncated(r#"{"summary": "Cut"#.into()));
    env.llm
        .push_reply(LlmReply::Truncated(r#"{"summary": "Cut again"#.into()));
    let outcome = env.review().await;
    assert_eq!(outcome.result, Err(LlmError::Truncated));
    assert_eq!(Env::outcomes(&outcome), ["truncated", "truncated"]);
    assert_eq!(env.llm.request_count(), 2);

    env.llm
        .push_reply(LlmReply::Truncated(r#"{"summary": "Cut"#.into()));
    let outcome = env.review().await;
    assert_eq!(
        outcome.result.clone().expect("the default reply").findings,
        Vec::<Finding>::new()
    );
    assert_eq!(Env::outcomes(&outcome), ["truncated", "ok"]);
    assert_eq!(env.llm.request_count(), 4);
}

#[tokio::test]
async fn a_429_waits_retry_after_then_succeeds() {
    let env = Env::new().await;
    env.llm.push_reply(LlmReply::Status(
        429,
        json!({"error": {"message": "Rate limit reached for requests", "type": "requests"}}),
        Some(7),
    ));
    env.llm
        .push_reply(LlmReply::findings("After the wait.", &[]));
    let outcome = env.review().await;
    assert_eq!(
        outcome.result.clone().expect("review").summary,
        "After the wait."
    );
    assert_eq!(env.llm.request_count(), 2);
    assert_eq!(env.clock.sleeps(), [Duration::from_secs(7)]);
    assert_eq!(Env::outcomes(&outcome), ["http 429", "ok"]);
}

#[tokio::test]
async fn a_long_retry_after_is_capped_at_a_minute() {
    let env = Env::new().await;
    env.llm
        .push_reply(LlmReply::Status(503, json!({}), Some(3600)));
    env.review().await.result.expect("review");
    assert_eq!(env.clock.sleeps(), [Duration::from_secs(60)]);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_then_returned() {
    let env = Env::new().await;
    for _ in 0..3 {
        env.llm
            .push_reply(LlmReply::error(500, "The server had an error"));
    }
    env.llm
        .push_reply(LlmReply::findings("Never asked for.", &[]));
    let outcome = env.review().await;
    assert_eq!(
        outcome.result,
        Err(LlmError::Status {
            status: 500,
            message: "The server had an error".into()
        })
    );
    assert!(outcome.result.as_ref().is_err_and(LlmError::is_transient));
    // max_retries = 2: three requests, waits of retry_base doubling.
    assert_eq!(env.llm.request_count(), 3);
    assert_eq!(
        env.clock.sleeps(),
        [Duration::from_millis(500), Duration::from_millis(1000)]
    );
    assert_eq!(
        Env::outcomes(&outcome),
        ["http 500", "http 500", "http 500"]
    );
    assert_eq!(env.llm.queued(), 1);
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout() {
    let env = Env::with(|c| LlmConfig {
        timeout: Duration::from_millis(200),
        max_retries: 1,
        ..c
    })
    .await;
    for _ in 0..2 {
        env.llm.push_reply(LlmReply::delayed(
            Duration::from_secs(3),
            LlmReply::findings("Too late.", &[]),
        ));
    }
    let outcome = env.review().await;
    assert_eq!(outcome.result, Err(LlmError::Timeout));
    assert!(LlmError::Timeout.is_transient());
    assert_eq!(Env::outcomes(&outcome), ["timeout", "timeout"]);
    assert_eq!(env.llm.request_count(), 2);
    assert_eq!(env.clock.sleeps(), [Duration::from_millis(500)]);
    for call in &outcome.calls {
        assert!(
            (200..3000).contains(&call.duration_ms),
            "{}",
            call.duration_ms
        );
    }
}

#[tokio::test]
async fn a_refused_key_is_not_retried_and_not_shown() {
    let env = Env::with(|c| LlmConfig {
        api_key: Some(SecretString::from("sk-wrong-key-for-hookdock-tests-999")),
        ..c
    })
    .await;
    let outcome = env.review().await;
    let error = outcome.result.expect_err("refused");
    match &error {
        LlmError::Status { status, message } => {
            assert_eq!(*status, 401);
            assert!(
                message.starts_with("Incorrect API key provided"),
                "{message}"
            );
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    assert!(!error.is_transient());
    assert_eq!(env.llm.request_count(), 1);
    assert!(env.clock.sleeps().is_empty());
    assert!(
        !error
            .to_string()
            .contains("sk-wrong-key-for-hookdock-tests-999")
    );

    // Without any key the fake asks for one.
    let env = Env::with(|c| LlmConfig { api_key: None, ..c }).await;
    let error = env.review().await.result.expect_err("refused");
    assert!(matches!(error, LlmError::Status { status: 401, .. }));
    assert_eq!(env.llm.authorizations(), [None]);
}

#[tokio::test]
async fn other_client_errors_are_not_retried() {
    for status in [400u16, 404] {
        let env = Env::new().await;
        env.llm
            .push_reply(LlmReply::error(status, "The model `x` does not exist"));
        let outcome = env.review().await;
        assert_eq!(
            outcome.result,
            Err(LlmError::Status {
                status,
                message: "The model `x` does not exist".into()
            })
        );
        assert_eq!(Env::outcomes(&outcome), [format!("http {status}")]);
        assert_eq!(env.llm.request_count(), 1);
    }
}

#[tokio::test]
async fn the_key_never_appears_in_an_error() {
    // A server that quotes the key back, in JSON and in plain text.
    let env = Env::with(|c| LlmConfig {
        max_retries: 0,
        ..c
    })
    .await;
    env.llm.push_reply(LlmReply::error(
        400,
        &format!("Invalid key {KEY} for this organization"),
    ));
    env.llm.push_reply(LlmReply::Status(
        502,
        Value::String(format!("bad gateway for {KEY}")),
        None,
    ));
    env.llm
        .push_reply(LlmReply::Content(format!("I saw {KEY} in your request")));
    env.llm
        .push_reply(LlmReply::Content(format!("Again, {KEY}")));
    let mut errors = Vec::new();
    for _ in 0..3 {
        errors.push(env.review().await.result.expect_err("fails"));
    }
    assert!(matches!(errors[0], LlmError::Status { status: 400, .. }));
    assert!(matches!(errors[1], LlmError::Status { status: 502, .. }));
    assert!(matches!(errors[2], LlmError::InvalidOutput(_)));
    assert!(errors[0].to_string().contains("Invalid key [redacted]"));

    // Nothing listens on a closed port: a transport error, retried, with the key configured.
    let port = crate::helpers::free_port();
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
    let reviewer = LlmReviewer::new(
        LlmConfig {
            max_retries: 1,
            ..config(format!("http://127.0.0.1:{port}/v1"))
        },
        Arc::new(clock.clone()),
    )
    .expect("reviewer");
    let outcome = reviewer.review(&input()).await;
    let transport = outcome.result.clone().expect_err("nothing listens");
    assert!(
        matches!(&transport, LlmError::Transport(m) if m.contains("connection failed")),
        "{transport:?}"
    );
    assert_eq!(outcome.calls.len(), 2);
    assert_eq!(clock.sleeps(), [Duration::from_millis(500)]);
    errors.push(transport);
    errors.push(LlmError::Timeout);
    errors.push(LlmError::Truncated);

    for error in &errors {
        assert!(!error.to_string().contains(KEY), "{error}");
        assert!(!format!("{error:?}").contains(KEY), "{error:?}");
    }
    assert!(!format!("{reviewer:?}").contains(KEY));
    assert!(!format!("{:?}", config("http://x".into())).contains(KEY));
}

#[tokio::test]
async fn max_input_bytes_leaves_whole_files_out_from_the_end() {
    let big = |tag: &str| {
        let mut patch = "@@ -1,1 +1,40 @@\n".to_owned();
        for i in 0..40 {
            patch.push_str(&format!(
                "+let {tag}_{i} = compute_something_rather_long({i});\n"
            ));
        }
        patch
    };
    let mut input = input();
    input.files = vec![
        file("src/one.rs", &big("one")),
        file("src/two.rs", &big("two")),
        file("src/three.rs", &big("three")),
    ];
    let env = Env::new().await;
    let full = env.reviewer.review(&input).await;
    assert!(full.omitted.is_empty());
    let full_bytes = full.calls[0].prompt_bytes;
    let one_patch = annotate(&big("one")).len();

    // Room for about one and a half files fewer than all three.
    let budget = full_bytes - one_patch - one_patch / 2;
    let env = Env::with(|c| LlmConfig {
        max_input_bytes: budget,
        ..c
    })
    .await;
    let outcome = env.reviewer.review(&input).await;
    outcome.result.expect("review");
    assert_eq!(outcome.omitted, ["src/two.rs", "src/three.rs"]);
    assert!(outcome.calls[0].prompt_bytes <= budget);
    let user = env.user_message(0);
    assert!(
        user.contains(&annotate(&big("one"))),
        "the first file whole"
    );
    assert!(!user.contains("two_0"), "no part of a left-out patch");
    assert!(!user.contains("three_0"));
    assert!(user.contains("- src/two.rs\n- src/three.rs\n"), "{user}");

    // Too small for any file: all are left out, the pull request is still reviewed.
    let env = Env::with(|c| LlmConfig {
        max_input_bytes: 100,
        ..c
    })
    .await;
    let outcome = env.reviewer.review(&input).await;
    assert_eq!(
        outcome.omitted,
        ["src/one.rs", "src/two.rs", "src/three.rs"]
    );
    assert!(env.user_message(0).contains("Title: Parse the count"));
}

#[tokio::test]
async fn max_findings_keeps_the_most_severe() {
    let env = Env::with(|c| LlmConfig {
        max_findings: 3,
        ..c
    })
    .await;
    env.llm.push_reply(LlmReply::findings(
        "Many.",
        &[
            ("a.rs", 1, "info", "i1"),
            ("a.rs", 2, "warning", "w1"),
            ("a.rs", 3, "error", "e1"),
            ("a.rs", 4, "info", "i2"),
            ("a.rs", 5, "warning", "w2"),
            ("a.rs", 6, "warning", "w3"),
            ("a.rs", 7, "critical", "e2"),
        ],
    ));
    let review = env.review().await.result.expect("review");
    let kept: Vec<(&str, Severity, Option<u64>)> = review
        .findings
        .iter()
        .map(|f| (f.message.as_str(), f.severity, f.line))
        .collect();
    assert_eq!(
        kept,
        [
            ("e1", Severity::Error, Some(3)),
            ("e2", Severity::Error, Some(7)),
            ("w1", Severity::Warning, Some(2)),
        ]
    );
}

#[test]
fn only_http_urls_are_accepted() {
    let error = LlmReviewer::new(
        config("api.openai.com/v1".into()),
        Arc::new(ManualClock::new(SystemTime::UNIX_EPOCH)),
    )
    .expect_err("no scheme");
    assert!(error.to_string().contains("http:// or https://"), "{error}");
}

#[test]
fn transient_errors_are_the_retryable_ones() {
    let status = |status| LlmError::Status {
        status,
        message: String::new(),
    };
    assert!(status(429).is_transient());
    assert!(status(503).is_transient());
    assert!(!status(400).is_transient());
    assert!(!status(401).is_transient());
    assert!(LlmError::Transport("reset".into()).is_transient());
    assert!(!LlmError::Truncated.is_transient());
    assert!(!LlmError::InvalidOutput("x".into()).is_transient());
}
