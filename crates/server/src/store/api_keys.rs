//! Admin API keys: role, expiry, revocation. Secrets are stored only as
//! SHA-256 hashes; no read here returns them except [`Store::api_key`],
//! which the authentication check needs.

use anyhow::Result;
use serde_json::json;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::audit::{Actor, insert_audit};
use super::{Store, unix_now};

/// An API key as stored, without its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Random id, the part before the dot in `ztk_ID.SECRET`.
    pub id: String,
    /// `owner`, `admin`, `policy-editor` or `auditor` (checked when used).
    pub role: String,
    /// What the key is for.
    pub description: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Actor that created it.
    pub created_by: String,
    /// Unix seconds; `None` = never.
    pub expires_at: Option<i64>,
    /// Unix seconds; `None` = not revoked.
    pub revoked_at: Option<i64>,
}

impl ApiKeyRecord {
    /// Whether the key can still be used at `now`.
    pub fn is_usable(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }
}

/// What [`Store::revoke_api_key`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// Revoked now.
    Revoked(ApiKeyRecord),
    /// It was revoked before; nothing changed.
    AlreadyRevoked(ApiKeyRecord),
    /// No key has this id.
    NotFound,
    /// It is the last usable owner key; revoking it would lock every owner out.
    LastOwner,
}

impl Store {
    /// Stores a new API key (hash only), audited in the same transaction.
    pub async fn insert_api_key(
        &self,
        key: &ApiKeyRecord,
        key_hash: &str,
        actor: &Actor,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO api_keys (id, key_hash, role, created_at, expires_at, revoked_at, description, created_by) \
             VALUES ($1, $2, $3, $4, $5, NULL, $6, $7)",
        )
        .bind(&key.id)
        .bind(key_hash)
        .bind(&key.role)
        .bind(key.created_at)
        .bind(key.expires_at)
        .bind(&key.description)
        .bind(&key.created_by)
        .execute(&mut *tx)
        .await?;
        let after = key_json(key).to_string();
        insert_audit(&mut *tx, actor, "api_key.create", &key.id, "", &after).await?;
        self.commit_audited(tx).await
    }

    /// Number of API keys (0 means the server was never initialised).
    pub async fn api_key_count(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM api_keys")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// A key and its stored hash, for authentication.
    pub async fn api_key(&self, id: &str) -> Result<Option<(String, ApiKeyRecord)>> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("key_hash")?, key_from_row(&r)?)))
            .transpose()
    }

    /// Every key, oldest first, without hashes.
    pub async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        let rows = sqlx::query("SELECT * FROM api_keys ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Revokes a key (audited). The last usable owner key is never revoked,
    /// also when two owners revoke each other's keys at the same moment.
    pub async fn revoke_api_key(&self, id: &str, actor: &Actor) -> Result<RevokeOutcome> {
        let now = unix_now();
        let mut tx = self.write_tx().await?;
        // Write first: touching every owner key takes the write lock
        // (SQLite) or their row locks (PostgreSQL), so concurrent
        // revocations of owner keys run one after the other and each sees
        // the other's result in the count below.
        sqlx::query("UPDATE api_keys SET role = role WHERE role = 'owner'")
            .execute(&mut *tx)
            .await?;
        let Some(row) = sqlx::query("SELECT * FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(RevokeOutcome::NotFound);
        };
        let before = key_from_row(&row)?;
        if before.revoked_at.is_some() {
            return Ok(RevokeOutcome::AlreadyRevoked(before));
        }
        if before.role == "owner" {
            let others: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM api_keys WHERE role = 'owner' AND id <> $1 \
                 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)",
            )
            .bind(id)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
            if others == 0 {
                return Ok(RevokeOutcome::LastOwner);
            }
        }
        sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let after = ApiKeyRecord {
            revoked_at: Some(now),
            ..before.clone()
        };
        insert_audit(
            &mut *tx,
            actor,
            "api_key.revoke",
            id,
            &key_json(&before).to_string(),
            &key_json(&after).to_string(),
        )
        .await?;
        self.commit_audited(tx).await?;
        Ok(RevokeOutcome::Revoked(after))
    }
}

/// The audit form of a key: never its hash.
fn key_json(key: &ApiKeyRecord) -> serde_json::Value {
    json!({
        "role": key.role,
        "description": key.description,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
    })
}

fn key_from_row(row: &AnyRow) -> Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: row.try_get("id")?,
        role: row.try_get("role")?,
        description: row.try_get("description")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}
