//! What the filter costs per packet with 10,000 rules: an established flow,
//! the first packet of a new allowed flow (rule lookup and conntrack
//! insert), and a new flow dropped by the default deny.
//! `cargo bench -p ztmesh-filter --bench filter`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ipnet::IpNet;
use ztmesh_filter::{
    Action, Filter, FilterConfig, FilterLimits, FilterRule, PortRange, Protocol, Verdict,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

/// An IPv4 TCP segment (checksums are not checked by the filter).
fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = flags;
    p
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// `n` rules from 100 other sources, then the rule that lets CLIENT open
/// tcp/443 last (a scan would check every rule before it).
fn policy(n: u32) -> FilterConfig {
    let mut rules: Vec<FilterRule> = (0..n)
        .map(|i| FilterRule {
            name: format!("r{}", i % 1000),
            action: if i % 3 == 0 {
                Action::Deny
            } else {
                Action::Allow
            },
            sources: vec![net(&format!("100.65.{}.{}/32", i % 100, 1 + i % 200))],
            destinations: vec![net("100.64.0.2/32")],
            protocol: if i % 2 == 0 {
                Protocol::Tcp
            } else {
                Protocol::Udp
            },
            ports: vec![PortRange {
                start: (1000 + i % 5000) as u16,
                end: (1000 + i % 5000) as u16,
            }],
            monitor: false,
        })
        .collect();
    rules.push(FilterRule {
        name: "https".into(),
        action: Action::Allow,
        sources: vec![net("100.64.0.1/32")],
        destinations: vec![net("100.64.0.2/32")],
        protocol: Protocol::Tcp,
        ports: vec![PortRange {
            start: 443,
            end: 443,
        }],
        monitor: false,
    });
    FilterConfig { version: 1, rules }
}

fn prepared(n: u32) -> Filter {
    let now = Instant::now();
    let mut filter = Filter::new(FilterLimits::default());
    filter.apply(policy(n), now);
    filter.expire(now);
    filter
}

/// Judges `packets` as new flows on fresh copies of `base`, in batches of
/// at most 1,000 (the room the flow table keeps between its once-a-second
/// housekeeping runs, so no insert grows it); only the judging is timed.
fn new_flows(base: &Filter, packets: &[Vec<u8>], iters: u64) -> Duration {
    let now = Instant::now();
    let mut total = Duration::ZERO;
    let mut done = 0u64;
    while done < iters {
        let mut filter = base.clone();
        let n = (iters - done).min(packets.len() as u64).min(1000) as usize;
        let start = Instant::now();
        for p in &packets[..n] {
            black_box(filter.inbound(black_box(p), now));
        }
        total += start.elapsed();
        done += n as u64;
    }
    total
}

fn benches(c: &mut Criterion) {
    let config = policy(10_000);
    c.bench_function(
        "apply a policy of 10001 rules (index build, re-check)",
        |b| {
            let mut filter = Filter::new(FilterLimits::default());
            b.iter(|| filter.apply(black_box(config.clone()), Instant::now()))
        },
    );
    for n in [10_000u32, 100] {
        let base = prepared(n);
        let rules = n + 1;

        let mut established = base.clone();
        let now = Instant::now();
        let syn = tcp(CLIENT, 40000, SERVER, 443, 0x02);
        assert_eq!(established.inbound(&syn, now), Verdict::Accept);
        let ack = tcp(CLIENT, 40000, SERVER, 443, 0x10);
        c.bench_function(&format!("established flow, {rules} rules"), |b| {
            b.iter(|| black_box(established.inbound(black_box(&ack), now)))
        });

        let allowed: Vec<Vec<u8>> = (0..1000u32)
            .map(|i| tcp(CLIENT, (10_000 + i) as u16, SERVER, 443, 0x02))
            .collect();
        assert_eq!(base.clone().inbound(&allowed[0], now), Verdict::Accept);
        c.bench_function(
            &format!("new flow allowed (last rule), {rules} rules"),
            |b| b.iter_custom(|iters| new_flows(&base, &allowed, iters)),
        );

        let denied: Vec<Vec<u8>> = (0..1000u32)
            .map(|i| tcp(CLIENT, (10_000 + i) as u16, SERVER, 8443, 0x02))
            .collect();
        c.bench_function(&format!("new flow default deny, {rules} rules"), |b| {
            b.iter_custom(|iters| new_flows(&base, &denied, iters))
        });
    }
}

criterion_group! {
    name = filter;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(filter);
