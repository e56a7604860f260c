//! `baton run a,b -- CMD` (or repeated `--lock`): runs a command while holding several locks
//! at once, and never lets it outlive any of their leases (G6).
//!
//! The locks are acquired together through `POST /v1/locksets/acquire`: all granted in one
//! step or none, queued in one fair order with every other request (so sets never deadlock
//! however they overlap). Then, as for one lock, the command runs under the supervisor; the
//! keeper renews every lease at a third of the TTL and stops the tree before the earliest
//! local deadline of them all when any lease is lost or cannot be renewed; at the end every
//! lease is released.
//!
//! The command's environment names every lease: `BATON_LOCK`, `BATON_FENCING_TOKEN` and
//! `BATON_LEASE_ID` for the first lock (as for one lock), and `BATON_LOCKS` (`a,b`) and
//! `BATON_FENCING_TOKENS` (`a=17,b=18`) for all of them.
//!
//! A run over several locks keeps no job record (jobs name one lock), so only the policies that
//! need none apply: wait (the default, with an optional limit), `--skip` and `--fail` (one try,
//! nothing queued). `--replace`, `--coalesce`, `--min-hold`, `--once-per`, `--capacity` and
//! `--on-lost` are refused with a usage error (64) before anything is taken.

use std::ffi::OsString;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_client::proto::{LockMode, Policy};
use baton_client::{Error, Granted, LockOptions, default_owner};

use crate::args::RunArgs;
use crate::commands::Context;
use crate::commands::keeper::{KeeperStop, LeaseTiming, Signals, keep_leases};
use crate::exit;
use crate::supervise::{self, End, Spec, Supervisor};

/// The flags that need a job record, which a run over several locks does not keep.
fn unsupported(args: &RunArgs) -> Option<&'static str> {
    [
        (args.replace, "--replace"),
        (args.coalesce, "--coalesce"),
        (args.min_hold.is_some(), "--min-hold"),
        (args.once_per.is_some(), "--once-per"),
        (args.capacity.is_some(), "--capacity"),
        (args.on_lost.is_some(), "--on-lost"),
    ]
    .into_iter()
    .find_map(|(given, flag)| given.then_some(flag))
}

/// `BATON_FENCING_TOKENS`: `lock=token` for every lease, comma-separated, in lock order.
pub fn fencing_tokens(leases: &[Granted]) -> String {
    leases
        .iter()
        .map(|granted| format!("{}={}", granted.lease.lock, granted.lease.token))
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs the command under every lock of `locks`. Returns the exit code (see `docs/cli.md`).
pub async fn run_set(context: &Context, args: RunArgs, locks: Vec<String>) -> anyhow::Result<u8> {
    if let Err(error) = supervise::available() {
        return Ok(context.usage_error("baton run", &error.to_string()));
    }
    if let Some(flag) = unsupported(&args) {
        return Ok(context.usage_error(
            "baton run",
            &format!("{flag} needs a job record, which a run over several locks does not keep"),
        ));
    }
    for lock in &locks {
        baton_client::validate_lock_name(lock)?;
    }
    let timing = match LeaseTiming::new(args.ttl, args.grace) {
        Ok(timing) => timing,
        Err(message) => return Ok(context.usage_error("baton run", &message)),
    };
    let policy = args.policy();
    let options = LockOptions {
        owner: args.owner.clone().unwrap_or_else(default_owner),
        ttl: Some(timing.ttl),
        wait: match policy {
            Policy::Skip | Policy::Fail => Some(Duration::ZERO),
            _ => args.wait_limit(),
        },
        value: args.value.clone(),
        mode: if args.shared {
            LockMode::Shared
        } else {
            LockMode::Exclusive
        },
        ..LockOptions::default()
    };
    let all = locks.join(",");
    let mut signals = Signals::new()?;
    let waited = context
        .client
        .wait_for_lease_set_until(&locks, &options, signals.next())
        .await;
    let leases = match waited {
        Ok(Ok(leases)) => leases,
        Ok(Err(signal)) => {
            eprintln!("baton run: signal {signal} while waiting for {all}; left the queues");
            return Ok(128 + u8::try_from(signal).unwrap_or(0));
        }
        Err(Error::Busy { message, .. }) => {
            eprintln!("baton run: {} not run: {message}", args.name);
            return Ok(if policy == Policy::Skip {
                exit::SUCCESS
            } else {
                exit::TEMPORARY_FAILURE
            });
        }
        Err(Error::TimedOut { .. }) => {
            eprintln!("baton run: {} timed out waiting for {all}", args.name);
            return Ok(exit::TEMPORARY_FAILURE);
        }
        Err(error) => return Err(error.into()),
    };
    drop(signals);
    let code = supervise_under(context, &args, &leases, timing).await;
    context.client.release_all(&leases).await;
    code
}

/// Runs the command while `leases` are kept; returns the exit code.
async fn supervise_under(
    context: &Context,
    args: &RunArgs,
    leases: &[Granted],
    timing: LeaseTiming,
) -> anyhow::Result<u8> {
    let Some(first) = leases.first() else {
        anyhow::bail!("the server granted a lock set without leases");
    };
    let deadline = leases
        .iter()
        .map(|granted| timing.deadline_of(granted))
        .min()
        .unwrap_or_else(|| timing.deadline_of(first));
    let tokens = fencing_tokens(leases);
    eprintln!("baton run: {} holds {tokens}", args.name);
    let locks: Vec<&str> = leases
        .iter()
        .map(|granted| granted.lease.lock.as_str())
        .collect();
    let mut spec = Spec {
        grace: timing.grace,
        tail_bytes: args.output_max as usize,
        lease_deadline: Some(deadline.into_std()),
        ..Spec::new(args.command.iter().map(OsString::from))
    }
    .env("BATON_FENCING_TOKEN", first.lease.token.to_string())
    .env("BATON_LEASE_ID", &first.lease.id)
    .env("BATON_LOCK", &first.lease.lock)
    .env("BATON_LOCKS", locks.join(","))
    .env("BATON_FENCING_TOKENS", &tokens);
    if context.json {
        spec.stdout = Box::new(std::io::stderr());
    }
    let mut supervisor = Supervisor::spawn(spec)?;
    let control = supervisor.control();
    let cause: Arc<Mutex<Option<KeeperStop>>> = Arc::new(Mutex::new(None));
    let keeper = {
        let cause = Arc::clone(&cause);
        tokio::spawn(keep_leases(
            context.client.clone(),
            leases.to_vec(),
            timing,
            control,
            move |why| {
                if let Ok(mut cause) = cause.lock() {
                    cause.get_or_insert(why);
                }
            },
        ))
    };
    let mut timed_out = false;
    let outcome = match args.timeout {
        Some(limit) => {
            tokio::select! {
                outcome = supervisor.wait() => outcome,
                () = tokio::time::sleep(limit) => {
                    timed_out = true;
                    supervisor.stop(timing.grace).await
                }
            }
        }
        None => supervisor.wait().await,
    };
    keeper.abort();
    let outcome = outcome?;
    let stopped = cause.lock().ok().and_then(|cause| *cause);
    if stopped.is_some() || outcome.deadline_passed {
        eprintln!(
            "baton run: {} lost a lease of {}; the command was stopped",
            args.name,
            locks.join(",")
        );
        return Ok(exit::LEASE_LOST);
    }
    if timed_out {
        eprintln!("baton run: {} ran longer than --timeout", args.name);
        return Ok(exit::TIMED_OUT);
    }
    if let End::SpawnFailed(error) = &outcome.end {
        eprintln!(
            "baton run: cannot start {:?}: {error}",
            args.command.first().cloned().unwrap_or_default()
        );
    }
    Ok(outcome.end.exit_code())
}
