//! The systems under test: how each is started on loopback with a fresh data directory (or,
//! for the PostgreSQL targets, a fresh schema, dropped afterwards), how the bench knows it is
//! ready, and how its clients are made.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::clients::{EtcdLock, HttpLock, LockClient, RedisLock};
use crate::metrics::StoreCounters;
use crate::pg::{self, PgLock, PgMode};
use crate::procs::{ServerGuard, free_port, which};

/// One system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// baton's own server with its durable SQLite store.
    Baton,
    /// The minimal in-memory HTTP/JSON lock server of this crate.
    Minimal,
    /// Redis without persistence.
    Redis,
    /// Redis with an append-only file fsync'd on every write.
    RedisAof,
    /// etcd (single member).
    Etcd,
    /// `baton server` with its PostgreSQL store, in a fresh schema.
    BatonPostgres,
    /// Two `baton server`s on one PostgreSQL schema, the clients split between them.
    BatonPostgres2,
    /// A durable lease table driven by plain SQL; waiters poll every `--pg-poll`.
    PgSql,
    /// The same lease table; waiters poll every 10 ms.
    PgSql10ms,
    /// `pg_advisory_lock` (waiting in the database; not durable).
    PgAdvisory,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 10] = [
        Kind::Baton,
        Kind::Minimal,
        Kind::Redis,
        Kind::RedisAof,
        Kind::Etcd,
        Kind::BatonPostgres,
        Kind::BatonPostgres2,
        Kind::PgSql,
        Kind::PgSql10ms,
        Kind::PgAdvisory,
    ];

    /// What runs without `--targets`: the PostgreSQL targets need a database and are opt-in.
    pub const DEFAULT: [Kind; 5] = [
        Kind::Baton,
        Kind::Minimal,
        Kind::Redis,
        Kind::RedisAof,
        Kind::Etcd,
    ];

    /// The name used on the command line and in the output.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Baton => "baton",
            Kind::Minimal => "minimal",
            Kind::Redis => "redis",
            Kind::RedisAof => "redis-aof",
            Kind::Etcd => "etcd",
            Kind::BatonPostgres => "baton-postgres",
            Kind::BatonPostgres2 => "baton-postgres-2",
            Kind::PgSql => "pg-sql",
            Kind::PgSql10ms => "pg-sql-10ms",
            Kind::PgAdvisory => "pg-advisory",
        }
    }

    /// Every name, comma-separated, for messages.
    pub fn names() -> String {
        Kind::ALL.map(Kind::name).join(", ")
    }

    /// Whether this target is a `baton server` (with `/metrics`).
    pub fn is_baton(self) -> bool {
        matches!(
            self,
            Kind::Baton | Kind::BatonPostgres | Kind::BatonPostgres2
        )
    }

    /// Whether this target needs the PostgreSQL database.
    pub fn uses_postgres(self) -> bool {
        matches!(
            self,
            Kind::BatonPostgres
                | Kind::BatonPostgres2
                | Kind::PgSql
                | Kind::PgSql10ms
                | Kind::PgAdvisory
        )
    }

    /// Parses a name from the command line.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// Options that shape how targets start and behave.
#[derive(Debug, Clone)]
pub struct TargetOptions {
    /// The `baton` binary.
    pub baton_bin: PathBuf,
    /// Redis recipe: shortest sleep between attempts on a busy lock, ms.
    pub redis_retry_min_ms: u64,
    /// Redis recipe: longest sleep between attempts on a busy lock, ms.
    pub redis_retry_max_ms: u64,
    /// etcd lease TTL, seconds (longer than the whole run for one target).
    pub etcd_lease_ttl_s: u64,
    /// The PostgreSQL database of the PostgreSQL targets.
    pub database_url: String,
    /// Pool size: baton's `--database-pool`, and the plain-SQL peers' shared pool.
    pub database_pool: usize,
    /// pg-sql: sleep between two acquire attempts on a busy lock.
    pub pg_poll: Duration,
}

/// Drops a fresh schema when the target is done (after its servers were killed).
struct SchemaGuard {
    /// The database.
    url: String,
    /// The schema to drop.
    schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        if let Err(e) = pg::drop_schema_blocking(&self.url, &self.schema) {
            eprintln!("warning: dropping schema {}: {e:#}", self.schema);
        }
    }
}

/// A started target.
pub struct Running {
    /// Which target.
    pub kind: Kind,
    /// The server processes and their client ports (killed when this is dropped, before the
    /// schema is dropped); none for the plain-SQL peers, whose server is PostgreSQL itself.
    servers: Vec<(ServerGuard, u16)>,
    /// The PostgreSQL peers' shared pool.
    pool: Option<deadpool_postgres::Pool>,
    /// The fresh schema of a PostgreSQL target, dropped last.
    schema: Option<SchemaGuard>,
    /// How clients behave.
    opts: TargetOptions,
    /// A short-timeout HTTP client for probes and `/metrics`.
    http: reqwest::Client,
}

/// An HTTP GET that must answer 2xx, for readiness probes.
async fn probe_get(http: &reqwest::Client, url: &str) -> Result<()> {
    let resp = http.get(url).send().await?;
    if !resp.status().is_success() {
        bail!("{url} answered {}", resp.status());
    }
    Ok(())
}

/// Why a target cannot run here, if it cannot.
pub fn unavailable(kind: Kind, opts: &TargetOptions) -> Option<String> {
    match kind {
        Kind::Baton if !opts.baton_bin.is_file() => Some(format!(
            "{} not found (build it: cargo build --release -p baton-cli, or pass --baton-bin)",
            opts.baton_bin.display()
        )),
        Kind::Redis | Kind::RedisAof if which("redis-server").is_none() => {
            Some("redis-server not on PATH".into())
        }
        Kind::Etcd if which("etcd").is_none() => Some("etcd not on PATH".into()),
        Kind::BatonPostgres | Kind::BatonPostgres2 if !opts.baton_bin.is_file() => {
            unavailable(Kind::Baton, opts)
        }
        _ => None,
    }
}

/// Starts `kind` on a free loopback port and waits until it answers.
pub async fn start(kind: Kind, opts: &TargetOptions) -> Result<Running> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    if kind.uses_postgres() {
        return start_postgres(kind, opts, http).await;
    }
    let port = free_port()?;
    let ready_timeout = Duration::from_secs(30);
    let server = match kind {
        Kind::Baton => {
            let args = [
                "server".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--data-dir".into(),
                "{dir}".into(),
            ];
            let mut s = ServerGuard::spawn("baton", &opts.baton_bin, &args)?;
            let url = format!("http://127.0.0.1:{port}/healthz");
            s.wait_ready(ready_timeout, || probe_get(&http, &url))
                .await?;
            s
        }
        Kind::Minimal => {
            let exe = std::env::current_exe().context("locating baton-bench itself")?;
            let args = ["--serve-minimal".into(), port.to_string()];
            let mut s = ServerGuard::spawn("minimal", &exe, &args)?;
            let url = format!("http://127.0.0.1:{port}/healthz");
            s.wait_ready(ready_timeout, || probe_get(&http, &url))
                .await?;
            s
        }
        Kind::Redis | Kind::RedisAof => {
            let bin = which("redis-server").context("redis-server not on PATH")?;
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                "{dir}",
                "--save",
                "",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if kind == Kind::RedisAof {
                args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from));
            } else {
                args.extend(["--appendonly", "no"].map(String::from));
            }
            let mut s = ServerGuard::spawn(kind.name(), &bin, &args)?;
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
            s.wait_ready(ready_timeout, || async {
                let mut c = client.get_multiplexed_async_connection().await?;
                let _: String = redis::cmd("PING").query_async(&mut c).await?;
                Ok(())
            })
            .await?;
            s
        }
        Kind::Etcd => {
            let bin = which("etcd").context("etcd not on PATH")?;
            let peer = free_port()?;
            let client_url = format!("http://127.0.0.1:{port}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let args: Vec<String> = vec![
                "--name".into(),
                "default".into(),
                "--data-dir".into(),
                "{dir}".into(),
                "--listen-client-urls".into(),
                client_url.clone(),
                "--advertise-client-urls".into(),
                client_url.clone(),
                "--listen-peer-urls".into(),
                peer_url.clone(),
                "--initial-advertise-peer-urls".into(),
                peer_url.clone(),
                "--initial-cluster".into(),
                format!("default={peer_url}"),
            ];
            let mut s = ServerGuard::spawn("etcd", &bin, &args)?;
            let url = format!("{client_url}/health");
            s.wait_ready(ready_timeout, || async {
                let body = http.get(&url).send().await?.text().await?;
                if !body.contains("\"true\"") {
                    bail!("health: {body}");
                }
                Ok(())
            })
            .await?;
            s
        }
        Kind::BatonPostgres
        | Kind::BatonPostgres2
        | Kind::PgSql
        | Kind::PgSql10ms
        | Kind::PgAdvisory => bail!("{} is started by start_postgres", kind.name()),
    };
    Ok(Running {
        kind,
        servers: vec![(server, port)],
        pool: None,
        schema: None,
        opts: opts.clone(),
        http,
    })
}

impl Running {
    /// The client port of server `i % servers` (clients are split evenly between servers).
    fn port(&self, i: usize) -> Result<u16> {
        let n = self.servers.len();
        if n == 0 {
            bail!("{} has no server process", self.kind.name());
        }
        Ok(self.servers[i % n].1)
    }

    /// A fresh client (not yet connected) for client task `i`.
    pub fn client(&self, i: usize) -> Result<LockClient> {
        let owner = format!("bench-{i}");
        Ok(match self.kind {
            Kind::Baton | Kind::Minimal | Kind::BatonPostgres | Kind::BatonPostgres2 => {
                let base = format!("http://127.0.0.1:{}", self.port(i)?);
                LockClient::Http(HttpLock::new(&base, owner)?)
            }
            Kind::Redis | Kind::RedisAof => LockClient::Redis(Box::new(RedisLock::new(
                self.port(i)?,
                owner,
                0x0005_DEEC_E66D ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                self.opts.redis_retry_min_ms,
                self.opts.redis_retry_max_ms,
            )?)),
            Kind::Etcd => {
                let base = format!("http://127.0.0.1:{}", self.port(i)?);
                LockClient::Etcd(EtcdLock::new(&base, self.opts.etcd_lease_ttl_s)?)
            }
            Kind::PgSql | Kind::PgSql10ms | Kind::PgAdvisory => {
                let pool = self.pool.clone().context("no pool")?;
                let schema = self.schema.as_ref().map_or("", |s| s.schema.as_str());
                let mode = match self.kind {
                    Kind::PgSql => PgMode::Table {
                        poll: self.opts.pg_poll,
                    },
                    Kind::PgSql10ms => PgMode::Table {
                        poll: Duration::from_millis(10),
                    },
                    _ => PgMode::Advisory,
                };
                LockClient::Pg(Box::new(PgLock::new(pool, schema, mode, owner)))
            }
        })
    }

    /// `n` fresh clients.
    pub fn clients(&self, n: usize) -> Result<Vec<LockClient>> {
        (0..n).map(|i| self.client(i)).collect()
    }

    /// baton's store counters from its `/metrics` (summed over its servers); `None` for every
    /// other target. With `settled`, waits until the counters stop moving (see
    /// [`StoreCounters::read_settled`]).
    pub async fn store_counters(&self, settled: bool) -> Option<Result<StoreCounters>> {
        if !self.kind.is_baton() {
            return None;
        }
        let mut sum = StoreCounters::default();
        for (_, port) in &self.servers {
            let base = format!("http://127.0.0.1:{port}");
            let c = if settled {
                StoreCounters::read_settled(&self.http, &base).await
            } else {
                StoreCounters::read(&self.http, &base).await
            };
            match c {
                Ok(c) => {
                    sum.commits += c.commits;
                    sum.committed_changes += c.committed_changes;
                    sum.commit_seconds += c.commit_seconds;
                    sum.transitions += c.transitions;
                }
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(sum))
    }

    /// `http://127.0.0.1:PORT` of the first server (HTTP targets).
    pub fn base_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.servers.first().map_or(0, |(_, p)| *p)
        )
    }

    /// Fails when a server process has died.
    pub fn check_alive(&mut self) -> Result<()> {
        for (s, _) in &mut self.servers {
            s.check_alive()?;
        }
        Ok(())
    }

    /// The first server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.servers.first().map(|(s, _)| s.pid())
    }

    /// CPU seconds of every server process of the target (`None` when there is none: the
    /// plain-SQL peers' server is PostgreSQL, not measured).
    pub fn cpu_seconds(&self) -> Option<f64> {
        if self.servers.is_empty() {
            return None;
        }
        self.servers.iter().map(|(s, _)| s.cpu_seconds()).sum()
    }

    /// Peak RSS of the target's server processes, summed, KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        if self.servers.is_empty() {
            return None;
        }
        self.servers.iter().map(|(s, _)| s.peak_rss_kib()).sum()
    }
}

/// Starts a PostgreSQL target: `baton server`(s) on a fresh schema, or the plain-SQL peers'
/// fresh lease table and shared pool.
async fn start_postgres(
    kind: Kind,
    opts: &TargetOptions,
    http: reqwest::Client,
) -> Result<Running> {
    let url = &opts.database_url;
    // One clear error when the database is not there, before anything is started.
    pg::connect(url)
        .await
        .with_context(|| format!("database {url}"))?;
    let schema = pg::fresh_schema();
    let mut running = Running {
        kind,
        servers: Vec::new(),
        pool: None,
        schema: None,
        opts: opts.clone(),
        http,
    };
    match kind {
        Kind::BatonPostgres | Kind::BatonPostgres2 => {
            // The guard first: whatever fails below, the schema a server created is dropped.
            running.schema = Some(SchemaGuard {
                url: url.clone(),
                schema: schema.clone(),
            });
            let count = if kind == Kind::BatonPostgres2 { 2 } else { 1 };
            for i in 0..count {
                let port = free_port()?;
                let args = [
                    "server".into(),
                    "--listen".into(),
                    format!("127.0.0.1:{port}"),
                    "--database".into(),
                    url.clone(),
                    "--database-schema".into(),
                    schema.clone(),
                    "--database-pool".into(),
                    opts.database_pool.to_string(),
                ];
                let label = format!("{}-{i}", kind.name());
                let mut s = ServerGuard::spawn(&label, &opts.baton_bin, &args)?;
                let probe = format!("http://127.0.0.1:{port}/healthz");
                s.wait_ready(Duration::from_secs(30), || probe_get(&running.http, &probe))
                    .await?;
                running.servers.push((s, port));
            }
        }
        Kind::PgSql | Kind::PgSql10ms => {
            pg::create_lease_table(url, &schema).await?;
            running.schema = Some(SchemaGuard {
                url: url.clone(),
                schema,
            });
            running.pool = Some(pg::pool(url, opts.database_pool)?);
        }
        Kind::PgAdvisory => running.pool = Some(pg::pool(url, opts.database_pool)?),
        _ => bail!("{} is not a PostgreSQL target", kind.name()),
    }
    Ok(running)
}

/// The default `baton` binary: next to this executable when it is there (both are built into
/// the same target directory), else `target/release/baton` under the working directory.
pub fn default_baton_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("baton")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| Path::new("target/release/baton").to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_and_postgres_targets_are_opt_in() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.name()), Some(kind));
            assert_eq!(Kind::DEFAULT.contains(&kind), !kind.uses_postgres());
        }
    }
}
