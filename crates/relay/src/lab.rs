//! What the relay's tests share: a test CA and devices it admits, a relay
//! on loopback, and devices driven by hand over real TLS and UDP.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, ReadHalf};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;

use crate::client::{self, Credentials, Stream, Target};
use crate::frame::{self, HEADER};
use crate::server::{Check, tls_config};
use crate::{Authority, Relay, shared_port, udp};

/// Admits the certificates it was given, each with its key.
pub(crate) struct Known(HashMap<Vec<u8>, [u8; 32]>);

impl Authority for Known {
    fn admit(&self, cert_der: Vec<u8>) -> Check {
        let key = self.0.get(&cert_der).copied();
        Box::pin(async move { key })
    }
}

pub(crate) struct Device {
    pub key: [u8; 32],
    pub credentials: Credentials,
}

/// A CA, the relay's TLS config (for 127.0.0.1) and `n` devices it admits.
pub(crate) fn network(n: u8) -> (String, Arc<rustls::ServerConfig>, Vec<Device>, Known) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let tls = tls_config(
        &format!("{}{ca_pem}", server.pem()),
        &server_key.serialize_pem(),
        &ca_pem,
    )
    .unwrap();
    let mut known = HashMap::new();
    let devices = (1..=n)
        .map(|i| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let cert = params.signed_by(&key, &issuer).unwrap();
            known.insert(cert.der().to_vec(), [i; 32]);
            let pems = (cert.pem(), key.serialize_pem());
            Device {
                key: [i; 32],
                credentials: Arc::new(move || pems.clone()),
            }
        })
        .collect();
    (ca_pem, tls, devices, Known(known))
}

/// Counts the probes (`probe`, a number, any padding) that arrive over TLS.
pub(crate) async fn count_tls_probes(
    mut reader: ReadHalf<Stream>,
    from: [u8; 32],
    got: Arc<Mutex<BTreeSet<u8>>>,
) {
    let mut header = [0u8; HEADER];
    while reader.read_exact(&mut header).await.is_ok() {
        let Ok((key, len)) = frame::decode_header(&header) else {
            return;
        };
        let mut payload = vec![0; len];
        if reader.read_exact(&mut payload).await.is_err() {
            return;
        }
        if let (true, [b'p', b'r', b'o', b'b', b'e', n, ..]) = (key == from, payload.as_slice()) {
            got.lock().unwrap().insert(*n);
        }
    }
}

/// A device's UDP socket, registered with the relay (acked).
pub(crate) async fn register(relay: SocketAddr, session: &udp::Session) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(relay).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    for counter in 1..=50 {
        session.seal(counter, &udp::NO_KEY, &[], &mut out);
        socket.send(&out).await.unwrap();
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(100), socket.recv(&mut buf)).await
            && udp::parse_down(&buf[..n]).is_some_and(|(key, _)| key == udp::NO_KEY)
        {
            return socket;
        }
    }
    panic!("the relay never acked a registration");
}

/// One device as the tests drive it: its key, its UDP session with the
/// relay and its socket there (registered).
pub(crate) struct Peer {
    pub key: [u8; 32],
    pub session: udp::Session,
    pub udp: UdpSocket,
    pub counter: u64,
}

impl Peer {
    /// Sends one packet to `to` now, without letting the relay run (the
    /// socket has been written to before, so Tokio knows it is writable).
    pub fn send(&mut self, to: &[u8; 32], payload: &[u8]) {
        self.counter += 1;
        let mut out = Vec::new();
        self.session.seal(self.counter, to, payload, &mut out);
        self.udp.try_send(&out).unwrap();
    }
}

/// A relay on loopback and two devices connected to it (TLS, then UDP),
/// and a third it would admit.
/// What the relay sends them over TLS lands in `tls_probes` (by the
/// probe's number, when it comes from the other device).
pub(crate) struct Lab {
    pub relay: Relay,
    pub addr: SocketAddr,
    pub a: Peer,
    pub b: Peer,
    pub tls_probes: Arc<Mutex<BTreeSet<u8>>>,
    /// Where the relay is, for a client.
    pub target: Target,
    /// A third device the relay admits, not connected.
    pub c: Device,
    _closing: watch::Sender<bool>,
}

impl Lab {
    pub async fn start() -> Self {
        let (ca_pem, tls, mut devices, known) = network(3);
        let relay = Relay::new(Arc::new(known));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let udp_socket = shared_port::bind(addr).unwrap();
        let (closing_tx, closing) = watch::channel(false);
        tokio::spawn(
            relay
                .clone()
                .serve(listener, Some(udp_socket), tls, closing),
        );
        let target = Target {
            address: addr.to_string(),
            ca_pem,
        };
        let tls_probes = Arc::new(Mutex::new(BTreeSet::new()));
        let mut peers = Vec::new();
        for (device, other) in [(&devices[0], &devices[1]), (&devices[1], &devices[0])] {
            let (tls, session, _) = client::connect(&target, &device.credentials).await.unwrap();
            // Read, so that packets the relay sends over TLS never stall
            // it; only b's count.
            let count = if peers.is_empty() {
                Arc::default()
            } else {
                Arc::clone(&tls_probes)
            };
            tokio::spawn(count_tls_probes(tokio::io::split(tls).0, other.key, count));
            peers.push(Peer {
                key: device.key,
                udp: register(addr, &session).await,
                session,
                counter: 100,
            });
        }
        let (b, a) = (peers.pop().unwrap(), peers.pop().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
        Self {
            relay,
            addr,
            a,
            b,
            tls_probes,
            target,
            c: devices.pop().unwrap(),
            _closing: closing_tx,
        }
    }
}

/// Reads what the relay sends to `socket` until nothing comes for half a
/// second: the numbers of the probes from `from`.
pub(crate) async fn udp_probes(socket: &UdpSocket, from: &[u8; 32]) -> BTreeSet<u8> {
    let mut got = BTreeSet::new();
    let mut buf = [0u8; 2048];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf)).await
    {
        if let Some((key, [b'p', b'r', b'o', b'b', b'e', i, ..])) = udp::parse_down(&buf[..n])
            && key == *from
        {
            got.insert(*i);
        }
    }
    got
}

pub(crate) fn probe(i: u8) -> Vec<u8> {
    [b"probe".as_slice(), &[i]].concat()
}

/// Probe `i` padded to `len` bytes.
pub(crate) fn padded_probe(i: u8, len: usize) -> Vec<u8> {
    let mut probe = probe(i);
    probe.resize(len, 0);
    probe
}
