//! What each device should see: its own node, its peers and its compiled
//! filter, computed from the source of truth, and the delta between two views.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};
use ztmesh_policy::{Device, Policy, Posture};
use ztmesh_proto::{filter_to_proto, v1};

use crate::store::{DeviceRecord, DeviceStatus, UserRecord};

/// The whole network at one moment: built once per change, shared by every stream.
pub struct NetworkState {
    devices: Vec<DeviceRecord>,
    users: HashMap<String, UserRecord>,
    policy_devices: Vec<Device>,
    policy: Policy,
    policy_version: u64,
    now: i64,
}

/// Where a device stands, from the records alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Takes part in the network.
    Active,
    /// Enrolled, waiting for an admin; no peers, nobody reaches it.
    PendingApproval,
    /// Revoked by an admin (or its user was deleted).
    Revoked,
    /// Its node key expired; it must re-authenticate.
    Expired,
    /// Its owner is disabled.
    UserDisabled,
}

impl Standing {
    /// Short name, as shown by `ztmesh admin devices list`.
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Active => "active",
            Standing::PendingApproval => "pending-approval",
            Standing::Revoked => "revoked",
            Standing::Expired => "expired",
            Standing::UserDisabled => "user-disabled",
        }
    }
}

/// Where `device` stands at `now`, given the users by name.
pub fn standing(device: &DeviceRecord, users: &HashMap<String, UserRecord>, now: i64) -> Standing {
    if device.status == DeviceStatus::Revoked {
        return Standing::Revoked;
    }
    if let Some(owner) = &device.owner {
        match users.get(owner) {
            None => return Standing::Revoked,
            Some(user) if user.disabled => return Standing::UserDisabled,
            Some(_) => {}
        }
    }
    if device.is_expired(now) {
        return Standing::Expired;
    }
    if !device.approved {
        return Standing::PendingApproval;
    }
    Standing::Active
}

/// The policy's view of a device: identity, directory groups and posture.
pub fn policy_device(device: &DeviceRecord, users: &HashMap<String, UserRecord>) -> Device {
    Device {
        id: device.id.clone(),
        name: device.name.clone(),
        user: device.owner.clone(),
        groups: device
            .owner
            .as_ref()
            .and_then(|owner| users.get(owner))
            .map(|user| user.groups.clone())
            .unwrap_or_default(),
        tags: device.tags.clone(),
        addresses: vec![IpNet::V4(Ipv4Net::from(device.address))],
        posture: device.posture.as_ref().map(|p| Posture {
            os: p.os.to_ascii_lowercase(),
            os_version: p.os_version.clone(),
            kernel: p.kernel.clone(),
            daemon_version: p.daemon_version.clone(),
            hostname: p.hostname.clone(),
            disk_encrypted: p.disk_encrypted,
            firewall: p.firewall,
            public_ip: device.public_ip.as_deref().and_then(|ip| ip.parse().ok()),
        }),
    }
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
    /// Builds the state from the stored devices and users and the policy in
    /// force, as of `now` (Unix seconds).
    pub fn new(
        devices: Vec<DeviceRecord>,
        users: Vec<UserRecord>,
        policy: Policy,
        policy_version: u64,
        now: i64,
    ) -> Arc<Self> {
        let users: HashMap<String, UserRecord> =
            users.into_iter().map(|u| (u.name.clone(), u)).collect();
        let policy_devices = devices
            .iter()
            .filter(|d| standing(d, &users, now) == Standing::Active)
            .map(|d| policy_device(d, &users))
            .collect();
        Arc::new(Self {
            devices,
            users,
            policy_devices,
            policy,
            policy_version,
            now,
        })
    }

    /// The policy version in force.
    pub fn policy_version(&self) -> u64 {
        self.policy_version
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The users by name.
    pub fn users(&self) -> &HashMap<String, UserRecord> {
        &self.users
    }

    /// Every stored device, whatever its standing.
    pub fn devices(&self) -> &[DeviceRecord] {
        &self.devices
    }

    /// When the state was built (Unix seconds).
    pub fn built_at(&self) -> i64 {
        self.now
    }

    /// The earliest future moment (Unix seconds) at which the state must be
    /// rebuilt: a node key expires, or a rule's schedule opens or closes or
    /// its `until` passes.
    pub fn next_change(&self) -> Option<i64> {
        let expiry = self
            .devices
            .iter()
            .filter(|d| d.status == DeviceStatus::Active)
            .filter_map(|d| d.key_expires_at)
            .filter(|at| *at > self.now)
            .min();
        match (expiry, self.policy.next_change(self.now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The view of a device; `Err` with its standing when it must get
    /// nothing (its stream is then closed). A device waiting for approval
    /// gets its own node and nothing else.
    pub fn view(&self, device_id: &str) -> Result<DeviceView, Standing> {
        let me = self
            .devices
            .iter()
            .find(|d| d.id == device_id)
            .ok_or(Standing::Revoked)?;
        let standing = standing(me, &self.users, self.now);
        match standing {
            Standing::Active => {}
            Standing::PendingApproval => {
                return Ok(DeviceView {
                    self_node: node_message(me, true),
                    peers: BTreeMap::new(),
                    filter: v1::Filter {
                        version: self.policy_version,
                        rules: Vec::new(),
                    },
                });
            }
            refused => return Err(refused),
        }
        let peers = self
            .policy
            .peers_of(&self.policy_devices, device_id, self.now)
            .iter()
            .filter_map(|id| self.devices.iter().find(|d| &d.id == id))
            .map(|d| (d.id.clone(), peer_message(d)))
            .collect();
        let filter = self.policy.compile(
            &self.policy_devices,
            device_id,
            self.policy_version,
            self.now,
        );
        Ok(DeviceView {
            self_node: node_message(me, false),
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
            stun_server: String::new(),
            relay_server: String::new(),
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

fn node_message(d: &DeviceRecord, pending_approval: bool) -> v1::Node {
    v1::Node {
        id: d.id.clone(),
        name: d.name.clone(),
        addresses: vec![format!("{}/32", d.address)],
        tags: d.tags.clone(),
        key_expires_at: d.key_expires_at.unwrap_or(0),
        key_issued_at: d.key_issued_at,
        pending_approval,
        user: d.owner.clone().unwrap_or_default(),
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
        endpoints: endpoints(d),
        allowed_ips: vec![format!("{}/32", d.address)],
    }
}

/// Where peers probe a device: the endpoint seen by the server (or found
/// by STUN) first, then its interface candidates, each once.
pub(crate) fn endpoints(d: &DeviceRecord) -> Vec<String> {
    let mut all: Vec<String> = d.endpoint.iter().cloned().collect();
    for candidate in &d.candidates {
        if !all.contains(candidate) {
            all.push(candidate.clone());
        }
    }
    all
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
            candidates: Vec::new(),
            created_at: 0,
            approved: true,
            key_issued_at: 0,
            key_expires_at: None,
            key_expiry_override: None,
            posture: None,
            posture_at: None,
            public_ip: None,
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
        let state = NetworkState::new(devices.clone(), vec![], policy.clone(), 1, 100);
        let a = state.view("a").unwrap();
        assert_eq!(a.peers.keys().collect::<Vec<_>>(), ["b"]);
        assert!(a.filter.rules.is_empty(), "a receives nothing new");
        let b = state.view("b").unwrap();
        assert_eq!(b.filter.rules.len(), 1);
        assert_eq!(b.filter.rules[0].sources, ["100.64.0.1/32"]);
        assert!(state.view("c").unwrap().peers.is_empty(), "least privilege");

        let mut revoked = devices;
        revoked[0].status = DeviceStatus::Revoked;
        let after = NetworkState::new(revoked, vec![], policy, 1, 100);
        assert_eq!(after.view("a"), Err(Standing::Revoked));
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
            vec![],
            Policy::empty(),
            0,
            100,
        );
        let view = state.view("a").unwrap();
        assert!(view.peers.is_empty());
        assert!(view.filter.rules.is_empty());
        assert_eq!(view.filter.version, 0);
    }

    fn user(name: &str, disabled: bool) -> UserRecord {
        UserRecord {
            id: format!("id-{name}"),
            name: name.into(),
            password_hash: String::new(),
            totp_sealed: String::new(),
            totp_last_step: None,
            disabled,
            created_at: 0,
            groups: vec![],
        }
    }

    #[test]
    fn expired_pending_and_disabled_devices_get_nothing() {
        let policy = Policy::parse(POLICY).unwrap();
        let base = vec![device("a", "web", 1), device("b", "db", 2)];
        let peers_of_b = |devices: Vec<DeviceRecord>, users: Vec<UserRecord>| {
            NetworkState::new(devices, users, policy.clone(), 1, 100)
                .view("b")
                .unwrap()
                .peers
                .len()
        };
        assert_eq!(peers_of_b(base.clone(), vec![]), 1);

        let mut expired = base.clone();
        expired[0].key_expires_at = Some(100);
        let state = NetworkState::new(expired.clone(), vec![], policy.clone(), 1, 100);
        assert_eq!(state.view("a"), Err(Standing::Expired));
        assert_eq!(peers_of_b(expired.clone(), vec![]), 0);
        expired[0].key_expires_at = Some(150);
        let state = NetworkState::new(expired.clone(), vec![], policy.clone(), 1, 100);
        assert_eq!(state.next_change(), Some(150));
        assert_eq!(peers_of_b(expired, vec![]), 1);

        let mut pending = base.clone();
        pending[0].approved = false;
        let state = NetworkState::new(pending.clone(), vec![], policy.clone(), 1, 100);
        let view = state.view("a").unwrap();
        assert!(view.self_node.pending_approval);
        assert!(view.peers.is_empty() && view.filter.rules.is_empty());
        assert_eq!(peers_of_b(pending, vec![]), 0);

        let mut owned = base;
        owned[0].owner = Some("alice".into());
        assert_eq!(peers_of_b(owned.clone(), vec![user("alice", false)]), 1);
        assert_eq!(peers_of_b(owned.clone(), vec![user("alice", true)]), 0);
        let state = NetworkState::new(
            owned.clone(),
            vec![user("alice", true)],
            policy.clone(),
            1,
            100,
        );
        assert_eq!(state.view("a"), Err(Standing::UserDisabled));
        let state = NetworkState::new(owned, vec![], policy.clone(), 1, 100);
        assert_eq!(state.view("a"), Err(Standing::Revoked), "deleted owner");
    }
}
