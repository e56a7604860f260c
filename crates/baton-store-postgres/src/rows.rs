//! Rows ↔ core types. Every read checks what it reads (a row another version of baton wrote, or a
//! hand edit, is reported, never trusted into a panic).

use baton_core::{
    EndedTicketEntry, HistoryRecord, Job, JobId, JobState, Lease, LeaseEnd, LeaseId, LockName,
    LockRecord, LockSlice, Millis, Policy, RequestEntry, RequestTarget, StopReason, Ticket,
    TicketEnd, TicketId,
};
use baton_store::StoreError;
use tokio_postgres::Row;

/// What a bad row is reported as.
pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("the database holds an invalid {what}: {detail}"))
}

/// A database error as the server reports it (the text is logged, not sent to clients).
pub(crate) fn db(context: &str) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
    move |error| StoreError::Unavailable(format!("{context}: {error}"))
}

pub(crate) fn i64_of(value: u64) -> i64 {
    // Times are milliseconds since 1970 and tokens count grants: both far below 2^63.
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn u64_of(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| corrupt(what, "negative"))
}

fn opt_u64(value: Option<i64>, what: &str) -> Result<Option<u64>, StoreError> {
    value.map(|v| u64_of(v, what)).transpose()
}

fn id16(bytes: &[u8], what: &str) -> Result<[u8; 16], StoreError> {
    <[u8; 16]>::try_from(bytes).map_err(|_| corrupt(what, "not 16 bytes"))
}

fn opt_id16(bytes: Option<&[u8]>, what: &str) -> Result<Option<[u8; 16]>, StoreError> {
    bytes.map(|b| id16(b, what)).transpose()
}

pub(crate) fn lock_name(text: &str) -> Result<LockName, StoreError> {
    LockName::new(text).map_err(|error| corrupt("lock name", error))
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    index: usize,
    what: &str,
) -> Result<T, StoreError> {
    row.try_get(index).map_err(|error| corrupt(what, error))
}

pub(crate) const LOCK_COLUMNS: &str =
    "name, capacity, newest_token, newest_granted, delayed_until, idle_since, delayed_slots";

pub(crate) fn lock_of(row: &Row) -> Result<LockSlice, StoreError> {
    let capacity: i32 = get(row, 1, "lock")?;
    Ok(LockSlice {
        record: LockRecord {
            api_key: None,
            name: lock_name(get(row, 0, "lock")?)?,
            capacity: u32::try_from(capacity).map_err(|_| corrupt("lock", "capacity"))?,
            newest_token: u64_of(get(row, 2, "lock")?, "token")?,
            newest_granted: u64_of(get(row, 3, "lock")?, "token")?,
            delayed_until: opt_u64(get(row, 4, "lock")?, "time")?,
            delayed_slots: u32::try_from(get::<i32>(row, 6, "lock")?)
                .map_err(|_| corrupt("lock", "delayed slots"))?,
        },
        idle_since: u64_of(get(row, 5, "lock")?, "time")?,
    })
}

pub(crate) const LEASE_COLUMNS: &str =
    "id, lock, owner, owner_key, token, ttl_ms, granted_at, expires_at, request_id, ticket";

pub(crate) fn lease_of(row: &Row) -> Result<Lease, StoreError> {
    Ok(Lease {
        api_key: None,
        id: LeaseId(id16(get(row, 0, "lease")?, "lease id")?),
        lock: lock_name(get(row, 1, "lease")?)?,
        owner: get(row, 2, "lease")?,
        owner_key: get(row, 3, "lease")?,
        token: u64_of(get(row, 4, "lease")?, "token")?,
        ttl_ms: u64_of(get(row, 5, "lease")?, "ttl")?,
        granted_at: u64_of(get(row, 6, "lease")?, "time")?,
        expires_at: u64_of(get(row, 7, "lease")?, "time")?,
        request_id: get(row, 8, "lease")?,
        ticket: opt_id16(get(row, 9, "lease")?, "ticket id")?.map(TicketId),
    })
}

pub(crate) const TICKET_COLUMNS: &str = "id, lock, owner, owner_key, ttl_ms, request_id, lease_id, queued_at, lapse_at, seq, \
     waiter_gone, api_key";

pub(crate) fn ticket_of(row: &Row) -> Result<Ticket, StoreError> {
    Ok(Ticket {
        id: TicketId(id16(get(row, 0, "ticket")?, "ticket id")?),
        lock: lock_name(get(row, 1, "ticket")?)?,
        owner: get(row, 2, "ticket")?,
        owner_key: get(row, 3, "ticket")?,
        ttl_ms: u64_of(get(row, 4, "ticket")?, "ttl")?,
        request_id: get(row, 5, "ticket")?,
        lease_id: LeaseId(id16(get(row, 6, "ticket")?, "lease id")?),
        queued_at: u64_of(get(row, 7, "ticket")?, "time")?,
        lapse_at: u64_of(get(row, 8, "ticket")?, "time")?,
        seq: u64_of(get(row, 9, "ticket")?, "sequence")?,
        waiter_gone: get(row, 10, "ticket")?,
        api_key: get(row, 11, "ticket")?,
    })
}

pub(crate) fn ticket_end_text(end: TicketEnd) -> (&'static str, Option<[u8; 16]>) {
    match end {
        TicketEnd::Granted(lease) => ("granted", Some(lease.0)),
        TicketEnd::Lapsed => ("lapsed", None),
        TicketEnd::Cancelled => ("cancelled", None),
    }
}

pub(crate) const ENDED_TICKET_COLUMNS: &str = "id, end_kind, lease_id, collected, ended_at";

pub(crate) fn ended_ticket_of(row: &Row) -> Result<EndedTicketEntry, StoreError> {
    let kind: &str = get(row, 1, "ended ticket")?;
    let lease = opt_id16(get(row, 2, "ended ticket")?, "lease id")?;
    let end = match (kind, lease) {
        ("granted", Some(lease)) => TicketEnd::Granted(LeaseId(lease)),
        ("lapsed", _) => TicketEnd::Lapsed,
        ("cancelled", _) => TicketEnd::Cancelled,
        (other, _) => return Err(corrupt("ticket end", other)),
    };
    Ok(EndedTicketEntry {
        id: TicketId(id16(get(row, 0, "ended ticket")?, "ticket id")?),
        end,
        collected: get(row, 3, "ended ticket")?,
        ended_at: u64_of(get(row, 4, "ended ticket")?, "time")?,
    })
}

pub(crate) const REQUEST_COLUMNS: &str = "request_id, lock, kind, target, at";

pub(crate) fn request_of(row: &Row) -> Result<RequestEntry, StoreError> {
    let kind: &str = get(row, 2, "request")?;
    let target = id16(get(row, 3, "request")?, "request target")?;
    Ok(RequestEntry {
        request_id: get(row, 0, "request")?,
        lock: lock_name(get(row, 1, "request")?)?,
        target: match kind {
            "lease" => RequestTarget::Lease(LeaseId(target)),
            "ticket" => RequestTarget::Ticket(TicketId(target)),
            other => return Err(corrupt("request kind", other)),
        },
        at: u64_of(get(row, 4, "request")?, "time")?,
    })
}

pub(crate) fn request_target(target: RequestTarget) -> (&'static str, [u8; 16]) {
    match target {
        RequestTarget::Lease(id) => ("lease", id.0),
        RequestTarget::Ticket(id) => ("ticket", id.0),
    }
}

pub(crate) const HISTORY_COLUMNS: &str =
    "lease_id, request_id, lock, owner, token, granted_at, ended_at, end_kind";

pub(crate) fn history_of(row: &Row) -> Result<HistoryRecord, StoreError> {
    let end: &str = get(row, 7, "history record")?;
    Ok(HistoryRecord {
        lease_id: LeaseId(id16(get(row, 0, "history record")?, "lease id")?),
        request_id: get(row, 1, "history record")?,
        lock: lock_name(get(row, 2, "history record")?)?,
        owner: get(row, 3, "history record")?,
        token: u64_of(get(row, 4, "history record")?, "token")?,
        granted_at: u64_of(get(row, 5, "history record")?, "time")?,
        ended_at: u64_of(get(row, 6, "history record")?, "time")?,
        end: LeaseEnd::parse(end).ok_or_else(|| corrupt("lease end", end))?,
    })
}

pub(crate) const JOB_COLUMNS: &str = "id, name, lock, policy, owner, host, command, state, reason, \
     token, lease_id, ticket_id, coalesced_into, stop, exit_code, batch, request_id, created_at, \
     waiting_at, started_at, finished_at, min_hold_ms, release_at, once_slot, output_tail, once_per_ms";

pub(crate) fn job_of(row: &Row) -> Result<Job, StoreError> {
    let what = "job";
    let policy: &str = get(row, 3, what)?;
    let command: &str = get(row, 6, what)?;
    let state: &str = get(row, 7, what)?;
    let stop: Option<&str> = get(row, 13, what)?;
    Ok(Job {
        api_key: None,
        id: JobId(id16(get(row, 0, what)?, "job id")?),
        name: get(row, 1, what)?,
        lock: lock_name(get(row, 2, what)?)?,
        policy: Policy::parse(policy).ok_or_else(|| corrupt("job policy", policy))?,
        owner: get(row, 4, what)?,
        host: get(row, 5, what)?,
        command: serde_json::from_str(command).map_err(|error| corrupt("command line", error))?,
        state: JobState::parse(state).ok_or_else(|| corrupt("job state", state))?,
        reason: get(row, 8, what)?,
        token: opt_u64(get(row, 9, what)?, "token")?,
        lease: opt_id16(get(row, 10, what)?, "lease id")?.map(LeaseId),
        ticket: opt_id16(get(row, 11, what)?, "ticket id")?.map(TicketId),
        coalesced_into: opt_id16(get(row, 12, what)?, "job id")?.map(JobId),
        stop: match stop {
            None => None,
            Some("replaced") => Some(StopReason::Replaced),
            Some(other) => return Err(corrupt("stop reason", other)),
        },
        exit_code: get(row, 14, what)?,
        batch: get(row, 15, what)?,
        request_id: get(row, 16, what)?,
        created_at: u64_of(get(row, 17, what)?, "time")?,
        waiting_at: opt_u64(get(row, 18, what)?, "time")?,
        started_at: opt_u64(get(row, 19, what)?, "time")?,
        finished_at: opt_u64(get(row, 20, what)?, "time")?,
        min_hold_ms: opt_u64(get(row, 21, what)?, "min hold")?,
        release_at: opt_u64(get(row, 22, what)?, "time")?,
        once_slot: opt_u64(get(row, 23, what)?, "slot")?,
        output_tail: get(row, 24, what)?,
        once_per_ms: opt_u64(get(row, 25, what)?, "period")?,
    })
}

/// A time as a column value.
pub(crate) fn t(value: Millis) -> i64 {
    i64_of(value)
}

/// An optional time as a column value.
pub(crate) fn ot(value: Option<Millis>) -> Option<i64> {
    value.map(i64_of)
}
