//! `--nodes` entries that are DNS names with several addresses (a compose
//! service scaled with `--scale`, a Kubernetes headless service): with
//! `--etcd`, each name is looked up every few seconds, and the nodes behind
//! new answers are added to the placement, the ones behind vanished answers
//! removed (with hand-off), through the same calls as the admin API.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::etcd::Etcd;
use super::Placement;
use crate::client::NodeClient;
use crate::cluster::Cluster;

/// How often the names are looked up again.
const EVERY: Duration = Duration::from_secs(5);

/// The `--nodes` entries worth looking up: a host name, not an address.
pub fn names(entries: &[String]) -> Vec<(String, u16)> {
    entries
        .iter()
        .filter_map(|e| crate::config::host_name(&crate::config::parse_node(e).1))
        .collect()
}

/// What the lookups found so far: each address's node id, and since when
/// the address has been missing from the answers.
#[derive(Debug, Default)]
pub struct Known {
    addrs: BTreeMap<SocketAddr, (String, Option<Instant>)>,
}

impl Known {
    pub fn insert(&mut self, addr: SocketAddr, id: String) {
        self.addrs.insert(addr, (id, None));
    }

    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.addrs.contains_key(addr)
    }
}

/// What one complete lookup changes: addresses to add (ask their ids), and
/// the member to remove, if any.
///
/// A member is removed only once its address has been missing from the
/// answers for `grace` (a pod that is briefly not ready, a container
/// paused or restarting, drops out of the answers and comes back: removing
/// it would start a full hand-off and another one back). An address that
/// answers again within the grace is kept. Only members this task found at
/// that address are removed, one at a time and only while no membership
/// change is under way, so a scale-down by several nodes hands each one's
/// share off before the next leaves.
pub fn changes(
    resolved: &BTreeSet<SocketAddr>,
    known: &mut Known,
    placement: &Placement,
    now: Instant,
    grace: Duration,
) -> (Vec<SocketAddr>, Vec<String>) {
    let add = resolved
        .iter()
        .filter(|a| !known.contains(a))
        .copied()
        .collect();
    for (addr, (_, missing)) in known.addrs.iter_mut() {
        if resolved.contains(addr) {
            *missing = None;
        } else {
            missing.get_or_insert(now);
        }
    }
    // Addresses gone for good and not members (any more): forget them.
    known.addrs.retain(|a, (id, missing)| {
        let member_here = placement
            .member(id)
            .is_some_and(|m| m.address == format!("http://{a}"));
        missing.is_none() || member_here
    });
    if placement.moving() {
        return (add, Vec::new());
    }
    let remove = known
        .addrs
        .iter()
        .filter(|(_, (_, missing))| {
            missing.is_some_and(|m| now.saturating_duration_since(m) >= grace)
        })
        .map(|(_, (id, _))| id.clone())
        .take(1)
        .collect();
    (add, remove)
}

/// Follows the names until `shutdown`; `grace`: see [`changes`].
pub async fn run(
    store: Etcd,
    cluster: Arc<Cluster>,
    names: Vec<(String, u16)>,
    grace: Duration,
    shutdown: CancellationToken,
) {
    if names.is_empty() {
        return;
    }
    let mut known = Known::default();
    loop {
        let mut resolved = BTreeSet::new();
        let mut complete = true;
        for (host, port) in &names {
            match tokio::net::lookup_host((host.as_str(), *port)).await {
                Ok(addrs) => resolved.extend(addrs),
                Err(e) => {
                    // A failed lookup is no answer: remove nothing.
                    tracing::debug!(%host, error = %e, "lookup failed");
                    complete = false;
                }
            }
        }
        if let (true, Ok(Some(current))) = (complete, super::load(&store).await) {
            let (add, remove) = changes(
                &resolved,
                &mut known,
                &current.placement,
                Instant::now(),
                grace,
            );
            for addr in add {
                let uri = format!("http://{addr}");
                let connect = cluster.connect();
                let Ok(client) = NodeClient::new(&uri, connect) else {
                    continue;
                };
                let Ok(stats) = client.stats().await else {
                    continue;
                };
                let id = stats.node_id;
                known.insert(addr, id.clone());
                if let Some(m) = current.placement.member(&id) {
                    // The same node (same id) answering at a new address: a
                    // container or pod that came back with a new IP.
                    if m.address != uri {
                        tracing::info!(%id, from = %m.address, to = %uri, "a member answers at a new address");
                        if let Err(e) = super::update(&store, |p| p.readdress(&id, &uri)).await {
                            tracing::warn!(error = %e, "re-addressing a member");
                        }
                    }
                    continue;
                }
                tracing::info!(%uri, %id, "a --nodes name gives a new node: adding it");
                if let Err(e) = super::update(&store, |p| p.add(&id, &uri)).await {
                    tracing::warn!(error = %e, "adding a discovered node");
                }
            }
            for id in remove {
                tracing::info!(%id, ?grace, "a --nodes name has not given this node for the grace period: removing it");
                if let Err(e) = super::update(&store, |p| p.remove(&id)).await {
                    tracing::warn!(error = %e, "removing a vanished node");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_host_names_are_looked_up() {
        let n = names(&[
            "http://10.0.0.1:50051".into(),
            "n1=http://datanode:50051".into(),
            "cache.svc.local:7000".into(),
            "http://[::1]:50051".into(),
        ]);
        assert_eq!(
            n,
            [
                ("datanode".to_string(), 50051),
                ("cache.svc.local".to_string(), 7000)
            ]
        );
    }

    fn members(p: &[(&str, &str)]) -> Placement {
        Placement::of(p.iter().map(|(id, a)| (id.to_string(), a.to_string())))
    }

    const GRACE: Duration = Duration::from_secs(30);

    #[test]
    fn new_answers_are_added_and_vanished_ones_removed_after_the_grace() {
        let p = members(&[
            ("a", "http://datanode:50051"),
            ("b", "http://10.0.0.2:50051"),
        ]);
        let mut known = Known::default();
        known.insert(addr("10.0.0.1:50051"), "a".into());
        known.insert(addr("10.0.0.2:50051"), "b".into());
        let t0 = Instant::now();
        // 10.0.0.3 is new; 10.0.0.2 (added at that address) and 10.0.0.1
        // (a member under its name, not added here) are gone.
        let resolved = BTreeSet::from([addr("10.0.0.3:50051")]);
        let (add, remove) = changes(&resolved, &mut known, &p, t0, GRACE);
        assert_eq!(add, [addr("10.0.0.3:50051")]);
        assert!(remove.is_empty(), "not before the grace");
        let (_, remove) = changes(&resolved, &mut known, &p, t0 + GRACE / 2, GRACE);
        assert!(remove.is_empty());
        let (_, remove) = changes(&resolved, &mut known, &p, t0 + GRACE, GRACE);
        assert_eq!(remove, ["b".to_string()]);
    }

    #[test]
    fn a_node_back_within_the_grace_is_kept() {
        let p = members(&[("b", "http://10.0.0.2:50051")]);
        let mut known = Known::default();
        known.insert(addr("10.0.0.2:50051"), "b".into());
        let t0 = Instant::now();
        let gone = BTreeSet::new();
        let back = BTreeSet::from([addr("10.0.0.2:50051")]);
        assert!(changes(&gone, &mut known, &p, t0, GRACE).1.is_empty());
        // Back before the grace ran out: the clock starts over.
        let (add, remove) = changes(&back, &mut known, &p, t0 + GRACE / 2, GRACE);
        assert!(add.is_empty() && remove.is_empty());
        assert!(changes(&gone, &mut known, &p, t0 + GRACE, GRACE)
            .1
            .is_empty());
        assert_eq!(
            changes(&gone, &mut known, &p, t0 + GRACE * 2, GRACE).1,
            ["b".to_string()]
        );
    }

    #[test]
    fn a_scale_down_removes_one_node_at_a_time_each_after_its_hand_off() {
        let mut p = members(&[
            ("a", "http://10.0.0.1:50051"),
            ("b", "http://10.0.0.2:50051"),
            ("c", "http://10.0.0.3:50051"),
        ]);
        let mut known = Known::default();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            known.insert(addr(&format!("10.0.0.{}:50051", i + 1)), id.to_string());
        }
        let only_a = BTreeSet::from([addr("10.0.0.1:50051")]);
        let t0 = Instant::now();
        changes(&only_a, &mut known, &p, t0, GRACE);
        let (_, first) = changes(&only_a, &mut known, &p, t0 + GRACE, GRACE);
        assert_eq!(first.len(), 1, "one at a time: {first:?}");
        // Its hand-off is under way: nothing else leaves meanwhile.
        p.remove(&first[0]).unwrap();
        assert!(p.moving());
        let (_, during) = changes(&only_a, &mut known, &p, t0 + GRACE * 2, GRACE);
        assert!(during.is_empty(), "{during:?}");
    }

    #[test]
    fn nothing_changes_when_the_answers_do_not() {
        let p = members(&[("a", "http://10.0.0.1:50051")]);
        let mut known = Known::default();
        known.insert(addr("10.0.0.1:50051"), "a".into());
        let same = BTreeSet::from([addr("10.0.0.1:50051")]);
        let t0 = Instant::now();
        for k in 0..3 {
            assert_eq!(
                changes(&same, &mut known, &p, t0 + GRACE * k, GRACE),
                (vec![], vec![])
            );
        }
    }
}
