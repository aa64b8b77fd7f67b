//! ztmesh daemon: enrolls the device, keeps one mutual-TLS stream to the
//! coordination server, and runs userspace WireGuard (boringtun
//! `noise::Tunn`) over a TUN device, enforcing cryptokey routing and the
//! stateful default-deny filter on every received packet.

#![warn(clippy::indexing_slicing)]

pub mod control;
pub mod dataplane;
pub mod enroll;
pub mod flowlog;
pub mod keys;
pub mod lifecycle;
pub mod login;
pub mod netmap;
pub mod peers;
pub mod posture;
pub mod state;
pub mod status;
pub mod tls;
pub mod tunio;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use crate::control::{ControlConfig, Credentials};
use crate::dataplane::Io;
use crate::keys::DeviceKeys;
use crate::lifecycle::PostureSource;
use crate::netmap::NetMap;
use crate::state::{Enrollment, StateDir};
use crate::tunio::TunIo;

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
}

/// Enrolls if needed, then runs the daemon on a real TUN until `shutdown`.
pub async fn up(options: UpOptions, shutdown: watch::Receiver<bool>) -> Result<()> {
    tunio::check_net_admin()?;
    let state = StateDir::open(&options.state_dir)?;
    let enrollment =
        ensure_enrolled(&state, options.join.as_deref(), options.name.as_deref()).await?;
    let address = first_ipv4(&enrollment)?;
    status::ensure_not_running(&state.socket_path()).await?;
    let tun = tunio::create_kernel_tun(&options.tun_name, address, options.overlay_prefix)?;
    let udp = bind_udp(SocketAddr::from((
        Ipv4Addr::UNSPECIFIED,
        options.listen_port,
    )))
    .await?;
    tracing::info!(name = %enrollment.name, address = %address, tun = %options.tun_name, port = options.listen_port, "daemon running");
    run(&state, &enrollment, Io { tun, udp }, shutdown).await
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
            source: Arc::new(|| posture::collect(VERSION)),
            interval: Duration::from_secs(10),
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
            sessions_rx,
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
    };
    let result = dataplane::run(io, keys.wireguard, links, shutdown).await;
    for task in tasks {
        task.abort();
    }
    let _ = std::fs::remove_file(state.socket_path());
    result
}

/// Binds the WireGuard socket with a clear error when the port is taken.
pub async fn bind_udp(addr: SocketAddr) -> Result<UdpSocket> {
    UdpSocket::bind(addr).await.with_context(|| {
        format!("cannot bind the WireGuard UDP socket on {addr}; is another daemon using it? choose another with --listen-port")
    })
}

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
