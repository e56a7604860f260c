//! The conformance suite against the PostgreSQL store, on a real server (never a mock): every
//! case, including the restart cases (a restart is a new store on the same schema). Each test
//! works in a schema of its own and drops it at the end.
//!
//! Without a reachable PostgreSQL each case says on the terminal that it is skipped and why, and
//! passes; with `BATON_REQUIRE_POSTGRES=1` (as `.ci/run` sets) it fails instead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use baton_store::conformance::{self, Backend};
use baton_store::{ManualClock, Store};
use baton_store_postgres::{PgOptions, PostgresStore, TimeSource, testing};

struct Postgres {
    url: String,
    schemas: Mutex<Vec<String>>,
}

#[async_trait]
impl Backend for Postgres {
    async fn open(&self, key: &str, clock: Arc<ManualClock>) -> Arc<dyn Store> {
        let schema = testing::schema_for(key);
        {
            let mut schemas = self.schemas.lock().unwrap();
            if !schemas.contains(&schema) {
                // A fresh key: leftovers of an earlier run with the same pid go first.
                testing::drop_schema(&self.url, &schema);
                schemas.push(schema.clone());
            }
        }
        let options = PgOptions {
            schema,
            config: conformance::config(),
            time: TimeSource::Clock(clock),
            run_timer: false,
            ..PgOptions::new(self.url.clone())
        };
        Arc::new(PostgresStore::open(options).await.expect("open the store"))
    }

    fn durable(&self) -> bool {
        true
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        for schema in self.schemas.lock().unwrap().drain(..) {
            testing::drop_schema(&self.url, &schema);
        }
    }
}

macro_rules! postgres_cases {
    (@tests $($case:ident)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(url) = testing::available(concat!("postgres conformance ", stringify!($case))).await else {
                    return;
                };
                let backend = Postgres { url, schemas: Mutex::new(Vec::new()) };
                conformance::$case(&backend).await;
            }
        )*
    };
}

baton_store::__conformance_each_case!([postgres_cases] @tests);
