//! How much of a school's uplink the node takes, and when: optional caps on the bytes
//! per second it sends to peers and fetches from them (`[daemon] max_upload_rate`,
//! `max_download_rate`), and the hours in which followed collections are synced
//! (`sync_hours`). The block exchange and bitswap spend from the same caps, so a cap
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

/// The hours of the day, in the machine's local time, in which followed collections'
/// content is fetched (`[daemon] sync_hours`, e.g. `22:00-06:00`): a large first sync
/// can wait for the night, when classrooms do not need the uplink. A window may run
/// past midnight; start and end equal means all day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncHours {
    /// Minutes after midnight.
    start: u16,
    end: u16,
}

impl SyncHours {
    /// Parses `HH:MM-HH:MM`.
    pub fn parse(text: &str) -> Option<SyncHours> {
        let minutes = |hhmm: &str| -> Option<u16> {
            let (hours, minutes) = hhmm.trim().split_once(':')?;
            if minutes.len() != 2 {
                return None;
            }
            let (hours, minutes): (u16, u16) = (hours.parse().ok()?, minutes.parse().ok()?);
            (hours < 24 && minutes < 60).then_some(hours * 60 + minutes)
        };
        let (start, end) = text.split_once('-')?;
        Some(SyncHours {
            start: minutes(start)?,
            end: minutes(end)?,
        })
    }

    /// Whether `minute` (after midnight) is inside the window.
    pub fn contains(&self, minute: u16) -> bool {
        match self.start.cmp(&self.end) {
            std::cmp::Ordering::Equal => true,
            std::cmp::Ordering::Less => (self.start..self.end).contains(&minute),
            std::cmp::Ordering::Greater => minute >= self.start || minute < self.end,
        }
    }

    /// Whether the window is open now, in local time.
    pub fn open_now(&self) -> bool {
        self.contains(local_minute_of_day())
    }
}

impl std::fmt::Display for SyncHours {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

/// Minutes since local midnight, by the machine's time zone (`TZ`, `/etc/localtime`).
pub fn local_minute_of_day() -> u16 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let time = libc::time_t::try_from(now).unwrap_or(0);
    // SAFETY: `localtime_r` writes only into the `tm` it is given, and reads `time`.
    let mut local: libc::tm = unsafe { std::mem::zeroed() };
    let converted = unsafe { libc::localtime_r(&time, &mut local) };
    if converted.is_null() {
        // No time zone information: UTC.
        return ((now / 60) % (24 * 60)) as u16;
    }
    (local.tm_hour * 60 + local.tm_min) as u16
}

#[cfg(test)]
mod tests {
    use super::SyncHours;

    #[test]
    fn sync_hours_may_run_past_midnight() {
        let night = SyncHours::parse("22:00-06:00").unwrap();
        assert_eq!(night.to_string(), "22:00-06:00");
        assert!(night.contains(23 * 60) && night.contains(0) && night.contains(5 * 60 + 59));
        assert!(
            !night.contains(6 * 60) && !night.contains(12 * 60) && !night.contains(21 * 60 + 59)
        );
        let lunch = SyncHours::parse(" 12:00 - 13:30 ").unwrap();
        assert!(lunch.contains(12 * 60 + 15) && !lunch.contains(13 * 60 + 30));
        assert!(SyncHours::parse("00:00-00:00").unwrap().contains(17 * 60));
        for bad in [
            "",
            "22:00",
            "24:00-06:00",
            "22:60-06:00",
            "6:5-7:00",
            "night",
            "22-06",
        ] {
            assert_eq!(SyncHours::parse(bad), None, "{bad}");
        }
    }
}
