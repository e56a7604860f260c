//! baton's pure core: locks (mutexes and semaphores), leases with time-to-live, global fencing
//! tokens, FIFO tickets, owner keys, request ids, revocation, lock-delay, history and job
//! records (policies, states, output tails), as
//! deterministic transitions of one table ([`State`]).
//!
//! **Architecture invariant:** this crate performs no I/O, never reads a clock, never draws a
//! random number and never spawns a task. Time (`now`, in milliseconds) and fresh ids are
//! arguments of every transition, so the same inputs always give the same table, and tests can
//! replay any interleaving. Stores persist the [`Change`]s a transition records; servers wake
//! the waiters it names.

pub mod ids;
pub mod limits;
#[cfg(feature = "sim-bugs")]
pub mod sim_bugs;
pub mod state;

pub use ids::{
    JobId, LeaseId, LockName, Millis, NameError, OwnerError, RequestIdError, TicketId, ValueError,
    validate_lease_value, validate_owner, validate_request_id,
};
pub use state::{
    Acquire, AcquireError, Acquired, Cancelled, Change, Config, Gauges, HistoryRecord, KeyQuota,
    KeyUsage, Lease, LeaseEnd, LeaseError, LockRecord, LockView, Mode, QueuedTicket, Quota,
    Released, RequestTarget, RestoreError, Snapshot, State, Ticket, TicketEnd, TicketError,
    TicketStatus, TokenError, WaiterLeft, key_default_of,
};
pub use state::{AcquireSet, AcquiredSet, SetStatus, set_member_request_id};
pub use state::{
    CancelOutcome, CreateJob, Event, FinishJob, Job, JobCapability, JobChange, JobCreated,
    JobError, JobFilter, JobState, OnceSlotKey, OutputAppended, Policy, QueueExit, StopReason,
    append_tail, once_slot,
};
