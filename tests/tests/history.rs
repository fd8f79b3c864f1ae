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
//!
//! A second soak overlaps faults, two at a time, from a seeded random
//! schedule (docs/design/consistency.md, "Failure model"): a node stalled
//! while another restarts, a partition between a manager and a node while
//! that manager is killed, a manager paused past the node timeout, two nodes
//! restarted back to back without waiting. It runs with two managers
//! sharing an etcd (leases), checks the same register rule except that a
//! key may be lost (two replicas of it restarted at once: a miss, never an
//! older value), and after quiescence that every node holding a key holds
//! the same version of it and both managers read the same. `SOAK_SEED`
//! replays a schedule (the seed is printed), `SOAK_STEPS` sets its length
//! (default 4); `bench/soak.sh` runs a longer one.
#![cfg_attr(no_etcd, allow(unused))]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringcache_tests::{CutCluster, Held, NodeConn, Proc, TestCluster};

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

/// What a read may return besides the latest value.
#[derive(Debug, Clone, Copy)]
struct Allow {
    /// Overwrites acknowledged less than this before the read began may be
    /// missed (the near cache's staleness bound; zero without it).
    lag: Duration,
    /// A key may be lost (a miss): two of its replicas restarted at once.
    loss: bool,
}

impl Allow {
    const NOTHING: Allow = Allow {
        lag: Duration::ZERO,
        loss: false,
    };
}

/// The register rule above, for one key. Returns the violations.
fn check_key(key: usize, ops: &[Op], allow: Allow) -> Vec<String> {
    let allowance = allow.lag;
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
            None if allow.loss => {}
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

/// The clients of a soak, writing and reading through `bases`.
struct Load {
    history: History,
    start: Instant,
    stop: Arc<tokio::sync::Notify>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
    bases: Vec<String>,
}

impl Load {
    fn start(bases: Vec<String>) -> Load {
        let history: History = Arc::new(Mutex::new(HashMap::new()));
        let start = Instant::now();
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..CLIENTS)
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
        Load {
            history,
            start,
            stop,
            stopped,
            tasks,
            bases,
        }
    }

    /// Stops the clients, reads every key through every manager (joining
    /// the history), checks the history with `allow`, prints a summary and
    /// returns the violations.
    async fn finish(self, allow: Allow, label: &str) -> Vec<String> {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.stop.notify_waiters();
        let mut ops = 0;
        for t in self.tasks {
            ops += t.await.expect("client task");
        }
        let http = reqwest::Client::new();
        let mut survived = 0;
        for k in 0..KEYS {
            for base in &self.bases {
                let invoked = self.start.elapsed();
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
                if got.is_some() && base == &self.bases[0] {
                    survived += 1;
                }
                self.history
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(k)
                    .or_default()
                    .push(Op {
                        kind: Kind::Get(got),
                        invoked,
                        done: Some(self.start.elapsed()),
                    });
            }
        }
        let history = self
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
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
            violations.extend(check_key(*k, ops, allow));
        }
        eprintln!(
            "{label}: {ops} operations in {:.1} s: {reads} reads, {acked_writes} acknowledged writes, \
             {failed} failed; {survived} of {KEYS} keys hold a value at the end; {} violations",
            self.start.elapsed().as_secs_f64(),
            violations.len()
        );
        for v in violations.iter().take(20) {
            eprintln!("VIOLATION {v}");
        }
        assert!(reads > 500 && acked_writes > 500, "too little load");
        violations
    }
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
    let load = Load::start(vec![manager.http_url(""), manager2.http_url("")]);

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

    let violations = load
        .finish(
            Allow {
                lag: allowance,
                loss: false,
            },
            "history",
        )
        .await;
    assert!(violations.is_empty(), "{} violations", violations.len());
    drop(manager2);
}

/// Two faults at once, of the kinds the failure model covers.
#[derive(Debug, Clone, Copy)]
enum Compound {
    /// Node `a` stalled (SIGSTOP) past the timeouts while node `b` is
    /// killed and restarted; then `a` resumes.
    StallAndRestart { a: usize, b: usize },
    /// Manager 1 cut off from node `a` (packets dropped) under load, then
    /// killed while cut off; the cut heals and manager 1 starts again.
    PartitionThenCrash { a: usize },
    /// Manager `m` paused (SIGSTOP) longer than the node timeout, with
    /// writes in flight, while node `a` is stalled too.
    ManagerAndNodePaused { m: usize, a: usize },
    /// Node `a` restarted, then node `b` right after its process is up,
    /// without waiting for `a`'s readiness (keys on both may be lost:
    /// misses, never older values).
    HastyRollingRestart { a: usize, b: usize },
}

impl Compound {
    fn pick(rng: &mut u64) -> Compound {
        let a = (rand(rng) % 3) as usize;
        let b = (a + 1 + (rand(rng) % 2) as usize) % 3;
        match rand(rng) % 4 {
            0 => Compound::StallAndRestart { a, b },
            1 => Compound::PartitionThenCrash { a },
            2 => Compound::ManagerAndNodePaused {
                m: (rand(rng) % 2) as usize,
                a,
            },
            _ => Compound::HastyRollingRestart { a, b },
        }
    }
}

/// How long a stall or a cut lasts: past the node timeout (500 ms) and the
/// heartbeat timeout (2 s) of the managers.
const FAULT: Duration = Duration::from_millis(2500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_etcd, ignore = "etcd is not installed")]
async fn overlapping_faults_from_a_seeded_schedule_serve_nothing_stale() {
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let steps: usize = std::env::var("SOAK_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let phase = Duration::from_secs(
        std::env::var("HISTORY_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2),
    );
    let mut rng = seed;
    let schedule: Vec<Compound> = (0..steps).map(|_| Compound::pick(&mut rng)).collect();
    eprintln!("overlapping faults: SOAK_SEED={seed} SOAK_STEPS={steps}: {schedule:?}");

    // Manager 1 reaches every node through a relay (the partitions);
    // manager 2 directly.
    let mut c = CutCluster::start("soak", NODE_ARGS).await;
    let apis = [c.a.clone(), c.b.clone()];
    let load = Load::start(vec![c.m1.http_url(""), c.m2.http_url("")]);

    for (step, fault) in schedule.iter().enumerate() {
        tokio::time::sleep(phase).await;
        eprintln!("step {step}: {fault:?}");
        match *fault {
            Compound::StallAndRestart { a, b } => {
                c.nodes[a].signal(libc::SIGSTOP);
                tokio::time::sleep(FAULT / 2).await;
                c.nodes[b].restart("data node serving gRPC");
                tokio::time::sleep(FAULT / 2).await;
                c.nodes[a].signal(libc::SIGCONT);
            }
            Compound::PartitionThenCrash { a } => {
                c.relays[a].sever();
                tokio::time::sleep(FAULT).await;
                c.m1.kill();
                tokio::time::sleep(FAULT).await;
                c.relays[a].release();
                c.m1.restart("manager serving HTTP");
            }
            Compound::ManagerAndNodePaused { m, a } => {
                c.manager(m).signal(libc::SIGSTOP);
                c.nodes[a].signal(libc::SIGSTOP);
                tokio::time::sleep(FAULT).await;
                c.manager(m).signal(libc::SIGCONT);
                tokio::time::sleep(FAULT / 2).await;
                c.nodes[a].signal(libc::SIGCONT);
            }
            Compound::HastyRollingRestart { a, b } => {
                c.nodes[a].restart("data node serving gRPC");
                c.nodes[b].restart("data node serving gRPC");
            }
        }
        all_up(&apis).await;
    }
    tokio::time::sleep(phase).await;

    let mut violations = load
        .finish(
            Allow {
                lag: Duration::ZERO,
                loss: true,
            },
            &format!("overlapping faults (SOAK_SEED={seed})"),
        )
        .await;
    // Quiescence: every node that holds a key holds the same version of it
    // (with no membership change, only a key's replicas ever hold it), and
    // both managers read the same.
    let mut conns = Vec::new();
    for n in &c.nodes {
        conns.push(NodeConn::connect(n).await);
    }
    for k in 0..KEYS {
        let key = format!("h{k}");
        let mut held = Vec::new();
        for (i, c) in conns.iter().enumerate() {
            let h = c.held(&key).await;
            if h != Held::Nothing {
                held.push((i, h));
            }
        }
        if held.windows(2).any(|w| w[0].1 != w[1].1) {
            violations.push(format!("{key}: replicas differ after quiescence: {held:?}"));
        }
        let a = apis[0].get(&key).await;
        let b = apis[1].get(&key).await;
        if (a.status, a.text()) != (b.status, b.text()) {
            violations.push(format!(
                "{key}: the managers read {} {:?} and {} {:?}",
                a.status,
                a.text(),
                b.status,
                b.text()
            ));
        }
    }
    assert!(
        violations.is_empty(),
        "SOAK_SEED={seed}: {} violations: {:#?}",
        violations.len(),
        &violations[..violations.len().min(20)]
    );
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
            Allow::NOTHING
        )
        .len(),
        1
    );
    // Concurrent overwrite: either value is fine.
    assert!(check_key(
        0,
        &[set("v1", 0, 1), set("v2", 2, 6), get(Some("v1"), 4, 5)],
        Allow::NOTHING
    )
    .is_empty());
    // Within the allowance an overwrite may be missed, not after it.
    let near = Allow {
        lag: Duration::from_millis(2),
        loss: false,
    };
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
        check_key(0, &[set("v1", 0, 1), get(None, 4, 5)], Allow::NOTHING).len(),
        1
    );
    // A delete explains it, even one that failed (it may have taken effect).
    let mut failed_del = del(2, 3);
    failed_del.done = None;
    assert!(check_key(
        0,
        &[set("v1", 0, 1), failed_del, get(None, 4, 5)],
        Allow::NOTHING
    )
    .is_empty());
    // A deleted value read back after the delete was acknowledged: stale.
    assert_eq!(
        check_key(
            0,
            &[set("v1", 0, 1), del(2, 3), get(Some("v1"), 4, 5)],
            Allow::NOTHING
        )
        .len(),
        1
    );
    // Where keys may be lost, a miss is allowed, an older value is not.
    let lossy = Allow {
        lag: Duration::ZERO,
        loss: true,
    };
    assert!(check_key(0, &[set("v1", 0, 1), get(None, 4, 5)], lossy).is_empty());
    assert_eq!(
        check_key(
            0,
            &[set("v1", 0, 1), set("v2", 2, 3), get(Some("v1"), 4, 5)],
            lossy
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
        Allow::NOTHING
    )
    .is_empty());
}
