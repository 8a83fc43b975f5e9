//! How many heads and objects requests a peer may send, from both ends.
//!
//! The answering node gives each peer a token bucket ([`RequestBudget`]) and drops
//! requests beyond it; a peer that keeps sending into an empty bucket is cut off.
//! The asking node paces itself ([`RequestPacing`]) to three quarters of that budget,
//! waiting for a token before it sends, so an honest node catching up on many
//! versions at once is slowed down instead of refused, and never looks like a flood
//! even when the network delivers its requests in bunches.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;

/// Requests a peer may send in a burst, and how many it earns back each second.
/// Requests beyond that are dropped unanswered and counted as strikes.
pub const REQUEST_BURST: f64 = 128.0;
pub const REQUESTS_PER_SECOND: f64 = 32.0;
/// Strikes after which a peer is cut off. One strike is forgiven each second, so
/// only a peer that keeps sending well past its budget gets there: a refusal now and
/// then, after a burst or a bunched delivery, never adds up.
pub const MAX_STRIKES: f64 = 64.0;
const STRIKES_FORGIVEN_PER_SECOND: f64 = 1.0;
/// The share of the budget a node allows itself when asking.
const PACING_SHARE: f64 = 0.75;
/// Peers whose pacing state is kept; beyond it, peers with a full bucket (idle long
/// enough to have earned it all back) are forgotten, as they would start afresh.
const MAX_PACED_PEERS: usize = 1024;

/// A token bucket: `tokens` as of `at`, refilled at `rate` a second up to `burst`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    burst: f64,
    rate: f64,
}

impl Bucket {
    fn full(burst: f64, rate: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
            burst,
            rate,
        }
    }

    fn refill(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.at = self.at.max(now);
    }
}

/// One peer's budget for requests it sends us.
#[derive(Debug)]
pub struct RequestBudget {
    bucket: Bucket,
    strikes: f64,
}

/// What to do with one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Answer,
    /// Dropped unanswered: the peer is over its budget.
    Refuse,
    /// Dropped, and the peer has been over its budget for too long.
    CutOff,
}

impl RequestBudget {
    pub fn new(now: Instant) -> RequestBudget {
        RequestBudget {
            bucket: Bucket::full(REQUEST_BURST, REQUESTS_PER_SECOND, now),
            strikes: 0.0,
        }
    }

    /// Takes one request's token, or counts a strike when there is none.
    pub fn take(&mut self, now: Instant) -> Verdict {
        let since = now.saturating_duration_since(self.bucket.at).as_secs_f64();
        self.strikes = (self.strikes - since * STRIKES_FORGIVEN_PER_SECOND).max(0.0);
        self.bucket.refill(now);
        if self.bucket.tokens >= 1.0 {
            self.bucket.tokens -= 1.0;
            return Verdict::Answer;
        }
        self.strikes += 1.0;
        if self.strikes >= MAX_STRIKES {
            Verdict::CutOff
        } else {
            Verdict::Refuse
        }
    }
}

/// The pace at which this node sends requests to each peer, shared by every task
/// that asks.
#[derive(Debug, Default)]
pub struct RequestPacing {
    peers: Mutex<HashMap<PeerId, Bucket>>,
}

impl RequestPacing {
    /// Reserves the next slot for a request to `peer`: how long to wait before
    /// sending it. Reservations queue up: ten callers at once get ten different slots.
    pub fn reserve(&self, peer: PeerId, now: Instant) -> Duration {
        let burst = REQUEST_BURST * PACING_SHARE;
        let rate = REQUESTS_PER_SECOND * PACING_SHARE;
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if peers.len() >= MAX_PACED_PEERS && !peers.contains_key(&peer) {
            peers.retain(|_, bucket| {
                bucket.refill(now);
                bucket.tokens < bucket.burst
            });
        }
        let bucket = peers
            .entry(peer)
            .or_insert_with(|| Bucket::full(burst, rate, now));
        bucket.refill(now);
        // Tokens may go below zero: each reservation past the bucket waits for its own
        // token to be earned.
        bucket.tokens -= 1.0;
        if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-bucket.tokens / rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_flood_is_cut_off() {
        let start = Instant::now();
        let mut budget = RequestBudget::new(start);
        let verdicts: Vec<Verdict> = (0..1_000).map(|i| budget.take(start + ms(i))).collect();
        assert!(verdicts[..100].iter().all(|v| *v == Verdict::Answer));
        assert!(verdicts.contains(&Verdict::Refuse));
        assert_eq!(verdicts.last(), Some(&Verdict::CutOff));
    }

    #[test]
    fn refusals_now_and_then_never_add_up_to_a_cut_off() {
        // Every ten seconds, a burst a little larger than the bucket: a few refusals
        // each time, for an hour.
        let start = Instant::now();
        let mut budget = RequestBudget::new(start);
        let mut refused = 0;
        for round in 0..360u64 {
            for i in 0..(REQUEST_BURST as u64 + 5) {
                match budget.take(start + Duration::from_secs(round * 10) + ms(i / 10)) {
                    Verdict::Answer => {}
                    Verdict::Refuse => refused += 1,
                    Verdict::CutOff => panic!("cut off after {refused} refusals in {round} rounds"),
                }
            }
        }
        assert!(refused > MAX_STRIKES as u64, "{refused} refusals");
    }

    #[test]
    fn a_node_that_paces_itself_is_never_refused_even_when_its_requests_arrive_bunched() {
        let pacing = RequestPacing::default();
        let peer = PeerId::random();
        let start = Instant::now();
        let mut budget = RequestBudget::new(start);
        // Rounds a minute apart of 300 requests as fast as the pacing lets them go.
        // The network holds back those sent at once (the burst) by 400 ms, so they
        // arrive together with the first paced ones: the worst bunching a delay of
        // 400 ms can cause.
        let mut arrivals = Vec::new();
        for round in 0..20 {
            let mut sent_at = start + Duration::from_secs(60 * round);
            for _ in 0..300 {
                let wait = pacing.reserve(peer, sent_at);
                sent_at += wait;
                arrivals.push(sent_at + if wait.is_zero() { ms(400) } else { ms(0) });
            }
        }
        arrivals.sort();
        for at in arrivals {
            assert_eq!(budget.take(at), Verdict::Answer);
        }
    }

    #[test]
    fn reservations_queue_up() {
        let pacing = RequestPacing::default();
        let peer = PeerId::random();
        let now = Instant::now();
        let waits: Vec<Duration> = (0..200).map(|_| pacing.reserve(peer, now)).collect();
        let free = (REQUEST_BURST * PACING_SHARE) as usize;
        assert!(waits[..free].iter().all(|w| w.is_zero()));
        assert!(waits[free..].windows(2).all(|w| w[0] < w[1]));
        assert!(pacing.reserve(PeerId::random(), now).is_zero());
    }
}
