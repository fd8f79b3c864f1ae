//! The driver of one node's [`Lifecycle`]: each method locks the machine,
//! steps it, mirrors the new state into an atomic (read by every request,
//! without a lock), unlocks, then carries out the actions that concern the
//! node alone (logging, waking its membership task). Actions about the
//! rest of the cluster (the near cache, the peers' dirty marks) are
//! returned to the caller.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use ringcache_proto::pb;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::lifecycle::{Action, Event, Lifecycle, NodeState};
use crate::client::NodeClient;
use crate::marks::MarkQueue;

/// What the node last told us about itself.
#[derive(Debug, Default, Clone)]
pub struct NodeInfo {
    pub node_id: Option<String>,
    pub instance_id: Option<String>,
    pub last_event: Option<Instant>,
    /// Shared, not copied: requests read it (limits, conditions) and a
    /// heartbeat's stats carry lists (marks, leases, hot keys).
    pub stats: Option<std::sync::Arc<pb::StatsResponse>>,
    /// Seq of the latest heartbeat received (named in lease renewals).
    pub heartbeat_seq: Option<u64>,
}

/// One data node: its client, its state and what it reported.
pub struct NodeHandle {
    pub client: NodeClient,
    /// Id given with `--nodes id=addr`: the node must report it.
    pinned_id: Option<String>,
    /// Created for a placement member (its address is the placement's), or
    /// from a `--nodes` DNS name (which may give several nodes: a scaled
    /// service); otherwise from an address literal in this manager's
    /// `--nodes`, its own way to the node (a relay, say), which it keeps.
    pub(crate) from_placement: bool,
    /// The machine; never held across an await.
    lifecycle: Mutex<Lifecycle>,
    /// The machine's state, written under its lock after each step: the
    /// hot path reads it without locking.
    state: AtomicU8,
    info: Mutex<NodeInfo>,
    /// Wakes the node's membership task when a request marks it down.
    down: Notify,
    /// Wakes the node's membership task when it must be repaired.
    repair: Notify,
    /// Dirty marks this manager places for the node (writes it missed).
    pub(crate) marks: MarkQueue,
    /// Cancelled when the node leaves the placement: ends its membership
    /// task, and its connection is closed; the handle stays (indices are
    /// stable) but is never used again.
    retired: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl NodeHandle {
    pub fn new(client: NodeClient) -> Self {
        Self::with_id(client, None)
    }

    pub fn with_id(client: NodeClient, pinned_id: Option<String>) -> Self {
        let info = NodeInfo {
            node_id: pinned_id.clone(),
            ..NodeInfo::default()
        };
        let lifecycle = Lifecycle::new();
        Self {
            from_placement: crate::config::host_name(client.addr()).is_some(),
            client,
            pinned_id,
            state: AtomicU8::new(lifecycle.state() as u8),
            lifecycle: Mutex::new(lifecycle),
            info: Mutex::new(info),
            down: Notify::new(),
            repair: Notify::new(),
            marks: MarkQueue::default(),
            retired: CancellationToken::new(),
        }
    }

    /// Steps the machine and carries out the actions about the node
    /// itself; returns every action (the caller does the others).
    fn step(&self, event: Event, reason: &str) -> Vec<Action> {
        let actions = {
            let mut lc = lock(&self.lifecycle);
            let actions = lc.step(event);
            // Under the lock: two steps cannot store their states in the
            // opposite order.
            self.state.store(lc.state() as u8, Ordering::Release);
            actions
        };
        for action in &actions {
            match *action {
                Action::Changed {
                    from,
                    to: NodeState::Down,
                } => tracing::warn!(node = %self.addr(), ?from, reason, "node down"),
                Action::Changed { from, to } => {
                    tracing::info!(node = %self.addr(), ?from, ?to, "node state changed")
                }
                Action::WakeSession => self.down.notify_one(),
                // On `Connected` the session is the caller, and starts the
                // round itself.
                Action::StartRepair if event != Event::Connected => self.repair.notify_one(),
                // Ends the membership task (which holds the event stream)
                // and closes the connection with its batch task: nothing of
                // the node is kept but this small handle.
                Action::Release => {
                    self.retired.cancel();
                    self.client.close();
                }
                _ => {}
            }
        }
        actions
    }

    /// A lease renewal is about to be sent: true if it may be (the node is
    /// up here), and then recorded.
    pub(crate) fn renewing(&self) -> bool {
        self.step(Event::Renewing { at: Instant::now() }, "")
            .contains(&Action::SendRenewal)
    }

    /// When this manager last sent the node a read-lease renewal.
    pub(crate) fn renewed(&self) -> Option<Instant> {
        lock(&self.lifecycle).renewed()
    }

    /// The node left the placement.
    pub fn is_retired(&self) -> bool {
        self.retired.is_cancelled()
    }

    /// Cancelled when the node leaves the placement.
    pub(crate) fn retired_token(&self) -> CancellationToken {
        self.retired.clone()
    }

    /// The node left the placement: its membership task ends, and it
    /// ignores every later event.
    pub(crate) fn retire(&self) {
        self.step(Event::Retired, "left the placement");
    }

    pub fn addr(&self) -> &str {
        self.client.addr()
    }

    /// The node's id, once known.
    pub fn id(&self) -> Option<String> {
        lock(&self.info).node_id.clone()
    }

    pub fn pinned_id(&self) -> Option<&str> {
        self.pinned_id.as_deref()
    }

    pub fn state(&self) -> NodeState {
        NodeState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn readable(&self) -> bool {
        self.state().readable()
    }

    pub fn writable(&self) -> bool {
        self.state().writable()
    }

    pub fn info(&self) -> NodeInfo {
        lock(&self.info).clone()
    }

    /// The node's last reported stats, without copying the rest of its
    /// info (the write path reads the limits in them).
    pub fn stats(&self) -> Option<std::sync::Arc<pb::StatsResponse>> {
        lock(&self.info).stats.clone()
    }

    pub(crate) fn update_info(&self, f: impl FnOnce(&mut NodeInfo)) {
        f(&mut lock(&self.info));
    }

    /// A call failed or the session ended with an error: takes the node out
    /// of reads and writes until it is repaired (see [`Event::Failed`]).
    pub(crate) fn failed(&self, reason: &str, guess: u64) -> Vec<Action> {
        self.step(Event::Failed { guess }, reason)
    }

    /// The session reached the node: it is written to from now on. True if
    /// the caller must repair it now (false: retired).
    pub(crate) fn connected(&self) -> bool {
        self.step(Event::Connected, "")
            .contains(&Action::StartRepair)
    }

    /// A repair round from `covered` ended; true if the node is read from
    /// now (false: it was marked down meanwhile).
    pub(crate) fn synced(&self, covered: Option<u64>) -> bool {
        self.step(Event::Synced { covered }, "").iter().any(|a| {
            matches!(
                a,
                Action::Changed {
                    to: NodeState::Up,
                    ..
                }
            )
        })
    }

    /// Stops reading an up node and has its membership task repair it
    /// (another manager's mark says it missed writes).
    pub(crate) fn request_repair(&self) -> Vec<Action> {
        self.step(Event::RepairRequested, "")
    }

    /// A heartbeat arrived; `syncing`: the node says it is being repaired.
    pub(crate) fn heartbeat(&self, syncing: bool) -> Vec<Action> {
        self.step(Event::Heartbeat { syncing }, "")
    }

    /// This manager queued a dirty mark for the node from `since` on.
    pub(crate) fn writes_missed(&self, since: u64) {
        self.step(Event::WritesMissed { since }, "");
    }

    pub(crate) async fn marked_down(&self) {
        self.down.notified().await
    }

    pub(crate) async fn repair_requested(&self) {
        self.repair.notified().await
    }

    /// The version from which this manager knows the node missed writes.
    pub(crate) fn missed_since(&self) -> Option<u64> {
        lock(&self.lifecycle).missed()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::client::{CallError, Connect};

    /// Issue 20: a node that left the placement kept its connection (and
    /// batch task) open for as long as the manager ran.
    #[tokio::test]
    async fn a_retired_node_s_connection_is_closed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = Connect {
            timeout: Duration::from_millis(200),
            ..Connect::default()
        };
        let node = NodeHandle::new(NodeClient::new(&format!("http://{addr}"), &connect).unwrap());
        // A call opens the connection (the listener never answers it).
        let client = node.client.clone();
        let call = tokio::spawn(async move { client.stats().await });
        let (mut socket, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the client connects")
            .unwrap();
        node.retire();
        assert!(node.is_retired());
        // Once the call in flight gives up, nothing holds the connection.
        let mut buf = [0u8; 4096];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the retired node's connection is still open"
        );
        assert!(call.await.unwrap().is_err());
        assert!(matches!(
            node.client.stats().await,
            Err(CallError::Closed { .. })
        ));
    }
}
