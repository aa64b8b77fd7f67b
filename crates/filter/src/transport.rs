//! Transport headers: ports, TCP flags and ICMP type of a whole packet.

use crate::packet::{
    ICMPV4_ECHO_REPLY, ICMPV4_ECHO_REQUEST, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, PROTO_ICMPV4,
    PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, PacketError, be16,
};

const TCP_MIN_HEADER: usize = 20;
const UDP_HEADER: usize = 8;
const ICMP_HEADER: usize = 8;

/// Ports, flags and ICMP type read from the transport header.
#[derive(Default)]
pub(crate) struct Transport {
    pub(crate) src_port: u16,
    pub(crate) dst_port: u16,
    pub(crate) tcp_flags: u8,
    pub(crate) icmp_type: Option<u8>,
}

/// Reads the transport header of `proto` at the start of `payload`;
/// protocols other than TCP, UDP and the IP version's ICMP have no ports.
#[inline(always)]
pub(crate) fn parse_transport(
    proto: u8,
    is_v6: bool,
    payload: &[u8],
) -> Result<Transport, PacketError> {
    let too_short = |need: usize| PacketError::TransportTooShort {
        proto,
        len: payload.len(),
        need,
    };
    match (proto, is_v6) {
        (PROTO_TCP, _) => {
            let (Some(src_port), Some(dst_port), Some(&offset), Some(&flags)) = (
                be16(payload, 0),
                be16(payload, 2),
                payload.get(12),
                payload.get(13),
            ) else {
                return Err(too_short(TCP_MIN_HEADER));
            };
            let header_len = usize::from(offset >> 4) * 4;
            if header_len < TCP_MIN_HEADER {
                return Err(PacketError::BadTcpHeaderLength { header_len });
            }
            if payload.len() < header_len {
                return Err(too_short(header_len));
            }
            Ok(Transport {
                src_port,
                dst_port,
                tcp_flags: flags,
                icmp_type: None,
            })
        }
        (PROTO_UDP, _) => {
            let (Some(src_port), Some(dst_port), true) = (
                be16(payload, 0),
                be16(payload, 2),
                payload.len() >= UDP_HEADER,
            ) else {
                return Err(too_short(UDP_HEADER));
            };
            Ok(Transport {
                src_port,
                dst_port,
                ..Transport::default()
            })
        }
        (PROTO_ICMPV4, false) | (PROTO_ICMPV6, true) => {
            let (Some(&icmp_type), Some(identifier), true) = (
                payload.first(),
                be16(payload, 4),
                payload.len() >= ICMP_HEADER,
            ) else {
                return Err(too_short(ICMP_HEADER));
            };
            let is_echo = matches!(
                (is_v6, icmp_type),
                (false, ICMPV4_ECHO_REQUEST | ICMPV4_ECHO_REPLY)
                    | (true, ICMPV6_ECHO_REQUEST | ICMPV6_ECHO_REPLY)
            );
            let port = if is_echo { identifier } else { 0 };
            Ok(Transport {
                src_port: port,
                dst_port: port,
                tcp_flags: 0,
                icmp_type: Some(icmp_type),
            })
        }
        _ => Ok(Transport::default()),
    }
}
