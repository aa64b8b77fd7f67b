//! The database: one portable schema over SQLite (default) or PostgreSQL.
//!
//! Uses sqlx's runtime query API through `AnyPool`, so the same queries and
//! the same `migrations/` run on both backends.

mod devices;
mod flows;
mod policies;
mod users;

use anyhow::{Context, Result, anyhow};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

pub use devices::{
    Credential, DeviceRecord, DeviceStatus, EnrollError, NewDevice, PostureRecord, TokenRecord,
};
pub use flows::{FlowQuery, FlowRow};
pub use policies::PolicyRecord;
pub use users::{DEFAULT_KEY_EXPIRY_SECONDS, Settings, UserRecord};

use crate::secrets::random_token;

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
        Ok(Store { pool })
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
