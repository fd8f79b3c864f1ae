//! Starting a data node: the gRPC server plus its heartbeat and expiry
//! sweeper tasks, all stopped by one shutdown signal.

use std::future::Future;
use std::net::SocketAddr;

use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tonic::codegen::http;

use ringcache_proto::pb::data_node_server::DataNodeServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::HealthService;

use crate::config::NodeOptions;
use crate::node::Node;
use crate::service::DataNodeService;
use ringcache_common::auth::RequireToken;
use ringcache_common::health;

/// Slots the expiry crawler examines per shard lock hold (about 1 us).
const SWEEP_BUDGET: usize = 256;

/// What a request may hold beyond one value: the manager's batches carry up
/// to 1 MiB of other operations next to it (`MAX_BYTES` in the manager's
/// `client/batch.rs`), plus keys and protobuf framing.
const DECODE_HEADROOM: usize = (1 << 20) + (64 << 10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot read the listener's address: {0}")]
    Addr(#[source] std::io::Error),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("TLS: {0}")]
    Tls(#[from] ringcache_common::tls::TlsError),
}

/// Serves a data node on `listener` until `shutdown` completes, then stops
/// accepting, ends subscriptions and waits for in-flight calls.
pub async fn serve(
    listener: TcpListener,
    opts: NodeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(ServeError::Addr)?;
    if opts.effective_shards() < opts.shards {
        tracing::info!(
            shards = opts.effective_shards(),
            asked = opts.shards,
            "fewer shards, so that each can hold the largest entry"
        );
    }
    let id = opts.id.clone().unwrap_or_else(|| default_id(addr));
    let token = CancellationToken::new();
    let server_tls = opts.server_tls()?;
    let peer_tls = opts.peer_tls()?;
    if server_tls.is_some() && peer_tls.is_none() {
        tracing::warn!("--tls-cert without --tls-ca or --tls-client-ca: copies from TLS peers (repair, warm-up, hand-off) cannot verify them and will fail");
    }
    ringcache_common::tls::spawn_reloader(
        ringcache_common::tls::reloadable(server_tls.as_ref(), &[peer_tls.as_ref()]),
        opts.tls_reload_interval,
        token.clone(),
    );
    let node = Node::new(&opts, id, token.clone(), peer_tls);
    tracing::info!(
        node = %node.id(),
        instance = %node.instance_id(),
        %addr,
        max_memory = opts.max_memory,
        auth = opts.auth_token.is_some(),
        tls = server_tls.is_some(),
        client_certificates = opts.tls_client_ca.is_some(),
        "data node serving gRPC"
    );
    spawn_background(&node, &opts);

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ringcache_proto::FILE_DESCRIPTOR_SET)
        // So that grpcurl can list and call grpc.health.v1.Health too.
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // grpcurl builds that are still widely installed only speak v1alpha.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ringcache_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let health = tonic_health::server::HealthReporter::new();
    health
        .set_serving::<DataNodeServer<DataNodeService>>()
        .await;
    follow_readiness(&node, health.clone()).await;
    let health_service = HealthServer::new(SpecHealth {
        inner: HealthService::from_health_reporter(health),
        stop: token.clone(),
    });

    let signal = {
        let token = token.clone();
        async move {
            shutdown.await;
            tracing::info!("data node shutting down");
            token.cancel();
        }
    };
    let max_value = opts.max_value_bytes;
    let router = Server::builder()
        // A message over the decode limit is refused by tonic before our
        // code sees it; give it the status and message of an oversized value.
        .layer(tower::util::MapResponseLayer::new(
            move |resp: http::Response<tonic::body::Body>| decode_limit_status(resp, max_value),
        ))
        // Detect dead peers on idle connections.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        // The manager multiplexes its traffic on one Batch stream per node.
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .add_service(InterceptedService::new(
            DataNodeServer::new(DataNodeService::new(node.clone()))
                // Just above the largest valid request, so that a larger one
                // is refused from its length prefix without being buffered.
                .max_decoding_message_size(
                    opts.max_value_bytes
                        .saturating_add(opts.max_key_bytes)
                        .saturating_add(DECODE_HEADROOM),
                )
                .max_encoding_message_size(usize::MAX),
            RequireToken::new(opts.auth_token.clone()),
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let server = match server_tls {
        Some(tls) => futures::future::Either::Left(router.serve_with_incoming_shutdown(
            ringcache_common::tls::accept(listener, tls, token.clone()),
            signal,
        )),
        None => futures::future::Either::Right(router.serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            signal,
        )),
    };
    // Graceful shutdown waits for every connection to close; a client that
    // keeps a stream open (a health Watch, say) gets `shutdown_grace`.
    let grace = opts.shutdown_grace;
    let deadline = async {
        token.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    let result = tokio::select! {
        r = server => r.map_err(ServeError::from),
        _ = deadline => {
            tracing::warn!(?grace, "shutdown grace period over; closing remaining connections");
            Ok(())
        }
    };
    token.cancel();
    result
}

/// Start of tonic's message when a request is over the decode limit
/// (`tonic::codec::decode`); it comes with `OUT_OF_RANGE`.
const DECODE_LIMIT_MESSAGE: &str = "Error, decoded message length too large";

/// Turns tonic's decode-limit refusal (`OUT_OF_RANGE`, "Error, decoded
/// message length too large: found N bytes, ...") into the status an
/// oversized value gets from the node itself: `RESOURCE_EXHAUSTED` with our
/// message. A unary call is refused before any response, so the status is
/// in the response headers (trailers-only). On a `Batch` stream the refusal
/// comes in the trailers after earlier responses and is left as tonic
/// writes it (the manager never sends a message that large).
fn decode_limit_status(
    mut resp: http::Response<tonic::body::Body>,
    max_value: usize,
) -> http::Response<tonic::body::Body> {
    // Cheap test first: almost every response has no status in its headers.
    if resp.headers().get("grpc-status").is_none_or(|v| v != "11") {
        return resp;
    }
    let Some(status) = tonic::Status::from_header_map(resp.headers()) else {
        return resp;
    };
    let Some(detail) = status.message().strip_prefix(DECODE_LIMIT_MESSAGE) else {
        return resp;
    };
    let found = detail
        .split("found ")
        .nth(1)
        .and_then(|m| m.split(' ').next());
    let msg = match found {
        Some(n) => format!("request is {n} bytes, larger than the value limit of {max_value}"),
        None => format!("request is larger than the value limit of {max_value}"),
    };
    if let Err(e) = tonic::Status::resource_exhausted(msg).add_header(resp.headers_mut()) {
        tracing::debug!(error = %e, "cannot rewrite the decode-limit status");
    }
    resp
}

/// `grpc.health.v1.Health` as its spec says: `Watch` on an unknown service
/// streams `SERVICE_UNKNOWN` and keeps the call open (tonic-health ends it
/// with `NOT_FOUND`). `Check` and known services are tonic-health's.
struct SpecHealth {
    inner: HealthService,
    stop: CancellationToken,
}

#[tonic::async_trait]
impl Health for SpecHealth {
    async fn check(
        &self,
        req: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        self.inner.check(req).await
    }

    type WatchStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<HealthCheckResponse, tonic::Status>> + Send>,
    >;

    async fn watch(
        &self,
        req: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        match self.inner.watch(req).await {
            Ok(stream) => Ok(tonic::Response::new(Box::pin(stream.into_inner()))),
            Err(s) if s.code() == tonic::Code::NotFound => {
                // The set of services is fixed at start: the answer never
                // changes, and the call stays open until the node stops.
                let unknown = HealthCheckResponse {
                    status: ServingStatus::ServiceUnknown as i32,
                };
                let stream = futures::stream::once(async move { Ok(unknown) })
                    .chain(futures::stream::pending())
                    .take_until(self.stop.clone().cancelled_owned());
                Ok(tonic::Response::new(Box::pin(stream)))
            }
            Err(s) => Err(s),
        }
    }
}

/// The id of a node started without `--id`: the listen address, or, when
/// that is unspecified (`0.0.0.0`: every container of a scaled compose
/// service, every pod), `<hostname>:<port>`, which tells such nodes apart
/// (in a StatefulSet the pod name, stable across restarts).
fn default_id(addr: SocketAddr) -> String {
    if !addr.ip().is_unspecified() {
        return addr.to_string();
    }
    match std::fs::read_to_string("/proc/sys/kernel/hostname") {
        Ok(h) if !h.trim().is_empty() => format!("{}:{}", h.trim(), addr.port()),
        _ => addr.to_string(),
    }
}

/// Keeps the readiness service ([`health::READY_SERVICE`]) of `health`
/// SERVING exactly while the node holds its share: a node that is warming
/// up or being repaired is alive (liveness stays SERVING) but must not be
/// counted as ready by an orchestrator that restarts the next node then.
async fn follow_readiness(node: &Arc<Node>, health: tonic_health::server::HealthReporter) {
    let mut synced = node.sync_state().synced();
    let status = |ready: bool| {
        if ready {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        }
    };
    let ready = *synced.borrow_and_update();
    health
        .set_service_status(health::READY_SERVICE, status(ready))
        .await;
    let token = node.shutdown_token().clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                r = synced.changed() => if r.is_err() { break },
            }
            let ready = *synced.borrow_and_update();
            tracing::info!(ready, "readiness changed");
            health
                .set_service_status(health::READY_SERVICE, status(ready))
                .await;
        }
    });
}

fn spawn_background(node: &Arc<Node>, opts: &NodeOptions) {
    let n = node.clone();
    every(opts.heartbeat_interval, node, move || n.publish_status());
    let store = node.store().clone();
    every(opts.sweep_interval, node, move || {
        let purged = store.purge_expired(SWEEP_BUDGET);
        if purged > 0 {
            tracing::debug!(purged, "expired entries freed");
        }
    });
}

/// Runs `f` every `period` until the node shuts down.
fn every(period: Duration, node: &Node, mut f: impl FnMut() + Send + 'static) {
    let token = node.shutdown_token().clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => f(),
            }
        }
    });
}
