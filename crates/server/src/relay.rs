//! The relay inside `ztmesh server` (and `ztmesh relay` on its own, over
//! the same store): who may use it is what the store says about the
//! device certificate, asked at connect time and every two seconds after.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use base64::Engine;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use ztmesh_relay::server::Check;
use ztmesh_relay::{Authority, Relay};

use crate::netmap::{Standing, standing};
use crate::pki::der_fingerprint;
use crate::store::{Store, unix_now};

/// Active devices only: pending approval, revoked, expired or with a
/// disabled owner, a device gets no relay.
pub struct StoreAuthority {
    store: Store,
}

impl StoreAuthority {
    /// Asks `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

impl Authority for StoreAuthority {
    fn admit(&self, cert_der: Vec<u8>) -> Check {
        let store = self.store.clone();
        Box::pin(async move {
            let device = store
                .device_by_fingerprint(&der_fingerprint(&cert_der))
                .await
                .ok()??;
            let mut users = HashMap::new();
            if let Some(owner) = &device.owner
                && let Ok(Some(user)) = store.user_by_name(owner).await
            {
                users.insert(owner.clone(), user);
            }
            if standing(&device, &users, unix_now()) != Standing::Active {
                return None;
            }
            base64::engine::general_purpose::STANDARD
                .decode(&device.public_key)
                .ok()?
                .try_into()
                .ok()
        })
    }
}

/// Binds the relay's TLS listener and its UDP socket on the same port,
/// with a clear error when the port is taken or needs privileges.
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, UdpSocket)> {
    let explain = |what: &str| {
        format!(
            "cannot listen for relay clients on {addr} ({what}): is the port in use, or below 1024 without root or CAP_NET_BIND_SERVICE? choose another with --relay-listen ADDR, or turn the relay off with --relay-listen off"
        )
    };
    let tcp = TcpListener::bind(addr)
        .await
        .with_context(|| explain("TCP"))?;
    // Shared with the devices' own sockets on the same port.
    let udp = ztmesh_relay::shared_port::bind(tcp.local_addr()?).with_context(|| explain("UDP"))?;
    Ok((tcp, udp))
}

/// Starts the relay on `listener`, using the server's certificate and the
/// network CA for client certificates; runs until `closing`.
pub fn spawn(
    (listener, udp): (TcpListener, UdpSocket),
    store: Store,
    chain_pem: &str,
    key_pem: &str,
    ca_pem: &str,
    closing: watch::Receiver<bool>,
) -> Result<Relay> {
    let tls = ztmesh_relay::server::tls_config(chain_pem, key_pem, ca_pem)?;
    let relay = Relay::new(Arc::new(StoreAuthority::new(store)));
    tokio::spawn(relay.clone().serve(listener, Some(udp), tls, closing));
    Ok(relay)
}
