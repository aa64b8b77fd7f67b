//! Unit tests of IP/TCP/UDP/ICMP parsing.

use crate::packet::*;
use crate::test_packets::{PacketBuilder, V4_A, V4_B, V6_A, V6_B};

/// An address as the number the parser holds it as (see `Tuple`).
fn bits(ip: std::net::IpAddr) -> u128 {
    match ip {
        std::net::IpAddr::V4(a) => u128::from(u32::from(a)),
        std::net::IpAddr::V6(a) => u128::from(a),
    }
}

fn assert_every_prefix_fails(packet: &[u8]) {
    for len in 0..packet.len() {
        let prefix = packet.get(..len).unwrap();
        assert!(
            parse_packet(prefix).is_err(),
            "prefix of {len}/{} bytes parsed",
            packet.len()
        );
    }
    assert!(parse_packet(packet).is_ok());
}

#[test]
fn parses_ipv4_tcp() {
    let packet = PacketBuilder::tcp(V4_A, 40000, V4_B, 443)
        .flags(TCP_SYN)
        .payload(b"hello")
        .build();
    let info = parse_packet(&packet).unwrap();
    assert_eq!(
        info,
        PacketInfo {
            src: V4_A,
            dst: V4_B,
            proto: PROTO_TCP,
            src_port: 40000,
            dst_port: 443,
            tcp_flags: TCP_SYN,
            icmp_type: None,
        }
    );
    assert_eq!(source_address(&packet), Some(V4_A));
    assert_eq!(destination_address(&packet), Some(V4_B));
}

#[test]
fn parses_ipv4_udp_and_icmp() {
    let udp = parse_packet(&PacketBuilder::udp(V4_A, 5353, V4_B, 53).build()).unwrap();
    assert_eq!(
        (udp.proto, udp.src_port, udp.dst_port),
        (PROTO_UDP, 5353, 53)
    );
    let echo = parse_packet(&PacketBuilder::echo_request(V4_A, V4_B, 0x1234).build()).unwrap();
    assert_eq!(echo.proto, PROTO_ICMPV4);
    assert_eq!(echo.icmp_type, Some(8));
    assert_eq!((echo.src_port, echo.dst_port), (0x1234, 0x1234));
    assert!(echo.is_echo_request());
    let reply = parse_packet(&PacketBuilder::echo_reply(V4_B, V4_A, 0x1234).build()).unwrap();
    assert!(reply.is_echo_reply());
    let unreachable = parse_packet(&PacketBuilder::icmp(V4_B, V4_A, 3, 7).build()).unwrap();
    assert_eq!(unreachable.icmp_type, Some(3));
    assert_eq!((unreachable.src_port, unreachable.dst_port), (0, 0));
}

#[test]
fn parses_ipv6_tcp_udp_icmp() {
    let tcp = parse_packet(&PacketBuilder::tcp(V6_A, 1, V6_B, 22).build()).unwrap();
    assert_eq!((tcp.src, tcp.dst, tcp.proto), (V6_A, V6_B, PROTO_TCP));
    assert_eq!((tcp.src_port, tcp.dst_port), (1, 22));
    let udp = parse_packet(&PacketBuilder::udp(V6_A, 2, V6_B, 53).build()).unwrap();
    assert_eq!((udp.proto, udp.dst_port), (PROTO_UDP, 53));
    let echo = parse_packet(&PacketBuilder::echo_request(V6_A, V6_B, 7).build()).unwrap();
    assert_eq!((echo.proto, echo.icmp_type), (PROTO_ICMPV6, Some(128)));
    assert_eq!(echo.dst_port, 7);
    assert!(echo.is_echo_request());
    let reply = parse_packet(&PacketBuilder::echo_reply(V6_B, V6_A, 7).build()).unwrap();
    assert!(reply.is_echo_reply());
}

#[test]
fn other_protocols_have_no_ports() {
    // GRE over IPv4 and IPv6, and IPv6 "no next header".
    for packet in [
        PacketBuilder::raw(V4_A, V4_B, 47, &[1, 2, 3, 4, 5, 6, 7, 8]).build(),
        PacketBuilder::raw(V6_A, V6_B, 47, &[1, 2, 3, 4]).build(),
        PacketBuilder::raw(V6_A, V6_B, 59, &[]).build(),
    ] {
        let info = parse_packet(&packet).unwrap();
        assert_eq!((info.src_port, info.dst_port, info.tcp_flags), (0, 0, 0));
        assert_eq!(info.icmp_type, None);
    }
    // ICMPv6's protocol number inside IPv4 is not ICMP.
    let odd = parse_packet(&PacketBuilder::raw(V4_A, V4_B, 58, &[128, 0, 0, 0]).build()).unwrap();
    assert_eq!(odd.icmp_type, None);
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let hop_by_hop = [0u8, 0, 5, 2, 0, 0, 1, 0];
    let destination = [0u8, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let authentication = [
        0u8, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let packet = PacketBuilder::tcp(V6_A, 1234, V6_B, 22)
        .ipv6_extension(0, &hop_by_hop)
        .ipv6_extension(60, &destination)
        .ipv6_extension(51, &authentication)
        .payload(b"data")
        .build();
    let info = parse_packet(&packet).unwrap();
    assert_eq!(
        (info.proto, info.src_port, info.dst_port),
        (PROTO_TCP, 1234, 22)
    );
    assert_every_prefix_fails(&packet);

    let mld = PacketBuilder::icmp(V6_A, V6_B, 143, 0)
        .ipv6_extension(0, &hop_by_hop)
        .build();
    assert_eq!(parse_packet(&mld).unwrap().icmp_type, Some(143));

    // A header claiming more bytes than the packet holds.
    let mut overlong = PacketBuilder::raw(V6_A, V6_B, 59, &[])
        .ipv6_extension(60, &[0, 0, 0, 0, 0, 0, 0, 0])
        .build();
    overlong[41] = 1;
    assert_eq!(
        parse_packet(&overlong),
        Err(PacketError::BadExtensionHeader { next_header: 60 })
    );
    let mut chain = PacketBuilder::raw(V6_A, V6_B, 59, &[]);
    for _ in 0..9 {
        chain = chain.ipv6_extension(60, &[0; 8]);
    }
    assert_eq!(
        parse_packet(&chain.build()),
        Err(PacketError::TooManyExtensionHeaders)
    );
}

#[test]
fn fragments_are_told_apart() {
    let first = PacketBuilder::udp(V4_A, 1, V4_B, 2)
        .payload(&[0; 16])
        .ipv4_fragment(77, 0, true)
        .build();
    let Ok(Datagram::Whole {
        tuple: info,
        first_fragment: Some(id),
    }) = parse_datagram(&first)
    else {
        panic!("first fragment not parsed");
    };
    assert_eq!(info.dst_port, 2);
    assert_eq!(
        (id.id, id.proto, id.src, id.dst),
        (77, PROTO_UDP, bits(V4_A), bits(V4_B))
    );

    let later = PacketBuilder::raw(V4_A, V4_B, PROTO_UDP, &[9; 8])
        .ipv4_fragment(77, 3, false)
        .build();
    assert_eq!(
        parse_datagram(&later),
        Ok(Datagram::LaterFragment {
            fragment: id,
            offset_bytes: 24
        })
    );
    assert_eq!(
        parse_packet(&later),
        Err(PacketError::Fragment { offset_bytes: 24 })
    );
    assert_eq!(source_address(&later), Some(V4_A));
    assert_eq!(destination_address(&later), Some(V4_B));

    // IPv6: the fragment header names the protocol; a later fragment's
    // data is not parsed.
    let first6 = PacketBuilder::udp(V6_A, 1, V6_B, 53)
        .ipv6_fragment(0x0102_0304, 0, true)
        .build();
    let Ok(Datagram::Whole {
        tuple: info,
        first_fragment: Some(id6),
    }) = parse_datagram(&first6)
    else {
        panic!("first IPv6 fragment not parsed");
    };
    assert_eq!((info.proto, info.dst_port), (PROTO_UDP, 53));
    assert_eq!((id6.id, id6.proto), (0x0102_0304, PROTO_UDP));
    let later6 = PacketBuilder::raw(V6_A, V6_B, PROTO_UDP, &[1])
        .ipv6_fragment(0x0102_0304, 1, false)
        .build();
    assert_eq!(
        parse_datagram(&later6),
        Ok(Datagram::LaterFragment {
            fragment: id6,
            offset_bytes: 8
        })
    );
    // An atomic fragment is a whole packet.
    let atomic = PacketBuilder::udp(V6_A, 1, V6_B, 53)
        .ipv6_fragment(5, 0, false)
        .build();
    assert!(matches!(
        parse_datagram(&atomic),
        Ok(Datagram::Whole {
            first_fragment: None,
            ..
        })
    ));
    // Two fragment headers are refused.
    let twice = PacketBuilder::udp(V6_A, 1, V6_B, 53)
        .ipv6_fragment(5, 0, true)
        .ipv6_fragment(5, 0, true)
        .build();
    assert_eq!(
        parse_packet(&twice),
        Err(PacketError::BadExtensionHeader { next_header: 44 })
    );
}

#[test]
fn ipv4_options_are_skipped() {
    let packet = PacketBuilder::udp(V4_A, 1000, V4_B, 2000)
        .ipv4_options(&[1, 1, 1, 1, 1, 1, 1, 0])
        .build();
    assert_eq!(packet.first().copied(), Some(0x47));
    let info = parse_packet(&packet).unwrap();
    assert_eq!((info.src_port, info.dst_port), (1000, 2000));
    assert_every_prefix_fails(&packet);
}

#[test]
fn every_truncation_is_an_error() {
    for packet in [
        PacketBuilder::tcp(V4_A, 1, V4_B, 2)
            .payload(b"data")
            .build(),
        PacketBuilder::tcp(V4_A, 1, V4_B, 2)
            .tcp_options(&[1, 1, 1, 1])
            .build(),
        PacketBuilder::udp(V4_A, 1, V4_B, 2).payload(b"x").build(),
        PacketBuilder::echo_request(V4_A, V4_B, 9).build(),
        PacketBuilder::icmp(V4_A, V4_B, 3, 1).build(),
        PacketBuilder::raw(V4_A, V4_B, 47, &[1, 2]).build(),
        PacketBuilder::tcp(V6_A, 1, V6_B, 2)
            .payload(b"data")
            .build(),
        PacketBuilder::udp(V6_A, 1, V6_B, 2).build(),
        PacketBuilder::echo_reply(V6_A, V6_B, 9).build(),
        PacketBuilder::raw(V6_A, V6_B, 47, &[1]).build(),
    ] {
        assert_every_prefix_fails(&packet);
    }
}

#[test]
fn trailing_padding_is_ignored() {
    let mut packet = PacketBuilder::udp(V4_A, 1, V4_B, 2).build();
    packet.extend_from_slice(&[0; 6]);
    assert_eq!(parse_packet(&packet).unwrap().dst_port, 2);
}

#[test]
fn malformed_headers_are_reported() {
    assert_eq!(
        parse_packet(&[]),
        Err(PacketError::TooShort { len: 0, need: 1 })
    );
    let mut packet = PacketBuilder::udp(V4_A, 1, V4_B, 2).build();
    packet[0] = 0x55;
    assert_eq!(
        parse_packet(&packet),
        Err(PacketError::UnsupportedVersion(5))
    );
    packet[0] = 0x44;
    assert_eq!(
        parse_packet(&packet),
        Err(PacketError::BadHeaderLength { header_len: 16 })
    );
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&10u16.to_be_bytes());
    assert_eq!(
        parse_packet(&packet),
        Err(PacketError::BadTotalLength {
            total_len: 10,
            header_len: 20
        })
    );
    packet[2..4].copy_from_slice(&100u16.to_be_bytes());
    assert_eq!(
        parse_packet(&packet),
        Err(PacketError::Truncated {
            claimed: 100,
            available: 28
        })
    );
    assert_eq!(source_address(&packet), None);

    let mut tcp = PacketBuilder::tcp(V4_A, 1, V4_B, 2).build();
    tcp[20 + 12] = 0x40;
    assert_eq!(
        parse_packet(&tcp),
        Err(PacketError::BadTcpHeaderLength { header_len: 16 })
    );
    tcp[20 + 12] = 0x60;
    assert!(matches!(
        parse_packet(&tcp),
        Err(PacketError::TransportTooShort { need: 24, .. })
    ));
}

#[test]
fn routing_reads_the_destination_of_any_header_long_enough() {
    for (packet, dst) in [
        (PacketBuilder::udp(V4_A, 1, V4_B, 2).build(), V4_B),
        (PacketBuilder::tcp(V6_A, 1, V6_B, 2).build(), V6_B),
        (PacketBuilder::echo_request(V4_B, V4_A, 7).build(), V4_A),
    ] {
        assert_eq!(routing_destination(&packet), Some(dst));
        assert_eq!(routing_destination(&packet), destination_address(&packet));
        // Cut inside the destination: no route.
        let end = if dst.is_ipv4() { 20 } else { 40 };
        assert_eq!(routing_destination(&packet[..end - 1]), None);
        assert_eq!(routing_destination(&packet[..end]), Some(dst));
    }
    // A header the filter rejects still names its destination; the
    // filter, which runs next, drops it as malformed.
    let mut packet = PacketBuilder::udp(V4_A, 1, V4_B, 2).build();
    packet[2..4].copy_from_slice(&100u16.to_be_bytes());
    assert!(parse_packet(&packet).is_err());
    assert_eq!(routing_destination(&packet), Some(V4_B));
    packet[0] = 0x55;
    assert_eq!(routing_destination(&packet), None);
    assert_eq!(routing_destination(&[]), None);
}

#[test]
fn only_packets_the_stack_answers_at_once_ask_for_a_read_after_the_write() {
    let answered = |b: PacketBuilder| answered_at_once(&b.build());
    for (src, dst) in [(V4_A, V4_B), (V6_A, V6_B)] {
        assert!(
            answered(PacketBuilder::echo_request(src, dst, 1)),
            "echo request"
        );
        assert!(
            !answered(PacketBuilder::echo_reply(src, dst, 1)),
            "echo reply"
        );
        assert!(answered(PacketBuilder::tcp(src, 1, dst, 2)), "TCP");
        assert!(!answered(PacketBuilder::udp(src, 1, dst, 2)), "UDP");
    }
    assert!(
        !answered(PacketBuilder::icmp(V4_A, V4_B, 3, 1)),
        "destination unreachable"
    );
    assert!(
        answered(PacketBuilder::raw(V4_A, V4_B, 47, &[0; 4])),
        "GRE: not known otherwise"
    );
    assert!(
        answered(PacketBuilder::udp(V6_A, 1, V6_B, 2).ipv6_extension(0, &[0; 8])),
        "an extension header first"
    );
    assert!(
        answered(PacketBuilder::echo_request(V4_A, V4_B, 1).ipv4_options(&[1; 4])),
        "options: the ICMP header is after them"
    );
    assert!(!answered_at_once(&[]));
    assert!(
        answered_at_once(&[0x45, 0, 0]),
        "cut short: not known otherwise"
    );
}
