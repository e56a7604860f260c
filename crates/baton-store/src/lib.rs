//! baton's storage boundary.
//!
//! - [`Store`]: the operations the server needs, with durable acknowledgement (G2) and
//!   long-poll waits that wake the moment a ticket is granted (G5). Every backend implements it.
//! - [`Engine`]: a [`Store`] that keeps the core's [`baton_core::State`] in memory as the one
//!   owner of the lock table, and makes each transition durable through a [`Persister`] with
//!   **group commit**: concurrent requests share one durable commit, and no answer leaves
//!   before the commit that contains what it saw.
//! - [`EventHub`]: the lock table's events, published once durable, for subscribers.
//! - [`MemoryPersister`]: keeps nothing (the in-memory reference store).
//! - [`conformance`]: the suite every backend passes.
//!
//! **Architecture invariant:** no SQL and no HTTP here, and no domain decision either: outcomes
//! come from `baton-core`. This crate adds time (a [`Clock`]), fresh random ids, durability
//! ordering and wake-ups.

mod clock;
pub mod conformance;
mod engine;
pub mod events;
mod keys;
pub mod leadership;
mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{Engine, EngineOptions, IdSource, MemoryPersister, PersistError, Persister};
pub use events::{EventCounts, EventHub, EventId, Published, QUEUE_EXITS, Subscription};
pub use keys::{ApiKey, AuditEntry, KeyGrant, Role};
pub use store::{
    AcquireArgs, AcquireOutcome, AcquireSetArgs, AcquireSetOutcome, COMMIT_BUCKETS_MICROS,
    CreateJobArgs, Leadership, Store, StoreError, StoreStats, commit_bucket,
};
