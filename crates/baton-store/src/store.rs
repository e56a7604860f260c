//! The [`Store`] trait: what the server asks of a backend.

use std::sync::Arc;
use std::time::Duration;

use crate::events::{EventCounts, EventHub};

use crate::keys::{ApiKey, AuditEntry};
use async_trait::async_trait;
use baton_core::{
    AcquireError, CancelOutcome, Cancelled, FinishJob, Gauges, HistoryRecord, Job, JobCapability,
    JobCreated, JobError, JobFilter, JobId, KeyQuota, Lease, LeaseError, LeaseId, LockName,
    LockView, Millis, Mode, OutputAppended, Policy, QueuedTicket, Released, StopReason,
    TicketError, TicketId, TicketStatus, TokenError,
};

/// An acquire as the server passes it on (validated; ids are the store's to choose).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireArgs {
    /// The lock.
    pub lock: LockName,
    /// The owner label.
    pub owner: String,
    /// The owner key, for reentrant acquires.
    pub owner_key: Option<String>,
    /// The lease's time-to-live.
    pub ttl_ms: u64,
    /// The capacity asked for.
    pub capacity: Option<u32>,
    /// How long to wait for a grant before answering.
    pub wait: Duration,
    /// Keep the place in the queue when the wait ends without a grant.
    pub queue: bool,
    /// Makes retries idempotent.
    pub request_id: Option<String>,
    /// The id of the API key the request came with (`None` on a server without keys): kept on
    /// its ticket, so that revoking the key cancels it ([`Store::cancel_tickets_of_key`]), and
    /// on its lease and the lock it creates, which count against the key's quotas.
    pub api_key: Option<String>,
    /// That key's own quotas ([`ApiKey::quota`]); the core's defaults fill the ones it lacks.
    pub quota: KeyQuota,
    /// The value the lease carries ([`Lease::value`], validated by the core).
    pub value: Option<String>,
    /// How the lease holds the lock (shared only on a lock of capacity 1).
    pub mode: Mode,
}

/// What an acquire ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// Granted.
    Granted(Lease),
    /// Still queued after the wait (only when `queue` was asked for).
    Queued(QueuedTicket),
    /// Busy, and the request did not queue (or its wait ran out).
    Busy(Vec<Lease>),
}

/// A lock-set acquire as the server passes it on (validated; ids are the store's to choose):
/// several locks, all granted together or none ([`baton_core::AcquireSet`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireSetArgs {
    /// The locks, distinct; answers list leases and tickets in this order.
    pub locks: Vec<LockName>,
    /// The owner label of every lease.
    pub owner: String,
    /// The time-to-live of every lease.
    pub ttl_ms: u64,
    /// How long to wait for the whole set before answering.
    pub wait: Duration,
    /// Keep the set's places in the queues when the wait ends without a grant.
    pub queue: bool,
    /// Makes retries idempotent.
    pub request_id: Option<String>,
    /// The id of the API key the request came with (see [`AcquireArgs::api_key`]).
    pub api_key: Option<String>,
    /// That key's own quotas; each lease and ticket of the set counts.
    pub quota: KeyQuota,
    /// The value every lease carries.
    pub value: Option<String>,
    /// How every lease holds its lock.
    pub mode: Mode,
}

/// What a lock-set acquire ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireSetOutcome {
    /// Every lock granted: one lease per lock, in lock order.
    Granted(Vec<Lease>),
    /// Still queued after the wait (only when `queue` was asked for): one ticket per lock, in
    /// lock order. A wait on any of them keeps them all, and returns its own lease once the
    /// set is granted.
    Queued(Vec<QueuedTicket>),
    /// Some lock is busy, and the request did not queue (or its wait ran out); nothing is held
    /// or queued.
    Busy(Vec<Lease>),
}

/// A job as the server passes it on (validated; ids are the store's to choose).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateJobArgs {
    /// The job's name.
    pub name: String,
    /// The lock.
    pub lock: LockName,
    /// The lock's capacity.
    pub capacity: Option<u32>,
    /// The policy.
    pub policy: Policy,
    /// Who runs it.
    pub owner: String,
    /// The host.
    pub host: Option<String>,
    /// The command line.
    pub command: Vec<String>,
    /// The lease's time-to-live.
    pub ttl_ms: u64,
    /// How long to wait for the lock before answering (the job keeps waiting after).
    pub wait: Duration,
    /// Makes retries idempotent.
    pub request_id: Option<String>,
    /// Keep the lock at least this long after the start.
    pub min_hold_ms: Option<u64>,
    /// At most one run per period slot.
    pub once_per_ms: Option<u64>,
    /// A batch label.
    pub batch: Option<String>,
    /// The id of the API key the request came with, as for [`AcquireArgs::api_key`]; the job
    /// record counts against its job quota.
    pub api_key: Option<String>,
    /// That key's own quotas, as for [`AcquireArgs::quota`].
    pub quota: KeyQuota,
    /// The value the job's lease carries, as for [`AcquireArgs::value`].
    pub value: Option<String>,
    /// How the job's lease holds the lock, as for [`AcquireArgs::mode`].
    pub mode: Mode,
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The core refused the acquire.
    #[error(transparent)]
    Acquire(#[from] AcquireError),
    /// The ticket cannot be waited on.
    #[error(transparent)]
    Ticket(#[from] TicketError),
    /// The lease cannot be renewed or released.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// A fence check or revocation was refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A job operation was refused.
    #[error(transparent)]
    Job(#[from] JobError),
    /// The store cannot make changes durable (disk full, I/O error, database down). Nothing
    /// was acknowledged; the caller may retry later.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// This server is a standby: another server of the same database is the active one and
    /// serves every request (its advertised URL, when known). Nothing was done.
    #[error("this server is a standby; {}", match .active {
        Some(url) => format!("the active server is {url}"),
        None => "no active server is known right now".to_owned(),
    })]
    NotActive {
        /// The active server's advertised URL, when known.
        active: Option<String>,
    },
}

/// Where a server stands in its database's leadership (stores shared by several servers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// True while this server is the active one and answers from its lock table.
    pub active: bool,
    /// This server's node id (random per process).
    pub node: String,
    /// The epoch of the newest leadership this server knows (its own while active).
    pub epoch: i64,
    /// The active server's advertised URL, when known (this server's own while active).
    pub active_url: Option<String>,
    /// How many times this server became the active one since it started.
    pub takeovers: u64,
}

/// Counters and gauges a store reports for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Locks known.
    pub locks: u64,
    /// Live leases.
    pub leases: u64,
    /// Queued tickets.
    pub waiters: u64,
    /// Durable commits since start.
    pub commits: u64,
    /// Changes written by those commits.
    pub committed_changes: u64,
    /// Time spent in durable commits since start, in microseconds.
    pub commit_micros: u64,
    /// Transitions run against the lock table since start.
    pub transitions: u64,
    /// Totals of the table now (locks in lock-delay, jobs by state, …).
    pub gauges: Gauges,
    /// Events published since start, by kind (grants, expiries, job transitions, …).
    pub events: EventCounts,
    /// Durable commits by how long each took: `commit_buckets[i]` counts those that took at
    /// most [`COMMIT_BUCKETS_MICROS`]`[i]` and more than the bound before; the last counts
    /// the slower ones.
    pub commit_buckets: [u64; COMMIT_BUCKETS_MICROS.len() + 1],
}

/// The upper bounds of [`StoreStats::commit_buckets`], in microseconds: from 100 µs (SQLite
/// in WAL mode on a fast disk) to 2.5 s (a database that struggles).
pub const COMMIT_BUCKETS_MICROS: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];

/// The index in [`StoreStats::commit_buckets`] of a commit that took `micros`.
pub fn commit_bucket(micros: u64) -> usize {
    COMMIT_BUCKETS_MICROS
        .iter()
        .position(|bound| micros <= *bound)
        .unwrap_or(COMMIT_BUCKETS_MICROS.len())
}

/// A backend of the lock service. Every method that changes state answers only once the change
/// is durable (G2), and answers nothing that depends on a change that is not durable yet.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for health output: `memory`, `sqlite`, …
    fn kind(&self) -> &'static str;

    /// The store's current time, by the clock that governs expiry.
    fn now_ms(&self) -> Millis;

    /// Acquires a lease, waiting up to `args.wait` in the FIFO queue.
    async fn acquire(&self, args: AcquireArgs) -> Result<AcquireOutcome, StoreError>;

    /// Acquires several locks together, waiting up to `args.wait` in their FIFO queues: all
    /// are granted in one durable batch, or none.
    async fn acquire_set(&self, args: AcquireSetArgs) -> Result<AcquireSetOutcome, StoreError>;

    /// Waits up to `wait` for a ticket to be granted.
    async fn wait_ticket(&self, id: TicketId, wait: Duration) -> Result<TicketStatus, StoreError>;

    /// Leaves the queue.
    async fn cancel_ticket(&self, id: TicketId) -> Result<Cancelled, StoreError>;

    /// Cancels every queued ticket of the API key `key_id` (it was revoked): each as
    /// [`Store::cancel_ticket`] would, so a parked wait on one answers `ticket_cancelled` at
    /// once and the key receives no lease it could no longer renew or release. Returns how
    /// many were cancelled.
    async fn cancel_tickets_of_key(&self, key_id: &str) -> Result<usize, StoreError>;

    /// Renews a lease, replacing its value when `value` is given (the change is durable
    /// before the answer, as for every change of a lease's record).
    async fn renew(
        &self,
        id: LeaseId,
        ttl_ms: Option<u64>,
        value: Option<String>,
    ) -> Result<Lease, StoreError>;

    /// Releases a lease, handing the lock on at once.
    async fn release(&self, id: LeaseId) -> Result<Released, StoreError>;

    /// Revokes the live lease with this token.
    async fn revoke(&self, lock: LockName, token: u64) -> Result<Lease, StoreError>;

    /// Checks a fencing token; returns the newest token seen for the lock.
    async fn fence(&self, lock: LockName, token: u64) -> Result<u64, StoreError>;

    /// One lock.
    async fn lock(&self, name: LockName) -> Result<Option<LockView>, StoreError>;

    /// Locks by name after `after`, at most `limit`.
    async fn locks(
        &self,
        after: Option<LockName>,
        limit: usize,
    ) -> Result<Vec<LockView>, StoreError>;

    /// Locks whose names start with `prefix`, by name after `after`, at most `limit`: what a
    /// key restricted to prefixes may list. A store should answer from that range of names
    /// only, so the listing costs what the caller can see; this default pages through
    /// [`Store::locks`] and filters.
    async fn locks_with_prefix(
        &self,
        prefix: &str,
        after: Option<LockName>,
        limit: usize,
    ) -> Result<Vec<LockView>, StoreError> {
        let mut found = Vec::new();
        let mut after = after;
        loop {
            let page = self.locks(after, limit.max(1)).await?;
            let full = page.len() == limit.max(1);
            after = page.last().map(|view| view.name.clone());
            found.extend(
                page.into_iter()
                    .filter(|view| view.name.as_str().starts_with(prefix)),
            );
            if !full || found.len() >= limit {
                found.truncate(limit);
                return Ok(found);
            }
        }
    }

    /// A lock's past holds, newest first.
    async fn history(&self, name: LockName, limit: usize)
    -> Result<Vec<HistoryRecord>, StoreError>;

    /// Creates a job, applies its policy, and waits up to `args.wait` for the lock.
    async fn create_job(&self, args: CreateJobArgs) -> Result<JobCreated, StoreError>;

    /// Renews a running job's lease; says whether its runner must stop.
    async fn job_heartbeat(
        &self,
        id: JobId,
        lease: LeaseId,
        ttl_ms: Option<u64>,
    ) -> Result<(Lease, Option<StopReason>), StoreError>;

    /// Appends a chunk of a running job's output (the core keeps the tail); says whether its
    /// runner must stop. `lease` is the job's lease, the runner's capability.
    async fn append_job_output(
        &self,
        id: JobId,
        lease: LeaseId,
        text: String,
        skipped_bytes: u64,
    ) -> Result<OutputAppended, StoreError>;

    /// Cancels a job on request: a waiting one leaves the queue, a running one's runner is
    /// told to stop (`State::cancel_job` says what happens in each state).
    async fn cancel_job(&self, id: JobId) -> Result<(Job, CancelOutcome), StoreError>;

    /// Records how a job ended and lets its lock go.
    async fn finish_job(
        &self,
        id: JobId,
        capability: JobCapability,
        report: FinishJob,
    ) -> Result<Job, StoreError>;

    /// One job.
    async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError>;

    /// Jobs matching a filter, newest first.
    async fn jobs(&self, filter: JobFilter) -> Result<Vec<Job>, StoreError>;

    /// Runs every deadline due now (expiries, lapses, lock-delays). Stores also do this on
    /// their own timer; tests with a manual clock call it.
    async fn tick(&self) -> Result<(), StoreError>;

    /// `Ok` when the store can take writes.
    async fn ready(&self) -> Result<(), StoreError>;

    /// How many locks, live leases and queued tickets the store holds.
    async fn counts(&self) -> (usize, usize, usize);

    /// The feed of the lock table's events ([`EventHub`]), each published once durable. A
    /// store without one (or a standby, [`StoreError::NotActive`]) answers an error.
    fn events(&self) -> Result<Arc<EventHub>, StoreError> {
        Err(StoreError::Unavailable(
            "this store has no event stream".into(),
        ))
    }

    /// Counters for `/metrics`.
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    /// The leadership of a store shared by several servers; `None` for a store that only
    /// this server uses.
    fn leadership(&self) -> Option<Leadership> {
        None
    }

    /// The server is stopping: give up what others could take over at once (a shared store's
    /// leadership). The default does nothing.
    async fn shutdown(&self) {}

    /// Inserts an API key, or replaces the one with the same id (revoking is a replace with
    /// `revoked_at` set). Durable before it returns.
    async fn put_key(&self, key: ApiKey) -> Result<(), StoreError>;

    /// Every API key, revoked ones included.
    async fn keys(&self) -> Result<Vec<ApiKey>, StoreError>;

    /// Appends an entry to the audit log; the store assigns `seq` (increasing) and returns the
    /// entry as kept. Durable before it returns.
    async fn append_audit(&self, entry: AuditEntry) -> Result<AuditEntry, StoreError>;

    /// Audit entries with `seq` below `before_seq` (all when `None`), newest first, at most
    /// `limit`.
    async fn audit(
        &self,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError>;

    /// The lock of a live lease, so the server can authorize a request that names only the
    /// lease. `None` when no live lease has this id. The default scans [`Store::locks`]; a
    /// store with an index should override it.
    async fn lock_of_lease(&self, id: LeaseId) -> Result<Option<LockName>, StoreError> {
        scan_locks(self, |view| view.holders.iter().any(|lease| lease.id == id)).await
    }

    /// The lock of a queued ticket, or of a granted ticket whose lease is still live (a wait
    /// would hand that lease out, a cancel would release it); `None` otherwise. The default
    /// scans [`Store::locks`] and so finds queued tickets only: a store should override it.
    async fn lock_of_ticket(&self, id: TicketId) -> Result<Option<LockName>, StoreError> {
        scan_locks(self, |view| {
            view.waiters.iter().any(|ticket| ticket.id == id)
        })
        .await
    }
}

/// The first lock, by name, whose view satisfies `found`.
async fn scan_locks<S: Store + ?Sized>(
    store: &S,
    found: impl Fn(&LockView) -> bool + Send,
) -> Result<Option<LockName>, StoreError> {
    const PAGE: usize = 1_000;
    let mut after = None;
    loop {
        let page = store.locks(after, PAGE).await?;
        if let Some(view) = page.iter().find(|view| found(view)) {
            return Ok(Some(view.name.clone()));
        }
        if page.len() < PAGE {
            return Ok(None);
        }
        after = page.last().map(|view| view.name.clone());
    }
}
