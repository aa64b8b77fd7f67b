//! The device-facing Control service: enrollment (join token or user
//! login), the sync stream, key rotation and posture reports.

mod device;
mod endpoint;
mod flows;

use std::net::{IpAddr, SocketAddr};
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
use crate::identity::{Identity, LoginError};
use crate::netmap::Standing;
use crate::pki::CertificateAuthority;
use crate::secrets::{random_token, split_secret};
use crate::store::{Actor, Credential, DeviceRecord, NewDevice, Settings, Store, unix_now};

/// Implementation of `ztmesh.v1.Control`.
pub struct ControlService {
    store: Store,
    hub: Hub,
    ca: Arc<CertificateAuthority>,
    identity: Arc<Identity>,
    overlay_v4: ipnet::Ipv4Net,
    /// HOST:PORT of the STUN responder, sent in every snapshot.
    stun_server: Option<String>,
    /// HOST:PORT of the relay, sent in every snapshot.
    relay_server: Option<String>,
}

impl ControlService {
    /// Wires the service to its store, hub, CA and user identity checks.
    pub fn new(
        store: Store,
        hub: Hub,
        ca: Arc<CertificateAuthority>,
        identity: Arc<Identity>,
        overlay_v4: ipnet::Ipv4Net,
        stun_server: Option<String>,
        relay_server: Option<String>,
    ) -> Self {
        Self {
            store,
            hub,
            ca,
            identity,
            overlay_v4,
            stun_server,
            relay_server,
        }
    }

    /// Signs the CSR for a new device and registers it with `credential`.
    async fn register(
        &self,
        credential: &Credential<'_>,
        name: &str,
        wireguard_public_key: &[u8],
        csr_pem: &str,
        settings: &Settings,
        source: &str,
    ) -> Result<v1::EnrollResponse, crate::store::EnrollError> {
        let public_key = ztmesh_proto::parse_public_key(wireguard_public_key).map_err(|e| {
            crate::store::EnrollError::Invalid(format!("wireguard_public_key: {e}"))
        })?;
        let device_id = random_token(9);
        let now = unix_now();
        let expires_at = crate::store::expiry_from(now, settings.key_expiry_seconds);
        let (cert_pem, fingerprint) = self
            .ca
            .sign_device(csr_pem, &device_id, Some(expires_at))
            .map_err(|e| crate::store::EnrollError::Invalid(format!("{e:#}")))?;
        let public_key = base64::engine::general_purpose::STANDARD.encode(public_key);
        let (_, device) = self
            .store
            .enroll(
                credential,
                NewDevice {
                    id: &device_id,
                    name,
                    public_key: &public_key,
                    cert_fingerprint: &fingerprint,
                    key_expires_at: Some(expires_at),
                    source,
                },
                self.overlay_v4,
                settings,
            )
            .await?;
        tracing::info!(name = %device.name, address = %device.address, owner = ?device.owner, tags = ?device.tags, approved = device.approved, "device enrolled");
        self.hub.events().publish(
            "device.enrolled",
            &device.name,
            match &device.owner {
                Some(owner) => format!("user {owner}, address {}", device.address),
                None => format!("tags {}, address {}", device.tags.join(","), device.address),
            },
        );
        // The enrollment is committed; a failed publish must not make the
        // device believe it failed. Its first sync publishes again.
        if let Err(e) = self.hub.reload().await {
            tracing::warn!(error = %format!("{e:#}"), "publishing the new device failed; it will be published on its first sync");
        }
        Ok(v1::EnrollResponse {
            addresses: vec![format!("{}/32", device.address)],
            client_cert_pem: cert_pem,
            ca_cert_pem: self.ca.cert_pem().to_owned(),
            key_expires_at: device.key_expires_at.unwrap_or(0),
            user: device.owner.clone().unwrap_or_default(),
            pending_approval: !device.approved,
            device_id: device.id,
            device_name: device.name,
        })
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
        let source = peer.map_or_else(String::new, |a| a.to_string());
        let req = request.into_inner();
        let Some((token_id, token_secret)) = split_secret(&req.join_secret) else {
            return Err(Status::unauthenticated(
                "the join token is not valid for this server; ask an admin for a new one",
            ));
        };
        validate_device_name(&req.name)?;
        check_public_key(&req.wireguard_public_key)?;
        let settings = self.store.settings().await.map_err(internal)?;
        let credential = Credential::Token {
            id: token_id,
            secret: token_secret,
        };
        let refused = match self
            .register(
                &credential,
                &req.name,
                &req.wireguard_public_key,
                &req.csr_pem,
                &settings,
                &source,
            )
            .await
        {
            Ok(response) => return Ok(Response::new(response)),
            Err(e) => e,
        };
        tracing::info!(name = %req.name, peer = ?peer, reason = %refused, "enrollment refused");
        // The token id is not secret; the reason never contains the secret.
        let actor = Actor {
            id: format!("token:{token_id}"),
            role: "join-token".to_owned(),
            source,
        };
        let after = serde_json::json!({ "refused": refused.to_string() }).to_string();
        if let Err(audit) = self
            .store
            .audit(&actor, "device.enroll_failed", &req.name, "", &after)
            .await
        {
            tracing::warn!(error = %format!("{audit:#}"), "auditing a refused enrollment failed");
        }
        Err(status_from_enroll(refused))
    }

    async fn login(
        &self,
        request: Request<v1::LoginRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(String::new, |a| a.to_string());
        let source = request
            .remote_addr()
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        let req = request.into_inner();
        validate_device_name(&req.name)?;
        check_public_key(&req.wireguard_public_key)?;
        if req.user.len() > 256 || req.password.len() > 1024 || req.totp_code.len() > 16 {
            return Err(Status::invalid_argument(
                "user, password or code is too long",
            ));
        }
        let user = self.store.user_by_name(&req.user).await.map_err(internal)?;
        let step = match self
            .identity
            .check(
                &req.user,
                user.as_ref(),
                req.password,
                req.totp_code,
                source,
            )
            .await
        {
            Ok(step) => step,
            Err(e) => {
                tracing::info!(user_known = user.is_some(), source = %source, refused = ?e, "login refused");
                let reason = if matches!(e, LoginError::RateLimited(_)) {
                    "rate limited"
                } else {
                    "wrong credentials"
                };
                // The name is what was typed, not a proven identity: the
                // actor is anonymous and the name is the object.
                let actor = Actor {
                    id: "anonymous".to_owned(),
                    role: "user".to_owned(),
                    source: peer.clone(),
                };
                let after = serde_json::json!({ "refused": reason }).to_string();
                if let Err(audit) = self
                    .store
                    .audit(&actor, "login.failed", &req.user, "", &after)
                    .await
                {
                    tracing::warn!(error = %format!("{audit:#}"), "auditing a failed login failed");
                }
                return Err(e.status());
            }
        };
        let Some(user) = user else {
            return Err(LoginError::Failed.status());
        };
        let settings = self.store.settings().await.map_err(internal)?;
        let credential = Credential::User {
            id: &user.id,
            name: &user.name,
            totp_step: step,
        };
        let response = self
            .register(&credential, &req.name, &req.wireguard_public_key, &req.csr_pem, &settings, &peer)
            .await
            .map_err(|e| {
                if matches!(e, crate::store::EnrollError::LoginRefused) {
                    self.identity.failed(&user.name, source);
                }
                tracing::info!(user = %user.name, name = %req.name, reason = %e, "login enrollment refused");
                status_from_enroll(e)
            })?;
        self.identity.succeeded(&user.name, source);
        Ok(Response::new(response))
    }

    async fn rotate_key(
        &self,
        request: Request<v1::RotateKeyRequest>,
    ) -> Result<Response<v1::RotateKeyResponse>, Status> {
        self.rotate_key_impl(request).await.map(Response::new)
    }

    async fn report_posture(
        &self,
        request: Request<v1::PostureReport>,
    ) -> Result<Response<v1::ReportPostureResponse>, Status> {
        self.report_posture_impl(request).await.map(Response::new)
    }

    async fn report_flows(
        &self,
        request: Request<v1::FlowReport>,
    ) -> Result<Response<v1::FlowReportResponse>, Status> {
        self.report_flows_impl(request).await.map(Response::new)
    }

    async fn report_endpoint(
        &self,
        request: Request<v1::EndpointReport>,
    ) -> Result<Response<v1::EndpointReportResponse>, Status> {
        self.report_endpoint_impl(request).await.map(Response::new)
    }

    type SyncStream = SyncStream;

    async fn sync(
        &self,
        request: Request<v1::SyncRequest>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let device = self.authenticate(&request).await?;
        let remote = request.remote_addr();
        let req = request.into_inner();
        if let Some(ip) = remote.map(|r| canonical_ip(r.ip())) {
            let endpoint = observed_endpoint(ip, req.listen_port);
            let changed = self
                .store
                .set_endpoint(&device.id, endpoint.as_deref(), &ip.to_string())
                .await
                .map_err(internal)?;
            if changed {
                self.hub.reload().await.map_err(internal)?;
            }
        }
        let (tx, rx) = mpsc::channel(16);
        let remote_text = remote.map_or_else(|| "unknown".to_owned(), |r| r.to_string());
        let guard = self.hub.connect(&device.id, &device.name, &remote_text);
        let mut states = self.hub.subscribe();
        let mut closing = self.hub.closing();
        let stun_server = self.stun_server.clone();
        let relay_server = self.relay_server.clone();
        tracing::info!(name = %device.name, remote = ?remote, "device connected");
        tokio::spawn(async move {
            let _online = guard;
            let state = Arc::clone(&states.borrow_and_update());
            let mut last = match state.view(&device.id) {
                Ok(view) => view,
                Err(standing) => {
                    let _ = tx.send(Err(refusal(&device, standing))).await;
                    return;
                }
            };
            let mut seq = 1;
            let mut snapshot = last.snapshot();
            snapshot.stun_server = stun_server.clone().unwrap_or_default();
            snapshot.relay_server = relay_server.clone().unwrap_or_default();
            let first = message(seq, v1::sync_message::Kind::Snapshot(snapshot));
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
                        let view = match state.view(&device.id) {
                            Ok(view) => view,
                            Err(standing) => {
                                tracing::info!(name = %device.name, standing = standing.as_str(), "closing the stream of a device that may no longer take part");
                                let _ = tx.send(Err(refusal(&device, standing))).await;
                                return;
                            }
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

/// The status a device that may not take part gets, saying what to do.
pub(crate) fn refusal(device: &DeviceRecord, standing: Standing) -> Status {
    let name = &device.name;
    match standing {
        Standing::Expired => Status::unauthenticated(format!(
            "the node key of device `{name}` expired; re-authenticate: `ztmesh login` for a user's device, a new join token and state directory for a server"
        )),
        Standing::UserDisabled => Status::permission_denied(format!(
            "the owner of device `{name}` is disabled; ask an administrator"
        )),
        Standing::Active | Standing::PendingApproval | Standing::Revoked => {
            Status::permission_denied(format!(
                "device `{name}` was revoked by an administrator; it can rejoin only with a new join token and a new state directory"
            ))
        }
    }
}

/// IPv4-mapped IPv6 addresses as plain IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The WireGuard endpoint of a device: the address its control connection
/// came from, with the UDP port it reported.
fn observed_endpoint(ip: IpAddr, listen_port: u32) -> Option<String> {
    let port = u16::try_from(listen_port).ok().filter(|p| *p != 0)?;
    Some(SocketAddr::new(ip, port).to_string())
}

fn check_public_key(key: &[u8]) -> Result<(), Status> {
    ztmesh_proto::parse_public_key(key)
        .map(|_| ())
        .map_err(|e| Status::invalid_argument(format!("wireguard_public_key: {e}")))
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
