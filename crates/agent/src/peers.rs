//! The peer table: one boringtun `Tunn` per peer, lookup by public key, by
//! session index and by inner address (allowed IPs).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use foldhash::fast::RandomState;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::netmap::{PeerDiff, PeerInfo};
use crate::routes::RouteTable;

/// Seconds between keepalives; keeps NAT mappings and handshakes fresh.
const PERSISTENT_KEEPALIVE: u16 = 25;
/// How long a replaced tunnel still decrypts after its successor has a
/// session (packets already in flight on the old session).
const RETIRE_GRACE: Duration = Duration::from_secs(5);
/// A replaced tunnel goes after this long in any case.
const RETIRE_MAX: Duration = Duration::from_secs(120);

/// Which of a peer's tunnels a session index belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The tunnel with the current keys.
    Current,
    /// The tunnel from before a key change, kept so that no packet is lost.
    Retiring,
}

/// The tunnel from before a key change (ours or the peer's). It keeps
/// carrying traffic until the new tunnel has a session, then decrypts
/// stragglers for a short grace.
pub struct Retiring {
    /// The old session state machine.
    pub tunn: Tunn,
    /// Its local index.
    pub index: u32,
    /// When it was replaced.
    pub since: Instant,
    /// When it goes; set once the new tunnel has a session.
    pub until: Option<Instant>,
}

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
    /// The tunnel being replaced after a key change, if any.
    pub retiring: Option<Retiring>,
    /// How the last handshakes we started went.
    pub path: PathProbe,
    /// Direct or through the relay.
    pub route: Route,
}

/// The handshakes we start, sent on every direct path at once (and
/// through the relay when no direct answer comes): when the last went
/// out, a copy of it for the relay, and how fast the first answer came
/// (the handshake's round trip, which includes the peer's key exchange).
/// A handshake the peer starts is timed too, from our response to the
/// first packet of its session (the initiator sends one, a keepalive at
/// least, as soon as our response arrives): when both sides start one
/// at once and the peer's wins, ours is never answered.
#[derive(Debug, Default, Clone)]
pub struct PathProbe {
    sent: Option<Instant>,
    init: Vec<u8>,
    relayed: bool,
    /// Our last response: the index of ours it gave the session, and when.
    responded: Option<(u32, Instant)>,
    /// The last handshake's round trip.
    pub rtt: Option<Duration>,
}

impl PathProbe {
    /// A handshake initiation went out on every direct path.
    pub fn probed(&mut self, init: &[u8], now: Instant) {
        self.sent = Some(now);
        self.init.clear();
        self.init.extend_from_slice(init);
        self.relayed = false;
    }

    /// Its response came (the first copy; the peer answers once).
    pub fn answered(&mut self, now: Instant) {
        if let Some(sent) = self.sent.take() {
            self.rtt = Some(now.saturating_duration_since(sent));
        }
        self.init.clear();
    }

    /// We answered the peer's initiation with a response that gives the
    /// session our index `index`.
    pub fn responded(&mut self, index: u32, now: Instant) {
        self.responded = Some((index, now));
    }

    /// Whether a packet of the session with our index `index` would end
    /// a round trip ([`received`](Self::received)): the caller reads the
    /// clock only then.
    #[inline]
    pub fn times_session(&self, index: u32) -> bool {
        self.responded
            .is_some_and(|(answered, _)| answered == index)
    }

    /// A packet of the session with our index `index` decrypted: the
    /// first after our response for it ends that handshake's round trip.
    #[inline]
    pub fn received(&mut self, index: u32, now: Instant) {
        if self.times_session(index)
            && let Some((_, at)) = self.responded.take()
        {
            self.rtt = Some(now.saturating_duration_since(at));
        }
    }

    /// Whether the last initiation still waits for a direct answer that
    /// would keep it off the relay.
    pub fn awaits_answer(&self) -> bool {
        self.sent.is_some() && !self.relayed && !self.init.is_empty()
    }

    /// The initiation to send through the relay now: the direct copies
    /// have had `after` to be answered and were not.
    pub fn due_for_relay(&mut self, now: Instant, after: Duration) -> Option<&[u8]> {
        let sent = self.sent?;
        if self.relayed || self.init.is_empty() || now.saturating_duration_since(sent) < after {
            return None;
        }
        self.relayed = true;
        Some(&self.init)
    }
}

/// Which way a peer's packets go.
#[derive(Debug, Default, Clone)]
pub struct Route {
    /// Through the relay: no direct path answered.
    pub via_relay: bool,
    /// When an authenticated packet last came directly (data or a
    /// handshake response: proof that the direct path carries traffic).
    pub direct_at: Option<Instant>,
    /// When we last probed the direct paths while relayed.
    pub probed_direct_at: Option<Instant>,
    /// Data packets through the relay, both ways.
    pub relay_data: u64,
}

impl Peer {
    /// The tunnel to encrypt with: the current one once it has a session,
    /// the retiring one while the new handshake is still in flight.
    ///
    /// Asks the tunnels only when there is a retiring one (a key change in
    /// flight): boringtun tells whether a tunnel has a session only with
    /// the time since its handshake, a clock read, and the first clock
    /// read after a wait touches the vDSO's cold pages (2.8 µs measured),
    /// on every packet sent.
    pub fn sending_tunn(&mut self) -> &mut Tunn {
        match &mut self.retiring {
            Some(old)
                if self.tunn.time_since_last_handshake().is_none()
                    && old.tunn.time_since_last_handshake().is_some() =>
            {
                &mut old.tunn
            }
            _ => &mut self.tunn,
        }
    }

    /// What to keep when this peer's tunnel is replaced: the current
    /// tunnel if it has a session, else the tunnel it was itself replacing
    /// (two key changes close together: the newer handshake may still be in
    /// flight while the older session carries the traffic).
    fn into_retiring(self, now: Instant) -> Option<Retiring> {
        if self.tunn.time_since_last_handshake().is_some() {
            return retire(self.tunn, self.index, now);
        }
        self.retiring
            .filter(|old| old.tunn.time_since_last_handshake().is_some())
    }

    /// The tunnel owning `slot`.
    pub fn tunn_in(&mut self, slot: Slot) -> Option<&mut Tunn> {
        match slot {
            Slot::Current => Some(&mut self.tunn),
            Slot::Retiring => self.retiring.as_mut().map(|r| &mut r.tunn),
        }
    }
}

/// A peer's place in the table, valid until the peer set next changes
/// ([`PeerTable::apply`]). The packet path looks peers up by it: a
/// session index or an inner address leads to a position, not to a
/// 32-byte key that would be hashed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(usize);

/// All peers with their lookup tables, rebuilt from the peer set on each change.
pub struct PeerTable {
    private: StaticSecret,
    rate_limiter: Arc<RateLimiter>,
    /// Sorted by public key, so that a position orders peers as their
    /// keys do (the route table's tie-break).
    peers: Vec<Peer>,
    // foldhash, as in the filter: these are probed on every packet (SipHash
    // cost about 10 ns more per probe). The keys probed may come from the
    // network, but only we insert, so no input can build a collision chain.
    by_key: HashMap<[u8; 32], PeerId, RandomState>,
    by_index: HashMap<u32, (PeerId, Slot), RandomState>,
    routes: RouteTable<PeerId>,
    next_index: u32,
}

impl PeerTable {
    /// An empty table for our static key.
    pub fn new(private: StaticSecret, rate_limiter: Arc<RateLimiter>) -> Self {
        Self {
            private,
            rate_limiter,
            peers: Vec::new(),
            by_key: HashMap::default(),
            by_index: HashMap::default(),
            routes: RouteTable::default(),
            next_index: 1,
        }
    }

    /// Applies a diff; returns the keys of added peers and of peers with
    /// new endpoints (to start handshakes on every path). A peer whose key
    /// changed (same id, new key) keeps its old tunnel as retiring, so
    /// traffic flows on until the new handshake completes.
    pub fn apply(&mut self, diff: PeerDiff) -> Vec<[u8; 32]> {
        let mut replaced: HashMap<String, Peer> = HashMap::new();
        if !diff.removed.is_empty() {
            let removed: std::collections::HashSet<[u8; 32]> = diff.removed.into_iter().collect();
            let (gone, kept) = std::mem::take(&mut self.peers)
                .into_iter()
                .partition(|peer| removed.contains(&peer.info.public_key));
            self.peers = kept;
            let gone: Vec<Peer> = gone;
            for peer in gone {
                replaced.insert(peer.info.id.clone(), peer);
            }
        }
        self.index_keys();
        let mut added = Vec::with_capacity(diff.added.len());
        for info in diff.changed {
            if let Some(peer) = self.get_mut(&info.public_key) {
                if info.endpoints != peer.info.endpoints {
                    // A path that carries a session stays until an answer
                    // on another one moves it; without one, the server's
                    // first endpoint is the best guess.
                    if peer.endpoint.is_none() || peer.tunn.time_since_last_handshake().is_none() {
                        peer.endpoint = info.endpoints.first().copied().or(peer.endpoint);
                    }
                    added.push(info.public_key);
                }
                peer.info = info;
            }
        }
        let now = Instant::now();
        for info in diff.added {
            let index = self.allocate_index();
            let tunn = self.new_tunn(info.public_key, index);
            added.push(info.public_key);
            let previous = replaced.remove(&info.id);
            let endpoint = previous
                .as_ref()
                .and_then(|p| p.endpoint)
                .or_else(|| info.endpoints.first().copied());
            let retiring = previous.and_then(|p| p.into_retiring(now));
            self.peers.push(Peer {
                endpoint,
                info,
                tunn,
                index,
                retiring,
                path: PathProbe::default(),
                route: Route::default(),
            });
        }
        self.rebuild();
        added
    }

    /// Switches to a new static key of our own: every peer gets a new
    /// tunnel and keeps its old one as retiring. Returns the keys of all
    /// peers (to start handshakes with the new key).
    pub fn set_private(
        &mut self,
        private: StaticSecret,
        rate_limiter: Arc<RateLimiter>,
    ) -> Vec<[u8; 32]> {
        self.private = private;
        self.rate_limiter = rate_limiter;
        let now = Instant::now();
        let mut peers = std::mem::take(&mut self.peers);
        for peer in &mut peers {
            let index = self.allocate_index();
            let tunn = self.new_tunn(peer.info.public_key, index);
            let old_tunn = std::mem::replace(&mut peer.tunn, tunn);
            let old_index = std::mem::replace(&mut peer.index, index);
            let previous = Peer {
                info: peer.info.clone(),
                tunn: old_tunn,
                index: old_index,
                endpoint: peer.endpoint,
                retiring: peer.retiring.take(),
                path: PathProbe::default(),
                route: Route::default(),
            };
            peer.retiring = previous.into_retiring(now);
        }
        self.peers = peers;
        self.rebuild();
        self.peers.iter().map(|p| p.info.public_key).collect()
    }

    /// Drops retiring tunnels whose successor has had a session for the
    /// grace period (or that are too old).
    pub fn expire_retiring(&mut self, now: Instant) {
        for peer in &mut self.peers {
            let current_ready = peer.tunn.time_since_last_handshake().is_some();
            let Some(old) = &mut peer.retiring else {
                continue;
            };
            if current_ready && old.until.is_none() {
                old.until = Some(now + RETIRE_GRACE);
            }
            let done = old.until.is_some_and(|until| now >= until)
                || now.duration_since(old.since) >= RETIRE_MAX;
            if done {
                self.by_index.remove(&old.index);
                peer.retiring = None;
            }
        }
    }

    fn new_tunn(&self, peer_key: [u8; 32], index: u32) -> Tunn {
        Tunn::new(
            self.private.clone(),
            PublicKey::from(peer_key),
            None,
            Some(PERSISTENT_KEEPALIVE),
            index,
            Some(Arc::clone(&self.rate_limiter)),
        )
    }

    /// The place of the peer with this public key.
    pub fn find(&self, key: &[u8; 32]) -> Option<PeerId> {
        self.by_key.get(key).copied()
    }

    /// Peer by public key.
    pub fn get_mut(&mut self, key: &[u8; 32]) -> Option<&mut Peer> {
        let id = self.find(key)?;
        self.at_mut(id)
    }

    /// Peer by place.
    pub fn at_mut(&mut self, id: PeerId) -> Option<&mut Peer> {
        self.peers.get_mut(id.0)
    }

    /// The peer and tunnel owning a session index from a received packet.
    pub fn by_receiver_index(&self, receiver_index: u32) -> Option<(PeerId, Slot)> {
        self.by_index.get(&(receiver_index >> 8)).copied()
    }

    /// The peer whose allowed IPs hold `addr` (longest prefix wins).
    pub fn route(&self, addr: IpAddr) -> Option<PeerId> {
        self.routes.lookup(addr)
    }

    /// All peers.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter()
    }

    /// All peers, mutable (timers).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Peer> {
        self.peers.iter_mut()
    }

    fn allocate_index(&mut self) -> u32 {
        loop {
            let index = self.next_index & 0x00ff_ffff;
            self.next_index = self.next_index.wrapping_add(1);
            // Indexes handed out since the last rebuild are not in the
            // map yet, but they came before this one and cannot repeat.
            if index != 0 && !self.by_index.contains_key(&index) {
                return index;
            }
        }
    }

    /// The peers in key order, and every table derived from them.
    fn rebuild(&mut self) {
        self.peers.sort_by_key(|p| p.info.public_key);
        self.index_keys();
        self.by_index.clear();
        for (at, peer) in self.peers.iter().enumerate() {
            let id = PeerId(at);
            self.by_index.insert(peer.index, (id, Slot::Current));
            if let Some(old) = &peer.retiring {
                self.by_index.insert(old.index, (id, Slot::Retiring));
            }
        }
        self.routes = RouteTable::build(
            self.peers
                .iter()
                .enumerate()
                .flat_map(|(at, p)| p.info.allowed_ips.iter().map(move |net| (*net, PeerId(at)))),
        );
    }

    /// The key lookup, for the peers as they stand now.
    fn index_keys(&mut self) {
        self.by_key = self
            .peers
            .iter()
            .enumerate()
            .map(|(at, p)| (p.info.public_key, PeerId(at)))
            .collect();
    }
}

/// Keeps an old tunnel only if it has a session worth keeping.
fn retire(tunn: Tunn, index: u32, now: Instant) -> Option<Retiring> {
    tunn.time_since_last_handshake()
        .is_some()
        .then_some(Retiring {
            tunn,
            index,
            since: now,
            until: None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_initiation_awaits_its_answer_until_answered_or_relayed() {
        let start = Instant::now();
        let mut probe = PathProbe::default();
        assert!(!probe.awaits_answer(), "nothing sent yet");
        probe.probed(b"init", start);
        assert!(probe.awaits_answer());
        // Not yet due: the direct copies still have time.
        assert!(probe.due_for_relay(start, Duration::from_secs(1)).is_none());
        assert!(probe.awaits_answer());
        let later = start + Duration::from_secs(1);
        assert_eq!(
            probe.due_for_relay(later, Duration::from_secs(1)),
            Some(&b"init"[..])
        );
        assert!(!probe.awaits_answer(), "the relay carries it now");
        probe.probed(b"retry", later);
        assert!(probe.awaits_answer(), "a retry waits again");
        probe.answered(later + Duration::from_millis(3));
        assert!(!probe.awaits_answer());
        assert_eq!(probe.rtt, Some(Duration::from_millis(3)));
    }

    #[test]
    fn a_handshake_we_answered_is_timed_to_the_first_packet_of_its_session() {
        let start = Instant::now();
        let mut probe = PathProbe::default();
        assert!(!probe.times_session(7));
        probe.responded(7, start);
        // A packet of an older session (sent before our response came)
        // says nothing about this handshake.
        assert!(!probe.times_session(6) && probe.times_session(7));
        probe.received(6, start + Duration::from_millis(1));
        assert_eq!(probe.rtt, None);
        probe.received(7, start + Duration::from_millis(4));
        assert_eq!(probe.rtt, Some(Duration::from_millis(4)));
        // Only the first packet counts (the caller no longer reads the
        // clock for the session's packets).
        assert!(!probe.times_session(7));
        probe.received(7, start + Duration::from_millis(9));
        assert_eq!(probe.rtt, Some(Duration::from_millis(4)));
    }
}
