//! The server's own limits on requests (`wait_ms`, list and history sizes) and the checks that
//! hold a request to them and to the core's limits (owner, request id, capacity, TTL), each
//! answered with its stable error code. Limits owned by one API stay with it
//! (`JOB_LIST_LIMIT_MAX` in `jobs.rs`, `AUDIT_LIMIT_MAX` in `keys.rs`, the key limits in
//! `auth.rs`, body sizes in `extract.rs`); the OpenAPI document states them all
//! (`openapi.rs`).

use std::time::Duration;

use baton_core::{limits, validate_lease_value, validate_owner, validate_request_id};
use baton_proto::ErrorCode;

use crate::error::ApiError;

/// The longest a request may be held open waiting (`wait_ms`).
pub const WAIT_MS_MAX: u64 = 60_000;
/// Most locks one `GET /v1/locks` returns.
pub const LIST_LIMIT_MAX: usize = 10_000;
/// Most history records one `GET /v1/locks/{name}/history` returns.
pub const HISTORY_LIMIT_MAX: usize = 1_000;

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
