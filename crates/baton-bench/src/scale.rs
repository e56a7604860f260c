//! The `scale` workload (baton only, opt-in): PRODUCT.md's target "one server holds 100,000
//! leases renewed every 10 s and 10,000 parked waiters, with bounded memory and without slowing
//! other requests".
//!
//! 1. Runs the uncontended workload (16 clients) on a fresh server: the baseline.
//! 2. Takes `leases` leases on as many locks (TTL 30 s) with a pool of client tasks, and from
//!    then on renews each one 10 s after its previous renewal (N/10 renewals per second).
//!    Resident memory before and after gives bytes per lease.
//! 3. Parks `waiters` waiters, 10 per lock on the first held locks, each holding one long-poll
//!    `POST /v1/tickets/{id}/wait` open (re-polled at once when it answers 202). Resident memory
//!    before and after gives bytes per waiter; the `baton_waiters` gauge proves them parked.
//! 4. While all of that is held, runs the same uncontended workload again: its rate and
//!    latency against the baseline is the slowdown. Renewals in that window give renewals/s
//!    and renew latency.
//!
//! Every phase is bounded in time; every task lives in a `JoinSet`, so returning early (an
//! error, or Ctrl-C dropping the future) aborts them all, and the server guard kills the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::clients::encode_segment;
use crate::stats::{self, Percentiles};
use crate::targets::Running;
use crate::workload::{self, Bounds, Uncontended};

/// Lease TTL of the held leases.
const TTL_MS: u64 = 30_000;
/// How often each held lease is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// Long-poll of each parked waiter.
const WAIT_MS: u64 = 30_000;
/// Waiters queued on each held lock.
const WAITERS_PER_LOCK: usize = 10;
/// Client tasks of the uncontended workload (baseline and under load).
const LOAD_CLIENTS: usize = 16;
/// File descriptors kept aside for everything but the waiters' connections.
const FD_MARGIN: u64 = 512;

/// What to hold.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// Leases to hold (one lock each).
    pub leases: usize,
    /// Waiters to park.
    pub waiters: usize,
    /// Length of the measured window (baseline and under load).
    pub duration: Duration,
    /// Client tasks taking leases, parking waiters and renewing.
    pub pool: usize,
    /// Hard cap on cycles of the uncontended workload.
    pub max_ops: u64,
}

/// The outcome, as one JSON object.
pub struct ScaleResult {
    /// Everything measured.
    pub json: Value,
    /// The human table.
    pub table: String,
}

/// `{"lease": {"id": ...}}`.
#[derive(Deserialize)]
struct LeaseAnswer {
    /// The lease.
    lease: Id,
}

/// `{"ticket": {"id": ...}}`.
#[derive(Deserialize)]
struct TicketAnswer {
    /// The ticket.
    ticket: Id,
}

/// An object with an id.
#[derive(Deserialize)]
struct Id {
    /// The id.
    id: String,
}

/// The soft limit on open files of process `pid` ("self" for this one), from /proc.
fn open_files_limit(pid: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

/// Resident memory of process `pid` (`VmRSS`), KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Resident memory after letting the server settle for a moment.
async fn settled_rss(pid: u32) -> Result<u64> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    rss_kib(pid).context("reading the server's VmRSS")
}

/// A gauge from baton's `/metrics`.
async fn gauge(http: &reqwest::Client, base: &str, name: &str) -> Result<f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .context("GET /metrics")?
        .text()
        .await?;
    crate::metrics::sample(&text, name).with_context(|| format!("no {name} in /metrics"))
}

/// Lock `i` of the held set.
fn lock_url(base: &str, i: usize) -> String {
    format!(
        "{base}/v1/locks/{}/acquire",
        encode_segment(&format!("scale/held/{i}"))
    )
}

/// Fails with the status and body of an unexpected answer.
async fn unexpected(what: &str, resp: reqwest::Response) -> anyhow::Error {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    anyhow::anyhow!("{what}: unexpected {status}: {}", body.trim())
}

/// Renewal figures, shared by the renewer tasks.
#[derive(Default)]
struct RenewStats {
    /// When the measured window opened and closed (ns since origin; 0 = not yet / open).
    window: std::sync::Mutex<(u64, u64)>,
    /// Latencies (ns) of renewals sent inside the window.
    latencies: std::sync::Mutex<Vec<u64>>,
    /// How late (ns) after its due time each renewal inside the window was sent.
    lags: std::sync::Mutex<Vec<u64>>,
    /// Renewals answered 200, in total.
    ok: AtomicU64,
    /// Renewals that failed (any other answer or a transport error), in total.
    failed: AtomicU64,
    /// The first failure.
    first_error: std::sync::Mutex<Option<String>>,
}

/// Runs the scale workload on a freshly started baton `target`.
pub async fn run(
    target: &mut Running,
    opts: &ScaleOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<ScaleResult> {
    let base = target.base_url();
    let pid = target
        .pid()
        .context("the scale target has no server process")?;
    let n = opts.leases.max(1);
    let pool = opts.pool.max(1);

    // Every waiter holds a connection open, in this process and in the server.
    let mut w = opts.waiters.min(n * WAITERS_PER_LOCK);
    let mut notes: Vec<String> = Vec::new();
    if w < opts.waiters {
        notes.push(format!(
            "waiters reduced to {w}: {WAITERS_PER_LOCK} per held lock, {n} locks"
        ));
    }
    let own_limit = open_files_limit("self");
    let server_limit = open_files_limit(&pid.to_string());
    let fd_limit = own_limit.into_iter().chain(server_limit).min();
    if let Some(limit) = fd_limit {
        let room = limit.saturating_sub(FD_MARGIN + (pool + LOAD_CLIENTS) as u64) as usize;
        if room < w {
            notes.push(format!(
                "waiters reduced from {w} to {room}: the soft limit on open files is {limit} \
                 (this process {own_limit:?}, server {server_limit:?}) and each waiter needs a \
                 connection; raise it with `ulimit -n` before running"
            ));
            w = room;
        }
    }
    for note in &notes {
        progress(note);
    }

    let http = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(w + 2 * pool + 64)
        .timeout(Duration::from_millis(WAIT_MS + 30_000))
        .build()
        .context("building the HTTP client")?;

    let load_bounds = Bounds {
        duration: opts.duration,
        max_ops: opts.max_ops.max(1),
        hold_max: Duration::ZERO,
        fifo_tolerance: Duration::ZERO,
        grace: Duration::from_secs(20),
    };

    // 1. Start, baseline.
    let rss_start = settled_rss(pid).await?;
    progress(&format!(
        "scale: baseline uncontended@{LOAD_CLIENTS} for {:?}",
        opts.duration
    ));
    let baseline =
        workload::uncontended(target.clients(LOAD_CLIENTS)?, "scale/base", &load_bounds).await?;
    let rss_before_leases = settled_rss(pid).await?;

    // 2. Leases, renewed from the moment each is taken.
    progress(&format!(
        "scale: taking {n} leases with {pool} client tasks"
    ));
    let origin = Instant::now();
    let now_ns = move || origin.elapsed().as_nanos() as u64;
    let (due_tx, due_rx) = tokio::sync::mpsc::unbounded_channel::<(Arc<str>, Instant)>();
    let due_rx = Arc::new(Mutex::new(due_rx));
    let renew = Arc::new(RenewStats::default());
    let mut renewers = JoinSet::new();
    for _ in 0..pool {
        let (http, base, due_rx, due_tx, renew) = (
            http.clone(),
            base.clone(),
            Arc::clone(&due_rx),
            due_tx.clone(),
            Arc::clone(&renew),
        );
        renewers.spawn(async move {
            loop {
                let Some((id, due)) = due_rx.lock().await.recv().await else {
                    return;
                };
                tokio::time::sleep_until(due.into()).await;
                let sent = now_ns();
                let lag = Instant::now().saturating_duration_since(due).as_nanos() as u64;
                let url = format!("{base}/v1/leases/{}/renew", encode_segment(&id));
                let result = async {
                    let resp = http
                        .post(url)
                        .header("content-type", "application/json")
                        .body("{}")
                        .timeout(Duration::from_secs(15))
                        .send()
                        .await?;
                    if resp.status().as_u16() != 200 {
                        return Err(unexpected("renew", resp).await);
                    }
                    resp.bytes().await?;
                    anyhow::Ok(())
                }
                .await;
                let done = now_ns();
                match result {
                    Ok(()) => {
                        renew.ok.fetch_add(1, Ordering::Relaxed);
                        let (start, end) = *renew.window.lock().unwrap_or_else(|e| e.into_inner());
                        if start != 0 && sent >= start && (end == 0 || sent < end) {
                            renew
                                .latencies
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(done - sent);
                            renew
                                .lags
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(lag);
                        }
                        // Keep the schedule: every lease every 10 s, however late this one was.
                        let _ = due_tx.send((id, due + RENEW_EVERY));
                    }
                    Err(e) => {
                        renew.failed.fetch_add(1, Ordering::Relaxed);
                        renew
                            .first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
        });
    }

    let next = Arc::new(AtomicUsize::new(0));
    let mut takers = JoinSet::new();
    let take_started = Instant::now();
    for _ in 0..pool {
        let (http, base, next, due_tx) = (
            http.clone(),
            base.clone(),
            Arc::clone(&next),
            due_tx.clone(),
        );
        takers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                let body = json!({"owner": "scale-holder", "ttl_ms": TTL_MS});
                let resp = http
                    .post(lock_url(&base, i))
                    .json(&body)
                    .timeout(Duration::from_secs(15))
                    .send()
                    .await?;
                if resp.status().as_u16() != 200 {
                    return Err(unexpected("acquire", resp).await);
                }
                let a: LeaseAnswer = resp.json().await.context("decoding a lease")?;
                let _ = due_tx.send((Arc::from(a.lease.id), Instant::now() + RENEW_EVERY));
            }
        });
    }
    // Leases taken more than TTL ago would be gone: the whole phase must fit well inside it
    // for the renewer to keep up, but it is bounded by a generous limit either way.
    let take_limit = Duration::from_secs(600);
    let taken = tokio::time::timeout(take_limit, async {
        while let Some(r) = takers.join_next().await {
            r.context("lease task failed")??;
        }
        anyhow::Ok(())
    })
    .await;
    match taken {
        Ok(r) => r?,
        Err(_) => bail!("taking {n} leases did not finish within {take_limit:?}"),
    }
    let take_s = take_started.elapsed().as_secs_f64();
    let rss_leases = settled_rss(pid).await?;
    let leases_gauge = gauge(&http, &base, "baton_leases").await?;
    progress(&format!(
        "scale: {n} leases in {take_s:.1} s; baton_leases = {leases_gauge}; VmRSS {rss_before_leases} -> {rss_leases} KiB"
    ));

    // 3. Waiters, 10 per held lock, each with a long-poll always open.
    progress(&format!("scale: parking {w} waiters"));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let parked = Arc::new(AtomicUsize::new(0));
    let polls = Arc::new(AtomicU64::new(0));
    let granted = Arc::new(AtomicU64::new(0));
    let wait_errors = Arc::new(AtomicU64::new(0));
    let wait_first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let gate = Arc::new(tokio::sync::Semaphore::new(pool));
    let mut waiters = JoinSet::new();
    let park_started = Instant::now();
    for j in 0..w {
        let (http, base, gate, parked, polls, granted, errors, first_error, mut stop_rx) = (
            http.clone(),
            base.clone(),
            Arc::clone(&gate),
            Arc::clone(&parked),
            Arc::clone(&polls),
            Arc::clone(&granted),
            Arc::clone(&wait_errors),
            Arc::clone(&wait_first_error),
            stop_rx.clone(),
        );
        waiters.spawn(async move {
            let result = async {
                let ticket = {
                    let _permit = gate.acquire().await?;
                    let body = json!({
                        "owner": format!("scale-waiter-{j}"),
                        "ttl_ms": TTL_MS,
                        "queue": true,
                    });
                    let resp = http
                        .post(lock_url(&base, j / WAITERS_PER_LOCK))
                        .json(&body)
                        .timeout(Duration::from_secs(15))
                        .send()
                        .await?;
                    if resp.status().as_u16() != 202 {
                        return Err(unexpected("queued acquire", resp).await);
                    }
                    let t: TicketAnswer = resp.json().await.context("decoding a ticket")?;
                    t.ticket.id
                };
                parked.fetch_add(1, Ordering::Relaxed);
                let url = format!("{base}/v1/tickets/{}/wait", encode_segment(&ticket));
                let body = json!({ "wait_ms": WAIT_MS });
                // Bounded: the caller stops every waiter at the end, and aborts them after.
                for _ in 0..10_000 {
                    let send = http.post(&url).json(&body).send();
                    let resp = tokio::select! {
                        r = send => r?,
                        _ = stop_rx.wait_for(|s| *s) => return anyhow::Ok(()),
                    };
                    polls.fetch_add(1, Ordering::Relaxed);
                    match resp.status().as_u16() {
                        202 => {
                            resp.bytes().await?;
                        }
                        200 => {
                            // The holder's lease lapsed (renewals fell behind).
                            granted.fetch_add(1, Ordering::Relaxed);
                            return Ok(());
                        }
                        _ => return Err(unexpected("wait", resp).await),
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = result {
                errors.fetch_add(1, Ordering::Relaxed);
                first_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(|| format!("{e:#}"));
            }
        });
    }
    // Every waiter has its ticket, and the server counts them all as waiting.
    let park_limit = Duration::from_secs(300);
    let mut waiters_gauge = 0.0;
    loop {
        let done = parked.load(Ordering::Relaxed) + wait_errors.load(Ordering::Relaxed) as usize;
        if done >= w {
            waiters_gauge = gauge(&http, &base, "baton_waiters").await?;
            if waiters_gauge >= parked.load(Ordering::Relaxed) as f64 {
                break;
            }
        }
        if park_started.elapsed() > park_limit {
            progress(&format!(
                "scale: only {} of {w} waiters parked within {park_limit:?}",
                parked.load(Ordering::Relaxed)
            ));
            break;
        }
        target.check_alive()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let park_s = park_started.elapsed().as_secs_f64();
    // The long-polls themselves (one request each, sent just after the ticket) settle too.
    let rss_waiters = settled_rss(pid).await?;
    progress(&format!(
        "scale: {} waiters parked in {park_s:.1} s; baton_waiters = {waiters_gauge}; VmRSS {rss_leases} -> {rss_waiters} KiB",
        parked.load(Ordering::Relaxed)
    ));

    // 4. Under load: the same uncontended workload while renewals run, once every lease is in
    // its 10 s renewal cycle (the last lease taken has had its first renewal due).
    let steady = take_started + Duration::from_secs_f64(take_s) + RENEW_EVERY;
    if Instant::now() < steady {
        progress("scale: waiting for the renewals to reach their steady rate");
        tokio::time::sleep_until(steady.into()).await;
    }
    progress(&format!(
        "scale: uncontended@{LOAD_CLIENTS} for {:?} with leases renewed and waiters parked",
        opts.duration
    ));
    let cpu_before = target.cpu_seconds();
    let window_start = now_ns();
    *renew.window.lock().unwrap_or_else(|e| e.into_inner()) = (window_start, 0);
    let loaded =
        workload::uncontended(target.clients(LOAD_CLIENTS)?, "scale/load", &load_bounds).await;
    let window_end = now_ns();
    renew.window.lock().unwrap_or_else(|e| e.into_inner()).1 = window_end;
    let cpu_s = match (cpu_before, target.cpu_seconds()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let loaded: Uncontended = loaded?;
    let rss_end = rss_kib(pid).context("reading the server's VmRSS")?;
    let peak_rss = target.peak_rss_kib();
    let leases_end = gauge(&http, &base, "baton_leases").await?;
    let waiters_end = gauge(&http, &base, "baton_waiters").await?;

    // Stop: waiters drop their long-polls, then every task is aborted.
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while waiters.join_next().await.is_some() {}
    })
    .await;
    waiters.abort_all();
    renewers.abort_all();
    drop(due_tx);

    let window_s = (window_end - window_start) as f64 / 1e9;
    let mut latencies =
        std::mem::take(&mut *renew.latencies.lock().unwrap_or_else(|e| e.into_inner()));
    let mut lags = std::mem::take(&mut *renew.lags.lock().unwrap_or_else(|e| e.into_inner()));
    let renewals = latencies.len() as u64;
    let renew_lat = stats::percentiles(&mut latencies);
    let renew_lag = stats::percentiles(&mut lags);
    let renewals_per_s = renewals as f64 / window_s.max(1e-9);
    let per = |after: u64, before: u64, count: usize| -> f64 {
        (after as f64 - before as f64) * 1024.0 / count.max(1) as f64
    };
    let bytes_per_lease = per(rss_leases, rss_before_leases, n);
    let bytes_per_waiter = per(rss_waiters, rss_leases, w);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let slowdown_rate = ratio(baseline.rate, loaded.rate);
    let slowdown_p50 = ratio(loaded.latency.p50_us, baseline.latency.p50_us);
    let slowdown_p99 = ratio(loaded.latency.p99_us, baseline.latency.p99_us);
    let r1 = |x: f64| (x * 10.0).round() / 10.0;
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let pct = |p: &Percentiles| json!({"p50_us": r1(p.p50_us), "p99_us": r1(p.p99_us), "max_us": r1(p.max_us)});
    let renew_failed = renew.failed.load(Ordering::Relaxed);
    let renew_error = renew
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let wait_errs = wait_errors.load(Ordering::Relaxed);
    let wait_error = wait_first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut json = json!({
        "kind": "scale",
        "target": "baton",
        "leases": n,
        "waiters_asked": opts.waiters,
        "waiters": w,
        "waiters_parked": parked.load(Ordering::Relaxed),
        "open_files_limit": fd_limit,
        "notes": notes,
        "lease_ttl_ms": TTL_MS,
        "renew_every_s": RENEW_EVERY.as_secs(),
        "take_leases_s": r3(take_s),
        "park_waiters_s": r3(park_s),
        "rss_start_kib": rss_start,
        "rss_before_leases_kib": rss_before_leases,
        "rss_after_leases_kib": rss_leases,
        "rss_after_waiters_kib": rss_waiters,
        "rss_end_kib": rss_end,
        "peak_rss_kib": peak_rss,
        "bytes_per_lease": r1(bytes_per_lease),
        "bytes_per_waiter": r1(bytes_per_waiter),
        "gauge_leases_after_take": leases_gauge,
        "gauge_waiters_parked": waiters_gauge,
        "gauge_leases_end": leases_end,
        "gauge_waiters_end": waiters_end,
    });
    let more = json!({
        "window_s": r3(window_s),
        "renewals": renewals,
        "renewals_per_s": r1(renewals_per_s),
        "renewals_per_s_target": r1(n as f64 / RENEW_EVERY.as_secs_f64()),
        "renew": pct(&renew_lat),
        "renew_lag": pct(&renew_lag),
        "renew_ok_total": renew.ok.load(Ordering::Relaxed),
        "renew_failed_total": renew_failed,
        "renew_first_error": renew_error,
        "wait_polls": polls.load(Ordering::Relaxed),
        "waiters_granted": granted.load(Ordering::Relaxed),
        "wait_errors": wait_errs,
        "wait_first_error": wait_error,
        "load_clients": LOAD_CLIENTS,
        "baseline": {"cycles_per_s": r1(baseline.rate), "cycles": baseline.cycles,
            "cycle_p50_us": r1(baseline.latency.p50_us), "cycle_p99_us": r1(baseline.latency.p99_us)},
        "loaded": {"cycles_per_s": r1(loaded.rate), "cycles": loaded.cycles,
            "cycle_p50_us": r1(loaded.latency.p50_us), "cycle_p99_us": r1(loaded.latency.p99_us)},
        "slowdown_rate": r3(slowdown_rate),
        "slowdown_p50": r3(slowdown_p50),
        "slowdown_p99": r3(slowdown_p99),
        "server_cpu_s_window": cpu_s.map(r3),
    });
    if let (Value::Object(json), Value::Object(more)) = (&mut json, more) {
        json.extend(more);
    }

    let ms = |us: f64| format!("{:.2}", us / 1000.0);
    let mut table = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        table,
        "\nScale (baton): {n} leases (TTL {} s, renewed every {} s) and {} parked waiters",
        TTL_MS / 1000,
        RENEW_EVERY.as_secs(),
        parked.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        table,
        "  memory     VmRSS start {rss_start} KiB, before leases {rss_before_leases}, \
         after leases {rss_leases}, after waiters {rss_waiters}, end {rss_end} (peak {})",
        peak_rss.map_or("-".into(), |p| p.to_string())
    );
    let _ = writeln!(
        table,
        "  per item   {bytes_per_lease:.0} bytes/lease, {bytes_per_waiter:.0} bytes/waiter \
         (gauges: baton_leases {leases_gauge} -> {leases_end}, baton_waiters {waiters_gauge} -> {waiters_end})"
    );
    let _ = writeln!(
        table,
        "  renewals   {renewals_per_s:.0}/s (target {:.0}/s) over {window_s:.1} s, p50 {} ms, \
         p99 {} ms, lag p99 {} ms, failed {renew_failed}",
        n as f64 / RENEW_EVERY.as_secs_f64(),
        ms(renew_lat.p50_us),
        ms(renew_lat.p99_us),
        ms(renew_lag.p99_us)
    );
    let _ = writeln!(
        table,
        "  {:<28} {:>10} {:>9} {:>9}",
        "uncontended@16", "cycles/s", "p50 ms", "p99 ms"
    );
    for (label, r) in [("baseline", &baseline), ("under load", &loaded)] {
        let _ = writeln!(
            table,
            "  {:<28} {:>10.0} {:>9} {:>9}",
            label,
            r.rate,
            ms(r.latency.p50_us),
            ms(r.latency.p99_us)
        );
    }
    let _ = writeln!(
        table,
        "  slowdown                     {slowdown_rate:>9.2}x {slowdown_p50:>8.2}x {slowdown_p99:>8.2}x"
    );
    if wait_errs > 0 || granted.load(Ordering::Relaxed) > 0 {
        let _ = writeln!(
            table,
            "  waiters    {wait_errs} failed, {} granted early (first error: {})",
            granted.load(Ordering::Relaxed),
            wait_error.as_deref().unwrap_or("-")
        );
    }
    Ok(ScaleResult { json, table })
}
