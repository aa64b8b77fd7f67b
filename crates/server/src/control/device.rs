//! Calls an enrolled device makes with its client certificate: how it is
//! recognised, key rotation and posture reports.

use base64::Engine;
use tonic::{Request, Status};
use ztmesh_proto::v1;

use super::{ControlService, refusal};
use crate::error::internal;
use crate::netmap::{Standing, policy_device, standing};
use crate::pki::der_fingerprint;
use crate::store::{Actor, DeviceRecord, PostureRecord, expiry_from, unix_now};

/// Longest text field accepted in a posture report.
const MAX_POSTURE_FIELD: usize = 256;
/// Node keys that never expire still get a certificate for a year (the
/// daemon rotates it long before).
const NEVER_EXPIRING_CERT_SECONDS: u64 = 365 * 24 * 3600;

impl ControlService {
    /// The device presenting this client certificate, if it may still take
    /// part: unknown certificates (replaced by a rotation, or never issued),
    /// revoked devices, expired node keys and disabled owners are refused
    /// with a status saying what to do. Devices awaiting approval pass.
    pub(super) async fn authenticate<T>(
        &self,
        request: &Request<T>,
    ) -> Result<DeviceRecord, Status> {
        let certs = request.peer_certs().ok_or_else(|| {
            Status::unauthenticated(
                "this call needs the device's client certificate; enroll first with `ztmesh up --join TOKEN` or `ztmesh login`",
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
                Status::unauthenticated("this certificate belongs to no enrolled device (it was replaced by a key rotation or never issued); enroll again")
            })?;
        let users = match &device.owner {
            Some(owner) => self
                .store
                .user_by_name(owner)
                .await
                .map_err(internal)?
                .map(|u| (u.name.clone(), u))
                .into_iter()
                .collect(),
            None => Default::default(),
        };
        match standing(&device, &users, unix_now()) {
            Standing::Active | Standing::PendingApproval => Ok(device),
            refused => Err(refusal(&device, refused)),
        }
    }

    pub(super) async fn rotate_key_impl(
        &self,
        request: Request<v1::RotateKeyRequest>,
    ) -> Result<v1::RotateKeyResponse, Status> {
        let device = self.authenticate(&request).await?;
        let actor = Actor {
            id: format!("device:{}", device.id),
            role: "device".to_owned(),
            source: request
                .remote_addr()
                .map_or_else(String::new, |a| a.to_string()),
        };
        let req = request.into_inner();
        let public_key = ztmesh_proto::parse_public_key(&req.wireguard_public_key)
            .map_err(|e| Status::invalid_argument(format!("wireguard_public_key: {e}")))?;
        let settings = self.store.settings().await.map_err(internal)?;
        let now = unix_now();
        let expires_at = match device.key_expiry_override {
            Some(-1) => None,
            Some(seconds) => Some(expiry_from(now, u64::try_from(seconds).unwrap_or(0))),
            None => Some(expiry_from(now, settings.key_expiry_seconds)),
        };
        let cert_until =
            expires_at.unwrap_or_else(|| expiry_from(now, NEVER_EXPIRING_CERT_SECONDS));
        let (cert_pem, fingerprint) = self
            .ca
            .sign_device(&req.csr_pem, &device.id, Some(cert_until))
            .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        let public_key = base64::engine::general_purpose::STANDARD.encode(public_key);
        let rotated = self
            .store
            .rotate_key(
                &device.id,
                &device.cert_fingerprint,
                &public_key,
                &fingerprint,
                expires_at,
                &actor,
            )
            .await
            .map_err(|e| {
                if e.to_string().to_ascii_lowercase().contains("unique") {
                    Status::already_exists("this WireGuard key is already enrolled as another device; generate a new one")
                } else {
                    internal(e)
                }
            })?;
        if !rotated {
            return Err(Status::aborted(
                "the device's key changed while rotating (another rotation won); retry with the current certificate",
            ));
        }
        tracing::info!(name = %device.name, expires_at = ?expires_at, "device rotated its keys");
        self.hub.reload().await.map_err(internal)?;
        Ok(v1::RotateKeyResponse {
            client_cert_pem: cert_pem,
            key_expires_at: expires_at.unwrap_or(0),
        })
    }

    pub(super) async fn report_posture_impl(
        &self,
        request: Request<v1::PostureReport>,
    ) -> Result<v1::ReportPostureResponse, Status> {
        let mut device = self.authenticate(&request).await?;
        let report = request.into_inner();
        let record = posture_record(report)?;
        let changed = self
            .store
            .set_posture(&device.id, &record)
            .await
            .map_err(internal)?;
        if changed {
            tracing::info!(name = %device.name, posture = ?record, "device posture changed");
            let known = |v: Option<bool>| v.map_or("unknown", |v| if v { "yes" } else { "no" });
            self.hub.events().publish(
                "device.posture",
                &device.name,
                format!(
                    "{} {}, daemon {}, disk encrypted {}, firewall {}",
                    record.os,
                    record.os_version,
                    record.daemon_version,
                    known(record.disk_encrypted),
                    known(record.firewall)
                ),
            );
            self.hub.reload().await.map_err(internal)?;
        }
        device.posture = Some(record);
        let state = self.hub.current();
        let subject = policy_device(&device, state.users());
        let checks = state
            .policy()
            .posture_checks(&subject)
            .into_iter()
            .map(|c| v1::PostureCheck {
                segment: c.segment,
                posture: c.posture,
                check: c.check,
                passed: c.passed,
                detail: c.detail,
            })
            .collect();
        Ok(v1::ReportPostureResponse { checks })
    }
}

/// A posture report, checked for size.
fn posture_record(report: v1::PostureReport) -> Result<PostureRecord, Status> {
    for (field, value) in [
        ("os", &report.os),
        ("os_version", &report.os_version),
        ("os_name", &report.os_name),
        ("kernel", &report.kernel),
        ("daemon_version", &report.daemon_version),
        ("hostname", &report.hostname),
    ] {
        if value.len() > MAX_POSTURE_FIELD || value.chars().any(char::is_control) {
            return Err(Status::invalid_argument(format!(
                "posture field `{field}` must be at most {MAX_POSTURE_FIELD} bytes without control characters"
            )));
        }
    }
    Ok(PostureRecord {
        os: report.os,
        os_version: report.os_version,
        os_name: report.os_name,
        kernel: report.kernel,
        daemon_version: report.daemon_version,
        hostname: report.hostname,
        disk_encrypted: report.disk_encrypted,
        firewall: report.firewall,
    })
}
