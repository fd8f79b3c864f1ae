//! Dirty marks kept in etcd (with `--etcd`), beside the copies on the
//! node's peers (docs/design/consistency.md, "Marks that outlive their
//! holders").
//!
//! A mark on a peer lives in that peer's memory: when every peer holding it
//! restarts, nothing records any more that the node missed writes, and it
//! would be admitted with its older values. In etcd a mark survives any
//! node and any manager. Each manager writes its own key per episode,
//! `marks/<node id>/<since, 16 hex digits>-<manager id>`, so no two writers
//! race on one key; a repair round deletes the keys it read before its
//! copy, each only if unchanged since (a mark written again meanwhile, by
//! a later episode that the round may not cover, stays and starts another
//! round).

use crate::placement::etcd::{Etcd, EtcdError};

/// One mark as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMark {
    /// Its key, under the store's prefix.
    name: String,
    /// The oldest version of a write the node missed.
    pub since: u64,
    revision: i64,
}

/// The marks about every node, in etcd.
#[derive(Clone)]
pub struct DurableMarks {
    etcd: Etcd,
    manager: String,
}

/// The key segment of a node id: ids are free text, and a `/` in one would
/// put its marks under another node's prefix.
fn segment(id: &str) -> String {
    id.replace('%', "%25").replace('/', "%2F")
}

impl DurableMarks {
    pub fn new(etcd: Etcd, manager: String) -> Self {
        Self { etcd, manager }
    }

    fn prefix(node: &str) -> String {
        format!("marks/{}", segment(node))
    }

    /// Records that `node` missed writes from version `since` on.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn put(&self, node: &str, since: u64) -> Result<(), EtcdError> {
        let name = format!(
            "{}/{since:016x}-{}",
            Self::prefix(node),
            segment(&self.manager)
        );
        self.etcd.put(&name, since.to_be_bytes().to_vec()).await
    }

    /// Every mark about `node`.
    pub async fn list(&self, node: &str) -> Result<Vec<StoredMark>, EtcdError> {
        let prefix = Self::prefix(node);
        let listed = self.etcd.list_prefix(&prefix).await?;
        Ok(listed
            .into_iter()
            .filter_map(|(rest, stored)| {
                let since = u64::from_be_bytes(stored.value.as_slice().try_into().ok()?);
                Some(StoredMark {
                    name: format!("{prefix}/{rest}"),
                    since,
                    revision: stored.mod_revision,
                })
            })
            .collect())
    }

    /// Deletes the marks about `node` written before etcd revision
    /// `before` (the placement that dropped the node: a mark written later
    /// is about a new membership of a node with the same id, and stays).
    /// Returns how many were deleted.
    pub async fn forget(&self, node: &str, before: i64) -> Result<usize, EtcdError> {
        let mut deleted = 0;
        for mark in self.list(node).await? {
            if mark.revision < before && self.clear(&mark).await? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Deletes `mark` unless it was written again since it was listed.
    pub async fn clear(&self, mark: &StoredMark) -> Result<bool, EtcdError> {
        self.etcd.delete_if(&mark.name, mark.revision).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slash_in_an_id_cannot_reach_another_nodes_marks() {
        assert_eq!(DurableMarks::prefix("a/b"), "marks/a%2Fb");
        assert_ne!(DurableMarks::prefix("a%2Fb"), DurableMarks::prefix("a/b"));
    }
}
