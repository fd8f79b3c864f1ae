//! Protocol overhead: unary `Get` / `Set` straight at one data node, the way
//! `redis-benchmark` drives redis: a fixed number of requests in flight (one
//! per task, all on one shared tonic `Channel`, i.e. one HTTP/2 connection),
//! random keys from a preloaded set, fixed-size values, a fixed duration.
//!
//! `grpc_load --addr http://127.0.0.1:50051 --preload --ops get,set --duration 10s`
//! prints one `RESULT op=... ops_per_s=... p50_us=... p99_us=... errors=...`
//! line per operation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use ringcache_bench::{value_of, KeyNames, Latencies};
use ringcache_proto::pb::{self, data_node_client::DataNodeClient};
use tonic::transport::{Channel, Endpoint};

#[derive(Parser, Debug)]
struct Args {
    /// gRPC address of the data node.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Operations to run, one after the other, each for --duration.
    #[arg(long, value_delimiter = ',', default_value = "get,set")]
    ops: Vec<Op>,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured run of each operation before its measured run.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Key names: prefix then the index zero-padded to --width digits; the
    /// defaults are redis-benchmark's `key:__rand_int__` names.
    #[arg(long, default_value = "key:")]
    prefix: String,
    #[arg(long, default_value_t = 12)]
    width: usize,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Write every key once before the measured runs.
    #[arg(long)]
    preload: bool,
    /// Worker threads of the load generator's runtime (redis-benchmark is
    /// single-threaded, so 1 by default).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Op {
    Get,
    Set,
}

/// splitmix64: a fast, good-enough generator for picking keys.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z as u128 * n as u128) >> 64) as u64
    }
}

#[derive(Default)]
struct TaskResult {
    ops: u64,
    errors: u64,
    not_found: u64,
    latencies_us: Vec<u32>,
}

async fn one(
    client: &mut DataNodeClient<Channel>,
    op: Op,
    key: String,
    value: &Bytes,
) -> Result<bool, tonic::Status> {
    match op {
        Op::Get => Ok(client
            .get(pb::GetRequest {
                key,
                consistent: false,
            })
            .await?
            .into_inner()
            .found),
        Op::Set => client
            .set(pb::SetRequest {
                key,
                value: value.clone(),
                ttl_ms: 0,
                version: 0,
                condition: None,
            })
            .await
            .map(|_| true),
    }
}

async fn run(
    client: &DataNodeClient<Channel>,
    args: &Args,
    op: Op,
    duration: Duration,
) -> (TaskResult, Duration) {
    let start = Instant::now();
    let deadline = start + duration;
    let value = Bytes::from(value_of(args.value_size));
    let names = KeyNames::new(&args.prefix, args.width);
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|t| {
            let mut client = client.clone();
            let value = value.clone();
            let names = names.clone();
            let keys = args.keys;
            tokio::spawn(async move {
                let mut rng = Rng(0x5eed ^ (t as u64) << 32 ^ start.elapsed().as_nanos() as u64);
                let mut r = TaskResult::default();
                while Instant::now() < deadline {
                    let key = names.name(rng.below(keys));
                    let t0 = Instant::now();
                    let res = one(&mut client, op, key, &value).await;
                    r.latencies_us
                        .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    r.ops += 1;
                    match res {
                        Ok(true) => {}
                        Ok(false) => r.not_found += 1,
                        Err(e) => {
                            if r.errors == 0 {
                                eprintln!("{op:?} failed: {e}");
                            }
                            r.errors += 1;
                        }
                    }
                }
                r
            })
        })
        .collect();
    let mut total = TaskResult::default();
    for t in tasks {
        let r = t.await.unwrap_or_else(|e| {
            eprintln!("task failed: {e}");
            TaskResult {
                errors: 1,
                ..Default::default()
            }
        });
        total.ops += r.ops;
        total.errors += r.errors;
        total.not_found += r.not_found;
        total.latencies_us.extend(r.latencies_us);
    }
    (total, start.elapsed())
}

async fn preload(client: &DataNodeClient<Channel>, args: &Args) -> Result<(), String> {
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let value = Bytes::from(value_of(args.value_size));
    let names = KeyNames::new(&args.prefix, args.width);
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (mut client, next, value, names) =
                (client.clone(), next.clone(), value.clone(), names.clone());
            let keys = args.keys;
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= keys {
                        return Ok::<(), String>(());
                    }
                    one(&mut client, Op::Set, names.name(i), &value)
                        .await
                        .map_err(|e| format!("preload of key {i}: {e}"))?;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    eprintln!(
        "preloaded {} keys in {:.2}s",
        args.keys,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn main_async(args: Args) -> Result<(), String> {
    let channel = Endpoint::from_shared(args.addr.clone())
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", args.addr))?;
    let client = DataNodeClient::new(channel);
    if args.preload {
        preload(&client, &args).await?;
    }
    let mut failed = false;
    for &op in &args.ops {
        if !args.warmup.is_zero() {
            run(&client, &args, op, args.warmup).await;
        }
        let (mut r, elapsed) = run(&client, &args, op, args.duration).await;
        let mut lat = Latencies(std::mem::take(&mut r.latencies_us));
        println!(
            "RESULT op={} ops={} secs={:.2} ops_per_s={:.0} p50_us={} p99_us={} errors={} not_found={} concurrency={} threads={}",
            format!("{op:?}").to_lowercase(),
            r.ops,
            elapsed.as_secs_f64(),
            r.ops as f64 / elapsed.as_secs_f64(),
            lat.percentile(50.0),
            lat.percentile(99.0),
            r.errors,
            r.not_found,
            args.concurrency,
            args.threads,
        );
        failed |= r.errors > 0;
    }
    if failed {
        Err("some requests failed".into())
    } else {
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(main_async(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("grpc_load: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
