//! `ztmesh status`: what the daemon reports over its local socket.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// The daemon's state as `ztmesh status --output json` prints it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Device name.
    pub name: String,
    /// Overlay addresses.
    pub addresses: Vec<String>,
    /// WireGuard public key (base64).
    pub public_key: String,
    /// WireGuard UDP port.
    pub listen_port: u16,
    /// Whether the control stream is live.
    pub control_connected: bool,
    /// Whether the relay connection is up (when the server names a relay).
    #[serde(default)]
    pub relay_connected: bool,
    /// How relayed packets travel: `udp`, `tls`, or `none`.
    #[serde(default)]
    pub relay_transport: String,
    /// Over `udp`: the largest overlay packet one relay datagram holds
    /// (longer ones that must not be fragmented get "packet too big").
    #[serde(default)]
    pub relay_mtu: Option<u16>,
    /// Policy version of the filter in force (0 = none; nothing passes).
    pub policy_version: u64,
    /// Peers.
    pub peers: Vec<PeerStatus>,
    /// Dropped packets by reason.
    pub drops: BTreeMap<String, u64>,
    /// Inbound packets accepted.
    pub accepted_inbound: u64,
    /// Outbound packets accepted.
    #[serde(default)]
    pub accepted_outbound: u64,
    /// Bytes of inbound packets accepted.
    #[serde(default)]
    pub accepted_inbound_bytes: u64,
    /// Bytes of outbound packets accepted.
    #[serde(default)]
    pub accepted_outbound_bytes: u64,
    /// Bytes of dropped packets by reason.
    #[serde(default)]
    pub dropped_bytes: BTreeMap<String, u64>,
    /// New inbound flows a monitored deny rule would have dropped (passed).
    #[serde(default)]
    pub monitored: u64,
    /// New flows decided by each policy rule (allow and deny), by rule name.
    pub rule_hits: BTreeMap<String, u64>,
    /// Tracked flows.
    pub flows: usize,
    /// Address and port the server's STUN responder last saw this
    /// daemon's WireGuard socket at (its public endpoint behind NAT).
    #[serde(default)]
    pub public_endpoint: Option<String>,
}

/// One peer in [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerStatus {
    /// Device name.
    pub name: String,
    /// WireGuard public key (base64).
    pub public_key: String,
    /// Current endpoint.
    pub endpoint: Option<String>,
    /// The path traffic takes once a handshake completed: `direct` (to
    /// the endpoint) or `relay`; `none` before.
    #[serde(default)]
    pub path: String,
    /// Data packets that went through the relay, both ways.
    #[serde(default)]
    pub relay_data_packets: u64,
    /// Whether the endpoint has a connected socket of its own (direct
    /// traffic then skips the kernel's route lookups both ways).
    #[serde(default)]
    pub connected_socket: bool,
    /// Every endpoint the server gave (the public one, then candidates),
    /// which handshakes probe.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Round trip of the last handshake, in milliseconds: one we started,
    /// from our initiation to the first answer (on whichever path came
    /// first); one the peer started, from our response to the first
    /// packet of the session it opened.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
    /// Inner addresses this peer may use.
    pub allowed_ips: Vec<String>,
    /// Seconds since the last completed handshake.
    pub last_handshake_secs: Option<u64>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
}

/// A status request to the data plane.
pub type StatusRequest = oneshot::Sender<Status>;

/// Fails when a daemon already answers on `path`.
pub async fn ensure_not_running(path: &Path) -> Result<()> {
    if UnixStream::connect(path).await.is_ok() {
        bail!(
            "another ztmesh daemon is already running with this state directory ({}); stop it first or use another --state-dir",
            path.display()
        );
    }
    Ok(())
}

/// Serves status on the Unix socket `path` (mode 0600) until dropped.
pub async fn serve(path: &Path, requests: mpsc::Sender<StatusRequest>) -> Result<()> {
    ensure_not_running(path).await?;
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let requests = requests.clone();
            tokio::spawn(async move {
                let (tx, rx) = oneshot::channel();
                if requests.send(tx).await.is_err() {
                    return;
                }
                if let Ok(status) = rx.await
                    && let Ok(json) = serde_json::to_vec(&status)
                {
                    let _ = stream.write_all(&json).await;
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(())
}

/// Asks the daemon with state directory socket `path` for its status.
pub async fn query(path: &Path) -> Result<Status> {
    let mut stream = UnixStream::connect(path).await.with_context(|| {
        format!(
            "no ztmesh daemon is running with this state directory ({} is not answering); start one with `ztmesh up`",
            path.display()
        )
    })?;
    let mut buf = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut buf),
    )
    .await
    .context("the daemon did not answer within 5 s")??;
    serde_json::from_slice(&buf).context("the daemon sent an unreadable status")
}
