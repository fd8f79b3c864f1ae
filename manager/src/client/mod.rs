//! The manager's client of one data node: one long-lived tonic `Channel`
//! (HTTP/2) reused by every request, and a deadline on every call. Key
//! operations travel batched on one bidirectional stream ([`batch`]); the
//! rest (stats, subscribe, marks, sync, pull) are unary or server streams. This is the only module that knows how
//! requests travel to a node.

mod batch;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use ringcache_common::auth::AddToken;
use ringcache_proto::pb::{self, data_node_client::DataNodeClient};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// The generated client over the node's channel, adding the bearer token.
type Grpc = DataNodeClient<InterceptedService<Channel, AddToken>>;

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
    /// The node refused this request for what it is (the same request
    /// would be refused by any node): not a node failure.
    #[error("{message}")]
    Refused {
        node: String,
        refusal: Refusal,
        message: String,
    },
    /// The op was routed by an older placement than the node knows of.
    #[error("node {node} knows placement {newest}, newer than the one this request was routed by")]
    StalePlacement { node: String, newest: u64 },
    /// The node left the placement: its connection is closed for good.
    #[error("node {node} left the placement")]
    Closed { node: String },
    #[error("invalid node address {addr:?}: {source}")]
    Address {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

impl CallError {
    /// The node refused a write's version as too far ahead of its clock.
    pub fn is_version_too_new(&self) -> bool {
        matches!(
            self,
            CallError::Refused {
                refusal: Refusal::VersionTooNew,
                ..
            }
        )
    }

    /// Whether the failure says the node is unreachable or unhealthy (as
    /// opposed to it refusing this particular request).
    pub fn is_node_failure(&self) -> bool {
        match self {
            CallError::Timeout { .. }
            | CallError::Address { .. }
            | CallError::BadToken
            | CallError::Closed { .. } => true,
            CallError::StalePlacement { .. } | CallError::Refused { .. } => false,
            // Unary calls and nodes that send no reason: by code.
            CallError::Status { status, .. } => !matches!(
                status.code(),
                Code::InvalidArgument
                    | Code::ResourceExhausted
                    | Code::OutOfRange
                    | Code::Unauthenticated
                    | Code::PermissionDenied
                    | Code::NotFound
            ),
        }
    }
}

/// Why a node refused a request (from the op's typed reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Bad key or missing op: HTTP 400.
    InvalidRequest,
    /// Larger than the node's limits: HTTP 413.
    TooLarge,
    /// The version is further ahead of the node's clock than it accepts
    /// (this manager's clock, or the node's, is wrong): HTTP 502.
    VersionTooNew,
    /// A conditional write's condition does not hold there; `current` is
    /// the version of the key's value (0: none). HTTP 412.
    PreconditionFailed { current: u64 },
    /// A conditional write to a node that does not answer consistent reads
    /// now: it cannot decide. HTTP 503.
    NotReadable,
}

/// What a conditional write requires of the key's value at its primary
/// (docs/design/conditional.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// A value with exactly this version.
    Version(u64),
    /// A value.
    Exists,
    /// No value.
    Absent,
}

impl Condition {
    fn to_pb(self) -> pb::Condition {
        use pb::condition::Check;
        pb::Condition {
            check: Some(match self {
                Condition::Version(v) => Check::IfVersion(v),
                Condition::Exists => Check::IfExists(true),
                Condition::Absent => Check::IfAbsent(true),
            }),
        }
    }
}

/// A value as a client sees it: with its version (its ETag).
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub value: Bytes,
    pub version: u64,
}

/// A found value.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub value: Bytes,
    /// The node's event sequence number at the read (see `GetResponse.seq`).
    pub seq: u64,
    /// Time left before the entry expires, if it has a TTL.
    pub ttl: Option<Duration>,
    pub version: u64,
}

/// What a node answered to a read.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    Hit(Hit),
    /// Deleted at this version: a final answer.
    Deleted(u64),
    Miss,
    /// The node is syncing and gave no answer.
    Syncing,
    /// A registered manager's read lease on the node ran out (it may have
    /// written without the node): no answer.
    Unleased,
}

/// What a node did with a versioned write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Applied.
    Applied(Applied),
    /// The node holds or dropped this newer version; `readable`: it
    /// answered consistent reads then.
    Superseded { version: u64, readable: bool },
}

/// What a replica that applied a write replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// It replaced (or deleted) a live value.
    pub replaced: bool,
    /// The version of what it replaced (0: nothing).
    pub prior: u64,
    /// The replica answered consistent reads when it applied the write.
    pub readable: bool,
}

/// A write to send: a value or a delete.
#[derive(Debug, Clone)]
pub enum Change {
    Set { value: Bytes, ttl: Option<Duration> },
    Delete,
}

/// How the manager reaches a node: the same for every node, including the
/// ones it learns of from the placement.
#[derive(Clone, Debug)]
pub struct Connect {
    /// Deadline of each call.
    pub timeout: Duration,
    /// Sent with each call, if any.
    pub auth_token: Option<String>,
    /// Bytes of operations that may wait for one node (queued for its batch
    /// stream, or sent and not yet answered); beyond it callers wait, within
    /// their deadline, so a stalled node cannot make the manager buffer
    /// without bound.
    pub queue_bytes: u64,
    /// TLS to the nodes (`--node-tls-ca`...), loaded by the server at start.
    pub tls: Option<Arc<ringcache_common::tls::ClientTls>>,
}

impl Connect {
    pub fn from_options(opts: &crate::config::ManagerOptions) -> Self {
        Self {
            timeout: opts.node_timeout,
            auth_token: opts.auth_token.clone(),
            queue_bytes: opts.node_queue_bytes,
            tls: None,
        }
    }
}

/// The flags' defaults.
impl Default for Connect {
    fn default() -> Self {
        Self::from_options(&crate::config::ManagerOptions::default())
    }
}

/// One connection to a node: the channel and its batch stream.
struct Conn {
    inner: Grpc,
    batcher: batch::Batcher,
}

/// Handle to one data node; cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct NodeClient {
    addr: String,
    endpoint: Endpoint,
    token: AddToken,
    /// Shared by the connections of this node, old and new: ops still
    /// queued on a connection being replaced count until they are dropped.
    budget: batch::Budget,
    /// Replaced by [`NodeClient::reconnect`]; read (an `Arc` clone, never
    /// held across an await) by every call. None once [`NodeClient::close`]d.
    conn: Arc<RwLock<Option<Arc<Conn>>>>,
    timeout: Duration,
    tls: Option<Arc<ringcache_common::tls::ClientTls>>,
}

impl NodeClient {
    /// A client that connects lazily (and reconnects) to `addr`, such as
    /// `http://127.0.0.1:50051`, as `connect` says.
    pub fn new(addr: &str, connect: &Connect) -> Result<Self, CallError> {
        let timeout = connect.timeout;
        let token =
            AddToken::new(connect.auth_token.as_deref()).map_err(|_| CallError::BadToken)?;
        // With TLS the connector handshakes itself, whatever the scheme.
        let uri = match connect.tls {
            Some(_) => ringcache_common::tls::plain_scheme(addr),
            None => addr.to_string(),
        };
        let endpoint = Endpoint::from_shared(uri)
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
        let budget = batch::Budget::new(connect.queue_bytes);
        let tls = connect.tls.clone();
        let conn = Self::open(&endpoint, &tls, &token, addr, timeout, &budget);
        Ok(Self {
            tls,
            addr: addr.to_string(),
            endpoint,
            token,
            budget,
            conn: Arc::new(RwLock::new(Some(Arc::new(conn)))),
            timeout,
        })
    }

    fn open(
        endpoint: &Endpoint,
        tls: &Option<Arc<ringcache_common::tls::ClientTls>>,
        token: &AddToken,
        addr: &str,
        timeout: Duration,
        budget: &batch::Budget,
    ) -> Conn {
        // A batch of reads may carry many large values.
        let channel = match tls {
            Some(tls) => endpoint.connect_with_connector_lazy(
                ringcache_common::tls::GrpcConnector::new(tls.clone()),
            ),
            None => endpoint.connect_lazy(),
        };
        let inner = DataNodeClient::with_interceptor(channel, token.clone())
            .max_decoding_message_size(MAX_MESSAGE);
        Conn {
            batcher: batch::Batcher::start(
                inner.clone(),
                addr.to_string(),
                timeout,
                budget.clone(),
            ),
            inner,
        }
    }

    fn conn(&self) -> Result<Arc<Conn>, CallError> {
        self.conn
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| CallError::Closed {
                node: self.addr.clone(),
            })
    }

    /// Closes the connection for good (the node left the placement): its
    /// batch task ends and the channel is dropped once the calls in flight
    /// on it finish; every later call fails with [`CallError::Closed`].
    pub fn close(&self) {
        self.conn.write().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Drops the connection and opens a new one, resolving the address
    /// again. A live connection is otherwise kept for ever, so a server
    /// that took over the node's old address (another process: it reports
    /// another id) would keep being reached.
    pub fn reconnect(&self) {
        if self
            .conn
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            return;
        }
        let conn = Self::open(
            &self.endpoint,
            &self.tls,
            &self.token,
            &self.addr,
            self.timeout,
            &self.budget,
        );
        let mut current = self.conn.write().unwrap_or_else(|e| e.into_inner());
        // A closed client stays closed.
        if current.is_some() {
            *current = Some(Arc::new(conn));
        }
    }

    /// Bytes of operations waiting for this node (see [`Connect`]).
    pub fn queued_bytes(&self) -> u64 {
        self.budget.used()
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
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

    /// One key operation on the node's batch stream, bounded by the
    /// deadline, routed by placement version `placement`. A per-op error
    /// becomes a typed [`CallError`] here, once.
    async fn op(&self, op: pb::op::Op, placement: u64) -> Result<pb::op_result::Result, CallError> {
        let conn = self.conn()?;
        match self.deadline(conn.batcher.call(op, placement)).await? {
            pb::op_result::Result::Error(e) => Err(self.op_error(e)),
            ok => Ok(ok),
        }
    }

    fn op_error(&self, e: pb::OpError) -> CallError {
        let node = self.addr.clone();
        let refused = |refusal| CallError::Refused {
            node: node.clone(),
            refusal,
            message: e.message.clone(),
        };
        match pb::ErrorReason::try_from(e.reason) {
            Ok(pb::ErrorReason::StalePlacement) => CallError::StalePlacement {
                node,
                newest: e.placement,
            },
            Ok(pb::ErrorReason::InvalidRequest) => refused(Refusal::InvalidRequest),
            Ok(pb::ErrorReason::TooLarge) => refused(Refusal::TooLarge),
            Ok(pb::ErrorReason::VersionTooNew) => refused(Refusal::VersionTooNew),
            Ok(pb::ErrorReason::PreconditionFailed) => refused(Refusal::PreconditionFailed {
                current: e.current_version,
            }),
            Ok(pb::ErrorReason::NotReadable) => refused(Refusal::NotReadable),
            Ok(pb::ErrorReason::Unspecified) | Err(_) => CallError::Status {
                node,
                status: Status::new(Code::from(e.code), e.message),
            },
        }
    }

    fn unexpected(&self) -> CallError {
        CallError::Status {
            node: self.addr.clone(),
            status: Status::internal("result of another kind than the request"),
        }
    }

    /// A consistent read, routed by placement version `placement`: a
    /// syncing node answers [`Read::Syncing`].
    pub async fn get(&self, key: &str, placement: u64) -> Result<Read, CallError> {
        let op = pb::op::Op::Get(pb::GetRequest {
            key: key.to_string(),
            consistent: true,
        });
        let pb::op_result::Result::Get(r) = self.op(op, placement).await? else {
            return Err(self.unexpected());
        };
        Ok(if r.syncing {
            Read::Syncing
        } else if r.unleased {
            Read::Unleased
        } else if r.found {
            Read::Hit(Hit {
                value: r.value,
                seq: r.seq,
                ttl: (r.ttl_remaining_ms > 0).then(|| Duration::from_millis(r.ttl_remaining_ms)),
                version: r.version,
            })
        } else if r.tombstone {
            Read::Deleted(r.version)
        } else {
            Read::Miss
        })
    }

    /// Sends a versioned write, routed by placement version `placement`.
    pub async fn write(
        &self,
        key: &str,
        change: &Change,
        version: u64,
        placement: u64,
    ) -> Result<Written, CallError> {
        self.write_if(key, change, version, placement, None).await
    }

    /// As [`NodeClient::write`], applied only if `condition` holds for the
    /// key's value on the node (checked in the same step).
    pub async fn write_if(
        &self,
        key: &str,
        change: &Change,
        version: u64,
        placement: u64,
        condition: Option<Condition>,
    ) -> Result<Written, CallError> {
        let key = key.to_string();
        let condition = condition.map(Condition::to_pb);
        let op = match change {
            Change::Set { value, ttl } => pb::op::Op::Set(pb::SetRequest {
                key,
                value: value.clone(),
                // Saturate: a huge TTL must not wrap around to a tiny one.
                ttl_ms: ttl.map_or(0, |t| t.as_millis().clamp(1, u128::from(u64::MAX)) as u64),
                version,
                condition,
            }),
            Change::Delete => pb::op::Op::Delete(pb::DeleteRequest {
                key,
                version,
                condition,
            }),
        };
        let (applied, superseded, version) = match self.op(op, placement).await? {
            // `applied.readable` is the node's flag whatever the outcome.
            pb::op_result::Result::Set(r) => (
                Applied {
                    replaced: r.replaced,
                    prior: r.replaced_version,
                    readable: r.readable,
                },
                r.superseded,
                r.version,
            ),
            pb::op_result::Result::Delete(r) => (
                Applied {
                    replaced: r.deleted,
                    prior: r.replaced_version,
                    readable: r.readable,
                },
                r.superseded,
                r.version,
            ),
            _ => return Err(self.unexpected()),
        };
        Ok(if superseded {
            Written::Superseded {
                version,
                readable: applied.readable,
            }
        } else {
            Written::Applied(applied)
        })
    }

    /// Empties the node; returns how many entries were removed.
    pub async fn flush(&self) -> Result<u64, CallError> {
        let mut c = self.conn()?.inner.clone();
        let r = self
            .call(c.flush(self.request(pb::FlushRequest {})))
            .await?;
        Ok(r.removed)
    }

    pub async fn stats(&self) -> Result<pb::StatsResponse, CallError> {
        let mut c = self.conn()?.inner.clone();
        self.call(c.stats(self.request(pb::StatsRequest {}))).await
    }

    /// Records on this node that `node_id` may have missed writes from
    /// `since` on.
    pub async fn mark(&self, node_id: &str, since: u64) -> Result<u64, CallError> {
        let mut c = self.conn()?.inner.clone();
        let req = pb::MarkRequest {
            node_id: node_id.to_string(),
            since,
        };
        Ok(self.call(c.mark(self.request(req))).await?.generation)
    }

    pub async fn clear_mark(&self, node_id: &str, generation: u64) -> Result<bool, CallError> {
        let mut c = self.conn()?.inner.clone();
        let req = pb::ClearMarkRequest {
            node_id: node_id.to_string(),
            generation,
        };
        Ok(self.call(c.clear_mark(self.request(req))).await?.cleared)
    }

    /// Returns (generation, effective since).
    pub async fn begin_sync(&self, since: u64) -> Result<(u64, u64), CallError> {
        let mut c = self.conn()?.inner.clone();
        let r = self
            .call(c.begin_sync(self.request(pb::BeginSyncRequest { since })))
            .await?;
        Ok((r.generation, r.since))
    }

    pub async fn end_sync(&self, generation: u64) -> Result<bool, CallError> {
        let mut c = self.conn()?.inner.clone();
        let r = self
            .call(c.end_sync(self.request(pb::EndSyncRequest { generation })))
            .await?;
        Ok(r.ended)
    }

    /// Drops `ranges` from the node; refused if `placement` is older than
    /// the node's newest.
    pub async fn prune(
        &self,
        ranges: Vec<pb::HashRange>,
        placement: u64,
    ) -> Result<u64, CallError> {
        let mut c = self.conn()?.inner.clone();
        let r = self
            .call(c.prune(self.request(pb::PruneRequest { ranges, placement })))
            .await?;
        Ok(r.removed)
    }

    /// Asks this node to copy `ranges` from `source`; the stream reports
    /// progress until the copy is done. Only opening it is bounded by the
    /// deadline; the caller bounds the wait between progress messages.
    pub async fn pull(
        &self,
        source: &str,
        ranges: Vec<pb::HashRange>,
        since: u64,
        placement: u64,
    ) -> Result<tonic::Streaming<pb::PullProgress>, CallError> {
        let mut c = self.conn()?.inner.clone();
        let req = pb::PullRequest {
            source: source.to_string(),
            ranges,
            since,
            placement,
        };
        self.call(c.pull(Request::new(req))).await
    }

    /// Tells the node the newest placement version; returns the node's.
    pub async fn set_placement(&self, version: u64) -> Result<u64, CallError> {
        let mut c = self.conn()?.inner.clone();
        let r = self
            .call(c.set_placement(self.request(pb::SetPlacementRequest { version })))
            .await?;
        Ok(r.version)
    }

    /// Renews this manager's read lease on the node, counted from the
    /// node's heartbeat `heartbeat_seq`. Returns (granted, the node's event
    /// seq when it handled the call).
    pub async fn renew(
        &self,
        manager_id: &str,
        heartbeat_seq: u64,
        lease: Duration,
    ) -> Result<(bool, u64), CallError> {
        let mut c = self.conn()?.inner.clone();
        let req = pb::RenewRequest {
            manager_id: manager_id.to_string(),
            heartbeat_seq,
            lease_ms: lease.as_millis() as u64,
        };
        let r = self.call(c.renew(self.request(req))).await?;
        Ok((r.granted, r.seq))
    }

    /// Tells the node which managers are registered (at `revision`).
    pub async fn set_managers(
        &self,
        revision: u64,
        managers: Vec<String>,
    ) -> Result<bool, CallError> {
        let mut c = self.conn()?.inner.clone();
        let req = pb::SetManagersRequest { revision, managers };
        Ok(self.call(c.set_managers(self.request(req))).await?.applied)
    }

    /// Opens the node's event stream. Only opening it is bounded by the
    /// deadline; the stream itself lives until either side ends it.
    /// `skip_invalidations`: status and lag events only (nothing cached
    /// here needs the per-write invalidations).
    /// Opens the node's event stream as subscriber `me` (listed in the
    /// node's Stats while it is open).
    pub async fn subscribe(
        &self,
        skip_invalidations: bool,
        me: &str,
    ) -> Result<tonic::Streaming<pb::Event>, CallError> {
        let mut c = self.conn()?.inner.clone();
        let req = pb::SubscribeRequest {
            skip_invalidations,
            subscriber_id: me.to_string(),
        };
        self.call(c.subscribe(Request::new(req))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op_error(reason: pb::ErrorReason, code: Code) -> pb::OpError {
        pb::OpError {
            code: code as i32,
            message: "m".into(),
            reason: reason as i32,
            placement: 9,
            current_version: 7,
        }
    }

    #[tokio::test]
    async fn per_op_errors_become_typed_once_and_only_transport_failures_take_a_node_out() {
        let c = NodeClient::new("http://127.0.0.1:1", &Connect::default()).unwrap();
        let e = c.op_error(op_error(pb::ErrorReason::TooLarge, Code::ResourceExhausted));
        assert!(matches!(
            e,
            CallError::Refused {
                refusal: Refusal::TooLarge,
                ..
            }
        ));
        assert!(!e.is_node_failure());
        let e = c.op_error(op_error(
            pb::ErrorReason::InvalidRequest,
            Code::InvalidArgument,
        ));
        assert!(matches!(
            e,
            CallError::Refused {
                refusal: Refusal::InvalidRequest,
                ..
            }
        ));
        let e = c.op_error(op_error(
            pb::ErrorReason::StalePlacement,
            Code::FailedPrecondition,
        ));
        assert!(matches!(e, CallError::StalePlacement { newest: 9, .. }));
        assert!(!e.is_node_failure());
        // A failed condition is the answer, with what the key holds; a node
        // that cannot decide one is not taken out for it.
        let e = c.op_error(op_error(
            pb::ErrorReason::PreconditionFailed,
            Code::FailedPrecondition,
        ));
        assert!(matches!(
            e,
            CallError::Refused {
                refusal: Refusal::PreconditionFailed { current: 7 },
                ..
            }
        ));
        assert!(!e.is_node_failure());
        let e = c.op_error(op_error(pb::ErrorReason::NotReadable, Code::Unavailable));
        assert!(matches!(
            e,
            CallError::Refused {
                refusal: Refusal::NotReadable,
                ..
            }
        ));
        assert!(!e.is_node_failure());
        // No reason (an older node): by code.
        let e = c.op_error(op_error(pb::ErrorReason::Unspecified, Code::Unavailable));
        assert!(e.is_node_failure());
        let e = c.op_error(op_error(
            pb::ErrorReason::Unspecified,
            Code::InvalidArgument,
        ));
        assert!(!e.is_node_failure());
    }
}
