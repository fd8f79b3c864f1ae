//! Microbenchmarks of the data node's store: `get` and `set` of preloaded
//! keys at 1 and 2 threads, with 100-byte and 10 KiB values, with the event
//! subscriber a manager attaches.
//!
//! Each benchmark is named `store/{op}/{size}/{threads}t/{subscriber}`:
//! `status` is a manager without a near cache (the default; it skips
//! invalidations), `all` one with a near cache (every write is sent to it),
//! `none` no manager at all. The subscription is held but not drained
//! during a measurement (a draining thread would take the second core the
//! 2-thread runs need); the channel is bounded, so an undrained receiver
//! costs a publisher what a drained one does. With 2 threads
//! the iterations are split between them and the wall time is measured, so
//! the reported time is per operation of the whole store and the throughput
//! (elem/s) is the store's aggregate operations per second.
//!
//! `cargo bench -p ringcache-datanode --bench store`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringcache_datanode::events::{EventBus, Subscription};
use ringcache_datanode::store::{Store, StoreConfig};

/// A prime stride, so that consecutive operations touch unrelated keys.
const STRIDE: usize = 7_919;

struct Fixture {
    store: Store,
    keys: Vec<String>,
    value: Vec<u8>,
    _subscriber: Option<Subscription>,
}

#[derive(Clone, Copy)]
enum Subscriber {
    None,
    Status,
    All,
}

fn fixture(value_size: usize, keys: usize, sub: Subscriber) -> Fixture {
    let store = Store::new(
        &StoreConfig {
            // Far above what the keys need: nothing is ever evicted.
            max_memory: 4 << 30,
            max_items: None,
            shards: 64,
            ..StoreConfig::default()
        },
        EventBus::new(1024),
    );
    let keys: Vec<String> = (0..keys).map(|i| format!("key:{i}")).collect();
    let value = vec![b'v'; value_size];
    for k in &keys {
        store.set(k, &value, None).expect("preload");
    }
    let _subscriber = match sub {
        Subscriber::None => None,
        Subscriber::Status => Some(store.subscribe(false).1),
        Subscriber::All => Some(store.subscribe(true).1),
    };
    Fixture {
        store,
        keys,
        value,
        _subscriber,
    }
}

#[derive(Clone, Copy)]
enum Op {
    Get,
    Set,
}

/// Runs `iters` operations on `threads` threads, starting each thread at a
/// different key, and returns the wall time.
fn run(f: &Fixture, op: Op, threads: usize, iters: u64) -> Duration {
    let work = |t: usize, n: u64| {
        let mut i = (t * f.keys.len()) / threads;
        for _ in 0..n {
            let key = &f.keys[i];
            match op {
                Op::Get => {
                    black_box(f.store.get(key));
                }
                Op::Set => {
                    black_box(f.store.set(key, &f.value, None).ok());
                }
            }
            i = (i + STRIDE) % f.keys.len();
        }
    };
    if threads == 1 {
        let start = Instant::now();
        work(0, iters);
        return start.elapsed();
    }
    let per_thread = iters.div_ceil(threads as u64);
    let barrier = std::sync::Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (barrier, work) = (&barrier, &work);
            s.spawn(move || {
                barrier.wait();
                work(t, per_thread);
            });
        }
        barrier.wait();
        let start = Instant::now();
        // The scope joins every thread before returning.
        start
    })
    .elapsed()
}

fn store(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(1));
    // 100k small values (like the HTTP benchmark's key set), 10k large ones
    // (100 MiB): both far beyond the CPU caches.
    // Reads publish nothing: one subscriber case is enough for them.
    let cases = [
        ("get", Op::Get, "status", Subscriber::Status),
        ("set", Op::Set, "none", Subscriber::None),
        ("set", Op::Set, "status", Subscriber::Status),
        ("set", Op::Set, "all", Subscriber::All),
    ];
    for (label, size, keys) in [("100B", 100, 100_000), ("10KiB", 10 * 1024, 10_000)] {
        for (name, op, sub_name, sub) in cases {
            let f = fixture(size, keys, sub);
            for threads in [1, 2] {
                let id = format!("{name}/{label}/{threads}t/{sub_name}");
                group.bench_function(id, |b| b.iter_custom(|iters| run(&f, op, threads, iters)));
            }
        }
    }
    group.finish();
}

/// One pass of the expiry crawler over 100k entries that all have a TTL
/// (none due): what each sweep tick costs a node holding them.
fn crawl(c: &mut Criterion) {
    let f = fixture(100, 100_000, Subscriber::Status);
    for k in &f.keys {
        f.store
            .set(k, &f.value, Some(Duration::from_secs(3600)))
            .expect("preload");
    }
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(f.keys.len() as u64));
    group.bench_function("crawl/100B/100k", |b| {
        b.iter(|| black_box(f.store.purge_expired(256)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = store, crawl
}
criterion_main!(benches);
