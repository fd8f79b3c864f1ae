//! The node's event bus: every change to the store and every status
//! heartbeat, numbered in one per-instance sequence and fanned out to all
//! subscribers through a bounded `tokio::sync::broadcast` channel.
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
    tx: broadcast::Sender<NodeEvent>,
    // The sequence is assigned and the event sent under one lock, so every
    // subscriber receives events in sequence order with no holes except the
    // ones `Lagged` reports.
    seq: Mutex<u64>,
    // Mirror of `seq` for readers that only need the latest number.
    published: AtomicU64,
}

impl EventBus {
    /// A bus that keeps up to `capacity` undelivered events per subscriber.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            inner: Arc::new(BusInner {
                tx,
                seq: Mutex::new(0),
                published: AtomicU64::new(0),
            }),
        }
    }

    /// Publishes one event and returns its sequence number. Never blocks on
    /// subscribers.
    pub fn publish(&self, kind: EventKind) -> u64 {
        let mut seq = lock(&self.inner.seq);
        *seq += 1;
        let n = *seq;
        self.inner.published.store(n, Ordering::Release);
        if self.inner.tx.receiver_count() > 0 {
            // An error only means nobody is listening right now.
            let _ = self.inner.tx.send(NodeEvent { seq: n, kind });
        }
        n
    }

    /// Sequence number of the latest published event.
    pub fn last_seq(&self) -> u64 {
        self.inner.published.load(Ordering::Acquire)
    }

    /// A new subscription and the sequence number it starts after: the
    /// receiver sees exactly the events numbered above it.
    pub fn subscribe(&self) -> (u64, broadcast::Receiver<NodeEvent>) {
        let seq = lock(&self.inner.seq);
        (*seq, self.inner.tx.subscribe())
    }

    /// Number of live subscriptions.
    pub fn subscribers(&self) -> usize {
        self.inner.tx.receiver_count()
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
        let (start, mut rx) = bus.subscribe();
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
        let (_, mut rx) = bus.subscribe();
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
}
