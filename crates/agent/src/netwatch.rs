//! The machine's own addresses: the interface candidates peers may reach
//! the WireGuard socket at, and the moment they change (a laptop on a new
//! network), which the data plane answers at once (new STUN request, new
//! handshakes on every path) instead of waiting for its timers.
//!
//! The kernel tells of each change: a netlink socket subscribed to link
//! and address events wakes the watcher, which then reads the list once.
//! An idle machine costs no wake-up here but a slow safety read. Where
//! the subscription cannot be made, the list is read every second.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::time::Duration;

use ipnet::Ipv4Net;
use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SocketFlags, SocketType};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

/// How often the interface addresses are read without change events.
pub const POLL: Duration = Duration::from_secs(1);
/// How often they are read anyway while change events come (in case an
/// event was missed).
pub const SAFETY_POLL: Duration = Duration::from_secs(30);
/// A burst of events (a network coming up sends a dozen) is read as one
/// change after this quiet time.
const SETTLE: Duration = Duration::from_millis(50);
/// `RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR`.
const GROUPS: u32 = 0x1 | 0x10 | 0x100;
/// Candidates reported at most (the server takes no more).
pub const MAX_CANDIDATES: usize = 8;

/// Where this daemon's WireGuard socket listens, and what to leave out.
#[derive(Clone, Debug)]
pub struct Socket {
    /// The bound address: a socket bound to one address has no other
    /// candidates than the address the server already sees.
    pub bound: SocketAddr,
    /// The overlay interface (its addresses are the tunnel itself).
    pub tun_name: String,
    /// The overlay range routed into the tunnel ([`crate::tunio::TunIo::routed`]):
    /// an address in it on another interface (a second overlay, another
    /// VPN on 100.64.0.0/10) cannot carry this tunnel, and the server
    /// refuses a report that offers one.
    pub routed: Option<Ipv4Net>,
}

/// The candidates among `(interface, address)` pairs: IPv4 (the socket is
/// IPv4), not loopback, link-local, unspecified or on the overlay
/// interface or inside the routed overlay range, each with the socket's
/// port; private networks first, at most [`MAX_CANDIDATES`].
pub fn candidates(
    socket: &Socket,
    interfaces: impl IntoIterator<Item = (String, IpAddr)>,
) -> Vec<SocketAddr> {
    if !socket.bound.ip().is_unspecified() {
        return Vec::new();
    }
    let mut found: Vec<Ipv4Addr> = interfaces
        .into_iter()
        .filter(|(name, _)| *name != socket.tun_name)
        .filter_map(|(_, ip)| match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .filter(|v4| {
            !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.is_multicast())
        })
        .filter(|v4| !socket.routed.is_some_and(|net| net.contains(v4)))
        .collect();
    found.sort_by_key(|v4| (!v4.is_private(), *v4));
    found.dedup();
    found.truncate(MAX_CANDIDATES);
    found
        .into_iter()
        .map(|v4| SocketAddr::from((v4, socket.bound.port())))
        .collect()
}

/// The candidates now, from the kernel's interface list. An error reading
/// it gives none (the public endpoint still works).
///
/// Point-to-point interfaces are left out: a TUN device or a kernel
/// WireGuard, GRE or IPIP tunnel is another overlay, and a peer sending to
/// its address would carry this tunnel inside that one (found in the
/// benchmark: with boringtun's and wireguard-go's tunnels up beside it,
/// ztmesh's traffic went through one of them at 400 Mbit/s instead of
/// 4 Gbit/s directly). A PPP link's address is reached through its far
/// end anyway, which the public endpoint (STUN) covers.
pub fn current(socket: &Socket) -> Vec<SocketAddr> {
    use nix::net::if_::InterfaceFlags;
    match nix::ifaddrs::getifaddrs() {
        Ok(list) => candidates(
            socket,
            list.filter(|i| !i.flags.contains(InterfaceFlags::IFF_POINTOPOINT))
                .filter_map(|i| {
                    let addr = i.address?;
                    let v4 = addr.as_sockaddr_in()?;
                    Some((i.interface_name, IpAddr::V4(v4.ip())))
                }),
        ),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the interface addresses");
            Vec::new()
        }
    }
}

/// Publishes the candidates into `tx` whenever they change, until every
/// receiver is gone.
pub async fn watch_loop(socket: Socket, tx: watch::Sender<Vec<SocketAddr>>) {
    let mut events = match Events::subscribe() {
        Ok(events) => Some(events),
        Err(e) => {
            tracing::info!(error = %e, every = ?POLL, "no netlink address events; reading the interface list on a timer");
            None
        }
    };
    loop {
        match &mut events {
            Some(subscribed) => {
                if tokio::time::timeout(SAFETY_POLL, subscribed.next())
                    .await
                    .is_ok_and(|r| r.is_err())
                {
                    tracing::info!(every = ?POLL, "netlink address events failed; reading the interface list on a timer");
                    events = None;
                }
            }
            None => tokio::time::sleep(POLL).await,
        }
        if !publish(&socket, &tx) && tx.is_closed() {
            return;
        }
    }
}

/// Reads the candidates and publishes them if they changed; whether they did.
fn publish(socket: &Socket, tx: &watch::Sender<Vec<SocketAddr>>) -> bool {
    let now = current(socket);
    tx.send_if_modified(|known| {
        if *known == now {
            return false;
        }
        tracing::info!(from = ?known, to = ?now, "interface addresses changed");
        *known = now;
        true
    })
}

/// Registers the netlink socket with the reactor. As for the WireGuard
/// socket (`wgsock.rs`): tokio deprecates the safe constructor for types
/// whose descriptor could change or close under it; an `OwnedFd` owns
/// its descriptor for its whole life, which is what the unsafe
/// replacement asks the caller to promise.
#[allow(deprecated)]
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::new(fd)
}

/// Link and address change events from the kernel (rtnetlink multicast).
struct Events {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
}

impl Events {
    fn subscribe() -> io::Result<Self> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )?;
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, GROUPS))?;
        Ok(Self {
            fd: register(fd)?,
            buf: vec![0; 16 * 1024],
        })
    }

    /// Waits for the next burst of events and drains it. The events are
    /// not parsed: any of them means "read the list again". A full
    /// socket buffer (`ENOBUFS`: events were lost) counts as an event too.
    async fn next(&mut self) -> io::Result<()> {
        self.drain_when_readable().await?;
        // Let the rest of a burst arrive, then take it with this change.
        loop {
            match tokio::time::timeout(SETTLE, self.drain_when_readable()).await {
                Ok(result) => result?,
                Err(_) => return Ok(()),
            }
        }
    }

    async fn drain_when_readable(&mut self) -> io::Result<()> {
        let mut guard = self.fd.readable().await?;
        loop {
            match rustix::net::recv(guard.get_inner(), &mut self.buf[..], RecvFlags::empty()) {
                Ok(_) => {}
                Err(rustix::io::Errno::NOBUFS) => {}
                Err(rustix::io::Errno::AGAIN) => {
                    guard.clear_ready();
                    return Ok(());
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(bound: &str) -> Socket {
        Socket {
            bound: bound.parse().unwrap(),
            tun_name: "ztmesh0".into(),
            routed: Some("100.64.0.0/10".parse().unwrap()),
        }
    }

    fn ifs(list: &[(&str, &str)]) -> Vec<(String, IpAddr)> {
        list.iter()
            .map(|(n, ip)| ((*n).to_owned(), ip.parse().unwrap()))
            .collect()
    }

    #[test]
    fn candidates_are_the_usable_ipv4_addresses_private_first() {
        let found = candidates(
            &socket("0.0.0.0:51820"),
            ifs(&[
                ("lo", "127.0.0.1"),
                ("eth0", "203.0.113.7"),
                ("ztmesh0", "100.64.0.3"),
                ("wlan0", "192.168.1.20"),
                ("eth1", "169.254.3.3"),
                ("eth0", "2001:db8::7"),
                ("docker0", "172.17.0.1"),
                ("eth0", "203.0.113.7"),
            ]),
        );
        let want: Vec<SocketAddr> = [
            "172.17.0.1:51820",
            "192.168.1.20:51820",
            "203.0.113.7:51820",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(found, want);
    }

    /// Found in the benchmark: a second overlay's TUN (100.100.0.1, inside
    /// this one's 100.64.0.0/10) was offered, and the server refused the
    /// whole report, so no peer learnt any of this device's addresses.
    #[test]
    fn an_address_inside_the_routed_overlay_on_another_interface_is_no_candidate() {
        let interfaces = ifs(&[
            ("ztmesh1", "100.100.0.1"),
            ("tailscale0", "100.101.2.3"),
            ("eth0", "10.77.0.1"),
            ("cgnat0", "100.128.0.1"),
        ]);
        let found = candidates(&socket("0.0.0.0:51820"), interfaces.clone());
        let want: Vec<SocketAddr> = ["10.77.0.1:51820", "100.128.0.1:51820"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(found, want);
        // A device that routes no range (the in-memory TUN) leaves them in.
        let unrouted = Socket {
            routed: None,
            ..socket("0.0.0.0:51820")
        };
        assert_eq!(candidates(&unrouted, interfaces).len(), 4);
    }

    #[test]
    fn a_socket_bound_to_one_address_has_no_other_candidates() {
        let found = candidates(&socket("127.0.0.1:4000"), ifs(&[("eth0", "10.0.0.2")]));
        assert!(found.is_empty());
    }

    /// The kernel's events reach the watcher: in a network namespace of
    /// the test's own, nothing wakes it while nothing changes, and adding
    /// an address does, after which the address is a candidate. Needs root
    /// (as CI has) for the namespace; says so and passes without it.
    #[test]
    fn an_address_added_wakes_the_watcher() {
        let Some(seen) = crate::test_netns::in_own_namespace("netwatch", watch_in_namespace) else {
            return;
        };
        assert!(
            seen.contains(&"10.77.0.9:51820".parse().unwrap()),
            "the candidates after the change are {seen:?}"
        );
        assert!(
            !seen.contains(&"10.55.0.1:51820".parse().unwrap()),
            "a TUN device's address is offered: {seen:?}"
        );
    }

    fn ip(args: &[&str]) -> bool {
        crate::test_netns::run(&[&["ip"], args].concat())
    }

    /// Inside the namespace: subscribes, adds an address there and returns
    /// the candidates once woken.
    fn watch_in_namespace(name: &str) -> Vec<SocketAddr> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut events = Events::subscribe().unwrap();
            let quiet = tokio::time::timeout(Duration::from_millis(300), events.next()).await;
            assert!(quiet.is_err(), "woken with nothing changed: {quiet:?}");
            assert!(ip(&[
                "-n", name, "link", "add", "zt-nw0", "type", "veth", "peer", "name", "zt-nw1"
            ]));
            assert!(ip(&[
                "-n",
                name,
                "addr",
                "add",
                "10.77.0.9/24",
                "dev",
                "zt-nw0"
            ]));
            tokio::time::timeout(Duration::from_secs(2), events.next())
                .await
                .expect("no event within 2 s of the change")
                .unwrap();
            // Another overlay's TUN device: point-to-point, no candidate.
            assert!(ip(&[
                "-n", name, "tuntap", "add", "dev", "zt-nwtun", "mode", "tun"
            ]));
            assert!(ip(&[
                "-n",
                name,
                "addr",
                "add",
                "10.55.0.1",
                "peer",
                "10.55.0.2",
                "dev",
                "zt-nwtun"
            ]));
            current(&socket("0.0.0.0:51820"))
        })
    }

    #[test]
    fn no_more_than_the_server_takes() {
        let many: Vec<(String, IpAddr)> = (1..=20)
            .map(|i| ("eth0".to_owned(), IpAddr::from([10, 0, 0, i])))
            .collect();
        assert_eq!(candidates(&socket("0.0.0.0:1"), many).len(), MAX_CANDIDATES);
    }
}
