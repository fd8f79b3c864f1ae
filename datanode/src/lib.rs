//! ringcache data node: an in-memory key-value store with byte-bounded LRU
//! eviction and TTL, served over gRPC (`ringcache.v1.DataNode`), publishing
//! status heartbeats and invalidation events to its subscribers.
//!
//! - [`store`]: the sharded LRU/TTL store of versioned entries.
//! - [`sync`]: repair and warm-up: dirty marks, the syncing state, and
//!   pulling entries from a peer node.
//! - [`events`]: the numbered event bus behind `Subscribe`.
//! - [`node`]: request validation over the store.
//! - [`service`]: the gRPC service; [`error`] maps errors to statuses.
//! - [`server`]: [`serve`], the entry point tests and the binary call.

mod compact_lru;
pub mod config;
mod convert;
pub mod error;
pub mod events;
pub mod hotkeys;
pub mod lease;
pub mod node;
mod primitives;
pub mod server;
pub mod service;
pub mod store;
pub mod sync;

pub use config::NodeOptions;
pub use ringcache_common::process::shutdown_signal;
pub use server::{serve, ServeError};
