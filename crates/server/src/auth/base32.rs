//! Base32 (RFC 4648 section 6 alphabet) for TOTP secrets.
//!
//! Authenticator apps show and accept secrets in base32. Encoding writes no
//! `=` padding; decoding is lenient about what people type or paste: any
//! case, spaces and `=` are ignored.

use thiserror::Error;

/// The RFC 4648 base32 alphabet.
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Why a base32 string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Base32Error {
    /// A character outside `A-Z`, `a-z`, `2-7`, space and `=`.
    #[error(
        "invalid base32 character {found:?} at position {position}; use only letters A-Z and digits 2-7"
    )]
    InvalidCharacter {
        /// The offending character.
        found: char,
        /// Its index in characters, counting from 0.
        position: usize,
    },
    /// The number of symbols cannot come from whole bytes (1, 3 or 6 left
    /// over after groups of 8), which means characters were lost or added.
    #[error(
        "base32 text has {symbols} symbols, which no whole number of bytes encodes; check that it was copied completely"
    )]
    InvalidLength {
        /// How many base32 symbols were found (spaces and `=` not counted).
        symbols: usize,
    },
}

/// Encodes `bytes` as upper-case base32 without padding.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u16 = 0;
    let mut bits: u32 = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u16::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(symbol(buffer >> bits));
        }
        // Keep only the bits not yet written so the shift above never
        // overflows.
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(symbol(buffer << (5 - bits)));
    }
    out
}

/// Decodes base32 text: case-insensitive, spaces and `=` ignored.
///
/// Leftover bits after the last whole byte are dropped, as RFC 4648 decoders
/// commonly do.
pub fn decode(text: &str) -> Result<Vec<u8>, Base32Error> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut buffer: u16 = 0;
    let mut bits: u32 = 0;
    let mut symbols = 0usize;
    for (position, c) in text.chars().enumerate() {
        if c == '=' || c.is_whitespace() {
            continue;
        }
        let value = value_of(c).ok_or(Base32Error::InvalidCharacter { found: c, position })?;
        symbols += 1;
        buffer = (buffer << 5) | u16::from(value);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            // Truncation to the low byte is the point here.
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    if matches!(symbols % 8, 1 | 3 | 6) {
        return Err(Base32Error::InvalidLength { symbols });
    }
    Ok(out)
}

/// The alphabet character for the low 5 bits of `value`.
fn symbol(value: u16) -> char {
    let index = usize::from(value & 0x1f);
    ALPHABET.get(index).map_or('A', |&b| char::from(b))
}

/// The 5-bit value of a base32 character, either case.
fn value_of(c: char) -> Option<u8> {
    match c {
        'A'..='Z' => Some(c as u8 - b'A'),
        'a'..='z' => Some(c as u8 - b'a'),
        '2'..='7' => Some(c as u8 - b'2' + 26),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4648 section 10 vectors, padding removed.
    const VECTORS: &[(&str, &str)] = &[
        ("", ""),
        ("f", "MY"),
        ("fo", "MZXQ"),
        ("foo", "MZXW6"),
        ("foob", "MZXW6YQ"),
        ("fooba", "MZXW6YTB"),
        ("foobar", "MZXW6YTBOI"),
    ];

    #[test]
    fn rfc4648_vectors_encode() {
        for (plain, encoded) in VECTORS {
            assert_eq!(encode(plain.as_bytes()), *encoded, "encode {plain:?}");
        }
    }

    #[test]
    fn rfc4648_vectors_decode_with_and_without_padding() {
        for (plain, encoded) in VECTORS {
            assert_eq!(
                decode(encoded).unwrap(),
                plain.as_bytes(),
                "decode {encoded:?}"
            );
            let padded = format!("{encoded:=<width$}", width = encoded.len().div_ceil(8) * 8);
            assert_eq!(
                decode(&padded).unwrap(),
                plain.as_bytes(),
                "decode {padded:?}"
            );
        }
    }

    #[test]
    fn decode_ignores_case_and_spaces() {
        assert_eq!(decode("mzxw 6ytb oi").unwrap(), b"foobar");
        assert_eq!(decode(" MzXw6YtBoI== ").unwrap(), b"foobar");
    }

    #[test]
    fn round_trip_all_lengths() {
        let data: Vec<u8> = (0..=255u8).collect();
        for len in 0..data.len() {
            let slice = data.get(..len).unwrap();
            assert_eq!(decode(&encode(slice)).unwrap(), slice);
        }
    }

    #[test]
    fn rejects_bad_characters_and_lengths() {
        assert_eq!(
            decode("MZ1Q"),
            Err(Base32Error::InvalidCharacter {
                found: '1',
                position: 2
            })
        );
        assert!(matches!(
            decode("MZX"),
            Err(Base32Error::InvalidLength { symbols: 3 })
        ));
        assert!(matches!(
            decode("M"),
            Err(Base32Error::InvalidLength { symbols: 1 })
        ));
    }
}
