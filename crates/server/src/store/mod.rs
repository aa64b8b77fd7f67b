//! The database: one portable schema over SQLite (default) or PostgreSQL.
//!
//! Uses sqlx's runtime query API through `AnyPool`, so the same queries and
//! the same `migrations/` run on both backends.

mod api_keys;
mod audit;
mod devices;
mod enroll;
mod users;

use anyhow::{Context, Result, anyhow};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

pub use api_keys::{ApiKeyRecord, RevokeOutcome};
pub use audit::{Actor, AuditFilter, AuditRecord};
pub use devices::{DeviceRecord, DeviceStatus, PostureRecord};
pub use enroll::{Credential, EnrollError, NewDevice, TokenRecord};
pub use users::{DEFAULT_KEY_EXPIRY_SECONDS, Settings, UserRecord};

use self::audit::insert_audit;

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

/// Handle on the database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// Bumped after every committed audit record (see `audit.rs`).
    audit_signal: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

/// Current Unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `start + seconds`, saturating.
pub fn expiry_from(start: i64, seconds: u64) -> i64 {
    start.saturating_add(i64::try_from(seconds).unwrap_or(i64::MAX))
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
        audit::protect_audit_log(&pool)
            .await
            .context("making the audit log append-only")?;
        Ok(Store {
            pool,
            audit_signal: std::sync::Arc::new(tokio::sync::watch::channel(0).0),
        })
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
