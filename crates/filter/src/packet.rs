//! Parsing of raw IPv4/IPv6 packets into the 5-tuple the filter decides on.
//!
//! The IP header (for IPv6 also the hop-by-hop, routing, destination
//! options, fragment and authentication extension headers) and the first
//! transport header are read. A protocol other than TCP, UDP or the IP
//! version's ICMP is reported by number with ports 0. Every length is
//! checked against the buffer; nothing here panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::ipv6_ext::walk_extension_headers;
use crate::transport::parse_transport;

/// IP protocol number of ICMPv4.
pub(crate) const PROTO_ICMPV4: u8 = 1;
/// IP protocol number of TCP.
pub(crate) const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub(crate) const PROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub(crate) const PROTO_ICMPV6: u8 = 58;

/// TCP FIN flag bit.
pub(crate) const TCP_FIN: u8 = 0x01;
/// TCP SYN flag bit.
pub(crate) const TCP_SYN: u8 = 0x02;
/// TCP RST flag bit.
pub(crate) const TCP_RST: u8 = 0x04;
/// TCP ACK flag bit.
pub(crate) const TCP_ACK: u8 = 0x10;

pub(crate) const ICMPV4_ECHO_REPLY: u8 = 0;
pub(crate) const ICMPV4_ECHO_REQUEST: u8 = 8;
pub(crate) const ICMPV6_ECHO_REQUEST: u8 = 128;
pub(crate) const ICMPV6_ECHO_REPLY: u8 = 129;

const IPV4_MIN_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;

/// Parsed 5-tuple view of an IP packet (IPv4 or IPv6; TCP, UDP, ICMPv4/ICMPv6,
/// or any other protocol number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketInfo {
    /// Source address from the IP header.
    pub src: IpAddr,
    /// Destination address from the IP header.
    pub dst: IpAddr,
    /// IP protocol number (IPv6: the first next-header value).
    pub proto: u8,
    /// TCP/UDP source port; the identifier for ICMP echo; 0 otherwise.
    pub src_port: u16,
    /// TCP/UDP destination port; the identifier for ICMP echo; 0 otherwise.
    pub dst_port: u16,
    /// TCP flags byte (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR); 0 for non-TCP.
    pub tcp_flags: u8,
    /// ICMP type for ICMPv4 over IPv4 and ICMPv6 over IPv6; `None` otherwise.
    pub icmp_type: Option<u8>,
}

impl PacketInfo {
    /// Whether this is an ICMPv4 echo request (type 8) or ICMPv6 echo request (type 128).
    pub fn is_echo_request(&self) -> bool {
        is_echo_request(self.proto, self.icmp_type)
    }

    /// Whether this is an ICMPv4 echo reply (type 0) or ICMPv6 echo reply (type 129).
    pub fn is_echo_reply(&self) -> bool {
        is_echo_reply(self.proto, self.icmp_type)
    }

    /// Whether this is an ICMP message of the packet's own IP version.
    pub fn is_icmp(&self) -> bool {
        self.icmp_type.is_some()
    }
}

fn is_echo_request(proto: u8, icmp_type: Option<u8>) -> bool {
    matches!(
        (proto, icmp_type),
        (PROTO_ICMPV4, Some(ICMPV4_ECHO_REQUEST)) | (PROTO_ICMPV6, Some(ICMPV6_ECHO_REQUEST))
    )
}

fn is_echo_reply(proto: u8, icmp_type: Option<u8>) -> bool {
    matches!(
        (proto, icmp_type),
        (PROTO_ICMPV4, Some(ICMPV4_ECHO_REPLY)) | (PROTO_ICMPV6, Some(ICMPV6_ECHO_REPLY))
    )
}

/// [`PacketInfo`] as the filter's packet path holds it: the addresses are
/// 128-bit numbers (IPv4 in the low 32 bits, as `u32::from(Ipv4Addr)`
/// gives them) beside the family, not `IpAddr`s. An `IpAddr` is 17 bytes
/// aligned to 1: the compiler stored a parsed one as a tag byte and the
/// address bytes, then copied it with loads spanning those stores, which
/// the CPU cannot forward from them, so every packet waited for its stores
/// to reach the cache (`perf annotate` of the criterion benchmark). The
/// `PacketInfo` is built only for what needs one: the rules, flow events,
/// and the packet that opens a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tuple {
    pub(crate) src: u128,
    pub(crate) dst: u128,
    pub(crate) is_v6: bool,
    pub(crate) proto: u8,
    pub(crate) src_port: u16,
    pub(crate) dst_port: u16,
    pub(crate) tcp_flags: u8,
    pub(crate) icmp_type: Option<u8>,
}

impl Tuple {
    /// The same packet as a [`PacketInfo`].
    pub(crate) fn info(&self) -> PacketInfo {
        PacketInfo {
            src: address_of_bits(self.src, self.is_v6),
            dst: address_of_bits(self.dst, self.is_v6),
            proto: self.proto,
            src_port: self.src_port,
            dst_port: self.dst_port,
            tcp_flags: self.tcp_flags,
            icmp_type: self.icmp_type,
        }
    }

    /// See [`PacketInfo::is_echo_request`].
    pub(crate) fn is_echo_request(&self) -> bool {
        is_echo_request(self.proto, self.icmp_type)
    }

    /// See [`PacketInfo::is_echo_reply`].
    pub(crate) fn is_echo_reply(&self) -> bool {
        is_echo_reply(self.proto, self.icmp_type)
    }

    /// See [`PacketInfo::is_icmp`].
    pub(crate) fn is_icmp(&self) -> bool {
        self.icmp_type.is_some()
    }
}

/// The address whose number (as [`Tuple`] holds it) is `bits`.
fn address_of_bits(bits: u128, is_v6: bool) -> IpAddr {
    if is_v6 {
        IpAddr::V6(Ipv6Addr::from(bits))
    } else {
        // An IPv4 address's number is below 2^32: the cast keeps all of it.
        IpAddr::V4(Ipv4Addr::from(bits as u32))
    }
}

/// Why a buffer could not be parsed as an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The buffer is shorter than the fixed IP header (1 byte for the version
    /// nibble, 20 for IPv4, 40 for IPv6).
    #[error("packet too short: {len} bytes, the IP header needs {need}")]
    TooShort {
        /// Bytes available.
        len: usize,
        /// Bytes the header needs.
        need: usize,
    },
    /// The version nibble is neither 4 nor 6.
    #[error("unsupported IP version {0}: only IPv4 and IPv6 are handled")]
    UnsupportedVersion(u8),
    /// The IPv4 IHL field is below the minimum of 5 words (20 bytes).
    #[error("bad IPv4 header length: {header_len} bytes (minimum 20)")]
    BadHeaderLength {
        /// Header length in bytes claimed by the IHL field.
        header_len: usize,
    },
    /// The IPv4 total length is smaller than the header it must contain.
    #[error("bad IPv4 total length {total_len}: smaller than the {header_len}-byte header")]
    BadTotalLength {
        /// Total length field.
        total_len: usize,
        /// Header length from the IHL field.
        header_len: usize,
    },
    /// The IP length field claims more bytes than the buffer holds.
    #[error("packet truncated: IP header claims {claimed} bytes, buffer holds {available}")]
    Truncated {
        /// Bytes the IP header claims.
        claimed: usize,
        /// Bytes actually present.
        available: usize,
    },
    /// The transport header (TCP, UDP or ICMP) is cut short.
    #[error("transport header of protocol {proto} truncated: {len} bytes, need {need}")]
    TransportTooShort {
        /// IP protocol number.
        proto: u8,
        /// Bytes available after the IP header.
        len: usize,
        /// Bytes the transport header needs.
        need: usize,
    },
    /// The TCP data offset is below 5 words (20 bytes).
    #[error("bad TCP header length: {header_len} bytes (minimum 20)")]
    BadTcpHeaderLength {
        /// Header length in bytes claimed by the data offset field.
        header_len: usize,
    },
    /// A non-first fragment: it carries no transport header, so it has no
    /// 5-tuple. The filter passes it only after its first fragment passed.
    #[error("non-first fragment (offset {offset_bytes} bytes) has no transport header")]
    Fragment {
        /// Fragment offset in bytes.
        offset_bytes: usize,
    },
    /// An IPv6 extension header runs past the packet, or a second fragment
    /// header appears.
    #[error("bad IPv6 extension header {next_header}: truncated or repeated")]
    BadExtensionHeader {
        /// The next-header value naming the bad extension header.
        next_header: u8,
    },
    /// More IPv6 extension headers than the filter walks (8).
    #[error("too many IPv6 extension headers")]
    TooManyExtensionHeaders,
}

/// Identity of a fragmented datagram (RFC 791 / RFC 8200 reassembly key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FragmentId {
    /// Addresses as numbers, as [`Tuple`] holds them.
    pub(crate) src: u128,
    pub(crate) dst: u128,
    /// IPv4 protocol, or the next header named by the IPv6 fragment header.
    pub(crate) proto: u8,
    pub(crate) id: u32,
    pub(crate) is_v6: bool,
}

/// A parsed packet: whole (or the first fragment), or a later fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Datagram {
    /// A packet with its transport header.
    Whole {
        /// Its 5-tuple.
        tuple: Tuple,
        /// Set when this is the first fragment of a fragmented datagram.
        first_fragment: Option<FragmentId>,
    },
    /// A non-first fragment.
    LaterFragment {
        /// The datagram it belongs to.
        fragment: FragmentId,
        /// Its offset in bytes.
        offset_bytes: usize,
    },
}

/// Parses `packet` into its 5-tuple.
///
/// Trailing bytes beyond the IP length field (link padding) are ignored; a
/// length field larger than the buffer is [`PacketError::Truncated`].
/// A non-first fragment is [`PacketError::Fragment`].
pub fn parse_packet(packet: &[u8]) -> Result<PacketInfo, PacketError> {
    parse_tuple(packet).map(|tuple| tuple.info())
}

/// [`parse_packet`] as the filter holds the result.
pub(crate) fn parse_tuple(packet: &[u8]) -> Result<Tuple, PacketError> {
    match parse_datagram(packet)? {
        Datagram::Whole { tuple, .. } => Ok(tuple),
        Datagram::LaterFragment { offset_bytes, .. } => Err(PacketError::Fragment { offset_bytes }),
    }
}

/// Parses `packet`, telling fragments apart (see [`Datagram`]).
// Inlined into the filter so the parsed tuple is built where it is used,
// not moved through several stack copies (a third of an established
// packet's cost was those moves).
#[inline(always)]
pub(crate) fn parse_datagram(packet: &[u8]) -> Result<Datagram, PacketError> {
    let mut header = parse_ip_header(packet)?;
    if header.is_v6 {
        walk_extension_headers(&mut header)?;
    }
    let fragment = header.fragment.map(|f| FragmentId {
        src: header.src,
        dst: header.dst,
        proto: f.proto,
        id: f.id,
        is_v6: header.is_v6,
    });
    if let (Some(fragment), Some(f)) = (fragment, header.fragment)
        && f.offset != 0
    {
        return Ok(Datagram::LaterFragment {
            fragment,
            offset_bytes: usize::from(f.offset) * 8,
        });
    }
    let transport = parse_transport(header.proto, header.is_v6, header.payload)?;
    let tuple = Tuple {
        src: header.src,
        dst: header.dst,
        is_v6: header.is_v6,
        proto: header.proto,
        src_port: transport.src_port,
        dst_port: transport.dst_port,
        tcp_flags: transport.tcp_flags,
        icmp_type: transport.icmp_type,
    };
    Ok(Datagram::Whole {
        tuple,
        first_fragment: fragment,
    })
}

/// Inner source address of a packet (used by the agent for cryptokey
/// routing); `None` if the IP header is malformed.
///
/// Only the IP header is validated, so this also works for fragments.
pub fn source_address(packet: &[u8]) -> Option<IpAddr> {
    parse_ip_header(packet)
        .ok()
        .map(|h| address_of_bits(h.src, h.is_v6))
}

/// Inner destination address of a packet (used by the agent to pick the
/// peer); `None` if the IP header is malformed.
///
/// Only the IP header is validated, so this also works for fragments.
pub fn destination_address(packet: &[u8]) -> Option<IpAddr> {
    parse_ip_header(packet)
        .ok()
        .map(|h| address_of_bits(h.dst, h.is_v6))
}

/// Where a packet is going, read from its IP header without checking the
/// rest of it: enough to pick the peer whose tunnel it would take, for a
/// packet that the outbound filter then parses in full (and drops, counted
/// as malformed, when it is). Half the work of [`destination_address`] on
/// the path every packet read from the TUN takes.
pub fn routing_destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => array_at::<4>(packet, 16).map(|dst| IpAddr::V4(Ipv4Addr::from(dst))),
        6 => array_at::<16>(packet, 24).map(|dst| IpAddr::V6(Ipv6Addr::from(dst))),
        _ => None,
    }
}

/// Whether the local stack may answer `packet`, delivered to it, before
/// the write that delivers it returns: an ICMP echo request (the echo
/// reply), a TCP segment (a SYN-ACK, an ACK), or anything not known
/// otherwise. UDP and other ICMP messages are answered, if at all, by a
/// program that runs later. Read from the headers without checking them,
/// like [`routing_destination`].
pub fn answered_at_once(packet: &[u8]) -> bool {
    let Some(&first) = packet.first() else {
        return false;
    };
    match first >> 4 {
        4 => match packet.get(9) {
            Some(&PROTO_UDP) => false,
            Some(&PROTO_ICMPV4) => {
                packet.get(usize::from(first & 0x0f) * 4) == Some(&ICMPV4_ECHO_REQUEST)
            }
            _ => true,
        },
        6 => match packet.get(6) {
            Some(&PROTO_UDP) => false,
            Some(&PROTO_ICMPV6) => packet.get(40) == Some(&ICMPV6_ECHO_REQUEST),
            _ => true,
        },
        _ => true,
    }
}

/// How strictly the IP length field is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// A whole packet: the length field must fit in the buffer.
    Exact,
    /// The start of a packet quoted inside an ICMP error: the length field
    /// may exceed the buffer, which is cut to what is present.
    Quoted,
}

/// The validated IP header and the transport bytes it delimits.
pub(crate) struct IpHeader<'a> {
    /// Addresses as numbers, as [`Tuple`] holds them.
    pub(crate) src: u128,
    pub(crate) dst: u128,
    /// Protocol of `payload` (IPv6: updated while walking extension headers).
    pub(crate) proto: u8,
    pub(crate) is_v6: bool,
    /// Set when the packet is a fragment (first or later).
    pub(crate) fragment: Option<FragmentHeader>,
    pub(crate) payload: &'a [u8],
}

/// Fragmentation fields of a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FragmentHeader {
    /// Offset in 8-byte units.
    pub(crate) offset: u16,
    /// Reassembly identifier.
    pub(crate) id: u32,
    /// IPv4 protocol, or the next header named by the IPv6 fragment header.
    pub(crate) proto: u8,
}

#[inline(always)]
fn parse_ip_header(packet: &[u8]) -> Result<IpHeader<'_>, PacketError> {
    parse_ip_header_framed(packet, Framing::Exact)
}

/// Parses the IP header of `packet`; see [`Framing`].
#[inline(always)]
pub(crate) fn parse_ip_header_framed(
    packet: &[u8],
    framing: Framing,
) -> Result<IpHeader<'_>, PacketError> {
    let first = *packet
        .first()
        .ok_or(PacketError::TooShort { len: 0, need: 1 })?;
    match first >> 4 {
        4 => parse_ipv4_header(packet, framing),
        6 => parse_ipv6_header(packet, framing),
        version => Err(PacketError::UnsupportedVersion(version)),
    }
}

#[inline(always)]
fn parse_ipv4_header(packet: &[u8], framing: Framing) -> Result<IpHeader<'_>, PacketError> {
    let (
        Some(&ver_ihl),
        Some(total_len),
        Some(id),
        Some(fragment),
        Some(&proto),
        Some(src),
        Some(dst),
    ) = (
        packet.first(),
        be16(packet, 2),
        be16(packet, 4),
        be16(packet, 6),
        packet.get(9),
        array_at::<4>(packet, 12),
        array_at::<4>(packet, 16),
    )
    else {
        return Err(PacketError::TooShort {
            len: packet.len(),
            need: IPV4_MIN_HEADER,
        });
    };
    let header_len = usize::from(ver_ihl & 0x0f) * 4;
    if header_len < IPV4_MIN_HEADER {
        return Err(PacketError::BadHeaderLength { header_len });
    }
    let total_len = usize::from(total_len);
    if total_len < header_len {
        return Err(PacketError::BadTotalLength {
            total_len,
            header_len,
        });
    }
    let payload = framed_payload(packet, header_len, total_len, framing)?;
    Ok(IpHeader {
        src: u128::from(u32::from_be_bytes(src)),
        dst: u128::from(u32::from_be_bytes(dst)),
        proto,
        is_v6: false,
        // Fragment when MF is set or the offset is non-zero.
        fragment: (fragment & 0x3fff != 0).then_some(FragmentHeader {
            offset: fragment & 0x1fff,
            id: u32::from(id),
            proto,
        }),
        payload,
    })
}

fn parse_ipv6_header(packet: &[u8], framing: Framing) -> Result<IpHeader<'_>, PacketError> {
    let (Some(payload_len), Some(&next_header), Some(src), Some(dst)) = (
        be16(packet, 4),
        packet.get(6),
        array_at::<16>(packet, 8),
        array_at::<16>(packet, 24),
    ) else {
        return Err(PacketError::TooShort {
            len: packet.len(),
            need: IPV6_HEADER,
        });
    };
    let claimed = IPV6_HEADER + usize::from(payload_len);
    let payload = framed_payload(packet, IPV6_HEADER, claimed, framing)?;
    Ok(IpHeader {
        src: u128::from_be_bytes(src),
        dst: u128::from_be_bytes(dst),
        proto: next_header,
        is_v6: true,
        fragment: None,
        payload,
    })
}

/// The bytes between the header and the claimed end of the packet.
fn framed_payload(
    packet: &[u8],
    header_len: usize,
    claimed: usize,
    framing: Framing,
) -> Result<&[u8], PacketError> {
    let end = match framing {
        Framing::Exact => claimed,
        Framing::Quoted => claimed.min(packet.len()),
    };
    packet.get(header_len..end).ok_or(PacketError::Truncated {
        claimed: end,
        available: packet.len(),
    })
}

/// The `N` bytes at `offset`, or `None` past the end of `bytes`.
pub(crate) fn array_at<const N: usize>(bytes: &[u8], offset: usize) -> Option<[u8; N]> {
    bytes
        .get(offset..offset.checked_add(N)?)
        .and_then(|b| b.try_into().ok())
}

/// Big-endian `u16` at `offset`, or `None` past the end of `bytes`.
pub(crate) fn be16(bytes: &[u8], offset: usize) -> Option<u16> {
    let hi = *bytes.get(offset)?;
    let lo = *bytes.get(offset.checked_add(1)?)?;
    Some(u16::from_be_bytes([hi, lo]))
}
