//! Flow records reported by daemons: append, query, prune.

use anyhow::Result;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::Store;
use crate::secrets::random_token;

/// One stored flow record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRow {
    /// Reporting device.
    pub device_id: String,
    /// When the server stored it (Unix seconds).
    pub at: i64,
    /// First and last packet of the aggregate (daemon clock).
    pub first_seen: i64,
    /// See `first_seen`.
    pub last_seen: i64,
    /// Source address.
    pub src: String,
    /// Destination address.
    pub dst: String,
    /// IP protocol number.
    pub proto: u32,
    /// Source port (ICMP: echo identifier).
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Deciding rule; empty for the default deny.
    pub rule: String,
    /// `allowed`, `monitored` or a drop reason.
    pub verdict: String,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Which records to list.
#[derive(Debug, Clone, Default)]
pub struct FlowQuery {
    /// Only this device.
    pub device_id: Option<String>,
    /// Only dropped flows.
    pub denied_only: bool,
    /// Only records stored at or after this time (Unix seconds).
    pub since: i64,
    /// At most this many, newest first.
    pub limit: u32,
}

/// Verdicts that mean the packets were dropped.
const DROP_VERDICTS: &str = "('no_rule', 'denied', 'no_policy', 'conntrack_full', 'malformed')";

fn from_row(row: &AnyRow) -> Result<FlowRow> {
    let number = |name: &str| -> Result<u64> { Ok(u64::try_from(row.try_get::<i64, _>(name)?)?) };
    Ok(FlowRow {
        device_id: row.try_get("device_id")?,
        at: row.try_get("at")?,
        first_seen: row.try_get("first_seen")?,
        last_seen: row.try_get("last_seen")?,
        src: row.try_get("src")?,
        dst: row.try_get("dst")?,
        proto: u32::try_from(number("proto")?)?,
        src_port: u32::try_from(number("src_port")?)?,
        dst_port: u32::try_from(number("dst_port")?)?,
        rule: row.try_get("rule")?,
        verdict: row.try_get("verdict")?,
        packets: number("packets")?,
        bytes: number("bytes")?,
    })
}

impl Store {
    /// Appends a device's records in one transaction; returns how many.
    pub async fn insert_flow_records(&self, rows: &[FlowRow]) -> Result<usize> {
        let mut tx = self.write_tx().await?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, r) in rows.iter().enumerate() {
            sqlx::query(
                "INSERT INTO flow_records (id, device_id, at, first_seen, last_seen, src, dst, proto, \
                 src_port, dst_port, rule, verdict, packets, bytes) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            )
            .bind(format!("{nanos:024}-{i:04}-{}", random_token(4)))
            .bind(&r.device_id)
            .bind(r.at)
            .bind(r.first_seen)
            .bind(r.last_seen)
            .bind(&r.src)
            .bind(&r.dst)
            .bind(i64::from(r.proto))
            .bind(i64::from(r.src_port))
            .bind(i64::from(r.dst_port))
            .bind(&r.rule)
            .bind(&r.verdict)
            .bind(i64::try_from(r.packets).unwrap_or(i64::MAX))
            .bind(i64::try_from(r.bytes).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    /// Records matching `query`, newest first.
    pub async fn flow_records(&self, query: &FlowQuery) -> Result<Vec<FlowRow>> {
        // Parameters are numbered in the order they appear (SQLite numbers
        // them by appearance).
        let mut sql = String::from("SELECT * FROM flow_records WHERE at >= $1");
        if query.device_id.is_some() {
            sql.push_str(" AND device_id = $2");
        }
        if query.denied_only {
            sql.push_str(" AND verdict IN ");
            sql.push_str(DROP_VERDICTS);
        }
        sql.push_str(if query.device_id.is_some() {
            " ORDER BY id DESC LIMIT $3"
        } else {
            " ORDER BY id DESC LIMIT $2"
        });
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(query.since);
        if let Some(device) = &query.device_id {
            q = q.bind(device);
        }
        q = q.bind(i64::from(query.limit));
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    /// Deletes records stored before `before` (Unix seconds); returns how many.
    pub async fn prune_flow_records(&self, before: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM flow_records WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
