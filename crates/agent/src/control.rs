//! The control client: one mutual-TLS stream to the server, reconnecting by
//! itself. Every applied message publishes a whole new [`NetMap`]; with the
//! server away the last one stays in force.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Result;
use tokio::sync::watch;
use tonic::Code;
use ztmesh_proto::v1;
use ztmesh_rpc::v1::control_client::ControlClient;

use crate::netmap::NetMap;
use crate::tls;

/// What the control client needs.
#[derive(Clone)]
pub struct ControlConfig {
    /// Server URL.
    pub server_url: String,
    /// Pinned CA (PEM).
    pub ca_pem: String,
    /// Client certificate and identity key; replaced by key rotation.
    pub credentials: Arc<RwLock<Credentials>>,
    /// Our WireGuard UDP port, reported to the server.
    pub listen_port: u16,
}

/// The device's mutual-TLS credentials (PEM).
#[derive(Clone)]
pub struct Credentials {
    /// Client certificate.
    pub cert_pem: String,
    /// Identity key.
    pub key_pem: String,
}

impl ControlConfig {
    /// A mutual-TLS channel to the server with the current credentials.
    pub async fn channel(&self) -> Result<tonic::transport::Channel> {
        let credentials = self
            .credentials
            .read()
            .map(|c| c.clone())
            .map_err(|_| anyhow::anyhow!("credentials lock poisoned"))?;
        tls::channel(
            &self.server_url,
            &self.ca_pem,
            Some((&credentials.cert_pem, &credentials.key_pem)),
        )
        .await
    }
}

/// Runs forever: connect, apply the stream, reconnect with backoff.
/// `connected` tells status whether a stream is live.
/// `sessions` counts established streams, so posture can be reported on
/// every (re)connect.
pub async fn run(
    config: ControlConfig,
    netmap: watch::Sender<NetMap>,
    connected: Arc<AtomicBool>,
    sessions: watch::Sender<u64>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let result = sync_once(&config, &netmap, &connected, &sessions).await;
        connected.store(false, Ordering::Relaxed);
        match result {
            Ok(()) => {
                tracing::warn!("control stream ended; reconnecting");
                backoff = Duration::from_millis(250);
            }
            Err(SyncError::Refused(status)) => {
                tracing::error!(reason = %status.message(), "the server refused this device; keeping no peers");
                // A refused (revoked, unknown) device keeps nothing.
                netmap.send_modify(|map| {
                    map.peers.clear();
                    map.filter = Default::default();
                });
                backoff = Duration::from_secs(30);
            }
            Err(SyncError::Other(error)) => {
                tracing::warn!(error = %format!("{error:#}"), retry_in = ?backoff, "control connection lost; tunnels keep running under the last policy");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

enum SyncError {
    Refused(tonic::Status),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for SyncError {
    fn from(e: anyhow::Error) -> Self {
        SyncError::Other(e)
    }
}

fn classify(status: tonic::Status) -> SyncError {
    match status.code() {
        Code::PermissionDenied | Code::Unauthenticated => SyncError::Refused(status),
        _ => SyncError::Other(anyhow::anyhow!("{}: {}", status.code(), status.message())),
    }
}

async fn sync_once(
    config: &ControlConfig,
    netmap: &watch::Sender<NetMap>,
    connected: &AtomicBool,
    sessions: &watch::Sender<u64>,
) -> Result<(), SyncError> {
    let channel = config.channel().await?;
    let mut stream = ControlClient::new(channel)
        .sync(v1::SyncRequest {
            listen_port: u32::from(config.listen_port),
            endpoints: vec![],
        })
        .await
        .map_err(classify)?
        .into_inner();
    let mut map = NetMap::default();
    let mut resolved: Option<(String, Option<std::net::SocketAddr>)> = None;
    sessions.send_modify(|n| *n += 1);
    loop {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(()),
            Err(status) => return Err(classify(status)),
        };
        // Applied to a private copy: a bad message leaves the published map
        // untouched and restarts the stream (which begins with a snapshot).
        map.apply(message)
            .map_err(|e| SyncError::Other(anyhow::anyhow!(e)))?;
        map.stun = match &resolved {
            Some((name, addr)) if *name == map.stun_server => *addr,
            _ => {
                let addr = resolve_stun(&map.stun_server).await;
                resolved = Some((map.stun_server.clone(), addr));
                addr
            }
        };
        connected.store(true, Ordering::Relaxed);
        tracing::debug!(
            seq = map.seq,
            peers = map.peers.len(),
            policy = map.filter.version,
            "network map updated"
        );
        netmap.send_replace(map.clone());
    }
}

/// Resolves the server's STUN address (IPv4 first: the WireGuard socket
/// is IPv4); `None` when there is none or it does not resolve.
async fn resolve_stun(name: &str) -> Option<std::net::SocketAddr> {
    if name.is_empty() {
        return None;
    }
    let lookup = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        tokio::net::lookup_host(name.to_owned()),
    )
    .await;
    match lookup {
        Ok(Ok(addrs)) => {
            let addrs: Vec<std::net::SocketAddr> = addrs.collect();
            let found = addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or_else(|| addrs.first())
                .copied();
            if found.is_none() {
                tracing::info!(
                    stun = name,
                    "the STUN server name has no address; no endpoint discovery"
                );
            }
            found
        }
        Ok(Err(e)) => {
            tracing::info!(stun = name, error = %e, "cannot resolve the STUN server; no endpoint discovery");
            None
        }
        Err(_) => {
            tracing::info!(
                stun = name,
                "resolving the STUN server timed out; no endpoint discovery"
            );
            None
        }
    }
}
