//! Admin calls on device trust (approval, node key expiry, posture) and the
//! network settings.

use tonic::Status;
use ztmesh_proto::v1;

use super::AdminService;
use crate::error::internal;
use crate::netmap::policy_device;
use crate::store::{Actor, Settings, expiry_from, unix_now};

/// Shortest node key lifetime accepted (the daemon rotates at two thirds).
const MIN_KEY_EXPIRY_SECONDS: u64 = 3;
/// Longest node key lifetime accepted: about 10 years.
const MAX_KEY_EXPIRY_SECONDS: u64 = 3650 * 24 * 3600;

impl AdminService {
    pub(super) async fn approve_device_impl(
        &self,
        actor: &Actor,
        req: v1::DeviceRef,
    ) -> Result<v1::Device, Status> {
        let mut device = self.find_device(&req.device).await?;
        if !device.approved {
            self.store
                .approve(&device.id, actor)
                .await
                .map_err(internal)?;
            device.approved = true;
            tracing::info!(name = %device.name, "device approved");
            self.hub
                .events()
                .publish("device.approved", &device.name, format!("by {actor}"));
        }
        self.hub.reload().await.map_err(internal)?;
        Ok(self.device_message(&device))
    }

    pub(super) async fn show_device_impl(
        &self,
        _actor: &Actor,
        req: v1::DeviceRef,
    ) -> Result<v1::DeviceDetail, Status> {
        let device = self.find_device(&req.device).await?;
        let state = self.hub.current();
        let subject = policy_device(&device, state.users());
        let checks = state
            .policy()
            .posture_checks(&subject)
            .into_iter()
            .map(|c| v1::PostureCheckResult {
                segment: c.segment,
                posture: c.posture,
                check: c.check,
                passed: c.passed,
                detail: c.detail,
            })
            .collect();
        let segments = state.policy().segments_of(&subject);
        let posture = device.posture.as_ref().map(|p| v1::DevicePosture {
            os: p.os.clone(),
            os_version: p.os_version.clone(),
            os_name: p.os_name.clone(),
            kernel: p.kernel.clone(),
            daemon_version: p.daemon_version.clone(),
            hostname: p.hostname.clone(),
            disk_encrypted: p.disk_encrypted,
            firewall: p.firewall,
            public_ip: device.public_ip.clone().unwrap_or_default(),
            reported_at: device.posture_at.unwrap_or(0),
        });
        Ok(v1::DeviceDetail {
            device: Some(self.device_message(&device)),
            posture,
            checks,
            segments,
        })
    }

    pub(super) async fn expire_device_impl(
        &self,
        actor: &Actor,
        req: v1::DeviceRef,
    ) -> Result<v1::Device, Status> {
        let mut device = self.find_device(&req.device).await?;
        let now = unix_now();
        if !device.is_expired(now) {
            self.store
                .set_key_expiry(&device.id, Some(now), device.key_expiry_override, actor)
                .await
                .map_err(internal)?;
            device.key_expires_at = Some(now);
            tracing::info!(name = %device.name, "node key expired by an admin");
            self.hub
                .events()
                .publish("device.expired", &device.name, format!("by {actor}"));
        }
        self.hub.reload().await.map_err(internal)?;
        Ok(self.device_message(&device))
    }

    pub(super) async fn set_device_expiry_impl(
        &self,
        actor: &Actor,
        req: v1::SetDeviceExpiryRequest,
    ) -> Result<v1::Device, Status> {
        let mut device = self.find_device(&req.device).await?;
        let now = unix_now();
        let settings = self.store.settings().await.map_err(internal)?;
        let (expires_at, override_seconds) = if req.never {
            if device.owner.is_some() {
                return Err(Status::failed_precondition(format!(
                    "device `{}` belongs to user `{}`; only tagged devices (servers) may have keys that never expire",
                    device.name,
                    device.owner.as_deref().unwrap_or_default()
                )));
            }
            (None, Some(-1))
        } else if req.network_default {
            (
                Some(expiry_from(
                    device.key_issued_at,
                    settings.key_expiry_seconds,
                )),
                None,
            )
        } else {
            check_lifetime(req.seconds)?;
            let seconds = i64::try_from(req.seconds).unwrap_or(i64::MAX);
            (Some(now.saturating_add(seconds)), Some(seconds))
        };
        self.store
            .set_key_expiry(&device.id, expires_at, override_seconds, actor)
            .await
            .map_err(internal)?;
        device.key_expires_at = expires_at;
        device.key_expiry_override = override_seconds;
        self.hub.reload().await.map_err(internal)?;
        Ok(self.device_message(&device))
    }

    pub(super) async fn get_settings_impl(
        &self,
        _actor: &Actor,
        _req: v1::GetSettingsRequest,
    ) -> Result<v1::Settings, Status> {
        let settings = self.store.settings().await.map_err(internal)?;
        Ok(settings_message(&settings))
    }

    pub(super) async fn update_settings_impl(
        &self,
        actor: &Actor,
        req: v1::UpdateSettingsRequest,
    ) -> Result<v1::Settings, Status> {
        let mut settings = self.store.settings().await.map_err(internal)?;
        if let Some(approval) = req.device_approval {
            settings.device_approval = approval;
        }
        if let Some(seconds) = req.key_expiry_seconds {
            check_lifetime(seconds)?;
            settings.key_expiry_seconds = seconds;
        }
        self.store
            .set_settings(&settings, actor)
            .await
            .map_err(internal)?;
        tracing::info!(?settings, "network settings updated");
        Ok(settings_message(&settings))
    }
}

/// A node key lifetime from an admin, checked.
fn check_lifetime(seconds: u64) -> Result<(), Status> {
    if (MIN_KEY_EXPIRY_SECONDS..=MAX_KEY_EXPIRY_SECONDS).contains(&seconds) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "a node key lifetime must be between {MIN_KEY_EXPIRY_SECONDS} seconds and 3650 days (got {seconds} seconds)"
        )))
    }
}

fn settings_message(settings: &Settings) -> v1::Settings {
    v1::Settings {
        device_approval: settings.device_approval,
        key_expiry_seconds: settings.key_expiry_seconds,
    }
}
