//! The engine: one owner of the lock table, group commit, wake-ups and the expiry timer.
//!
//! Every operation runs its core transition under one short mutex, then waits (outside it) for
//! the durable commit that contains every change it saw. A single committer thread takes all
//! changes recorded since its last commit, writes them in one transaction through the
//! [`Persister`], and publishes the number of the batch that is now durable. Requests that
//! arrive while a commit is in flight accumulate into the next batch, so N concurrent requests
//! cost about one durable commit rather than N (group commit), and a contended handoff (a
//! release that grants the next waiter) costs exactly one.
//!
//! Ordering rule (G2): an answer leaves only when the batch numbered `required` is durable,
//! where `required` is the batch that will hold the operation's own changes if it made any, or
//! else the newest batch already taken by the committer (whose changes the operation may have
//! observed). So nobody is ever told of a grant, a token or a queue position that a crash could
//! take back.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use baton_core::JobError;
use baton_core::{
    Acquire, AcquireSet, Acquired, AcquiredSet, CancelOutcome, Cancelled, Change, Config,
    CreateJob, FinishJob, HistoryRecord, Job, JobCapability, JobCreated, JobFilter, JobId, Lease,
    LeaseId, LockName, LockView, Millis, OutputAppended, Released, SetStatus, Snapshot, State,
    StopReason, TicketId, TicketStatus,
};
use tokio::sync::{Notify, futures::OwnedNotified, watch};

use crate::clock::Clock;
use crate::events::{EVENT_WINDOW, EventHub};
use crate::keys::{ApiKey, AuditEntry};
use crate::store::{
    AcquireArgs, AcquireOutcome, AcquireSetArgs, AcquireSetOutcome, COMMIT_BUCKETS_MICROS,
    CreateJobArgs, Store, StoreError, StoreStats, commit_bucket,
};

/// A failure to load or commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PersistError(pub String);

/// How the text of a [`PersistError::deposed`] starts.
const DEPOSED: &str = "deposed: ";

impl PersistError {
    /// A write refused because this server no longer holds the leadership it writes under
    /// (a fenced persister found another server's term): nothing was written, and nothing this
    /// server writes will be. Retrying cannot help.
    pub fn deposed(detail: impl std::fmt::Display) -> PersistError {
        PersistError(format!("{DEPOSED}{detail}"))
    }

    /// True for an error made by [`PersistError::deposed`].
    pub fn is_deposed(&self) -> bool {
        self.0.starts_with(DEPOSED)
    }
}

/// Durable storage of the lock table's changes. Called from one dedicated thread (with
/// [`EngineOptions::manual_commit`], from the caller of [`Engine::commit_pending`]); may block.
pub trait Persister: Send + 'static {
    /// A short name: `memory`, `sqlite`, …
    fn kind(&self) -> &'static str;

    /// True when nothing survives a restart: the engine then skips the committer entirely.
    fn volatile(&self) -> bool {
        false
    }

    /// Reads everything that was made durable.
    fn load(&mut self) -> Result<Snapshot, PersistError>;

    /// Makes a batch of changes durable, atomically: all or nothing.
    fn commit(&mut self, changes: &[Change]) -> Result<(), PersistError>;

    /// Inserts or replaces (by id) an API key, durably. Called outside the committer, under
    /// the same mutex, so it never runs during a commit.
    fn put_key(&mut self, key: &ApiKey) -> Result<(), PersistError>;

    /// Every API key.
    fn keys(&mut self) -> Result<Vec<ApiKey>, PersistError>;

    /// Appends an audit entry durably, assigning its `seq` (one more than the highest kept).
    fn append_audit(&mut self, entry: &AuditEntry) -> Result<AuditEntry, PersistError>;

    /// Audit entries below `before_seq`, newest first, at most `limit`.
    fn audit(
        &mut self,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, PersistError>;
}

/// The in-memory reference store's persister: keeps no lock-table changes, and keeps API keys
/// and the audit log in memory only.
#[derive(Debug, Default)]
pub struct MemoryPersister {
    keys: Vec<ApiKey>,
    audit: Vec<AuditEntry>,
}

impl MemoryPersister {
    /// An empty one.
    pub fn new() -> MemoryPersister {
        MemoryPersister::default()
    }
}

impl Persister for MemoryPersister {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn volatile(&self) -> bool {
        true
    }

    fn load(&mut self) -> Result<Snapshot, PersistError> {
        Ok(Snapshot::default())
    }

    fn commit(&mut self, _changes: &[Change]) -> Result<(), PersistError> {
        Ok(())
    }

    fn put_key(&mut self, key: &ApiKey) -> Result<(), PersistError> {
        match self.keys.iter_mut().find(|kept| kept.id == key.id) {
            Some(kept) => *kept = key.clone(),
            None => self.keys.push(key.clone()),
        }
        Ok(())
    }

    fn keys(&mut self) -> Result<Vec<ApiKey>, PersistError> {
        Ok(self.keys.clone())
    }

    fn append_audit(&mut self, entry: &AuditEntry) -> Result<AuditEntry, PersistError> {
        let seq = self.audit.last().map_or(1, |last| last.seq + 1);
        let entry = AuditEntry {
            seq,
            ..entry.clone()
        };
        self.audit.push(entry.clone());
        Ok(entry)
    }

    fn audit(
        &mut self,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, PersistError> {
        Ok(self
            .audit
            .iter()
            .rev()
            .filter(|entry| before_seq.is_none_or(|before| entry.seq < before))
            .take(limit)
            .cloned()
            .collect())
    }
}

/// The persister, shared by the committer thread and the (rare) key and audit calls.
type SharedPersister = Arc<Mutex<Box<dyn Persister>>>;

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The lock table's configuration.
    pub config: Config,
    /// Run the expiry timer (tests with a manual clock turn it off and call `tick`).
    pub run_timer: bool,
    /// How many times a failed commit is retried before the engine stops taking writes.
    pub commit_attempts: u32,
    /// Commit on the caller's schedule instead of on a committer thread: nothing is made
    /// durable until the caller runs [`Engine::commit_pending`]. For the deterministic
    /// simulator (`baton-sim`), which decides when each commit happens and can crash between
    /// any two steps; a server never sets it.
    pub manual_commit: bool,
    /// Where the engine's fresh lease, ticket and job ids come from; `None` (the default)
    /// draws them from the operating system's random source. The simulator passes a seeded
    /// source so one seed replays one history; a server never sets it.
    pub ids: Option<IdSource>,
}

/// A source of fresh 128-bit ids, standing in for the operating system's random source (see
/// [`EngineOptions::ids`]).
#[derive(Clone)]
pub struct IdSource(pub Arc<dyn Fn() -> [u8; 16] + Send + Sync>);

impl std::fmt::Debug for IdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdSource")
    }
}

impl Default for EngineOptions {
    fn default() -> EngineOptions {
        EngineOptions {
            config: Config::default(),
            run_timer: true,
            commit_attempts: 3,
            manual_commit: false,
            ids: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Durability {
    /// Every batch numbered up to this is durable.
    seq: u64,
    /// Set when a commit failed for good: nothing more is acknowledged.
    failed: Option<String>,
}

struct Shared {
    core: State,
    /// The number of the newest batch taken by the committer.
    sealed: u64,
    /// Parked waiters by ticket; woken (and removed) when the ticket's status changes.
    waiters: HashMap<TicketId, Arc<Notify>>,
    /// The deadline the timer sleeps towards.
    timer_target: Millis,
    closing: bool,
    failed: Option<String>,
    /// The highest batch someone is waiting for. The committer starts a commit at once only
    /// when a waiter needs it; changes nobody waits for yet (a lazy release, a parked ticket)
    /// ride along with the next needed commit, or go alone after [`LAZY_COMMIT_DELAY`].
    wanted: u64,
    /// Since when the table has had changes not yet taken by the committer.
    dirty_since: Option<std::time::Instant>,
}

/// The longest a change nobody waits for stays uncommitted. Waiting for a needed commit
/// instead of committing each lazy change at once is what makes a contended handoff cost one
/// durable commit: the releaser's release and its next ticket join the commit of the grant.
pub const LAZY_COMMIT_DELAY: Duration = Duration::from_millis(5);

struct Inner {
    shared: Mutex<Shared>,
    /// How many waits on each ticket are in progress in this process (see [`Presence`]). Its
    /// own mutex, so that a wait that enters or answers does not take the table's; when both
    /// are held, this one is taken first.
    present: Mutex<HashMap<TicketId, u32>>,
    /// Wakes the committer thread when changes are recorded (waits on `shared`).
    work: Condvar,
    durable: watch::Sender<Durability>,
    timer_wake: Notify,
    clock: Arc<dyn Clock>,
    kind: &'static str,
    volatile: bool,
    ticket_lapse_ms: u64,
    commits: AtomicU64,
    committed_changes: AtomicU64,
    commit_micros: AtomicU64,
    /// Commits by duration ([`StoreStats::commit_buckets`]).
    commit_buckets: [AtomicU64; COMMIT_BUCKETS_MICROS.len() + 1],
    transitions: AtomicU64,
    /// Where the table's events go once durable.
    events: Arc<EventHub>,
}

/// A [`Store`] over the in-memory lock table and a [`Persister`]. See the module documentation.
pub struct Engine {
    inner: Arc<Inner>,
    persister: SharedPersister,
    committer: Option<std::thread::JoinHandle<()>>,
    timer: Option<tokio::task::JoinHandle<()>>,
    ids: Option<IdSource>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("kind", &self.inner.kind)
            .finish()
    }
}

impl Engine {
    /// Loads what the persister holds, recovers the lock table conservatively (see
    /// [`State::restore`]), makes the recovery durable, and starts the committer and timer.
    /// Must be called inside a tokio runtime when the timer runs.
    pub fn open(
        mut persister: Box<dyn Persister>,
        clock: Arc<dyn Clock>,
        options: EngineOptions,
    ) -> Result<Engine, PersistError> {
        let snapshot = persister.load()?;
        let now = clock.now_ms();
        let mut core = State::restore(options.config.clone(), snapshot, now)
            .map_err(|error| PersistError(error.to_string()))?;
        let recovery = core.drain_changes();
        persister.commit(&recovery)?;
        core.drain_wakeups();
        // What recovery did is in the table a subscriber reads first; nobody listens yet.
        core.drain_events();
        let kind = persister.kind();
        let volatile = persister.volatile();
        let persister: SharedPersister = Arc::new(Mutex::new(persister));
        let inner = Arc::new(Inner {
            shared: Mutex::new(Shared {
                core,
                sealed: 0,
                waiters: HashMap::new(),
                timer_target: Millis::MAX,
                closing: false,
                failed: None,
                wanted: 0,
                dirty_since: None,
            }),
            present: Mutex::new(HashMap::new()),
            work: Condvar::new(),
            durable: watch::Sender::new(Durability::default()),
            timer_wake: Notify::new(),
            clock,
            kind,
            volatile,
            ticket_lapse_ms: options.config.ticket_lapse_ms,
            commits: AtomicU64::new(0),
            committed_changes: AtomicU64::new(0),
            commit_micros: AtomicU64::new(0),
            commit_buckets: Default::default(),
            transitions: AtomicU64::new(0),
            events: Arc::new(EventHub::new(
                hex_id(&random_id().map_err(|error| PersistError(error.to_string()))?[..8]),
                EVENT_WINDOW,
            )),
        });
        let committer = if volatile || options.manual_commit {
            None
        } else {
            let inner = Arc::clone(&inner);
            let persister = Arc::clone(&persister);
            let attempts = options.commit_attempts.max(1);
            Some(
                std::thread::Builder::new()
                    .name("baton-committer".into())
                    .spawn(move || run_committer(&inner, &persister, attempts))
                    .map_err(|error| {
                        PersistError(format!("cannot start the committer: {error}"))
                    })?,
            )
        };
        let timer = options
            .run_timer
            .then(|| tokio::spawn(run_timer(Arc::downgrade(&inner))));
        Ok(Engine {
            inner,
            persister,
            committer,
            timer,
            ids: options.ids,
        })
    }

    /// With [`EngineOptions::manual_commit`]: takes every change recorded since the last
    /// commit, commits it as one batch through the persister (one attempt), and publishes that
    /// batch as durable, which lets the answers waiting for it leave. Returns how many changes
    /// were committed (0 when nothing was pending). A failed commit stops the engine taking
    /// writes, as on the committer thread. Without `manual_commit` the committer thread does
    /// this on its own and this must not be called.
    pub fn commit_pending(&self) -> Result<usize, PersistError> {
        let (changes, events, batch) = {
            let mut shared = self.inner.lock();
            if let Some(reason) = &shared.failed {
                return Err(PersistError(reason.clone()));
            }
            if !shared.core.has_changes() {
                return Ok(0);
            }
            let changes = shared.core.drain_changes();
            let events = shared.core.drain_events();
            shared.dirty_since = None;
            shared.sealed += 1;
            (changes, events, shared.sealed)
        };
        let outcome = match self.persister.lock() {
            Ok(mut persister) => persister.commit(&changes),
            Err(_) => Err(PersistError("the persister's mutex is poisoned".into())),
        };
        match outcome {
            Ok(()) => {
                self.inner.commits.fetch_add(1, Ordering::Relaxed);
                self.inner
                    .committed_changes
                    .fetch_add(changes.len() as u64, Ordering::Relaxed);
                self.inner.durable.send_modify(|state| state.seq = batch);
                // As the committer does: an event is published only once durable.
                self.inner.events.publish(events);
                Ok(changes.len())
            }
            Err(error) => {
                let reason = format!("a durable commit failed: {error}; restart the server");
                self.inner.lock().failed = Some(reason.clone());
                self.inner
                    .durable
                    .send_modify(|state| state.failed = Some(reason));
                Err(error)
            }
        }
    }

    /// Reads the lock table as it is in memory now, committed or not. For checkers (the
    /// simulator compares what clients were told with what the table holds); answers to
    /// clients go through the [`Store`] methods, which wait for durability.
    pub fn inspect<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.inner.lock().core)
    }

    fn random_id(&self) -> Result<[u8; 16], StoreError> {
        match &self.ids {
            Some(source) => Ok((source.0)()),
            None => random_id(),
        }
    }

    /// Runs a transition under the table's mutex. Returns its result and the batch that must be
    /// durable before the result may be told to anyone.
    fn transact<T>(
        &self,
        f: impl FnOnce(&mut Shared, Millis) -> T,
    ) -> Result<(T, u64), StoreError> {
        let now = self.inner.clock.now_ms();
        let mut shared = self.inner.lock();
        if let Some(reason) = &shared.failed {
            return Err(StoreError::Unavailable(reason.clone()));
        }
        let result = f(&mut shared, now);
        Ok((result, self.inner.after_transition(&mut shared)))
    }

    /// Waits until batch `required` is durable.
    async fn durable(&self, required: u64) -> Result<(), StoreError> {
        {
            let state = self.inner.durable.borrow();
            if state.seq >= required {
                return Ok(());
            }
            if let Some(reason) = &state.failed {
                return Err(StoreError::Unavailable(reason.clone()));
            }
        }
        {
            // Tell the committer this batch is needed now (unless it is already being written).
            let mut shared = self.inner.lock();
            if required > shared.sealed && required > shared.wanted {
                shared.wanted = required;
                self.inner.work.notify_one();
            }
        }
        let mut receiver = self.inner.durable.subscribe();
        let state = receiver
            .wait_for(|state| state.seq >= required || state.failed.is_some())
            .await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        if state.seq >= required {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                state.failed.clone().unwrap_or_default(),
            ))
        }
    }

    /// Runs a transition and waits for its durability.
    async fn run<T>(&self, f: impl FnOnce(&mut State, Millis) -> T) -> Result<T, StoreError> {
        let (result, required) = self.transact(|shared, now| f(&mut shared.core, now))?;
        self.durable(required).await?;
        Ok(result)
    }

    /// Parks on a ticket until it is granted, ends, or `wait` runs out. On running out, a
    /// ticket whose caller does not keep its place (`keep_place` false) is withdrawn, and the
    /// answer is the lock's holders.
    ///
    /// If the future is dropped before it answers (the waiter's connection closed), the
    /// [`Presence`] it holds tells the table that the waiter has gone.
    async fn park(
        &self,
        id: TicketId,
        wait: Duration,
        keep_place: bool,
    ) -> Result<Parked, StoreError> {
        let mut presence = Presence::enter(&self.inner, id);
        let parked = self.park_present(&mut presence, wait, keep_place).await;
        presence.answered = true;
        parked
    }

    async fn park_present(
        &self,
        presence: &mut Presence<'_>,
        wait: Duration,
        keep_place: bool,
    ) -> Result<Parked, StoreError> {
        let id = presence.ticket;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let lapse_ms = self.inner.ticket_lapse_ms;
            let ((status, notified), required) = self.transact(|shared, now| {
                let keep_until = now + remaining.as_millis() as u64 + lapse_ms;
                let status = shared.core.wait_ticket(id, Some(keep_until), now);
                let notified = match &status {
                    Ok(TicketStatus::Queued(_)) if !remaining.is_zero() => {
                        let notify = Arc::clone(
                            shared
                                .waiters
                                .entry(id)
                                .or_insert_with(|| Arc::new(Notify::new())),
                        );
                        // Enabled while the table is locked, so a wake-up (which also runs
                        // under the lock) cannot slip between this check and the wait.
                        let mut notified = Box::pin(notify.notified_owned());
                        notified.as_mut().enable();
                        Some(notified)
                    }
                    Ok(TicketStatus::Queued(_)) if !keep_place => {
                        // Time is up and the caller does not queue: withdraw, and report busy.
                        let holders = shared.core.lock_holders(id);
                        let _ = shared.core.cancel_ticket(id, true, now);
                        return (Ok(ParkEnd::Busy(holders)), None);
                    }
                    _ => None,
                };
                (status.map(ParkEnd::Status), notified)
            })?;
            let status = status?;
            match (status, notified) {
                (ParkEnd::Status(TicketStatus::Queued(_)), Some(notified)) => {
                    let _ = tokio::time::timeout_at(deadline, wait_notified(notified)).await;
                }
                (ParkEnd::Status(status), _) => {
                    // This wait has taken the grant: if it is dropped before answering, the
                    // grant never reached its waiter.
                    presence.collected = matches!(status, TicketStatus::Granted(_));
                    self.durable(required).await?;
                    return Ok(Parked::Status(status));
                }
                (ParkEnd::Busy(holders), _) => {
                    self.durable(required).await?;
                    return Ok(Parked::Busy(holders));
                }
            }
        }
    }
}

/// One wait in progress on a ticket. When it is dropped before its answer was handed back (the
/// handler's future was dropped: the waiter's connection closed), and no other wait on the
/// ticket is in progress here, the table hears that the waiter has gone
/// ([`State::waiter_left`]): a queued ticket lapses one lapse from now unless a waiter comes
/// back, and a grant this wait took but never answered is released and handed on. The change
/// is committed lazily, like a release: nobody waits for it, and a grant it causes is answered
/// only once durable.
struct Presence<'a> {
    inner: &'a Inner,
    ticket: TicketId,
    /// The wait saw the grant (and so marked it collected) but has not answered yet.
    collected: bool,
    /// The answer was handed back (or an error): nothing to tell.
    answered: bool,
}

impl<'a> Presence<'a> {
    fn enter(inner: &'a Inner, ticket: TicketId) -> Presence<'a> {
        if let Ok(mut present) = inner.present.lock() {
            *present.entry(ticket).or_insert(0) += 1;
        }
        Presence {
            inner,
            ticket,
            collected: false,
            answered: false,
        }
    }
}

impl Drop for Presence<'_> {
    fn drop(&mut self) {
        // Never panic in a drop (a poisoned mutex is reported by the next request).
        let Ok(mut present) = self.inner.present.lock() else {
            return;
        };
        let others = match present.get_mut(&self.ticket) {
            Some(count) if *count > 1 => {
                *count -= 1;
                true
            }
            _ => {
                present.remove(&self.ticket);
                false
            }
        };
        // Another wait on this ticket is still here: it will collect and answer. The common
        // case, a wait that answered, ends here without taking the table's mutex.
        if self.answered || others {
            return;
        }
        // `present` stays held while the table hears of the departure, so a wait entering on
        // this ticket now either counted before (and this returned above) or comes after, and
        // its own wait on the ticket clears the departure mark.
        let Ok(mut shared) = self.inner.shared.lock() else {
            return;
        };
        if shared.closing || shared.failed.is_some() {
            return;
        }
        let now = self.inner.clock.now_ms();
        let left = shared.core.waiter_left(self.ticket, self.collected, now);
        tracing::debug!(ticket = ?self.ticket, ?left, "a waiter went away");
        self.inner.after_transition(&mut shared);
    }
}

async fn wait_notified(notified: Pin<Box<OwnedNotified>>) {
    notified.await;
}

enum ParkEnd {
    Status(TicketStatus),
    Busy(Vec<Lease>),
}

enum Parked {
    Status(TicketStatus),
    Busy(Vec<Lease>),
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the table's mutex is a defect; the table may be half-changed,
        // so carrying on with it would risk a wrong answer. Poison is propagated as a panic.
        match self.shared.lock() {
            Ok(guard) => guard,
            Err(poisoned) => panic!("the lock table's mutex is poisoned: {poisoned}"),
        }
    }

    /// Bookkeeping after every transition: wake waiters, hand changes to the committer, re-arm
    /// the timer. Returns the batch the caller must wait for.
    fn after_transition(&self, shared: &mut Shared) -> u64 {
        self.transitions.fetch_add(1, Ordering::Relaxed);
        for ticket in shared.core.drain_wakeups() {
            if let Some(notify) = shared.waiters.remove(&ticket) {
                notify.notify_waiters();
            }
        }
        let required = if shared.core.has_changes() {
            if self.volatile {
                shared.core.drain_changes();
                shared.sealed += 1;
                let sealed = shared.sealed;
                self.durable.send_modify(|state| state.seq = sealed);
                // Durable at once; published under the table's mutex, so in order.
                self.events.publish(shared.core.drain_events());
                sealed
            } else {
                if shared.dirty_since.is_none() {
                    shared.dirty_since = Some(std::time::Instant::now());
                    // Let the committer start its lazy-commit countdown.
                    self.work.notify_one();
                }
                shared.sealed + 1
            }
        } else {
            shared.sealed
        };
        if let Some(next) = shared.core.next_deadline()
            && next < shared.timer_target
        {
            shared.timer_target = next;
            self.timer_wake.notify_one();
        }
        required
    }
}

fn run_committer(inner: &Inner, persister: &SharedPersister, attempts: u32) {
    loop {
        let (changes, events, batch) = {
            let mut shared = inner.lock();
            loop {
                let dirty = shared.core.has_changes();
                if !dirty && shared.closing {
                    return;
                }
                let needed = shared.wanted > shared.sealed;
                let overdue = shared
                    .dirty_since
                    .is_some_and(|since| since.elapsed() >= LAZY_COMMIT_DELAY);
                if dirty && (needed || overdue || shared.closing) {
                    break;
                }
                let wait = if dirty {
                    let since = shared
                        .dirty_since
                        .get_or_insert_with(std::time::Instant::now);
                    LAZY_COMMIT_DELAY.saturating_sub(since.elapsed())
                } else {
                    Duration::from_secs(3_600)
                };
                shared = match inner.work.wait_timeout(shared, wait) {
                    Ok((guard, _)) => guard,
                    Err(poisoned) => panic!("the lock table's mutex is poisoned: {poisoned}"),
                };
            }
            let changes = shared.core.drain_changes();
            let events = shared.core.drain_events();
            shared.dirty_since = None;
            shared.sealed += 1;
            (changes, events, shared.sealed)
        };
        let mut outcome = Err(PersistError("no attempt".into()));
        let started = std::time::Instant::now();
        for attempt in 0..attempts {
            outcome = match persister.lock() {
                Ok(mut persister) => persister.commit(&changes),
                Err(_) => Err(PersistError("the persister's mutex is poisoned".into())),
            };
            match &outcome {
                Ok(()) => break,
                // Another server leads now: no retry can succeed, stop at once.
                Err(error) if error.is_deposed() => break,
                Err(error) => {
                    tracing::warn!(attempt, %error, "commit failed");
                    std::thread::sleep(Duration::from_millis(50 << attempt.min(6)));
                }
            }
        }
        match outcome {
            Ok(()) => {
                inner.commits.fetch_add(1, Ordering::Relaxed);
                inner
                    .committed_changes
                    .fetch_add(changes.len() as u64, Ordering::Relaxed);
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                inner.commit_micros.fetch_add(micros, Ordering::Relaxed);
                inner.commit_buckets[commit_bucket(micros)].fetch_add(1, Ordering::Relaxed);
                inner.durable.send_modify(|state| state.seq = batch);
                // Only now, and from this one thread, in batch order: an event is never told
                // of a change that is not durable.
                inner.events.publish(events);
            }
            Err(error) => {
                // The table in memory is now ahead of the disk: acknowledging anything more
                // could promise what a restart would forget. Stop taking writes.
                let reason = format!("a durable commit failed: {error}; restart the server");
                tracing::error!(%reason);
                inner.lock().failed = Some(reason.clone());
                inner
                    .durable
                    .send_modify(|state| state.failed = Some(reason));
                return;
            }
        }
    }
}

async fn run_timer(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let now = strong.clock.now_ms();
        let next = {
            let mut shared = strong.lock();
            if shared.closing {
                return;
            }
            if shared.core.next_deadline().is_some_and(|next| next <= now) {
                shared.core.tick(now);
                strong.after_transition(&mut shared);
            }
            let next = shared.core.next_deadline().unwrap_or(Millis::MAX);
            shared.timer_target = next;
            next
        };
        // Sleep towards the next deadline, at most a second at a time so a wall clock that
        // jumps is noticed; an earlier deadline wakes the timer at once.
        let sleep = Duration::from_millis(next.saturating_sub(now).min(1_000));
        // Holding `strong` while asleep is fine: dropping the engine aborts this task.
        let wake = strong.timer_wake.notified();
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            () = wake => {}
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Ok(mut shared) = self.inner.shared.lock() {
            shared.closing = true;
        }
        self.inner.work.notify_all();
        self.inner.timer_wake.notify_one();
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
    }
}

impl Engine {
    /// Runs `f` on the persister on a blocking thread (it may wait for a commit in flight and
    /// for the disk).
    async fn with_persister<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Persister) -> Result<T, PersistError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let persister = Arc::clone(&self.persister);
        tokio::task::spawn_blocking(move || {
            let mut persister = persister
                .lock()
                .map_err(|_| PersistError("the persister's mutex is poisoned".into()))?;
            f(persister.as_mut())
        })
        .await
        .map_err(|error| StoreError::Unavailable(format!("a store task failed: {error}")))?
        .map_err(|error| StoreError::Unavailable(error.0))
    }
}

fn hex_id(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn random_id() -> Result<[u8; 16], StoreError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|error| StoreError::Unavailable(format!("no random source: {error}")))?;
    Ok(bytes)
}

#[async_trait]
impl Store for Engine {
    fn kind(&self) -> &'static str {
        self.inner.kind
    }

    fn now_ms(&self) -> Millis {
        self.inner.clock.now_ms()
    }

    async fn acquire(&self, args: AcquireArgs) -> Result<AcquireOutcome, StoreError> {
        let request_id = args.request_id.clone();
        let command = Acquire {
            lock: args.lock,
            owner: args.owner,
            owner_key: args.owner_key,
            ttl_ms: args.ttl_ms,
            capacity: args.capacity,
            // Waiting happens in the queue, so a request that waits at all queues; if its wait
            // runs out and it does not keep its place, the ticket is withdrawn.
            queue: args.queue || !args.wait.is_zero(),
            request_id: args.request_id,
            api_key: args.api_key,
            quota: args.quota,
            lease_id: LeaseId(self.random_id()?),
            ticket_id: TicketId(self.random_id()?),
            value: args.value,
            mode: args.mode,
        };
        let (acquired, required) =
            self.transact(|shared, now| shared.core.acquire(command, now))?;
        match acquired? {
            Acquired::Granted(lease) => {
                #[cfg(feature = "sim-bugs")]
                if baton_core::sim_bugs::active(baton_core::sim_bugs::Bug::AckBeforeCommit) {
                    return Ok(AcquireOutcome::Granted(lease));
                }
                // A retry of a queued request whose ticket has been granted collects the lease
                // here, as a wait on the ticket would: if this answer never leaves (the caller
                // went away), the table hears of it and hands the grant on rather than keeping
                // it for its whole TTL (G5). Found by baton-sim.
                let mut presence = match lease.ticket {
                    Some(ticket)
                        if lease.request_id.is_some() && lease.request_id == request_id =>
                    {
                        let mut presence = Presence::enter(&self.inner, ticket);
                        presence.collected = true;
                        Some(presence)
                    }
                    _ => None,
                };
                let durable = self.durable(required).await;
                if let Some(presence) = &mut presence {
                    presence.answered = true;
                }
                durable?;
                Ok(AcquireOutcome::Granted(lease))
            }
            Acquired::Busy(holders) => {
                self.durable(required).await?;
                Ok(AcquireOutcome::Busy(holders))
            }
            Acquired::Queued(queued) => {
                if args.wait.is_zero() {
                    #[cfg(feature = "sim-bugs")]
                    if baton_core::sim_bugs::active(baton_core::sim_bugs::Bug::QueueBeforeCommit) {
                        return Ok(AcquireOutcome::Queued(queued));
                    }
                    self.durable(required).await?;
                    return Ok(AcquireOutcome::Queued(queued));
                }
                // No need to wait for the ticket's commit before parking: whatever the park
                // answers waits for a batch that holds everything seen, the ticket included.
                match self.park(queued.ticket.id, args.wait, args.queue).await? {
                    Parked::Status(TicketStatus::Granted(lease)) => {
                        Ok(AcquireOutcome::Granted(lease))
                    }
                    Parked::Status(TicketStatus::Queued(queued)) => {
                        Ok(AcquireOutcome::Queued(queued))
                    }
                    Parked::Busy(holders) => Ok(AcquireOutcome::Busy(holders)),
                }
            }
        }
    }

    async fn acquire_set(&self, args: AcquireSetArgs) -> Result<AcquireSetOutcome, StoreError> {
        let count = args.locks.len();
        let mut lease_ids = Vec::with_capacity(count);
        let mut ticket_ids = Vec::with_capacity(count);
        for _ in 0..count {
            lease_ids.push(LeaseId(self.random_id()?));
            ticket_ids.push(TicketId(self.random_id()?));
        }
        let command = AcquireSet {
            locks: args.locks,
            owner: args.owner,
            ttl_ms: args.ttl_ms,
            // As for one lock: a request that waits at all queues, and withdraws if its wait
            // runs out and it does not keep its places.
            queue: args.queue || !args.wait.is_zero(),
            request_id: args.request_id,
            api_key: args.api_key,
            quota: args.quota,
            lease_ids,
            ticket_ids,
            value: args.value,
            mode: args.mode,
        };
        let (acquired, required) =
            self.transact(|shared, now| shared.core.acquire_set(command, now))?;
        let tickets = match acquired? {
            AcquiredSet::Granted(leases) => {
                self.durable(required).await?;
                return Ok(AcquireSetOutcome::Granted(leases));
            }
            AcquiredSet::Busy(holders) => {
                self.durable(required).await?;
                return Ok(AcquireSetOutcome::Busy(holders));
            }
            AcquiredSet::Queued(tickets) => tickets,
        };
        if args.wait.is_zero() {
            self.durable(required).await?;
            return Ok(AcquireSetOutcome::Queued(tickets));
        }
        // The set is granted as a whole, so parking on its first ticket parks on all of it: a
        // wait keeps every ticket of the set, and a waiter that goes away is a departure from
        // the whole set (State::waiter_left).
        let Some(first) = tickets.first().map(|queued| queued.ticket.id) else {
            return Ok(AcquireSetOutcome::Queued(tickets));
        };
        match self.park(first, args.wait, args.queue).await? {
            Parked::Busy(holders) => Ok(AcquireSetOutcome::Busy(holders)),
            Parked::Status(_) => {
                // Collect every member's status in one step: all granted, or all queued.
                let status = self
                    .run(|core, now| core.wait_set(first, None, now))
                    .await??;
                Ok(match status {
                    SetStatus::Granted(leases) => AcquireSetOutcome::Granted(leases),
                    SetStatus::Queued(tickets) => AcquireSetOutcome::Queued(tickets),
                })
            }
        }
    }

    async fn wait_ticket(&self, id: TicketId, wait: Duration) -> Result<TicketStatus, StoreError> {
        match self.park(id, wait, true).await? {
            Parked::Status(status) => Ok(status),
            // Unreachable with keep_place = true; answer as still queued would be a lie, so
            // report the truth the table gives.
            Parked::Busy(_) => self
                .run(|core, now| core.wait_ticket(id, None, now))
                .await?
                .map_err(Into::into),
        }
    }

    async fn cancel_ticket(&self, id: TicketId) -> Result<Cancelled, StoreError> {
        Ok(self
            .run(|core, now| core.cancel_ticket(id, false, now))
            .await??)
    }

    async fn cancel_tickets_of_key(&self, key_id: &str) -> Result<usize, StoreError> {
        let key_id = key_id.to_owned();
        self.run(move |core, now| core.cancel_tickets_of_key(&key_id, now))
            .await
    }

    async fn renew(
        &self,
        id: LeaseId,
        ttl_ms: Option<u64>,
        value: Option<String>,
    ) -> Result<Lease, StoreError> {
        Ok(self
            .run(|core, now| core.renew_with_value(id, ttl_ms, value, now))
            .await??)
    }

    async fn release(&self, id: LeaseId) -> Result<Released, StoreError> {
        // A release is answered without waiting for its commit, as G2 allows: if a crash takes
        // it back, recovery revives the lease with a fresh TTL and it expires (nobody renews
        // it), which delays the lock but never lets two holders in. A waiter granted by this
        // release still hears of its grant only once it is durable, and batches commit in
        // order, so the release is durable before anyone acts on it. This halves the commits
        // an acquire-release cycle waits for.
        let (released, _required) = self.transact(|shared, now| shared.core.release(id, now))?;
        Ok(released?)
    }

    async fn revoke(&self, lock: LockName, token: u64) -> Result<Lease, StoreError> {
        Ok(self
            .run(|core, now| core.revoke(&lock, token, now))
            .await??)
    }

    async fn fence(&self, lock: LockName, token: u64) -> Result<u64, StoreError> {
        Ok(self
            .run(|core, now| core.fence(&lock, token, now))
            .await??)
    }

    async fn lock(&self, name: LockName) -> Result<Option<LockView>, StoreError> {
        self.run(|core, _| core.lock(&name)).await
    }

    async fn locks(
        &self,
        after: Option<LockName>,
        limit: usize,
    ) -> Result<Vec<LockView>, StoreError> {
        self.run(|core, _| core.locks(after.as_ref(), limit)).await
    }

    async fn locks_with_prefix(
        &self,
        prefix: &str,
        after: Option<LockName>,
        limit: usize,
    ) -> Result<Vec<LockView>, StoreError> {
        let prefix = prefix.to_owned();
        self.run(move |core, _| core.locks_with_prefix(&prefix, after.as_ref(), limit))
            .await
    }

    async fn history(
        &self,
        name: LockName,
        limit: usize,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        self.run(|core, now| core.history(&name, limit, now)).await
    }

    async fn create_job(&self, args: CreateJobArgs) -> Result<JobCreated, StoreError> {
        let command = CreateJob {
            job_id: JobId(self.random_id()?),
            name: args.name,
            lock: args.lock,
            capacity: args.capacity,
            policy: args.policy,
            owner: args.owner,
            host: args.host,
            command: args.command,
            ttl_ms: args.ttl_ms,
            request_id: args.request_id,
            min_hold_ms: args.min_hold_ms,
            once_per_ms: args.once_per_ms,
            batch: args.batch,
            api_key: args.api_key,
            quota: args.quota,
            lease_id: LeaseId(self.random_id()?),
            ticket_id: TicketId(self.random_id()?),
            value: args.value,
            mode: args.mode,
        };
        let (created, required) =
            self.transact(|shared, now| shared.core.create_job(command, now))?;
        let created = created?;
        let ticket = match &created.ticket {
            Some(queued) if !args.wait.is_zero() => queued.ticket.id,
            _ => {
                self.durable(required).await?;
                return Ok(created);
            }
        };
        // A job keeps its place when the wait runs out: its runner goes on waiting.
        let _ = self.park(ticket, args.wait, true).await?;
        let job = created.job.id;
        self.run(move |core, _| {
            core.job(job)
                .cloned()
                .map(|job| core.job_view(job))
                .ok_or(JobError::NotFound)
        })
        .await?
        .map_err(StoreError::from)
    }

    async fn job_heartbeat(
        &self,
        id: JobId,
        lease: LeaseId,
        ttl_ms: Option<u64>,
    ) -> Result<(Lease, Option<StopReason>), StoreError> {
        Ok(self
            .run(|core, now| core.job_heartbeat(id, lease, ttl_ms, now))
            .await??)
    }

    async fn append_job_output(
        &self,
        id: JobId,
        lease: LeaseId,
        text: String,
        skipped_bytes: u64,
    ) -> Result<OutputAppended, StoreError> {
        Ok(self
            .run(move |core, now| core.append_job_output(id, lease, &text, skipped_bytes, now))
            .await??)
    }

    async fn cancel_job(&self, id: JobId) -> Result<(Job, CancelOutcome), StoreError> {
        Ok(self.run(|core, now| core.cancel_job(id, now)).await??)
    }

    async fn finish_job(
        &self,
        id: JobId,
        capability: JobCapability,
        report: FinishJob,
    ) -> Result<Job, StoreError> {
        Ok(self
            .run(|core, now| core.finish_job(id, capability, report, now))
            .await??)
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.run(|core, _| core.job(id).cloned()).await
    }

    async fn jobs(&self, filter: JobFilter) -> Result<Vec<Job>, StoreError> {
        self.run(|core, _| core.jobs(&filter)).await
    }

    async fn tick(&self) -> Result<(), StoreError> {
        self.run(|core, now| core.tick(now)).await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        match &self.inner.lock().failed {
            Some(reason) => Err(StoreError::Unavailable(reason.clone())),
            None => Ok(()),
        }
    }

    async fn counts(&self) -> (usize, usize, usize) {
        self.inner.lock().core.counts()
    }

    async fn put_key(&self, key: ApiKey) -> Result<(), StoreError> {
        self.with_persister(move |persister| persister.put_key(&key))
            .await
    }

    async fn keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.with_persister(|persister| persister.keys()).await
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<AuditEntry, StoreError> {
        self.with_persister(move |persister| persister.append_audit(&entry))
            .await
    }

    async fn audit(
        &self,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.with_persister(move |persister| persister.audit(before_seq, limit))
            .await
    }

    async fn lock_of_lease(&self, id: LeaseId) -> Result<Option<LockName>, StoreError> {
        Ok(self
            .inner
            .lock()
            .core
            .lease(id)
            .map(|lease| lease.lock.clone()))
    }

    async fn lock_of_ticket(&self, id: TicketId) -> Result<Option<LockName>, StoreError> {
        Ok(self.inner.lock().core.ticket_lock(id).cloned())
    }

    fn events(&self) -> Result<Arc<EventHub>, StoreError> {
        Ok(Arc::clone(&self.inner.events))
    }

    fn stats(&self) -> StoreStats {
        let now = self.inner.clock.now_ms();
        let gauges = self.inner.lock().core.gauges(now);
        StoreStats {
            locks: gauges.locks as u64,
            leases: gauges.leases as u64,
            waiters: gauges.waiters as u64,
            gauges,
            events: self.inner.events.counts(),
            commit_buckets: std::array::from_fn(|index| {
                self.inner.commit_buckets[index].load(Ordering::Relaxed)
            }),
            commits: self.inner.commits.load(Ordering::Relaxed),
            committed_changes: self.inner.committed_changes.load(Ordering::Relaxed),
            commit_micros: self.inner.commit_micros.load(Ordering::Relaxed),
            transitions: self.inner.transitions.load(Ordering::Relaxed),
        }
    }
}
