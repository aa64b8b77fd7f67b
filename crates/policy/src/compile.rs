//! Per-device outputs: the compiled inbound filter and the peer list.

use std::collections::BTreeSet;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use ztmesh_filter::{Action, FilterConfig, FilterRule, Protocol};

use crate::eval::Subject;
use crate::portset::PortSet;
use crate::{Device, Policy};

impl Policy {
    /// Compiles the inbound filter of `device_id`, given every device in the
    /// network.
    ///
    /// For each rule, in order, whose `to` segments contain the device: one
    /// [`FilterRule`] per protocol (TCP, UDP, ICMP; or a single `Any`), with
    /// the addresses of every other device in the rule's `from` segments as
    /// sources and the device's own addresses as destinations. Rules with no
    /// source device are left out, and so are rules whose time conditions do
    /// not hold at `now` (Unix seconds; see [`Policy::next_change`]). An
    /// unknown `device_id` gets no rules. `version` is passed through into
    /// [`FilterConfig::version`].
    ///
    /// Monitor mode: a deny rule marked `monitor`, and every deny rule when
    /// the device is in a segment in monitor mode, is compiled with
    /// [`FilterRule::monitor`] set. A device in a monitored segment also
    /// gets a last catch-all monitored deny rule named `monitor:SEGMENT`, so
    /// what the default deny would drop is counted and passed.
    pub fn compile(
        &self,
        devices: &[Device],
        device_id: &str,
        version: u64,
        now: i64,
    ) -> FilterConfig {
        let mut config = FilterConfig {
            version,
            rules: Vec::new(),
        };
        let Some(target) = devices.iter().find(|device| device.id == device_id) else {
            return config;
        };
        let target_segments = self.segment_set(&Subject::of_device(target));
        let monitored = self.monitored_segment(&target_segments);
        let memberships: Vec<BTreeSet<&str>> = devices
            .iter()
            .map(|device| self.segment_set(&Subject::of_device(device)))
            .collect();
        for rule in self.rules.iter().filter(|rule| rule.in_force(Some(now))) {
            if !rule.to.iter().any(|s| target_segments.contains(s.as_str())) {
                continue;
            }
            let mut sources: Vec<IpNet> = devices
                .iter()
                .zip(&memberships)
                .filter(|(device, segments)| {
                    device.id != target.id
                        && rule.from.iter().any(|s| segments.contains(s.as_str()))
                })
                .flat_map(|(device, _)| device.addresses.iter().copied())
                .collect();
            sources.sort();
            sources.dedup();
            if sources.is_empty() {
                continue;
            }
            for (protocol, ports) in &rule.filter_ports {
                config.rules.push(FilterRule {
                    name: rule.name.clone(),
                    action: rule.action,
                    sources: sources.clone(),
                    destinations: target.addresses.clone(),
                    protocol: *protocol,
                    ports: ports.clone(),
                    monitor: rule.action == Action::Deny && (rule.monitor || monitored.is_some()),
                });
            }
        }
        if let Some(segment) = monitored {
            config.rules.push(FilterRule {
                name: format!("monitor:{segment}"),
                action: Action::Deny,
                sources: vec![
                    IpNet::from(Ipv4Net::default()),
                    IpNet::from(Ipv6Net::default()),
                ],
                destinations: target.addresses.clone(),
                protocol: Protocol::Any,
                ports: Vec::new(),
                monitor: true,
            });
        }
        config
    }

    /// Ids of the devices `device_id` needs a WireGuard tunnel with, sorted:
    /// every other device that may open some flow to it, or to which it may
    /// open some flow. A flow counts only if an allow rule decides it, so an
    /// allow rule entirely shadowed by earlier deny rules makes no peers.
    /// Only rules in force at `now` count. A device in a monitored segment
    /// peers with every device (its filter passes everything and counts
    /// what it would drop). An unknown `device_id` has no peers.
    pub fn peers_of(&self, devices: &[Device], device_id: &str, now: i64) -> Vec<String> {
        let Some(me) = devices.iter().find(|device| device.id == device_id) else {
            return Vec::new();
        };
        let mine = self.segment_set(&Subject::of_device(me));
        let i_am_monitored = self.monitored_segment(&mine).is_some();
        let mut peers: Vec<String> = devices
            .iter()
            .filter(|other| other.id != me.id)
            .filter(|other| {
                let theirs = self.segment_set(&Subject::of_device(other));
                i_am_monitored
                    || self.monitored_segment(&theirs).is_some()
                    || self.allows_some_flow(&theirs, &mine, now)
                    || self.allows_some_flow(&mine, &theirs, now)
            })
            .map(|other| other.id.clone())
            .collect();
        peers.sort();
        peers.dedup();
        peers
    }

    /// Whether some flow from a device in `from` to a device in `to` is
    /// decided by an allow rule or a monitored deny rule (first match, default deny).
    fn allows_some_flow(&self, from: &BTreeSet<&str>, to: &BTreeSet<&str>, now: i64) -> bool {
        let mut denied = PortSet::default();
        let in_force = self
            .rules
            .iter()
            .filter(|rule| rule.in_force(Some(now)) && rule.applies(from, to));
        for rule in in_force {
            match rule.action {
                Action::Allow if !denied.covers(&rule.port_set) => return true,
                Action::Allow => {}
                // A monitored deny passes what it matches: that needs a tunnel.
                Action::Deny if rule.monitor => return true,
                Action::Deny => denied.add(&rule.port_set),
            }
        }
        false
    }
}

#[cfg(test)]
mod tests;
