//! The manager's optional near cache: hot values kept in the manager's own
//! memory, invalidated by the data nodes' events.
//!
//! Staleness is bounded by event propagation, and a fill can never undo an
//! invalidation: a value read from node `n` at node sequence `s` is only
//! cached if this manager has not yet applied any event of `n` after `s`,
//! checked under the same lock the invalidation takes. Any later change to
//! the key then arrives as an event and removes it. When a node's stream
//! breaks, has a gap or lags, everything it served is dropped and nothing
//! from it is cached until a new stream starts.

use std::sync::Arc;
use std::time::Duration;

// With the `shuttle` feature the locks and atomics are shuttle's, whose
// scheduler explores their interleavings (the `schedules` tests).
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

use lru::LruCache;
use ringcache_proto::pb;
use tokio::time::Instant;

use crate::client::Found;
use crate::listener::EventListener;
use crate::stream_lag::StreamLags;

/// Bytes charged per entry besides key and value.
const ENTRY_OVERHEAD: u64 = 96;
const SHARDS: usize = 16;

struct Entry {
    value: Found,
    node: usize,
    expires: Option<Instant>,
}

struct Shard {
    lru: LruCache<Arc<str>, Entry, foldhash::fast::RandomState>,
    used: u64,
    limit: u64,
    /// Raised by every invalidation: a fill whose read started before it
    /// is refused (a write through this manager may have been acknowledged
    /// before its node event arrived).
    generation: u64,
}

impl Shard {
    fn remove(&mut self, key: &str) {
        if let Some((k, e)) = self.lru.pop_entry(key) {
            self.used -= size(&k, &e.value.value);
        }
    }
}

fn size(key: &str, value: &[u8]) -> u64 {
    key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A byte-bounded LRU of values read through this manager.
pub struct NearCache {
    shards: Box<[Mutex<Shard>]>,
    /// How far behind each node's event stream is.
    lags: StreamLags,
    /// Staleness bound: values from a node are served only while this
    /// manager has applied every event the node published up to at most
    /// this long ago (`--near-cache-max-lag`). None: unbounded.
    max_lag: Option<Duration>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl NearCache {
    /// `nodes`: node indices beyond it are never cached from.
    pub fn new(capacity: u64, nodes: usize) -> Self {
        let limit = (capacity / SHARDS as u64).max(1);
        Self {
            shards:
                (0..SHARDS)
                    .map(|_| {
                        Mutex::new(Shard {
                            lru: LruCache::unbounded_with_hasher(
                                foldhash::fast::RandomState::default(),
                            ),
                            used: 0,
                            limit,
                            generation: 0,
                        })
                    })
                    .collect(),
            lags: StreamLags::new(nodes),
            max_lag: None,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Serves a node's values only while its event stream is known to be
    /// at most `lag` behind (see [`NearCache::probed`]).
    pub fn with_max_lag(mut self, lag: Duration) -> Self {
        self.max_lag = Some(lag);
        self
    }

    /// Whether values from `node` may be served now.
    fn servable(&self, node: usize) -> bool {
        match self.max_lag {
            None => true,
            Some(lag) => self.lags.fresh(node, lag),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        let h = crate::ring::key_hash(key);
        &self.shards[(h as usize) % SHARDS]
    }

    pub fn get(&self, key: &str) -> Option<Found> {
        let mut shard = lock(self.shard(key));
        let found = match shard.lru.get(key) {
            // Kept but not served while its node's stream may be behind:
            // the invalidation of this very value may be on its way.
            Some(e) if !self.servable(e.node) => None,
            Some(e) if e.expires.is_none_or(|t| t > Instant::now()) => Some(e.value.clone()),
            Some(_) => {
                shard.remove(key);
                None
            }
            None => None,
        };
        drop(shard);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// The invalidation generation of `key`'s shard: take it before reading
    /// from a node and hand it to [`NearCache::fill`].
    pub fn generation(&self, key: &str) -> u64 {
        lock(self.shard(key)).generation
    }

    /// Caches `value`, read from `node` when its sequence was `seq`, unless
    /// an event after `seq` has already been applied (it may have been the
    /// invalidation of this very value) or the key's shard was invalidated
    /// since `generation` was taken.
    pub fn fill(
        &self,
        key: &str,
        value: Found,
        node: usize,
        seq: u64,
        ttl: Option<Duration>,
        generation: u64,
    ) {
        let entry_size = size(key, &value.value);
        let mut shard = lock(self.shard(key));
        if entry_size > shard.limit || shard.generation != generation {
            return;
        }
        let Some(n) = self.lags.node(node) else {
            return;
        };
        // Checked under the shard lock, which the invalidation also takes
        // after raising `applied`: see the module docs.
        if n.applied() > seq {
            return;
        }
        shard.remove(key);
        shard.used += entry_size;
        let expires = ttl.map(|t| Instant::now() + t);
        shard.lru.put(
            Arc::from(key),
            Entry {
                value,
                node,
                expires,
            },
        );
        while shard.used > shard.limit {
            let Some((k, e)) = shard.lru.pop_lru() else {
                break;
            };
            shard.used -= size(&k, &e.value.value);
        }
    }

    /// Drops `key` (after a write through this manager, or its event).
    pub fn invalidate(&self, key: &str) {
        let mut shard = lock(self.shard(key));
        shard.remove(key);
        shard.generation += 1;
    }

    /// Drops everything (fills racing with it are refused).
    pub fn clear(&self) {
        for s in self.shards.iter() {
            let mut shard = lock(s);
            shard.generation += 1;
            shard.lru.clear();
            shard.used = 0;
        }
    }

    fn clear_node(&self, node: usize) {
        for s in self.shards.iter() {
            let mut shard = lock(s);
            shard.generation += 1;
            let doomed: Vec<Arc<str>> = shard
                .lru
                .iter()
                .filter(|(_, e)| e.node == node)
                .map(|(k, _)| k.clone())
                .collect();
            for k in doomed {
                shard.remove(&k);
            }
        }
    }

    pub fn stats(&self) -> (u64, u64, u64, u64) {
        let (mut items, mut bytes) = (0, 0);
        for s in self.shards.iter() {
            let shard = lock(s);
            items += shard.lru.len() as u64;
            bytes += shard.used;
        }
        (
            items,
            bytes,
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

impl EventListener for NearCache {
    fn probed(&self, node: usize, seq: u64, sent: Instant) {
        self.lags.probed(node, seq, sent);
    }

    fn on_event(&self, node: usize, event: &pb::Event) {
        if self.lags.node(node).is_none() {
            return;
        }
        // Raise `applied` first, then remove under the lock: a concurrent
        // fill either sees the new sequence and skips, or inserted before we
        // take the lock and is removed here.
        self.lags.apply(node, event.seq);
        if let Some(pb::event::Kind::Invalidation(inv)) = &event.kind {
            if inv.cause == pb::Cause::Flush as i32 {
                self.clear_node(node);
            } else {
                // Another replica may have served the cached copy; any
                // change to the key on any node drops it.
                self.invalidate(&inv.key);
            }
        }
    }

    fn on_reset(&self, node: usize) {
        self.lags.reset(node);
        self.clear_node(node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, kind: pb::event::Kind) -> pb::Event {
        pb::Event {
            seq,
            node_id: "n".into(),
            instance_id: "i".into(),
            kind: Some(kind),
        }
    }

    fn inval(seq: u64, key: &str, cause: pb::Cause) -> pb::Event {
        ev(
            seq,
            pb::event::Kind::Invalidation(pb::Invalidation {
                key: key.into(),
                cause: cause as i32,
            }),
        )
    }

    fn status(seq: u64) -> pb::Event {
        ev(seq, pb::event::Kind::Status(pb::Status { stats: None }))
    }

    fn v(s: &str) -> Found {
        Found {
            value: bytes::Bytes::copy_from_slice(s.as_bytes()),
            version: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn values_are_not_served_from_a_node_whose_stream_may_be_behind() {
        let c = NearCache::new(1 << 20, 1).with_max_lag(Duration::from_millis(250));
        c.on_event(0, &status(10));
        c.fill("k", v("1"), 0, 10, None, c.generation("k"));
        // No probe answered yet: nothing is known about the stream's lag.
        assert_eq!(c.get("k"), None);
        // A probe the node handled at seq 12; events up to 12 not applied.
        let sent = Instant::now();
        c.probed(0, 12, sent);
        assert_eq!(c.get("k"), None, "events 11-12 may invalidate k");
        c.on_event(0, &status(11));
        assert_eq!(c.get("k"), None);
        c.on_event(0, &status(12));
        assert_eq!(c.get("k"), Some(v("1")));
        // Fresh as of the probe's send time: served for max_lag after it.
        tokio::time::advance(Duration::from_millis(240)).await;
        assert_eq!(c.get("k"), Some(v("1")));
        tokio::time::advance(Duration::from_millis(20)).await;
        assert_eq!(c.get("k"), None, "no probe for 260 ms: the stream may lag");
        // A probe already covered by applied events makes it fresh at once.
        c.probed(0, 12, Instant::now());
        assert_eq!(c.get("k"), Some(v("1")));
        // A reset forgets freshness.
        c.on_reset(0);
        c.on_event(0, &status(1));
        c.fill("k", v("2"), 0, 1, None, c.generation("k"));
        assert_eq!(c.get("k"), None);
    }

    #[test]
    fn nothing_is_cached_before_a_stream_starts() {
        let c = NearCache::new(1 << 20, 2);
        c.fill("k", v("v"), 0, 5, None, c.generation("k"));
        assert_eq!(c.get("k"), None);
        c.on_event(0, &status(5));
        c.fill("k", v("v"), 0, 5, None, c.generation("k"));
        assert_eq!(c.get("k"), Some(v("v")));
    }

    /// Issue 20: with 1,024 node slots, a manager stopped caching from the
    /// nodes that joined after 1,024 handles (one per join, kept when a
    /// node leaves).
    #[test]
    fn nodes_that_joined_after_a_thousand_others_are_cached_from() {
        let c = NearCache::new(1 << 20, crate::server::NEAR_CACHE_NODES);
        for node in [0, 1500, 20_000] {
            let key = format!("k{node}");
            c.on_event(node, &status(5));
            c.fill(&key, v("v"), node, 5, None, c.generation(&key));
            assert_eq!(c.get(&key), Some(v("v")), "node {node}");
        }
        // Beyond the slots: never cached from, and no panic.
        let beyond = crate::server::NEAR_CACHE_NODES;
        c.on_event(beyond, &status(5));
        c.fill("kx", v("v"), beyond, 5, None, c.generation("kx"));
        assert_eq!(c.get("kx"), None);
    }

    #[test]
    fn an_invalidation_removes_the_key() {
        let c = NearCache::new(1 << 20, 2);
        c.on_event(1, &status(10));
        c.fill("k", v("old"), 1, 10, None, c.generation("k"));
        c.on_event(1, &inval(11, "k", pb::Cause::Set));
        assert_eq!(c.get("k"), None);
    }

    #[test]
    fn a_fill_older_than_an_applied_event_is_refused() {
        let c = NearCache::new(1 << 20, 1);
        c.on_event(0, &status(10));
        // The read happened at seq 10; the invalidation (seq 11) was applied
        // before the read's answer came back.
        c.on_event(0, &inval(11, "k", pb::Cause::Delete));
        c.fill("k", v("stale"), 0, 10, None, c.generation("k"));
        assert_eq!(c.get("k"), None);
        c.fill("k", v("fresh"), 0, 11, None, c.generation("k"));
        assert_eq!(c.get("k"), Some(v("fresh")));
    }

    #[test]
    fn a_fill_that_started_before_a_local_write_is_refused() {
        let c = NearCache::new(1 << 20, 1);
        c.on_event(0, &status(10));
        // A read of "k" starts; a write of "k" through this manager is
        // acknowledged (invalidate) before the node's event arrives; then
        // the read's answer comes back and tries to fill.
        let generation = c.generation("k");
        c.invalidate("k");
        c.fill("k", v("old"), 0, 10, None, generation);
        assert_eq!(c.get("k"), None);
        // A read that starts after the write may fill.
        c.fill("k", v("new"), 0, 10, None, c.generation("k"));
        assert_eq!(c.get("k"), Some(v("new")));
    }

    #[test]
    fn a_gap_or_lag_drops_everything_that_node_served() {
        let c = NearCache::new(1 << 20, 2);
        c.on_event(0, &status(1));
        c.on_event(1, &status(1));
        c.fill("a", v("1"), 0, 1, None, c.generation("a"));
        c.fill("b", v("2"), 1, 1, None, c.generation("b"));
        // Membership calls on_reset on a sequence gap, a Lagged event, or a
        // broken stream.
        c.on_reset(0);
        assert_eq!(c.get("a"), None);
        assert_eq!(c.get("b"), Some(v("2")));
        // And nothing from node 0 is cached until its stream restarts.
        c.fill("a", v("1"), 0, 1, None, c.generation("a"));
        assert_eq!(c.get("a"), None);
    }

    #[test]
    fn a_flush_event_clears_that_node() {
        let c = NearCache::new(1 << 20, 2);
        c.on_event(0, &status(1));
        c.fill("a", v("1"), 0, 1, None, c.generation("a"));
        c.on_event(0, &inval(2, "", pb::Cause::Flush));
        assert_eq!(c.get("a"), None);
    }

    #[test]
    fn bytes_are_bounded_and_ttl_honoured() {
        let c = NearCache::new(16 * 200, 1);
        c.on_event(0, &status(1));
        for i in 0..1000 {
            c.fill(
                &format!("k{i}"),
                v("xxxxxxxxxx"),
                0,
                1,
                None,
                c.generation(&format!("k{i}")),
            );
        }
        let (items, bytes, _, _) = c.stats();
        assert!(bytes <= 16 * 200, "{bytes}");
        assert!(items > 0 && items < 1000);
        c.fill("t", v("x"), 0, 1, Some(Duration::ZERO), c.generation("t"));
        assert_eq!(c.get("t"), None);
    }
}

/// Interleavings of the near cache's races explored by shuttle's scheduler
/// (run with `--features shuttle`; the plain tests above run without it).
#[cfg(all(test, feature = "shuttle"))]
mod schedules {
    use super::*;
    use shuttle::sync::Arc;
    use shuttle::thread;

    const ITERATIONS: usize = 2000;

    fn invalidation(seq: u64, key: &str) -> pb::Event {
        pb::Event {
            seq,
            node_id: "n".into(),
            instance_id: String::new(),
            kind: Some(pb::event::Kind::Invalidation(pb::Invalidation {
                key: key.into(),
                cause: pb::Cause::Set as i32,
            })),
        }
    }

    fn status(seq: u64) -> pb::Event {
        pb::Event {
            seq,
            node_id: "n".into(),
            instance_id: "i".into(),
            kind: Some(pb::event::Kind::Status(pb::Status { stats: None })),
        }
    }

    /// Races a fill of "k" (read at seq 10 from node 0, generation taken
    /// before the read) against `other`, in shuttle's schedules; after both,
    /// the value must not be served.
    fn race_a_fill_against(other: fn(&NearCache)) {
        shuttle::check_random(
            move || {
                let near = Arc::new(NearCache::new(1 << 20, 2));
                near.on_event(0, &status(10));
                let generation = near.generation("k");
                let filler = {
                    let near = near.clone();
                    thread::spawn(move || {
                        let old = Found {
                            value: bytes::Bytes::from_static(b"old"),
                            version: 1,
                        };
                        near.fill("k", old, 0, 10, None, generation)
                    })
                };
                let racer = {
                    let near = near.clone();
                    thread::spawn(move || other(&near))
                };
                filler.join().unwrap();
                racer.join().unwrap();
                assert_eq!(near.get("k"), None);
            },
            ITERATIONS,
        );
    }

    /// The node's invalidation 11 of the key (a write through another
    /// manager) follows the read: the stale value is not left cached.
    #[test]
    fn a_fill_never_outlives_the_invalidation_that_follows_its_read() {
        race_a_fill_against(|near| near.on_event(0, &invalidation(11, "k")));
    }

    /// A write through this manager drops the key locally before its node
    /// event arrives: the fill, whose read started before it, is refused.
    #[test]
    fn a_fill_never_outlives_a_local_write_that_started_after_its_read() {
        race_a_fill_against(|near| near.invalidate("k"));
    }

    /// A stream reset (gap, lag, restart): nothing from that node survives.
    #[test]
    fn a_reset_leaves_nothing_from_that_node() {
        race_a_fill_against(|near| near.on_reset(0));
    }
}
