//! Leadership: one active server per database, the others standbys.
//!
//! Every server given the same database and schema runs one [`Engine`] at most, and only while
//! it is the **active** server. The active is elected through one row of the `leader` table
//! (`node`, `url`, `epoch`, `expires_at`), by the database's clock:
//!
//! - **Campaign.** A standby takes the row only when its lease has expired by the database's
//!   clock (`expires_at <= clock_timestamp()`), and takes it with `epoch + 1`. Two standbys
//!   campaigning at once serialize on the row; one wins.
//! - **Fencing.** The winner opens its engine with a [`Fence`] of its node and epoch: every
//!   commit of that engine first checks the row, inside the same transaction, with
//!   `FOR SHARE`, so a commit and a takeover are ordered by the database. A deposed active can
//!   never commit again: its epoch is gone.
//! - **Renewal and the deadline by the active's own clock.** The active renews the row every
//!   `ttl / 4` (`expires_at = clock_timestamp() + ttl`, only while it still holds it unexpired).
//!   It counts its leadership as valid until `sent + ttl - drift`, where `sent` is when it
//!   *sent* the renewal that succeeded (monotonic clock) and `drift` a margin for clock rates.
//!   The database ran that renewal after it was sent, so the row expires later than this local
//!   deadline in real time. Every answer is checked against the deadline after the operation
//!   ran and before it is returned ([`HaStore`]): after the deadline the server answers
//!   `not_active` and answers nothing from its table, even if it was paused (SIGSTOP) and has
//!   not yet noticed that it lost the row.
//! - **Takeover is conservative.** A new active starts only after the row expired by the
//!   database's clock, loads the table, and recovers every lease as renewed at its own load
//!   time (`State::restore`). A renewal the old active answered was answered before its local
//!   deadline, so before the row expired, so before the new active loaded: the deadline the
//!   old active promised (answer time + lease ttl) is earlier than the one the new active
//!   keeps (load time + lease ttl). A grant is acknowledged only after its commit, and that
//!   commit was fenced, so it is in what the new active loads. Nothing acknowledged is lost and
//!   no deadline is shortened (G2), tokens stay increasing (the counter is in every commit, G3).
//! - **Stepping down.** An active that cannot renew before its deadline, whose renewal finds the
//!   row taken, or whose engine stopped taking writes (the database failed a commit for good)
//!   drops its engine and becomes a standby again; it campaigns like any other. Waits in flight
//!   on the dropped engine end with `not_active`, and clients with every server's URL go on to
//!   the new active (the ticket, being durable, keeps its place).
//!
//! A standby answers every lock and job request with [`StoreError::NotActive`] naming the
//! active's advertised URL; it reads API keys and the audit log straight from the database so
//! that it can authenticate those requests and its keys stay current.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use baton_core::{
    CancelOutcome, Cancelled, FinishJob, HistoryRecord, Job, JobCapability, JobCreated, JobFilter,
    JobId, Lease, LeaseId, LockName, LockView, Millis, OutputAppended, Released, StopReason,
    TicketId, TicketStatus,
};
use baton_store::leadership::{self, AfterRenewal, LeaderTiming, Renewal};
use baton_store::{
    AcquireArgs, AcquireOutcome, AcquireSetArgs, AcquireSetOutcome, ApiKey, AuditEntry, Clock,
    CreateJobArgs, Engine, EngineOptions, Leadership, Persister, Store, StoreError, StoreStats,
};
use tokio::sync::watch;
use tokio_postgres::NoTls;

use crate::PgOptions;
use crate::persist::{Fence, PgPersister};

/// The leadership lease by default: a fail-over takes about this long plus a campaign round.
pub const DEFAULT_LEADER_TTL: Duration = Duration::from_secs(4);
/// The shortest leadership lease accepted.
pub const MIN_LEADER_TTL: Duration = Duration::from_millis(1000);
/// The longest one statement of the leadership connection may take before it is abandoned
/// and the connection made again.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);

/// How a server takes part in its database's leadership.
#[derive(Debug, Clone)]
pub struct LeaderOptions {
    /// This server's id, unique per process (random).
    pub node: String,
    /// The URL clients are told to use while this server is the active one.
    pub url: String,
    /// The leadership lease.
    pub ttl: Duration,
}

impl LeaderOptions {
    /// Options with a random node id and the default lease.
    pub fn new(url: impl Into<String>) -> Result<LeaderOptions, StoreError> {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes)
            .map_err(|error| StoreError::Unavailable(format!("no random source: {error}")))?;
        let node = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        Ok(LeaderOptions {
            node,
            url: url.into(),
            ttl: DEFAULT_LEADER_TTL,
        })
    }

    /// The lease's periods (`baton_store::leadership`, shared with the simulator).
    pub fn timing(&self) -> LeaderTiming {
        LeaderTiming { ttl: self.ttl }
    }

    /// How often the active renews: four renewals fit in one lease.
    pub fn renew_every(&self) -> Duration {
        self.timing().renew_every()
    }

    /// The margin taken off the local deadline for clocks that run at different rates and for
    /// the time between the check and the answer leaving: a tenth of the lease, at least 100 ms.
    pub fn drift(&self) -> Duration {
        self.timing().drift()
    }

    /// How often a standby looks at the row.
    pub fn campaign_every(&self) -> Duration {
        self.timing().campaign_every()
    }

    /// The local deadline after a campaign or renewal sent at `sent` that succeeded.
    fn deadline(&self, gate: &Gate, sent: Instant) -> Instant {
        gate.base
            + self
                .timing()
                .deadline(sent.saturating_duration_since(gate.base))
    }
}

/// Opens the engine of a new active, and the reader a standby uses. Blocking calls: the store
/// runs them on a blocking thread.
pub trait EngineFactory: Send + Sync + 'static {
    /// Loads the table and opens an engine whose every commit is fenced by `fence`.
    fn open_active(&self, fence: Fence) -> Result<Engine, StoreError>;

    /// A persister that reads API keys and the audit log (never fenced: it writes nothing).
    fn reader(&self) -> Result<Box<dyn Persister>, StoreError>;
}

/// Opens engines over [`PgPersister`]s: the factory `baton server` gives [`HaStore`].
pub struct PgEngineFactory {
    /// Where and how to connect.
    pub options: PgOptions,
    /// How the engine runs.
    pub engine: EngineOptions,
    /// The engine's clock.
    pub clock: Arc<dyn Clock>,
}

impl EngineFactory for PgEngineFactory {
    fn open_active(&self, fence: Fence) -> Result<Engine, StoreError> {
        let persister = PgPersister::connect(&self.options, Some(fence))?;
        Engine::open(
            Box::new(persister),
            Arc::clone(&self.clock),
            self.engine.clone(),
        )
        .map_err(|error| StoreError::Unavailable(format!("cannot recover the table: {error}")))
    }

    fn reader(&self) -> Result<Box<dyn Persister>, StoreError> {
        Ok(Box::new(PgPersister::connect(&self.options, None)?))
    }
}

/// The local deadline of the leadership, by the monotonic clock.
struct Gate {
    base: Instant,
    /// Nanoseconds after `base` until which this server may answer; 0 = not at all.
    until_ns: AtomicU64,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            base: Instant::now(),
            until_ns: AtomicU64::new(0),
        }
    }

    fn open_until(&self, deadline: Instant) {
        let nanos = u64::try_from(deadline.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        self.until_ns.store(nanos, Ordering::SeqCst);
    }

    fn close(&self) {
        self.until_ns.store(0, Ordering::SeqCst);
    }

    fn is_open(&self) -> bool {
        let until = self.until_ns.load(Ordering::SeqCst);
        let until = (until != 0).then(|| Duration::from_nanos(until));
        leadership::gate_open(until, self.base.elapsed())
    }
}

/// What this server is right now.
#[derive(Clone)]
struct Current {
    /// The engine, while active.
    engine: Option<Arc<Engine>>,
    /// The newest epoch known (this server's own while active).
    epoch: i64,
    /// The active's URL, when known.
    active_url: Option<String>,
    /// Bumped at every change of role, so that operations in flight learn of it.
    generation: u64,
}

struct Shared {
    options: LeaderOptions,
    current: RwLock<Current>,
    gate: Gate,
    changed: watch::Sender<u64>,
    factory: Arc<dyn EngineFactory>,
    reader: Mutex<Option<Box<dyn Persister>>>,
    takeovers: AtomicU64,
}

impl Shared {
    fn current(&self) -> Current {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn update(&self, change: impl FnOnce(&mut Current)) {
        let generation = {
            let mut current = match self.current.write() {
                Ok(current) => current,
                Err(poisoned) => poisoned.into_inner(),
            };
            change(&mut current);
            current.generation += 1;
            current.generation
        };
        self.changed.send_replace(generation);
    }

    fn not_active(&self) -> StoreError {
        let current = self.current();
        // This server's own URL is never "the active" while it does not answer: that is a
        // previous process on the same address, or its own expired leadership.
        let active = current.active_url.filter(|url| *url != self.options.url);
        StoreError::NotActive { active }
    }

    /// Drops the engine (on a blocking thread: its committer may be stuck in a commit on a
    /// dead connection) and becomes a standby.
    fn step_down(&self, why: &str) {
        self.gate.close();
        let mut dropped = None;
        self.update(|current| {
            dropped = current.engine.take();
            current.active_url = None;
        });
        if let Some(engine) = dropped {
            tracing::warn!(node = %self.options.node, why, "stepping down");
            tokio::task::spawn_blocking(move || drop(engine));
        }
    }
}

/// A [`Store`] that is an [`Engine`] while this server is the active one of its database, and
/// a standby otherwise. See the module documentation.
pub struct HaStore {
    shared: Arc<Shared>,
    config: tokio_postgres::Config,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for HaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaStore")
            .field("node", &self.shared.options.node)
            .finish()
    }
}

impl Drop for HaStore {
    fn drop(&mut self) {
        self.task.abort();
        if self.shared.current().engine.is_some() {
            self.shared.step_down("the store is dropped");
        }
    }
}

impl HaStore {
    /// Starts taking part in the leadership of the database at `url` (schema `schema`):
    /// connects, runs one campaign (so a lone server is active when this returns) and keeps
    /// campaigning or renewing in the background.
    pub async fn start(
        url: &str,
        schema: &str,
        options: LeaderOptions,
        factory: Arc<dyn EngineFactory>,
    ) -> Result<HaStore, StoreError> {
        if options.ttl < MIN_LEADER_TTL {
            return Err(StoreError::Unavailable(format!(
                "the leadership lease must be at least {} ms",
                MIN_LEADER_TTL.as_millis()
            )));
        }
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|error| StoreError::Unavailable(format!("invalid database URL: {error}")))?;
        config.options(format!(
            "-c search_path={schema} -c client_min_messages=warning"
        ));
        config.connect_timeout(STATEMENT_TIMEOUT);
        config.application_name("baton leadership");
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            options,
            current: RwLock::new(Current {
                engine: None,
                epoch: 0,
                active_url: None,
                generation: 0,
            }),
            gate: Gate::new(),
            changed,
            factory,
            reader: Mutex::new(None),
            takeovers: AtomicU64::new(0),
        });
        // The reader's connection applies the schema's migrations (the leadership row among
        // them) before the first campaign.
        let reader = {
            let factory = Arc::clone(&shared.factory);
            tokio::task::spawn_blocking(move || factory.reader())
                .await
                .map_err(|error| {
                    StoreError::Unavailable(format!("a store task failed: {error}"))
                })??
        };
        if let Ok(mut slot) = shared.reader.lock() {
            *slot = Some(reader);
        }
        let mut elector = Elector {
            shared: Arc::clone(&shared),
            config: config.clone(),
            client: None,
        };
        if let Err(error) = elector.round().await {
            tracing::warn!(%error, "the first leadership round failed; retrying in the background");
        }
        let task = tokio::spawn(async move { elector.run().await });
        Ok(HaStore {
            shared,
            config,
            task,
        })
    }

    /// This server's node id.
    pub fn node(&self) -> &str {
        &self.shared.options.node
    }

    /// The engine if this server may answer from it now.
    fn engine(&self) -> Result<(Arc<Engine>, u64), StoreError> {
        let current = self.shared.current();
        match current.engine {
            Some(engine) if self.shared.gate.is_open() => Ok((engine, current.generation)),
            _ => Err(self.shared.not_active()),
        }
    }

    /// Runs `op` on the engine while this server is active; ends it with `not_active` when the
    /// role changes meanwhile, and answers nothing when the leadership's local deadline passed
    /// while it ran.
    async fn on_active<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<Engine>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let (engine, generation) = self.engine()?;
        let mut changed = self.shared.changed.subscribe();
        let result = tokio::select! {
            result = op(engine) => result,
            () = async {
                while *changed.borrow_and_update() == generation {
                    if changed.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            } => return Err(self.shared.not_active()),
        };
        if !self.shared.gate.is_open() || self.shared.current().generation != generation {
            return Err(self.shared.not_active());
        }
        result
    }

    /// Runs `op` on the standby's reader (keys and audit).
    async fn on_reader<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut dyn Persister) -> Result<T, baton_store::PersistError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let mut reader = shared
                .reader
                .lock()
                .map_err(|_| StoreError::Unavailable("the reader's mutex is poisoned".into()))?;
            if reader.is_none() {
                *reader = Some(shared.factory.reader()?);
            }
            let Some(persister) = reader.as_mut() else {
                return Err(StoreError::Unavailable("no reader".into()));
            };
            let result = op(persister.as_mut());
            if result.is_err() {
                // Connect again next time.
                *reader = None;
            }
            result.map_err(|error| StoreError::Unavailable(error.0))
        })
        .await
        .map_err(|error| StoreError::Unavailable(format!("a store task failed: {error}")))?
    }
}

/// The background task: campaigns while standby, renews while active.
struct Elector {
    shared: Arc<Shared>,
    config: tokio_postgres::Config,
    client: Option<tokio_postgres::Client>,
}

/// What one campaign found.
enum Campaign {
    Won { epoch: i64 },
    Lost { epoch: i64, url: Option<String> },
}

impl Elector {
    async fn run(&mut self) {
        loop {
            let pause = match self.round().await {
                Ok(pause) => pause,
                Err(error) => {
                    tracing::warn!(%error, "leadership round failed");
                    self.client = None;
                    self.shared.options.campaign_every()
                }
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// One round: a renewal while active, a campaign while standby. Returns how long to wait
    /// before the next.
    async fn round(&mut self) -> Result<Duration, StoreError> {
        let options = self.shared.options.clone();
        let current = self.shared.current();
        if let Some(engine) = current.engine {
            if let Err(error) = engine.ready().await {
                self.shared.step_down(leadership::ENGINE_STOPPED);
                self.resign(current.epoch).await;
                return Err(error);
            }
            let base = self.shared.gate.base;
            let sent = Instant::now();
            let outcome = self.renew(current.epoch).await;
            let renewal = match &outcome {
                Ok(true) => Renewal::Renewed,
                Ok(false) => Renewal::Taken,
                Err(_) => Renewal::Failed,
            };
            let sent = sent.saturating_duration_since(base);
            match leadership::after_renewal(
                &options.timing(),
                sent,
                renewal,
                self.shared.gate.is_open(),
            ) {
                AfterRenewal::Extend(deadline) => {
                    let gate = &self.shared.gate;
                    gate.open_until(gate.base + deadline);
                }
                AfterRenewal::StepDown(why) => self.shared.step_down(why),
                AfterRenewal::Keep => {}
            }
            match (outcome, renewal) {
                (Err(error), _) => Err(error),
                (Ok(_), Renewal::Taken) => Ok(Duration::ZERO),
                (Ok(_), _) => Ok(options.renew_every()),
            }
        } else {
            let sent = Instant::now();
            match self.campaign().await? {
                Campaign::Won { epoch } => {
                    let deadline = options.deadline(&self.shared.gate, sent);
                    self.take_over(epoch, deadline).await?;
                    Ok(options.renew_every())
                }
                Campaign::Lost { epoch, url } => {
                    let current = self.shared.current();
                    if current.epoch != epoch || current.active_url != url {
                        self.shared.update(|current| {
                            current.epoch = epoch;
                            current.active_url = url;
                        });
                    }
                    Ok(options.campaign_every())
                }
            }
        }
    }

    /// Opens the engine of epoch `epoch`, renewing the leadership while the table loads.
    async fn take_over(&mut self, epoch: i64, deadline: Instant) -> Result<(), StoreError> {
        let options = self.shared.options.clone();
        self.shared.gate.close();
        let factory = Arc::clone(&self.shared.factory);
        let fence = Fence {
            node: options.node.clone(),
            epoch,
        };
        let started = Instant::now();
        let mut opening = tokio::task::spawn_blocking(move || factory.open_active(fence));
        let mut deadline = deadline;
        let engine = loop {
            let renew_at = tokio::time::Instant::from_std(
                deadline
                    .checked_sub(options.timing().renew_while_loading_before())
                    .unwrap_or(deadline),
            );
            tokio::select! {
                opened = &mut opening => {
                    break opened.map_err(|error| {
                        StoreError::Unavailable(format!("opening the engine failed: {error}"))
                    })?;
                }
                () = tokio::time::sleep_until(renew_at) => {
                    let sent = Instant::now();
                    if let Ok(true) = self.renew(epoch).await {
                        deadline = options.deadline(&self.shared.gate, sent);
                    } else if Instant::now() >= deadline {
                        tracing::warn!("lost the leadership while loading the table");
                        opening.abort();
                        return Err(StoreError::Unavailable(
                            "lost the leadership while loading the table".into(),
                        ));
                    }
                }
            }
        };
        let engine = match engine {
            Ok(engine) => Arc::new(engine),
            Err(error) => {
                tracing::error!(%error, "cannot open the engine as the active server");
                self.resign(epoch).await;
                return Err(error);
            }
        };
        // The load may have taken a while: renew once more so the deadline is fresh.
        let sent = Instant::now();
        if let Ok(true) = self.renew(epoch).await {
            deadline = options.deadline(&self.shared.gate, sent);
        }
        if Instant::now() >= deadline {
            tokio::task::spawn_blocking(move || drop(engine));
            return Err(StoreError::Unavailable(
                "the leadership expired while the table loaded".into(),
            ));
        }
        let url = options.url.clone();
        self.shared.update(|current| {
            current.engine = Some(engine);
            current.epoch = epoch;
            current.active_url = Some(url);
        });
        self.shared.gate.open_until(deadline);
        self.shared.takeovers.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            node = %options.node,
            epoch,
            load_ms = started.elapsed().as_millis() as u64,
            "now the active server"
        );
        Ok(())
    }

    async fn client(&mut self) -> Result<&tokio_postgres::Client, StoreError> {
        if self
            .client
            .as_ref()
            .is_some_and(tokio_postgres::Client::is_closed)
        {
            self.client = None;
        }
        if self.client.is_none() {
            let (client, connection) =
                tokio::time::timeout(STATEMENT_TIMEOUT, self.config.connect(NoTls))
                    .await
                    .map_err(|_| {
                        StoreError::Unavailable("connecting to the database timed out".into())
                    })?
                    .map_err(|error| {
                        StoreError::Unavailable(format!("cannot connect to the database: {error}"))
                    })?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "the leadership connection ended");
                }
            });
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("no leadership connection".into()))
    }

    /// Runs one statement with a timeout; a timeout or failure drops the connection.
    async fn query(
        &mut self,
        statement: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let client = self.client().await?;
        let outcome =
            tokio::time::timeout(STATEMENT_TIMEOUT, client.query(statement, params)).await;
        match outcome {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(error)) => {
                self.client = None;
                let detail = match error.as_db_error() {
                    Some(db) => db.message().to_owned(),
                    None => error.to_string(),
                };
                Err(StoreError::Unavailable(format!(
                    "a leadership statement failed: {detail}"
                )))
            }
            Err(_) => {
                self.client = None;
                Err(StoreError::Unavailable(
                    "a leadership statement timed out".into(),
                ))
            }
        }
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.shared.options.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    async fn campaign(&mut self) -> Result<Campaign, StoreError> {
        let node = self.shared.options.node.clone();
        let url = self.shared.options.url.clone();
        let ttl = self.ttl_ms();
        let won = self
            .query(
                "INSERT INTO leader AS l (id, node, url, epoch, expires_at) \
                 VALUES (1, $1, $2, 1, clock_timestamp() + $3::bigint * interval '1 millisecond') \
                 ON CONFLICT (id) DO UPDATE \
                 SET node = EXCLUDED.node, url = EXCLUDED.url, epoch = l.epoch + 1, \
                     expires_at = EXCLUDED.expires_at \
                 WHERE l.expires_at <= clock_timestamp() \
                 RETURNING epoch",
                &[&node, &url, &ttl],
            )
            .await?;
        if let Some(row) = won.first() {
            let epoch: i64 = row.get(0);
            return Ok(Campaign::Won { epoch });
        }
        let rows = self
            .query(
                "SELECT epoch, url, expires_at > clock_timestamp() FROM leader WHERE id = 1",
                &[],
            )
            .await?;
        Ok(match rows.first() {
            Some(row) => {
                let live: bool = row.get(2);
                Campaign::Lost {
                    epoch: row.get(0),
                    url: live.then(|| row.get(1)),
                }
            }
            None => Campaign::Lost {
                epoch: 0,
                url: None,
            },
        })
    }

    /// Extends the row while this server still holds it unexpired. `Ok(false)`: it does not.
    async fn renew(&mut self, epoch: i64) -> Result<bool, StoreError> {
        let node = self.shared.options.node.clone();
        let ttl = self.ttl_ms();
        let rows = self
            .query(
                "UPDATE leader SET expires_at = clock_timestamp() + $3::bigint * interval '1 millisecond' \
                 WHERE id = 1 AND node = $1 AND epoch = $2 AND expires_at > clock_timestamp() \
                 RETURNING 1",
                &[&node, &epoch, &ttl],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Gives the row up at once (best effort), so a standby need not wait for it to expire.
    async fn resign(&mut self, epoch: i64) {
        let node = self.shared.options.node.clone();
        if let Err(error) = self
            .query(
                "UPDATE leader SET expires_at = clock_timestamp() \
                 WHERE id = 1 AND node = $1 AND epoch = $2",
                &[&node, &epoch],
            )
            .await
        {
            tracing::debug!(%error, "could not resign the leadership");
        }
    }
}

#[async_trait]
impl Store for HaStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn now_ms(&self) -> Millis {
        match self.shared.current().engine {
            Some(engine) => engine.now_ms(),
            None => baton_store::Clock::now_ms(&baton_store::SystemClock::new()),
        }
    }

    async fn acquire(&self, args: AcquireArgs) -> Result<AcquireOutcome, StoreError> {
        self.on_active(|engine| async move { engine.acquire(args).await })
            .await
    }

    async fn acquire_set(&self, args: AcquireSetArgs) -> Result<AcquireSetOutcome, StoreError> {
        self.on_active(|engine| async move { engine.acquire_set(args).await })
            .await
    }

    async fn wait_ticket(&self, id: TicketId, wait: Duration) -> Result<TicketStatus, StoreError> {
        self.on_active(|engine| async move { engine.wait_ticket(id, wait).await })
            .await
    }

    async fn cancel_ticket(&self, id: TicketId) -> Result<Cancelled, StoreError> {
        self.on_active(|engine| async move { engine.cancel_ticket(id).await })
            .await
    }

    async fn cancel_tickets_of_key(&self, key_id: &str) -> Result<usize, StoreError> {
        let key_id = key_id.to_owned();
        self.on_active(|engine| async move { engine.cancel_tickets_of_key(&key_id).await })
            .await
    }

    async fn renew(
        &self,
        id: LeaseId,
        ttl_ms: Option<u64>,
        value: Option<String>,
    ) -> Result<Lease, StoreError> {
        self.on_active(|engine| async move { engine.renew(id, ttl_ms, value).await })
            .await
    }

    async fn release(&self, id: LeaseId) -> Result<Released, StoreError> {
        self.on_active(|engine| async move { engine.release(id).await })
            .await
    }

    async fn revoke(&self, lock: LockName, token: u64) -> Result<Lease, StoreError> {
        self.on_active(|engine| async move { engine.revoke(lock, token).await })
            .await
    }

    async fn fence(&self, lock: LockName, token: u64) -> Result<u64, StoreError> {
        self.on_active(|engine| async move { engine.fence(lock, token).await })
            .await
    }

    async fn lock(&self, name: LockName) -> Result<Option<LockView>, StoreError> {
        self.on_active(|engine| async move { engine.lock(name).await })
            .await
    }

    async fn locks(
        &self,
        after: Option<LockName>,
        limit: usize,
    ) -> Result<Vec<LockView>, StoreError> {
        self.on_active(|engine| async move { engine.locks(after, limit).await })
            .await
    }

    async fn locks_with_prefix(
        &self,
        prefix: &str,
        after: Option<LockName>,
        limit: usize,
    ) -> Result<Vec<LockView>, StoreError> {
        let prefix = prefix.to_owned();
        self.on_active(
            |engine| async move { engine.locks_with_prefix(&prefix, after, limit).await },
        )
        .await
    }

    async fn history(
        &self,
        name: LockName,
        limit: usize,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        self.on_active(|engine| async move { engine.history(name, limit).await })
            .await
    }

    async fn create_job(&self, args: CreateJobArgs) -> Result<JobCreated, StoreError> {
        self.on_active(|engine| async move { engine.create_job(args).await })
            .await
    }

    async fn job_heartbeat(
        &self,
        id: JobId,
        lease: LeaseId,
        ttl_ms: Option<u64>,
    ) -> Result<(Lease, Option<StopReason>), StoreError> {
        self.on_active(|engine| async move { engine.job_heartbeat(id, lease, ttl_ms).await })
            .await
    }

    async fn append_job_output(
        &self,
        id: JobId,
        lease: LeaseId,
        text: String,
        skipped_bytes: u64,
    ) -> Result<OutputAppended, StoreError> {
        self.on_active(|engine| async move {
            engine
                .append_job_output(id, lease, text, skipped_bytes)
                .await
        })
        .await
    }

    async fn cancel_job(&self, id: JobId) -> Result<(Job, CancelOutcome), StoreError> {
        self.on_active(|engine| async move { engine.cancel_job(id).await })
            .await
    }

    async fn finish_job(
        &self,
        id: JobId,
        capability: JobCapability,
        finish: FinishJob,
    ) -> Result<Job, StoreError> {
        self.on_active(|engine| async move { engine.finish_job(id, capability, finish).await })
            .await
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.on_active(|engine| async move { engine.job(id).await })
            .await
    }

    async fn jobs(&self, filter: JobFilter) -> Result<Vec<Job>, StoreError> {
        self.on_active(|engine| async move { engine.jobs(filter).await })
            .await
    }

    async fn tick(&self) -> Result<(), StoreError> {
        self.on_active(|engine| async move { engine.tick().await })
            .await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.on_active(|engine| async move { engine.ready().await })
            .await
    }

    async fn counts(&self) -> (usize, usize, usize) {
        match self.engine() {
            Ok((engine, _)) => engine.counts().await,
            Err(_) => (0, 0, 0),
        }
    }

    fn events(&self) -> Result<Arc<baton_store::EventHub>, StoreError> {
        // The active's feed; it ends when this server steps down (the engine goes, and with it
        // the feed's sender), and a new active starts a new feed.
        self.engine()?.0.events()
    }

    fn stats(&self) -> StoreStats {
        match self.shared.current().engine {
            Some(engine) => engine.stats(),
            None => StoreStats::default(),
        }
    }

    async fn shutdown(&self) {
        let epoch = self.shared.current().epoch;
        let active = self.shared.current().engine.is_some();
        self.task.abort();
        self.shared.step_down("the server is stopping");
        if active {
            // Let a standby take over now rather than when the lease runs out.
            let mut elector = Elector {
                shared: Arc::clone(&self.shared),
                config: self.config.clone(),
                client: None,
            };
            elector.resign(epoch).await;
        }
    }

    fn leadership(&self) -> Option<Leadership> {
        let current = self.shared.current();
        let active = current.engine.is_some() && self.shared.gate.is_open();
        // An engine whose deadline passed is not stepped down yet: who is active is unknown
        // (not this server) until the next round says.
        let active_url = if active {
            current.active_url
        } else {
            current
                .active_url
                .filter(|url| *url != self.shared.options.url)
        };
        Some(Leadership {
            active,
            node: self.shared.options.node.clone(),
            epoch: current.epoch,
            active_url,
            takeovers: self.shared.takeovers.load(Ordering::Relaxed),
        })
    }

    async fn put_key(&self, key: ApiKey) -> Result<(), StoreError> {
        self.on_active(|engine| async move { engine.put_key(key).await })
            .await
    }

    async fn keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        match self.engine() {
            Ok((engine, _)) => engine.keys().await,
            Err(_) => self.on_reader(|reader| reader.keys()).await,
        }
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<AuditEntry, StoreError> {
        self.on_active(|engine| async move { engine.append_audit(entry).await })
            .await
    }

    async fn audit(
        &self,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        match self.engine() {
            Ok((engine, _)) => engine.audit(before_seq, limit).await,
            Err(_) => {
                self.on_reader(move |reader| reader.audit(before_seq, limit))
                    .await
            }
        }
    }

    async fn lock_of_lease(&self, id: LeaseId) -> Result<Option<LockName>, StoreError> {
        self.on_active(|engine| async move { engine.lock_of_lease(id).await })
            .await
    }

    async fn lock_of_ticket(&self, id: TicketId) -> Result<Option<LockName>, StoreError> {
        self.on_active(|engine| async move { engine.lock_of_ticket(id).await })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_closes_at_its_deadline() {
        let gate = Gate::new();
        assert!(!gate.is_open(), "closed until opened");
        gate.open_until(Instant::now() + Duration::from_secs(60));
        assert!(gate.is_open());
        gate.open_until(Instant::now());
        assert!(!gate.is_open(), "a deadline now is already past");
        gate.open_until(Instant::now() + Duration::from_secs(60));
        gate.close();
        assert!(!gate.is_open());
    }

    #[test]
    fn timing_follows_the_lease() {
        let options = LeaderOptions {
            node: "n".into(),
            url: "http://x".into(),
            ttl: Duration::from_secs(4),
        };
        assert_eq!(options.renew_every(), Duration::from_secs(1));
        assert_eq!(options.drift(), Duration::from_millis(400));
        assert_eq!(options.campaign_every(), Duration::from_millis(500));
        assert!(options.renew_every() * 3 < options.ttl - options.drift());
    }
}
