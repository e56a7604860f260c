//! The systems under test: how each is started on loopback with a fresh data directory, how
//! the bench knows it is ready, and how its clients are made.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::clients::{EtcdLock, HttpLock, LockClient, RedisLock};
use crate::metrics::StoreCounters;
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
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 5] = [
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
        }
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
}

/// A started target.
pub struct Running {
    /// Which target.
    pub kind: Kind,
    /// The server process (killed when this is dropped).
    pub server: ServerGuard,
    /// The client port.
    port: u16,
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
        _ => None,
    }
}

/// Starts `kind` on a free loopback port and waits until it answers.
pub async fn start(kind: Kind, opts: &TargetOptions) -> Result<Running> {
    let port = free_port()?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
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
    };
    Ok(Running {
        kind,
        server,
        port,
        opts: opts.clone(),
        http,
    })
}

impl Running {
    /// A fresh client (not yet connected) for client task `i`.
    pub fn client(&self, i: usize) -> Result<LockClient> {
        let base = format!("http://127.0.0.1:{}", self.port);
        let owner = format!("bench-{i}");
        Ok(match self.kind {
            Kind::Baton | Kind::Minimal => LockClient::Http(HttpLock::new(&base, owner)?),
            Kind::Redis | Kind::RedisAof => LockClient::Redis(Box::new(RedisLock::new(
                self.port,
                owner,
                0x0005_DEEC_E66D ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                self.opts.redis_retry_min_ms,
                self.opts.redis_retry_max_ms,
            )?)),
            Kind::Etcd => LockClient::Etcd(EtcdLock::new(&base, self.opts.etcd_lease_ttl_s)?),
        })
    }

    /// `n` fresh clients.
    pub fn clients(&self, n: usize) -> Result<Vec<LockClient>> {
        (0..n).map(|i| self.client(i)).collect()
    }

    /// baton's store counters from its `/metrics`; `None` for every other target. With
    /// `settled`, waits until the counters stop moving (see [`StoreCounters::read_settled`]).
    pub async fn store_counters(&self, settled: bool) -> Option<Result<StoreCounters>> {
        if self.kind != Kind::Baton {
            return None;
        }
        let base = format!("http://127.0.0.1:{}", self.port);
        Some(if settled {
            StoreCounters::read_settled(&self.http, &base).await
        } else {
            StoreCounters::read(&self.http, &base).await
        })
    }

    /// `http://127.0.0.1:PORT` (HTTP targets).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Fails when the server process has died.
    pub fn check_alive(&mut self) -> Result<()> {
        self.server.check_alive()
    }
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
