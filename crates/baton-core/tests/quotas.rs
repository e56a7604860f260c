//! Per-key quotas on the pure lock table: a key at its quota of leases, waiters, locks or jobs
//! is refused with [`AcquireError::QuotaExceeded`] while other keys (and requests without a
//! key) go on; a key's own quota overrides the table's default; the counts survive a restart
//! (rebuilt from the stored records); and a property test drives random operations of three
//! keys, checking after every step that the counts equal the records (`check_invariants`), that
//! no key exceeds its quotas, and that a refusal for quota names a key that was at its limit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use baton_core::{
    Acquire, AcquireError, Acquired, Config, CreateJob, FinishJob, JobCapability, JobError, JobId,
    JobState, KeyQuota, LeaseId, LockName, Policy, Quota, State, TicketId,
};
use common::Disk;
use proptest::prelude::*;

const T0: u64 = 1_000_000;
const TTL: u64 = 30_000;

fn config() -> Config {
    Config {
        key_leases_max: 3,
        key_waiters_max: 2,
        key_locks_max: 4,
        key_jobs_max: 3,
        ..Config::default()
    }
}

fn name(text: &str) -> LockName {
    LockName::new(text).unwrap()
}

fn ids(n: u64) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    bytes[8] = 0x5a;
    bytes
}

fn acquire(lock: &str, key: Option<&str>, queue: bool, n: u64) -> Acquire {
    Acquire {
        mode: Default::default(),
        value: None,
        lock: name(lock),
        owner: format!("owner-{n}"),
        owner_key: None,
        ttl_ms: TTL,
        capacity: None,
        queue,
        request_id: None,
        api_key: key.map(str::to_owned),
        quota: KeyQuota::default(),
        lease_id: LeaseId(ids(n)),
        ticket_id: TicketId(ids(n + 1_000_000)),
    }
}

fn job(lock: &str, key: Option<&str>, policy: Policy, n: u64) -> CreateJob {
    CreateJob {
        mode: Default::default(),
        value: None,
        job_id: JobId(ids(n + 2_000_000)),
        name: format!("job-{lock}"),
        lock: name(lock),
        capacity: None,
        policy,
        owner: format!("runner-{n}"),
        host: None,
        command: vec!["true".into()],
        ttl_ms: TTL,
        request_id: None,
        min_hold_ms: None,
        once_per_ms: None,
        batch: None,
        api_key: key.map(str::to_owned),
        quota: KeyQuota::default(),
        lease_id: LeaseId(ids(n)),
        ticket_id: TicketId(ids(n + 1_000_000)),
    }
}

#[track_caller]
fn quota_exceeded<T: std::fmt::Debug>(
    outcome: Result<T, AcquireError>,
    quota: Quota,
    limit: usize,
) {
    match outcome {
        Err(AcquireError::QuotaExceeded { quota: q, limit: l }) if q == quota && l == limit => {}
        other => panic!(
            "expected the {} quota of {limit}, got {other:?}",
            quota.as_str()
        ),
    }
}

#[test]
fn a_key_at_its_lease_quota_is_refused_and_another_key_is_not() {
    let mut state = State::new(config(), T0);
    for n in 0..3 {
        let outcome = state.acquire(acquire(&format!("team-a/{n}"), Some("a"), false, n), T0);
        assert!(matches!(outcome, Ok(Acquired::Granted(_))), "{outcome:?}");
    }
    quota_exceeded(
        state.acquire(acquire("team-a/3", Some("a"), false, 3), T0),
        Quota::Leases,
        3,
    );
    // The message names the quota and its limit.
    let message = AcquireError::QuotaExceeded {
        quota: Quota::Leases,
        limit: 3,
    }
    .to_string();
    assert!(message.contains("3 leases"), "{message}");
    // Key b, and a request without a key, are untouched.
    for n in 10..13 {
        let outcome = state.acquire(acquire(&format!("team-b/{n}"), Some("b"), false, n), T0);
        assert!(matches!(outcome, Ok(Acquired::Granted(_))), "{outcome:?}");
    }
    for n in 20..30 {
        let outcome = state.acquire(acquire(&format!("open/{n}"), None, false, n), T0);
        assert!(matches!(outcome, Ok(Acquired::Granted(_))), "{outcome:?}");
    }
    state.check_invariants();
    assert_eq!(state.key_usage("a").leases, 3);
    assert_eq!(state.key_usage("b").leases, 3);
}

#[test]
fn releasing_a_lease_makes_room_in_the_quota() {
    let mut state = State::new(config(), T0);
    let mut first = None;
    for n in 0..3 {
        if let Ok(Acquired::Granted(lease)) =
            state.acquire(acquire(&format!("team-a/{n}"), Some("a"), false, n), T0)
        {
            first.get_or_insert(lease.id);
        }
    }
    state.release(first.unwrap(), T0 + 1).unwrap();
    let outcome = state.acquire(acquire("team-a/9", Some("a"), false, 9), T0 + 2);
    assert!(matches!(outcome, Ok(Acquired::Granted(_))), "{outcome:?}");
    state.check_invariants();
}

#[test]
fn a_key_at_its_waiter_quota_cannot_queue_while_another_key_can() {
    let mut state = State::new(config(), T0);
    // Key b holds the lock; a queues twice, then is refused; b can still queue on its own lock.
    assert!(matches!(
        state.acquire(acquire("shared", Some("b"), false, 0), T0),
        Ok(Acquired::Granted(_))
    ));
    for n in 1..3 {
        let outcome = state.acquire(acquire("shared", Some("a"), true, n), T0);
        assert!(matches!(outcome, Ok(Acquired::Queued(_))), "{outcome:?}");
    }
    quota_exceeded(
        state.acquire(acquire("shared", Some("a"), true, 3), T0),
        Quota::Waiters,
        2,
    );
    // A try (no queue) of the busy lock is still answered busy, not refused.
    assert!(matches!(
        state.acquire(acquire("shared", Some("a"), false, 4), T0),
        Ok(Acquired::Busy(_))
    ));
    let outcome = state.acquire(acquire("shared", Some("b"), true, 5), T0);
    assert!(matches!(outcome, Ok(Acquired::Queued(_))), "{outcome:?}");
    assert_eq!(state.key_usage("a").waiters, 2);
    state.check_invariants();
}

#[test]
fn a_key_at_its_lock_quota_cannot_create_locks_but_uses_existing_ones() {
    let mut state = State::new(config(), T0);
    let mut leases = Vec::new();
    for n in 0..4 {
        if let Ok(Acquired::Granted(lease)) =
            state.acquire(acquire(&format!("team-a/{n}"), Some("a"), false, n), T0)
        {
            leases.push(lease.id);
        }
    }
    // Three leases (its lease quota) on three locks; the refused fourth acquire left no lock
    // behind. Released, the locks stay known (idle) and keep counting.
    assert_eq!(state.key_usage("a").locks, 3);
    assert!(state.lock(&name("team-a/3")).is_none());
    for lease in leases {
        state.release(lease, T0 + 1).unwrap();
    }
    assert_eq!(state.key_usage("a").locks, 3);
    for n in 3..4 {
        assert!(matches!(
            state.acquire(acquire(&format!("team-a/{n}"), Some("a"), false, n), T0 + 2),
            Ok(Acquired::Granted(_))
        ));
    }
    assert_eq!(state.key_usage("a").locks, 4);
    quota_exceeded(
        state.acquire(acquire("team-a/new", Some("a"), false, 10), T0 + 3),
        Quota::Locks,
        4,
    );
    // A lock it created already, and a lock another key created, are still open to it.
    assert!(matches!(
        state.acquire(acquire("team-a/0", Some("a"), false, 11), T0 + 3),
        Ok(Acquired::Granted(_))
    ));
    assert!(matches!(
        state.acquire(acquire("shared", Some("b"), false, 12), T0 + 3),
        Ok(Acquired::Granted(_))
    ));
    assert!(matches!(
        state.acquire(acquire("shared", Some("a"), true, 13), T0 + 3),
        Ok(Acquired::Queued(_))
    ));
    // Forgotten idle locks leave the quota.
    state.tick(T0 + 3 + Config::default().idle_lock_retention_ms + 1);
    state.check_invariants();
    assert!(state.key_usage("a").locks < 4);
}

#[test]
fn a_key_with_its_own_quota_gets_that_limit_instead_of_the_default() {
    let mut state = State::new(config(), T0);
    let own = KeyQuota {
        leases_max: Some(5),
        locks_max: Some(10),
        ..KeyQuota::default()
    };
    for n in 0..5 {
        let command = Acquire {
            quota: own,
            ..acquire(&format!("big/{n}"), Some("big"), false, n)
        };
        assert!(matches!(
            state.acquire(command, T0),
            Ok(Acquired::Granted(_))
        ));
    }
    let command = Acquire {
        quota: own,
        ..acquire("big/5", Some("big"), false, 5)
    };
    quota_exceeded(state.acquire(command, T0), Quota::Leases, 5);
    // Smaller than the default works too.
    let small = KeyQuota {
        leases_max: Some(1),
        ..KeyQuota::default()
    };
    let command = Acquire {
        quota: small,
        ..acquire("small/0", Some("small"), false, 10)
    };
    assert!(matches!(
        state.acquire(command, T0),
        Ok(Acquired::Granted(_))
    ));
    let command = Acquire {
        quota: small,
        ..acquire("small/1", Some("small"), false, 11)
    };
    quota_exceeded(state.acquire(command, T0), Quota::Leases, 1);
}

#[test]
fn a_key_at_its_job_quota_prunes_its_own_finished_records_and_is_refused_when_none_are() {
    let mut state = State::new(config(), T0);
    // Three finished jobs: each further one prunes the key's oldest finished record.
    for n in 0..5 {
        let created = state
            .create_job(
                job(&format!("team-a/{}", n % 2), Some("a"), Policy::Wait, n),
                T0 + n,
            )
            .unwrap();
        let lease = created.lease.unwrap().id;
        state
            .finish_job(
                created.job.id,
                JobCapability::Lease(lease),
                FinishJob {
                    state: JobState::Succeeded,
                    exit_code: Some(0),
                    reason: None,
                    output_tail: String::new(),
                },
                T0 + n,
            )
            .unwrap();
        assert!(state.key_usage("a").jobs.len() <= 3);
    }
    // Another key's records are never pruned for a's sake.
    let b = state
        .create_job(job("team-b/0", Some("b"), Policy::Wait, 50), T0 + 10)
        .unwrap();
    assert!(b.lease.is_some());
    // Three unfinished (running) jobs: the fourth is refused.
    let mut state = State::new(config(), T0);
    for n in 0..3 {
        state
            .create_job(job(&format!("team-a/{n}"), Some("a"), Policy::Wait, n), T0)
            .unwrap();
    }
    match state.create_job(job("team-a/3", Some("a"), Policy::Wait, 3), T0) {
        Err(JobError::Acquire(AcquireError::QuotaExceeded {
            quota: Quota::Jobs,
            limit: 3,
        })) => {}
        other => panic!("expected the jobs quota, got {other:?}"),
    }
    assert!(
        state
            .create_job(job("team-b/1", Some("b"), Policy::Wait, 60), T0)
            .is_ok()
    );
    state.check_invariants();
}

#[test]
fn counts_survive_a_restart() {
    let mut state = State::new(config(), T0);
    let mut disk = Disk::default();
    assert!(matches!(
        state.acquire(acquire("team-a/held", Some("a"), false, 0), T0),
        Ok(Acquired::Granted(_))
    ));
    assert!(matches!(
        state.acquire(acquire("team-b/held", Some("b"), false, 1), T0),
        Ok(Acquired::Granted(_))
    ));
    for n in 2..4 {
        assert!(matches!(
            state.acquire(acquire("team-b/held", Some("a"), true, n), T0),
            Ok(Acquired::Queued(_))
        ));
    }
    state
        .create_job(job("team-a/job", Some("a"), Policy::Wait, 5), T0)
        .unwrap();
    disk.apply_all(&state.drain_changes());
    let before = state.key_usage("a");
    assert_eq!(
        (
            before.leases,
            before.waiters,
            before.locks,
            before.jobs.len()
        ),
        (2, 2, 2, 1)
    );
    let mut restored = State::restore(config(), disk.snapshot(), T0 + 100).unwrap();
    restored.check_invariants();
    assert_eq!(restored.key_usage("a"), before);
    // And they still bind: a is at its waiter quota after the restart.
    quota_exceeded(
        restored.acquire(acquire("team-b/held", Some("a"), true, 9), T0 + 101),
        Quota::Waiters,
        2,
    );
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Op {
    /// Key (0..3, 3 = no key) acquires lock (0..4), queueing or not.
    Acquire { key: u8, lock: u8, queue: bool },
    /// Key creates a job on lock.
    Job { key: u8, lock: u8 },
    /// Release the n-th live lease (modulo).
    Release(usize),
    /// Cancel the n-th queued ticket (modulo).
    Cancel(usize),
    /// Time passes.
    Wait(u64),
    /// Restart from the disk.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, 0u8..6, any::<bool>()).prop_map(|(key, lock, queue)| Op::Acquire { key, lock, queue }),
        2 => (0u8..4, 0u8..6).prop_map(|(key, lock)| Op::Job { key, lock }),
        2 => any::<usize>().prop_map(Op::Release),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => (0u64..40_000).prop_map(Op::Wait),
        1 => Just(Op::Restart),
    ]
}

const KEYS: [&str; 3] = ["a", "b", "c"];

fn key_of(key: u8) -> Option<&'static str> {
    KEYS.get(usize::from(key)).copied()
}

fn quota_of(key: Option<&str>) -> KeyQuota {
    // Key c has quotas of its own, larger than the defaults for some and smaller for others.
    match key {
        Some("c") => KeyQuota {
            leases_max: Some(1),
            waiters_max: Some(4),
            locks_max: None,
            jobs_max: Some(5),
        },
        _ => KeyQuota::default(),
    }
}

fn check_refusal(state: &State, key: Option<&str>, error: &AcquireError) {
    if let AcquireError::QuotaExceeded { quota, limit } = error {
        let key = key.expect("a request without a key was refused for quota");
        assert_eq!(*limit, quota_of(Some(key)).limit(*quota, &config()));
        // At least: tickets granted from the queue may take a key over its lease quota.
        assert!(
            state.key_usage(key).count(*quota) >= *limit,
            "{key} refused for {} below its limit",
            quota.as_str()
        );
    }
}

fn run(ops: &[Op]) {
    let mut state = State::new(config(), T0);
    let mut disk = Disk::default();
    let mut now = T0;
    let mut leases: Vec<LeaseId> = Vec::new();
    let mut tickets: Vec<TicketId> = Vec::new();
    for (n, op) in ops.iter().enumerate() {
        let n = n as u64 * 2 + 1;
        match op {
            Op::Acquire { key, lock, queue } => {
                let key = key_of(*key);
                let before = key.map(|key| state.key_usage(key));
                let command = Acquire {
                    quota: quota_of(key),
                    ..acquire(&format!("lock-{lock}"), key, *queue, n)
                };
                match state.acquire(command, now) {
                    Ok(Acquired::Granted(lease)) => leases.push(lease.id),
                    Ok(Acquired::Queued(queued)) => tickets.push(queued.ticket.id),
                    Ok(Acquired::Busy(_)) => {}
                    Err(error) => {
                        if let (Some(key), Some(before)) = (key, before) {
                            // A refused request changes nothing of the key's.
                            assert_eq!(state.key_usage(key).count(Quota::Leases), before.leases);
                            assert_eq!(state.key_usage(key).count(Quota::Waiters), before.waiters);
                        }
                        check_refusal(&state, key, &error);
                    }
                }
            }
            Op::Job { key, lock } => {
                let key = key_of(*key);
                let command = CreateJob {
                    quota: quota_of(key),
                    ..job(&format!("lock-{lock}"), key, Policy::Wait, n)
                };
                match state.create_job(command, now) {
                    Ok(created) => {
                        leases.extend(created.lease.map(|lease| lease.id));
                        tickets.extend(created.ticket.map(|queued| queued.ticket.id));
                    }
                    Err(JobError::Acquire(error)) => check_refusal(&state, key, &error),
                    Err(other) => panic!("unexpected job error {other:?}"),
                }
            }
            Op::Release(index) => {
                if !leases.is_empty() {
                    let id = leases.remove(index % leases.len());
                    let _ = state.release(id, now);
                }
            }
            Op::Cancel(index) => {
                if !tickets.is_empty() {
                    let id = tickets.remove(index % tickets.len());
                    let _ = state.cancel_ticket(id, false, now);
                }
            }
            Op::Wait(ms) => {
                now += ms;
                state.tick(now);
            }
            Op::Restart => {
                // The counts are not stored: the restored table rebuilds them from the records,
                // which `check_invariants` below compares them with.
                disk.apply_all(&state.drain_changes());
                state = State::restore(config(), disk.snapshot(), now).unwrap();
            }
        }
        disk.apply_all(&state.drain_changes());
        state.check_invariants();
        for key in KEYS {
            let usage = state.key_usage(key);
            let quota = quota_of(Some(key));
            let limit = |which| quota.limit(which, &config());
            assert!(usage.waiters <= limit(Quota::Waiters), "{key}: {usage:?}");
            assert!(
                usage.leases <= limit(Quota::Leases) + limit(Quota::Waiters),
                "{key}: {usage:?}"
            );
            assert!(usage.locks <= limit(Quota::Locks), "{key}: {usage:?}");
            assert!(usage.jobs.len() <= limit(Quota::Jobs), "{key}: {usage:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_key_exceeds_its_quotas_and_counts_match_the_records(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        run(&ops);
    }
}
