//! The cluster as the manager sees it: the data nodes, their health, the
//! ring over their ids, and the routing of each request to the key's
//! replicas (docs/design/consistency.md).
//!
//! - Writes carry a version from this manager's hybrid logical clock; a
//!   replica that holds something newer answers `superseded`, and the write
//!   is sent again above it unless a reader may have seen it
//!   ([`crate::write_round`]).
//! - A write acknowledged without one of its replicas (down, failed) waits
//!   until a dirty mark for that replica is held by its peers, so the fact
//!   that it missed writes survives this manager.
//! - Reads go to the first synced replica; a tombstone or value is final, a
//!   miss falls over to the next, and a value found there is written back
//!   to the replica that missed it (read repair).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringcache_common::version::{wall_version_ago, Hlc};
use ringcache_proto::pb;
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

pub use crate::client::Connect;
use crate::client::{CallError, Change, NodeClient, Read, Written};
use crate::listener::EventListener;
use crate::marks::{self, MarkQueue, Next};
use crate::near_cache::NearCache;
use crate::placement::model::{Placement, Versioned};
use crate::ring::{arcs_where_both, Ring};
use crate::write_round::{Next as Round, WriteRound};

/// Pause before asking again replicas that all lacked a read lease.
const UNLEASED_RETRY: Duration = Duration::from_millis(50);
/// Writes that lose to a newer version are sent again at most this often.
const WRITE_ATTEMPTS: usize = 3;

/// A node's state in this manager's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum NodeState {
    /// Not reached yet: neither read nor written.
    Unknown = 0,
    /// Synced: read and written.
    Up = 1,
    /// Unreachable or failed a call: not read from, not written to.
    Down = 2,
    /// Being repaired or warmed up from its peers: written to, not read from.
    Syncing = 3,
}

impl NodeState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Unknown,
            1 => Self::Up,
            2 => Self::Down,
            _ => Self::Syncing,
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
    from_placement: bool,
    state: AtomicU8,
    info: Mutex<NodeInfo>,
    /// Wakes the node's membership task when a request marks it down.
    down: Notify,
    /// Wakes the node's membership task when it must be repaired.
    repair: Notify,
    /// Dirty marks this manager places for the node (writes it missed).
    marks: MarkQueue,
    /// Cancelled when the node leaves the placement: ends its membership
    /// task; the handle stays (indices are stable) but is never used again.
    retired: CancellationToken,
    /// When this manager last sent the node a read-lease renewal: the
    /// node's lease from us ends before this + the lease.
    renewed: Mutex<Option<Instant>>,
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
        Self {
            from_placement: crate::config::host_name(client.addr()).is_some(),
            client,
            pinned_id,
            state: AtomicU8::new(NodeState::Unknown as u8),
            info: Mutex::new(info),
            down: Notify::new(),
            repair: Notify::new(),
            marks: MarkQueue::default(),
            retired: CancellationToken::new(),
            renewed: Mutex::new(None),
        }
    }

    /// A lease renewal is about to be sent.
    pub(crate) fn renewing(&self) {
        *lock(&self.renewed) = Some(Instant::now());
    }

    /// The node left the placement.
    pub fn is_retired(&self) -> bool {
        self.retired.is_cancelled()
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
        self.state() == NodeState::Up
    }

    pub fn writable(&self) -> bool {
        matches!(self.state(), NodeState::Up | NodeState::Syncing)
    }

    pub fn info(&self) -> NodeInfo {
        lock(&self.info).clone()
    }

    pub(crate) fn update_info(&self, f: impl FnOnce(&mut NodeInfo)) {
        f(&mut lock(&self.info));
    }

    /// Takes the node out of reads and writes; it is repaired when it
    /// answers again. True if it was not down already.
    pub fn mark_down(&self, reason: &str) -> bool {
        let prev = NodeState::from_u8(self.state.swap(NodeState::Down as u8, Ordering::AcqRel));
        if prev != NodeState::Down {
            tracing::warn!(node = %self.addr(), from = ?prev, reason, "node down");
            self.down.notify_one();
        }
        prev != NodeState::Down
    }

    /// Moves `from` → `to` unless someone changed the state meanwhile (a
    /// node marked down while it was being repaired must stay down).
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

    /// Stops reading an up node and has its membership task repair it
    /// (another manager's mark says it missed writes). True if it was up.
    fn request_repair(&self) -> bool {
        let was_up = self.transition(NodeState::Up, NodeState::Syncing);
        if was_up {
            self.repair.notify_one();
        }
        was_up
    }

    pub(crate) async fn marked_down(&self) {
        self.down.notified().await
    }

    pub(crate) async fn repair_requested(&self) {
        self.repair.notified().await
    }

    /// The version from which this manager knows the node missed writes.
    pub(crate) fn missed_since(&self) -> Option<u64> {
        self.marks.missed()
    }

    /// Forgets what this manager knew the node missed, unless an older
    /// version was missed since `since` was read.
    pub(crate) fn repaired(&self, since: Option<u64>) {
        self.marks.repaired(since);
    }
}

/// Why the cluster could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no replica of the key is reachable")]
    Unavailable,
    #[error("the ring is not complete yet: waiting to learn the ids of {0} node(s)")]
    RingIncomplete(usize),
    #[error("no placement yet: waiting for the placement store")]
    NoPlacement,
    #[error("the placement changed and this manager could not follow it in time")]
    StalePlacement,
    #[error("entry of {size} bytes is larger than replica {node} can store ({limit} bytes)")]
    TooLarge { size: u64, limit: u64, node: String },
    #[error("replica {node} holds version {version} of the key, {ahead:?} ahead of this manager's clock (more than --max-clock-skew): not overwritten")]
    VersionTooNew {
        node: String,
        version: u64,
        ahead: Duration,
    },
    #[error("{0}")]
    Rejected(CallError),
    #[error("newer writes of the key overtook this one on each of {0} attempts: it is ordered just before them (overwritten); what it replaced is unknown")]
    Overtaken(usize),
}

/// The rings requests are routed by: one placement version.
///
/// While a hand-off is under way there are two rings over the same member
/// list: `read` (the owners before the change) and `write` (after it).
/// Reads go to `read`'s replicas; writes go to both sets, so that a write
/// acknowledged during the move is on the old owners and the new ones.
pub struct RingView {
    /// The placement version (0: static placement from `--nodes`).
    pub version: u64,
    pub(crate) read: Ring,
    pub(crate) write: Ring,
    /// Ring index → node index.
    pub(crate) members: Vec<usize>,
    /// Nodes whose id is not known yet (static placement only).
    pub missing: usize,
    moving: bool,
    /// The placement this view was built from (from the store only).
    pub placement: Option<Placement>,
}

impl RingView {
    fn empty(missing: usize) -> Self {
        Self {
            version: 0,
            read: Ring::new::<String>(&[], 1),
            write: Ring::new::<String>(&[], 1),
            members: Vec::new(),
            missing,
            moving: false,
            placement: None,
        }
    }

    /// Node indices of `key`'s replicas for reads, the owner first.
    pub fn replicas(&self, key: &str, n: usize) -> Vec<usize> {
        self.read
            .replicas(key, n)
            .into_iter()
            .map(|i| self.members[i])
            .collect()
    }

    /// Node indices `key`'s writes go to: the replicas before and after a
    /// membership change.
    pub fn write_targets(&self, key: &str, n: usize) -> Vec<usize> {
        let mut out = self.replicas(key, n);
        if !self.moving {
            // One ring: the hot path looks the key up once.
            return out;
        }
        for i in self.write.replicas(key, n) {
            let node = self.members[i];
            if !out.contains(&node) {
                out.push(node);
            }
        }
        out
    }

    /// A membership change is under way.
    pub fn moving(&self) -> bool {
        self.moving
    }

    pub(crate) fn ring_index(&self, node: usize) -> Option<usize> {
        self.members.iter().position(|&m| m == node)
    }

    /// Whether node `node` is in the placement (in either ring).
    pub fn contains(&self, node: usize) -> bool {
        self.ring_index(node).is_some()
    }

    /// Hash ranges where `node` and every one of `also` are among the
    /// nodes a key's writes go to.
    pub fn ranges_with(&self, n: usize, node: usize, also: &[usize]) -> Vec<pb::HashRange> {
        let Some(r) = self.ring_index(node) else {
            return Vec::new();
        };
        let others: Option<Vec<usize>> = also.iter().map(|&a| self.ring_index(a)).collect();
        let Some(others) = others else {
            return Vec::new();
        };
        let has = |a: &[usize], b: &[usize], x: usize| a.contains(&x) || b.contains(&x);
        arcs_where_both(&self.read, &self.write, n, |a, b| {
            has(a, b, r) && others.iter().all(|&o| has(a, b, o))
        })
        .into_iter()
        .map(|(start, end)| pb::HashRange { start, end })
        .collect()
    }

    /// Each node's share of the key space as primary owner for reads, by
    /// node index.
    pub fn shares(&self, nodes: usize) -> Vec<f64> {
        let mut out = vec![0.0; nodes];
        for (i, s) in self.read.shares().into_iter().enumerate() {
            if let Some(slot) = out.get_mut(self.members[i]) {
                *slot = s;
            }
        }
        out
    }
}

/// Starts node `index`'s membership task (set once the cluster runs, by
/// `membership::start`): the cluster starts one for each node it adds,
/// without depending on membership.
pub type SessionStarter =
    Box<dyn Fn(Arc<Cluster>, usize) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// The data nodes and the ring over them.
pub struct Cluster {
    /// Append-only: a node index stays valid for the process's life.
    nodes: RwLock<Arc<Vec<Arc<NodeHandle>>>>,
    view: RwLock<Arc<RingView>>,
    /// The version of the view in use, for requests that wait for a newer
    /// one (a node refused a stale placement).
    installed: watch::Sender<u64>,
    /// Asks the placement follower to read the placement now.
    refresh: Notify,
    vnodes: usize,
    replicas: usize,
    clock: Hlc,
    near: Option<Arc<NearCache>>,
    /// The placement comes from a store (etcd), not from learned ids.
    managed: bool,
    connect: Connect,
    sessions: OnceLock<SessionStarter>,
    /// This manager's id (in etcd's registry and in lease renewals).
    me: String,
    /// Read lease this manager grants the nodes (managed placement only).
    lease: Option<Duration>,
    /// Registered managers (revision, ids), as pushed to the nodes.
    managers: Mutex<(u64, Vec<String>)>,
    /// This manager is in etcd's registry, so nodes hold reads for it.
    registered: AtomicBool,
    /// Versions seen too far ahead of the clock, and ignored.
    future_versions: AtomicU64,
    /// Another manager was found on a node while this one has no etcd
    /// (logged once).
    unprotected: AtomicBool,
}

impl Cluster {
    pub fn new(nodes: Vec<Arc<NodeHandle>>, vnodes: usize, replicas: usize) -> Self {
        Self::with_options(nodes, vnodes, replicas, false, Connect::default())
    }

    /// `managed`: the placement is given by [`Cluster::apply_placement`]
    /// (etcd) rather than built from the nodes' ids.
    pub fn with_options(
        nodes: Vec<Arc<NodeHandle>>,
        vnodes: usize,
        replicas: usize,
        managed: bool,
        connect: Connect,
    ) -> Self {
        let c = Self {
            replicas: replicas.max(1),
            view: RwLock::new(Arc::new(RingView::empty(nodes.len()))),
            installed: watch::channel(0).0,
            refresh: Notify::new(),
            nodes: RwLock::new(Arc::new(nodes)),
            vnodes,
            clock: Hlc::random(),
            near: None,
            managed,
            connect,
            sessions: OnceLock::new(),
            me: format!("manager-{}", std::process::id()),
            lease: None,
            managers: Mutex::new((0, Vec::new())),
            registered: AtomicBool::new(false),
            future_versions: AtomicU64::new(0),
            unprotected: AtomicBool::new(false),
        };
        if !managed {
            c.rebuild_ring();
        }
        c
    }

    /// Names this manager `me` and, with a managed placement, has it grant
    /// read leases of `lease` (docs/design/membership.md, "Partitions").
    pub fn with_identity(mut self, me: String, lease: Option<Duration>) -> Self {
        self.me = me;
        self.lease = lease.filter(|_| self.managed);
        self
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Ignores versions more than `skew` ahead of this manager's wall clock
    /// (`--max-clock-skew`).
    pub fn with_max_clock_skew(mut self, skew: Duration) -> Self {
        self.clock = Hlc::random().with_max_skew(skew);
        self
    }

    /// Moves this manager's clock past `version`, seen at node `index`,
    /// unless it is too far ahead: then it is counted, logged, and false
    /// is returned.
    pub(crate) fn observe(&self, index: usize, version: u64) -> bool {
        if self.clock.observe(version) {
            return true;
        }
        let seen = self.future_versions.fetch_add(1, Ordering::Relaxed) + 1;
        // Every time at first, then less and less often: a node holding
        // such a version repeats it in every heartbeat.
        if seen.is_power_of_two() {
            tracing::warn!(node = %self.node(index).addr(), version,
                ahead = ?ringcache_common::version::ahead_of_wall(version),
                max = ?self.clock.max_skew(), seen,
                "ignored a version too far ahead of this manager's clock");
        }
        false
    }

    /// The other managers subscribed to the nodes (their `Stats` list the
    /// subscribers), sorted.
    pub fn other_managers(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .nodes()
            .iter()
            .filter(|n| !n.is_retired())
            .filter_map(|n| n.info().stats)
            .flat_map(|s| s.subscribers)
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

    /// Versions ignored for being too far ahead (see [`Cluster::observe`]).
    pub fn future_versions(&self) -> u64 {
        self.future_versions.load(Ordering::Relaxed)
    }

    pub fn lease(&self) -> Option<Duration> {
        self.lease
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
                .all(|&i| nodes[i].state() == NodeState::Up && lock(&nodes[i].renewed).is_some())
    }

    /// The registered managers, for a node being admitted.
    pub(crate) fn managers(&self) -> (u64, Vec<String>) {
        lock(&self.managers).clone()
    }

    /// Waits until node `index` can no longer hold a read lease from this
    /// manager (it stopped renewing when the node failed).
    async fn await_unleased(&self, index: usize) {
        let Some(lease) = self.lease else { return };
        let renewed = *lock(&self.node(index).renewed);
        if let Some(at) = renewed {
            tokio::time::sleep_until(tokio::time::Instant::from_std(at + lease)).await;
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

    /// Every node handle ever created (retired ones included: indices are
    /// stable).
    pub fn nodes(&self) -> Arc<Vec<Arc<NodeHandle>>> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn node(&self, index: usize) -> Arc<NodeHandle> {
        self.nodes()[index].clone()
    }

    pub fn view(&self) -> Arc<RingView> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn replicas(&self) -> usize {
        self.replicas
    }

    pub fn clock(&self) -> &Hlc {
        &self.clock
    }

    pub fn connect(&self) -> &Connect {
        &self.connect
    }

    pub fn managed(&self) -> bool {
        self.managed
    }

    /// The node with id `id` (not retired).
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes()
            .iter()
            .position(|n| !n.is_retired() && n.id().as_deref() == Some(id))
    }

    /// Starts the membership tasks of every node with `starter`, and of
    /// nodes added later.
    pub fn start_sessions(self: &Arc<Self>, starter: SessionStarter) {
        if self.sessions.set(starter).is_err() {
            return;
        }
        for i in 0..self.nodes().len() {
            self.start_session(i);
        }
    }

    fn start_session(self: &Arc<Self>, index: usize) {
        let Some(start) = self.sessions.get() else {
            return;
        };
        let node = self.node(index);
        let task = start(self.clone(), index);
        let retired = node.retired.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = task => {}
                _ = retired.cancelled() => {}
            }
        });
    }

    fn rebuild_ring(&self) {
        // Under the write lock, so that two nodes learned at once cannot
        // store views in the opposite order of the ids they saw.
        let mut current = self.view.write().unwrap_or_else(|e| e.into_inner());
        let nodes = self.nodes();
        let mut ids = Vec::new();
        let mut members = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            if let Some(id) = n.id() {
                ids.push(id);
                members.push(i);
            }
        }
        let missing = nodes.len() - members.len();
        let ring = Ring::new(&ids, self.vnodes);
        let view = RingView {
            version: 0,
            read: ring.clone(),
            write: ring,
            members,
            missing,
            moving: false,
            placement: None,
        };
        *current = Arc::new(view);
    }

    /// The `--nodes` list as (id, address) once every id is known, to seed
    /// an empty placement store.
    pub fn seed_members(&self) -> Option<Vec<(String, String)>> {
        self.nodes()
            .iter()
            .filter(|n| !n.is_retired())
            .map(|n| n.id().map(|id| (id, n.addr().to_string())))
            .collect()
    }

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
                n.retired.cancel();
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

    /// Waits (bounded by the node timeout) until this manager routes by
    /// placement `version` or newer; false if it did not get there.
    async fn await_placement(&self, version: u64) -> bool {
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

    /// Records the id node `index` reported. The ring is built from ids, so
    /// two managers that reach a node by different addresses agree.
    pub fn learn_id(&self, index: usize, id: &str) -> Result<(), String> {
        let nodes = self.nodes();
        let node = &nodes[index];
        if let Some(pinned) = node.pinned_id() {
            if pinned != id {
                return Err(format!(
                    "node at {} reports id {id:?}, but --nodes pins {pinned:?}",
                    node.addr()
                ));
            }
        }
        if let Some(other) = self.index_of(id).filter(|&o| o != index) {
            return Err(format!(
                "node at {} reports id {id:?}, already used by the node at {}",
                node.addr(),
                nodes[other].addr()
            ));
        }
        let known = node.id();
        if known.as_deref() == Some(id) {
            return Ok(());
        }
        if let Some(old) = known {
            return Err(format!(
                "node at {} changed its id from {old:?} to {id:?}; restart the manager to accept it",
                node.addr()
            ));
        }
        node.update_info(|i| i.node_id = Some(id.to_string()));
        if !self.managed {
            self.rebuild_ring();
        }
        tracing::info!(node = %node.addr(), id, "node id learned");
        Ok(())
    }

    fn placement(&self) -> Result<Arc<RingView>, ClusterError> {
        let view = self.view();
        if view.missing > 0 {
            return Err(ClusterError::RingIncomplete(view.missing));
        }
        if view.members.is_empty() {
            return Err(ClusterError::NoPlacement);
        }
        Ok(view)
    }

    /// Sorts a failed call: a node failure takes the node out, a refusal
    /// (bad key, value too large) is the caller's answer. A stale placement
    /// is neither: the caller routes again (see [`Cluster::stale`]).
    fn failed(&self, index: usize, e: CallError) -> Option<ClusterError> {
        if e.is_node_failure() {
            self.missed_writes(index, &e.to_string());
            None
        } else {
            Some(ClusterError::Rejected(e))
        }
    }

    /// The placement version a node refused a request with, if it did.
    fn stale(r: &Result<impl Sized, CallError>) -> Option<u64> {
        match r {
            Err(CallError::StalePlacement { newest, .. }) => Some(*newest),
            _ => None,
        }
    }

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
        // Once per episode (a session retried every second must not keep
        // bumping the marks, which would restart other managers' repairs).
        if node.mark_down(reason) {
            self.forget_learned(index);
            let since = wall_version_ago(node.client.timeout() * (WRITE_ATTEMPTS as u32 + 1));
            self.mark(index, since);
        }
    }

    /// Node `index` may lack writes (a peer holds a mark for it, or it says
    /// it is syncing): stop reading it until it is repaired.
    pub(crate) fn needs_repair(&self, index: usize) {
        if self.node(index).request_repair() {
            self.forget_learned(index);
        }
    }

    /// The near cache forgets the values it learned from node `index`: they
    /// may be older than a write the node missed.
    fn forget_learned(&self, index: usize) {
        if let Some(near) = &self.near {
            near.on_reset(index);
        }
    }

    /// Queues `Mark{node index, since}` for its peers; returns the round
    /// to wait for (see [`MarkQueue`]).
    fn mark(&self, index: usize, since: u64) -> Option<u64> {
        let nodes = self.nodes();
        let node = &nodes[index];
        // Without an id the node is in no replica set: nothing to mark.
        let id = node.id()?;
        let (round, start) = node.marks.push(since);
        if start {
            tokio::spawn(broadcast_marks(nodes, index, id));
        }
        Some(round)
    }

    /// Waits (at most the node timeout) until a peer of node `index` holds a
    /// mark for it from `since` on; false if none does by then.
    async fn await_marked(&self, index: usize, since: u64) -> bool {
        let Some(round) = self.mark(index, since) else {
            return true;
        };
        let node = self.node(index);
        tokio::time::timeout(self.connect.timeout, node.marks.wait(round))
            .await
            .unwrap_or(false)
    }

    /// Reads from the first synced replica that has the key, falling over to
    /// the next on a miss, an error or a deadline. A tombstone is final.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, ClusterError> {
        if let Some(v) = self.near.as_ref().and_then(|n| n.get(key)) {
            return Ok(Some(v));
        }
        self.routed(|| self.get_once(key)).await
    }

    /// Runs `attempt` (one request routed by the current placement) until
    /// it is not refused for a stale placement, catching up with the newer
    /// placement in between (a few times at most).
    async fn routed<T, Fut>(&self, mut attempt: impl FnMut() -> Fut) -> Result<T, ClusterError>
    where
        Fut: std::future::Future<Output = Result<T, Routed>>,
    {
        let deadline = tokio::time::Instant::now() + self.connect.timeout;
        let mut stale = 0;
        loop {
            match attempt().await {
                Err(Routed::Stale(newest)) => {
                    stale += 1;
                    if stale >= WRITE_ATTEMPTS || !self.await_placement(newest).await {
                        return Err(ClusterError::StalePlacement);
                    }
                }
                Err(Routed::Unleased) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ClusterError::Unavailable);
                    }
                    tokio::time::sleep(UNLEASED_RETRY).await;
                }
                Err(Routed::Failed(e)) => return Err(e),
                Ok(v) => return Ok(v),
            }
        }
    }

    async fn get_once(&self, key: &str) -> Result<Option<Bytes>, Routed> {
        let view = self.placement()?;
        let nodes = self.nodes();
        let generation = self.near.as_ref().map(|n| n.generation(key));
        let mut missed = Vec::new();
        let mut answered = false;
        let mut unleased = false;
        for i in view.replicas(key, self.replicas) {
            let node = &nodes[i];
            if !node.readable() {
                continue;
            }
            let r = node.client.get(key, view.version).await;
            if let Some(newest) = Self::stale(&r) {
                return Err(Routed::Stale(newest));
            }
            match r {
                Ok(Read::Hit(hit)) => {
                    self.observe(i, hit.version);
                    if let (Some(near), Some(generation)) = (&self.near, generation) {
                        near.fill(key, hit.value.clone(), i, hit.seq, hit.ttl, generation);
                    }
                    self.read_repair(key, &hit, &missed, view.version);
                    return Ok(Some(hit.value));
                }
                Ok(Read::Deleted(version)) => {
                    self.observe(i, version);
                    return Ok(None);
                }
                Ok(Read::Miss) => {
                    answered = true;
                    missed.push(i);
                }
                Ok(Read::Syncing) => self.needs_repair(i),
                // A manager's lease on the node is missing (lost touch, or
                // not renewed yet after the node came back): ask the next.
                Ok(Read::Unleased) => unleased = true,
                Err(e) => {
                    if let Some(err) = self.failed(i, e) {
                        return Err(err.into());
                    }
                }
            }
        }
        if answered {
            Ok(None)
        } else if unleased {
            Err(Routed::Unleased)
        } else {
            Err(ClusterError::Unavailable.into())
        }
    }

    /// Writes `hit` back, in the background, to replicas that missed it (they
    /// evicted it, say). Versioned, so it never overwrites anything newer.
    fn read_repair(&self, key: &str, hit: &crate::client::Hit, missed: &[usize], placement: u64) {
        let nodes = self.nodes();
        for &i in missed {
            let client = nodes[i].client.clone();
            let key = key.to_string();
            let change = Change::Set {
                value: hit.value.clone(),
                ttl: hit.ttl,
            };
            let version = hit.version;
            tokio::spawn(async move {
                match client.write(&key, &change, version, placement).await {
                    Ok(w) => tracing::debug!(%key, node = %client.addr(), ?w, "read repair"),
                    Err(e) => tracing::debug!(%key, error = %e, "read repair failed"),
                }
            });
        }
    }

    /// Writes to every writable replica at once; acknowledged when at least
    /// one took it. Returns whether any replica replaced a live value.
    pub async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, ClusterError> {
        self.write(key, Change::Set { value, ttl }).await
    }

    /// Deletes from every writable replica (leaving tombstones); true if any
    /// replica held a live value.
    pub async fn delete(&self, key: &str) -> Result<bool, ClusterError> {
        self.write(key, Change::Delete).await
    }

    /// Refuses a value that one of the replicas could not store, before
    /// anything is written (so replicas with different limits never
    /// disagree on a value).
    fn check_limits(
        &self,
        key: &str,
        change: &Change,
        targets: &[usize],
    ) -> Result<(), ClusterError> {
        let Change::Set { value, .. } = change else {
            return Ok(());
        };
        let nodes = self.nodes();
        let size = (key.len() + value.len()) as u64 + ringcache_common::limits::ENTRY_OVERHEAD;
        for &i in targets {
            let node = &nodes[i];
            let Some(stats) = node.info().stats else {
                continue;
            };
            let limits = [
                (value.len() as u64, stats.max_value_bytes),
                (size, stats.max_entry_bytes),
            ];
            for (size, limit) in limits {
                if limit > 0 && size > limit {
                    return Err(ClusterError::TooLarge {
                        size,
                        limit,
                        node: node.addr().to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    async fn write(&self, key: &str, change: Change) -> Result<bool, ClusterError> {
        self.routed(|| self.write_once(key, &change)).await
    }

    /// One write routed by the current placement.
    async fn write_once(&self, key: &str, change: &Change) -> Result<bool, Routed> {
        let view = self.placement()?;
        let nodes = self.nodes();
        let targets = view.write_targets(key, self.replicas);
        self.check_limits(key, change, &targets)?;
        let mut result = Err(ClusterError::Unavailable);
        // Replicas that did not take the write's last attempt, and the
        // version of its first (older than every attempt's).
        let mut skipped = Vec::new();
        let mut first = None;
        let mut round = WriteRound::default();
        // A target's place in the key's read order: the read replicas come
        // first among the targets, in that order (a joining node after).
        let readers = if view.moving() {
            view.replicas(key, self.replicas).len()
        } else {
            targets.len()
        };
        let reader = |i: usize| {
            targets
                .iter()
                .position(|&t| t == i)
                .filter(|&p| p < readers)
        };
        for attempt in 1..=WRITE_ATTEMPTS {
            round.attempt();
            let version = self.clock.next();
            first.get_or_insert(version);
            let live: Vec<usize> = targets
                .iter()
                .copied()
                .filter(|&i| nodes[i].writable())
                .collect();
            if live.is_empty() {
                return Err(ClusterError::Unavailable.into());
            }
            skipped.clear();
            skipped.extend(targets.iter().filter(|i| !live.contains(i)));
            let results = futures::future::join_all(
                live.iter()
                    .map(|&i| nodes[i].client.write(key, change, version, view.version)),
            )
            .await;
            // Read-your-writes through this manager: drop the old copy now
            // rather than when the node's invalidation event arrives.
            if let Some(near) = &self.near {
                near.invalidate(key);
            }
            // A node that knows a newer placement took nothing; the others
            // may have: the write is routed again (by the newer placement)
            // with a newer version, which supersedes what they took.
            if let Some(newest) = results.iter().find_map(Self::stale) {
                return Err(Routed::Stale(newest));
            }
            let mut refused = None;
            let mut too_new = None;
            // Replicas whose clock is behind this write's version.
            let mut behind = Vec::new();
            for (&i, r) in live.iter().zip(results) {
                match r {
                    Ok(Written::Applied(a)) => round.applied(i, reader(i), a),
                    Ok(Written::Superseded { version: newer, .. }) if !self.observe(i, newer) => {
                        // No write of ours can land above it: writing again
                        // is useless, and acknowledging would hide that the
                        // replica keeps its value.
                        too_new = Some(ClusterError::VersionTooNew {
                            node: nodes[i].addr().to_string(),
                            version: newer,
                            ahead: ringcache_common::version::ahead_of_wall(newer),
                        });
                    }
                    Ok(Written::Superseded {
                        version: newer,
                        readable,
                    }) => {
                        self.clock.observe(newer);
                        round.superseded(i, reader(i), readable);
                    }
                    Err(e) if e.is_version_too_new() => {
                        behind.push(i);
                        refused.get_or_insert(ClusterError::Rejected(e));
                    }
                    Err(e) => match self.failed(i, e) {
                        Some(err) => {
                            refused.get_or_insert(err);
                        }
                        None => skipped.push(i),
                    },
                }
            }
            if let Some(err) = too_new {
                return Err(err.into());
            }
            // Some replica took the version: the ones that refused it have
            // a clock behind (they dropped their older copy). They are
            // repaired before being read again, like a replica that missed
            // the write. If none took it, this manager's clock is the one
            // ahead: the write is refused (502).
            if round.taken() {
                for &i in &behind {
                    tracing::error!(node = %nodes[i].addr(), version,
                        "the node refused a write version as too far ahead of its clock: its clock is behind");
                    self.missed_writes(i, "clock behind the write's version");
                    skipped.push(i);
                }
            }
            // A replica holds something newer: from a concurrent write, or
            // from one that finished before this one began through a
            // manager whose clock is ahead. Sent again above it only if no
            // reader can have seen this write (write_round.rs).
            result = match (round.next(attempt < WRITE_ATTEMPTS), refused) {
                (Round::Again, _) => continue,
                (Round::Taken(replaced), _) => Ok(replaced),
                (_, Some(err)) => Err(err),
                (Round::Overtaken, None) => Err(ClusterError::Overtaken(WRITE_ATTEMPTS)),
                (Round::Nothing, None) => Err(ClusterError::Unavailable),
            };
            break;
        }
        if result.is_ok() {
            // Replicas that missed the write must be known to have missed
            // it, by nodes that outlive this manager, before it is
            // acknowledged: a mark from this write's version on, placed for
            // this write (an earlier one may have been cleared by another
            // manager's repair meanwhile); and, with leases, they must have
            // stopped answering reads (another manager may still reach them).
            let since = first.unwrap_or_default();
            for &i in &skipped {
                if self.lease.is_some() && !self.registered.load(Ordering::Acquire) {
                    // The nodes do not wait for our lease: nothing
                    // stops a reader of the replica that missed it.
                    return Err(ClusterError::Unavailable.into());
                }
                if !self.await_marked(i, since).await {
                    tracing::warn!(node = %nodes[i].addr(), "no peer took the dirty mark in time: write not acknowledged");
                    return Err(ClusterError::Unavailable.into());
                }
                self.await_unleased(i).await;
                // Still registered (it may have lapsed while waiting).
                if self.lease.is_some() && !self.registered.load(Ordering::Acquire) {
                    return Err(ClusterError::Unavailable.into());
                }
            }
        }
        result.map_err(Routed::from)
    }
}

/// Sends node `index`'s queued marks to its peers, round after round,
/// until none is queued. A round counts as held once one peer took it
/// (the others finish in the background); a round no peer took is tried
/// again, so no write waiting for it is acknowledged meanwhile.
async fn broadcast_marks(nodes: Arc<Vec<Arc<NodeHandle>>>, index: usize, id: String) {
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
            .filter(|&(i, n)| {
                i != index && !n.is_retired() && n.id().is_some() && n.state() != NodeState::Down
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
        let mut held = 0;
        while let Some(r) = calls.next().await {
            held += usize::from(r.is_ok());
            if held >= want {
                break;
            }
        }
        if held > 0 {
            queue.held(round);
            tracing::debug!(node = %id, since, round, peers, held, "dirty mark held");
            if !calls.is_empty() {
                tokio::spawn(async move { while calls.next().await.is_some() {} });
            }
            continue;
        }
        if queue.failed(round, since) {
            tracing::warn!(node = %id, since, peers, "no peer took the dirty mark; trying again");
        } else {
            tracing::error!(node = %id, since, peers, "no peer took the dirty mark; given up");
        }
        tokio::time::sleep(marks::RETRY).await;
    }
}

/// How one routed attempt ended without an answer.
enum Routed {
    /// A node knows a newer placement: route again once this manager has it.
    Stale(u64),
    /// Every replica that answered lacked a manager's read lease: usually
    /// for the 100 ms until a node that came back is renewed; ask again.
    Unleased,
    Failed(ClusterError),
}

impl From<ClusterError> for Routed {
    fn from(e: ClusterError) -> Self {
        Routed::Failed(e)
    }
}
