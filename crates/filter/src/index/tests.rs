use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::rule::{Action, PortRange};

const SOURCES: [&str; 5] = [
    "100.64.0.1/32",
    "100.64.0.3/32",
    "100.64.0.0/24",
    "0.0.0.0/0",
    "fd7a::1/128",
];
const DESTINATIONS: [&str; 3] = ["100.64.0.2/32", "fd7a::2/128", "100.64.0.9/32"];
const PACKET_SOURCES: [&str; 4] = ["100.64.0.1", "100.64.0.3", "100.64.0.7", "fd7a::1"];
const PACKET_DESTINATIONS: [&str; 3] = ["100.64.0.2", "fd7a::2", "100.64.0.9"];

fn rule_strategy() -> impl Strategy<Value = FilterRule> {
    (
        prop::collection::vec(0..SOURCES.len(), 1..3),
        prop::collection::vec(0..DESTINATIONS.len(), 1..3),
        0..4u8,
        prop::collection::vec((0u16..40, 0u16..10), 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(sources, destinations, protocol, ports, allow)| FilterRule {
                name: "r".into(),
                action: if allow { Action::Allow } else { Action::Deny },
                sources: sources
                    .iter()
                    .map(|&i| SOURCES[i].parse().unwrap())
                    .collect(),
                destinations: destinations
                    .iter()
                    .map(|&i| DESTINATIONS[i].parse().unwrap())
                    .collect(),
                protocol: [Protocol::Tcp, Protocol::Udp, Protocol::Icmp, Protocol::Any]
                    [protocol as usize],
                ports: ports
                    .iter()
                    .map(|&(start, len)| PortRange {
                        start: 20 + start,
                        end: 20 + start + len,
                    })
                    .collect(),
                monitor: false,
            },
        )
}

fn packet_strategy() -> impl Strategy<Value = PacketInfo> {
    (
        0..PACKET_SOURCES.len(),
        0..PACKET_DESTINATIONS.len(),
        prop_oneof![Just(6u8), Just(17u8), Just(1u8), Just(47u8)],
        0u16..80,
        prop::option::of(prop_oneof![Just(8u8), Just(0u8), Just(3u8)]),
    )
        .prop_map(|(src, dst, proto, port, icmp_type)| {
            let src: IpAddr = PACKET_SOURCES[src].parse().unwrap();
            let dst: IpAddr = PACKET_DESTINATIONS[dst].parse().unwrap();
            let proto = match (proto, src.is_ipv6()) {
                (1, true) => 58,
                (p, _) => p,
            };
            let icmp_type = match (proto, icmp_type) {
                (58, Some(8)) => Some(128),
                (1 | 58, t) => t,
                _ => None,
            };
            PacketInfo {
                src,
                dst,
                proto,
                src_port: 1000,
                dst_port: port,
                tcp_flags: 0,
                icmp_type,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn index_finds_the_same_rule_as_a_scan(
        rules in prop::collection::vec(rule_strategy(), 0..25),
        packets in prop::collection::vec(packet_strategy(), 1..40),
    ) {
        let refs: Vec<&FilterRule> = rules.iter().collect();
        let index = RuleIndex::build(&refs);
        for packet in &packets {
            let scanned = rules.iter().position(|r| r.matches(packet));
            let found = index
                .first_match(&rules, |r| r, packet)
                .map(|r| std::ptr::from_ref(r) as usize - rules.as_ptr() as usize)
                .map(|offset| offset / std::mem::size_of::<FilterRule>());
            prop_assert_eq!(found, scanned, "packet {:?}", packet);
        }
    }
}

#[test]
fn a_covering_rule_ends_an_interval_list() {
    let net = |s: &str| s.parse::<IpNet>().unwrap();
    let rule = |ports: Vec<PortRange>| FilterRule {
        name: "r".into(),
        action: Action::Allow,
        sources: vec![net("100.64.0.1/32")],
        destinations: vec![net("100.64.0.2/32")],
        protocol: Protocol::Tcp,
        ports,
        monitor: false,
    };
    let rules: Vec<FilterRule> = (0..1000u16)
        .map(|i| rule(vec![PortRange { start: i, end: i }]))
        .chain(std::iter::once(rule(Vec::new())))
        .collect();
    let refs: Vec<&FilterRule> = rules.iter().collect();
    let index = RuleIndex::build(&refs);
    let tables = index.by_source.values().next().unwrap();
    // Port 500: exactly its own rule; port 5000: only the catch-all.
    assert_eq!(tables.tcp.candidates(500), &[500]);
    assert_eq!(tables.tcp.candidates(5000), &[1000]);
    assert!(tables.tcp.lists.iter().all(|list| list.len() == 1));
}
