//! Zero allocations per packet, proven with a counting allocator: after a
//! policy is applied and the once-a-second housekeeping ran, judging new
//! flows (allowed, denied, monitored), established flows, replies and
//! fragments allocates nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use ipnet::IpNet;

use crate::packet::{TCP_ACK, TCP_SYN};
use crate::test_packets::{PacketBuilder, V4_A, V4_B};
use crate::{Action, Filter, FilterConfig, FilterLimits, FilterRule, PortRange, Protocol, Verdict};

/// Counts allocations made on threads that asked for it.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// The only unsafe code of the crate, in tests: a global allocator must
// implement the unsafe GlobalAlloc trait. It forwards to the system
// allocator unchanged and only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn count() {
    // `try_with`: the thread-locals may be gone while a thread exits.
    let counting = COUNTING.try_with(Cell::get).unwrap_or(false);
    if counting {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations_in(f: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// 10,000 rules from 100 sources; V4_A (100.64.0.1) may open tcp/443,
/// tcp/22 is monitored, everything else from it is default deny.
fn big_policy() -> FilterConfig {
    let mut rules: Vec<FilterRule> = (0..10_000u32)
        .map(|i| FilterRule {
            name: format!("filler-{}", i % 500),
            action: if i % 3 == 0 {
                Action::Deny
            } else {
                Action::Allow
            },
            sources: vec![net(&format!("100.65.{}.{}/32", i % 100, 1 + i % 200))],
            destinations: vec![net("100.64.0.2/32")],
            protocol: Protocol::Tcp,
            ports: vec![PortRange {
                start: (1000 + i % 5000) as u16,
                end: (1000 + i % 5000) as u16,
            }],
            monitor: false,
        })
        .collect();
    for (name, action, port, monitor) in [
        ("watch-ssh", Action::Deny, 22, true),
        ("https", Action::Allow, 443, false),
    ] {
        rules.push(FilterRule {
            name: name.into(),
            action,
            sources: vec![net("100.64.0.1/32")],
            destinations: vec![net("100.64.0.2/32")],
            protocol: Protocol::Tcp,
            ports: vec![PortRange {
                start: port,
                end: port,
            }],
            monitor,
        });
    }
    FilterConfig { version: 1, rules }
}

#[test]
fn judging_packets_allocates_nothing() {
    let now = Instant::now();
    let mut filter = Filter::new(FilterLimits::default());
    filter.apply(big_policy(), now);
    filter.expire(now);
    let syn = |sport: u16, dport: u16| {
        PacketBuilder::tcp(V4_A, sport, V4_B, dport)
            .flags(TCP_SYN)
            .build()
    };
    let new_https: Vec<Vec<u8>> = (0..1000).map(|i| syn(10_000 + i, 443)).collect();
    let established: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            PacketBuilder::tcp(V4_A, 10_000 + i, V4_B, 443)
                .flags(TCP_ACK)
                .build()
        })
        .collect();
    let replies: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            PacketBuilder::tcp(V4_B, 443, V4_A, 10_000 + i)
                .flags(TCP_ACK)
                .build()
        })
        .collect();
    let denied: Vec<Vec<u8>> = (0..500).map(|i| syn(20_000 + i, 8080)).collect();
    let monitored: Vec<Vec<u8>> = (0..100).map(|i| syn(30_000 + i, 22)).collect();
    let mut verdicts = Vec::with_capacity(4000);
    let allocations = allocations_in(|| {
        for p in new_https
            .iter()
            .chain(&established)
            .chain(&denied)
            .chain(&monitored)
        {
            verdicts.push(filter.inbound(p, now));
        }
        for p in &replies {
            verdicts.push(filter.outbound(p, now));
        }
    });
    assert_eq!(allocations, 0, "judging 3,600 packets allocated");
    let accepted = verdicts.iter().filter(|v| **v == Verdict::Accept).count();
    assert_eq!(accepted, 1000 + 1000 + 100 + 1000);
    assert_eq!(filter.counters().monitored(), 100);
    // The flow log takes its events off the packet path (this allocates).
    assert_eq!(filter.take_flow_events().len(), 1024);
}

/// The once-a-second counter snapshot on the packet thread costs one
/// allocation (its list), however many rules there are: the names are
/// shared, not copied.
#[test]
fn a_snapshot_of_the_rule_counters_copies_no_name() {
    let now = Instant::now();
    let mut filter = Filter::new(FilterLimits::default());
    filter.apply(big_policy(), now);
    let mut snapshot = Vec::new();
    let allocations = allocations_in(|| {
        snapshot = filter.counters().rule_hits_shared().collect::<Vec<_>>();
    });
    // 500 filler names and the two named rules.
    assert_eq!(snapshot.len(), 502);
    assert_eq!(allocations, 1, "a snapshot of {} counters", snapshot.len());
}
