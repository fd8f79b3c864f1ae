//! Hand-off: after a placement change, copies the keys whose replica sets
//! gain a node to that node, then publishes the finished placement
//! (docs/design/membership.md).
//!
//! One manager drives it: the one holding the `driver` key in etcd under
//! a lease (etcd's own election primitive), so two managers never copy the
//! same ranges twice; if it dies the lease expires and another takes over.
//! Each step is idempotent (entries carry versions), so a hand-off cut off
//! anywhere is simply planned and run again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringcache_proto::pb;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::etcd::{Etcd, EtcdError};
use super::{DRIVER_KEY, PLACEMENT_KEY, PROGRESS_KEY};
use crate::cluster::Cluster;
use crate::node::NodeState;
use crate::ring::arcs_where_both;
use crate::ring_view::RingView;

/// Lease of the driver key: how long a dead driver holds up hand-offs.
const LEASE_TTL: Duration = Duration::from_secs(3);
const RETRY: Duration = Duration::from_secs(1);
/// Longest silence of a pull before it is taken for dead.
const PULL_SILENCE: Duration = Duration::from_secs(30);
/// How often progress is published while copying.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);
/// Longest wait for a new owner to be up in this manager before finishing.
const SETTLE: Duration = Duration::from_secs(10);
/// Longest wait for this manager to install the placement it published.
const INSTALL_PATIENCE: Duration = Duration::from_secs(30);

/// What `/cluster` shows about the hand-off under way (or the last one).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The placement version being handed off to.
    pub version: u64,
    pub done: bool,
    pub keys_moved: u64,
    pub bytes_moved: u64,
    /// Entries still to scan on the sources.
    pub remaining: u64,
    pub bytes_per_second: f64,
    pub elapsed_ms: u64,
    /// The last failure, if the hand-off is being retried.
    pub error: Option<String>,
    /// Which manager drives it.
    pub driver: String,
}

/// Elects this manager as the hand-off driver when it can, and drives
/// hand-offs while it is, until `shutdown`.
pub async fn drive(store: Etcd, cluster: Arc<Cluster>, me: String, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let elected = async {
            let (lease, lost) = store.lease(LEASE_TTL, shutdown.clone()).await?;
            loop {
                if store
                    .put_if(DRIVER_KEY, me.clone().into_bytes(), 0, lease)
                    .await?
                    .is_some()
                {
                    break;
                }
                tokio::select! {
                    _ = lost.cancelled() => return Err(EtcdError::LeaseLost(lease)),
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
            tracing::info!(manager = %me, "driving hand-offs");
            tokio::select! {
                _ = lost.cancelled() => Err(EtcdError::LeaseLost(lease)),
                () = run(&store, &cluster, &me) => Ok(()),
            }
        };
        let r = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = elected => r,
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "hand-off driver: lost or could not take the lead");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Drives every hand-off, one placement version at a time, for ever.
async fn run(store: &Etcd, cluster: &Arc<Cluster>, me: &str) {
    let mut installed = cluster.installed();
    // New owners already cleared for a version: a retry must not drop
    // what writes brought them since (a write that reached only them).
    let mut pruned: HashSet<(u64, usize, String)> = HashSet::new();
    loop {
        let view = cluster.view();
        pruned.retain(|p| p.0 >= view.version);
        if view.version == 0 || !view.moving() {
            let _ = tokio::time::timeout(RETRY, installed.changed()).await;
            continue;
        }
        // Work only from the placement etcd holds now: a driver whose view
        // is behind (its follower has not installed the newest yet) would
        // drop ranges from nodes that own them under the newest.
        match super::load(store).await {
            Ok(Some(current)) if current.version == view.version => {}
            _ => {
                let _ = tokio::time::timeout(RETRY, installed.changed()).await;
                continue;
            }
        }
        let progress = Arc::new(Mutex::new(Progress {
            version: view.version,
            driver: me.to_string(),
            ..Progress::default()
        }));
        let started = Instant::now();
        let r = {
            let publish = publish_while(store, &progress, started);
            tokio::select! {
                r = hand_off(cluster, &view, &progress, &mut pruned) => r,
                () = publish => Ok(()),
            }
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, version = view.version, "hand-off failed; retrying");
            update(&progress, started, |p| p.error = Some(e.clone()));
            publish(store, &progress).await;
            let _ = tokio::time::timeout(RETRY, installed.changed()).await;
            continue;
        }
        let finished = view
            .placement
            .as_ref()
            .map(|p| p.finished())
            .unwrap_or_default();
        if finished.members.is_empty() {
            tracing::error!(
                version = view.version,
                "refusing to publish a placement with no node"
            );
            let _ = tokio::time::timeout(RETRY, installed.changed()).await;
            continue;
        }
        match store
            .put_if(PLACEMENT_KEY, finished.encode(), view.version as i64, 0)
            .await
        {
            Ok(Some(rev)) => {
                tracing::info!(from = view.version, to = rev, elapsed = ?started.elapsed(),
                    "hand-off done; placement finished");
                update(&progress, started, |p| p.done = true);
                publish(store, &progress).await;
                // Plan nothing more until this manager routes by the
                // finished placement (or a newer one).
                let _ = tokio::time::timeout(
                    INSTALL_PATIENCE,
                    installed.wait_for(|&v| v >= rev as u64),
                )
                .await;
            }
            Ok(None) => {
                tracing::info!("placement changed during the hand-off; planning again");
                let _ = tokio::time::timeout(RETRY, installed.changed()).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not publish the finished placement");
                update(&progress, started, |p| p.error = Some(e.to_string()));
                publish(store, &progress).await;
                let _ = tokio::time::timeout(RETRY, installed.changed()).await;
            }
        }
    }
}

fn update(progress: &Mutex<Progress>, started: Instant, f: impl FnOnce(&mut Progress)) {
    let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
    p.elapsed_ms = started.elapsed().as_millis() as u64;
    let secs = started.elapsed().as_secs_f64();
    if secs > 0.0 {
        p.bytes_per_second = p.bytes_moved as f64 / secs;
    }
    f(&mut p);
}

async fn publish(store: &Etcd, progress: &Mutex<Progress>) {
    let p = progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Ok(json) = serde_json::to_vec(&p) {
        if let Err(e) = store.put(PROGRESS_KEY, json).await {
            tracing::debug!(error = %e, "hand-off progress not published");
        }
    }
}

/// Publishes progress every `PUBLISH_EVERY`; never returns.
async fn publish_while(store: &Etcd, progress: &Mutex<Progress>, started: Instant) {
    loop {
        update(progress, started, |_| {});
        publish(store, progress).await;
        tokio::time::sleep(PUBLISH_EVERY).await;
    }
}

/// One copy of the plan: node `to` pulls `ranges` from node `from`.
struct Pull {
    to: usize,
    from: usize,
    ranges: Vec<pb::HashRange>,
}

/// For every node that gains keys under `view`'s new ring, the ranges it
/// gains, from every old owner this manager sees up: an acknowledged write
/// may have reached only some of them (one was failing), and versions keep
/// the newest of the copies.
fn plan(cluster: &Cluster, view: &RingView) -> Result<Vec<Pull>, String> {
    let n = cluster.replicas();
    let nodes = cluster.nodes();
    let up = |r: usize| nodes[view.members[r]].state() == NodeState::Up;
    let source = |old: &[usize]| old.iter().copied().find(|&r| up(r));
    let mut pulls = Vec::new();
    for to in 0..view.members.len() {
        let gains = |old: &[usize], new: &[usize]| new.contains(&to) && !old.contains(&to);
        if arcs_where_both(&view.read, &view.write, n, gains).is_empty() {
            continue;
        }
        let orphaned = arcs_where_both(&view.read, &view.write, n, |o, w| {
            gains(o, w) && source(o).is_none()
        });
        if !orphaned.is_empty() {
            return Err(format!(
                "no old owner of some of {}'s new ranges is up",
                nodes[view.members[to]].addr()
            ));
        }
        for from in 0..view.members.len() {
            let ranges: Vec<pb::HashRange> = arcs_where_both(&view.read, &view.write, n, |o, w| {
                gains(o, w) && o.contains(&from) && up(from)
            })
            .into_iter()
            .map(|(start, end)| pb::HashRange { start, end })
            .collect();
            if !ranges.is_empty() {
                pulls.push(Pull {
                    to: view.members[to],
                    from: view.members[from],
                    ranges,
                });
            }
        }
    }
    Ok(pulls)
}

/// Copies every gained range to its new owner. Each new owner first drops
/// what it holds in the ranges it gains: copies left from an earlier time it
/// owned them may be older than what was since evicted elsewhere, and the
/// pull that follows brings the current entries (writes have gone to it
/// since the placement was installed, and to the sources too).
async fn hand_off(
    cluster: &Cluster,
    view: &RingView,
    progress: &Mutex<Progress>,
    pruned: &mut HashSet<(u64, usize, String)>,
) -> Result<(), String> {
    let pulls = plan(cluster, view)?;
    let nodes = cluster.nodes();
    let started = Instant::now();
    let mut targets: Vec<usize> = pulls.iter().map(|p| p.to).collect();
    targets.sort_unstable();
    targets.dedup();
    // The instance each new owner runs now: one that restarts before the
    // end lost what it was given, and the hand-off runs again.
    let mut instances = Vec::new();
    for &t in &targets {
        let stats = nodes[t].client.stats().await.map_err(|e| e.to_string())?;
        instances.push(stats.instance_id.clone());
        if !pruned.insert((view.version, t, stats.instance_id)) {
            continue;
        }
        let mut gained: Vec<pb::HashRange> = pulls
            .iter()
            .filter(|p| p.to == t)
            .flat_map(|p| p.ranges.iter().cloned())
            .collect();
        gained.sort_by_key(|r| (r.start, r.end));
        gained.dedup();
        let dropped = nodes[t]
            .client
            .prune(gained, view.version)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(node = %nodes[t].addr(), dropped, "new owner cleared its gained ranges");
    }
    // All at once: each source throttles its own scans (--sync-rate), so
    // pulls from different sources proceed side by side.
    let counts: Vec<Mutex<(u64, u64, u64)>> = pulls.iter().map(|_| Mutex::new((0, 0, 0))).collect();
    let report = |k: usize, c: (u64, u64, u64)| {
        *counts[k].lock().unwrap_or_else(|e| e.into_inner()) = c;
        let total = counts.iter().fold((0, 0, 0), |t, c| {
            let c = *c.lock().unwrap_or_else(|e| e.into_inner());
            (t.0 + c.0, t.1 + c.1, t.2 + c.2)
        });
        update(progress, started, |p| {
            (p.keys_moved, p.bytes_moved, p.remaining) = total;
        });
    };
    let nodes_ref = &nodes;
    let runs = pulls.iter().enumerate().map(|(k, pull)| {
        let report = &report;
        let nodes = nodes_ref;
        async move {
            let (to, from) = (&nodes[pull.to], &nodes[pull.from]);
            tracing::info!(to = %to.addr(), from = %from.addr(), ranges = pull.ranges.len(), "hand-off pull");
            let mut stream = to
                .client
                .pull(from.addr(), pull.ranges.clone(), 0, view.version)
                .await
                .map_err(|e| format!("pull to {} from {}: {e}", to.addr(), from.addr()))?;
            loop {
                let msg = match tokio::time::timeout(PULL_SILENCE, stream.message()).await {
                    Err(_) => return Err(format!("pull to {} went silent", to.addr())),
                    Ok(Err(status)) => return Err(format!("pull to {} failed: {status}", to.addr())),
                    Ok(Ok(None)) => return Err(format!("pull to {} ended early", to.addr())),
                    Ok(Ok(Some(p))) => p,
                };
                let left = if msg.done { 0 } else { msg.to_scan.saturating_sub(msg.scanned) };
                report(k, (msg.keys_copied, msg.bytes_copied, left));
                if msg.done {
                    return Ok(());
                }
            }
        }
    });
    for r in futures::future::join_all(runs).await {
        r?;
    }
    let (keys, bytes) = {
        let p = progress.lock().unwrap_or_else(|e| e.into_inner());
        (p.keys_moved, p.bytes_moved)
    };
    // Done only if every new owner is still the process that was given its
    // share, and is up (repaired of anything it missed) in this manager.
    let deadline = Instant::now() + SETTLE;
    for (&t, instance) in targets.iter().zip(&instances) {
        let node = &nodes[t];
        let stats = node.client.stats().await.map_err(|e| e.to_string())?;
        if &stats.instance_id != instance {
            return Err(format!("{} restarted during the hand-off", node.addr()));
        }
        while node.state() != NodeState::Up {
            if Instant::now() > deadline {
                return Err(format!("{} is not up", node.addr()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tracing::info!(keys, bytes, elapsed = ?started.elapsed(), "hand-off copied");
    Ok(())
}

/// The progress the driving manager last published, for `/cluster`.
pub async fn published(store: &Etcd) -> Option<Progress> {
    let stored = store.get(PROGRESS_KEY).await.ok()??;
    serde_json::from_slice(&stored.value).ok()
}
