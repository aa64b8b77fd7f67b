//! The device-facing Control service: enrollment and the sync stream.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use base64::Engine;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use ztmesh_proto::v1;
use ztmesh_rpc::v1::control_server::Control;

use crate::error::{internal, status_from_enroll};
use crate::hub::Hub;
use crate::pki::{CertificateAuthority, der_fingerprint};
use crate::secrets::{random_token, split_secret};
use crate::store::{DeviceStatus, NewDevice, Store};

/// Implementation of `ztmesh.v1.Control`.
pub struct ControlService {
    store: Store,
    hub: Hub,
    ca: Arc<CertificateAuthority>,
    overlay_v4: ipnet::Ipv4Net,
}

impl ControlService {
    /// Wires the service to its store, hub and CA.
    pub fn new(
        store: Store,
        hub: Hub,
        ca: Arc<CertificateAuthority>,
        overlay_v4: ipnet::Ipv4Net,
    ) -> Self {
        Self {
            store,
            hub,
            ca,
            overlay_v4,
        }
    }
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<v1::SyncMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Control for ControlService {
    async fn enroll(
        &self,
        request: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        let peer = request.remote_addr();
        let req = request.into_inner();
        let Some((token_id, token_secret)) = split_secret(&req.join_secret) else {
            return Err(Status::unauthenticated(
                "the join token is not valid for this server; ask an admin for a new one",
            ));
        };
        validate_device_name(&req.name)?;
        let public_key = ztmesh_proto::parse_public_key(&req.wireguard_public_key)
            .map_err(|e| Status::invalid_argument(format!("wireguard_public_key: {e}")))?;
        let device_id = random_token(9);
        let (cert_pem, fingerprint) = self
            .ca
            .sign_device(&req.csr_pem, &device_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let public_key = base64::engine::general_purpose::STANDARD.encode(public_key);
        let (token, device) = self
            .store
            .enroll(
                token_id,
                token_secret,
                NewDevice {
                    id: &device_id,
                    name: &req.name,
                    public_key: &public_key,
                    cert_fingerprint: &fingerprint,
                },
                self.overlay_v4,
            )
            .await
            .map_err(|e| {
                tracing::info!(name = %req.name, peer = ?peer, reason = %e, "enrollment refused");
                status_from_enroll(e)
            })?;
        tracing::info!(name = %device.name, address = %device.address, token = %token.id, "device enrolled");
        // The enrollment is committed; a failed publish must not make the
        // device believe it failed. Its first sync publishes again.
        if let Err(e) = self.hub.reload().await {
            tracing::warn!(error = %format!("{e:#}"), "publishing the new device failed; it will be published on its first sync");
        }
        Ok(Response::new(v1::EnrollResponse {
            device_id: device.id,
            device_name: device.name,
            addresses: vec![format!("{}/32", device.address)],
            client_cert_pem: cert_pem,
            ca_cert_pem: self.ca.cert_pem().to_owned(),
        }))
    }

    type SyncStream = SyncStream;

    async fn sync(
        &self,
        request: Request<v1::SyncRequest>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let certs = request.peer_certs().ok_or_else(|| {
            Status::unauthenticated(
                "this call needs the device's client certificate; enroll first with `ztmesh up --join TOKEN`",
            )
        })?;
        let cert = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate presented"))?;
        let fingerprint = der_fingerprint(cert.as_ref());
        let device = self
            .store
            .device_by_fingerprint(&fingerprint)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                Status::unauthenticated("this certificate belongs to no enrolled device; enroll again with a new join token")
            })?;
        if device.status == DeviceStatus::Revoked {
            return Err(revoked_status(&device.name));
        }
        let remote = request.remote_addr();
        let req = request.into_inner();
        if let Some(endpoint) = observed_endpoint(remote, req.listen_port) {
            let changed = self
                .store
                .set_endpoint(&device.id, &endpoint)
                .await
                .map_err(internal)?;
            if changed {
                self.hub.reload().await.map_err(internal)?;
            }
        }
        let (tx, rx) = mpsc::channel(16);
        let guard = self.hub.connect(&device.id);
        let mut states = self.hub.subscribe();
        let mut closing = self.hub.closing();
        tracing::info!(name = %device.name, remote = ?remote, "device connected");
        tokio::spawn(async move {
            let _online = guard;
            let state = Arc::clone(&states.borrow_and_update());
            let Some(mut last) = state.view(&device.id) else {
                let _ = tx.send(Err(revoked_status(&device.name))).await;
                return;
            };
            let mut seq = 1;
            let first = message(seq, v1::sync_message::Kind::Snapshot(last.snapshot()));
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    changed = states.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let state = Arc::clone(&states.borrow_and_update());
                        let Some(view) = state.view(&device.id) else {
                            tracing::info!(name = %device.name, "closing the stream of a revoked device");
                            let _ = tx.send(Err(revoked_status(&device.name))).await;
                            return;
                        };
                        if let Some(delta) = view.delta_from(&last) {
                            seq += 1;
                            if tx.send(Ok(message(seq, v1::sync_message::Kind::Delta(delta)))).await.is_err() {
                                return;
                            }
                        }
                        last = view;
                    }
                    _ = closing.changed() => {
                        let _ = tx.send(Err(Status::unavailable("the server is shutting down; reconnect later"))).await;
                        return;
                    }
                    () = tx.closed() => {
                        tracing::info!(name = %device.name, "device disconnected");
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn message(seq: u64, kind: v1::sync_message::Kind) -> v1::SyncMessage {
    v1::SyncMessage {
        seq,
        kind: Some(kind),
    }
}

fn revoked_status(name: &str) -> Status {
    Status::permission_denied(format!(
        "device `{name}` was revoked by an administrator; it can rejoin only with a new join token and a new state directory"
    ))
}

/// The WireGuard endpoint of a device: the address its control connection
/// came from, with the UDP port it reported.
fn observed_endpoint(remote: Option<SocketAddr>, listen_port: u32) -> Option<String> {
    let port = u16::try_from(listen_port).ok().filter(|p| *p != 0)?;
    let ip = remote?.ip();
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    };
    Some(SocketAddr::new(ip, port).to_string())
}

/// Device names: 1-63 characters of lowercase letters, digits and '-'.
fn validate_device_name(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "device name `{name}` is not valid: use 1-63 lowercase letters, digits and '-', not starting with '-'"
        )))
    }
}
