//! The lock table: every lock, lease and ticket, and the transitions between them.
//!
//! [`State`] is the single owner of the lock table. Each public method is one transition: it
//! takes the current time as an argument, changes the table, and records what a store must make
//! durable ([`Change`]) and which parked waiters must be woken (tickets whose status changed).
//! Nothing here blocks, reads a clock, draws a random number or performs I/O, so a transition
//! is a pure function of (state, command, now), and a test can replay any history exactly.
//!
//! A lock of capacity 1 is also a read-write lock: a lease is taken [`Mode::Exclusive`] (the
//! default) or [`Mode::Shared`]. Any number of shared leases, or exclusive leases up to the
//! capacity, hold a lock at once, never both. The queue is one FIFO across modes: the head is
//! granted when its mode has room, so consecutive shared tickets at the head are granted
//! together, and a queued exclusive ticket holds back every ticket behind it (a writer is never
//! starved by readers that arrive after it). A lock is either a semaphore or a read-write lock:
//! a shared acquire on a lock of capacity above 1 (or asking for one) is refused
//! ([`AcquireError::ModeConflict`]), and a capacity cannot change while the lock is in use.
//!
//! Invariants, checked by [`State::check_invariants`] in tests:
//! - a lock never has more live exclusive leases than its capacity, and never shared and
//!   exclusive leases at once; shared leases only on a lock of capacity 1 (G1, for modes);
//! - every token granted is greater than every token granted before (G3);
//! - the queue of a lock is served strictly in arrival order, and a request that does not queue
//!   is never granted while the queue is non-empty (G4);
//! - a lock with room for the ticket at its head grants it, unless that ticket belongs to a lock
//!   set that waits for another of its locks (G5, with lock sets: see the `sets` module, which
//!   also states why sets cannot deadlock).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

mod events;
mod jobs;
mod quota;
mod sets;

pub use events::{Event, JobChange, QueueExit};

pub use jobs::{
    CancelOutcome, CreateJob, FinishJob, Job, JobCapability, JobCreated, JobError, JobFilter,
    JobState, OnceSlotKey, OutputAppended, Policy, StopReason, append_tail, once_slot,
};
pub use quota::{KeyQuota, KeyUsage, Quota};
pub use sets::{AcquireSet, AcquiredSet, SetStatus, set_member_request_id};

use crate::ids::{JobId, LeaseId, LockName, Millis, TicketId, ValueError, validate_lease_value};
use crate::limits;

/// Tunables of the lock table. Every bound here keeps memory finite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// After an unclean end of a lease (expiry, revocation) that lease's slot is not granted for
    /// this long, so a holder that is alive but cut off has time to notice and stop; a
    /// semaphore's other free slots are granted as usual. A clean release hands the slot on at
    /// once.
    pub lock_delay_ms: u64,
    /// A queued ticket lapses (leaves the queue) when nobody waits on it for this long, counted
    /// from when its last wait ended or its waiter went away ([`State::waiter_left`]).
    pub ticket_lapse_ms: u64,
    /// Ended holds stay in a lock's history for this long.
    pub history_retention_ms: u64,
    /// At most this many history records per lock; the oldest go first.
    pub history_per_lock_max: usize,
    /// At most this many history records in all; the oldest go first.
    pub history_total_max: usize,
    /// Ended leases and tickets, and request ids, are remembered for this long after they end,
    /// so a late renewal hears "lost" rather than "unknown" and a late retry gets its outcome.
    pub ended_retention_ms: u64,
    /// At most this many ended leases, ended tickets and request ids are remembered (each).
    pub ended_max: usize,
    /// A lock with no holders and no waiters is forgotten after this long. Its fencing tokens
    /// stay unique: the counter is global.
    pub idle_lock_retention_ms: u64,
    /// At most this many tickets queued on one lock.
    pub waiters_per_lock_max: usize,
    /// At most this many tickets queued in all.
    pub waiters_total_max: usize,
    /// At most this many live leases in all.
    pub leases_total_max: usize,
    /// At most this many locks known at once.
    pub locks_max: usize,
    /// Finished jobs are kept this long.
    pub job_retention_ms: u64,
    /// At most this many jobs are kept; the oldest finished ones go first.
    pub jobs_max: usize,
    /// At most this many bytes of job output are kept in all; the oldest finished jobs go first.
    pub job_output_bytes_max: usize,
    /// At most this many live leases per API key, unless the key has its own quota
    /// ([`KeyQuota`]; see the `quota` module for what each quota counts).
    pub key_leases_max: usize,
    /// At most this many queued tickets per API key, unless the key has its own quota.
    pub key_waiters_max: usize,
    /// At most this many locks created by one API key and still known, unless the key has its
    /// own quota.
    pub key_locks_max: usize,
    /// At most this many job records created by one API key kept, unless the key has its own
    /// quota.
    pub key_jobs_max: usize,
}

/// The default per-key quota for a global bound: a tenth of it (at least 1), so that no single
/// key with the default quota can fill the bound, and ten keys at their quota still leave room.
pub fn key_default_of(global_max: usize) -> usize {
    (global_max / 10).max(1)
}

impl Default for Config {
    fn default() -> Config {
        Config {
            lock_delay_ms: 1_000,
            ticket_lapse_ms: 10_000,
            history_retention_ms: 7 * 24 * 3_600_000,
            history_per_lock_max: 1_000,
            history_total_max: 1_000_000,
            ended_retention_ms: 3_600_000,
            ended_max: 200_000,
            idle_lock_retention_ms: 3_600_000,
            waiters_per_lock_max: 10_000,
            waiters_total_max: 100_000,
            leases_total_max: 1_000_000,
            locks_max: 1_000_000,
            job_retention_ms: 7 * 24 * 3_600_000,
            jobs_max: 100_000,
            job_output_bytes_max: 256 * 1024 * 1024,
            key_leases_max: key_default_of(1_000_000),
            key_waiters_max: key_default_of(100_000),
            key_locks_max: key_default_of(1_000_000),
            key_jobs_max: key_default_of(100_000),
        }
    }
}

/// How often housekeeping (pruning remembered ends, history and request ids) runs at least.
pub const HOUSEKEEPING_INTERVAL_MS: u64 = 10_000;

/// How a lease holds its lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Alone (or with the other holders of a semaphore): a writer. The default.
    #[default]
    Exclusive,
    /// With any number of other shared holders and no exclusive one: a reader. Only on a lock
    /// of capacity 1.
    Shared,
}

impl Mode {
    /// The stable text form stores keep and the wire carries.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Exclusive => "exclusive",
            Mode::Shared => "shared",
        }
    }

    /// Parses [`Mode::as_str`].
    pub fn parse(text: &str) -> Option<Mode> {
        [Mode::Exclusive, Mode::Shared]
            .into_iter()
            .find(|mode| mode.as_str() == text)
    }
}

/// A live lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The secret id.
    pub id: LeaseId,
    /// The lock it holds.
    pub lock: LockName,
    /// The owner label.
    pub owner: String,
    /// The owner key, for reentrant acquires.
    pub owner_key: Option<String>,
    /// The fencing token.
    pub token: u64,
    /// Time-to-live; a renewal extends the lease to now + ttl.
    pub ttl_ms: u64,
    /// When it was granted.
    pub granted_at: Millis,
    /// When it ends unless renewed.
    pub expires_at: Millis,
    /// The request id of the acquire that created it (directly or through a ticket).
    pub request_id: Option<String>,
    /// The ticket it was granted through, if it waited in the queue: a wait on that ticket
    /// returns this lease, also after a restart.
    pub ticket: Option<TicketId>,
    /// The API key whose request acquired it (directly or through a ticket); `None` on a server
    /// without keys. It counts against that key's lease quota.
    pub api_key: Option<String>,
    /// A small value its holder published with it (at most [`limits::LEASE_VALUE_BYTES_MAX`]
    /// bytes): set at acquire, replaced by a renewal that carries one, shown in listings,
    /// history and `granted` events. Leader election publishes the leader's address here.
    pub value: Option<String>,
    /// How it holds its lock.
    pub mode: Mode,
}

/// A queued ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The secret id.
    pub id: TicketId,
    /// The lock it waits for.
    pub lock: LockName,
    /// The owner label.
    pub owner: String,
    /// The owner key, for reentrant acquires.
    pub owner_key: Option<String>,
    /// The time-to-live of the lease it will become.
    pub ttl_ms: u64,
    /// The request id of the acquire that created it.
    pub request_id: Option<String>,
    /// The id of the lease it will become, chosen when it was queued so the grant needs no
    /// randomness.
    pub lease_id: LeaseId,
    /// When it joined the queue.
    pub queued_at: Millis,
    /// When it lapses unless a waiter extends it.
    pub lapse_at: Millis,
    /// Arrival order across the whole table: a later ticket has a greater sequence number.
    pub seq: u64,
    /// Its waiter went away in the middle of a wait (its connection closed) and no wait has
    /// come back for it since. The ticket keeps its place until it lapses, so a waiter that
    /// reconnects in time carries on, but it is never granted: when the lock could go to it, it
    /// lapses and the next ticket is served in the same transition (G5).
    pub waiter_gone: bool,
    /// The API key whose request queued it (`None` on a server without keys): revoking the
    /// key cancels it ([`State::cancel_tickets_of_key`]).
    pub api_key: Option<String>,
    /// The value the lease it becomes will carry ([`Lease::value`]).
    pub value: Option<String>,
    /// The mode of the lease it becomes.
    pub mode: Mode,
}

/// A ticket with its place in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedTicket {
    /// The ticket.
    pub ticket: Ticket,
    /// 1 for the head of the queue.
    pub position: u64,
}

/// How a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseEnd {
    /// Its holder released it.
    Released,
    /// Its holder stopped renewing.
    Expired,
    /// An administrator revoked it.
    Revoked,
}

impl LeaseEnd {
    /// The stable text form stores keep.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseEnd::Released => "released",
            LeaseEnd::Expired => "expired",
            LeaseEnd::Revoked => "revoked",
        }
    }

    /// Parses [`LeaseEnd::as_str`].
    pub fn parse(text: &str) -> Option<LeaseEnd> {
        [LeaseEnd::Released, LeaseEnd::Expired, LeaseEnd::Revoked]
            .into_iter()
            .find(|end| end.as_str() == text)
    }
}

/// How a ticket stopped being queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketEnd {
    /// It reached the head of the queue and became this lease.
    Granted(LeaseId),
    /// Nobody waited on it in time.
    Lapsed,
    /// Its waiter cancelled it.
    Cancelled,
}

/// One ended hold, as history keeps it. The lease id and request id are kept so that a restart
/// still knows how the lease ended and which request it answered (G7); they are never shown:
/// history listings carry owners and tokens only (G8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRecord {
    /// The lease that ended (never shown).
    pub lease_id: LeaseId,
    /// The request id of the acquire that created it (never shown).
    pub request_id: Option<String>,
    /// The lock.
    pub lock: LockName,
    /// The owner label.
    pub owner: String,
    /// The fencing token.
    pub token: u64,
    /// When it was granted.
    pub granted_at: Millis,
    /// When it ended.
    pub ended_at: Millis,
    /// How it ended.
    pub end: LeaseEnd,
    /// The lease's value when it ended ([`Lease::value`]).
    pub value: Option<String>,
    /// How the lease held its lock.
    pub mode: Mode,
}

/// A lock's public description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockView {
    /// The name.
    pub name: LockName,
    /// The capacity.
    pub capacity: u32,
    /// Live leases, oldest grant first.
    pub holders: Vec<Lease>,
    /// Queued tickets, head first.
    pub waiters: Vec<Ticket>,
    /// The lock grants nothing before this time (lock-delay after an unclean end).
    pub delayed_until: Option<Millis>,
    /// The newest token granted on, or accepted by a fence check for, this lock.
    pub newest_token: u64,
    /// The job of each holder, in holder order (`None` for a plain lease).
    pub holder_jobs: Vec<Option<JobId>>,
    /// The job of each waiter, in queue order (`None` for a plain ticket).
    pub waiter_jobs: Vec<Option<JobId>>,
}

/// A lock's durable metadata, as stores keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRecord {
    /// The name.
    pub name: LockName,
    /// The capacity.
    pub capacity: u32,
    /// The newest token granted on, or accepted by a fence check for, this lock.
    pub newest_token: u64,
    /// The newest token granted on this lock.
    pub newest_granted: u64,
    /// The lock-delay in force, if any.
    pub delayed_until: Option<Millis>,
    /// How many slots the lock-delay holds back (one per unclean end while it is in force, at
    /// most the capacity); the other slots are granted as usual.
    pub delayed_slots: u32,
    /// The API key whose request created the lock (`None` on a server without keys, or when
    /// not known): it counts against that key's lock quota until the lock is forgotten.
    pub api_key: Option<String>,
}

/// Something a store must make durable before it acknowledges the transition that caused it.
// `JobPut` carries a whole job record; changes live only until the next commit, so their size
// matters less than not boxing every job write.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create or update a lock's metadata.
    LockPut(LockRecord),
    /// The lock was forgotten (idle too long).
    LockForget(LockName),
    /// Create or update a lease (a grant, or a renewal that changed its ttl). Renewals that
    /// keep the ttl are not recorded: recovery treats every lease as renewed at recovery time,
    /// which can only lengthen a deadline (G2).
    LeasePut(Lease),
    /// A lease ended (its history record is a separate change).
    LeaseDelete(LeaseId),
    /// A ticket joined a queue.
    TicketPut(Ticket),
    /// A ticket left its queue (granted, lapsed or cancelled).
    TicketDelete(TicketId),
    /// The global counters moved.
    Counters {
        /// The next fencing token to grant.
        next_token: u64,
        /// Every token of a forgotten lock is at most this.
        forgotten_token_floor: u64,
    },
    /// A hold ended.
    HistoryAppend(HistoryRecord),
    /// Create or update a job record.
    JobPut(Job),
    /// A job record was forgotten (past retention).
    JobDelete(JobId),
    /// History before this time may be deleted.
    HistoryPrune {
        /// Records that ended before this are past retention.
        ended_before: Millis,
    },
}

/// Everything a store recovers after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The next fencing token to grant.
    pub next_token: u64,
    /// Every token of a forgotten lock is at most this.
    pub forgotten_token_floor: u64,
    /// Every lock's metadata.
    pub locks: Vec<LockRecord>,
    /// Every live lease.
    pub leases: Vec<Lease>,
    /// Every queued ticket, in any order (the sequence numbers give the order).
    pub tickets: Vec<Ticket>,
    /// History records, in any order.
    pub history: Vec<HistoryRecord>,
    /// Job records, in any order.
    pub jobs: Vec<Job>,
}

/// An acquire request, with the ids it will use if it needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquire {
    /// The lock.
    pub lock: LockName,
    /// The owner label (validated by the caller).
    pub owner: String,
    /// The owner key, for reentrant acquires.
    pub owner_key: Option<String>,
    /// The lease's time-to-live.
    pub ttl_ms: u64,
    /// The capacity asked for; `None` keeps the lock's (1 for a new lock).
    pub capacity: Option<u32>,
    /// Join the queue when the lock is busy (otherwise answer [`Acquired::Busy`]).
    pub queue: bool,
    /// Makes retries idempotent.
    pub request_id: Option<String>,
    /// The API key the request came with, kept on its lease, ticket and (if it creates one) lock;
    /// its quotas apply.
    pub api_key: Option<String>,
    /// That key's own quotas (the table's defaults fill the ones it lacks). Ignored without a
    /// key.
    pub quota: KeyQuota,
    /// The id of the lease, if one is granted (fresh 128 random bits from the caller).
    pub lease_id: LeaseId,
    /// The id of the ticket, if one is queued (fresh 128 random bits from the caller).
    pub ticket_id: TicketId,
    /// The value the lease will carry ([`Lease::value`]).
    pub value: Option<String>,
    /// How the lease will hold the lock.
    pub mode: Mode,
}

/// What an acquire did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// A lease was granted (or, for a retry or a reentrant acquire, is already held).
    Granted(Lease),
    /// The request waits in the queue.
    Queued(QueuedTicket),
    /// The lock is busy and the request did not queue. The holders are given for the answer.
    Busy(Vec<Lease>),
}

/// Why an acquire was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcquireError {
    /// The ttl is out of bounds.
    #[error("ttl_ms must be between {min} and {max}", min = limits::TTL_MS_MIN, max = limits::TTL_MS_MAX)]
    InvalidTtl,
    /// The capacity is out of bounds.
    #[error("capacity must be between 1 and {max}", max = limits::CAPACITY_MAX)]
    InvalidCapacity,
    /// The lock is in use with another capacity.
    #[error("the lock is in use with capacity {current}; wait until it is idle to change it")]
    CapacityConflict {
        /// The lock's capacity.
        current: u32,
    },
    /// A shared acquire on a semaphore: shared mode is for locks of capacity 1 (read-write
    /// locks), and a lock is either a semaphore or a read-write lock.
    #[error(
        "shared mode needs a lock of capacity 1 (a read-write lock), and this lock's capacity \
         is {capacity}; acquire it exclusive, or use another lock"
    )]
    ModeConflict {
        /// The capacity the lock has (or the request asked for).
        capacity: u32,
    },
    /// The request id was used for an acquire on another lock.
    #[error("this request id was already used for lock {lock}")]
    RequestIdConflict {
        /// The lock it was used for.
        lock: LockName,
    },
    /// A retry of a request whose lease has already ended.
    #[error("the lease this request was granted has already ended ({0:?})")]
    LeaseEnded(LeaseEnd),
    /// A retry of a request whose ticket has already ended without a live lease.
    #[error("the ticket this request was given has already ended ({0:?})")]
    TicketEnded(TicketEnd),
    /// The lease's value is too long or malformed.
    #[error(transparent)]
    InvalidValue(#[from] ValueError),
    /// A lock set names no lock, too many locks, or a lock twice.
    #[error(
        "a lock set names 1 to {max} distinct locks",
        max = limits::LOCK_SET_LOCKS_MAX
    )]
    InvalidLockSet,
    /// A limit on locks, leases or waiters is reached.
    #[error("limit reached: {0}")]
    LimitReached(&'static str),
    /// The request's API key already has as many of something as its quota allows.
    #[error(
        "this API key's quota of {limit} {quota} is reached",
        quota = quota.as_str()
    )]
    QuotaExceeded {
        /// Which quota.
        quota: Quota,
        /// Its limit for this key.
        limit: usize,
    },
}

/// The status of a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketStatus {
    /// Granted: here is the lease.
    Granted(Lease),
    /// Still queued.
    Queued(QueuedTicket),
}

/// Why a ticket cannot be waited on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// No such ticket (or it ended too long ago to remember).
    #[error("no ticket has this id")]
    NotFound,
    /// It lapsed, or its lease ended before a wait collected it.
    #[error("the ticket lapsed: nobody waited on it in time")]
    Lapsed,
    /// It was cancelled.
    #[error("the ticket was cancelled")]
    Cancelled,
}

/// What cancelling a ticket did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It left the queue.
    Cancelled,
    /// It had been granted but no wait had collected the lease: the lease was released.
    ReleasedUncollected,
    /// Nothing: it had been granted and collected (release the lease instead), or had already
    /// ended this way.
    NotCancelled(TicketEnd),
}

/// What the departure of a waiter did (see [`State::waiter_left`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaiterLeft {
    /// The ticket is still queued and keeps its place until it lapses at this time, unless a
    /// waiter comes back for it; it is not granted meanwhile.
    Lapsing(Millis),
    /// The ticket had been granted and the lease never reached its waiter: the lease was
    /// released cleanly and the lock handed on.
    ReleasedUndelivered,
    /// Nothing: the ticket had ended, or its lease was collected by another wait.
    Nothing,
}

/// Why a lease cannot be renewed or released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// No such lease (or it ended too long ago to remember).
    #[error("no lease has this id")]
    NotFound,
    /// It ended.
    #[error("the lease has ended ({0:?})")]
    Ended(LeaseEnd),
    /// The new ttl is out of bounds.
    #[error("ttl_ms must be between {min} and {max}", min = limits::TTL_MS_MIN, max = limits::TTL_MS_MAX)]
    InvalidTtl,
    /// The new value is too long or malformed.
    #[error(transparent)]
    InvalidValue(#[from] ValueError),
}

/// What a release did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// This call ended the lease.
    Released,
    /// It had already ended.
    AlreadyEnded(LeaseEnd),
}

/// Why a fence check or revocation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// A newer token of the lock was seen.
    #[error("a newer token ({newest}) was seen for this lock")]
    Stale {
        /// The newest token seen.
        newest: u64,
    },
    /// The token was never granted on this lock.
    #[error("this token was never granted on this lock")]
    Unknown,
    /// No live lease of the lock has this token.
    #[error("no live lease of this lock has this token")]
    HolderNotFound,
    /// No such lock.
    #[error("no lock has this name")]
    LockNotFound,
}

/// Why a snapshot could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the stored state is inconsistent: {0}")]
pub struct RestoreError(pub String);

#[derive(Debug, Clone)]
struct LockEntry {
    capacity: u32,
    /// Live leases in grant order.
    holders: Vec<LeaseId>,
    /// How many of `holders` are shared (the rest are exclusive).
    shared_holders: usize,
    /// Queued tickets in arrival order.
    queue: VecDeque<TicketId>,
    delayed_until: Option<Millis>,
    /// How many slots `delayed_until` holds back: after an unclean end only that holder's slot
    /// waits out the lock-delay, so a semaphore keeps granting its other free slots.
    delayed_slots: u32,
    newest_token: u64,
    newest_granted: u64,
    /// When the lock last became idle (no holders, no waiters).
    idle_since: Millis,
    /// The API key that created it: counted in that key's lock quota while the lock is known.
    api_key: Option<String>,
    /// A `LockPut` of this lock was handed out by `drain_changes` (or the lock was restored
    /// from one), so forgetting it must be recorded too. A lock made by a refused acquire and
    /// forgotten unseen was never stored: its `LockForget` would name nothing.
    stored: bool,
}

impl LockEntry {
    fn new(capacity: u32, now: Millis) -> LockEntry {
        LockEntry {
            capacity,
            holders: Vec::new(),
            shared_holders: 0,
            queue: VecDeque::new(),
            delayed_until: None,
            delayed_slots: 0,
            newest_token: 0,
            newest_granted: 0,
            idle_since: now,
            api_key: None,
            stored: false,
        }
    }

    fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.queue.is_empty()
    }

    /// G1 for modes: at most `capacity` exclusive holders, or any number of shared ones on a
    /// lock of capacity 1, never both.
    fn holders_fit(&self) -> bool {
        let exclusive = self.holders.len() - self.shared_holders;
        if self.shared_holders > 0 {
            exclusive == 0 && self.capacity == 1
        } else {
            exclusive <= self.capacity as usize
        }
    }

    fn delayed(&self, now: Millis) -> bool {
        self.delayed_until.is_some_and(|until| until > now)
    }

    /// True when a lease of `mode` could be granted now (queue order aside). Exclusive: a slot
    /// is free, not held (by any holder, shared ones included) and not held back by a
    /// lock-delay. Shared: the lock is a read-write lock (capacity 1), no exclusive lease holds
    /// it, and no lock-delay is in force (after an unclean end the lock grants nothing until the
    /// delay ends, whoever ended: conservative, and simple to state).
    fn has_room(&self, mode: Mode, now: Millis) -> bool {
        #[cfg(feature = "sim-bugs")]
        if crate::sim_bugs::active(crate::sim_bugs::Bug::GrantDuringLockDelay) {
            return match mode {
                Mode::Exclusive => self.holders.len() < self.capacity as usize,
                Mode::Shared => self.capacity == 1 && self.holders.len() == self.shared_holders,
            };
        }
        let held_back = if self.delayed(now) {
            self.delayed_slots as usize
        } else {
            0
        };
        match mode {
            Mode::Exclusive => self.holders.len() + held_back < self.capacity as usize,
            Mode::Shared => {
                self.capacity == 1 && self.holders.len() == self.shared_holders && held_back == 0
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Deadline {
    /// Before the expiry at the same instant: a finished job's min-hold ends in a clean release.
    MinHoldRelease(LeaseId),
    LeaseExpiry(LeaseId),
    TicketLapse(TicketId),
    LockCheck,
    Housekeeping,
}

/// What a remembered request id stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestTarget {
    /// The lease it was granted.
    Lease(LeaseId),
    /// The ticket it queued.
    Ticket(TicketId),
}

#[derive(Debug, Clone)]
struct RequestRecord {
    lock: LockName,
    target: RequestTarget,
}

#[derive(Debug, Clone)]
struct EndedTicket {
    end: TicketEnd,
    /// For a granted ticket: whether a wait has returned the lease.
    collected: bool,
}

/// Totals of the table at one moment ([`State::gauges`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Locks known.
    pub locks: usize,
    /// Live leases (holders).
    pub leases: usize,
    /// Queued tickets (waiters).
    pub waiters: usize,
    /// Locks with a lock-delay in force: a slot held back after an unclean end.
    pub locks_delayed: usize,
    /// Job records in each state, in the order of [`JobState::ALL`].
    pub jobs: [usize; JobState::ALL.len()],
}

/// The lock table. See the module documentation.
#[derive(Debug, Clone)]
pub struct State {
    config: Config,
    locks: BTreeMap<LockName, LockEntry>,
    leases: HashMap<LeaseId, Lease>,
    tickets: HashMap<TicketId, Ticket>,
    /// Leases that ended recently, so renewals hear "lost" rather than "unknown".
    ended_leases: HashMap<LeaseId, LeaseEnd>,
    ended_leases_order: VecDeque<(Millis, LeaseId)>,
    ended_tickets: HashMap<TicketId, EndedTicket>,
    ended_tickets_order: VecDeque<(Millis, TicketId)>,
    requests: HashMap<String, RequestRecord>,
    requests_order: VecDeque<(Millis, String)>,
    history: HashMap<LockName, VecDeque<HistoryRecord>>,
    /// Which lock each history record belongs to, oldest first, for the global bound.
    history_order: VecDeque<LockName>,
    /// Deadlines by time. Stale entries (a lease renewed since) are skipped when they come due.
    deadlines: BTreeSet<(Millis, Deadline, Option<LockName>)>,
    /// Locks with a lock-delay or idle deadline pending, by time.
    next_token: u64,
    forgotten_token_floor: u64,
    next_ticket_seq: u64,
    /// The latest `now` seen: time never runs backwards inside the table.
    now: Millis,
    changes: Vec<Change>,
    /// What happened, for subscribers ([`State::drain_events`]).
    events: Vec<Event>,
    dirty_locks: BTreeSet<LockName>,
    counters_dirty: bool,
    wakeups: Vec<TicketId>,
    jobs: HashMap<JobId, Job>,
    /// Jobs by creation time, for listings (newest first) and pruning (oldest first).
    jobs_order: BTreeSet<(Millis, JobId)>,
    jobs_by_request: HashMap<String, JobId>,
    /// The running job of each lease that belongs to one.
    lease_jobs: HashMap<LeaseId, JobId>,
    /// The waiting job of each ticket that belongs to one.
    ticket_jobs: HashMap<TicketId, JobId>,
    /// The waiting `coalesce` job of each (lock, job name).
    pending_coalesce: HashMap<(LockName, String), JobId>,
    /// The newest once-per slot taken by each (lock, job name, period).
    once_slots: HashMap<OnceSlotKey, u64>,
    job_output_bytes: usize,
    /// What each API key has in the table, kept as records come and go (never stored: rebuilt
    /// from the records on restore), so a quota check is one lookup.
    key_usage: HashMap<String, KeyUsage>,
    /// The tickets of each lock-set request, by each of its tickets (every member maps to the
    /// whole set, in lock order). Kept while the tickets are queued and while their ends are
    /// remembered, so a wait, a cancel or a departed waiter on one ticket acts on the whole
    /// set. Never stored: the members of a set share one arrival number (`seq`), which is
    /// stored with each ticket, and [`State::restore`] regroups them by it.
    set_siblings: HashMap<TicketId, Vec<TicketId>>,
}

impl State {
    /// An empty table.
    pub fn new(config: Config, now: Millis) -> State {
        let mut state = State {
            config,
            locks: BTreeMap::new(),
            leases: HashMap::new(),
            tickets: HashMap::new(),
            ended_leases: HashMap::new(),
            ended_leases_order: VecDeque::new(),
            ended_tickets: HashMap::new(),
            ended_tickets_order: VecDeque::new(),
            requests: HashMap::new(),
            requests_order: VecDeque::new(),
            history: HashMap::new(),
            history_order: VecDeque::new(),
            deadlines: BTreeSet::new(),
            next_token: 1,
            forgotten_token_floor: 0,
            next_ticket_seq: 1,
            now,
            changes: Vec::new(),
            events: Vec::new(),
            dirty_locks: BTreeSet::new(),
            counters_dirty: false,
            wakeups: Vec::new(),
            jobs: HashMap::new(),
            jobs_order: BTreeSet::new(),
            jobs_by_request: HashMap::new(),
            lease_jobs: HashMap::new(),
            ticket_jobs: HashMap::new(),
            pending_coalesce: HashMap::new(),
            once_slots: HashMap::new(),
            job_output_bytes: 0,
            key_usage: HashMap::new(),
            set_siblings: HashMap::new(),
        };
        state.schedule(now + HOUSEKEEPING_INTERVAL_MS, Deadline::Housekeeping, None);
        state
    }

    /// Rebuilds the table from what a store recovered, conservatively: every lease is treated as
    /// renewed at `now` (a deadline can only move later), and every ticket gets a fresh lapse
    /// period so waiters have time to reconnect.
    pub fn restore(config: Config, snapshot: Snapshot, now: Millis) -> Result<State, RestoreError> {
        let mut state = State::new(config, now);
        state.next_token = snapshot.next_token.max(1);
        state.forgotten_token_floor = snapshot.forgotten_token_floor;
        for record in snapshot.locks {
            if record.newest_token >= state.next_token || record.newest_granted >= state.next_token
            {
                return Err(RestoreError(format!(
                    "lock {} has token {} but the next token is {}",
                    record.name, record.newest_token, state.next_token
                )));
            }
            let mut entry = LockEntry::new(record.capacity.max(1), now);
            entry.newest_token = record.newest_token;
            entry.newest_granted = record.newest_granted;
            entry.delayed_until = record.delayed_until;
            entry.delayed_slots = record.delayed_slots;
            entry.api_key = record.api_key;
            entry.stored = true;
            if let Some(until) = record.delayed_until {
                // Look at the lock again when its delay ends, or its queue is never served.
                state.schedule(until, Deadline::LockCheck, Some(record.name.clone()));
            }
            state.insert_lock(record.name, entry);
        }
        let mut leases = snapshot.leases;
        leases.sort_by_key(|lease| lease.token);
        #[cfg(feature = "sim-bugs")]
        if crate::sim_bugs::active(crate::sim_bugs::Bug::TokenReuseAfterRestart) {
            state.next_token = leases.last().map_or(1, |lease| lease.token + 1);
        }
        for mut lease in leases {
            if lease.token >= state.next_token {
                return Err(RestoreError(format!(
                    "lease with token {} but the next token is {}",
                    lease.token, state.next_token
                )));
            }
            #[cfg(feature = "sim-bugs")]
            let shorten = crate::sim_bugs::active(crate::sim_bugs::Bug::ShortenOnRecovery);
            #[cfg(not(feature = "sim-bugs"))]
            let shorten = false;
            if !shorten {
                lease.expires_at = lease.expires_at.max(now + lease.ttl_ms);
            }
            let entry = state
                .locks
                .entry(lease.lock.clone())
                .or_insert_with(|| LockEntry::new(1, now));
            entry.holders.push(lease.id);
            if lease.mode == Mode::Shared {
                entry.shared_holders += 1;
            }
            entry.newest_granted = entry.newest_granted.max(lease.token);
            entry.newest_token = entry.newest_token.max(lease.token);
            if let Some(request_id) = &lease.request_id {
                state.requests.insert(
                    request_id.clone(),
                    RequestRecord {
                        lock: lease.lock.clone(),
                        target: RequestTarget::Lease(lease.id),
                    },
                );
                state.requests_order.push_back((now, request_id.clone()));
            }
            if let Some(ticket) = lease.ticket {
                // Whether a wait collected the lease before the restart is not known; assume
                // it did, so cancelling the ticket can never release a lease in use.
                state.ended_tickets.insert(
                    ticket,
                    EndedTicket {
                        end: TicketEnd::Granted(lease.id),
                        collected: true,
                    },
                );
                state.ended_tickets_order.push_back((now, ticket));
            }
            state.schedule(lease.expires_at, Deadline::LeaseExpiry(lease.id), None);
            state.insert_lease(lease);
        }
        let mut tickets = snapshot.tickets;
        tickets.sort_by_key(|ticket| ticket.seq);
        state.regroup_sets(&tickets);
        for mut ticket in tickets {
            ticket.lapse_at = now + state.config.ticket_lapse_ms;
            // Every waiter may come back after a restart.
            ticket.waiter_gone = false;
            state.next_ticket_seq = state.next_ticket_seq.max(ticket.seq + 1);
            let entry = state
                .locks
                .entry(ticket.lock.clone())
                .or_insert_with(|| LockEntry::new(1, now));
            entry.queue.push_back(ticket.id);
            if let Some(request_id) = &ticket.request_id {
                state.requests.insert(
                    request_id.clone(),
                    RequestRecord {
                        lock: ticket.lock.clone(),
                        target: RequestTarget::Ticket(ticket.id),
                    },
                );
                state.requests_order.push_back((now, request_id.clone()));
            }
            state.schedule(ticket.lapse_at, Deadline::TicketLapse(ticket.id), None);
            state.insert_ticket(ticket);
        }
        let mut history = snapshot.history;
        history.sort_by_key(|record| (record.ended_at, record.token));
        let horizon = now.saturating_sub(state.config.ended_retention_ms);
        for record in history {
            // Leases that ended recently are remembered as ended, and so are their request
            // ids: a retry after the restart hears that its lease ended rather than getting a
            // second one (G7). Live leases and tickets were registered above and win.
            if record.ended_at > horizon {
                state.ended_leases.insert(record.lease_id, record.end);
                state
                    .ended_leases_order
                    .push_back((record.ended_at, record.lease_id));
                if let Some(request_id) = &record.request_id
                    && !state.requests.contains_key(request_id)
                {
                    state.requests.insert(
                        request_id.clone(),
                        RequestRecord {
                            lock: record.lock.clone(),
                            target: RequestTarget::Lease(record.lease_id),
                        },
                    );
                    state
                        .requests_order
                        .push_back((record.ended_at, request_id.clone()));
                }
            }
            state.push_history(record);
        }
        // Jobs before the locks settle: a grant during recovery must find its waiting job.
        state.restore_jobs(snapshot.jobs, now);
        let names: Vec<LockName> = state.locks.keys().cloned().collect();
        for name in names {
            if let Some(entry) = state.locks.get(&name)
                && !entry.holders_fit()
            {
                return Err(RestoreError(format!(
                    "lock {name} has {} holders ({} shared) but capacity {}",
                    entry.holders.len(),
                    entry.shared_holders,
                    entry.capacity
                )));
            }
            state.settle(&name, now);
        }
        Ok(state)
    }

    /// The table's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn observe(&mut self, now: Millis) -> Millis {
        self.now = self.now.max(now);
        self.now
    }

    fn schedule(&mut self, at: Millis, deadline: Deadline, lock: Option<LockName>) {
        self.deadlines.insert((at, deadline, lock));
    }

    fn unschedule(&mut self, at: Millis, deadline: Deadline) {
        self.deadlines.remove(&(at, deadline, None));
    }

    /// Acquires a lease, joins the queue, or reports the lock busy.
    pub fn acquire(&mut self, command: Acquire, now: Millis) -> Result<Acquired, AcquireError> {
        let now = self.observe(now);
        if !(limits::TTL_MS_MIN..=limits::TTL_MS_MAX).contains(&command.ttl_ms) {
            return Err(AcquireError::InvalidTtl);
        }
        if let Some(capacity) = command.capacity
            && !(1..=limits::CAPACITY_MAX).contains(&capacity)
        {
            return Err(AcquireError::InvalidCapacity);
        }
        if let Some(value) = &command.value {
            validate_lease_value(value)?;
        }
        #[cfg(feature = "sim-bugs")]
        let forget = crate::sim_bugs::active(crate::sim_bugs::Bug::ForgetRequestId);
        #[cfg(not(feature = "sim-bugs"))]
        let forget = false;
        if let Some(request_id) = &command.request_id
            && !forget
            && let Some(record) = self.requests.get(request_id)
        {
            if record.lock != command.lock {
                return Err(AcquireError::RequestIdConflict {
                    lock: record.lock.clone(),
                });
            }
            return match record.target {
                RequestTarget::Lease(id) => self.lease_outcome(id).map(Acquired::Granted),
                RequestTarget::Ticket(id) => match self.ticket_status(id, None, now) {
                    Ok(TicketStatus::Granted(lease)) => Ok(Acquired::Granted(lease)),
                    Ok(TicketStatus::Queued(queued)) => Ok(Acquired::Queued(queued)),
                    Err(_) => Err(AcquireError::TicketEnded(
                        self.ended_tickets
                            .get(&id)
                            .map_or(TicketEnd::Lapsed, |ended| ended.end),
                    )),
                },
            };
        }

        if command.mode == Mode::Shared {
            let capacity = command
                .capacity
                .or_else(|| self.locks.get(&command.lock).map(|entry| entry.capacity))
                .unwrap_or(1);
            if capacity > 1 {
                return Err(AcquireError::ModeConflict { capacity });
            }
        }
        let created = !self.locks.contains_key(&command.lock);
        if created {
            // The key's own quota first: when both are reached, the caller's own share is the
            // one it can do something about.
            self.check_quota(command.api_key.as_deref(), &command.quota, Quota::Locks)?;
            if self.locks.len() >= self.config.locks_max {
                return Err(AcquireError::LimitReached("too many locks"));
            }
            let mut entry = LockEntry::new(command.capacity.unwrap_or(1), now);
            entry.api_key = command.api_key.clone();
            self.insert_lock(command.lock.clone(), entry);
        }
        let Some(entry) = self.locks.get_mut(&command.lock) else {
            unreachable!("the lock was just found or inserted");
        };
        if let Some(capacity) = command.capacity
            && capacity != entry.capacity
        {
            if !entry.is_idle() {
                return Err(AcquireError::CapacityConflict {
                    current: entry.capacity,
                });
            }
            // Slots held back by a lock-delay stay held back: the holders whose ends started
            // it may still be running, whatever the capacity is now (a lower capacity must not
            // forget them when it is raised again before the delay ends).
            entry.capacity = capacity;
            self.dirty_locks.insert(command.lock.clone());
        }

        // A reentrant acquire returns what this owner key already has.
        if let Some(key) = &command.owner_key {
            let entry = &self.locks[&command.lock];
            let mut found = None;
            for id in &entry.holders {
                if let Some(lease) = self.leases.get(id)
                    && lease.owner_key.as_deref() == Some(key)
                {
                    found = Some((RequestTarget::Lease(*id), Acquired::Granted(lease.clone())));
                    break;
                }
            }
            for (index, id) in entry.queue.iter().enumerate() {
                if found.is_none()
                    && let Some(ticket) = self.tickets.get(id)
                    && ticket.owner_key.as_deref() == Some(key)
                {
                    let queued = QueuedTicket {
                        ticket: ticket.clone(),
                        position: index as u64 + 1,
                    };
                    found = Some((RequestTarget::Ticket(*id), Acquired::Queued(queued)));
                }
            }
            if let Some((target, outcome)) = found {
                // Remember the request id too, so a retry after the lease ends hears that it
                // ended rather than getting a second lease (G7).
                if let Some(request_id) = command.request_id {
                    self.remember_request(request_id, command.lock, target, now);
                }
                return Ok(outcome);
            }
        }

        let entry = &self.locks[&command.lock];
        #[cfg(feature = "sim-bugs")]
        let jumps = crate::sim_bugs::active(crate::sim_bugs::Bug::TryJumpsQueue)
            && !command.queue
            && entry.holders.len() < entry.capacity as usize;
        #[cfg(not(feature = "sim-bugs"))]
        let jumps = false;
        // A request of either mode is granted at once only when nobody is queued: a shared try
        // never overtakes a queued writer (or anyone else), G4.
        if (entry.has_room(command.mode, now) && entry.queue.is_empty()) || jumps {
            let refused = self
                .check_quota(command.api_key.as_deref(), &command.quota, Quota::Leases)
                .err()
                .or_else(|| {
                    (self.leases.len() >= self.config.leases_total_max)
                        .then_some(AcquireError::LimitReached("too many leases"))
                });
            if let Some(error) = refused {
                if created && !self.dirty_locks.contains(&command.lock) {
                    // Made by this refused request and never seen by anyone: a refusal leaves
                    // nothing behind, so it takes no room in the lock bounds either.
                    self.take_lock(&command.lock);
                } else {
                    // The lock may have been idle: schedule it to be forgotten.
                    self.settle(&command.lock, now);
                }
                return Err(error);
            }
            let lease = self.grant(
                &command.lock,
                None,
                command.lease_id,
                command.owner,
                command.owner_key,
                command.ttl_ms,
                command.request_id.clone(),
                command.api_key,
                command.value,
                command.mode,
                now,
            );
            if let Some(request_id) = command.request_id {
                self.remember_request(
                    request_id,
                    command.lock,
                    RequestTarget::Lease(lease.id),
                    now,
                );
            }
            return Ok(Acquired::Granted(lease));
        }
        if !command.queue {
            return Ok(Acquired::Busy(self.holders_of(&command.lock)));
        }
        if entry.queue.len() >= self.config.waiters_per_lock_max {
            return Err(AcquireError::LimitReached("too many waiters on this lock"));
        }
        self.check_quota(command.api_key.as_deref(), &command.quota, Quota::Waiters)?;
        if self.tickets.len() >= self.config.waiters_total_max {
            return Err(AcquireError::LimitReached("too many waiters"));
        }
        let ticket = Ticket {
            id: command.ticket_id,
            lock: command.lock.clone(),
            owner: command.owner,
            owner_key: command.owner_key,
            ttl_ms: command.ttl_ms,
            request_id: command.request_id.clone(),
            lease_id: command.lease_id,
            queued_at: now,
            lapse_at: now + self.config.ticket_lapse_ms,
            seq: self.next_ticket_seq,
            waiter_gone: false,
            api_key: command.api_key,
            value: command.value,
            mode: command.mode,
        };
        self.next_ticket_seq += 1;
        self.schedule(ticket.lapse_at, Deadline::TicketLapse(ticket.id), None);
        if let Some(entry) = self.locks.get_mut(&command.lock) {
            entry.queue.push_back(ticket.id);
        }
        self.changes.push(Change::TicketPut(ticket.clone()));
        self.insert_ticket(ticket.clone());
        if let Some(request_id) = command.request_id {
            self.remember_request(
                request_id,
                command.lock.clone(),
                RequestTarget::Ticket(ticket.id),
                now,
            );
        }
        let position = self.position(&ticket);
        let queued = QueuedTicket { ticket, position };
        self.events.push(Event::Queued {
            queued: queued.clone(),
            at: now,
        });
        // The lock may be free but delayed; the grant happens when the delay ends.
        Ok(Acquired::Queued(queued))
    }

    fn lease_outcome(&self, id: LeaseId) -> Result<Lease, AcquireError> {
        match self.leases.get(&id) {
            Some(lease) => Ok(lease.clone()),
            None => Err(AcquireError::LeaseEnded(
                self.ended_leases
                    .get(&id)
                    .copied()
                    .unwrap_or(LeaseEnd::Expired),
            )),
        }
    }

    fn remember_request(
        &mut self,
        request_id: String,
        lock: LockName,
        target: RequestTarget,
        now: Millis,
    ) {
        self.requests
            .insert(request_id.clone(), RequestRecord { lock, target });
        self.requests_order.push_back((now, request_id));
    }

    fn holders_of(&self, name: &LockName) -> Vec<Lease> {
        self.locks.get(name).map_or_else(Vec::new, |entry| {
            entry
                .holders
                .iter()
                .filter_map(|id| self.leases.get(id).cloned())
                .collect()
        })
    }

    fn position(&self, ticket: &Ticket) -> u64 {
        self.locks.get(&ticket.lock).map_or(0, |entry| {
            entry
                .queue
                .iter()
                .position(|id| *id == ticket.id)
                .map_or(0, |index| index as u64 + 1)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn grant(
        &mut self,
        name: &LockName,
        ticket: Option<TicketId>,
        id: LeaseId,
        owner: String,
        owner_key: Option<String>,
        ttl_ms: u64,
        request_id: Option<String>,
        api_key: Option<String>,
        value: Option<String>,
        mode: Mode,
        now: Millis,
    ) -> Lease {
        let token = self.next_grant_token();
        let lease = Lease {
            id,
            lock: name.clone(),
            owner,
            owner_key,
            token,
            ttl_ms,
            granted_at: now,
            expires_at: now + ttl_ms,
            request_id,
            ticket,
            api_key,
            value,
            mode,
        };
        if let Some(entry) = self.locks.get_mut(name) {
            entry.holders.push(id);
            if mode == Mode::Shared {
                entry.shared_holders += 1;
            }
            assert!(
                entry.holders_fit(),
                "grant beyond capacity on {name}: {} holders ({} shared), capacity {}",
                entry.holders.len(),
                entry.shared_holders,
                entry.capacity
            );
            entry.newest_granted = token;
            entry.newest_token = entry.newest_token.max(token);
        }
        self.dirty_locks.insert(name.clone());
        self.schedule(lease.expires_at, Deadline::LeaseExpiry(id), None);
        self.changes.push(Change::LeasePut(lease.clone()));
        self.events.push(Event::Granted {
            lease: lease.clone(),
            at: now,
        });
        self.insert_lease(lease.clone());
        lease
    }

    fn next_grant_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        self.counters_dirty = true;
        token
    }

    /// Grants queued tickets while the lock has room, and notes an idle lock. Called after
    /// anything that may free room or end a delay. A lock-set grant (or lapse) at the head of
    /// this lock changes the queues of the set's other locks too; they are settled in turn.
    fn settle(&mut self, name: &LockName, now: Millis) {
        let mut pending = vec![name.clone()];
        while let Some(name) = pending.pop() {
            self.settle_one(&name, now, &mut pending);
        }
    }

    fn settle_one(&mut self, name: &LockName, now: Millis, pending: &mut Vec<LockName>) {
        loop {
            let Some(entry) = self.locks.get(name) else {
                return;
            };
            let Some(ticket_id) = entry.queue.front().copied() else {
                break;
            };
            // The head is served when its mode has room; nobody behind it is, so a queued
            // writer holds back the readers after it, and readers in a row at the head are
            // granted together, one turn of this loop each.
            let head_mode = self
                .tickets
                .get(&ticket_id)
                .map_or(Mode::Exclusive, |t| t.mode);
            if !entry.has_room(head_mode, now) {
                break;
            }
            if self.set_siblings.contains_key(&ticket_id) {
                // A lock-set ticket: served only together with its set, when it heads every
                // one of its queues and each lock has room. Until then it holds back every
                // ticket behind it here (strict FIFO per lock).
                match self.serve_set(ticket_id, now) {
                    Some(locks) => {
                        pending.extend(locks.into_iter().filter(|lock| lock != name));
                        continue;
                    }
                    None => break,
                }
            }
            if let Some(entry) = self.locks.get_mut(name) {
                entry.queue.pop_front();
            }
            let Some(ticket) = self.take_ticket(ticket_id) else {
                debug_assert!(false, "queued ticket missing from the table");
                continue;
            };
            self.unschedule(ticket.lapse_at, Deadline::TicketLapse(ticket_id));
            self.changes.push(Change::TicketDelete(ticket_id));
            if ticket.waiter_gone {
                // Nobody would collect this grant: the ticket loses its place now, and the
                // slot goes to the next ticket in this same transition.
                if let Some(entry) = self.locks.get_mut(name)
                    && entry.is_idle()
                {
                    entry.idle_since = now;
                }
                self.events.push(Event::LeftQueue {
                    ticket,
                    why: QueueExit::Departed,
                    at: now,
                });
                self.end_ticket(ticket_id, TicketEnd::Lapsed, now);
                continue;
            }
            self.end_ticket(ticket_id, TicketEnd::Granted(ticket.lease_id), now);
            let lease = self.grant(
                name,
                Some(ticket_id),
                ticket.lease_id,
                ticket.owner,
                ticket.owner_key,
                ticket.ttl_ms,
                ticket.request_id.clone(),
                ticket.api_key.clone(),
                ticket.value.clone(),
                ticket.mode,
                now,
            );
            if let Some(request_id) = ticket.request_id {
                // The request now stands for the lease; keep answering retries with it.
                if let Some(record) = self.requests.get_mut(&request_id) {
                    record.target = RequestTarget::Lease(lease.id);
                }
            }
            self.job_started(ticket_id, &lease, now);
        }
        let idle_lock_retention_ms = self.config.idle_lock_retention_ms;
        let Some(entry) = self.locks.get_mut(name) else {
            return;
        };
        if let Some(until) = entry.delayed_until
            && until <= now
        {
            entry.delayed_until = None;
            entry.delayed_slots = 0;
            self.dirty_locks.insert(name.clone());
        }
        let entry = &self.locks[name];
        if entry.is_idle() {
            // Not before a lock-delay ends: a check that finds the lock still delayed would
            // come back here and be scheduled again at the same instant, so tick never returned.
            let at =
                (entry.idle_since + idle_lock_retention_ms).max(entry.delayed_until.unwrap_or(0));
            self.schedule(at, Deadline::LockCheck, Some(name.clone()));
        }
    }

    fn end_ticket(&mut self, id: TicketId, end: TicketEnd, now: Millis) {
        self.ended_tickets.insert(
            id,
            EndedTicket {
                end,
                collected: false,
            },
        );
        self.ended_tickets_order.push_back((now, id));
        self.wakeups.push(id);
        self.job_ticket_ended(id, end, now);
    }

    /// Ends a live lease: removes it, records history and, after an unclean end, starts the
    /// lock-delay. Does not grant; the caller settles the lock.
    fn end_lease(&mut self, id: LeaseId, end: LeaseEnd, now: Millis) -> Option<Lease> {
        let lease = self.take_lease(id)?;
        self.unschedule(lease.expires_at, Deadline::LeaseExpiry(id));
        let lock_delay_ms = self.config.lock_delay_ms;
        if let Some(entry) = self.locks.get_mut(&lease.lock) {
            entry.holders.retain(|holder| *holder != id);
            if lease.mode == Mode::Shared {
                entry.shared_holders -= 1;
            }
            if end != LeaseEnd::Released && lock_delay_ms > 0 {
                // Only the slot of the holder that ended uncleanly waits. Slots delayed by
                // earlier ends that overlap wait until the latest delay ends (conservative).
                // Counted per end, not capped by the capacity: a read-write lock of capacity 1
                // can lose many shared holders at once, and if its capacity is raised while it
                // is idle in the delay, every one of them may still be running (found by the
                // model test: two expired readers, capacity raised to 2, one grant let in).
                let until = now + lock_delay_ms;
                entry.delayed_slots = if entry.delayed(now) {
                    entry.delayed_slots.saturating_add(1)
                } else {
                    1
                };
                entry.delayed_until = Some(entry.delayed_until.map_or(until, |u| u.max(until)));
                self.deadlines
                    .insert((until, Deadline::LockCheck, Some(lease.lock.clone())));
            }
            if entry.is_idle() {
                entry.idle_since = now;
            }
        }
        self.dirty_locks.insert(lease.lock.clone());
        self.ended_leases.insert(id, end);
        self.ended_leases_order.push_back((now, id));
        self.changes.push(Change::LeaseDelete(id));
        let record = HistoryRecord {
            lease_id: lease.id,
            request_id: lease.request_id.clone(),
            lock: lease.lock.clone(),
            owner: lease.owner.clone(),
            token: lease.token,
            granted_at: lease.granted_at,
            ended_at: now,
            end,
            value: lease.value.clone(),
            mode: lease.mode,
        };
        self.changes.push(Change::HistoryAppend(record.clone()));
        self.events.push(Event::Ended(record.clone()));
        self.job_lease_ended(id, end, now);
        self.push_history(record);
        Some(lease)
    }

    fn push_history(&mut self, record: HistoryRecord) {
        let lock = record.lock.clone();
        let per_lock = self.history.entry(lock.clone()).or_default();
        per_lock.push_back(record);
        if per_lock.len() > self.config.history_per_lock_max {
            per_lock.pop_front();
        } else {
            self.history_order.push_back(lock);
        }
        while self.history_order.len() > self.config.history_total_max {
            if let Some(oldest) = self.history_order.pop_front()
                && let Some(records) = self.history.get_mut(&oldest)
            {
                records.pop_front();
                if records.is_empty() {
                    self.history.remove(&oldest);
                }
            }
        }
    }

    /// Waits on a ticket: returns its lease once granted, or its place in the queue. A queued
    /// ticket's lapse is pushed back to at least `keep_until`, so a waiter parked on it (whose
    /// wait ends at some time) keeps it alive: pass the end of the park plus the lapse period.
    pub fn wait_ticket(
        &mut self,
        id: TicketId,
        keep_until: Option<Millis>,
        now: Millis,
    ) -> Result<TicketStatus, TicketError> {
        let now = self.observe(now);
        self.ticket_status(id, keep_until, now)
    }

    fn ticket_status(
        &mut self,
        id: TicketId,
        keep_until: Option<Millis>,
        now: Millis,
    ) -> Result<TicketStatus, TicketError> {
        if self.tickets.contains_key(&id) {
            // A wait on one ticket of a lock set keeps the whole set: its waiter waits on one.
            for member in self.members(id) {
                self.keep_ticket(member, keep_until, now);
            }
            let ticket = self.tickets[&id].clone();
            let position = self.position(&ticket);
            return Ok(TicketStatus::Queued(QueuedTicket { ticket, position }));
        }
        let Some(ended) = self.ended_tickets.get_mut(&id) else {
            return Err(TicketError::NotFound);
        };
        match ended.end {
            TicketEnd::Granted(lease_id) => match self.leases.get(&lease_id) {
                Some(lease) => {
                    let lease = lease.clone();
                    // The grant of a set reaches its waiter as a whole.
                    for member in self.members(id) {
                        if let Some(ended) = self.ended_tickets.get_mut(&member) {
                            ended.collected = true;
                        }
                    }
                    Ok(TicketStatus::Granted(lease))
                }
                None => Err(TicketError::Lapsed),
            },
            TicketEnd::Lapsed => Err(TicketError::Lapsed),
            TicketEnd::Cancelled => Err(TicketError::Cancelled),
        }
    }

    /// A waiter parked on ticket `id` went away in the middle of its wait (its connection
    /// closed) and no other wait on the ticket is known to be left. `collected_here` says the
    /// departing wait had itself collected a grant it never delivered.
    ///
    /// A queued ticket keeps its place for one ticket lapse from now (a waiter that reconnects
    /// in time, or a retry of its request, carries on), but is not granted meanwhile: when the
    /// lock could go to it, it lapses and the next ticket is served (G5). A grant that never
    /// reached its waiter is released cleanly, without a lock-delay, and handed on in this
    /// transition. The ticket is woken, so another wait on it (elsewhere) looks again and
    /// keeps it alive.
    ///
    /// For a ticket of a lock set, every ticket of the set is treated alike: its waiter waits
    /// on one of them for all.
    pub fn waiter_left(&mut self, id: TicketId, collected_here: bool, now: Millis) -> WaiterLeft {
        let now = self.observe(now);
        let mut outcome = WaiterLeft::Nothing;
        for member in self.members(id) {
            let left = self.waiter_left_one(member, collected_here, now);
            if member == id {
                outcome = left;
            }
        }
        outcome
    }

    fn waiter_left_one(&mut self, id: TicketId, collected_here: bool, now: Millis) -> WaiterLeft {
        let lapse_ms = self.config.ticket_lapse_ms;
        if let Some(ticket) = self.tickets.get_mut(&id) {
            let old = ticket.lapse_at;
            let new = old.min(now + lapse_ms);
            ticket.lapse_at = new;
            ticket.waiter_gone = true;
            if new != old {
                self.unschedule(old, Deadline::TicketLapse(id));
                self.schedule(new, Deadline::TicketLapse(id), None);
            }
            self.wakeups.push(id);
            return WaiterLeft::Lapsing(new);
        }
        let Some(ended) = self.ended_tickets.get(&id).cloned() else {
            return WaiterLeft::Nothing;
        };
        let TicketEnd::Granted(lease_id) = ended.end else {
            return WaiterLeft::Nothing;
        };
        #[cfg(feature = "sim-bugs")]
        if crate::sim_bugs::active(crate::sim_bugs::Bug::KeepDepartedGrant) {
            return WaiterLeft::Nothing;
        }
        if (ended.collected && !collected_here) || !self.leases.contains_key(&lease_id) {
            return WaiterLeft::Nothing;
        }
        self.job_grant_undelivered(lease_id, now);
        if let Some(lease) = self.end_lease(lease_id, LeaseEnd::Released, now) {
            self.settle(&lease.lock, now);
        }
        if let Some(ended) = self.ended_tickets.get_mut(&id) {
            ended.end = TicketEnd::Lapsed;
        }
        self.wakeups.push(id);
        WaiterLeft::ReleasedUndelivered
    }

    /// The queued tickets of the API key `key`: what revoking the key cancels (each with
    /// [`State::cancel_ticket`], which wakes its waiter). Stores that keep the table elsewhere
    /// find them by their own index and cancel them one lock at a time.
    pub fn tickets_of_key(&self, key: &str) -> Vec<TicketId> {
        self.tickets
            .values()
            .filter(|ticket| ticket.api_key.as_deref() == Some(key))
            .map(|ticket| ticket.id)
            .collect()
    }

    /// Cancels every queued ticket of the API key `key` (its key was revoked), as if each had
    /// been cancelled by its holder; returns how many.
    pub fn cancel_tickets_of_key(&mut self, key: &str, now: Millis) -> usize {
        let mut cancelled = 0;
        for id in self.tickets_of_key(key) {
            if self.cancel_ticket(id, false, now).is_ok() {
                cancelled += 1;
            }
        }
        cancelled
    }

    /// Takes a ticket out of the queue. A ticket granted but not yet collected by a wait has its
    /// lease released (nobody will use it). With `forget_request`, the request id that created
    /// the ticket is forgotten too, so a retry of a "busy" acquire tries afresh.
    ///
    /// Cancelling one ticket of a lock set cancels the whole set (all or nothing).
    pub fn cancel_ticket(
        &mut self,
        id: TicketId,
        forget_request: bool,
        now: Millis,
    ) -> Result<Cancelled, TicketError> {
        let now = self.observe(now);
        let mut outcome = Err(TicketError::NotFound);
        for member in self.members(id) {
            let cancelled = self.cancel_one(member, forget_request, now);
            if member == id {
                outcome = cancelled;
            }
        }
        outcome
    }

    fn cancel_one(
        &mut self,
        id: TicketId,
        forget_request: bool,
        now: Millis,
    ) -> Result<Cancelled, TicketError> {
        if let Some(ticket) = self.take_ticket(id) {
            self.unschedule(ticket.lapse_at, Deadline::TicketLapse(id));
            if let Some(entry) = self.locks.get_mut(&ticket.lock) {
                entry.queue.retain(|queued| *queued != id);
                if entry.is_idle() {
                    entry.idle_since = now;
                }
            }
            self.changes.push(Change::TicketDelete(id));
            self.events.push(Event::LeftQueue {
                ticket: ticket.clone(),
                why: QueueExit::Cancelled,
                at: now,
            });
            self.end_ticket(id, TicketEnd::Cancelled, now);
            if forget_request && let Some(request_id) = &ticket.request_id {
                self.requests.remove(request_id);
            }
            // Removing a ticket from the queue can unblock nobody (the head is only blocked by
            // capacity or a delay), but it may leave the lock idle.
            self.settle(&ticket.lock, now);
            return Ok(Cancelled::Cancelled);
        }
        let Some(ended) = self.ended_tickets.get(&id).cloned() else {
            return Err(TicketError::NotFound);
        };
        match ended.end {
            TicketEnd::Granted(lease_id)
                if !ended.collected && self.leases.contains_key(&lease_id) =>
            {
                if let Some(lease) = self.end_lease(lease_id, LeaseEnd::Released, now) {
                    self.settle(&lease.lock, now);
                }
                if let Some(ended) = self.ended_tickets.get_mut(&id) {
                    ended.end = TicketEnd::Cancelled;
                }
                Ok(Cancelled::ReleasedUncollected)
            }
            end => Ok(Cancelled::NotCancelled(end)),
        }
    }

    /// Renews a live lease until now + ttl (the new ttl, if given), keeping its value.
    pub fn renew(
        &mut self,
        id: LeaseId,
        ttl_ms: Option<u64>,
        now: Millis,
    ) -> Result<Lease, LeaseError> {
        self.renew_with_value(id, ttl_ms, None, now)
    }

    /// Renews a live lease until now + ttl (the new ttl, if given), and replaces its value with
    /// `value` when one is given. A changed value is recorded (a [`Change::LeasePut`]), so it
    /// survives a restart like the value given at acquire.
    pub fn renew_with_value(
        &mut self,
        id: LeaseId,
        ttl_ms: Option<u64>,
        value: Option<String>,
        now: Millis,
    ) -> Result<Lease, LeaseError> {
        let now = self.observe(now);
        if let Some(ttl) = ttl_ms
            && !(limits::TTL_MS_MIN..=limits::TTL_MS_MAX).contains(&ttl)
        {
            return Err(LeaseError::InvalidTtl);
        }
        if let Some(value) = &value {
            validate_lease_value(value)?;
        }
        self.expire_if_due(id, now);
        let Some(lease) = self.leases.get_mut(&id) else {
            return Err(match self.ended_leases.get(&id) {
                Some(end) => LeaseError::Ended(*end),
                None => LeaseError::NotFound,
            });
        };
        let old_expiry = lease.expires_at;
        let ttl_changed = ttl_ms.is_some_and(|ttl| ttl != lease.ttl_ms);
        let value_changed = value.is_some() && value != lease.value;
        lease.ttl_ms = ttl_ms.unwrap_or(lease.ttl_ms);
        if value_changed {
            lease.value = value;
        }
        // A renewal never shortens the deadline a holder was already promised.
        lease.expires_at = (now + lease.ttl_ms).max(old_expiry);
        let lease = lease.clone();
        if ttl_changed || value_changed {
            self.changes.push(Change::LeasePut(lease.clone()));
        }
        if lease.expires_at != old_expiry {
            self.unschedule(old_expiry, Deadline::LeaseExpiry(id));
            self.schedule(lease.expires_at, Deadline::LeaseExpiry(id), None);
        }
        Ok(lease)
    }

    /// A lease whose deadline has come is over, even if the timer has not run yet: a renewal
    /// or release that arrives at or after `expires_at` must hear that it expired (G5), so the
    /// deadlines due now run first.
    fn expire_if_due(&mut self, id: LeaseId, now: Millis) {
        if self
            .leases
            .get(&id)
            .is_some_and(|lease| lease.expires_at <= now)
        {
            self.tick(now);
        }
    }

    /// Releases a lease and hands the lock on at once.
    pub fn release(&mut self, id: LeaseId, now: Millis) -> Result<Released, LeaseError> {
        let now = self.observe(now);
        self.expire_if_due(id, now);
        match self.end_lease(id, LeaseEnd::Released, now) {
            Some(lease) => {
                self.settle(&lease.lock, now);
                Ok(Released::Released)
            }
            None => match self.ended_leases.get(&id) {
                Some(end) => Ok(Released::AlreadyEnded(*end)),
                None => Err(LeaseError::NotFound),
            },
        }
    }

    /// Revokes the live lease of `lock` that carries `token`.
    pub fn revoke(
        &mut self,
        lock: &LockName,
        token: u64,
        now: Millis,
    ) -> Result<Lease, TokenError> {
        let now = self.observe(now);
        let Some(entry) = self.locks.get(lock) else {
            return Err(TokenError::LockNotFound);
        };
        let found = entry
            .holders
            .iter()
            .find(|id| {
                self.leases
                    .get(id)
                    .is_some_and(|lease| lease.token == token)
            })
            .copied();
        let Some(id) = found else {
            return Err(TokenError::HolderNotFound);
        };
        let lease = self
            .end_lease(id, LeaseEnd::Revoked, now)
            .ok_or(TokenError::HolderNotFound)?;
        self.settle(lock, now);
        Ok(lease)
    }

    /// Checks a fencing token for a resource guarded by `lock`. Accepted when no newer token of
    /// the lock has been seen (or the token belongs to a live holder, which matters for
    /// semaphores); an accepted token becomes the newest seen. Returns the newest token.
    pub fn fence(&mut self, lock: &LockName, token: u64, now: Millis) -> Result<u64, TokenError> {
        self.observe(now);
        let Some(entry) = self.locks.get_mut(lock) else {
            // A forgotten lock: every token it granted is at most the floor, and any token
            // above the floor was granted on some other lock.
            return Err(if token > 0 && token <= self.forgotten_token_floor {
                TokenError::Stale {
                    newest: self.forgotten_token_floor,
                }
            } else {
                TokenError::Unknown
            });
        };
        if token == 0 || token > entry.newest_granted {
            return Err(TokenError::Unknown);
        }
        let live = entry.holders.iter().any(|id| {
            self.leases
                .get(id)
                .is_some_and(|lease| lease.token == token)
        });
        if !live && token < entry.newest_token {
            return Err(TokenError::Stale {
                newest: entry.newest_token,
            });
        }
        if token > entry.newest_token {
            entry.newest_token = token;
            self.dirty_locks.insert(lock.clone());
        }
        Ok(entry.newest_token)
    }

    /// Runs every deadline due at `now`: expires leases, lapses tickets, ends lock-delays,
    /// forgets idle locks and prunes what is past retention.
    pub fn tick(&mut self, now: Millis) {
        let now = self.observe(now);
        while let Some(first) = self.deadlines.first().cloned() {
            if first.0 > now {
                break;
            }
            self.deadlines.pop_first();
            let (at, deadline, lock) = first;
            match deadline {
                Deadline::LeaseExpiry(id) => {
                    if self
                        .leases
                        .get(&id)
                        .is_some_and(|lease| lease.expires_at <= now)
                        && let Some(lease) = self.end_lease(id, LeaseEnd::Expired, now)
                    {
                        self.settle(&lease.lock, now);
                    }
                }
                Deadline::TicketLapse(id) => {
                    if self
                        .tickets
                        .get(&id)
                        .is_some_and(|ticket| ticket.lapse_at <= now)
                    {
                        self.lapse_tickets(id, now);
                    }
                }
                Deadline::LockCheck => {
                    let Some(name) = lock else { continue };
                    let Some(entry) = self.locks.get(&name) else {
                        continue;
                    };
                    if entry.is_idle()
                        && !entry.delayed(now)
                        && entry.idle_since + self.config.idle_lock_retention_ms <= now
                    {
                        self.forget_lock(&name);
                    } else {
                        self.settle(&name, now);
                    }
                }
                Deadline::MinHoldRelease(lease) => self.min_hold_ended(lease, now),
                Deadline::Housekeeping => {
                    self.housekeeping(now);
                    self.prune_jobs(now);
                    self.schedule(
                        at.max(now) + HOUSEKEEPING_INTERVAL_MS,
                        Deadline::Housekeeping,
                        None,
                    );
                }
            }
        }
    }

    fn forget_lock(&mut self, name: &LockName) {
        if let Some(entry) = self.take_lock(name) {
            self.forgotten_token_floor = self.forgotten_token_floor.max(entry.newest_token);
            self.counters_dirty = true;
            self.dirty_locks.remove(name);
            if entry.stored {
                self.changes.push(Change::LockForget(name.clone()));
            }
        }
    }

    fn housekeeping(&mut self, now: Millis) {
        let horizon = now.saturating_sub(self.config.ended_retention_ms);
        let max = self.config.ended_max;
        while let Some((at, id)) = self.ended_leases_order.front().copied() {
            if at > horizon && self.ended_leases_order.len() <= max {
                break;
            }
            self.ended_leases_order.pop_front();
            self.ended_leases.remove(&id);
        }
        while let Some((at, id)) = self.ended_tickets_order.front().copied() {
            if at > horizon && self.ended_tickets_order.len() <= max {
                break;
            }
            self.ended_tickets_order.pop_front();
            self.ended_tickets.remove(&id);
            self.set_siblings.remove(&id);
        }
        // Request ids whose lease or ticket is still live are kept: a retry must never get a
        // second lease. They go to the back of the line.
        let mut rounds = self.requests_order.len();
        while rounds > 0 {
            rounds -= 1;
            let Some((at, request_id)) = self.requests_order.front().cloned() else {
                break;
            };
            if at > horizon && self.requests_order.len() <= max {
                break;
            }
            self.requests_order.pop_front();
            let live = self.requests.get(&request_id).is_some_and(|record| match record.target {
                RequestTarget::Lease(id) => self.leases.contains_key(&id),
                RequestTarget::Ticket(id) => {
                    self.tickets.contains_key(&id)
                        || matches!(self.ended_tickets.get(&id), Some(EndedTicket { end: TicketEnd::Granted(lease), .. }) if self.leases.contains_key(lease))
                }
            });
            if live {
                self.requests_order.push_back((now, request_id));
            } else {
                self.requests.remove(&request_id);
            }
        }
        let history_horizon = now.saturating_sub(self.config.history_retention_ms);
        while let Some(lock) = self.history_order.front().cloned() {
            let expired = self
                .history
                .get(&lock)
                .and_then(|records| records.front())
                .is_none_or(|record| record.ended_at < history_horizon);
            if !expired {
                break;
            }
            self.history_order.pop_front();
            if let Some(records) = self.history.get_mut(&lock) {
                records.pop_front();
                if records.is_empty() {
                    self.history.remove(&lock);
                }
            }
        }
        if history_horizon > 0 {
            self.changes.push(Change::HistoryPrune {
                ended_before: history_horizon,
            });
        }
    }

    /// When [`State::tick`] next has work to do.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.deadlines.first().map(|(at, _, _)| *at)
    }

    /// Takes what must be made durable since the last call, in order. Lock metadata and the
    /// counters come last, coalesced.
    pub fn drain_changes(&mut self) -> Vec<Change> {
        let mut changes = std::mem::take(&mut self.changes);
        for name in std::mem::take(&mut self.dirty_locks) {
            if let Some(entry) = self.locks.get_mut(&name) {
                entry.stored = true;
                changes.push(Change::LockPut(LockRecord {
                    name,
                    capacity: entry.capacity,
                    newest_token: entry.newest_token,
                    newest_granted: entry.newest_granted,
                    delayed_until: entry.delayed_until,
                    delayed_slots: entry.delayed_slots,
                    api_key: entry.api_key.clone(),
                }));
            }
        }
        if std::mem::take(&mut self.counters_dirty) {
            changes.push(Change::Counters {
                next_token: self.next_token,
                forgotten_token_floor: self.forgotten_token_floor,
            });
        }
        changes
    }

    /// True when a transition since the last [`State::drain_changes`] left something to persist.
    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty() || !self.dirty_locks.is_empty() || self.counters_dirty
    }

    /// Takes the tickets whose status changed (granted, lapsed, cancelled) since the last call,
    /// so their parked waiters can be woken.
    pub fn drain_wakeups(&mut self) -> Vec<TicketId> {
        std::mem::take(&mut self.wakeups)
    }

    /// One lock's description.
    pub fn lock(&self, name: &LockName) -> Option<LockView> {
        let entry = self.locks.get(name)?;
        Some(LockView {
            name: name.clone(),
            capacity: entry.capacity,
            holders: entry
                .holders
                .iter()
                .filter_map(|id| self.leases.get(id).cloned())
                .collect(),
            waiters: entry
                .queue
                .iter()
                .filter_map(|id| self.tickets.get(id).cloned())
                .collect(),
            delayed_until: entry.delayed_until,
            newest_token: entry.newest_token,
            holder_jobs: entry
                .holders
                .iter()
                .map(|id| self.lease_jobs.get(id).copied())
                .collect(),
            waiter_jobs: entry
                .queue
                .iter()
                .map(|id| self.ticket_jobs.get(id).copied())
                .collect(),
        })
    }

    /// Every lock, by name, from `after` (exclusive), at most `limit`.
    pub fn locks(&self, after: Option<&LockName>, limit: usize) -> Vec<LockView> {
        let range = match after {
            Some(after) => self.locks.range::<LockName, _>((
                std::ops::Bound::Excluded(after),
                std::ops::Bound::Unbounded,
            )),
            None => self.locks.range::<LockName, _>(..),
        };
        range
            .take(limit)
            .filter_map(|(name, _)| self.lock(name))
            .collect()
    }

    /// Locks whose names start with `prefix`, by name after `after`, at most `limit`. Walks
    /// only that range of the ordered table: a listing costs what it returns, not what the
    /// table holds.
    pub fn locks_with_prefix(
        &self,
        prefix: &str,
        after: Option<&LockName>,
        limit: usize,
    ) -> Vec<LockView> {
        use std::ops::Bound;
        let start = match after {
            Some(after) if after.as_str() >= prefix => Bound::Excluded(after.as_str()),
            _ => Bound::Included(prefix),
        };
        self.locks
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(name, _)| name.as_str().starts_with(prefix))
            .take(limit)
            .filter_map(|(name, _)| self.lock(name))
            .collect()
    }

    /// A lock's history, newest first, at most `limit` records, within retention at `now`.
    pub fn history(&self, name: &LockName, limit: usize, now: Millis) -> Vec<HistoryRecord> {
        let horizon = now.saturating_sub(self.config.history_retention_ms);
        self.history.get(name).map_or_else(Vec::new, |records| {
            records
                .iter()
                .rev()
                .filter(|r| r.ended_at >= horizon)
                .take(limit)
                .cloned()
                .collect()
        })
    }

    /// The live leases of the lock that a queued ticket waits for.
    pub fn lock_holders(&self, ticket: TicketId) -> Vec<Lease> {
        self.tickets
            .get(&ticket)
            .map_or_else(Vec::new, |ticket| self.holders_of(&ticket.lock))
    }

    /// A live lease by id.
    pub fn lease(&self, id: LeaseId) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// The lock a ticket is about, while a wait or cancel on it could still change or reveal
    /// anything: when it is queued, or granted with its lease still live.
    pub fn ticket_lock(&self, id: TicketId) -> Option<&LockName> {
        if let Some(ticket) = self.tickets.get(&id) {
            return Some(&ticket.lock);
        }
        match self.ended_tickets.get(&id)?.end {
            TicketEnd::Granted(lease) => self.leases.get(&lease).map(|lease| &lease.lock),
            TicketEnd::Lapsed | TicketEnd::Cancelled => None,
        }
    }

    /// The next fencing token this table will grant.
    pub fn next_token(&self) -> u64 {
        self.next_token
    }

    /// How many locks, live leases and queued tickets the table holds.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.locks.len(), self.leases.len(), self.tickets.len())
    }

    /// What `/metrics` shows of the table at `now`: totals only, nothing per lock, so the
    /// series stay few however many locks there are. Walks the locks and the jobs (a scrape's
    /// cost, not a request's).
    pub fn gauges(&self, now: Millis) -> Gauges {
        let mut gauges = Gauges {
            locks: self.locks.len(),
            leases: self.leases.len(),
            waiters: self.tickets.len(),
            ..Gauges::default()
        };
        for entry in self.locks.values() {
            if entry.delayed(now) && entry.delayed_slots > 0 {
                gauges.locks_delayed += 1;
            }
        }
        for job in self.jobs.values() {
            if let Some(index) = JobState::ALL.iter().position(|state| *state == job.state) {
                gauges.jobs[index] += 1;
            }
        }
        gauges
    }

    /// Checks every structural invariant; panics with a description if one is broken. Cheap
    /// enough for tests after every step, too slow for production hot paths.
    pub fn check_invariants(&self) {
        let mut holders_seen = 0;
        let mut waiters_seen = 0;
        for (name, entry) in &self.locks {
            assert!(
                entry.holders_fit(),
                "G1: {name} has {} holders ({} shared), capacity {}",
                entry.holders.len(),
                entry.shared_holders,
                entry.capacity
            );
            assert!(
                entry.newest_granted < self.next_token,
                "G3: {name} granted a future token"
            );
            let mut last_token = 0;
            for id in &entry.holders {
                let lease = self
                    .leases
                    .get(id)
                    .unwrap_or_else(|| panic!("{name}: holder not in table"));
                assert_eq!(&lease.lock, name);
                assert!(
                    lease.token > last_token,
                    "{name}: holders out of grant order"
                );
                last_token = lease.token;
            }
            let shared = entry
                .holders
                .iter()
                .filter(|id| self.leases.get(id).is_some_and(|l| l.mode == Mode::Shared))
                .count();
            assert_eq!(
                shared, entry.shared_holders,
                "{name}: shared holders miscounted"
            );
            let mut last_seq = 0;
            for id in &entry.queue {
                let ticket = self
                    .tickets
                    .get(id)
                    .unwrap_or_else(|| panic!("{name}: queued ticket not in table"));
                assert_eq!(&ticket.lock, name);
                assert!(
                    ticket.seq > last_seq,
                    "G4: {name}: queue out of arrival order"
                );
                last_seq = ticket.seq;
            }
            if let Some(head) = entry.queue.front().and_then(|id| self.tickets.get(id)) {
                // G5, with lock sets: room for the head means the head is a set's ticket that
                // waits for another of its locks (see the `sets` module).
                assert!(
                    !entry.has_room(head.mode, self.now) || self.set_blocks(head.id),
                    "G5: {name} has room for its head ({:?}) but granted nothing",
                    head.mode
                );
            }
            holders_seen += entry.holders.len();
            waiters_seen += entry.queue.len();
        }
        assert_eq!(holders_seen, self.leases.len(), "leases outside any lock");
        assert_eq!(
            waiters_seen,
            self.tickets.len(),
            "tickets outside any queue"
        );
        self.check_set_invariants();
        assert_eq!(
            self.recount_key_usage(),
            self.key_usage,
            "per-key counts differ from the records"
        );
    }
}
