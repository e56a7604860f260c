//! The lock-set handler (`POST /v1/locksets/acquire`): several locks taken together, all
//! granted or none. It checks that the caller may acquire every lock of the set before the
//! store sees anything (a key must have the `acquire` role on each, or nothing changes), turns
//! the wire request into a store call and the outcome back into wire types. The rules (one
//! arrival order, head of every queue, all or nothing) live in the core's `sets` module.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use baton_core::{LockName, limits};
use baton_proto as proto;
use baton_proto::ErrorCode;
use baton_store::{AcquireSetArgs, AcquireSetOutcome, Role};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::limits::{ttl, validate_requester, validate_value, wait_duration};
use crate::scope::conflict_in_scope;
use crate::state::AppState;
use crate::wire::{holder_wire, lease_wire, mode_core, ticket_wire};

/// Parses the set's lock names: 1 to [`limits::LOCK_SET_LOCKS_MAX`], each a valid name. (The
/// core refuses a name given twice, with the same error code.)
fn lock_names(locks: &[String]) -> Result<Vec<LockName>, ApiError> {
    if locks.is_empty() || locks.len() > limits::LOCK_SET_LOCKS_MAX {
        return Err(ApiError::new(
            ErrorCode::InvalidLockSet,
            format!(
                "a lock set names 1 to {} distinct locks",
                limits::LOCK_SET_LOCKS_MAX
            ),
        ));
    }
    locks
        .iter()
        .map(|name| {
            LockName::new(name).map_err(|error| {
                ApiError::new(ErrorCode::InvalidName, format!("lock {name:?}: {error}"))
            })
        })
        .collect()
}

/// Acquire several locks together.
///
/// All the locks are granted in one durable step, each lease with its own fencing token, or
/// none is. A set that cannot be granted at once (and waits or queues) takes one place in each
/// lock's FIFO queue, with one arrival order across all locks: it is granted when it heads every
/// one of its queues and each lock has room, so sets never deadlock however they overlap, and a
/// single-lock waiter behind a set keeps its place. A try (no wait, no queue) is granted only
/// when every lock is free with an empty queue; otherwise 409 `busy` and nothing is held or
/// queued. The key must have the `acquire` role on every lock. Each lease is renewed and
/// released on its own; the tickets of a set are waited on (any one keeps all), lapse and are
/// cancelled together.
#[utoipa::path(post, path = "/v1/locksets/acquire", tag = "locks",
    request_body = proto::AcquireSetRequest,
    responses(
        (status = 200, description = "Every lock granted, leases in the order of `locks`", body = proto::LeasesResponse),
        (status = 202, description = "Still queued after wait_ms (queue: true): one ticket per lock, in the order of `locks`", body = proto::TicketsResponse),
        (status = 409, description = "busy (nothing held or queued), mode_conflict or request_id_conflict", body = proto::ErrorBody),
        (status = 400, description = "Invalid input, or invalid_lock_set: no lock, more than LOCK_SET_LOCKS_MAX, or a lock twice", body = proto::ErrorBody),
        (status = 403, description = "The key lacks the acquire role on one of the locks; nothing changed", body = proto::ErrorBody),
    ))]
pub(crate) async fn acquire_set(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<proto::AcquireSetRequest>,
) -> Result<Response, ApiError> {
    let locks = lock_names(&request.locks)?;
    for lock in &locks {
        caller.require(Role::Acquire, lock.as_str())?;
    }
    validate_requester(&request.owner, request.request_id.as_deref(), None)?;
    validate_value(request.value.as_deref())?;
    let args = AcquireSetArgs {
        locks,
        owner: request.owner,
        ttl_ms: ttl(request.ttl_ms, state.default_ttl_ms)?,
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
        .acquire_set(args)
        .await
        .map_err(|error| conflict_in_scope(&caller, error))?;
    let now = state.store.now_ms();
    Ok(match outcome {
        AcquireSetOutcome::Granted(leases) => (
            StatusCode::OK,
            Json(proto::LeasesResponse {
                leases: leases
                    .into_iter()
                    .map(|lease| lease_wire(lease, now))
                    .collect(),
            }),
        )
            .into_response(),
        AcquireSetOutcome::Queued(tickets) => (
            StatusCode::ACCEPTED,
            Json(proto::TicketsResponse {
                tickets: tickets
                    .into_iter()
                    .map(|ticket| ticket_wire(ticket, now))
                    .collect(),
            }),
        )
            .into_response(),
        AcquireSetOutcome::Busy(holders) => ApiError {
            holders: Some(holders.iter().map(holder_wire).collect()),
            ..ApiError::new(
                ErrorCode::Busy,
                "a lock of the set is held to capacity or has waiters; nothing was taken",
            )
        }
        .into_response(),
    })
}
