//! The part of STUN (RFC 8489, formerly RFC 5389) that endpoint discovery
//! needs: Binding requests, and Binding success responses carrying
//! XOR-MAPPED-ADDRESS (the address and port the server saw the request
//! come from). Pure and panic-free on any input: every read is checked.
//!
//! A daemon sends [`binding_request`] with a random transaction id to the
//! coordination server's STUN port and reads its public address from the
//! answer with [`parse_binding_response`]; the server answers requests with
//! [`binding_response`] after [`parse_binding_request`].

#![warn(clippy::indexing_slicing)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The fixed value in every STUN header.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Binding request and Binding success response message types.
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;
/// Attribute types.
const XOR_MAPPED_ADDRESS: u16 = 0x0020;
const MAPPED_ADDRESS: u16 = 0x0001;
const SOFTWARE: u16 = 0x8022;
/// Header length.
const HEADER: usize = 20;

/// A STUN transaction id.
pub type TransactionId = [u8; 12];

/// Why bytes are not the STUN message expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    /// Shorter than a header, or than its length field says.
    #[error("truncated STUN message")]
    Truncated,
    /// Not STUN: wrong first bits or magic cookie, or a bad length.
    #[error("not a STUN message")]
    NotStun,
    /// STUN, but not the message type expected.
    #[error("unexpected STUN message type {0:#06x}")]
    UnexpectedType(u16),
    /// A response without a usable (XOR-)MAPPED-ADDRESS.
    #[error("the STUN response carries no mapped address")]
    NoAddress,
}

/// A Binding request with `id` and no attributes.
pub fn binding_request(id: &TransactionId) -> [u8; HEADER] {
    let mut out = [0u8; HEADER];
    put_header(&mut out, BINDING_REQUEST, 0, id);
    out
}

/// Checks that `bytes` are a Binding request; returns its transaction id.
/// Attributes are ignored (a client may add SOFTWARE, FINGERPRINT, ...).
pub fn parse_binding_request(bytes: &[u8]) -> Result<TransactionId, StunError> {
    let (kind, id, _) = parse_header(bytes)?;
    if kind != BINDING_REQUEST {
        return Err(StunError::UnexpectedType(kind));
    }
    Ok(id)
}

/// A Binding success response to transaction `id`, telling the client it
/// was seen at `seen`, with a SOFTWARE attribute naming `software`.
pub fn binding_response(id: &TransactionId, seen: SocketAddr, software: &str) -> Vec<u8> {
    let mut attributes = Vec::with_capacity(64);
    let xored = xor_address(seen, id);
    let family: u8 = if seen.is_ipv4() { 1 } else { 2 };
    let mut value = vec![0u8, family];
    value.extend_from_slice(&(seen.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
    value.extend_from_slice(&xored);
    put_attribute(&mut attributes, XOR_MAPPED_ADDRESS, &value);
    let software: Vec<u8> = software.bytes().take(127).collect();
    put_attribute(&mut attributes, SOFTWARE, &software);
    let length = u16::try_from(attributes.len()).unwrap_or(u16::MAX);
    let mut header = [0u8; HEADER];
    put_header(&mut header, BINDING_SUCCESS, length, id);
    let mut out = header.to_vec();
    out.extend_from_slice(&attributes);
    out
}

/// The mapped address of a Binding success response to transaction `id`
/// (XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from old servers).
pub fn parse_binding_response(bytes: &[u8], id: &TransactionId) -> Result<SocketAddr, StunError> {
    let (kind, got, mut attributes) = parse_header(bytes)?;
    if kind != BINDING_SUCCESS {
        return Err(StunError::UnexpectedType(kind));
    }
    if &got != id {
        return Err(StunError::NotStun);
    }
    let mut plain = None;
    while !attributes.is_empty() {
        let (kind, value, rest) = next_attribute(attributes)?;
        attributes = rest;
        match kind {
            XOR_MAPPED_ADDRESS => return read_address(value, Some(id)),
            MAPPED_ADDRESS => plain = Some(read_address(value, None)?),
            _ => {}
        }
    }
    plain.ok_or(StunError::NoAddress)
}

/// Whether `bytes` look like a STUN Binding message (request, success or
/// error response, with the magic cookie): lets one UDP socket tell STUN
/// from WireGuard, whose messages start with a type of 1 to 4 followed by
/// three zero bytes (0x0100 is no Binding type).
pub fn is_stun(bytes: &[u8]) -> bool {
    let kind = match (bytes.first(), bytes.get(1)) {
        (Some(&a), Some(&b)) => u16::from_be_bytes([a, b]),
        _ => return false,
    };
    matches!(kind, BINDING_REQUEST | BINDING_SUCCESS | BINDING_ERROR)
        && bytes.get(4..8) == Some(&MAGIC_COOKIE.to_be_bytes()[..])
}

fn put_header(out: &mut [u8; HEADER], kind: u16, length: u16, id: &TransactionId) {
    let bytes = kind
        .to_be_bytes()
        .into_iter()
        .chain(length.to_be_bytes())
        .chain(MAGIC_COOKIE.to_be_bytes())
        .chain(id.iter().copied());
    for (slot, b) in out.iter_mut().zip(bytes) {
        *slot = b;
    }
}

fn put_attribute(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// (type, transaction id, attribute bytes).
fn parse_header(bytes: &[u8]) -> Result<(u16, TransactionId, &[u8]), StunError> {
    let header = bytes.get(..HEADER).ok_or(StunError::Truncated)?;
    if !is_stun(header) {
        return Err(StunError::NotStun);
    }
    let kind = u16::from_be_bytes([byte(header, 0)?, byte(header, 1)?]);
    let length = usize::from(u16::from_be_bytes([byte(header, 2)?, byte(header, 3)?]));
    if !length.is_multiple_of(4) {
        return Err(StunError::NotStun);
    }
    let id: TransactionId = header
        .get(8..HEADER)
        .and_then(|s| s.try_into().ok())
        .ok_or(StunError::Truncated)?;
    let attributes = bytes
        .get(HEADER..HEADER + length)
        .ok_or(StunError::Truncated)?;
    Ok((kind, id, attributes))
}

/// (type, value, the rest after padding).
fn next_attribute(bytes: &[u8]) -> Result<(u16, &[u8], &[u8]), StunError> {
    let head = bytes.get(..4).ok_or(StunError::Truncated)?;
    let kind = u16::from_be_bytes([byte(head, 0)?, byte(head, 1)?]);
    let length = usize::from(u16::from_be_bytes([byte(head, 2)?, byte(head, 3)?]));
    let value = bytes.get(4..4 + length).ok_or(StunError::Truncated)?;
    let padded = (4 + length).div_ceil(4) * 4;
    let rest = bytes.get(padded..).unwrap_or(&[]);
    Ok((kind, value, rest))
}

fn read_address(value: &[u8], xor: Option<&TransactionId>) -> Result<SocketAddr, StunError> {
    let family = byte(value, 1)?;
    let mut port = u16::from_be_bytes([byte(value, 2)?, byte(value, 3)?]);
    let raw = value.get(4..).ok_or(StunError::NoAddress)?;
    let mask = xor.map(cookie_and_id);
    if mask.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    let unmask = |bytes: &[u8]| -> Vec<u8> {
        match &mask {
            Some(mask) => bytes.iter().zip(mask.iter()).map(|(b, m)| b ^ m).collect(),
            None => bytes.to_vec(),
        }
    };
    let ip = match (family, raw.len()) {
        (1, 4) => {
            let b: [u8; 4] = unmask(raw).try_into().map_err(|_| StunError::NoAddress)?;
            IpAddr::V4(Ipv4Addr::from(b))
        }
        (2, 16) => {
            let b: [u8; 16] = unmask(raw).try_into().map_err(|_| StunError::NoAddress)?;
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return Err(StunError::NoAddress),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Magic cookie followed by the transaction id: the XOR mask.
fn cookie_and_id(id: &TransactionId) -> [u8; 16] {
    let mut mask = [0u8; 16];
    let (cookie, rest) = mask.split_at_mut(4);
    cookie.copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    rest.copy_from_slice(id);
    mask
}

fn xor_address(seen: SocketAddr, id: &TransactionId) -> Vec<u8> {
    let mask = cookie_and_id(id);
    let octets: Vec<u8> = match seen.ip() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    octets.iter().zip(mask.iter()).map(|(b, m)| b ^ m).collect()
}

fn byte(bytes: &[u8], at: usize) -> Result<u8, StunError> {
    bytes.get(at).copied().ok_or(StunError::Truncated)
}

#[cfg(test)]
mod tests;
