//! Read leases and the other managers (docs/design/membership.md,
//! "Partitions"): the registry pushed to the nodes, whether every node was
//! granted this manager's lease, the wait a write that skipped a node makes
//! until the node's lease from us has run out, and the warning when other
//! managers share the nodes without etcd.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use crate::cluster::Cluster;
use crate::node::NodeState;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cluster {
    /// The other managers subscribed to the nodes (their `Stats` list the
    /// subscribers), sorted.
    pub fn other_managers(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .nodes()
            .iter()
            .filter(|n| !n.is_retired())
            .filter_map(|n| n.stats())
            .flat_map(|s| s.subscribers.clone())
            .filter(|id| id != &self.me)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// What an operator should know about this set-up: several managers
    /// without etcd have no read leases, so a partition between one of them
    /// and a node can let another serve values that node missed.
    pub fn warnings(&self) -> Vec<String> {
        if self.managed {
            return Vec::new();
        }
        let others = self.other_managers();
        if others.is_empty() {
            return Vec::new();
        }
        vec![format!(
            "{} other manager(s) use these data nodes ({}), and this manager runs without --etcd: \
             there are no read leases, so a partition between one manager and a node can let \
             another manager read values that node missed. Give every manager the same --etcd \
             (docs/design/membership.md)",
            others.len(),
            others.join(", ")
        )]
    }

    /// Logs [`Cluster::warnings`] the first time there is one.
    pub(crate) fn check_protection(&self, subscribers: &[String]) {
        if self.managed || !subscribers.iter().any(|s| s != &self.me) {
            return;
        }
        if !self.unprotected.swap(true, Ordering::Relaxed) {
            for w in self.warnings() {
                tracing::warn!("{w}");
            }
        }
    }

    /// Records whether this manager is in etcd's registry.
    pub fn set_registered(&self, yes: bool) {
        self.registered.store(yes, Ordering::Release);
    }

    /// Pushes the registered managers at `revision` to every node (older
    /// revisions are ignored, here and by the nodes; the same one again is
    /// harmless, and is how a push a node missed is repeated), then keeps
    /// them: [`Cluster::managers`] names only registries already pushed.
    pub async fn set_managers(&self, revision: u64, managers: Vec<String>) {
        if revision < lock(&self.managers).0 {
            return;
        }
        let nodes = self.nodes();
        let pushes = nodes
            .iter()
            .filter(|n| !n.is_retired())
            .map(|n| n.client.set_managers(revision, managers.clone()));
        futures::future::join_all(pushes).await;
        let mut m = lock(&self.managers);
        if revision > m.0 {
            tracing::info!(revision, ?managers, "registered managers");
        }
        if revision >= m.0 {
            *m = (revision, managers);
        }
    }

    /// Every node of the placement is up here and has been sent a lease
    /// renewal (so nodes can require this manager's lease).
    pub fn leases_granted(&self) -> bool {
        let view = self.view();
        let nodes = self.nodes();
        !view.members.is_empty()
            && view
                .members
                .iter()
                .all(|&i| nodes[i].state() == NodeState::Up && nodes[i].renewed().is_some())
    }

    /// The registered managers, for a node being admitted.
    pub(crate) fn managers(&self) -> (u64, Vec<String>) {
        lock(&self.managers).clone()
    }

    /// Waits until node `index` can no longer hold a read lease from this
    /// manager (it stopped renewing when the node failed).
    pub(crate) async fn await_unleased(&self, index: usize) {
        let Some(lease) = self.lease else { return };
        let renewed = self.node(index).renewed();
        if let Some(at) = renewed {
            tokio::time::sleep_until(tokio::time::Instant::from_std(at + lease)).await;
        }
    }
}
