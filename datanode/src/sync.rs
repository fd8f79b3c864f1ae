//! Repair and warm-up on the node's side (docs/design/consistency.md):
//!
//! - [`Marks`]: "node B may have missed writes from version `since` on",
//!   held for B by the nodes that took those writes, so that the fact
//!   survives the manager that saw B fail.
//! - [`SyncState`]: whether this node is syncing (written to, not read from
//!   by managers) and the progress of the copies into it.
//! - [`pull`]: copies entries of some key ranges from a peer's `Scan` into
//!   this node, with the ordinary versioned rule, so that duplicates and
//!   races with live writes are harmless.
//! - [`scan_batches`]: the source side, throttled.

use std::collections::HashMap;
use std::sync::Arc;

use crate::primitives::{AtomicU32, AtomicU64, Mutex, Ordering};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use ringcache_proto::pb;
use tokio::sync::mpsc;
use tonic::transport::Endpoint;
use tonic::Status;

use crate::events::lock;
use crate::node::Node;
use crate::store::{HashRanges, ScanCursor, Store, Write};

/// Largest payload of one scan batch: keeps messages well under the gRPC
/// limits whatever the value sizes (a batch always holds at least one entry).
const BATCH_BYTES: usize = 1 << 20;
/// Slots examined per scan batch.
const BATCH_SLOTS: usize = 4096;
/// Largest message a pulling node accepts: one batch plus one largest value.
const MAX_PULL_MESSAGE: usize = 64 << 20;

/// Dirty marks this node holds for other nodes.
#[derive(Default)]
pub struct Marks {
    marks: Mutex<HashMap<String, pb::DirtyMark>>,
    generation: AtomicU64,
}

impl Marks {
    /// Records that `node_id` may have missed writes from `since` on; keeps
    /// the oldest `since`. Returns the mark's new generation (every mark
    /// bumps it, so a repair that read an older one cannot clear this), and
    /// whether the mark is new or its `since` went down (worth telling
    /// subscribers at once; a mark repeated for each write that skips a
    /// node changes nothing they do not know).
    pub fn mark(&self, node_id: &str, since: u64) -> (u64, bool) {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let mut marks = lock(&self.marks);
        let mut news = false;
        let m = marks.entry(node_id.to_string()).or_insert_with(|| {
            news = true;
            pb::DirtyMark {
                node_id: node_id.to_string(),
                since,
                generation,
            }
        });
        news |= since < m.since;
        m.since = m.since.min(since);
        m.generation = generation;
        (generation, news)
    }

    /// Removes `node_id`'s mark if it is still at `generation`.
    pub fn clear(&self, node_id: &str, generation: u64) -> bool {
        let mut marks = lock(&self.marks);
        match marks.get(node_id) {
            Some(m) if m.generation == generation => {
                marks.remove(node_id);
                true
            }
            _ => false,
        }
    }

    pub fn list(&self) -> Vec<pb::DirtyMark> {
        let mut v: Vec<_> = lock(&self.marks).values().cloned().collect();
        v.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        v
    }
}

#[derive(Debug, Clone, Copy)]
struct Phase {
    syncing: bool,
    since: u64,
    generation: u64,
}

/// Whether this node may be read by managers, and the copies into it.
pub struct SyncState {
    phase: Mutex<Phase>,
    keys_copied: AtomicU64,
    bytes_copied: AtomicU64,
    scanned: AtomicU64,
    to_scan: AtomicU64,
    pulls_running: AtomicU32,
    /// Whether the node holds its share (not syncing), for the readiness
    /// check: sent under the phase lock, so it follows the phase's order.
    synced: tokio::sync::watch::Sender<bool>,
}

impl SyncState {
    /// A new process holds nothing: it starts syncing everything.
    pub fn new() -> Self {
        Self {
            phase: Mutex::new(Phase {
                syncing: true,
                since: 0,
                generation: 1,
            }),
            keys_copied: AtomicU64::new(0),
            bytes_copied: AtomicU64::new(0),
            scanned: AtomicU64::new(0),
            to_scan: AtomicU64::new(0),
            pulls_running: AtomicU32::new(0),
            synced: tokio::sync::watch::channel(false).0,
        }
    }

    /// Follows whether the node holds its share (true once a manager ended
    /// its sync, false again while it is repaired).
    pub fn synced(&self) -> tokio::sync::watch::Receiver<bool> {
        self.synced.subscribe()
    }

    pub fn is_syncing(&self) -> bool {
        lock(&self.phase).syncing
    }

    /// Whether syncing, and the generation (raised by every sync begun).
    pub fn phase(&self) -> (bool, u64) {
        let p = lock(&self.phase);
        (p.syncing, p.generation)
    }

    /// Enters (or widens) the syncing state; returns the generation to end
    /// and the effective `since`. A call that brings nothing new (already
    /// syncing from an older point) keeps the generation, so that two
    /// managers repairing one node do not undo each other's work.
    pub fn begin(&self, since: u64) -> (u64, u64) {
        let mut p = lock(&self.phase);
        if !p.syncing || since < p.since {
            if !p.syncing {
                for c in [
                    &self.keys_copied,
                    &self.bytes_copied,
                    &self.scanned,
                    &self.to_scan,
                ] {
                    c.store(0, Ordering::Relaxed);
                }
            }
            p.generation += 1;
            p.since = if p.syncing { p.since.min(since) } else { since };
            p.syncing = true;
            self.synced.send_replace(false);
        }
        (p.generation, p.since)
    }

    /// Leaves the syncing state if nothing began since `generation`.
    /// Returns whether the node is synced now.
    pub fn end(&self, generation: u64) -> bool {
        let mut p = lock(&self.phase);
        if p.syncing && p.generation == generation {
            p.syncing = false;
            self.synced.send_replace(true);
        }
        !p.syncing
    }

    pub fn snapshot(&self) -> pb::SyncState {
        let p = *lock(&self.phase);
        pb::SyncState {
            syncing: p.syncing,
            since: p.since,
            generation: p.generation,
            keys_copied: self.keys_copied.load(Ordering::Relaxed),
            bytes_copied: self.bytes_copied.load(Ordering::Relaxed),
            scanned: self.scanned.load(Ordering::Relaxed),
            to_scan: self.to_scan.load(Ordering::Relaxed),
            pulls_running: self.pulls_running.load(Ordering::Relaxed),
        }
    }
}

impl Default for SyncState {
    fn default() -> Self {
        Self::new()
    }
}

/// Converts the protocol's ranges.
pub fn ranges(r: &[pb::HashRange]) -> HashRanges {
    HashRanges::new(r.iter().map(|r| (r.start, r.end)))
}

/// The source side of a copy: this node's entries in `ranges` with versions
/// from `since` on, in batches, at most `rate` bytes of keys and values per
/// second. Each batch carries the store's `lost_after` as of that batch.
pub fn scan_batches(
    store: Store,
    ranges: HashRanges,
    since: u64,
    rate: u64,
) -> impl Stream<Item = Result<pb::ScanBatch, Status>> + Send + 'static {
    let to_scan = store.entries();
    let started = Instant::now();
    let state = (Some(ScanCursor::default()), 0u64, 0u64);
    futures::stream::unfold(state, move |(cursor, scanned, sent)| {
        let store = store.clone();
        let ranges = ranges.clone();
        async move {
            let cursor = cursor?;
            // Pace to the rate: wait until the bytes sent so far are due.
            let due = Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            let (entries, examined, next) =
                store.scan(&ranges, since, cursor, BATCH_SLOTS, BATCH_BYTES);
            let bytes: u64 = entries
                .iter()
                .map(|e| (e.key.len() + e.value.as_ref().map_or(0, |v| v.len())) as u64)
                .sum();
            let scanned = scanned + examined;
            let batch = pb::ScanBatch {
                entries: entries.into_iter().map(crate::convert::entry).collect(),
                scanned,
                to_scan: to_scan.max(scanned),
                lost_after: store.lost_after(),
                floor: store.floor(),
            };
            Some((Ok(batch), (next, scanned, sent + bytes)))
        }
    })
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("invalid source address {0:?}")]
    Address(String),
    #[error("cannot reach source {source_addr}: {status}")]
    Source { source_addr: String, status: Status },
    #[error("the caller went away")]
    Cancelled,
}

/// Copies `ranges` from the node at `source` into `node`, sending progress
/// on `progress`. If the source lost entries newer than `since` (it evicted
/// or expired them, or started after `since`), a delta copy cannot tell
/// this node which of its own entries are stale: it drops its entries in
/// the ranges and copies them in full.
pub async fn pull(
    node: Arc<Node>,
    source: String,
    ranges_pb: Vec<pb::HashRange>,
    mut since: u64,
    progress: mpsc::Sender<Result<pb::PullProgress, Status>>,
) -> Result<(), PullError> {
    let ranges = ranges(&ranges_pb);
    let endpoint = Endpoint::from_shared(ringcache_common::tls::plain_scheme(&source))
        .map_err(|_| PullError::Address(source.clone()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let token = ringcache_common::auth::AddToken::new(node.auth_token())
        .map_err(|_| PullError::Address(source.clone()))?;
    let channel = match node.peer_tls() {
        Some(tls) => endpoint
            .connect_with_connector_lazy(ringcache_common::tls::GrpcConnector::new(tls.clone())),
        None => endpoint.connect_lazy(),
    };
    let mut client = pb::data_node_client::DataNodeClient::with_interceptor(channel, token)
        .max_decoding_message_size(MAX_PULL_MESSAGE);
    let failed = |status| PullError::Source {
        source_addr: source.clone(),
        status,
    };
    let state = node.sync_state();
    let mut totals = pb::PullProgress::default();
    'attempt: loop {
        let mut stream = client
            .scan(pb::ScanRequest {
                ranges: ranges_pb.clone(),
                since,
            })
            .await
            .map_err(failed)?
            .into_inner();
        let (mut scanned_before, mut to_scan_before) = (0, 0);
        while let Some(batch) = stream.message().await.map_err(failed)? {
            if since > 0 && batch.lost_after >= since {
                tracing::info!(
                    %source, since, lost_after = batch.lost_after,
                    "source lost entries newer than the repair point; copying the ranges in full"
                );
                let dropped = node.store().prune(&ranges);
                tracing::info!(dropped, "dropped entries that may be stale");
                since = 0;
                totals.full = true;
                continue 'attempt;
            }
            // What the source dropped without a trace, this node must not
            // take back from a delayed live write either.
            node.store().raise_pruned_floor(&ranges, batch.floor);
            for e in batch.entries {
                let size = (e.key.len() + e.value.len()) as u64;
                let w = Write {
                    key: &e.key,
                    value: (!e.tombstone).then_some(&e.value[..]),
                    ttl: (e.ttl_remaining_ms > 0)
                        .then(|| Duration::from_millis(e.ttl_remaining_ms)),
                    version: e.version.max(1),
                    condition: Default::default(),
                };
                // A refusal here (too large for this node) leaves the key
                // absent, which is safe: the other replica serves it.
                if let Ok(crate::store::Outcome::Applied { .. }) = node.store().apply_copy(w) {
                    totals.keys_copied += 1;
                    totals.bytes_copied += size;
                    state.keys_copied.fetch_add(1, Ordering::Relaxed);
                    state.bytes_copied.fetch_add(size, Ordering::Relaxed);
                }
            }
            state
                .scanned
                .fetch_add(batch.scanned - scanned_before, Ordering::Relaxed);
            scanned_before = batch.scanned;
            state.to_scan.fetch_add(
                batch.to_scan.saturating_sub(to_scan_before),
                Ordering::Relaxed,
            );
            to_scan_before = batch.to_scan;
            totals.scanned = batch.scanned;
            totals.to_scan = batch.to_scan;
            if progress.send(Ok(totals)).await.is_err() {
                return Err(PullError::Cancelled);
            }
        }
        break;
    }
    totals.done = true;
    let _ = progress.send(Ok(totals)).await;
    Ok(())
}

/// Runs [`pull`] for a `Pull` call, counting it as running in the state.
pub fn start_pull(
    node: Arc<Node>,
    req: pb::PullRequest,
) -> impl Stream<Item = Result<pb::PullProgress, Status>> + Send + 'static {
    let (tx, rx) = mpsc::channel(16);
    let state = node.sync_state();
    state.pulls_running.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let source = req.source.clone();
        let errors = tx.clone();
        let result = pull(node.clone(), req.source, req.ranges, req.since, tx).await;
        node.sync_state()
            .pulls_running
            .fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(()) => tracing::info!(%source, "pull finished"),
            Err(e) => {
                tracing::warn!(%source, error = %e, "pull failed");
                let _ = errors.send(Err(Status::unavailable(e.to_string()))).await;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_keep_the_oldest_since_and_clear_by_generation() {
        let m = Marks::default();
        let (g1, new) = m.mark("b", 100);
        assert!(new, "a new mark is news");
        let (g2, lower) = m.mark("b", 50);
        assert!(lower, "an older since is news");
        assert_ne!(g1, g2);
        assert_eq!(m.list()[0].since, 50);
        let (g3, news) = m.mark("b", 70);
        assert!(!news, "a newer since changes nothing subscribers act on");
        assert!(
            g3 > g2,
            "but the generation moves: a repair that read g2 cannot clear it"
        );
        assert_eq!(m.list()[0].since, 50);
        // A clear by an outdated generation keeps the mark.
        assert!(!m.clear("b", g2));
        assert!(!m.clear("b", g1));
        let g = m.list()[0].generation;
        assert!(m.clear("b", g));
        assert!(m.list().is_empty());
    }

    #[test]
    fn sync_ends_only_at_the_latest_generation_that_brought_something_new() {
        let s = SyncState::new();
        assert!(s.is_syncing());
        let (g0, since) = s.begin(500);
        assert_eq!(since, 0, "a new process needs everything");
        // A second repairer with nothing new shares the generation.
        assert_eq!(s.begin(900).0, g0);
        assert!(s.end(g0));
        assert!(!s.is_syncing());
        let (g1, since) = s.begin(700);
        assert_eq!(since, 700);
        let (g2, since) = s.begin(600);
        assert_eq!(since, 600);
        assert!(!s.end(g1), "an older generation cannot end a newer sync");
        assert!(s.is_syncing());
        assert!(s.end(g2));
        assert!(s.end(g1), "already synced");
    }

    #[test]
    fn readiness_follows_the_sync_phase() {
        let s = SyncState::new();
        let ready = s.synced();
        assert!(!*ready.borrow(), "a new process does not hold its share");
        let (g, _) = s.begin(0);
        assert!(!*ready.borrow());
        assert!(s.end(g));
        assert!(*ready.borrow());
        let (g, _) = s.begin(10);
        assert!(!*ready.borrow(), "a repair makes it not ready again");
        assert!(!s.end(g + 1) && !*ready.borrow());
        assert!(s.end(g) && *ready.borrow());
    }
}
