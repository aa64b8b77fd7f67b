//! ztmesh daemon: enrolls the device, keeps one mutual-TLS stream to the
//! coordination server, and runs userspace WireGuard (boringtun
//! `noise::Tunn`) over a TUN device, enforcing cryptokey routing and the
//! stateful default-deny filter on every received packet.

#![warn(clippy::indexing_slicing)]

pub mod batch;
pub mod connected;
pub mod control;
pub mod dataplane;
pub mod discovery;
pub mod driver;
pub mod enroll;
pub mod flowlog;
pub mod keys;
pub mod lifecycle;
pub mod login;
pub mod metrics;
pub mod netmap;
pub mod netwatch;
pub mod peers;
pub mod posture;
pub mod routes;
pub mod state;
pub mod status;
#[cfg(test)]
mod test_netns;
pub mod tls;
pub mod too_big;
pub mod tunio;
pub mod udpio;
pub mod wgsock;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::{mpsc, watch};

use crate::control::{ControlConfig, Credentials};
use crate::dataplane::Io;
use crate::keys::DeviceKeys;
use crate::lifecycle::PostureSource;
use crate::netmap::NetMap;
use crate::state::{Enrollment, StateDir};
use crate::tunio::TunIo;
use crate::wgsock::WgSocket;

/// Options of `ztmesh up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// State directory (keys, certificates, status socket).
    pub state_dir: PathBuf,
    /// Join token, needed only the first time.
    pub join: Option<String>,
    /// Device name to request (default: host name).
    pub name: Option<String>,
    /// TUN interface name.
    pub tun_name: String,
    /// WireGuard UDP port.
    pub listen_port: u16,
    /// Overlay prefix routed into the TUN device.
    pub overlay_prefix: u8,
    /// Where to serve Prometheus metrics; `None`: off.
    pub metrics_listen: Option<SocketAddr>,
    /// Ask the kernel for TUN offloads (TSO/GRO with a virtio-net header);
    /// falls back to a plain device when the kernel refuses.
    pub tun_offload: bool,
    /// Give each peer endpoint that carries traffic a connected UDP
    /// socket on the WireGuard port (see [`connected`]).
    pub peer_sockets: bool,
}

/// Enrolls if needed, then runs the daemon on a real TUN until `shutdown`.
pub async fn up(options: UpOptions, shutdown: watch::Receiver<bool>) -> Result<()> {
    tunio::check_net_admin()?;
    let state = StateDir::open(&options.state_dir)?;
    let enrollment =
        ensure_enrolled(&state, options.join.as_deref(), options.name.as_deref()).await?;
    let address = first_ipv4(&enrollment)?;
    status::ensure_not_running(&state.socket_path()).await?;
    let tun = tunio::create_kernel_tun(
        &options.tun_name,
        address,
        options.overlay_prefix,
        options.tun_offload,
    )?;
    let udp = bind_udp(SocketAddr::from((
        Ipv4Addr::UNSPECIFIED,
        options.listen_port,
    )))?;
    if let Some(addr) = options.metrics_listen {
        let listener = ztmesh_metrics::bind(addr).await?;
        let socket = state.socket_path();
        let render: ztmesh_metrics::Render = Arc::new(move || {
            let socket = socket.clone();
            Box::pin(async move { metrics::render(status::query(&socket).await.ok().as_ref()) })
        });
        tokio::spawn(ztmesh_metrics::serve(listener, render, shutdown.clone()));
        tracing::info!(listen = %addr, "metrics at http://{addr}/metrics");
    }
    tracing::info!(name = %enrollment.name, address = %address, tun = %options.tun_name, port = options.listen_port, "daemon running");
    let io = Io {
        tun,
        udp,
        peer_sockets: options.peer_sockets,
    };
    run(&state, &enrollment, io, shutdown).await
}

/// Returns the enrollment in `state`, enrolling with `join` first if there is none.
pub async fn ensure_enrolled(
    state: &StateDir,
    join: Option<&str>,
    name: Option<&str>,
) -> Result<Enrollment> {
    if let Some(enrollment) = state.enrollment()? {
        if join.is_some() {
            tracing::info!(name = %enrollment.name, "already enrolled; ignoring --join");
        }
        return Ok(enrollment);
    }
    let Some(token) = join else {
        bail!(
            "this device is not enrolled yet ({} has no enrollment): run `ztmesh up --join TOKEN` with a token from `ztmesh admin join-token create`",
            state.path().display()
        );
    };
    let name = name.map_or_else(enroll::default_name, str::to_owned);
    let enrollment = enroll::enroll(state, token, &name).await?;
    tracing::info!(name = %enrollment.name, addresses = ?enrollment.addresses, "enrolled");
    Ok(enrollment)
}

/// How often filter counters and flow records go to the server.
const FLOW_REPORT_INTERVAL: Duration = Duration::from_secs(2);

/// The daemon version, reported in posture.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How often the daemon collects its posture by default.
pub const POSTURE_INTERVAL: Duration = Duration::from_secs(10);

/// How the daemon learns its posture and how often it looks again.
#[derive(Clone)]
pub struct PostureOptions {
    /// The probe.
    pub source: PostureSource,
    /// How often posture is collected and, when changed, reported.
    pub interval: Duration,
}

impl Default for PostureOptions {
    fn default() -> Self {
        Self {
            source: Arc::new({
                let firewall = std::sync::Mutex::new(posture::FirewallCache::new());
                move || posture::collect_cached(VERSION, &firewall)
            }),
            interval: POSTURE_INTERVAL,
        }
    }
}

/// Runs control client, status socket and data plane over the given I/O.
pub async fn run<T: TunIo>(
    state: &StateDir,
    enrollment: &Enrollment,
    io: Io<T>,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    run_with(state, enrollment, io, PostureOptions::default(), shutdown).await
}

/// [`run`] with a chosen posture probe.
pub async fn run_with<T: TunIo>(
    state: &StateDir,
    enrollment: &Enrollment,
    io: Io<T>,
    posture: PostureOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let keys = DeviceKeys::load(state)?;
    enrollment.check_not_expired()?;
    let (status_tx, status_rx) = mpsc::channel(8);
    status::serve(&state.socket_path(), status_tx).await?;
    let (netmap_tx, netmap_rx) = watch::channel(NetMap::default());
    let (sessions_tx, sessions_rx) = watch::channel(0u64);
    let (rekey_tx, rekey_rx) = mpsc::channel(2);
    let (flow_tx, flow_rx) = mpsc::channel(flowlog::BATCH_QUEUE);
    let (public_tx, public_rx) = watch::channel(None);
    let socket = netwatch::Socket {
        bound: io.udp.local_addr()?,
        tun_name: io.tun.interface_name().unwrap_or_default().to_owned(),
        routed: io.tun.routed(),
    };
    let (local_tx, local_rx) = watch::channel(netwatch::current(&socket));
    let (relay_in_tx, relay_in_rx) = mpsc::channel(RELAY_QUEUE);
    let (relay_out_tx, relay_out_rx) = mpsc::channel(RELAY_QUEUE);
    let (relay_up_tx, relay_up_rx) = watch::channel(ztmesh_relay::client::Link::Down);
    let (relay_target_tx, relay_target_rx) = watch::channel(None);
    let (reported_tx, reported_rx) = watch::channel(0u64);
    let connected = Arc::new(AtomicBool::new(false));
    let control_config = ControlConfig {
        server_url: enrollment.server_url.clone(),
        ca_pem: keys.ca_cert_pem.clone(),
        credentials: Arc::new(RwLock::new(Credentials {
            cert_pem: keys.client_cert_pem.clone(),
            key_pem: keys.identity_key_pem.clone(),
        })),
        listen_port: io.udp.local_addr()?.port(),
    };
    let tasks = [
        tokio::spawn(control::run(
            control_config.clone(),
            netmap_tx,
            Arc::clone(&connected),
            sessions_tx,
        )),
        tokio::spawn(lifecycle::rotation_loop(
            state.clone(),
            control_config.clone(),
            netmap_rx.clone(),
            rekey_tx,
        )),
        tokio::spawn(lifecycle::posture_loop(
            control_config.clone(),
            posture.source,
            posture.interval,
            sessions_rx.clone(),
        )),
        tokio::spawn(lifecycle::endpoint_loop(
            control_config.clone(),
            public_rx,
            local_rx.clone(),
            sessions_rx,
            reported_tx,
        )),
        tokio::spawn(netwatch::watch_loop(socket, local_tx)),
        tokio::spawn(relay_target_loop(
            netmap_rx.clone(),
            keys.ca_cert_pem.clone(),
            relay_target_tx,
        )),
        tokio::spawn(ztmesh_relay::client::run(
            relay_target_rx,
            relay_credentials(&control_config),
            relay_in_tx,
            relay_out_rx,
            relay_up_tx,
        )),
        tokio::spawn(flowlog::report_loop(
            control_config,
            flow_rx,
            FLOW_REPORT_INTERVAL,
        )),
    ];
    let links = dataplane::Links {
        netmap: netmap_rx,
        status_requests: status_rx,
        rekeys: rekey_rx,
        flow_reports: flow_tx,
        connected,
        public_endpoint: public_tx,
        local_addrs: local_rx,
        relay_in: relay_in_rx,
        relay_out: relay_out_tx,
        relay_up: relay_up_rx,
        reported: reported_rx,
    };
    let result = run_dataplane(io, keys.wireguard, links, shutdown).await;
    for task in tasks {
        task.abort();
    }
    let _ = std::fs::remove_file(state.socket_path());
    result
}

/// Runs the data plane on its own thread ([`driver`]) until it stops,
/// with this runtime's handle entered there for its channels' helper
/// tasks and the rare wait for send room (its timer is the driver's).
async fn run_dataplane<T: TunIo>(
    io: Io<T>,
    private: x25519_dalek::StaticSecret,
    links: dataplane::Links,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let runtime = tokio::runtime::Handle::current();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ztmesh-dataplane".into())
        .spawn(move || {
            let _entered = runtime.enter();
            let sources = io.sources();
            let result = driver::block_on(dataplane::run(io, private, links, shutdown), &sources)
                .map_err(|e| anyhow::anyhow!("data plane event loop: {e}"))
                .and_then(|result| result);
            let _ = done_tx.send(result);
        })
        .context("cannot start the data plane thread")?;
    // A panic there drops the sender: the daemon stops rather than run
    // without its data plane.
    done_rx.await.unwrap_or_else(|_| {
        Err(anyhow::anyhow!(
            "the data plane thread stopped unexpectedly"
        ))
    })
}

/// Binds the WireGuard socket with a clear error when the port is taken.
///
/// The socket asks for [`UDP_BUFFER_BYTES`] of receive and send buffer so
/// that bursts at high rates are not dropped while the data plane is busy;
/// the kernel caps the request at `net.core.rmem_max` / `wmem_max`
/// (raise those for multi-gigabit links). A refused size is logged, not fatal.
pub fn bind_udp(addr: SocketAddr) -> Result<WgSocket> {
    let bind_error = || {
        format!(
            "cannot bind the WireGuard UDP socket on {addr}; is another daemon using it? choose another with --listen-port"
        )
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .with_context(bind_error)?;
    size_buffers(&socket);
    socket.set_nonblocking(true).with_context(bind_error)?;
    socket.bind(&addr.into()).with_context(bind_error)?;
    WgSocket::from_std(socket.into()).with_context(bind_error)
}

/// Asks for [`UDP_BUFFER_BYTES`] each way on a WireGuard socket; a
/// refused size is logged, not fatal.
pub(crate) fn size_buffers(socket: &socket2::Socket) {
    ztmesh_relay::sockets::size_buffers(socket, UDP_BUFFER_BYTES);
}

/// Requested UDP socket buffer size (each direction): the relay's.
pub const UDP_BUFFER_BYTES: usize = ztmesh_relay::sockets::UDP_BUFFER_BYTES;

fn first_ipv4(enrollment: &Enrollment) -> Result<Ipv4Addr> {
    enrollment
        .addresses
        .iter()
        .filter_map(|a| a.parse::<ipnet::IpNet>().ok())
        .find_map(|n| match n {
            ipnet::IpNet::V4(v4) => Some(v4.addr()),
            ipnet::IpNet::V6(_) => None,
        })
        .context("the enrollment record has no IPv4 overlay address")
}

/// Packets queued each way between the data plane and the relay link.
const RELAY_QUEUE: usize = 1_024;

/// Follows the network map's relay into the relay client's target.
async fn relay_target_loop(
    mut netmap: watch::Receiver<NetMap>,
    ca_pem: String,
    target: watch::Sender<Option<ztmesh_relay::client::Target>>,
) {
    loop {
        let address = netmap.borrow_and_update().relay_server.clone();
        let next = (!address.is_empty()).then(|| ztmesh_relay::client::Target {
            address,
            ca_pem: ca_pem.clone(),
        });
        target.send_if_modified(|known| {
            if *known == next {
                return false;
            }
            *known = next;
            true
        });
        if netmap.changed().await.is_err() {
            return;
        }
    }
}

/// The device certificate and key as they are now (key rotation replaces
/// them), for the relay's TLS.
fn relay_credentials(config: &ControlConfig) -> ztmesh_relay::client::Credentials {
    let credentials = Arc::clone(&config.credentials);
    Arc::new(move || {
        let now = credentials
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (now.cert_pem.clone(), now.key_pem.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_wireguard_socket_gets_larger_buffers_than_the_default() {
        let socket = bind_udp(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let default: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_default")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(212_992);
        let size = socket2::SockRef::from(socket.socket())
            .recv_buffer_size()
            .unwrap();
        assert!(
            size > default,
            "receive buffer {size} is not above the default {default}"
        );
        let taken = bind_udp(socket.local_addr().unwrap()).unwrap_err();
        assert!(format!("{taken:#}").contains("--listen-port"), "{taken:#}");
    }
}
