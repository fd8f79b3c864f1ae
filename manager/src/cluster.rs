//! The cluster as the manager sees it: the data nodes, their health, and the
//! routing of each request to the key's replicas on the ring.
//!
//! Consistency rule (see the README): a node that may have missed an
//! acknowledged write or delete (it was down, a call to it failed, or it
//! restarted) is never read from again until it has been flushed. So every
//! readable replica holds either the latest acknowledged value of a key or
//! nothing, and a read can fall through from one replica's miss to the next.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringcache_proto::pb;
use serde::Serialize;
use tokio::sync::Notify;

use crate::client::{CallError, NodeClient};
use crate::near_cache::NearCache;
use crate::ring::Ring;

/// A node's state in this manager's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum NodeState {
    /// Not admitted yet. Another manager (or this one before a restart) may
    /// have acknowledged writes it missed: neither read nor written until
    /// admitted through a flush.
    Unknown = 0,
    Up = 1,
    /// Unreachable or failed a call: not read from, not written to.
    Down = 2,
    /// Back from down and being flushed: written to, not read from.
    Joining = 3,
}

impl NodeState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Unknown,
            1 => Self::Up,
            2 => Self::Down,
            _ => Self::Joining,
        }
    }
}

/// What the node last told us about itself.
#[derive(Debug, Default, Clone)]
pub struct NodeInfo {
    pub node_id: Option<String>,
    pub instance_id: Option<String>,
    pub last_event: Option<Instant>,
    pub stats: Option<pb::StatsResponse>,
}

/// One data node: its client, its state and what it reported.
pub struct NodeHandle {
    pub client: NodeClient,
    state: AtomicU8,
    info: Mutex<NodeInfo>,
    /// Wakes the node's membership task when a request marks it down.
    down: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl NodeHandle {
    pub fn new(client: NodeClient) -> Self {
        Self {
            client,
            state: AtomicU8::new(NodeState::Unknown as u8),
            info: Mutex::new(NodeInfo::default()),
            down: Notify::new(),
        }
    }

    pub fn addr(&self) -> &str {
        self.client.addr()
    }

    pub fn state(&self) -> NodeState {
        NodeState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn readable(&self) -> bool {
        self.state() == NodeState::Up
    }

    pub fn writable(&self) -> bool {
        matches!(self.state(), NodeState::Up | NodeState::Joining)
    }

    pub fn info(&self) -> NodeInfo {
        lock(&self.info).clone()
    }

    pub(crate) fn update_info(&self, f: impl FnOnce(&mut NodeInfo)) {
        f(&mut lock(&self.info));
    }

    /// Takes the node out of reads and writes until it has been flushed.
    pub fn mark_down(&self, reason: &str) {
        let prev = NodeState::from_u8(self.state.swap(NodeState::Down as u8, Ordering::AcqRel));
        if prev != NodeState::Down {
            tracing::warn!(node = %self.addr(), from = ?prev, reason, "node down");
            self.down.notify_one();
        }
    }

    /// Moves `from` → `to` unless someone changed the state meanwhile (a
    /// node marked down while it was being flushed must stay down).
    pub(crate) fn transition(&self, from: NodeState, to: NodeState) -> bool {
        let ok = self
            .state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if ok && from != to {
            tracing::info!(node = %self.addr(), ?from, ?to, "node state changed");
        }
        ok
    }

    pub(crate) async fn marked_down(&self) {
        self.down.notified().await
    }
}

/// Why the cluster could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no replica of the key is reachable")]
    Unavailable,
    #[error("{0}")]
    Rejected(CallError),
}

/// The data nodes and the ring over them.
pub struct Cluster {
    nodes: Vec<Arc<NodeHandle>>,
    ring: Ring,
    replicas: usize,
    near: Option<Arc<NearCache>>,
}

impl Cluster {
    pub fn new(nodes: Vec<Arc<NodeHandle>>, vnodes: usize, replicas: usize) -> Self {
        let ids: Vec<&str> = nodes.iter().map(|n| n.addr()).collect();
        let ring = Ring::new(&ids, vnodes);
        Self {
            replicas: replicas.clamp(1, nodes.len().max(1)),
            nodes,
            ring,
            near: None,
        }
    }

    /// Serves reads from `near` first and fills it (see [`NearCache`]).
    pub fn with_near_cache(mut self, near: Arc<NearCache>) -> Self {
        self.near = Some(near);
        self
    }

    pub fn near_cache(&self) -> Option<&Arc<NearCache>> {
        self.near.as_ref()
    }

    pub fn nodes(&self) -> &[Arc<NodeHandle>] {
        &self.nodes
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    pub fn replicas(&self) -> usize {
        self.replicas
    }

    fn replica_nodes(&self, key: &str) -> impl Iterator<Item = &Arc<NodeHandle>> {
        self.replica_indices(key)
            .into_iter()
            .map(|i| &self.nodes[i])
    }

    fn replica_indices(&self, key: &str) -> Vec<usize> {
        self.ring.replicas(key, self.replicas)
    }

    /// Sorts a failed call: a node failure takes the node out, a refusal
    /// (bad key, value too large) is the caller's answer.
    fn failed(node: &NodeHandle, e: CallError) -> Option<ClusterError> {
        if e.is_node_failure() {
            node.mark_down(&e.to_string());
            None
        } else {
            Some(ClusterError::Rejected(e))
        }
    }

    /// Reads from the first readable replica that has the key, falling over
    /// to the next on a miss, an error or a deadline.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, ClusterError> {
        if let Some(v) = self.near.as_ref().and_then(|n| n.get(key)) {
            return Ok(Some(v));
        }
        let generation = self.near.as_ref().map(|n| n.generation(key));
        let mut answered = false;
        for i in self.replica_indices(key) {
            let node = &self.nodes[i];
            if !node.readable() {
                continue;
            }
            match node.client.get(key).await {
                Ok(Some(hit)) => {
                    if let (Some(near), Some(generation)) = (&self.near, generation) {
                        near.fill(key, hit.value.clone(), i, hit.seq, hit.ttl, generation);
                    }
                    return Ok(Some(hit.value));
                }
                Ok(None) => answered = true,
                Err(e) => {
                    if let Some(err) = Self::failed(node, e) {
                        return Err(err);
                    }
                }
            }
        }
        if answered {
            Ok(None)
        } else {
            Err(ClusterError::Unavailable)
        }
    }

    /// Writes to every live replica at once; acknowledged when at least one
    /// took it. Returns whether any replica replaced a live value. Replicas that fail are marked down (they missed the write).
    pub async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, ClusterError> {
        self.write_all(key, |c| {
            let value = value.clone();
            async move { c.set(key, value, ttl).await }
        })
        .await
    }

    /// Deletes from every live replica; true if any replica held the key.
    pub async fn delete(&self, key: &str) -> Result<bool, ClusterError> {
        self.write_all(key, |c| async move { c.delete(key).await })
            .await
    }

    /// Runs `op` on every writable replica of `key` concurrently and ORs the
    /// answers of those that succeeded.
    async fn write_all<'a, F, Fut>(&self, key: &'a str, op: F) -> Result<bool, ClusterError>
    where
        F: Fn(NodeClient) -> Fut,
        Fut: std::future::Future<Output = Result<bool, CallError>> + 'a,
    {
        let targets: Vec<&Arc<NodeHandle>> =
            self.replica_nodes(key).filter(|n| n.writable()).collect();
        if targets.is_empty() {
            return Err(ClusterError::Unavailable);
        }
        let results = futures::future::join_all(targets.iter().map(|n| op(n.client.clone()))).await;
        // Read-your-writes through this manager: drop the old copy now rather
        // than when the node's invalidation event arrives.
        if let Some(near) = &self.near {
            near.invalidate(key);
        }
        let mut acked: Option<bool> = None;
        let mut refused: Vec<(&Arc<NodeHandle>, ClusterError)> = Vec::new();
        for (node, r) in targets.iter().zip(results) {
            match r {
                Ok(b) => acked = Some(acked.unwrap_or(false) || b),
                Err(e) => {
                    if let Some(err) = Self::failed(node, e) {
                        refused.push((node, err));
                    }
                }
            }
        }
        match acked {
            Some(b) => {
                // Replicas disagree (say, one has a smaller value limit): the
                // write stands, and a replica that refused it still holds the
                // old value, so it leaves reads until it has been flushed.
                for (node, err) in refused {
                    node.mark_down(&format!("refused a write another replica took: {err}"));
                }
                Ok(b)
            }
            None => Err(refused
                .into_iter()
                .next()
                .map_or(ClusterError::Unavailable, |(_, err)| err)),
        }
    }
}
