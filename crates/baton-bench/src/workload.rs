//! The two workloads, each bounded by a duration and a hard cap on operations, and guarded by
//! a watchdog that aborts every client task when a target stops answering.
//!
//! * **uncontended**: N clients, each on its own lock, loop acquire + release. One sample per
//!   full cycle.
//! * **contended handoff**: N clients on one lock loop acquire (waiting), hold for a random
//!   0..=`hold_max`, release. One [`Grant`] record per acquire, from which handoff latency and
//!   FIFO order are computed.
//!
//! Clients connect (and etcd clients take their lease) before the clock starts; all start
//! together. Throughput counts the operations completed inside the window (start until the
//! duration or the cap ends it); the queue drains after the window closes (every waiter already
//! queued is still granted, then stops), and those grants still count for fairness, so a
//! starved waiter shows up as inversions rather than disappearing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::task::JoinSet;

use crate::clients::LockClient;
use crate::stats::{self, Fairness, Grant, Percentiles};

/// Bounds and knobs shared by every workload.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// How long the clock runs per workload.
    pub duration: Duration,
    /// Hard cap on operations per workload (cycles or grants).
    pub max_ops: u64,
    /// Longest hold in the contended workload (each hold is random in `0..=hold_max`).
    pub hold_max: Duration,
    /// Enqueue instants closer than this are not counted as FIFO inversions.
    pub fifo_tolerance: Duration,
    /// Extra time after the duration before the watchdog aborts the workload.
    pub grace: Duration,
}

/// Result of an uncontended run.
#[derive(Debug, Clone)]
pub struct Uncontended {
    /// Client tasks.
    pub clients: usize,
    /// Cycles completed inside the window.
    pub cycles: u64,
    /// Every cycle completed, including those that ended after the window closed.
    pub cycles_total: u64,
    /// Length of the window, seconds.
    pub window_s: f64,
    /// Cycles per second.
    pub rate: f64,
    /// Latency of a full acquire + release cycle.
    pub latency: Percentiles,
    /// Acquires answered "busy" (should be 0: every client has its own lock).
    pub busy: u64,
}

/// Result of a contended run.
#[derive(Debug, Clone)]
pub struct Contended {
    /// Client tasks.
    pub clients: usize,
    /// Grants inside the window.
    pub grants: u64,
    /// Grants including the drain after the window.
    pub grants_total: u64,
    /// Length of the window, seconds.
    pub window_s: f64,
    /// Grants (handoffs) per second inside the window.
    pub rate: f64,
    /// How many grants were handoffs to an already-waiting client.
    pub handoffs: u64,
    /// Release sent by the previous holder to grant received by the next.
    pub handoff: Percentiles,
    /// Time from starting to wait to being granted.
    pub wait: Percentiles,
    /// FIFO order and fairness.
    pub fairness: Fairness,
}

/// Shared clock and stop signal of one workload.
struct Clock {
    /// Origin of every timestamp of the workload.
    origin: Instant,
    /// When the window opened (ns since origin).
    start_ns: u64,
    /// When the window closes (ns since origin).
    deadline_ns: u64,
    /// Hard cap on operations.
    max_ops: u64,
    /// Operations so far.
    ops: AtomicU64,
    /// Set when the cap is reached or a client fails.
    stop: AtomicBool,
    /// When the cap was reached (ns since origin), or `u64::MAX`.
    cap_hit_ns: AtomicU64,
}

impl Clock {
    /// Nanoseconds since the origin.
    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// Whether clients should stop starting new operations.
    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.now_ns() >= self.deadline_ns
    }

    /// Counts one operation; stops everyone when the cap is reached.
    fn count(&self) {
        if self.ops.fetch_add(1, Ordering::Relaxed) + 1 >= self.max_ops {
            let _ = self.cap_hit_ns.compare_exchange(
                u64::MAX,
                self.now_ns(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    /// The end of the measured window.
    fn window_end_ns(&self) -> u64 {
        self.deadline_ns
            .min(self.cap_hit_ns.load(Ordering::Relaxed))
    }
}

/// Prepares every client, then runs `body` in one task per client, all starting together.
/// Aborts everything when the watchdog fires; any client error stops the others and fails the
/// workload.
async fn run_clients<T, F, Fut>(
    clients: Vec<LockClient>,
    bounds: &Bounds,
    body: F,
) -> Result<(Arc<Clock>, u64, Vec<T>)>
where
    T: Send + 'static,
    F: Fn(usize, LockClient, Arc<Clock>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(LockClient, T)>> + Send + 'static,
{
    let n = clients.len();
    let mut prepared = Vec::with_capacity(n);
    let prepare_all = async {
        let mut set = JoinSet::new();
        for (i, mut c) in clients.into_iter().enumerate() {
            set.spawn(async move { c.prepare().await.map(|()| (i, c)) });
        }
        while let Some(r) = set.join_next().await {
            prepared.push(r.context("client task failed")??);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(30), prepare_all)
        .await
        .context("clients did not connect within 30 s")??;
    prepared.sort_by_key(|(i, _)| *i);

    // Every task is spawned and parked on the start signal before the clock starts.
    let origin = Instant::now();
    let body = Arc::new(body);
    let mut set = JoinSet::new();
    let (start_tx, start_rx) = tokio::sync::watch::channel(None::<Arc<Clock>>);
    for (i, client) in prepared {
        let body = Arc::clone(&body);
        let mut start_rx = start_rx.clone();
        set.spawn(async move {
            let clock = start_rx
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|c| c.clone())
                .context("start signal lost")?;
            let (mut client, out) = body(i, client, Arc::clone(&clock))
                .await
                .inspect_err(|_| clock.stop.store(true, Ordering::Relaxed))?;
            client.finish().await?;
            anyhow::Ok(out)
        });
    }
    tokio::task::yield_now().await;
    let start_ns = origin.elapsed().as_nanos() as u64;
    let clock = Arc::new(Clock {
        origin,
        start_ns,
        deadline_ns: start_ns + bounds.duration.as_nanos() as u64,
        max_ops: bounds.max_ops,
        ops: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        cap_hit_ns: AtomicU64::new(u64::MAX),
    });
    start_tx.send_replace(Some(Arc::clone(&clock)));

    let collect = async {
        let mut outs = Vec::with_capacity(n);
        let mut first_err = None;
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(out)) => outs.push(out),
                Ok(Err(e)) => {
                    clock.stop.store(true, Ordering::Relaxed);
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    clock.stop.store(true, Ordering::Relaxed);
                    first_err.get_or_insert(anyhow::anyhow!("client task failed: {e}"));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(outs),
        }
    };
    let limit = bounds.duration + bounds.grace;
    let outs = match tokio::time::timeout(limit, collect).await {
        Ok(r) => r?,
        Err(_) => {
            set.abort_all();
            bail!("workload did not finish within {limit:?}: aborted");
        }
    };
    Ok((clock, start_ns, outs))
}

/// Runs the uncontended workload: client `i` loops on its own lock `{prefix}/u/{i}`.
pub async fn uncontended(
    clients: Vec<LockClient>,
    prefix: &str,
    bounds: &Bounds,
) -> Result<Uncontended> {
    let n = clients.len();
    let prefix = prefix.to_owned();
    let (clock, start_ns, outs) = run_clients(clients, bounds, move |i, mut client, clock| {
        let name = format!("{prefix}/u/{i}");
        async move {
            // (completion instant, cycle latency) per cycle, and busy answers.
            let mut samples: Vec<(u64, u64)> = Vec::new();
            let mut busy = 0u64;
            while !clock.should_stop() {
                let t0 = clock.now_ns();
                let Some(held) = client.try_acquire(&name).await? else {
                    busy += 1;
                    tokio::task::yield_now().await;
                    continue;
                };
                client.release(held).await?;
                let t1 = clock.now_ns();
                samples.push((t1, t1 - t0));
                clock.count();
            }
            Ok((client, (samples, busy)))
        }
    })
    .await?;

    let end_ns = clock.window_end_ns();
    let window_s = end_ns.saturating_sub(start_ns) as f64 / 1e9;
    let mut latencies = Vec::new();
    let mut busy = 0;
    let mut cycles_total = 0;
    for (samples, b) in outs {
        busy += b;
        cycles_total += samples.len() as u64;
        latencies.extend(
            samples
                .iter()
                .filter(|(t, _)| *t <= end_ns)
                .map(|(_, l)| *l),
        );
    }
    let cycles = latencies.len() as u64;
    Ok(Uncontended {
        clients: n,
        cycles,
        cycles_total,
        window_s,
        rate: if window_s > 0.0 {
            cycles as f64 / window_s
        } else {
            0.0
        },
        latency: stats::percentiles(&mut latencies),
        busy,
    })
}

/// Runs the contended workload: every client loops on the one lock `{prefix}/contended`.
/// Client `i` makes its first acquire `i` milliseconds after the window opens.
pub async fn contended(
    clients: Vec<LockClient>,
    prefix: &str,
    bounds: &Bounds,
) -> Result<Contended> {
    let n = clients.len();
    let name = format!("{prefix}/contended");
    let hold_max_us = bounds.hold_max.as_micros() as u64;
    let (clock, start_ns, outs) = run_clients(clients, bounds, move |i, mut client, clock| {
        let name = name.clone();
        async move {
            let mut grants = Vec::new();
            let mut rng: u64 = 0x9E37_79B9_7F4A_7C15 ^ ((i as u64 + 1) << 17);
            // Stagger the first acquires a millisecond apart: requests sent all at once reach
            // the server in an order the clients cannot know, which would blur the FIFO check.
            let first = clock.start_ns + i as u64 * 1_000_000;
            tokio::time::sleep_until((clock.origin + Duration::from_nanos(first)).into()).await;
            while !clock.should_stop() {
                let enqueued_ns = clock.now_ns();
                let held = client.acquire_wait(&name).await?;
                let granted_ns = clock.now_ns();
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let hold_us = if hold_max_us == 0 {
                    0
                } else {
                    rng % (hold_max_us + 1)
                };
                if hold_us > 0 {
                    // tokio's timer works in whole milliseconds; a blocking-pool sleep keeps
                    // sub-millisecond holds accurate, and only the holder sleeps at a time.
                    let d = Duration::from_micros(hold_us);
                    tokio::task::spawn_blocking(move || std::thread::sleep(d))
                        .await
                        .context("hold sleep")?;
                }
                let release_sent_ns = clock.now_ns();
                client.release(held).await?;
                grants.push(Grant {
                    client: i,
                    enqueued_ns,
                    granted_ns,
                    release_sent_ns,
                });
                clock.count();
            }
            Ok((client, grants))
        }
    })
    .await?;

    let end_ns = clock.window_end_ns();
    let window_s = end_ns.saturating_sub(start_ns) as f64 / 1e9;
    let all: Vec<Grant> = outs.into_iter().flatten().collect();
    let grants = all.iter().filter(|g| g.granted_ns <= end_ns).count() as u64;
    let mut handoffs = stats::handoff_latencies(&all);
    let mut waits: Vec<u64> = all.iter().map(|g| g.granted_ns - g.enqueued_ns).collect();
    let fairness = stats::fairness(&all, n, bounds.fifo_tolerance.as_nanos() as u64);
    Ok(Contended {
        clients: n,
        grants,
        grants_total: all.len() as u64,
        window_s,
        rate: if window_s > 0.0 {
            grants as f64 / window_s
        } else {
            0.0
        },
        handoffs: handoffs.len() as u64,
        handoff: stats::percentiles(&mut handoffs),
        wait: stats::percentiles(&mut waits),
        fairness,
    })
}
