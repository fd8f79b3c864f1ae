//! The key commands, run against the cluster: the same routes as the HTTP
//! API (`Cluster::get`, `set`, `delete`), so the same consistency. Commands
//! that read a key and write it back (`INCR`, `SET ... GET`, `EXPIRE`,
//! `KEEPTTL`) are a read and a conditional write of the version read
//! (docs/design/conditional.md), retried while other writers get there
//! first: atomic, as in Redis, through any number of managers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::join_all;
use futures::stream::{self, StreamExt};

use super::command::{self, Command, ExpireAt, Expiry, Only};
use super::frame::Reply;
use crate::client::{Condition, Found};
use crate::cluster::{Cluster, ClusterError};
use crate::error::resp_error;

/// Read-and-write-back rounds a command makes before it gives up (each
/// lost to a concurrent writer of the same key), with a random pause
/// before each round after the first, growing up to the cap: contending
/// writers spread out instead of colliding again in lockstep.
const CAS_ATTEMPTS: u32 = 64;
const CAS_PAUSE_MAX: Duration = Duration::from_millis(20);

/// A pause of up to `2^attempt` ms (capped), spread by the clock's
/// nanoseconds: enough randomness to separate contending writers.
fn cas_pause(attempt: u32) -> Duration {
    let cap = Duration::from_millis(1u64 << attempt.min(5)).min(CAS_PAUSE_MAX);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let spread = xxhash_rust::xxh3::xxh3_64(&nanos.to_le_bytes()) % 1024;
    cap * spread as u32 / 1024
}
/// Keys of one multi-key command read or written at once.
const KEYS_AT_ONCE: usize = 64;
/// Most value bytes one reply carries (`MGET` of many large values).
const MAX_REPLY_BYTES: usize = 64 << 20;
/// Longest TTL accepted (100 years): beyond it Redis's arithmetic
/// overflows, and the nodes' expiry times would.
pub const MAX_TTL_MS: i64 = 100 * 365 * 86_400_000;

/// What the RESP connections share.
pub struct Keys {
    pub cluster: Arc<Cluster>,
    pub max_key_bytes: usize,
    /// `FLUSHALL` empties every data node only with `--resp-allow-flushall`.
    pub allow_flushall: bool,
    /// Connections open now, and every one accepted (for `INFO`).
    pub connected: AtomicU64,
    pub accepted: AtomicU64,
    pub commands: AtomicU64,
    pub started: std::time::Instant,
}

fn cluster_err(e: ClusterError) -> Reply {
    Reply::Error(resp_error(&e))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Whether a SET with `NX`/`XX` (`only`) writes, given whether the key
/// holds a value.
fn set_applies(only: Only, present: bool) -> bool {
    match only {
        Only::IfAbsent => !present,
        Only::IfPresent => present,
        _ => true,
    }
}

/// What a read-modify-write does with what it read.
enum Step {
    Write(Bytes, Option<Duration>),
    Delete,
    /// Nothing to write: the reply is final.
    Keep,
}

type Entry = (Found, Option<Duration>);

impl Keys {
    /// The key as ringcache keys are: UTF-8, 1 to `max_key_bytes` bytes.
    fn key<'a>(&self, k: &'a Bytes) -> Result<&'a str, Reply> {
        let s = std::str::from_utf8(k)
            .map_err(|_| Reply::err("ERR ringcache keys are UTF-8 text; this one is not"))?;
        if s.is_empty() {
            return Err(Reply::err("ERR ringcache keys are 1 byte or longer"));
        }
        if s.len() > self.max_key_bytes {
            return Err(Reply::err(format!(
                "ERR key is {} bytes, longer than the limit of {}",
                s.len(),
                self.max_key_bytes
            )));
        }
        Ok(s)
    }

    /// Runs a key command (see [`Command::is_data`]).
    pub async fn run(&self, cmd: Command) -> Reply {
        self.commands.fetch_add(1, Ordering::Relaxed);
        match self.exec(cmd).await {
            Ok(r) | Err(r) => r,
        }
    }

    async fn exec(&self, cmd: Command) -> Result<Reply, Reply> {
        match cmd {
            Command::Get(k) => {
                let key = self.key(&k)?;
                Ok(match self.cluster.get(key).await.map_err(cluster_err)? {
                    Some(f) => Reply::Bulk(f.value),
                    None => Reply::Null,
                })
            }
            Command::MGet(keys) => {
                let mut reads = self.reads(&keys);
                let mut out = Vec::with_capacity(keys.len());
                let mut bytes = 0;
                while let Some(r) = reads.next().await {
                    let found = r?;
                    bytes += found.as_ref().map_or(0, |f| f.value.len());
                    if bytes > MAX_REPLY_BYTES {
                        return Err(Reply::err(format!(
                            "ERR the values would make a reply over {MAX_REPLY_BYTES} bytes: \
                             ask for fewer keys at once"
                        )));
                    }
                    out.push(found.map_or(Reply::Null, |f| Reply::Bulk(f.value)));
                }
                Ok(Reply::Array(out))
            }
            Command::Exists(keys) => {
                let mut reads = self.reads(&keys);
                let mut n = 0;
                while let Some(r) = reads.next().await {
                    n += i64::from(r?.is_some());
                }
                Ok(Reply::Int(n))
            }
            Command::Ttl { key, millis } => {
                let key = self.key(&key)?;
                Ok(Reply::Int(
                    match self.cluster.get_with_ttl(key).await.map_err(cluster_err)? {
                        None => -2,
                        Some((_, None)) => -1,
                        Some((_, Some(left))) if millis => left.as_millis() as i64,
                        // Redis rounds to the nearest second.
                        Some((_, Some(left))) => (left.as_millis() as i64 + 500) / 1000,
                    },
                ))
            }
            Command::Set {
                key,
                value,
                expiry,
                only,
                get,
            } => self.set(&key, value, expiry, only, get).await,
            Command::Del(keys) => {
                let deletes = keys.iter().map(|k| async move {
                    let key = self.key(k)?;
                    match self.cluster.delete(key, None).await {
                        Ok(w) => Ok(w.replaced),
                        // Applied; whether something was there is unknown
                        // (a concurrent write): counted as deleted.
                        Err(ClusterError::StatusUnknown) => Ok(true),
                        // Ordered just before newer writes: it deleted
                        // nothing a reader could see.
                        Err(ClusterError::Overtaken(_)) => Ok(false),
                        Err(e) => Err(cluster_err(e)),
                    }
                });
                let mut n = 0;
                let deletes: Vec<_> = deletes.collect();
                let mut deletes = stream::iter(deletes).buffered(KEYS_AT_ONCE);
                while let Some(r) = deletes.next().await {
                    n += i64::from(r?);
                }
                Ok(Reply::Int(n))
            }
            Command::MSet(pairs) => {
                // A key given twice ends with its last value, as in Redis:
                // the writes run at once, so only the last one is sent.
                let mut seen = std::collections::HashSet::new();
                let last: Vec<&(Bytes, Bytes)> =
                    pairs.iter().rev().filter(|(k, _)| seen.insert(k)).collect();
                let writes = last.into_iter().map(|(k, v)| async move {
                    let key = self.key(k)?;
                    self.plain_set(key, v.clone(), None).await
                });
                let writes: Vec<_> = writes.collect();
                let mut writes = stream::iter(writes).buffer_unordered(KEYS_AT_ONCE);
                while let Some(r) = writes.next().await {
                    r?;
                }
                Ok(Reply::Ok)
            }
            Command::Expire { key, at, only } => self.expire(&key, at, only).await,
            Command::Persist(key) => {
                let key = self.key(&key)?;
                self.update(key, |cur| match cur {
                    Some((found, Some(_))) => {
                        Ok((Step::Write(found.value.clone(), None), Reply::Int(1)))
                    }
                    _ => Ok((Step::Keep, Reply::Int(0))),
                })
                .await
            }
            Command::IncrBy(key, by) => {
                let key = self.key(&key)?;
                self.update(key, |cur| {
                    let (old, ttl) = match cur {
                        Some((found, ttl)) => (
                            std::str::from_utf8(&found.value)
                                .ok()
                                .and_then(|s| command::int(s.as_bytes()))
                                .ok_or_else(command::not_integer)?,
                            *ttl,
                        ),
                        None => (0, None),
                    };
                    let new = old
                        .checked_add(by)
                        .ok_or_else(|| Reply::err("ERR increment or decrement would overflow"))?;
                    Ok((
                        Step::Write(Bytes::from(new.to_string()), ttl),
                        Reply::Int(new),
                    ))
                })
                .await
            }
            Command::DbSize => {
                let nodes = self.cluster.nodes();
                let stats = join_all(
                    nodes
                        .iter()
                        .filter(|n| n.writable())
                        .map(|n| n.client.stats()),
                )
                .await;
                let items: u64 = stats.into_iter().flatten().map(|s| s.items).sum();
                Ok(Reply::Int(
                    (items / self.cluster.replicas().max(1) as u64) as i64,
                ))
            }
            Command::FlushAll => {
                if !self.allow_flushall {
                    return Err(Reply::err(
                        "ERR FLUSHALL is off on this manager: start it with --resp-allow-flushall",
                    ));
                }
                let nodes = self.cluster.nodes();
                for r in join_all(nodes.iter().map(|n| n.client.flush())).await {
                    r.map_err(|e| Reply::err(format!("ERR flush failed: {e}")))?;
                }
                // The nodes' flush events reach the near cache later: a read
                // right after this reply must not find the old values there.
                if let Some(near) = self.cluster.near_cache() {
                    near.clear();
                }
                Ok(Reply::Ok)
            }
            other => Err(Reply::err(format!(
                "ERR internal error: {other:?} is not a key command"
            ))),
        }
    }

    /// The values of `keys`, in order, a few at a time.
    fn reads<'a>(
        &'a self,
        keys: &'a [Bytes],
    ) -> impl futures::Stream<Item = Result<Option<Found>, Reply>> + Send + 'a {
        // Collected first: a lazy `map` of async closures inside a boxed
        // `Send` future trips the compiler's higher-ranked lifetime check.
        let reads: Vec<_> = keys.iter().map(|k| self.read(k)).collect();
        stream::iter(reads).buffered(KEYS_AT_ONCE)
    }

    async fn read(&self, k: &Bytes) -> Result<Option<Found>, Reply> {
        let key = self.key(k)?;
        self.cluster.get(key).await.map_err(cluster_err)
    }

    /// An unconditional write: `OK` once acknowledged.
    async fn plain_set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), Reply> {
        match self.cluster.set(key, value, ttl, None).await {
            // Acknowledged, ordered just before newer writes of the key.
            Ok(_) | Err(ClusterError::Overtaken(_) | ClusterError::StatusUnknown) => Ok(()),
            Err(e) => Err(cluster_err(e)),
        }
    }

    async fn set(
        &self,
        key: &Bytes,
        value: Bytes,
        expiry: Expiry,
        only: Only,
        get: bool,
    ) -> Result<Reply, Reply> {
        let key = self.key(key)?;
        let ttl = match expiry {
            Expiry::None | Expiry::Keep => None,
            Expiry::In(d) => Some(d),
            Expiry::At(unix_ms) => {
                let left = (unix_ms as i64).saturating_sub(now_ms());
                if left > MAX_TTL_MS {
                    return Err(Reply::err("ERR invalid expire time in 'set' command"));
                }
                if left <= 0 {
                    // Already expired: what Redis leaves is no value.
                    return self.set_expired(key, only, get).await;
                }
                Some(Duration::from_millis(left as u64))
            }
        };
        if !get && expiry != Expiry::Keep {
            let condition = match only {
                Only::IfAbsent => Some(Condition::Absent),
                Only::IfPresent => Some(Condition::Exists),
                _ => None,
            };
            return match condition {
                None => self.plain_set(key, value, ttl).await.map(|()| Reply::Ok),
                Some(c) => match self.cluster.set(key, value, ttl, Some(c)).await {
                    Ok(_) => Ok(Reply::Ok),
                    Err(ClusterError::PreconditionFailed { .. }) => Ok(Reply::Null),
                    Err(e) => Err(cluster_err(e)),
                },
            };
        }
        self.update(key, |cur| {
            let old = match (get, cur) {
                (true, Some((f, _))) => Reply::Bulk(f.value.clone()),
                (true, None) => Reply::Null,
                (false, _) => Reply::Ok,
            };
            let applies = set_applies(only, cur.is_some());
            if !applies {
                return Ok((Step::Keep, if get { old } else { Reply::Null }));
            }
            let ttl = match expiry {
                Expiry::Keep => cur.and_then(|(_, t)| *t),
                _ => ttl,
            };
            Ok((Step::Write(value.clone(), ttl), old))
        })
        .await
    }

    /// A SET whose expiry is already past: the key ends without a value.
    async fn set_expired(&self, key: &str, only: Only, get: bool) -> Result<Reply, Reply> {
        self.update(key, |cur| {
            let applies = set_applies(only, cur.is_some());
            let reply = match (get, cur) {
                (true, Some((f, _))) => Reply::Bulk(f.value.clone()),
                (true, None) => Reply::Null,
                (false, _) if applies => Reply::Ok,
                (false, _) => Reply::Null,
            };
            let step = if applies && cur.is_some() {
                Step::Delete
            } else {
                Step::Keep
            };
            Ok((step, reply))
        })
        .await
    }

    async fn expire(&self, key: &Bytes, at: ExpireAt, only: Only) -> Result<Reply, Reply> {
        let key = self.key(key)?;
        // Taken once: a retry after a lost race keeps the same deadline.
        let left_ms = match at {
            ExpireAt::In(ms) => ms,
            ExpireAt::At(unix_ms) => unix_ms.saturating_sub(now_ms()),
        };
        if left_ms > MAX_TTL_MS {
            return Err(Reply::err("ERR invalid expire time in 'expire' command"));
        }
        self.update(key, |cur| {
            let Some((found, ttl)) = cur else {
                return Ok((Step::Keep, Reply::Int(0)));
            };
            let current = ttl.map(|t| t.as_millis() as i64);
            let applies = match (only, current) {
                (Only::Always, _) => true,
                (Only::IfAbsent, c) => c.is_none(),
                (Only::IfPresent, c) => c.is_some(),
                // No TTL is an infinite one: never earlier than a new one.
                (Only::IfLater, c) => c.is_some_and(|c| left_ms > c),
                (Only::IfEarlier, c) => c.is_none_or(|c| left_ms < c),
            };
            if !applies {
                return Ok((Step::Keep, Reply::Int(0)));
            }
            if left_ms <= 0 {
                return Ok((Step::Delete, Reply::Int(1)));
            }
            Ok((
                Step::Write(
                    found.value.clone(),
                    Some(Duration::from_millis(left_ms as u64)),
                ),
                Reply::Int(1),
            ))
        })
        .await
    }

    /// Reads `key`, lets `decide` choose a write, and makes that write only
    /// if the key still holds what was read; otherwise reads again.
    async fn update(
        &self,
        key: &str,
        mut decide: impl FnMut(Option<&Entry>) -> Result<(Step, Reply), Reply>,
    ) -> Result<Reply, Reply> {
        for attempt in 0..CAS_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(cas_pause(attempt)).await;
            }
            let sent = std::time::Instant::now();
            let mut cur = self.cluster.get_with_ttl(key).await.map_err(cluster_err)?;
            // The TTL left as of when the read was sent: written back (INCR,
            // KEEPTTL), it keeps the same deadline rather than one moved
            // later by each round trip.
            if let Some((_, Some(ttl))) = &mut cur {
                *ttl = ttl
                    .saturating_sub(sent.elapsed())
                    .max(Duration::from_millis(1));
            }
            let (step, reply) = decide(cur.as_ref())?;
            let condition = match &cur {
                Some((f, _)) => Condition::Version(f.version),
                None => Condition::Absent,
            };
            let r = match step {
                Step::Keep => return Ok(reply),
                Step::Write(value, ttl) => self.cluster.set(key, value, ttl, Some(condition)).await,
                Step::Delete => self.cluster.delete(key, Some(condition)).await,
            };
            match r {
                Ok(_) => return Ok(reply),
                Err(ClusterError::PreconditionFailed { .. }) => continue,
                Err(e) => return Err(cluster_err(e)),
            }
        }
        Err(Reply::err(format!(
            "ERR the key changed under this command {CAS_ATTEMPTS} times in a row: try again"
        )))
    }
}
