//! Conversions between the store's types and the generated protobuf types,
//! kept in one place.

use ringcache_proto::pb;

use crate::events::{Cause, EventKind, NodeEvent};
use crate::node::Node;
use crate::store::StoreStats;

impl From<Cause> for pb::Cause {
    fn from(c: Cause) -> Self {
        match c {
            Cause::Set => pb::Cause::Set,
            Cause::Delete => pb::Cause::Delete,
            Cause::Evicted => pb::Cause::Evicted,
            Cause::Expired => pb::Cause::Expired,
            Cause::Flush => pb::Cause::Flush,
        }
    }
}

pub(crate) fn stats(node: &Node, s: StoreStats) -> pb::StatsResponse {
    let epoch = node.store().epoch();
    pb::StatsResponse {
        node_id: node.id().to_string(),
        instance_id: node.instance_id().to_string(),
        items: s.items,
        bytes_used: s.bytes_used,
        memory_limit: s.memory_limit,
        hits: s.hits,
        misses: s.misses,
        evictions: s.evictions,
        expirations: s.expirations,
        ops: s.ops,
        uptime_ms: node.uptime().as_millis() as u64,
        max_items: s.max_items,
        epoch,
    }
}

/// An event for the wire. Invalidations, one per write, carry only their
/// number, key and cause; the node and instance ids ride on status and lag
/// events (and the stream itself belongs to one instance).
pub(crate) fn event(node: &Node, ev: NodeEvent) -> pb::Event {
    match ev.kind {
        EventKind::Invalidation { key, cause } => pb::Event {
            seq: ev.seq,
            node_id: String::new(),
            instance_id: String::new(),
            kind: Some(pb::event::Kind::Invalidation(pb::Invalidation {
                key: key.to_string(),
                cause: pb::Cause::from(cause) as i32,
            })),
        },
        EventKind::Status(s) => pb::Event {
            seq: ev.seq,
            node_id: node.id().to_string(),
            instance_id: node.instance_id().to_string(),
            kind: Some(pb::event::Kind::Status(pb::Status {
                stats: Some(stats(node, s)),
            })),
        },
    }
}

pub(crate) fn lagged(node: &Node, seq: u64, missed: u64) -> pb::Event {
    pb::Event {
        seq,
        node_id: node.id().to_string(),
        instance_id: node.instance_id().to_string(),
        kind: Some(pb::event::Kind::Lagged(pb::Lagged { missed })),
    }
}
