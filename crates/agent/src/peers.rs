//! The peer table: one boringtun `Tunn` per peer, lookup by public key, by
//! session index and by inner address (allowed IPs).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use ipnet::IpNet;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::netmap::{PeerDiff, PeerInfo};

/// Seconds between keepalives; keeps NAT mappings and handshakes fresh.
const PERSISTENT_KEEPALIVE: u16 = 25;

/// One peer and its tunnel state.
pub struct Peer {
    /// What the server says about it.
    pub info: PeerInfo,
    /// The WireGuard session state machine.
    pub tunn: Tunn,
    /// Our local index for it (session ids are `index << 8 | n`).
    pub index: u32,
    /// Where to send; learnt from the server, then from authenticated packets.
    pub endpoint: Option<SocketAddr>,
}

/// All peers with their lookup tables, rebuilt from the peer set on each change.
pub struct PeerTable {
    private: StaticSecret,
    rate_limiter: Arc<RateLimiter>,
    peers: HashMap<[u8; 32], Peer>,
    by_index: HashMap<u32, [u8; 32]>,
    routes: Vec<(IpNet, [u8; 32])>,
    next_index: u32,
}

impl PeerTable {
    /// An empty table for our static key.
    pub fn new(private: StaticSecret, rate_limiter: Arc<RateLimiter>) -> Self {
        Self {
            private,
            rate_limiter,
            peers: HashMap::new(),
            by_index: HashMap::new(),
            routes: Vec::new(),
            next_index: 1,
        }
    }

    /// Applies a diff; returns the keys of added peers (to start handshakes).
    pub fn apply(&mut self, diff: PeerDiff) -> Vec<[u8; 32]> {
        for key in diff.removed {
            if let Some(peer) = self.peers.remove(&key) {
                self.by_index.remove(&peer.index);
            }
        }
        for info in diff.changed {
            if let Some(peer) = self.peers.get_mut(&info.public_key) {
                if info.endpoints != peer.info.endpoints
                    && let Some(endpoint) = info.endpoints.first()
                {
                    peer.endpoint = Some(*endpoint);
                }
                peer.info = info;
            }
        }
        let mut added = Vec::with_capacity(diff.added.len());
        for info in diff.added {
            let index = self.allocate_index();
            let tunn = Tunn::new(
                self.private.clone(),
                PublicKey::from(info.public_key),
                None,
                Some(PERSISTENT_KEEPALIVE),
                index,
                Some(Arc::clone(&self.rate_limiter)),
            );
            self.by_index.insert(index, info.public_key);
            added.push(info.public_key);
            self.peers.insert(
                info.public_key,
                Peer {
                    endpoint: info.endpoints.first().copied(),
                    info,
                    tunn,
                    index,
                },
            );
        }
        self.rebuild_routes();
        added
    }

    /// Peer by public key.
    pub fn get_mut(&mut self, key: &[u8; 32]) -> Option<&mut Peer> {
        self.peers.get_mut(key)
    }

    /// Public key of the peer owning a session index from a received packet.
    pub fn key_by_receiver_index(&self, receiver_index: u32) -> Option<[u8; 32]> {
        self.by_index.get(&(receiver_index >> 8)).copied()
    }

    /// Public key of the peer whose allowed IPs hold `addr` (longest prefix wins).
    pub fn route(&self, addr: IpAddr) -> Option<[u8; 32]> {
        self.routes
            .iter()
            .find(|(net, _)| net.contains(&addr))
            .map(|(_, key)| *key)
    }

    /// All peers.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// All peers, mutable (timers).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Peer> {
        self.peers.values_mut()
    }

    fn allocate_index(&mut self) -> u32 {
        loop {
            let index = self.next_index & 0x00ff_ffff;
            self.next_index = self.next_index.wrapping_add(1);
            if index != 0 && !self.by_index.contains_key(&index) {
                return index;
            }
        }
    }

    fn rebuild_routes(&mut self) {
        self.routes = self
            .peers
            .values()
            .flat_map(|p| {
                p.info
                    .allowed_ips
                    .iter()
                    .map(|net| (*net, p.info.public_key))
            })
            .collect();
        self.routes
            .sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
    }
}
