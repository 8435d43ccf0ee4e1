//! Webhook deliveries: sending an event to a hook's URL exactly as GitHub does (headers, HMAC
//! signatures, JSON or form body), recording each attempt, and the JSON GitHub's deliveries API
//! shows for them. It owns the wire format of a delivery; which deliveries to send is decided
//! by the hook endpoints and by the test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha1::Sha1;
use sha2::Sha256;
use time::OffsetDateTime;

use crate::server::Shared;
use crate::state::{FakeDelivery, FakeHook, HookOwner, State, timestamp};

/// How long GitHub waits for the receiver before marking the delivery failed.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// A delivery to send once the current request is answered.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub hook_id: u64,
    pub event: String,
    /// Kept across redeliveries.
    pub guid: String,
    pub payload: Vec<u8>,
    pub redelivery: bool,
}

impl Outgoing {
    pub fn new(hook_id: u64, event: &str, payload: Vec<u8>) -> Outgoing {
        Outgoing {
            hook_id,
            event: event.to_owned(),
            guid: uuid::Uuid::new_v4().to_string(),
            payload,
            redelivery: false,
        }
    }
}

/// `sha256=<hex>` of `body` with `secret`, as in `X-Hub-Signature-256`.
pub fn signature_256(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `sha1=<hex>` of `body` with `secret`, as in the legacy `X-Hub-Signature`.
pub fn signature_sha1(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The body as sent for the hook's content type: the JSON itself, or `payload=<urlencoded JSON>`.
fn wire_body(hook: &FakeHook, payload: &[u8]) -> (Vec<u8>, &'static str) {
    if hook.content_type == "json" {
        (payload.to_vec(), "application/json")
    } else {
        let encoded: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &String::from_utf8_lossy(payload))
            .finish();
        (encoded.into_bytes(), "application/x-www-form-urlencoded")
    }
}

fn request_headers(
    hook: &FakeHook,
    out: &Outgoing,
    body: &[u8],
    content_type: &str,
) -> Vec<(String, String)> {
    let mut headers = vec![
        ("Accept".to_owned(), "*/*".to_owned()),
        ("Content-Type".to_owned(), content_type.to_owned()),
        ("User-Agent".to_owned(), "GitHub-Hookshot/fake".to_owned()),
        ("X-GitHub-Delivery".to_owned(), out.guid.clone()),
        ("X-GitHub-Event".to_owned(), out.event.clone()),
        ("X-GitHub-Hook-ID".to_owned(), hook.id.to_string()),
        (
            "X-GitHub-Hook-Installation-Target-ID".to_owned(),
            hook.owner.target_id().to_string(),
        ),
        (
            "X-GitHub-Hook-Installation-Target-Type".to_owned(),
            hook.owner.target_type().to_owned(),
        ),
    ];
    if let Some(secret) = hook.secret.as_deref().filter(|s| !s.is_empty()) {
        headers.push(("X-Hub-Signature".to_owned(), signature_sha1(secret, body)));
        headers.push((
            "X-Hub-Signature-256".to_owned(),
            signature_256(secret, body),
        ));
    }
    headers
}

fn action_of(payload: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(payload)
        .ok()?
        .get("action")?
        .as_str()
        .map(str::to_owned)
}

fn repository_id_of(hook: &FakeHook, payload: &[u8]) -> Option<u64> {
    match hook.owner {
        HookOwner::Repository { id, .. } => Some(id),
        HookOwner::Organization { .. } => serde_json::from_slice::<Value>(payload)
            .ok()?
            .get("repository")?
            .get("id")?
            .as_u64(),
    }
}

/// Sends `out` to its hook's URL now and records the attempt; `None` when the hook is gone.
pub(crate) async fn perform(shared: &Arc<Shared>, out: Outgoing) -> Option<FakeDelivery> {
    let hook = shared.lock().hooks.get(&out.hook_id).cloned()?;
    let (body, content_type) = wire_body(&hook, &out.payload);
    let headers = request_headers(&hook, &out, &body, content_type);
    let delivered_at = OffsetDateTime::now_utc();
    let started = Instant::now();
    let mut request = shared
        .client
        .post(&hook.url)
        .timeout(DELIVERY_TIMEOUT)
        .body(body);
    for (name, value) in &headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let (status, status_code, response_headers, response_body) = match request.send().await {
        Ok(response) => {
            let code = response.status().as_u16();
            let response_headers: Vec<(String, String)> = response
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let text = response.text().await.unwrap_or_default();
            let status = if (200..300).contains(&code) {
                "OK".to_owned()
            } else {
                format!("Invalid HTTP Response: {code}")
            };
            (status, code, response_headers, text)
        }
        Err(e) if e.is_timeout() => ("timed out".to_owned(), 0, Vec::new(), String::new()),
        Err(_) => (
            "failed to connect to host".to_owned(),
            0,
            Vec::new(),
            String::new(),
        ),
    };
    let delivery = FakeDelivery {
        id: 0,
        guid: out.guid.clone(),
        hook_id: hook.id,
        delivered_at,
        redelivery: out.redelivery,
        duration: started.elapsed().as_secs_f64(),
        status,
        status_code,
        event: out.event.clone(),
        action: action_of(&out.payload),
        installation_id: None,
        repository_id: repository_id_of(&hook, &out.payload),
        request_headers: headers,
        payload: out.payload,
        response_headers,
        response_body,
    };
    Some(record(&mut shared.lock(), delivery))
}

/// A delivery that was attempted and failed, recorded without sending anything.
pub(crate) fn failed(
    st: &mut State,
    hook_id: u64,
    event: &str,
    payload: &[u8],
    status_code: u16,
    delivered_at: OffsetDateTime,
) -> FakeDelivery {
    let hook = st
        .hooks
        .get(&hook_id)
        .cloned()
        .unwrap_or_else(|| panic!("record_failed_delivery: no hook {hook_id}"));
    let out = Outgoing::new(hook_id, event, payload.to_vec());
    let (body, content_type) = wire_body(&hook, payload);
    let delivery = FakeDelivery {
        id: 0,
        guid: out.guid.clone(),
        hook_id,
        delivered_at,
        redelivery: false,
        duration: 0.25,
        status: if status_code == 0 {
            "failed to connect to host".to_owned()
        } else {
            format!("Invalid HTTP Response: {status_code}")
        },
        status_code,
        event: event.to_owned(),
        action: action_of(payload),
        installation_id: None,
        repository_id: repository_id_of(&hook, payload),
        request_headers: request_headers(&hook, &out, &body, content_type),
        payload: payload.to_vec(),
        response_headers: Vec::new(),
        response_body: String::new(),
    };
    record(st, delivery)
}

/// Stores a delivery with a fresh id and updates the hook's `last_response`.
fn record(st: &mut State, mut delivery: FakeDelivery) -> FakeDelivery {
    delivery.id = st.next_id();
    if let Some(hook) = st.hooks.get_mut(&delivery.hook_id) {
        hook.last_response = json!({
            "code": if delivery.status_code == 0 { Value::Null } else { json!(delivery.status_code) },
            "status": if delivery.succeeded() { "active" } else { "failed" },
            "message": delivery.status,
        });
    }
    st.deliveries.push(delivery.clone());
    delivery
}

/// The item of a deliveries listing.
pub(crate) fn summary_json(d: &FakeDelivery) -> Value {
    json!({
        "id": d.id,
        "guid": d.guid,
        "delivered_at": timestamp(d.delivered_at),
        "redelivery": d.redelivery,
        "duration": d.duration,
        "status": d.status,
        "status_code": d.status_code,
        "event": d.event,
        "action": d.action,
        "installation_id": d.installation_id,
        "repository_id": d.repository_id,
        "throttled_at": null,
    })
}

/// One delivery with its request and response, as `GET .../deliveries/{id}` shows it.
pub(crate) fn detail_json(d: &FakeDelivery, url: String) -> Value {
    let mut v = summary_json(d);
    let headers = |h: &[(String, String)]| -> Value {
        h.iter()
            .map(|(n, v)| (n.clone(), Value::String(v.clone())))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    v["url"] = json!(url);
    v["request"] = json!({
        "headers": headers(&d.request_headers),
        "payload": serde_json::from_slice::<Value>(&d.payload).unwrap_or(Value::Null),
    });
    v["response"] = json!({
        "headers": headers(&d.response_headers),
        "payload": d.response_body,
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_githubs_documented_vector() {
        assert_eq!(
            signature_256("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }
}
