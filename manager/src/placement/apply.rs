//! Following the placement: routes by a new version once every member node
//! was told it, creates handles (and membership tasks) for new members,
//! retires the nodes that left.

use std::sync::Arc;

use tokio::sync::watch;

use crate::client::NodeClient;
use crate::cluster::Cluster;
use crate::node::NodeHandle;
use crate::placement::model::{Placement, Versioned};
use crate::ring::Ring;
use crate::ring_view::RingView;

impl Cluster {
    /// Routes by placement `p` from now on: creates handles (and membership
    /// tasks) for new members, tells every member node the new version
    /// before routing by it (so that ops routed by the old one are refused
    /// from now on), then installs the rings and retires nodes that left.
    pub async fn apply_placement(self: &Arc<Self>, p: &Versioned) {
        if p.version <= self.view().version {
            return;
        }
        let mut members = Vec::with_capacity(p.placement.members.len());
        for m in &p.placement.members {
            match self.member_node(&m.id, &m.address) {
                Some(i) => members.push(i),
                // Never routed to: a member this manager cannot address is
                // left out of its rings (the others still place its keys
                // there; requests here find its replicas missing).
                None => return,
            }
        }
        let nodes = self.nodes();
        // The old members too: a node that leaves must refuse requests
        // still routed by the placement that had it.
        let mut told = members.clone();
        for &i in &self.view().members {
            if !told.contains(&i) {
                told.push(i);
            }
        }
        let pushes = told.iter().map(|&i| {
            let client = nodes[i].client.clone();
            async move { (i, client.set_placement(p.version).await) }
        });
        for (i, r) in futures::future::join_all(pushes).await {
            if let Err(e) = r {
                tracing::debug!(node = %nodes[i].addr(), error = %e, "placement version not pushed");
            }
        }
        self.install(p, members);
    }

    /// The index of member `id`'s handle, created (with its membership
    /// task) when new.
    fn member_node(self: &Arc<Self>, id: &str, address: &str) -> Option<usize> {
        let uri = crate::config::node_uri(address);
        if let Some(i) = self.index_of(id) {
            // A member the placement moved to a new address gets a new
            // handle there (the old one is retired when the placement is
            // installed); one this manager reaches at an address literal of
            // its own (`--nodes`) keeps it.
            let node = self.node(i);
            if !node.from_placement || node.addr() == uri {
                return Some(i);
            }
        }
        // A `--nodes` entry whose id is not known yet may be this member.
        if let Some(i) = self
            .nodes()
            .iter()
            .position(|n| !n.is_retired() && n.id().is_none() && n.addr() == uri)
        {
            return Some(i);
        }
        let client = match NodeClient::new(&uri, &self.connect) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(%address, error = %e, "placement member has an invalid address; placement not installed");
                return None;
            }
        };
        let mut handle = NodeHandle::with_id(client, Some(id.to_string()));
        handle.from_placement = true;
        let handle = Arc::new(handle);
        let index = {
            let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
            let mut next = (**nodes).clone();
            next.push(handle);
            *nodes = Arc::new(next);
            nodes.len() - 1
        };
        tracing::info!(node = %uri, id, index, "node joined the placement");
        self.start_session(index);
        Some(index)
    }

    fn install(&self, p: &Versioned, members: Vec<usize>) {
        let placement: &Placement = &p.placement;
        let ids: Vec<&str> = placement.members.iter().map(|m| m.id.as_str()).collect();
        let read = Ring::subset(&ids, self.vnodes, |i| placement.members[i].reads());
        let write = Ring::subset(&ids, self.vnodes, |i| placement.members[i].owns_after());
        {
            let mut current = self.view.write().unwrap_or_else(|e| e.into_inner());
            if current.version >= p.version {
                return;
            }
            *current = Arc::new(RingView {
                version: p.version,
                read,
                write,
                members: members.clone(),
                missing: 0,
                moving: placement.moving(),
                placement: Some(placement.clone()),
            });
        }
        for (i, n) in self.nodes().iter().enumerate() {
            if !members.contains(&i) && !n.is_retired() {
                tracing::info!(node = %n.addr(), id = ?n.id(), "node left the placement");
                n.retire();
                // A handle retired for a new address keeps its id in the
                // placement, and its marks.
                match n.id() {
                    Some(id) if !placement.members.iter().any(|m| m.id == id) => {
                        self.forget_marks(id, p.version)
                    }
                    _ => {}
                }
            }
        }
        // A cached value may come from a node that no longer owns its key
        // (later writes go elsewhere): start over.
        if let Some(near) = &self.near {
            near.clear();
        }
        self.installed.send_replace(p.version);
        tracing::info!(version = p.version, members = ?placement.members, "placement installed");
    }

    /// Deletes the dirty marks in etcd about node `id`, which left the
    /// placement at `version` (the placement key's revision), so that etcd
    /// does not keep them for ever. Every manager does it (idempotent); the
    /// copies on the peers die with the peers' memory.
    fn forget_marks(&self, id: String, version: u64) {
        let Some(durable) = self.durable_marks().cloned() else {
            return;
        };
        let before = i64::try_from(version).unwrap_or(i64::MAX);
        tokio::spawn(async move {
            match durable.forget(&id, before).await {
                Ok(0) => {}
                Ok(deleted) => {
                    tracing::info!(node = %id, deleted, "dirty marks of a node that left deleted")
                }
                Err(e) => {
                    tracing::warn!(node = %id, error = %e, "dirty marks of a node that left not deleted")
                }
            }
        });
    }

    /// Waits (bounded by the node timeout) until this manager routes by
    /// placement `version` or newer; false if it did not get there.
    pub(crate) async fn await_placement(&self, version: u64) -> bool {
        self.refresh.notify_one();
        let mut rx = self.installed.subscribe();
        tokio::time::timeout(self.connect.timeout, rx.wait_for(|&v| v >= version))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Changes whenever a new placement version is installed.
    pub fn installed(&self) -> watch::Receiver<u64> {
        self.installed.subscribe()
    }

    pub(crate) async fn refresh_requested(&self) {
        self.refresh.notified().await
    }
}
