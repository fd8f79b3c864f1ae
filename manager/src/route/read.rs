//! Reads: the first synced replica that has the key, falling over to the
//! next on a miss, and read repair of the replicas that missed it.

use bytes::Bytes;

use super::Routed;
use crate::client::{Change, Read};
use crate::cluster::{Cluster, ClusterError};

impl Cluster {
    /// Reads from the first synced replica that has the key, falling over to
    /// the next on a miss, an error or a deadline. A tombstone is final.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, ClusterError> {
        if let Some(v) = self.near.as_ref().and_then(|n| n.get(key)) {
            return Ok(Some(v));
        }
        self.routed(|| self.get_once(key)).await
    }

    async fn get_once(&self, key: &str) -> Result<Option<Bytes>, Routed> {
        let view = self.placement()?;
        let nodes = self.nodes();
        let generation = self.near.as_ref().map(|n| n.generation(key));
        let mut missed = Vec::new();
        let mut answered = false;
        let mut unleased = false;
        for i in view.replicas(key, self.replicas) {
            let node = &nodes[i];
            if !node.readable() {
                continue;
            }
            let r = node.client.get(key, view.version).await;
            if let Some(newest) = Self::stale(&r) {
                return Err(Routed::Stale(newest));
            }
            match r {
                Ok(Read::Hit(hit)) => {
                    self.observe(i, hit.version);
                    if let (Some(near), Some(generation)) = (&self.near, generation) {
                        near.fill(key, hit.value.clone(), i, hit.seq, hit.ttl, generation);
                    }
                    self.read_repair(key, &hit, &missed, view.version);
                    return Ok(Some(hit.value));
                }
                Ok(Read::Deleted(version)) => {
                    self.observe(i, version);
                    return Ok(None);
                }
                Ok(Read::Miss) => {
                    answered = true;
                    missed.push(i);
                }
                Ok(Read::Syncing) => self.needs_repair(i),
                // A manager's lease on the node is missing (lost touch, or
                // not renewed yet after the node came back): ask the next.
                Ok(Read::Unleased) => unleased = true,
                Err(e) => {
                    if let Some(err) = self.failed(i, e) {
                        return Err(err.into());
                    }
                }
            }
        }
        if answered {
            Ok(None)
        } else if unleased {
            Err(Routed::Unleased)
        } else {
            Err(ClusterError::Unavailable.into())
        }
    }

    /// Writes `hit` back, in the background, to replicas that missed it (they
    /// evicted it, say). Versioned, so it never overwrites anything newer.
    fn read_repair(&self, key: &str, hit: &crate::client::Hit, missed: &[usize], placement: u64) {
        let nodes = self.nodes();
        for &i in missed {
            let client = nodes[i].client.clone();
            let key = key.to_string();
            let change = Change::Set {
                value: hit.value.clone(),
                ttl: hit.ttl,
            };
            let version = hit.version;
            tokio::spawn(async move {
                match client.write(&key, &change, version, placement).await {
                    Ok(w) => tracing::debug!(%key, node = %client.addr(), ?w, "read repair"),
                    Err(e) => tracing::debug!(%key, error = %e, "read repair failed"),
                }
            });
        }
    }
}
