//! The TUN side of the data plane, behind a small trait so tests can use an
//! in-memory device.

use std::future::Future;
use std::io;
use std::net::Ipv4Addr;

use anyhow::{Result, bail};
use tokio::sync::{Mutex, mpsc};

/// A device that carries whole IP packets.
pub trait TunIo: Send + Sync + 'static {
    /// Reads one packet into `buf`; returns its length.
    fn recv(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<usize>> + Send;
    /// Writes one packet.
    fn send(&self, packet: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
}

/// A real kernel TUN device.
pub struct KernelTun {
    device: tun::AsyncDevice,
}

impl TunIo for KernelTun {
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.device.recv(buf).await
    }

    async fn send(&self, packet: &[u8]) -> io::Result<()> {
        self.device.send(packet).await.map(|_| ())
    }
}

/// MTU of the overlay interface: 1500 minus WireGuard and outer UDP/IPv4 overhead, with room for IPv6 outer headers.
pub const OVERLAY_MTU: u16 = 1420;

/// Creates and brings up the TUN device with our overlay address; the
/// prefix routes the whole overlay range through it.
pub fn create_kernel_tun(name: &str, address: Ipv4Addr, prefix: u8) -> Result<KernelTun> {
    let netmask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    let mut config = tun::Configuration::default();
    config
        .tun_name(name)
        .address(address)
        .netmask(Ipv4Addr::from(netmask))
        .mtu(OVERLAY_MTU)
        .up();
    match tun::create_as_async(&config) {
        Ok(device) => Ok(KernelTun { device }),
        Err(e) => {
            let text = e.to_string();
            if text.contains("ermission")
                || text.contains("EPERM")
                || text.contains("not permitted")
            {
                bail!(
                    "cannot create the TUN device `{name}`: permission denied; ztmesh needs root or the CAP_NET_ADMIN capability (and access to /dev/net/tun): run it with sudo, or `setcap cap_net_admin+ep` on the binary"
                );
            }
            if text.contains("busy") || text.contains("EBUSY") {
                bail!(
                    "cannot create the TUN device `{name}`: it is in use by another daemon or program; stop that one, or choose another interface with --tun"
                );
            }
            bail!(
                "cannot create the TUN device `{name}`: {text}; check that /dev/net/tun exists (modprobe tun)"
            )
        }
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
/// channel, packets the data plane writes go to another.
pub struct ChannelTun {
    inbound: Mutex<mpsc::Receiver<Vec<u8>>>,
    outbound: mpsc::Sender<Vec<u8>>,
}

/// The test's end of a [`ChannelTun`].
pub struct ChannelTunHandle {
    /// Send packets "from local applications".
    pub to_dataplane: mpsc::Sender<Vec<u8>>,
    /// Receive packets delivered "to local applications".
    pub from_dataplane: mpsc::Receiver<Vec<u8>>,
}

impl ChannelTun {
    /// A connected pair.
    pub fn pair() -> (ChannelTun, ChannelTunHandle) {
        let (to_dataplane, inbound) = mpsc::channel(256);
        let (outbound, from_dataplane) = mpsc::channel(256);
        (
            ChannelTun {
                inbound: Mutex::new(inbound),
                outbound,
            },
            ChannelTunHandle {
                to_dataplane,
                from_dataplane,
            },
        )
    }
}

impl TunIo for ChannelTun {
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let packet = self
            .inbound
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "test TUN closed"))?;
        let len = packet.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..len), packet.get(..len)) {
            dst.copy_from_slice(src);
        }
        Ok(len)
    }

    async fn send(&self, packet: &[u8]) -> io::Result<()> {
        // A full channel drops the packet, as a real TUN queue would.
        let _ = self.outbound.try_send(packet.to_vec());
        Ok(())
    }
}
