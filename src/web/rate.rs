//! The per-client request rate of the browser-facing address.
//!
//! Every client earns `per_second` requests a second, up to a burst of `burst`; a
//! request beyond that is answered 429 with the seconds to wait, before any handler
//! runs, so that one machine looping over searches, folder pages or missing content
//! cannot take the node's work from every other browser. A client is an IPv4 address,
//! or an IPv6 /64 (one machine usually holds a whole /64 and may use any address of
//! it). The style sheet and script built into the binary are not counted: a page load
//! costs one request.
//!
//! The table of clients is bounded: clients idle long enough to be back at a full
//! burst are dropped from it every `PRUNE_EVERY` (and at most every `PRUNE_WHEN_FULL`
//! while it is full), and while it holds `MAX_CLIENTS` clients, a client not in it
//! shares one of `OVERFLOW_BUCKETS` buckets (chosen by its address) with the others
//! left out, rather than making the table grow or going unlimited.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{HashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

/// Clients tracked at most, besides the overflow buckets.
const MAX_CLIENTS: usize = 65_536;
/// Buckets shared by the clients that find the table full.
const OVERFLOW_BUCKETS: u16 = 256;
/// How often clients at a full burst are dropped from the table.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// ... and how often while it is full: a walk of the whole table, under its lock.
const PRUNE_WHEN_FULL: Duration = Duration::from_secs(1);

/// Who a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(u32),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
    /// A bucket shared by clients that found the table full.
    Overflow(u16),
}

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(v4.into()),
                None => ClientKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl ClientKey {
    /// The overflow bucket this client shares while the table is full.
    fn overflow(self) -> ClientKey {
        let mut hasher = DefaultHasher::new();
        self.hash(&mut hasher);
        ClientKey::Overflow((hasher.finish() % u64::from(OVERFLOW_BUCKETS)) as u16)
    }
}

/// governor's own table of clients, which sends a client it does not hold to an
/// overflow bucket once it holds `capacity`.
struct ClientTable {
    clients: HashMapStateStore<ClientKey>,
    capacity: usize,
}

impl StateStore for ClientTable {
    type Key = ClientKey;

    fn measure_and_replace<T, F, E>(&self, key: &ClientKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let key = {
            let clients = self.clients.lock();
            if clients.len() >= self.capacity && !clients.contains_key(key) {
                key.overflow()
            } else {
                *key
            }
        };
        // Another request may add a client between the two locks: the table can pass
        // its capacity by the number of requests checked at once, no more.
        self.clients.measure_and_replace(&key, f)
    }
}

impl ShrinkableKeyedStateStore<ClientKey> for ClientTable {
    fn retain_recent(&self, drop_below: Nanos) {
        self.clients.retain_recent(drop_below);
    }

    fn len(&self) -> usize {
        ShrinkableKeyedStateStore::len(&self.clients)
    }

    fn is_empty(&self) -> bool {
        ShrinkableKeyedStateStore::is_empty(&self.clients)
    }
}

type Limiter = RateLimiter<ClientKey, ClientTable, DefaultClock, NoOpMiddleware>;

/// The limiter: off when `per_second` is 0.
pub struct RateLimit {
    limiter: Option<Limiter>,
    /// Clients the table holds before new ones share the overflow buckets.
    capacity: usize,
    last_prune: Mutex<Instant>,
}

impl RateLimit {
    /// `per_second` requests a second per client, up to `burst` at once (at least one);
    /// no limit when `per_second` is 0.
    pub fn new(per_second: u32, burst: u32) -> RateLimit {
        RateLimit::with_capacity(per_second, burst, MAX_CLIENTS)
    }

    fn with_capacity(per_second: u32, burst: u32, capacity: usize) -> RateLimit {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
            let table = ClientTable {
                clients: HashMapStateStore::default(),
                capacity,
            };
            RateLimiter::new(
                Quota::per_second(rate).allow_burst(burst),
                table,
                DefaultClock::default(),
            )
        });
        RateLimit {
            limiter,
            capacity,
            last_prune: Mutex::new(Instant::now()),
        }
    }

    /// Takes one request of `ip`'s budget, or says how long it must wait for one.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        self.prune(limiter);
        limiter
            .check_key(&ClientKey::from(ip))
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    fn prune(&self, limiter: &Limiter) {
        let mut last = self
            .last_prune
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let due = last.elapsed() >= PRUNE_EVERY
            || (last.elapsed() >= PRUNE_WHEN_FULL && limiter.len() >= self.capacity);
        if due {
            *last = Instant::now();
            limiter.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_over_its_burst_waits_and_others_do_not() {
        let limit = RateLimit::new(1, 3);
        let flooder: IpAddr = "192.168.1.20".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limit.check(flooder), Ok(()));
        }
        let wait = limit.check(flooder).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(limit.check("192.168.1.21".parse().unwrap()), Ok(()));
    }

    #[test]
    fn an_ipv6_client_is_its_whole_64_and_a_mapped_ipv4_its_address() {
        let limit = RateLimit::new(1, 1);
        assert_eq!(limit.check("2001:db8:1:2::1".parse().unwrap()), Ok(()));
        assert!(limit.check("2001:db8:1:2::ffff".parse().unwrap()).is_err());
        assert_eq!(limit.check("2001:db8:1:3::1".parse().unwrap()), Ok(()));
        assert_eq!(limit.check("10.0.0.7".parse().unwrap()), Ok(()));
        assert!(limit.check("::ffff:10.0.0.7".parse().unwrap()).is_err());
    }

    #[test]
    fn new_clients_are_still_limited_once_the_table_is_full() {
        let limit = RateLimit::new(1, 2);
        for n in 0..MAX_CLIENTS as u32 {
            assert_eq!(limit.check(IpAddr::from(n.to_be_bytes())), Ok(()));
        }
        let table_size = || limit.limiter.as_ref().map(|limiter| limiter.len());
        // However slow the machine, a client earning one request a second is refused
        // well before a thousand requests in a row.
        let refused_within_1000 = |ip: IpAddr| (0..1000).any(|_| limit.check(ip).is_err());
        let newcomer: IpAddr = "2001:db8:7::1".parse().unwrap();
        assert!(refused_within_1000(newcomer), "{:?} clients", table_size());
        // A client already in the table keeps being limited too.
        assert!(refused_within_1000(IpAddr::from(7u32.to_be_bytes())));
        // Thousands more newcomers do not make the table grow past its buckets.
        for n in 0..5_000u32 {
            let _ = limit.check(IpAddr::from((0xC000_0000 + n).to_be_bytes()));
        }
        let size = table_size().unwrap();
        assert!(
            size <= MAX_CLIENTS + usize::from(OVERFLOW_BUCKETS),
            "{size} clients"
        );
    }

    #[test]
    fn a_full_table_drops_clients_back_at_a_full_burst() {
        let limit = RateLimit::with_capacity(1000, 1, 4);
        for n in 0..4u32 {
            assert_eq!(limit.check(IpAddr::from(n.to_be_bytes())), Ok(()));
        }
        // Once the four have earned their burst back and the table was pruned, a
        // newcomer has a bucket of its own: the prune while full runs at most every
        // PRUNE_WHEN_FULL, so wait that long.
        std::thread::sleep(PRUNE_WHEN_FULL + Duration::from_millis(50));
        let newcomer: IpAddr = "10.9.9.9".parse().unwrap();
        assert_eq!(limit.check(newcomer), Ok(()));
        let table = limit.limiter.as_ref().unwrap();
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_rate_of_zero_is_no_limit() {
        let limit = RateLimit::new(0, 0);
        for _ in 0..10_000 {
            assert_eq!(limit.check("10.0.0.7".parse().unwrap()), Ok(()));
        }
    }
}
