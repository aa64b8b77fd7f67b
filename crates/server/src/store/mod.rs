//! The database: one portable schema over SQLite (default) or PostgreSQL.
//!
//! Uses sqlx's runtime query API through `AnyPool`, so the same queries and
//! the same `migrations/` run on both backends.

mod api_keys;
mod audit;
mod devices;
mod enroll;
mod flows;
mod policies;
mod users;

use anyhow::{Context, Result, anyhow};
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool, Transaction};

pub use api_keys::{ApiKeyRecord, RevokeOutcome};
pub use audit::{Actor, AuditFilter, AuditRecord};
pub use devices::{DeviceRecord, DeviceStatus, PostureRecord};
pub use enroll::{Credential, EnrollError, NewDevice, TokenRecord};
pub use flows::{FlowQuery, FlowRow};
pub use policies::PolicyRecord;
pub use users::{DEFAULT_KEY_EXPIRY_SECONDS, Settings, UserRecord};

use self::audit::insert_audit;

/// Handle on the database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// The database is SQLite (write transactions begin IMMEDIATE).
    sqlite: bool,
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
            sqlite: url.starts_with("sqlite:"),
            audit_signal: std::sync::Arc::new(tokio::sync::watch::channel(0).0),
        })
    }

    /// Begins a transaction that writes. On SQLite it takes the write lock
    /// at once (`BEGIN IMMEDIATE`), waiting up to the busy timeout for
    /// another writer to finish. A deferred transaction that reads first
    /// cannot take the lock later once another connection has written
    /// since its read: SQLite fails it at once with "database is locked",
    /// busy timeout or not, and the admin saw "internal server error".
    /// PostgreSQL's row locks and unique keys need no such start.
    pub(super) async fn write_tx(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        if self.sqlite {
            self.pool.begin_with("BEGIN IMMEDIATE").await
        } else {
            self.pool.begin().await
        }
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
