//! baton's PostgreSQL store: any number of baton servers sharing one database.
//!
//! What it owns, and how:
//! - **State lives in the database.** There is no lock table in memory. Each operation runs one
//!   transaction on one lock: it locks the lock's row (`SELECT … FOR UPDATE`), reads the lock's
//!   slice of the table ([`baton_core::Slice`]), runs the core's transition on it at the
//!   database's time, writes back the difference and commits. The rules are the core's, the same
//!   for every store; this crate only moves rows ([`slice`]).
//! - **Time comes from the database** (`clock_timestamp()`), read after the row lock, so servers
//!   whose clocks disagree still expire leases at the same instants. Tests may drive a store
//!   with a [`Clock`] instead ([`TimeSource::Clock`]).
//! - **Tokens** come from a database sequence, drawn inside the row lock (see [`schema`] for how
//!   they stay increasing across a fail-over to a promoted standby).
//! - **Wake-ups across servers**: a transition that grants, lapses or cancels a ticket sends
//!   `pg_notify(<schema>_wake, ticket id)` inside its transaction (delivered at commit). Every
//!   server listens on one dedicated connection and wakes the waiters parked on it; a parked
//!   waiter also re-checks every [`RECHECK`], and every waiter re-checks when the listening
//!   connection is re-established, so a lost notification delays a grant's delivery but never
//!   loses it.
//! - **Expiry work is shared**: every server's timer looks for locks with a deadline due and
//!   runs their transition under `FOR UPDATE SKIP LOCKED`, so a lock is handled by one server at
//!   a time; a second look finds nothing due. Every operation also runs the deadlines due on its
//!   own lock first, so an answer never depends on a timer having run.
//! - **Housekeeping** (retention of history, ended tickets, request ids and jobs) runs every 10 s
//!   on whichever server takes a transaction-scoped advisory lock.

mod rows;
pub mod schema;
mod slice;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use baton_core::{
    Acquire, AcquireError, Acquired, Cancelled, Config, CreateJob, FinishJob, HistoryRecord, Job,
    JobCapability, JobCreated, JobError, JobFilter, JobId, Lease, LeaseError, LeaseId, LockName,
    LockView, Millis, Released, Slice, State, StopReason, TicketError, TicketId, TicketStatus,
    TokenError,
};
use baton_store::{
    AcquireArgs, AcquireOutcome, ApiKey, AuditEntry, Clock, CreateJobArgs, KeyGrant, Store,
    StoreError, StoreStats,
};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::Notify;
use tokio_postgres::NoTls;

use crate::rows::{HISTORY_COLUMNS, JOB_COLUMNS, LEASE_COLUMNS, TICKET_COLUMNS, db, t};
use crate::slice::Want;

/// How often a parked waiter re-checks its ticket when no notification came (the safety net
/// under LISTEN/NOTIFY).
pub const RECHECK: Duration = Duration::from_secs(5);
/// How often housekeeping runs.
const HOUSEKEEPING: Duration = Duration::from_secs(10);
/// The timer sleeps at most this long between looks for due deadlines (another server may have
/// created one).
const TIMER_MAX_SLEEP_MS: u64 = 1_000;
/// How often the counts behind `/metrics` and the total limits are refreshed.
const COUNTS_EVERY: Duration = Duration::from_secs(1);
/// At most this many locks are handled per look of the timer.
const DUE_BATCH: i64 = 256;

/// Where the store reads the time.
#[derive(Clone)]
pub enum TimeSource {
    /// The database's clock: every server agrees (production).
    Database,
    /// A clock of the caller's (tests with a manual clock).
    Clock(Arc<dyn Clock>),
}

/// How to open a [`PostgresStore`].
#[derive(Clone)]
pub struct PgOptions {
    /// A libpq-style URL or key/value string: `postgres://user@host:5432/db`.
    pub url: String,
    /// The schema holding baton's tables (created if missing). Servers sharing state use the
    /// same schema; tests isolate themselves with their own.
    pub schema: String,
    /// The lock table's tunables.
    pub config: Config,
    /// Where time comes from.
    pub time: TimeSource,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Run the expiry timer and housekeeping (tests with a manual clock tick by hand).
    pub run_timer: bool,
    /// Shifts this server's own clock (a testing aid; expiry follows the database's clock).
    pub local_skew_ms: i64,
}

impl PgOptions {
    /// Options with the defaults: schema `baton`, database time, 16 connections, timer on.
    pub fn new(url: impl Into<String>) -> PgOptions {
        PgOptions {
            url: url.into(),
            schema: "baton".into(),
            config: Config::default(),
            time: TimeSource::Database,
            pool_size: 16,
            run_timer: true,
            local_skew_ms: 0,
        }
    }
}

/// Parked waiters of this server, by ticket.
#[derive(Default)]
struct Waiters {
    map: Mutex<HashMap<TicketId, Arc<Notify>>>,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TicketId, Arc<Notify>>> {
        match self.map.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn register(&self, id: TicketId) -> Arc<Notify> {
        Arc::clone(
            self.lock()
                .entry(id)
                .or_insert_with(|| Arc::new(Notify::new())),
        )
    }

    /// Forgets the wake-up of `id` when nobody else waits on it here. The caller has dropped
    /// its `Notified` future first (it holds a reference too).
    fn release(&self, id: TicketId, notify: &Arc<Notify>) {
        let mut map = self.lock();
        // The map's reference and ours: nobody else waits on this ticket here.
        if map.get(&id).is_some_and(|held| Arc::ptr_eq(held, notify))
            && Arc::strong_count(notify) <= 2
        {
            map.remove(&id);
        }
    }

    fn wake(&self, id: TicketId) {
        if let Some(notify) = self.lock().remove(&id) {
            notify.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for (_, notify) in self.lock().drain() {
            notify.notify_waiters();
        }
    }
}

struct Inner {
    pool: Pool,
    config: Config,
    time: TimeSource,
    schema: String,
    channel: String,
    waiters: Waiters,
    /// How many waits on each ticket are in progress on this server (see [`Presence`]).
    present: Mutex<HashMap<TicketId, u32>>,
    /// Database time minus local time, in ms, as last measured.
    offset_ms: AtomicI64,
    timer_wake: Notify,
    /// When the timer means to look next (0 while it is looking): a transaction that creates an
    /// earlier deadline wakes it, and only then.
    timer_target: AtomicU64,
    counts: Mutex<(u64, u64, u64)>,
    transitions: AtomicU64,
    commits: AtomicU64,
    commit_micros: AtomicU64,
    listening: AtomicBool,
    local_skew_ms: i64,
}

/// The PostgreSQL store. See the crate documentation.
pub struct PostgresStore {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.inner.schema)
            .finish()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.inner.waiters.wake_all();
    }
}

fn system_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

fn random_id() -> Result<[u8; 16], StoreError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|error| StoreError::Unavailable(format!("no random source: {error}")))?;
    Ok(bytes)
}

/// Whether a failed transaction may simply be run again.
fn retryable(error: &StoreError) -> bool {
    matches!(error, StoreError::Unavailable(text) if text.contains("deadlock detected")
        || text.contains("could not serialize")
        || text.contains("the lock was forgotten meanwhile"))
}

fn pg_config(options: &PgOptions) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = options
        .url
        .parse()
        .map_err(|error| StoreError::Unavailable(format!("invalid database URL: {error}")))?;
    config.options(format!(
        "-c search_path={} -c client_min_messages=warning",
        options.schema
    ));
    if config.get_application_name().is_none() {
        config.application_name("baton");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    Ok(config)
}

impl PostgresStore {
    /// Connects, applies migrations, checks the fencing epoch and starts the listener and (when
    /// asked) the timer.
    pub async fn open(options: PgOptions) -> Result<PostgresStore, StoreError> {
        if !schema::valid_schema(&options.schema) {
            return Err(StoreError::Unavailable(format!(
                "invalid schema name {:?}: use lower-case letters, digits and _",
                options.schema
            )));
        }
        let config = pg_config(&options)?;
        {
            let (mut client, connection) = config
                .connect(NoTls)
                .await
                .map_err(db("cannot connect to the database"))?;
            let driver = tokio::spawn(connection);
            schema::migrate(&mut client, &options.schema).await?;
            schema::ensure_epoch(&mut client).await?;
            drop(client);
            let _ = driver.await;
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .post_create(deadpool_postgres::Hook::async_fn(|client, _| {
                Box::pin(async move {
                    schema::ensure_epoch(client)
                        .await
                        .map_err(|error| deadpool_postgres::HookError::message(error.to_string()))
                })
            }))
            .build()
            .map_err(|error| StoreError::Unavailable(format!("cannot build the pool: {error}")))?;
        let inner = Arc::new(Inner {
            pool,
            config: options.config.clone(),
            time: options.time.clone(),
            channel: format!("{}_wake", options.schema),
            schema: options.schema.clone(),
            waiters: Waiters::default(),
            present: Mutex::new(HashMap::new()),
            offset_ms: AtomicI64::new(0),
            timer_wake: Notify::new(),
            timer_target: AtomicU64::new(0),
            counts: Mutex::new((0, 0, 0)),
            transitions: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            commit_micros: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            local_skew_ms: options.local_skew_ms,
        });
        let mut tasks = Vec::new();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tasks.push(tokio::spawn(listen(
            Arc::downgrade(&inner),
            config,
            Some(ready_tx),
        )));
        // Parking before the listener is up could miss a wake-up from another server; the
        // recheck would still catch it, but start listening first when we can.
        let _ = tokio::time::timeout(Duration::from_secs(10), ready_rx).await;
        inner.refresh_counts().await;
        if options.run_timer {
            tasks.push(tokio::spawn(timer(Arc::downgrade(&inner))));
        }
        Ok(PostgresStore { inner, tasks })
    }

    /// The schema this store uses.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// How many tickets have a wake-up registered on this server (parked waiters); for tests
    /// that check nothing is left behind.
    #[doc(hidden)]
    pub fn parked_tickets(&self) -> usize {
        self.inner.waiters.lock().len()
    }

    /// True while the listening connection is up.
    pub fn listening(&self) -> bool {
        self.inner.listening.load(Ordering::Relaxed)
    }
}

/// Listens for wake-ups from every server, reconnecting after a drop; each (re)connection wakes
/// every local waiter to re-check, since notifications sent meanwhile are lost.
async fn listen(
    inner: Weak<Inner>,
    config: tokio_postgres::Config,
    mut ready: Option<tokio::sync::oneshot::Sender<()>>,
) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let channel = strong.channel.clone();
        drop(strong);
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<String>();
                let driver = tokio::spawn(async move {
                    loop {
                        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                            Some(Ok(tokio_postgres::AsyncMessage::Notification(note))) => {
                                if sender.send(note.payload().to_owned()).is_err() {
                                    return;
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(error)) => {
                                tracing::warn!(%error, "the listening connection failed");
                                return;
                            }
                            None => return,
                        }
                    }
                });
                if let Err(error) = client.batch_execute(&format!("LISTEN {channel}")).await {
                    tracing::warn!(%error, "cannot listen for wake-ups");
                } else {
                    if let Some(strong) = inner.upgrade() {
                        strong.listening.store(true, Ordering::Relaxed);
                        strong.waiters.wake_all();
                    }
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    while let Some(payload) = receiver.recv().await {
                        let Some(strong) = inner.upgrade() else {
                            driver.abort();
                            return;
                        };
                        if let Some(id) = TicketId::parse(&payload) {
                            strong.waiters.wake(id);
                        }
                    }
                }
                driver.abort();
            }
            Err(error) => tracing::warn!(%error, "cannot open the listening connection"),
        }
        if let Some(strong) = inner.upgrade() {
            strong.listening.store(false, Ordering::Relaxed);
            strong.waiters.wake_all();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs due deadlines on time, refreshes the counts, and does housekeeping.
async fn timer(inner: Weak<Inner>) {
    let mut last_housekeeping = tokio::time::Instant::now();
    let mut last_counts = tokio::time::Instant::now();
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if let Err(error) = strong.run_due().await {
            tracing::warn!(%error, "expiry pass failed");
        }
        if last_counts.elapsed() >= COUNTS_EVERY {
            last_counts = tokio::time::Instant::now();
            strong.refresh_counts().await;
        }
        if last_housekeeping.elapsed() >= HOUSEKEEPING {
            last_housekeeping = tokio::time::Instant::now();
            if let Err(error) = strong.housekeeping().await {
                tracing::warn!(%error, "housekeeping failed");
            }
        }
        strong.timer_target.store(0, Ordering::Relaxed);
        let sleep_ms = match strong.next_deadline().await {
            Ok(Some(next)) => {
                let now = strong.now_estimate();
                next.saturating_sub(now).min(TIMER_MAX_SLEEP_MS)
            }
            Ok(None) => TIMER_MAX_SLEEP_MS,
            Err(error) => {
                tracing::warn!(%error, "cannot read the next deadline");
                TIMER_MAX_SLEEP_MS
            }
        };
        strong.timer_target.store(
            strong.now_estimate().saturating_add(sleep_ms),
            Ordering::Relaxed,
        );
        // Holding `strong` while asleep is fine: dropping the store aborts this task.
        let wake = strong.timer_wake.notified();
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(sleep_ms.max(1))) => {}
            () = wake => {}
        }
    }
}

/// What a transaction on one lock produced.
struct Outcome<T> {
    value: T,
}

impl Inner {
    /// This server's own clock (shifted by the configured skew).
    fn local_ms(&self) -> i64 {
        system_ms().saturating_add(self.local_skew_ms)
    }

    fn now_estimate(&self) -> Millis {
        match &self.time {
            TimeSource::Clock(clock) => clock.now_ms(),
            TimeSource::Database => {
                let now = self.local_ms() + self.offset_ms.load(Ordering::Relaxed);
                u64::try_from(now).unwrap_or(0)
            }
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|error| StoreError::Unavailable(format!("no database connection: {error}")))
    }

    async fn db_now(&self, tx: &deadpool_postgres::Transaction<'_>) -> Result<Millis, StoreError> {
        match &self.time {
            TimeSource::Clock(clock) => Ok(clock.now_ms()),
            TimeSource::Database => {
                let statement = tx
                    .prepare_cached("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
                    .await
                    .map_err(db("cannot read the database clock"))?;
                let now: i64 = tx
                    .query_one(&statement, &[])
                    .await
                    .map_err(db("cannot read the database clock"))?
                    .get(0);
                self.offset_ms
                    .store(now - self.local_ms(), Ordering::Relaxed);
                rows::u64_of(now, "clock")
            }
        }
    }

    /// Runs `f` on the slice of `lock` in one transaction, retrying on a deadlock or a
    /// serialization failure. Wakes the local waiters whose tickets changed.
    async fn transact<T>(
        &self,
        lock: &LockName,
        want: &Want,
        f: impl Fn(&mut State, Millis) -> T,
    ) -> Result<T, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.transact_once(lock, want, &f, false).await {
                Ok(Some(outcome)) => return Ok(outcome.value),
                Ok(None) => {
                    return Err(StoreError::Unavailable(
                        "the lock is being handled elsewhere".into(),
                    ));
                }
                Err(error) if attempt < 5 && retryable(&error) => {
                    tracing::debug!(%error, attempt, "retrying a transaction");
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One attempt. With `skip_locked`, answers `None` when another transaction holds the lock.
    async fn transact_once<T>(
        &self,
        lock: &LockName,
        want: &Want,
        f: &impl Fn(&mut State, Millis) -> T,
        skip_locked: bool,
    ) -> Result<Option<Outcome<T>>, StoreError> {
        let started = std::time::Instant::now();
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db("cannot start a transaction"))?;
        let row_lock = if skip_locked {
            slice::RowLock::SkipLocked
        } else {
            slice::RowLock::Wait
        };
        let database_time = matches!(self.time, TimeSource::Database);
        let mut loaded = slice::load(
            &tx,
            lock,
            want,
            row_lock,
            database_time,
            self.now_estimate(),
            false,
        )
        .await?;
        if !loaded.locked && want.create.is_some() && !skip_locked {
            // A new lock (most requests find theirs): create its row, then read again under it.
            loaded = slice::load(
                &tx,
                lock,
                want,
                row_lock,
                database_time,
                self.now_estimate(),
                true,
            )
            .await?;
        }
        if !loaded.locked {
            if skip_locked {
                return Ok(None);
            }
            if want.create.is_some() {
                return Err(StoreError::Unavailable(
                    "the lock was forgotten meanwhile".into(),
                ));
            }
        }
        let created = loaded.created;
        if created {
            let locks = self.counts_now().0;
            if locks >= self.config.locks_max as u64 {
                return Err(AcquireError::LimitReached("too many locks").into());
            }
        }
        let now = match (loaded.now, &self.time) {
            (Some(now), _) => {
                self.offset_ms.store(
                    i64::try_from(now).unwrap_or(i64::MAX) - self.local_ms(),
                    Ordering::Relaxed,
                );
                now
            }
            (None, TimeSource::Clock(clock)) => clock.now_ms(),
            (None, TimeSource::Database) => self.db_now(&tx).await?,
        };
        let before = loaded.slice;
        let mut tokens = loaded.tokens;
        if tokens.is_empty() && due(&before, &self.config, now) {
            let capacity = before
                .locks
                .first()
                .map_or(1, |lock| lock.record.capacity)
                .max(want.create.unwrap_or(1));
            let count = i64::from(capacity).min(before.tickets.len() as i64 + 1);
            tokens = slice::draw_tokens(&tx, count).await?;
        }
        let ticket_seq = loaded.ticket_seq.unwrap_or(1);
        let mut state =
            State::from_slice(self.config.clone(), before.clone(), tokens, ticket_seq, now);
        state.tick(now);
        let value = f(&mut state, now);
        self.transitions.fetch_add(1, Ordering::Relaxed);
        if state.tokens_exhausted() {
            return Err(StoreError::Unavailable(
                "internal error: a transition granted more leases than tokens were drawn".into(),
            ));
        }
        let changes = state.drain_changes();
        let wakeups = state.drain_wakeups();
        let mut after = state.to_slice();
        if created {
            // A lock created for a request that was refused, or that left it idle without a
            // grant, is not kept: a refused acquire creates no lock.
            after.locks.retain(|kept| {
                kept.record.newest_granted > 0
                    || after
                        .leases
                        .iter()
                        .any(|lease| lease.lock == kept.record.name)
                    || after
                        .tickets
                        .iter()
                        .any(|ticket| ticket.lock == kept.record.name)
            });
        }
        let durability = slice::write(&tx, lock, &before, &after, &changes).await?;
        if !wakeups.is_empty() {
            let statement = tx
                .prepare_cached("SELECT pg_notify($1, $2)")
                .await
                .map_err(db("cannot send a wake-up"))?;
            let texts: Vec<String> = wakeups.iter().map(ToString::to_string).collect();
            futures_util::future::try_join_all(texts.iter().map(|text| {
                let statement = &statement;
                let tx = &tx;
                async move { tx.execute(statement, &[&self.channel, text]).await }
            }))
            .await
            .map_err(db("cannot send a wake-up"))?;
        }
        let next_deadline = state.next_deadline();
        if durability == slice::Durability::Lazy && wakeups.is_empty() {
            tx.batch_execute("SET LOCAL synchronous_commit = off")
                .await
                .map_err(db("cannot relax the commit"))?;
        }
        tx.commit().await.map_err(db("cannot commit"))?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        for id in wakeups {
            self.waiters.wake(id);
        }
        if next_deadline.is_some_and(|next| next < self.timer_target.load(Ordering::Relaxed)) {
            // A deadline earlier than the timer's next look: let it look again.
            self.timer_wake.notify_one();
        }
        Ok(Some(Outcome { value }))
    }

    /// The lock named by the one-column query `sql` for the id `$1`, if any.
    async fn lock_by_id(
        &self,
        sql: &str,
        id: &[u8; 16],
        what: &'static str,
    ) -> Result<Option<LockName>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(db(what))?;
        client
            .query_opt(&statement, &[&id.to_vec()])
            .await
            .map_err(db(what))?
            .map(|row| rows::lock_name(row.get(0)))
            .transpose()
    }

    /// The lock a ticket belongs to (queued or recently ended).
    async fn lock_of_ticket(&self, id: TicketId) -> Result<Option<LockName>, StoreError> {
        self.lock_by_id(
            "SELECT lock FROM tickets WHERE id = $1
             UNION ALL SELECT lock FROM ended_tickets WHERE id = $1 LIMIT 1",
            &id.0,
            "cannot find a ticket",
        )
        .await
    }

    /// The lock a lease belongs to (live or ended).
    async fn lock_of_lease(&self, id: LeaseId) -> Result<Option<LockName>, StoreError> {
        self.lock_by_id(
            "SELECT lock FROM leases WHERE id = $1
             UNION ALL SELECT lock FROM history WHERE lease_id = $1 LIMIT 1",
            &id.0,
            "cannot find a lease",
        )
        .await
    }

    async fn job_row(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .await
            .map_err(db("cannot read a job"))?;
        client
            .query_opt(&statement, &[&id.0.to_vec()])
            .await
            .map_err(db("cannot read a job"))?
            .map(|row| rows::job_of(&row))
            .transpose()
    }

    /// Parks on a ticket until it is granted or ends, or `wait` runs out. When time is up and
    /// `keep_place` is false, the ticket is withdrawn and the holders are reported.
    ///
    /// With `armed`, the ticket was just queued by a transition that already extended its lapse
    /// to the end of this wait, and the wake-up was registered before that transition: the first
    /// look is skipped and the wait starts at once (one transaction less per queued request).
    ///
    /// `presence` stands for this wait: if the future is dropped before it answers (the
    /// waiter's connection closed), it tells the lock that the waiter has gone.
    async fn park(
        &self,
        presence: &mut Presence,
        wait: Duration,
        keep_place: bool,
        armed: Option<Armed>,
    ) -> Result<Parked, StoreError> {
        let parked = self.park_present(presence, wait, keep_place, armed).await;
        presence.answered = true;
        parked
    }

    async fn park_present(
        &self,
        presence: &mut Presence,
        wait: Duration,
        keep_place: bool,
        mut armed: Option<Armed>,
    ) -> Result<Parked, StoreError> {
        let id = presence.ticket;
        let lock = &presence.lock.clone();
        let deadline = tokio::time::Instant::now() + wait;
        let lapse_ms = self.config.ticket_lapse_ms;
        let want = Want {
            ended_tickets: vec![id],
            ..Want::default()
        };
        loop {
            if let Some((notify, notified)) = armed.take() {
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                let _ = tokio::time::timeout(remaining.min(RECHECK), notified).await;
                self.waiters.release(id, &notify);
                continue;
            }
            let notify = self.waiters.register(id);
            let mut notified = Box::pin(Arc::clone(&notify).notified_owned());
            notified.as_mut().enable();
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            // Dropped during this transaction, the wait may have collected a grant it never
            // answered.
            presence.collecting = true;
            let result = self
                .transact(lock, &want, |state, now| {
                    let keep_until = now + remaining.as_millis() as u64 + lapse_ms;
                    match state.wait_ticket(id, Some(keep_until), now) {
                        Ok(TicketStatus::Queued(_)) if remaining.is_zero() && !keep_place => {
                            let holders = state.lock_holders(id);
                            let _ = state.cancel_ticket(id, true, now);
                            Ok(Parked::Busy(holders))
                        }
                        Ok(status) => Ok(Parked::Status(status)),
                        Err(error) => Err(error),
                    }
                })
                .await;
            presence.collecting =
                matches!(result, Ok(Ok(Parked::Status(TicketStatus::Granted(_)))));
            let parked = match result {
                Ok(Ok(parked)) => parked,
                Ok(Err(error)) => {
                    drop(notified);
                    self.waiters.release(id, &notify);
                    return Err(error.into());
                }
                Err(error) => {
                    drop(notified);
                    self.waiters.release(id, &notify);
                    return Err(error);
                }
            };
            match parked {
                Parked::Status(TicketStatus::Queued(_)) if !remaining.is_zero() => {
                    let pause = remaining.min(RECHECK);
                    let _ = tokio::time::timeout(pause, notified).await;
                    self.waiters.release(id, &notify);
                }
                other => {
                    drop(notified);
                    self.waiters.release(id, &notify);
                    return Ok(other);
                }
            }
        }
    }

    fn counts_now(&self) -> (u64, u64, u64) {
        match self.counts.lock() {
            Ok(counts) => *counts,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    async fn count_rows(&self) -> Result<(u64, u64, u64), StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM locks), (SELECT count(*) FROM leases),
                        (SELECT count(*) FROM tickets)",
                &[],
            )
            .await
            .map_err(db("cannot count"))?;
        Ok((
            rows::u64_of(row.get(0), "count")?,
            rows::u64_of(row.get(1), "count")?,
            rows::u64_of(row.get(2), "count")?,
        ))
    }

    async fn refresh_counts(&self) {
        match self.count_rows().await {
            Ok(counts) => {
                if let Ok(mut held) = self.counts.lock() {
                    *held = counts;
                }
            }
            Err(error) => tracing::debug!(%error, "cannot refresh counts"),
        }
    }

    /// The earliest deadline in the database.
    async fn next_deadline(&self) -> Result<Option<Millis>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT least((SELECT min(expires_at) FROM leases),
                              (SELECT min(lapse_at) FROM tickets),
                              (SELECT min(delayed_until) FROM locks),
                              (SELECT min(release_at) FROM jobs WHERE release_at IS NOT NULL
                                  AND lease_id IN (SELECT id FROM leases)))",
            )
            .await
            .map_err(db("cannot read deadlines"))?;
        let next: Option<i64> = client
            .query_one(&statement, &[])
            .await
            .map_err(db("cannot read deadlines"))?
            .get(0);
        next.map(|next| rows::u64_of(next, "deadline")).transpose()
    }

    /// Runs the transitions of every lock with a deadline due, skipping locks another
    /// transaction (maybe on another server) is handling.
    async fn run_due(&self) -> Result<(), StoreError> {
        let now = self.now_estimate();
        let names: Vec<String> = {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "SELECT lock FROM leases WHERE expires_at <= $1
                     UNION SELECT lock FROM tickets WHERE lapse_at <= $1
                     UNION SELECT name FROM locks WHERE delayed_until <= $1
                     UNION SELECT lock FROM jobs WHERE release_at <= $1
                         AND lease_id IN (SELECT id FROM leases)
                     LIMIT $2",
                )
                .await
                .map_err(db("cannot find due deadlines"))?;
            client
                .query(&statement, &[&t(now), &DUE_BATCH])
                .await
                .map_err(db("cannot find due deadlines"))?
                .iter()
                .map(|row| row.get(0))
                .collect()
        };
        self.tick_locks(names, true).await
    }

    async fn tick_locks(&self, names: Vec<String>, skip_locked: bool) -> Result<(), StoreError> {
        for name in names {
            let lock = rows::lock_name(&name)?;
            let want = Want {
                grants: true,
                ..Want::default()
            };
            match self
                .transact_once(&lock, &want, &|_state: &mut State, _now| (), skip_locked)
                .await
            {
                Ok(_) => {}
                Err(error) if retryable(&error) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Retention: history, ended tickets, request ids, finished jobs and idle locks. One server
    /// at a time does it.
    async fn housekeeping(&self) -> Result<(), StoreError> {
        let now = self.now_estimate();
        let config = &self.config;
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db("cannot start housekeeping"))?;
        let mine: bool = tx
            .query_one(
                "SELECT pg_try_advisory_xact_lock(hashtext('baton-housekeeping:' || $1::text))",
                &[&self.schema],
            )
            .await
            .map_err(db("cannot take the housekeeping lock"))?
            .get(0);
        if !mine {
            return Ok(());
        }
        let history_horizon = t(now.saturating_sub(config.history_retention_ms));
        let ended_horizon = t(now.saturating_sub(config.ended_retention_ms));
        let job_horizon = t(now.saturating_sub(config.job_retention_ms));
        let per_lock = i64::try_from(config.history_per_lock_max).unwrap_or(i64::MAX);
        let jobs_max = i64::try_from(config.jobs_max).unwrap_or(i64::MAX);
        tx.execute(
            "DELETE FROM history WHERE ended_at < $1",
            &[&history_horizon],
        )
        .await
        .map_err(db("cannot prune history"))?;
        tx.execute(
            "DELETE FROM history WHERE id IN (
                 SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY lock
                     ORDER BY ended_at DESC, id DESC) AS n FROM history) AS ranked
                 WHERE n > $1)",
            &[&per_lock],
        )
        .await
        .map_err(db("cannot prune history"))?;
        tx.execute(
            "DELETE FROM ended_tickets WHERE ended_at < $1",
            &[&ended_horizon],
        )
        .await
        .map_err(db("cannot prune ended tickets"))?;
        tx.execute(
            "DELETE FROM requests r WHERE at < $1
                 AND NOT EXISTS (SELECT 1 FROM leases WHERE id = r.target)
                 AND NOT EXISTS (SELECT 1 FROM tickets WHERE id = r.target)",
            &[&ended_horizon],
        )
        .await
        .map_err(db("cannot prune request ids"))?;
        tx.execute(
            "DELETE FROM jobs WHERE state NOT IN ('queued', 'waiting', 'running')
                 AND finished_at <= $1 AND (release_at IS NULL OR release_at <= $2)",
            &[&job_horizon, &t(now)],
        )
        .await
        .map_err(db("cannot prune jobs"))?;
        tx.execute(
            "DELETE FROM jobs WHERE id IN (
                 SELECT id FROM jobs WHERE state NOT IN ('queued', 'waiting', 'running')
                     AND (release_at IS NULL OR release_at <= $2)
                 ORDER BY created_at DESC, id DESC OFFSET $1)",
            &[&jobs_max, &t(now)],
        )
        .await
        .map_err(db("cannot prune jobs"))?;
        let idle: Vec<String> = tx
            .query(
                "SELECT name FROM locks l WHERE idle_since <= $1
                     AND (delayed_until IS NULL OR delayed_until <= $2)
                     AND NOT EXISTS (SELECT 1 FROM leases WHERE lock = l.name)
                     AND NOT EXISTS (SELECT 1 FROM tickets WHERE lock = l.name)
                 LIMIT 1000",
                &[
                    &t(now.saturating_sub(config.idle_lock_retention_ms)),
                    &t(now),
                ],
            )
            .await
            .map_err(db("cannot find idle locks"))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        tx.commit()
            .await
            .map_err(db("cannot commit housekeeping"))?;
        drop(client);
        // Idle locks are forgotten by the core's own transition, under their row lock.
        self.tick_locks(idle, true).await
    }

    /// Builds a read-only table from the slices of several locks (listings and views).
    async fn view_state(&self, names: &[String]) -> Result<(State, Millis), StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db("cannot start a read"))?;
        let now = self.db_now(&tx).await?;
        let (locks, leases, tickets, jobs) = tokio::try_join!(
            async {
                tx.query(
                    &format!(
                        "SELECT {} FROM locks WHERE name = ANY($1)",
                        rows::LOCK_COLUMNS
                    ),
                    &[&names],
                )
                .await
                .map_err(db("cannot read locks"))
            },
            async {
                tx.query(
                    &format!("SELECT {LEASE_COLUMNS} FROM leases WHERE lock = ANY($1)"),
                    &[&names],
                )
                .await
                .map_err(db("cannot read leases"))
            },
            async {
                tx.query(
                    &format!("SELECT {TICKET_COLUMNS} FROM tickets WHERE lock = ANY($1)"),
                    &[&names],
                )
                .await
                .map_err(db("cannot read tickets"))
            },
            async {
                tx.query(
                    &format!(
                        "SELECT {JOB_COLUMNS} FROM jobs WHERE lock = ANY($1)
                         AND state IN ('queued', 'waiting', 'running')"
                    ),
                    &[&names],
                )
                .await
                .map_err(db("cannot read jobs"))
            },
        )?;
        let slice = Slice {
            locks: locks.iter().map(rows::lock_of).collect::<Result<_, _>>()?,
            leases: leases
                .iter()
                .map(rows::lease_of)
                .collect::<Result<_, _>>()?,
            tickets: tickets
                .iter()
                .map(rows::ticket_of)
                .collect::<Result<_, _>>()?,
            jobs: jobs.iter().map(rows::job_of).collect::<Result<_, _>>()?,
            ..Slice::default()
        };
        Ok((
            State::from_slice(self.config.clone(), slice, Vec::new(), 1, now),
            now,
        ))
    }
}

/// Whether any deadline of the slice is due at `now` (then the transition may grant).
fn due(slice: &Slice, config: &Config, now: Millis) -> bool {
    slice.leases.iter().any(|lease| lease.expires_at <= now)
        || slice.tickets.iter().any(|ticket| ticket.lapse_at <= now)
        || slice.locks.iter().any(|lock| {
            lock.record.delayed_until.is_some_and(|until| until <= now)
                || (slice.leases.is_empty()
                    && slice.tickets.is_empty()
                    && lock.idle_since + config.idle_lock_retention_ms <= now)
        })
        || slice
            .jobs
            .iter()
            .any(|job| job.release_at.is_some_and(|at| at <= now))
}

enum Parked {
    Status(TicketStatus),
    Busy(Vec<Lease>),
}

/// One wait in progress on a ticket, on this server. When it is dropped before its answer was
/// handed back (the handler's future was dropped: the waiter's connection closed), and no other
/// wait on the ticket is in progress here, a transaction on the lock tells the core that the
/// waiter has gone ([`State::waiter_left`]): the ticket lapses one lapse from now unless a
/// waiter comes back (and is skipped when its turn comes), and a grant this wait may have
/// collected but never answered is released and handed on. A drop cannot wait, so the
/// transaction runs in a task of its own; its wake-up tells waits on other servers to look
/// again (and so to keep the ticket alive if theirs are still there).
struct Presence {
    inner: Arc<Inner>,
    lock: LockName,
    ticket: TicketId,
    /// A transaction that may have collected the grant is in flight, or did and the wait has
    /// not answered yet.
    collecting: bool,
    /// The answer (or an error) was handed back: nothing to tell.
    answered: bool,
}

impl Presence {
    fn enter(inner: &Arc<Inner>, lock: LockName, ticket: TicketId) -> Presence {
        *lock_present(&inner.present).entry(ticket).or_insert(0) += 1;
        Presence {
            inner: Arc::clone(inner),
            lock,
            ticket,
            collecting: false,
            answered: false,
        }
    }
}

fn lock_present(
    present: &Mutex<HashMap<TicketId, u32>>,
) -> std::sync::MutexGuard<'_, HashMap<TicketId, u32>> {
    match present.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        let others = {
            let mut present = lock_present(&self.inner.present);
            match present.get_mut(&self.ticket) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    true
                }
                _ => {
                    present.remove(&self.ticket);
                    false
                }
            }
        };
        if self.answered || others {
            return;
        }
        // Outside a runtime (the server is going away) the ticket lapses on its own deadline.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = Arc::clone(&self.inner);
        let lock = self.lock.clone();
        let ticket = self.ticket;
        let collected = self.collecting;
        runtime.spawn(async move {
            let want = Want {
                ended_tickets: vec![ticket],
                grants: true,
                ..Want::default()
            };
            match inner
                .transact(&lock, &want, |state, now| {
                    state.waiter_left(ticket, collected, now)
                })
                .await
            {
                Ok(left) => tracing::debug!(?ticket, ?left, "a waiter went away"),
                Err(error) => {
                    tracing::warn!(%error, "cannot record that a waiter went away; its ticket lapses on its own");
                }
            }
        });
    }
}

/// A wake-up registered before the transaction that queued the ticket.
type Armed = (
    Arc<Notify>,
    std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>>,
);

impl Inner {
    /// Registers the wake-up of a ticket about to be queued, before the transaction that
    /// queues it, so a grant committed right after cannot slip past the wait.
    fn arm(&self, id: TicketId) -> Armed {
        let notify = self.waiters.register(id);
        let mut notified = Box::pin(Arc::clone(&notify).notified_owned());
        notified.as_mut().enable();
        (notify, notified)
    }
}

/// The least text above every text that starts with `prefix` (in byte order), or `None` when
/// every text does (an empty prefix). Prefixes are ASCII, so raising the last byte that can be
/// raised is enough.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).ok();
        }
    }
    None
}

#[async_trait]
impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn now_ms(&self) -> Millis {
        self.inner.now_estimate()
    }

    async fn acquire(&self, args: AcquireArgs) -> Result<AcquireOutcome, StoreError> {
        let (_, leases, waiters) = self.inner.counts_now();
        let config = &self.inner.config;
        if leases >= config.leases_total_max as u64 {
            return Err(AcquireError::LimitReached("too many leases").into());
        }
        let queue = args.queue || !args.wait.is_zero();
        if queue && waiters >= config.waiters_total_max as u64 {
            return Err(AcquireError::LimitReached("too many waiters").into());
        }
        let command = Acquire {
            quota: args.quota,
            lock: args.lock.clone(),
            owner: args.owner,
            owner_key: args.owner_key,
            ttl_ms: args.ttl_ms,
            capacity: args.capacity,
            queue,
            request_id: args.request_id.clone(),
            api_key: args.api_key.clone(),
            lease_id: LeaseId(random_id()?),
            ticket_id: TicketId(random_id()?),
        };
        let want = Want {
            create: Some(args.capacity.unwrap_or(1)),
            requests: args.request_id.into_iter().collect(),
            grants: true,
            queues: queue,
            ..Want::default()
        };
        let waits = !args.wait.is_zero();
        // Before the transaction: dropped during it, the ticket it may queue is nobody's.
        let mut presence =
            waits.then(|| Presence::enter(&self.inner, args.lock.clone(), command.ticket_id));
        let armed = waits.then(|| self.inner.arm(command.ticket_id));
        let wait = args.wait;
        let lapse_ms = self.inner.config.ticket_lapse_ms;
        let acquired = self
            .inner
            .transact(&args.lock, &want, |state, now| {
                let acquired = state.acquire(command.clone(), now);
                if waits && let Ok(Acquired::Queued(queued)) = &acquired {
                    // The park that follows starts waiting at once: keep the ticket for it.
                    let keep_until = now + wait.as_millis() as u64 + lapse_ms;
                    let _ = state.wait_ticket(queued.ticket.id, Some(keep_until), now);
                }
                acquired
            })
            .await;
        if let Some(presence) = &mut presence {
            // From here on it is answered, unless it parks on its own new ticket below.
            presence.answered = !matches!(
                &acquired,
                Ok(Ok(Acquired::Queued(queued))) if queued.ticket.id == command.ticket_id
            );
        }
        let acquired = match acquired {
            Ok(Ok(acquired)) => acquired,
            Ok(Err(error)) => {
                if let Some((notify, notified)) = armed {
                    drop(notified);
                    self.inner.waiters.release(command.ticket_id, &notify);
                }
                return Err(error.into());
            }
            Err(error) => {
                if let Some((notify, notified)) = armed {
                    drop(notified);
                    self.inner.waiters.release(command.ticket_id, &notify);
                }
                return Err(error);
            }
        };
        let armed = match (&acquired, armed) {
            (Acquired::Queued(queued), Some(armed)) if queued.ticket.id == command.ticket_id => {
                Some(armed)
            }
            (_, Some((notify, notified))) => {
                drop(notified);
                self.inner.waiters.release(command.ticket_id, &notify);
                None
            }
            (_, None) => None,
        };
        match acquired {
            Acquired::Granted(lease) => Ok(AcquireOutcome::Granted(lease)),
            Acquired::Busy(holders) => Ok(AcquireOutcome::Busy(holders)),
            Acquired::Queued(queued) => {
                if args.wait.is_zero() {
                    return Ok(AcquireOutcome::Queued(queued));
                }
                // A retry of a request queued before parks on that request's ticket.
                let mut presence = match presence {
                    Some(presence) if presence.ticket == queued.ticket.id => presence,
                    _ => Presence::enter(&self.inner, args.lock.clone(), queued.ticket.id),
                };
                match self
                    .inner
                    .park(&mut presence, args.wait, args.queue, armed)
                    .await?
                {
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

    async fn wait_ticket(&self, id: TicketId, wait: Duration) -> Result<TicketStatus, StoreError> {
        let Some(lock) = self.inner.lock_of_ticket(id).await? else {
            return Err(TicketError::NotFound.into());
        };
        let mut presence = Presence::enter(&self.inner, lock, id);
        match self.inner.park(&mut presence, wait, true, None).await? {
            Parked::Status(status) => Ok(status),
            Parked::Busy(_) => Err(TicketError::Lapsed.into()),
        }
    }

    async fn cancel_ticket(&self, id: TicketId) -> Result<Cancelled, StoreError> {
        let Some(lock) = self.inner.lock_of_ticket(id).await? else {
            return Err(TicketError::NotFound.into());
        };
        let want = Want {
            ended_tickets: vec![id],
            grants: true,
            ..Want::default()
        };
        Ok(self
            .inner
            .transact(&lock, &want, |state, now| {
                state.cancel_ticket(id, false, now)
            })
            .await??)
    }

    async fn cancel_tickets_of_key(&self, key_id: &str) -> Result<usize, StoreError> {
        let ids: Vec<Vec<u8>> = {
            let client = self.inner.client().await?;
            client
                .query("SELECT id FROM tickets WHERE api_key = $1", &[&key_id])
                .await
                .map_err(db("cannot find the tickets of a key"))?
                .iter()
                .map(|row| row.get(0))
                .collect()
        };
        let mut cancelled = 0;
        for id in ids {
            let Ok(id) = <[u8; 16]>::try_from(id.as_slice()) else {
                continue;
            };
            // One lock at a time, as a holder's cancel would: its waiter is woken through
            // NOTIFY on whichever server it is parked. A ticket that ended meanwhile is skipped.
            match self.cancel_ticket(TicketId(id)).await {
                Ok(_) => cancelled += 1,
                Err(StoreError::Ticket(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(cancelled)
    }

    async fn renew(&self, id: LeaseId, ttl_ms: Option<u64>) -> Result<Lease, StoreError> {
        let Some(lock) = self.inner.lock_of_lease(id).await? else {
            return Err(LeaseError::NotFound.into());
        };
        let want = Want {
            ended_leases: vec![id],
            ..Want::default()
        };
        Ok(self
            .inner
            .transact(&lock, &want, |state, now| state.renew(id, ttl_ms, now))
            .await??)
    }

    async fn release(&self, id: LeaseId) -> Result<Released, StoreError> {
        let Some(lock) = self.inner.lock_of_lease(id).await? else {
            return Err(LeaseError::NotFound.into());
        };
        let want = Want {
            ended_leases: vec![id],
            grants: true,
            ..Want::default()
        };
        Ok(self
            .inner
            .transact(&lock, &want, |state, now| state.release(id, now))
            .await??)
    }

    async fn revoke(&self, lock: LockName, token: u64) -> Result<Lease, StoreError> {
        let want = Want {
            grants: true,
            ..Want::default()
        };
        Ok(self
            .inner
            .transact(&lock, &want, |state, now| state.revoke(&lock, token, now))
            .await??)
    }

    async fn fence(&self, lock: LockName, token: u64) -> Result<u64, StoreError> {
        let result: Result<u64, TokenError> = self
            .inner
            .transact(&lock, &Want::default(), |state, now| {
                state.fence(&lock, token, now)
            })
            .await?;
        Ok(result?)
    }

    async fn lock(&self, name: LockName) -> Result<Option<LockView>, StoreError> {
        let (state, _) = self.inner.view_state(&[name.as_str().to_owned()]).await?;
        Ok(state.lock(&name))
    }

    async fn locks(
        &self,
        after: Option<LockName>,
        limit: usize,
    ) -> Result<Vec<LockView>, StoreError> {
        let names: Vec<String> = {
            let client = self.inner.client().await?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let after = after.as_ref().map(|name| name.as_str().to_owned());
            client
                .query(
                    "SELECT name FROM locks WHERE $1::text IS NULL OR name COLLATE \"C\" > $1
                     ORDER BY name COLLATE \"C\" LIMIT $2",
                    &[&after, &limit],
                )
                .await
                .map_err(db("cannot list locks"))?
                .iter()
                .map(|row| row.get(0))
                .collect()
        };
        let (state, _) = self.inner.view_state(&names).await?;
        Ok(state.locks(None, limit))
    }

    async fn locks_with_prefix(
        &self,
        prefix: &str,
        after: Option<LockName>,
        limit: usize,
    ) -> Result<Vec<LockView>, StoreError> {
        let Some(end) = prefix_end(prefix) else {
            return self.locks(after, limit).await;
        };
        let names: Vec<String> = {
            let client = self.inner.client().await?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let start = match &after {
                Some(after) if after.as_str() >= prefix => after.as_str().to_owned(),
                // Just below the prefix, so `>` admits a lock named exactly the prefix.
                _ => prefix.to_owned(),
            };
            let inclusive = after.as_ref().is_none_or(|after| after.as_str() < prefix);
            // A range over the names in byte order (the `locks_name_c` index), not a scan.
            client
                .query(
                    "SELECT name FROM locks
                     WHERE (name COLLATE \"C\" > $1 OR ($3 AND name = $1))
                       AND name COLLATE \"C\" < $2
                     ORDER BY name COLLATE \"C\" LIMIT $4",
                    &[&start, &end, &inclusive, &limit],
                )
                .await
                .map_err(db("cannot list locks"))?
                .iter()
                .map(|row| row.get(0))
                .collect()
        };
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let (state, _) = self.inner.view_state(&names).await?;
        Ok(state.locks(None, limit))
    }

    async fn history(
        &self,
        name: LockName,
        limit: usize,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        let client = self.inner.client().await?;
        let now = self.inner.now_estimate();
        let horizon = t(now.saturating_sub(self.inner.config.history_retention_ms));
        let limit =
            i64::try_from(limit.min(self.inner.config.history_per_lock_max)).unwrap_or(i64::MAX);
        client
            .query(
                &format!(
                    "SELECT {HISTORY_COLUMNS} FROM history WHERE lock = $1 AND ended_at >= $2
                     ORDER BY ended_at DESC, id DESC LIMIT $3"
                ),
                &[&name.as_str(), &horizon, &limit],
            )
            .await
            .map_err(db("cannot read history"))?
            .iter()
            .map(rows::history_of)
            .collect()
    }

    async fn create_job(&self, args: CreateJobArgs) -> Result<JobCreated, StoreError> {
        if let Some(request_id) = &args.request_id {
            let client = self.inner.client().await?;
            let existing = client
                .query_opt(
                    "SELECT lock, name FROM jobs WHERE request_id = $1 LIMIT 1",
                    &[request_id],
                )
                .await
                .map_err(db("cannot look up a request id"))?;
            if let Some(row) = existing {
                let lock = rows::lock_name(row.get(0))?;
                let name: String = row.get(1);
                if lock != args.lock || name != args.name {
                    return Err(JobError::Acquire(AcquireError::RequestIdConflict { lock }).into());
                }
            }
        }
        let job_id = JobId(random_id()?);
        let existing_job: Option<JobId> = match &args.request_id {
            Some(request_id) => {
                let client = self.inner.client().await?;
                client
                    .query_opt(
                        "SELECT id FROM jobs WHERE request_id = $1 LIMIT 1",
                        &[request_id],
                    )
                    .await
                    .map_err(db("cannot look up a request id"))?
                    .and_then(|row| {
                        let bytes: Vec<u8> = row.get(0);
                        <[u8; 16]>::try_from(bytes.as_slice()).ok().map(JobId)
                    })
            }
            None => None,
        };
        let command = CreateJob {
            quota: args.quota,
            job_id,
            name: args.name.clone(),
            lock: args.lock.clone(),
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
            lease_id: LeaseId(random_id()?),
            ticket_id: TicketId(random_id()?),
        };
        let want = Want {
            create: Some(args.capacity.unwrap_or(1)),
            jobs: existing_job.into_iter().collect(),
            once: args.once_per_ms.map(|period| (args.name.clone(), period)),
            grants: true,
            queues: true,
            ..Want::default()
        };
        let created = self
            .inner
            .transact(&args.lock, &want, |state, now| {
                state.create_job(command.clone(), now)
            })
            .await??;
        let ticket = match &created.ticket {
            Some(queued) if !args.wait.is_zero() => queued.ticket.id,
            _ => return Ok(created),
        };
        // A job keeps its place when the wait runs out: its runner goes on waiting.
        let mut presence = Presence::enter(&self.inner, args.lock.clone(), ticket);
        let _ = self
            .inner
            .park(&mut presence, args.wait, true, None)
            .await?;
        let job = created.job.id;
        let want = Want {
            jobs: vec![job],
            ..Want::default()
        };
        self.inner
            .transact(&args.lock, &want, |state, _| {
                state
                    .job(job)
                    .cloned()
                    .map(|job| state.job_view(job))
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
        let Some(job) = self.inner.job_row(id).await? else {
            return Err(JobError::NotFound.into());
        };
        let want = Want {
            jobs: vec![id],
            ended_leases: vec![lease],
            ..Want::default()
        };
        Ok(self
            .inner
            .transact(&job.lock, &want, |state, now| {
                state.job_heartbeat(id, lease, ttl_ms, now)
            })
            .await??)
    }

    async fn finish_job(
        &self,
        id: JobId,
        capability: JobCapability,
        report: FinishJob,
    ) -> Result<Job, StoreError> {
        let Some(job) = self.inner.job_row(id).await? else {
            return Err(JobError::NotFound.into());
        };
        let mut want = Want {
            jobs: vec![id],
            grants: true,
            ..Want::default()
        };
        match &capability {
            JobCapability::Lease(lease) => want.ended_leases.push(*lease),
            JobCapability::Ticket(ticket) => want.ended_tickets.push(*ticket),
        }
        Ok(self
            .inner
            .transact(&job.lock, &want, |state, now| {
                state.finish_job(id, capability, report.clone(), now)
            })
            .await??)
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.inner.job_row(id).await
    }

    async fn jobs(&self, filter: JobFilter) -> Result<Vec<Job>, StoreError> {
        let client = self.inner.client().await?;
        let states: Vec<&str> = filter.states.iter().map(|state| state.as_str()).collect();
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        client
            .query(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs
                     WHERE ($1::text IS NULL OR name = $1)
                       AND (cardinality($2::text[]) = 0 OR state = ANY($2))
                       AND ($3::bigint IS NULL OR created_at >= $3)
                       AND ($4::bigint IS NULL OR created_at < $4)
                       AND ($5::text IS NULL OR batch = $5)
                     ORDER BY created_at DESC, id DESC LIMIT $6"
                ),
                &[
                    &filter.name,
                    &states,
                    &filter.since.map(t),
                    &filter.until.map(t),
                    &filter.batch,
                    &limit,
                ],
            )
            .await
            .map_err(db("cannot list jobs"))?
            .iter()
            .map(rows::job_of)
            .collect()
    }

    async fn tick(&self) -> Result<(), StoreError> {
        self.inner.run_due().await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let client = self.inner.client().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(db("the database does not answer"))?;
        Ok(())
    }

    async fn counts(&self) -> (usize, usize, usize) {
        let (locks, leases, waiters) = match self.inner.count_rows().await {
            Ok(counts) => counts,
            Err(_) => self.inner.counts_now(),
        };
        (locks as usize, leases as usize, waiters as usize)
    }

    async fn put_key(&self, key: ApiKey) -> Result<(), StoreError> {
        let client = self.inner.client().await?;
        let rate = key
            .rate_per_sec
            .map(|rate| i32::try_from(rate).unwrap_or(i32::MAX));
        client
            .execute(
                "INSERT INTO api_keys (id, name, secret_sha256, grants, rate_per_sec, created_at,
                                       revoked_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name,
                    secret_sha256 = EXCLUDED.secret_sha256, grants = EXCLUDED.grants,
                    rate_per_sec = EXCLUDED.rate_per_sec, created_at = EXCLUDED.created_at,
                    revoked_at = EXCLUDED.revoked_at",
                &[
                    &key.id,
                    &key.name,
                    &key.secret_sha256,
                    &KeyGrant::to_lines(&key.grants),
                    &rate,
                    &t(key.created_at),
                    &key.revoked_at.map(t),
                ],
            )
            .await
            .map_err(db("cannot store an API key"))?;
        Ok(())
    }

    async fn keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let client = self.inner.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT id, name, secret_sha256, grants, rate_per_sec, created_at, revoked_at
                 FROM api_keys ORDER BY created_at, id",
            )
            .await
            .map_err(db("cannot read API keys"))?;
        client
            .query(&statement, &[])
            .await
            .map_err(db("cannot read API keys"))?
            .iter()
            .map(|row| {
                let grants: &str = row.get(3);
                let rate: Option<i32> = row.get(4);
                Ok(ApiKey {
                    quota: Default::default(),
                    id: row.get(0),
                    name: row.get(1),
                    secret_sha256: row.get(2),
                    grants: KeyGrant::from_lines(grants)
                        .map_err(|line| rows::corrupt("key grant", line))?,
                    rate_per_sec: rate
                        .map(|rate| {
                            u32::try_from(rate).map_err(|_| rows::corrupt("key rate", rate))
                        })
                        .transpose()?,
                    created_at: rows::u64_of(row.get(5), "time")?,
                    revoked_at: row
                        .get::<_, Option<i64>>(6)
                        .map(|at| rows::u64_of(at, "time"))
                        .transpose()?,
                })
            })
            .collect()
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<AuditEntry, StoreError> {
        let client = self.inner.client().await?;
        let seq: i64 = client
            .query_one(
                "INSERT INTO audit_log (at, actor, action, target, detail)
                 VALUES ($1, $2, $3, $4, $5) RETURNING seq",
                &[
                    &t(entry.at),
                    &entry.actor,
                    &entry.action,
                    &entry.target,
                    &entry.detail,
                ],
            )
            .await
            .map_err(db("cannot append to the audit log"))?
            .get(0);
        Ok(AuditEntry {
            seq: rows::u64_of(seq, "audit seq")?,
            ..entry
        })
    }

    async fn audit(
        &self,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let client = self.inner.client().await?;
        let before = before_seq.map(rows::i64_of);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        client
            .query(
                "SELECT seq, at, actor, action, target, detail FROM audit_log
                 WHERE $1::bigint IS NULL OR seq < $1 ORDER BY seq DESC LIMIT $2",
                &[&before, &limit],
            )
            .await
            .map_err(db("cannot read the audit log"))?
            .iter()
            .map(|row| {
                Ok(AuditEntry {
                    seq: rows::u64_of(row.get(0), "audit seq")?,
                    at: rows::u64_of(row.get(1), "time")?,
                    actor: row.get(2),
                    action: row.get(3),
                    target: row.get(4),
                    detail: row.get(5),
                })
            })
            .collect()
    }

    async fn lock_of_lease(&self, id: LeaseId) -> Result<Option<LockName>, StoreError> {
        // Live leases only: an ended one authorizes nothing.
        self.inner
            .lock_by_id(
                "SELECT lock FROM leases WHERE id = $1",
                &id.0,
                "cannot find a lease",
            )
            .await
    }

    async fn lock_of_ticket(&self, id: TicketId) -> Result<Option<LockName>, StoreError> {
        // Queued, or granted with its lease still live (a wait would hand it out).
        self.inner
            .lock_by_id(
                "SELECT lock FROM tickets WHERE id = $1
                 UNION ALL
                 SELECT e.lock FROM ended_tickets e JOIN leases l ON l.id = e.lease_id
                 WHERE e.id = $1 AND e.end_kind = 'granted'
                 LIMIT 1",
                &id.0,
                "cannot find a ticket",
            )
            .await
    }

    fn stats(&self) -> StoreStats {
        let (locks, leases, waiters) = self.inner.counts_now();
        StoreStats {
            locks,
            leases,
            waiters,
            commits: self.inner.commits.load(Ordering::Relaxed),
            committed_changes: 0,
            commit_micros: self.inner.commit_micros.load(Ordering::Relaxed),
            transitions: self.inner.transitions.load(Ordering::Relaxed),
        }
    }
}

pub mod testing {
    //! Helpers for tests that need a real PostgreSQL: where it is, and skipping plainly when it
    //! is not there (unless `BATON_REQUIRE_POSTGRES=1`, as `.ci/run` sets, makes that a failure).

    use std::io::Write as _;
    use std::time::Duration;

    /// The database tests use: `BATON_TEST_DATABASE_URL`, or the local server on 127.0.0.1:5432
    /// with trust authentication and a database `test`.
    pub fn database_url() -> String {
        std::env::var("BATON_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    /// `Some(url)` when the test database answers. Otherwise says on the terminal which test is
    /// skipped and why (written past the test harness's capture), and gives `None`; or panics
    /// when `BATON_REQUIRE_POSTGRES=1`.
    pub async fn available(test: &str) -> Option<String> {
        let url = database_url();
        let reason = match url.parse::<tokio_postgres::Config>() {
            Err(error) => format!("invalid BATON_TEST_DATABASE_URL: {error}"),
            Ok(mut config) => {
                config.connect_timeout(Duration::from_secs(3));
                match config.connect(tokio_postgres::NoTls).await {
                    Ok((client, connection)) => {
                        let driver = tokio::spawn(connection);
                        let ok = client.simple_query("SELECT 1").await.is_ok();
                        drop(client);
                        let _ = driver.await;
                        if ok {
                            return Some(url);
                        }
                        "the server does not answer queries".to_owned()
                    }
                    Err(error) => error.to_string(),
                }
            }
        };
        if std::env::var("BATON_REQUIRE_POSTGRES").is_ok_and(|value| value == "1") {
            panic!("PostgreSQL is required (BATON_REQUIRE_POSTGRES=1) but {url} failed: {reason}");
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: no PostgreSQL at {url} ({reason}); set BATON_TEST_DATABASE_URL, \
             or BATON_REQUIRE_POSTGRES=1 to make this a failure"
        );
        None
    }

    /// A schema name unique to this process and `key`.
    pub fn schema_for(key: &str) -> String {
        let key: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("baton_test_{}_{key}", std::process::id())
    }

    /// Drops a schema and everything in it (a test's clean-up). Blocks; runs its own runtime
    /// so it works from `Drop`.
    pub fn drop_schema(url: &str, schema: &str) {
        let url = url.to_owned();
        let statement = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    let driver = tokio::spawn(connection);
                    let _ = client.batch_execute(&statement).await;
                    drop(client);
                    let _ = driver.await;
                }
            });
        })
        .join();
    }
}
