//! Answers kept within what the caller may see: a request naming a lease, ticket or job by id
//! is authorized against the lock the store found for it, and an id or a request-id conflict
//! under a lock the caller cannot read is answered as if unknown. Shared by the lock and job
//! handlers.

use baton_core::LockName;
use baton_proto::ErrorCode;
use baton_store::Role;

use crate::auth::Caller;
use crate::error::ApiError;

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
