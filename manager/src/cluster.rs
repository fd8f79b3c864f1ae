//! The cluster as the manager sees it: the data nodes ([`crate::node`]), the
//! ring over their ids ([`crate::ring_view`]), and what the other parts
//! share: the clock, the options, the membership tasks.
//!
//! What the cluster does is split by job: routing reads and writes
//! ([`crate::route`]), a node's faults ([`crate::faults`]) and the dirty
//! marks placed for it ([`crate::mark_broadcast`]), read leases and the
//! other managers ([`crate::leases`]), following the placement
//! ([`crate::placement::apply`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use ringcache_common::version::Hlc;
use tokio::sync::{watch, Notify};

use crate::client::CallError;
pub use crate::client::Connect;
use crate::durable_marks::DurableMarks;
use crate::near_cache::NearCache;
pub use crate::node::{NodeHandle, NodeInfo, NodeState};
use crate::ring::Ring;
pub use crate::ring_view::RingView;

/// Writes that lose to a newer version are sent again at most this often
/// (and requests refused for a stale placement routed again).
pub(crate) const WRITE_ATTEMPTS: usize = 3;

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
    #[error("the write was applied, but a concurrent write reached its replicas in different orders: whether it replaced a value is unknown")]
    StatusUnknown,
    /// A conditional write's condition does not hold at the key's primary;
    /// `current`: the version of its value, if it holds one.
    #[error("precondition failed: the key's current version does not match")]
    PreconditionFailed { current: Option<u64> },
    /// A conditional write's primary cannot decide it now (unreachable,
    /// syncing, or missing a manager's read lease); it is not decided
    /// elsewhere (docs/design/conditional.md).
    #[error("the key's primary replica ({node}) cannot decide a conditional write now")]
    PrimaryUnavailable { node: String },
    /// The primary runs a data node that predates conditional writes (it
    /// would ignore the condition).
    #[error("the key's primary replica ({node}) runs a data node too old for conditional writes: upgrade the data nodes first")]
    ConditionsUnsupported { node: String },
    /// A conditional write whose outcome is unknown (its primary failed
    /// mid-call, or the placement changed under it): it may have been
    /// applied. The replicas are marked so that they converge either way.
    #[error("the conditional write may or may not have been applied (the primary did not answer, or the placement changed): read the key to know")]
    ConditionalUnknown,
}

/// Starts node `index`'s membership task (set once the cluster runs, by
/// `membership::start`): the cluster starts one for each node it adds,
/// without depending on membership.
pub type SessionStarter =
    Box<dyn Fn(Arc<Cluster>, usize) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// The data nodes and the ring over them.
pub struct Cluster {
    /// Append-only: a node index stays valid for the process's life.
    pub(crate) nodes: RwLock<Arc<Vec<Arc<NodeHandle>>>>,
    pub(crate) view: RwLock<Arc<RingView>>,
    /// The version of the view in use, for requests that wait for a newer
    /// one (a node refused a stale placement).
    pub(crate) installed: watch::Sender<u64>,
    /// Asks the placement follower to read the placement now.
    pub(crate) refresh: Notify,
    pub(crate) vnodes: usize,
    pub(crate) replicas: usize,
    pub(crate) clock: Hlc,
    pub(crate) near: Option<Arc<NearCache>>,
    /// The placement comes from a store (etcd), not from learned ids.
    pub(crate) managed: bool,
    pub(crate) connect: Connect,
    pub(crate) sessions: OnceLock<SessionStarter>,
    /// This manager's id (in etcd's registry and in lease renewals).
    pub(crate) me: String,
    /// Read lease this manager grants the nodes (managed placement only).
    pub(crate) lease: Option<Duration>,
    /// Registered managers (revision, ids), as pushed to the nodes.
    pub(crate) managers: Mutex<(u64, Vec<String>)>,
    /// This manager is in etcd's registry, so nodes hold reads for it.
    pub(crate) registered: AtomicBool,
    /// Versions seen too far ahead of the clock, and ignored.
    pub(crate) future_versions: AtomicU64,
    /// Another manager was found on a node while this one has no etcd
    /// (logged once).
    pub(crate) unprotected: AtomicBool,
    /// Dirty marks in etcd, with a managed placement (durable_marks.rs).
    pub(crate) durable: Option<DurableMarks>,
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
            durable: None,
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

    /// Keeps dirty marks in etcd too: a write that skips a node is
    /// acknowledged only once etcd holds the mark.
    pub fn with_durable_marks(mut self, marks: DurableMarks) -> Self {
        self.durable = Some(marks);
        self
    }

    pub(crate) fn durable_marks(&self) -> Option<&DurableMarks> {
        self.durable.as_ref()
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

    /// Versions ignored for being too far ahead (see [`Cluster::observe`]).
    pub fn future_versions(&self) -> u64 {
        self.future_versions.load(Ordering::Relaxed)
    }

    pub fn lease(&self) -> Option<Duration> {
        self.lease
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

    pub(crate) fn start_session(self: &Arc<Self>, index: usize) {
        let Some(start) = self.sessions.get() else {
            return;
        };
        let node = self.node(index);
        let task = start(self.clone(), index);
        let retired = node.retired_token();
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
}
