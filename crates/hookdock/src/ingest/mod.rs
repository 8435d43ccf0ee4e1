//! Ingest: turns an HTTP delivery into a committed event, or into a precise refusal.
//!
//! Order of work, cheapest and safest first: required headers and content type, then the
//! signature over the raw bytes (nothing of the body is parsed before it verifies; the body's
//! SHA-256 for the replay guard comes out of the same pass, see [`digest`]), then one pass over
//! the JSON for the routing fields, then compression and the durable write.
//! The caller answers 2xx only once [`Ingestor::ingest`] returns `Ok`, which happens only
//! after the group commit holding the delivery has reached the disk.
//!
//! This module knows nothing of HTTP frameworks; `http` maps [`IngestError`] to statuses.

mod digest;
mod envelope;
mod secrets;
pub mod signature;
mod source;

use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

pub use envelope::{BodyError, ContentType, Envelope, KNOWN_EVENTS, is_known_event, json_document};
pub use secrets::{ManagedSecret, TargetType, Unverified, WebhookSecrets};
pub use signature::{Signature, SignatureError, sign};
pub use source::{SourceGuard, SourceRefusal, parse_net};

use crate::handlers::HandlerRegistry;
use crate::store::{EventStatus, IngestOutcome, NewDelivery, Store, StoreError, now_ms};

/// GitHub does not deliver payloads over 25 MB.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// Bodies above this are compressed off the async threads.
const INLINE_COMPRESS_LIMIT: usize = 256 * 1024;

/// The delivery headers hookdock reads, as text. Filled by the HTTP layer.
#[derive(Debug, Default, Clone)]
pub struct DeliveryHeaders<'a> {
    pub event: Option<&'a str>,
    pub delivery: Option<&'a str>,
    pub signature_256: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub hook_id: Option<&'a str>,
    pub target_type: Option<&'a str>,
    pub target_id: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

/// Header names, as GitHub spells them.
pub mod header {
    pub const EVENT: &str = "X-GitHub-Event";
    pub const DELIVERY: &str = "X-GitHub-Delivery";
    pub const SIGNATURE_256: &str = "X-Hub-Signature-256";
    pub const HOOK_ID: &str = "X-GitHub-Hook-ID";
    pub const TARGET_TYPE: &str = "X-GitHub-Hook-Installation-Target-Type";
    pub const TARGET_ID: &str = "X-GitHub-Hook-Installation-Target-ID";
}

/// Why a delivery was refused. Nothing is stored for any of these.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("missing required header {0}")]
    MissingHeader(&'static str),
    #[error("header {name} is invalid: {reason}")]
    InvalidHeader { name: &'static str, reason: String },
    #[error(
        "unsupported content type {0:?}; configure the hook to send application/json or application/x-www-form-urlencoded"
    )]
    UnsupportedContentType(String),
    #[error("body is larger than GitHub's 25 MB limit")]
    PayloadTooLarge,
    #[error(
        "the request body did not fully arrive within {0} s of its headers (read_timeout_secs); nothing was stored, send it again"
    )]
    BodyTimeout(u64),
    #[error("the request body could not be read ({0}); nothing was stored, send it again")]
    BodyUnreadable(String),
    #[error(
        "missing X-Hub-Signature-256; set a secret on the GitHub hook (hookdock accepts unsigned deliveries only when allow_unsigned is configured)"
    )]
    MissingSignature,
    #[error("{0}")]
    BadSignature(SignatureError),
    #[error(
        "no webhook secret is configured for this hook, so its signature cannot be verified; set HOOKDOCK_WEBHOOK_SECRET or a webhook_secrets entry"
    )]
    NoSecret,
    #[error(
        "installation target type {0:?} is not supported; hookdock accepts repository, organization and integration hooks"
    )]
    UnsupportedTarget(String),
    #[error("{0}")]
    Body(BodyError),
    #[error(
        "the delivery could not be stored ({0}); it was not accepted, so GitHub will record a failed delivery that can be redelivered"
    )]
    Store(#[from] StoreError),
    #[error("the delivery could not be prepared for storage ({0}); it was not accepted")]
    Internal(String),
}

impl IngestError {
    /// Counts the refusal in `hookdock_webhook_rejected_total`, labelled with [`Self::code`].
    /// [`Ingestor::ingest`] counts its own; callers count those they make before it (the body
    /// could not be read).
    pub fn count(&self) {
        metrics::counter!("hookdock_webhook_rejected_total", "reason" => self.code()).increment(1);
    }

    /// Short machine-readable code, also the `reason` label of the rejection metric.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::MissingHeader(_) => "missing_header",
            IngestError::InvalidHeader { .. } => "invalid_header",
            IngestError::UnsupportedContentType(_) => "unsupported_content_type",
            IngestError::PayloadTooLarge => "payload_too_large",
            IngestError::BodyTimeout(_) => "body_timeout",
            IngestError::BodyUnreadable(_) => "body_unreadable",
            IngestError::MissingSignature => "missing_signature",
            IngestError::BadSignature(_) => "invalid_signature",
            IngestError::NoSecret => "no_secret_configured",
            IngestError::UnsupportedTarget(_) => "unsupported_target",
            IngestError::Body(
                BodyError::InvalidJson(_) | BodyError::NotAnObject | BodyError::DuplicateField(_),
            ) => "invalid_json",
            IngestError::Body(BodyError::MissingFormPayload) => "invalid_form",
            IngestError::Store(_) => "storage_unavailable",
            IngestError::Internal(_) => "internal",
        }
    }
}

/// What the sender is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    Received,
    DuplicateSkipped,
    Ignored,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Receipt {
    pub status: ReceiptStatus,
    pub event_id: Option<i64>,
    pub delivery_id: String,
    /// `event.action`.
    pub event: String,
    /// Set when the delivery is stored but held back (`replay_suspected`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<EventStatus>,
}

/// The ingest service: verification, parsing, persistence.
pub struct Ingestor {
    secrets: Arc<WebhookSecrets>,
    allow_unsigned: bool,
    registry: HandlerRegistry,
    store: Store,
    zstd_level: i32,
    /// Woken when new jobs are committed, so local workers start at once.
    jobs_ready: Arc<Notify>,
}

impl Ingestor {
    pub fn new(
        secrets: Arc<WebhookSecrets>,
        allow_unsigned: bool,
        registry: HandlerRegistry,
        store: Store,
        zstd_level: i32,
        jobs_ready: Arc<Notify>,
    ) -> Ingestor {
        Ingestor {
            secrets,
            allow_unsigned,
            registry,
            store,
            zstd_level,
            jobs_ready,
        }
    }

    pub async fn ingest(
        &self,
        headers: &DeliveryHeaders<'_>,
        body: Bytes,
    ) -> Result<Receipt, IngestError> {
        let result = self.ingest_inner(headers, body).await;
        match &result {
            Ok(receipt) => {
                let outcome = match (receipt.status, receipt.held) {
                    (_, Some(_)) => "replay_suspected",
                    (ReceiptStatus::Received, None) => "received",
                    (ReceiptStatus::DuplicateSkipped, None) => "duplicate",
                    (ReceiptStatus::Ignored, None) if receipt.event_id.is_none() => "unknown_event",
                    (ReceiptStatus::Ignored, None) => "ignored",
                };
                metrics::counter!("hookdock_webhook_deliveries_total", "outcome" => outcome)
                    .increment(1);
            }
            Err(e) => e.count(),
        }
        result
    }

    async fn ingest_inner(
        &self,
        h: &DeliveryHeaders<'_>,
        body: Bytes,
    ) -> Result<Receipt, IngestError> {
        let event = h.event.ok_or(IngestError::MissingHeader(header::EVENT))?;
        let delivery_id = h
            .delivery
            .ok_or(IngestError::MissingHeader(header::DELIVERY))?;
        validate_event_name(event)?;
        validate_delivery_id(delivery_id)?;
        let content_type_header = h.content_type.unwrap_or("");
        let content_type = ContentType::parse(content_type_header)
            .ok_or_else(|| IngestError::UnsupportedContentType(content_type_header.to_owned()))?;
        if body.len() > MAX_BODY_BYTES {
            return Err(IngestError::PayloadTooLarge);
        }
        let hook_id = parse_id(h.hook_id, header::HOOK_ID)?;
        let target_id = parse_id(h.target_id, header::TARGET_ID)?;
        // Refused only once the sender is authenticated; parsed now for the secret lookup.
        let target_type: Option<Result<TargetType, &str>> =
            h.target_type.map(|t| TargetType::parse(t).ok_or(t));

        // Signature first: before this, the body is untrusted bytes. The replay guard's hash
        // of the body comes out of the same pass.
        let body_sha256: [u8; 32] = match h.signature_256 {
            None if self.allow_unsigned => Sha256::digest(&body).into(),
            None => return Err(IngestError::MissingSignature),
            Some(value) => {
                let signature = Signature::parse(value).map_err(IngestError::BadSignature)?;
                let target = match (target_type, target_id) {
                    (Some(Ok(t)), Some(id)) => Some((t, id)),
                    _ => None,
                };
                match self
                    .secrets
                    .verify(hook_id, target, &signature, &body, now_ms())
                {
                    Ok(body_sha256) => body_sha256,
                    Err(Unverified::NoSecret) => return Err(IngestError::NoSecret),
                    Err(Unverified::Mismatch) => {
                        return Err(IngestError::BadSignature(SignatureError::Mismatch));
                    }
                }
            }
        };
        let target_type = target_type
            .transpose()
            .map_err(|t| IngestError::UnsupportedTarget(t.to_owned()))?;

        let document = json_document(content_type, &body).map_err(IngestError::Body)?;
        let envelope = Envelope::parse(&document).map_err(IngestError::Body)?;
        let label = match &envelope.action {
            Some(action) => format!("{event}.{action}"),
            None => event.to_owned(),
        };
        if !is_known_event(event) {
            tracing::info!(
                event,
                delivery = delivery_id,
                "unknown event type answered as ignored, not stored"
            );
            return Ok(Receipt {
                status: ReceiptStatus::Ignored,
                event_id: None,
                delivery_id: delivery_id.to_owned(),
                event: label,
                held: None,
            });
        }

        let handlers = self.registry.subscribers(event, envelope.action.as_deref());
        let headers_json = headers_json(h, content_type);
        let delivery = NewDelivery {
            delivery_id: delivery_id.to_owned(),
            event: event.to_owned(),
            action: envelope.action.as_deref().map(str::to_owned),
            repository: envelope.repository.as_deref().map(str::to_owned),
            repository_id: envelope.repository_id,
            organization: envelope.organization.as_deref().map(str::to_owned),
            installation_id: envelope.installation_id,
            hook_id: hook_id.and_then(|v| i64::try_from(v).ok()),
            target_type: target_type.map(TargetType::as_str),
            target_id: target_id.and_then(|v| i64::try_from(v).ok()),
            sender: envelope.sender.as_deref().map(str::to_owned),
            ordering_key: envelope.ordering_key(delivery_id),
            content_type: content_type.as_str(),
            headers_json,
            body_size: i64::try_from(body.len()).unwrap_or(i64::MAX),
            body_sha256,
            body_zstd: Vec::new(),
            handlers,
            received_at: now_ms(),
        };
        drop(document);
        let delivery = self.compress(delivery, body).await?;
        let outcome = self.store.ingest(delivery).await?;
        let (status, event_id, held) = match outcome {
            IngestOutcome::Duplicate { event_id } => {
                (ReceiptStatus::DuplicateSkipped, event_id, None)
            }
            IngestOutcome::Stored { event_id, status } => match status {
                EventStatus::Ignored => (ReceiptStatus::Ignored, event_id, None),
                EventStatus::ReplaySuspected => {
                    tracing::warn!(
                        delivery = delivery_id,
                        event_id,
                        "new delivery id with a body identical to a stored delivery; held as replay_suspected"
                    );
                    (ReceiptStatus::Received, event_id, Some(status))
                }
                _ => {
                    // An attached worker was handed the jobs already if it had room.
                    if !self.store.pushes_jobs() {
                        self.jobs_ready.notify_one();
                    }
                    (ReceiptStatus::Received, event_id, None)
                }
            },
        };
        Ok(Receipt {
            status,
            event_id: Some(event_id),
            delivery_id: delivery_id.to_owned(),
            event: label,
            held,
        })
    }

    async fn compress(
        &self,
        mut delivery: NewDelivery,
        body: Bytes,
    ) -> Result<NewDelivery, IngestError> {
        let level = self.zstd_level;
        let compress = move |body: &[u8]| compress_body(body, level);
        let compressed = if body.len() <= INLINE_COMPRESS_LIMIT {
            compress(&body)
        } else {
            tokio::task::spawn_blocking(move || compress(&body))
                .await
                .map_err(|e| IngestError::Internal(format!("compression task failed: {e}")))?
        };
        delivery.body_zstd =
            compressed.map_err(|e| IngestError::Internal(format!("compression failed: {e}")))?;
        Ok(delivery)
    }
}

thread_local! {
    /// One compression context per thread, reused: creating one costs more than compressing
    /// a typical payload (with the dictionary even more: each context copies and prepares it).
    /// A context is about 210 KB, 175 KB of it resident, with the dictionary as without.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// A body as stored: one zstd frame at `level`, compressed with the dictionary trained on GitHub
/// payloads' format (on payloads it was not trained on, a half to three quarters of the size
/// without it, and faster). The frame records the body's size and the dictionary's ID (zstd's defaults),
/// which [`crate::store::decompress_body`] relies on.
fn compress_body(body: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compressor = match &mut *slot {
            Some((l, compressor)) if *l == level => compressor,
            _ => {
                let compressor =
                    zstd::bulk::Compressor::with_dictionary(level, crate::store::BODY_DICTIONARY)?;
                &mut slot.insert((level, compressor)).1
            }
        };
        compressor.compress(body)
    })
}

fn validate_event_name(event: &str) -> Result<(), IngestError> {
    let ok = !event.is_empty()
        && event.len() <= 64
        && event
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(IngestError::InvalidHeader {
            name: header::EVENT,
            reason: "must be an event name such as pull_request (lowercase letters, digits, _)"
                .into(),
        })
    }
}

fn validate_delivery_id(id: &str) -> Result<(), IngestError> {
    let ok = !id.is_empty()
        && id.len() <= 100
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(IngestError::InvalidHeader {
            name: header::DELIVERY,
            reason: "must be a GUID (1 to 100 letters, digits, '-', '_' or '.')".into(),
        })
    }
}

fn parse_id(value: Option<&str>, name: &'static str) -> Result<Option<u64>, IngestError> {
    value
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| IngestError::InvalidHeader {
                    name,
                    reason: "must be a number".into(),
                })
        })
        .transpose()
}

/// The headers kept with each delivery, as a JSON object (written in one go: no map of owned
/// names and values on the hot path).
fn headers_json(h: &DeliveryHeaders<'_>, content_type: ContentType) -> String {
    #[derive(serde::Serialize)]
    struct Kept<'a> {
        #[serde(rename = "X-GitHub-Event", skip_serializing_if = "Option::is_none")]
        event: Option<&'a str>,
        #[serde(rename = "X-GitHub-Delivery", skip_serializing_if = "Option::is_none")]
        delivery: Option<&'a str>,
        #[serde(
            rename = "X-Hub-Signature-256",
            skip_serializing_if = "Option::is_none"
        )]
        signature_256: Option<&'a str>,
        #[serde(rename = "X-GitHub-Hook-ID", skip_serializing_if = "Option::is_none")]
        hook_id: Option<&'a str>,
        #[serde(
            rename = "X-GitHub-Hook-Installation-Target-Type",
            skip_serializing_if = "Option::is_none"
        )]
        target_type: Option<&'a str>,
        #[serde(
            rename = "X-GitHub-Hook-Installation-Target-ID",
            skip_serializing_if = "Option::is_none"
        )]
        target_id: Option<&'a str>,
        #[serde(rename = "User-Agent", skip_serializing_if = "Option::is_none")]
        user_agent: Option<&'a str>,
        #[serde(rename = "Content-Type")]
        content_type: &'a str,
    }
    let kept = Kept {
        event: h.event,
        delivery: h.delivery,
        signature_256: h.signature_256,
        hook_id: h.hook_id,
        target_type: h.target_type,
        target_id: h.target_id,
        user_agent: h.user_agent,
        content_type: h.content_type.unwrap_or(content_type.as_str()),
    };
    // Serializing borrowed strings into a String cannot fail.
    serde_json::to_string(&kept).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kept_headers_are_a_json_object_of_the_headers_present() {
        let h = DeliveryHeaders {
            event: Some("push"),
            delivery: Some("d-1"),
            signature_256: Some("sha256=ab\"c"),
            hook_id: None,
            user_agent: Some("GitHub-Hookshot/x"),
            ..DeliveryHeaders::default()
        };
        let kept: serde_json::Value =
            serde_json::from_str(&headers_json(&h, ContentType::Form)).unwrap();
        assert_eq!(
            kept,
            serde_json::json!({
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": "d-1",
                "X-Hub-Signature-256": "sha256=ab\"c",
                "User-Agent": "GitHub-Hookshot/x",
                "Content-Type": "application/x-www-form-urlencoded",
            })
        );
    }

    #[test]
    fn header_validation() {
        assert!(validate_event_name("pull_request_review").is_ok());
        assert!(validate_event_name("Pull").is_err());
        assert!(validate_event_name("").is_err());
        assert!(validate_delivery_id("72d3162e-cc78-11e3-81ab-4c9367dc0958").is_ok());
        assert!(validate_delivery_id("a b").is_err());
        assert!(validate_delivery_id(&"a".repeat(101)).is_err());
        assert_eq!(parse_id(Some("12"), header::HOOK_ID).unwrap(), Some(12));
        assert!(parse_id(Some("x"), header::HOOK_ID).is_err());
        assert_eq!(parse_id(None, header::HOOK_ID).unwrap(), None);
    }

    /// The real payloads of `shared/fixtures/webhooks`, by file name, as they are on disk.
    fn fixture_payloads() -> Vec<(String, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/webhooks");
        let mut payloads: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .expect("fixtures")
            .map(|entry| {
                let path = entry.expect("entry").path();
                let name = path
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned();
                (name, std::fs::read(&path).expect("fixture"))
            })
            .filter(|(name, _)| name.ends_with(".json"))
            .collect();
        payloads.sort();
        payloads
    }

    /// JSON without the whitespace outside strings, as GitHub sends it (what the benchmark's
    /// `minify` does).
    fn compact(json: &[u8]) -> Vec<u8> {
        let (mut out, mut in_string, mut escaped) = (Vec::new(), false, false);
        for &b in json {
            if in_string {
                in_string = escaped || b != b'"';
                escaped = !escaped && b == b'\\';
            } else if b.is_ascii_whitespace() {
                continue;
            } else {
                in_string = b == b'"';
            }
            out.push(b);
        }
        out
    }

    /// Every real payload, as on disk and compacted, comes back byte for byte, from a frame
    /// that records its size and the dictionary's ID.
    #[test]
    fn every_fixture_round_trips_through_the_dictionary() {
        let payloads = fixture_payloads();
        assert!(payloads.len() > 250, "{} fixtures", payloads.len());
        for (name, raw) in &payloads {
            for body in [raw.clone(), compact(raw)] {
                let frame = compress_body(&body, 1).unwrap();
                assert_eq!(
                    zstd::zstd_safe::get_frame_content_size(&frame)
                        .ok()
                        .flatten(),
                    Some(body.len() as u64),
                    "{name}"
                );
                assert_eq!(
                    zstd::zstd_safe::get_dict_id_from_frame(&frame),
                    zstd::zstd_safe::get_dict_id_from_dict(crate::store::BODY_DICTIONARY),
                    "{name}"
                );
                assert!(
                    crate::store::decompress_body(&frame).unwrap() == body,
                    "{name}"
                );
            }
        }
        for body in [&b""[..], b"payload=%7B%7D", &[0xff; 3000]] {
            let frame = compress_body(body, 3).unwrap();
            assert_eq!(crate::store::decompress_body(&frame).unwrap(), body);
        }
    }

    /// The benchmark's payload, compacted (neither it nor its repository's data is in the
    /// dictionary's training data): 931 bytes with the dictionary at level 1, 1,884 without.
    #[test]
    fn the_dictionary_shrinks_the_benchmark_payload() {
        let payloads = fixture_payloads();
        let (_, raw) = payloads
            .iter()
            .find(|(name, _)| name == "pull_request.opened.0.json")
            .expect("the benchmark's payload");
        let body = compact(raw);
        assert_eq!(body.len(), 21_370);
        let with = compress_body(&body, 1).unwrap().len();
        let without = zstd::bulk::compress(&body, 1).unwrap().len();
        assert!(
            with < 1_100 && without > 1_800,
            "{with} bytes, {without} without"
        );
    }

    proptest! {
        #[test]
        fn header_validators_never_panic_and_accept_guids(s in ".{0,120}", guid in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}") {
            let _ = validate_event_name(&s);
            let _ = validate_delivery_id(&s);
            let _ = parse_id(Some(&s), header::HOOK_ID);
            prop_assert!(validate_delivery_id(&guid).is_ok());
        }

        #[test]
        fn numeric_ids_parse(n in any::<u64>()) {
            prop_assert_eq!(parse_id(Some(&n.to_string()), header::TARGET_ID).unwrap(), Some(n));
        }
    }
}
