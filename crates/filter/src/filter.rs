//! The stateful filter: rules for new inbound flows plus connection tracking.

use std::time::Instant;

use crate::conntrack::{Conntrack, Direction, FilterLimits, FlowLookup, Seen};
use crate::counters::{Counters, DropReason};
use crate::flow_events::{FlowEvent, FlowEvents, FlowVerdict};
use crate::fragments::FragmentTracker;
use crate::icmp_error::quoted_packet;
use crate::index::RuleIndex;
use crate::packet::{Datagram, PacketInfo, Tuple, parse_datagram};
use crate::rule::{Action, FilterConfig, FilterRule};

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the packet.
    Accept,
    /// Discard the packet, for this reason.
    Drop(DropReason),
}

/// Stateful, default-deny packet filter for one device.
///
/// Outbound packets (from the local TUN) are always accepted and tracked, so
/// their replies pass inbound. A new inbound flow passes only if the first
/// matching rule of the current policy allows it; it is then tracked too.
/// Sans-IO: the caller supplies `now` to every call that needs time.
#[derive(Debug, Clone)]
pub struct Filter {
    version: u64,
    rules: Vec<CompiledRule>,
    /// Finds the first matching rule without scanning them all.
    index: RuleIndex,
    conntrack: Conntrack,
    fragments: FragmentTracker,
    counters: Counters,
    /// Decisions on new inbound flows not yet taken by
    /// [`Filter::take_flow_events`].
    events: FlowEvents,
}

/// A rule plus the slot of its hit counter.
#[derive(Debug, Clone)]
struct CompiledRule {
    rule: FilterRule,
    counter_slot: usize,
}

impl Filter {
    /// A filter with no policy (version 0): every new inbound flow is dropped
    /// with [`DropReason::NoPolicy`] until [`Filter::apply`] is called.
    pub fn new(limits: FilterLimits) -> Self {
        Filter {
            version: 0,
            rules: Vec::new(),
            index: RuleIndex::default(),
            conntrack: Conntrack::new(limits),
            fragments: FragmentTracker::new(
                limits.max_fragmented_datagrams,
                limits.fragment_timeout,
            ),
            counters: Counters::default(),
            events: FlowEvents::default(),
        }
    }

    /// Takes the decisions on new inbound flows since the last call, oldest
    /// first: accepted, monitored and dropped (at most 1024 are kept between
    /// calls; the rest are counted in [`Counters::flow_events_lost`]).
    pub fn take_flow_events(&mut self) -> Vec<FlowEvent> {
        self.events.take(&self.counters)
    }

    /// Atomically replaces the rules with `config`, then re-checks tracked
    /// flows that were opened inbound and revokes those the new rules no
    /// longer allow, so a policy change cuts the flows it denies: their next
    /// inbound packet is judged as a new flow. A revoked flow stays in the
    /// table as a tombstone until it idles out, so that local replies on it
    /// cannot re-open it as an outbound flow. Flows this device opened
    /// outbound are kept. Applying version 0 returns to "no policy".
    ///
    /// Version ordering is the caller's business; any version is applied.
    pub fn apply(&mut self, config: FilterConfig, now: Instant) {
        let counters = &mut self.counters;
        self.rules = config
            .rules
            .into_iter()
            .map(|rule| CompiledRule {
                counter_slot: counters.rule_slot(&rule.name),
                rule,
            })
            .collect();
        let refs: Vec<&FilterRule> = self.rules.iter().map(|c| &c.rule).collect();
        self.index = RuleIndex::build(&refs);
        self.version = config.version;
        // Drop what is already dead first so the re-check only judges live flows.
        self.conntrack.expire(now);
        let has_policy = self.has_policy();
        let (rules, index) = (&self.rules, &self.index);
        let revoked = self.conntrack.revoke_inbound(|opening| {
            has_policy
                && index
                    .first_match(rules, |c| &c.rule, opening)
                    .is_some_and(|rule| rule.rule.passes())
        });
        self.counters.count_revoked_flows(revoked);
        self.fragments.clear();
    }

    /// Version of the applied policy; 0 before the first [`Filter::apply`].
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether a policy (version > 0) is in force.
    pub fn has_policy(&self) -> bool {
        self.version > 0
    }

    /// Judges a packet read from the local TUN, about to be encrypted to a
    /// peer. Well-formed IP packets are accepted and create or refresh a
    /// conntrack entry (direction: outbound) so that reply traffic passes
    /// inbound. Malformed packets are dropped with [`DropReason::Malformed`].
    ///
    /// ICMP messages other than echo and non-first fragments are accepted
    /// without tracking, and echo replies only refresh an existing flow. When
    /// the table is full of live flows the packet is still accepted,
    /// untracked (see [`Counters::untracked_outbound`]).
    pub fn outbound(&mut self, packet: &[u8], now: Instant) -> Verdict {
        let verdict = self.judge_outbound(packet, now);
        self.counters.count_bytes(false, verdict, packet.len());
        verdict
    }

    fn judge_outbound(&mut self, packet: &[u8], now: Instant) -> Verdict {
        let tuple = match parse_datagram(packet) {
            Err(_) => return self.drop(DropReason::Malformed),
            Ok(Datagram::Whole { tuple, .. }) => Some(tuple),
            Ok(Datagram::LaterFragment { .. }) => None,
        };
        if let Some(tuple) = tuple
            && let Some(flow) = FlowLookup::of(&tuple, Direction::Outbound)
        {
            let tracked =
                self.conntrack
                    .refresh(&flow.key, Seen::of(&tuple), Direction::Outbound, now);
            if !tracked
                && flow.opens
                && self
                    .conntrack
                    .insert(flow.key, &tuple.info(), Direction::Outbound, now)
                    .is_err()
            {
                self.counters.count_untracked_outbound();
            }
        }
        self.counters.count_accepted_outbound();
        Verdict::Accept
    }

    /// Judges a packet decrypted from a peer (after the caller's cryptokey
    /// routing check), about to be written to the TUN.
    ///
    /// Replies to flows this device opened, further packets of flows
    /// already accepted inbound, and ICMP errors quoting a packet of a live
    /// flow pass. Anything else is a new flow judged by the rules: first
    /// match wins, no match is [`DropReason::NoRule`]. A non-first fragment
    /// passes only if its datagram's first fragment passed (else `NoRule`).
    pub fn inbound(&mut self, packet: &[u8], now: Instant) -> Verdict {
        let verdict = self.judge_datagram_inbound(packet, now);
        self.counters.count_bytes(true, verdict, packet.len());
        verdict
    }

    fn judge_datagram_inbound(&mut self, packet: &[u8], now: Instant) -> Verdict {
        let (tuple, first_fragment) = match parse_datagram(packet) {
            Err(_) => return self.drop(DropReason::Malformed),
            Ok(Datagram::Whole {
                tuple,
                first_fragment,
            }) => (tuple, first_fragment),
            Ok(Datagram::LaterFragment { fragment, .. }) => {
                return if self.fragments.passes(&fragment, now) {
                    self.accept_inbound()
                } else {
                    self.drop(DropReason::NoRule)
                };
            }
        };
        let verdict = self.judge_inbound(packet, tuple, now);
        if let (Verdict::Accept, Some(fragment)) = (verdict, first_fragment) {
            self.fragments.first_fragment_passed(fragment, now);
        }
        verdict
    }

    /// [`Filter::inbound`] for a whole packet or first fragment.
    fn judge_inbound(&mut self, packet: &[u8], tuple: Tuple, now: Instant) -> Verdict {
        let flow = FlowLookup::of(&tuple, Direction::Inbound);
        if let Some(flow) = &flow
            && self
                .conntrack
                .refresh(&flow.key, Seen::of(&tuple), Direction::Inbound, now)
        {
            return self.accept_inbound();
        }
        if tuple.is_icmp() && self.is_error_about_tracked_flow(packet, &tuple, now) {
            return self.accept_inbound();
        }
        let info = tuple.info();
        if !self.has_policy() {
            return self.drop_new(None, DropReason::NoPolicy, &info, packet.len());
        }
        let Some(rule) = self.index.first_match(&self.rules, |c| &c.rule, &info) else {
            return self.drop_new(None, DropReason::NoRule, &info, packet.len());
        };
        let (action, monitor, slot) = (rule.rule.action, rule.rule.monitor, rule.counter_slot);
        self.counters.count_rule_hit(slot);
        let verdict = match (action, monitor) {
            (Action::Deny, false) => {
                return self.drop_new(Some(slot), DropReason::Denied, &info, packet.len());
            }
            (Action::Deny, true) => {
                self.counters.count_monitored();
                FlowVerdict::Monitored
            }
            (Action::Allow, _) => FlowVerdict::Allowed,
        };
        if let Some(flow) = flow
            && flow.opens
            && self
                .conntrack
                .insert(flow.key, &info, Direction::Inbound, now)
                .is_err()
        {
            return self.drop_new(Some(slot), DropReason::ConntrackFull, &info, packet.len());
        }
        self.events
            .push(&mut self.counters, Some(slot), verdict, &info, packet.len());
        self.accept_inbound()
    }

    /// Drops the first packet of a new inbound flow and queues the event.
    fn drop_new(
        &mut self,
        slot: Option<usize>,
        reason: DropReason,
        info: &PacketInfo,
        bytes: usize,
    ) -> Verdict {
        self.events.push(
            &mut self.counters,
            slot,
            FlowVerdict::Dropped(reason),
            info,
            bytes,
        );
        self.drop(reason)
    }

    /// Counts a drop of `bytes` decided outside the filter (cryptokey
    /// routing, unknown peer).
    pub fn record_drop(&mut self, reason: DropReason, bytes: usize) {
        self.counters.count_drop(reason);
        self.counters
            .count_bytes(true, Verdict::Drop(reason), bytes);
    }

    /// The filter's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Number of tracked flows, including revoked tombstones (expired ones
    /// count until [`Filter::expire`] or a lookup removes them).
    pub fn flow_count(&self) -> usize {
        self.conntrack.len()
    }

    /// Removes expired flows; the agent calls this about once per second.
    pub fn expire(&mut self, now: Instant) {
        self.conntrack.expire(now);
        self.fragments.expire(now);
    }

    /// Whether `packet` is an ICMP error about a packet this device sent on
    /// a live flow (checked without refreshing the flow).
    fn is_error_about_tracked_flow(&self, packet: &[u8], tuple: &Tuple, now: Instant) -> bool {
        quoted_packet(packet, tuple)
            .and_then(|quoted| FlowLookup::of(&quoted, Direction::Outbound))
            .is_some_and(|flow| self.conntrack.is_live(&flow.key, now))
    }

    fn drop(&mut self, reason: DropReason) -> Verdict {
        self.counters.count_drop(reason);
        Verdict::Drop(reason)
    }

    fn accept_inbound(&mut self) -> Verdict {
        self.counters.count_accepted_inbound();
        Verdict::Accept
    }
}
