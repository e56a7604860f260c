//! baton's HTTP server: the `/v1` API over a [`Store`], long-poll waits, health and the
//! OpenAPI document.
//!
//! - [`serve`] is what `baton server` runs: it checks the listen rule, opens the chosen store
//!   and calls [`run`].
//! - [`run`] serves a router over a listener it is given until a shutdown future completes, so
//!   tests pass a listener bound to `127.0.0.1:0`.
//! - `routes` is the router and its middleware layers. The handlers (wire → store → wire)
//!   live with their API: `locks` (locks, tickets, leases), `jobs`, `keys`, `events`,
//!   `health`, `openapi`. Below them, shared by all and importing no handler: `state`
//!   ([`AppState`]), `wire` (core → wire conversions), `limits` (request limits and their
//!   checks), `scope` (answers kept within what the caller may see), `auth`, `telemetry`,
//!   `extract` the request extractors, `error` the one mapping from failures to HTTP answers.
//! - [`dashboard`] serves the web page at `/` (compiled in; it reads the keyed API in the
//!   browser).
//!
//! **Architecture invariant:** no SQL and no domain rule here; outcomes come from the core
//! through the store, and internal error text is logged, never sent.

pub mod auth;
pub mod dashboard;
mod error;
mod events;
mod extract;
mod forward;
mod health;
mod jobs;
mod keys;
mod limits;
mod listen;
mod locks;
mod locksets;
mod openapi;
mod routes;
mod scope;
mod state;
mod telemetry;
mod tls;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use baton_store::{Engine, EngineOptions, MemoryPersister, Store, SystemClock};
use baton_store_postgres::PgOptions;
use baton_store_postgres::leader::{DEFAULT_LEADER_TTL, HaStore, LeaderOptions, PgEngineFactory};
use baton_store_sqlite::SqlitePersister;

pub use error::ApiError;
pub use extract::{BODY_BYTES_MAX, BODY_READ_TIMEOUT_MS_DEFAULT};
pub use limits::{HISTORY_LIMIT_MAX, LIST_LIMIT_MAX, WAIT_MS_MAX};
pub use routes::router;
pub use state::AppState;
pub use telemetry::{REQUEST_ID_HEADER, Telemetry};
pub use tls::{TlsFiles, TlsSetupError};

/// Which store keeps the server's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// SQLite in `data_dir`: durable (the default).
    Sqlite,
    /// In memory only: everything is lost when the server stops. For tests and trials.
    Memory,
    /// PostgreSQL at `database_url`: any number of servers share it.
    Postgres,
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
    /// A TOML file of API keys (`[[key]]` with `name`, `secret_sha256`, `grants`), read at
    /// start, so the first administrator needs no running server.
    pub keys_file: Option<PathBuf>,
    /// Requests per second each API key may make unless the key says otherwise; more are
    /// answered `429` with `Retry-After`.
    pub key_rate_limit: u32,
    /// How often the store's API keys are read again (keys made or revoked through another
    /// server sharing the database count within this period).
    pub key_reload_ms: u64,
    /// Lease time-to-live when a request gives none.
    pub default_ttl_ms: u64,
    /// After an unclean end of a lease (expiry, revocation) its slot is not granted for this
    /// long (a semaphore's other free slots are).
    pub lock_delay_ms: u64,
    /// A queued ticket lapses when no wait on it arrives for this long after its last wait
    /// ended or its waiter's connection closed.
    pub ticket_lapse_ms: u64,
    /// Ended holds are kept in a lock's history for this long.
    pub history_retention_ms: u64,
    /// At most this many live leases in all; one more is answered `503 limit_reached`.
    pub max_leases: usize,
    /// At most this many queued tickets in all; one more is answered `503 limit_reached`.
    pub max_waiters: usize,
    /// At most this many locks known at once (idle ones are forgotten after an hour); one more
    /// is answered `503 limit_reached`.
    pub max_locks: usize,
    /// At most this many job records kept (finished ones are pruned first); when all are
    /// unfinished, one more is answered `503 limit_reached`.
    pub max_jobs: usize,
    /// Each API key's lease quota unless the key has its own (`None`: a tenth of
    /// `max_leases`); over it, `429 quota_exceeded`.
    pub key_max_leases: Option<usize>,
    /// Each API key's waiter quota unless the key has its own (`None`: a tenth of
    /// `max_waiters`).
    pub key_max_waiters: Option<usize>,
    /// Each API key's lock quota unless the key has its own (`None`: a tenth of `max_locks`).
    pub key_max_locks: Option<usize>,
    /// Each API key's job quota unless the key has its own (`None`: a tenth of `max_jobs`).
    pub key_max_jobs: Option<usize>,
    /// At most this many connections are served at once; one more is answered `503` with
    /// `Retry-After: 1` (when its socket takes it at once) and closed.
    pub max_connections: usize,
    /// A request's head (request line and headers) must arrive whole within this long, counted
    /// from when the server starts waiting for it, so a keep-alive connection idle this long is
    /// closed too. Cuts off clients that send a byte now and then.
    pub header_read_timeout_ms: u64,
    /// A request head larger than this is answered `431` and the connection closed. Also caps
    /// each connection's read buffer. At least 8 KiB (hyper's floor).
    pub max_header_bytes: usize,
    /// A request body must arrive whole within this long once its head is read; a slower one
    /// is answered `408 body_timeout` and its connection closed, so a client that declares a
    /// body and sends nothing cannot hold a connection slot.
    pub body_read_timeout_ms: u64,
    /// Names (besides loopback addresses, IP addresses and `localhost`) that a server without
    /// API keys answers in the `Host` header; any other is refused `403 host_not_allowed`, so
    /// a web page cannot reach a keyless server through a DNS-rebinding name. Ignored once keys
    /// are in force.
    pub allowed_hosts: Vec<String>,
    /// One `info` line per request (method, route, status, duration, key id, request id),
    /// target `baton::request`.
    pub request_log: bool,
    /// The PostgreSQL database (with [`StoreKind::Postgres`]).
    pub database_url: Option<String>,
    /// The schema holding baton's tables in that database; servers that share state use the
    /// same one.
    pub database_schema: String,
    /// Accepted for compatibility and unused: the PostgreSQL store writes through one
    /// connection (its engine group-commits every change through it).
    pub database_pool: usize,
    /// With PostgreSQL: the URL clients are told to use while this server is the active one
    /// of its database (standbys name it). `None`: `http(s)://` and the listening address.
    pub advertise_url: Option<String>,
    /// With PostgreSQL: the leadership lease (see `baton_store_postgres::leader`). A
    /// fail-over after the active dies takes about this long.
    pub leader_ttl_ms: u64,
    /// Shifts this server's own clock by this many milliseconds. A testing aid: the lock table
    /// runs by the clock of the server that owns it (the active one, with PostgreSQL), and a
    /// fail-over to a server whose clock is off recovers every lease as renewed at its own
    /// "now", so no deadline is shortened.
    pub clock_skew_ms: i64,
    /// Serve HTTPS with this certificate chain and private key (PEM files); plain HTTP when
    /// `None`. The TLS handshake runs under the connection limit and must finish within
    /// `header_read_timeout_ms`. Files that cannot be used fail the start with a
    /// [`TlsSetupError`] before the server listens.
    pub tls: Option<TlsFiles>,
}

/// The default of [`ServerConfig::max_connections`].
pub const MAX_CONNECTIONS_DEFAULT: usize = 20_000;
/// The default of [`ServerConfig::header_read_timeout_ms`]. The timer also closes keep-alive
/// connections idle this long, so it is longer than the default heartbeat period (a third of
/// the default 30 s ttl): a client that renews on schedule never races the server closing its
/// connection.
pub const HEADER_READ_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// The default of [`ServerConfig::max_header_bytes`].
pub const MAX_HEADER_BYTES_DEFAULT: usize = 16 * 1024;
/// The smallest [`ServerConfig::max_header_bytes`] hyper accepts; smaller values are raised.
pub const MAX_HEADER_BYTES_MIN: usize = 8 * 1024;
/// How long requests in flight may run on after shutdown is asked for.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

impl ServerConfig {
    /// The defaults of `baton server` with no flags.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> ServerConfig {
        let defaults = baton_core::Config::default();
        ServerConfig {
            listen,
            data_dir,
            store: StoreKind::Sqlite,
            allow_unauthenticated: false,
            keys_file: None,
            key_rate_limit: auth::KEY_RATE_LIMIT_DEFAULT,
            key_reload_ms: auth::KEY_RELOAD_MS_DEFAULT,
            default_ttl_ms: 30_000,
            lock_delay_ms: 1_000,
            ticket_lapse_ms: 10_000,
            history_retention_ms: 7 * 24 * 3_600_000,
            max_leases: defaults.leases_total_max,
            max_waiters: defaults.waiters_total_max,
            max_locks: defaults.locks_max,
            max_jobs: defaults.jobs_max,
            key_max_leases: None,
            key_max_waiters: None,
            key_max_locks: None,
            key_max_jobs: None,
            max_connections: MAX_CONNECTIONS_DEFAULT,
            header_read_timeout_ms: HEADER_READ_TIMEOUT_MS_DEFAULT,
            max_header_bytes: MAX_HEADER_BYTES_DEFAULT,
            body_read_timeout_ms: extract::BODY_READ_TIMEOUT_MS_DEFAULT,
            allowed_hosts: Vec::new(),
            request_log: true,
            database_url: None,
            database_schema: "baton".into(),
            database_pool: 16,
            advertise_url: None,
            leader_ttl_ms: u64::try_from(DEFAULT_LEADER_TTL.as_millis()).unwrap_or(4_000),
            clock_skew_ms: 0,
            tls: None,
        }
    }
}

impl ServerConfig {
    /// The lock table's configuration that follows from this one. A per-key default not given
    /// is a tenth of its global bound ([`baton_core::key_default_of`]), so one key with the
    /// default quota never fills a global bound, whatever the operator set it to.
    pub fn core_config(&self) -> baton_core::Config {
        let key_default =
            |own: Option<usize>, global: usize| own.unwrap_or(baton_core::key_default_of(global));
        baton_core::Config {
            lock_delay_ms: self.lock_delay_ms,
            ticket_lapse_ms: self.ticket_lapse_ms,
            history_retention_ms: self.history_retention_ms,
            leases_total_max: self.max_leases,
            waiters_total_max: self.max_waiters,
            locks_max: self.max_locks,
            jobs_max: self.max_jobs,
            key_leases_max: key_default(self.key_max_leases, self.max_leases),
            key_waiters_max: key_default(self.key_max_waiters, self.max_waiters),
            key_locks_max: key_default(self.key_max_locks, self.max_locks),
            key_jobs_max: key_default(self.key_max_jobs, self.max_jobs),
            ..baton_core::Config::default()
        }
    }
}

/// Opens the configured store.
pub async fn open_store(config: &ServerConfig) -> anyhow::Result<Arc<dyn Store>> {
    let options = EngineOptions {
        config: config.core_config(),
        ..EngineOptions::default()
    };
    let clock = Arc::new(SystemClock::skewed(config.clock_skew_ms));
    let engine = match config.store {
        StoreKind::Memory => Engine::open(Box::new(MemoryPersister::new()), clock, options)?,
        StoreKind::Sqlite => {
            let persister = SqlitePersister::open(&config.data_dir).with_context(|| {
                format!("cannot open the store in {}", config.data_dir.display())
            })?;
            Engine::open(Box::new(persister), clock, options).context("cannot recover the store")?
        }
        StoreKind::Postgres => {
            let url = config
                .database_url
                .clone()
                .context("the PostgreSQL store needs a database URL (--database)")?;
            let pg = PgOptions {
                schema: config.database_schema.clone(),
                config: config.core_config(),
                local_skew_ms: config.clock_skew_ms,
                ..PgOptions::new(url.clone())
            };
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let advertise = config
                .advertise_url
                .clone()
                .unwrap_or_else(|| format!("{scheme}://{}", config.listen));
            let mut leader = LeaderOptions::new(advertise)?;
            leader.ttl = std::time::Duration::from_millis(config.leader_ttl_ms);
            let factory = PgEngineFactory {
                options: pg,
                engine: options,
                clock,
            };
            let store = HaStore::start(&url, &config.database_schema, leader, Arc::new(factory))
                .await
                .context("cannot open the PostgreSQL store")?;
            return Ok(Arc::new(store));
        }
    };
    Ok(Arc::new(engine))
}

/// Runs `baton server` until `shutdown` completes (the CLI passes Ctrl-C / SIGTERM).
///
/// Refuses a non-loopback address when no API key is known (in the store or the keys file)
/// unless `allow_unauthenticated`, and certificate or key files that cannot be used (a
/// [`TlsSetupError`] in the error's chain). Prints `baton listening on http://ADDR`
/// (`https://` under TLS), with the dashboard's address, to standard error once it accepts
/// connections.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    let auth = start_auth(&store, &config).await?;
    if !config.listen.ip().is_loopback() && !config.allow_unauthenticated && !auth.enabled() {
        anyhow::bail!(
            "refusing to listen on {}: it is not a loopback address and this server has no API \
             keys, so anyone who can reach it could take or revoke locks. Listen on 127.0.0.1, \
             give keys (--keys-file, or `baton keys create` against a loopback server first), \
             or pass --allow-unauthenticated if the network is trusted.",
            config.listen
        );
    }
    // Before the store and the socket: a bad certificate is the operator's to fix at once.
    let tls = config.tls.as_ref().map(tls::load_acceptor).transpose()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let data = match config.store {
        StoreKind::Postgres => format!("schema {}", config.database_schema),
        StoreKind::Sqlite | StoreKind::Memory => config.data_dir.display().to_string(),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    // One line, and the address first: scripts and tests read it from this line.
    eprintln!(
        "baton listening on {scheme}://{address} (store: {}, data: {data}); the dashboard is at \
         {scheme}://{address}/",
        store.kind()
    );
    run_with(listener, store, auth, &config, tls, shutdown).await
}

/// Loads the keys file and the store's keys.
async fn start_auth(
    store: &Arc<dyn Store>,
    config: &ServerConfig,
) -> anyhow::Result<Arc<auth::Auth>> {
    let file_keys = match &config.keys_file {
        Some(path) => auth::read_keys_file(path)?,
        None => Vec::new(),
    };
    let auth = Arc::new(
        auth::Auth::new(Arc::clone(store), file_keys, config.key_rate_limit)
            .with_allowed_hosts(&config.allowed_hosts),
    );
    auth.reload().await.context("cannot read the API keys")?;
    Ok(auth)
}

/// Serves the API on `listener` over `store` until `shutdown` completes, under the connection
/// limits of `config` (see `listen`). Requests still in flight then get a short grace period
/// (2 s); parked long-polls are cut (their clients re-poll). Every connection task has ended
/// when this returns. Serves HTTPS when `config.tls` is set; its files are read here.
pub async fn run(
    listener: tokio::net::TcpListener,
    store: Arc<dyn Store>,
    config: &ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let auth = start_auth(&store, config).await?;
    let tls = config.tls.as_ref().map(tls::load_acceptor).transpose()?;
    run_with(listener, store, auth, config, tls, shutdown).await
}

/// [`run`] with the key cache and the TLS acceptor already built.
async fn run_with(
    listener: tokio::net::TcpListener,
    store: Arc<dyn Store>,
    auth: Arc<auth::Auth>,
    config: &ServerConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let reloader = auth::spawn_reloader(
        Arc::clone(&auth),
        std::time::Duration::from_millis(config.key_reload_ms.max(1)),
    );
    let telemetry = Arc::new(Telemetry::new(Arc::clone(&store), config.request_log));
    let app = router(AppState {
        store: Arc::clone(&store),
        default_ttl_ms: config.default_ttl_ms,
        auth,
        telemetry: Arc::clone(&telemetry),
    })
    .layer(axum::Extension(extract::BodyReadTimeout(
        std::time::Duration::from_millis(config.body_read_timeout_ms.max(1)),
    )));
    let limits = listen::Limits {
        max_connections: config.max_connections.max(1),
        header_read_timeout: std::time::Duration::from_millis(config.header_read_timeout_ms.max(1)),
        max_header_bytes: config.max_header_bytes.max(MAX_HEADER_BYTES_MIN),
        shutdown_grace: SHUTDOWN_GRACE,
    };
    let counted = listen::Counted {
        open: telemetry.connections.clone(),
        refused: telemetry.refused.clone(),
    };
    listen::serve(listener, app, limits, counted, tls, shutdown).await;
    reloader.abort();
    store.shutdown().await;
    Ok(())
}
