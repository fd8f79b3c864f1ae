//! Per-key linearizability, statuses included, of histories recorded over
//! HTTP by clients of two managers writing the same few keys
//! (docs/design/consistency.md, "Linearizable keys").
//!
//! Each client is bound to one manager and loops over GET, POST and DELETE
//! of a handful of keys, recording each operation's invocation and
//! response time and what it answered: the value or a miss, `201 created`
//! or `200 updated`, `200 deleted` or `404`. A write answered with anything
//! else (a 5xx, no answer) may or may not have taken effect. The history is
//! checked by `ringcache_tests::linearizability`: some order of the
//! operations, consistent with real time, must explain every answer.
//!
//! Few keys and many clients make writes race on every key, which is where
//! a write superseded on one replica and sent again with a newer version
//! could land above a newer acknowledged write ("flip-flop"), and where
//! per-replica statuses could disagree.
#![cfg_attr(no_etcd, allow(unused))]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringcache_tests::linearizability::{self, Call, Op, Ret};
use ringcache_tests::CutCluster;

const KEYS: usize = 4;
/// Clients per manager.
const CLIENTS: usize = 4;
const NODE_ARGS: &[&str] = &["--heartbeat-interval", "100ms"];

fn rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Clients racing on the same keys through both managers, recording.
struct Load {
    history: Arc<Mutex<Vec<Op>>>,
    stopped: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Keys are named `{prefix}{n}`: a fresh prefix starts from absent keys.
    fn start(bases: &[String], prefix: &str) -> Load {
        let history = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let origin = Instant::now();
        let mut tasks = Vec::new();
        for (m, base) in bases.iter().enumerate() {
            for c in 0..CLIENTS {
                let id = m * CLIENTS + c;
                tasks.push(tokio::spawn(client(
                    id,
                    base.clone(),
                    prefix.to_string(),
                    history.clone(),
                    stopped.clone(),
                    origin,
                )));
            }
        }
        Load {
            history,
            stopped,
            tasks,
        }
    }

    /// Stops the clients and checks what they recorded.
    async fn check(self, label: &str) {
        self.stopped.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("client task");
        }
        let history = std::mem::take(&mut *self.history.lock().unwrap_or_else(|e| e.into_inner()));
        let unknown = history.iter().filter(|o| o.ret == Ret::Unknown).count();
        let writes = history.iter().filter(|o| o.call != Call::Get).count();
        // The clients must have raced for real: a history of refusals
        // proves nothing.
        assert!(
            history.len() > 500 && unknown * 10 < history.len(),
            "{label}: {} operations, {unknown} of unknown outcome",
            history.len()
        );
        let started = Instant::now();
        let result = linearizability::check(&history);
        eprintln!(
            "{label}: {} operations ({writes} writes, {unknown} unknown) on {KEYS} keys checked in {:?}: {}",
            history.len(),
            started.elapsed(),
            match &result {
                Ok(_) => "linearizable".to_string(),
                Err(e) => e.to_string(),
            }
        );
        if let Err(e) = result {
            panic!("{label}: not linearizable: {e}");
        }
    }
}

async fn client(
    id: usize,
    base: String,
    prefix: String,
    history: Arc<Mutex<Vec<Op>>>,
    stopped: Arc<AtomicBool>,
    origin: Instant,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ ((id as u64 + 1) * 0x2545_F491);
    // Bounded in count as well as by the stop flag.
    for n in 0..100_000u64 {
        if stopped.load(Ordering::Relaxed) {
            break;
        }
        let key = format!("{prefix}{}", rand(&mut rng) as usize % KEYS);
        let url = format!("{base}/?key={key}");
        let roll = rand(&mut rng) % 10;
        let call = match roll {
            0..=3 => Call::Get,
            4..=7 => Call::Set(format!("c{id}n{n}")),
            _ => Call::Delete,
        };
        let invoke = origin.elapsed().as_nanos() as u64;
        let answer = match &call {
            Call::Get => http.get(&url).send().await,
            Call::Set(v) => http.post(format!("{url}&value={v}")).send().await,
            Call::Delete => http.delete(&url).send().await,
        };
        let ret = match (answer, &call) {
            (Ok(r), Call::Get) if r.status() == 200 => match r.text().await {
                Ok(body) => Ret::Get(Some(body)),
                Err(_) => Ret::Unknown,
            },
            (Ok(r), Call::Get) if r.status() == 404 => Ret::Get(None),
            (Ok(r), Call::Set(_)) if r.status() == 201 => Ret::Set { created: true },
            (Ok(r), Call::Set(_)) if r.status() == 200 => Ret::Set { created: false },
            (Ok(r), Call::Delete) if r.status() == 200 => Ret::Delete { deleted: true },
            (Ok(r), Call::Delete) if r.status() == 404 => Ret::Delete { deleted: false },
            _ => Ret::Unknown,
        };
        let complete = origin.elapsed().as_nanos() as u64;
        let refused = ret == Ret::Unknown;
        history.lock().unwrap_or_else(|e| e.into_inner()).push(Op {
            client: id,
            key,
            call,
            ret,
            invoke,
            complete,
        });
        if refused {
            // A node restarting: back off instead of spinning on refusals.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Lets the clients run for `secs` (at least 1).
async fn run_for(secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

fn load_secs() -> u64 {
    std::env::var("LIN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(no_etcd, ignore = "etcd is not installed")]
async fn two_managers_writing_the_same_keys_are_linearizable_per_key() {
    let c = CutCluster::start("lin-nofault", NODE_ARGS).await;
    let load = Load::start(&[c.m1.http_url(""), c.m2.http_url("")], "lin");
    run_for(load_secs()).await;
    load.check("no fault").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(no_etcd, ignore = "etcd is not installed")]
async fn two_managers_stay_linearizable_through_each_single_fault() {
    let mut c = CutCluster::start("lin-faults", NODE_ARGS).await;
    let bases = [c.m1.http_url(""), c.m2.http_url("")];
    let secs = load_secs();

    // A node killed and restarted under load.
    let load = Load::start(&bases, "restart");
    run_for(secs / 2).await;
    c.nodes[1].restart("data node serving gRPC");
    c.a.await_all_up().await;
    c.b.await_all_up().await;
    run_for(secs / 2).await;
    load.check("a node restarted").await;

    // A node stalled past the node timeout, then resumed.
    let load = Load::start(&bases, "stall");
    run_for(1).await;
    c.nodes[2].signal(libc::SIGSTOP);
    run_for(secs / 2).await;
    c.nodes[2].signal(libc::SIGCONT);
    c.a.await_all_up().await;
    c.b.await_all_up().await;
    run_for(1).await;
    load.check("a node stalled").await;

    // Manager1 cut off from node1 (its relay holds every byte), then healed.
    let load = Load::start(&bases, "cut");
    run_for(1).await;
    c.relays[0].cut();
    run_for(secs / 2).await;
    c.relays[0].release();
    c.a.await_all_up().await;
    c.b.await_all_up().await;
    run_for(1).await;
    load.check("manager1 cut off from a node").await;
}
