//! The one place where failures become HTTP answers: every error is
//! `{"error": {"code", "message"}}` with the status its [`ErrorCode`] carries. Internal details
//! (store failures) are logged, never sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use baton_core::{
    AcquireError, JobError, LeaseEnd, LeaseError, Quota, TicketEnd, TicketError, TokenError,
};
use baton_proto::{ErrorBody, ErrorCode, ErrorDetail, Holder, QuotaLimit};
use baton_store::StoreError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// The stable code (and so the status).
    pub code: ErrorCode,
    /// What happened, for a person.
    pub message: String,
    /// With `busy`: the holders.
    pub holders: Option<Vec<Holder>>,
    /// With `stale_token`: the newest token.
    pub newest_token: Option<u64>,
    /// With `not_active`: the active server's URL.
    pub active: Option<String>,
    /// With `quota_exceeded`: which quota, and its limit.
    pub quota: Option<Box<QuotaLimit>>,
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            holders: None,
            newest_token: None,
            active: None,
            quota: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_owned(),
                message: self.message,
            },
            holders: self.holders,
            newest_token: self.newest_token,
            active: self.active.clone(),
            quota: self.quota.map(|quota| *quota),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if self.code == ErrorCode::NotActive {
            // Nothing was done: the client may go to another server at once.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("0"),
            );
        }
        if self.code == ErrorCode::BodyTooLarge {
            // The rest of the body was never read, so the connection cannot carry another
            // request: say so, or a keep-alive client would send its next request into a
            // connection the server is closing.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

/// What a key at its quota is told: which quota, its limit, and what frees room.
fn quota_message(quota: Quota, limit: usize) -> String {
    let (what, frees) = match quota {
        Quota::Leases => ("live leases", "release one of its leases"),
        Quota::Waiters => (
            "queued tickets",
            "cancel a ticket or wait for one to be granted",
        ),
        Quota::Locks => (
            "locks it created (idle locks are forgotten after an hour)",
            "reuse lock names it already has",
        ),
        Quota::Jobs => (
            "unfinished job records",
            "finish or cancel one of its running or waiting jobs",
        ),
    };
    format!(
        "quota exceeded: this API key may have at most {limit} {what} (its {} quota); {frees}, \
         or ask an administrator for a larger quota. Other keys are not affected.",
        quota.as_str()
    )
}

fn lease_end(end: LeaseEnd) -> ApiError {
    match end {
        LeaseEnd::Revoked => ApiError::new(
            ErrorCode::Revoked,
            "the lease was revoked by an administrator; stop work that needs the lock",
        ),
        LeaseEnd::Expired => ApiError::new(
            ErrorCode::LeaseLost,
            "the lease expired before it was renewed; stop work that needs the lock",
        ),
        LeaseEnd::Released => ApiError::new(ErrorCode::LeaseLost, "the lease was released"),
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::Acquire(error) => match error {
                AcquireError::InvalidTtl => ApiError::new(ErrorCode::InvalidTtl, error.to_string()),
                AcquireError::InvalidCapacity => {
                    ApiError::new(ErrorCode::InvalidCapacity, error.to_string())
                }
                AcquireError::InvalidLockSet => {
                    ApiError::new(ErrorCode::InvalidLockSet, error.to_string())
                }
                AcquireError::InvalidValue(_) => {
                    ApiError::new(ErrorCode::InvalidValue, error.to_string())
                }
                AcquireError::ModeConflict { .. } => {
                    ApiError::new(ErrorCode::ModeConflict, error.to_string())
                }
                AcquireError::CapacityConflict { .. } => {
                    ApiError::new(ErrorCode::CapacityConflict, error.to_string())
                }
                AcquireError::RequestIdConflict { .. } => {
                    ApiError::new(ErrorCode::RequestIdConflict, error.to_string())
                }
                AcquireError::LeaseEnded(end) => lease_end(end),
                AcquireError::TicketEnded(TicketEnd::Cancelled) => ApiError::new(
                    ErrorCode::TicketCancelled,
                    "the ticket of this request was cancelled",
                ),
                AcquireError::TicketEnded(_) => ApiError::new(
                    ErrorCode::TicketLapsed,
                    "the ticket of this request lapsed or its lease ended",
                ),
                AcquireError::LimitReached(what) => {
                    ApiError::new(ErrorCode::LimitReached, format!("{what}; try again later"))
                }
                AcquireError::QuotaExceeded { quota, limit } => ApiError {
                    quota: Some(Box::new(QuotaLimit {
                        name: quota.as_str().to_owned(),
                        limit: u64::try_from(limit).unwrap_or(u64::MAX),
                    })),
                    ..ApiError::new(ErrorCode::QuotaExceeded, quota_message(quota, limit))
                },
            },
            StoreError::Ticket(error) => match error {
                TicketError::NotFound => ApiError::new(
                    ErrorCode::TicketNotFound,
                    "no ticket has this id (tickets are forgotten an hour after they end)",
                ),
                TicketError::Lapsed => ApiError::new(
                    ErrorCode::TicketLapsed,
                    "the ticket lapsed: nobody waited on it in time, or its lease ended before a \
                     wait collected it; acquire again",
                ),
                TicketError::Cancelled => {
                    ApiError::new(ErrorCode::TicketCancelled, "the ticket was cancelled")
                }
            },
            StoreError::Lease(error) => match error {
                LeaseError::NotFound => ApiError::new(
                    ErrorCode::LeaseNotFound,
                    "no lease has this id (leases are forgotten an hour after they end)",
                ),
                LeaseError::Ended(end) => lease_end(end),
                LeaseError::InvalidTtl => ApiError::new(ErrorCode::InvalidTtl, error.to_string()),
                LeaseError::InvalidValue(_) => {
                    ApiError::new(ErrorCode::InvalidValue, error.to_string())
                }
            },
            StoreError::Token(error) => match error {
                TokenError::Stale { newest } => ApiError {
                    newest_token: Some(newest),
                    ..ApiError::new(
                        ErrorCode::StaleToken,
                        format!(
                            "a newer token ({newest}) was seen for this lock; this holder is stale"
                        ),
                    )
                },
                TokenError::Unknown => ApiError::new(
                    ErrorCode::UnknownToken,
                    "this token was never granted on this lock",
                ),
                TokenError::HolderNotFound => ApiError::new(
                    ErrorCode::HolderNotFound,
                    "no live lease of this lock has this token",
                ),
                TokenError::LockNotFound => {
                    ApiError::new(ErrorCode::LockNotFound, "no lock has this name")
                }
            },
            StoreError::Job(error) => match error {
                JobError::Acquire(error) => ApiError::from(StoreError::Acquire(error)),
                JobError::Lease(error) => ApiError::from(StoreError::Lease(error)),
                JobError::NotFound => ApiError::new(ErrorCode::JobNotFound, "no job has this id"),
                JobError::WrongCapability => ApiError::new(
                    ErrorCode::LeaseNotFound,
                    "this lease or ticket is not the job's: give the id of the lease (or \
                     ticket) that the job's creation answered",
                ),
                JobError::AlreadyEnded(_) => {
                    ApiError::new(ErrorCode::JobStateConflict, error.to_string())
                }
                JobError::InvalidState(_) => {
                    ApiError::new(ErrorCode::InvalidState, error.to_string())
                }
                JobError::Invalid(what) => ApiError::new(ErrorCode::InvalidJob, what),
            },
            StoreError::Unavailable(reason) => {
                tracing::error!(%reason, "store unavailable");
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the store cannot make changes durable right now; see the server's log",
                )
            }
            StoreError::NotActive { active } => {
                let message = match &active {
                    Some(url) => format!(
                        "this server is a standby; the active server is {url}: send requests \
                         there (a client given every server's URL finds it by itself)"
                    ),
                    None => "this server is a standby and no active server is known right now \
                             (an election is under way, or the database is unreachable); try \
                             again shortly"
                        .to_owned(),
                };
                ApiError {
                    active,
                    ..ApiError::new(ErrorCode::NotActive, message)
                }
            }
        }
    }
}
