//! What every lock client shares, whatever its target: the [`Held`] an acquire hands back and
//! a release takes, and the time-to-live the clients ask for (a baton lease, a Redis key's
//! `PX`, a row of the pg-sql lease table). The clients of [`crate::clients`] and the
//! PostgreSQL peers of [`crate::pg`] both use them, so they live here, below both, and
//! `clients` can wrap a `PgLock` without `pg` importing `clients` back.

/// Time-to-live of every lease the bench takes: far longer than a hold, so nothing expires.
pub const LEASE_TTL_MS: u64 = 30_000;

/// What a client holds between acquire and release.
#[derive(Debug, Clone)]
pub struct Held {
    /// Lease id (HTTP), key (Redis), lock key (etcd) or lock name (PostgreSQL).
    pub key: String,
    /// The value to compare on release (Redis; the fencing token for the pg-sql lease table).
    pub token: String,
}
