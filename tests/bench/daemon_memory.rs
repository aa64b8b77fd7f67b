//! Daemon memory: resident set size of one daemon process at start, and
//! with 1,000 peers (the policy gives it a tunnel to each), and the cost
//! per peer. The daemon runs in a child process (this example re-executed)
//! with an in-memory TUN and real UDP/gRPC/TLS to an in-process server.
//!
//! Run: `cargo run -p ztmesh-e2e --example daemon_memory [PEERS]` (add
//! `--release` for figures that match a release daemon).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ztmesh_agent::state::StateDir;
use ztmesh_e2e::{TempDir, TestAgent, TestServer};

const CHILD: &str = "ZTMESH_MEMORY_CHILD_TOKEN";

const POLICY: &str = r#"
[segments]
bench = { tags = ["bench"] }

[[rules]]
name = "all-icmp"
from = ["bench"]
to = ["bench"]
ports = ["icmp"]
"#;

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The child: enroll, run the daemon, print the status socket, wait for
/// stdin to close.
async fn child(token: String) {
    let agent = TestAgent::join(&token, "measured").await.unwrap();
    println!("SOCKET {}", agent.state.socket_path().display());
    std::io::stdout().flush().unwrap();
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await;
    agent.stop().await;
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Ok(token) = std::env::var(CHILD) {
        child(token).await;
        return;
    }
    let peers: usize = std::env::args()
        .nth(1)
        .map_or(1000, |n| n.parse().expect("PEERS must be a number"));
    let server = TestServer::start(None).await;
    let token = server.token(&["bench"], true, 0).await;
    let mut daemon = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, &token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = daemon.id();
    let mut lines = BufReader::new(daemon.stdout.take().unwrap()).lines();
    let socket = loop {
        let line = lines
            .next()
            .expect("the daemon printed its socket")
            .unwrap();
        if let Some(path) = line.strip_prefix("SOCKET ") {
            break std::path::PathBuf::from(path);
        }
    };
    let status = || ztmesh_agent::status::query(&socket);
    wait_for("daemon connected", Duration::from_secs(20), async || {
        status().await.is_ok_and(|s| s.control_connected)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_start = rss_kib(pid);

    // Enroll the peers (they never run: a peer entry needs only the record).
    let started = Instant::now();
    let dirs: Vec<TempDir> = (0..peers)
        .map(|i| TempDir::new(&format!("peer{i}")))
        .collect();
    for (i, dir) in dirs.iter().enumerate() {
        let state = StateDir::open(dir.0.join("state")).unwrap();
        ztmesh_agent::ensure_enrolled(&state, Some(&token), Some(&format!("peer-{i}")))
            .await
            .unwrap();
    }
    let enrolled = started.elapsed();
    server.set_policy(POLICY).await.unwrap();
    let applied = Instant::now();
    wait_for(
        "all peers in the daemon",
        Duration::from_secs(120),
        async || status().await.is_ok_and(|s| s.peers.len() == peers),
    )
    .await;
    let propagation = applied.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with_peers = rss_kib(pid);
    let per_peer = (with_peers.saturating_sub(at_start) as f64 * 1024.0) / peers as f64;

    println!(
        "{peers} peers enrolled in {enrolled:.1?}; the daemon had them all {propagation:.1?} after the policy was set"
    );
    println!("| daemon resident memory (VmRSS)        |      value |");
    println!("|---------------------------------------|------------|");
    println!(
        "| at start (connected, no peers)        | {:>6.1} MiB |",
        at_start as f64 / 1024.0
    );
    println!(
        "| with {peers:>5} peers                      | {:>6.1} MiB |",
        with_peers as f64 / 1024.0
    );
    println!(
        "| per peer                              | {:>6.1} KiB |",
        per_peer / 1024.0
    );
    println!(
        "build: {}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    drop(daemon.stdin.take());
    let _ = daemon.wait();
}
