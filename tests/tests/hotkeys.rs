//! Hot keys (issue 24): each data node's estimate of the keys taking most
//! of its requests, merged by the manager in `/cluster/hotkeys`, `/cluster`
//! and `/metrics`. Real processes on loopback.

use ringcache_tests::{wait_until, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_taking_most_requests_is_found_and_shown() {
    // Every request counted, over short windows: the test needs few.
    let c = TestCluster::start(
        &[
            "--heartbeat-interval",
            "100ms",
            "--hot-key-sample",
            "1",
            "--hot-key-window",
            "2s",
        ],
        &[],
    )
    .await;
    let api = &c.api;
    for i in 0..50 {
        assert_eq!(api.set(&format!("cold{i}"), "v").await.status, 201);
    }
    assert_eq!(api.set("hot", "v").await.status, 201);
    // 90% of the reads go to one key.
    for i in 0..1_000 {
        let key = if i % 10 == 0 {
            format!("cold{}", i % 50)
        } else {
            "hot".to_string()
        };
        assert_eq!(api.get(&key).await.status, 200);
    }
    let hot = wait_until("the hot key at the top of /cluster/hotkeys", || async {
        let r = api.get_path("/cluster/hotkeys").await;
        let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
        let first = v["keys"].as_array()?.first()?.clone();
        (first["key"] == "hot").then_some(first)
    })
    .await;
    // Reads go to the key's first replica: most of that node's requests.
    let share = hot["share"].as_f64().unwrap_or(0.0);
    assert!(share > 0.5, "{hot}");
    assert!(hot["rate"].as_u64().unwrap_or(0) > 0, "{hot}");
    let node = hot["node"].as_str().unwrap_or("").to_string();
    assert!(!node.is_empty(), "{hot}");
    // The dashboard's data and the metrics show it too.
    let cluster = api.cluster().await;
    assert_eq!(cluster["hot_keys"][0]["key"], "hot", "{cluster}");
    let metrics = api.metrics().await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("ringcache_node_hot_key_requests_per_second{")
                && l.contains("key=\"hot\"")
                && l.contains("rank=\"1\"")
        })
        .unwrap_or_else(|| panic!("no hot-key series for \"hot\" in:\n{metrics}"));
    assert!(!line.ends_with(" 0"), "{line}");
    // Bounded: at most --hot-keys (5) series per node.
    let series = metrics
        .lines()
        .filter(|l| l.starts_with("ringcache_node_hot_key_requests_per_second{"))
        .count();
    assert!(series <= 5 * c.nodes.len(), "{series} series");
    // The node whose requests it dominated logs it, once its window ends.
    wait_until("the node to log the hot key", || async {
        c.nodes
            .iter()
            .any(|n| {
                n.log_text()
                    .lines()
                    .any(|l| l.contains("hot key") && l.contains("key=hot"))
            })
            .then_some(())
    })
    .await;
}
