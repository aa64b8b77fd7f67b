//! Compiled filter rules: the per-device output of the policy compiler and the
//! input of the stateful [`crate::Filter`].
//!
//! Semantics (shared contract between `ztmesh-policy`, the server and the
//! agent): rules are *inbound* rules evaluated at the receiving device. A new
//! flow arriving from a peer is matched against the rules in order; the first
//! rule that matches decides (`Allow` or `Deny`); when none matches the packet
//! is dropped (default deny). An empty rule list therefore allows nothing.

use ipnet::IpNet;

use crate::packet::{PROTO_TCP, PROTO_UDP, PacketInfo};

/// What a matching rule does with a new inbound flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// The flow is accepted and tracked, so its return traffic passes.
    Allow,
    /// The flow is dropped.
    Deny,
}

/// Transport protocol a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP; ports are destination ports.
    Tcp,
    /// UDP; ports are destination ports.
    Udp,
    /// ICMP echo requests (ICMPv4 type 8, ICMPv6 type 128); ports are ignored.
    Icmp,
    /// Every protocol; ports apply to TCP and UDP only and must be empty to
    /// also match ICMP and other protocols.
    Any,
}

/// An inclusive range of destination ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    /// First port of the range.
    pub start: u16,
    /// Last port of the range (inclusive, `>= start`).
    pub end: u16,
}

impl PortRange {
    /// Whether `port` falls inside this range.
    pub fn contains(&self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }
}

/// One compiled inbound rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FilterRule {
    /// Name of the policy rule this came from (used in counters and logs).
    pub name: String,
    /// What happens to a matching new flow.
    pub action: Action,
    /// Source addresses (the remote peers) allowed to open the flow.
    pub sources: Vec<IpNet>,
    /// Destination addresses (this device's own overlay addresses, or routed subnets).
    pub destinations: Vec<IpNet>,
    /// Protocol the rule matches.
    pub protocol: Protocol,
    /// Destination ports; empty means every port.
    pub ports: Vec<PortRange>,
    /// Monitor mode (deny rules): a matching new flow is counted and
    /// reported as one that would be dropped, then accepted and tracked.
    pub monitor: bool,
}

impl Protocol {
    /// Whether a packet's protocol (ignoring ports) is covered.
    pub fn matches(&self, packet: &PacketInfo) -> bool {
        match self {
            Protocol::Tcp => packet.proto == PROTO_TCP,
            Protocol::Udp => packet.proto == PROTO_UDP,
            Protocol::Icmp => packet.is_echo_request(),
            Protocol::Any => true,
        }
    }
}

impl FilterRule {
    /// Whether a new flow matching this rule passes: an allow rule, or a
    /// deny rule in monitor mode.
    pub fn passes(&self) -> bool {
        self.action == Action::Allow || self.monitor
    }

    /// Whether this rule matches `packet` as the first packet of a new
    /// inbound flow: source, destination, protocol and destination port.
    pub fn matches(&self, packet: &PacketInfo) -> bool {
        self.sources.iter().any(|net| net.contains(&packet.src))
            && self
                .destinations
                .iter()
                .any(|net| net.contains(&packet.dst))
            && self.protocol.matches(packet)
            && self.ports_match(packet)
    }

    fn ports_match(&self, packet: &PacketInfo) -> bool {
        if self.ports.is_empty() || self.protocol == Protocol::Icmp {
            return true;
        }
        // Non-empty ports restrict `Tcp`, `Udp` and `Any` to TCP/UDP packets.
        matches!(packet.proto, PROTO_TCP | PROTO_UDP)
            && self
                .ports
                .iter()
                .any(|range| range.contains(packet.dst_port))
    }
}

/// A whole compiled filter for one device, as pushed by the server.
///
/// Applied atomically: a packet is never judged by part of one version and
/// part of another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterConfig {
    /// Policy version this filter was compiled from; 0 means "no policy yet".
    pub version: u64,
    /// Inbound rules in evaluation order (first match wins, default deny).
    pub rules: Vec<FilterRule>,
}
