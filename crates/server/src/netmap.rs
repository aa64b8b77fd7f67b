//! What each device should see: its own node, its peers and its compiled
//! filter, computed from the source of truth, and the delta between two views.

use std::collections::BTreeMap;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};
use ztmesh_policy::{Device, Policy};
use ztmesh_proto::{filter_to_proto, v1};

use crate::store::{DeviceRecord, DeviceStatus};

/// The whole network at one moment: built once per change, shared by every stream.
pub struct NetworkState {
    devices: Vec<DeviceRecord>,
    policy_devices: Vec<Device>,
    policy: Policy,
    policy_version: u64,
}

/// One device's view of the network.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceView {
    /// The device itself.
    pub self_node: v1::Node,
    /// Its peers by id.
    pub peers: BTreeMap<String, v1::Peer>,
    /// Its compiled inbound filter.
    pub filter: v1::Filter,
}

impl NetworkState {
    /// Builds the state from the stored devices and the policy in force.
    pub fn new(devices: Vec<DeviceRecord>, policy: Policy, policy_version: u64) -> Arc<Self> {
        let policy_devices = devices
            .iter()
            .filter(|d| d.status == DeviceStatus::Active)
            .map(|d| Device {
                id: d.id.clone(),
                name: d.name.clone(),
                user: d.owner.clone(),
                tags: d.tags.clone(),
                addresses: vec![IpNet::V4(Ipv4Net::from(d.address))],
            })
            .collect();
        Arc::new(Self {
            devices,
            policy_devices,
            policy,
            policy_version,
        })
    }

    /// The policy version in force.
    pub fn policy_version(&self) -> u64 {
        self.policy_version
    }

    /// The view of an active device; `None` when it is unknown or revoked
    /// (its stream must then be closed).
    pub fn view(&self, device_id: &str) -> Option<DeviceView> {
        let me = self
            .devices
            .iter()
            .find(|d| d.id == device_id && d.status == DeviceStatus::Active)?;
        let peers = self
            .policy
            .peers_of(&self.policy_devices, device_id)
            .iter()
            .filter_map(|id| self.devices.iter().find(|d| &d.id == id))
            .filter(|d| d.status == DeviceStatus::Active)
            .map(|d| (d.id.clone(), peer_message(d)))
            .collect();
        let filter = self
            .policy
            .compile(&self.policy_devices, device_id, self.policy_version);
        Some(DeviceView {
            self_node: node_message(me),
            peers,
            filter: filter_to_proto(&filter),
        })
    }
}

impl DeviceView {
    /// The full snapshot message.
    pub fn snapshot(&self) -> v1::Snapshot {
        v1::Snapshot {
            self_node: Some(self.self_node.clone()),
            peers: self.peers.values().cloned().collect(),
            filter: Some(self.filter.clone()),
        }
    }

    /// What changed from `old` to `self`; `None` when nothing did.
    pub fn delta_from(&self, old: &DeviceView) -> Option<v1::Delta> {
        let upsert_peers: Vec<v1::Peer> = self
            .peers
            .iter()
            .filter(|(id, peer)| old.peers.get(*id) != Some(*peer))
            .map(|(_, peer)| peer.clone())
            .collect();
        let remove_peers: Vec<String> = old
            .peers
            .keys()
            .filter(|id| !self.peers.contains_key(*id))
            .cloned()
            .collect();
        let filter = (self.filter != old.filter).then(|| self.filter.clone());
        let self_node = (self.self_node != old.self_node).then(|| self.self_node.clone());
        if upsert_peers.is_empty()
            && remove_peers.is_empty()
            && filter.is_none()
            && self_node.is_none()
        {
            return None;
        }
        Some(v1::Delta {
            upsert_peers,
            remove_peers,
            filter,
            self_node,
        })
    }
}

fn node_message(d: &DeviceRecord) -> v1::Node {
    v1::Node {
        id: d.id.clone(),
        name: d.name.clone(),
        addresses: vec![format!("{}/32", d.address)],
        tags: d.tags.clone(),
    }
}

fn peer_message(d: &DeviceRecord) -> v1::Peer {
    use base64::Engine;
    v1::Peer {
        id: d.id.clone(),
        name: d.name.clone(),
        public_key: base64::engine::general_purpose::STANDARD
            .decode(&d.public_key)
            .unwrap_or_default(),
        endpoints: d.endpoint.iter().cloned().collect(),
        allowed_ips: vec![format!("{}/32", d.address)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, tag: &str, last: u8) -> DeviceRecord {
        DeviceRecord {
            id: id.into(),
            name: id.into(),
            public_key: base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                [last; 32],
            ),
            address: std::net::Ipv4Addr::new(100, 64, 0, last),
            tags: vec![tag.into()],
            owner: None,
            cert_fingerprint: id.into(),
            status: DeviceStatus::Active,
            endpoint: Some(format!("10.0.0.{last}:51820")),
            created_at: 0,
        }
    }

    const POLICY: &str = r#"
[segments]
web = { tags = ["web"] }
db = { tags = ["db"] }

[[rules]]
name = "web-to-db"
from = ["web"]
to = ["db"]
ports = ["tcp/5432"]
"#;

    #[test]
    fn views_follow_policy_and_revocation() {
        let policy = Policy::parse(POLICY).unwrap();
        let devices = vec![
            device("a", "web", 1),
            device("b", "db", 2),
            device("c", "other", 3),
        ];
        let state = NetworkState::new(devices.clone(), policy.clone(), 1);
        let a = state.view("a").unwrap();
        assert_eq!(a.peers.keys().collect::<Vec<_>>(), ["b"]);
        assert!(a.filter.rules.is_empty(), "a receives nothing new");
        let b = state.view("b").unwrap();
        assert_eq!(b.filter.rules.len(), 1);
        assert_eq!(b.filter.rules[0].sources, ["100.64.0.1/32"]);
        assert!(state.view("c").unwrap().peers.is_empty(), "least privilege");

        let mut revoked = devices;
        revoked[0].status = DeviceStatus::Revoked;
        let after = NetworkState::new(revoked, policy, 1);
        assert!(after.view("a").is_none());
        let delta = after.view("b").unwrap().delta_from(&b).unwrap();
        assert_eq!(delta.remove_peers, ["a"]);
        assert!(delta.filter.is_some());
        assert!(
            after
                .view("c")
                .unwrap()
                .delta_from(&state.view("c").unwrap())
                .is_none()
        );
    }

    #[test]
    fn no_policy_means_no_peers_and_no_rules() {
        let state = NetworkState::new(
            vec![device("a", "web", 1), device("b", "db", 2)],
            Policy::empty(),
            0,
        );
        let view = state.view("a").unwrap();
        assert!(view.peers.is_empty());
        assert!(view.filter.rules.is_empty());
        assert_eq!(view.filter.version, 0);
    }
}
