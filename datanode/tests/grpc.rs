//! The data node's gRPC service, served on a loopback port bound to :0.

use std::time::Duration;

use ringcache_datanode::{serve, NodeOptions};
use ringcache_proto::pb::{self, data_node_client::DataNodeClient};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Code;

struct Node {
    client: DataNodeClient<Channel>,
    channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ringcache_datanode::ServeError>>,
}

async fn start(opts: NodeOptions) -> Node {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, opts, async {
        let _ = rx.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Node {
        client: DataNodeClient::new(channel.clone()),
        channel,
        stop: Some(tx),
        task,
    }
}

fn small() -> NodeOptions {
    NodeOptions {
        id: Some("test-node".into()),
        max_value_bytes: 1024,
        heartbeat_interval: Duration::from_millis(100),
        ..NodeOptions::default()
    }
}

/// The node's Stats, read directly.
async fn stats(n: &mut Node) -> pb::StatsResponse {
    n.client
        .stats(pb::StatsRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Sends `ops` as one request on a new `Batch` stream; returns its answer.
async fn one_batch(n: &mut Node, ops: Vec<pb::Op>) -> pb::BatchResponse {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::BatchRequest { ops }).await.unwrap();
    let mut out = n
        .client
        .batch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    out.message().await.unwrap().unwrap()
}

fn set(key: &str, value: &[u8], ttl_ms: u64) -> pb::SetRequest {
    pb::SetRequest {
        key: key.into(),
        value: value.to_vec().into(),
        ttl_ms,
        version: 0,
        condition: None,
    }
}

#[tokio::test]
async fn set_get_delete_stats() {
    let mut n = start(small()).await;
    let c = &mut n.client;
    let r = c.set(set("k", b"hello", 0)).await.unwrap().into_inner();
    assert!(!r.replaced);
    let r = c.set(set("k", b"hello2", 0)).await.unwrap().into_inner();
    assert!(r.replaced);
    let g = c
        .get(pb::GetRequest {
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(g.found);
    assert_eq!(&g.value[..], b"hello2");
    assert_eq!(g.ttl_remaining_ms, 0);
    let d = c
        .delete(pb::DeleteRequest {
            key: "k".into(),
            version: 0,
            condition: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.deleted);
    let g = c
        .get(pb::GetRequest {
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!g.found);
    let s = c.stats(pb::StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(s.node_id, "test-node");
    assert!(!s.instance_id.is_empty());
    assert_eq!((s.items, s.hits, s.misses), (0, 1, 1));
    assert_eq!(s.memory_limit, NodeOptions::default().max_memory);
}

#[tokio::test]
async fn ttl_is_reported_and_honoured() {
    let mut n = start(small()).await;
    let c = &mut n.client;
    c.set(set("t", b"v", 60_000)).await.unwrap();
    let g = c
        .get(pb::GetRequest {
            key: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(g.ttl_remaining_ms > 50_000 && g.ttl_remaining_ms <= 60_000);
    c.set(set("gone", b"v", 1)).await.unwrap();
    // Poll: the 1 ms TTL has passed by the time a later read arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let g = c
            .get(pb::GetRequest {
                key: "gone".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if !g.found {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "entry never expired"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn bad_requests_get_clear_codes_and_change_nothing() {
    let mut n = start(small()).await;
    let c = &mut n.client;
    let e = c
        .get(pb::GetRequest {
            key: "".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c.set(set(&"x".repeat(251), b"v", 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c.set(set("big", &[0u8; 1025], 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    let s = c.stats(pb::StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(s.items, 0);
}

#[tokio::test]
async fn subscribe_starts_with_status_then_numbers_every_change() {
    let mut n = start(small()).await;
    let c = &mut n.client;
    c.set(set("before", b"v", 0)).await.unwrap();
    let mut events = c
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = events.message().await.unwrap().unwrap();
    let start = first.seq;
    // The set (and perhaps a heartbeat already) was published before.
    assert!(start >= 1, "start {start}");
    assert!(matches!(first.kind, Some(pb::event::Kind::Status(_))));
    assert_eq!(first.node_id, "test-node");

    c.set(set("a", b"1", 0)).await.unwrap();
    c.delete(pb::DeleteRequest {
        key: "a".into(),
        version: 0,
        condition: None,
    })
    .await
    .unwrap();
    c.flush(pb::FlushRequest {}).await.unwrap();

    let mut seen = Vec::new();
    let mut last = start;
    // Heartbeats (every 100 ms) interleave; collect the invalidations.
    while seen.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .expect("event within deadline")
            .unwrap()
            .unwrap();
        assert_eq!(ev.seq, last + 1, "sequence has no gaps");
        last = ev.seq;
        // Status events name the instance; invalidations stay lean.
        match &ev.kind {
            Some(pb::event::Kind::Status(_)) => assert_eq!(ev.instance_id, first.instance_id),
            _ => assert!(ev.instance_id.is_empty()),
        }
        if let Some(pb::event::Kind::Invalidation(i)) = ev.kind {
            seen.push((i.key, pb::Cause::try_from(i.cause).unwrap()));
        }
    }
    assert_eq!(
        seen,
        vec![
            ("a".to_string(), pb::Cause::Set),
            ("a".to_string(), pb::Cause::Delete),
            (String::new(), pb::Cause::Flush),
        ]
    );
    // And a heartbeat arrives on its own.
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .expect("heartbeat within deadline")
            .unwrap()
            .unwrap();
        if let Some(pb::event::Kind::Status(s)) = ev.kind {
            assert_eq!(s.stats.unwrap().items, 0);
            break;
        }
    }
}

#[tokio::test]
async fn a_subscriber_that_skips_invalidations_gets_status_events_only() {
    let mut n = start(small()).await;
    let mut events = n
        .client
        .subscribe(pb::SubscribeRequest {
            skip_invalidations: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = events.message().await.unwrap().unwrap();
    n.client.set(set("a", b"1", 0)).await.unwrap();
    n.client.set(set("b", b"2", 0)).await.unwrap();
    // Two heartbeats (100 ms apart) after the writes: nothing else between.
    let mut statuses = 0;
    let mut last = first.seq;
    while statuses < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .expect("event within deadline")
            .unwrap()
            .unwrap();
        assert!(
            matches!(ev.kind, Some(pb::event::Kind::Status(_))),
            "{ev:?}"
        );
        assert!(ev.seq > last);
        last = ev.seq;
        statuses += 1;
    }
    // The writes were numbered all the same: the heartbeats skip over them.
    assert!(last >= first.seq + 4, "{} -> {last}", first.seq);
}

#[tokio::test]
async fn a_lagging_subscriber_gets_a_lagged_event_numbered_by_the_rule() {
    // A buffer of 8 events, and 1000 changes in one batch (run without a
    // break on this single-threaded runtime): the subscriber must lag.
    let mut n = start(NodeOptions {
        event_buffer: 8,
        ..small()
    })
    .await;
    let mut events = n
        .client
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = events.message().await.unwrap().unwrap();
    let ops = (0..1000)
        .map(|i| pb::Op {
            id: i,
            op: Some(pb::op::Op::Set(set(&format!("k{i}"), b"v", 0))),
            placement: 0,
        })
        .collect();
    one_batch(&mut n, ops).await;
    // The rule (proto `Event.seq`): consecutive, except that a Lagged event
    // carries the number of the last dropped one (previous + missed), and
    // the event after it is consecutive to that.
    let mut last = first.seq;
    let mut lagged = None;
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .expect("event within deadline")
            .unwrap()
            .unwrap();
        match &ev.kind {
            Some(pb::event::Kind::Lagged(l)) => {
                assert!(l.missed > 0);
                assert_eq!(
                    ev.seq,
                    last + l.missed,
                    "a Lagged event names the last dropped one"
                );
                lagged = Some(ev.seq);
            }
            _ => assert_eq!(ev.seq, last + 1, "after {last}"),
        }
        last = ev.seq;
        if lagged.is_some_and(|l| last > l) {
            break;
        }
    }
}

#[tokio::test]
async fn any_value_within_the_limit_fits_a_node_whose_memory_can_hold_it() {
    // 32 MiB over 64 shards would be 512 KiB a shard: a 900 KiB value
    // could never be stored. The node uses fewer shards instead.
    let mut n = start(NodeOptions {
        id: Some("small-memory".into()),
        max_memory: 32 << 20,
        max_value_bytes: 1 << 20,
        ..NodeOptions::default()
    })
    .await;
    let value = vec![7u8; 900 << 10];
    n.client.set(set("big", &value, 0)).await.unwrap();
    let got = n
        .client
        .get(pb::GetRequest {
            key: "big".into(),
            consistent: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.found && got.value.len() == value.len());
    // A node whose whole memory is below the largest entry runs one shard:
    // what its memory can hold fits, the rest is refused with the
    // documented code.
    let mut tiny = start(NodeOptions {
        id: Some("tiny".into()),
        max_memory: 512 << 10,
        max_value_bytes: 1 << 20,
        ..NodeOptions::default()
    })
    .await;
    tiny.client
        .set(set("fits", &vec![1u8; 400 << 10], 0))
        .await
        .unwrap();
    let e = tiny
        .client
        .set(set("too-big", &value, 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn batch_stream_answers_each_op_by_id() {
    let mut n = start(small()).await;
    let op = |id, op| pb::Op {
        id,
        op: Some(op),
        placement: 0,
    };
    let resp = one_batch(
        &mut n,
        vec![
            op(7, pb::op::Op::Set(set("b", b"x", 0))),
            op(
                8,
                pb::op::Op::Get(pb::GetRequest {
                    key: "b".into(),
                    ..Default::default()
                }),
            ),
            op(
                9,
                pb::op::Op::Get(pb::GetRequest {
                    key: "".into(),
                    ..Default::default()
                }),
            ),
            op(
                10,
                pb::op::Op::Delete(pb::DeleteRequest {
                    key: "b".into(),
                    version: 0,
                    condition: None,
                }),
            ),
        ],
    )
    .await;
    let ids: Vec<u64> = resp.results.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![7, 8, 9, 10]);
    use pb::op_result::Result as R;
    assert!(matches!(&resp.results[0].result, Some(R::Set(s)) if !s.replaced));
    assert!(matches!(&resp.results[1].result, Some(R::Get(g)) if g.found && &g.value[..] == b"x"));
    assert!(matches!(&resp.results[2].result, Some(R::Error(e))
            if e.code == Code::InvalidArgument as i32
                && e.reason == pb::ErrorReason::InvalidRequest as i32));
    assert!(matches!(&resp.results[3].result, Some(R::Delete(d)) if d.deleted));
}

#[tokio::test]
async fn ops_routed_by_an_older_placement_are_refused_with_the_newer_version() {
    let mut n = start(small()).await;
    let raised = n
        .client
        .set_placement(pb::SetPlacementRequest { version: 7 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(raised.version, 7);
    // Versions never go down.
    let lower = n
        .client
        .set_placement(pb::SetPlacementRequest { version: 3 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lower.version, 7);
    let op = |id, placement| pb::Op {
        id,
        op: Some(pb::op::Op::Set(set("k", b"v", 0))),
        placement,
    };
    let resp = one_batch(&mut n, vec![op(1, 6), op(2, 7), op(3, 0), op(4, 8)]).await;
    use pb::op_result::Result as R;
    match &resp.results[0].result {
        Some(R::Error(e)) => {
            assert_eq!(e.reason, pb::ErrorReason::StalePlacement as i32);
            assert_eq!(e.code, Code::FailedPrecondition as i32);
            assert_eq!(e.placement, 7);
        }
        other => panic!("op routed by placement 6 was not refused: {other:?}"),
    }
    for r in &resp.results[1..] {
        assert!(matches!(&r.result, Some(R::Set(_))), "{r:?}");
    }
    let stats = stats(&mut n).await;
    assert_eq!(stats.placement, 7);
}

#[tokio::test]
async fn shutdown_ends_subscriptions_and_returns() {
    let mut n = start(small()).await;
    let mut events = n
        .client
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    events.message().await.unwrap().unwrap();
    let _ = n.stop.take().unwrap().send(());
    let done = tokio::time::timeout(Duration::from_secs(5), n.task)
        .await
        .expect("server stops within deadline despite an open subscription");
    assert!(done.unwrap().is_ok());
    // The stream ends rather than hanging.
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.message().await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    })
    .await
    .expect("stream ends");
    let _ = end;
}

#[tokio::test]
async fn with_a_token_calls_need_it_but_health_stays_open() {
    let mut n = start(NodeOptions {
        auth_token: Some("s3cret".into()),
        ..small()
    })
    .await;
    let e = n.client.stats(pb::StatsRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(pb::StatsRequest {});
    req.metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    assert_eq!(
        n.client.stats(req).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut req = tonic::Request::new(pb::StatsRequest {});
    req.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    assert!(n.client.stats(req).await.is_ok());
    // Health checks need no token.
    let channel = n.channel.clone();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "ringcache.v1.DataNode".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn a_value_far_over_the_limit_gets_resource_exhausted_not_the_decode_error() {
    // Default limits (1 MiB values), a 16 MiB value: past tonic's decode
    // limit, which refuses it before the node's own check.
    let mut n = start(NodeOptions::default()).await;
    let e = n
        .client
        .set(set("huge", &vec![0u8; 16 << 20], 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message()
            .contains("larger than the value limit of 1048576"),
        "{e:?}"
    );
    // Between the value limit and the decode limit the node itself refuses.
    let e = n
        .client
        .set(set("big", &vec![0u8; 2 << 20], 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // Both with our wording, and nothing was stored.
    let s = stats(&mut n).await;
    assert_eq!(s.items, 0);
}

#[tokio::test]
async fn health_watch_of_an_unknown_service_streams_service_unknown() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let n = start(small()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(n.channel.clone());
    let mut stream = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect("the call is accepted, not ended with NOT_FOUND")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.status, ServingStatus::ServiceUnknown as i32);
    // The call stays open (the spec: SERVICE_UNKNOWN does not end it).
    let next = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(next.is_err(), "stream ended or sent more: {next:?}");
    // Known services still stream their status.
    let mut known = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "ringcache.v1.DataNode".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let s = known.message().await.unwrap().unwrap();
    assert_eq!(s.status, ServingStatus::Serving as i32);
}

/// A conditional write is decided only by a node that answers consistent
/// reads (docs/design/conditional.md): a fresh node is syncing and refuses
/// it, typed, with nothing written; once synced it decides, and a failed
/// condition says what the key holds.
#[tokio::test]
async fn conditional_writes_are_decided_only_while_readable() {
    let mut n = start(small()).await;
    let if_absent = || {
        Some(pb::Condition {
            check: Some(pb::condition::Check::IfAbsent(true)),
        })
    };
    let create = |value: &[u8]| pb::SetRequest {
        condition: if_absent(),
        ..set("k", value, 0)
    };
    let e = n.client.set(create(b"1")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(stats(&mut n).await.items, 0);
    // In a batch: the typed reason.
    let r = one_batch(
        &mut n,
        vec![pb::Op {
            id: 1,
            op: Some(pb::op::Op::Set(create(b"1"))),
            placement: 0,
        }],
    )
    .await;
    let Some(pb::op_result::Result::Error(err)) = &r.results[0].result else {
        panic!("{r:?}");
    };
    assert_eq!(err.reason, pb::ErrorReason::NotReadable as i32);

    let generation = stats(&mut n).await.sync.unwrap_or_default().generation;
    n.client
        .end_sync(pb::EndSyncRequest { generation })
        .await
        .unwrap();
    let r = n.client.set(create(b"1")).await.unwrap().into_inner();
    assert!(!r.replaced);
    let e = n.client.set(create(b"2")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains(&r.version.to_string()),
        "{}",
        e.message()
    );
    let r2 = one_batch(
        &mut n,
        vec![pb::Op {
            id: 2,
            op: Some(pb::op::Op::Delete(pb::DeleteRequest {
                key: "k".into(),
                version: 0,
                condition: Some(pb::Condition {
                    check: Some(pb::condition::Check::IfVersion(r.version + 1)),
                }),
            })),
            placement: 0,
        }],
    )
    .await;
    let Some(pb::op_result::Result::Error(err)) = &r2.results[0].result else {
        panic!("{r2:?}");
    };
    assert_eq!(
        (err.reason, err.current_version),
        (pb::ErrorReason::PreconditionFailed as i32, r.version)
    );
}

/// Seen in the container test: a manager with two handles for one node
/// sent the node a dirty mark about itself, which the node then reported in
/// every heartbeat, and the manager repaired it every second (and, once a
/// peer was gone for good, held it back for ever). A mark about itself is
/// refused; marks about others are kept.
#[tokio::test]
async fn a_node_refuses_a_dirty_mark_about_itself() {
    let mut n = start(small()).await;
    let e = n
        .client
        .mark(pb::MarkRequest {
            node_id: "test-node".into(),
            since: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    n.client
        .mark(pb::MarkRequest {
            node_id: "other".into(),
            since: 5,
        })
        .await
        .unwrap();
    let marks = stats(&mut n).await.marks;
    assert_eq!(
        marks.iter().map(|m| m.node_id.as_str()).collect::<Vec<_>>(),
        ["other"]
    );
}
