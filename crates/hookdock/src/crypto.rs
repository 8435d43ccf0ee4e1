//! Secrets at rest: webhook secrets and GitHub tokens are sealed with XChaCha20-Poly1305 (an
//! AEAD from RustCrypto) before they reach the database, and opened only where they are used.
//!
//! Each sealed value carries the id of the key that sealed it, so the key can be rotated: the
//! current key seals, the current and any retired keys open, and `hookdock rotate-key` reseals
//! everything under the current key. Every value is bound to what it is (its `context`, e.g.
//! `hook:12:secret`) as associated data, so a ciphertext copied into another row does not open.
//! This module never logs or formats a key or a plaintext.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

const NONCE_LEN: usize = 24;
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "{setting} is not a key: expected 32 random bytes as base64 (44 characters) or hex (64 characters); generate one with `openssl rand -base64 32`"
    )]
    BadKey { setting: String },
    #[error(
        "a secret was sealed with key {key_id}, which is not configured; add that key to secret_old_keys (HOOKDOCK_SECRET_OLD_KEYS)"
    )]
    UnknownKey { key_id: String },
    #[error(
        "a sealed secret ({context}) does not open with key {key_id}: it is corrupt or was moved from another row"
    )]
    Corrupt { context: String, key_id: String },
}

/// A secret as stored: the sealing key's id and `nonce || ciphertext+tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub bytes: Vec<u8>,
}

struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl Key {
    fn parse(text: &str, setting: &str) -> Result<Key, CryptoError> {
        let text = text.trim();
        let bytes = if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).ok()
        } else {
            STANDARD.decode(text).ok()
        };
        let bytes = bytes
            .filter(|b| b.len() == KEY_LEN)
            .ok_or_else(|| CryptoError::BadKey {
                setting: setting.to_owned(),
            })?;
        let digest = Sha256::new()
            .chain_update(b"hookdock key id\0")
            .chain_update(&bytes)
            .finalize();
        Ok(Key {
            id: hex::encode(&digest[..8]),
            cipher: XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| CryptoError::BadKey {
                setting: setting.to_owned(),
            })?,
        })
    }
}

/// The current key and any retired ones.
pub struct KeyRing {
    current: Key,
    retired: Vec<Key>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("current", &self.current.id)
            .field(
                "retired",
                &self.retired.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl KeyRing {
    /// `current` seals and opens; `retired` only open (during a key rotation).
    pub fn new(current: &SecretString, retired: &[SecretString]) -> Result<KeyRing, CryptoError> {
        Ok(KeyRing {
            current: Key::parse(current.expose_secret(), "secret_key")?,
            retired: retired
                .iter()
                .enumerate()
                .map(|(i, k)| Key::parse(k.expose_secret(), &format!("secret_old_keys[{i}]")))
                .collect::<Result<_, _>>()?,
        })
    }

    /// A fresh random key, base64-encoded, for first start-up.
    pub fn generate_key() -> SecretString {
        let mut key = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut key);
        SecretString::from(STANDARD.encode(key))
    }

    /// Id of the key that seals.
    pub fn current_key_id(&self) -> &str {
        &self.current.id
    }

    pub fn seal(&self, plaintext: &[u8], context: &str) -> Sealed {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext,
            aad: context.as_bytes(),
        };
        // Encryption with a valid key only fails for messages beyond 256 GiB.
        let ciphertext = self
            .current
            .cipher
            .encrypt(XNonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        let mut bytes = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&ciphertext);
        Sealed {
            key_id: self.current.id.clone(),
            bytes,
        }
    }

    pub fn seal_str(&self, plaintext: &SecretString, context: &str) -> Sealed {
        self.seal(plaintext.expose_secret().as_bytes(), context)
    }

    pub fn open(&self, sealed: &Sealed, context: &str) -> Result<SecretString, CryptoError> {
        let key = std::iter::once(&self.current)
            .chain(&self.retired)
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| CryptoError::UnknownKey {
                key_id: sealed.key_id.clone(),
            })?;
        let corrupt = || CryptoError::Corrupt {
            context: context.to_owned(),
            key_id: sealed.key_id.clone(),
        };
        if sealed.bytes.len() < NONCE_LEN {
            return Err(corrupt());
        }
        let (nonce, ciphertext) = sealed.bytes.split_at(NONCE_LEN);
        let plaintext = key
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| corrupt())?;
        String::from_utf8(plaintext)
            .map(SecretString::from)
            .map_err(|_| corrupt())
    }

    /// Whether a value sealed with `key_id` should be resealed under the current key.
    pub fn is_retired(&self, key_id: &str) -> bool {
        key_id != self.current.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(current: &SecretString, retired: &[SecretString]) -> KeyRing {
        KeyRing::new(current, retired).expect("valid keys")
    }

    #[test]
    fn sealed_secret_opens_only_with_its_context_and_hides_the_plaintext() {
        let key = KeyRing::generate_key();
        let keys = ring(&key, &[]);
        let sealed = keys.seal(b"webhook-secret-value", "hook:1:secret");
        assert_eq!(sealed.key_id, keys.current_key_id());
        assert!(
            !sealed
                .bytes
                .windows(6)
                .any(|w| w == b"webhoo" || w == b"secret"),
            "ciphertext must not contain the plaintext"
        );
        let opened = keys.open(&sealed, "hook:1:secret").expect("opens");
        assert_eq!(opened.expose_secret(), "webhook-secret-value");
        assert!(matches!(
            keys.open(&sealed, "hook:2:secret"),
            Err(CryptoError::Corrupt { .. })
        ));
        // Two seals of the same value differ (fresh nonce).
        assert_ne!(keys.seal(b"x", "c").bytes, keys.seal(b"x", "c").bytes);
    }

    #[test]
    fn tampering_is_detected() {
        let keys = ring(&KeyRing::generate_key(), &[]);
        let mut sealed = keys.seal(b"token", "user:1:token");
        let last = sealed.bytes.len() - 1;
        sealed.bytes[last] ^= 1;
        assert!(matches!(
            keys.open(&sealed, "user:1:token"),
            Err(CryptoError::Corrupt { .. })
        ));
        sealed.bytes.truncate(3);
        assert!(keys.open(&sealed, "user:1:token").is_err());
    }

    #[test]
    fn retired_keys_open_and_unknown_keys_are_named() {
        let old = KeyRing::generate_key();
        let new = KeyRing::generate_key();
        let sealed = ring(&old, &[]).seal(b"s", "c");
        let rotated = ring(&new, std::slice::from_ref(&old));
        assert!(rotated.is_retired(&sealed.key_id));
        assert_eq!(
            rotated.open(&sealed, "c").expect("opens").expose_secret(),
            "s"
        );
        let resealed = rotated.seal(b"s", "c");
        assert!(!rotated.is_retired(&resealed.key_id));
        let err = ring(&new, &[]).open(&sealed, "c").unwrap_err();
        assert!(err.to_string().contains(&sealed.key_id), "{err}");
    }

    #[test]
    fn keys_parse_from_base64_or_hex_and_bad_keys_name_the_setting() {
        let hex_key = SecretString::from("00".repeat(32));
        let b64_key = SecretString::from(STANDARD.encode([0u8; 32]));
        assert_eq!(
            ring(&hex_key, &[]).current_key_id(),
            ring(&b64_key, &[]).current_key_id(),
            "the same key, written two ways, has one id"
        );
        let err = KeyRing::new(&SecretString::from("too-short"), &[]).unwrap_err();
        assert!(err.to_string().contains("secret_key"), "{err}");
        let err = KeyRing::new(&b64_key, &[SecretString::from("nope")]).unwrap_err();
        assert!(err.to_string().contains("secret_old_keys[0]"), "{err}");
    }
}
