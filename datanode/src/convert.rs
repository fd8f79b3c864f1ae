//! Conversions between the store's types and the generated protobuf types,
//! kept in one place.

use ringcache_proto::pb;

use crate::events::{Cause, EventKind, NodeEvent};
use crate::node::Node;
use crate::store::{Condition, Outcome, Read, ScanEntry, StoreStats};

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
    let store = node.store();
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
        clock: store.clock().latest(),
        tombstones: s.tombstones,
        sync: Some(node.sync_state().snapshot()),
        marks: node.marks().list(),
        max_value_bytes: node.max_value_bytes() as u64,
        max_entry_bytes: store.max_entry_bytes(),
        lost_after: store.lost_after(),
        placement: node.placement(),
        leases: node.leases().list(),
        subscribers: node.subscribers(),
        hot_keys: node
            .hot_keys()
            .map(|h| {
                h.top(node.hot_keys_reported())
                    .into_iter()
                    .map(|k| pb::HotKey {
                        key: k.key,
                        rate: k.rate,
                        share_permille: (k.share * 1000.0).round() as u32,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        conditional_writes: true,
    }
}

pub(crate) fn read(r: Option<Read>, last_seq: u64) -> pb::GetResponse {
    match r {
        None => pb::GetResponse {
            syncing: true,
            seq: last_seq,
            ..Default::default()
        },
        Some(Read::Hit(l)) => pb::GetResponse {
            found: true,
            value: l.value,
            ttl_remaining_ms: l.ttl_remaining.map_or(0, |d| d.as_millis().max(1) as u64),
            seq: l.seq,
            version: l.version,
            ..Default::default()
        },
        Some(Read::Deleted { version, seq }) => pb::GetResponse {
            tombstone: true,
            version,
            seq,
            ..Default::default()
        },
        Some(Read::Miss { seq }) => pb::GetResponse {
            seq,
            ..Default::default()
        },
    }
}

/// A write's answer: `readable` says whether the node answered consistent
/// reads when it applied or refused the write.
pub(crate) fn set_response(o: Outcome, readable: bool) -> pb::SetResponse {
    match o {
        Outcome::Applied {
            replaced,
            version,
            prior,
        } => pb::SetResponse {
            replaced,
            superseded: false,
            version,
            replaced_version: prior,
            readable,
        },
        Outcome::Superseded { version } => pb::SetResponse {
            superseded: true,
            version,
            readable,
            ..Default::default()
        },
        // The node turns a failed condition or fence into an error first.
        Outcome::ConditionFailed { current } => pb::SetResponse {
            version: current,
            readable,
            ..Default::default()
        },
        Outcome::Fenced => pb::SetResponse {
            readable,
            ..Default::default()
        },
    }
}

/// A write's condition from the wire.
pub(crate) fn condition(c: Option<&pb::Condition>) -> Condition {
    use pb::condition::Check;
    match c.and_then(|c| c.check) {
        None => Condition::Always,
        Some(Check::IfVersion(v)) => Condition::Version(v),
        Some(Check::IfExists(true)) => Condition::Exists,
        Some(Check::IfAbsent(true)) => Condition::Absent,
        // `false` asks for nothing.
        Some(Check::IfExists(false) | Check::IfAbsent(false)) => Condition::Always,
    }
}

/// As [`set_response`]; a delete's `deleted` is a set's `replaced`.
pub(crate) fn delete_response(o: Outcome, readable: bool) -> pb::DeleteResponse {
    let r = set_response(o, readable);
    pb::DeleteResponse {
        deleted: r.replaced,
        superseded: r.superseded,
        version: r.version,
        replaced_version: r.replaced_version,
        readable: r.readable,
    }
}

pub(crate) fn entry(e: ScanEntry) -> pb::Entry {
    pb::Entry {
        key: e.key,
        tombstone: e.value.is_none(),
        value: e.value.unwrap_or_default(),
        version: e.version,
        ttl_remaining_ms: e.ttl_remaining.map_or(0, |d| d.as_millis().max(1) as u64),
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
