//! `baton run NAME [policy] -- CMD...`: runs a command under a lock, as a job record, and never
//! lets it outlive its lease (guarantee G6).
//!
//! The flow:
//! 1. create the job; its policy decides: run now, wait in the FIFO queue, or never run
//!    (skipped, coalesced);
//! 2. while waiting, long-poll the job's ticket; a `--wait` limit or a signal gives up (the job
//!    is recorded cancelled);
//! 3. once granted, start the command under the supervisor (own process group, guardian that
//!    kills the tree if `baton run` dies) with `BATON_FENCING_TOKEN`, `BATON_LEASE_ID`,
//!    `BATON_LOCK` and `BATON_JOB_ID` in its environment;
//! 4. heartbeat at a third of the TTL. The *local deadline* is (when the last successful
//!    heartbeat or grant was **sent**) + the server's `expires_in_ms` − a drift margin. The tree
//!    is stopped (TERM, grace, KILL) so that it is gone before that deadline whenever the lease
//!    is lost, revoked, replaced, cancelled (`baton cancel`, heard at a heartbeat or in an
//!    output append's answer), or cannot be renewed in time. Meanwhile the command's output
//!    goes to the server as it comes ([`crate::commands::stream`]);
//! 5. record how it ended (state, exit code, output tail), run `--on-lost` if the lease was
//!    lost, and exit with the command's own code or baton's documented one.
//!
//! Only Linux can supervise the command (see [`crate::supervise`]); elsewhere (Windows) `baton
//! run` refuses with a usage error (64) before it creates the job or takes the lock.

use std::ffi::OsString;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_client::default_owner;
use baton_client::proto::{
    CreateJobRequest, FinishJobRequest, Holder, JobDetail, JobState, Policy,
};
use tokio::time::Instant;

use crate::args::RunArgs;
use crate::commands::Context;
use crate::commands::keeper::{
    KeeperStop, LeaseTiming, Signals, keep_lease, millis, renew_after_wait,
};
use crate::commands::stream::{OutputFeed, OutputStreamer};
use crate::supervise::{self, End, Spec, Supervisor};
use crate::{exit, output};

/// The longest single long-poll while waiting for the lock.
const LONG_POLL: Duration = Duration::from_secs(30);

/// Why `baton run` stopped the command itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopCause {
    /// The server said the lease ended (expired or released) or was revoked.
    LeaseLost { revoked: bool },
    /// No heartbeat succeeded in time: the local deadline was near.
    Deadline,
    /// A `--replace` run asked this one to stop.
    Replaced,
    /// `baton cancel` asked this one to stop.
    Cancelled,
    /// `--timeout` ran out.
    TimedOut,
}

/// What `--json` prints at the end: the job's record as the server last answered it, or its id
/// to look it up.
#[derive(Default)]
struct Record {
    job_id: Option<String>,
    detail: Option<JobDetail>,
}

/// How long `baton run` tries to record how its job ended before it gives up and says so: the
/// command has ended, so this only bounds how long a script waits on an unreachable server.
const FINISH_BOUND: Duration = Duration::from_secs(5);

/// Runs the command under the lock. Returns the exit code (see `docs/cli.md`). With `--json`,
/// the command's stdout goes to stderr and stdout gets one JSON document at the end: the job's
/// record (`{"job": {...}, "output_tail": "..."}`), or an error.
pub async fn run(context: &Context, args: RunArgs) -> anyhow::Result<u8> {
    let mut record = Record::default();
    let code = run_job(context, args, &mut record).await?;
    if context.json {
        let detail = match (record.detail, record.job_id) {
            (Some(detail), _) => Some(detail),
            (None, Some(job_id)) => tokio::time::timeout(FINISH_BOUND, context.client.job(&job_id))
                .await
                .ok()
                .and_then(Result::ok),
            (None, None) => None,
        };
        if let Some(detail) = detail {
            output::print_json(&detail)?;
        }
    }
    Ok(code)
}

async fn run_job(context: &Context, args: RunArgs, record: &mut Record) -> anyhow::Result<u8> {
    // Where the command could outlive its lease (not Linux), refuse before any job or lease.
    if let Err(error) = supervise::available() {
        return Ok(context.usage_error("baton run", &error.to_string()));
    }
    let locks = args.locks();
    if locks.len() > 1 {
        return crate::commands::run_set::run_set(context, args, locks).await;
    }
    let policy = args.policy();
    let lock = locks
        .into_iter()
        .next()
        .unwrap_or_else(|| args.name.clone());
    let timing = match LeaseTiming::new(args.ttl, args.grace) {
        Ok(timing) => timing,
        Err(message) => return Ok(context.usage_error("baton run", &message)),
    };
    let (ttl, grace) = (timing.ttl, timing.grace);
    let request = CreateJobRequest {
        value: args.value.clone(),
        mode: args.shared.then_some(baton_client::proto::LockMode::Shared),
        name: args.name.clone(),
        lock: Some(lock.clone()),
        capacity: args.capacity,
        policy,
        owner: args.owner.clone().unwrap_or_else(default_owner),
        host: Some(gethostname::gethostname().to_string_lossy().into_owned()),
        command: args.command.clone(),
        ttl_ms: Some(millis(ttl)),
        // No long-poll here: all waiting happens below, where signals are listened for.
        wait_ms: Some(0),
        request_id: None,
        min_hold_ms: args.min_hold.map(millis),
        once_per_ms: args.once_per.map(millis),
        batch: None,
    };
    // Signals are watched from before the job exists, so Ctrl-C while waiting withdraws it.
    let mut signals = Signals::new()?;
    let waiting_since = Instant::now();
    let mut start = match context.client.create_job(&request).await {
        Ok(start) => start,
        // `--fail` on a busy lock: the server recorded the job skipped and answered 409 with
        // the holders.
        Err(baton_client::Error::Busy { holders, message }) if policy == Policy::Fail => {
            let held_by = describe_holders(context, &holders).await;
            eprintln!("baton run: {} not run: {message}{held_by}", args.name);
            if context.json {
                let code = exit::TEMPORARY_FAILURE;
                output::print_json_error("busy", &message, code, Some(&holders));
            }
            return Ok(exit::TEMPORARY_FAILURE);
        }
        Err(error) => return Err(error.into()),
    };
    let job_id = start.job.id.clone();
    record.job_id = Some(job_id.clone());

    // Wait for the lock, or learn that the job will not run.
    let mut waited = false;
    let granted = loop {
        match start.job.state {
            JobState::Running => match start.lease.take() {
                Some(granted) => break granted,
                None => anyhow::bail!("the server said the job runs but gave no lease"),
            },
            JobState::Skipped => {
                let reason = start.job.reason.clone().unwrap_or_else(|| "busy".into());
                let held_by = match context.client.lock_info(&lock).await {
                    Ok(info) => describe_holders(context, &info.holders).await,
                    Err(_) => String::new(),
                };
                if policy == Policy::Fail {
                    eprintln!(
                        "baton run: {} not run: {reason} (job {job_id}){held_by}",
                        args.name
                    );
                    return Ok(exit::TEMPORARY_FAILURE);
                }
                eprintln!(
                    "baton run: {} skipped: {reason} (job {job_id}){held_by}",
                    args.name
                );
                return Ok(exit::SUCCESS);
            }
            JobState::Coalesced => {
                let into = start.job.coalesced_into.clone().unwrap_or_default();
                eprintln!(
                    "baton run: {} coalesced into the pending run {into} (job {job_id})",
                    args.name
                );
                return Ok(exit::SUCCESS);
            }
            JobState::Waiting => {}
            other => anyhow::bail!("the job is {} before it ran", other.as_str()),
        }
        let Some(ticket) = start.ticket.clone() else {
            anyhow::bail!("the server said the job waits but gave no ticket");
        };
        let remaining = match args.wait_limit() {
            Some(limit) => limit.saturating_sub(waiting_since.elapsed()),
            None => LONG_POLL,
        };
        if remaining.is_zero() {
            give_up(
                context,
                &job_id,
                &ticket.id,
                "timed out waiting for the lock",
            )
            .await;
            eprintln!(
                "baton run: {} timed out waiting for {lock} (job {job_id})",
                args.name
            );
            return Ok(exit::TEMPORARY_FAILURE);
        }
        waited = true;
        tokio::select! {
            answer = context.client.wait_job(&job_id, &ticket.id, remaining.min(LONG_POLL)) => {
                match answer {
                    Ok(answer) => start = answer,
                    // `baton cancel` took the job out of the queue: its ticket is cancelled.
                    Err(error) => match context.client.job(&job_id).await {
                        Ok(detail) if detail.job.state == JobState::Cancelled => {
                            let reason = detail.job.reason.unwrap_or_default();
                            eprintln!("baton run: {} cancelled: {reason} (job {job_id})", args.name);
                            return Ok(exit::CANCELLED);
                        }
                        _ => return Err(error.into()),
                    },
                }
            }
            signal = signals.next() => {
                give_up(context, &job_id, &ticket.id, &format!("signal {signal} while waiting")).await;
                return Ok(128 + signal as u8);
            }
        }
    };
    // A grant that arrived during a long-poll counts from when that poll was sent, possibly
    // long before the grant: confirm it with a renewal so the deadline starts from a request
    // sent now, whatever the wait was.
    let granted = if waited {
        match renew_after_wait(&context.client, &job_id, &granted, timing).await {
            Ok(renewed) => renewed,
            Err(cause) => {
                let reason = format!("the lease was lost before the command started: {cause}");
                let report =
                    finish_request(&granted.lease.id, JobState::Lost, None, reason.clone(), "");
                let _ = context.client.finish_job(&job_id, &report).await;
                eprintln!("baton run: {}: {reason} (job {job_id})", args.name);
                return Ok(exit::LEASE_LOST);
            }
        }
    } else {
        granted
    };
    drop(signals);

    let lease = granted.lease.clone();
    eprintln!(
        "baton run: {} holds {lock} (token {}, job {job_id})",
        args.name, lease.token
    );
    let mut spec = Spec {
        grace,
        tail_bytes: args.output_max as usize,
        lease_deadline: Some(timing.deadline_of(&granted).into_std()),
        ..Spec::new(args.command.iter().map(OsString::from))
    }
    .env("BATON_FENCING_TOKEN", lease.token.to_string())
    .env("BATON_LEASE_ID", &lease.id)
    .env("BATON_LOCK", &lock)
    .env("BATON_JOB_ID", &job_id);
    if context.json {
        // stdout carries the job's record alone.
        spec.stdout = Box::new(std::io::stderr());
    }
    // The output also goes to the server as it comes (`baton logs -f`, `baton job ID`).
    let feed = OutputFeed::new();
    spec.stdout = feed.tee(std::mem::replace(
        &mut spec.stdout,
        Box::new(std::io::sink()),
    ));
    spec.stderr = feed.tee(std::mem::replace(
        &mut spec.stderr,
        Box::new(std::io::sink()),
    ));
    let mut supervisor = match Supervisor::spawn(spec) {
        Ok(supervisor) => supervisor,
        Err(error) => {
            let report = finish_request(&lease.id, JobState::Failed, None, error.to_string(), "");
            let _ = context.client.finish_job(&job_id, &report).await;
            return Err(error.into());
        }
    };

    // The lease keeper: renews, and stops the tree in time when it cannot.
    let control = supervisor.control();
    let cause: Arc<Mutex<Option<StopCause>>> = Arc::new(Mutex::new(None));
    let streamer = {
        let cause = Arc::clone(&cause);
        OutputStreamer::start(
            context.client.clone(),
            job_id.clone(),
            lease.id.clone(),
            feed,
            control.clone(),
            grace,
            move |why| set_cause(&cause, StopCause::of(why)),
        )
    };
    let heartbeat = {
        let cause = Arc::clone(&cause);
        tokio::spawn(keep_lease(
            context.client.clone(),
            job_id.clone(),
            granted.clone(),
            timing,
            control.clone(),
            move |why| set_cause(&cause, StopCause::of(why)),
        ))
    };

    let outcome = match args.timeout {
        Some(limit) => {
            let limit_at = Instant::now() + limit;
            tokio::select! {
                outcome = supervisor.wait() => outcome,
                () = tokio::time::sleep_until(limit_at) => {
                    set_cause(&cause, StopCause::TimedOut);
                    supervisor.stop(grace).await
                }
            }
        }
        None => supervisor.wait().await,
    };
    heartbeat.abort();
    // The last of the output, for followers; the finish report carries the tail anyway.
    streamer.finish().await;
    let outcome = outcome?;
    if outcome.deadline_passed {
        // The guardian stopped the tree: `baton run` could not renew in time (it was paused).
        set_cause(&cause, StopCause::Deadline);
    }
    let stop_cause = cause.lock().ok().and_then(|cause| *cause);

    let code = outcome.end.exit_code();
    let (state, reason, exit_code) = match (stop_cause, &outcome.end) {
        (Some(StopCause::LeaseLost { revoked: true }), _) => (
            JobState::Lost,
            "the lease was revoked; the command was stopped".to_owned(),
            exit::LEASE_LOST,
        ),
        (Some(StopCause::LeaseLost { revoked: false }), _) => (
            JobState::Lost,
            "the lease was lost; the command was stopped".to_owned(),
            exit::LEASE_LOST,
        ),
        (Some(StopCause::Deadline), _) => (
            JobState::Lost,
            "the lease could not be renewed before its deadline; the command was stopped"
                .to_owned(),
            exit::LEASE_LOST,
        ),
        (Some(StopCause::Replaced), _) => (
            JobState::Cancelled,
            "replaced by a newer run; the command was stopped".to_owned(),
            exit::REPLACED,
        ),
        (Some(StopCause::Cancelled), _) => (
            JobState::Cancelled,
            "cancelled on request (baton cancel); the command was stopped".to_owned(),
            exit::CANCELLED,
        ),
        (Some(StopCause::TimedOut), _) => (
            JobState::TimedOut,
            format!(
                "ran longer than --timeout {}",
                crate::output::duration(args.timeout.unwrap_or_default())
            ),
            exit::TIMED_OUT,
        ),
        (None, _) if !outcome.forwarded.is_empty() => (
            JobState::Cancelled,
            format!(
                "signal {} forwarded to the command",
                outcome.forwarded[0].signo()
            ),
            code,
        ),
        (None, End::Exited(0)) => (JobState::Succeeded, String::new(), code),
        (None, End::Exited(status)) => (JobState::Failed, format!("exit code {status}"), code),
        (None, End::Signaled(signal)) => {
            (JobState::Failed, format!("killed by signal {signal}"), code)
        }
        (None, End::SpawnFailed(error)) => {
            eprintln!(
                "baton run: cannot start {:?}: {error}",
                args.command.first().cloned().unwrap_or_default()
            );
            (
                JobState::Failed,
                format!("cannot start the command: {error}"),
                code,
            )
        }
    };
    let process_code = match &outcome.end {
        End::Exited(status) => Some(*status),
        End::Signaled(signal) => Some(128 + signal),
        End::SpawnFailed(_) => Some(i32::from(code)),
    };
    let report = finish_request(
        &lease.id,
        state,
        process_code,
        reason.clone(),
        &outcome.tail_text(),
    );
    match tokio::time::timeout(FINISH_BOUND, context.client.finish_job(&job_id, &report)).await {
        Ok(Ok(detail)) => record.detail = Some(detail),
        // The server already ended the lease (and so marked the job lost); the report of a lost
        // job is still taken, so anything else is worth a warning only.
        Ok(Err(error)) => eprintln!(
            "baton run: could not record the end of job {job_id} ({}): {error}",
            state.as_str()
        ),
        Err(_) => eprintln!(
            "baton run: could not record the end of job {job_id} ({}) within {}: no answer \
             from the server; it will record the job lost when the lease expires",
            state.as_str(),
            output::duration(FINISH_BOUND),
        ),
    }
    if state == JobState::Lost {
        eprintln!(
            "baton run: {} lost {lock}: {reason} (job {job_id})",
            args.name
        );
        if let Some(hook) = &args.on_lost {
            run_hook(hook, &job_id, &lock, &reason).await;
        }
    } else if stop_cause.is_some() {
        eprintln!("baton run: {}: {reason} (job {job_id})", args.name);
    }
    Ok(exit_code)
}

fn finish_request(
    lease_id: &str,
    state: JobState,
    exit_code: Option<i32>,
    reason: String,
    output: &str,
) -> FinishJobRequest {
    FinishJobRequest {
        lease_id: Some(lease_id.to_owned()),
        ticket_id: None,
        state,
        exit_code,
        reason: (!reason.is_empty()).then_some(reason),
        output_tail: (!output.is_empty()).then(|| output.to_owned()),
    }
}

/// `; held by OWNER on HOST since 2024-05-01 12:00:03Z (3m ago), job J, token N` for each
/// holder (the host from the holder's job record, when it is a job); empty without holders.
async fn describe_holders(context: &Context, holders: &[Holder]) -> String {
    let now = jiff::Timestamp::now();
    let mut text = String::new();
    for holder in holders {
        let host = match &holder.job {
            Some(job) => context
                .client
                .job(job)
                .await
                .ok()
                .and_then(|detail| detail.job.host),
            None => None,
        };
        text.push_str(&format!("; held by {}", holder.owner));
        if let Some(host) = host {
            text.push_str(&format!(" on {host}"));
        }
        text.push_str(&format!(
            " since {} ({})",
            output::absolute(holder.since),
            output::relative(holder.since, now)
        ));
        if let Some(job) = &holder.job {
            text.push_str(&format!(", job {job}"));
        }
        text.push_str(&format!(", token {}", holder.token));
    }
    text
}

/// Gives up waiting: the job is recorded cancelled and leaves the queue.
async fn give_up(context: &Context, job_id: &str, ticket_id: &str, reason: &str) {
    let report = FinishJobRequest {
        lease_id: None,
        ticket_id: Some(ticket_id.to_owned()),
        state: JobState::Cancelled,
        exit_code: None,
        reason: Some(reason.to_owned()),
        output_tail: None,
    };
    match tokio::time::timeout(FINISH_BOUND, context.client.finish_job(job_id, &report)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            eprintln!("baton run: could not record job {job_id} as cancelled: {error}");
        }
        Err(_) => eprintln!(
            "baton run: could not record job {job_id} as cancelled within {}: no answer from \
             the server; its ticket lapses",
            output::duration(FINISH_BOUND)
        ),
    }
}

/// Runs the `--on-lost` hook through `sh -c`, with the job's details in its environment, for
/// at most a minute.
async fn run_hook(hook: &str, job_id: &str, lock: &str, reason: &str) {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(hook)
        .env("BATON_JOB_ID", job_id)
        .env("BATON_LOCK", lock)
        .env("BATON_LOST_REASON", reason)
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(Duration::from_secs(60), child).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => eprintln!("baton run: the --on-lost hook failed ({status})"),
        Ok(Err(error)) => eprintln!("baton run: cannot run the --on-lost hook: {error}"),
        Err(_) => eprintln!("baton run: the --on-lost hook ran over a minute and was stopped"),
    }
}

impl StopCause {
    fn of(why: KeeperStop) -> StopCause {
        match why {
            KeeperStop::LeaseLost { revoked } => StopCause::LeaseLost { revoked },
            KeeperStop::Deadline => StopCause::Deadline,
            KeeperStop::Replaced => StopCause::Replaced,
            KeeperStop::Cancelled => StopCause::Cancelled,
        }
    }
}

fn set_cause(cause: &Mutex<Option<StopCause>>, value: StopCause) {
    if let Ok(mut cause) = cause.lock() {
        cause.get_or_insert(value);
    }
}
