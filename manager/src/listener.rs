//! What the data nodes publish on their event streams, as the manager's
//! listeners receive it (the near cache is one). A module of its own so
//! that the near cache and the cluster depend on it, not on membership.

use ringcache_proto::pb;

/// Receives what the nodes publish (the near cache listens here).
pub trait EventListener: Send + Sync + 'static {
    /// One event from node `node` (index in the cluster).
    fn on_event(&self, node: usize, event: &pb::Event);
    /// Everything learned from `node` must be treated as unknown: its stream
    /// broke, had a gap, lagged, or the node restarted.
    fn on_reset(&self, node: usize);
}

/// Listener that ignores everything.
pub struct NoListener;

impl EventListener for NoListener {
    fn on_event(&self, _: usize, _: &pb::Event) {}
    fn on_reset(&self, _: usize) {}
}
