//! The HTTP API: the key operations on `/` and the cluster status on
//! `/cluster`. Handlers only parse and validate; [`Cluster`] routes.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, Request, State};
use axum::http::{header, request::Parts, HeaderMap, StatusCode, Version};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::BytesMut;
use http_body_util::BodyExt;
use serde::Serialize;
use tracing::instrument;

use crate::admission::{AdmitLayer, TrackLayer};
use crate::error::ApiError;
use crate::metrics;
use crate::node::NodeState;
use crate::preconditions::{self, etag};
use crate::query;
use crate::route::WriteOutcome;
use crate::state::AppState;

/// Most bytes of an unwanted request body read and thrown away after the
/// answer, so that a client still sending it gets to read the answer (rather
/// than a reset connection, or RST_STREAM over HTTP/2). Past it the
/// connection or stream is cut.
const DRAIN_LIMIT: u64 = 64 << 20;

/// The manager's routes.
pub fn router(state: AppState) -> Router {
    let state = Arc::new(state);
    let keys = Router::new()
        .route(
            "/",
            get(get_key)
                .post(set_key)
                .delete(delete_key)
                .fallback(method_not_allowed),
        )
        .route_layer(TrackLayer(state.metrics.clone()));
    // One counter for every route: `Router::layer` wraps each route
    // separately, and the layer's clones share it.
    let overload = AdmitLayer(state.in_flight.clone());
    let mut routes = Router::new()
        .merge(keys)
        .route("/cluster", get(cluster_status))
        .route("/cluster/hotkeys", get(crate::hotkeys::hot_keys))
        .route(
            "/cluster/nodes",
            post(crate::admin::add_node)
                .delete(crate::admin::remove_node)
                .fallback(method_not_allowed),
        )
        .route("/metrics", get(metrics_text))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such path\n") });
    // Without a token there is no layer at all, rather than one that checks
    // for nothing on every request.
    if let Some(token) = state.auth_token.clone() {
        routes = routes.layer(axum::middleware::from_fn_with_state(token, require_token));
    }
    routes
        // The dashboard page holds no data (its script fetches /cluster and
        // /metrics with the token), so it is open too.
        .merge(crate::ui::router())
        .layer(overload)
        // Liveness for orchestrators: open even when a token is required,
        // and outside load shedding so that probes pass under overload.
        .route("/healthz", get(healthz))
        .with_state(state)
}

/// 405 with the one line of text every non-GET answer has.
pub(crate) async fn method_not_allowed() -> Response {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    r.headers_mut().insert(
        header::ALLOW,
        header::HeaderValue::from_static("GET,HEAD,POST,DELETE"),
    );
    r
}

/// Refuses requests without the bearer token.
async fn require_token(State(token): State<Arc<str>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if !ringcache_common::auth::bearer_matches(given, &token) {
        let mut r = (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    next.run(req).await
}

/// 200 when at least one data node is readable, else 503.
async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    if st.cluster.nodes().iter().any(|n| n.readable()) {
        text(StatusCode::OK, "ok\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "no data node is up\n")
    }
}

impl AppState {
    /// Parses the query and returns the validated key and the rest.
    fn key_query(&self, raw: Option<String>) -> Result<(String, query::KeyQuery), ApiError> {
        let mut q = query::parse(raw.as_deref().unwrap_or(""))?;
        let key = q.key.take().unwrap_or_default();
        if key.is_empty() {
            return Err(ApiError::BadRequest(
                "missing or empty key parameter".into(),
            ));
        }
        if key.len() > self.max_key_bytes {
            return Err(ApiError::BadRequest(format!(
                "key is {} bytes, longer than the limit of {}",
                key.len(),
                self.max_key_bytes
            )));
        }
        Ok((key, q))
    }
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, body).into_response()
}

/// `status` with `body` and the ETag of `version`.
fn tagged(status: StatusCode, body: &'static str, version: u64) -> Response {
    (status, [(header::ETAG, etag(version))], body).into_response()
}

#[instrument(level = "debug", skip_all, fields(key))]
async fn get_key(
    State(st): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (key, _) = st.key_query(raw)?;
    let unless = preconditions::for_read(&headers)?;
    tracing::Span::current().record("key", key.as_str());
    Ok(match st.cluster.get(&key).await? {
        Some(found) if unless == Some(found.version) => (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag(found.version))],
        )
            .into_response(),
        Some(found) => (
            [
                (
                    header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/octet-stream"),
                ),
                (header::ETAG, etag(found.version)),
            ],
            found.value,
        )
            .into_response(),
        None => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

fn parse_ttl(ttl: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let Some(ttl) = ttl else { return Ok(None) };
    let bad = || {
        ApiError::BadRequest(format!(
            "ttl must be a whole number of seconds, got {ttl:?}"
        ))
    };
    // Digits only: `u64::from_str` would also take a sign ("+5").
    if ttl.is_empty() || !ttl.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let secs: u64 = ttl.parse().map_err(|_| bad())?;
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

/// The `Content-Length` the client announced, if any (and valid).
fn content_length(parts: &Parts) -> Option<u64> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Gets rid of a body the answer does not depend on.
///
/// - An HTTP/1 client waiting for `100 Continue` is not told to continue:
///   the body is dropped unread (hyper then closes the connection after the
///   answer).
/// - Other HTTP/1 bodies are read and thrown away in the background while
///   the answer goes out, so that a client still sending can finish and
///   read it instead of hitting a reset connection.
/// - HTTP/2 bodies are read and thrown away before the answer: a stream
///   answered while the client is still sending ends in RST_STREAM, which
///   curl reports as a framing error (92) and httpx as a protocol error,
///   and curl stops sending once it has the answer.
///
/// Reading stops at [`DRAIN_LIMIT`] bytes or when the body stalls for
/// `idle`; a body announced longer than the limit is not read at all.
async fn discard(parts: &Parts, body: Body, idle: Duration) {
    let announced = content_length(parts);
    if announced == Some(0) || announced.is_some_and(|n| n > DRAIN_LIMIT) {
        return;
    }
    if parts.version >= Version::HTTP_2 {
        drain(body, idle).await;
        return;
    }
    let waits_for_continue = parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !waits_for_continue {
        tokio::spawn(drain(body, idle));
    }
}

async fn drain(mut body: Body, idle: Duration) {
    let mut read = 0u64;
    while read <= DRAIN_LIMIT {
        match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(Ok(frame))) => read += frame.data_ref().map_or(0, |d| d.len() as u64),
            Ok(None) => return,
            Ok(Some(Err(_))) | Err(_) => {
                tracing::debug!(read, "unwanted request body ended early");
                return;
            }
        }
    }
    tracing::debug!(read, "unwanted request body too long to read to the end");
}

/// Reads a value from the body: 413 at once when the announced length is
/// over the limit (nothing is read, no `100 Continue` is sent), 413 as soon
/// as a body without a length passes it, 408 when it stalls.
async fn read_value(st: &AppState, parts: &Parts, mut body: Body) -> Result<Bytes, ApiError> {
    let max = st.max_value_bytes;
    if content_length(parts).is_some_and(|n| n > max) {
        discard(parts, body, st.body_timeout).await;
        return Err(ApiError::TooLarge(max));
    }
    let mut buf = BytesMut::with_capacity(content_length(parts).unwrap_or(0) as usize);
    loop {
        let frame = match tokio::time::timeout(st.body_timeout, body.frame()).await {
            Err(_) => return Err(ApiError::BodyTimeout(st.body_timeout)),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => {
                return Err(ApiError::BadRequest(format!("cannot read the body: {e}")))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if (buf.len() + data.len()) as u64 > max {
                discard(parts, body, st.body_timeout).await;
                return Err(ApiError::TooLarge(max));
            }
            buf.extend_from_slice(&data);
        }
    }
}

#[instrument(level = "debug", skip_all, fields(key, len))]
async fn set_key(
    State(st): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let parsed = st.key_query(raw).and_then(|(key, q)| {
        let condition = preconditions::for_write(&parts.headers, true)?;
        Ok((key, parse_ttl(q.ttl.as_deref())?, q.value, condition))
    });
    let (key, ttl, query_value, condition) = match parsed {
        Ok(p) => p,
        Err(e) => {
            discard(&parts, body, st.body_timeout).await;
            return Err(e);
        }
    };
    // The value comes from the query when given there, else from the body;
    // a body next to a query value is not the value and decides nothing.
    let value = match query_value {
        Some(v) => {
            discard(&parts, body, st.body_timeout).await;
            v
        }
        None => read_value(&st, &parts, body).await?,
    };
    if value.len() as u64 > st.max_value_bytes {
        return Err(ApiError::TooLarge(st.max_value_bytes));
    }
    let span = tracing::Span::current();
    span.record("key", key.as_str());
    span.record("len", value.len());
    let WriteOutcome { replaced, version } = st.cluster.set(&key, value, ttl, condition).await?;
    Ok(if replaced {
        tagged(StatusCode::OK, "updated\n", version)
    } else {
        tagged(StatusCode::CREATED, "created\n", version)
    })
}

#[instrument(level = "debug", skip_all, fields(key))]
async fn delete_key(
    State(st): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (key, _) = st.key_query(raw)?;
    let condition = preconditions::for_write(&headers, false)?;
    tracing::Span::current().record("key", key.as_str());
    let WriteOutcome { replaced, version } = st.cluster.delete(&key, condition).await?;
    // The tag of the tombstone left: no condition matches it (the key is
    // absent), but it orders the delete among the key's versions.
    Ok(if replaced {
        tagged(StatusCode::OK, "deleted\n", version)
    } else {
        text(StatusCode::NOT_FOUND, "not found\n")
    })
}

async fn metrics_text(State(st): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        st.metrics.render(&st.cluster),
    )
        .into_response()
}

#[derive(Serialize)]
struct ClusterView {
    replicas: usize,
    vnodes: usize,
    /// Where the placement comes from: `etcd` or `static` (`--nodes`).
    placement: &'static str,
    /// The placement version requests are routed by (0: static).
    placement_version: u64,
    /// The placement's members and their part in it (`up`, `syncing`
    /// while receiving their share, `leaving` while handing it off).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    members: Vec<crate::placement::Member>,
    /// Progress of the hand-off under way or the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    handoff: Option<crate::placement::handoff::Progress>,
    nodes: Vec<NodeView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    near_cache: Option<NearView>,
    /// What an operator should fix (e.g. several managers without etcd).
    warnings: Vec<String>,
    /// The hottest keys across the nodes (all of them: /cluster/hotkeys).
    hot_keys: Vec<crate::hotkeys::HotKeyRow>,
}

#[derive(Serialize)]
struct NearView {
    items: u64,
    bytes: u64,
    hits: u64,
    misses: u64,
}

#[derive(Serialize)]
struct NodeView {
    address: String,
    id: Option<String>,
    /// Same as `id` (older name).
    node_id: Option<String>,
    instance: Option<String>,
    state: NodeState,
    /// Progress of the copy into the node while it is `syncing`.
    #[serde(skip_serializing_if = "Option::is_none")]
    sync: Option<SyncView>,
    /// Nodes this one holds dirty marks for (they missed writes it took).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    marks: Vec<String>,
    tombstones: Option<u64>,
    last_heartbeat_age_ms: Option<u64>,
    items: Option<u64>,
    bytes: Option<u64>,
    memory_limit: Option<u64>,
    evictions: Option<u64>,
    hit_ratio: Option<f64>,
    ring_share: f64,
    /// Bytes of operations queued for the node or awaiting its answer
    /// (bounded by `--node-queue-bytes`).
    queued_bytes: u64,
}

#[derive(Serialize)]
struct SyncView {
    since: u64,
    keys_copied: u64,
    bytes_copied: u64,
    scanned: u64,
    to_scan: u64,
    pulls_running: u32,
}

async fn cluster_status(State(st): State<Arc<AppState>>) -> Json<ClusterView> {
    let view = st.cluster.view();
    let shares = view.shares(st.cluster.nodes().len());
    let nodes = st
        .cluster
        .nodes()
        .iter()
        .zip(shares)
        .filter(|(n, _)| !n.is_retired())
        .map(|(n, share)| {
            let info = n.info();
            let stats = info.stats.as_ref();
            let state = n.state();
            let sync = stats
                .and_then(|s| s.sync.as_ref())
                .filter(|s| s.syncing || state == NodeState::Syncing)
                .map(|s| SyncView {
                    since: s.since,
                    keys_copied: s.keys_copied,
                    bytes_copied: s.bytes_copied,
                    scanned: s.scanned,
                    to_scan: s.to_scan,
                    pulls_running: s.pulls_running,
                });
            NodeView {
                address: n.addr().to_string(),
                id: info.node_id.clone(),
                node_id: info.node_id.clone(),
                instance: info.instance_id.clone(),
                state,
                sync,
                marks: stats
                    .map(|s| s.marks.iter().map(|m| m.node_id.clone()).collect())
                    .unwrap_or_default(),
                tombstones: stats.map(|s| s.tombstones),
                last_heartbeat_age_ms: info.last_event.map(|t| t.elapsed().as_millis() as u64),
                items: stats.map(|s| s.items),
                bytes: stats.map(|s| s.bytes_used),
                memory_limit: stats.map(|s| s.memory_limit),
                evictions: stats.map(|s| s.evictions),
                hit_ratio: stats.and_then(|s| {
                    let total = s.hits + s.misses;
                    (total > 0).then(|| s.hits as f64 / total as f64)
                }),
                ring_share: share,
                queued_bytes: n.client.queued_bytes(),
            }
        })
        .collect();
    let near_cache = st.cluster.near_cache().map(|n| {
        let (items, bytes, hits, misses) = n.stats();
        NearView {
            items,
            bytes,
            hits,
            misses,
        }
    });
    let handoff = match &st.store {
        Some(store) => crate::placement::handoff::published(store).await,
        None => None,
    };
    Json(ClusterView {
        replicas: st.cluster.replicas(),
        vnodes: st.vnodes,
        placement: if st.store.is_some() { "etcd" } else { "static" },
        placement_version: view.version,
        members: view
            .placement
            .as_ref()
            .map(|p| p.members.clone())
            .unwrap_or_default(),
        handoff,
        nodes,
        near_cache,
        warnings: st.cluster.warnings(),
        hot_keys: {
            let mut hot = crate::hotkeys::merge(&st.cluster);
            hot.truncate(10);
            hot
        },
    })
}
