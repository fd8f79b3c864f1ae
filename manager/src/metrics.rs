//! Prometheus metrics of the manager, rendered in the text exposition
//! format on `GET /metrics`: key API requests by method and status, their
//! latency histogram, and each node's state and counters (from heartbeats).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use crate::cluster::{Cluster, NodeState};

const METHODS: [&str; 4] = ["GET", "POST", "DELETE", "other"];
const STATUSES: [u16; 13] = [
    200, 201, 400, 401, 404, 405, 413, 429, 500, 502, 503, 504, 0,
];
/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Counters of the key API; lock-free so that recording costs a few atomic
/// adds per request.
pub struct Metrics {
    requests: [[AtomicU64; STATUSES.len()]; METHODS.len()],
    buckets: [AtomicU64; BUCKETS.len()],
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_us: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
        }
    }
}

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::DELETE => 2,
        _ => 3,
    }
}

fn status_index(s: u16) -> usize {
    STATUSES
        .iter()
        .position(|&x| x == s)
        .unwrap_or(STATUSES.len() - 1)
}

impl Metrics {
    pub fn record(&self, method: &Method, status: u16, took: Duration) {
        self.requests[method_index(method)][status_index(status)].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        // Buckets are stored non-cumulatively and summed when rendered.
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self, cluster: &Cluster) -> String {
        let mut out = String::with_capacity(4096);
        let o = &mut out;
        header(
            o,
            "ringcache_http_requests_total",
            "counter",
            "Key API requests by method and status (status 0: other).",
        );
        for (mi, m) in METHODS.iter().enumerate() {
            for (si, s) in STATUSES.iter().enumerate() {
                let n = self.requests[mi][si].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        o,
                        "ringcache_http_requests_total{{method=\"{m}\",status=\"{s}\"}} {n}"
                    );
                }
            }
        }
        header(
            o,
            "ringcache_http_request_duration_seconds",
            "histogram",
            "Key API request latency.",
        );
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                o,
                "ringcache_http_request_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}"
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            o,
            "ringcache_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(o, "ringcache_http_request_duration_seconds_sum {sum}");
        let _ = writeln!(o, "ringcache_http_request_duration_seconds_count {count}");

        let nodes: Vec<_> = cluster
            .nodes()
            .iter()
            .map(|n| (n.addr().to_string(), n.state(), n.info()))
            .collect();
        header(
            o,
            "ringcache_node_up",
            "gauge",
            "1 when the data node is up (readable) in this manager's view.",
        );
        for (addr, state, _) in &nodes {
            let up = u8::from(*state == NodeState::Up);
            let _ = writeln!(o, "ringcache_node_up{{node=\"{addr}\"}} {up}");
        }
        type Field = fn(&ringcache_proto::pb::StatsResponse) -> u64;
        let per_node: [(&str, &str, &str, Field); 6] = [
            (
                "ringcache_node_items",
                "gauge",
                "Entries held by the data node.",
                |s| s.items,
            ),
            (
                "ringcache_node_bytes",
                "gauge",
                "Accounted bytes held by the data node.",
                |s| s.bytes_used,
            ),
            (
                "ringcache_node_memory_limit_bytes",
                "gauge",
                "Memory bound of the data node.",
                |s| s.memory_limit,
            ),
            (
                "ringcache_node_evictions_total",
                "counter",
                "Entries evicted by the data node.",
                |s| s.evictions,
            ),
            (
                "ringcache_node_hits_total",
                "counter",
                "Reads that found their key on the data node.",
                |s| s.hits,
            ),
            (
                "ringcache_node_misses_total",
                "counter",
                "Reads that missed on the data node.",
                |s| s.misses,
            ),
        ];
        for (name, kind, help, field) in per_node {
            header(o, name, kind, help);
            for (addr, _, info) in &nodes {
                if let Some(s) = &info.stats {
                    let _ = writeln!(o, "{name}{{node=\"{addr}\"}} {}", field(s));
                }
            }
        }
        if let Some(near) = cluster.near_cache() {
            let (items, bytes, hits, misses) = near.stats();
            for (name, kind, help, v) in [
                (
                    "ringcache_near_cache_items",
                    "gauge",
                    "Entries in the manager's near cache.",
                    items,
                ),
                (
                    "ringcache_near_cache_bytes",
                    "gauge",
                    "Accounted bytes of the near cache.",
                    bytes,
                ),
                (
                    "ringcache_near_cache_hits_total",
                    "counter",
                    "Reads served by the near cache.",
                    hits,
                ),
                (
                    "ringcache_near_cache_misses_total",
                    "counter",
                    "Reads the near cache could not serve.",
                    misses,
                ),
            ] {
                header(o, name, kind, help);
                let _ = writeln!(o, "{name} {v}");
            }
        }
        out
    }
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// Middleware recording every request of the key API.
pub async fn track(
    State(metrics): State<std::sync::Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let start = Instant::now();
    let resp = next.run(req).await;
    metrics.record(&method, resp.status().as_u16(), start.elapsed());
    resp
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
