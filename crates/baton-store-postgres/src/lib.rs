//! baton's PostgreSQL store: the engine's lock table, kept durably in PostgreSQL.
//!
//! The store is the same [`Engine`] as the embedded one (`baton-store`): it owns the lock table
//! in memory, runs the core's transitions under one mutex, group-commits their changes, wakes
//! parked waiters and runs the expiry timer. PostgreSQL is its durable log: a [`PgPersister`]
//! (`persist.rs`) writes each batch of changes in one transaction of a few multi-row statements,
//! and loads the whole table back at start. So the rules, the wake-ups, the timer and the
//! recovery are one piece of code for every store, and no domain rule lives in SQL.
//!
//! - **One writer.** One engine, in one server, owns a schema's table. [`PostgresStore::open`]
//!   opens one without a fence: fit for a single server. A server that shares a schema with
//!   others must hold its `leader` row and open its persister with a [`Fence`]: every write is
//!   then refused once another server holds the row, so a deposed server can never commit.
//! - **Time** is the engine's [`Clock`] (the server's clock, made monotonic); tests drive it by
//!   hand ([`TimeSource::Clock`]).
//! - **Tokens** come from the engine's counter, written in the same commit as each grant (see
//!   [`schema`] for how they stay increasing across a fail-over to a promoted standby).
//! - **Migrations** are versioned ([`schema`]); a database of an older baton is upgraded at
//!   start.

pub mod leader;
mod persist;
mod rows;
pub mod schema;

use std::sync::Arc;
use std::time::Duration;

use baton_core::{Config, Millis};
use baton_store::{Clock, Engine, EngineOptions, StoreError, SystemClock};

pub use persist::{Fence, PgPersister};

/// Where the engine reads the time.
#[derive(Clone)]
pub enum TimeSource {
    /// This server's clock, made monotonic (production).
    System,
    /// A clock of the caller's (tests with a manual clock).
    Clock(Arc<dyn Clock>),
}

/// How to open a [`PostgresStore`].
#[derive(Clone)]
pub struct PgOptions {
    /// A libpq-style URL or key/value string: `postgres://user@host:5432/db`.
    pub url: String,
    /// The schema holding baton's tables (created if missing). Tests isolate themselves with
    /// their own.
    pub schema: String,
    /// The lock table's tunables.
    pub config: Config,
    /// Where time comes from.
    pub time: TimeSource,
    /// Run the expiry timer (tests with a manual clock tick by hand).
    pub run_timer: bool,
    /// Shifts this server's clock by this many milliseconds (a testing aid: expiry follows the
    /// engine's clock, so only the times it reports move).
    pub local_skew_ms: i64,
}

impl PgOptions {
    /// Options with the defaults: schema `baton`, the system clock, timer on.
    pub fn new(url: impl Into<String>) -> PgOptions {
        PgOptions {
            url: url.into(),
            schema: "baton".into(),
            config: Config::default(),
            time: TimeSource::System,
            run_timer: true,
            local_skew_ms: 0,
        }
    }

    /// The engine's clock these options ask for.
    pub fn clock(&self) -> Arc<dyn Clock> {
        match &self.time {
            TimeSource::Clock(clock) => Arc::clone(clock),
            TimeSource::System if self.local_skew_ms == 0 => Arc::new(SystemClock::new()),
            TimeSource::System => Arc::new(SkewedClock {
                clock: SystemClock::new(),
                skew_ms: self.local_skew_ms,
            }),
        }
    }

    /// The engine's options these options ask for.
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            config: self.config.clone(),
            run_timer: self.run_timer,
            ..EngineOptions::default()
        }
    }
}

/// The system clock shifted by a fixed amount.
struct SkewedClock {
    clock: SystemClock,
    skew_ms: i64,
}

impl Clock for SkewedClock {
    fn now_ms(&self) -> Millis {
        self.clock.now_ms().saturating_add_signed(self.skew_ms)
    }
}

/// The connection settings of `options`: its URL, with baton's schema as the search path.
pub(crate) fn pg_config(options: &PgOptions) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = options
        .url
        .parse()
        .map_err(|error| StoreError::Unavailable(format!("invalid database URL: {error}")))?;
    config.options(format!(
        "-c search_path={} -c client_min_messages=warning",
        options.schema
    ));
    if config.get_application_name().is_none() {
        config.application_name("baton");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    Ok(config)
}

/// The PostgreSQL store of a single server: an [`Engine`] over a [`PgPersister`] without a
/// fence. See the crate documentation.
#[derive(Debug)]
pub struct PostgresStore;

impl PostgresStore {
    /// Connects, applies migrations, loads and recovers the table, and starts the engine's
    /// committer and (when asked) its timer. Must be called inside a tokio runtime.
    pub async fn open(options: PgOptions) -> Result<Engine, StoreError> {
        // Connecting and loading block: off the runtime's workers. A blocking task still has
        // the runtime at hand for the engine's timer.
        tokio::task::spawn_blocking(move || {
            let persister = PgPersister::connect(&options, None)?;
            Engine::open(
                Box::new(persister),
                options.clock(),
                options.engine_options(),
            )
            .map_err(|error| StoreError::Unavailable(error.0))
        })
        .await
        .map_err(|error| StoreError::Unavailable(format!("opening the store failed: {error}")))?
    }
}

pub mod testing {
    //! Helpers for tests that need a real PostgreSQL: where it is, and skipping plainly when it
    //! is not there (unless `BATON_REQUIRE_POSTGRES=1`, as `.ci/run` sets, makes that a failure).

    use std::io::Write as _;
    use std::time::Duration;

    /// The database tests use: `BATON_TEST_DATABASE_URL`, or the local server on 127.0.0.1:5432
    /// with trust authentication and a database `test`.
    pub fn database_url() -> String {
        std::env::var("BATON_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    /// `Some(url)` when the test database answers. Otherwise says on the terminal which test is
    /// skipped and why (written past the test harness's capture), and gives `None`; or panics
    /// when `BATON_REQUIRE_POSTGRES=1`.
    pub async fn available(test: &str) -> Option<String> {
        let url = database_url();
        let reason = match url.parse::<tokio_postgres::Config>() {
            Err(error) => format!("invalid BATON_TEST_DATABASE_URL: {error}"),
            Ok(mut config) => {
                config.connect_timeout(Duration::from_secs(3));
                match config.connect(tokio_postgres::NoTls).await {
                    Ok((client, connection)) => {
                        let driver = tokio::spawn(connection);
                        let ok = client.simple_query("SELECT 1").await.is_ok();
                        drop(client);
                        let _ = driver.await;
                        if ok {
                            return Some(url);
                        }
                        "the server does not answer queries".to_owned()
                    }
                    Err(error) => error.to_string(),
                }
            }
        };
        if std::env::var("BATON_REQUIRE_POSTGRES").is_ok_and(|value| value == "1") {
            panic!("PostgreSQL is required (BATON_REQUIRE_POSTGRES=1) but {url} failed: {reason}");
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: no PostgreSQL at {url} ({reason}); set BATON_TEST_DATABASE_URL, \
             or BATON_REQUIRE_POSTGRES=1 to make this a failure"
        );
        None
    }

    /// A schema name unique to this process and `key`.
    pub fn schema_for(key: &str) -> String {
        let key: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("baton_test_{}_{key}", std::process::id())
    }

    /// Drops a schema and everything in it (a test's clean-up). Blocks; runs its own runtime
    /// so it works from `Drop`.
    pub fn drop_schema(url: &str, schema: &str) {
        let url = url.to_owned();
        let statement = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    let driver = tokio::spawn(connection);
                    let _ = client.batch_execute(&statement).await;
                    drop(client);
                    let _ = driver.await;
                }
            });
        })
        .join();
    }
}
