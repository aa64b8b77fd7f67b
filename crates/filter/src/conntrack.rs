//! Connection tracking: the bounded table of live flows with idle timeouts.
//!
//! A flow is keyed from this device's point of view (local/remote address
//! and port), so a packet and its reply map to the same key. ICMP echo flows
//! are keyed by identifier and by which side sends the requests, so a remote
//! echo request never rides on a flow opened by a local ping.
//!
//! A flow that a policy change revokes is kept as a *tombstone* until it
//! idles out: inbound packets no longer pass on it, and outbound packets
//! (e.g. the local server still answering) refresh the tombstone instead of
//! re-opening the flow as if this device had started it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use foldhash::fast::RandomState;
use std::time::{Duration, Instant};

use crate::packet::{PROTO_TCP, PROTO_UDP, PacketInfo, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Tuple};

/// Size and idle-timeout limits of the connection tracking table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterLimits {
    /// Maximum number of tracked flows (default 65536).
    pub max_flows: usize,
    /// Idle timeout of an established TCP flow, seen in both directions (default 2 h).
    pub tcp_idle: Duration,
    /// Idle timeout of a TCP flow not yet seen in both directions (default 60 s).
    pub tcp_handshake_idle: Duration,
    /// Idle timeout of a TCP flow after a FIN or RST (default 10 s).
    pub tcp_closing_idle: Duration,
    /// Idle timeout of a UDP flow (default 120 s).
    pub udp_idle: Duration,
    /// Idle timeout of an ICMP echo flow (default 30 s).
    pub icmp_idle: Duration,
    /// Idle timeout of any other protocol (default 120 s).
    pub other_idle: Duration,
    /// Maximum number of fragmented inbound datagrams whose later fragments
    /// are awaited (default 1024).
    pub max_fragmented_datagrams: usize,
    /// How long later fragments pass after their first fragment (default 30 s).
    pub fragment_timeout: Duration,
}

impl Default for FilterLimits {
    fn default() -> Self {
        FilterLimits {
            max_flows: 65536,
            tcp_idle: Duration::from_secs(2 * 60 * 60),
            tcp_handshake_idle: Duration::from_secs(60),
            tcp_closing_idle: Duration::from_secs(10),
            udp_idle: Duration::from_secs(120),
            icmp_idle: Duration::from_secs(30),
            other_idle: Duration::from_secs(120),
            max_fragmented_datagrams: 1024,
            fragment_timeout: Duration::from_secs(30),
        }
    }
}

/// Direction of a packet relative to this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// From the local TUN towards a peer.
    Outbound,
    /// From a peer towards the local TUN.
    Inbound,
}

/// Which side sends the echo requests of an ICMP echo flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum EchoRole {
    /// Not an echo flow.
    None,
    /// This device pings the remote.
    LocalRequests,
    /// The remote pings this device.
    RemoteRequests,
}

/// Fixed-size conntrack key, from this device's point of view. The
/// addresses are 128-bit numbers beside their family, as [`Tuple`] holds
/// them (see there why not `IpAddr`s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlowKey {
    local: u128,
    remote: u128,
    local_port: u16,
    remote_port: u16,
    proto: u8,
    /// 4 or 6: an IPv4 flow never matches IPv6 packets, whatever their addresses.
    family: u8,
    echo: EchoRole,
}

impl Hash for FlowKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(self.local);
        state.write_u128(self.remote);
        state.write_u64(
            u64::from(self.local_port)
                | u64::from(self.remote_port) << 16
                | u64::from(self.proto) << 32
                | u64::from(self.family) << 40
                | u64::from(self.echo as u8) << 48,
        );
    }
}

/// How a packet relates to conntrack.
pub(crate) struct FlowLookup {
    /// Key of the flow the packet belongs to.
    pub(crate) key: FlowKey,
    /// Whether the packet may open a new flow (echo replies only refresh).
    pub(crate) opens: bool,
}

impl FlowLookup {
    /// The flow `tuple` travelling in `direction` belongs to, or `None` for
    /// packets that are never tracked (ICMP other than echo).
    #[inline(always)]
    pub(crate) fn of(tuple: &Tuple, direction: Direction) -> Option<FlowLookup> {
        let (local, local_port, remote, remote_port) = match direction {
            Direction::Outbound => (tuple.src, tuple.src_port, tuple.dst, tuple.dst_port),
            Direction::Inbound => (tuple.dst, tuple.dst_port, tuple.src, tuple.src_port),
        };
        let (echo, opens) = if !tuple.is_icmp() {
            (EchoRole::None, true)
        } else if tuple.is_echo_request() {
            let role = match direction {
                Direction::Outbound => EchoRole::LocalRequests,
                Direction::Inbound => EchoRole::RemoteRequests,
            };
            (role, true)
        } else if tuple.is_echo_reply() {
            let role = match direction {
                Direction::Outbound => EchoRole::RemoteRequests,
                Direction::Inbound => EchoRole::LocalRequests,
            };
            (role, false)
        } else {
            return None;
        };
        let key = FlowKey {
            local,
            remote,
            local_port,
            remote_port,
            proto: tuple.proto,
            family: if tuple.is_v6 { 6 } else { 4 },
            echo,
        };
        Some(FlowLookup { key, opens })
    }
}

/// What recording a packet on its flow reads of it: the protocol and the
/// TCP flags, small enough to pass in registers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    pub(crate) proto: u8,
    pub(crate) tcp_flags: u8,
}

impl Seen {
    pub(crate) fn of(tuple: &Tuple) -> Seen {
        Seen {
            proto: tuple.proto,
            tcp_flags: tuple.tcp_flags,
        }
    }
}

/// One tracked flow.
#[derive(Debug, Clone, Copy)]
struct FlowEntry {
    /// Which side opened the flow.
    origin: Direction,
    /// The packet that opened the flow, re-judged when the policy changes.
    opening: PacketInfo,
    seen_outbound: bool,
    seen_inbound: bool,
    /// A FIN or RST was seen; the flow is about to end.
    closing: bool,
    /// A policy change revoked this inbound flow; only outbound refreshes it.
    revoked: bool,
    expires_at: Instant,
}

/// The table is full of live flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableFull;

/// Flows the table always has room for without growing (see
/// [`Conntrack::keep_headroom`]).
const MIN_HEADROOM: usize = 1024;

/// Bounded flow table.
#[derive(Debug, Clone)]
pub(crate) struct Conntrack {
    limits: FilterLimits,
    /// Seeded per process (foldhash): fast, and the keys come from
    /// authenticated peers only.
    flows: HashMap<FlowKey, FlowEntry, RandomState>,
    /// No flow expires before this instant (a lower bound, possibly stale),
    /// so a full table is only scanned when something may have expired.
    earliest_expiry: Option<Instant>,
}

impl Conntrack {
    /// An empty table with room for [`MIN_HEADROOM`] flows.
    pub(crate) fn new(limits: FilterLimits) -> Self {
        let mut conntrack = Conntrack {
            limits,
            flows: HashMap::default(),
            earliest_expiry: None,
        };
        conntrack.keep_headroom();
        conntrack
    }

    /// Grows the table ahead of need, so that inserting a flow on the
    /// packet path does not allocate: called at creation and by
    /// [`Conntrack::expire`] (about once a second), it keeps room for at
    /// least [`MIN_HEADROOM`] more flows, or half as many as are tracked,
    /// within `max_flows`. Only a burst of more new flows than that within
    /// one second makes an insert grow the table.
    fn keep_headroom(&mut self) {
        let len = self.flows.len();
        let wanted = (len / 2).max(MIN_HEADROOM);
        let room = self.limits.max_flows.saturating_sub(len).min(wanted);
        if self.flows.capacity() - len < room {
            self.flows.reserve(room);
        }
    }

    /// Number of entries, including expired ones not yet removed.
    pub(crate) fn len(&self) -> usize {
        self.flows.len()
    }

    /// If `key` is a live flow, records the packet on it and returns true.
    /// An expired entry is removed and reported as absent; a revoked one is
    /// refreshed by outbound packets and absent for inbound ones.
    pub(crate) fn refresh(
        &mut self,
        key: &FlowKey,
        seen: Seen,
        direction: Direction,
        now: Instant,
    ) -> bool {
        let Some(entry) = self.flows.get_mut(key) else {
            return false;
        };
        if now >= entry.expires_at {
            self.flows.remove(key);
            return false;
        }
        if entry.revoked && direction == Direction::Inbound {
            return false;
        }
        entry.record(seen, direction);
        entry.expires_at = now + entry.idle_timeout(&self.limits);
        let expires_at = entry.expires_at;
        self.note_expiry(expires_at);
        true
    }

    /// Whether `key` is a live, unrevoked flow; does not refresh it.
    pub(crate) fn is_live(&self, key: &FlowKey, now: Instant) -> bool {
        self.flows
            .get(key)
            .is_some_and(|entry| now < entry.expires_at && !entry.revoked)
    }

    /// Tracks a new flow opened by `info` travelling in `origin`. When the
    /// table is full, expired flows are evicted first.
    pub(crate) fn insert(
        &mut self,
        key: FlowKey,
        info: &PacketInfo,
        origin: Direction,
        now: Instant,
    ) -> Result<(), TableFull> {
        if self.flows.len() >= self.limits.max_flows && !self.flows.contains_key(&key) {
            if self.earliest_expiry.is_some_and(|t| now >= t) {
                self.expire(now);
            }
            if self.flows.len() >= self.limits.max_flows {
                return Err(TableFull);
            }
        }
        let mut entry = FlowEntry {
            origin,
            opening: *info,
            seen_outbound: false,
            seen_inbound: false,
            closing: false,
            revoked: false,
            expires_at: now,
        };
        entry.record(
            Seen {
                proto: info.proto,
                tcp_flags: info.tcp_flags,
            },
            origin,
        );
        entry.expires_at = now + entry.idle_timeout(&self.limits);
        self.note_expiry(entry.expires_at);
        self.flows.insert(key, entry);
        Ok(())
    }

    /// Removes every flow idle past its timeout.
    pub(crate) fn expire(&mut self, now: Instant) {
        let mut earliest: Option<Instant> = None;
        self.flows.retain(|_, entry| {
            let live = now < entry.expires_at;
            if live {
                earliest = Some(earliest.map_or(entry.expires_at, |t| t.min(entry.expires_at)));
            }
            live
        });
        self.earliest_expiry = earliest;
        self.keep_headroom();
    }

    /// Revokes the inbound-opened flows whose opening packet `allowed` no
    /// longer accepts; returns how many were revoked. Outbound-opened flows
    /// are untouched.
    pub(crate) fn revoke_inbound(&mut self, mut allowed: impl FnMut(&PacketInfo) -> bool) -> usize {
        let mut revoked = 0;
        for entry in self.flows.values_mut() {
            if entry.origin == Direction::Inbound && !entry.revoked && !allowed(&entry.opening) {
                entry.revoked = true;
                revoked += 1;
            }
        }
        revoked
    }

    fn note_expiry(&mut self, expires_at: Instant) {
        self.earliest_expiry = Some(
            self.earliest_expiry
                .map_or(expires_at, |t| t.min(expires_at)),
        );
    }
}

impl FlowEntry {
    fn record(&mut self, seen: Seen, direction: Direction) {
        match direction {
            Direction::Outbound => self.seen_outbound = true,
            Direction::Inbound => self.seen_inbound = true,
        }
        if seen.proto == PROTO_TCP {
            if seen.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                self.closing = true;
            } else if seen.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
                // A fresh SYN reuses the 4-tuple for a new connection.
                self.closing = false;
            }
        }
    }

    fn idle_timeout(&self, limits: &FilterLimits) -> Duration {
        match self.opening.proto {
            _ if self.opening.is_icmp() => limits.icmp_idle,
            PROTO_TCP if self.closing => limits.tcp_closing_idle,
            PROTO_TCP if self.seen_inbound && self.seen_outbound => limits.tcp_idle,
            PROTO_TCP => limits.tcp_handshake_idle,
            PROTO_UDP => limits.udp_idle,
            _ => limits.other_idle,
        }
    }
}
