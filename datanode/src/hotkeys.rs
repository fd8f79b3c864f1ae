//! The keys taking most of this node's requests (issue 24): an approximate
//! top-K by request count over a sliding window, in bounded memory.
//!
//! One request in `sample` is counted (a thread-local generator decides, so
//! the hot path takes no lock and touches no shared cache line for the
//! others), into a space-saving sketch (Metwally, Agrawal, El Abbadi 2005)
//! of [`CAPACITY`] counters: a key not tracked replaces the smallest
//! counter and inherits its count as its error bound, so every key whose
//! true count exceeds total / CAPACITY is tracked, and each count is over
//! by at most its error. Two windows, the current and the previous one,
//! make the window slide: estimates cover the previous window plus what has
//! passed of the current one.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counters per window: keys above 1/64 of the sampled traffic are never
/// missed; memory stays at 64 keys per window whatever the key space.
pub const CAPACITY: usize = 64;

/// One tracked key.
#[derive(Debug, Clone, Copy, Default)]
struct Counter {
    count: u64,
    /// Count inherited from the key it replaced: the true count is at least
    /// `count - error`.
    error: u64,
}

/// A space-saving sketch.
#[derive(Debug, Default)]
struct Sketch {
    counters: HashMap<Box<str>, Counter>,
    /// Sampled requests counted in this window.
    total: u64,
}

impl Sketch {
    fn record(&mut self, key: &str) {
        self.total += 1;
        if let Some(c) = self.counters.get_mut(key) {
            c.count += 1;
            return;
        }
        if self.counters.len() < CAPACITY {
            self.counters
                .insert(key.into(), Counter { count: 1, error: 0 });
            return;
        }
        // O(CAPACITY) per new key, on sampled requests only.
        let Some((victim, min)) = self
            .counters
            .iter()
            .min_by_key(|(_, c)| c.count)
            .map(|(k, c)| (k.clone(), c.count))
        else {
            return;
        };
        self.counters.remove(&victim);
        self.counters.insert(
            key.into(),
            Counter {
                count: min + 1,
                error: min,
            },
        );
    }
}

/// A hot key as reported: its estimated request rate and share of the
/// node's requests.
#[derive(Debug, Clone, PartialEq)]
pub struct HotKey {
    pub key: String,
    /// Requests per second, estimated (the sample scaled up).
    pub rate: u64,
    /// Of this node's requests in the same time, 0 to 1.
    pub share: f64,
}

struct Windows {
    current: Sketch,
    previous: Sketch,
    /// When the current window began.
    started: Instant,
    /// Length of the previous window (zero before the first rotation).
    previous_len: Duration,
}

/// The node's hot-key tracker.
pub struct HotKeys {
    sample: u64,
    window: Duration,
    /// Share of a window's requests above which a key is logged.
    log_share: f64,
    windows: Mutex<Windows>,
}

thread_local! {
    /// xorshift64 state per thread: sampling costs no shared write.
    // Seeded from this thread's stack address: threads differ, and any
    // non-zero seed will do.
    static RNG: Cell<u64> = Cell::new({
        let here = 0u8;
        (std::ptr::addr_of!(here) as u64).rotate_left(17) | 1
    });
}

fn next_random() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        x
    })
}

fn lock(m: &Mutex<Windows>) -> std::sync::MutexGuard<'_, Windows> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HotKeys {
    /// Counts one request in `sample` (at least 1: every request) over
    /// windows of `window`; logs keys above `log_share` of a window.
    pub fn new(sample: u64, window: Duration, log_share: f64) -> Self {
        Self {
            sample: sample.max(1),
            window: window.max(Duration::from_millis(100)),
            log_share,
            windows: Mutex::new(Windows {
                current: Sketch::default(),
                previous: Sketch::default(),
                started: Instant::now(),
                previous_len: Duration::ZERO,
            }),
        }
    }

    /// One request for `key`.
    pub fn record(&self, key: &str) {
        if self.sample > 1 && !next_random().is_multiple_of(self.sample) {
            return;
        }
        let mut w = lock(&self.windows);
        self.rotate(&mut w, Instant::now());
        w.current.record(key);
    }

    fn rotate(&self, w: &mut Windows, now: Instant) {
        let elapsed = now.saturating_duration_since(w.started);
        if elapsed < self.window {
            return;
        }
        w.previous = std::mem::take(&mut w.current);
        // A window with no request at all for longer than two windows is
        // history: nothing from before it stays.
        if elapsed >= self.window * 2 {
            w.previous = Sketch::default();
        }
        w.previous_len = elapsed.min(self.window * 2);
        w.started = now;
        self.log_hot(&w.previous, w.previous_len);
    }

    /// Logs, once per window, the keys above the logging share.
    fn log_hot(&self, sketch: &Sketch, len: Duration) {
        if sketch.total == 0 || self.log_share <= 0.0 {
            return;
        }
        for (key, c) in &sketch.counters {
            // The lower bound, so that a key is never logged by its error.
            let share = c.count.saturating_sub(c.error) as f64 / sketch.total as f64;
            if share >= self.log_share {
                let rate = (c.count * self.sample) as f64 / len.as_secs_f64().max(0.001);
                tracing::warn!(key = %key, share = format!("{:.2}", share), rate = rate as u64,
                    window = ?len, "hot key: a large share of this node's requests");
            }
        }
    }

    /// The `n` hottest keys over the previous window and the current one
    /// so far, hottest first.
    pub fn top(&self, n: usize) -> Vec<HotKey> {
        self.top_at(n, Instant::now())
    }

    fn top_at(&self, n: usize, now: Instant) -> Vec<HotKey> {
        let mut w = lock(&self.windows);
        self.rotate(&mut w, now);
        let span = w.previous_len + now.saturating_duration_since(w.started);
        let total = w.previous.total + w.current.total;
        if total == 0 {
            return Vec::new();
        }
        let mut merged: HashMap<&str, u64> = HashMap::new();
        for sketch in [&w.previous, &w.current] {
            for (k, c) in &sketch.counters {
                *merged.entry(k).or_default() += c.count;
            }
        }
        let mut keys: Vec<(&str, u64)> = merged.into_iter().collect();
        keys.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let secs = span.as_secs_f64().max(0.001);
        keys.into_iter()
            .take(n)
            .map(|(key, count)| HotKey {
                key: key.to_string(),
                rate: ((count * self.sample) as f64 / secs) as u64,
                share: (count as f64 / total as f64).min(1.0),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heavy_hitter_among_many_keys_is_found_in_bounded_memory() {
        let h = HotKeys::new(1, Duration::from_secs(60), 0.0);
        // 100k requests: 30% to "hot", 10% to "warm", the rest spread over
        // 20k keys (each far below 1/64 of the traffic).
        let mut x = 1u64;
        for i in 0..100_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = match i % 10 {
                0..=2 => "hot".to_string(),
                3 => "warm".to_string(),
                _ => format!("k{}", (x >> 33) % 20_000),
            };
            h.record(&key);
        }
        assert!(lock(&h.windows).current.counters.len() <= CAPACITY);
        let top = h.top(2);
        assert_eq!(top[0].key, "hot");
        assert_eq!(top[1].key, "warm");
        // Over-estimates by at most the smallest counter, which is small
        // next to 30%.
        assert!((0.29..0.33).contains(&top[0].share), "{top:?}");
        assert!((0.09..0.13).contains(&top[1].share), "{top:?}");
    }

    #[test]
    fn the_window_slides_and_an_idle_stretch_forgets() {
        let h = HotKeys::new(1, Duration::from_secs(10), 0.0);
        let t0 = lock(&h.windows).started;
        for _ in 0..100 {
            h.record("a");
        }
        // Rotated at 10 s: "a" is in the previous window, still reported.
        let top = h.top_at(5, t0 + Duration::from_secs(11));
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].key, "a");
        assert!((8..=10).contains(&top[0].rate), "{top:?}");
        // Two windows later with nothing in between: gone.
        assert!(h.top_at(5, t0 + Duration::from_secs(35)).is_empty());
    }

    #[test]
    fn sampling_counts_about_one_request_in_n_and_scales_the_rate_back() {
        let h = HotKeys::new(16, Duration::from_secs(60), 0.0);
        for _ in 0..160_000 {
            h.record("k");
        }
        let counted = lock(&h.windows).current.total;
        assert!((8_000..12_000).contains(&counted), "{counted}");
        assert_eq!(h.top(1)[0].share, 1.0);
    }
}
