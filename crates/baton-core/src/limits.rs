//! Named limits. Every quantity the core keeps has a bound here or in [`crate::Config`], so
//! memory stays bounded whatever clients send.

/// Longest lock name, in bytes (names are ASCII).
pub const LOCK_NAME_BYTES_MAX: usize = 255;
/// Longest owner label or owner key, in bytes.
pub const OWNER_BYTES_MAX: usize = 255;
/// Longest request id, in bytes.
pub const REQUEST_ID_BYTES_MAX: usize = 128;
/// Largest capacity of a semaphore.
pub const CAPACITY_MAX: u32 = 10_000;
/// Shortest lease time-to-live: shorter ones cannot be renewed reliably over a network.
pub const TTL_MS_MIN: u64 = 500;
/// Longest lease time-to-live: a dead holder blocks its lock at most this long.
pub const TTL_MS_MAX: u64 = 24 * 3_600_000;
