//! The per-address connection limit: at most N connections from one client IP address
//! (an IPv6 client: its /64) across every core, so one host (or one attacker behind one
//! address) cannot take the whole connection budget. Behind a load balancer speaking the
//! PROXY protocol the address is the real client's ([`crate::proxy_header`]), not the
//! balancer's.
//!
//! Counted in a table shared by the cores, split into [`SHARDS`] independently locked
//! shards by the address's hash: a connection takes one shard's lock when it opens and
//! once more when it closes — never per message — so cores rarely meet on a lock. A
//! connection holds its place as an [`AddressSlot`], which gives it back when dropped.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Independently locked parts of the table.
const SHARDS: usize = 64;

/// Connections per client address, shared by every core. See the module docs.
#[derive(Debug)]
pub struct AddressLimiter {
    limit: u32,
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<IpAddr, u32>>>,
    refused: AtomicU64,
}

impl AddressLimiter {
    /// A limiter allowing `limit` connections per address (at least 1).
    pub fn new(limit: u32) -> Arc<AddressLimiter> {
        Arc::new(AddressLimiter {
            limit: limit.max(1),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            refused: AtomicU64::new(0),
        })
    }

    /// The configured limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Connections refused because their address was at the limit.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Addresses with at least one connection (a gauge; takes every shard's lock once, so
    /// for metrics scrapes, not the hot path).
    pub fn addresses(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// A place for one more connection from `ip`, or `None` (counted) when it already has
    /// `limit`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let ip = canonical(ip);
        let mut shard = lock(self.shard(ip));
        let count = shard.entry(ip).or_insert(0);
        if *count >= self.limit {
            drop(shard);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            limiter: self.clone(),
            ip,
        })
    }

    fn shard(&self, ip: IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        &self.shards[self.hasher.hash_one(ip) as usize % SHARDS]
    }

    fn release(&self, ip: IpAddr) {
        let mut shard = lock(self.shard(ip));
        if let Some(count) = shard.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                shard.remove(&ip);
            }
        }
    }
}

/// One connection's place in the [`AddressLimiter`]; dropping it gives the place back.
#[derive(Debug)]
pub struct AddressSlot {
    limiter: Arc<AddressLimiter>,
    ip: IpAddr,
}

impl AddressSlot {
    /// The client address it counts against.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.limiter.release(self.ip);
    }
}

/// An IPv4 client seen through an IPv6 socket (`::ffff:a.b.c.d`) counts as itself; an
/// IPv6 client counts as its /64, the network one host (or one home, one phone) is given:
/// it can pick any address in it, so counting single addresses would limit nothing.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !u128::from(u64::MAX),
            )),
        },
        v4 => v4,
    }
}

/// A shard's lock; a panic while holding it left only counts behind, still usable.
fn lock(shard: &Mutex<HashMap<IpAddr, u32>>) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn an_address_gets_limit_places_and_gets_them_back_when_dropped() {
        let limiter = AddressLimiter::new(2);
        let a = IpAddr::from([203, 0, 113, 1]);
        let b = IpAddr::from([203, 0, 113, 2]);
        let first = limiter.acquire(a).expect("first");
        let second = limiter.acquire(a).expect("second");
        assert!(limiter.acquire(a).is_none(), "third from the same address");
        assert_eq!(limiter.refused(), 1);
        let other = limiter.acquire(b).expect("another address is not affected");
        assert_eq!(limiter.addresses(), 2);
        drop(first);
        let again = limiter.acquire(a).expect("a place came back");
        drop((second, again, other));
        assert_eq!(
            limiter.addresses(),
            0,
            "no entry is left for a gone address"
        );
    }

    #[test]
    fn an_ipv4_mapped_address_counts_as_the_ipv4_one() {
        let limiter = AddressLimiter::new(1);
        let v4 = Ipv4Addr::new(198, 51, 100, 7);
        let _held = limiter.acquire(IpAddr::V4(v4)).unwrap();
        assert!(limiter.acquire(IpAddr::V6(v4.to_ipv6_mapped())).is_none());
        assert!(limiter.acquire(IpAddr::V6(Ipv6Addr::LOCALHOST)).is_some());
    }

    #[test]
    fn an_ipv6_64_counts_as_one_address() {
        let limiter = AddressLimiter::new(1);
        let host: Ipv6Addr = "2001:db8:1:2::7".parse().unwrap();
        let held = limiter.acquire(IpAddr::V6(host)).unwrap();
        assert_eq!(held.ip(), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        let same_64: Ipv6Addr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert!(limiter.acquire(IpAddr::V6(same_64)).is_none());
        let next_64: Ipv6Addr = "2001:db8:1:3::7".parse().unwrap();
        assert!(limiter.acquire(IpAddr::V6(next_64)).is_some());
    }

    #[test]
    fn places_are_shared_across_threads() {
        let limiter = AddressLimiter::new(100);
        let ip = IpAddr::from([10, 0, 0, 1]);
        let slots: Vec<AddressSlot> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let limiter = limiter.clone();
                    s.spawn(move || {
                        (0..50)
                            .filter_map(|_| limiter.acquire(ip))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(slots.len(), 100, "exactly the limit, across four threads");
        assert_eq!(limiter.refused(), 100);
    }
}
