//! Read leases (docs/design/membership.md, "Partitions"): a node answers
//! consistent reads only while every registered manager's lease on it is
//! unexpired, so a manager that cannot reach the node knows, `lease` after
//! its last renewal, that the node serves no reads that could miss its
//! writes.
//!
//! A lease runs from the moment this node sent the heartbeat the renewal
//! names, not from when the renewal arrived: the manager received that
//! heartbeat before it sent the renewal, so the node's expiry is never
//! later than the manager's own bound (renewal sent + lease), however long
//! the renewal was delayed (a stalled process, a held link).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ringcache_proto::pb;

/// Longest lease granted.
const MAX_LEASE: Duration = Duration::from_secs(3600);
/// Heartbeats remembered for renewals; older ones are refused.
const HEARTBEATS: usize = 64;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
pub struct Leases {
    /// (seq, when it was sent) of recent heartbeats.
    heartbeats: Mutex<VecDeque<(u64, Instant)>>,
    /// Manager id → lease expiry.
    grants: Mutex<HashMap<String, Instant>>,
    /// Registered managers, at a revision.
    required: Mutex<(u64, Vec<String>)>,
}

impl Leases {
    /// Heartbeat `seq` is being sent (call before publishing it).
    pub fn heartbeat(&self, seq: u64, at: Instant) {
        let mut h = lock(&self.heartbeats);
        if h.len() == HEARTBEATS {
            h.pop_front();
        }
        h.push_back((seq, at));
    }

    /// Renews `manager`'s lease for `lease` from when heartbeat `seq` was
    /// sent; false when that heartbeat is unknown.
    pub fn renew(&self, manager: &str, seq: u64, lease: Duration) -> bool {
        let Some(sent) = lock(&self.heartbeats)
            .iter()
            .find(|h| h.0 == seq)
            .map(|h| h.1)
        else {
            return false;
        };
        // A lease longer than an hour is a client's mistake, not a reason
        // to overflow.
        let Some(expiry) = sent.checked_add(lease.min(MAX_LEASE)) else {
            return false;
        };
        let mut grants = lock(&self.grants);
        let e = grants.entry(manager.to_string()).or_insert(expiry);
        *e = (*e).max(expiry);
        true
    }

    /// Sets the registered managers unless `revision` is older than the
    /// one held.
    pub fn set_required(&self, revision: u64, managers: Vec<String>) -> bool {
        let mut r = lock(&self.required);
        if revision < r.0 {
            return false;
        }
        if r.1 != managers {
            tracing::info!(revision, ?managers, "registered managers");
        }
        *r = (revision, managers);
        // Forget leases of managers gone for good.
        let keep = r.1.clone();
        lock(&self.grants).retain(|m, _| keep.contains(m));
        true
    }

    /// Every registered manager's lease is unexpired at `now`.
    pub fn held_at(&self, now: Instant) -> bool {
        let required = lock(&self.required);
        if required.1.is_empty() {
            return true;
        }
        let grants = lock(&self.grants);
        required
            .1
            .iter()
            .all(|m| grants.get(m).is_some_and(|&e| e > now))
    }

    pub fn held(&self) -> bool {
        self.held_at(Instant::now())
    }

    /// For Stats.
    pub fn list(&self) -> Vec<pb::ReadLease> {
        let now = Instant::now();
        let required = lock(&self.required).1.clone();
        let grants = lock(&self.grants);
        let mut ids: Vec<&String> = grants.keys().chain(required.iter()).collect();
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .map(|m| pb::ReadLease {
                manager_id: m.clone(),
                remaining_ms: grants
                    .get(m)
                    .map_or(0, |&e| e.saturating_duration_since(now).as_millis() as u64),
                required: required.contains(m),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_registered_managers_reads_need_no_lease() {
        let l = Leases::default();
        assert!(l.held());
    }

    #[test]
    fn a_lease_runs_from_the_named_heartbeat_not_from_the_renewal() {
        let l = Leases::default();
        let t0 = Instant::now();
        l.heartbeat(5, t0);
        l.set_required(1, vec!["m1".into()]);
        assert!(!l.held_at(t0), "no lease yet");
        // A renewal that arrives late still counts from heartbeat 5.
        assert!(l.renew("m1", 5, Duration::from_secs(2)));
        assert!(l.held_at(t0 + Duration::from_millis(1999)));
        assert!(!l.held_at(t0 + Duration::from_secs(2)));
        // An unknown heartbeat renews nothing.
        assert!(!l.renew("m1", 6, Duration::from_secs(60)));
        assert!(!l.held_at(t0 + Duration::from_secs(3)));
    }

    #[test]
    fn every_registered_manager_must_hold_a_lease() {
        let l = Leases::default();
        let t0 = Instant::now();
        l.heartbeat(1, t0);
        l.set_required(3, vec!["m1".into(), "m2".into()]);
        l.renew("m1", 1, Duration::from_secs(2));
        assert!(!l.held_at(t0), "m2 holds none");
        l.renew("m2", 1, Duration::from_secs(2));
        assert!(l.held_at(t0));
        // An older registry revision is ignored; a newer one without m2
        // frees reads from m2's lease.
        assert!(!l.set_required(2, vec![]));
        assert!(l.set_required(4, vec!["m1".into()]));
        assert_eq!(l.list().len(), 1);
    }

    #[test]
    fn old_heartbeats_are_forgotten() {
        let l = Leases::default();
        let t0 = Instant::now();
        for seq in 0..(HEARTBEATS as u64 + 10) {
            l.heartbeat(seq, t0);
        }
        assert!(!l.renew("m", 0, Duration::from_secs(1)));
        assert!(l.renew("m", HEARTBEATS as u64 + 9, Duration::from_secs(1)));
    }
}
