//! `baton-bench`: baton's benchmark. It starts real servers on loopback, drives them over
//! their network APIs, and reports side by side, in the same run, baton and its peers:
//!
//! * `baton`: the `baton server` binary with its durable SQLite store;
//! * `minimal`: a minimal in-memory HTTP/JSON lock server ([`minimal`]), run as a subprocess
//!   of this binary (`--serve-minimal PORT`);
//! * `redis` and `redis-aof`: the Redis lock recipe, without persistence and with
//!   `appendfsync always`;
//! * `etcd`: etcd's lock recipe through its gRPC-gateway JSON API;
//! * opt-in, with a PostgreSQL database ([`pg`]): `baton-postgres` (and `baton-postgres-2`,
//!   two servers on one schema), `baton server` with its PostgreSQL store, against
//!   `pg-sql`/`pg-sql-10ms` (a durable lease table driven by plain SQL, waiters polling) and
//!   `pg-advisory` (`pg_advisory_lock`) through a pool of the same size.
//!
//! Workloads ([`workload`]): uncontended cycles and contended handoffs, each bounded by a
//! duration and an operation cap. For baton, its `/metrics` counters are read before and after
//! each workload ([`metrics`]): durable commits per operation and the mean commit time. Every measurement is one JSON line on stdout; a human table
//! and the PRODUCT.md ratios go to stderr at the end (or stdout with `--table`). See
//! `docs/benchmarks.md`. This is a program to run by hand, never a timed test.

mod clients;
mod failover;
mod held;
mod metrics;
mod minimal;
mod pg;
mod procs;
mod report;
mod scale;
mod stats;
mod targets;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;

use metrics::{StoreCounters, StoreDelta};
use report::Row;
use targets::{Kind, TargetOptions};
use workload::Bounds;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "baton-bench",
    about = "Benchmarks baton against a minimal in-memory lock server, Redis and etcd over loopback."
)]
struct Cli {
    /// Targets to run, comma-separated, among baton, minimal, redis, redis-aof, etcd,
    /// baton-postgres, baton-postgres-2, pg-sql, pg-sql-10ms, pg-advisory [default: the first
    /// five, when available here; the PostgreSQL ones are opt-in].
    #[arg(long, value_delimiter = ',')]
    targets: Option<Vec<String>>,
    /// Client counts of the uncontended workload, comma-separated ("none" to skip it).
    #[arg(long, default_value = "1,16,64", value_parser = parse_counts)]
    clients: Counts,
    /// Client counts of the contended workload, comma-separated ("none" to skip it).
    #[arg(long, default_value = "2,16,64", value_parser = parse_counts)]
    contended_clients: Counts,
    /// How long each workload runs.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Hard cap on operations per workload.
    #[arg(long, default_value_t = 2_000_000)]
    max_ops: u64,
    /// Longest hold in the contended workload; each hold is random in 0..=this (0: release at
    /// once, which measures pure handoff).
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    hold_max: Duration,
    /// Enqueue instants closer than this are not counted as FIFO inversions (the client cannot
    /// know in which order two requests sent that close together reached the server).
    #[arg(long, default_value = "2ms", value_parser = humantime::parse_duration)]
    fifo_tolerance: Duration,
    /// The `baton` binary [default: next to this executable, else target/release/baton].
    #[arg(long)]
    baton_bin: Option<PathBuf>,
    /// Redis recipe: shortest sleep between attempts on a busy lock, milliseconds.
    #[arg(long, default_value_t = 1)]
    redis_retry_min_ms: u64,
    /// Redis recipe: longest sleep between attempts on a busy lock, milliseconds.
    #[arg(long, default_value_t = 5)]
    redis_retry_max_ms: u64,
    /// The PostgreSQL database of the PostgreSQL targets (each gets a fresh schema, dropped
    /// afterwards).
    #[arg(long, env = "BATON_BENCH_DATABASE_URL", default_value = pg::DEFAULT_URL, hide_env_values = true)]
    database_url: String,
    /// Pool size of the PostgreSQL targets: baton's `--database-pool`, and the one pool the
    /// plain-SQL peers' clients share.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=1000))]
    database_pool: u32,
    /// pg-sql: sleep between two acquire attempts on a busy lock (pg-sql-10ms: 10 ms).
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    pg_poll: Duration,
    /// Print only the JSON lines (no progress or tables on stderr).
    #[arg(long)]
    json_only: bool,
    /// Print the tables to stdout at the end instead of stderr.
    #[arg(long)]
    table: bool,
    /// Also run the scale workload on baton (PRODUCT.md: 100,000 leases renewed every 10 s and
    /// 10,000 parked waiters); same as adding `--workload scale`.
    #[arg(long)]
    scale: bool,
    /// Workloads to run, comma-separated: `default` (uncontended and contended), `scale`
    /// (baton only, opt-in) and/or `failover` (three baton servers on the PostgreSQL database,
    /// opt-in) [default: default].
    #[arg(long, value_delimiter = ',')]
    workload: Option<Vec<String>>,
    /// Scale workload: leases held, one lock each.
    #[arg(long, default_value_t = 100_000)]
    scale_leases: usize,
    /// Scale workload: waiters parked (10 per held lock), each holding a connection open.
    #[arg(long, default_value_t = 10_000)]
    scale_waiters: usize,
    /// Scale workload: length of the baseline and of the measured window under load.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    scale_duration: Duration,
    /// Scale workload: client tasks taking leases, queueing waiters and renewing.
    #[arg(long, default_value_t = 64)]
    scale_pool: usize,
    /// Fail-over workload: how many times the active server is killed.
    #[arg(long, default_value_t = 10)]
    failover_trials: usize,
    /// Fail-over workload: the servers' `--leader-ttl`.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    failover_leader_ttl: Duration,
    /// Internal: serve the minimal lock server on this loopback port and do nothing else.
    #[arg(long, hide = true)]
    serve_minimal: Option<u16>,
}

/// A list of client counts.
#[derive(Debug, Clone)]
struct Counts(Vec<usize>);

/// Parses `1,16,64`; `none` or an empty string is the empty list.
fn parse_counts(s: &str) -> Result<Counts, String> {
    let s = s.trim();
    if s.is_empty() || s == "none" {
        return Ok(Counts(Vec::new()));
    }
    s.split(',')
        .map(|part| match part.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "{part:?} is not a client count (a whole number >= 1)"
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Counts)
}

fn main() -> ExitCode {
    // reqwest is built with rustls and no provider of its own (see the root Cargo.toml): every
    // HTTP client of this process needs one installed first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    if let Some(port) = cli.serve_minimal {
        return match minimal::serve(port) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("minimal server: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton-bench: building the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C drops the benchmark future, whose guards kill every server it started.
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(cli) => r.map(|()| true),
            _ = tokio::signal::ctrl_c() => Ok(false),
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("baton-bench: interrupted; servers stopped");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("baton-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints `msg` on stderr unless only JSON is wanted.
macro_rules! progress {
    ($quiet:expr, $($arg:tt)*) => {
        if !$quiet {
            eprintln!($($arg)*);
        }
    };
}

/// The counters when they were read, `None` (after a warning) when reading them failed or
/// the target has none.
fn warn_on_err(
    quiet: bool,
    target: &str,
    counters: Option<Result<StoreCounters>>,
) -> Option<StoreCounters> {
    match counters? {
        Ok(c) => Some(c),
        Err(e) => {
            progress!(quiet, "{target}: reading /metrics failed: {e:#}");
            None
        }
    }
}

/// Runs every selected target and workload, then prints the tables.
async fn run(cli: Cli) -> Result<()> {
    let quiet = cli.json_only;
    let explicit = cli.targets.is_some();
    let kinds: Vec<Kind> = match &cli.targets {
        None => Kind::DEFAULT.to_vec(),
        Some(names) => {
            let mut kinds = Vec::new();
            for n in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
                match Kind::parse(n) {
                    Some(k) => kinds.push(k),
                    None => bail!("unknown target {n:?}; expected some of {}", Kind::names()),
                }
            }
            kinds
        }
    };
    let (mut run_default, mut run_scale) = (cli.workload.is_none(), cli.scale);
    let mut run_failover = false;
    for w in cli.workload.iter().flatten().map(|w| w.trim()) {
        match w {
            "default" => run_default = true,
            "scale" => run_scale = true,
            "failover" => run_failover = true,
            "" => {}
            _ => bail!("unknown workload {w:?}; expected default, scale or failover"),
        }
    }
    let bounds = Bounds {
        duration: cli.duration,
        max_ops: cli.max_ops.max(1),
        hold_max: cli.hold_max,
        fifo_tolerance: cli.fifo_tolerance,
        grace: Duration::from_secs(20),
    };
    let opts = TargetOptions {
        baton_bin: cli
            .baton_bin
            .clone()
            .unwrap_or_else(targets::default_baton_bin),
        redis_retry_min_ms: cli.redis_retry_min_ms,
        redis_retry_max_ms: cli.redis_retry_max_ms,
        etcd_lease_ttl_s: (bounds.duration + bounds.grace).as_secs() + 30,
        database_url: cli.database_url.clone(),
        database_pool: cli.database_pool as usize,
        pg_poll: cli.pg_poll,
    };
    // What the PostgreSQL targets' commits cost: synchronous_commit as the server has it.
    let mut pg_settings = serde_json::Value::Null;
    if kinds.iter().any(|k| k.uses_postgres()) {
        let names = [
            "server_version",
            "synchronous_commit",
            "fsync",
            "commit_delay",
        ];
        match pg::settings(&opts.database_url, &names).await {
            Ok(m) => pg_settings = m.into(),
            Err(e) => progress!(quiet, "postgres: reading its settings: {e:#}"),
        }
    }

    let tmp = std::env::temp_dir();
    let tmp_fs = procs::fs_type(&tmp);
    if matches!(tmp_fs.as_deref(), Some("tmpfs" | "ramfs")) {
        progress!(
            quiet,
            "warning: {} is on {}: fsync costs nothing there, so durable targets look faster \
             than on disk; set TMPDIR to a directory on disk",
            tmp.display(),
            tmp_fs.as_deref().unwrap_or_default()
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "kind": "run",
            "started_at": jiff::Timestamp::now().to_string(),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
            "data_dir_root": tmp.display().to_string(),
            "data_dir_fs": tmp_fs,
            "duration_s": bounds.duration.as_secs_f64(),
            "max_ops": bounds.max_ops,
            "hold_max_us": bounds.hold_max.as_micros() as u64,
            "fifo_tolerance_us": bounds.fifo_tolerance.as_micros() as u64,
            "redis_retry_ms": [opts.redis_retry_min_ms, opts.redis_retry_max_ms],
            "database_pool": opts.database_pool,
            "pg_poll_us": [opts.pg_poll.as_micros() as u64, 10_000],
            "postgres": pg_settings,
        })
    );

    let mut rows = Vec::new();
    let emit = |rows: &mut Vec<Row>, row: Row| {
        println!("{}", row.to_json());
        rows.push(row);
    };

    let default_kinds = if run_default {
        kinds.clone()
    } else {
        Vec::new()
    };
    for kind in default_kinds {
        let name = kind.name();
        if let Some(reason) = targets::unavailable(kind, &opts) {
            progress!(quiet, "{name}: skipped: {reason}");
            if explicit || kind == Kind::Baton {
                emit(
                    &mut rows,
                    Row::Skipped {
                        target: name.into(),
                        workload: None,
                        reason,
                    },
                );
            }
            continue;
        }
        progress!(quiet, "{name}: starting");
        let mut target = match targets::start(kind, &opts).await {
            Ok(t) => t,
            Err(e) => {
                progress!(quiet, "{name}: skipped: {e:#}");
                emit(
                    &mut rows,
                    Row::Skipped {
                        target: name.into(),
                        workload: None,
                        reason: format!("{e:#}"),
                    },
                );
                continue;
            }
        };
        let workloads = cli
            .clients
            .0
            .iter()
            .map(|&n| (false, n))
            .chain(cli.contended_clients.0.iter().map(|&n| (true, n)));
        for (seq, (is_contended, n)) in workloads.enumerate() {
            let label = if is_contended {
                format!("contended@{n}")
            } else {
                format!("uncontended@{n}")
            };
            progress!(quiet, "{name}: {label}");
            let prefix = format!("bench/{seq}");
            let counters_before = warn_on_err(quiet, name, target.store_counters(false).await);
            let cpu_before = target.cpu_seconds();
            let started = Instant::now();
            let result = match target.clients(n) {
                Err(e) => Err(e),
                Ok(clients) if is_contended => workload::contended(clients, &prefix, &bounds)
                    .await
                    .map(|r| (None, Some(r))),
                Ok(clients) => workload::uncontended(clients, &prefix, &bounds)
                    .await
                    .map(|r| (Some(r), None)),
            };
            let elapsed = started.elapsed();
            let cpu_s = match (cpu_before, target.cpu_seconds()) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            };
            // The counters cover every operation of the workload, those completed after the
            // window closed included, so they are divided by every completed operation.
            let counters_after = match (&counters_before, &result) {
                (Some(_), Ok(_)) => warn_on_err(quiet, name, target.store_counters(true).await),
                _ => None,
            };
            let store = |ops: u64| match (counters_before, counters_after) {
                (Some(a), Some(b)) => Some(StoreDelta::between(a, b, ops, elapsed)),
                _ => None,
            };
            match result {
                Ok((Some(r), _)) => emit(
                    &mut rows,
                    Row::Uncontended {
                        target: name.into(),
                        store: store(r.cycles_total),
                        r,
                        cpu_s,
                    },
                ),
                Ok((_, Some(r))) => emit(
                    &mut rows,
                    Row::Contended {
                        target: name.into(),
                        store: store(r.grants_total),
                        r,
                        cpu_s,
                    },
                ),
                Ok((None, None)) => {}
                Err(e) => {
                    progress!(quiet, "{name}: {label} failed: {e:#}");
                    emit(
                        &mut rows,
                        Row::Skipped {
                            target: name.into(),
                            workload: Some(label),
                            reason: format!("{e:#}"),
                        },
                    );
                    if let Err(e) = target.check_alive() {
                        progress!(quiet, "{name}: server died, skipping the rest: {e:#}");
                        break;
                    }
                }
            }
        }
        emit(
            &mut rows,
            Row::Server {
                target: name.into(),
                peak_rss_kib: target.peak_rss_kib(),
                cpu_s: target.cpu_seconds(),
            },
        );
        drop(target);
    }

    let mut scale_table = String::new();
    if run_scale {
        if !kinds.contains(&Kind::Baton) {
            progress!(
                quiet,
                "scale: skipped: it runs on baton only, which is not selected"
            );
        } else if let Some(reason) = targets::unavailable(Kind::Baton, &opts) {
            progress!(quiet, "scale: skipped: {reason}");
            emit(
                &mut rows,
                Row::Skipped {
                    target: "baton".into(),
                    workload: Some("scale".into()),
                    reason,
                },
            );
        } else {
            progress!(
                quiet,
                "baton: starting a fresh server for the scale workload"
            );
            let mut target = targets::start(Kind::Baton, &opts).await?;
            let scale_opts = scale::ScaleOptions {
                leases: cli.scale_leases,
                waiters: cli.scale_waiters,
                duration: cli.scale_duration,
                pool: cli.scale_pool,
                max_ops: cli.max_ops,
            };
            let say = |msg: &str| progress!(quiet, "{msg}");
            match scale::run(&mut target, &scale_opts, &say).await {
                Ok(r) => {
                    println!("{}", r.json);
                    scale_table = r.table;
                }
                Err(e) => {
                    progress!(quiet, "scale failed: {e:#}");
                    emit(
                        &mut rows,
                        Row::Skipped {
                            target: "baton".into(),
                            workload: Some("scale".into()),
                            reason: format!("{e:#}"),
                        },
                    );
                }
            }
            drop(target);
        }
    }

    if run_failover {
        let failover_opts = failover::FailoverOptions {
            baton_bin: opts.baton_bin.clone(),
            database_url: cli.database_url.clone(),
            trials: cli.failover_trials.max(1),
            leader_ttl: cli.failover_leader_ttl,
        };
        let say = |msg: &str| progress!(quiet, "{msg}");
        match failover::run(&failover_opts, &say).await {
            Ok(result) => scale_table.push_str(&result.table),
            Err(e) => progress!(quiet, "failover failed: {e:#}"),
        }
    }

    let pick = |counts: &[usize]| {
        if counts.contains(&64) {
            64
        } else {
            counts.iter().copied().max().unwrap_or(0)
        }
    };
    let ratios = report::ratios(&rows, pick(&cli.clients.0), pick(&cli.contended_clients.0));
    if run_default {
        println!("{}", report::ratios_json(&ratios));
    }
    let mut text = String::new();
    if run_default {
        text = format!("{}{}", report::table(&rows), report::ratio_table(&ratios));
    }
    text.push_str(&scale_table);
    if cli.table {
        print!("{text}");
    } else if !quiet {
        eprint!("{text}");
    }
    Ok(())
}
