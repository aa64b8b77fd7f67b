//! Policy versions: append-only, numbered from 1; the newest is in force.

use anyhow::{Result, anyhow};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, is_unique_violation, unix_now};

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
    /// Why it was set (free text, or "rollback to version N").
    pub comment: String,
}

const COLUMNS: &str = "version, text, author, created_at, comment";

impl PolicyRecord {
    fn from_row(row: &AnyRow) -> Result<PolicyRecord> {
        Ok(PolicyRecord {
            version: u64::try_from(row.try_get::<i64, _>("version")?)?,
            text: row.try_get("text")?,
            author: row.try_get("author")?,
            created_at: row.try_get("created_at")?,
            comment: row.try_get("comment")?,
        })
    }
}

impl Store {
    /// The newest policy, if any was ever set.
    pub async fn latest_policy(&self) -> Result<Option<PolicyRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM policies ORDER BY version DESC LIMIT 1"
        )))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(PolicyRecord::from_row).transpose()
    }

    /// One policy version.
    pub async fn policy_version(&self, version: u64) -> Result<Option<PolicyRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM policies WHERE version = $1"
        )))
        .bind(i64::try_from(version)?)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(PolicyRecord::from_row).transpose()
    }

    /// The newest `limit` versions, newest first.
    pub async fn policy_versions(&self, limit: u32) -> Result<Vec<PolicyRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM policies ORDER BY version DESC LIMIT $1"
        )))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(PolicyRecord::from_row).collect()
    }

    /// Stores a new policy version and returns its number.
    pub async fn insert_policy(&self, text: &str, author: &str, comment: &str) -> Result<u64> {
        // One statement that writes first: a read-then-write transaction
        // can fail at once with "database is locked" on SQLite while another
        // connection writes (the lock upgrade would deadlock). Two
        // concurrent inserts on PostgreSQL can pick the same number; the
        // loser hits the primary key and retries.
        for _attempt in 0..5 {
            let inserted = sqlx::query(
                "INSERT INTO policies (version, text, author, created_at, comment) \
                 SELECT COALESCE(MAX(version), 0) + 1, $1, $2, $3, $4 FROM policies \
                 RETURNING version",
            )
            .bind(text)
            .bind(author)
            .bind(unix_now())
            .bind(comment)
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
