//! Time-based one-time passwords (RFC 6238) as authenticator apps use them:
//! HMAC-SHA1, 30-second steps, 6 digits.
//!
//! The clock is an argument (`unix_secs`), so verification is a pure
//! function of its inputs and tests run on a fixed time.

use std::fmt;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::base32;

/// Length of a TOTP step in seconds.
pub const STEP_SECS: u64 = 30;

/// Digits in a code.
pub const DIGITS: u32 = 6;

/// Bytes in a generated secret (160 bits, the HMAC-SHA1 block-size advice of
/// RFC 4226 section 4).
pub const SECRET_LEN: usize = 20;

/// A shared TOTP key. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpSecret(Vec<u8>);

impl TotpSecret {
    /// A new random secret of [`SECRET_LEN`] bytes from the OS random source.
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        let mut bytes = vec![0u8; SECRET_LEN];
        SystemRandom::new().fill(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// Wraps existing key bytes, for example after unsealing them from the
    /// store.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// Parses the base32 form users see (case and spaces ignored).
    pub fn from_base32(text: &str) -> Result<Self, base32::Base32Error> {
        base32::decode(text).map(Self)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key as unpadded upper-case base32, for manual entry in an app.
    pub fn to_base32(&self) -> String {
        base32::encode(&self.0)
    }

    /// The `otpauth://` URI that authenticator apps read from a QR code.
    ///
    /// `issuer` and `account` are percent-encoded (everything but RFC 3986
    /// unreserved characters), so an `@` or `:` in them cannot change how
    /// the label is split.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> String {
        let issuer = percent_encode(issuer);
        format!(
            "otpauth://totp/{issuer}:{account}?secret={secret}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
            account = percent_encode(account),
            secret = self.to_base32(),
        )
    }

    /// The 6-digit code for the step containing `unix_secs`.
    pub fn code_at(&self, unix_secs: u64) -> u32 {
        hotp(&self.0, unix_secs / STEP_SECS, DIGITS)
    }

    /// Checks a user-typed code at time `unix_secs`.
    ///
    /// Accepts exactly 6 ASCII digits after trimming whitespace, matched
    /// against the previous, current and next step (one step of clock skew
    /// either way). A step at or before `last_used_step` is refused, so a
    /// code cannot be replayed. Returns the matched step, which the caller
    /// must store as the new `last_used_step`.
    ///
    /// All three candidates are computed and compared in constant time, so
    /// timing does not tell which step matched or how many digits did.
    pub fn verify(&self, code: &str, unix_secs: u64, last_used_step: Option<u64>) -> Option<u64> {
        let typed: [u8; 6] = code.trim().as_bytes().try_into().ok()?;
        if !typed.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let now_step = unix_secs / STEP_SECS;
        // Preference order when a code happens to match several steps:
        // the current one first, then the closest skewed ones.
        let candidates = [
            Some(now_step),
            now_step.checked_sub(1),
            now_step.checked_add(1),
        ];
        let mut matched = None;
        for candidate in candidates {
            // Compute even for a missing step (t = 0) so every call does
            // the same work.
            let step = candidate.unwrap_or(now_step);
            let expected = code_digits(hotp(&self.0, step, DIGITS));
            let equal = constant_time_eq(&expected, &typed);
            let fresh = last_used_step.is_none_or(|last| step > last);
            if equal && fresh && candidate.is_some() && matched.is_none() {
                matched = Some(step);
            }
        }
        matched
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(..)")
    }
}

/// HOTP (RFC 4226): HMAC-SHA1 of the big-endian `counter`, dynamically
/// truncated to 31 bits, modulo `10^digits`.
///
/// `digits` above 9 returns the whole 31-bit value (it is below `10^10`).
pub fn hotp(key: &[u8], counter: u64, digits: u32) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let tag = hmac::sign(&key, &counter.to_be_bytes());
    let mac = tag.as_ref();
    let offset = usize::from(mac.last().map_or(0, |b| b & 0x0f));
    let mut word = [0u8; 4];
    // SHA-1 tags are 20 bytes and offset <= 15, so this slice always exists.
    if let Some(window) = mac.get(offset..offset + 4) {
        word.copy_from_slice(window);
    }
    let truncated = u32::from_be_bytes(word) & 0x7fff_ffff;
    let modulus = 10u64.saturating_pow(digits);
    // The result is below both 2^31 and the modulus, so it fits in u32.
    u32::try_from(u64::from(truncated) % modulus).unwrap_or(truncated)
}

/// A 6-digit code as its zero-padded ASCII form.
fn code_digits(code: u32) -> [u8; 6] {
    let mut out = [b'0'; 6];
    let mut rest = code;
    for digit in out.iter_mut().rev() {
        // `rest % 10` is below 10, so the cast cannot truncate.
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out
}

/// Byte-wise equality whose running time does not depend on where the
/// inputs differ.
fn constant_time_eq(a: &[u8; 6], b: &[u8; 6]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Percent-encodes everything except RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            for nibble in [byte >> 4, byte & 0x0f] {
                out.push(HEX.get(usize::from(nibble)).map_or('0', |&h| char::from(h)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_SECRET: &[u8] = b"12345678901234567890";

    /// RFC 6238 Appendix B, SHA1 column.
    #[test]
    fn rfc6238_sha1_vectors() {
        let vectors: [(u64, u32); 6] = [
            (59, 94_287_082),
            (1_111_111_109, 7_081_804),
            (1_111_111_111, 14_050_471),
            (1_234_567_890, 89_005_924),
            (2_000_000_000, 69_279_037),
            (20_000_000_000, 65_353_130),
        ];
        for (time, expected) in vectors {
            assert_eq!(
                hotp(RFC_SECRET, time / STEP_SECS, 8),
                expected,
                "time {time}"
            );
        }
    }

    #[test]
    fn six_digit_code_is_low_digits_of_eight() {
        let secret = TotpSecret::from_bytes(RFC_SECRET.to_vec());
        assert_eq!(secret.code_at(59), 287_082);
        assert_eq!(secret.code_at(1_111_111_109), 81_804);
    }

    fn code(secret: &TotpSecret, unix_secs: u64) -> String {
        format!("{:06}", secret.code_at(unix_secs))
    }

    #[test]
    fn verify_accepts_current_and_one_step_skew() {
        let secret = TotpSecret::from_bytes(RFC_SECRET.to_vec());
        let now = 1_234_567_890;
        let t = now / STEP_SECS;
        assert_eq!(secret.verify(&code(&secret, now), now, None), Some(t));
        assert_eq!(
            secret.verify(&code(&secret, now - 30), now, None),
            Some(t - 1)
        );
        assert_eq!(
            secret.verify(&code(&secret, now + 30), now, None),
            Some(t + 1)
        );
        assert_eq!(
            secret.verify(&format!(" {} \n", code(&secret, now)), now, None),
            Some(t)
        );
    }

    #[test]
    fn verify_rejects_two_steps_skew() {
        let secret = TotpSecret::from_bytes(RFC_SECRET.to_vec());
        let now = 1_234_567_890;
        assert_eq!(secret.verify(&code(&secret, now - 60), now, None), None);
        assert_eq!(secret.verify(&code(&secret, now + 60), now, None), None);
    }

    #[test]
    fn verify_rejects_replay() {
        let secret = TotpSecret::from_bytes(RFC_SECRET.to_vec());
        let now = 1_234_567_890;
        let t = now / STEP_SECS;
        let used = secret.verify(&code(&secret, now), now, None);
        assert_eq!(used, Some(t));
        assert_eq!(secret.verify(&code(&secret, now), now, used), None);
        // An older code is no good either once a newer step was used.
        assert_eq!(secret.verify(&code(&secret, now - 30), now, used), None);
        // The next step's code still works.
        assert_eq!(
            secret.verify(&code(&secret, now + 30), now + 30, used),
            Some(t + 1)
        );
    }

    #[test]
    fn verify_rejects_malformed_codes() {
        let secret = TotpSecret::from_bytes(RFC_SECRET.to_vec());
        let now = 1_234_567_890;
        let good = code(&secret, now);
        for bad in [
            "",
            "12345",
            "1234567",
            "12a456",
            "+12345",
            "١٢٣٤٥٦",
            "12 456",
        ] {
            assert_eq!(secret.verify(bad, now, None), None, "{bad:?}");
        }
        assert_eq!(secret.verify(&format!("{good}0"), now, None), None);
    }

    #[test]
    fn verify_at_time_zero_has_no_previous_step() {
        let secret = TotpSecret::from_bytes(RFC_SECRET.to_vec());
        assert_eq!(secret.verify(&code(&secret, 0), 0, None), Some(0));
        assert_eq!(secret.verify(&code(&secret, 30), 0, None), Some(1));
    }

    #[test]
    fn generate_and_base32_round_trip() {
        let secret = TotpSecret::generate().unwrap();
        assert_eq!(secret.as_bytes().len(), SECRET_LEN);
        assert_eq!(
            TotpSecret::from_base32(&secret.to_base32()).unwrap(),
            secret
        );
        assert_ne!(TotpSecret::generate().unwrap(), secret);
    }

    #[test]
    fn debug_hides_secret() {
        let secret = TotpSecret::from_bytes(RFC_SECRET.to_vec());
        assert_eq!(format!("{secret:?}"), "TotpSecret(..)");
    }

    #[test]
    fn otpauth_uri_format() {
        let secret = TotpSecret::from_bytes(b"foobar".to_vec());
        assert_eq!(
            secret.otpauth_uri("ztmesh", "alice@example.com"),
            "otpauth://totp/ztmesh:alice%40example.com?secret=MZXW6YTBOI&issuer=ztmesh&algorithm=SHA1&digits=6&period=30"
        );
        assert_eq!(
            secret.otpauth_uri("Acme Co:x", "bob~_.-"),
            "otpauth://totp/Acme%20Co%3Ax:bob~_.-?secret=MZXW6YTBOI&issuer=Acme%20Co%3Ax&algorithm=SHA1&digits=6&period=30"
        );
        assert_eq!(percent_encode("é/"), "%C3%A9%2F");
    }
}
