//! The `/v1` API: each handler turns wire types into a store call and the outcome back into
//! wire types. No domain rule lives here: outcomes come from the core through the store.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use baton_core::{
    Cancelled, HistoryRecord, Lease, LeaseEnd, LockName, LockView, Millis, Mode, QueuedTicket,
    Released, TicketEnd, TicketStatus, limits, validate_lease_value, validate_owner,
    validate_request_id,
};
use baton_proto as proto;
use baton_proto::ErrorCode;
use baton_store::{AcquireArgs, AcquireOutcome, AuditEntry, Role, Store};
use jiff::Timestamp;

use crate::auth::{Auth, Caller};
use crate::error::ApiError;
use crate::extract::{JsonBody, LeasePath, LockPath, QueryMap, TicketPath};

/// The longest a request may be held open waiting (`wait_ms`).
pub const WAIT_MS_MAX: u64 = 60_000;
/// Most locks one `GET /v1/locks` returns.
pub const LIST_LIMIT_MAX: usize = 10_000;
/// Most history records one `GET /v1/locks/{name}/history` returns.
pub const HISTORY_LIMIT_MAX: usize = 1_000;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Lease time-to-live when a request gives none.
    pub default_ttl_ms: u64,
    /// The API keys in force and their rate limits.
    pub auth: Arc<Auth>,
    /// `/metrics` and the request log.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
}

/// The `/v1` routes plus health, readiness, the OpenAPI document and the dashboard.
pub fn router(state: AppState) -> Router {
    crate::dashboard::routes(Router::new())
        .route("/v1/locks", get(list_locks))
        .route("/v1/locks/{name}", get(get_lock))
        .route("/v1/locks/{name}/acquire", post(acquire))
        .route("/v1/locks/{name}/revoke", post(revoke))
        .route("/v1/locks/{name}/fence", post(fence))
        .route("/v1/locks/{name}/history", get(history))
        .route("/v1/tickets/{id}/wait", post(wait_ticket))
        .route("/v1/tickets/{id}", delete(cancel_ticket))
        .route("/v1/leases/{id}/renew", post(renew))
        .route("/v1/leases/{id}/release", post(release))
        .route("/v1/jobs", post(crate::jobs::create).get(crate::jobs::list))
        .route("/v1/jobs/{id}", get(crate::jobs::get_one))
        .route("/v1/jobs/{id}/wait", post(crate::jobs::wait))
        .route("/v1/jobs/{id}/heartbeat", post(crate::jobs::heartbeat))
        .route("/v1/jobs/{id}/finish", post(crate::jobs::finish))
        .route("/v1/jobs/{id}/output", post(crate::jobs::append_output))
        .route("/v1/jobs/{id}/cancel", post(crate::jobs::cancel))
        .route("/v1/keys", post(crate::keys::create).get(crate::keys::list))
        .route("/v1/keys/{id}", delete(crate::keys::revoke))
        .route("/v1/audit", get(crate::keys::audit))
        .route("/v1/events", get(crate::events::events))
        .route("/v1/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Inside authentication: a standby forwards only what it would itself accept.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::forward::forward,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state.auth),
            crate::auth::authenticate,
        ))
        // Outermost: counts, times and logs every answer, refusals by authentication too.
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state.telemetry),
            crate::telemetry::observe,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such path; the API is described at /v1/openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this path does not take this method",
    )
}

pub(crate) fn timestamp(ms: Millis) -> Timestamp {
    Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX)).unwrap_or(Timestamp::MAX)
}

/// A core mode on the wire.
pub(crate) fn mode_wire(mode: Mode) -> proto::LockMode {
    match mode {
        Mode::Exclusive => proto::LockMode::Exclusive,
        Mode::Shared => proto::LockMode::Shared,
    }
}

/// A wire mode in the core (absent: exclusive).
pub(crate) fn mode_core(mode: Option<proto::LockMode>) -> Mode {
    match mode {
        None | Some(proto::LockMode::Exclusive) => Mode::Exclusive,
        Some(proto::LockMode::Shared) => Mode::Shared,
    }
}

pub(crate) fn lease_wire(lease: Lease, now: Millis) -> proto::Lease {
    proto::Lease {
        id: lease.id.to_string(),
        lock: lease.lock.to_string(),
        owner: lease.owner,
        owner_key: lease.owner_key,
        token: lease.token,
        ttl_ms: lease.ttl_ms,
        granted_at: timestamp(lease.granted_at),
        expires_at: timestamp(lease.expires_at),
        expires_in_ms: lease.expires_at.saturating_sub(now),
        value: lease.value,
        mode: mode_wire(lease.mode),
    }
}

pub(crate) fn ticket_wire(queued: QueuedTicket, now: Millis) -> proto::Ticket {
    proto::Ticket {
        id: queued.ticket.id.to_string(),
        lock: queued.ticket.lock.to_string(),
        owner: queued.ticket.owner,
        position: queued.position,
        queued_at: timestamp(queued.ticket.queued_at),
        lapses_in_ms: queued.ticket.lapse_at.saturating_sub(now),
    }
}

pub(crate) fn holder_wire(lease: &Lease) -> proto::Holder {
    proto::Holder {
        owner: lease.owner.clone(),
        token: lease.token,
        since: timestamp(lease.granted_at),
        expires_at: timestamp(lease.expires_at),
        job: None,
        value: lease.value.clone(),
        mode: mode_wire(lease.mode),
    }
}

pub(crate) fn lock_wire(view: LockView) -> proto::LockInfo {
    proto::LockInfo {
        name: view.name.to_string(),
        capacity: view.capacity,
        holders: view
            .holders
            .iter()
            .zip(view.holder_jobs.iter().chain(std::iter::repeat(&None)))
            .map(|(lease, job)| proto::Holder {
                job: job.map(|job| job.to_string()),
                ..holder_wire(lease)
            })
            .collect(),
        waiters: view
            .waiters
            .iter()
            .zip(view.waiter_jobs.iter().chain(std::iter::repeat(&None)))
            .enumerate()
            .map(|(index, (ticket, job))| proto::Waiter {
                position: index as u64 + 1,
                owner: ticket.owner.clone(),
                since: timestamp(ticket.queued_at),
                job: job.map(|job| job.to_string()),
                mode: mode_wire(ticket.mode),
            })
            .collect(),
        delayed_until: view.delayed_until.map(timestamp),
        newest_token: view.newest_token,
    }
}

fn history_wire(record: HistoryRecord) -> proto::HistoryEntry {
    proto::HistoryEntry {
        owner: record.owner,
        token: record.token,
        granted_at: timestamp(record.granted_at),
        ended_at: timestamp(record.ended_at),
        held_ms: record.ended_at.saturating_sub(record.granted_at),
        end: match record.end {
            LeaseEnd::Released => proto::HoldEnd::Released,
            LeaseEnd::Expired => proto::HoldEnd::Expired,
            LeaseEnd::Revoked => proto::HoldEnd::Revoked,
        },
        value: record.value,
        mode: mode_wire(record.mode),
    }
}

fn granted(lease: Lease, now: Millis) -> Response {
    (
        StatusCode::OK,
        Json(proto::LeaseResponse {
            lease: lease_wire(lease, now),
        }),
    )
        .into_response()
}

fn queued(queued: QueuedTicket, now: Millis) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(proto::TicketResponse {
            ticket: ticket_wire(queued, now),
        }),
    )
        .into_response()
}

fn lease_not_found() -> ApiError {
    ApiError::new(
        ErrorCode::LeaseNotFound,
        "no lease has this id (leases are forgotten an hour after they end)",
    )
}

fn ticket_not_found() -> ApiError {
    ApiError::new(
        ErrorCode::TicketNotFound,
        "no ticket has this id (tickets are forgotten an hour after they end)",
    )
}

/// Authorizes a request that names a lease, ticket or job by id, whose lock the store found
/// (`None`: no live one has this id, and the store's own answer follows). An id whose lock the
/// caller cannot even read is answered as unknown (`hidden`), so nobody learns whether an id
/// exists under another prefix; one the caller can read but not act on is `403`.
pub(crate) fn authorize_by_id(
    caller: &Caller,
    lock: Option<LockName>,
    role: Role,
    hidden: fn() -> ApiError,
) -> Result<(), ApiError> {
    match lock {
        Some(lock) if !caller.allows(role, lock.as_str()) => {
            if caller.sees(lock.as_str()) {
                caller.require(role, lock.as_str())
            } else {
                Err(hidden())
            }
        }
        _ => Ok(()),
    }
}

/// Checks what every acquiring request carries: the owner label, the request id and the
/// capacity asked for.
pub(crate) fn validate_requester(
    owner: &str,
    request_id: Option<&str>,
    capacity: Option<u32>,
) -> Result<(), ApiError> {
    validate_owner(owner)
        .map_err(|error| ApiError::new(ErrorCode::InvalidOwner, format!("owner {error}")))?;
    if let Some(request_id) = request_id {
        validate_request_id(request_id)
            .map_err(|error| ApiError::new(ErrorCode::InvalidRequestId, error.to_string()))?;
    }
    if let Some(capacity) = capacity
        && !(1..=limits::CAPACITY_MAX).contains(&capacity)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidCapacity,
            format!("capacity must be between 1 and {}", limits::CAPACITY_MAX),
        ));
    }
    Ok(())
}

/// Checks a lease's value before the store sees it (the core checks it again: one rule, in
/// `baton_core::validate_lease_value`).
pub(crate) fn validate_value(value: Option<&str>) -> Result<(), ApiError> {
    match value.map(validate_lease_value) {
        Some(Err(error)) => Err(ApiError::new(ErrorCode::InvalidValue, error.to_string())),
        _ => Ok(()),
    }
}

pub(crate) fn wait_duration(wait_ms: Option<u64>) -> Result<Duration, ApiError> {
    match wait_ms {
        Some(ms) if ms > WAIT_MS_MAX => Err(ApiError::new(
            ErrorCode::InvalidWait,
            format!(
                "wait_ms must be at most {WAIT_MS_MAX}; to wait longer, acquire with \
                 \"queue\": true and wait on the ticket again"
            ),
        )),
        ms => Ok(Duration::from_millis(ms.unwrap_or(0))),
    }
}

pub(crate) fn ttl(ttl_ms: Option<u64>, default_ttl_ms: u64) -> Result<u64, ApiError> {
    let ttl_ms = ttl_ms.unwrap_or(default_ttl_ms);
    if (limits::TTL_MS_MIN..=limits::TTL_MS_MAX).contains(&ttl_ms) {
        Ok(ttl_ms)
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidTtl,
            format!(
                "ttl_ms must be between {} and {}",
                limits::TTL_MS_MIN,
                limits::TTL_MS_MAX
            ),
        ))
    }
}

/// Acquire a lease.
///
/// With `wait_ms`, the request waits in the lock's FIFO queue. If its connection closes before
/// it is answered, its waiter counts as gone: the ticket keeps its place for one ticket lapse
/// from then (a retry with the same `request_id` carries on) but is never granted while its
/// waiter is away, and a grant made meanwhile is released cleanly and handed on.
#[utoipa::path(post, path = "/v1/locks/{name}/acquire", tag = "locks",
    params(("name" = String, Path, description = "The lock's name, one percent-encoded segment")),
    request_body = proto::AcquireRequest,
    responses(
        (status = 200, description = "Granted", body = proto::LeaseResponse),
        (status = 202, description = "Still queued after wait_ms (queue: true)", body = proto::TicketResponse),
        (status = 409, description = "busy, capacity_conflict, mode_conflict or request_id_conflict", body = proto::ErrorBody),
        (status = 400, description = "Invalid input", body = proto::ErrorBody),
    ))]
async fn acquire(
    State(state): State<AppState>,
    caller: Caller,
    LockPath(lock): LockPath,
    JsonBody(request): JsonBody<proto::AcquireRequest>,
) -> Result<Response, ApiError> {
    caller.require(Role::Acquire, lock.as_str())?;
    validate_requester(
        &request.owner,
        request.request_id.as_deref(),
        request.capacity,
    )?;
    if let Some(key) = &request.owner_key {
        validate_owner(key).map_err(|error| {
            ApiError::new(ErrorCode::InvalidOwner, format!("owner_key {error}"))
        })?;
    }
    validate_value(request.value.as_deref())?;
    let args = AcquireArgs {
        lock,
        owner: request.owner,
        owner_key: request.owner_key,
        ttl_ms: ttl(request.ttl_ms, state.default_ttl_ms)?,
        capacity: request.capacity,
        wait: wait_duration(request.wait_ms)?,
        queue: request.queue.unwrap_or(false),
        request_id: caller.scoped_request_id(request.request_id),
        api_key: caller.key_id(),
        quota: caller.quota(),
        value: request.value,
        mode: mode_core(request.mode),
    };
    let outcome = state
        .store
        .acquire(args)
        .await
        .map_err(|error| conflict_in_scope(&caller, error))?;
    let now = state.store.now_ms();
    Ok(match outcome {
        AcquireOutcome::Granted(lease) => granted(lease, now),
        AcquireOutcome::Queued(ticket) => queued(ticket, now),
        AcquireOutcome::Busy(holders) => ApiError {
            holders: Some(holders.iter().map(holder_wire).collect()),
            ..ApiError::new(
                ErrorCode::Busy,
                "the lock is held to capacity or has waiters",
            )
        }
        .into_response(),
    })
}

/// A store failure as the caller may hear it: a request-id conflict names the lock the id was
/// used for only when the caller may see that lock. (Ids are scoped to the key, so the lock is
/// the key's own, unless its grants have narrowed since.)
pub(crate) fn conflict_in_scope(caller: &Caller, error: baton_store::StoreError) -> ApiError {
    use baton_core::{AcquireError, JobError};
    use baton_store::StoreError;
    match &error {
        StoreError::Acquire(AcquireError::RequestIdConflict { lock })
        | StoreError::Job(JobError::Acquire(AcquireError::RequestIdConflict { lock }))
            if !caller.sees(lock.as_str()) =>
        {
            ApiError::new(
                ErrorCode::RequestIdConflict,
                "this request id was already used for another request; use a new one",
            )
        }
        _ => ApiError::from(error),
    }
}

/// Wait on a ticket.
///
/// The ticket lapses one ticket lapse after this wait ends (answered, or its connection
/// closed). If the connection closes before the answer, the ticket keeps its place until then
/// for a wait that comes back, but is not granted while nobody waits: when its turn comes it
/// lapses and the lock goes to the next waiter; a grant made while this wait was parked and
/// never delivered is released cleanly (no lock-delay) and handed on.
#[utoipa::path(post, path = "/v1/tickets/{id}/wait", tag = "tickets",
    params(("id" = String, Path, description = "The ticket's id")),
    request_body = proto::WaitRequest,
    responses(
        (status = 200, description = "Granted", body = proto::LeaseResponse),
        (status = 202, description = "Still queued", body = proto::TicketResponse),
        (status = 410, description = "ticket_lapsed or ticket_cancelled", body = proto::ErrorBody),
        (status = 404, description = "ticket_not_found", body = proto::ErrorBody),
    ))]
async fn wait_ticket(
    State(state): State<AppState>,
    caller: Caller,
    TicketPath(id): TicketPath,
    JsonBody(request): JsonBody<proto::WaitRequest>,
) -> Result<Response, ApiError> {
    let wait = wait_duration(request.wait_ms)?;
    if !caller.allows(Role::Acquire, "") {
        let lock = state.store.lock_of_ticket(id).await?;
        authorize_by_id(&caller, lock, Role::Acquire, ticket_not_found)?;
    }
    let status = state.store.wait_ticket(id, wait).await?;
    let now = state.store.now_ms();
    Ok(match status {
        TicketStatus::Granted(lease) => granted(lease, now),
        TicketStatus::Queued(ticket) => queued(ticket, now),
    })
}

/// Leave the queue.
#[utoipa::path(delete, path = "/v1/tickets/{id}", tag = "tickets",
    params(("id" = String, Path, description = "The ticket's id")),
    responses(
        (status = 200, description = "Done (see `cancelled`)", body = proto::CancelResponse),
        (status = 404, description = "ticket_not_found", body = proto::ErrorBody),
    ))]
async fn cancel_ticket(
    State(state): State<AppState>,
    caller: Caller,
    TicketPath(id): TicketPath,
) -> Result<Json<proto::CancelResponse>, ApiError> {
    if !caller.allows(Role::Acquire, "") {
        let lock = state.store.lock_of_ticket(id).await?;
        authorize_by_id(&caller, lock, Role::Acquire, ticket_not_found)?;
    }
    let outcome = state.store.cancel_ticket(id).await?;
    Ok(Json(match outcome {
        Cancelled::Cancelled | Cancelled::ReleasedUncollected => proto::CancelResponse {
            cancelled: true,
            reason: None,
        },
        Cancelled::NotCancelled(end) => proto::CancelResponse {
            cancelled: false,
            reason: Some(
                match end {
                    TicketEnd::Granted(_) => "already_granted",
                    TicketEnd::Lapsed => "lapsed",
                    TicketEnd::Cancelled => "cancelled",
                }
                .to_owned(),
            ),
        },
    }))
}

/// Renew a lease, and replace its value when the body carries one.
#[utoipa::path(post, path = "/v1/leases/{id}/renew", tag = "leases",
    params(("id" = String, Path, description = "The lease's id")),
    request_body = proto::RenewRequest,
    responses(
        (status = 200, description = "Renewed", body = proto::LeaseResponse),
        (status = 410, description = "lease_lost or revoked: stop", body = proto::ErrorBody),
        (status = 404, description = "lease_not_found", body = proto::ErrorBody),
    ))]
async fn renew(
    State(state): State<AppState>,
    caller: Caller,
    LeasePath(id): LeasePath,
    JsonBody(request): JsonBody<proto::RenewRequest>,
) -> Result<Response, ApiError> {
    if !caller.allows(Role::Acquire, "") {
        let lock = state.store.lock_of_lease(id).await?;
        authorize_by_id(&caller, lock, Role::Acquire, lease_not_found)?;
    }
    if let Some(ttl_ms) = request.ttl_ms {
        ttl(Some(ttl_ms), state.default_ttl_ms)?;
    }
    validate_value(request.value.as_deref())?;
    let lease = state.store.renew(id, request.ttl_ms, request.value).await?;
    Ok(granted(lease, state.store.now_ms()))
}

/// Release a lease.
#[utoipa::path(post, path = "/v1/leases/{id}/release", tag = "leases",
    params(("id" = String, Path, description = "The lease's id")),
    responses(
        (status = 200, description = "Done (see `released`)", body = proto::ReleaseResponse),
        (status = 404, description = "lease_not_found", body = proto::ErrorBody),
    ))]
async fn release(
    State(state): State<AppState>,
    caller: Caller,
    LeasePath(id): LeasePath,
    JsonBody(_body): JsonBody<serde_json::Map<String, serde_json::Value>>,
) -> Result<Json<proto::ReleaseResponse>, ApiError> {
    if !caller.allows(Role::Acquire, "") {
        let lock = state.store.lock_of_lease(id).await?;
        authorize_by_id(&caller, lock, Role::Acquire, lease_not_found)?;
    }
    let outcome = state.store.release(id).await?;
    Ok(Json(match outcome {
        Released::Released => proto::ReleaseResponse {
            released: true,
            reason: None,
        },
        Released::AlreadyEnded(end) => proto::ReleaseResponse {
            released: false,
            reason: Some(
                match end {
                    LeaseEnd::Released => "already_released",
                    LeaseEnd::Expired => "expired",
                    LeaseEnd::Revoked => "revoked",
                }
                .to_owned(),
            ),
        },
    }))
}

/// List locks.
#[utoipa::path(get, path = "/v1/locks", tag = "locks",
    params(
        ("after" = Option<String>, Query, description = "Only locks whose name sorts after this"),
        ("limit" = Option<usize>, Query, description = "At most this many (default 1000)"),
    ),
    responses((status = 200, description = "Locks by name", body = proto::LockList)))]
async fn list_locks(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryMap,
) -> Result<Json<proto::LockList>, ApiError> {
    query.only(&["after", "limit"])?;
    let limit = query.limit("limit", 1_000, LIST_LIMIT_MAX)?;
    let after =
        match query.0.get("after") {
            Some(name) => Some(LockName::new(name).map_err(|error| {
                ApiError::new(ErrorCode::InvalidQuery, format!("after: {error}"))
            })?),
            None => None,
        };
    // Only the locks the caller may see, read range by range of its prefixes (which do not
    // overlap), so a restricted key's listing costs what it can see, not what the server holds.
    let locks = match caller.visible_prefixes() {
        None => state.store.locks(after, limit).await?,
        Some(prefixes) => {
            let mut locks = Vec::new();
            for prefix in &prefixes {
                locks.extend(
                    state
                        .store
                        .locks_with_prefix(prefix, after.clone(), limit)
                        .await?,
                );
            }
            locks.sort_by(|a, b| a.name.cmp(&b.name));
            locks.truncate(limit);
            locks
        }
    };
    Ok(Json(proto::LockList {
        locks: locks.into_iter().map(lock_wire).collect(),
    }))
}

/// Describe one lock.
#[utoipa::path(get, path = "/v1/locks/{name}", tag = "locks",
    params(("name" = String, Path, description = "The lock's name")),
    responses(
        (status = 200, description = "The lock", body = proto::LockInfo),
        (status = 404, description = "lock_not_found", body = proto::ErrorBody),
    ))]
async fn get_lock(
    State(state): State<AppState>,
    caller: Caller,
    LockPath(name): LockPath,
) -> Result<Json<proto::LockInfo>, ApiError> {
    caller.require(Role::Read, name.as_str())?;
    match state.store.lock(name).await? {
        Some(view) => Ok(Json(lock_wire(view))),
        None => Err(ApiError::new(
            ErrorCode::LockNotFound,
            "no lock has this name (locks are created by their first acquire)",
        )),
    }
}

/// Revoke a holder's lease (administrators).
#[utoipa::path(post, path = "/v1/locks/{name}/revoke", tag = "locks",
    params(("name" = String, Path, description = "The lock's name")),
    request_body = proto::TokenRequest,
    responses(
        (status = 200, description = "Revoked", body = proto::RevokeResponse),
        (status = 404, description = "holder_not_found or lock_not_found", body = proto::ErrorBody),
    ))]
async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    LockPath(name): LockPath,
    JsonBody(request): JsonBody<proto::TokenRequest>,
) -> Result<Json<proto::RevokeResponse>, ApiError> {
    caller.require(Role::Admin, name.as_str())?;
    let lease = state.store.revoke(name.clone(), request.token).await?;
    tracing::warn!(lock = %name, token = lease.token, owner = %lease.owner, actor = caller.actor(), "lease revoked");
    // The revocation stands even if the log cannot be written; the caller hears of it.
    state
        .store
        .append_audit(AuditEntry {
            seq: 0,
            at: state.store.now_ms(),
            actor: caller.actor().to_owned(),
            action: "lease.revoke".to_owned(),
            target: name.to_string(),
            detail: Some(format!("token {} owner {}", lease.token, lease.owner)),
        })
        .await?;
    Ok(Json(proto::RevokeResponse {
        revoked: true,
        holder: holder_wire(&lease),
    }))
}

/// Check a fencing token.
#[utoipa::path(post, path = "/v1/locks/{name}/fence", tag = "locks",
    params(("name" = String, Path, description = "The lock's name")),
    request_body = proto::TokenRequest,
    responses(
        (status = 200, description = "Accepted", body = proto::FenceResponse),
        (status = 409, description = "stale_token", body = proto::ErrorBody),
        (status = 400, description = "unknown_token", body = proto::ErrorBody),
    ))]
async fn fence(
    State(state): State<AppState>,
    caller: Caller,
    LockPath(name): LockPath,
    JsonBody(request): JsonBody<proto::TokenRequest>,
) -> Result<Json<proto::FenceResponse>, ApiError> {
    caller.require(Role::Acquire, name.as_str())?;
    let newest = state.store.fence(name, request.token).await?;
    Ok(Json(proto::FenceResponse {
        accepted: true,
        newest_token: newest,
    }))
}

/// A lock's past holds.
#[utoipa::path(get, path = "/v1/locks/{name}/history", tag = "locks",
    params(
        ("name" = String, Path, description = "The lock's name"),
        ("limit" = Option<usize>, Query, description = "At most this many (default 100)"),
    ),
    responses((status = 200, description = "Newest first", body = proto::History)))]
async fn history(
    State(state): State<AppState>,
    caller: Caller,
    LockPath(name): LockPath,
    query: QueryMap,
) -> Result<Json<proto::History>, ApiError> {
    caller.require(Role::Read, name.as_str())?;
    query.only(&["limit"])?;
    let limit = query.limit("limit", 100, HISTORY_LIMIT_MAX)?;
    let records = state.store.history(name.clone(), limit).await?;
    Ok(Json(proto::History {
        lock: name.to_string(),
        entries: records.into_iter().map(history_wire).collect(),
    }))
}

fn health(state: &AppState, status: &str) -> proto::Health {
    let leadership = state.store.leadership();
    proto::Health {
        status: status.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        store: state.store.kind().to_owned(),
        role: leadership.as_ref().map(|leadership| {
            if leadership.active {
                "active".to_owned()
            } else {
                "standby".to_owned()
            }
        }),
        active: leadership.and_then(|leadership| leadership.active_url),
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", body = proto::Health)))]
async fn healthz(State(state): State<AppState>) -> Json<proto::Health> {
    Json(health(&state, "ok"))
}

/// Readiness: the store takes writes. A standby of a shared database is not ready (its `role`
/// says `standby` and `active` names the active server), so a load balancer sends clients to
/// the active one.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = proto::Health),
        (status = 503, description = "The store cannot commit, or this server is a standby",
            body = proto::Health),
    ))]
async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ready().await {
        Ok(()) => Json(health(&state, "ok")).into_response(),
        Err(baton_store::StoreError::NotActive { .. }) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(health(&state, "standby")),
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(health(&state, "store unavailable")),
            )
                .into_response()
        }
    }
}

/// Prometheus text exposition of the store's counters. Written by hand: a handful of counters
/// and gauges do not justify a metrics library.
/// Prometheus text: the HTTP series, connections, and the store's series (see `telemetry`).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "The server's metrics in the OpenMetrics text \
        format (Prometheus reads it): requests by route and status and their latency \
        histograms, connections, locks, leases, waiters, locks in lock-delay, jobs by state, \
        lease grants, releases, expiries and revocations, queue entries and exits, job \
        transitions by state, the commit latency histogram, event subscribers, leadership. \
        No series has a per-lock label.", content_type = "application/openmetrics-text")))]
async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.telemetry.encode(),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        crate::openapi::document_json(),
    )
        .into_response()
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "baton",
        description = "Leases, fencing tokens and fair queues across machines."
    ),
    paths(
        acquire,
        wait_ticket,
        cancel_ticket,
        renew,
        release,
        list_locks,
        get_lock,
        revoke,
        fence,
        history,
        healthz,
        readyz,
        metrics,
        crate::jobs::create,
        crate::jobs::list,
        crate::jobs::get_one,
        crate::jobs::wait,
        crate::jobs::heartbeat,
        crate::jobs::finish,
        crate::jobs::append_output,
        crate::jobs::cancel,
        crate::keys::create,
        crate::keys::list,
        crate::keys::revoke,
        crate::keys::audit,
        crate::events::events
    ),
    modifiers(&BearerAuth)
)]
pub(crate) struct ApiDoc;

/// Declares the bearer API key in the OpenAPI document, required everywhere but the open paths.
struct BearerAuth;

/// The paths answered without a key (see `auth`).
const OPEN_PATHS: &[&str] = &["/healthz", "/readyz", "/v1/openapi.json"];

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`baton_…`), when the server has any. 401 without a valid \
                         one, 403 when it does not grant the call, 429 over its rate limit.",
                    ))
                    .build(),
            ),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "api_key",
            Vec::<String>::new(),
        )]);
        // The open paths need no key: say so per operation (an empty requirement list).
        for path in OPEN_PATHS {
            if let Some(item) = openapi.paths.paths.get_mut(*path) {
                for operation in [&mut item.get, &mut item.post, &mut item.delete]
                    .into_iter()
                    .flatten()
                {
                    operation.security = Some(Vec::new());
                }
            }
        }
    }
}
