//! Example-based tests of each transition of the lock table, one edge case at a time.
//!
//! Each test states the rule it checks; each checks the outcome that a broken table would get
//! wrong, not just that a call succeeds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use baton_core::{
    Acquire, AcquireError, Acquired, Cancelled, Change, Config, Lease, LeaseEnd, LeaseError,
    LeaseId, LockName, LockRecord, Mode, QueuedTicket, Released, Snapshot, State, TicketEnd,
    TicketError, TicketId, TicketStatus, TokenError, WaiterLeft,
};
use common::Disk;

const T0: u64 = 1_000_000;
const DELAY: u64 = 1_000;
const LAPSE: u64 = 10_000;
const IDLE: u64 = 60_000;

fn config() -> Config {
    Config {
        lock_delay_ms: DELAY,
        ticket_lapse_ms: LAPSE,
        idle_lock_retention_ms: IDLE,
        ..Config::default()
    }
}

fn name(text: &str) -> LockName {
    LockName::new(text).unwrap()
}

/// A try-acquire of `lock` by `owner`, ttl 1 s, with ids derived from `n` (distinct per call).
fn req(lock: &str, owner: &str, n: u8) -> Acquire {
    Acquire {
        mode: Default::default(),
        value: None,
        quota: Default::default(),
        api_key: None,
        lock: name(lock),
        owner: owner.to_owned(),
        owner_key: None,
        ttl_ms: 1_000,
        capacity: None,
        queue: false,
        request_id: None,
        lease_id: LeaseId([n; 16]),
        ticket_id: TicketId([n; 16]),
    }
}

fn queue(lock: &str, owner: &str, n: u8) -> Acquire {
    Acquire {
        queue: true,
        ..req(lock, owner, n)
    }
}

#[track_caller]
fn granted(outcome: Result<Acquired, AcquireError>) -> Lease {
    match outcome {
        Ok(Acquired::Granted(lease)) => lease,
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[track_caller]
fn queued(outcome: Result<Acquired, AcquireError>) -> QueuedTicket {
    match outcome {
        Ok(Acquired::Queued(queued)) => queued,
        other => panic!("expected a ticket, got {other:?}"),
    }
}

#[track_caller]
fn busy(outcome: Result<Acquired, AcquireError>) -> Vec<Lease> {
    match outcome {
        Ok(Acquired::Busy(holders)) => holders,
        other => panic!("expected busy, got {other:?}"),
    }
}

#[track_caller]
fn lease_of(status: Result<TicketStatus, TicketError>) -> Lease {
    match status {
        Ok(TicketStatus::Granted(lease)) => lease,
        other => panic!("expected the ticket's lease, got {other:?}"),
    }
}

#[track_caller]
fn position_of(status: Result<TicketStatus, TicketError>) -> u64 {
    match status {
        Ok(TicketStatus::Queued(queued)) => queued.position,
        other => panic!("expected the ticket still queued, got {other:?}"),
    }
}

fn holders(state: &State, lock: &str) -> Vec<u64> {
    state
        .lock(&name(lock))
        .map(|view| view.holders.iter().map(|l| l.token).collect())
        .unwrap_or_default()
}

/// Persists everything up to now and restarts from it at `now`.
fn restart(state: &mut State, disk: &mut Disk, now: u64) {
    disk.apply_all(&state.drain_changes());
    *state = State::restore(state.config().clone(), disk.snapshot(), now).unwrap();
    disk.apply_all(&state.drain_changes());
    state.check_invariants();
}

// --- acquire: capacity ------------------------------------------------------------------------

#[test]
fn capacity_conflict_only_while_in_use() {
    let mut state = State::new(config(), T0);
    let a = granted(state.acquire(
        Acquire {
            capacity: Some(2),
            ..req("jobs", "a", 1)
        },
        T0,
    ));
    // Same capacity, or none: fine, and a semaphore of 2 takes a second holder.
    let b = granted(state.acquire(req("jobs", "b", 2), T0));
    let before = state.lock(&name("jobs"));
    // Another capacity while holders exist: a conflict naming the current one, nothing changed.
    assert_eq!(
        state.acquire(
            Acquire {
                capacity: Some(3),
                ..queue("jobs", "c", 3)
            },
            T0
        ),
        Err(AcquireError::CapacityConflict { current: 2 })
    );
    assert_eq!(state.lock(&name("jobs")), before);

    // No holders but a waiter (during a lock-delay) is still "in use".
    let c = queued(state.acquire(queue("jobs", "c", 4), T0));
    state.revoke(&name("jobs"), a.token, T0).unwrap();
    state.revoke(&name("jobs"), b.token, T0).unwrap();
    assert_eq!(holders(&state, "jobs"), Vec::<u64>::new());
    assert_eq!(
        state.acquire(
            Acquire {
                capacity: Some(1),
                ..req("jobs", "d", 5)
            },
            T0
        ),
        Err(AcquireError::CapacityConflict { current: 2 })
    );

    // Once idle (the waiter served and gone), the capacity may change; it is persisted.
    state.tick(T0 + DELAY);
    let c_lease = lease_of(state.wait_ticket(c.ticket.id, None, T0 + DELAY));
    state.release(c_lease.id, T0 + DELAY).unwrap();
    state.drain_changes();
    let e = granted(state.acquire(
        Acquire {
            capacity: Some(1),
            ..req("jobs", "e", 6)
        },
        T0 + DELAY,
    ));
    assert_eq!(state.lock(&name("jobs")).unwrap().capacity, 1);
    assert!(state.drain_changes().iter().any(
        |c| matches!(c, Change::LockPut(LockRecord { capacity: 1, name: n, .. }) if *n == name("jobs"))
    ));
    // And the new capacity holds: a mutex now.
    assert_eq!(
        busy(state.acquire(req("jobs", "f", 7), T0 + DELAY)),
        vec![e]
    );
    state.check_invariants();
}

#[test]
fn invalid_ttl_and_capacity_change_nothing() {
    let mut state = State::new(config(), T0);
    assert_eq!(
        state.acquire(
            Acquire {
                ttl_ms: 499,
                ..req("x", "a", 1)
            },
            T0
        ),
        Err(AcquireError::InvalidTtl)
    );
    assert_eq!(
        state.acquire(
            Acquire {
                capacity: Some(0),
                ..req("x", "a", 2)
            },
            T0
        ),
        Err(AcquireError::InvalidCapacity)
    );
    assert_eq!(state.counts(), (0, 0, 0));
    assert!(!state.has_changes());
    // The bounds themselves are accepted.
    granted(state.acquire(
        Acquire {
            ttl_ms: 500,
            capacity: Some(10_000),
            ..req("x", "a", 3)
        },
        T0,
    ));
}

// --- fairness ---------------------------------------------------------------------------------

#[test]
fn try_never_jumps_a_non_empty_queue_during_a_lock_delay() {
    let mut state = State::new(config(), T0);
    let a = granted(state.acquire(req("m", "a", 1), T0));
    let b = queued(state.acquire(queue("m", "b", 2), T0));
    state.revoke(&name("m"), a.token, T0 + 10).unwrap();
    // The lock is free but delayed, with a waiter: a try is busy (no holders to report).
    assert_eq!(busy(state.acquire(req("m", "c", 3), T0 + 20)), vec![]);
    // The delay is over but no tick has served the queue yet: still no jumping.
    assert_eq!(
        busy(state.acquire(req("m", "c", 4), T0 + 10 + DELAY)),
        vec![]
    );
    // A queued request goes behind the waiter.
    let d = queued(state.acquire(queue("m", "d", 5), T0 + 10 + DELAY));
    assert_eq!(d.position, 2);
    state.tick(T0 + 10 + DELAY);
    let b_lease = lease_of(state.wait_ticket(b.ticket.id, None, T0 + 10 + DELAY));
    assert!(b_lease.token > a.token);
    assert_eq!(
        busy(state.acquire(req("m", "c", 6), T0 + 10 + DELAY)),
        vec![b_lease]
    );
    assert_eq!(
        position_of(state.wait_ticket(d.ticket.id, None, T0 + 10 + DELAY)),
        1
    );
}

#[test]
fn try_is_busy_during_a_lock_delay_with_an_empty_queue() {
    let mut state = State::new(config(), T0);
    let a = granted(state.acquire(req("m", "a", 1), T0));
    state.revoke(&name("m"), a.token, T0).unwrap();
    assert_eq!(
        busy(state.acquire(req("m", "b", 2), T0 + DELAY - 1)),
        vec![]
    );
    let b = granted(state.acquire(req("m", "b", 3), T0 + DELAY));
    assert!(b.token > a.token);
}

#[test]
fn semaphore_grants_waiters_in_arrival_order() {
    let mut state = State::new(config(), T0);
    let cap = |mut a: Acquire| {
        a.capacity = Some(2);
        a
    };
    let a = granted(state.acquire(cap(req("s", "a", 1)), T0));
    let b = granted(state.acquire(cap(req("s", "b", 2)), T0));
    let c = queued(state.acquire(cap(queue("s", "c", 3)), T0 + 1));
    let d = queued(state.acquire(cap(queue("s", "d", 4)), T0 + 2));
    let e = queued(state.acquire(cap(queue("s", "e", 5)), T0 + 3));
    assert_eq!((c.position, d.position, e.position), (1, 2, 3));
    // Whichever holder leaves, the head is served first.
    state.release(b.id, T0 + 10).unwrap();
    let c_lease = lease_of(state.wait_ticket(c.ticket.id, None, T0 + 10));
    assert_eq!(
        position_of(state.wait_ticket(d.ticket.id, None, T0 + 10)),
        1
    );
    state.release(a.id, T0 + 11).unwrap();
    let d_lease = lease_of(state.wait_ticket(d.ticket.id, None, T0 + 11));
    assert!(b.token < c_lease.token && c_lease.token < d_lease.token);
    assert_eq!(
        position_of(state.wait_ticket(e.ticket.id, None, T0 + 11)),
        1
    );
    assert_eq!(holders(&state, "s"), vec![c_lease.token, d_lease.token]);
}

// --- ends of leases and the lock-delay ---------------------------------------------------------

#[test]
fn release_hands_on_at_once() {
    let mut state = State::new(config(), T0);
    let a = granted(state.acquire(req("m", "a", 1), T0));
    let b = queued(state.acquire(queue("m", "b", 2), T0));
    state.drain_wakeups();
    assert_eq!(state.release(a.id, T0 + 5), Ok(Released::Released));
    // Woken, granted at the same instant, with no lock-delay.
    assert_eq!(state.drain_wakeups(), vec![b.ticket.id]);
    let lease = lease_of(state.wait_ticket(b.ticket.id, None, T0 + 5));
    assert_eq!(lease.granted_at, T0 + 5);
    assert_eq!(state.lock(&name("m")).unwrap().delayed_until, None);
    // A second release of the same lease says it had already ended.
    assert_eq!(
        state.release(a.id, T0 + 6),
        Ok(Released::AlreadyEnded(LeaseEnd::Released))
    );
    assert_eq!(
        state.release(LeaseId([99; 16]), T0 + 6),
        Err(LeaseError::NotFound)
    );
}

#[test]
fn revoke_starts_the_lock_delay() {
    let mut state = State::new(config(), T0);
    let a = granted(state.acquire(req("m", "a", 1), T0));
    let b = queued(state.acquire(queue("m", "b", 2), T0));
    let revoked = state.revoke(&name("m"), a.token, T0 + 5).unwrap();
    assert_eq!(revoked.id, a.id);
    assert_eq!(
        state.lock(&name("m")).unwrap().delayed_until,
        Some(T0 + 5 + DELAY)
    );
    state.tick(T0 + 5 + DELAY - 1);
    assert_eq!(
        position_of(state.wait_ticket(b.ticket.id, None, T0 + 5 + DELAY - 1)),
        1
    );
    state.tick(T0 + 5 + DELAY);
    let lease = lease_of(state.wait_ticket(b.ticket.id, None, T0 + 5 + DELAY));
    assert_eq!(lease.granted_at, T0 + 5 + DELAY);
    // The holder learns it at its next renewal.
    assert_eq!(
        state.renew(a.id, None, T0 + 6 + DELAY),
        Err(LeaseError::Ended(LeaseEnd::Revoked))
    );
    // Revoking a token that is not held, or on an unknown lock, is refused.
    assert_eq!(
        state.revoke(&name("m"), a.token, T0 + 7 + DELAY),
        Err(TokenError::HolderNotFound)
    );
    assert_eq!(
        state.revoke(&name("nope"), lease.token, T0 + 7 + DELAY),
        Err(TokenError::LockNotFound)
    );
}

#[test]
fn expiry_ends_an_unrenewed_lease_and_starts_the_lock_delay() {
    let mut state = State::new(config(), T0);
    let a = granted(state.acquire(req("m", "a", 1), T0));
    let b = queued(state.acquire(queue("m", "b", 2), T0));
    // Renewed once, to T0 + 400 + 1000; then the holder goes quiet.
    let renewed = state.renew(a.id, None, T0 + 400).unwrap();
    assert_eq!(renewed.expires_at, T0 + 1_400);
    state.tick(T0 + 1_399);
    assert!(state.lease(a.id).is_some());
    state.tick(T0 + 1_400);
    assert!(state.lease(a.id).is_none());
    assert_eq!(
        state.renew(a.id, None, T0 + 1_401),
        Err(LeaseError::Ended(LeaseEnd::Expired))
    );
    assert_eq!(
        position_of(state.wait_ticket(b.ticket.id, None, T0 + 1_400)),
        1
    );
    state.tick(T0 + 1_400 + DELAY);
    lease_of(state.wait_ticket(b.ticket.id, None, T0 + 1_400 + DELAY));
}

#[test]
fn renew_never_shortens_a_deadline() {
    let mut state = State::new(config(), T0);
    let a = granted(state.acquire(
        Acquire {
            ttl_ms: 10_000,
            ..req("m", "a", 1)
        },
        T0,
    ));
    // A shorter ttl applies from the next renewal on, but the promised deadline stays.
    let renewed = state.renew(a.id, Some(600), T0 + 100).unwrap();
    assert_eq!((renewed.ttl_ms, renewed.expires_at), (600, T0 + 10_000));
    // The new ttl is persisted (a restart lengthens by the ttl it finds).
    assert!(
        state
            .drain_changes()
            .iter()
            .any(|c| matches!(c, Change::LeasePut(l) if l.id == a.id && l.ttl_ms == 600))
    );
    let renewed = state.renew(a.id, None, T0 + 9_900).unwrap();
    assert_eq!(renewed.expires_at, T0 + 10_500);
    assert_eq!(
        state.renew(a.id, Some(100), T0 + 9_900),
        Err(LeaseError::InvalidTtl)
    );
    assert_eq!(
        state.renew(LeaseId([9; 16]), None, T0),
        Err(LeaseError::NotFound)
    );
}

// --- tickets ----------------------------------------------------------------------------------

#[test]
fn unwaited_tickets_lapse_and_leave_the_queue() {
    let mut state = State::new(config(), T0);
    granted(state.acquire(req("m", "a", 1), T0));
    let b = queued(state.acquire(
        Acquire {
            request_id: Some("b-1".into()),
            ..queue("m", "b", 2)
        },
        T0,
    ));
    let c = queued(state.acquire(queue("m", "c", 3), T0));
    assert_eq!(b.ticket.lapse_at, T0 + LAPSE);
    // c's waiter keeps waiting; b's does not.
    let kept = T0 + 2 * LAPSE;
    assert_eq!(
        position_of(state.wait_ticket(c.ticket.id, Some(kept), T0 + 1)),
        2
    );
    state.tick(T0 + LAPSE - 1);
    assert_eq!(
        position_of(state.wait_ticket(c.ticket.id, Some(kept), T0 + LAPSE - 1)),
        2
    );
    state.drain_wakeups();
    state.tick(T0 + LAPSE);
    assert_eq!(state.drain_wakeups(), vec![b.ticket.id]);
    assert_eq!(
        state.wait_ticket(b.ticket.id, None, T0 + LAPSE),
        Err(TicketError::Lapsed)
    );
    assert_eq!(
        position_of(state.wait_ticket(c.ticket.id, Some(kept), T0 + LAPSE)),
        1
    );
    // A retry of b's request hears that its ticket lapsed; it does not queue again.
    assert_eq!(
        state.acquire(
            Acquire {
                request_id: Some("b-1".into()),
                ..queue("m", "b", 4)
            },
            T0 + LAPSE
        ),
        Err(AcquireError::TicketEnded(TicketEnd::Lapsed))
    );
    assert_eq!(state.lock(&name("m")).unwrap().waiters.len(), 1);
    // A wait without keep_until keeps the ticket for one lapse period from now.
    let status = state.wait_ticket(c.ticket.id, None, kept - 1);
    assert!(matches!(status, Ok(TicketStatus::Queued(q)) if q.ticket.lapse_at == kept - 1 + LAPSE));
    assert_eq!(
        state.wait_ticket(TicketId([77; 16]), None, kept),
        Err(TicketError::NotFound)
    );
}

#[test]
fn cancel_of_a_granted_but_uncollected_ticket_releases_its_lease() {
    let mut state = State::new(config(), T0);
    let a = granted(state.acquire(req("m", "a", 1), T0));
    let b = queued(state.acquire(queue("m", "b", 2), T0));
    let c = queued(state.acquire(queue("m", "c", 3), T0));
    state.release(a.id, T0 + 1).unwrap();
    // b is granted, but its waiter gave up before a wait collected the lease.
    let b_token = holders(&state, "m")[0];
    assert_eq!(
        state.cancel_ticket(b.ticket.id, false, T0 + 2),
        Ok(Cancelled::ReleasedUncollected)
    );
    // Released cleanly: c is served at once, and history says how b's hold ended.
    let c_lease = lease_of(state.wait_ticket(c.ticket.id, None, T0 + 2));
    assert!(c_lease.token > b_token);
    let history = state.history(&name("m"), 1, T0 + 2);
    assert_eq!(
        (history[0].token, history[0].end),
        (b_token, LeaseEnd::Released)
    );
    assert_eq!(
        state.wait_ticket(b.ticket.id, None, T0 + 3),
        Err(TicketError::Cancelled)
    );
    assert_eq!(
        state.cancel_ticket(b.ticket.id, false, T0 + 3),
        Ok(Cancelled::NotCancelled(TicketEnd::Cancelled))
    );
    // Once collected, cancel leaves the lease alone: release it instead.
    assert_eq!(
        state.cancel_ticket(c.ticket.id, false, T0 + 4),
        Ok(Cancelled::NotCancelled(TicketEnd::Granted(c_lease.id)))
    );
    assert!(state.lease(c_lease.id).is_some());
}

// --- waiters that went away (issue 10, part 3) --------------------------------------------------

#[test]
fn departed_waiter_is_skipped_and_the_next_live_waiter_granted_on_release() {
    let mut state = State::new(config(), T0);
    let a = granted(state.acquire(req("m", "a", 1), T0));
    let b = queued(state.acquire(queue("m", "b", 2), T0));
    let c = queued(state.acquire(queue("m", "c", 3), T0));
    // b's waiter was parked until T0 + 60 s; its connection closes at T0 + 100.
    position_of(state.wait_ticket(b.ticket.id, Some(T0 + 60_000 + LAPSE), T0));
    assert_eq!(
        state.waiter_left(b.ticket.id, false, T0 + 100),
        WaiterLeft::Lapsing(T0 + 100 + LAPSE)
    );
    state.check_invariants();
    // The release hands the lock to c, not to the departed b, in the same transition, cleanly.
    state.release(a.id, T0 + 200).unwrap();
    state.check_invariants();
    let view = state.lock(&name("m")).unwrap();
    assert_eq!(
        view.holders
            .iter()
            .map(|l| l.owner.as_str())
            .collect::<Vec<_>>(),
        ["c"]
    );
    assert!(
        view.waiters.is_empty(),
        "the departed waiter is still listed"
    );
    assert!(view.delayed_until.is_none());
    lease_of(state.wait_ticket(c.ticket.id, None, T0 + 200));
    assert_eq!(
        state.wait_ticket(b.ticket.id, None, T0 + 201),
        Err(TicketError::Lapsed)
    );
}

#[test]
fn departed_waiter_lapses_one_lapse_after_it_left_not_after_its_wait() {
    let mut state = State::new(config(), T0);
    let _a = granted(state.acquire(req("m", "a", 1), T0));
    let b = queued(state.acquire(queue("m", "b", 2), T0));
    position_of(state.wait_ticket(b.ticket.id, Some(T0 + 60_000 + LAPSE), T0));
    state.waiter_left(b.ticket.id, false, T0 + 300);
    state.tick(T0 + 300 + LAPSE - 1);
    assert_eq!(state.lock(&name("m")).unwrap().waiters.len(), 1);
    state.tick(T0 + 300 + LAPSE);
    assert!(state.lock(&name("m")).unwrap().waiters.is_empty());
    assert_eq!(
        state.wait_ticket(b.ticket.id, None, T0 + 300 + LAPSE),
        Err(TicketError::Lapsed)
    );
}

#[test]
fn departed_waiter_that_comes_back_in_time_keeps_its_place_and_is_granted() {
    let mut state = State::new(config(), T0);
    let a = granted(state.acquire(req("m", "a", 1), T0));
    let b = queued(state.acquire(queue("m", "b", 2), T0));
    let _c = queued(state.acquire(queue("m", "c", 3), T0));
    state.waiter_left(b.ticket.id, false, T0 + 100);
    // It reconnects (a retry, a fail-over) before the lock is handed on: still first.
    assert_eq!(
        position_of(state.wait_ticket(b.ticket.id, Some(T0 + 30_000), T0 + 150)),
        1
    );
    state.release(a.id, T0 + 200).unwrap();
    let lease = lease_of(state.wait_ticket(b.ticket.id, None, T0 + 200));
    assert_eq!(lease.owner, "b");
    state.check_invariants();
}

#[test]
fn departed_waiter_with_an_undelivered_grant_hands_the_lock_on_cleanly() {
    let mut state = State::new(config(), T0);
    let a = granted(state.acquire(req("m", "a", 1), T0));
    let b = queued(state.acquire(queue("m", "b", 2), T0));
    let c = queued(state.acquire(queue("m", "c", 3), T0));
    state.release(a.id, T0 + 1).unwrap();
    // b was granted while parked, but its connection closed before the grant was answered.
    assert_eq!(holders(&state, "m").len(), 1);
    assert_eq!(
        state.waiter_left(b.ticket.id, false, T0 + 2),
        WaiterLeft::ReleasedUndelivered
    );
    state.check_invariants();
    let c_lease = lease_of(state.wait_ticket(c.ticket.id, None, T0 + 2));
    assert_eq!(
        c_lease.granted_at,
        T0 + 2,
        "no lock-delay after an undelivered grant"
    );
    let history = state.history(&name("m"), 1, T0 + 2);
    assert_eq!(
        (history[0].owner.as_str(), history[0].end),
        ("b", LeaseEnd::Released)
    );
    assert_eq!(
        state.wait_ticket(b.ticket.id, None, T0 + 3),
        Err(TicketError::Lapsed)
    );
}

#[test]
fn departed_waiter_that_had_collected_its_grant_releases_it_only_if_it_says_so() {
    let mut state = State::new(config(), T0);
    let a = granted(state.acquire(req("m", "a", 1), T0));
    let b = queued(state.acquire(queue("m", "b", 2), T0));
    state.release(a.id, T0 + 1).unwrap();
    let b_lease = lease_of(state.wait_ticket(b.ticket.id, None, T0 + 1));
    // Another wait collected (and delivered) it: a departure elsewhere leaves it alone.
    assert_eq!(
        state.waiter_left(b.ticket.id, false, T0 + 2),
        WaiterLeft::Nothing
    );
    assert!(state.lease(b_lease.id).is_some());
    // The departing wait collected it itself and never answered: released.
    assert_eq!(
        state.waiter_left(b.ticket.id, true, T0 + 3),
        WaiterLeft::ReleasedUndelivered
    );
    assert!(state.lease(b_lease.id).is_none());
    assert!(state.lock(&name("m")).unwrap().holders.is_empty());
}

#[test]
fn departed_waiter_survives_a_restart_as_a_waiter_that_may_come_back() {
    let mut state = State::new(config(), T0);
    let mut disk = Disk::default();
    let a = granted(state.acquire(req("m", "a", 1), T0));
    let b = queued(state.acquire(queue("m", "b", 2), T0));
    state.waiter_left(b.ticket.id, false, T0 + 1);
    restart(&mut state, &mut disk, T0 + 10);
    state.release(a.id, T0 + 20).unwrap();
    // After a restart every waiter gets a fresh lapse to reconnect; b is granted.
    assert_eq!(
        lease_of(state.wait_ticket(b.ticket.id, None, T0 + 21)).owner,
        "b"
    );
}

// --- lock-delay of a semaphore (issue 10, "Also") -----------------------------------------------

#[test]
fn semaphore_lock_delay_holds_back_only_the_expired_slot() {
    let mut state = State::new(config(), T0);
    let sem = |owner: &str, n: u8| Acquire {
        capacity: Some(3),
        ..req("sem", owner, n)
    };
    let a = granted(state.acquire(sem("a", 1), T0));
    let _b = granted(state.acquire(sem("b", 2), T0 + 500));
    // a stops renewing and expires at T0 + 1000 (ttl 1 s); b is renewed.
    state.renew(_b.id, None, T0 + 900).unwrap();
    state.tick(T0 + 1_000);
    assert!(state.lease(a.id).is_none());
    // Two free slots, one of them delayed: the other is granted at once, the third is not.
    let c = granted(state.acquire(sem("c", 3), T0 + 1_001));
    assert_eq!(c.granted_at, T0 + 1_001);
    busy(state.acquire(sem("d", 4), T0 + 1_002));
    let e = queued(state.acquire(
        Acquire {
            queue: true,
            ..sem("e", 5)
        },
        T0 + 1_003,
    ));
    state.check_invariants();
    // A clean release of b frees a slot that is not delayed: e is served at once.
    state.release(_b.id, T0 + 1_100).unwrap();
    assert_eq!(
        lease_of(state.wait_ticket(e.ticket.id, None, T0 + 1_100)).granted_at,
        T0 + 1_100
    );
    // The expired slot comes back when the lock-delay ends.
    busy(state.acquire(sem("f", 6), T0 + 1_999));
    state.tick(T0 + 2_000);
    granted(state.acquire(sem("f", 7), T0 + 2_000));
    state.check_invariants();
}

#[test]
fn semaphore_lock_delay_of_two_unclean_ends_holds_back_two_slots() {
    let mut state = State::new(config(), T0);
    let sem = |owner: &str, n: u8| Acquire {
        capacity: Some(3),
        ..req("sem", owner, n)
    };
    let a = granted(state.acquire(sem("a", 1), T0));
    let b = granted(state.acquire(sem("b", 2), T0));
    state.revoke(&name("sem"), a.token, T0 + 10).unwrap();
    state.revoke(&name("sem"), b.token, T0 + 20).unwrap();
    granted(state.acquire(sem("c", 3), T0 + 30));
    busy(state.acquire(sem("d", 4), T0 + 31));
    state.tick(T0 + 20 + DELAY);
    granted(state.acquire(sem("d", 5), T0 + 20 + DELAY));
    granted(state.acquire(sem("e", 6), T0 + 20 + DELAY));
    state.check_invariants();
}

/// Found by the model test: lowering an idle lock's capacity during a lock-delay and raising it
/// again forgot the held-back slots, so a slot was granted while the holders whose leases had
/// just been revoked might still run.
#[test]
fn a_capacity_changed_during_a_lock_delay_keeps_its_slots_held_back() {
    let mut state = State::new(config(), T0);
    let with = |owner: &str, n: u8, capacity: u32| Acquire {
        capacity: Some(capacity),
        ..req("sem", owner, n)
    };
    let a = granted(state.acquire(with("a", 1, 2), T0));
    let b = granted(state.acquire(with("b", 2, 2), T0));
    state.revoke(&name("sem"), a.token, T0 + 10).unwrap();
    state.revoke(&name("sem"), b.token, T0 + 10).unwrap();
    // Idle now, so its capacity may change: down to 1, then back up to 2.
    busy(state.acquire(with("c", 3, 1), T0 + 20));
    busy(state.acquire(with("d", 4, 2), T0 + 30));
    state.check_invariants();
    state.tick(T0 + 10 + DELAY);
    granted(state.acquire(with("d", 5, 2), T0 + 10 + DELAY));
    state.check_invariants();
}

/// Found by the model test once read-write locks landed: two readers of a capacity-1 lock
/// revoked together held back one slot only (the count was capped by the capacity), so raising
/// the idle lock's capacity to 2 during the delay let a writer in beside two readers that may
/// still run.
#[test]
fn two_unclean_shared_ends_hold_back_two_slots_when_the_capacity_is_raised() {
    let mut state = State::new(config(), T0);
    let shared = |owner: &str, n: u8| Acquire {
        mode: Mode::Shared,
        ..req("rw", owner, n)
    };
    let a = granted(state.acquire(shared("a", 1), T0));
    let b = granted(state.acquire(shared("b", 2), T0));
    state.revoke(&name("rw"), a.token, T0 + 10).unwrap();
    state.revoke(&name("rw"), b.token, T0 + 10).unwrap();
    // Idle, so its capacity may change; both slots of the raised capacity stay held back.
    let writer = |n: u8| Acquire {
        capacity: Some(2),
        ..req("rw", "w", n)
    };
    busy(state.acquire(writer(3), T0 + 20));
    state.check_invariants();
    state.tick(T0 + 10 + DELAY);
    granted(state.acquire(writer(4), T0 + 10 + DELAY));
    state.check_invariants();
}

#[test]
fn cancel_with_forget_request_lets_a_retry_acquire_afresh() {
    let mut state = State::new(config(), T0);
    let a = granted(state.acquire(req("m", "a", 1), T0));
    let with_id = |n: u8, id: &str| Acquire {
        request_id: Some(id.into()),
        ..queue("m", "b", n)
    };
    // Without forgetting, a retry hears that its ticket was cancelled.
    let first = queued(state.acquire(with_id(2, "kept"), T0));
    assert_eq!(
        state.cancel_ticket(first.ticket.id, false, T0),
        Ok(Cancelled::Cancelled)
    );
    assert_eq!(
        state.acquire(with_id(3, "kept"), T0),
        Err(AcquireError::TicketEnded(TicketEnd::Cancelled))
    );
    // Forgetting: the same request id queues again, as a new ticket, and is served.
    let first = queued(state.acquire(with_id(4, "forgotten"), T0));
    assert_eq!(
        state.cancel_ticket(first.ticket.id, true, T0),
        Ok(Cancelled::Cancelled)
    );
    let again = queued(state.acquire(with_id(5, "forgotten"), T0 + 1));
    assert_eq!(again.ticket.id, TicketId([5; 16]));
    assert_eq!(again.position, 1);
    state.release(a.id, T0 + 2).unwrap();
    let lease = lease_of(state.wait_ticket(again.ticket.id, None, T0 + 2));
    // And now the request id stands for that lease.
    assert_eq!(
        granted(state.acquire(with_id(6, "forgotten"), T0 + 3)).id,
        lease.id
    );
}

// --- idempotency --------------------------------------------------------------------------------

#[test]
fn retried_request_returns_the_same_lease_or_ticket() {
    let mut state = State::new(config(), T0);
    let ask = |n: u8, lock: &str, id: &str| Acquire {
        request_id: Some(id.into()),
        ..queue(lock, "a", n)
    };
    let a = granted(state.acquire(ask(1, "m", "r1"), T0));
    let again = granted(state.acquire(ask(2, "m", "r1"), T0 + 1));
    assert_eq!((again.id, again.token), (a.id, a.token));
    let b = queued(state.acquire(ask(3, "m", "r2"), T0 + 1));
    let again = queued(state.acquire(ask(4, "m", "r2"), T0 + 2));
    assert_eq!(again.ticket.id, b.ticket.id);
    // The same id on another lock is a conflict, not a new lease.
    assert_eq!(
        state.acquire(ask(5, "other", "r1"), T0 + 2),
        Err(AcquireError::RequestIdConflict { lock: name("m") })
    );
    assert!(state.lock(&name("other")).is_none());
    // Once the ticket is granted, its request id stands for the lease.
    state.release(a.id, T0 + 3).unwrap();
    let b_lease = granted(state.acquire(ask(6, "m", "r2"), T0 + 3));
    assert_eq!(b_lease.id, LeaseId([3; 16]));
    // Once a lease ended, a retry hears how, and gets no second lease; also a lease that came
    // through a ticket.
    assert_eq!(
        state.acquire(ask(7, "m", "r1"), T0 + 4),
        Err(AcquireError::LeaseEnded(LeaseEnd::Released))
    );
    assert_eq!(state.counts(), (1, 1, 0));
    state.release(b_lease.id, T0 + 5).unwrap();
    assert_eq!(
        state.acquire(ask(8, "m", "r2"), T0 + 6),
        Err(AcquireError::LeaseEnded(LeaseEnd::Released))
    );
    assert_eq!(state.counts(), (1, 0, 0));
}

#[test]
fn request_ids_of_live_leases_and_tickets_survive_a_restart() {
    let mut state = State::new(config(), T0);
    let mut disk = Disk::default();
    let ask = |n: u8, id: &str| Acquire {
        request_id: Some(id.into()),
        ..queue("m", "a", n)
    };
    let a = granted(state.acquire(ask(1, "r1"), T0));
    let b = queued(state.acquire(ask(2, "r2"), T0));
    restart(&mut state, &mut disk, T0 + 100);
    assert_eq!(granted(state.acquire(ask(3, "r1"), T0 + 100)).id, a.id);
    assert_eq!(
        queued(state.acquire(ask(4, "r2"), T0 + 100)).ticket.id,
        b.ticket.id
    );
    assert_eq!(state.counts(), (1, 1, 1));
}

#[test]
fn owner_key_returns_the_lease_already_held() {
    let mut state = State::new(config(), T0);
    let keyed = |n: u8, key: &str| Acquire {
        owner_key: Some(key.into()),
        capacity: Some(2),
        ..queue("m", "a", n)
    };
    let a = granted(state.acquire(keyed(1, "job-7"), T0));
    assert_eq!(granted(state.acquire(keyed(2, "job-7"), T0 + 1)).id, a.id);
    // Another key gets the second slot, a third key queues; its key then finds its ticket.
    let b = granted(state.acquire(keyed(3, "job-8"), T0 + 1));
    assert_ne!(b.id, a.id);
    let c = queued(state.acquire(keyed(4, "job-9"), T0 + 2));
    assert_eq!(
        queued(state.acquire(keyed(5, "job-9"), T0 + 3)).ticket.id,
        c.ticket.id
    );
    assert_eq!(state.counts(), (1, 2, 1));
}

/// Bug: an acquire answered with the lease its owner key already held did not remember its
/// request id, so a retry after that lease ended was granted a second lease (G7).
#[test]
fn reentrant_acquire_remembers_its_request_id() {
    let mut state = State::new(config(), T0);
    let keyed = |n: u8, id: &str| Acquire {
        owner_key: Some("job-7".into()),
        request_id: Some(id.into()),
        ..req("m", "a", n)
    };
    let a = granted(state.acquire(keyed(1, "first"), T0));
    assert_eq!(granted(state.acquire(keyed(2, "second"), T0 + 1)).id, a.id);
    state.release(a.id, T0 + 2).unwrap();
    let next_token = state.next_token();
    assert_eq!(
        state.acquire(keyed(3, "second"), T0 + 3),
        Err(AcquireError::LeaseEnded(LeaseEnd::Released))
    );
    assert_eq!(state.counts().1, 0, "a retry got a second lease");
    assert_eq!(state.next_token(), next_token);

    // The same for a key that waits in the queue.
    let b = granted(state.acquire(req("m", "b", 4), T0 + 4));
    let mut waiting = keyed(5, "third");
    waiting.queue = true;
    let ticket = queued(state.acquire(waiting, T0 + 4));
    let again = queued(state.acquire(keyed(6, "fourth"), T0 + 5));
    assert_eq!(again.ticket.id, ticket.ticket.id);
    state
        .cancel_ticket(ticket.ticket.id, false, T0 + 6)
        .unwrap();
    state.release(b.id, T0 + 6).unwrap();
    assert_eq!(
        state.acquire(keyed(7, "fourth"), T0 + 7),
        Err(AcquireError::TicketEnded(TicketEnd::Cancelled))
    );
    assert_eq!(state.counts().1, 0, "a retry got a second lease");
}

// --- fencing ------------------------------------------------------------------------------------

#[test]
fn fence_refuses_a_token_older_than_a_newer_grant() {
    let mut state = State::new(config(), T0);
    let a = granted(state.acquire(req("m", "a", 1), T0));
    assert_eq!(state.fence(&name("m"), a.token, T0), Ok(a.token));
    state.release(a.id, T0 + 1).unwrap();
    // Released but nothing newer yet: still the newest seen.
    assert_eq!(state.fence(&name("m"), a.token, T0 + 1), Ok(a.token));
    let b = granted(state.acquire(req("m", "b", 2), T0 + 2));
    assert_eq!(
        state.fence(&name("m"), a.token, T0 + 3),
        Err(TokenError::Stale { newest: b.token })
    );
    assert_eq!(state.fence(&name("m"), b.token, T0 + 3), Ok(b.token));
}

#[test]
fn fence_accepts_every_live_holder_of_a_semaphore() {
    let mut state = State::new(config(), T0);
    let two = |a: Acquire| Acquire {
        capacity: Some(2),
        ..a
    };
    let a = granted(state.acquire(two(req("s", "a", 1)), T0));
    let b = granted(state.acquire(two(req("s", "b", 2)), T0));
    assert!(a.token < b.token);
    assert_eq!(state.fence(&name("s"), b.token, T0), Ok(b.token));
    // a is older, but still a holder: accepted.
    assert_eq!(state.fence(&name("s"), a.token, T0), Ok(b.token));
    state.release(a.id, T0 + 1).unwrap();
    assert_eq!(
        state.fence(&name("s"), a.token, T0 + 1),
        Err(TokenError::Stale { newest: b.token })
    );
}

#[test]
fn fence_says_unknown_for_tokens_never_granted_on_the_lock() {
    let mut state = State::new(config(), T0);
    let a = granted(state.acquire(req("m", "a", 1), T0));
    let other = granted(state.acquire(req("other", "b", 2), T0));
    assert!(other.token > a.token);
    assert_eq!(state.fence(&name("m"), 0, T0), Err(TokenError::Unknown));
    // Granted on another lock, after every grant on this one.
    assert_eq!(
        state.fence(&name("m"), other.token, T0),
        Err(TokenError::Unknown)
    );
    // Never granted at all.
    assert_eq!(
        state.fence(&name("m"), state.next_token(), T0),
        Err(TokenError::Unknown)
    );
    assert_eq!(
        state.fence(&name("never"), a.token, T0),
        Err(TokenError::Unknown)
    );
    // Refusals change nothing: a's token is still the newest of its lock.
    assert_eq!(state.fence(&name("m"), a.token, T0), Ok(a.token));
}

#[test]
fn fence_refuses_old_tokens_of_a_forgotten_lock() {
    let mut state = State::new(config(), T0);
    let mut disk = Disk::default();
    let old = granted(state.acquire(req("old", "a", 1), T0));
    state.release(old.id, T0 + 1).unwrap();
    let keep = granted(state.acquire(req("busy", "b", 2), T0 + 1));
    disk.apply_all(&state.drain_changes());
    state.tick(T0 + IDLE);
    assert!(state.lock(&name("old")).is_some(), "forgotten too early");
    state.tick(T0 + 1 + IDLE);
    assert!(state.lock(&name("old")).is_none());
    assert!(state.locks(None, 10).iter().all(|v| v.name != name("old")));
    let changes = state.drain_changes();
    assert!(changes.contains(&Change::LockForget(name("old"))));
    assert!(changes.iter().any(|c| matches!(
        c,
        Change::Counters { forgotten_token_floor, .. } if *forgotten_token_floor >= old.token
    )));
    disk.apply_all(&changes);
    assert_eq!(
        state.fence(&name("old"), old.token, T0 + 2 + IDLE),
        Err(TokenError::Stale { newest: old.token })
    );
    // Also after a restart.
    restart(&mut state, &mut disk, T0 + 3 + IDLE);
    assert_eq!(
        state.fence(&name("old"), old.token, T0 + 3 + IDLE),
        Err(TokenError::Stale { newest: old.token })
    );
    assert_eq!(
        state.fence(&name("old"), 0, T0 + 3 + IDLE),
        Err(TokenError::Unknown)
    );
    // Recreated, the lock grants a token above every one before; the old one stays stale.
    let again = granted(state.acquire(req("old", "c", 3), T0 + 4 + IDLE));
    assert!(again.token > keep.token);
    assert_eq!(
        state.fence(&name("old"), old.token, T0 + 4 + IDLE),
        Err(TokenError::Stale {
            newest: again.token
        })
    );
}

// --- history ------------------------------------------------------------------------------------

#[test]
fn history_records_end_reasons_newest_first() {
    let mut state = State::new(config(), T0);
    let a = granted(state.acquire(req("m", "a", 1), T0));
    state.release(a.id, T0 + 100).unwrap();
    let b = granted(state.acquire(req("m", "b", 2), T0 + 200));
    state.tick(b.expires_at);
    let c = granted(state.acquire(req("m", "c", 3), b.expires_at + DELAY));
    state
        .revoke(&name("m"), c.token, c.granted_at + 50)
        .unwrap();
    let now = c.granted_at + 60;
    let history = state.history(&name("m"), 10, now);
    let summary: Vec<_> = history
        .iter()
        .map(|r| (r.owner.as_str(), r.token, r.granted_at, r.ended_at, r.end))
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "c",
                c.token,
                c.granted_at,
                c.granted_at + 50,
                LeaseEnd::Revoked
            ),
            ("b", b.token, T0 + 200, b.expires_at, LeaseEnd::Expired),
            ("a", a.token, T0, T0 + 100, LeaseEnd::Released),
        ]
    );
    assert_eq!(state.history(&name("m"), 2, now), history[..2].to_vec());
    assert!(state.history(&name("other"), 10, now).is_empty());
}

#[test]
fn history_survives_a_restart_and_is_pruned_after_retention() {
    let config = Config {
        history_retention_ms: 50_000,
        ..config()
    };
    let mut state = State::new(config, T0);
    let mut disk = Disk::default();
    let a = granted(state.acquire(req("m", "a", 1), T0));
    state.release(a.id, T0 + 10).unwrap();
    restart(&mut state, &mut disk, T0 + 20);
    let history = state.history(&name("m"), 10, T0 + 20);
    assert_eq!(history.len(), 1);
    assert_eq!(
        (history[0].token, history[0].end),
        (a.token, LeaseEnd::Released)
    );
    // Past retention it is no longer listed, and housekeeping tells the store to drop it.
    assert!(state.history(&name("m"), 10, T0 + 10 + 50_001).is_empty());
    state.tick(T0 + 100_000);
    disk.apply_all(&state.drain_changes());
    assert!(disk.history.is_empty());
}

// --- limits ---------------------------------------------------------------------------------------

#[test]
fn limits_are_refused_with_limit_reached() {
    let config = Config {
        waiters_per_lock_max: 2,
        waiters_total_max: 3,
        locks_max: 2,
        ..config()
    };
    let mut state = State::new(config, T0);
    granted(state.acquire(req("a", "h", 1), T0));
    queued(state.acquire(queue("a", "w1", 2), T0));
    queued(state.acquire(queue("a", "w2", 3), T0));
    assert_eq!(
        state.acquire(queue("a", "w3", 4), T0),
        Err(AcquireError::LimitReached("too many waiters on this lock"))
    );
    // A try on a full queue is still just busy.
    busy(state.acquire(req("a", "w3", 5), T0));
    granted(state.acquire(req("b", "h", 6), T0));
    queued(state.acquire(queue("b", "w1", 7), T0));
    assert_eq!(
        state.acquire(queue("b", "w2", 8), T0),
        Err(AcquireError::LimitReached("too many waiters"))
    );
    assert_eq!(
        state.acquire(req("c", "h", 9), T0),
        Err(AcquireError::LimitReached("too many locks"))
    );
    assert!(state.lock(&name("c")).is_none());
    assert_eq!(state.counts(), (2, 2, 3));
    state.check_invariants();
}

#[test]
fn a_lease_limit_refuses_without_keeping_the_new_lock() {
    let config = Config {
        leases_total_max: 1,
        idle_lock_retention_ms: 1_000,
        ..config()
    };
    let mut state = State::new(config, T0);
    granted(state.acquire(req("a", "h", 1), T0));
    assert_eq!(
        state.acquire(req("b", "h", 2), T0),
        Err(AcquireError::LimitReached("too many leases"))
    );
    // The lock created on the way is forgotten in time.
    state.tick(T0 + 1_000);
    assert!(state.lock(&name("b")).is_none());
}

// --- restore ------------------------------------------------------------------------------------

fn stored_lease(lock: &str, token: u64, ttl_ms: u64, expires_at: u64) -> Lease {
    Lease {
        mode: Default::default(),
        value: None,
        api_key: None,
        id: LeaseId([token as u8; 16]),
        lock: name(lock),
        owner: "a".into(),
        owner_key: None,
        token,
        ttl_ms,
        granted_at: T0,
        expires_at,
        request_id: None,
        ticket: None,
    }
}

fn stored_lock(lock: &str, capacity: u32, newest: u64) -> LockRecord {
    LockRecord {
        api_key: None,
        name: name(lock),
        capacity,
        newest_token: newest,
        newest_granted: newest,
        delayed_until: None,
        delayed_slots: 0,
    }
}

#[test]
fn restore_rejects_a_token_at_or_above_next_token() {
    let snapshot = Snapshot {
        next_token: 5,
        locks: vec![stored_lock("m", 1, 4)],
        leases: vec![stored_lease("m", 5, 1_000, T0 + 1_000)],
        ..Snapshot::default()
    };
    assert!(State::restore(config(), snapshot.clone(), T0).is_err());
    // A lock record that saw a future token is refused as well.
    let lock_ahead = Snapshot {
        next_token: 5,
        locks: vec![stored_lock("m", 1, 5)],
        ..Snapshot::default()
    };
    assert!(State::restore(config(), lock_ahead, T0).is_err());
    // More holders than capacity is refused.
    let crowded = Snapshot {
        next_token: 9,
        locks: vec![stored_lock("m", 1, 6)],
        leases: vec![
            stored_lease("m", 5, 1_000, T0 + 1_000),
            stored_lease("m", 6, 1_000, T0 + 1_000),
        ],
        ..Snapshot::default()
    };
    assert!(State::restore(config(), crowded, T0).is_err());
    // With the counter above it, the same lease is restored and the next grant is above both.
    let mut state = State::restore(
        config(),
        Snapshot {
            next_token: 6,
            ..snapshot
        },
        T0,
    )
    .unwrap();
    state.check_invariants();
    assert_eq!(holders(&state, "m"), vec![5]);
    assert_eq!(granted(state.acquire(req("n", "b", 1), T0)).token, 6);
}

#[test]
fn restore_lengthens_leases_to_now_plus_ttl_and_never_shortens() {
    let snapshot = Snapshot {
        next_token: 3,
        locks: vec![stored_lock("m", 2, 2)],
        leases: vec![
            // Would have expired during the downtime: renewed as of the restart.
            stored_lease("m", 1, 800, T0 + 1_000),
            // Promised beyond now + ttl: kept.
            stored_lease("m", 2, 800, T0 + 9_000),
        ],
        ..Snapshot::default()
    };
    let now = T0 + 5_000;
    let mut state = State::restore(config(), snapshot, now).unwrap();
    state.check_invariants();
    let expiries: Vec<u64> = state
        .lock(&name("m"))
        .unwrap()
        .holders
        .iter()
        .map(|l| l.expires_at)
        .collect();
    assert_eq!(expiries, vec![now + 800, T0 + 9_000]);
    state.tick(now + 799);
    assert_eq!(holders(&state, "m"), vec![1, 2]);
    state.tick(now + 800);
    assert_eq!(holders(&state, "m"), vec![2]);
}

#[test]
fn wait_on_a_ticket_granted_before_a_restart_returns_its_lease() {
    let mut state = State::new(config(), T0);
    let mut disk = Disk::default();
    let a = granted(state.acquire(req("m", "a", 1), T0));
    let b = queued(state.acquire(queue("m", "b", 2), T0));
    let c = queued(state.acquire(queue("m", "c", 3), T0));
    let d = queued(state.acquire(queue("m", "d", 4), T0));
    state.release(a.id, T0 + 1).unwrap();
    let b_token = holders(&state, "m")[0];
    restart(&mut state, &mut disk, T0 + 2_000);
    // b's lease was granted before the restart and never collected: a wait returns it.
    let lease = lease_of(state.wait_ticket(b.ticket.id, None, T0 + 2_000));
    assert_eq!((lease.id, lease.token), (b.ticket.lease_id, b_token));
    assert_eq!(lease.expires_at, T0 + 2_000 + 1_000);
    // The queue kept its order, and its tickets a fresh lapse period.
    let waiters: Vec<(TicketId, u64)> = state
        .lock(&name("m"))
        .unwrap()
        .waiters
        .iter()
        .map(|t| (t.id, t.lapse_at))
        .collect();
    assert_eq!(
        waiters,
        vec![
            (c.ticket.id, T0 + 2_000 + LAPSE),
            (d.ticket.id, T0 + 2_000 + LAPSE)
        ]
    );
    // And the next grant is above every token before the restart.
    state.release(lease.id, T0 + 2_001).unwrap();
    let c_lease = lease_of(state.wait_ticket(c.ticket.id, None, T0 + 2_001));
    assert!(c_lease.token > b_token);
}

/// Bug: a restart during a lock-delay did not look at the lock again when the delay ended, so
/// its queue was never served (and `check_invariants` failed after the next tick).
#[test]
fn restore_during_lock_delay_serves_the_queue_when_the_delay_ends() {
    let mut state = State::new(config(), T0);
    let mut disk = Disk::default();
    let a = granted(state.acquire(req("m", "a", 1), T0));
    let b = queued(state.acquire(queue("m", "b", 2), T0));
    state.revoke(&name("m"), a.token, T0 + 10).unwrap();
    restart(&mut state, &mut disk, T0 + 20);
    assert_eq!(
        state.lock(&name("m")).unwrap().delayed_until,
        Some(T0 + 10 + DELAY)
    );
    assert_eq!(state.next_deadline(), Some(T0 + 10 + DELAY));
    state.tick(T0 + 10 + DELAY);
    state.check_invariants();
    let lease = lease_of(state.wait_ticket(b.ticket.id, None, T0 + 10 + DELAY));
    assert_eq!(lease.granted_at, T0 + 10 + DELAY);
}

#[test]
fn restore_after_the_lock_delay_ended_serves_the_queue_at_once() {
    let mut state = State::new(config(), T0);
    let mut disk = Disk::default();
    let a = granted(state.acquire(req("m", "a", 1), T0));
    let b = queued(state.acquire(queue("m", "b", 2), T0));
    state.revoke(&name("m"), a.token, T0).unwrap();
    restart(&mut state, &mut disk, T0 + DELAY + 5);
    let lease = lease_of(state.wait_ticket(b.ticket.id, None, T0 + DELAY + 5));
    assert_eq!(lease.granted_at, T0 + DELAY + 5);
    // The grant made on restore is itself persisted.
    assert!(disk.leases.contains_key(&lease.id));
    assert!(disk.tickets.is_empty());
}

/// Bug: with a lock-delay longer than the idle-lock retention, the check that would forget an
/// idle lock found it still delayed, scheduled itself again at the same instant, and `tick`
/// never returned.
#[test]
fn idle_check_during_a_long_lock_delay_does_not_hang_tick() {
    let config = Config {
        lock_delay_ms: 5_000,
        idle_lock_retention_ms: 1_000,
        ..config()
    };
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut state = State::new(config, T0);
        let a = granted(state.acquire(req("m", "a", 1), T0));
        state.tick(a.expires_at);
        state.tick(a.expires_at + 1_000);
        // Still delayed: kept, and a try is busy.
        assert!(state.lock(&name("m")).is_some());
        assert_eq!(
            busy(state.acquire(req("m", "b", 2), a.expires_at + 1_000)),
            vec![]
        );
        // Forgotten once the delay is over (the lock was idle long enough by then).
        state.tick(a.expires_at + 5_000);
        assert!(state.lock(&name("m")).is_none());
        done.send(()).unwrap();
    });
    finished
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("tick did not return (or the test failed: see its panic above)");
}

/// Regression: a renewal or release arriving at or after `expires_at`, before the timer's tick,
/// used to succeed: the lease outlived its deadline by the server's clock (G5).
#[test]
fn renewal_at_the_deadline_before_the_tick_hears_expired() {
    let mut state = State::new(config(), T0);
    let a = granted(state.acquire(
        Acquire {
            ttl_ms: 1_000,
            ..req("m", "a", 1)
        },
        T0,
    ));
    let b = granted(state.acquire(
        Acquire {
            ttl_ms: 1_000,
            ..req("n", "b", 2)
        },
        T0,
    ));
    let waiter = queued(state.acquire(queue("m", "w", 3), T0 + 10));
    assert_eq!(
        state.renew(a.id, None, a.expires_at),
        Err(LeaseError::Ended(LeaseEnd::Expired))
    );
    assert_eq!(
        state.release(b.id, b.expires_at),
        Ok(Released::AlreadyEnded(LeaseEnd::Expired))
    );
    assert!(state.lease(a.id).is_none() && state.lease(b.id).is_none());
    // The unclean end starts the lock-delay; the waiter is served when it ends.
    state.tick(a.expires_at + config().lock_delay_ms);
    assert_eq!(holders(&state, "m").len(), 1);
    assert!(matches!(
        state.wait_ticket(
            waiter.ticket.id,
            None,
            a.expires_at + config().lock_delay_ms
        ),
        Ok(TicketStatus::Granted(_))
    ));
    state.check_invariants();
}

/// Regression: after a restart, a retry of a request whose lease had ended got a second lease,
/// because ended request ids lived only in memory (G7).
#[test]
fn retry_after_a_restart_of_an_ended_request_hears_that_it_ended() {
    let mut state = State::new(config(), T0);
    let mut disk = common::Disk::default();
    let first = granted(state.acquire(
        Acquire {
            request_id: Some("job-42".into()),
            ..req("m", "a", 1)
        },
        T0,
    ));
    state.release(first.id, T0 + 10).unwrap();
    for change in state.drain_changes() {
        disk.apply(&change);
    }
    let mut state = State::restore(config(), disk.snapshot(), T0 + 20).unwrap();
    assert_eq!(
        state.acquire(
            Acquire {
                request_id: Some("job-42".into()),
                ..req("m", "a", 2)
            },
            T0 + 30
        ),
        Err(AcquireError::LeaseEnded(LeaseEnd::Released))
    );
    assert_eq!(
        state.renew(first.id, None, T0 + 30),
        Err(LeaseError::Ended(LeaseEnd::Released))
    );
    assert!(holders(&state, "m").is_empty(), "no second lease");
}

fn shared(acquire: Acquire) -> Acquire {
    Acquire {
        mode: Mode::Shared,
        ..acquire
    }
}

/// Read-write locks: readers share the lock; a queued writer holds back the readers that arrive
/// after it (no starvation), and when it is done the readers queued behind it are granted
/// together; a shared try never jumps the queue; every grant has its own, greater token.
#[test]
fn readers_share_and_a_queued_writer_is_never_overtaken() {
    let mut state = State::new(config(), T0);
    let r1 = granted(state.acquire(shared(req("rw", "r1", 1)), T0));
    let r2 = granted(state.acquire(shared(req("rw", "r2", 2)), T0));
    assert_eq!(r1.mode, Mode::Shared);
    assert!(r2.token > r1.token);
    let writer = queued(state.acquire(queue("rw", "w", 3), T0));
    // A reader arriving after the writer waits behind it, tried or queued.
    assert_eq!(
        busy(state.acquire(shared(req("rw", "late", 4)), T0)).len(),
        2
    );
    let r3 = queued(state.acquire(shared(queue("rw", "r3", 5)), T0));
    let r4 = queued(state.acquire(shared(queue("rw", "r4", 6)), T0));
    let w2 = queued(state.acquire(queue("rw", "w2", 7), T0));
    state.release(r1.id, T0 + 1).unwrap();
    assert_eq!(
        position_of(state.wait_ticket(writer.ticket.id, None, T0 + 1)),
        1,
        "the writer waits for the last reader"
    );
    state.release(r2.id, T0 + 2).unwrap();
    let w = lease_of(state.wait_ticket(writer.ticket.id, None, T0 + 2));
    assert_eq!(holders(&state, "rw"), vec![w.token]);
    state.release(w.id, T0 + 3).unwrap();
    // Both readers at the head are granted together; the writer behind them waits.
    let g3 = lease_of(state.wait_ticket(r3.ticket.id, None, T0 + 3));
    let g4 = lease_of(state.wait_ticket(r4.ticket.id, None, T0 + 3));
    assert_eq!(holders(&state, "rw"), vec![g3.token, g4.token]);
    assert!(g3.token > w.token && g4.token > g3.token);
    assert_eq!(
        position_of(state.wait_ticket(w2.ticket.id, None, T0 + 3)),
        1
    );
    state.check_invariants();
    let view = state.lock(&name("rw")).unwrap();
    assert!(view.holders.iter().all(|lease| lease.mode == Mode::Shared));
    state.release(g3.id, T0 + 4).unwrap();
    state.release(g4.id, T0 + 4).unwrap();
    let history = state.history(&name("rw"), 10, T0 + 4);
    assert!(history.iter().any(|record| record.mode == Mode::Exclusive));
    assert!(history.iter().any(|record| record.mode == Mode::Shared));
}

/// A lock is either a semaphore or a read-write lock: a shared acquire on a lock of capacity
/// above 1, or asking for one, is refused and changes nothing.
#[test]
fn shared_mode_on_a_semaphore_is_a_mode_conflict() {
    let mut state = State::new(config(), T0);
    let asking = Acquire {
        capacity: Some(2),
        ..shared(req("sem", "r", 1))
    };
    assert_eq!(
        state.acquire(asking, T0),
        Err(AcquireError::ModeConflict { capacity: 2 })
    );
    assert!(state.lock(&name("sem")).is_none(), "nothing was created");
    granted(state.acquire(
        Acquire {
            capacity: Some(3),
            ..req("sem", "a", 2)
        },
        T0,
    ));
    assert_eq!(
        state.acquire(shared(req("sem", "r", 3)), T0),
        Err(AcquireError::ModeConflict { capacity: 3 })
    );
    // Readers on a read-write lock cannot turn it into a semaphore while they hold it.
    granted(state.acquire(shared(req("rw", "r", 4)), T0));
    assert_eq!(
        state.acquire(
            Acquire {
                capacity: Some(2),
                ..req("rw", "a", 5)
            },
            T0
        ),
        Err(AcquireError::CapacityConflict { current: 1 })
    );
    state.check_invariants();
}

/// After a reader's lease expires, the lock grants nobody until the lock-delay ends (the
/// expired reader may still be reading); then the queue is served in order.
#[test]
fn an_expired_reader_delays_the_next_grant() {
    let mut state = State::new(config(), T0);
    let r = granted(state.acquire(shared(req("rw", "r", 1)), T0));
    state.tick(r.expires_at);
    let at = r.expires_at;
    assert_eq!(busy(state.acquire(shared(req("rw", "r2", 2)), at)).len(), 0);
    let w = queued(state.acquire(queue("rw", "w", 3), at));
    state.tick(at + DELAY);
    lease_of(state.wait_ticket(w.ticket.id, None, at + DELAY));
    state.check_invariants();
}
