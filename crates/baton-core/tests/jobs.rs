//! Job records, transition by transition, on the pure lock table with explicit times.
//!
//! Every step goes through [`Table`], which after each transition checks the table's own
//! invariants, the job invariants visible through the public API (a running job holds a live
//! lease that names it, a waiting job's ticket is queued, a lock listing names the right jobs),
//! and persists the changes to a [`Disk`] whose job records must then equal the table's: a job
//! transition that forgot to record its change fails here, not after a restart in production.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use baton_core::{
    Acquire, AcquireError, Acquired, CancelOutcome, Config, CreateJob, Event, FinishJob, Job,
    JobCapability, JobCreated, JobError, JobFilter, JobId, JobState, Lease, LeaseEnd, LeaseError,
    LeaseId, LockName, OutputAppended, Policy, QueuedTicket, State, StopReason, TicketError,
    TicketId, TicketStatus, limits, once_slot,
};
use common::Disk;

const T0: u64 = 1_000_000;
const DELAY: u64 = 1_000;
const LAPSE: u64 = 10_000;
const TTL: u64 = 30_000;

fn config() -> Config {
    Config {
        lock_delay_ms: DELAY,
        ticket_lapse_ms: LAPSE,
        ..Config::default()
    }
}

fn name(text: &str) -> LockName {
    LockName::new(text).unwrap()
}

fn jid(n: u8) -> JobId {
    JobId([n; 16])
}

/// A job named `job` (also its lock) with ids derived from `n`, distinct per call.
fn cmd(job: &str, policy: Policy, n: u8) -> CreateJob {
    CreateJob {
        mode: Default::default(),
        value: None,
        quota: Default::default(),
        api_key: None,
        job_id: jid(n),
        name: job.to_owned(),
        lock: name(job),
        capacity: None,
        policy,
        owner: format!("runner-{n}"),
        host: Some("host-a".into()),
        command: vec!["backup.sh".into(), "--full".into()],
        ttl_ms: TTL,
        request_id: None,
        min_hold_ms: None,
        once_per_ms: None,
        batch: None,
        lease_id: LeaseId([n; 16]),
        ticket_id: TicketId([n; 16]),
    }
}

fn report(state: JobState, exit_code: Option<i32>, output: &str) -> FinishJob {
    FinishJob {
        state,
        exit_code,
        reason: None,
        output_tail: output.to_owned(),
    }
}

fn all() -> JobFilter {
    JobFilter {
        limit: usize::MAX,
        ..JobFilter::default()
    }
}

#[track_caller]
fn running(created: &JobCreated) -> Lease {
    assert_eq!(created.job.state, JobState::Running, "{created:?}");
    assert!(created.ticket.is_none(), "a running job has no ticket");
    created
        .lease
        .clone()
        .expect("a running job comes with its lease")
}

#[track_caller]
fn waiting(created: &JobCreated) -> QueuedTicket {
    assert_eq!(created.job.state, JobState::Waiting, "{created:?}");
    assert!(created.lease.is_none(), "a waiting job has no lease");
    created
        .ticket
        .clone()
        .expect("a waiting job comes with its ticket")
}

/// The table and its disk; every step is checked and persisted.
struct Table {
    state: State,
    disk: Disk,
}

impl Table {
    fn new() -> Table {
        Table::with(config())
    }

    fn with(config: Config) -> Table {
        let mut table = Table {
            state: State::new(config, T0),
            disk: Disk::default(),
        };
        table.check();
        table
    }

    #[track_caller]
    fn create(&mut self, command: CreateJob, now: u64) -> JobCreated {
        let created = self.state.create_job(command, now).unwrap();
        self.check();
        created
    }

    #[track_caller]
    fn finish(&mut self, id: JobId, capability: JobCapability, report: FinishJob, now: u64) -> Job {
        let job = self.state.finish_job(id, capability, report, now).unwrap();
        self.check();
        assert_eq!(job, self.job(id), "finish answers the stored job");
        job
    }

    #[track_caller]
    fn heartbeat(&mut self, id: JobId, lease: LeaseId, now: u64) -> Option<StopReason> {
        let (renewed, stop) = self.state.job_heartbeat(id, lease, None, now).unwrap();
        assert_eq!(
            renewed.expires_at,
            now + renewed.ttl_ms,
            "a heartbeat renews"
        );
        self.check();
        stop
    }

    fn tick(&mut self, now: u64) {
        self.state.tick(now);
        self.check();
    }

    #[track_caller]
    fn job(&self, id: JobId) -> Job {
        self.state.job(id).cloned().expect("the job exists")
    }

    fn holders(&self, lock: &str) -> Vec<LeaseId> {
        self.state
            .lock(&name(lock))
            .map(|view| view.holders.iter().map(|lease| lease.id).collect())
            .unwrap_or_default()
    }

    fn waiters(&self, lock: &str) -> Vec<TicketId> {
        self.state
            .lock(&name(lock))
            .map(|view| view.waiters.iter().map(|ticket| ticket.id).collect())
            .unwrap_or_default()
    }

    /// Persists everything and restarts from the disk at `now`.
    fn restart(&mut self, now: u64) {
        self.check();
        self.state =
            State::restore(self.state.config().clone(), self.disk.snapshot(), now).unwrap();
        self.check();
    }

    /// The table's invariants, the jobs' invariants, and the disk agreeing on every job.
    #[track_caller]
    fn check(&mut self) {
        let state = &self.state;
        state.check_invariants();
        let jobs = state.jobs(&all());
        for job in &jobs {
            assert!(!job.name.is_empty());
            match job.state {
                JobState::Running => {
                    let lease = job.lease.expect("a running job has a lease");
                    let live = state
                        .lease(lease)
                        .unwrap_or_else(|| panic!("running job {:?} has no live lease", job.id));
                    assert_eq!(job.token, Some(live.token), "a running job shows its token");
                    assert_eq!(live.lock, job.lock);
                    assert_eq!(
                        state.job_of_lease(lease).map(|j| j.id),
                        Some(job.id),
                        "a running job's lease names it"
                    );
                    assert!(job.started_at.is_some() && job.finished_at.is_none());
                }
                JobState::Waiting => {
                    let ticket = job.ticket.expect("a waiting job has a ticket");
                    let view = state.lock(&job.lock).expect("its lock exists");
                    let index = view
                        .waiters
                        .iter()
                        .position(|t| t.id == ticket)
                        .unwrap_or_else(|| panic!("waiting job {:?} is not queued", job.id));
                    assert_eq!(
                        view.waiter_jobs[index],
                        Some(job.id),
                        "a waiter names its job"
                    );
                    assert!(job.waiting_at.is_some());
                    assert!(job.started_at.is_none() && job.finished_at.is_none());
                }
                JobState::Queued => panic!("no job stays queued after its creation"),
                _ => {
                    assert!(job.finished_at.is_some(), "a final job has finished_at");
                    if let Some(lease) = job.lease {
                        assert_ne!(
                            state.job_of_lease(lease).map(|j| j.id),
                            Some(job.id),
                            "a finished job does not hold its lease as a job"
                        );
                    }
                }
            }
            if matches!(job.state, JobState::Skipped | JobState::Coalesced) {
                assert_eq!((job.lease, job.ticket, job.token), (None, None, None));
                assert_eq!(job.started_at, None);
            }
            assert!(job.output_tail.len() <= limits::OUTPUT_TAIL_BYTES_MAX);
        }
        for view in state.locks(None, usize::MAX) {
            assert_eq!(view.holder_jobs.len(), view.holders.len());
            assert_eq!(view.waiter_jobs.len(), view.waiters.len());
            for (lease, job) in view.holders.iter().zip(&view.holder_jobs) {
                if let Some(job) = job {
                    let job = state.job(*job).expect("a holder's job exists");
                    assert_eq!((job.state, job.lease), (JobState::Running, Some(lease.id)));
                }
            }
        }
        self.disk.apply_all(&self.state.drain_changes());
        assert_eq!(
            self.disk.jobs.len(),
            jobs.len(),
            "the disk keeps exactly the table's jobs"
        );
        for job in &jobs {
            assert_eq!(
                self.disk.jobs.get(&job.id),
                Some(job),
                "the disk has the job as the table does"
            );
        }
    }
}

// --- states and timestamps ------------------------------------------------------------------

#[test]
fn a_job_on_a_free_lock_runs_at_once() {
    let mut t = Table::new();
    let created = t.create(cmd("nightly", Policy::Wait, 1), T0);
    let lease = running(&created);
    let job = created.job;
    assert_eq!(job.id, jid(1));
    assert_eq!(
        (
            job.created_at,
            job.waiting_at,
            job.started_at,
            job.finished_at
        ),
        (T0, None, Some(T0), None)
    );
    assert_eq!(job.token, Some(lease.token));
    assert_eq!(
        (lease.id, lease.ttl_ms, lease.expires_at),
        (LeaseId([1; 16]), TTL, T0 + TTL)
    );
    assert_eq!(lease.owner, "runner-1");
    assert_eq!(job.host.as_deref(), Some("host-a"));
    assert_eq!(job.command, ["backup.sh", "--full"]);
    assert_eq!(t.holders("nightly"), [lease.id]);
    assert_eq!(
        t.state.lock(&name("nightly")).unwrap().holder_jobs,
        [Some(jid(1))]
    );
    assert_eq!(t.state.job_of_lease(lease.id).map(|j| j.id), Some(jid(1)));

    // A heartbeat renews the job's lease and asks nothing of it.
    assert_eq!(t.heartbeat(jid(1), lease.id, T0 + 5_000), None);
    t.tick(T0 + TTL + 1);
    assert_eq!(
        t.job(jid(1)).state,
        JobState::Running,
        "the heartbeat kept it"
    );
}

#[test]
fn a_job_on_a_busy_lock_waits_then_runs_when_the_holder_finishes() {
    let mut t = Table::new();
    let a = running(&t.create(cmd("nightly", Policy::Wait, 1), T0));
    let created = t.create(cmd("nightly", Policy::Wait, 2), T0 + 10);
    let ticket = waiting(&created);
    assert_eq!(ticket.position, 1);
    assert_eq!(ticket.ticket.id, TicketId([2; 16]));
    assert_eq!(
        (
            created.job.created_at,
            created.job.waiting_at,
            created.job.started_at,
            created.job.token
        ),
        (T0 + 10, Some(T0 + 10), None, None)
    );
    assert_eq!(t.waiters("nightly"), [ticket.ticket.id]);
    assert_eq!(
        t.state.lock(&name("nightly")).unwrap().waiter_jobs,
        [Some(jid(2))]
    );

    let done = t.finish(
        jid(1),
        JobCapability::Lease(a.id),
        report(JobState::Succeeded, Some(0), "ok\n"),
        T0 + 500,
    );
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.finished_at, Some(T0 + 500));
    // The same transition started the waiter.
    let b = t.job(jid(2));
    assert_eq!(b.state, JobState::Running);
    assert_eq!(
        (b.waiting_at, b.started_at),
        (Some(T0 + 10), Some(T0 + 500))
    );
    let lease = t.state.lease(b.lease.unwrap()).unwrap().clone();
    assert!(lease.token > a.token);
    assert_eq!(lease.ticket, Some(ticket.ticket.id));
    assert_eq!(b.token, Some(lease.token));
    assert_eq!(t.holders("nightly"), [lease.id]);
    assert!(t.waiters("nightly").is_empty());
    // Its runner collects the lease by waiting on its ticket.
    assert_eq!(
        t.state.wait_ticket(ticket.ticket.id, None, T0 + 501),
        Ok(TicketStatus::Granted(lease.clone()))
    );
    let view = t.state.job_view(b.clone());
    assert_eq!(view.lease, Some(lease));
    assert!(view.ticket.is_none());
    // The holder's hold ended cleanly.
    let history = t.state.history(&name("nightly"), 10, T0 + 501);
    assert_eq!(history[0].end, LeaseEnd::Released);
    assert_eq!(history[0].token, a.token);
}

#[test]
fn a_job_waiting_behind_a_plain_lease_runs_when_it_is_released() {
    let mut t = Table::new();
    let plain = match t.state.acquire(
        Acquire {
            mode: Default::default(),
            value: None,
            quota: Default::default(),
            api_key: None,
            lock: name("deploy"),
            owner: "script".into(),
            owner_key: None,
            ttl_ms: TTL,
            capacity: None,
            queue: false,
            request_id: None,
            lease_id: LeaseId([0xaa; 16]),
            ticket_id: TicketId([0xaa; 16]),
        },
        T0,
    ) {
        Ok(Acquired::Granted(lease)) => lease,
        other => panic!("{other:?}"),
    };
    t.check();
    assert_eq!(t.state.lock(&name("deploy")).unwrap().holder_jobs, [None]);
    waiting(&t.create(cmd("deploy", Policy::Wait, 1), T0 + 1));
    t.state.release(plain.id, T0 + 700).unwrap();
    t.check();
    let job = t.job(jid(1));
    assert_eq!(
        (job.state, job.started_at),
        (JobState::Running, Some(T0 + 700))
    );
}

#[test]
fn finish_records_the_exit_code_and_output() {
    let mut t = Table::new();
    let a = running(&t.create(cmd("a", Policy::Wait, 1), T0));
    let b = running(&t.create(cmd("b", Policy::Wait, 2), T0));
    let ok = t.finish(
        jid(1),
        JobCapability::Lease(a.id),
        FinishJob {
            reason: Some("exited".into()),
            ..report(JobState::Succeeded, Some(0), "line 1\nline 2\n")
        },
        T0 + 1_234,
    );
    assert_eq!(
        (
            ok.state,
            ok.exit_code,
            ok.output_tail.as_str(),
            ok.reason.as_deref()
        ),
        (
            JobState::Succeeded,
            Some(0),
            "line 1\nline 2\n",
            Some("exited")
        )
    );
    assert_eq!(
        (ok.started_at, ok.finished_at),
        (Some(T0), Some(T0 + 1_234))
    );
    assert_eq!(
        ok.token,
        Some(a.token),
        "a finished job still shows the token it ran with"
    );
    let failed = t.finish(
        jid(2),
        JobCapability::Lease(b.id),
        report(JobState::Failed, Some(3), "boom"),
        T0 + 2_000,
    );
    assert_eq!(
        (failed.state, failed.exit_code),
        (JobState::Failed, Some(3))
    );
    // Both locks are free at once, with no lock-delay.
    for lock in ["a", "b"] {
        let view = t.state.lock(&name(lock)).unwrap();
        assert!(view.holders.is_empty());
        assert_eq!(view.delayed_until, None);
    }
    assert_eq!(
        t.state.renew(a.id, None, T0 + 2_001),
        Err(LeaseError::Ended(LeaseEnd::Released))
    );
}

#[test]
fn the_output_tail_keeps_the_end_cut_at_a_char_boundary() {
    let max = limits::OUTPUT_TAIL_BYTES_MAX;
    let mut t = Table::new();
    // 2-, 3- and 4-byte characters, each with the cut landing inside a character.
    let cases = [
        format!("x{}END", "é".repeat(max / 2)),
        format!("x{}END", "€".repeat(max / 3 + 1)),
        format!("xy{}END", "🦀".repeat(max / 4 + 1)),
    ];
    for (index, output) in cases.iter().enumerate() {
        let n = index as u8 + 1;
        let lock = format!("tail-{n}");
        let lease = running(&t.create(cmd(&lock, Policy::Wait, n), T0));
        assert!(output.len() > max);
        assert!(
            !output.is_char_boundary(output.len() - max),
            "the cut must fall inside a char"
        );
        let job = t.finish(
            jid(n),
            JobCapability::Lease(lease.id),
            report(JobState::Succeeded, Some(0), output),
            T0 + 1,
        );
        let kept = &job.output_tail;
        assert!(kept.len() <= max, "at most the limit");
        assert!(
            kept.len() > max - 4,
            "no more than a character less than the limit"
        );
        assert!(output.ends_with(kept.as_str()), "the end is kept");
        assert!(kept.ends_with("END"));
    }
    // At the limit exactly, nothing is cut.
    let exact = "a".repeat(max - 3) + "END";
    let lease = running(&t.create(cmd("tail-exact", Policy::Wait, 9), T0));
    let job = t.finish(
        jid(9),
        JobCapability::Lease(lease.id),
        report(JobState::Failed, Some(1), &exact),
        T0 + 1,
    );
    assert_eq!(job.output_tail, exact);
}

#[test]
fn skip_and_fail_on_a_busy_lock_record_a_skipped_job_without_lease_or_ticket() {
    for policy in [Policy::Skip, Policy::Fail] {
        let mut t = Table::new();
        let holder = running(&t.create(cmd("cron", Policy::Wait, 1), T0));
        let created = t.create(cmd("cron", policy, 2), T0 + 5);
        assert_eq!(created.job.state, JobState::Skipped, "{policy:?}");
        assert!(created.lease.is_none() && created.ticket.is_none());
        assert_eq!(created.job.finished_at, Some(T0 + 5));
        assert!(created.job.reason.as_deref().unwrap().contains("busy"));
        assert_eq!(t.holders("cron"), [holder.id], "the holder is untouched");
        assert!(t.waiters("cron").is_empty(), "no ticket was queued");
        // It never runs later either.
        t.finish(
            jid(1),
            JobCapability::Lease(holder.id),
            report(JobState::Succeeded, Some(0), ""),
            T0 + 10,
        );
        assert!(t.holders("cron").is_empty());
        assert_eq!(t.job(jid(2)).state, JobState::Skipped);
        // And nothing can act on it.
        assert_eq!(
            t.state.finish_job(
                jid(2),
                JobCapability::Lease(LeaseId([2; 16])),
                report(JobState::Succeeded, Some(0), ""),
                T0 + 11
            ),
            Err(JobError::WrongCapability)
        );
        // On a free lock, the same policy runs.
        running(&t.create(cmd("cron", policy, 3), T0 + 12));
    }
}

#[test]
fn skip_on_a_free_lock_with_a_queue_is_busy() {
    // A free slot behind a non-empty queue (lock-delay) is still busy: skip never jumps it.
    let mut t = Table::new();
    let a = running(&t.create(cmd("q", Policy::Wait, 1), T0));
    waiting(&t.create(cmd("q", Policy::Wait, 2), T0 + 1));
    t.state.revoke(&name("q"), a.token, T0 + 2).unwrap();
    t.check();
    assert!(t.holders("q").is_empty());
    let skipped = t.create(cmd("q", Policy::Skip, 3), T0 + 3);
    assert_eq!(skipped.job.state, JobState::Skipped);
    t.tick(T0 + 2 + DELAY);
    assert_eq!(t.job(jid(2)).state, JobState::Running);
}

// --- replace --------------------------------------------------------------------------------

#[test]
fn replace_asks_the_holder_to_stop_and_runs_only_after_it_finishes() {
    let mut t = Table::new();
    let a = running(&t.create(cmd("sync", Policy::Wait, 1), T0));
    assert_eq!(t.heartbeat(jid(1), a.id, T0 + 100), None);
    let r = waiting(&t.create(cmd("sync", Policy::Replace, 2), T0 + 200));
    assert_eq!(t.job(jid(1)).stop, Some(StopReason::Replaced));
    assert_eq!(t.job(jid(1)).state, JobState::Running, "asked, not stopped");
    // Never two holders: the replacing run waits while the holder winds down.
    for now in [T0 + 300, T0 + 5_000, T0 + 12_000, T0 + 20_000] {
        assert_eq!(t.heartbeat(jid(1), a.id, now), Some(StopReason::Replaced));
        t.state.wait_ticket(r.ticket.id, None, now).unwrap();
        t.tick(now);
        assert_eq!(t.holders("sync"), [a.id]);
        assert_eq!(t.job(jid(2)).state, JobState::Waiting);
    }
    let replaced = t.finish(
        jid(1),
        JobCapability::Lease(a.id),
        FinishJob {
            reason: Some("replaced".into()),
            ..report(JobState::Cancelled, Some(143), "stopping\n")
        },
        T0 + 21_000,
    );
    assert_eq!(replaced.state, JobState::Cancelled);
    assert_eq!(replaced.finished_at, Some(T0 + 21_000));
    let job = t.job(jid(2));
    assert_eq!(
        (job.state, job.started_at),
        (JobState::Running, Some(T0 + 21_000))
    );
    assert_eq!(t.holders("sync"), [job.lease.unwrap()]);
    assert_eq!(job.stop, None, "the new run is not asked to stop");
}

#[test]
fn replace_of_a_holder_that_ignores_it_runs_after_the_lease_ends_and_its_lock_delay() {
    let mut t = Table::new();
    let a = running(&t.create(cmd("sync", Policy::Wait, 1), T0));
    let r = waiting(&t.create(cmd("sync", Policy::Replace, 2), T0 + 1));
    t.state.wait_ticket(r.ticket.id, None, T0 + 9_000).unwrap();
    t.state.wait_ticket(r.ticket.id, None, T0 + 18_000).unwrap();
    t.state.wait_ticket(r.ticket.id, None, T0 + 27_000).unwrap();
    t.tick(T0 + TTL);
    assert_eq!(t.job(jid(1)).state, JobState::Lost);
    assert_eq!(
        t.job(jid(2)).state,
        JobState::Waiting,
        "not during the lock-delay"
    );
    assert!(t.holders("sync").is_empty());
    t.tick(T0 + TTL + DELAY);
    let job = t.job(jid(2));
    assert_eq!(
        (job.state, job.started_at),
        (JobState::Running, Some(T0 + TTL + DELAY))
    );
    assert!(job.token > Some(a.token));
}

/// Regression: a replace request that the lock refuses (here: another capacity while the lock is
/// in use) used to set the holder's stop flag before the refusal, so a request that changed
/// nothing else still stopped the running job at its next heartbeat.
#[test]
fn a_refused_replace_does_not_stop_the_holder() {
    let mut t = Table::new();
    let a = running(&t.create(cmd("sync", Policy::Wait, 1), T0));
    let refused = t.state.create_job(
        CreateJob {
            capacity: Some(2),
            ..cmd("sync", Policy::Replace, 2)
        },
        T0 + 1,
    );
    assert!(
        matches!(refused, Err(JobError::Acquire(_))),
        "capacity conflict: {refused:?}"
    );
    t.check();
    assert_eq!(t.state.job(jid(2)), None, "no job recorded");
    assert_eq!(t.job(jid(1)).stop, None);
    assert_eq!(
        t.heartbeat(jid(1), a.id, T0 + 2),
        None,
        "the holder is not asked to stop"
    );
}

// --- coalesce -------------------------------------------------------------------------------

#[test]
fn coalesce_keeps_at_most_one_pending_run() {
    let mut t = Table::new();
    let a = running(&t.create(cmd("index", Policy::Coalesce, 1), T0));
    let pending = waiting(&t.create(cmd("index", Policy::Coalesce, 2), T0 + 1));
    for n in 3..=12u8 {
        let created = t.create(cmd("index", Policy::Coalesce, n), T0 + u64::from(n));
        let job = &created.job;
        assert_eq!(job.state, JobState::Coalesced, "request {n}");
        assert_eq!(job.coalesced_into, Some(jid(2)));
        assert_eq!(job.finished_at, Some(T0 + u64::from(n)));
        assert!(created.lease.is_none() && created.ticket.is_none());
    }
    assert_eq!(
        t.waiters("index"),
        [pending.ticket.id],
        "one pending run, however many came"
    );
    // Another job name on the same lock has its own pending run.
    let other = t.create(
        CreateJob {
            lock: name("index"),
            ..cmd("index-other", Policy::Coalesce, 20)
        },
        T0 + 20,
    );
    waiting(&other);
    assert_eq!(t.waiters("index").len(), 2);

    t.finish(
        jid(1),
        JobCapability::Lease(a.id),
        report(JobState::Succeeded, Some(0), ""),
        T0 + 100,
    );
    assert_eq!(t.job(jid(2)).state, JobState::Running);
    // The pending run started: the next request waits again (and becomes the pending one).
    waiting(&t.create(cmd("index", Policy::Coalesce, 30), T0 + 101));
    let folded = t.create(cmd("index", Policy::Coalesce, 31), T0 + 102);
    assert_eq!(folded.job.coalesced_into, Some(jid(30)));
}

#[test]
fn a_pending_coalesce_run_that_is_cancelled_stops_being_pending() {
    let mut t = Table::new();
    running(&t.create(cmd("index", Policy::Coalesce, 1), T0));
    let pending = waiting(&t.create(cmd("index", Policy::Coalesce, 2), T0 + 1));
    t.finish(
        jid(2),
        JobCapability::Ticket(pending.ticket.id),
        report(JobState::Cancelled, None, ""),
        T0 + 2,
    );
    waiting(&t.create(cmd("index", Policy::Coalesce, 3), T0 + 3));
    // And by lapse.
    t.tick(T0 + 3 + LAPSE);
    assert_eq!(t.job(jid(3)).state, JobState::Cancelled);
    waiting(&t.create(cmd("index", Policy::Coalesce, 4), T0 + 4 + LAPSE));
}

// --- once-per -------------------------------------------------------------------------------

const PERIOD: u64 = 60_000;

#[test]
fn once_per_slots_are_centred_on_multiples_of_the_period() {
    let k = 1_000u64;
    let centre = k * PERIOD;
    assert_eq!(once_slot(centre - PERIOD / 2 - 1, PERIOD), k - 1);
    assert_eq!(once_slot(centre - PERIOD / 2, PERIOD), k);
    assert_eq!(once_slot(centre, PERIOD), k);
    assert_eq!(once_slot(centre + PERIOD / 2 - 1, PERIOD), k);
    assert_eq!(once_slot(centre + PERIOD / 2, PERIOD), k + 1);
}

#[test]
fn once_per_allows_one_run_of_a_name_per_slot() {
    let centre = 100 * PERIOD;
    let once = |n: u8| CreateJob {
        once_per_ms: Some(PERIOD),
        ..cmd("report", Policy::Wait, n)
    };
    let mut t = Table::new();
    // Two hosts whose clocks (and cron firings) differ by less than half a period.
    let first = t.create(once(1), centre - PERIOD / 3);
    let lease = running(&first);
    assert_eq!(first.job.once_slot, Some(100));
    // While the first still runs: skipped, not queued.
    let second = t.create(once(2), centre - 10);
    assert_eq!(second.job.state, JobState::Skipped);
    assert!(second.job.reason.as_deref().unwrap().contains("once-per"));
    assert!(t.waiters("report").is_empty());
    t.finish(
        jid(1),
        JobCapability::Lease(lease.id),
        report(JobState::Succeeded, Some(0), ""),
        centre,
    );
    // After it finished, still the same slot: skipped.
    let third = t.create(once(3), centre + PERIOD / 3);
    assert_eq!(third.job.state, JobState::Skipped);
    // Another name is not affected.
    running(&t.create(
        CreateJob {
            once_per_ms: Some(PERIOD),
            ..cmd("other", Policy::Wait, 4)
        },
        centre + PERIOD / 3,
    ));
    // The next slot runs.
    let next = t.create(once(5), centre + PERIOD / 2);
    running(&next);
    assert_eq!(next.job.once_slot, Some(101));
}

/// Issue 11: slots were keyed by the job's name alone (never authorized) and compared as plain
/// numbers across periods, so another team's job named like yours, or your own hourly run,
/// skipped your daily one.
#[test]
fn a_once_per_slot_of_another_lock_or_period_does_not_skip_a_run() {
    let centre = 100 * PERIOD;
    let mut t = Table::new();
    let decoy = t.create(
        CreateJob {
            lock: name("team-a/decoy"),
            once_per_ms: Some(1_000),
            ..cmd("team-b/nightly", Policy::Wait, 1)
        },
        centre,
    );
    let lease = running(&decoy);
    t.finish(
        jid(1),
        JobCapability::Lease(lease.id),
        report(JobState::Succeeded, Some(0), ""),
        centre + 1,
    );
    let nightly = t.create(
        CreateJob {
            once_per_ms: Some(PERIOD),
            ..cmd("team-b/nightly", Policy::Skip, 2)
        },
        centre + 2,
    );
    let lease = running(&nightly);
    t.finish(
        jid(2),
        JobCapability::Lease(lease.id),
        report(JobState::Succeeded, Some(0), ""),
        centre + 3,
    );
    // Another period on the same lock and name: its own slots.
    running(&t.create(
        CreateJob {
            once_per_ms: Some(PERIOD * 7),
            ..cmd("team-b/nightly", Policy::Wait, 3)
        },
        centre + 4,
    ));
}

#[test]
fn a_once_per_run_skipped_for_busy_does_not_take_the_slot() {
    let centre = 100 * PERIOD;
    let mut t = Table::new();
    let holder = running(&t.create(cmd("report", Policy::Wait, 1), centre));
    let busy = t.create(
        CreateJob {
            once_per_ms: Some(PERIOD),
            ..cmd("report", Policy::Skip, 2)
        },
        centre + 1,
    );
    assert_eq!(busy.job.state, JobState::Skipped);
    assert_eq!(busy.job.once_slot, None);
    t.finish(
        jid(1),
        JobCapability::Lease(holder.id),
        report(JobState::Succeeded, Some(0), ""),
        centre + 2,
    );
    running(&t.create(
        CreateJob {
            once_per_ms: Some(PERIOD),
            ..cmd("report", Policy::Skip, 3)
        },
        centre + 3,
    ));
}

// --- lost and cancelled ---------------------------------------------------------------------

#[test]
fn an_expired_lease_makes_the_job_lost_and_a_late_finish_keeps_lost() {
    let mut t = Table::new();
    let a = running(&t.create(cmd("etl", Policy::Wait, 1), T0));
    t.tick(T0 + TTL);
    let lost = t.job(jid(1));
    assert_eq!(lost.state, JobState::Lost);
    assert_eq!(lost.finished_at, Some(T0 + TTL));
    assert!(lost.reason.as_deref().unwrap().contains("expired"));
    assert_eq!(
        t.state.job_heartbeat(jid(1), a.id, None, T0 + TTL + 1),
        Err(JobError::Lease(LeaseError::Ended(LeaseEnd::Expired)))
    );
    assert_eq!(
        t.state.lock(&name("etl")).unwrap().delayed_until,
        Some(T0 + TTL + DELAY),
        "an unclean end: lock-delay"
    );
    // The runner's late report keeps `lost` but stores the exit code and output.
    let job = t.finish(
        jid(1),
        JobCapability::Lease(a.id),
        report(JobState::Succeeded, Some(0), "done, but too late"),
        T0 + TTL + 50,
    );
    assert_eq!(job.state, JobState::Lost);
    assert_eq!(job.exit_code, Some(0));
    assert_eq!(job.output_tail, "done, but too late");
    assert_eq!(job.finished_at, Some(T0 + TTL), "finished when it was lost");
    assert!(job.reason.as_deref().unwrap().contains("expired"));
}

/// Regression: a finish that arrives at or after the lease's deadline, before the timer ran,
/// used to release the lease cleanly (no lock-delay) and record the reported state, although a
/// renewal or release at the same instant hears "expired". It must find the job lost.
#[test]
fn a_finish_at_the_lease_deadline_finds_the_job_lost() {
    let mut t = Table::new();
    let ttl = 5_000;
    let a = running(&t.create(
        CreateJob {
            ttl_ms: ttl,
            ..cmd("etl", Policy::Wait, 1)
        },
        T0,
    ));
    waiting(&t.create(cmd("etl", Policy::Wait, 2), T0 + 1));
    let job = t.finish(
        jid(1),
        JobCapability::Lease(a.id),
        report(JobState::Succeeded, Some(0), "late"),
        T0 + ttl,
    );
    assert_eq!(job.state, JobState::Lost);
    assert_eq!(job.output_tail, "late");
    assert_eq!(job.finished_at, Some(T0 + ttl));
    let history = t.state.history(&name("etl"), 1, T0 + ttl);
    assert_eq!(history[0].end, LeaseEnd::Expired);
    assert_eq!(
        t.job(jid(2)).state,
        JobState::Waiting,
        "the lock-delay applies"
    );
}

#[test]
fn revocation_makes_the_job_lost() {
    let mut t = Table::new();
    let a = running(&t.create(cmd("etl", Policy::Wait, 1), T0));
    t.state.revoke(&name("etl"), a.token, T0 + 10).unwrap();
    t.check();
    let job = t.job(jid(1));
    assert_eq!(
        (job.state, job.finished_at),
        (JobState::Lost, Some(T0 + 10))
    );
    assert!(job.reason.as_deref().unwrap().contains("revoked"));
    assert_eq!(
        t.state.job_heartbeat(jid(1), a.id, None, T0 + 11),
        Err(JobError::Lease(LeaseError::Ended(LeaseEnd::Revoked)))
    );
}

#[test]
fn a_plain_release_of_a_jobs_lease_makes_it_lost() {
    let mut t = Table::new();
    let a = running(&t.create(cmd("etl", Policy::Wait, 1), T0));
    t.state.release(a.id, T0 + 10).unwrap();
    t.check();
    assert_eq!(t.job(jid(1)).state, JobState::Lost);
}

#[test]
fn a_waiting_job_whose_ticket_lapses_is_cancelled() {
    let mut t = Table::new();
    running(&t.create(cmd("etl", Policy::Wait, 1), T0));
    let b = waiting(&t.create(cmd("etl", Policy::Wait, 2), T0 + 1));
    t.tick(T0 + 1 + LAPSE - 1);
    assert_eq!(t.job(jid(2)).state, JobState::Waiting);
    t.tick(T0 + 1 + LAPSE);
    let job = t.job(jid(2));
    assert_eq!(
        (job.state, job.finished_at),
        (JobState::Cancelled, Some(T0 + 1 + LAPSE))
    );
    assert!(job.reason.as_deref().unwrap().contains("lapsed"));
    assert!(t.waiters("etl").is_empty());
    assert_eq!(
        t.state.wait_ticket(b.ticket.id, None, T0 + 2 + LAPSE),
        Err(TicketError::Lapsed)
    );
}

#[test]
fn finish_with_the_ticket_cancels_a_waiting_job_and_leaves_the_queue() {
    let mut t = Table::new();
    let a = running(&t.create(cmd("etl", Policy::Wait, 1), T0));
    let b = waiting(&t.create(cmd("etl", Policy::Wait, 2), T0 + 1));
    let c = waiting(&t.create(cmd("etl", Policy::Wait, 3), T0 + 2));
    let job = t.finish(
        jid(2),
        JobCapability::Ticket(b.ticket.id),
        FinishJob {
            reason: Some("gave up waiting".into()),
            ..report(JobState::Cancelled, None, "")
        },
        T0 + 3,
    );
    assert_eq!(
        (job.state, job.finished_at),
        (JobState::Cancelled, Some(T0 + 3))
    );
    assert_eq!(job.started_at, None);
    assert_eq!(t.waiters("etl"), [c.ticket.id], "its ticket left the queue");
    assert_eq!(
        t.state.wait_ticket(b.ticket.id, None, T0 + 4),
        Err(TicketError::Cancelled)
    );
    t.finish(
        jid(1),
        JobCapability::Lease(a.id),
        report(JobState::Succeeded, Some(0), ""),
        T0 + 5,
    );
    assert_eq!(t.job(jid(2)).state, JobState::Cancelled, "never granted");
    assert_eq!(t.job(jid(3)).state, JobState::Running);
}

// --- refusals -------------------------------------------------------------------------------

#[test]
fn a_wrong_lease_or_ticket_is_refused_and_changes_nothing() {
    let mut t = Table::new();
    let a = running(&t.create(cmd("etl", Policy::Wait, 1), T0));
    let b = waiting(&t.create(cmd("etl", Policy::Wait, 2), T0 + 1));
    let done = report(JobState::Succeeded, Some(0), "");
    let before = t.state.jobs(&all());
    let attempts = [
        (jid(1), JobCapability::Ticket(b.ticket.id)),
        (jid(1), JobCapability::Lease(LeaseId([0x77; 16]))),
        (jid(1), JobCapability::Ticket(TicketId([1; 16]))),
        (jid(2), JobCapability::Lease(a.id)),
        (jid(2), JobCapability::Ticket(TicketId([0x77; 16]))),
    ];
    for (id, capability) in attempts {
        assert_eq!(
            t.state.finish_job(id, capability, done.clone(), T0 + 2),
            Err(JobError::WrongCapability),
            "{id:?} with {capability:?}"
        );
    }
    assert_eq!(
        t.state
            .job_heartbeat(jid(1), LeaseId([0x77; 16]), None, T0 + 2),
        Err(JobError::WrongCapability)
    );
    assert_eq!(
        t.state.job_heartbeat(jid(2), a.id, None, T0 + 2),
        Err(JobError::WrongCapability)
    );
    assert_eq!(
        t.state
            .finish_job(jid(0x99), JobCapability::Lease(a.id), done.clone(), T0 + 2),
        Err(JobError::NotFound)
    );
    assert_eq!(
        t.state.job_heartbeat(jid(0x99), a.id, None, T0 + 2),
        Err(JobError::NotFound)
    );
    t.check();
    assert_eq!(t.state.jobs(&all()), before);
}

#[test]
fn finishing_again_with_another_state_is_already_ended() {
    let mut t = Table::new();
    let a = running(&t.create(cmd("etl", Policy::Wait, 1), T0));
    let first = t.finish(
        jid(1),
        JobCapability::Lease(a.id),
        report(JobState::Succeeded, Some(0), "out"),
        T0 + 10,
    );
    // The same report again (a retry) is accepted and changes nothing that matters.
    let again = t.finish(
        jid(1),
        JobCapability::Lease(a.id),
        report(JobState::Succeeded, Some(0), "out"),
        T0 + 20,
    );
    assert_eq!(again, first);
    for other in [
        JobState::Failed,
        JobState::Cancelled,
        JobState::TimedOut,
        JobState::Lost,
    ] {
        assert_eq!(
            t.state.finish_job(
                jid(1),
                JobCapability::Lease(a.id),
                report(other, Some(1), "x"),
                T0 + 30
            ),
            Err(JobError::AlreadyEnded(JobState::Succeeded)),
            "{other:?}"
        );
    }
    t.check();
    assert_eq!(t.job(jid(1)), first);
}

#[test]
fn states_a_runner_cannot_report_are_invalid() {
    let mut t = Table::new();
    let a = running(&t.create(cmd("etl", Policy::Wait, 1), T0));
    let before = t.job(jid(1));
    for state in [
        JobState::Running,
        JobState::Skipped,
        JobState::Coalesced,
        JobState::Queued,
        JobState::Waiting,
    ] {
        assert_eq!(
            t.state.finish_job(
                jid(1),
                JobCapability::Lease(a.id),
                report(state, None, ""),
                T0 + 1
            ),
            Err(JobError::InvalidState(state))
        );
    }
    t.check();
    assert_eq!(t.job(jid(1)), before);
    assert_eq!(t.holders("etl"), [a.id]);
}

#[test]
fn invalid_job_fields_are_refused_and_change_nothing() {
    let mut t = Table::new();
    let bad = [
        CreateJob {
            name: "no spaces".into(),
            ..cmd("etl", Policy::Wait, 1)
        },
        CreateJob {
            command: vec!["x".repeat(limits::COMMAND_BYTES_MAX + 1)],
            ..cmd("etl", Policy::Wait, 1)
        },
        CreateJob {
            batch: Some(String::new()),
            ..cmd("etl", Policy::Wait, 1)
        },
        CreateJob {
            min_hold_ms: Some(limits::MIN_HOLD_MS_MAX + 1),
            ..cmd("etl", Policy::Wait, 1)
        },
        CreateJob {
            once_per_ms: Some(limits::ONCE_PER_MS_MIN - 1),
            ..cmd("etl", Policy::Wait, 1)
        },
    ];
    for command in bad {
        let outcome = t.state.create_job(command.clone(), T0);
        assert!(matches!(outcome, Err(JobError::Invalid(_))), "{outcome:?}");
    }
    t.check();
    assert!(t.state.jobs(&all()).is_empty());
    assert!(t.state.lock(&name("etl")).is_none());
}

// --- min-hold -------------------------------------------------------------------------------

#[test]
fn min_hold_keeps_the_lock_until_the_hold_ends_then_releases_cleanly() {
    let mut t = Table::new();
    let hold = 10_000;
    // A short lease: without the hold it would have expired long before.
    let a = running(&t.create(
        CreateJob {
            min_hold_ms: Some(hold),
            ttl_ms: 3_000,
            ..cmd("cron", Policy::Wait, 1)
        },
        T0,
    ));
    waiting(&t.create(cmd("cron", Policy::Wait, 2), T0 + 100));
    let job = t.finish(
        jid(1),
        JobCapability::Lease(a.id),
        report(JobState::Succeeded, Some(0), "quick"),
        T0 + 2_000,
    );
    assert_eq!(
        (job.state, job.finished_at),
        (JobState::Succeeded, Some(T0 + 2_000))
    );
    assert_eq!(job.release_at, Some(T0 + hold));
    for now in [T0 + 2_000, T0 + 3_000, T0 + 5_000, T0 + hold - 1] {
        t.tick(now);
        t.state.wait_ticket(TicketId([2; 16]), None, now).unwrap();
        assert_eq!(t.holders("cron"), [a.id], "held at {now}");
        assert_eq!(t.job(jid(2)).state, JobState::Waiting);
        assert_eq!(
            t.job(jid(1)).state,
            JobState::Succeeded,
            "not lost while held"
        );
    }
    assert_eq!(t.state.lock(&name("cron")).unwrap().holder_jobs, [None]);
    t.tick(T0 + hold);
    let history = t.state.history(&name("cron"), 1, T0 + hold);
    assert_eq!(
        (history[0].token, history[0].end),
        (a.token, LeaseEnd::Released)
    );
    assert_eq!(history[0].ended_at, T0 + hold);
    assert_eq!(
        t.state.lock(&name("cron")).unwrap().delayed_until,
        None,
        "no lock-delay"
    );
    let b = t.job(jid(2));
    assert_eq!(
        (b.state, b.started_at),
        (JobState::Running, Some(T0 + hold))
    );
    assert_eq!(t.job(jid(1)).state, JobState::Succeeded);
}

#[test]
fn min_hold_ending_with_the_lease_at_the_same_instant_is_a_clean_release() {
    let mut t = Table::new();
    let hold = 10_000;
    let a = running(&t.create(
        CreateJob {
            min_hold_ms: Some(hold),
            ttl_ms: hold,
            ..cmd("cron", Policy::Wait, 1)
        },
        T0,
    ));
    waiting(&t.create(cmd("cron", Policy::Wait, 2), T0 + 1));
    t.finish(
        jid(1),
        JobCapability::Lease(a.id),
        report(JobState::Succeeded, Some(0), ""),
        T0 + 1_000,
    );
    t.tick(T0 + hold);
    let history = t.state.history(&name("cron"), 1, T0 + hold);
    assert_eq!(history[0].end, LeaseEnd::Released);
    assert_eq!(t.job(jid(2)).started_at, Some(T0 + hold));
}

#[test]
fn a_finish_after_the_min_hold_releases_at_once() {
    let mut t = Table::new();
    let a = running(&t.create(
        CreateJob {
            min_hold_ms: Some(1_000),
            ..cmd("cron", Policy::Wait, 1)
        },
        T0,
    ));
    let job = t.finish(
        jid(1),
        JobCapability::Lease(a.id),
        report(JobState::Failed, Some(2), ""),
        T0 + 1_000,
    );
    assert_eq!(job.release_at, None);
    assert!(t.holders("cron").is_empty());
}

// --- request ids ----------------------------------------------------------------------------

#[test]
fn the_same_request_id_returns_the_same_job() {
    let mut t = Table::new();
    let with_id = |n: u8, request: &str| CreateJob {
        request_id: Some(request.into()),
        ..cmd("etl", Policy::Wait, n)
    };
    let first = t.create(with_id(1, "req-1"), T0);
    let lease = running(&first);
    let retry = t.create(with_id(2, "req-1"), T0 + 5);
    assert_eq!(retry.job, first.job, "the same job");
    assert_eq!(retry.lease.map(|l| l.id), Some(lease.id), "the same lease");
    let waiting_first = t.create(with_id(3, "req-2"), T0 + 6);
    let ticket = waiting(&waiting_first);
    let waiting_retry = t.create(with_id(4, "req-2"), T0 + 7);
    assert_eq!(waiting_retry.job.id, jid(3));
    assert_eq!(
        waiting_retry.ticket.map(|q| q.ticket.id),
        Some(ticket.ticket.id)
    );
    assert_eq!(t.state.jobs(&all()).len(), 2, "no second job");
    assert_eq!(t.holders("etl").len(), 1);
    assert_eq!(t.waiters("etl").len(), 1, "no second ticket");
    // After the job ended, a retry still gets it, finished, with no lease.
    t.finish(
        jid(1),
        JobCapability::Lease(lease.id),
        report(JobState::Succeeded, Some(0), ""),
        T0 + 8,
    );
    let late = t.create(with_id(5, "req-1"), T0 + 9);
    assert_eq!((late.job.id, late.job.state), (jid(1), JobState::Succeeded));
    assert!(late.lease.is_none() && late.ticket.is_none());
    // And across a restart.
    t.restart(T0 + 10);
    let after = t.create(with_id(6, "req-2"), T0 + 11);
    assert_eq!(after.job.id, jid(3));
    assert_eq!(t.state.jobs(&all()).len(), 2);
}

// --- restart --------------------------------------------------------------------------------

#[test]
fn running_and_waiting_jobs_survive_a_restart() {
    let mut t = Table::new();
    let a = running(&t.create(cmd("etl", Policy::Wait, 1), T0));
    let b = waiting(&t.create(cmd("etl", Policy::Wait, 2), T0 + 1));
    let (job_a, job_b) = (t.job(jid(1)), t.job(jid(2)));
    t.restart(T0 + 1_000);
    assert_eq!(t.job(jid(1)), job_a);
    assert_eq!(t.job(jid(2)), job_b);
    assert_eq!(t.holders("etl"), [a.id]);
    assert_eq!(t.waiters("etl"), [b.ticket.id]);
    let view = t.state.lock(&name("etl")).unwrap();
    assert_eq!(
        (view.holder_jobs, view.waiter_jobs),
        (vec![Some(jid(1))], vec![Some(jid(2))])
    );
    assert_eq!(t.heartbeat(jid(1), a.id, T0 + 2_000), None);
    t.finish(
        jid(1),
        JobCapability::Lease(a.id),
        report(JobState::Succeeded, Some(0), "after restart"),
        T0 + 3_000,
    );
    let job = t.job(jid(2));
    assert_eq!(
        (job.state, job.started_at),
        (JobState::Running, Some(T0 + 3_000))
    );
    assert_eq!(t.job(jid(1)).output_tail, "after restart");
}

#[test]
fn a_waiting_job_granted_during_recovery_becomes_running() {
    let mut t = Table::new();
    running(&t.create(
        CreateJob {
            ttl_ms: 3_000,
            ..cmd("etl", Policy::Wait, 1)
        },
        T0,
    ));
    waiting(&t.create(cmd("etl", Policy::Wait, 2), T0 + 100));
    t.tick(T0 + 3_000);
    assert_eq!(t.job(jid(1)).state, JobState::Lost);
    assert_eq!(
        t.job(jid(2)).state,
        JobState::Waiting,
        "during the lock-delay"
    );
    // Down across the end of the lock-delay: recovery grants the queue's head.
    t.restart(T0 + 5_000);
    let job = t.job(jid(2));
    assert_eq!(
        (job.state, job.started_at),
        (JobState::Running, Some(T0 + 5_000))
    );
    assert_eq!(t.holders("etl"), [job.lease.unwrap()]);
}

#[test]
fn a_min_hold_release_still_happens_after_a_restart() {
    for restart_at in [T0 + 3_000, T0 + 12_000] {
        let mut t = Table::new();
        let a = running(&t.create(
            CreateJob {
                min_hold_ms: Some(10_000),
                ttl_ms: 2_000,
                ..cmd("cron", Policy::Wait, 1)
            },
            T0,
        ));
        waiting(&t.create(cmd("cron", Policy::Wait, 2), T0 + 1));
        t.finish(
            jid(1),
            JobCapability::Lease(a.id),
            report(JobState::Succeeded, Some(0), ""),
            T0 + 1_000,
        );
        t.restart(restart_at);
        if restart_at < T0 + 10_000 {
            assert_eq!(t.holders("cron"), [a.id], "still held after the restart");
            t.state
                .wait_ticket(TicketId([2; 16]), None, T0 + 9_999)
                .unwrap();
            t.tick(T0 + 9_999);
            assert_eq!(t.holders("cron"), [a.id]);
            t.tick(T0 + 10_000);
        } else {
            t.tick(restart_at);
        }
        let history = t
            .state
            .history(&name("cron"), 1, restart_at.max(T0 + 10_000));
        assert_eq!(
            (history[0].token, history[0].end),
            (a.token, LeaseEnd::Released)
        );
        assert_eq!(
            t.job(jid(2)).state,
            JobState::Running,
            "restart at {restart_at}"
        );
        assert_eq!(t.job(jid(1)).state, JobState::Succeeded);
    }
}

#[test]
fn once_per_slots_and_a_pending_coalesce_run_survive_a_restart() {
    let centre = 100 * PERIOD;
    let mut t = Table::new();
    let once = t.create(
        CreateJob {
            once_per_ms: Some(PERIOD),
            ..cmd("report", Policy::Wait, 1)
        },
        centre,
    );
    let lease = running(&once);
    t.finish(
        jid(1),
        JobCapability::Lease(lease.id),
        report(JobState::Succeeded, Some(0), ""),
        centre + 1,
    );
    running(&t.create(cmd("index", Policy::Coalesce, 2), centre + 2));
    waiting(&t.create(cmd("index", Policy::Coalesce, 3), centre + 3));
    t.restart(centre + 4);
    let skipped = t.create(
        CreateJob {
            once_per_ms: Some(PERIOD),
            ..cmd("report", Policy::Wait, 4)
        },
        centre + 5,
    );
    assert_eq!(
        skipped.job.state,
        JobState::Skipped,
        "the slot was remembered"
    );
    let folded = t.create(cmd("index", Policy::Coalesce, 5), centre + 6);
    assert_eq!(folded.job.state, JobState::Coalesced);
    assert_eq!(
        folded.job.coalesced_into,
        Some(jid(3)),
        "the pending run was remembered"
    );
}

// --- listings and retention -----------------------------------------------------------------

#[test]
fn listings_filter_by_name_state_time_and_batch_newest_first() {
    let mut t = Table::new();
    // 1: etl, succeeded (batch b1); 2: etl, failed (batch b1); 3: etl, running; 4: web,
    // waiting behind 5; 5: web, running (batch b2).
    let l1 = running(&t.create(
        CreateJob {
            batch: Some("b1".into()),
            ..cmd("etl", Policy::Wait, 1)
        },
        T0,
    ));
    t.finish(
        jid(1),
        JobCapability::Lease(l1.id),
        report(JobState::Succeeded, Some(0), ""),
        T0 + 1,
    );
    let l2 = running(&t.create(
        CreateJob {
            batch: Some("b1".into()),
            ..cmd("etl", Policy::Wait, 2)
        },
        T0 + 10,
    ));
    t.finish(
        jid(2),
        JobCapability::Lease(l2.id),
        report(JobState::Failed, Some(1), ""),
        T0 + 11,
    );
    running(&t.create(cmd("etl", Policy::Wait, 3), T0 + 20));
    running(&t.create(
        CreateJob {
            batch: Some("b2".into()),
            ..cmd("web", Policy::Wait, 5)
        },
        T0 + 30,
    ));
    waiting(&t.create(cmd("web", Policy::Wait, 4), T0 + 40));
    let ids = |filter: JobFilter| -> Vec<u8> {
        t.state
            .jobs(&filter)
            .iter()
            .map(|job| job.id.0[0])
            .collect()
    };
    assert_eq!(ids(all()), [4, 5, 3, 2, 1], "newest first");
    assert_eq!(
        ids(JobFilter {
            name: Some("etl".into()),
            ..all()
        }),
        [3, 2, 1]
    );
    assert_eq!(
        ids(JobFilter {
            states: vec![JobState::Succeeded, JobState::Failed],
            ..all()
        }),
        [2, 1]
    );
    assert_eq!(
        ids(JobFilter {
            states: vec![JobState::Running, JobState::Waiting],
            ..all()
        }),
        [4, 5, 3]
    );
    assert_eq!(
        ids(JobFilter {
            since: Some(T0 + 10),
            until: Some(T0 + 40),
            ..all()
        }),
        [5, 3, 2],
        "since inclusive, until exclusive"
    );
    assert_eq!(
        ids(JobFilter {
            batch: Some("b1".into()),
            ..all()
        }),
        [2, 1]
    );
    assert_eq!(ids(JobFilter { limit: 2, ..all() }), [4, 5]);
    assert_eq!(
        ids(JobFilter {
            name: Some("etl".into()),
            states: vec![JobState::Running],
            limit: 1,
            ..all()
        }),
        [3]
    );
    assert!(
        ids(JobFilter {
            name: Some("nobody".into()),
            ..all()
        })
        .is_empty()
    );
}

#[test]
fn retention_prunes_finished_jobs_but_never_running_or_waiting_ones() {
    let retention = 60_000;
    let mut t = Table::with(Config {
        job_retention_ms: retention,
        ..config()
    });
    let a = running(&t.create(cmd("etl", Policy::Wait, 1), T0));
    let b = waiting(&t.create(cmd("etl", Policy::Wait, 2), T0 + 1));
    let c = running(&t.create(cmd("other", Policy::Wait, 3), T0 + 2));
    t.finish(
        jid(3),
        JobCapability::Lease(c.id),
        report(JobState::Succeeded, Some(0), "x"),
        T0 + 3,
    );
    let skipped = t.create(cmd("etl", Policy::Skip, 4), T0 + 4);
    assert_eq!(skipped.job.state, JobState::Skipped);
    // Keep a and b alive for well past the retention.
    let mut now = T0;
    while now < T0 + 3 * retention {
        now += 5_000;
        t.heartbeat(jid(1), a.id, now);
        t.state.wait_ticket(b.ticket.id, None, now).unwrap();
        t.tick(now);
    }
    let left: Vec<u8> = t.state.jobs(&all()).iter().map(|job| job.id.0[0]).collect();
    assert_eq!(left, [2, 1], "finished jobs went, live ones stayed");
    assert_eq!(t.state.job(jid(3)), None);
    assert_eq!(t.job(jid(2)).state, JobState::Waiting);
}

#[test]
fn finished_jobs_are_kept_until_the_retention_ends() {
    let retention = 60_000;
    let mut t = Table::with(Config {
        job_retention_ms: retention,
        ..config()
    });
    let c = running(&t.create(cmd("other", Policy::Wait, 1), T0));
    t.finish(
        jid(1),
        JobCapability::Lease(c.id),
        report(JobState::Succeeded, Some(0), "x"),
        T0 + 5,
    );
    t.tick(T0 + 5 + retention - 1);
    assert!(t.state.job(jid(1)).is_some(), "kept within the retention");
    t.tick(T0 + 5 + retention + 10_000);
    assert_eq!(t.state.job(jid(1)), None);
}

#[test]
fn the_job_count_bound_drops_the_oldest_finished_job_never_a_live_one() {
    let mut t = Table::with(Config {
        jobs_max: 3,
        ..config()
    });
    running(&t.create(cmd("etl", Policy::Wait, 1), T0));
    waiting(&t.create(cmd("etl", Policy::Wait, 2), T0 + 1));
    let c = running(&t.create(cmd("c", Policy::Wait, 3), T0 + 2));
    t.finish(
        jid(3),
        JobCapability::Lease(c.id),
        report(JobState::Succeeded, Some(0), ""),
        T0 + 3,
    );
    // A fourth job: the finished one goes.
    let d = running(&t.create(cmd("d", Policy::Wait, 4), T0 + 4));
    assert_eq!(t.state.job(jid(3)), None);
    assert_eq!(t.state.jobs(&all()).len(), 3);
    // Only live jobs left: a fifth is refused, and nothing changes.
    let before = t.state.jobs(&all());
    let refused = t.state.create_job(cmd("e", Policy::Wait, 5), T0 + 5);
    assert!(matches!(refused, Err(JobError::Acquire(_))), "{refused:?}");
    t.check();
    assert_eq!(t.state.jobs(&all()), before);
    assert!(t.state.lock(&name("e")).is_none());
    t.finish(
        jid(4),
        JobCapability::Lease(d.id),
        report(JobState::Succeeded, Some(0), ""),
        T0 + 6,
    );
    running(&t.create(cmd("e", Policy::Wait, 5), T0 + 7));
    assert_eq!(t.state.job(jid(4)), None);
    assert_eq!(t.job(jid(1)).state, JobState::Running);
    assert_eq!(t.job(jid(2)).state, JobState::Waiting);
}

#[test]
fn the_output_bound_drops_the_oldest_finished_jobs() {
    let mut t = Table::with(Config {
        job_output_bytes_max: 100,
        ..config()
    });
    for n in 1..=3u8 {
        let lock = format!("out-{n}");
        let lease = running(&t.create(cmd(&lock, Policy::Wait, n), T0 + u64::from(n)));
        t.finish(
            jid(n),
            JobCapability::Lease(lease.id),
            report(JobState::Succeeded, Some(0), &"o".repeat(40)),
            T0 + 10,
        );
    }
    t.tick(T0 + 10_000);
    let left: Vec<u8> = t.state.jobs(&all()).iter().map(|job| job.id.0[0]).collect();
    assert_eq!(left, [3, 2], "the oldest went until the output fits");
}

/// Regression: a finished job that used `min_hold` kept its `release_at` for ever, and the count
/// and output bounds skipped every job with one, also long after the hold had ended and the
/// lock was released. With every job using `--min-hold`, the bound never freed anything and new
/// jobs were refused once `jobs_max` was reached.
#[test]
fn min_hold_jobs_are_pruned_by_the_count_bound_once_their_hold_ended() {
    let mut t = Table::with(Config {
        jobs_max: 2,
        ..config()
    });
    for n in 1..=2u8 {
        let lease = running(&t.create(
            CreateJob {
                min_hold_ms: Some(1_000),
                ..cmd(&format!("cron-{n}"), Policy::Wait, n)
            },
            T0,
        ));
        t.finish(
            jid(n),
            JobCapability::Lease(lease.id),
            report(JobState::Succeeded, Some(0), ""),
            T0 + 10,
        );
    }
    // While a hold lasts, its job is kept (it still releases the lock).
    let refused = t.state.create_job(cmd("cron-3", Policy::Wait, 3), T0 + 20);
    assert!(matches!(refused, Err(JobError::Acquire(_))), "{refused:?}");
    t.check();
    t.tick(T0 + 1_000);
    assert!(t.holders("cron-1").is_empty(), "the hold ended");
    running(&t.create(cmd("cron-3", Policy::Wait, 3), T0 + 1_001));
    assert_eq!(t.state.job(jid(1)), None, "the oldest finished job went");
}

/// Regression: a runner giving up a waiting job through its ticket could report it
/// `succeeded` or `failed`, although the command never ran.
#[test]
fn a_waiting_job_given_up_through_its_ticket_can_only_be_cancelled() {
    let mut state = State::new(Config::default(), 1_000);
    let holder = state
        .create_job(cmd("nightly", Policy::Wait, 1), 1_000)
        .unwrap();
    assert_eq!(holder.job.state, JobState::Running);
    let waiting = state
        .create_job(cmd("nightly", Policy::Wait, 2), 1_010)
        .unwrap();
    let ticket = waiting.ticket.expect("a ticket").ticket.id;
    assert_eq!(
        state.finish_job(
            waiting.job.id,
            JobCapability::Ticket(ticket),
            report(JobState::Succeeded, Some(0), ""),
            1_020
        ),
        Err(JobError::InvalidState(JobState::Succeeded))
    );
    let job = state
        .finish_job(
            waiting.job.id,
            JobCapability::Ticket(ticket),
            report(JobState::Cancelled, None, ""),
            1_030,
        )
        .unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    state.check_invariants();
}

/// Regression: reusing a request id for another job returned the first job silently.
#[test]
fn a_request_id_reused_for_another_job_is_a_conflict() {
    let mut state = State::new(Config::default(), 1_000);
    let first = CreateJob {
        request_id: Some("r-1".into()),
        ..cmd("alpha", Policy::Wait, 1)
    };
    state.create_job(first, 1_000).unwrap();
    let other = CreateJob {
        request_id: Some("r-1".into()),
        ..cmd("beta", Policy::Wait, 2)
    };
    assert!(matches!(
        state.create_job(other, 1_010),
        Err(JobError::Acquire(AcquireError::RequestIdConflict { .. }))
    ));
}

// --- output while running, and cancel ---------------------------------------------------------

impl Table {
    #[track_caller]
    fn append(&mut self, id: JobId, lease: LeaseId, text: &str, now: u64) -> OutputAppended {
        let appended = self
            .state
            .append_job_output(id, lease, text, 0, now)
            .unwrap();
        self.check();
        appended
    }

    #[track_caller]
    fn cancel(&mut self, id: JobId, now: u64) -> (Job, CancelOutcome) {
        let answer = self.state.cancel_job(id, now).unwrap();
        self.check();
        answer
    }

    fn output_events(&mut self) -> Vec<(String, u64)> {
        self.state
            .drain_events()
            .into_iter()
            .filter_map(|event| match event {
                Event::Output { text, offset, .. } => Some((text, offset)),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn appended_output_is_kept_as_a_bounded_tail_and_told_with_its_offset() {
    let mut t = Table::new();
    let a = running(&t.create(cmd("build", Policy::Wait, 1), T0));
    t.state.drain_events();
    let appended = t.append(jid(1), a.id, "line 1\n", T0 + 10);
    assert_eq!(appended.output_total_bytes, 7);
    assert_eq!(appended.stop, None);
    t.append(jid(1), a.id, "line 2\n", T0 + 20);
    assert_eq!(t.job(jid(1)).output_tail, "line 1\nline 2\n");
    assert_eq!(
        t.output_events(),
        [("line 1\n".to_owned(), 0), ("line 2\n".to_owned(), 7)]
    );
    // Past the bound the tail keeps the end, cut at a character boundary, and the total goes on.
    let chunk = "é".repeat(limits::OUTPUT_APPEND_BYTES_MAX / 2);
    let mut total = 14;
    for step in 0..6 {
        total += chunk.len() as u64;
        let appended = t.append(jid(1), a.id, &chunk, T0 + 100 + step);
        assert_eq!(appended.output_total_bytes, total);
    }
    let job = t.job(jid(1));
    assert_eq!(job.output_tail.len(), limits::OUTPUT_TAIL_BYTES_MAX);
    assert!(job.output_tail.chars().all(|c| c == 'é'));
    assert_eq!(job.output_total_bytes, total);
    // Bytes the runner skipped count in the offsets.
    t.state.drain_events();
    t.state
        .append_job_output(jid(1), a.id, "end\n", 100, T0 + 200)
        .unwrap();
    t.check();
    assert_eq!(t.output_events(), [("end\n".to_owned(), total + 100)]);
    assert_eq!(t.job(jid(1)).output_total_bytes, total + 104);
    assert!(t.job(jid(1)).output_tail.ends_with("éend\n"));
}

#[test]
fn a_running_jobs_output_survives_a_restart_and_its_total_counts_from_the_tail() {
    let mut t = Table::new();
    let a = running(&t.create(cmd("build", Policy::Wait, 1), T0));
    t.append(jid(1), a.id, "compiling\n", T0 + 10);
    t.restart(T0 + 20);
    let job = t.job(jid(1));
    assert_eq!(job.state, JobState::Running);
    assert_eq!(job.output_tail, "compiling\n");
    assert_eq!(job.output_total_bytes, 10);
    t.append(jid(1), a.id, "linking\n", T0 + 30);
    assert_eq!(t.job(jid(1)).output_tail, "compiling\nlinking\n");
}

#[test]
fn an_append_that_is_not_the_running_jobs_is_refused_and_changes_nothing() {
    let mut t = Table::new();
    let a = running(&t.create(cmd("build", Policy::Wait, 1), T0));
    let b = waiting(&t.create(cmd("build", Policy::Wait, 2), T0 + 1));
    t.state.drain_events();
    let before = (t.job(jid(1)), t.job(jid(2)));
    let refusals = [
        (jid(1), LeaseId([9; 16]), "x", JobError::WrongCapability),
        (jid(9), a.id, "x", JobError::NotFound),
        (
            jid(1),
            a.id,
            &*"x".repeat(limits::OUTPUT_APPEND_BYTES_MAX + 1),
            JobError::Invalid("an output append carries at most 16 KiB of text"),
        ),
    ];
    for (id, lease, text, error) in refusals {
        assert_eq!(
            t.state.append_job_output(id, lease, text, 0, T0 + 2),
            Err(error)
        );
    }
    // A waiting job has no lease to append with.
    assert_eq!(
        t.state
            .append_job_output(jid(2), LeaseId([2; 16]), "x", 0, T0 + 2),
        Err(JobError::WrongCapability)
    );
    let _ = b;
    t.check();
    assert_eq!((t.job(jid(1)), t.job(jid(2))), before);
    assert!(t.output_events().is_empty());
    // A job that ended takes no more output.
    t.finish(
        jid(1),
        JobCapability::Lease(a.id),
        report(JobState::Succeeded, Some(0), "done\n"),
        T0 + 3,
    );
    assert_eq!(
        t.state.append_job_output(jid(1), a.id, "late\n", 0, T0 + 4),
        Err(JobError::AlreadyEnded(JobState::Succeeded))
    );
}

#[test]
fn cancel_of_a_waiting_job_takes_its_ticket_out_of_the_queue() {
    let mut t = Table::new();
    let a = running(&t.create(cmd("etl", Policy::Wait, 1), T0));
    let b = waiting(&t.create(cmd("etl", Policy::Wait, 2), T0 + 1));
    let c = waiting(&t.create(cmd("etl", Policy::Wait, 3), T0 + 2));
    t.state.drain_events();
    let (job, outcome) = t.cancel(jid(2), T0 + 3);
    assert_eq!(outcome, CancelOutcome::Cancelled);
    assert_eq!(
        (job.state, job.finished_at, job.started_at),
        (JobState::Cancelled, Some(T0 + 3), None)
    );
    assert_eq!(
        job.reason.as_deref(),
        Some("cancelled on request before it ran")
    );
    assert_eq!(t.waiters("etl"), [c.ticket.id], "its ticket left the queue");
    // Its waiter hears that the ticket was cancelled.
    assert_eq!(
        t.state.wait_ticket(b.ticket.id, None, T0 + 4),
        Err(TicketError::Cancelled)
    );
    let events = t.state.drain_events();
    assert!(events.iter().any(|event| matches!(
        event,
        Event::Job { job, .. } if job.id == jid(2) && job.state == JobState::Cancelled
    )));
    // Asking again answers the same, and changes nothing.
    assert_eq!(t.cancel(jid(2), T0 + 5).1, CancelOutcome::Cancelled);
    assert_eq!(t.job(jid(2)), job);
    // The queue goes on past it.
    t.finish(
        jid(1),
        JobCapability::Lease(a.id),
        report(JobState::Succeeded, Some(0), ""),
        T0 + 6,
    );
    assert_eq!(t.job(jid(2)).state, JobState::Cancelled, "never granted");
    assert_eq!(t.job(jid(3)).state, JobState::Running);
}

#[test]
fn cancel_of_a_pending_coalesce_run_lets_the_next_request_be_pending() {
    let mut t = Table::new();
    running(&t.create(cmd("report", Policy::Coalesce, 1), T0));
    waiting(&t.create(cmd("report", Policy::Coalesce, 2), T0 + 1));
    t.cancel(jid(2), T0 + 2);
    waiting(&t.create(cmd("report", Policy::Coalesce, 3), T0 + 3));
}

#[test]
fn cancel_of_a_running_job_asks_its_runner_to_stop_and_keeps_the_lease_until_it_has() {
    let mut t = Table::new();
    let a = running(&t.create(cmd("deploy", Policy::Wait, 1), T0));
    let b = waiting(&t.create(cmd("deploy", Policy::Replace, 2), T0 + 1));
    assert_eq!(t.job(jid(1)).stop, Some(StopReason::Replaced));
    let (job, outcome) = t.cancel(jid(1), T0 + 2);
    assert_eq!(outcome, CancelOutcome::Stopping);
    assert_eq!(job.state, JobState::Running, "asked, not stopped");
    assert_eq!(
        job.stop,
        Some(StopReason::Cancelled),
        "cancel overrides replace"
    );
    // The lock is not handed on while the command may still run.
    assert_eq!(t.holders("deploy"), [a.id]);
    assert_eq!(
        t.heartbeat(jid(1), a.id, T0 + 3),
        Some(StopReason::Cancelled)
    );
    assert_eq!(
        t.append(jid(1), a.id, "stopping\n", T0 + 4).stop,
        Some(StopReason::Cancelled),
        "an output append tells the runner too"
    );
    assert_eq!(t.cancel(jid(1), T0 + 5).1, CancelOutcome::Stopping);
    let stopped = t.finish(
        jid(1),
        JobCapability::Lease(a.id),
        FinishJob {
            reason: Some("cancelled on request".into()),
            ..report(JobState::Cancelled, Some(143), "stopping\n")
        },
        T0 + 6,
    );
    assert_eq!((stopped.state, stopped.stop), (JobState::Cancelled, None));
    assert_eq!(t.job(jid(2)).state, JobState::Running);
    assert_eq!(t.holders("deploy"), [t.job(jid(2)).lease.unwrap()]);
    let _ = b;
}

#[test]
fn cancel_of_a_job_that_ended_otherwise_is_refused_and_changes_nothing() {
    let mut t = Table::new();
    let a = running(&t.create(cmd("backup", Policy::Wait, 1), T0));
    t.finish(
        jid(1),
        JobCapability::Lease(a.id),
        report(JobState::Succeeded, Some(0), "ok\n"),
        T0 + 1,
    );
    let skipped_lock = running(&t.create(cmd("nightly", Policy::Wait, 2), T0 + 2));
    t.create(cmd("nightly", Policy::Skip, 3), T0 + 3);
    // A lease past its deadline: the job is lost, even before the timer ran.
    let lost = running(&t.create(cmd("hourly", Policy::Wait, 4), T0 + 4));
    for (id, now, state) in [
        (jid(1), T0 + 5, JobState::Succeeded),
        (jid(3), T0 + 5, JobState::Skipped),
        (jid(4), T0 + 4 + TTL, JobState::Lost),
    ] {
        let before = t.state.job(id).cloned();
        assert_eq!(
            t.state.cancel_job(id, now),
            Err(JobError::AlreadyEnded(state))
        );
        t.check();
        if state != JobState::Lost {
            assert_eq!(t.state.job(id).cloned(), before);
        }
    }
    assert_eq!(t.state.cancel_job(jid(9), T0 + 6), Err(JobError::NotFound));
    let _ = (skipped_lock, lost);
}
