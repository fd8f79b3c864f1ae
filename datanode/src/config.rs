//! Data node options: command-line flags, each also readable from a
//! `DATANODE_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::store::StoreConfig;

pub use ringcache_common::limits::{
    parse_key_limit, parse_size, DEFAULT_MAX_KEY_BYTES, DEFAULT_MAX_MEMORY,
    DEFAULT_MAX_VALUE_BYTES, MAX_KEY_LIMIT,
};

/// Options of one data node.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "datanode",
    version,
    about = "ringcache data node: in-memory LRU/TTL store served over gRPC"
)]
pub struct NodeOptions {
    /// Address to serve gRPC on.
    #[arg(long, env = "DATANODE_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// Node identity reported in stats and events (default: the listen
    /// address; with an unspecified one such as 0.0.0.0, `<hostname>:<port>`).
    #[arg(long, env = "DATANODE_ID")]
    pub id: Option<String>,

    /// Bound of accounted memory, e.g. 64MiB or 1GB.
    #[arg(long, env = "DATANODE_MAX_MEMORY", default_value = "256MiB", value_parser = parse_size)]
    pub max_memory: u64,

    /// Optional bound on the number of entries.
    #[arg(long, env = "DATANODE_MAX_ITEMS")]
    pub max_items: Option<u64>,

    /// Number of independently locked shards of the store.
    #[arg(long, env = "DATANODE_SHARDS", default_value_t = 64)]
    pub shards: usize,

    /// Longest key accepted, in bytes.
    #[arg(long, env = "DATANODE_MAX_KEY_BYTES", default_value_t = DEFAULT_MAX_KEY_BYTES, value_parser = parse_key_limit)]
    pub max_key_bytes: usize,

    /// Largest value accepted, e.g. 1MiB.
    #[arg(long, env = "DATANODE_MAX_VALUE_BYTES", default_value = "1MiB", value_parser = parse_size_usize)]
    pub max_value_bytes: usize,

    /// Interval of status heartbeats on the Subscribe stream, e.g. 100ms.
    /// Read leases and the managers' near-cache staleness bound are
    /// counted from heartbeats: keep it well under the managers' --lease
    /// and --near-cache-max-lag.
    #[arg(long, env = "DATANODE_HEARTBEAT_INTERVAL", default_value = "100ms", value_parser = parse_interval)]
    pub heartbeat_interval: Duration,

    /// Hot keys reported in Stats and heartbeats (0: none tracked).
    #[arg(long, env = "DATANODE_HOT_KEYS", default_value_t = 5)]
    pub hot_keys: usize,

    /// One request in this many is counted for the hot keys (1: every one).
    #[arg(long, env = "DATANODE_HOT_KEY_SAMPLE", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub hot_key_sample: u64,

    /// The hot keys' sliding window.
    #[arg(long, env = "DATANODE_HOT_KEY_WINDOW", default_value = "10s", value_parser = parse_interval)]
    pub hot_key_window: Duration,

    /// A key above this share of a window's requests is logged (once per
    /// window); 0 logs none.
    #[arg(long, env = "DATANODE_HOT_KEY_LOG_SHARE", default_value_t = 0.25)]
    pub hot_key_log_share: f64,

    /// Interval of the sweep that frees expired entries.
    #[arg(long, env = "DATANODE_SWEEP_INTERVAL", default_value = "1s", value_parser = parse_interval)]
    pub sweep_interval: Duration,

    /// Runtime worker threads (default: one per core). Fewer suit several
    /// processes sharing a machine's cores.
    #[arg(long, env = "DATANODE_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,

    /// Time in-flight calls get to finish at shutdown (SIGTERM/SIGINT).
    #[arg(long, env = "DATANODE_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Shared secret: every DataNode call must carry `authorization: Bearer
    /// <token>`. Health and reflection stay open.
    #[arg(long, env = "DATANODE_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,

    /// Events kept per subscriber before it is told it lagged.
    #[arg(long, env = "DATANODE_EVENT_BUFFER", default_value_t = 65536)]
    pub event_buffer: usize,

    /// How long a deleted key's tombstone is kept (it makes a delete final
    /// on this replica against late or repaired older writes).
    #[arg(long, env = "DATANODE_TOMBSTONE_TTL", default_value = "5m", value_parser = parse_interval)]
    pub tombstone_ttl: Duration,

    /// Refuse a write whose version is further ahead of this machine's
    /// clock than this (a writer's clock set far ahead, a forged version):
    /// one such version would stay above every later write of its key.
    /// Keep it well above the clock offsets between your hosts.
    #[arg(long, env = "DATANODE_MAX_CLOCK_SKEW", default_value = "60s", value_parser = parse_interval)]
    pub max_clock_skew: Duration,

    /// Rate at which this node sends its entries to a peer that repairs or
    /// warms up from it, e.g. 64MiB (per second, per copy).
    #[arg(long, env = "DATANODE_SYNC_RATE", default_value = "64MiB", value_parser = parse_rate)]
    pub sync_rate: u64,

    /// PEM certificate chain: serve gRPC over TLS (with --tls-key), and
    /// present it to peers this node copies from.
    #[arg(long, env = "DATANODE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "DATANODE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require a client certificate chaining to this PEM CA bundle
    /// (managers, peers, grpcurl -cert).
    #[arg(long, env = "DATANODE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// PEM CA bundle that peers' certificates chain to, when this node
    /// copies from them (repair, warm-up, hand-off). Default: --tls-client-ca.
    #[arg(long, env = "DATANODE_TLS_CA", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,

    /// Name peers' certificates must carry, whatever address they are
    /// reached at (default: the host of the address). Containers found
    /// through DNS are reached by IP: give their certificates' shared name.
    #[arg(long, env = "DATANODE_TLS_PEER_NAME", requires = "tls_cert")]
    pub tls_peer_name: Option<String>,

    /// How often the TLS files are checked for changes (rotation without a
    /// restart: new connections use the new files).
    #[arg(long, env = "DATANODE_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_interval)]
    pub tls_reload_interval: Duration,
}

/// The defaults are the flags' own (`#[arg(default_value ...)]` above), the
/// one place they are written; the environment is ignored here.
impl Default for NodeOptions {
    fn default() -> Self {
        // Covered by the test `defaults_match_the_flags`.
        ringcache_common::process::flag_defaults("datanode")
    }
}

impl NodeOptions {
    /// Accounted bytes of the largest entry the limits accept (longest key,
    /// largest value).
    pub fn largest_entry(&self) -> u64 {
        self.max_key_bytes as u64 + self.max_value_bytes as u64 + crate::store::ENTRY_OVERHEAD
    }

    /// `--shards`, or fewer when the memory bound split that many ways
    /// could not hold the largest entry: each shard gets an equal share of
    /// `--max-memory`, and any value within `--max-value-bytes` must be
    /// storable on a node whose memory can hold it.
    pub fn effective_shards(&self) -> usize {
        let fit = (self.max_memory / self.largest_entry().max(1)).max(1);
        self.shards
            .clamp(1, usize::try_from(fit).unwrap_or(usize::MAX))
    }

    /// The server side of TLS, if --tls-cert is given.
    pub fn server_tls(
        &self,
    ) -> Result<Option<Arc<ringcache_common::tls::ServerTls>>, ringcache_common::tls::TlsError>
    {
        ringcache_common::tls::load_server(
            self.tls_cert.as_ref(),
            self.tls_key.as_ref(),
            self.tls_client_ca.as_ref(),
            ringcache_common::tls::ALPN_H2,
        )
    }

    /// The client side towards peers, if TLS is on: their CA (--tls-ca,
    /// else --tls-client-ca), and this node's own certificate as its
    /// identity. `None` without a CA: copies from TLS peers then fail.
    pub fn peer_tls(
        &self,
    ) -> Result<Option<Arc<ringcache_common::tls::ClientTls>>, ringcache_common::tls::TlsError>
    {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        ringcache_common::tls::load_client(
            self.tls_ca.as_ref().or(self.tls_client_ca.as_ref()),
            Some((cert, key)),
            self.tls_peer_name.clone(),
            ringcache_common::tls::ALPN_H2,
        )
    }

    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            max_memory: self.max_memory,
            max_items: self.max_items,
            shards: self.effective_shards(),
            tombstone_ttl: self.tombstone_ttl,
            max_clock_skew: self.max_clock_skew,
        }
    }
}

/// Parses a period such as `1s` or `250ms`; zero is refused.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("invalid interval {s:?}: {e}"))?;
    if d.is_zero() {
        return Err("the interval must be longer than zero".into());
    }
    Ok(d)
}

/// A size per second, more than zero.
fn parse_rate(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err("the rate must be more than zero".into()),
        n => Ok(n),
    }
}

fn parse_size_usize(s: &str) -> Result<usize, String> {
    parse_size(s).and_then(|n| usize::try_from(n).map_err(|e| e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_that_would_break_the_store_are_refused() {
        assert!(NodeOptions::try_parse_from(["datanode", "--max-key-bytes", "70000"]).is_err());
        assert!(NodeOptions::try_parse_from(["datanode", "--max-key-bytes", "0"]).is_err());
        assert!(NodeOptions::try_parse_from(["datanode", "--heartbeat-interval", "0s"]).is_err());
        assert!(NodeOptions::try_parse_from(["datanode", "--sweep-interval", "0ms"]).is_err());
        assert!(NodeOptions::try_parse_from(["datanode", "--max-key-bytes", "65535"]).is_ok());
        assert!(NodeOptions::try_parse_from(["datanode", "--worker-threads", "0"]).is_err());
        let one = NodeOptions::try_parse_from(["datanode", "--worker-threads", "1"]).unwrap();
        assert_eq!(one.worker_threads, Some(1));
    }

    #[test]
    fn defaults_match_the_flags() {
        // `Default` (used by the embedded cluster and tests) is built from
        // the flags' attributes: it must parse, and equal a plain parse.
        let set: Vec<String> = std::env::vars()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with("DATANODE_"))
            .collect();
        assert!(
            set.is_empty(),
            "unset {set:?} to run this test: they override flags"
        );
        let parsed = NodeOptions::try_parse_from(["datanode"]).unwrap();
        assert_eq!(
            format!("{parsed:?}"),
            format!("{:?}", NodeOptions::default())
        );
        // And the store's own defaults are the node's.
        let store = crate::store::StoreConfig::default();
        let from_flags = parsed.store_config();
        assert_eq!(format!("{store:?}"), format!("{from_flags:?}"));
    }
}
