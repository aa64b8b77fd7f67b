//! Devices: enrollment (by join token or by user login), lookups, status,
//! approval, node key expiry and rotation, posture.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, anyhow};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{Actor, Settings, Store, db, insert_audit, is_unique_violation, unix_now};
use crate::secrets::{hash_secret, verify_secret};

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

/// A join token as stored (its secret only as a hash).
#[derive(Debug, Clone)]
pub struct TokenRecord {
    /// Token id (the part before the dot).
    pub id: String,
    /// Tags every device enrolled with it gets.
    pub tags: Vec<String>,
}

/// Why an enrollment was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// Unknown token or wrong secret.
    #[error("the join token is not valid for this server; ask an admin for a new one")]
    InvalidToken,
    /// Past its expiry.
    #[error("the join token expired; ask an admin for a new one")]
    Expired,
    /// A single-use token that was already used.
    #[error("the join token was already used (it is single-use); ask an admin for a new one")]
    AlreadyUsed,
    /// The TOTP code was used before (replay) or the user changed meanwhile.
    #[error("login failed: wrong user name, password or code")]
    LoginRefused,
    /// The requested name belongs to another device.
    #[error("the device name `{0}` is already taken; choose another with --name")]
    NameTaken(String),
    /// The public key is already enrolled.
    #[error("this WireGuard key is already enrolled as another device")]
    KeyTaken,
    /// The request itself is malformed (bad key or CSR); the message says how.
    #[error("{0}")]
    Invalid(String),
    /// The overlay range is full.
    #[error("no free overlay address is left in {0}")]
    AddressesExhausted(Ipv4Net),
    /// Anything the database said.
    #[error(transparent)]
    Database(#[from] anyhow::Error),
}

/// What a new device brings to enrollment.
pub struct NewDevice<'a> {
    /// Id chosen by the server.
    pub id: &'a str,
    /// Name to register.
    pub name: &'a str,
    /// WireGuard public key, base64.
    pub public_key: &'a str,
    /// Fingerprint of the client certificate just issued.
    pub cert_fingerprint: &'a str,
    /// Node key expiry (Unix seconds), `None` = never.
    pub key_expires_at: Option<i64>,
    /// Peer address the enrollment came from (for the audit log).
    pub source: &'a str,
}

/// How a device proves it may enroll.
pub enum Credential<'a> {
    /// A join token: the device becomes a tagged device.
    Token {
        /// Token id.
        id: &'a str,
        /// Token secret.
        secret: &'a str,
    },
    /// A user who passed password and TOTP; `totp_step` is consumed here so
    /// a code works once.
    User {
        /// User id.
        id: &'a str,
        /// User name (the device's owner).
        name: &'a str,
        /// The TOTP time step that matched.
        totp_step: u64,
    },
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
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
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

    /// Stores a new join token (secret hashed).
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_token(
        &self,
        id: &str,
        secret_hash: &str,
        reusable: bool,
        pre_approved: bool,
        tags: &[String],
        expires_at: i64,
        actor: &Actor,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO join_tokens (id, secret_hash, reusable, tags, expires_at, created_at, created_by, uses, pre_approved) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8)")
            .bind(id)
            .bind(secret_hash)
            .bind(i64::from(reusable))
            .bind(serde_json::to_string(tags)?)
            .bind(expires_at)
            .bind(unix_now())
            .bind(&actor.id)
            .bind(i64::from(pre_approved))
            .execute(&mut *tx)
            .await?;
        let after = json!({
            "reusable": reusable,
            "pre_approved": pre_approved,
            "tags": tags,
            "expires_at": expires_at,
        })
        .to_string();
        insert_audit(&mut *tx, actor, "join_token.create", id, "", &after).await?;
        self.commit_audited(tx).await
    }

    /// Checks the credential and registers the device in one transaction:
    /// a refused enrollment leaves the token (or TOTP step) as it was. The
    /// address is the lowest free one in `range`.
    pub async fn enroll(
        &self,
        credential: &Credential<'_>,
        device: NewDevice<'_>,
        range: Ipv4Net,
        settings: &Settings,
    ) -> Result<(Option<TokenRecord>, DeviceRecord), EnrollError> {
        let mut last_error = None;
        for _attempt in 0..5 {
            match self.try_enroll(credential, &device, range, settings).await {
                Err(EnrollError::Database(e)) if is_unique_violation(&e) => last_error = Some(e),
                other => return other,
            }
        }
        Err(EnrollError::Database(
            last_error.unwrap_or_else(|| anyhow!("enrollment conflict")),
        ))
    }

    async fn try_enroll(
        &self,
        credential: &Credential<'_>,
        device: &NewDevice<'_>,
        range: Ipv4Net,
        settings: &Settings,
    ) -> Result<(Option<TokenRecord>, DeviceRecord), EnrollError> {
        let now = unix_now();
        let mut tx = self.pool.begin().await.map_err(db)?;
        let (token, owner, tags, pre_approved, actor) = match credential {
            Credential::Token { id, secret } => {
                let (token, pre_approved) = consume_token(&mut tx, id, secret, now).await?;
                let tags = token.tags.clone();
                let actor = Actor {
                    id: format!("token:{id}"),
                    role: "join-token".to_owned(),
                    source: device.source.to_owned(),
                };
                (Some(token), None, tags, pre_approved, actor)
            }
            Credential::User {
                id,
                name,
                totp_step,
            } => {
                // Write first, as for tokens: only one enrollment can move
                // the user's last TOTP step forward to this one.
                let step = i64::try_from(*totp_step).map_err(db)?;
                let consumed = sqlx::query(
                    "UPDATE users SET totp_last_step = $1 WHERE id = $2 AND disabled = 0 AND (totp_last_step IS NULL OR totp_last_step < $1)",
                )
                .bind(step)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                if consumed.rows_affected() != 1 {
                    return Err(EnrollError::LoginRefused);
                }
                let actor = Actor {
                    id: format!("user:{name}"),
                    role: "user".to_owned(),
                    source: device.source.to_owned(),
                };
                // A login is its own record: who signed in, from where.
                insert_audit(&mut *tx, &actor, "login", name, "", "")
                    .await
                    .map_err(EnrollError::Database)?;
                (None, Some((*name).to_owned()), Vec::new(), false, actor)
            }
        };
        let taken =
            sqlx::query("SELECT name, public_key FROM devices WHERE name = $1 OR public_key = $2")
                .bind(device.name)
                .bind(device.public_key)
                .fetch_all(&mut *tx)
                .await
                .map_err(db)?;
        if let Some(row) = taken.first() {
            let name: String = row.try_get("name").map_err(db)?;
            if name == device.name {
                return Err(EnrollError::NameTaken(name));
            }
            return Err(EnrollError::KeyTaken);
        }
        let used: Vec<String> = sqlx::query("SELECT address FROM devices")
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?
            .iter()
            .map(|r| r.try_get::<String, _>("address"))
            .collect::<Result<_, _>>()
            .map_err(db)?;
        let address = range
            .hosts()
            .find(|a| !used.iter().any(|u| u == &a.to_string()))
            .ok_or(EnrollError::AddressesExhausted(range))?;
        let record = DeviceRecord {
            id: device.id.to_owned(),
            name: device.name.to_owned(),
            public_key: device.public_key.to_owned(),
            address,
            tags,
            owner,
            cert_fingerprint: device.cert_fingerprint.to_owned(),
            status: DeviceStatus::Active,
            endpoint: None,
            created_at: now,
            approved: pre_approved || !settings.device_approval,
            key_issued_at: now,
            key_expires_at: device.key_expires_at,
            key_expiry_override: None,
            posture: None,
            posture_at: None,
            public_ip: None,
        };
        sqlx::query("INSERT INTO devices (id, name, public_key, address, tags, owner, cert_fingerprint, status, endpoint, created_at, last_seen, approved, key_issued_at, key_expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, NULL, $10, $9, $11)")
            .bind(&record.id)
            .bind(&record.name)
            .bind(&record.public_key)
            .bind(record.address.to_string())
            .bind(serde_json::to_string(&record.tags).map_err(db)?)
            .bind(record.owner.as_deref())
            .bind(&record.cert_fingerprint)
            .bind(record.status.as_str())
            .bind(now)
            .bind(i64::from(record.approved))
            .bind(record.key_expires_at)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        // Audited in the same transaction: no enrollment without its record.
        let after = json!({
            "id": record.id,
            "address": record.address.to_string(),
            "tags": record.tags,
            "owner": record.owner,
            "approved": record.approved,
            "key_expires_at": record.key_expires_at,
        })
        .to_string();
        insert_audit(&mut *tx, &actor, "device.enroll", &record.name, "", &after)
            .await
            .map_err(EnrollError::Database)?;
        self.commit_audited(tx)
            .await
            .map_err(EnrollError::Database)?;
        Ok((token, record))
    }
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

/// Uses a join token inside the enrollment transaction.
async fn consume_token(
    tx: &mut Transaction<'_, Any>,
    token_id: &str,
    token_secret: &str,
    now: i64,
) -> Result<(TokenRecord, bool), EnrollError> {
    // Write first: the conditional update takes the write lock (SQLite)
    // or the row lock (PostgreSQL) before anything is read, and is what
    // makes single use hold under concurrency: only one transaction can
    // move `uses` off zero.
    let consumed = sqlx::query(
        "UPDATE join_tokens SET uses = uses + 1 WHERE id = $1 AND secret_hash = $2 AND (reusable = 1 OR uses = 0) AND expires_at > $3",
    )
    .bind(token_id)
    .bind(hash_secret(token_secret))
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    let row = sqlx::query(
        "SELECT secret_hash, tags, expires_at, pre_approved FROM join_tokens WHERE id = $1",
    )
    .bind(token_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db)?
    .ok_or(EnrollError::InvalidToken)?;
    let secret_hash: String = row.try_get("secret_hash").map_err(db)?;
    if !verify_secret(token_secret, &secret_hash) {
        return Err(EnrollError::InvalidToken);
    }
    let expires_at: i64 = row.try_get("expires_at").map_err(db)?;
    if expires_at <= now {
        return Err(EnrollError::Expired);
    }
    if consumed.rows_affected() != 1 {
        return Err(EnrollError::AlreadyUsed);
    }
    let tags: Vec<String> =
        serde_json::from_str(&row.try_get::<String, _>("tags").map_err(db)?).map_err(db)?;
    let pre_approved: i64 = row.try_get("pre_approved").map_err(db)?;
    Ok((
        TokenRecord {
            id: token_id.to_owned(),
            tags,
        },
        pre_approved != 0,
    ))
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
