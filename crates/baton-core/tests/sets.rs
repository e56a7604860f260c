//! Lock sets in the core: several locks granted together or not at all, queued in one global
//! arrival order so overlapping sets never deadlock, and strict FIFO on every lock.
//!
//! Each test states the rule it checks, and checks the table's invariants after every step.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use baton_core::{
    Acquire, AcquireError, AcquireSet, Acquired, AcquiredSet, Cancelled, Config, Lease, LeaseId,
    LockName, Mode, QueuedTicket, SetStatus, Snapshot, State, TicketError, TicketId, TicketStatus,
    WaiterLeft,
};

const T0: u64 = 1_000_000;
const LAPSE: u64 = 10_000;

fn config() -> Config {
    Config {
        lock_delay_ms: 1_000,
        ticket_lapse_ms: LAPSE,
        ..Config::default()
    }
}

fn name(text: &str) -> LockName {
    LockName::new(text).unwrap()
}

/// A queued set request for `locks` by `owner`, ids derived from `n` and the lock's index.
fn set(locks: &[&str], owner: &str, n: u8) -> AcquireSet {
    AcquireSet {
        locks: locks.iter().map(|lock| name(lock)).collect(),
        owner: owner.to_owned(),
        ttl_ms: 5_000,
        queue: true,
        request_id: None,
        api_key: None,
        quota: Default::default(),
        lease_ids: (0..locks.len())
            .map(|i| LeaseId([n, i as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]))
            .collect(),
        ticket_ids: (0..locks.len())
            .map(|i| TicketId([n, i as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]))
            .collect(),
        value: None,
        mode: Mode::Exclusive,
    }
}

fn single(lock: &str, owner: &str, n: u8) -> Acquire {
    Acquire {
        lock: name(lock),
        owner: owner.to_owned(),
        owner_key: None,
        ttl_ms: 100_000,
        capacity: None,
        queue: true,
        request_id: None,
        api_key: None,
        quota: Default::default(),
        lease_id: LeaseId([n; 16]),
        ticket_id: TicketId([n; 16]),
        value: None,
        mode: Mode::Exclusive,
    }
}

#[track_caller]
fn set_granted(outcome: Result<AcquiredSet, AcquireError>) -> Vec<Lease> {
    match outcome {
        Ok(AcquiredSet::Granted(leases)) => leases,
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[track_caller]
fn set_queued(outcome: Result<AcquiredSet, AcquireError>) -> Vec<QueuedTicket> {
    match outcome {
        Ok(AcquiredSet::Queued(tickets)) => tickets,
        other => panic!("expected tickets, got {other:?}"),
    }
}

fn holders(state: &State, lock: &str) -> Vec<String> {
    state
        .lock(&name(lock))
        .map(|view| view.holders.into_iter().map(|lease| lease.owner).collect())
        .unwrap_or_default()
}

/// A free set is granted at once, every lock with its own, increasing token.
#[test]
fn a_free_set_is_granted_whole_with_a_token_per_lock() {
    let mut state = State::new(config(), T0);
    let leases = set_granted(state.acquire_set(set(&["a", "b", "c"], "x", 1), T0));
    assert_eq!(leases.len(), 3);
    assert_eq!(
        leases.iter().map(|l| l.lock.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert!(leases.windows(2).all(|pair| pair[0].token < pair[1].token));
    state.check_invariants();
}

/// Overlapping sets queued in the order A{a,b}, B{b,c}, C{c,a} while a third party holds all
/// three: a cycle of overlaps that lock ordering by name would not rule out. They are granted
/// in arrival order, each when it heads every one of its queues: A, then B, then C.
#[test]
fn overlapping_sets_are_granted_in_head_of_every_queue_order() {
    let mut state = State::new(config(), T0);
    let held = set_granted(state.acquire_set(set(&["a", "b", "c"], "h", 1), T0));
    let a = set_queued(state.acquire_set(set(&["a", "b"], "A", 2), T0 + 1));
    let b = set_queued(state.acquire_set(set(&["b", "c"], "B", 3), T0 + 2));
    let c = set_queued(state.acquire_set(set(&["c", "a"], "C", 4), T0 + 3));
    state.check_invariants();
    // c is the head of lock c's queue? No: B's ticket heads c, C is behind it there.
    assert_eq!(b[1].position, 1);
    assert_eq!(c[0].position, 2);
    assert_eq!(c[1].position, 2);
    for lease in &held {
        state.release(lease.id, T0 + 10).unwrap();
        state.check_invariants();
    }
    // A has a and b; B waits for b (c is free for it, but B waits whole); C waits behind B on
    // c and behind A on a.
    assert_eq!(holders(&state, "a"), ["A"]);
    assert_eq!(holders(&state, "b"), ["A"]);
    assert!(holders(&state, "c").is_empty());
    let a_leases = match state.wait_set(a[0].ticket.id, None, T0 + 11).unwrap() {
        SetStatus::Granted(leases) => leases,
        other => panic!("A should hold both: {other:?}"),
    };
    for lease in &a_leases {
        state.release(lease.id, T0 + 20).unwrap();
        state.check_invariants();
    }
    // B had c waiting for it, and b now: granted; C still waits for c.
    assert_eq!(holders(&state, "b"), ["B"]);
    assert_eq!(holders(&state, "c"), ["B"]);
    assert!(holders(&state, "a").is_empty(), "C waits whole for c");
    let b_leases = match state.wait_set(b[0].ticket.id, None, T0 + 21).unwrap() {
        SetStatus::Granted(leases) => leases,
        other => panic!("B should hold both: {other:?}"),
    };
    state.release(b_leases[1].id, T0 + 30).unwrap();
    assert_eq!(holders(&state, "c"), ["C"]);
    assert_eq!(holders(&state, "a"), ["C"]);
    state.check_invariants();
}

/// A single-lock waiter behind a set waits even though its lock has room: the set at the head
/// waits for another lock, and FIFO on every lock is strict (G4). It is granted right after
/// the set.
#[test]
fn a_single_lock_waiter_behind_a_set_keeps_its_place() {
    let mut state = State::new(config(), T0);
    let b_holder = match state.acquire(single("b", "holder", 9), T0).unwrap() {
        Acquired::Granted(lease) => lease,
        other => panic!("{other:?}"),
    };
    let tickets = set_queued(state.acquire_set(set(&["a", "b"], "S", 1), T0 + 1));
    // a has room and the set's ticket heads it, but the set waits for b.
    assert!(holders(&state, "a").is_empty());
    let behind = match state.acquire(single("a", "late", 2), T0 + 2).unwrap() {
        Acquired::Queued(queued) => queued,
        other => panic!("a late single acquire must queue behind the set: {other:?}"),
    };
    assert_eq!(behind.position, 2);
    state.check_invariants();
    state.release(b_holder.id, T0 + 3).unwrap();
    state.check_invariants();
    assert_eq!(holders(&state, "a"), ["S"]);
    assert_eq!(holders(&state, "b"), ["S"]);
    let leases = match state.wait_set(tickets[1].ticket.id, None, T0 + 4).unwrap() {
        SetStatus::Granted(leases) => leases,
        other => panic!("{other:?}"),
    };
    state.release(leases[0].id, T0 + 5).unwrap();
    assert_eq!(holders(&state, "a"), ["late"]);
    state.check_invariants();
}

/// A try for a set succeeds only if every lock is free with an empty queue; on failure nothing
/// is held, queued or created.
#[test]
fn a_refused_try_leaves_nothing() {
    let mut state = State::new(config(), T0);
    let held = match state.acquire(single("b", "holder", 9), T0).unwrap() {
        Acquired::Granted(lease) => lease,
        other => panic!("{other:?}"),
    };
    let _ = state.drain_changes();
    let before = state.gauges(T0);
    let outcome = state
        .acquire_set(
            AcquireSet {
                queue: false,
                ..set(&["a", "b", "c"], "try", 1)
            },
            T0 + 1,
        )
        .unwrap();
    match outcome {
        AcquiredSet::Busy(holders) => assert_eq!(holders, vec![held.clone()]),
        other => panic!("expected busy, got {other:?}"),
    }
    assert_eq!(
        state.gauges(T0 + 1),
        before,
        "nothing held, queued or created"
    );
    assert!(state.lock(&name("a")).is_none());
    assert!(state.drain_changes().iter().all(|change| !matches!(
        change,
        baton_core::Change::LeasePut(_) | baton_core::Change::TicketPut(_)
    )));
    state.check_invariants();
    // A try never jumps a non-empty queue, even where all its locks have room: a queued set
    // heads a and waits for b, so a try on {a, c} (a and c free) is busy.
    let _waiting = set_queued(state.acquire_set(set(&["a", "b"], "w", 2), T0 + 3));
    assert!(holders(&state, "a").is_empty());
    match state
        .acquire_set(
            AcquireSet {
                queue: false,
                ..set(&["a", "c"], "try", 3)
            },
            T0 + 4,
        )
        .unwrap()
    {
        AcquiredSet::Busy(_) => {}
        other => panic!("expected busy, got {other:?}"),
    }
    assert!(state.lock(&name("c")).is_none(), "c was not left behind");
    state.check_invariants();
}

/// The tickets of a set lapse together: a waiter waits on one for all, so waiting on one keeps
/// every ticket, and when nobody waits they all leave.
#[test]
fn a_set_lapses_and_is_kept_as_a_whole() {
    let mut state = State::new(config(), T0);
    let _held = state.acquire(single("b", "holder", 9), T0).unwrap();
    let tickets = set_queued(state.acquire_set(set(&["a", "b"], "S", 1), T0));
    // Keeping the first ticket keeps the second.
    state
        .wait_ticket(tickets[0].ticket.id, None, T0 + LAPSE - 1)
        .unwrap();
    state.tick(T0 + LAPSE + 1);
    assert!(matches!(
        state.wait_ticket(tickets[1].ticket.id, None, T0 + LAPSE + 1),
        Ok(TicketStatus::Queued(_))
    ));
    state.check_invariants();
    state.tick(T0 + 3 * LAPSE);
    assert_eq!(
        state.wait_ticket(tickets[0].ticket.id, None, T0 + 3 * LAPSE),
        Err(TicketError::Lapsed)
    );
    assert_eq!(
        state.wait_ticket(tickets[1].ticket.id, None, T0 + 3 * LAPSE),
        Err(TicketError::Lapsed)
    );
    assert_eq!(state.gauges(T0 + 3 * LAPSE).waiters, 0);
    state.check_invariants();
}

/// Cancelling one ticket of a set cancels all; a departed waiter's set is never granted, and a
/// grant it took but never delivered is released whole.
#[test]
fn cancel_and_departure_act_on_the_whole_set() {
    let mut state = State::new(config(), T0);
    let held = match state.acquire(single("b", "holder", 9), T0).unwrap() {
        Acquired::Granted(lease) => lease,
        other => panic!("{other:?}"),
    };
    let first = set_queued(state.acquire_set(set(&["a", "b"], "S", 1), T0));
    assert_eq!(
        state.cancel_ticket(first[1].ticket.id, false, T0 + 1),
        Ok(Cancelled::Cancelled)
    );
    assert_eq!(state.gauges(T0 + 1).waiters, 0);
    state.check_invariants();

    let second = set_queued(state.acquire_set(set(&["a", "b"], "S2", 2), T0 + 2));
    assert!(matches!(
        state.waiter_left(second[0].ticket.id, false, T0 + 3),
        WaiterLeft::Lapsing(_)
    ));
    let behind = match state.acquire(single("a", "late", 3), T0 + 4).unwrap() {
        Acquired::Queued(queued) => queued,
        other => panic!("{other:?}"),
    };
    state.release(held.id, T0 + 5).unwrap();
    // The departed set lapsed as the locks became free; the single waiter got a.
    assert_eq!(holders(&state, "a"), ["late"]);
    assert!(holders(&state, "b").is_empty());
    assert_eq!(
        state.wait_ticket(second[1].ticket.id, None, T0 + 6),
        Err(TicketError::Lapsed)
    );
    let _ = behind;
    state.check_invariants();

    // A grant collected by a wait that never answered is released whole.
    let late = state.lock(&name("a")).unwrap().holders[0].clone();
    let third = set_queued(state.acquire_set(set(&["a", "b"], "S3", 4), T0 + 7));
    state.release(late.id, T0 + 8).unwrap();
    assert!(matches!(
        state.wait_ticket(third[0].ticket.id, None, T0 + 9),
        Ok(TicketStatus::Granted(_))
    ));
    assert_eq!(
        state.waiter_left(third[0].ticket.id, true, T0 + 10),
        WaiterLeft::ReleasedUndelivered
    );
    assert!(holders(&state, "a").is_empty());
    assert!(holders(&state, "b").is_empty());
    state.check_invariants();
}

/// A retry with the same request id returns the same set (G7); the request id cannot be reused
/// for another set of locks.
#[test]
fn retries_are_idempotent() {
    let mut state = State::new(config(), T0);
    let request = AcquireSet {
        request_id: Some("r-1".to_owned()),
        ..set(&["a", "b"], "S", 1)
    };
    let leases = set_granted(state.acquire_set(request.clone(), T0));
    let again = set_granted(state.acquire_set(
        AcquireSet {
            lease_ids: vec![LeaseId([50; 16]), LeaseId([51; 16])],
            ..request.clone()
        },
        T0 + 1,
    ));
    assert_eq!(leases, again);
    assert_eq!(state.gauges(T0 + 1).leases, 2);
    assert!(matches!(
        state.acquire_set(
            AcquireSet {
                request_id: Some("r-1".to_owned()),
                ..set(&["a", "c"], "S", 2)
            },
            T0 + 2,
        ),
        Err(AcquireError::RequestIdConflict { .. })
    ));
    // Queued sets too.
    let queued = set_queued(state.acquire_set(
        AcquireSet {
            request_id: Some("r-2".to_owned()),
            ..set(&["b", "c"], "T", 3)
        },
        T0 + 3,
    ));
    let queued_again = set_queued(state.acquire_set(
        AcquireSet {
            request_id: Some("r-2".to_owned()),
            ..set(&["b", "c"], "T", 4)
        },
        T0 + 4,
    ));
    assert_eq!(
        queued.iter().map(|q| q.ticket.id).collect::<Vec<_>>(),
        queued_again.iter().map(|q| q.ticket.id).collect::<Vec<_>>()
    );
    state.check_invariants();
}

/// Bad sets are refused: none, a lock twice, too many.
#[test]
fn malformed_sets_are_refused() {
    let mut state = State::new(config(), T0);
    assert_eq!(
        state.acquire_set(set(&[], "x", 1), T0),
        Err(AcquireError::InvalidLockSet)
    );
    assert_eq!(
        state.acquire_set(set(&["a", "a"], "x", 1), T0),
        Err(AcquireError::InvalidLockSet)
    );
    let names: Vec<String> = (0..=baton_core::limits::LOCK_SET_LOCKS_MAX)
        .map(|i| format!("l{i}"))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(
        state.acquire_set(set(&refs, "x", 1), T0),
        Err(AcquireError::InvalidLockSet)
    );
    assert!(state.lock(&name("l0")).is_none());
    state.check_invariants();
}

/// A restart keeps a queued set whole: its tickets share one arrival number, and the restored
/// table regroups them, so the set is still granted all together.
#[test]
fn a_restart_keeps_a_queued_set_whole() {
    let mut state = State::new(config(), T0);
    let held = match state.acquire(single("b", "holder", 9), T0).unwrap() {
        Acquired::Granted(lease) => lease,
        other => panic!("{other:?}"),
    };
    let tickets = set_queued(state.acquire_set(set(&["a", "b"], "S", 1), T0 + 1));
    let _behind = state.acquire(single("a", "late", 2), T0 + 2).unwrap();
    let view_a = state.lock(&name("a")).unwrap();
    let view_b = state.lock(&name("b")).unwrap();
    let snapshot = Snapshot {
        next_token: state.next_token(),
        forgotten_token_floor: 0,
        locks: Vec::new(),
        leases: view_b.holders.clone(),
        tickets: view_a
            .waiters
            .iter()
            .chain(view_b.waiters.iter())
            .cloned()
            .collect(),
        history: Vec::new(),
        jobs: Vec::new(),
    };
    let mut restored = State::restore(config(), snapshot, T0 + 100).unwrap();
    restored.check_invariants();
    assert!(
        holders(&restored, "a").is_empty(),
        "the set still waits whole"
    );
    restored.release(held.id, T0 + 101).unwrap();
    assert_eq!(holders(&restored, "a"), ["S"]);
    assert_eq!(holders(&restored, "b"), ["S"]);
    assert!(matches!(
        restored.wait_set(tickets[0].ticket.id, None, T0 + 102),
        Ok(SetStatus::Granted(leases)) if leases.len() == 2
    ));
    restored.check_invariants();
}

/// Quotas count each lease and ticket of a set: a set that would pass the key's quota is
/// refused whole, and nothing is held, queued or created.
#[test]
fn quotas_count_every_lease_and_ticket_of_a_set() {
    let mut state = State::new(config(), T0);
    let quota = baton_core::KeyQuota {
        leases_max: Some(2),
        waiters_max: Some(1),
        ..Default::default()
    };
    let keyed = |locks: &[&str], n: u8| AcquireSet {
        api_key: Some("key-1".to_owned()),
        quota,
        ..set(locks, "k", n)
    };
    assert!(matches!(
        state.acquire_set(keyed(&["a", "b", "c"], 1), T0),
        Err(AcquireError::QuotaExceeded {
            quota: baton_core::Quota::Leases,
            limit: 2
        })
    ));
    assert!(state.lock(&name("a")).is_none(), "nothing created");
    let held = set_granted(state.acquire_set(keyed(&["a", "b"], 2), T0));
    assert_eq!(held.len(), 2);
    assert!(matches!(
        state.acquire_set(keyed(&["b", "c"], 4), T0 + 1),
        Err(AcquireError::QuotaExceeded {
            quota: baton_core::Quota::Waiters,
            limit: 1
        })
    ));
    assert_eq!(state.gauges(T0 + 1).waiters, 0, "nothing queued");
    assert!(state.lock(&name("c")).is_none(), "nothing created");
    state.check_invariants();
}
