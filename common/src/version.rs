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
//! so a writer whose wall clock is behind catches up on first contact.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const WRITER_BITS: u32 = 12;
const LOGICAL_BITS: u32 = 10;
const TICK_SHIFT: u32 = WRITER_BITS;
/// 2024-01-01T00:00:00Z in ms since the Unix epoch.
const EPOCH_MS: u64 = 1_704_067_200_000;

/// A clock that stamps versions for one writer.
#[derive(Debug)]
pub struct Hlc {
    /// Latest tick (version >> 12) issued or observed.
    last: AtomicU64,
    writer: u64,
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
        }
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
                tick = wall.max(last + 1);
                Some(tick)
            });
        (tick << TICK_SHIFT) | self.writer
    }

    /// Moves the clock past `version` (seen in an answer or a heartbeat).
    pub fn observe(&self, version: u64) {
        self.last.fetch_max(version >> TICK_SHIFT, Ordering::AcqRel);
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
        let far = (wall_ticks() + (1 << 30)) << TICK_SHIFT | 9;
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
    fn a_version_from_the_past_is_below_every_new_one() {
        let old = wall_version_ago(Duration::from_secs(2));
        assert!(Hlc::new(0).next() > old);
    }
}
