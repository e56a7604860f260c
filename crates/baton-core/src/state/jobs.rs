//! Job records: one run of a command under a lock, with its policy, its state and a timestamp
//! for every transition, its exit code and the tail of its output.
//!
//! A job rides on the lock table: its lease and ticket are ordinary ones, and the table's
//! transitions move the job along (a ticket granted starts it; a lease that expires or is
//! revoked makes it `lost`; a ticket that lapses cancels it). The job keeps the ids of its lease
//! and ticket (never shown); the table keeps the reverse maps, rebuilt on restore.

use crate::ids::{JobId, LeaseId, LockName, Millis, TicketId};
use crate::limits;

use super::events::JobChange;
use super::{
    Acquire, AcquireError, Acquired, Change, Deadline, Event, KeyQuota, Lease, LeaseEnd,
    LeaseError, Mode, QueuedTicket, Quota, State, TicketEnd,
};

/// What to do when the lock is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Join the FIFO queue.
    Wait,
    /// Record a skipped job.
    Skip,
    /// Record a skipped job (the runner then exits with "busy").
    Fail,
    /// Ask the running holders to stop; run once they have released.
    Replace,
    /// At most one pending follow-up run; later requests fold into it.
    Coalesce,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Recorded; its policy is being applied.
    Queued,
    /// In the lock's queue.
    Waiting,
    /// Holds the lock.
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero.
    Failed,
    /// Stopped on request.
    Cancelled,
    /// Its lease was lost.
    Lost,
    /// Ran past its timeout.
    TimedOut,
    /// Never ran: busy (skip, fail) or its once-per slot was taken.
    Skipped,
    /// Never ran: folded into a pending run.
    Coalesced,
}

impl JobState {
    /// Every state, for parsing.
    pub const ALL: [JobState; 10] = [
        JobState::Queued,
        JobState::Waiting,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Lost,
        JobState::TimedOut,
        JobState::Skipped,
        JobState::Coalesced,
    ];

    /// The stable text form stores keep.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Waiting => "waiting",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Lost => "lost",
            JobState::TimedOut => "timed_out",
            JobState::Skipped => "skipped",
            JobState::Coalesced => "coalesced",
        }
    }

    /// Parses [`JobState::as_str`].
    pub fn parse(text: &str) -> Option<JobState> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
    }

    /// True for states a job never leaves.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            JobState::Queued | JobState::Waiting | JobState::Running
        )
    }

    /// True for the states a runner may report when it finishes a job.
    pub fn is_reportable(self) -> bool {
        matches!(
            self,
            JobState::Succeeded
                | JobState::Failed
                | JobState::Cancelled
                | JobState::Lost
                | JobState::TimedOut
        )
    }
}

impl Policy {
    /// The stable text form stores keep.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Wait => "wait",
            Policy::Skip => "skip",
            Policy::Fail => "fail",
            Policy::Replace => "replace",
            Policy::Coalesce => "coalesce",
        }
    }

    /// Parses [`Policy::as_str`].
    pub fn parse(text: &str) -> Option<Policy> {
        [
            Policy::Wait,
            Policy::Skip,
            Policy::Fail,
            Policy::Replace,
            Policy::Coalesce,
        ]
        .into_iter()
        .find(|policy| policy.as_str() == text)
    }
}

/// Why a running job must stop although its lease is fine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A run with policy `replace` is waiting for this one.
    Replaced,
    /// Someone cancelled it ([`State::cancel_job`]).
    Cancelled,
}

impl StopReason {
    /// The stable text form stores keep and the wire shows.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Replaced => "replaced",
            StopReason::Cancelled => "cancelled",
        }
    }

    /// Parses [`StopReason::as_str`].
    pub fn parse(text: &str) -> Option<StopReason> {
        [StopReason::Replaced, StopReason::Cancelled]
            .into_iter()
            .find(|reason| reason.as_str() == text)
    }
}

/// What [`State::cancel_job`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job had not started: it left the queue and is recorded `cancelled`.
    Cancelled,
    /// The job runs: its runner is told to stop (at its next heartbeat or output append); it
    /// stops the command and records `cancelled` itself. Asking again answers the same.
    Stopping,
}

/// What [`State::append_job_output`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputAppended {
    /// The job's [`Job::output_total_bytes`] after the append.
    pub output_total_bytes: u64,
    /// Set when the runner must stop (as a heartbeat's answer says).
    pub stop: Option<StopReason>,
}

/// A job record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The public id.
    pub id: JobId,
    /// The job's name.
    pub name: String,
    /// The lock it runs under.
    pub lock: LockName,
    /// Its policy.
    pub policy: Policy,
    /// Who runs it.
    pub owner: String,
    /// The host it runs on.
    pub host: Option<String>,
    /// The command line.
    pub command: Vec<String>,
    /// Where it is.
    pub state: JobState,
    /// Why, when that needs saying.
    pub reason: Option<String>,
    /// Its lease's fencing token, once it ran.
    pub token: Option<u64>,
    /// Its lease (never shown).
    pub lease: Option<LeaseId>,
    /// Its ticket (never shown).
    pub ticket: Option<TicketId>,
    /// The pending job it folded into.
    pub coalesced_into: Option<JobId>,
    /// Set while running when it must stop.
    pub stop: Option<StopReason>,
    /// The command's exit code.
    pub exit_code: Option<i32>,
    /// Its batch label.
    pub batch: Option<String>,
    /// The request id that created it.
    pub request_id: Option<String>,
    /// When it was recorded.
    pub created_at: Millis,
    /// When it joined the queue.
    pub waiting_at: Option<Millis>,
    /// When it started.
    pub started_at: Option<Millis>,
    /// When it reached a final state.
    pub finished_at: Option<Millis>,
    /// Keep the lock at least this long after the start.
    pub min_hold_ms: Option<u64>,
    /// When a finished job's lease is released, if its min-hold kept it.
    pub release_at: Option<Millis>,
    /// The once-per period slot it took, if any.
    pub once_slot: Option<u64>,
    /// The period of that slot (`once_per_ms`): slots are numbered per period, so a slot means
    /// nothing without it. A slot recorded without its period (before baton kept it) counts
    /// for nothing.
    pub once_per_ms: Option<u64>,
    /// The end of its output, at most [`limits::OUTPUT_TAIL_BYTES_MAX`] bytes.
    pub output_tail: String,
    /// How many bytes of output were appended in all ([`State::append_job_output`], including
    /// bytes its runner said it skipped): `output_tail` is the last of them. Followers use it
    /// as an offset to tell what they already have. Not stored: a restored job counts from its
    /// tail's length (a follower hears `missed` across a restart anyway and reads afresh).
    pub output_total_bytes: u64,
    /// The API key whose request created it (`None` on a server without keys): the record
    /// counts against that key's job quota while it is kept.
    pub api_key: Option<String>,
}

/// A request to create a job, with the ids it may need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateJob {
    /// Its public id (fresh random bits from the caller).
    pub job_id: JobId,
    /// The job's name.
    pub name: String,
    /// The lock.
    pub lock: LockName,
    /// The lock's capacity.
    pub capacity: Option<u32>,
    /// Its policy.
    pub policy: Policy,
    /// Who runs it.
    pub owner: String,
    /// The host.
    pub host: Option<String>,
    /// The command line.
    pub command: Vec<String>,
    /// The lease's time-to-live.
    pub ttl_ms: u64,
    /// Makes retries idempotent.
    pub request_id: Option<String>,
    /// Keep the lock at least this long after the start.
    pub min_hold_ms: Option<u64>,
    /// At most one run of this job name per period slot.
    pub once_per_ms: Option<u64>,
    /// A batch label.
    pub batch: Option<String>,
    /// The API key the request came with, kept on the job, its lease or ticket; its quotas
    /// apply.
    pub api_key: Option<String>,
    /// That key's own quotas (the table's defaults fill the ones it lacks).
    pub quota: KeyQuota,
    /// The lease id, if one is granted.
    pub lease_id: LeaseId,
    /// The ticket id, if one is queued.
    pub ticket_id: TicketId,
    /// The value the job's lease carries ([`Lease::value`]): a leader's address.
    pub value: Option<String>,
    /// How the job's lease holds the lock.
    pub mode: Mode,
}

/// What creating a job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCreated {
    /// The job.
    pub job: Job,
    /// Its lease, when it runs.
    pub lease: Option<Lease>,
    /// Its ticket, when it waits.
    pub ticket: Option<QueuedTicket>,
}

/// How a runner proves it runs a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobCapability {
    /// The job's lease id (it runs).
    Lease(LeaseId),
    /// The job's ticket id (it waits).
    Ticket(TicketId),
}

/// A runner's report of how a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishJob {
    /// The final state.
    pub state: JobState,
    /// The exit code.
    pub exit_code: Option<i32>,
    /// Why.
    pub reason: Option<String>,
    /// The end of the output (the table keeps at most its limit).
    pub output_tail: String,
}

/// Which jobs to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only this name.
    pub name: Option<String>,
    /// Only these states (empty: all).
    pub states: Vec<JobState>,
    /// Only jobs created at or after this.
    pub since: Option<Millis>,
    /// Only jobs created before this.
    pub until: Option<Millis>,
    /// Only this batch.
    pub batch: Option<String>,
    /// At most this many.
    pub limit: usize,
}

/// Why a job operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The lock refused the acquire.
    #[error(transparent)]
    Acquire(#[from] AcquireError),
    /// The lease refused the renewal.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// No job has this id.
    #[error("no job has this id")]
    NotFound,
    /// The lease or ticket given is not this job's.
    #[error("this lease or ticket is not the job's")]
    WrongCapability,
    /// The job is already in a final state other than the one reported.
    #[error("the job already ended as {0:?}")]
    AlreadyEnded(JobState),
    /// The state cannot be reported by a runner.
    #[error("a runner can report succeeded, failed, cancelled, lost or timed_out, not {0:?}")]
    InvalidState(JobState),
    /// A field is out of bounds.
    #[error("{0}")]
    Invalid(&'static str),
}

/// `kept` followed by `appended`, cut to its last `max` bytes at a character boundary: the
/// rule for a running job's output tail.
pub fn append_tail(kept: &str, appended: &str, max: usize) -> String {
    if appended.len() >= max {
        return tail(appended, max);
    }
    let keep = max - appended.len();
    let mut joined = tail(kept, keep);
    joined.push_str(appended);
    joined
}

/// Keeps the end of `text`, at most `max` bytes, cut at a character boundary.
fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

fn validate(command: &CreateJob) -> Result<(), JobError> {
    LockName::new(&command.name).map_err(|_| {
        JobError::Invalid("a job name must be a valid lock name (A-Z a-z 0-9 . _ : / @ -)")
    })?;
    if command.command.len() > limits::COMMAND_ARGS_MAX
        || command.command.iter().map(String::len).sum::<usize>() > limits::COMMAND_BYTES_MAX
    {
        return Err(JobError::Invalid("the command line is too long"));
    }
    if command
        .host
        .as_ref()
        .is_some_and(|h| h.len() > limits::HOST_BYTES_MAX || h.chars().any(char::is_control))
    {
        return Err(JobError::Invalid(
            "host must be at most 255 bytes without control characters",
        ));
    }
    if command.batch.as_ref().is_some_and(|b| {
        b.is_empty() || b.len() > limits::BATCH_BYTES_MAX || b.chars().any(char::is_control)
    }) {
        return Err(JobError::Invalid(
            "batch must be 1 to 128 bytes without control characters",
        ));
    }
    if command
        .min_hold_ms
        .is_some_and(|ms| ms > limits::MIN_HOLD_MS_MAX)
    {
        return Err(JobError::Invalid("min_hold_ms must be at most a day"));
    }
    if command
        .once_per_ms
        .is_some_and(|ms| !(limits::ONCE_PER_MS_MIN..=limits::ONCE_PER_MS_MAX).contains(&ms))
    {
        return Err(JobError::Invalid(
            "once_per_ms must be between a second and a year",
        ));
    }
    if let Some(value) = &command.value {
        crate::ids::validate_lease_value(value).map_err(AcquireError::from)?;
    }
    Ok(())
}

/// What a once-per slot belongs to: one job name on one lock with one period.
///
/// Scoped by lock because the lock is what a caller is authorized on (a job's name is free
/// text), so a caller can take or block only slots of locks it may act on; scoped by period
/// because slots of different periods are numbered on different scales and must never be
/// compared.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OnceSlotKey {
    /// The job's lock.
    pub lock: LockName,
    /// The job's name.
    pub name: String,
    /// The job's `once_per_ms`.
    pub period_ms: u64,
}

impl OnceSlotKey {
    /// The key of the slot `job` took, if it took one (and its period is known).
    pub fn of(job: &Job) -> Option<(OnceSlotKey, u64)> {
        let (slot, period_ms) = (job.once_slot?, job.once_per_ms?);
        Some((
            OnceSlotKey {
                lock: job.lock.clone(),
                name: job.name.clone(),
                period_ms,
            },
            slot,
        ))
    }
}

/// The period slot `now` falls in: slots are centred on multiples of the period, so hosts whose
/// clocks (and so whose cron firings) differ by less than half a period land in the same slot.
pub fn once_slot(now: Millis, period_ms: u64) -> u64 {
    (now + period_ms / 2) / period_ms.max(1)
}

impl State {
    /// Creates a job and applies its policy.
    pub fn create_job(&mut self, command: CreateJob, now: Millis) -> Result<JobCreated, JobError> {
        let now = self.observe(now);
        if let Some(request_id) = &command.request_id
            && let Some(id) = self.jobs_by_request.get(request_id).copied()
            && let Some(job) = self.jobs.get(&id).cloned()
        {
            // The same request id for another job is a client bug, as for plain acquires.
            if job.name != command.name || job.lock != command.lock {
                return Err(JobError::Acquire(AcquireError::RequestIdConflict {
                    lock: job.lock.clone(),
                }));
            }
            return Ok(self.job_created(job));
        }
        validate(&command)?;
        if let Some(key) = command.api_key.as_deref()
            && self
                .check_quota(Some(key), &command.quota, Quota::Jobs)
                .is_err()
            && !self.prune_one_finished_job_of(key)
        {
            // Every record the key has is unfinished: nothing of its own can make room.
            self.check_quota(Some(key), &command.quota, Quota::Jobs)?;
        }
        if self.jobs.len() >= self.config.jobs_max && !self.prune_one_finished_job() {
            return Err(JobError::Acquire(AcquireError::LimitReached(
                "too many jobs",
            )));
        }
        let mut job = Job {
            id: command.job_id,
            name: command.name.clone(),
            lock: command.lock.clone(),
            policy: command.policy,
            owner: command.owner.clone(),
            host: command.host.clone(),
            command: command.command.clone(),
            state: JobState::Queued,
            reason: None,
            token: None,
            lease: None,
            ticket: None,
            coalesced_into: None,
            stop: None,
            exit_code: None,
            batch: command.batch.clone(),
            request_id: command.request_id.clone(),
            created_at: now,
            waiting_at: None,
            started_at: None,
            finished_at: None,
            min_hold_ms: command.min_hold_ms.filter(|ms| *ms > 0),
            release_at: None,
            once_slot: None,
            once_per_ms: None,
            output_tail: String::new(),
            output_total_bytes: 0,
            api_key: command.api_key.clone(),
        };
        if let Some(period) = command.once_per_ms {
            let slot = once_slot(now, period);
            let key = OnceSlotKey {
                lock: command.lock.clone(),
                name: command.name.clone(),
                period_ms: period,
            };
            if self
                .once_slots
                .get(&key)
                .is_some_and(|taken| *taken >= slot)
            {
                job.state = JobState::Skipped;
                job.reason = Some("once-per: this period slot already had a run".into());
                job.finished_at = Some(now);
                return Ok(self.record_job(job));
            }
            job.once_slot = Some(slot);
            job.once_per_ms = Some(period);
        }
        let free = self.lock_free(&command.lock, command.mode, now);
        if !free && command.policy == Policy::Coalesce {
            let pending = self
                .pending_coalesce
                .get(&(command.lock.clone(), command.name.clone()));
            if let Some(pending) = pending.copied() {
                job.state = JobState::Coalesced;
                job.coalesced_into = Some(pending);
                job.reason = Some("a run of this job is already pending".into());
                job.finished_at = Some(now);
                job.once_slot = None;
                return Ok(self.record_job(job));
            }
        }
        let queue = matches!(
            command.policy,
            Policy::Wait | Policy::Replace | Policy::Coalesce
        );
        let acquired = self.acquire(
            Acquire {
                lock: command.lock.clone(),
                owner: command.owner,
                owner_key: None,
                ttl_ms: command.ttl_ms,
                capacity: command.capacity,
                queue,
                request_id: None,
                api_key: command.api_key.clone(),
                quota: command.quota,
                lease_id: command.lease_id,
                ticket_id: command.ticket_id,
                value: command.value.clone(),
                mode: command.mode,
            },
            now,
        )?;
        match acquired {
            Acquired::Granted(lease) => {
                job.state = JobState::Running;
                job.started_at = Some(now);
                job.token = Some(lease.token);
                job.lease = Some(lease.id);
                self.lease_jobs.insert(lease.id, job.id);
            }
            Acquired::Queued(queued) => {
                job.state = JobState::Waiting;
                job.waiting_at = Some(now);
                job.ticket = Some(queued.ticket.id);
                self.ticket_jobs.insert(queued.ticket.id, job.id);
                // Only once the run is queued: a refused request must not stop the holders.
                if command.policy == Policy::Replace {
                    self.request_stop_of_holders(&command.lock);
                }
                if command.policy == Policy::Coalesce {
                    self.pending_coalesce
                        .insert((job.lock.clone(), job.name.clone()), job.id);
                }
            }
            Acquired::Busy(_) => {
                job.state = JobState::Skipped;
                job.reason = Some("busy: the lock is held".into());
                job.finished_at = Some(now);
                job.once_slot = None;
            }
        }
        if let Some((key, slot)) = OnceSlotKey::of(&job) {
            self.once_slots.insert(key, slot);
        }
        Ok(self.record_job(job))
    }

    fn lock_free(&self, name: &LockName, mode: Mode, now: Millis) -> bool {
        self.locks
            .get(name)
            .is_none_or(|entry| entry.has_room(mode, now) && entry.queue.is_empty())
    }

    fn request_stop_of_holders(&mut self, name: &LockName) {
        let Some(entry) = self.locks.get(name) else {
            return;
        };
        let holder_jobs: Vec<JobId> = entry
            .holders
            .iter()
            .filter_map(|lease| self.lease_jobs.get(lease).copied())
            .collect();
        for id in holder_jobs {
            if let Some(job) = self.jobs.get_mut(&id)
                && job.state == JobState::Running
                && job.stop.is_none()
            {
                job.stop = Some(StopReason::Replaced);
                self.changes.push(Change::JobPut(job.clone()));
            }
        }
    }

    fn record_job(&mut self, job: Job) -> JobCreated {
        if let Some(request_id) = &job.request_id {
            self.jobs_by_request.insert(request_id.clone(), job.id);
        }
        self.jobs_order.insert((job.created_at, job.id));
        self.count_job_for_key(job.api_key.as_deref(), job.created_at, job.id);
        self.job_output_bytes += job.output_tail.len();
        self.changes.push(Change::JobPut(job.clone()));
        State::job_event(&mut self.events, &job, job.created_at);
        self.jobs.insert(job.id, job.clone());
        self.job_created(job)
    }

    /// A job with its live lease (while running) or queued ticket (while waiting).
    pub fn job_view(&self, job: Job) -> JobCreated {
        self.job_created(job)
    }

    fn job_created(&self, job: Job) -> JobCreated {
        let lease = job.lease.and_then(|id| self.leases.get(&id).cloned());
        let ticket = job.ticket.and_then(|id| {
            self.tickets.get(&id).map(|ticket| QueuedTicket {
                ticket: ticket.clone(),
                position: self.position(ticket),
            })
        });
        let lease = lease.filter(|_| job.state == JobState::Running);
        JobCreated { job, lease, ticket }
    }

    /// Renews a running job's lease and tells its runner whether it must stop.
    pub fn job_heartbeat(
        &mut self,
        id: JobId,
        lease: LeaseId,
        ttl_ms: Option<u64>,
        now: Millis,
    ) -> Result<(Lease, Option<StopReason>), JobError> {
        let job = self.jobs.get(&id).ok_or(JobError::NotFound)?;
        if job.lease != Some(lease) {
            return Err(JobError::WrongCapability);
        }
        let renewed = self.renew(lease, ttl_ms, now)?;
        let stop = self.jobs.get(&id).and_then(|job| job.stop);
        Ok((renewed, stop))
    }

    /// Appends a chunk of a running job's output, as its runner sends it while the command
    /// runs: the job keeps the last [`limits::OUTPUT_TAIL_BYTES_MAX`] bytes (the same bound a
    /// finished job's tail has), and subscribers hear of the chunk ([`Event::Output`]).
    /// `skipped_bytes` counts output the runner produced but did not send (it sends a bounded
    /// amount per call and keeps the end), so offsets stay true. The answer says whether the
    /// runner must stop, as a heartbeat's does, so a runner that prints learns of a cancel
    /// sooner.
    pub fn append_job_output(
        &mut self,
        id: JobId,
        lease: LeaseId,
        text: &str,
        skipped_bytes: u64,
        now: Millis,
    ) -> Result<OutputAppended, JobError> {
        let now = self.observe(now);
        // The message's number is the limit's (a `&'static str` cannot be formatted).
        const _: () = assert!(limits::OUTPUT_APPEND_BYTES_MAX == 16 * 1024);
        if text.len() > limits::OUTPUT_APPEND_BYTES_MAX {
            return Err(JobError::Invalid(
                "an output append carries at most 16 KiB of text",
            ));
        }
        if self
            .jobs
            .get(&id)
            .is_some_and(|job| job.lease == Some(lease))
        {
            // As for a heartbeat: a lease past its deadline has expired, and its job is lost.
            self.expire_if_due(lease, now);
        }
        let job = self.jobs.get(&id).ok_or(JobError::NotFound)?;
        if job.lease != Some(lease) {
            return Err(JobError::WrongCapability);
        }
        if job.state != JobState::Running {
            return Err(JobError::AlreadyEnded(job.state));
        }
        if text.is_empty() && skipped_bytes == 0 {
            return Ok(OutputAppended {
                output_total_bytes: job.output_total_bytes,
                stop: job.stop,
            });
        }
        let Some(job) = self.jobs.get_mut(&id) else {
            return Err(JobError::NotFound);
        };
        let offset = job.output_total_bytes.saturating_add(skipped_bytes);
        let kept = append_tail(&job.output_tail, text, limits::OUTPUT_TAIL_BYTES_MAX);
        self.job_output_bytes =
            self.job_output_bytes.saturating_sub(job.output_tail.len()) + kept.len();
        job.output_tail = kept;
        job.output_total_bytes = offset.saturating_add(text.len() as u64);
        let appended = OutputAppended {
            output_total_bytes: job.output_total_bytes,
            stop: job.stop,
        };
        let job = job.clone();
        self.changes.push(Change::JobPut(job.clone()));
        self.events.push(Event::Output {
            job: JobChange::of(&job),
            text: text.to_owned(),
            offset,
            at: now,
        });
        Ok(appended)
    }

    /// Cancels a job on request (`baton cancel`): what it does depends on where the job is.
    ///
    /// | state | effect |
    /// | --- | --- |
    /// | `queued`, `waiting` | its ticket leaves the queue (its waiter hears `ticket_cancelled`); the job is `cancelled` now |
    /// | `running` | marked to stop ([`StopReason::Cancelled`], overriding `replaced`); its lease is kept until its runner has stopped the command and records `cancelled` (or the lease expires and the job is `lost`), so the lock is never handed on while the command may still run |
    /// | `cancelled` | nothing: answered as cancelled (a retried cancel hears what the first did) |
    /// | any other final state | refused: [`JobError::AlreadyEnded`] |
    pub fn cancel_job(&mut self, id: JobId, now: Millis) -> Result<(Job, CancelOutcome), JobError> {
        let now = self.observe(now);
        if let Some(lease) = self.jobs.get(&id).and_then(|job| job.lease) {
            // A job whose lease is past its deadline is lost, not cancellable.
            self.expire_if_due(lease, now);
        }
        let job = self.jobs.get(&id).ok_or(JobError::NotFound)?;
        match job.state {
            JobState::Running => {
                let Some(job) = self.jobs.get_mut(&id) else {
                    return Err(JobError::NotFound);
                };
                if job.stop != Some(StopReason::Cancelled) {
                    job.stop = Some(StopReason::Cancelled);
                    self.changes.push(Change::JobPut(job.clone()));
                }
                Ok((job.clone(), CancelOutcome::Stopping))
            }
            JobState::Queued | JobState::Waiting => {
                let ticket = job.ticket;
                self.forget_pending(id);
                if let Some(ticket) = ticket {
                    // The job's own record says why; the ticket's end must not overwrite it.
                    self.ticket_jobs.remove(&ticket);
                }
                if let Some(job) = self.jobs.get_mut(&id) {
                    job.state = JobState::Cancelled;
                    job.reason = Some("cancelled on request before it ran".into());
                    job.finished_at = Some(now);
                    job.stop = None;
                }
                if let Some(ticket) = ticket
                    && self.tickets.contains_key(&ticket)
                {
                    self.cancel_ticket(ticket, false, now)
                        .map_err(|_| JobError::NotFound)?;
                }
                let job = self.jobs.get(&id).cloned().ok_or(JobError::NotFound)?;
                self.changes.push(Change::JobPut(job.clone()));
                State::job_event(&mut self.events, &job, now);
                Ok((job, CancelOutcome::Cancelled))
            }
            // Asking again (a retry) answers the same.
            JobState::Cancelled => Ok((job.clone(), CancelOutcome::Cancelled)),
            state => Err(JobError::AlreadyEnded(state)),
        }
    }

    /// Records how a job ended and lets its lock go (at once, or when its min-hold ends).
    pub fn finish_job(
        &mut self,
        id: JobId,
        capability: JobCapability,
        report: FinishJob,
        now: Millis,
    ) -> Result<Job, JobError> {
        let now = self.observe(now);
        if !report.state.is_reportable() {
            return Err(JobError::InvalidState(report.state));
        }
        if let JobCapability::Lease(lease) = capability
            && self
                .jobs
                .get(&id)
                .is_some_and(|job| job.lease == Some(lease))
        {
            // As for a renewal or release: a lease at or past its deadline has expired (and
            // its job is lost), even if the timer has not run yet.
            self.expire_if_due(lease, now);
        }
        let job = self.jobs.get(&id).ok_or(JobError::NotFound)?;
        let authorised = match capability {
            JobCapability::Lease(lease) => job.lease == Some(lease),
            JobCapability::Ticket(ticket) => job.ticket == Some(ticket),
        };
        if !authorised {
            return Err(JobError::WrongCapability);
        }
        // A runner that gives up waiting (its ticket is the capability) never ran the command:
        // the only true report is that the job was cancelled.
        if matches!(capability, JobCapability::Ticket(_))
            && job.state == JobState::Waiting
            && report.state != JobState::Cancelled
        {
            return Err(JobError::InvalidState(report.state));
        }
        if job.state.is_final() {
            // A job the table already marked lost still takes its runner's report of exit code
            // and output; any other final state only accepts the same report again.
            if job.state == JobState::Lost || job.state == report.state {
                let output = tail(&report.output_tail, limits::OUTPUT_TAIL_BYTES_MAX);
                let job = self.jobs.get_mut(&id).ok_or(JobError::NotFound)?;
                self.job_output_bytes =
                    self.job_output_bytes.saturating_sub(job.output_tail.len()) + output.len();
                job.exit_code = report.exit_code.or(job.exit_code);
                job.output_total_bytes = job.output_total_bytes.max(output.len() as u64);
                job.output_tail = output;
                let job = job.clone();
                self.changes.push(Change::JobPut(job.clone()));
                return Ok(job);
            }
            return Err(JobError::AlreadyEnded(job.state));
        }
        let output = tail(&report.output_tail, limits::OUTPUT_TAIL_BYTES_MAX);
        let (lease, ticket, started_at, min_hold) =
            (job.lease, job.ticket, job.started_at, job.min_hold_ms);
        let release_at = match (started_at, min_hold) {
            (Some(start), Some(hold)) if start + hold > now => Some(start + hold),
            _ => None,
        };
        self.job_output_bytes += output.len();
        if let Some(job) = self.jobs.get_mut(&id) {
            self.job_output_bytes = self.job_output_bytes.saturating_sub(job.output_tail.len());
            job.state = report.state;
            job.exit_code = report.exit_code;
            job.reason = report.reason;
            job.output_total_bytes = job.output_total_bytes.max(output.len() as u64);
            job.output_tail = output;
            job.finished_at = Some(now);
            job.stop = None;
            job.release_at =
                release_at.filter(|_| lease.is_some_and(|l| self.leases.contains_key(&l)));
        }
        self.forget_pending(id);
        if let Some(lease) = lease
            && self.leases.contains_key(&lease)
        {
            self.lease_jobs.remove(&lease);
            match release_at {
                Some(at) => {
                    // The lock stays held until the min-hold ends, then is released cleanly.
                    if let Some(held) = self.leases.get(&lease).cloned()
                        && held.expires_at < at
                    {
                        self.unschedule(held.expires_at, Deadline::LeaseExpiry(lease));
                        self.schedule(at, Deadline::LeaseExpiry(lease), None);
                        if let Some(held) = self.leases.get_mut(&lease) {
                            held.expires_at = at;
                            self.changes.push(Change::LeasePut(held.clone()));
                        }
                    }
                    self.schedule(at, Deadline::MinHoldRelease(lease), None);
                }
                None => {
                    if let Some(ended) = self.end_lease(lease, LeaseEnd::Released, now) {
                        self.settle(&ended.lock, now);
                    }
                }
            }
        }
        if let Some(ticket) = ticket
            && self.tickets.contains_key(&ticket)
        {
            self.ticket_jobs.remove(&ticket);
            self.cancel_ticket(ticket, false, now)
                .map_err(|_| JobError::NotFound)?;
        }
        let job = self.jobs.get(&id).cloned().ok_or(JobError::NotFound)?;
        self.changes.push(Change::JobPut(job.clone()));
        State::job_event(&mut self.events, &job, now);
        Ok(job)
    }

    fn forget_pending(&mut self, id: JobId) {
        self.pending_coalesce.retain(|_, pending| *pending != id);
    }

    /// Called by the table when a job's ticket is granted.
    pub(super) fn job_started(&mut self, ticket: TicketId, lease: &Lease, now: Millis) {
        let Some(id) = self.ticket_jobs.remove(&ticket) else {
            return;
        };
        self.forget_pending(id);
        if let Some(job) = self.jobs.get_mut(&id)
            && job.state == JobState::Waiting
        {
            job.state = JobState::Running;
            job.started_at = Some(now);
            job.token = Some(lease.token);
            job.lease = Some(lease.id);
            self.lease_jobs.insert(lease.id, id);
            self.changes.push(Change::JobPut(job.clone()));
            State::job_event(&mut self.events, job, now);
        }
    }

    /// Called by the table when a lease ends other than through its job's finish.
    pub(super) fn job_lease_ended(&mut self, lease: LeaseId, end: LeaseEnd, now: Millis) {
        let Some(id) = self.lease_jobs.remove(&lease) else {
            return;
        };
        if let Some(job) = self.jobs.get_mut(&id)
            && !job.state.is_final()
        {
            job.state = JobState::Lost;
            job.stop = None;
            job.reason = Some(
                match end {
                    LeaseEnd::Expired => "the lease expired",
                    LeaseEnd::Revoked => "the lease was revoked",
                    LeaseEnd::Released => "the lease was released without finishing the job",
                }
                .into(),
            );
            job.finished_at = Some(now);
            self.changes.push(Change::JobPut(job.clone()));
            State::job_event(&mut self.events, job, now);
        }
    }

    /// Called by the table when a job's lease is released because its grant never reached the
    /// runner (the runner went away while it waited): the job never ran, so it is cancelled
    /// rather than lost.
    pub(super) fn job_grant_undelivered(&mut self, lease: LeaseId, now: Millis) {
        let Some(id) = self.lease_jobs.remove(&lease) else {
            return;
        };
        if let Some(job) = self.jobs.get_mut(&id)
            && !job.state.is_final()
        {
            job.state = JobState::Cancelled;
            job.stop = None;
            job.reason = Some("its runner went away before it was told of the grant".into());
            job.finished_at = Some(now);
            self.changes.push(Change::JobPut(job.clone()));
            State::job_event(&mut self.events, job, now);
        }
    }

    /// Called by the table when a job's ticket lapses or is cancelled.
    pub(super) fn job_ticket_ended(&mut self, ticket: TicketId, end: TicketEnd, now: Millis) {
        if matches!(end, TicketEnd::Granted(_)) {
            return;
        }
        let Some(id) = self.ticket_jobs.remove(&ticket) else {
            return;
        };
        self.forget_pending(id);
        if let Some(job) = self.jobs.get_mut(&id)
            && !job.state.is_final()
        {
            job.state = JobState::Cancelled;
            job.reason = Some(
                if end == TicketEnd::Lapsed {
                    "its runner stopped waiting (the ticket lapsed)"
                } else {
                    "its runner stopped waiting"
                }
                .into(),
            );
            job.finished_at = Some(now);
            self.changes.push(Change::JobPut(job.clone()));
            State::job_event(&mut self.events, job, now);
        }
    }

    /// Releases a finished job's lease when its min-hold ends.
    pub(super) fn min_hold_ended(&mut self, lease: LeaseId, now: Millis) {
        if self.leases.contains_key(&lease)
            && !self.lease_jobs.contains_key(&lease)
            && let Some(ended) = self.end_lease(lease, LeaseEnd::Released, now)
        {
            self.settle(&ended.lock, now);
        }
    }

    /// One job.
    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    /// Jobs matching `filter`, newest first.
    pub fn jobs(&self, filter: &JobFilter) -> Vec<Job> {
        self.jobs_order
            .iter()
            .rev()
            .filter_map(|(_, id)| self.jobs.get(id))
            .filter(|job| filter.name.as_ref().is_none_or(|name| *name == job.name))
            .filter(|job| filter.states.is_empty() || filter.states.contains(&job.state))
            .filter(|job| filter.since.is_none_or(|since| job.created_at >= since))
            .filter(|job| filter.until.is_none_or(|until| job.created_at < until))
            .filter(|job| filter.batch.is_none() || job.batch == filter.batch)
            .take(filter.limit)
            .cloned()
            .collect()
    }

    /// The running job holding `lease`, if any.
    pub fn job_of_lease(&self, lease: LeaseId) -> Option<&Job> {
        self.lease_jobs.get(&lease).and_then(|id| self.jobs.get(id))
    }

    /// True while a finished job's min-hold still keeps its lease (the job schedules the
    /// release after a restart, so it must be kept until then).
    fn holds_after_finish(&self, job: &Job) -> bool {
        job.release_at.is_some() && job.lease.is_some_and(|l| self.leases.contains_key(&l))
    }

    /// Drops the oldest finished job, if there is one. Returns whether one was dropped.
    fn prune_one_finished_job(&mut self) -> bool {
        let oldest = self
            .jobs_order
            .iter()
            .find(|(_, id)| {
                self.jobs
                    .get(id)
                    .is_some_and(|job| job.state.is_final() && !self.holds_after_finish(job))
            })
            .copied();
        match oldest {
            Some(key) => {
                self.drop_job(key);
                true
            }
            None => false,
        }
    }

    /// Drops the oldest finished job of the API key `api_key`, if it has one. Returns whether
    /// one was dropped.
    fn prune_one_finished_job_of(&mut self, api_key: &str) -> bool {
        let oldest = self.key_usage.get(api_key).and_then(|usage| {
            usage
                .jobs
                .iter()
                .find(|(_, id)| {
                    self.jobs
                        .get(id)
                        .is_some_and(|job| job.state.is_final() && !self.holds_after_finish(job))
                })
                .copied()
        });
        match oldest {
            Some(key) => {
                self.drop_job(key);
                true
            }
            None => false,
        }
    }

    fn drop_job(&mut self, key: (Millis, JobId)) {
        self.jobs_order.remove(&key);
        if let Some(job) = self.jobs.remove(&key.1) {
            self.uncount_job_for_key(job.api_key.as_deref(), job.created_at, job.id);
            self.job_output_bytes = self.job_output_bytes.saturating_sub(job.output_tail.len());
            if let Some(request_id) = &job.request_id {
                self.jobs_by_request.remove(request_id);
            }
            self.changes.push(Change::JobDelete(job.id));
        }
    }

    /// Forgets finished jobs past retention, and the oldest ones beyond the count and output
    /// bounds.
    pub(super) fn prune_jobs(&mut self, now: Millis) {
        let horizon = now.saturating_sub(self.config.job_retention_ms);
        let expired: Vec<(Millis, JobId)> = self
            .jobs_order
            .iter()
            .filter(|(_, id)| {
                self.jobs.get(id).is_some_and(|job| {
                    job.state.is_final()
                        && job.release_at.is_none_or(|at| at <= now)
                        && job.finished_at.is_some_and(|at| at <= horizon)
                })
            })
            .copied()
            .collect();
        for key in expired {
            self.drop_job(key);
        }
        while (self.jobs.len() > self.config.jobs_max
            || self.job_output_bytes > self.config.job_output_bytes_max)
            && self.prune_one_finished_job()
        {}
    }

    /// Rebuilds the job indexes from restored jobs. Runs after leases and tickets are restored.
    pub(super) fn restore_jobs(&mut self, jobs: Vec<Job>, now: Millis) {
        for mut job in jobs {
            if !job.state.is_final() {
                let lease_live = job
                    .lease
                    .is_some_and(|lease| self.leases.contains_key(&lease));
                let ticket_live = job
                    .ticket
                    .is_some_and(|ticket| self.tickets.contains_key(&ticket));
                match job.state {
                    JobState::Running if lease_live => {
                        if let Some(lease) = job.lease {
                            self.lease_jobs.insert(lease, job.id);
                        }
                    }
                    JobState::Waiting if ticket_live => {
                        if let Some(ticket) = job.ticket {
                            self.ticket_jobs.insert(ticket, job.id);
                        }
                        if job.policy == Policy::Coalesce {
                            self.pending_coalesce
                                .insert((job.lock.clone(), job.name.clone()), job.id);
                        }
                    }
                    _ => {
                        // Its lease or ticket did not survive: it cannot be running or waiting.
                        job.state = JobState::Lost;
                        job.reason = Some("its lease or ticket did not survive a restart".into());
                        job.finished_at = Some(now);
                        self.changes.push(Change::JobPut(job.clone()));
                    }
                }
            }
            if let (Some(at), Some(lease)) = (job.release_at, job.lease)
                && self.leases.contains_key(&lease)
            {
                self.schedule(at.max(now), Deadline::MinHoldRelease(lease), None);
            }
            if let Some((key, slot)) = OnceSlotKey::of(&job) {
                let taken = self.once_slots.entry(key).or_insert(slot);
                *taken = (*taken).max(slot);
            }
            if let Some(request_id) = &job.request_id {
                self.jobs_by_request.insert(request_id.clone(), job.id);
            }
            self.jobs_order.insert((job.created_at, job.id));
            self.count_job_for_key(job.api_key.as_deref(), job.created_at, job.id);
            self.job_output_bytes += job.output_tail.len();
            job.output_total_bytes = job.output_total_bytes.max(job.output_tail.len() as u64);
            self.jobs.insert(job.id, job);
        }
    }
}
