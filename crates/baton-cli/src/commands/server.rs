//! `baton server`: turns flags into a [`baton_server::ServerConfig`], sets up logging, and runs
//! the server until Ctrl-C or SIGTERM.

use std::time::Duration;

use baton_server::{ServerConfig, StoreKind, TlsFiles, TlsSetupError};
use tracing_subscriber::EnvFilter;

use crate::args::{LogFormat, ServerArgs, StoreArg};
use crate::exit;

/// The environment variable holding the log filter (`info`, `baton_server=debug`, …).
const LOG_ENV: &str = "BATON_LOG";

/// `baton server`.
pub async fn run(args: ServerArgs) -> anyhow::Result<u8> {
    if args.print_config {
        print!("{}", args.effective_config.unwrap_or_default());
        return Ok(exit::SUCCESS);
    }
    init_logging(args.log_format);
    raise_open_files_limit();
    let config_file = args.config.clone();
    let config = config(args);
    tracing::info!(
        config_file = ?config_file,
        listen = %config.listen,
        data_dir = %config.data_dir.display(),
        store = ?config.store,
        tls = config.tls.is_some(),
        "starting baton server"
    );
    match baton_server::serve(config, shutdown_signal()).await {
        Ok(()) => Ok(exit::SUCCESS),
        // A certificate or key that cannot be used is the operator's input to fix, like a bad
        // flag: say what is wrong and exit with the usage code, before listening.
        Err(error) if error.downcast_ref::<TlsSetupError>().is_some() => {
            eprintln!("baton server: {error:#}");
            Ok(exit::USAGE)
        }
        Err(error) => Err(error.context("the server stopped with an error")),
    }
}

/// Raises the soft limit on open files to the hard limit, so that the connection limit (20,000
/// by default), not the distribution's default of 1,024 descriptors, is what bounds idle
/// connections. Failing to is logged, not fatal.
fn raise_open_files_limit() {
    #[cfg(unix)]
    {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok((soft, hard)) if soft < hard => {
                match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    Ok(()) => {
                        tracing::debug!(from = soft, to = hard, "raised the open-files limit")
                    }
                    Err(error) => tracing::warn!(
                        soft,
                        hard,
                        "cannot raise the open-files limit: {error}; it caps connections"
                    ),
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!("cannot read the open-files limit: {error}"),
        }
    }
}

/// The server's configuration from the flags.
fn config(args: ServerArgs) -> ServerConfig {
    let mut config = ServerConfig::new(args.listen, args.data_dir);
    config.store = match (args.store, &args.database) {
        (Some(StoreArg::Sqlite), _) => StoreKind::Sqlite,
        (Some(StoreArg::Memory), _) => StoreKind::Memory,
        (Some(StoreArg::Postgres), _) | (None, Some(_)) => StoreKind::Postgres,
        (None, None) => StoreKind::Sqlite,
    };
    config.database_url = args.database;
    config.database_schema = args.database_schema;
    config.database_pool = usize::try_from(args.database_pool).unwrap_or(16);
    config.clock_skew_ms = args.clock_skew_ms;
    config.advertise_url = args.advertise_url;
    config.leader_ttl_ms = millis(args.leader_ttl);
    config.allow_unauthenticated = args.allow_unauthenticated;
    config.keys_file = args.keys_file;
    config.key_rate_limit = args.key_rate_limit;
    config.key_reload_ms = millis(args.key_reload);
    config.default_ttl_ms = millis(args.default_ttl);
    config.lock_delay_ms = millis(args.lock_delay);
    config.request_log = !args.no_request_log;
    config.ticket_lapse_ms = millis(args.ticket_lapse);
    config.history_retention_ms = millis(args.history_retention);
    config.max_leases = count(args.max_leases);
    config.max_waiters = count(args.max_waiters);
    config.max_locks = count(args.max_locks);
    config.max_jobs = count(args.max_jobs);
    config.key_max_leases = args.key_max_leases.map(count);
    config.key_max_waiters = args.key_max_waiters.map(count);
    config.key_max_locks = args.key_max_locks.map(count);
    config.key_max_jobs = args.key_max_jobs.map(count);
    config.max_connections = usize::try_from(args.max_connections).unwrap_or(usize::MAX);
    config.header_read_timeout_ms = millis(args.header_read_timeout);
    config.max_header_bytes = usize::try_from(args.max_header_bytes).unwrap_or(usize::MAX);
    config.body_read_timeout_ms = millis(args.body_read_timeout);
    config.allowed_hosts = args.allowed_hosts;
    // clap makes each of the two flags require the other.
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(TlsFiles { cert, key });
    }
    config
}

/// A count from a flag, saturating on a platform whose `usize` is narrower.
fn count(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// Whole milliseconds, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Logs to stderr in `format`, filtered by `BATON_LOG` (default `info`).
fn init_logging(format: LogFormat) {
    let (filter, bad_filter) = match std::env::var(LOG_ENV) {
        Ok(text) => match EnvFilter::try_new(&text) {
            Ok(filter) => (filter, None),
            Err(error) => (EnvFilter::new("info"), Some(format!("{text:?}: {error}"))),
        },
        Err(_) => (EnvFilter::new("info"), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialization (only possible in tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    if let Some(problem) = bad_filter {
        tracing::warn!("ignoring {LOG_ENV}={problem}; logging at info");
    }
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM. A signal that cannot be watched is ignored rather
/// than taken as a request to stop.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("interrupted; shutting down"),
        () = terminate => tracing::info!("terminated; shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Cli;
    use clap::Parser;

    #[test]
    fn flags_become_the_server_config() {
        let cli = Cli::try_parse_from([
            "baton",
            "server",
            "--listen",
            "0.0.0.0:9000",
            "--store",
            "memory",
            "--allow-unauthenticated",
            "--default-ttl",
            "1m",
            "--lock-delay",
            "1500ms",
            "--ticket-lapse",
            "5s",
            "--history-retention",
            "1d",
            "--max-connections",
            "500",
            "--header-read-timeout",
            "2s",
            "--max-header-bytes",
            "32768",
            "--keys-file",
            "/etc/baton/keys.toml",
            "--key-rate-limit",
            "50",
            "--key-reload",
            "5s",
            "--tls-cert",
            "cert.pem",
            "--tls-key",
            "key.pem",
        ]);
        let Ok(Cli {
            command: crate::args::Command::Server(args),
            ..
        }) = cli
        else {
            panic!("the server flags do not parse: {cli:?}");
        };
        let config = config(args);
        assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(config.store, StoreKind::Memory);
        assert!(config.allow_unauthenticated);
        assert_eq!(config.default_ttl_ms, 60_000);
        assert_eq!(config.lock_delay_ms, 1_500);
        assert_eq!(config.ticket_lapse_ms, 5_000);
        assert_eq!(config.history_retention_ms, 86_400_000);
        assert_eq!(config.max_connections, 500);
        assert_eq!(config.header_read_timeout_ms, 2_000);
        assert_eq!(config.max_header_bytes, 32_768);
        assert_eq!(
            config.keys_file.as_deref(),
            Some(std::path::Path::new("/etc/baton/keys.toml"))
        );
        assert_eq!(config.key_rate_limit, 50);
        assert_eq!(config.key_reload_ms, 5_000);
        assert_eq!(
            config.tls,
            Some(TlsFiles {
                cert: "cert.pem".into(),
                key: "key.pem".into()
            })
        );
    }

    #[test]
    fn a_tls_certificate_needs_its_key() {
        let cli = Cli::try_parse_from(["baton", "server", "--tls-cert", "cert.pem"]);
        assert!(cli.is_err(), "--tls-cert without --tls-key parsed: {cli:?}");
    }
}
