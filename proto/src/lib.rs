//! Generated gRPC code for ringcache's `ringcache.v1` package, in one place.

/// Messages, client and server of `ringcache.v1`.
// Generated code: a heartbeat's stats make `Event.kind`'s status variant
// large, but heartbeats are rare next to invalidations, which are not boxed
// for it.
#[allow(clippy::large_enum_variant)]
pub mod pb {
    tonic::include_proto!("ringcache.v1");
}

/// Encoded `FileDescriptorSet` of every ringcache proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ringcache_descriptor");
