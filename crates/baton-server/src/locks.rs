//! The lock, ticket and lease handlers of `/v1` (`/v1/locks…`, `/v1/tickets…`,
//! `/v1/leases…`): each turns wire types into a store call and the outcome back into wire
//! types. No domain rule lives here: outcomes come from the core through the store.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use baton_core::{
    Cancelled, Lease, LeaseEnd, LockName, Millis, QueuedTicket, Released, TicketEnd, TicketStatus,
    validate_owner,
};
use baton_proto as proto;
use baton_proto::ErrorCode;
use baton_store::{AcquireArgs, AcquireOutcome, AuditEntry, Role};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, LeasePath, LockPath, QueryMap, TicketPath};
use crate::limits::{
    HISTORY_LIMIT_MAX, LIST_LIMIT_MAX, ttl, validate_requester, validate_value, wait_duration,
};
use crate::scope::{authorize_by_id, conflict_in_scope};
use crate::state::AppState;
use crate::wire::{history_wire, holder_wire, lease_wire, lock_wire, mode_core, ticket_wire};

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
pub(crate) async fn acquire(
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

/// Wait on a ticket.
///
/// The ticket lapses one ticket lapse after this wait ends (answered, or its connection
/// closed). If the connection closes before the answer, the ticket keeps its place until then
/// for a wait that comes back, but is not granted while nobody waits: when its turn comes it
/// lapses and the lock goes to the next waiter; a grant made while this wait was parked and
/// never delivered is released cleanly (no lock-delay) and handed on.
///
/// A ticket of a lock set (`POST /v1/locksets/acquire`) stands for the whole set: a wait on it
/// keeps every ticket of the set, a departed waiter is a departure from the set, and once the
/// set is granted a wait on each of its tickets returns that ticket's lease at once.
#[utoipa::path(post, path = "/v1/tickets/{id}/wait", tag = "tickets",
    params(("id" = String, Path, description = "The ticket's id")),
    request_body = proto::WaitRequest,
    responses(
        (status = 200, description = "Granted", body = proto::LeaseResponse),
        (status = 202, description = "Still queued", body = proto::TicketResponse),
        (status = 410, description = "ticket_lapsed or ticket_cancelled", body = proto::ErrorBody),
        (status = 404, description = "ticket_not_found", body = proto::ErrorBody),
    ))]
pub(crate) async fn wait_ticket(
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
///
/// Cancelling one ticket of a lock set cancels the whole set: a set is queued all together or
/// not at all.
#[utoipa::path(delete, path = "/v1/tickets/{id}", tag = "tickets",
    params(("id" = String, Path, description = "The ticket's id")),
    responses(
        (status = 200, description = "Done (see `cancelled`)", body = proto::CancelResponse),
        (status = 404, description = "ticket_not_found", body = proto::ErrorBody),
    ))]
pub(crate) async fn cancel_ticket(
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
pub(crate) async fn renew(
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
pub(crate) async fn release(
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
pub(crate) async fn list_locks(
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
pub(crate) async fn get_lock(
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
pub(crate) async fn revoke(
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
pub(crate) async fn fence(
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
pub(crate) async fn history(
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
