//! A data node's state and request validation, shared by the unary gRPC
//! methods and the batched stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::NodeOptions;
use crate::events::{EventBus, EventKind};
use crate::store::{Lookup, Store, StoreError};

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeError {
    #[error("key must not be empty")]
    EmptyKey,
    #[error("key is {len} bytes, longer than the limit of {max}")]
    KeyTooLong { len: usize, max: usize },
    #[error("value is {len} bytes, larger than the limit of {max}")]
    ValueTooLarge { len: usize, max: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One running data node; shared by its gRPC service and background tasks.
pub struct Node {
    store: Store,
    id: String,
    instance_id: String,
    started: Instant,
    max_key_bytes: usize,
    max_value_bytes: usize,
    /// Cancelled at shutdown: ends subscriptions and background tasks.
    shutdown: CancellationToken,
}

impl Node {
    pub fn new(opts: &NodeOptions, id: String, shutdown: CancellationToken) -> Arc<Self> {
        let events = EventBus::new(opts.event_buffer);
        Arc::new(Self {
            store: Store::new(&opts.store_config(), events),
            id,
            instance_id: uuid::Uuid::new_v4().to_string(),
            started: Instant::now(),
            max_key_bytes: opts.max_key_bytes,
            max_value_bytes: opts.max_value_bytes,
            shutdown,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    fn check_key(&self, key: &str) -> Result<(), NodeError> {
        if key.is_empty() {
            return Err(NodeError::EmptyKey);
        }
        if key.len() > self.max_key_bytes.min(crate::config::MAX_KEY_LIMIT) {
            return Err(NodeError::KeyTooLong {
                len: key.len(),
                max: self.max_key_bytes.min(crate::config::MAX_KEY_LIMIT),
            });
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Result<Option<Lookup>, NodeError> {
        self.check_key(key)?;
        Ok(self.store.get(key))
    }

    /// `ttl_ms == 0` means no expiry; `epoch` fences the write (0: unfenced).
    pub fn set(
        &self,
        key: &str,
        value: &Bytes,
        ttl_ms: u64,
        epoch: u64,
    ) -> Result<bool, NodeError> {
        self.check_key(key)?;
        if value.len() > self.max_value_bytes {
            return Err(NodeError::ValueTooLarge {
                len: value.len(),
                max: self.max_value_bytes,
            });
        }
        let ttl = (ttl_ms > 0).then(|| Duration::from_millis(ttl_ms));
        Ok(self.store.set_fenced(key, value, ttl, epoch)?)
    }

    pub fn delete(&self, key: &str, epoch: u64) -> Result<bool, NodeError> {
        self.check_key(key)?;
        Ok(self.store.delete_fenced(key, epoch)?)
    }

    /// Publishes one status heartbeat on the event bus.
    pub fn publish_status(&self) {
        self.store
            .events()
            .publish(EventKind::Status(self.store.stats()));
    }
}
