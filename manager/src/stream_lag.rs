//! How far behind each node's event stream this manager may be: what the
//! listeners that promise a staleness bound (the near cache, RESP client
//! tracking) share. A probe answered by a node names the node's latest
//! event then; once that event has been applied here, everything the node
//! published before the probe was sent has been seen.

use std::sync::OnceLock;
use std::time::Duration;

// With the `shuttle` feature the locks and atomics are shuttle's, whose
// scheduler explores their interleavings (the near cache's `schedules` tests).
#[cfg(feature = "shuttle")]
use shuttle::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex, MutexGuard,
};
#[cfg(not(feature = "shuttle"))]
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex, MutexGuard,
};

use tokio::time::Instant;

/// `applied` value meaning "no live stream".
pub const NO_STREAM: u64 = u64::MAX;

/// Node indices per segment of [`StreamLags`].
const SEGMENT: usize = 64;

/// A probe answered by a node: the node's seq when it handled it, and when
/// it was sent.
type Probe = (u64, Instant);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What is known of one node's event stream.
pub struct StreamLag {
    /// Sequence number of the last event applied, or `NO_STREAM`.
    applied: AtomicU64,
    /// The latest probe not yet covered by applied events.
    probe: Mutex<Option<Probe>>,
    /// Every event the node published before this instant has been applied
    /// (microseconds since the table's epoch; 0: never).
    fresh: AtomicU64,
}

impl StreamLag {
    fn new() -> Self {
        Self {
            applied: AtomicU64::new(NO_STREAM),
            probe: Mutex::new(None),
            fresh: AtomicU64::new(0),
        }
    }

    /// The last event applied, or [`NO_STREAM`].
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }
}

/// [`StreamLag`] per node index, in segments allocated on first use: a
/// manager that sees many nodes join over its life pays only for those.
pub struct StreamLags {
    nodes: Box<[OnceLock<Box<[StreamLag]>>]>,
    epoch: Instant,
}

impl StreamLags {
    /// `nodes`: node indices beyond it are never tracked (never fresh).
    pub fn new(nodes: usize) -> Self {
        Self {
            nodes: (0..nodes.div_ceil(SEGMENT))
                .map(|_| OnceLock::new())
                .collect(),
            epoch: Instant::now(),
        }
    }

    pub fn node(&self, index: usize) -> Option<&StreamLag> {
        let segment = self.nodes.get(index / SEGMENT)?;
        let slots = segment.get_or_init(|| (0..SEGMENT).map(|_| StreamLag::new()).collect());
        slots.get(index % SEGMENT)
    }

    fn micros(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_micros() as u64 + 1
    }

    /// Event `seq` of `node` is applied (call before acting on it).
    pub fn apply(&self, node: usize, seq: u64) {
        let Some(n) = self.node(node) else { return };
        n.applied.store(seq, Ordering::SeqCst);
        let mut p = lock(&n.probe);
        if let Some((probe_seq, sent)) = *p {
            if seq >= probe_seq {
                n.fresh.fetch_max(self.micros(sent), Ordering::SeqCst);
                *p = None;
            }
        }
    }

    /// Node `node` handled a probe sent at `sent` when its latest event was
    /// `seq`.
    pub fn probed(&self, node: usize, seq: u64, sent: Instant) {
        let Some(n) = self.node(node) else { return };
        let mut p = lock(&n.probe);
        let a = n.applied.load(Ordering::SeqCst);
        if a != NO_STREAM && a >= seq {
            n.fresh.fetch_max(self.micros(sent), Ordering::SeqCst);
            *p = None;
        } else {
            *p = Some((seq, sent));
        }
    }

    /// The node's stream ended: nothing is known of it any more.
    pub fn reset(&self, node: usize) {
        if let Some(n) = self.node(node) {
            n.applied.store(NO_STREAM, Ordering::SeqCst);
            *lock(&n.probe) = None;
            n.fresh.store(0, Ordering::SeqCst);
        }
    }

    /// Whether every event `node` published up to `lag` ago has been applied.
    pub fn fresh(&self, node: usize, lag: Duration) -> bool {
        let Some(n) = self.node(node) else {
            return false;
        };
        let f = n.fresh.load(Ordering::SeqCst);
        f > 0 && self.micros(Instant::now()) <= f + lag.as_micros() as u64
    }
}
