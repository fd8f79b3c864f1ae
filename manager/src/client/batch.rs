//! The hot path to a node: one long-lived bidirectional `Batch` stream per
//! node. Requests from all HTTP handlers queue on a channel; one task sends
//! whatever has accumulated as one `BatchRequest` (several may be in flight)
//! and routes each result back by id, in the manner of TiKV's
//! `BatchCommands`. Under load this turns thousands of small HTTP/2 streams
//! into a few large messages; when idle a request travels alone at once.

use std::collections::HashMap;
use std::time::Duration;

use ringcache_proto::pb;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Code, Status};

use super::Grpc;

/// Most operations in one batch.
const MAX_OPS: usize = 128;
/// A batch is closed once its payload passes this many bytes.
const MAX_BYTES: usize = 1 << 20;
/// Requests waiting for the batch task; beyond this callers wait (bounded
/// by their deadline), which is the backpressure.
const QUEUE: usize = 4096;
/// Results awaited at once; beyond this the stream is reset (the node is
/// not answering and callers have long given up).
const MAX_IN_FLIGHT: usize = 65536;
const RECONNECT_MIN: Duration = Duration::from_millis(20);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

pub(super) type Reply = Result<pb::op_result::Result, Status>;

struct Pending {
    op: pb::op::Op,
    reply: oneshot::Sender<Reply>,
}

/// Sender side of a node's batch stream; cheap to clone.
#[derive(Clone)]
pub(super) struct Batcher {
    tx: mpsc::Sender<Pending>,
}

impl Batcher {
    /// Starts the stream task for `client`; it ends when every `Batcher`
    /// clone is dropped.
    /// Opening the stream is bounded by `timeout` (a node that accepts
    /// connections but never answers must not hold the queue).
    pub(super) fn start(client: Grpc, addr: String, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(client, addr, rx, timeout));
        Self { tx }
    }

    /// Queues one operation and waits for its result (the caller bounds the
    /// wait with its deadline).
    pub(super) async fn call(&self, op: pb::op::Op) -> Reply {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { op, reply })
            .await
            .map_err(|_| Status::unavailable("batch stream stopped"))?;
        rx.await
            .unwrap_or_else(|_| Err(Status::unavailable("batch stream reset")))
    }
}

fn op_size(op: &pb::op::Op) -> usize {
    match op {
        pb::op::Op::Get(g) => g.key.len(),
        pb::op::Op::Set(s) => s.key.len() + s.value.len(),
        pb::op::Op::Delete(d) => d.key.len(),
    }
}

async fn run(mut client: Grpc, addr: String, mut rx: mpsc::Receiver<Pending>, timeout: Duration) {
    let mut backoff = RECONNECT_MIN;
    let mut next_id: u64 = 0;
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        // Open the stream only when there is work, so an idle or dead node
        // costs nothing. Unbounded, because the number of batches in flight
        // is bounded by `MAX_IN_FLIGHT` below, and a bounded queue here could
        // deadlock with HTTP/2 flow control while responses go unread.
        let (req_tx, req_rx) = mpsc::unbounded_channel::<pb::BatchRequest>();
        let opened =
            tokio::time::timeout(timeout, client.batch(UnboundedReceiverStream::new(req_rx)))
                .await
                .unwrap_or_else(|_| {
                    Err(Status::deadline_exceeded(
                        "opening the batch stream timed out",
                    ))
                });
        let mut responses = match opened {
            Ok(r) => r.into_inner(),
            Err(status) => {
                tracing::debug!(node = %addr, %status, "cannot open batch stream");
                let _ = first.reply.send(Err(status));
                // Fail what queued meanwhile rather than make it wait for
                // a node that is not there.
                while let Ok(p) = rx.try_recv() {
                    let _ = p.reply.send(Err(Status::unavailable("node unreachable")));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        backoff = RECONNECT_MIN;
        let mut in_flight: HashMap<u64, oneshot::Sender<Reply>> = HashMap::new();
        let mut next = Some(first);
        let reason = loop {
            if let Some(first) = next.take() {
                let batch = collect(first, &mut rx, &mut next_id, &mut in_flight);
                if batch.ops.is_empty() {
                    continue;
                }
                if req_tx.send(batch).is_err() {
                    break Status::unavailable("batch stream closed");
                }
                if in_flight.len() > MAX_IN_FLIGHT {
                    break Status::deadline_exceeded("node is not answering");
                }
                continue;
            }
            tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => next = Some(p),
                    None => return,
                },
                m = responses.message() => match m {
                    Ok(Some(resp)) => {
                        for r in resp.results {
                            if let Some(reply) = in_flight.remove(&r.id) {
                                let result = r.result.ok_or_else(|| Status::internal("empty result"));
                                let _ = reply.send(result.and_then(from_op_error));
                            }
                        }
                    }
                    Ok(None) => break Status::unavailable("batch stream ended"),
                    Err(status) => break status,
                },
            }
        };
        tracing::debug!(node = %addr, %reason, pending = in_flight.len(), "batch stream reset");
        for (_, reply) in in_flight.drain() {
            let _ = reply.send(Err(reason.clone()));
        }
    }
}

/// Builds one batch from `first` and whatever else is queued right now,
/// leaving out requests whose callers have given up (their deadline passed):
/// sending them would only load a node that is already slow.
fn collect(
    first: Pending,
    rx: &mut mpsc::Receiver<Pending>,
    next_id: &mut u64,
    in_flight: &mut HashMap<u64, oneshot::Sender<Reply>>,
) -> pb::BatchRequest {
    let mut ops = Vec::with_capacity(16);
    let mut bytes = 0;
    let mut p = first;
    loop {
        if !p.reply.is_closed() {
            *next_id += 1;
            bytes += op_size(&p.op);
            in_flight.insert(*next_id, p.reply);
            ops.push(pb::Op {
                id: *next_id,
                op: Some(p.op),
            });
        }
        if ops.len() >= MAX_OPS || bytes >= MAX_BYTES {
            break;
        }
        match rx.try_recv() {
            Ok(more) => p = more,
            Err(_) => break,
        }
    }
    pb::BatchRequest { ops }
}

/// A per-operation error travels inside the result.
fn from_op_error(r: pb::op_result::Result) -> Reply {
    match r {
        pb::op_result::Result::Error(e) => Err(Status::new(Code::from(e.code), e.message)),
        ok => Ok(ok),
    }
}
