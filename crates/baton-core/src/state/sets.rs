//! Lock sets: one request takes several locks, all together or none, fairly and without
//! deadlock however sets overlap.
//!
//! A set request that cannot be granted at once queues one ticket per lock, all in the same
//! transition and with the same arrival number (`seq`, drawn once from the table's global
//! counter). Every queue is ordered by arrival. A set is granted only when its ticket heads
//! every one of its queues and each of its locks has room for it; then all its leases are
//! granted in one transition (one durable batch), each with its own fencing token.
//!
//! Why this cannot deadlock: arrival numbers are one global order, and every queue is sorted
//! by it, so any two requests stand in the same order on every lock they share. A request
//! waits only on requests ahead of it (smaller numbers) and on holders. So the wait-for graph
//! between queued requests has no cycle, and the oldest queued request heads all of its queues:
//! it waits only on holders, whose leases end (released, expired or revoked), and then it is
//! granted. Induction on the arrival order serves everyone.
//!
//! Why it is fair: each lock stays strictly FIFO (G4). A ticket queued behind a set's ticket
//! waits even when its own lock has room, because the set at the head waits for another lock;
//! it is never overtaken. So the liveness invariant (G5: room and a waiter imply a grant) reads,
//! precisely: when a lock has room for the ticket at its head, that ticket belongs to a set, and
//! some other ticket of that set does not head its queue or has no room there.
//!
//! A set that does not queue (a try) is granted only when every lock has room for it and an
//! empty queue (G4: it never jumps a non-empty queue); otherwise nothing is held, queued or
//! created. A set's tickets lapse, are cancelled and lose their waiter together: its waiter
//! waits on one ticket for all. Once granted, its leases are ordinary leases: each is renewed
//! and released on its own.
//!
//! Retries are idempotent (G7): the ticket or lease of each lock carries the request id
//! [`set_member_request_id`] derived from the set's, so a retry finds every member.

use std::collections::BTreeSet;

use crate::ids::{LeaseId, LockName, Millis, TicketId, validate_lease_value};
use crate::limits;

use super::{
    AcquireError, Change, Deadline, Event, KeyQuota, Lease, LockEntry, Mode, QueueExit,
    QueuedTicket, Quota, RequestTarget, State, Ticket, TicketEnd, TicketStatus,
};

/// A request for several locks at once, with the ids it will use if it needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireSet {
    /// The locks, distinct, 1 to [`limits::LOCK_SET_LOCKS_MAX`]; answers list leases and
    /// tickets in this order.
    pub locks: Vec<LockName>,
    /// The owner label of every lease (validated by the caller).
    pub owner: String,
    /// The time-to-live of every lease.
    pub ttl_ms: u64,
    /// Join the queues when the set cannot be granted at once (otherwise answer
    /// [`AcquiredSet::Busy`]).
    pub queue: bool,
    /// Makes retries idempotent; each member carries [`set_member_request_id`] of it.
    pub request_id: Option<String>,
    /// The API key the request came with; its quotas count each lease and ticket.
    pub api_key: Option<String>,
    /// That key's own quotas.
    pub quota: KeyQuota,
    /// One fresh lease id per lock, in lock order.
    pub lease_ids: Vec<LeaseId>,
    /// One fresh ticket id per lock, in lock order.
    pub ticket_ids: Vec<TicketId>,
    /// The value every lease carries.
    pub value: Option<String>,
    /// How every lease holds its lock.
    pub mode: Mode,
}

/// What a lock-set acquire did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquiredSet {
    /// Every lock was granted (or, for a retry, is already held): one lease per lock, in lock
    /// order.
    Granted(Vec<Lease>),
    /// The set waits: one ticket per lock, in lock order. A wait on any of them keeps all.
    Queued(Vec<QueuedTicket>),
    /// Some lock is busy and the request did not queue; nothing changed. The holders of the
    /// busy locks are given for the answer.
    Busy(Vec<Lease>),
}

/// The status of a set's tickets, collected together ([`State::wait_set`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetStatus {
    /// Granted: every lease, in lock order.
    Granted(Vec<Lease>),
    /// Still queued: every ticket, in lock order.
    Queued(Vec<QueuedTicket>),
}

/// The request id the member of lock `lock` of a set with request id `request_id` carries.
/// `#` is in neither a request id nor a lock name, so it names nothing else.
pub fn set_member_request_id(request_id: &str, lock: &LockName) -> String {
    format!("{request_id}#{lock}")
}

impl State {
    /// Acquires several locks together, queues for all of them, or reports them busy. See the
    /// module documentation for the rules.
    pub fn acquire_set(
        &mut self,
        command: AcquireSet,
        now: Millis,
    ) -> Result<AcquiredSet, AcquireError> {
        let now = self.observe(now);
        assert_eq!(
            command.locks.len(),
            command.lease_ids.len(),
            "one lease id per lock"
        );
        assert_eq!(
            command.locks.len(),
            command.ticket_ids.len(),
            "one ticket id per lock"
        );
        if !(limits::TTL_MS_MIN..=limits::TTL_MS_MAX).contains(&command.ttl_ms) {
            return Err(AcquireError::InvalidTtl);
        }
        if command.locks.is_empty() || command.locks.len() > limits::LOCK_SET_LOCKS_MAX {
            return Err(AcquireError::InvalidLockSet);
        }
        let distinct: BTreeSet<&LockName> = command.locks.iter().collect();
        if distinct.len() != command.locks.len() {
            return Err(AcquireError::InvalidLockSet);
        }
        if let Some(value) = &command.value {
            validate_lease_value(value)?;
        }
        if let Some(request_id) = &command.request_id
            && let Some(outcome) = self.retried_set(request_id, &command.locks, now)
        {
            return outcome;
        }
        if command.mode == Mode::Shared {
            for lock in &command.locks {
                let capacity = self.locks.get(lock).map_or(1, |entry| entry.capacity);
                if capacity > 1 {
                    return Err(AcquireError::ModeConflict { capacity });
                }
            }
        }
        let created = self.create_set_locks(&command, now)?;
        let count = command.locks.len();
        let free = command.locks.iter().all(|lock| {
            self.locks
                .get(lock)
                .is_some_and(|entry| entry.queue.is_empty() && entry.has_room(command.mode, now))
        });
        if free {
            let refused = self
                .check_quota_for(
                    command.api_key.as_deref(),
                    &command.quota,
                    Quota::Leases,
                    count,
                )
                .err()
                .or_else(|| {
                    (self.leases.len() + count > self.config.leases_total_max)
                        .then_some(AcquireError::LimitReached("too many leases"))
                });
            if let Some(error) = refused {
                self.drop_created(&created, now);
                return Err(error);
            }
            return Ok(AcquiredSet::Granted(self.grant_set_now(command, now)));
        }
        if !command.queue {
            self.drop_created(&created, now);
            let mut holders = Vec::new();
            for lock in &command.locks {
                if let Some(entry) = self.locks.get(lock)
                    && !(entry.queue.is_empty() && entry.has_room(command.mode, now))
                {
                    holders.extend(self.holders_of(lock));
                }
            }
            return Ok(AcquiredSet::Busy(holders));
        }
        if let Some(error) = self.queue_refusal(&command) {
            self.drop_created(&created, now);
            return Err(error);
        }
        Ok(AcquiredSet::Queued(self.queue_set(command, now)))
    }

    /// Why the set may not queue, if a bound stops it: a lock's queue is full, the key's
    /// waiter quota would be passed by the set's tickets, or the table's waiter bound.
    fn queue_refusal(&self, command: &AcquireSet) -> Option<AcquireError> {
        let count = command.locks.len();
        command
            .locks
            .iter()
            .any(|lock| {
                self.locks
                    .get(lock)
                    .is_some_and(|entry| entry.queue.len() >= self.config.waiters_per_lock_max)
            })
            .then_some(AcquireError::LimitReached("too many waiters on this lock"))
            .or_else(|| {
                self.check_quota_for(
                    command.api_key.as_deref(),
                    &command.quota,
                    Quota::Waiters,
                    count,
                )
                .err()
            })
            .or_else(|| {
                (self.tickets.len() + count > self.config.waiters_total_max)
                    .then_some(AcquireError::LimitReached("too many waiters"))
            })
    }

    /// The answer to a retry of the set request `request_id`, or `None` if it is new.
    fn retried_set(
        &mut self,
        request_id: &str,
        locks: &[LockName],
        now: Millis,
    ) -> Option<Result<AcquiredSet, AcquireError>> {
        if let Some(record) = self.requests.get(request_id) {
            // Used by a single-lock acquire.
            return Some(Err(AcquireError::RequestIdConflict {
                lock: record.lock.clone(),
            }));
        }
        let targets: Vec<Option<RequestTarget>> = locks
            .iter()
            .map(|lock| {
                self.requests
                    .get(&set_member_request_id(request_id, lock))
                    .map(|record| record.target)
            })
            .collect();
        let found = targets.iter().position(Option::is_some)?;
        if let Some(missing) = targets.iter().position(Option::is_none) {
            // Used for a set of other locks.
            let lock = if missing < found {
                &locks[found]
            } else {
                &locks[missing]
            };
            return Some(Err(AcquireError::RequestIdConflict { lock: lock.clone() }));
        }
        let mut leases = Vec::new();
        let mut queued = Vec::new();
        for target in targets.into_iter().flatten() {
            match target {
                RequestTarget::Lease(id) => match self.lease_outcome(id) {
                    Ok(lease) => leases.push(lease),
                    Err(error) => return Some(Err(error)),
                },
                RequestTarget::Ticket(id) => match self.ticket_status(id, None, now) {
                    Ok(TicketStatus::Granted(lease)) => leases.push(lease),
                    Ok(TicketStatus::Queued(ticket)) => queued.push(ticket),
                    Err(_) => {
                        let end = self
                            .ended_tickets
                            .get(&id)
                            .map_or(TicketEnd::Lapsed, |ended| ended.end);
                        return Some(Err(AcquireError::TicketEnded(end)));
                    }
                },
            }
        }
        Some(Ok(if queued.is_empty() {
            AcquiredSet::Granted(leases)
        } else {
            AcquiredSet::Queued(queued)
        }))
    }

    /// Creates the set's locks that do not exist yet (all or none); returns their names.
    fn create_set_locks(
        &mut self,
        command: &AcquireSet,
        now: Millis,
    ) -> Result<Vec<LockName>, AcquireError> {
        let missing: Vec<LockName> = command
            .locks
            .iter()
            .filter(|lock| !self.locks.contains_key(*lock))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(missing);
        }
        self.check_quota_for(
            command.api_key.as_deref(),
            &command.quota,
            Quota::Locks,
            missing.len(),
        )?;
        if self.locks.len() + missing.len() > self.config.locks_max {
            return Err(AcquireError::LimitReached("too many locks"));
        }
        for lock in &missing {
            let mut entry = LockEntry::new(1, now);
            entry.api_key = command.api_key.clone();
            self.insert_lock(lock.clone(), entry);
        }
        Ok(missing)
    }

    /// Undoes [`State::create_set_locks`] after a refusal: a refusal leaves nothing behind.
    fn drop_created(&mut self, created: &[LockName], now: Millis) {
        for lock in created {
            if self.dirty_locks.contains(lock) {
                self.settle(lock, now);
            } else {
                self.take_lock(lock);
            }
        }
    }

    fn grant_set_now(&mut self, command: AcquireSet, now: Millis) -> Vec<Lease> {
        let mut leases = Vec::with_capacity(command.locks.len());
        for (lock, lease_id) in command.locks.iter().zip(command.lease_ids) {
            let member_request = command
                .request_id
                .as_deref()
                .map(|request_id| set_member_request_id(request_id, lock));
            let lease = self.grant(
                lock,
                None,
                lease_id,
                command.owner.clone(),
                None,
                command.ttl_ms,
                member_request.clone(),
                command.api_key.clone(),
                command.value.clone(),
                command.mode,
                now,
            );
            if let Some(member_request) = member_request {
                self.remember_request(
                    member_request,
                    lock.clone(),
                    RequestTarget::Lease(lease.id),
                    now,
                );
            }
            leases.push(lease);
        }
        leases
    }

    fn queue_set(&mut self, command: AcquireSet, now: Millis) -> Vec<QueuedTicket> {
        // One arrival number for the whole set: this is what orders it the same way against
        // every other request on every lock they share.
        let seq = self.next_ticket_seq;
        self.next_ticket_seq += 1;
        let lapse_at = now + self.config.ticket_lapse_ms;
        let mut queued = Vec::with_capacity(command.locks.len());
        for ((lock, lease_id), ticket_id) in command
            .locks
            .iter()
            .zip(command.lease_ids)
            .zip(command.ticket_ids.iter().copied())
        {
            let member_request = command
                .request_id
                .as_deref()
                .map(|request_id| set_member_request_id(request_id, lock));
            let ticket = Ticket {
                id: ticket_id,
                lock: lock.clone(),
                owner: command.owner.clone(),
                owner_key: None,
                ttl_ms: command.ttl_ms,
                request_id: member_request.clone(),
                lease_id,
                queued_at: now,
                lapse_at,
                seq,
                waiter_gone: false,
                api_key: command.api_key.clone(),
                value: command.value.clone(),
                mode: command.mode,
            };
            self.schedule(lapse_at, Deadline::TicketLapse(ticket_id), None);
            if let Some(entry) = self.locks.get_mut(lock) {
                entry.queue.push_back(ticket_id);
            }
            self.changes.push(Change::TicketPut(ticket.clone()));
            self.insert_ticket(ticket.clone());
            if let Some(member_request) = member_request {
                self.remember_request(
                    member_request,
                    lock.clone(),
                    RequestTarget::Ticket(ticket_id),
                    now,
                );
            }
            let position = self.position(&ticket);
            let member = QueuedTicket { ticket, position };
            self.events.push(Event::Queued {
                queued: member.clone(),
                at: now,
            });
            queued.push(member);
        }
        if command.ticket_ids.len() > 1 {
            for id in &command.ticket_ids {
                self.set_siblings.insert(*id, command.ticket_ids.clone());
            }
        }
        queued
    }

    /// Waits on a set's tickets together: every lease once the set is granted (marking every
    /// grant collected), or every ticket's place. `id` is any ticket of the set.
    pub fn wait_set(
        &mut self,
        id: TicketId,
        keep_until: Option<Millis>,
        now: Millis,
    ) -> Result<SetStatus, super::TicketError> {
        let now = self.observe(now);
        let mut leases = Vec::new();
        let mut queued = Vec::new();
        for member in self.members(id) {
            match self.ticket_status(member, keep_until, now)? {
                TicketStatus::Granted(lease) => leases.push(lease),
                TicketStatus::Queued(ticket) => queued.push(ticket),
            }
        }
        Ok(if queued.is_empty() {
            SetStatus::Granted(leases)
        } else {
            SetStatus::Queued(queued)
        })
    }

    /// Every ticket of the set `id` belongs to, in lock order (just `id` for a lone ticket).
    pub fn members(&self, id: TicketId) -> Vec<TicketId> {
        self.set_siblings
            .get(&id)
            .cloned()
            .unwrap_or_else(|| vec![id])
    }

    /// Pushes a queued ticket's lapse back to at least `keep_until` (or one lapse from now),
    /// and marks its waiter present.
    pub(super) fn keep_ticket(&mut self, id: TicketId, keep_until: Option<Millis>, now: Millis) {
        let lapse_ms = self.config.ticket_lapse_ms;
        let Some(ticket) = self.tickets.get_mut(&id) else {
            return;
        };
        let old = ticket.lapse_at;
        let new = keep_until.unwrap_or(now + lapse_ms).max(old);
        ticket.lapse_at = new;
        // A wait came back for it: it is served again when its turn comes.
        ticket.waiter_gone = false;
        if new != old {
            self.unschedule(old, Deadline::TicketLapse(id));
            self.schedule(new, Deadline::TicketLapse(id), None);
        }
    }

    /// Takes a queued ticket out of its queue without a grant; returns its lock.
    fn drop_ticket(&mut self, id: TicketId, now: Millis) -> Option<LockName> {
        let ticket = self.take_ticket(id)?;
        self.unschedule(ticket.lapse_at, Deadline::TicketLapse(id));
        if let Some(entry) = self.locks.get_mut(&ticket.lock) {
            entry.queue.retain(|queued| *queued != id);
            if entry.is_idle() {
                entry.idle_since = now;
            }
        }
        self.changes.push(Change::TicketDelete(id));
        let lock = ticket.lock.clone();
        self.events.push(Event::LeftQueue {
            why: if ticket.waiter_gone {
                QueueExit::Departed
            } else {
                QueueExit::Lapsed
            },
            ticket,
            at: now,
        });
        self.end_ticket(id, TicketEnd::Lapsed, now);
        Some(lock)
    }

    /// Lapses a queued ticket and, for a set, every other queued ticket of its set; settles
    /// their locks.
    pub(super) fn lapse_tickets(&mut self, id: TicketId, now: Millis) {
        let mut locks = Vec::new();
        for member in self.members(id) {
            locks.extend(self.drop_ticket(member, now));
        }
        for lock in locks {
            self.settle(&lock, now);
        }
    }

    /// Serves the set whose ticket `head` heads a lock with room for it: grants every ticket
    /// of the set if each heads its queue with room, or lapses them all if its waiter has gone
    /// (or the set is no longer whole). Returns the set's locks when it changed them, `None`
    /// when the set must wait.
    pub(super) fn serve_set(&mut self, head: TicketId, now: Millis) -> Option<Vec<LockName>> {
        let members = self.set_siblings.get(&head)?.clone();
        let mut ready = true;
        let mut gone = false;
        let mut whole = true;
        for member in &members {
            let Some(ticket) = self.tickets.get(member) else {
                whole = false;
                continue;
            };
            let Some(entry) = self.locks.get(&ticket.lock) else {
                whole = false;
                continue;
            };
            if entry.queue.front() != Some(member) || !entry.has_room(ticket.mode, now) {
                ready = false;
            }
            gone |= ticket.waiter_gone;
        }
        if whole && !ready {
            return None;
        }
        if !whole || gone {
            // Nobody would collect this grant (or part of the set already ended): the whole
            // set leaves its queues, and its locks go to the next tickets.
            debug_assert!(whole, "a set's tickets ended apart");
            let mut locks = Vec::new();
            for member in &members {
                locks.extend(self.drop_ticket(*member, now));
            }
            return Some(locks);
        }
        let mut locks = Vec::with_capacity(members.len());
        for member in &members {
            let Some(ticket) = self.take_ticket(*member) else {
                continue;
            };
            if let Some(entry) = self.locks.get_mut(&ticket.lock) {
                entry.queue.pop_front();
            }
            self.unschedule(ticket.lapse_at, Deadline::TicketLapse(*member));
            self.changes.push(Change::TicketDelete(*member));
            self.end_ticket(*member, TicketEnd::Granted(ticket.lease_id), now);
            let lease = self.grant(
                &ticket.lock,
                Some(*member),
                ticket.lease_id,
                ticket.owner,
                None,
                ticket.ttl_ms,
                ticket.request_id.clone(),
                ticket.api_key,
                ticket.value,
                ticket.mode,
                now,
            );
            if let Some(request_id) = ticket.request_id
                && let Some(record) = self.requests.get_mut(&request_id)
            {
                record.target = RequestTarget::Lease(lease.id);
            }
            locks.push(ticket.lock);
        }
        Some(locks)
    }

    /// Rebuilds [`State::set_siblings`] from restored tickets: the tickets of a set share one
    /// arrival number, which no other request has. `tickets` is sorted by it. The request's
    /// lock order is not stored; the members are put in lock-name order, so a restored table
    /// is the same whatever order the store read them in (a retry still answers in the order
    /// of its own request: it looks each lock up).
    pub(super) fn regroup_sets(&mut self, tickets: &[Ticket]) {
        for group in tickets.chunk_by(|a, b| a.seq == b.seq) {
            if group.len() > 1 {
                let mut group: Vec<&Ticket> = group.iter().collect();
                group.sort_by(|a, b| a.lock.cmp(&b.lock));
                let members: Vec<TicketId> = group.iter().map(|ticket| ticket.id).collect();
                for id in &members {
                    self.set_siblings.insert(*id, members.clone());
                }
            }
        }
    }

    /// True when the ticket `head`, heading a lock with room for it, rightly waits: it
    /// belongs to a set with another ticket that does not head its queue or has no room there.
    /// This is G5 for sets (see the module documentation).
    pub(super) fn set_blocks(&self, head: TicketId) -> bool {
        let Some(members) = self.set_siblings.get(&head) else {
            return false;
        };
        members.iter().any(|member| {
            self.tickets.get(member).is_none_or(|ticket| {
                self.locks.get(&ticket.lock).is_none_or(|entry| {
                    entry.queue.front() != Some(member) || !entry.has_room(ticket.mode, self.now)
                })
            })
        })
    }

    /// Checks the sets' own invariants: a set's tickets are queued all together or not at
    /// all, share one arrival number and wait on distinct locks.
    pub(super) fn check_set_invariants(&self) {
        for (id, members) in &self.set_siblings {
            assert!(members.contains(id), "a set without its own ticket");
            let live: Vec<&Ticket> = members
                .iter()
                .filter_map(|member| self.tickets.get(member))
                .collect();
            if live.is_empty() {
                continue;
            }
            assert_eq!(
                live.len(),
                members.len(),
                "a lock set is queued in part: all together or none"
            );
            assert!(
                live.iter().all(|ticket| ticket.seq == live[0].seq),
                "a lock set's tickets have different arrival numbers"
            );
            let locks: BTreeSet<&LockName> = live.iter().map(|ticket| &ticket.lock).collect();
            assert_eq!(locks.len(), live.len(), "a lock set names a lock twice");
        }
        // No deadlock: the oldest queued request heads every one of its queues.
        if let Some(oldest) = self.tickets.values().min_by_key(|ticket| ticket.seq) {
            for member in self.members(oldest.id) {
                if let Some(ticket) = self.tickets.get(&member) {
                    assert_eq!(
                        self.locks[&ticket.lock].queue.front(),
                        Some(&member),
                        "the oldest queued request does not head its queue on {}",
                        ticket.lock
                    );
                }
            }
        }
    }
}
