//! The daemon's view of the network, built from the server's snapshot and
//! deltas, and the peer diff the data plane applies. Pure: no I/O.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ipnet::IpNet;
use ztmesh_filter::FilterConfig;
use ztmesh_proto::{ConversionError, filter_from_proto, parse_cidrs, parse_public_key, v1};

/// A peer as the data plane needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Server-side id.
    pub id: String,
    /// Device name (for status output).
    pub name: String,
    /// WireGuard public key.
    pub public_key: [u8; 32],
    /// Where to send to, best first (may be empty until the peer connects).
    pub endpoints: Vec<SocketAddr>,
    /// Inner source addresses this peer may use (cryptokey routing).
    pub allowed_ips: Vec<IpNet>,
}

/// This node as the server describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelfNode {
    /// Device id.
    pub id: String,
    /// Device name.
    pub name: String,
    /// Overlay addresses.
    pub addresses: Vec<IpNet>,
    /// Node key expiry and issue time, Unix seconds (expiry 0 = never).
    pub key_expires_at: i64,
    /// When the current node key was issued.
    pub key_issued_at: i64,
    /// Waiting for an admin's approval (no peers meanwhile).
    pub pending_approval: bool,
    /// Owner for user devices, empty for tagged devices.
    pub user: String,
}

/// Everything the data plane enforces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetMap {
    /// This node.
    pub self_node: SelfNode,
    /// Peers by id.
    pub peers: BTreeMap<String, PeerInfo>,
    /// Compiled inbound filter; version 0 = no policy (nothing passes).
    pub filter: FilterConfig,
    /// Sequence number of the last message applied.
    pub seq: u64,
    /// HOST:PORT of the server's STUN responder, as the server names it.
    pub stun_server: String,
    /// `stun_server` resolved (by the control client); `None`: no discovery.
    pub stun: Option<SocketAddr>,
    /// HOST:PORT of the relay (TLS); empty: none.
    pub relay_server: String,
}

/// A control message that cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum NetMapError {
    /// A field did not convert.
    #[error("bad control message: {0}")]
    Conversion(#[from] ConversionError),
    /// A message arrived out of order; the stream must be restarted.
    #[error("control message {got} arrived after {expected_after}; resynchronising")]
    Sequence {
        /// Last applied.
        expected_after: u64,
        /// Received.
        got: u64,
    },
    /// A delta before any snapshot, or an empty message.
    #[error("control stream protocol error: {0}")]
    Protocol(&'static str),
}

impl NetMap {
    /// Applies one message whole or not at all.
    pub fn apply(&mut self, message: v1::SyncMessage) -> Result<(), NetMapError> {
        match message.kind {
            Some(v1::sync_message::Kind::Snapshot(snapshot)) => {
                let mut next = NetMap {
                    self_node: convert_node(snapshot.self_node.as_ref())?,
                    peers: BTreeMap::new(),
                    filter: match &snapshot.filter {
                        Some(f) => filter_from_proto(f)?,
                        None => FilterConfig::default(),
                    },
                    seq: message.seq,
                    stun_server: snapshot.stun_server.clone(),
                    stun: None,
                    relay_server: snapshot.relay_server.clone(),
                };
                for peer in &snapshot.peers {
                    let peer = convert_peer(peer)?;
                    next.peers.insert(peer.id.clone(), peer);
                }
                *self = next;
                Ok(())
            }
            Some(v1::sync_message::Kind::Delta(delta)) => {
                if self.seq == 0 {
                    return Err(NetMapError::Protocol("delta before snapshot"));
                }
                if message.seq != self.seq + 1 {
                    return Err(NetMapError::Sequence {
                        expected_after: self.seq,
                        got: message.seq,
                    });
                }
                let mut next = self.clone();
                for id in &delta.remove_peers {
                    next.peers.remove(id);
                }
                for peer in &delta.upsert_peers {
                    let peer = convert_peer(peer)?;
                    next.peers.insert(peer.id.clone(), peer);
                }
                if let Some(filter) = &delta.filter {
                    next.filter = filter_from_proto(filter)?;
                }
                if let Some(node) = &delta.self_node {
                    next.self_node = convert_node(Some(node))?;
                }
                next.seq = message.seq;
                *self = next;
                Ok(())
            }
            None => Err(NetMapError::Protocol("empty message")),
        }
    }
}

/// Peer changes between two maps, keyed by public key.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PeerDiff {
    /// New peers.
    pub added: Vec<PeerInfo>,
    /// Public keys of peers that are gone.
    pub removed: Vec<[u8; 32]>,
    /// Peers whose endpoints, addresses or name changed (same key).
    pub changed: Vec<PeerInfo>,
}

impl PeerDiff {
    /// Computes what turns the peer set `old` into `new`.
    pub fn between<'a>(
        old: impl IntoIterator<Item = &'a PeerInfo>,
        new: impl IntoIterator<Item = &'a PeerInfo>,
    ) -> PeerDiff {
        let old: BTreeMap<[u8; 32], &PeerInfo> =
            old.into_iter().map(|p| (p.public_key, p)).collect();
        let new: BTreeMap<[u8; 32], &PeerInfo> =
            new.into_iter().map(|p| (p.public_key, p)).collect();
        let mut diff = PeerDiff::default();
        for (key, peer) in &new {
            match old.get(key) {
                None => diff.added.push((*peer).clone()),
                Some(before) if before != peer => diff.changed.push((*peer).clone()),
                Some(_) => {}
            }
        }
        diff.removed = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .copied()
            .collect();
        diff
    }
}

fn convert_node(node: Option<&v1::Node>) -> Result<SelfNode, NetMapError> {
    let node = node.ok_or(NetMapError::Protocol("snapshot without self node"))?;
    Ok(SelfNode {
        id: node.id.clone(),
        name: node.name.clone(),
        addresses: parse_cidrs(&node.addresses)?,
        key_expires_at: node.key_expires_at,
        key_issued_at: node.key_issued_at,
        pending_approval: node.pending_approval,
        user: node.user.clone(),
    })
}

fn convert_peer(peer: &v1::Peer) -> Result<PeerInfo, NetMapError> {
    Ok(PeerInfo {
        id: peer.id.clone(),
        name: peer.name.clone(),
        public_key: parse_public_key(&peer.public_key)?,
        endpoints: peer
            .endpoints
            .iter()
            .filter_map(|e| e.parse().ok())
            .collect(),
        allowed_ips: parse_cidrs(&peer.allowed_ips)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, key: u8, endpoint: &str) -> v1::Peer {
        v1::Peer {
            id: id.into(),
            name: id.into(),
            public_key: vec![key; 32],
            endpoints: vec![endpoint.into()],
            allowed_ips: vec![format!("100.64.0.{key}/32")],
        }
    }

    fn snapshot(seq: u64, peers: Vec<v1::Peer>) -> v1::SyncMessage {
        v1::SyncMessage {
            seq,
            kind: Some(v1::sync_message::Kind::Snapshot(v1::Snapshot {
                self_node: Some(v1::Node {
                    id: "me".into(),
                    name: "me".into(),
                    addresses: vec!["100.64.0.1/32".into()],
                    tags: vec![],
                    ..Default::default()
                }),
                peers,
                filter: Some(v1::Filter {
                    version: 1,
                    rules: vec![],
                }),
                stun_server: String::new(),
                relay_server: String::new(),
            })),
        }
    }

    fn delta(seq: u64, delta: v1::Delta) -> v1::SyncMessage {
        v1::SyncMessage {
            seq,
            kind: Some(v1::sync_message::Kind::Delta(delta)),
        }
    }

    #[test]
    fn snapshot_then_deltas() {
        let mut map = NetMap::default();
        map.apply(snapshot(1, vec![peer("a", 2, "10.0.0.2:51820")]))
            .unwrap();
        let before = map.clone();
        map.apply(delta(
            2,
            v1::Delta {
                upsert_peers: vec![
                    peer("b", 3, "10.0.0.3:51820"),
                    peer("a", 2, "10.0.0.9:51820"),
                ],
                ..Default::default()
            },
        ))
        .unwrap();
        let diff = PeerDiff::between(before.peers.values(), map.peers.values());
        assert_eq!(diff.added.len(), 1);
        assert_eq!(diff.changed.len(), 1);
        assert!(diff.removed.is_empty());

        map.apply(delta(
            3,
            v1::Delta {
                remove_peers: vec!["a".into()],
                filter: Some(v1::Filter {
                    version: 2,
                    rules: vec![],
                }),
                ..Default::default()
            },
        ))
        .unwrap();
        assert_eq!(map.peers.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(map.filter.version, 2);
    }

    #[test]
    fn bad_messages_change_nothing() {
        let mut map = NetMap::default();
        assert!(map.apply(delta(1, v1::Delta::default())).is_err());
        map.apply(snapshot(1, vec![])).unwrap();
        let before = map.clone();
        assert!(matches!(
            map.apply(delta(5, v1::Delta::default())),
            Err(NetMapError::Sequence { .. })
        ));
        let mut bad = peer("x", 4, "10.0.0.4:1");
        bad.public_key = vec![1, 2, 3];
        assert!(
            map.apply(delta(
                2,
                v1::Delta {
                    upsert_peers: vec![peer("ok", 5, "10.0.0.5:1"), bad],
                    ..Default::default()
                }
            ))
            .is_err()
        );
        assert_eq!(map, before, "a rejected delta is not half-applied");
    }
}
