//! Transfer rate and time left, from successive readings of a growing byte count: what
//! a progress display shows when all it can do is ask "how many bytes now?" (`follow
//! status --watch` polling the daemon).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Readings kept at most, whatever the window: bounds memory for fast pollers.
const MAX_READINGS: usize = 64;

/// The rate over the readings of the last `window`, so that it follows a change of pace
/// (a peer joining or leaving) instead of averaging over the whole transfer.
#[derive(Debug, Clone)]
pub struct RateEstimate {
    window: Duration,
    readings: VecDeque<(Instant, u64)>,
}

impl RateEstimate {
    pub fn new(window: Duration) -> RateEstimate {
        RateEstimate {
            window,
            readings: VecDeque::new(),
        }
    }

    /// Notes that `bytes` were held at `at`. A count that went down (a new version
    /// replaced the old one, gc reclaimed space) starts the estimate afresh, since the
    /// readings before it say nothing about the pace from now on.
    pub fn record(&mut self, at: Instant, bytes: u64) {
        if self.readings.back().is_some_and(|&(_, last)| bytes < last) {
            self.readings.clear();
        }
        self.readings.push_back((at, bytes));
        // Keep one reading older than the window, so the window is always spanned.
        while self.readings.len() > 2
            && self
                .readings
                .get(1)
                .is_some_and(|&(second, _)| at.saturating_duration_since(second) >= self.window)
        {
            self.readings.pop_front();
        }
        while self.readings.len() > MAX_READINGS {
            self.readings.pop_front();
        }
    }

    /// Bytes per second over the window; `None` until two readings some time apart.
    pub fn bytes_per_sec(&self) -> Option<f64> {
        let (first_at, first) = *self.readings.front()?;
        let (last_at, last) = *self.readings.back()?;
        let elapsed = last_at.saturating_duration_since(first_at).as_secs_f64();
        if elapsed <= 0.0 {
            return None;
        }
        Some(last.saturating_sub(first) as f64 / elapsed)
    }

    /// Time until `total` bytes are held at the current rate: zero once they are,
    /// `None` while the rate is unknown or nothing moves.
    pub fn eta(&self, total: u64) -> Option<Duration> {
        let (_, held) = *self.readings.back()?;
        let left = total.saturating_sub(held);
        if left == 0 {
            return Some(Duration::ZERO);
        }
        let rate = self.bytes_per_sec()?;
        if rate <= 0.0 {
            return None;
        }
        Duration::try_from_secs_f64(left as f64 / rate).ok()
    }
}

/// A duration for people, to the second: 45s, 3m 07s, 2h 05m.
pub fn human_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn no_rate_from_one_reading() {
        let mut estimate = RateEstimate::new(secs(10));
        let start = Instant::now();
        assert_eq!(estimate.bytes_per_sec(), None);
        estimate.record(start, 100);
        assert_eq!(estimate.bytes_per_sec(), None);
        assert_eq!(estimate.eta(1_000), None);
        // Held already: nothing left, whatever the rate.
        assert_eq!(estimate.eta(100), Some(Duration::ZERO));
    }

    #[test]
    fn rate_and_eta_from_successive_readings() {
        let mut estimate = RateEstimate::new(secs(10));
        let start = Instant::now();
        estimate.record(start, 0);
        estimate.record(start + secs(2), 2_000);
        estimate.record(start + secs(4), 4_000);
        assert_eq!(estimate.bytes_per_sec(), Some(1_000.0));
        assert_eq!(estimate.eta(10_000), Some(secs(6)));
        assert_eq!(estimate.eta(4_000), Some(Duration::ZERO));
    }

    #[test]
    fn rate_follows_the_recent_pace() {
        let mut estimate = RateEstimate::new(secs(10));
        let start = Instant::now();
        estimate.record(start, 0);
        // Fast for 20 s, then stalled for 20 s: the old pace has left the window.
        estimate.record(start + secs(20), 20_000_000);
        estimate.record(start + secs(30), 20_000_000);
        estimate.record(start + secs(40), 20_000_000);
        assert_eq!(estimate.bytes_per_sec(), Some(0.0));
        assert_eq!(estimate.eta(30_000_000), None);
    }

    #[test]
    fn a_count_that_goes_down_starts_afresh() {
        let mut estimate = RateEstimate::new(secs(10));
        let start = Instant::now();
        estimate.record(start, 0);
        estimate.record(start + secs(1), 5_000);
        estimate.record(start + secs(2), 1_000);
        assert_eq!(estimate.bytes_per_sec(), None);
        estimate.record(start + secs(4), 3_000);
        assert_eq!(estimate.bytes_per_sec(), Some(1_000.0));
    }

    #[test]
    fn readings_stay_bounded() {
        let mut estimate = RateEstimate::new(secs(3600));
        let start = Instant::now();
        for n in 0..1_000u64 {
            estimate.record(start + Duration::from_millis(n), n * 10);
        }
        assert!(estimate.readings.len() <= MAX_READINGS);
        let rate = estimate.bytes_per_sec().unwrap_or_default();
        assert!((rate - 10_000.0).abs() < 1.0, "{rate}");
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(human_duration(secs(45)), "45s");
        assert_eq!(human_duration(secs(187)), "3m 07s");
        assert_eq!(human_duration(secs(7500)), "2h 05m");
    }
}
