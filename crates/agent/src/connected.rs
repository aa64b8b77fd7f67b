//! Connected UDP sockets, one per peer endpoint that carries traffic.
//!
//! The WireGuard socket is unconnected: every send makes the kernel look
//! the route up, and every datagram it receives is routed again on the
//! way in. A socket connected to the peer's endpoint, bound to the same
//! port (`SO_REUSEPORT`), keeps its route: sends skip the lookup, and the
//! kernel's early demultiplexing hands the peer's datagrams to it without
//! an input route lookup. On an idle link every one of those lookups runs
//! with cold caches; boringtun does the same for that reason (its
//! `--disable-connected-udp` run was 4 % slower per ping here).
//!
//! A link is made when an authenticated packet from a peer comes through
//! the shared socket (so its endpoint is proven), and dropped when no
//! peer uses that endpoint any more, when a send on it fails (its source
//! address went away), and all at once when the machine's addresses
//! change: a connected socket keeps the source address it was given at
//! `connect`, so after a roam it would go on sending from an address the
//! machine no longer has. The shared socket stays for
//! everything else: handshakes to every path, STUN, new and roaming
//! peers. Its port is taken without `SO_REUSEPORT` (so a second daemon on
//! the port still fails to start), and shared only after.

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;

use crate::driver::{self, Watch};
use crate::wgsock::WgSocket;

/// How long after a failed attempt a link to the same endpoint is not
/// tried again (a full descriptor table, say).
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// One connected socket.
struct Link {
    /// Dropped first: the descriptor leaves epoll before it closes.
    _watch: Watch,
    /// Shared with the read going on, which may outlive the link.
    socket: Rc<WgSocket>,
    /// A send failed on it: nothing more goes through it, and it is
    /// closed at the next tidying.
    broken: Cell<bool>,
}

/// The connected sockets of the data plane, by the id the driver gives
/// their watch.
#[derive(Default)]
pub struct ConnectedSockets {
    /// The address and port they share with the WireGuard socket;
    /// `None`: links are off.
    local: Option<SocketAddr>,
    links: Vec<Option<Link>>,
    by_remote: HashMap<SocketAddr, usize, RandomState>,
    /// The endpoint last looked up, with its link: a reply goes where
    /// the packet it answers came from, found without hashing. Forgotten
    /// whenever a link closes.
    last: Cell<Option<(SocketAddr, usize)>>,
    /// Links the driver reported readable and not yet read empty.
    ready: Vec<usize>,
    /// The list being read, kept for its memory.
    reading: Vec<usize>,
    /// Endpoints whose link could not be made, and when.
    failed: HashMap<SocketAddr, Instant, RandomState>,
}

impl ConnectedSockets {
    /// Connected sockets beside `shared`, the bound WireGuard socket, which is made
    /// shareable for them. With `enabled` false, or when the socket
    /// cannot be shared, there are none and everything goes through
    /// `shared`.
    pub fn new(shared: &WgSocket, enabled: bool) -> Self {
        if !enabled {
            return Self::default();
        }
        let local = shared.local_addr().and_then(|local| {
            rustix::net::sockopt::set_socket_reuseport(shared.socket(), true)?;
            Ok(local)
        });
        match local {
            Ok(local) => Self {
                local: Some(local),
                ..Self::default()
            },
            Err(e) => {
                tracing::info!(error = %e, "cannot share the WireGuard port; no connected sockets per peer");
                Self::default()
            }
        }
    }

    /// The connected socket for `remote`, if there is one that works.
    pub fn socket_for(&self, remote: SocketAddr) -> Option<&WgSocket> {
        let link = self.link(remote)?;
        (!link.broken.get()).then_some(&*link.socket)
    }

    fn link(&self, remote: SocketAddr) -> Option<&Link> {
        let id = match self.last.get() {
            Some((last, id)) if last == remote => id,
            _ => {
                let id = *self.by_remote.get(&remote)?;
                self.last.set(Some((remote, id)));
                id
            }
        };
        self.links.get(id)?.as_ref()
    }

    /// A send to `remote` on its link failed with something other than
    /// a full buffer: its traffic goes through the shared socket from now
    /// on, and the link is closed at the next [`retain`](Self::retain)
    /// (and tried again after a while).
    pub fn send_failed(&self, remote: SocketAddr, error: &io::Error) {
        if let Some(link) = self.link(remote)
            && !link.broken.replace(true)
        {
            tracing::info!(%remote, %error, "a send on the connected socket to the peer failed; using the shared one");
        }
    }

    /// Closes every link: the machine's addresses changed, and a link
    /// keeps the source address it got when it was made. The next
    /// authenticated packet from a peer makes its link anew.
    pub fn clear(&mut self) {
        self.last.set(None);
        self.links.iter_mut().for_each(|slot| *slot = None);
        self.by_remote.clear();
        self.ready.clear();
        self.failed.clear();
    }

    /// The socket with this id, to read while the data plane goes on.
    pub fn socket(&self, id: usize) -> Option<Rc<WgSocket>> {
        Some(Rc::clone(&self.links.get(id)?.as_ref()?.socket))
    }

    /// Whether `remote` has a link (or links are off, or one was tried
    /// lately): nothing to do for it.
    pub fn settled(&self, remote: SocketAddr, now: Instant) -> bool {
        self.local.is_none()
            || self.by_remote.contains_key(&remote)
            || self
                .failed
                .get(&remote)
                .is_some_and(|at| now.saturating_duration_since(*at) < RETRY_AFTER)
    }

    /// Makes a link to `remote`, a peer endpoint proven by an
    /// authenticated packet. A failure is logged and remembered; the
    /// peer's traffic goes through the shared socket meanwhile.
    pub fn connect(&mut self, remote: SocketAddr, now: Instant) {
        let Some(local) = self.local else {
            return;
        };
        if self.settled(remote, now) {
            return;
        }
        match open(local, remote) {
            Ok(link) => {
                let id = link._watch.id();
                if self.links.len() <= id {
                    self.links.resize_with(id + 1, || None);
                }
                if let Some(slot) = self.links.get_mut(id) {
                    *slot = Some(link);
                    self.by_remote.insert(remote, id);
                    self.failed.remove(&remote);
                    // A datagram may have come before the watch.
                    self.ready.push(id);
                    tracing::debug!(%remote, "connected socket to the peer's endpoint");
                }
            }
            Err(e) => {
                tracing::info!(%remote, error = %e, "cannot open a connected socket to the peer; using the shared one");
                self.failed.insert(remote, now);
            }
        }
    }

    /// Keeps only the links whose endpoint `keep` still wants and on
    /// which no send failed.
    pub fn retain(&mut self, mut keep: impl FnMut(SocketAddr) -> bool) {
        self.last.set(None);
        let links = &mut self.links;
        let failed = &mut self.failed;
        let now = Instant::now();
        self.by_remote.retain(|remote, id| {
            let Some(slot) = links.get_mut(*id) else {
                return false;
            };
            let broken = slot.as_ref().is_some_and(|link| link.broken.get());
            if broken {
                failed.insert(*remote, now);
            }
            let kept = !broken && keep(*remote);
            if !kept {
                *slot = None;
            }
            kept
        });
        let links = &self.links;
        self.ready
            .retain(|id| links.get(*id).is_some_and(Option::is_some));
        self.failed.retain(|_, at| at.elapsed() < RETRY_AFTER);
    }

    /// Takes what the driver reported readable; `true` when some link
    /// waits to be read.
    pub fn poll_ready(&mut self) -> bool {
        if self.local.is_some() {
            driver::take_ready(&mut self.ready);
        }
        !self.ready.is_empty()
    }

    /// The links to read now. The caller hands the list back with
    /// [`done_reading`](Self::done_reading), and those it left unread
    /// with [`still_ready`](Self::still_ready).
    pub fn take_ready(&mut self) -> Vec<usize> {
        let mut list = std::mem::take(&mut self.reading);
        list.append(&mut self.ready);
        list
    }

    /// A link read only in part (its share of the turn ran out).
    pub fn still_ready(&mut self, id: usize) {
        self.ready.push(id);
    }

    /// The list from [`take_ready`](Self::take_ready), read.
    pub fn done_reading(&mut self, mut list: Vec<usize>) {
        list.clear();
        self.reading = list;
    }

    /// How many links are open.
    pub fn len(&self) -> usize {
        self.by_remote.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.by_remote.is_empty()
    }
}

/// A socket bound where the shared one is (`local`) and connected to
/// `remote`, with the shared one's options (buffers, UDP GRO, no
/// fragmentation ban), watched by the data plane's driver.
fn open(local: SocketAddr, remote: SocketAddr) -> io::Result<Link> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(remote),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    rustix::net::sockopt::set_socket_reuseport(&socket, true)?;
    crate::size_buffers(&socket);
    socket.set_nonblocking(true)?;
    // The shared socket's address when the families match (a daemon
    // bound to one address); else any address of the remote's family.
    let ip = match (local.ip(), remote) {
        (ip @ IpAddr::V4(_), SocketAddr::V4(_)) | (ip @ IpAddr::V6(_), SocketAddr::V6(_)) => ip,
        (_, SocketAddr::V4(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (_, SocketAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    socket.bind(&SocketAddr::new(ip, local.port()).into())?;
    socket.connect(&remote.into())?;
    let socket = WgSocket::from_std(socket.into())?;
    crate::udpio::prepare(&socket)?;
    let source = socket.source();
    let watch = driver::watch(source.fd, source.flag)?;
    Ok(Link {
        _watch: watch,
        socket: Rc::new(socket),
        broken: Cell::new(false),
    })
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::task::Poll;

    use super::*;

    /// Polls until `ready` holds, the driver sleeping in between.
    async fn until(mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        std::future::poll_fn(|_| {
            if ready() {
                Poll::Ready(())
            } else {
                assert!(Instant::now() < deadline, "timed out");
                Poll::Pending
            }
        })
        .await;
    }

    fn recv(socket: &WgSocket) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = [0u8; 64];
        let (n, from) = socket.try_read(|s| s.recv_from(&mut buf)).ok()?;
        Some((buf[..n].to_vec(), from))
    }

    #[test]
    fn a_proven_endpoint_gets_a_connected_socket_that_takes_its_datagrams() {
        let shared = crate::bind_udp(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let ours = shared.local_addr().unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let outsider = UdpSocket::bind("127.0.0.1:0").unwrap();
        let remote = peer.local_addr().unwrap();
        let sources = [shared.source()];
        driver::block_on(
            async {
                let mut connected = ConnectedSockets::new(&shared, true);
                // Shared only now: a second daemon still cannot take the port.
                let taken = crate::bind_udp(ours).unwrap_err();
                assert!(format!("{taken:#}").contains("--listen-port"), "{taken:#}");
                assert!(connected.socket_for(remote).is_none());
                assert!(!connected.settled(remote, Instant::now()));
                connected.connect(remote, Instant::now());
                assert_eq!(connected.len(), 1);
                assert!(connected.settled(remote, Instant::now()));
                let id = *connected.by_remote.get(&remote).unwrap();
                let link = connected.socket(id).unwrap();

                // The peer's datagrams go to its socket; anyone else's to
                // the shared one.
                peer.send_to(b"from the peer", ours).unwrap();
                outsider.send_to(b"from elsewhere", ours).unwrap();
                let mut from_peer = None;
                until(|| {
                    if connected.poll_ready() {
                        let ready = connected.take_ready();
                        assert_eq!(ready, vec![id], "only the peer's socket fired");
                        from_peer = recv(&link);
                        connected.done_reading(ready);
                    }
                    from_peer.is_some()
                })
                .await;
                assert_eq!(from_peer, Some((b"from the peer".to_vec(), remote)));
                let mut from_outsider = None;
                until(|| {
                    from_outsider = from_outsider.take().or_else(|| recv(&shared));
                    from_outsider.is_some()
                })
                .await;
                assert_eq!(
                    from_outsider,
                    Some((b"from elsewhere".to_vec(), outsider.local_addr().unwrap()))
                );

                // What it sends comes from the WireGuard port.
                connected
                    .socket_for(remote)
                    .unwrap()
                    .try_send(b"answer")
                    .unwrap();
                let mut buf = [0u8; 16];
                peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let (n, from) = peer.recv_from(&mut buf).unwrap();
                assert_eq!((&buf[..n], from), (&b"answer"[..], ours));

                // An endpoint no peer uses any more loses its socket, and
                // its datagrams come to the shared one again.
                drop(link);
                connected.retain(|_| false);
                assert!(connected.is_empty());
                peer.send_to(b"again", ours).unwrap();
                let mut again = None;
                until(|| {
                    again = again.take().or_else(|| recv(&shared));
                    again.is_some()
                })
                .await;
                assert_eq!(again, Some((b"again".to_vec(), remote)));
            },
            &sources,
        )
        .unwrap();
    }

    #[test]
    fn a_failed_send_or_a_network_change_closes_links() {
        let shared = crate::bind_udp(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let first = SocketAddr::from(([127, 0, 0, 1], 9));
        let second = SocketAddr::from(([127, 0, 0, 1], 10));
        let sources = [shared.source()];
        driver::block_on(
            async {
                let mut connected = ConnectedSockets::new(&shared, true);
                connected.connect(first, Instant::now());
                connected.connect(second, Instant::now());
                assert_eq!(connected.len(), 2);

                // A send failed: the link is no longer used, closed at the
                // next tidying, and not made again at once.
                let error = io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
                connected.send_failed(first, &error);
                assert!(connected.socket_for(first).is_none());
                assert!(connected.socket_for(second).is_some());
                connected.retain(|_| true);
                assert_eq!(connected.len(), 1);
                connected.connect(first, Instant::now());
                assert!(connected.socket_for(first).is_none());
                assert!(!connected.settled(first, Instant::now() + RETRY_AFTER));

                // The link last looked up closes: a lookup no longer finds
                // it (nor, the slot being free, whatever takes its id).
                assert!(connected.socket_for(second).is_some());
                connected.retain(|remote| remote != second);
                assert!(connected.socket_for(second).is_none());
                assert!(connected.is_empty());

                // The machine's addresses changed: every link closes, and
                // the next proven packet makes one anew at once.
                connected.clear();
                assert!(connected.is_empty());
                assert!(!connected.settled(first, Instant::now()));
                connected.connect(first, Instant::now());
                assert!(connected.socket_for(first).is_some());
            },
            &sources,
        )
        .unwrap();
    }

    #[test]
    fn switched_off_or_off_the_driver_everything_stays_on_the_shared_socket() {
        let shared = crate::bind_udp(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let remote = SocketAddr::from(([127, 0, 0, 1], 9));
        let mut off = ConnectedSockets::new(&shared, false);
        off.connect(remote, Instant::now());
        assert!(off.is_empty() && off.settled(remote, Instant::now()));
        // Not on a driver thread: the attempt fails, is remembered, and
        // is not made again at once.
        let mut on = ConnectedSockets::new(&shared, true);
        on.connect(remote, Instant::now());
        assert!(on.is_empty());
        assert!(on.settled(remote, Instant::now()));
        assert!(!on.settled(remote, Instant::now() + RETRY_AFTER));
    }
}
