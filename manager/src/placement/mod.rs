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

pub mod discover;
pub mod etcd;
pub mod handoff;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
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

/// A member's part in the placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Owns its share: read and written.
    Up,
    /// Receiving its share: written, not read, until the hand-off is done.
    Syncing,
    /// Handing its share off: read and written until the hand-off is done,
    /// then removed.
    Leaving,
}

/// One data node in the placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub address: String,
    pub state: MemberState,
}

impl Member {
    /// In the ring reads use (the placement before the change).
    pub fn reads(&self) -> bool {
        matches!(self.state, MemberState::Up | MemberState::Leaving)
    }
    /// In the ring after the change.
    pub fn owns_after(&self) -> bool {
        matches!(self.state, MemberState::Up | MemberState::Syncing)
    }
}

/// The node set; its version is the etcd revision it was stored at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub members: Vec<Member>,
}

/// Why a membership change was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChangeError {
    #[error("no node with id {0:?} in the placement")]
    UnknownId(String),
    #[error("id {id:?} is already used by the node at {address}")]
    IdTaken { id: String, address: String },
    #[error("removing {0:?} would leave no node to own the keys")]
    LastNode(String),
}

impl Placement {
    /// A placement of `members`, all up.
    pub fn of(members: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut members: Vec<Member> = members
            .into_iter()
            .map(|(id, address)| Member {
                id,
                address,
                state: MemberState::Up,
            })
            .collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Self { members }
    }

    /// A hand-off is under way.
    pub fn moving(&self) -> bool {
        self.members.iter().any(|m| m.state != MemberState::Up)
    }

    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Adds node `id` at `address` as syncing. Adding a leaving node takes
    /// it back (the removal is rolled back). Returns whether anything
    /// changed.
    pub fn add(&mut self, id: &str, address: &str) -> Result<bool, ChangeError> {
        if let Some(m) = self.members.iter_mut().find(|m| m.id == id) {
            if m.address != address && m.state != MemberState::Leaving {
                return Err(ChangeError::IdTaken {
                    id: id.to_string(),
                    address: m.address.clone(),
                });
            }
            m.address = address.to_string();
            return Ok(match m.state {
                MemberState::Leaving => {
                    m.state = MemberState::Up;
                    true
                }
                _ => false,
            });
        }
        self.members.push(Member {
            id: id.to_string(),
            address: address.to_string(),
            state: MemberState::Syncing,
        });
        self.members.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(true)
    }

    /// Starts removing node `id`: an up node leaves after handing its share
    /// off; a syncing one (its addition not finished) is dropped at once,
    /// which rolls the addition back (it was never read). Refused when no
    /// node would own the keys afterwards. Returns whether anything
    /// changed.
    pub fn remove(&mut self, id: &str) -> Result<bool, ChangeError> {
        let Some(pos) = self.members.iter().position(|m| m.id == id) else {
            return Err(ChangeError::UnknownId(id.to_string()));
        };
        let state = self.members[pos].state;
        if state == MemberState::Leaving {
            return Ok(false);
        }
        let owners = self
            .members
            .iter()
            .filter(|m| m.owns_after() && m.id != id)
            .count();
        if owners == 0 {
            return Err(ChangeError::LastNode(id.to_string()));
        }
        if state == MemberState::Syncing {
            self.members.remove(pos);
        } else {
            self.members[pos].state = MemberState::Leaving;
        }
        Ok(true)
    }

    /// The placement once the hand-off is done: syncing members up,
    /// leaving ones gone.
    pub fn finished(&self) -> Self {
        Self {
            members: self
                .members
                .iter()
                .filter(|m| m.owns_after())
                .map(|m| Member {
                    state: MemberState::Up,
                    ..m.clone()
                })
                .collect(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings cannot fail to serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A placement read from the store, with its version.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub version: u64,
    pub placement: Placement,
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Placement {
        Placement::of([
            ("a".to_string(), "http://a".to_string()),
            ("b".to_string(), "http://b".to_string()),
            ("c".to_string(), "http://c".to_string()),
        ])
    }

    #[test]
    fn adding_makes_a_syncing_member_that_finishing_brings_up() {
        let mut p = three();
        assert!(!p.moving());
        assert_eq!(p.add("d", "http://d"), Ok(true));
        assert!(p.moving());
        assert_eq!(p.member("d").map(|m| m.state), Some(MemberState::Syncing));
        // Idempotent.
        assert_eq!(p.add("d", "http://d"), Ok(false));
        assert!(matches!(
            p.add("a", "http://x"),
            Err(ChangeError::IdTaken { .. })
        ));
        let done = p.finished();
        assert!(!done.moving());
        assert_eq!(done.members.len(), 4);
    }

    #[test]
    fn removing_leaves_then_drops_and_rolls_back_an_unfinished_addition() {
        let mut p = three();
        assert_eq!(p.remove("b"), Ok(true));
        assert_eq!(p.member("b").map(|m| m.state), Some(MemberState::Leaving));
        assert!(p.member("b").is_some_and(Member::reads));
        assert!(!p.member("b").is_some_and(Member::owns_after));
        assert_eq!(p.finished().members.len(), 2);
        // Taking a leaving node back.
        assert_eq!(p.add("b", "http://b"), Ok(true));
        assert!(!p.moving());
        // Removing a node being added drops it at once.
        p.add("d", "http://d").unwrap();
        assert_eq!(p.remove("d"), Ok(true));
        assert_eq!(p, three());
        assert!(matches!(p.remove("zz"), Err(ChangeError::UnknownId(_))));
    }

    #[test]
    fn the_last_owner_cannot_leave() {
        let mut p = Placement::of([("a".to_string(), "http://a".to_string())]);
        assert!(matches!(p.remove("a"), Err(ChangeError::LastNode(_))));
        // Nor the node replacing a leaving one: no owner would remain.
        p.add("d", "http://d").unwrap();
        assert_eq!(p.remove("a"), Ok(true));
        assert!(matches!(p.remove("d"), Err(ChangeError::LastNode(_))));
        assert_eq!(p.finished().members.len(), 1);
    }

    #[test]
    fn placements_round_trip_as_json() {
        let mut p = three();
        p.add("d", "http://d").unwrap();
        assert_eq!(Placement::decode(&p.encode()).unwrap(), p);
    }
}
