//! Job records on the wire: one run of a command under baton, with its policy, state, a
//! timestamp for every transition, exit code and output tail.
//!
//! A job's id is public (listings show it); the capabilities that act on a job are the lease id
//! (heartbeat, finish while running) and the ticket id (finish while still waiting), as for
//! plain leases (guarantee G8).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

use crate::{Lease, Ticket};

/// What to do when the lock is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Join the FIFO queue.
    #[default]
    Wait,
    /// Record a skipped job; the runner exits 0.
    Skip,
    /// Record a skipped job; the runner exits 75 (EX_TEMPFAIL).
    Fail,
    /// Ask the running holders to stop, and run once they have released (never before).
    Replace,
    /// At most one pending follow-up run: a request that finds one already waiting folds into it.
    Coalesce,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Recorded; its policy is being applied.
    Queued,
    /// In the lock's FIFO queue.
    Waiting,
    /// Holds the lock; its command runs.
    Running,
    /// The command exited 0.
    Succeeded,
    /// The command exited non-zero (or could not start).
    Failed,
    /// Stopped on request: a signal to the runner, a replacing run, `POST /v1/jobs/{id}/cancel`,
    /// or the runner gave up waiting.
    Cancelled,
    /// The lease was lost (expired, revoked, or could not be renewed in time); the command was
    /// stopped.
    Lost,
    /// The command ran longer than its timeout and was stopped.
    TimedOut,
    /// Never ran: the lock was busy and the policy was `skip` or `fail`, or the once-per slot
    /// was already taken.
    Skipped,
    /// Never ran: folded into a pending run of the same job (policy `coalesce`).
    Coalesced,
}

impl JobState {
    /// True for states a job never leaves.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            JobState::Queued | JobState::Waiting | JobState::Running
        )
    }

    /// The state's name on the wire.
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

    /// Parses a state's name.
    pub fn parse(text: &str) -> Option<JobState> {
        [
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
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

/// Body of `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateJobRequest {
    /// The job's name (what `baton jobs --name` filters on); also the lock's name when `lock`
    /// is absent.
    pub name: String,
    /// The lock the job runs under; defaults to `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
    /// The lock's capacity (1: one run at a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// What to do when the lock is busy; `wait` when absent.
    #[serde(default)]
    pub policy: Policy,
    /// Who runs it (a label such as `host/pid`).
    pub owner: String,
    /// The host it runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The command line, one argument per item.
    #[serde(default)]
    pub command: Vec<String>,
    /// The lease's time-to-live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// How long the server may hold the request open waiting for the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    /// Makes retries idempotent: the same id returns the same job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Keep the lock at least this long after the run starts, even if it ends sooner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_hold_ms: Option<u64>,
    /// At most one run of this job name on its lock per period slot (slots are counted on the
    /// server's clock, each centred on a multiple of the period so hosts whose clocks differ
    /// by less than half a period agree on the slot). A slot belongs to the (lock, name,
    /// period): jobs of another lock or another period never take it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub once_per_ms: Option<u64>,
    /// Groups jobs started together (e.g. by one `baton parallel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    /// A small value published with the job's lease while it runs (at most 1024 bytes of text
    /// without NUL), as `value` of an acquire: `baton elect` publishes the leader's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The mode of the job's lease, as `mode` of an acquire: `shared` runs beside other shared
    /// runs on a read-write lock (capacity 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<crate::LockMode>,
}

/// A job record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Job {
    /// The job's public id.
    pub id: String,
    /// The job's name.
    pub name: String,
    /// The lock it runs under.
    pub lock: String,
    /// Its policy.
    pub policy: Policy,
    /// Who runs it.
    pub owner: String,
    /// The host it runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The command line.
    pub command: Vec<String>,
    /// Where it is in its life.
    pub state: JobState,
    /// Why it is in that state, when that needs saying (e.g. `busy`, `replaced`, `expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The fencing token of its lease, once it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// The job it folded into (state `coalesced`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coalesced_into: Option<String>,
    /// Set while running when the runner must stop: `replaced` (a `replace` run waits) or
    /// `cancelled` (`POST /v1/jobs/{id}/cancel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_requested: Option<String>,
    /// The command's exit code, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The batch it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    /// When it was recorded (state `queued`).
    pub created_at: Timestamp,
    /// When it joined the lock's queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_at: Option<Timestamp>,
    /// When it was granted the lock and started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it reached a final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Milliseconds from start to finish, once finished after running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Bytes of output kept (the tail).
    pub output_bytes: u64,
    /// Bytes of output appended in all while it ran (the tail is the last `output_bytes` of
    /// them); the `offset` of `output` events counts in the same bytes.
    #[serde(default)]
    pub output_total_bytes: u64,
}

/// Answer of `POST /v1/jobs`: the job, and its lease (200, running) or ticket (202, waiting);
/// neither for a job that will not run (skipped, coalesced).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreateJobResponse {
    /// The job.
    pub job: Job,
    /// Its lease, when it holds the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// Its ticket, when it waits in the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<Ticket>,
}

/// Body of `POST /v1/jobs/{id}/heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The job's lease id.
    pub lease_id: String,
    /// A new time-to-live, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// Answer of a heartbeat: the renewed lease, and whether the runner must stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct HeartbeatResponse {
    /// The renewed lease.
    pub lease: Lease,
    /// Set when the runner must stop the command: `replaced` (a run with policy `replace`
    /// waits for this one) or `cancelled` (`POST /v1/jobs/{id}/cancel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
}

/// Most bytes of text one `POST /v1/jobs/{id}/output` carries (the server's
/// `limits::OUTPUT_APPEND_BYTES_MAX`, which it checks equals this).
pub const OUTPUT_APPEND_BYTES_MAX: usize = 16 * 1024;

/// Body of `POST /v1/jobs/{id}/output`: a chunk of a running job's output, sent by its runner
/// as the command prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AppendOutputRequest {
    /// The job's lease id (the runner's capability).
    pub lease_id: String,
    /// The output, at most 16 KiB (UTF-8; a runner replaces invalid bytes with U+FFFD).
    pub text: String,
    /// Bytes of output the runner skipped before `text` (it sends a bounded amount per call,
    /// the end of what it has), so offsets stay true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_bytes: Option<u64>,
}

/// Answer of `POST /v1/jobs/{id}/output`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AppendOutputResponse {
    /// Bytes of output appended to the job so far (its tail is the last `output_bytes`).
    pub output_total_bytes: u64,
    /// Set when the runner must stop, as in a heartbeat's answer (`replaced`, `cancelled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
}

/// What `POST /v1/jobs/{id}/cancel` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// The job had not started: it left the queue and is recorded `cancelled`.
    Cancelled,
    /// The job runs: its runner learns at its next heartbeat (or output append), stops the
    /// command's process tree and records `cancelled`.
    Stopping,
}

/// Answer of `POST /v1/jobs/{id}/cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CancelJobResponse {
    /// What the cancel did.
    pub outcome: CancelOutcome,
    /// The job as it is now (`cancelled`, or `running` with `stop_requested: cancelled`).
    pub job: Job,
}

/// Body of `POST /v1/jobs/{id}/finish`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FinishJobRequest {
    /// The job's lease id (a running job), or
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    /// its ticket id (a job still waiting, given up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_id: Option<String>,
    /// The final state: `succeeded`, `failed`, `cancelled`, `lost` or `timed_out`.
    pub state: JobState,
    /// The command's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why (e.g. `signal TERM`, `replaced`, `lease expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The last part of the command's output (the server keeps at most its limit, the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tail: Option<String>,
}

/// One job with its output: `GET /v1/jobs/{id}` and the answer of finish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct JobDetail {
    /// The job.
    pub job: Job,
    /// The tail of its output.
    pub output_tail: String,
}

/// Answer of `GET /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct JobList {
    /// Jobs, newest first.
    pub jobs: Vec<Job>,
}
