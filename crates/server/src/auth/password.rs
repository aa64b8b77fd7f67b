//! Password hashing with Argon2id, stored as PHC strings
//! (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`).
//!
//! Parameters follow the OWASP minimum for Argon2id (19 MiB, 2 passes, one
//! lane). Verification of an unknown user costs the same as a wrong
//! password, so response time does not reveal which accounts exist.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;

/// Memory cost in KiB.
pub const M_COST_KIB: u32 = 19_456;
/// Number of passes.
pub const T_COST: u32 = 2;
/// Degree of parallelism.
pub const P_COST: u32 = 1;
/// Salt length in bytes.
pub const SALT_LEN: usize = 16;
/// Shortest accepted password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest accepted password, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Why a password could not be hashed.
#[derive(Debug, Error)]
pub enum PasswordError {
    /// The operating system's random source failed while making a salt.
    #[error("could not generate a password salt: the system random source failed")]
    Random,
    /// argon2 refused the parameters or input (an internal error: the
    /// parameters are constants).
    #[error("argon2 password hashing failed: {0}")]
    Hash(argon2::password_hash::Error),
}

/// Hashes `password` with Argon2id and a fresh random salt; returns the PHC
/// string to store.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let mut salt = [0u8; SALT_LEN];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| PasswordError::Random)?;
    let salt = SaltString::encode_b64(&salt).map_err(PasswordError::Hash)?;
    let hash = hasher()?
        .hash_password(password.as_bytes(), &salt)
        .map_err(PasswordError::Hash)?;
    Ok(hash.to_string())
}

/// Whether `password` matches the `stored` PHC string.
///
/// `None` (unknown user) or an unparsable `stored` is checked against a
/// dummy hash with the same parameters and yields `false`, so all three
/// failure cases take about as long as a wrong password for a real user.
pub fn verify_password(password: &str, stored: Option<&str>) -> bool {
    let parsed = stored.and_then(|s| PasswordHash::new(s).ok());
    match parsed {
        Some(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        None => {
            burn_dummy_verify(password);
            false
        }
    }
}

/// Computes the dummy hash used for unknown users now rather than on the
/// first such login (which would otherwise take twice as long). Call once
/// at startup; calling it again is cheap.
pub fn warm_up() {
    let _ = dummy_hash();
}

/// Whether `stored` was made with other parameters than the current ones
/// (or is not an Argon2id PHC string), so it should be replaced by a fresh
/// [`hash_password`] after the next successful login.
pub fn needs_rehash(stored: &str) -> bool {
    let Ok(hash) = PasswordHash::new(stored) else {
        return true;
    };
    let Ok(params) = Params::try_from(&hash) else {
        return true;
    };
    hash.algorithm != Algorithm::Argon2id.ident()
        || hash.version != Some(Version::V0x13.into())
        || params.m_cost() != M_COST_KIB
        || params.t_cost() != T_COST
        || params.p_cost() != P_COST
}

/// Checks a new password against the policy; the error tells the user
/// what to change.
pub fn check_password_policy(password: &str) -> Result<(), String> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(format!(
            "password is too short ({chars} characters); use at least {MIN_PASSWORD_CHARS}, a passphrase of several words works well"
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "password is too long ({} bytes); use at most {MAX_PASSWORD_BYTES} bytes",
            password.len()
        ));
    }
    let mut iter = password.chars();
    if let Some(first) = iter.next()
        && iter.all(|c| c == first)
    {
        return Err(
            "password repeats a single character; use a mix of characters or several words"
                .to_string(),
        );
    }
    Ok(())
}

/// The Argon2id hasher with this module's parameters.
fn hasher() -> Result<Argon2<'static>, PasswordError> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, Some(Params::DEFAULT_OUTPUT_LEN))
        .map_err(|e| PasswordError::Hash(argon2::password_hash::Error::from(e)))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// The PHC string of a random password, made once per process.
fn dummy_hash() -> Option<&'static str> {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    DUMMY
        .get_or_init(|| hash_password("ztmesh dummy password for unknown users").ok())
        .as_deref()
}

/// Spends the time of one real verification, discarding the result.
fn burn_dummy_verify(password: &str) {
    match dummy_hash().and_then(|s| PasswordHash::new(s).ok()) {
        Some(hash) => {
            let _ = Argon2::default().verify_password(password.as_bytes(), &hash);
        }
        // Only reachable if the random source failed at startup; still do
        // the same amount of work with a fixed salt.
        None => {
            let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
            if let Ok(argon) = hasher() {
                let _ = argon.hash_password_into(password.as_bytes(), &[0u8; SALT_LEN], &mut out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let stored = hash_password("correct horse battery staple").unwrap();
        assert!(verify_password(
            "correct horse battery staple",
            Some(&stored)
        ));
        assert!(!verify_password(
            "correct horse battery stapl",
            Some(&stored)
        ));
        assert!(!verify_password("", Some(&stored)));
    }

    #[test]
    fn stored_form_is_argon2id_phc_without_password() {
        let password = "correct horse battery staple";
        let stored = hash_password(password).unwrap();
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        assert!(!stored.contains(password));
        assert!(!needs_rehash(&stored));
        // Same password, new salt, different string.
        assert_ne!(hash_password(password).unwrap(), stored);
    }

    #[test]
    fn unknown_user_or_garbage_is_false() {
        assert!(!verify_password("anything at all", None));
        assert!(!verify_password(
            "anything at all",
            Some("not a phc string")
        ));
        assert!(!verify_password("anything at all", Some("")));
    }

    #[test]
    fn needs_rehash_detects_old_parameters() {
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8, 1, 1, None).unwrap(),
        );
        let salt = SaltString::encode_b64(&[7u8; SALT_LEN]).unwrap();
        let stored = weak.hash_password(b"pw", &salt).unwrap().to_string();
        assert!(verify_password("pw", Some(&stored)));
        assert!(needs_rehash(&stored));
        assert!(needs_rehash("garbage"));
    }

    #[test]
    fn policy() {
        assert!(check_password_policy("correct horse").is_ok());
        assert!(check_password_policy("abcdefghijkl").is_ok());
        assert!(check_password_policy("ääääääääääää").is_err());
        assert!(check_password_policy("äääääääääääb").is_ok());
        let short = check_password_policy("short").unwrap_err();
        assert!(short.contains("at least 12"), "{short}");
        assert!(check_password_policy("aaaaaaaaaaaaaaaa").is_err());
        assert!(check_password_policy(&"ab".repeat(512)).is_ok());
        let long = check_password_policy(&"ab".repeat(513)).unwrap_err();
        assert!(long.contains("at most 1024"), "{long}");
        // Length is counted in characters: 11 two-byte characters is short.
        assert!(check_password_policy("éèéèéèéèéèé").is_err());
    }
}
