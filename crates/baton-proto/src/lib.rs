//! The wire boundary of baton: every request and response body of the `/v1` HTTP API, the
//! stable error codes, and the HTTP status each code travels with.
//!
//! This crate holds no logic. The server converts between these types and the core's types in
//! its handlers; the client deserializes them. Field names are part of the public contract:
//! add fields, never rename or remove them. Times are RFC 3339 timestamps in UTC; durations are
//! whole milliseconds in fields whose names end in `_ms`.
//!
//! Lease and ticket ids appear only in the bodies of responses to the holder's own requests
//! ([`Lease::id`], [`Ticket::id`]); the listing types ([`Holder`], [`Waiter`], [`HistoryEntry`])
//! deliberately have no id field (guarantee G8).

mod events;
mod jobs;
mod keys;

pub use events::{Event, EventKind, JobEvent};

pub use jobs::{
    AppendOutputRequest, AppendOutputResponse, CancelJobResponse, CancelOutcome, CreateJobRequest,
    CreateJobResponse, FinishJobRequest, HeartbeatRequest, HeartbeatResponse, Job, JobDetail,
    JobList, JobState, OUTPUT_APPEND_BYTES_MAX, Policy,
};

pub use keys::{
    AuditEntry, AuditList, CreateKeyRequest, CreatedKey, KeyInfo, KeyList, RevokeKeyResponse,
};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// The version prefix of every API path.
pub const API_PREFIX: &str = "/v1";

/// How a lease holds its lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// Alone (a writer), or within a semaphore's capacity. The default.
    #[default]
    Exclusive,
    /// With any number of other shared holders and no exclusive one (a reader). Only on a lock
    /// of capacity 1: a lock is either a semaphore or a read-write lock.
    Shared,
}

impl LockMode {
    /// The text form on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Exclusive => "exclusive",
            LockMode::Shared => "shared",
        }
    }
}

/// Body of `POST /v1/locks/{name}/acquire`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    /// A label for whoever holds the lease, shown in listings and history (e.g. `host/pid/job`).
    pub owner: String,
    /// Acquiring again with the same owner key while holding (or queued) returns the lease (or
    /// ticket) already held instead of a second one: a reentrant acquire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_key: Option<String>,
    /// Lease time-to-live; the server's default applies when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// 1 for a mutex, N for a semaphore. When absent: the lock's current capacity, or 1 for a
    /// new lock. A different capacity while the lock is in use is a `capacity_conflict` error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// How long the server may hold this request open waiting for a grant (long-poll).
    /// 0 or absent: answer at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    /// When true and the lease is not granted within `wait_ms`, the answer is 202 with a ticket
    /// that keeps the caller's place in the FIFO queue; when false, the answer is 409 `busy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<bool>,
    /// A retried request with the same id returns the same outcome, never a second lease or
    /// ticket (guarantee G7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// A small value published with the lease (at most 1024 bytes of text without NUL: an
    /// address, a version), shown to everyone who may read the lock: in listings, history and
    /// `granted` events. Leader election publishes the leader's address here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `exclusive` (the default) or `shared`: any number of shared holders or one exclusive
    /// holder, granted in one FIFO order across modes (a queued writer holds back the readers
    /// that arrive after it). Shared mode needs a lock of capacity 1; on a semaphore it is a
    /// `mode_conflict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<LockMode>,
}

/// Body of `POST /v1/locksets/acquire`: several locks taken together, all granted or none,
/// queued fairly (one arrival order across every lock) and never deadlocking with another set
/// however they overlap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AcquireSetRequest {
    /// The locks, 1 to 16 distinct names (`LOCK_SET_LOCKS_MAX`). Answers list leases and
    /// tickets in this order. Each lock keeps its capacity (1 for a new lock).
    pub locks: Vec<String>,
    /// A label for whoever holds the leases, shown in listings and history.
    pub owner: String,
    /// Time-to-live of every lease; the server's default applies when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// How long the server may hold this request open waiting for the whole set (long-poll).
    /// 0 or absent: answer at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    /// When true and the set is not granted within `wait_ms`, the answer is 202 with one ticket
    /// per lock, which keep the set's places in the queues; when false, 409 `busy` and nothing
    /// is held or queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<bool>,
    /// A retried request with the same id returns the same outcome, never a second set of
    /// leases or tickets (G7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// A small value published with every lease (as on a single acquire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `exclusive` (the default) or `shared`, for every lock of the set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<LockMode>,
}

/// 200 answer of a lock-set acquire: every lease, in the order of the request's locks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct LeasesResponse {
    /// One lease per lock. Each is renewed and released on its own.
    pub leases: Vec<Lease>,
}

/// 202 answer of a lock-set acquire: one ticket per lock, in the order of the request's locks.
/// Wait on any one of them (`POST /v1/tickets/{id}/wait`) to keep them all; once the set is
/// granted, a wait on each ticket returns its lease at once. Cancelling one cancels the set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TicketsResponse {
    /// One ticket per lock, each with its position in its lock's queue.
    pub tickets: Vec<Ticket>,
}

/// A granted lease, as its holder sees it. Only the holder's own requests return this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Lease {
    /// The lease's secret id: the only way to renew or release it.
    pub id: String,
    /// The lock's name.
    pub lock: String,
    /// The owner label given at acquire.
    pub owner: String,
    /// The owner key given at acquire, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_key: Option<String>,
    /// The fencing token: greater than every token granted before it by this server's store.
    pub token: u64,
    /// The lease's time-to-live; each renewal extends the lease to now + ttl.
    pub ttl_ms: u64,
    /// When the lease was granted, by the server's clock.
    pub granted_at: Timestamp,
    /// When the lease ends unless renewed, by the server's clock.
    pub expires_at: Timestamp,
    /// Milliseconds left before `expires_at` when the server answered. A client counts its own
    /// deadline as (when it sent the request) + `expires_in_ms`, which is never later than the
    /// server's, whatever the two clocks say.
    pub expires_in_ms: u64,
    /// The value published with the lease, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// How the lease holds the lock: `exclusive` (alone, or within a semaphore's capacity) or
    /// `shared` (with other shared holders, on a read-write lock).
    #[serde(default)]
    pub mode: LockMode,
}

/// A place in a lock's FIFO queue, as its waiter sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Ticket {
    /// The ticket's secret id: the only way to wait on or cancel it.
    pub id: String,
    /// The lock's name.
    pub lock: String,
    /// The owner label given at acquire.
    pub owner: String,
    /// 1 for the head of the queue.
    pub position: u64,
    /// When the ticket joined the queue.
    pub queued_at: Timestamp,
    /// The ticket lapses (leaves the queue) unless a wait on it arrives within this many
    /// milliseconds of this answer.
    pub lapses_in_ms: u64,
}

/// 200 answer carrying a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct LeaseResponse {
    /// The lease.
    pub lease: Lease,
}

/// 202 answer carrying a ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TicketResponse {
    /// The ticket.
    pub ticket: Ticket,
}

/// Body of `POST /v1/tickets/{id}/wait`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WaitRequest {
    /// How long the server may hold this request open waiting for the grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// Answer of `DELETE /v1/tickets/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CancelResponse {
    /// True when the ticket left the queue (or its not-yet-collected lease was released).
    pub cancelled: bool,
    /// Why nothing was cancelled: `already_granted` (the lease was collected by a wait; release
    /// it instead), `lapsed` or `cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Body of `POST /v1/leases/{id}/renew`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// A new time-to-live; the lease's current one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// A new value for the lease (at most 1024 bytes of text without NUL); the lease keeps its
    /// value when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Answer of `POST /v1/leases/{id}/release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ReleaseResponse {
    /// True when this call ended the lease.
    pub released: bool,
    /// Why not: `already_released`, `expired` or `revoked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A current holder of a lock, as listings show it (no lease id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Holder {
    /// The owner label.
    pub owner: String,
    /// The lease's fencing token.
    pub token: u64,
    /// When the lease was granted.
    pub since: Timestamp,
    /// When the lease ends unless renewed.
    pub expires_at: Timestamp,
    /// The job it runs, when it is a `baton run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The value its holder published with the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// How the lease holds the lock: `exclusive` (alone, or within a semaphore's capacity) or
    /// `shared` (with other shared holders, on a read-write lock).
    #[serde(default)]
    pub mode: LockMode,
}

/// A queued waiter, as listings show it (no ticket id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Waiter {
    /// 1 for the head of the queue.
    pub position: u64,
    /// The owner label.
    pub owner: String,
    /// When the ticket joined the queue.
    pub since: Timestamp,
    /// The job waiting, when it is a `baton run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The mode the waiter asked for.
    #[serde(default)]
    pub mode: LockMode,
}

/// One lock: `GET /v1/locks/{name}` and the items of `GET /v1/locks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct LockInfo {
    /// The lock's name.
    pub name: String,
    /// How many leases may be held at once.
    pub capacity: u32,
    /// Current holders, oldest grant first.
    pub holders: Vec<Holder>,
    /// Waiters in queue order.
    pub waiters: Vec<Waiter>,
    /// After an unclean end (expiry, revocation) the lock grants nothing until this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delayed_until: Option<Timestamp>,
    /// The newest fencing token granted on, or accepted by a fence check for, this lock.
    pub newest_token: u64,
}

/// Answer of `GET /v1/locks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct LockList {
    /// Every known lock, by name.
    pub locks: Vec<LockInfo>,
}

/// Body of `POST /v1/locks/{name}/revoke` and `POST /v1/locks/{name}/fence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// A fencing token.
    pub token: u64,
}

/// Answer of `POST /v1/locks/{name}/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RevokeResponse {
    /// Always true in a 200 answer.
    pub revoked: bool,
    /// The lease that was revoked.
    pub holder: Holder,
}

/// Answer of `POST /v1/locks/{name}/fence` when the token is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct FenceResponse {
    /// Always true in a 200 answer.
    pub accepted: bool,
    /// The newest token seen for the lock (equal to the token checked when accepted).
    pub newest_token: u64,
}

/// How a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HoldEnd {
    /// The holder released it.
    Released,
    /// The holder stopped renewing.
    Expired,
    /// An administrator revoked it.
    Revoked,
}

/// One past hold of a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct HistoryEntry {
    /// The owner label.
    pub owner: String,
    /// The lease's fencing token.
    pub token: u64,
    /// When the lease was granted.
    pub granted_at: Timestamp,
    /// When it ended.
    pub ended_at: Timestamp,
    /// How long it was held, in milliseconds.
    pub held_ms: u64,
    /// How it ended.
    pub end: HoldEnd,
    /// The lease's value when it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// How the lease holds the lock: `exclusive` (alone, or within a semaphore's capacity) or
    /// `shared` (with other shared holders, on a read-write lock).
    #[serde(default)]
    pub mode: LockMode,
}

/// Answer of `GET /v1/locks/{name}/history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct History {
    /// The lock's name.
    pub lock: String,
    /// Past holds, newest first.
    pub entries: Vec<HistoryEntry>,
}

/// Answer of `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Health {
    /// `ok`, or what is wrong.
    pub status: String,
    /// The server's version.
    pub version: String,
    /// The store in use: `memory`, `sqlite` or `postgres`.
    pub store: String,
    /// With a store shared by several servers: `active` (this server answers) or `standby`
    /// (it sends every client to the active one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// With a store shared by several servers: the active server's advertised URL, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
}

/// The body of every error answer: `{"error": {"code": ..., "message": ...}, ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
    /// With `busy`: who holds the lock now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holders: Option<Vec<Holder>>,
    /// With `stale_token`: the newest token seen for the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_token: Option<u64>,
    /// With `not_active`: the active server's advertised URL, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
    /// With `quota_exceeded`: which of the key's quotas is reached, and its limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaLimit>,
}

/// One of an API key's quotas and its limit, as a `quota_exceeded` answer names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct QuotaLimit {
    /// `leases` (live leases), `waiters` (queued tickets), `locks` (locks the key created that
    /// are still known) or `jobs` (job records the key created that are still kept).
    pub name: String,
    /// The most the key may have: its own quota, or the server's default.
    pub limit: u64,
}

/// A stable code and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ErrorDetail {
    /// One of [`ErrorCode`], in snake case. Stable: scripts may match on it.
    pub code: String,
    /// What went wrong and what to do about it. Not stable: do not match on it.
    pub message: String,
}

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = ($code:literal, $status:literal), )*) => {
        /// Every error code the API sends, with the HTTP status it travels with.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, for documentation and tests.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as it appears on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $( ErrorCode::$variant => $code, )* }
            }

            /// The HTTP status the code is sent with.
            pub fn http_status(self) -> u16 {
                match self { $( ErrorCode::$variant => $status, )* }
            }

            /// Parses a code from the wire; `None` for a code this version does not know.
            pub fn parse(code: &str) -> Option<ErrorCode> {
                match code { $( $code => Some(ErrorCode::$variant), )* _ => None }
            }
        }
    };
}

error_codes! {
    /// The body is not valid JSON, or not the expected shape (unknown or missing fields).
    InvalidBody = ("invalid_body", 400),
    /// The body is larger than the server accepts.
    BodyTooLarge = ("body_too_large", 413),
    /// The request body did not arrive whole within the server's body read timeout.
    BodyTimeout = ("body_timeout", 408),
    /// The request's `Host` is not one this server answers: a server without API keys answers
    /// only loopback addresses, IP addresses, `localhost` and the names given with
    /// `--allowed-host` (a defence against DNS rebinding).
    HostNotAllowed = ("host_not_allowed", 403),
    /// The request's content type is not `application/json`.
    UnsupportedMediaType = ("unsupported_media_type", 415),
    /// A lock name is empty, too long, or has a character outside `A-Z a-z 0-9 . _ : / @ -`.
    InvalidName = ("invalid_name", 400),
    /// An owner label or owner key is empty, too long or has control characters.
    InvalidOwner = ("invalid_owner", 400),
    /// `ttl_ms` is outside the server's bounds.
    InvalidTtl = ("invalid_ttl", 400),
    /// `wait_ms` is outside the server's bounds.
    InvalidWait = ("invalid_wait", 400),
    /// `capacity` is 0 or above the server's bound.
    InvalidCapacity = ("invalid_capacity", 400),
    /// A lease's `value` is longer than 1024 bytes or contains a NUL character.
    InvalidValue = ("invalid_value", 400),
    /// `request_id` is empty, too long or has a character outside `A-Z a-z 0-9 . _ : -`.
    InvalidRequestId = ("invalid_request_id", 400),
    /// A query parameter is malformed or out of range.
    InvalidQuery = ("invalid_query", 400),
    /// A lease or ticket id is not of the form the server issues.
    InvalidId = ("invalid_id", 400),
    /// A token of 0, or one this store has never granted.
    UnknownToken = ("unknown_token", 400),
    /// A lock set names no lock, more than 16 locks (`LOCK_SET_LOCKS_MAX`), or a lock twice.
    InvalidLockSet = ("invalid_lock_set", 400),
    /// The lock is held to capacity (or has a queue) and the request did not queue.
    Busy = ("busy", 409),
    /// The request asked for a capacity other than the lock's while the lock is in use.
    CapacityConflict = ("capacity_conflict", 409),
    /// A `shared` acquire on a semaphore (a lock of capacity above 1, or asking for one): a lock
    /// is either a semaphore or a read-write lock. Acquire it exclusive, or use another lock.
    ModeConflict = ("mode_conflict", 409),
    /// The request id was used before for a different request.
    RequestIdConflict = ("request_id_conflict", 409),
    /// A fence check with a token older than one already seen for the lock.
    StaleToken = ("stale_token", 409),
    /// No lease has this id (or it ended too long ago to remember).
    LeaseNotFound = ("lease_not_found", 404),
    /// No ticket has this id.
    TicketNotFound = ("ticket_not_found", 404),
    /// No lock has this name.
    LockNotFound = ("lock_not_found", 404),
    /// No live lease of the lock has this token.
    HolderNotFound = ("holder_not_found", 404),
    /// No such path.
    NotFound = ("not_found", 404),
    /// The path exists, but not with this method.
    MethodNotAllowed = ("method_not_allowed", 405),
    /// The lease expired or was released: the holder must stop.
    LeaseLost = ("lease_lost", 410),
    /// The lease was revoked by an administrator: the holder must stop.
    Revoked = ("revoked", 410),
    /// The ticket left the queue because nobody waited on it in time, or its lease ended
    /// before a wait collected it.
    TicketLapsed = ("ticket_lapsed", 410),
    /// The ticket was cancelled.
    TicketCancelled = ("ticket_cancelled", 410),
    /// A limit on the number of locks, holders or waiters is reached; try again later.
    LimitReached = ("limit_reached", 503),
    /// The store cannot commit right now; try again later.
    Unavailable = ("unavailable", 503),
    /// This server is a standby of a shared database: the server named in `active` (when
    /// known) is the active one and serves every request. Nothing was done here, so the same
    /// request may be sent to another server at once.
    NotActive = ("not_active", 503),
    /// No job has this id.
    JobNotFound = ("job_not_found", 404),
    /// No API key was presented, or it is unknown or revoked.
    Unauthorized = ("unauthorized", 401),
    /// The API key does not grant this (role or lock-name prefix).
    Forbidden = ("forbidden", 403),
    /// The API key made more requests per second than it may; see `Retry-After`.
    RateLimited = ("rate_limited", 429),
    /// The API key already has as many leases, waiters, locks or jobs as its quota allows (the
    /// body's `quota` says which, and the limit). Other keys are not affected; retrying helps
    /// only once the key has released, cancelled or finished something, so there is no
    /// `Retry-After`.
    QuotaExceeded = ("quota_exceeded", 429),
    /// No API key has this id.
    KeyNotFound = ("key_not_found", 404),
    /// A key grant is not `ROLE:PREFIX`, or a key's name or rate is out of bounds.
    InvalidKey = ("invalid_key", 400),
    /// The job is not in a state that allows this (e.g. finishing a finished job).
    JobStateConflict = ("job_state_conflict", 409),
    /// A job state that cannot be reported (e.g. `running` in a finish).
    InvalidState = ("invalid_state", 400),
    /// A command line or output tail too large, or a bad job field.
    InvalidJob = ("invalid_job", 400),
    /// A defect in the server; the message says where to look.
    Internal = ("internal", 500),
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate code {code}");
            assert_eq!(ErrorCode::parse(code.as_str()), Some(*code));
            assert!((400..600).contains(&code.http_status()));
        }
    }

    #[test]
    fn acquire_request_rejects_unknown_fields() {
        let err = serde_json::from_str::<AcquireRequest>(r#"{"owner":"a","ttl":5}"#);
        assert!(err.is_err());
        let ok: AcquireRequest =
            serde_json::from_str(r#"{"owner":"a","ttl_ms":5000}"#).unwrap_or_default();
        assert_eq!(ok.ttl_ms, Some(5000));
    }

    #[test]
    fn listing_types_carry_no_ids() {
        let holder = Holder {
            owner: "o".into(),
            token: 1,
            since: Timestamp::UNIX_EPOCH,
            expires_at: Timestamp::UNIX_EPOCH,
            job: None,
            value: None,
            mode: LockMode::Shared,
        };
        let text = serde_json::to_string(&holder).unwrap_or_default();
        assert!(!text.contains("\"id\""));
    }
}
