//! Memory per item: loads `--items` entries (10-byte keys, 100-byte values by
//! default) into one running server and reports, per item, the growth of the
//! process's RSS and of the server's own accounting, minus the payload
//! (key + value bytes), i.e. the overhead each entry costs.
//!
//! - datanode: loaded over one `Batch` stream; accounting = Stats.bytes_used.
//! - memcached: pipelined `set`s; accounting = `stats` bytes.
//! - redis: pipelined `SET`s; accounting = INFO used_memory.
//!
//! `mem_per_item --target datanode --addr 127.0.0.1:50051 --pid 1234`
//! (`--ttl 1h`: every entry with a time to live, long enough not to expire
//! during the run).

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use ringcache_bench::{
    bulk_set_ttl, memcached_stats, redis_info, rss_bytes, stat_field, value_of, KeyNames, Proto,
};
use ringcache_proto::pb::{self, data_node_client::DataNodeClient};
use tokio_stream::StreamExt;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum)]
    target: Target,
    /// host:port of the server.
    #[arg(long)]
    addr: String,
    /// Process id of the server, for its RSS.
    #[arg(long)]
    pid: u32,
    #[arg(long, default_value_t = 1_000_000)]
    items: u64,
    #[arg(long, default_value_t = 10)]
    key_size: usize,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Operations per message on the datanode's Batch stream.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Time to live of every entry (whole seconds, below memcached's 30
    /// days); 0s: none. The entries must outlive the measurement.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Pause after loading, before reading RSS, for background work to settle.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    settle: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Target {
    Datanode,
    Memcached,
    Redis,
}

/// (items, accounted bytes, evictions) as the server reports them.
type Accounting = (u64, u64, u64);

async fn accounting(target: Target, addr: &str) -> Result<Accounting, String> {
    match target {
        Target::Datanode => {
            let mut c = DataNodeClient::connect(format!("http://{addr}"))
                .await
                .map_err(|e| e.to_string())?;
            let s = c
                .stats(pb::StatsRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            Ok((s.items, s.bytes_used, s.evictions))
        }
        Target::Memcached => {
            let s = memcached_stats(addr).await.map_err(|e| e.to_string())?;
            let f = |n| stat_field(&s, n).ok_or(format!("no {n} in memcached stats"));
            Ok((f("curr_items")?, f("bytes")?, f("evictions")?))
        }
        Target::Redis => {
            let s = redis_info(addr).await.map_err(|e| e.to_string())?;
            let f = |n| stat_field(&s, n).ok_or(format!("no {n} in redis INFO"));
            // keyspace line: db0:keys=N,expires=0,avg_ttl=0
            let keys = s
                .lines()
                .find_map(|l| l.strip_prefix("db0:keys="))
                .and_then(|r| r.split(',').next()?.parse().ok())
                .unwrap_or(0);
            Ok((keys, f("used_memory")?, f("evicted_keys")?))
        }
    }
}

async fn load_datanode(args: &Args, names: &KeyNames) -> Result<(), String> {
    let mut client = DataNodeClient::connect(format!("http://{}", args.addr))
        .await
        .map_err(|e| e.to_string())?
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::BatchRequest>(8);
    let value = Bytes::from(value_of(args.value_size));
    let (items, batch, names) = (args.items, args.batch.max(1) as u64, names.clone());
    let ttl_ms = u64::try_from(args.ttl.as_millis()).unwrap_or(u64::MAX);
    let producer = tokio::spawn(async move {
        let mut i = 0;
        while i < items {
            let end = (i + batch).min(items);
            let ops = (i..end)
                .map(|n| pb::Op {
                    id: n,
                    placement: 0,
                    op: Some(pb::op::Op::Set(pb::SetRequest {
                        key: names.name(n),
                        value: value.clone(),
                        ttl_ms,
                        version: 0,
                        condition: None,
                    })),
                })
                .collect();
            if tx.send(pb::BatchRequest { ops }).await.is_err() {
                break;
            }
            i = end;
        }
    });
    let mut responses = client
        .batch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let (mut done, mut failed) = (0u64, 0u64);
    while done < args.items {
        let Some(r) = responses.next().await else {
            return Err(format!("Batch stream ended after {done} results"));
        };
        for res in r.map_err(|e| e.to_string())?.results {
            done += 1;
            if !matches!(res.result, Some(pb::op_result::Result::Set(_))) {
                if failed == 0 {
                    eprintln!("set failed: {:?}", res.result);
                }
                failed += 1;
            }
        }
    }
    let _ = producer.await;
    if failed > 0 {
        return Err(format!("{failed} sets failed"));
    }
    Ok(())
}

async fn main_async(args: Args) -> Result<(), String> {
    if args.key_size < 2 || args.items > 10u64.pow(args.key_size as u32 - 1) {
        return Err(format!(
            "{} items do not fit in {}-byte keys",
            args.items, args.key_size
        ));
    }
    if args.ttl.subsec_nanos() != 0 || args.ttl.as_secs() >= 30 * 24 * 3600 {
        return Err("--ttl must be whole seconds below 30 days".into());
    }
    // `k` then the index zero-padded: every key is exactly key_size bytes.
    let names = KeyNames::new("k", args.key_size - 1);
    let before = accounting(args.target, &args.addr).await?;
    let rss_before = rss_bytes(args.pid).map_err(|e| e.to_string())?;
    let start = Instant::now();
    match args.target {
        Target::Datanode => load_datanode(&args, &names).await?,
        Target::Memcached | Target::Redis => {
            let proto = if args.target == Target::Memcached {
                Proto::Memcached
            } else {
                Proto::Redis
            };
            let r = bulk_set_ttl(
                &args.addr,
                proto,
                &names,
                args.items,
                &value_of(args.value_size),
                args.ttl.as_secs(),
            )
            .await
            .map_err(|e| e.to_string())?;
            if r.failed > 0 {
                return Err(format!("{} sets failed", r.failed));
            }
        }
    }
    let load_secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(args.settle).await;
    let rss_after = rss_bytes(args.pid).map_err(|e| e.to_string())?;
    let after = accounting(args.target, &args.addr).await?;
    let items = after.0.saturating_sub(before.0);
    let evictions = after.2.saturating_sub(before.2);
    let payload = (args.key_size + args.value_size) as f64;
    let per = |b: u64, a: u64| (a as f64 - b as f64) / args.items as f64;
    println!(
        "RESULT target={} ttl_secs={} items={} evictions={} load_secs={:.2} rss_before={} rss_after={} rss_per_item={:.1} rss_overhead={:.1} accounted_per_item={:.1} accounted_overhead={:.1}",
        format!("{:?}", args.target).to_lowercase(),
        args.ttl.as_secs(),
        items,
        evictions,
        load_secs,
        rss_before,
        rss_after,
        per(rss_before, rss_after),
        per(rss_before, rss_after) - payload,
        per(before.1, after.1),
        per(before.1, after.1) - payload,
    );
    if items != args.items || evictions != 0 {
        return Err(format!(
            "expected {} new items and no eviction, got {items} items and {evictions} evictions",
            args.items
        ));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match main_async(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mem_per_item: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
