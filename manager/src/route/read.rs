//! Reads: the first readable replica in read order answers, and its
//! answer is final, a miss included (docs/design/consistency.md,
//! "Linearizable keys"). Falling over to the next replica on a miss would
//! show readers a write that replica took before the first one did, a
//! write the first one may then supersede and the router send again above
//! a newer one: the value would be seen, replaced, and come back. A miss
//! there means the key was evicted or dropped, which a cache may always
//! answer; the client's next write recreates it.

use std::time::Duration;

use super::Routed;
use crate::client::{Found, Read};
use crate::cluster::{Cluster, ClusterError};

impl Cluster {
    /// Reads from the first readable replica, falling over to the next on an
    /// error, a deadline, or a replica that cannot answer reads (syncing,
    /// unleased). A value, a tombstone or a miss is final.
    pub async fn get(&self, key: &str) -> Result<Option<Found>, ClusterError> {
        if let Some(v) = self.near.as_ref().and_then(|n| n.get(key)) {
            return Ok(Some(v));
        }
        Ok(self
            .routed(|| self.get_once(key))
            .await?
            .map(|(found, _)| found))
    }

    /// Like [`Cluster::get`], with the time the value has left before it
    /// expires (None: no TTL); never from the near cache, which does not
    /// keep TTLs.
    pub async fn get_with_ttl(
        &self,
        key: &str,
    ) -> Result<Option<(Found, Option<Duration>)>, ClusterError> {
        self.routed(|| self.get_once(key)).await
    }

    async fn get_once(&self, key: &str) -> Result<Option<(Found, Option<Duration>)>, Routed> {
        let view = self.placement()?;
        let nodes = self.nodes();
        let generation = self.near.as_ref().map(|n| n.generation(key));
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
                    let found = Found {
                        value: hit.value,
                        version: hit.version,
                    };
                    if let (Some(near), Some(generation)) = (&self.near, generation) {
                        near.fill(key, found.clone(), i, hit.seq, hit.ttl, generation);
                    }
                    return Ok(Some((found, hit.ttl)));
                }
                Ok(Read::Deleted(version)) => {
                    self.observe(i, version);
                    return Ok(None);
                }
                Ok(Read::Miss) => return Ok(None),
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
        if unleased {
            Err(Routed::Unleased)
        } else {
            Err(ClusterError::Unavailable.into())
        }
    }
}
