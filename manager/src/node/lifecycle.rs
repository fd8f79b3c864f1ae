//! A data node's lifecycle in this manager's view, as one state machine
//! without IO (in the style of raft-rs's `step`): the drivers
//! ([`super::NodeHandle`], the membership task, the routing) turn what
//! happened into an [`Event`], [`Lifecycle::step`] decides, and they carry
//! out the [`Action`]s it returns. No clock is read here: time comes in
//! events.
//!
//! | state   | read | written | left by |
//! | ------- | ---- | ------- | ------- |
//! | Unknown | no   | no      | `Connected` → Syncing, `Failed` → Down |
//! | Syncing | no   | yes     | `Synced` → Up, `Failed` → Down |
//! | Up      | yes  | yes     | `RepairRequested`/syncing `Heartbeat` → Syncing, `Failed` → Down, (`Connected` → Syncing) |
//! | Down    | no   | no      | `Connected` → Syncing |
//!
//! `Retired` is a flag, not a state: a node that left the placement keeps
//! the state it had (requests routed by an older view may still reach it,
//! as they always did), and ignores every later event.

use std::time::Instant;

use serde::Serialize;

/// A node's state in this manager's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum NodeState {
    /// Not reached yet: neither read nor written.
    Unknown = 0,
    /// Synced: read and written.
    Up = 1,
    /// Unreachable or failed a call: not read from, not written to.
    Down = 2,
    /// Being repaired or warmed up from its peers: written to, not read from.
    Syncing = 3,
}

impl NodeState {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Unknown,
            1 => Self::Up,
            2 => Self::Down,
            _ => Self::Syncing,
        }
    }

    pub fn readable(self) -> bool {
        self == Self::Up
    }

    pub fn writable(self) -> bool {
        matches!(self, Self::Up | Self::Syncing)
    }
}

/// What happened to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The session reached the node, learned its id and told it the
    /// placement: written to from now on, read once repaired.
    Connected,
    /// A repair (or warm-up) round ended: the node holds every write from
    /// `covered` on (`None`: this manager knew of nothing it missed when
    /// the round began).
    Synced { covered: Option<u64> },
    /// A call to the node failed or timed out, or its session ended with
    /// an error. `guess`: a version older than any write of this manager
    /// still in flight to it, to mark its peers with.
    Failed { guess: u64 },
    /// A status heartbeat; `syncing`: the node says it is being repaired.
    Heartbeat { syncing: bool },
    /// The node may lack writes: another manager's dirty mark for it is
    /// held by a peer, or it answered a read with `syncing`.
    RepairRequested,
    /// This manager queued a dirty mark for the node from `since` on: a
    /// write skipped it (or a failure's guess, see [`Event::Failed`]).
    WritesMissed { since: u64 },
    /// A read-lease renewal is due, at `at`.
    Renewing { at: Instant },
    /// The node left the placement.
    Retired,
}

/// What the drivers must do after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The state changed (logged).
    Changed { from: NodeState, to: NodeState },
    /// The node was marked down: end its session (it reconnects and is
    /// repaired).
    WakeSession,
    /// Start a repair round in the node's session.
    StartRepair,
    /// Drop the values the near cache learned from the node: they may be
    /// older than a write it missed.
    ForgetLearned,
    /// Have the node's peers hold a dirty mark for it from `since` on, so
    /// that every manager repairs it before reading it again.
    MarkPeers { since: u64 },
    /// Send the lease renewal.
    SendRenewal,
    /// Release what this manager keeps for the node (end its session).
    Release,
}

/// The machine: the state and what it decides by.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    state: NodeState,
    retired: bool,
    /// Oldest since this manager queued a mark from and has not seen
    /// repaired: where its own repair must start from at the latest.
    missed: Option<u64>,
    /// When this manager last sent the node a read-lease renewal: the
    /// node's lease from us ends before this + the lease.
    renewed: Option<Instant>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    pub fn new() -> Self {
        Self {
            state: NodeState::Unknown,
            retired: false,
            missed: None,
            renewed: None,
        }
    }

    pub fn state(&self) -> NodeState {
        self.state
    }

    pub fn is_retired(&self) -> bool {
        self.retired
    }

    pub fn missed(&self) -> Option<u64> {
        self.missed
    }

    pub fn renewed(&self) -> Option<Instant> {
        self.renewed
    }

    /// Applies `event`; returns what the drivers must do, in order.
    pub fn step(&mut self, event: Event) -> Vec<Action> {
        if self.retired {
            // Its session is gone; nothing may act on it any more.
            return Vec::new();
        }
        match event {
            Event::Connected => {
                // From any state: the session only connects after the
                // previous one ended (the node was marked down), or for the
                // first time; a repair follows at once.
                let mut out = self.set(NodeState::Syncing);
                out.push(Action::StartRepair);
                out
            }
            Event::Synced { covered } => {
                if self.state != NodeState::Syncing {
                    // Marked down while syncing: it stays down, and keeps
                    // what it missed (misses recorded after the round began
                    // would be forgotten with it, and the next repair would
                    // rest on the peers' marks alone).
                    return Vec::new();
                }
                match (covered, self.missed) {
                    (_, None) => {}
                    (Some(covered), Some(missed)) if covered <= missed => self.missed = None,
                    // A miss older than the round's start was recorded while
                    // it ran (a write that found the node down queued its
                    // mark late): not readmitted; the driver sees `missed`
                    // and runs another round from it.
                    _ => return Vec::new(),
                }
                self.set(NodeState::Up)
            }
            Event::Failed { guess } => {
                // Once per episode: a session retried every second must not
                // keep bumping the marks (that restarts other managers'
                // repairs).
                if self.state == NodeState::Down {
                    return Vec::new();
                }
                let mut out = self.set(NodeState::Down);
                out.extend([
                    Action::WakeSession,
                    Action::ForgetLearned,
                    Action::MarkPeers { since: guess },
                ]);
                out
            }
            Event::Heartbeat { syncing: false } => Vec::new(),
            Event::Heartbeat { syncing: true } | Event::RepairRequested => {
                // Only an up node: one syncing is being repaired already,
                // one down or unknown is repaired when it connects.
                if self.state != NodeState::Up {
                    return Vec::new();
                }
                let mut out = self.set(NodeState::Syncing);
                out.extend([Action::StartRepair, Action::ForgetLearned]);
                out
            }
            Event::WritesMissed { since } => {
                self.missed = Some(self.missed.map_or(since, |m| m.min(since)));
                // Up: a write that found the node down queues its mark after
                // a repair readmitted it. That repair may have missed the
                // write: out of reads, repaired again.
                if self.state != NodeState::Up {
                    return Vec::new();
                }
                let mut out = self.set(NodeState::Syncing);
                out.extend([Action::StartRepair, Action::ForgetLearned]);
                out
            }
            Event::Renewing { at } => {
                // Only a node this manager reads from: one it takes for
                // down, or is repairing, may lack writes this manager
                // acknowledged, and must not answer other managers' reads
                // on our lease. Recorded before it is sent, so a write that
                // skips the node after this waits for this renewal to end.
                if self.state != NodeState::Up {
                    return Vec::new();
                }
                self.renewed = Some(at);
                vec![Action::SendRenewal]
            }
            Event::Retired => {
                self.retired = true;
                vec![Action::Release]
            }
        }
    }

    fn set(&mut self, to: NodeState) -> Vec<Action> {
        let from = std::mem::replace(&mut self.state, to);
        if from == to {
            Vec::new()
        } else {
            vec![Action::Changed { from, to }]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use NodeState::*;

    const STATES: [NodeState; 4] = [Unknown, Up, Down, Syncing];

    fn at(state: NodeState) -> Lifecycle {
        Lifecycle {
            state,
            ..Lifecycle::new()
        }
    }

    fn events(now: Instant) -> Vec<Event> {
        vec![
            Event::Connected,
            Event::Synced { covered: None },
            Event::Synced { covered: Some(5) },
            Event::Failed { guess: 7 },
            Event::Heartbeat { syncing: false },
            Event::Heartbeat { syncing: true },
            Event::RepairRequested,
            Event::WritesMissed { since: 9 },
            Event::Renewing { at: now },
            Event::Retired,
        ]
    }

    /// The whole table: each state × each event → state and actions.
    #[test]
    fn every_state_and_event() {
        let now = Instant::now();
        let changed = |from, to| Changed { from, to };
        for from in STATES {
            for event in events(now) {
                let mut m = at(from);
                let actions = m.step(event);
                let (state, expected): (NodeState, Vec<Action>) = match (from, event) {
                    (Syncing, Event::Connected) => (Syncing, vec![StartRepair]),
                    (_, Event::Connected) => (Syncing, vec![changed(from, Syncing), StartRepair]),
                    (Syncing, Event::Synced { .. }) => (Up, vec![changed(Syncing, Up)]),
                    (_, Event::Synced { .. }) => (from, vec![]),
                    (Down, Event::Failed { .. }) => (Down, vec![]),
                    (_, Event::Failed { guess }) => (
                        Down,
                        vec![
                            changed(from, Down),
                            WakeSession,
                            ForgetLearned,
                            MarkPeers { since: guess },
                        ],
                    ),
                    (Up, Event::Heartbeat { syncing: true } | Event::RepairRequested) => (
                        Syncing,
                        vec![changed(Up, Syncing), StartRepair, ForgetLearned],
                    ),
                    (_, Event::Heartbeat { .. } | Event::RepairRequested) => (from, vec![]),
                    (Up, Event::WritesMissed { .. }) => (
                        Syncing,
                        vec![changed(Up, Syncing), StartRepair, ForgetLearned],
                    ),
                    (_, Event::WritesMissed { .. }) => (from, vec![]),
                    (Up, Event::Renewing { .. }) => (Up, vec![SendRenewal]),
                    (_, Event::Renewing { .. }) => (from, vec![]),
                    (_, Event::Retired) => (from, vec![Release]),
                };
                assert_eq!(m.state(), state, "{from:?} + {event:?}");
                assert_eq!(actions, expected, "{from:?} + {event:?}");
                assert_eq!(m.is_retired(), event == Event::Retired);
                let missed = matches!(event, Event::WritesMissed { .. }).then_some(9);
                assert_eq!(m.missed(), missed, "{from:?} + {event:?}");
                let renewed = (from == Up && event == Event::Renewing { at: now }).then_some(now);
                assert_eq!(m.renewed(), renewed, "{from:?} + {event:?}");
            }
        }
    }

    #[test]
    fn retired_absorbs_every_event_in_every_state() {
        let now = Instant::now();
        for from in STATES {
            let mut m = at(from);
            m.step(Event::WritesMissed { since: 3 });
            let state = m.state();
            assert_eq!(m.step(Event::Retired), vec![Release]);
            for event in events(now) {
                assert_eq!(m.step(event), vec![], "{from:?} + {event:?}");
                assert_eq!(m.state(), state);
                assert!(m.is_retired());
                assert_eq!(m.missed(), Some(3));
                assert_eq!(m.renewed(), None);
            }
        }
    }

    #[test]
    fn a_node_marked_down_while_being_repaired_stays_down() {
        let mut m = Lifecycle::new();
        m.step(Event::Connected);
        let local = m.missed();
        m.step(Event::Failed { guess: 1 });
        assert!(m.step(Event::Synced { covered: local }).is_empty());
        assert_eq!(m.state(), Down);
        assert!(!m.state().readable() && !m.state().writable());
    }

    #[test]
    fn a_failure_marks_once_per_episode() {
        let mut m = at(Up);
        assert!(m.step(Event::Failed { guess: 1 }).contains(&WakeSession));
        assert!(m.step(Event::Failed { guess: 2 }).is_empty());
        m.step(Event::Connected);
        assert!(m
            .step(Event::Failed { guess: 3 })
            .contains(&MarkPeers { since: 3 }));
    }

    #[test]
    fn repair_forgets_only_what_it_covered() {
        let mut m = Lifecycle::new();
        m.step(Event::WritesMissed { since: 500 });
        m.step(Event::Connected);
        let seen = m.missed();
        assert_eq!(seen, Some(500));
        // An older version missed after the repair read `seen` (a write's
        // version is taken before it waits for its mark).
        m.step(Event::WritesMissed { since: 400 });
        // Not readmitted: the round did not cover 400.
        assert!(m.step(Event::Synced { covered: seen }).is_empty());
        assert_eq!((m.state(), m.missed()), (Syncing, Some(400)));
        // The next round, from 400, does.
        m.step(Event::Synced { covered: Some(400) });
        assert_eq!((m.state(), m.missed()), (Up, None));
    }

    #[test]
    fn repair_done_after_a_later_skipped_write_does_not_clear_its_older_since() {
        let mut m = at(Syncing);
        m.step(Event::WritesMissed { since: 700 });
        let seen = m.missed();
        m.step(Event::WritesMissed { since: 650 });
        m.step(Event::Synced { covered: seen });
        assert_eq!(
            m.missed(),
            Some(650),
            "650 was not covered by a round from 700"
        );
        assert_eq!(m.state(), Syncing, "not readmitted with 650 unrepaired");
    }

    #[test]
    fn a_repair_request_only_takes_an_up_node_out_of_reads() {
        let mut m = at(Up);
        assert_eq!(
            m.step(Event::RepairRequested),
            vec![changed(Up, Syncing), StartRepair, ForgetLearned]
        );
        // Another mark seen during the repair: the running round's final
        // check of the peers' marks finds it; no second round is queued.
        assert!(m.step(Event::RepairRequested).is_empty());
        assert!(m.step(Event::Heartbeat { syncing: true }).is_empty());
        m.step(Event::Synced { covered: None });
        assert_eq!(m.state(), Up);
    }

    fn changed(from: NodeState, to: NodeState) -> Action {
        Changed { from, to }
    }

    #[test]
    fn leases_are_renewed_only_while_up() {
        let t0 = Instant::now();
        let mut m = Lifecycle::new();
        assert!(m.step(Event::Renewing { at: t0 }).is_empty());
        m.step(Event::Connected);
        assert!(m.step(Event::Renewing { at: t0 }).is_empty());
        m.step(Event::Synced { covered: None });
        assert_eq!(m.step(Event::Renewing { at: t0 }), vec![SendRenewal]);
        m.step(Event::Failed { guess: 1 });
        let t1 = t0 + std::time::Duration::from_secs(1);
        assert!(m.step(Event::Renewing { at: t1 }).is_empty());
        // The last renewal sent is what a write that skipped it waits out.
        assert_eq!(m.renewed(), Some(t0));
    }

    /// xorshift64*: enough randomness for sequences, no crate needed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// What a driver knows while it feeds random events: the misses a
    /// repair round must cover.
    #[derive(Default)]
    struct Model {
        /// The since the current session's repair round began with.
        round: Option<Option<u64>>,
        /// Misses recorded before that round began.
        in_round: Vec<u64>,
        /// Misses recorded since (while the node was down).
        unrepaired: Vec<u64>,
        trace: Vec<(Event, NodeState, Option<u64>)>,
    }

    impl Model {
        /// Steps `m` and checks the invariants; returns the actions.
        fn step(&mut self, m: &mut Lifecycle, event: Event) -> Vec<Action> {
            let before = m.clone();
            let actions = m.step(event);
            self.trace.push((event, m.state(), m.missed()));
            let trace = &self.trace;

            // Retired is absorbing.
            if before.is_retired() {
                assert!(actions.is_empty());
                assert_eq!(m.state(), before.state());
                assert_eq!(m.missed(), before.missed());
                assert_eq!(m.renewed(), before.renewed());
                return actions;
            }
            if let Event::WritesMissed { since } = event {
                self.unrepaired.push(since);
            }
            if actions.contains(&StartRepair) {
                // The round starts: it reads what it must cover.
                self.round = Some(m.missed());
                self.in_round.append(&mut self.unrepaired);
            }
            if let Event::Synced { covered } = event {
                // The round copied every write from `covered` on: each
                // miss recorded before it began is covered.
                for &since in &self.in_round {
                    assert!(
                        covered.is_some_and(|c| c <= since),
                        "a round from {covered:?} ended, {since} missed before it: {trace:#?}"
                    );
                }
                self.in_round.clear();
                self.round = None;
                // A round that ends after the node was marked down forgets
                // nothing: what it missed waits for the next round.
                if before.state() != Syncing {
                    assert_eq!(m.missed(), before.missed(), "{trace:#?}");
                }
            }

            // Never readable while a write that skipped it is unrepaired.
            if m.state().readable() {
                assert!(
                    self.in_round.is_empty() && self.unrepaired.is_empty(),
                    "readable, missed {:?} {:?}: {trace:#?}",
                    self.in_round,
                    self.unrepaired
                );
            }
            // Down is left only by connecting, into syncing.
            if before.state() == Down && m.state() != Down {
                assert_eq!(event, Event::Connected);
                assert_eq!(m.state(), Syncing);
            }
            // Up is entered only from syncing, by a finished repair.
            if m.state() == Up && before.state() != Up {
                assert_eq!(before.state(), Syncing);
                assert!(matches!(event, Event::Synced { .. }));
            }
            // A recorded miss is forgotten only by a round that began at or
            // before it.
            if let (Some(b), None) = (before.missed(), m.missed()) {
                assert!(matches!(event, Event::Synced { covered: Some(c) } if c <= b));
            }
            // The lease is only renewed while readable.
            if m.renewed() != before.renewed() {
                assert!(m.state().readable());
            }
            // Each state change is reported, once.
            let changes = actions
                .iter()
                .filter(|a| matches!(a, Changed { .. }))
                .count();
            assert_eq!(changes, usize::from(m.state() != before.state()));
            actions
        }
    }

    /// Thousands of random event sequences, fed the way the drivers do (a
    /// repair round reads `missed` when it starts and reports it when it
    /// ends, a failure's mark comes back as a miss when the node's id is
    /// known), with the invariants checked after every step.
    #[test]
    fn random_sequences_keep_the_invariants() {
        let t0 = Instant::now();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5_000 {
            let mut m = Lifecycle::new();
            let mut model = Model::default();
            for step in 0..60 {
                let event = match rng.below(10) {
                    0 => Event::Connected,
                    1 => match model.round {
                        Some(covered) => Event::Synced { covered },
                        None => Event::Heartbeat { syncing: false },
                    },
                    2 => Event::Failed {
                        guess: rng.below(1000),
                    },
                    3 => Event::Heartbeat {
                        syncing: rng.below(2) == 0,
                    },
                    4 => Event::RepairRequested,
                    5 | 6 => Event::WritesMissed {
                        since: rng.below(1000),
                    },
                    7 => Event::Renewing {
                        at: t0 + std::time::Duration::from_millis(step),
                    },
                    8 if rng.below(20) == 0 => Event::Retired,
                    _ => Event::Heartbeat { syncing: false },
                };
                // A write skips a node it does not write to, or one a
                // repair readmitted after the write found it down (see
                // `a_miss_recorded_while_up_takes_the_node_out_of_reads`);
                // not one it is writing to while syncing.
                if matches!(event, Event::WritesMissed { .. }) && m.state() == Syncing {
                    continue;
                }
                for action in model.step(&mut m, event) {
                    if let MarkPeers { since } = action {
                        if rng.below(2) == 0 {
                            model.step(&mut m, Event::WritesMissed { since });
                        }
                    }
                }
            }
        }
    }

    /// A mark queued while the node is up (a write that found it down
    /// queues its mark after a repair readmitted it, a repair that may
    /// have missed the write) takes it out of reads here at once, rather
    /// than when the peers' heartbeats list the mark.
    #[test]
    fn a_miss_recorded_while_up_takes_the_node_out_of_reads() {
        let mut m = at(Up);
        let actions = m.step(Event::WritesMissed { since: 10 });
        assert_eq!(
            actions,
            vec![
                Changed {
                    from: Up,
                    to: Syncing
                },
                StartRepair,
                ForgetLearned
            ]
        );
        assert!(!m.state().readable());
        assert_eq!(m.missed(), Some(10));
        // The repair from 10 readmits it.
        assert_eq!(
            m.step(Event::Synced { covered: Some(10) }),
            vec![Changed {
                from: Syncing,
                to: Up
            }]
        );
        assert_eq!(m.missed(), None);
    }

    /// A round that ends after the node was marked down forgets nothing,
    /// not even what it covered: the next round starts from it.
    #[test]
    fn a_round_ended_after_a_mark_down_forgets_nothing() {
        let mut m = Lifecycle::new();
        m.step(Event::Connected);
        m.step(Event::WritesMissed { since: 100 });
        m.step(Event::Failed { guess: 50 });
        m.step(Event::WritesMissed { since: 120 });
        assert!(m.step(Event::Synced { covered: Some(100) }).is_empty());
        assert_eq!(m.missed(), Some(100));
        assert_eq!(m.state(), Down);
    }
}
