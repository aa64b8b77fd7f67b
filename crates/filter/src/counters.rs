//! Drop reasons and the filter's counters (exported as metrics by the agent).

use std::collections::HashMap;
use std::sync::Arc;

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The packet is not a parseable IP packet.
    Malformed,
    /// No policy has been applied yet (version 0), so no inbound flow is allowed.
    NoPolicy,
    /// Default deny: no rule matched the new inbound flow.
    NoRule,
    /// An explicit `Deny` rule matched the new inbound flow.
    Denied,
    /// The inner source address is not in the sending peer's allowed IPs.
    CryptokeyRouting,
    /// The packet came from, or was addressed to, no known peer.
    UnknownPeer,
    /// The connection tracking table is full of live flows.
    ConntrackFull,
    /// Outbound, longer than the path to the peer carries (a relayed
    /// peer) and not to be fragmented: answered with ICMP "packet too big".
    TooBig,
}

impl DropReason {
    /// Every reason, in declaration order.
    pub const ALL: [DropReason; 8] = [
        DropReason::Malformed,
        DropReason::NoPolicy,
        DropReason::NoRule,
        DropReason::Denied,
        DropReason::CryptokeyRouting,
        DropReason::UnknownPeer,
        DropReason::ConntrackFull,
        DropReason::TooBig,
    ];

    /// Stable snake_case name, used as a metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NoPolicy => "no_policy",
            DropReason::NoRule => "no_rule",
            DropReason::Denied => "denied",
            DropReason::CryptokeyRouting => "cryptokey_routing",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::ConntrackFull => "conntrack_full",
            DropReason::TooBig => "too_big",
        }
    }

    /// Position in [`DropReason::ALL`].
    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Packet counters of one [`crate::Filter`]; they only ever grow.
///
/// Rule hits are keyed by rule name and survive policy changes, so a rule
/// that disappears and comes back keeps its count. A hit is a new flow
/// decided by that rule; later packets of the flow do not count again.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    accepted_inbound: u64,
    accepted_outbound: u64,
    untracked_outbound: u64,
    revoked_flows: u64,
    monitored: u64,
    flow_events_lost: u64,
    accepted_inbound_bytes: u64,
    accepted_outbound_bytes: u64,
    dropped_bytes: [u64; DropReason::ALL.len()],
    drops: [u64; DropReason::ALL.len()],
    /// Hit counts in first-seen order; `rule_slots` maps names into it.
    /// Names are shared, so a snapshot copies no string.
    rule_hits: Vec<(Arc<str>, u64)>,
    rule_slots: HashMap<Arc<str>, usize>,
    /// Bumped whenever a rule counter changes or a new one appears.
    rule_hits_generation: u64,
}

impl Counters {
    /// Bytes of inbound packets accepted.
    pub fn accepted_inbound_bytes(&self) -> u64 {
        self.accepted_inbound_bytes
    }

    /// Bytes of outbound packets accepted.
    pub fn accepted_outbound_bytes(&self) -> u64 {
        self.accepted_outbound_bytes
    }

    /// Bytes of packets dropped for `reason`.
    pub fn dropped_bytes(&self, reason: DropReason) -> u64 {
        self.dropped_bytes.get(reason.index()).copied().unwrap_or(0)
    }

    pub(crate) fn count_bytes(&mut self, inbound: bool, verdict: crate::Verdict, bytes: usize) {
        let bytes = bytes as u64;
        match verdict {
            crate::Verdict::Accept if inbound => self.accepted_inbound_bytes += bytes,
            crate::Verdict::Accept => self.accepted_outbound_bytes += bytes,
            crate::Verdict::Drop(reason) => {
                if let Some(count) = self.dropped_bytes.get_mut(reason.index()) {
                    *count += bytes;
                }
            }
        }
    }

    /// Packets dropped for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops.get(reason.index()).copied().unwrap_or(0)
    }

    /// Drop counts for every reason (including zeros), in [`DropReason::ALL`] order.
    pub fn iter_drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.into_iter().map(|r| (r, self.drops(r)))
    }

    /// Inbound packets accepted.
    pub fn accepted_inbound(&self) -> u64 {
        self.accepted_inbound
    }

    /// Outbound packets accepted.
    pub fn accepted_outbound(&self) -> u64 {
        self.accepted_outbound
    }

    /// Outbound packets accepted without a conntrack entry because the table
    /// was full (their replies will be judged as new inbound flows).
    pub fn untracked_outbound(&self) -> u64 {
        self.untracked_outbound
    }

    /// Inbound flows revoked because a newly applied policy no longer allows them.
    pub fn revoked_flows(&self) -> u64 {
        self.revoked_flows
    }

    /// New inbound flows that a deny rule in monitor mode matched: they
    /// would have been dropped, and were accepted.
    pub fn monitored(&self) -> u64 {
        self.monitored
    }

    /// Flow events not kept for [`crate::Filter::take_flow_events`]
    /// because it was not called often enough (the packets are still
    /// counted everywhere else).
    pub fn flow_events_lost(&self) -> u64 {
        self.flow_events_lost
    }

    /// New flows decided by each rule name (allow and deny rules), in the
    /// order the names were first seen.
    pub fn rule_hits(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.rule_hits.iter().map(|(name, hits)| (&**name, *hits))
    }

    /// Changes whenever [`rule_hits`](Self::rule_hits) would give
    /// something new: a snapshot of them with the same generation is
    /// still current, and need not be taken again.
    pub fn rule_hits_generation(&self) -> u64 {
        self.rule_hits_generation
    }

    /// The same, with the names shared rather than borrowed: what a
    /// snapshot taken on the packet thread keeps without allocating a
    /// string per rule.
    pub fn rule_hits_shared(&self) -> impl Iterator<Item = (Arc<str>, u64)> + '_ {
        self.rule_hits
            .iter()
            .map(|(name, hits)| (Arc::clone(name), *hits))
    }

    pub(crate) fn count_drop(&mut self, reason: DropReason) {
        if let Some(count) = self.drops.get_mut(reason.index()) {
            *count += 1;
        }
    }

    pub(crate) fn count_accepted_inbound(&mut self) {
        self.accepted_inbound += 1;
    }

    pub(crate) fn count_accepted_outbound(&mut self) {
        self.accepted_outbound += 1;
    }

    pub(crate) fn count_untracked_outbound(&mut self) {
        self.untracked_outbound += 1;
    }

    pub(crate) fn count_revoked_flows(&mut self, flows: usize) {
        self.revoked_flows += u64::try_from(flows).unwrap_or(u64::MAX);
    }

    /// Slot of the counter for `name`, created at zero on first use. Called
    /// when a policy is applied, so the packet path never allocates.
    pub(crate) fn rule_slot(&mut self, name: &str) -> usize {
        if let Some(&slot) = self.rule_slots.get(name) {
            return slot;
        }
        let slot = self.rule_hits.len();
        let name: Arc<str> = Arc::from(name);
        self.rule_hits.push((Arc::clone(&name), 0));
        self.rule_hits_generation += 1;
        self.rule_slots.insert(name, slot);
        slot
    }

    pub(crate) fn count_monitored(&mut self) {
        self.monitored += 1;
    }

    pub(crate) fn count_flow_event_lost(&mut self) {
        self.flow_events_lost += 1;
    }

    /// The rule name of a counter slot (empty if unknown).
    pub(crate) fn rule_name(&self, slot: usize) -> &str {
        self.rule_hits.get(slot).map_or("", |(name, _)| &**name)
    }

    pub(crate) fn count_rule_hit(&mut self, slot: usize) {
        if let Some((_, hits)) = self.rule_hits.get_mut(slot) {
            *hits += 1;
            self.rule_hits_generation += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_hits_generation_moves_only_when_a_rule_count_does() {
        let mut c = Counters::default();
        let start = c.rule_hits_generation();
        let slot = c.rule_slot("web");
        let named = c.rule_hits_generation();
        assert_ne!(named, start, "a new counter");
        assert_eq!(c.rule_slot("web"), slot);
        assert_eq!(c.rule_hits_generation(), named, "a name seen before");
        // Packets of established flows move other counters only.
        c.count_accepted_inbound();
        c.count_accepted_outbound();
        c.count_bytes(true, crate::Verdict::Accept, 100);
        c.count_drop(DropReason::NoRule);
        assert_eq!(c.rule_hits_generation(), named);
        c.count_rule_hit(slot);
        assert_ne!(c.rule_hits_generation(), named, "a new flow counted");
        assert_eq!(c.rule_hits().collect::<Vec<_>>(), vec![("web", 1)]);
    }

    #[test]
    fn names_are_stable_and_distinct() {
        let names: Vec<&str> = DropReason::ALL.iter().map(DropReason::as_str).collect();
        assert_eq!(
            names,
            [
                "malformed",
                "no_policy",
                "no_rule",
                "denied",
                "cryptokey_routing",
                "unknown_peer",
                "conntrack_full",
                "too_big"
            ]
        );
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
    }

    #[test]
    fn rule_slots_are_shared_by_name() {
        let mut counters = Counters::default();
        let web = counters.rule_slot("web");
        let db = counters.rule_slot("db");
        assert_ne!(web, db);
        assert_eq!(counters.rule_slot("web"), web);
        counters.count_rule_hit(web);
        counters.count_rule_hit(web);
        let hits: Vec<_> = counters.rule_hits().collect();
        assert_eq!(hits, [("web", 2), ("db", 0)]);
    }
}
