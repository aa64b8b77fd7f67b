//! Random secrets and their stored form.
//!
//! API keys and join token secrets are 256-bit random values, so a single
//! SHA-256 is the right stored form (no dictionary to attack, unlike
//! passwords, which get argon2id). Comparison is constant-time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// `bytes` random bytes, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // getrandom only fails when the OS has no entropy source at all; then
    // refusing to run is the only safe answer.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    URL_SAFE_NO_PAD.encode(buf)
}

/// The stored form of a secret: SHA-256, hex.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `secret` hashes to `stored`, in constant time.
pub fn verify_secret(secret: &str, stored: &str) -> bool {
    let computed = hash_secret(secret);
    computed.len() == stored.len()
        && computed
            .bytes()
            .zip(stored.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Splits `<id>.<secret>` (join secrets) or `ztk_<id>.<secret>` (API keys).
pub fn split_secret(text: &str) -> Option<(&str, &str)> {
    let text = text.strip_prefix("ztk_").unwrap_or(text);
    let (id, secret) = text.split_once('.')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify() {
        let secret = random_token(32);
        let stored = hash_secret(&secret);
        assert!(verify_secret(&secret, &stored));
        assert!(!verify_secret("nope", &stored));
        assert_ne!(stored, secret);
        assert_eq!(split_secret("ztk_ab.cd"), Some(("ab", "cd")));
        assert_eq!(split_secret("ab."), None);
    }
}
