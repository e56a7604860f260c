//! The simulator: one seed drives the real [`Engine`] (and through it the real
//! [`baton_core::State`]) with many clients, faults and a clock of its own.
//!
//! Determinism: the engine runs with `manual_commit` (no committer thread; the simulator
//! decides when each batch commits), `run_timer: false` (the simulator calls `tick`), and a
//! seeded [`IdSource`]; every request is a future polled by hand, in a fixed order, on a
//! current-thread tokio runtime whose time is paused and moved only by the simulator. Nothing
//! else runs, so one seed gives one history.
//!
//! With [`Options::servers`] above one, the servers elect an active one as `HaStore` does
//! (`baton_store::leadership`'s rules; see [`Server`] and docs/simulation.md): one shared
//! simulated database holds the table and the leadership row, every commit is fenced by the
//! committing server's term, and servers pause past the leadership lease and resume.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use baton_core::{
    Cancelled, FinishJob, Job, JobCapability, JobCreated, JobId, JobState, Lease, LeaseId,
    LockName, Millis, Policy, Released, StopReason, TicketId, TicketStatus, TokenError,
};
use baton_store::leadership::{self, AfterRenewal, LeaderTiming, Renewal};
use baton_store::{
    AcquireArgs, AcquireOutcome, CreateJobArgs, Engine, EngineOptions, IdSource, ManualClock,
    Store, StoreError,
};

use crate::check::{self, Violation};
use crate::disk::{Disk, DiskState, SimPersister};
use crate::history::{Event, EventKind, Via};
use crate::rng::{Rng, mix};
use crate::setup::{LOCKS, START_MS, config};

/// How one run goes.
#[derive(Debug, Clone)]
pub struct Options {
    /// The seed: the same seed (and options) always gives the same history.
    pub seed: u64,
    /// How many client operations to start.
    pub ops: u64,
    /// How many simulated clients.
    pub clients: usize,
    /// Clients left out (for shrinking): their turns are skipped.
    pub disabled: Vec<usize>,
    /// Keep a readable trace of every event.
    pub trace: bool,
    /// Stop at the first violation (the checkers run every `check_every` steps and at the end).
    pub stop_early: bool,
    /// How many servers: one runs a lone engine that restarts in place after a crash; more
    /// elect an active server over one shared database (leadership changes, fenced commits,
    /// paused servers that resume deposed).
    pub servers: usize,
}

impl Options {
    /// A run of `ops` operations from `seed` with the default number of clients.
    pub fn new(seed: u64, ops: u64) -> Options {
        Options {
            seed,
            ops,
            clients: 8,
            disabled: Vec::new(),
            trace: false,
            stop_early: true,
            servers: 1,
        }
    }

    /// A run of `ops` operations from `seed` over three servers that elect an active one.
    pub fn servers(seed: u64, ops: u64) -> Options {
        Options {
            servers: 3,
            ..Options::new(seed, ops)
        }
    }
}

/// The leadership lease of the simulated servers (the shortest `HaStore` accepts).
pub const LEADER_TTL: Duration = Duration::from_millis(1_000);

/// How long a leadership statement may take before it counts as failed (`HaStore`'s).
const STATEMENT_TIMEOUT_MS: Millis = 2_000;

/// What one run did and found.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Steps taken.
    pub steps: u64,
    /// Client operations started.
    pub ops: u64,
    /// Operations that were answered.
    pub answered: u64,
    /// Grants acknowledged.
    pub grants: u64,
    /// Durable commits.
    pub commits: u64,
    /// Crashes (each followed by a recovery).
    pub crashes: u64,
    /// Clock jumps.
    pub clock_jumps: u64,
    /// Waiters that went away mid-wait.
    pub departures: u64,
    /// Leadership takeovers (several servers).
    pub takeovers: u64,
    /// Servers paused (several servers).
    pub server_pauses: u64,
    /// Requests answered `not_active` (several servers).
    pub not_active: u64,
    /// Commits the database refused as deposed (several servers).
    pub deposed_commits: u64,
    /// What the checkers found (empty: every guarantee held).
    pub violations: Vec<Violation>,
    /// The readable trace (with [`Options::trace`]).
    pub trace: Vec<String>,
    /// A digest of the whole history: equal digests, equal histories.
    pub digest: u64,
    /// The number of events recorded.
    pub events: usize,
}

/// What a request answered.
enum Answer {
    Acquire(Result<AcquireOutcome, StoreError>),
    Ticket(Result<TicketStatus, StoreError>),
    Cancel(Result<Cancelled, StoreError>),
    Renew(Result<Lease, StoreError>),
    Release(Result<Released, StoreError>),
    Revoke(Result<Lease, StoreError>),
    Fence(Result<u64, StoreError>),
    Job(Box<Result<JobCreated, StoreError>>),
    Heartbeat(Result<(Lease, Option<StopReason>), StoreError>),
    Finish(Box<Result<Job, StoreError>>),
    /// A tick's failure shows in the next commit.
    Tick,
    /// The server was not (or stopped being) the active one: `ran` when the operation had run
    /// on its engine before the gate closed (its effect may be durable, its answer was not
    /// given).
    NotActive {
        ran: bool,
    },
}

/// What a request was, for the bookkeeping of its answer.
#[derive(Debug, Clone)]
enum Request {
    Acquire {
        args: AcquireArgs,
        try_: bool,
    },
    Wait {
        ticket: TicketId,
        lock: LockName,
        job: Option<JobId>,
        wait: Duration,
    },
    Cancel {
        ticket: TicketId,
    },
    Renew {
        lease: LeaseId,
    },
    Release {
        lease: LeaseId,
    },
    Revoke {
        lock: LockName,
        token: u64,
        lease: LeaseId,
    },
    Fence {
        lock: LockName,
        token: u64,
    },
    CreateJob {
        args: CreateJobArgs,
    },
    Heartbeat {
        lease: LeaseId,
    },
    Finish {
        job: JobId,
        lease: LeaseId,
    },
    Tick,
}

/// A request in flight: polled by hand, dropped to cut it off.
type OpFuture = Pin<Box<dyn Future<Output = Answer>>>;

struct Pending {
    request: Request,
    /// The server it was sent to.
    server: usize,
    /// The generation of the engine it was first polled on.
    engine_generation: u32,
    future: OpFuture,
    polled: bool,
    sent_at: Millis,
    try_before: Option<Vec<TicketId>>,
}

#[derive(Debug, Clone)]
struct Held {
    lease: LeaseId,
    lock: LockName,
    token: u64,
    ttl_ms: u64,
    job: Option<JobId>,
    stop: bool,
}

#[derive(Debug, Clone)]
struct Waiting {
    ticket: TicketId,
    lock: LockName,
    job: Option<JobId>,
}

struct Client {
    owner: String,
    owner_key: Option<String>,
    rng: Rng,
    held: Option<Held>,
    waiting: Option<Waiting>,
    pending: Option<Pending>,
    last_acquire: Option<AcquireArgs>,
    paused_until: Millis,
    requests: u64,
    enabled: bool,
    /// The server it talks to (it moves on when told `not_active`).
    server: usize,
}

/// What the answers of one server may see of its leadership: the gate `HaStore` checks
/// before and after every operation, on the server's own monotonic clock.
#[derive(Debug, Default)]
struct GateCell {
    /// The local deadline (`None`: this server does not lead).
    until: Cell<Option<Duration>>,
    /// The server's monotonic clock now.
    now: Cell<Duration>,
    /// Bumped at every change of role: an operation in flight across one ends `not_active`.
    generation: Cell<u64>,
}

impl GateCell {
    fn open(&self) -> bool {
        leadership::gate_open(self.until.get(), self.now.get())
    }
}

/// A leadership statement on its way to the database and back.
#[derive(Debug, Clone)]
struct Statement {
    campaign: bool,
    /// When it was sent, by the server's monotonic clock.
    sent: Duration,
    /// When it was sent (true time).
    sent_at: Millis,
    /// When the database runs it (true time).
    db_at: Millis,
    /// When its reply reaches the server (true time); past the statement timeout it fails.
    reply_at: Millis,
    /// What the database answered: a won epoch (campaign) or the renewal's outcome.
    result: Option<(Option<i64>, Renewal)>,
}

/// One simulated server: an engine while it is the active one, its leadership state as
/// `HaStore` keeps it, and what it suffers (pauses, crashes).
struct Server {
    node: String,
    engine: Option<Arc<Engine>>,
    gate: Rc<GateCell>,
    /// The epoch of its term while it leads.
    epoch: i64,
    /// Its engine refused a commit (an I/O error or deposed): it stops taking writes.
    failed: bool,
    /// How fast its monotonic clock runs, per mille of real time.
    rate: u64,
    /// Paused (SIGSTOP, a long GC) until this true time: nothing of it runs.
    paused_until: Millis,
    /// Crashed, restarting until this true time.
    down_until: Millis,
    /// After a pause its elector runs again only from this true time: the requests that
    /// waited in its sockets may be served first (threads resume in any order).
    elector_after: Millis,
    /// Its next leadership round (true time).
    next_round: Millis,
    statement: Option<Statement>,
    /// The active it last saw in the row (for `not_active` answers).
    hint: Option<usize>,
    /// The wall-clock time its engine loaded the table.
    loaded_at: Millis,
    /// The engine's generation (the run's count of engines opened when it opened).
    engine_generation: u32,
    /// Its engine's event feed: what the table did once durable (lapses, grants).
    feed: Option<baton_store::Subscription>,
}

impl Server {
    fn runs(&self, now: Millis) -> bool {
        self.paused_until <= now && self.down_until <= now
    }

    fn elector_runs(&self, now: Millis) -> bool {
        self.runs(now) && self.elector_after <= now
    }

    fn resumes(&self) -> Millis {
        self.paused_until
            .max(self.down_until)
            .max(self.elector_after)
    }
}
/// Runs one simulation.
pub fn run(options: &Options) -> Outcome {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return Outcome {
                seed: options.seed,
                violations: vec![Violation::setup(format!("no runtime: {error}"))],
                ..Outcome::default()
            };
        }
    };
    runtime.block_on(async {
        let mut sim = Sim::new(options);
        sim.run().await;
        sim.finish()
    })
}

struct Sim {
    options: Options,
    rng: Rng,
    clock: Arc<ManualClock>,
    disk: Disk,
    ids: IdSource,
    servers: Vec<Server>,
    /// Several servers that elect an active one.
    ha: bool,
    /// The true time (the database's clock); the servers' wall clock (`clock`) is this plus
    /// the clock jumps.
    true_ms: Millis,
    /// Revocations, finishes and cancels that ran on an engine but whose answer was cut off
    /// (`not_active`, a crashed server): ends that may be durable, for the next takeover.
    cut_ending: Vec<(LeaseId, Millis)>,
    cut_cancelling: Vec<TicketId>,
    generation: u32,
    clients: Vec<Client>,
    system: Vec<Pending>,
    events: Vec<Event>,
    step: u64,
    outcome: Outcome,
    /// Leases acknowledged and not known to have ended: targets for revocations and fences.
    known: BTreeMap<LeaseId, (LockName, u64)>,
    /// Every lease ever answered to a client.
    delivered: std::collections::HashSet<LeaseId>,
    /// Recent jobs, for the job invariants.
    jobs: VecDeque<JobId>,
    /// Servers whose tick ran in this round.
    ticked: Vec<usize>,
    checked_upto: usize,
}

impl Sim {
    fn new(options: &Options) -> Sim {
        let counter = Arc::new(AtomicU64::new(0));
        let id_seed = mix(options.seed ^ 0x1D5);
        let ids = IdSource(Arc::new(move || {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let high = mix(id_seed ^ n.wrapping_mul(2));
            let low = mix(id_seed ^ n.wrapping_mul(2).wrapping_add(1));
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&high.to_le_bytes());
            bytes[8..].copy_from_slice(&low.to_le_bytes());
            bytes
        }));
        let mut rng = Rng::new(options.seed);
        let clients = (0..options.clients)
            .map(|index| Client {
                owner: format!("client-{index}"),
                owner_key: (index % 3 == 0).then(|| format!("key-{index}")),
                rng: Rng::new(rng.next_u64() ^ index as u64),
                held: None,
                waiting: None,
                pending: None,
                last_acquire: None,
                paused_until: 0,
                requests: 0,
                enabled: !options.disabled.contains(&index),
                server: 0,
            })
            .collect();
        let ha = options.servers > 1;
        let mut server_rng = Rng::new(mix(options.seed ^ 0x5E7));
        let servers = (0..options.servers.max(1))
            .map(|index| Server {
                node: format!("server-{index}"),
                engine: None,
                gate: Rc::new(GateCell::default()),
                epoch: 0,
                failed: false,
                // Monotonic clocks 3 % slow to 5 % fast: within what the drift margin covers.
                rate: if ha {
                    server_rng.range(970, 1_050)
                } else {
                    1_000
                },
                paused_until: 0,
                down_until: 0,
                elector_after: 0,
                next_round: START_MS + server_rng.below(200),
                statement: None,
                hint: None,
                loaded_at: START_MS,
                engine_generation: 0,
                feed: None,
            })
            .collect();
        Sim {
            options: options.clone(),
            rng,
            clock: Arc::new(ManualClock::new(START_MS)),
            disk: Arc::new(Mutex::new(DiskState::default())),
            ids,
            servers,
            ha,
            true_ms: START_MS,
            cut_ending: Vec::new(),
            cut_cancelling: Vec::new(),
            generation: 0,
            clients,
            system: Vec::new(),
            events: Vec::new(),
            step: 0,
            outcome: Outcome {
                seed: options.seed,
                ..Outcome::default()
            },
            known: BTreeMap::new(),
            delivered: std::collections::HashSet::new(),
            jobs: VecDeque::new(),
            ticked: Vec::new(),
            checked_upto: 0,
        }
    }

    fn now(&self) -> Millis {
        baton_store::Clock::now_ms(self.clock.as_ref())
    }

    /// Opens an engine on server `index` through the real recovery; with several servers,
    /// fenced by its term (`epoch`).
    fn open(&mut self, index: usize, epoch: Option<i64>) -> bool {
        let options = EngineOptions {
            config: config(),
            run_timer: false,
            manual_commit: true,
            ids: Some(self.ids.clone()),
            ..EngineOptions::default()
        };
        let Some(node) = self.servers.get(index).map(|server| server.node.clone()) else {
            return false;
        };
        let persister = Box::new(SimPersister {
            disk: Arc::clone(&self.disk),
            fence: epoch.map(|epoch| (node.clone(), epoch)),
        });
        let clock: Arc<dyn baton_store::Clock> = Arc::clone(&self.clock) as _;
        // An injected I/O error is for a commit of the running engine, not for recovery.
        if let Ok(mut disk) = self.disk.lock() {
            disk.fail_next = false;
        }
        match Engine::open(persister, clock, options) {
            Ok(engine) => {
                self.generation += 1;
                let (leases, tickets) = engine.inspect(|state| {
                    let views = state.locks(None, usize::MAX);
                    let tickets = views
                        .iter()
                        .flat_map(|view| view.waiters.iter().map(|ticket| ticket.id))
                        .collect::<Vec<_>>();
                    let leases = views
                        .into_iter()
                        .flat_map(|view| view.holders)
                        .collect::<Vec<_>>();
                    (leases, tickets)
                });
                let now = self.now();
                let feed = baton_store::Store::events(&engine)
                    .ok()
                    .map(|hub| hub.subscribe(None));
                let generation = self.generation;
                if let Some(server) = self.servers.get_mut(index) {
                    server.feed = feed;
                    server.engine_generation = generation;
                    server.engine = Some(Arc::new(engine));
                    server.failed = false;
                    server.loaded_at = now;
                    if let Some(epoch) = epoch {
                        server.epoch = epoch;
                    } else {
                        // A lone server answers whenever it runs.
                        server.gate.until.set(Some(Duration::MAX));
                    }
                }
                if epoch.is_some() {
                    // A takeover: what the old active may have ended without saying so, then
                    // what the new one loaded (judged like a crash and its recovery).
                    let mut ending = std::mem::take(&mut self.cut_ending);
                    let mut cancelling = std::mem::take(&mut self.cut_cancelling);
                    for client in &self.clients {
                        let Some(pending) = &client.pending else {
                            continue;
                        };
                        if !pending.polled {
                            continue;
                        }
                        match &pending.request {
                            Request::Revoke { lease, .. } | Request::Finish { lease, .. } => {
                                ending.push((*lease, pending.sent_at));
                            }
                            Request::Cancel { ticket } => cancelling.push(*ticket),
                            _ => {}
                        }
                    }
                    self.outcome.takeovers += 1;
                    self.record(
                        usize::MAX,
                        EventKind::Note {
                            what: format!("{node} takes over with epoch {}", epoch.unwrap_or(0)),
                        },
                    );
                    self.record(
                        usize::MAX,
                        EventKind::Crash {
                            how: "takeover",
                            ending,
                            cancelling,
                        },
                    );
                    self.record(usize::MAX, EventKind::Restarted { leases, tickets });
                } else if self.generation > 1 {
                    self.record(usize::MAX, EventKind::Restarted { leases, tickets });
                }
                true
            }
            Err(error) if error.is_deposed() => {
                // Another server took the row between the campaign and the load.
                false
            }
            Err(error) => {
                self.record(
                    usize::MAX,
                    EventKind::RecoveryFailed {
                        error: error.to_string(),
                    },
                );
                false
            }
        }
    }

    fn record(&mut self, client: usize, kind: EventKind) {
        let event = Event {
            step: self.step,
            at: self.now(),
            generation: self.generation,
            client,
            kind,
        };
        if self.options.trace {
            self.outcome.trace.push(crate::trace::line(&event));
        }
        self.events.push(event);
    }

    async fn run(&mut self) {
        if self.ha {
            // The first campaigns: some server leads before the first client's turn.
            self.advance(300).await;
            if self.servers.iter().all(|server| server.engine.is_none()) {
                return;
            }
        } else if !self.open(0, None) {
            return;
        }
        let mut check_every = 2_000;
        while self.outcome.ops < self.options.ops {
            self.step += 1;
            self.ticked.clear();
            if !self.ha && self.servers[0].failed {
                self.crash(0, "io-error").await;
                if self.servers[0].engine.is_none() {
                    break;
                }
            }
            let roll = self.rng.below(1_000);
            match roll {
                0..650 => self.client_turn(),
                650..800 => {
                    let ms = self.rng.range(1, 400);
                    self.advance(ms).await;
                }
                800..960 => self.commit(),
                960..965 => {
                    let index = self.victim();
                    self.crash(index, "lost-batch").await;
                }
                965..970 => {
                    let index = self.victim();
                    self.commit();
                    self.crash(index, "durable-unacknowledged").await;
                }
                970..976 => {
                    let ms = self.rng.range(1_000, 12_000);
                    self.clock.advance(ms);
                    self.outcome.clock_jumps += 1;
                    self.record(usize::MAX, EventKind::ClockJump { ms });
                    self.start_ticks();
                }
                976..980 => {
                    if let Ok(mut disk) = self.disk.lock() {
                        disk.fail_next = true;
                    }
                }
                980..984 if self.ha => self.pause_server(),
                _ => {
                    let index = self.rng.below(self.clients.len() as u64) as usize;
                    let ms = self.rng.range(500, 8_000);
                    let until = self.now() + ms;
                    if let Some(client) = self.clients.get_mut(index)
                        && client.enabled
                    {
                        client.paused_until = until;
                        self.record(
                            index,
                            EventKind::Note {
                                what: format!("pauses for {ms} ms"),
                            },
                        );
                    }
                }
            }
            if !self.ha && self.servers[0].engine.is_none() {
                break;
            }
            self.poll_all();
            self.after_round();
            if self.options.stop_early && self.events.len() - self.checked_upto >= check_every {
                self.checked_upto = self.events.len();
                check_every *= 2;
                if !check::all(&self.events).is_empty() {
                    break;
                }
            }
        }
        // Let the last answers arrive: commit, poll, and move time past every wait.
        for _ in 0..8 {
            if !self.ha && (self.servers[0].engine.is_none() || self.servers[0].failed) {
                break;
            }
            self.commit();
            self.poll_all();
            self.advance(500).await;
            self.commit();
            self.poll_all();
            self.after_round();
        }
    }

    /// The server a crash hits: the lone one, or (with several) mostly the active one.
    fn victim(&mut self) -> usize {
        if !self.ha {
            return 0;
        }
        let active = self
            .servers
            .iter()
            .position(|server| server.engine.is_some());
        match active {
            Some(index) if self.rng.chance(700) => index,
            _ => self.rng.below(self.servers.len() as u64) as usize,
        }
    }

    /// A server stops for a while (SIGSTOP, a long GC pause): mostly past the leadership lease,
    /// so that it resumes deposed, with its table and its gate as they were.
    fn pause_server(&mut self) {
        let index = self.victim();
        let ttl = LEADER_TTL.as_millis() as u64;
        let ms = if self.rng.chance(750) {
            self.rng.range(ttl + ttl / 5, 4 * ttl)
        } else {
            self.rng.range(50, ttl)
        };
        let until = self.true_ms + ms;
        let Some(server) = self.servers.get_mut(index) else {
            return;
        };
        if !server.runs(self.true_ms) {
            return;
        }
        server.paused_until = until;
        server.elector_after = until + self.rng.range(0, 100);
        let node = server.node.clone();
        self.outcome.server_pauses += 1;
        self.record(
            usize::MAX,
            EventKind::Note {
                what: format!("{node} pauses for {ms} ms"),
            },
        );
    }

    fn finish(mut self) -> Outcome {
        self.outcome.steps = self.step;
        self.outcome.violations = check::all(&self.events);
        self.outcome.events = self.events.len();
        self.outcome.digest = self.events.iter().fold(self.options.seed, |digest, event| {
            mix(digest ^ crate::trace::fingerprint(&event.kind) ^ event.at ^ event.step)
        });
        if let Ok(disk) = self.disk.lock() {
            self.outcome.commits = disk.commits;
            self.outcome.deposed_commits = disk.deposed;
        }
        self.outcome
    }

    /// Moves true time (and with it the wall clock, the runtime's timers and every server's
    /// monotonic clock) by `ms`, stopping at every leadership event on the way, then ticks.
    async fn advance(&mut self, ms: u64) {
        let target = self.true_ms + ms;
        loop {
            let next = if self.ha {
                self.next_leadership_event().filter(|at| *at <= target)
            } else {
                None
            };
            let to = next.unwrap_or(target);
            if to > self.true_ms {
                self.move_time(to - self.true_ms).await;
            }
            if next.is_none() {
                break;
            }
            let resumed: Vec<usize> = (0..self.servers.len())
                .filter(|index| self.servers[*index].paused_until == self.true_ms)
                .collect();
            for index in resumed {
                // As a paused server resumes, its engine's timer (overdue) runs first. (Between
                // them, a request could see a lease expired but not yet swept: a fence check
                // accepts its token; see docs/simulation.md, "What it found".)
                self.start_tick(index);
                self.poll_system();
            }
            self.leadership_events();
        }
        self.start_ticks();
    }

    async fn move_time(&mut self, ms: u64) {
        tokio::time::advance(Duration::from_millis(ms)).await;
        self.clock.advance(ms);
        self.true_ms += ms;
        let elapsed = self.true_ms - START_MS;
        for server in &self.servers {
            let mono = Duration::from_micros(elapsed.saturating_mul(server.rate));
            server.gate.now.set(mono);
        }
    }

    /// Every server's engine ticks (as its own timer would), unless it is paused or down.
    fn start_ticks(&mut self) {
        for index in 0..self.servers.len() {
            self.start_tick(index);
        }
    }

    fn start_tick(&mut self, index: usize) {
        let Some(server) = self.servers.get(index) else {
            return;
        };
        if !server.runs(self.true_ms) {
            return;
        }
        let Some(engine) = server.engine.clone() else {
            return;
        };
        self.system.push(Pending {
            request: Request::Tick,
            server: index,
            engine_generation: 0,
            future: Box::pin(async move {
                let _ = engine.tick().await;
                Answer::Tick
            }),
            polled: false,
            sent_at: 0,
            try_before: None,
        });
    }

    /// Every running engine commits what it has pending.
    fn commit(&mut self) {
        let now = self.true_ms;
        for server in &mut self.servers {
            if !server.runs(now) || server.failed {
                continue;
            }
            if let Some(engine) = &server.engine
                && engine.commit_pending().is_err()
            {
                server.failed = true;
            }
        }
        self.read_feeds();
    }

    /// Records what every engine's feed published since the last look: the lapses of tickets
    /// (with whether a waiter was parked on the ticket at that engine) and grants from queues.
    fn read_feeds(&mut self) {
        let lapse_ms = config().ticket_lapse_ms;
        for index in 0..self.servers.len() {
            let mut published = Vec::new();
            let mut lagged = false;
            if let Some(feed) = self.servers.get_mut(index).and_then(|s| s.feed.as_mut()) {
                loop {
                    match feed.live.try_recv() {
                        Ok(event) => published.push(event),
                        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                            lagged = true;
                        }
                        Err(_) => break,
                    }
                }
            }
            if lagged {
                self.record(
                    usize::MAX,
                    EventKind::Note {
                        what: "the feed lagged: some lapses were not seen".into(),
                    },
                );
            }
            let engine_generation = self
                .servers
                .get(index)
                .map_or(0, |server| server.engine_generation);
            for event in published {
                match &event.event {
                    baton_core::Event::LeftQueue {
                        ticket,
                        why: baton_core::QueueExit::Lapsed,
                        at,
                    } => {
                        // A wait parked on it at this engine, sent before the lapse and not
                        // answered: its park keeps the ticket for a lapse past its end.
                        let parked = self.clients.iter().any(|client| {
                            client.pending.as_ref().is_some_and(|pending| {
                                pending.polled
                                    && pending.server == index
                                    && pending.engine_generation == engine_generation
                                    && pending.sent_at <= *at
                                    && matches!(&pending.request,
                                        Request::Wait { ticket: t, wait, .. }
                                            if *t == ticket.id
                                                && *at < pending.sent_at + wait.as_millis() as u64 + lapse_ms)
                            })
                        });
                        self.record(
                            usize::MAX,
                            EventKind::TicketLapsed {
                                ticket: ticket.id,
                                lock: ticket.lock.clone(),
                                at: *at,
                                lapse_at: ticket.lapse_at,
                                gone: ticket.waiter_gone,
                                parked,
                            },
                        );
                    }
                    baton_core::Event::Granted { lease, at } => {
                        if let Some(ticket) = lease.ticket {
                            self.record(usize::MAX, EventKind::TicketGranted { ticket, at: *at });
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Server `index` crashes: every request in flight to it is cut off unanswered, its engine
    /// is dropped with whatever it had not committed. A lone server recovers from the disk at
    /// once; one of several comes back a standby and campaigns.
    async fn crash(&mut self, index: usize, how: &'static str) {
        let mut ending = Vec::new();
        let mut cancelling = Vec::new();
        for client in &mut self.clients {
            if client.pending.as_ref().is_some_and(|p| p.server == index)
                && let Some(pending) = client.pending.take()
            {
                match &pending.request {
                    Request::Revoke { lease, .. } | Request::Finish { lease, .. }
                        if pending.polled =>
                    {
                        ending.push((*lease, pending.sent_at));
                    }
                    Request::Cancel { ticket } if pending.polled => cancelling.push(*ticket),
                    _ => {}
                }
                drop(pending);
            }
        }
        self.system.retain(|pending| pending.server != index);
        self.outcome.crashes += 1;
        let down = self.rng.range(0, 1_500);
        if self.ha {
            let Some(server) = self.servers.get_mut(index) else {
                return;
            };
            server.engine = None;
            server.failed = false;
            server.gate.until.set(None);
            server.gate.generation.set(server.gate.generation.get() + 1);
            server.statement = None;
            server.paused_until = 0;
            server.down_until = self.true_ms + down;
            server.next_round = self.true_ms + down;
            let node = server.node.clone();
            self.cut_ending.extend(ending);
            self.cut_cancelling.extend(cancelling);
            self.record(
                usize::MAX,
                EventKind::Note {
                    what: format!("{node} CRASH ({how}), down for {down} ms"),
                },
            );
            return;
        }
        self.record(
            usize::MAX,
            EventKind::Crash {
                how,
                ending,
                cancelling,
            },
        );
        if let Some(server) = self.servers.get_mut(index) {
            server.engine = None;
        }
        // A restart takes a moment; waits measured on the runtime's clock move on too.
        self.move_time(down).await;
        self.open(index, None);
    }

    /// The earliest leadership event: a statement reaching the database or its reply the
    /// server, a round due, a pause or restart ending.
    fn next_leadership_event(&self) -> Option<Millis> {
        self.servers
            .iter()
            .flat_map(|server| {
                let statement = server.statement.as_ref().map(|statement| {
                    if statement.result.is_none() {
                        // The database runs it whatever the server does meanwhile.
                        statement.db_at
                    } else {
                        statement
                            .reply_at
                            .min(statement.sent_at + STATEMENT_TIMEOUT_MS)
                            .max(server.resumes())
                    }
                });
                let round = server
                    .statement
                    .is_none()
                    .then_some(server.next_round.max(server.resumes()));
                // A pause ends: its engine's timer fires.
                let resume = (server.paused_until > self.true_ms).then_some(server.paused_until);
                [statement, round, resume]
            })
            .flatten()
            .min()
            .map(|at| at.max(self.true_ms))
    }

    /// Runs every leadership event due now, as `HaStore`'s elector would.
    fn leadership_events(&mut self) {
        let now = self.true_ms;
        let timing = LeaderTiming { ttl: LEADER_TTL };
        // Statements reach the database in the order of their arrival.
        let mut arriving: Vec<(Millis, usize)> = self
            .servers
            .iter()
            .enumerate()
            .filter_map(|(index, server)| {
                let statement = server.statement.as_ref()?;
                (statement.result.is_none() && statement.db_at <= now)
                    .then_some((statement.db_at, index))
            })
            .collect();
        arriving.sort();
        for (db_at, index) in arriving {
            let Ok(mut disk) = self.disk.lock() else {
                return;
            };
            let Some(server) = self.servers.get_mut(index) else {
                continue;
            };
            let Some(statement) = server.statement.as_mut() else {
                continue;
            };
            let url = format!("http://{}", server.node);
            statement.result = Some(if statement.campaign {
                let won =
                    leadership::campaign(&mut disk.leader, &server.node, &url, db_at, LEADER_TTL);
                (won, Renewal::Renewed)
            } else {
                let renewal = leadership::renew(
                    &mut disk.leader,
                    &server.node,
                    server.epoch,
                    db_at,
                    LEADER_TTL,
                );
                (None, renewal)
            });
            // The active the row names now, for `not_active` answers.
            let holder = disk
                .leader
                .as_ref()
                .filter(|row| row.expires_at > db_at)
                .and_then(|row| row.node.strip_prefix("server-"))
                .and_then(|n| n.parse::<usize>().ok());
            server.hint = holder;
        }
        for index in 0..self.servers.len() {
            let Some(server) = self.servers.get(index) else {
                continue;
            };
            if !server.elector_runs(now) {
                continue;
            }
            match &server.statement {
                Some(statement) if statement.result.is_some() => {
                    let timeout_at = statement.sent_at + STATEMENT_TIMEOUT_MS;
                    let timed_out = statement.reply_at > timeout_at;
                    let due = statement.reply_at.min(timeout_at);
                    if due <= now {
                        self.reply(index, &timing, timed_out);
                    }
                }
                None if server.next_round <= now => self.round(index),
                _ => {}
            }
        }
    }

    /// Server `index` starts a round: a renewal while it leads, a campaign otherwise (after
    /// stepping down when its engine stopped taking writes).
    fn round(&mut self, index: usize) {
        let now = self.true_ms;
        let failed = self.servers.get(index).is_some_and(|server| server.failed);
        if failed {
            self.step_down(index, leadership::ENGINE_STOPPED, true);
        }
        // The network: mostly quick, sometimes slow enough to miss a renewal or time out.
        let there = if self.rng.chance(40) {
            self.rng.range(200, 1_500)
        } else {
            self.rng.range(0, 20)
        };
        let back = if self.rng.chance(20) {
            self.rng.range(200, 1_500)
        } else {
            self.rng.range(0, 20)
        };
        let Some(server) = self.servers.get_mut(index) else {
            return;
        };
        server.statement = Some(Statement {
            campaign: server.engine.is_none(),
            sent: server.gate.now.get(),
            sent_at: now,
            db_at: now + there,
            reply_at: now + there + back,
            result: None,
        });
    }

    /// The reply of server `index`'s statement arrives (or its timeout passes).
    fn reply(&mut self, index: usize, timing: &LeaderTiming, timed_out: bool) {
        let Some(server) = self.servers.get_mut(index) else {
            return;
        };
        let Some(statement) = server.statement.take() else {
            return;
        };
        let now = self.true_ms;
        let (won, renewal) = statement.result.unwrap_or((None, Renewal::Failed));
        let renewal = if timed_out { Renewal::Failed } else { renewal };
        if !statement.campaign {
            let open = server.gate.open();
            match leadership::after_renewal(timing, statement.sent, renewal, open) {
                AfterRenewal::Extend(deadline) => {
                    server.gate.until.set(Some(deadline));
                    server.next_round = now + timing.renew_every().as_millis() as u64;
                }
                AfterRenewal::Keep => {
                    server.next_round = now + timing.campaign_every().as_millis() as u64;
                }
                AfterRenewal::StepDown(why) => {
                    server.next_round = now;
                    self.step_down(index, why, false);
                }
            }
            return;
        }
        server.next_round = now + timing.campaign_every().as_millis() as u64;
        let Some(epoch) = won.filter(|_| !timed_out) else {
            return;
        };
        // Won: the deadline counts from when the campaign was sent; a reply that came too late
        // (the server paused, the network slow) is not a leadership any more.
        let deadline = timing.deadline(statement.sent);
        if !leadership::gate_open(Some(deadline), server.gate.now.get()) {
            return;
        }
        server.gate.until.set(None);
        if self.open(index, Some(epoch))
            && let Some(server) = self.servers.get_mut(index)
        {
            server.gate.until.set(Some(deadline));
            server.gate.generation.set(server.gate.generation.get() + 1);
            server.next_round = now + timing.renew_every().as_millis() as u64;
        }
    }

    /// Server `index` drops its engine and becomes a standby; operations in flight on it end
    /// `not_active` when next polled.
    fn step_down(&mut self, index: usize, why: &str, resign: bool) {
        let Some(server) = self.servers.get_mut(index) else {
            return;
        };
        server.gate.until.set(None);
        server.gate.generation.set(server.gate.generation.get() + 1);
        if server.engine.take().is_none() {
            return;
        }
        server.failed = false;
        let node = server.node.clone();
        let epoch = server.epoch;
        if resign && let Ok(mut disk) = self.disk.lock() {
            leadership::resign(&mut disk.leader, &node, epoch, self.true_ms);
        }
        self.system.retain(|pending| pending.server != index);
        self.record(
            usize::MAX,
            EventKind::Note {
                what: format!("{node} steps down: {why}"),
            },
        );
    }

    fn client_turn(&mut self) {
        let index = self.rng.below(self.clients.len() as u64) as usize;
        let now = self.now();
        let Some(client) = self.clients.get(index) else {
            return;
        };
        if !client.enabled || client.paused_until > now {
            return;
        }
        if let Some(pending) = &client.pending {
            // Only a request parked in the queue has a wait to leave (an acquire that queues
            // without waiting answers at once).
            let parked = match &pending.request {
                Request::Wait { .. } => true,
                Request::Acquire { args, .. } => !args.wait.is_zero(),
                _ => false,
            };
            let runs = self
                .servers
                .get(pending.server)
                .is_some_and(|server| server.runs(self.true_ms));
            if parked && pending.polled && runs && self.rng.chance(80) {
                self.depart(index);
            }
            return;
        }
        let target = client.server;
        let Some(server) = self.servers.get(target) else {
            return;
        };
        let Some(engine) = server
            .engine
            .clone()
            .filter(|_| server.down_until <= self.true_ms)
        else {
            // A standby (or a server restarting) answers `not_active` at once, naming the
            // active it knows of: the client goes there, or tries the next server.
            let next = server
                .hint
                .filter(|hint| *hint != target)
                .unwrap_or((target + 1) % self.servers.len());
            self.outcome.not_active += 1;
            if let Some(client) = self.clients.get_mut(index) {
                client.server = next;
            }
            return;
        };
        let gate = Rc::clone(&server.gate);
        let engine_generation = server.engine_generation;
        if let Some((request, future)) = self.choose(index, engine) {
            self.outcome.ops += 1;
            let future = if self.ha { gated(gate, future) } else { future };
            if let Some(client) = self.clients.get_mut(index) {
                client.pending = Some(Pending {
                    request,
                    server: target,
                    engine_generation,
                    future,
                    polled: false,
                    sent_at: 0,
                    try_before: None,
                });
            }
        }
    }

    /// A client's connection closes in the middle of a wait: its request's future is dropped.
    fn depart(&mut self, index: usize) {
        let Some(pending) = self.clients.get_mut(index).and_then(|c| c.pending.take()) else {
            return;
        };
        let (ticket, request_id, lock) = match &pending.request {
            Request::Wait { ticket, lock, .. } => (Some(*ticket), None, lock.clone()),
            Request::Acquire { args, .. } => (None, args.request_id.clone(), args.lock.clone()),
            _ => return,
        };
        let server = pending.server;
        drop(pending);
        self.outcome.departures += 1;
        // Only the active's table says what stays held (a deposed server's is stale).
        let still_held = match self.active_engine(server) {
            None => Vec::new(),
            Some(engine) => {
                let delivered = &self.delivered;
                engine.inspect(|state| {
                    state
                        .lock(&lock)
                        .map(|view| {
                            view.holders
                                .into_iter()
                                .filter(|lease| {
                                    lease.ticket.is_some()
                                        && !delivered.contains(&lease.id)
                                        && (ticket.is_some() && lease.ticket == ticket
                                            || request_id.is_some()
                                                && lease.request_id == request_id)
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                })
            }
        };
        self.record(
            index,
            EventKind::Departed {
                ticket,
                request_id,
                still_held,
            },
        );
    }

    fn lock_name(rng_pick: u64) -> Option<(LockName, u32)> {
        let (name, capacity) = LOCKS[(rng_pick % LOCKS.len() as u64) as usize];
        LockName::new(name).ok().map(|lock| (lock, capacity))
    }

    /// What client `index` does next, given what it holds.
    fn choose(&mut self, index: usize, engine: Arc<Engine>) -> Option<(Request, OpFuture)> {
        let pick = self.clients.get_mut(index)?.rng.next_u64();
        let (lock, capacity) = Sim::lock_name(pick)?;
        let known: Vec<(LeaseId, LockName, u64)> = self
            .known
            .iter()
            .map(|(id, (lock, token))| (*id, lock.clone(), *token))
            .collect();
        let client = self.clients.get_mut(index)?;
        let roll = client.rng.below(100);
        let ttl_ms = client.rng.range(600, 4_000);
        if let Some(held) = client.held.clone() {
            if let Some(job) = held.job {
                if held.stop || roll >= 55 {
                    let report = FinishJob {
                        state: *client.rng.pick(&[
                            JobState::Succeeded,
                            JobState::Failed,
                            JobState::Cancelled,
                        ])?,
                        exit_code: Some(0),
                        reason: None,
                        output_tail: String::new(),
                    };
                    let lease = held.lease;
                    return Some((
                        Request::Finish { job, lease },
                        Box::pin(async move {
                            Answer::Finish(Box::new(
                                engine
                                    .finish_job(job, JobCapability::Lease(lease), report)
                                    .await,
                            ))
                        }),
                    ));
                }
                let lease = held.lease;
                let ttl = client.rng.chance(100).then_some(ttl_ms);
                return Some((
                    Request::Heartbeat { lease },
                    Box::pin(async move {
                        Answer::Heartbeat(engine.job_heartbeat(job, lease, ttl).await)
                    }),
                ));
            }
            let lease = held.lease;
            return match roll {
                0..45 => {
                    let ttl = client.rng.chance(150).then_some(ttl_ms);
                    Some((
                        Request::Renew { lease },
                        Box::pin(
                            async move { Answer::Renew(engine.renew(lease, ttl, None).await) },
                        ),
                    ))
                }
                45..75 => Some((
                    Request::Release { lease },
                    Box::pin(async move { Answer::Release(engine.release(lease).await) }),
                )),
                75..83 => {
                    let (lock, token) = (held.lock.clone(), held.token);
                    Some((
                        Request::Fence {
                            lock: lock.clone(),
                            token,
                        },
                        Box::pin(async move { Answer::Fence(engine.fence(lock, token).await) }),
                    ))
                }
                83..90 if client.owner_key.is_some() => {
                    client.requests += 1;
                    let args = AcquireArgs {
                        mode: baton_core::Mode::Exclusive,
                        value: None,
                        lock: held.lock.clone(),
                        owner: client.owner.clone(),
                        owner_key: client.owner_key.clone(),
                        ttl_ms,
                        capacity: None,
                        wait: Duration::ZERO,
                        queue: false,
                        request_id: Some(format!("{}-r{}", client.owner, client.requests)),
                        api_key: None,
                        quota: Default::default(),
                    };
                    Some(acquire_request(engine, args))
                }
                _ => None,
            };
        }
        if let Some(waiting) = client.waiting.clone() {
            return match roll {
                0..65 => {
                    let wait = Duration::from_millis(client.rng.range(0, 3_000));
                    let ticket = waiting.ticket;
                    Some((
                        Request::Wait {
                            ticket,
                            lock: waiting.lock.clone(),
                            job: waiting.job,
                            wait,
                        },
                        Box::pin(
                            async move { Answer::Ticket(engine.wait_ticket(ticket, wait).await) },
                        ),
                    ))
                }
                65..78 => {
                    let ticket = waiting.ticket;
                    Some((
                        Request::Cancel { ticket },
                        Box::pin(async move { Answer::Cancel(engine.cancel_ticket(ticket).await) }),
                    ))
                }
                78..86 if waiting.job.is_none() => {
                    let args = client.last_acquire.clone()?;
                    Some(acquire_request(engine, args))
                }
                _ => None,
            };
        }
        match roll {
            0..50 => {
                client.requests += 1;
                let kind = client.rng.below(100);
                let (wait, queue) = match kind {
                    0..40 => (Duration::ZERO, false),
                    40..85 => (
                        Duration::from_millis(client.rng.range(50, 3_000)),
                        client.rng.chance(500),
                    ),
                    _ => (Duration::ZERO, true),
                };
                let args = AcquireArgs {
                    mode: baton_core::Mode::Exclusive,
                    value: None,
                    lock,
                    owner: client.owner.clone(),
                    owner_key: client.owner_key.clone(),
                    ttl_ms,
                    capacity: Some(capacity),
                    wait,
                    queue,
                    request_id: Some(format!("{}-r{}", client.owner, client.requests)),
                    api_key: None,
                    quota: Default::default(),
                };
                client.last_acquire = Some(args.clone());
                Some(acquire_request(engine, args))
            }
            50..64 => {
                client.requests += 1;
                let policy = *client.rng.pick(&[
                    Policy::Wait,
                    Policy::Skip,
                    Policy::Fail,
                    Policy::Replace,
                    Policy::Coalesce,
                ])?;
                let args = CreateJobArgs {
                    mode: baton_core::Mode::Exclusive,
                    value: None,
                    name: format!("job-{}", lock.as_str()),
                    lock,
                    capacity: Some(capacity),
                    policy,
                    owner: client.owner.clone(),
                    host: None,
                    command: vec!["true".into()],
                    ttl_ms,
                    wait: Duration::from_millis(client.rng.range(0, 2_000)),
                    request_id: Some(format!("{}-r{}", client.owner, client.requests)),
                    min_hold_ms: None,
                    once_per_ms: None,
                    batch: None,
                    api_key: None,
                    quota: Default::default(),
                };
                let request = Request::CreateJob { args: args.clone() };
                Some((
                    request,
                    Box::pin(async move { Answer::Job(Box::new(engine.create_job(args).await)) }),
                ))
            }
            64..72 => {
                let (lease, lock, token) = client.rng.pick(&known)?.clone();
                Some((
                    Request::Revoke {
                        lock: lock.clone(),
                        token,
                        lease,
                    },
                    Box::pin(async move { Answer::Revoke(engine.revoke(lock, token).await) }),
                ))
            }
            72..80 => {
                let (_, lock, token) = client.rng.pick(&known)?.clone();
                Some((
                    Request::Fence {
                        lock: lock.clone(),
                        token,
                    },
                    Box::pin(async move { Answer::Fence(engine.fence(lock, token).await) }),
                ))
            }
            80..88 => {
                // A retry, perhaps of a request whose answer a crash or disconnect cut off.
                let args = client.last_acquire.clone()?;
                Some(acquire_request(engine, args))
            }
            _ => None,
        }
    }

    /// The engine of server `index` if it is the active one now: running, taking writes,
    /// its gate open.
    fn active_engine(&self, index: usize) -> Option<Arc<Engine>> {
        let server = self.servers.get(index)?;
        if !server.runs(self.true_ms) || server.failed || !server.gate.open() {
            return None;
        }
        server.engine.clone()
    }

    fn queue_of(&self, server: usize, lock: &LockName) -> Vec<TicketId> {
        let Some(engine) = self.active_engine(server) else {
            return Vec::new();
        };
        engine.inspect(|state| {
            state
                .lock(lock)
                .map(|view| {
                    view.waiters
                        .iter()
                        .filter(|ticket| !ticket.waiter_gone)
                        .map(|ticket| ticket.id)
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    fn poll_all(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        let now = self.now();
        for index in 0..self.clients.len() {
            let server = match self.clients.get(index).and_then(|c| c.pending.as_ref()) {
                Some(pending) => pending.server,
                None => continue,
            };
            // A paused server serves nothing: the request waits in its socket.
            if !self
                .servers
                .get(server)
                .is_some_and(|s| s.runs(self.true_ms))
            {
                continue;
            }
            let Some(mut pending) = self.clients.get_mut(index).and_then(|c| c.pending.take())
            else {
                continue;
            };
            let first = !pending.polled;
            if first {
                pending.sent_at = now;
                // The request reaches the server now: if the engine it was made for is gone
                // (the server stepped down or took over again since), `HaStore` would run it
                // on its current engine or answer `not_active`; here it is `not_active`.
                let current = self
                    .servers
                    .get(server)
                    .filter(|server| server.engine.is_some())
                    .map(|server| server.engine_generation);
                if current != Some(pending.engine_generation) {
                    self.outcome.answered += 1;
                    self.answered(index, &pending, Answer::NotActive { ran: false });
                    continue;
                }
                if self.options.trace {
                    self.outcome.trace.push(format!(
                        "{:>7} t=+{:<8} g{} client-{index:<3} sends {}{}",
                        self.step,
                        now.saturating_sub(START_MS),
                        self.generation,
                        describe_request(&pending.request),
                        if self.ha {
                            format!(" to server-{server}")
                        } else {
                            String::new()
                        }
                    ));
                }
                if let Request::Acquire { args, try_: true } = &pending.request {
                    pending.try_before = Some(self.queue_of(server, &args.lock));
                }
            }
            pending.polled = true;
            match pending.future.as_mut().poll(&mut cx) {
                Poll::Ready(answer) => {
                    self.outcome.answered += 1;
                    self.answered(index, &pending, answer);
                }
                Poll::Pending => {
                    if let Some(client) = self.clients.get_mut(index) {
                        client.pending = Some(pending);
                    }
                }
            }
        }
        self.poll_system();
    }

    /// Polls the engines' own work (ticks) of every running server.
    fn poll_system(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut system = std::mem::take(&mut self.system);
        let now = self.true_ms;
        let servers = &self.servers;
        let ticked = &mut self.ticked;
        system.retain_mut(|pending| {
            if !servers.get(pending.server).is_some_and(|s| s.runs(now)) {
                return true;
            }
            if !pending.polled && !ticked.contains(&pending.server) {
                ticked.push(pending.server);
            }
            pending.polled = true;
            pending.future.as_mut().poll(&mut cx).is_pending()
        });
        self.system.extend(system);
    }

    /// Observations after a round: the handover and job invariants, which hold whenever no
    /// deadline is due (right after a tick ran).
    fn after_round(&mut self) {
        for server in self.ticked.clone() {
            if let Some(engine) = self.active_engine(server) {
                self.observe_after_tick(&engine);
            }
        }
    }

    fn observe_after_tick(&mut self, engine: &Engine) {
        let now = self.now();
        let idle: Vec<(LockName, TicketId)> = engine.inspect(|state| {
            LOCKS
                .iter()
                .filter(|(_, capacity)| *capacity == 1)
                .filter_map(|(name, _)| LockName::new(name).ok())
                .filter_map(|name| state.lock(&name))
                .filter(|view| {
                    view.holders.is_empty() && view.delayed_until.is_none_or(|until| until <= now)
                })
                .filter_map(|view| {
                    view.waiters
                        .iter()
                        .find(|ticket| !ticket.waiter_gone)
                        .map(|ticket| (view.name.clone(), ticket.id))
                })
                .collect()
        });
        for (lock, ticket) in idle {
            self.record(usize::MAX, EventKind::IdleWithWaiter { lock, ticket });
        }
        let jobs: Vec<JobId> = self.jobs.iter().copied().collect();
        let mismatches: Vec<(JobId, String)> = engine.inspect(|state| {
            jobs.iter()
                .filter_map(|id| {
                    let job = state.job(*id)?;
                    let lease_live = job.lease.is_some_and(|lease| state.lease(lease).is_some());
                    let ticket_queued = job.ticket.is_some_and(|ticket| {
                        state.ticket_lock(ticket).is_some()
                            && state
                                .lock(&job.lock)
                                .is_some_and(|view| view.waiters.iter().any(|t| t.id == ticket))
                    });
                    let what = match job.state {
                        JobState::Running if !lease_live => "running without a live lease",
                        JobState::Waiting if !ticket_queued => "waiting without a queued ticket",
                        state if state.is_final() && lease_live => "finished but its lease is live",
                        _ => return None,
                    };
                    Some((*id, format!("{what} ({})", job.state.as_str())))
                })
                .collect()
        });
        for (job, what) in mismatches {
            self.record(usize::MAX, EventKind::JobMismatch { job, what });
        }
    }

    fn note_job(&mut self, job: JobId) {
        if !self.jobs.contains(&job) {
            self.jobs.push_back(job);
            if self.jobs.len() > 32 {
                self.jobs.pop_front();
            }
        }
    }

    fn granted(
        &mut self,
        index: usize,
        lease: Lease,
        via: Via,
        sent_at: Millis,
        job: Option<JobId>,
        request_id: Option<String>,
    ) {
        self.outcome.grants += 1;
        self.delivered.insert(lease.id);
        self.known
            .insert(lease.id, (lease.lock.clone(), lease.token));
        if let Some(client) = self.clients.get_mut(index) {
            client.held = Some(Held {
                lease: lease.id,
                lock: lease.lock.clone(),
                token: lease.token,
                ttl_ms: lease.ttl_ms,
                job,
                stop: false,
            });
            client.waiting = None;
        }
        self.record(
            index,
            EventKind::Granted {
                lease,
                via,
                sent_at,
                request_id,
            },
        );
    }

    fn ended(&mut self, index: usize, lease: LeaseId) {
        self.known.remove(&lease);
        if let Some(client) = self.clients.get_mut(index)
            && client.held.as_ref().is_some_and(|held| held.lease == lease)
        {
            client.held = None;
        }
    }

    fn answered(&mut self, index: usize, pending: &Pending, answer: Answer) {
        let sent_at = pending.sent_at;
        if let Answer::NotActive { ran } = answer {
            self.outcome.not_active += 1;
            if ran {
                match &pending.request {
                    Request::Revoke { lease, .. } | Request::Finish { lease, .. } => {
                        self.cut_ending.push((*lease, sent_at));
                    }
                    Request::Cancel { ticket } => self.cut_cancelling.push(*ticket),
                    _ => {}
                }
            }
            let next = self
                .servers
                .get(pending.server)
                .and_then(|server| server.hint)
                .filter(|hint| *hint != pending.server)
                .unwrap_or((pending.server + 1) % self.servers.len());
            if let Some(client) = self.clients.get_mut(index) {
                client.server = next;
            }
            return;
        }
        let loaded_at = self
            .servers
            .get(pending.server)
            .map_or(0, |server| server.loaded_at);
        match (&pending.request, answer) {
            (Request::Acquire { args, try_ }, Answer::Acquire(result)) => {
                let request_id = args.request_id.clone();
                match result {
                    Ok(AcquireOutcome::Granted(lease)) => {
                        if *try_ {
                            let before = pending.try_before.clone().unwrap_or_default();
                            if !before.is_empty() {
                                let after = self.queue_of(pending.server, &lease.lock);
                                // A lease granted by this try itself: not one an owner key
                                // already had, nor its queued ticket's (granted from the queue).
                                let granted_new = lease.granted_at == sent_at
                                    && lease.ticket.is_none()
                                    && lease.request_id == request_id
                                    && !self.known.contains_key(&lease.id);
                                self.record(
                                    index,
                                    EventKind::TryAroundQueue {
                                        lock: lease.lock.clone(),
                                        before,
                                        after,
                                        granted_new,
                                    },
                                );
                            }
                        }
                        let via = if *try_ { Via::Try } else { Via::Queue };
                        self.granted(index, lease, via, sent_at, None, request_id);
                    }
                    Ok(AcquireOutcome::Queued(queued)) => {
                        if let Some(client) = self.clients.get_mut(index) {
                            client.waiting = Some(Waiting {
                                ticket: queued.ticket.id,
                                lock: queued.ticket.lock.clone(),
                                job: None,
                            });
                        }
                        self.record(
                            index,
                            EventKind::Queued {
                                ticket: queued.ticket.id,
                                lock: queued.ticket.lock,
                                seq: queued.ticket.seq,
                                queued_at: queued.ticket.queued_at,
                                lapse_at: queued.ticket.lapse_at,
                                gone: queued.ticket.waiter_gone,
                                request_id,
                            },
                        );
                    }
                    Ok(AcquireOutcome::Busy(_)) => {
                        self.record(
                            index,
                            EventKind::Busy {
                                lock: args.lock.clone(),
                                request_id,
                            },
                        );
                    }
                    Err(StoreError::Unavailable(_)) => {}
                    Err(error) => {
                        if let Some(client) = self.clients.get_mut(index) {
                            client.waiting = None;
                        }
                        self.record(
                            index,
                            EventKind::AcquireRefused {
                                request_id,
                                error: error.to_string(),
                            },
                        );
                    }
                }
            }
            (Request::Wait { ticket, job, .. }, Answer::Ticket(result)) => match result {
                Ok(TicketStatus::Granted(lease)) => {
                    let via = if job.is_some() { Via::Job } else { Via::Queue };
                    let request_id = lease.request_id.clone();
                    self.granted(index, lease, via, sent_at, *job, request_id);
                }
                Ok(TicketStatus::Queued(queued)) => self.record(
                    index,
                    EventKind::StillQueued {
                        ticket: *ticket,
                        lapse_at: queued.ticket.lapse_at,
                        gone: queued.ticket.waiter_gone,
                    },
                ),
                Err(StoreError::Unavailable(_)) => {}
                Err(error) => {
                    if let Some(client) = self.clients.get_mut(index) {
                        client.waiting = None;
                    }
                    self.record(
                        index,
                        EventKind::TicketEnded {
                            ticket: *ticket,
                            how: error.to_string(),
                        },
                    );
                }
            },
            (Request::Cancel { ticket }, Answer::Cancel(result)) => {
                if matches!(result, Err(StoreError::Unavailable(_))) {
                    return;
                }
                if let Some(client) = self.clients.get_mut(index) {
                    client.waiting = None;
                }
                self.record(
                    index,
                    EventKind::TicketEnded {
                        ticket: *ticket,
                        how: format!("cancel: {result:?}"),
                    },
                );
            }
            (Request::Renew { lease }, Answer::Renew(result)) => match result {
                Ok(renewed) => {
                    if let Some(client) = self.clients.get_mut(index)
                        && let Some(held) = &mut client.held
                        && held.lease == renewed.id
                    {
                        held.ttl_ms = renewed.ttl_ms;
                    }
                    self.record(
                        index,
                        EventKind::Renewed {
                            lease: renewed,
                            sent_at,
                        },
                    );
                }
                Err(StoreError::Unavailable(_)) => {}
                Err(error) => {
                    self.ended(index, *lease);
                    self.record(
                        index,
                        EventKind::Lost {
                            lease: *lease,
                            error: error.to_string(),
                        },
                    );
                }
            },
            (Request::Release { lease }, Answer::Release(result)) => {
                if matches!(result, Err(StoreError::Unavailable(_))) {
                    return;
                }
                self.ended(index, *lease);
                self.record(
                    index,
                    EventKind::Released {
                        lease: *lease,
                        sent_at,
                    },
                );
            }
            (Request::Revoke { lease, .. }, Answer::Revoke(Ok(revoked))) => {
                self.known.remove(lease);
                self.record(
                    index,
                    EventKind::Revoked {
                        lease: revoked,
                        sent_at,
                    },
                );
            }
            (Request::Fence { lock, token }, Answer::Fence(result)) => match result {
                Ok(_) => self.record(
                    index,
                    EventKind::FenceAccepted {
                        lock: lock.clone(),
                        token: *token,
                        sent_at,
                        loaded_at,
                    },
                ),
                Err(StoreError::Token(TokenError::Stale { .. })) => self.record(
                    index,
                    EventKind::FenceRefused {
                        lock: lock.clone(),
                        token: *token,
                    },
                ),
                Err(_) => {}
            },
            (Request::CreateJob { args }, Answer::Job(result)) => {
                let Ok(created) = *result else {
                    return;
                };
                self.note_job(created.job.id);
                self.record(
                    index,
                    EventKind::JobCreated {
                        job: created.job.id,
                        policy: args.policy,
                        state: created.job.state,
                        has_lease: created.lease.is_some(),
                        has_ticket: created.ticket.is_some(),
                        token: created.job.token,
                        lease_token: created.lease.as_ref().map(|lease| lease.token),
                    },
                );
                if let Some(lease) = created.lease {
                    let request_id = args.request_id.clone();
                    self.granted(
                        index,
                        lease,
                        Via::Job,
                        sent_at,
                        Some(created.job.id),
                        request_id,
                    );
                } else if let Some(queued) = created.ticket
                    && let Some(client) = self.clients.get_mut(index)
                {
                    client.waiting = Some(Waiting {
                        ticket: queued.ticket.id,
                        lock: queued.ticket.lock,
                        job: Some(created.job.id),
                    });
                }
            }
            (Request::Heartbeat { lease, .. }, Answer::Heartbeat(result)) => match result {
                Ok((renewed, stop)) => {
                    if let Some(client) = self.clients.get_mut(index)
                        && let Some(held) = &mut client.held
                    {
                        held.stop = stop.is_some();
                    }
                    self.record(
                        index,
                        EventKind::Renewed {
                            lease: renewed,
                            sent_at,
                        },
                    );
                }
                Err(StoreError::Unavailable(_)) => {}
                Err(error) => {
                    self.ended(index, *lease);
                    self.record(
                        index,
                        EventKind::Lost {
                            lease: *lease,
                            error: error.to_string(),
                        },
                    );
                }
            },
            (Request::Finish { job, lease }, Answer::Finish(result)) => match *result {
                Ok(_) => {
                    self.ended(index, *lease);
                    self.record(
                        index,
                        EventKind::JobFinished {
                            job: *job,
                            lease: Some(*lease),
                            sent_at,
                        },
                    );
                }
                Err(StoreError::Unavailable(_)) => {}
                Err(error) => {
                    self.ended(index, *lease);
                    self.record(
                        index,
                        EventKind::Lost {
                            lease: *lease,
                            error: error.to_string(),
                        },
                    );
                }
            },
            _ => {}
        }
    }
}

/// An operation as `HaStore::on_active` runs it: refused unless the gate is open before it
/// runs, ended `not_active` when the server's role changes meanwhile, and its answer withheld
/// when the gate closed while it ran.
fn gated(gate: Rc<GateCell>, mut inner: OpFuture) -> OpFuture {
    Box::pin(async move {
        let generation = gate.generation.get();
        if !gate.open() {
            return Answer::NotActive { ran: false };
        }
        let answer = std::future::poll_fn(|cx| {
            if gate.generation.get() != generation {
                return Poll::Ready(None);
            }
            inner.as_mut().poll(cx).map(Some)
        })
        .await;
        match answer {
            Some(answer) if gate.open() && gate.generation.get() == generation => answer,
            _ => Answer::NotActive { ran: true },
        }
    })
}

fn acquire_request(engine: Arc<Engine>, args: AcquireArgs) -> (Request, OpFuture) {
    let try_ = args.wait.is_zero() && !args.queue;
    let request = Request::Acquire {
        args: args.clone(),
        try_,
    };
    (
        request,
        Box::pin(async move { Answer::Acquire(engine.acquire(args).await) }),
    )
}

fn describe_request(request: &Request) -> String {
    match request {
        Request::Acquire { args, try_ } => format!(
            "acquire {} request {} ({}, wait {} ms, queue {}, ttl {} ms)",
            args.lock,
            args.request_id.as_deref().unwrap_or("-"),
            if *try_ { "try" } else { "waits" },
            args.wait.as_millis(),
            args.queue,
            args.ttl_ms
        ),
        Request::Wait { ticket, lock, .. } => format!("wait on {ticket:?} ({lock})"),
        Request::Cancel { ticket } => format!("cancel {ticket:?}"),
        Request::Renew { lease } => format!("renew {lease:?}"),
        Request::Release { lease } => format!("release {lease:?}"),
        Request::Revoke { lock, token, .. } => format!("revoke {lock} token {token}"),
        Request::Fence { lock, token } => format!("fence {lock} token {token}"),
        Request::CreateJob { args } => format!(
            "create job {} ({}) request {}",
            args.name,
            args.policy.as_str(),
            args.request_id.as_deref().unwrap_or("-")
        ),
        Request::Heartbeat { lease, .. } => format!("heartbeat {lease:?}"),
        Request::Finish { lease, .. } => format!("finish the job of {lease:?}"),
        Request::Tick => "tick".into(),
    }
}
