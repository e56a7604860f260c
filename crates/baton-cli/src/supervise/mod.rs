//! Local supervision of the command that `baton run` runs under a lease: start it, pass its
//! output through, stop its whole process tree on demand within a bounded time, and make sure it
//! never outlives `baton run` itself (PRODUCT.md G6). Nothing here speaks HTTP; the `run` command
//! drives a [`Supervisor`] from its lease-renewal loop.
//!
//! # Design (Linux)
//!
//! ```text
//! baton run ──(stdout, stderr, status pipes)──▶ baton __guard  (leader of a new process group)
//!   subreaper                                      subreaper
//!                                                  └── CMD (same group) ── sh -c '… &' …
//! ```
//!
//! * **Process group.** `baton run` starts a *guardian*: a re-exec of its own binary
//!   (`/proc/self/exe __guard …`, see [`guard_main`] for the argv contract) in a new process
//!   group (`process_group(0)`), so the guardian's pid is the job's process-group id. The
//!   guardian starts the real command (no shell) in that same group; whatever the command starts
//!   (`sh -c 'sleep 1000 & …'`) stays in it unless it calls `setsid`/`setpgid` itself. Every
//!   signal `baton run` sends goes to the whole group with `killpg`.
//! * **Stopping** ([`Supervisor::stop`], [`Control::stop`]): SIGTERM to the group, then SIGKILL to
//!   the group if the guardian has not exited `grace` later. The guardian ignores TERM, INT,
//!   HUP, QUIT, USR1 and USR2 (it has handlers, not SIG_IGN, so the command still starts with
//!   default dispositions and an empty signal mask), so it outlives the command, collects its exit status and then empties the group: it
//!   TERMs what is left, waits up to its own grace, then SIGKILLs its remaining descendants one by
//!   one. It exits only when it has no descendants left, so "guardian exited" means "tree gone".
//! * **Kill -9 of `baton run`.** Nothing in a SIGKILLed process runs, so the guardian watches
//!   for it: a write end of a pipe reports `POLLERR` as soon as its read end is closed
//!   everywhere (poll(2)), and only `baton run` holds the read ends of the guardian's stdout and
//!   of its status pipe (they are close-on-exec). A guardian thread blocks in `poll` on both; on
//!   `POLLERR` it TERMs the group, waits [`Spec::grace`], then SIGKILLs the group, itself
//!   included: the tree is gone within that grace of `baton run`'s death. No
//!   race as with `PR_SET_PDEATHSIG`: if `baton run` died before the guardian started watching,
//!   the first `poll` returns at once (and the status pipe cannot even be opened). Nor does it
//!   fire when the thread that spawned the guardian exits, as PDEATHSIG does.
//! * **A paused `baton run`.** SIGSTOP (or Ctrl-Z, which stops `baton run`'s process group,
//!   not the job's) freezes `baton run` and its lease keeper, but not the guardian. So the
//!   guardian holds the lease's local deadline itself ([`Spec::lease_deadline`]), on
//!   `CLOCK_MONOTONIC`, which both processes read; `baton run` sends it each new deadline on a
//!   pipe of its own after every successful renewal ([`Control::set_deadline`]). When
//!   `deadline - grace` comes without an update, the guardian writes `deadline` on the status
//!   pipe, TERMs the group and SIGKILLs it at the deadline, whatever `baton run` is doing.
//!   `baton run` starts its own stop a stop slack earlier, so normally the guardian never has
//!   to.
//! * **Signals wait for the command.** A signal sent to the group before the command has
//!   joined it would never reach the command, so the guardian writes `started PID` on the
//!   status pipe once the command runs, and until then `baton run` holds back SIGTERM and
//!   forwarded signals (not SIGKILL: a stop's deadline holds whether the command started or not).
//! * **Exit status.** The guardian writes how the command ended (`exit N`, `signal N`, or
//!   `spawn ERRNO` when it could not be started) on the status pipe as soon as it reaps it, then
//!   exits with the shell's encoding (N, 128+N, 127/126). So [`End`] is exact even when the
//!   guardian is SIGKILLed during the cleanup afterwards.
//! * **Reaping.** PID 1 in some containers (and in our sandbox) never reaps, so both the
//!   guardian and `baton run` become child subreapers (`PR_SET_CHILD_SUBREAPER`): orphans in the
//!   job are re-parented to the guardian, which reaps them (by pid, found in `/proc`, never with
//!   `waitpid(-1)`, so no status is stolen), or to `baton run` if the guardian died, which reaps
//!   the ones in the job's group. `baton run` observes the guardian's exit with
//!   `waitid(WNOWAIT)` and reaps it last: while the guardian is unreaped its pid cannot be
//!   reused, so no `killpg` can ever hit an unrelated group.
//! * **Signals.** With [`Spec::forward_signals`], SIGINT, SIGTERM and SIGHUP received by
//!   `baton run` are sent to the job's group (the terminal's Ctrl-C reaches only `baton run`,
//!   whose process group is the foreground one) and reported in [`Outcome::forwarded`].
//! * **Output.** stdout and stderr are two pipes, each copied by its own thread to `baton run`'s
//!   own stdout/stderr as the bytes arrive (no line buffering), and into one bounded tail shared
//!   by both streams, in arrival order.
//!
//! Limits: a process that leaves the job's group (`setsid`, `setpgid`) misses the group's
//! signals. It stays a descendant of the guardian (orphans are re-parented to it), so the
//! guardian still SIGKILLs it when it empties the tree after the command exits; but when the
//! guardian itself is SIGKILLed (a stop whose grace ran out, or `kill -9` of `baton run`
//! followed by the grace) such a process may survive. A process in uninterruptible sleep
//! (D state) dies only when the kernel lets it. The job's process group is not the terminal's
//! foreground group, so a command that reads from a terminal is stopped by SIGTTIN (cron jobs
//! and scripts are not affected).
//!
//! Other systems (Windows, macOS, the BSDs): [`available`] and [`Supervisor::spawn`] return
//! [`Error::Unsupported`], and `baton run` and `baton parallel` refuse before they create a job
//! or take a lock. The design above rests on Linux alone: `PR_SET_CHILD_SUBREAPER`, `/proc` to
//! find and reap descendants, `/proc/self/exe`, `CLOCK_MONOTONIC` shared with the guardian, and
//! process groups with `killpg`. Windows has none of them; its counterpart (a job object with
//! `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`) is not implemented, so no child runs there without
//! the protection G6 promises.

// Elsewhere than Linux only the refusing stub (`unsupported.rs`) is built: the shared types of
// the Linux supervisor are then not used, and need not be.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

mod tail;

#[cfg(target_os = "linux")]
mod clock;
#[cfg(target_os = "linux")]
mod guard;
#[cfg(target_os = "linux")]
mod procfs;
#[cfg(target_os = "linux")]
mod supervisor;
#[cfg(not(target_os = "linux"))]
mod unsupported;

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

#[cfg(target_os = "linux")]
pub use guard::guard_main;
#[cfg(target_os = "linux")]
#[allow(unused_imports)]
// Supervision API that `run` does not use (yet); tests/supervise_process.rs does.
pub use supervisor::{Control, Supervisor};
#[cfg(not(target_os = "linux"))]
#[allow(unused_imports)]
// Supervision API that `run` does not use (yet); tests/supervise_process.rs does.
pub use unsupported::{Control, Supervisor, guard_main};

/// Whether this system can supervise a command: `Ok` on Linux, [`Error::Unsupported`]
/// elsewhere. `baton run` and `baton parallel` ask first, before they create a job or take a
/// lock, so that where they cannot keep a command from outliving its lease they refuse without
/// running anything.
pub fn available() -> Result<(), Error> {
    if cfg!(target_os = "linux") {
        Ok(())
    } else {
        Err(Error::Unsupported)
    }
}

/// The hidden subcommand that runs the guardian: `baton __guard --grace-ms MS --status-fd FD --
/// CMD [ARG...]`. Only [`Supervisor`] starts it; `main` must dispatch it before anything else
/// (before clap, before starting a tokio runtime).
pub const GUARD_SUBCOMMAND: &str = "__guard";

/// How much later than its `grace` a stop can finish, at most, once the tree is SIGKILLed:
/// reaping the guardian and the orphans, and draining the output pipes. The lease keeper starts a
/// stop at `local deadline - grace - slack` at the latest, where the slack is this for long
/// ttls and a tenth of the ttl for short ones (`commands::keeper::LeaseTiming`): the tree is
/// SIGKILLed when the grace ends, and the slack only has to cover a timer that fires late.
pub const STOP_SLACK: Duration = Duration::from_secs(1);

/// Errors of the supervisor itself (not of the command it runs: see [`End`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line to run is empty.
    #[error("no command to run")]
    EmptyCommand,
    /// Supervising a command is implemented for Linux only.
    #[error(
        "supervising a command needs Linux: only there can baton make sure that the command's \
         process tree is gone before its lease ends and never outlives baton; nothing was run \
         and no lock was taken (here, hold a lock with `baton acquire`, `baton renew` and \
         `baton release`, or the PowerShell module)"
    )]
    Unsupported,
    /// The guardian process (a re-exec of baton) could not be started.
    #[error("cannot start the guardian process {program:?}: {source}")]
    StartGuard {
        /// The program that was run as the guardian.
        program: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// Setting up pipes, signal handlers or process attributes failed.
    #[error("cannot supervise the command: {what}: {source}")]
    Setup {
        /// What was being set up.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The guardian exited without ever reporting on the command: it failed before starting it.
    #[error("the guardian process failed before starting the command (exit status {status})")]
    GuardFailed {
        /// The guardian's own exit status, as the shell would show it.
        status: i32,
    },
    /// [`Supervisor::wait`] was called again after it returned the outcome.
    #[error("the supervised command has already been waited for")]
    Finished,
}

/// Where the guardian comes from: a program and the arguments that put it in guardian mode,
/// followed by the guardian's own arguments. The default re-executes the running binary.
#[derive(Debug, Clone)]
pub struct GuardLauncher {
    /// The program to execute.
    pub program: PathBuf,
    /// The name it sees as `argv[0]` (and `ps` shows), when not `program`.
    pub arg0: Option<OsString>,
    /// Arguments before the guardian's own (`__guard` for baton).
    pub args: Vec<OsString>,
    /// Extra environment for the guardian only (the command inherits it too).
    pub env: Vec<(OsString, OsString)>,
}

impl GuardLauncher {
    /// The running `baton` binary in guardian mode. `/proc/self/exe` names the very file this
    /// process runs, even after an upgrade replaced the binary on disk.
    pub fn current_exe() -> Self {
        Self {
            program: PathBuf::from("/proc/self/exe"),
            arg0: Some(OsString::from("baton")),
            args: vec![OsString::from(GUARD_SUBCOMMAND)],
            env: Vec::new(),
        }
    }
}

/// What to run and how.
pub struct Spec {
    /// The command and its arguments, run without a shell. `argv[0]` is looked up in `PATH`.
    pub argv: Vec<OsString>,
    /// Extra environment variables for the command (`BATON_FENCING_TOKEN`, `BATON_LEASE_ID`,
    /// `BATON_LOCK`, `BATON_JOB_ID`).
    pub env: Vec<(OsString, OsString)>,
    /// How many bytes of output (stdout and stderr together) to keep: the last ones.
    pub tail_bytes: usize,
    /// The guardian's grace between SIGTERM and SIGKILL when `baton run` dies, and for processes
    /// left behind after the command exits.
    pub grace: Duration,
    /// Forward SIGINT, SIGTERM and SIGHUP received by this process to the command's group.
    pub forward_signals: bool,
    /// Where the command's stdout goes as it arrives (default: this process's stdout).
    pub stdout: Box<dyn Write + Send>,
    /// Where the command's stderr goes as it arrives (default: this process's stderr).
    pub stderr: Box<dyn Write + Send>,
    /// The command writes to this process's own stdout and stderr (a terminal, say) instead of
    /// pipes: nothing is copied, [`Spec::stdout`] and [`Spec::stderr`] are unused and the tail
    /// stays empty (`baton parallel --sync`).
    pub inherit_output: bool,
    /// How to start the guardian.
    pub launcher: GuardLauncher,
    /// The lease's local deadline, when the command runs under a lease: the guardian holds it
    /// too, and stops the tree itself (TERM at `deadline - grace`, KILL at `deadline`) unless
    /// [`Control::set_deadline`] moves it in time, whatever state `baton run` is in (paused by
    /// SIGSTOP or Ctrl-Z, starved, stuck). `None`: no deadline.
    pub lease_deadline: Option<Instant>,
}

impl Spec {
    /// A spec with the defaults: 64 KiB of tail, 10 s of grace, signals forwarded, output to
    /// this process's stdout and stderr, this binary as the guardian.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            tail_bytes: 64 * 1024,
            grace: Duration::from_secs(10),
            forward_signals: true,
            stdout: Box::new(io::stdout()),
            stderr: Box::new(io::stderr()),
            inherit_output: false,
            launcher: GuardLauncher::current_exe(),
            lease_deadline: None,
        }
    }

    /// Adds an environment variable for the command.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// A signal that [`Spec::forward_signals`] passes on to the command's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
    /// SIGHUP.
    Hangup,
}

impl Forwarded {
    /// The signal's number (2, 15, 1 on Linux).
    pub fn signo(self) -> i32 {
        match self {
            Self::Interrupt => 2,
            Self::Terminate => 15,
            Self::Hangup => 1,
        }
    }
}

/// How the command ended.
#[derive(Debug)]
pub enum End {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal (number). When the whole tree had to be SIGKILLed before
    /// the command's status was known, this is 9.
    Signaled(i32),
    /// It could not be started (not found, not executable...).
    SpawnFailed(io::Error),
}

impl End {
    /// The exit code a shell would report: the code, 128 + the signal, 127 when the command
    /// was not found and 126 when it could not be executed.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Exited(code) => u8::try_from(*code & 0xff).unwrap_or(u8::MAX),
            Self::Signaled(signo) => u8::try_from((128 + signo).min(255)).unwrap_or(u8::MAX),
            Self::SpawnFailed(error) if error.kind() == io::ErrorKind::NotFound => 127,
            Self::SpawnFailed(_) => 126,
        }
    }
}

/// Why the supervisor stopped the tree, when it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// The grace ran out and the group was SIGKILLed.
    pub killed: bool,
}

/// Everything [`Supervisor::wait`] reports once the tree is gone.
#[derive(Debug)]
pub struct Outcome {
    /// How the command ended.
    pub end: End,
    /// The last [`Spec::tail_bytes`] bytes of output, stdout and stderr in arrival order.
    pub tail: Vec<u8>,
    /// How many bytes of output there were in all.
    pub output_bytes: u64,
    /// When the guardian was started.
    #[allow(dead_code)]
    // Supervision API that `run` does not use (yet); tests/supervise_process.rs does.
    pub started: Instant,
    /// When the tree was found gone.
    #[allow(dead_code)]
    // Supervision API that `run` does not use (yet); tests/supervise_process.rs does.
    pub ended: Instant,
    /// [`Outcome::started`] on the wall clock, for job records.
    #[allow(dead_code)]
    // Supervision API that `run` does not use (yet); tests/supervise_process.rs does.
    pub started_at: SystemTime,
    /// [`Outcome::ended`] on the wall clock.
    #[allow(dead_code)]
    // Supervision API that `run` does not use (yet); tests/supervise_process.rs does.
    pub ended_at: SystemTime,
    /// Signals forwarded to the command, in order.
    pub forwarded: Vec<Forwarded>,
    /// The guardian stopped the tree itself because the lease's deadline came without an
    /// update from [`Control::set_deadline`] (`baton run` was paused or stuck).
    pub deadline_passed: bool,
    /// Set when a stop was requested (lease lost, deadline, [`Control::stop`]).
    #[allow(dead_code)]
    // Supervision API that `run` does not use (yet); tests/supervise_process.rs does.
    pub stopped: Option<Stopped>,
}

impl Outcome {
    /// The tail as text: when the tail was cut inside a UTF-8 sequence its first bytes are
    /// dropped, and any other invalid byte becomes U+FFFD.
    pub fn tail_text(&self) -> String {
        tail::text(&self.tail, self.output_bytes > self.tail.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supervision_is_available_on_linux_only() {
        assert_eq!(available().is_ok(), cfg!(target_os = "linux"));
        let refusal = Error::Unsupported.to_string();
        assert!(refusal.contains("nothing was run and no lock was taken"));
    }

    #[test]
    fn the_docs_quote_the_refusal_word_for_word() {
        let docs = include_str!("../../../../docs/cli.md");
        let refusal = format!("baton run: {}", Error::Unsupported);
        assert!(
            docs.contains(&refusal),
            "docs/cli.md does not show {refusal:?}"
        );
    }
}
