//! The machine's own addresses: the interface candidates peers may reach
//! the WireGuard socket at, and the moment they change (a laptop on a new
//! network), which the data plane answers at once (new STUN request, new
//! handshakes on every path) instead of waiting for its timers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::sync::watch;

/// How often the interface addresses are read (one `getifaddrs`).
pub const POLL: Duration = Duration::from_secs(1);
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
}

/// The candidates among `(interface, address)` pairs: IPv4 (the socket is
/// IPv4), not loopback, link-local, unspecified or on the overlay
/// interface, each with the socket's port; private networks first, at
/// most [`MAX_CANDIDATES`].
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
pub fn current(socket: &Socket) -> Vec<SocketAddr> {
    match if_addrs::get_if_addrs() {
        Ok(list) => candidates(socket, list.into_iter().map(|i| (i.name.clone(), i.ip()))),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the interface addresses");
            Vec::new()
        }
    }
}

/// Publishes the candidates into `tx` whenever they change, until every
/// receiver is gone.
pub async fn watch_loop(socket: Socket, tx: watch::Sender<Vec<SocketAddr>>) {
    let mut interval = tokio::time::interval(POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let now = current(&socket);
        let changed = tx.send_if_modified(|known| {
            if *known == now {
                return false;
            }
            tracing::info!(from = ?known, to = ?now, "interface addresses changed");
            *known = now;
            true
        });
        if !changed && tx.is_closed() {
            return;
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

    #[test]
    fn a_socket_bound_to_one_address_has_no_other_candidates() {
        let found = candidates(&socket("127.0.0.1:4000"), ifs(&[("eth0", "10.0.0.2")]));
        assert!(found.is_empty());
    }

    #[test]
    fn no_more_than_the_server_takes() {
        let many: Vec<(String, IpAddr)> = (1..=20)
            .map(|i| ("eth0".to_owned(), IpAddr::from([10, 0, 0, i])))
            .collect();
        assert_eq!(candidates(&socket("0.0.0.0:1"), many).len(), MAX_CANDIDATES);
    }
}
