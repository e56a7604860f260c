//! One lock's slice of the table, for stores that keep the table elsewhere.
//!
//! A store shared by many servers (PostgreSQL) cannot keep the whole table in one process.
//! It runs each transition on the part of the table one lock owns instead: it reads that part
//! under a row lock ([`Slice`]), builds a [`State`] from it with [`State::from_slice`], runs the
//! transition at the database's time, and writes back the difference between the slice it read
//! and [`State::to_slice`] (plus the history records in the drained [`Change`]s). The rules of
//! the lock service stay here, in one place, for every store.
//!
//! Unlike [`State::restore`], loading a slice is exact: deadlines are kept as they were (a
//! slice is not a recovery, it is the table as it stands), and nothing is settled on load.
//!
//! Fencing tokens cannot come from a counter inside one process when several servers grant:
//! the store draws them from a shared sequence before the transition and hands them in. A
//! transition grants at most `min(capacity, queue length + 1)` leases on its lock, which bounds
//! how many to draw. A grant that finds the pool empty marks the state
//! ([`State::tokens_exhausted`]) and the store must discard the transition.
//!
//! Per-key quotas are counted over what the slice holds: a slice knows one lock's leases,
//! tickets and jobs, not the key's on other locks, so a store that runs one slice at a time
//! enforces them per lock at most, never across the table.
//!
//! [`Change`]: super::Change

use std::collections::VecDeque;

use super::{
    Deadline, EndedTicket, LockEntry, LockRecord, RequestRecord, RequestTarget, State, Ticket,
    TicketEnd,
};
use crate::ids::{LeaseId, LockName, Millis, TicketId};
use crate::state::{Config, Job, Lease, LeaseEnd, OnceSlotKey};

/// A lock's metadata and when it last became idle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockSlice {
    /// The durable metadata.
    pub record: LockRecord,
    /// When the lock last became idle (no holders, no waiters): it is forgotten once idle for
    /// the configured retention.
    pub idle_since: Millis,
}

/// A lease that ended recently, so a late renewal hears "ended" rather than "unknown".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndedLease {
    /// The lease.
    pub id: LeaseId,
    /// How it ended.
    pub end: LeaseEnd,
    /// When.
    pub ended_at: Millis,
}

/// A ticket that left its queue recently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndedTicketEntry {
    /// The ticket.
    pub id: TicketId,
    /// How it ended.
    pub end: TicketEnd,
    /// For a granted ticket: whether a wait has returned its lease.
    pub collected: bool,
    /// When it ended.
    pub ended_at: Millis,
}

/// A remembered request id (G7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestEntry {
    /// The request id.
    pub request_id: String,
    /// The lock it was used for.
    pub lock: LockName,
    /// What it stands for now.
    pub target: RequestTarget,
    /// When it was remembered (or last kept).
    pub at: Millis,
}

/// The part of the table a transition on one lock may read or change. A store fills in what the
/// transition needs: the lock, its leases, tickets and unfinished jobs, and the ended leases,
/// ended tickets, request ids and finished jobs that the request names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slice {
    /// Locks (usually one).
    pub locks: Vec<LockSlice>,
    /// Their live leases.
    pub leases: Vec<Lease>,
    /// Their queued tickets, in any order (sequence numbers give the order).
    pub tickets: Vec<Ticket>,
    /// Recently ended leases the request may name.
    pub ended_leases: Vec<EndedLease>,
    /// Recently ended tickets the request may name.
    pub ended_tickets: Vec<EndedTicketEntry>,
    /// Remembered request ids the request may reuse.
    pub requests: Vec<RequestEntry>,
    /// Jobs of the locks that are not finished (and finished ones still holding a lease for
    /// their min-hold), plus any job the request names.
    pub jobs: Vec<Job>,
    /// The newest once-per slot taken by each (lock, job name, period) the request may use.
    pub once_slots: Vec<(OnceSlotKey, u64)>,
    /// Every token of a forgotten lock is at most this.
    pub forgotten_token_floor: u64,
}

impl State {
    /// Builds a table from one slice, exactly as it stands. `tokens` are the fencing tokens the
    /// transition may grant, in increasing order, each greater than every token in the slice;
    /// `next_ticket_seq` orders a ticket the transition may queue after every queued one.
    pub fn from_slice(
        config: Config,
        slice: Slice,
        tokens: Vec<u64>,
        next_ticket_seq: u64,
        now: Millis,
    ) -> State {
        let mut state = State::new(config, now);
        state.next_token = tokens.iter().copied().max().unwrap_or(0).saturating_add(1);
        state.token_pool = Some(tokens.into());
        state.forgotten_token_floor = slice.forgotten_token_floor;
        state.next_ticket_seq = next_ticket_seq.max(1);
        let mut idle_since = Vec::new();
        for lock in slice.locks {
            let record = lock.record;
            let mut entry = LockEntry::new(record.capacity.max(1), now);
            entry.newest_token = record.newest_token;
            entry.newest_granted = record.newest_granted;
            entry.delayed_until = record.delayed_until;
            entry.delayed_slots = record.delayed_slots.min(entry.capacity);
            entry.idle_since = lock.idle_since;
            entry.api_key = record.api_key;
            // It is a row of the store's.
            entry.stored = true;
            if let Some(until) = record.delayed_until {
                state.schedule(until, Deadline::LockCheck, Some(record.name.clone()));
            }
            idle_since.push(record.name.clone());
            state.insert_lock(record.name, entry);
        }
        let mut leases = slice.leases;
        leases.sort_by_key(|lease| lease.token);
        for lease in leases {
            let entry = state
                .locks
                .entry(lease.lock.clone())
                .or_insert_with(|| LockEntry::new(1, now));
            entry.holders.push(lease.id);
            entry.newest_granted = entry.newest_granted.max(lease.token);
            entry.newest_token = entry.newest_token.max(lease.token);
            state.schedule(lease.expires_at, Deadline::LeaseExpiry(lease.id), None);
            state.insert_lease(lease);
        }
        let mut tickets = slice.tickets;
        tickets.sort_by_key(|ticket| ticket.seq);
        for ticket in tickets {
            state.next_ticket_seq = state.next_ticket_seq.max(ticket.seq + 1);
            let entry = state
                .locks
                .entry(ticket.lock.clone())
                .or_insert_with(|| LockEntry::new(1, now));
            entry.queue.push_back(ticket.id);
            state.schedule(ticket.lapse_at, Deadline::TicketLapse(ticket.id), None);
            state.insert_ticket(ticket);
        }
        let mut ended_leases = slice.ended_leases;
        ended_leases.sort_by_key(|ended| ended.ended_at);
        for ended in ended_leases {
            if !state.leases.contains_key(&ended.id) {
                state.ended_leases.insert(ended.id, ended.end);
                state
                    .ended_leases_order
                    .push_back((ended.ended_at, ended.id));
            }
        }
        let mut ended_tickets = slice.ended_tickets;
        ended_tickets.sort_by_key(|ended| ended.ended_at);
        for ended in ended_tickets {
            if !state.tickets.contains_key(&ended.id) {
                state.ended_tickets.insert(
                    ended.id,
                    EndedTicket {
                        end: ended.end,
                        collected: ended.collected,
                    },
                );
                state
                    .ended_tickets_order
                    .push_back((ended.ended_at, ended.id));
            }
        }
        let mut requests = slice.requests;
        requests.sort_by_key(|request| request.at);
        for request in requests {
            state.requests.insert(
                request.request_id.clone(),
                RequestRecord {
                    lock: request.lock,
                    target: request.target,
                },
            );
            state
                .requests_order
                .push_back((request.at, request.request_id));
        }
        state.restore_jobs(slice.jobs, now);
        for (key, slot) in slice.once_slots {
            let taken = state.once_slots.entry(key).or_insert(slot);
            *taken = (*taken).max(slot);
        }
        for name in idle_since {
            if let Some(entry) = state.locks.get(&name)
                && entry.is_idle()
            {
                let at = (entry.idle_since + state.config.idle_lock_retention_ms)
                    .max(entry.delayed_until.unwrap_or(0));
                state.schedule(at, Deadline::LockCheck, Some(name));
            }
        }
        state
    }

    /// Everything the table holds, as a slice: what a store writes back (the difference from
    /// the slice it loaded). History records are not part of it; they are in the changes.
    pub fn to_slice(&self) -> Slice {
        let locks = self
            .locks
            .iter()
            .map(|(name, entry)| LockSlice {
                record: LockRecord {
                    name: name.clone(),
                    capacity: entry.capacity,
                    newest_token: entry.newest_token,
                    newest_granted: entry.newest_granted,
                    delayed_until: entry.delayed_until,
                    delayed_slots: entry.delayed_slots,
                    api_key: entry.api_key.clone(),
                },
                idle_since: entry.idle_since,
            })
            .collect();
        let ended_leases = self
            .ended_leases_order
            .iter()
            .filter_map(|(at, id)| {
                self.ended_leases.get(id).map(|end| EndedLease {
                    id: *id,
                    end: *end,
                    ended_at: *at,
                })
            })
            .collect();
        let ended_tickets = latest(&self.ended_tickets_order)
            .into_iter()
            .filter_map(|(at, id)| {
                self.ended_tickets.get(&id).map(|ended| EndedTicketEntry {
                    id,
                    end: ended.end,
                    collected: ended.collected,
                    ended_at: at,
                })
            })
            .collect();
        let requests = latest(&self.requests_order)
            .into_iter()
            .filter_map(|(at, request_id)| {
                self.requests.get(&request_id).map(|record| RequestEntry {
                    request_id,
                    lock: record.lock.clone(),
                    target: record.target,
                    at,
                })
            })
            .collect();
        Slice {
            locks,
            leases: self.leases.values().cloned().collect(),
            tickets: self.tickets.values().cloned().collect(),
            ended_leases,
            ended_tickets,
            requests,
            jobs: self.jobs.values().cloned().collect(),
            once_slots: self
                .once_slots
                .iter()
                .map(|(key, slot)| (key.clone(), *slot))
                .collect(),
            forgotten_token_floor: self.forgotten_token_floor,
        }
    }

    /// True when a grant found the token pool empty: the transition must be discarded.
    pub fn tokens_exhausted(&self) -> bool {
        self.token_pool_exhausted
    }
}

/// The newest entry of each key in an order queue (a key may have been pushed again).
fn latest<K: Clone + Eq + std::hash::Hash>(order: &VecDeque<(Millis, K)>) -> Vec<(Millis, K)> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (at, key) in order.iter().rev() {
        if seen.insert(key.clone()) {
            out.push((*at, key.clone()));
        }
    }
    out
}
