//! Manager options: command-line flags, each also readable from a
//! `MANAGER_*` environment variable.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ringcache_common::limits::{parse_nonzero_size, parse_size};

use crate::ring::DEFAULT_VNODES;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "manager",
    version,
    about = "ringcache manager: HTTP key-value API routed to data nodes over a consistent hash ring"
)]
pub struct ManagerOptions {
    /// Address to serve the HTTP API on.
    #[arg(long, env = "MANAGER_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Data node gRPC addresses, comma-separated or repeated
    /// (http://host:port; a bare host:port means http), each optionally
    /// with the node's id as `id=addr` (then the manager can place keys
    /// before it reaches the node; otherwise the id is learned from the
    /// node). None: run an embedded cluster in this process.
    #[arg(long = "nodes", env = "MANAGER_NODES", value_delimiter = ',')]
    pub nodes: Vec<String>,

    /// etcd endpoints (http://host:2379, comma-separated) holding the
    /// placement: the node set every manager routes by, changed at runtime
    /// with `POST`/`DELETE /cluster/nodes` (docs/design/membership.md).
    /// Without it the placement is the --nodes list, fixed.
    #[arg(long = "etcd", env = "MANAGER_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,

    /// With --etcd, a data node found through a DNS name in --nodes (a
    /// scaled compose service, a Kubernetes headless Service) is removed
    /// from the placement only once its address has been missing from the
    /// answers this long: a pod briefly not ready, or a container
    /// restarting, must not start a hand-off and another one back.
    #[arg(long, env = "MANAGER_DISCOVERY_GRACE", default_value = "30s", value_parser = parse_nonzero_duration)]
    pub discovery_grace: Duration,

    /// Name of this cluster in etcd: its keys live under
    /// `/ringcache/<name>/`, so one etcd can serve several clusters.
    #[arg(long, env = "MANAGER_CLUSTER_NAME", default_value = "default")]
    pub cluster_name: String,

    /// Read lease this manager grants each data node (with --etcd): a
    /// node answers consistent reads only while it holds one from every
    /// registered manager, so a write that could not reach a replica
    /// waits at most this long before it is acknowledged.
    #[arg(long, env = "MANAGER_LEASE", default_value = "2s", value_parser = parse_nonzero_duration)]
    pub lease: Duration,

    /// Near-cache staleness bound: values learned from a node are served
    /// only while this manager has applied every event the node published
    /// up to this long ago (measured with a probe every 100 ms).
    #[arg(long, env = "MANAGER_NEAR_CACHE_MAX_LAG", default_value = "250ms", value_parser = parse_nonzero_duration)]
    pub near_cache_max_lag: Duration,

    /// Data nodes to run inside the manager when --nodes is not given.
    #[arg(long, env = "MANAGER_EMBEDDED_NODES", default_value_t = 3)]
    pub embedded_nodes: usize,

    /// Memory bound of each embedded data node, e.g. 256MiB.
    #[arg(long, env = "MANAGER_EMBEDDED_MAX_MEMORY", default_value = "256MiB", value_parser = parse_size)]
    pub embedded_max_memory: u64,

    /// Copies of each key, on successive distinct nodes of the ring
    /// (default: 2, or 1 with a single node).
    #[arg(long, env = "MANAGER_REPLICAS")]
    pub replicas: Option<usize>,

    /// Virtual nodes per data node on the ring.
    #[arg(long, env = "MANAGER_VNODES", default_value_t = DEFAULT_VNODES)]
    pub vnodes: usize,

    /// Ignore versions further ahead of this machine's clock than this, in
    /// nodes' answers and heartbeats (a clock set far ahead, a forged
    /// version): they would drag this manager's clock into the future.
    /// Counted in /metrics (ringcache_future_versions_ignored_total).
    #[arg(long, env = "MANAGER_MAX_CLOCK_SKEW", default_value = "60s", value_parser = parse_nonzero_duration)]
    pub max_clock_skew: Duration,

    /// Deadline of each call to a data node, e.g. 1s or 300ms.
    #[arg(long, env = "MANAGER_NODE_TIMEOUT", default_value = "1s", value_parser = parse_nonzero_duration)]
    pub node_timeout: Duration,

    /// Bytes of operations that may wait for one data node (queued for it,
    /// or sent and unanswered), e.g. 64MiB. Beyond it requests to that node
    /// wait within their deadline, so a stalled node cannot make the manager
    /// buffer without bound.
    #[arg(long, env = "MANAGER_NODE_QUEUE_BYTES", default_value = "64MiB", value_parser = parse_nonzero_size)]
    pub node_queue_bytes: u64,

    /// A node that sends no event (heartbeat) for this long is down.
    #[arg(long, env = "MANAGER_HEARTBEAT_TIMEOUT", default_value = "3s", value_parser = parse_nonzero_duration)]
    pub heartbeat_timeout: Duration,

    /// Size of the manager's near cache of hot values, e.g. 64MiB; kept
    /// coherent by the nodes' invalidation events. Off when absent or 0.
    #[arg(long, env = "MANAGER_NEAR_CACHE", value_parser = parse_size)]
    pub near_cache: Option<u64>,

    /// PEM certificate chain: serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN)
    /// instead of plain HTTP (with --tls-key).
    #[arg(long, env = "MANAGER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "MANAGER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Require HTTPS clients to present a certificate chaining to this PEM
    /// CA bundle.
    #[arg(long, env = "MANAGER_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,

    /// PEM CA bundle the data nodes' certificates chain to: talk to every
    /// node over TLS, verifying its certificate for the host in its address.
    #[arg(long, env = "MANAGER_NODE_TLS_CA")]
    pub node_tls_ca: Option<std::path::PathBuf>,

    /// Name the data nodes' certificates must carry, whatever address they
    /// are reached at (default: the host of the address). Nodes found
    /// through a DNS name are reached by IP: give their certificates' name.
    #[arg(long, env = "MANAGER_NODE_TLS_NAME", requires = "node_tls_ca")]
    pub node_tls_name: Option<String>,

    /// PEM CA bundle etcd's certificate chains to: talk to etcd over TLS.
    #[arg(long, env = "MANAGER_ETCD_CA")]
    pub etcd_ca: Option<std::path::PathBuf>,

    /// PEM client certificate for etcd (`--client-cert-auth`).
    #[arg(
        long,
        env = "MANAGER_ETCD_CERT",
        requires = "etcd_key",
        requires = "etcd_ca"
    )]
    pub etcd_cert: Option<std::path::PathBuf>,

    /// PEM private key of --etcd-cert.
    #[arg(long, env = "MANAGER_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<std::path::PathBuf>,

    /// etcd user (etcd's auth enabled): with --etcd-password-file.
    #[arg(long, env = "MANAGER_ETCD_USER", requires = "etcd_password_file")]
    pub etcd_user: Option<String>,

    /// File holding the etcd user's password (a mounted Secret, say; one
    /// trailing newline is ignored).
    #[arg(long, env = "MANAGER_ETCD_PASSWORD_FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<std::path::PathBuf>,

    /// PEM certificate chain this manager presents to the data nodes (for
    /// nodes started with --tls-client-ca).
    #[arg(
        long,
        env = "MANAGER_NODE_TLS_CERT",
        requires = "node_tls_key",
        requires = "node_tls_ca"
    )]
    pub node_tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --node-tls-cert.
    #[arg(long, env = "MANAGER_NODE_TLS_KEY", requires = "node_tls_cert")]
    pub node_tls_key: Option<std::path::PathBuf>,

    /// How often the TLS files are checked for changes (rotation without a
    /// restart: new connections use the new files).
    #[arg(long, env = "MANAGER_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_nonzero_duration)]
    pub tls_reload_interval: Duration,

    /// Shared secret: HTTP requests need `Authorization: Bearer <token>`
    /// (`/healthz` stays open), and the manager sends it to the data nodes.
    #[arg(long, env = "MANAGER_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,

    /// Requests handled at once; beyond it requests get an immediate 503
    /// instead of queueing without bound.
    #[arg(long, env = "MANAGER_MAX_CONCURRENT_REQUESTS", default_value_t = 4096)]
    pub max_concurrent_requests: usize,

    /// Runtime worker threads (default: one per core). Fewer suit several
    /// processes sharing a machine's cores.
    #[arg(long, env = "MANAGER_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,

    /// Time in-flight requests get to finish at shutdown (SIGTERM/SIGINT).
    #[arg(long, env = "MANAGER_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Longest key accepted, in bytes.
    #[arg(long, env = "MANAGER_MAX_KEY_BYTES", default_value_t = ringcache_common::limits::DEFAULT_MAX_KEY_BYTES, value_parser = ringcache_common::limits::parse_key_limit)]
    pub max_key_bytes: usize,

    /// Largest value accepted, e.g. 1MiB. Larger bodies are not read.
    #[arg(long, env = "MANAGER_MAX_VALUE_BYTES", default_value = "1MiB", value_parser = parse_size)]
    pub max_value_bytes: u64,

    // Connection limits (slow or idle clients must not hold resources).
    /// Open HTTP connections at most; further clients wait in the listen
    /// backlog until one closes.
    #[arg(long, env = "MANAGER_MAX_CONNECTIONS", default_value_t = 8192, value_parser = parse_positive)]
    pub max_connections: usize,

    /// An HTTP/1 connection whose request head (request line and headers)
    /// is not complete in this time is closed.
    #[arg(long, env = "MANAGER_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_nonzero_duration)]
    pub header_read_timeout: Duration,

    /// A connection with no request in flight for this long is closed
    /// (keep-alive, HTTP/2, or one that never sends a request).
    #[arg(long, env = "MANAGER_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_nonzero_duration)]
    pub idle_timeout: Duration,

    /// Serve the Redis protocol (RESP2/RESP3) here too, e.g. 127.0.0.1:6380
    /// (off unless given; with --tls-cert it is TLS as well).
    #[arg(long, env = "MANAGER_RESP_LISTEN")]
    pub resp_listen: Option<String>,

    /// Accept `CLIENT TRACKING ON` on the RESP front (client-side caching):
    /// the data nodes then send the manager an invalidation for every write.
    #[arg(long, env = "MANAGER_RESP_TRACKING", default_value_t = true, action = clap::ArgAction::Set)]
    pub resp_tracking: bool,

    /// Keys registered for tracking clients at most; reads beyond it are
    /// invalidated right after their reply (not cached by the client).
    #[arg(long, env = "MANAGER_RESP_TRACKING_MAX_KEYS", default_value_t = 1_000_000, value_parser = parse_positive)]
    pub resp_tracking_max_keys: usize,

    /// Let RESP `FLUSHALL` empty every data node (off: it is refused).
    #[arg(long, env = "MANAGER_RESP_ALLOW_FLUSHALL")]
    pub resp_allow_flushall: bool,

    /// A request body that sends nothing for this long is answered with 408.
    #[arg(long, env = "MANAGER_BODY_TIMEOUT", default_value = "10s", value_parser = parse_nonzero_duration)]
    pub body_timeout: Duration,
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("invalid number {s:?}: {e}")),
    }
}

/// Parses a duration such as `1s` or `250ms`; zero is refused (a zero
/// timeout would fail every call).
fn parse_nonzero_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    if d.is_zero() {
        return Err("the duration must be longer than zero".into());
    }
    Ok(d)
}

impl ManagerOptions {
    /// Replica count for `nodes` data nodes.
    pub fn replicas_for(&self, nodes: usize) -> usize {
        self.replicas.unwrap_or(2).clamp(1, nodes.max(1))
    }
}

impl ManagerOptions {
    /// HTTPS, if --tls-cert is given.
    pub fn server_tls(
        &self,
    ) -> Result<Option<Arc<ringcache_common::tls::ServerTls>>, ringcache_common::tls::TlsError>
    {
        ringcache_common::tls::load_server(
            self.tls_cert.as_ref(),
            self.tls_key.as_ref(),
            self.tls_client_ca.as_ref(),
            ringcache_common::tls::ALPN_HTTP,
        )
    }

    /// The etcd user and password, if --etcd-user is given.
    pub fn etcd_user(&self) -> Result<Option<(String, String)>, String> {
        let (Some(user), Some(file)) = (&self.etcd_user, &self.etcd_password_file) else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("--etcd-password-file {}: {e}", file.display()))?;
        let password = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        Ok(Some((user.clone(), password.to_string())))
    }

    /// TLS to etcd, if --etcd-ca is given.
    pub fn etcd_tls(
        &self,
    ) -> Result<Option<Arc<ringcache_common::tls::ClientTls>>, ringcache_common::tls::TlsError>
    {
        ringcache_common::tls::load_client(
            self.etcd_ca.as_ref(),
            self.etcd_cert.as_ref().zip(self.etcd_key.as_ref()),
            None,
            ringcache_common::tls::ALPN_H2,
        )
    }

    /// TLS to the data nodes, if --node-tls-ca is given.
    pub fn node_tls(
        &self,
    ) -> Result<Option<Arc<ringcache_common::tls::ClientTls>>, ringcache_common::tls::TlsError>
    {
        ringcache_common::tls::load_client(
            self.node_tls_ca.as_ref(),
            self.node_tls_cert.as_ref().zip(self.node_tls_key.as_ref()),
            self.node_tls_name.clone(),
            ringcache_common::tls::ALPN_H2,
        )
    }
}

/// Splits a `--nodes` entry into the pinned id (`id=addr`), if any, and the
/// address as a URI.
pub fn parse_node(spec: &str) -> (Option<String>, String) {
    let spec = spec.trim();
    match spec.split_once('=') {
        Some((id, addr)) if !id.is_empty() && !id.contains('/') => {
            (Some(id.to_string()), node_uri(addr))
        }
        _ => (None, node_uri(spec)),
    }
}

/// Normalizes a node address to a URI tonic can connect to.
pub fn node_uri(addr: &str) -> String {
    let addr = addr.trim();
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// The host and port of a node URI (`http://host:port`) whose host is a
/// DNS name, not an address literal.
pub fn host_name(uri: &str) -> Option<(String, u16)> {
    let authority = uri.split("://").nth(1)?.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host.parse::<std::net::IpAddr>().is_err()).then(|| (host.to_string(), port))
}

/// The flags' defaults, the environment ignored.
impl Default for ManagerOptions {
    fn default() -> Self {
        ringcache_common::process::flag_defaults("manager")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_comma_separated_or_repeated() {
        let o = ManagerOptions::try_parse_from([
            "manager",
            "--nodes",
            "http://a:1,b:2",
            "--nodes",
            "c:3",
        ])
        .unwrap();
        let uris: Vec<_> = o.nodes.iter().map(|n| node_uri(n)).collect();
        assert_eq!(uris, ["http://a:1", "http://b:2", "http://c:3"]);
        assert_eq!(
            parse_node("n1=http://a:1"),
            (Some("n1".into()), "http://a:1".into())
        );
        assert_eq!(
            parse_node("n2=b:2"),
            (Some("n2".into()), "http://b:2".into())
        );
        assert_eq!(parse_node("b:2"), (None, "http://b:2".into()));
    }

    #[test]
    fn replicas_default_to_two_but_never_exceed_nodes() {
        let o = ManagerOptions::try_parse_from(["manager"]).unwrap();
        assert_eq!(o.replicas_for(3), 2);
        assert_eq!(o.replicas_for(1), 1);
        assert_eq!(o.embedded_nodes, 3);
        assert_eq!(o.listen.port(), 8080);
        // Default is the same parse (what Connect::default builds on).
        let d = ManagerOptions::default();
        assert_eq!(
            (d.node_timeout, d.node_queue_bytes, d.embedded_nodes),
            (o.node_timeout, o.node_queue_bytes, o.embedded_nodes)
        );
        assert_eq!(d.node_queue_bytes, 64 << 20);
    }

    #[test]
    fn zero_timeouts_are_refused() {
        for flag in [
            "--node-timeout",
            "--heartbeat-timeout",
            "--header-read-timeout",
            "--idle-timeout",
            "--body-timeout",
        ] {
            assert!(
                ManagerOptions::try_parse_from(["manager", flag, "0s"]).is_err(),
                "{flag} 0s accepted"
            );
            assert!(ManagerOptions::try_parse_from(["manager", flag, "250ms"]).is_ok());
        }
        assert!(ManagerOptions::try_parse_from(["manager", "--max-connections", "0"]).is_err());
        assert!(ManagerOptions::try_parse_from(["manager", "--worker-threads", "0"]).is_err());
        assert!(ManagerOptions::try_parse_from(["manager", "--node-queue-bytes", "0"]).is_err());
        let o = ManagerOptions::try_parse_from(["manager", "--node-queue-bytes", "1MiB"]).unwrap();
        assert_eq!(o.node_queue_bytes, 1 << 20);
        // Zero grace is meaningful: stop at once.
        assert!(ManagerOptions::try_parse_from(["manager", "--shutdown-grace", "0s"]).is_ok());
    }
}
