//! Preloads memcached or redis servers with the benchmark keys over their
//! text protocols, pipelined, every key into every server given (so any
//! proxy in front finds every key whatever its hashing).
//!
//! `kv_load --proto memcached --addr 127.0.0.1:11211,127.0.0.1:11212 --keys 100000`

use clap::Parser;
use ringcache_bench::{bulk_set, value_of, KeyNames, Proto};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum)]
    proto: Proto,
    /// host:port of each server, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    addr: Vec<String>,
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    #[arg(long, default_value = "key:")]
    prefix: String,
    /// Zero-pad the key index to this many digits (0: none).
    #[arg(long, default_value_t = 0)]
    width: usize,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let names = KeyNames::new(&args.prefix, args.width);
    let value = value_of(args.value_size);
    let loads = args
        .addr
        .iter()
        .map(|a| bulk_set(a, args.proto, &names, args.keys, &value));
    let mut failed = 0;
    for (addr, r) in args.addr.iter().zip(futures::future::join_all(loads).await) {
        match r {
            Ok(r) => {
                println!(
                    "RESULT addr={addr} stored={} failed={} secs={:.2}",
                    r.stored,
                    r.failed,
                    r.elapsed.as_secs_f64()
                );
                failed += r.failed;
            }
            Err(e) => {
                eprintln!("{addr}: {e}");
                failed += 1;
            }
        }
    }
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
