//! Output: one JSON line per measurement on stdout as it is taken, and at the end a human
//! table of every measurement plus the PRODUCT.md ratios.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::metrics::StoreDelta;
use crate::workload::{Contended, Uncontended};

/// One recorded outcome.
#[derive(Debug, Clone)]
pub enum Row {
    /// An uncontended run.
    Uncontended {
        /// Target name.
        target: String,
        /// The result.
        r: Uncontended,
        /// Server CPU seconds used during the run.
        cpu_s: Option<f64>,
        /// What the run cost baton's store (baton only).
        store: Option<StoreDelta>,
    },
    /// A contended run.
    Contended {
        /// Target name.
        target: String,
        /// The result.
        r: Contended,
        /// Server CPU seconds used during the run.
        cpu_s: Option<f64>,
        /// What the run cost baton's store (baton only).
        store: Option<StoreDelta>,
    },
    /// Server resources after every workload of a target.
    Server {
        /// Target name.
        target: String,
        /// Peak resident set size (`VmHWM`), KiB.
        peak_rss_kib: Option<u64>,
        /// Total CPU seconds of the server process.
        cpu_s: Option<f64>,
    },
    /// A target or workload that did not run or failed.
    Skipped {
        /// Target name.
        target: String,
        /// Workload, or `None` for the whole target.
        workload: Option<String>,
        /// Why.
        reason: String,
    },
}

/// Rounds to `digits` decimals for the JSON output.
fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Adds baton's store figures to a workload row; `null` for targets without them.
/// `commits_per_op` divides by `ops_counted`: every operation completed in the workload
/// (cycles or grants, those after the window included), because the counters cover them all.
fn with_store(mut row: Value, store: &Option<StoreDelta>) -> Value {
    let d = store.as_ref();
    let fields = json!({
        "commits": d.map(|d| d.commits),
        "committed_changes": d.map(|d| d.committed_changes),
        "transitions": d.map(|d| d.transitions),
        "ops_counted": d.map(|d| d.ops),
        "commit_s": d.map(|d| round(d.commit_seconds, 4)),
        "commits_per_op": d.and_then(StoreDelta::commits_per_op).map(|v| round(v, 4)),
        "commit_ms_mean": d.and_then(StoreDelta::commit_ms_mean).map(|v| round(v, 3)),
        "changes_per_commit": d.and_then(StoreDelta::changes_per_commit).map(|v| round(v, 2)),
        "commit_busy": d.and_then(StoreDelta::commit_busy).map(|v| round(v, 3)),
    });
    if let (Value::Object(row), Value::Object(fields)) = (&mut row, fields) {
        row.extend(fields);
    }
    row
}

impl Row {
    /// The row as one JSON object.
    pub fn to_json(&self) -> Value {
        match self {
            Row::Uncontended {
                target,
                r,
                cpu_s,
                store,
            } => with_store(
                json!({
                    "kind": "uncontended",
                    "target": target,
                    "clients": r.clients,
                    "cycles": r.cycles,
                    "cycles_total": r.cycles_total,
                    "window_s": round(r.window_s, 3),
                    "cycles_per_s": round(r.rate, 1),
                    "cycle_p50_us": round(r.latency.p50_us, 1),
                    "cycle_p99_us": round(r.latency.p99_us, 1),
                    "cycle_max_us": round(r.latency.max_us, 1),
                    "busy": r.busy,
                    "server_cpu_s": cpu_s.map(|c| round(c, 2)),
                }),
                store,
            ),
            Row::Contended {
                target,
                r,
                cpu_s,
                store,
            } => with_store(
                json!({
                    "kind": "contended",
                    "target": target,
                    "clients": r.clients,
                    "grants": r.grants,
                    "grants_total": r.grants_total,
                    "window_s": round(r.window_s, 3),
                    "handoffs_per_s": round(r.rate, 1),
                    "handoffs": r.handoffs,
                    "handoff_p50_us": round(r.handoff.p50_us, 1),
                    "handoff_p99_us": round(r.handoff.p99_us, 1),
                    "handoff_max_us": round(r.handoff.max_us, 1),
                    "wait_p50_us": round(r.wait.p50_us, 1),
                    "wait_p99_us": round(r.wait.p99_us, 1),
                    "in_order_fraction": round(r.fairness.in_order_fraction, 4),
                    "inversions": r.fairness.inversions,
                    "inversions_strict": r.fairness.inversions_strict,
                    "jain_index": round(r.fairness.jain_index, 4),
                    "min_grants_per_client": r.fairness.min_grants,
                    "max_grants_per_client": r.fairness.max_grants,
                    "server_cpu_s": cpu_s.map(|c| round(c, 2)),
                }),
                store,
            ),
            Row::Server {
                target,
                peak_rss_kib,
                cpu_s,
            } => json!({
                "kind": "server",
                "target": target,
                "peak_rss_kib": peak_rss_kib,
                "cpu_s": cpu_s.map(|c| round(c, 2)),
            }),
            Row::Skipped {
                target,
                workload,
                reason,
            } => json!({
                "kind": "skipped",
                "target": target,
                "workload": workload,
                "reason": reason,
            }),
        }
    }
}

/// Formats a rate.
fn rate(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// Formats microseconds as milliseconds.
fn ms(us: f64) -> String {
    format!("{:.2}", us / 1_000.0)
}

/// The store columns of a workload row: commits, commits per operation, mean commit time (ms)
/// and committer busy fraction; blank for targets without them.
fn store_cols(store: &Option<StoreDelta>) -> [String; 4] {
    let f = |v: Option<f64>, digits: usize| v.map_or(String::new(), |v| format!("{v:.digits$}"));
    match store {
        None => Default::default(),
        Some(d) => [
            d.commits.to_string(),
            f(d.commits_per_op(), 3),
            f(d.commit_ms_mean(), 2),
            d.commit_busy()
                .map_or(String::new(), |b| format!("{:.0}%", b * 100.0)),
        ],
    }
}

/// The human table of every row.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nUncontended: N clients, each acquire+release on its own lock \
         (commits/op: baton's durable commits per completed cycle)"
    );
    let _ = writeln!(
        out,
        "{:<16} {:>7} {:>11} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>6}",
        "target",
        "clients",
        "cycles/s",
        "p50 ms",
        "p99 ms",
        "cycles",
        "srv cpu",
        "commits",
        "commit/op",
        "commit ms",
        "c-busy"
    );
    for row in rows {
        if let Row::Uncontended {
            target,
            r,
            cpu_s,
            store,
        } = row
        {
            let [commits, per_op, commit_ms, busy] = store_cols(store);
            let _ = writeln!(
                out,
                "{:<16} {:>7} {:>11} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>6}",
                target,
                r.clients,
                rate(r.rate),
                ms(r.latency.p50_us),
                ms(r.latency.p99_us),
                r.cycles,
                cpu_s.map_or("-".into(), |c| format!("{c:.2}s")),
                commits,
                per_op,
                commit_ms,
                busy,
            );
        }
    }
    let _ = writeln!(
        out,
        "\nContended: N clients on one lock (handoff = release sent -> next grant received; \
         commits/op: baton's durable commits per grant)"
    );
    let _ = writeln!(
        out,
        "{:<16} {:>7} {:>10} {:>8} {:>8} {:>9} {:>8} {:>7} {:>6} {:>11} {:>8} {:>8} {:>9} {:>9} {:>6}",
        "target",
        "clients",
        "handoff/s",
        "p50 ms",
        "p99 ms",
        "wait p99",
        "in-order",
        "invers",
        "jain",
        "min/max",
        "srv cpu",
        "commits",
        "commit/op",
        "commit ms",
        "c-busy"
    );
    for row in rows {
        if let Row::Contended {
            target,
            r,
            cpu_s,
            store,
        } = row
        {
            let [commits, per_op, commit_ms, busy] = store_cols(store);
            let _ = writeln!(
                out,
                "{:<16} {:>7} {:>10} {:>8} {:>8} {:>9} {:>7.1}% {:>7} {:>6.3} {:>11} {:>8} {:>8} {:>9} {:>9} {:>6}",
                target,
                r.clients,
                rate(r.rate),
                ms(r.handoff.p50_us),
                ms(r.handoff.p99_us),
                ms(r.wait.p99_us),
                r.fairness.in_order_fraction * 100.0,
                r.fairness.inversions,
                r.fairness.jain_index,
                format!("{}/{}", r.fairness.min_grants, r.fairness.max_grants),
                cpu_s.map_or("-".into(), |c| format!("{c:.2}s")),
                commits,
                per_op,
                commit_ms,
                busy,
            );
        }
    }
    let _ = writeln!(out, "\nServer process after all workloads");
    let _ = writeln!(
        out,
        "{:<16} {:>14} {:>10}",
        "target", "peak RSS MiB", "CPU s"
    );
    for row in rows {
        if let Row::Server {
            target,
            peak_rss_kib,
            cpu_s,
        } = row
        {
            let _ = writeln!(
                out,
                "{:<16} {:>14} {:>10}",
                target,
                peak_rss_kib.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
                cpu_s.map_or("-".into(), |c| format!("{c:.2}")),
            );
        }
    }
    let skipped: Vec<&Row> = rows
        .iter()
        .filter(|r| matches!(r, Row::Skipped { .. }))
        .collect();
    if !skipped.is_empty() {
        let _ = writeln!(out, "\nSkipped or failed");
        for row in skipped {
            if let Row::Skipped {
                target,
                workload,
                reason,
            } = row
            {
                let what = workload.as_deref().unwrap_or("all");
                let _ = writeln!(out, "{target:<16} {what:<16} {reason}");
            }
        }
    }
    out
}

/// One line of the ratio table.
#[derive(Debug, Clone)]
pub struct Ratio {
    /// What is compared.
    pub name: String,
    /// The measured value, when both sides ran.
    pub value: Option<f64>,
    /// The PRODUCT.md goal, in words.
    pub goal: String,
    /// Whether the goal is met.
    pub met: Option<bool>,
}

/// The uncontended rate of `target` at `clients`.
fn unc_rate(rows: &[Row], target: &str, clients: usize) -> Option<f64> {
    rows.iter().find_map(|r| match r {
        Row::Uncontended { target: t, r, .. } if t == target && r.clients == clients => {
            Some(r.rate)
        }
        _ => None,
    })
}

/// The contended result of `target` at `clients`.
fn con<'a>(rows: &'a [Row], target: &str, clients: usize) -> Option<&'a Contended> {
    rows.iter().find_map(|r| match r {
        Row::Contended { target: t, r, .. } if t == target && r.clients == clients => Some(r),
        _ => None,
    })
}

/// baton's store figures of its uncontended (`contended == false`) or contended run at
/// `clients`.
fn baton_store(rows: &[Row], contended: bool, clients: usize) -> Option<StoreDelta> {
    rows.iter().find_map(|row| match row {
        Row::Uncontended {
            target, r, store, ..
        } if !contended && target == "baton" && r.clients == clients => *store,
        Row::Contended {
            target, r, store, ..
        } if contended && target == "baton" && r.clients == clients => *store,
        _ => None,
    })
}

/// Divides when both sides are there and the divisor is positive.
fn div(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The PRODUCT.md ratios at `unc_clients` uncontended and `con_clients` contended clients
/// (64 each in a default run), plus peer-to-peer context lines.
pub fn ratios(rows: &[Row], unc_clients: usize, con_clients: usize) -> Vec<Ratio> {
    let (u, c) = (unc_clients, con_clients);
    let mut out = Vec::new();
    let v = div(unc_rate(rows, "baton", u), unc_rate(rows, "etcd", u));
    out.push(Ratio {
        name: format!("baton/etcd uncontended cycles/s @{u}"),
        value: v,
        goal: ">= 5".into(),
        met: v.map(|v| v >= 5.0),
    });
    let v = div(unc_rate(rows, "baton", u), unc_rate(rows, "minimal", u));
    out.push(Ratio {
        name: format!("baton/minimal uncontended cycles/s @{u}"),
        value: v,
        goal: ">= 0.5".into(),
        met: v.map(|v| v >= 0.5),
    });
    let v = div(
        con(rows, "baton", c).map(|r| r.rate),
        con(rows, "etcd", c).map(|r| r.rate),
    );
    out.push(Ratio {
        name: format!("baton/etcd contended handoffs/s @{c}"),
        value: v,
        goal: ">= 10".into(),
        met: v.map(|v| v >= 10.0),
    });
    let v = div(
        con(rows, "baton", c).map(|r| r.handoff.p99_us),
        con(rows, "etcd", c).map(|r| r.handoff.p99_us),
    );
    out.push(Ratio {
        name: format!("baton/etcd handoff p99 @{c}"),
        value: v,
        goal: "< 1".into(),
        met: v.map(|v| v < 1.0),
    });
    // The minimal peer is strictly FIFO: its figure in the same run is the noise floor of
    // this client-side check (see docs/benchmarks.md).
    let v = con(rows, "baton", c).map(|r| r.fairness.in_order_fraction);
    let control = con(rows, "minimal", c).map_or(String::new(), |r| {
        format!(" (minimal {:.4})", r.fairness.in_order_fraction)
    });
    out.push(Ratio {
        name: format!("baton grants in FIFO order @{c}"),
        value: v,
        goal: format!("= 1{control}"),
        met: con(rows, "baton", c).map(|r| r.fairness.inversions == 0),
    });
    // What bounds baton: durable commits per operation, and how a handoff compares with one
    // commit. Group commit should make an uncontended cycle cost well under one commit with
    // many clients (many requests share each), and a handoff at most one: each grant must be
    // durable before its holder hears of it, while releases ride along without being waited
    // for. The 1.05 leaves room for the commits of the first enqueues and of the drain.
    let v = baton_store(rows, false, u).and_then(|d| d.commits_per_op());
    out.push(Ratio {
        name: format!("baton commits per cycle @{u}"),
        value: v,
        goal: "< 1 (shared)".into(),
        met: v.map(|v| v < 1.0),
    });
    let store_c = baton_store(rows, true, c);
    let v = store_c.and_then(|d| d.commits_per_op());
    out.push(Ratio {
        name: format!("baton commits per grant @{c}"),
        value: v,
        goal: "<= 1 (1.05)".into(),
        met: v.map(|v| v <= 1.05),
    });
    let commit_us = store_c
        .and_then(|d| d.commit_ms_mean())
        .map(|ms| ms * 1_000.0);
    out.push(Ratio {
        name: format!("baton handoff p50 / mean commit @{c}"),
        value: div(con(rows, "baton", c).map(|r| r.handoff.p50_us), commit_us),
        goal: "(context)".into(),
        met: None,
    });
    out.push(Ratio {
        name: format!("baton committer busy @{c}"),
        value: store_c.and_then(|d| d.commit_busy()),
        goal: "(context)".into(),
        met: None,
    });
    // Context among the peers: what the targets above are relative to.
    for peer in ["minimal", "redis", "redis-aof"] {
        out.push(Ratio {
            name: format!("{peer}/etcd uncontended cycles/s @{u}"),
            value: div(unc_rate(rows, peer, u), unc_rate(rows, "etcd", u)),
            goal: "(context)".into(),
            met: None,
        });
    }
    for peer in ["minimal", "redis", "redis-aof"] {
        out.push(Ratio {
            name: format!("{peer}/etcd contended handoffs/s @{c}"),
            value: div(
                con(rows, peer, c).map(|r| r.rate),
                con(rows, "etcd", c).map(|r| r.rate),
            ),
            goal: "(context)".into(),
            met: None,
        });
    }
    // PostgreSQL store: at least the cycle rate of the plain-SQL lease table through a pool of
    // the same size, and at least 10 times its handoff rate (it polls; baton does not). The
    // goal lines compare with pg-sql (its default 1 ms poll, its fastest); the other peers are
    // context.
    let ran = |t: &str| {
        rows.iter().any(|r| {
            matches!(r, Row::Uncontended { target, .. } | Row::Contended { target, .. } if target == t)
        })
    };
    for b in ["baton-postgres", "baton-postgres-2"] {
        if !ran(b) {
            continue;
        }
        let v = div(unc_rate(rows, b, u), unc_rate(rows, "pg-sql", u));
        out.push(Ratio {
            name: format!("{b}/pg-sql uncontended cycles/s @{u}"),
            value: v,
            goal: ">= 1".into(),
            met: v.map(|v| v >= 1.0),
        });
        let v = div(
            con(rows, b, c).map(|r| r.rate),
            con(rows, "pg-sql", c).map(|r| r.rate),
        );
        out.push(Ratio {
            name: format!("{b}/pg-sql contended handoffs/s @{c}"),
            value: v,
            goal: ">= 10".into(),
            met: v.map(|v| v >= 10.0),
        });
        for peer in ["pg-sql-10ms", "pg-advisory"] {
            out.push(Ratio {
                name: format!("{b}/{peer} contended handoffs/s @{c}"),
                value: div(
                    con(rows, b, c).map(|r| r.rate),
                    con(rows, peer, c).map(|r| r.rate),
                ),
                goal: "(context)".into(),
                met: None,
            });
        }
        out.push(Ratio {
            name: format!("{b}/pg-sql handoff p99 @{c}"),
            value: div(
                con(rows, b, c).map(|r| r.handoff.p99_us),
                con(rows, "pg-sql", c).map(|r| r.handoff.p99_us),
            ),
            goal: "(context)".into(),
            met: None,
        });
        out.push(Ratio {
            name: format!("{b} grants in FIFO order @{c}"),
            value: con(rows, b, c).map(|r| r.fairness.in_order_fraction),
            goal: "= 1".into(),
            met: con(rows, b, c).map(|r| r.fairness.inversions == 0),
        });
    }
    if ran("pg-advisory") {
        out.push(Ratio {
            name: format!("pg-sql/pg-advisory uncontended cycles/s @{u}"),
            value: div(
                unc_rate(rows, "pg-sql", u),
                unc_rate(rows, "pg-advisory", u),
            ),
            goal: "(context)".into(),
            met: None,
        });
    }
    // A workload that was not run (`--clients none`) has the count 0: its lines say nothing.
    out.retain(|r| !r.name.ends_with(" @0"));
    out
}

/// The ratio table.
pub fn ratio_table(ratios: &[Ratio]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\nPRODUCT.md ratios");
    let _ = writeln!(
        out,
        "{:<52} {:>9} {:>20} {:>5}",
        "ratio", "value", "goal", "met"
    );
    for r in ratios {
        let _ = writeln!(
            out,
            "{:<52} {:>9} {:>20} {:>5}",
            r.name,
            r.value.map_or("n/a".into(), |v| format!("{v:.3}")),
            r.goal,
            match r.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            }
        );
    }
    out
}

/// The ratios as one JSON line.
pub fn ratios_json(ratios: &[Ratio]) -> Value {
    let items: Vec<Value> = ratios
        .iter()
        .map(|r| json!({ "name": r.name, "value": r.value.map(|v| round(v, 4)), "goal": r.goal, "met": r.met }))
        .collect();
    json!({ "kind": "ratios", "ratios": items })
}
