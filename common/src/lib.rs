//! What both ringcache binaries share, so that the dependency graph shows
//! the architecture: manager → proto, common; datanode → proto, common;
//! manager → datanode only for the embedded cluster.
//!
//! - [`process`]: logging, binding, exit codes, shutdown signals.
//! - [`auth`]: the bearer token on HTTP and gRPC.
//! - [`health`]: the binaries' own `--health-check`.
//! - [`limits`]: defaults, size parsing, the per-entry overhead.
//! - [`version`]: the hybrid logical clock that versions writes.
//! - [`hash`]: the key hash placement and ranges agree on.

pub mod auth;
pub mod hash;
pub mod health;
pub mod limits;
pub mod process;
pub mod tls;
pub mod version;
