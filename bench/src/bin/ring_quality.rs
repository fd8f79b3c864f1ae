//! Ring quality of the manager's consistent hash ring at its default number
//! of virtual nodes: how evenly `--keys` keys spread over 3 and 10 nodes
//! (standard deviation of the per-node key count, in % of the mean), and
//! which fraction of the keys changes owner when a 4th node joins 3 (ideal:
//! 1/4, all of them moving to the new node).
//!
//! Node ids are addresses as the manager sees them (`http://127.0.0.1:PORT`).

use clap::Parser;
use ringcache_manager::ring::{Ring, DEFAULT_VNODES};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    #[arg(long, default_value_t = DEFAULT_VNODES)]
    vnodes: usize,
    /// First port of the node addresses.
    #[arg(long, default_value_t = 50051)]
    base_port: u16,
}

fn ids(n: usize, base_port: u16) -> Vec<String> {
    (0..n)
        .map(|i| format!("http://127.0.0.1:{}", base_port as usize + i))
        .collect()
}

fn key(i: u64) -> String {
    format!("key:{i}")
}

/// Standard deviation of per-node key counts in % of the mean, and the
/// counts.
fn spread(ring: &Ring, nodes: usize, keys: u64) -> (f64, Vec<u64>) {
    let mut counts = vec![0u64; nodes];
    for i in 0..keys {
        counts[ring.owner(&key(i)).expect("ring has nodes")] += 1;
    }
    let mean = keys as f64 / nodes as f64;
    let var = counts
        .iter()
        .map(|&c| (c as f64 - mean).powi(2))
        .sum::<f64>()
        / nodes as f64;
    (100.0 * var.sqrt() / mean, counts)
}

fn main() {
    let args = Args::parse();
    for n in [3, 10] {
        let ring = Ring::new(&ids(n, args.base_port), args.vnodes);
        let (sd, counts) = spread(&ring, n, args.keys);
        let (min, max) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        let mean = args.keys as f64 / n as f64;
        println!(
            "RESULT check=spread nodes={n} vnodes={} keys={} stddev_pct={sd:.2} min_pct={:.1} max_pct={:.1}",
            args.vnodes,
            args.keys,
            100.0 * min as f64 / mean,
            100.0 * max as f64 / mean,
        );
    }
    let three = Ring::new(&ids(3, args.base_port), args.vnodes);
    let four = Ring::new(&ids(4, args.base_port), args.vnodes);
    let (mut moved, mut moved_elsewhere) = (0u64, 0u64);
    for i in 0..args.keys {
        let k = key(i);
        let (a, b) = (three.owner(&k), four.owner(&k));
        if a != b {
            moved += 1;
            if b != Some(3) {
                moved_elsewhere += 1;
            }
        }
    }
    let frac = moved as f64 / args.keys as f64;
    println!(
        "RESULT check=join from=3 to=4 vnodes={} keys={} moved_fraction={frac:.4} ideal=0.2500 deviation_pct={:.2} moved_not_to_new={moved_elsewhere}",
        args.vnodes,
        args.keys,
        100.0 * (frac - 0.25).abs() / 0.25,
    );
}
