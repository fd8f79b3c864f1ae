//! The node's event bus: every change to the store and every status
//! heartbeat, numbered in one per-instance sequence and fanned out to
//! subscribers through bounded `tokio::sync::broadcast` channels (one with
//! every event, one with status events only).
//!
//! Publishing never waits: a subscriber that falls more than the channel's
//! capacity behind loses the oldest events and is told how many it missed
//! (`Lagged`), so a slow manager cannot slow the hot path down.

use std::sync::Arc;

use crate::primitives::{AtomicU64, Mutex, Ordering};

use tokio::sync::broadcast;

use crate::store::StoreStats;

/// Why a key changed or disappeared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Set,
    Delete,
    Evicted,
    Expired,
    /// Every key is gone (the key of the change is empty).
    Flush,
}

/// What an event says.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    Invalidation { key: Arc<str>, cause: Cause },
    Status(StoreStats),
}

/// One numbered event.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeEvent {
    pub seq: u64,
    pub kind: EventKind,
}

/// Sender half of the bus; cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<BusInner>,
}

struct BusInner {
    /// Every event, for subscribers that want invalidations.
    all: broadcast::Sender<NodeEvent>,
    /// Status events only, for subscribers that skip invalidations.
    status: broadcast::Sender<NodeEvent>,
    /// Sequence numbers are assigned and events sent under this lock, so
    /// every subscriber receives events in sequence order with no holes
    /// except the ones `Lagged` reports (and, for status-only subscribers,
    /// the invalidations they skip).
    order: Mutex<()>,
    /// The latest sequence number handed out.
    published: AtomicU64,
    /// Subscribers that want invalidations. With none, an invalidation only
    /// takes a number (one atomic add), no lock: the common deployment (a
    /// manager without a near cache) pays nothing per write for the bus.
    listeners: AtomicU64,
}

impl EventBus {
    /// A bus that keeps up to `capacity` undelivered events per subscriber.
    pub fn new(capacity: usize) -> Self {
        let (all, _) = broadcast::channel(capacity.max(1));
        let (status, _) = broadcast::channel(capacity.max(1));
        Self {
            inner: Arc::new(BusInner {
                all,
                status,
                order: Mutex::new(()),
                published: AtomicU64::new(0),
                listeners: AtomicU64::new(0),
            }),
        }
    }

    /// Publishes one event and returns its sequence number. Never blocks on
    /// subscribers.
    ///
    /// Invalidations must be published under the lock that orders the
    /// change they report (the store's shard lock): [`EventBus::subscribe`]
    /// relies on it to see every publisher that took the lock-free path.
    pub fn publish(&self, kind: EventKind) -> u64 {
        let status = matches!(kind, EventKind::Status(_));
        if !status && self.inner.listeners.load(Ordering::SeqCst) == 0 {
            return self.inner.published.fetch_add(1, Ordering::AcqRel) + 1;
        }
        let _order = lock(&self.inner.order);
        let n = self.inner.published.fetch_add(1, Ordering::AcqRel) + 1;
        let ev = NodeEvent { seq: n, kind };
        // An error only means nobody is listening on that channel.
        if status {
            let _ = self.inner.status.send(ev.clone());
        }
        let _ = self.inner.all.send(ev);
        n
    }

    /// Sequence number of the latest published event.
    pub fn last_seq(&self) -> u64 {
        self.inner.published.load(Ordering::Acquire)
    }

    /// A new subscription and the sequence number it starts after: the
    /// receiver sees exactly the events numbered above it (status events
    /// only, unless `invalidations`).
    ///
    /// `quiesce` must acquire and release every lock invalidations are
    /// published under: a publisher that saw no listener before this
    /// subscription counted itself has then finished numbering its event,
    /// so the start is past it and no hole follows it.
    pub fn subscribe(&self, invalidations: bool, quiesce: impl FnOnce()) -> (u64, Subscription) {
        let counted = invalidations.then(|| {
            self.inner.listeners.fetch_add(1, Ordering::SeqCst);
            quiesce();
            self.inner.clone()
        });
        let _order = lock(&self.inner.order);
        let rx = if invalidations {
            self.inner.all.subscribe()
        } else {
            self.inner.status.subscribe()
        };
        let start = self.inner.published.load(Ordering::Acquire);
        (start, Subscription { rx, counted })
    }
}

/// One subscriber's receiving end.
pub struct Subscription {
    rx: broadcast::Receiver<NodeEvent>,
    /// Set when this subscription counts among the bus's listeners.
    counted: Option<Arc<BusInner>>,
}

impl Subscription {
    /// The next event, or how many were dropped for this subscriber.
    pub async fn recv(&mut self) -> Result<NodeEvent, broadcast::error::RecvError> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Result<NodeEvent, broadcast::error::TryRecvError> {
        self.rx.try_recv()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(bus) = &self.counted {
            bus.listeners.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

pub(crate) use crate::primitives::lock;

#[cfg(test)]
mod tests {
    use super::*;

    fn inval(key: &str) -> EventKind {
        EventKind::Invalidation {
            key: key.into(),
            cause: Cause::Set,
        }
    }

    #[tokio::test]
    async fn events_are_numbered_consecutively_from_the_subscription_point() {
        let bus = EventBus::new(16);
        bus.publish(inval("before"));
        let (start, mut rx) = bus.subscribe(true, || {});
        assert_eq!(start, 1);
        bus.publish(inval("a"));
        bus.publish(inval("b"));
        assert_eq!(rx.recv().await.unwrap().seq, 2);
        let ev = rx.recv().await.unwrap();
        assert_eq!(ev.seq, 3);
        assert_eq!(ev.kind, inval("b"));
        assert_eq!(bus.last_seq(), 3);
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_it_lagged_and_publishers_never_block() {
        let bus = EventBus::new(4);
        let (_, mut rx) = bus.subscribe(true, || {});
        for i in 0..10 {
            bus.publish(inval(&i.to_string()));
        }
        match rx.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert_eq!(n, 6),
            other => panic!("expected lag, got {other:?}"),
        }
        // After the lag the receiver resumes with the oldest kept event.
        assert_eq!(rx.recv().await.unwrap().seq, 7);
    }

    #[tokio::test]
    async fn a_status_subscriber_gets_status_events_numbered_past_the_changes() {
        let bus = EventBus::new(16);
        let mut quiesced = 0;
        let (_, mut status) = bus.subscribe(false, || quiesced += 1);
        {
            let (_, _all) = bus.subscribe(true, || quiesced += 1);
            assert_eq!(bus.inner.listeners.load(Ordering::SeqCst), 1);
        }
        // Only a subscriber that wants invalidations waits for publishers,
        // and it stops counting when dropped.
        assert_eq!(quiesced, 1);
        assert_eq!(bus.inner.listeners.load(Ordering::SeqCst), 0);
        bus.publish(inval("a"));
        bus.publish(inval("b"));
        bus.publish(EventKind::Status(StoreStats::default()));
        let ev = status.recv().await.unwrap();
        assert_eq!(ev.seq, 3);
        assert!(matches!(ev.kind, EventKind::Status(_)));
        assert_eq!(bus.last_seq(), 3);
    }
}
