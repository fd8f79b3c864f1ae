//! Versions of writes: a hybrid logical clock (HLC) packed in 64 bits, so
//! that replicas agree on the order of the writes of one key whatever order
//! they arrive in (docs/design/consistency.md).
//!
//! ```text
//!  63                        22 21        12 11          0
//!  | milliseconds since 2024   | logical    | writer id   |
//! ```
//!
//! The clock never goes backwards and moves past every version it observes,
//! so a writer whose wall clock is behind catches up on first contact; but
//! it ignores a version more than its `max_skew` ahead of its own wall
//! clock (a host clock set years ahead, a buggy client, a forged write):
//! one such version would otherwise drag every clock that sees it into the
//! future, where the 42 bits of milliseconds wrap.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const WRITER_BITS: u32 = 12;
const LOGICAL_BITS: u32 = 10;
const TICK_SHIFT: u32 = WRITER_BITS;
/// 2024-01-01T00:00:00Z in ms since the Unix epoch.
const EPOCH_MS: u64 = 1_704_067_200_000;
/// How far ahead of the wall clock a version may be, unless configured
/// (`--max-clock-skew`): far above what NTP leaves between hosts, far below
/// what a wrong clock or a forged version looks like.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(60);

/// A clock that stamps versions for one writer.
#[derive(Debug)]
pub struct Hlc {
    /// Latest tick (version >> 12) issued or observed.
    last: AtomicU64,
    writer: u64,
    /// Versions further ahead of the wall clock are not observed.
    max_skew: Duration,
}

/// The largest version acceptable now from a clock at most `skew` ahead of
/// this machine's wall clock.
pub fn horizon(skew: Duration) -> u64 {
    let ms = u64::try_from(skew.as_millis()).unwrap_or(u64::MAX);
    let ahead = ms.saturating_mul(1 << LOGICAL_BITS);
    // The largest tick that still fits once shifted (a huge skew accepts
    // every version).
    let tick = wall_ticks()
        .saturating_add(ahead)
        .min(u64::MAX >> TICK_SHIFT);
    (tick << TICK_SHIFT) | ((1 << WRITER_BITS) - 1)
}

/// How far `version` is ahead of this machine's wall clock (zero if not).
pub fn ahead_of_wall(version: u64) -> Duration {
    let ms = unix_millis(version);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Duration::from_millis(ms.saturating_sub(now))
}

fn wall_ticks() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    ms.saturating_sub(EPOCH_MS) << LOGICAL_BITS
}

/// The version of the wall clock `d` ago, with writer id 0: every version
/// stamped by any clock at or after that time is larger.
pub fn wall_version_ago(d: Duration) -> u64 {
    let back = (d.as_millis() as u64) << LOGICAL_BITS;
    wall_ticks().saturating_sub(back) << TICK_SHIFT
}

/// Milliseconds since the Unix epoch that a version stands for.
pub fn unix_millis(version: u64) -> u64 {
    (version >> (TICK_SHIFT + LOGICAL_BITS)) + EPOCH_MS
}

impl Hlc {
    /// A clock for writer `writer` (only its low 12 bits are used).
    pub fn new(writer: u64) -> Self {
        Self {
            last: AtomicU64::new(0),
            writer: writer & ((1 << WRITER_BITS) - 1),
            max_skew: DEFAULT_MAX_SKEW,
        }
    }

    /// Ignores versions more than `max_skew` ahead of the wall clock.
    pub fn with_max_skew(mut self, max_skew: Duration) -> Self {
        self.max_skew = max_skew;
        self
    }

    pub fn max_skew(&self) -> Duration {
        self.max_skew
    }

    /// Whether `version` is within `max_skew` of the wall clock (or behind).
    pub fn acceptable(&self, version: u64) -> bool {
        version <= horizon(self.max_skew)
    }

    /// A clock with a random writer id.
    pub fn random() -> Self {
        Self::new(u64::from(uuid::Uuid::new_v4().as_u128() as u16))
    }

    /// A new version, larger than every version issued or observed before.
    pub fn next(&self) -> u64 {
        let wall = wall_ticks();
        let mut tick = 0;
        // The closure always returns Some, so the update cannot fail.
        let _ = self
            .last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                // Checked: a clock at the end of the 52 bits stays there
                // rather than wrap to the past (only a --max-clock-skew
                // large enough to accept such a version gets here).
                tick = wall.max(last.saturating_add(1)).min(u64::MAX >> TICK_SHIFT);
                Some(tick)
            });
        (tick << TICK_SHIFT) | self.writer
    }

    /// Moves the clock past `version` (seen in an answer or a heartbeat),
    /// unless it is more than `max_skew` ahead of the wall clock: then the
    /// clock stays and false is returned (the caller logs and counts it).
    pub fn observe(&self, version: u64) -> bool {
        if !self.acceptable(version) {
            return false;
        }
        self.last.fetch_max(version >> TICK_SHIFT, Ordering::AcqRel);
        true
    }

    /// The largest version issued or observed, or the wall clock if later,
    /// without issuing one.
    pub fn now(&self) -> u64 {
        (wall_ticks().max(self.last.load(Ordering::Acquire)) << TICK_SHIFT) | self.writer
    }

    /// The largest version issued or observed (0 if none).
    pub fn latest(&self) -> u64 {
        let last = self.last.load(Ordering::Acquire);
        if last == 0 {
            0
        } else {
            (last << TICK_SHIFT) | ((1 << WRITER_BITS) - 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_grow_and_follow_the_wall_clock() {
        let c = Hlc::new(7);
        let a = c.next();
        let b = c.next();
        assert!(b > a);
        assert_eq!(a & 0xfff, 7);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(unix_millis(a).abs_diff(now) < 5_000);
    }

    #[test]
    fn observing_a_later_version_moves_the_clock_past_it() {
        let slow = Hlc::new(1);
        // 30 s ahead: within the default bound.
        let far = (wall_ticks() + (30_000 << LOGICAL_BITS)) << TICK_SHIFT | 9;
        slow.observe(far);
        let v = slow.next();
        assert!(v > far, "{v} <= {far}");
        assert!(slow.now() >= far);
        assert!(slow.latest() >= v);
    }

    #[test]
    fn concurrent_stamps_are_unique() {
        let c = std::sync::Arc::new(Hlc::new(3));
        let all: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let c = c.clone();
                    s.spawn(move || (0..5000).map(|_| c.next()).collect::<Vec<_>>())
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let mut sorted = all.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len());
    }

    #[test]
    fn a_version_far_in_the_future_is_not_observed() {
        let c = Hlc::new(1).with_max_skew(Duration::from_secs(60));
        let before = c.next();
        // What a forged write sent with grpcurl looked like.
        assert!(!c.observe(u64::MAX - 5000));
        let in_ten_minutes = (wall_ticks() + (600_000 << LOGICAL_BITS)) << TICK_SHIFT;
        assert!(!c.observe(in_ten_minutes));
        let after = c.next();
        assert!(after > before);
        assert!(
            ahead_of_wall(after) < Duration::from_secs(1),
            "the clock stayed near the wall clock"
        );
        // Within the bound: followed as before.
        let in_ten_seconds = (wall_ticks() + (10_000 << LOGICAL_BITS)) << TICK_SHIFT;
        assert!(c.observe(in_ten_seconds));
        assert!(c.next() > in_ten_seconds);
        assert!(ahead_of_wall(in_ten_minutes) > Duration::from_secs(590));
    }

    #[test]
    fn a_huge_skew_accepts_every_version() {
        assert_eq!(horizon(Duration::MAX), u64::MAX);
        assert!(Hlc::new(0)
            .with_max_skew(Duration::MAX)
            .observe(u64::MAX - 5000));
    }

    #[test]
    fn a_version_from_the_past_is_below_every_new_one() {
        let old = wall_version_ago(Duration::from_secs(2));
        assert!(Hlc::new(0).next() > old);
    }
}
