//! The audit log: append-only records of who changed what, from where.
//!
//! Records are written in the transaction of the change they describe.
//! After the commit the store bumps a counter that `WatchAudit` streams
//! wait on; they then read the table, so a rolled-back change is never
//! streamed, and a short poll also finds other replicas' records.

use anyhow::{Result, bail};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyPool, Row, Transaction};

use super::{Store, unix_now};
use crate::secrets::random_token;

/// Who did something, as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `apikey:ID`, `user:NAME`, `token:ID`, `device:ID`, `server`, `anonymous`.
    pub id: String,
    /// The API key's role, or `user`, `join-token`, `device`, `system`.
    pub role: String,
    /// Peer address of the request; empty for the server's own actions.
    pub source: String,
}

/// The actor's id (`apikey:ID`, ...), as messages and events name it.
impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id)
    }
}

impl Actor {
    /// The server itself (bootstrap, timers).
    pub fn system(id: &str) -> Actor {
        Actor {
            id: id.to_owned(),
            role: "system".to_owned(),
            source: String::new(),
        }
    }
}

/// One audit record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Sorts in time order.
    pub id: String,
    /// Unix seconds.
    pub at: i64,
    /// Who (see [`Actor::id`]).
    pub actor: String,
    /// The actor's role.
    pub role: String,
    /// What, e.g. `device.status`.
    pub action: String,
    /// The object acted on.
    pub object: String,
    /// State before (JSON text or empty).
    pub before: String,
    /// State after (JSON text or empty).
    pub after: String,
    /// Peer address of the request.
    pub source: String,
}

/// Which audit records to read. Empty strings match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Records at or after this Unix second.
    pub since: i64,
    /// Only this actor; a bare API key id also matches `apikey:ID`.
    pub actor: String,
    /// Only this action.
    pub action: String,
}

impl Store {
    /// Appends one record outside any other change.
    pub async fn audit(
        &self,
        actor: &Actor,
        action: &str,
        object: &str,
        before: &str,
        after: &str,
    ) -> Result<()> {
        insert_audit(&self.pool, actor, action, object, before, after).await?;
        self.audit_written();
        Ok(())
    }

    /// The newest `limit` records matching `filter`, oldest first.
    pub async fn audit_records(
        &self,
        filter: &AuditFilter,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        let mut records = self.query_audit(filter, Order::NewestFirst, limit).await?;
        records.reverse();
        Ok(records)
    }

    /// The oldest `limit` records matching `filter`, oldest first (for
    /// streams catching up from `filter.since`).
    pub async fn audit_records_from(
        &self,
        filter: &AuditFilter,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        self.query_audit(filter, Order::OldestFirst, limit).await
    }

    /// Audit entries, oldest first: (actor, action, object).
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

    /// A receiver that changes after every committed audit record written
    /// by this process.
    pub fn audit_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.audit_signal.subscribe()
    }

    /// Commits a transaction that wrote audit records, then wakes watchers.
    pub(super) async fn commit_audited(&self, tx: Transaction<'_, Any>) -> Result<()> {
        tx.commit().await?;
        self.audit_written();
        Ok(())
    }

    pub(super) fn audit_written(&self) {
        self.audit_signal.send_modify(|n| *n = n.wrapping_add(1));
    }

    async fn query_audit(
        &self,
        filter: &AuditFilter,
        order: Order,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        let sql = match order {
            Order::NewestFirst => AUDIT_NEWEST_FIRST,
            Order::OldestFirst => AUDIT_OLDEST_FIRST,
        };
        let rows = sqlx::query(sql)
            .bind(filter.since)
            .bind(&filter.actor)
            .bind(format!("apikey:{}", filter.actor))
            .bind(&filter.action)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(audit_from_row).collect()
    }
}

enum Order {
    NewestFirst,
    OldestFirst,
}

const AUDIT_NEWEST_FIRST: &str = "SELECT id, at, actor, role, action, target, before_state, after_state, source FROM audit_log \
     WHERE at >= $1 AND ($2 = '' OR actor = $2 OR actor = $3) AND ($4 = '' OR action = $4) \
     ORDER BY id DESC LIMIT $5";
const AUDIT_OLDEST_FIRST: &str = "SELECT id, at, actor, role, action, target, before_state, after_state, source FROM audit_log \
     WHERE at >= $1 AND ($2 = '' OR actor = $2 OR actor = $3) AND ($4 = '' OR action = $4) \
     ORDER BY id ASC LIMIT $5";

/// Writes one record with `executor` (a transaction, or the pool).
pub(super) async fn insert_audit<'e, E>(
    executor: E,
    actor: &Actor,
    action: &str,
    object: &str,
    before: &str,
    after: &str,
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
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor, role, action, target, before_state, after_state, source, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, '')",
    )
    .bind(format!("{nanos:024}-{}", random_token(6)))
    .bind(unix_now())
    .bind(&actor.id)
    .bind(&actor.role)
    .bind(action)
    .bind(object)
    .bind(before)
    .bind(after)
    .bind(&actor.source)
    .execute(executor)
    .await?;
    Ok(())
}

/// Makes `audit_log` append-only: UPDATE and DELETE fail on both backends.
/// Run after every migration; idempotent. One migration file cannot hold
/// this for both backends (SQLite has no functions, PostgreSQL no inline
/// trigger bodies), hence code.
pub(super) async fn protect_audit_log(pool: &AnyPool) -> Result<()> {
    let backend = pool.acquire().await?.backend_name().to_owned();
    let statements: &[&'static str] = match backend.as_str() {
        "SQLite" => &[
            "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log \
             BEGIN SELECT RAISE(ABORT, 'audit records cannot be changed'); END",
            "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log \
             BEGIN SELECT RAISE(ABORT, 'audit records cannot be deleted'); END",
        ],
        "PostgreSQL" => &[
            "CREATE OR REPLACE FUNCTION ztmesh_audit_log_append_only() RETURNS trigger \
             LANGUAGE plpgsql AS $$ BEGIN \
             RAISE EXCEPTION 'audit records cannot be changed or deleted'; END $$",
            "DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log",
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log \
             FOR EACH ROW EXECUTE FUNCTION ztmesh_audit_log_append_only()",
            "DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log",
            "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log \
             FOR EACH STATEMENT EXECUTE FUNCTION ztmesh_audit_log_append_only()",
        ],
        other => bail!("database backend `{other}` is not supported; use SQLite or PostgreSQL"),
    };
    let mut tx = pool.begin().await?;
    for statement in statements {
        sqlx::raw_sql(*statement).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

fn audit_from_row(row: &AnyRow) -> Result<AuditRecord> {
    Ok(AuditRecord {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        role: row.try_get("role")?,
        action: row.try_get("action")?,
        object: row.try_get("target")?,
        before: row.try_get("before_state")?,
        after: row.try_get("after_state")?,
        source: row.try_get("source")?,
    })
}
