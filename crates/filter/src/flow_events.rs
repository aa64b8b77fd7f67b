//! Decisions on new inbound flows, queued for the agent's flow log: a
//! bounded queue allocated once, so the packet path never allocates.

use std::collections::VecDeque;

use crate::counters::{Counters, DropReason};
use crate::packet::PacketInfo;

/// Most events kept until the caller takes them; more are counted in
/// [`Counters::flow_events_lost`].
pub(crate) const QUEUE: usize = 1024;

/// What the filter did with the first packet of a new inbound flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowVerdict {
    /// Accepted by an allow rule.
    Allowed,
    /// Matched a deny rule in monitor mode: would have been dropped, accepted.
    Monitored,
    /// Dropped, for this reason.
    Dropped(DropReason),
}

impl FlowVerdict {
    /// Stable name: `allowed`, `monitored`, or the drop reason.
    pub fn as_str(&self) -> &'static str {
        match self {
            FlowVerdict::Allowed => "allowed",
            FlowVerdict::Monitored => "monitored",
            FlowVerdict::Dropped(reason) => reason.as_str(),
        }
    }

    /// Whether the packet was dropped.
    pub fn is_drop(&self) -> bool {
        matches!(self, FlowVerdict::Dropped(_))
    }
}

/// One decision on a new inbound flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowEvent {
    /// The deciding rule; `None` for the default deny and "no policy".
    pub rule: Option<String>,
    /// What happened.
    pub verdict: FlowVerdict,
    /// The packet's 5-tuple and protocol details.
    pub packet: PacketInfo,
    /// Length of the packet in bytes.
    pub bytes: u32,
}

/// The queue: (rule counter slot, verdict, packet, bytes).
#[derive(Debug, Clone)]
pub(crate) struct FlowEvents {
    queue: VecDeque<(Option<usize>, FlowVerdict, PacketInfo, u32)>,
}

impl Default for FlowEvents {
    fn default() -> Self {
        FlowEvents {
            queue: VecDeque::with_capacity(QUEUE),
        }
    }
}

impl FlowEvents {
    /// Queues an event, or counts it lost when the queue is full.
    pub(crate) fn push(
        &mut self,
        counters: &mut Counters,
        slot: Option<usize>,
        verdict: FlowVerdict,
        packet: &PacketInfo,
        bytes: usize,
    ) {
        if self.queue.len() < QUEUE {
            let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
            self.queue.push_back((slot, verdict, *packet, bytes));
        } else {
            counters.count_flow_event_lost();
        }
    }

    /// Takes every queued event, oldest first, with rule names resolved.
    pub(crate) fn take(&mut self, counters: &Counters) -> Vec<FlowEvent> {
        self.queue
            .drain(..)
            .map(|(slot, verdict, packet, bytes)| FlowEvent {
                rule: slot.map(|slot| counters.rule_name(slot).to_owned()),
                verdict,
                packet,
                bytes,
            })
            .collect()
    }
}
