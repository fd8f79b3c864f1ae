//! The manager's client of one data node: one long-lived tonic `Channel`
//! (HTTP/2) reused by every request, and a deadline on every call. Key
//! operations travel batched on one bidirectional stream ([`batch`]); flush,
//! stats and subscribe are unary. This is the only module that knows how
//! requests travel to a node.

mod batch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringcache_proto::pb::{self, data_node_client::DataNodeClient};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// The generated client over the node's channel, adding the bearer token.
type Grpc = DataNodeClient<InterceptedService<Channel, AddToken>>;

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Clone)]
pub(crate) struct AddToken(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for AddToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 8 << 20;
/// Largest response accepted from a node.
const MAX_MESSAGE: usize = 256 << 20;

/// Why a call to a node failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("node {node} did not answer within {timeout:?}")]
    Timeout { node: String, timeout: Duration },
    #[error("node {node}: {status}")]
    Status { node: String, status: Status },
    #[error("the auth token must be printable ASCII")]
    BadToken,
    #[error("invalid node address {addr:?}: {source}")]
    Address {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

impl CallError {
    /// Whether the failure says the node is unreachable or unhealthy (as
    /// opposed to it refusing this particular request).
    pub fn is_node_failure(&self) -> bool {
        match self {
            CallError::Timeout { .. } | CallError::Address { .. } | CallError::BadToken => true,
            CallError::Status { status, .. } => !matches!(
                status.code(),
                Code::InvalidArgument
                    | Code::ResourceExhausted
                    | Code::FailedPrecondition
                    | Code::OutOfRange
                    | Code::Unauthenticated
                    | Code::PermissionDenied
                    | Code::NotFound
            ),
        }
    }
}

/// A found value.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub value: Bytes,
    /// The node's event sequence number at the read (see `GetResponse.seq`).
    pub seq: u64,
    /// Time left before the entry expires, if it has a TTL.
    pub ttl: Option<Duration>,
}

/// Handle to one data node; cheap to clone (clones share the connection).
///
/// Writes are fenced with the node's flush epoch as last learned (from a
/// flush, a heartbeat or a refusal): a write delayed in the network past a
/// flush is refused by the node instead of resurrecting an old value.
#[derive(Clone)]
pub struct NodeClient {
    addr: String,
    inner: Grpc,
    batcher: batch::Batcher,
    timeout: Duration,
    epoch: Arc<AtomicU64>,
}

impl NodeClient {
    /// A client that connects lazily (and reconnects) to `addr`, such as
    /// `http://127.0.0.1:50051`, giving each call `timeout` to complete and
    /// sending `token` (if any) with each.
    pub fn new(addr: &str, timeout: Duration, token: Option<&str>) -> Result<Self, CallError> {
        let token = token
            .map(|t| ringcache_datanode::auth::bearer(t).parse::<MetadataValue<Ascii>>())
            .transpose()
            .map_err(|_| CallError::BadToken)?;
        let endpoint = Endpoint::from_shared(addr.to_string())
            .map_err(|source| CallError::Address {
                addr: addr.to_string(),
                source,
            })?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            // Find out about a silently dead connection even when idle.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true)
            // One stream carries most of the traffic: give it room.
            .initial_stream_window_size(Some(STREAM_WINDOW))
            .initial_connection_window_size(Some(CONNECTION_WINDOW));
        // A batch of reads may carry many large values.
        let inner = DataNodeClient::with_interceptor(endpoint.connect_lazy(), AddToken(token))
            .max_decoding_message_size(MAX_MESSAGE);
        Ok(Self {
            addr: addr.to_string(),
            batcher: batch::Batcher::start(inner.clone(), addr.to_string(), timeout),
            inner,
            timeout,
            epoch: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Records the node's flush epoch (it only ever grows).
    pub fn learn_epoch(&self, epoch: u64) {
        self.epoch.fetch_max(epoch, Ordering::AcqRel);
    }

    /// Adopts the epoch of a new instance of the node, even if lower.
    pub fn reset_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Release);
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Runs a fenced write; if the node says our epoch is stale (another
    /// manager flushed it), learns the current epoch and retries once.
    async fn fenced<T, F, Fut>(&self, call: F) -> Result<T, CallError>
    where
        F: Fn(u64) -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        // The retry shares the caller's deadline rather than adding its own.
        let retried = async {
            match call(self.epoch()).await {
                Err(CallError::Status { status, .. })
                    if status.code() == Code::FailedPrecondition =>
                {
                    self.learn_epoch(self.stats().await?.epoch);
                    call(self.epoch()).await
                }
                other => other,
            }
        };
        tokio::time::timeout(self.timeout, retried)
            .await
            .unwrap_or_else(|_| {
                Err(CallError::Timeout {
                    node: self.addr.clone(),
                    timeout: self.timeout,
                })
            })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        // Tell the node the deadline too, so it can give up on our behalf.
        req.set_timeout(self.timeout);
        req
    }

    /// Runs `fut` with the deadline; a hung node costs at most `timeout`.
    async fn deadline<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, CallError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(status)) if status.code() != Code::DeadlineExceeded => Err(CallError::Status {
                node: self.addr.clone(),
                status,
            }),
            Ok(Err(_)) | Err(_) => Err(CallError::Timeout {
                node: self.addr.clone(),
                timeout: self.timeout,
            }),
        }
    }

    /// A unary call, bounded by the deadline.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, CallError> {
        self.deadline(async { call.await.map(tonic::Response::into_inner) })
            .await
    }

    /// One key operation on the node's batch stream, bounded by the deadline.
    async fn op(&self, op: pb::op::Op) -> Result<pb::op_result::Result, CallError> {
        self.deadline(self.batcher.call(op)).await
    }

    fn unexpected(&self) -> CallError {
        CallError::Status {
            node: self.addr.clone(),
            status: Status::internal("result of another kind than the request"),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Hit>, CallError> {
        let op = pb::op::Op::Get(pb::GetRequest {
            key: key.to_string(),
        });
        let pb::op_result::Result::Get(r) = self.op(op).await? else {
            return Err(self.unexpected());
        };
        Ok(r.found.then(|| Hit {
            value: r.value,
            seq: r.seq,
            ttl: (r.ttl_remaining_ms > 0).then(|| Duration::from_millis(r.ttl_remaining_ms)),
        }))
    }

    /// Returns whether a live value was replaced.
    pub async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, CallError> {
        // Saturate: a huge TTL must not wrap around to a tiny one.
        let ttl_ms = ttl.map_or(0, |t| t.as_millis().clamp(1, u128::from(u64::MAX)) as u64);
        self.fenced(|epoch| {
            let op = pb::op::Op::Set(pb::SetRequest {
                key: key.to_string(),
                value: value.clone(),
                ttl_ms,
                epoch,
            });
            async move {
                match self.op(op).await? {
                    pb::op_result::Result::Set(r) => Ok(r.replaced),
                    _ => Err(self.unexpected()),
                }
            }
        })
        .await
    }

    /// Returns whether a live value was removed.
    pub async fn delete(&self, key: &str) -> Result<bool, CallError> {
        self.fenced(|epoch| {
            let op = pb::op::Op::Delete(pb::DeleteRequest {
                key: key.to_string(),
                epoch,
            });
            async move {
                match self.op(op).await? {
                    pb::op_result::Result::Delete(r) => Ok(r.deleted),
                    _ => Err(self.unexpected()),
                }
            }
        })
        .await
    }

    /// Empties the node and fences off every write issued before; returns
    /// how many entries were removed.
    pub async fn flush(&self) -> Result<u64, CallError> {
        let mut c = self.inner.clone();
        let r = self
            .call(c.flush(self.request(pb::FlushRequest {})))
            .await?;
        self.learn_epoch(r.epoch);
        Ok(r.removed)
    }

    pub async fn stats(&self) -> Result<pb::StatsResponse, CallError> {
        let mut c = self.inner.clone();
        self.call(c.stats(self.request(pb::StatsRequest {}))).await
    }

    /// Opens the node's event stream. Only opening it is bounded by the
    /// deadline; the stream itself lives until either side ends it.
    pub async fn subscribe(&self) -> Result<tonic::Streaming<pb::Event>, CallError> {
        let mut c = self.inner.clone();
        self.call(c.subscribe(Request::new(pb::SubscribeRequest {})))
            .await
    }
}
