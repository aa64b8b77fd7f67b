//! Fragments of datagrams whose first fragment passed the filter.
//!
//! Only the first fragment carries the ports, so it alone is judged (by
//! conntrack or the rules). When it passes, its datagram is remembered for
//! a short while and the later fragments of that datagram pass too; later
//! fragments of any other datagram are dropped. The receiving host cannot
//! reassemble a datagram without its first fragment anyway, so this only
//! loses datagrams whose fragments arrive out of order.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::packet::FragmentId;

/// Bounded set of datagrams whose later fragments may pass.
#[derive(Debug, Clone)]
pub(crate) struct FragmentTracker {
    max_datagrams: usize,
    timeout: Duration,
    /// Datagram -> when its later fragments stop passing.
    passing: HashMap<FragmentId, Instant>,
}

impl FragmentTracker {
    /// An empty tracker holding at most `max_datagrams` for `timeout` each.
    pub(crate) fn new(max_datagrams: usize, timeout: Duration) -> Self {
        FragmentTracker {
            max_datagrams,
            timeout,
            // Allocated once: a passing first fragment never grows it.
            passing: HashMap::with_capacity(max_datagrams),
        }
    }

    /// Lets the later fragments of `datagram` pass until `now + timeout`.
    /// When the set is full of live datagrams the call is ignored, and those
    /// fragments will be dropped.
    pub(crate) fn first_fragment_passed(&mut self, datagram: FragmentId, now: Instant) {
        if self.passing.len() >= self.max_datagrams && !self.passing.contains_key(&datagram) {
            self.expire(now);
            if self.passing.len() >= self.max_datagrams {
                return;
            }
        }
        self.passing.insert(datagram, now + self.timeout);
    }

    /// Whether a later fragment of `datagram` may pass.
    pub(crate) fn passes(&self, datagram: &FragmentId, now: Instant) -> bool {
        self.passing
            .get(datagram)
            .is_some_and(|&deadline| now < deadline)
    }

    /// Forgets datagrams past their timeout.
    pub(crate) fn expire(&mut self, now: Instant) {
        self.passing.retain(|_, deadline| now < *deadline);
    }

    /// Forgets every datagram (a policy change may have revoked their flows).
    pub(crate) fn clear(&mut self) {
        self.passing.clear();
    }
}
