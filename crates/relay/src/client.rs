//! The daemon's side of the relay: one TLS connection, with the device's
//! certificate, kept up while the network map names a relay, and beside it
//! the UDP session the relay hands out over TLS, used whenever UDP gets
//! through (registrations every few seconds find out). Frames to send come
//! in on a channel and frames received go out on another; while the
//! connection is down, frames to send are dropped (a link that is down
//! drops packets too; WireGuard's timers try again).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsConnector;

use crate::frame::{self, Frame, HEADER};
use crate::server::AbortOnDrop;
use crate::sockets;
use crate::udp::{self, Session};

/// The state of the link to the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Link {
    /// Not connected (no relay named, or it cannot be reached).
    #[default]
    Down,
    /// Connected over TLS only (UDP does not get through).
    Tls,
    /// Connected, and packets go over UDP: those whose WireGuard message
    /// is at most `max_message` bytes ([`udp::max_message`]); longer
    /// ones go over TLS.
    Udp {
        /// The largest WireGuard message one datagram carries.
        max_message: u16,
    },
}

impl Link {
    /// Whether packets can go through the relay.
    pub fn is_up(self) -> bool {
        self != Link::Down
    }

    /// `none`, `tls` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Link::Down => "none",
            Link::Tls => "tls",
            Link::Udp { .. } => "udp",
        }
    }
}

/// How often a UDP registration goes out while UDP has not answered, and
/// once it has.
const REGISTER_SEARCHING: Duration = Duration::from_secs(2);
const REGISTER_KEEPALIVE: Duration = Duration::from_secs(10);
/// UDP counts as working this long after the relay last answered there.
const UDP_ALIVE: Duration = Duration::from_secs(25);

/// Where the relay is and who we are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `HOST:PORT` of the relay's TLS listener; the host is checked
    /// against its certificate.
    pub address: String,
    /// The network CA (the only root trusted).
    pub ca_pem: String,
}

/// The device's certificate and key, read at each connect (they rotate).
pub type Credentials = Arc<dyn Fn() -> (String, String) + Send + Sync>;

/// Most frames taken from the channel at once before the task looks at
/// its other work.
const OUTBOUND_BATCH: usize = 64;
/// How long a connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Keeps a connection to the relay `target` names (none while it is
/// `None`), until `inbound`'s receiver is gone.
pub async fn run(
    mut target: watch::Receiver<Option<Target>>,
    credentials: Credentials,
    inbound: mpsc::Sender<Frame>,
    mut outbound: mpsc::Receiver<Frame>,
    up: watch::Sender<Link>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let current = target.borrow_and_update().clone();
        let Some(current) = current else {
            up.send_replace(Link::Down);
            // Nothing to connect to: drop what comes until a relay appears.
            tokio::select! {
                changed = target.changed() => if changed.is_err() { return; },
                frame = outbound.recv() => if frame.is_none() { return; },
            }
            continue;
        };
        let attempt = tokio::select! {
            connected = connect(&current, &credentials) => connected,
            changed = target.changed() => {
                if changed.is_err() { return; }
                continue;
            }
        };
        match attempt {
            Ok((stream, session, relay)) => {
                tracing::info!(relay = %current.address, "relay connected");
                up.send_replace(Link::Tls);
                backoff = Duration::from_millis(250);
                let ended = pump(
                    stream,
                    session,
                    relay,
                    &inbound,
                    &mut outbound,
                    &mut target,
                    &up,
                )
                .await;
                up.send_replace(Link::Down);
                match ended {
                    Ok(()) => continue,
                    Err(e) => {
                        tracing::info!(relay = %current.address, error = %format!("{e:#}"), "relay connection lost")
                    }
                }
                if inbound.is_closed() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(relay = %current.address, error = %format!("{e:#}"), retry_in = ?backoff, "cannot reach the relay");
            }
        }
        // Wait before the next attempt, dropping frames meanwhile.
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                frame = outbound.recv() => if frame.is_none() { return; },
                changed = target.changed() => if changed.is_err() { return; } else { break; },
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

pub(crate) type Stream = tokio_rustls::client::TlsStream<TcpStream>;

pub(crate) async fn connect(
    target: &Target,
    credentials: &Credentials,
) -> Result<(Stream, Session, SocketAddr)> {
    let (host, _) = target
        .address
        .rsplit_once(':')
        .with_context(|| format!("relay address `{}` is not HOST:PORT", target.address))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let (cert_pem, key_pem) = credentials();
    let config = client_config(&target.ca_pem, &cert_pem, &key_pem)?;
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .with_context(|| format!("`{host}` is not a host name or address"))?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target.address))
        .await
        .context("timed out")??;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .context("TLS handshake timed out")??;
    let mut tls = tls;
    let relay = tls.get_ref().0.peer_addr()?;
    let mut welcome = [0u8; frame::WELCOME_LEN];
    tokio::time::timeout(CONNECT_TIMEOUT, tls.read_exact(&mut welcome))
        .await
        .context("the relay did not admit us in time")?
        .context("the relay refused this device (certificate not issued by the network, or the device is not active)")?;
    let (greeting, rest) = welcome.split_at(4);
    let (id, secret) = rest.split_at(8);
    if greeting != frame::WELCOME {
        anyhow::bail!("this is not a ztmesh relay (unexpected greeting)");
    }
    let id = u64::from_be_bytes(id.try_into()?);
    let secret: [u8; 32] = secret.try_into()?;
    Ok((tls, Session::new(id, &secret), relay))
}

fn client_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = crate::pem::roots(ca_pem)?;
    let (chain, key) = crate::pem::identity(cert_pem, key_pem, "device")?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("the device certificate")?;
    Ok(Arc::new(config))
}

/// The UDP side of one connection: the socket (connected to the relay),
/// the session, the counter, and when the relay last answered there.
struct UdpSide {
    socket: Arc<UdpSocket>,
    session: Session,
    /// The largest WireGuard message one datagram to the relay carries.
    max_message: usize,
    counter: u64,
    started: Instant,
    answered_ms: Arc<AtomicU64>,
}

impl UdpSide {
    async fn open(relay: SocketAddr, session: Session) -> Option<Self> {
        let socket = sockets::to_relay(relay).ok()?;
        Some(Self {
            socket: Arc::new(socket),
            session,
            max_message: udp::max_message(relay),
            counter: 0,
            started: Instant::now(),
            answered_ms: Arc::new(AtomicU64::new(0)),
        })
    }

    fn alive(&self) -> bool {
        let answered = self.answered_ms.load(Ordering::Relaxed);
        answered > 0 && Duration::from_millis(answered) + UDP_ALIVE > self.started.elapsed()
    }

    /// How the link carries packets while this side is alive.
    fn link(&self) -> Link {
        Link::Udp {
            max_message: u16::try_from(self.max_message).unwrap_or(u16::MAX),
        }
    }

    /// Sends one datagram to the relay; `false` when it did not go: a
    /// payload too long for one unfragmented datagram (the caller sends
    /// it over TLS), or a full socket buffer.
    fn send(&mut self, key: &[u8; 32], payload: &[u8], out: &mut Vec<u8>) -> bool {
        if payload.len() > self.max_message {
            return false;
        }
        self.counter += 1;
        self.session.seal(self.counter, key, payload, out);
        self.socket.try_send(out).is_ok()
    }
}

/// Moves frames both ways until the connection breaks (an error) or the
/// target changes (`Ok`).
async fn pump(
    stream: Stream,
    session: Session,
    relay: SocketAddr,
    inbound: &mpsc::Sender<Frame>,
    outbound: &mut mpsc::Receiver<Frame>,
    target: &mut watch::Receiver<Option<Target>>,
    up: &watch::Sender<Link>,
) -> Result<()> {
    let (reader, writer) = tokio::io::split(stream);
    let mut writer = BufWriter::new(writer);
    let mut reading = tokio::spawn(read_frames(reader, inbound.clone()));
    let _abort = AbortOnDrop(reading.abort_handle());
    let mut udp = UdpSide::open(relay, session).await;
    let _abort_udp = udp.as_ref().map(|side| {
        AbortOnDrop(
            tokio::spawn(read_datagrams(
                Arc::clone(&side.socket),
                inbound.clone(),
                Arc::clone(&side.answered_ms),
                side.started,
            ))
            .abort_handle(),
        )
    });
    let mut register = tokio::time::interval(REGISTER_SEARCHING);
    let mut out = Vec::with_capacity(HEADER + frame::MAX_PAYLOAD);
    let mut datagram = Vec::with_capacity(udp::UP_HEADER + frame::MAX_PAYLOAD);
    loop {
        tokio::select! {
            read = &mut reading => {
                read??;
                anyhow::bail!("the relay closed the connection");
            }
            frame = outbound.recv() => {
                let Some(frame) = frame else { return Ok(()) };
                out.clear();
                let mut pending = Some(frame);
                let mut taken = 0;
                while let Some(frame) = pending.take() {
                    let over_udp = udp
                        .as_mut()
                        .filter(|side| side.alive())
                        .is_some_and(|side| side.send(&frame.key, &frame.payload, &mut datagram));
                    if !over_udp {
                        let _ = frame.encode(&mut out);
                    }
                    taken += 1;
                    // Bounded, and the task yields after a full batch: a
                    // data plane that keeps the channel full must not keep
                    // the daemon's control side (and the reader of the
                    // relay's datagrams), which share this thread, waiting.
                    if out.len() < 64 * 1024 && taken < OUTBOUND_BATCH {
                        pending = outbound.try_recv().ok();
                    }
                }
                if !out.is_empty() {
                    writer.write_all(&out).await?;
                    writer.flush().await?;
                }
                if taken == OUTBOUND_BATCH {
                    tokio::task::yield_now().await;
                }
            }
            _ = register.tick() => {
                if let Some(side) = udp.as_mut() {
                    let alive = side.alive();
                    side.send(&udp::NO_KEY, &[], &mut datagram);
                    let link = if alive { side.link() } else { Link::Tls };
                    up.send_if_modified(|now| std::mem::replace(now, link) != link);
                    let period = if alive { REGISTER_KEEPALIVE } else { REGISTER_SEARCHING };
                    if register.period() != period {
                        register = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                    }
                }
            }
            // A new target, or none any more: the caller starts over.
            _ = target.changed() => return Ok(()),
        }
    }
}

/// Datagrams from the relay: packets go in, acks mark UDP as working.
async fn read_datagrams(
    socket: Arc<UdpSocket>,
    inbound: mpsc::Sender<Frame>,
    answered_ms: Arc<AtomicU64>,
    started: Instant,
) {
    let mut buf = vec![0u8; udp::DOWN_HEADER + frame::MAX_PAYLOAD + 1];
    while let Ok(len) = socket.recv(&mut buf).await {
        let Some((key, payload)) = buf.get(..len).and_then(udp::parse_down) else {
            continue;
        };
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        answered_ms.store(ms.max(1), Ordering::Relaxed);
        if key == udp::NO_KEY {
            continue;
        }
        if let Err(mpsc::error::TrySendError::Closed(_)) = inbound.try_send(Frame {
            key,
            payload: payload.to_vec(),
        }) {
            return;
        }
    }
}

async fn read_frames(
    mut reader: tokio::io::ReadHalf<Stream>,
    inbound: mpsc::Sender<Frame>,
) -> std::io::Result<()> {
    let mut header = [0u8; HEADER];
    loop {
        reader.read_exact(&mut header).await?;
        let (key, len) = frame::decode_header(&header)?;
        let mut payload = vec![0; len];
        reader.read_exact(&mut payload).await?;
        // A full queue drops the packet, as a busy link would.
        if let Err(mpsc::error::TrySendError::Closed(_)) = inbound.try_send(Frame { key, payload })
        {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests;
