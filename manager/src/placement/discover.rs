//! `--nodes` entries that are DNS names with several addresses (a compose
//! service scaled with `--scale`, a Kubernetes headless service): with
//! `--etcd`, each name is looked up every few seconds, and the nodes behind
//! new answers are added to the placement, the ones behind vanished answers
//! removed (with hand-off), through the same calls as the admin API.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
        .filter_map(|e| {
            let (_, uri) = crate::config::parse_node(e);
            let authority = uri.split("://").nth(1)?.split('/').next()?;
            let (host, port) = authority.rsplit_once(':')?;
            let port: u16 = port.parse().ok()?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            (host.parse::<std::net::IpAddr>().is_err()).then(|| (host.to_string(), port))
        })
        .collect()
}

/// What a lookup changes: addresses to add (ask their ids), and members to
/// remove: those this task added at an address the name no longer gives.
pub fn changes(
    resolved: &BTreeSet<SocketAddr>,
    known: &BTreeMap<SocketAddr, String>,
    placement: &Placement,
) -> (Vec<SocketAddr>, Vec<String>) {
    let add = resolved
        .iter()
        .filter(|a| !known.contains_key(a))
        .copied()
        .collect();
    let remove = known
        .iter()
        .filter(|(a, _)| !resolved.contains(a))
        .filter(|(a, id)| {
            placement
                .member(id)
                .is_some_and(|m| m.address == format!("http://{a}"))
        })
        .map(|(_, id)| id.clone())
        .collect();
    (add, remove)
}

/// Follows the names until `shutdown`.
pub async fn run(
    store: Etcd,
    cluster: Arc<Cluster>,
    names: Vec<(String, u16)>,
    shutdown: CancellationToken,
) {
    if names.is_empty() {
        return;
    }
    let mut known: BTreeMap<SocketAddr, String> = BTreeMap::new();
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
        if let Ok(Some(current)) = super::load(&store).await {
            let (add, remove) = changes(&resolved, &known, &current.placement);
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
                if current.placement.member(&id).is_some() {
                    continue;
                }
                tracing::info!(%uri, %id, "a --nodes name gives a new node: adding it");
                if let Err(e) = super::update(&store, |p| p.add(&id, &uri)).await {
                    tracing::warn!(error = %e, "adding a discovered node");
                }
            }
            if complete {
                for id in remove {
                    tracing::info!(%id, "a --nodes name no longer gives this node: removing it");
                    if let Err(e) = super::update(&store, |p| p.remove(&id)).await {
                        tracing::warn!(error = %e, "removing a vanished node");
                    }
                }
                known.retain(|a, _| resolved.contains(a));
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

    #[test]
    fn new_answers_are_added_and_vanished_ones_it_added_removed() {
        let p = Placement::of([
            ("a".to_string(), "http://datanode:50051".to_string()),
            ("b".to_string(), "http://10.0.0.2:50051".to_string()),
        ]);
        let known = BTreeMap::from([
            (addr("10.0.0.1:50051"), "a".to_string()),
            (addr("10.0.0.2:50051"), "b".to_string()),
        ]);
        // 10.0.0.3 is new; 10.0.0.2 (added at that address) and 10.0.0.1
        // (a member under its name, not added here) are gone.
        let resolved = BTreeSet::from([addr("10.0.0.3:50051")]);
        let (add, remove) = changes(&resolved, &known, &p);
        assert_eq!(add, [addr("10.0.0.3:50051")]);
        assert_eq!(remove, ["b".to_string()]);
        // Nothing changes when the answers do not.
        let same = BTreeSet::from([addr("10.0.0.1:50051"), addr("10.0.0.2:50051")]);
        assert_eq!(changes(&same, &known, &p), (vec![], vec![]));
    }
}
