//! The cluster's hot keys (issue 24): each data node reports the keys
//! taking most of its requests in its heartbeats (an estimate from a sample
//! over a sliding window, `datanode/src/hotkeys.rs`); this merges them for
//! `GET /cluster/hotkeys`, `/metrics` and the dashboard. Nothing is asked
//! of the nodes here: the latest heartbeat of each is used.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use crate::cluster::Cluster;
use crate::state::AppState;

/// Rows in `/cluster/hotkeys`.
const MAX_ROWS: usize = 50;

/// One key on one node. A key is hot on each of its replicas the reads
/// and writes reach: it may be listed once per node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HotKeyRow {
    pub key: String,
    /// The node's id (its address until the id is known).
    pub node: String,
    /// Requests per second for the key on that node, estimated.
    pub rate: u64,
    /// Its share of that node's requests, 0 to 1.
    pub share: f64,
}

/// Every node's reported hot keys, hottest first.
pub fn merge(cluster: &Cluster) -> Vec<HotKeyRow> {
    let mut rows = Vec::new();
    for node in cluster.nodes().iter().filter(|n| !n.is_retired()) {
        let Some(stats) = node.stats() else {
            continue;
        };
        let name = node.id().unwrap_or_else(|| node.addr().to_string());
        rows.extend(stats.hot_keys.iter().map(|k| HotKeyRow {
            key: k.key.clone(),
            node: name.clone(),
            rate: k.rate,
            share: f64::from(k.share_permille) / 1000.0,
        }));
    }
    rows.sort_by(|a, b| {
        b.rate
            .cmp(&a.rate)
            .then_with(|| a.key.cmp(&b.key))
            .then_with(|| a.node.cmp(&b.node))
    });
    rows
}

#[derive(Serialize)]
pub struct HotKeysView {
    keys: Vec<HotKeyRow>,
}

/// `GET /cluster/hotkeys`.
pub async fn hot_keys(State(st): State<Arc<AppState>>) -> Json<HotKeysView> {
    let mut keys = merge(&st.cluster);
    keys.truncate(MAX_ROWS);
    Json(HotKeysView { keys })
}
