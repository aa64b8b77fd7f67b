//! `ztmesh admin audit`: read the audit log, or follow it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow};
use clap::Args;
use ztmesh_proto::v1;

use crate::admin::{Client, status_error};
use crate::identity::expiry_text;
use crate::server::Output;

/// `ztmesh admin audit` arguments.
#[derive(Args)]
pub struct AuditArgs {
    /// Only records since then: a duration back from now (1h, 7d) or an
    /// RFC 3339 time (2026-11-22T08:00:00Z).
    #[arg(long)]
    since: Option<String>,
    /// Only this actor: an API key id, `apikey:ID`, `user:NAME`, `token:ID`, `device:ID`.
    #[arg(long)]
    actor: Option<String>,
    /// Only this action, e.g. policy.set, api_key.create, login, device.enroll.
    #[arg(long)]
    action: Option<String>,
    /// How many of the newest records (default 100, at most 1000; with
    /// --follow: how many to show before following, default 20).
    #[arg(long)]
    limit: Option<u32>,
    /// Keep running and print new records as they are written.
    #[arg(long, short)]
    follow: bool,
    /// Output format (json: one object per line).
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

/// Runs `ztmesh admin audit`.
pub async fn run(client: &Client, args: AuditArgs) -> Result<()> {
    let since = args
        .since
        .as_deref()
        .map(parse_since)
        .transpose()?
        .unwrap_or(0);
    let actor = args.actor.unwrap_or_default();
    let action = args.action.unwrap_or_default();
    if !args.follow {
        let records = client
            .admin()
            .list_audit(client.request(v1::ListAuditRequest {
                since,
                actor,
                action,
                limit: args.limit.unwrap_or(0),
            }))
            .await
            .map_err(status_error)?
            .into_inner()
            .records;
        for record in &records {
            print_record(record, args.output);
        }
        return Ok(());
    }
    let mut stream = client
        .admin()
        .watch_audit(client.request(v1::WatchAuditRequest {
            since,
            actor,
            action,
            backlog: args.limit.unwrap_or(0),
        }))
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(record) = stream.message().await.map_err(status_error)? {
        print_record(&record, args.output);
    }
    Err(anyhow!(
        "the server ended the audit stream; run the command again"
    ))
}

/// Unix seconds from `1h` (that long ago) or an RFC 3339 time.
fn parse_since(text: &str) -> Result<i64> {
    let at = match humantime::parse_duration(text) {
        Ok(ago) => SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| anyhow!("--since {text} reaches back before 1970"))?,
        Err(_) => humantime::parse_rfc3339_weak(text).map_err(|_| {
            anyhow!("--since `{text}` is neither a duration (1h, 7d) nor an RFC 3339 time (2026-11-22T08:00:00Z)")
        })?,
    };
    let secs = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    Ok(i64::try_from(secs).unwrap_or(i64::MAX))
}

fn print_record(r: &v1::AuditRecord, output: Output) {
    if output == Output::Json {
        let json = serde_json::json!({
            "id": r.id,
            "at": r.at,
            "actor": r.actor,
            "role": r.role,
            "action": r.action,
            "object": r.object,
            "before": r.before,
            "after": r.after,
            "source": r.source,
        });
        println!("{json}");
        return;
    }
    let source = if r.source.is_empty() { "-" } else { &r.source };
    let mut line = format!(
        "{} {} ({}) from {}: {} {}",
        expiry_text(r.at),
        r.actor,
        r.role,
        source,
        r.action,
        r.object
    );
    if !r.before.is_empty() || !r.after.is_empty() {
        let before = if r.before.is_empty() { "-" } else { &r.before };
        let after = if r.after.is_empty() { "-" } else { &r.after };
        line.push_str(&format!(" {before} -> {after}"));
    }
    println!("{line}");
}
