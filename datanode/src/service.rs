//! The `ringcache.v1.DataNode` gRPC service: thin methods over [`Node`].

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use ringcache_proto::pb::{self, data_node_server::DataNode};
use tokio::sync::broadcast::error::RecvError;

use crate::events::EventKind;
use tonic::{Request, Response, Status, Streaming};
use tracing::instrument;

use crate::convert;
use crate::node::{Node, NodeError};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// gRPC front of one data node.
#[derive(Clone)]
pub struct DataNodeService {
    node: Arc<Node>,
}

impl DataNodeService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

fn get_response(node: &Node, req: &pb::GetRequest) -> Result<pb::GetResponse, NodeError> {
    let read = node.get(&req.key, req.consistent)?;
    if req.consistent && read.is_some() && !node.leases().held() {
        return Ok(pb::GetResponse {
            unleased: true,
            seq: node.store().events().last_seq(),
            ..Default::default()
        });
    }
    Ok(convert::read(read, node.store().events().last_seq()))
}

fn set_response(node: &Node, req: &pb::SetRequest) -> Result<pb::SetResponse, NodeError> {
    // Readable before or after applying: a read may have seen the write
    // if the node answered reads at any moment from applying it on.
    let before = node.readable();
    let condition = convert::condition(req.condition.as_ref());
    let outcome = node.set(&req.key, &req.value, req.ttl_ms, req.version, condition)?;
    Ok(convert::set_response(outcome, before || node.readable()))
}

fn delete_response(node: &Node, req: &pb::DeleteRequest) -> Result<pb::DeleteResponse, NodeError> {
    let before = node.readable();
    let condition = convert::condition(req.condition.as_ref());
    let outcome = node.delete(&req.key, req.version, condition)?;
    Ok(convert::delete_response(outcome, before || node.readable()))
}

/// Runs one operation of a batch; errors travel inside the result so that
/// one bad request does not fail the others.
fn run_op(node: &Node, op: pb::Op) -> pb::OpResult {
    use pb::{op_result::Result as R, Op};
    let Op { id, op, placement } = op;
    let newest = node.placement();
    if placement != 0 && placement < newest {
        return pb::OpResult {
            id,
            result: Some(R::Error(pb::OpError {
                code: tonic::Code::FailedPrecondition as i32,
                message: format!(
                    "routed by placement {placement}, but placement {newest} is current"
                ),
                reason: pb::ErrorReason::StalePlacement as i32,
                placement: newest,
                current_version: 0,
            })),
        };
    }
    let result = match op {
        Some(pb::op::Op::Get(r)) => get_response(node, &r).map(R::Get),
        Some(pb::op::Op::Set(r)) => set_response(node, &r).map(R::Set),
        Some(pb::op::Op::Delete(r)) => delete_response(node, &r).map(R::Delete),
        None => Ok(R::Error(pb::OpError {
            code: tonic::Code::InvalidArgument as i32,
            message: "operation missing".into(),
            reason: pb::ErrorReason::InvalidRequest as i32,
            placement: 0,
            current_version: 0,
        })),
    };
    let result = result.unwrap_or_else(|e| R::Error(e.into()));
    pb::OpResult {
        id,
        result: Some(result),
    }
}

#[tonic::async_trait]
impl DataNode for DataNodeService {
    #[instrument(level = "debug", skip_all, fields(key = %req.get_ref().key))]
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        get_response(&self.node, req.get_ref())
            .map(Response::new)
            .map_err(Status::from)
    }

    #[instrument(level = "debug", skip_all, fields(key = %req.get_ref().key, len = req.get_ref().value.len()))]
    async fn set(&self, req: Request<pb::SetRequest>) -> Result<Response<pb::SetResponse>, Status> {
        set_response(&self.node, req.get_ref())
            .map(Response::new)
            .map_err(Status::from)
    }

    #[instrument(level = "debug", skip_all, fields(key = %req.get_ref().key))]
    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        delete_response(&self.node, req.get_ref())
            .map(Response::new)
            .map_err(Status::from)
    }

    #[instrument(skip_all, fields(node = %self.node.id()))]
    async fn flush(
        &self,
        _req: Request<pb::FlushRequest>,
    ) -> Result<Response<pb::FlushResponse>, Status> {
        let removed = self.node.store().flush();
        tracing::info!(removed, "flushed");
        Ok(Response::new(pb::FlushResponse { removed }))
    }

    async fn stats(
        &self,
        _req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let s = self.node.store().stats();
        Ok(Response::new(convert::stats(&self.node, s)))
    }

    type SubscribeStream = BoxStream<pb::Event>;

    #[instrument(skip_all, fields(node = %self.node.id()))]
    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let node = self.node.clone();
        let skip = req.get_ref().skip_invalidations;
        let subscriber = req.get_ref().subscriber_id.clone();
        let (start, rx) = node.store().subscribe(!skip);
        tracing::info!(start, skip_invalidations = skip, %subscriber, peer = ?req.remote_addr(), "subscriber joined");
        // Listed in Stats for as long as the stream lives.
        let listed = node.subscribed(&subscriber);
        // The first event is a status snapshot carrying the sequence number
        // the subscription starts after, so the subscriber learns the
        // instance id and can detect a gap from the very next event.
        let first = pb::Event {
            seq: start,
            ..convert::event(
                &node,
                crate::events::NodeEvent {
                    seq: start,
                    kind: EventKind::Status(node.store().stats()),
                },
            )
        };
        let rest = futures::stream::unfold(
            (rx, start, node.clone()),
            move |(mut rx, last, node)| async move {
                let ev = match rx.recv().await {
                    Ok(ev) => ev,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "subscriber lagged; events dropped for it");
                        // The proto's rule: a Lagged event carries the number
                        // of the last dropped event, so the next one is
                        // consecutive to it.
                        let seq = last + missed;
                        return Some((Ok(convert::lagged(&node, seq, missed)), (rx, seq, node)));
                    }
                    Err(RecvError::Closed) => return None,
                };
                let seq = ev.seq;
                Some((Ok(convert::event(&node, ev)), (rx, seq, node)))
            },
        );
        let stream = futures::stream::once(async move { Ok(first) })
            .chain(rest)
            .take_until(self.node.shutdown_token().clone().cancelled_owned())
            .inspect(move |_| {
                let _listed = &listed;
            });
        Ok(Response::new(Box::pin(stream)))
    }

    type BatchStream = BoxStream<pb::BatchResponse>;

    async fn batch(
        &self,
        req: Request<Streaming<pb::BatchRequest>>,
    ) -> Result<Response<Self::BatchStream>, Status> {
        let node = self.node.clone();
        let stream = req
            .into_inner()
            .map(move |batch| {
                let batch = batch?;
                let results = batch.ops.into_iter().map(|op| run_op(&node, op)).collect();
                Ok(pb::BatchResponse { results })
            })
            .take_until(self.node.shutdown_token().clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }

    #[instrument(skip_all, fields(node = %req.get_ref().node_id, since = req.get_ref().since))]
    async fn mark(
        &self,
        req: Request<pb::MarkRequest>,
    ) -> Result<Response<pb::MarkResponse>, Status> {
        let r = req.get_ref();
        let generation = self.node.mark(&r.node_id, r.since)?;
        Ok(Response::new(pb::MarkResponse { generation }))
    }

    async fn clear_mark(
        &self,
        req: Request<pb::ClearMarkRequest>,
    ) -> Result<Response<pb::ClearMarkResponse>, Status> {
        let r = req.get_ref();
        let cleared = self.node.clear_mark(&r.node_id, r.generation);
        Ok(Response::new(pb::ClearMarkResponse { cleared }))
    }

    async fn begin_sync(
        &self,
        req: Request<pb::BeginSyncRequest>,
    ) -> Result<Response<pb::BeginSyncResponse>, Status> {
        let (generation, since) = self.node.begin_sync(req.get_ref().since);
        Ok(Response::new(pb::BeginSyncResponse { generation, since }))
    }

    async fn end_sync(
        &self,
        req: Request<pb::EndSyncRequest>,
    ) -> Result<Response<pb::EndSyncResponse>, Status> {
        let ended = self.node.end_sync(req.get_ref().generation);
        Ok(Response::new(pb::EndSyncResponse { ended }))
    }

    type PullStream = BoxStream<pb::PullProgress>;

    #[instrument(skip_all, fields(source = %req.get_ref().source, since = req.get_ref().since))]
    async fn pull(
        &self,
        req: Request<pb::PullRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        self.node.check_placement(req.get_ref().placement)?;
        let stream = crate::sync::start_pull(self.node.clone(), req.into_inner())
            .take_until(self.node.shutdown_token().clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }

    type ScanStream = BoxStream<pb::ScanBatch>;

    #[instrument(skip_all, fields(since = req.get_ref().since, ranges = req.get_ref().ranges.len()))]
    async fn scan(
        &self,
        req: Request<pb::ScanRequest>,
    ) -> Result<Response<Self::ScanStream>, Status> {
        let r = req.into_inner();
        let stream = crate::sync::scan_batches(
            self.node.store().clone(),
            crate::sync::ranges(&r.ranges),
            r.since,
            self.node.sync_rate(),
        )
        .take_until(self.node.shutdown_token().clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn prune(
        &self,
        req: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneResponse>, Status> {
        self.node.check_placement(req.get_ref().placement)?;
        let removed = self
            .node
            .store()
            .prune(&crate::sync::ranges(&req.get_ref().ranges));
        tracing::info!(removed, "pruned ranges that may be stale");
        Ok(Response::new(pb::PruneResponse { removed }))
    }

    async fn renew(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let r = req.get_ref();
        let seq = self.node.store().events().last_seq();
        // A zero lease is a probe only (a manager without --etcd measuring
        // its event stream's lag): nothing to remember.
        let granted = r.lease_ms > 0
            && self.node.leases().renew(
                &r.manager_id,
                r.heartbeat_seq,
                std::time::Duration::from_millis(r.lease_ms),
            );
        Ok(Response::new(pb::RenewResponse { granted, seq }))
    }

    #[instrument(skip_all, fields(revision = req.get_ref().revision))]
    async fn set_managers(
        &self,
        req: Request<pb::SetManagersRequest>,
    ) -> Result<Response<pb::SetManagersResponse>, Status> {
        let r = req.into_inner();
        let applied = self.node.leases().set_required(r.revision, r.managers);
        Ok(Response::new(pb::SetManagersResponse { applied }))
    }

    #[instrument(skip_all, fields(version = req.get_ref().version))]
    async fn set_placement(
        &self,
        req: Request<pb::SetPlacementRequest>,
    ) -> Result<Response<pb::SetPlacementResponse>, Status> {
        let version = self.node.raise_placement(req.get_ref().version);
        Ok(Response::new(pb::SetPlacementResponse { version }))
    }
}
