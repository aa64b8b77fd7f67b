//! The UDP side of the data plane in batches: `recvmmsg` with UDP GRO on
//! receive, `sendmsg` with UDP GSO on send (both through quinn-udp, which
//! checks at run time what the kernel supports and falls back to one
//! datagram a call when it has neither).

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::batch::UdpSendBatch;

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
    pub fn new(udp: &UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new(udp.into())?;
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
    pub fn try_recv(&mut self, udp: &UdpSocket) -> io::Result<bool> {
        self.received = 0;
        let Self {
            state, bufs, meta, ..
        } = self;
        let mut it = bufs.iter_mut();
        let mut slices: [IoSliceMut<'_>; RECV_BUFFERS] = std::array::from_fn(|_| {
            IoSliceMut::new(it.next().map_or(&mut [][..], Vec::as_mut_slice))
        });
        match udp.try_io(Interest::READABLE, || {
            state.recv(udp.into(), &mut slices, meta)
        }) {
            Ok(n) => {
                self.received = n;
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
    pub async fn flush(&self, udp: &UdpSocket, batch: &mut UdpSendBatch) {
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

    /// One send; waits while the socket buffer is full. Other errors lose
    /// the datagrams, as UDP loses them anyway (quinn-udp turns GSO off
    /// when the kernel or the device refuses it).
    async fn transmit(&self, udp: &UdpSocket, transmit: &Transmit<'_>) {
        loop {
            match udp.try_io(Interest::WRITABLE, || {
                self.state.try_send(udp.into(), transmit)
            }) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if udp.writable().await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(to = %transmit.destination, error = %e, "udp send failed");
                    return;
                }
            }
        }
    }
}
