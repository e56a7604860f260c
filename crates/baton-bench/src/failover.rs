//! The fail-over workload (`--workload failover`): three `baton server` processes on one
//! PostgreSQL schema, one active and two standbys. Each trial kills the active with SIGKILL and
//! measures the time from the kill to the first grant answered by a standby that became the
//! active (probing the survivors every 10 ms with a fresh lock each time), then starts a new
//! server in the dead one's place so the next trial again has two standbys. Kills come at ten
//! different moments of the active's renewal period, after it has held the leadership for a
//! lease at least. Reports the p50 and
//! the maximum over the trials, one JSON line per trial and one summary line.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::pg;
use crate::procs::{ServerGuard, free_port};

/// What the workload needs.
pub struct FailoverOptions {
    /// The `baton` binary.
    pub baton_bin: PathBuf,
    /// The database (a fresh schema is made in it and dropped at the end).
    pub database_url: String,
    /// How many kills.
    pub trials: usize,
    /// The servers' `--leader-ttl`.
    pub leader_ttl: Duration,
}

/// The figures of a run.
pub struct FailoverResult {
    /// The summary table.
    pub table: String,
}

struct Node {
    guard: ServerGuard,
    base: String,
}

fn start(opts: &FailoverOptions, schema: &str, index: usize) -> Result<Node> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let ttl = format!("{}ms", opts.leader_ttl.as_millis());
    let args: Vec<String> = [
        "server",
        "--listen",
        listen.as_str(),
        "--data-dir",
        "{dir}",
        "--database",
        opts.database_url.as_str(),
        "--database-schema",
        schema,
        "--leader-ttl",
        ttl.as_str(),
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    let guard = ServerGuard::spawn(&format!("failover-{index}"), &opts.baton_bin, &args)?;
    Ok(Node {
        guard,
        base: format!("http://{listen}"),
    })
}

async fn healthy(http: &reqwest::Client, node: &mut Node) -> Result<()> {
    let url = format!("{}/healthz", node.base);
    node.guard
        .wait_ready(Duration::from_secs(30), || {
            let request = http.get(&url).send();
            async move {
                let response = request.await?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    bail!("status {}", response.status())
                }
            }
        })
        .await
}

/// The index of the node whose `/readyz` answers 200 (the active), waiting up to 30 s.
async fn active(http: &reqwest::Client, nodes: &[Node]) -> Result<usize> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        for (index, node) in nodes.iter().enumerate() {
            if let Ok(response) = http.get(format!("{}/readyz", node.base)).send().await
                && response.status().is_success()
            {
                return Ok(index);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("no active server within 30 s")
}

/// Probes `nodes` (the survivors) until one grants a fresh lock; the instant it did.
async fn first_grant(http: &reqwest::Client, nodes: &[&Node], trial: usize) -> Result<Instant> {
    let start = Instant::now();
    let mut round = 0u64;
    while start.elapsed() < Duration::from_secs(60) {
        round += 1;
        for node in nodes {
            let url = format!("{}/v1/locks/failover-{trial}-{round}/acquire", node.base);
            let answer = http
                .post(&url)
                .json(&json!({"owner": "bench", "ttl_ms": 10_000}))
                .timeout(Duration::from_millis(500))
                .send()
                .await;
            if let Ok(response) = answer
                && response.status().is_success()
            {
                return Ok(Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("no grant within 60 s of the kill")
}

/// Runs the trials; prints one JSON line per trial and a summary line.
pub async fn run(opts: &FailoverOptions, say: &dyn Fn(&str)) -> Result<FailoverResult> {
    let schema = pg::fresh_schema();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    let outcome = trials(opts, &schema, &http, say).await;
    if let Err(error) = pg::drop_schema_blocking(&opts.database_url, &schema) {
        say(&format!("failover: cannot drop schema {schema}: {error:#}"));
    }
    outcome
}

async fn trials(
    opts: &FailoverOptions,
    schema: &str,
    http: &reqwest::Client,
    say: &dyn Fn(&str),
) -> Result<FailoverResult> {
    let ttl_ms = u64::try_from(opts.leader_ttl.as_millis()).unwrap_or(u64::MAX);
    let mut started = 0;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let mut node = start(opts, schema, started)?;
        started += 1;
        healthy(http, &mut node).await?;
        nodes.push(node);
    }
    let mut took = Vec::new();
    for trial in 0..opts.trials {
        // Kill at a spread of moments in the active's renewal period (it renews every quarter
        // of the lease): right after a takeover the lease is fresh, which would measure only
        // the worst case. A lease and a varied part of a period go by first.
        let period = opts.leader_ttl / 4;
        let phase = period.mul_f64(((trial * 7) % 10) as f64 / 10.0);
        tokio::time::sleep(opts.leader_ttl + phase).await;
        let active = active(http, &nodes).await?;
        let victim = nodes.remove(active);
        let killed = Instant::now();
        // Dropping the guard sends SIGKILL and reaps the process.
        drop(victim);
        let survivors: Vec<&Node> = nodes.iter().collect();
        let granted = first_grant(http, &survivors, trial).await?;
        let ms = granted.duration_since(killed).as_secs_f64() * 1e3;
        println!(
            "{}",
            json!({"workload": "failover", "trial": trial, "leader_ttl_ms": ttl_ms, "failover_ms": ms})
        );
        say(&format!("failover trial {trial}: {ms:.0} ms"));
        took.push(ms);
        let mut node = start(opts, schema, started)?;
        started += 1;
        healthy(http, &mut node).await?;
        nodes.push(node);
    }
    took.sort_by(f64::total_cmp);
    let p50 = took.get(took.len() / 2).copied().unwrap_or(0.0);
    let max = took.last().copied().unwrap_or(0.0);
    println!(
        "{}",
        json!({"workload": "failover", "trials": took.len(), "leader_ttl_ms": ttl_ms, "p50_ms": p50, "max_ms": max})
    );
    let table = format!(
        "\nfail-over (kill -9 of the active to the first grant by the new active), {} trials, \
         --leader-ttl {ttl_ms} ms: p50 {p50:.0} ms, max {max:.0} ms\n",
        took.len()
    );
    Ok(FailoverResult { table })
}
