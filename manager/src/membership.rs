//! Membership: one task per data node keeps a `Subscribe` stream open,
//! decides when the node is up or down from its heartbeats, and flushes a
//! node that comes back before it is read from again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ringcache_proto::pb;
use tokio_util::sync::CancellationToken;

use crate::cluster::{NodeHandle, NodeState};

/// Reconnection backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

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

/// Watches node `index` until `shutdown` is cancelled.
pub async fn watch(
    index: usize,
    node: Arc<NodeHandle>,
    heartbeat_timeout: Duration,
    listener: Arc<dyn EventListener>,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            o = session(index, &node, heartbeat_timeout, listener.as_ref()) => o,
        };
        listener.on_reset(index);
        match outcome {
            Ok(()) => backoff = BACKOFF_MIN,
            Err(reason) => {
                node.mark_down(&reason);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One subscription: connect, (re)admit the node, follow its events. Returns
/// `Ok` when it ended because a request marked the node down (reconnect at
/// once), `Err(reason)` when the node failed.
async fn session(
    index: usize,
    node: &NodeHandle,
    heartbeat_timeout: Duration,
    listener: &dyn EventListener,
) -> Result<(), String> {
    let mut stream = node.client.subscribe().await.map_err(|e| e.to_string())?;
    let first = next_event(&mut stream, heartbeat_timeout).await?;
    let instance = first.instance_id.clone();
    let previous = node.info().instance_id;
    let epoch = match &first.kind {
        Some(pb::event::Kind::Status(pb::Status { stats: Some(s) })) => s.epoch,
        _ => 0,
    };
    record(node, &first);
    admit(node, previous.as_deref(), &instance, epoch).await?;
    listener.on_event(index, &first);
    let mut seq = SequenceCheck::new(&first);
    loop {
        let ev = tokio::select! {
            _ = node.marked_down() => return Ok(()),
            ev = next_event(&mut stream, heartbeat_timeout) => ev?,
        };
        follow(&mut seq, index, &ev, listener).map_err(|e| format!("{} ({})", e, node.addr()))?;
        record(node, &ev);
    }
}

/// Follows one subscription's sequence numbers.
pub(crate) struct SequenceCheck {
    instance: String,
    last: u64,
}

impl SequenceCheck {
    /// Starts after the subscription's first event.
    pub(crate) fn new(first: &pb::Event) -> Self {
        Self {
            instance: first.instance_id.clone(),
            last: first.seq,
        }
    }
}

/// Passes one event to `listener`, first telling it to forget what it
/// learned from the node if the event shows that events were lost: a gap in
/// the sequence, or a `Lagged` notice. A different instance id ends the
/// subscription (the node restarted and must be readmitted).
pub(crate) fn follow(
    seq: &mut SequenceCheck,
    index: usize,
    ev: &pb::Event,
    listener: &dyn EventListener,
) -> Result<(), String> {
    if !ev.instance_id.is_empty() && ev.instance_id != seq.instance {
        listener.on_reset(index);
        return Err(format!("node restarted as instance {}", ev.instance_id));
    }
    if ev.seq != seq.last + 1 {
        tracing::warn!(
            node = index,
            expected = seq.last + 1,
            got = ev.seq,
            "event sequence gap"
        );
        listener.on_reset(index);
    }
    if let Some(pb::event::Kind::Lagged(l)) = &ev.kind {
        tracing::warn!(node = index, missed = l.missed, "lagged behind node events");
        listener.on_reset(index);
    }
    seq.last = ev.seq;
    listener.on_event(index, ev);
    Ok(())
}

/// Makes the node readable. A node seen for the first time, one that was
/// down, or a new instance of a node seen before may be missing acknowledged
/// writes (of this manager, of another one, or of this one before it
/// restarted) or hold values since overwritten or deleted: it is flushed
/// first. So a manager that starts empties the nodes it admits.
async fn admit(
    node: &NodeHandle,
    previous: Option<&str>,
    instance: &str,
    epoch: u64,
) -> Result<(), String> {
    let state = node.state();
    let restarted = previous.is_some_and(|p| p != instance);
    if restarted || state == NodeState::Unknown {
        // Epochs belong to an instance: adopt the new one's outright.
        node.client.reset_epoch(epoch);
    }
    if state == NodeState::Up && !restarted {
        return Ok(());
    }
    let from = node.state();
    if from != NodeState::Joining && !node.transition(from, NodeState::Joining) {
        return Err("state changed while admitting".into());
    }
    let removed = node
        .client
        .flush()
        .await
        .map_err(|e| format!("flush before rejoin failed: {e}"))?;
    tracing::info!(node = %node.addr(), removed, instance, "flushed before rejoin");
    // The subscription's first status predates the flush: refresh it so that
    // /cluster does not show the flushed entries until the next heartbeat.
    if let Ok(stats) = node.client.stats().await {
        node.update_info(|info| info.stats = Some(stats));
    }
    if node.transition(NodeState::Joining, NodeState::Up) {
        Ok(())
    } else {
        Err("marked down while rejoining".into())
    }
}

async fn next_event(
    stream: &mut tonic::Streaming<pb::Event>,
    timeout: Duration,
) -> Result<pb::Event, String> {
    match tokio::time::timeout(timeout, stream.message()).await {
        Err(_) => Err(format!("no event for {timeout:?}")),
        Ok(Err(status)) => Err(format!("event stream failed: {status}")),
        Ok(Ok(None)) => Err("event stream ended".into()),
        Ok(Ok(Some(ev))) => Ok(ev),
    }
}

fn record(node: &NodeHandle, ev: &pb::Event) {
    node.update_info(|info| {
        info.last_event = Some(Instant::now());
        if !ev.instance_id.is_empty() && info.instance_id.as_deref() != Some(&ev.instance_id) {
            info.node_id = Some(ev.node_id.clone());
            info.instance_id = Some(ev.instance_id.clone());
        }
        if let Some(pb::event::Kind::Status(s)) = &ev.kind {
            if let Some(stats) = &s.stats {
                node.client.learn_epoch(stats.epoch);
            }
            info.stats = s.stats.clone();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::near_cache::NearCache;
    use bytes::Bytes;

    fn ev(seq: u64, instance: &str, kind: pb::event::Kind) -> pb::Event {
        pb::Event {
            seq,
            node_id: "n".into(),
            instance_id: instance.into(),
            kind: Some(kind),
        }
    }

    fn status(seq: u64) -> pb::Event {
        ev(
            seq,
            "i1",
            pb::event::Kind::Status(pb::Status { stats: None }),
        )
    }

    /// As on the wire: invalidations carry no instance id.
    fn set(seq: u64, key: &str) -> pb::Event {
        ev(
            seq,
            "",
            pb::event::Kind::Invalidation(pb::Invalidation {
                key: key.into(),
                cause: pb::Cause::Set as i32,
            }),
        )
    }

    /// A near cache following node 0's stream, holding "a" from node 0 and
    /// "b" from node 1.
    fn primed() -> (NearCache, SequenceCheck) {
        let near = NearCache::new(1 << 20, 2);
        let first = status(10);
        near.on_event(0, &first);
        near.on_event(1, &status(1));
        near.fill(
            "a",
            Bytes::from_static(b"1"),
            0,
            10,
            None,
            near.generation("a"),
        );
        near.fill(
            "b",
            Bytes::from_static(b"2"),
            1,
            1,
            None,
            near.generation("b"),
        );
        (near, SequenceCheck::new(&first))
    }

    #[test]
    fn consecutive_events_keep_the_near_cache() {
        let (near, mut seq) = primed();
        follow(&mut seq, 0, &status(11), &near).unwrap();
        follow(&mut seq, 0, &set(12, "other"), &near).unwrap();
        assert!(near.get("a").is_some());
    }

    #[test]
    fn a_gap_drops_what_that_node_served() {
        let (near, mut seq) = primed();
        // Event 11 never arrived.
        follow(&mut seq, 0, &status(12), &near).unwrap();
        assert!(near.get("a").is_none());
        assert!(near.get("b").is_some(), "other nodes' entries stay");
    }

    #[test]
    fn a_lag_notice_drops_what_that_node_served() {
        let (near, mut seq) = primed();
        let lagged = ev(14, "i1", pb::event::Kind::Lagged(pb::Lagged { missed: 4 }));
        // The lag notice carries the number of the last missed event, so it
        // is no gap by itself; the notice is what resets.
        follow(&mut seq, 0, &lagged, &near).unwrap();
        assert!(near.get("a").is_none());
        // After the notice the stream goes on from the next number.
        near.fill(
            "a",
            Bytes::from_static(b"1"),
            0,
            14,
            None,
            near.generation("a"),
        );
        follow(&mut seq, 0, &status(15), &near).unwrap();
        assert!(near.get("a").is_some());
    }

    #[test]
    fn a_new_instance_ends_the_subscription_and_resets() {
        let (near, mut seq) = primed();
        let restarted = ev(1, "i2", pb::event::Kind::Status(pb::Status { stats: None }));
        assert!(follow(&mut seq, 0, &restarted, &near).is_err());
        assert!(near.get("a").is_none());
    }
}
