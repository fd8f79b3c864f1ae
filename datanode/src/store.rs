//! The in-memory store: shards of a compact LRU map ([`CompactLru`]), each
//! behind its own mutex and chosen by a hash of the key, so concurrent
//! requests for different keys rarely meet on a lock.
//!
//! Capacity is counted in bytes (key + value + a fixed per-entry overhead,
//! [`ENTRY_OVERHEAD`]) and optionally in entries; each shard holds an equal
//! slice of both limits and evicts its least recently used entries to stay
//! inside them. Expired entries are hidden at lookup and freed by a
//! crawler that walks the slots of shards holding entries with an expiry
//! (memcached's LRU crawler, not an index: an index costs bytes on every
//! entry with a TTL, the crawl costs a few nanoseconds per slot per sweep).
//!
//! Every entry carries a version ([`ringcache_common::version`]); a write is applied
//! only if it is newer than the key's entry, or, for a key the shard does
//! not hold, newer than the shard's *floor*: the largest version the shard
//! dropped without a trace (evicted, expired, flushed). Deletes leave
//! tombstones for a bounded time. So replicas converge whatever order writes
//! arrive in, and a delayed write never brings back an older value.
//!
//! Every change (set, delete, eviction, expiry, flush) is published on the
//! [`EventBus`] while the shard lock is held, so the events for one key are
//! numbered in the order the changes happened.

use std::sync::Arc;

use crate::primitives::{AtomicU64, Mutex, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::compact_lru::{CompactLru, Item};
use crate::events::{lock, Cause, EventBus, EventKind, Subscription};
use ringcache_common::version::Hlc;

/// Bytes charged per entry on top of its key and value (shared with the
/// manager, which refuses what a replica could not hold).
pub use ringcache_common::limits::ENTRY_OVERHEAD;

/// Sizes of a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Upper bound of accounted bytes (keys + values + overhead).
    pub max_memory: u64,
    /// Optional upper bound of entries.
    pub max_items: Option<u64>,
    /// Number of independently locked shards.
    pub shards: usize,
    /// How long a deleted key's tombstone is kept.
    pub tombstone_ttl: Duration,
    /// How far ahead of this machine's wall clock a write's version may be.
    pub max_clock_skew: Duration,
}

/// The node's defaults (its flags' own: `config.rs`).
impl Default for StoreConfig {
    fn default() -> Self {
        crate::config::NodeOptions::default().store_config()
    }
}

/// Errors the store reports to callers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("entry of {size} bytes exceeds the per-shard memory limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("key of {len} bytes is longer than 65535 bytes")]
    KeyTooLong { len: usize },
    #[error("the shard holds as many entries as its index can number")]
    Full,
    #[error("version {version} is {ahead:?} ahead of this node's clock, more than --max-clock-skew ({max:?}) allows")]
    VersionTooNew {
        version: u64,
        ahead: Duration,
        max: Duration,
    },
}

/// A value found by [`Store::read`].
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    pub value: Bytes,
    /// Time left before the entry expires, if it has a TTL.
    pub ttl_remaining: Option<Duration>,
    /// Latest event sequence number when the value was read: any later change
    /// to the key is published with a larger number.
    pub seq: u64,
    pub version: u64,
}

/// What a read found.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    Hit(Lookup),
    /// The key was deleted at `version`: a final answer.
    Deleted {
        version: u64,
        seq: u64,
    },
    /// Nothing known about the key (never written, evicted or expired).
    Miss {
        seq: u64,
    },
}

impl Read {
    pub fn hit(self) -> Option<Lookup> {
        match self {
            Read::Hit(l) => Some(l),
            _ => None,
        }
    }
}

/// What a versioned write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored at `version`; `replaced` when a live value was there before,
    /// `prior` the version of what was there (0: nothing).
    Applied {
        replaced: bool,
        version: u64,
        prior: u64,
    },
    /// Not applied: the store holds, or dropped, `version`, which is newer.
    Superseded { version: u64 },
    /// Not applied: the write's condition does not hold. `current` is the
    /// version of the key's value (0: it holds none).
    ConditionFailed { current: u64 },
    /// Not applied: the fence of [`Store::apply_fenced`] failed once the
    /// write was in place, and it was taken back under the shard lock.
    Fenced,
}

/// What a conditional write requires of the key's current entry
/// (docs/design/conditional.md). A tombstone, an expired entry and no
/// entry are all "absent".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Condition {
    /// Unconditional.
    #[default]
    Always,
    /// A value with exactly this version.
    Version(u64),
    /// A value.
    Exists,
    /// No value.
    Absent,
}

impl Condition {
    /// Whether it holds for a key whose live value has version `current`
    /// (`None`: no live value).
    pub fn holds(self, current: Option<u64>) -> bool {
        match self {
            Condition::Always => true,
            Condition::Version(v) => current == Some(v),
            Condition::Exists => current.is_some(),
            Condition::Absent => current.is_none(),
        }
    }
}

/// A versioned write: a value, or a tombstone when `value` is `None`.
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    pub key: &'a str,
    pub value: Option<&'a [u8]>,
    pub ttl: Option<Duration>,
    /// 0: stamped with the store's own clock.
    pub version: u64,
    /// Checked against the current entry in the same step as the write.
    pub condition: Condition,
}

/// One entry as a scan hands it out.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanEntry {
    pub key: String,
    /// `None` for a tombstone.
    pub value: Option<Bytes>,
    pub version: u64,
    pub ttl_remaining: Option<Duration>,
}

/// Where a scan continues: shard and slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanCursor {
    shard: usize,
    slot: usize,
}

/// Counters and gauges of a store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub items: u64,
    pub tombstones: u64,
    pub bytes_used: u64,
    pub memory_limit: u64,
    pub max_items: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub ops: u64,
}

/// A set of key-hash ranges, `start < h <= end`, wrapping around zero when
/// `start >= end`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HashRanges {
    /// Non-wrapping inclusive intervals, sorted by start.
    spans: Vec<(u64, u64)>,
}

impl HashRanges {
    /// From `(start, end]` pairs as the protocol carries them.
    pub fn new(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut spans = Vec::new();
        for (start, end) in ranges {
            if start < end {
                spans.push((start + 1, end));
            } else {
                // Wraps: (start, MAX] and [0, end].
                if start < u64::MAX {
                    spans.push((start + 1, u64::MAX));
                }
                spans.push((0, end));
            }
        }
        Self::merged(spans)
    }

    /// Sorted, with overlapping and adjacent spans merged, so a lookup
    /// checks just one.
    fn merged(mut spans: Vec<(u64, u64)>) -> Self {
        spans.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
        for (s, e) in spans {
            match merged.last_mut() {
                Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        Self { spans: merged }
    }

    /// Every hash.
    pub fn all() -> Self {
        Self {
            spans: vec![(0, u64::MAX)],
        }
    }

    pub fn contains(&self, h: u64) -> bool {
        let i = self.spans.partition_point(|&(s, _)| s <= h);
        i > 0 && h <= self.spans[i - 1].1
    }

    /// Every hash in either.
    fn union(&self, other: &HashRanges) -> HashRanges {
        Self::merged(self.spans.iter().chain(&other.spans).copied().collect())
    }
}

/// The hash a key is placed by on the ring, and selected by in scans.
pub use ringcache_common::hash::key_hash;
use ringcache_common::hash::key_hash_bytes;

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
    /// The largest version seen; stamps unversioned writes.
    clock: Hlc,
    /// Versions at or above this may have been lost by this store besides
    /// what the shard floors say: the instance's start, and prunes.
    lost_base: AtomicU64,
    tombstone_ttl_ms: u64,
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
    /// Entries with an expiry (a TTL, or a tombstone): the crawler skips
    /// shards with none.
    expiring: u64,
    used: u64,
    tombstones: u64,
    byte_limit: u64,
    item_limit: u64,
    /// Largest version dropped without a trace.
    floor: u64,
    /// Ranges dropped by prunes (or copied from a peer), each with the
    /// largest version dropped there (or the peer's floor): a live write of
    /// a key absent there must not be older (a delayed older write must not
    /// bring back a value the prune dropped), while a copy from a peer may
    /// refill them below it. At most [`PRUNED_FLOORS`], the oldest merged.
    pruned: Vec<(HashRanges, u64)>,
}

/// Range floors kept per shard before the oldest two are merged (which
/// only widens what they refuse).
const PRUNED_FLOORS: usize = 16;

impl Shard {
    fn add_pruned(&mut self, ranges: &HashRanges, floor: u64) {
        if self.pruned.len() == PRUNED_FLOORS {
            let (r1, f1) = self.pruned.remove(0);
            let (r0, f0) = &mut self.pruned[0];
            *r0 = r0.union(&r1);
            *f0 = (*f0).max(f1);
        }
        self.pruned.push((ranges.clone(), floor));
    }

    /// A live write at `version` of absent key `key` is older than what a
    /// prune dropped there. Equal is allowed: only the dropped entry itself
    /// has the floor's version (versions are unique per write), so taking
    /// it back (a delayed copy of that very write) is safe.
    fn below_pruned(&self, key: &str, version: u64) -> Option<u64> {
        if self.pruned.is_empty() {
            return None;
        }
        let h = key_hash_bytes(key.as_bytes());
        self.pruned
            .iter()
            .filter(|(r, f)| version < *f && r.contains(h))
            .map(|&(_, f)| f)
            .max()
    }
}

/// Latest expiry an entry can record (store ms).
const MAX_EXPIRY: u64 = (1 << 63) - 1;

fn entry_size(key: &str, value: &[u8]) -> u64 {
    key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD
}

fn item_size(item: &Item) -> u64 {
    item.payload_len() as u64 + ENTRY_OVERHEAD
}

fn is_expired(item: &Item, now_ms: u64) -> bool {
    let at = item.expires();
    at != 0 && at <= now_ms
}

/// Keys are stored as bytes but always come from `&str`.
fn key_str(item: &Item) -> Arc<str> {
    Arc::from(String::from_utf8_lossy(item.key()))
}

/// Whether `new` beats `cur` at equal versions (practically never: two
/// writers with the same id in the same tick). Every replica decides the
/// same way: a tombstone beats a value, then the larger value wins.
fn wins_tie(new: Option<&[u8]>, cur: &Item) -> bool {
    match (new, cur.is_tombstone()) {
        (None, _) => false,
        (Some(_), true) => false,
        (Some(v), false) => v > cur.value(),
    }
}

impl Shard {
    /// Forgets the accounting of an entry just removed.
    fn forget(&mut self, item: &Item) {
        self.used -= item_size(item);
        if item.is_tombstone() {
            self.tombstones -= 1;
        }
        if item.expires() != 0 {
            self.expiring -= 1;
        }
    }

    /// Forgets an entry that leaves no trace: later writes must beat it.
    fn drop_traceless(&mut self, item: &Item) {
        self.forget(item);
        self.floor = self.floor.max(item.version());
    }

    fn live_items(&self) -> u64 {
        self.lru.len() as u64 - self.tombstones
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
                    expiring: 0,
                    used: 0,
                    tombstones: 0,
                    byte_limit,
                    item_limit,
                    floor: 0,
                    pruned: Vec::new(),
                })
            })
            .collect();
        let clock = Hlc::random().with_max_skew(config.max_clock_skew);
        // A new instance holds nothing written before it started.
        let started = clock.now();
        Self {
            inner: Arc::new(Inner {
                shards,
                events,
                memory_limit: config.max_memory,
                max_items: config.max_items.unwrap_or(0),
                counters: Counters::default(),
                clock,
                lost_base: AtomicU64::new(started),
                tombstone_ttl_ms: (config.tombstone_ttl.as_millis() as u64).max(1),
                clock_start: Instant::now(),
            }),
        }
    }

    /// The bus this store publishes on.
    pub fn events(&self) -> &EventBus {
        &self.inner.events
    }

    /// A subscription to this store's events (status only unless
    /// `invalidations`) and the sequence number it starts after.
    pub fn subscribe(&self, invalidations: bool) -> (u64, Subscription) {
        // Invalidations are published under shard locks: passing through
        // each one lets every publisher that saw no listener finish first.
        self.inner.events.subscribe(invalidations, || {
            for s in self.inner.shards.iter() {
                drop(lock(s));
            }
        })
    }

    /// The store's clock: the largest version seen.
    pub fn clock(&self) -> &Hlc {
        &self.inner.clock
    }

    /// Largest entry (key + value + overhead) a shard can hold.
    pub fn max_entry_bytes(&self) -> u64 {
        self.inner.memory_limit / self.inner.shards.len() as u64
    }

    fn shard_of(&self, h: u64) -> &Mutex<Shard> {
        // The low bits: the ring places keys by the high ones, so using them
        // here would crowd this node's keys into a few shards. Multiply-shift
        // maps them onto the shard count without a division.
        let low = h as u32 as u64;
        let i = ((low * self.inner.shards.len() as u64) >> 32) as usize;
        &self.inner.shards[i]
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        self.shard_of(key_hash(key))
    }

    /// Publishes a change of the shard `_locked` (a reference to it can
    /// only be had through its lock): the bus's lock-free path and
    /// [`Store::subscribe`] rely on invalidations being published under it.
    fn publish(&self, _locked: &Shard, key: Arc<str>, cause: Cause) -> u64 {
        self.inner
            .events
            .publish(EventKind::Invalidation { key, cause })
    }

    /// Milliseconds on the store's clock, never 0.
    fn now_ms(&self) -> u64 {
        let since = Instant::now().saturating_duration_since(self.inner.clock_start);
        since.as_millis() as u64 + 1
    }

    /// Removes an expired entry found by a lookup, and says so.
    fn expire(&self, shard: &mut Shard, key: &str) {
        if let Some((_, item)) = shard.lru.remove(key.as_bytes()) {
            shard.drop_traceless(&item);
            if !item.is_tombstone() {
                self.inner
                    .counters
                    .expirations
                    .fetch_add(1, Ordering::Relaxed);
                self.publish(shard, key_str(&item), Cause::Expired);
            }
        }
    }

    /// Looks `key` up and marks it most recently used. An expired entry is
    /// removed and reported as absent.
    pub fn read(&self, key: &str) -> Read {
        let c = &self.inner.counters;
        c.ops.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let mut shard = lock(self.shard(key));
        let seq = || self.inner.events.last_seq();
        let found = match shard.lru.get(key.as_bytes()) {
            Some((_, item)) if !is_expired(item, now) => {
                if item.is_tombstone() {
                    Read::Deleted {
                        version: item.version(),
                        seq: seq(),
                    }
                } else {
                    Read::Hit(Lookup {
                        value: item.value_bytes(),
                        ttl_remaining: (item.expires() != 0)
                            .then(|| Duration::from_millis(item.expires() - now)),
                        seq: seq(),
                        version: item.version(),
                    })
                }
            }
            Some(_) => {
                self.expire(&mut shard, key);
                Read::Miss { seq: seq() }
            }
            None => Read::Miss { seq: seq() },
        };
        drop(shard);
        match found {
            Read::Hit(_) => c.hits.fetch_add(1, Ordering::Relaxed),
            _ => c.misses.fetch_add(1, Ordering::Relaxed),
        };
        found
    }

    /// [`Store::read`] of a live value only.
    pub fn get(&self, key: &str) -> Option<Lookup> {
        self.read(key).hit()
    }

    /// Applies a versioned write (see the module doc). Least recently used
    /// entries of the key's shard are evicted to make room.
    pub fn apply(&self, w: Write<'_>) -> Result<Outcome, StoreError> {
        self.apply_from(w, false, None)
    }

    /// As [`Store::apply`], but the write stands only if `fence` still
    /// holds once it is in place: checked under the shard lock after the
    /// insert (so after any stall of this thread before it), and the
    /// previous entry put back if it does not, before any reader can see
    /// the write ([`Outcome::Fenced`]). A conditional write uses it to be
    /// decided only while the node answers consistent reads
    /// (docs/design/conditional.md).
    pub fn apply_fenced(
        &self,
        w: Write<'_>,
        fence: &dyn Fn() -> bool,
    ) -> Result<Outcome, StoreError> {
        self.apply_from(w, false, Some(fence))
    }

    /// Applies an entry copied from a peer's scan (repair, warm-up,
    /// hand-off): as [`Store::apply`], except that it may refill a pruned
    /// range below the prune's floor.
    pub fn apply_copy(&self, w: Write<'_>) -> Result<Outcome, StoreError> {
        self.apply_from(w, true, None)
    }

    fn apply_from(
        &self,
        w: Write<'_>,
        copy: bool,
        fence: Option<&dyn Fn() -> bool>,
    ) -> Result<Outcome, StoreError> {
        self.inner.counters.ops.fetch_add(1, Ordering::Relaxed);
        let Write {
            key,
            value,
            ttl,
            version,
            condition,
        } = w;
        if key.len() > crate::config::MAX_KEY_LIMIT {
            return Err(StoreError::KeyTooLong { len: key.len() });
        }
        let (version, too_new) = if version == 0 {
            (self.inner.clock.next(), false)
        } else {
            (version, !self.inner.clock.observe(version))
        };
        let size = entry_size(key, value.unwrap_or_default());
        let now = self.now_ms();
        let mut shard = lock(self.shard(key));
        if too_new {
            // Stored, it would stay above every later write of the key, and
            // every manager would follow this node's clock into the future.
            // Refused; but the write may be genuine and this node's clock
            // behind: the older copy is dropped (as an eviction would, the
            // floor raised to its version) so that it is never served
            // after a newer write was acknowledged elsewhere.
            if let Some((_, old)) = shard.lru.remove(key.as_bytes()) {
                shard.floor = shard.floor.max(old.version());
                shard.forget(&old);
                self.publish(&shard, Arc::from(key), Cause::Evicted);
            }
            return Err(StoreError::VersionTooNew {
                version,
                ahead: ringcache_common::version::ahead_of_wall(version),
                max: self.inner.clock.max_skew(),
            });
        }
        // (expired, version, newer, live value) of what the shard holds.
        let held = shard.lru.peek(key.as_bytes()).map(|(_, cur)| {
            let cv = cur.version();
            let newer = version > cv || (version == cv && wins_tie(value, cur));
            (is_expired(cur, now), cv, newer, !cur.is_tombstone())
        });
        let prior = held.map_or(0, |h| h.1);
        // Checked before the version: a write that would be superseded is
        // sent again, newer, and its condition checked again then.
        let current = held
            .filter(|&(expired, _, _, live)| !expired && live)
            .map(|h| h.1);
        if !condition.holds(current) {
            return Ok(Outcome::ConditionFailed {
                current: current.unwrap_or(0),
            });
        }
        let replaced = match held {
            Some((true, ..)) => {
                self.expire(&mut shard, key);
                false
            }
            Some((false, cv, newer, live)) => {
                if !newer {
                    return Ok(Outcome::Superseded { version: cv });
                }
                live
            }
            None => false,
        };
        if !matches!(held, Some((false, ..))) {
            if version <= shard.floor {
                return Ok(Outcome::Superseded {
                    version: shard.floor,
                });
            }
            if let Some(floor) = shard.below_pruned(key, version).filter(|_| !copy) {
                return Ok(Outcome::Superseded { version: floor });
            }
        }
        if size > shard.byte_limit {
            // The write is newer than what this shard holds for the key, but
            // cannot be stored here: drop the older copy (as an eviction
            // would, raising the floor) so that it is never served.
            if let Some((_, old)) = shard.lru.remove(key.as_bytes()) {
                shard.forget(&old);
                self.publish(&shard, Arc::from(key), Cause::Evicted);
            }
            shard.floor = shard.floor.max(version);
            return Err(StoreError::TooLarge {
                size,
                limit: shard.byte_limit,
            });
        }
        let expires = match value {
            None => now.saturating_add(self.inner.tombstone_ttl_ms),
            Some(_) => ttl.map_or(0, |t| now.saturating_add((t.as_millis() as u64).max(1))),
        }
        // The entry keeps 63 bits of expiry (the top one marks tombstones):
        // a larger time must saturate, not wrap to the near past.
        .min(MAX_EXPIRY);
        let item = Item::new(key.as_bytes(), value, expires, version)
            .map_err(|e| StoreError::KeyTooLong { len: e.0 })?;
        let (_, old) = shard.lru.insert(item).map_err(|_| StoreError::Full)?;
        if fence.is_some_and(|holds| !holds()) {
            // Nothing accounted yet, no event sent, and the lock held since
            // the insert: as if it never happened.
            shard.lru.remove(key.as_bytes());
            if let Some((_, old)) = old {
                let _ = shard.lru.insert(old);
            }
            return Ok(Outcome::Fenced);
        }
        if let Some((_, old)) = old {
            shard.forget(&old);
        }
        if expires != 0 {
            shard.expiring += 1;
        }
        if value.is_none() {
            shard.tombstones += 1;
        }
        shard.used += size;
        self.evict_over_limit(&mut shard, now);
        // A delete of a key with no live value changes nothing a reader
        // could have seen: no event.
        match value {
            Some(_) => {
                self.publish(&shard, Arc::from(key), Cause::Set);
            }
            None if replaced => {
                self.publish(&shard, Arc::from(key), Cause::Delete);
            }
            None => {}
        }
        Ok(Outcome::Applied {
            replaced,
            version,
            prior,
        })
    }

    /// Inserts or replaces `key` at a version from the store's own clock.
    /// Returns whether a live value was replaced.
    pub fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool, StoreError> {
        let w = Write {
            key,
            value: Some(value),
            ttl,
            version: 0,
            condition: Default::default(),
        };
        Ok(matches!(
            self.apply(w)?,
            Outcome::Applied { replaced: true, .. }
        ))
    }

    /// Deletes `key` (leaving a tombstone) at a version from the store's own
    /// clock. Returns whether a live value was removed.
    pub fn delete(&self, key: &str) -> bool {
        let w = Write {
            key,
            value: None,
            ttl: None,
            version: 0,
            condition: Default::default(),
        };
        matches!(self.apply(w), Ok(Outcome::Applied { replaced: true, .. }))
    }

    fn evict_over_limit(&self, shard: &mut Shard, now: u64) {
        let c = &self.inner.counters;
        while shard.used > shard.byte_limit || shard.live_items() > shard.item_limit {
            let Some((_, item)) = shard.lru.pop_lru() else {
                break;
            };
            shard.drop_traceless(&item);
            if item.is_tombstone() {
                continue;
            }
            // An entry that had already expired leaves for that reason.
            if is_expired(&item, now) {
                c.expirations.fetch_add(1, Ordering::Relaxed);
                self.publish(shard, key_str(&item), Cause::Expired);
            } else {
                c.evictions.fetch_add(1, Ordering::Relaxed);
                self.publish(shard, key_str(&item), Cause::Evicted);
            }
        }
    }

    /// Removes every entry and raises every floor to the clock, so no write
    /// stamped before the flush can land after it. Returns how many entries
    /// there were. Publishes one `Flush` event after all shards are empty.
    pub fn flush(&self) -> u64 {
        self.inner.counters.ops.fetch_add(1, Ordering::Relaxed);
        // Hold every shard lock while clearing, so no write can land between
        // the clear and the event and be wrongly covered by it. The maps are
        // swapped out under the locks and freed after.
        let mut guards: Vec<_> = self.inner.shards.iter().map(|s| lock(s)).collect();
        let floor = self.inner.clock.latest().max(self.inner.clock.now());
        let mut removed = 0;
        let mut old = Vec::with_capacity(guards.len());
        for shard in guards.iter_mut() {
            removed += shard.live_items();
            old.push(std::mem::take(&mut shard.lru));
            shard.expiring = 0;
            shard.used = 0;
            shard.tombstones = 0;
            shard.floor = shard.floor.max(floor);
        }
        self.publish(&guards[0], Arc::from(""), Cause::Flush);
        drop(guards);
        drop(old);
        removed
    }

    /// Drops every entry (tombstones too) whose key hash is in `ranges`,
    /// without raising the shard floors (a pull refills them): the ranges
    /// keep a floor of their own that only live writes must beat. Raises
    /// `lost_after`.
    pub fn prune(&self, ranges: &HashRanges) -> u64 {
        self.inner
            .lost_base
            .fetch_max(self.inner.clock.now(), Ordering::AcqRel);
        let mut removed = 0;
        for s in self.inner.shards.iter() {
            let mut shard = lock(s);
            let mut slots = Vec::new();
            let mut from = 0;
            while let Some(next) = shard.lru.visit_slots(from, usize::MAX, |slot, item| {
                if ranges.contains(key_hash_bytes(item.key())) {
                    slots.push(slot);
                }
            }) {
                from = next;
            }
            let mut dropped = 0;
            for slot in slots {
                if let Some(item) = shard.lru.remove_slot(slot) {
                    shard.forget(&item);
                    dropped = dropped.max(item.version());
                    if !item.is_tombstone() {
                        removed += 1;
                        self.publish(&shard, key_str(&item), Cause::Evicted);
                    }
                }
            }
            if dropped > 0 {
                shard.add_pruned(ranges, dropped);
            }
        }
        removed
    }

    /// The largest version any shard dropped without a trace.
    pub fn floor(&self) -> u64 {
        self.inner
            .shards
            .iter()
            .map(|s| lock(s).floor)
            .max()
            .unwrap_or(0)
    }

    /// Live writes of keys absent in `ranges` must be newer than `floor`
    /// from now on (a copy from a peer carries the peer's floor).
    pub fn raise_pruned_floor(&self, ranges: &HashRanges, floor: u64) {
        if floor == 0 {
            return;
        }
        for s in self.inner.shards.iter() {
            let mut shard = lock(s);
            // A copy sends its floor with every batch: once is enough.
            if !shard.pruned.iter().any(|(r, f)| *f >= floor && r == ranges) {
                shard.add_pruned(ranges, floor);
            }
        }
    }

    /// Versions at or above this may have been lost by this store: dropped
    /// without a trace (the shard floors), or never held because the
    /// instance started or pruned after them.
    pub fn lost_after(&self) -> u64 {
        let floors = self
            .inner
            .shards
            .iter()
            .map(|s| lock(s).floor)
            .max()
            .unwrap_or(0);
        floors.max(self.inner.lost_base.load(Ordering::Acquire))
    }

    /// Entries (tombstones too) with versions from `since` on whose key hash
    /// is in `ranges`, from `cursor` on, until `max_slots` slots were
    /// examined or `max_bytes` of keys and values collected; also how many
    /// entries were examined, and the cursor to continue from (`None` at the
    /// end). Holds one shard lock at a time, for at most 64 slots.
    pub fn scan(
        &self,
        ranges: &HashRanges,
        since: u64,
        cursor: ScanCursor,
        max_slots: usize,
        max_bytes: usize,
    ) -> (Vec<ScanEntry>, u64, Option<ScanCursor>) {
        const STEP: usize = 64;
        let now = self.now_ms();
        let mut items = Vec::new();
        let (mut examined, mut visited, mut bytes) = (0, 0, 0);
        let mut cur = cursor;
        while cur.shard < self.inner.shards.len() && visited < max_slots && bytes < max_bytes {
            let shard = lock(&self.inner.shards[cur.shard]);
            let next = shard.lru.visit_slots(cur.slot, STEP, |_, item| {
                examined += 1;
                if item.version() >= since
                    && !is_expired(item, now)
                    && ranges.contains(key_hash_bytes(item.key()))
                {
                    bytes += item.payload_len();
                    items.push(item.clone());
                }
            });
            drop(shard);
            visited += STEP;
            cur = match next {
                Some(slot) => ScanCursor {
                    shard: cur.shard,
                    slot,
                },
                None => ScanCursor {
                    shard: cur.shard + 1,
                    slot: 0,
                },
            };
        }
        let entries = items
            .into_iter()
            .map(|item| ScanEntry {
                key: String::from_utf8_lossy(item.key()).into_owned(),
                value: (!item.is_tombstone()).then(|| item.value_bytes()),
                version: item.version(),
                ttl_remaining: (item.expires() != 0 && !item.is_tombstone())
                    .then(|| Duration::from_millis(item.expires().saturating_sub(now).max(1))),
            })
            .collect();
        let next = (cur.shard < self.inner.shards.len()).then_some(cur);
        (entries, examined, next)
    }

    /// Removes entries whose TTL has passed (tombstones too) in one pass
    /// over the slots of every shard holding entries with an expiry,
    /// examining at most `budget` slots per shard lock hold so that readers
    /// are never held up for long. Returns the count of live values removed.
    pub fn purge_expired(&self, budget: usize) -> u64 {
        let budget = budget.max(1);
        let mut purged = 0;
        let mut expired = Vec::new();
        for s in self.inner.shards.iter() {
            let mut from = 0;
            loop {
                let now = self.now_ms();
                let mut shard = lock(s);
                if shard.expiring == 0 {
                    break;
                }
                expired.clear();
                let next = shard.lru.visit_slots(from, budget, |slot, item| {
                    if is_expired(item, now) {
                        expired.push(slot);
                    }
                });
                for &slot in &expired {
                    if let Some(item) = shard.lru.remove_slot(slot) {
                        shard.drop_traceless(&item);
                        if !item.is_tombstone() {
                            self.publish(&shard, key_str(&item), Cause::Expired);
                            purged += 1;
                        }
                    }
                }
                drop(shard);
                match next {
                    Some(n) => from = n,
                    None => break,
                }
            }
        }
        self.inner
            .counters
            .expirations
            .fetch_add(purged, Ordering::Relaxed);
        purged
    }

    /// Entries (live and tombstones) in the store.
    pub fn entries(&self) -> u64 {
        self.inner
            .shards
            .iter()
            .map(|s| lock(s).lru.len() as u64)
            .sum()
    }

    /// A snapshot of the counters and gauges.
    pub fn stats(&self) -> StoreStats {
        let (mut items, mut tombstones, mut bytes_used) = (0, 0, 0);
        for s in self.inner.shards.iter() {
            let shard = lock(s);
            items += shard.live_items();
            tombstones += shard.tombstones;
            bytes_used += shard.used;
        }
        let c = &self.inner.counters;
        StoreStats {
            items,
            tombstones,
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

    fn store(max_memory: u64, max_items: Option<u64>, shards: usize) -> Store {
        Store::new(
            &StoreConfig {
                max_memory,
                max_items,
                shards,
                tombstone_ttl: Duration::from_secs(60),
                max_clock_skew: ringcache_common::version::DEFAULT_MAX_SKEW,
            },
            EventBus::new(1024),
        )
    }

    fn drain(rx: &mut Subscription) -> Vec<(String, Cause)> {
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
        // What is left is the tombstone.
        assert_eq!((st.items, st.tombstones), (0, 1));
        assert_eq!(st.bytes_used, entry_size("k", b""));
        assert_eq!((st.hits, st.misses), (2, 2));
    }

    #[tokio::test]
    async fn evicts_least_recently_used_first() {
        // One shard, room for exactly three entries of this size.
        let per = entry_size("k0", b"vv");
        let s = store(3 * per, None, 1);
        let (_, mut rx) = s.subscribe(true);
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
        let (_, mut rx) = s.subscribe(true);
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
        let (start, mut rx) = s.subscribe(true);
        s.set("a", b"1", None).unwrap();
        s.set("b", b"2", None).unwrap();
        s.delete("a");
        s.delete("missing");
        let seq_before_flush = s.events().last_seq();
        let removed = s.flush();
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

    fn w<'a>(key: &'a str, value: Option<&'a [u8]>, version: u64) -> Write<'a> {
        Write {
            key,
            value,
            ttl: None,
            version,
            condition: Default::default(),
        }
    }

    fn applied(o: Result<Outcome, StoreError>) -> bool {
        matches!(o, Ok(Outcome::Applied { .. }))
    }

    #[tokio::test]
    async fn a_condition_is_checked_against_the_live_value_in_the_same_step() {
        let s = store(1 << 20, None, 1);
        let w = |key, value, version, condition| Write {
            key,
            value,
            ttl: None,
            version,
            condition,
        };
        // Absent: "if absent" holds, "if exists" and a version do not.
        assert_eq!(
            s.apply(w("k", Some(b"1"), 10, Condition::Exists)).unwrap(),
            Outcome::ConditionFailed { current: 0 }
        );
        assert_eq!(
            s.apply(w("k", Some(b"1"), 10, Condition::Version(5)))
                .unwrap(),
            Outcome::ConditionFailed { current: 0 }
        );
        assert!(matches!(
            s.apply(w("k", Some(b"1"), 10, Condition::Absent)).unwrap(),
            Outcome::Applied {
                version: 10,
                replaced: false,
                ..
            }
        ));
        // Present at 10: a second create fails and says what is there.
        assert_eq!(
            s.apply(w("k", Some(b"2"), 20, Condition::Absent)).unwrap(),
            Outcome::ConditionFailed { current: 10 }
        );
        // Two writers on base 10: the first wins, the second finds 20.
        assert!(matches!(
            s.apply(w("k", Some(b"2"), 20, Condition::Version(10)))
                .unwrap(),
            Outcome::Applied {
                version: 20,
                replaced: true,
                prior: 10
            }
        ));
        assert_eq!(
            s.apply(w("k", Some(b"3"), 30, Condition::Version(10)))
                .unwrap(),
            Outcome::ConditionFailed { current: 20 }
        );
        assert_eq!(s.get("k").unwrap().value, Bytes::from_static(b"2"));
        // A condition that holds with a version not above the current one:
        // superseded (the writer sends it again, newer).
        assert_eq!(
            s.apply(w("k", Some(b"3"), 15, Condition::Version(20)))
                .unwrap(),
            Outcome::Superseded { version: 20 }
        );
        // A conditional delete leaves a tombstone: absent again.
        assert!(matches!(
            s.apply(w("k", None, 40, Condition::Exists)).unwrap(),
            Outcome::Applied {
                version: 40,
                replaced: true,
                ..
            }
        ));
        assert_eq!(
            s.apply(w("k", None, 50, Condition::Exists)).unwrap(),
            Outcome::ConditionFailed { current: 0 }
        );
        assert!(matches!(
            s.apply(w("k", Some(b"4"), 60, Condition::Absent)).unwrap(),
            Outcome::Applied {
                version: 60,
                replaced: false,
                prior: 40
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_value_is_absent_to_a_condition() {
        let s = store(1 << 20, None, 1);
        s.apply(Write {
            key: "k",
            value: Some(b"v"),
            ttl: Some(Duration::from_secs(1)),
            version: 10,
            condition: Condition::Always,
        })
        .unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        let create = Write {
            key: "k",
            value: Some(b"w"),
            ttl: None,
            version: 20,
            condition: Condition::Absent,
        };
        assert!(matches!(s.apply(create).unwrap(), Outcome::Applied { .. }));
    }

    #[tokio::test]
    async fn a_write_whose_fence_fails_once_in_place_is_undone_without_a_trace() {
        let s = store(1 << 20, None, 1);
        let w = |value, version| Write {
            key: "k",
            value: Some(value),
            ttl: None,
            version,
            condition: Condition::Always,
        };
        s.apply(w(b"1", 10)).unwrap();
        let before = s.stats();
        let (_, mut rx) = s.subscribe(true);
        assert_eq!(
            s.apply_fenced(w(b"2", 20), &|| false).unwrap(),
            Outcome::Fenced
        );
        // The previous value, its accounting, no event.
        assert_eq!(s.get("k").unwrap().value, Bytes::from_static(b"1"));
        assert_eq!(s.get("k").unwrap().version, 10);
        let after = s.stats();
        assert_eq!(
            (after.items, after.bytes_used),
            (before.items, before.bytes_used)
        );
        assert!(rx.try_recv().is_err(), "no event for a fenced write");
        // A new key fenced off: absent, and a later write of it is not
        // refused by any floor.
        assert_eq!(
            s.apply_fenced(
                Write {
                    key: "n",
                    ..w(b"x", 30)
                },
                &|| false
            )
            .unwrap(),
            Outcome::Fenced
        );
        assert!(s.get("n").is_none());
        assert!(matches!(
            s.apply(Write {
                key: "n",
                ..w(b"y", 25)
            })
            .unwrap(),
            Outcome::Applied { .. }
        ));
        // A fence that holds: applied.
        assert!(matches!(
            s.apply_fenced(w(b"3", 40), &|| true).unwrap(),
            Outcome::Applied { version: 40, .. }
        ));
    }

    #[tokio::test]
    async fn writes_apply_only_when_newer_whatever_the_arrival_order() {
        let s = store(1 << 20, None, 4);
        assert!(applied(s.apply(w("k", Some(b"v2"), 20))));
        // Late and duplicated writes are harmless.
        assert_eq!(
            s.apply(w("k", Some(b"v1"), 10)),
            Ok(Outcome::Superseded { version: 20 })
        );
        assert_eq!(
            s.apply(w("k", Some(b"v2"), 20)),
            Ok(Outcome::Superseded { version: 20 })
        );
        assert_eq!(s.get("k").unwrap().value, Bytes::from_static(b"v2"));
        assert_eq!(s.get("k").unwrap().version, 20);
        // A delete leaves a tombstone that older writes cannot pass.
        assert_eq!(
            s.apply(w("k", None, 30)),
            Ok(Outcome::Applied {
                replaced: true,
                version: 30,
                prior: 20,
            })
        );
        assert!(!applied(s.apply(w("k", Some(b"v2.5"), 25))));
        assert_eq!(
            s.read("k"),
            Read::Deleted {
                version: 30,
                seq: s.events().last_seq()
            }
        );
        // What a write replaced is reported, a tombstone included.
        assert_eq!(
            s.apply(w("k", Some(b"v4"), 40)),
            Ok(Outcome::Applied {
                replaced: false,
                version: 40,
                prior: 30,
            })
        );
        assert_eq!(s.get("k").unwrap().value, Bytes::from_static(b"v4"));
    }

    #[tokio::test]
    async fn replicas_converge_on_any_permutation_of_writes() {
        let writes: Vec<(u64, Option<&[u8]>)> = vec![
            (5, Some(b"a")),
            (9, None),
            (7, Some(b"b")),
            (9, Some(b"c")),
            (12, Some(b"d")),
            (12, Some(b"e")),
        ];
        let mut finals = Vec::new();
        for rot in 0..writes.len() {
            for rev in [false, true] {
                let s = store(1 << 20, None, 2);
                let mut order: Vec<_> = writes.clone();
                order.rotate_left(rot);
                if rev {
                    order.reverse();
                }
                for (v, val) in order {
                    s.apply(w("k", val, v)).unwrap();
                }
                finals.push(
                    format!("{:?}", s.read("k"))
                        .replace(&format!("seq: {}", s.events().last_seq()), ""),
                );
            }
        }
        finals.dedup();
        assert_eq!(finals.len(), 1, "{finals:?}");
        assert!(finals[0].contains("version: 12"), "{}", finals[0]);
    }

    #[tokio::test]
    async fn an_evicted_key_cannot_come_back_older() {
        let per = entry_size("k0", b"vv");
        let s = store(2 * per, None, 1);
        assert!(applied(s.apply(w("k0", Some(b"vv"), 100))));
        assert!(applied(s.apply(w("k1", Some(b"vv"), 101))));
        assert!(applied(s.apply(w("k2", Some(b"vv"), 102))));
        assert!(s.get("k0").is_none(), "k0 was evicted");
        // A write of k0 delayed from before version 100 must not land.
        assert_eq!(
            s.apply(w("k0", Some(b"old"), 90)),
            Ok(Outcome::Superseded { version: 100 })
        );
        assert!(s.get("k0").is_none());
        assert!(s.lost_after() >= 100);
        // Newer writes of any key go through.
        assert!(applied(s.apply(w("k0", Some(b"new"), 103))));
    }

    #[tokio::test]
    async fn a_flush_fences_off_every_earlier_write() {
        let s = store(1 << 20, None, 2);
        let before = s.clock().next();
        s.set("k", b"v", None).unwrap();
        s.flush();
        assert!(!applied(s.apply(w("k", Some(b"old"), before))));
        assert!(!applied(s.apply(w("other", Some(b"old"), before))));
        assert!(s.get("k").is_none());
        assert!(s.set("k", b"new", None).is_ok());
        assert_eq!(s.get("k").unwrap().value, Bytes::from_static(b"new"));
    }

    #[tokio::test]
    async fn a_new_instance_has_lost_everything_before_it_started() {
        // A write a second before the new instance started.
        let v = ringcache_common::version::wall_version_ago(Duration::from_secs(1));
        let new = store(1 << 20, None, 1);
        assert!(new.lost_after() >= v);
    }

    #[tokio::test]
    async fn an_entry_too_large_for_this_replica_drops_its_older_copy() {
        let s = store(1024, None, 1);
        assert!(applied(s.apply(w("k", Some(b"small"), 10))));
        let big = vec![0u8; 2048];
        assert!(matches!(
            s.apply(w("k", Some(&big), 20)),
            Err(StoreError::TooLarge { .. })
        ));
        assert!(s.get("k").is_none(), "the older value must not be served");
        assert!(!applied(s.apply(w("k", Some(b"small"), 10))));
    }

    #[tokio::test(start_paused = true)]
    async fn tombstones_expire_and_leave_a_floor() {
        let s = store(1 << 20, None, 1);
        assert!(applied(s.apply(w("k", None, 50))));
        assert_eq!(s.stats().tombstones, 1);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(s.purge_expired(10), 0, "tombstones are not counted");
        let st = s.stats();
        assert_eq!((st.tombstones, st.bytes_used), (0, 0));
        assert!(!applied(s.apply(w("k", Some(b"late"), 40))));
        assert!(applied(s.apply(w("k", Some(b"new"), 60))));
    }

    #[tokio::test]
    async fn scan_returns_what_changed_since_in_the_ranges() {
        let s = store(1 << 20, None, 8);
        for i in 0..200u64 {
            assert!(applied(s.apply(w(&format!("k{i}"), Some(b"v"), 1000 + i))));
        }
        assert!(applied(s.apply(w("k5", None, 5000))));
        let half = HashRanges::new([(u64::MAX / 2, u64::MAX)]);
        let mut got = Vec::new();
        let mut cursor = ScanCursor::default();
        let mut examined = 0;
        loop {
            let (entries, n, next) = s.scan(&half, 1100, cursor, 7, 1 << 20);
            got.extend(entries);
            examined += n;
            match next {
                Some(c) => cursor = c,
                None => break,
            }
        }
        assert_eq!(examined, 200);
        let want: Vec<String> = (0..200u64)
            .map(|i| format!("k{i}"))
            .filter(|k| {
                let n: u64 = k[1..].parse().unwrap();
                (n >= 100 || k == "k5") && key_hash(k) > u64::MAX / 2
            })
            .collect();
        let mut keys: Vec<String> = got.iter().map(|e| e.key.clone()).collect();
        keys.sort();
        let mut want_sorted = want.clone();
        want_sorted.sort();
        assert_eq!(keys, want_sorted);
        if let Some(e) = got.iter().find(|e| e.key == "k5") {
            assert_eq!((e.value.is_none(), e.version), (true, 5000));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_ttl_beyond_the_recordable_range_saturates() {
        let s = store(1 << 20, None, 1);
        // Just past 2^63 ms: wrapped, it would have expired at once.
        s.set("far", b"v", Some(Duration::from_millis((1 << 63) + 5)))
            .unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(s.get("far").is_some());
        assert_eq!(s.purge_expired(16), 0);
        assert_eq!(lock(&s.inner.shards[0]).expiring, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_with_a_ttl_costs_what_one_without_does() {
        let s = store(1 << 20, None, 1);
        s.set("plain", b"v", None).unwrap();
        let plain = s.stats().bytes_used;
        s.set("ttl00", b"v", Some(Duration::from_secs(60))).unwrap();
        assert_eq!(s.stats().bytes_used, 2 * plain);
        // The crawl keeps count of what can expire: after the TTL entry is
        // overwritten without one, nothing is left for it to free.
        s.set("ttl00", b"v", None).unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(s.purge_expired(1), 0);
        assert_eq!(s.stats().bytes_used, 2 * plain);
        assert_eq!(lock(&s.inner.shards[0]).expiring, 0);
    }

    #[test]
    fn a_version_far_ahead_of_the_clock_is_refused_and_not_followed() {
        let s = store(1 << 20, None, 2);
        let w = |version, value: &'static [u8]| Write {
            key: "k",
            value: Some(value),
            ttl: None,
            version,
            condition: Default::default(),
        };
        let ok = s.clock().next();
        assert!(matches!(
            s.apply(w(ok, b"old")),
            Ok(Outcome::Applied { .. })
        ));
        // What a forged Set sent with grpcurl carried.
        let err = s.apply(w(u64::MAX - 5000, b"bad")).unwrap_err();
        assert!(matches!(err, StoreError::VersionTooNew { .. }), "{err:?}");
        assert!(err.to_string().contains("--max-clock-skew"), "{err}");
        // The older copy is gone (the write may be genuine, from a writer
        // whose clock is right), and cannot come back by a delayed write.
        assert!(s.get("k").is_none());
        assert!(matches!(
            s.apply(w(ok, b"old")),
            Ok(Outcome::Superseded { .. })
        ));
        // The clock did not follow it: a later ordinary write still wins.
        assert!(s.clock().latest() < u64::MAX / 2);
        let next = s.clock().next();
        assert!(matches!(
            s.apply(w(next, b"new")),
            Ok(Outcome::Applied { .. })
        ));
        assert_eq!(&s.get("k").unwrap().value[..], b"new");
    }

    #[test]
    fn hash_ranges_wrap_and_merge() {
        let r = HashRanges::new([(10, 20), (u64::MAX - 5, 3), (15, 30)]);
        for h in [11, 20, 25, 30, u64::MAX, 0, 3] {
            assert!(r.contains(h), "{h}");
        }
        for h in [10, 31, 4, u64::MAX - 5, 1000] {
            assert!(!r.contains(h), "{h}");
        }
        assert!(HashRanges::all().contains(0));
        assert!(!HashRanges::default().contains(5));
    }

    #[tokio::test]
    async fn prune_drops_the_ranges_and_raises_lost_after() {
        let s = store(1 << 20, None, 4);
        for i in 0..100 {
            s.set(&format!("k{i}"), b"v", None).unwrap();
        }
        let before = s.lost_after();
        let low = HashRanges::new([(u64::MAX, u64::MAX / 2)]);
        let removed = s.prune(&low);
        let left = (0..100)
            .filter(|i| s.get(&format!("k{i}")).is_some())
            .count() as u64;
        assert_eq!(removed + left, 100);
        assert!(removed > 20 && left > 20);
        assert!((0..100)
            .map(|i| format!("k{i}"))
            .filter(|k| s.get(k).is_some())
            .all(|k| key_hash(&k) > u64::MAX / 2));
        assert!(s.lost_after() >= before);
    }

    #[tokio::test]
    async fn a_delayed_older_write_does_not_refill_a_pruned_range_but_a_copy_does() {
        let s = store(1 << 20, None, 4);
        assert!(matches!(
            s.apply(w("k", Some(b"new"), 50)),
            Ok(Outcome::Applied { .. })
        ));
        assert!(matches!(
            s.apply(w("other", Some(b"x"), 10)),
            Ok(Outcome::Applied { .. })
        ));
        s.prune(&HashRanges::all());
        // An older write of k, delayed in the network, arrives after the
        // prune: served, it would be an older value than the one dropped.
        assert_eq!(
            s.apply(w("k", Some(b"old"), 40)),
            Ok(Outcome::Superseded { version: 50 })
        );
        assert!(s.get("k").is_none());
        // The copy that refills the range brings what the peer holds, even
        // below the prune's floor.
        assert!(matches!(
            s.apply_copy(w("other", Some(b"x"), 10)),
            Ok(Outcome::Applied { .. })
        ));
        assert!(matches!(
            s.apply_copy(w("k", Some(b"new"), 50)),
            Ok(Outcome::Applied { .. })
        ));
        // Newer live writes are taken as always.
        assert!(matches!(
            s.apply(w("k2", Some(b"v"), 60)),
            Ok(Outcome::Applied { .. })
        ));
        assert_eq!(
            s.get("k").map(|e| e.value),
            Some(Bytes::from_static(b"new"))
        );
    }

    #[tokio::test]
    async fn a_copy_carries_the_source_floor_to_live_writes_only() {
        let s = store(1 << 20, None, 4);
        // The source evicted "gone" at version 70: it says so with its
        // floor, and this node never held the key.
        s.raise_pruned_floor(&HashRanges::all(), 70);
        assert_eq!(
            s.apply(w("gone", Some(b"old"), 65)),
            Ok(Outcome::Superseded { version: 70 })
        );
        assert!(matches!(
            s.apply_copy(w("kept", Some(b"v"), 20)),
            Ok(Outcome::Applied { .. })
        ));
        assert!(matches!(
            s.apply(w("gone", Some(b"new"), 71)),
            Ok(Outcome::Applied { .. })
        ));
    }

    #[tokio::test]
    async fn get_reports_a_sequence_no_later_change_can_undercut() {
        let s = store(1 << 20, None, 2);
        s.set("k", b"v", None).unwrap();
        let seen = s.get("k").unwrap().seq;
        let (_, mut rx) = s.subscribe(true);
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
            match s.read(&k) {
                Read::Hit(l) => expected += entry_size(&k, &l.value),
                Read::Deleted { .. } => expected += entry_size(&k, b""),
                Read::Miss { .. } => {}
            }
        }
        assert_eq!(s.stats().bytes_used, expected);
    }
}

/// Interleavings of the store's races explored by shuttle's scheduler (run
/// with `--features shuttle`; the plain tests above run without it).
#[cfg(all(test, feature = "shuttle"))]
mod schedules {
    use super::*;
    use shuttle::sync::Arc;
    use shuttle::thread;

    const ITERATIONS: usize = 1000;

    fn store(max_memory: u64, shards: usize) -> Store {
        let config = StoreConfig {
            max_memory,
            max_items: None,
            shards,
            tombstone_ttl: Duration::from_secs(300),
            max_clock_skew: ringcache_common::version::DEFAULT_MAX_SKEW,
        };
        Store::new(&config, EventBus::new(1024))
    }

    fn write(
        s: &Arc<Store>,
        key: &'static str,
        value: Option<&'static [u8]>,
        version: u64,
    ) -> thread::JoinHandle<()> {
        let s = s.clone();
        thread::spawn(move || {
            s.apply(Write {
                key,
                value,
                ttl: None,
                version,
                condition: Default::default(),
            })
            .unwrap();
        })
    }

    #[test]
    fn racing_versioned_writes_leave_the_highest_version_on_every_schedule() {
        shuttle::check_random(
            || {
                let s = Arc::new(store(1 << 20, 2));
                let threads = [
                    write(&s, "k", Some(b"a"), 100),
                    write(&s, "k", None, 200),
                    write(&s, "k", Some(b"c"), 150),
                ];
                for t in threads {
                    t.join().unwrap();
                }
                assert!(
                    matches!(s.read("k"), Read::Deleted { version: 200, .. }),
                    "{:?}",
                    s.read("k")
                );
            },
            ITERATIONS,
        );
    }

    #[test]
    fn writes_racing_eviction_keep_the_byte_bound_and_never_mix_values() {
        shuttle::check_random(
            || {
                // Room for about three of these entries: writes evict.
                let s = Arc::new(store(1000, 1));
                let keys: [&'static str; 4] = ["a", "b", "c", "d"];
                let mut threads = Vec::new();
                for (n, k) in keys.iter().enumerate() {
                    let value: &'static [u8] = if n % 2 == 0 {
                        &[b'x'; 200]
                    } else {
                        &[b'y'; 200]
                    };
                    threads.push(write(&s, k, Some(value), 10 + n as u64));
                }
                for t in threads {
                    t.join().unwrap();
                }
                let stats = s.stats();
                assert!(stats.bytes_used <= 1000, "{} bytes used", stats.bytes_used);
                for (n, k) in keys.iter().enumerate() {
                    if let Some(hit) = s.get(k) {
                        let want = if n % 2 == 0 { b'x' } else { b'y' };
                        assert!(
                            hit.value.iter().all(|&b| b == want),
                            "{k} holds another value"
                        );
                        assert_eq!(hit.version, 10 + n as u64);
                    }
                }
            },
            ITERATIONS,
        );
    }

    #[test]
    fn racing_writes_publish_gapless_events_in_apply_order() {
        shuttle::check_random(
            || {
                let s = Arc::new(store(1 << 20, 2));
                let (start, mut rx) = s.subscribe(true);
                let threads = [
                    write(&s, "k", Some(b"1"), 1),
                    write(&s, "j", Some(b"2"), 2),
                    write(&s, "k", Some(b"3"), 3),
                ];
                for t in threads {
                    t.join().unwrap();
                }
                let mut last = start;
                let mut k_events = 0;
                while let Ok(ev) = rx.try_recv() {
                    assert_eq!(ev.seq, last + 1, "gap after {last}");
                    last = ev.seq;
                    if let EventKind::Invalidation { key, .. } = &ev.kind {
                        k_events += usize::from(&**key == "k");
                    }
                }
                // Version 1 loses to 3 when it lands second: one event then.
                assert!((1..=2).contains(&k_events), "{k_events} events for k");
                assert_eq!(s.get("k").map(|h| h.version), Some(3));
            },
            ITERATIONS,
        );
    }
    #[test]
    fn a_subscriber_joining_during_writes_sees_every_later_event() {
        shuttle::check_random(
            || {
                let s = Arc::new(store(1 << 20, 2));
                let threads = [
                    write(&s, "k", Some(b"1"), 1),
                    write(&s, "j", Some(b"2"), 2),
                    write(&s, "i", Some(b"3"), 3),
                ];
                // Writers may number their events without the bus lock
                // until this subscription counts: none may be left behind.
                let sub = {
                    let s = s.clone();
                    shuttle::thread::spawn(move || s.subscribe(true))
                };
                for t in threads {
                    t.join().unwrap();
                }
                let (start, mut rx) = sub.join().unwrap();
                let mut last = start;
                while let Ok(ev) = rx.try_recv() {
                    assert_eq!(ev.seq, last + 1, "gap after {last}");
                    last = ev.seq;
                }
                assert_eq!(last, s.events().last_seq(), "events not delivered");
            },
            ITERATIONS,
        );
    }
}
