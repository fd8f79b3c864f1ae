//! Generated gRPC code, in one place: ringcache's `ringcache.v1` package and
//! the client of the part of etcd's v3 API the manager uses.

/// Messages, client and server of `ringcache.v1`.
// Generated code: a heartbeat's stats make `Event.kind`'s status variant
// large, but heartbeats are rare next to invalidations, which are not boxed
// for it.
#[allow(clippy::large_enum_variant)]
pub mod pb {
    tonic::include_proto!("ringcache.v1");
}

/// etcd's v3 API (a subset; see `proto/etcd/`): clients of KV, Watch and
/// Lease.
#[allow(clippy::large_enum_variant, clippy::enum_variant_names)]
pub mod etcd {
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
}

/// Encoded `FileDescriptorSet` of every ringcache proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ringcache_descriptor");
