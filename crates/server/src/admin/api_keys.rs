//! Admin calls on API keys: create (the secret is shown once), list (never
//! secrets or hashes), revoke. Which role may manage which keys:
//! [`Role::may_manage`].

use tonic::Status;
use ztmesh_proto::v1;

use super::AdminService;
use super::gate::rfc3339;
use super::roles::Role;
use crate::error::internal;
use crate::secrets::{hash_secret, random_token};
use crate::store::{Actor, ApiKeyRecord, RevokeOutcome, expiry_from, unix_now};

/// Longest key lifetime accepted: ten years.
const MAX_KEY_LIFETIME_SECONDS: u64 = 3650 * 24 * 3600;
/// Longest description accepted, in characters.
const MAX_DESCRIPTION_CHARS: usize = 200;

impl AdminService {
    pub(super) async fn create_api_key_impl(
        &self,
        actor: &Actor,
        req: v1::CreateApiKeyRequest,
    ) -> Result<v1::CreateApiKeyResponse, Status> {
        let role: Role = req.role.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "role `{}` is not known; use owner, admin, policy-editor or auditor",
                req.role
            ))
        })?;
        let caller = self.caller_key(actor).await?;
        let caller_role: Role = caller
            .role
            .parse()
            .map_err(|_| Status::permission_denied("the calling key has no known role"))?;
        if !caller_role.may_manage(role) {
            return Err(Status::permission_denied(format!(
                "a key with role `{caller_role}` cannot create `{role}` keys; ask an owner"
            )));
        }
        if req.description.chars().count() > MAX_DESCRIPTION_CHARS
            || req.description.chars().any(char::is_control)
        {
            return Err(Status::invalid_argument(format!(
                "the description must be at most {MAX_DESCRIPTION_CHARS} characters on one line"
            )));
        }
        if req.expires_in_seconds > MAX_KEY_LIFETIME_SECONDS {
            return Err(Status::invalid_argument(
                "an API key may live at most 3650 days; pass a shorter --expires",
            ));
        }
        let now = unix_now();
        let expires_at =
            (req.expires_in_seconds > 0).then(|| expiry_from(now, req.expires_in_seconds));
        // A key must not outlive the key that created it, or an expiring
        // key could extend its own access forever.
        if let Some(limit) = caller.expires_at
            && expires_at.is_none_or(|at| at > limit)
        {
            return Err(Status::invalid_argument(format!(
                "the calling key expires at {}; a key it creates must expire no later: pass --expires {}s or less",
                rfc3339(limit),
                limit.saturating_sub(now).max(1)
            )));
        }
        let key = ApiKeyRecord {
            id: random_token(6),
            role: role.as_str().to_owned(),
            description: req.description,
            created_at: now,
            created_by: actor.id.clone(),
            expires_at,
            revoked_at: None,
        };
        let secret = random_token(32);
        self.store
            .insert_api_key(&key, &hash_secret(&secret), actor)
            .await
            .map_err(internal)?;
        tracing::info!(key = %key.id, %role, by = %actor.id, "API key created");
        Ok(v1::CreateApiKeyResponse {
            secret: format!("ztk_{}.{secret}", key.id),
            key: Some(key_message(&key)),
        })
    }

    pub(super) async fn list_api_keys_impl(
        &self,
        req: v1::ListApiKeysRequest,
    ) -> Result<v1::ListApiKeysResponse, Status> {
        let now = unix_now();
        let keys = self.store.api_keys().await.map_err(internal)?;
        Ok(v1::ListApiKeysResponse {
            keys: keys
                .iter()
                .filter(|k| req.all || k.is_usable(now))
                .map(key_message)
                .collect(),
        })
    }

    pub(super) async fn revoke_api_key_impl(
        &self,
        actor: &Actor,
        req: v1::RevokeApiKeyRequest,
    ) -> Result<v1::RevokeApiKeyResponse, Status> {
        let id = req.id.trim().trim_start_matches("ztk_");
        if id.is_empty() {
            return Err(Status::invalid_argument(
                "no key id given; `ztmesh admin api-keys list` shows the ids",
            ));
        }
        let not_found = || {
            Status::not_found(format!(
                "no API key `{id}`; `ztmesh admin api-keys list --all` shows the ids"
            ))
        };
        let (_, target) = self
            .store
            .api_key(id)
            .await
            .map_err(internal)?
            .ok_or_else(not_found)?;
        let caller_role: Role = actor
            .role
            .parse()
            .map_err(|_| Status::permission_denied("the calling key has no known role"))?;
        // A key with a role this server does not know is treated as an
        // owner key: only owners may revoke it.
        let target_role = target.role.parse().unwrap_or(Role::Owner);
        if !caller_role.may_manage(target_role) {
            return Err(Status::permission_denied(format!(
                "a key with role `{caller_role}` cannot revoke `{}` keys; ask an owner",
                target.role
            )));
        }
        let key = match self
            .store
            .revoke_api_key(id, actor)
            .await
            .map_err(internal)?
        {
            RevokeOutcome::Revoked(key) => {
                tracing::info!(key = %id, by = %actor.id, "API key revoked");
                key
            }
            RevokeOutcome::AlreadyRevoked(key) => key,
            RevokeOutcome::NotFound => return Err(not_found()),
            RevokeOutcome::LastOwner => {
                return Err(Status::failed_precondition(format!(
                    "API key `{id}` is the last usable owner key; create another owner key first (`ztmesh admin api-keys create --role owner`), then revoke this one"
                )));
            }
        };
        Ok(v1::RevokeApiKeyResponse {
            key: Some(key_message(&key)),
        })
    }

    /// The calling key's record (for its expiry).
    async fn caller_key(&self, actor: &Actor) -> Result<ApiKeyRecord, Status> {
        let id = actor.id.strip_prefix("apikey:").unwrap_or_default();
        self.store
            .api_key(id)
            .await
            .map_err(internal)?
            .map(|(_, key)| key)
            .ok_or_else(|| Status::unauthenticated("the calling API key no longer exists"))
    }
}

fn key_message(key: &ApiKeyRecord) -> v1::ApiKey {
    v1::ApiKey {
        id: key.id.clone(),
        role: key.role.clone(),
        description: key.description.clone(),
        created_at: key.created_at,
        created_by: key.created_by.clone(),
        expires_at: key.expires_at.unwrap_or(0),
        revoked_at: key.revoked_at.unwrap_or(0),
    }
}
