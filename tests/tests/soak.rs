//! Soak: concurrent writers, deleters and readers for a bounded time against
//! one manager and three data node processes, checking that no read ever
//! returns a value older than an acknowledged write or delete, and that every
//! key ends as its last acknowledged operation left it.
//!
//! `SOAK_SECS` sets the duration of each run (default 20).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringcache_tests::{Api, Proc, TestCluster};

const KEYS: usize = 400;
const WRITERS: usize = 4;
const READERS: usize = 4;
const NODE_ARGS: &[&str] = &["--heartbeat-interval", "100ms"];
const MANAGER_ARGS: &[&str] = &["--heartbeat-timeout", "2s", "--node-timeout", "1s"];

/// Per key: the version of its last acknowledged operation, shifted left
/// one bit, with the low bit set when that operation was a delete.
struct Acked(Vec<AtomicU64>);

impl Acked {
    fn get(&self, k: usize) -> (u64, bool) {
        let v = self.0[k].load(Ordering::SeqCst);
        (v >> 1, v & 1 == 1)
    }
    fn set(&self, k: usize, ver: u64, deleted: bool) {
        self.0[k].store(ver << 1 | u64::from(deleted), Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    server_errors: AtomicU64,
    stale: AtomicU64,
}

fn key(k: usize) -> String {
    format!("soak-{k}")
}

fn value(ver: u64) -> String {
    format!("{ver}-{}", "p".repeat(90))
}

fn version_of(body: &str) -> Option<u64> {
    body.split('-').next()?.parse().ok()
}

/// Tiny deterministic generator, so a run needs no extra crate.
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn writer(w: usize, api: Api, acked: Arc<Acked>, counts: Arc<Counts>, until: Instant) {
    let mine: Vec<usize> = (0..KEYS).filter(|k| k % WRITERS == w).collect();
    let mut versions = vec![0u64; KEYS];
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1);
    while Instant::now() < until {
        let k = mine[(next_rand(&mut rng) as usize) % mine.len()];
        versions[k] += 1;
        let ver = versions[k];
        let delete = next_rand(&mut rng) % 10 < 3;
        // An operation that failed may or may not have been applied; repeat
        // it (both are idempotent) until acknowledged, so the key's state is
        // known. Bounded: the deadline below.
        let retry_until = Instant::now() + Duration::from_secs(15);
        loop {
            let r = if delete {
                api.delete(&key(k)).await
            } else {
                api.set(&key(k), &value(ver)).await
            };
            counts.requests.fetch_add(1, Ordering::Relaxed);
            if r.status >= 500 {
                counts.server_errors.fetch_add(1, Ordering::Relaxed);
                assert!(
                    Instant::now() < retry_until,
                    "{} never succeeded: {r:?}",
                    key(k)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let ok = if delete {
                r.status == 200 || r.status == 404
            } else {
                r.status == 200 || r.status == 201
            };
            assert!(ok, "unexpected answer for {}: {r:?}", key(k));
            acked.set(k, ver, delete);
            break;
        }
    }
}

async fn reader(r: usize, api: Api, acked: Arc<Acked>, counts: Arc<Counts>, until: Instant) {
    let mut rng = 0xD1B5_4A32_D192_ED03u64 ^ (r as u64 + 11);
    while Instant::now() < until {
        let k = (next_rand(&mut rng) as usize) % KEYS;
        let (before, _) = acked.get(k);
        let resp = api.get(&key(k)).await;
        counts.requests.fetch_add(1, Ordering::Relaxed);
        match resp.status {
            200 => {
                let ver = version_of(&resp.text()).expect("a soak value");
                if ver < before {
                    counts.stale.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "STALE: {} read version {ver}, acknowledged {before}",
                        key(k)
                    );
                }
            }
            404 => {}
            s if s >= 500 => {
                counts.server_errors.fetch_add(1, Ordering::Relaxed);
            }
            s => panic!("unexpected status {s} for {}", key(k)),
        }
    }
}

struct Outcome {
    requests: u64,
    server_errors: u64,
    stale: u64,
    secs: f64,
}

async fn soak(mut disrupt: impl FnMut(&mut [Proc], f64) + Send) -> Outcome {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let TestCluster {
        mut nodes,
        manager: _manager,
        api,
    } = TestCluster::start(NODE_ARGS, MANAGER_ARGS).await;

    let acked = Arc::new(Acked((0..KEYS).map(|_| AtomicU64::new(0)).collect()));
    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        tasks.push(tokio::spawn(writer(
            w,
            api.clone(),
            acked.clone(),
            counts.clone(),
            until,
        )));
    }
    for r in 0..READERS {
        tasks.push(tokio::spawn(reader(
            r,
            api.clone(),
            acked.clone(),
            counts.clone(),
            until,
        )));
    }
    // Let the disruption step see the run's progress every 100 ms.
    while Instant::now() < until {
        disrupt(&mut nodes, start.elapsed().as_secs_f64() / secs as f64);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in tasks {
        t.await.expect("load task");
    }
    api.await_all_up().await;
    // Every key ends as its last acknowledged operation left it.
    for k in 0..KEYS {
        let (ver, deleted) = acked.get(k);
        let r = api.get(&key(k)).await;
        if ver == 0 || deleted {
            assert_eq!(
                r.status,
                404,
                "{}: expected absent (version {ver}), got {r:?}",
                key(k)
            );
        } else {
            assert_eq!(
                (r.status, r.text()),
                (200, value(ver)),
                "{}: expected version {ver}",
                key(k)
            );
        }
    }
    Outcome {
        requests: counts.requests.load(Ordering::Relaxed),
        server_errors: counts.server_errors.load(Ordering::Relaxed),
        stale: counts.stale.load(Ordering::Relaxed),
        secs: start.elapsed().as_secs_f64(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_loses_nothing_and_serves_nothing_stale() {
    let o = soak(|_, _| {}).await;
    eprintln!(
        "soak: {} requests in {:.1} s ({:.0}/s), {} 5xx, {} stale reads",
        o.requests,
        o.secs,
        o.requests as f64 / o.secs,
        o.server_errors,
        o.stale
    );
    assert!(o.requests > 1000, "too little load: {}", o.requests);
    assert_eq!(o.server_errors, 0);
    assert_eq!(o.stale, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_a_node_killed_and_restarted_midway() {
    let mut killed = false;
    let mut restarted = false;
    let o = soak(|nodes, progress| {
        if !killed && progress > 0.3 {
            nodes[1].kill();
            killed = true;
        } else if killed && !restarted && progress > 0.6 {
            nodes[1].restart("data node serving gRPC");
            restarted = true;
        }
    })
    .await;
    assert!(killed && restarted);
    eprintln!(
        "soak with kill+restart: {} requests in {:.1} s, {} failed (5xx, during detection), {} stale reads",
        o.requests, o.secs, o.server_errors, o.stale
    );
    assert_eq!(o.stale, 0);
}
