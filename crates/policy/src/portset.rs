//! Sets of flows (protocol and port), used to tell whether an allow rule is
//! entirely shadowed by earlier deny rules: least privilege means two devices
//! are only peers when some flow between them is really allowed.

use ztmesh_filter::PortRange;

use crate::ports::{RulePort, merge_ranges};

/// Every TCP or UDP port a policy can name.
const ALL_PORTS: PortRange = PortRange {
    start: 1,
    end: 65535,
};

/// A set of flows: TCP and UDP port ranges (sorted and merged), ICMP, and the
/// other protocols only `any` reaches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PortSet {
    tcp: Vec<PortRange>,
    udp: Vec<PortRange>,
    icmp: bool,
    other: bool,
}

impl PortSet {
    /// The flows a rule's port specs match.
    pub(crate) fn of(ports: &[RulePort]) -> PortSet {
        let mut set = PortSet::default();
        for port in ports {
            match *port {
                RulePort::Any => {
                    set.tcp.push(ALL_PORTS);
                    set.udp.push(ALL_PORTS);
                    set.icmp = true;
                    set.other = true;
                }
                RulePort::Icmp => set.icmp = true,
                RulePort::Ports { protocol, range } => {
                    let range = range.unwrap_or(ALL_PORTS);
                    if protocol == ztmesh_filter::Protocol::Udp {
                        set.udp.push(range);
                    } else {
                        set.tcp.push(range);
                    }
                }
            }
        }
        set.tcp = merge_ranges(set.tcp);
        set.udp = merge_ranges(set.udp);
        set
    }

    /// Adds every flow of `other` to this set.
    pub(crate) fn add(&mut self, other: &PortSet) {
        self.tcp = merge_ranges(self.tcp.iter().chain(&other.tcp).copied().collect());
        self.udp = merge_ranges(self.udp.iter().chain(&other.udp).copied().collect());
        self.icmp |= other.icmp;
        self.other |= other.other;
    }

    /// Whether every flow of `other` is in this set.
    pub(crate) fn covers(&self, other: &PortSet) -> bool {
        (self.icmp || !other.icmp)
            && (self.other || !other.other)
            && ranges_cover(&self.tcp, &other.tcp)
            && ranges_cover(&self.udp, &other.udp)
    }
}

/// Whether the merged ranges `outer` contain every range of `inner`. Merged
/// ranges neither overlap nor touch, so each inner range must sit inside one.
fn ranges_cover(outer: &[PortRange], inner: &[PortRange]) -> bool {
    inner.iter().all(|range| {
        outer
            .iter()
            .any(|o| o.start <= range.start && range.end <= o.end)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(specs: &[&str]) -> PortSet {
        let ports: Vec<RulePort> = specs.iter().map(|s| RulePort::parse(s).unwrap()).collect();
        PortSet::of(&ports)
    }

    #[test]
    fn coverage_follows_protocols_and_ranges() {
        assert!(set(&["any"]).covers(&set(&["tcp/22", "udp", "icmp"])));
        assert!(!set(&["tcp", "udp", "icmp"]).covers(&set(&["any"])));
        assert!(set(&["tcp/1-100", "tcp/101-200"]).covers(&set(&["tcp/50-150"])));
        assert!(!set(&["tcp/1-100", "tcp/102-200"]).covers(&set(&["tcp/50-150"])));
        assert!(!set(&["tcp"]).covers(&set(&["udp/53"])));
        assert!(set(&["tcp"]).covers(&set(&["tcp/1-65535"])));
        assert!(!set(&["udp"]).covers(&set(&["icmp"])));
    }

    #[test]
    fn adding_accumulates() {
        let mut denied = set(&["tcp/1-1000"]);
        assert!(!denied.covers(&set(&["tcp/22", "tcp/2000"])));
        denied.add(&set(&["tcp/1001-3000"]));
        assert!(denied.covers(&set(&["tcp/22", "tcp/2000"])));
        assert!(PortSet::default().covers(&PortSet::default()));
    }
}
