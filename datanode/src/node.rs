//! A data node's state and request validation, shared by the unary gRPC
//! methods and the batched stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::NodeOptions;
use crate::events::{EventBus, EventKind};
use crate::hotkeys::HotKeys;
use crate::lease::Leases;
use crate::store::{Condition, Outcome, Read, Store, StoreError, Write};
use crate::sync::{Marks, SyncState};

/// An open Subscribe stream, listed in the node's Stats until dropped.
pub struct Subscribed {
    node: Arc<Node>,
    id: String,
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        let mut subs = crate::events::lock(&self.node.subscribers);
        if let Some(n) = subs.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                subs.remove(&self.id);
            }
        }
    }
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeError {
    #[error("key must not be empty")]
    EmptyKey,
    #[error("key is {len} bytes, longer than the limit of {max}")]
    KeyTooLong { len: usize, max: usize },
    #[error("value is {len} bytes, larger than the limit of {max}")]
    ValueTooLarge { len: usize, max: usize },
    #[error("node id {0:?} is invalid")]
    BadNodeId(String),
    #[error("a node cannot hold a dirty mark about itself")]
    OwnMark,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A conditional write's condition does not hold; `current` is the
    /// version of the key's value (0: none).
    #[error("precondition failed: the key's current version is {current}")]
    PreconditionFailed { current: u64 },
    /// A conditional write reached a node that does not answer consistent
    /// reads: it cannot decide the condition.
    #[error("this node does not answer consistent reads now (syncing, or a manager's read lease missing): it cannot decide a condition")]
    NotReadable,
}

/// One running data node; shared by its gRPC service and background tasks.
pub struct Node {
    store: Store,
    id: String,
    instance_id: String,
    started: Instant,
    max_key_bytes: usize,
    max_value_bytes: usize,
    auth_token: Option<String>,
    sync_rate: u64,
    sync: SyncState,
    marks: Marks,
    /// Newest placement version told by a manager (see `SetPlacement`).
    placement: AtomicU64,
    leases: Leases,
    /// Open Subscribe streams by subscriber id (a manager's), counted.
    subscribers: crate::primitives::Mutex<std::collections::BTreeMap<String, usize>>,
    /// The keys taking most requests (`--hot-keys`; none when 0).
    hot: Option<HotKeys>,
    hot_reported: usize,
    /// Cancelled at shutdown: ends subscriptions and background tasks.
    shutdown: CancellationToken,
    /// TLS towards peers this node copies from (`Pull`), when on.
    peer_tls: Option<Arc<ringcache_common::tls::ClientTls>>,
}

impl Node {
    pub fn new(
        opts: &NodeOptions,
        id: String,
        shutdown: CancellationToken,
        peer_tls: Option<Arc<ringcache_common::tls::ClientTls>>,
    ) -> Arc<Self> {
        let events = EventBus::new(opts.event_buffer);
        Arc::new(Self {
            store: Store::new(&opts.store_config(), events),
            id,
            instance_id: uuid::Uuid::new_v4().to_string(),
            started: Instant::now(),
            max_key_bytes: opts.max_key_bytes,
            max_value_bytes: opts.max_value_bytes,
            auth_token: opts.auth_token.clone(),
            sync_rate: opts.sync_rate,
            sync: SyncState::new(),
            marks: Marks::default(),
            placement: AtomicU64::new(0),
            leases: Leases::default(),
            subscribers: crate::primitives::Mutex::new(std::collections::BTreeMap::new()),
            hot: (opts.hot_keys > 0).then(|| {
                HotKeys::new(
                    opts.hot_key_sample,
                    opts.hot_key_window,
                    opts.hot_key_log_share,
                )
            }),
            hot_reported: opts.hot_keys,
            shutdown,
            peer_tls,
        })
    }

    pub fn hot_keys(&self) -> Option<&HotKeys> {
        self.hot.as_ref()
    }

    /// How many hot keys Stats reports.
    pub fn hot_keys_reported(&self) -> usize {
        self.hot_reported
    }

    /// Counts a client request for `key` (not repair copies).
    fn requested(&self, key: &str) {
        if let Some(h) = &self.hot {
            h.record(key);
        }
    }

    pub fn peer_tls(&self) -> Option<&Arc<ringcache_common::tls::ClientTls>> {
        self.peer_tls.as_ref()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }
    pub fn sync_state(&self) -> &SyncState {
        &self.sync
    }
    pub fn marks(&self) -> &Marks {
        &self.marks
    }
    pub fn auth_token(&self) -> Option<&str> {
        self.auth_token.as_deref()
    }
    pub fn sync_rate(&self) -> u64 {
        self.sync_rate
    }
    /// Records an open Subscribe stream of `id` until the returned guard
    /// is dropped (`None` for an anonymous subscriber).
    pub fn subscribed(self: &Arc<Self>, id: &str) -> Option<Subscribed> {
        if id.is_empty() {
            return None;
        }
        *crate::events::lock(&self.subscribers)
            .entry(id.to_string())
            .or_default() += 1;
        Some(Subscribed {
            node: self.clone(),
            id: id.to_string(),
        })
    }

    /// Ids of the subscribers with a stream open, sorted.
    pub fn subscribers(&self) -> Vec<String> {
        crate::events::lock(&self.subscribers)
            .keys()
            .cloned()
            .collect()
    }

    pub fn leases(&self) -> &Leases {
        &self.leases
    }
    /// The newest placement version this node was told.
    pub fn placement(&self) -> u64 {
        self.placement.load(Ordering::Acquire)
    }
    /// Refuses a call made by a placement older than the newest known
    /// (a hand-off driver or a repair working from an old plan).
    pub fn check_placement(&self, placement: u64) -> Result<(), tonic::Status> {
        let newest = self.placement();
        if placement != 0 && placement < newest {
            return Err(tonic::Status::failed_precondition(format!(
                "made by placement {placement}, but placement {newest} is current"
            )));
        }
        Ok(())
    }
    /// Raises the placement version (never lowers it); returns the newest.
    pub fn raise_placement(&self, version: u64) -> u64 {
        let prev = self.placement.fetch_max(version, Ordering::AcqRel);
        if version > prev {
            tracing::info!(from = prev, to = version, "placement version raised");
        }
        prev.max(version)
    }
    pub fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }

    fn check_key(&self, key: &str) -> Result<(), NodeError> {
        if key.is_empty() {
            return Err(NodeError::EmptyKey);
        }
        if key.len() > self.max_key_bytes.min(crate::config::MAX_KEY_LIMIT) {
            return Err(NodeError::KeyTooLong {
                len: key.len(),
                max: self.max_key_bytes.min(crate::config::MAX_KEY_LIMIT),
            });
        }
        Ok(())
    }

    /// Whether a consistent read would be answered now: not syncing, and
    /// every registered manager's read lease held.
    pub fn readable(&self) -> bool {
        !self.sync.is_syncing() && self.leases().held()
    }

    /// `None` when `consistent` and the node is syncing: it may lack writes,
    /// so it gives no answer at all.
    pub fn get(&self, key: &str, consistent: bool) -> Result<Option<Read>, NodeError> {
        self.check_key(key)?;
        self.requested(key);
        if consistent && self.sync.is_syncing() {
            return Ok(None);
        }
        Ok(Some(self.store.read(key)))
    }

    /// `ttl_ms == 0` means no expiry; `version == 0`: stamped by the node.
    pub fn set(
        &self,
        key: &str,
        value: &Bytes,
        ttl_ms: u64,
        version: u64,
        condition: Condition,
    ) -> Result<Outcome, NodeError> {
        self.check_key(key)?;
        self.requested(key);
        if value.len() > self.max_value_bytes {
            return Err(NodeError::ValueTooLarge {
                len: value.len(),
                max: self.max_value_bytes,
            });
        }
        let ttl = (ttl_ms > 0).then(|| Duration::from_millis(ttl_ms));
        self.write(Write {
            key,
            value: Some(value),
            ttl,
            version,
            condition,
        })
    }

    /// Deletes `key`, leaving a tombstone at `version` (0: the node's clock).
    pub fn delete(
        &self,
        key: &str,
        version: u64,
        condition: Condition,
    ) -> Result<Outcome, NodeError> {
        self.check_key(key)?;
        self.requested(key);
        self.write(Write {
            key,
            value: None,
            ttl: None,
            version,
            condition,
        })
    }

    /// A conditional write is decided only while the node answers
    /// consistent reads: a node that stopped (its sync begun, a manager's
    /// lease run out) may lack a write acknowledged meanwhile, and the
    /// condition would be checked against an older value. Checked before,
    /// and again under the shard lock once the write is in place (after
    /// any stall of this thread), where it is undone if the node stopped
    /// meanwhile (docs/design/conditional.md).
    fn write(&self, w: Write<'_>) -> Result<Outcome, NodeError> {
        if w.condition == Condition::Always {
            return Ok(self.store.apply(w)?);
        }
        let (syncing, generation) = self.sync.phase();
        if syncing || !self.leases().held() {
            return Err(NodeError::NotReadable);
        }
        let still_readable = || self.sync.phase() == (false, generation) && self.leases().held();
        match self.store.apply_fenced(w, &still_readable)? {
            Outcome::ConditionFailed { current } => Err(NodeError::PreconditionFailed { current }),
            Outcome::Fenced => {
                tracing::warn!(
                    key = w.key,
                    "conditional write undone: the node stopped answering reads while applying it"
                );
                Err(NodeError::NotReadable)
            }
            other => Ok(other),
        }
    }

    /// Records a dirty mark for `node_id` and tells subscribers at once.
    pub fn mark(&self, node_id: &str, since: u64) -> Result<u64, NodeError> {
        if node_id.is_empty() || node_id.len() > 1024 {
            return Err(NodeError::BadNodeId(node_id.chars().take(64).collect()));
        }
        // A mark dies with its holder: about itself, it would record
        // nothing that outlives the node, and a manager that read it would
        // take the node for one that missed writes, again and again (seen
        // in the container test: a manager with two handles for one node
        // sent the node its own mark, and repaired it every heartbeat).
        if node_id == self.id {
            return Err(NodeError::OwnMark);
        }
        let (generation, news) = self.marks.mark(node_id, since);
        if news {
            tracing::info!(node = %node_id, since, generation, "dirty mark recorded");
            self.publish_status();
        } else {
            tracing::debug!(node = %node_id, since, generation, "dirty mark renewed");
        }
        Ok(generation)
    }

    pub fn clear_mark(&self, node_id: &str, generation: u64) -> bool {
        let cleared = self.marks.clear(node_id, generation);
        if cleared {
            tracing::info!(node = %node_id, generation, "dirty mark cleared");
            self.publish_status();
        }
        cleared
    }

    pub fn begin_sync(&self, since: u64) -> (u64, u64) {
        let r = self.sync.begin(since);
        tracing::info!(since = r.1, generation = r.0, "syncing");
        self.publish_status();
        r
    }

    pub fn end_sync(&self, generation: u64) -> bool {
        let was = self.sync.is_syncing();
        let synced = self.sync.end(generation);
        if was && synced {
            tracing::info!(generation, "synced: readable again");
            self.publish_status();
        }
        synced
    }

    /// Publishes one status heartbeat on the event bus.
    pub fn publish_status(&self) {
        // Taken before the event goes out: a manager that names this
        // heartbeat in a lease renewal received it after this instant.
        let sent = std::time::Instant::now();
        let seq = self
            .store
            .events()
            .publish(EventKind::Status(self.store.stats()));
        self.leases.heartbeat(seq, sent);
    }
}
