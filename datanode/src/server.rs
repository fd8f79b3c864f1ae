//! Starting a data node: the gRPC server plus its heartbeat and expiry
//! sweeper tasks, all stopped by one shutdown signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ringcache_proto::pb::data_node_server::DataNodeServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::auth::RequireToken;
use crate::config::NodeOptions;
use crate::node::Node;
use crate::service::DataNodeService;

/// Entries freed per shard lock hold by the expiry sweeper.
const SWEEP_BUDGET: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot read the listener's address: {0}")]
    Addr(#[source] std::io::Error),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves a data node on `listener` until `shutdown` completes, then stops
/// accepting, ends subscriptions and waits for in-flight calls.
pub async fn serve(
    listener: TcpListener,
    opts: NodeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(ServeError::Addr)?;
    let id = opts.id.clone().unwrap_or_else(|| addr.to_string());
    let token = CancellationToken::new();
    let node = Node::new(&opts, id, token.clone());
    tracing::info!(
        node = %node.id(),
        instance = %node.instance_id(),
        %addr,
        max_memory = opts.max_memory,
        auth = opts.auth_token.is_some(),
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
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<DataNodeServer<DataNodeService>>()
        .await;

    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let signal = {
        let token = token.clone();
        async move {
            shutdown.await;
            tracing::info!("data node shutting down");
            token.cancel();
        }
    };
    let server = Server::builder()
        // Detect dead peers on idle connections.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        // The manager multiplexes its traffic on one Batch stream per node.
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .add_service(InterceptedService::new(
            DataNodeServer::new(DataNodeService::new(node.clone()))
                // A batch holds up to about 1 MiB of payload plus one value.
                .max_decoding_message_size(opts.max_value_bytes.saturating_add(4 << 20))
                .max_encoding_message_size(usize::MAX),
            RequireToken::new(opts.auth_token.clone()),
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, signal);
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
