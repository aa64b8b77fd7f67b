//! Per-device outputs: the compiled inbound filter and the peer list.

use std::collections::BTreeSet;

use ipnet::IpNet;
use ztmesh_filter::{Action, FilterConfig, FilterRule};

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
    /// source device are left out. An unknown `device_id` gets no rules.
    /// `version` is passed through into [`FilterConfig::version`].
    pub fn compile(&self, devices: &[Device], device_id: &str, version: u64) -> FilterConfig {
        let mut config = FilterConfig {
            version,
            rules: Vec::new(),
        };
        let Some(target) = devices.iter().find(|device| device.id == device_id) else {
            return config;
        };
        let target_segments = self.segment_set(&Subject::of_device(target));
        let memberships: Vec<BTreeSet<&str>> = devices
            .iter()
            .map(|device| self.segment_set(&Subject::of_device(device)))
            .collect();
        for rule in &self.rules {
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
                });
            }
        }
        config
    }

    /// Ids of the devices `device_id` needs a WireGuard tunnel with, sorted:
    /// every other device that may open some flow to it, or to which it may
    /// open some flow. A flow counts only if an allow rule decides it, so an
    /// allow rule entirely shadowed by earlier deny rules makes no peers.
    /// An unknown `device_id` has no peers.
    pub fn peers_of(&self, devices: &[Device], device_id: &str) -> Vec<String> {
        let Some(me) = devices.iter().find(|device| device.id == device_id) else {
            return Vec::new();
        };
        let mine = self.segment_set(&Subject::of_device(me));
        let mut peers: Vec<String> = devices
            .iter()
            .filter(|other| other.id != me.id)
            .filter(|other| {
                let theirs = self.segment_set(&Subject::of_device(other));
                self.allows_some_flow(&theirs, &mine) || self.allows_some_flow(&mine, &theirs)
            })
            .map(|other| other.id.clone())
            .collect();
        peers.sort();
        peers.dedup();
        peers
    }

    /// Whether some flow from a device in `from` to a device in `to` is
    /// decided by an allow rule (first match, default deny).
    fn allows_some_flow(&self, from: &BTreeSet<&str>, to: &BTreeSet<&str>) -> bool {
        let mut denied = PortSet::default();
        for rule in self.rules.iter().filter(|rule| rule.applies(from, to)) {
            match rule.action {
                Action::Allow if !denied.covers(&rule.port_set) => return true,
                Action::Allow => {}
                Action::Deny => denied.add(&rule.port_set),
            }
        }
        false
    }
}

#[cfg(test)]
mod tests;
