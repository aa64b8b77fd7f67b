//! The UDP side of the data plane in batches: `recvmmsg` with UDP GRO on
//! receive, `sendmsg` with UDP GSO on send (both through quinn-udp, which
//! checks at run time what the kernel supports and falls back to one
//! datagram a call when it has neither).

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use std::os::fd::AsRawFd;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
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
    /// Room for the one control message a single read asks for.
    cmsg: Vec<u8>,
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
            cmsg: nix::cmsg_space!(i32),
        })
    }

    /// Reads what is waiting, without waiting: returns `Ok(false)` when
    /// nothing was. The datagrams are then in [`datagrams`](Self::datagrams).
    ///
    /// `first` asks for one message (a GRO super-datagram or a lone
    /// datagram): what a wake-up most often finds is one packet, and one
    /// receive buffer keeps the call small; the reads after it, under
    /// load, take up to all the buffers at once.
    pub fn try_recv(&mut self, udp: &WgSocket, first: bool) -> io::Result<bool> {
        self.received = 0;
        let read = if first {
            self.recv_one(udp)
        } else {
            self.recv_many(udp)
        };
        match read {
            Ok(n) => {
                self.received = n;
                Ok(true)
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
    /// on every wake-up for one datagram too, which then ran on two more
    /// pages of stack, each a TLB miss when the caches are cold.
    #[inline(never)]
    fn recv_many(&mut self, udp: &WgSocket) -> io::Result<usize> {
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

    /// One `recvmsg` into the first buffer, asking only for the GRO
    /// segment size. quinn-udp's `recvmmsg` readies 32 message headers
    /// (2 KiB of stack zeroed) and decodes every control message, which a
    /// wake-up for one datagram pays for with cold caches.
    fn recv_one(&mut self, udp: &WgSocket) -> io::Result<usize> {
        let Self {
            bufs, meta, cmsg, ..
        } = self;
        let (Some(buf), Some(meta)) = (bufs.first_mut(), meta.first_mut()) else {
            return Ok(0);
        };
        udp.try_read(|socket| {
            let mut iov = [IoSliceMut::new(buf)];
            let msg = recvmsg::<SockaddrStorage>(
                socket.as_raw_fd(),
                &mut iov,
                Some(cmsg),
                MsgFlags::empty(),
            )?;
            let mut stride = 0;
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::UdpGroSegments(size) = c {
                    stride = usize::try_from(size).unwrap_or(0);
                }
            }
            let addr = msg
                .address
                .as_ref()
                .and_then(socket_addr)
                .ok_or_else(|| io::Error::other("a datagram with no IP source address"))?;
            meta.addr = addr;
            meta.len = msg.bytes;
            meta.stride = stride;
            Ok(1)
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
/// and decoded per read (and one [`recv_one`](Wire::recv_one) does not
/// expect).
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

/// The IP address and port of a received datagram's source.
fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
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
        let mut reads = 0;
        tokio::time::timeout(Duration::from_secs(5), async {
            while got.len() < sent.len() {
                // What the driver does on an edge; here, a look each
                // millisecond.
                b.source().flag.set();
                tokio::time::sleep(Duration::from_millis(1)).await;
                // The first read as a wake-up does it (one message, GRO
                // super-datagram or not), then batches of them.
                while wire_b.try_recv(&b, reads == 0).unwrap() {
                    reads += 1;
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
}
