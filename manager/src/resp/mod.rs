//! The Redis-protocol front (`--resp-listen`, docs/design/resp.md):
//! redis-cli, redis-benchmark and Redis client libraries against the same
//! cluster the HTTP API serves, with the same routes, limits, in-flight
//! bound and token.
//!
//! - [`frame`]: requests out of the byte stream, replies into it (RESP2
//!   and RESP3, with the `redis-protocol` crate).
//! - [`command`]: a request read as a command, checked as Redis checks it.
//! - [`exec`]: the key commands against the cluster.
//! - [`conn`]: one connection: pipelining, ordering, the connection's own
//!   commands, timeouts.
//! - [`tracking`]: client-side caching's invalidation pushes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ringcache_common::tls::ServerTls;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::admission::InFlight;

pub mod command;
mod conn;
pub mod exec;
pub mod frame;
pub mod tracking;

pub use exec::Keys;
pub use tracking::TrackingHub;

/// The Redis version clients are told (`HELLO`, `INFO`): the supported
/// commands answer as Redis 7 does, and client libraries enable
/// client-side caching only from 7.4 on (redis-py checks).
pub const REDIS_VERSION: &str = "7.4.0";

/// The commands this front knows (`COMMAND COUNT`, the README's list).
pub const COMMANDS: &[&str] = &[
    "PING",
    "ECHO",
    "HELLO",
    "AUTH",
    "SELECT",
    "QUIT",
    "RESET",
    "CLIENT",
    "COMMAND",
    "INFO",
    "GET",
    "SET",
    "DEL",
    "UNLINK",
    "EXISTS",
    "EXPIRE",
    "PEXPIRE",
    "EXPIREAT",
    "PEXPIREAT",
    "PERSIST",
    "TTL",
    "PTTL",
    "MGET",
    "MSET",
    "INCR",
    "DECR",
    "INCRBY",
    "DECRBY",
    "DBSIZE",
    "FLUSHALL",
    "FLUSHDB",
];

/// What every RESP connection shares.
pub struct Front {
    pub keys: Keys,
    pub tracking: Arc<TrackingHub>,
    pub in_flight: InFlight,
    pub auth_token: Option<Arc<str>>,
    pub max_value_bytes: usize,
    pub max_args: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// `--near-cache-max-lag`: the tracking clients' staleness bound.
    pub max_lag: Duration,
}

impl Front {
    /// `INFO`: Redis's layout (`# Section` then `field:value` lines).
    fn info(&self, section: Option<&str>) -> String {
        let want = |s: &str| {
            matches!(section, None | Some("all" | "default" | "everything")) || section == Some(s)
        };
        let mut out = String::new();
        let k = &self.keys;
        if want("server") {
            out.push_str(&format!(
                "# Server\r\nredis_version:{REDIS_VERSION}\r\nringcache_version:{}\r\nredis_mode:standalone\r\nprocess_id:{}\r\nuptime_in_seconds:{}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                std::process::id(),
                k.started.elapsed().as_secs()
            ));
        }
        if want("clients") {
            out.push_str(&format!(
                "# Clients\r\nconnected_clients:{}\r\ntracking_clients:{}\r\nmaxclients:{}\r\n\r\n",
                k.connected.load(Ordering::Relaxed),
                self.tracking.clients(),
                self.max_connections
            ));
        }
        if want("stats") {
            out.push_str(&format!(
                "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\ntracking_total_keys:{}\r\n\r\n",
                k.accepted.load(Ordering::Relaxed),
                k.commands.load(Ordering::Relaxed),
                self.tracking.registered()
            ));
        }
        if want("keyspace") {
            // From the nodes' last heartbeats: each key counts once per
            // replica, so the sum is divided by the replica count.
            let nodes = k.cluster.nodes();
            let items: u64 = nodes
                .iter()
                .filter(|n| n.writable())
                .filter_map(|n| n.stats())
                .map(|s| s.items)
                .sum();
            let keys = items / k.cluster.replicas().max(1) as u64;
            out.push_str(&format!(
                "# Keyspace\r\ndb0:keys={keys},expires=0,avg_ttl=0\r\n"
            ));
        }
        out
    }
}

/// Pause after a failed `accept` (out of file descriptors, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves RESP on `listener` until `stopping` is cancelled; then each
/// connection finishes the commands it is running and closes.
pub async fn serve(
    listener: TcpListener,
    front: Arc<Front>,
    tls: Option<Arc<ServerTls>>,
    stopping: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(front.max_connections));
    {
        // The tracking clients' staleness bound, checked 4 times per bound.
        let hub = front.tracking.clone();
        let every = (front.max_lag / 4).max(Duration::from_millis(10));
        let stopping = stopping.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => hub.check_lag(),
                    _ = stopping.cancelled() => return,
                }
            }
        });
    }
    loop {
        // At the connection cap, further clients wait in the backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stopping.cancelled() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "RESP accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = stopping.cancelled() => return,
        };
        // Replies are written whole; Nagle would hold the last one back.
        let _ = stream.set_nodelay(true);
        let front = front.clone();
        let stopping = stopping.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            front.keys.accepted.fetch_add(1, Ordering::Relaxed);
            front.keys.connected.fetch_add(1, Ordering::Relaxed);
            match tls {
                None => conn::serve(front.clone(), stream, stopping).await,
                Some(tls) => {
                    let handshake = tls.acceptor().accept(stream);
                    match tokio::time::timeout(front.header_read_timeout, handshake).await {
                        Ok(Ok(s)) => conn::serve(front.clone(), s, stopping).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "RESP TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "RESP TLS handshake timed out"),
                    }
                }
            }
            front.keys.connected.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
