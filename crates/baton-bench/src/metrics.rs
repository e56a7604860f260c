//! baton's own counters, read from its `GET /metrics` (Prometheus text) right before and right
//! after each workload. Their difference says how many durable commits the workload cost, how
//! many operations shared each one, and how long a commit took: the figures that show whether
//! the durable commit, rather than CPU or polling, bounds baton's throughput.

use std::time::Duration;

use anyhow::{Context, Result};

/// One reading of baton's store counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StoreCounters {
    /// `baton_commits_total`: durable commits.
    pub commits: u64,
    /// `baton_committed_changes_total`: changes written by those commits.
    pub committed_changes: u64,
    /// `baton_commit_seconds_total`: time spent in those commits.
    pub commit_seconds: f64,
    /// `baton_transitions_total`: transitions run against the lock table.
    pub transitions: u64,
}

/// The value of the sample `name` (with any labels) in Prometheus text, if present.
pub(crate) fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(name)?;
        // `name{labels} value` or `name value`; not a longer name that starts with `name`.
        let rest = match rest.as_bytes().first()? {
            b'{' => &rest[rest.find('}')? + 1..],
            b' ' => rest,
            _ => return None,
        };
        rest.split_whitespace().next()?.parse().ok()
    })
}

impl StoreCounters {
    /// Parses the counters out of a `/metrics` answer; every one of them must be there.
    pub fn parse(text: &str) -> Result<StoreCounters> {
        let get = |name: &str| sample(text, name).with_context(|| format!("no {name} in /metrics"));
        Ok(StoreCounters {
            commits: get("baton_commits_total")? as u64,
            committed_changes: get("baton_committed_changes_total")? as u64,
            commit_seconds: get("baton_commit_seconds_total")?,
            transitions: get("baton_transitions_total")? as u64,
        })
    }

    /// Reads the counters of the baton server at `base` (`http://127.0.0.1:PORT`).
    pub async fn read(http: &reqwest::Client, base: &str) -> Result<StoreCounters> {
        let resp = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .context("GET /metrics")?;
        if !resp.status().is_success() {
            anyhow::bail!("GET /metrics answered {}", resp.status());
        }
        StoreCounters::parse(&resp.text().await?)
    }

    /// Reads the counters once the server has gone quiet: a release is answered before its
    /// commit, so the last releases of a workload may still be committing when the last
    /// client returns. Reads every 100 ms (far longer than a commit) until two readings agree,
    /// for at most 5 s.
    pub async fn read_settled(http: &reqwest::Client, base: &str) -> Result<StoreCounters> {
        let mut last = StoreCounters::read(http, base).await?;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = StoreCounters::read(http, base).await?;
            if now.commits == last.commits && now.transitions == last.transitions {
                return Ok(now);
            }
            last = now;
        }
        Ok(last)
    }
}

/// What one workload cost baton's store: the difference of two readings, and the operations
/// the workload completed over the same span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoreDelta {
    /// Durable commits.
    pub commits: u64,
    /// Changes written by those commits.
    pub committed_changes: u64,
    /// Seconds spent in those commits.
    pub commit_seconds: f64,
    /// Transitions run.
    pub transitions: u64,
    /// Operations the workload completed, every one the delta covers: all cycles
    /// (uncontended) or all grants (contended), including those after the window closed.
    pub ops: u64,
    /// Clock time of the workload (clients running), seconds.
    pub elapsed_s: f64,
}

impl StoreDelta {
    /// `after - before`, for `ops` operations completed in `elapsed`.
    pub fn between(
        before: StoreCounters,
        after: StoreCounters,
        ops: u64,
        elapsed: Duration,
    ) -> StoreDelta {
        StoreDelta {
            commits: after.commits.saturating_sub(before.commits),
            committed_changes: after
                .committed_changes
                .saturating_sub(before.committed_changes),
            commit_seconds: (after.commit_seconds - before.commit_seconds).max(0.0),
            transitions: after.transitions.saturating_sub(before.transitions),
            ops,
            elapsed_s: elapsed.as_secs_f64(),
        }
    }

    /// Durable commits per completed operation.
    pub fn commits_per_op(&self) -> Option<f64> {
        (self.ops > 0).then(|| self.commits as f64 / self.ops as f64)
    }

    /// Mean duration of one durable commit, milliseconds.
    pub fn commit_ms_mean(&self) -> Option<f64> {
        (self.commits > 0).then(|| self.commit_seconds * 1_000.0 / self.commits as f64)
    }

    /// Changes written per commit: how many requests' changes one commit carried.
    pub fn changes_per_commit(&self) -> Option<f64> {
        (self.commits > 0).then(|| self.committed_changes as f64 / self.commits as f64)
    }

    /// Fraction of the workload's clock time the committer spent committing (1.0: it never
    /// idled, so commits were the bottleneck).
    pub fn commit_busy(&self) -> Option<f64> {
        (self.elapsed_s > 0.0).then(|| self.commit_seconds / self.elapsed_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP baton_commits_total Durable commits.\n\
        # TYPE baton_commits_total counter\n\
        baton_commits_total{store=\"sqlite\"} 120\n\
        baton_committed_changes_total{store=\"sqlite\"} 480\n\
        baton_commit_seconds_total{store=\"sqlite\"} 0.360000\n\
        baton_transitions_total 500\n";

    /// Whether `v` is there and within 1e-9 of `want`.
    fn approx(v: Option<f64>, want: f64) -> bool {
        v.is_some_and(|v| (v - want).abs() < 1e-9)
    }

    #[test]
    fn parses_the_counters() -> Result<()> {
        let c = StoreCounters::parse(TEXT)?;
        assert_eq!(c.commits, 120);
        assert_eq!(c.committed_changes, 480);
        assert!(approx(Some(c.commit_seconds), 0.36));
        assert_eq!(c.transitions, 500);
        Ok(())
    }

    #[test]
    fn a_missing_counter_is_an_error() {
        assert!(StoreCounters::parse("baton_commits_total 1\n").is_err());
        // A longer name is not the counter.
        assert_eq!(
            sample("baton_commits_total_x 5\n", "baton_commits_total"),
            None
        );
    }

    #[test]
    fn deltas_and_derived_figures() -> Result<()> {
        let before = StoreCounters {
            commits: 100,
            committed_changes: 400,
            commit_seconds: 0.3,
            transitions: 400,
        };
        let after = StoreCounters::parse(TEXT)?;
        let d = StoreDelta::between(before, after, 40, Duration::from_millis(200));
        assert_eq!(d.commits, 20);
        assert!(approx(d.commits_per_op(), 0.5));
        assert!(approx(d.commit_ms_mean(), 3.0));
        assert!(approx(d.changes_per_commit(), 4.0));
        assert!(approx(d.commit_busy(), 0.3));
        let none = StoreDelta::between(before, before, 0, Duration::ZERO);
        assert_eq!(none.commits_per_op(), None);
        assert_eq!(none.commit_ms_mean(), None);
        Ok(())
    }
}
