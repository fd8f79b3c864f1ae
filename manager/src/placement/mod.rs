//! Placement: which data nodes own keys, in which state, at which version
//! (docs/design/membership.md).
//!
//! - Without `--etcd` the placement is static: the `--nodes` list, version
//!   0, ring built from the ids the nodes report ([`crate::cluster`]).
//! - With `--etcd` it lives in etcd ([`etcd`]): every manager follows it
//!   ([`follow`]), pushes each new version to the data nodes before routing
//!   by it (so a node refuses ops routed by an older one), and the admin API
//!   changes it by compare-and-swap. One elected manager moves the keys
//!   ([`handoff`]).
//! - [`apply`]: a new version in the cluster: handles for new members,
//!   rings installed, the nodes that left retired.

pub mod apply;
pub mod discover;
pub mod etcd;
pub mod handoff;
pub mod model;

pub use model::{ChangeError, Member, MemberState, Placement, Versioned};

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use etcd::{Etcd, EtcdError};

/// etcd key (under the cluster's prefix) of the placement.
pub const PLACEMENT_KEY: &str = "placement";
/// etcd key of the hand-off progress the driving manager publishes.
pub const PROGRESS_KEY: &str = "handoff";
/// etcd key held, under a lease, by the manager that drives hand-offs.
pub const DRIVER_KEY: &str = "driver";
/// etcd prefix of the managers' registry (one leased key each).
pub const MANAGERS: &str = "managers";
/// TTL of a manager's registration: a manager that died stops holding up
/// reads (nodes wait for a lease from every registered manager) this long
/// after its last renewal of it.
const REGISTRATION_TTL: Duration = Duration::from_secs(3);
/// Longest wait, before registering, for leases on every node.
const REGISTER_PATIENCE: Duration = Duration::from_secs(10);
/// How often the registry is pushed to the nodes again.
const REPUSH: Duration = Duration::from_secs(2);

/// Reads the placement from etcd.
pub async fn load(store: &Etcd) -> Result<Option<Versioned>, EtcdError> {
    let Some(stored) = store.get(PLACEMENT_KEY).await? else {
        return Ok(None);
    };
    match Placement::decode(&stored.value) {
        Ok(placement) => Ok(Some(Versioned {
            version: stored.mod_revision as u64,
            placement,
        })),
        Err(e) => {
            tracing::error!(error = %e, "the placement in etcd is not valid JSON; ignored");
            Ok(None)
        }
    }
}

/// Applies `change` to the placement by compare-and-swap, retrying when
/// another manager changed it first. Returns the new (or unchanged)
/// placement.
pub async fn update(
    store: &Etcd,
    change: impl Fn(&mut Placement) -> Result<bool, ChangeError>,
) -> Result<Result<Versioned, ChangeError>, EtcdError> {
    loop {
        let Some(current) = load(store).await? else {
            return Ok(Err(ChangeError::UnknownId(String::new())));
        };
        let mut next = current.placement.clone();
        match change(&mut next) {
            Err(e) => return Ok(Err(e)),
            Ok(false) => return Ok(Ok(current)),
            Ok(true) => {}
        }
        if let Some(rev) = store
            .put_if(PLACEMENT_KEY, next.encode(), current.version as i64, 0)
            .await?
        {
            tracing::info!(version = rev, members = ?next.members, "placement changed");
            return Ok(Ok(Versioned {
                version: rev as u64,
                placement: next,
            }));
        }
    }
}

const RETRY: Duration = Duration::from_millis(200);

/// Follows the placement in etcd until `shutdown`: applies every version
/// to `cluster`. When etcd holds none yet, seeds it from the nodes given
/// with `--nodes`, once their ids are known. Etcd being unreachable stops
/// nothing: routing goes on by the last placement.
pub async fn follow(store: Etcd, cluster: Arc<Cluster>, shutdown: CancellationToken) {
    // Learn the `--nodes` ids first (bounded), so members this manager
    // reaches by an address of its own (another spelling, another route)
    // are matched by id to its own connections.
    let patience = tokio::time::Instant::now() + Duration::from_secs(3);
    while cluster.seed_members().is_none() && tokio::time::Instant::now() < patience {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    loop {
        let round = async {
            let current = match load(&store).await? {
                Some(v) => v,
                None => {
                    seed(&store, &cluster).await?;
                    return Ok::<(), EtcdError>(());
                }
            };
            cluster.apply_placement(&current).await;
            let mut changes = store
                .watch(PLACEMENT_KEY, current.version as i64 + 1)
                .await?;
            loop {
                tokio::select! {
                    change = changes.recv() => {
                        let Some((value, rev)) = change else {
                            return Err(EtcdError::WatchEnded);
                        };
                        let Some(value) = value else {
                            tracing::warn!("the placement was deleted from etcd; keeping the last one");
                            continue;
                        };
                        match Placement::decode(&value) {
                            Ok(placement) => {
                                cluster
                                    .apply_placement(&Versioned { version: rev as u64, placement })
                                    .await
                            }
                            Err(e) => tracing::error!(error = %e, "invalid placement in etcd ignored"),
                        }
                    }
                    _ = cluster.refresh_requested() => {
                        // A node knows a newer version than the watch
                        // brought: read it directly.
                        if let Some(v) = load(&store).await? {
                            cluster.apply_placement(&v).await;
                        }
                    }
                }
            }
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = round => r,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "following the placement in etcd; retrying");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Keeps this manager in the registry of managers (a key under a lease),
/// re-registering when the lease is lost, until `shutdown` (which revokes
/// it). Registration waits for the first placement and a few lease
/// renewals, so that the nodes hold this manager's lease before they
/// start to require it.
pub async fn register(store: Etcd, cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let mut installed = cluster.installed();
    let _ = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = installed.wait_for(|&v| v > 0) => r.is_ok(),
    };
    // Then until this manager has renewed its lease on every node (bounded:
    // a node down now gets renewals once it is back), and one more round.
    let patience = tokio::time::Instant::now() + REGISTER_PATIENCE;
    while !cluster.leases_granted() && tokio::time::Instant::now() < patience {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
    }
    while !shutdown.is_cancelled() {
        let round = async {
            let (lease, lost) = store.lease(REGISTRATION_TTL, shutdown.clone()).await?;
            let key = format!("{MANAGERS}/{}", cluster.me());
            store
                .put_leased(&key, cluster.me().as_bytes().to_vec(), lease)
                .await?;
            // Registered for writes once the nodes were told (by our own
            // follower) that reads need our lease.
            loop {
                if cluster.managers().1.iter().any(|m| m == cluster.me()) {
                    break;
                }
                tokio::select! {
                    _ = lost.cancelled() => return Err(EtcdError::LeaseLost(lease)),
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            cluster.set_registered(true);
            tracing::info!(manager = %cluster.me(), lease, "registered in etcd");
            lost.cancelled().await;
            cluster.set_registered(false);
            Err::<(), _>(EtcdError::LeaseLost(lease))
        };
        if let Err(e) = round.await {
            cluster.set_registered(false);
            if !shutdown.is_cancelled() {
                tracing::warn!(error = %e, "registration in etcd lost; registering again");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Follows the registry of managers and pushes it to the nodes (which then
/// answer consistent reads only with a lease from each).
pub async fn follow_managers(store: Etcd, cluster: Arc<Cluster>, shutdown: CancellationToken) {
    loop {
        let round = async {
            let (values, rev) = store.get_prefix(MANAGERS).await?;
            let mut ids: Vec<String> = values
                .into_iter()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .collect();
            ids.sort();
            cluster.set_managers(rev as u64, ids.clone()).await;
            let mut changes = store.watch_prefix(MANAGERS, rev + 1).await?;
            // Any change: read the whole registry again. Meanwhile the same
            // registry is pushed again now and then, for nodes that missed it.
            loop {
                tokio::select! {
                    _ = changes.recv() => break,
                    _ = tokio::time::sleep(REPUSH) => {
                        cluster.set_managers(rev as u64, ids.clone()).await;
                    }
                }
            }
            Ok::<(), EtcdError>(())
        };
        let r = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = round => r,
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "following the managers' registry; retrying");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}

/// Writes the first placement (the `--nodes` list) unless another manager
/// did first.
async fn seed(store: &Etcd, cluster: &Cluster) -> Result<(), EtcdError> {
    let Some(members) = cluster.seed_members() else {
        // Ids not all known yet: try again shortly.
        tokio::time::sleep(RETRY).await;
        return Ok(());
    };
    if members.is_empty() {
        tokio::time::sleep(RETRY).await;
        return Ok(());
    }
    let p = Placement::of(members);
    if let Some(rev) = store.put_if(PLACEMENT_KEY, p.encode(), 0, 0).await? {
        tracing::info!(version = rev, members = ?p.members, "placement seeded from --nodes");
    }
    Ok(())
}
