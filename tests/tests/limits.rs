//! Limits that hold under pressure, with real processes: overload becomes
//! fast 503s, the memory bound holds under a fill of three times the limit,
//! and SIGTERM lets in-flight requests finish.

use std::time::{Duration, Instant};

use ringcache_proto::pb::{self, data_node_client::DataNodeClient};
use ringcache_tests::{wait_until, Api, Proc};

/// Resident set size of a process, from /proc.
fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS line");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bound_holds_under_a_fill_of_three_times_the_limit() {
    let limit: u64 = 32 << 20;
    let node = Proc::datanode("fill", &["--max-memory", "32MiB"]);
    let mut c = DataNodeClient::connect(node.grpc_uri()).await.unwrap();
    let baseline = rss_bytes(node.pid());
    let value = vec![b'x'; 1000];
    let total = 3 * limit;
    let per = 1000 + 16 + ringcache_common::limits::ENTRY_OVERHEAD;
    let n = total / per;
    // Batches of sets on one Batch stream, checking the bound after each.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut results = c
        .batch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let value = bytes::Bytes::from(value);
    let mut i = 0;
    while i < n {
        let ops = (i..(i + 500).min(n))
            .map(|j| pb::Op {
                id: j,
                placement: 0,
                op: Some(pb::op::Op::Set(pb::SetRequest {
                    key: format!("fill-{j:010}"),
                    value: value.clone(),
                    ttl_ms: 0,
                    version: 0,
                    condition: None,
                })),
            })
            .collect::<Vec<_>>();
        i += ops.len() as u64;
        tx.send(pb::BatchRequest { ops }).await.unwrap();
        let done = results.message().await.unwrap().unwrap();
        assert!(done
            .results
            .iter()
            .all(|r| matches!(r.result, Some(pb::op_result::Result::Set(_)))));
        let s = c.stats(pb::StatsRequest {}).await.unwrap().into_inner();
        assert!(
            s.bytes_used <= limit,
            "accounted {} > limit {limit}",
            s.bytes_used
        );
    }
    let s = c.stats(pb::StatsRequest {}).await.unwrap().into_inner();
    assert!(s.bytes_used <= limit);
    assert!(
        s.evictions >= n - s.items,
        "evictions {} items {} written {n}",
        s.evictions,
        s.items
    );
    assert!(
        s.bytes_used > limit * 9 / 10,
        "the cache should be nearly full: {}",
        s.bytes_used
    );
    let rss = rss_bytes(node.pid());
    eprintln!(
        "fill: wrote {} MiB into a {} MiB node: accounted {} MiB, RSS {} MiB (baseline {} MiB), evictions {}",
        total >> 20,
        limit >> 20,
        s.bytes_used >> 20,
        rss >> 20,
        baseline >> 20,
        s.evictions
    );
    // Stated overhead: RSS stays within 1.5x the limit plus the idle process.
    assert!(rss <= baseline + limit * 3 / 2, "RSS {rss} over bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_at_once_not_queued() {
    let nodes: Vec<Proc> = (1..=2)
        .map(|i| Proc::datanode(&format!("n{i}"), &[]))
        .collect();
    let refs: Vec<&Proc> = nodes.iter().collect();
    // Nodes stay "up" while stopped (long heartbeat timeout), so requests
    // hold their slot for the node deadline.
    let manager = Proc::manager(
        "manager",
        &refs,
        &[
            "--max-concurrent-requests",
            "2",
            "--heartbeat-timeout",
            "60s",
            "--node-timeout",
            "2s",
        ],
    );
    let api = Api::new(&manager);
    api.await_all_up().await;
    for n in &nodes {
        n.signal(libc::SIGSTOP);
    }
    let slow: Vec<_> = (0..2)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move { api.get(&format!("slow{i}")).await })
        })
        .collect();
    // Let the two slow requests take their slots.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let r = api.get("third").await;
    let took = t.elapsed();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("overloaded"), "{}", r.text());
    // Well under the 2 s the admitted requests wait: refused, not queued.
    assert!(took < Duration::from_secs(1), "refusal took {took:?}");
    for n in &nodes {
        n.signal(libc::SIGCONT);
    }
    for s in slow {
        let r = s.await.unwrap();
        assert!(r.status == 404 || r.status == 503, "{r:?}");
    }
    // Once the load is gone, requests are served again.
    assert_eq!(api.set("after", "v").await.status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    let nodes: Vec<Proc> = (1..=3)
        .map(|i| Proc::datanode(&format!("n{i}"), &[]))
        .collect();
    let refs: Vec<&Proc> = nodes.iter().collect();
    let mut manager = Proc::manager(
        "manager",
        &refs,
        &["--heartbeat-timeout", "60s", "--node-timeout", "1s"],
    );
    let api = Api::new(&manager);
    api.await_all_up().await;
    for i in 0..20 {
        assert_eq!(api.set(&format!("k{i}"), "v").await.status, 201);
    }
    // Reads whose first replica is the stopped node take about a second
    // (its deadline) before falling over to the next replica.
    nodes[0].signal(libc::SIGSTOP);
    let reads: Vec<_> = (0..20)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move { api.get(&format!("k{i}")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let status = manager.terminate();
    assert!(status.success(), "manager exit: {status}");
    let mut ok = 0;
    for r in reads {
        let r = r.await.unwrap();
        assert_eq!((r.status, r.text()), (200, "v".to_string()));
        ok += 1;
    }
    assert_eq!(ok, 20);
    // It waited for them (some needed the 1 s fallover) but not for long.
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        t.elapsed()
    );
    nodes[0].signal(libc::SIGCONT);
}

/// Bytes the manager holds for its only node, as `/cluster` shows them.
async fn queued_bytes(api: &Api) -> u64 {
    api.cluster().await["nodes"][0]["queued_bytes"]
        .as_u64()
        .expect("queued_bytes in /cluster")
}

/// What the manager holds for a stalled node is bounded by
/// `--node-queue-bytes`: writes beyond it wait within their deadline (and
/// then fail) instead of piling up in the manager's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_node_is_sent_no_more_than_its_byte_budget() {
    const BUDGET: u64 = 1 << 20;
    const VALUE: usize = 300 << 10;
    let node = Proc::datanode("n1", &[]);
    // The node stays "up" while stopped (long heartbeat timeout and node
    // deadline), so every write is routed to it and waits.
    let manager = Proc::manager(
        "manager",
        &[&node],
        &[
            "--node-queue-bytes",
            "1MiB",
            "--heartbeat-timeout",
            "60s",
            "--node-timeout",
            "4s",
        ],
    );
    let api = Api::new(&manager);
    api.await_all_up().await;
    node.signal(libc::SIGSTOP);
    let writes: Vec<_> = (0..8)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move { api.set_body(&format!("big{i}"), vec![b'x'; VALUE]).await })
        })
        .collect();
    // Three 300 KiB writes fill the 1 MiB budget; all eight would be 2.4 MiB.
    wait_until("the manager to hold a budget's worth of writes", || {
        let api = api.clone();
        async move { (queued_bytes(&api).await >= 3 * VALUE as u64).then_some(()) }
    })
    .await;
    for _ in 0..10 {
        let held = queued_bytes(&api).await;
        assert!(held <= BUDGET, "{held} bytes held for the node");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in writes {
        let r = w.await.unwrap();
        assert!(
            r.status >= 500,
            "a write to a stopped node succeeded: {r:?}"
        );
    }
    node.signal(libc::SIGCONT);
    wait_until("the manager to hold nothing for the node", || {
        let api = api.clone();
        async move { (queued_bytes(&api).await == 0).then_some(()) }
    })
    .await;
    wait_until("writes to succeed again", || {
        let api = api.clone();
        async move { (api.set("after", "v").await.status == 201).then_some(()) }
    })
    .await;
}
