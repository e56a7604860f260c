//! Core and store types turned into wire (`baton_proto`) types for answers: leases, tickets,
//! holders, locks, history and timestamps. Jobs' conversions live with the jobs API
//! (`jobs.rs`). Nothing here decides anything; it only renames and formats.

use baton_core::{HistoryRecord, Lease, LeaseEnd, LockView, Millis, Mode, QueuedTicket};
use baton_proto as proto;
use jiff::Timestamp;

pub(crate) fn timestamp(ms: Millis) -> Timestamp {
    Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX)).unwrap_or(Timestamp::MAX)
}

/// A core mode on the wire.
pub(crate) fn mode_wire(mode: Mode) -> proto::LockMode {
    match mode {
        Mode::Exclusive => proto::LockMode::Exclusive,
        Mode::Shared => proto::LockMode::Shared,
    }
}

/// A wire mode in the core (absent: exclusive).
pub(crate) fn mode_core(mode: Option<proto::LockMode>) -> Mode {
    match mode {
        None | Some(proto::LockMode::Exclusive) => Mode::Exclusive,
        Some(proto::LockMode::Shared) => Mode::Shared,
    }
}

pub(crate) fn lease_wire(lease: Lease, now: Millis) -> proto::Lease {
    proto::Lease {
        id: lease.id.to_string(),
        lock: lease.lock.to_string(),
        owner: lease.owner,
        owner_key: lease.owner_key,
        token: lease.token,
        ttl_ms: lease.ttl_ms,
        granted_at: timestamp(lease.granted_at),
        expires_at: timestamp(lease.expires_at),
        expires_in_ms: lease.expires_at.saturating_sub(now),
        value: lease.value,
        mode: mode_wire(lease.mode),
    }
}

pub(crate) fn ticket_wire(queued: QueuedTicket, now: Millis) -> proto::Ticket {
    proto::Ticket {
        id: queued.ticket.id.to_string(),
        lock: queued.ticket.lock.to_string(),
        owner: queued.ticket.owner,
        position: queued.position,
        queued_at: timestamp(queued.ticket.queued_at),
        lapses_in_ms: queued.ticket.lapse_at.saturating_sub(now),
    }
}

pub(crate) fn holder_wire(lease: &Lease) -> proto::Holder {
    proto::Holder {
        owner: lease.owner.clone(),
        token: lease.token,
        since: timestamp(lease.granted_at),
        expires_at: timestamp(lease.expires_at),
        job: None,
        value: lease.value.clone(),
        mode: mode_wire(lease.mode),
    }
}

pub(crate) fn lock_wire(view: LockView) -> proto::LockInfo {
    proto::LockInfo {
        name: view.name.to_string(),
        capacity: view.capacity,
        holders: view
            .holders
            .iter()
            .zip(view.holder_jobs.iter().chain(std::iter::repeat(&None)))
            .map(|(lease, job)| proto::Holder {
                job: job.map(|job| job.to_string()),
                ..holder_wire(lease)
            })
            .collect(),
        waiters: view
            .waiters
            .iter()
            .zip(view.waiter_jobs.iter().chain(std::iter::repeat(&None)))
            .enumerate()
            .map(|(index, (ticket, job))| proto::Waiter {
                position: index as u64 + 1,
                owner: ticket.owner.clone(),
                since: timestamp(ticket.queued_at),
                job: job.map(|job| job.to_string()),
                mode: mode_wire(ticket.mode),
            })
            .collect(),
        delayed_until: view.delayed_until.map(timestamp),
        newest_token: view.newest_token,
    }
}

pub(crate) fn history_wire(record: HistoryRecord) -> proto::HistoryEntry {
    proto::HistoryEntry {
        owner: record.owner,
        token: record.token,
        granted_at: timestamp(record.granted_at),
        ended_at: timestamp(record.ended_at),
        held_ms: record.ended_at.saturating_sub(record.granted_at),
        end: match record.end {
            LeaseEnd::Released => proto::HoldEnd::Released,
            LeaseEnd::Expired => proto::HoldEnd::Expired,
            LeaseEnd::Revoked => proto::HoldEnd::Revoked,
        },
        value: record.value,
        mode: mode_wire(record.mode),
    }
}
