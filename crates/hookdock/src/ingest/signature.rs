//! GitHub's delivery signature: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`.
//!
//! Pure functions, no IO: parsing the header, signing (for `hookdock send`, tests and the
//! benchmark) and verifying in constant time against every currently valid secret.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Length of an HMAC-SHA256 digest in bytes.
pub const DIGEST_LEN: usize = 32;

/// Why a signature header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("X-Hub-Signature-256 must look like `sha256=<64 hex digits>`")]
    Malformed,
    #[error("X-Hub-Signature-256 does not match the body for any secret configured for this hook")]
    Mismatch,
}

/// A parsed `sha256=<hex>` header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; DIGEST_LEN]);

impl Signature {
    /// Parses the header value. The `sha256=` prefix is required (case-insensitive, as some
    /// proxies change case); the digest must be exactly 64 hex digits.
    pub fn parse(header: &str) -> Result<Signature, SignatureError> {
        let header = header.trim();
        let (algo, hex_digest) = header.split_once('=').ok_or(SignatureError::Malformed)?;
        if !algo.eq_ignore_ascii_case("sha256") || hex_digest.len() != DIGEST_LEN * 2 {
            return Err(SignatureError::Malformed);
        }
        let mut digest = [0u8; DIGEST_LEN];
        hex::decode_to_slice(hex_digest, &mut digest).map_err(|_| SignatureError::Malformed)?;
        Ok(Signature(digest))
    }

    pub fn as_bytes(&self) -> &[u8; DIGEST_LEN] {
        &self.0
    }

    /// Checks the signature against each secret; true when any matches. Every comparison is
    /// constant time, and every secret is tried, so timing says nothing about which matched.
    pub fn matches_any<'s>(
        &self,
        body: &[u8],
        secrets: impl IntoIterator<Item = &'s [u8]>,
    ) -> bool {
        let keys: Vec<&[u8]> = secrets.into_iter().collect();
        self.verify(body, &keys).is_some()
    }

    /// [`Signature::matches_any`] for a list of secrets, returning the body's SHA-256 when one
    /// matches: both come out of one pass over the body (see `ingest::digest`).
    pub(crate) fn verify(&self, body: &[u8], secrets: &[&[u8]]) -> Option<[u8; DIGEST_LEN]> {
        let mut macs = Vec::with_capacity(secrets.len());
        let body_sha256 = super::digest::sha256_and_hmacs(body, secrets, &mut macs);
        let mut matched = subtle::Choice::from(0);
        for mac in &macs {
            matched |= mac.ct_eq(&self.0);
        }
        bool::from(matched).then_some(body_sha256)
    }
}

fn new_mac(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    }
}

/// The `X-Hub-Signature-256` header value GitHub would send for `body` signed with `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = new_mac(secret);
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn githubs_documented_test_vector() {
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            sign(b"It's a Secret to Everybody", b"Hello, World!"),
            expected
        );
        let sig = Signature::parse(expected).unwrap();
        assert!(sig.matches_any(b"Hello, World!", [b"It's a Secret to Everybody".as_slice()]));
        assert!(!sig.matches_any(b"Hello, World?", [b"It's a Secret to Everybody".as_slice()]));
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            "",
            "sha256",
            "sha256=",
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1z",
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        ] {
            assert_eq!(
                Signature::parse(bad),
                Err(SignatureError::Malformed),
                "{bad:?}"
            );
        }
        assert!(
            Signature::parse(
                "SHA256=757107EA0EB2509FC211221CCE984B8A37570B6D7586C22C46F4379C8B043E17"
            )
            .is_ok()
        );
    }

    #[test]
    fn any_of_several_secrets_verifies_rotation() {
        let sig = Signature::parse(&sign(b"new", b"body")).unwrap();
        assert!(sig.matches_any(b"body", [b"old".as_slice(), b"new".as_slice()]));
        assert!(!sig.matches_any(b"body", [b"old".as_slice()]));
        assert!(!sig.matches_any(b"body", std::iter::empty()));
    }

    proptest! {
        #[test]
        fn signed_bodies_verify(secret in proptest::collection::vec(any::<u8>(), 1..80),
                                body in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let sig = Signature::parse(&sign(&secret, &body)).unwrap();
            prop_assert!(sig.matches_any(&body, [secret.as_slice()]));
        }

        #[test]
        fn any_changed_byte_or_secret_fails(secret in proptest::collection::vec(any::<u8>(), 1..64),
                                            body in proptest::collection::vec(any::<u8>(), 1..1000),
                                            index in any::<prop::sample::Index>(),
                                            flip in 1u8..=255) {
            let sig = Signature::parse(&sign(&secret, &body)).unwrap();
            let mut tampered = body.clone();
            let i = index.index(tampered.len());
            tampered[i] ^= flip;
            prop_assert!(!sig.matches_any(&tampered, [secret.as_slice()]));
            let mut other = secret.clone();
            let j = index.index(other.len());
            other[j] ^= flip;
            prop_assert!(!sig.matches_any(&body, [other.as_slice()]));
            // A truncated body never verifies either.
            prop_assert!(!sig.matches_any(&body[..body.len() - 1], [secret.as_slice()]));
        }

        #[test]
        fn header_parsing_never_panics_and_roundtrips(s in ".{0,100}", digest in any::<[u8; 32]>()) {
            let _ = Signature::parse(&s);
            let header = format!("sha256={}", hex::encode(digest));
            let parsed = Signature::parse(&header).unwrap();
            prop_assert_eq!(parsed.as_bytes(), &digest);
        }
    }
}
