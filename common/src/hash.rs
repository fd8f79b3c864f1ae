//! The key hash. The manager's ring places a key by it and a data node
//! selects the entries of a hash range by it (repair, warm-up), so both
//! must compute it the same way: it lives here, once.

/// The 64-bit hash of a key: xxh3, unseeded (placement must not change
/// across processes or restarts).
pub fn key_hash(key: &str) -> u64 {
    key_hash_bytes(key.as_bytes())
}

/// [`key_hash`] of a key held as bytes.
pub fn key_hash_bytes(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}
