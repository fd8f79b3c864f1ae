//! Starting a manager: the node clients and their membership tasks, the
//! embedded cluster when no nodes are given, and the HTTP server.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::accept::{self, ConnLimits};
use crate::admission::InFlight;
use crate::client::{CallError, NodeClient};
use crate::cluster::{Cluster, Connect, NodeHandle};
use crate::config::{parse_node, ManagerOptions};
use crate::durable_marks::DurableMarks;
use crate::embedded::Embedded;
use crate::http;
use crate::listener::{EventListener, Listeners, NoListener};
use crate::membership;
use crate::metrics::Metrics;
use crate::near_cache::NearCache;
use crate::placement::{self, etcd::Etcd};
use crate::resp::{self, TrackingHub};
use crate::state::AppState;

/// Node handles the near cache tracks (one per node that ever joined while
/// this manager ran; its slots are allocated in segments as nodes come):
/// nodes beyond are never filled from.
pub(crate) const NEAR_CACHE_NODES: usize = 65_536;
/// Calls to etcd get at least this long.
const ETCD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot start the embedded data nodes: {0}")]
    Embedded(#[source] std::io::Error),
    #[error(transparent)]
    Node(#[from] CallError),
    #[error("data node {0} is listed twice")]
    DuplicateNode(String),
    #[error("no data nodes: give --nodes or --embedded-nodes > 0")]
    NoNodes,
    #[error("invalid --etcd: {0}")]
    Etcd(#[from] crate::placement::etcd::EtcdError),
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] ringcache_common::tls::TlsError),
    #[error("{0}")]
    EtcdUser(String),
    #[error("cannot listen for RESP on {addr}: {source}")]
    Resp {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// Serves the manager's HTTP API on `listener` until `shutdown` completes,
/// then finishes in-flight requests, ends subscriptions and stops embedded
/// nodes.
pub async fn serve(
    listener: TcpListener,
    opts: ManagerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let token = CancellationToken::new();
    let embedded = if opts.nodes.is_empty() {
        Some(
            Embedded::start(&opts, &token)
                .await
                .map_err(ServeError::Embedded)?,
        )
    } else {
        None
    };
    let addrs: Vec<(Option<String>, String)> = match &embedded {
        Some(e) => e
            .addrs
            .iter()
            .map(|(id, a)| (Some(id.clone()), a.clone()))
            .collect(),
        None => opts.nodes.iter().map(|n| parse_node(n)).collect(),
    };
    let result = run(listener, &opts, addrs, &token, shutdown).await;
    token.cancel();
    if let Some(e) = embedded {
        e.join().await;
    }
    result
}

async fn run(
    listener: TcpListener,
    opts: &ManagerOptions,
    addrs: Vec<(Option<String>, String)>,
    token: &CancellationToken,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    if addrs.is_empty() {
        return Err(ServeError::NoNodes);
    }
    let mut seen = HashSet::new();
    let mut nodes = Vec::with_capacity(addrs.len());
    let mut connect = Connect::from_options(opts);
    connect.tls = opts.node_tls()?;
    let server_tls = opts.server_tls()?;
    let etcd_tls = opts.etcd_tls()?;
    ringcache_common::tls::spawn_reloader(
        ringcache_common::tls::reloadable(
            server_tls.as_ref(),
            &[connect.tls.as_ref(), etcd_tls.as_ref()],
        ),
        opts.tls_reload_interval,
        token.clone(),
    );
    for (id, a) in &addrs {
        if !seen.insert(a.as_str()) {
            return Err(ServeError::DuplicateNode(a.clone()));
        }
        if let Some(id) = id {
            if !seen.insert(id.as_str()) {
                return Err(ServeError::DuplicateNode(id.clone()));
            }
        }
        let client = NodeClient::new(a, &connect)?;
        nodes.push(Arc::new(NodeHandle::with_id(client, id.clone())));
    }
    let store = if opts.etcd.is_empty() {
        None
    } else {
        let prefix = format!("/ringcache/{}", opts.cluster_name);
        Some(Etcd::new(
            &opts.etcd,
            &prefix,
            opts.node_timeout.max(ETCD_TIMEOUT),
            etcd_tls,
            opts.etcd_user().map_err(ServeError::EtcdUser)?,
        )?)
    };
    let replicas = match store {
        // Nodes come and go: the ring takes min(replicas, nodes) itself.
        Some(_) => opts.replicas.unwrap_or(2),
        None => opts.replicas_for(addrs.len()),
    };
    // Unique per process: in containers every manager listens on the same
    // address with the same pid.
    let me = format!(
        "manager-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut cluster = Cluster::with_options(nodes, opts.vnodes, replicas, store.is_some(), connect)
        .with_identity(me.clone(), Some(opts.lease))
        .with_max_clock_skew(opts.max_clock_skew);
    if let Some(store) = &store {
        cluster = cluster.with_durable_marks(DurableMarks::new(store.clone(), me.clone()));
    }
    let mut listeners: Vec<Arc<dyn EventListener>> = Vec::new();
    if let Some(size) = opts.near_cache.filter(|&n| n > 0) {
        let near =
            Arc::new(NearCache::new(size, NEAR_CACHE_NODES).with_max_lag(opts.near_cache_max_lag));
        cluster = cluster.with_near_cache(near.clone());
        listeners.push(near);
    }
    // Bound before anything starts, so a taken port fails the start.
    let resp = match &opts.resp_listen {
        None => None,
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Resp {
                    addr: addr.clone(),
                    source,
                })?;
            let hub = Arc::new(TrackingHub::new(
                opts.resp_tracking,
                opts.resp_tracking_max_keys,
                opts.near_cache_max_lag,
                NEAR_CACHE_NODES,
            ));
            listeners.push(hub.clone());
            Some((l, hub))
        }
    };
    let listener_events: Arc<dyn EventListener> = match listeners.len() {
        0 => Arc::new(NoListener),
        1 => listeners.remove(0),
        _ => Arc::new(Listeners(listeners)),
    };
    let cluster = Arc::new(cluster);
    membership::start(
        &cluster,
        opts.heartbeat_timeout,
        listener_events,
        token.clone(),
    );
    if let Some(store) = &store {
        tokio::spawn(placement::follow(
            store.clone(),
            cluster.clone(),
            token.clone(),
        ));
        tokio::spawn(placement::register(
            store.clone(),
            cluster.clone(),
            token.clone(),
        ));
        tokio::spawn(placement::follow_managers(
            store.clone(),
            cluster.clone(),
            token.clone(),
        ));
        tokio::spawn(placement::discover::run(
            store.clone(),
            cluster.clone(),
            placement::discover::names(&opts.nodes),
            opts.discovery_grace,
            token.clone(),
        ));
        tokio::spawn(placement::handoff::drive(
            store.clone(),
            cluster.clone(),
            me,
            token.clone(),
        ));
    }
    let in_flight = InFlight::new(opts.max_concurrent_requests);
    let auth_token: Option<Arc<str>> = opts.auth_token.clone().map(Arc::from);
    let stop = token.clone();
    let stopping = CancellationToken::new();
    let stop_now = CancellationToken::new();
    if let Some((l, hub)) = resp {
        let front = Arc::new(resp::Front {
            keys: resp::Keys {
                cluster: cluster.clone(),
                max_key_bytes: opts.max_key_bytes,
                allow_flushall: opts.resp_allow_flushall,
                connected: Default::default(),
                accepted: Default::default(),
                commands: Default::default(),
                started: std::time::Instant::now(),
            },
            tracking: hub,
            in_flight: in_flight.clone(),
            auth_token: auth_token.clone(),
            max_value_bytes: usize::try_from(opts.max_value_bytes).unwrap_or(usize::MAX),
            // MSET of a few thousand pairs; more is refused as a protocol error.
            max_args: 1 << 16,
            header_read_timeout: opts.header_read_timeout,
            idle_timeout: opts.idle_timeout,
            max_connections: opts.max_connections,
            max_lag: opts.near_cache_max_lag,
        });
        let addr = l.local_addr().map_err(ServeError::Http)?;
        tracing::info!(%addr, tls = server_tls.is_some(), "manager serving RESP");
        tokio::spawn(resp::serve(l, front, server_tls.clone(), stopping.clone()));
    }
    let app = http::router(AppState {
        cluster: cluster.clone(),
        metrics: Arc::new(Metrics::default()),
        max_key_bytes: opts.max_key_bytes,
        max_value_bytes: opts.max_value_bytes,
        vnodes: opts.vnodes,
        auth_token,
        in_flight,
        body_timeout: opts.body_timeout,
        store,
    });
    let addr = listener.local_addr().map_err(ServeError::Http)?;
    tracing::info!(%addr, nodes = ?addrs, replicas = cluster.replicas(),
        https = server_tls.is_some(), node_tls = cluster.connect().tls.is_some(),
        "manager serving HTTP");
    {
        let stopping = stopping.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown => tracing::info!("manager shutting down"),
                _ = stop.cancelled() => {}
            }
            stopping.cancel();
        });
    }
    let limits = ConnLimits {
        max_connections: opts.max_connections,
        header_read_timeout: opts.header_read_timeout,
        idle_timeout: opts.idle_timeout,
    };
    let server = accept::serve(
        listener,
        app,
        limits,
        server_tls,
        stopping.clone(),
        stop_now.clone(),
    );
    // In-flight requests get `shutdown_grace` to finish; then we stop anyway
    // (a client holding a connection open must not keep us alive).
    let grace = opts.shutdown_grace;
    tokio::select! {
        () = server => {}
        _ = async {
            stopping.cancelled().await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(?grace, "shutdown grace period over; closing remaining connections");
            stop_now.cancel();
        }
    }
    Ok(())
}
