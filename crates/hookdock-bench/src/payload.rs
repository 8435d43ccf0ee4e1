//! The request bodies: a real GitHub payload, compacted, with one number varied per request so
//! that every body is unique (hookdock holds a new delivery id whose body is byte-identical to a
//! stored one as `replay_suspected`), and signed as GitHub signs it.
//!
//! The varied number is `sender.id`, near the end of the document, so the HMAC state after the
//! unchanged prefix is computed once and each request only hashes the last few hundred bytes:
//! the load generator shares the machine with the server and must stay cheap.

use anyhow::{Context, bail};
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Varied numbers are `BASE + seq`, so they all have the same number of digits.
const BASE: u64 = 1_000_000_000_000;
const DIGITS: usize = 13;

/// One delivery ready to send.
pub struct Signed {
    pub body: Bytes,
    /// `sha256=<hex>`, the `X-Hub-Signature-256` value.
    pub signature: String,
}

pub struct PayloadTemplate {
    prefix: Vec<u8>,
    suffix: Vec<u8>,
    /// HMAC state after the key and `prefix`.
    mac_after_prefix: HmacSha256,
    /// `repository.id`, sent as `X-GitHub-Hook-Installation-Target-ID` as GitHub does.
    pub repository_id: Option<u64>,
}

impl PayloadTemplate {
    pub fn new(raw: &[u8], secret: &[u8]) -> anyhow::Result<PayloadTemplate> {
        let compact = minify(raw)?;
        let (start, end) = sender_id_span(&compact)
            .context("the payload has no numeric sender.id to vary per request")?;
        let prefix = compact[..start].to_vec();
        let suffix = compact[end..].to_vec();
        let mut mac = HmacSha256::new_from_slice(secret).context("HMAC key")?;
        mac.update(&prefix);
        let doc: serde_json::Value =
            serde_json::from_slice(&compact).context("payload is not valid JSON")?;
        let repository_id = doc
            .get("repository")
            .and_then(|r| r.get("id"))
            .and_then(serde_json::Value::as_u64);
        Ok(PayloadTemplate {
            prefix,
            suffix,
            mac_after_prefix: mac,
            repository_id,
        })
    }

    /// Size in bytes of every body.
    pub fn len(&self) -> usize {
        self.prefix.len() + DIGITS + self.suffix.len()
    }

    /// The body for request `seq` (unique per `seq`) and its signature.
    pub fn signed(&self, seq: u64) -> Signed {
        let digits = (BASE + seq % (9 * BASE)).to_string();
        debug_assert_eq!(digits.len(), DIGITS);
        let mut body = Vec::with_capacity(self.len());
        body.extend_from_slice(&self.prefix);
        body.extend_from_slice(digits.as_bytes());
        body.extend_from_slice(&self.suffix);
        let mut mac = self.mac_after_prefix.clone();
        mac.update(digits.as_bytes());
        mac.update(&self.suffix);
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        Signed {
            body: Bytes::from(body),
            signature,
        }
    }
}

/// Removes insignificant whitespace (outside strings) and checks the result is JSON. Unlike a
/// parse and re-serialize, keeps the key order and every byte of the values as GitHub sent them.
pub fn minify(raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    for &b in raw {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
        }
    }
    if in_string {
        bail!("payload ends inside a string");
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(&out).context("payload is not valid JSON")?;
    Ok(out)
}

/// Byte range of the digits of `sender.id` in compact JSON: the first `"id":` after the last
/// `"sender":{`.
fn sender_id_span(compact: &[u8]) -> Option<(usize, usize)> {
    let sender = rfind(compact, b"\"sender\":{")?;
    let key = b"\"id\":";
    let at = sender + find(&compact[sender..], key)? + key.len();
    let len = compact[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    (len > 0).then_some((at, at + len))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const FIXTURE: &[u8] = include_bytes!("../../hookdock/payloads/pull_request.opened.json");

    #[test]
    fn minify_keeps_strings_and_order() {
        let raw = br#"{ "b" : "x y\" z" ,
            "a": [1, 2] }"#;
        assert_eq!(minify(raw).unwrap(), br#"{"b":"x y\" z","a":[1,2]}"#);
        assert!(minify(b"{\"a\": \"open").is_err());
        assert!(minify(b"{\"a\":}").is_err());
    }

    #[test]
    fn fixture_compacts_to_about_21_kb_and_parses_to_the_same_value() {
        let compact = minify(FIXTURE).unwrap();
        assert!(
            (20_000..23_000).contains(&compact.len()),
            "{}",
            compact.len()
        );
        let a: serde_json::Value = serde_json::from_slice(FIXTURE).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&compact).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn bodies_are_unique_valid_and_vary_only_sender_id() {
        let t = PayloadTemplate::new(FIXTURE, b"secret").unwrap();
        let original: serde_json::Value = serde_json::from_slice(FIXTURE).unwrap();
        let mut seen = HashSet::new();
        for seq in (0..2000).chain([u64::MAX / 2, 9 * BASE - 1]) {
            let s = t.signed(seq);
            assert_eq!(s.body.len(), t.len());
            assert!(seen.insert(s.body.clone()), "duplicate body for {seq}");
            let mut v: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
            assert!(v["sender"]["id"].as_u64().unwrap() >= BASE);
            v["sender"]["id"] = original["sender"]["id"].clone();
            assert_eq!(v, original);
        }
        assert_eq!(t.repository_id, original["repository"]["id"].as_u64());
    }

    #[test]
    fn signatures_verify_with_hookdock() {
        let t = PayloadTemplate::new(FIXTURE, b"bench-secret").unwrap();
        for seq in [0, 1, 77, 123_456] {
            let s = t.signed(seq);
            assert_eq!(
                s.signature,
                hookdock::ingest::sign(b"bench-secret", &s.body)
            );
            let sig = hookdock::ingest::Signature::parse(&s.signature).unwrap();
            assert!(sig.matches_any(&s.body, [&b"bench-secret"[..]]));
            assert!(!sig.matches_any(&s.body, [&b"other"[..]]));
            let env = hookdock::ingest::Envelope::parse(&s.body).unwrap();
            assert_eq!(env.action.as_deref(), Some("opened"));
        }
    }

    #[test]
    fn payload_without_sender_is_refused() {
        assert!(PayloadTemplate::new(br#"{"action":"x"}"#, b"s").is_err());
    }
}
