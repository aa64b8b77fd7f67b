//! "Packet too big": the answer a router gives when a packet with "don't
//! fragment" does not fit its next hop, here written into the TUN for the
//! local stack. A relayed peer's next hop is a datagram to the relay,
//! which holds fewer bytes than the overlay MTU promises (the relay's
//! header comes on top of WireGuard's). The kernel keeps the smaller MTU
//! for that destination (`ip route get` shows it), TCP sends smaller
//! segments from the next one on, and nothing is fragmented on the way.
//!
//! ICMP "fragmentation needed" (RFC 792, RFC 1191) for IPv4, ICMPv6
//! "packet too big" (RFC 4443) for IPv6. The answer comes from the
//! packet's destination, so that it arrives on the TUN from an address
//! routed there (as the peer's would), and quotes the start of the packet
//! so the stack can tell which socket sent it.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The longest answer [`answer`] writes.
pub const MAX_ANSWER: usize = V6_ANSWER_MAX;
/// Most of an IPv4 packet an answer quotes: all of it fits in 576 bytes
/// (RFC 1812, 4.3.2.3), as Linux's own errors do.
const V4_ANSWER_MAX: usize = 576;
/// An IPv6 error fits the minimum IPv6 MTU (RFC 4443, 2.4 (c)).
const V6_ANSWER_MAX: usize = 1_280;
/// IPv4 header's "don't fragment" flag (in the flags and offset word).
const DONT_FRAGMENT: u16 = 0x4000;
/// Fragment offset bits.
const OFFSET: u16 = 0x1fff;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
/// ICMPv6 types below this are errors.
const ICMPV6_INFORMATIONAL: u8 = 128;
const HOP_LIMIT: u8 = 64;

/// Whether a too-big `packet` needs "packet too big" rather than
/// fragmentation: every IPv6 packet (only the sender fragments there),
/// and IPv4 packets with "don't fragment" set.
pub fn must_not_fragment(packet: &[u8]) -> bool {
    match packet.first().map(|b| b >> 4) {
        Some(4) => packet
            .get(6)
            .is_some_and(|&flags| u16::from(flags) << 8 & DONT_FRAGMENT != 0),
        Some(6) => true,
        _ => false,
    }
}

/// Writes into `out` the "packet too big" answer to `packet` for a next
/// hop of `mtu` bytes; its length, or `None` when none may be sent: not
/// IPv4 or IPv6, too short for its own header, a later fragment, an ICMP
/// error itself (errors are never answered with errors), a source or
/// destination that cannot take part (unspecified, multicast, broadcast),
/// or `out` shorter than the answer.
pub fn answer(packet: &[u8], mtu: u16, out: &mut [u8]) -> Option<usize> {
    match packet.first()? >> 4 {
        4 => answer_v4(packet, mtu, out),
        6 => answer_v6(packet, mtu, out),
        _ => None,
    }
}

fn answer_v4(packet: &[u8], mtu: u16, out: &mut [u8]) -> Option<usize> {
    let header_len = usize::from(packet.first()? & 0x0f) * 4;
    let header = packet.get(..header_len).filter(|_| header_len >= 20)?;
    let flags = u16::from_be_bytes([*header.get(6)?, *header.get(7)?]);
    let src: [u8; 4] = header.get(12..16)?.try_into().ok()?;
    let dst: [u8; 4] = header.get(16..20)?.try_into().ok()?;
    let unusable = |a: [u8; 4]| {
        let a = Ipv4Addr::from(a);
        a.is_unspecified() || a.is_multicast() || a.is_broadcast()
    };
    if flags & OFFSET != 0 || unusable(src) || unusable(dst) {
        return None;
    }
    if *header.get(9)? == ICMP && is_icmp_error(packet.get(header_len)?) {
        return None;
    }
    let quoted = packet.get(..packet.len().min(V4_ANSWER_MAX - 28))?;
    let len = 28 + quoted.len();
    let [len_hi, len_lo] = u16::try_from(len).ok()?.to_be_bytes();
    let [mtu_hi, mtu_lo] = mtu.to_be_bytes();
    let [s0, s1, s2, s3] = src;
    let [d0, d1, d2, d3] = dst;
    // From the packet's destination to its source; the type of service
    // is internetwork control, as the kernel marks its own ICMP errors.
    #[rustfmt::skip]
    let mut ip = [
        0x45, 0xc0, len_hi, len_lo,
        0, 0, 0, 0,
        HOP_LIMIT, ICMP, 0, 0,
        d0, d1, d2, d3,
        s0, s1, s2, s3,
    ];
    let [c0, c1] = checksum(sum_words(0, &ip)).to_be_bytes();
    ip[10] = c0;
    ip[11] = c1;
    // Destination unreachable, fragmentation needed and DF set.
    let mut icmp = [3, 4, 0, 0, 0, 0, mtu_hi, mtu_lo];
    let [c0, c1] = checksum(sum_words(sum_words(0, &icmp), quoted)).to_be_bytes();
    icmp[2] = c0;
    icmp[3] = c1;
    write(out, &[&ip, &icmp, quoted])
}

/// ICMP types that are errors: destination unreachable, source quench,
/// redirect, time exceeded, parameter problem.
fn is_icmp_error(kind: &u8) -> bool {
    matches!(kind, 3 | 4 | 5 | 11 | 12)
}

fn answer_v6(packet: &[u8], mtu: u16, out: &mut [u8]) -> Option<usize> {
    let header = packet.get(..40)?;
    let src: [u8; 16] = header.get(8..24)?.try_into().ok()?;
    let dst: [u8; 16] = header.get(24..40)?.try_into().ok()?;
    // The answer's source is the packet's destination: it must be unicast.
    let unusable = |a: [u8; 16]| {
        let a = Ipv6Addr::from(a);
        a.is_unspecified() || a.is_multicast()
    };
    if unusable(src) || unusable(dst) {
        return None;
    }
    // An ICMPv6 error right after the fixed header is not answered (one
    // behind extension headers is: the quote is all the stack needs).
    if header.get(6) == Some(&ICMPV6) && *packet.get(40)? < ICMPV6_INFORMATIONAL {
        return None;
    }
    let quoted = packet.get(..packet.len().min(V6_ANSWER_MAX - 48))?;
    let payload_len = u16::try_from(8 + quoted.len()).ok()?;
    let [len_hi, len_lo] = payload_len.to_be_bytes();
    let fixed = [0x60, 0, 0, 0, len_hi, len_lo, ICMPV6, HOP_LIMIT];
    // Packet too big.
    let [m0, m1, m2, m3] = u32::from(mtu).to_be_bytes();
    let mut icmp = [2, 0, 0, 0, m0, m1, m2, m3];
    // The checksum covers a pseudo-header: both addresses, the length and
    // the next header.
    let pseudo = sum_words(sum_words(0, &dst), &src) + u32::from(payload_len) + u32::from(ICMPV6);
    let [c0, c1] = checksum(sum_words(sum_words(pseudo, &icmp), quoted)).to_be_bytes();
    icmp[2] = c0;
    icmp[3] = c1;
    write(out, &[&fixed, &dst, &src, &icmp, quoted])
}

/// Writes `parts` one after another at the start of `out`; their length,
/// or `None` when `out` is too short.
fn write(out: &mut [u8], parts: &[&[u8]]) -> Option<usize> {
    let mut at = 0;
    for part in parts {
        let end = at + part.len();
        out.get_mut(at..end)?.copy_from_slice(part);
        at = end;
    }
    Some(at)
}

/// Adds `bytes` to a one's complement sum as big-endian 16-bit words (an
/// odd last byte padded with zero). Every part summed but the last must
/// have an even length.
fn sum_words(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut words = bytes.chunks_exact(2);
    for word in &mut words {
        if let [hi, lo] = *word {
            sum += u32::from(u16::from_be_bytes([hi, lo]));
        }
    }
    if let [last] = *words.remainder() {
        sum += u32::from(last) << 8;
    }
    sum
}

/// The Internet checksum from a one's complement sum of everything it
/// covers (the checksum field counted as zero).
fn checksum(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests;
