//! baton's HTTP server (being written). The public entry point is [`serve`].

use std::net::SocketAddr;
use std::path::PathBuf;

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

/// Runs the server until `shutdown` completes (the CLI passes Ctrl-C / SIGTERM).
///
/// Prints `baton listening on http://ADDR` to standard error once it accepts connections.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let _ = (config, shutdown);
    anyhow::bail!("the server is not built yet")
}
