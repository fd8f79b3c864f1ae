//! The rings requests are routed by, for one placement version: which
//! nodes a key is read from and written to.

use ringcache_proto::pb;

use crate::placement::model::Placement;
use crate::ring::{arcs_where_both, Ring};

/// The rings requests are routed by: one placement version.
///
/// While a hand-off is under way there are two rings over the same member
/// list: `read` (the owners before the change) and `write` (after it).
/// Reads go to `read`'s replicas; writes go to both sets, so that a write
/// acknowledged during the move is on the old owners and the new ones.
pub struct RingView {
    /// The placement version (0: static placement from `--nodes`).
    pub version: u64,
    pub(crate) read: Ring,
    pub(crate) write: Ring,
    /// Ring index → node index.
    pub(crate) members: Vec<usize>,
    /// Nodes whose id is not known yet (static placement only).
    pub missing: usize,
    pub(crate) moving: bool,
    /// The placement this view was built from (from the store only).
    pub placement: Option<Placement>,
}

impl RingView {
    pub(crate) fn empty(missing: usize) -> Self {
        Self {
            version: 0,
            read: Ring::new::<String>(&[], 1),
            write: Ring::new::<String>(&[], 1),
            members: Vec::new(),
            missing,
            moving: false,
            placement: None,
        }
    }

    /// Node indices of `key`'s replicas for reads, the owner first.
    pub fn replicas(&self, key: &str, n: usize) -> Vec<usize> {
        self.read
            .replicas(key, n)
            .into_iter()
            .map(|i| self.members[i])
            .collect()
    }

    /// Node indices `key`'s writes go to: the replicas before and after a
    /// membership change.
    pub fn write_targets(&self, key: &str, n: usize) -> Vec<usize> {
        let mut out = self.replicas(key, n);
        if !self.moving {
            // One ring: the hot path looks the key up once.
            return out;
        }
        for i in self.write.replicas(key, n) {
            let node = self.members[i];
            if !out.contains(&node) {
                out.push(node);
            }
        }
        out
    }

    /// A membership change is under way.
    pub fn moving(&self) -> bool {
        self.moving
    }

    pub(crate) fn ring_index(&self, node: usize) -> Option<usize> {
        self.members.iter().position(|&m| m == node)
    }

    /// Whether node `node` is in the placement (in either ring).
    pub fn contains(&self, node: usize) -> bool {
        self.ring_index(node).is_some()
    }

    /// Hash ranges where `node` and every one of `also` are among the
    /// nodes a key's writes go to.
    pub fn ranges_with(&self, n: usize, node: usize, also: &[usize]) -> Vec<pb::HashRange> {
        let Some(r) = self.ring_index(node) else {
            return Vec::new();
        };
        let others: Option<Vec<usize>> = also.iter().map(|&a| self.ring_index(a)).collect();
        let Some(others) = others else {
            return Vec::new();
        };
        let has = |a: &[usize], b: &[usize], x: usize| a.contains(&x) || b.contains(&x);
        arcs_where_both(&self.read, &self.write, n, |a, b| {
            has(a, b, r) && others.iter().all(|&o| has(a, b, o))
        })
        .into_iter()
        .map(|(start, end)| pb::HashRange { start, end })
        .collect()
    }

    /// Each node's share of the key space as primary owner for reads, by
    /// node index.
    pub fn shares(&self, nodes: usize) -> Vec<f64> {
        let mut out = vec![0.0; nodes];
        for (i, s) in self.read.shares().into_iter().enumerate() {
            if let Some(slot) = out.get_mut(self.members[i]) {
                *slot = s;
            }
        }
        out
    }
}
