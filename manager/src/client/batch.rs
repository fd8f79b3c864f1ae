//! The hot path to a node: long-lived bidirectional `Batch` streams, `LANES`
//! per node. Requests from all HTTP handlers queue on one channel
//! per node; one task takes whatever has accumulated, splits it by key over
//! the lanes, sends one `BatchRequest` per lane (several may be in flight)
//! and routes each result back by id, in the manner of TiKV's
//! `BatchCommands`. Under load this turns thousands of small HTTP/2 streams
//! into a few large messages; when idle a request travels alone at once.
//!
//! Why lanes: a node executes one stream's ops one after another on one
//! task, so a single stream is a single serial lane per manager and node.
//! A key always takes the same lane, so operations on one key still reach
//! the node in the order they were queued.
//!
//! What a small batch costs is writes: on loopback a write costs the sender
//! the receiver's network processing too, and a profile of the manager
//! under GET at 16 connections had about half of its CPU in `writev`
//! (about 0.65 writes to the nodes per request on top of the one HTTP
//! response, i.e. batches of 1.5 ops). So a round is taken only after the
//! task has let the requests already ready on its worker queue (see
//! `yield_now` below): 0.45 writes per request at 16 connections.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, SelectAll, Stream, StreamExt};
use ringcache_proto::pb;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Status;

use super::Grpc;

/// Most operations taken from the queue in one round (over all lanes).
const MAX_OPS: usize = 128;
/// A round is closed once its payload passes this many bytes.
const MAX_BYTES: usize = 1 << 20;
/// Requests waiting for the batch task; beyond this callers wait (bounded
/// by their deadline), which is the backpressure. The bytes they and the
/// ops in flight may hold are bounded by the node's [`Budget`].
const QUEUE: usize = 4096;
/// Bytes an op is charged beyond its encoded size: its id, framing, the
/// waiting caller's reply slot.
const OP_OVERHEAD: u64 = 64;
/// Results awaited at once; beyond this the streams are reset (the node is
/// not answering and callers have long given up).
const MAX_IN_FLIGHT: usize = 65536;
const RECONNECT_MIN: Duration = Duration::from_millis(20);
const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// Batch streams per node. Two per core of a small node keeps both of its
/// cores busy with one manager.
///
/// One for now: measured on 2 cores with the load generator on the same
/// cores (1 manager, 3 nodes, GET at 16 and 64 connections), 2 and 4 lanes
/// were slower than 1 and cost more writes per request (1.43 `writev` per
/// request with 1 lane, 1.61 with 2, 1.69 with 4): hyper pipes each
/// stream's body in a task of its own, so the batches of different lanes
/// reach the connection task, and the socket, separately. Raise it where
/// the node, not the manager's syscalls, is the bottleneck (nodes on their
/// own cores).
const LANES: usize = 1;
/// Seed of the lane hash: the ring places keys by unseeded xxh3, so the
/// same bits would put all of one node's keys in a few lanes.
const LANE_SEED: u64 = 0x6c61_6e65_7365_6564;

/// A node's answer to one op; a per-op error travels inside it
/// (`op_result::Result::Error`), and is sorted out by the caller.
pub(super) type Reply = Result<pb::op_result::Result, Status>;

struct Pending {
    op: pb::op::Op,
    placement: u64,
    reply: oneshot::Sender<Reply>,
    /// The op's share of the node's budget, returned when the node has
    /// answered or the stream is reset, not when the caller gives up (the op
    /// may be queued or on the wire still).
    charge: OwnedSemaphorePermit,
}

/// What an op awaiting its result holds.
struct InFlight {
    reply: oneshot::Sender<Reply>,
    _charge: OwnedSemaphorePermit,
}

/// The bytes of operations that may wait for one node, queued or sent and
/// unanswered: a byte-weighted semaphore shared by the node's connections.
#[derive(Clone)]
pub(super) struct Budget {
    permits: Arc<Semaphore>,
    limit: u32,
}

impl Budget {
    pub(super) fn new(bytes: u64) -> Self {
        // Permits are taken in u32 amounts; an op larger than the whole
        // budget takes all of it and travels alone.
        let limit = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
        Self {
            permits: Arc::new(Semaphore::new(limit as usize)),
            limit,
        }
    }

    /// Bytes charged right now.
    pub(super) fn used(&self) -> u64 {
        u64::from(self.limit).saturating_sub(self.permits.available_permits() as u64)
    }

    async fn charge(&self, op: &pb::op::Op) -> Result<OwnedSemaphorePermit, Status> {
        let cost = (op.encoded_len() as u64 + OP_OVERHEAD).min(u64::from(self.limit)) as u32;
        self.permits
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| Status::unavailable("batch budget closed"))
    }
}

/// Sender side of a node's batch streams; cheap to clone.
#[derive(Clone)]
pub(super) struct Batcher {
    tx: mpsc::Sender<Pending>,
    budget: Budget,
}

impl Batcher {
    /// Starts the stream task for `client`; it ends when every `Batcher`
    /// clone is dropped.
    /// Opening the streams is bounded by `timeout` (a node that accepts
    /// connections but never answers must not hold the queue).
    pub(super) fn start(client: Grpc, addr: String, timeout: Duration, budget: Budget) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(client, addr, rx, timeout));
        Self { tx, budget }
    }

    /// Queues one operation and waits for its result (the caller bounds the
    /// wait with its deadline).
    /// `placement` is the placement version the op was routed by.
    pub(super) async fn call(&self, op: pb::op::Op, placement: u64) -> Reply {
        let charge = self.budget.charge(&op).await?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending {
                op,
                placement,
                reply,
                charge,
            })
            .await
            .map_err(|_| Status::unavailable("batch stream stopped"))?;
        rx.await
            .unwrap_or_else(|_| Err(Status::unavailable("batch stream reset")))
    }
}

/// The key an operation is about; it picks the lane.
fn op_key(op: &pb::op::Op) -> &str {
    match op {
        pb::op::Op::Get(g) => &g.key,
        pb::op::Op::Set(s) => &s.key,
        pb::op::Op::Delete(d) => &d.key,
    }
}

fn lane_of(op: &pb::op::Op) -> usize {
    if LANES == 1 {
        return 0;
    }
    (xxhash_rust::xxh3::xxh3_64_with_seed(op_key(op).as_bytes(), LANE_SEED) % LANES as u64) as usize
}

type Responses = SelectAll<Pin<Box<dyn Stream<Item = Result<pb::BatchResponse, Status>> + Send>>>;

/// Opens the `LANES` streams of one node, each fed by its own channel; the
/// responses of all lanes come out of one stream, where a lane that ends
/// shows up as an error (so that the caller resets every lane).
async fn open(
    client: &Grpc,
    timeout: Duration,
) -> Result<(Vec<mpsc::UnboundedSender<pb::BatchRequest>>, Responses), Status> {
    let mut senders = Vec::with_capacity(LANES);
    let mut opening = Vec::with_capacity(LANES);
    for _ in 0..LANES {
        // Unbounded, because the number of batches in flight is bounded by
        // `MAX_IN_FLIGHT`, and a bounded queue here could deadlock with
        // HTTP/2 flow control while responses go unread.
        let (tx, rx) = mpsc::unbounded_channel::<pb::BatchRequest>();
        senders.push(tx);
        let mut c = client.clone();
        opening.push(async move { c.batch(UnboundedReceiverStream::new(rx)).await });
    }
    let opened = tokio::time::timeout(timeout, futures::future::join_all(opening))
        .await
        .map_err(|_| Status::deadline_exceeded("opening the batch streams timed out"))?;
    let mut responses = SelectAll::new();
    for r in opened {
        let ended = stream::once(async { Err(Status::unavailable("batch stream ended")) });
        let lane: Pin<Box<dyn Stream<Item = _> + Send>> = Box::pin(r?.into_inner().chain(ended));
        responses.push(lane);
    }
    Ok((senders, responses))
}

async fn run(client: Grpc, addr: String, mut rx: mpsc::Receiver<Pending>, timeout: Duration) {
    let mut backoff = RECONNECT_MIN;
    let mut next_id: u64 = 0;
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        // Open the streams only when there is work, so an idle or dead node
        // costs nothing.
        let (lanes, mut responses) = match open(&client, timeout).await {
            Ok(opened) => opened,
            Err(status) => {
                tracing::debug!(node = %addr, %status, "cannot open batch streams");
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
        let mut in_flight: HashMap<u64, InFlight> = HashMap::new();
        let mut batches: Vec<Vec<pb::Op>> = (0..LANES).map(|_| Vec::new()).collect();
        let mut next = Some(first);
        let reason = 'stream: loop {
            if let Some(first) = next.take() {
                // Let the requests that are ready on this worker (other
                // connections read in the same poll of the sockets) queue
                // before the round is taken, rather than send one write per
                // request: yield_now runs again only after the tasks
                // already scheduled. Skipped when a full round is queued.
                if rx.len() < MAX_OPS {
                    tokio::task::yield_now().await;
                }
                collect(first, &mut rx, &mut next_id, &mut in_flight, &mut batches);
                for (lane, ops) in lanes.iter().zip(batches.iter_mut()) {
                    if ops.is_empty() {
                        continue;
                    }
                    let ops = std::mem::take(ops);
                    if lane.send(pb::BatchRequest { ops }).is_err() {
                        break 'stream Status::unavailable("batch stream closed");
                    }
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
                m = responses.next() => match m {
                    Some(Ok(resp)) => {
                        for r in resp.results {
                            if let Some(f) = in_flight.remove(&r.id) {
                                let result = r.result.ok_or_else(|| Status::internal("empty result"));
                                let _ = f.reply.send(result);
                            }
                        }
                    }
                    Some(Err(status)) => break status,
                    None => break Status::unavailable("batch streams ended"),
                },
            }
        };
        tracing::debug!(node = %addr, %reason, pending = in_flight.len(), "batch streams reset");
        for (_, f) in in_flight.drain() {
            let _ = f.reply.send(Err(reason.clone()));
        }
    }
}

/// Takes one round from `first` and whatever else is queued right now into
/// the lanes' `batches`, leaving out requests whose callers have given up
/// (their deadline passed): sending them would only load a node that is
/// already slow.
fn collect(
    first: Pending,
    rx: &mut mpsc::Receiver<Pending>,
    next_id: &mut u64,
    in_flight: &mut HashMap<u64, InFlight>,
    batches: &mut [Vec<pb::Op>],
) {
    let mut n = 0;
    let mut bytes = 0;
    let mut p = first;
    loop {
        if !p.reply.is_closed() {
            *next_id += 1;
            n += 1;
            bytes += p.op.encoded_len();
            in_flight.insert(
                *next_id,
                InFlight {
                    reply: p.reply,
                    _charge: p.charge,
                },
            );
            batches[lane_of(&p.op)].push(pb::Op {
                id: *next_id,
                op: Some(p.op),
                placement: p.placement,
            });
        }
        if n >= MAX_OPS || bytes >= MAX_BYTES {
            break;
        }
        match rx.try_recv() {
            Ok(more) => p = more,
            Err(_) => break,
        }
    }
}
