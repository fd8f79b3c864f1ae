//! Consistent hash ring with virtual nodes.
//!
//! Each node is placed at `vnodes` points, the xxh3 hashes of `"{id}#{i}"`;
//! a key belongs to the first point at or after its own hash, clockwise, and
//! its replicas to the next distinct nodes after that. Placement depends only
//! on the set of node ids (ties between equal hashes are broken by id), so
//! two managers given the same nodes in any order agree on every key.

use xxhash_rust::xxh3::xxh3_64;

/// Virtual nodes per node by default. A node's share of the key space has a
/// relative standard deviation of about `1/sqrt(vnodes)`: about 3% here.
pub const DEFAULT_VNODES: usize = 1024;

/// A ring over nodes identified by strings; lookups return indices into the
/// id list the ring was built from.
#[derive(Debug, Clone)]
pub struct Ring {
    /// (point, node index), sorted by point then by node id.
    points: Vec<(u64, usize)>,
    /// Nodes with points (those included).
    nodes: usize,
    /// Length of the id list the ring was built from (indices go up to it).
    len: usize,
}

/// Hash of a key on the ring (shared with the data nodes' range scans).
pub use ringcache_common::hash::key_hash;

impl Ring {
    pub fn new<S: AsRef<str>>(ids: &[S], vnodes: usize) -> Self {
        Self::subset(ids, vnodes, |_| true)
    }

    /// A ring over the ids `include` accepts, indexed like the whole list,
    /// so that two rings over the same list (the placements before and
    /// after a membership change) name each node by the same index.
    pub fn subset<S: AsRef<str>>(
        ids: &[S],
        vnodes: usize,
        include: impl Fn(usize) -> bool,
    ) -> Self {
        let vnodes = vnodes.max(1);
        let mut points = Vec::with_capacity(ids.len() * vnodes);
        let mut nodes = 0;
        for (n, id) in ids.iter().enumerate() {
            if !include(n) {
                continue;
            }
            nodes += 1;
            for v in 0..vnodes {
                points.push((xxh3_64(format!("{}#{v}", id.as_ref()).as_bytes()), n));
            }
        }
        points.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| ids[a.1].as_ref().cmp(ids[b.1].as_ref()))
        });
        Self {
            points,
            nodes,
            len: ids.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.nodes == 0
    }

    /// Up to `n` distinct nodes for `key`, the owner first.
    pub fn replicas(&self, key: &str, n: usize) -> Vec<usize> {
        self.replicas_for_hash(key_hash(key), n)
    }

    fn replicas_for_hash(&self, h: u64, n: usize) -> Vec<usize> {
        let n = n.min(self.nodes);
        let mut out = Vec::with_capacity(n);
        if n == 0 {
            return out;
        }
        let start = self.points.partition_point(|&(p, _)| p < h);
        for i in 0..self.points.len() {
            let node = self.points[(start + i) % self.points.len()].1;
            if !out.contains(&node) {
                out.push(node);
                if out.len() == n {
                    break;
                }
            }
        }
        out
    }

    /// The owner of `key`.
    pub fn owner(&self, key: &str) -> Option<usize> {
        self.replicas(key, 1).first().copied()
    }

    /// The arcs `(start, end]` of hash space (as `HashRange`s: wrapping when
    /// `start >= end`) whose replica set of `n` nodes satisfies `pred`,
    /// adjacent arcs merged. Used to tell a node which keys to copy.
    pub fn arcs_where(&self, n: usize, pred: impl Fn(&[usize]) -> bool) -> Vec<(u64, u64)> {
        arcs_where_both(self, self, n, |a, _| pred(a))
    }

    /// Each node's share of the key space (as primary owner), summing to 1
    /// over the included nodes.
    pub fn shares(&self) -> Vec<f64> {
        let mut shares = vec![0.0; self.len];
        let Some(&(last, _)) = self.points.last() else {
            return shares;
        };
        // The arc before each point belongs to that point's node; the first
        // point also owns the wrap-around arc after the last one.
        let mut prev = last;
        for &(p, n) in &self.points {
            shares[n] += p.wrapping_sub(prev) as f64 / 2f64.powi(64);
            prev = p;
        }
        if self.points.len() == 1 || self.points.iter().all(|&(p, _)| p == last) {
            shares[self.points[0].1] = 1.0;
        }
        shares
    }
}

/// The arcs `(start, end]` on which the replica sets of `n` nodes in ring
/// `a` and in ring `b` together satisfy `pred` (adjacent arcs merged). Both
/// rings must index the same id list (see [`Ring::subset`]): with the rings
/// before and after a membership change, this finds the keys that move.
pub fn arcs_where_both(
    a: &Ring,
    b: &Ring,
    n: usize,
    pred: impl Fn(&[usize], &[usize]) -> bool,
) -> Vec<(u64, u64)> {
    // Between two consecutive points of either ring, both replica sets are
    // constant: the arc (prev, p] has the sets of a key hashing to p.
    let mut points: Vec<u64> = a.points.iter().chain(&b.points).map(|p| p.0).collect();
    points.sort_unstable();
    points.dedup();
    let mut out: Vec<(u64, u64)> = Vec::new();
    let Some(&last) = points.last() else {
        return out;
    };
    let holds = |p: u64| pred(&a.replicas_for_hash(p, n), &b.replicas_for_hash(p, n));
    if points.len() == 1 {
        // One point: the whole circle has one pair of sets.
        return if holds(last) { vec![(last, last)] } else { out };
    }
    let mut prev = last;
    for &p in &points {
        if holds(p) {
            match out.last_mut() {
                Some(arc) if arc.1 == prev => arc.1 = p,
                _ => out.push((prev, p)),
            }
        }
        prev = p;
    }
    // The first arc starts where the last one ends: join them.
    if out.len() > 1 && out[0].0 == out[out.len() - 1].1 {
        if let Some((start, _)) = out.pop() {
            out[0].0 = start;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://10.0.0.{i}:50051")).collect()
    }

    fn counts(ring: &Ring, keys: usize) -> Vec<usize> {
        let mut c = vec![0; ring.nodes];
        for k in 0..keys {
            c[ring.owner(&format!("key-{k}")).unwrap()] += 1;
        }
        c
    }

    fn rel_stddev(c: &[usize]) -> f64 {
        let mean = c.iter().sum::<usize>() as f64 / c.len() as f64;
        let var = c.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / c.len() as f64;
        var.sqrt() / mean
    }

    #[test]
    fn keys_spread_evenly_over_nodes() {
        for n in [3, 10] {
            let ring = Ring::new(&ids(n), DEFAULT_VNODES);
            let c = counts(&ring, 200_000);
            let sd = rel_stddev(&c);
            assert!(sd < 0.06, "{n} nodes: stddev {sd:.3} of mean, counts {c:?}");
        }
    }

    #[test]
    fn shares_sum_to_one_and_match_key_counts() {
        let ring = Ring::new(&ids(3), DEFAULT_VNODES);
        let shares = ring.shares();
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let c = counts(&ring, 100_000);
        for (s, c) in shares.iter().zip(&c) {
            assert!(
                (s - *c as f64 / 100_000.0).abs() < 0.01,
                "{shares:?} vs {c:?}"
            );
        }
    }

    #[test]
    fn adding_a_node_moves_about_its_share_and_only_to_it() {
        let old = Ring::new(&ids(4), DEFAULT_VNODES);
        let new_ids = ids(5);
        let new = Ring::new(&new_ids, DEFAULT_VNODES);
        let keys = 100_000;
        let mut moved = 0;
        for k in 0..keys {
            let key = format!("key-{k}");
            let (a, b) = (old.owner(&key).unwrap(), new.owner(&key).unwrap());
            if a != b {
                moved += 1;
                // A key only ever moves to the new node.
                assert_eq!(b, 4, "{key} moved between old nodes");
            }
        }
        let frac = moved as f64 / keys as f64;
        assert!(
            (frac - 0.2).abs() < 0.02,
            "moved {frac:.3}, expected about 1/5"
        );
    }

    #[test]
    fn placement_ignores_the_order_nodes_are_given_in() {
        let a = ids(5);
        let mut b = a.clone();
        b.reverse();
        b.swap(0, 2);
        let (ra, rb) = (Ring::new(&a, 64), Ring::new(&b, 64));
        for k in 0..5000 {
            let key = format!("k{k}");
            let pa: Vec<&str> = ra
                .replicas(&key, 3)
                .iter()
                .map(|&i| a[i].as_str())
                .collect();
            let pb: Vec<&str> = rb
                .replicas(&key, 3)
                .iter()
                .map(|&i| b[i].as_str())
                .collect();
            assert_eq!(pa, pb);
        }
    }

    #[test]
    fn arcs_contain_exactly_the_keys_whose_replica_sets_match() {
        let ring = Ring::new(&ids(4), 64);
        let arcs = ring.arcs_where(2, |r| r.contains(&1));
        let inside = |h: u64| {
            arcs.iter().any(|&(s, e)| {
                if s < e {
                    s < h && h <= e
                } else {
                    h > s || h <= e
                }
            })
        };
        for k in 0..20_000 {
            let key = format!("k{k}");
            let want = ring.replicas(&key, 2).contains(&1);
            assert_eq!(inside(key_hash(&key)), want, "{key}");
        }
        let both = ring.arcs_where(2, |r| r.contains(&1) && r.contains(&2));
        assert!(!both.is_empty() && both.len() < arcs.len());
        assert_eq!(
            Ring::new(&ids(1), 8)
                .arcs_where(2, |r| r.contains(&0))
                .len(),
            1
        );
        assert!(Ring::new::<String>(&[], 8)
            .arcs_where(2, |_| true)
            .is_empty());
    }

    #[test]
    fn a_subset_ring_indexes_the_whole_list_and_finds_the_keys_that_move() {
        let all = ids(4);
        let before = Ring::subset(&all, 64, |i| i != 3);
        let after = Ring::new(&all, 64);
        assert_eq!(before.shares()[3], 0.0);
        // Keys whose replica sets gain node 3: exactly those that move to it.
        let gain = arcs_where_both(&before, &after, 2, |b, a| a.contains(&3) && !b.contains(&3));
        let inside = |h: u64| {
            gain.iter().any(|&(s, e)| {
                if s < e {
                    s < h && h <= e
                } else {
                    h > s || h <= e
                }
            })
        };
        let mut moved = 0;
        for k in 0..20_000 {
            let key = format!("k{k}");
            let (b, a) = (before.replicas(&key, 2), after.replicas(&key, 2));
            assert!(!b.contains(&3));
            assert_eq!(inside(key_hash(&key)), a.contains(&3), "{key}");
            moved += usize::from(a.contains(&3));
        }
        // Node 3 takes about half of 2-of-4 replica sets (64 vnodes: +-20%).
        assert!((7_000..13_000).contains(&moved), "{moved}");
    }

    #[test]
    fn replicas_are_distinct_and_bounded_by_node_count() {
        let ring = Ring::new(&ids(3), 16);
        for k in 0..1000 {
            let r = ring.replicas(&format!("k{k}"), 2);
            assert_eq!(r.len(), 2);
            assert_ne!(r[0], r[1]);
            assert_eq!(r[0], ring.owner(&format!("k{k}")).unwrap());
        }
        assert_eq!(ring.replicas("k", 10).len(), 3);
        assert!(Ring::new::<String>(&[], 16).replicas("k", 2).is_empty());
        assert_eq!(Ring::new(&ids(1), 16).replicas("k", 2), vec![0]);
    }
}
