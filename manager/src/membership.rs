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
    admit(node, previous.as_deref(), &instance).await?;
    record(node, &first);
    listener.on_event(index, &first);
    let mut last_seq = first.seq;
    loop {
        let ev = tokio::select! {
            _ = node.marked_down() => return Ok(()),
            ev = next_event(&mut stream, heartbeat_timeout) => ev?,
        };
        if ev.instance_id != instance {
            return Err(format!("node restarted as instance {}", ev.instance_id));
        }
        if ev.seq != last_seq + 1 {
            tracing::warn!(node = %node.addr(), expected = last_seq + 1, got = ev.seq, "event sequence gap");
            listener.on_reset(index);
        }
        last_seq = ev.seq;
        if let Some(pb::event::Kind::Lagged(l)) = &ev.kind {
            tracing::warn!(node = %node.addr(), missed = l.missed, "lagged behind node events");
            listener.on_reset(index);
        }
        record(node, &ev);
        listener.on_event(index, &ev);
    }
}

/// Makes the node readable. A node that was down, or that is a new instance
/// of a node seen before, may be missing acknowledged writes or hold values
/// that were since overwritten or deleted: it is flushed first.
async fn admit(node: &NodeHandle, previous: Option<&str>, instance: &str) -> Result<(), String> {
    let state = node.state();
    let restarted = previous.is_some_and(|p| p != instance);
    if state == NodeState::Unknown
        && !restarted
        && node.transition(NodeState::Unknown, NodeState::Up)
    {
        return Ok(());
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
        info.node_id = Some(ev.node_id.clone());
        info.instance_id = Some(ev.instance_id.clone());
        if let Some(pb::event::Kind::Status(s)) = &ev.kind {
            if let Some(stats) = &s.stats {
                node.client.learn_epoch(stats.epoch);
            }
            info.stats = s.stats.clone();
        }
    });
}
