//! The dirty marks this manager places for a node that missed writes, sent
//! to its peers and, with etcd, written there (the bookkeeping is
//! [`crate::marks::MarkQueue`]'s; the etcd side is
//! [`crate::durable_marks`]).

use std::sync::Arc;

use crate::cluster::Cluster;
use crate::durable_marks::DurableMarks;
use crate::marks::{self, Next};
use crate::node::{NodeHandle, NodeState};

impl Cluster {
    /// Queues `Mark{node index, since}` for its peers; returns the round
    /// to wait for (see [`crate::marks::MarkQueue`]).
    pub(crate) fn mark(&self, index: usize, since: u64) -> Option<u64> {
        let nodes = self.nodes();
        let node = &nodes[index];
        // Without an id the node is in no replica set: nothing to mark.
        let id = node.id()?;
        node.writes_missed(since);
        let (round, start) = node.marks.push(since);
        if start {
            tokio::spawn(broadcast_marks(nodes, index, id, self.durable.clone()));
        }
        Some(round)
    }

    /// Waits (at most the node timeout) until a peer of node `index` holds a
    /// mark for it from `since` on; false if none does by then.
    pub(crate) async fn await_marked(&self, index: usize, since: u64) -> bool {
        let Some(round) = self.mark(index, since) else {
            return true;
        };
        let node = self.node(index);
        tokio::time::timeout(self.connect.timeout, node.marks.wait(round))
            .await
            .unwrap_or(false)
    }
}

/// Sends node `index`'s queued marks to its peers, round after round,
/// until none is queued. A round counts as held once one peer took it (the
/// others finish in the background) or, with etcd, once etcd took it (a
/// peer's copy dies with the peer); a round not held is tried again, so no
/// write waiting for it is acknowledged meanwhile.
async fn broadcast_marks(
    nodes: Arc<Vec<Arc<NodeHandle>>>,
    index: usize,
    id: String,
    durable: Option<DurableMarks>,
) {
    use futures::StreamExt;
    let queue = &nodes[index].marks;
    loop {
        let (round, since) = match queue.next() {
            Next::Stop => return,
            Next::Send { round, since } => (round, since),
        };
        // Peers this manager takes for down would only hold the round up
        // for the node timeout.
        let mut calls: futures::stream::FuturesUnordered<_> = nodes
            .iter()
            .enumerate()
            // Not the node itself under another handle (a node refuses a
            // mark about itself anyway).
            .filter(|&(i, n)| {
                i != index
                    && !n.is_retired()
                    && n.id().is_some_and(|peer| peer != id)
                    && n.state() != NodeState::Down
            })
            .map(|(_, n)| {
                let (client, id) = (n.client.clone(), id.clone());
                async move { client.mark(&id, since).await }
            })
            .collect();
        let peers = calls.len();
        // Two holders when there are two: a mark on one peer is lost if
        // that peer restarts.
        let want = peers.min(2);
        let to_peers = async {
            let mut held = 0;
            while let Some(r) = calls.next().await {
                held += usize::from(r.is_ok());
                if held >= want {
                    break;
                }
            }
            held
        };
        let to_etcd = async {
            match &durable {
                Some(d) => Some(d.put(&id, since).await),
                None => None,
            }
        };
        let (held, stored) = futures::join!(to_peers, to_etcd);
        let held = match stored {
            None => held,
            Some(Ok(())) => held.max(1),
            Some(Err(e)) => {
                tracing::warn!(node = %id, since, error = %e, "etcd did not take the dirty mark");
                0
            }
        };
        if held > 0 {
            queue.held(round);
            tracing::debug!(node = %id, since, round, peers, held, "dirty mark held");
            if !calls.is_empty() {
                tokio::spawn(async move { while calls.next().await.is_some() {} });
            }
            continue;
        }
        if queue.failed(round, since) {
            tracing::warn!(node = %id, since, peers, "the dirty mark is not held; trying again");
        } else {
            tracing::error!(node = %id, since, peers, "the dirty mark is not held; given up");
        }
        tokio::time::sleep(marks::RETRY).await;
    }
}
