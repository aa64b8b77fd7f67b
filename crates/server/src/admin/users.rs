//! Admin calls on users and directory groups.

use std::collections::BTreeMap;

use tonic::Status;
use ztmesh_proto::v1;

use super::AdminService;
use crate::error::internal;
use crate::identity::{validate_group, validate_user_name};
use crate::store::{Actor, UserRecord, unix_now};

impl AdminService {
    pub(super) async fn create_user_impl(
        &self,
        actor: &Actor,
        req: v1::CreateUserRequest,
    ) -> Result<v1::CreateUserResponse, Status> {
        validate_user_name(&req.name)?;
        let mut groups = req.groups.clone();
        for group in &groups {
            validate_group(group)?;
        }
        groups.sort();
        groups.dedup();
        if self
            .store
            .user_by_name(&req.name)
            .await
            .map_err(internal)?
            .is_some()
        {
            return Err(Status::already_exists(format!(
                "a user named `{}` already exists; `ztmesh admin users list` shows them",
                req.name
            )));
        }
        let (password, generated) = if req.password.is_empty() {
            let password = crate::secrets::random_token(15);
            (password.clone(), password)
        } else {
            (req.password.clone(), String::new())
        };
        let secrets = self
            .identity
            .new_user_secrets(&req.name, password)
            .await
            .map_err(|e| match e {
                crate::identity::SecretsError::Weak(message) => {
                    Status::invalid_argument(format!("password: {message}"))
                }
                crate::identity::SecretsError::Internal(e) => internal(e),
            })?;
        let user = UserRecord {
            id: crate::secrets::random_token(9),
            name: req.name.clone(),
            password_hash: secrets.password_hash,
            totp_sealed: secrets.totp_sealed,
            totp_last_step: None,
            disabled: false,
            created_at: unix_now(),
            groups,
        };
        self.store.create_user(&user, actor).await.map_err(|e| {
            if e.to_string().contains("already exists") {
                Status::already_exists(e.to_string())
            } else {
                internal(e)
            }
        })?;
        self.hub.reload().await.map_err(internal)?;
        tracing::info!(user = %user.name, groups = ?user.groups, "user created");
        Ok(v1::CreateUserResponse {
            user: Some(user_message(&user, 0)),
            totp_uri: secrets.totp_uri,
            generated_password: generated,
        })
    }

    pub(super) async fn list_users_impl(
        &self,
        _actor: &Actor,
        _req: v1::ListUsersRequest,
    ) -> Result<v1::ListUsersResponse, Status> {
        let users = self.store.users().await.map_err(internal)?;
        let devices = self.device_counts().await?;
        Ok(v1::ListUsersResponse {
            users: users
                .iter()
                .map(|u| user_message(u, devices.get(&u.name).copied().unwrap_or(0)))
                .collect(),
        })
    }

    pub(super) async fn set_user_disabled_impl(
        &self,
        actor: &Actor,
        req: v1::SetUserDisabledRequest,
    ) -> Result<v1::User, Status> {
        let mut user = self.find_user(&req.name).await?;
        self.store
            .set_user_disabled(&user.id, req.disabled, actor)
            .await
            .map_err(internal)?;
        user.disabled = req.disabled;
        // Publishing cuts the user's devices off every peer and closes their streams.
        self.hub.reload().await.map_err(internal)?;
        tracing::info!(user = %user.name, disabled = req.disabled, "user updated");
        let devices = self.device_counts().await?;
        Ok(user_message(
            &user,
            devices.get(&user.name).copied().unwrap_or(0),
        ))
    }

    pub(super) async fn delete_user_impl(
        &self,
        actor: &Actor,
        req: v1::DeleteUserRequest,
    ) -> Result<v1::DeleteUserResponse, Status> {
        let user = self.find_user(&req.name).await?;
        let revoked = self
            .store
            .delete_user(&user, actor)
            .await
            .map_err(internal)?;
        self.hub.reload().await.map_err(internal)?;
        tracing::info!(user = %user.name, revoked, "user deleted");
        Ok(v1::DeleteUserResponse {
            devices_revoked: u32::try_from(revoked).unwrap_or(u32::MAX),
        })
    }

    pub(super) async fn list_groups_impl(
        &self,
        _actor: &Actor,
        _req: v1::ListGroupsRequest,
    ) -> Result<v1::ListGroupsResponse, Status> {
        let users = self.store.users().await.map_err(internal)?;
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for user in &users {
            for group in &user.groups {
                groups
                    .entry(group.clone())
                    .or_default()
                    .push(user.name.clone());
            }
        }
        Ok(v1::ListGroupsResponse {
            groups: groups
                .into_iter()
                .map(|(name, members)| v1::Group { name, members })
                .collect(),
        })
    }

    pub(super) async fn set_group_member_impl(
        &self,
        actor: &Actor,
        req: v1::SetGroupMemberRequest,
    ) -> Result<v1::User, Status> {
        validate_group(&req.group)?;
        let user = self.find_user(&req.user).await?;
        self.store
            .set_group_member(&user.id, &req.group, req.member, actor)
            .await
            .map_err(internal)?;
        self.hub.reload().await.map_err(internal)?;
        let user = self.find_user(&req.user).await?;
        let devices = self.device_counts().await?;
        Ok(user_message(
            &user,
            devices.get(&user.name).copied().unwrap_or(0),
        ))
    }

    async fn find_user(&self, name: &str) -> Result<UserRecord, Status> {
        self.store
            .user_by_name(name)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no user named `{name}`; `ztmesh admin users list` shows them"
                ))
            })
    }

    /// Active devices per owner.
    async fn device_counts(&self) -> Result<BTreeMap<String, u32>, Status> {
        let mut counts = BTreeMap::new();
        for device in self.store.devices().await.map_err(internal)? {
            if device.status == crate::store::DeviceStatus::Active
                && let Some(owner) = device.owner
            {
                *counts.entry(owner).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }
}

fn user_message(user: &UserRecord, devices: u32) -> v1::User {
    v1::User {
        id: user.id.clone(),
        name: user.name.clone(),
        groups: user.groups.clone(),
        disabled: user.disabled,
        created_at: user.created_at,
        devices,
    }
}
