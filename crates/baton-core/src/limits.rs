//! Named limits. Every quantity the core keeps has a bound here or in [`crate::Config`], so
//! memory stays bounded whatever clients send.

/// Longest lock name, in bytes (names are ASCII).
pub const LOCK_NAME_BYTES_MAX: usize = 255;
/// Longest owner label or owner key, in bytes.
pub const OWNER_BYTES_MAX: usize = 255;
/// Longest request id, in bytes.
pub const REQUEST_ID_BYTES_MAX: usize = 128;
/// Longest value a holder may attach to its lease, in bytes: room for an address, a version
/// or a small JSON document, not a data store (every listing and `granted` event carries it).
pub const LEASE_VALUE_BYTES_MAX: usize = 1024;
/// Most locks one lock-set request takes together: each is a lease (or ticket) of its own, and
/// a set's grant is one transition, so this bounds the work of one grant.
pub const LOCK_SET_LOCKS_MAX: usize = 16;
/// Largest capacity of a semaphore.
pub const CAPACITY_MAX: u32 = 10_000;
/// Shortest lease time-to-live: shorter ones cannot be renewed reliably over a network.
pub const TTL_MS_MIN: u64 = 500;
/// Longest lease time-to-live: a dead holder blocks its lock at most this long.
pub const TTL_MS_MAX: u64 = 24 * 3_600_000;
/// Most arguments in a job's command line.
pub const COMMAND_ARGS_MAX: usize = 1_024;
/// Most bytes in a job's command line, all arguments together.
pub const COMMAND_BYTES_MAX: usize = 64 * 1024;
/// Most bytes of output kept per job (the end of it).
pub const OUTPUT_TAIL_BYTES_MAX: usize = 64 * 1024;
/// Most bytes of output one append of a running job's output carries: a runner sends at most
/// a few appends a second, so this bounds the output each job streams, and what an `output`
/// event holds in the event window and a subscriber's buffer.
pub const OUTPUT_APPEND_BYTES_MAX: usize = 16 * 1024;
/// Longest host label, in bytes.
pub const HOST_BYTES_MAX: usize = 255;
/// Longest batch label, in bytes.
pub const BATCH_BYTES_MAX: usize = 128;
/// Longest `min_hold_ms`: a day, like the longest lease.
pub const MIN_HOLD_MS_MAX: u64 = 24 * 3_600_000;
/// Shortest `once_per_ms`: one second.
pub const ONCE_PER_MS_MIN: u64 = 1_000;
/// Longest `once_per_ms`: a year.
pub const ONCE_PER_MS_MAX: u64 = 366 * 24 * 3_600_000;
