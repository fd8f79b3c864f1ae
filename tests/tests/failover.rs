//! Failure handling with real processes on loopback: one manager and three
//! data nodes, each its own process, killed, stopped and restarted.

use std::time::{Duration, Instant};

use ringcache_tests::{Api, Held, NodeConn, Proc, TestCluster};

const NODE_ARGS: &[&str] = &["--heartbeat-interval", "100ms"];
// Generous for loaded CI machines: a node that is merely slow must not be
// taken for dead.
const MANAGER_ARGS: &[&str] = &["--heartbeat-timeout", "2s", "--node-timeout", "500ms"];
/// A request may try each of its two replicas once.
const REQUEST_BOUND: Duration = Duration::from_millis(2 * 500 + 1500);

type Cluster = TestCluster;

async fn cluster() -> Cluster {
    TestCluster::start(NODE_ARGS, MANAGER_ARGS).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_no_key_and_is_reported_down() {
    let mut c = cluster().await;
    for i in 0..100 {
        assert_eq!(
            c.api.set(&format!("k{i}"), &format!("v{i}")).await.status,
            201
        );
    }
    let victim = c.nodes[0].grpc_uri();
    c.nodes[0].kill();
    // Every key written before is still readable, with the right value.
    for i in 0..100 {
        let r = c.api.get(&format!("k{i}")).await;
        assert_eq!((r.status, r.text()), (200, format!("v{i}")), "k{i}");
    }
    // Writes still succeed, and read back.
    for i in 100..150 {
        assert_eq!(c.api.set(&format!("k{i}"), "new").await.status, 201);
        assert_eq!(c.api.get(&format!("k{i}")).await.text(), "new");
    }
    c.api.await_state(&victim, "down").await;
    let _ = &c.manager;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_never_holds_requests_past_their_deadline() {
    let c = cluster().await;
    for i in 0..60 {
        c.api.set(&format!("k{i}"), "v").await;
    }
    let victim = c.nodes[1].grpc_uri();
    c.nodes[1].signal(libc::SIGSTOP);
    let mut slowest = Duration::ZERO;
    for i in 0..60 {
        let key = format!("k{i}");
        let t = Instant::now();
        let r = c.api.get(&key).await;
        slowest = slowest.max(t.elapsed());
        let t = Instant::now();
        let w = c.api.set(&key, "w").await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(r.status, 200, "{key}: {}", r.text());
        assert_eq!(w.status, 200, "{key}: {}", w.text());
    }
    assert!(slowest < REQUEST_BOUND, "slowest request took {slowest:?}");
    c.api.await_state(&victim, "down").await;
    c.nodes[1].signal(libc::SIGCONT);
    c.api.await_state(&victim, "up").await;
    for i in 0..60 {
        assert_eq!(c.api.get(&format!("k{i}")).await.text(), "w");
    }
}

/// The classic cache-proxy failure: a node misses writes and deletes while
/// it is away, comes back with its old data, and serves it.
async fn no_stale_read_after(
    c: &mut Cluster,
    victim: usize,
    away: impl FnOnce(&mut Proc),
    back: impl FnOnce(&mut Proc),
) {
    let keys = 120;
    for i in 0..keys {
        assert_eq!(c.api.set(&format!("k{i}"), "v1").await.status, 201);
    }
    let addr = c.nodes[victim].grpc_uri();
    away(&mut c.nodes[victim]);
    c.api.await_state(&addr, "down").await;
    for i in 0..keys {
        let key = format!("k{i}");
        if i % 4 == 0 {
            assert_eq!(c.api.delete(&key).await.status, 200, "{key}");
        } else {
            assert_eq!(c.api.set(&key, "v2").await.status, 200, "{key}");
        }
    }
    back(&mut c.nodes[victim]);
    c.api.await_state(&addr, "up").await;
    for round in 0..3 {
        for i in 0..keys {
            let key = format!("k{i}");
            let r = c.api.get(&key).await;
            if i % 4 == 0 {
                assert_eq!(
                    r.status,
                    404,
                    "round {round}: deleted {key} came back as {:?}",
                    r.text()
                );
            } else {
                assert_eq!(
                    (r.status, r.text()),
                    (200, "v2".into()),
                    "round {round}: {key}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_read_after_a_node_is_stopped_and_continued() {
    let mut c = cluster().await;
    no_stale_read_after(
        &mut c,
        2,
        |n| n.signal(libc::SIGSTOP),
        |n| n.signal(libc::SIGCONT),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_read_after_a_node_restarts() {
    let mut c = cluster().await;
    // Stopped (so it is seen down holding v1), then killed and started again
    // on the same port: the new instance rejoins and every read is current.
    // (A new instance starts empty and is warmed up from its peers; the
    // stop/continue test above is the one a missing repair fails.)
    no_stale_read_after(
        &mut c,
        0,
        |n| n.signal(libc::SIGSTOP),
        |n| n.restart("data node serving gRPC"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_agree_on_placement_whatever_the_address_spelling() {
    let c = cluster().await;
    // The second manager names the nodes `localhost:PORT` (the first uses
    // 127.0.0.1) and lists them in another order: the ring is built from
    // the ids the nodes report, so both place every key alike.
    let list: Vec<String> = c.nodes.iter().rev().map(|n| n.grpc_uri_by_name()).collect();
    let other = Proc::manager_at("manager2", &list, MANAGER_ARGS);
    let api2 = Api::new(&other);
    api2.await_all_up().await;
    for i in 0..100 {
        assert_eq!(
            c.api.set(&format!("p{i}"), &format!("x{i}")).await.status,
            201
        );
    }
    let mut conns = Vec::new();
    for n in &c.nodes {
        conns.push(NodeConn::connect(n).await);
    }
    // Placement itself: each key is on exactly two nodes...
    for i in 0..100 {
        let key = format!("p{i}");
        let mut holders = 0;
        for conn in conns.iter_mut() {
            if matches!(conn.held(&key).await, Held::Value { .. }) {
                holders += 1;
            }
        }
        assert_eq!(holders, 2, "{key}");
    }
    // ...and the second manager's deletes reach exactly those two: a
    // manager placing keys differently would leave a copy behind.
    for i in 0..100 {
        assert_eq!(api2.delete(&format!("p{i}")).await.status, 200);
    }
    for i in 0..100 {
        let key = format!("p{i}");
        for conn in conns.iter_mut() {
            let held = conn.held(&key).await;
            assert!(!matches!(held, Held::Value { .. }), "{key}: {held:?}");
        }
    }
    let cl = api2.cluster().await;
    let shares: Vec<f64> = cl["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["ring_share"].as_f64().unwrap())
        .collect();
    assert!(
        shares.iter().all(|s| (0.25..0.42).contains(s)),
        "{shares:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_both_binaries_cleanly() {
    let mut c = cluster().await;
    assert_eq!(c.api.set("k", "v").await.status, 201);
    let status = c.manager.terminate();
    assert!(status.success(), "manager exit: {status}");
    for n in &mut c.nodes {
        let status = n.terminate();
        assert!(status.success(), "{} exit: {status}", n.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_replica_gone_requests_get_503_with_retry_after_in_time() {
    let mut c = cluster().await;
    assert_eq!(c.api.set("k", "v").await.status, 201);
    // Stopped, not killed: the worst case, where calls hang until their
    // deadline instead of failing fast.
    for n in &c.nodes {
        n.signal(libc::SIGSTOP);
    }
    for (i, op) in ["get", "set", "delete"].iter().enumerate() {
        let t = Instant::now();
        let r = match i {
            0 => c.api.get("k").await,
            1 => c.api.set("k", "w").await,
            _ => c.api.delete("k").await,
        };
        let took = t.elapsed();
        assert_eq!(r.status, 503, "{op}: {r:?}");
        assert_eq!(r.retry_after.as_deref(), Some("1"), "{op}");
        assert!(took < REQUEST_BOUND, "{op} took {took:?}");
    }
    for n in &mut c.nodes {
        n.signal(libc::SIGCONT);
    }
    c.api.await_all_up().await;
    // Nothing after "v" was acknowledged; the unacknowledged set and delete
    // may or may not have taken effect (queued in a stopped node's socket).
    let r = c.api.get("k").await;
    assert!(
        r.status == 404 || r.text() == "v" || r.text() == "w",
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_one_replica_cannot_hold_is_refused_before_anything_is_written() {
    // Mismatched limits: node "small" refuses values over 1 KiB.
    let small = Proc::datanode("small", &["--max-value-bytes", "1KiB"]);
    let big = Proc::datanode("big", &[]);
    let manager = Proc::manager("manager", &[&small, &big], MANAGER_ARGS);
    let api = Api::new(&manager);
    api.await_all_up().await;
    // With two nodes and two replicas, every key lives on both.
    assert_eq!(api.set("k", "old").await.status, 201);
    let large = "x".repeat(2000);
    let r = api.set("k", &large).await;
    assert_eq!(r.status, 413, "{r:?}");
    // Nothing was written and nobody was emptied: both replicas keep "old".
    for node in [&small, &big] {
        let held = NodeConn::connect(node).await.held("k").await;
        assert!(
            matches!(&held, Held::Value { value, .. } if value == "old"),
            "{}: {held:?}",
            node.name
        );
    }
    assert_eq!(api.get("k").await.text(), "old");
    let states = api.node_states().await;
    assert!(states.iter().all(|(_, s)| s == "up"), "{states:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_manager_never_reads_what_a_node_missed_before_it_started() {
    let mut c = cluster().await;
    for i in 0..60 {
        assert_eq!(c.api.set(&format!("m{i}"), "v1").await.status, 201);
    }
    // Node 0 misses the overwrites; the first manager knows, then dies
    // before it could repair it. The dirty marks it left on the other nodes
    // tell the next manager.
    let addr = c.nodes[0].grpc_uri();
    c.nodes[0].signal(libc::SIGSTOP);
    c.api.await_state(&addr, "down").await;
    for i in 0..60 {
        assert_eq!(c.api.set(&format!("m{i}"), "v2").await.status, 200);
    }
    c.manager.kill();
    c.nodes[0].signal(libc::SIGCONT);
    let refs: Vec<&Proc> = c.nodes.iter().collect();
    let fresh = Proc::manager("manager2", &refs, MANAGER_ARGS);
    let api = Api::new(&fresh);
    api.await_all_up().await;
    for i in 0..60 {
        let r = api.get(&format!("m{i}")).await;
        assert_eq!((r.status, r.text()), (200, "v2".into()), "m{i}");
    }
    // Node 0 itself was repaired, not emptied: it holds v2 of its keys.
    let conn = NodeConn::connect(&c.nodes[0]).await;
    let mut held = 0;
    for i in 0..60 {
        match conn.held(&format!("m{i}")).await {
            Held::Value { value, .. } => {
                assert_eq!(value, "v2", "m{i}");
                held += 1;
            }
            Held::Tombstone { .. } => panic!("m{i} was never deleted"),
            Held::Nothing => {}
        }
    }
    assert!(held > 20, "node 0 holds {held} of 60 keys");
}
