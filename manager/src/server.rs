//! Starting a manager: the node clients and their membership tasks, the
//! embedded cluster when no nodes are given, and the HTTP server.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::accept::{self, ConnLimits};
use crate::client::{CallError, NodeClient};
use crate::cluster::{Cluster, NodeHandle};
use crate::config::{parse_node, ManagerOptions};
use crate::embedded::Embedded;
use crate::http::{self, AppState};
use crate::membership::{self, EventListener, NoListener};
use crate::metrics::Metrics;
use crate::near_cache::NearCache;

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
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
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
    for (id, a) in &addrs {
        if !seen.insert(a.as_str()) {
            return Err(ServeError::DuplicateNode(a.clone()));
        }
        if let Some(id) = id {
            if !seen.insert(id.as_str()) {
                return Err(ServeError::DuplicateNode(id.clone()));
            }
        }
        let client = NodeClient::new(a, opts.node_timeout, opts.auth_token.as_deref())?;
        nodes.push(Arc::new(NodeHandle::with_id(client, id.clone())));
    }
    let mut cluster = Cluster::new(nodes, opts.vnodes, opts.replicas_for(addrs.len()));
    let listener_events: Arc<dyn EventListener> = match opts.near_cache.filter(|&n| n > 0) {
        Some(size) => {
            let near = Arc::new(NearCache::new(size, addrs.len()));
            cluster = cluster.with_near_cache(near.clone());
            near
        }
        None => Arc::new(NoListener),
    };
    let cluster = Arc::new(cluster);
    for i in 0..cluster.nodes().len() {
        tokio::spawn(membership::watch(
            cluster.clone(),
            i,
            opts.heartbeat_timeout,
            listener_events.clone(),
            token.clone(),
        ));
    }
    let app = http::router(AppState {
        cluster: cluster.clone(),
        metrics: Arc::new(Metrics::default()),
        max_key_bytes: opts.max_key_bytes,
        max_value_bytes: opts.max_value_bytes,
        vnodes: opts.vnodes,
        auth_token: opts.auth_token.clone().map(Arc::from),
        max_concurrent_requests: opts.max_concurrent_requests,
        body_timeout: opts.body_timeout,
    });
    let addr = listener.local_addr().map_err(ServeError::Http)?;
    tracing::info!(%addr, nodes = ?addrs, replicas = cluster.replicas(), "manager serving HTTP");
    let stop = token.clone();
    let stopping = CancellationToken::new();
    let stop_now = CancellationToken::new();
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
    let server = accept::serve(listener, app, limits, stopping.clone(), stop_now.clone());
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
