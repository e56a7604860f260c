//! Regressions found by the cargo-fuzz targets (fuzz/, docs/fuzzing.md), replayed as ordinary
//! tests, each reduced to the few steps that broke.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use baton_core::{
    Acquire, AcquireError, Change, Config, CreateJob, JobError, JobId, LeaseId, LockName, Policy,
    State, TicketId,
};
use common::Disk;

const T0: u64 = 1_000_000;

fn name(text: &str) -> LockName {
    LockName::new(text).unwrap()
}

fn acquire(lock: &str, n: u8) -> Acquire {
    Acquire {
        mode: Default::default(),
        value: None,
        quota: Default::default(),
        api_key: None,
        lock: name(lock),
        owner: format!("client-{n}"),
        owner_key: None,
        ttl_ms: 30_000,
        capacity: None,
        queue: true,
        request_id: None,
        lease_id: LeaseId([n; 16]),
        ticket_id: TicketId([n; 16]),
    }
}

/// Found by `transitions`: an acquire (here through a job) refused with `limit_reached` left
/// its freshly made lock in the table, unstored; when the idle lock was forgotten, the change
/// stream said `LockForget` of a lock no `LockPut` had ever stored.
#[test]
fn a_lock_made_by_a_refused_acquire_is_forgotten_without_a_change() {
    let config = Config {
        leases_total_max: 1,
        idle_lock_retention_ms: 1_000,
        ..Config::default()
    };
    let mut state = State::new(config.clone(), T0);
    let mut disk = Disk::default();
    state.acquire(acquire("alpha", 1), T0).unwrap();
    disk.apply_all(&state.drain_changes());

    let refused = state.acquire(acquire("beta", 2), T0);
    assert_eq!(
        refused,
        Err(AcquireError::LimitReached("too many leases")),
        "the lease limit refuses a second lease"
    );
    let job = CreateJob {
        mode: Default::default(),
        value: None,
        quota: Default::default(),
        api_key: None,
        job_id: JobId([3; 16]),
        name: "gamma".to_owned(),
        lock: name("gamma"),
        capacity: None,
        policy: Policy::Wait,
        owner: "runner".to_owned(),
        host: None,
        command: vec!["true".to_owned()],
        ttl_ms: 30_000,
        request_id: None,
        min_hold_ms: None,
        once_per_ms: None,
        batch: None,
        lease_id: LeaseId([3; 16]),
        ticket_id: TicketId([3; 16]),
    };
    assert!(matches!(
        state.create_job(job, T0),
        Err(JobError::Acquire(AcquireError::LimitReached(_)))
    ));
    let changes = state.drain_changes();
    disk.apply_all(&changes);
    state.check_invariants();

    // The idle locks are forgotten: only `alpha` was ever stored.
    state.tick(T0 + 5_000);
    let changes = state.drain_changes();
    for change in &changes {
        if let Change::LockForget(forgotten) = change {
            panic!("forgot {forgotten}, which was never stored: {changes:?}");
        }
    }
    disk.apply_all(&changes);
    state.check_invariants();
    assert!(state.lock(&name("beta")).is_none());
    assert!(state.lock(&name("gamma")).is_none());
    assert!(state.lock(&name("alpha")).is_some());

    // A lock that was stored is still forgotten with a change once idle.
    let lease = state.lock(&name("alpha")).unwrap().holders[0].id;
    state.release(lease, T0 + 5_000).unwrap();
    disk.apply_all(&state.drain_changes());
    state.tick(T0 + 10_000);
    let changes = state.drain_changes();
    assert!(
        changes.contains(&Change::LockForget(name("alpha"))),
        "{changes:?}"
    );
    disk.apply_all(&changes);
    let restored = State::restore(config, disk.snapshot(), T0 + 10_000).unwrap();
    restored.check_invariants();
    assert!(restored.lock(&name("alpha")).is_none());
}
