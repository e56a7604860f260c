//! The conformance suite against the SQLite store: every case, including the restart cases,
//! over a real database file (WAL, synchronous = FULL) in a temporary folder.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on what it did not expect

use std::sync::Arc;

use async_trait::async_trait;
use baton_store::conformance::{self, Backend};
use baton_store::{Engine, EngineOptions, ManualClock, Store};
use baton_store_sqlite::SqlitePersister;

struct Sqlite {
    root: tempfile::TempDir,
}

impl Sqlite {
    fn new() -> Sqlite {
        Sqlite {
            root: tempfile::tempdir().expect("a temporary folder"),
        }
    }
}

#[async_trait]
impl Backend for Sqlite {
    async fn open(&self, key: &str, clock: Arc<ManualClock>) -> Arc<dyn Store> {
        let persister =
            SqlitePersister::open(&self.root.path().join(key)).expect("open the database");
        let options = EngineOptions {
            config: conformance::config(),
            run_timer: false,
            ..EngineOptions::default()
        };
        Arc::new(Engine::open(Box::new(persister), clock, options).expect("recover the store"))
    }

    fn durable(&self) -> bool {
        true
    }
}

baton_store::conformance_tests!(Sqlite::new());

/// A second server on the same data folder would keep its own lock table: it must be refused.
#[test]
fn a_second_server_on_the_same_folder_is_refused() {
    let root = tempfile::tempdir().expect("a temporary folder");
    let first = SqlitePersister::open(root.path()).expect("the first opens");
    let second = SqlitePersister::open(root.path());
    assert!(second.is_err(), "a second persister opened the same folder");
    drop(first);
    assert!(
        SqlitePersister::open(root.path()).is_ok(),
        "the folder is free again"
    );
}

/// A database written by a newer baton is refused rather than misread.
#[test]
fn a_newer_schema_is_refused() {
    let root = tempfile::tempdir().expect("a temporary folder");
    drop(SqlitePersister::open(root.path()).expect("create"));
    let connection =
        rusqlite::Connection::open(root.path().join(baton_store_sqlite::DATABASE_FILE))
            .expect("open directly");
    connection
        .pragma_update(None, "user_version", 99)
        .expect("bump the version");
    drop(connection);
    let error = SqlitePersister::open(root.path()).expect_err("a newer schema must be refused");
    assert!(error.to_string().contains("newer"), "{error}");
}

/// A database of schema version 6 (before lease values and modes) keeps its leases on open,
/// exclusive with no value, and gains the value and mode columns: a lease, ticket and history record written after the
/// migration keep theirs across a reopen.
#[tokio::test]
async fn a_version_6_database_gains_lease_values() {
    use baton_core::{Change, HistoryRecord, Lease, LeaseEnd, LeaseId, LockName};
    use baton_store::Persister;
    let root = tempfile::tempdir().expect("a temporary folder");
    let lock = LockName::new("leader").expect("a name");
    let lease = |n: u8, value: Option<&str>| Lease {
        mode: baton_core::Mode::Exclusive,
        value: value.map(str::to_owned),
        id: LeaseId([n; 16]),
        lock: lock.clone(),
        owner: "o".into(),
        owner_key: None,
        token: u64::from(n),
        ttl_ms: 1_000,
        granted_at: 1,
        expires_at: 1_001,
        request_id: None,
        ticket: None,
        api_key: None,
    };
    {
        let mut persister = SqlitePersister::open(root.path()).expect("create");
        persister
            .commit(&[Change::LeasePut(lease(1, None))])
            .expect("commit");
    }
    let connection =
        rusqlite::Connection::open(root.path().join(baton_store_sqlite::DATABASE_FILE))
            .expect("open directly");
    connection
        .execute_batch(
            "ALTER TABLE leases DROP COLUMN value; ALTER TABLE tickets DROP COLUMN value;
             ALTER TABLE history DROP COLUMN value; ALTER TABLE leases DROP COLUMN mode;
             ALTER TABLE tickets DROP COLUMN mode; ALTER TABLE history DROP COLUMN mode; PRAGMA user_version = 6;",
        )
        .expect("go back to version 6");
    drop(connection);
    let mut persister = SqlitePersister::open(root.path()).expect("migrate");
    persister
        .commit(&[
            Change::LeasePut(lease(2, Some("10.0.0.2:7000"))),
            Change::HistoryAppend(HistoryRecord {
                mode: baton_core::Mode::Exclusive,
                lease_id: LeaseId([3; 16]),
                request_id: None,
                lock: lock.clone(),
                owner: "o".into(),
                token: 3,
                granted_at: 1,
                ended_at: 2,
                end: LeaseEnd::Released,
                value: Some("10.0.0.3:7000".into()),
            }),
            Change::Counters {
                next_token: 4,
                forgotten_token_floor: 0,
            },
        ])
        .expect("commit");
    drop(persister);
    let mut persister = SqlitePersister::open(root.path()).expect("reopen");
    let snapshot = persister.load().expect("load");
    let mut leases = snapshot.leases.clone();
    leases.sort_by_key(|lease| lease.token);
    assert_eq!(
        leases,
        vec![lease(1, None), lease(2, Some("10.0.0.2:7000"))]
    );
    assert_eq!(snapshot.history[0].value.as_deref(), Some("10.0.0.3:7000"));
}

/// A database of schema version 3 (before API keys) gains the key and audit tables on open.
#[tokio::test]
async fn a_version_3_database_gains_keys_and_audit() {
    use baton_store::{ApiKey, AuditEntry, Persister};
    let root = tempfile::tempdir().expect("a temporary folder");
    drop(SqlitePersister::open(root.path()).expect("create"));
    let connection =
        rusqlite::Connection::open(root.path().join(baton_store_sqlite::DATABASE_FILE))
            .expect("open directly");
    connection
        .execute_batch(
            "ALTER TABLE leases DROP COLUMN value; ALTER TABLE tickets DROP COLUMN value;
             ALTER TABLE history DROP COLUMN value; ALTER TABLE leases DROP COLUMN mode;
             ALTER TABLE tickets DROP COLUMN mode; ALTER TABLE history DROP COLUMN mode; DROP TABLE api_keys; DROP TABLE audit_log; ALTER TABLE jobs DROP COLUMN once_per_ms;
             ALTER TABLE tickets DROP COLUMN api_key; ALTER TABLE leases DROP COLUMN api_key;
             ALTER TABLE locks DROP COLUMN api_key; ALTER TABLE jobs DROP COLUMN api_key;
             PRAGMA user_version = 3;",
        )
        .expect("go back to version 3");
    drop(connection);
    let mut persister = SqlitePersister::open(root.path()).expect("migrate");
    let key = ApiKey {
        quota: Default::default(),
        id: "key_00000000000000ff".into(),
        name: "ops".into(),
        secret_sha256: "0".repeat(64),
        grants: vec![],
        rate_per_sec: None,
        created_at: 1,
        revoked_at: None,
    };
    persister.put_key(&key).expect("put a key");
    assert_eq!(persister.keys().expect("keys"), vec![key]);
    let entry = persister
        .append_audit(&AuditEntry {
            seq: 0,
            at: 1,
            actor: "a".into(),
            action: "key.create".into(),
            target: "key_00000000000000ff".into(),
            detail: None,
        })
        .expect("append");
    assert_eq!(entry.seq, 1);
}

/// A database of schema version 5 (before per-key quotas) keeps its keys and leases on open,
/// and gains the columns the quotas need: a key's own quotas and the key of each lease, lock
/// and job, all of which then survive a reopen.
#[tokio::test]
async fn a_version_5_database_gains_per_key_quotas() {
    use baton_core::{Change, KeyQuota, Lease, LeaseId, LockName, LockRecord};
    use baton_store::{ApiKey, Persister};
    let root = tempfile::tempdir().expect("a temporary folder");
    let old_key = ApiKey {
        id: "key_00000000000000aa".into(),
        name: "old".into(),
        secret_sha256: "1".repeat(64),
        grants: vec![],
        rate_per_sec: Some(5),
        created_at: 1,
        revoked_at: None,
        quota: KeyQuota::default(),
    };
    {
        let mut persister = SqlitePersister::open(root.path()).expect("create");
        persister.put_key(&old_key).expect("put a key");
    }
    let connection =
        rusqlite::Connection::open(root.path().join(baton_store_sqlite::DATABASE_FILE))
            .expect("open directly");
    connection
        .execute_batch(
            "ALTER TABLE leases DROP COLUMN value; ALTER TABLE tickets DROP COLUMN value;
             ALTER TABLE history DROP COLUMN value; ALTER TABLE leases DROP COLUMN mode;
             ALTER TABLE tickets DROP COLUMN mode; ALTER TABLE history DROP COLUMN mode; ALTER TABLE leases DROP COLUMN api_key; ALTER TABLE locks DROP COLUMN api_key;
             ALTER TABLE jobs DROP COLUMN api_key; ALTER TABLE api_keys DROP COLUMN leases_max;
             ALTER TABLE api_keys DROP COLUMN waiters_max; ALTER TABLE api_keys DROP COLUMN locks_max;
             ALTER TABLE api_keys DROP COLUMN jobs_max; PRAGMA user_version = 5;",
        )
        .expect("go back to version 5");
    drop(connection);
    let mut persister = SqlitePersister::open(root.path()).expect("migrate");
    assert_eq!(persister.keys().expect("keys"), vec![old_key.clone()]);
    let key = ApiKey {
        id: "key_00000000000000bb".into(),
        quota: KeyQuota {
            leases_max: Some(7),
            waiters_max: None,
            locks_max: Some(9),
            jobs_max: Some(0),
        },
        ..old_key.clone()
    };
    persister.put_key(&key).expect("put a key with quotas");
    let lock = LockName::new("team-a/x").expect("a name");
    persister
        .commit(&[
            Change::LockPut(LockRecord {
                name: lock.clone(),
                capacity: 1,
                newest_token: 1,
                newest_granted: 1,
                delayed_until: None,
                delayed_slots: 0,
                api_key: Some(key.id.clone()),
            }),
            Change::LeasePut(Lease {
                mode: baton_core::Mode::Exclusive,
                value: None,
                id: LeaseId([3; 16]),
                lock: lock.clone(),
                owner: "o".into(),
                owner_key: None,
                token: 1,
                ttl_ms: 1_000,
                granted_at: 1,
                expires_at: 1_001,
                request_id: None,
                ticket: None,
                api_key: Some(key.id.clone()),
            }),
            Change::Counters {
                next_token: 2,
                forgotten_token_floor: 0,
            },
        ])
        .expect("commit");
    drop(persister);
    let mut persister = SqlitePersister::open(root.path()).expect("reopen");
    assert_eq!(persister.keys().expect("keys"), vec![old_key, key.clone()]);
    let snapshot = persister.load().expect("load");
    assert_eq!(snapshot.locks[0].api_key.as_deref(), Some(key.id.as_str()));
    assert_eq!(snapshot.leases[0].api_key.as_deref(), Some(key.id.as_str()));
}

/// Per-key counts are rebuilt from the stored records: a key at its quota before a restart is
/// still at it after, and another key is not.
#[tokio::test]
async fn a_key_at_its_quota_is_still_at_it_after_a_restart() {
    use baton_core::{AcquireError, KeyQuota, LockName, Quota};
    use baton_store::{AcquireArgs, AcquireOutcome, StoreError};
    let root = tempfile::tempdir().expect("a temporary folder");
    let args = |lock: &str, key: &str| AcquireArgs {
        mode: baton_core::Mode::Exclusive,
        value: None,
        lock: LockName::new(lock).expect("a name"),
        owner: "o".into(),
        owner_key: None,
        ttl_ms: 60_000,
        capacity: None,
        wait: std::time::Duration::ZERO,
        queue: false,
        request_id: None,
        api_key: Some(key.to_owned()),
        quota: KeyQuota {
            leases_max: Some(2),
            ..KeyQuota::default()
        },
    };
    let open = || {
        let persister = SqlitePersister::open(root.path()).expect("open the database");
        let options = EngineOptions {
            run_timer: false,
            ..EngineOptions::default()
        };
        Engine::open(
            Box::new(persister),
            Arc::new(ManualClock::new(1_000_000)),
            options,
        )
        .expect("recover the store")
    };
    {
        let store = open();
        for lock in ["a/1", "a/2"] {
            let outcome = store.acquire(args(lock, "key_a")).await.expect("acquire");
            assert!(matches!(outcome, AcquireOutcome::Granted(_)), "{outcome:?}");
        }
    }
    let store = open();
    match store.acquire(args("a/3", "key_a")).await {
        Err(StoreError::Acquire(AcquireError::QuotaExceeded {
            quota: Quota::Leases,
            limit: 2,
        })) => {}
        other => panic!("expected the lease quota after the restart, got {other:?}"),
    }
    let outcome = store.acquire(args("b/1", "key_b")).await.expect("acquire");
    assert!(matches!(outcome, AcquireOutcome::Granted(_)), "{outcome:?}");
}
