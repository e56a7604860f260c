//! What only the PostgreSQL store has: its persister (a batch of every kind of change
//! round-trips through one commit and a load, a restart recovers the table, a fenced write under
//! a lost leadership is refused and writes nothing and stops its engine, a cut connection is
//! replaced), the upgrade of
//! a database the per-lock store wrote, and the fencing epoch that moves tokens ahead after a
//! fail-over. On a real PostgreSQL;
//! each test uses its own schema and drops it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use baton_core::{
    Change, HistoryRecord, Job, JobId, JobState, Lease, LeaseEnd, LeaseId, LockName, LockRecord,
    Policy, Snapshot, StopReason, Ticket, TicketId,
};
use baton_store::{
    AcquireArgs, AcquireOutcome, ApiKey, AuditEntry, Engine, KeyGrant, Persister, Role, Store,
};
use baton_store_postgres::schema::{self, EPOCH_GAP};
use baton_store_postgres::{Fence, PgOptions, PgPersister, PostgresStore, testing};

/// Drops the test's schema however the test ends.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn new(url: &str, key: &str) -> Schema {
        let name = testing::schema_for(key);
        testing::drop_schema(url, &name);
        Schema {
            url: url.to_owned(),
            name,
        }
    }

    fn options(&self) -> PgOptions {
        PgOptions {
            schema: self.name.clone(),
            ..PgOptions::new(self.url.clone())
        }
    }

    async fn open(&self) -> Engine {
        PostgresStore::open(self.options())
            .await
            .expect("open the store")
    }

    fn persister(&self, fence: Option<Fence>) -> PgPersister {
        PgPersister::connect(&self.options(), fence).expect("connect the persister")
    }

    async fn sql(&self, statement: &str) {
        let url = format!(
            "{} options=-csearch_path={}",
            key_value(&self.url),
            self.name
        );
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        let driver = tokio::spawn(connection);
        client.batch_execute(statement).await.expect(statement);
        drop(client);
        let _ = driver.await;
    }
}

impl Schema {
    /// The first column of the first row of `query`, a number.
    async fn number(&self, query: &str) -> i64 {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        let driver = tokio::spawn(connection);
        let value: i64 = client.query_one(query, &[]).await.expect(query).get(0);
        drop(client);
        let _ = driver.await;
        value
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        testing::drop_schema(&self.url, &self.name);
    }
}

/// The URL as key=value pairs, so an `options` pair can be appended.
fn key_value(url: &str) -> String {
    let config: tokio_postgres::Config = url.parse().expect("a valid URL");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "host={host} port={port} user={} dbname={}",
        config.get_user().unwrap_or("postgres"),
        config.get_dbname().unwrap_or("test")
    )
}

fn args(lock: &str, owner: &str, ttl_ms: u64, wait: Duration) -> AcquireArgs {
    AcquireArgs {
        mode: baton_core::Mode::Exclusive,
        value: None,
        quota: Default::default(),
        api_key: None,
        lock: LockName::new(lock).unwrap(),
        owner: owner.into(),
        owner_key: None,
        ttl_ms,
        capacity: None,
        wait,
        queue: false,
        request_id: None,
    }
}

async fn grant(store: &Engine, lock: &str, owner: &str) -> baton_core::Lease {
    match store
        .acquire(args(lock, owner, 30_000, Duration::ZERO))
        .await
    {
        Ok(AcquireOutcome::Granted(lease)) => lease,
        other => panic!("expected a grant of {lock}, got {other:?}"),
    }
}

/// A promoted standby runs on a new timeline. Simulated by recording an older timeline than the
/// database's: the next store to connect must move tokens ahead by the epoch gap, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_jump_ahead_after_a_new_timeline() {
    let Some(url) = testing::available("postgres tokens_jump_ahead_after_a_new_timeline").await
    else {
        return;
    };
    let schema = Schema::new(&url, "epoch");
    let store = schema.open().await;
    let before = grant(&store, "epoch", "a").await;
    store.release(before.id).await.unwrap();
    drop(store);

    // Reopening on the same timeline changes nothing.
    let store = schema.open().await;
    let same = grant(&store, "epoch", "b").await;
    assert!(
        same.token > before.token && same.token < before.token + EPOCH_GAP,
        "no jump without a new timeline: {} then {}",
        before.token,
        same.token
    );
    store.release(same.id).await.unwrap();
    drop(store);

    schema
        .sql("UPDATE meta SET value = value - 1 WHERE key = 'timeline'")
        .await;
    let store = schema.open().await;
    let after = grant(&store, "epoch", "c").await;
    assert!(
        after.token >= same.token + EPOCH_GAP,
        "after a new timeline tokens jump ahead by the epoch gap: {} then {}",
        same.token,
        after.token
    );
    drop(store);
    // Only once: a second store on the same (new) timeline does not jump again.
    let store = schema.open().await;
    store.release(after.id).await.unwrap();
    let again = grant(&store, "epoch", "d").await;
    assert!(
        again.token > after.token && again.token < after.token + EPOCH_GAP,
        "one jump per timeline: {} then {}",
        after.token,
        again.token
    );
}

fn name(text: &str) -> LockName {
    LockName::new(text).unwrap()
}

fn lease(n: u8, lock: &str, token: u64) -> Lease {
    Lease {
        mode: baton_core::Mode::Exclusive,
        value: None,
        id: LeaseId([n; 16]),
        lock: name(lock),
        owner: format!("owner-{n}"),
        owner_key: Some(format!("key-{n}")),
        token,
        ttl_ms: 30_000,
        granted_at: 1_000 + u64::from(n),
        expires_at: 31_000 + u64::from(n),
        request_id: Some(format!("request-{n}")),
        ticket: Some(TicketId([n + 100; 16])),
        // Every other lease has the key whose request made it (per-key quotas count them).
        api_key: n.is_multiple_of(2).then(|| format!("key_{n:016}")),
    }
}

fn ticket(n: u8, lock: &str, seq: u64) -> Ticket {
    Ticket {
        mode: baton_core::Mode::Exclusive,
        value: None,
        id: TicketId([n; 16]),
        lock: name(lock),
        owner: format!("waiter-{n}"),
        owner_key: None,
        ttl_ms: 20_000,
        request_id: None,
        lease_id: LeaseId([n + 50; 16]),
        queued_at: 2_000,
        lapse_at: 12_000,
        seq,
        waiter_gone: n.is_multiple_of(2),
        api_key: Some("key_0123456789abcdef".into()),
    }
}

fn record(n: u8, lock: &str, ended_at: u64) -> HistoryRecord {
    HistoryRecord {
        mode: baton_core::Mode::Exclusive,
        value: None,
        lease_id: LeaseId([n; 16]),
        request_id: n.is_multiple_of(2).then(|| format!("request-{n}")),
        lock: name(lock),
        owner: format!("owner-{n}"),
        token: u64::from(n),
        granted_at: ended_at.saturating_sub(10),
        ended_at,
        end: [LeaseEnd::Released, LeaseEnd::Expired, LeaseEnd::Revoked][usize::from(n % 3)],
    }
}

fn job(n: u8, lock: &str) -> Job {
    Job {
        api_key: Some(format!("key_{n:016}")),
        id: JobId([n; 16]),
        name: format!("job-{n}"),
        lock: name(lock),
        policy: Policy::Coalesce,
        owner: "runner".into(),
        host: Some("host-1".into()),
        command: vec!["sh".into(), "-c".into(), "echo 'a b'\n\"c\"".into()],
        state: JobState::Running,
        reason: Some("because".into()),
        token: Some(7),
        lease: Some(LeaseId([n + 1; 16])),
        ticket: Some(TicketId([n + 2; 16])),
        coalesced_into: Some(JobId([n + 3; 16])),
        // Both stop reasons the text column holds.
        stop: Some(if n.is_multiple_of(2) {
            StopReason::Replaced
        } else {
            StopReason::Cancelled
        }),
        exit_code: Some(-3),
        batch: Some("nightly".into()),
        request_id: Some("job-request".into()),
        created_at: 5_000,
        waiting_at: Some(5_001),
        started_at: Some(5_002),
        finished_at: None,
        min_hold_ms: Some(60_000),
        release_at: Some(65_002),
        once_slot: Some(12),
        once_per_ms: Some(3_600_000),
        output_tail: "last lines\n".into(),
        // Not stored: loaded as 0, the core counts it from the tail on restore.
        output_total_bytes: 0,
    }
}

fn lock_record(lock: &str, capacity: u32, token: u64) -> LockRecord {
    LockRecord {
        name: name(lock),
        capacity,
        newest_token: token,
        newest_granted: token,
        delayed_until: (capacity > 1).then_some(9_000),
        delayed_slots: u32::from(capacity > 1),
        api_key: (capacity > 1).then(|| "key_creator".to_owned()),
    }
}

/// A snapshot in a stable order, to compare two.
fn sorted(mut snapshot: Snapshot) -> Snapshot {
    snapshot.locks.sort_by(|a, b| a.name.cmp(&b.name));
    snapshot.leases.sort_by_key(|lease| lease.id.0);
    snapshot.tickets.sort_by_key(|ticket| ticket.id.0);
    snapshot
        .history
        .sort_by_key(|record| (record.ended_at, record.lease_id.0));
    snapshot.jobs.sort_by_key(|job| job.id.0);
    snapshot
}

/// One batch with every kind of change, including a row put and deleted, a lock forgotten and
/// created again, and history appended on both sides of a prune, is what a load reads back; and
/// a second batch that deletes is too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_every_change_round_trips() {
    let Some(url) = testing::available("postgres a_batch_of_every_change_round_trips").await else {
        return;
    };
    let schema = Schema::new(&url, "roundtrip");
    let mut persister = schema.persister(None);
    let fresh = persister.load().unwrap();
    assert_eq!(fresh.next_token, 1, "a new database starts at token 1");
    assert!(fresh.locks.is_empty() && fresh.leases.is_empty() && fresh.jobs.is_empty());

    let batch = vec![
        Change::Counters {
            next_token: 10,
            forgotten_token_floor: 2,
        },
        Change::LockPut(lock_record("alpha", 1, 3)),
        Change::LockPut(lock_record("beta", 2, 4)),
        Change::LockForget(name("beta")),
        Change::LockPut(lock_record("beta", 3, 5)),
        Change::LockPut(lock_record("gamma", 1, 1)),
        Change::LockForget(name("gamma")),
        Change::LeasePut(lease(1, "alpha", 3)),
        Change::LeasePut(lease(2, "beta", 4)),
        Change::LeaseDelete(LeaseId([2; 16])),
        Change::LeasePut(lease(3, "beta", 5)),
        Change::TicketPut(ticket(4, "alpha", 1)),
        Change::TicketPut(ticket(5, "alpha", 2)),
        Change::TicketDelete(TicketId([5; 16])),
        Change::TicketPut(ticket(6, "beta", 3)),
        Change::HistoryAppend(record(7, "alpha", 100)),
        Change::HistoryAppend(record(8, "alpha", 600)),
        Change::HistoryPrune { ended_before: 500 },
        Change::HistoryAppend(record(9, "beta", 50)),
        Change::JobPut(job(10, "alpha")),
        Change::JobPut(job(11, "beta")),
        Change::JobDelete(JobId([11; 16])),
        Change::JobPut(Job {
            finished_at: Some(6_000),
            state: JobState::Succeeded,
            ..job(10, "alpha")
        }),
        Change::Counters {
            next_token: 11,
            forgotten_token_floor: 3,
        },
    ];
    persister.commit(&batch).unwrap();
    let expected = Snapshot {
        next_token: 11,
        forgotten_token_floor: 3,
        locks: vec![lock_record("alpha", 1, 3), lock_record("beta", 3, 5)],
        leases: vec![lease(1, "alpha", 3), lease(3, "beta", 5)],
        tickets: vec![ticket(4, "alpha", 1), ticket(6, "beta", 3)],
        // The record that ended at 100 was pruned; the one appended after the prune stays.
        history: vec![record(9, "beta", 50), record(8, "alpha", 600)],
        jobs: vec![Job {
            finished_at: Some(6_000),
            state: JobState::Succeeded,
            ..job(10, "alpha")
        }],
    };
    assert_eq!(sorted(persister.load().unwrap()), sorted(expected.clone()));
    // Another connection (a restart) reads the same.
    drop(persister);
    let mut persister = schema.persister(None);
    assert_eq!(sorted(persister.load().unwrap()), sorted(expected));

    persister
        .commit(&[
            Change::LockForget(name("alpha")),
            Change::LeaseDelete(LeaseId([1; 16])),
            Change::TicketDelete(TicketId([4; 16])),
            Change::JobDelete(JobId([10; 16])),
            Change::HistoryPrune { ended_before: 700 },
        ])
        .unwrap();
    let after = sorted(persister.load().unwrap());
    assert_eq!(after.locks, vec![lock_record("beta", 3, 5)]);
    assert_eq!(after.leases, vec![lease(3, "beta", 5)]);
    assert_eq!(after.tickets, vec![ticket(6, "beta", 3)]);
    assert!(after.history.is_empty(), "{:?}", after.history);
    assert!(after.jobs.is_empty());
    assert_eq!((after.next_token, after.forgotten_token_floor), (11, 3));

    // Keys and the audit log go through the persister too.
    let key = ApiKey {
        id: "key_0123456789abcdef".into(),
        name: "ci".into(),
        secret_sha256: "ab".repeat(32),
        grants: vec![KeyGrant {
            role: Role::Acquire,
            prefix: "ci/".into(),
        }],
        rate_per_sec: Some(50),
        created_at: 1_000,
        revoked_at: None,
        quota: baton_core::KeyQuota {
            leases_max: Some(5),
            waiters_max: None,
            locks_max: Some(0),
            jobs_max: Some(1_000_000),
        },
    };
    persister.put_key(&key).unwrap();
    let revoked = ApiKey {
        revoked_at: Some(2_000),
        ..key.clone()
    };
    persister.put_key(&revoked).unwrap();
    assert_eq!(persister.keys().unwrap(), vec![revoked]);
    let entry = AuditEntry {
        seq: 0,
        at: 3_000,
        actor: "anonymous".into(),
        action: "key.create".into(),
        target: key.id.clone(),
        detail: None,
    };
    let first = persister.append_audit(&entry).unwrap();
    let second = persister.append_audit(&entry).unwrap();
    assert!(second.seq > first.seq);
    assert_eq!(
        persister.audit(None, 10).unwrap(),
        vec![second.clone(), first.clone()]
    );
    assert_eq!(persister.audit(Some(second.seq), 10).unwrap(), vec![first]);
}

/// A persister fenced by an epoch that is not the leadership row's refuses every write with a
/// deposed error and writes nothing; under the row's epoch it writes; once the row moves on, it
/// is refused again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_write_under_a_lost_leadership_is_refused_and_writes_nothing() {
    let Some(url) = testing::available("postgres a_fenced_write_is_refused").await else {
        return;
    };
    let schema = Schema::new(&url, "fence");
    // Creates the schema (and the leader table).
    let mut plain = schema.persister(None);
    schema
        .sql(
            "INSERT INTO leader (id, node, url, epoch, expires_at)
             VALUES (1, 'node-a', 'http://127.0.0.1:1', 2, now() + interval '1 minute')",
        )
        .await;
    let fence = |node: &str, epoch: i64| Fence {
        node: node.into(),
        epoch,
    };
    let batch = [
        Change::LockPut(lock_record("fenced", 1, 1)),
        Change::LeasePut(lease(1, "fenced", 1)),
        Change::Counters {
            next_token: 2,
            forgotten_token_floor: 0,
        },
    ];
    let key = ApiKey {
        id: "key_00000000000000aa".into(),
        name: "k".into(),
        secret_sha256: "cd".repeat(32),
        grants: Vec::new(),
        rate_per_sec: None,
        created_at: 1,
        revoked_at: None,
        quota: baton_core::KeyQuota::default(),
    };
    let entry = AuditEntry {
        seq: 0,
        at: 1,
        actor: "anonymous".into(),
        action: "lease.revoke".into(),
        target: "fenced".into(),
        detail: Some("x".into()),
    };
    for wrong in [fence("node-a", 1), fence("node-b", 2)] {
        let mut stale = schema.persister(Some(wrong.clone()));
        let error = stale.commit(&batch).unwrap_err();
        assert!(error.is_deposed(), "{wrong:?}: {error}");
        assert!(stale.put_key(&key).unwrap_err().is_deposed());
        assert!(stale.append_audit(&entry).unwrap_err().is_deposed());
        assert!(stale.load().unwrap_err().is_deposed());
    }
    let nothing = plain.load().unwrap();
    assert!(
        nothing.locks.is_empty() && nothing.leases.is_empty(),
        "{nothing:?}"
    );
    assert_eq!(nothing.next_token, 1);
    assert!(plain.keys().unwrap().is_empty());
    assert!(plain.audit(None, 10).unwrap().is_empty());

    let mut leader = schema.persister(Some(fence("node-a", 2)));
    leader.load().unwrap();
    leader.commit(&batch).unwrap();
    leader.put_key(&key).unwrap();
    leader.append_audit(&entry).unwrap();
    let written = plain.load().unwrap();
    assert_eq!(written.leases, vec![lease(1, "fenced", 1)]);
    assert_eq!(plain.keys().unwrap(), vec![key.clone()]);

    // Another server takes over: the old leader's next commit is refused, and changes nothing.
    schema
        .sql("UPDATE leader SET node = 'node-b', epoch = 3 WHERE id = 1")
        .await;
    let error = leader
        .commit(&[Change::LeaseDelete(LeaseId([1; 16]))])
        .unwrap_err();
    assert!(error.is_deposed(), "{error}");
    assert_eq!(plain.load().unwrap().leases, vec![lease(1, "fenced", 1)]);
}

/// The engine over PostgreSQL recovers its table after a restart: the holder keeps its lease and
/// token, the waiter its place, tokens keep increasing, keys and audit entries are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_recovers_the_table() {
    let Some(url) = testing::available("postgres a_restart_recovers_the_table").await else {
        return;
    };
    let schema = Schema::new(&url, "restart");
    let store = schema.open().await;
    let held = grant(&store, "restart", "holder").await;
    let queued = match store
        .acquire(AcquireArgs {
            queue: true,
            ..args("restart", "waiter", 30_000, Duration::ZERO)
        })
        .await
        .unwrap()
    {
        AcquireOutcome::Queued(queued) => queued,
        other => panic!("expected a queued ticket, got {other:?}"),
    };
    let other = grant(&store, "restart-other", "x").await;
    store.release(other.id).await.unwrap();
    drop(store);

    let store = schema.open().await;
    let view = store.lock(name("restart")).await.unwrap().unwrap();
    assert_eq!(view.holders.len(), 1, "{view:?}");
    assert_eq!(view.holders[0].token, held.token);
    assert_eq!(view.waiters.len(), 1, "{view:?}");
    let renewed = store.renew(held.id, None, None).await.unwrap();
    assert_eq!(renewed.token, held.token);
    let history = store.history(name("restart-other"), 10).await.unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    // The holder releases: the waiter from before the restart is granted.
    store.release(held.id).await.unwrap();
    let status = store
        .wait_ticket(queued.ticket.id, Duration::from_secs(10))
        .await
        .unwrap();
    let baton_core::TicketStatus::Granted(next) = status else {
        panic!("the waiter was not granted: {status:?}");
    };
    assert!(
        next.token > other.token,
        "{} then {}",
        other.token,
        next.token
    );
}

/// A database the per-lock store (schema version 4) wrote upgrades: its live lease is recovered
/// and the next token continues from its token sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_schema_version_4_upgrades() {
    let Some(url) = testing::available("postgres a_database_of_schema_version_4_upgrades").await
    else {
        return;
    };
    let schema = Schema::new(&url, "upgrade");
    {
        let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let driver = tokio::spawn(connection);
        schema::migrate_to(&mut client, &schema.name, 4)
            .await
            .unwrap();
        drop(client);
        let _ = driver.await;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    schema
        .sql(&format!(
            "SELECT setval('token_seq', 41);
             INSERT INTO locks (name, capacity, newest_token, newest_granted, delayed_until,
                                idle_since, delayed_slots)
                 VALUES ('old', 1, 41, 41, NULL, {now}, 0);
             INSERT INTO leases (id, lock, owner, owner_key, token, ttl_ms, granted_at,
                                 expires_at, request_id, ticket)
                 VALUES ('\\x01010101010101010101010101010101'::bytea, 'old', 'before', NULL,
                         41, 30000, {now}, {now} + 30000, NULL, NULL);
             INSERT INTO requests (request_id, lock, kind, target, at)
                 VALUES ('r', 'old', 'lease', '\\x01'::bytea, {now});"
        ))
        .await;
    let store = schema.open().await;
    let view = store.lock(name("old")).await.unwrap().unwrap();
    assert_eq!(view.holders.len(), 1, "{view:?}");
    assert_eq!(view.holders[0].token, 41);
    let fresh = grant(&store, "new", "after").await;
    assert_eq!(fresh.token, 42, "tokens continue from the old sequence");
}

/// A database of schema version 6 (before lease values and modes) upgrades: its live lease is
/// recovered exclusive with no value, and a shared lease with a value written after the upgrade
/// keeps both across a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_schema_version_6_gains_values_and_modes() {
    let Some(url) =
        testing::available("postgres a_database_of_schema_version_6_gains_values_and_modes").await
    else {
        return;
    };
    let schema = Schema::new(&url, "upgrade_v7");
    {
        let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let driver = tokio::spawn(connection);
        schema::migrate_to(&mut client, &schema.name, 6)
            .await
            .unwrap();
        drop(client);
        let _ = driver.await;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    schema
        .sql(&format!(
            "INSERT INTO meta (key, value) VALUES ('next_token', 8)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value;
             INSERT INTO locks (name, capacity, newest_token, newest_granted, delayed_until,
                                delayed_slots)
                 VALUES ('old', 1, 7, 7, NULL, 0);
             INSERT INTO leases (id, lock, owner, owner_key, token, ttl_ms, granted_at,
                                 expires_at, request_id, ticket)
                 VALUES ('\\x01010101010101010101010101010101'::bytea, 'old', 'before', NULL,
                         7, 30000, {now}, {now} + 30000, NULL, NULL);"
        ))
        .await;
    let store = schema.open().await;
    let view = store.lock(name("old")).await.unwrap().unwrap();
    assert_eq!(view.holders.len(), 1, "{view:?}");
    assert_eq!(view.holders[0].mode, baton_core::Mode::Exclusive);
    assert_eq!(view.holders[0].value, None);
    let reader = match store
        .acquire(AcquireArgs {
            value: Some("10.0.0.1:5432".into()),
            mode: baton_core::Mode::Shared,
            ..args("readers", "reader", 30_000, Duration::ZERO)
        })
        .await
        .unwrap()
    {
        AcquireOutcome::Granted(lease) => lease,
        other => panic!("expected a grant, got {other:?}"),
    };
    drop(store);
    let store = schema.open().await;
    let view = store.lock(name("readers")).await.unwrap().unwrap();
    assert_eq!(view.holders.len(), 1, "{view:?}");
    assert_eq!(view.holders[0].id, reader.id);
    assert_eq!(view.holders[0].mode, baton_core::Mode::Shared);
    assert_eq!(view.holders[0].value.as_deref(), Some("10.0.0.1:5432"));
}

/// The persister's connection is cut (as a database restart or a network drop would): the commit
/// that finds it broken fails, the engine's retry opens a new one, and nothing acknowledged is
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_is_replaced() {
    let Some(url) = testing::available("postgres a_cut_connection_is_replaced").await else {
        return;
    };
    let schema = Schema::new(&url, "reconnect");
    // A name of this test's own, so that only its connections are cut.
    let application = format!("baton_test_{}_reconnect", std::process::id());
    let options = PgOptions {
        url: format!("{} application_name={application}", key_value(&url)),
        ..schema.options()
    };
    let store = PostgresStore::open(options).await.expect("open the store");
    let first = grant(&store, "reconnect-1", "a").await;
    let cut = schema
        .number(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = '{application}'"
        ))
        .await;
    assert_eq!(cut, 1, "the store keeps one connection");
    let second = grant(&store, "reconnect-2", "b").await;
    assert!(second.token > first.token);
    drop(store);
    let store = schema.open().await;
    for (lock, lease) in [("reconnect-1", &first), ("reconnect-2", &second)] {
        let view = store.lock(name(lock)).await.unwrap().unwrap();
        assert_eq!(view.holders.len(), 1, "{lock}: {view:?}");
        assert_eq!(view.holders[0].token, lease.token, "{lock}");
    }
}

/// An engine over a fenced persister stops at its first commit after another server took the
/// leadership: the request that needed it fails, the store is no longer ready, and the refused
/// batch is not in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_engine_stops_taking_writes() {
    let Some(url) = testing::available("postgres a_deposed_engine_stops_taking_writes").await
    else {
        return;
    };
    let schema = Schema::new(&url, "deposed");
    let mut plain = schema.persister(None);
    schema
        .sql(
            "INSERT INTO leader (id, node, url, epoch, expires_at)
             VALUES (1, 'node-a', 'http://127.0.0.1:1', 7, now() + interval '1 minute')",
        )
        .await;
    let options = schema.options();
    let fence = Fence {
        node: "node-a".into(),
        epoch: 7,
    };
    let store = tokio::task::spawn_blocking(move || {
        let persister = PgPersister::connect(&options, Some(fence)).expect("connect");
        Engine::open(
            Box::new(persister),
            options.clock(),
            options.engine_options(),
        )
        .expect("open the engine")
    })
    .await
    .unwrap();
    let kept = grant(&store, "deposed-1", "a").await;
    schema
        .sql("UPDATE leader SET node = 'node-b', epoch = 8 WHERE id = 1")
        .await;
    let refused = store
        .acquire(args("deposed-2", "b", 30_000, Duration::ZERO))
        .await;
    match refused {
        Err(baton_store::StoreError::Unavailable(reason)) => {
            assert!(reason.contains("deposed"), "{reason}");
        }
        other => panic!("a deposed engine answered {other:?}"),
    }
    assert!(
        store.ready().await.is_err(),
        "a deposed engine is not ready"
    );
    let snapshot = plain.load().unwrap();
    assert_eq!(snapshot.leases.len(), 1, "{snapshot:?}");
    assert_eq!(snapshot.leases[0].token, kept.token);
}
