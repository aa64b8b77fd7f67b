//! `ztmesh admin flows` and `ztmesh admin events`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::Args;
use ztmesh_proto::v1;

use crate::admin::{Client, Output, status_error};

/// `ztmesh admin flows` arguments.
#[derive(Args)]
pub(crate) struct FlowsArgs {
    /// Only this device (name).
    #[arg(long)]
    device: Option<String>,
    /// Only dropped flows.
    #[arg(long)]
    denied: bool,
    /// How far back, e.g. 15m, 6h, 7d (default 1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// At most this many records, newest first.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

/// `ztmesh admin events` arguments.
#[derive(Args)]
pub(crate) struct EventsArgs {
    /// Only these kinds (repeatable): device.connected, device.disconnected,
    /// device.enrolled, device.approved, device.revoked, device.expired,
    /// device.posture, policy.version.
    #[arg(long = "kind")]
    kinds: Vec<String>,
    /// Output format (json: one object per line).
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

pub(crate) async fn flows(client: &Client, args: FlowsArgs) -> Result<()> {
    let since = args.since.map_or(0, |d| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(now.saturating_sub(d).as_secs())
            .unwrap_or(0)
            .max(1)
    });
    let flows = client
        .admin()
        .list_flows(client.request(v1::ListFlowsRequest {
            device: args.device.unwrap_or_default(),
            denied: args.denied,
            since,
            limit: args.limit,
        }))
        .await
        .map_err(status_error)?
        .into_inner()
        .flows;
    if args.output == Output::Json {
        let list: Vec<_> = flows.iter().map(flow_json).collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    if flows.is_empty() {
        println!("no flow records match (daemons report every 2 seconds; records are kept 7 days)");
        return Ok(());
    }
    println!(
        "{:<20} {:<16} {:<22} {:<22} {:<6} {:<18} {:<14} {:>8} {:>10}",
        "time (UTC)",
        "device",
        "source",
        "destination",
        "proto",
        "rule",
        "verdict",
        "packets",
        "bytes"
    );
    for flow in &flows {
        let Some(r) = &flow.record else { continue };
        println!(
            "{:<20} {:<16} {:<22} {:<22} {:<6} {:<18} {:<14} {:>8} {:>10}",
            time(flow.at),
            flow.device,
            endpoint(&r.src, r.src_port, r.proto),
            endpoint(&r.dst, r.dst_port, r.proto),
            proto_name(r.proto),
            if r.rule.is_empty() { "-" } else { &r.rule },
            r.verdict,
            r.packets,
            r.bytes
        );
    }
    Ok(())
}

pub(crate) async fn events(client: &Client, args: EventsArgs) -> Result<()> {
    let mut stream = client
        .admin()
        .watch_events(client.request(v1::WatchEventsRequest { kinds: args.kinds }))
        .await
        .map_err(status_error)?
        .into_inner();
    eprintln!("watching events; Ctrl-C to stop");
    while let Some(event) = stream.message().await.map_err(status_error)? {
        if args.output == Output::Json {
            let json = serde_json::json!({
                "at": event.at,
                "kind": event.kind,
                "object": event.object,
                "detail": event.detail,
            });
            println!("{json}");
        } else {
            println!(
                "{}  {:<20} {:<20} {}",
                time(event.at),
                event.kind,
                event.object,
                event.detail
            );
        }
    }
    Ok(())
}

fn flow_json(flow: &v1::Flow) -> serde_json::Value {
    let r = flow.record.clone().unwrap_or_default();
    serde_json::json!({
        "device": flow.device,
        "at": flow.at,
        "src": r.src, "src_port": r.src_port,
        "dst": r.dst, "dst_port": r.dst_port,
        "proto": r.proto,
        "rule": r.rule,
        "verdict": r.verdict,
        "packets": r.packets,
        "bytes": r.bytes,
        "first_seen": r.first_seen,
        "last_seen": r.last_seen,
    })
}

fn time(unix: i64) -> String {
    u64::try_from(unix)
        .map(|s| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)).to_string())
        .unwrap_or_default()
}

fn proto_name(proto: u32) -> String {
    match proto {
        1 | 58 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        other => other.to_string(),
    }
}

fn endpoint(address: &str, port: u32, proto: u32) -> String {
    match proto {
        6 | 17 if address.contains(':') => format!("[{address}]:{port}"),
        6 | 17 => format!("{address}:{port}"),
        _ => address.to_owned(),
    }
}
