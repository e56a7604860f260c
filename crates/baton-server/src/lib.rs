//! baton's HTTP server: the `/v1` API over a [`Store`], long-poll waits, health and the
//! OpenAPI document.
//!
//! - [`serve`] is what `baton server` runs: it checks the listen rule, opens the chosen store
//!   and calls [`run`].
//! - [`run`] serves a router over a listener it is given until a shutdown future completes, so
//!   tests pass a listener bound to `127.0.0.1:0`.
//! - `routes` holds the handlers (wire → store → wire), `extract` the request extractors,
//!   `error` the one mapping from failures to HTTP answers.
//!
//! **Architecture invariant:** no SQL and no domain rule here; outcomes come from the core
//! through the store, and internal error text is logged, never sent.

mod error;
mod extract;
mod jobs;
mod openapi;
mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use baton_store::{Engine, EngineOptions, MemoryPersister, Store, SystemClock};
use baton_store_sqlite::SqlitePersister;

pub use error::ApiError;
pub use extract::BODY_BYTES_MAX;
pub use routes::{AppState, HISTORY_LIMIT_MAX, LIST_LIMIT_MAX, WAIT_MS_MAX, router};

/// Which store keeps the server's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// SQLite in `data_dir`: durable (the default).
    Sqlite,
    /// In memory only: everything is lost when the server stops. For tests and trials.
    Memory,
}

/// Everything `baton server` can be told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen. Loopback unless `allow_unauthenticated`.
    pub listen: SocketAddr,
    /// The embedded store's folder.
    pub data_dir: PathBuf,
    /// Which store to use.
    pub store: StoreKind,
    /// Permit listening on a non-loopback address without API keys.
    pub allow_unauthenticated: bool,
    /// Lease time-to-live when a request gives none.
    pub default_ttl_ms: u64,
    /// After an unclean end of a lease (expiry, revocation) the lock grants nothing for this long.
    pub lock_delay_ms: u64,
    /// A queued ticket lapses when no wait on it arrives for this long.
    pub ticket_lapse_ms: u64,
    /// Ended holds are kept in a lock's history for this long.
    pub history_retention_ms: u64,
}

impl ServerConfig {
    /// The defaults of `baton server` with no flags.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> ServerConfig {
        ServerConfig {
            listen,
            data_dir,
            store: StoreKind::Sqlite,
            allow_unauthenticated: false,
            default_ttl_ms: 30_000,
            lock_delay_ms: 1_000,
            ticket_lapse_ms: 10_000,
            history_retention_ms: 7 * 24 * 3_600_000,
        }
    }
}

impl ServerConfig {
    /// The lock table's configuration that follows from this one.
    pub fn core_config(&self) -> baton_core::Config {
        baton_core::Config {
            lock_delay_ms: self.lock_delay_ms,
            ticket_lapse_ms: self.ticket_lapse_ms,
            history_retention_ms: self.history_retention_ms,
            ..baton_core::Config::default()
        }
    }
}

/// Opens the configured store.
pub fn open_store(config: &ServerConfig) -> anyhow::Result<Arc<dyn Store>> {
    let options = EngineOptions {
        config: config.core_config(),
        ..EngineOptions::default()
    };
    let clock = Arc::new(SystemClock::new());
    let engine = match config.store {
        StoreKind::Memory => Engine::open(Box::new(MemoryPersister), clock, options)?,
        StoreKind::Sqlite => {
            let persister = SqlitePersister::open(&config.data_dir).with_context(|| {
                format!("cannot open the store in {}", config.data_dir.display())
            })?;
            Engine::open(Box::new(persister), clock, options).context("cannot recover the store")?
        }
    };
    Ok(Arc::new(engine))
}

/// Runs `baton server` until `shutdown` completes (the CLI passes Ctrl-C / SIGTERM).
///
/// Refuses a non-loopback address unless `allow_unauthenticated`. Prints
/// `baton listening on http://ADDR` to standard error once it accepts connections.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if !config.listen.ip().is_loopback() && !config.allow_unauthenticated {
        anyhow::bail!(
            "refusing to listen on {}: it is not a loopback address and this server has no API \
             keys, so anyone who can reach it could take or revoke locks. Listen on 127.0.0.1, \
             or pass --allow-unauthenticated if the network is trusted.",
            config.listen
        );
    }
    let store = open_store(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener
        .local_addr()
        .context("cannot read the listening address")?;
    eprintln!(
        "baton listening on http://{address} (store: {}, data: {})",
        store.kind(),
        config.data_dir.display()
    );
    run(listener, store, &config, shutdown).await
}

/// Serves the API on `listener` over `store` until `shutdown` completes. Requests still in
/// flight then get a short grace period; parked long-polls are cut (their clients re-poll).
pub async fn run(
    listener: tokio::net::TcpListener,
    store: Arc<dyn Store>,
    config: &ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = router(AppState {
        store,
        default_ttl_ms: config.default_ttl_ms,
    });
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    });
    let mut stopping = stopping_rx;
    tokio::select! {
        result = server => result.context("the server stopped"),
        () = async {
            let _ = stopping.wait_for(|stopping| *stopping).await;
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        } => Ok(()),
    }
}
