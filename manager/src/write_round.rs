//! How the answers of a write's replicas decide what the write did
//! (docs/design/consistency.md, "Linearizable keys"). IO-free: the router
//! feeds it each attempt's answers and asks whether to send the write again
//! and what to answer the client.
//!
//! Every manager reads a key from the first of its replicas, in ring order,
//! that answers reads; so that replica's answer says what readers see:
//!
//! - If it applied the write, a reader may have seen it: the write is not
//!   sent again with a newer version (which could land above a newer write
//!   acknowledged meanwhile and bring the seen value back). A replica that
//!   holds something newer orders this write just before it.
//! - If it holds something newer, that is what readers see: the write is
//!   sent again above it, whatever the other replicas did. This covers a
//!   newer write read, or acknowledged, before this one began through a
//!   manager whose clock is ahead.
//! - If no replica answers reads (syncing, a registered manager's lease
//!   missing), nobody saw the write: sent again above a newer version.
//!
//! The status (created or updated, deleted or not found) is what a read
//! just before the write would have said: the first readable replica in
//! read order decides, as it does for reads (a miss there is final, not
//! passed to the next replica). Another replica may hold the first attempt
//! of a write that was then sent again above ours, a version no reader saw
//! in that place. A replica's answer to the last attempt it applied counts,
//! and where that attempt replaced this write's own earlier attempt, what
//! the earlier one replaced: between two attempts a newer write may have
//! landed above the first (and the second then replaced it).
//! When no readable replica took the write, the replica that replaced the
//! newest version decides.

use crate::client::Applied;

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Send the write again with a newer version.
    Again,
    /// A replica took the write (in some attempt); `true` when it replaced
    /// a live value.
    Taken(bool),
    /// The replica readers see held something newer on every attempt:
    /// this write is ordered just before a newer one, and what it replaced
    /// there is unknown. Answered as a conflict (no status can be given).
    Overtaken,
    /// No replica took it or held something newer (they failed).
    Nothing,
    /// Taken, but the readable replicas disagree on what it replaced, and
    /// the one readers see lacks an older write another one holds (in
    /// flight to it, or lost with it if it fails): the status depends on
    /// which, and is not guessed. Answered as a conflict.
    Unsure,
}

/// One replica's answer to one attempt it applied.
#[derive(Debug, Clone, Copy)]
struct Answer {
    replica: usize,
    /// Its place in the key's read order.
    reader: Option<usize>,
    /// The attempt's version.
    version: u64,
    applied: Applied,
}

/// The answers of one write's replicas over its attempts.
#[derive(Debug, Default)]
pub struct WriteRound {
    /// The version of the attempt under way.
    version: u64,
    /// Every attempt a replica applied, oldest first.
    answers: Vec<Answer>,
    /// A replica held something newer than this attempt.
    superseded: bool,
    /// This attempt's first readable read replica: (its place in the read
    /// order, the replica, whether it applied the attempt).
    front: Option<(usize, usize, bool)>,
}

impl WriteRound {
    /// A new attempt begins, with a version newer than the previous ones.
    pub fn attempt(&mut self, version: u64) {
        self.version = version;
        self.superseded = false;
        self.front = None;
    }

    /// Replica `replica` applied the attempt; `reader` is its place in the
    /// key's read order (`None`: not read from, e.g. a node joining).
    pub fn applied(&mut self, replica: usize, reader: Option<usize>, a: Applied) {
        self.answered(replica, reader, a.readable, true);
        self.answers.push(Answer {
            replica,
            reader,
            version: self.version,
            applied: a,
        });
    }

    /// The replica holds something newer than the attempt.
    pub fn superseded(&mut self, replica: usize, reader: Option<usize>, readable: bool) {
        self.superseded = true;
        self.answered(replica, reader, readable, false);
    }

    fn answered(&mut self, replica: usize, reader: Option<usize>, readable: bool, applied: bool) {
        let Some(place) = reader.filter(|_| readable) else {
            return;
        };
        if self.front.is_none_or(|(p, ..)| place < p) {
            self.front = Some((place, replica, applied));
        }
    }

    /// Whether some replica took any attempt.
    pub fn taken(&self) -> bool {
        !self.answers.is_empty()
    }

    /// The version the write holds once taken: its newest attempt that a
    /// replica applied (an attempt is made only when no reader can have
    /// seen the ones before).
    pub fn version(&self) -> Option<u64> {
        self.answers.iter().map(|a| a.version).max()
    }

    /// Each replica's last applied attempt, with what it replaced before
    /// this write: where the attempt replaced one of this write's own
    /// earlier attempts on that replica, what that one replaced.
    fn effective(&self) -> Vec<(Option<usize>, Applied)> {
        let mut out: Vec<(usize, Option<usize>, Applied)> = Vec::new();
        for (n, last) in self.answers.iter().enumerate().rev() {
            if out.iter().any(|&(r, ..)| r == last.replica) {
                continue;
            }
            let mut a = last.applied;
            let earlier = &self.answers[..n];
            while let Some(own) = earlier
                .iter()
                .find(|e| e.replica == last.replica && e.version == a.prior && a.prior != 0)
            {
                a = Applied {
                    readable: a.readable,
                    ..own.applied
                };
            }
            out.push((last.replica, last.reader, a));
        }
        out.into_iter().map(|(_, reader, a)| (reader, a)).collect()
    }

    /// After an attempt's answers: send again, or answer.
    pub fn next(&self, attempts_left: bool) -> Next {
        let seen = matches!(self.front, Some((.., true)));
        if self.superseded && !seen {
            return if attempts_left {
                Next::Again
            } else {
                Next::Overtaken
            };
        }
        match self.replaced() {
            Some(Some(replaced)) => Next::Taken(replaced),
            Some(None) => Next::Unsure,
            None => Next::Nothing,
        }
    }

    /// Whether the write replaced a live value, as a read just before it
    /// would have said: the first readable read replica decides (one that
    /// held nothing, having evicted or dropped the key, says "created", as
    /// a read of it said "miss"). Without a readable replica, the one that
    /// replaced the newest version decides.
    ///
    /// `Some(None)`: unknown. The first readable replica says one thing and
    /// another readable replica, which replaced a newer version, says the
    /// other: the first one lacks an older write (a concurrent one, still
    /// in flight to it, or missed). If it arrives there, it is superseded
    /// and sent again above this write (the first replica's answer was
    /// right); if that replica fails first, the older write stands below
    /// this one on the others (the other answer was right). Seen in the
    /// linearizability test, a node killed mid-write.
    fn replaced(&self) -> Option<Option<bool>> {
        let answers = self.effective();
        let mut readers: Vec<(usize, Applied)> = answers
            .iter()
            .filter(|(_, a)| a.readable)
            .filter_map(|&(place, a)| place.map(|p| (p, a)))
            .collect();
        readers.sort_by_key(|&(p, _)| p);
        if let Some(&(_, front)) = readers.first() {
            // A front that held nothing evicted or dropped the key (or
            // never had it): readers saw a miss there, whatever follows.
            let disagrees = front.prior > 0
                && readers[1..]
                    .iter()
                    .any(|(_, a)| a.prior > front.prior && a.replaced != front.replaced);
            return Some((!disagrees).then_some(front.replaced));
        }
        let newest = answers.iter().map(|(_, a)| a.prior).max()?;
        Some(Some(
            answers.iter().any(|(_, a)| a.prior == newest && a.replaced),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(replaced: bool, prior: u64, readable: bool) -> Applied {
        Applied {
            replaced,
            prior,
            readable,
        }
    }

    #[test]
    fn every_replica_applied_answers_at_once() {
        let mut w = WriteRound::default();
        w.attempt(100);
        w.applied(0, Some(0), applied(true, 5, true));
        w.applied(1, Some(1), applied(true, 5, true));
        assert_eq!(w.next(true), Next::Taken(true));
    }

    #[test]
    fn the_replica_readers_see_decides_the_status() {
        // Replica 1 lags behind replica 0 (it has not taken the newer
        // write 7 yet): readers see replica 0.
        let mut w = WriteRound::default();
        w.attempt(100);
        w.applied(0, Some(0), applied(true, 7, true));
        w.applied(1, Some(1), applied(false, 5, true));
        assert_eq!(w.next(true), Next::Taken(true));
        // In either order of answers.
        let mut w = WriteRound::default();
        w.attempt(100);
        w.applied(1, Some(1), applied(true, 3, true));
        w.applied(0, Some(0), applied(false, 9, true));
        assert_eq!(w.next(true), Next::Taken(false));
    }

    #[test]
    fn a_read_replica_that_held_nothing_decides_as_a_read_of_it_would() {
        // Replica 0 evicted (or dropped) the key: a read said "miss".
        let mut w = WriteRound::default();
        w.attempt(100);
        w.applied(0, Some(0), applied(false, 0, true));
        w.applied(1, Some(1), applied(true, 5, true));
        assert_eq!(w.next(true), Next::Taken(false));
    }

    #[test]
    fn a_superseded_first_attempt_on_the_second_replica_decides_nothing() {
        // Seen in the linearizability test at a fresh key: another write's
        // first attempt reached replica 1 before this write, and replica 0
        // after it (superseded there, it is sent again above this one).
        // Replica 0 held nothing: no reader saw the other write, so this
        // one created the key; answering "updated" (from replica 1) made
        // both writes claim to replace the other.
        let mut w = WriteRound::default();
        w.attempt(100);
        w.applied(1, Some(1), applied(true, 7, true));
        w.applied(0, Some(0), applied(false, 0, true));
        assert_eq!(w.next(true), Next::Taken(false));
    }

    #[test]
    fn without_a_readable_replica_the_newest_replaced_version_decides() {
        let mut w = WriteRound::default();
        w.attempt(100);
        w.applied(0, Some(0), applied(false, 7, false));
        w.applied(1, Some(1), applied(true, 5, false));
        assert_eq!(w.next(true), Next::Taken(false));
        let mut w = WriteRound::default();
        w.attempt(100);
        w.applied(0, Some(0), applied(false, 3, false));
        w.applied(1, Some(1), applied(true, 9, false));
        assert_eq!(w.next(true), Next::Taken(true));
    }

    #[test]
    fn a_write_the_read_replica_applied_is_not_sent_again_above_a_newer_one() {
        // Readers may have seen it on replica 0: sending it again above
        // the newer write on replica 1 could bring it back after a newer
        // write was acknowledged.
        let mut w = WriteRound::default();
        w.attempt(100);
        w.superseded(1, Some(1), true);
        w.applied(0, Some(0), applied(false, 0, true));
        assert_eq!(w.next(true), Next::Taken(false));
    }

    #[test]
    fn a_newer_version_on_the_read_replica_sends_the_write_again_above_it() {
        // Readers see the newer write on replica 0; this one, applied on
        // replica 1 only, was seen by nobody.
        let mut w = WriteRound::default();
        w.attempt(10);
        w.applied(1, Some(1), applied(false, 0, true));
        w.superseded(0, Some(0), true);
        assert_eq!(w.next(true), Next::Again);
        // The second attempt replaces the first one on replica 1 (prior =
        // the first attempt's version) and the newer value on replica 0:
        // replica 1 counts as what its first attempt replaced (nothing).
        w.attempt(13);
        w.applied(0, Some(0), applied(true, 12, true));
        w.applied(1, Some(1), applied(true, 10, true));
        assert_eq!(w.next(true), Next::Taken(true));
        assert!(!w
            .effective()
            .iter()
            .any(|(p, a)| *p == Some(1) && a.replaced));
    }

    #[test]
    fn an_unreadable_read_replica_does_not_count_as_seen() {
        // Replica 0 is syncing (or lacks a lease): readers go to replica 1,
        // which holds something newer.
        let mut w = WriteRound::default();
        w.attempt(100);
        w.applied(0, Some(0), applied(false, 0, false));
        w.superseded(1, Some(1), true);
        assert_eq!(w.next(true), Next::Again);
        // Nobody reads either: sent again as well.
        let mut w = WriteRound::default();
        w.attempt(100);
        w.applied(0, Some(0), applied(false, 0, false));
        w.superseded(1, Some(1), false);
        assert_eq!(w.next(true), Next::Again);
    }

    #[test]
    fn a_replica_outside_the_read_order_does_not_count_as_seen() {
        // A node joining takes writes but is not read from.
        let mut w = WriteRound::default();
        w.attempt(100);
        w.applied(2, None, applied(false, 0, true));
        w.superseded(0, Some(0), true);
        assert_eq!(w.next(true), Next::Again);
    }

    #[test]
    fn superseded_everywhere_goes_again_until_no_attempt_is_left() {
        let mut w = WriteRound::default();
        w.attempt(100);
        w.superseded(0, Some(0), true);
        assert_eq!(w.next(true), Next::Again);
        w.attempt(100);
        w.superseded(0, Some(0), true);
        assert_eq!(w.next(false), Next::Overtaken);
        assert!(!w.taken());
        // Also when another replica took it: no reader saw it, and what it
        // replaced where readers look is unknown.
        let mut w = WriteRound::default();
        w.attempt(100);
        w.applied(1, Some(1), applied(true, 3, true));
        w.superseded(0, Some(0), true);
        assert_eq!(w.next(false), Next::Overtaken);
    }

    #[test]
    fn the_front_is_decided_per_attempt() {
        let mut w = WriteRound::default();
        w.attempt(4);
        w.applied(0, Some(0), applied(false, 0, false));
        w.superseded(1, Some(1), true);
        assert_eq!(w.next(true), Next::Again);
        w.attempt(8);
        // The read replica answers reads again and took this attempt; a
        // newer write still beats it on replica 1.
        w.applied(0, Some(0), applied(true, 4, true));
        w.superseded(1, Some(1), true);
        assert_eq!(w.next(true), Next::Taken(false));
    }

    #[test]
    fn a_newer_write_between_two_attempts_is_what_the_second_replaced() {
        // Seen in the linearizability test, a node stalling: attempt 1
        // (version 596) created the key on replica 1 while the read
        // replica 0 held a newer write (604); that write then replaced
        // attempt 1 on replica 1 too. Attempt 2 (625) found replica 0
        // stalled and replaced write 604 on replica 1: this write updated
        // the key. Counting replica 1's answer to attempt 1 said created.
        let mut w = WriteRound::default();
        w.attempt(596);
        w.superseded(0, Some(0), true);
        w.applied(1, Some(1), applied(false, 566, true));
        assert_eq!(w.next(true), Next::Again);
        w.attempt(625);
        w.applied(1, Some(1), applied(true, 604, true));
        assert_eq!(w.next(true), Next::Taken(true));
    }

    #[test]
    fn an_attempt_above_its_own_earlier_one_reports_what_that_one_replaced() {
        // Attempt 2 replaced attempt 1 which replaced attempt... on the
        // same replica: the chain goes back to the first.
        let mut w = WriteRound::default();
        w.attempt(20);
        w.applied(0, Some(0), applied(false, 0, false));
        w.attempt(30);
        w.applied(0, Some(0), applied(true, 20, false));
        w.attempt(40);
        w.applied(0, Some(0), applied(true, 30, true));
        assert_eq!(w.next(true), Next::Taken(false));
    }

    #[test]
    fn a_front_lacking_an_older_write_another_replica_holds_gives_no_status() {
        // From the linearizability test, a node killed: delete D (490)
        // reached replica 1 but not replica 0, the one read first, which
        // then died. This write (506) found the value D deleted still on
        // replica 0 and D's tombstone on replica 1. "Updated" (replica 0)
        // is right if D reaches replica 0 later (superseded there, it goes
        // again above this write); "created" if replica 0 dies first, as
        // it did: D stands below this write, and a later delete answered
        // "deleted" too.
        let mut w = WriteRound::default();
        w.attempt(506);
        w.applied(0, Some(0), applied(true, 469, true));
        w.applied(1, Some(1), applied(false, 490, true));
        assert_eq!(w.next(true), Next::Unsure);
        // Agreeing on the status, the replicas may hold different versions.
        let mut w = WriteRound::default();
        w.attempt(506);
        w.applied(0, Some(0), applied(true, 469, true));
        w.applied(1, Some(1), applied(true, 490, true));
        assert_eq!(w.next(true), Next::Taken(true));
        // The front ahead of the other replica: readers see the front.
        let mut w = WriteRound::default();
        w.attempt(506);
        w.applied(0, Some(0), applied(false, 490, true));
        w.applied(1, Some(1), applied(true, 469, true));
        assert_eq!(w.next(true), Next::Taken(false));
    }

    #[test]
    fn no_answer_is_nothing() {
        let mut w = WriteRound::default();
        w.attempt(100);
        assert_eq!(w.next(true), Next::Nothing);
    }
}
