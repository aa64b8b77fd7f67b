//! The UDP side of the data plane in batches: `recvmmsg` with UDP GRO on
//! receive, `sendmsg` with UDP GSO on send (both through quinn-udp, which
//! checks at run time what the kernel supports and falls back to one
//! datagram a call when it has neither).

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};

use crate::batch::UdpSendBatch;
use crate::connected::ConnectedSockets;
use crate::driver::would_block;
use crate::wgsock::WgSocket;

/// Receive buffers per system call.
const RECV_BUFFERS: usize = 8;
/// Bytes per receive buffer: a GRO super-datagram is at most 64 KiB.
const RECV_BUFFER_BYTES: usize = 65_536;

/// The socket's offload state and the receive buffers.
pub struct Wire {
    state: UdpSocketState,
    bufs: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
    received: usize,
}

impl Wire {
    /// Sets the socket up for batched I/O (GRO on where the kernel has it).
    /// The same state reads and writes the connected sockets beside it
    /// ([`prepare`]d alike).
    pub fn new(udp: &WgSocket) -> io::Result<Self> {
        let state = UdpSocketState::new(udp.socket().into())?;
        allow_fragmentation(udp);
        no_tos_or_destination(udp);
        tracing::info!(
            gso_segments = state.max_gso_segments(),
            gro_segments = state.gro_segments(),
            "UDP offloads"
        );
        Ok(Self {
            state,
            bufs: vec![vec![0; RECV_BUFFER_BYTES]; RECV_BUFFERS],
            meta: vec![RecvMeta::default(); RECV_BUFFERS],
            received: 0,
        })
    }

    /// Reads what is waiting, without waiting: returns `Ok(false)` when
    /// nothing was. The datagrams are then in [`datagrams`](Self::datagrams).
    ///
    /// One `recvmmsg` into all the buffers. A read that fills fewer
    /// messages than it has buffers stopped at the empty queue, so the
    /// socket is marked drained and the read that would only find nothing
    /// is not made: a wake-up for one datagram (a ping, a request) costs
    /// one system call, not two.
    pub fn try_recv(&mut self, udp: &WgSocket) -> io::Result<bool> {
        self.received = 0;
        // Drained (or no edge since the last empty read): not even the
        // `WouldBlock` the read would make up.
        if !udp.may_read() {
            return Ok(false);
        }
        match self.recv(udp) {
            Ok(n) => {
                self.received = n;
                Ok(n > 0)
            }
            Err(e) if would_block(&e) => Ok(false),
            Err(e) => {
                std::hint::cold_path();
                Err(e)
            }
        }
    }

    /// One `recvmmsg` into all the buffers (through quinn-udp). Out of
    /// line: inlined, quinn-udp's message headers made the frame of the
    /// data plane's socket reader 8,240 bytes (568 without), and that
    /// frame sits above the whole receive path (decryption, the filter)
    /// on every wake-up, which then ran on two more pages of stack, each
    /// a TLB miss when the caches are cold.
    #[inline(never)]
    fn recv(&mut self, udp: &WgSocket) -> io::Result<usize> {
        let Self {
            state, bufs, meta, ..
        } = self;
        let mut it = bufs.iter_mut();
        let mut slices: [IoSliceMut<'_>; RECV_BUFFERS] = std::array::from_fn(|_| {
            IoSliceMut::new(it.next().map_or(&mut [][..], Vec::as_mut_slice))
        });
        udp.try_read(|socket| state.recv(socket.into(), &mut slices, meta))
            .inspect(|&n| {
                if n < RECV_BUFFERS {
                    // recvmmsg stopped at the empty queue.
                    udp.drained();
                }
            })
    }

    /// The datagram of the last read, with its sender, when the read
    /// found one plain datagram (no GRO super-datagram, no second
    /// message): a wake-up for a ping or a request handles it without
    /// the splitting in [`datagrams`](Self::datagrams).
    pub fn lone(&self) -> Option<(SocketAddr, &[u8])> {
        if self.received != 1 {
            return None;
        }
        let (meta, buf) = (self.meta.first()?, self.bufs.first()?);
        if meta.stride != 0 && meta.stride < meta.len {
            return None;
        }
        Some((meta.addr, buf.get(..meta.len)?))
    }

    /// The datagrams of the last read, each with its sender, split at the
    /// GRO stride.
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.meta
            .iter()
            .zip(&self.bufs)
            .take(self.received)
            .flat_map(|(meta, buf)| {
                let data = buf.get(..meta.len).unwrap_or_default();
                let stride = if meta.stride == 0 {
                    meta.len.max(1)
                } else {
                    meta.stride
                };
                data.chunks(stride).map(move |d| (meta.addr, d))
            })
    }

    /// Sends the batch's datagrams, a GSO run per call, without waiting,
    /// and empties it. `false` when the socket's buffer is full: what was
    /// not sent stays in the batch, to go once there is room
    /// ([`WgSocket::room`]). Other errors lose the datagrams, as UDP
    /// loses them anyway.
    ///
    /// A lone datagram (a ping, a request, a keepalive) goes with a plain
    /// `sendto`: it needs no control message, and the smaller path is
    /// what a cold wake-up pays for (measured: the kernel took 31 µs for
    /// it, against 41 µs for quinn-udp's `sendmsg`).
    pub fn try_flush(
        &self,
        udp: &WgSocket,
        connected: &ConnectedSockets,
        batch: &mut UdpSendBatch,
    ) -> bool {
        if let Some((to, datagram)) = batch.lone() {
            let link = connected.socket_for(to);
            let mut sent = match link {
                Some(link) => link.try_send(datagram),
                None => udp.try_send_to(datagram, to),
            };
            if let Err(e) = &sent
                && !would_block(e)
                && link.is_some()
            {
                std::hint::cold_path();
                // The link's source address may be gone: the shared
                // socket picks one afresh.
                connected.send_failed(to, e);
                sent = udp.try_send_to(datagram, to);
            }
            match sent {
                Err(e) if would_block(&e) => return false,
                Err(e) => {
                    std::hint::cold_path();
                    tracing::debug!(to = %to, error = %e, "udp send failed");
                }
                Ok(_) => {}
            }
        } else {
            let max_segments = self.state.max_gso_segments();
            while let Some(run) = batch.runs(max_segments).next() {
                let transmit = Transmit {
                    destination: run.to,
                    ecn: None,
                    contents: run.contents,
                    segment_size: run.segment_size,
                    src_ip: None,
                };
                let count = run.count;
                let link = connected.socket_for(run.to);
                let mut sent = self.transmit(link.unwrap_or(udp), &transmit);
                if let Sent::Failed(e) = &sent
                    && link.is_some()
                {
                    connected.send_failed(run.to, e);
                    sent = self.transmit(udp, &transmit);
                }
                match sent {
                    Sent::Full => return false,
                    Sent::Failed(e) => {
                        tracing::debug!(to = %run.to, error = %e, "udp send failed");
                    }
                    Sent::Done => {}
                }
                batch.mark_sent(count);
            }
        }
        batch.clear();
        true
    }

    /// One run. A GSO send the kernel refuses (quinn-udp then turns GSO
    /// off for good on EIO; a link whose MTU is below the segment size
    /// refuses with EINVAL) goes again one datagram at a time, which the
    /// kernel may fragment; should the buffer fill during that, the rest
    /// of the run is lost, as the kernel's own queue would drop it.
    fn transmit(&self, udp: &WgSocket, transmit: &Transmit<'_>) -> Sent {
        let e = match self.state.try_send(udp.socket().into(), transmit) {
            Ok(()) => return Sent::Done,
            Err(e) if would_block(&e) => return Sent::Full,
            Err(e) => e,
        };
        let Some(size) = transmit.segment_size else {
            return Sent::Failed(e);
        };
        tracing::debug!(to = %transmit.destination, error = %e, "GSO send refused; sending the datagrams one by one");
        for (i, datagram) in transmit.contents.chunks(size.max(1)).enumerate() {
            match udp.try_send_to(datagram, transmit.destination) {
                Ok(_) => {}
                // Nothing went: the socket itself fails.
                Err(e) if i == 0 && e.kind() != io::ErrorKind::WouldBlock => {
                    return Sent::Failed(e);
                }
                Err(e) => {
                    tracing::debug!(to = %transmit.destination, error = %e, "udp send failed");
                    break;
                }
            }
        }
        Sent::Done
    }
}

/// How a run's send went.
enum Sent {
    Done,
    /// The socket's buffer is full; nothing was sent.
    Full,
    /// The socket refused it: nothing was sent.
    Failed(io::Error),
}

/// Sets a further WireGuard socket up as [`Wire::new`] does the first.
pub fn prepare(udp: &WgSocket) -> io::Result<()> {
    UdpSocketState::new(udp.socket().into())?;
    allow_fragmentation(udp);
    no_tos_or_destination(udp);
    Ok(())
}

/// quinn-udp asks the kernel for each datagram's TOS byte and destination
/// address; WireGuard uses neither, and each is a control message built
/// and decoded per read.
fn no_tos_or_destination(udp: &WgSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    let socket = udp.socket();
    let off = match udp.local_addr() {
        Ok(SocketAddr::V6(_)) => {
            rustix::net::sockopt::set_ipv6_recvtclass(socket, false).is_ok()
                && setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &false).is_ok()
        }
        _ => {
            rustix::net::sockopt::set_ip_recvtos(socket, false).is_ok()
                && setsockopt(socket, sockopt::Ipv4PacketInfo, &false).is_ok()
        }
    };
    if !off {
        tracing::debug!("could not turn the TOS and destination control messages off");
    }
}

/// quinn-udp forbids fragmentation: it is made for QUIC, which probes the
/// path MTU itself. WireGuard does not probe; like the kernel's WireGuard,
/// let the kernel fragment a datagram that a smaller link cannot carry
/// whole, rather than have it lost without a word.
fn allow_fragmentation(udp: &WgSocket) {
    let udp = udp.socket();
    let v4 = rustix::net::sockopt::set_ip_mtu_discover(
        udp,
        rustix::net::sockopt::Ipv4PathMtuDiscovery::DONT,
    );
    let v6 = match udp.local_addr() {
        Ok(SocketAddr::V6(_)) => rustix::net::sockopt::set_ipv6_mtu_discover(
            udp,
            rustix::net::sockopt::Ipv6PathMtuDiscovery::DONT,
        ),
        _ => Ok(()),
    };
    if let Err(e) = v4.and(v6) {
        tracing::debug!(error = %e, "could not allow fragmentation on the WireGuard socket");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_gso_run_arrives_whole_datagram_by_datagram_and_fragmentation_stays_allowed() {
        let a = crate::bind_udp(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let b = crate::bind_udp(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let wire_a = Wire::new(&a).unwrap();
        let mut wire_b = Wire::new(&b).unwrap();
        assert_eq!(
            rustix::net::sockopt::ip_mtu_discover(a.socket()).unwrap(),
            rustix::net::sockopt::Ipv4PathMtuDiscovery::DONT
        );
        let mut batch = UdpSendBatch::default();
        let mut sent = Vec::new();
        for i in 0..20u8 {
            let len = if i == 19 { 300 } else { 1_000 };
            batch.room()[..len].fill(i);
            batch.commit(len, b_addr);
            sent.push(vec![i; len]);
        }
        assert!(wire_a.try_flush(&a, &ConnectedSockets::default(), &mut batch));
        assert!(batch.is_empty());
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), async {
            while got.len() < sent.len() {
                // What the driver does on an edge; here, a look each
                // millisecond.
                b.source().flag.set();
                tokio::time::sleep(Duration::from_millis(1)).await;
                while wire_b.try_recv(&b).unwrap() {
                    for (from, datagram) in wire_b.datagrams() {
                        assert_eq!(from, a_addr);
                        got.push(datagram.to_vec());
                    }
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(got, sent);
    }

    /// Reads until `want` datagrams came, checking after each read that
    /// the socket is marked drained exactly when the read filled fewer
    /// messages than there are buffers; returns the messages per read and
    /// the datagrams with their senders.
    async fn read_checking_drained(
        wire: &mut Wire,
        udp: &WgSocket,
        want: usize,
    ) -> (Vec<usize>, Vec<(SocketAddr, Vec<u8>)>) {
        let (mut reads, mut got) = (Vec::new(), Vec::new());
        tokio::time::timeout(Duration::from_secs(5), async {
            while reads.iter().sum::<usize>() < want {
                // What the driver does on an edge.
                udp.source().flag.set();
                while wire.try_recv(udp).unwrap() {
                    // Messages, not GRO segments (loopback merges none).
                    let n = wire.received;
                    assert_eq!(
                        udp.may_read(),
                        n == RECV_BUFFERS,
                        "after a read of {n} into {RECV_BUFFERS} buffers"
                    );
                    reads.push(n);
                    got.extend(wire.datagrams().map(|(from, d)| (from, d.to_vec())));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap();
        (reads, got)
    }

    #[tokio::test]
    async fn a_read_that_empties_the_queue_marks_the_socket_drained() {
        let a = crate::bind_udp(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let b = crate::bind_udp(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut wire_b = Wire::new(&b).unwrap();

        // One datagram: the read that takes it proves the queue empty, so
        // the one after makes no system call.
        a.try_send_to(b"ping", b_addr).unwrap();
        let (reads, got) = read_checking_drained(&mut wire_b, &b, 1).await;
        assert_eq!(reads, [1]);
        assert_eq!(got, [(a_addr, b"ping".to_vec())]);
        assert!(!b.may_read());
        assert!(!wire_b.try_recv(&b).unwrap());

        // More than the buffers hold: a read that fills them all leaves
        // the socket readable.
        let sent = RECV_BUFFERS * 2 + 3;
        for _ in 0..sent {
            a.try_send_to(&[7; 100], b_addr).unwrap();
        }
        let (reads, got) = read_checking_drained(&mut wire_b, &b, sent).await;
        assert_eq!(reads.iter().sum::<usize>(), sent);
        assert_eq!(got.len(), sent);
        assert!(!b.may_read());
    }
}
