//! Routing of each request to the key's replicas (docs/design/consistency.md):
//! reads ([`read`]) and writes ([`write`]), each one attempt routed by the
//! current placement, routed again when a node knows a newer one.
//!
//! - Writes carry a version from this manager's hybrid logical clock; a
//!   replica that holds something newer answers `superseded`, and the write
//!   is sent again above it unless a reader may have seen it
//!   ([`crate::write_round`]).
//! - A write acknowledged without one of its replicas (down, failed) waits
//!   until a dirty mark for that replica is held by its peers, so the fact
//!   that it missed writes survives this manager.
//! - Reads go to the first readable replica; its value, tombstone or miss
//!   is final (the replica that decides a write's fate and status).
//! - Conditional writes ([`conditional`]) are decided at the key's primary
//!   alone, then sent to the other replicas as plain versioned writes
//!   (docs/design/conditional.md).

use std::sync::Arc;
use std::time::Duration;

use crate::client::CallError;
use crate::cluster::{Cluster, ClusterError, WRITE_ATTEMPTS};
use crate::ring_view::RingView;

mod conditional;
mod read;
mod write;

/// What an acknowledged write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    /// It replaced (or deleted) a live value, as a read just before it
    /// would have said.
    pub replaced: bool,
    /// The version the key holds after it (its ETag).
    pub version: u64,
}

pub use crate::client::Found;

/// Pause before asking again replicas that all lacked a read lease.
const UNLEASED_RETRY: Duration = Duration::from_millis(50);

impl Cluster {
    /// Runs `attempt` (one request routed by the current placement) until
    /// it is not refused for a stale placement, catching up with the newer
    /// placement in between (a few times at most).
    async fn routed<T, Fut>(&self, mut attempt: impl FnMut() -> Fut) -> Result<T, ClusterError>
    where
        Fut: std::future::Future<Output = Result<T, Routed>>,
    {
        let deadline = tokio::time::Instant::now() + self.connect.timeout;
        let mut stale = 0;
        loop {
            match attempt().await {
                Err(Routed::Stale(newest)) => {
                    stale += 1;
                    if stale >= WRITE_ATTEMPTS || !self.await_placement(newest).await {
                        return Err(ClusterError::StalePlacement);
                    }
                }
                Err(Routed::Unleased) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ClusterError::Unavailable);
                    }
                    tokio::time::sleep(UNLEASED_RETRY).await;
                }
                Err(Routed::Failed(e)) => return Err(e),
                Ok(v) => return Ok(v),
            }
        }
    }

    fn placement(&self) -> Result<Arc<RingView>, ClusterError> {
        let view = self.view();
        if view.missing > 0 {
            return Err(ClusterError::RingIncomplete(view.missing));
        }
        if view.members.is_empty() {
            return Err(ClusterError::NoPlacement);
        }
        Ok(view)
    }

    /// Sorts a failed call: a node failure takes the node out, a refusal
    /// (bad key, value too large) is the caller's answer. A stale placement
    /// is neither: the caller routes again (see [`Cluster::stale`]).
    fn failed(&self, index: usize, e: CallError) -> Option<ClusterError> {
        if e.is_node_failure() {
            self.missed_writes(index, &e.to_string());
            None
        } else {
            Some(ClusterError::Rejected(e))
        }
    }

    /// The placement version a node refused a request with, if it did.
    fn stale(r: &Result<impl Sized, CallError>) -> Option<u64> {
        match r {
            Err(CallError::StalePlacement { newest, .. }) => Some(*newest),
            _ => None,
        }
    }
}

/// How one routed attempt ended without an answer.
enum Routed {
    /// A node knows a newer placement: route again once this manager has it.
    Stale(u64),
    /// Every replica that answered lacked a manager's read lease: usually
    /// for the 100 ms until a node that came back is renewed; ask again.
    Unleased,
    Failed(ClusterError),
}

impl From<ClusterError> for Routed {
    fn from(e: ClusterError) -> Self {
        Routed::Failed(e)
    }
}
