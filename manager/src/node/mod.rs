//! One data node as this manager sees it: its lifecycle as a state machine
//! without IO ([`lifecycle`]), and the handle that drives it and holds the
//! node's client and what the node reported ([`handle`]).

pub mod handle;
pub mod lifecycle;

pub use handle::{NodeHandle, NodeInfo};
pub use lifecycle::{Action, Event, Lifecycle, NodeState};
