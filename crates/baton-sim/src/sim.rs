//! The simulator: one seed drives the real [`Engine`] (and through it the real
//! [`baton_core::State`]) with many clients, faults and a clock of its own.
//!
//! Determinism: the engine runs with `manual_commit` (no committer thread; the simulator
//! decides when each batch commits), `run_timer: false` (the simulator calls `tick`), and a
//! seeded [`IdSource`]; every request is a future polled by hand, in a fixed order, on a
//! current-thread tokio runtime whose time is paused and moved only by the simulator. Nothing
//! else runs, so one seed gives one history.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use baton_core::{
    Cancelled, Config, FinishJob, Job, JobCapability, JobCreated, JobId, JobState, Lease, LeaseId,
    LockName, Millis, Policy, Released, StopReason, TicketId, TicketStatus, TokenError,
};
use baton_store::{
    AcquireArgs, AcquireOutcome, CreateJobArgs, Engine, EngineOptions, IdSource, ManualClock,
    Store, StoreError,
};

use crate::check::{self, Violation};
use crate::disk::{Disk, DiskState, SimPersister};
use crate::history::{Event, EventKind, Via};
use crate::rng::{Rng, mix};

/// The server's clock at the start of every run.
pub const START_MS: Millis = 1_700_000_000_000;

/// The locks clients use, with their capacities: two mutexes and two semaphores.
pub const LOCKS: [(&str, u32); 4] = [("sim-a", 1), ("sim-b", 1), ("sim-c", 2), ("sim-d", 3)];

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
        }
    }
}

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
    /// What the checkers found (empty: every guarantee held).
    pub violations: Vec<Violation>,
    /// The readable trace (with [`Options::trace`]).
    pub trace: Vec<String>,
    /// A digest of the whole history: equal digests, equal histories.
    pub digest: u64,
    /// The number of events recorded.
    pub events: usize,
}

/// The table's configuration in the simulation: short periods, so lapses, lock-delays,
/// forgotten locks and pruning all happen within a run.
pub fn config() -> Config {
    Config {
        lock_delay_ms: 400,
        ticket_lapse_ms: 2_000,
        history_retention_ms: 120_000,
        ended_retention_ms: 120_000,
        idle_lock_retention_ms: 20_000,
        job_retention_ms: 30_000,
        ..Config::default()
    }
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
    engine: Option<Arc<Engine>>,
    failed: bool,
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
    ticked: bool,
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
            })
            .collect();
        Sim {
            options: options.clone(),
            rng,
            clock: Arc::new(ManualClock::new(START_MS)),
            disk: Arc::new(Mutex::new(DiskState::default())),
            ids,
            engine: None,
            failed: false,
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
            ticked: false,
            checked_upto: 0,
        }
    }

    fn now(&self) -> Millis {
        baton_store::Clock::now_ms(self.clock.as_ref())
    }

    fn open(&mut self) -> bool {
        let options = EngineOptions {
            config: config(),
            run_timer: false,
            manual_commit: true,
            ids: Some(self.ids.clone()),
            ..EngineOptions::default()
        };
        let persister = Box::new(SimPersister {
            disk: Arc::clone(&self.disk),
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
                self.engine = Some(Arc::new(engine));
                self.failed = false;
                if self.generation > 1 {
                    self.record(usize::MAX, EventKind::Restarted { leases, tickets });
                }
                true
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
        if !self.open() {
            return;
        }
        let mut check_every = 2_000;
        while self.outcome.ops < self.options.ops {
            self.step += 1;
            self.ticked = false;
            if self.failed {
                self.crash("io-error").await;
                if self.engine.is_none() {
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
                960..965 => self.crash("lost-batch").await,
                965..970 => {
                    self.commit();
                    self.crash("durable-unacknowledged").await;
                }
                970..976 => {
                    let ms = self.rng.range(1_000, 12_000);
                    self.clock.advance(ms);
                    self.outcome.clock_jumps += 1;
                    self.record(usize::MAX, EventKind::ClockJump { ms });
                    self.start_tick();
                }
                976..980 => {
                    if let Ok(mut disk) = self.disk.lock() {
                        disk.fail_next = true;
                    }
                }
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
            if self.engine.is_none() {
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
            if self.engine.is_none() || self.failed {
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

    fn finish(mut self) -> Outcome {
        self.outcome.steps = self.step;
        self.outcome.violations = check::all(&self.events);
        self.outcome.events = self.events.len();
        self.outcome.digest = self.events.iter().fold(self.options.seed, |digest, event| {
            mix(digest ^ crate::trace::fingerprint(&event.kind) ^ event.at ^ event.step)
        });
        if let Ok(disk) = self.disk.lock() {
            self.outcome.commits = disk.commits;
        }
        self.outcome
    }

    async fn advance(&mut self, ms: u64) {
        tokio::time::advance(Duration::from_millis(ms)).await;
        self.clock.advance(ms);
        self.start_tick();
    }

    fn start_tick(&mut self) {
        let Some(engine) = self.engine.clone() else {
            return;
        };
        self.system.push(Pending {
            request: Request::Tick,
            future: Box::pin(async move {
                let _ = engine.tick().await;
                Answer::Tick
            }),
            polled: false,
            sent_at: 0,
            try_before: None,
        });
    }

    fn commit(&mut self) {
        if let Some(engine) = &self.engine
            && !self.failed
            && engine.commit_pending().is_err()
        {
            self.failed = true;
        }
    }

    /// The server crashes: every request in flight is cut off unanswered, the engine is
    /// dropped with whatever it had not committed, and a new one recovers from the disk.
    async fn crash(&mut self, how: &'static str) {
        let mut ending = Vec::new();
        let mut cancelling = Vec::new();
        for client in &mut self.clients {
            if let Some(pending) = client.pending.take() {
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
        self.system.clear();
        self.record(
            usize::MAX,
            EventKind::Crash {
                how,
                ending,
                cancelling,
            },
        );
        self.outcome.crashes += 1;
        self.engine = None;
        // A restart takes a moment; waits measured on the runtime's clock move on too.
        let down = self.rng.range(0, 1_500);
        tokio::time::advance(Duration::from_millis(down)).await;
        self.clock.advance(down);
        self.open();
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
            if parked && pending.polled && self.rng.chance(80) {
                self.depart(index);
            }
            return;
        }
        if let Some((request, future)) = self.choose(index) {
            self.outcome.ops += 1;
            if let Some(client) = self.clients.get_mut(index) {
                client.pending = Some(Pending {
                    request,
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
        drop(pending);
        self.outcome.departures += 1;
        if self.failed {
            return;
        }
        let Some(engine) = &self.engine else {
            return;
        };
        let delivered = &self.delivered;
        let still_held = engine.inspect(|state| {
            state
                .lock(&lock)
                .map(|view| {
                    view.holders
                        .into_iter()
                        .filter(|lease| {
                            lease.ticket.is_some()
                                && !delivered.contains(&lease.id)
                                && (ticket.is_some() && lease.ticket == ticket
                                    || request_id.is_some() && lease.request_id == request_id)
                        })
                        .collect()
                })
                .unwrap_or_default()
        });
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
    fn choose(&mut self, index: usize) -> Option<(Request, OpFuture)> {
        let engine = self.engine.clone()?;
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
                        Box::pin(async move { Answer::Renew(engine.renew(lease, ttl).await) }),
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

    fn queue_of(&self, lock: &LockName) -> Vec<TicketId> {
        let Some(engine) = &self.engine else {
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
            let Some(mut pending) = self.clients.get_mut(index).and_then(|c| c.pending.take())
            else {
                continue;
            };
            let first = !pending.polled;
            if first {
                pending.sent_at = now;
                if self.options.trace {
                    self.outcome.trace.push(format!(
                        "{:>7} t=+{:<8} g{} client-{index:<3} sends {}",
                        self.step,
                        now.saturating_sub(START_MS),
                        self.generation,
                        describe_request(&pending.request)
                    ));
                }
                if let Request::Acquire { args, try_: true } = &pending.request {
                    pending.try_before = Some(self.queue_of(&args.lock));
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
        let mut system = std::mem::take(&mut self.system);
        system.retain_mut(|pending| {
            if !pending.polled {
                self.ticked = true;
            }
            pending.polled = true;
            pending.future.as_mut().poll(&mut cx).is_pending()
        });
        self.system.extend(system);
    }

    /// Observations after a round: the handover and job invariants, which hold whenever no
    /// deadline is due (right after a tick ran).
    fn after_round(&mut self) {
        let Some(engine) = self.engine.clone() else {
            return;
        };
        if !self.ticked || self.failed {
            return;
        }
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
        match (&pending.request, answer) {
            (Request::Acquire { args, try_ }, Answer::Acquire(result)) => {
                let request_id = args.request_id.clone();
                match result {
                    Ok(AcquireOutcome::Granted(lease)) => {
                        if *try_ {
                            let before = pending.try_before.clone().unwrap_or_default();
                            if !before.is_empty() {
                                let after = self.queue_of(&lease.lock);
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
                Ok(TicketStatus::Queued(_)) | Err(StoreError::Unavailable(_)) => {}
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
