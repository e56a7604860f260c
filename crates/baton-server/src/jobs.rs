//! The `/v1/jobs` API: job records created, waited on, heartbeated and finished by runners
//! (`baton run`), and listed by everyone. Wire ↔ core conversions for jobs live here.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use baton_core::{
    CancelOutcome, FinishJob, Job, JobCapability, JobCreated, JobFilter, JobState, LeaseId,
    LockName, Policy, TicketId, TicketStatus, limits,
};
use baton_proto as proto;
use baton_proto::ErrorCode;
use baton_store::{AuditEntry, CreateJobArgs, Role};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JobPath, JsonBody, QueryMap};
use crate::limits::{ttl, validate_requester, wait_duration};
use crate::scope::authorize_by_id;
use crate::state::AppState;
use crate::wire::{lease_wire, lock_wire, ticket_wire, timestamp};

/// The largest finish body: the output tail plus room for the rest.
pub const FINISH_BODY_BYTES_MAX: usize = limits::OUTPUT_TAIL_BYTES_MAX * 2 + 16 * 1024;
/// The largest create body: the command line plus room for the rest.
pub const CREATE_BODY_BYTES_MAX: usize = limits::COMMAND_BYTES_MAX * 2 + 16 * 1024;
/// The largest output append body: the text (escaped JSON may double it) plus room for the rest.
pub const OUTPUT_BODY_BYTES_MAX: usize = limits::OUTPUT_APPEND_BYTES_MAX * 6 + 4 * 1024;
// The wire's bound (what clients size their appends by) is the core's.
const _: () = assert!(proto::OUTPUT_APPEND_BYTES_MAX == limits::OUTPUT_APPEND_BYTES_MAX);

/// Most jobs one `GET /v1/jobs` returns.
pub const JOB_LIST_LIMIT_MAX: usize = 10_000;

fn policy_core(policy: proto::Policy) -> Policy {
    match policy {
        proto::Policy::Wait => Policy::Wait,
        proto::Policy::Skip => Policy::Skip,
        proto::Policy::Fail => Policy::Fail,
        proto::Policy::Replace => Policy::Replace,
        proto::Policy::Coalesce => Policy::Coalesce,
    }
}

fn policy_wire(policy: Policy) -> proto::Policy {
    match policy {
        Policy::Wait => proto::Policy::Wait,
        Policy::Skip => proto::Policy::Skip,
        Policy::Fail => proto::Policy::Fail,
        Policy::Replace => proto::Policy::Replace,
        Policy::Coalesce => proto::Policy::Coalesce,
    }
}

fn state_core(state: proto::JobState) -> JobState {
    match state {
        proto::JobState::Queued => JobState::Queued,
        proto::JobState::Waiting => JobState::Waiting,
        proto::JobState::Running => JobState::Running,
        proto::JobState::Succeeded => JobState::Succeeded,
        proto::JobState::Failed => JobState::Failed,
        proto::JobState::Cancelled => JobState::Cancelled,
        proto::JobState::Lost => JobState::Lost,
        proto::JobState::TimedOut => JobState::TimedOut,
        proto::JobState::Skipped => JobState::Skipped,
        proto::JobState::Coalesced => JobState::Coalesced,
    }
}

pub(crate) fn state_wire(state: JobState) -> proto::JobState {
    match state {
        JobState::Queued => proto::JobState::Queued,
        JobState::Waiting => proto::JobState::Waiting,
        JobState::Running => proto::JobState::Running,
        JobState::Succeeded => proto::JobState::Succeeded,
        JobState::Failed => proto::JobState::Failed,
        JobState::Cancelled => proto::JobState::Cancelled,
        JobState::Lost => proto::JobState::Lost,
        JobState::TimedOut => proto::JobState::TimedOut,
        JobState::Skipped => proto::JobState::Skipped,
        JobState::Coalesced => proto::JobState::Coalesced,
    }
}

/// A job on the wire: never its lease or ticket id.
pub(crate) fn job_wire(job: &Job) -> proto::Job {
    proto::Job {
        id: job.id.to_string(),
        name: job.name.clone(),
        lock: job.lock.to_string(),
        policy: policy_wire(job.policy),
        owner: job.owner.clone(),
        host: job.host.clone(),
        command: job.command.clone(),
        state: state_wire(job.state),
        reason: job.reason.clone(),
        token: job.token,
        coalesced_into: job.coalesced_into.map(|id| id.to_string()),
        stop_requested: job.stop.map(|stop| stop.as_str().to_owned()),
        exit_code: job.exit_code,
        batch: job.batch.clone(),
        created_at: timestamp(job.created_at),
        waiting_at: job.waiting_at.map(timestamp),
        started_at: job.started_at.map(timestamp),
        finished_at: job.finished_at.map(timestamp),
        duration_ms: match (job.started_at, job.finished_at) {
            (Some(start), Some(end)) => Some(end.saturating_sub(start)),
            _ => None,
        },
        output_bytes: job.output_tail.len() as u64,
        output_total_bytes: job.output_total_bytes,
    }
}

fn created_response(created: JobCreated, now: u64) -> Response {
    let status = if created.ticket.is_some() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let body = proto::CreateJobResponse {
        job: job_wire(&created.job),
        lease: created.lease.map(|lease| lease_wire(lease, now)),
        ticket: created.ticket.map(|ticket| ticket_wire(ticket, now)),
    };
    (status, Json(body)).into_response()
}

fn optional_label(value: Option<&String>, what: &str, max: usize) -> Result<(), ApiError> {
    match value {
        Some(text) if text.is_empty() || text.len() > max || text.chars().any(char::is_control) => {
            Err(ApiError::new(
                ErrorCode::InvalidJob,
                format!("{what} must be 1 to {max} bytes without control characters"),
            ))
        }
        _ => Ok(()),
    }
}

/// Create a job and apply its policy.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body = proto::CreateJobRequest,
    responses(
        (status = 200, description = "Running (with its lease), skipped or coalesced", body = proto::CreateJobResponse),
        (status = 202, description = "Waiting in the lock's queue (with its ticket)", body = proto::CreateJobResponse),
        (status = 400, description = "Invalid input", body = proto::ErrorBody),
        (status = 409, description = "busy (policy `fail` on a busy lock: the job is recorded `skipped` and the answer lists the holders, as an acquire's does), capacity_conflict or mode_conflict", body = proto::ErrorBody),
    ))]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<proto::CreateJobRequest, CREATE_BODY_BYTES_MAX>,
) -> Result<Response, ApiError> {
    let name = LockName::new(&request.name).map_err(|error| {
        ApiError::new(
            ErrorCode::InvalidName,
            format!("the job name is not a valid lock name: {error}"),
        )
    })?;
    let lock = match &request.lock {
        Some(lock) => LockName::new(lock)
            .map_err(|error| ApiError::new(ErrorCode::InvalidName, error.to_string()))?,
        None => name.clone(),
    };
    caller.require(Role::Acquire, lock.as_str())?;
    validate_requester(
        &request.owner,
        request.request_id.as_deref(),
        request.capacity,
    )?;
    crate::limits::validate_value(request.value.as_deref())?;
    optional_label(request.host.as_ref(), "host", limits::HOST_BYTES_MAX)?;
    optional_label(request.batch.as_ref(), "batch", limits::BATCH_BYTES_MAX)?;
    let args = CreateJobArgs {
        name: request.name,
        lock,
        capacity: request.capacity,
        policy: policy_core(request.policy),
        owner: request.owner,
        host: request.host,
        command: request.command,
        ttl_ms: ttl(request.ttl_ms, state.default_ttl_ms)?,
        wait: wait_duration(request.wait_ms)?,
        request_id: caller.scoped_request_id(request.request_id),
        min_hold_ms: request.min_hold_ms,
        once_per_ms: request.once_per_ms,
        batch: request.batch,
        api_key: caller.key_id(),
        quota: caller.quota(),
        value: request.value,
        mode: crate::wire::mode_core(request.mode),
    };
    let lock = args.lock.clone();
    let created = state
        .store
        .create_job(args)
        .await
        .map_err(|error| crate::scope::conflict_in_scope(&caller, error))?;
    if created.job.policy == Policy::Fail && created.job.state == JobState::Skipped {
        return Err(busy_job(&state, &created.job, lock).await);
    }
    Ok(created_response(created, state.store.now_ms()))
}

/// The answer to a `fail` job that found its lock busy: 409 `busy` with the holders, like an
/// acquire that does not queue. The job itself is recorded (`skipped`), so the message names
/// it. The holders are read after the decision; they may have changed since (informational).
async fn busy_job(state: &AppState, job: &Job, lock: LockName) -> ApiError {
    let holders = match state.store.lock(lock).await {
        Ok(Some(view)) => lock_wire(view).holders,
        Ok(None) | Err(_) => Vec::new(),
    };
    ApiError {
        holders: Some(holders),
        ..ApiError::new(
            ErrorCode::Busy,
            format!(
                "the lock is held to capacity or has waiters; job {} is recorded skipped",
                job.id
            ),
        )
    }
}

/// Body of `POST /v1/jobs/{id}/wait`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobWaitRequest {
    /// The job's ticket id.
    ticket_id: String,
    /// How long the server may hold the request open.
    #[serde(default)]
    wait_ms: Option<u64>,
}

/// Wait for a waiting job's turn.
#[utoipa::path(post, path = "/v1/jobs/{id}/wait", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    request_body = JobWaitRequest,
    responses(
        (status = 200, description = "Running, with its lease", body = proto::CreateJobResponse),
        (status = 202, description = "Still waiting, with its ticket", body = proto::CreateJobResponse),
        (status = 410, description = "ticket_lapsed or ticket_cancelled", body = proto::ErrorBody),
    ))]
pub(crate) async fn wait(
    State(state): State<AppState>,
    caller: Caller,
    JobPath(id): JobPath,
    JsonBody(request): JsonBody<JobWaitRequest>,
) -> Result<Response, ApiError> {
    let ticket = TicketId::parse(&request.ticket_id).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidId,
            "a ticket id is `ticket_` followed by 32 hex digits",
        )
    })?;
    let wait = wait_duration(request.wait_ms)?;
    let job = state.store.job(id).await?.ok_or_else(job_not_found)?;
    authorize_by_id(
        &caller,
        Some(job.lock.clone()),
        Role::Acquire,
        job_not_found,
    )?;
    if job.ticket != Some(ticket) {
        return Err(ApiError::new(
            ErrorCode::TicketNotFound,
            "this ticket is not the job's",
        ));
    }
    let status = state.store.wait_ticket(ticket, wait).await?;
    let job = state
        .store
        .job(id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::JobNotFound, "no job has this id"))?;
    let now = state.store.now_ms();
    let created = match status {
        TicketStatus::Granted(lease) => JobCreated {
            job,
            lease: Some(lease),
            ticket: None,
        },
        TicketStatus::Queued(queued) => JobCreated {
            job,
            lease: None,
            ticket: Some(queued),
        },
    };
    Ok(created_response(created, now))
}

/// Renew a running job's lease.
#[utoipa::path(post, path = "/v1/jobs/{id}/heartbeat", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    request_body = proto::HeartbeatRequest,
    responses(
        (status = 200, description = "Renewed; `stop` says whether to stop", body = proto::HeartbeatResponse),
        (status = 410, description = "lease_lost or revoked: stop now", body = proto::ErrorBody),
    ))]
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    caller: Caller,
    JobPath(id): JobPath,
    JsonBody(request): JsonBody<proto::HeartbeatRequest>,
) -> Result<Json<proto::HeartbeatResponse>, ApiError> {
    authorize_job(&state, &caller, id, Role::Acquire).await?;
    let lease = LeaseId::parse(&request.lease_id).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidId,
            "a lease id is `lease_` followed by 32 hex digits",
        )
    })?;
    if let Some(ttl_ms) = request.ttl_ms {
        ttl(Some(ttl_ms), state.default_ttl_ms)?;
    }
    let (lease, stop) = state.store.job_heartbeat(id, lease, request.ttl_ms).await?;
    Ok(Json(proto::HeartbeatResponse {
        lease: lease_wire(lease, state.store.now_ms()),
        stop: stop.map(|stop| stop.as_str().to_owned()),
    }))
}

/// Append a chunk of a running job's output.
#[utoipa::path(post, path = "/v1/jobs/{id}/output", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    request_body = proto::AppendOutputRequest,
    responses(
        (status = 200, description = "Appended (the job keeps the end of its output); `stop` says whether to stop", body = proto::AppendOutputResponse),
        (status = 400, description = "invalid_job (more than 16 KiB of text) or invalid_id", body = proto::ErrorBody),
        (status = 404, description = "job_not_found, or lease_not_found: the lease is not the job's", body = proto::ErrorBody),
        (status = 409, description = "job_state_conflict: the job is not running (it ended, or was marked lost)", body = proto::ErrorBody),
        (status = 410, description = "lease_lost or revoked: stop now", body = proto::ErrorBody),
    ))]
pub(crate) async fn append_output(
    State(state): State<AppState>,
    caller: Caller,
    JobPath(id): JobPath,
    JsonBody(request): JsonBody<proto::AppendOutputRequest, OUTPUT_BODY_BYTES_MAX>,
) -> Result<Json<proto::AppendOutputResponse>, ApiError> {
    let lease = LeaseId::parse(&request.lease_id).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidId,
            "a lease id is `lease_` followed by 32 hex digits",
        )
    })?;
    if request.text.len() > limits::OUTPUT_APPEND_BYTES_MAX {
        return Err(ApiError::new(
            ErrorCode::InvalidJob,
            format!(
                "an output append carries at most {} bytes of text",
                limits::OUTPUT_APPEND_BYTES_MAX
            ),
        ));
    }
    authorize_job(&state, &caller, id, Role::Acquire).await?;
    let appended = state
        .store
        .append_job_output(id, lease, request.text, request.skipped_bytes.unwrap_or(0))
        .await?;
    Ok(Json(proto::AppendOutputResponse {
        output_total_bytes: appended.output_total_bytes,
        stop: appended.stop.map(|stop| stop.as_str().to_owned()),
    }))
}

/// Cancel a job: a waiting one leaves the queue, a running one is stopped by its runner.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "`cancelled` (it had not started; it left the queue) or `stopping` (its runner stops the command at its next heartbeat and records `cancelled`)", body = proto::CancelJobResponse),
        (status = 404, description = "job_not_found", body = proto::ErrorBody),
        (status = 409, description = "job_state_conflict: the job already ended (the message says how)", body = proto::ErrorBody),
    ))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    JobPath(id): JobPath,
) -> Result<Json<proto::CancelJobResponse>, ApiError> {
    authorize_job(&state, &caller, id, Role::Acquire).await?;
    let (job, outcome) = state.store.cancel_job(id).await?;
    tracing::info!(job = %job.id, lock = %job.lock, actor = caller.actor(), "job cancelled");
    let outcome = match outcome {
        CancelOutcome::Cancelled => proto::CancelOutcome::Cancelled,
        CancelOutcome::Stopping => proto::CancelOutcome::Stopping,
    };
    // The cancel stands even if the log cannot be written; the caller hears of it.
    state
        .store
        .append_audit(AuditEntry {
            seq: 0,
            at: state.store.now_ms(),
            actor: caller.actor().to_owned(),
            action: "job.cancel".to_owned(),
            target: job.lock.to_string(),
            detail: Some(format!(
                "job {} ({}) {}",
                job.id,
                job.name,
                match outcome {
                    proto::CancelOutcome::Cancelled => "left the queue",
                    proto::CancelOutcome::Stopping => "asked to stop",
                }
            )),
        })
        .await?;
    Ok(Json(proto::CancelJobResponse {
        outcome,
        job: job_wire(&job),
    }))
}

/// Record how a job ended and let its lock go.
#[utoipa::path(post, path = "/v1/jobs/{id}/finish", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    request_body = proto::FinishJobRequest,
    responses(
        (status = 200, description = "Recorded", body = proto::JobDetail),
        (status = 409, description = "job_state_conflict: it already ended otherwise", body = proto::ErrorBody),
    ))]
pub(crate) async fn finish(
    State(state): State<AppState>,
    caller: Caller,
    JobPath(id): JobPath,
    JsonBody(request): JsonBody<proto::FinishJobRequest, FINISH_BODY_BYTES_MAX>,
) -> Result<Json<proto::JobDetail>, ApiError> {
    // The body is checked first: a malformed report is refused the same for every caller.
    let capability = match (&request.lease_id, &request.ticket_id) {
        (Some(lease), None) => JobCapability::Lease(LeaseId::parse(lease).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidId,
                "a lease id is `lease_` followed by 32 hex digits",
            )
        })?),
        (None, Some(ticket)) => {
            JobCapability::Ticket(TicketId::parse(ticket).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidId,
                    "a ticket id is `ticket_` followed by 32 hex digits",
                )
            })?)
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                "give exactly one of lease_id (a running job) or ticket_id (a waiting job)",
            ));
        }
    };
    if request
        .reason
        .as_ref()
        .is_some_and(|reason| reason.len() > 1_024)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidJob,
            "reason must be at most 1024 bytes",
        ));
    }
    let report = FinishJob {
        state: state_core(request.state),
        exit_code: request.exit_code,
        reason: request.reason,
        output_tail: request.output_tail.unwrap_or_default(),
    };
    if !report.state.is_reportable() {
        return Err(
            baton_store::StoreError::from(baton_core::JobError::InvalidState(report.state)).into(),
        );
    }
    authorize_job(&state, &caller, id, Role::Acquire).await?;
    let job = state.store.finish_job(id, capability, report).await?;
    Ok(Json(proto::JobDetail {
        output_tail: job.output_tail.clone(),
        job: job_wire(&job),
    }))
}

/// One job with its output.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = proto::JobDetail),
        (status = 404, description = "job_not_found", body = proto::ErrorBody),
    ))]
pub(crate) async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    JobPath(id): JobPath,
) -> Result<Json<proto::JobDetail>, ApiError> {
    let job = state.store.job(id).await?.ok_or_else(job_not_found)?;
    authorize_by_id(&caller, Some(job.lock.clone()), Role::Read, job_not_found)?;
    Ok(Json(proto::JobDetail {
        output_tail: job.output_tail.clone(),
        job: job_wire(&job),
    }))
}

fn time_query(query: &QueryMap, key: &str) -> Result<Option<u64>, ApiError> {
    query
        .0
        .get(key)
        .map(|text| {
            // A time before 1970 is valid RFC 3339: it bounds nothing here (no job is older),
            // so it reads as the epoch.
            text.parse::<jiff::Timestamp>()
                .ok()
                .map(|time| u64::try_from(time.as_millisecond()).unwrap_or(0))
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidQuery,
                        format!("{key} must be an RFC 3339 time such as 2026-11-21T12:00:00Z"),
                    )
                })
        })
        .transpose()
}

/// List jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
    params(
        ("name" = Option<String>, Query, description = "Only jobs of this name"),
        ("state" = Option<String>, Query, description = "Only these states, comma-separated"),
        ("since" = Option<String>, Query, description = "Only jobs created at or after this RFC 3339 time"),
        ("until" = Option<String>, Query, description = "Only jobs created before this RFC 3339 time"),
        ("batch" = Option<String>, Query, description = "Only jobs of this batch"),
        ("limit" = Option<usize>, Query, description = "At most this many (default 100)"),
    ),
    responses((status = 200, description = "Newest first", body = proto::JobList)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryMap,
) -> Result<Json<proto::JobList>, ApiError> {
    query.only(&["name", "state", "since", "until", "batch", "limit"])?;
    let states = match query.0.get("state") {
        Some(text) => text
            .split(',')
            .map(|item| {
                proto::JobState::parse(item.trim())
                    .map(state_core)
                    .ok_or_else(|| {
                        ApiError::new(
                            ErrorCode::InvalidQuery,
                            format!("unknown job state {item:?}"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let filter = JobFilter {
        name: query.0.get("name").cloned(),
        states,
        since: time_query(&query, "since")?,
        until: time_query(&query, "until")?,
        batch: query.0.get("batch").cloned(),
        limit: query.limit("limit", 100, JOB_LIST_LIMIT_MAX)?,
    };
    // A key limited to some prefixes sees its jobs among the newest JOB_LIST_LIMIT_MAX that
    // match the filter.
    let limit = filter.limit;
    let restricted = !caller.sees("");
    let filter = JobFilter {
        limit: if restricted {
            JOB_LIST_LIMIT_MAX
        } else {
            limit
        },
        ..filter
    };
    let mut jobs = state.store.jobs(filter).await?;
    jobs.retain(|job| caller.sees(job.lock.as_str()));
    jobs.truncate(limit);
    Ok(Json(proto::JobList {
        jobs: jobs.iter().map(job_wire).collect(),
    }))
}

fn job_not_found() -> ApiError {
    ApiError::new(
        ErrorCode::JobNotFound,
        "no job has this id (finished jobs are kept for the retention)",
    )
}

/// Authorizes `role` on the lock of job `id`; an unknown job, or one the caller cannot read,
/// is `job_not_found`.
async fn authorize_job(
    state: &AppState,
    caller: &Caller,
    id: baton_core::JobId,
    role: Role,
) -> Result<(), ApiError> {
    let job = state.store.job(id).await?.ok_or_else(job_not_found)?;
    authorize_by_id(caller, Some(job.lock), role, job_not_found)
}
