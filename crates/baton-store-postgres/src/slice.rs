//! Reading one lock's slice of the table under its row lock, and writing back what a transition
//! changed.
//!
//! Every row of a lock (its leases, tickets, ended tickets, request ids, jobs and history) is
//! written only by a transaction that holds the lock's row in `locks` with `FOR UPDATE`, so a
//! slice read under that row lock is the whole truth about the lock until the commit. Reads are
//! pipelined on the connection: one round trip for the row lock, one for the slice (two when the
//! request names earlier requests), one for the tokens when the transition may grant.

use std::collections::HashMap;

use baton_core::{
    Change, EndedLease, Job, JobId, LeaseEnd, LeaseId, LockName, Millis, OnceSlotKey,
    RequestTarget, Slice, Ticket, TicketId,
};
use baton_store::StoreError;
use deadpool_postgres::Transaction;
use futures_util::future::try_join_all;
use tokio_postgres::types::ToSql;

use crate::rows::{
    self, ENDED_TICKET_COLUMNS, HISTORY_COLUMNS, JOB_COLUMNS, LEASE_COLUMNS, LOCK_COLUMNS,
    REQUEST_COLUMNS, TICKET_COLUMNS, db, i64_of, ot, t,
};

/// What a transition needs beyond the lock's own rows.
#[derive(Debug, Default, Clone)]
pub(crate) struct Want {
    /// Create the lock's row if it is missing, with this capacity.
    pub create: Option<u32>,
    /// Ended leases the request names.
    pub ended_leases: Vec<LeaseId>,
    /// Ended tickets the request names.
    pub ended_tickets: Vec<TicketId>,
    /// Request ids the request reuses.
    pub requests: Vec<String>,
    /// Jobs the request names (on this lock).
    pub jobs: Vec<JobId>,
    /// The once-per slot of this job name and period (on this lock).
    pub once: Option<(String, u64)>,
    /// The transition may grant (draw tokens even when nothing is due).
    pub grants: bool,
    /// The transition may queue a ticket (draw a ticket sequence number).
    pub queues: bool,
}

/// What [`load`] read.
pub(crate) struct Loaded {
    /// The slice (without tokens).
    pub slice: Slice,
    /// The lock row existed (or was created) and is now locked by this transaction.
    pub locked: bool,
    /// The lock row was created by this transaction.
    pub created: bool,
    /// The database's time, read after the row lock.
    pub now: Option<Millis>,
    /// Tokens drawn (when the request may grant).
    pub tokens: Vec<u64>,
    /// A ticket sequence number (when the request may queue).
    pub ticket_seq: Option<u64>,
}

/// How to take the lock's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowLock {
    /// Wait for it.
    Wait,
    /// Give up when another transaction holds it.
    SkipLocked,
}

/// `$1` the lock, `$2` the capacity asked for, `$3` draw tokens, `$4` draw a ticket number. A
/// transition grants at most `min(capacity, queue + 1)` leases, so that many tokens are drawn.
const MISC_SQL: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint,
    (SELECT value FROM meta WHERE key = 'forgotten_token_floor'),
    CASE WHEN $3::boolean THEN ARRAY(SELECT nextval('token_seq') FROM generate_series(1::bigint,
        LEAST(GREATEST((SELECT capacity FROM locks WHERE name = $1)::bigint, $2::bigint),
              (SELECT count(*) FROM tickets WHERE lock = $1) + 1)))
         ELSE '{}'::bigint[] END,
    CASE WHEN $4::boolean THEN nextval('ticket_seq') END";

/// Locks the lock's row (creating it first with `insert_first`) and reads its slice, in one pipelined
/// round trip: PostgreSQL runs a connection's statements in order, so every read after the
/// `FOR UPDATE` sees the lock as it stands once the row lock is held. Statements are prepared
/// (or found in the connection's cache) before any is executed, so the executions go out in
/// this order.
pub(crate) async fn load(
    tx: &Transaction<'_>,
    lock: &LockName,
    want: &Want,
    row_lock: RowLock,
    database_time: bool,
    placeholder_idle_since: Millis,
    insert_first: bool,
) -> Result<Loaded, StoreError> {
    let name = lock.as_str();
    let lock_sql = match row_lock {
        RowLock::Wait => format!("SELECT {LOCK_COLUMNS} FROM locks WHERE name = $1 FOR UPDATE"),
        RowLock::SkipLocked => {
            format!("SELECT {LOCK_COLUMNS} FROM locks WHERE name = $1 FOR UPDATE SKIP LOCKED")
        }
    };
    let prepare = |sql: String| async move {
        tx.prepare_cached(&sql)
            .await
            .map_err(db("cannot prepare a read"))
    };
    let (insert, lock_statement, misc, leases, tickets, jobs, requests) = tokio::try_join!(
        prepare(
            "INSERT INTO locks (name, capacity, newest_token, newest_granted, delayed_until,
                                idle_since)
             VALUES ($1, $2, 0, 0, NULL, $3) ON CONFLICT (name) DO NOTHING"
                .into()
        ),
        prepare(lock_sql),
        // The clock, the token floor, the tokens and the ticket number in one statement.
        prepare(MISC_SQL.into()),
        prepare(format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE lock = $1"
        )),
        prepare(format!(
            "SELECT {TICKET_COLUMNS} FROM tickets WHERE lock = $1"
        )),
        prepare(format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE lock = $1 AND (state IN ('queued', 'waiting', 'running')
                    OR (release_at IS NOT NULL
                        AND lease_id IN (SELECT id FROM leases WHERE lock = $1))
                    OR id = ANY($2))"
        )),
        // The request ids of queued tickets come too: a grant makes them stand for the lease,
        // and a withdrawn ticket forgets its request id.
        prepare(format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE request_id = ANY($1)
             OR request_id IN (SELECT request_id FROM tickets
                               WHERE lock = $2 AND request_id IS NOT NULL)"
        )),
    )?;
    let capacity = i32::try_from(want.create.unwrap_or(1)).unwrap_or(i32::MAX);
    let idle_since = t(placeholder_idle_since);
    let job_ids: Vec<Vec<u8>> = want.jobs.iter().map(|id| id.0.to_vec()).collect();
    let capacity_hint = i64::from(want.create.unwrap_or(1));
    let (created, row, misc, leases, tickets, jobs, requests, once) = tokio::try_join!(
        async {
            if want.create.is_none() || !insert_first {
                return Ok(false);
            }
            tx.execute(&insert, &[&name, &capacity, &idle_since])
                .await
                .map(|count| count == 1)
                .map_err(db("cannot create a lock"))
        },
        async {
            tx.query_opt(&lock_statement, &[&name])
                .await
                .map_err(db("cannot lock a lock"))
        },
        async {
            tx.query_one(&misc, &[&name, &capacity_hint, &want.grants, &want.queues])
                .await
                .map_err(db("cannot read the clock and draw numbers"))
        },
        async {
            tx.query(&leases, &[&name])
                .await
                .map_err(db("cannot read leases"))
        },
        async {
            tx.query(&tickets, &[&name])
                .await
                .map_err(db("cannot read tickets"))
        },
        async {
            tx.query(&jobs, &[&name, &job_ids])
                .await
                .map_err(db("cannot read jobs"))
        },
        async {
            tx.query(&requests, &[&want.requests, &name])
                .await
                .map_err(db("cannot read request ids"))
        },
        once_slot(tx, lock, want.once.as_ref()),
    )?;
    let leases = leases
        .iter()
        .map(rows::lease_of)
        .collect::<Result<Vec<_>, _>>()?;
    let tickets = tickets
        .iter()
        .map(rows::ticket_of)
        .collect::<Result<Vec<_>, _>>()?;
    let requests = requests
        .iter()
        .map(rows::request_of)
        .collect::<Result<Vec<_>, _>>()?;
    // A reused request id that stands for an ended lease or ticket: say how it ended.
    // Ended leases and tickets the request names (directly, or through a reused request id)
    // are looked up only when they are not live: one more round trip, seldom taken.
    let mut more_leases: Vec<Vec<u8>> = want
        .ended_leases
        .iter()
        .copied()
        .chain(requests.iter().filter_map(|request| match request.target {
            RequestTarget::Lease(id) => Some(id),
            RequestTarget::Ticket(_) => None,
        }))
        .filter(|id| !leases.iter().any(|lease| lease.id == *id))
        .map(|id| id.0.to_vec())
        .collect();
    more_leases.dedup();
    let mut more_tickets: Vec<Vec<u8>> = want
        .ended_tickets
        .iter()
        .copied()
        .chain(requests.iter().filter_map(|request| match request.target {
            RequestTarget::Ticket(id) => Some(id),
            RequestTarget::Lease(_) => None,
        }))
        .filter(|id| !tickets.iter().any(|ticket| ticket.id == *id))
        .map(|id| id.0.to_vec())
        .collect();
    more_tickets.dedup();
    let mut ended_leases = Vec::new();
    let mut ended_tickets = Vec::new();
    if !more_leases.is_empty() || !more_tickets.is_empty() {
        let (more_leases, more_tickets) = tokio::try_join!(
            self::ended_leases(tx, &more_leases),
            self::ended_tickets(tx, &more_tickets)
        )?;
        ended_leases.extend(more_leases);
        ended_tickets.extend(more_tickets);
    }
    let now = if database_time {
        Some(rows::u64_of(misc.get(0), "clock")?)
    } else {
        None
    };
    let floor: Option<i64> = misc.get(1);
    let floor = rows::u64_of(floor.unwrap_or(0), "token floor")?;
    let tokens: Vec<i64> = misc.get(2);
    let mut drawn = tokens
        .into_iter()
        .map(|token| rows::u64_of(token, "token"))
        .collect::<Result<Vec<_>, _>>()?;
    drawn.sort_unstable();
    let seq: Option<i64> = misc.get(3);
    let ticket_seq = seq
        .map(|seq| rows::u64_of(seq, "ticket number"))
        .transpose()?;
    let locks = match &row {
        Some(row) => vec![rows::lock_of(row)?],
        None => Vec::new(),
    };
    Ok(Loaded {
        slice: Slice {
            locks,
            leases,
            tickets,
            ended_leases,
            ended_tickets,
            requests,
            jobs: jobs
                .iter()
                .map(rows::job_of)
                .collect::<Result<Vec<_>, _>>()?,
            once_slots: once,
            forgotten_token_floor: floor,
        },
        locked: row.is_some(),
        created,
        now,
        tokens: drawn,
        ticket_seq,
    })
}

/// Draws tokens for a transition that turned out to have deadlines due.
pub(crate) async fn draw_tokens(tx: &Transaction<'_>, count: i64) -> Result<Vec<u64>, StoreError> {
    let statement = tx
        .prepare_cached("SELECT nextval('token_seq') FROM generate_series(1::bigint, $1::bigint)")
        .await
        .map_err(db("cannot draw tokens"))?;
    let mut tokens = Vec::new();
    for row in tx
        .query(&statement, &[&count])
        .await
        .map_err(db("cannot draw tokens"))?
    {
        tokens.push(rows::u64_of(row.get(0), "token")?);
    }
    tokens.sort_unstable();
    Ok(tokens)
}

async fn ended_tickets(
    tx: &Transaction<'_>,
    ids: &[Vec<u8>],
) -> Result<Vec<baton_core::EndedTicketEntry>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let statement = tx
        .prepare_cached(&format!(
            "SELECT {ENDED_TICKET_COLUMNS} FROM ended_tickets WHERE id = ANY($1)"
        ))
        .await
        .map_err(db("cannot read ended tickets"))?;
    tx.query(&statement, &[&ids])
        .await
        .map_err(db("cannot read ended tickets"))?
        .iter()
        .map(rows::ended_ticket_of)
        .collect()
}

async fn once_slot(
    tx: &Transaction<'_>,
    lock: &LockName,
    once: Option<&(String, u64)>,
) -> Result<Vec<(OnceSlotKey, u64)>, StoreError> {
    let Some((job_name, period_ms)) = once else {
        return Ok(Vec::new());
    };
    let statement = tx
        .prepare_cached(
            "SELECT max(once_slot) FROM jobs WHERE lock = $1 AND name = $2 AND once_per_ms = $3",
        )
        .await
        .map_err(db("cannot read once-per slots"))?;
    let period = i64_of(*period_ms);
    let slot: Option<i64> = tx
        .query_one(&statement, &[&lock.as_str(), job_name, &period])
        .await
        .map_err(db("cannot read once-per slots"))?
        .get(0);
    Ok(match slot {
        Some(slot) => vec![(
            OnceSlotKey {
                lock: lock.clone(),
                name: job_name.clone(),
                period_ms: *period_ms,
            },
            rows::u64_of(slot, "slot")?,
        )],
        None => Vec::new(),
    })
}

async fn ended_leases(
    tx: &Transaction<'_>,
    ids: &[Vec<u8>],
) -> Result<Vec<EndedLease>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let statement = tx
        .prepare_cached(&format!(
            "SELECT {HISTORY_COLUMNS} FROM history WHERE lease_id = ANY($1)"
        ))
        .await
        .map_err(db("cannot read ended leases"))?;
    tx.query(&statement, &[&ids])
        .await
        .map_err(db("cannot read ended leases"))?
        .iter()
        .map(|row| {
            rows::history_of(row).map(|record| EndedLease {
                id: record.lease_id,
                end: record.end,
                ended_at: record.ended_at,
            })
        })
        .collect()
}

/// Writes what changed between the slice read and the slice after the transition, and the
/// history records the transition appended.
pub(crate) async fn write(
    tx: &Transaction<'_>,
    lock: &LockName,
    before: &Slice,
    after: &Slice,
    changes: &[Change],
) -> Result<Durability, StoreError> {
    let mut statements: Vec<(&'static str, Vec<Box<dyn ToSql + Sync + Send>>)> = Vec::new();
    // Writes that only move a queued ticket's lapse or note that a wait collected its grant.
    let mut bookkeeping = 0;
    let locks_before: HashMap<&str, _> = before
        .locks
        .iter()
        .map(|lock| (lock.record.name.as_str(), lock))
        .collect();
    for lock in &after.locks {
        if locks_before.get(lock.record.name.as_str()) == Some(&lock) {
            continue;
        }
        let record = &lock.record;
        statements.push((
            "INSERT INTO locks (name, capacity, newest_token, newest_granted, delayed_until,
                                idle_since, delayed_slots)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (name) DO UPDATE SET capacity = EXCLUDED.capacity,
                newest_token = EXCLUDED.newest_token, newest_granted = EXCLUDED.newest_granted,
                delayed_until = EXCLUDED.delayed_until, idle_since = EXCLUDED.idle_since,
                delayed_slots = EXCLUDED.delayed_slots",
            vec![
                Box::new(record.name.as_str().to_owned()),
                Box::new(i32::try_from(record.capacity).unwrap_or(i32::MAX)),
                Box::new(i64_of(record.newest_token)),
                Box::new(i64_of(record.newest_granted)),
                Box::new(ot(record.delayed_until)),
                Box::new(t(lock.idle_since)),
                Box::new(i32::try_from(record.delayed_slots).unwrap_or(i32::MAX)),
            ],
        ));
    }
    for lock in &before.locks {
        if !after
            .locks
            .iter()
            .any(|kept| kept.record.name == lock.record.name)
        {
            statements.push((
                "DELETE FROM locks WHERE name = $1",
                vec![Box::new(lock.record.name.as_str().to_owned())],
            ));
        }
    }
    if after.forgotten_token_floor > before.forgotten_token_floor {
        statements.push((
            "UPDATE meta SET value = greatest(value, $1) WHERE key = 'forgotten_token_floor'",
            vec![Box::new(i64_of(after.forgotten_token_floor))],
        ));
    }

    let leases_before: HashMap<LeaseId, _> = before.leases.iter().map(|l| (l.id, l)).collect();
    for lease in &after.leases {
        if leases_before.get(&lease.id) == Some(&lease) {
            continue;
        }
        statements.push((
            "INSERT INTO leases (id, lock, owner, owner_key, token, ttl_ms, granted_at,
                                 expires_at, request_id, ticket)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (id) DO UPDATE SET ttl_ms = EXCLUDED.ttl_ms,
                expires_at = EXCLUDED.expires_at",
            vec![
                Box::new(lease.id.0.to_vec()),
                Box::new(lease.lock.as_str().to_owned()),
                Box::new(lease.owner.clone()),
                Box::new(lease.owner_key.clone()),
                Box::new(i64_of(lease.token)),
                Box::new(i64_of(lease.ttl_ms)),
                Box::new(t(lease.granted_at)),
                Box::new(t(lease.expires_at)),
                Box::new(lease.request_id.clone()),
                Box::new(lease.ticket.map(|id| id.0.to_vec())),
            ],
        ));
    }
    let gone: Vec<Vec<u8>> = before
        .leases
        .iter()
        .filter(|lease| !after.leases.iter().any(|kept| kept.id == lease.id))
        .map(|lease| lease.id.0.to_vec())
        .collect();
    if !gone.is_empty() {
        statements.push((
            "DELETE FROM leases WHERE id = ANY($1)",
            vec![Box::new(gone)],
        ));
    }

    let tickets_before: HashMap<TicketId, _> = before.tickets.iter().map(|t| (t.id, t)).collect();
    for ticket in &after.tickets {
        match tickets_before.get(&ticket.id) {
            Some(old) if *old == ticket => continue,
            Some(old)
                if Ticket {
                    lapse_at: ticket.lapse_at,
                    waiter_gone: ticket.waiter_gone,
                    ..(*old).clone()
                } == *ticket =>
            {
                bookkeeping += 1;
            }
            _ => {}
        }
        statements.push((
            "INSERT INTO tickets (id, lock, owner, owner_key, ttl_ms, request_id, lease_id,
                                  queued_at, lapse_at, seq, waiter_gone, api_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (id) DO UPDATE SET lapse_at = EXCLUDED.lapse_at,
                waiter_gone = EXCLUDED.waiter_gone",
            vec![
                Box::new(ticket.id.0.to_vec()),
                Box::new(ticket.lock.as_str().to_owned()),
                Box::new(ticket.owner.clone()),
                Box::new(ticket.owner_key.clone()),
                Box::new(i64_of(ticket.ttl_ms)),
                Box::new(ticket.request_id.clone()),
                Box::new(ticket.lease_id.0.to_vec()),
                Box::new(t(ticket.queued_at)),
                Box::new(t(ticket.lapse_at)),
                Box::new(i64_of(ticket.seq)),
                Box::new(ticket.waiter_gone),
                Box::new(ticket.api_key.clone()),
            ],
        ));
    }
    let gone: Vec<Vec<u8>> = before
        .tickets
        .iter()
        .filter(|ticket| !after.tickets.iter().any(|kept| kept.id == ticket.id))
        .map(|ticket| ticket.id.0.to_vec())
        .collect();
    if !gone.is_empty() {
        statements.push((
            "DELETE FROM tickets WHERE id = ANY($1)",
            vec![Box::new(gone)],
        ));
    }

    for ended in &after.ended_tickets {
        if before.ended_tickets.iter().any(|old| old == ended) {
            continue;
        }
        if before.ended_tickets.iter().any(|old| {
            old.id == ended.id && old.end == ended.end && !old.collected && ended.collected
        }) {
            bookkeeping += 1;
        }
        let (kind, lease) = rows::ticket_end_text(ended.end);
        statements.push((
            "INSERT INTO ended_tickets (id, lock, end_kind, lease_id, collected, ended_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET end_kind = EXCLUDED.end_kind,
                lease_id = EXCLUDED.lease_id, collected = EXCLUDED.collected",
            vec![
                Box::new(ended.id.0.to_vec()),
                Box::new(lock.as_str().to_owned()),
                Box::new(kind),
                Box::new(lease.map(|bytes| bytes.to_vec())),
                Box::new(ended.collected),
                Box::new(t(ended.ended_at)),
            ],
        ));
    }

    for request in &after.requests {
        if before.requests.iter().any(|old| old == request) {
            continue;
        }
        let (kind, target) = rows::request_target(request.target);
        statements.push((
            "INSERT INTO requests (request_id, lock, kind, target, at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (request_id) DO UPDATE SET lock = EXCLUDED.lock,
                kind = EXCLUDED.kind, target = EXCLUDED.target, at = EXCLUDED.at",
            vec![
                Box::new(request.request_id.clone()),
                Box::new(request.lock.as_str().to_owned()),
                Box::new(kind),
                Box::new(target.to_vec()),
                Box::new(t(request.at)),
            ],
        ));
    }
    let gone: Vec<String> = before
        .requests
        .iter()
        .filter(|old| {
            !after
                .requests
                .iter()
                .any(|kept| kept.request_id == old.request_id)
        })
        .map(|old| old.request_id.clone())
        .collect();
    if !gone.is_empty() {
        statements.push((
            "DELETE FROM requests WHERE request_id = ANY($1)",
            vec![Box::new(gone)],
        ));
    }

    let jobs_before: HashMap<JobId, &Job> = before.jobs.iter().map(|job| (job.id, job)).collect();
    for job in &after.jobs {
        if jobs_before.get(&job.id) == Some(&job) {
            continue;
        }
        statements.push(put_job(job));
    }
    let gone: Vec<Vec<u8>> = before
        .jobs
        .iter()
        .filter(|job| !after.jobs.iter().any(|kept| kept.id == job.id))
        .map(|job| job.id.0.to_vec())
        .collect();
    if !gone.is_empty() {
        statements.push(("DELETE FROM jobs WHERE id = ANY($1)", vec![Box::new(gone)]));
    }

    for change in changes {
        if let Change::HistoryAppend(record) = change {
            statements.push((
                "INSERT INTO history (lease_id, request_id, lock, owner, token, granted_at,
                                      ended_at, end_kind)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                vec![
                    Box::new(record.lease_id.0.to_vec()),
                    Box::new(record.request_id.clone()),
                    Box::new(record.lock.as_str().to_owned()),
                    Box::new(record.owner.clone()),
                    Box::new(i64_of(record.token)),
                    Box::new(t(record.granted_at)),
                    Box::new(t(record.ended_at)),
                    Box::new(end_text(record.end)),
                ],
            ));
        }
    }
    let durability = if statements.len() == bookkeeping {
        Durability::Lazy
    } else {
        Durability::Required
    };
    execute_all(tx, statements).await?;
    Ok(durability)
}

/// Whether a transaction must wait for its commit to be flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// It grants, ends, renews or queues something: the commit is flushed (and replicated, as
    /// the database is configured) before anyone hears of it (G2).
    Required,
    /// It only moved a queued ticket's lapse or noted that a wait collected its grant. Losing
    /// that in a database crash can at worst let a ticket lapse early (its waiter queues again)
    /// or let a cancel release a lease its waiter already had (the waiter gave it up): neither
    /// admits two holders nor shortens a holder's deadline. Committed without waiting for the
    /// flush (`synchronous_commit = off`), which saves a flush on every handoff.
    Lazy,
}

fn end_text(end: LeaseEnd) -> &'static str {
    end.as_str()
}

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

fn put_job(job: &Job) -> (&'static str, Params) {
    // The command line is a JSON array of strings: any argument survives.
    let command = serde_json::to_string(&job.command).unwrap_or_else(|_| "[]".into());
    (
        "INSERT INTO jobs (id, name, lock, policy, owner, host, command, state, reason, token,
            lease_id, ticket_id, coalesced_into, stop, exit_code, batch, request_id, created_at,
            waiting_at, started_at, finished_at, min_hold_ms, release_at, once_slot, output_tail,
            once_per_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
            $19, $20, $21, $22, $23, $24, $25, $26)
         ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, reason = EXCLUDED.reason,
            token = EXCLUDED.token, lease_id = EXCLUDED.lease_id, ticket_id = EXCLUDED.ticket_id,
            coalesced_into = EXCLUDED.coalesced_into, stop = EXCLUDED.stop,
            exit_code = EXCLUDED.exit_code, waiting_at = EXCLUDED.waiting_at,
            started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
            release_at = EXCLUDED.release_at, once_slot = EXCLUDED.once_slot,
            once_per_ms = EXCLUDED.once_per_ms,
            output_tail = EXCLUDED.output_tail",
        vec![
            Box::new(job.id.0.to_vec()),
            Box::new(job.name.clone()),
            Box::new(job.lock.as_str().to_owned()),
            Box::new(job.policy.as_str()),
            Box::new(job.owner.clone()),
            Box::new(job.host.clone()),
            Box::new(command),
            Box::new(job.state.as_str()),
            Box::new(job.reason.clone()),
            Box::new(job.token.map(i64_of)),
            Box::new(job.lease.map(|id| id.0.to_vec())),
            Box::new(job.ticket.map(|id| id.0.to_vec())),
            Box::new(job.coalesced_into.map(|id| id.0.to_vec())),
            Box::new(job.stop.map(|_| "replaced")),
            Box::new(job.exit_code),
            Box::new(job.batch.clone()),
            Box::new(job.request_id.clone()),
            Box::new(t(job.created_at)),
            Box::new(ot(job.waiting_at)),
            Box::new(ot(job.started_at)),
            Box::new(ot(job.finished_at)),
            Box::new(job.min_hold_ms.map(i64_of)),
            Box::new(ot(job.release_at)),
            Box::new(job.once_slot.map(i64_of)),
            Box::new(job.output_tail.clone()),
            Box::new(job.once_per_ms.map(i64_of)),
        ],
    )
}

/// Runs statements pipelined on the transaction's connection (each prepared once per
/// connection and cached).
async fn execute_all(
    tx: &Transaction<'_>,
    statements: Vec<(&'static str, Params)>,
) -> Result<(), StoreError> {
    try_join_all(statements.iter().map(|(sql, params)| async move {
        let statement = tx
            .prepare_cached(sql)
            .await
            .map_err(db("cannot prepare a write"))?;
        let params: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|param| param.as_ref() as &(dyn ToSql + Sync))
            .collect();
        tx.execute(&statement, &params)
            .await
            .map_err(db("cannot write a change"))
    }))
    .await
    .map(|_| ())
}
