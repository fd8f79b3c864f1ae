//! Client-side caching (`CLIENT TRACKING`, RESP3): which client may hold
//! which key, and the invalidation pushes the data nodes' events drive.
//!
//! - Default mode: a read registers its keys for its client *before* it is
//!   sent to a node, so a change after the read always finds the
//!   registration; the connection sends the push only after the replies
//!   started before it (`conn.rs`), so the client never applies it before
//!   the reply it invalidates. A registration is used once (the first
//!   change removes it), as in Redis.
//! - BCAST: every change of a key under one of the client's prefixes.
//! - Whatever the manager may have missed becomes a flush of the client's
//!   whole cache (`invalidate` with a null key list): a node's stream
//!   breaking, lagging or restarting, a node flushed, or a client too slow
//!   to take its pushes.
//! - The staleness bound is the near cache's (`--near-cache-max-lag`): a
//!   read while some node's stream is not known to be within it is not
//!   tracked, and its keys are invalidated right after its reply instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bytes::Bytes;
use ringcache_proto::pb;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::command;
use super::frame::Reply;
use crate::listener::EventListener;
use crate::stream_lag::{StreamLags, NO_STREAM};

const SHARDS: usize = 16;

/// Default-mode registrations of one shard: key to the clients that may
/// cache it.
type Registrations = HashMap<Bytes, Vec<u64>>;
/// Pushes queued for one client before it counts as too slow.
const QUEUE: usize = 1024;

/// An invalidation for one client.
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    Keys(Vec<Bytes>),
    /// Everything the client caches.
    All,
}

impl Push {
    pub fn reply(&self) -> Reply {
        let keys = match self {
            Push::Keys(keys) => Reply::Array(keys.iter().cloned().map(Reply::Bulk).collect()),
            Push::All => Reply::Null,
        };
        Reply::Push(vec![Reply::bulk("invalidate"), keys])
    }
}

struct Client {
    tx: mpsc::Sender<Push>,
    /// Set when a push did not fit in the queue: the next one the client
    /// receives is a flush of everything.
    overflow: Arc<AtomicBool>,
    /// BCAST prefixes (empty: every key); None in default mode.
    bcast: Option<Vec<Bytes>>,
}

impl Client {
    fn send(&self, push: Push) {
        if self.tx.try_send(push).is_err() {
            self.overflow.store(true, Ordering::SeqCst);
        }
    }
}

/// A tracking client's end of its pushes.
pub struct Pushes {
    rx: mpsc::Receiver<Push>,
    overflow: Arc<AtomicBool>,
}

impl Pushes {
    /// The next push; None once the hub dropped the client.
    pub async fn recv(&mut self) -> Option<Push> {
        let push = self.rx.recv().await?;
        if self.overflow.swap(false, Ordering::SeqCst) {
            return Some(Push::All);
        }
        Some(push)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct TrackingHub {
    enabled: bool,
    next_id: AtomicU64,
    clients: RwLock<HashMap<u64, Client>>,
    /// Clients with tracking on: zero makes every event a no-op.
    tracking: AtomicUsize,
    /// Of them, BCAST clients (zero: no prefix is matched per event).
    bcast: AtomicUsize,
    /// Shard the next eviction starts from.
    evict_from: AtomicUsize,
    /// Default-mode registrations: key to the clients that may cache it.
    shards: Box<[Mutex<Registrations>]>,
    registered: AtomicUsize,
    max_keys: usize,
    lags: StreamLags,
    max_lag: Duration,
    /// One more than the highest node index an event came from.
    nodes: AtomicUsize,
    /// Nodes whose stream was within the bound at the last [`check_lag`].
    ///
    /// [`check_lag`]: TrackingHub::check_lag
    fresh_nodes: Mutex<std::collections::HashSet<usize>>,
}

impl TrackingHub {
    /// `enabled`: whether `CLIENT TRACKING ON` is accepted; `max_keys`:
    /// keys registered at most (beyond, reads are not tracked and their keys
    /// are invalidated at once); `nodes`: node indices it follows.
    pub fn new(enabled: bool, max_keys: usize, max_lag: Duration, nodes: usize) -> Self {
        Self {
            enabled,
            next_id: AtomicU64::new(1),
            clients: RwLock::new(HashMap::new()),
            tracking: AtomicUsize::new(0),
            bcast: AtomicUsize::new(0),
            evict_from: AtomicUsize::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            registered: AtomicUsize::new(0),
            max_keys,
            lags: StreamLags::new(nodes),
            max_lag,
            nodes: AtomicUsize::new(0),
            fresh_nodes: Mutex::new(Default::default()),
        }
    }

    /// Called every fraction of the bound: a node's stream that was within
    /// it and no longer is (slow, not broken: a broken one resets) may be
    /// holding back invalidations of values clients cache, so every client
    /// drops everything. Reads are not tracked again until it catches up.
    pub fn check_lag(&self) {
        let mut was = lock(&self.fresh_nodes);
        let mut fell_behind = false;
        for n in 0..self.nodes.load(Ordering::SeqCst) {
            let live = self.lags.node(n).is_some_and(|l| l.applied() != NO_STREAM);
            let fresh = live && self.lags.fresh(n, self.max_lag);
            if fresh {
                was.insert(n);
            } else if was.remove(&n) && live {
                fell_behind = true;
            }
        }
        drop(was);
        if fell_behind && self.tracking.load(Ordering::SeqCst) > 0 {
            tracing::info!(
                "a node's event stream fell behind --near-cache-max-lag: tracking clients flushed"
            );
            self.flush_all();
        }
    }

    /// A new connection's id (`CLIENT ID`).
    pub fn client_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Keys registered for default-mode clients now.
    pub fn registered(&self) -> usize {
        self.registered.load(Ordering::Relaxed)
    }

    /// Tracking clients now.
    pub fn clients(&self) -> usize {
        self.tracking.load(Ordering::Relaxed)
    }

    fn shard(&self, key: &[u8]) -> &Mutex<Registrations> {
        let h = xxhash_rust::xxh3::xxh3_64(key);
        &self.shards[(h as usize) % SHARDS]
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, Client>> {
        self.clients.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, Client>> {
        self.clients.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Turns tracking on for client `id` (again: with the new options).
    pub fn enable(&self, id: u64, opts: &command::Tracking) -> Option<Pushes> {
        if !self.enabled {
            return None;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let client = Client {
            tx,
            overflow: overflow.clone(),
            bcast: opts.bcast.then(|| opts.prefixes.clone()),
        };
        if opts.bcast {
            self.bcast.fetch_add(1, Ordering::SeqCst);
        }
        match self.write().insert(id, client) {
            None => {
                self.tracking.fetch_add(1, Ordering::SeqCst);
            }
            Some(old) if old.bcast.is_some() => {
                self.bcast.fetch_sub(1, Ordering::SeqCst);
            }
            Some(_) => {}
        }
        Some(Pushes { rx, overflow })
    }

    /// Turns tracking off for `id` (its registrations go as they are used).
    pub fn disable(&self, id: u64) {
        if let Some(old) = self.write().remove(&id) {
            self.tracking.fetch_sub(1, Ordering::SeqCst);
            if old.bcast.is_some() {
                self.bcast.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Whether every node with a live stream is known to be within the
    /// staleness bound.
    fn fresh(&self) -> bool {
        (0..self.nodes.load(Ordering::SeqCst)).all(|n| {
            self.lags.node(n).is_none_or(|l| l.applied() == NO_STREAM)
                || self.lags.fresh(n, self.max_lag)
        })
    }

    /// Registers `keys` for client `id` before they are read (a BCAST
    /// client needs no registration). False when the client must not keep
    /// them (a stream may lag beyond the bound, or more keys than the table
    /// holds): the caller invalidates them right after the reply.
    pub fn track(&self, id: u64, keys: &[Bytes], bcast: bool) -> bool {
        if !self.fresh() {
            return false;
        }
        if bcast {
            return true;
        }
        if keys.len() > self.max_keys {
            return false;
        }
        // Full: the oldest-placed registrations make room, their clients
        // told to drop those keys (Redis does the same).
        while self.registered.load(Ordering::Relaxed) + keys.len() > self.max_keys {
            if !self.evict_one() {
                break;
            }
        }
        for key in keys {
            let mut shard = lock(self.shard(key));
            // A copy: the argument is a view into the connection's read
            // buffer, which it would keep alive.
            let ids = shard.entry(Bytes::copy_from_slice(key)).or_insert_with(|| {
                self.registered.fetch_add(1, Ordering::Relaxed);
                Vec::new()
            });
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        true
    }

    /// Drops one registration and tells its clients; false if none is left.
    fn evict_one(&self) -> bool {
        let start = self.evict_from.fetch_add(1, Ordering::Relaxed);
        for i in 0..SHARDS {
            let shard = &self.shards[(start + i) % SHARDS];
            let taken = {
                let mut s = lock(shard);
                let key = s.keys().next().cloned();
                key.and_then(|k| s.remove(&k).map(|ids| (k, ids)))
            };
            if let Some((key, ids)) = taken {
                self.registered.fetch_sub(1, Ordering::Relaxed);
                let clients = self.read();
                for id in ids {
                    if let Some(c) = clients.get(&id) {
                        c.send(Push::Keys(vec![key.clone()]));
                    }
                }
                return true;
            }
        }
        false
    }

    /// Replaces a BCAST client's prefixes (`CLIENT TRACKING ON` again).
    pub fn set_prefixes(&self, id: u64, prefixes: &[Bytes]) {
        if let Some(c) = self.write().get_mut(&id) {
            if c.bcast.is_some() {
                c.bcast = Some(prefixes.to_vec());
            }
        }
    }

    fn invalidate(&self, key: &str) {
        let ids = lock(self.shard(key.as_bytes())).remove(key.as_bytes());
        if ids.is_some() {
            self.registered.fetch_sub(1, Ordering::Relaxed);
        }
        let key = Bytes::copy_from_slice(key.as_bytes());
        let clients = self.read();
        for id in ids.iter().flatten() {
            if let Some(c) = clients.get(id) {
                if c.bcast.is_none() {
                    c.send(Push::Keys(vec![key.clone()]));
                }
            }
        }
        if self.bcast.load(Ordering::Relaxed) == 0 {
            return;
        }
        for c in clients.values() {
            if let Some(prefixes) = &c.bcast {
                if prefixes.is_empty() || prefixes.iter().any(|p| key.starts_with(p)) {
                    c.send(Push::Keys(vec![key.clone()]));
                }
            }
        }
    }

    /// Every client drops everything it caches.
    fn flush_all(&self) {
        for s in self.shards.iter() {
            let mut shard = lock(s);
            self.registered.fetch_sub(shard.len(), Ordering::Relaxed);
            shard.clear();
        }
        for c in self.read().values() {
            c.send(Push::All);
        }
    }
}

impl EventListener for TrackingHub {
    fn wants_invalidations(&self) -> bool {
        self.enabled
    }

    fn probed(&self, node: usize, seq: u64, sent: Instant) {
        self.lags.probed(node, seq, sent);
    }

    fn on_event(&self, node: usize, event: &pb::Event) {
        self.nodes.fetch_max(node + 1, Ordering::SeqCst);
        self.lags.apply(node, event.seq);
        if self.tracking.load(Ordering::SeqCst) == 0 {
            return;
        }
        match &event.kind {
            Some(pb::event::Kind::Invalidation(inv)) if inv.cause == pb::Cause::Flush as i32 => {
                self.flush_all()
            }
            Some(pb::event::Kind::Invalidation(inv)) => self.invalidate(&inv.key),
            _ => {}
        }
    }

    fn on_reset(&self, node: usize) {
        self.lags.reset(node);
        if self.tracking.load(Ordering::SeqCst) > 0 {
            self.flush_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalidation(seq: u64, key: &str) -> pb::Event {
        pb::Event {
            seq,
            kind: Some(pb::event::Kind::Invalidation(pb::Invalidation {
                key: key.into(),
                cause: pb::Cause::Set as i32,
            })),
            ..Default::default()
        }
    }

    fn on() -> command::Tracking {
        command::Tracking {
            on: true,
            ..Default::default()
        }
    }

    fn fresh_hub() -> TrackingHub {
        let hub = TrackingHub::new(true, 100, Duration::from_secs(3600), 4);
        hub.on_event(0, &invalidation(1, "-"));
        hub.probed(0, 1, Instant::now());
        hub
    }

    #[tokio::test]
    async fn a_registered_key_is_invalidated_once_and_only_for_its_readers() {
        let hub = fresh_hub();
        let mut a = hub.enable(1, &on()).unwrap();
        let mut b = hub.enable(2, &on()).unwrap();
        assert!(hub.track(1, &[Bytes::from("k")], false));
        hub.on_event(0, &invalidation(2, "k"));
        hub.on_event(0, &invalidation(3, "k"));
        assert_eq!(a.recv().await, Some(Push::Keys(vec!["k".into()])));
        assert!(a.rx.try_recv().is_err(), "a registration is used once");
        assert!(b.rx.try_recv().is_err(), "b never read k");
    }

    #[tokio::test]
    async fn bcast_clients_get_every_key_under_their_prefixes() {
        let hub = fresh_hub();
        let opts = command::Tracking {
            on: true,
            bcast: true,
            prefixes: vec!["user:".into()],
            noloop: false,
        };
        let mut c = hub.enable(1, &opts).unwrap();
        hub.on_event(0, &invalidation(2, "user:1"));
        hub.on_event(0, &invalidation(3, "order:1"));
        hub.on_event(0, &invalidation(4, "user:1"));
        assert_eq!(c.recv().await, Some(Push::Keys(vec!["user:1".into()])));
        assert_eq!(c.recv().await, Some(Push::Keys(vec!["user:1".into()])));
        assert!(c.rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_broken_stream_or_a_full_queue_flushes_the_whole_cache() {
        let hub = fresh_hub();
        let mut c = hub.enable(1, &on()).unwrap();
        hub.on_reset(0);
        assert_eq!(c.recv().await, Some(Push::All));
        // A new stream is not known to be fresh before a probe: not tracked.
        hub.on_event(0, &invalidation(5, "-"));
        assert!(!hub.track(1, &[Bytes::from("k")], false));
        hub.probed(0, 5, Instant::now());
        for i in 0..(QUEUE + 10) {
            assert!(hub.track(1, &[Bytes::from(format!("k{i}"))], false) || i >= 99);
            hub.on_event(0, &invalidation(6 + i as u64, &format!("k{i}")));
        }
        assert_eq!(c.recv().await, Some(Push::All), "the overflow is a flush");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_falling_behind_flushes_the_clients_once() {
        let hub = TrackingHub::new(true, 100, Duration::from_millis(250), 4);
        let mut c = hub.enable(1, &on()).unwrap();
        hub.on_event(0, &invalidation(1, "-"));
        hub.probed(0, 1, Instant::now());
        hub.check_lag();
        assert!(c.rx.try_recv().is_err(), "fresh: nothing to say");
        // Probes answered at seq 2, but event 2 never arrives.
        tokio::time::advance(Duration::from_millis(100)).await;
        hub.probed(0, 2, Instant::now());
        hub.check_lag();
        assert!(
            c.rx.try_recv().is_err(),
            "still within 250 ms of the last fresh point"
        );
        tokio::time::advance(Duration::from_millis(200)).await;
        hub.check_lag();
        assert_eq!(c.recv().await, Some(Push::All));
        hub.check_lag();
        assert!(c.rx.try_recv().is_err(), "once per episode");
    }

    #[tokio::test(start_paused = true)]
    async fn reads_are_not_tracked_while_a_stream_may_lag() {
        let hub = TrackingHub::new(true, 100, Duration::from_millis(250), 4);
        let _c = hub.enable(1, &on()).unwrap();
        hub.on_event(0, &invalidation(1, "-"));
        assert!(
            !hub.track(1, &[Bytes::from("k")], false),
            "no probe answered yet"
        );
        hub.probed(0, 1, Instant::now());
        assert!(hub.track(1, &[Bytes::from("k")], false));
        tokio::time::advance(Duration::from_millis(300)).await;
        assert!(
            !hub.track(1, &[Bytes::from("k")], false),
            "no probe for 300 ms"
        );
    }
}
