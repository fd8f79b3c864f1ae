//! The near cache across two managers: a write through one is seen through
//! the other once the node's invalidation event has arrived.

use std::time::{Duration, Instant};

use ringcache_tests::{wait_until, Api, Proc};

async fn near_hits(api: &Api) -> u64 {
    api.cluster().await["near_cache"]["hits"]
        .as_u64()
        .expect("near cache is on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_manager_invalidates_the_others_near_cache() {
    let nodes: Vec<Proc> = (1..=3)
        .map(|i| Proc::datanode(&format!("node{i}"), &[]))
        .collect();
    let refs: Vec<&Proc> = nodes.iter().collect();
    let a = Proc::manager("manager-a", &refs, &["--near-cache", "16MiB"]);
    let b = Proc::manager("manager-b", &refs, &["--near-cache", "16MiB"]);
    let (api_a, api_b) = (Api::new(&a), Api::new(&b));
    api_a.await_all_up().await;
    api_b.await_all_up().await;

    let keys = 50;
    for i in 0..keys {
        assert_eq!(api_a.set(&format!("n{i}"), "v1").await.status, 201);
    }
    // Two reads through B: the first fills its near cache, the second hits it.
    for _ in 0..2 {
        for i in 0..keys {
            assert_eq!(api_b.get(&format!("n{i}")).await.text(), "v1");
        }
    }
    let hits_before = near_hits(&api_b).await;
    // Most, not all: a value is not served while its node's stream is not
    // known to be within --near-cache-max-lag (a probe answered late on a
    // loaded machine makes a few reads go to the node).
    assert!(
        hits_before >= keys * 8 / 10,
        "B's near cache served {hits_before} of {keys} reads"
    );

    let mut windows = Vec::new();
    for i in 0..keys {
        let key = format!("n{i}");
        let t = Instant::now();
        assert_eq!(api_a.set(&key, "v2").await.status, 200);
        wait_until(&format!("{key} = v2 through B"), || async {
            (api_b.get(&key).await.text() == "v2").then_some(())
        })
        .await;
        windows.push(t.elapsed());
    }
    // Deletes invalidate too.
    assert_eq!(api_a.delete("n0").await.status, 200);
    wait_until("n0 deleted through B", || async {
        (api_b.get("n0").await.status == 404).then_some(())
    })
    .await;

    windows.sort();
    let p50 = windows[windows.len() / 2];
    let max = windows[windows.len() - 1];
    eprintln!("near-cache convergence (write through A acked -> read through B sees it): p50 {p50:?}, max {max:?}");
    assert!(max < Duration::from_secs(2), "slowest convergence {max:?}");
    // A reads its own writes at once.
    assert_eq!(api_a.set("own", "x").await.status, 201);
    assert_eq!(api_a.get("own").await.text(), "x");
    assert_eq!(api_a.set("own", "y").await.status, 200);
    assert_eq!(api_a.get("own").await.text(), "y");
}
