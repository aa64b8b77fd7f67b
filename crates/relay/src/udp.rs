//! The relay over UDP, beside its TLS stream: lower latency and no
//! head-of-line blocking where UDP gets out. A device may use it only with
//! the session the relay gave it over TLS (where it proved itself with its
//! certificate): each datagram it sends carries the session id, a counter
//! and a MAC made with the session's secret. The relay learns the device's
//! UDP address from the newest authentic datagram only, so a copied or
//! replayed one cannot turn the device's traffic elsewhere.
//!
//! ```text
//! device -> relay: "ZTU1" | session (8) | counter (8) | mac (16) | key (32) | payload
//! relay -> device: "ZTU1" | key (32) | payload          (key all zero: an ack)
//! ```
//!
//! The payload is WireGuard, authenticated end to end; the relay's own
//! datagrams to a device need no MAC (a forged one is dropped by
//! WireGuard like any other junk).
//!
//! No datagram either way is larger than a 1,500-byte link carries whole
//! ([`max_datagram`]): an IP fragment is lost to NATs and firewalls that
//! drop fragments, and one lost fragment loses the packet. What does not
//! fit goes over TLS instead, and the daemon tells its own kernel the
//! smaller path MTU (see the agent's `too_big.rs`), so that this stays rare.

use std::net::SocketAddr;

use ring::hmac;

use crate::frame::MAX_PAYLOAD;

/// First bytes of every relay datagram.
pub const MAGIC: [u8; 4] = *b"ZTU1";
/// Header of a datagram to the relay, before the payload.
pub const UP_HEADER: usize = 4 + 8 + 8 + 16 + 32;
/// Header of a datagram from the relay, before the payload.
pub const DOWN_HEADER: usize = 4 + 32;
/// A key of zeros: a registration (to the relay) or its ack (from it).
pub const NO_KEY: [u8; 32] = [0; 32];
/// The link MTU relay datagrams are sized for: Ethernet's, as the
/// overlay's own MTU is.
pub const LINK_MTU: usize = 1_500;

/// The largest UDP payload to or from `peer` that a [`LINK_MTU`] link
/// carries without fragmenting: 1,472 bytes over IPv4 (an IPv4-mapped
/// IPv6 address included), 1,452 over IPv6.
pub fn max_datagram(peer: SocketAddr) -> usize {
    let ip_header = if peer.ip().to_canonical().is_ipv4() {
        20
    } else {
        40
    };
    LINK_MTU - ip_header - 8
}

/// The largest WireGuard message a device sends to the relay at `relay`
/// in one datagram: 1,404 bytes over IPv4, 1,384 over IPv6.
pub fn max_message(relay: SocketAddr) -> usize {
    max_datagram(relay) - UP_HEADER
}

/// What a device needs to use the relay's UDP side: from the TLS welcome.
#[derive(Clone)]
pub struct Session {
    /// Names the session in each datagram.
    pub id: u64,
    /// Signs each datagram.
    pub key: hmac::Key,
}

impl Session {
    /// A session from its id and secret.
    pub fn new(id: u64, secret: &[u8; 32]) -> Self {
        Self {
            id,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    fn mac(&self, counter: u64, key: &[u8; 32], payload: &[u8]) -> [u8; 16] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&self.id.to_be_bytes());
        ctx.update(&counter.to_be_bytes());
        ctx.update(key);
        ctx.update(payload);
        let tag = ctx.sign();
        let mut out = [0u8; 16];
        out.copy_from_slice(tag.as_ref().get(..16).unwrap_or(&[0; 16]));
        out
    }

    /// A datagram to the relay for the device `key` (or a registration with
    /// [`NO_KEY`] and no payload).
    pub fn seal(&self, counter: u64, key: &[u8; 32], payload: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(&self.mac(counter, key, payload));
        out.extend_from_slice(key);
        out.extend_from_slice(payload);
    }

    /// Checks a datagram's MAC with this session: the counter, key and
    /// payload when it is authentic.
    pub fn open<'a>(&self, up: &Up<'a>) -> Option<(u64, [u8; 32], &'a [u8])> {
        let want = self.mac(up.counter, &up.key, up.payload);
        // Every byte compared, whatever the first difference (no timing
        // hint about how much of a forged MAC was right).
        let difference = want
            .iter()
            .zip(&up.mac)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference != 0 {
            return None;
        }
        Some((up.counter, up.key, up.payload))
    }
}

/// A datagram to the relay, parsed but not yet checked.
pub struct Up<'a> {
    /// Which session it claims.
    pub session: u64,
    counter: u64,
    mac: [u8; 16],
    key: [u8; 32],
    payload: &'a [u8],
}

/// Parses a datagram to the relay; `None` when it is not one.
pub fn parse_up(datagram: &[u8]) -> Option<Up<'_>> {
    let (header, payload) = datagram.split_at_checked(UP_HEADER)?;
    if header.get(..4)? != MAGIC || payload.len() > MAX_PAYLOAD {
        return None;
    }
    Some(Up {
        session: u64::from_be_bytes(header.get(4..12)?.try_into().ok()?),
        counter: u64::from_be_bytes(header.get(12..20)?.try_into().ok()?),
        mac: header.get(20..36)?.try_into().ok()?,
        key: header.get(36..68)?.try_into().ok()?,
        payload,
    })
}

/// A datagram from the relay: the other device's key and the payload.
pub fn seal_down(key: &[u8; 32], payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(key);
    out.extend_from_slice(payload);
}

/// Parses a datagram from the relay; `None` when it is not one.
pub fn parse_down(datagram: &[u8]) -> Option<([u8; 32], &[u8])> {
    let (header, payload) = datagram.split_at_checked(DOWN_HEADER)?;
    if header.get(..4)? != MAGIC || payload.len() > MAX_PAYLOAD {
        return None;
    }
    Some((header.get(4..36)?.try_into().ok()?, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_datagram_opens_with_its_session_only() {
        let session = Session::new(7, &[1; 32]);
        let mut out = Vec::new();
        session.seal(42, &[9; 32], b"wireguard", &mut out);
        let up = parse_up(&out).unwrap();
        assert_eq!(up.session, 7);
        assert_eq!(session.open(&up), Some((42, [9; 32], &b"wireguard"[..])));
        // Another secret, or any bit changed: refused.
        assert!(Session::new(7, &[2; 32]).open(&up).is_none());
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 1;
            if let Some(up) = parse_up(&bad) {
                assert!(
                    up.session != 7 || session.open(&up).is_none(),
                    "flipping byte {i} still opened"
                );
            }
        }
    }

    #[test]
    fn short_and_foreign_datagrams_are_not_relay_datagrams() {
        assert!(parse_up(b"ZTU1").is_none());
        assert!(parse_up(&[0u8; UP_HEADER]).is_none());
        assert!(parse_down(&[0u8; DOWN_HEADER + 4]).is_none());
        let mut out = Vec::new();
        seal_down(&[3; 32], b"x", &mut out);
        assert_eq!(parse_down(&out), Some(([3; 32], &b"x"[..])));
        assert!(parse_up(&vec![0u8; UP_HEADER + MAX_PAYLOAD + 1]).is_none());
    }

    #[test]
    fn the_largest_datagrams_fit_a_1500_byte_link() {
        let v4: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:443".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        assert_eq!(max_datagram(v4), 1_472);
        assert_eq!(max_datagram(mapped), 1_472);
        assert_eq!(max_datagram(v6), 1_452);
        assert_eq!(max_message(v4), 1_404);
        assert_eq!(max_message(v6), 1_384);
        // What a device sends up fits on the way down too, whatever the
        // other device's address family.
        for up in [v4, v6] {
            for down in [v4, v6] {
                assert!(max_message(up) + DOWN_HEADER <= max_datagram(down));
            }
        }
    }
}
