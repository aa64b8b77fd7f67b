//! The join token: everything a new device needs to enroll, in one string.
//!
//! `ztmesh1_` followed by base64url (no padding) of three lines: the server
//! URL, the SHA-256 fingerprint (hex) of the server's CA certificate, and the
//! secret (`<token id>.<random>`). The secret is stored on the server only
//! as a hash; the fingerprint lets the device pin the CA before it trusts
//! anything the server says.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const PREFIX: &str = "ztmesh1_";

/// A decoded join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// `https://host:port` of the coordination server.
    pub server_url: String,
    /// Lowercase hex SHA-256 of the CA certificate (DER).
    pub ca_fingerprint: String,
    /// The secret presented at enrollment (`<id>.<random>`).
    pub secret: String,
}

/// Why a string is not a join token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The string does not start with the token prefix.
    #[error(
        "not a ztmesh join token (it should start with `{PREFIX}`); create one with `ztmesh admin join-token create`"
    )]
    Prefix,
    /// The body is not valid base64url or UTF-8, or lacks a part.
    #[error("the join token is damaged ({0}); copy it again in full")]
    Damaged(&'static str),
}

impl JoinToken {
    /// Encodes the token as the string an admin hands out.
    pub fn encode(&self) -> String {
        let body = format!(
            "{}\n{}\n{}",
            self.server_url, self.ca_fingerprint, self.secret
        );
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(body))
    }

    /// Decodes a token string, ignoring surrounding white space.
    pub fn decode(text: &str) -> Result<JoinToken, TokenError> {
        let body = text.trim().strip_prefix(PREFIX).ok_or(TokenError::Prefix)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Damaged("bad base64"))?;
        let text = String::from_utf8(bytes).map_err(|_| TokenError::Damaged("not UTF-8"))?;
        let mut parts = text.split('\n');
        let (Some(server_url), Some(ca_fingerprint), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Damaged("wrong number of parts"));
        };
        let fingerprint_ok =
            ca_fingerprint.len() == 64 && ca_fingerprint.bytes().all(|b| b.is_ascii_hexdigit());
        if !server_url.starts_with("https://") || !fingerprint_ok || secret.is_empty() {
            return Err(TokenError::Damaged("bad field"));
        }
        Ok(JoinToken {
            server_url: server_url.to_owned(),
            ca_fingerprint: ca_fingerprint.to_ascii_lowercase(),
            secret: secret.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let token = JoinToken {
            server_url: "https://10.0.0.1:7443".into(),
            ca_fingerprint: "ab".repeat(32),
            secret: "id1.secret".into(),
        };
        let text = token.encode();
        assert_eq!(JoinToken::decode(&format!("  {text}\n")), Ok(token));
        assert_eq!(JoinToken::decode("hello"), Err(TokenError::Prefix));
        assert!(matches!(
            JoinToken::decode(&text[..text.len() - 3]),
            Err(TokenError::Damaged(_))
        ));
        assert!(matches!(
            JoinToken::decode("ztmesh1_!!!"),
            Err(TokenError::Damaged(_))
        ));
    }
}
