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
//! burst are dropped from it every `PRUNE_EVERY`, and while it holds `MAX_CLIENTS`
//! clients, new ones are served unlimited rather than making it grow (the connection
//! limits still hold for them).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Clients tracked at most.
const MAX_CLIENTS: usize = 65_536;
/// How often clients at a full burst are dropped from the table.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Who a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(u32),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
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

/// The limiter: off when `per_second` is 0.
pub struct RateLimit {
    limiter: Option<DefaultKeyedRateLimiter<ClientKey>>,
    last_prune: Mutex<Instant>,
}

impl RateLimit {
    /// `per_second` requests a second per client, up to `burst` at once (at least one);
    /// no limit when `per_second` is 0.
    pub fn new(per_second: u32, burst: u32) -> RateLimit {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        RateLimit {
            limiter,
            last_prune: Mutex::new(Instant::now()),
        }
    }

    /// Takes one request of `ip`'s budget, or says how long it must wait for one.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        self.prune(limiter);
        if limiter.len() >= MAX_CLIENTS {
            return Ok(());
        }
        limiter
            .check_key(&ClientKey::from(ip))
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    fn prune(&self, limiter: &DefaultKeyedRateLimiter<ClientKey>) {
        let mut last = self
            .last_prune
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.elapsed() >= PRUNE_EVERY {
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
    fn a_rate_of_zero_is_no_limit() {
        let limit = RateLimit::new(0, 0);
        for _ in 0..10_000 {
            assert_eq!(limit.check("10.0.0.7".parse().unwrap()), Ok(()));
        }
    }
}
