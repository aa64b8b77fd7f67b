//! Property test: [`crate::Filter`] against a simple reference model.
//!
//! The model ([`crate::reference_model`]) is a list scan of the rules plus
//! a `Vec` of opened flows (no hashing, no timeouts: `now` never moves). Each generated case picks a
//! small palette of packets and plays random operations on it (a packet, or
//! its reply, in either direction, and policy changes), so replies and
//! repeated flows are frequent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use ipnet::IpNet;
use proptest::prelude::*;

use crate::reference_model::{Kind, Model, Pkt};
use crate::{
    Action, DropReason, Filter, FilterConfig, FilterLimits, FilterRule, PortRange, Protocol,
    Verdict,
};

const V4_POOL: [Ipv4Addr; 5] = [
    Ipv4Addr::new(10, 0, 0, 1),
    Ipv4Addr::new(10, 0, 0, 2),
    Ipv4Addr::new(10, 0, 0, 5),
    Ipv4Addr::new(10, 0, 0, 6),
    Ipv4Addr::new(10, 0, 0, 9),
];
const V6_POOL: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
];
const NETS: [&str; 8] = [
    "10.0.0.1/32",
    "10.0.0.2/32",
    "10.0.0.5/32",
    "10.0.0.4/30",
    "0.0.0.0/0",
    "fd00::1/128",
    "fd00::2/128",
    "::/0",
];
const PORTS: [u16; 5] = [22, 53, 80, 1000, 1001];
const RANGES: [(u16, u16); 4] = [(22, 22), (53, 80), (1000, 1001), (81, 999)];
const FLAGS: [u8; 5] = [0x02, 0x12, 0x10, 0x11, 0x04];

#[derive(Debug, Clone)]
enum Op {
    /// Palette packet `index`, reversed or not, inbound or outbound; or
    /// (`as_error`) an ICMP error about that packet, sent back to its source.
    Packet {
        index: usize,
        reversed: bool,
        inbound: bool,
        as_error: bool,
    },
    Apply(FilterConfig),
}

fn pkt_strategy() -> impl Strategy<Value = Pkt> {
    let kind = prop_oneof![
        (0..PORTS.len(), 0..PORTS.len(), 0..FLAGS.len()).prop_map(|(s, d, f)| Kind::Tcp {
            src_port: PORTS[s],
            dst_port: PORTS[d],
            flags: FLAGS[f],
        }),
        (0..PORTS.len(), 0..PORTS.len()).prop_map(|(s, d)| Kind::Udp {
            src_port: PORTS[s],
            dst_port: PORTS[d],
        }),
        (1u16..3).prop_map(Kind::EchoRequest),
        (1u16..3).prop_map(Kind::EchoReply),
        Just(Kind::IcmpError),
        Just(Kind::Gre),
    ];
    let addresses = prop_oneof![
        3 => (0..V4_POOL.len(), 0..V4_POOL.len())
            .prop_map(|(s, d)| (IpAddr::V4(V4_POOL[s]), IpAddr::V4(V4_POOL[d]))),
        1 => (0..V6_POOL.len(), 0..V6_POOL.len())
            .prop_map(|(s, d)| (IpAddr::V6(V6_POOL[s]), IpAddr::V6(V6_POOL[d]))),
    ];
    (addresses, kind, prop::bool::weighted(0.05)).prop_map(|((src, dst), kind, truncated)| Pkt {
        src,
        dst,
        kind,
        truncated,
    })
}

fn rule_strategy() -> impl Strategy<Value = FilterRule> {
    let nets = || prop::collection::vec(0..NETS.len(), 1..3);
    (
        0u8..4,
        prop::bool::weighted(0.7),
        nets(),
        nets(),
        prop_oneof![
            Just(Protocol::Tcp),
            Just(Protocol::Udp),
            Just(Protocol::Icmp),
            Just(Protocol::Any)
        ],
        prop::collection::vec(0..RANGES.len(), 0..3),
        prop::bool::weighted(0.25),
    )
        .prop_map(
            |(name, allow, srcs, dsts, protocol, ranges, monitor)| FilterRule {
                name: format!("rule-{name}"),
                action: if allow { Action::Allow } else { Action::Deny },
                sources: srcs
                    .iter()
                    .map(|&i| NETS[i].parse::<IpNet>().unwrap())
                    .collect(),
                destinations: dsts
                    .iter()
                    .map(|&i| NETS[i].parse::<IpNet>().unwrap())
                    .collect(),
                protocol,
                ports: ranges
                    .iter()
                    .map(|&i| PortRange {
                        start: RANGES[i].0,
                        end: RANGES[i].1,
                    })
                    .collect(),
                monitor,
            },
        )
}

fn op_strategy(palette: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..palette, any::<bool>(), any::<bool>(), prop::bool::weighted(0.15)).prop_map(
            |(index, reversed, inbound, as_error)| Op::Packet { index, reversed, inbound, as_error }
        ),
        1 => (0u64..4, prop::collection::vec(rule_strategy(), 0..5))
            .prop_map(|(version, rules)| Op::Apply(FilterConfig { version, rules })),
    ]
}

fn case_strategy() -> impl Strategy<Value = (Vec<Pkt>, Vec<Op>)> {
    prop::collection::vec(pkt_strategy(), 1..7).prop_flat_map(|palette| {
        let ops = prop::collection::vec(op_strategy(palette.len()), 1..60);
        (Just(palette), ops)
    })
}

/// Packets judged by both the filter and the model per run, at least (the
/// issue asks for 100,000 (policy, packet) cases on every CI run).
const MIN_PACKETS: u64 = 100_000;

#[test]
fn filter_agrees_with_reference_model() {
    let packets = std::cell::Cell::new(0u64);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(8192));
    let result = runner.run(&case_strategy(), |(palette, ops)| {
        let now = Instant::now();
        let mut filter = Filter::new(FilterLimits::default());
        let mut model = Model::default();
        let (mut accepted_in, mut accepted_out) = (0u64, 0u64);
        let mut drops = [0u64; DropReason::ALL.len()];
        for (step, op) in ops.iter().enumerate() {
            match op {
                Op::Apply(config) => {
                    filter.apply(config.clone(), now);
                    model.apply(config);
                }
                &Op::Packet {
                    index,
                    reversed,
                    inbound,
                    as_error,
                } => {
                    let mut p = palette[index];
                    if reversed {
                        p = p.reversed();
                    }
                    let (got, want) = match (inbound, as_error) {
                        (true, true) => {
                            let (error, bytes) = p.error_about();
                            (filter.inbound(&bytes, now), model.inbound_error(p, error))
                        }
                        (false, true) => {
                            let (error, bytes) = p.error_about();
                            (filter.outbound(&bytes, now), model.outbound(error))
                        }
                        (true, false) => (filter.inbound(&p.bytes(), now), model.inbound(p)),
                        (false, false) => (filter.outbound(&p.bytes(), now), model.outbound(p)),
                    };
                    packets.set(packets.get() + 1);
                    prop_assert_eq!(
                        got,
                        want,
                        "step {} inbound={} packet {:?}",
                        step,
                        inbound,
                        p
                    );
                    match want {
                        Verdict::Accept if inbound => accepted_in += 1,
                        Verdict::Accept => accepted_out += 1,
                        Verdict::Drop(reason) => drops[reason as usize] += 1,
                    }
                }
            }
            prop_assert_eq!(
                filter.flow_count(),
                model.flows.len(),
                "flow count after step {}",
                step
            );
        }
        let counters = filter.counters();
        prop_assert_eq!(counters.accepted_inbound(), accepted_in);
        prop_assert_eq!(counters.accepted_outbound(), accepted_out);
        for (reason, count) in counters.iter_drops() {
            prop_assert_eq!(count, drops[reason as usize], "drops for {}", reason);
        }
        Ok(())
    });
    if let Err(failure) = result {
        panic!("the filter disagrees with the reference model: {failure}");
    }
    println!("{} packets judged by both", packets.get());
    assert!(
        packets.get() >= MIN_PACKETS,
        "only {} packets were checked; raise the case count",
        packets.get()
    );
}
