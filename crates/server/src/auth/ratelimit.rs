//! Login failure limiter: blocks a user name, or a source address, after too
//! many failed logins within a sliding window.
//!
//! Counting both keeps one attacker from guessing many passwords for one
//! account (per-user limit) and from trying a few passwords against many
//! accounts (per-source limit). State is in memory and bounded; the clock
//! is an argument so tests run on fixed instants.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest normalised user name kept as a key, in bytes. Longer names are
/// cut, which can only merge buckets (stricter), never split them.
const MAX_USER_KEY_BYTES: usize = 256;

/// How many failures are allowed within how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitConfig {
    /// Failures within `window` at which further attempts are refused.
    /// Zero refuses every attempt.
    pub max_failures: u32,
    /// Length of the sliding window.
    pub window: Duration,
}

impl LimitConfig {
    /// `max_failures` within `window`.
    pub const fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures,
            window,
        }
    }
}

/// Thread-safe, memory-bounded login failure limiter.
#[derive(Debug)]
pub struct LoginLimiter {
    per_user: LimitConfig,
    per_source: LimitConfig,
    max_keys: usize,
    state: Mutex<State>,
}

/// Failure times per key, oldest first.
#[derive(Debug, Default)]
struct State {
    users: HashMap<String, VecDeque<Instant>>,
    sources: HashMap<IpAddr, VecDeque<Instant>>,
}

impl Default for LoginLimiter {
    /// 5 failures per user and 20 per source within 15 minutes; at most
    /// 100 000 users and 100 000 sources tracked.
    fn default() -> Self {
        let window = Duration::from_secs(15 * 60);
        Self::new(
            LimitConfig::new(5, window),
            LimitConfig::new(20, window),
            100_000,
        )
    }
}

impl LoginLimiter {
    /// A limiter with the given limits, tracking at most `max_keys` users
    /// and `max_keys` sources (at least one of each).
    pub fn new(per_user: LimitConfig, per_source: LimitConfig, max_keys: usize) -> Self {
        Self {
            per_user,
            per_source,
            max_keys: max_keys.max(1),
            state: Mutex::new(State::default()),
        }
    }

    /// Whether a login attempt for `user` from `source` may proceed at
    /// `now`. `Err(retry_after)` when the user or the source has reached
    /// its limit; `retry_after` is how long until enough counted failures
    /// leave the window for both to be allowed again.
    pub fn check(&self, user: &str, source: IpAddr, now: Instant) -> Result<(), Duration> {
        let user = normalise_user(user);
        let source = source_bucket(source);
        let mut state = self.lock();
        let user_wait = blocked_for(state.users.get_mut(&user), self.per_user, now);
        let source_wait = blocked_for(state.sources.get_mut(&source), self.per_source, now);
        match (user_wait, source_wait) {
            (None, None) => Ok(()),
            (a, b) => Err(a.unwrap_or_default().max(b.unwrap_or_default())),
        }
    }

    /// Counts a failed login for `user` and for `source` at `now`. Call it
    /// only after a real verification failed, not for attempts that
    /// [`check`](Self::check) refused.
    pub fn record_failure(&self, user: &str, source: IpAddr, now: Instant) {
        let user = normalise_user(user);
        let source = source_bucket(source);
        let (max, mut state) = (self.max_keys, self.lock());
        record(&mut state.users, user, self.per_user, max, now);
        record(&mut state.sources, source, self.per_source, max, now);
    }

    /// Clears the user's failures after a successful login. The source's
    /// failures stay: otherwise an attacker holding one valid account could
    /// reset their per-source count between guesses at other accounts.
    pub fn record_success(&self, user: &str, _source: IpAddr) {
        let user = normalise_user(user);
        self.lock().users.remove(&user);
    }

    /// How many users and sources are tracked now, for metrics and tests.
    pub fn tracked(&self) -> (usize, usize) {
        let state = self.lock();
        (state.users.len(), state.sources.len())
    }

    /// The state, recovered if a thread panicked while holding the lock:
    /// every update leaves the maps valid, so the data is still usable.
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Trimmed, lower-cased, length-capped user name.
fn normalise_user(user: &str) -> String {
    let mut key = user.trim().to_lowercase();
    if key.len() > MAX_USER_KEY_BYTES {
        let mut cut = MAX_USER_KEY_BYTES;
        while !key.is_char_boundary(cut) {
            cut -= 1;
        }
        key.truncate(cut);
    }
    key
}

/// The bucket a source address counts against: IPv4 addresses alone, IPv6
/// addresses by their /64 (one host usually owns a whole /64), and
/// IPv4-mapped IPv6 addresses as the IPv4 address they carry (otherwise
/// every IPv4 client of a dual-stack socket would share one /64).
fn source_bucket(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = v6.to_bits() & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from_bits(prefix))
            }
        },
    }
}

/// Drops failures at or past the window's end, oldest first.
fn prune(failures: &mut VecDeque<Instant>, window: Duration, now: Instant) {
    while let Some(&oldest) = failures.front() {
        if now.saturating_duration_since(oldest) >= window {
            failures.pop_front();
        } else {
            break;
        }
    }
}

/// How long `failures` keeps the key blocked, if it does.
fn blocked_for(
    failures: Option<&mut VecDeque<Instant>>,
    limit: LimitConfig,
    now: Instant,
) -> Option<Duration> {
    if limit.max_failures == 0 {
        return Some(limit.window);
    }
    let failures = failures?;
    prune(failures, limit.window, now);
    if failures.len() < limit.max_failures as usize {
        return None;
    }
    // Only the newest `max_failures` are kept, so once the oldest kept one
    // leaves the window the count drops below the limit.
    let oldest = *failures.front()?;
    let elapsed = now.saturating_duration_since(oldest);
    Some(limit.window.saturating_sub(elapsed))
}

/// Adds a failure at `now` for `key`, keeping the map within `max_keys`.
fn record<K: Eq + Hash + Clone>(
    map: &mut HashMap<K, VecDeque<Instant>>,
    key: K,
    limit: LimitConfig,
    max_keys: usize,
    now: Instant,
) {
    if !map.contains_key(&key) && map.len() >= max_keys {
        make_room(map, limit.window, max_keys, now);
    }
    let failures = map.entry(key).or_default();
    prune(failures, limit.window, now);
    failures.push_back(now);
    // Older failures beyond the limit can never decide a block or a
    // retry_after, so they are not kept.
    // u32 fits in usize on every target std supports.
    let keep = (limit.max_failures as usize).max(1);
    while failures.len() > keep {
        failures.pop_front();
    }
}

/// Frees at least one slot: first drops keys whose failures all left the
/// window, then, if still full, the key whose latest failure is oldest.
fn make_room<K: Eq + Hash + Clone>(
    map: &mut HashMap<K, VecDeque<Instant>>,
    window: Duration,
    max_keys: usize,
    now: Instant,
) {
    map.retain(|_, failures| {
        prune(failures, window, now);
        !failures.is_empty()
    });
    while map.len() >= max_keys {
        let stalest = map
            .iter()
            .min_by_key(|(_, failures)| failures.back().copied())
            .map(|(key, _)| key.clone());
        let Some(stalest) = stalest else { break };
        map.remove(&stalest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const MIN: Duration = Duration::from_secs(60);

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn limiter_with(user: u32, source: u32, window: Duration, keys: usize) -> LoginLimiter {
        LoginLimiter::new(
            LimitConfig::new(user, window),
            LimitConfig::new(source, window),
            keys,
        )
    }

    fn limiter() -> LoginLimiter {
        limiter_with(5, 20, 15 * MIN, 1000)
    }

    #[test]
    fn fifth_failure_blocks_user() {
        let l = limiter();
        let t0 = Instant::now();
        for i in 0..4 {
            l.record_failure("alice", ip(1), t0 + i * MIN);
            assert_eq!(l.check("alice", ip(1), t0 + i * MIN), Ok(()));
        }
        l.record_failure("alice", ip(1), t0 + 4 * MIN);
        assert!(l.check("alice", ip(1), t0 + 4 * MIN).is_err());
        // Same user from elsewhere is blocked too; case and spaces ignored.
        assert!(l.check(" Alice ", ip(9), t0 + 4 * MIN).is_err());
        // Another user from another address is not.
        assert_eq!(l.check("bob", ip(2), t0 + 4 * MIN), Ok(()));
    }

    #[test]
    fn retry_after_is_exact_and_window_expiry_unblocks() {
        let l = limiter();
        let t0 = Instant::now();
        for i in 0..5 {
            l.record_failure("alice", ip(1), t0 + i * MIN);
        }
        let now = t0 + 10 * MIN;
        // Oldest failure at t0 leaves the window at t0 + 15 min.
        assert_eq!(l.check("alice", ip(1), now), Err(5 * MIN));
        assert_eq!(
            l.check("alice", ip(1), t0 + 15 * MIN - Duration::from_nanos(1)),
            Err(Duration::from_nanos(1))
        );
        assert_eq!(l.check("alice", ip(1), t0 + 15 * MIN), Ok(()));
        // Seven failures in all: blocked until the third (t0 + 2 min) expires.
        l.record_failure("alice", ip(1), t0 + 5 * MIN);
        l.record_failure("alice", ip(1), t0 + 6 * MIN);
        assert_eq!(l.check("alice", ip(1), t0 + 7 * MIN), Err(10 * MIN));
    }

    #[test]
    fn source_limit_blocks_many_users_from_one_address() {
        let l = limiter();
        let t0 = Instant::now();
        for i in 0..20 {
            let user = format!("user{i}");
            assert_eq!(l.check(&user, ip(1), t0), Ok(()));
            l.record_failure(&user, ip(1), t0);
        }
        assert_eq!(l.check("fresh", ip(1), t0 + MIN), Err(14 * MIN));
        assert_eq!(l.check("fresh", ip(2), t0 + MIN), Ok(()));
    }

    #[test]
    fn success_clears_user_but_not_source() {
        let l = limiter_with(3, 4, 15 * MIN, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.record_failure("alice", ip(1), t0);
        }
        assert!(l.check("alice", ip(2), t0).is_err());
        l.record_success("ALICE", ip(2));
        assert_eq!(l.check("alice", ip(2), t0), Ok(()));
        // The source kept its three failures: one more blocks it.
        l.record_failure("mallory", ip(1), t0);
        assert!(l.check("carol", ip(1), t0).is_err());
    }

    #[test]
    fn eviction_keeps_maps_bounded() {
        let l = limiter_with(5, 20, 15 * MIN, 3);
        let t0 = Instant::now();
        for i in 0..10u8 {
            l.record_failure(&format!("u{i}"), ip(i), t0 + u32::from(i) * MIN);
            let (users, sources) = l.tracked();
            assert!(users <= 3 && sources <= 3, "{users} {sources}");
        }
        // The most recent keys survive; the stalest were evicted.
        let (users, _) = l.tracked();
        assert_eq!(users, 3);
        let state = l.lock();
        assert!(state.users.contains_key("u9") && state.users.contains_key("u7"));
        assert!(!state.users.contains_key("u0"));
        drop(state);
        // When full, every key whose failures all left the window is dropped
        // at once, not just the one stalest key.
        l.record_failure("late", ip(1), t0 + 30 * MIN);
        assert_eq!(l.tracked(), (1, 1));
    }

    #[test]
    fn ipv6_sources_bucket_by_64() {
        let l = limiter_with(100, 2, 15 * MIN, 100);
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        l.record_failure("x", a, t0);
        l.record_failure("y", b, t0);
        assert!(l.check("z", a, t0).is_err());
        assert!(
            l.check("z", "2001:db8:1:2::abcd".parse().unwrap(), t0)
                .is_err()
        );
        assert_eq!(l.check("z", other, t0), Ok(()));
        // IPv4-mapped addresses count as their IPv4 address, not as ::/64.
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        l.record_failure("x", mapped, t0);
        l.record_failure("x", mapped, t0);
        assert!(l.check("z", ip(7), t0).is_err());
        assert_eq!(
            l.check("z", "::ffff:192.0.2.8".parse().unwrap(), t0),
            Ok(())
        );
    }

    #[test]
    fn default_limits() {
        let l = LoginLimiter::default();
        assert_eq!((l.per_user.max_failures, l.per_user.window), (5, 15 * MIN));
        assert_eq!(
            (l.per_source.max_failures, l.per_source.window),
            (20, 15 * MIN)
        );
        assert_eq!(l.max_keys, 100_000);
        let zero = limiter_with(0, 20, MIN, 10);
        assert_eq!(zero.check("a", ip(1), Instant::now()), Err(MIN));
    }

    #[test]
    fn poisoned_lock_does_not_panic() {
        let l = std::sync::Arc::new(limiter());
        let l2 = l.clone();
        let _ = std::thread::spawn(move || {
            let _guard = l2.lock();
            panic!("poison the lock");
        })
        .join();
        assert_eq!(l.check("alice", ip(1), Instant::now()), Ok(()));
    }
}
