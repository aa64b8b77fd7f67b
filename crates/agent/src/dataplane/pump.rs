//! Moving packets when a socket is readable: the TUN side (route,
//! outbound filter, encrypt, send) and the UDP side (the WireGuard
//! socket, the connected sockets that fired, and the relay's packets,
//! all through the receive path into the TUN). Synchronous: the one wait,
//! for room in a full socket buffer, is the loop's.

use std::net::SocketAddr;
use std::time::Instant;

use boringtun::noise::TunnResult;
use tokio::sync::mpsc;
use ztmesh_filter::{DropReason, Verdict};

use super::paths::{self, via};
use super::receive::Source;
use super::{Batches, Engine, Io, RELAY_READS_PER_WAKE, TUN_READS_PER_WAKE, UDP_READS_PER_WAKE};
use crate::batch::{TunWriteBatch, UdpSendBatch};
use crate::driver;
use crate::too_big;
use crate::tunio::TunIo;
use crate::udpio::Wire;
use crate::wgsock::WgSocket;

impl Engine {
    /// Encrypts the TUN read that woke us and what else waits on the
    /// device (a few dozen reads at most; with offloads each can be all
    /// segments of a super-packet) into the send batch, and sends it with
    /// as few system calls as GSO allows. Stops early, leaving the rest in
    /// the batch, when the socket's buffer is full: the loop waits for
    /// room, and the device, still marked readable, is read again on the
    /// next turn. Only a dead TUN is an error.
    ///
    /// A lone packet (a ping, a request) ends the reading when the device
    /// can say later whether more came ([`TunIo::stop_reading`]), unless
    /// `streak`: the turn before read the device too and may have left
    /// packets, so this one is part of a stream and reads on (one packet
    /// per turn would lose the batching). Returns whether this turn may
    /// have left some: it stopped after a lone packet, or a second read
    /// found more.
    pub(super) fn on_tun_ready<T: TunIo>(
        &mut self,
        io: &Io<T>,
        wire: &Wire,
        batches: &mut Batches,
        streak: bool,
    ) -> std::io::Result<bool> {
        let now = driver::now();
        let Batches {
            tun_in,
            udp_out,
            tun_out,
        } = batches;
        let mut left = false;
        'turn: {
            for read in 0..TUN_READS_PER_WAKE {
                // A read stopped by a full send buffer goes on first.
                if !tun_in.has_pending() && !io.tun.try_recv_batch(tun_in)? {
                    break;
                }
                left = read > 0;
                while let Some(packet) = tun_in.pending() {
                    if udp_out.needs_flush(packet.len())
                        && !wire.try_flush(&io.udp, &self.connected, udp_out)
                    {
                        break 'turn;
                    }
                    self.on_tun(packet, now, udp_out, tun_out);
                    tun_in.advance();
                }
                // A lone packet that woke us (a ping, a request) leaves
                // before any further read, after letting its sender sleep
                // (driver::yield_before_send); a flood still leaves in GSO
                // batches of the reads after it.
                if read == 0 && tun_in.count == 1 {
                    if udp_out.lone().is_some() {
                        driver::yield_before_send();
                    }
                    if !wire.try_flush(&io.udp, &self.connected, udp_out) {
                        break 'turn;
                    }
                    // No read that finds nothing after it: on one CPU the
                    // peer we just woke would wait for that system call.
                    if !streak && io.tun.stop_reading() {
                        left = true;
                        break 'turn;
                    }
                }
            }
            wire.try_flush(&io.udp, &self.connected, udp_out);
        }
        // "Packet too big" answers for the local stack.
        if !tun_out.is_empty() {
            std::hint::cold_path();
            io.tun.send_batch(tun_out)?;
        }
        Ok(left)
    }

    /// Route by allowed IPs, outbound filter, encrypt into the send batch.
    /// A packet for a relayed peer that the relay's datagrams cannot hold
    /// and that must not be fragmented is answered with "packet too big"
    /// in `tun_out` instead (`too_big.rs`).
    fn on_tun(
        &mut self,
        packet: &[u8],
        now: Instant,
        udp_out: &mut UdpSendBatch,
        tun_out: &mut TunWriteBatch,
    ) {
        // The kernel's own IPv6 chatter and traffic to non-peers ends here.
        // The filter checks the whole header next; routing needs only the
        // destination.
        let Some(dst) = ztmesh_filter::routing_destination(packet) else {
            return;
        };
        let Some(id) = self.peers.route(dst) else {
            return;
        };
        if let Verdict::Drop(_) = self.filter.outbound(packet, now) {
            return;
        }
        let Some(peer) = self.peers.at_mut(id) else {
            return;
        };
        let way = via(peer);
        match peer.sending_tunn().encapsulate(packet, udp_out.room()) {
            TunnResult::WriteToNetwork(datagram) => match way {
                Some(paths::Via::Direct(endpoint)) => {
                    if datagram.first() == Some(&super::HANDSHAKE_INIT) {
                        std::hint::cold_path();
                        // No session yet: boringtun started a handshake.
                        // Timed like ours (its round trip, so from the
                        // clock, not the loop's time), and relayed should
                        // the endpoint not answer.
                        peer.path.probed(datagram, Instant::now());
                    }
                    let len = datagram.len();
                    udp_out.commit(len, endpoint);
                }
                Some(paths::Via::Relay(key)) => {
                    std::hint::cold_path();
                    if let Some(mtu) = self.paths.relay_mtu()
                        && packet.len() > usize::from(mtu)
                        && too_big::must_not_fragment(packet)
                    {
                        // Dropped, as a router drops it (WireGuard's
                        // receiver skips the unused counter).
                        self.filter.record_drop(DropReason::TooBig, packet.len());
                        answer_too_big(packet, mtu, tun_out);
                    } else if self.paths.relay(key, datagram) {
                        peer.route.relay_data += 1;
                    }
                }
                None => std::hint::cold_path(),
            },
            TunnResult::Err(e) => {
                std::hint::cold_path();
                tracing::debug!(peer = %peer.info.name, error = ?e, "encapsulate failed")
            }
            _ => std::hint::cold_path(),
        }
    }

    /// Reads what waits on the WireGuard socket and on the connected
    /// sockets that fired (a few `recvmmsg` calls each at most), decrypts
    /// and filters it into the TUN batch, and writes that batch; `true`
    /// when what it wrote may have been answered at once (the device is
    /// then read in this turn). Only a dead TUN device is an error.
    pub(super) fn on_udp_ready<T: TunIo>(
        &mut self,
        io: &Io<T>,
        wire: &mut Wire,
        batches: &mut Batches,
    ) -> std::io::Result<bool> {
        let tun_out = &mut batches.tun_out;
        // Most often only a connected socket fired: the shared one is
        // skipped without a look.
        let mut answered = io.udp.may_read()
            && self.on_socket_ready(io, wire, &io.udp, Source::Direct, tun_out)?;
        if self.connected.poll_ready() {
            let ready = self.connected.take_ready();
            let mut read = Ok(());
            for &id in &ready {
                let Some(socket) = self.connected.socket(id) else {
                    continue;
                };
                match self.on_socket_ready(io, wire, &socket, Source::Connected, tun_out) {
                    Ok(more) => answered |= more,
                    Err(e) => read = Err(e),
                }
                // Not read empty: its share of the turn ran out.
                if socket.may_read() {
                    self.connected.still_ready(id);
                }
            }
            self.connected.done_reading(ready);
            read?;
        }
        Ok(answered)
    }

    /// Reads one socket (a few `recvmmsg` calls at most) into the TUN
    /// batch and writes that batch; `true` when what it wrote may have
    /// been answered at once ([`TunWriteBatch::take_answered`]).
    fn on_socket_ready<T: TunIo>(
        &mut self,
        io: &Io<T>,
        wire: &mut Wire,
        udp: &WgSocket,
        source: fn(SocketAddr) -> Source,
        tun_out: &mut TunWriteBatch,
    ) -> std::io::Result<bool> {
        let mut answered = false;
        for _ in 0..UDP_READS_PER_WAKE {
            match wire.try_recv(udp) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    std::hint::cold_path();
                    // ICMP port unreachable from a peer surfaces here on Linux; not fatal.
                    tracing::debug!(error = %e, "udp receive error");
                    break;
                }
            }
            let now = driver::now();
            // A lone datagram skips the iterator that splits GRO
            // super-datagrams.
            let lone = wire.lone();
            if let Some((from, datagram)) = lone {
                self.receive(io, source(from), datagram, now, tun_out)?;
            } else {
                for (from, datagram) in wire.datagrams() {
                    self.receive(io, source(from), datagram, now, tun_out)?;
                }
            }
            // Deliver before the next read: a read finds up to eight GRO
            // super-datagrams, enough to coalesce. A read that emptied the
            // queue (a lone packet's, most often) marked the socket
            // drained, so the next one returns at once, with no system
            // call.
            if !tun_out.is_empty() {
                io.tun.send_batch(tun_out)?;
            }
            if tun_out.take_answered() {
                io.tun.wrote();
                answered = true;
            }
        }
        Ok(answered)
    }

    /// One datagram through the receive path into the TUN batch, which
    /// is written first if it is full.
    fn receive<T: TunIo>(
        &mut self,
        io: &Io<T>,
        source: Source,
        datagram: &[u8],
        now: Instant,
        tun_out: &mut TunWriteBatch,
    ) -> std::io::Result<()> {
        if tun_out.is_full() {
            io.tun.send_batch(tun_out)?;
        }
        self.on_packet(io, source, datagram, now, tun_out);
        Ok(())
    }

    /// Packets from the relay: the one that woke us and what else waits
    /// (a few dozen at most), through the same receive path as UDP. Out
    /// of line: the loop's direct packet path stays compact.
    #[inline(never)]
    pub(super) fn on_relay<T: TunIo>(
        &mut self,
        io: &Io<T>,
        first: ztmesh_relay::Frame,
        relay_in: &mut mpsc::Receiver<ztmesh_relay::Frame>,
        batches: &mut Batches,
    ) -> std::io::Result<()> {
        let now = driver::now();
        let tun_out = &mut batches.tun_out;
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(frame) = next.take() {
            self.receive(io, Source::Relay(frame.key), &frame.payload, now, tun_out)?;
            taken += 1;
            if taken < RELAY_READS_PER_WAKE {
                next = relay_in.try_recv().ok();
            }
        }
        if !tun_out.is_empty() {
            io.tun.send_batch(tun_out)?;
        }
        if tun_out.take_answered() {
            io.tun.wrote();
        }
        Ok(())
    }
}

/// Queues for the TUN the "packet too big" answer to `packet`, for a next
/// hop of `mtu` bytes.
#[cold]
fn answer_too_big(packet: &[u8], mtu: u16, tun_out: &mut TunWriteBatch) {
    let written = tun_out
        .slot(too_big::MAX_ANSWER)
        .and_then(|slot| too_big::answer(packet, mtu, slot));
    match written {
        Some(len) => tun_out.commit(len),
        None => tracing::debug!(
            len = packet.len(),
            mtu,
            "packet too big for the relay dropped unanswered"
        ),
    }
}
