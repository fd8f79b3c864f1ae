//! The HTTP API: the key operations on `/` and the cluster status on
//! `/cluster`. Handlers only parse and validate; [`Cluster`] routes.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::BoxError;
use axum::{Json, Router};
use serde::Serialize;
use tower::ServiceBuilder;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tracing::instrument;

use crate::cluster::{Cluster, NodeState};
use crate::error::ApiError;
use crate::metrics::{self, Metrics};
use crate::query;

/// Longest a request body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share (behind one `Arc`: axum clones the state for
/// every request).
pub struct AppState {
    pub cluster: Arc<Cluster>,
    pub metrics: Arc<Metrics>,
    pub max_key_bytes: usize,
    pub max_value_bytes: u64,
    pub vnodes: usize,
    /// Required bearer token, if any.
    pub auth_token: Option<Arc<str>>,
    pub max_concurrent_requests: usize,
}

/// The manager's routes.
pub fn router(state: AppState) -> Router {
    let state = Arc::new(state);
    let body_limit = usize::try_from(state.max_value_bytes).unwrap_or(usize::MAX);
    let keys = Router::new()
        .route("/", get(get_key).post(set_key).delete(delete_key))
        .route_layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ));
    let overload = ServiceBuilder::new()
        // Over the limit a request is refused at once with 503, so overload
        // costs neither memory nor queueing delay.
        .layer(HandleErrorLayer::new(|_: BoxError| async {
            let mut r =
                (StatusCode::SERVICE_UNAVAILABLE, "overloaded, retry later\n").into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }))
        .load_shed()
        .concurrency_limit(state.max_concurrent_requests.max(1));
    let mut routes = Router::new()
        .merge(keys)
        .route("/cluster", get(cluster_status))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such path\n") });
    // Without a token there is no layer at all, rather than one that checks
    // for nothing on every request.
    if let Some(token) = state.auth_token.clone() {
        routes = routes.layer(axum::middleware::from_fn_with_state(token, require_token));
    }
    routes
        // Liveness for orchestrators: open even when a token is required.
        .route("/healthz", get(healthz))
        // The dashboard page holds no data (its script fetches /cluster and
        // /metrics with the token), so it is open too.
        .merge(crate::ui::router())
        // Bodies past the limit are refused with 413 without being read, and
        // a body that trickles in cannot hold a request slot forever.
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(RequestBodyTimeoutLayer::new(BODY_TIMEOUT))
        .layer(overload)
        .with_state(state)
}

/// Refuses requests without the bearer token.
async fn require_token(State(token): State<Arc<str>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if !ringcache_datanode::auth::bearer_matches(given, &token) {
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

#[instrument(level = "debug", skip_all, fields(key))]
async fn get_key(
    State(st): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (key, _) = st.key_query(raw)?;
    tracing::Span::current().record("key", key.as_str());
    Ok(match st.cluster.get(&key).await? {
        Some(value) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response()
        }
        None => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

fn parse_ttl(ttl: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let Some(ttl) = ttl else { return Ok(None) };
    let secs: u64 = ttl.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "ttl must be a whole number of seconds, got {ttl:?}"
        ))
    })?;
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

#[instrument(level = "debug", skip_all, fields(key, len))]
async fn set_key(
    State(st): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (key, q) = st.key_query(raw)?;
    let ttl = parse_ttl(q.ttl.as_deref())?;
    // The value comes from the query when given there, else from the body.
    let value = q.value.unwrap_or(body);
    if value.len() as u64 > st.max_value_bytes {
        return Err(ApiError::TooLarge(st.max_value_bytes));
    }
    let span = tracing::Span::current();
    span.record("key", key.as_str());
    span.record("len", value.len());
    Ok(if st.cluster.set(&key, value, ttl).await? {
        text(StatusCode::OK, "updated\n")
    } else {
        text(StatusCode::CREATED, "created\n")
    })
}

#[instrument(level = "debug", skip_all, fields(key))]
async fn delete_key(
    State(st): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (key, _) = st.key_query(raw)?;
    tracing::Span::current().record("key", key.as_str());
    Ok(if st.cluster.delete(&key).await? {
        text(StatusCode::OK, "deleted\n")
    } else {
        text(StatusCode::NOT_FOUND, "not found\n")
    })
}

async fn metrics_text(State(st): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(&st.cluster),
    )
        .into_response()
}

#[derive(Serialize)]
struct ClusterView {
    replicas: usize,
    vnodes: usize,
    nodes: Vec<NodeView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    near_cache: Option<NearView>,
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
    let shares = st.cluster.view().shares(st.cluster.nodes().len());
    let nodes = st
        .cluster
        .nodes()
        .iter()
        .zip(shares)
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
    Json(ClusterView {
        replicas: st.cluster.replicas(),
        vnodes: st.vnodes,
        nodes,
        near_cache,
    })
}
