//! ztmesh coordination server.
//!
//! Authenticates devices (join tokens, then mutual TLS with certificates from
//! the internal CA) and admins (API keys), stores everything through sqlx
//! (SQLite by default, PostgreSQL for production), and streams to each device
//! its peers and compiled filter as a snapshot followed by deltas.

mod admin;
pub mod auth;
mod control;
mod error;
pub mod events;
pub mod files;
mod hub;
pub mod identity;
mod metrics;
mod netmap;
pub mod pki;
pub mod relay;
pub mod secrets;
pub mod store;
mod stun;
pub mod telemetry;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use ztmesh_rpc::v1::admin_server::AdminServer;
use ztmesh_rpc::v1::control_server::ControlServer;

pub use admin::roles;
pub use hub::Hub;
pub use store::Store;

use crate::files::{ensure_private_dir, read_private, write_private};
use crate::pki::CertificateAuthority;
use crate::secrets::{hash_secret, random_token};

/// Everything the server needs to run. Defaults are documented per field.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Holds the CA, the server certificate and (by default) the SQLite database. Mode 0700.
    pub data_dir: PathBuf,
    /// `postgres://...` or `sqlite://...`; default `sqlite://DATA_DIR/ztmesh.db`.
    pub database_url: Option<String>,
    /// URL put into join tokens; default derived from the listen address.
    pub advertise_url: Option<String>,
    /// Overlay IPv4 range devices get addresses from (default 100.64.0.0/10).
    pub overlay_v4: ipnet::Ipv4Net,
    /// Where to serve Prometheus metrics (plain HTTP; keep it local); `None`: off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where to answer STUN Binding requests (UDP); `None`: off.
    pub stun_listen: Option<std::net::SocketAddr>,
    /// Where the built-in relay listens (TLS over TCP); `None`: off.
    pub relay_listen: Option<std::net::SocketAddr>,
    /// `HOST:PORT` of a relay to hand to daemons instead of the built-in
    /// one (a `ztmesh relay` elsewhere).
    pub relay_advertise: Option<String>,
}

impl ServerConfig {
    /// A configuration with the defaults for `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            database_url: None,
            advertise_url: None,
            overlay_v4: default_overlay(),
            metrics_listen: None,
            stun_listen: None,
            relay_listen: None,
            relay_advertise: None,
        }
    }

    fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("ztmesh.db").display()
            )
        })
    }
}

/// The default overlay range, 100.64.0.0/10 (shared address space).
pub fn default_overlay() -> ipnet::Ipv4Net {
    ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(100, 64, 0, 0), 10).unwrap_or_default()
}

/// What `init` created.
#[derive(Debug, Clone)]
pub struct InitOutcome {
    /// The bootstrap admin API key: shown once, stored only as a hash.
    pub admin_key: String,
    /// SHA-256 fingerprint of the CA certificate.
    pub ca_fingerprint: String,
    /// The CA certificate (PEM), for `--ca-cert`.
    pub ca_cert_pem: String,
}

/// Written last by `init`: a data directory without it was never fully
/// initialised (an interrupted init may be run again).
const INIT_MARKER: &str = "initialised";

/// Whether `data_dir` was completely initialised.
pub fn is_initialised(data_dir: &Path) -> bool {
    data_dir.join(INIT_MARKER).exists()
}

/// Creates the data directory, database, CA, server certificate and the
/// bootstrap admin key. Refuses an already initialised directory.
/// `sans` are extra names or addresses for the server certificate.
pub async fn init(config: &ServerConfig, sans: &[String]) -> Result<InitOutcome> {
    if is_initialised(&config.data_dir) {
        bail!(
            "{} is already initialised; its admin key was shown at the first init and is stored only as a hash",
            config.data_dir.display()
        );
    }
    ensure_private_dir(&config.data_dir)?;
    let store = Store::connect(&config.database_url()).await?;
    if store.api_key_count().await? > 0 {
        bail!(
            "the database at {} already belongs to an initialised server; use a fresh database or that server's data directory",
            store::redact_url(&config.database_url())
        );
    }
    let ca = CertificateAuthority::create(&config.data_dir)?;
    let (names, addresses) = server_names(sans);
    let identity = ca.issue_server(&names, &addresses)?;
    std::fs::write(config.data_dir.join("server.pem"), &identity.chain_pem)
        .context("writing server.pem")?;
    write_private(
        &config.data_dir.join("server.key"),
        identity.key_pem.as_bytes(),
    )?;
    let key_id = random_token(6);
    let secret = random_token(32);
    let key = store::ApiKeyRecord {
        id: key_id.clone(),
        role: "owner".to_owned(),
        description: "bootstrap owner key".to_owned(),
        created_at: store::unix_now(),
        created_by: "server".to_owned(),
        expires_at: None,
        revoked_at: None,
    };
    store
        .insert_api_key(&key, &hash_secret(&secret), &store::Actor::system("server"))
        .await?;
    std::fs::write(config.data_dir.join(INIT_MARKER), "")
        .context("writing the initialisation marker")?;
    Ok(InitOutcome {
        admin_key: format!("ztk_{key_id}.{secret}"),
        ca_fingerprint: ca.fingerprint(),
        ca_cert_pem: ca.cert_pem().to_owned(),
    })
}

/// How long flow records are kept, and how often old ones are deleted.
const FLOW_RETENTION_SECONDS: i64 = 7 * 24 * 3600;
const FLOW_PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Deletes flow records past their retention now and every 10 minutes.
fn spawn_flow_pruning(store: Store, mut closing: tokio::sync::watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FLOW_PRUNE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = closing.changed() => return,
            }
            let before = store::unix_now() - FLOW_RETENTION_SECONDS;
            match store.prune_flow_records(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(records = n, "old flow records deleted"),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "deleting old flow records failed; will retry")
                }
            }
        }
    });
}

/// HOST:PORT daemons should send STUN to: the host of the advertised URL
/// and the STUN port.
fn stun_advertise(advertise_url: &str, port: u16) -> String {
    let rest = advertise_url
        .split_once("://")
        .map_or(advertise_url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.rsplit_once(':') {
        // `[v6]:port` or `host:port`; a bare `[v6]` or host has no port.
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !host.is_empty() => host,
        _ => authority,
    };
    format!("{host}:{port}")
}

/// Runs the server on `listener` until `shutdown` resolves.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    ensure_private_dir(&config.data_dir)?;
    // Fail closed: a role table that does not cover the Admin service
    // exactly stops the server before it accepts a call.
    let roles = admin::roles::RoleTable::builtin()
        .context("the admin role table (proto/ztmesh/v1/admin-roles.md) is not usable")?;
    let ca = Arc::new(CertificateAuthority::load(&config.data_dir)?);
    let chain = std::fs::read_to_string(config.data_dir.join("server.pem"))
        .context("reading server.pem")?;
    let key = read_private(&config.data_dir.join("server.key"))?;
    let store = Store::connect(&config.database_url()).await?;
    let hub = Hub::new(store.clone()).await?;
    hub.spawn_change_timer();
    spawn_flow_pruning(store.clone(), hub.closing());
    if let Some(addr) = config.stun_listen {
        let socket = stun::bind(addr).await?;
        tracing::info!(listen = %addr, "answering STUN binding requests");
        tokio::spawn(stun::serve(socket, hub.closing()));
    }
    if let Some(addr) = config.metrics_listen {
        let listener = ztmesh_metrics::bind(addr).await?;
        let for_render = hub.clone();
        let render: ztmesh_metrics::Render = Arc::new(move || {
            let hub = for_render.clone();
            Box::pin(async move { metrics::render(&hub) })
        });
        tracing::info!(listen = %addr, "metrics at http://{addr}/metrics");
        tokio::spawn(ztmesh_metrics::serve(listener, render, hub.closing()));
    }
    let identity = Arc::new(identity::Identity::load(&config.data_dir)?);
    let local = listener.local_addr()?;
    let advertise_url = config
        .advertise_url
        .clone()
        .unwrap_or_else(|| default_advertise_url(local));
    if let Some(addr) = config.relay_listen {
        let listener = relay::bind(addr).await?;
        relay::spawn(
            listener,
            store.clone(),
            &chain,
            &key,
            ca.cert_pem(),
            hub.closing(),
        )?;
        tracing::info!(listen = %addr, "relaying for devices without a direct path (TLS, device certificates)");
    }
    let relay_server = config.relay_advertise.clone().or_else(|| {
        config
            .relay_listen
            .map(|relay| stun_advertise(&advertise_url, relay.port()))
    });
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(chain, key))
        .client_ca_root(Certificate::from_pem(ca.cert_pem()))
        .client_auth_optional(true);
    let control = control::ControlService::new(
        store.clone(),
        hub.clone(),
        Arc::clone(&ca),
        Arc::clone(&identity),
        config.overlay_v4,
        config
            .stun_listen
            .map(|stun| stun_advertise(&advertise_url, stun.port())),
        relay_server,
    );
    let admin = admin::AdminService::new(
        store.clone(),
        hub.clone(),
        Arc::clone(&ca),
        identity,
        advertise_url.clone(),
    );
    let admin = admin::gate::AdminGate::new(AdminServer::new(admin), store, roles);
    let (reflection_v1, reflection_v1alpha) = reflection_services()?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    for service in ["", CONTROL_SERVICE, admin::roles::ADMIN_SERVICE] {
        health_reporter
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    tracing::info!(listen = %local, advertise = %advertise_url, ca_fingerprint = %ca.fingerprint(), "coordination server running");
    Server::builder()
        .tls_config(tls)
        .context("configuring TLS")?
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(ControlServer::new(control))
        .add_service(admin)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
            shutdown.await;
            for service in ["", CONTROL_SERVICE, admin::roles::ADMIN_SERVICE] {
                health_reporter
                    .set_service_status(service, tonic_health::ServingStatus::NotServing)
                    .await;
            }
            hub.close();
        })
        .await
        .context("serving gRPC")?;
    Ok(())
}

/// `ztmesh relay`: the relay alone, with the server's CA and certificate
/// (from its data directory) and its store (the same database: devices
/// revoked there lose the relay within seconds). Runs until `shutdown`.
pub async fn run_relay(
    config: &ServerConfig,
    listen: std::net::SocketAddr,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let ca = CertificateAuthority::load(&config.data_dir)?;
    let chain = std::fs::read_to_string(config.data_dir.join("server.pem"))
        .context("reading server.pem")?;
    let key = read_private(&config.data_dir.join("server.key"))?;
    let store = Store::connect(&config.database_url()).await?;
    let listener = relay::bind(listen).await?;
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    relay::spawn(listener, store, &chain, &key, ca.cert_pem(), closing)?;
    tracing::info!(%listen, "relay running (TLS, device certificates)");
    shutdown.await;
    closing_tx.send_replace(true);
    Ok(())
}

/// Full name of the device-facing service (health reports it).
const CONTROL_SERVICE: &str = "ztmesh.v1.Control";

/// gRPC server reflection, v1 and v1alpha (some clients, e.g. Python's
/// grpcio, speak only v1alpha), over every ztmesh service. Reflection
/// needs no API key: it shows only the schema, which is public.
fn reflection_services() -> Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ztmesh_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((
        builder()
            .build_v1()
            .context("building the gRPC reflection service (v1)")?,
        builder()
            .build_v1alpha()
            .context("building the gRPC reflection service (v1alpha)")?,
    ))
}

/// `https://IP:PORT` for a specific listen address, `https://HOSTNAME:PORT` otherwise.
pub fn default_advertise_url(listen: SocketAddr) -> String {
    if listen.ip().is_unspecified() {
        let host = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_owned());
        format!("https://{host}:{}", listen.port())
    } else {
        format!("https://{listen}")
    }
}

/// Every name and address the server is reached by: the host name,
/// localhost, the interface addresses, and the extra `sans`.
fn server_names(sans: &[String]) -> (Vec<String>, Vec<IpAddr>) {
    let mut names = vec!["localhost".to_owned()];
    if let Some(host) = hostname::get().ok().and_then(|h| h.into_string().ok()) {
        names.push(host);
    }
    let mut addresses: Vec<IpAddr> = if_addrs::get_if_addrs()
        .map(|ifs| ifs.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default();
    addresses.push(IpAddr::from([127, 0, 0, 1]));
    for san in sans {
        match san.parse::<IpAddr>() {
            Ok(ip) => addresses.push(ip),
            Err(_) => names.push(san.clone()),
        }
    }
    names.sort();
    names.dedup();
    addresses.sort();
    addresses.dedup();
    (names, addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_is_advertised_at_the_url_host() {
        assert_eq!(
            stun_advertise("https://vpn.example.com:7443", 3478),
            "vpn.example.com:3478"
        );
        assert_eq!(
            stun_advertise("https://10.88.0.1:7443", 3478),
            "10.88.0.1:3478"
        );
        assert_eq!(
            stun_advertise("https://[2001:db8::1]:7443", 3478),
            "[2001:db8::1]:3478"
        );
        assert_eq!(
            stun_advertise("https://vpn.example.com", 3479),
            "vpn.example.com:3479"
        );
    }
}
