//! `hookdock send`: signs a payload exactly as GitHub does (same bytes, fresh delivery id, the
//! headers GitHub sends) and posts it. The operator's test tool, also used by the benchmark.

use std::time::Duration;

use crate::ingest::{ContentType, Envelope, header, sign};

/// Example payloads compiled into the binary, so the quick start needs no files.
pub const EMBEDDED_PAYLOADS: &[(&str, &[u8])] = &[
    (
        "issue_comment.created",
        include_bytes!("../payloads/issue_comment.created.json"),
    ),
    (
        "issues.opened",
        include_bytes!("../payloads/issues.opened.json"),
    ),
    ("ping", include_bytes!("../payloads/ping.json")),
    (
        "pull_request.opened",
        include_bytes!("../payloads/pull_request.opened.json"),
    ),
    ("push", include_bytes!("../payloads/push.json")),
];

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no embedded example named {name:?}; available: {available}")]
    UnknownFixture { name: String, available: String },
    #[error("--event is required with --file (the X-GitHub-Event header to send)")]
    MissingEvent,
    /// Its causes (connection refused, timed out, …) follow in the error's chain.
    #[error("request to {url} failed")]
    Request { url: String, source: reqwest::Error },
}

/// Finds an embedded example by name (`pull_request.opened`; `ping.none` also finds `ping`).
pub fn embedded_payload(name: &str) -> Result<&'static [u8], SendError> {
    let wanted = name.trim_end_matches(".json").trim_end_matches(".0");
    let wanted = wanted.strip_suffix(".none").unwrap_or(wanted);
    EMBEDDED_PAYLOADS
        .iter()
        .find(|(n, _)| *n == wanted)
        .map(|(_, body)| *body)
        .ok_or_else(|| SendError::UnknownFixture {
            name: name.to_owned(),
            available: EMBEDDED_PAYLOADS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// A delivery to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub event: String,
    /// The JSON document; form encoding wraps it as GitHub does.
    pub json: Vec<u8>,
    pub secret: Option<String>,
    pub delivery_id: String,
    pub content_type: ContentType,
    pub hook_id: Option<u64>,
}

impl Outgoing {
    pub fn new(event: &str, json: Vec<u8>, secret: Option<String>) -> Outgoing {
        Outgoing {
            event: event.to_owned(),
            json,
            secret,
            delivery_id: uuid::Uuid::new_v4().to_string(),
            content_type: ContentType::Json,
            hook_id: None,
        }
    }

    /// The exact body bytes that will be sent (and signed).
    pub fn body(&self) -> Vec<u8> {
        match self.content_type {
            ContentType::Json => self.json.clone(),
            ContentType::Form => {
                let text = String::from_utf8_lossy(&self.json);
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("payload", &text)
                    .finish()
                    .into_bytes()
            }
        }
    }

    /// Headers as GitHub sends them, for this body.
    pub fn headers(&self, body: &[u8]) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("Content-Type", self.content_type.as_str().to_owned()),
            ("User-Agent", "GitHub-Hookshot/hookdock-send".to_owned()),
            (header::EVENT, self.event.clone()),
            (header::DELIVERY, self.delivery_id.clone()),
        ];
        if let Some(secret) = &self.secret {
            headers.push((header::SIGNATURE_256, sign(secret.as_bytes(), body)));
        }
        if let Some(id) = self.hook_id {
            headers.push((header::HOOK_ID, id.to_string()));
        }
        if let Ok(envelope) = Envelope::parse(&self.json)
            && let Some(repo_id) = envelope.repository_id
        {
            headers.push((header::TARGET_TYPE, "repository".to_owned()));
            headers.push((header::TARGET_ID, repo_id.to_string()));
        }
        headers
    }
}

/// What the server answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

pub async fn send(url: &str, outgoing: &Outgoing) -> Result<Answer, SendError> {
    let body = outgoing.body();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| request_error(url, e))?;
    let mut request = client.post(url);
    for (name, value) in outgoing.headers(&body) {
        request = request.header(name, value);
    }
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|e| request_error(url, e))?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(|e| request_error(url, e))?;
    Ok(Answer { status, body })
}

/// reqwest's text names the URL again; the error says it once.
fn request_error(url: &str, e: reqwest::Error) -> SendError {
    SendError::Request {
        url: url.to_owned(),
        source: e.without_url(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_examples_are_found_by_fixture_names() {
        assert!(embedded_payload("pull_request.opened").is_ok());
        assert!(embedded_payload("ping.none.0").is_ok());
        assert!(embedded_payload("push.none.0.json").is_ok());
        let err = embedded_payload("nope").unwrap_err().to_string();
        assert!(err.contains("pull_request.opened"), "{err}");
    }

    #[test]
    fn headers_carry_signature_of_exact_body_and_target() {
        let json = br#"{"repository":{"id":5,"full_name":"o/r"}}"#.to_vec();
        let mut out = Outgoing::new("push", json.clone(), Some("s".into()));
        out.content_type = ContentType::Form;
        let body = out.body();
        assert!(body.starts_with(b"payload=%7B"));
        let headers = out.headers(&body);
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get(header::SIGNATURE_256), Some(sign(b"s", &body)));
        assert_eq!(get(header::TARGET_ID).as_deref(), Some("5"));
        assert_eq!(
            get("Content-Type").as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(get(header::DELIVERY).map(|d| d.len()), Some(36));
    }
}
