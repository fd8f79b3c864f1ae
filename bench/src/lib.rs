//! Helpers shared by the benchmark binaries that `bench/run.sh` drives:
//! key naming, pipelined bulk loading of memcached and redis over their text
//! protocols, their stats, process RSS and latency percentiles.
//!
//! Every binary prints its figures as one `RESULT name=value ...` line so
//! the script can read them without parsing prose.

use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Names of the benchmark keys: `prefix` then the index, zero-padded to
/// `width` digits (0 = no padding). `key:` with width 12 is what
/// `redis-benchmark -r` produces from `key:__rand_int__`.
#[derive(Debug, Clone)]
pub struct KeyNames {
    pub prefix: String,
    pub width: usize,
}

impl KeyNames {
    pub fn new(prefix: &str, width: usize) -> Self {
        Self {
            prefix: prefix.to_string(),
            width,
        }
    }

    pub fn name(&self, i: u64) -> String {
        let mut s = String::with_capacity(self.prefix.len() + self.width.max(8));
        s.push_str(&self.prefix);
        let _ = write!(s, "{i:0w$}", w = self.width);
        s
    }
}

/// The value every benchmark writes: `size` bytes of `v`, like the wrk scripts.
pub fn value_of(size: usize) -> Vec<u8> {
    vec![b'v'; size]
}

/// Resident set size of a process in bytes, from `/proc/PID/status`.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::other(format!("no VmRSS for pid {pid}")))
}

/// Which text protocol a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    Memcached,
    Redis,
}

/// Outcome of a bulk load.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoadReport {
    pub stored: u64,
    pub failed: u64,
    pub elapsed: Duration,
}

/// `ttl_secs` 0: no expiry.
fn encode_set(proto: Proto, key: &str, value: &[u8], ttl_secs: u64, out: &mut Vec<u8>) {
    match proto {
        Proto::Memcached => {
            out.extend_from_slice(format!("set {key} 0 {ttl_secs} {}\r\n", value.len()).as_bytes());
        }
        Proto::Redis if ttl_secs > 0 => {
            let ttl = ttl_secs.to_string();
            out.extend_from_slice(
                format!(
                    "*5\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
                    key.len(),
                    value.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(value);
            out.extend_from_slice(
                format!("\r\n$2\r\nEX\r\n${}\r\n{ttl}\r\n", ttl.len()).as_bytes(),
            );
            return;
        }
        Proto::Redis => {
            out.extend_from_slice(
                format!(
                    "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
                    key.len(),
                    value.len()
                )
                .as_bytes(),
            );
        }
    }
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Stores keys `0..count` (named by `names`) with `value` on one server over
/// one connection, pipelined: a writer streams the commands while a reader
/// counts the replies (`STORED` / `+OK`; anything else is a failure).
pub async fn bulk_set(
    addr: &str,
    proto: Proto,
    names: &KeyNames,
    count: u64,
    value: &[u8],
) -> io::Result<LoadReport> {
    bulk_set_ttl(addr, proto, names, count, value, 0).await
}

/// [`bulk_set`] with a time to live in seconds on every entry (0: none).
pub async fn bulk_set_ttl(
    addr: &str,
    proto: Proto,
    names: &KeyNames,
    count: u64,
    value: &[u8],
    ttl_secs: u64,
) -> io::Result<LoadReport> {
    let start = std::time::Instant::now();
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.into_split();
    let names = names.clone();
    let value = value.to_vec();
    let writer = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(256 * 1024);
        for i in 0..count {
            encode_set(proto, &names.name(i), &value, ttl_secs, &mut buf);
            if buf.len() >= 192 * 1024 {
                wr.write_all(&buf).await?;
                buf.clear();
            }
        }
        wr.write_all(&buf).await?;
        wr.flush().await?;
        Ok::<_, io::Error>(wr)
    });
    let mut rd = BufReader::with_capacity(256 * 1024, rd);
    let mut line = String::new();
    let mut report = LoadReport::default();
    let ok = match proto {
        Proto::Memcached => "STORED\r\n",
        Proto::Redis => "+OK\r\n",
    };
    while report.stored + report.failed < count {
        line.clear();
        if rd.read_line(&mut line).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{addr} closed the connection after {} replies",
                    report.stored + report.failed
                ),
            ));
        }
        if line == ok {
            report.stored += 1;
        } else {
            if report.failed < 3 {
                eprintln!("{addr}: unexpected reply {:?}", line.trim_end());
            }
            report.failed += 1;
        }
    }
    writer.await.map_err(io::Error::other)??;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Sends one command and reads the reply up to `terminator` (or, for
/// redis, one bulk string).
async fn command(addr: &str, proto: Proto, cmd: &str) -> io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(cmd.as_bytes()).await?;
    let mut rd = BufReader::new(s);
    let mut out = String::new();
    match proto {
        Proto::Memcached => loop {
            let mut line = String::new();
            if rd.read_line(&mut line).await? == 0 || line == "END\r\n" {
                break;
            }
            out.push_str(&line);
        },
        Proto::Redis => {
            let mut head = String::new();
            rd.read_line(&mut head).await?;
            let len: usize = head
                .trim_end()
                .strip_prefix('$')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| io::Error::other(format!("unexpected reply {head:?}")))?;
            let mut body = vec![0; len + 2];
            rd.read_exact(&mut body).await?;
            out = String::from_utf8_lossy(&body).into_owned();
        }
    }
    Ok(out)
}

/// One numeric field of a `name value` (memcached `STAT name value`) or
/// `name:value` (redis INFO) listing.
pub fn stat_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let l = l.strip_prefix("STAT ").unwrap_or(l);
        let (k, v) = l.split_once(' ').or_else(|| l.split_once(':'))?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// memcached's `stats` output.
pub async fn memcached_stats(addr: &str) -> io::Result<String> {
    command(addr, Proto::Memcached, "stats\r\n").await
}

/// redis's `INFO` output (all sections).
pub async fn redis_info(addr: &str) -> io::Result<String> {
    command(addr, Proto::Redis, "*2\r\n$4\r\nINFO\r\n$3\r\nall\r\n").await
}

/// Latency samples in microseconds, merged across tasks.
#[derive(Debug, Default)]
pub struct Latencies(pub Vec<u32>);

impl Latencies {
    pub fn percentile(&mut self, p: f64) -> u32 {
        if self.0.is_empty() {
            return 0;
        }
        self.0.sort_unstable();
        let i = ((p / 100.0) * (self.0.len() - 1) as f64).round() as usize;
        self.0[i.min(self.0.len() - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_pad_like_redis_benchmark() {
        assert_eq!(KeyNames::new("key:", 12).name(42), "key:000000000042");
        assert_eq!(KeyNames::new("key:", 0).name(42), "key:42");
        assert_eq!(KeyNames::new("k", 9).name(7).len(), 10);
    }

    #[test]
    fn stat_fields_of_both_servers() {
        assert_eq!(
            stat_field("STAT pid 1\r\nSTAT bytes 1234\r\n", "bytes"),
            Some(1234)
        );
        assert_eq!(
            stat_field(
                "# Memory\r\nused_memory:999\r\nused_memory_rss:5\r\n",
                "used_memory"
            ),
            Some(999)
        );
        assert_eq!(stat_field("used_memory:999\r\n", "evicted_keys"), None);
    }

    #[test]
    fn encodes_both_protocols() {
        let mut b = Vec::new();
        encode_set(Proto::Memcached, "k", b"vv", 0, &mut b);
        assert_eq!(b, b"set k 0 0 2\r\nvv\r\n");
        b.clear();
        encode_set(Proto::Redis, "k", b"vv", 0, &mut b);
        assert_eq!(b, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n");
        b.clear();
        encode_set(Proto::Memcached, "k", b"vv", 3600, &mut b);
        assert_eq!(b, b"set k 0 3600 2\r\nvv\r\n");
        b.clear();
        encode_set(Proto::Redis, "k", b"vv", 3600, &mut b);
        assert_eq!(
            b,
            b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n$2\r\nEX\r\n$4\r\n3600\r\n"
        );
    }

    #[test]
    fn percentiles() {
        let mut l = Latencies((1..=100).collect());
        assert_eq!(l.percentile(50.0), 51);
        assert_eq!(l.percentile(99.0), 99);
        assert_eq!(Latencies::default().percentile(99.0), 0);
    }
}
