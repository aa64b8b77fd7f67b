//! The database: one portable schema over SQLite (default) or PostgreSQL.
//!
//! Uses sqlx's runtime query API through `AnyPool`, so the same queries and
//! the same `migrations/` run on both backends.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, anyhow};
use ipnet::Ipv4Net;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::secrets::{hash_secret, random_token, verify_secret};

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
    /// Tags assigned by the join token.
    pub tags: Vec<String>,
    /// Owning user, for devices enrolled by a person (later work).
    pub owner: Option<String>,
    /// SHA-256 of the device's client certificate.
    pub cert_fingerprint: String,
    /// `active` or `revoked`.
    pub status: DeviceStatus,
    /// Last observed WireGuard endpoint (`ip:port`).
    pub endpoint: Option<String>,
    /// Enrollment time, Unix seconds.
    pub created_at: i64,
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
    /// The requested name belongs to another device.
    #[error("the device name `{0}` is already taken; choose another with --name")]
    NameTaken(String),
    /// The public key is already enrolled.
    #[error("this WireGuard key is already enrolled as another device")]
    KeyTaken,
    /// The overlay range is full.
    #[error("no free overlay address is left in {0}")]
    AddressesExhausted(Ipv4Net),
    /// Anything the database said.
    #[error(transparent)]
    Database(#[from] anyhow::Error),
}

/// A stored policy version.
#[derive(Debug, Clone)]
pub struct PolicyRecord {
    /// Increasing version number, from 1.
    pub version: u64,
    /// Source text.
    pub text: String,
    /// Who set it (API key id).
    pub author: String,
    /// Unix seconds.
    pub created_at: i64,
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
}

/// Handle on the database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
}

/// Current Unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Store {
    /// Connects and applies the migrations. `sqlite::memory:` gives a
    /// private in-memory database (one pinned connection).
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let memory = url.starts_with("sqlite::memory:");
        let mut options = AnyPoolOptions::new().acquire_timeout(std::time::Duration::from_secs(5));
        if memory {
            options = options
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        } else {
            options = options.max_connections(8);
        }
        let pool = options.connect(url).await.map_err(|e| {
            anyhow!(
                "cannot open the database at {}: {e}; check that it is running and the URL is right",
                redact_url(url)
            )
        })?;
        sqlx::migrate!("../../migrations")
            .run(&pool)
            .await
            .context("applying database migrations")?;
        Ok(Store { pool })
    }

    /// Every device, ordered by address.
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

    /// Sets a device's status.
    pub async fn set_status(&self, id: &str, status: DeviceStatus) -> Result<()> {
        sqlx::query("UPDATE devices SET status = $1 WHERE id = $2")
            .bind(status.as_str())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records where a device was last seen; returns whether the endpoint changed.
    pub async fn set_endpoint(&self, id: &str, endpoint: &str) -> Result<bool> {
        let result = sqlx::query(
            "UPDATE devices SET endpoint = $1, last_seen = $2 WHERE id = $3 AND (endpoint IS NULL OR endpoint <> $1)",
        )
        .bind(endpoint)
        .bind(unix_now())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Stores a new join token (secret hashed).
    pub async fn insert_token(
        &self,
        id: &str,
        secret_hash: &str,
        reusable: bool,
        tags: &[String],
        expires_at: i64,
        created_by: &str,
    ) -> Result<()> {
        sqlx::query("INSERT INTO join_tokens (id, secret_hash, reusable, tags, expires_at, created_at, created_by, uses) VALUES ($1, $2, $3, $4, $5, $6, $7, 0)")
            .bind(id)
            .bind(secret_hash)
            .bind(i64::from(reusable))
            .bind(serde_json::to_string(tags)?)
            .bind(expires_at)
            .bind(unix_now())
            .bind(created_by)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Consumes a join token and registers the device in one transaction:
    /// a refused enrollment leaves the token as it was. The address is the
    /// lowest free one in `range`.
    pub async fn enroll(
        &self,
        token_id: &str,
        token_secret: &str,
        device: NewDevice<'_>,
        range: Ipv4Net,
    ) -> Result<(TokenRecord, DeviceRecord), EnrollError> {
        let mut last_error = None;
        for _attempt in 0..5 {
            match self
                .try_enroll(token_id, token_secret, &device, range)
                .await
            {
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
        token_id: &str,
        token_secret: &str,
        device: &NewDevice<'_>,
        range: Ipv4Net,
    ) -> Result<(TokenRecord, DeviceRecord), EnrollError> {
        let now = unix_now();
        let mut tx = self.pool.begin().await.map_err(db)?;
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
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let row =
            sqlx::query("SELECT secret_hash, tags, expires_at FROM join_tokens WHERE id = $1")
                .bind(token_id)
                .fetch_optional(&mut *tx)
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
            serde_json::from_str(&row.try_get::<String, _>("tags").map_err(db)?)
                .map_err(|e| db(anyhow::Error::from(e)))?;
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
            tags: tags.clone(),
            owner: None,
            cert_fingerprint: device.cert_fingerprint.to_owned(),
            status: DeviceStatus::Active,
            endpoint: None,
            created_at: now,
        };
        sqlx::query("INSERT INTO devices (id, name, public_key, address, tags, owner, cert_fingerprint, status, endpoint, created_at, last_seen) VALUES ($1, $2, $3, $4, $5, NULL, $6, $7, NULL, $8, NULL)")
            .bind(&record.id)
            .bind(&record.name)
            .bind(&record.public_key)
            .bind(record.address.to_string())
            .bind(serde_json::to_string(&record.tags).map_err(|e| db(anyhow::Error::from(e)))?)
            .bind(&record.cert_fingerprint)
            .bind(record.status.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        // Audited in the same transaction: no enrollment without its record.
        insert_audit(
            &mut *tx,
            &format!("token:{token_id}"),
            "device.enroll",
            &record.name,
            &format!("address {} tags {:?}", record.address, record.tags),
        )
        .await
        .map_err(EnrollError::Database)?;
        tx.commit().await.map_err(db)?;
        Ok((
            TokenRecord {
                id: token_id.to_owned(),
                tags,
            },
            record,
        ))
    }

    /// Stores an API key (hash only).
    pub async fn insert_api_key(&self, id: &str, key_hash: &str, role: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, key_hash, role, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(key_hash)
        .bind(role)
        .bind(unix_now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Number of API keys (0 means the server was never initialised).
    pub async fn api_key_count(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM api_keys")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// The stored hash and role of an API key.
    pub async fn api_key(&self, id: &str) -> Result<Option<(String, String)>> {
        let row = sqlx::query("SELECT key_hash, role FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("key_hash")?, r.try_get("role")?)))
            .transpose()
    }

    /// The newest policy, if any was ever set.
    pub async fn latest_policy(&self) -> Result<Option<PolicyRecord>> {
        let row = sqlx::query(
            "SELECT version, text, author, created_at FROM policies ORDER BY version DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(PolicyRecord {
                version: u64::try_from(r.try_get::<i64, _>("version")?)?,
                text: r.try_get("text")?,
                author: r.try_get("author")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
    }

    /// Stores a new policy version and returns its number.
    pub async fn insert_policy(&self, text: &str, author: &str) -> Result<u64> {
        // One statement that writes first: a read-then-write transaction
        // can fail at once with "database is locked" on SQLite while another
        // connection writes (the lock upgrade would deadlock). Two
        // concurrent inserts on PostgreSQL can pick the same number; the
        // loser hits the primary key and retries.
        for _attempt in 0..5 {
            let inserted = sqlx::query(
                "INSERT INTO policies (version, text, author, created_at) \
                 SELECT COALESCE(MAX(version), 0) + 1, $1, $2, $3 FROM policies \
                 RETURNING version",
            )
            .bind(text)
            .bind(author)
            .bind(unix_now())
            .fetch_one(&self.pool)
            .await;
            match inserted {
                Ok(row) => return Ok(u64::try_from(row.try_get::<i64, _>("version")?)?),
                Err(e) => {
                    let e = anyhow::Error::from(e);
                    if !is_unique_violation(&e) {
                        return Err(e);
                    }
                }
            }
        }
        Err(anyhow!(
            "another policy was being stored at the same time; try again"
        ))
    }

    /// Appends to the audit log.
    pub async fn audit(&self, actor: &str, action: &str, target: &str, detail: &str) -> Result<()> {
        insert_audit(&self.pool, actor, action, target, detail).await
    }

    /// Audit entries, oldest first: (actor, action, target).
    pub async fn audit_entries(&self) -> Result<Vec<(String, String, String)>> {
        let rows = sqlx::query("SELECT actor, action, target FROM audit_log ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("actor")?,
                    r.try_get("action")?,
                    r.try_get("target")?,
                ))
            })
            .collect()
    }
}

/// Creates database `name` on the server `url` points at (PostgreSQL; used
/// by tests to get a fresh database each).
pub async fn create_database(url: &str, name: &str) -> Result<()> {
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(anyhow!(
            "database name `{name}` must be letters, digits and '_'"
        ));
    }
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok(())
}

async fn insert_audit<'e, E>(
    executor: E,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
) -> Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    // Ids sort in time order (nanoseconds, zero-padded), so entries written
    // within one second keep their order on every backend.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    sqlx::query("INSERT INTO audit_log (id, at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(format!("{nanos:024}-{}", random_token(6)))
        .bind(unix_now())
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(detail)
        .execute(executor)
        .await?;
    Ok(())
}

fn device_from_row(row: &AnyRow) -> Result<DeviceRecord> {
    let status: String = row.try_get("status")?;
    let address: String = row.try_get("address")?;
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
    })
}

fn db(e: impl Into<anyhow::Error>) -> EnrollError {
    EnrollError::Database(e.into())
}

fn is_unique_violation(e: &anyhow::Error) -> bool {
    e.downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
        .is_some_and(|e| e.is_unique_violation())
}

/// The URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
