//! Data plane throughput without the kernel TUN: two daemons in one process
//! (in-memory TUN devices, real UDP over loopback, boringtun, the filter
//! with a policy), one sending UDP datagrams as fast as its TUN queue
//! takes them for a few seconds. Prints goodput and packets per second at
//! the receiver. Useful under `perf record` to see where the per-packet
//! time goes; the comparison with other implementations is deploy/bench.
//!
//! Run: `cargo run --release -p ztmesh-e2e --example dataplane_throughput [SECONDS] [PAYLOAD]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ztmesh_e2e::{TestAgent, TestServer};

const POLICY: &str = r#"
[segments]
senders = { tags = ["sender"] }
receivers = { tags = ["receiver"] }

[[rules]]
name = "bulk-udp"
from = ["senders"]
to = ["receivers"]
ports = ["udp/5201"]
"#;

/// An IPv4 UDP datagram with `payload` bytes (no checksum: UDP allows it).
fn udp(src: Ipv4Addr, dst: Ipv4Addr, payload: usize) -> Vec<u8> {
    let total = 28 + payload;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let mut sum: u32 = 0;
    for chunk in p[..20].chunks(2) {
        sum += u32::from(u16::from_be_bytes([chunk[0], chunk[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    p
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map_or(5, |s| s.parse().expect("SECONDS"));
    let payload: usize = args.next().map_or(1380, |s| s.parse().expect("PAYLOAD"));
    let server = TestServer::start(None).await;
    let sender = TestAgent::join(&server.token(&["sender"], false, 0).await, "sender")
        .await
        .unwrap();
    let mut receiver = TestAgent::join(&server.token(&["receiver"], false, 0).await, "receiver")
        .await
        .unwrap();
    server.set_policy(POLICY).await.unwrap();
    let packet = udp(sender.address, receiver.address, payload);
    // Until the tunnel is up.
    loop {
        sender.send(packet.clone()).await;
        if receiver.receive(Duration::from_millis(100)).await.is_some() {
            break;
        }
    }
    receiver.drain();
    let running = Arc::new(AtomicBool::new(true));
    let pump = {
        let tun = sender.tun.to_dataplane.clone();
        let running = Arc::clone(&running);
        let packet = packet.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            while running.load(Ordering::Relaxed) {
                if tun.send(packet.clone()).await.is_err() {
                    break;
                }
                sent += 1;
            }
            sent
        })
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut received = 0u64;
    while Instant::now() < deadline {
        if receiver
            .receive(deadline.saturating_duration_since(Instant::now()))
            .await
            .is_some()
        {
            received += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    running.store(false, Ordering::Relaxed);
    let sent = pump.await.unwrap();
    let bits = received as f64 * (packet.len() as f64) * 8.0;
    println!(
        "| in-process data plane, {}-byte IP packets | sent {sent} | received {received} ({:.1} % lost) | {:.0} kpps | {:.0} Mbit/s |",
        packet.len(),
        100.0 * (sent.saturating_sub(received)) as f64 / sent.max(1) as f64,
        received as f64 / elapsed / 1000.0,
        bits / elapsed / 1e6
    );
    println!(
        "build: {}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
}
