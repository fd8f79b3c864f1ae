//! ringcache manager: the HTTP API on `/`, a consistent hash ring that maps
//! each key to its replicas among the data nodes, and gRPC forwarding to them.
//!
//! - [`ring`]: the consistent hash ring.
//! - [`client`]: the one interface through which requests reach a node.
//! - [`node`]: one data node: its lifecycle as a state machine without IO
//!   ([`node::lifecycle`]) and the handle that drives it ([`node::handle`]).
//! - [`cluster`]: the nodes, the ring over them, what the parts below share.
//! - [`ring_view`]: one placement's read and write rings (a key's replicas).
//! - [`route`]: reads ([`route`]`::read`) and writes ([`route`]`::write`)
//!   routed to a key's replicas.
//! - [`write_round`]: what a write's replica answers decide (send again, status).
//! - [`faults`]: a failed or lagging node, from the cluster's side.
//! - [`marks`]: the dirty marks placed for a node that missed writes;
//!   [`mark_broadcast`]: sending them to its peers.
//! - [`leases`]: read leases, the manager registry, other managers.
//! - [`placement`]: the placement store (etcd), hand-offs, and following the
//!   placement ([`placement::apply`]).
//! - [`listener`]: what receives the nodes' events (the near cache does).
//! - [`membership`]: per-node `Subscribe` streams, health and rejoin.
//! - [`near_cache`]: optional hot values in the manager, kept coherent by
//!   the nodes' invalidation events.
//! - [`http`], [`query`], [`error`], [`state`]: the HTTP API; [`metrics`]: `/metrics`.
//! - [`embedded`]: the in-process cluster used when no nodes are given.
//! - [`accept`]: the HTTP accept loop (connection cap and timeouts);
//!   [`admission`]: the in-flight limit and request metrics every request meets.
//! - [`server`]: [`serve`], the entry point tests and the binary call.
//! - [`ui`]: the browser dashboard on `/ui`.

pub mod accept;
pub mod admin;
pub mod admission;
pub mod client;
pub mod cluster;
pub mod config;
pub mod durable_marks;
pub mod embedded;
pub mod error;
pub mod faults;
pub mod health;
pub mod hotkeys;
pub mod http;
pub mod leases;
pub mod listener;
pub mod mark_broadcast;
pub mod marks;
pub mod membership;
pub mod metrics;
pub mod near_cache;
pub mod node;
pub mod placement;
pub mod preconditions;
pub mod query;
pub mod resp;
pub mod ring;
pub mod ring_view;
pub mod route;
pub mod server;
pub mod state;
pub mod stream_lag;
pub mod ui;
pub mod write_round;

pub use config::ManagerOptions;
pub use server::{serve, ServeError};
