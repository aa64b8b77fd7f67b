//! The relay's framing: each WireGuard packet travels with the WireGuard
//! public key of the other end (the destination on the way in, the source
//! on the way out). The relay reads the header only; the payload is
//! WireGuard-encrypted end to end.
//!
//! ```text
//! kind (1) = 1 | reserved (1) = 0 | length (2, big endian) | key (32) | payload
//! ```

use std::io;

/// What the relay sends first, once it has admitted the device: until it
/// comes, the client does not count as connected (TLS 1.3 lets a client
/// finish its handshake before the server has checked its certificate).
/// It is followed by the device's UDP session: its id (8 bytes) and
/// secret (32), see `udp.rs`.
pub const WELCOME: [u8; 4] = *b"ZTR1";
/// The whole welcome: greeting, session id, session secret.
pub const WELCOME_LEN: usize = 4 + 8 + 32;
/// Header bytes before the payload.
pub const HEADER: usize = 36;
/// Largest payload: a WireGuard message of an overlay packet with room to
/// spare (the overlay MTU is 1420).
pub const MAX_PAYLOAD: usize = 4_096;
/// The only kind so far: a packet.
const KIND_PACKET: u8 = 1;

/// One packet and the key of the device at the other end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Destination (client to relay) or source (relay to client).
    pub key: [u8; 32],
    /// The WireGuard message.
    pub payload: Vec<u8>,
}

/// Why a header was refused (the connection is then closed: the stream
/// cannot be resynchronised).
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Not a kind this relay knows.
    Kind(u8),
    /// Longer than [`MAX_PAYLOAD`].
    TooLong(usize),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kind(k) => write!(f, "unknown relay frame kind {k}"),
            Self::TooLong(n) => write!(f, "relay frame of {n} bytes, above {MAX_PAYLOAD}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<FrameError> for io::Error {
    fn from(e: FrameError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

impl Frame {
    /// Appends the encoded frame to `out`; a payload above [`MAX_PAYLOAD`]
    /// is refused.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let len = self.payload.len();
        let wire_len = u16::try_from(len)
            .ok()
            .filter(|_| len <= MAX_PAYLOAD)
            .ok_or(FrameError::TooLong(len))?;
        out.push(KIND_PACKET);
        out.push(0);
        out.extend_from_slice(&wire_len.to_be_bytes());
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.payload);
        Ok(())
    }
}

/// Decodes a header: the key and how many payload bytes follow.
pub fn decode_header(header: &[u8; HEADER]) -> Result<([u8; 32], usize), FrameError> {
    let [kind, _reserved, hi, lo, key @ ..] = *header;
    if kind != KIND_PACKET {
        return Err(FrameError::Kind(kind));
    }
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLong(len));
    }
    Ok((key, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips() {
        let frame = Frame {
            key: [7; 32],
            payload: vec![1, 2, 3, 4],
        };
        let mut out = Vec::new();
        frame.encode(&mut out).unwrap();
        assert_eq!(out.len(), HEADER + 4);
        let header: [u8; HEADER] = out[..HEADER].try_into().unwrap();
        assert_eq!(decode_header(&header), Ok(([7; 32], 4)));
        assert_eq!(&out[HEADER..], &[1, 2, 3, 4]);
    }

    #[test]
    fn bad_headers_and_long_payloads_are_refused() {
        let mut header = [0u8; HEADER];
        header[0] = 9;
        assert_eq!(decode_header(&header), Err(FrameError::Kind(9)));
        header[0] = 1;
        header[2..4].copy_from_slice(&5_000u16.to_be_bytes());
        assert_eq!(decode_header(&header), Err(FrameError::TooLong(5_000)));
        let long = Frame {
            key: [0; 32],
            payload: vec![0; MAX_PAYLOAD + 1],
        };
        assert_eq!(
            long.encode(&mut Vec::new()),
            Err(FrameError::TooLong(MAX_PAYLOAD + 1))
        );
    }
}
