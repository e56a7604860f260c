//! The command line: every flag, argument and environment variable of `baton`, as clap derive
//! types. Parsing validates shapes (durations, numbers, value sets); the commands resolve
//! defaults that need the environment (the owner label) and talk to the server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// What `baton --version` prints after the name: the crate's version, the git commit it was
/// built from ("unknown" outside a git checkout) and the UTC build date (see `build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BATON_GIT_COMMIT"),
    ", built ",
    env!("BATON_BUILD_DATE"),
    ")"
);

/// Distributed locks for scripts and jobs: acquire, renew and release leases on a baton server,
/// inspect locks, check fencing tokens, or run the server.
#[derive(Debug, Parser)]
#[command(
    name = "baton",
    version = VERSION,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Options every client command shares.
    #[command(flatten)]
    pub global: GlobalArgs,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every client command shares.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The baton server; a comma-separated list fails over between servers.
    #[arg(
        long,
        env = "BATON_URL",
        default_value = baton_client::DEFAULT_URL,
        global = true,
        value_name = "URL[,URL…]"
    )]
    pub url: String,

    /// Sent as `Authorization: Bearer KEY`.
    #[arg(
        long,
        env = "BATON_API_KEY",
        hide_env_values = true,
        global = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,

    /// Trust the CA certificates in this PEM file for https:// servers, on top of the system's
    /// roots (for a certificate a private CA signed, or a self-signed one).
    #[arg(long, env = "BATON_CA_FILE", global = true, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,

    /// Print answers as JSON on stdout instead of human text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The subcommands.
// `ServerArgs` is far larger than the others (one field per server flag); the command is parsed
// once per process, so its size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a baton server: the API, and the dashboard at / (e.g. http://127.0.0.1:7878/).
    Server(ServerArgs),
    /// Acquire a lease on a lock; print its id (for `baton renew` / `baton release`).
    Acquire(AcquireArgs),
    /// Renew a lease: extend it to now + its ttl.
    Renew(RenewArgs),
    /// Release a lease, handing the lock on at once.
    Release(ReleaseArgs),
    /// Show the server's health, or one lock's holders and waiters.
    Status(StatusArgs),
    /// List every lock with its holders, waiters and newest fencing token.
    Locks,
    /// Show a lock's past holds, newest first.
    History(HistoryArgs),
    /// Check a fencing token: exit 0 if it is the newest seen for the lock, 1 if a newer one was.
    Fence(TokenArgs),
    /// End the lease holding a token (administrators only; audited).
    Revoke(TokenArgs),
    /// Run a command under a lock, as a job: wait, skip, fail, replace or coalesce when busy.
    Run(RunArgs),
    /// List jobs, newest first: name, state, host, start, duration, exit code.
    Jobs(JobsArgs),
    /// Show one job: every field and the tail of its output (while it runs too).
    Job(JobArgs),
    /// Print a job's output; with -f, follow it as it runs until the job ends.
    Logs(LogsArgs),
    /// Cancel a job: a waiting one leaves the queue, a running one is stopped by its runner
    /// (needs the acquire role on the job's lock; audited).
    Cancel(JobArgs),
    /// Run many commands, N at a time (or under a fleet-wide --slots limit), as jobs of one
    /// batch: collated output, progress, a summary.
    Parallel(ParallelArgs),
    /// Manage API keys: create, list, revoke (a key granted admin: needed once keys exist).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Show the audit log, newest first: key creations and revocations, lease revocations.
    Audit(AuditArgs),
    /// Print each change of a lock's holders and queue as it happens (or of every lock under
    /// --prefix, jobs included), one line per event, until interrupted.
    Watch(WatchArgs),
    /// Run a command while this host is the leader of NAME, publishing VALUE (its address):
    /// `baton run NAME --wait --value VALUE`.
    Elect(ElectArgs),
    /// Print the leader of NAME (its value, owner and token); with --watch, each change.
    Leader(LeaderArgs),
    /// Print a shell completion script on stdout: `baton completions bash > /etc/bash_completion.d/baton`.
    Completions(CompletionsArgs),
    /// Write man pages into DIR: baton.1 and one baton-SUBCOMMAND.1 per subcommand (packaging).
    #[command(hide = true)]
    Man(ManArgs),
}

/// `baton completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `baton man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// The folder to write the pages into (created if missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// `baton keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its secret (shown this once). With --offline, make one without a
    /// server and print the `[[key]]` entry for `baton server --keys-file`.
    Create(KeyCreateArgs),
    /// List keys: id, name, grants, rate, created, revoked. Never secrets.
    List,
    /// Revoke a key: it authenticates nothing from now on.
    Revoke(KeyRevokeArgs),
}

/// `baton keys create`.
#[derive(Debug, Args)]
pub struct KeyCreateArgs {
    /// A label for people.
    #[arg(long, value_name = "NAME")]
    pub name: String,

    /// ROLE:PREFIX, repeatable. ROLE is read, acquire or admin; PREFIX a lock-name prefix,
    /// empty for every lock (`--grant admin:` is a full administrator).
    #[arg(long = "grant", value_name = "ROLE:PREFIX", required = true)]
    pub grants: Vec<String>,

    /// Requests per second the key may make [default: the server's --key-rate-limit].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: Option<u32>,

    /// Live leases the key may hold at once [default: the server's --key-max-leases].
    #[arg(long, value_name = "N")]
    pub max_leases: Option<u64>,

    /// Tickets the key may have queued at once [default: the server's --key-max-waiters].
    #[arg(long, value_name = "N")]
    pub max_waiters: Option<u64>,

    /// Locks the key may have created that the server still knows (idle ones are forgotten
    /// after an hour) [default: the server's --key-max-locks].
    #[arg(long, value_name = "N")]
    pub max_locks: Option<u64>,

    /// Job records of the key the server keeps; its oldest finished ones make room, so only
    /// unfinished jobs can fill it [default: the server's --key-max-jobs].
    #[arg(long, value_name = "N")]
    pub max_jobs: Option<u64>,

    /// Make the key here, without a server: print its secret and the `[[key]]` entry to add
    /// to the server's --keys-file.
    #[arg(long)]
    pub offline: bool,
}

/// `baton keys revoke`.
#[derive(Debug, Args)]
pub struct KeyRevokeArgs {
    /// The key's id (`key_…`, as `baton keys list` shows it).
    pub id: String,
}

/// `baton audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Show at most this many entries.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: u32,

    /// Only entries older than this seq (the next page).
    #[arg(long, value_name = "SEQ")]
    pub before: Option<u64>,
}

/// `baton jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs of this name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Only jobs in these states (comma-separated, repeatable): queued, waiting, running,
    /// succeeded, failed, cancelled, lost, timed_out, skipped, coalesced.
    #[arg(long, value_name = "STATES", value_parser = parse_job_states)]
    pub state: Vec<String>,

    /// Only jobs created within this long ago (e.g. 1h, 2d).
    #[arg(long, value_name = "DURATION", value_parser = parse_span)]
    pub since: Option<jiff::SignedDuration>,

    /// Only jobs of this batch.
    #[arg(long, value_name = "BATCH")]
    pub batch: Option<String>,

    /// Show at most this many.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: u32,
}

/// `baton job`.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// The job's id (`job_…`, as `baton jobs` shows it).
    pub id: String,
}

/// `baton logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The job's id (`job_…`, as `baton jobs` shows it).
    pub id: String,

    /// Follow the output as the job's runner sends it, until the job ends.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

fn parse_span(text: &str) -> Result<jiff::SignedDuration, String> {
    let duration = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    jiff::SignedDuration::try_from(duration).map_err(|error| error.to_string())
}

/// `baton server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Read settings from this TOML file: one key per flag, its long name with _ for -
    /// (`default_ttl = "30s"`). Flags and BATON_* variables beat the file.
    #[arg(long, env = "BATON_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (flags, variables, file and defaults) as TOML, and
    /// exit.
    #[arg(long)]
    pub print_config: bool,

    /// What --print-config prints, filled in by the parser (it needs the matches).
    #[arg(skip)]
    pub effective_config: Option<String>,

    /// The address to listen on. Anything but loopback needs API keys or
    /// --allow-unauthenticated.
    #[arg(
        long,
        env = "BATON_LISTEN",
        default_value = "127.0.0.1:7878",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// The embedded store's folder.
    #[arg(
        long,
        env = "BATON_DATA_DIR",
        default_value = "./baton-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    /// Where state is kept: `sqlite` (durable, in --data-dir), `memory` (lost on exit) or
    /// `postgres` (the database of --database; chosen by --database alone too).
    #[arg(
        long,
        env = "BATON_STORE",
        value_enum,
        requires_if("postgres", "database")
    )]
    pub store: Option<StoreArg>,

    /// Keep state in this PostgreSQL database, shared by every server given the same one:
    /// `postgres://user@host:5432/db` (a libpq URL or key=value string).
    #[arg(
        long,
        env = "BATON_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database: Option<String>,

    /// The schema of baton's tables in --database (created if missing).
    #[arg(
        long,
        env = "BATON_DATABASE_SCHEMA",
        default_value = "baton",
        value_name = "NAME"
    )]
    pub database_schema: String,

    /// Accepted for compatibility, no longer used: the server writes to --database through one
    /// connection, which carries every commit of its engine.
    #[arg(long, env = "BATON_DATABASE_POOL", default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=1000), value_name = "N")]
    pub database_pool: u32,

    /// With --database: the URL clients are told to use while this server is the active one
    /// (standbys name it in their `not_active` answers and in /readyz). Default: http(s)://
    /// and the --listen address, which is only right when that address is reachable.
    #[arg(long, env = "BATON_ADVERTISE_URL", value_name = "URL")]
    pub advertise_url: Option<String>,

    /// With --database: the leadership lease of the active server. Servers sharing a database
    /// elect one active; after it dies a standby takes over within about this long.
    #[arg(long, env = "BATON_LEADER_TTL", default_value = "4s", value_parser = parse_duration, value_name = "DUR")]
    pub leader_ttl: Duration,

    /// Testing aid: shift this server's own clock by this many milliseconds (may be negative).
    /// Leases expire by the clock of the server that owns the table (the active one).
    #[arg(
        long,
        env = "BATON_CLOCK_SKEW_MS",
        default_value_t = 0,
        hide = true,
        allow_hyphen_values = true,
        value_name = "MS"
    )]
    pub clock_skew_ms: i64,

    /// Allow listening on a non-loopback address without API keys.
    #[arg(long, env = "BATON_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// How log lines look on stderr: `text` for people, `json` (one object per line) for log
    /// collectors. BATON_LOG sets the level (`info` by default).
    #[arg(
        long,
        env = "BATON_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,

    /// Do not log a line per request (at `info`, target `baton::request`: method, route,
    /// status, duration, key id, request id).
    #[arg(long, env = "BATON_NO_REQUEST_LOG")]
    pub no_request_log: bool,

    /// API keys to accept from start: a TOML file of `[[key]]` tables (name, secret_sha256,
    /// grants, rate_per_sec), as `baton keys create --offline` prints them.
    #[arg(long, env = "BATON_KEYS_FILE", value_name = "FILE")]
    pub keys_file: Option<PathBuf>,

    /// Requests per second each API key may make unless it has its own rate; more are
    /// answered 429 with Retry-After.
    #[arg(long, env = "BATON_KEY_RATE_LIMIT", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub key_rate_limit: u32,

    /// How often API keys are read again from the store (keys made or revoked through another
    /// server sharing the database count within this period).
    #[arg(long, env = "BATON_KEY_RELOAD", default_value = "1s", value_parser = parse_duration, value_name = "DUR")]
    pub key_reload: Duration,

    /// Lease time-to-live when a request gives none.
    #[arg(long, env = "BATON_DEFAULT_TTL", default_value = "30s", value_parser = parse_duration, value_name = "DUR")]
    pub default_ttl: Duration,

    /// After an unclean end of a lease (expiry, revocation) its slot is not granted this long
    /// (a semaphore's other free slots are).
    #[arg(long, env = "BATON_LOCK_DELAY", default_value = "1s", value_parser = parse_duration, value_name = "DUR")]
    pub lock_delay: Duration,

    /// A queued ticket lapses when nobody waits on it for this long.
    #[arg(long, env = "BATON_TICKET_LAPSE", default_value = "10s", value_parser = parse_duration, value_name = "DUR")]
    pub ticket_lapse: Duration,

    /// How long ended holds are kept in history.
    #[arg(long, env = "BATON_HISTORY_RETENTION", default_value = "7d", value_parser = parse_duration, value_name = "DUR")]
    pub history_retention: Duration,

    /// At most this many live leases in all; one more is answered 503 limit_reached.
    #[arg(long, env = "BATON_MAX_LEASES", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub max_leases: u64,

    /// At most this many queued tickets in all; one more is answered 503 limit_reached.
    #[arg(long, env = "BATON_MAX_WAITERS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub max_waiters: u64,

    /// At most this many locks known at once (idle ones are forgotten after an hour); one more
    /// is answered 503 limit_reached.
    #[arg(long, env = "BATON_MAX_LOCKS", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub max_locks: u64,

    /// At most this many job records kept (finished ones are pruned first); one more while all
    /// are unfinished is answered 503 limit_reached.
    #[arg(long, env = "BATON_MAX_JOBS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub max_jobs: u64,

    /// Live leases each API key may hold unless the key has its own quota; one more is
    /// answered 429 quota_exceeded [default: a tenth of --max-leases].
    #[arg(long, env = "BATON_KEY_MAX_LEASES", value_name = "N")]
    pub key_max_leases: Option<u64>,

    /// Queued tickets each API key may have unless the key has its own quota [default: a
    /// tenth of --max-waiters].
    #[arg(long, env = "BATON_KEY_MAX_WAITERS", value_name = "N")]
    pub key_max_waiters: Option<u64>,

    /// Locks each API key may have created and the server still knows, unless the key has its
    /// own quota [default: a tenth of --max-locks].
    #[arg(long, env = "BATON_KEY_MAX_LOCKS", value_name = "N")]
    pub key_max_locks: Option<u64>,

    /// Job records of each API key kept (its oldest finished ones make room), unless the key
    /// has its own quota [default: a tenth of --max-jobs].
    #[arg(long, env = "BATON_KEY_MAX_JOBS", value_name = "N")]
    pub key_max_jobs: Option<u64>,

    /// Serve at most this many connections at once; one more is answered 503 and closed.
    #[arg(long, env = "BATON_MAX_CONNECTIONS", default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub max_connections: u32,

    /// A request's headers must arrive whole within this long (also closes keep-alive
    /// connections idle this long; keep it above a third of the ttls clients use).
    #[arg(long, env = "BATON_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DUR")]
    pub header_read_timeout: Duration,

    /// Refuse (431) a request whose headers exceed this many bytes (at least 8192).
    #[arg(long, env = "BATON_MAX_HEADER_BYTES", default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(8192..), value_name = "BYTES")]
    pub max_header_bytes: u32,

    /// A request's body must arrive whole within this long once its headers are read; a
    /// slower one is answered 408 (body_timeout) and its connection closed.
    #[arg(
        long,
        env = "BATON_BODY_READ_TIMEOUT",
        default_value = "10s",
        value_parser = parse_duration,
        value_name = "DUR"
    )]
    pub body_read_timeout: Duration,

    /// While the server has no API keys it answers only requests whose Host is an IP address
    /// or localhost (against DNS rebinding); also answer this name (repeatable).
    #[arg(
        long = "allowed-host",
        env = "BATON_ALLOWED_HOST",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub allowed_hosts: Vec<String>,

    /// Serve HTTPS with this certificate chain (PEM: the server's certificate first, then any
    /// intermediates). Needs --tls-key.
    #[arg(long, env = "BATON_TLS_CERT", requires = "tls_key", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "BATON_TLS_KEY", requires = "tls_cert", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
}

/// The log format of `baton server --log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The store of `baton server --store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreArg {
    /// SQLite in --data-dir: durable.
    Sqlite,
    /// In memory: everything is lost when the server stops.
    Memory,
    /// PostgreSQL (--database): many servers share it.
    Postgres,
}

/// `baton acquire`.
#[derive(Debug, Args)]
pub struct AcquireArgs {
    /// The lock's name: 1 to 255 of `A-Z a-z 0-9 . _ : / @ -`. A comma list (`a,b`) takes
    /// every lock together: all granted at once or none, fairly and without deadlock.
    pub name: String,

    /// Who holds the lease, as listings show it [default: HOST/USER/PID of the calling shell].
    #[arg(long, env = "BATON_OWNER", value_name = "OWNER")]
    pub owner: Option<String>,

    /// Reentrancy key: acquiring again with it while holding returns the same lease.
    #[arg(long, value_name = "KEY")]
    pub owner_key: Option<String>,

    /// Lease time-to-live [default: the server's, 30s]. Renew before it runs out.
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub ttl: Option<Duration>,

    /// 1 for a mutex, N for a semaphore [default: the lock's current capacity, or 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub capacity: Option<u32>,

    /// Wait at most this long in the queue, then exit 75 [default: wait forever].
    #[arg(long, value_parser = parse_duration, value_name = "DUR", conflicts_with = "no_wait")]
    pub wait: Option<Duration>,

    /// Try once: exit 75 at once if the lock is busy, without queueing.
    #[arg(long)]
    pub no_wait: bool,

    /// Makes a retried `baton acquire` return the same lease instead of a second one
    /// [default: a random id].
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,

    /// What to print on stdout (ignored with --json).
    #[arg(long, value_enum, default_value_t = PrintArg::Id, value_name = "WHAT")]
    pub print: PrintArg,

    /// A small value to publish with the lease (at most 1024 bytes: an address, a version),
    /// shown by `baton locks`, `baton status`, `baton history` and `baton leader`.
    #[arg(long, value_name = "VALUE")]
    pub value: Option<String>,

    /// Take the lock shared, as a reader: any number of shared holders hold it together, never
    /// with an exclusive one, in one FIFO order (a waiting writer is never overtaken). Only on a
    /// lock of capacity 1; on a semaphore it is refused (exit 65).
    #[arg(long)]
    pub shared: bool,
}

/// What `baton acquire` prints on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrintArg {
    /// The lease id alone: `LEASE=$(baton acquire NAME)`.
    Id,
    /// The fencing token alone.
    Token,
    /// `BATON_LEASE_ID=…`, `BATON_FENCING_TOKEN=…` and `BATON_LOCK=…` lines for `eval`.
    Env,
}

/// `baton renew`.
#[derive(Debug, Args)]
pub struct RenewArgs {
    /// The lease id printed by `baton acquire`.
    pub lease_id: String,

    /// A new time-to-live [default: the lease's current one].
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub ttl: Option<Duration>,

    /// Replace the lease's published value [default: keep it].
    #[arg(long, value_name = "VALUE")]
    pub value: Option<String>,
}

/// `baton release`.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The lease id printed by `baton acquire`.
    pub lease_id: String,
}

/// `baton status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A lock to show; without it, the server's health.
    pub name: Option<String>,
}

/// `baton history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The lock's name.
    pub lock: String,

    /// Show at most this many holds [default: the server's].
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
}

/// `baton watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The lock to follow.
    #[arg(required_unless_present = "prefix", conflicts_with = "prefix")]
    pub lock: Option<String>,

    /// Follow every lock whose name starts with this (`""`: every lock the key may read).
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
}

/// `baton fence` and `baton revoke`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The lock's name.
    pub lock: String,

    /// A fencing token.
    pub token: u64,
}

/// Checks a comma-separated list of job states (`failed,lost`): an unknown one is a usage
/// error (exit 64), naming the states there are.
fn parse_job_states(text: &str) -> Result<String, String> {
    use baton_client::proto::JobState;
    for state in text.split(',') {
        if JobState::parse(state.trim()).is_none() {
            return Err(format!(
                "unknown job state {:?} (states: queued, waiting, running, succeeded, failed, \
                 cancelled, lost, timed_out, skipped, coalesced)",
                state.trim()
            ));
        }
    }
    Ok(text.to_owned())
}

/// Parses a duration such as `30s`, `5m`, `1500ms`, `1h 30m`, `7d`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|error| format!("{error} (write a duration such as 30s, 5m, 1500ms or 1h)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Every `baton server` flag can be set from the environment as BATON_<LONG NAME> (and so
    /// from a systemd unit's Environment=), besides the config file.
    #[test]
    fn every_server_flag_has_a_baton_variable() {
        let command = Cli::command();
        let Some(server) = command.find_subcommand("server") else {
            panic!("no server subcommand");
        };
        for arg in server.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "print-config" {
                continue;
            }
            let expected = format!("BATON_{}", long.replace('-', "_").to_uppercase());
            let env = arg
                .get_env()
                .map(|name| name.to_string_lossy().into_owned());
            let found = env.as_deref().unwrap_or("none");
            let ok = env.as_deref() == Some(expected.as_str())
                || (long == "database" && found == "BATON_DATABASE_URL");
            assert!(ok, "--{long}: env {found}, expected {expected}");
        }
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn wait_and_no_wait_exclude_each_other() {
        let parsed = Cli::try_parse_from(["baton", "acquire", "x", "--wait", "1s", "--no-wait"]);
        assert!(parsed.is_err());
    }

    #[test]
    fn global_flags_go_anywhere() {
        let parsed = Cli::try_parse_from(["baton", "locks", "--json", "--url", "http://h:1"]);
        let cli = parsed.map_err(|error| error.to_string());
        assert!(matches!(&cli, Ok(cli) if cli.global.json && cli.global.url == "http://h:1"));
    }
}

/// `baton elect`.
#[derive(Debug, Args)]
pub struct ElectArgs {
    /// The election's name: the lock the leader holds.
    pub name: String,

    /// The command the leader runs, after `--`. It runs without a shell.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,

    /// What this candidate publishes while it leads (at most 1024 bytes), typically the
    /// address clients should use: `baton leader NAME` prints it.
    #[arg(long, value_name = "VALUE")]
    pub value: String,

    /// The lease's time-to-live: a dead leader is replaced after at most this (plus the
    /// lock-delay); renewed every third of it.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ttl: std::time::Duration,

    /// Between SIGTERM and SIGKILL when the command must stop (at most a quarter of the ttl).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub grace: std::time::Duration,

    /// A shell command to run (through sh -c) when leadership is lost and the command stopped.
    #[arg(long, value_name = "CMD")]
    pub on_lost: Option<String>,

    /// The owner label [default: HOST/USER/PID].
    #[arg(long, env = "BATON_OWNER", value_name = "OWNER")]
    pub owner: Option<String>,

    /// How many bytes of output (the end of it) to keep in the job record (at most 65536).
    #[arg(long, value_name = "BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(0..=65_536))]
    pub output_max: u32,
}

/// `baton leader`.
#[derive(Debug, Args)]
pub struct LeaderArgs {
    /// The election's name (the lock).
    pub name: String,

    /// Keep running and print each change of leader as it happens (from the event stream),
    /// until interrupted.
    #[arg(long)]
    pub watch: bool,
}

/// `baton run`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("policy").args(["wait", "skip", "fail", "replace", "coalesce"])))]
pub struct RunArgs {
    /// The job's name; also the lock's unless --lock is given. A comma list (`a,b`) takes
    /// several locks at once (see --lock).
    pub name: String,

    /// The command and its arguments, after `--`. It runs without a shell.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,

    /// Busy: wait in the FIFO queue (the default), at most TIMEOUT if given; then exit 75.
    #[arg(long, value_name = "TIMEOUT", num_args = 0..=1, default_missing_value = "forever")]
    pub wait: Option<String>,

    /// Busy: record the job as skipped and exit 0.
    #[arg(long)]
    pub skip: bool,

    /// Busy: record the job as skipped and exit 75.
    #[arg(long)]
    pub fail: bool,

    /// Busy: ask the running holder to stop (it exits 80), and run once it has released.
    #[arg(long)]
    pub replace: bool,

    /// Busy: at most one pending follow-up run; if one is already waiting, fold into it and
    /// exit 0.
    #[arg(long)]
    pub coalesce: bool,

    /// The lock to hold [default: NAME]. Repeat it (or give a comma list) to hold several
    /// locks at once: all are granted together or none, in one fair order with every other
    /// request, never deadlocking however sets overlap. With several locks the run keeps no
    /// job record, and only the wait, --skip and --fail policies apply.
    #[arg(long, value_name = "LOCK", value_delimiter = ',')]
    pub lock: Vec<String>,

    /// How many runs may hold the lock at once.
    #[arg(long, value_name = "N")]
    pub capacity: Option<u32>,

    /// The lease's time-to-live; renewed every third of it.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ttl: std::time::Duration,

    /// Keep the lock at least this long after the start, even if the command ends sooner.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub min_hold: Option<std::time::Duration>,

    /// At most one run of this job name per period slot, across all hosts.
    #[arg(long, value_name = "PERIOD", value_parser = humantime::parse_duration)]
    pub once_per: Option<std::time::Duration>,

    /// A shell command to run (through sh -c) when the lease is lost and the command stopped;
    /// it gets BATON_JOB_ID, BATON_LOCK and BATON_LOST_REASON.
    #[arg(long, value_name = "CMD")]
    pub on_lost: Option<String>,

    /// The owner label [default: HOST/USER/PID].
    #[arg(long, env = "BATON_OWNER", value_name = "OWNER")]
    pub owner: Option<String>,

    /// Stop the command if it runs longer than this (exit 124, job timed_out).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<std::time::Duration>,

    /// Between SIGTERM and SIGKILL when the command must stop (at most a third of the ttl).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub grace: std::time::Duration,

    /// How many bytes of output (the end of it) to keep in the job record (at most 65536).
    #[arg(long, value_name = "BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(0..=65_536))]
    pub output_max: u32,

    /// A small value to publish with the lease while the command runs (at most 1024 bytes:
    /// an address, a version), shown in listings and `granted` events.
    #[arg(long, value_name = "VALUE")]
    pub value: Option<String>,

    /// Take the lock shared, as a reader: any number of shared holders hold it together, never
    /// with an exclusive one, in one FIFO order (a waiting writer is never overtaken). Only on a
    /// lock of capacity 1; on a semaphore it is refused (exit 65).
    #[arg(long)]
    pub shared: bool,
}

impl RunArgs {
    /// The policy the flags ask for.
    pub fn policy(&self) -> baton_client::proto::Policy {
        use baton_client::proto::Policy;
        if self.skip {
            Policy::Skip
        } else if self.fail {
            Policy::Fail
        } else if self.replace {
            Policy::Replace
        } else if self.coalesce {
            Policy::Coalesce
        } else {
            Policy::Wait
        }
    }

    /// The locks to hold: every `--lock`, or the comma list NAME.
    pub fn locks(&self) -> Vec<String> {
        if self.lock.is_empty() {
            self.name.split(',').map(str::to_owned).collect()
        } else {
            self.lock.clone()
        }
    }

    /// The `--wait` limit; `None` waits for ever.
    pub fn wait_limit(&self) -> Option<std::time::Duration> {
        match self.wait.as_deref() {
            None | Some("forever") => None,
            Some(text) => humantime::parse_duration(text).ok(),
        }
    }
}

/// `baton parallel`.
#[derive(Debug, Args)]
pub struct ParallelArgs {
    /// The command template, then `:::` and the arguments: `-- ./install.sh {} ::: h1 h2`.
    /// `{}` is replaced by the argument (appended when absent), `{#}` by the job's index.
    /// Without `:::`, arguments come from --args-file or standard input, one per line.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD {} ::: ARG"
    )]
    pub command: Vec<String>,

    /// How many jobs run at once on this host [default: the number of CPUs].
    #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,

    /// Share one limit with every `baton parallel` and `baton run` on the server: each job
    /// holds the lock NAME, of capacity N, while it runs.
    #[arg(long, value_name = "NAME:N")]
    pub slots: Option<String>,

    /// Job names are NAME-INDEX-ARGUMENT [default NAME: the template's first word].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Read the arguments from this file, one per line.
    #[arg(long, value_name = "FILE")]
    pub args_file: Option<PathBuf>,

    /// Read the jobs from this file: JSON lines `{"name", "command": [...], "env": {...},
    /// "lock"}`, or, when its name ends in `.toml`, `[[job]]` tables with the same keys.
    #[arg(long, value_name = "FILE", conflicts_with = "args_file")]
    pub jobs_file: Option<PathBuf>,

    /// Run locally, without a server or job records.
    #[arg(long)]
    pub local: bool,

    /// Print output lines as they come, each prefixed by its job's name, instead of each job's
    /// output whole when it ends.
    #[arg(long)]
    pub line_buffer: bool,

    /// Debugging: run the jobs one at a time, attached to the terminal (their stdin, stdout
    /// and stderr are baton's own, not captured), still recorded as jobs.
    #[arg(long, conflicts_with_all = ["jobs", "line_buffer", "results"])]
    pub sync: bool,

    /// Keep each job's stdout and stderr in DIR/INDEX-NAME/{stdout,stderr}.
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,

    /// When a job fails: `now` stops the running jobs and starts no more; `soon` starts no
    /// more and lets the running ones finish.
    #[arg(long, value_enum, value_name = "WHEN")]
    pub halt_on_failure: Option<Halt>,

    /// Run a failed (or timed-out) job again, up to N more times.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,

    /// Stop a job that runs longer than this (job timed_out).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<std::time::Duration>,

    /// Each job's lease time-to-live; renewed every third of it.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ttl: std::time::Duration,

    /// Between SIGTERM and SIGKILL when a job must stop (at most a third of the ttl).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub grace: std::time::Duration,

    /// How many bytes of each job's output (the end of it) its record keeps (at most 65536).
    #[arg(long, value_name = "BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(0..=65_536))]
    pub output_max: u32,

    /// The owner label [default: HOST/USER/PID].
    #[arg(long, env = "BATON_OWNER", value_name = "OWNER")]
    pub owner: Option<String>,
}

/// `baton parallel --halt-on-failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Halt {
    /// Stop the running jobs' process trees and start no more.
    Now,
    /// Start no more jobs; let the running ones finish.
    Soon,
}
