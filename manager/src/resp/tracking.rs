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
    /// Default-mode registrations: key to the clients that may cache it.
    shards: Box<[Mutex<Registrations>]>,
    registered: AtomicUsize,
    max_keys: usize,
    lags: StreamLags,
    max_lag: Duration,
    /// One more than the highest node index an event came from.
    nodes: AtomicUsize,
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
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            registered: AtomicUsize::new(0),
            max_keys,
            lags: StreamLags::new(nodes),
            max_lag,
            nodes: AtomicUsize::new(0),
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
        if self.write().insert(id, client).is_none() {
            self.tracking.fetch_add(1, Ordering::SeqCst);
        }
        Some(Pushes { rx, overflow })
    }

    /// Turns tracking off for `id` (its registrations go as they are used).
    pub fn disable(&self, id: u64) {
        if self.write().remove(&id).is_some() {
            self.tracking.fetch_sub(1, Ordering::SeqCst);
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

    /// Registers `keys` for client `id` before they are read. False when
    /// they are not registered (too many keys, or a stream may lag): the
    /// caller invalidates them right after the reply.
    pub fn track(&self, id: u64, keys: &[Bytes]) -> bool {
        if !self.fresh() {
            return false;
        }
        if self.registered.load(Ordering::Relaxed) + keys.len() > self.max_keys {
            return false;
        }
        for key in keys {
            let mut shard = lock(self.shard(key));
            let ids = shard.entry(key.clone()).or_insert_with(|| {
                self.registered.fetch_add(1, Ordering::Relaxed);
                Vec::new()
            });
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        true
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
        assert!(hub.track(1, &[Bytes::from("k")]));
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
        assert!(!hub.track(1, &[Bytes::from("k")]));
        hub.probed(0, 5, Instant::now());
        for i in 0..(QUEUE + 10) {
            assert!(hub.track(1, &[Bytes::from(format!("k{i}"))]) || i >= 99);
            hub.on_event(0, &invalidation(6 + i as u64, &format!("k{i}")));
        }
        assert_eq!(c.recv().await, Some(Push::All), "the overflow is a flush");
    }

    #[tokio::test(start_paused = true)]
    async fn reads_are_not_tracked_while_a_stream_may_lag() {
        let hub = TrackingHub::new(true, 100, Duration::from_millis(250), 4);
        let _c = hub.enable(1, &on()).unwrap();
        hub.on_event(0, &invalidation(1, "-"));
        assert!(!hub.track(1, &[Bytes::from("k")]), "no probe answered yet");
        hub.probed(0, 1, Instant::now());
        assert!(hub.track(1, &[Bytes::from("k")]));
        tokio::time::advance(Duration::from_millis(300)).await;
        assert!(!hub.track(1, &[Bytes::from("k")]), "no probe for 300 ms");
    }
}
