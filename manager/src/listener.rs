//! What the data nodes publish on their event streams, as the manager's
//! listeners receive it (the near cache is one). A module of its own so
//! that the near cache and the cluster depend on it, not on membership.

use std::sync::Arc;

use ringcache_proto::pb;
use tokio::time::Instant;

/// Receives what the nodes publish (the near cache listens here).
pub trait EventListener: Send + Sync + 'static {
    /// Whether it needs the invalidation of every write (without any such
    /// listener, nodes send status events alone: less work on both sides).
    fn wants_invalidations(&self) -> bool {
        true
    }
    /// Node `node` answered a lag probe sent at `sent` when its latest
    /// event was `seq` (see [`crate::stream_lag`]).
    fn probed(&self, _node: usize, _seq: u64, _sent: Instant) {}
    /// One event from node `node` (index in the cluster).
    fn on_event(&self, node: usize, event: &pb::Event);
    /// Everything learned from `node` must be treated as unknown: its stream
    /// broke, had a gap, lagged, or the node restarted.
    fn on_reset(&self, node: usize);
}

/// Listener that ignores everything.
pub struct NoListener;

impl EventListener for NoListener {
    fn wants_invalidations(&self) -> bool {
        false
    }
    fn on_event(&self, _: usize, _: &pb::Event) {}
    fn on_reset(&self, _: usize) {}
}

/// Several listeners, each told everything.
pub struct Listeners(pub Vec<Arc<dyn EventListener>>);

impl EventListener for Listeners {
    fn wants_invalidations(&self) -> bool {
        self.0.iter().any(|l| l.wants_invalidations())
    }
    fn probed(&self, node: usize, seq: u64, sent: Instant) {
        for l in &self.0 {
            l.probed(node, seq, sent);
        }
    }
    fn on_event(&self, node: usize, event: &pb::Event) {
        for l in &self.0 {
            l.on_event(node, event);
        }
    }
    fn on_reset(&self, node: usize) {
        for l in &self.0 {
            l.on_reset(node);
        }
    }
}
