//! The in-memory store: shards of a compact LRU map ([`CompactLru`]), each
//! behind its own mutex and chosen by a hash of the key, so concurrent
//! requests for different keys rarely meet on a lock.
//!
//! Capacity is counted in bytes (key + value + a fixed per-entry overhead,
//! [`ENTRY_OVERHEAD`]) and optionally in entries; each shard holds an equal
//! slice of both limits and evicts its least recently used entries to stay
//! inside them. Entries with a TTL are also indexed by expiry time, so the
//! sweeper removes expired entries without scanning the whole shard.
//!
//! Every change (set, delete, eviction, expiry, flush) is published on the
//! [`EventBus`] while the shard lock is held, so the events for one key are
//! numbered in the order the changes happened.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::compact_lru::{CompactLru, Item};
use crate::events::{lock, Cause, EventBus, EventKind};

/// Bytes charged per entry on top of its key and value, so that the limit
/// tracks real memory: the entry's allocation header (reference counts,
/// expiry, key length: 26 bytes) and the allocator's rounding, the 24-byte
/// list node and the index slot (with their tables' spare capacity). RSS
/// per item measured by `bench/run.sh` (1M items of 10 + 100 bytes) should
/// stay at or below this.
pub const ENTRY_OVERHEAD: u64 = 80;

/// Sizes of a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Upper bound of accounted bytes (keys + values + overhead).
    pub max_memory: u64,
    /// Optional upper bound of entries.
    pub max_items: Option<u64>,
    /// Number of independently locked shards.
    pub shards: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_memory: 256 * 1024 * 1024,
            max_items: None,
            shards: 64,
        }
    }
}

/// Errors the store reports to callers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("entry of {size} bytes exceeds the per-shard memory limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("key of {len} bytes is longer than 65535 bytes")]
    KeyTooLong { len: usize },
    #[error("write fenced with epoch {got}, older than the node's epoch {current}")]
    StaleEpoch { got: u64, current: u64 },
}

/// A value found by [`Store::get`].
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    pub value: Bytes,
    /// Time left before the entry expires, if it has a TTL.
    pub ttl_remaining: Option<Duration>,
    /// Latest event sequence number when the value was read: any later change
    /// to the key is published with a larger number.
    pub seq: u64,
}

/// Counters and gauges of a store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub items: u64,
    pub bytes_used: u64,
    pub memory_limit: u64,
    pub max_items: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub ops: u64,
}

/// Handle to a shared store; cloning it is cheap.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    events: EventBus,
    memory_limit: u64,
    max_items: u64,
    counters: Counters,
    /// Flush epoch: raised by every flush while all shard locks are held, and
    /// checked by fenced writes under their shard lock, so a write is either
    /// ordered before a flush or refused.
    epoch: AtomicU64,
    /// Expiry times are milliseconds since this instant (0: no expiry).
    clock_start: Instant,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    expirations: AtomicU64,
    ops: AtomicU64,
}

struct Shard {
    lru: CompactLru,
    /// (expiry in store ms, slot) of every entry with a TTL.
    expiries: BTreeSet<(u64, u32)>,
    used: u64,
    byte_limit: u64,
    item_limit: u64,
}

/// A new instance starts its flush epochs at the wall clock in nanoseconds,
/// above any epoch an earlier instance reached (it would take a flush per
/// nanosecond to catch up), so a write fenced for an earlier instance can
/// never pass as current on this one.
fn first_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        .max(1)
}

fn entry_size(key: &str, value: &[u8]) -> u64 {
    key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD
}

fn item_size(item: &Item) -> u64 {
    item.key().len() as u64 + item.value().len() as u64 + ENTRY_OVERHEAD
}

fn is_expired(item: &Item, now_ms: u64) -> bool {
    let at = item.expires();
    at != 0 && at <= now_ms
}

/// Keys are stored as bytes but always come from `&str`.
fn key_str(item: &Item) -> Arc<str> {
    Arc::from(String::from_utf8_lossy(item.key()))
}

impl Shard {
    /// Forgets the accounting and expiry slot of an entry just removed.
    fn forget(&mut self, slot: u32, item: &Item) {
        self.used -= item_size(item);
        if item.expires() != 0 {
            self.expiries.remove(&(item.expires(), slot));
        }
    }

    fn remove(&mut self, key: &str) -> Option<Item> {
        let (slot, item) = self.lru.remove(key.as_bytes())?;
        self.forget(slot, &item);
        Some(item)
    }
}

impl Store {
    /// A store publishing its changes on `events`.
    pub fn new(config: &StoreConfig, events: EventBus) -> Self {
        let shards = config.shards.max(1);
        let n = shards as u64;
        // Split the limits evenly; round the item limit up so a small limit
        // still admits at least one entry per shard.
        let byte_limit = (config.max_memory / n).max(1);
        let item_limit = config
            .max_items
            .map(|m| m.div_ceil(n).max(1))
            .unwrap_or(u64::MAX);
        let shards = (0..shards)
            .map(|_| {
                Mutex::new(Shard {
                    lru: CompactLru::default(),
                    expiries: BTreeSet::new(),
                    used: 0,
                    byte_limit,
                    item_limit,
                })
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                shards,
                events,
                memory_limit: config.max_memory,
                max_items: config.max_items.unwrap_or(0),
                counters: Counters::default(),
                epoch: AtomicU64::new(first_epoch()),
                clock_start: Instant::now(),
            }),
        }
    }

    /// The bus this store publishes on.
    pub fn events(&self) -> &EventBus {
        &self.inner.events
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        let h = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
        // Multiply-shift maps the hash onto the shard count without the bias
        // or the division of a modulo.
        let i = ((h as u128 * self.inner.shards.len() as u128) >> 64) as usize;
        &self.inner.shards[i]
    }

    fn publish(&self, key: Arc<str>, cause: Cause) -> u64 {
        self.inner
            .events
            .publish(EventKind::Invalidation { key, cause })
    }

    /// Milliseconds on the store's clock, never 0.
    fn now_ms(&self) -> u64 {
        let since = Instant::now().saturating_duration_since(self.inner.clock_start);
        since.as_millis() as u64 + 1
    }

    /// Looks `key` up and marks it most recently used. An expired entry is
    /// removed and reported as absent.
    pub fn get(&self, key: &str) -> Option<Lookup> {
        let c = &self.inner.counters;
        c.ops.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let mut shard = lock(self.shard(key));
        let found = match shard.lru.get(key.as_bytes()) {
            Some((_, item)) if !is_expired(item, now) => Some(Lookup {
                value: item.value_bytes(),
                ttl_remaining: (item.expires() != 0)
                    .then(|| Duration::from_millis(item.expires() - now)),
                seq: self.inner.events.last_seq(),
            }),
            Some(_) => {
                if let Some(item) = shard.remove(key) {
                    c.expirations.fetch_add(1, Ordering::Relaxed);
                    self.publish(key_str(&item), Cause::Expired);
                }
                None
            }
            None => None,
        };
        drop(shard);
        match found {
            Some(_) => c.hits.fetch_add(1, Ordering::Relaxed),
            None => c.misses.fetch_add(1, Ordering::Relaxed),
        };
        found
    }

    /// The current flush epoch.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Acquire)
    }

    /// Refuses a write fenced with an epoch older than the current one.
    /// Called with the key's shard lock held.
    fn check_fence(&self, fence: u64) -> Result<(), StoreError> {
        let current = self.epoch();
        if fence != 0 && fence < current {
            return Err(StoreError::StaleEpoch {
                got: fence,
                current,
            });
        }
        Ok(())
    }

    /// Inserts or replaces `key`. Returns whether a live value was replaced.
    /// Least recently used entries of the key's shard are evicted to make room.
    pub fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool, StoreError> {
        self.set_fenced(key, value, ttl, 0)
    }

    /// [`Store::set`] refused when `fence` (unless 0) is older than the epoch.
    pub fn set_fenced(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        fence: u64,
    ) -> Result<bool, StoreError> {
        self.inner.counters.ops.fetch_add(1, Ordering::Relaxed);
        // Entries store the key length in 16 bits.
        if key.len() > crate::config::MAX_KEY_LIMIT {
            return Err(StoreError::KeyTooLong { len: key.len() });
        }
        let size = entry_size(key, value);
        let mut shard = lock(self.shard(key));
        self.check_fence(fence)?;
        if size > shard.byte_limit {
            return Err(StoreError::TooLarge {
                size,
                limit: shard.byte_limit,
            });
        }
        let now = self.now_ms();
        let replaced = match shard.remove(key) {
            Some(old) => !is_expired(&old, now),
            None => false,
        };
        let expires = ttl.map_or(0, |t| now.saturating_add((t.as_millis() as u64).max(1)));
        // One allocation of exactly the entry's size: a value sliced out of a
        // request buffer would pin the whole buffer.
        let (slot, _) = shard.lru.insert(Item::new(key.as_bytes(), value, expires));
        if expires != 0 {
            shard.expiries.insert((expires, slot));
        }
        shard.used += size;
        self.evict_over_limit(&mut shard, now);
        self.publish(Arc::from(key), Cause::Set);
        Ok(replaced)
    }

    fn evict_over_limit(&self, shard: &mut Shard, now: u64) {
        let c = &self.inner.counters;
        while shard.used > shard.byte_limit || shard.lru.len() as u64 > shard.item_limit {
            let Some((slot, item)) = shard.lru.pop_lru() else {
                break;
            };
            shard.forget(slot, &item);
            // An entry that had already expired leaves for that reason.
            if is_expired(&item, now) {
                c.expirations.fetch_add(1, Ordering::Relaxed);
                self.publish(key_str(&item), Cause::Expired);
            } else {
                c.evictions.fetch_add(1, Ordering::Relaxed);
                self.publish(key_str(&item), Cause::Evicted);
            }
        }
    }

    /// Removes `key`. Returns whether a live value was removed.
    pub fn delete(&self, key: &str) -> bool {
        matches!(self.delete_fenced(key, 0), Ok(true))
    }

    /// [`Store::delete`] refused when `fence` (unless 0) is older than the epoch.
    pub fn delete_fenced(&self, key: &str, fence: u64) -> Result<bool, StoreError> {
        self.inner.counters.ops.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let mut shard = lock(self.shard(key));
        self.check_fence(fence)?;
        Ok(match shard.remove(key) {
            Some(item) => {
                let live = !is_expired(&item, now);
                if !live {
                    self.inner
                        .counters
                        .expirations
                        .fetch_add(1, Ordering::Relaxed);
                }
                self.publish(
                    Arc::from(key),
                    if live { Cause::Delete } else { Cause::Expired },
                );
                live
            }
            None => false,
        })
    }

    /// Removes every entry and raises the epoch; returns how many entries
    /// there were and the new epoch. Publishes one `Flush` event after all
    /// shards are empty.
    pub fn flush(&self) -> (u64, u64) {
        self.inner.counters.ops.fetch_add(1, Ordering::Relaxed);
        // Hold every shard lock while clearing, so no write can land between
        // the clear and the event and be wrongly covered by it.
        let mut guards: Vec<_> = self.inner.shards.iter().map(|s| lock(s)).collect();
        let mut removed = 0;
        for shard in guards.iter_mut() {
            removed += shard.lru.len() as u64;
            shard.lru.clear();
            shard.expiries.clear();
            shard.used = 0;
        }
        let epoch = self.inner.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.publish(Arc::from(""), Cause::Flush);
        drop(guards);
        (removed, epoch)
    }

    /// Removes entries whose TTL has passed, at most `budget` per shard lock
    /// hold so that readers are never held up for long. Returns the count.
    pub fn purge_expired(&self, budget: usize) -> u64 {
        let budget = budget.max(1);
        let mut purged = 0;
        for s in self.inner.shards.iter() {
            loop {
                let now = self.now_ms();
                let mut shard = lock(s);
                let mut n = 0;
                while n < budget {
                    match shard.expiries.first() {
                        Some(&(at, _)) if at <= now => {}
                        _ => break,
                    }
                    let Some((_, slot)) = shard.expiries.pop_first() else {
                        break;
                    };
                    if let Some(item) = shard.lru.remove_slot(slot) {
                        shard.used -= item_size(&item);
                        self.publish(key_str(&item), Cause::Expired);
                        purged += 1;
                    }
                    n += 1;
                }
                drop(shard);
                if n < budget {
                    break;
                }
            }
        }
        self.inner
            .counters
            .expirations
            .fetch_add(purged, Ordering::Relaxed);
        purged
    }

    /// A snapshot of the counters and gauges.
    pub fn stats(&self) -> StoreStats {
        let (mut items, mut bytes_used) = (0, 0);
        for s in self.inner.shards.iter() {
            let shard = lock(s);
            items += shard.lru.len() as u64;
            bytes_used += shard.used;
        }
        let c = &self.inner.counters;
        StoreStats {
            items,
            bytes_used,
            memory_limit: self.inner.memory_limit,
            max_items: self.inner.max_items,
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            expirations: c.expirations.load(Ordering::Relaxed),
            ops: c.ops.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::NodeEvent;

    fn store(max_memory: u64, max_items: Option<u64>, shards: usize) -> Store {
        Store::new(
            &StoreConfig {
                max_memory,
                max_items,
                shards,
            },
            EventBus::new(1024),
        )
    }

    fn drain(rx: &mut tokio::sync::broadcast::Receiver<NodeEvent>) -> Vec<(String, Cause)> {
        let mut out = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            if let EventKind::Invalidation { key, cause } = ev.kind {
                out.push((key.to_string(), cause));
            }
        }
        out
    }

    #[tokio::test]
    async fn set_get_replace_delete() {
        let s = store(1 << 20, None, 4);
        assert_eq!(s.get("k"), None);
        assert_eq!(s.set("k", b"v1", None), Ok(false));
        assert_eq!(s.get("k").unwrap().value, Bytes::from_static(b"v1"));
        assert_eq!(s.set("k", b"v2", None), Ok(true));
        assert_eq!(s.get("k").unwrap().value, Bytes::from_static(b"v2"));
        assert!(s.delete("k"));
        assert!(!s.delete("k"));
        assert_eq!(s.get("k"), None);
        let st = s.stats();
        assert_eq!((st.items, st.bytes_used), (0, 0));
        assert_eq!((st.hits, st.misses), (2, 2));
    }

    #[tokio::test]
    async fn evicts_least_recently_used_first() {
        // One shard, room for exactly three entries of this size.
        let per = entry_size("k0", b"vv");
        let s = store(3 * per, None, 1);
        let (_, mut rx) = s.events().subscribe();
        for k in ["k0", "k1", "k2"] {
            s.set(k, b"vv", None).unwrap();
        }
        // Touch k0 so that k1 becomes the least recently used.
        assert!(s.get("k0").is_some());
        s.set("k3", b"vv", None).unwrap();
        assert!(s.get("k1").is_none(), "k1 was least recently used");
        for k in ["k0", "k2", "k3"] {
            assert!(s.get(k).is_some(), "{k} should survive");
        }
        let st = s.stats();
        assert_eq!(st.evictions, 1);
        assert_eq!(st.bytes_used, 3 * per);
        assert!(drain(&mut rx).contains(&("k1".to_string(), Cause::Evicted)));
    }

    #[tokio::test]
    async fn byte_bound_holds_with_values_of_mixed_sizes() {
        let limit = 64 * 1024;
        let s = store(limit, None, 4);
        for i in 0..2000u64 {
            let v = vec![b'x'; (i % 700) as usize];
            s.set(&format!("key-{i}"), &v, None).unwrap();
            assert!(s.stats().bytes_used <= limit);
        }
        let st = s.stats();
        assert!(st.evictions > 0);
        assert!(st.items > 0);
        // The newest entry is always kept.
        assert!(s.get("key-1999").is_some());
    }

    #[tokio::test]
    async fn entry_count_limit_holds() {
        let s = store(1 << 30, Some(10), 1);
        for i in 0..25 {
            s.set(&i.to_string(), b"v", None).unwrap();
        }
        assert_eq!(s.stats().items, 10);
        assert_eq!(s.stats().evictions, 15);
    }

    #[tokio::test]
    async fn keys_longer_than_the_stored_length_are_refused() {
        let s = store(1 << 30, None, 1);
        let long = "k".repeat(70_000);
        assert_eq!(
            s.set(&long, b"v", None),
            Err(StoreError::KeyTooLong { len: 70_000 })
        );
        assert_eq!(s.stats().items, 0);
        assert_eq!(s.stats().bytes_used, 0);
    }

    #[tokio::test]
    async fn oversized_entry_is_refused_and_changes_nothing() {
        let s = store(1024, None, 1);
        s.set("small", b"v", None).unwrap();
        let err = s.set("big", &[0u8; 2048], None).unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { .. }));
        assert!(s.get("small").is_some());
        assert_eq!(s.stats().items, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_hides_expired_entries() {
        let s = store(1 << 20, None, 2);
        s.set("short", b"v", Some(Duration::from_secs(5))).unwrap();
        s.set("forever", b"v", None).unwrap();
        let l = s.get("short").unwrap();
        assert_eq!(l.ttl_remaining, Some(Duration::from_secs(5)));
        tokio::time::advance(Duration::from_millis(4999)).await;
        assert!(s.get("short").is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(s.get("short").is_none());
        assert!(s.get("forever").is_some());
        assert_eq!(s.stats().expirations, 1);
        assert_eq!(s.stats().items, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn purge_frees_expired_entries_without_reads() {
        let s = store(1 << 20, None, 4);
        let (_, mut rx) = s.events().subscribe();
        for i in 0..100 {
            s.set(&format!("t{i}"), b"v", Some(Duration::from_secs(1)))
                .unwrap();
        }
        s.set("keep", b"v", Some(Duration::from_secs(60))).unwrap();
        drain(&mut rx);
        assert_eq!(s.purge_expired(7), 0);
        tokio::time::advance(Duration::from_secs(2)).await;
        // A small budget still purges everything, in several lock holds.
        assert_eq!(s.purge_expired(7), 100);
        let st = s.stats();
        assert_eq!(st.items, 1);
        assert_eq!(st.bytes_used, entry_size("keep", b"v"));
        let ev = drain(&mut rx);
        assert_eq!(ev.len(), 100);
        assert!(ev.iter().all(|(_, c)| *c == Cause::Expired));
    }

    #[tokio::test(start_paused = true)]
    async fn overwriting_drops_the_old_expiry() {
        let s = store(1 << 20, None, 1);
        s.set("k", b"v1", Some(Duration::from_secs(1))).unwrap();
        s.set("k", b"v2", None).unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(s.purge_expired(100), 0);
        assert_eq!(s.get("k").unwrap().value, Bytes::from_static(b"v2"));
    }

    #[tokio::test]
    async fn every_change_is_published_in_order() {
        let s = store(1 << 20, None, 8);
        let (start, mut rx) = s.events().subscribe();
        s.set("a", b"1", None).unwrap();
        s.set("b", b"2", None).unwrap();
        s.delete("a");
        s.delete("missing");
        let seq_before_flush = s.events().last_seq();
        let (removed, _) = s.flush();
        assert_eq!(removed, 1);
        let got: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        let seqs: Vec<_> = got.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (start + 1..=start + 4).collect::<Vec<_>>());
        assert_eq!(seq_before_flush, start + 3);
        let kinds: Vec<_> = got
            .into_iter()
            .map(|e| match e.kind {
                EventKind::Invalidation { key, cause } => (key.to_string(), cause),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("a".into(), Cause::Set),
                ("b".into(), Cause::Set),
                ("a".into(), Cause::Delete),
                ("".into(), Cause::Flush),
            ]
        );
        assert_eq!(s.stats().items, 0);
    }

    #[tokio::test]
    async fn writes_fenced_before_a_flush_are_refused() {
        let s = store(1 << 20, None, 2);
        let e1 = s.epoch();
        assert_eq!(s.set_fenced("k", b"v", None, e1), Ok(false));
        let (_, e2) = s.flush();
        assert_eq!(e2, e1 + 1);
        // A request issued before the flush, arriving after it.
        let stale = Err(StoreError::StaleEpoch {
            got: e1,
            current: e2,
        });
        assert_eq!(s.set_fenced("k", b"old", None, e1), stale);
        assert_eq!(s.delete_fenced("k", e1), stale);
        assert_eq!(s.get("k"), None);
        // Current and unfenced writes go through.
        assert_eq!(s.set_fenced("k", b"new", None, e2), Ok(false));
        assert_eq!(s.set_fenced("k", b"any", None, 0), Ok(true));
        assert_eq!(s.delete_fenced("k", e2), Ok(true));
    }

    #[tokio::test]
    async fn a_new_instance_starts_above_every_epoch_of_the_last_one() {
        let old = store(1 << 20, None, 1);
        for _ in 0..5 {
            old.flush();
        }
        let new = store(1 << 20, None, 1);
        assert!(
            new.epoch() > old.epoch(),
            "{} vs {}",
            new.epoch(),
            old.epoch()
        );
        assert!(new.set_fenced("k", b"v", None, old.epoch()).is_err());
    }

    #[tokio::test]
    async fn get_reports_a_sequence_no_later_change_can_undercut() {
        let s = store(1 << 20, None, 2);
        s.set("k", b"v", None).unwrap();
        let seen = s.get("k").unwrap().seq;
        let (_, mut rx) = s.events().subscribe();
        s.set("k", b"w", None).unwrap();
        assert!(rx.try_recv().unwrap().seq > seen);
    }

    #[test]
    fn concurrent_writers_and_readers_keep_accounting_exact() {
        let s = store(1 << 30, None, 16);
        std::thread::scope(|scope| {
            for t in 0..4 {
                let s = s.clone();
                scope.spawn(move || {
                    for i in 0..2000 {
                        let k = format!("k{}", i % 500);
                        match (i + t) % 3 {
                            0 => {
                                s.set(&k, format!("v{t}-{i}").as_bytes(), None).unwrap();
                            }
                            1 => {
                                s.get(&k);
                            }
                            _ => {
                                s.delete(&k);
                            }
                        }
                    }
                });
            }
        });
        // Recompute what the accounting should be from the surviving entries.
        let mut expected = 0;
        for i in 0..500 {
            let k = format!("k{i}");
            if let Some(l) = s.get(&k) {
                expected += entry_size(&k, &l.value);
            }
        }
        assert_eq!(s.stats().bytes_used, expected);
    }
}
