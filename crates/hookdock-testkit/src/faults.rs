//! Injected faults: answers a test asks the fake to give instead of the real one, such as GitHub's
//! rate-limit and server errors, and answers held back past a client's timeout. It owns the
//! [`Fault`] type and the matching of a request to a queued fault; it does not decide anything
//! else about a request.

use std::time::Duration;

use serde_json::{Value, json};

/// An answer to give, `times` times, to requests matching a method and path pattern
/// (see [`crate::FakeGitHub::fail_next`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub status: u16,
    /// Sent after the usual headers and replacing any of the same name.
    pub headers: Vec<(String, String)>,
    pub body: Value,
    /// How many matching requests get this answer.
    pub times: u32,
    /// How long the fake waits before answering (real time: it is the client's timeout that is
    /// under test). The request has been handled by then; only the answer is late.
    pub delay: Option<Duration>,
    /// Whether `status`, `headers` and `body` replace the real answer. `false` for
    /// [`Fault::slow`], which only delays the answer the endpoint gives.
    pub replaces_answer: bool,
}

impl Fault {
    /// A fault answered once with `status` and `body`.
    pub fn new(status: u16, body: Value) -> Fault {
        Fault {
            status,
            headers: Vec::new(),
            body,
            times: 1,
            delay: None,
            replaces_answer: true,
        }
    }

    /// The endpoint's own answer, sent only after `delay` (once; see [`Fault::times`]). The
    /// request takes effect as usual: a write is applied even when the client gave up waiting.
    pub fn slow(delay: Duration) -> Fault {
        Fault {
            status: 200,
            headers: Vec::new(),
            body: Value::Null,
            times: 1,
            delay: Some(delay),
            replaces_answer: false,
        }
    }

    /// Holds this fault's answer back for `delay` before sending it.
    pub fn delay(mut self, delay: Duration) -> Fault {
        self.delay = Some(delay);
        self
    }

    /// The same fault for `times` matching requests.
    pub fn times(mut self, times: u32) -> Fault {
        self.times = times;
        self
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Fault {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// GitHub's secondary rate limit: 403 with `retry-after`.
    pub fn secondary_rate_limit(retry_after_secs: u64) -> Fault {
        Fault::new(
            403,
            json!({
                "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID 0000:0000:0000000:0000000:00000000.",
                "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
                "status": "403"
            }),
        )
        .header("retry-after", &retry_after_secs.to_string())
    }

    /// GitHub's primary rate limit: 403 with `x-ratelimit-remaining: 0` and `x-ratelimit-reset`.
    pub fn primary_rate_limit(reset_epoch: i64) -> Fault {
        Fault::new(
            403,
            json!({
                "message": "API rate limit exceeded for user ID 1. If you reach out to GitHub Support for help, please include the request ID 0000:0000:0000000:0000000:00000000 and timestamp 2024-01-01 00:00:00 UTC.",
                "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
                "status": "403"
            }),
        )
        .header("x-ratelimit-remaining", "0")
        .header("x-ratelimit-reset", &reset_epoch.to_string())
    }

    /// A 500 as GitHub sends it when something broke on its side.
    pub fn server_error() -> Fault {
        Fault::new(500, json!({"message": "Server Error", "status": "500"}))
    }

    /// GitHub's 404.
    pub fn not_found() -> Fault {
        Fault::new(
            404,
            json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404"}),
        )
    }
}

/// A queued fault with the requests it applies to.
#[derive(Debug, Clone)]
pub(crate) struct FaultRule {
    pub method: String,
    pub pattern: String,
    pub fault: Fault,
}

/// Whether `path` matches `pattern`, where a `*` segment matches any one segment.
pub(crate) fn path_matches(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    let s: Vec<&str> = path.trim_matches('/').split('/').collect();
    p.len() == s.len() && p.iter().zip(&s).all(|(a, b)| *a == "*" || a == b)
}

/// Takes one use of the first fault matching the request, if any.
pub(crate) fn take(rules: &mut Vec<FaultRule>, method: &str, path: &str) -> Option<Fault> {
    let i = rules.iter().position(|r| {
        r.fault.times > 0 && r.method.eq_ignore_ascii_case(method) && path_matches(&r.pattern, path)
    })?;
    rules[i].fault.times -= 1;
    let fault = rules[i].fault.clone();
    if rules[i].fault.times == 0 {
        rules.remove(i);
    }
    Some(fault)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_fault_keeps_the_real_answer_and_a_delay_can_be_added_to_any_fault() {
        let slow = Fault::slow(Duration::from_millis(300)).times(2);
        assert!(!slow.replaces_answer);
        assert_eq!(slow.delay, Some(Duration::from_millis(300)));
        assert_eq!(slow.times, 2);
        let late_error = Fault::server_error().delay(Duration::from_secs(2));
        assert!(late_error.replaces_answer);
        assert_eq!(late_error.status, 500);
        assert_eq!(late_error.delay, Some(Duration::from_secs(2)));
        assert_eq!(Fault::not_found().delay, None);
    }

    #[test]
    fn wildcard_segments_match_one_segment_and_uses_are_counted() {
        assert!(path_matches("/repos/*/*/hooks", "/repos/o/r/hooks"));
        assert!(!path_matches("/repos/*/hooks", "/repos/o/r/hooks"));
        let mut rules = vec![FaultRule {
            method: "GET".into(),
            pattern: "/user".into(),
            fault: Fault::server_error().times(2),
        }];
        assert!(take(&mut rules, "get", "/user").is_some());
        assert!(take(&mut rules, "GET", "/user").is_some());
        assert!(take(&mut rules, "GET", "/user").is_none());
    }
}
