//! ICMP errors that relate to tracked flows.
//!
//! An ICMP error (destination unreachable, packet too big, time exceeded,
//! parameter problem) quotes the start of the packet that caused it. An
//! inbound error whose quoted packet was sent by this device on a tracked
//! flow passes without a rule, so path MTU discovery and fast connection
//! failure work; any other ICMP error is judged by the rules like a new flow.

use crate::packet::{
    Framing, PROTO_ICMPV4, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Tuple, be16, parse_ip_header_framed,
};

/// Bytes of the ICMP header before the quoted packet.
const ICMP_ERROR_HEADER: usize = 8;

/// The packet quoted by the ICMP error `packet` (already parsed as `outer`),
/// if `outer` is an ICMP error whose quote is a packet that the error's
/// destination sent. Only the fields the quote is guaranteed to carry (the
/// IP header and 8 transport bytes) are read; `tcp_flags` is always 0.
pub(crate) fn quoted_packet(packet: &[u8], outer: &Tuple) -> Option<Tuple> {
    let is_error = matches!(
        (outer.proto, outer.icmp_type),
        (PROTO_ICMPV4, Some(3 | 11 | 12)) | (PROTO_ICMPV6, Some(1..=4))
    );
    if !is_error {
        return None;
    }
    let outer_header = parse_ip_header_framed(packet, Framing::Exact).ok()?;
    let quote = outer_header.payload.get(ICMP_ERROR_HEADER..)?;
    let inner = parse_ip_header_framed(quote, Framing::Quoted).ok()?;
    if inner.is_v6 != outer_header.is_v6
        || inner.fragment.is_some_and(|f| f.offset != 0)
        || inner.src != outer.dst
    {
        return None;
    }
    let mut quoted = Tuple {
        src: inner.src,
        dst: inner.dst,
        is_v6: inner.is_v6,
        proto: inner.proto,
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        icmp_type: None,
    };
    match (inner.proto, inner.is_v6) {
        (PROTO_TCP | PROTO_UDP, _) => {
            quoted.src_port = be16(inner.payload, 0)?;
            quoted.dst_port = be16(inner.payload, 2)?;
        }
        (PROTO_ICMPV4, false) | (PROTO_ICMPV6, true) => {
            quoted.icmp_type = Some(*inner.payload.first()?);
            if quoted.is_echo_request() || quoted.is_echo_reply() {
                let identifier = be16(inner.payload, 4)?;
                quoted.src_port = identifier;
                quoted.dst_port = identifier;
            }
        }
        _ => {}
    }
    Some(quoted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{PacketInfo, parse_tuple};
    use crate::test_packets::{PacketBuilder, V4_A, V4_B, V4_C, V6_A, V6_B};

    fn quote_of(error: &[u8]) -> Option<PacketInfo> {
        quoted_packet(error, &parse_tuple(error).unwrap()).map(|quoted| quoted.info())
    }

    #[test]
    fn reads_tcp_udp_and_echo_quotes() {
        let sent = PacketBuilder::tcp(V4_B, 5000, V4_A, 443)
            .payload(b"xyz")
            .build();
        let error = PacketBuilder::icmp_error(V4_A, V4_B, 3, 4, &sent).build();
        let quoted = quote_of(&error).unwrap();
        assert_eq!(
            (quoted.src, quoted.dst, quoted.proto),
            (V4_B, V4_A, PROTO_TCP)
        );
        assert_eq!((quoted.src_port, quoted.dst_port), (5000, 443));

        // Quotes of only the IP header plus 8 bytes are enough.
        let sent = PacketBuilder::udp(V6_B, 7, V6_A, 53)
            .payload(&[0; 100])
            .build();
        let error = PacketBuilder::icmp_error(V6_A, V6_B, 2, 0, &sent[..48]).build();
        let quoted = quote_of(&error).unwrap();
        assert_eq!((quoted.proto, quoted.dst_port), (PROTO_UDP, 53));

        let ping = PacketBuilder::echo_request(V4_B, V4_A, 42).build();
        let error = PacketBuilder::icmp_error(V4_C, V4_B, 11, 0, &ping).build();
        let quoted = quote_of(&error).unwrap();
        assert!(quoted.is_echo_request());
        assert_eq!(quoted.src_port, 42);
    }

    #[test]
    fn rejects_non_errors_and_mismatched_quotes() {
        let sent = PacketBuilder::udp(V4_B, 7, V4_A, 53).build();
        // An echo request carrying the same bytes is not an error.
        let not_error = PacketBuilder::icmp_error(V4_A, V4_B, 8, 0, &sent).build();
        assert_eq!(quote_of(&not_error), None);
        // The quoted packet must come from the error's destination.
        let misdirected = PacketBuilder::icmp_error(V4_A, V4_C, 3, 3, &sent).build();
        assert_eq!(quote_of(&misdirected), None);
        // Every quote too short for the ports is refused without panicking.
        for len in 0..24 {
            let error = PacketBuilder::icmp_error(V4_A, V4_B, 3, 3, &sent[..len]).build();
            assert_eq!(quote_of(&error), None, "quote of {len} bytes");
        }
        // IPv4 quoted in ICMPv6 is refused.
        let error = PacketBuilder::icmp_error(V6_A, V6_B, 1, 0, &sent).build();
        assert_eq!(quote_of(&error), None);
    }
}
