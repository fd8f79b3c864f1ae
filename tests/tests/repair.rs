//! The data survives the routine life of a cluster (docs/design/
//! consistency.md): managers start and restart without emptying nodes, a
//! node that restarts is warmed up from its peers, a node that stalls is
//! repaired rather than flushed, and replicas converge whatever the order
//! of concurrent writes. Real processes on loopback; nodes are read
//! directly over gRPC where the test is about what one node holds.

use ringcache_tests::{
    wait_until, wait_until_for, Api, Held, NodeConn, Proc, Relay, TestCluster, LONG_DEADLINE,
};

const NODE_ARGS: &[&str] = &["--heartbeat-interval", "100ms"];
const MANAGER_ARGS: &[&str] = &["--heartbeat-timeout", "2s", "--node-timeout", "500ms"];

async fn cluster() -> TestCluster {
    TestCluster::start(NODE_ARGS, MANAGER_ARGS).await
}

async fn write_keys(api: &Api, prefix: &str, n: usize, value: &str) {
    for i in 0..n {
        let r = api.set(&format!("{prefix}{i}"), value).await;
        assert!(r.status == 201 || r.status == 200, "{prefix}{i}: {r:?}");
    }
}

async fn assert_all_read(api: &Api, prefix: &str, n: usize, value: &str) {
    for i in 0..n {
        let r = api.get(&format!("{prefix}{i}")).await;
        assert_eq!(
            (r.status, r.text()),
            (200, value.to_string()),
            "{prefix}{i}"
        );
    }
}

fn flushes_in(p: &Proc) -> usize {
    p.log_text().matches("flushed").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managers_start_and_restart_without_emptying_nodes() {
    let mut c = cluster().await;
    write_keys(&c.api, "k", 300, "v").await;
    // Scale out: a second manager meets the nodes for the first time.
    let refs: Vec<&Proc> = c.nodes.iter().collect();
    let second = Proc::manager("manager2", &refs, MANAGER_ARGS);
    let api2 = Api::new(&second);
    api2.await_all_up().await;
    assert_all_read(&api2, "k", 300, "v").await;
    assert_all_read(&c.api, "k", 300, "v").await;
    // Restart the first one.
    c.manager.restart("manager serving HTTP");
    c.api.await_all_up().await;
    assert_all_read(&c.api, "k", 300, "v").await;
    assert_all_read(&api2, "k", 300, "v").await;
    for n in &c.nodes {
        assert_eq!(flushes_in(n), 0, "{} was flushed", n.name);
        let items = NodeConn::connect(n).await.stats().await.items;
        assert!(items > 150, "{} holds {items} keys", n.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_every_node_loses_no_key() {
    let mut c = cluster().await;
    write_keys(&c.api, "r", 300, "v1").await;
    for i in 0..c.nodes.len() {
        let addr = c.nodes[i].grpc_uri();
        c.nodes[i].restart("data node serving gRPC");
        // Writes go on while the node is away and while it warms up.
        write_keys(&c.api, &format!("during{i}-"), 20, "w").await;
        c.api.await_state(&addr, "up").await;
        // It holds its share again, copied from its peers.
        let items = NodeConn::connect(&c.nodes[i]).await.stats().await.items;
        assert!(items > 150, "node {i} holds {items} keys after its warm-up");
    }
    assert_all_read(&c.api, "r", 300, "v1").await;
    for i in 0..c.nodes.len() {
        assert_all_read(&c.api, &format!("during{i}-"), 20, "w").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_node_is_repaired_with_the_latest_values() {
    let c = cluster().await;
    let keys = 200;
    write_keys(&c.api, "s", keys, "v1").await;
    let victim = &c.nodes[1];
    let addr = victim.grpc_uri();
    let conn = NodeConn::connect(victim).await;
    let mut mine = Vec::new();
    for i in 0..keys {
        if matches!(conn.held(&format!("s{i}")).await, Held::Value { .. }) {
            mine.push(i);
        }
    }
    assert!(mine.len() > 80, "victim holds {} keys", mine.len());
    victim.signal(libc::SIGSTOP);
    c.api.await_state(&addr, "down").await;
    for i in 0..keys {
        let key = format!("s{i}");
        let r = match i % 4 {
            0 => c.api.delete(&key).await,
            1 | 2 => c.api.set(&key, "v2").await,
            _ => continue,
        };
        assert_eq!(r.status, 200, "{key}: {r:?}");
    }
    victim.signal(libc::SIGCONT);
    c.api.await_state(&addr, "up").await;
    // From the victim alone: every key it replicates has its latest state.
    // The untouched quarter proves it was not emptied.
    let conn = NodeConn::connect(victim).await;
    for &i in &mine {
        let key = format!("s{i}");
        let held = conn.held(&key).await;
        match i % 4 {
            0 => assert!(matches!(held, Held::Tombstone { .. }), "{key}: {held:?}"),
            1 | 2 => assert!(
                matches!(&held, Held::Value { value, .. } if value == "v2"),
                "{key}: {held:?}"
            ),
            _ => assert!(
                matches!(&held, Held::Value { value, .. } if value == "v1"),
                "{key}: {held:?}"
            ),
        }
    }
    assert_eq!(flushes_in(victim), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_two_managers_converge_on_every_replica() {
    let c = cluster().await;
    let refs: Vec<&Proc> = c.nodes.iter().collect();
    let second = Proc::manager("manager2", &refs, MANAGER_ARGS);
    let api2 = Api::new(&second);
    api2.await_all_up().await;
    let keys = 30;
    let mut tasks = Vec::new();
    for (w, api) in [c.api.clone(), api2.clone(), c.api.clone(), api2.clone()]
        .into_iter()
        .enumerate()
    {
        tasks.push(tokio::spawn(async move {
            for round in 0..15 {
                for k in 0..keys {
                    let key = format!("c{k}");
                    if (round + w + k) % 7 == 0 {
                        api.delete(&key).await;
                    } else {
                        api.set(&key, &format!("w{w}r{round}")).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    let mut conns = Vec::new();
    for n in &c.nodes {
        conns.push(NodeConn::connect(n).await);
    }
    for k in 0..keys {
        let key = format!("c{k}");
        let mut seen = Vec::new();
        for conn in conns.iter_mut() {
            match conn.held(&key).await {
                Held::Nothing => {}
                held => seen.push(held),
            }
        }
        assert_eq!(seen.len(), 2, "{key}: {seen:?}");
        assert_eq!(seen[0], seen[1], "{key}: replicas differ");
        // And the managers agree with the replicas.
        let (a, b) = (c.api.get(&key).await, api2.get(&key).await);
        assert_eq!((a.status, a.text()), (b.status, b.text()), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_shows_a_restarted_node_syncing_then_up() {
    let mut c = cluster().await;
    write_keys(&c.api, "x", 200, "v").await;
    let addr = c.nodes[0].grpc_uri();
    c.nodes[0].restart("data node serving gRPC");
    // Either state is fine to observe first: a warm-up of 200 keys is quick.
    wait_until("node 0 syncing or up after restart", || async {
        c.api
            .node_states()
            .await
            .iter()
            .any(|(a, s)| a == &addr && (s == "syncing" || s == "up"))
            .then_some(())
    })
    .await;
    c.api.await_state(&addr, "up").await;
    let cl = c.api.cluster().await;
    let node = cl["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["address"] == addr.as_str()))
        .cloned()
        .expect("node 0 in /cluster");
    assert_eq!(node["id"], "node1");
    assert!(node["items"].as_u64().unwrap_or(0) > 100, "{node}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_delayed_past_a_newer_one_does_not_undo_it() {
    // Two nodes, so both are replicas of every key. Manager 1 reaches node
    // b through a relay that can hold its requests; manager 2 reaches both
    // directly.
    let a = Proc::datanode("a", NODE_ARGS);
    let b = Proc::datanode("b", NODE_ARGS);
    let relay = Relay::start(b.addr).await;
    let m1 = Proc::manager_at("m1", &[a.grpc_uri(), relay.uri()], MANAGER_ARGS);
    let m2 = Proc::manager("m2", &[&a, &b], MANAGER_ARGS);
    let (api1, api2) = (Api::new(&m1), Api::new(&m2));
    api1.await_all_up().await;
    api2.await_all_up().await;
    let (ca, cb) = (NodeConn::connect(&a).await, NodeConn::connect(&b).await);
    for i in 0..5 {
        let key = format!("d{i}");
        assert_eq!(api1.set(&key, "old").await.status, 201);
        // Manager 1's write reaches a at once; its copy for b is held.
        relay.hold();
        let slow = {
            let (api1, key) = (api1.clone(), key.clone());
            tokio::spawn(async move { api1.set(&key, "first").await })
        };
        wait_until("the first write on node a", || async {
            matches!(ca.held(&key).await, Held::Value { value, .. } if value == "first")
                .then_some(())
        })
        .await;
        // A newer write through manager 2 lands on both...
        assert_eq!(api2.set(&key, "second").await.status, 200);
        // ...and then b receives the older one.
        relay.release();
        assert_eq!(slow.await.expect("slow write").status, 200);
        // The replicas agree (and the older write, acknowledged last, is
        // ordered last: it was sent again above the newer version).
        let (ha, hb) = (ca.held(&key).await, cb.held(&key).await);
        assert_eq!(ha, hb, "{key}: replicas differ");
        assert_eq!(api1.get(&key).await.text(), api2.get(&key).await.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// A replica that evicted a key answers reads of it as the first readable
/// replica: a miss, final, as the status of the next write says (created).
/// Falling over to the other replica would let readers see there a write
/// that the first replica then superseded (see route/read.rs); the old
/// read path fell over and wrote the value back, and fails this test.
async fn a_key_evicted_from_the_replica_read_first_is_a_miss_until_written() {
    let c = cluster().await;
    let conns: Vec<NodeConn> = {
        let mut v = Vec::new();
        for n in &c.nodes {
            v.push(NodeConn::connect(n).await);
        }
        v
    };
    let keys = 20;
    write_keys(&c.api, "rr", keys, "v").await;
    // Drop each key from one of its two holders, without a tombstone (as an
    // eviction would): for about half the keys that is the replica the
    // manager reads first.
    let mut pruned = Vec::new();
    for i in 0..keys {
        let key = format!("rr{i}");
        let mut holders = Vec::new();
        for (n, conn) in conns.iter().enumerate() {
            if matches!(conn.held(&key).await, Held::Value { .. }) {
                holders.push(n);
            }
        }
        assert_eq!(holders.len(), 2, "{key}");
        let victim = holders[i % 2];
        let h = ringcache_common::hash::key_hash(&key);
        let mut raw = ringcache_proto::pb::data_node_client::DataNodeClient::connect(
            c.nodes[victim].grpc_uri(),
        )
        .await
        .expect("connect");
        raw.prune(ringcache_proto::pb::PruneRequest {
            ranges: vec![ringcache_proto::pb::HashRange {
                start: h.wrapping_sub(1),
                end: h,
            }],
            placement: 0,
        })
        .await
        .expect("prune");
        assert_eq!(conns[victim].held(&key).await, Held::Nothing);
        pruned.push((key, victim));
    }
    let mut misses = 0;
    for (key, victim) in &pruned {
        let read = c.api.get(key).await;
        let missed = match (read.status, read.text().as_str()) {
            (404, _) => true,
            (200, "v") => false,
            other => panic!("{key}: {other:?}"),
        };
        misses += usize::from(missed);
        // The next write's status agrees with what the read said.
        let w = c.api.set(key, "w").await;
        assert_eq!(w.status, if missed { 201 } else { 200 }, "{key}: {w:?}");
        assert_eq!(c.api.get(key).await.text(), "w", "{key}");
        assert!(
            matches!(conns[*victim].held(key).await, Held::Value { .. }),
            "{key}: the write reached the replica that evicted it"
        );
    }
    // Both cases ran: the replica read first evicted some keys, the other
    // replica the rest.
    assert!(
        misses > 0 && misses < keys,
        "{misses} of {keys} reads missed"
    );
}

/// Runs `datanode --ready-check URL` (what a container health check or a
/// Kubernetes readiness probe runs) and returns whether it exited 0.
fn ready(node: &Proc) -> bool {
    std::process::Command::new(ringcache_tests::bin_path("datanode"))
        .args(["--ready-check", &node.grpc_uri()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What an orchestrator's rolling update does (a StatefulSet's
/// `rollout restart`, a script waiting on compose health checks): restart
/// each node in turn and wait only for its readiness check, never for the
/// manager's view. With a throttled copy the warm-up takes seconds; a
/// readiness that meant "process started" would restart the next node
/// while the previous one still lacked its share, and lose the keys whose
/// two replicas were those two nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_waiting_only_for_readiness_loses_no_key() {
    let node_args = &["--heartbeat-interval", "100ms", "--sync-rate", "256KiB"];
    let mut c = TestCluster::start(node_args, MANAGER_ARGS).await;
    let keys = 4000;
    let value = "x".repeat(100);
    write_keys(&c.api, "roll", keys, &value).await;
    for n in &c.nodes {
        assert!(ready(n), "{} is not ready before the restarts", n.name);
    }
    for i in 0..c.nodes.len() {
        c.nodes[i].restart("data node serving gRPC");
        // A fresh process holds nothing: it must not be ready at once.
        assert!(
            !ready(&c.nodes[i]),
            "{} reported ready before its warm-up",
            c.nodes[i].name
        );
        let node = &c.nodes[i];
        wait_until_for("readiness after restart", LONG_DEADLINE, || async {
            ready(node).then_some(())
        })
        .await;
    }
    let mut lost = 0;
    for k in 0..keys {
        let r = c.api.get(&format!("roll{k}")).await;
        if (r.status, r.text()) != (200, value.clone()) {
            lost += 1;
        }
    }
    assert_eq!(lost, 0, "{lost} of {keys} keys lost by the rolling restart");
}

/// The warnings `/cluster` shows.
async fn warnings(api: &Api) -> Vec<String> {
    api.cluster().await["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Several managers without etcd have no read leases: each says so, in
/// `/cluster` and in its log, once it finds the other on a node; and stops
/// when the other is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managers_without_etcd_warn_about_each_other() {
    let c = cluster().await;
    assert!(warnings(&c.api).await.is_empty(), "alone: nothing to say");
    let refs: Vec<&Proc> = c.nodes.iter().collect();
    let mut second = Proc::manager("manager2", &refs, MANAGER_ARGS);
    let api2 = Api::new(&second);
    api2.await_all_up().await;
    for (api, p) in [(&c.api, &c.manager), (&api2, &second)] {
        let w = wait_until("a warning about the other manager", || async {
            let w = warnings(api).await;
            (!w.is_empty()).then_some(w)
        })
        .await;
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("--etcd"), "{w:?}");
        assert!(
            p.log_text().contains("without --etcd"),
            "{} did not log it",
            p.name
        );
    }
    second.kill();
    wait_until("the warning to go once the other is gone", || async {
        warnings(&c.api).await.is_empty().then_some(())
    })
    .await;
}
