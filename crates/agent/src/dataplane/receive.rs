//! The receive path, for packets from the UDP socket and from the relay
//! alike: MAC and load check, the peer the message is for, decryption,
//! then cryptokey routing and the inbound filter before the TUN. Which
//! way the peer's packets go next is learnt here too: a direct answer
//! moves it to the direct path, a relayed one (with no recent direct
//! traffic) to the relay.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, TunnResult};
use ztmesh_filter::DropReason;

use super::{COOKIE_REPLY, Engine, Io, admit, paths::Via};
use crate::batch::TunWriteBatch;
use crate::peers::Slot;
use crate::tunio::TunIo;

/// A direct packet this recent keeps a peer off the relay.
const DIRECT_FRESH: Duration = Duration::from_secs(10);

/// Where a packet came from.
#[derive(Clone, Copy, Debug)]
pub(super) enum Source {
    /// The shared UDP socket, from this address.
    Direct(SocketAddr),
    /// The socket connected to this address (its endpoint is proven).
    Connected(SocketAddr),
    /// The relay, from the device with this WireGuard key (the relay
    /// checked its certificate).
    Relay([u8; 32]),
}

impl Source {
    fn ip(self) -> Option<IpAddr> {
        self.direct().map(|from| from.ip())
    }

    /// The address it came from, when not through the relay.
    fn direct(self) -> Option<SocketAddr> {
        match self {
            Self::Direct(from) | Self::Connected(from) => Some(from),
            Self::Relay(_) => None,
        }
    }
}

impl Engine {
    pub(super) fn on_packet<T: TunIo>(
        &mut self,
        io: &Io<T>,
        source: Source,
        datagram: &[u8],
        now: Instant,
        tun_out: &mut TunWriteBatch,
    ) {
        if let Some(from) = source.direct()
            && ztmesh_stun::is_stun(datagram)
        {
            std::hint::cold_path();
            if let Some(public) = self.discovery.on_datagram(from, datagram, Instant::now()) {
                self.public_endpoint
                    .send_if_modified(|known| known.replace(public) != Some(public));
            }
            return;
        }
        // MAC and load check before any expensive work (the X25519 in
        // parse_handshake_anon): under a handshake flood this answers with
        // cookies instead of spending a DH per junk packet.
        let mut packet = self
            .rate_limiter
            .verify_packet(source.ip(), datagram, &mut self.out);
        if matches!(packet, Err(TunnResult::Err(_)))
            && let Some(old) = &self.old_keys
        {
            std::hint::cold_path();
            // Sent to our previous public key by a peer that has not heard
            // of the rotation yet.
            packet = old
                .rate_limiter
                .verify_packet(source.ip(), datagram, &mut self.out);
        }
        let packet = match packet {
            Ok(packet) => packet,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                std::hint::cold_path();
                if let Some(from) = source.direct() {
                    super::send(&io.udp, cookie, from);
                }
                return;
            }
            Err(_) => {
                std::hint::cold_path();
                self.filter
                    .record_drop(DropReason::UnknownPeer, datagram.len());
                return;
            }
        };
        // Data decrypts straight into the TUN batch; handshakes use scratch.
        let data_index = match &packet {
            Packet::PacketData(p) => Some(p.receiver_idx),
            _ => None,
        };
        let is_data = data_index.is_some();
        let is_response = matches!(packet, Packet::HandshakeResponse(_));
        let target = match packet {
            Packet::HandshakeInit(p) => {
                std::hint::cold_path();
                match parse_handshake_anon(&self.private, &self.public, &p) {
                    Ok(h) => self
                        .peers
                        .find(&h.peer_static_public)
                        .map(|id| (id, Slot::Current)),
                    Err(_) => self.old_keys.as_ref().and_then(|old| {
                        let h = parse_handshake_anon(&old.private, &old.public, &p).ok()?;
                        Some((self.peers.find(&h.peer_static_public)?, Slot::Retiring))
                    }),
                }
            }
            Packet::HandshakeResponse(p) => self.peers.by_receiver_index(p.receiver_idx),
            Packet::PacketCookieReply(p) => self.peers.by_receiver_index(p.receiver_idx),
            Packet::PacketData(p) => self.peers.by_receiver_index(p.receiver_idx),
        };
        let Some((peer, slot)) = target.and_then(|(id, slot)| Some((self.peers.at_mut(id)?, slot)))
        else {
            std::hint::cold_path();
            self.filter
                .record_drop(DropReason::UnknownPeer, datagram.len());
            return;
        };
        // Through the relay, a message is only for the peer the relay says
        // sent it.
        if let Source::Relay(sender) = source
            && peer.info.public_key != sender
        {
            std::hint::cold_path();
            self.filter
                .record_drop(DropReason::UnknownPeer, datagram.len());
            return;
        }
        let key = peer.info.public_key;
        let allowed_ips = &peer.info.allowed_ips;
        let name = &peer.info.name;
        let endpoint = &mut peer.endpoint;
        let path = &mut peer.path;
        let route = &mut peer.route;
        let tunn = match slot {
            Slot::Current => &mut peer.tunn,
            Slot::Retiring => match &mut peer.retiring {
                Some(old) => {
                    std::hint::cold_path();
                    &mut old.tunn
                }
                None => {
                    std::hint::cold_path();
                    self.filter
                        .record_drop(DropReason::UnknownPeer, datagram.len());
                    return;
                }
            },
        };
        let (dst, into_slot) = match tun_out.slot(datagram.len()) {
            Some(slot) if is_data => (slot, true),
            _ => (&mut self.out[..], false),
        };
        // Where answers go: back the way the message came.
        let back = match source {
            Source::Direct(from) | Source::Connected(from) => Via::Direct(from),
            Source::Relay(_) => Via::Relay(key),
        };
        let mut authenticated = false;
        let mut delivered = None;
        let result = tunn.decapsulate(source.ip(), datagram, dst);
        // A data packet that decrypted (a keepalive, the initiator's first
        // packet when it has nothing else to send, comes back as Done).
        // Round trips are timed from the clock: `now` is the loop's time.
        if let Some(index) = data_index
            && path.times_session(index)
            && matches!(
                result,
                TunnResult::WriteToTunnelV4(..)
                    | TunnResult::WriteToTunnelV6(..)
                    | TunnResult::Done
            )
        {
            path.received(index, Instant::now());
        }
        match result {
            TunnResult::WriteToNetwork(reply) if reply.first() == Some(&COOKIE_REPLY) => {
                std::hint::cold_path();
                // An unauthenticated answer: send it, but do not let it move
                // the peer's endpoint.
                self.paths.send(&io.udp, back, reply);
            }
            TunnResult::WriteToNetwork(reply) => {
                std::hint::cold_path();
                // A handshake message that decrypted: the peer proved its key.
                authenticated = true;
                if is_response {
                    path.answered(Instant::now());
                } else if let Some(index) = response_index(reply) {
                    path.responded(index, Instant::now());
                }
                self.paths.send(&io.udp, back, reply);
                // Flush packets queued while the handshake was in progress.
                while let TunnResult::WriteToNetwork(queued) =
                    tunn.decapsulate(None, &[], &mut self.out)
                {
                    self.paths.send(&io.udp, back, queued);
                }
            }
            TunnResult::WriteToTunnelV4(packet, src) => {
                authenticated = true;
                let allowed = allowed_ips.iter().any(|n| n.contains(&IpAddr::V4(src)));
                if admit(&mut self.filter, allowed, packet, now) {
                    delivered = Some(packet.len());
                }
            }
            TunnResult::WriteToTunnelV6(packet, src) => {
                authenticated = true;
                let allowed = allowed_ips.iter().any(|n| n.contains(&IpAddr::V6(src)));
                if admit(&mut self.filter, allowed, packet, now) {
                    delivered = Some(packet.len());
                }
            }
            TunnResult::Err(e) => {
                std::hint::cold_path();
                tracing::debug!(peer = %name, error = ?e, "decapsulate failed")
            }
            TunnResult::Done => std::hint::cold_path(),
        }
        if authenticated {
            match source {
                Source::Direct(from) | Source::Connected(from) => {
                    *endpoint = Some(from);
                    // A handshake initiation proves only that this way in
                    // works; data and responses prove the way out too.
                    if is_data || is_response {
                        route.direct_at = Some(now);
                        if route.via_relay {
                            std::hint::cold_path();
                            tracing::info!(peer = %name, endpoint = %from, "direct path found; leaving the relay");
                            route.via_relay = false;
                        }
                        // A proven endpoint: its own connected socket.
                        if let Source::Direct(_) = source {
                            self.connected.connect(from, now);
                        }
                    }
                }
                Source::Relay(_) => {
                    std::hint::cold_path();
                    if is_data {
                        route.relay_data += 1;
                    }
                    let direct_fresh = route
                        .direct_at
                        .is_some_and(|at| now.saturating_duration_since(at) < DIRECT_FRESH);
                    if !direct_fresh && !route.via_relay {
                        tracing::info!(peer = %name, "no direct path answers; relaying");
                        route.via_relay = true;
                    }
                }
            }
        }
        if let Some(len) = delivered {
            if !into_slot {
                std::hint::cold_path();
                // Not decrypted into the slot (never expected): copy it there.
                if let (Some(slot), Some(packet)) = (tun_out.slot(len), self.out.get(..len)) {
                    slot.copy_from_slice(packet);
                }
            }
            tun_out.commit(len);
        }
    }
}

/// The index of ours a handshake response gives the session it opens
/// (its sender index); `None` for any other message.
fn response_index(message: &[u8]) -> Option<u32> {
    if message.first() != Some(&super::HANDSHAKE_RESPONSE) {
        return None;
    }
    let index = message.get(4..8)?;
    Some(u32::from_le_bytes(index.try_into().ok()?))
}
