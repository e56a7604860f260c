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
