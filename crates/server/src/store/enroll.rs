//! Enrollment: join tokens, and registering a device by token or by user
//! login in one transaction with its audit records.

use anyhow::{Result, anyhow};
use ipnet::Ipv4Net;
use serde_json::json;
use sqlx::{Any, Row, Transaction};

use super::devices::{DeviceRecord, DeviceStatus};
use super::{Actor, Settings, Store, db, insert_audit, is_unique_violation, unix_now};
use crate::secrets::{hash_secret, verify_secret};

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
        let mut tx = self.write_tx().await?;
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
        let mut tx = self.write_tx().await.map_err(db)?;
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
            candidates: Vec::new(),
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
