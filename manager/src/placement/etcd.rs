//! The placement's home in etcd (docs/design/membership.md): one key holding
//! the placement as JSON, whose `mod_revision` is the placement version;
//! changes by compare-and-swap transactions on that revision; a watch so
//! every manager follows within a round trip; and a leased key that elects
//! the one manager driving hand-offs.
//!
//! A thin layer over etcd's own gRPC API (`ringcache_proto::etcd`, compiled
//! from etcd's protos with protox). The `etcd-client` crate wraps the same
//! API but compiles etcd's protos with a system `protoc` at build time,
//! which would break the one-command build on a machine without one.

use std::time::Duration;

use ringcache_proto::etcd::etcdserverpb::{
    auth_client::AuthClient, compare, kv_client::KvClient, lease_client::LeaseClient, request_op,
    watch_client::WatchClient, watch_request, AuthenticateRequest, Compare, DeleteRangeRequest,
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, TxnResponse, WatchCreateRequest, WatchRequest,
};
use std::sync::Arc;

use ringcache_common::tls::ClientTls;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Why talking to etcd failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("invalid etcd endpoint {0:?}")]
    Endpoint(String),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("etcd: {0}")]
    Status(#[from] tonic::Status),
    #[error("etcd watch ended")]
    WatchEnded,
    #[error("etcd lease {0} expired")]
    LeaseLost(i64),
    #[error("etcd refused user {user:?}: {status}")]
    Auth { user: String, status: tonic::Status },
}

/// etcd's auth token, sent as `token` metadata with every call once
/// `Authenticate` gave one.
#[derive(Clone, Default)]
struct Token(Arc<std::sync::RwLock<Option<tonic::metadata::AsciiMetadataValue>>>);

impl Token {
    fn get(&self) -> Option<tonic::metadata::AsciiMetadataValue> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, v: Option<tonic::metadata::AsciiMetadataValue>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = v;
    }
}

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = self.get() {
            req.metadata_mut().insert("token", t);
        }
        Ok(req)
    }
}

/// User and password for etcd's auth, and the token they were given.
#[derive(Clone)]
struct Auth {
    client: AuthClient<Channel>,
    user: String,
    password: String,
    token: Token,
    /// One `Authenticate` at a time.
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Auth {
    /// A token, asking etcd for one if there is none.
    async fn ensure(&self, timeout: Duration) -> Result<(), EtcdError> {
        if self.token.get().is_some() {
            return Ok(());
        }
        let _one = self.lock.lock().await;
        if self.token.get().is_some() {
            return Ok(());
        }
        let mut client = self.client.clone();
        let req = AuthenticateRequest {
            name: self.user.clone(),
            password: self.password.clone(),
        };
        let r = match tokio::time::timeout(timeout, client.authenticate(req)).await {
            Ok(r) => r.map_err(|status| EtcdError::Auth {
                user: self.user.clone(),
                status,
            })?,
            Err(_) => return Err(EtcdError::Timeout(timeout)),
        };
        let token = r.into_inner().token.parse().map_err(|_| EtcdError::Auth {
            user: self.user.clone(),
            status: tonic::Status::internal("etcd gave a token that is not ASCII"),
        })?;
        self.token.set(Some(token));
        Ok(())
    }

    /// Whether `status` says the token is missing or no longer valid (it
    /// expired, or etcd restarted): the next call authenticates again.
    fn rejected(&self, status: &tonic::Status) {
        let m = status.message();
        if status.code() == tonic::Code::Unauthenticated
            || m.contains("auth token")
            || m.contains("user name is empty")
        {
            self.token.set(None);
        }
    }
}

type Intercepted = InterceptedService<Channel, Token>;

/// `key` was last written at revision `expected`.
fn mod_revision_is(key: Vec<u8>, expected: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key,
        target_union: Some(compare::TargetUnion::ModRevision(expected)),
        ..Default::default()
    }
}

/// The end of the key range of every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: to the end of the key space.
    vec![0]
}

/// A value with its etcd revision.
#[derive(Debug, Clone)]
pub struct Stored {
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// Client of one etcd cluster, scoped to one key prefix; cheap to clone
/// (one HTTP/2 connection shared by every call).
#[derive(Clone)]
pub struct Etcd {
    kv: KvClient<Intercepted>,
    watch: WatchClient<Intercepted>,
    lease: LeaseClient<Intercepted>,
    auth: Option<Auth>,
    prefix: String,
    timeout: Duration,
}

impl Etcd {
    /// Connects lazily to `endpoints` (`http://host:2379`; a bare host:port
    /// means http), balancing over them; keys live under `prefix`. With
    /// `tls`, every endpoint is reached over TLS (whatever its scheme), one
    /// at a time: the connection goes to the next one when it fails.
    pub fn new(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
        tls: Option<Arc<ClientTls>>,
        user: Option<(String, String)>,
    ) -> Result<Self, EtcdError> {
        let mut eps = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let uri = ringcache_common::tls::plain_scheme(&crate::config::node_uri(e));
            let ep = Endpoint::from_shared(uri.clone())
                .map_err(|_| EtcdError::Endpoint(e.clone()))?
                .connect_timeout(timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(3));
            eps.push(ep);
        }
        if eps.is_empty() {
            return Err(EtcdError::Endpoint(String::new()));
        }
        let channel = match tls {
            Some(tls) => {
                let targets = eps
                    .iter()
                    .map(|ep| {
                        let uri = ep.uri();
                        let host = uri.host().unwrap_or_default().to_string();
                        (host, uri.port_u16().unwrap_or(2379))
                    })
                    .collect();
                eps[0].connect_with_connector_lazy(ringcache_common::tls::GrpcConnector::failover(
                    tls, targets, timeout,
                ))
            }
            None => Channel::balance_list(eps.into_iter()),
        };
        let token = Token::default();
        Ok(Self {
            auth: user.map(|(user, password)| Auth {
                client: AuthClient::new(channel.clone()),
                user,
                password,
                token: token.clone(),
                lock: Arc::new(tokio::sync::Mutex::new(())),
            }),
            kv: KvClient::with_interceptor(channel.clone(), token.clone()),
            watch: WatchClient::with_interceptor(channel.clone(), token.clone()),
            lease: LeaseClient::with_interceptor(channel, token),
            prefix: prefix.trim_end_matches('/').to_string(),
            timeout,
        })
    }

    /// The full etcd key of `name`.
    pub fn key(&self, name: &str) -> Vec<u8> {
        format!("{}/{name}", self.prefix).into_bytes()
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, EtcdError> {
        // The call's interceptor reads the token when it is first polled,
        // after this.
        if let Some(auth) = &self.auth {
            auth.ensure(self.timeout).await?;
        }
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => {
                if let Some(auth) = &self.auth {
                    auth.rejected(&status);
                }
                Err(status.into())
            }
            Err(_) => Err(EtcdError::Timeout(self.timeout)),
        }
    }

    /// The value of `name`, if any.
    pub async fn get(&self, name: &str) -> Result<Option<Stored>, EtcdError> {
        let mut kv = self.kv.clone();
        let req = RangeRequest {
            key: self.key(name),
            ..Default::default()
        };
        let r = self.bounded(kv.range(req)).await?;
        Ok(r.kvs.into_iter().next().map(|kv| Stored {
            value: kv.value,
            mod_revision: kv.mod_revision,
        }))
    }

    /// The values of every key under `name/`, and the store's revision.
    pub async fn get_prefix(&self, name: &str) -> Result<(Vec<Vec<u8>>, i64), EtcdError> {
        let mut kv = self.kv.clone();
        let key = self.key(&format!("{name}/"));
        let req = RangeRequest {
            range_end: prefix_end(&key),
            key,
            ..Default::default()
        };
        let r = self.bounded(kv.range(req)).await?;
        let rev = r.header.map_or(0, |h| h.revision);
        Ok((r.kvs.into_iter().map(|kv| kv.value).collect(), rev))
    }

    /// Every key under `name/` (the part after it), with its value and
    /// mod revision.
    pub async fn list_prefix(&self, name: &str) -> Result<Vec<(String, Stored)>, EtcdError> {
        let mut kv = self.kv.clone();
        let key = self.key(&format!("{name}/"));
        let req = RangeRequest {
            range_end: prefix_end(&key),
            key: key.clone(),
            ..Default::default()
        };
        let r = self.bounded(kv.range(req)).await?;
        Ok(r.kvs
            .into_iter()
            .map(|kv| {
                let rest = kv.key.get(key.len()..).unwrap_or_default();
                (
                    String::from_utf8_lossy(rest).into_owned(),
                    Stored {
                        value: kv.value,
                        mod_revision: kv.mod_revision,
                    },
                )
            })
            .collect())
    }

    /// Deletes `name` if its mod revision is still `expected`; whether it
    /// did.
    pub async fn delete_if(&self, name: &str, expected: i64) -> Result<bool, EtcdError> {
        let key = self.key(name);
        let compare = mod_revision_is(key.clone(), expected);
        let delete = request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key,
            ..Default::default()
        });
        Ok(self.txn_if(compare, delete).await?.succeeded)
    }

    /// Writes `value` to `name`, attached to `lease`.
    pub async fn put_leased(
        &self,
        name: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<(), EtcdError> {
        let mut kv = self.kv.clone();
        let req = PutRequest {
            key: self.key(name),
            value,
            lease,
            ..Default::default()
        };
        self.bounded(kv.put(req)).await.map(|_| ())
    }

    /// Writes `value` to `name` if its mod revision is still `expected` (0:
    /// the key must not exist), attached to `lease` (0: none). Returns the
    /// new revision, or `None` if someone changed the key first.
    pub async fn put_if(
        &self,
        name: &str,
        value: Vec<u8>,
        expected: i64,
        lease: i64,
    ) -> Result<Option<i64>, EtcdError> {
        let key = self.key(name);
        let compare = if expected == 0 {
            Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Create as i32,
                key: key.clone(),
                target_union: Some(compare::TargetUnion::CreateRevision(0)),
                ..Default::default()
            }
        } else {
            mod_revision_is(key.clone(), expected)
        };
        let put = request_op::Request::RequestPut(PutRequest {
            key,
            value,
            lease,
            ..Default::default()
        });
        let r = self.txn_if(compare, put).await?;
        Ok(r.succeeded.then(|| r.header.map_or(0, |h| h.revision)))
    }

    /// One operation, done only if `compare` holds.
    async fn txn_if(
        &self,
        compare: Compare,
        op: request_op::Request,
    ) -> Result<TxnResponse, EtcdError> {
        let mut kv = self.kv.clone();
        let req = TxnRequest {
            compare: vec![compare],
            success: vec![RequestOp { request: Some(op) }],
            failure: Vec::new(),
        };
        self.bounded(kv.txn(req)).await
    }

    /// Writes `value` to `name` unconditionally.
    pub async fn put(&self, name: &str, value: Vec<u8>) -> Result<(), EtcdError> {
        let mut kv = self.kv.clone();
        let req = PutRequest {
            key: self.key(name),
            value,
            ..Default::default()
        };
        self.bounded(kv.put(req)).await.map(|_| ())
    }

    /// Follows `name` from revision `from` on: every new value (or `None`
    /// when deleted) with its revision, on the returned channel, until the
    /// watch breaks (the channel closes; the caller reads anew and watches
    /// again).
    pub async fn watch(
        &self,
        name: &str,
        from: i64,
    ) -> Result<mpsc::Receiver<(Option<Vec<u8>>, i64)>, EtcdError> {
        self.watch_range(self.key(name), Vec::new(), from).await
    }

    /// Like [`Etcd::watch`], for every key under `name/`.
    pub async fn watch_prefix(
        &self,
        name: &str,
        from: i64,
    ) -> Result<mpsc::Receiver<(Option<Vec<u8>>, i64)>, EtcdError> {
        let key = self.key(&format!("{name}/"));
        let end = prefix_end(&key);
        self.watch_range(key, end, from).await
    }

    async fn watch_range(
        &self,
        key: Vec<u8>,
        range_end: Vec<u8>,
        from: i64,
    ) -> Result<mpsc::Receiver<(Option<Vec<u8>>, i64)>, EtcdError> {
        let (req_tx, req_rx) = mpsc::channel(1);
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key,
                    range_end,
                    start_revision: from,
                    ..Default::default()
                },
            )),
        };
        req_tx
            .send(create)
            .await
            .map_err(|_| EtcdError::WatchEnded)?;
        let mut w = self.watch.clone();
        let mut stream = self.bounded(w.watch(ReceiverStream::new(req_rx))).await?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            // Keeping the request side open keeps the watch alive.
            let _req_tx = req_tx;
            while let Ok(Some(resp)) = stream.message().await {
                if resp.canceled {
                    tracing::warn!(reason = %resp.cancel_reason, "etcd watch cancelled");
                    return;
                }
                for ev in resp.events {
                    let Some(kv) = ev.kv else { continue };
                    let value = (ev.r#type == 0).then_some(kv.value);
                    if tx.send((value, kv.mod_revision)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    /// Grants a lease of `ttl` and keeps it alive until the returned token
    /// is cancelled (then revokes it) or a renewal fails (then cancels the
    /// token: whatever was attached to the lease is gone or soon will be).
    pub async fn lease(
        &self,
        ttl: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(i64, tokio_util::sync::CancellationToken), EtcdError> {
        let mut lease = self.lease.clone();
        let granted = self
            .bounded(lease.lease_grant(LeaseGrantRequest {
                ttl: ttl.as_secs().max(1) as i64,
                id: 0,
            }))
            .await?;
        let id = granted.id;
        let (tx, rx) = mpsc::channel(1);
        // etcd answers the call's headers with its first reply, so the
        // stream must carry a request before the call can complete.
        tx.send(LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| EtcdError::LeaseLost(id))?;
        let mut replies = self
            .bounded(lease.lease_keep_alive(ReceiverStream::new(rx)))
            .await?;
        if replies.message().await?.is_none_or(|r| r.ttl <= 0) {
            return Err(EtcdError::LeaseLost(id));
        }
        let lost = shutdown.child_token();
        let done = lost.clone();
        let every = ttl / 3;
        let revoke = self.lease.clone();
        let timeout = self.timeout;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = done.cancelled() => {
                        let mut revoke = revoke;
                        let _ = tokio::time::timeout(timeout, revoke.lease_revoke(LeaseRevokeRequest { id })).await;
                        return;
                    }
                    _ = tokio::time::sleep(every) => {}
                }
                let renewed = async {
                    tx.send(LeaseKeepAliveRequest { id }).await.ok()?;
                    let r = replies.message().await.ok()??;
                    (r.ttl > 0).then_some(())
                };
                if tokio::time::timeout(every, renewed)
                    .await
                    .ok()
                    .flatten()
                    .is_none()
                {
                    tracing::warn!(lease = id, "etcd lease renewal failed");
                    done.cancel();
                    return;
                }
            }
        });
        Ok((id, lost))
    }
}
