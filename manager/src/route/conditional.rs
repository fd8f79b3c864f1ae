//! Conditional writes (docs/design/conditional.md): the condition is
//! decided at the key's primary alone, the first replica of its read order,
//! which every manager routing by the same placement computes the same way;
//! only once the primary applied the write is it sent to the other
//! replicas, as a plain write with the same version. The primary
//! unreachable or not answering reads: 503, no failover (two primaries
//! could each let one of two writers on the same version through).

use super::{Routed, WriteOutcome};
use crate::client::{CallError, Change, Condition, Refusal, Written};
use crate::cluster::{Cluster, ClusterError, WRITE_ATTEMPTS};

impl Cluster {
    pub(super) async fn write_if(
        &self,
        key: &str,
        change: Change,
        condition: Condition,
    ) -> Result<WriteOutcome, ClusterError> {
        self.routed(|| self.write_if_once(key, &change, condition))
            .await
    }

    /// One conditional write routed by the current placement.
    async fn write_if_once(
        &self,
        key: &str,
        change: &Change,
        condition: Condition,
    ) -> Result<WriteOutcome, Routed> {
        let view = self.placement()?;
        let nodes = self.nodes();
        let targets = view.write_targets(key, self.replicas);
        self.check_limits(key, change, &targets)?;
        let Some(&primary) = view.replicas(key, self.replicas).first() else {
            return Err(ClusterError::Unavailable.into());
        };
        let unavailable = || ClusterError::PrimaryUnavailable {
            node: nodes[primary].addr().to_string(),
        };
        // Up in this manager's view too: a node it saw miss a write is
        // repaired before it decides anything (its own readable check may
        // not know yet: without etcd no lease requires it).
        if !nodes[primary].readable() {
            return Err(unavailable().into());
        }
        if !nodes[primary].stats().is_some_and(|s| s.conditional_writes) {
            return Err(ClusterError::ConditionsUnsupported {
                node: nodes[primary].addr().to_string(),
            }
            .into());
        }
        // The primary decides. A version not above the key's current one is
        // superseded there: sent again newer, the condition checked again.
        let mut first = None;
        let mut decided = None;
        for _ in 0..WRITE_ATTEMPTS {
            let version = self.clock.next();
            first.get_or_insert(version);
            let r = nodes[primary]
                .client
                .write_if(key, change, version, view.version, Some(condition))
                .await;
            if let Some(newest) = Self::stale(&r) {
                return Err(Routed::Stale(newest));
            }
            match r {
                Ok(Written::Applied(a)) => {
                    decided = Some((a.replaced, version));
                    break;
                }
                Ok(Written::Superseded { version: newer, .. }) => {
                    if !self.observe(primary, newer) {
                        return Err(ClusterError::VersionTooNew {
                            node: nodes[primary].addr().to_string(),
                            version: newer,
                            ahead: ringcache_common::version::ahead_of_wall(newer),
                        }
                        .into());
                    }
                    self.clock.observe(newer);
                }
                Err(CallError::Refused {
                    refusal: Refusal::PreconditionFailed { current },
                    ..
                }) => {
                    return Err(ClusterError::PreconditionFailed {
                        current: (current > 0).then_some(current),
                    }
                    .into())
                }
                Err(CallError::Refused {
                    refusal: Refusal::NotReadable,
                    ..
                }) => return Err(unavailable().into()),
                Err(e) => {
                    if let Some(refused) = self.failed(primary, e) {
                        return Err(refused.into());
                    }
                    // No answer: the primary may have applied it (it is
                    // marked by `failed`). The other replicas are not:
                    // marked while the primary is down, their repair would
                    // drop the ranges they share with it (found by the
                    // race test: the counter lost across node restarts).
                    // A write taken by the primary alone stays there until
                    // the key is written again (docs/design/conditional.md).
                    return Err(ClusterError::ConditionalUnknown.into());
                }
            }
        }
        let Some((replaced, version)) = decided else {
            return Err(ClusterError::Overtaken(WRITE_ATTEMPTS).into());
        };
        if let Some(near) = &self.near {
            near.invalidate(key);
        }
        // The other replicas take it as a plain write with the same version:
        // one holding something newer orders it just before that; one that
        // does not take it is marked and waited out, as for any write.
        let others: Vec<usize> = targets.iter().copied().filter(|&i| i != primary).collect();
        let mut skipped: Vec<usize> = others
            .iter()
            .copied()
            .filter(|&i| !nodes[i].writable())
            .collect();
        let live: Vec<usize> = others
            .iter()
            .copied()
            .filter(|i| !skipped.contains(i))
            .collect();
        let results = futures::future::join_all(
            live.iter()
                .map(|&i| nodes[i].client.write(key, change, version, view.version)),
        )
        .await;
        let mut stale = false;
        for (&i, r) in live.iter().zip(results) {
            match r {
                Ok(Written::Applied(_)) => {}
                Ok(Written::Superseded { version: newer, .. }) => {
                    if self.observe(i, newer) {
                        self.clock.observe(newer);
                    }
                }
                // Routed by a placement that node knows to be old: the
                // node that decided may not be the primary any more, so the
                // write is not acknowledged. It is marked, so that it takes
                // the write (or not) like its peers.
                Err(CallError::StalePlacement { .. }) => {
                    stale = true;
                    skipped.push(i);
                }
                Err(e) => {
                    if e.is_version_too_new() {
                        self.missed_writes(i, "clock behind the write's version");
                    } else if let Some(err) = self.failed(i, e) {
                        tracing::warn!(node = %nodes[i].addr(), error = %err,
                            "a replica refused a conditional write its primary took");
                    }
                    skipped.push(i);
                }
            }
        }
        if stale {
            self.mark_others(&skipped, primary, first.unwrap_or(version));
            return Err(ClusterError::ConditionalUnknown.into());
        }
        self.settle_skipped(&skipped, first.unwrap_or(version))
            .await?;
        Ok(WriteOutcome { replaced, version })
    }

    /// Marks every target but the primary as having missed writes from
    /// `since` (not waited for: the write is not acknowledged).
    fn mark_others(&self, targets: &[usize], primary: usize, since: u64) {
        for &i in targets.iter().filter(|&&i| i != primary) {
            self.mark(i, since);
        }
    }
}
