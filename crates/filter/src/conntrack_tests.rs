//! Behaviour tests of connection tracking through [`crate::Filter`]:
//! timeouts, the table limit, and ICMP errors about tracked flows.

use std::time::{Duration, Instant};

use crate::filter_tests::{DROP_NO_RULE, config, filter_with, rule};
use crate::packet::{TCP_ACK, TCP_FIN, TCP_SYN};
use crate::test_packets::{PacketBuilder, V4_A, V4_B, V4_C, V6_A, V6_B};
use crate::{Action, DropReason, Filter, FilterLimits, Protocol, Verdict};

#[test]
fn flows_expire_after_idle_timeout() {
    let start = Instant::now();
    let limits = FilterLimits::default();
    let mut filter = Filter::new(limits);
    filter.apply(config(1, vec![]), start);
    let out = PacketBuilder::udp(V4_B, 5000, V4_A, 53).build();
    let reply = PacketBuilder::udp(V4_A, 53, V4_B, 5000).build();
    filter.outbound(&out, start);
    let almost = start + limits.udp_idle - Duration::from_millis(1);
    assert_eq!(filter.inbound(&reply, almost), Verdict::Accept);
    // The reply refreshed the flow, so it lives a full timeout from `almost`.
    filter.expire(almost + limits.udp_idle - Duration::from_millis(1));
    assert_eq!(filter.flow_count(), 1);
    let expired = almost + limits.udp_idle;
    filter.expire(expired);
    assert_eq!(filter.flow_count(), 0);
    assert_eq!(filter.inbound(&reply, expired), DROP_NO_RULE);

    // A lookup after the deadline refuses the flow even before expire() runs.
    filter.outbound(&out, start);
    let late = start + limits.udp_idle;
    assert_eq!(filter.inbound(&reply, late), DROP_NO_RULE);
}

#[test]
fn tcp_timeouts_follow_state() {
    let t0 = Instant::now();
    let limits = FilterLimits::default();
    let mut filter = filter_with(vec![], t0);
    let syn = PacketBuilder::tcp(V4_B, 5000, V4_A, 443)
        .flags(TCP_SYN)
        .build();
    let synack = PacketBuilder::tcp(V4_A, 443, V4_B, 5000)
        .flags(TCP_SYN | TCP_ACK)
        .build();
    let fin = PacketBuilder::tcp(V4_B, 5000, V4_A, 443)
        .flags(TCP_FIN | TCP_ACK)
        .build();

    // Half-open: handshake timeout.
    filter.outbound(&syn, t0);
    filter.expire(t0 + limits.tcp_handshake_idle);
    assert_eq!(filter.flow_count(), 0);

    // Established: long timeout.
    filter.outbound(&syn, t0);
    assert_eq!(filter.inbound(&synack, t0), Verdict::Accept);
    filter.expire(t0 + limits.tcp_handshake_idle + Duration::from_secs(1));
    assert_eq!(filter.flow_count(), 1);
    let t1 = t0 + Duration::from_secs(3600);
    assert_eq!(filter.inbound(&synack, t1), Verdict::Accept);

    // FIN: short timeout.
    filter.outbound(&fin, t1);
    filter.expire(t1 + limits.tcp_closing_idle - Duration::from_millis(1));
    assert_eq!(filter.flow_count(), 1);
    filter.expire(t1 + limits.tcp_closing_idle);
    assert_eq!(filter.flow_count(), 0);
}

#[test]
fn conntrack_limit_is_enforced() {
    let now = Instant::now();
    let limits = FilterLimits {
        max_flows: 3,
        ..FilterLimits::default()
    };
    let mut filter = Filter::new(limits);
    filter.apply(
        config(1, vec![rule("all", Action::Allow, Protocol::Any, &[])]),
        now,
    );
    for port in 1..=3 {
        let p = PacketBuilder::udp(V4_A, port, V4_B, 53).build();
        assert_eq!(filter.inbound(&p, now), Verdict::Accept);
    }
    let fourth = PacketBuilder::udp(V4_A, 4, V4_B, 53).build();
    assert_eq!(
        filter.inbound(&fourth, now),
        Verdict::Drop(DropReason::ConntrackFull)
    );
    // Existing flows still pass.
    let first = PacketBuilder::udp(V4_A, 1, V4_B, 53).build();
    assert_eq!(filter.inbound(&first, now), Verdict::Accept);
    // Outbound still passes, untracked.
    let out = PacketBuilder::udp(V4_B, 9, V4_A, 9).build();
    assert_eq!(filter.outbound(&out, now), Verdict::Accept);
    assert_eq!(filter.counters().untracked_outbound(), 1);
    assert_eq!(filter.flow_count(), 3);

    // Once flows are expired, a new flow evicts them without an expire() call.
    let later = now + limits.udp_idle;
    assert_eq!(filter.inbound(&fourth, later), Verdict::Accept);
    assert_eq!(filter.flow_count(), 1);
    assert_eq!(filter.counters().drops(DropReason::ConntrackFull), 1);
}

#[test]
fn icmp_errors_about_tracked_flows_pass() {
    let now = Instant::now();
    let mut filter = filter_with(vec![], now);
    let sent = PacketBuilder::udp(V4_B, 5000, V4_A, 53)
        .payload(&[7; 40])
        .build();
    let unknown = PacketBuilder::udp(V4_B, 5001, V4_A, 53).build();
    let unreachable = |quoted: &[u8]| PacketBuilder::icmp_error(V4_A, V4_B, 3, 3, quoted).build();

    // Before B sends anything, the error relates to nothing.
    assert_eq!(filter.inbound(&unreachable(&sent), now), DROP_NO_RULE);
    filter.outbound(&sent, now);
    assert_eq!(filter.inbound(&unreachable(&sent), now), Verdict::Accept);
    // A router on the path may send it too; a short quote is enough.
    let time_exceeded = PacketBuilder::icmp_error(V4_C, V4_B, 11, 0, &sent[..28]).build();
    assert_eq!(filter.inbound(&time_exceeded, now), Verdict::Accept);
    assert_eq!(filter.inbound(&unreachable(&unknown), now), DROP_NO_RULE);
    // Errors do not keep the flow alive.
    let limits = FilterLimits::default();
    assert_eq!(
        filter.inbound(&unreachable(&sent), now + limits.udp_idle),
        DROP_NO_RULE
    );

    // IPv6 packet too big about an outbound TCP flow.
    let syn = PacketBuilder::tcp(V6_B, 6000, V6_A, 443)
        .flags(TCP_SYN)
        .build();
    filter.outbound(&syn, now);
    let too_big = PacketBuilder::icmp_error(V6_A, V6_B, 2, 0, &syn).build();
    assert_eq!(filter.inbound(&too_big, now), Verdict::Accept);
}

#[test]
fn icmp_errors_about_revoked_flows_are_dropped() {
    let now = Instant::now();
    let mut filter = filter_with(
        vec![rule("dns", Action::Allow, Protocol::Udp, &[(53, 53)])],
        now,
    );
    let query = PacketBuilder::udp(V4_A, 7000, V4_B, 53).build();
    assert_eq!(filter.inbound(&query, now), Verdict::Accept);
    let answer = PacketBuilder::udp(V4_B, 53, V4_A, 7000).build();
    filter.outbound(&answer, now);
    let unreachable = PacketBuilder::icmp_error(V4_A, V4_B, 3, 3, &answer).build();
    assert_eq!(filter.inbound(&unreachable, now), Verdict::Accept);
    filter.apply(config(2, vec![]), now);
    assert_eq!(filter.inbound(&unreachable, now), DROP_NO_RULE);
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    let now = Instant::now();
    let mut filter = filter_with(
        vec![rule("dns", Action::Allow, Protocol::Udp, &[(53, 53)])],
        now,
    );
    let first = |id: u16, port: u16| {
        PacketBuilder::udp(V4_A, 7000, V4_B, port)
            .payload(&[0; 16])
            .ipv4_fragment(id, 0, true)
            .build()
    };
    let later = |id: u16| {
        PacketBuilder::raw(V4_A, V4_B, 17, &[1; 8])
            .ipv4_fragment(id, 3, false)
            .build()
    };
    // A later fragment whose first fragment never passed.
    assert_eq!(filter.inbound(&later(1), now), DROP_NO_RULE);
    assert_eq!(filter.inbound(&first(1, 53), now), Verdict::Accept);
    assert_eq!(filter.inbound(&later(1), now), Verdict::Accept);
    // A denied first fragment does not open the door for its later fragments.
    assert_eq!(filter.inbound(&first(2, 54), now), DROP_NO_RULE);
    assert_eq!(filter.inbound(&later(2), now), DROP_NO_RULE);
    // Later fragments stop passing after the reassembly timeout.
    let limits = FilterLimits::default();
    assert_eq!(
        filter.inbound(&later(1), now + limits.fragment_timeout),
        DROP_NO_RULE
    );

    // Outbound later fragments always pass, untracked.
    let out_later = PacketBuilder::raw(V4_B, V4_A, 17, &[1; 8])
        .ipv4_fragment(9, 3, false)
        .build();
    let flows = filter.flow_count();
    assert_eq!(filter.outbound(&out_later, now), Verdict::Accept);
    assert_eq!(filter.flow_count(), flows);
}

#[test]
fn fragmented_replies_to_outbound_flows_pass() {
    let now = Instant::now();
    let mut filter = Filter::new(FilterLimits::default());
    let query = PacketBuilder::udp(V6_B, 5353, V6_A, 53).build();
    assert_eq!(filter.outbound(&query, now), Verdict::Accept);
    let first = PacketBuilder::udp(V6_A, 53, V6_B, 5353)
        .payload(&[0; 32])
        .ipv6_fragment(42, 0, true)
        .build();
    let later = PacketBuilder::raw(V6_A, V6_B, 17, &[0; 16])
        .ipv6_fragment(42, 5, false)
        .build();
    assert_eq!(filter.inbound(&first, now), Verdict::Accept);
    assert_eq!(filter.inbound(&later, now), Verdict::Accept);
    // A policy change forgets pending datagrams.
    filter.apply(config(1, vec![]), now);
    assert_eq!(filter.inbound(&later, now), DROP_NO_RULE);
}

#[test]
fn fragment_tracking_is_bounded() {
    let now = Instant::now();
    let limits = FilterLimits {
        max_fragmented_datagrams: 2,
        ..FilterLimits::default()
    };
    let mut filter = Filter::new(limits);
    filter.apply(
        config(1, vec![rule("all", Action::Allow, Protocol::Any, &[])]),
        now,
    );
    let first = |id| {
        PacketBuilder::raw(V4_A, V4_B, 47, &[0; 8])
            .ipv4_fragment(id, 0, true)
            .build()
    };
    let later = |id| {
        PacketBuilder::raw(V4_A, V4_B, 47, &[0; 8])
            .ipv4_fragment(id, 1, false)
            .build()
    };
    for id in 1..=3 {
        assert_eq!(filter.inbound(&first(id), now), Verdict::Accept);
    }
    assert_eq!(filter.inbound(&later(1), now), Verdict::Accept);
    assert_eq!(filter.inbound(&later(2), now), Verdict::Accept);
    assert_eq!(filter.inbound(&later(3), now), DROP_NO_RULE);
    // Once the first two time out, there is room again.
    let later_now = now + limits.fragment_timeout;
    assert_eq!(filter.inbound(&first(3), later_now), Verdict::Accept);
    assert_eq!(filter.inbound(&later(3), later_now), Verdict::Accept);
}

/// Keys built from the parser's address numbers: for both families, with
/// IPv4 options and IPv6 extension headers, the numbers are the packet's
/// addresses, and a packet and its reply (the same tuple with the ends
/// swapped, travelling the other way) share a key; the family keeps an
/// IPv4 flow apart from IPv6 packets whose addresses are the same numbers.
#[test]
fn flow_keys_from_address_numbers() {
    use crate::conntrack::{Direction, FlowLookup};
    use crate::packet::{Tuple, parse_tuple};
    use std::net::{IpAddr, Ipv6Addr};

    let tuple_of = |packet: &[u8]| -> Tuple {
        let Ok(tuple) = parse_tuple(packet) else {
            panic!("test packet does not parse as a whole datagram");
        };
        tuple
    };
    let lookup = |tuple: &Tuple, direction| FlowLookup::of(tuple, direction).map(|f| f.key);
    let packets = [
        (
            PacketBuilder::tcp(V4_A, 40000, V4_B, 443)
                .flags(TCP_SYN)
                .ipv4_options(&[1, 1, 1, 0])
                .build(),
            V4_A,
            V4_B,
        ),
        (
            PacketBuilder::udp(V6_A, 5000, V6_B, 53)
                .ipv6_extension(0, &[0; 8])
                .build(),
            V6_A,
            V6_B,
        ),
        (PacketBuilder::udp(V4_B, 7, V4_C, 9).build(), V4_B, V4_C),
        (PacketBuilder::tcp(V6_B, 7, V6_A, 22).build(), V6_B, V6_A),
    ];
    for (packet, src, dst) in &packets {
        let tuple = tuple_of(packet);
        assert_eq!((tuple.info().src, tuple.info().dst), (*src, *dst));
        let reply = Tuple {
            src: tuple.dst,
            dst: tuple.src,
            src_port: tuple.dst_port,
            dst_port: tuple.src_port,
            ..tuple
        };
        assert!(lookup(&tuple, Direction::Inbound).is_some());
        assert_eq!(
            lookup(&tuple, Direction::Inbound),
            lookup(&reply, Direction::Outbound),
            "{tuple:?}"
        );
        assert_eq!(
            lookup(&tuple, Direction::Outbound),
            lookup(&reply, Direction::Inbound),
            "{tuple:?}"
        );
    }

    let v4 = PacketBuilder::udp(V4_A, 5000, V4_B, 53).build();
    let compatible = |ip: IpAddr| match ip {
        IpAddr::V4(a) => IpAddr::V6(Ipv6Addr::from(u128::from(u32::from(a)))),
        IpAddr::V6(a) => IpAddr::V6(a),
    };
    let v6 = PacketBuilder::udp(compatible(V4_A), 5000, compatible(V4_B), 53).build();
    assert_ne!(
        lookup(&tuple_of(&v4), Direction::Inbound),
        lookup(&tuple_of(&v6), Direction::Inbound)
    );
}
