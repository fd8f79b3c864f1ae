//! Limits and sizes both binaries agree on: the defaults, the key-length
//! bound the store's entries can record, human-readable size parsing, and
//! the per-entry overhead the store charges (the manager uses it to refuse
//! a value a replica could not hold before writing anything).

/// Default bound of accounted memory (keys + values + per-entry overhead).
pub const DEFAULT_MAX_MEMORY: u64 = 256 * 1024 * 1024;
/// Longest key accepted, in bytes (memcached's limit).
pub const DEFAULT_MAX_KEY_BYTES: usize = 250;
/// Largest value accepted, in bytes.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Bytes a data node charges per entry on top of its key and value: the
/// entry's allocation header (reference counts, expiry, version, key length:
/// 34 bytes) and the allocator's rounding, the 16-byte list node and the
/// index slot (with their tables' spare capacity). RSS per item measured by
/// `bench/run.sh` (1M items of 10 + 100 bytes) should stay at or below this.
pub const ENTRY_OVERHEAD: u64 = 88;

/// Parses a human-readable size such as `64MiB`, `1GB` or `4096`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("invalid size {s:?}: {e}"))
}

/// [`parse_size`] of a size above zero.
pub fn parse_nonzero_size(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err(format!("size must be above zero, got {s:?}")),
        n => Ok(n),
    }
}

/// Keys are stored with a 16-bit length.
pub const MAX_KEY_LIMIT: usize = u16::MAX as usize;

/// Parses a key length limit: 1 to [`MAX_KEY_LIMIT`] bytes.
pub fn parse_key_limit(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|e| format!("invalid key limit {s:?}: {e}"))?;
    if (1..=MAX_KEY_LIMIT).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "key limit must be 1 to {MAX_KEY_LIMIT} bytes, got {n}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_human_readable() {
        assert_eq!(parse_size("64MiB"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn key_limits_fit_the_stored_length() {
        assert!(parse_key_limit("70000").is_err());
        assert!(parse_key_limit("0").is_err());
        assert_eq!(parse_key_limit("65535"), Ok(65535));
    }
}
