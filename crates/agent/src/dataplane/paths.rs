//! Which way a peer's packets go: directly to its endpoint, or through
//! the relay when no direct path answers. Handshakes go out on every
//! direct path at once; when none answers within [`RELAY_AFTER`], the same
//! initiation goes through the relay. While a peer is relayed, the direct
//! paths are tried again every [`DIRECT_PROBE`], and the first direct
//! answer moves the traffic back (see `receive.rs`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;
use tokio::sync::{mpsc, watch};
use ztmesh_relay::Frame;
use ztmesh_relay::client::Link;

use super::Engine;
use crate::peers::Peer;
use crate::wgsock::WgSocket;

/// How long direct handshakes have before the relay carries one too.
pub(super) const RELAY_AFTER: Duration = Duration::from_secs(1);
/// How often a relayed peer's direct paths are tried again.
pub(super) const DIRECT_PROBE: Duration = Duration::from_secs(10);
/// What WireGuard adds to a packet: type and reserved bytes, receiver
/// index, counter, and the AEAD tag (boringtun does not pad).
const WIREGUARD_OVERHEAD: u16 = 4 + 4 + 8 + 16;

/// One way to a peer.
#[derive(Clone, Copy, Debug)]
pub(super) enum Via {
    /// The UDP socket, to this endpoint.
    Direct(SocketAddr),
    /// The relay, to the device with this WireGuard key.
    Relay([u8; 32]),
}

/// The relay side of sending: the queue to the relay connection and
/// whether it is up.
pub(super) struct Paths {
    relay_out: mpsc::Sender<Frame>,
    relay_up: watch::Receiver<Link>,
}

impl Paths {
    pub(super) fn new(relay_out: mpsc::Sender<Frame>, relay_up: watch::Receiver<Link>) -> Self {
        Self {
            relay_out,
            relay_up,
        }
    }

    /// Whether the relay connection is up now.
    pub(super) fn relay_up(&self) -> bool {
        self.relay_up.borrow().is_up()
    }

    /// How the relay link carries packets now.
    pub(super) fn relay_link(&self) -> Link {
        *self.relay_up.borrow()
    }

    /// The largest overlay packet the relay carries in one datagram now:
    /// `None` while it carries packets over TLS, which has no limit (or
    /// not at all).
    pub(super) fn relay_mtu(&self) -> Option<u16> {
        match *self.relay_up.borrow() {
            Link::Udp { max_message } => Some(max_message.saturating_sub(WIREGUARD_OVERHEAD)),
            Link::Tls | Link::Down => None,
        }
    }

    /// Sends `datagram` the way `via` says.
    pub(super) fn send(&self, udp: &WgSocket, via: Via, datagram: &[u8]) {
        match via {
            Via::Direct(to) => super::send(udp, datagram, to),
            Via::Relay(key) => {
                self.relay(key, datagram);
            }
        }
    }

    /// Queues `datagram` for the relay; a full queue or a relay that is
    /// down drops it, as a full link would.
    pub(super) fn relay(&self, key: [u8; 32], datagram: &[u8]) -> bool {
        self.relay_up()
            && self
                .relay_out
                .try_send(Frame {
                    key,
                    payload: datagram.to_vec(),
                })
                .is_ok()
    }

    /// A handshake initiation to every direct endpoint the peer may have
    /// (where it was last heard from, and all the server gave), once each;
    /// through the relay at once as well when the peer is relayed.
    pub(super) fn spray(&self, udp: &WgSocket, init: &[u8], peer: &mut Peer) {
        let now = Instant::now();
        peer.path.probed(init, now);
        direct_to_all(udp, init, peer);
        if peer.route.via_relay && peer.path.due_for_relay(now, Duration::ZERO).is_some() {
            self.relay(peer.info.public_key, init);
        }
    }
}

/// How the peer's packets go now; `None`: nowhere yet.
pub(super) fn via(peer: &Peer) -> Option<Via> {
    if peer.route.via_relay {
        Some(Via::Relay(peer.info.public_key))
    } else {
        peer.endpoint.map(Via::Direct)
    }
}

/// `datagram` to each direct endpoint of `peer`, once each.
fn direct_to_all(udp: &WgSocket, datagram: &[u8], peer: &Peer) {
    let paths = peer.endpoint.iter().chain(peer.info.endpoints.iter());
    for (i, to) in paths.clone().enumerate() {
        if !paths.clone().take(i).any(|seen| seen == to) {
            super::send(udp, datagram, *to);
        }
    }
}

impl Engine {
    /// From the timer: handshakes no direct path answered go through the
    /// relay; relayed peers get a direct try now and then.
    pub(super) fn tend_paths(&mut self, udp: &WgSocket, now: Instant) {
        for peer in self.peers.iter_mut() {
            let key = peer.info.public_key;
            if let Some(init) = peer.path.due_for_relay(now, RELAY_AFTER) {
                self.paths.relay(key, init);
            }
            let probe_due = peer.route.via_relay
                && peer
                    .route
                    .probed_direct_at
                    .is_none_or(|at| now.saturating_duration_since(at) >= DIRECT_PROBE);
            if probe_due && !(peer.endpoint.is_none() && peer.info.endpoints.is_empty()) {
                peer.route.probed_direct_at = Some(now);
                if let TunnResult::WriteToNetwork(init) =
                    peer.tunn.format_handshake_initiation(&mut self.out, true)
                {
                    peer.path.probed(init, now);
                    direct_to_all(udp, init, peer);
                }
            }
        }
    }
}
