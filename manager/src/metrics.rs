//! Prometheus metrics of the manager on `GET /metrics`, encoded by the
//! Prometheus project's `prometheus-client` crate (OpenMetrics text): key
//! API requests by method and status, their latency histogram, and each
//! node's state and counters (from heartbeats).

use std::time::Duration;

use axum::http::Method;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{text, DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::cluster::Cluster;
use crate::node::NodeState;

/// Content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Statuses with a label of their own; any other is counted as `0`, so the
/// number of series stays bounded.
const STATUSES: [u16; 14] = [
    200, 201, 400, 401, 404, 405, 408, 413, 429, 500, 502, 503, 504, 0,
];
/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

type RequestLabels = [(&'static str, &'static str); 2];

/// The manager's metrics: the key API's are recorded as requests happen;
/// the nodes' are read from the cluster at every scrape.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        // The encoder appends `_total` to counters.
        registry.register(
            "ringcache_http_requests",
            "Key API requests by method and status (status 0: other)",
            requests.clone(),
        );
        let latency = Histogram::new(BUCKETS);
        registry.register(
            "ringcache_http_request_duration_seconds",
            "Key API request latency",
            latency.clone(),
        );
        Self {
            registry,
            requests,
            latency,
        }
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

/// Status codes as static strings, so that recording allocates nothing.
fn status_label(s: u16) -> &'static str {
    const LABELS: [&str; STATUSES.len()] = [
        "200", "201", "400", "401", "404", "405", "408", "413", "429", "500", "502", "503", "504",
        "0",
    ];
    let i = STATUSES
        .iter()
        .position(|&x| x == s)
        .unwrap_or(STATUSES.len() - 1);
    LABELS[i]
}

impl Metrics {
    pub fn record(&self, method: &Method, status: u16, took: Duration) {
        self.requests
            .get_or_create(&[
                ("method", method_label(method)),
                ("status", status_label(status)),
            ])
            .inc();
        self.latency.observe(took.as_secs_f64());
    }

    /// The exposition text: the request metrics, then the nodes' as the
    /// cluster sees them now.
    pub fn render(&self, cluster: &Cluster) -> String {
        let mut out = String::with_capacity(4096);
        let mut nodes = Registry::default();
        nodes.register_collector(Box::new(NodeSnapshot::of(cluster)));
        // Writing to a String cannot fail; the encoder's Result is for
        // other writers.
        let _ = text::encode_registry(&mut out, &self.registry)
            .and_then(|()| text::encode_registry(&mut out, &nodes))
            .and_then(|()| text::encode_eof(&mut out));
        out
    }
}

type Field = fn(&ringcache_proto::pb::StatsResponse) -> u64;

/// Per-node metrics from heartbeats: (name without `_total`, type, help, field).
const PER_NODE: [(&str, MetricType, &str, Field); 6] = [
    (
        "ringcache_node_items",
        MetricType::Gauge,
        "Entries held by the data node",
        |s| s.items,
    ),
    (
        "ringcache_node_bytes",
        MetricType::Gauge,
        "Accounted bytes held by the data node",
        |s| s.bytes_used,
    ),
    (
        "ringcache_node_memory_limit_bytes",
        MetricType::Gauge,
        "Memory bound of the data node",
        |s| s.memory_limit,
    ),
    (
        "ringcache_node_evictions",
        MetricType::Counter,
        "Entries evicted by the data node",
        |s| s.evictions,
    ),
    (
        "ringcache_node_hits",
        MetricType::Counter,
        "Reads that found their key on the data node",
        |s| s.hits,
    ),
    (
        "ringcache_node_misses",
        MetricType::Counter,
        "Reads that missed on the data node",
        |s| s.misses,
    ),
];

/// What a scrape reports about the nodes and the near cache, copied out of
/// the cluster (a collector must own its data).
#[derive(Debug)]
struct NodeSnapshot {
    /// Address, up, stats from the last heartbeat.
    nodes: Vec<(
        String,
        bool,
        Option<std::sync::Arc<ringcache_proto::pb::StatsResponse>>,
    )>,
    /// Items, bytes, hits, misses.
    near_cache: Option<(u64, u64, u64, u64)>,
    /// Versions ignored for being too far ahead of the clock.
    future_versions: u64,
}

impl NodeSnapshot {
    fn of(cluster: &Cluster) -> Self {
        Self {
            nodes: cluster
                .nodes()
                .iter()
                .map(|n| (n.addr().to_string(), n.state() == NodeState::Up, n.stats()))
                .collect(),
            near_cache: cluster.near_cache().map(|n| n.stats()),
            future_versions: cluster.future_versions(),
        }
    }
}

fn encode_const(metric: MetricEncoder, kind: MetricType, v: u64) -> Result<(), std::fmt::Error> {
    match kind {
        MetricType::Counter => ConstCounter::new(v).encode(metric),
        _ => ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(metric),
    }
}

/// One family with a `node` label per series.
fn encode_per_node(
    encoder: &mut DescriptorEncoder,
    (name, kind, help): (&str, MetricType, &str),
    series: impl IntoIterator<Item = (String, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (node, v) in series {
        let labels = [("node", node)];
        encode_const(family.encode_family(&labels)?, kind, v)?;
    }
    Ok(())
}

impl Collector for NodeSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_per_node(
            &mut encoder,
            (
                "ringcache_node_up",
                MetricType::Gauge,
                "1 when the data node is up (readable) in this manager's view",
            ),
            self.nodes
                .iter()
                .map(|(addr, up, _)| (addr.clone(), u64::from(*up))),
        )?;
        for (name, kind, help, field) in PER_NODE {
            encode_per_node(
                &mut encoder,
                (name, kind, help),
                self.nodes
                    .iter()
                    .filter_map(|(addr, _, s)| Some((addr.clone(), field(s.as_ref()?)))),
            )?;
        }
        encode_const(
            encoder.encode_descriptor(
                "ringcache_future_versions_ignored",
                "Versions seen in data nodes' answers and heartbeats further ahead of this \
                 manager's clock than --max-clock-skew, and ignored",
                None,
                MetricType::Counter,
            )?,
            MetricType::Counter,
            self.future_versions,
        )?;
        // At most --hot-keys series per node (5 by default): the label set
        // stays bounded, whatever the key space.
        let mut hot = encoder.encode_descriptor(
            "ringcache_node_hot_key_requests_per_second",
            "Estimated requests per second of the keys taking most of each data node's \
             requests (rank 1 is the hottest), from its last heartbeat",
            None,
            MetricType::Gauge,
        )?;
        for (addr, _, stats) in &self.nodes {
            for (rank, k) in stats.iter().flat_map(|s| s.hot_keys.iter()).enumerate() {
                let labels = [
                    ("node", addr.clone()),
                    ("rank", (rank + 1).to_string()),
                    ("key", k.key.clone()),
                ];
                encode_const(hot.encode_family(&labels)?, MetricType::Gauge, k.rate)?;
            }
        }
        if let Some((items, bytes, hits, misses)) = self.near_cache {
            for (name, kind, help, v) in [
                (
                    "ringcache_near_cache_items",
                    MetricType::Gauge,
                    "Entries in the manager's near cache",
                    items,
                ),
                (
                    "ringcache_near_cache_bytes",
                    MetricType::Gauge,
                    "Accounted bytes of the near cache",
                    bytes,
                ),
                (
                    "ringcache_near_cache_hits",
                    MetricType::Counter,
                    "Reads served by the near cache",
                    hits,
                ),
                (
                    "ringcache_near_cache_misses",
                    MetricType::Counter,
                    "Reads the near cache could not serve",
                    misses,
                ),
            ] {
                encode_const(encoder.encode_descriptor(name, help, None, kind)?, kind, v)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.record(&Method::GET, 200, Duration::from_micros(300));
        m.record(&Method::GET, 200, Duration::from_millis(3));
        m.record(&Method::PUT, 405, Duration::from_secs(10));
        let cluster = Cluster::new(Vec::new(), 16, 1);
        let text = m.render(&cluster);
        assert!(text.contains("ringcache_http_requests_total{method=\"GET\",status=\"200\"} 2"));
        assert!(text.contains("ringcache_http_requests_total{method=\"other\",status=\"405\"} 1"));
        assert!(text.contains("ringcache_http_request_duration_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("ringcache_http_request_duration_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("ringcache_http_request_duration_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("ringcache_http_request_duration_seconds_count 3"));
    }
}
