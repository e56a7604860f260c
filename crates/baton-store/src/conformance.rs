//! The conformance suite every backend passes.
//!
//! A backend (the in-memory engine, SQLite, PostgreSQL, …) implements [`Backend`] in its own
//! tests and lists every case as its own test with one line:
//!
//! ```ignore
//! baton_store::conformance_tests!(MyBackend::new());
//! ```
//!
//! or runs them all in one test with [`run_all`]. Each case is also a public function taking
//! `&dyn Backend`, so a backend may run a chosen few.
//!
//! Every case opens its own store (a distinct key) on a [`ManualClock`] that starts at
//! [`START_MS`], and moves time by hand: leases expire, lock-delays end and tickets lapse only
//! when a case advances the clock and calls [`Store::tick`]. Cases that test wake-ups and
//! contention also use real time (a task parked in a long-poll), always bounded by a generous
//! timeout so a store that fails to wake a waiter fails the case instead of hanging it; no case
//! asserts that anything is fast.
//!
//! Each case was written against the question "how could a wrong store pass this?", so most
//! assertions look at the store from a second angle too: a renewal is checked by the lease
//! surviving its first deadline, not only by the answer; a busy answer by the queue being empty
//! afterwards and the lock not being handed to the caller later; a grant order by the lock's
//! listing as well as by the grants.

// Panicking with a clear message is what this module is for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::any::Any;
use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use baton_core::{
    AcquireError, CancelOutcome, Cancelled, Config, FinishJob, HistoryRecord, Job, JobCapability,
    JobCreated, JobError, JobFilter, JobId, JobState, Lease, LeaseEnd, LeaseError, LeaseId,
    LockName, LockView, Millis, Mode, Policy, QueuedTicket, Released, StopReason, TicketEnd,
    TicketError, TicketId, TicketStatus, TokenError, limits,
};
use tokio::time::Instant;

use crate::clock::{Clock, ManualClock};
use crate::keys::{ApiKey, AuditEntry, KeyGrant, Role};
use crate::store::{
    AcquireArgs, AcquireOutcome, AcquireSetArgs, AcquireSetOutcome, CreateJobArgs, Store,
    StoreError,
};

/// What the suite needs of a backend.
///
/// Rules a backend must follow for the cases to mean anything:
/// - open every store with [`config()`]: the cases assume its lock-delay, ticket lapse and
///   retention periods;
/// - read every instant from the `clock` passed to [`Backend::open`] (expiry, lapse, lock-delay,
///   `granted_at`, history). A backend that runs its own expiry timer must run it off that clock
///   too; with a [`ManualClock`] such a timer is harmless, since it sees only the time the case
///   set, and the cases call [`Store::tick`] themselves;
/// - not keep a store alive itself: when a case drops the last `Arc` it holds, the store must shut
///   down (finishing its pending commits) so that opening the same key again is a restart.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Opens a store over the data named `key` (a fresh, empty one the first time a key is used),
    /// driven by `clock`. Opening the same key again after the previous store was dropped must see
    /// everything it made durable (a restart). Keys are short, made of `a-z 0-9 -`, and distinct
    /// for every case, so one backend value may serve a whole run ([`run_all`]). Panics if the
    /// store cannot be opened.
    async fn open(&self, key: &str, clock: Arc<ManualClock>) -> Arc<dyn Store>;

    /// True when data survives a restart (then the restart cases run).
    fn durable(&self) -> bool;
}

/// The configuration every backend opens its stores with: a lock-delay of 1 s and a ticket lapse
/// of 10 s (the cases step the clock around both), the defaults otherwise.
pub fn config() -> Config {
    Config {
        lock_delay_ms: 1_000,
        ticket_lapse_ms: 10_000,
        ..Config::default()
    }
}

/// Where every case's [`ManualClock`] starts: 2023-11-14, in milliseconds since the Unix epoch
/// (a realistic instant, so retention horizons are positive).
pub const START_MS: Millis = 1_700_000_000_000;

/// The lease time-to-live of most cases.
const TTL: u64 = 30_000;
/// A long-poll that should end by a wake-up, long before its own end.
const LONG_WAIT: Duration = Duration::from_secs(60);
/// How long a woken waiter may take before the case calls it a missed wake-up. A bound on
/// liveness, not a speed target.
const LIVENESS: Duration = Duration::from_secs(20);
/// The bound on a whole contention run.
const CONTENTION: Duration = Duration::from_secs(120);

/// Invokes `$callback` with the names of every case, after `$args`. One list serves
/// [`run_all`] and [`conformance_tests!`](crate::conformance_tests), so neither can miss a case.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_each_case {
    ([$($callback:tt)*] $($args:tt)*) => {
        $($callback)*! {
            $($args)*
            grant_renew_release
            lease_values
            read_write_locks
            lock_sets
            unknown_ids_and_bad_input
            mutex_excludes
            semaphore_capacity
            fifo_order
            try_never_jumps_the_queue
            long_poll_wakes_waiters
            wait_runs_out
            expiry_and_lock_delay
            ticket_lapse
            cancel_ticket
            departed_waiter_is_skipped_on_release
            departed_waiter_lapses_from_when_it_left
            departed_waiter_comes_back_in_time
            departed_wait_beside_a_live_wait_changes_nothing
            undelivered_grant_is_handed_on
            semaphore_lock_delay_holds_back_one_slot
            cancel_tickets_of_key
            idempotency
            fencing
            revoke
            history
            listings
            restart_keeps_state
            restart_keeps_lock_delay
            concurrent_mutex
            concurrent_semaphore
            concurrent_tries
            job_lifecycle
            job_waits_then_runs
            job_skip_on_busy
            job_coalesce
            job_replace
            job_output_and_cancel
            restart_keeps_jobs
            keys_put_replace_list
            audit_log_order_and_paging
            lock_of_lease_and_ticket
            restart_keeps_keys_and_audit
        }
    };
}

/// Writes one `#[tokio::test]` per conformance case for a backend:
///
/// ```ignore
/// baton_store::conformance_tests!(MyBackend::new());
/// ```
///
/// The expression is evaluated afresh in every test and must give a value whose type implements
/// [`conformance::Backend`](crate::conformance::Backend). The tests run on tokio's multi-thread
/// runtime, so the calling crate needs `tokio` with the `macros` and `rt-multi-thread` features
/// (the workspace's `tokio` has both) among its dev-dependencies.
#[macro_export]
macro_rules! conformance_tests {
    ($backend:expr $(,)?) => {
        $crate::__conformance_each_case!([$crate::conformance_tests] @tests ($backend));
    };
    (@tests ($backend:expr) $($case:ident)*) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let backend = $backend;
                $crate::conformance::$case(&backend).await;
            }
        )*
    };
}

macro_rules! run_cases {
    (@run ($backend:expr) $($case:ident)*) => {
        $( run_case(stringify!($case), $case($backend)).await; )*
    };
}

/// Runs every case; panics with the case name on the first failure.
pub async fn run_all(backend: &dyn Backend) {
    crate::__conformance_each_case!([run_cases] @run (backend));
}

async fn run_case(name: &str, case: impl Future<Output = ()>) {
    if let Err(payload) = CatchUnwind(Box::pin(case)).await {
        panic!(
            "conformance case `{name}` failed: {}",
            panic_message(payload.as_ref())
        );
    }
}

/// A future that turns a panic while polling into an error, so [`run_all`] can name the case.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn name(text: &str) -> LockName {
    LockName::new(text).unwrap_or_else(|error| panic!("bad lock name {text:?}: {error}"))
}

/// A try: no wait, no queue, the suite's ttl.
fn req(lock: &str, owner: &str) -> AcquireArgs {
    AcquireArgs {
        mode: Mode::Exclusive,
        value: None,
        quota: Default::default(),
        api_key: None,
        lock: name(lock),
        owner: owner.to_owned(),
        owner_key: None,
        ttl_ms: TTL,
        capacity: None,
        wait: Duration::ZERO,
        queue: false,
        request_id: None,
    }
}

fn tokens(leases: &[Lease]) -> Vec<u64> {
    leases.iter().map(|lease| lease.token).collect()
}

fn holder_owners(view: &LockView) -> Vec<&str> {
    view.holders
        .iter()
        .map(|lease| lease.owner.as_str())
        .collect()
}

fn waiter_owners(view: &LockView) -> Vec<&str> {
    view.waiters
        .iter()
        .map(|ticket| ticket.owner.as_str())
        .collect()
}

fn assert_increasing(what: &str, tokens: &[u64]) {
    for pair in tokens.windows(2) {
        assert!(
            pair[0] < pair[1],
            "{what}: tokens must strictly increase, got {tokens:?}"
        );
    }
}

/// Awaits `future`, failing the case if it takes longer than `bound`.
async fn within<F: Future>(bound: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(bound, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: not done within {bound:?} (a waiter that was never woken?)"),
    }
}

/// A spawned task, aborted if the case ends (or fails) without joining it.
struct Spawned<T>(tokio::task::JoinHandle<T>);

impl<T: Send + 'static> Spawned<T> {
    fn new(future: impl Future<Output = T> + Send + 'static) -> Spawned<T> {
        Spawned(tokio::spawn(future))
    }

    fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    /// Joins the task within [`LIVENESS`], passing its panic on.
    async fn join(mut self, what: &str) -> T {
        match within(LIVENESS, what, &mut self.0).await {
            Ok(value) => value,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => panic!("{what}: the task did not finish: {error}"),
        }
    }
}

impl<T> Drop for Spawned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One case's store and clock.
struct Case {
    key: &'static str,
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
}

impl Case {
    async fn open(backend: &dyn Backend, key: &'static str) -> Case {
        let clock = Arc::new(ManualClock::new(START_MS));
        let store = backend.open(key, Arc::clone(&clock)).await;
        let case = Case { key, store, clock };
        case.check_clock();
        assert!(
            !case.store.kind().is_empty(),
            "{key}: a store names its kind"
        );
        assert_eq!(
            case.store.ready().await,
            Ok(()),
            "{key}: a fresh store takes writes"
        );
        case
    }

    /// Reopens the same key (a restart); the caller has dropped every other handle.
    async fn reopen(self, backend: &dyn Backend) -> Case {
        let Case { key, store, clock } = self;
        assert_eq!(
            Arc::strong_count(&store),
            1,
            "{key}: the case still holds another handle to the store it restarts"
        );
        drop(store);
        let store = backend.open(key, Arc::clone(&clock)).await;
        let case = Case { key, store, clock };
        case.check_clock();
        case
    }

    fn check_clock(&self) {
        assert_eq!(
            self.store.now_ms(),
            self.clock.now_ms(),
            "{}: the store must read time from the clock it was opened with",
            self.key
        );
    }

    fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    fn advance(&self, ms: u64) {
        self.clock.advance(ms);
    }

    fn advance_to(&self, at: Millis) {
        let now = self.now();
        assert!(
            at >= now,
            "{}: the clock never goes back ({at} < {now})",
            self.key
        );
        self.clock.advance(at - now);
    }

    async fn tick(&self) {
        self.store
            .tick()
            .await
            .unwrap_or_else(|error| panic!("{}: tick: {error}", self.key));
    }

    async fn acquire(&self, args: AcquireArgs) -> Result<AcquireOutcome, StoreError> {
        self.store.acquire(args).await
    }

    async fn grant(&self, args: AcquireArgs) -> Lease {
        let what = format!("{}: acquire of {} by {}", self.key, args.lock, args.owner);
        match self.store.acquire(args).await {
            Ok(AcquireOutcome::Granted(lease)) => lease,
            other => panic!("{what}: expected a grant, got {other:?}"),
        }
    }

    /// Queues (queue: true, wait 0) and expects a ticket.
    async fn enqueue(&self, args: AcquireArgs) -> QueuedTicket {
        let what = format!(
            "{}: queued acquire of {} by {}",
            self.key, args.lock, args.owner
        );
        let args = AcquireArgs {
            queue: true,
            wait: Duration::ZERO,
            ..args
        };
        match self.store.acquire(args).await {
            Ok(AcquireOutcome::Queued(queued)) => queued,
            other => panic!("{what}: expected a ticket, got {other:?}"),
        }
    }

    async fn busy(&self, args: AcquireArgs) -> Vec<Lease> {
        let what = format!("{}: acquire of {} by {}", self.key, args.lock, args.owner);
        match self.store.acquire(args).await {
            Ok(AcquireOutcome::Busy(holders)) => holders,
            other => panic!("{what}: expected busy, got {other:?}"),
        }
    }

    async fn view(&self, lock: &str) -> LockView {
        match self.store.lock(name(lock)).await {
            Ok(Some(view)) => view,
            other => panic!(
                "{}: lock {lock}: expected a listing, got {other:?}",
                self.key
            ),
        }
    }

    /// A ticket's status without waiting. (This counts as waiting on it: it restarts its lapse.)
    async fn status(&self, ticket: TicketId) -> Result<TicketStatus, StoreError> {
        self.store.wait_ticket(ticket, Duration::ZERO).await
    }

    async fn granted(&self, ticket: TicketId) -> Lease {
        match self.status(ticket).await {
            Ok(TicketStatus::Granted(lease)) => {
                assert_eq!(
                    lease.ticket,
                    Some(ticket),
                    "{}: a lease names its ticket",
                    self.key
                );
                lease
            }
            other => panic!("{}: expected the ticket granted, got {other:?}", self.key),
        }
    }

    async fn position(&self, ticket: TicketId) -> u64 {
        match self.status(ticket).await {
            Ok(TicketStatus::Queued(queued)) => queued.position,
            other => panic!("{}: expected the ticket queued, got {other:?}", self.key),
        }
    }

    async fn release(&self, lease: &Lease) {
        assert_eq!(
            self.store.release(lease.id).await,
            Ok(Released::Released),
            "{}: release of {} (token {})",
            self.key,
            lease.owner,
            lease.token
        );
    }

    async fn history(&self, lock: &str, limit: usize) -> Vec<HistoryRecord> {
        self.store
            .history(name(lock), limit)
            .await
            .unwrap_or_else(|error| panic!("{}: history of {lock}: {error}", self.key))
    }

    /// Waits (real time, bounded) until `lock` has `count` waiters; returns the listing.
    async fn wait_for_waiters(&self, lock: &str, count: usize) -> LockView {
        within(
            LIVENESS,
            &format!("{}: {count} waiters on {lock}", self.key),
            async {
                loop {
                    if let Ok(Some(view)) = self.store.lock(name(lock)).await
                        && view.waiters.len() == count
                    {
                        return view;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            },
        )
        .await
    }

    /// Gives a task that was just told to park on `ticket` for [`LONG_WAIT`] time to get there,
    /// so the case tests the wake-up rather than a wait that began after the event. A parked
    /// wait keeps its ticket from lapsing; for stores that show it as a later `lapse_at` this
    /// returns as soon as it shows, otherwise after a second.
    async fn let_park(&self, lock: &str, ticket: TicketId) {
        let horizon = self.now() + config().ticket_lapse_ms + LONG_WAIT.as_millis() as u64 / 2;
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if let Ok(Some(view)) = self.store.lock(name(lock)).await
                && view
                    .waiters
                    .iter()
                    .any(|t| t.id == ticket && t.lapse_at >= horizon)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // A little longer, for the task to be inside its wait.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Cases

/// A grant's fields; renewal extends a lease to now + ttl (also in the store: the lease outlives
/// its first deadline) and never shortens it; release, release again (`AlreadyEnded`), renew
/// after release (`Ended(Released)`); a released lock is free at once with a newer token.
pub async fn grant_renew_release(backend: &dyn Backend) {
    let c = Case::open(backend, "grant-renew-release").await;
    let t0 = c.now();
    let a = c.grant(req("basics", "alice")).await;
    assert_eq!(a.lock, name("basics"));
    assert_eq!(a.owner, "alice");
    assert_eq!(a.owner_key, None);
    assert_eq!(a.ttl_ms, TTL);
    assert_eq!(a.granted_at, t0, "granted_at is the store's now");
    assert_eq!(a.expires_at, t0 + TTL, "a grant lasts ttl");
    assert!(a.token > 0, "tokens start above 0 (0 means none)");
    assert_eq!(a.ticket, None, "granted without queueing");
    let view = c.view("basics").await;
    assert_eq!(view.capacity, 1, "a new lock is a mutex");
    assert_eq!(view.holders, vec![a.clone()]);
    assert!(view.waiters.is_empty());

    c.advance(5_000);
    let renewed = c
        .store
        .renew(a.id, None, None)
        .await
        .expect("renew a live lease");
    assert_eq!(
        renewed.expires_at,
        c.now() + TTL,
        "renew extends to now + ttl"
    );
    assert_eq!(
        (
            renewed.id,
            renewed.token,
            renewed.granted_at,
            renewed.ttl_ms
        ),
        (a.id, a.token, a.granted_at, TTL),
        "renew keeps the lease's identity"
    );
    // The renewal took effect in the store, not only in the answer.
    c.advance_to(a.expires_at + 1);
    c.tick().await;
    let view = c.view("basics").await;
    assert_eq!(
        tokens(&view.holders),
        [a.token],
        "a renewed lease outlives its first deadline"
    );
    assert_eq!(view.holders[0].expires_at, renewed.expires_at);

    let longer = c
        .store
        .renew(a.id, Some(2 * TTL), None)
        .await
        .expect("renew with a new ttl");
    assert_eq!(longer.ttl_ms, 2 * TTL);
    assert_eq!(
        longer.expires_at,
        c.now() + 2 * TTL,
        "renew extends to now + the new ttl"
    );
    let shorter = c
        .store
        .renew(a.id, Some(limits::TTL_MS_MIN), None)
        .await
        .expect("renew shorter");
    assert!(
        shorter.expires_at >= longer.expires_at,
        "a renewal never shortens a deadline already promised"
    );
    assert_eq!(
        c.store.renew(a.id, Some(1), None).await,
        Err(StoreError::Lease(LeaseError::InvalidTtl)),
        "renew with a ttl out of bounds"
    );
    assert_eq!(
        c.view("basics").await.holders[0].expires_at,
        shorter.expires_at,
        "a refused renewal changes nothing"
    );

    c.release(&a).await;
    let view = c.view("basics").await;
    assert!(
        view.holders.is_empty(),
        "a released lease is gone from the listing"
    );
    assert_eq!(
        view.delayed_until, None,
        "a clean release starts no lock-delay"
    );
    assert_eq!(
        c.store.renew(a.id, None, None).await,
        Err(StoreError::Lease(LeaseError::Ended(LeaseEnd::Released))),
        "renew after release"
    );
    assert_eq!(
        c.store.release(a.id).await,
        Ok(Released::AlreadyEnded(LeaseEnd::Released)),
        "release twice"
    );
    let b = c.grant(req("basics", "bob")).await;
    assert!(b.token > a.token, "a later grant has a greater token");
    assert_ne!(b.id, a.id, "every lease has its own id");
    let (_, leases, tickets) = c.store.counts().await;
    assert_eq!(
        (leases, tickets),
        (1, 0),
        "counts: one live lease, no tickets"
    );
}

/// Ids nobody was given are `NotFound` (and a long wait on one answers at once); requests out of
/// bounds are refused and change nothing.
pub async fn unknown_ids_and_bad_input(backend: &dyn Backend) {
    let c = Case::open(backend, "unknown-ids").await;
    let lease = LeaseId([0x5a; 16]);
    let ticket = TicketId([0x5a; 16]);
    assert_eq!(
        c.store.fence(name("nowhere"), 1).await,
        Err(StoreError::Token(TokenError::Unknown))
    );
    assert_eq!(
        c.store.renew(lease, None, None).await,
        Err(StoreError::Lease(LeaseError::NotFound))
    );
    assert_eq!(
        c.store.release(lease).await,
        Err(StoreError::Lease(LeaseError::NotFound))
    );
    assert_eq!(
        c.status(ticket).await,
        Err(StoreError::Ticket(TicketError::NotFound))
    );
    let long = within(
        LIVENESS,
        "a long wait on an unknown ticket",
        c.store.wait_ticket(ticket, LONG_WAIT),
    );
    assert_eq!(long.await, Err(StoreError::Ticket(TicketError::NotFound)));
    assert_eq!(
        c.store.cancel_ticket(ticket).await,
        Err(StoreError::Ticket(TicketError::NotFound))
    );
    assert_eq!(c.store.lock(name("nowhere")).await, Ok(None));
    assert_eq!(c.store.history(name("nowhere"), 10).await, Ok(vec![]));
    assert_eq!(
        c.store.revoke(name("nowhere"), 1).await,
        Err(StoreError::Token(TokenError::LockNotFound))
    );

    for (ttl_ms, capacity, error) in [
        (0, None, AcquireError::InvalidTtl),
        (limits::TTL_MS_MIN - 1, None, AcquireError::InvalidTtl),
        (limits::TTL_MS_MAX + 1, None, AcquireError::InvalidTtl),
        (TTL, Some(0), AcquireError::InvalidCapacity),
        (
            TTL,
            Some(limits::CAPACITY_MAX + 1),
            AcquireError::InvalidCapacity,
        ),
    ] {
        let args = AcquireArgs {
            ttl_ms,
            capacity,
            queue: true,
            ..req("bad-input", "mallory")
        };
        assert_eq!(
            c.acquire(args).await,
            Err(StoreError::Acquire(error.clone())),
            "ttl {ttl_ms}, capacity {capacity:?}"
        );
    }
    assert_eq!(
        c.store.lock(name("bad-input")).await,
        Ok(None),
        "a refused acquire creates no lock"
    );
    let (_, leases, tickets) = c.store.counts().await;
    assert_eq!(
        (leases, tickets),
        (0, 0),
        "a refused acquire leaves no lease or ticket"
    );

    // The bounds themselves are accepted.
    let low = c
        .grant(AcquireArgs {
            ttl_ms: limits::TTL_MS_MIN,
            ..req("bounds-low", "o")
        })
        .await;
    assert_eq!(low.expires_at, c.now() + limits::TTL_MS_MIN);
    let high = c
        .grant(AcquireArgs {
            ttl_ms: limits::TTL_MS_MAX,
            capacity: Some(limits::CAPACITY_MAX),
            ..req("bounds-high", "o")
        })
        .await;
    assert_eq!(high.expires_at, c.now() + limits::TTL_MS_MAX);
    assert_eq!(
        c.store
            .revoke(name("bounds-high"), high.token + 1_000)
            .await,
        Err(StoreError::Token(TokenError::HolderNotFound)),
        "revoke of a token no holder has"
    );
    assert_eq!(
        tokens(&c.view("bounds-high").await.holders),
        [high.token],
        "and it revoked nothing"
    );
}

/// A mutex grants one holder; others are told busy with the holder listed, and a busy try leaves
/// nothing behind; locks are independent.
pub async fn mutex_excludes(backend: &dyn Backend) {
    let c = Case::open(backend, "mutex-excludes").await;
    let a = c.grant(req("mutex", "alice")).await;
    let holders = c.busy(req("mutex", "bob")).await;
    assert_eq!(holders, vec![a.clone()], "busy lists the holder");
    let keyed = AcquireArgs {
        owner_key: Some("bob-key".into()),
        ..req("mutex", "bob")
    };
    assert_eq!(
        tokens(&c.busy(keyed).await),
        [a.token],
        "another owner key is another owner"
    );
    let explicit = AcquireArgs {
        capacity: Some(1),
        ..req("mutex", "carol")
    };
    assert_eq!(tokens(&c.busy(explicit).await), [a.token]);
    let view = c.view("mutex").await;
    assert_eq!(tokens(&view.holders), [a.token]);
    assert!(view.waiters.is_empty(), "a try does not queue");

    let other = c.grant(req("mutex-other", "bob")).await;
    assert!(other.token > a.token);
    assert_eq!(
        tokens(&c.view("mutex").await.holders),
        [a.token],
        "other locks are independent"
    );

    c.release(&a).await;
    let b = c.grant(req("mutex", "bob")).await;
    assert_eq!(tokens(&c.busy(req("mutex", "alice")).await), [b.token]);
}

/// A semaphore of capacity 3 grants exactly 3 then is busy (all holders listed, oldest grant
/// first); another capacity is refused while it is in use and allowed once it is idle; a
/// release grants the head of the queue, and only it.
pub async fn semaphore_capacity(backend: &dyn Backend) {
    let c = Case::open(backend, "semaphore").await;
    let sem = |owner: &str| AcquireArgs {
        capacity: Some(3),
        ..req("sem", owner)
    };
    let mut held = Vec::new();
    for owner in ["s0", "s1", "s2"] {
        held.push(c.grant(sem(owner)).await);
    }
    assert_increasing("semaphore grants", &tokens(&held));
    let holders = c.busy(sem("s3")).await;
    assert_eq!(
        tokens(&holders),
        tokens(&held),
        "busy lists every holder, oldest first"
    );
    assert_eq!(
        tokens(&c.busy(req("sem", "s3")).await),
        tokens(&held),
        "no capacity: the lock's"
    );
    for capacity in [5, 1] {
        let args = AcquireArgs {
            capacity: Some(capacity),
            ..req("sem", "s3")
        };
        assert_eq!(
            c.acquire(args).await,
            Err(StoreError::Acquire(AcquireError::CapacityConflict {
                current: 3
            })),
            "capacity {capacity} while in use with 3"
        );
    }
    let view = c.view("sem").await;
    assert_eq!(view.capacity, 3);
    assert_eq!(holder_owners(&view), ["s0", "s1", "s2"]);
    assert!(view.waiters.is_empty());

    let w1 = c.enqueue(req("sem", "w1")).await;
    let w2 = c.enqueue(sem("w2")).await;
    assert_eq!((w1.position, w2.position), (1, 2));
    c.release(&held[1]).await;
    let g1 = c.granted(w1.ticket.id).await;
    assert_eq!(
        c.position(w2.ticket.id).await,
        1,
        "only the head is granted"
    );
    let view = c.view("sem").await;
    assert_eq!(
        holder_owners(&view),
        ["s0", "s2", "w1"],
        "holders, oldest grant first"
    );
    assert_eq!(waiter_owners(&view), ["w2"]);

    c.release(&held[0]).await;
    let g2 = c.granted(w2.ticket.id).await;
    for lease in [&held[2], &g1, &g2] {
        c.release(lease).await;
    }
    // Idle: the capacity may change.
    let wide = |owner: &str| AcquireArgs {
        capacity: Some(5),
        ..req("sem", owner)
    };
    let mut held = Vec::new();
    for owner in ["t0", "t1", "t2", "t3", "t4"] {
        held.push(c.grant(wide(owner)).await);
    }
    assert_eq!(
        c.view("sem").await.capacity,
        5,
        "an idle lock takes a new capacity"
    );
    assert_eq!(tokens(&c.busy(wide("t5")).await), tokens(&held));
}

/// FIFO (G4): ten tickets are granted in arrival order as holders release, each at the head
/// with the others' positions moving up; and ten waiters parked in long-polls, each arriving
/// after the previous one queued, are granted in that order.
pub async fn fifo_order(backend: &dyn Backend) {
    let c = Case::open(backend, "fifo").await;
    let holder = c.grant(req("fifo", "holder")).await;
    let mut tickets = Vec::new();
    for i in 0..10u64 {
        let queued = c.enqueue(req("fifo", &format!("w{i}"))).await;
        assert_eq!(queued.position, i + 1, "a new ticket goes to the back");
        assert_eq!(queued.ticket.owner, format!("w{i}"));
        tickets.push(queued.ticket.id);
    }
    let expected: Vec<String> = (0..10).map(|i| format!("w{i}")).collect();
    assert_eq!(
        waiter_owners(&c.view("fifo").await),
        expected,
        "waiters listed head first"
    );
    c.release(&holder).await;
    let mut last = holder.token;
    for i in 0..10 {
        let lease = c.granted(tickets[i]).await;
        assert_eq!(lease.owner, format!("w{i}"), "granted in arrival order");
        assert!(lease.token > last);
        last = lease.token;
        let view = c.view("fifo").await;
        assert_eq!(tokens(&view.holders), [lease.token]);
        assert_eq!(waiter_owners(&view), expected[i + 1..]);
        for (j, ticket) in tickets.iter().enumerate().skip(i + 1) {
            assert_eq!(
                c.position(*ticket).await,
                (j - i) as u64,
                "positions move up"
            );
        }
        c.release(&lease).await;
    }

    // Parked waiters.
    let holder = c.grant(req("fifo-parked", "holder")).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..10usize {
        let store = Arc::clone(&c.store);
        let order = Arc::clone(&order);
        tasks.push(Spawned::new(async move {
            let args = AcquireArgs {
                wait: LONG_WAIT,
                ..req("fifo-parked", &format!("p{i}"))
            };
            let lease = match store.acquire(args).await {
                Ok(AcquireOutcome::Granted(lease)) => lease,
                other => panic!("parked waiter p{i}: expected a grant, got {other:?}"),
            };
            order.lock().unwrap().push(i);
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert_eq!(store.release(lease.id).await, Ok(Released::Released));
        }));
        c.wait_for_waiters("fifo-parked", i + 1).await;
    }
    c.release(&holder).await;
    for (i, task) in tasks.into_iter().enumerate() {
        task.join(&format!("parked waiter p{i}")).await;
    }
    assert_eq!(
        *order.lock().unwrap(),
        (0..10).collect::<Vec<_>>(),
        "parked waiters in order"
    );
}

/// G4: during a lock-delay the lock has room but grants nothing, and a try is busy; when the
/// delay ends the head of the queue is granted, not a later arrival.
pub async fn try_never_jumps_the_queue(backend: &dyn Backend) {
    let c = Case::open(backend, "try-never-jumps").await;
    let delay = config().lock_delay_ms;
    for (lock, capacity) in [("jump-mutex", 1u32), ("jump-sem", 2)] {
        let args = |owner: &str| AcquireArgs {
            capacity: Some(capacity),
            ..req(lock, owner)
        };
        let mut held = Vec::new();
        for i in 0..capacity {
            held.push(c.grant(args(&format!("h{i}"))).await);
        }
        let head = c.enqueue(args("head")).await;
        c.store
            .revoke(name(lock), held[0].token)
            .await
            .expect("revoke a holder");
        let revoked_at = c.now();
        let view = c.view(lock).await;
        assert_eq!(
            view.holders.len() as u32,
            capacity - 1,
            "{lock}: room for one"
        );
        assert_eq!(waiter_owners(&view), ["head"]);
        let holders = c.busy(args("jumper")).await;
        assert_eq!(
            holders.len() as u32,
            capacity - 1,
            "{lock}: a try never jumps the queue"
        );
        let behind = c.enqueue(args("behind")).await;
        assert_eq!(
            behind.position, 2,
            "{lock}: a later arrival queues behind the head"
        );
        c.advance_to(revoked_at + delay + 1);
        c.tick().await;
        let lease = c.granted(head.ticket.id).await;
        assert_eq!(lease.owner, "head");
        let view = c.view(lock).await;
        assert_eq!(view.holders.len() as u32, capacity, "{lock}: full again");
        assert_eq!(
            waiter_owners(&view),
            ["behind"],
            "{lock}: the later arrival still waits"
        );
        assert_eq!(tokens(&c.busy(args("jumper")).await), tokens(&view.holders));
    }
}

/// Revoking an API key cancels its queued tickets, parked or not, and no other key's: a parked
/// acquire of the key answers at once without a lease. How could a wrong store pass this? By
/// cancelling only tickets it happens to hold in memory, or every ticket of the lock.
pub async fn cancel_tickets_of_key(backend: &dyn Backend) {
    let c = Case::open(backend, "tickets-of-key").await;
    let holder = c.grant(req("revoked-key", "holder")).await;
    let keyed = |owner: &str, key: &str| AcquireArgs {
        api_key: Some(key.to_owned()),
        queue: true,
        ..req("revoked-key", owner)
    };
    let store = Arc::clone(&c.store);
    let parked_args = AcquireArgs {
        wait: LONG_WAIT,
        ..keyed("parked", "key_00000000000000aa")
    };
    let parked = Spawned::new(async move { store.acquire(parked_args).await });
    let ticket = c.wait_for_waiters("revoked-key", 1).await.waiters[0].id;
    c.let_park("revoked-key", ticket).await;
    let queued = c
        .store
        .acquire(keyed("queued", "key_00000000000000aa"))
        .await;
    assert!(
        matches!(queued, Ok(AcquireOutcome::Queued(_))),
        "queued: {queued:?}"
    );
    let other = c
        .store
        .acquire(keyed("other", "key_00000000000000bb"))
        .await;
    assert!(
        matches!(other, Ok(AcquireOutcome::Queued(_))),
        "other: {other:?}"
    );
    c.wait_for_waiters("revoked-key", 3).await;
    let cancelled = c
        .store
        .cancel_tickets_of_key("key_00000000000000aa")
        .await
        .unwrap_or_else(|error| panic!("cancel_tickets_of_key: {error}"));
    assert_eq!(cancelled, 2, "both tickets of the key, and only those");
    match parked.join("a parked acquire of a revoked key").await {
        Err(StoreError::Acquire(AcquireError::TicketEnded(TicketEnd::Cancelled)))
        | Err(StoreError::Ticket(TicketError::Cancelled)) => {}
        other => panic!("a parked acquire of a revoked key: expected cancelled, got {other:?}"),
    }
    let view = c
        .store
        .lock(name("revoked-key"))
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("the lock is gone"));
    let owners: Vec<&str> = view.waiters.iter().map(|w| w.owner.as_str()).collect();
    assert_eq!(owners, ["other"], "the other key's ticket stays queued");
    c.release(&holder).await;
    assert_eq!(
        c.store
            .cancel_tickets_of_key("key_00000000000000aa")
            .await
            .ok(),
        Some(0)
    );
}

/// G5: a task parked in `acquire` (60 s wait) is granted when the holder releases, and one parked
/// in `wait_ticket` likewise; one is granted when an expired lease's lock-delay ends (by tick),
/// not before; and a parked `wait_ticket` hears of its ticket's cancellation. Each within 20 s.
pub async fn long_poll_wakes_waiters(backend: &dyn Backend) {
    let c = Case::open(backend, "long-poll").await;
    let holder = c.grant(req("poll", "holder")).await;

    // A parked acquire, woken by a release.
    let store = Arc::clone(&c.store);
    let parked = Spawned::new(async move {
        store
            .acquire(AcquireArgs {
                wait: LONG_WAIT,
                ..req("poll", "parked")
            })
            .await
    });
    let ticket = c.wait_for_waiters("poll", 1).await.waiters[0].id;
    c.let_park("poll", ticket).await;
    assert!(
        !parked.is_finished(),
        "an acquire with a wait waits while the lock is held"
    );
    c.release(&holder).await;
    let first = match parked.join("a parked acquire after the release").await {
        Ok(AcquireOutcome::Granted(lease)) => lease,
        other => panic!("a parked acquire: expected a grant, got {other:?}"),
    };
    assert_eq!(first.owner, "parked");
    assert!(first.token > holder.token);
    assert_eq!(tokens(&c.view("poll").await.holders), [first.token]);

    // A parked wait_ticket, woken by a release.
    let queued = c.enqueue(req("poll", "ticketed")).await;
    let store = Arc::clone(&c.store);
    let id = queued.ticket.id;
    let waiting = Spawned::new(async move { store.wait_ticket(id, LONG_WAIT).await });
    c.let_park("poll", id).await;
    assert!(
        !waiting.is_finished(),
        "wait_ticket waits while the ticket is queued"
    );
    c.release(&first).await;
    let second = match waiting.join("a parked wait_ticket after the release").await {
        Ok(TicketStatus::Granted(lease)) => lease,
        other => panic!("a parked wait_ticket: expected a grant, got {other:?}"),
    };
    assert_eq!(
        (second.owner.as_str(), second.ticket),
        ("ticketed", Some(id))
    );

    // A parked acquire, woken when the lock-delay after an expiry ends.
    let store = Arc::clone(&c.store);
    let parked = Spawned::new(async move {
        store
            .acquire(AcquireArgs {
                wait: LONG_WAIT,
                ..req("poll", "after-expiry")
            })
            .await
    });
    let ticket = c.wait_for_waiters("poll", 1).await.waiters[0].id;
    c.let_park("poll", ticket).await;
    c.advance_to(second.expires_at + 1);
    let expired_at = c.now();
    c.tick().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!parked.is_finished(), "not granted during the lock-delay");
    assert!(
        c.view("poll").await.holders.is_empty(),
        "the expired lease is gone"
    );
    c.advance_to(expired_at + config().lock_delay_ms + 1);
    c.tick().await;
    match parked
        .join("a parked acquire after an expiry and its lock-delay")
        .await
    {
        Ok(AcquireOutcome::Granted(lease)) => assert_eq!(lease.owner, "after-expiry"),
        other => panic!("a parked acquire after an expiry: expected a grant, got {other:?}"),
    }

    // A parked wait_ticket hears of its cancellation.
    let queued = c.enqueue(req("poll", "cancelled")).await;
    let store = Arc::clone(&c.store);
    let id = queued.ticket.id;
    let waiting = Spawned::new(async move { store.wait_ticket(id, LONG_WAIT).await });
    c.let_park("poll", id).await;
    assert_eq!(c.store.cancel_ticket(id).await, Ok(Cancelled::Cancelled));
    assert_eq!(
        waiting.join("a parked wait_ticket after a cancel").await,
        Err(StoreError::Ticket(TicketError::Cancelled))
    );
}

/// An acquire that waits without keeping its place (`queue: false`) and runs out: it did wait,
/// it is busy, its ticket is gone (and is not granted later), and a retry with the same request
/// id tries afresh. With `queue: true` the ticket stays.
pub async fn wait_runs_out(backend: &dyn Backend) {
    let c = Case::open(backend, "wait-runs-out").await;
    let holder = c.grant(req("runs-out", "holder")).await;
    let wait = Duration::from_millis(300);
    let impatient = AcquireArgs {
        wait,
        request_id: Some("runs-out-1".into()),
        ..req("runs-out", "impatient")
    };
    let started = Instant::now();
    let holders = c.busy(impatient.clone()).await;
    assert!(
        started.elapsed() >= wait / 2,
        "busy only after waiting ({:?})",
        started.elapsed()
    );
    assert_eq!(tokens(&holders), [holder.token], "busy lists the holder");
    let view = c.view("runs-out").await;
    assert!(
        view.waiters.is_empty(),
        "a wait that ran out without queue leaves the queue"
    );
    assert_eq!(c.store.counts().await.2, 0, "no ticket left");

    let retry = AcquireArgs {
        wait: Duration::ZERO,
        ..impatient.clone()
    };
    assert_eq!(
        tokens(&c.busy(retry.clone()).await),
        [holder.token],
        "a retry tries afresh"
    );

    let patient = AcquireArgs {
        wait: Duration::from_millis(100),
        queue: true,
        ..req("runs-out", "patient")
    };
    let queued = match c.acquire(patient).await {
        Ok(AcquireOutcome::Queued(queued)) => queued,
        other => panic!("a wait with queue: true that runs out: expected a ticket, got {other:?}"),
    };
    assert_eq!(queued.position, 1);
    assert_eq!(
        waiter_owners(&c.view("runs-out").await),
        ["patient"],
        "it keeps its place"
    );

    c.release(&holder).await;
    let view = c.view("runs-out").await;
    assert_eq!(
        holder_owners(&view),
        ["patient"],
        "the lock goes to the queue, not the impatient"
    );
    c.release(&c.granted(queued.ticket.id).await).await;
    assert!(c.view("runs-out").await.holders.is_empty());

    let lease = c.grant(retry.clone()).await;
    assert_eq!(
        lease.owner, "impatient",
        "the same request id, tried afresh, is granted"
    );
    assert_eq!(lease.request_id.as_deref(), Some("runs-out-1"));
    let again = c.grant(retry).await;
    assert_eq!(
        (again.id, again.token),
        (lease.id, lease.token),
        "and its retries get that lease"
    );
}

/// Expiry: not a millisecond early; after it the lease is gone, history says expired, renew says
/// `Ended(Expired)`; the next waiter (and a try) waits out the lock-delay, then the waiter is
/// granted. A clean release hands on at once. A lock-delay applies with an empty queue too.
pub async fn expiry_and_lock_delay(backend: &dyn Backend) {
    let c = Case::open(backend, "expiry").await;
    let delay = config().lock_delay_ms;
    let ttl = 5_000;
    let a = c
        .grant(AcquireArgs {
            ttl_ms: ttl,
            ..req("expiry", "alice")
        })
        .await;
    let waiter = c.enqueue(req("expiry", "waiter")).await;
    c.advance_to(a.expires_at - 1);
    c.tick().await;
    assert_eq!(
        tokens(&c.view("expiry").await.holders),
        [a.token],
        "no expiry before expires_at"
    );

    c.advance_to(a.expires_at + 1);
    let expired_at = c.now();
    c.tick().await;
    let view = c.view("expiry").await;
    assert!(view.holders.is_empty(), "an expired lease is gone");
    assert_eq!(
        waiter_owners(&view),
        ["waiter"],
        "the waiter waits out the lock-delay"
    );
    assert!(
        view.delayed_until.is_some_and(|until| until > expired_at),
        "a lock-delay is listed"
    );
    let record = &c.history("expiry", 10).await[0];
    assert_eq!(
        (record.owner.as_str(), record.token, record.end),
        ("alice", a.token, LeaseEnd::Expired)
    );
    assert_eq!(record.granted_at, a.granted_at);
    assert!(
        (a.expires_at..=expired_at).contains(&record.ended_at),
        "ended at its expiry"
    );
    assert_eq!(
        c.store.renew(a.id, None, None).await,
        Err(StoreError::Lease(LeaseError::Ended(LeaseEnd::Expired)))
    );
    assert_eq!(
        c.store.release(a.id).await,
        Ok(Released::AlreadyEnded(LeaseEnd::Expired))
    );
    assert!(
        c.busy(req("expiry", "eager")).await.is_empty(),
        "a try is busy during the delay"
    );
    assert_eq!(c.position(waiter.ticket.id).await, 1);

    c.advance_to(a.expires_at + delay - 1);
    c.tick().await;
    let view = c.view("expiry").await;
    assert!(
        view.holders.is_empty(),
        "nothing granted before the lock-delay ends"
    );
    assert_eq!(waiter_owners(&view), ["waiter"]);

    c.advance_to(expired_at + delay + 1);
    c.tick().await;
    let lease = c.granted(waiter.ticket.id).await;
    assert_eq!(lease.granted_at, c.now());
    assert!(lease.token > a.token);
    assert_eq!(holder_owners(&c.view("expiry").await), ["waiter"]);

    // A clean release hands on at once: no advance, no tick.
    let next = c.enqueue(req("expiry", "next")).await;
    c.release(&lease).await;
    let view = c.view("expiry").await;
    assert_eq!(
        holder_owners(&view),
        ["next"],
        "a clean release grants the next waiter at once"
    );
    assert_eq!(view.delayed_until, None);
    assert_eq!(c.granted(next.ticket.id).await.granted_at, c.now());

    // A lock-delay with nobody waiting still keeps tries out.
    let b = c
        .grant(AcquireArgs {
            ttl_ms: ttl,
            ..req("expiry-idle", "bob")
        })
        .await;
    c.advance_to(b.expires_at + 1);
    let expired_at = c.now();
    c.tick().await;
    assert!(
        c.busy(req("expiry-idle", "carol")).await.is_empty(),
        "busy during the lock-delay"
    );
    c.advance_to(expired_at + delay + 1);
    c.tick().await;
    let carol = c.grant(req("expiry-idle", "carol")).await;
    assert!(carol.token > b.token);
}

/// Tickets lapse when nobody waits on them: not early, then they leave the queue and a wait says
/// `Lapsed`; a ticket parked on does not lapse during its wait; a ticket polled (short waits)
/// lapses one period after its last poll.
pub async fn ticket_lapse(backend: &dyn Backend) {
    let c = Case::open(backend, "ticket-lapse").await;
    let lapse = config().ticket_lapse_ms;
    let holder = c
        .grant(AcquireArgs {
            ttl_ms: 600_000,
            ..req("lapse", "holder")
        })
        .await;
    let t0 = c.now();
    let gone = c.enqueue(req("lapse", "gone")).await.ticket.id;
    let parked = c.enqueue(req("lapse", "parked")).await.ticket.id;
    let polled = c.enqueue(req("lapse", "polled")).await.ticket.id;
    let store = Arc::clone(&c.store);
    let waiting = Spawned::new(async move { store.wait_ticket(parked, LONG_WAIT).await });
    c.let_park("lapse", parked).await;

    c.advance_to(t0 + lapse - 1);
    c.tick().await;
    assert_eq!(
        waiter_owners(&c.view("lapse").await),
        ["gone", "parked", "polled"],
        "not early"
    );
    assert_eq!(c.position(polled).await, 3, "a poll");
    let polled_at = c.now();

    c.advance_to(t0 + lapse + 1);
    c.tick().await;
    assert_eq!(
        waiter_owners(&c.view("lapse").await),
        ["parked", "polled"],
        "the idle ticket lapsed"
    );
    assert_eq!(
        c.status(gone).await,
        Err(StoreError::Ticket(TicketError::Lapsed))
    );
    assert_eq!(
        c.store.cancel_ticket(gone).await,
        Ok(Cancelled::NotCancelled(TicketEnd::Lapsed))
    );
    assert!(!waiting.is_finished(), "the parked wait goes on");
    assert_eq!(c.position(polled).await, 2, "the polled ticket moved up");
    let polled_at = polled_at.max(c.now());

    c.advance_to(polled_at + lapse + 1);
    c.tick().await;
    assert_eq!(
        waiter_owners(&c.view("lapse").await),
        ["parked"],
        "the polled ticket lapsed"
    );
    assert_eq!(
        c.status(polled).await,
        Err(StoreError::Ticket(TicketError::Lapsed))
    );
    assert!(
        !waiting.is_finished(),
        "a ticket being waited on does not lapse"
    );

    c.release(&holder).await;
    match waiting.join("a parked wait_ticket after the release").await {
        Ok(TicketStatus::Granted(lease)) => assert_eq!(lease.ticket, Some(parked)),
        other => panic!("expected the parked ticket granted, got {other:?}"),
    }
}

/// A wait in progress, polled by the case itself (not a task), so the case decides exactly when
/// it is dropped: dropping it is what a store sees when the waiter's connection closes.
type Departing<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

impl Case {
    /// Polls `wait` until it is parked on `ticket` of `lock` (see [`Case::let_park`]); panics if
    /// it answers first.
    async fn park_until_parked<T: std::fmt::Debug>(
        &self,
        lock: &str,
        ticket: TicketId,
        wait: &mut Departing<'_, T>,
    ) {
        tokio::select! {
            answer = wait.as_mut() => panic!("{}: the wait answered {answer:?} at once", self.key),
            () = self.let_park(lock, ticket) => {}
        }
    }

    /// The ticket of `owner` queued on `lock`, as the listing shows it (a parked acquire has not
    /// answered its ticket yet).
    async fn ticket_of(&self, lock: &str, owner: &str) -> TicketId {
        let view = within(
            LIVENESS,
            &format!("{}: {owner} queued on {lock}", self.key),
            async {
                loop {
                    if let Ok(Some(view)) = self.store.lock(name(lock)).await
                        && view.waiters.iter().any(|t| t.owner == owner)
                    {
                        return view;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            },
        )
        .await;
        view.waiters
            .iter()
            .find(|t| t.owner == owner)
            .map(|t| t.id)
            .unwrap_or_else(|| unreachable!())
    }

    /// Waits (real time, bounded) until the listing of `lock` satisfies `done`: a departure may
    /// be handled by the store in the background.
    async fn until_listing(&self, lock: &str, what: &str, done: impl Fn(&LockView) -> bool) {
        within(
            Duration::from_secs(10),
            &format!("{}: {what}", self.key),
            async {
                loop {
                    if let Ok(Some(view)) = self.store.lock(name(lock)).await
                        && done(&view)
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            },
        )
        .await;
    }
}

/// G5, a waiter that has gone: an acquire parked in the queue (`queue: true`, a long wait) whose
/// future is dropped (its connection closed) is not granted when the lock is released; the next
/// live waiter is, in the same transition, and the listing no longer shows the departed one.
/// Its ticket's lapse is cut to one lapse from its departure (not the end of its wait).
pub async fn departed_waiter_is_skipped_on_release(backend: &dyn Backend) {
    let c = Case::open(backend, "departed-skipped").await;
    let holder = c.grant(req("gone", "holder")).await;
    let mut departing: Departing<'_, AcquireOutcome> = Box::pin(c.store.acquire(AcquireArgs {
        queue: true,
        wait: LONG_WAIT,
        ..req("gone", "departed")
    }));
    let departed = tokio::select! {
        answer = departing.as_mut() => panic!("the parked acquire answered {answer:?}"),
        ticket = c.ticket_of("gone", "departed") => ticket,
    };
    c.park_until_parked("gone", departed, &mut departing).await;
    let live = c.enqueue(req("gone", "live")).await.ticket.id;
    let store = Arc::clone(&c.store);
    let waiting = Spawned::new(async move { store.wait_ticket(live, LONG_WAIT).await });
    c.let_park("gone", live).await;

    drop(departing);
    let left_at = c.now();
    let lapse = config().ticket_lapse_ms;
    c.until_listing(
        "gone",
        "the departed waiter's ticket lapses one lapse after it left",
        |view| {
            view.waiters
                .iter()
                .any(|t| t.id == departed && t.lapse_at <= left_at + lapse)
        },
    )
    .await;
    assert_eq!(
        waiter_owners(&c.view("gone").await),
        ["departed", "live"],
        "the departed waiter keeps its place until its turn or its lapse"
    );

    c.release(&holder).await;
    let lease = match waiting.join("the live waiter after the release").await {
        Ok(TicketStatus::Granted(lease)) => lease,
        other => panic!("the live waiter: expected the grant, got {other:?}"),
    };
    assert_eq!(lease.owner, "live");
    assert_eq!(
        lease.granted_at,
        c.now(),
        "handed on at once, no lock-delay"
    );
    let view = c.view("gone").await;
    assert_eq!(holder_owners(&view), ["live"]);
    assert!(view.waiters.is_empty(), "the departed waiter is not listed");
    assert_eq!(
        c.status(departed).await,
        Err(StoreError::Ticket(TicketError::Lapsed)),
        "the departed waiter lost its place"
    );
    let history = c.history("gone", 10).await;
    assert!(
        history.iter().all(|record| record.owner != "departed"),
        "the departed waiter never held the lock: {history:?}"
    );
}

/// The lapse of a ticket whose waiter went away counts from when it went, not from the end of
/// the wait it asked for.
pub async fn departed_waiter_lapses_from_when_it_left(backend: &dyn Backend) {
    let c = Case::open(backend, "departed-lapse").await;
    let lapse = config().ticket_lapse_ms;
    let _holder = c
        .grant(AcquireArgs {
            ttl_ms: 600_000,
            ..req("lapsing", "holder")
        })
        .await;
    let gone = c.enqueue(req("lapsing", "gone")).await.ticket.id;
    let mut departing: Departing<'_, TicketStatus> = Box::pin(c.store.wait_ticket(gone, LONG_WAIT));
    c.park_until_parked("lapsing", gone, &mut departing).await;
    drop(departing);
    let left_at = c.now();
    c.until_listing(
        "lapsing",
        "the lapse is cut to one lapse from now",
        |view| {
            view.waiters
                .iter()
                .any(|t| t.id == gone && t.lapse_at <= left_at + lapse)
        },
    )
    .await;
    c.advance_to(left_at + lapse - 1);
    c.tick().await;
    assert_eq!(
        waiter_owners(&c.view("lapsing").await),
        ["gone"],
        "not early"
    );
    c.advance_to(left_at + lapse + 1);
    c.tick().await;
    assert!(
        c.view("lapsing").await.waiters.is_empty(),
        "lapsed one lapse after its waiter left, long before its wait would have ended"
    );
    assert_eq!(
        c.status(gone).await,
        Err(StoreError::Ticket(TicketError::Lapsed))
    );
}

/// A waiter that went away and comes back on the same ticket before the lock was handed on
/// (a client's retry, a fail-over to another server) keeps its place and is granted.
pub async fn departed_waiter_comes_back_in_time(backend: &dyn Backend) {
    let c = Case::open(backend, "departed-back").await;
    let lapse = config().ticket_lapse_ms;
    let holder = c.grant(req("back", "holder")).await;
    let first = c.enqueue(req("back", "first")).await.ticket.id;
    let second = c.enqueue(req("back", "second")).await.ticket.id;
    let mut departing: Departing<'_, TicketStatus> =
        Box::pin(c.store.wait_ticket(first, LONG_WAIT));
    c.park_until_parked("back", first, &mut departing).await;
    drop(departing);
    let left_at = c.now();
    c.until_listing("back", "the departure is seen", |view| {
        view.waiters
            .iter()
            .any(|t| t.id == first && t.lapse_at <= left_at + lapse)
    })
    .await;
    c.advance(lapse / 2);
    let store = Arc::clone(&c.store);
    let back = Spawned::new(async move { store.wait_ticket(first, LONG_WAIT).await });
    c.let_park("back", first).await;
    assert_eq!(c.position(second).await, 2);
    c.release(&holder).await;
    match back.join("the waiter that came back").await {
        Ok(TicketStatus::Granted(lease)) => assert_eq!(lease.owner, "first"),
        other => panic!("the waiter that came back: expected the grant, got {other:?}"),
    }
    assert_eq!(c.position(second).await, 1);
}

/// Two waits on one ticket (a client that reconnected before its old connection was seen to
/// close): the old one going away changes nothing while the new one waits; the ticket keeps its
/// lapse and is granted to the wait that is still there.
pub async fn departed_wait_beside_a_live_wait_changes_nothing(backend: &dyn Backend) {
    let c = Case::open(backend, "departed-beside").await;
    let lapse = config().ticket_lapse_ms;
    let holder = c.grant(req("beside", "holder")).await;
    let ticket = c.enqueue(req("beside", "waiter")).await.ticket.id;
    let mut old: Departing<'_, TicketStatus> = Box::pin(c.store.wait_ticket(ticket, LONG_WAIT));
    c.park_until_parked("beside", ticket, &mut old).await;
    let store = Arc::clone(&c.store);
    let new = Spawned::new(async move { store.wait_ticket(ticket, LONG_WAIT).await });
    // Both parked: the new wait has pushed the lapse past the end of its own wait.
    let horizon = c.now() + lapse + LONG_WAIT.as_millis() as u64 / 2;
    c.until_listing("beside", "the second wait is parked", |view| {
        view.waiters
            .iter()
            .any(|t| t.id == ticket && t.lapse_at >= horizon)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(old);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let view = c.view("beside").await;
    let kept = view
        .waiters
        .iter()
        .find(|t| t.id == ticket)
        .map(|t| t.lapse_at);
    assert!(
        kept.is_some_and(|at| at >= horizon),
        "the old wait's departure cut the lapse of a ticket still waited on: {kept:?}"
    );
    c.release(&holder).await;
    match new.join("the wait that is still there").await {
        Ok(TicketStatus::Granted(lease)) => assert_eq!(lease.owner, "waiter"),
        other => panic!("the wait that is still there: expected the grant, got {other:?}"),
    }
}

/// A grant made while its waiter was parked, whose waiter went away before the answer left
/// (the wait's future dropped after the grant woke it), is released cleanly (no lock-delay) and
/// handed to the next waiter.
pub async fn undelivered_grant_is_handed_on(backend: &dyn Backend) {
    let c = Case::open(backend, "undelivered").await;
    let holder = c.grant(req("undelivered", "holder")).await;
    let gone = c.enqueue(req("undelivered", "gone")).await.ticket.id;
    let next = c.enqueue(req("undelivered", "next")).await.ticket.id;
    let mut departing: Departing<'_, TicketStatus> = Box::pin(c.store.wait_ticket(gone, LONG_WAIT));
    c.park_until_parked("undelivered", gone, &mut departing)
        .await;
    let store = Arc::clone(&c.store);
    let waiting = Spawned::new(async move { store.wait_ticket(next, LONG_WAIT).await });
    c.let_park("undelivered", next).await;
    // The release grants `gone` and wakes its wait, which is never polled again.
    c.release(&holder).await;
    assert_eq!(holder_owners(&c.view("undelivered").await), ["gone"]);
    drop(departing);
    let lease = match waiting.join("the next waiter").await {
        Ok(TicketStatus::Granted(lease)) => lease,
        other => panic!("the next waiter: expected the grant, got {other:?}"),
    };
    assert_eq!(lease.owner, "next");
    assert_eq!(
        lease.granted_at,
        c.now(),
        "no lock-delay after an undelivered grant"
    );
    let record = &c.history("undelivered", 1).await[0];
    assert_eq!(
        (record.owner.as_str(), record.end),
        ("gone", LeaseEnd::Released)
    );
    assert_eq!(
        c.status(gone).await,
        Err(StoreError::Ticket(TicketError::Lapsed))
    );
}

/// After one lease of a semaphore expires, only that slot waits out the lock-delay: the other
/// free slots are granted at once.
pub async fn semaphore_lock_delay_holds_back_one_slot(backend: &dyn Backend) {
    let c = Case::open(backend, "semaphore-delay").await;
    let delay = config().lock_delay_ms;
    let sem = |owner: &str| AcquireArgs {
        capacity: Some(3),
        ttl_ms: 5_000,
        ..req("sem-delay", owner)
    };
    let a = c.grant(sem("a")).await;
    let b = c
        .grant(AcquireArgs {
            ttl_ms: 600_000,
            ..sem("b")
        })
        .await;
    c.advance_to(a.expires_at + 1);
    c.tick().await;
    let expired_at = c.now();
    assert_eq!(holder_owners(&c.view("sem-delay").await), ["b"]);
    let free = c.grant(sem("c")).await;
    assert_eq!(
        free.granted_at, expired_at,
        "a free slot is granted at once"
    );
    c.busy(sem("d")).await;
    let queued = c.enqueue(sem("e")).await.ticket.id;
    // A clean release frees a slot that is not delayed: the waiter is served at once.
    c.release(&b).await;
    assert_eq!(c.granted(queued).await.owner, "e");
    c.busy(sem("f")).await;
    c.advance_to(expired_at + delay + 1);
    c.tick().await;
    assert_eq!(
        c.grant(sem("f")).await.owner,
        "f",
        "the expired slot is back"
    );
}

/// Cancelling: a queued ticket leaves the queue (and a wait says `Cancelled`); a ticket granted
/// but never collected by a wait has its lease released and the lock handed on; a collected one
/// is not cancelled.
pub async fn cancel_ticket(backend: &dyn Backend) {
    let c = Case::open(backend, "cancel-ticket").await;
    let holder = c.grant(req("cancel", "holder")).await;
    let first = c.enqueue(req("cancel", "first")).await.ticket.id;
    let second = c.enqueue(req("cancel", "second")).await.ticket.id;
    let third = c.enqueue(req("cancel", "third")).await.ticket.id;
    assert_eq!(c.store.cancel_ticket(first).await, Ok(Cancelled::Cancelled));
    assert_eq!(
        c.status(first).await,
        Err(StoreError::Ticket(TicketError::Cancelled))
    );
    assert_eq!(
        c.store.cancel_ticket(first).await,
        Ok(Cancelled::NotCancelled(TicketEnd::Cancelled)),
        "cancel twice"
    );
    assert_eq!(waiter_owners(&c.view("cancel").await), ["second", "third"]);
    assert_eq!(c.position(second).await, 1);

    // Granted, not collected: the cancel releases the lease and the lock goes on.
    c.release(&holder).await;
    assert_eq!(holder_owners(&c.view("cancel").await), ["second"]);
    assert_eq!(
        c.store.cancel_ticket(second).await,
        Ok(Cancelled::ReleasedUncollected)
    );
    let view = c.view("cancel").await;
    assert_eq!(
        holder_owners(&view),
        ["third"],
        "the lock goes to the next waiter at once"
    );
    assert!(view.waiters.is_empty());
    assert_eq!(
        c.history("cancel", 1).await[0].owner,
        "second",
        "its lease ended"
    );

    // Collected: not cancelled, the lease stays.
    let lease = c.granted(third).await;
    match c.store.cancel_ticket(third).await {
        Ok(Cancelled::NotCancelled(TicketEnd::Granted(id))) => assert_eq!(id, lease.id),
        other => panic!("cancel of a collected ticket: got {other:?}"),
    }
    assert_eq!(tokens(&c.view("cancel").await.holders), [lease.token]);
    assert!(c.store.renew(lease.id, None, None).await.is_ok());
}

/// G7: a retried request id returns the same lease or ticket (also eight racing at once); the
/// same owner key gets what it holds or its place; a request id reused on another lock is
/// `RequestIdConflict`; after the lease ended a retry gets no second lease.
pub async fn idempotency(backend: &dyn Backend) {
    let c = Case::open(backend, "idempotency").await;
    let by_id = |lock: &str, owner: &str, id: &str| AcquireArgs {
        request_id: Some(id.into()),
        ..req(lock, owner)
    };
    let a = c.grant(by_id("idem", "alice", "idem-1")).await;
    assert_eq!(a.request_id.as_deref(), Some("idem-1"));
    let again = c.grant(by_id("idem", "alice", "idem-1")).await;
    assert_eq!(
        (again.id, again.token),
        (a.id, a.token),
        "a retry returns the same lease"
    );
    assert_eq!(c.view("idem").await.holders.len(), 1, "and no second one");

    let mut racers = Vec::new();
    for _ in 0..8 {
        let store = Arc::clone(&c.store);
        racers.push(Spawned::new(async move {
            store.acquire(by_id("idem-race", "racer", "race")).await
        }));
    }
    let mut ids = HashSet::new();
    for racer in racers {
        match racer.join("a racing retry").await {
            Ok(AcquireOutcome::Granted(lease)) => ids.insert((lease.id, lease.token)),
            other => panic!("a racing retry: expected a grant, got {other:?}"),
        };
    }
    assert_eq!(ids.len(), 1, "racing retries share one lease");
    assert_eq!(c.view("idem-race").await.holders.len(), 1);

    let keyed = |owner: &str, key: &str| AcquireArgs {
        owner_key: Some(key.into()),
        ..req("idem-key", owner)
    };
    let k = c.grant(keyed("kim", "kim-key")).await;
    let k2 = c.grant(keyed("kim again", "kim-key")).await;
    assert_eq!(
        (k2.id, k2.token),
        (k.id, k.token),
        "the same owner key gets the lease it holds"
    );
    assert_eq!(tokens(&c.busy(keyed("lee", "lee-key")).await), [k.token]);
    // A request answered with the lease its owner key already held stands for that lease: once
    // it has ended, a retry gets no second lease.
    let keyed_retry = AcquireArgs {
        request_id: Some("idem-key-1".into()),
        ..keyed("kim", "kim-key")
    };
    assert_eq!(c.grant(keyed_retry.clone()).await.id, k.id);
    c.release(&k).await;
    assert_eq!(
        c.acquire(keyed_retry).await,
        Err(StoreError::Acquire(AcquireError::LeaseEnded(
            LeaseEnd::Released
        ))),
        "a retry of a request answered by the owner key's lease, after it ended"
    );

    let q = c.enqueue(by_id("idem", "queued", "idem-2")).await;
    let q2 = c.enqueue(by_id("idem", "queued", "idem-2")).await;
    assert_eq!(
        (q2.ticket.id, q2.position),
        (q.ticket.id, 1),
        "a retry keeps its one ticket"
    );
    let keyed_q = AcquireArgs {
        owner_key: Some("qk".into()),
        ..req("idem", "queued-key")
    };
    let qk = c.enqueue(keyed_q.clone()).await;
    let qk2 = c.enqueue(keyed_q).await;
    assert_eq!(
        (qk2.ticket.id, qk2.position),
        (qk.ticket.id, 2),
        "the same key keeps its place"
    );
    assert_eq!(
        waiter_owners(&c.view("idem").await),
        ["queued", "queued-key"]
    );

    assert_eq!(
        c.acquire(by_id("idem-elsewhere", "alice", "idem-1")).await,
        Err(StoreError::Acquire(AcquireError::RequestIdConflict {
            lock: name("idem")
        })),
        "a request id reused on another lock"
    );
    let elsewhere = c
        .store
        .lock(name("idem-elsewhere"))
        .await
        .expect("lock listing");
    assert!(elsewhere.is_none_or(|view| view.holders.is_empty() && view.waiters.is_empty()));

    c.release(&a).await;
    let granted = c.granted(q.ticket.id).await;
    let retried = c.grant(by_id("idem", "queued", "idem-2")).await;
    assert_eq!(
        retried.id, granted.id,
        "a retry of a granted ticket's request returns its lease"
    );
    c.release(&granted).await;
    for (id, what) in [
        ("idem-1", "a released direct grant"),
        ("idem-2", "a released ticket grant"),
    ] {
        assert_eq!(
            c.acquire(by_id("idem", "alice", id)).await,
            Err(StoreError::Acquire(AcquireError::LeaseEnded(
                LeaseEnd::Released
            ))),
            "a retry after {what} ended gets no second lease"
        );
    }
    assert_eq!(holder_owners(&c.view("idem").await), ["queued-key"]);
}

/// G3: tokens strictly increase across locks; fence accepts the newest (and a live semaphore
/// holder's), refuses an older one as `Stale { newest }` (a grant counts as seen), and says
/// `Unknown` for 0 or a token never granted on the lock; tokens stay unique and old ones stay
/// refused after idle locks are forgotten.
pub async fn fencing(backend: &dyn Backend) {
    let c = Case::open(backend, "fencing").await;
    let a1 = c.grant(req("fence-a", "a1")).await;
    let b1 = c.grant(req("fence-b", "b1")).await;
    c.release(&a1).await;
    let a2 = c.grant(req("fence-a", "a2")).await;
    let other = c.grant(req("fence-c", "c1")).await;
    assert_increasing(
        "grants across locks",
        &[a1.token, b1.token, a2.token, other.token],
    );

    let fence = |lock: &str, token: u64| c.store.fence(name(lock), token);
    assert_eq!(
        fence("fence-a", a2.token).await,
        Ok(a2.token),
        "the newest is accepted"
    );
    assert_eq!(
        fence("fence-a", a1.token).await,
        Err(StoreError::Token(TokenError::Stale { newest: a2.token })),
        "an older one is stale, though only the newer one's grant was seen"
    );
    for token in [0, other.token, other.token + 1_000] {
        assert_eq!(
            fence("fence-a", token).await,
            Err(StoreError::Token(TokenError::Unknown)),
            "token {token} was never granted on fence-a"
        );
    }
    assert_eq!(
        fence("fence-b", b1.token).await,
        Ok(b1.token),
        "each lock has its own newest"
    );
    c.release(&a2).await;
    assert_eq!(
        fence("fence-a", a2.token).await,
        Ok(a2.token),
        "still the newest after release"
    );
    assert_eq!(c.view("fence-a").await.newest_token, a2.token);

    let sem = |owner: &str| AcquireArgs {
        capacity: Some(2),
        ..req("fence-s", owner)
    };
    let s1 = c.grant(sem("s1")).await;
    let s2 = c.grant(sem("s2")).await;
    assert_eq!(fence("fence-s", s2.token).await, Ok(s2.token));
    assert!(
        fence("fence-s", s1.token).await.is_ok(),
        "a live holder's token is accepted"
    );
    c.release(&s1).await;
    assert_eq!(
        fence("fence-s", s1.token).await,
        Err(StoreError::Token(TokenError::Stale { newest: s2.token })),
        "an ended holder's older token is stale"
    );

    // Idle locks may be forgotten; tokens stay unique and old ones stay refused.
    for lease in [&b1, &other, &s2] {
        c.release(lease).await;
    }
    let newest = s2.token;
    c.advance(config().idle_lock_retention_ms + baton_core::state::HOUSEKEEPING_INTERVAL_MS + 1);
    c.tick().await;
    match fence("fence-a", a1.token).await {
        Err(StoreError::Token(TokenError::Stale { newest: seen })) => {
            assert!(
                seen >= a2.token,
                "stale against {seen}, below fence-a's newest {}",
                a2.token
            )
        }
        other => panic!("an old token of an idle (maybe forgotten) lock: got {other:?}"),
    }
    let fresh = c.grant(req("fence-a", "fresh")).await;
    assert!(
        fresh.token > newest,
        "a token after idle locks are forgotten is still new"
    );
    assert_eq!(
        fence("fence-a", a2.token).await,
        Err(StoreError::Token(TokenError::Stale {
            newest: fresh.token
        }))
    );
}

/// Revocation: the holder's renew says `Ended(Revoked)`, history says revoked, the lock-delay
/// applies, the old token is stale; revoking one semaphore holder leaves the others.
pub async fn revoke(backend: &dyn Backend) {
    let c = Case::open(backend, "revoke").await;
    let a = c.grant(req("revoke", "alice")).await;
    let waiter = c.enqueue(req("revoke", "waiter")).await;
    c.advance(100);
    let revoked = c
        .store
        .revoke(name("revoke"), a.token)
        .await
        .expect("revoke the holder");
    let revoked_at = c.now();
    assert_eq!(
        (revoked.id, revoked.token, revoked.owner.as_str()),
        (a.id, a.token, "alice")
    );
    assert_eq!(
        c.store.renew(a.id, None, None).await,
        Err(StoreError::Lease(LeaseError::Ended(LeaseEnd::Revoked))),
        "the holder learns it at its next renewal"
    );
    assert_eq!(
        c.store.release(a.id).await,
        Ok(Released::AlreadyEnded(LeaseEnd::Revoked))
    );
    assert_eq!(
        c.store.revoke(name("revoke"), a.token).await,
        Err(StoreError::Token(TokenError::HolderNotFound)),
        "revoke twice"
    );
    let record = &c.history("revoke", 10).await[0];
    assert_eq!(
        (
            record.owner.as_str(),
            record.token,
            record.end,
            record.ended_at
        ),
        ("alice", a.token, LeaseEnd::Revoked, revoked_at)
    );
    let view = c.view("revoke").await;
    assert!(view.holders.is_empty());
    assert_eq!(
        waiter_owners(&view),
        ["waiter"],
        "lock-delay after a revocation"
    );
    assert!(c.busy(req("revoke", "eager")).await.is_empty());
    c.advance_to(revoked_at + config().lock_delay_ms - 1);
    c.tick().await;
    assert!(
        c.view("revoke").await.holders.is_empty(),
        "not before the lock-delay ends"
    );
    c.advance_to(revoked_at + config().lock_delay_ms + 1);
    c.tick().await;
    let lease = c.granted(waiter.ticket.id).await;
    assert_eq!(
        c.store.fence(name("revoke"), a.token).await,
        Err(StoreError::Token(TokenError::Stale {
            newest: lease.token
        })),
        "a revoked holder's token is stale once another is granted"
    );

    let sem = |owner: &str| AcquireArgs {
        capacity: Some(2),
        ..req("revoke-sem", owner)
    };
    let s1 = c.grant(sem("s1")).await;
    let s2 = c.grant(sem("s2")).await;
    c.store
        .revoke(name("revoke-sem"), s1.token)
        .await
        .expect("revoke one holder");
    assert_eq!(tokens(&c.view("revoke-sem").await.holders), [s2.token]);
    assert!(
        c.store.renew(s2.id, None, None).await.is_ok(),
        "the other holder is untouched"
    );
}

/// History: owner, token, granted and ended times and how each hold ended, newest first, per
/// lock, with the limit respected.
pub async fn history(backend: &dyn Backend) {
    let c = Case::open(backend, "history").await;
    let mut expected = Vec::new();
    for i in 0..5 {
        c.advance(1_000);
        let lease = c.grant(req("hist", &format!("o{i}"))).await;
        c.advance(100 + i);
        c.release(&lease).await;
        expected.push((
            format!("o{i}"),
            lease.token,
            lease.granted_at,
            c.now(),
            LeaseEnd::Released,
        ));
    }
    let other = c.grant(req("hist-other", "elsewhere")).await;
    c.release(&other).await;

    let expiring = c
        .grant(AcquireArgs {
            ttl_ms: 1_000,
            ..req("hist", "o5")
        })
        .await;
    c.advance_to(expiring.expires_at + 1);
    c.tick().await;
    let expired_at = c.now();
    expected.push((
        "o5".into(),
        expiring.token,
        expiring.granted_at,
        expired_at,
        LeaseEnd::Expired,
    ));
    c.advance(config().lock_delay_ms + 1);
    c.tick().await;
    let revoked = c.grant(req("hist", "o6")).await;
    c.advance(50);
    c.store
        .revoke(name("hist"), revoked.token)
        .await
        .expect("revoke");
    expected.push((
        "o6".into(),
        revoked.token,
        revoked.granted_at,
        c.now(),
        LeaseEnd::Revoked,
    ));
    expected.reverse();

    let records = c.history("hist", 100).await;
    assert_eq!(
        records.len(),
        expected.len(),
        "one record per ended hold: {records:?}"
    );
    for (record, (owner, token, granted_at, ended_at, end)) in records.iter().zip(&expected) {
        assert_eq!(record.lock, name("hist"));
        assert_eq!(
            (&record.owner, record.token, record.granted_at, record.end),
            (owner, *token, *granted_at, *end)
        );
        if *end == LeaseEnd::Expired {
            assert!((expiring.expires_at..=*ended_at).contains(&record.ended_at));
        } else {
            assert_eq!(record.ended_at, *ended_at, "{owner}: ended_at");
        }
    }
    assert_eq!(
        c.history("hist", 3).await,
        records[..3],
        "the limit keeps the newest"
    );
    assert_eq!(c.history("hist", 0).await, vec![]);
    let others = c.history("hist-other", 100).await;
    assert_eq!(others.len(), 1, "history is per lock");
    assert_eq!(
        (others[0].owner.as_str(), others[0].token),
        ("elsewhere", other.token)
    );
}

/// Listings: `lock` and `locks` show capacity, holders (oldest grant first) and waiters (head
/// first), and `locks` pages by name.
pub async fn listings(backend: &dyn Backend) {
    let c = Case::open(backend, "listings").await;
    let sem = |owner: &str| AcquireArgs {
        capacity: Some(2),
        ..req("list-a", owner)
    };
    let a1 = c.grant(sem("a1")).await;
    let a2 = c.grant(sem("a2")).await;
    let a3 = c.enqueue(sem("a3")).await;
    let a4 = c.enqueue(sem("a4")).await;
    let b1 = c.grant(req("list-b", "b1")).await;
    let c1 = c.grant(req("list-c", "c1")).await;
    c.enqueue(req("list-c", "c2")).await;

    let view = c.view("list-a").await;
    assert_eq!((view.name.clone(), view.capacity), (name("list-a"), 2));
    assert_eq!(
        view.holders,
        vec![a1.clone(), a2.clone()],
        "holders, oldest grant first"
    );
    assert_eq!(waiter_owners(&view), ["a3", "a4"], "waiters, head first");
    assert_eq!(view.waiters[0].id, a3.ticket.id);
    assert_eq!(view.newest_token, a2.token);

    let all = c.store.locks(None, 100).await.expect("locks");
    let names: Vec<&str> = all.iter().map(|view| view.name.as_str()).collect();
    assert_eq!(names, ["list-a", "list-b", "list-c"], "by name");
    assert_eq!(all[0], view, "`locks` and `lock` agree");
    assert_eq!(tokens(&all[1].holders), [b1.token]);
    assert_eq!(
        (tokens(&all[2].holders), waiter_owners(&all[2])),
        (vec![c1.token], vec!["c2"])
    );
    let page = |after: Option<&str>, limit: usize| {
        let store = Arc::clone(&c.store);
        let after = after.map(name);
        async move {
            let views = store.locks(after, limit).await.expect("locks");
            views
                .into_iter()
                .map(|view| view.name.as_str().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(page(None, 2).await, ["list-a", "list-b"], "limit");
    assert_eq!(
        page(Some("list-a"), 100).await,
        ["list-b", "list-c"],
        "after is exclusive"
    );
    assert_eq!(page(Some("list-b"), 1).await, ["list-c"]);
    assert_eq!(page(Some("list-c"), 100).await, Vec::<String>::new());
    assert_eq!(page(None, 0).await, Vec::<String>::new());

    assert_eq!(
        c.store.cancel_ticket(a4.ticket.id).await,
        Ok(Cancelled::Cancelled)
    );
    c.release(&a1).await;
    let view = c.view("list-a").await;
    assert_eq!(
        holder_owners(&view),
        ["a2", "a3"],
        "holders, oldest grant first"
    );
    assert!(view.waiters.is_empty());
    let (locks, leases, tickets) = c.store.counts().await;
    assert_eq!(
        (locks, leases, tickets),
        (3, 4, 1),
        "counts: locks, live leases, tickets"
    );
}

/// A lease's value: set at acquire (directly, or carried by a ticket to its grant), replaced by
/// a renewal that carries one and kept by one that does not, shown in listings and history, and
/// (on a durable store) the same after a restart, the renewed value included: a store that
/// persisted only the value given at acquire, or dropped the ticket's, fails here. A value over
/// the bound is refused and changes nothing.
pub async fn lease_values(backend: &dyn Backend) {
    let c = Case::open(backend, "values").await;
    let with = |owner: &str, value: &str| AcquireArgs {
        value: Some(value.to_owned()),
        ..req("values", owner)
    };
    let a = c.grant(with("alice", "10.0.0.1:7000")).await;
    assert_eq!(a.value.as_deref(), Some("10.0.0.1:7000"));
    let w = c.enqueue(with("bob", "10.0.0.2:7000")).await;
    assert_eq!(w.ticket.value.as_deref(), Some("10.0.0.2:7000"));
    let too_long = "x".repeat(limits::LEASE_VALUE_BYTES_MAX + 1);
    assert!(
        matches!(
            c.acquire(with("carol", &too_long)).await,
            Err(StoreError::Acquire(AcquireError::InvalidValue(_)))
        ),
        "a value over the bound is refused"
    );
    assert!(matches!(
        c.store.renew(a.id, None, Some(too_long)).await,
        Err(StoreError::Lease(LeaseError::InvalidValue(_)))
    ));
    let kept = c.store.renew(a.id, None, None).await.expect("renew");
    assert_eq!(
        kept.value.as_deref(),
        Some("10.0.0.1:7000"),
        "a renewal without a value keeps it"
    );
    let renewed = c
        .store
        .renew(a.id, None, Some("10.0.0.1:7001".into()))
        .await
        .expect("renew with a value");
    assert_eq!(renewed.value.as_deref(), Some("10.0.0.1:7001"));
    let c = if backend.durable() {
        c.reopen(backend).await
    } else {
        c
    };
    let view = c.view("values").await;
    assert_eq!(
        view.holders[0].value.as_deref(),
        Some("10.0.0.1:7001"),
        "the listing shows the renewed value (after a restart on a durable store)"
    );
    assert_eq!(view.waiters[0].value.as_deref(), Some("10.0.0.2:7000"));
    c.release(&renewed).await;
    let b = c.granted(w.ticket.id).await;
    assert_eq!(
        b.value.as_deref(),
        Some("10.0.0.2:7000"),
        "the ticket's value goes to its lease"
    );
    let history = c.store.history(name("values"), 10).await.expect("history");
    assert_eq!(history[0].owner, "alice");
    assert_eq!(
        history[0].value.as_deref(),
        Some("10.0.0.1:7001"),
        "history keeps the value"
    );
}

/// Read-write locks: shared leases hold a lock of capacity 1 together; a queued writer waits
/// for every reader and holds back the readers queued after it (and a shared try); readers in
/// a row at the head are granted together when the writer releases; every grant has a greater
/// token; modes survive a restart (durable stores); history records them; a shared acquire on a
/// semaphore is a mode conflict. A store that lost a lease's mode in its rows would restore
/// readers as exclusive holders and fail here.
pub async fn read_write_locks(backend: &dyn Backend) {
    let c = Case::open(backend, "rw").await;
    let read = |owner: &str| AcquireArgs {
        mode: Mode::Shared,
        ..req("rw", owner)
    };
    let r1 = c.grant(read("r1")).await;
    let r2 = c.grant(read("r2")).await;
    assert_eq!((r1.mode, r2.mode), (Mode::Shared, Mode::Shared));
    assert_increasing("readers", &[r1.token, r2.token]);
    let w = c.enqueue(req("rw", "w")).await;
    assert_eq!(
        c.busy(read("late")).await.len(),
        2,
        "a shared try never jumps the queue"
    );
    let r3 = c.enqueue(read("r3")).await;
    let r4 = c.enqueue(read("r4")).await;
    let c = if backend.durable() {
        c.reopen(backend).await
    } else {
        c
    };
    let view = c.view("rw").await;
    assert_eq!(holder_owners(&view), ["r1", "r2"]);
    assert!(view.holders.iter().all(|lease| lease.mode == Mode::Shared));
    assert_eq!(waiter_owners(&view), ["w", "r3", "r4"]);
    assert_eq!(
        view.waiters.iter().map(|t| t.mode).collect::<Vec<_>>(),
        [Mode::Exclusive, Mode::Shared, Mode::Shared]
    );
    c.release(&r1).await;
    assert_eq!(
        c.position(w.ticket.id).await,
        1,
        "the writer waits for the last reader"
    );
    c.release(&r2).await;
    let writer = c.granted(w.ticket.id).await;
    assert_eq!(writer.mode, Mode::Exclusive);
    assert_eq!(holder_owners(&c.view("rw").await), ["w"]);
    c.release(&writer).await;
    let g3 = c.granted(r3.ticket.id).await;
    let g4 = c.granted(r4.ticket.id).await;
    assert_increasing("grants", &[r2.token, writer.token, g3.token, g4.token]);
    assert_eq!(holder_owners(&c.view("rw").await), ["r3", "r4"]);
    let history = c.store.history(name("rw"), 10).await.expect("history");
    let modes: Vec<(&str, Mode)> = history
        .iter()
        .map(|record| (record.owner.as_str(), record.mode))
        .collect();
    assert_eq!(
        modes,
        [
            ("w", Mode::Exclusive),
            ("r2", Mode::Shared),
            ("r1", Mode::Shared)
        ]
    );
    c.grant(AcquireArgs {
        capacity: Some(2),
        ..req("rw-sem", "a")
    })
    .await;
    assert!(
        matches!(
            c.acquire(AcquireArgs {
                mode: Mode::Shared,
                ..req("rw-sem", "b")
            })
            .await,
            Err(StoreError::Acquire(AcquireError::ModeConflict {
                capacity: 2
            }))
        ),
        "shared mode on a semaphore is a mode conflict"
    );
}

fn set_req(locks: &[&str], owner: &str) -> AcquireSetArgs {
    AcquireSetArgs {
        locks: locks.iter().map(|lock| name(lock)).collect(),
        owner: owner.to_owned(),
        ttl_ms: TTL,
        wait: Duration::ZERO,
        queue: true,
        request_id: None,
        api_key: None,
        quota: Default::default(),
        value: None,
        mode: Mode::Exclusive,
    }
}

/// Lock sets: a try that finds a lock busy leaves nothing (not even a lock); queued sets take
/// one place per lock in one arrival order and are granted whole, in one step, when they head
/// every queue; a single waiter behind a set keeps its place; overlapping sets are served in
/// arrival order; a restart (durable backends) keeps queued set tickets whole and held set
/// leases; a retry with the request id returns the same set.
pub async fn lock_sets(backend: &dyn Backend) {
    let c = Case::open(backend, "sets").await;
    let holder = c.grant(req("set-b", "holder")).await;
    let tried = c
        .store
        .acquire_set(AcquireSetArgs {
            queue: false,
            ..set_req(&["set-a", "set-b"], "try")
        })
        .await;
    assert!(
        matches!(&tried, Ok(AcquireSetOutcome::Busy(holders)) if holders == std::slice::from_ref(&holder)),
        "{}: a try on a busy set is busy, got {tried:?}",
        c.key
    );
    assert_eq!(
        c.store.lock(name("set-a")).await.expect("lock"),
        None,
        "{}: a refused try leaves no lock behind",
        c.key
    );
    let first = match c
        .store
        .acquire_set(set_req(&["set-a", "set-b"], "s1"))
        .await
    {
        Ok(AcquireSetOutcome::Queued(tickets)) => tickets,
        other => panic!("{}: expected the set queued, got {other:?}", c.key),
    };
    assert_eq!(first.len(), 2);
    assert_eq!(
        first[0].ticket.seq, first[1].ticket.seq,
        "one arrival number for the whole set"
    );
    let late = c.enqueue(req("set-a", "late")).await;
    assert_eq!(late.position, 2, "a single waiter queues behind the set");
    let second = match c
        .store
        .acquire_set(AcquireSetArgs {
            request_id: Some("set-second".into()),
            ..set_req(&["set-b", "set-c"], "s2")
        })
        .await
    {
        Ok(AcquireSetOutcome::Queued(tickets)) => tickets,
        other => panic!("{}: expected the set queued, got {other:?}", c.key),
    };
    let c = if backend.durable() {
        c.reopen(backend).await
    } else {
        c
    };
    let a = c.view("set-a").await;
    assert!(a.holders.is_empty(), "{}: s1 waits whole", c.key);
    assert_eq!(waiter_owners(&a), ["s1", "late"]);
    assert_eq!(waiter_owners(&c.view("set-b").await), ["s1", "s2"]);
    let set_c = c.view("set-c").await;
    assert!(set_c.holders.is_empty(), "{}: s2 waits whole", c.key);
    assert_eq!(waiter_owners(&set_c), ["s2"]);
    c.release(&holder).await;
    let s1a = c.granted(first[0].ticket.id).await;
    let s1b = c.granted(first[1].ticket.id).await;
    assert_eq!(
        s1a.granted_at, s1b.granted_at,
        "{}: a set is granted in one step",
        c.key
    );
    assert!(
        s1a.token > holder.token && s1b.token > holder.token && s1a.token != s1b.token,
        "{}: each lease of a set has its own new token",
        c.key
    );
    assert!(
        c.view("set-c").await.holders.is_empty(),
        "{}: s2 still waits for set-b",
        c.key
    );
    let c = if backend.durable() {
        c.reopen(backend).await
    } else {
        c
    };
    assert_eq!(holder_owners(&c.view("set-a").await), ["s1"]);
    assert_eq!(holder_owners(&c.view("set-b").await), ["s1"]);
    c.release(&s1a).await;
    c.release(&s1b).await;
    let late_lease = c.granted(late.ticket.id).await;
    let s2b = c.granted(second[0].ticket.id).await;
    let s2c = c.granted(second[1].ticket.id).await;
    assert!(late_lease.token > s1a.token.max(s1b.token));
    assert_eq!((s2b.lock.as_str(), s2c.lock.as_str()), ("set-b", "set-c"));
    let retried = c
        .store
        .acquire_set(AcquireSetArgs {
            request_id: Some("set-second".into()),
            ..set_req(&["set-b", "set-c"], "s2")
        })
        .await;
    assert_eq!(
        retried,
        Ok(AcquireSetOutcome::Granted(vec![s2b, s2c])),
        "{}: a retry returns the same leases",
        c.key
    );
}

/// G2/G3/G7 across a restart (durable backends only): held leases stay live with a deadline not
/// earlier than before, queues keep their order, request ids their answers, fences their newest
/// token; a ticket granted just before the restart returns its lease; a released lock stays
/// released; a new grant's token is greater than every token before.
pub async fn restart_keeps_state(backend: &dyn Backend) {
    if !backend.durable() {
        return;
    }
    let c = Case::open(backend, "restart").await;
    let a = c
        .grant(AcquireArgs {
            request_id: Some("restart-a".into()),
            ..req("restart-q", "alice")
        })
        .await;
    let w1 = c
        .enqueue(AcquireArgs {
            request_id: Some("restart-w1".into()),
            ..req("restart-q", "w1")
        })
        .await;
    let w2 = c.enqueue(req("restart-q", "w2")).await;
    let sem = |owner: &str| AcquireArgs {
        capacity: Some(3),
        ..req("restart-s", owner)
    };
    let s1 = c.grant(sem("s1")).await;
    let s2 = c
        .grant(AcquireArgs {
            ttl_ms: 2 * TTL,
            ..sem("s2")
        })
        .await;
    let h = c.grant(req("restart-g", "holder")).await;
    let g = c.enqueue(req("restart-g", "granted")).await.ticket.id;
    c.release(&h).await;
    let r = c.grant(req("restart-r", "released")).await;
    c.release(&r).await;
    c.advance(1_000);
    let a = c
        .store
        .renew(a.id, None, None)
        .await
        .expect("renew before the restart");
    assert_eq!(
        c.store.fence(name("restart-s"), s2.token).await,
        Ok(s2.token)
    );
    let before_q = c.view("restart-q").await;
    let before_s = c.view("restart-s").await;
    let before_g = c.view("restart-g").await;
    assert_eq!(
        holder_owners(&before_g),
        ["granted"],
        "the ticket was granted before the restart"
    );
    let newest = [
        a.token,
        s1.token,
        s2.token,
        h.token,
        r.token,
        before_g.holders[0].token,
    ]
    .into_iter()
    .max()
    .unwrap_or_default();

    c.advance(2_000);
    let c = c.reopen(backend).await;

    let view = c.view("restart-q").await;
    assert_eq!(view.holders.len(), 1, "the lease survives");
    let after = &view.holders[0];
    assert_eq!(
        (after.id, after.token, after.owner.as_str()),
        (a.id, a.token, "alice")
    );
    assert!(
        after.expires_at >= a.expires_at,
        "no holder's deadline is shortened (G2)"
    );
    let ids = |view: &LockView| view.waiters.iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(ids(&before_q), [w1.ticket.id, w2.ticket.id]);
    assert_eq!(ids(&view), ids(&before_q), "the queue keeps its order");
    let view = c.view("restart-s").await;
    assert_eq!(view.capacity, 3, "the capacity survives");
    let pairs = |view: &LockView| {
        view.holders
            .iter()
            .map(|l| (l.id, l.token))
            .collect::<Vec<_>>()
    };
    assert_eq!(pairs(&view), pairs(&before_s), "semaphore holders survive");
    for (after, before) in view.holders.iter().zip(&before_s.holders) {
        assert!(
            after.expires_at >= before.expires_at,
            "no deadline shortened (G2)"
        );
    }
    let lease = c.granted(g).await;
    assert_eq!(
        lease.id, before_g.holders[0].id,
        "a ticket granted before the restart returns its lease"
    );
    assert!(
        c.store
            .lock(name("restart-r"))
            .await
            .expect("lock")
            .is_none_or(|v| v.holders.is_empty()),
        "a released lock stays released"
    );
    let record = &c.history("restart-r", 10).await[0];
    assert_eq!(
        (record.token, record.end),
        (r.token, LeaseEnd::Released),
        "history survives"
    );

    let retried = c
        .grant(AcquireArgs {
            request_id: Some("restart-a".into()),
            ..req("restart-q", "alice")
        })
        .await;
    assert_eq!(retried.id, a.id, "a request id's answer survives (G7)");
    let requeued = c
        .enqueue(AcquireArgs {
            request_id: Some("restart-w1".into()),
            ..req("restart-q", "w1")
        })
        .await;
    assert_eq!((requeued.ticket.id, requeued.position), (w1.ticket.id, 1));
    assert_eq!(
        c.store.fence(name("restart-s"), s1.token).await,
        Ok(s2.token),
        "a live holder's token is still accepted, and the newest survives"
    );
    assert_eq!(
        c.store.fence(name("restart-g"), h.token).await,
        Err(StoreError::Token(TokenError::Stale {
            newest: lease.token
        }))
    );
    let fresh = c.grant(req("restart-new", "fresh")).await;
    assert!(
        fresh.token > newest,
        "no token is reused after a restart (G3)"
    );

    assert!(
        c.store.renew(a.id, None, None).await.is_ok(),
        "a surviving lease renews"
    );
    c.release(&a).await;
    let w1_lease = c.granted(w1.ticket.id).await;
    assert!(w1_lease.token > fresh.token);
    assert_eq!(c.position(w2.ticket.id).await, 1, "and the queue moves on");
}

/// A lock-delay in force survives a restart: the next waiter is granted when it ends, not at the
/// restart and not never.
pub async fn restart_keeps_lock_delay(backend: &dyn Backend) {
    if !backend.durable() {
        return;
    }
    let c = Case::open(backend, "restart-delay").await;
    let a = c.grant(req("restart-d", "alice")).await;
    let waiter = c.enqueue(req("restart-d", "waiter")).await.ticket.id;
    c.store
        .revoke(name("restart-d"), a.token)
        .await
        .expect("revoke");
    let revoked_at = c.now();
    let delay = config().lock_delay_ms;
    c.advance(delay / 2);
    let c = c.reopen(backend).await;
    c.tick().await;
    let view = c.view("restart-d").await;
    assert!(view.holders.is_empty(), "a revoked lease stays revoked");
    assert_eq!(
        waiter_owners(&view),
        ["waiter"],
        "the lock-delay survives the restart"
    );
    assert!(c.busy(req("restart-d", "eager")).await.is_empty());
    c.advance_to(revoked_at + delay + 1);
    c.tick().await;
    assert_eq!(
        c.granted(waiter).await.owner,
        "waiter",
        "granted when the lock-delay ends"
    );
}

/// G1 under contention: 32 tasks on one mutex, each acquiring with a wait, holding briefly and
/// releasing, 5 rounds each: never two holders at once, every token unique and increasing in
/// grant order.
pub async fn concurrent_mutex(backend: &dyn Backend) {
    contend(backend, "concurrent-mutex", 1).await;
}

/// G1 under contention on a semaphore of capacity 3: never more than 3 holders at once, every
/// token unique.
pub async fn concurrent_semaphore(backend: &dyn Backend) {
    contend(backend, "concurrent-semaphore", 3).await;
}

async fn contend(backend: &dyn Backend, key: &'static str, capacity: u32) {
    const TASKS: usize = 32;
    const ROUNDS: usize = 5;
    let c = Case::open(backend, key).await;
    let holding = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let grants = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (store, holding, peak, grants) = (
            Arc::clone(&c.store),
            Arc::clone(&holding),
            Arc::clone(&peak),
            Arc::clone(&grants),
        );
        tasks.push(Spawned::new(async move {
            let mut mine = Vec::new();
            for round in 0..ROUNDS {
                let args = AcquireArgs {
                    capacity: Some(capacity),
                    wait: LONG_WAIT,
                    ..req("contended", &format!("task-{task}"))
                };
                let lease = match store.acquire(args).await {
                    Ok(AcquireOutcome::Granted(lease)) => lease,
                    other => panic!("task {task} round {round}: expected a grant, got {other:?}"),
                };
                let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                grants.lock().unwrap().push(lease.token);
                if round % 2 == 0 {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                holding.fetch_sub(1, Ordering::SeqCst);
                assert_eq!(store.release(lease.id).await, Ok(Released::Released));
                mine.push(lease.token);
            }
            mine
        }));
    }
    let joined = within(
        CONTENTION,
        &format!("{key}: {TASKS} tasks × {ROUNDS} rounds"),
        async {
            let mut joined = Vec::new();
            for (task, handle) in tasks.into_iter().enumerate() {
                joined.push(handle.join(&format!("{key}: task {task}")).await);
            }
            joined
        },
    )
    .await;
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak <= capacity as usize,
        "{key}: {peak} holders at once, capacity {capacity} (G1)"
    );
    let grants = grants.lock().unwrap().clone();
    assert_eq!(grants.len(), TASKS * ROUNDS);
    let unique: HashSet<u64> = grants.iter().copied().collect();
    assert_eq!(
        unique.len(),
        grants.len(),
        "{key}: every grant has its own token (G3)"
    );
    if capacity == 1 {
        assert_increasing(&format!("{key}: grants in order"), &grants);
    }
    for mine in &joined {
        assert_increasing(&format!("{key}: one task's grants"), mine);
    }
    let view = c.view("contended").await;
    assert!(
        view.holders.is_empty() && view.waiters.is_empty(),
        "{key}: all released: {view:?}"
    );
}

/// G1 with tries racing (no waits): 16 tasks on a semaphore of capacity 2, each trying until it
/// was granted 3 times; never more than 2 holders at once.
pub async fn concurrent_tries(backend: &dyn Backend) {
    const TASKS: usize = 16;
    const GRANTS: usize = 3;
    let c = Case::open(backend, "concurrent-tries").await;
    let holding = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (store, holding, peak) = (
            Arc::clone(&c.store),
            Arc::clone(&holding),
            Arc::clone(&peak),
        );
        tasks.push(Spawned::new(async move {
            let mut mine = Vec::new();
            while mine.len() < GRANTS {
                let args = AcquireArgs {
                    capacity: Some(2),
                    ..req("tried", &format!("task-{task}"))
                };
                match store.acquire(args).await {
                    Ok(AcquireOutcome::Granted(lease)) => {
                        let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        holding.fetch_sub(1, Ordering::SeqCst);
                        assert_eq!(store.release(lease.id).await, Ok(Released::Released));
                        mine.push(lease.token);
                    }
                    Ok(AcquireOutcome::Busy(holders)) => {
                        assert!(holders.len() <= 2, "busy with {} holders", holders.len());
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    other => panic!("task {task}: a try answered {other:?}"),
                }
            }
            mine
        }));
    }
    let mut all = HashSet::new();
    let mut count = 0;
    within(CONTENTION, "concurrent tries", async {
        for (task, handle) in tasks.into_iter().enumerate() {
            let mine = handle.join(&format!("try task {task}")).await;
            count += mine.len();
            all.extend(mine);
        }
    })
    .await;
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 2, "{peak} holders at once on capacity 2 (G1)");
    assert_eq!(all.len(), count, "every grant has its own token");
    let view = c.view("tried").await;
    assert!(
        view.holders.is_empty() && view.waiters.is_empty(),
        "tries leave nothing: {view:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Jobs

/// A job named `job` (also its lock), no wait, the suite's ttl.
fn job_req(job: &str, owner: &str, policy: Policy) -> CreateJobArgs {
    CreateJobArgs {
        mode: Mode::Exclusive,
        value: None,
        quota: Default::default(),
        api_key: None,
        name: job.to_owned(),
        lock: name(job),
        capacity: None,
        policy,
        owner: owner.to_owned(),
        host: Some("host-a".into()),
        command: vec!["run.sh".into(), "--all".into()],
        ttl_ms: TTL,
        wait: Duration::ZERO,
        request_id: None,
        min_hold_ms: None,
        once_per_ms: None,
        batch: None,
    }
}

fn done(state: JobState, exit_code: Option<i32>, output: &str) -> FinishJob {
    FinishJob {
        state,
        exit_code,
        reason: None,
        output_tail: output.to_owned(),
    }
}

fn every_job() -> JobFilter {
    JobFilter {
        limit: usize::MAX,
        ..JobFilter::default()
    }
}

impl Case {
    async fn create_job(&self, args: CreateJobArgs) -> JobCreated {
        let what = format!("{}: job {} by {}", self.key, args.name, args.owner);
        self.store
            .create_job(args)
            .await
            .unwrap_or_else(|error| panic!("{what}: {error}"))
    }

    /// Creates a job that must run at once; returns it with its lease.
    async fn run_job(&self, args: CreateJobArgs) -> (Job, Lease) {
        let created = self.create_job(args).await;
        match (created.job.state, created.lease, created.ticket) {
            (JobState::Running, Some(lease), None) => (created.job, lease),
            (state, lease, ticket) => panic!(
                "{}: expected a running job with its lease, got {state:?} {lease:?} {ticket:?}",
                self.key
            ),
        }
    }

    /// Creates a job that must wait; returns it with its ticket.
    async fn queue_job(&self, args: CreateJobArgs) -> (Job, QueuedTicket) {
        let created = self.create_job(args).await;
        match (created.job.state, created.lease, created.ticket) {
            (JobState::Waiting, None, Some(ticket)) => (created.job, ticket),
            (state, lease, ticket) => panic!(
                "{}: expected a waiting job with its ticket, got {state:?} {lease:?} {ticket:?}",
                self.key
            ),
        }
    }

    async fn job(&self, id: JobId) -> Job {
        match self.store.job(id).await {
            Ok(Some(job)) => job,
            other => panic!("{}: job {id:?}: expected it, got {other:?}", self.key),
        }
    }

    async fn finish_job(&self, id: JobId, lease: &Lease, report: FinishJob) -> Job {
        self.store
            .finish_job(id, JobCapability::Lease(lease.id), report)
            .await
            .unwrap_or_else(|error| panic!("{}: finish of job {id:?}: {error}", self.key))
    }
}

/// A job on a free lock runs at once with its lease; a heartbeat renews that lease (in the
/// store: it outlives its first deadline) and asks nothing; finish records the state, exit code
/// and output (its end, at most the limit), releases the lock cleanly, and reads back from
/// `job` and `jobs`. Wrong capabilities, unknown ids and unreportable states are refused.
pub async fn job_lifecycle(backend: &dyn Backend) {
    let c = Case::open(backend, "job-lifecycle").await;
    let t0 = c.now();
    let (job, lease) = c
        .run_job(job_req("nightly", "runner-1", Policy::Wait))
        .await;
    assert_eq!(
        (job.name.as_str(), job.lock.as_str()),
        ("nightly", "nightly")
    );
    assert_eq!(job.command, ["run.sh", "--all"]);
    assert_eq!(job.host.as_deref(), Some("host-a"));
    assert_eq!(
        (job.created_at, job.started_at, job.waiting_at),
        (t0, Some(t0), None)
    );
    assert_eq!(job.token, Some(lease.token));
    assert_eq!(
        (lease.owner.as_str(), lease.expires_at),
        ("runner-1", t0 + TTL)
    );
    let view = c.view("nightly").await;
    assert_eq!(tokens(&view.holders), [lease.token]);
    assert_eq!(
        view.holder_jobs,
        [Some(job.id)],
        "the listing names the job"
    );
    assert_eq!(c.job(job.id).await, job);

    c.advance(5_000);
    let (renewed, stop) = c
        .store
        .job_heartbeat(job.id, lease.id, None)
        .await
        .expect("heartbeat of a running job");
    assert_eq!((renewed.id, renewed.expires_at), (lease.id, c.now() + TTL));
    assert_eq!(stop, None);
    c.advance_to(lease.expires_at + 1);
    c.tick().await;
    assert_eq!(
        c.job(job.id).await.state,
        JobState::Running,
        "the heartbeat held"
    );

    let bad_lease = LeaseId([0x5a; 16]);
    assert_eq!(
        c.store.job_heartbeat(job.id, bad_lease, None).await,
        Err(StoreError::Job(JobError::WrongCapability))
    );
    assert_eq!(
        c.store
            .finish_job(
                job.id,
                JobCapability::Lease(bad_lease),
                done(JobState::Succeeded, Some(0), "")
            )
            .await,
        Err(StoreError::Job(JobError::WrongCapability))
    );
    assert_eq!(
        c.store
            .finish_job(
                job.id,
                JobCapability::Lease(lease.id),
                done(JobState::Running, None, "")
            )
            .await,
        Err(StoreError::Job(JobError::InvalidState(JobState::Running)))
    );
    let unknown = JobId([0x5a; 16]);
    assert_eq!(c.store.job(unknown).await, Ok(None));
    assert_eq!(
        c.store
            .finish_job(
                unknown,
                JobCapability::Lease(lease.id),
                done(JobState::Failed, Some(1), "")
            )
            .await,
        Err(StoreError::Job(JobError::NotFound))
    );
    assert_eq!(
        c.job(job.id).await.state,
        JobState::Running,
        "refusals change nothing"
    );

    let finished_at = c.now();
    let finished = c
        .finish_job(
            job.id,
            &lease,
            done(JobState::Succeeded, Some(0), "hello\nworld\n"),
        )
        .await;
    assert_eq!(finished.state, JobState::Succeeded);
    assert_eq!(
        (finished.exit_code, finished.finished_at),
        (Some(0), Some(finished_at))
    );
    assert_eq!(finished.output_tail, "hello\nworld\n");
    assert_eq!(
        c.job(job.id).await,
        finished,
        "the job reads back as finished"
    );
    let view = c.view("nightly").await;
    assert!(view.holders.is_empty(), "finish released the lock");
    assert_eq!(view.delayed_until, None, "cleanly");
    assert_eq!(
        c.store.job_heartbeat(job.id, lease.id, None).await,
        Err(StoreError::Job(JobError::Lease(LeaseError::Ended(
            LeaseEnd::Released
        ))))
    );
    assert_eq!(
        c.store
            .finish_job(
                job.id,
                JobCapability::Lease(lease.id),
                done(JobState::Failed, Some(1), "")
            )
            .await,
        Err(StoreError::Job(JobError::AlreadyEnded(JobState::Succeeded)))
    );

    // A second job, failed with an output over the limit: its end is kept, cut at a character.
    c.advance(1_000);
    let (second, lease) = c
        .run_job(job_req("nightly", "runner-2", Policy::Wait))
        .await;
    assert!(second.token > job.token);
    let output = format!("x{}END", "é".repeat(limits::OUTPUT_TAIL_BYTES_MAX / 2));
    let failed = c
        .finish_job(second.id, &lease, done(JobState::Failed, Some(3), &output))
        .await;
    assert_eq!(
        (failed.state, failed.exit_code),
        (JobState::Failed, Some(3))
    );
    assert!(failed.output_tail.len() <= limits::OUTPUT_TAIL_BYTES_MAX);
    assert!(failed.output_tail.len() > limits::OUTPUT_TAIL_BYTES_MAX - 4);
    assert!(output.ends_with(&failed.output_tail), "the end is kept");

    let listed = c.store.jobs(every_job()).await.expect("list jobs");
    assert_eq!(
        listed.iter().map(|job| job.id).collect::<Vec<_>>(),
        [second.id, job.id],
        "newest first"
    );
    let succeeded = c
        .store
        .jobs(JobFilter {
            states: vec![JobState::Succeeded],
            ..every_job()
        })
        .await
        .expect("list jobs");
    assert_eq!(succeeded, [finished]);
    let none = c
        .store
        .jobs(JobFilter {
            name: Some("other".into()),
            ..every_job()
        })
        .await
        .expect("list jobs");
    assert!(none.is_empty());
}

/// A job on a busy lock waits: `create_job` with a wait parks until the holder finishes (a
/// wake-up, not a poll) and answers it running with its lease. A create whose wait runs out
/// answers it waiting, keeps its place, and a later `wait_ticket` collects the grant.
pub async fn job_waits_then_runs(backend: &dyn Backend) {
    let c = Case::open(backend, "job-waits").await;
    let (holder, lease) = c.run_job(job_req("etl", "holder", Policy::Wait)).await;

    let store = Arc::clone(&c.store);
    let parked = Spawned::new(async move {
        store
            .create_job(CreateJobArgs {
                wait: LONG_WAIT,
                ..job_req("etl", "parked", Policy::Wait)
            })
            .await
    });
    let view = c.wait_for_waiters("etl", 1).await;
    let ticket = view.waiters[0].id;
    let waiter = view.waiter_jobs[0].expect("the waiter is a job");
    assert_eq!(c.job(waiter).await.state, JobState::Waiting);
    c.let_park("etl", ticket).await;
    assert!(
        !parked.is_finished(),
        "a job with a wait waits while the lock is held"
    );
    c.advance(1_000);
    let finished_at = c.now();
    c.finish_job(holder.id, &lease, done(JobState::Succeeded, Some(0), ""))
        .await;
    let created = parked
        .join("a parked create_job after the holder finished")
        .await
        .expect("create_job");
    assert_eq!(created.job.id, waiter);
    assert_eq!(created.job.state, JobState::Running);
    assert_eq!(created.job.started_at, Some(finished_at));
    let granted = created.lease.expect("a running job comes with its lease");
    assert_eq!(granted.ticket, Some(ticket));
    assert!(granted.token > lease.token);
    assert_eq!(created.job.token, Some(granted.token));
    assert_eq!(tokens(&c.view("etl").await.holders), [granted.token]);

    // A wait that runs out: the job keeps waiting with its ticket.
    let created = c
        .create_job(CreateJobArgs {
            wait: Duration::from_millis(200),
            ..job_req("etl", "patient", Policy::Wait)
        })
        .await;
    assert_eq!(created.job.state, JobState::Waiting);
    assert!(created.lease.is_none());
    let ticket = created
        .ticket
        .expect("a waiting job comes with its ticket")
        .ticket
        .id;
    assert_eq!(c.view("etl").await.waiter_jobs, [Some(created.job.id)]);
    let store = Arc::clone(&c.store);
    let waiting = Spawned::new(async move { store.wait_ticket(ticket, LONG_WAIT).await });
    c.let_park("etl", ticket).await;
    assert!(
        !waiting.is_finished(),
        "the ticket waits while the lock is held"
    );
    c.finish_job(waiter, &granted, done(JobState::Succeeded, Some(0), ""))
        .await;
    match waiting.join("a parked wait on a job's ticket").await {
        Ok(TicketStatus::Granted(lease)) => assert_eq!(lease.owner, "patient"),
        other => panic!("a job's ticket: expected the grant, got {other:?}"),
    }
    let job = c.job(created.job.id).await;
    assert_eq!(job.state, JobState::Running);
    assert_eq!(c.view("etl").await.holder_jobs, [Some(job.id)]);
}

/// `skip` and `fail` on a busy lock record a skipped job with no lease and no ticket; nothing
/// is queued and nothing is granted to them later. On a free lock they run.
pub async fn job_skip_on_busy(backend: &dyn Backend) {
    let c = Case::open(backend, "job-skip").await;
    let (holder, lease) = c.run_job(job_req("cron", "holder", Policy::Wait)).await;
    let mut skipped = Vec::new();
    for policy in [Policy::Skip, Policy::Fail] {
        let created = c.create_job(job_req("cron", "late", policy)).await;
        assert_eq!(created.job.state, JobState::Skipped, "{policy:?}");
        assert!(created.lease.is_none() && created.ticket.is_none());
        assert_eq!(created.job.finished_at, Some(c.now()));
        assert!(created.job.reason.is_some(), "a skipped job says why");
        skipped.push(created.job.id);
    }
    let view = c.view("cron").await;
    assert!(view.waiters.is_empty(), "a skipped job is not queued");
    assert_eq!(tokens(&view.holders), [lease.token]);
    c.finish_job(holder.id, &lease, done(JobState::Succeeded, Some(0), ""))
        .await;
    assert!(
        c.view("cron").await.holders.is_empty(),
        "nothing granted to a skipped job"
    );
    for id in skipped {
        assert_eq!(c.job(id).await.state, JobState::Skipped);
    }
    c.run_job(job_req("cron", "next", Policy::Skip)).await;
}

/// `coalesce`: while a run holds the lock, the first request waits and every later one folds
/// into it (`coalesced`, naming it), so at most one run is pending; once the pending run
/// starts, the next request waits again.
pub async fn job_coalesce(backend: &dyn Backend) {
    let c = Case::open(backend, "job-coalesce").await;
    let (holder, lease) = c.run_job(job_req("index", "first", Policy::Coalesce)).await;
    let (pending, _) = c
        .queue_job(job_req("index", "pending", Policy::Coalesce))
        .await;
    for n in 0..5 {
        let created = c
            .create_job(job_req("index", &format!("folded-{n}"), Policy::Coalesce))
            .await;
        assert_eq!(created.job.state, JobState::Coalesced);
        assert_eq!(created.job.coalesced_into, Some(pending.id));
        assert!(created.lease.is_none() && created.ticket.is_none());
    }
    assert_eq!(
        c.view("index").await.waiter_jobs,
        [Some(pending.id)],
        "one pending run"
    );
    c.finish_job(holder.id, &lease, done(JobState::Succeeded, Some(0), ""))
        .await;
    assert_eq!(c.job(pending.id).await.state, JobState::Running);
    let (next, _) = c
        .queue_job(job_req("index", "next", Policy::Coalesce))
        .await;
    let folded = c
        .create_job(job_req("index", "folded", Policy::Coalesce))
        .await;
    assert_eq!(folded.job.coalesced_into, Some(next.id));
    let coalesced = c
        .store
        .jobs(JobFilter {
            states: vec![JobState::Coalesced],
            ..every_job()
        })
        .await
        .expect("list jobs");
    assert_eq!(coalesced.len(), 6);
}

/// `replace`: the running holder hears `replaced` at its heartbeat; the new run waits (the lock
/// never has two holders) and is granted, by a wake-up, only once the holder finished.
pub async fn job_replace(backend: &dyn Backend) {
    let c = Case::open(backend, "job-replace").await;
    let (holder, lease) = c.run_job(job_req("sync", "old", Policy::Wait)).await;
    let (_, stop) = c
        .store
        .job_heartbeat(holder.id, lease.id, None)
        .await
        .expect("heartbeat");
    assert_eq!(stop, None, "nobody asked it to stop yet");
    let (replacing, ticket) = c.queue_job(job_req("sync", "new", Policy::Replace)).await;
    let ticket = ticket.ticket.id;
    let (_, stop) = c
        .store
        .job_heartbeat(holder.id, lease.id, None)
        .await
        .expect("heartbeat");
    assert_eq!(stop, Some(StopReason::Replaced));
    assert_eq!(c.job(holder.id).await.stop, Some(StopReason::Replaced));
    let store = Arc::clone(&c.store);
    let waiting = Spawned::new(async move { store.wait_ticket(ticket, LONG_WAIT).await });
    c.let_park("sync", ticket).await;
    assert!(!waiting.is_finished(), "not granted while the holder runs");
    assert_eq!(
        tokens(&c.view("sync").await.holders),
        [lease.token],
        "one holder"
    );
    let cancelled = c
        .finish_job(
            holder.id,
            &lease,
            FinishJob {
                reason: Some("replaced".into()),
                ..done(JobState::Cancelled, Some(143), "")
            },
        )
        .await;
    assert_eq!(cancelled.state, JobState::Cancelled);
    let granted = match waiting
        .join("a replacing run after the holder finished")
        .await
    {
        Ok(TicketStatus::Granted(lease)) => lease,
        other => panic!("the replacing run: expected the grant, got {other:?}"),
    };
    assert!(granted.token > lease.token);
    let job = c.job(replacing.id).await;
    assert_eq!(
        (job.state, job.token),
        (JobState::Running, Some(granted.token))
    );
    assert_eq!(job.stop, None);
}

/// A running job's appended output is kept (its end, at most the limit) and read back while it
/// runs; a cancel of a waiting job takes its ticket out of the queue at once (its parked waiter
/// hears `cancelled`) and records it; a cancel of a running job marks it, the heartbeat and the
/// next append say so, the lock stays held until the runner finishes, and a job that ended
/// otherwise is refused unchanged. A durable store keeps the output and the mark over a
/// restart.
pub async fn job_output_and_cancel(backend: &dyn Backend) {
    let c = Case::open(backend, "job-output-cancel").await;
    let (running, lease) = c.run_job(job_req("build", "runner", Policy::Wait)).await;
    for text in ["compiling\n", "linking ✓\n"] {
        let appended = c
            .store
            .append_job_output(running.id, lease.id, text.to_owned(), 0)
            .await
            .expect("append");
        assert_eq!(appended.stop, None);
    }
    let job = c.job(running.id).await;
    assert_eq!(job.output_tail, "compiling\nlinking ✓\n");
    assert_eq!(job.output_total_bytes, job.output_tail.len() as u64);
    let big = "x".repeat(limits::OUTPUT_APPEND_BYTES_MAX);
    for _ in 0..(limits::OUTPUT_TAIL_BYTES_MAX / big.len() + 1) {
        c.store
            .append_job_output(running.id, lease.id, big.clone(), 0)
            .await
            .expect("append");
    }
    let job = c.job(running.id).await;
    assert_eq!(job.output_tail.len(), limits::OUTPUT_TAIL_BYTES_MAX);
    assert!(
        matches!(
            c.store
                .append_job_output(running.id, LeaseId([7; 16]), "x".into(), 0)
                .await,
            Err(StoreError::Job(JobError::WrongCapability))
        ),
        "another lease may not append"
    );

    let (waiting, ticket) = c.queue_job(job_req("build", "waiter", Policy::Wait)).await;
    let ticket = ticket.ticket.id;
    let store = Arc::clone(&c.store);
    let parked = Spawned::new(async move { store.wait_ticket(ticket, LONG_WAIT).await });
    c.let_park("build", ticket).await;
    let (cancelled, outcome) = c.store.cancel_job(waiting.id).await.expect("cancel");
    assert_eq!(
        (cancelled.state, outcome),
        (JobState::Cancelled, CancelOutcome::Cancelled)
    );
    assert!(
        matches!(
            parked.join("the parked waiter of a cancelled job").await,
            Err(StoreError::Ticket(TicketError::Cancelled))
        ),
        "its waiter hears that its ticket was cancelled"
    );
    assert!(c.view("build").await.waiters.is_empty());

    let (marked, outcome) = c.store.cancel_job(running.id).await.expect("cancel");
    assert_eq!(
        (marked.state, marked.stop, outcome),
        (
            JobState::Running,
            Some(StopReason::Cancelled),
            CancelOutcome::Stopping
        )
    );
    let c = if backend.durable() {
        let c = c.reopen(backend).await;
        let job = c.job(running.id).await;
        assert_eq!(job.output_tail.len(), limits::OUTPUT_TAIL_BYTES_MAX);
        assert_eq!(job.stop, Some(StopReason::Cancelled), "the mark survives");
        assert_eq!(c.job(waiting.id).await.state, JobState::Cancelled);
        c
    } else {
        c
    };
    let (_, stop) = c
        .store
        .job_heartbeat(running.id, lease.id, None)
        .await
        .expect("heartbeat");
    assert_eq!(stop, Some(StopReason::Cancelled));
    assert_eq!(tokens(&c.view("build").await.holders), [lease.token]);
    let stopped = c
        .finish_job(
            running.id,
            &lease,
            done(JobState::Cancelled, Some(143), "stopped\n"),
        )
        .await;
    assert_eq!(stopped.state, JobState::Cancelled);
    assert!(c.view("build").await.holders.is_empty());
    let (done_job, done_lease) = c.run_job(job_req("built", "runner", Policy::Wait)).await;
    c.finish_job(
        done_job.id,
        &done_lease,
        done(JobState::Succeeded, Some(0), ""),
    )
    .await;
    assert!(matches!(
        c.store.cancel_job(done_job.id).await,
        Err(StoreError::Job(JobError::AlreadyEnded(JobState::Succeeded)))
    ));
    assert_eq!(c.job(done_job.id).await.state, JobState::Succeeded);
}

/// A restart keeps jobs: a running job with its lease (it still heartbeats and finishes), a
/// waiting one with its place (it runs when the holder finishes), a finished one with its output,
/// a skipped one, and request ids (a retry gets the same job).
pub async fn restart_keeps_jobs(backend: &dyn Backend) {
    if !backend.durable() {
        return;
    }
    let c = Case::open(backend, "restart-jobs").await;
    let (running, lease) = c
        .run_job(CreateJobArgs {
            request_id: Some("job-req-1".into()),
            batch: Some("batch-1".into()),
            ..job_req("restart-etl", "runner", Policy::Wait)
        })
        .await;
    let (waiting, ticket) = c
        .queue_job(job_req("restart-etl", "waiter", Policy::Wait))
        .await;
    let skipped = c
        .create_job(job_req("restart-etl", "skipper", Policy::Skip))
        .await
        .job;
    let (done_job, done_lease) = c
        .run_job(job_req("restart-done", "done", Policy::Wait))
        .await;
    let output = format!("start\n{}\nend ✓\n", "€".repeat(1_000));
    let finished = c
        .finish_job(
            done_job.id,
            &done_lease,
            done(JobState::Failed, Some(2), &output),
        )
        .await;
    let before = c.store.jobs(every_job()).await.expect("list jobs");
    assert_eq!(before.len(), 4);

    c.advance(2_000);
    let c = c.reopen(backend).await;

    let after = c.store.jobs(every_job()).await.expect("list jobs");
    assert_eq!(after, before, "every job survives as it was");
    assert_eq!(
        c.job(finished.id).await.output_tail,
        output,
        "the output survives"
    );
    assert_eq!(c.job(skipped.id).await.state, JobState::Skipped);
    let view = c.view("restart-etl").await;
    assert_eq!(tokens(&view.holders), [lease.token]);
    assert_eq!(view.holder_jobs, [Some(running.id)]);
    assert_eq!(
        view.waiters.iter().map(|t| t.id).collect::<Vec<_>>(),
        [ticket.ticket.id]
    );
    assert_eq!(view.waiter_jobs, [Some(waiting.id)]);
    let retry = c
        .create_job(CreateJobArgs {
            request_id: Some("job-req-1".into()),
            ..job_req("restart-etl", "runner", Policy::Wait)
        })
        .await;
    assert_eq!(retry.job.id, running.id, "a retry gets the same job");
    assert_eq!(
        retry.lease.map(|l| l.id),
        Some(lease.id),
        "and the same lease"
    );
    let (_, stop) = c
        .store
        .job_heartbeat(running.id, lease.id, None)
        .await
        .expect("a running job heartbeats after the restart");
    assert_eq!(stop, None);
    c.finish_job(
        running.id,
        &lease,
        done(JobState::Succeeded, Some(0), "after"),
    )
    .await;
    let granted = c.granted(ticket.ticket.id).await;
    let job = c.job(waiting.id).await;
    assert_eq!(
        (job.state, job.token),
        (JobState::Running, Some(granted.token))
    );
    assert!(granted.token > lease.token);

    // And what changed after the restart survives the next one.
    let c = c.reopen(backend).await;
    assert_eq!(c.job(running.id).await.output_tail, "after");
    assert_eq!(c.job(waiting.id).await.state, JobState::Running);
    assert_eq!(
        tokens(&c.view("restart-etl").await.holders),
        [granted.token]
    );
}

// ---------------------------------------------------------------------------------------------
// API keys and the audit log: kept as given, nothing interpreted.

fn api_key(id: &str, name: &str, grants: &[(Role, &str)]) -> ApiKey {
    ApiKey {
        quota: Default::default(),
        id: id.to_owned(),
        name: name.to_owned(),
        secret_sha256: format!("{:0>64}", id.trim_start_matches("key_")),
        grants: grants
            .iter()
            .map(|(role, prefix)| KeyGrant {
                role: *role,
                prefix: (*prefix).to_owned(),
            })
            .collect(),
        rate_per_sec: None,
        created_at: START_MS,
        revoked_at: None,
    }
}

fn audit_entry(action: &str, target: &str, at: Millis) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at,
        actor: "key_00000000000000aa".to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        detail: None,
    }
}

fn sorted_keys(mut keys: Vec<ApiKey>) -> Vec<ApiKey> {
    keys.sort_by(|a, b| a.id.cmp(&b.id));
    keys
}

/// Keys are inserted, replaced by id (a revocation is a replace), and listed with revoked ones,
/// every field as given (prefixes with every lock-name character, an empty prefix, several
/// grants, a rate).
pub async fn keys_put_replace_list(backend: &dyn Backend) {
    let c = Case::open(backend, "keys").await;
    assert_eq!(
        c.store.keys().await,
        Ok(vec![]),
        "a fresh store has no keys"
    );
    let admin = api_key("key_0000000000000001", "ops", &[(Role::Admin, "")]);
    let team = ApiKey {
        rate_per_sec: Some(25),
        ..api_key(
            "key_0000000000000002",
            "team a: ci ✓",
            &[
                (Role::Read, ""),
                (Role::Acquire, "team-a/"),
                (Role::Admin, "x:y@z.-_/"),
            ],
        )
    };
    c.store.put_key(admin.clone()).await.expect("put admin");
    c.store.put_key(team.clone()).await.expect("put team");
    assert_eq!(
        sorted_keys(c.store.keys().await.expect("list")),
        vec![admin.clone(), team.clone()]
    );
    let revoked = ApiKey {
        revoked_at: Some(START_MS + 5),
        ..team.clone()
    };
    c.store.put_key(revoked.clone()).await.expect("revoke");
    assert_eq!(
        sorted_keys(c.store.keys().await.expect("list")),
        vec![admin, revoked],
        "a put with a known id replaces the key; revoked keys stay listed"
    );
}

/// The store numbers entries in increasing order, lists them newest first, and pages with
/// `before_seq`.
pub async fn audit_log_order_and_paging(backend: &dyn Backend) {
    let c = Case::open(backend, "audit").await;
    assert_eq!(c.store.audit(None, 10).await, Ok(vec![]));
    let mut kept = Vec::new();
    for index in 0..5u64 {
        let entry = AuditEntry {
            detail: (index % 2 == 0).then(|| format!("detail {index}")),
            ..audit_entry("key.revoke", &format!("key_{index:016}"), START_MS + index)
        };
        let stored = c.store.append_audit(entry.clone()).await.expect("append");
        assert_eq!(
            AuditEntry {
                seq: 0,
                ..stored.clone()
            },
            entry,
            "the entry is kept as given"
        );
        if let Some(previous) = kept.last() {
            let previous: &AuditEntry = previous;
            assert!(stored.seq > previous.seq, "seq increases");
        }
        kept.push(stored);
    }
    let newest_first: Vec<AuditEntry> = kept.iter().rev().cloned().collect();
    assert_eq!(c.store.audit(None, 10).await.expect("all"), newest_first);
    assert_eq!(
        c.store.audit(None, 2).await.expect("two"),
        newest_first[..2]
    );
    assert_eq!(
        c.store
            .audit(Some(newest_first[1].seq), 2)
            .await
            .expect("page"),
        newest_first[2..4],
        "before_seq excludes that entry and newer"
    );
    assert_eq!(
        c.store.audit(Some(kept[0].seq), 10).await.expect("none"),
        vec![]
    );
}

/// A live lease and a queued ticket are found by id; unknown and ended ones are not.
pub async fn lock_of_lease_and_ticket(backend: &dyn Backend) {
    let c = Case::open(backend, "lock-of").await;
    let lease = c.grant(req("team-a/of", "alice")).await;
    let queued = c.enqueue(req("team-a/of", "bob")).await;
    assert_eq!(
        c.store.lock_of_lease(lease.id).await,
        Ok(Some(name("team-a/of")))
    );
    assert_eq!(
        c.store.lock_of_ticket(queued.ticket.id).await,
        Ok(Some(name("team-a/of")))
    );
    assert_eq!(c.store.lock_of_lease(LeaseId([7; 16])).await, Ok(None));
    assert_eq!(c.store.lock_of_ticket(TicketId([7; 16])).await, Ok(None));
    assert_eq!(
        c.store.lock_of_lease(LeaseId(queued.ticket.id.0)).await,
        Ok(None),
        "a ticket id is not a lease id"
    );
    c.store.release(lease.id).await.expect("release");
    assert_eq!(
        c.store.lock_of_ticket(queued.ticket.id).await,
        Ok(Some(name("team-a/of"))),
        "a granted ticket whose lease lives still names its lock"
    );
    c.store
        .cancel_ticket(queued.ticket.id)
        .await
        .expect("cancel");
    assert_eq!(c.store.lock_of_lease(lease.id).await, Ok(None));
    assert_eq!(c.store.lock_of_ticket(queued.ticket.id).await, Ok(None));
}

/// Keys and the audit log survive a restart, and numbering goes on increasing after it.
pub async fn restart_keeps_keys_and_audit(backend: &dyn Backend) {
    if !backend.durable() {
        return;
    }
    let c = Case::open(backend, "restart-keys").await;
    let key = ApiKey {
        rate_per_sec: Some(7),
        revoked_at: Some(START_MS + 1),
        ..api_key("key_00000000000000b1", "b", &[(Role::Acquire, "b/")])
    };
    c.store.put_key(key.clone()).await.expect("put");
    let first = c
        .store
        .append_audit(audit_entry("key.create", "key_00000000000000b1", START_MS))
        .await
        .expect("append");
    let c = c.reopen(backend).await;
    assert_eq!(c.store.keys().await, Ok(vec![key]));
    assert_eq!(c.store.audit(None, 10).await, Ok(vec![first.clone()]));
    let second = c
        .store
        .append_audit(audit_entry(
            "key.revoke",
            "key_00000000000000b1",
            START_MS + 1,
        ))
        .await
        .expect("append after restart");
    assert!(
        second.seq > first.seq,
        "seq goes on increasing after a restart"
    );
}
