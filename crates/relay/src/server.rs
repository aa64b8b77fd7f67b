//! The relay's server side: TLS with a client certificate required (the
//! device's, issued by the network CA), then frames between the devices
//! connected to this relay. The authority (the coordination server's
//! store) says which certificate is an enrolled, active device and what
//! its WireGuard key is, at connect time and again every
//! [`RECHECK`] for as long as the connection lasts: a revoked device is
//! cut off within that.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::frame::{self, Frame, HEADER};
use crate::{shared_port, udp};

/// How often a connected device is checked again.
pub const RECHECK: Duration = Duration::from_secs(2);
/// How long a client has for the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames waiting for one client before more are dropped (as a full link
/// would drop them; WireGuard and TCP inside recover).
const QUEUE: usize = 512;
/// A device's UDP address counts this long after its last authentic
/// datagram (it registers every 10 s).
const UDP_FRESH: Duration = Duration::from_secs(30);
/// How far behind the newest counter a datagram may be and still be
/// forwarded (reordering); older ones are dropped.
const UDP_WINDOW: u64 = 4_096;
/// A device's own socket on the relay's port (see `shared_port.rs`) is
/// opened again for a new address at most this often: a device hopping
/// ports is served from the shared socket in between.
const REOPEN: Duration = Duration::from_secs(1);

/// A future the authority returns.
pub type Check = Pin<Box<dyn Future<Output = Option<[u8; 32]>> + Send>>;

/// Who may use the relay.
pub trait Authority: Send + Sync + 'static {
    /// The WireGuard public key of the enrolled, active device that owns
    /// this client certificate (DER), or `None` to refuse it.
    fn admit(&self, cert_der: Vec<u8>) -> Check;
}

/// What the relay has done, for metrics and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Frames forwarded.
    pub frames: AtomicU64,
    /// Payload bytes forwarded.
    pub bytes: AtomicU64,
    /// Frames dropped: no such device connected, or its queue full.
    pub dropped: AtomicU64,
    /// Connections refused (no certificate, not a device, revoked).
    pub refused: AtomicU64,
}

#[derive(Default)]
struct Clients {
    next_id: u64,
    by_key: HashMap<[u8; 32], Client>,
    by_session: HashMap<u64, Arc<UdpState>>,
}

struct Client {
    id: u64,
    tx: mpsc::Sender<Frame>,
    udp: Arc<UdpState>,
}

/// One device's UDP side: its session and where it was last heard from.
struct UdpState {
    key: [u8; 32],
    session: udp::Session,
    newest: AtomicU64,
    path: Mutex<UdpPath>,
}

#[derive(Default)]
struct UdpPath {
    /// The device's address and when it was last moved or confirmed.
    addr: Option<(SocketAddr, Instant)>,
    /// Its own socket, connected to `addr` (or to an older address).
    own: Option<OwnSocket>,
    /// When an own socket was last opened or tried.
    opened: Option<Instant>,
}

/// A socket on the relay's port that receives one device's datagrams,
/// and the task reading it (stopped when the device's state goes).
struct OwnSocket {
    peer: SocketAddr,
    socket: Arc<UdpSocket>,
    _reader: AbortOnDrop,
}

impl UdpState {
    fn path(&self) -> std::sync::MutexGuard<'_, UdpPath> {
        self.path.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where to send to the device now: its fresh address, with its own
    /// socket when that is connected there.
    fn route(&self, now: Instant) -> Option<(SocketAddr, Option<Arc<UdpSocket>>)> {
        let path = self.path();
        let (addr, at) = path.addr?;
        if now.saturating_duration_since(at) >= UDP_FRESH {
            return None;
        }
        let own = path.own.as_ref().filter(|o| o.peer == addr);
        Some((addr, own.map(|o| Arc::clone(&o.socket))))
    }
}

/// The relay's shared UDP socket, and what its devices' own sockets need.
struct SharedUdp {
    socket: Arc<UdpSocket>,
    local: Option<SocketAddr>,
    closing: watch::Receiver<bool>,
}

/// The relay: the connected devices and the counters.
#[derive(Clone)]
pub struct Relay {
    clients: Arc<Mutex<Clients>>,
    stats: Arc<Stats>,
    authority: Arc<dyn Authority>,
    udp: Arc<OnceLock<SharedUdp>>,
}

impl Relay {
    /// A relay that asks `authority` who may connect.
    pub fn new(authority: Arc<dyn Authority>) -> Self {
        Self {
            clients: Arc::default(),
            stats: Arc::default(),
            authority,
            udp: Arc::default(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Devices connected now.
    pub fn connected(&self) -> usize {
        self.lock().by_key.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Clients> {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Accepts connections on `listener` (and datagrams on `udp`, when
    /// given) until `closing` turns true.
    pub async fn serve(
        self,
        listener: TcpListener,
        udp: Option<UdpSocket>,
        tls: Arc<rustls::ServerConfig>,
        mut closing: watch::Receiver<bool>,
    ) {
        if let Some(socket) = udp {
            let socket = Arc::new(socket);
            let _ = self.udp.set(SharedUdp {
                socket: Arc::clone(&socket),
                local: socket.local_addr().ok(),
                closing: closing.clone(),
            });
            tokio::spawn(self.clone().serve_udp(socket, closing.clone()));
        }
        let acceptor = TlsAcceptor::from(tls);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, from)) => {
                        let relay = self.clone();
                        let acceptor = acceptor.clone();
                        let closing = closing.clone();
                        tokio::spawn(async move {
                            if let Err(e) = relay.client(acceptor, stream, closing).await {
                                tracing::debug!(%from, error = %e, "relay client ended");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "relay accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = closing.changed() => return,
            }
        }
    }

    async fn client(
        &self,
        acceptor: TlsAcceptor,
        stream: TcpStream,
        mut closing: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let _ = stream.set_nodelay(true);
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await??;
        let Some(cert) = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
        else {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            anyhow::bail!("no client certificate");
        };
        let Some(key) = self.authority.admit(cert.clone()).await else {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            anyhow::bail!("the certificate is not an active device's");
        };
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let mut secret = [0u8; 32];
        let mut session_id = [0u8; 8];
        let random = SystemRandom::new();
        random
            .fill(&mut secret)
            .and_then(|()| random.fill(&mut session_id))
            .map_err(|_| anyhow::anyhow!("no randomness for the UDP session"))?;
        let session_id = u64::from_be_bytes(session_id);
        let state = Arc::new(UdpState {
            key,
            session: udp::Session::new(session_id, &secret),
            newest: AtomicU64::new(0),
            path: Mutex::default(),
        });
        let id = {
            let mut clients = self.lock();
            clients.next_id += 1;
            let id = clients.next_id;
            // A newer connection of the same device replaces the older.
            if let Some(old) = clients.by_key.insert(
                key,
                Client {
                    id,
                    tx,
                    udp: Arc::clone(&state),
                },
            ) {
                clients.by_session.remove(&old.udp.session.id);
            }
            clients.by_session.insert(session_id, state);
            id
        };
        let mut welcome = Vec::with_capacity(frame::WELCOME_LEN);
        welcome.extend_from_slice(&frame::WELCOME);
        welcome.extend_from_slice(&session_id.to_be_bytes());
        welcome.extend_from_slice(&secret);
        let result = self
            .pump(tls, key, cert, &welcome, &mut rx, &mut closing)
            .await;
        let mut clients = self.lock();
        if clients.by_key.get(&key).is_some_and(|c| c.id == id) {
            clients.by_key.remove(&key);
            clients.by_session.remove(&session_id);
        }
        result
    }

    /// The UDP side, on the shared socket or a device's own: authentic
    /// datagrams from devices are forwarded (or, without a key, answered
    /// as registrations).
    async fn serve_udp(self, socket: Arc<UdpSocket>, mut closing: watch::Receiver<bool>) {
        let mut buf = vec![0u8; udp::UP_HEADER + frame::MAX_PAYLOAD + 1];
        let mut out = Vec::with_capacity(udp::DOWN_HEADER);
        loop {
            let (len, from) = tokio::select! {
                got = socket.recv_from(&mut buf) => match got {
                    Ok(got) => got,
                    Err(e) => {
                        tracing::debug!(error = %e, "relay UDP receive failed");
                        continue;
                    }
                },
                _ = closing.changed() => return,
            };
            if let Some(datagram) = buf.get(..len) {
                self.datagram(&socket, datagram, from, &mut out);
            }
        }
    }

    fn datagram(&self, socket: &UdpSocket, datagram: &[u8], from: SocketAddr, out: &mut Vec<u8>) {
        let Some(up) = udp::parse_up(datagram) else {
            return;
        };
        let state = self.lock().by_session.get(&up.session).cloned();
        let Some(state) = state else {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some((counter, to, payload)) = state.session.open(&up) else {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let newest = state.newest.fetch_max(counter, Ordering::Relaxed);
        if counter > newest {
            // Only the newest authentic datagram moves the address.
            self.heard_from(&state, from, Instant::now());
        } else if newest.saturating_sub(counter) > UDP_WINDOW {
            return;
        }
        if to == udp::NO_KEY {
            udp::seal_down(&udp::NO_KEY, &[], out);
            let _ = socket.try_send_to(out, from);
        } else {
            self.forward(state.key, to, payload.to_vec());
        }
    }

    /// Moves the device's address to `from`, and gives it a socket of its
    /// own there when it has none (at most every [`REOPEN`]; where the
    /// port cannot be shared the device stays on the shared socket).
    fn heard_from(&self, state: &UdpState, from: SocketAddr, now: Instant) {
        let mut path = state.path();
        path.addr = Some((from, now));
        let settled = path.own.as_ref().is_some_and(|o| o.peer == from);
        let recent = path
            .opened
            .is_some_and(|at| now.saturating_duration_since(at) < REOPEN);
        let Some(shared) = self.udp.get() else { return };
        let Some(local) = shared.local else { return };
        if settled || recent {
            return;
        }
        path.opened = Some(now);
        match shared_port::connect(local, from) {
            Ok(socket) => {
                let socket = Arc::new(socket);
                let reader = tokio::spawn(
                    self.clone()
                        .serve_udp(Arc::clone(&socket), shared.closing.clone()),
                );
                path.own = Some(OwnSocket {
                    peer: from,
                    socket,
                    _reader: AbortOnDrop(reader.abort_handle()),
                });
            }
            Err(e) => {
                path.own = None;
                tracing::debug!(%from, error = %e, "no socket of its own for a relay device; it shares the relay's");
            }
        }
    }

    async fn pump(
        &self,
        tls: tokio_rustls::server::TlsStream<TcpStream>,
        key: [u8; 32],
        cert: Vec<u8>,
        welcome: &[u8],
        rx: &mut mpsc::Receiver<Frame>,
        closing: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let (reader, writer) = tokio::io::split(tls);
        let mut writer = BufWriter::new(writer);
        writer.write_all(welcome).await?;
        writer.flush().await?;
        // Reads run in their own task: a read interrupted by another
        // branch of the select would lose its place in the stream.
        let relay = self.clone();
        let mut reading = tokio::spawn(read_frames(relay, reader, key));
        let _abort = AbortOnDrop(reading.abort_handle());
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.tick().await;
        let mut out = Vec::with_capacity(HEADER + frame::MAX_PAYLOAD);
        loop {
            tokio::select! {
                read = &mut reading => {
                    read??;
                    return Ok(());
                }
                Some(frame) = rx.recv() => {
                    out.clear();
                    frame.encode(&mut out)?;
                    // Whatever else is waiting goes in the same write.
                    while let Ok(frame) = rx.try_recv() {
                        frame.encode(&mut out)?;
                        if out.len() > 64 * 1024 {
                            break;
                        }
                    }
                    writer.write_all(&out).await?;
                    writer.flush().await?;
                }
                _ = recheck.tick() => {
                    if self.authority.admit(cert.clone()).await != Some(key) {
                        anyhow::bail!("the device is no longer allowed (revoked or expired)");
                    }
                }
                _ = closing.changed() => return Ok(()),
            }
        }
    }

    /// Hands a packet from `from` to the device `to`, if it is connected.
    /// Over UDP when the device was heard from there lately and the
    /// packet fits one unfragmented datagram ([`udp::max_datagram`]; a
    /// device whose own UDP is blocked sends full-size packets over TLS),
    /// else over its TLS stream.
    fn forward(&self, from: [u8; 32], to: [u8; 32], payload: Vec<u8>) {
        let len = payload.len() as u64;
        let target = self
            .lock()
            .by_key
            .get(&to)
            .map(|c| (c.tx.clone(), Arc::clone(&c.udp)));
        let sent = target.is_some_and(|(tx, state)| {
            if let (Some(shared), Some((addr, own))) = (self.udp.get(), state.route(Instant::now()))
                && udp::DOWN_HEADER + payload.len() <= udp::max_datagram(addr)
            {
                let mut out = Vec::with_capacity(udp::DOWN_HEADER + payload.len());
                udp::seal_down(&from, &payload, &mut out);
                let sent = match own {
                    Some(own) => own.try_send(&out),
                    None => shared.socket.try_send_to(&out, addr),
                };
                if sent.is_ok() {
                    return true;
                }
            }
            tx.try_send(Frame { key: from, payload }).is_ok()
        });
        if sent {
            self.stats.frames.fetch_add(1, Ordering::Relaxed);
            self.stats.bytes.fetch_add(len, Ordering::Relaxed);
        } else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Reads the client's frames and forwards each, until the stream ends or
/// breaks the framing.
async fn read_frames(
    relay: Relay,
    mut reader: tokio::io::ReadHalf<tokio_rustls::server::TlsStream<TcpStream>>,
    key: [u8; 32],
) -> std::io::Result<()> {
    let mut header = [0u8; HEADER];
    loop {
        reader.read_exact(&mut header).await?;
        let (to, len) = frame::decode_header(&header)?;
        let mut payload = vec![0; len];
        reader.read_exact(&mut payload).await?;
        relay.forward(key, to, payload);
    }
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// TLS for the relay: the server's certificate chain, and a client
/// certificate required, issued by the network CA.
pub fn tls_config(
    chain_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use anyhow::Context;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = crate::pem::roots(ca_pem)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .context("client certificate verifier")?;
    let (chain, key) = crate::pem::identity(chain_pem, key_pem, "server")?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("the relay's TLS certificate")?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests;
