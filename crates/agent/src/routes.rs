//! Cryptokey routing on the way out: which peer an overlay destination
//! goes to, by longest matching allowed-IP prefix. One hash map per prefix
//! length in use, longest first, so a lookup costs one probe per distinct
//! length (an overlay has one or two: /32 or /128 device addresses, and a
//! few subnet routes) whatever the number of peers. A scan of every
//! prefix would cost one comparison per peer on every packet.

use std::collections::HashMap;
use std::net::IpAddr;

use foldhash::fast::RandomState;
use ipnet::IpNet;

/// A peer, by its WireGuard public key (the default), or by anything
/// else small that orders the peers the same way (the data plane uses
/// positions in its key-sorted peer list).
type Key = [u8; 32];

/// Prefixes of one length, by network address.
#[derive(Debug, Clone)]
struct Level<A, V> {
    len: u8,
    /// foldhash: probed on every packet; only we insert.
    nets: HashMap<A, V, RandomState>,
}

/// The allowed-IP prefixes of all peers.
#[derive(Debug, Clone)]
pub struct RouteTable<V = Key> {
    v4: Vec<Level<u32, V>>,
    v6: Vec<Level<u128, V>>,
}

impl<V> Default for RouteTable<V> {
    fn default() -> Self {
        Self {
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }
}

impl<V: Copy + Ord> RouteTable<V> {
    /// Builds the table. Two peers claiming the same prefix (the server
    /// should never send that) resolve to the smaller value, so the choice
    /// does not depend on the order the peers come in.
    pub fn build(routes: impl IntoIterator<Item = (IpNet, V)>) -> Self {
        let mut table = Self::default();
        for (net, key) in routes {
            match net {
                IpNet::V4(net) => insert(
                    &mut table.v4,
                    net.prefix_len(),
                    u32::from(net.network()),
                    key,
                ),
                IpNet::V6(net) => insert(
                    &mut table.v6,
                    net.prefix_len(),
                    u128::from(net.network()),
                    key,
                ),
            }
        }
        table
    }

    /// The peer whose allowed IPs hold `addr`, longest prefix first.
    pub fn lookup(&self, addr: IpAddr) -> Option<V> {
        match addr {
            IpAddr::V4(addr) => find(&self.v4, u32::from(addr), mask_v4),
            IpAddr::V6(addr) => find(&self.v6, u128::from(addr), mask_v6),
        }
    }

    /// How many prefixes the table holds.
    pub fn len(&self) -> usize {
        self.v4.iter().map(|l| l.nets.len()).sum::<usize>()
            + self.v6.iter().map(|l| l.nets.len()).sum::<usize>()
    }

    /// Whether the table holds no prefix.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn insert<A: std::hash::Hash + Eq, V: Copy + Ord>(
    levels: &mut Vec<Level<A, V>>,
    len: u8,
    network: A,
    key: V,
) {
    let at = match levels.binary_search_by(|level| len.cmp(&level.len)) {
        Ok(at) => at,
        Err(at) => {
            levels.insert(
                at,
                Level {
                    len,
                    nets: HashMap::default(),
                },
            );
            at
        }
    };
    if let Some(level) = levels.get_mut(at) {
        level
            .nets
            .entry(network)
            .and_modify(|held| *held = (*held).min(key))
            .or_insert(key);
    }
}

fn find<A: std::hash::Hash + Eq + Copy, V: Copy>(
    levels: &[Level<A, V>],
    addr: A,
    mask: fn(A, u8) -> A,
) -> Option<V> {
    levels
        .iter()
        .find_map(|level| level.nets.get(&mask(addr, level.len)).copied())
}

fn mask_v4(addr: u32, len: u8) -> u32 {
    addr & u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

fn mask_v6(addr: u128, len: u8) -> u128 {
    addr & u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        [n; 32]
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_longest_prefix_wins_and_unrouted_addresses_find_nothing() {
        let table = RouteTable::build([
            (net("100.64.0.0/10"), key(1)),
            (net("100.64.0.7/32"), key(2)),
            (net("10.1.0.0/16"), key(3)),
            (net("10.1.2.0/24"), key(4)),
            (net("fd7a::/48"), key(5)),
            (net("fd7a::9/128"), key(6)),
        ]);
        assert_eq!(table.len(), 6);
        assert_eq!(table.lookup(ip("100.64.0.7")), Some(key(2)));
        assert_eq!(table.lookup(ip("100.64.0.8")), Some(key(1)));
        assert_eq!(table.lookup(ip("100.127.255.255")), Some(key(1)));
        assert_eq!(table.lookup(ip("100.128.0.0")), None);
        assert_eq!(table.lookup(ip("10.1.2.200")), Some(key(4)));
        assert_eq!(table.lookup(ip("10.1.3.1")), Some(key(3)));
        assert_eq!(table.lookup(ip("fd7a::9")), Some(key(6)));
        assert_eq!(table.lookup(ip("fd7a::a")), Some(key(5)));
        assert_eq!(table.lookup(ip("fd7a:0:1::9")), None);
        // An IPv4 route does not catch the IPv4-mapped IPv6 address.
        assert_eq!(table.lookup(ip("::ffff:100.64.0.7")), None);
        assert_eq!(RouteTable::<Key>::default().lookup(ip("100.64.0.7")), None);
        assert!(RouteTable::<Key>::default().is_empty());
    }

    #[test]
    fn default_routes_catch_everything_of_their_family() {
        let table = RouteTable::build([(net("0.0.0.0/0"), key(1)), (net("::/0"), key(2))]);
        assert_eq!(table.lookup(ip("203.0.113.9")), Some(key(1)));
        assert_eq!(table.lookup(ip("2001:db8::1")), Some(key(2)));
    }

    #[test]
    fn a_prefix_claimed_twice_goes_to_the_smaller_key_in_any_order() {
        let claims = [(net("10.9.0.0/16"), key(7)), (net("10.9.0.0/16"), key(3))];
        let forward = RouteTable::build(claims);
        let backward = RouteTable::build(claims.into_iter().rev());
        assert_eq!(forward.lookup(ip("10.9.1.1")), Some(key(3)));
        assert_eq!(backward.lookup(ip("10.9.1.1")), Some(key(3)));
        assert_eq!(forward.len(), 1);
    }

    /// Longest match by scanning every prefix, the obvious way.
    fn reference(routes: &[(IpNet, Key)], addr: IpAddr) -> Option<Key> {
        let best = routes
            .iter()
            .filter(|(net, _)| net.contains(&addr))
            .map(|(net, _)| net.prefix_len())
            .max()?;
        routes
            .iter()
            .filter(|(net, _)| net.prefix_len() == best && net.contains(&addr))
            .map(|(_, key)| *key)
            .min()
    }

    #[test]
    fn lookups_agree_with_a_scan_of_every_prefix() {
        // A small deterministic generator: prefixes crowd into few
        // networks so that many overlap.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut routes = Vec::new();
        for i in 0..400u32 {
            let r = next();
            let len = (r % 33) as u8;
            let addr = std::net::Ipv4Addr::from(0x0a00_0000 | (r >> 40) as u32 & 0x000f_ffff);
            let v4 = ipnet::Ipv4Net::new(addr, len).unwrap().trunc();
            routes.push((IpNet::V4(v4), key((i % 251) as u8)));
            let addr6 = std::net::Ipv6Addr::from(
                (0xfd7a_u128 << 112) | u128::from(r >> 44) << 64 | u128::from(r & 0xff),
            );
            let v6 = ipnet::Ipv6Net::new(addr6, (r % 129) as u8).unwrap().trunc();
            routes.push((IpNet::V6(v6), key((i % 241) as u8)));
        }
        let table = RouteTable::build(routes.iter().copied());
        // Every prefix's own network address (the long prefixes), then
        // random addresses (mostly the short ones).
        for (net, _) in &routes {
            let addr = net.network();
            assert_eq!(table.lookup(addr), reference(&routes, addr), "{addr}");
        }
        for _ in 0..5_000 {
            let r = next();
            let v4 = IpAddr::V4(std::net::Ipv4Addr::from(
                0x0a00_0000 | (r >> 40) as u32 & 0x000f_ffff,
            ));
            assert_eq!(table.lookup(v4), reference(&routes, v4), "{v4}");
            let v6 = IpAddr::V6(std::net::Ipv6Addr::from(
                (0xfd7a_u128 << 112) | u128::from(r >> 44) << 64 | u128::from(r & 0xff),
            ));
            assert_eq!(table.lookup(v6), reference(&routes, v6), "{v6}");
        }
    }
}
