//! Rows ↔ core types, one place per type: the columns, the multi-row upsert that writes a batch
//! of them, the builder that turns records into one array per column (`UNNEST` zips them back
//! into rows), and the reader. A new field of a core type is a column here, in all four.
//!
//! Every read checks what it reads (a row another version of baton wrote, or a hand edit, is
//! reported, never trusted into a panic).

use baton_core::{
    HistoryRecord, Job, JobId, JobState, KeyQuota, Lease, LeaseEnd, LeaseId, LockName, LockRecord,
    Millis, Mode, Policy, StopReason, Ticket, TicketId,
};
use baton_store::{ApiKey, AuditEntry, KeyGrant, PersistError};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// What a bad row is reported as.
pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> PersistError {
    PersistError(format!("the database holds an invalid {what}: {detail}"))
}

/// A database error as the server reports it (the text is logged, not sent to clients).
pub(crate) fn db(context: &str) -> impl Fn(tokio_postgres::Error) -> PersistError + '_ {
    move |error| PersistError(format!("{context}: {error}"))
}

/// Parameters of one statement.
pub(crate) type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;

pub(crate) fn i64_of(value: u64) -> i64 {
    // Times are milliseconds since 1970 and tokens count grants: both far below 2^63.
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn i32_of(value: u32) -> i32 {
    // Capacities and slot counts are bounded by the core's limits, far below 2^31.
    i32::try_from(value).unwrap_or(i32::MAX)
}

pub(crate) fn u64_of(value: i64, what: &str) -> Result<u64, PersistError> {
    u64::try_from(value).map_err(|_| corrupt(what, "negative"))
}

fn u32_of(value: i32, what: &str) -> Result<u32, PersistError> {
    u32::try_from(value).map_err(|_| corrupt(what, "negative"))
}

fn opt_u64(value: Option<i64>, what: &str) -> Result<Option<u64>, PersistError> {
    value.map(|v| u64_of(v, what)).transpose()
}

fn ot(value: Option<Millis>) -> Option<i64> {
    value.map(i64_of)
}

fn id16(bytes: &[u8], what: &str) -> Result<[u8; 16], PersistError> {
    <[u8; 16]>::try_from(bytes).map_err(|_| corrupt(what, "not 16 bytes"))
}

fn opt_id16(bytes: Option<&[u8]>, what: &str) -> Result<Option<[u8; 16]>, PersistError> {
    bytes.map(|b| id16(b, what)).transpose()
}

fn opt_usize(value: Option<i64>, what: &str) -> Result<Option<usize>, PersistError> {
    value
        .map(|value| usize::try_from(value).map_err(|error| corrupt(what, error)))
        .transpose()
}

fn mode_of(text: &str) -> Result<Mode, PersistError> {
    Mode::parse(text).ok_or_else(|| corrupt("lease mode", text))
}

fn lock_name(text: &str) -> Result<LockName, PersistError> {
    LockName::new(text).map_err(|error| corrupt("lock name", error))
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    index: usize,
    what: &str,
) -> Result<T, PersistError> {
    row.try_get(index).map_err(|error| corrupt(what, error))
}

// ---- locks ----

pub(crate) const LOCK_SELECT: &str = "SELECT name, capacity, newest_token, newest_granted, delayed_until, delayed_slots, api_key \
     FROM locks";

pub(crate) const LOCK_UPSERT: &str = "INSERT INTO locks (name, capacity, newest_token, \
     newest_granted, delayed_until, delayed_slots, api_key) \
     SELECT * FROM UNNEST($1::text[], $2::int[], $3::bigint[], $4::bigint[], $5::bigint[], \
     $6::int[], $7::text[]) \
     ON CONFLICT (name) DO UPDATE SET capacity = EXCLUDED.capacity, \
     newest_token = EXCLUDED.newest_token, newest_granted = EXCLUDED.newest_granted, \
     delayed_until = EXCLUDED.delayed_until, delayed_slots = EXCLUDED.delayed_slots, \
     api_key = EXCLUDED.api_key";

pub(crate) const LOCK_DELETE: &str = "DELETE FROM locks WHERE name = ANY($1::text[])";

#[derive(Default)]
pub(crate) struct LockRows {
    name: Vec<String>,
    capacity: Vec<i32>,
    newest_token: Vec<i64>,
    newest_granted: Vec<i64>,
    delayed_until: Vec<Option<i64>>,
    delayed_slots: Vec<i32>,
    api_key: Vec<Option<String>>,
}

impl LockRows {
    pub(crate) fn push(&mut self, record: &LockRecord) {
        self.name.push(record.name.as_str().to_owned());
        self.capacity.push(i32_of(record.capacity));
        self.newest_token.push(i64_of(record.newest_token));
        self.newest_granted.push(i64_of(record.newest_granted));
        self.delayed_until.push(ot(record.delayed_until));
        self.delayed_slots.push(i32_of(record.delayed_slots));
        self.api_key.push(record.api_key.clone());
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.name.is_empty()
    }

    pub(crate) fn params(&self) -> Params<'_> {
        vec![
            &self.name,
            &self.capacity,
            &self.newest_token,
            &self.newest_granted,
            &self.delayed_until,
            &self.delayed_slots,
            &self.api_key,
        ]
    }
}

pub(crate) fn lock_of(row: &Row) -> Result<LockRecord, PersistError> {
    let what = "lock";
    Ok(LockRecord {
        name: lock_name(get(row, 0, what)?)?,
        capacity: u32_of(get(row, 1, what)?, "capacity")?,
        newest_token: u64_of(get(row, 2, what)?, "token")?,
        newest_granted: u64_of(get(row, 3, what)?, "token")?,
        delayed_until: opt_u64(get(row, 4, what)?, "time")?,
        delayed_slots: u32_of(get(row, 5, what)?, "delayed slots")?,
        api_key: get(row, 6, what)?,
    })
}

// ---- leases ----

pub(crate) const LEASE_SELECT: &str = "SELECT id, lock, owner, owner_key, token, ttl_ms, \
     granted_at, expires_at, request_id, ticket, api_key, value, mode FROM leases";

pub(crate) const LEASE_UPSERT: &str = "INSERT INTO leases (id, lock, owner, owner_key, token, \
     ttl_ms, granted_at, expires_at, request_id, ticket, api_key, value, mode) \
     SELECT * FROM UNNEST($1::bytea[], $2::text[], $3::text[], $4::text[], $5::bigint[], \
     $6::bigint[], $7::bigint[], $8::bigint[], $9::text[], $10::bytea[], $11::text[], \
     $12::text[], $13::text[]) \
     ON CONFLICT (id) DO UPDATE SET lock = EXCLUDED.lock, owner = EXCLUDED.owner, \
     owner_key = EXCLUDED.owner_key, token = EXCLUDED.token, ttl_ms = EXCLUDED.ttl_ms, \
     granted_at = EXCLUDED.granted_at, expires_at = EXCLUDED.expires_at, \
     request_id = EXCLUDED.request_id, ticket = EXCLUDED.ticket, api_key = EXCLUDED.api_key, \
     value = EXCLUDED.value, mode = EXCLUDED.mode";

pub(crate) const LEASE_DELETE: &str = "DELETE FROM leases WHERE id = ANY($1::bytea[])";

#[derive(Default)]
pub(crate) struct LeaseRows {
    id: Vec<Vec<u8>>,
    lock: Vec<String>,
    owner: Vec<String>,
    owner_key: Vec<Option<String>>,
    token: Vec<i64>,
    ttl_ms: Vec<i64>,
    granted_at: Vec<i64>,
    expires_at: Vec<i64>,
    request_id: Vec<Option<String>>,
    ticket: Vec<Option<Vec<u8>>>,
    api_key: Vec<Option<String>>,
    value: Vec<Option<String>>,
    mode: Vec<&'static str>,
}

impl LeaseRows {
    pub(crate) fn push(&mut self, lease: &Lease) {
        self.id.push(lease.id.0.to_vec());
        self.lock.push(lease.lock.as_str().to_owned());
        self.owner.push(lease.owner.clone());
        self.owner_key.push(lease.owner_key.clone());
        self.token.push(i64_of(lease.token));
        self.ttl_ms.push(i64_of(lease.ttl_ms));
        self.granted_at.push(i64_of(lease.granted_at));
        self.expires_at.push(i64_of(lease.expires_at));
        self.request_id.push(lease.request_id.clone());
        self.ticket.push(lease.ticket.map(|id| id.0.to_vec()));
        self.api_key.push(lease.api_key.clone());
        self.value.push(lease.value.clone());
        self.mode.push(lease.mode.as_str());
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.id.is_empty()
    }

    pub(crate) fn params(&self) -> Params<'_> {
        vec![
            &self.id,
            &self.lock,
            &self.owner,
            &self.owner_key,
            &self.token,
            &self.ttl_ms,
            &self.granted_at,
            &self.expires_at,
            &self.request_id,
            &self.ticket,
            &self.api_key,
            &self.value,
            &self.mode,
        ]
    }
}

pub(crate) fn lease_of(row: &Row) -> Result<Lease, PersistError> {
    let what = "lease";
    Ok(Lease {
        id: LeaseId(id16(get(row, 0, what)?, "lease id")?),
        lock: lock_name(get(row, 1, what)?)?,
        owner: get(row, 2, what)?,
        owner_key: get(row, 3, what)?,
        token: u64_of(get(row, 4, what)?, "token")?,
        ttl_ms: u64_of(get(row, 5, what)?, "ttl")?,
        granted_at: u64_of(get(row, 6, what)?, "time")?,
        expires_at: u64_of(get(row, 7, what)?, "time")?,
        request_id: get(row, 8, what)?,
        ticket: opt_id16(get(row, 9, what)?, "ticket id")?.map(TicketId),
        api_key: get(row, 10, what)?,
        value: get(row, 11, what)?,
        mode: mode_of(get(row, 12, what)?)?,
    })
}

// ---- tickets ----

pub(crate) const TICKET_SELECT: &str = "SELECT id, lock, owner, owner_key, ttl_ms, request_id, \
     lease_id, queued_at, lapse_at, seq, waiter_gone, api_key, value, mode FROM tickets";

pub(crate) const TICKET_UPSERT: &str = "INSERT INTO tickets (id, lock, owner, owner_key, ttl_ms, \
     request_id, lease_id, queued_at, lapse_at, seq, waiter_gone, api_key, value, mode) \
     SELECT * FROM UNNEST($1::bytea[], $2::text[], $3::text[], $4::text[], $5::bigint[], \
     $6::text[], $7::bytea[], $8::bigint[], $9::bigint[], $10::bigint[], $11::boolean[], \
     $12::text[], $13::text[], $14::text[]) \
     ON CONFLICT (id) DO UPDATE SET lock = EXCLUDED.lock, owner = EXCLUDED.owner, \
     owner_key = EXCLUDED.owner_key, ttl_ms = EXCLUDED.ttl_ms, \
     request_id = EXCLUDED.request_id, lease_id = EXCLUDED.lease_id, \
     queued_at = EXCLUDED.queued_at, lapse_at = EXCLUDED.lapse_at, seq = EXCLUDED.seq, \
     waiter_gone = EXCLUDED.waiter_gone, api_key = EXCLUDED.api_key, value = EXCLUDED.value, \
     mode = EXCLUDED.mode";

pub(crate) const TICKET_DELETE: &str = "DELETE FROM tickets WHERE id = ANY($1::bytea[])";

#[derive(Default)]
pub(crate) struct TicketRows {
    id: Vec<Vec<u8>>,
    lock: Vec<String>,
    owner: Vec<String>,
    owner_key: Vec<Option<String>>,
    ttl_ms: Vec<i64>,
    request_id: Vec<Option<String>>,
    lease_id: Vec<Vec<u8>>,
    queued_at: Vec<i64>,
    lapse_at: Vec<i64>,
    seq: Vec<i64>,
    waiter_gone: Vec<bool>,
    api_key: Vec<Option<String>>,
    value: Vec<Option<String>>,
    mode: Vec<&'static str>,
}

impl TicketRows {
    pub(crate) fn push(&mut self, ticket: &Ticket) {
        self.id.push(ticket.id.0.to_vec());
        self.lock.push(ticket.lock.as_str().to_owned());
        self.owner.push(ticket.owner.clone());
        self.owner_key.push(ticket.owner_key.clone());
        self.ttl_ms.push(i64_of(ticket.ttl_ms));
        self.request_id.push(ticket.request_id.clone());
        self.lease_id.push(ticket.lease_id.0.to_vec());
        self.queued_at.push(i64_of(ticket.queued_at));
        self.lapse_at.push(i64_of(ticket.lapse_at));
        self.seq.push(i64_of(ticket.seq));
        self.waiter_gone.push(ticket.waiter_gone);
        self.api_key.push(ticket.api_key.clone());
        self.value.push(ticket.value.clone());
        self.mode.push(ticket.mode.as_str());
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.id.is_empty()
    }

    pub(crate) fn params(&self) -> Params<'_> {
        vec![
            &self.id,
            &self.lock,
            &self.owner,
            &self.owner_key,
            &self.ttl_ms,
            &self.request_id,
            &self.lease_id,
            &self.queued_at,
            &self.lapse_at,
            &self.seq,
            &self.waiter_gone,
            &self.api_key,
            &self.value,
            &self.mode,
        ]
    }
}

pub(crate) fn ticket_of(row: &Row) -> Result<Ticket, PersistError> {
    let what = "ticket";
    Ok(Ticket {
        id: TicketId(id16(get(row, 0, what)?, "ticket id")?),
        lock: lock_name(get(row, 1, what)?)?,
        owner: get(row, 2, what)?,
        owner_key: get(row, 3, what)?,
        ttl_ms: u64_of(get(row, 4, what)?, "ttl")?,
        request_id: get(row, 5, what)?,
        lease_id: LeaseId(id16(get(row, 6, what)?, "lease id")?),
        queued_at: u64_of(get(row, 7, what)?, "time")?,
        lapse_at: u64_of(get(row, 8, what)?, "time")?,
        seq: u64_of(get(row, 9, what)?, "sequence")?,
        waiter_gone: get(row, 10, what)?,
        api_key: get(row, 11, what)?,
        value: get(row, 12, what)?,
        mode: mode_of(get(row, 13, what)?)?,
    })
}

// ---- history ----

pub(crate) const HISTORY_SELECT: &str = "SELECT lease_id, request_id, lock, owner, token, \
     granted_at, ended_at, end_kind, value, mode FROM history ORDER BY ended_at, id";

pub(crate) const HISTORY_INSERT: &str = "INSERT INTO history (lease_id, request_id, lock, owner, \
     token, granted_at, ended_at, end_kind, value, mode) \
     SELECT * FROM UNNEST($1::bytea[], $2::text[], $3::text[], $4::text[], $5::bigint[], \
     $6::bigint[], $7::bigint[], $8::text[], $9::text[], $10::text[])";

pub(crate) const HISTORY_PRUNE: &str = "DELETE FROM history WHERE ended_at < $1";

#[derive(Default)]
pub(crate) struct HistoryRows {
    lease_id: Vec<Vec<u8>>,
    request_id: Vec<Option<String>>,
    lock: Vec<String>,
    owner: Vec<String>,
    token: Vec<i64>,
    granted_at: Vec<i64>,
    ended_at: Vec<i64>,
    end_kind: Vec<&'static str>,
    value: Vec<Option<String>>,
    mode: Vec<&'static str>,
}

impl HistoryRows {
    pub(crate) fn push(&mut self, record: &HistoryRecord) {
        self.lease_id.push(record.lease_id.0.to_vec());
        self.request_id.push(record.request_id.clone());
        self.lock.push(record.lock.as_str().to_owned());
        self.owner.push(record.owner.clone());
        self.token.push(i64_of(record.token));
        self.granted_at.push(i64_of(record.granted_at));
        self.ended_at.push(i64_of(record.ended_at));
        self.end_kind.push(record.end.as_str());
        self.value.push(record.value.clone());
        self.mode.push(record.mode.as_str());
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lease_id.is_empty()
    }

    pub(crate) fn params(&self) -> Params<'_> {
        vec![
            &self.lease_id,
            &self.request_id,
            &self.lock,
            &self.owner,
            &self.token,
            &self.granted_at,
            &self.ended_at,
            &self.end_kind,
            &self.value,
            &self.mode,
        ]
    }
}

pub(crate) fn history_of(row: &Row) -> Result<HistoryRecord, PersistError> {
    let what = "history record";
    let end: &str = get(row, 7, what)?;
    Ok(HistoryRecord {
        lease_id: LeaseId(id16(get(row, 0, what)?, "lease id")?),
        request_id: get(row, 1, what)?,
        lock: lock_name(get(row, 2, what)?)?,
        owner: get(row, 3, what)?,
        token: u64_of(get(row, 4, what)?, "token")?,
        granted_at: u64_of(get(row, 5, what)?, "time")?,
        ended_at: u64_of(get(row, 6, what)?, "time")?,
        end: LeaseEnd::parse(end).ok_or_else(|| corrupt("lease end", end))?,
        value: get(row, 8, what)?,
        mode: mode_of(get(row, 9, what)?)?,
    })
}

// ---- jobs ----

pub(crate) const JOB_SELECT: &str = "SELECT id, name, lock, policy, owner, host, command, state, \
     reason, token, lease_id, ticket_id, coalesced_into, stop, exit_code, batch, request_id, \
     created_at, waiting_at, started_at, finished_at, min_hold_ms, release_at, once_slot, \
     output_tail, once_per_ms, api_key FROM jobs";

pub(crate) const JOB_UPSERT: &str = "INSERT INTO jobs (id, name, lock, policy, owner, host, \
     command, state, reason, token, lease_id, ticket_id, coalesced_into, stop, exit_code, batch, \
     request_id, created_at, waiting_at, started_at, finished_at, min_hold_ms, release_at, \
     once_slot, output_tail, once_per_ms, api_key) \
     SELECT * FROM UNNEST($1::bytea[], $2::text[], $3::text[], $4::text[], $5::text[], \
     $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::bytea[], $12::bytea[], \
     $13::bytea[], $14::text[], $15::int[], $16::text[], $17::text[], $18::bigint[], \
     $19::bigint[], $20::bigint[], $21::bigint[], $22::bigint[], $23::bigint[], $24::bigint[], \
     $25::text[], $26::bigint[], $27::text[]) \
     ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, lock = EXCLUDED.lock, \
     policy = EXCLUDED.policy, owner = EXCLUDED.owner, host = EXCLUDED.host, \
     command = EXCLUDED.command, state = EXCLUDED.state, reason = EXCLUDED.reason, \
     token = EXCLUDED.token, lease_id = EXCLUDED.lease_id, ticket_id = EXCLUDED.ticket_id, \
     coalesced_into = EXCLUDED.coalesced_into, stop = EXCLUDED.stop, \
     exit_code = EXCLUDED.exit_code, batch = EXCLUDED.batch, request_id = EXCLUDED.request_id, \
     created_at = EXCLUDED.created_at, waiting_at = EXCLUDED.waiting_at, \
     started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at, \
     min_hold_ms = EXCLUDED.min_hold_ms, release_at = EXCLUDED.release_at, \
     once_slot = EXCLUDED.once_slot, output_tail = EXCLUDED.output_tail, \
     once_per_ms = EXCLUDED.once_per_ms, api_key = EXCLUDED.api_key";

pub(crate) const JOB_DELETE: &str = "DELETE FROM jobs WHERE id = ANY($1::bytea[])";

#[derive(Default)]
pub(crate) struct JobRows {
    id: Vec<Vec<u8>>,
    name: Vec<String>,
    lock: Vec<String>,
    policy: Vec<&'static str>,
    owner: Vec<String>,
    host: Vec<Option<String>>,
    command: Vec<String>,
    state: Vec<&'static str>,
    reason: Vec<Option<String>>,
    token: Vec<Option<i64>>,
    lease_id: Vec<Option<Vec<u8>>>,
    ticket_id: Vec<Option<Vec<u8>>>,
    coalesced_into: Vec<Option<Vec<u8>>>,
    stop: Vec<Option<&'static str>>,
    exit_code: Vec<Option<i32>>,
    batch: Vec<Option<String>>,
    request_id: Vec<Option<String>>,
    created_at: Vec<i64>,
    waiting_at: Vec<Option<i64>>,
    started_at: Vec<Option<i64>>,
    finished_at: Vec<Option<i64>>,
    min_hold_ms: Vec<Option<i64>>,
    release_at: Vec<Option<i64>>,
    once_slot: Vec<Option<i64>>,
    output_tail: Vec<String>,
    once_per_ms: Vec<Option<i64>>,
    api_key: Vec<Option<String>>,
}

impl JobRows {
    pub(crate) fn push(&mut self, job: &Job) -> Result<(), PersistError> {
        // The command line is a JSON array of strings: any argument survives.
        let command = serde_json::to_string(&job.command)
            .map_err(|error| PersistError(format!("cannot encode a command line: {error}")))?;
        self.id.push(job.id.0.to_vec());
        self.name.push(job.name.clone());
        self.lock.push(job.lock.as_str().to_owned());
        self.policy.push(job.policy.as_str());
        self.owner.push(job.owner.clone());
        self.host.push(job.host.clone());
        self.command.push(command);
        self.state.push(job.state.as_str());
        self.reason.push(job.reason.clone());
        self.token.push(job.token.map(i64_of));
        self.lease_id.push(job.lease.map(|id| id.0.to_vec()));
        self.ticket_id.push(job.ticket.map(|id| id.0.to_vec()));
        self.coalesced_into
            .push(job.coalesced_into.map(|id| id.0.to_vec()));
        self.stop.push(job.stop.map(StopReason::as_str));
        self.exit_code.push(job.exit_code);
        self.batch.push(job.batch.clone());
        self.request_id.push(job.request_id.clone());
        self.created_at.push(i64_of(job.created_at));
        self.waiting_at.push(ot(job.waiting_at));
        self.started_at.push(ot(job.started_at));
        self.finished_at.push(ot(job.finished_at));
        self.min_hold_ms.push(ot(job.min_hold_ms));
        self.release_at.push(ot(job.release_at));
        self.once_slot.push(ot(job.once_slot));
        self.output_tail.push(job.output_tail.clone());
        self.once_per_ms.push(ot(job.once_per_ms));
        self.api_key.push(job.api_key.clone());
        Ok(())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.id.is_empty()
    }

    pub(crate) fn params(&self) -> Params<'_> {
        vec![
            &self.id,
            &self.name,
            &self.lock,
            &self.policy,
            &self.owner,
            &self.host,
            &self.command,
            &self.state,
            &self.reason,
            &self.token,
            &self.lease_id,
            &self.ticket_id,
            &self.coalesced_into,
            &self.stop,
            &self.exit_code,
            &self.batch,
            &self.request_id,
            &self.created_at,
            &self.waiting_at,
            &self.started_at,
            &self.finished_at,
            &self.min_hold_ms,
            &self.release_at,
            &self.once_slot,
            &self.output_tail,
            &self.once_per_ms,
            &self.api_key,
        ]
    }
}

pub(crate) fn job_of(row: &Row) -> Result<Job, PersistError> {
    let what = "job";
    let policy: &str = get(row, 3, what)?;
    let command: &str = get(row, 6, what)?;
    let state: &str = get(row, 7, what)?;
    let stop: Option<&str> = get(row, 13, what)?;
    Ok(Job {
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
            Some(text) => {
                Some(StopReason::parse(text).ok_or_else(|| corrupt("stop reason", text))?)
            }
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
        // Not stored: the core counts a restored job's output from its tail.
        output_total_bytes: 0,
        once_per_ms: opt_u64(get(row, 25, what)?, "period")?,
        api_key: get(row, 26, what)?,
    })
}

// ---- API keys and the audit log ----

pub(crate) const KEY_SELECT: &str = "SELECT id, name, secret_sha256, grants, rate_per_sec, \
     created_at, revoked_at, leases_max, waiters_max, locks_max, jobs_max FROM api_keys \
     ORDER BY created_at, id";

pub(crate) const KEY_UPSERT: &str = "INSERT INTO api_keys (id, name, secret_sha256, grants, \
     rate_per_sec, created_at, revoked_at, leases_max, waiters_max, locks_max, jobs_max) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
     ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, \
     secret_sha256 = EXCLUDED.secret_sha256, grants = EXCLUDED.grants, \
     rate_per_sec = EXCLUDED.rate_per_sec, created_at = EXCLUDED.created_at, \
     revoked_at = EXCLUDED.revoked_at, leases_max = EXCLUDED.leases_max, \
     waiters_max = EXCLUDED.waiters_max, locks_max = EXCLUDED.locks_max, \
     jobs_max = EXCLUDED.jobs_max";

/// An API key as statement parameters.
pub(crate) struct KeyRow {
    id: String,
    name: String,
    secret_sha256: String,
    grants: String,
    rate_per_sec: Option<i32>,
    created_at: i64,
    revoked_at: Option<i64>,
    /// Its own quotas: leases, waiters, locks, jobs.
    quota: [Option<i64>; 4],
}

impl KeyRow {
    pub(crate) fn new(key: &ApiKey) -> KeyRow {
        KeyRow {
            id: key.id.clone(),
            name: key.name.clone(),
            secret_sha256: key.secret_sha256.clone(),
            grants: KeyGrant::to_lines(&key.grants),
            rate_per_sec: key
                .rate_per_sec
                .map(|rate| i32::try_from(rate).unwrap_or(i32::MAX)),
            created_at: i64_of(key.created_at),
            revoked_at: ot(key.revoked_at),
            quota: [
                key.quota.leases_max,
                key.quota.waiters_max,
                key.quota.locks_max,
                key.quota.jobs_max,
            ]
            .map(|limit| limit.map(|limit| i64::try_from(limit).unwrap_or(i64::MAX))),
        }
    }

    pub(crate) fn params(&self) -> Params<'_> {
        vec![
            &self.id,
            &self.name,
            &self.secret_sha256,
            &self.grants,
            &self.rate_per_sec,
            &self.created_at,
            &self.revoked_at,
            &self.quota[0],
            &self.quota[1],
            &self.quota[2],
            &self.quota[3],
        ]
    }
}

pub(crate) fn key_of(row: &Row) -> Result<ApiKey, PersistError> {
    let what = "API key";
    let grants: &str = get(row, 3, what)?;
    let rate: Option<i32> = get(row, 4, what)?;
    Ok(ApiKey {
        id: get(row, 0, what)?,
        name: get(row, 1, what)?,
        secret_sha256: get(row, 2, what)?,
        grants: KeyGrant::from_lines(grants).map_err(|line| corrupt("key grant", line))?,
        rate_per_sec: rate.map(|rate| u32_of(rate, "key rate")).transpose()?,
        created_at: u64_of(get(row, 5, what)?, "time")?,
        revoked_at: opt_u64(get(row, 6, what)?, "time")?,
        quota: KeyQuota {
            leases_max: opt_usize(get(row, 7, what)?, "key quota")?,
            waiters_max: opt_usize(get(row, 8, what)?, "key quota")?,
            locks_max: opt_usize(get(row, 9, what)?, "key quota")?,
            jobs_max: opt_usize(get(row, 10, what)?, "key quota")?,
        },
    })
}

pub(crate) const AUDIT_INSERT: &str = "INSERT INTO audit_log (at, actor, action, target, detail) \
     VALUES ($1, $2, $3, $4, $5) RETURNING seq, at, actor, action, target, detail";

pub(crate) const AUDIT_SELECT: &str = "SELECT seq, at, actor, action, target, detail \
     FROM audit_log WHERE $1::bigint IS NULL OR seq < $1 ORDER BY seq DESC LIMIT $2";

/// An audit entry as statement parameters (its `seq` is the database's to assign).
pub(crate) struct AuditRow {
    at: i64,
    actor: String,
    action: String,
    target: String,
    detail: Option<String>,
}

impl AuditRow {
    pub(crate) fn new(entry: &AuditEntry) -> AuditRow {
        AuditRow {
            at: i64_of(entry.at),
            actor: entry.actor.clone(),
            action: entry.action.clone(),
            target: entry.target.clone(),
            detail: entry.detail.clone(),
        }
    }

    pub(crate) fn params(&self) -> Params<'_> {
        vec![
            &self.at,
            &self.actor,
            &self.action,
            &self.target,
            &self.detail,
        ]
    }
}

pub(crate) fn audit_of(row: &Row) -> Result<AuditEntry, PersistError> {
    let what = "audit entry";
    Ok(AuditEntry {
        seq: u64_of(get(row, 0, what)?, "audit seq")?,
        at: u64_of(get(row, 1, what)?, "time")?,
        actor: get(row, 2, what)?,
        action: get(row, 3, what)?,
        target: get(row, 4, what)?,
        detail: get(row, 5, what)?,
    })
}
