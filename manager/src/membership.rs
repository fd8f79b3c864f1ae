//! Membership: one task per data node keeps a `Subscribe` stream open,
//! decides when the node is up or down from its heartbeats, and repairs a
//! node that may have missed writes (or warms up one that restarted empty)
//! before it is read from again (docs/design/consistency.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ringcache_proto::pb;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::durable_marks::StoredMark;
use crate::listener::EventListener;
use crate::node::{NodeHandle, NodeState};
use crate::placement::model::MemberState;

/// Reconnection backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Longest silence of a pull (between progress messages) before it is
/// taken for dead.
const PULL_SILENCE: Duration = Duration::from_secs(30);
/// Longest a repair waits for peers this manager has not reached yet.
const PEER_PATIENCE: Duration = Duration::from_secs(3);
/// Pause before a repair round that a new mark made necessary, doubling
/// up to the maximum.
const REPAIR_PAUSE_MIN: Duration = Duration::from_millis(100);
const REPAIR_PAUSE_MAX: Duration = Duration::from_secs(2);

/// Starts the membership task of every node of `cluster`, and of every
/// node it adds later.
pub fn start(
    cluster: &Arc<Cluster>,
    heartbeat_timeout: Duration,
    listener: Arc<dyn EventListener>,
    shutdown: CancellationToken,
) {
    cluster.start_sessions(Box::new(move |cluster, index| {
        Box::pin(watch(
            cluster,
            index,
            heartbeat_timeout,
            listener.clone(),
            shutdown.clone(),
        ))
    }));
}

/// Watches node `index` until `shutdown` is cancelled.
pub async fn watch(
    cluster: Arc<Cluster>,
    index: usize,
    heartbeat_timeout: Duration,
    listener: Arc<dyn EventListener>,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            o = session(&cluster, index, heartbeat_timeout, &listener) => o,
        };
        listener.on_reset(index);
        match outcome {
            Ok(()) => backoff = BACKOFF_MIN,
            Err(reason) => {
                cluster.missed_writes(index, &reason);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One subscription: connect, learn the node's id, admit or repair it,
/// follow its events. Returns `Ok` when it ended because a request marked the
/// node down (reconnect at once), `Err(reason)` when the node failed.
async fn session(
    cluster: &Arc<Cluster>,
    index: usize,
    heartbeat_timeout: Duration,
    listener: &Arc<dyn EventListener>,
) -> Result<(), String> {
    let node = cluster.node(index);
    // Only a near cache or RESP client tracking needs the invalidation of
    // every write; without them, the node sends status events alone.
    let skip_invalidations = !listener.wants_invalidations();
    let mut stream = node
        .client
        .subscribe(skip_invalidations, cluster.me())
        .await
        .map_err(|e| e.to_string())?;
    let first = next_event(&mut stream, heartbeat_timeout).await?;
    if let Err(e) = cluster.learn_id(index, &first.node_id) {
        tracing::error!(error = %e, "node refused");
        // Another server at the node's old address: look the name up anew.
        node.client.reconnect();
        return Err(e);
    }
    if cluster.managed() {
        // A restarted node forgot the placement version and the registered
        // managers: tell it before it is admitted, so ops routed by an
        // older placement are refused again and reads wait for leases.
        let version = cluster.view().version;
        if version > 0 {
            node.client
                .set_placement(version)
                .await
                .map_err(|e| e.to_string())?;
        }
        let (revision, managers) = cluster.managers();
        if revision > 0 {
            node.client
                .set_managers(revision, managers)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    record(cluster, index, &first);
    listener.on_event(index, &first);
    let mut seq = SequenceCheck::new(&first);
    // Skipped invalidations leave gaps in the numbers: nothing to check.
    seq.gaps = !skip_invalidations;
    // The node is written to at once, and read from once repaired.
    if !node.connected() {
        return Err("left the placement while admitting".into());
    }
    // Leases and near-cache probes for as long as this session lasts.
    let probes = (!skip_invalidations).then(|| listener.clone());
    let renewals = tokio::spawn(renew(cluster.clone(), index, probes));
    let _stop_renewals = AbortOnDrop(renewals);
    // The repair runs beside the event loop, so heartbeats keep being
    // checked (and the event buffer drained) while a large copy goes on.
    let mut task = Box::pin(repair(cluster, index));
    let mut repairing = true;
    loop {
        let ev = tokio::select! {
            _ = node.marked_down() => return Ok(()),
            _ = node.repair_requested(), if !repairing => {
                task.set(repair(cluster, index));
                repairing = true;
                continue;
            }
            r = &mut task, if repairing => {
                repairing = false;
                r?;
                continue;
            }
            ev = next_event(&mut stream, heartbeat_timeout) => ev?,
        };
        follow(&mut seq, index, &ev, listener.as_ref())
            .map_err(|e| format!("{} ({})", e, node.addr()))?;
        record(cluster, index, &ev);
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renewals are sent this often (at most; a quarter of the lease if less).
const RENEW_EVERY: Duration = Duration::from_millis(100);

/// Renews this manager's read lease on node `index` (with a managed
/// placement) and probes how far behind its event stream is (for the
/// staleness bound of `probes`: the near cache, RESP client tracking),
/// while the node is up or syncing here. A node this manager takes for down
/// gets no renewals: its lease runs out, which is what a write that skipped
/// it waits for.
async fn renew(cluster: Arc<Cluster>, index: usize, probes: Option<Arc<dyn EventListener>>) {
    let lease = cluster.lease();
    if lease.is_none() && probes.is_none() {
        return;
    }
    let every = lease.map_or(RENEW_EVERY, |l| RENEW_EVERY.min(l / 4));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tick.tick().await;
        let node = cluster.node(index);
        let Some(heartbeat) = node.info().heartbeat_seq else {
            continue;
        };
        // Only while up here (the lifecycle decides, see `Event::Renewing`).
        if !node.renewing() {
            continue;
        }
        let sent = tokio::time::Instant::now();
        let r = node
            .client
            .renew(cluster.me(), heartbeat, lease.unwrap_or_default())
            .await;
        match r {
            Ok((granted, seq)) => {
                if !granted && lease.is_some() && !warned {
                    warned = true;
                    tracing::warn!(node = %node.addr(), "lease renewal refused: the heartbeat it names is \
                        unknown to the node (is its --heartbeat-interval much longer than --lease?)");
                }
                if let Some(listener) = &probes {
                    listener.probed(index, seq, sent);
                }
            }
            Err(e) => tracing::debug!(node = %node.addr(), error = %e, "lease renewal failed"),
        }
    }
}

/// Follows one subscription's sequence numbers.
pub(crate) struct SequenceCheck {
    instance: String,
    last: u64,
    /// Every event is delivered, so a gap means events were lost.
    gaps: bool,
}

impl SequenceCheck {
    /// Starts after the subscription's first event.
    pub(crate) fn new(first: &pb::Event) -> Self {
        Self {
            instance: first.instance_id.clone(),
            last: first.seq,
            gaps: true,
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
    if seq.gaps && ev.seq != seq.last + 1 {
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

/// Makes node `index` readable: when it may lack writes (it is syncing
/// after a restart, a peer holds a dirty mark for it, or this manager saw it
/// miss writes), copies what it lacks from its peers first. A node with
/// nothing to repair is admitted as it is: starting a manager empties
/// nothing. A node that holds data waits until every peer has answered
/// for its marks: a mark on a peer that is down or stalled may be the
/// only record that the node missed writes (issue 20: with the node
/// stalled, its writes' manager restarted and its peers stalled when it
/// came back, it was admitted untouched and served the old values).
async fn repair(cluster: &Arc<Cluster>, index: usize) -> Result<(), String> {
    let node = cluster.node(index);
    let id = node.id().ok_or("node id unknown")?;
    let mut pause = REPAIR_PAUSE_MIN;
    let mut waited = false;
    loop {
        let state = node.client.stats().await.map_err(|e| e.to_string())?;
        let sync = state.sync.unwrap_or_default();
        let local = node.missed_since();
        let before = peer_marks(cluster, index, &id).await;
        let since = before
            .since()
            .into_iter()
            .chain(local)
            .chain(sync.syncing.then_some(sync.since))
            .min();
        // A fresh instance (since 0) holds nothing a mark could be about.
        if !before.unanswered.is_empty() && since != Some(0) {
            if !waited {
                waited = true;
                tracing::warn!(node = %id, unanswered = ?before.unanswered,
                    "not admitted until these peers answer for their dirty marks");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(REPAIR_PAUSE_MAX);
            continue;
        }
        let Some(since) = since else {
            if missed_during(&node, None) {
                continue;
            }
            return admitted(&node, None);
        };
        let (generation, since) = node
            .client
            .begin_sync(since)
            .await
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let marks = before.marks.len() + before.stored.len();
        tracing::info!(node = %id, since, generation, marks, "repairing");
        copy_from_peers(cluster, index, since).await?;
        for (peer, mark) in &before.marks {
            let _ = cluster
                .node(*peer)
                .client
                .clear_mark(&id, mark.generation)
                .await;
        }
        if let Some(d) = cluster.durable_marks() {
            for mark in &before.stored {
                // A mark left behind starts another round (below).
                let _ = d.clear(mark).await;
            }
        }
        // Every peer must answer for its marks before admission (a fresh
        // instance's round, from 0, excepted): wait for them rather than
        // run the round again (each round drops the ranges shared with a
        // peer that is down, writes taken since included).
        let mut after = peer_marks(cluster, index, &id).await;
        while since > 0 && !after.unanswered.is_empty() {
            if !waited {
                waited = true;
                tracing::warn!(node = %id, unanswered = ?after.unanswered,
                    "not admitted until these peers answer for their dirty marks");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(REPAIR_PAUSE_MAX);
            after = peer_marks(cluster, index, &id).await;
        }
        if !after.none() || missed_during(&node, Some(since)) {
            // A mark came (or stayed) meanwhile, or this manager saw the
            // node miss a write older than this round: another round from
            // it, after a pause that grows (writes of a manager cut off from
            // the node keep marking it; each round scans the peers).
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(REPAIR_PAUSE_MAX);
            continue;
        }
        if node
            .client
            .end_sync(generation)
            .await
            .map_err(|e| e.to_string())?
        {
            tracing::info!(node = %id, elapsed = ?started.elapsed(), "repaired");
            // The round copied every write from `since` on.
            return admitted(&node, Some(since));
        }
    }
}

fn admitted(node: &NodeHandle, local: Option<u64>) -> Result<(), String> {
    if node.synced(local) {
        Ok(())
    } else {
        Err("marked down, or found to miss older writes, while syncing".into())
    }
}

/// A miss this manager recorded while the round ran that the round (from
/// `local`) does not cover: another round is needed before admission.
fn missed_during(node: &NodeHandle, local: Option<u64>) -> bool {
    match (node.missed_since(), local) {
        (None, _) => false,
        (Some(missed), Some(covered)) => missed < covered,
        (Some(_), None) => true,
    }
}

/// The dirty marks about a node that its peers hold.
struct PeerMarks {
    /// Each mark on a peer, with its holder.
    marks: Vec<(usize, pb::DirtyMark)>,
    /// The marks in etcd (with a managed placement).
    stored: Vec<StoredMark>,
    /// Who did not answer (peers' addresses, or etcd): what they hold is
    /// unknown.
    unanswered: Vec<String>,
}

impl PeerMarks {
    fn none(&self) -> bool {
        self.marks.is_empty() && self.stored.is_empty()
    }

    /// The oldest version a mark covers.
    fn since(&self) -> Option<u64> {
        let on_peers = self.marks.iter().map(|m| m.1.since);
        on_peers.chain(self.stored.iter().map(|m| m.since)).min()
    }
}

/// Every dirty mark about `id` held by the other nodes, with the holder,
/// and in etcd; and who of them did not answer.
async fn peer_marks(cluster: &Cluster, index: usize, id: &str) -> PeerMarks {
    let nodes = cluster.nodes();
    // Not the node itself under another handle.
    let peers: Vec<usize> = (0..nodes.len())
        .filter(|&i| i != index && !nodes[i].is_retired() && nodes[i].id().as_deref() != Some(id))
        .collect();
    // A leaving peer (membership needs etcd, which holds every mark too)
    // that does not answer is not waited for: it may be gone for good, and
    // its hand-off may be waiting for this very node to be up (seen in the
    // container test: a scale-down stuck for ever). What only it held is
    // lost either way; the ranges shared with it are dropped by the copy.
    let leaving: Vec<String> = cluster
        .view()
        .placement
        .iter()
        .flat_map(|p| p.members.iter())
        .filter(|m| m.state == MemberState::Leaving)
        .map(|m| m.id.clone())
        .collect();
    let stored = async {
        match cluster.durable_marks() {
            Some(d) => Some(d.list(id).await),
            None => None,
        }
    };
    let (stats, stored) = futures::join!(
        futures::future::join_all(peers.iter().map(|&i| nodes[i].client.stats())),
        stored
    );
    let mut out = PeerMarks {
        marks: Vec::new(),
        stored: Vec::new(),
        unanswered: Vec::new(),
    };
    match stored {
        None => {}
        Some(Ok(stored)) => out.stored = stored,
        Some(Err(e)) => {
            tracing::debug!(node = %id, error = %e, "dirty marks in etcd unread");
            out.unanswered.push("etcd".into());
        }
    }
    for (&i, s) in peers.iter().zip(stats) {
        match s {
            Ok(s) => out.marks.extend(
                s.marks
                    .into_iter()
                    .filter(|m| m.node_id == id)
                    .map(|m| (i, m)),
            ),
            Err(_) if nodes[i].id().is_some_and(|peer| leaving.contains(&peer)) => {
                tracing::info!(node = %id, peer = %nodes[i].addr(),
                    "a leaving peer does not answer: not waited for");
            }
            Err(_) => out.unanswered.push(nodes[i].addr().to_string()),
        }
    }
    out
}

/// Has node `index` pull, from each peer it shares keys with, the entries
/// of the shared ranges with versions from `since` on. A peer that is down
/// cannot give what only it may hold: the shared ranges are dropped from the
/// node instead (misses, never stale reads), unless nothing was missed yet
/// (`since` = 0: the node restarted empty).
async fn copy_from_peers(cluster: &Arc<Cluster>, index: usize, since: u64) -> Result<(), String> {
    let node = cluster.node(index);
    // Which ranges the node shares with whom comes from the placement: a
    // manager that just started may not have it yet (from etcd, or every
    // node's id). With none, the round would copy nothing and admit the
    // node as it is (issue 20: found by
    // compound_faults::a_mark_outlives_the_restart_of_every_peer_that_held_it).
    let mut logged = false;
    loop {
        let view = cluster.view();
        if view.missing == 0 && !view.members.is_empty() {
            break;
        }
        if !logged {
            logged = true;
            tracing::info!(node = %node.addr(), "repair waits for the placement");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A manager that just started has not reached every peer yet: give them
    // a moment, so that a peer merely not contacted yet is not taken for an
    // unreachable one (whose shared ranges would be dropped).
    let patience = tokio::time::Instant::now() + PEER_PATIENCE;
    while cluster
        .nodes()
        .iter()
        .any(|n| !n.is_retired() && n.state() == NodeState::Unknown)
        && tokio::time::Instant::now() < patience
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let view = cluster.view();
    for (peer_index, peer) in cluster.nodes().iter().enumerate() {
        if peer_index == index || peer.is_retired() {
            continue;
        }
        let ranges = view.ranges_with(cluster.replicas(), index, &[peer_index]);
        if ranges.is_empty() {
            continue;
        }
        if since == 0 {
            // A fresh node must not fill from a peer that may lack writes
            // (being repaired, or marked): it would serve that peer's older
            // values, and hand them back to it if the peer's repair then
            // copies from it in full. It waits for that repair, which does
            // not wait for it.
            await_trusted(cluster, peer_index).await?;
        }
        // Down in this manager's view is not enough to call the peer
        // unreachable: this manager may merely not have reconnected to it
        // yet (its own network just came back). Dropping the shared ranges
        // then loses keys, and the peer's own repair copies the loss.
        if !peer.writable() && !reachable_soon(peer).await {
            if since > 0 {
                let dropped = node
                    .client
                    .prune(ranges, view.version)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::warn!(node = %node.addr(), peer = %peer.addr(), dropped,
                    "peer unreachable: dropped the shared ranges rather than serve them stale");
            }
            continue;
        }
        let mut progress = node
            .client
            .pull(peer.addr(), ranges, since, view.version)
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match tokio::time::timeout(PULL_SILENCE, progress.message()).await {
                Err(_) => return Err(format!("pull from {} went silent", peer.addr())),
                Ok(Err(status)) => {
                    return Err(format!("pull from {} failed: {status}", peer.addr()))
                }
                Ok(Ok(None)) => return Err(format!("pull from {} ended early", peer.addr())),
                Ok(Ok(Some(p))) if p.done => {
                    tracing::info!(node = %node.addr(), peer = %peer.addr(), keys = p.keys_copied,
                        bytes = p.bytes_copied, full = p.full, "pulled");
                    break;
                }
                Ok(Ok(Some(_))) => {}
            }
        }
    }
    Ok(())
}

/// Longest a repair waits for a peer this manager takes for down before
/// calling it unreachable (and dropping the ranges shared with it).
const UNREACHABLE_PATIENCE: Duration = Duration::from_secs(5);

/// Whether `peer` answers, now or within [`UNREACHABLE_PATIENCE`]: it is
/// taken for up again here, or answers a `Stats` call.
async fn reachable_soon(peer: &NodeHandle) -> bool {
    let deadline = tokio::time::Instant::now() + UNREACHABLE_PATIENCE;
    loop {
        if peer.writable() || peer.client.stats().await.is_ok() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Longest a warm-up waits for a peer's repair before giving up (and
/// being tried again).
const TRUST_PATIENCE: Duration = Duration::from_secs(60);

/// Waits until node `index` can be copied from by a fresh node: it is a
/// fresh instance itself (it only ever copied from such nodes), or it is
/// not being repaired and no node lists a dirty mark for it. A node this
/// manager cannot ask is not waited for (the caller finds it unreachable).
async fn await_trusted(cluster: &Cluster, index: usize) -> Result<(), String> {
    let nodes = cluster.nodes();
    let peer = &nodes[index];
    let Some(id) = peer.id() else { return Ok(()) };
    let deadline = tokio::time::Instant::now() + TRUST_PATIENCE;
    let mut logged = false;
    loop {
        let Ok(stats) = peer.client.stats().await else {
            return Ok(());
        };
        let sync = stats.sync.unwrap_or_default();
        // A fresh instance holds only writes it took and copies from
        // trusted peers, whatever marks say about the instance before it
        // (two fresh nodes must not wait for each other).
        if sync.syncing && sync.since == 0 {
            return Ok(());
        }
        // A peer that does not answer is not waited for here (a warm-up
        // with one node down must go on); the source's own admission
        // waited for every peer.
        if !sync.syncing && peer_marks(cluster, index, &id).await.none() {
            return Ok(());
        }
        if !logged {
            logged = true;
            tracing::info!(peer = %peer.addr(), "warm-up waits for the peer's repair before copying from it");
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "peer {} still lacks writes after {TRUST_PATIENCE:?}",
                peer.addr()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
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

/// Keeps what the node says about itself, moves this manager's clock past
/// the node's, and acts on the dirty marks it holds: a node another manager
/// saw miss writes stops being read here until it is repaired.
fn record(cluster: &Cluster, index: usize, ev: &pb::Event) {
    let node = cluster.node(index);
    let stats = match &ev.kind {
        Some(pb::event::Kind::Status(pb::Status { stats: Some(s) })) => Some(s),
        _ => None,
    };
    node.update_info(|info| {
        info.last_event = Some(Instant::now());
        if stats.is_some() {
            info.heartbeat_seq = Some(ev.seq);
        }
        if !ev.instance_id.is_empty() {
            info.instance_id = Some(ev.instance_id.clone());
        }
        if let Some(s) = stats {
            info.stats = Some(std::sync::Arc::new(s.clone()));
        }
    });
    let Some(s) = stats else { return };
    cluster.observe(index, s.clock);
    cluster.check_protection(&s.subscribers);
    cluster.heartbeat(index, s.sync.as_ref().is_some_and(|y| y.syncing));
    for m in &s.marks {
        if let Some(i) = cluster.index_of(&m.node_id) {
            cluster.needs_repair(i);
        }
    }
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
            crate::client::Found {
                value: Bytes::from_static(b"1"),
                version: 1,
            },
            0,
            10,
            None,
            near.generation("a"),
        );
        near.fill(
            "b",
            crate::client::Found {
                value: Bytes::from_static(b"2"),
                version: 1,
            },
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
            crate::client::Found {
                value: Bytes::from_static(b"1"),
                version: 1,
            },
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
