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
    Change, EndedLease, Job, JobId, LeaseEnd, LeaseId, LockName, Millis, RequestTarget, Slice,
    TicketId,
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
    /// The once-per slot of this job name.
    pub once_name: Option<String>,
    /// The transition may grant (draw tokens even when nothing is due).
    pub grants: bool,
    /// The transition may queue a ticket (draw a ticket sequence number).
    pub queues: bool,
}

/// Reads the slice of `lock`. The caller's transaction must have locked the lock row first (see
/// [`lock_row`]).
pub(crate) async fn read(
    tx: &Transaction<'_>,
    lock: &LockName,
    lock_row: Option<&tokio_postgres::Row>,
    want: &Want,
) -> Result<Slice, StoreError> {
    let name = lock.as_str();
    let leases = async {
        let statement = tx
            .prepare_cached(&format!(
                "SELECT {LEASE_COLUMNS} FROM leases WHERE lock = $1"
            ))
            .await
            .map_err(db("cannot read leases"))?;
        tx.query(&statement, &[&name])
            .await
            .map_err(db("cannot read leases"))?
            .iter()
            .map(rows::lease_of)
            .collect::<Result<Vec<_>, _>>()
    };
    let tickets = async {
        let statement = tx
            .prepare_cached(&format!(
                "SELECT {TICKET_COLUMNS} FROM tickets WHERE lock = $1"
            ))
            .await
            .map_err(db("cannot read tickets"))?;
        tx.query(&statement, &[&name])
            .await
            .map_err(db("cannot read tickets"))?
            .iter()
            .map(rows::ticket_of)
            .collect::<Result<Vec<_>, _>>()
    };
    let job_ids: Vec<Vec<u8>> = want.jobs.iter().map(|id| id.0.to_vec()).collect();
    let jobs = async {
        let statement = tx
            .prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs
                 WHERE lock = $1 AND (state IN ('queued', 'waiting', 'running')
                        OR (release_at IS NOT NULL
                            AND lease_id IN (SELECT id FROM leases WHERE lock = $1))
                        OR id = ANY($2))"
            ))
            .await
            .map_err(db("cannot read jobs"))?;
        tx.query(&statement, &[&name, &job_ids])
            .await
            .map_err(db("cannot read jobs"))?
            .iter()
            .map(rows::job_of)
            .collect::<Result<Vec<_>, _>>()
    };
    let ended_ids: Vec<Vec<u8>> = want.ended_leases.iter().map(|id| id.0.to_vec()).collect();
    let ended_leases = ended_leases(tx, &ended_ids);
    let ticket_ids: Vec<Vec<u8>> = want.ended_tickets.iter().map(|id| id.0.to_vec()).collect();
    let ended_tickets = async {
        if ticket_ids.is_empty() {
            return Ok(Vec::new());
        }
        let statement = tx
            .prepare_cached(&format!(
                "SELECT {ENDED_TICKET_COLUMNS} FROM ended_tickets WHERE id = ANY($1)"
            ))
            .await
            .map_err(db("cannot read ended tickets"))?;
        tx.query(&statement, &[&ticket_ids])
            .await
            .map_err(db("cannot read ended tickets"))?
            .iter()
            .map(rows::ended_ticket_of)
            .collect::<Result<Vec<_>, _>>()
    };
    // The request ids of queued tickets come too: a grant makes them stand for the lease, and a
    // withdrawn ticket forgets its request id.
    let requests = async {
        let statement = tx
            .prepare_cached(&format!(
                "SELECT {REQUEST_COLUMNS} FROM requests WHERE request_id = ANY($1)
                 OR request_id IN (SELECT request_id FROM tickets
                                   WHERE lock = $2 AND request_id IS NOT NULL)"
            ))
            .await
            .map_err(db("cannot read request ids"))?;
        tx.query(&statement, &[&want.requests, &name])
            .await
            .map_err(db("cannot read request ids"))?
            .iter()
            .map(rows::request_of)
            .collect::<Result<Vec<_>, _>>()
    };
    let once = async {
        let Some(job_name) = &want.once_name else {
            return Ok(Vec::new());
        };
        let statement = tx
            .prepare_cached("SELECT max(once_slot) FROM jobs WHERE name = $1")
            .await
            .map_err(db("cannot read once-per slots"))?;
        let slot: Option<i64> = tx
            .query_one(&statement, &[job_name])
            .await
            .map_err(db("cannot read once-per slots"))?
            .get(0);
        Ok(slot
            .map(|slot| vec![(job_name.clone(), rows::u64_of(slot, "slot").unwrap_or(0))])
            .unwrap_or_default())
    };
    let floor = async {
        if lock_row.is_some() {
            return Ok(0);
        }
        let statement = tx
            .prepare_cached("SELECT value FROM meta WHERE key = 'forgotten_token_floor'")
            .await
            .map_err(db("cannot read the token floor"))?;
        let value: Option<i64> = tx
            .query_opt(&statement, &[])
            .await
            .map_err(db("cannot read the token floor"))?
            .map(|row| row.get(0));
        rows::u64_of(value.unwrap_or(0), "token floor")
    };
    let (leases, tickets, jobs, mut ended_leases, ended_tickets, requests, once_slots, floor) = tokio::try_join!(
        leases,
        tickets,
        jobs,
        ended_leases,
        ended_tickets,
        requests,
        once,
        floor
    )?;
    // A reused request id that stands for an ended lease: say how it ended.
    let more: Vec<Vec<u8>> = requests
        .iter()
        .filter_map(|request| match request.target {
            RequestTarget::Lease(id) if !leases.iter().any(|lease| lease.id == id) => {
                Some(id.0.to_vec())
            }
            _ => None,
        })
        .collect();
    if !more.is_empty() {
        ended_leases.extend(self::ended_leases(tx, &more).await?);
    }
    let mut ended_tickets = ended_tickets;
    let more_tickets: Vec<Vec<u8>> = requests
        .iter()
        .filter_map(|request| match request.target {
            RequestTarget::Ticket(id) if !tickets.iter().any(|ticket| ticket.id == id) => {
                Some(id.0.to_vec())
            }
            _ => None,
        })
        .collect();
    if !more_tickets.is_empty() {
        let statement = tx
            .prepare_cached(&format!(
                "SELECT {ENDED_TICKET_COLUMNS} FROM ended_tickets WHERE id = ANY($1)"
            ))
            .await
            .map_err(db("cannot read ended tickets"))?;
        for row in tx
            .query(&statement, &[&more_tickets])
            .await
            .map_err(db("cannot read ended tickets"))?
        {
            ended_tickets.push(rows::ended_ticket_of(&row)?);
        }
    }
    let locks = match lock_row {
        Some(row) => vec![rows::lock_of(row)?],
        None => Vec::new(),
    };
    Ok(Slice {
        locks,
        leases,
        tickets,
        ended_leases,
        ended_tickets,
        requests,
        jobs,
        once_slots,
        forgotten_token_floor: floor,
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

/// Locks the lock's row (creating it first when asked). `None` when there is no such lock.
pub(crate) async fn lock_row(
    tx: &Transaction<'_>,
    lock: &LockName,
    create: Option<(u32, Millis)>,
) -> Result<(Option<tokio_postgres::Row>, bool), StoreError> {
    let name = lock.as_str();
    let mut created = false;
    if let Some((capacity, now)) = create {
        let statement = tx
            .prepare_cached(
                "INSERT INTO locks (name, capacity, newest_token, newest_granted, delayed_until,
                                    idle_since)
                 VALUES ($1, $2, 0, 0, NULL, $3) ON CONFLICT (name) DO NOTHING",
            )
            .await
            .map_err(db("cannot create a lock"))?;
        let capacity = i32::try_from(capacity).unwrap_or(i32::MAX);
        created = tx
            .execute(&statement, &[&name, &capacity, &t(now)])
            .await
            .map_err(db("cannot create a lock"))?
            == 1;
    }
    let statement = tx
        .prepare_cached(&format!(
            "SELECT {LOCK_COLUMNS} FROM locks WHERE name = $1 FOR UPDATE"
        ))
        .await
        .map_err(db("cannot lock a lock"))?;
    let row = tx
        .query_opt(&statement, &[&name])
        .await
        .map_err(db("cannot lock a lock"))?;
    Ok((row, created))
}

/// Writes what changed between the slice read and the slice after the transition, and the
/// history records the transition appended.
pub(crate) async fn write(
    tx: &Transaction<'_>,
    lock: &LockName,
    before: &Slice,
    after: &Slice,
    changes: &[Change],
) -> Result<(), StoreError> {
    let mut statements: Vec<(&'static str, Vec<Box<dyn ToSql + Sync + Send>>)> = Vec::new();
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
                                idle_since)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (name) DO UPDATE SET capacity = EXCLUDED.capacity,
                newest_token = EXCLUDED.newest_token, newest_granted = EXCLUDED.newest_granted,
                delayed_until = EXCLUDED.delayed_until, idle_since = EXCLUDED.idle_since",
            vec![
                Box::new(record.name.as_str().to_owned()),
                Box::new(i32::try_from(record.capacity).unwrap_or(i32::MAX)),
                Box::new(i64_of(record.newest_token)),
                Box::new(i64_of(record.newest_granted)),
                Box::new(ot(record.delayed_until)),
                Box::new(t(lock.idle_since)),
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
        if tickets_before.get(&ticket.id) == Some(&ticket) {
            continue;
        }
        statements.push((
            "INSERT INTO tickets (id, lock, owner, owner_key, ttl_ms, request_id, lease_id,
                                  queued_at, lapse_at, seq)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (id) DO UPDATE SET lapse_at = EXCLUDED.lapse_at",
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
    execute_all(tx, statements).await
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
            waiting_at, started_at, finished_at, min_hold_ms, release_at, once_slot, output_tail)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
            $19, $20, $21, $22, $23, $24, $25)
         ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, reason = EXCLUDED.reason,
            token = EXCLUDED.token, lease_id = EXCLUDED.lease_id, ticket_id = EXCLUDED.ticket_id,
            coalesced_into = EXCLUDED.coalesced_into, stop = EXCLUDED.stop,
            exit_code = EXCLUDED.exit_code, waiting_at = EXCLUDED.waiting_at,
            started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
            release_at = EXCLUDED.release_at, once_slot = EXCLUDED.once_slot,
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
