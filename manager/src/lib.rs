//! ringcache manager: the HTTP API on `/`, a consistent hash ring that maps
//! each key to its replicas among the data nodes, and gRPC forwarding to them.
//!
//! - [`ring`]: the consistent hash ring.
//! - [`client`]: the one interface through which requests reach a node.
//! - [`cluster`]: node states and routing of reads and writes to replicas.
//! - [`write_round`]: what a write's replica answers decide (send again, status).
//! - [`marks`]: the dirty marks placed for a node that missed writes.
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
pub mod embedded;
pub mod error;
pub mod health;
pub mod http;
pub mod listener;
pub mod marks;
pub mod membership;
pub mod metrics;
pub mod near_cache;
pub mod placement;
pub mod query;
pub mod ring;
pub mod server;
pub mod state;
pub mod ui;
pub mod write_round;

pub use config::ManagerOptions;
pub use server::{serve, ServeError};
