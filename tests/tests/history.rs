//! A fault soak checked against its history: writers and readers race on
//! the same keys through two managers while nodes are stalled, killed and
//! restarted and a manager is restarted, one fault at a time. Every
//! operation's invocation and response times are recorded, and each read is
//! checked with a per-key register rule:
//!
//! - a read must not return a value whose acknowledged write finished before
//!   another acknowledged write or delete of the key that itself finished
//!   before the read began (an overwritten value), and
//! - a read must not return "absent" when an acknowledged write finished
//!   before it began and no delete could be ordered after that write.
//!
//! A write or delete that failed (5xx, connection refused) may have taken
//! effect at any time after its invocation: it never makes a read stale.
//!
//! `HISTORY_SECS` sets the load time between faults (default 2).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringcache_tests::{Proc, TestCluster};

const KEYS: usize = 40;
const CLIENTS: usize = 6;
const NODE_ARGS: &[&str] = &["--heartbeat-interval", "100ms"];
const MANAGER_ARGS: &[&str] = &["--heartbeat-timeout", "2s", "--node-timeout", "500ms"];

#[derive(Debug, Clone)]
enum Kind {
    Set(String),
    Delete,
    /// `Some(value)`, or `None` for a 404.
    Get(Option<String>),
}

#[derive(Debug, Clone)]
struct Op {
    kind: Kind,
    invoked: Duration,
    /// `None`: failed or unknown outcome (writes), or no answer (reads).
    done: Option<Duration>,
}

type History = Arc<Mutex<HashMap<usize, Vec<Op>>>>;

fn rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn client(
    c: usize,
    bases: Vec<String>,
    history: History,
    start: Instant,
    stop: Arc<tokio::sync::Notify>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
) -> u64 {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 * 7 + 1);
    let mut n = 0u64;
    // Bounded in count as well as by the stop signal.
    while n < 200_000 && !stopped.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let k = (rand(&mut rng) as usize) % KEYS;
        let base = &bases[(rand(&mut rng) as usize) % bases.len()];
        let url = format!("{base}/?key=h{k}");
        let roll = rand(&mut rng) % 10;
        let invoked = start.elapsed();
        let (kind, done) = if roll < 5 {
            let r = http.get(&url).send().await;
            let (kind, ok) = match r {
                Ok(r) if r.status() == 200 => {
                    let body = r.text().await.unwrap_or_default();
                    (Kind::Get(Some(body)), true)
                }
                Ok(r) if r.status() == 404 => (Kind::Get(None), true),
                _ => (Kind::Get(None), false),
            };
            (kind, ok)
        } else if roll < 8 {
            let value = format!("c{c}n{n}");
            let ok = matches!(
                http.post(format!("{url}&value={value}")).send().await,
                Ok(r) if r.status() == 200 || r.status() == 201
            );
            (Kind::Set(value), ok)
        } else {
            let ok = matches!(
                http.delete(&url).send().await,
                Ok(r) if r.status() == 200 || r.status() == 404
            );
            (Kind::Delete, ok)
        };
        let op = Op {
            kind,
            invoked,
            done: done.then(|| start.elapsed()),
        };
        history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(k)
            .or_default()
            .push(op);
        if !done {
            // A manager restarting or every replica of a key away: back off
            // a little instead of spinning on refusals.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = stop.notified() => {}
            }
        }
    }
    n
}

/// The register rule above, for one key, with reads allowed to miss
/// overwrites acknowledged less than `allowance` before they began (the
/// near cache's staleness bound; zero without it). Returns the violations.
fn check_key(key: usize, ops: &[Op], allowance: Duration) -> Vec<String> {
    let mut bad = Vec::new();
    let writes: Vec<&Op> = ops
        .iter()
        .filter(|o| !matches!(o.kind, Kind::Get(_)))
        .collect();
    for r in ops.iter().filter(|o| matches!(o.kind, Kind::Get(_))) {
        let (Kind::Get(got), Some(r_done)) = (&r.kind, r.done) else {
            continue;
        };
        match got {
            Some(v) => {
                let Some(w) = writes
                    .iter()
                    .find(|w| matches!(&w.kind, Kind::Set(x) if x == v))
                else {
                    bad.push(format!("h{key}: read {v:?} that nobody wrote"));
                    continue;
                };
                if w.invoked > r_done {
                    bad.push(format!("h{key}: read {v:?} before it was written"));
                    continue;
                }
                let Some(w_done) = w.done else { continue };
                if let Some(o) = writes.iter().find(|o| {
                    !std::ptr::eq(**o, *w)
                        && o.invoked > w_done
                        && o.done.is_some_and(|d| d + allowance < r.invoked)
                }) {
                    bad.push(format!(
                        "h{key}: read {v:?} (acknowledged at {w_done:?}) at {:?}, after {:?} was acknowledged at {:?}",
                        r.invoked, o.kind, o.done
                    ));
                }
            }
            None => {
                // The latest acknowledged write finished before the read...
                let Some(s) = writes
                    .iter()
                    .filter(|w| matches!(w.kind, Kind::Set(_)))
                    .filter(|w| w.done.is_some_and(|d| d < r.invoked))
                    .max_by_key(|w| w.done)
                else {
                    continue;
                };
                let s_inv = s.invoked;
                // ...and no delete could come after it and before the read's end.
                // (Only a delete explains a 404: a concurrent set cannot.)
                let explained = writes.iter().any(|d| {
                    matches!(d.kind, Kind::Delete)
                        && d.invoked < r_done
                        && d.done.is_none_or(|dd| dd >= s_inv)
                });
                if !explained {
                    bad.push(format!(
                        "h{key}: read absent at {:?} after {:?} was acknowledged at {:?}",
                        r.invoked, s.kind, s.done
                    ));
                }
            }
        }
    }
    bad
}

async fn all_up(apis: &[ringcache_tests::Api]) {
    for api in apis {
        api.await_all_up().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_soak_history_has_no_stale_read() {
    soak(&[], Duration::ZERO).await;
}

/// The same with near caches on both managers: a read may miss an
/// overwrite through the other manager for at most the near cache's
/// staleness bound (`--near-cache-max-lag`), never longer, faults included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_soak_with_near_caches_stays_within_their_staleness_bound() {
    let lag = Duration::from_millis(250);
    soak(
        &["--near-cache", "16MiB", "--near-cache-max-lag", "250ms"],
        lag,
    )
    .await;
}

async fn soak(extra: &[&str], allowance: Duration) {
    let manager_args: Vec<&str> = MANAGER_ARGS.iter().chain(extra).copied().collect();
    let phase = Duration::from_secs(
        std::env::var("HISTORY_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2),
    );
    let TestCluster {
        mut nodes,
        mut manager,
        api,
    } = TestCluster::start(NODE_ARGS, &manager_args).await;
    let refs: Vec<&Proc> = nodes.iter().collect();
    let manager2 = Proc::manager("manager2", &refs, &manager_args);
    let api2 = ringcache_tests::Api::new(&manager2);
    let apis = [api.clone(), api2.clone()];
    all_up(&apis).await;

    let history: History = Arc::new(Mutex::new(HashMap::new()));
    let start = Instant::now();
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bases = vec![manager.http_url(""), manager2.http_url("")];
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(client(
                c,
                bases.clone(),
                history.clone(),
                start,
                stop.clone(),
                stopped.clone(),
            ))
        })
        .collect();

    // One fault at a time, each followed by recovery under load.
    tokio::time::sleep(phase).await;
    nodes[0].signal(libc::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nodes[0].signal(libc::SIGCONT);
    all_up(&apis).await;
    tokio::time::sleep(phase).await;
    nodes[1].kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    nodes[1].restart("data node serving gRPC");
    all_up(&apis).await;
    tokio::time::sleep(phase).await;
    manager.restart("manager serving HTTP");
    all_up(&apis).await;
    tokio::time::sleep(phase).await;
    nodes[2].signal(libc::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nodes[2].signal(libc::SIGCONT);
    all_up(&apis).await;
    tokio::time::sleep(phase).await;

    stopped.store(true, std::sync::atomic::Ordering::Relaxed);
    stop.notify_waiters();
    let mut ops = 0;
    for t in tasks {
        ops += t.await.expect("client task");
    }
    // Final reads through both managers join the history.
    let http = reqwest::Client::new();
    let mut survived = 0;
    for k in 0..KEYS {
        for base in &bases {
            let invoked = start.elapsed();
            let r = http
                .get(format!("{base}/?key=h{k}"))
                .send()
                .await
                .expect("final read");
            let got = match r.status().as_u16() {
                200 => Some(r.text().await.unwrap_or_default()),
                404 => None,
                s => panic!("final read of h{k}: {s}"),
            };
            if got.is_some() && base == &bases[0] {
                survived += 1;
            }
            history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(k)
                .or_default()
                .push(Op {
                    kind: Kind::Get(got),
                    invoked,
                    done: Some(start.elapsed()),
                });
        }
    }
    let history = history.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut violations = Vec::new();
    let (mut reads, mut acked_writes, mut failed) = (0, 0, 0);
    for (k, ops) in &history {
        for o in ops {
            match (&o.kind, o.done) {
                (_, None) => failed += 1,
                (Kind::Get(_), _) => reads += 1,
                _ => acked_writes += 1,
            }
        }
        violations.extend(check_key(*k, ops, allowance));
    }
    eprintln!(
        "history: {ops} operations in {:.1} s: {reads} reads, {acked_writes} acknowledged writes, \
         {failed} failed; {survived} of {KEYS} keys hold a value at the end; {} violations",
        start.elapsed().as_secs_f64(),
        violations.len()
    );
    for v in violations.iter().take(20) {
        eprintln!("VIOLATION {v}");
    }
    assert!(reads > 500 && acked_writes > 500, "too little load");
    assert!(violations.is_empty(), "{} violations", violations.len());
    drop(manager2);
}

#[test]
fn the_checker_finds_stale_reads_and_unexplained_misses() {
    let t = Duration::from_millis;
    let set = |v: &str, a, b| Op {
        kind: Kind::Set(v.into()),
        invoked: t(a),
        done: Some(t(b)),
    };
    let get = |v: Option<&str>, a, b| Op {
        kind: Kind::Get(v.map(str::to_string)),
        invoked: t(a),
        done: Some(t(b)),
    };
    let del = |a, b| Op {
        kind: Kind::Delete,
        invoked: t(a),
        done: Some(t(b)),
    };
    // v1 overwritten by v2 before the read began: stale.
    assert_eq!(
        check_key(
            0,
            &[set("v1", 0, 1), set("v2", 2, 3), get(Some("v1"), 4, 5)],
            Duration::ZERO
        )
        .len(),
        1
    );
    // Concurrent overwrite: either value is fine.
    assert!(check_key(
        0,
        &[set("v1", 0, 1), set("v2", 2, 6), get(Some("v1"), 4, 5)],
        Duration::ZERO
    )
    .is_empty());
    // Within the allowance an overwrite may be missed, not after it.
    let near = Duration::from_millis(2);
    assert!(check_key(
        0,
        &[set("v1", 0, 1), set("v2", 2, 3), get(Some("v1"), 4, 5)],
        near
    )
    .is_empty());
    assert_eq!(
        check_key(
            0,
            &[set("v1", 0, 1), set("v2", 2, 3), get(Some("v1"), 6, 7)],
            near
        )
        .len(),
        1
    );
    // Absent after an acknowledged write with no delete: a lost or stale read.
    assert_eq!(
        check_key(0, &[set("v1", 0, 1), get(None, 4, 5)], Duration::ZERO).len(),
        1
    );
    // A delete explains it, even one that failed (it may have taken effect).
    let mut failed_del = del(2, 3);
    failed_del.done = None;
    assert!(check_key(
        0,
        &[set("v1", 0, 1), failed_del, get(None, 4, 5)],
        Duration::ZERO
    )
    .is_empty());
    // A deleted value read back after the delete was acknowledged: stale.
    assert_eq!(
        check_key(
            0,
            &[set("v1", 0, 1), del(2, 3), get(Some("v1"), 4, 5)],
            Duration::ZERO
        )
        .len(),
        1
    );
    // A failed write's value may appear any time after its invocation.
    let mut failed_set = set("v3", 2, 3);
    failed_set.done = None;
    assert!(check_key(
        0,
        &[set("v1", 0, 1), failed_set, get(Some("v3"), 8, 9)],
        Duration::ZERO
    )
    .is_empty());
}
