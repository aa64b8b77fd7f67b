//! The host firewall's verdict, probed again only when it may have changed.
//! Probing starts `nft` (and `iptables`), a few milliseconds of CPU and a
//! fork each time; posture is collected every few seconds. nftables tells
//! of every change to its rules (netlink group `NFNLGRP_NFTABLES`, which
//! iptables-nft goes through too), so the verdict is kept until such an
//! event comes. Legacy iptables tells nobody: while the kernel has legacy
//! filter tables, every collection probes, as without a subscription.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SocketFlags, SocketType};

/// A kept verdict is probed again after this long in any case.
pub const RECHECK: Duration = Duration::from_secs(300);
/// `1 << (NFNLGRP_NFTABLES - 1)`: nftables ruleset changes.
const NFTABLES_GROUP: u32 = 1 << (7 - 1);

/// The last verdict and the subscription that says when it went stale.
pub struct FirewallCache {
    events: Option<OwnedFd>,
    last: Option<(Instant, Option<bool>)>,
    legacy_names: [&'static str; 2],
}

impl Default for FirewallCache {
    fn default() -> Self {
        Self::new()
    }
}

impl FirewallCache {
    /// Subscribes to nftables changes; without the subscription (no
    /// permission, no nftables in the kernel) every check probes.
    pub fn new() -> Self {
        let events = subscribe()
            .inspect_err(|e| tracing::debug!(error = %e, "no nftables change events; the firewall is probed at every posture check"))
            .ok();
        Self {
            events,
            last: None,
            legacy_names: ["/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"],
        }
    }

    /// The verdict: `probe`'s, run now if nothing is kept, the ruleset
    /// changed since, legacy tables are in use or [`RECHECK`] passed.
    pub fn check(&mut self, probe: &dyn Fn() -> Option<bool>) -> Option<bool> {
        let changed = self.drain_events();
        let now = Instant::now();
        let fresh = match self.last {
            Some((at, verdict)) if !changed && now.duration_since(at) < RECHECK => Some(verdict),
            _ => None,
        };
        if let Some(verdict) = fresh
            && self.events.is_some()
            && !self.legacy_tables()
        {
            return verdict;
        }
        let verdict = probe();
        self.last = Some((now, verdict));
        verdict
    }

    /// Whether events came since the last look (each is a change; a full
    /// socket buffer means some were lost, which counts as one).
    fn drain_events(&mut self) -> bool {
        let Some(fd) = &self.events else {
            return false;
        };
        let mut buf = [0u8; 4096];
        let mut changed = false;
        loop {
            match rustix::net::recv(fd, &mut buf[..], RecvFlags::DONTWAIT) {
                Ok(_) | Err(rustix::io::Errno::NOBUFS) => changed = true,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return changed,
                Err(e) => {
                    tracing::debug!(error = %e, "nftables change events failed; the firewall is probed at every posture check");
                    self.events = None;
                    return true;
                }
            }
        }
    }

    /// Whether the kernel has a legacy iptables filter table, whose
    /// changes no event reports.
    fn legacy_tables(&self) -> bool {
        self.legacy_names.iter().any(|file| {
            std::fs::read_to_string(Path::new(file))
                .is_ok_and(|names| names.lines().any(|name| name.trim() == "filter"))
        })
    }
}

fn subscribe() -> std::io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        Some(netlink::NETFILTER),
    )?;
    rustix::net::bind(&fd, &SocketAddrNetlink::new(0, NFTABLES_GROUP))?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::test_netns::{in_own_namespace, run};

    /// In a network namespace of the test's own: the second check keeps the
    /// verdict, a table added with `nft` makes the next one probe again.
    /// Needs root and `nft`; says so and passes without them.
    #[test]
    fn a_ruleset_change_makes_the_next_check_probe() {
        if !run(&["nft", "--version"]) {
            eprintln!("skipped: no `nft`");
            return;
        }
        if let Some(counts) = in_own_namespace("posture", probes_in_namespace) {
            assert_eq!(counts, [1, 1, 2, 2]);
        }
    }

    /// Probe counts after each of four checks: first, unchanged, after a
    /// change, unchanged again.
    fn probes_in_namespace(name: &str) -> [u32; 4] {
        let mut cache = FirewallCache::new();
        assert!(cache.events.is_some(), "no nftables subscription as root");
        // The host's legacy tables are not the namespace's concern here.
        cache.legacy_names = ["/nonexistent", "/nonexistent"];
        let probes = Cell::new(0);
        let probe = || {
            probes.set(probes.get() + 1);
            Some(false)
        };
        let mut counts = [0; 4];
        for (i, count) in counts.iter_mut().enumerate() {
            if i == 2 {
                assert!(run(&[
                    "ip", "netns", "exec", name, "nft", "add", "table", "inet", "zt_test"
                ]));
                // Netlink delivery is synchronous with the change; a moment
                // for the event to be queued all the same.
                std::thread::sleep(Duration::from_millis(50));
            }
            assert_eq!(cache.check(&probe), Some(false));
            *count = probes.get();
        }
        counts
    }
}
