//! `baton parallel [options] -- CMD {} ::: ARG...`: fans many commands out under a limit.
//!
//! - **Inputs**: a command template whose `{}` (and `{#}`, the job's 1-based index) is replaced
//!   by each argument after `:::`, or each line of `--args-file` or of standard input; or a
//!   `--jobs-file` of JSON lines `{"name", "command": [...], "env": {...}, "lock"}`, or of
//!   `[[job]]` tables with the same keys when its name ends in `.toml`.
//! - **Limits**: `-j N` jobs at once on this host (started in input order); `--slots NAME:N`
//!   runs every job under the lock NAME with capacity N, so one limit holds for every
//!   `baton parallel` and `baton run` on the same server.
//! - **Records**: with a server, every attempt of every job is a job record of one batch
//!   (`baton jobs --batch ID`), its lease renewed at a third of the ttl; when the lease is lost
//!   the job's process tree is stopped before the local deadline (as in `baton run`). Without a
//!   server (`--local`, or none reachable and no `--slots`), jobs run locally.
//! - **Output**: each job's output is captured and printed whole when it ends, under a header
//!   line, never interleaved; `--line-buffer` streams lines prefixed by the job's name. A live
//!   progress line on a terminal; a summary table (or `--json`) at the end.
//! - **Stopping**: `--timeout` per job, `--halt-on-failure now|soon`, and SIGINT/SIGTERM/SIGHUP
//!   stop every running job's tree (the jobs are recorded `cancelled`).
//! - **Systems**: Linux only, as `baton run` ([`crate::supervise`]); elsewhere (Windows) it
//!   refuses with a usage error (64) before it reads the jobs or reaches the server.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_client::proto::{CreateJobRequest, FinishJobRequest, JobState, Policy};
use baton_client::{Client, Error, Granted, default_owner};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::args::{Halt, ParallelArgs};
use crate::commands::Context;
use crate::commands::keeper::{
    KeeperStop, LeaseTiming, Signals, keep_lease, millis, renew_after_wait,
};
use crate::commands::stream::{OutputFeed, OutputStreamer};
use crate::exit;
use crate::output;
use crate::supervise::{self, Control, End, Spec, Supervisor};

/// The longest single long-poll while waiting for a slot.
const LONG_POLL: Duration = Duration::from_secs(30);
/// How often the progress line is redrawn.
const PROGRESS_TICK: Duration = Duration::from_millis(250);
/// The separator between the command template and its arguments.
const ARGS_SEPARATOR: &str = ":::";

/// One job to run.
#[derive(Debug, Clone)]
struct Task {
    /// 1-based, in input order.
    index: usize,
    name: String,
    /// The input arguments it was made from (empty for a jobs file).
    args: Vec<String>,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    /// A lock of its own (jobs file), instead of `--slots` or a private one.
    lock: Option<String>,
}

/// A job of `--jobs-file`: one JSON line, or one `[[job]]` table of a TOML file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobLine {
    name: Option<String>,
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    lock: Option<String>,
}

/// A TOML `--jobs-file`: `[[job]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsToml {
    #[serde(default)]
    job: Vec<JobLine>,
}

/// How one job ended, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
struct JobResult {
    #[serde(skip)]
    index: usize,
    name: String,
    args: Vec<String>,
    state: String,
    exit_code: Option<i32>,
    duration_ms: u64,
    output_tail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_id: Option<String>,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl JobResult {
    fn succeeded(&self) -> bool {
        self.state == JobState::Succeeded.as_str()
    }
}

/// Why a job's tree was stopped by baton.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    LeaseLost { revoked: bool },
    Deadline,
    Replaced,
    Cancelled,
    TimedOut,
    Interrupted(i32),
    Halted,
}

/// Where a job's stop cause is recorded (first one wins).
type CauseSlot = Arc<Mutex<Option<Cause>>>;

/// What every job task shares.
struct Shared {
    client: Option<Client>,
    batch: Option<String>,
    owner: String,
    host: String,
    slots: Option<(String, u32)>,
    /// Each job's lease timing (ttl, heartbeat, grace), also the grace of local jobs.
    timing: LeaseTiming,
    /// `--sync`: one job at a time, its output straight to the terminal.
    sync: bool,
    timeout: Option<Duration>,
    output_max: usize,
    retries: u32,
    halt: Option<Halt>,
    line_buffer: bool,
    results_dir: Option<PathBuf>,
    printer: Arc<Printer>,
    progress: Mutex<Progress>,
    /// The stop handles and causes of the running jobs, by index.
    running: Mutex<HashMap<usize, (Control, CauseSlot)>>,
    /// No more jobs start (`--halt-on-failure`, or a signal).
    halting: AtomicBool,
    /// The signal received, or 0.
    interrupted: AtomicI32,
    /// Becomes true when jobs waiting for a slot must give up (halt now, or a signal).
    give_up: watch::Sender<bool>,
}

impl Shared {
    fn halting(&self) -> bool {
        self.halting.load(Ordering::SeqCst)
    }

    /// Stops every running job's tree, recording `cause` for each, and makes waiting jobs give
    /// up.
    fn stop_all(&self, cause: Cause) {
        self.halting.store(true, Ordering::SeqCst);
        self.give_up.send_replace(true);
        if let Ok(running) = self.running.lock() {
            for (control, slot) in running.values() {
                set_cause(slot, cause);
                control.request_stop(self.timing.grace);
            }
        }
    }

    /// The cause to record for a job that was told to give up while waiting.
    fn give_up_cause(&self) -> Cause {
        match self.interrupted.load(Ordering::SeqCst) {
            0 => Cause::Halted,
            signal => Cause::Interrupted(signal),
        }
    }
}

/// Counts for the progress line.
struct Progress {
    total: usize,
    done: usize,
    running: usize,
    failed: usize,
    started: Instant,
}

impl Progress {
    fn line(&self) -> String {
        let elapsed = self.started.elapsed();
        let remaining = self.total.saturating_sub(self.done);
        let eta = if self.done == 0 {
            "?".to_owned()
        } else {
            let per_job = elapsed / u32::try_from(self.done).unwrap_or(u32::MAX);
            output::duration(per_job * u32::try_from(remaining).unwrap_or(u32::MAX))
        };
        format!(
            "{}/{} done, {} running, {} failed, {} remaining, {} elapsed, ETA {eta}",
            self.done,
            self.total,
            self.running,
            self.failed,
            remaining,
            output::duration(elapsed),
        )
    }
}

/// Serialises everything printed while jobs run, and keeps the progress line out of the way.
struct Printer {
    lock: Mutex<()>,
    /// A progress line is drawn on stderr (a terminal).
    progress: bool,
    /// Job output goes to stderr (with `--json`, stdout holds the JSON alone).
    to_stderr: bool,
}

impl Printer {
    /// Writes `parts` as one unit: `(true, bytes)` to stderr, `(false, bytes)` to the job-output
    /// stream.
    fn emit(&self, parts: &[(bool, &[u8])]) {
        let _guard = self.lock.lock();
        let mut stdout = std::io::stdout().lock();
        let mut stderr = std::io::stderr().lock();
        if self.progress {
            let _ = stderr.write_all(b"\r\x1b[K");
        }
        for (on_stderr, bytes) in parts {
            // A closed stdout (`| head`) must not stop the jobs: errors are ignored here.
            if *on_stderr || self.to_stderr {
                let _ = stderr.write_all(bytes);
            } else {
                let _ = stdout.write_all(bytes);
            }
        }
        let _ = stdout.flush();
        let _ = stderr.flush();
    }

    fn note(&self, text: &str) {
        self.emit(&[(true, format!("baton parallel: {text}\n").as_bytes())]);
    }

    fn draw_progress(&self, line: &str) {
        let _guard = self.lock.lock();
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\r\x1b[K{line}");
        let _ = stderr.flush();
    }
}

/// A job's stdout or stderr: kept whole (collated output, `--results`) and/or streamed line by
/// line with the job's name in front (`--line-buffer`).
#[derive(Clone)]
struct Capture {
    state: Arc<Mutex<CaptureState>>,
    printer: Arc<Printer>,
    /// `Some(prefix)` streams lines.
    prefix: Option<Arc<str>>,
    stderr: bool,
    keep: bool,
}

#[derive(Default)]
struct CaptureState {
    kept: Vec<u8>,
    partial: Vec<u8>,
}

impl Capture {
    fn new(printer: &Arc<Printer>, prefix: Option<&str>, stderr: bool, keep: bool) -> Self {
        Self {
            state: Arc::default(),
            printer: Arc::clone(printer),
            prefix: prefix.map(Arc::from),
            stderr,
            keep,
        }
    }

    fn emit_line(&self, line: &[u8]) {
        if let Some(prefix) = &self.prefix {
            self.printer
                .emit(&[(self.stderr, prefix.as_bytes()), (self.stderr, line)]);
        }
    }

    /// Prints what is left of an unterminated last line, and returns everything kept.
    fn finish(&self) -> Vec<u8> {
        let (partial, kept) = match self.state.lock() {
            Ok(mut state) => (
                std::mem::take(&mut state.partial),
                std::mem::take(&mut state.kept),
            ),
            Err(_) => (Vec::new(), Vec::new()),
        };
        if !partial.is_empty() {
            let mut line = partial;
            line.push(b'\n');
            self.emit_line(&line);
        }
        kept
    }
}

impl Write for Capture {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut lines = Vec::new();
        if let Ok(mut state) = self.state.lock() {
            if self.keep {
                state.kept.extend_from_slice(data);
            }
            if self.prefix.is_some() {
                state.partial.extend_from_slice(data);
                while let Some(end) = state.partial.iter().position(|byte| *byte == b'\n') {
                    lines.push(state.partial.drain(..=end).collect::<Vec<u8>>());
                }
            }
        }
        for line in lines {
            self.emit_line(&line);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs the jobs. Returns the exit code (see `docs/cli.md`).
pub async fn parallel(context: &Context, args: ParallelArgs) -> anyhow::Result<u8> {
    // Where a job could outlive its lease (not Linux), refuse before reading the jobs, locally
    // or with a server alike.
    if let Err(error) = supervise::available() {
        return Ok(context.usage_error("baton parallel", &error.to_string()));
    }
    let timing = match LeaseTiming::new(args.ttl, args.grace) {
        Ok(timing) => timing,
        Err(message) => return Ok(context.usage_error("baton parallel", &message)),
    };
    let tasks = match read_tasks(&args) {
        Ok(tasks) => tasks,
        Err(message) => return Ok(context.usage_error("baton parallel", &message)),
    };
    let slots = match args.slots.as_deref().map(parse_slots).transpose() {
        Ok(slots) => slots,
        Err(message) => return Ok(context.usage_error("baton parallel", &message)),
    };
    if args.local && slots.is_some() {
        eprintln!("baton parallel: --slots needs a server; it cannot go with --local");
        return Ok(exit::USAGE);
    }
    let client = if args.local {
        None
    } else {
        match context.client.health().await {
            Ok(_) => Some(context.client.clone()),
            Err(Error::Unavailable { .. }) if slots.is_none() => {
                eprintln!(
                    "baton parallel: no baton server at {}: running locally, without job records",
                    context.client.current_url()
                );
                None
            }
            Err(error) => return Err(error.into()),
        }
    };
    if client.is_none() && tasks.iter().any(|task| task.lock.is_some()) {
        eprintln!("baton parallel: running locally: the jobs file's locks are not taken");
    }
    let batch = client.as_ref().map(|_| {
        let id = baton_client::generate_request_id();
        format!("b_{}", &id[..16])
    });
    let jobs = match args.jobs {
        _ if args.sync => 1,
        Some(n) => n as usize,
        None => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
    };
    // With --sync the jobs own the terminal: no progress line over their output.
    let progress_line = std::io::stderr().is_terminal() && !args.sync;
    let printer = Arc::new(Printer {
        lock: Mutex::new(()),
        progress: progress_line,
        to_stderr: context.json,
    });
    match &batch {
        Some(batch) => printer.note(&format!(
            "batch {batch}: {} jobs, {jobs} at a time{} (baton jobs --batch {batch})",
            tasks.len(),
            slots
                .as_ref()
                .map(|(name, n)| format!(", {n} across the fleet on {name}"))
                .unwrap_or_default()
        )),
        None => printer.note(&format!("{} jobs, {jobs} at a time", tasks.len())),
    }
    let (give_up, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        client,
        batch,
        owner: args.owner.clone().unwrap_or_else(default_owner),
        host: gethostname::gethostname().to_string_lossy().into_owned(),
        slots,
        timing,
        sync: args.sync,
        timeout: args.timeout,
        output_max: args.output_max as usize,
        retries: args.retries,
        halt: args.halt_on_failure,
        line_buffer: args.line_buffer,
        results_dir: args.results.clone(),
        printer: Arc::clone(&printer),
        progress: Mutex::new(Progress {
            total: tasks.len(),
            done: 0,
            running: 0,
            failed: 0,
            started: Instant::now(),
        }),
        running: Mutex::new(HashMap::new()),
        halting: AtomicBool::new(false),
        interrupted: AtomicI32::new(0),
        give_up,
    });
    if let Some(dir) = &shared.results_dir {
        std::fs::create_dir_all(dir)
            .map_err(|error| anyhow::anyhow!("cannot create {}: {error}", dir.display()))?;
    }

    let signals = tokio::spawn(watch_signals(Arc::clone(&shared), Signals::new()?));
    let ticker = progress_line.then(|| {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            loop {
                let line = shared.progress.lock().map(|p| p.line()).unwrap_or_default();
                shared.printer.draw_progress(&line);
                tokio::time::sleep(PROGRESS_TICK).await;
            }
        })
    });

    // Start the jobs in input order, each once a local slot is free.
    let limit = Arc::new(Semaphore::new(jobs));
    let mut handles = Vec::new();
    let mut not_started = Vec::new();
    let mut stop = shared.give_up.subscribe();
    let mut tasks = tasks.into_iter();
    for task in tasks.by_ref() {
        let permit = tokio::select! {
            permit = Arc::clone(&limit).acquire_owned() => permit?,
            () = async { drop(stop.wait_for(|stop| *stop).await); } => { not_started.push(task); break; }
        };
        if shared.halting() {
            not_started.push(task);
            break;
        }
        let shared = Arc::clone(&shared);
        handles.push(tokio::spawn(async move {
            let result = run_task(&shared, task).await;
            drop(permit);
            result
        }));
    }
    not_started.extend(tasks);

    let mut results = Vec::new();
    for handle in handles {
        results.push(handle.await?);
    }
    signals.abort();
    if let Some(ticker) = ticker {
        ticker.abort();
        printer.emit(&[]);
    }
    for task in not_started {
        results.push(JobResult {
            index: task.index,
            name: task.name,
            args: task.args,
            state: JobState::Skipped.as_str().to_owned(),
            exit_code: None,
            duration_ms: 0,
            output_tail: String::new(),
            job_id: None,
            attempts: 0,
            reason: Some("not started: halted".into()),
        });
    }
    results.sort_by_key(|result| result.index);

    if context.json {
        output::print_json(&results)?;
    } else {
        let mut table = output::Table::new(&["NAME", "STATE", "EXIT", "DURATION", "LAST LINE"]);
        for result in &results {
            table.row(vec![
                result.name.clone(),
                result.state.clone(),
                result
                    .exit_code
                    .map(|code| code.to_string())
                    .unwrap_or_default(),
                output::duration(Duration::from_millis(result.duration_ms)),
                last_line(&result.output_tail),
            ]);
        }
        let failed = results.iter().filter(|result| !result.succeeded()).count();
        let mut text = table.render();
        text.push_str(&format!(
            "{} jobs: {} succeeded, {failed} did not{}\n",
            results.len(),
            results.len() - failed,
            shared
                .batch
                .as_ref()
                .map(|batch| format!(" (batch {batch})"))
                .unwrap_or_default()
        ));
        printer.emit(&[(true, text.as_bytes())]);
    }
    let signal = shared.interrupted.load(Ordering::SeqCst);
    Ok(if signal != 0 {
        u8::try_from(128 + signal).unwrap_or(exit::INTERRUPTED)
    } else if results.iter().all(JobResult::succeeded) {
        exit::SUCCESS
    } else {
        exit::JOBS_FAILED
    })
}

/// Stops everything on SIGINT, SIGTERM or SIGHUP.
async fn watch_signals(shared: Arc<Shared>, mut signals: Signals) {
    let signal = signals.next().await;
    shared.interrupted.store(signal, Ordering::SeqCst);
    shared.stop_all(Cause::Interrupted(signal));
    shared
        .printer
        .note(&format!("signal {signal}: stopping every job"));
    // Further signals while stopping change nothing; keep them from killing baton.
    loop {
        signals.next().await;
    }
}

/// Runs one job, with its retries, and reports it.
async fn run_task(shared: &Shared, task: Task) -> JobResult {
    if let Ok(mut progress) = shared.progress.lock() {
        progress.running += 1;
    }
    let mut attempts = 0;
    let (result, stdout, stderr) = loop {
        attempts += 1;
        let (result, stdout, stderr) = run_attempt(shared, &task).await;
        let retryable = [JobState::Failed, JobState::TimedOut, JobState::Lost]
            .iter()
            .any(|state| state.as_str() == result.state);
        if retryable && attempts <= shared.retries && !shared.halting() {
            shared.printer.note(&format!(
                "{} {} (attempt {attempts}); retrying",
                task.name, result.state
            ));
            continue;
        }
        break (result, stdout, stderr);
    };
    let result = JobResult { attempts, ..result };

    if let Some(dir) = &shared.results_dir {
        let folder = dir.join(format!("{}-{}", task.index, file_safe(&task.name)));
        let written = std::fs::create_dir_all(&folder)
            .and_then(|()| std::fs::write(folder.join("stdout"), &stdout))
            .and_then(|()| std::fs::write(folder.join("stderr"), &stderr));
        if let Err(error) = written {
            shared.printer.note(&format!(
                "cannot keep the output of {} in {}: {error}",
                task.name,
                folder.display()
            ));
        }
    }
    let (done, total) = match shared.progress.lock() {
        Ok(mut progress) => {
            progress.running -= 1;
            progress.done += 1;
            if !result.succeeded() {
                progress.failed += 1;
            }
            (progress.done, progress.total)
        }
        Err(_) => (0, 0),
    };
    let code = result
        .exit_code
        .map_or_else(|| result.state.clone(), |code| format!("exit {code}"));
    let took = output::duration(Duration::from_millis(result.duration_ms));
    let header = if result.succeeded() || result.state == JobState::Failed.as_str() {
        format!("== {} ({code}, {took})\n", task.name)
    } else {
        format!("== {} ({}, {code}, {took})\n", task.name, result.state)
    };
    if shared.line_buffer {
        if !shared.printer.progress {
            shared.printer.note(&format!(
                "[{done}/{total}] {}",
                header.trim_start_matches("== ").trim_end()
            ));
        }
    } else {
        let mut parts: Vec<(bool, &[u8])> = vec![(false, header.as_bytes()), (false, &stdout)];
        if !stdout.is_empty() && !stdout.ends_with(b"\n") {
            parts.push((false, b"\n"));
        }
        // On a terminal the header shows whose stderr follows; in a log file (stderr not a
        // terminal, the lines of every stream mixed) each line names its job.
        let marked;
        let stderr: &[u8] = if shared.printer.progress || stderr.is_empty() {
            &stderr
        } else {
            marked = prefix_lines(&stderr, &format!("{}: ", task.name));
            &marked
        };
        parts.push((true, stderr));
        if !stderr.is_empty() && !stderr.ends_with(b"\n") {
            parts.push((true, b"\n"));
        }
        shared.printer.emit(&parts);
    }

    if result.succeeded() {
        return result;
    }
    match shared.halt {
        Some(Halt::Now) if !shared.halting() => {
            shared.printer.note(&format!(
                "{} did not succeed: stopping every job",
                task.name
            ));
            shared.stop_all(Cause::Halted);
        }
        Some(Halt::Soon) if !shared.halting() => {
            shared.printer.note(&format!(
                "{} did not succeed: starting no more jobs",
                task.name
            ));
            shared.halting.store(true, Ordering::SeqCst);
        }
        _ => {}
    }
    result
}

/// One attempt: take a slot on the server (when there is one), run the command under the
/// supervisor, renew the lease, record how it ended. Returns the result, stdout and stderr.
async fn run_attempt(shared: &Shared, task: &Task) -> (JobResult, Vec<u8>, Vec<u8>) {
    let mut result = JobResult {
        index: task.index,
        name: task.name.clone(),
        args: task.args.clone(),
        state: JobState::Failed.as_str().to_owned(),
        exit_code: None,
        duration_ms: 0,
        output_tail: String::new(),
        job_id: None,
        attempts: 1,
        reason: None,
    };
    // A job that never ran took no time: the duration is the run's, never the wait's.
    let ended = |mut result: JobResult, state: JobState, reason: String| {
        result.state = state.as_str().to_owned();
        result.reason = Some(reason);
        (result, Vec::new(), Vec::new())
    };

    // The job record and its lease.
    let mut lease = None;
    if let Some(client) = &shared.client {
        let (lock, capacity) = match (&task.lock, &shared.slots) {
            (Some(lock), _) => (lock.clone(), None),
            (None, Some((name, n))) => (name.clone(), Some(*n)),
            (None, None) => (
                format!(
                    "parallel/{}/{}",
                    shared.batch.as_deref().unwrap_or("local"),
                    task.index
                ),
                Some(1),
            ),
        };
        match take_slot(shared, client, task, &lock, capacity).await {
            Ok(Slot::Granted(job_id, granted)) => {
                result.job_id = Some(job_id.clone());
                lease = Some((client.clone(), job_id, granted, lock));
            }
            Ok(Slot::Ended(job_id, state, reason)) => {
                result.job_id = job_id;
                return ended(result, state, reason);
            }
            Err(error) => {
                let reason = format!("cannot create the job record: {error}");
                shared.printer.note(&format!("{}: {reason}", task.name));
                return ended(result, JobState::Failed, reason);
            }
        }
    }

    let keep = !shared.line_buffer || shared.results_dir.is_some();
    let prefix = shared.line_buffer.then(|| format!("{}: ", task.name));
    let stdout = Capture::new(&shared.printer, prefix.as_deref(), false, keep);
    let stderr = Capture::new(&shared.printer, prefix.as_deref(), true, keep);
    // The output also goes to the server as it comes (`baton logs -f`), for jobs with a record.
    let feed = OutputFeed::new();
    let sink = |capture: &Capture| -> Box<dyn std::io::Write + Send> {
        if lease.is_some() {
            feed.tee(Box::new(capture.clone()))
        } else {
            Box::new(capture.clone())
        }
    };
    let mut spec = Spec {
        grace: shared.timing.grace,
        tail_bytes: shared.output_max,
        forward_signals: false,
        stdout: sink(&stdout),
        stderr: sink(&stderr),
        inherit_output: shared.sync,
        ..Spec::new(task.argv.iter().map(OsString::from))
    }
    .env("BATON_PARALLEL_INDEX", task.index.to_string());
    for (key, value) in &task.env {
        spec = spec.env(key, value);
    }
    if let Some((_, job_id, granted, lock)) = &lease {
        spec.lease_deadline = Some(shared.timing.deadline_of(granted).into_std());
        spec = spec
            .env("BATON_FENCING_TOKEN", granted.lease.token.to_string())
            .env("BATON_LEASE_ID", &granted.lease.id)
            .env("BATON_LOCK", lock)
            .env("BATON_JOB_ID", job_id);
    }
    let started = Instant::now();
    let mut supervisor = match Supervisor::spawn(spec) {
        Ok(supervisor) => supervisor,
        Err(error) => {
            let reason = format!("cannot start the command: {error}");
            if let Some((client, job_id, granted, _)) = &lease {
                let report = finish_request(&granted.lease.id, JobState::Failed, None, &reason, "");
                let _ = client.finish_job(job_id, &report).await;
            }
            return ended(result, JobState::Failed, reason);
        }
    };
    let cause: Arc<Mutex<Option<Cause>>> = Arc::new(Mutex::new(None));
    let control = supervisor.control();
    if let Ok(mut running) = shared.running.lock() {
        running.insert(task.index, (control.clone(), Arc::clone(&cause)));
    }
    // A stop of everything may have come between the slot and the registration.
    let stopping = *shared.give_up.borrow();
    if stopping {
        set_cause(&cause, shared.give_up_cause());
        control.request_stop(shared.timing.grace);
    }
    let heartbeat = lease.as_ref().map(|(client, job_id, granted, _)| {
        let cause = Arc::clone(&cause);
        tokio::spawn(keep_lease(
            client.clone(),
            job_id.clone(),
            granted.clone(),
            shared.timing,
            control.clone(),
            move |why| set_cause(&cause, Cause::of(why)),
        ))
    });
    let streamer = lease.as_ref().map(|(client, job_id, granted, _)| {
        let cause = Arc::clone(&cause);
        OutputStreamer::start(
            client.clone(),
            job_id.clone(),
            granted.lease.id.clone(),
            feed.clone(),
            control.clone(),
            shared.timing.grace,
            move |why| set_cause(&cause, Cause::of(why)),
        )
    });
    let outcome = match shared.timeout {
        Some(limit) => {
            tokio::select! {
                outcome = supervisor.wait() => outcome,
                () = tokio::time::sleep(limit) => {
                    set_cause(&cause, Cause::TimedOut);
                    supervisor.stop(shared.timing.grace).await
                }
            }
        }
        None => supervisor.wait().await,
    };
    if let Some(heartbeat) = heartbeat {
        heartbeat.abort();
    }
    if let Some(streamer) = streamer {
        streamer.finish().await;
    }
    if let Ok(mut running) = shared.running.lock() {
        running.remove(&task.index);
    }
    let stdout = stdout.finish();
    let stderr = stderr.finish();
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            let (result, _, _) = ended(result, JobState::Failed, error.to_string());
            return (result, stdout, stderr);
        }
    };
    if outcome.deadline_passed {
        // The guardian stopped the tree: the lease could not be renewed in time.
        set_cause(&cause, Cause::Deadline);
    }
    let cause = cause.lock().ok().and_then(|cause| *cause);
    let (state, reason) = match (cause, &outcome.end) {
        (Some(Cause::LeaseLost { revoked: true }), _) => (
            JobState::Lost,
            "the lease was revoked; the command was stopped".to_owned(),
        ),
        (Some(Cause::LeaseLost { revoked: false }), _) => (
            JobState::Lost,
            "the lease was lost; the command was stopped".to_owned(),
        ),
        (Some(Cause::Deadline), _) => (
            JobState::Lost,
            "the lease could not be renewed before its deadline; the command was stopped"
                .to_owned(),
        ),
        (Some(Cause::Replaced), _) => (
            JobState::Cancelled,
            "replaced by a newer run; the command was stopped".to_owned(),
        ),
        (Some(Cause::Cancelled), _) => (
            JobState::Cancelled,
            "cancelled on request (baton cancel); the command was stopped".to_owned(),
        ),
        (Some(Cause::TimedOut), _) => (
            JobState::TimedOut,
            format!(
                "ran longer than --timeout {}",
                output::duration(shared.timeout.unwrap_or_default())
            ),
        ),
        (Some(Cause::Interrupted(signal)), _) => (
            JobState::Cancelled,
            format!("baton parallel got signal {signal}; the command was stopped"),
        ),
        (Some(Cause::Halted), _) => (
            JobState::Cancelled,
            "--halt-on-failure now: another job failed; the command was stopped".to_owned(),
        ),
        (None, End::Exited(0)) => (JobState::Succeeded, String::new()),
        (None, End::Exited(status)) => (JobState::Failed, format!("exit code {status}")),
        (None, End::Signaled(signal)) => (JobState::Failed, format!("killed by signal {signal}")),
        (None, End::SpawnFailed(error)) => (
            JobState::Failed,
            format!("cannot start the command: {error}"),
        ),
    };
    let process_code = match &outcome.end {
        End::Exited(status) => *status,
        End::Signaled(signal) => 128 + signal,
        End::SpawnFailed(_) => i32::from(outcome.end.exit_code()),
    };
    let tail = outcome.tail_text();
    if let Some((client, job_id, granted, _)) = &lease {
        let report = finish_request(&granted.lease.id, state, Some(process_code), &reason, &tail);
        if let Err(error) = client.finish_job(job_id, &report).await {
            shared.printer.note(&format!(
                "could not record the end of job {job_id} ({}): {error}",
                task.name
            ));
        }
    }
    result.state = state.as_str().to_owned();
    result.reason = (!reason.is_empty()).then_some(reason);
    result.exit_code = Some(process_code);
    result.output_tail = tail;
    result.duration_ms = millis(started.elapsed());
    (result, stdout, stderr)
}

/// How taking a slot on the server went.
enum Slot {
    Granted(String, Granted),
    /// The job ended before it ran (given up while waiting, or not run by the server).
    Ended(Option<String>, JobState, String),
}

/// Creates the job record and waits for its lease, giving up when everything stops.
async fn take_slot(
    shared: &Shared,
    client: &Client,
    task: &Task,
    lock: &str,
    capacity: Option<u32>,
) -> Result<Slot, Error> {
    let request = CreateJobRequest {
        mode: None,
        value: None,
        name: task.name.clone(),
        lock: Some(lock.to_owned()),
        capacity,
        policy: Policy::Wait,
        owner: shared.owner.clone(),
        host: Some(shared.host.clone()),
        command: task.argv.clone(),
        ttl_ms: Some(millis(shared.timing.ttl)),
        wait_ms: Some(0),
        request_id: None,
        min_hold_ms: None,
        once_per_ms: None,
        batch: shared.batch.clone(),
    };
    let mut give_up = shared.give_up.subscribe();
    if *give_up.borrow() {
        let cause = shared.give_up_cause();
        return Ok(Slot::Ended(None, JobState::Skipped, gave_up_reason(cause)));
    }
    let mut start = client.create_job(&request).await?;
    let job_id = start.job.id.clone();
    let mut waited = false;
    let granted = loop {
        match start.job.state {
            JobState::Running => match start.lease.take() {
                Some(granted) => break granted,
                None => {
                    return Ok(Slot::Ended(
                        Some(job_id),
                        JobState::Failed,
                        "the server said the job runs but gave no lease".into(),
                    ));
                }
            },
            JobState::Waiting => {}
            other => {
                let reason = start.job.reason.clone().unwrap_or_default();
                return Ok(Slot::Ended(Some(job_id), other, reason));
            }
        }
        let Some(ticket) = start.ticket.clone() else {
            return Ok(Slot::Ended(
                Some(job_id),
                JobState::Failed,
                "the server said the job waits but gave no ticket".into(),
            ));
        };
        waited = true;
        tokio::select! {
            answer = client.wait_job(&job_id, &ticket.id, LONG_POLL) => match answer {
                Ok(answer) => start = answer,
                // `baton cancel` took the job out of the queue: its ticket is cancelled.
                Err(error) => match client.job(&job_id).await {
                    Ok(detail) if detail.job.state == JobState::Cancelled => {
                        let reason = detail.job.reason.unwrap_or_default();
                        return Ok(Slot::Ended(Some(job_id), JobState::Cancelled, reason));
                    }
                    _ => return Err(error),
                },
            },
            () = async { drop(give_up.wait_for(|stop| *stop).await); } => {
                let reason = gave_up_reason(shared.give_up_cause());
                let report = FinishJobRequest {
                    lease_id: None,
                    ticket_id: Some(ticket.id.clone()),
                    state: JobState::Cancelled,
                    exit_code: None,
                    reason: Some(reason.clone()),
                    output_tail: None,
                };
                if let Err(error) = client.finish_job(&job_id, &report).await {
                    shared.printer.note(&format!("could not record job {job_id} as cancelled: {error}"));
                }
                return Ok(Slot::Ended(Some(job_id), JobState::Cancelled, reason));
            }
        }
    };
    if !waited {
        return Ok(Slot::Granted(job_id, granted));
    }
    // A grant that arrived during a long-poll counts from when that poll was sent: renew once
    // so the deadline starts from a fresh request.
    match renew_after_wait(client, &job_id, &granted, shared.timing).await {
        Ok(renewed) => Ok(Slot::Granted(job_id, renewed)),
        Err(error) => {
            let reason = format!("the lease was lost before the command started: {error}");
            let report = finish_request(&granted.lease.id, JobState::Lost, None, &reason, "");
            let _ = client.finish_job(&job_id, &report).await;
            Ok(Slot::Ended(Some(job_id), JobState::Lost, reason))
        }
    }
}

fn gave_up_reason(cause: Cause) -> String {
    match cause {
        Cause::Interrupted(signal) => format!("baton parallel got signal {signal} while waiting"),
        _ => "--halt-on-failure now: another job failed while waiting".into(),
    }
}

fn finish_request(
    lease_id: &str,
    state: JobState,
    exit_code: Option<i32>,
    reason: &str,
    output: &str,
) -> FinishJobRequest {
    FinishJobRequest {
        lease_id: Some(lease_id.to_owned()),
        ticket_id: None,
        state,
        exit_code,
        reason: (!reason.is_empty()).then(|| reason.to_owned()),
        output_tail: (!output.is_empty()).then(|| output.to_owned()),
    }
}

/// The jobs the command line asks for, in input order.
fn read_tasks(args: &ParallelArgs) -> Result<Vec<Task>, String> {
    let mut words = args.command.split(|word| word == ARGS_SEPARATOR);
    let template: Vec<String> = words.next().unwrap_or_default().to_vec();
    let listed: Option<Vec<String>> = words.next().map(<[String]>::to_vec);
    if words.next().is_some() {
        return Err(format!("only one `{ARGS_SEPARATOR}` list is supported"));
    }
    if let Some(path) = &args.jobs_file {
        if !args.command.is_empty() || args.args_file.is_some() {
            return Err("--jobs-file takes no command template nor --args-file".into());
        }
        return read_jobs_file(path, args.name.as_deref());
    }
    if template.is_empty() {
        return Err(format!(
            "give a command template (`baton parallel -- CMD {{}} {ARGS_SEPARATOR} ARG...`) or --jobs-file"
        ));
    }
    let inputs = match (listed, &args.args_file) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "give arguments after `{ARGS_SEPARATOR}` or --args-file, not both"
            ));
        }
        (Some(listed), None) => listed,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
            lines(&text)
        }
        (None, None) if !std::io::stdin().is_terminal() => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|error| format!("cannot read standard input: {error}"))?;
            lines(&text)
        }
        (None, None) => {
            return Err(format!(
                "no arguments: give them after `{ARGS_SEPARATOR}`, with --args-file, or on standard input"
            ));
        }
    };
    let base = match &args.name {
        Some(name) => name.clone(),
        None => Path::new(&template[0]).file_name().map_or_else(
            || template[0].clone(),
            |name| name.to_string_lossy().into_owned(),
        ),
    };
    Ok(inputs
        .into_iter()
        .enumerate()
        .map(|(offset, input)| {
            let index = offset + 1;
            Task {
                index,
                name: job_name(&base, index, &input),
                argv: substitute(&template, &input, index),
                args: vec![input],
                env: Vec::new(),
                lock: None,
            }
        })
        .collect())
}

/// `text` with `prefix` in front of each of its lines.
fn prefix_lines(text: &[u8], prefix: &str) -> Vec<u8> {
    let mut marked = Vec::with_capacity(text.len() + prefix.len());
    for line in text.split_inclusive(|byte| *byte == b'\n') {
        marked.extend_from_slice(prefix.as_bytes());
        marked.extend_from_slice(line);
    }
    marked
}

/// How much of an argument goes into its job's name.
const NAME_ARGUMENT_CHARS_MAX: usize = 64;

/// A job's name, after its argument: `BASE-INDEX-ARGUMENT`, the argument's characters that a
/// lock name cannot hold replaced by `_` and cut at [`NAME_ARGUMENT_CHARS_MAX`], so
/// `./install.sh {} ::: web-1` runs `install.sh-1-web-1`. The index keeps names unique.
fn job_name(base: &str, index: usize, argument: &str) -> String {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._:/@-".contains(c);
    let argument: String = argument
        .chars()
        .take(NAME_ARGUMENT_CHARS_MAX)
        .map(|c| if allowed(c) { c } else { '_' })
        .collect();
    if argument.is_empty() {
        format!("{base}-{index}")
    } else {
        format!("{base}-{index}-{argument}")
    }
}

/// Non-empty lines, without their line ends.
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The template with `{}` replaced by the argument and `{#}` by the index; without any `{}`, the
/// argument is appended.
fn substitute(template: &[String], input: &str, index: usize) -> Vec<String> {
    let has_placeholder = template.iter().any(|word| word.contains("{}"));
    let mut argv: Vec<String> = template
        .iter()
        .map(|word| word.replace("{#}", &index.to_string()).replace("{}", input))
        .collect();
    if !has_placeholder {
        argv.push(input.to_owned());
    }
    argv
}

/// `--jobs-file`: TOML (`[[job]]` tables) when the path ends in `.toml`, else JSON lines.
fn read_jobs_file(path: &Path, base: Option<&str>) -> Result<Vec<Task>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let is_toml = path
        .extension()
        .is_some_and(|extension| extension == "toml");
    // Each job with where it came from, for error messages.
    let mut jobs: Vec<(String, JobLine)> = Vec::new();
    if is_toml {
        let file: JobsToml =
            toml::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))?;
        for (offset, job) in file.job.into_iter().enumerate() {
            jobs.push((format!("{} job {}", path.display(), offset + 1), job));
        }
    } else {
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let place = format!("{} line {}", path.display(), number + 1);
            let job: JobLine =
                serde_json::from_str(line).map_err(|error| format!("{place}: {error}"))?;
            jobs.push((place, job));
        }
    }
    let mut tasks = Vec::new();
    for (place, job) in jobs {
        if job.command.is_empty() {
            return Err(format!("{place}: empty command"));
        }
        let index = tasks.len() + 1;
        let name = job.name.unwrap_or_else(|| {
            let first = base.map_or_else(
                || {
                    Path::new(&job.command[0])
                        .file_name()
                        .map_or_else(|| job.command[0].clone(), |n| n.to_string_lossy().into())
                },
                str::to_owned,
            );
            format!("{first}-{index}")
        });
        tasks.push(Task {
            index,
            name,
            args: Vec::new(),
            argv: job.command,
            env: job.env.into_iter().collect(),
            lock: job.lock,
        });
    }
    if tasks.is_empty() {
        return Err(format!("{} holds no jobs", path.display()));
    }
    Ok(tasks)
}

/// `NAME:N`.
fn parse_slots(text: &str) -> Result<(String, u32), String> {
    let bad = || format!("--slots takes NAME:N with N at least 1, not {text:?}");
    let (name, count) = text.rsplit_once(':').ok_or_else(bad)?;
    let count: u32 = count.parse().map_err(|_| bad())?;
    if name.is_empty() || count == 0 {
        return Err(bad());
    }
    Ok((name.to_owned(), count))
}

/// The last non-empty line, shortened for the summary table.
fn last_line(text: &str) -> String {
    let line = text
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("");
    let line = line.trim();
    if line.chars().count() > 60 {
        let mut short: String = line.chars().take(59).collect();
        short.push('…');
        short
    } else {
        line.to_owned()
    }
}

fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect()
}

impl Cause {
    fn of(why: KeeperStop) -> Cause {
        match why {
            KeeperStop::LeaseLost { revoked } => Cause::LeaseLost { revoked },
            KeeperStop::Deadline => Cause::Deadline,
            KeeperStop::Replaced => Cause::Replaced,
            KeeperStop::Cancelled => Cause::Cancelled,
        }
    }
}

fn set_cause(cause: &Mutex<Option<Cause>>, value: Cause) {
    if let Ok(mut cause) = cause.lock() {
        cause.get_or_insert(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_or_the_argument_appended() {
        let template = vec!["echo".to_owned(), "{#}:{}".to_owned()];
        assert_eq!(substitute(&template, "a b", 3), ["echo", "3:a b"]);
        let template = vec!["echo".to_owned(), "x".to_owned()];
        assert_eq!(substitute(&template, "y", 1), ["echo", "x", "y"]);
    }

    #[test]
    fn slots_take_a_name_and_a_count() {
        assert_eq!(parse_slots("build:2"), Ok(("build".to_owned(), 2)));
        assert_eq!(parse_slots("a:b:3"), Ok(("a:b".to_owned(), 3)));
        assert!(parse_slots("build").is_err());
        assert!(parse_slots("build:0").is_err());
        assert!(parse_slots(":2").is_err());
    }

    #[test]
    fn the_last_line_is_the_last_non_empty_one() {
        assert_eq!(last_line("a\nb\n\n"), "b");
        assert_eq!(last_line(""), "");
    }
}
