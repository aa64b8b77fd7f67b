//! Behaviour tests of [`crate::Filter`]: policy, conntrack, expiry, limits.

use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::packet::{TCP_ACK, TCP_SYN};
use crate::test_packets::{PacketBuilder, V4_A, V4_B, V4_C, V6_A, V6_B};
use crate::{
    Action, DropReason, Filter, FilterConfig, FilterLimits, FilterRule, FlowVerdict, PortRange,
    Protocol, Verdict,
};

// B is this device; A and C are peers. Inbound rules are evaluated at B.

pub(crate) fn rule(
    name: &str,
    action: Action,
    protocol: Protocol,
    ports: &[(u16, u16)],
) -> FilterRule {
    FilterRule {
        name: name.to_owned(),
        action,
        sources: vec![net("100.64.0.1/32"), net("fd7a::1/128")],
        destinations: vec![net("100.64.0.2/32"), net("fd7a::2/128")],
        protocol,
        ports: ports
            .iter()
            .map(|&(start, end)| PortRange { start, end })
            .collect(),
        monitor: false,
    }
}

pub(crate) fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

pub(crate) fn config(version: u64, rules: Vec<FilterRule>) -> FilterConfig {
    FilterConfig { version, rules }
}

pub(crate) fn filter_with(rules: Vec<FilterRule>, now: Instant) -> Filter {
    let mut filter = Filter::new(FilterLimits::default());
    filter.apply(config(1, rules), now);
    filter
}

pub(crate) const DROP_NO_RULE: Verdict = Verdict::Drop(DropReason::NoRule);

#[test]
fn no_policy_drops_inbound_but_passes_outbound() {
    let now = Instant::now();
    let mut filter = Filter::new(FilterLimits::default());
    assert!(!filter.has_policy());
    assert_eq!(filter.version(), 0);
    let syn = PacketBuilder::tcp(V4_A, 4000, V4_B, 22)
        .flags(TCP_SYN)
        .build();
    assert_eq!(
        filter.inbound(&syn, now),
        Verdict::Drop(DropReason::NoPolicy)
    );
    // Outbound works without a policy, and its replies come back.
    let out = PacketBuilder::tcp(V4_B, 5000, V4_A, 443).build();
    assert_eq!(filter.outbound(&out, now), Verdict::Accept);
    let reply = PacketBuilder::tcp(V4_A, 443, V4_B, 5000).build();
    assert_eq!(filter.inbound(&reply, now), Verdict::Accept);
    assert_eq!(filter.counters().drops(DropReason::NoPolicy), 1);
}

#[test]
fn empty_policy_is_default_deny() {
    let now = Instant::now();
    let mut filter = filter_with(vec![], now);
    assert!(filter.has_policy());
    let syn = PacketBuilder::tcp(V4_A, 4000, V4_B, 22).build();
    assert_eq!(filter.inbound(&syn, now), DROP_NO_RULE);
    assert_eq!(filter.flow_count(), 0);
}

#[test]
fn malformed_packets_are_dropped_both_ways() {
    let now = Instant::now();
    let mut filter = filter_with(vec![rule("all", Action::Allow, Protocol::Any, &[])], now);
    let drop = Verdict::Drop(DropReason::Malformed);
    assert_eq!(filter.inbound(&[0x45, 0, 0], now), drop);
    assert_eq!(filter.outbound(&[], now), drop);
    assert_eq!(filter.counters().drops(DropReason::Malformed), 2);
}

#[test]
fn allowed_flow_and_its_return_traffic_pass() {
    let now = Instant::now();
    let mut filter = filter_with(
        vec![rule("ssh", Action::Allow, Protocol::Tcp, &[(22, 22)])],
        now,
    );
    let syn = PacketBuilder::tcp(V4_A, 4000, V4_B, 22)
        .flags(TCP_SYN)
        .build();
    assert_eq!(filter.inbound(&syn, now), Verdict::Accept);
    assert_eq!(filter.flow_count(), 1);
    let synack = PacketBuilder::tcp(V4_B, 22, V4_A, 4000)
        .flags(TCP_SYN | TCP_ACK)
        .build();
    assert_eq!(filter.outbound(&synack, now), Verdict::Accept);
    let ack = PacketBuilder::tcp(V4_A, 4000, V4_B, 22).build();
    assert_eq!(filter.inbound(&ack, now), Verdict::Accept);
    assert_eq!(filter.flow_count(), 1);
    // Only the opening packet counts as a rule hit.
    assert_eq!(
        filter.counters().rule_hits().collect::<Vec<_>>(),
        [("ssh", 1)]
    );
    assert_eq!(filter.counters().accepted_inbound(), 2);
    assert_eq!(filter.counters().accepted_outbound(), 1);
}

#[test]
fn unsolicited_reverse_direction_is_dropped() {
    let now = Instant::now();
    // A may reach B on tcp/80; that gives B no right to open flows to A.
    let mut filter = filter_with(
        vec![rule("web", Action::Allow, Protocol::Tcp, &[(80, 80)])],
        now,
    );
    assert_eq!(
        filter.inbound(&PacketBuilder::tcp(V4_A, 4000, V4_B, 80).build(), now),
        Verdict::Accept
    );
    // A packet "from B's side" arriving at B: B:80 -> A is not the reply shape
    // when it arrives inbound (src A, dst B, src port 80).
    let reversed = PacketBuilder::tcp(V4_A, 80, V4_B, 4000).build();
    assert_eq!(filter.inbound(&reversed, now), DROP_NO_RULE);
    // Same tuple but from another peer is a different flow.
    let other_peer = PacketBuilder::tcp(V4_C, 4000, V4_B, 80).build();
    assert_eq!(filter.inbound(&other_peer, now), DROP_NO_RULE);
}

#[test]
fn first_match_wins_deny_before_allow() {
    let now = Instant::now();
    let mut filter = filter_with(
        vec![
            rule("no-telnet", Action::Deny, Protocol::Tcp, &[(23, 23)]),
            rule("all-tcp", Action::Allow, Protocol::Tcp, &[]),
        ],
        now,
    );
    let telnet = PacketBuilder::tcp(V4_A, 4000, V4_B, 23).build();
    assert_eq!(
        filter.inbound(&telnet, now),
        Verdict::Drop(DropReason::Denied)
    );
    let ssh = PacketBuilder::tcp(V4_A, 4000, V4_B, 22).build();
    assert_eq!(filter.inbound(&ssh, now), Verdict::Accept);
    let hits: Vec<_> = filter.counters().rule_hits().collect();
    assert_eq!(hits, [("no-telnet", 1), ("all-tcp", 1)]);
    assert_eq!(filter.counters().drops(DropReason::Denied), 1);
}

#[test]
fn port_ranges_and_protocols() {
    let now = Instant::now();
    let mut filter = filter_with(
        vec![
            rule(
                "tcp-range",
                Action::Allow,
                Protocol::Tcp,
                &[(8000, 8009), (443, 443)],
            ),
            rule("any-dns", Action::Allow, Protocol::Any, &[(53, 53)]),
        ],
        now,
    );
    let mut inbound = |p: PacketBuilder| filter.inbound(&p.build(), now);
    assert_eq!(
        inbound(PacketBuilder::tcp(V4_A, 1, V4_B, 8000)),
        Verdict::Accept
    );
    assert_eq!(
        inbound(PacketBuilder::tcp(V4_A, 1, V4_B, 8009)),
        Verdict::Accept
    );
    assert_eq!(
        inbound(PacketBuilder::tcp(V4_A, 1, V4_B, 443)),
        Verdict::Accept
    );
    assert_eq!(
        inbound(PacketBuilder::tcp(V4_A, 1, V4_B, 8010)),
        DROP_NO_RULE
    );
    assert_eq!(
        inbound(PacketBuilder::tcp(V4_A, 1, V4_B, 7999)),
        DROP_NO_RULE
    );
    // UDP only through the Any rule's port.
    assert_eq!(
        inbound(PacketBuilder::udp(V4_A, 1, V4_B, 8000)),
        DROP_NO_RULE
    );
    assert_eq!(
        inbound(PacketBuilder::udp(V4_A, 1, V4_B, 53)),
        Verdict::Accept
    );
    assert_eq!(
        inbound(PacketBuilder::tcp(V6_A, 1, V6_B, 53)),
        Verdict::Accept
    );
    // Any with ports does not match ICMP or other protocols.
    assert_eq!(
        inbound(PacketBuilder::echo_request(V4_A, V4_B, 1)),
        DROP_NO_RULE
    );
    assert_eq!(
        inbound(PacketBuilder::raw(V4_A, V4_B, 47, &[0; 4])),
        DROP_NO_RULE
    );
    // Wrong source or destination.
    assert_eq!(
        inbound(PacketBuilder::tcp(V4_C, 1, V4_B, 443)),
        DROP_NO_RULE
    );
    assert_eq!(
        inbound(PacketBuilder::tcp(V4_A, 1, V4_C, 443)),
        DROP_NO_RULE
    );
}

#[test]
fn icmp_echo_request_allowed_and_reply_passes_back() {
    let now = Instant::now();
    let mut filter = filter_with(vec![rule("ping", Action::Allow, Protocol::Icmp, &[])], now);
    for (a, b) in [(V4_A, V4_B), (V6_A, V6_B)] {
        let request = PacketBuilder::echo_request(a, b, 77).build();
        assert_eq!(filter.inbound(&request, now), Verdict::Accept);
        let reply = PacketBuilder::echo_reply(b, a, 77).build();
        assert_eq!(filter.outbound(&reply, now), Verdict::Accept);
        // An inbound reply is not allowed by an Icmp rule and B sent no request.
        let stray = PacketBuilder::echo_reply(a, b, 77).build();
        assert_eq!(filter.inbound(&stray, now), DROP_NO_RULE);
    }
    // Errors are not echo requests.
    let unreachable = PacketBuilder::icmp(V4_A, V4_B, 3, 3).build();
    assert_eq!(filter.inbound(&unreachable, now), DROP_NO_RULE);
}

#[test]
fn local_ping_reply_passes_without_rules() {
    let now = Instant::now();
    let mut filter = filter_with(vec![], now);
    let request = PacketBuilder::echo_request(V4_B, V4_A, 9).build();
    assert_eq!(filter.outbound(&request, now), Verdict::Accept);
    let reply = PacketBuilder::echo_reply(V4_A, V4_B, 9).build();
    assert_eq!(filter.inbound(&reply, now), Verdict::Accept);
    // A different identifier, or a request from A reusing the identifier, is new.
    let other_id = PacketBuilder::echo_reply(V4_A, V4_B, 10).build();
    assert_eq!(filter.inbound(&other_id, now), DROP_NO_RULE);
    let their_request = PacketBuilder::echo_request(V4_A, V4_B, 9).build();
    assert_eq!(filter.inbound(&their_request, now), DROP_NO_RULE);
}

#[test]
fn stricter_policy_cuts_established_inbound_flow() {
    let now = Instant::now();
    let mut filter = filter_with(
        vec![rule("ssh", Action::Allow, Protocol::Tcp, &[(22, 22)])],
        now,
    );
    let syn = PacketBuilder::tcp(V4_A, 4000, V4_B, 22)
        .flags(TCP_SYN)
        .build();
    assert_eq!(filter.inbound(&syn, now), Verdict::Accept);
    let synack = PacketBuilder::tcp(V4_B, 22, V4_A, 4000)
        .flags(TCP_SYN | TCP_ACK)
        .build();
    filter.outbound(&synack, now);
    // B's own outbound flow must survive the policy change.
    let own = PacketBuilder::udp(V4_B, 6000, V4_A, 53).build();
    filter.outbound(&own, now);
    assert_eq!(filter.flow_count(), 2);

    let later = now + Duration::from_secs(5);
    filter.apply(
        config(
            2,
            vec![rule("web", Action::Allow, Protocol::Tcp, &[(80, 80)])],
        ),
        later,
    );
    assert_eq!(filter.version(), 2);
    assert_eq!(filter.counters().revoked_flows(), 1);
    let ack = PacketBuilder::tcp(V4_A, 4000, V4_B, 22).build();
    assert_eq!(filter.inbound(&ack, later), DROP_NO_RULE);
    // B's server still talking does not re-open the revoked flow.
    let data = PacketBuilder::tcp(V4_B, 22, V4_A, 4000).build();
    assert_eq!(filter.outbound(&data, later), Verdict::Accept);
    assert_eq!(filter.inbound(&ack, later), DROP_NO_RULE);
    let own_reply = PacketBuilder::udp(V4_A, 53, V4_B, 6000).build();
    assert_eq!(filter.inbound(&own_reply, later), Verdict::Accept);
    // The tombstone idles out like any flow.
    filter.expire(later + FilterLimits::default().tcp_idle);
    assert_eq!(filter.flow_count(), 0);
    // Counters survive the version change by name.
    let hits: Vec<_> = filter.counters().rule_hits().collect();
    assert_eq!(hits, [("ssh", 1), ("web", 0)]);
}

#[test]
fn unchanged_policy_keeps_flows_and_version_zero_revokes() {
    let now = Instant::now();
    let rules = vec![rule("ssh", Action::Allow, Protocol::Tcp, &[(22, 22)])];
    let mut filter = filter_with(rules.clone(), now);
    let syn = PacketBuilder::tcp(V4_A, 4000, V4_B, 22).build();
    assert_eq!(filter.inbound(&syn, now), Verdict::Accept);
    filter.apply(config(2, rules), now);
    assert_eq!(filter.flow_count(), 1);
    filter.apply(config(0, vec![]), now);
    assert!(!filter.has_policy());
    assert_eq!(filter.counters().revoked_flows(), 1);
    assert_eq!(
        filter.inbound(&syn, now),
        Verdict::Drop(DropReason::NoPolicy)
    );
    // A later policy allowing it again lets a new flow replace the tombstone.
    filter.apply(
        config(3, vec![rule("ssh", Action::Allow, Protocol::Tcp, &[])]),
        now,
    );
    assert_eq!(filter.inbound(&syn, now), Verdict::Accept);
    assert_eq!(filter.inbound(&syn, now), Verdict::Accept);
    assert_eq!(filter.flow_count(), 1);
    assert_eq!(filter.counters().revoked_flows(), 1);
}

#[test]
fn record_drop_counts_external_reasons() {
    let mut filter = Filter::new(FilterLimits::default());
    filter.record_drop(DropReason::CryptokeyRouting);
    filter.record_drop(DropReason::UnknownPeer);
    filter.record_drop(DropReason::UnknownPeer);
    let drops: Vec<_> = filter
        .counters()
        .iter_drops()
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(
        drops,
        [
            (DropReason::CryptokeyRouting, 1),
            (DropReason::UnknownPeer, 2)
        ]
    );
}

#[test]
fn monitored_deny_passes_counts_and_reports_the_flow() {
    let now = Instant::now();
    let mut monitored = rule("no-ssh", Action::Deny, Protocol::Tcp, &[(22, 22)]);
    monitored.monitor = true;
    let enforced = rule("no-db", Action::Deny, Protocol::Tcp, &[(5432, 5432)]);
    let mut filter = filter_with(vec![monitored, enforced], now);
    let ssh = PacketBuilder::tcp(V4_A, 4000, V4_B, 22)
        .flags(TCP_SYN)
        .build();
    assert_eq!(filter.inbound(&ssh, now), Verdict::Accept);
    // Tracked like an allowed flow: later packets and replies pass.
    let more = PacketBuilder::tcp(V4_A, 4000, V4_B, 22)
        .flags(TCP_ACK)
        .build();
    assert_eq!(filter.inbound(&more, now), Verdict::Accept);
    let reply = PacketBuilder::tcp(V4_B, 22, V4_A, 4000).build();
    assert_eq!(filter.outbound(&reply, now), Verdict::Accept);
    let db = PacketBuilder::tcp(V4_A, 4001, V4_B, 5432)
        .flags(TCP_SYN)
        .build();
    assert_eq!(filter.inbound(&db, now), Verdict::Drop(DropReason::Denied));

    let counters = filter.counters();
    assert_eq!(counters.monitored(), 1);
    assert_eq!(counters.drops(DropReason::Denied), 1);
    let hits: Vec<_> = counters.rule_hits().collect();
    assert_eq!(hits, [("no-ssh", 1), ("no-db", 1)]);
    // One event per new flow: the monitored ssh flow and the denied one;
    // later packets of the ssh flow rode on conntrack.
    let events = filter.take_flow_events();
    let summary: Vec<_> = events
        .iter()
        .map(|e| (e.rule.as_deref(), e.verdict, e.packet.dst_port))
        .collect();
    assert_eq!(
        summary,
        [
            (Some("no-ssh"), FlowVerdict::Monitored, 22),
            (
                Some("no-db"),
                FlowVerdict::Dropped(DropReason::Denied),
                5432
            ),
        ]
    );
    assert_eq!(events[0].packet.src, V4_A);
    assert_eq!(events[0].bytes, u32::try_from(ssh.len()).unwrap());
    assert!(filter.take_flow_events().is_empty());
}

#[test]
fn monitored_flows_survive_a_policy_change_that_monitors_them_and_not_one_that_enforces() {
    let now = Instant::now();
    let allow = rule("ssh", Action::Allow, Protocol::Tcp, &[(22, 22)]);
    let mut filter = filter_with(vec![allow], now);
    let ssh = PacketBuilder::tcp(V4_A, 4000, V4_B, 22)
        .flags(TCP_SYN)
        .build();
    assert_eq!(filter.inbound(&ssh, now), Verdict::Accept);
    let mut monitored = rule("no-ssh", Action::Deny, Protocol::Tcp, &[(22, 22)]);
    monitored.monitor = true;
    filter.apply(config(2, vec![monitored.clone()]), now);
    assert_eq!(filter.counters().revoked_flows(), 0);
    monitored.monitor = false;
    filter.apply(config(3, vec![monitored]), now);
    assert_eq!(filter.counters().revoked_flows(), 1);
    let more = PacketBuilder::tcp(V4_A, 4000, V4_B, 22)
        .flags(TCP_ACK)
        .build();
    assert_eq!(
        filter.inbound(&more, now),
        Verdict::Drop(DropReason::Denied)
    );
}

#[test]
fn flow_events_cover_every_new_flow_decision_and_are_bounded() {
    let now = Instant::now();
    let mut filter = Filter::new(FilterLimits::default());
    let dns = |sport| PacketBuilder::udp(V4_A, sport, V4_B, 53).build();
    assert_eq!(
        filter.inbound(&dns(1), now),
        Verdict::Drop(DropReason::NoPolicy)
    );
    filter.apply(
        config(
            1,
            vec![rule("dns", Action::Allow, Protocol::Udp, &[(53, 53)])],
        ),
        now,
    );
    assert_eq!(filter.inbound(&dns(2), now), Verdict::Accept);
    assert_eq!(filter.inbound(&dns(2), now), Verdict::Accept);
    let ntp = PacketBuilder::udp(V4_A, 3, V4_B, 123).build();
    assert_eq!(filter.inbound(&ntp, now), DROP_NO_RULE);
    let summary: Vec<_> = filter
        .take_flow_events()
        .iter()
        .map(|e| (e.rule.clone(), e.verdict.as_str(), e.packet.dst_port))
        .collect();
    assert_eq!(
        summary,
        [
            (None, "no_policy", 53),
            (Some("dns".to_owned()), "allowed", 53),
            (None, "no_rule", 123),
        ]
    );
    for sport in 0..1100u16 {
        let packet = PacketBuilder::udp(V4_A, 2000 + sport, V4_B, 123).build();
        assert_eq!(filter.inbound(&packet, now), DROP_NO_RULE);
    }
    assert_eq!(filter.counters().flow_events_lost(), 76);
    assert_eq!(filter.take_flow_events().len(), 1024);
}
