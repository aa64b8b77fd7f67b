//! `ztmesh-filter`: a pure (sans-IO) stateful packet filter for the overlay.
//!
//! The agent hands every packet to a [`Filter`]: packets read from the local
//! TUN go through [`Filter::outbound`] before encryption, packets decrypted
//! from a peer go through [`Filter::inbound`] before they are written to the
//! TUN. Outbound traffic is always accepted and tracked so its replies pass;
//! new inbound flows are judged by the device's compiled [`FilterConfig`]
//! (first matching rule wins, default deny).
//!
//! The crate owns no clocks, sockets or tasks: every time-dependent call takes
//! `now: Instant` from the caller, so behaviour is fully deterministic and
//! testable. Untrusted packet bytes are never indexed directly; malformed
//! input is an error value, never a panic.

#![warn(clippy::indexing_slicing)]

mod conntrack;
mod counters;
mod filter;
mod flow_events;
mod fragments;
mod icmp_error;
mod index;
mod ipv6_ext;
mod packet;
mod rule;
mod transport;

#[cfg(test)]
mod alloc_tests;
#[cfg(test)]
mod conntrack_tests;
#[cfg(test)]
mod filter_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod packet_tests;
#[cfg(test)]
mod reference_model;
#[cfg(test)]
mod test_packets;

pub use conntrack::FilterLimits;
pub use counters::{Counters, DropReason};
pub use filter::{Filter, Verdict};
pub use flow_events::{FlowEvent, FlowVerdict};
pub use packet::{
    PacketError, PacketInfo, answered_at_once, destination_address, parse_packet,
    routing_destination, source_address,
};
pub use rule::{Action, FilterConfig, FilterRule, PortRange, Protocol};
