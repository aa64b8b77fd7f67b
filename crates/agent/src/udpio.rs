//! The UDP side of the data plane in batches: `recvmmsg` with UDP GRO on
//! receive, `sendmsg` with UDP GSO on send (both through quinn-udp, which
//! checks at run time what the kernel supports and falls back to one
//! datagram a call when it has neither).

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};

use crate::batch::UdpSendBatch;
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
    pub fn new(udp: &WgSocket) -> io::Result<Self> {
        let state = UdpSocketState::new(udp.socket().into())?;
        allow_fragmentation(udp);
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
    pub fn try_recv(&mut self, udp: &WgSocket) -> io::Result<bool> {
        self.received = 0;
        let Self {
            state, bufs, meta, ..
        } = self;
        let mut it = bufs.iter_mut();
        let mut slices: [IoSliceMut<'_>; RECV_BUFFERS] = std::array::from_fn(|_| {
            IoSliceMut::new(it.next().map_or(&mut [][..], Vec::as_mut_slice))
        });
        match udp.try_read(|socket| state.recv(socket.into(), &mut slices, meta)) {
            Ok(n) => {
                self.received = n;
                if n < RECV_BUFFERS {
                    // recvmmsg stopped at the empty queue.
                    udp.drained();
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
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

    /// Sends the batch's datagrams, a GSO run per call, and empties it.
    pub async fn flush(&self, udp: &WgSocket, batch: &mut UdpSendBatch) {
        for run in batch.runs(self.state.max_gso_segments()) {
            let transmit = Transmit {
                destination: run.to,
                ecn: None,
                contents: run.contents,
                segment_size: run.segment_size,
                src_ip: None,
            };
            self.transmit(udp, &transmit).await;
        }
        batch.clear();
    }

    /// One run. A GSO send the kernel refuses (quinn-udp then turns GSO
    /// off for good on EIO; a link whose MTU is below the segment size
    /// refuses with EINVAL) goes again one datagram at a time, which the
    /// kernel may fragment.
    async fn transmit(&self, udp: &WgSocket, transmit: &Transmit<'_>) {
        let Err(e) = self.send_one(udp, transmit).await else {
            return;
        };
        let Some(size) = transmit.segment_size else {
            tracing::debug!(to = %transmit.destination, error = %e, "udp send failed");
            return;
        };
        tracing::debug!(to = %transmit.destination, error = %e, "GSO send refused; sending the datagrams one by one");
        for datagram in transmit.contents.chunks(size.max(1)) {
            let single = Transmit {
                contents: datagram,
                segment_size: None,
                ..transmit.clone()
            };
            if let Err(e) = self.send_one(udp, &single).await {
                tracing::debug!(to = %transmit.destination, error = %e, "udp send failed");
            }
        }
    }

    /// One send; waits while the socket buffer is full. Other errors lose
    /// the datagrams, as UDP loses them anyway.
    async fn send_one(&self, udp: &WgSocket, transmit: &Transmit<'_>) -> io::Result<()> {
        udp.send_with(|socket| self.state.try_send(socket.into(), transmit))
            .await
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
        wire_a.flush(&a, &mut batch).await;
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
}
