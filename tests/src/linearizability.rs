//! Per-key linearizability of histories recorded by HTTP clients of the
//! cache.
//!
//! Each key is a register with statuses, initially absent:
//!
//! - `GET` answers the value, or a miss (`None`, HTTP 404);
//! - `SET(v)` (HTTP POST) answers `created` if the key had no value just
//!   before, replaced otherwise;
//! - `DELETE` answers `deleted` if the key had a value (HTTP 200), not found
//!   otherwise (HTTP 404); deleting an absent key changes nothing.
//!
//! A history is linearizable if every key's operations can be put in one
//! order that respects real time (`a` precedes `b` iff
//! `a.complete < b.invoke`, strictly: operations that merely touch are
//! concurrent) and in which every answer is the register's answer.
//! Linearizability is compositional, so keys are checked one at a time.
//!
//! An operation answered [`Ret::Unknown`] (timeout, 5xx) may or may not have
//! taken effect. A write of unknown outcome may be placed anywhere after its
//! invocation, with no upper bound, and with any status, or left out; a read
//! of unknown outcome says nothing and is dropped.
//!
//! # Search
//!
//! Wing & Gong's search with Lowe's memoization, as Porcupine
//! (anishathalye/porcupine) does it: the acknowledged operations' call and
//! return events sorted by time in a doubly linked list, an operation
//! linearized by lifting its two events out of it and backtracking by
//! putting them back, and a cache of the configurations (set of linearized
//! operations, register state) already explored, so none is explored twice.
//! The refinements, all of them exact:
//!
//! - Values no read returned are all alike to the model (no read can match
//!   one, and statuses only tell present from absent), so they share one
//!   state: fewer distinct configurations.
//! - A read (or a not-found delete) that fits the current state is
//!   linearized at once, with no alternative tried: it changes no state, and
//!   moving it earlier in any linearization keeps that linearization valid.
//! - Writes of unknown outcome are not in the event list (a return at
//!   +infinity never constrains anything). They are tried only when no
//!   acknowledged operation fits; never two in a row (the first would be
//!   overwritten unseen, so leaving it out is as good); and among those that
//!   leave the same state, only the earliest invoked unused one (they are
//!   interchangeable once invoked). The cache treats a configuration that
//!   used a superset of unknown writes as already explored: leaving an
//!   unknown write unused is never worse, since it can always be left out.
//! - Dead ends are cut off early: when some pending operation needs a state
//!   (a value, absent, present) that the state is not, and every write that
//!   could still make it was invoked after that operation completed (or
//!   none is left), nothing after the configuration can succeed. Without
//!   this, refuting a stale read at the end of a long history means
//!   exploring every configuration before it; with it, a few steps.
//! - A read of a value no write of the key wrote is reported at once.
//!
//! The search has a budget ([`Options::max_steps`], per key), because it is
//! exponential in the worst case; running out of it is
//! [`CheckError::Undecided`], never a violation. The cache holds one entry
//! per configuration explored (a few tens of bytes plus the operations
//! linearized out of order), so the budget bounds memory as well.
//!
//! # Errors
//!
//! [`check`] returns [`CheckError::Violation`] only for a history that is
//! not linearizable, [`CheckError::Undecided`] when the budget ran out, and
//! [`CheckError::Invalid`] for input that is a bug in the caller (an answer
//! that does not fit its call, such as `Call::Get` with `Ret::Set`, or an
//! acknowledged operation completing before its invocation). Keys are
//! checked in order; a violation on any key is returned in preference to an
//! undecided key.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Get,
    Set(String),
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ret {
    Get(Option<String>),
    Set {
        created: bool,
    },
    Delete {
        deleted: bool,
    },
    /// No answer, or an answer that does not say whether it took effect.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Op {
    pub client: usize,
    pub key: String,
    pub call: Call,
    pub ret: Ret,
    /// Nanoseconds from a common origin (e.g. Instant at test start).
    pub invoke: u64,
    /// Ignored when ret is Unknown.
    pub complete: u64,
}

/// Nanoseconds shown as milliseconds.
struct Ms(u64);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}ms", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} ", self.client)?;
        match &self.call {
            Call::Get => write!(f, "get")?,
            Call::Set(v) => write!(f, "set({v:?})")?,
            Call::Delete => write!(f, "delete")?,
        }
        match &self.ret {
            Ret::Get(Some(v)) => write!(f, " -> {v:?}")?,
            Ret::Get(None) => write!(f, " -> miss")?,
            Ret::Set { created: true } => write!(f, " -> created")?,
            Ret::Set { created: false } => write!(f, " -> replaced")?,
            Ret::Delete { deleted: true } => write!(f, " -> deleted")?,
            Ret::Delete { deleted: false } => write!(f, " -> not found")?,
            Ret::Unknown => write!(f, " -> unknown")?,
        }
        if self.ret == Ret::Unknown {
            write!(f, "  [{} ..)", Ms(self.invoke))
        } else {
            write!(f, "  [{} .. {}]", Ms(self.invoke), Ms(self.complete))
        }
    }
}

/// Why one key's history is not linearizable.
#[derive(Debug, Clone)]
pub struct Violation {
    pub key: String,
    pub reason: String,
    /// The longest linearizable prefix found (the one placing the most
    /// acknowledged operations), in linearization order, unknown writes
    /// included where the search placed them. Its last operation may be
    /// one after which no linearization can be completed.
    pub prefix: Vec<Op>,
    /// The register's value after `prefix`.
    pub value: Option<String>,
    /// Operations whose answers nothing can explain after `prefix`: the
    /// value or status they need is not the register's, and every write
    /// that could still make it was invoked after they completed (or none
    /// is left). Often the culprit, far from the end of `prefix`.
    pub unexplained: Vec<Op>,
    /// The acknowledged operations real time allows next after `prefix`:
    /// none of them (nor any unknown write) fits there, or each one that
    /// fits leaves some answer that nothing later can explain.
    pub stuck: Vec<Op>,
    /// Acknowledged operations on the key.
    pub known: usize,
}

/// How many operations of `prefix` Display shows (its last ones).
const SHOWN: usize = 12;

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |f: &mut fmt::Formatter<'_>, title: &str, ops: &[Op]| {
            if !ops.is_empty() {
                write!(f, "\n  {title}")?;
            }
            ops.iter().try_for_each(|op| write!(f, "\n    {op}"))
        };
        write!(f, "key {:?} is not linearizable: {}", self.key, self.reason)?;
        if !self.prefix.is_empty() {
            let placed = self.prefix.iter().filter(|o| o.ret != Ret::Unknown).count();
            write!(
                f,
                "\n  longest linearizable prefix: {} operations ({placed} of {} acknowledged)",
                self.prefix.len(),
                self.known
            )?;
            let shown = self.prefix.len().saturating_sub(SHOWN);
            let title = if shown > 0 { ", the last ones:" } else { ":" };
            write!(f, "{title}")?;
            self.prefix[shown..]
                .iter()
                .try_for_each(|op| write!(f, "\n    {op}"))?;
            match &self.value {
                Some(v) => write!(f, "\n  value after it: {v:?}")?,
                None => write!(f, "\n  value after it: absent")?,
            }
        }
        list(f, "nothing can explain any more:", &self.unexplained)?;
        if self.unexplained.is_empty() {
            list(f, "none of these can come next:", &self.stuck)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub enum CheckError {
    /// The history is not linearizable. (Boxed: it is large, and an `Err`
    /// is moved around more often than it is read.)
    Violation(Box<Violation>),
    /// The search ran out of its budget on `key` before deciding.
    Undecided { key: String, steps: u64 },
    /// `history[index]` is malformed: a bug in the caller.
    Invalid { index: usize, reason: String },
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Violation(v) => v.fmt(f),
            CheckError::Undecided { key, steps } => write!(
                f,
                "key {key:?}: undecided, the search gave up after {steps} steps"
            ),
            CheckError::Invalid { index, reason } => {
                write!(f, "invalid history: operation {index}: {reason}")
            }
        }
    }
}

impl std::error::Error for CheckError {}

#[derive(Debug, Clone)]
pub struct Options {
    /// Most operations tried per key before giving up as undecided. Each
    /// step adds at most one cache entry (tens of bytes): the default
    /// bounds a key's search to a few hundred megabytes and, in release,
    /// some seconds.
    pub max_steps: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_steps: 50_000_000,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub keys: usize,
    /// Operations in the history.
    pub ops: usize,
    /// Operations answered `Ret::Unknown`, reads included.
    pub unknown: usize,
    /// Reads answered `Ret::Unknown` (dropped).
    pub unknown_reads: usize,
    /// Operations tried by the search, over all keys.
    pub steps: u64,
    /// The most tried on one key.
    pub max_key_steps: u64,
}

/// Checks every key independently (linearizability is compositional).
/// Initial state of every key: absent.
pub fn check(history: &[Op]) -> Result<Stats, CheckError> {
    check_with(history, &Options::default())
}

/// [`check`] with a search budget of one's own.
pub fn check_with(history: &[Op], options: &Options) -> Result<Stats, CheckError> {
    let mut stats = Stats {
        ops: history.len(),
        ..Stats::default()
    };
    let mut keys: BTreeMap<&str, Vec<Prepared<'_>>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        let what = classify(op).map_err(|reason| CheckError::Invalid {
            index,
            reason: format!("{reason}: {op}"),
        })?;
        if op.ret == Ret::Unknown {
            stats.unknown += 1;
        }
        if matches!(what, What::DroppedRead) {
            stats.unknown_reads += 1;
        }
        keys.entry(op.key.as_str())
            .or_default()
            .push(Prepared { op, what });
    }
    stats.keys = keys.len();
    let mut undecided = None;
    for (key, ops) in &keys {
        match check_key(key, ops, options.max_steps) {
            Ok(steps) => {
                stats.steps += steps;
                stats.max_key_steps = stats.max_key_steps.max(steps);
            }
            Err(KeyError::Violation(v)) => return Err(CheckError::Violation(v)),
            Err(KeyError::Undecided(steps)) => {
                undecided.get_or_insert(CheckError::Undecided {
                    key: key.to_string(),
                    steps,
                });
            }
        }
    }
    match undecided {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}

/// An operation as the search sees it; `None` statuses are unknown.
enum What<'a> {
    Get(Option<&'a str>),
    Set(&'a str, Option<bool>),
    Delete(Option<bool>),
    DroppedRead,
}

struct Prepared<'a> {
    op: &'a Op,
    what: What<'a>,
}

fn classify(op: &Op) -> Result<What<'_>, &'static str> {
    let what = match (&op.call, &op.ret) {
        (Call::Get, Ret::Unknown) => return Ok(What::DroppedRead),
        (Call::Set(v), Ret::Unknown) => return Ok(What::Set(v, None)),
        (Call::Delete, Ret::Unknown) => return Ok(What::Delete(None)),
        (Call::Get, Ret::Get(v)) => What::Get(v.as_deref()),
        (Call::Set(v), Ret::Set { created }) => What::Set(v, Some(*created)),
        (Call::Delete, Ret::Delete { deleted }) => What::Delete(Some(*deleted)),
        _ => return Err("the answer does not fit the call"),
    };
    if op.complete < op.invoke {
        return Err("completes before its invocation");
    }
    Ok(what)
}

/// Register states: absent, some value no read returned, or the value read
/// (ids from 2 on).
const ABSENT: u32 = 0;
const UNREAD: u32 = 1;

/// An acknowledged operation as a transition of the register.
#[derive(Clone, Copy)]
enum Kind {
    Get(u32),
    SetCreated(u32),
    SetReplaced(u32),
    DelDeleted,
    DelMissing,
}

impl Kind {
    fn step(self, s: u32) -> Option<u32> {
        match self {
            Kind::Get(v) => (s == v).then_some(s),
            Kind::SetCreated(v) => (s == ABSENT).then_some(v),
            Kind::SetReplaced(v) => (s != ABSENT).then_some(v),
            Kind::DelDeleted => (s != ABSENT).then_some(ABSENT),
            Kind::DelMissing => (s == ABSENT).then_some(ABSENT),
        }
    }

    /// Never changes the state: linearized greedily when it fits.
    fn is_read(self) -> bool {
        matches!(self, Kind::Get(_) | Kind::DelMissing)
    }

    /// What the state must be just before it, as a [`Needs`] index.
    fn need(self) -> u32 {
        match self {
            Kind::Get(v) => v,
            Kind::SetCreated(_) | Kind::DelMissing => ABSENT,
            Kind::SetReplaced(_) | Kind::DelDeleted => PRESENT,
        }
    }

    /// The state it leaves, if it changes it.
    fn makes(self) -> Option<u32> {
        match self {
            Kind::SetCreated(v) | Kind::SetReplaced(v) => Some(v),
            Kind::DelDeleted => Some(ABSENT),
            Kind::Get(_) | Kind::DelMissing => None,
        }
    }
}

/// The [`Needs`] index of "some value": no read needs the state `UNREAD`,
/// so its index is free.
const PRESENT: u32 = UNREAD;

/// The needs a write leaving `state` can meet.
fn made(state: u32) -> impl Iterator<Item = u32> {
    [Some(state), (state >= 2).then_some(PRESENT)]
        .into_iter()
        .flatten()
}

/// Keys in ascending order, some taken: the least not taken.
struct MinList {
    keys: Vec<u64>,
    taken: Vec<bool>,
    head: usize,
}

impl MinList {
    fn new(keys: Vec<u64>) -> Self {
        MinList {
            taken: vec![false; keys.len()],
            keys,
            head: 0,
        }
    }

    fn min(&self) -> Option<u64> {
        self.keys.get(self.head).copied()
    }

    fn take(&mut self, i: u32) {
        self.taken[i as usize] = true;
        while self.taken.get(self.head) == Some(&true) {
            self.head += 1;
        }
    }

    fn put_back(&mut self, i: u32) {
        self.taken[i as usize] = false;
        self.head = self.head.min(i as usize);
    }
}

/// A need's index and an operation's slot in its list.
type Slot = (u32, u32);

/// For each thing an operation may need the state to be just before it
/// (absent, present, or a value some read returned): when the pending
/// operations needing it must complete, and when the writes that could
/// still meet it were invoked. A need whose earliest pending operation
/// completes before any such write was invoked can only be met by the
/// state as it is now; if the state does not meet it, the configuration is
/// a dead end. Cutting those off is what makes most stale reads and wrong
/// statuses late in a long history quick to refute, instead of exploring
/// every configuration before them.
struct Needs {
    /// Per need, the completions of the operations needing it.
    pending: Vec<MinList>,
    /// Per need, the invocations of the writes able to meet it (an
    /// operation may count as meeting its own need: that only prunes less).
    makers: Vec<MinList>,
    hopeless: Vec<bool>,
    hopeless_count: u32,
    /// Per need, the operations in `pending`, in the same order.
    pending_ops: Vec<Vec<u32>>,
    known_need: Vec<Slot>,
    known_makes: Vec<Vec<Slot>>,
    unknown_makes: Vec<Vec<Slot>>,
}

impl Needs {
    fn new(states: usize, known: &[(&Op, Kind)], unknown: &[(&Op, u32)]) -> Self {
        let mut pending = vec![Vec::new(); states];
        let mut pending_ops = vec![Vec::new(); states];
        let mut known_need = Vec::with_capacity(known.len());
        // Known operations are numbered in completion order already.
        for (i, (op, kind)) in known.iter().enumerate() {
            let n = kind.need() as usize;
            known_need.push((n as u32, pending[n].len() as u32));
            pending[n].push(op.complete);
            pending_ops[n].push(i as u32);
        }
        // (invoke, known?, index) per need, sorted to number the slots.
        let mut makers: Vec<Vec<(u64, bool, u32)>> = vec![Vec::new(); states];
        for (i, (op, kind)) in known.iter().enumerate() {
            for n in kind.makes().into_iter().flat_map(made) {
                makers[n as usize].push((op.invoke, true, i as u32));
            }
        }
        for (u, &(op, state)) in unknown.iter().enumerate() {
            for n in made(state) {
                makers[n as usize].push((op.invoke, false, u as u32));
            }
        }
        let mut known_makes = vec![Vec::new(); known.len()];
        let mut unknown_makes = vec![Vec::new(); unknown.len()];
        let mut maker_lists = Vec::with_capacity(states);
        for (n, mut list) in makers.into_iter().enumerate() {
            list.sort_unstable();
            for (slot, &(_, is_known, i)) in list.iter().enumerate() {
                let owner = if is_known {
                    &mut known_makes[i as usize]
                } else {
                    &mut unknown_makes[i as usize]
                };
                owner.push((n as u32, slot as u32));
            }
            maker_lists.push(MinList::new(list.iter().map(|m| m.0).collect()));
        }
        let mut needs = Needs {
            pending: pending.into_iter().map(MinList::new).collect(),
            makers: maker_lists,
            hopeless: vec![false; states],
            hopeless_count: 0,
            pending_ops,
            known_need,
            known_makes,
            unknown_makes,
        };
        for n in 0..states as u32 {
            needs.refresh(n);
        }
        needs
    }

    fn refresh(&mut self, n: u32) {
        let hopeless = match (
            self.pending[n as usize].min(),
            self.makers[n as usize].min(),
        ) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(complete), Some(invoke)) => invoke > complete,
        };
        let was = std::mem::replace(&mut self.hopeless[n as usize], hopeless);
        match (was, hopeless) {
            (false, true) => self.hopeless_count += 1,
            (true, false) => self.hopeless_count -= 1,
            _ => {}
        }
    }

    fn set_maker(&mut self, (n, slot): Slot, taken: bool) {
        if taken {
            self.makers[n as usize].take(slot);
        } else {
            self.makers[n as usize].put_back(slot);
        }
        self.refresh(n);
    }

    /// Acknowledged operation `op` linearized (`taken`) or taken back.
    fn known(&mut self, op: u32, taken: bool) {
        let (n, slot) = self.known_need[op as usize];
        if taken {
            self.pending[n as usize].take(slot);
        } else {
            self.pending[n as usize].put_back(slot);
        }
        self.refresh(n);
        for i in 0..self.known_makes[op as usize].len() {
            self.set_maker(self.known_makes[op as usize][i], taken);
        }
    }

    /// Unknown write `u` used or taken back.
    fn unknown(&mut self, u: u32, taken: bool) {
        for i in 0..self.unknown_makes[u as usize].len() {
            self.set_maker(self.unknown_makes[u as usize][i], taken);
        }
    }

    /// For each need the state does not meet and nothing can meet any
    /// more, its earliest pending operation.
    fn unmet(&self, state: u32) -> Vec<u32> {
        if self.hopeless_count == 0 {
            return Vec::new();
        }
        let met = |n: u32| match n {
            ABSENT => state == ABSENT,
            PRESENT => state != ABSENT,
            _ => state == n,
        };
        (0..self.hopeless.len() as u32)
            .filter(|&n| self.hopeless[n as usize] && !met(n))
            .filter_map(|n| {
                let list = &self.pending[n as usize];
                self.pending_ops[n as usize].get(list.head).copied()
            })
            .collect()
    }

    fn dead(&self, state: u32) -> bool {
        let met = if state == ABSENT {
            u32::from(self.hopeless[ABSENT as usize])
        } else {
            u32::from(self.hopeless[PRESENT as usize])
                + u32::from(state >= 2 && self.hopeless[state as usize])
        };
        self.hopeless_count > met
    }
}

enum KeyError {
    Violation(Box<Violation>),
    Undecided(u64),
}

const NIL: u32 = u32::MAX;
/// The list's sentinel entry.
const HEAD: u32 = 0;

/// Writes of unknown outcome leaving the same state, earliest invoked
/// first.
struct Class {
    state: u32,
    members: Vec<u32>,
}

/// An operation placed in the linearization being built.
#[derive(Clone, Copy)]
enum Placed {
    Known {
        op: u32,
        entry: u32,
        /// A read taken greedily: its configuration has no other child.
        forced: bool,
    },
    Unknown {
        op: u32,
        class: usize,
        /// Return time bounding the candidates when it was tried.
        bound: u64,
    },
}

struct Frame {
    placed: Placed,
    prev_state: u32,
    prev_after_unknown: bool,
}

/// Where the search resumes.
enum Cursor {
    /// A new configuration: look for a fitting read first.
    Fresh,
    /// Try the acknowledged operation whose call event is this entry, and
    /// those after it.
    Scan(u32),
    /// Try the classes of unknown writes from this one, among those invoked
    /// by `bound`.
    Unknown {
        class: usize,
        bound: u64,
    },
    Backtrack,
}

fn check_key(key: &str, ops: &[Prepared<'_>], max_steps: u64) -> Result<u64, KeyError> {
    // Only values some read returned need telling apart.
    let mut ids: HashMap<&str, u32> = HashMap::new();
    for p in ops {
        if let What::Get(Some(v)) = p.what {
            let next = ids.len() as u32 + 2;
            ids.entry(v).or_insert(next);
        }
    }
    let sid = |v: &str| ids.get(v).copied().unwrap_or(UNREAD);

    let written: HashSet<&str> = ops
        .iter()
        .filter_map(|p| match p.what {
            What::Set(v, _) => Some(v),
            _ => None,
        })
        .collect();
    if let Some(p) = ops
        .iter()
        .find(|p| matches!(p.what, What::Get(Some(v)) if !written.contains(v)))
    {
        return Err(KeyError::Violation(Box::new(Violation {
            key: key.to_string(),
            reason: "a read returned a value no write of this key wrote".into(),
            prefix: Vec::new(),
            value: None,
            unexplained: vec![p.op.clone()],
            stuck: Vec::new(),
            known: ops.iter().filter(|p| p.op.ret != Ret::Unknown).count(),
        })));
    }

    let mut known: Vec<(&Op, Kind)> = Vec::new();
    let mut unknown: Vec<(&Op, u32)> = Vec::new();
    for p in ops {
        let kind = match p.what {
            What::DroppedRead => continue,
            What::Set(v, None) => {
                unknown.push((p.op, sid(v)));
                continue;
            }
            What::Delete(None) => {
                unknown.push((p.op, ABSENT));
                continue;
            }
            What::Get(v) => Kind::Get(v.map_or(ABSENT, sid)),
            What::Set(v, Some(true)) => Kind::SetCreated(sid(v)),
            What::Set(v, Some(false)) => Kind::SetReplaced(sid(v)),
            What::Delete(Some(true)) => Kind::DelDeleted,
            What::Delete(Some(false)) => Kind::DelMissing,
        };
        known.push((p.op, kind));
    }
    // Numbered in return order, the linearized set is mostly a prefix,
    // which the cache stores compactly.
    known.sort_by_key(|(op, _)| (op.complete, op.invoke));
    unknown.sort_by_key(|(op, _)| op.invoke);

    let mut search = Search::new(known, unknown, ids.len() + 2);
    let result = search.run(max_steps);
    match result {
        Ok(()) => Ok(search.steps),
        Err(Stop::Undecided) => Err(KeyError::Undecided(search.steps)),
        Err(Stop::Violation) => Err(KeyError::Violation(Box::new(search.violation(key)))),
    }
}

enum Stop {
    Violation,
    Undecided,
}

struct Search<'a> {
    known: Vec<(&'a Op, Kind)>,
    unknown: Vec<(&'a Op, u32)>,
    classes: Vec<Class>,
    /// Per class, how many of its members (always the first ones) are used.
    used: Vec<u32>,

    // The event list: entry 0 is the sentinel, then call and return events
    // in time order.
    time: Vec<u64>,
    entry_op: Vec<u32>,
    is_call: Vec<bool>,
    /// A call's return entry.
    partner: Vec<u32>,
    next: Vec<u32>,
    prev: Vec<u32>,

    /// Linearized acknowledged operations, and their Zobrist hash.
    linearized: Vec<u64>,
    hash: u64,
    zobrist: Vec<u64>,
    /// Used unknown writes.
    used_unknown: Vec<u64>,
    done: usize,
    state: u32,
    after_unknown: bool,
    stack: Vec<Frame>,
    cache: Cache,
    needs: Needs,
    steps: u64,

    // The longest prefix so far: `best` equals `stack[..low]` where `low`
    // is the shallowest the stack has been since it was taken, so only the
    // rest is copied when a longer one is found.
    best: Vec<Placed>,
    best_done: Option<usize>,
    best_stuck: Vec<u32>,
    best_unmet: Vec<u32>,
    low: usize,
}

impl<'a> Search<'a> {
    fn new(known: Vec<(&'a Op, Kind)>, unknown: Vec<(&'a Op, u32)>, states: usize) -> Self {
        let needs = Needs::new(states, &known, &unknown);
        let n = known.len();
        // Calls before returns at the same time: touching is overlapping.
        let mut events: Vec<(u64, bool, u32)> = Vec::with_capacity(2 * n);
        for (i, (op, _)) in known.iter().enumerate() {
            events.push((op.invoke, false, i as u32));
            events.push((op.complete, true, i as u32));
        }
        events.sort_unstable();
        let len = events.len() + 1;
        let mut time = vec![0; len];
        let mut entry_op = vec![NIL; len];
        let mut is_call = vec![false; len];
        let mut partner = vec![NIL; len];
        let mut call_of = vec![NIL; n];
        for (i, &(t, ret, op)) in events.iter().enumerate() {
            let e = i as u32 + 1;
            time[e as usize] = t;
            entry_op[e as usize] = op;
            is_call[e as usize] = !ret;
            if ret {
                partner[call_of[op as usize] as usize] = e;
            } else {
                call_of[op as usize] = e;
            }
        }
        let next = (0..len as u32)
            .map(|e| if e + 1 < len as u32 { e + 1 } else { NIL })
            .collect();
        let prev = (0..len as u32)
            .map(|e| if e == 0 { NIL } else { e - 1 })
            .collect();

        let mut classes: Vec<Class> = Vec::new();
        for (u, &(_, state)) in unknown.iter().enumerate() {
            match classes.iter_mut().find(|c| c.state == state) {
                Some(c) => c.members.push(u as u32),
                None => classes.push(Class {
                    state,
                    members: vec![u as u32],
                }),
            }
        }
        let kw = n.div_ceil(64);
        let uw = unknown.len().div_ceil(64);
        Search {
            used: vec![0; classes.len()],
            classes,
            unknown,
            time,
            entry_op,
            is_call,
            partner,
            next,
            prev,
            linearized: vec![0; kw],
            hash: 0,
            zobrist: (0..n as u64).map(splitmix).collect(),
            used_unknown: vec![0; uw],
            done: 0,
            state: ABSENT,
            after_unknown: false,
            stack: Vec::new(),
            cache: Cache::new(uw),
            needs,
            steps: 0,
            best: Vec::new(),
            best_done: None,
            best_stuck: Vec::new(),
            best_unmet: Vec::new(),
            low: 0,
            known,
        }
    }

    fn unlink(&mut self, e: u32) {
        let (p, n) = (self.prev[e as usize], self.next[e as usize]);
        self.next[p as usize] = n;
        if n != NIL {
            self.prev[n as usize] = p;
        }
    }

    fn relink(&mut self, e: u32) {
        let (p, n) = (self.prev[e as usize], self.next[e as usize]);
        self.next[p as usize] = e;
        if n != NIL {
            self.prev[n as usize] = e;
        }
    }

    fn lift(&mut self, call: u32) {
        self.unlink(call);
        self.unlink(self.partner[call as usize]);
    }

    fn unlift(&mut self, call: u32) {
        self.relink(self.partner[call as usize]);
        self.relink(call);
    }

    fn tick(&mut self, max_steps: u64) -> Result<(), Stop> {
        self.steps += 1;
        if self.steps > max_steps {
            return Err(Stop::Undecided);
        }
        Ok(())
    }

    /// Linearizes the acknowledged operation whose call is `entry`, leaving
    /// `state`, unless that configuration is a dead end or was explored
    /// already.
    fn push_known(&mut self, entry: u32, state: u32, forced: bool) -> bool {
        let op = self.entry_op[entry as usize];
        self.needs.known(op, true);
        let dead = self.needs.dead(state);
        self.needs.known(op, false);
        if dead {
            if self.best_done.is_none_or(|b| self.done + 1 > b) {
                // A dead end, but the longest prefix yet, and the one that
                // shows the operation it leaves unexplained.
                self.place_known(op, entry, state, forced);
                self.remember();
                self.pop();
            }
            return false;
        }
        let (w, bit) = (op as usize / 64, 1u64 << (op % 64));
        self.linearized[w] |= bit;
        let fresh = self.cache.insert(
            self.hash ^ self.zobrist[op as usize] ^ state_hash(state),
            &self.linearized,
            &self.used_unknown,
            state,
            false,
        );
        self.linearized[w] &= !bit;
        if fresh {
            self.place_known(op, entry, state, forced);
        }
        fresh
    }

    fn place_known(&mut self, op: u32, entry: u32, state: u32, forced: bool) {
        self.needs.known(op, true);
        self.linearized[op as usize / 64] |= 1u64 << (op % 64);
        self.hash ^= self.zobrist[op as usize];
        self.stack.push(Frame {
            placed: Placed::Known { op, entry, forced },
            prev_state: self.state,
            prev_after_unknown: self.after_unknown,
        });
        self.state = state;
        self.after_unknown = false;
        self.lift(entry);
        self.done += 1;
    }

    fn push_unknown(&mut self, class: usize, bound: u64) -> bool {
        let c = &self.classes[class];
        let (state, op) = (c.state, c.members[self.used[class] as usize]);
        self.needs.unknown(op, true);
        if self.needs.dead(state) {
            self.needs.unknown(op, false);
            return false;
        }
        let (w, bit) = (op as usize / 64, 1u64 << (op % 64));
        self.used_unknown[w] |= bit;
        if !self.cache.insert(
            self.hash ^ state_hash(state),
            &self.linearized,
            &self.used_unknown,
            state,
            true,
        ) {
            self.used_unknown[w] &= !bit;
            self.needs.unknown(op, false);
            return false;
        }
        self.stack.push(Frame {
            placed: Placed::Unknown { op, class, bound },
            prev_state: self.state,
            prev_after_unknown: self.after_unknown,
        });
        self.used[class] += 1;
        self.state = state;
        self.after_unknown = true;
        true
    }

    /// Takes back the last operation placed; where to resume.
    fn pop(&mut self) -> Option<Cursor> {
        let frame = self.stack.pop()?;
        self.low = self.low.min(self.stack.len());
        self.state = frame.prev_state;
        self.after_unknown = frame.prev_after_unknown;
        Some(match frame.placed {
            Placed::Known { op, entry, forced } => {
                self.linearized[op as usize / 64] &= !(1u64 << (op % 64));
                self.hash ^= self.zobrist[op as usize];
                self.unlift(entry);
                self.done -= 1;
                self.needs.known(op, false);
                if forced {
                    Cursor::Backtrack
                } else {
                    Cursor::Scan(self.next[entry as usize])
                }
            }
            Placed::Unknown { op, class, bound } => {
                self.used_unknown[op as usize / 64] &= !(1u64 << (op % 64));
                self.used[class] -= 1;
                self.needs.unknown(op, false);
                Cursor::Unknown {
                    class: class + 1,
                    bound,
                }
            }
        })
    }

    fn run(&mut self, max_steps: u64) -> Result<(), Stop> {
        if self.known.is_empty() {
            return Ok(());
        }
        self.cache.insert(
            state_hash(ABSENT),
            &self.linearized,
            &self.used_unknown,
            ABSENT,
            false,
        );
        let mut cursor = if self.needs.dead(ABSENT) {
            Cursor::Backtrack
        } else {
            Cursor::Fresh
        };
        loop {
            if self.done == self.known.len() {
                return Ok(());
            }
            cursor = match cursor {
                Cursor::Fresh => self.fresh(max_steps)?,
                Cursor::Scan(e) => self.scan(e, max_steps)?,
                Cursor::Unknown { class, bound } => self.try_unknown(class, bound, max_steps)?,
                Cursor::Backtrack => {
                    if self.best_done.is_none_or(|b| self.done > b) {
                        self.remember();
                    }
                    self.pop().ok_or(Stop::Violation)?
                }
            };
        }
    }

    fn fresh(&mut self, max_steps: u64) -> Result<Cursor, Stop> {
        let mut e = self.next[HEAD as usize];
        while e != NIL && self.is_call[e as usize] {
            let kind = self.known[self.entry_op[e as usize] as usize].1;
            if kind.is_read() {
                self.tick(max_steps)?;
                if let Some(s) = kind.step(self.state) {
                    return Ok(if self.push_known(e, s, true) {
                        Cursor::Fresh
                    } else {
                        Cursor::Backtrack
                    });
                }
            }
            e = self.next[e as usize];
        }
        Ok(Cursor::Scan(self.next[HEAD as usize]))
    }

    fn scan(&mut self, mut e: u32, max_steps: u64) -> Result<Cursor, Stop> {
        while e != NIL {
            if !self.is_call[e as usize] {
                // The earliest pending return: nothing after it can come
                // before that operation.
                return Ok(Cursor::Unknown {
                    class: 0,
                    bound: self.time[e as usize],
                });
            }
            self.tick(max_steps)?;
            let kind = self.known[self.entry_op[e as usize] as usize].1;
            if let Some(s) = kind.step(self.state) {
                if self.push_known(e, s, false) {
                    return Ok(Cursor::Fresh);
                }
            }
            e = self.next[e as usize];
        }
        // Every pending operation has a return event after its call, so
        // the list cannot end while some are pending.
        Ok(Cursor::Backtrack)
    }

    fn try_unknown(&mut self, first: usize, bound: u64, max_steps: u64) -> Result<Cursor, Stop> {
        if self.after_unknown {
            return Ok(Cursor::Backtrack);
        }
        for class in first..self.classes.len() {
            let c = &self.classes[class];
            let Some(&u) = c.members.get(self.used[class] as usize) else {
                continue;
            };
            if c.state == self.state || self.unknown[u as usize].0.invoke > bound {
                continue;
            }
            self.tick(max_steps)?;
            if self.push_unknown(class, bound) {
                return Ok(Cursor::Fresh);
            }
        }
        Ok(Cursor::Backtrack)
    }

    fn remember(&mut self) {
        self.best.truncate(self.low);
        let low = self.low;
        self.best.extend(self.stack[low..].iter().map(|f| f.placed));
        self.low = self.stack.len();
        self.best_done = Some(self.done);
        self.best_stuck.clear();
        let mut e = self.next[HEAD as usize];
        while e != NIL && self.is_call[e as usize] {
            self.best_stuck.push(self.entry_op[e as usize]);
            e = self.next[e as usize];
        }
        self.best_unmet = self.needs.unmet(self.state);
    }

    fn violation(&self, key: &str) -> Violation {
        let prefix: Vec<Op> = self
            .best
            .iter()
            .map(|p| match *p {
                Placed::Known { op, .. } => self.known[op as usize].0.clone(),
                Placed::Unknown { op, .. } => self.unknown[op as usize].0.clone(),
            })
            .collect();
        let value = prefix
            .iter()
            .rev()
            .find_map(|op| match &op.call {
                Call::Get => None,
                Call::Set(v) => Some(Some(v.clone())),
                Call::Delete => Some(None),
            })
            .flatten();
        let mut stuck: Vec<Op> = self
            .best_stuck
            .iter()
            .map(|&op| self.known[op as usize].0.clone())
            .collect();
        stuck.sort_by_key(|op| op.invoke);
        let mut unexplained: Vec<Op> = self
            .best_unmet
            .iter()
            .map(|&op| self.known[op as usize].0.clone())
            .collect();
        unexplained.sort_by_key(|op| op.invoke);
        Violation {
            key: key.to_string(),
            reason: "no order of the operations consistent with real time explains every answer"
                .into(),
            prefix,
            value,
            unexplained,
            stuck,
            known: self.known.len(),
        }
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn state_hash(s: u32) -> u64 {
    splitmix(u64::from(s) | 1 << 63)
}

/// The keys are Zobrist hashes already.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Explored configurations, chained by the hash of (linearized set, state).
/// The set of used unknown writes is left out of the hash so that one chain
/// holds every configuration a new one could be dominated by.
struct Cache {
    heads: HashMap<u64, u32, BuildHasherDefault<Prehashed>>,
    entries: Vec<CacheEntry>,
    /// Each entry's linearized set: its first missing operation, then the
    /// operations linearized after it, preceded by their count.
    sets: Vec<u32>,
    /// Each entry's used unknown writes, `words` words each.
    used: Vec<u64>,
    words: usize,
    scratch: Vec<u32>,
}

struct CacheEntry {
    set: usize,
    next: u32,
    state: u32,
    after_unknown: bool,
}

impl Cache {
    fn new(words: usize) -> Self {
        Cache {
            heads: HashMap::default(),
            entries: Vec::new(),
            sets: Vec::new(),
            used: Vec::new(),
            words,
            scratch: Vec::new(),
        }
    }

    /// Adds the configuration unless one at least as promising was explored:
    /// the same linearized set and state, a subset of the unknown writes
    /// used, and no more constrained about placing one next.
    fn insert(
        &mut self,
        hash: u64,
        linearized: &[u64],
        used: &[u64],
        state: u32,
        after_unknown: bool,
    ) -> bool {
        encode(linearized, &mut self.scratch);
        let head = self.heads.get(&hash).copied().unwrap_or(NIL);
        let mut i = head;
        while i != NIL {
            let e = &self.entries[i as usize];
            if e.state == state
                && (!e.after_unknown || after_unknown)
                && self.sets[e.set] == self.scratch[0]
                && self.sets[e.set..e.set + self.scratch.len()] == self.scratch[..]
                && self.used[i as usize * self.words..][..self.words]
                    .iter()
                    .zip(used)
                    .all(|(old, new)| old & !new == 0)
            {
                return false;
            }
            i = e.next;
        }
        self.entries.push(CacheEntry {
            set: self.sets.len(),
            next: head,
            state,
            after_unknown,
        });
        self.sets.extend_from_slice(&self.scratch);
        self.used.extend_from_slice(used);
        self.heads.insert(hash, self.entries.len() as u32 - 1);
        true
    }
}

/// `[count, first missing, linearized after it...]`: the count first, so
/// that comparing two encodings never reads past the shorter one's end.
fn encode(bits: &[u64], out: &mut Vec<u32>) {
    out.clear();
    out.push(0);
    let first = bits
        .iter()
        .position(|&w| w != u64::MAX)
        .unwrap_or(bits.len());
    let missing = first * 64
        + bits
            .get(first)
            .map_or(0, |&w| (!w).trailing_zeros() as usize);
    out.push(missing as u32);
    for (i, &w) in bits.iter().enumerate().skip(first) {
        let mut w = if i == first {
            w & !((1u64 << (missing % 64)) - 1)
        } else {
            w
        };
        while w != 0 {
            out.push((i * 64) as u32 + w.trailing_zeros());
            w &= w - 1;
        }
    }
    out[0] = out.len() as u32 - 2;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn op(client: usize, call: Call, ret: Ret, invoke: u64, complete: u64) -> Op {
        Op {
            client,
            key: "k".into(),
            call,
            ret,
            invoke,
            complete,
        }
    }

    fn get(client: usize, v: Option<&str>, invoke: u64, complete: u64) -> Op {
        op(
            client,
            Call::Get,
            Ret::Get(v.map(str::to_string)),
            invoke,
            complete,
        )
    }

    fn set(client: usize, v: &str, created: bool, invoke: u64, complete: u64) -> Op {
        op(
            client,
            Call::Set(v.into()),
            Ret::Set { created },
            invoke,
            complete,
        )
    }

    fn del(client: usize, deleted: bool, invoke: u64, complete: u64) -> Op {
        op(
            client,
            Call::Delete,
            Ret::Delete { deleted },
            invoke,
            complete,
        )
    }

    /// `complete` is deliberately early: it must be ignored.
    fn set_unknown(client: usize, v: &str, invoke: u64) -> Op {
        op(client, Call::Set(v.into()), Ret::Unknown, invoke, invoke)
    }

    fn del_unknown(client: usize, invoke: u64) -> Op {
        op(client, Call::Delete, Ret::Unknown, invoke, invoke)
    }

    #[track_caller]
    fn accepted(history: &[Op]) -> Stats {
        match check(history) {
            Ok(stats) => stats,
            Err(e) => panic!("expected linearizable, got: {e}"),
        }
    }

    #[track_caller]
    fn rejected(history: &[Op]) -> Violation {
        match check(history) {
            Err(CheckError::Violation(v)) => *v,
            Ok(_) => panic!("expected a violation, the history was accepted"),
            Err(e) => panic!("expected a violation, got: {e}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(accepted(&[]), Stats::default());
    }

    #[test]
    fn sequential_history() {
        let h = [
            get(0, None, 0, 10),
            del(0, false, 20, 30),
            set(0, "a", true, 40, 50),
            get(1, Some("a"), 60, 70),
            set(1, "b", false, 80, 90),
            get(0, Some("b"), 100, 110),
            del(0, true, 120, 130),
            get(1, None, 140, 150),
            set(1, "c", true, 160, 170),
        ];
        let stats = accepted(&h);
        assert_eq!((stats.keys, stats.ops, stats.unknown), (1, 9, 0));
    }

    #[test]
    fn sequential_read_of_an_overwritten_value() {
        let h = [
            set(0, "a", true, 0, 10),
            set(1, "b", false, 20, 30),
            get(0, Some("a"), 40, 50),
        ];
        let v = rejected(&h);
        assert_eq!(v.key, "k");
        // The prefix places both writes; the read cannot follow.
        assert_eq!(v.prefix.len(), 2);
        assert_eq!(v.value.as_deref(), Some("b"));
        let unexplained: Vec<u64> = v.unexplained.iter().map(|o| o.invoke).collect();
        assert_eq!(unexplained, [40]);
        let stuck: Vec<u64> = v.stuck.iter().map(|o| o.invoke).collect();
        assert_eq!(stuck, [40]);
    }

    #[test]
    fn concurrent_writes_in_either_order() {
        let base = [
            set(0, "x", true, 0, 10),
            set(1, "a", false, 20, 60),
            set(2, "b", false, 30, 50),
        ];
        for seen in ["a", "b"] {
            let mut h = base.to_vec();
            h.push(get(0, Some(seen), 70, 80));
            accepted(&h);
        }
        // Whichever came last, it stays.
        let mut h = base.to_vec();
        h.push(get(0, Some("a"), 70, 80));
        h.push(get(1, Some("b"), 90, 100));
        rejected(&h);
    }

    #[test]
    fn statuses_fix_the_order_of_concurrent_writes() {
        // "a" created the key, so it came first and "b" is what stays.
        let base = [set(0, "a", true, 0, 50), set(1, "b", false, 10, 40)];
        let mut h = base.to_vec();
        h.push(get(0, Some("b"), 60, 70));
        accepted(&h);
        let mut h = base.to_vec();
        h.push(get(0, Some("a"), 60, 70));
        rejected(&h);
    }

    #[test]
    fn read_overlapping_a_write_sees_old_or_new() {
        let base = [set(0, "a", true, 0, 10), set(1, "b", false, 20, 60)];
        for seen in ["a", "b"] {
            let mut h = base.to_vec();
            h.push(get(2, Some(seen), 30, 50));
            accepted(&h);
        }
        // Once a read saw the new value, a later read cannot see the old.
        let mut h = base.to_vec();
        h.push(get(2, Some("b"), 30, 40));
        h.push(get(2, Some("a"), 45, 50));
        rejected(&h);
    }

    #[test]
    fn touching_intervals_overlap() {
        // complete == invoke: concurrent, so the read may come first.
        accepted(&[set(0, "a", true, 0, 10), get(1, None, 10, 20)]);
        rejected(&[set(0, "a", true, 0, 10), get(1, None, 11, 20)]);
    }

    #[test]
    fn flip_flop_with_a_slow_acknowledged_write() {
        let h = [
            set(0, "v1", true, 0, 1_000),
            get(1, Some("v1"), 10, 20),
            set(1, "v2", false, 30, 40),
            get(1, Some("v1"), 50, 60),
        ];
        let v = rejected(&h);
        assert!(v.to_string().contains("v2"), "{v}");
    }

    #[test]
    fn flip_flop_with_an_unknown_write() {
        let h = [
            set_unknown(0, "v1", 0),
            get(1, Some("v1"), 10, 20),
            set(1, "v2", false, 30, 40),
            get(1, Some("v1"), 50, 60),
        ];
        rejected(&h);
    }

    #[test]
    fn replaced_twice_on_an_absent_key() {
        rejected(&[set(0, "a", false, 0, 20), set(1, "b", false, 5, 25)]);
        accepted(&[set(0, "a", true, 0, 20), set(1, "b", false, 5, 25)]);
    }

    #[test]
    fn delete_not_found_while_two_sets_replaced() {
        // One of the two sets must have created the key.
        rejected(&[
            set(0, "a", false, 0, 20),
            set(1, "b", false, 5, 25),
            del(2, false, 10, 30),
        ]);
        // Had one created it, the not-found delete fits before both.
        accepted(&[
            set(0, "a", true, 0, 20),
            set(1, "b", false, 5, 25),
            del(2, false, 10, 30),
        ]);
    }

    #[test]
    fn created_after_an_acknowledged_set() {
        rejected(&[set(0, "a", true, 0, 10), set(1, "b", true, 20, 30)]);
        // Unless a delete may come in between.
        accepted(&[
            set(0, "a", true, 0, 10),
            del(2, true, 5, 25),
            set(1, "b", true, 20, 30),
        ]);
        accepted(&[
            set(0, "a", true, 0, 10),
            del_unknown(2, 5),
            set(1, "b", true, 20, 30),
        ]);
    }

    #[test]
    fn delete_of_an_absent_key_answered_deleted() {
        rejected(&[del(0, true, 0, 10)]);
        rejected(&[
            set(0, "a", true, 0, 10),
            del(0, true, 20, 30),
            del(1, true, 40, 50),
        ]);
        accepted(&[del(0, false, 0, 10), get(0, None, 20, 30)]);
    }

    #[test]
    fn read_of_a_value_only_an_unknown_write_wrote() {
        let h = [
            set(0, "a", true, 0, 10),
            set_unknown(1, "u", 20),
            get(2, Some("u"), 1_000, 1_010),
            get(2, Some("u"), 2_000, 2_010),
        ];
        let stats = accepted(&h);
        assert_eq!(stats.unknown, 1);
        // Not before its invocation.
        rejected(&[
            set(0, "a", true, 0, 10),
            get(2, Some("u"), 12, 18),
            set_unknown(1, "u", 20),
        ]);
    }

    #[test]
    fn unknown_write_seen_then_the_previous_value_again() {
        let base = [
            set(0, "a", true, 0, 10),
            set_unknown(1, "u", 20),
            get(2, Some("u"), 30, 40),
            get(2, Some("a"), 50, 60),
        ];
        rejected(&base);
        // Another write of "a", pending meanwhile, explains it.
        let mut h = base.to_vec();
        h.push(op(3, Call::Set("a".into()), Ret::Unknown, 25, 25));
        accepted(&h);
        // The same from absent, explained by a delete of unknown outcome.
        let base = [
            get(0, None, 0, 10),
            set_unknown(1, "u", 20),
            get(2, Some("u"), 30, 40),
            get(2, None, 50, 60),
        ];
        rejected(&base);
        let mut h = base.to_vec();
        h.push(del_unknown(3, 45));
        accepted(&h);
        // A delete invoked after the read cannot explain it.
        let mut h = base.to_vec();
        h.push(del_unknown(3, 61));
        rejected(&h);
    }

    #[test]
    fn unknown_write_that_never_shows() {
        let h = [
            set(0, "a", true, 0, 10),
            set_unknown(1, "u", 5),
            del_unknown(1, 6),
            get(2, Some("a"), 30, 40),
            set(0, "b", false, 50, 60),
            get(2, Some("b"), 70, 80),
        ];
        accepted(&h);
    }

    #[test]
    fn unknown_writes_take_effect_at_most_once() {
        // "u" cannot reappear after "b" overwrote it.
        let h = [
            set_unknown(0, "u", 0),
            get(1, Some("u"), 10, 20),
            set(1, "b", false, 30, 40),
            get(1, Some("b"), 50, 60),
            get(1, Some("u"), 70, 80),
        ];
        rejected(&h);
    }

    #[test]
    fn unknown_write_with_any_status() {
        // An unknown set makes the key present for a later replace, and an
        // unknown delete makes it absent for a later create.
        accepted(&[set_unknown(0, "u", 0), set(1, "b", false, 10, 20)]);
        accepted(&[
            set(0, "a", true, 0, 10),
            del_unknown(0, 20),
            set(1, "b", true, 30, 40),
        ]);
    }

    #[test]
    fn unknown_reads_are_dropped() {
        let h = [
            set(0, "a", true, 0, 10),
            op(1, Call::Get, Ret::Unknown, 20, 30),
            get(1, Some("a"), 40, 50),
        ];
        let stats = accepted(&h);
        assert_eq!((stats.unknown, stats.unknown_reads), (1, 1));
    }

    #[test]
    fn equal_values_written_twice() {
        // Correctness does not rest on values being unique.
        accepted(&[
            set(0, "x", true, 0, 10),
            set(0, "y", false, 20, 30),
            set(0, "x", false, 40, 50),
            get(1, Some("x"), 60, 70),
        ]);
        rejected(&[
            set(0, "x", true, 0, 10),
            set(0, "y", false, 20, 30),
            get(1, Some("x"), 40, 50),
            set(0, "x", false, 60, 70),
        ]);
    }

    #[test]
    fn read_of_a_value_never_written() {
        let v = rejected(&[set(0, "a", true, 0, 10), get(1, Some("zz"), 20, 30)]);
        assert!(v.reason.contains("no write"), "{v}");
        assert!(v.to_string().contains("zz"), "{v}");
    }

    #[test]
    fn multi_key_history_reports_the_bad_key() {
        let mut h = Vec::new();
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            let t = i as u64 * 1_000;
            let mut ops = vec![
                set(0, "v1", true, t, t + 10),
                set(1, "v2", false, t + 20, t + 30),
                get(0, Some("v2"), t + 40, t + 50),
            ];
            if *key == "b" {
                ops.push(get(2, Some("v1"), t + 60, t + 70));
            }
            for mut o in ops {
                o.key = key.to_string();
                h.push(o);
            }
        }
        let v = rejected(&h);
        assert_eq!(v.key, "b");
        let text = v.to_string();
        assert!(text.starts_with("key \"b\" is not linearizable"), "{text}");
        // The same operations on their own keys are fine.
        h.retain(|o| o.key != "b");
        assert_eq!(accepted(&h).keys, 2);
    }

    #[test]
    fn answer_that_does_not_fit_its_call_is_invalid() {
        let h = [
            set(0, "a", true, 0, 10),
            op(1, Call::Get, Ret::Set { created: true }, 20, 30),
        ];
        match check(&h) {
            Err(CheckError::Invalid { index, reason }) => {
                assert_eq!(index, 1);
                assert!(reason.contains("does not fit"), "{reason}");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        match check(&[get(0, None, 10, 5)]) {
            Err(CheckError::Invalid { index: 0, .. }) => {}
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn budget_exhausted_is_undecided() {
        let h = random_history(&Shape::small(), 7);
        match check_with(&h, &Options { max_steps: 10 }) {
            Err(CheckError::Undecided { key, steps }) => {
                assert_eq!(key, "k");
                assert_eq!(steps, 11);
            }
            other => panic!("expected Undecided, got {other:?}"),
        }
    }

    #[test]
    fn violation_display_shows_the_operations() {
        let h = [
            set(0, "a", true, 0, 10),
            set(1, "b", false, 20, 30),
            get(2, Some("a"), 1_500_000, 2_000_000),
        ];
        let text = CheckError::Violation(Box::new(rejected(&h))).to_string();
        for want in [
            "key \"k\"",
            "2 operations (2 of 3 acknowledged)",
            "client 1 set(\"b\") -> replaced",
            "value after it: \"b\"",
            "nothing can explain any more:\n    client 2 get -> \"a\"  [1.500000ms .. 2.000000ms]",
        ] {
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }
    }

    /// xorshift64: deterministic, and enough for shuffling test histories.
    struct XorShift(u64);

    impl XorShift {
        fn new(seed: u64) -> Self {
            XorShift(splitmix(seed) | 1)
        }

        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    struct Shape {
        clients: usize,
        ops: usize,
        /// Roughly how many writes answer Unknown.
        unknown_writes: usize,
        /// How far an interval may stretch on each side of its point.
        spread: u64,
    }

    impl Shape {
        fn small() -> Self {
            Shape {
                clients: 3,
                ops: 200,
                unknown_writes: 5,
                spread: 60,
            }
        }
    }

    /// A register's sequential execution at increasing points in time, each
    /// operation's interval widened around its point (each client's
    /// operations one after another), so the history is linearizable by
    /// construction. An unknown write took effect at its point, later (as
    /// a write retried or delayed would), or never.
    fn random_history(shape: &Shape, seed: u64) -> Vec<Op> {
        let mut rng = XorShift::new(seed);
        let mut free_at = vec![0u64; shape.clients];
        let mut state: Option<String> = None;
        let mut delayed: Vec<(usize, Option<String>)> = Vec::new();
        let mut unknown_left = shape.unknown_writes;
        let mut point = 1_000u64;
        let mut h = Vec::with_capacity(shape.ops);
        for i in 0..shape.ops {
            point += 1 + rng.below(20);
            delayed.retain(|(due, effect)| {
                if *due <= i {
                    state = effect.clone();
                }
                *due > i
            });
            let free: Vec<usize> = (0..shape.clients).filter(|&c| free_at[c] < point).collect();
            let client = if free.is_empty() {
                let c = (0..shape.clients).min_by_key(|&c| free_at[c]).unwrap_or(0);
                point = free_at[c] + 1;
                c
            } else {
                free[rng.below(free.len() as u64) as usize]
            };
            let invoke = point
                .saturating_sub(rng.below(shape.spread + 1))
                .max(free_at[client] + 1);
            let complete = point + rng.below(shape.spread + 1);
            free_at[client] = complete;
            let roll = rng.below(100);
            let call = if roll < 50 {
                Call::Get
            } else if roll < 85 {
                Call::Set(format!("v{i}"))
            } else {
                Call::Delete
            };
            let effect = match &call {
                Call::Get => None,
                Call::Set(v) => Some(Some(v.clone())),
                Call::Delete => Some(None),
            };
            let unknown = effect.is_some()
                && unknown_left > 0
                && rng.below(((shape.ops - i) / 2).max(1) as u64) < unknown_left as u64;
            let ret = if unknown {
                unknown_left -= 1;
                if let Some(effect) = effect {
                    match rng.below(3) {
                        0 => state = effect,
                        1 => delayed.push((i + 1 + rng.below(50) as usize, effect)),
                        _ => {}
                    }
                }
                Ret::Unknown
            } else {
                match &call {
                    Call::Get if rng.below(50) == 0 => Ret::Unknown,
                    Call::Get => Ret::Get(state.clone()),
                    Call::Set(v) => Ret::Set {
                        created: state.replace(v.clone()).is_none(),
                    },
                    Call::Delete => Ret::Delete {
                        deleted: state.take().is_some(),
                    },
                }
            };
            h.push(op(client, call, ret, invoke, complete));
        }
        h
    }

    /// Makes the last read that can be made stale return a value whose
    /// write was followed by another acknowledged set, both before the read
    /// began: a violation whichever order the rest takes.
    fn make_stale(h: &mut [Op]) -> bool {
        let is_set = |o: &Op| matches!((&o.call, &o.ret), (Call::Set(_), Ret::Set { .. }));
        let Some(first) = h.iter().filter(|o| is_set(o)).min_by_key(|o| o.complete) else {
            return false;
        };
        let (old, old_done) = (first.call.clone(), first.complete);
        let Some(second_done) = h
            .iter()
            .filter(|o| is_set(o) && o.invoke > old_done)
            .map(|o| o.complete)
            .min()
        else {
            return false;
        };
        let Call::Set(old) = old else {
            return false;
        };
        let read = h
            .iter_mut()
            .rev()
            .find(|o| o.invoke > second_done && matches!(o.ret, Ret::Get(Some(_))));
        match read {
            Some(r) => {
                r.ret = Ret::Get(Some(old));
                true
            }
            None => false,
        }
    }

    #[test]
    fn random_histories_are_accepted_and_mutations_rejected() {
        for seed in 0..40 {
            let h = random_history(&Shape::small(), seed);
            if let Err(e) = check(&h) {
                panic!("seed {seed}: a history linearizable by construction was rejected: {e}");
            }

            let mut bad = h.clone();
            let reads: Vec<usize> = (0..bad.len())
                .filter(|&i| matches!(bad[i].ret, Ret::Get(Some(_))))
                .collect();
            let mut rng = XorShift::new(seed ^ 0xABCD);
            let Some(&i) = reads.get(rng.below(reads.len() as u64) as usize) else {
                panic!("seed {seed}: no read returned a value");
            };
            bad[i].ret = Ret::Get(Some("never written".into()));
            match check(&bad) {
                Err(CheckError::Violation(v)) => {
                    let culprit = v.unexplained.first().map(|o| (o.invoke, &o.ret));
                    assert_eq!(culprit, Some((bad[i].invoke, &bad[i].ret)));
                }
                other => panic!("seed {seed}: a read of a value never written: {other:?}"),
            }

            let mut stale = h.clone();
            assert!(make_stale(&mut stale), "seed {seed}: nothing to make stale");
            match check(&stale) {
                Err(CheckError::Violation(_)) => {}
                other => panic!("seed {seed}: a stale read was not caught: {other:?}"),
            }
        }
    }

    #[test]
    fn sixteen_clients_four_thousand_operations() {
        let shape = Shape {
            clients: 16,
            ops: 4_000,
            unknown_writes: 30,
            spread: 200,
        };
        let h = random_history(&shape, 42);
        let unknown = h
            .iter()
            .filter(|o| o.ret == Ret::Unknown && o.call != Call::Get)
            .count();
        assert!(unknown >= 20, "only {unknown} unknown writes");
        let started = Instant::now();
        let stats = accepted(&h);
        eprintln!(
            "{} operations ({unknown} unknown writes), 16 clients: accepted in {:?}, {} steps",
            h.len(),
            started.elapsed(),
            stats.steps
        );

        let mut stale = h.clone();
        assert!(make_stale(&mut stale));
        let started = Instant::now();
        let result = check(&stale);
        eprintln!(
            "the same with its last read made stale: {} in {:?}",
            match &result {
                Err(CheckError::Violation(_)) => "violation",
                Err(CheckError::Undecided { .. }) => "undecided",
                _ => "other",
            },
            started.elapsed(),
        );
        assert!(
            matches!(result, Err(CheckError::Violation(_))),
            "{result:?}"
        );
    }

    /// Every order tried, no pruning: the reference for small histories.
    fn brute_force(history: &[Op]) -> bool {
        fn go(ops: &[&Op], placed: &mut [bool], state: Option<String>) -> bool {
            if ops
                .iter()
                .zip(placed.iter())
                .all(|(o, p)| *p || o.ret == Ret::Unknown)
            {
                return true;
            }
            for i in 0..ops.len() {
                let o = ops[i];
                let blocked = ops
                    .iter()
                    .zip(placed.iter())
                    .any(|(x, p)| !p && x.ret != Ret::Unknown && x.complete < o.invoke);
                if placed[i] || blocked {
                    continue;
                }
                let next = match (&o.call, &o.ret) {
                    (Call::Get, Ret::Get(v)) => (*v == state).then(|| state.clone()),
                    (Call::Set(v), Ret::Set { created }) => {
                        (state.is_none() == *created).then(|| Some(v.clone()))
                    }
                    (Call::Set(v), _) => Some(Some(v.clone())),
                    (Call::Delete, Ret::Delete { deleted }) => {
                        (state.is_some() == *deleted).then_some(None)
                    }
                    (Call::Delete, _) => Some(None),
                    (Call::Get, _) => None,
                };
                if let Some(next) = next {
                    placed[i] = true;
                    if go(ops, placed, next) {
                        return true;
                    }
                    placed[i] = false;
                }
            }
            false
        }
        let mut keys: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
        for o in history {
            if !(o.call == Call::Get && o.ret == Ret::Unknown) {
                keys.entry(&o.key).or_default().push(o);
            }
        }
        keys.values()
            .all(|ops| go(ops, &mut vec![false; ops.len()], None))
    }

    /// Small histories over three values, so values repeat: linearizable
    /// ones with one answer changed half the time.
    fn small_history(rng: &mut XorShift) -> Vec<Op> {
        let n = 3 + rng.below(6) as usize;
        let mut state: Option<String> = None;
        let mut h = Vec::new();
        for i in 0..n {
            let point = 100 * (i as u64 + 1);
            let invoke = point - rng.below(300).min(point);
            let complete = point + rng.below(300);
            let (call, ret) = match rng.below(3) {
                0 => (Call::Get, Ret::Get(state.clone())),
                1 => {
                    let v = ["a", "b", "c"][rng.below(3) as usize].to_string();
                    let created = state.replace(v.clone()).is_none();
                    (Call::Set(v), Ret::Set { created })
                }
                _ => (
                    Call::Delete,
                    Ret::Delete {
                        deleted: state.take().is_some(),
                    },
                ),
            };
            h.push(op(rng.below(3) as usize, call, ret, invoke, complete));
        }
        for o in &mut h {
            if o.call != Call::Get && rng.below(4) == 0 {
                o.ret = Ret::Unknown;
            }
        }
        if rng.below(2) == 0 {
            let i = rng.below(h.len() as u64) as usize;
            h[i].ret = match &h[i].call {
                Call::Get => Ret::Get(match rng.below(4) {
                    0 => None,
                    v => Some(["a", "b", "c"][v as usize - 1].to_string()),
                }),
                Call::Set(_) => Ret::Set {
                    created: rng.below(2) == 0,
                },
                Call::Delete => Ret::Delete {
                    deleted: rng.below(2) == 0,
                },
            };
        }
        h
    }

    #[test]
    fn agrees_with_brute_force_on_small_histories() {
        let mut rng = XorShift::new(99);
        let mut verdicts = [0; 2];
        for case in 0..3_000 {
            let h = small_history(&mut rng);
            let want = brute_force(&h);
            let got = match check(&h) {
                Ok(_) => true,
                Err(CheckError::Violation(_)) => false,
                Err(e) => panic!("case {case}: {e}"),
            };
            assert_eq!(got, want, "case {case}: {h:#?}");
            verdicts[usize::from(want)] += 1;
        }
        // Both verdicts well represented.
        assert!(verdicts.iter().all(|&n| n > 500), "{verdicts:?}");
    }
}
