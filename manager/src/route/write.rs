//! Writes: to every writable replica at once, sent again above a newer
//! version when no reader can have seen them, and acknowledged without a
//! replica only once its peers hold a dirty mark for it.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use std::time::Duration;

use super::{Routed, WriteOutcome};
use crate::client::{Change, Condition, Written};
use crate::cluster::{Cluster, ClusterError, WRITE_ATTEMPTS};
use crate::write_round::{Next as Round, WriteRound};

impl Cluster {
    /// Writes to every writable replica at once; acknowledged when at least
    /// one took it. With a condition, decided at the key's primary first
    /// (docs/design/conditional.md).
    pub async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        condition: Option<Condition>,
    ) -> Result<WriteOutcome, ClusterError> {
        let change = Change::Set { value, ttl };
        match condition {
            None => self.write(key, change).await,
            Some(c) => self.write_if(key, change, c).await,
        }
    }

    /// Deletes from every writable replica (leaving tombstones); `replaced`
    /// when it deleted a live value.
    pub async fn delete(
        &self,
        key: &str,
        condition: Option<Condition>,
    ) -> Result<WriteOutcome, ClusterError> {
        match condition {
            None => self.write(key, Change::Delete).await,
            Some(c) => self.write_if(key, Change::Delete, c).await,
        }
    }

    /// Refuses a value that one of the replicas could not store, before
    /// anything is written (so replicas with different limits never
    /// disagree on a value).
    pub(super) fn check_limits(
        &self,
        key: &str,
        change: &Change,
        targets: &[usize],
    ) -> Result<(), ClusterError> {
        let Change::Set { value, .. } = change else {
            return Ok(());
        };
        let nodes = self.nodes();
        let size = (key.len() + value.len()) as u64 + ringcache_common::limits::ENTRY_OVERHEAD;
        for &i in targets {
            let node = &nodes[i];
            let Some(stats) = node.stats() else {
                continue;
            };
            let limits = [
                (value.len() as u64, stats.max_value_bytes),
                (size, stats.max_entry_bytes),
            ];
            for (size, limit) in limits {
                if limit > 0 && size > limit {
                    return Err(ClusterError::TooLarge {
                        size,
                        limit,
                        node: node.addr().to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    async fn write(&self, key: &str, change: Change) -> Result<WriteOutcome, ClusterError> {
        self.routed(|| self.write_once(key, &change)).await
    }

    /// One write routed by the current placement.
    async fn write_once(&self, key: &str, change: &Change) -> Result<WriteOutcome, Routed> {
        let view = self.placement()?;
        let nodes = self.nodes();
        let targets = view.write_targets(key, self.replicas);
        self.check_limits(key, change, &targets)?;
        let mut result = Err(ClusterError::Unavailable);
        // Replicas that did not take the write's last attempt, and the
        // version of its first (older than every attempt's).
        let mut skipped = Vec::new();
        let mut first = None;
        let mut round = WriteRound::default();
        // A target's place in the key's read order: the read replicas come
        // first among the targets, in that order (a joining node after).
        let readers = if view.moving() {
            view.replicas(key, self.replicas).len()
        } else {
            targets.len()
        };
        let reader = |i: usize| {
            targets
                .iter()
                .position(|&t| t == i)
                .filter(|&p| p < readers)
        };
        for attempt in 1..=WRITE_ATTEMPTS {
            let version = self.clock.next();
            round.attempt(version);
            first.get_or_insert(version);
            let live: Vec<usize> = targets
                .iter()
                .copied()
                .filter(|&i| nodes[i].writable())
                .collect();
            if live.is_empty() {
                return Err(ClusterError::Unavailable.into());
            }
            skipped.clear();
            skipped.extend(targets.iter().filter(|i| !live.contains(i)));
            let results = futures::future::join_all(
                live.iter()
                    .map(|&i| nodes[i].client.write(key, change, version, view.version)),
            )
            .await;
            // Read-your-writes through this manager: drop the old copy now
            // rather than when the node's invalidation event arrives.
            if let Some(near) = &self.near {
                near.invalidate(key);
            }
            // A node that knows a newer placement took nothing; the others
            // may have: the write is routed again (by the newer placement)
            // with a newer version, which supersedes what they took.
            if let Some(newest) = results.iter().find_map(Self::stale) {
                return Err(Routed::Stale(newest));
            }
            let mut refused = None;
            let mut too_new = None;
            // Replicas whose clock is behind this write's version.
            let mut behind = Vec::new();
            for (&i, r) in live.iter().zip(results) {
                match r {
                    Ok(Written::Applied(a)) => round.applied(i, reader(i), a),
                    Ok(Written::Superseded { version: newer, .. }) if !self.observe(i, newer) => {
                        // No write of ours can land above it: writing again
                        // is useless, and acknowledging would hide that the
                        // replica keeps its value.
                        too_new = Some(ClusterError::VersionTooNew {
                            node: nodes[i].addr().to_string(),
                            version: newer,
                            ahead: ringcache_common::version::ahead_of_wall(newer),
                        });
                    }
                    Ok(Written::Superseded {
                        version: newer,
                        readable,
                    }) => {
                        self.clock.observe(newer);
                        round.superseded(i, reader(i), readable);
                    }
                    Err(e) if e.is_version_too_new() => {
                        behind.push(i);
                        refused.get_or_insert(ClusterError::Rejected(e));
                    }
                    Err(e) => match self.failed(i, e) {
                        Some(err) => {
                            refused.get_or_insert(err);
                        }
                        None => skipped.push(i),
                    },
                }
            }
            if let Some(err) = too_new {
                return Err(err.into());
            }
            // Some replica took the version: the ones that refused it have
            // a clock behind (they dropped their older copy). They are
            // repaired before being read again, like a replica that missed
            // the write. If none took it, this manager's clock is the one
            // ahead: the write is refused (502).
            if round.taken() {
                for &i in &behind {
                    tracing::error!(node = %nodes[i].addr(), version,
                        "the node refused a write version as too far ahead of its clock: its clock is behind");
                    self.missed_writes(i, "clock behind the write's version");
                    skipped.push(i);
                }
            }
            // A replica holds something newer: from a concurrent write, or
            // from one that finished before this one began through a
            // manager whose clock is ahead. Sent again above it only if no
            // reader can have seen this write (write_round.rs).
            result = match (round.next(attempt < WRITE_ATTEMPTS), refused) {
                (Round::Again, _) => continue,
                (Round::Taken(replaced), _) => Ok(WriteOutcome {
                    replaced,
                    version: round.version().unwrap_or(version),
                }),
                (_, Some(err)) => Err(err),
                (Round::Overtaken, None) => Err(ClusterError::Overtaken(WRITE_ATTEMPTS)),
                (Round::Unsure, _) => Err(ClusterError::StatusUnknown),
                (Round::Nothing, None) => Err(ClusterError::Unavailable),
            };
            break;
        }
        // A write answered "status unknown" was applied all the same: the
        // replicas that missed it are marked like those of an acknowledged
        // one.
        if matches!(result, Ok(_) | Err(ClusterError::StatusUnknown)) {
            self.settle_skipped(&skipped, first.unwrap_or_default())
                .await?;
        }
        result.map_err(Routed::from)
    }

    /// Replicas that missed a write must be known to have missed it, by
    /// nodes that outlive this manager, before it is acknowledged: a mark
    /// from the write's (first attempt's) version `since` on, placed for
    /// this write (an earlier one may have been cleared by another
    /// manager's repair meanwhile); and, with leases, they must have
    /// stopped answering reads (another manager may still reach them).
    pub(super) async fn settle_skipped(
        &self,
        skipped: &[usize],
        since: u64,
    ) -> Result<(), ClusterError> {
        let nodes = self.nodes();
        for &i in skipped {
            if self.lease.is_some() && !self.registered.load(Ordering::Acquire) {
                // The nodes do not wait for our lease: nothing stops a
                // reader of the replica that missed it.
                return Err(ClusterError::Unavailable);
            }
            if !self.await_marked(i, since).await {
                tracing::warn!(node = %nodes[i].addr(), "the dirty mark was not held in time: write not acknowledged");
                return Err(ClusterError::Unavailable);
            }
            self.await_unleased(i).await;
            // Still registered (it may have lapsed while waiting).
            if self.lease.is_some() && !self.registered.load(Ordering::Acquire) {
                return Err(ClusterError::Unavailable);
            }
        }
        Ok(())
    }
}
