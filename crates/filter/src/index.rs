//! An index over the compiled rules that finds the first matching rule of a
//! new flow without scanning them all, with exactly the semantics of a scan
//! in order (the filter's reference-model test checks this).
//!
//! Rules are filed by source address: a rule whose sources list a host
//! address (`/32`, `/128`, what the policy compiler emits for devices) goes
//! under that address; a rule with a wider source network goes into one
//! shared "wide" table. Under each key, rules are split by what the packet
//! is (TCP, UDP, ICMP echo request, anything else) and, for TCP and UDP, by
//! destination port into elementary port intervals. Each interval keeps the
//! candidate rules in order, and stops after the first one that would match
//! any destination the filter has (the usual case: every rule names this
//! device's own addresses), so a lookup typically checks one rule.
//!
//! A lookup merges the candidates of the packet's source with the wide ones
//! in rule order and returns the first that really matches
//! ([`FilterRule::matches`] is always the final check).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use foldhash::fast::RandomState;
use ipnet::IpNet;

use crate::packet::{PROTO_TCP, PROTO_UDP, PacketInfo};
use crate::rule::{FilterRule, Protocol};

/// The index; built by [`RuleIndex::build`] when a policy is applied.
#[derive(Debug, Clone, Default)]
pub(crate) struct RuleIndex {
    by_source: HashMap<IpAddr, Tables, RandomState>,
    wide: Tables,
}

/// Candidates by kind of packet.
#[derive(Debug, Clone, Default)]
struct Tables {
    tcp: PortTable,
    udp: PortTable,
    echo: Box<[u32]>,
    other: Box<[u32]>,
}

/// Elementary destination-port intervals: interval `i` covers
/// `starts[i] ..= starts[i + 1] - 1` (the last one up to 65535) and has the
/// candidates `lists[i]`.
#[derive(Debug, Clone, Default)]
struct PortTable {
    starts: Box<[u16]>,
    lists: Box<[Box<[u32]>]>,
}

impl PortTable {
    fn candidates(&self, port: u16) -> &[u32] {
        let i = self.starts.partition_point(|&start| start <= port);
        match i.checked_sub(1).and_then(|i| self.lists.get(i)) {
            Some(list) => list,
            None => &[],
        }
    }
}

impl RuleIndex {
    /// Indexes `rules` (in evaluation order).
    pub(crate) fn build(rules: &[&FilterRule]) -> RuleIndex {
        let all_destinations: HashSet<IpNet> = rules
            .iter()
            .flat_map(|r| r.destinations.iter().copied())
            .collect();
        let covers_all: Vec<bool> = rules
            .iter()
            .map(|r| all_destinations.iter().all(|d| r.destinations.contains(d)))
            .collect();
        let mut by_source: HashMap<IpAddr, Vec<u32>> = HashMap::new();
        let mut wide: Vec<u32> = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let Ok(i) = u32::try_from(i) else { break };
            let mut is_wide = false;
            for net in &rule.sources {
                if net.prefix_len() == net.max_prefix_len() {
                    let list = by_source.entry(net.addr()).or_default();
                    if list.last() != Some(&i) {
                        list.push(i);
                    }
                } else {
                    is_wide = true;
                }
            }
            if is_wide {
                wide.push(i);
            }
        }
        RuleIndex {
            by_source: by_source
                .into_iter()
                .map(|(source, list)| (source, Tables::build(rules, &list, &covers_all, true)))
                .collect(),
            // The source of a wide rule is not checked by the key, so no
            // candidate may end a list early.
            wide: Tables::build(rules, &wide, &covers_all, false),
        }
    }

    /// The first rule (by position) that matches `packet` as a new inbound flow.
    pub(crate) fn first_match<'r, T>(
        &self,
        rules: &'r [T],
        rule_of: impl Fn(&T) -> &FilterRule,
        packet: &PacketInfo,
    ) -> Option<&'r T> {
        let exact = self
            .by_source
            .get(&packet.src)
            .map_or(&[][..], |t| t.candidates(packet));
        let wide = self.wide.candidates(packet);
        let (mut a, mut b) = (exact.iter().peekable(), wide.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) if x <= y => {
                    a.next();
                    if x == y {
                        b.next();
                    }
                    x
                }
                (_, Some(&&y)) => {
                    b.next();
                    y
                }
                (Some(&&x), None) => {
                    a.next();
                    x
                }
                (None, None) => return None,
            };
            let candidate = rules.get(usize::try_from(next).ok()?)?;
            if rule_of(candidate).matches(packet) {
                return Some(candidate);
            }
        }
    }
}

impl Tables {
    /// Tables for the rules `list` (positions into `rules`, ascending).
    /// With `may_stop`, each list ends at its first rule that covers every
    /// destination of the filter.
    fn build(rules: &[&FilterRule], list: &[u32], covers_all: &[bool], may_stop: bool) -> Tables {
        let rule = |i: u32| rules.get(i as usize).copied();
        let stops = |i: u32| may_stop && covers_all.get(i as usize).copied().unwrap_or(false);
        let port_rules = |proto: Protocol| -> Vec<u32> {
            list.iter()
                .copied()
                .filter(|&i| {
                    rule(i).is_some_and(|r| r.protocol == proto || r.protocol == Protocol::Any)
                })
                .collect()
        };
        let without_ports = |keep: &dyn Fn(&FilterRule) -> bool| -> Box<[u32]> {
            let mut out = Vec::new();
            for &i in list {
                if rule(i).is_some_and(keep) {
                    out.push(i);
                    if stops(i) {
                        break;
                    }
                }
            }
            out.into_boxed_slice()
        };
        Tables {
            tcp: PortTable::build(rules, &port_rules(Protocol::Tcp), &stops),
            udp: PortTable::build(rules, &port_rules(Protocol::Udp), &stops),
            echo: without_ports(&|r| {
                r.protocol == Protocol::Icmp || (r.protocol == Protocol::Any && r.ports.is_empty())
            }),
            other: without_ports(&|r| r.protocol == Protocol::Any && r.ports.is_empty()),
        }
    }

    fn candidates(&self, packet: &PacketInfo) -> &[u32] {
        match packet.proto {
            PROTO_TCP => self.tcp.candidates(packet.dst_port),
            PROTO_UDP => self.udp.candidates(packet.dst_port),
            _ if packet.is_echo_request() => &self.echo,
            _ => &self.other,
        }
    }
}

impl PortTable {
    /// Intervals for `list` (TCP or UDP rules, in order). Rules are laid
    /// into the intervals their ports cover; an interval is closed after a
    /// stopping rule, and closed intervals are skipped in amortised
    /// constant time.
    fn build(rules: &[&FilterRule], list: &[u32], stops: &dyn Fn(u32) -> bool) -> PortTable {
        let mut starts: Vec<u16> = vec![0];
        for &i in list {
            for range in rules.get(i as usize).map_or(&[][..], |r| &r.ports[..]) {
                starts.push(range.start);
                if let Some(after) = range.end.checked_add(1) {
                    starts.push(after);
                }
            }
        }
        starts.sort_unstable();
        starts.dedup();
        let n = starts.len();
        let mut lists: Vec<Vec<u32>> = vec![Vec::new(); n];
        // next_open[k]: the first interval at or after k that is not closed
        // (n = none), path-compressed.
        let mut next_open: Vec<usize> = (0..=n).collect();
        for &i in list {
            let Some(r) = rules.get(i as usize) else {
                continue;
            };
            let spans: Vec<(usize, usize)> = if r.ports.is_empty() {
                vec![(0, n)]
            } else {
                r.ports
                    .iter()
                    .map(|p| {
                        let first = starts.partition_point(|&s| s < p.start);
                        let end = starts.partition_point(|&s| s <= p.end);
                        (first, end)
                    })
                    .collect()
            };
            let stop = stops(i);
            for (first, end) in spans {
                let mut k = find(&mut next_open, first);
                while k < end {
                    if let Some(list) = lists.get_mut(k) {
                        list.push(i);
                    }
                    if stop && let Some(slot) = next_open.get_mut(k) {
                        *slot = k + 1;
                    }
                    k = find(&mut next_open, k + 1);
                }
            }
        }
        PortTable {
            starts: starts.into_boxed_slice(),
            lists: lists.into_iter().map(Vec::into_boxed_slice).collect(),
        }
    }
}

/// The first open interval at or after `k`, compressing the path.
fn find(next_open: &mut [usize], k: usize) -> usize {
    let mut root = k;
    while let Some(&next) = next_open.get(root) {
        if next == root {
            break;
        }
        root = next;
    }
    let mut at = k;
    while let Some(&next) = next_open.get(at) {
        if next == at || next == root {
            break;
        }
        if let Some(slot) = next_open.get_mut(at) {
            *slot = root;
        }
        at = next;
    }
    root
}

#[cfg(test)]
mod tests;
