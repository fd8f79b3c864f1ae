//! A node's faults, from the cluster's side: a failed call or session, a
//! node that may lack writes. Each steps the node's lifecycle
//! ([`crate::node::lifecycle`]) and carries out the actions about the rest
//! of the cluster: the near cache forgets what the node served, its peers
//! are marked.

use ringcache_common::version::wall_version_ago;

use crate::cluster::{Cluster, WRITE_ATTEMPTS};
use crate::listener::EventListener;
use crate::node::Action;

impl Cluster {
    /// Node `index` failed: take it out, drop what the near cache learned
    /// from it, and have its peers hold a dirty mark for it, so that every
    /// manager repairs it before reading it again. The writes it missed
    /// are marked by each write itself ([`Cluster::await_marked`]); this
    /// mark, from a guess older than any write of this manager still in
    /// flight to the node, only tells the other managers early.
    pub fn missed_writes(&self, index: usize, reason: &str) {
        let node = self.node(index);
        if node.is_retired() {
            return;
        }
        let guess = wall_version_ago(node.client.timeout() * (WRITE_ATTEMPTS as u32 + 1));
        let actions = node.failed(reason, guess);
        self.carry_out(index, &actions);
    }

    /// Node `index` may lack writes (a peer holds a mark for it, or it says
    /// it is syncing): stop reading it until it is repaired.
    pub(crate) fn needs_repair(&self, index: usize) {
        let actions = self.node(index).request_repair();
        self.carry_out(index, &actions);
    }

    /// A heartbeat of node `index` arrived; `syncing`: it says it is being
    /// repaired (it restarted, or another manager repairs it).
    pub(crate) fn heartbeat(&self, index: usize, syncing: bool) {
        let actions = self.node(index).heartbeat(syncing);
        self.carry_out(index, &actions);
    }

    /// The lifecycle's actions about the rest of the cluster (the node's
    /// own were carried out by its handle).
    fn carry_out(&self, index: usize, actions: &[Action]) {
        for action in actions {
            match *action {
                Action::ForgetLearned => self.forget_learned(index),
                Action::MarkPeers { since } => {
                    self.mark(index, since);
                }
                _ => {}
            }
        }
    }

    /// The near cache forgets the values it learned from node `index`: they
    /// may be older than a write the node missed.
    fn forget_learned(&self, index: usize) {
        if let Some(near) = &self.near {
            near.on_reset(index);
        }
    }
}
