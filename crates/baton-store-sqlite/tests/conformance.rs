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
            "DROP TABLE api_keys; DROP TABLE audit_log; ALTER TABLE jobs DROP COLUMN once_per_ms;
             ALTER TABLE tickets DROP COLUMN api_key; PRAGMA user_version = 3;",
        )
        .expect("go back to version 3");
    drop(connection);
    let mut persister = SqlitePersister::open(root.path()).expect("migrate");
    let key = ApiKey {
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
