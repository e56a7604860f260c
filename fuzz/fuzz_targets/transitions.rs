//! An arbitrary sequence of operations against the lock table ([`State`]): acquires (try and
//! queue, owner keys, request ids, capacities, out-of-range ttls), waits, cancels, renewals,
//! releases, revocations, fence checks, jobs (create under every policy, heartbeat, finish) and
//! time moving forward (by an amount, or to the next deadline) with ticks.
//!
//! After every operation:
//! - the table's own structural invariants hold (`State::check_invariants`);
//! - the `Change`s it recorded apply cleanly to a "disk" (the shared test `Disk`, which panics
//!   on a change that makes no sense: deleting what was never stored, a counter going back).
//!
//! At arbitrary points the table is restored from that disk (a restart), which must succeed,
//! keep every live lease and the token counter, and pass the invariants again.
//!
//! The operations mirror the proptest model (crates/baton-core/tests/model.rs), without the
//! model: the fuzzer looks for panics and broken invariants, the model for wrong answers.

#![no_main]

use arbitrary::Arbitrary;
use baton_core::{
    Acquire, Acquired, Config, CreateJob, FinishJob, JobCapability, JobId, JobState, LeaseId,
    LockName, Mode, Policy, State, TicketId, TicketStatus,
};
use libfuzzer_sys::fuzz_target;

#[path = "../../crates/baton-core/tests/common/mod.rs"]
mod common;

use common::Disk;

const T0: u64 = 1_000_000;
const NAMES: [&str; 4] = ["alpha", "team-b/beta", "g.amma@x", "delta"];
const CLIENTS: usize = 6;

/// Small bounds so that limits, pruning and forgetting are reached within a short run.
#[derive(Debug, Arbitrary)]
struct Setup {
    lock_delay: u8,
    lapse: u8,
    retention: u8,
    small_limits: bool,
}

impl Setup {
    fn config(&self) -> Config {
        let small = self.small_limits;
        Config {
            lock_delay_ms: u64::from(self.lock_delay % 4) * 500,
            ticket_lapse_ms: 200 + u64::from(self.lapse) * 20,
            history_retention_ms: 1_000 + u64::from(self.retention) * 100,
            history_per_lock_max: if small { 3 } else { 1_000 },
            history_total_max: if small { 5 } else { 10_000 },
            ended_retention_ms: 1_000 + u64::from(self.retention) * 50,
            ended_max: if small { 4 } else { 10_000 },
            idle_lock_retention_ms: 1_000 + u64::from(self.retention) * 10,
            waiters_per_lock_max: if small { 2 } else { 8 },
            waiters_total_max: if small { 3 } else { 20 },
            leases_total_max: if small { 3 } else { 100 },
            locks_max: if small { 2 } else { NAMES.len() },
            job_retention_ms: 1_000 + u64::from(self.retention) * 100,
            jobs_max: if small { 3 } else { 50 },
            job_output_bytes_max: if small { 64 } else { 64 * 1024 },
            // The per-key defaults: the clients carry quotas of their own (`quota_of`).
            ..Config::default()
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Op {
    Acquire {
        lock: u8,
        client: u8,
        queue: bool,
        key: bool,
        request: Option<u8>,
        capacity: Option<u8>,
        ttl: Ttl,
    },
    Wait {
        ticket: u8,
        keep: Option<u16>,
    },
    Cancel {
        ticket: u8,
        forget: bool,
    },
    Renew {
        lease: u8,
        ttl: Option<Ttl>,
    },
    Release {
        lease: u8,
    },
    Revoke {
        lock: u8,
        token: u8,
    },
    Fence {
        lock: u8,
        token: u8,
    },
    /// Time moves forward by `ms`, then the timer ticks.
    Advance {
        ms: u16,
    },
    /// Time moves exactly to the table's next deadline, then the timer ticks.
    NextDeadline,
    /// Time moves forward but the operation arrives before the tick.
    Late {
        ms: u16,
        op: Box<Op>,
    },
    CreateJob {
        lock: u8,
        client: u8,
        policy: u8,
        capacity: Option<u8>,
        request: Option<u8>,
        ttl: Ttl,
        min_hold: Option<u16>,
        once_per: Option<u16>,
        batch: bool,
    },
    Heartbeat {
        job: u8,
        lease: u8,
        own_lease: bool,
        ttl: Option<Ttl>,
    },
    Finish {
        job: u8,
        own_capability: bool,
        other: u8,
        state: u8,
        exit_code: Option<i8>,
        output: u8,
    },
    /// Restart from the disk after `downtime` ms.
    Restore {
        downtime: u16,
    },
}

/// A time-to-live: mostly valid, sometimes out of range.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Ttl {
    Short,
    Medium,
    Long,
    Raw(u32),
}

impl Ttl {
    fn ms(self) -> u64 {
        match self {
            Ttl::Short => 500,
            Ttl::Medium => 2_000,
            Ttl::Long => 30_000,
            Ttl::Raw(ms) => u64::from(ms),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    setup: Setup,
    ops: Vec<Op>,
}

struct Harness {
    config: Config,
    state: State,
    disk: Disk,
    now: u64,
    next_id: u64,
    leases: Vec<LeaseId>,
    tickets: Vec<TicketId>,
    jobs: Vec<JobId>,
    tokens: Vec<u64>,
}

fn pick<T: Copy>(items: &[T], index: u8) -> Option<T> {
    if items.is_empty() {
        None
    } else {
        Some(items[usize::from(index) % items.len()])
    }
}

fn name(index: u8) -> LockName {
    LockName::new(NAMES[usize::from(index) % NAMES.len()]).expect("a valid name")
}

fn id_bytes(n: u64) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    bytes[8..].copy_from_slice(&n.to_be_bytes());
    bytes
}

fn policy(index: u8) -> Policy {
    match index % 5 {
        0 => Policy::Wait,
        1 => Policy::Skip,
        2 => Policy::Fail,
        3 => Policy::Replace,
        _ => Policy::Coalesce,
    }
}

fn job_state(index: u8) -> JobState {
    match index % 10 {
        0 => JobState::Succeeded,
        1 => JobState::Failed,
        2 => JobState::Cancelled,
        3 => JobState::TimedOut,
        4 => JobState::Lost,
        5 => JobState::Queued,
        6 => JobState::Waiting,
        7 => JobState::Running,
        8 => JobState::Skipped,
        _ => JobState::Coalesced,
    }
}

impl Harness {
    fn new(config: Config) -> Harness {
        Harness {
            state: State::new(config.clone(), T0),
            config,
            disk: Disk::default(),
            now: T0,
            next_id: 1,
            leases: Vec::new(),
            tickets: Vec::new(),
            jobs: Vec::new(),
            tokens: Vec::new(),
        }
    }

    fn fresh(&mut self) -> [u8; 16] {
        self.next_id += 1;
        id_bytes(self.next_id)
    }

    fn remember_lease(&mut self, id: LeaseId, token: u64) {
        self.leases.push(id);
        self.tokens.push(token);
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::Acquire {
                lock,
                client,
                queue,
                key,
                request,
                capacity,
                ttl,
            } => {
                let client = usize::from(*client) % CLIENTS;
                let command = Acquire {
                    lock: name(*lock),
                    owner: format!("client-{client}"),
                    owner_key: key.then(|| format!("key-{client}")),
                    ttl_ms: ttl.ms(),
                    capacity: capacity.map(|c| u32::from(c % 4)),
                    queue: *queue,
                    request_id: request.map(|r| format!("req-{}", r % 8)),
                    api_key: key.then(|| format!("key_{client}")),
                    // Small quotas of the clients' own, so refusals for quota happen often and
                    // the per-key counts (checked against the records) move every way.
                    quota: quota_of(client),
                    lease_id: LeaseId(self.fresh()),
                    ticket_id: TicketId(self.fresh()),
                    value: key.then(|| format!("10.0.0.{client}:7000")),
                    // Readers among writers, also on semaphores (refused as a mode conflict).
                    mode: if client % 3 == 0 {
                        Mode::Shared
                    } else {
                        Mode::Exclusive
                    },
                };
                match self.state.acquire(command, self.now) {
                    Ok(Acquired::Granted(lease)) => self.remember_lease(lease.id, lease.token),
                    Ok(Acquired::Queued(queued)) => self.tickets.push(queued.ticket.id),
                    Ok(Acquired::Busy(_)) | Err(_) => {}
                }
            }
            Op::Wait { ticket, keep } => {
                if let Some(id) = pick(&self.tickets, *ticket) {
                    let keep = keep.map(|ms| self.now + u64::from(ms));
                    if let Ok(TicketStatus::Granted(lease)) =
                        self.state.wait_ticket(id, keep, self.now)
                    {
                        self.remember_lease(lease.id, lease.token);
                    }
                }
            }
            Op::Cancel { ticket, forget } => {
                if let Some(id) = pick(&self.tickets, *ticket) {
                    let _ = self.state.cancel_ticket(id, *forget, self.now);
                }
            }
            Op::Renew { lease, ttl } => {
                if let Some(id) = pick(&self.leases, *lease) {
                    let _ = self.state.renew(id, ttl.map(Ttl::ms), self.now);
                }
            }
            Op::Release { lease } => {
                if let Some(id) = pick(&self.leases, *lease) {
                    let _ = self.state.release(id, self.now);
                }
            }
            Op::Revoke { lock, token } => {
                let token = pick(&self.tokens, *token).unwrap_or(u64::from(*token));
                let _ = self.state.revoke(&name(*lock), token, self.now);
            }
            Op::Fence { lock, token } => {
                let token = pick(&self.tokens, *token).unwrap_or(u64::from(*token));
                let _ = self.state.fence(&name(*lock), token, self.now);
            }
            Op::Advance { ms } => {
                self.now += u64::from(*ms);
                self.state.tick(self.now);
            }
            Op::NextDeadline => {
                if let Some(deadline) = self.state.next_deadline() {
                    self.now = self.now.max(deadline);
                }
                self.state.tick(self.now);
            }
            Op::Late { ms, op } => {
                self.now += u64::from(*ms);
                // One level of lateness: a nested `Late` or `Restore` runs as a plain tick.
                match op.as_ref() {
                    Op::Late { .. } | Op::Restore { .. } => {}
                    inner => {
                        self.run(inner);
                        // Persisted, but not checked: until the late tick runs, deadlines are
                        // overdue (a lock past its delay with waiters, say), which the
                        // invariants rightly rule out only after a tick.
                        self.persist();
                    }
                }
                self.state.tick(self.now);
            }
            Op::CreateJob {
                lock,
                client,
                policy: which,
                capacity,
                request,
                ttl,
                min_hold,
                once_per,
                batch,
            } => {
                let client = usize::from(*client) % CLIENTS;
                let lock = name(*lock);
                let command = CreateJob {
                    job_id: JobId(self.fresh()),
                    name: lock.to_string(),
                    lock,
                    capacity: capacity.map(|c| u32::from(c % 4)),
                    policy: policy(*which),
                    owner: format!("runner-{client}"),
                    host: Some(format!("host-{client}")),
                    command: vec!["true".to_owned()],
                    ttl_ms: ttl.ms(),
                    request_id: request.map(|r| format!("job-req-{}", r % 8)),
                    min_hold_ms: min_hold.map(u64::from),
                    once_per_ms: once_per.map(|ms| u64::from(ms) * 10),
                    batch: batch.then(|| "batch-1".to_owned()),
                    api_key: (client % 2 == 0).then(|| format!("key_{client}")),
                    quota: quota_of(client),
                    lease_id: LeaseId(self.fresh()),
                    ticket_id: TicketId(self.fresh()),
                    value: None,
                    mode: Mode::Exclusive,
                };
                if let Ok(created) = self.state.create_job(command, self.now) {
                    self.jobs.push(created.job.id);
                    if let Some(lease) = created.lease {
                        self.remember_lease(lease.id, lease.token);
                    }
                    if let Some(queued) = created.ticket {
                        self.tickets.push(queued.ticket.id);
                    }
                }
            }
            Op::Heartbeat {
                job,
                lease,
                own_lease,
                ttl,
            } => {
                if let Some(id) = pick(&self.jobs, *job) {
                    let own = self.state.job(id).and_then(|job| job.lease);
                    let lease = match (own_lease, own) {
                        (true, Some(own)) => Some(own),
                        _ => pick(&self.leases, *lease),
                    };
                    if let Some(lease) = lease {
                        let _ = self
                            .state
                            .job_heartbeat(id, lease, ttl.map(Ttl::ms), self.now);
                    }
                }
            }
            Op::Finish {
                job,
                own_capability,
                other,
                state,
                exit_code,
                output,
            } => {
                if let Some(id) = pick(&self.jobs, *job) {
                    let own = self.state.job(id).and_then(|job| {
                        job.lease
                            .map(JobCapability::Lease)
                            .or(job.ticket.map(JobCapability::Ticket))
                    });
                    let capability = match (own_capability, own) {
                        (true, Some(own)) => Some(own),
                        _ if other % 2 == 0 => {
                            pick(&self.leases, *other / 2).map(JobCapability::Lease)
                        }
                        _ => pick(&self.tickets, *other / 2).map(JobCapability::Ticket),
                    };
                    if let Some(capability) = capability {
                        let report = FinishJob {
                            state: job_state(*state),
                            exit_code: exit_code.map(i32::from),
                            reason: None,
                            output_tail: "x".repeat(usize::from(*output)),
                        };
                        let _ = self.state.finish_job(id, capability, report, self.now);
                    }
                }
            }
            Op::Restore { downtime } => {
                self.restore(u64::from(*downtime));
            }
        }
    }

    /// Persists what the last operation changed, as a store would.
    fn persist(&mut self) {
        let changes = self.state.drain_changes();
        assert!(!self.state.has_changes(), "changes left after a drain");
        self.disk.apply_all(&changes);
        let _ = self.state.drain_wakeups();
    }

    /// Persists what the last operation changed, then checks the table.
    fn settle(&mut self) {
        self.persist();
        self.state.check_invariants();
    }

    fn restore(&mut self, downtime: u64) {
        let live: Vec<LeaseId> = self
            .state
            .locks(None, usize::MAX)
            .iter()
            .flat_map(|view| view.holders.iter().map(|lease| lease.id))
            .collect();
        let next_token = self.state.next_token();
        self.now += downtime;
        self.state = State::restore(self.config.clone(), self.disk.snapshot(), self.now)
            .unwrap_or_else(|error| panic!("restore from the disk failed: {error}"));
        for id in live {
            assert!(
                self.state.lease(id).is_some(),
                "a live lease was lost in a restart"
            );
        }
        assert!(
            self.state.next_token() >= next_token,
            "the token counter went back in a restart"
        );
    }
}

fuzz_target!(|input: Input| {
    let mut harness = Harness::new(input.setup.config());
    for op in input.ops.iter().take(200) {
        harness.run(op);
        harness.settle();
    }
    // A final restart must always work.
    harness.restore(0);
    harness.settle();
});

/// A client's own quotas: small, and different per client.
fn quota_of(client: usize) -> baton_core::KeyQuota {
    baton_core::KeyQuota {
        leases_max: Some(client % 3 + 1),
        waiters_max: Some(client % 2 + 1),
        locks_max: Some(client % 4 + 1),
        jobs_max: Some(client % 3 + 1),
    }
}
