//! The TUN side of the data plane, behind a small trait so tests can use an
//! in-memory device.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use anyhow::{Result, anyhow, bail};
use ipnet::Ipv4Net;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use crate::batch::{HEADROOM, TunReadBatch, TunWriteBatch};
use crate::driver::{Readable, ReadyFlag};

mod vnet;

/// A device that carries whole IP packets.
///
/// The data plane waits with [`poll_readable`](Self::poll_readable) and
/// then reads with [`try_recv_batch`](Self::try_recv_batch) until nothing
/// is left: a poll, not a future made anew on every turn of the loop.
pub trait TunIo: Send + Sync + 'static {
    /// Ready when a read may find a packet (it can still find none: the
    /// read then reports `Ok(false)` and the next poll waits again).
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Reads what is already waiting, without waiting: `Ok(false)` when
    /// nothing is. One read can be a TCP super-packet that arrives split
    /// into its segments.
    fn try_recv_batch(&self, batch: &mut TunReadBatch) -> io::Result<bool>;

    /// Writes the batch's packets (coalescing them where the device can)
    /// and empties it, without waiting. A packet that cannot be written is
    /// dropped, as a full device queue would; only a dead device is an
    /// error.
    fn send_batch(&self, batch: &mut TunWriteBatch) -> io::Result<()>;

    /// The descriptor the data plane driver waits on, with the flag it
    /// sets; `None` for a device that wakes its poller itself.
    fn source(&self) -> Option<Readable> {
        None
    }

    /// The reader stops here without reading the device empty: `true`
    /// when the device's readiness is level-triggered (the next wait
    /// reports what is left), having marked it not readable for now;
    /// `false` for a device that must be read until a read finds nothing.
    fn stop_reading(&self) -> bool {
        false
    }

    /// Packets the local stack may answer at once were just written
    /// (an echo request, a TCP segment): the answer may already be there,
    /// so the next read goes ahead without waiting for epoll to say so.
    fn wrote(&self) {}

    /// The interface's name, when it is a kernel interface (its addresses
    /// are the overlay's, never a path to a peer).
    fn interface_name(&self) -> Option<&str> {
        None
    }

    /// The range the device's route sends into the tunnel: an address in
    /// it, on whatever interface, is no path to a peer (packets to it
    /// would go into the tunnel they are meant to carry).
    fn routed(&self) -> Option<Ipv4Net> {
        None
    }
}

/// A real kernel TUN device, with TCP segmentation and receive offloads
/// (virtio-net header) when the kernel has them. Non-blocking; reads
/// follow the data plane driver's readiness flag (the device is not
/// registered with the async runtime).
pub struct KernelTun {
    device: tun_rs::SyncDevice,
    name: String,
    routed: Ipv4Net,
    readable: ReadyFlag,
}

impl KernelTun {
    /// Whether the device carries offloaded super-packets.
    pub fn offload(&self) -> bool {
        self.device.tcp_gso()
    }
}

impl TunIo for KernelTun {
    fn poll_readable(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Not ready registers no waker: the driver polls again when epoll
        // reports the device.
        if self.readable.is_set() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn source(&self) -> Option<Readable> {
        Some(Readable {
            fd: self.device.as_raw_fd(),
            flag: self.readable.clone(),
            written_locally: true,
            level_triggered: true,
        })
    }

    fn stop_reading(&self) -> bool {
        self.readable.clear();
        true
    }

    fn wrote(&self) {
        self.readable.set();
    }

    fn interface_name(&self) -> Option<&str> {
        Some(&self.name)
    }

    fn routed(&self) -> Option<Ipv4Net> {
        Some(self.routed)
    }

    fn try_recv_batch(&self, batch: &mut TunReadBatch) -> io::Result<bool> {
        if !self.readable.is_set() {
            batch.set_count(0);
            return Ok(false);
        }
        let offload = self.device.tcp_gso();
        let read = if offload {
            self.device.recv(&mut batch.original)
        } else {
            // One packet, no header: straight into the first buffer.
            self.device.recv(batch.single_buffer())
        };
        match read {
            Ok(len) if offload => unpack_read(batch, len),
            Ok(len) => batch.set_single(len),
            Err(e) if crate::driver::would_block(&e) => {
                self.readable.clear();
                batch.set_count(0);
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        Ok(true)
    }

    fn send_batch(&self, batch: &mut TunWriteBatch) -> io::Result<()> {
        let count = batch.count;
        batch.count = 0;
        let Some(bufs) = batch.bufs.get_mut(..count) else {
            return Ok(());
        };
        // Non-blocking: a full device queue drops, as the kernel would.
        let written = match bufs {
            [one] => self.write_one(one),
            _ => self
                .device
                .send_multiple(&mut batch.gro, bufs, HEADROOM)
                .map(drop),
        };
        match written {
            Ok(()) => Ok(()),
            Err(e) => {
                std::hint::cold_path();
                if e.raw_os_error() == Some(libc::EBADFD) {
                    return Err(e);
                }
                tracing::debug!(error = %e, "tun write failed");
                Ok(())
            }
        }
    }
}

impl KernelTun {
    /// Writes a lone packet (a ping, a request) without the coalescing
    /// pass: there is nothing to merge it with, and the pass's tables are
    /// memory a cold wake-up would otherwise touch. With offloads its
    /// virtio header is all zeros (no segmentation, checksums complete),
    /// which is what the coalescing pass writes for a packet it leaves
    /// alone.
    fn write_one(&self, buf: &mut [u8]) -> io::Result<()> {
        let packet = if self.device.tcp_gso() {
            if let Some(header) = buf.get_mut(..HEADROOM) {
                header.fill(0);
            }
            &buf[..]
        } else {
            buf.get(HEADROOM..).unwrap_or_default()
        };
        self.device.send(packet).map(drop)
    }
}

/// Takes apart an offload device's read of `len` bytes in `batch`
/// ([`vnet::unpack`]). A read that cannot be taken apart loses that one
/// packet (the batch is left empty) and the device goes on.
fn unpack_read(batch: &mut TunReadBatch, len: usize) {
    batch.set_count(0);
    let TunReadBatch {
        original,
        bufs,
        sizes,
        ..
    } = &mut *batch;
    let unpacked = match original.get_mut(..len) {
        Some(raw) => vnet::unpack(raw, bufs, sizes),
        None => Err(io::Error::other("TUN read longer than its buffer")),
    };
    match unpacked {
        Ok(vnet::Unpacked::InPlace(len)) => batch.set_in_place(len),
        Ok(vnet::Unpacked::Split(count)) => batch.set_count(count),
        Err(e) => {
            std::hint::cold_path();
            tracing::debug!(error = %e, "tun read dropped");
        }
    }
}

/// MTU of the overlay interface: 1500 minus WireGuard and outer UDP/IPv4 overhead, with room for IPv6 outer headers.
pub const OVERLAY_MTU: u16 = 1420;

/// Creates and brings up the TUN device with our overlay address; the
/// prefix routes the whole overlay range through it. With `offload`, the
/// device is asked for TCP segmentation and receive offloads; a kernel
/// that refuses them gets a plain device instead.
pub fn create_kernel_tun(
    name: &str,
    address: Ipv4Addr,
    prefix: u8,
    offload: bool,
) -> Result<KernelTun> {
    let routed = Ipv4Net::new(address, prefix)
        .map_err(|e| anyhow!("overlay prefix /{prefix}: {e}; give a prefix length of 0 to 32"))?
        .trunc();
    let build = |offload: bool| {
        tun_rs::DeviceBuilder::new()
            .name(name)
            .ipv4(address, prefix, None)
            .mtu(OVERLAY_MTU)
            .offload(offload)
            .enable(true)
            .build_sync()
            .and_then(|device| {
                device.set_nonblocking(true)?;
                Ok(device)
            })
    };
    let device = match build(offload) {
        Ok(device) => device,
        Err(e) if offload && !is_fatal(&e) => {
            tracing::info!(error = %e, "TUN offloads unavailable; using a plain TUN device");
            build(false).map_err(|e| explain(name, &e))?
        }
        Err(e) => return Err(explain(name, &e)),
    };
    let device = KernelTun {
        device,
        name: name.to_owned(),
        routed,
        readable: ReadyFlag::new(),
    };
    tracing::info!(
        tun = name,
        tcp_offload = device.offload(),
        udp_offload = device.device.udp_gso(),
        "TUN device up"
    );
    Ok(device)
}

/// Errors that another set of flags cannot cure.
fn is_fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM | libc::EACCES | libc::EBUSY | libc::ENOENT)
    )
}

fn explain(name: &str, e: &io::Error) -> anyhow::Error {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => anyhow!(
            "cannot create the TUN device `{name}`: permission denied; ztmesh needs root or the CAP_NET_ADMIN capability (and access to /dev/net/tun): run it with sudo, or `setcap cap_net_admin+ep` on the binary"
        ),
        Some(libc::EBUSY) => anyhow!(
            "cannot create the TUN device `{name}`: it is in use by another daemon or program; stop that one, or choose another interface with --tun"
        ),
        _ => anyhow!(
            "cannot create the TUN device `{name}`: {text}; check that /dev/net/tun exists (modprobe tun)"
        ),
    }
}

/// Whether this process may create TUN devices (root or CAP_NET_ADMIN).
/// Checked before enrollment so a missing permission does not burn a
/// single-use join token.
pub fn check_net_admin() -> Result<()> {
    const CAP_NET_ADMIN: u32 = 12;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    if effective & (1 << CAP_NET_ADMIN) == 0 {
        bail!(
            "ztmesh up needs root or the CAP_NET_ADMIN capability to create its TUN device: run it with sudo, or `setcap cap_net_admin+ep` on the binary"
        );
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        bail!(
            "/dev/net/tun does not exist: load the tun module (`modprobe tun`) or give the container the device"
        );
    }
    Ok(())
}

/// An in-memory TUN for tests: packets the "kernel" sends in come from one
/// channel, packets the data plane writes go to another. Its readiness is
/// level-triggered, as a kernel device's is under the driver: a poll
/// looks at the channel, so the reader may stop after any packet.
pub struct ChannelTun {
    inbound: Mutex<Inbound>,
    outbound: mpsc::Sender<Vec<u8>>,
    empty_reads: Arc<AtomicU64>,
}

/// The receiving end, with the packet a poll found and no read took yet.
struct Inbound {
    packets: mpsc::Receiver<Vec<u8>>,
    peeked: Option<Vec<u8>>,
}

/// The test's end of a [`ChannelTun`].
pub struct ChannelTunHandle {
    /// Send packets "from local applications".
    pub to_dataplane: mpsc::Sender<Vec<u8>>,
    /// Receive packets delivered "to local applications".
    pub from_dataplane: mpsc::Receiver<Vec<u8>>,
    empty_reads: Arc<AtomicU64>,
}

impl ChannelTunHandle {
    /// Reads by the data plane that found nothing waiting.
    pub fn empty_reads(&self) -> u64 {
        self.empty_reads.load(Ordering::Relaxed)
    }
}

impl ChannelTun {
    /// A connected pair.
    pub fn pair() -> (ChannelTun, ChannelTunHandle) {
        let (to_dataplane, packets) = mpsc::channel(256);
        let (outbound, from_dataplane) = mpsc::channel(256);
        let empty_reads = Arc::new(AtomicU64::new(0));
        (
            ChannelTun {
                inbound: Mutex::new(Inbound {
                    packets,
                    peeked: None,
                }),
                outbound,
                empty_reads: Arc::clone(&empty_reads),
            },
            ChannelTunHandle {
                to_dataplane,
                from_dataplane,
                empty_reads,
            },
        )
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "test TUN closed")
}

impl TunIo for ChannelTun {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inbound = self.inbound.lock().unwrap_or_else(PoisonError::into_inner);
        if inbound.peeked.is_some() {
            return Poll::Ready(Ok(()));
        }
        match inbound.packets.poll_recv(cx) {
            Poll::Ready(Some(packet)) => {
                inbound.peeked = Some(packet);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(None) => Poll::Ready(Err(closed())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn try_recv_batch(&self, batch: &mut TunReadBatch) -> io::Result<bool> {
        let mut inbound = self.inbound.lock().unwrap_or_else(PoisonError::into_inner);
        let packet = match inbound.peeked.take() {
            Some(packet) => packet,
            None => match inbound.packets.try_recv() {
                Ok(packet) => packet,
                Err(TryRecvError::Empty) => {
                    self.empty_reads.fetch_add(1, Ordering::Relaxed);
                    batch.set_count(0);
                    return Ok(false);
                }
                Err(TryRecvError::Disconnected) => return Err(closed()),
            },
        };
        let buf = batch.single_buffer();
        let len = packet.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..len), packet.get(..len)) {
            dst.copy_from_slice(src);
        }
        batch.set_single(len);
        Ok(true)
    }

    fn stop_reading(&self) -> bool {
        // The next poll looks at the channel again.
        true
    }

    fn send_batch(&self, batch: &mut TunWriteBatch) -> io::Result<()> {
        for packet in batch.packets() {
            // A full channel drops the packet, as a real TUN queue would.
            let _ = self.outbound.try_send(packet.to_vec());
        }
        batch.clear();
        Ok(())
    }
}
