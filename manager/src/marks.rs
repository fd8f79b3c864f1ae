//! The dirty marks this manager places for one data node that missed
//! writes (docs/design/consistency.md, "Dirty marks").
//!
//! Every write acknowledged without replica B first has `Mark{B, since}`
//! held by at least one of B's peers, `since` being the version of that
//! write (never a guess from the wall clock). Marks are placed again for
//! every such write, not once per episode: another manager may have
//! repaired B and cleared the marks in between (its repair cannot have
//! copied a write this manager had not made yet), and a holder may have
//! restarted.
//!
//! Writes that skip B at once share broadcasts: a [`MarkQueue`] collects
//! the oldest `since` waiting, one broadcaster sends it, and each writer
//! waits for the first round that started after it queued. The queue is the
//! bookkeeping only (no IO); the broadcaster is in
//! [`crate::mark_broadcast`]. Where this manager's own repair of the node
//! must start from is the node's lifecycle's (`missed`).

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

/// Rounds that reached no peer are tried again this many times before the
/// waiting since is given up (its writers have timed out by then).
pub const ATTEMPTS: u32 = 20;
/// Pause between two failed rounds.
pub const RETRY: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
struct State {
    /// Oldest since queued and not yet taken by a round.
    pending: Option<u64>,
    /// Rounds started so far (round numbers start at 1).
    started: u64,
    /// A broadcaster is running.
    running: bool,
    /// Failed rounds in a row.
    failures: u32,
}

/// What the broadcaster does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Send `Mark{since}` as round `round`.
    Send { round: u64, since: u64 },
    /// Nothing waits: stop (a later [`MarkQueue::push`] starts another).
    Stop,
}

/// Marks for one node waiting to be held by its peers.
#[derive(Debug)]
pub struct MarkQueue {
    state: Mutex<State>,
    /// (held, abandoned): the latest round held by a peer, and the latest
    /// round given up. Rounds are numbered in the order they start, and a
    /// failed round's since goes into the next one, so round `r` held
    /// means every since queued before `r` started is held, unless a round
    /// in between was given up (its sinces are dropped).
    rounds: watch::Sender<(u64, u64)>,
}

impl Default for MarkQueue {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::default()),
            rounds: watch::channel((0, 0)).0,
        }
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MarkQueue {
    /// Queues `since`. Returns the round whose success covers it, and
    /// whether the caller must start a broadcaster (none is running).
    pub fn push(&self, since: u64) -> (u64, bool) {
        let mut s = lock(&self.state);
        s.pending = Some(s.pending.map_or(since, |p| p.min(since)));
        let start = !s.running;
        s.running = true;
        (s.started + 1, start)
    }

    /// The broadcaster's next step.
    pub fn next(&self) -> Next {
        let mut s = lock(&self.state);
        match s.pending.take() {
            Some(since) => {
                s.started += 1;
                Next::Send {
                    round: s.started,
                    since,
                }
            }
            None => {
                s.running = false;
                Next::Stop
            }
        }
    }

    /// Round `round` is held by at least one peer.
    pub fn held(&self, round: u64) {
        lock(&self.state).failures = 0;
        self.rounds.send_if_modified(|(h, _)| {
            let newer = round > *h;
            if newer {
                *h = round;
            }
            newer
        });
    }

    /// Round `round` (with `since`) reached no peer: `since` goes into the
    /// next round, unless it failed too often: then it is dropped, the
    /// waiters of this round and earlier ones are told so, and false is
    /// returned.
    pub fn failed(&self, round: u64, since: u64) -> bool {
        let mut s = lock(&self.state);
        s.failures += 1;
        if s.failures >= ATTEMPTS {
            s.failures = 0;
            drop(s);
            self.rounds.send_modify(|(_, a)| *a = (*a).max(round));
            return false;
        }
        s.pending = Some(s.pending.map_or(since, |p| p.min(since)));
        true
    }

    /// Waits until round `round` is held (true) or given up (false).
    pub async fn wait(&self, round: u64) -> bool {
        let mut rx = self.rounds.subscribe();
        // The sender lives in `self`, which outlives this borrow.
        let Ok(r) = rx.wait_for(|&(h, a)| h >= round || a >= round).await else {
            return false;
        };
        // Given up at or after this round: its since may have been in the
        // round given up, whatever later rounds held.
        r.1 < round
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_queued_during_a_round_share_the_next_one() {
        let q = MarkQueue::default();
        assert_eq!(q.push(100), (1, true));
        assert_eq!(
            q.next(),
            Next::Send {
                round: 1,
                since: 100
            }
        );
        // Round 1 is under way: later writes wait for round 2, which must
        // carry the oldest of their versions.
        assert_eq!(q.push(300), (2, false));
        assert_eq!(q.push(200), (2, false));
        q.held(1);
        assert_eq!(
            q.next(),
            Next::Send {
                round: 2,
                since: 200
            }
        );
        q.held(2);
        assert_eq!(q.next(), Next::Stop);
        // Stopped: the next write starts a broadcaster again.
        assert_eq!(q.push(400), (3, true));
    }

    #[test]
    fn a_round_that_reached_no_peer_is_retried_with_its_since() {
        let q = MarkQueue::default();
        q.push(100);
        let Next::Send { since, .. } = q.next() else {
            panic!("a round is due")
        };
        q.push(150);
        assert!(q.failed(1, since));
        // The failed since is merged into the next round; its waiter (round
        // 1) is released only when that round is held.
        assert_eq!(
            q.next(),
            Next::Send {
                round: 2,
                since: 100
            }
        );
        assert_eq!(q.rounds.borrow().0, 0);
        q.held(2);
        assert!(q.rounds.borrow().0 >= 1);
    }

    #[tokio::test]
    async fn a_since_is_given_up_after_too_many_failed_rounds() {
        let q = MarkQueue::default();
        let (mine, _) = q.push(100);
        for _ in 1..ATTEMPTS {
            let Next::Send { round, since } = q.next() else {
                panic!("retried")
            };
            assert!(q.failed(round, since));
        }
        let Next::Send { round, since } = q.next() else {
            panic!("retried")
        };
        assert!(!q.failed(round, since));
        assert_eq!(q.next(), Next::Stop);
        assert_eq!(q.rounds.borrow().0, 0, "never reported held");
        // A later write's round is held: the given-up one's waiter must
        // still learn that its own mark was never placed.
        let (later, start) = q.push(200);
        assert!(start);
        let Next::Send { round, .. } = q.next() else {
            panic!("a round is due")
        };
        assert_eq!(round, later);
        q.held(round);
        assert!(!q.wait(mine).await, "given up, whatever came after");
        assert!(q.wait(later).await);
    }

    #[test]
    fn a_held_round_never_moves_back() {
        let q = MarkQueue::default();
        q.held(3);
        q.held(2);
        assert_eq!(q.rounds.borrow().0, 3);
    }

    #[tokio::test]
    async fn waiters_are_released_by_their_round_or_a_later_one() {
        let q = std::sync::Arc::new(MarkQueue::default());
        let (r1, _) = q.push(10);
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.wait(r1).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        q.held(r1 + 1);
        let held = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("released")
            .expect("joined");
        assert!(held);
    }
}
