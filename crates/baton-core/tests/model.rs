//! Property tests of the lock table ([`State`]) against a small reference model.
//!
//! Random interleavings of acquire (try and queue, with and without owner keys and request ids,
//! retries, values), waits, waiters that go away (with and without a grant they collected), cancels, renewals (with and without a new value), releases, revocations, fence checks, the passing of time
//! (by a random amount, or exactly to the next deadline, then a `tick`; sometimes with one
//! request arriving before the late tick) and restarts (from a "disk" fed only by the recorded
//! `Change`s) are applied to both the real table and the model, over 3 locks of capacity 1 to 3
//! and 6 clients. After every step the two must agree exactly (every lock, holder, waiter,
//! answer and history record), and the guarantees are also checked directly, without the
//! model:
//! - G1: no lock has more live leases than its capacity;
//! - G2: the `Change`s a step records, applied to an in-test "disk", describe the table exactly
//!   (durable before acknowledged), and a restart from that disk keeps every live lease with a
//!   deadline at least as late, every queued ticket in order, and the token counter;
//! - G3: every grant carries a token greater than every token granted before, across restarts
//!   and forgotten locks; a fence check accepts only a token granted on that lock and no older
//!   than the newest grant (unless it belongs to a live holder);
//! - G4: tickets are granted strictly in arrival order; no fresh lease is granted while the
//!   lock's queue is non-empty, except to its head;
//! - G5: after a tick no lease is past its expiry and no ticket past its lapse; a lock with room
//!   and waiters is always in a lock-delay; during the lock-delay that follows an unclean end,
//!   that holder's slot is not granted (a grant leaves the holders plus the slots still
//!   delayed within the capacity), while other free slots are; tickets whose status changed
//!   are woken;
//! - G7: a retried request id returns the same lease or ticket (or says it ended), never a
//!   second one; an acquire with the owner key of a holder returns that holder's lease.
//!
//! Lock sets have a property of their own at the end of this file: set requests over four
//! mutexes against a model of the one grant rule (the oldest request on each of its locks, all
//! of them free), with G1, FIFO, all-or-nothing and no deadlock checked after every step.
//!
//! A failing case is shrunk and printed by proptest, and its seed saved in
//! `tests/model.proptest-regressions` (commit it: it is replayed first on every run). The table
//! is deterministic, so a case replays exactly. `PROPTEST_CASES` raises the case count.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use baton_core::limits::{CAPACITY_MAX, LEASE_VALUE_BYTES_MAX, TTL_MS_MAX, TTL_MS_MIN};
use baton_core::{
    Acquire, AcquireError, Acquired, Cancelled, Change, Config, HistoryRecord, Lease, LeaseEnd,
    LeaseError, LeaseId, LockName, LockView, Mode, QueuedTicket, Released, State, Ticket,
    TicketEnd, TicketError, TicketId, TicketStatus, TokenError, ValueError, WaiterLeft,
};
use common::Disk;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;

const T0: u64 = 1_000_000;
const LAPSE_MS: u64 = 300;
const IDLE_MS: u64 = 1_000;
const NAMES: [&str; 3] = ["alpha", "team-b/beta", "g.amma@x"];

fn config(lock_delay_ms: u64) -> Config {
    Config {
        lock_delay_ms,
        ticket_lapse_ms: LAPSE_MS,
        // Long enough that nothing is pruned during a case: the model need not prune.
        history_retention_ms: 1_000_000_000,
        history_per_lock_max: 100_000,
        history_total_max: 100_000,
        ended_retention_ms: 1_000_000_000,
        ended_max: 100_000,
        // Short enough that idle locks are forgotten (and recreated) within a case.
        idle_lock_retention_ms: IDLE_MS,
        waiters_per_lock_max: 4,
        waiters_total_max: 10,
        leases_total_max: 100_000,
        locks_max: NAMES.len(),
        ..Config::default()
    }
}

/// Distinct, unordered ids, as a caller drawing random ones would give.
fn id_bytes(n: u64) -> [u8; 16] {
    fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&splitmix(n).to_be_bytes());
    bytes[8..].copy_from_slice(&n.to_be_bytes());
    bytes
}

// ---------------------------------------------------------------------------------------------
// The reference model: per lock, its capacity, holders in grant order and queue in arrival
// order; a global token counter; what ended how; and which request id stands for what.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Lease(LeaseId),
    Ticket(TicketId),
}

/// Events a tick runs, in the order the table runs those due at the same instant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Expiry(LeaseId),
    Lapse(TicketId),
    Check(LockName),
}

#[derive(Debug, Clone)]
struct ModelLock {
    capacity: u32,
    holders: Vec<Lease>,
    queue: VecDeque<Ticket>,
    delayed_until: Option<u64>,
    /// The slots `delayed_until` holds back: one per unclean end while it is in force.
    delayed_slots: u32,
    newest_token: u64,
    newest_granted: u64,
    idle_since: u64,
    /// When the table looks at this lock again (end of a lock-delay; idle long enough to forget).
    checks: BTreeSet<u64>,
}

impl ModelLock {
    fn new(capacity: u32, now: u64) -> ModelLock {
        ModelLock {
            capacity,
            holders: Vec::new(),
            queue: VecDeque::new(),
            delayed_until: None,
            delayed_slots: 0,
            newest_token: 0,
            newest_granted: 0,
            idle_since: now,
            checks: BTreeSet::new(),
        }
    }

    fn idle(&self) -> bool {
        self.holders.is_empty() && self.queue.is_empty()
    }

    fn delayed(&self, now: u64) -> bool {
        self.delayed_until.is_some_and(|until| until > now)
    }

    /// Exclusive: a slot not held (by anyone) nor delayed. Shared: a read-write lock
    /// (capacity 1) with no exclusive holder and no lock-delay in force.
    fn has_room(&self, mode: Mode, now: u64) -> bool {
        let held_back = if self.delayed(now) {
            self.delayed_slots as usize
        } else {
            0
        };
        match mode {
            Mode::Exclusive => self.holders.len() + held_back < self.capacity as usize,
            Mode::Shared => {
                self.capacity == 1
                    && held_back == 0
                    && self.holders.iter().all(|lease| lease.mode == Mode::Shared)
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Model {
    config: Config,
    locks: BTreeMap<LockName, ModelLock>,
    next_token: u64,
    floor: u64,
    next_seq: u64,
    ended_leases: HashMap<LeaseId, LeaseEnd>,
    /// How each ticket that left its queue ended, and whether a wait collected its lease.
    ended_tickets: HashMap<TicketId, (TicketEnd, bool)>,
    requests: HashMap<String, (LockName, Target)>,
    history: BTreeMap<LockName, Vec<HistoryRecord>>,
}

impl Model {
    fn new(config: Config) -> Model {
        Model {
            config,
            locks: BTreeMap::new(),
            next_token: 1,
            floor: 0,
            next_seq: 1,
            ended_leases: HashMap::new(),
            ended_tickets: HashMap::new(),
            requests: HashMap::new(),
            history: BTreeMap::new(),
        }
    }

    fn lease(&self, id: LeaseId) -> Option<&Lease> {
        self.locks
            .values()
            .flat_map(|lock| &lock.holders)
            .find(|lease| lease.id == id)
    }

    fn view(&self, name: &LockName) -> Option<LockView> {
        let lock = self.locks.get(name)?;
        Some(LockView {
            name: name.clone(),
            capacity: lock.capacity,
            holders: lock.holders.clone(),
            waiters: lock.queue.iter().cloned().collect(),
            delayed_until: lock.delayed_until,
            newest_token: lock.newest_token,
            // The model drives no jobs.
            holder_jobs: vec![None; lock.holders.len()],
            waiter_jobs: vec![None; lock.queue.len()],
        })
    }

    fn counts(&self) -> (usize, usize, usize) {
        let leases = self.locks.values().map(|l| l.holders.len()).sum();
        let tickets = self.locks.values().map(|l| l.queue.len()).sum();
        (self.locks.len(), leases, tickets)
    }

    fn acquire(&mut self, command: &Acquire, now: u64) -> Result<Acquired, AcquireError> {
        if !(TTL_MS_MIN..=TTL_MS_MAX).contains(&command.ttl_ms) {
            return Err(AcquireError::InvalidTtl);
        }
        if command
            .capacity
            .is_some_and(|c| !(1..=CAPACITY_MAX).contains(&c))
        {
            return Err(AcquireError::InvalidCapacity);
        }
        if command
            .value
            .as_ref()
            .is_some_and(|value| value.len() > LEASE_VALUE_BYTES_MAX)
        {
            return Err(AcquireError::InvalidValue(ValueError::TooLong {
                max: LEASE_VALUE_BYTES_MAX,
            }));
        }
        if let Some(request_id) = &command.request_id
            && let Some((lock, target)) = self.requests.get(request_id).cloned()
        {
            if lock != command.lock {
                return Err(AcquireError::RequestIdConflict { lock });
            }
            return match target {
                Target::Lease(id) => match self.lease(id) {
                    Some(lease) => Ok(Acquired::Granted(lease.clone())),
                    None => Err(AcquireError::LeaseEnded(
                        self.ended_leases
                            .get(&id)
                            .copied()
                            .unwrap_or(LeaseEnd::Expired),
                    )),
                },
                Target::Ticket(id) => match self.ticket_status(id, None, now) {
                    Ok(TicketStatus::Granted(lease)) => Ok(Acquired::Granted(lease)),
                    Ok(TicketStatus::Queued(queued)) => Ok(Acquired::Queued(queued)),
                    Err(_) => Err(AcquireError::TicketEnded(
                        self.ended_tickets
                            .get(&id)
                            .map_or(TicketEnd::Lapsed, |ended| ended.0),
                    )),
                },
            };
        }
        if command.mode == Mode::Shared {
            let capacity = command
                .capacity
                .or_else(|| self.locks.get(&command.lock).map(|lock| lock.capacity))
                .unwrap_or(1);
            if capacity > 1 {
                return Err(AcquireError::ModeConflict { capacity });
            }
        }
        if !self.locks.contains_key(&command.lock) && self.locks.len() >= self.config.locks_max {
            return Err(AcquireError::LimitReached("too many locks"));
        }
        let lock = self
            .locks
            .entry(command.lock.clone())
            .or_insert_with(|| ModelLock::new(command.capacity.unwrap_or(1), now));
        if let Some(capacity) = command.capacity
            && capacity != lock.capacity
        {
            if !lock.idle() {
                return Err(AcquireError::CapacityConflict {
                    current: lock.capacity,
                });
            }
            lock.capacity = capacity;
        }
        if let Some(key) = &command.owner_key {
            let held = lock
                .holders
                .iter()
                .find(|lease| lease.owner_key.as_ref() == Some(key))
                .cloned();
            if let Some(lease) = held {
                self.remember(command, Target::Lease(lease.id));
                return Ok(Acquired::Granted(lease));
            }
            let queued = lock
                .queue
                .iter()
                .enumerate()
                .find(|(_, ticket)| ticket.owner_key.as_ref() == Some(key))
                .map(|(index, ticket)| QueuedTicket {
                    ticket: ticket.clone(),
                    position: index as u64 + 1,
                });
            if let Some(queued) = queued {
                self.remember(command, Target::Ticket(queued.ticket.id));
                return Ok(Acquired::Queued(queued));
            }
        }
        if lock.has_room(command.mode, now) && lock.queue.is_empty() {
            let lease = self.grant(
                &command.lock,
                command.lease_id,
                command.owner.clone(),
                command.owner_key.clone(),
                command.ttl_ms,
                command.request_id.clone(),
                None,
                command.value.clone(),
                command.mode,
                now,
            );
            self.remember(command, Target::Lease(lease.id));
            return Ok(Acquired::Granted(lease));
        }
        if !command.queue {
            return Ok(Acquired::Busy(lock.holders.clone()));
        }
        if lock.queue.len() >= self.config.waiters_per_lock_max {
            return Err(AcquireError::LimitReached("too many waiters on this lock"));
        }
        if self.counts().2 >= self.config.waiters_total_max {
            return Err(AcquireError::LimitReached("too many waiters"));
        }
        let ticket = Ticket {
            mode: command.mode,
            api_key: None,
            id: command.ticket_id,
            lock: command.lock.clone(),
            owner: command.owner.clone(),
            owner_key: command.owner_key.clone(),
            ttl_ms: command.ttl_ms,
            request_id: command.request_id.clone(),
            lease_id: command.lease_id,
            queued_at: now,
            lapse_at: now + self.config.ticket_lapse_ms,
            seq: self.next_seq,
            waiter_gone: false,
            value: command.value.clone(),
        };
        self.next_seq += 1;
        let lock = self.locks.get_mut(&command.lock).unwrap();
        lock.queue.push_back(ticket.clone());
        let position = lock.queue.len() as u64;
        self.remember(command, Target::Ticket(ticket.id));
        Ok(Acquired::Queued(QueuedTicket { ticket, position }))
    }

    fn remember(&mut self, command: &Acquire, target: Target) {
        if let Some(request_id) = &command.request_id {
            self.requests
                .insert(request_id.clone(), (command.lock.clone(), target));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn grant(
        &mut self,
        name: &LockName,
        id: LeaseId,
        owner: String,
        owner_key: Option<String>,
        ttl_ms: u64,
        request_id: Option<String>,
        ticket: Option<TicketId>,
        value: Option<String>,
        mode: Mode,
        now: u64,
    ) -> Lease {
        let token = self.next_token;
        self.next_token += 1;
        let lease = Lease {
            mode,
            api_key: None,
            id,
            lock: name.clone(),
            owner,
            owner_key,
            token,
            ttl_ms,
            granted_at: now,
            expires_at: now + ttl_ms,
            request_id,
            ticket,
            value,
        };
        let lock = self.locks.get_mut(name).unwrap();
        assert!(lock.has_room(mode, now));
        lock.holders.push(lease.clone());
        lock.newest_granted = token;
        lock.newest_token = lock.newest_token.max(token);
        lease
    }

    /// Hands free room to the head of the queue unless the lock is delayed.
    fn settle(&mut self, name: &LockName, now: u64) {
        loop {
            let Some(lock) = self.locks.get_mut(name) else {
                return;
            };
            let Some(head) = lock.queue.front() else {
                break;
            };
            if !lock.has_room(head.mode, now) {
                break;
            }
            let Some(ticket) = lock.queue.pop_front() else {
                break;
            };
            if ticket.waiter_gone {
                // Its waiter went away: it lapses now, and the next ticket is served.
                if lock.idle() {
                    lock.idle_since = now;
                }
                self.ended_tickets
                    .insert(ticket.id, (TicketEnd::Lapsed, false));
                continue;
            }
            self.ended_tickets
                .insert(ticket.id, (TicketEnd::Granted(ticket.lease_id), false));
            let lease = self.grant(
                name,
                ticket.lease_id,
                ticket.owner,
                ticket.owner_key,
                ticket.ttl_ms,
                ticket.request_id.clone(),
                Some(ticket.id),
                ticket.value.clone(),
                ticket.mode,
                now,
            );
            if let Some(request_id) = ticket.request_id
                && let Some(record) = self.requests.get_mut(&request_id)
            {
                record.1 = Target::Lease(lease.id);
            }
        }
        let lock = self.locks.get_mut(name).unwrap();
        if lock.delayed_until.is_some_and(|until| until <= now) {
            lock.delayed_until = None;
            lock.delayed_slots = 0;
        }
        if lock.idle() {
            let at = lock.idle_since + IDLE_MS;
            lock.checks.insert(at.max(lock.delayed_until.unwrap_or(0)));
        }
    }

    fn end_lease(&mut self, id: LeaseId, end: LeaseEnd, now: u64) -> Option<Lease> {
        let delay = self.config.lock_delay_ms;
        let (name, lock) = self
            .locks
            .iter_mut()
            .find(|(_, lock)| lock.holders.iter().any(|lease| lease.id == id))?;
        let index = lock.holders.iter().position(|l| l.id == id).unwrap();
        let lease = lock.holders.remove(index);
        if end != LeaseEnd::Released && delay > 0 {
            let until = now + delay;
            lock.delayed_slots = if lock.delayed(now) {
                lock.delayed_slots.saturating_add(1)
            } else {
                1
            };
            lock.delayed_until = Some(lock.delayed_until.map_or(until, |u| u.max(until)));
            lock.checks.insert(until);
        }
        if lock.idle() {
            lock.idle_since = now;
        }
        self.ended_leases.insert(id, end);
        self.history
            .entry(name.clone())
            .or_default()
            .push(HistoryRecord {
                mode: lease.mode,
                lease_id: lease.id,
                request_id: lease.request_id.clone(),
                lock: name.clone(),
                owner: lease.owner.clone(),
                token: lease.token,
                granted_at: lease.granted_at,
                ended_at: now,
                end,
                value: lease.value.clone(),
            });
        Some(lease)
    }

    fn ticket_status(
        &mut self,
        id: TicketId,
        keep_until: Option<u64>,
        now: u64,
    ) -> Result<TicketStatus, TicketError> {
        let lapse = self.config.ticket_lapse_ms;
        for lock in self.locks.values_mut() {
            if let Some(index) = lock.queue.iter().position(|t| t.id == id) {
                let ticket = &mut lock.queue[index];
                ticket.lapse_at = keep_until.unwrap_or(now + lapse).max(ticket.lapse_at);
                ticket.waiter_gone = false;
                return Ok(TicketStatus::Queued(QueuedTicket {
                    ticket: ticket.clone(),
                    position: index as u64 + 1,
                }));
            }
        }
        match self.ended_tickets.get(&id).copied() {
            None => Err(TicketError::NotFound),
            Some((TicketEnd::Granted(lease_id), _)) => match self.lease(lease_id).cloned() {
                Some(lease) => {
                    self.ended_tickets
                        .insert(id, (TicketEnd::Granted(lease_id), true));
                    Ok(TicketStatus::Granted(lease))
                }
                None => Err(TicketError::Lapsed),
            },
            Some((TicketEnd::Lapsed, _)) => Err(TicketError::Lapsed),
            Some((TicketEnd::Cancelled, _)) => Err(TicketError::Cancelled),
        }
    }

    fn waiter_left(&mut self, id: TicketId, collected_here: bool, now: u64) -> WaiterLeft {
        let lapse = self.config.ticket_lapse_ms;
        for lock in self.locks.values_mut() {
            if let Some(ticket) = lock.queue.iter_mut().find(|t| t.id == id) {
                ticket.lapse_at = ticket.lapse_at.min(now + lapse);
                ticket.waiter_gone = true;
                return WaiterLeft::Lapsing(ticket.lapse_at);
            }
        }
        let Some((TicketEnd::Granted(lease_id), collected)) = self.ended_tickets.get(&id).copied()
        else {
            return WaiterLeft::Nothing;
        };
        if (collected && !collected_here) || self.lease(lease_id).is_none() {
            return WaiterLeft::Nothing;
        }
        let lease = self.end_lease(lease_id, LeaseEnd::Released, now).unwrap();
        self.settle(&lease.lock, now);
        self.ended_tickets
            .insert(id, (TicketEnd::Lapsed, collected));
        WaiterLeft::ReleasedUndelivered
    }

    fn cancel(&mut self, id: TicketId, forget: bool, now: u64) -> Result<Cancelled, TicketError> {
        let queued = self
            .locks
            .iter()
            .find(|(_, lock)| lock.queue.iter().any(|t| t.id == id))
            .map(|(name, _)| name.clone());
        if let Some(name) = queued {
            let lock = self.locks.get_mut(&name).unwrap();
            let index = lock.queue.iter().position(|t| t.id == id).unwrap();
            let ticket = lock.queue.remove(index).unwrap();
            if lock.idle() {
                lock.idle_since = now;
            }
            self.ended_tickets.insert(id, (TicketEnd::Cancelled, false));
            if forget && let Some(request_id) = &ticket.request_id {
                self.requests.remove(request_id);
            }
            self.settle(&name, now);
            return Ok(Cancelled::Cancelled);
        }
        match self.ended_tickets.get(&id).copied() {
            None => Err(TicketError::NotFound),
            Some((TicketEnd::Granted(lease_id), false)) if self.lease(lease_id).is_some() => {
                // The request id stays: a retry hears that the lease ended.
                let lease = self.end_lease(lease_id, LeaseEnd::Released, now).unwrap();
                self.settle(&lease.lock, now);
                self.ended_tickets.insert(id, (TicketEnd::Cancelled, false));
                Ok(Cancelled::ReleasedUncollected)
            }
            Some((end, _)) => Ok(Cancelled::NotCancelled(end)),
        }
    }

    fn renew(
        &mut self,
        id: LeaseId,
        ttl: Option<u64>,
        value: Option<String>,
        now: u64,
    ) -> Result<Lease, LeaseError> {
        if ttl.is_some_and(|ttl| !(TTL_MS_MIN..=TTL_MS_MAX).contains(&ttl)) {
            return Err(LeaseError::InvalidTtl);
        }
        if value
            .as_ref()
            .is_some_and(|value| value.len() > LEASE_VALUE_BYTES_MAX)
        {
            return Err(LeaseError::InvalidValue(ValueError::TooLong {
                max: LEASE_VALUE_BYTES_MAX,
            }));
        }
        self.expire_if_due(id, now);
        let lease = self
            .locks
            .values_mut()
            .flat_map(|lock| lock.holders.iter_mut())
            .find(|lease| lease.id == id);
        let Some(lease) = lease else {
            return Err(match self.ended_leases.get(&id) {
                Some(end) => LeaseError::Ended(*end),
                None => LeaseError::NotFound,
            });
        };
        lease.ttl_ms = ttl.unwrap_or(lease.ttl_ms);
        lease.expires_at = lease.expires_at.max(now + lease.ttl_ms);
        if value.is_some() {
            lease.value = value;
        }
        Ok(lease.clone())
    }

    /// A lease at or past its deadline is over even before the tick: renewals and releases
    /// that arrive then hear that it expired.
    fn expire_if_due(&mut self, id: LeaseId, now: u64) {
        let due = self
            .locks
            .values()
            .flat_map(|lock| lock.holders.iter())
            .any(|lease| lease.id == id && lease.expires_at <= now);
        if due {
            self.tick(now);
        }
    }

    fn release(&mut self, id: LeaseId, now: u64) -> Result<Released, LeaseError> {
        self.expire_if_due(id, now);
        match self.end_lease(id, LeaseEnd::Released, now) {
            Some(lease) => {
                self.settle(&lease.lock, now);
                Ok(Released::Released)
            }
            None => match self.ended_leases.get(&id) {
                Some(end) => Ok(Released::AlreadyEnded(*end)),
                None => Err(LeaseError::NotFound),
            },
        }
    }

    fn revoke(&mut self, name: &LockName, token: u64, now: u64) -> Result<Lease, TokenError> {
        let Some(lock) = self.locks.get(name) else {
            return Err(TokenError::LockNotFound);
        };
        let Some(id) = lock
            .holders
            .iter()
            .find(|lease| lease.token == token)
            .map(|l| l.id)
        else {
            return Err(TokenError::HolderNotFound);
        };
        let lease = self.end_lease(id, LeaseEnd::Revoked, now).unwrap();
        self.settle(name, now);
        Ok(lease)
    }

    fn fence(&mut self, name: &LockName, token: u64) -> Result<u64, TokenError> {
        let Some(lock) = self.locks.get_mut(name) else {
            return Err(if token > 0 && token <= self.floor {
                TokenError::Stale { newest: self.floor }
            } else {
                TokenError::Unknown
            });
        };
        if token == 0 || token > lock.newest_granted {
            return Err(TokenError::Unknown);
        }
        let live = lock.holders.iter().any(|lease| lease.token == token);
        if !live && token < lock.newest_token {
            return Err(TokenError::Stale {
                newest: lock.newest_token,
            });
        }
        lock.newest_token = lock.newest_token.max(token);
        Ok(lock.newest_token)
    }

    fn tick(&mut self, now: u64) {
        loop {
            let mut next: Option<(u64, Event)> = None;
            for (name, lock) in &self.locks {
                let candidates = lock
                    .holders
                    .iter()
                    .map(|l| (l.expires_at, Event::Expiry(l.id)))
                    .chain(lock.queue.iter().map(|t| (t.lapse_at, Event::Lapse(t.id))))
                    .chain(
                        lock.checks
                            .first()
                            .map(|at| (*at, Event::Check(name.clone()))),
                    );
                for candidate in candidates {
                    if next.as_ref().is_none_or(|best| candidate < *best) {
                        next = Some(candidate);
                    }
                }
            }
            let Some((at, event)) = next.filter(|(at, _)| *at <= now) else {
                return;
            };
            match event {
                Event::Expiry(id) => {
                    let lease = self.end_lease(id, LeaseEnd::Expired, now).unwrap();
                    self.settle(&lease.lock, now);
                }
                Event::Lapse(id) => {
                    let (name, lock) = self
                        .locks
                        .iter_mut()
                        .find(|(_, lock)| lock.queue.iter().any(|t| t.id == id))
                        .unwrap();
                    let name = name.clone();
                    lock.queue.retain(|t| t.id != id);
                    if lock.idle() {
                        lock.idle_since = now;
                    }
                    self.ended_tickets.insert(id, (TicketEnd::Lapsed, false));
                    self.settle(&name, now);
                }
                Event::Check(name) => {
                    let lock = self.locks.get_mut(&name).unwrap();
                    lock.checks.remove(&at);
                    if lock.idle() && !lock.delayed(now) && lock.idle_since + IDLE_MS <= now {
                        self.floor = self.floor.max(lock.newest_token);
                        self.locks.remove(&name);
                    } else {
                        self.settle(&name, now);
                    }
                }
            }
        }
    }

    /// What a restart keeps: live leases (renewed as of now), queued tickets (with a fresh
    /// lapse period), lock metadata, history and counters. Leases that ended within the
    /// retention are remembered from history, with their request ids; ended tickets are
    /// forgotten, and a ticket granted before the restart counts as collected.
    fn restart(&mut self, now: u64) {
        self.ended_leases.clear();
        self.ended_tickets.clear();
        self.requests.clear();
        // Leases that ended within the retention are known from history, with their request
        // ids; the live leases and tickets below take precedence.
        let horizon = now.saturating_sub(self.config.ended_retention_ms);
        for record in self.history.values().flatten() {
            if record.ended_at > horizon {
                self.ended_leases.insert(record.lease_id, record.end);
                if let Some(request_id) = &record.request_id {
                    self.requests.insert(
                        request_id.clone(),
                        (record.lock.clone(), Target::Lease(record.lease_id)),
                    );
                }
            }
        }
        let lapse = self.config.ticket_lapse_ms;
        let mut max_seq = 0;
        for (name, lock) in &mut self.locks {
            lock.idle_since = now;
            lock.checks.clear();
            // The end of a lock-delay in force is looked at again.
            if let Some(until) = lock.delayed_until {
                lock.checks.insert(until);
            }
            for lease in &mut lock.holders {
                lease.expires_at = lease.expires_at.max(now + lease.ttl_ms);
                if let Some(request_id) = &lease.request_id {
                    self.requests
                        .insert(request_id.clone(), (name.clone(), Target::Lease(lease.id)));
                }
                if let Some(ticket) = lease.ticket {
                    self.ended_tickets
                        .insert(ticket, (TicketEnd::Granted(lease.id), true));
                }
            }
            for ticket in &mut lock.queue {
                ticket.lapse_at = now + lapse;
                ticket.waiter_gone = false;
                max_seq = max_seq.max(ticket.seq);
                if let Some(request_id) = &ticket.request_id {
                    self.requests.insert(
                        request_id.clone(),
                        (name.clone(), Target::Ticket(ticket.id)),
                    );
                }
            }
        }
        self.next_seq = max_seq + 1;
        let names: Vec<LockName> = self.locks.keys().cloned().collect();
        for name in names {
            self.settle(&name, now);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Cap {
    /// Ask for the lock's usual capacity.
    Usual,
    /// Ask for none (keep the lock's).
    Keep,
    /// Ask for another one (possibly invalid).
    Other(u32),
}

/// The value an acquire or renewal carries.
#[derive(Debug, Clone, Copy)]
enum Value {
    /// None (a renewal keeps the lease's).
    Keep,
    /// A short one, numbered.
    Short(u8),
    /// One a byte over the bound: refused.
    TooLong,
}

impl Value {
    fn text(self) -> Option<String> {
        match self {
            Value::Keep => None,
            Value::Short(n) => Some(format!("10.0.0.{n}:7000")),
            Value::TooLong => Some("v".repeat(LEASE_VALUE_BYTES_MAX + 1)),
        }
    }
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => Just(Value::Keep),
        4 => (0u8..4).prop_map(Value::Short),
        1 => Just(Value::TooLong),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Acquire {
        lock: usize,
        client: usize,
        queue: bool,
        key: bool,
        request: bool,
        cap: Cap,
        ttl: u64,
        value: Value,
        shared: bool,
    },
    /// Resend an earlier acquire that had a request id (with fresh ids), possibly for the wrong
    /// lock.
    Retry {
        pick: Index,
        other_lock: bool,
    },
    Wait {
        pick: Pick,
        keep: Option<u64>,
    },
    Cancel {
        pick: Pick,
        forget: bool,
    },
    /// A waiter parked on the ticket went away (its connection closed), having collected a
    /// grant it never answered or not.
    Leave {
        pick: Pick,
        collected: bool,
    },
    Renew {
        pick: Pick,
        ttl: Option<u64>,
        value: Value,
    },
    Release {
        pick: Pick,
    },
    Revoke {
        lock: usize,
        pick: Index,
        holder: bool,
    },
    Fence {
        lock: usize,
        pick: Index,
    },
    Advance {
        ms: u64,
    },
    Restart {
        downtime: u64,
    },
    /// Time passes exactly to the table's next deadline, as a server's timer would.
    NextDeadline,
    /// Time passes but the next tick comes late: the operation runs first (a request that
    /// arrives just before the timer fires), then the tick.
    Late {
        ms: u64,
        op: Box<Op>,
    },
}

/// Which lease or ticket an operation names: mostly a live one, else any ever seen, or one
/// never issued.
#[derive(Debug, Clone)]
struct Pick {
    live: bool,
    index: Index,
}

fn pick() -> impl Strategy<Value = Pick> {
    (prop::bool::weighted(0.75), any::<Index>()).prop_map(|(live, index)| Pick { live, index })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        9 => basic_op(),
        1 => (0u64..2000, basic_op()).prop_map(|(ms, op)| Op::Late { ms, op: Box::new(op) }),
    ]
}

fn basic_op() -> impl Strategy<Value = Op> {
    let ttl = prop_oneof![19 => 500u64..=2000, 1 => Just(100u64)];
    let cap = prop_oneof![
        6 => Just(Cap::Usual),
        3 => Just(Cap::Keep),
        1 => (0u32..=3).prop_map(Cap::Other),
    ];
    prop_oneof![
        30 => (0..3usize, 0..6usize, any::<bool>(), any::<bool>(), prop::bool::weighted(0.6), cap, ttl, (value(), prop::bool::weighted(0.4)))
            .prop_map(|(lock, client, queue, key, request, cap, ttl, (value, shared))| Op::Acquire {
                lock, client, queue, key, request, cap, ttl, value, shared
            }),
        6 => (any::<Index>(), prop::bool::weighted(0.1))
            .prop_map(|(pick, other_lock)| Op::Retry { pick, other_lock }),
        14 => (pick(), prop::option::of(0u64..3000))
            .prop_map(|(pick, keep)| Op::Wait { pick, keep }),
        5 => (pick(), any::<bool>()).prop_map(|(pick, forget)| Op::Cancel { pick, forget }),
        4 => (pick(), prop::bool::weighted(0.3))
            .prop_map(|(pick, collected)| Op::Leave { pick, collected }),
        14 => (pick(), prop::option::weighted(0.3, prop_oneof![500u64..=2000, Just(100)]), value())
            .prop_map(|(pick, ttl, value)| Op::Renew { pick, ttl, value }),
        10 => pick().prop_map(|pick| Op::Release { pick }),
        4 => (0..3usize, any::<Index>(), prop::bool::weighted(0.8))
            .prop_map(|(lock, pick, holder)| Op::Revoke { lock, pick, holder }),
        5 => (0..3usize, any::<Index>()).prop_map(|(lock, pick)| Op::Fence { lock, pick }),
        12 => prop_oneof![2 => 0u64..300, 1 => 0u64..4000].prop_map(|ms| Op::Advance { ms }),
        6 => Just(Op::NextDeadline),
        3 => prop_oneof![Just(0u64), 0u64..1000].prop_map(|downtime| Op::Restart { downtime }),
    ]
}

// ---------------------------------------------------------------------------------------------
// The harness: runs each operation on the table and the model, then checks.
// ---------------------------------------------------------------------------------------------

struct Harness {
    config: Config,
    capacities: [u32; 3],
    names: Vec<LockName>,
    state: State,
    model: Model,
    disk: Disk,
    now: u64,
    step: usize,
    next_id: u64,
    /// Every lease id granted and every ticket id queued, for operations to pick from.
    lease_ids: Vec<LeaseId>,
    ticket_ids: Vec<TicketId>,
    /// The token of every lease ever granted, and the greatest.
    tokens: HashMap<LeaseId, u64>,
    max_token: u64,
    /// Tokens granted on each lock, in grant order.
    granted_on: HashMap<LockName, Vec<u64>>,
    /// Acquires that carried a request id, to retry.
    sent: Vec<Acquire>,
    /// What each remembered request id first answered.
    outcomes: HashMap<String, (LockName, Target)>,
    /// The lease each ticket becomes.
    ticket_lease: HashMap<TicketId, LeaseId>,
    /// Queues as the change stream tells them, in arrival order.
    arrivals: HashMap<LockName, VecDeque<TicketId>>,
    /// Whether each ticket was at the head of its queue when it left it.
    left_at_head: HashMap<TicketId, bool>,
    /// When the lock-delay of each unclean end on a lock ends: until then, that end's slot is
    /// not granted.
    delays: HashMap<LockName, Vec<u64>>,
}

/// What a step did that the guarantees talk about.
#[derive(Default)]
struct Effects {
    fresh: Vec<Lease>,
    left_queue: Vec<TicketId>,
}

impl Harness {
    fn new(lock_delay_ms: u64, capacities: [u32; 3]) -> Harness {
        let config = config(lock_delay_ms);
        Harness {
            state: State::new(config.clone(), T0),
            model: Model::new(config.clone()),
            config,
            capacities,
            names: NAMES.iter().map(|n| LockName::new(n).unwrap()).collect(),
            disk: Disk::default(),
            now: T0,
            step: 0,
            next_id: 1,
            lease_ids: Vec::new(),
            ticket_ids: Vec::new(),
            tokens: HashMap::new(),
            max_token: 0,
            granted_on: HashMap::new(),
            sent: Vec::new(),
            outcomes: HashMap::new(),
            ticket_lease: HashMap::new(),
            arrivals: HashMap::new(),
            left_at_head: HashMap::new(),
            delays: HashMap::new(),
        }
    }

    fn fresh_id(&mut self) -> [u8; 16] {
        self.next_id += 1;
        id_bytes(self.next_id)
    }

    fn pick_lease(&mut self, pick: &Pick) -> LeaseId {
        let live: Vec<LeaseId> = self
            .views()
            .values()
            .flat_map(|v| &v.holders)
            .map(|l| l.id)
            .collect();
        if pick.live && !live.is_empty() {
            return live[pick.index.index(live.len())];
        }
        let index = pick.index.index(self.lease_ids.len() + 1);
        match self.lease_ids.get(index) {
            Some(id) => *id,
            None => LeaseId(self.fresh_id()),
        }
    }

    fn pick_ticket(&mut self, pick: &Pick) -> TicketId {
        let live: Vec<TicketId> = self
            .views()
            .values()
            .flat_map(|v| &v.waiters)
            .map(|t| t.id)
            .collect();
        if pick.live && !live.is_empty() {
            return live[pick.index.index(live.len())];
        }
        let index = pick.index.index(self.ticket_ids.len() + 1);
        match self.ticket_ids.get(index) {
            Some(id) => *id,
            None => TicketId(self.fresh_id()),
        }
    }

    fn views(&self) -> BTreeMap<LockName, LockView> {
        self.state
            .locks(None, 100)
            .into_iter()
            .map(|view| (view.name.clone(), view))
            .collect()
    }

    fn run(&mut self, op: &Op) {
        self.step += 1;
        let before = self.views();
        self.apply(op, &before);
        self.check();
    }

    fn apply(&mut self, op: &Op, before: &BTreeMap<LockName, LockView>) -> Effects {
        let before = before.clone();
        match op {
            Op::NextDeadline => {
                let at = self.state.next_deadline().unwrap_or(self.now);
                let ms = at.saturating_sub(self.now);
                self.apply(&Op::Advance { ms }, &before)
            }
            Op::Late { ms, op } => {
                self.now += ms;
                let mut effects = self.apply(op, &before);
                let mid = self.views();
                let tick = self.apply(&Op::Advance { ms: 0 }, &mid);
                effects.fresh.extend(tick.fresh);
                effects.left_queue.extend(tick.left_queue);
                effects
            }
            Op::Acquire {
                lock,
                client,
                queue,
                key,
                request,
                cap,
                ttl,
                value,
                shared,
            } => {
                let name = self.names[*lock].clone();
                let command = Acquire {
                    mode: if *shared {
                        Mode::Shared
                    } else {
                        Mode::Exclusive
                    },
                    quota: Default::default(),
                    api_key: None,
                    lock: name,
                    owner: format!("host{client}"),
                    owner_key: key.then(|| format!("key{client}")),
                    ttl_ms: *ttl,
                    capacity: match cap {
                        Cap::Usual => Some(self.capacities[*lock]),
                        Cap::Keep => None,
                        Cap::Other(c) => Some(*c),
                    },
                    queue: *queue,
                    request_id: request.then(|| format!("req-{}", self.step)),
                    lease_id: LeaseId(self.fresh_id()),
                    ticket_id: TicketId(self.fresh_id()),
                    value: value.text(),
                };
                self.acquire(command, false, &before)
            }
            Op::Retry { pick, other_lock } => {
                if self.sent.is_empty() {
                    return Effects::default();
                }
                let mut command = self.sent[pick.index(self.sent.len())].clone();
                command.lease_id = LeaseId(self.fresh_id());
                command.ticket_id = TicketId(self.fresh_id());
                if *other_lock {
                    let index = self.names.iter().position(|n| *n == command.lock).unwrap();
                    command.lock = self.names[(index + 1) % self.names.len()].clone();
                }
                self.acquire(command, *other_lock, &before)
            }
            Op::Wait { pick, keep } => {
                let id = self.pick_ticket(pick);
                let keep_until = keep.map(|k| self.now + k);
                let real = self.state.wait_ticket(id, keep_until, self.now);
                let model = self.model.ticket_status(id, keep_until, self.now);
                self.agree("wait_ticket", &real, &model);
                if let Ok(TicketStatus::Queued(queued)) = &real {
                    assert!(
                        keep_until.is_none_or(|k| queued.ticket.lapse_at >= k),
                        "a wait did not keep the ticket until {keep_until:?}"
                    );
                }
                self.settle_step(&before)
            }
            Op::Leave { pick, collected } => {
                let id = self.pick_ticket(pick);
                let real = self.state.waiter_left(id, *collected, self.now);
                let model = self.model.waiter_left(id, *collected, self.now);
                self.agree("waiter_left", &real, &model);
                let effects = self.settle_step(&before);
                if real == WaiterLeft::ReleasedUndelivered {
                    // Released cleanly: the next waiter, if any, is served in this transition.
                    self.check_no_delay_after_undelivered(&before, &effects, id);
                }
                effects
            }
            Op::Cancel { pick, forget } => {
                let id = self.pick_ticket(pick);
                let request_id = before
                    .values()
                    .flat_map(|v| &v.waiters)
                    .find(|t| t.id == id)
                    .and_then(|t| t.request_id.clone());
                let real = self.state.cancel_ticket(id, *forget, self.now);
                let model = self.model.cancel(id, *forget, self.now);
                self.agree("cancel_ticket", &real, &model);
                if *forget
                    && real == Ok(Cancelled::Cancelled)
                    && let Some(request_id) = request_id
                {
                    self.outcomes.remove(&request_id);
                }
                let effects = self.settle_step(&before);
                if real == Ok(Cancelled::ReleasedUncollected) {
                    self.check_handoff(&before, &effects, id);
                }
                effects
            }
            Op::Renew { pick, ttl, value } => {
                let id = self.pick_lease(pick);
                let real = self
                    .state
                    .renew_with_value(id, *ttl, value.text(), self.now);
                let model = self.model.renew(id, *ttl, value.text(), self.now);
                self.agree("renew", &real, &model);
                if let Ok(lease) = &real {
                    let old = before
                        .values()
                        .flat_map(|v| &v.holders)
                        .find(|l| l.id == id)
                        .unwrap();
                    assert!(
                        lease.expires_at >= old.expires_at
                            && lease.expires_at >= self.now + lease.ttl_ms,
                        "a renewal shortened a deadline: {old:?} -> {lease:?}"
                    );
                }
                self.settle_step(&before)
            }
            Op::Release { pick } => {
                let id = self.pick_lease(pick);
                let real = self.state.release(id, self.now);
                let model = self.model.release(id, self.now);
                self.agree("release", &real, &model);
                let effects = self.settle_step(&before);
                if real == Ok(Released::Released) {
                    self.check_handoff_of_lease(&before, &effects, id);
                }
                effects
            }
            Op::Revoke { lock, pick, holder } => {
                let name = self.names[*lock].clone();
                let holders: Vec<u64> = before
                    .get(&name)
                    .map(|v| v.holders.iter().map(|l| l.token).collect())
                    .unwrap_or_default();
                let all: Vec<u64> = self.tokens.values().copied().collect();
                let pool = if *holder && !holders.is_empty() {
                    holders
                } else {
                    all
                };
                let token = if pool.is_empty() {
                    1
                } else {
                    pool[pick.index(pool.len())]
                };
                let real = self.state.revoke(&name, token, self.now);
                let model = self.model.revoke(&name, token, self.now);
                self.agree("revoke", &real, &model);
                let effects = self.settle_step(&before);
                // A mutex grants nothing after a revocation before its lock-delay ends. (A
                // semaphore may grant a slot freed by an earlier delay ending now; the slot
                // count after every grant is checked with the change stream.)
                let capacity = before.get(&name).map_or(0, |view| view.capacity);
                if real.is_ok() && self.config.lock_delay_ms > 0 && capacity == 1 {
                    assert!(
                        effects.fresh.iter().all(|l| l.lock != name),
                        "granted at once after a revocation despite the lock-delay"
                    );
                }
                effects
            }
            Op::Fence { lock, pick } => {
                let name = self.names[*lock].clone();
                let mut pool: Vec<u64> = self.tokens.values().copied().collect();
                pool.sort_unstable();
                pool.push(0);
                pool.push(self.state.next_token() + 3);
                let token = pool[pick.index(pool.len())];
                let real = self.state.fence(&name, token, self.now);
                let model = self.model.fence(&name, token);
                self.agree("fence", &real, &model);
                if real.is_ok() {
                    let granted = self.granted_on.get(&name).cloned().unwrap_or_default();
                    assert!(
                        granted.contains(&token),
                        "G3: fence accepted token {token}, never granted on {name}"
                    );
                    let live = before
                        .get(&name)
                        .is_some_and(|v| v.holders.iter().any(|l| l.token == token));
                    assert!(
                        live || granted.iter().all(|t| *t <= token),
                        "G3: fence accepted {token} on {name} after newer grants {granted:?}"
                    );
                }
                self.settle_step(&before)
            }
            Op::Advance { ms } => {
                self.now += ms;
                self.state.tick(self.now);
                self.model.tick(self.now);
                let effects = self.settle_step(&before);
                for view in self.views().values() {
                    for lease in &view.holders {
                        assert!(
                            lease.expires_at > self.now,
                            "G5: lease {} on {} outlived its expiry {} (now {})",
                            lease.token,
                            view.name,
                            lease.expires_at,
                            self.now
                        );
                    }
                    for ticket in &view.waiters {
                        assert!(
                            ticket.lapse_at > self.now,
                            "a ticket on {} outlived its lapse",
                            view.name
                        );
                    }
                }
                // A ticket that left its queue without being granted lapsed, and says so.
                for id in &effects.left_queue {
                    if !effects.fresh.iter().any(|l| l.ticket == Some(*id)) {
                        let status = self.state.clone().wait_ticket(*id, None, self.now);
                        assert_eq!(status, Err(TicketError::Lapsed));
                    }
                }
                effects
            }
            Op::Restart { downtime } => {
                assert!(!self.state.has_changes(), "changes left undrained");
                self.now += downtime;
                self.state = State::restore(self.config.clone(), self.disk.snapshot(), self.now)
                    .unwrap_or_else(|e| panic!("restore failed: {e}"));
                self.model.restart(self.now);
                // A restart remembers every request whose lease is live or ended within the
                // retention (from history), and the requests of queued tickets; it forgets
                // requests whose ticket ended without a lease.
                let ticket_lease = self.ticket_lease.clone();
                let disk_history = self.disk.history.clone();
                self.outcomes.retain(|request_id, (_, target)| {
                    let mine = |lease: &Lease| lease.request_id.as_deref() == Some(request_id);
                    let ended_with_request = |lease: &LeaseId| {
                        disk_history.iter().any(|record| {
                            record.lease_id == *lease
                                && record.request_id.as_deref() == Some(request_id)
                        })
                    };
                    let remembered = match target {
                        Target::Lease(id) => ended_with_request(id),
                        Target::Ticket(id) => ticket_lease.get(id).is_some_and(ended_with_request),
                    };
                    remembered
                        || before.values().any(|view| match target {
                            Target::Lease(id) => {
                                view.holders.iter().any(|l| l.id == *id && mine(l))
                            }
                            Target::Ticket(id) => {
                                view.waiters.iter().any(|t| {
                                    t.id == *id && t.request_id.as_deref() == Some(request_id)
                                }) || view
                                    .holders
                                    .iter()
                                    .any(|l| l.ticket == Some(*id) && mine(l))
                            }
                        })
                });
                let effects = self.settle_step(&before);
                let after = self.views();
                for (name, view) in &before {
                    for lease in &view.holders {
                        let now = self.state.lease(lease.id).unwrap_or_else(|| {
                            panic!("G2: lease {} on {name} lost in a restart", lease.token)
                        });
                        assert!(
                            now.expires_at >= lease.expires_at,
                            "G2: restart shortened a deadline"
                        );
                    }
                    let queued: Vec<TicketId> = view.waiters.iter().map(|t| t.id).collect();
                    let kept: Vec<TicketId> = after
                        .get(name)
                        .map(|v| v.waiters.iter().map(|t| t.id).collect())
                        .unwrap_or_default();
                    let granted = queued.len() - kept.len();
                    assert_eq!(
                        queued[granted..],
                        kept[..],
                        "restart reordered the queue of {name}"
                    );
                    for id in &queued[..granted] {
                        assert!(effects.fresh.iter().any(|l| l.ticket == Some(*id)));
                    }
                }
                effects
            }
        }
    }

    fn acquire(
        &mut self,
        command: Acquire,
        misdirected: bool,
        before: &BTreeMap<LockName, LockView>,
    ) -> Effects {
        let real = self.state.acquire(command.clone(), self.now);
        let model = self.model.acquire(&command, self.now);
        self.agree("acquire", &real, &model);
        let pre = before.get(&command.lock);
        let effects = self.settle_step(before);
        // G4: a request never jumps a non-empty queue, nor gets more than the capacity.
        if let Ok(Acquired::Granted(lease)) = &real
            && effects.fresh.iter().any(|l| l.id == lease.id)
            && let Some(pre) = pre
        {
            assert!(
                pre.waiters.is_empty(),
                "G4: acquire granted past {} waiters",
                pre.waiters.len()
            );
        }
        // G7: a retry answers what the first request got, or that it ended.
        let retried = command
            .request_id
            .as_ref()
            .and_then(|r| self.outcomes.get(r).cloned());
        if let Some((lock, target)) = &retried {
            let ok = match (&real, target) {
                (Err(AcquireError::RequestIdConflict { lock: l }), _) => {
                    *l == *lock && *lock != command.lock
                }
                (Err(AcquireError::LeaseEnded(_) | AcquireError::TicketEnded(_)), _) => true,
                (Ok(Acquired::Granted(lease)), Target::Lease(id)) => lease.id == *id,
                (Ok(Acquired::Granted(lease)), Target::Ticket(id)) => {
                    Some(&lease.id) == self.ticket_lease.get(id)
                }
                (Ok(Acquired::Queued(queued)), Target::Ticket(id)) => queued.ticket.id == *id,
                _ => false,
            };
            assert!(
                ok,
                "G7: retry of {:?} first answered {target:?}, now {real:?}",
                command.request_id
            );
        } else if let Some(request_id) = &command.request_id {
            match &real {
                Ok(Acquired::Granted(lease)) => {
                    self.outcomes.insert(
                        request_id.clone(),
                        (command.lock.clone(), Target::Lease(lease.id)),
                    );
                }
                Ok(Acquired::Queued(queued)) => {
                    self.outcomes.insert(
                        request_id.clone(),
                        (command.lock.clone(), Target::Ticket(queued.ticket.id)),
                    );
                }
                _ => {}
            }
        }
        // G7: the owner key of a holder gets that holder's lease back.
        if retried.is_none()
            && (TTL_MS_MIN..=TTL_MS_MAX).contains(&command.ttl_ms)
            && command
                .value
                .as_ref()
                .is_none_or(|value| value.len() <= LEASE_VALUE_BYTES_MAX)
            && let Some(key) = &command.owner_key
            && let Some(pre) = pre
            && command.capacity.is_none_or(|c| c == pre.capacity)
            && (command.mode == Mode::Exclusive || pre.capacity == 1)
            && let Some(held) = pre
                .holders
                .iter()
                .find(|l| l.owner_key.as_ref() == Some(key))
        {
            assert!(
                matches!(&real, Ok(Acquired::Granted(lease)) if lease.id == held.id),
                "G7: owner key {key} holds {} but acquire answered {real:?}",
                held.token
            );
        }
        if command.request_id.is_some() && !misdirected {
            self.sent.push(command);
        }
        effects
    }

    /// An undelivered grant ends cleanly: it starts no lock-delay.
    fn check_no_delay_after_undelivered(
        &self,
        before: &BTreeMap<LockName, LockView>,
        _effects: &Effects,
        ticket: TicketId,
    ) {
        let Some(view) = before
            .values()
            .find(|v| v.holders.iter().any(|l| l.ticket == Some(ticket)))
        else {
            return;
        };
        if let Some(after) = self.state.lock(&view.name) {
            assert_eq!(
                after.delayed_until.filter(|until| *until > self.now),
                view.delayed_until.filter(|until| *until > self.now),
                "an undelivered grant's release started a lock-delay on {}",
                view.name
            );
        }
    }

    /// A clean end hands the lock to the head of its queue at once, unless delayed.
    fn check_handoff_of_lease(
        &self,
        before: &BTreeMap<LockName, LockView>,
        effects: &Effects,
        id: LeaseId,
    ) {
        let Some(view) = before
            .values()
            .find(|v| v.holders.iter().any(|l| l.id == id))
        else {
            return;
        };
        // Tickets whose waiter went away are skipped: the first live one is served, when the
        // holders left leave room for its mode (a writer waits for every reader to go).
        let left: Vec<&Lease> = view.holders.iter().filter(|l| l.id != id).collect();
        if let Some(head) = view.waiters.iter().find(|t| !t.waiter_gone)
            && view.delayed_until.is_none_or(|until| until <= self.now)
            && match head.mode {
                Mode::Exclusive => left.len() < view.capacity as usize,
                Mode::Shared => left.iter().all(|l| l.mode == Mode::Shared),
            }
        {
            assert!(
                effects.fresh.iter().any(|l| l.ticket == Some(head.id)),
                "G5: a release on {} did not hand the lock to the first live waiter",
                view.name
            );
        }
    }

    fn check_handoff(
        &self,
        before: &BTreeMap<LockName, LockView>,
        effects: &Effects,
        id: TicketId,
    ) {
        if let Some(lease) = self.ticket_lease.get(&id) {
            self.check_handoff_of_lease(before, effects, *lease);
        }
    }

    fn agree<T: PartialEq + std::fmt::Debug>(&self, what: &str, real: &T, model: &T) {
        assert_eq!(
            real, model,
            "step {}: {what} answered {real:?}, the model {model:?}",
            self.step
        );
    }

    /// Persists what the step changed and reads the guarantees off the change stream.
    fn settle_step(&mut self, before: &BTreeMap<LockName, LockView>) -> Effects {
        let changes = self.state.drain_changes();
        assert!(!self.state.has_changes());
        let wakeups: HashSet<TicketId> = self.state.drain_wakeups().into_iter().collect();
        let mut effects = Effects::default();
        for change in &changes {
            self.disk.apply(change);
            match change {
                Change::TicketPut(ticket) => {
                    self.ticket_ids.push(ticket.id);
                    self.ticket_lease.insert(ticket.id, ticket.lease_id);
                    self.arrivals
                        .entry(ticket.lock.clone())
                        .or_default()
                        .push_back(ticket.id);
                }
                Change::TicketDelete(id) => {
                    let queue = self
                        .arrivals
                        .values_mut()
                        .find(|q| q.contains(id))
                        .expect("a ticket left a queue it never joined");
                    let index = queue.iter().position(|t| t == id).unwrap();
                    queue.remove(index);
                    self.left_at_head.insert(*id, index == 0);
                    effects.left_queue.push(*id);
                    assert!(
                        wakeups.contains(id),
                        "G5: the waiter of a ticket that left its queue is not woken"
                    );
                }
                Change::LeasePut(lease) => {
                    if let Some(token) = self.tokens.get(&lease.id) {
                        assert_eq!(*token, lease.token, "a lease changed its token");
                        continue;
                    }
                    assert!(
                        lease.token > self.max_token,
                        "G3: token {} granted after token {}",
                        lease.token,
                        self.max_token
                    );
                    assert!(lease.token < self.state.next_token());
                    self.max_token = lease.token;
                    self.tokens.insert(lease.id, lease.token);
                    self.lease_ids.push(lease.id);
                    self.granted_on
                        .entry(lease.lock.clone())
                        .or_default()
                        .push(lease.token);
                    assert_eq!(lease.granted_at, self.now);
                    if let Some(ticket) = lease.ticket {
                        assert_eq!(
                            self.left_at_head.get(&ticket),
                            Some(&true),
                            "G4: ticket granted out of arrival order on {}",
                            lease.lock
                        );
                    } else if let Some(view) = before.get(&lease.lock) {
                        assert!(
                            view.waiters.is_empty(),
                            "G4: a fresh acquire was granted while {} had waiters",
                            lease.lock
                        );
                    }
                    let in_force = self.delays.get(&lease.lock).map_or(0, |ends| {
                        ends.iter().filter(|until| **until > self.now).count()
                    });
                    let view = self.state.lock(&lease.lock).unwrap();
                    let shared = lease.mode == Mode::Shared;
                    assert!(
                        !shared
                            || (in_force == 0
                                && view.holders.iter().all(|l| l.mode == Mode::Shared)),
                        "G5: {} granted shared at {} beside a writer or in a lock-delay",
                        lease.lock,
                        self.now
                    );
                    assert!(
                        shared || view.holders.len() + in_force <= view.capacity as usize,
                        "G5: {} granted at {} into a slot in its lock-delay ({} holders, \
                         {in_force} slots delayed, capacity {})",
                        lease.lock,
                        self.now,
                        view.holders.len(),
                        view.capacity
                    );
                    effects.fresh.push(lease.clone());
                }
                Change::HistoryAppend(record)
                    if record.end != LeaseEnd::Released && self.config.lock_delay_ms > 0 =>
                {
                    let until = record.ended_at + self.config.lock_delay_ms;
                    self.delays
                        .entry(record.lock.clone())
                        .or_default()
                        .push(until);
                }
                _ => {}
            }
        }
        effects
    }

    fn check(&self) {
        let step = self.step;
        self.state.check_invariants();
        let views = self.views();
        // The model agrees on every lock, every holder and every waiter.
        let model_names: Vec<&LockName> = self.model.locks.keys().collect();
        let names: Vec<&LockName> = views.keys().collect();
        assert_eq!(names, model_names, "step {step}: the locks differ");
        for name in &self.names {
            assert_eq!(
                self.state.lock(name),
                self.model.view(name),
                "step {step}: lock {name} differs from the model"
            );
            let mut history = self.state.history(name, usize::MAX, self.now);
            assert!(
                history.windows(2).all(|w| w[0].ended_at >= w[1].ended_at),
                "history is not newest first"
            );
            let mut expected = self.model.history.get(name).cloned().unwrap_or_default();
            history.sort_by_key(|r| (r.ended_at, r.token));
            expected.sort_by_key(|r| (r.ended_at, r.token));
            assert_eq!(history, expected, "step {step}: history of {name} differs");
        }
        assert_eq!(self.state.counts(), self.model.counts(), "step {step}");
        assert_eq!(
            self.state.next_token(),
            self.model.next_token,
            "step {step}"
        );
        assert!(
            self.state.next_token() > self.max_token,
            "G3: next_token not above every token granted"
        );
        for view in views.values() {
            // G1 for modes: at most `capacity` exclusive holders, or shared holders only (on a
            // lock of capacity 1), never both.
            let shared = view
                .holders
                .iter()
                .filter(|l| l.mode == Mode::Shared)
                .count();
            let exclusive = view.holders.len() - shared;
            assert!(
                exclusive <= view.capacity as usize
                    && (shared == 0 || (exclusive == 0 && view.capacity == 1)),
                "G1: {} has {exclusive} exclusive and {shared} shared holders, capacity {}",
                view.name,
                view.capacity
            );
            // G5: room for the head of the queue only during a lock-delay.
            let head_has_room = view.waiters.first().is_some_and(|head| match head.mode {
                Mode::Exclusive => view.holders.len() < view.capacity as usize,
                Mode::Shared => view.capacity == 1 && exclusive == 0,
            });
            if head_has_room {
                assert!(
                    view.delayed_until.is_some_and(|until| until > self.now),
                    "G5: {} has room and waiters, but no lock-delay",
                    view.name
                );
            }
            // Queues as the change stream told them.
            let ids: Vec<TicketId> = view.waiters.iter().map(|t| t.id).collect();
            let arrivals: Vec<TicketId> = self
                .arrivals
                .get(&view.name)
                .map(|q| q.iter().copied().collect())
                .unwrap_or_default();
            assert_eq!(
                ids, arrivals,
                "G4: queue of {} out of arrival order",
                view.name
            );
        }
        // G2: the disk, fed only by changes, describes the table.
        let disk_names: Vec<&LockName> = self.disk.locks.keys().collect();
        assert_eq!(disk_names, names, "G2: the stored locks differ");
        for view in views.values() {
            let record = &self.disk.locks[&view.name];
            assert_eq!(
                (record.capacity, record.newest_token, record.delayed_until),
                (view.capacity, view.newest_token, view.delayed_until),
                "G2: stored lock {} differs",
                view.name
            );
        }
        let live: BTreeMap<LeaseId, &Lease> = views
            .values()
            .flat_map(|v| &v.holders)
            .map(|l| (l.id, l))
            .collect();
        assert_eq!(
            self.disk.leases.keys().collect::<BTreeSet<_>>(),
            live.keys().collect::<BTreeSet<_>>(),
            "G2: the stored leases differ"
        );
        for (id, lease) in &live {
            let stored = &self.disk.leases[id];
            assert_eq!(
                (stored.token, stored.ttl_ms, &stored.lock, stored.ticket),
                (lease.token, lease.ttl_ms, &lease.lock, lease.ticket)
            );
            assert!(stored.expires_at <= lease.expires_at);
        }
        let queued: BTreeSet<TicketId> = views
            .values()
            .flat_map(|v| &v.waiters)
            .map(|t| t.id)
            .collect();
        assert_eq!(
            self.disk.tickets.keys().copied().collect::<BTreeSet<_>>(),
            queued,
            "G2: the stored tickets differ"
        );
        assert_eq!(self.disk.next_token.max(1), self.state.next_token());
    }
}

fn run_case(lock_delay_ms: u64, capacities: [u32; 3], ops: &[Op]) {
    let mut harness = Harness::new(lock_delay_ms, capacities);
    for op in ops {
        harness.run(op);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // Integration tests have no lib.rs for the default location: keep failing cases in
        // `tests/model.proptest-regressions`, replayed first on every run.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    /// No lock-delay: every end hands the lock on at once.
    #[test]
    fn table_matches_model_without_lock_delay(
        capacities in prop::array::uniform3(1u32..=3),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        run_case(0, capacities, &ops);
    }

    /// A lock-delay of 50 ms after every unclean end.
    #[test]
    fn table_matches_model_with_lock_delay(
        capacities in prop::array::uniform3(1u32..=3),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        run_case(50, capacities, &ops);
    }
}

// ---------------------------------------------------------------------------------------------
// Lock sets against a model of their one rule: a request (one lock or several) is granted when
// it is the oldest queued request on each of its locks and each of them is free. Random
// interleavings of set acquires (try and queue, one to three of four mutexes, in any order),
// waits, cancels, waiters that go away, releases and the passing of time (expiries and lapses)
// are applied to the table and the model; after every step both must agree on every lock's
// holder and queue, and:
// - G1: a lock has at most one holder (checked by the table's invariants too);
// - FIFO: every queue is in arrival order, one arrival number for all of a set's tickets;
// - all or nothing: a request is granted on all of its locks in one step, or queued on all;
// - no deadlock: whenever nothing is held, nothing is queued (the head request was granted),
//   and the oldest queued request heads every one of its queues.
// A waiter that went away keeps its places but is never granted: when it could be, it leaves.
// Times are distinct per step, so no two lapses fall on the same instant. (Restarts of queued
// sets are covered by `tests/sets.rs` and the stores' conformance case `lock_sets`.)
// ---------------------------------------------------------------------------------------------

const SET_LOCKS: [&str; 4] = ["s0", "s1", "s2", "s3"];
const SET_TTL_MS: u64 = 1_000;

#[derive(Debug, Clone)]
enum SetOp {
    /// A request for the locks at these indexes (deduplicated, order kept); queue or try.
    Acquire(Vec<usize>, bool),
    /// Wait on a queued request (the index picks one), which keeps its tickets.
    Wait(Index),
    /// Release every lease of a holding request (the index picks one).
    Release(Index),
    /// Cancel one ticket of a queued request (the index picks one): the whole request leaves.
    Cancel(Index),
    /// The waiter of a queued request goes away: it keeps its places until it lapses, but is
    /// never granted; when it could be, it leaves instead.
    Depart(Index),
    /// Let time pass, then tick.
    Advance(u64),
}

fn set_op() -> impl Strategy<Value = SetOp> {
    prop_oneof![
        4 => prop::collection::vec(0usize..SET_LOCKS.len(), 1..=3)
            .prop_map(|locks| SetOp::Acquire(locks, true)),
        1 => (prop::collection::vec(0usize..SET_LOCKS.len(), 1..=3))
            .prop_map(|locks| SetOp::Acquire(locks, false)),
        2 => any::<Index>().prop_map(SetOp::Wait),
        3 => any::<Index>().prop_map(SetOp::Release),
        1 => any::<Index>().prop_map(SetOp::Cancel),
        1 => any::<Index>().prop_map(SetOp::Depart),
        2 => (1u64..700).prop_map(SetOp::Advance),
    ]
}

/// A request the model knows: its locks, and either its leases' expiry or its tickets' lapse.
#[derive(Debug, Clone)]
struct SetRequest {
    owner: String,
    locks: Vec<LockName>,
    /// The ticket of each lock (lock order), for waits.
    tickets: Vec<TicketId>,
    /// The leases, once granted.
    leases: Vec<LeaseId>,
    /// Queued: when its tickets lapse. Granted: when its leases expire.
    until: u64,
    granted: bool,
    /// Its waiter went away (and no wait came back since).
    gone: bool,
}

#[derive(Debug, Default)]
struct SetModel {
    /// Live requests (queued or holding), in arrival order.
    requests: Vec<SetRequest>,
}

impl SetModel {
    fn held(&self, lock: &LockName) -> bool {
        self.requests
            .iter()
            .any(|request| request.granted && request.locks.contains(lock))
    }

    /// Grants every queued request that is the oldest queued one on each of its locks, each of
    /// them free, until none is.
    fn settle(&mut self, now: u64) {
        loop {
            let mut granted_one = false;
            for index in 0..self.requests.len() {
                if self.requests[index].granted {
                    continue;
                }
                let request = &self.requests[index];
                let heads_all = request.locks.iter().all(|lock| {
                    !self.held(lock)
                        && self.requests[..index]
                            .iter()
                            .all(|earlier| earlier.granted || !earlier.locks.contains(lock))
                });
                if heads_all && self.requests[index].gone {
                    // Nobody would collect the grant: the request leaves its queues.
                    self.requests.remove(index);
                    granted_one = true;
                    break;
                }
                if heads_all {
                    self.requests[index].granted = true;
                    self.requests[index].until = now + SET_TTL_MS;
                    granted_one = true;
                }
            }
            if !granted_one {
                return;
            }
        }
    }

    /// Runs every expiry and lapse due by `now`, in time order, expiries first at an instant;
    /// grants made on the way are made at `now` (the tick's time), as the table does.
    fn tick(&mut self, now: u64) {
        while let Some(at) = self
            .requests
            .iter()
            .map(|request| request.until)
            .filter(|until| *until <= now)
            .min()
        {
            let before = self.requests.len();
            self.requests
                .retain(|request| !(request.granted && request.until == at));
            if self.requests.len() != before {
                self.settle(now);
                continue;
            }
            self.requests
                .retain(|request| request.granted || request.until != at);
            self.settle(now);
        }
    }

    /// Each lock's holder and queue, by owner.
    fn picture(&self) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
        let mut picture = BTreeMap::new();
        for lock in SET_LOCKS {
            let name = LockName::new(lock).unwrap();
            let mut holders = Vec::new();
            let mut queue = Vec::new();
            for request in &self.requests {
                if request.locks.contains(&name) {
                    if request.granted {
                        holders.push(request.owner.clone());
                    } else {
                        queue.push(request.owner.clone());
                    }
                }
            }
            picture.insert(lock.to_owned(), (holders, queue));
        }
        picture
    }
}

fn table_picture(state: &State) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
    let mut picture = BTreeMap::new();
    for lock in SET_LOCKS {
        let name = LockName::new(lock).unwrap();
        let (holders, queue) = state.lock(&name).map_or((Vec::new(), Vec::new()), |view| {
            (
                view.holders
                    .iter()
                    .map(|lease| lease.owner.clone())
                    .collect(),
                view.waiters
                    .iter()
                    .map(|ticket| ticket.owner.clone())
                    .collect(),
            )
        });
        picture.insert(lock.to_owned(), (holders, queue));
    }
    picture
}

fn run_set_case(ops: &[SetOp]) {
    let config = Config {
        lock_delay_ms: 0,
        ticket_lapse_ms: LAPSE_MS,
        ..Config::default()
    };
    let mut state = State::new(config, T0);
    let mut model = SetModel::default();
    let mut now = T0;
    for (step, op) in ops.iter().enumerate() {
        // Every step at its own instant, with what fell due run first: no two lapses
        // coincide, and no step acts on a lease past its expiry.
        now += 1;
        state.tick(now);
        model.tick(now);
        let n = step as u64;
        match op {
            SetOp::Acquire(indexes, queue) => {
                let mut locks: Vec<LockName> = Vec::new();
                for index in indexes {
                    let name = LockName::new(SET_LOCKS[*index]).unwrap();
                    if !locks.contains(&name) {
                        locks.push(name);
                    }
                }
                let owner = format!("r{n}");
                let lease_ids: Vec<LeaseId> = (0..locks.len() as u64)
                    .map(|i| LeaseId(id_bytes(n * 100 + i)))
                    .collect();
                let ticket_ids: Vec<TicketId> = (0..locks.len() as u64)
                    .map(|i| TicketId(id_bytes(n * 100 + 50 + i)))
                    .collect();
                let free = locks.iter().all(|lock| {
                    !model.held(lock)
                        && model
                            .requests
                            .iter()
                            .all(|request| request.granted || !request.locks.contains(lock))
                });
                let outcome = state
                    .acquire_set(
                        baton_core::AcquireSet {
                            locks: locks.clone(),
                            owner: owner.clone(),
                            ttl_ms: SET_TTL_MS,
                            queue: *queue,
                            request_id: None,
                            api_key: None,
                            quota: Default::default(),
                            lease_ids: lease_ids.clone(),
                            ticket_ids: ticket_ids.clone(),
                            value: None,
                            mode: Mode::Exclusive,
                        },
                        now,
                    )
                    .unwrap();
                match (&outcome, free, *queue) {
                    (baton_core::AcquiredSet::Granted(leases), true, _) => {
                        assert_eq!(leases.len(), locks.len(), "all or nothing");
                        model.requests.push(SetRequest {
                            owner,
                            locks,
                            tickets: ticket_ids,
                            leases: lease_ids,
                            until: now + SET_TTL_MS,
                            granted: true,
                            gone: false,
                        });
                    }
                    (baton_core::AcquiredSet::Queued(tickets), false, true) => {
                        assert_eq!(tickets.len(), locks.len(), "all or nothing");
                        let seq = tickets[0].ticket.seq;
                        assert!(tickets.iter().all(|t| t.ticket.seq == seq));
                        model.requests.push(SetRequest {
                            owner,
                            locks,
                            tickets: ticket_ids,
                            leases: lease_ids,
                            until: now + LAPSE_MS,
                            granted: false,
                            gone: false,
                        });
                    }
                    (baton_core::AcquiredSet::Busy(_), false, false) => {}
                    (outcome, free, queue) => {
                        panic!("step {step}: free {free}, queue {queue}, but {outcome:?}")
                    }
                }
            }
            SetOp::Wait(index) => {
                let queued: Vec<usize> = (0..model.requests.len())
                    .filter(|i| !model.requests[*i].granted)
                    .collect();
                if queued.is_empty() {
                    continue;
                }
                let request = &mut model.requests[queued[index.index(queued.len())]];
                request.until = request.until.max(now + LAPSE_MS);
                request.gone = false;
                let ticket = request.tickets[n as usize % request.tickets.len()];
                assert!(matches!(
                    state.wait_ticket(ticket, None, now),
                    Ok(TicketStatus::Queued(_))
                ));
            }
            SetOp::Release(index) => {
                let holding: Vec<usize> = (0..model.requests.len())
                    .filter(|i| model.requests[*i].granted)
                    .collect();
                if holding.is_empty() {
                    continue;
                }
                let request = model.requests.remove(holding[index.index(holding.len())]);
                for lease in &request.leases {
                    assert_eq!(state.release(*lease, now), Ok(Released::Released));
                }
                model.settle(now);
            }
            SetOp::Cancel(index) => {
                let queued: Vec<usize> = (0..model.requests.len())
                    .filter(|i| !model.requests[*i].granted)
                    .collect();
                if queued.is_empty() {
                    continue;
                }
                let request = model.requests.remove(queued[index.index(queued.len())]);
                let ticket = request.tickets[n as usize % request.tickets.len()];
                assert_eq!(
                    state.cancel_ticket(ticket, false, now),
                    Ok(Cancelled::Cancelled)
                );
                model.settle(now);
            }
            SetOp::Depart(index) => {
                let queued: Vec<usize> = (0..model.requests.len())
                    .filter(|i| !model.requests[*i].granted)
                    .collect();
                if queued.is_empty() {
                    continue;
                }
                let request = &mut model.requests[queued[index.index(queued.len())]];
                request.gone = true;
                request.until = request.until.min(now + LAPSE_MS);
                let ticket = request.tickets[n as usize % request.tickets.len()];
                assert!(matches!(
                    state.waiter_left(ticket, false, now),
                    WaiterLeft::Lapsing(_)
                ));
            }
            SetOp::Advance(ms) => {
                now += ms;
                state.tick(now);
                model.tick(now);
            }
        }
        state.check_invariants();
        let picture = table_picture(&state);
        assert_eq!(picture, model.picture(), "step {step}: {op:?}");
        if picture.values().all(|(holders, _)| holders.is_empty()) {
            assert!(
                picture.values().all(|(_, queue)| queue.is_empty()),
                "step {step}: nothing is held, yet requests wait: a deadlock"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    /// Lock sets over four mutexes: the table grants exactly what the model does.
    #[test]
    fn lock_sets_match_model_and_never_deadlock(ops in prop::collection::vec(set_op(), 1..200)) {
        run_set_case(&ops);
    }
}
