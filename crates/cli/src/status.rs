//! `ztmesh status`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use ztmesh_agent::state::StateDir;

use crate::server::Output;

/// `ztmesh status` arguments.
#[derive(Args)]
pub struct StatusArgs {
    /// State directory of the daemon to ask.
    #[arg(long, default_value = "/var/lib/ztmesh")]
    state_dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

/// Prints the daemon's status.
pub async fn run(args: StatusArgs) -> Result<()> {
    let socket = StateDir::socket_path_in(&args.state_dir);
    let status = ztmesh_agent::status::query(&socket).await?;
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!(
        "node {}  {}  control: {}  policy: {}",
        status.name,
        status.addresses.join(","),
        if status.control_connected {
            "connected"
        } else {
            "disconnected (running on the last policy)"
        },
        if status.policy_version == 0 {
            "none (nothing passes)".to_owned()
        } else {
            format!("v{}", status.policy_version)
        },
    );
    println!(
        "public key {}  udp port {}  public endpoint {}",
        status.public_key,
        status.listen_port,
        status
            .public_endpoint
            .as_deref()
            .unwrap_or("unknown (no STUN answer yet)")
    );
    if status.relay_connected {
        match status.relay_mtu {
            Some(mtu) => println!(
                "relay: {} (packets up to {mtu} bytes in one datagram)",
                status.relay_transport
            ),
            None => println!("relay: {}", status.relay_transport),
        }
    }
    println!();
    println!(
        "{:<20} {:<18} {:<7} {:<22} {:>9} {:<10} {:>10} {:>10}",
        "PEER", "ADDRESS", "PATH", "ENDPOINT", "RTT", "HANDSHAKE", "RX", "TX"
    );
    for p in &status.peers {
        println!(
            "{:<20} {:<18} {:<7} {:<22} {:>9} {:<10} {:>10} {:>10}",
            p.name,
            p.allowed_ips.join(","),
            if p.path.is_empty() { "-" } else { &p.path },
            p.endpoint.as_deref().unwrap_or("-"),
            p.rtt_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2}ms")),
            p.last_handshake_secs
                .map_or_else(|| "never".to_owned(), |s| format!("{s}s ago")),
            p.rx_bytes,
            p.tx_bytes
        );
    }
    println!();
    println!(
        "accepted inbound: {}  tracked flows: {}",
        status.accepted_inbound, status.flows
    );
    println!("drops: {}", counts(&status.drops));
    if status.monitored > 0 {
        println!(
            "monitor mode: {} new flows would have been dropped and were passed (see rule hits)",
            status.monitored
        );
    }
    println!("rule hits (new flows): {}", counts(&status.rule_hits));
    Ok(())
}

/// `name=count` pairs, or `none`.
fn counts(map: &std::collections::BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}
