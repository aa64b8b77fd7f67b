//! Devices: lookups, status, approval, node key expiry and rotation,
//! posture. Enrollment is in `enroll.rs`.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{Actor, Store, insert_audit, unix_now};

/// A device as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Stable id (random).
    pub id: String,
    /// Unique, human-chosen name.
    pub name: String,
    /// WireGuard public key, base64.
    pub public_key: String,
    /// Overlay IPv4 address.
    pub address: Ipv4Addr,
    /// Tags assigned by the join token (empty for user devices).
    pub tags: Vec<String>,
    /// Owning user's name for devices enrolled by login; `None` for tagged devices.
    pub owner: Option<String>,
    /// SHA-256 of the device's current client certificate.
    pub cert_fingerprint: String,
    /// `active` or `revoked`.
    pub status: DeviceStatus,
    /// Last observed WireGuard endpoint (`ip:port`).
    pub endpoint: Option<String>,
    /// Interface candidates the daemon reported (`ip:port`), best first.
    pub candidates: Vec<String>,
    /// Enrollment time, Unix seconds.
    pub created_at: i64,
    /// Whether an admin approved it (always true with approval off).
    pub approved: bool,
    /// When the current node key was issued, Unix seconds.
    pub key_issued_at: i64,
    /// When the node key expires, Unix seconds; `None` = never.
    pub key_expires_at: Option<i64>,
    /// Per-device lifetime: `None` = network default, `Some(-1)` = never,
    /// else seconds.
    pub key_expiry_override: Option<i64>,
    /// Last posture report.
    pub posture: Option<PostureRecord>,
    /// When it came, Unix seconds.
    pub posture_at: Option<i64>,
    /// Address its control connection came from.
    pub public_ip: Option<String>,
}

impl DeviceRecord {
    /// Whether the node key has expired at `now`.
    pub fn is_expired(&self, now: i64) -> bool {
        self.key_expires_at.is_some_and(|at| at <= now)
    }
}

/// A device's posture as reported (stored as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostureRecord {
    /// `linux`, ...
    pub os: String,
    /// e.g. `12`.
    pub os_version: String,
    /// e.g. `Debian GNU/Linux 12 (bookworm)`.
    pub os_name: String,
    /// Kernel release.
    pub kernel: String,
    /// ztmesh daemon version.
    pub daemon_version: String,
    /// Host name.
    pub hostname: String,
    /// Root disk encrypted; `None` = could not tell.
    pub disk_encrypted: Option<bool>,
    /// Host firewall active; `None` = could not tell.
    pub firewall: Option<bool>,
}

/// Whether a device may take part in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    /// Enrolled and allowed.
    Active,
    /// Revoked by an administrator; gets nothing and reaches nobody.
    Revoked,
}

impl DeviceStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Active => "active",
            DeviceStatus::Revoked => "revoked",
        }
    }
}

impl Store {
    /// Every device, oldest first.
    pub async fn devices(&self) -> Result<Vec<DeviceRecord>> {
        let rows = sqlx::query("SELECT * FROM devices ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(device_from_row).collect()
    }

    /// The device whose client certificate has this fingerprint.
    pub async fn device_by_fingerprint(&self, fingerprint: &str) -> Result<Option<DeviceRecord>> {
        let row = sqlx::query("SELECT * FROM devices WHERE cert_fingerprint = $1")
            .bind(fingerprint)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    /// The device with this name, or else with this id. Names win, so a
    /// device cannot take over lookups by naming itself after another's id.
    pub async fn device_by_name(&self, name_or_id: &str) -> Result<Option<DeviceRecord>> {
        for query in [
            "SELECT * FROM devices WHERE name = $1",
            "SELECT * FROM devices WHERE id = $1",
        ] {
            let row = sqlx::query(query)
                .bind(name_or_id)
                .fetch_optional(&self.pool)
                .await?;
            if let Some(row) = row {
                return device_from_row(&row).map(Some);
            }
        }
        Ok(None)
    }

    /// Sets a device's status, audited in the same transaction.
    pub async fn set_status(&self, id: &str, status: DeviceStatus, actor: &Actor) -> Result<()> {
        let mut tx = self.write_tx().await?;
        lock_device(&mut tx, id).await?;
        let before = device_state(&mut tx, id).await?;
        sqlx::query("UPDATE devices SET status = $1 WHERE id = $2")
            .bind(status.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let after = device_state(&mut tx, id).await?;
        insert_audit(&mut *tx, actor, "device.status", id, &before, &after).await?;
        self.commit_audited(tx).await
    }

    /// Approves a device (audited).
    pub async fn approve(&self, id: &str, actor: &Actor) -> Result<()> {
        let mut tx = self.write_tx().await?;
        lock_device(&mut tx, id).await?;
        let before = device_state(&mut tx, id).await?;
        sqlx::query("UPDATE devices SET approved = 1 WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let after = device_state(&mut tx, id).await?;
        insert_audit(&mut *tx, actor, "device.approve", id, &before, &after).await?;
        self.commit_audited(tx).await
    }

    /// Sets a device's node key expiry and its per-device lifetime setting (audited).
    pub async fn set_key_expiry(
        &self,
        id: &str,
        expires_at: Option<i64>,
        override_seconds: Option<i64>,
        actor: &Actor,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        lock_device(&mut tx, id).await?;
        let before = device_state(&mut tx, id).await?;
        sqlx::query(
            "UPDATE devices SET key_expires_at = $1, key_expiry_override = $2 WHERE id = $3",
        )
        .bind(expires_at)
        .bind(override_seconds)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let after = device_state(&mut tx, id).await?;
        insert_audit(&mut *tx, actor, "device.key_expiry", id, &before, &after).await?;
        self.commit_audited(tx).await
    }

    /// Replaces a device's WireGuard key and certificate, but only if it
    /// still holds `old_fingerprint` (two racing rotations: one wins).
    pub async fn rotate_key(
        &self,
        id: &str,
        old_fingerprint: &str,
        public_key: &str,
        new_fingerprint: &str,
        expires_at: Option<i64>,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let updated = sqlx::query(
            "UPDATE devices SET public_key = $1, cert_fingerprint = $2, key_issued_at = $3, key_expires_at = $4 \
             WHERE id = $5 AND cert_fingerprint = $6 AND status = 'active'",
        )
        .bind(public_key)
        .bind(new_fingerprint)
        .bind(unix_now())
        .bind(expires_at)
        .bind(id)
        .bind(old_fingerprint)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Ok(false);
        }
        let after = json!({ "public_key": public_key, "key_expires_at": expires_at }).to_string();
        insert_audit(&mut *tx, actor, "device.rotate_key", id, "", &after).await?;
        self.commit_audited(tx).await?;
        Ok(true)
    }

    /// Stores a posture report; returns whether it differs from the last one.
    pub async fn set_posture(&self, id: &str, posture: &PostureRecord) -> Result<bool> {
        let json = serde_json::to_string(posture)?;
        let result = sqlx::query(
            "UPDATE devices SET posture = $1, posture_at = $2 WHERE id = $3 AND (posture IS NULL OR posture <> $1)",
        )
        .bind(&json)
        .bind(unix_now())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Records where a device was last seen: its WireGuard endpoint and the
    /// address its control connection came from. Returns whether either changed.
    pub async fn set_endpoint(
        &self,
        id: &str,
        endpoint: Option<&str>,
        public_ip: &str,
    ) -> Result<bool> {
        let result = sqlx::query(
            "UPDATE devices SET endpoint = COALESCE($1, endpoint), public_ip = $2, last_seen = $3 \
             WHERE id = $4 AND (($1 IS NOT NULL AND (endpoint IS NULL OR endpoint <> $1)) OR public_ip IS NULL OR public_ip <> $2)",
        )
        .bind(endpoint)
        .bind(public_ip)
        .bind(unix_now())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Replaces a device's interface candidates (already checked);
    /// returns whether they changed.
    pub async fn set_candidates(&self, id: &str, candidates: &[String]) -> Result<bool> {
        let joined = candidates.join(",");
        let result =
            sqlx::query("UPDATE devices SET candidates = $1 WHERE id = $2 AND candidates <> $1")
                .bind(&joined)
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(result.rows_affected() > 0)
    }
}

/// Takes the write lock (SQLite) or the row lock (PostgreSQL) before
/// reading the state to audit: a read-then-write transaction fails at once
/// with "database is locked" on SQLite while another connection writes.
async fn lock_device(tx: &mut Transaction<'_, Any>, id: &str) -> Result<()> {
    sqlx::query("UPDATE devices SET status = status WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The audited state of a device: what admins change.
async fn device_state(tx: &mut Transaction<'_, Any>, id: &str) -> Result<String> {
    let row = sqlx::query(
        "SELECT status, approved, key_expires_at, key_expiry_override FROM devices WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else {
        return Ok(String::new());
    };
    Ok(json!({
        "status": row.try_get::<String, _>("status")?,
        "approved": row.try_get::<i64, _>("approved")? != 0,
        "key_expires_at": row.try_get::<Option<i64>, _>("key_expires_at")?,
        "key_expiry_override": row.try_get::<Option<i64>, _>("key_expiry_override")?,
    })
    .to_string())
}

pub(super) fn device_from_row(row: &AnyRow) -> Result<DeviceRecord> {
    let status: String = row.try_get("status")?;
    let address: String = row.try_get("address")?;
    let posture: Option<String> = row.try_get("posture")?;
    Ok(DeviceRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        public_key: row.try_get("public_key")?,
        address: address.parse().context("stored device address")?,
        tags: serde_json::from_str(&row.try_get::<String, _>("tags")?)?,
        owner: row.try_get("owner")?,
        cert_fingerprint: row.try_get("cert_fingerprint")?,
        status: if status == "active" {
            DeviceStatus::Active
        } else {
            DeviceStatus::Revoked
        },
        endpoint: row.try_get("endpoint")?,
        candidates: row
            .try_get::<String, _>("candidates")?
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect(),
        created_at: row.try_get("created_at")?,
        approved: row.try_get::<i64, _>("approved")? != 0,
        key_issued_at: row.try_get("key_issued_at")?,
        key_expires_at: row.try_get("key_expires_at")?,
        key_expiry_override: row.try_get("key_expiry_override")?,
        posture: posture
            .map(|p| serde_json::from_str(&p))
            .transpose()
            .context("stored posture")?,
        posture_at: row.try_get("posture_at")?,
        public_ip: row.try_get("public_ip")?,
    })
}
