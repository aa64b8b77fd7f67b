//! The Admin service: join tokens, devices, users, settings, policy, API
//! keys and the audit log, behind API keys with roles.
//!
//! [`gate::AdminGate`] authenticates every call and checks the role table
//! before a handler runs; handlers take the admitted caller from
//! [`AdminService::authorize`].

mod api_keys;
mod audit;
mod devices;
pub mod gate;
mod observe;
mod policy;
pub mod roles;
mod users;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tonic::{Request, Response, Status};
use ztmesh_proto::{JoinToken, v1};
use ztmesh_rpc::v1::admin_server::Admin;

use crate::error::internal;
use crate::hub::Hub;
use crate::identity::Identity;
use crate::netmap::standing;
use crate::pki::CertificateAuthority;
use crate::secrets::{hash_secret, random_token};
use crate::store::{Actor, DeviceRecord, DeviceStatus, Store, unix_now};

/// Default and longest join token lifetimes.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Implementation of `ztmesh.v1.Admin`.
pub struct AdminService {
    store: Store,
    hub: Hub,
    ca: Arc<CertificateAuthority>,
    identity: Arc<Identity>,
    advertise_url: String,
}

impl AdminService {
    /// Wires the service; `advertise_url` goes into every join token.
    pub fn new(
        store: Store,
        hub: Hub,
        ca: Arc<CertificateAuthority>,
        identity: Arc<Identity>,
        advertise_url: String,
    ) -> Self {
        Self {
            store,
            hub,
            ca,
            identity,
            advertise_url,
        }
    }

    /// The caller the gate admitted (key id, role, peer address): the
    /// actor of the audit log. Fails closed if the service is ever served
    /// without its gate.
    async fn authorize<T>(&self, request: &Request<T>) -> Result<Actor, Status> {
        request.extensions().get::<Actor>().cloned().ok_or_else(|| {
            tracing::error!("an admin call arrived without passing the gate; refused");
            Status::unauthenticated("this admin call was not authenticated; it is refused")
        })
    }

    /// A device by name or id, or a clear not-found status.
    async fn find_device(&self, name: &str) -> Result<DeviceRecord, Status> {
        self.store
            .device_by_name(name)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no device named `{name}`; `ztmesh admin devices list` shows the names"
                ))
            })
    }

    fn device_message(&self, d: &DeviceRecord) -> v1::Device {
        let state = self.hub.current();
        let standing = standing(d, state.users(), unix_now());
        v1::Device {
            id: d.id.clone(),
            name: d.name.clone(),
            addresses: vec![format!("{}/32", d.address)],
            tags: d.tags.clone(),
            status: standing.as_str().to_owned(),
            online: d.status == DeviceStatus::Active && self.hub.is_online(&d.id),
            public_key: base64::engine::general_purpose::STANDARD
                .decode(&d.public_key)
                .unwrap_or_default(),
            created_at: d.created_at,
            endpoints: crate::netmap::endpoints(d),
            user: d.owner.clone().unwrap_or_default(),
            approved: d.approved,
            key_expires_at: d.key_expires_at.unwrap_or(0),
            key_expiry_override: d.key_expiry_override.unwrap_or(0),
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_join_token(
        &self,
        request: Request<v1::CreateJoinTokenRequest>,
    ) -> Result<Response<v1::CreateJoinTokenResponse>, Status> {
        let actor = self.authorize(&request).await?;
        let req = request.into_inner();
        for tag in &req.tags {
            validate_tag(tag)?;
        }
        let lifetime = match req.expires_in_seconds {
            0 => DEFAULT_TOKEN_LIFETIME,
            s => Duration::from_secs(s),
        };
        if lifetime > MAX_TOKEN_LIFETIME {
            return Err(Status::invalid_argument(
                "a join token may live at most 365 days",
            ));
        }
        let expires_at =
            unix_now().saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX));
        let id = random_token(9);
        let secret = random_token(32);
        self.store
            .insert_token(
                &id,
                &hash_secret(&secret),
                req.reusable,
                req.pre_approved,
                &req.tags,
                expires_at,
                &actor,
            )
            .await
            .map_err(internal)?;
        let token = JoinToken {
            server_url: self.advertise_url.clone(),
            ca_fingerprint: self.ca.fingerprint(),
            secret: format!("{id}.{secret}"),
        };
        Ok(Response::new(v1::CreateJoinTokenResponse {
            token: token.encode(),
            id,
            expires_at,
        }))
    }

    async fn list_devices(
        &self,
        request: Request<v1::ListDevicesRequest>,
    ) -> Result<Response<v1::ListDevicesResponse>, Status> {
        self.authorize(&request).await?;
        let devices = self.store.devices().await.map_err(internal)?;
        Ok(Response::new(v1::ListDevicesResponse {
            devices: devices.iter().map(|d| self.device_message(d)).collect(),
        }))
    }

    async fn revoke_device(
        &self,
        request: Request<v1::RevokeDeviceRequest>,
    ) -> Result<Response<v1::RevokeDeviceResponse>, Status> {
        let actor = self.authorize(&request).await?;
        let mut device = self.find_device(&request.into_inner().device).await?;
        if device.status != DeviceStatus::Revoked {
            self.store
                .set_status(&device.id, DeviceStatus::Revoked, &actor)
                .await
                .map_err(internal)?;
            device.status = DeviceStatus::Revoked;
            tracing::info!(name = %device.name, "device revoked");
            self.hub
                .events()
                .publish("device.revoked", &device.name, format!("by {actor}"));
            self.hub.telemetry().forget(&device.id);
        }
        // Always publish, also when the device was already revoked: a retry
        // after a failed publish must still cut the device off.
        self.hub.reload().await.map_err(internal)?;
        Ok(Response::new(v1::RevokeDeviceResponse {
            device: Some(self.device_message(&device)),
        }))
    }

    async fn get_policy(
        &self,
        request: Request<v1::GetPolicyRequest>,
    ) -> Result<Response<v1::GetPolicyResponse>, Status> {
        self.authorize(&request).await?;
        self.get_policy_impl(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn set_policy(
        &self,
        request: Request<v1::SetPolicyRequest>,
    ) -> Result<Response<v1::SetPolicyResponse>, Status> {
        let actor = self.authorize(&request).await?;
        self.set_policy_impl(&actor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn validate_policy(
        &self,
        request: Request<v1::ValidatePolicyRequest>,
    ) -> Result<Response<v1::ValidatePolicyResponse>, Status> {
        self.authorize(&request).await?;
        self.validate_policy_impl(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn check_policy(
        &self,
        request: Request<v1::CheckPolicyRequest>,
    ) -> Result<Response<v1::CheckPolicyResponse>, Status> {
        self.authorize(&request).await?;
        self.check_policy_impl(request.into_inner())
            .map(Response::new)
    }

    async fn list_policy_versions(
        &self,
        request: Request<v1::ListPolicyVersionsRequest>,
    ) -> Result<Response<v1::ListPolicyVersionsResponse>, Status> {
        self.authorize(&request).await?;
        self.list_policy_versions_impl(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_flows(
        &self,
        request: Request<v1::ListFlowsRequest>,
    ) -> Result<Response<v1::ListFlowsResponse>, Status> {
        self.authorize(&request).await?;
        self.list_flows_impl(request.into_inner())
            .await
            .map(Response::new)
    }

    type WatchEventsStream = observe::EventStream;

    async fn watch_events(
        &self,
        request: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let actor = self.authorize(&request).await?;
        let key_id = actor
            .id
            .strip_prefix("apikey:")
            .unwrap_or_default()
            .to_owned();
        self.watch_events_impl(key_id, request.into_inner())
            .map(Response::new)
    }

    async fn rollback_policy(
        &self,
        request: Request<v1::RollbackPolicyRequest>,
    ) -> Result<Response<v1::SetPolicyResponse>, Status> {
        let actor = self.authorize(&request).await?;
        self.rollback_policy_impl(&actor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn create_user(
        &self,
        request: Request<v1::CreateUserRequest>,
    ) -> Result<Response<v1::CreateUserResponse>, Status> {
        let actor = self.authorize(&request).await?;
        self.create_user_impl(&actor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_users(
        &self,
        request: Request<v1::ListUsersRequest>,
    ) -> Result<Response<v1::ListUsersResponse>, Status> {
        let actor = self.authorize(&request).await?;
        self.list_users_impl(&actor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn set_user_disabled(
        &self,
        request: Request<v1::SetUserDisabledRequest>,
    ) -> Result<Response<v1::User>, Status> {
        let actor = self.authorize(&request).await?;
        self.set_user_disabled_impl(&actor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn delete_user(
        &self,
        request: Request<v1::DeleteUserRequest>,
    ) -> Result<Response<v1::DeleteUserResponse>, Status> {
        let actor = self.authorize(&request).await?;
        self.delete_user_impl(&actor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_groups(
        &self,
        request: Request<v1::ListGroupsRequest>,
    ) -> Result<Response<v1::ListGroupsResponse>, Status> {
        let actor = self.authorize(&request).await?;
        self.list_groups_impl(&actor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn set_group_member(
        &self,
        request: Request<v1::SetGroupMemberRequest>,
    ) -> Result<Response<v1::User>, Status> {
        let actor = self.authorize(&request).await?;
        self.set_group_member_impl(&actor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn approve_device(
        &self,
        request: Request<v1::DeviceRef>,
    ) -> Result<Response<v1::Device>, Status> {
        let actor = self.authorize(&request).await?;
        self.approve_device_impl(&actor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn show_device(
        &self,
        request: Request<v1::DeviceRef>,
    ) -> Result<Response<v1::DeviceDetail>, Status> {
        let actor = self.authorize(&request).await?;
        self.show_device_impl(&actor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn expire_device(
        &self,
        request: Request<v1::DeviceRef>,
    ) -> Result<Response<v1::Device>, Status> {
        let actor = self.authorize(&request).await?;
        self.expire_device_impl(&actor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn set_device_expiry(
        &self,
        request: Request<v1::SetDeviceExpiryRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let actor = self.authorize(&request).await?;
        self.set_device_expiry_impl(&actor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_settings(
        &self,
        request: Request<v1::GetSettingsRequest>,
    ) -> Result<Response<v1::Settings>, Status> {
        let actor = self.authorize(&request).await?;
        self.get_settings_impl(&actor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn update_settings(
        &self,
        request: Request<v1::UpdateSettingsRequest>,
    ) -> Result<Response<v1::Settings>, Status> {
        let actor = self.authorize(&request).await?;
        self.update_settings_impl(&actor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn create_api_key(
        &self,
        request: Request<v1::CreateApiKeyRequest>,
    ) -> Result<Response<v1::CreateApiKeyResponse>, Status> {
        let actor = self.authorize(&request).await?;
        self.create_api_key_impl(&actor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_api_keys(
        &self,
        request: Request<v1::ListApiKeysRequest>,
    ) -> Result<Response<v1::ListApiKeysResponse>, Status> {
        self.authorize(&request).await?;
        self.list_api_keys_impl(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn revoke_api_key(
        &self,
        request: Request<v1::RevokeApiKeyRequest>,
    ) -> Result<Response<v1::RevokeApiKeyResponse>, Status> {
        let actor = self.authorize(&request).await?;
        self.revoke_api_key_impl(&actor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_audit(
        &self,
        request: Request<v1::ListAuditRequest>,
    ) -> Result<Response<v1::ListAuditResponse>, Status> {
        self.authorize(&request).await?;
        self.list_audit_impl(request.into_inner())
            .await
            .map(Response::new)
    }

    type WatchAuditStream = audit::AuditStream;

    async fn watch_audit(
        &self,
        request: Request<v1::WatchAuditRequest>,
    ) -> Result<Response<Self::WatchAuditStream>, Status> {
        let actor = self.authorize(&request).await?;
        self.watch_audit_impl(&actor, request.into_inner())
            .await
            .map(Response::new)
    }
}

fn validate_tag(tag: &str) -> Result<(), Status> {
    let ok = !tag.is_empty()
        && tag.len() <= 63
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "tag `{tag}` is not valid: use 1-63 letters, digits, '-', '_' or '.'"
        )))
    }
}
