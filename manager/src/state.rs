//! What the HTTP handlers share: the key API's (`http`) and the admin
//! API's (`admin`).

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::metrics::Metrics;
use crate::placement::etcd::Etcd;

/// What the handlers share (behind one `Arc`: axum clones the state for
/// every request).
pub struct AppState {
    pub cluster: Arc<Cluster>,
    pub metrics: Arc<Metrics>,
    pub max_key_bytes: usize,
    pub max_value_bytes: u64,
    pub vnodes: usize,
    /// Required bearer token, if any.
    pub auth_token: Option<Arc<str>>,
    /// Requests in flight (shared with the RESP front).
    pub in_flight: crate::admission::InFlight,
    /// Longest a request body may send nothing before the request gets 408.
    pub body_timeout: Duration,
    /// Where the placement lives (`--etcd`); membership changes need it.
    pub store: Option<Etcd>,
}
