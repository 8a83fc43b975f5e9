//! Optional caps on the bytes per second the node sends to peers and fetches from them
//! (`[daemon] max_upload_rate`, `max_download_rate`): a school's uplink is shared with
//! its classrooms. The block exchange and bitswap spend from the same caps, so a cap
//! holds whatever protocol the bytes travel by. Browsers on the LAN are not capped.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// The lowest cap accepted: below it a 1 MiB block takes longer than a peer waits for
/// a stalled stream (30 s).
pub const MIN_RATE: u64 = 64 * 1000;

/// Bytes sent in one go before the cap applies: a second's worth, and never less than a
/// whole block with its framing, so one block never waits on itself.
const MIN_BURST: u32 = 2 * 1024 * 1024;

/// A cap on bytes per second, shared by every clone; or none.
#[derive(Debug, Clone, Default)]
pub struct Throttle {
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
}

impl Throttle {
    /// No cap: `spend` returns at once.
    pub fn unlimited() -> Throttle {
        Throttle::default()
    }

    /// A cap of `bytes_per_sec` (at least [`MIN_RATE`]).
    pub fn new(bytes_per_sec: u64) -> Throttle {
        let rate = u32::try_from(bytes_per_sec.max(MIN_RATE)).unwrap_or(u32::MAX);
        let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(rate.get().max(MIN_BURST)).unwrap_or(NonZeroU32::MIN);
        Throttle {
            limiter: Some(Arc::new(RateLimiter::direct(
                Quota::per_second(rate).allow_burst(burst),
            ))),
        }
    }

    /// Waits until `bytes` may go through the cap.
    pub async fn spend(&self, bytes: usize) {
        let Some(limiter) = &self.limiter else {
            return;
        };
        let mut left = u32::try_from(bytes).unwrap_or(u32::MAX);
        while left > 0 {
            let step = left.min(MIN_BURST);
            if let Some(cells) = NonZeroU32::new(step) {
                // `step` never exceeds the burst, so the limiter cannot refuse it.
                let _ = limiter.until_n_ready(cells).await;
            }
            left -= step;
        }
    }
}

/// The caps of one daemon.
#[derive(Debug, Clone, Default)]
pub struct Bandwidth {
    /// Bytes of blocks sent to peers.
    pub upload: Throttle,
    /// Bytes of blocks received from peers.
    pub download: Throttle,
}
