//! What choosing the peer for an outgoing packet costs as the overlay
//! grows: the route table (one hash probe per prefix length) against a
//! scan of every allowed-IP prefix, longest first (what the data plane did
//! before). Each peer has its /32; every tenth also routes a /24 subnet.
//! `cargo bench -p ztmesh-agent --bench routes`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ipnet::{IpNet, Ipv4Net};
use ztmesh_agent::routes::RouteTable;

fn routes(peers: u32) -> Vec<(IpNet, [u8; 32])> {
    let mut routes = Vec::new();
    for i in 0..peers {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&i.to_be_bytes());
        let device = Ipv4Addr::from(0x6440_0000 + i);
        routes.push((IpNet::V4(Ipv4Net::new(device, 32).unwrap()), key));
        if i % 10 == 0 {
            let subnet = Ipv4Addr::from(0x0a00_0000 + (i << 8));
            routes.push((IpNet::V4(Ipv4Net::new(subnet, 24).unwrap()), key));
        }
    }
    routes
}

/// Destinations spread over the peers and their subnets.
fn destinations(peers: u32) -> Vec<IpAddr> {
    (0..256u32)
        .map(|n| {
            let i = n.wrapping_mul(2_654_435_761) % peers;
            if n % 4 == 0 {
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + ((i / 10 * 10) << 8) + 7))
            } else {
                IpAddr::V4(Ipv4Addr::from(0x6440_0000 + i))
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("route lookup");
    for peers in [1u32, 100, 1_000, 10_000] {
        let routes = routes(peers);
        let dsts = destinations(peers);
        let table = RouteTable::build(routes.iter().copied());
        let mut scan = routes.clone();
        scan.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        group.bench_with_input(BenchmarkId::new("table", peers), &peers, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % dsts.len();
                black_box(table.lookup(black_box(dsts[i])))
            })
        });
        group.bench_with_input(BenchmarkId::new("scan", peers), &peers, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % dsts.len();
                let dst = black_box(dsts[i]);
                black_box(
                    scan.iter()
                        .find(|(net, _)| net.contains(&dst))
                        .map(|(_, k)| *k),
                )
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
