//! The guardian: `baton __guard --grace-ms MS --status-fd FD [--deadline-fd FD --deadline-ns NS]
//! -- CMD [ARG...]`, started by [`Supervisor`](super::Supervisor) as the leader of the job's
//! process group. It starts the command, reports how it ended on the status pipe, empties the
//! group before it exits, kills the group when `baton run` dies, and, given a lease deadline,
//! stops the group when that deadline comes without `baton run` moving it (see the module docs
//! of [`super`]).
//!
//! Everything here is synchronous: the guardian must keep working with no async runtime
//! running, and it only ever waits on one child, one poll and a few timers.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::stat::{SFlag, fstat};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::{Pid, getpgrp, getpid};
use tokio::signal::unix::{SignalKind, signal};

use super::{GUARD_SUBCOMMAND, clock, procfs};

/// The guardian's exit code when it fails itself (`EX_SOFTWARE`).
const FAILED: u8 = 70;
/// How often orphans re-parented to the guardian are reaped while the command runs.
const REAP_INTERVAL: Duration = Duration::from_millis(100);
/// How often the guardian looks for what is left while it empties the tree.
const CLEANUP_INTERVAL: Duration = Duration::from_millis(10);

/// The guardian's arguments.
#[derive(Debug, PartialEq, Eq)]
struct Args {
    /// SIGTERM-to-SIGKILL grace for leftovers and when `baton run` dies.
    grace: Duration,
    /// The inherited write end of the status pipe.
    status_fd: i32,
    /// The inherited read end of the deadline pipe, and the first deadline (nanoseconds of
    /// `CLOCK_MONOTONIC`), when the command runs under a lease.
    deadline: Option<(i32, u64)>,
    /// The command and its arguments.
    command: Vec<OsString>,
}

/// Runs the guardian with the arguments that follow `__guard` and returns its exit code: the
/// command's code, 128 + the signal that killed it, 127 (not found) or 126 (not executable)
/// when it could not be started, 70 when the guardian itself failed.
///
/// Call it first thing in `main`, before any thread or runtime exists.
pub fn guard_main<I>(args: I) -> u8
where
    I: IntoIterator<Item = OsString>,
{
    match run(args) {
        Ok(code) => code,
        Err(message) => {
            // stderr may be gone with `baton run`; nothing else can be told then.
            let _ = writeln!(io::stderr(), "baton {GUARD_SUBCOMMAND}: {message}");
            FAILED
        }
    }
}

/// Parses `--grace-ms MS --status-fd FD [--deadline-fd FD --deadline-ns NS] -- CMD [ARG...]`.
fn parse<I>(args: I) -> Result<Args, String>
where
    I: IntoIterator<Item = OsString>,
{
    let mut args = args.into_iter();
    let mut grace = None;
    let mut status_fd = None;
    let mut deadline_fd = None;
    let mut deadline_ns = None;
    loop {
        let Some(arg) = args.next() else {
            return Err("missing `-- CMD`".to_owned());
        };
        let flag = arg.to_string_lossy();
        if flag == "--" {
            break;
        }
        let value = args
            .next()
            .and_then(|value| value.into_string().ok())
            .ok_or_else(|| format!("{flag} needs a number"))?;
        match &*flag {
            "--grace-ms" => {
                let ms = value
                    .parse()
                    .map_err(|_| format!("bad --grace-ms {value}"))?;
                grace = Some(Duration::from_millis(ms));
            }
            "--status-fd" => {
                let fd = value
                    .parse()
                    .ok()
                    .filter(|fd| *fd > 2)
                    .ok_or_else(|| format!("bad --status-fd {value}"))?;
                status_fd = Some(fd);
            }
            "--deadline-fd" => {
                let fd = value
                    .parse()
                    .ok()
                    .filter(|fd| *fd > 2)
                    .ok_or_else(|| format!("bad --deadline-fd {value}"))?;
                deadline_fd = Some(fd);
            }
            "--deadline-ns" => {
                let ns = value
                    .parse()
                    .map_err(|_| format!("bad --deadline-ns {value}"))?;
                deadline_ns = Some(ns);
            }
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    let command: Vec<OsString> = args.collect();
    if command.is_empty() {
        return Err("no command after `--`".to_owned());
    }
    let deadline = match (deadline_fd, deadline_ns) {
        (Some(fd), Some(ns)) => Some((fd, ns)),
        (None, None) => None,
        _ => return Err("--deadline-fd and --deadline-ns go together".to_owned()),
    };
    Ok(Args {
        grace: grace.ok_or("missing --grace-ms")?,
        status_fd: status_fd.ok_or("missing --status-fd")?,
        deadline,
        command,
    })
}

/// The guardian proper.
fn run<I>(args: I) -> Result<u8, String>
where
    I: IntoIterator<Item = OsString>,
{
    let args = parse(args)?;
    let me = getpid();
    if getpgrp() != me {
        return Err("must lead its own process group; only `baton run` starts it".to_owned());
    }

    // Handlers, not SIG_IGN: the guardian outlives the signals sent to the job's group, and
    // exec resets handled signals to their defaults, so the command sees them as usual. The
    // SIGCHLD handler also undoes an inherited SIG_IGN, which would make children unwaitable.
    // A current-thread runtime starts no thread; it only owns the signal driver.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|error| format!("cannot set up signal handling: {error}"))?;
    let _handlers = {
        let _context = runtime.enter();
        [
            SignalKind::terminate(),
            SignalKind::interrupt(),
            SignalKind::hangup(),
            SignalKind::quit(),
            SignalKind::user_defined1(),
            SignalKind::user_defined2(),
            SignalKind::child(),
        ]
        .into_iter()
        .map(signal)
        .collect::<io::Result<Vec<_>>>()
        .map_err(|error| format!("cannot set up signal handling: {error}"))?
    };

    // Orphans of the job come to us to be reaped (the sandbox's PID 1 never reaps). Should this
    // fail, they go to `baton run`, which is a subreaper too.
    if let Err(error) = nix::sys::prctl::set_child_subreaper(true) {
        let _ = writeln!(
            io::stderr(),
            "baton {GUARD_SUBCOMMAND}: not a subreaper: {error}"
        );
    }

    let status = open_status(args.status_fd)?;
    let status = Arc::new(status);
    let deadline = match args.deadline {
        Some((fd, first_ns)) => Some(Deadline {
            updates: open_deadline(fd)?,
            at_ns: first_ns,
            buffer: Vec::new(),
        }),
        None => None,
    };
    {
        let status = Arc::clone(&status);
        let grace = args.grace;
        thread::Builder::new()
            .name("baton-guard-watch".to_owned())
            .spawn(move || watch_baton(&status, grace, deadline))
            .map_err(|error| format!("cannot start a thread: {error}"))?;
    }

    let mut command = Command::new(&args.command[0]);
    command.args(&args.command[1..]);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let errno = error.raw_os_error().unwrap_or(Errno::EINVAL as i32);
            report(&status, &format!("spawn {errno}\n"));
            return Ok(if error.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    let child_pid = i32::try_from(child.id()).map_err(|_| "pid out of range".to_owned())?;
    // From now on a signal to the group reaches the command: `baton run` holds back its
    // signals until it reads this line.
    report(&status, &format!("started {child_pid}\n"));

    // Reaping and killing by pid happen under this lock, so a pid being killed is always an
    // unreaped child of ours and cannot have been reused.
    let reaping = Arc::new(Mutex::new(()));
    let command_done = Arc::new(AtomicBool::new(false));
    {
        let reaping = Arc::clone(&reaping);
        let command_done = Arc::clone(&command_done);
        let spawned = thread::Builder::new()
            .name("baton-guard-reap".to_owned())
            .spawn(move || reap_orphans(me, child_pid, &reaping, &command_done));
        if let Err(error) = spawned {
            // Orphans then wait for the end to be reaped.
            let _ = writeln!(io::stderr(), "baton {GUARD_SUBCOMMAND}: no reaper: {error}");
        }
    }

    // Only this thread ever reaps the command, so its status is never stolen.
    let exit = child
        .wait()
        .map_err(|error| format!("cannot wait for the command: {error}"))?;
    let code = report_exit(&status, exit);
    command_done.store(true, Ordering::SeqCst);
    empty_tree(me, args.grace, &reaping);
    Ok(code)
}

/// Opens the inherited status fd as a close-on-exec file (the command must not inherit it),
/// then closes the inherited one. Opening a pipe's write end fails with ENXIO when no reader
/// is left: `baton run` is already gone.
fn open_status(fd: i32) -> Result<File, String> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{fd}"))
        .map_err(|error| format!("cannot open the status pipe (fd {fd}): {error}"))?;
    // Only the copy without close-on-exec goes; the file above stays open.
    let _ = nix::unistd::close(fd);
    Ok(file)
}

/// Opens the inherited read end of the deadline pipe as a close-on-exec, non-blocking file,
/// then closes the inherited one.
fn open_deadline(fd: i32) -> Result<File, String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{fd}"))
        .map_err(|error| format!("cannot open the deadline pipe (fd {fd}): {error}"))?;
    let _ = nix::unistd::close(fd);
    Ok(file)
}

/// The lease deadline the guardian holds: `deadline NS` lines from `baton run` move it.
struct Deadline {
    /// The read end of the deadline pipe.
    updates: File,
    /// The current deadline, in nanoseconds of `CLOCK_MONOTONIC`.
    at_ns: u64,
    /// Bytes read, up to an incomplete line.
    buffer: Vec<u8>,
}

impl Deadline {
    /// Reads the updates waiting in the pipe. Returns false once the pipe is at its end: its
    /// only writer, `baton run`, is gone.
    fn read_updates(&mut self) -> bool {
        let mut chunk = [0u8; 256];
        loop {
            match (&self.updates).read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        while let Some(end) = self.buffer.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            if let Some(ns) = String::from_utf8_lossy(&line)
                .trim()
                .strip_prefix("deadline ")
                .and_then(|ns| ns.parse().ok())
            {
                self.at_ns = ns;
            }
        }
        true
    }
}

/// Writes one status line; `baton run` reads it after the guardian exits. A line this short is
/// written atomically or not at all.
fn report(status: &File, line: &str) {
    let mut status = status;
    let _ = status.write_all(line.as_bytes());
}

/// Reports how the command ended and returns the guardian's exit code for it.
fn report_exit(status: &File, exit: ExitStatus) -> u8 {
    if let Some(signo) = exit.signal() {
        report(status, &format!("signal {signo}\n"));
        u8::try_from((128 + signo).min(255)).unwrap_or(u8::MAX)
    } else {
        let code = exit.code().unwrap_or(FAILED.into());
        report(status, &format!("exit {code}\n"));
        u8::try_from(code & 0xff).unwrap_or(FAILED)
    }
}

/// Blocks until `baton run` is gone, then kills the job's group: TERM, `grace`, KILL (the
/// guardian included). `baton run` alone holds the read ends of the status pipe and of our
/// stdout (when that is a pipe), so a write end reporting POLLERR means it has died.
///
/// With a lease `deadline`, also stops the group when `deadline - grace` comes without an
/// update: TERM then, KILL at the deadline, and `deadline` on the status pipe first so that
/// `baton run` can tell why. `baton run` starts its own stop earlier (by its stop slack), so
/// this fires only when `baton run` could not: paused, stopped by the terminal, starved.
fn watch_baton(status: &File, grace: Duration, mut deadline: Option<Deadline>) {
    let stdout = io::stdout();
    let stdout_is_pipe = fstat(&stdout).is_ok_and(|stat| {
        SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFIFO
    });
    let gone = PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL;
    let grace_ns = u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX);
    let mut kill_at_ns = None;
    loop {
        let stop_at_ns = deadline
            .as_ref()
            .map(|deadline| deadline.at_ns.saturating_sub(grace_ns));
        let timeout = match stop_at_ns {
            Some(stop_at_ns) => {
                let left_ns = stop_at_ns.saturating_sub(clock::now_ns());
                if left_ns == 0 {
                    report(status, "deadline\n");
                    kill_at_ns = deadline.as_ref().map(|deadline| deadline.at_ns);
                    break;
                }
                // Rounded up, so the wake-up is never early; at most a minute at a time.
                let left_ms = left_ns.div_ceil(1_000_000).min(60_000);
                PollTimeout::try_from(left_ms).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let mut fds = vec![PollFd::new(status.as_fd(), PollFlags::empty())];
        if stdout_is_pipe {
            fds.push(PollFd::new(stdout.as_fd(), PollFlags::empty()));
        }
        let watched = fds.len();
        if let Some(deadline) = &deadline {
            fds.push(PollFd::new(deadline.updates.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {
                if fds[..watched]
                    .iter()
                    .any(|fd| fd.revents().is_some_and(|revents| revents.intersects(gone)))
                {
                    break;
                }
                let updated = fds.get(watched).and_then(PollFd::revents);
                if updated.is_some_and(|revents| !revents.is_empty())
                    && let Some(deadline) = &mut deadline
                    && !deadline.read_updates()
                {
                    break;
                }
            }
            Err(Errno::EINTR) => {}
            // Out of memory or the like: try again shortly rather than kill a healthy job.
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
    let group = getpgrp();
    let _ = killpg(group, Signal::SIGTERM);
    match kill_at_ns {
        Some(kill_at_ns) => {
            let left_ns = kill_at_ns.saturating_sub(clock::now_ns());
            thread::sleep(Duration::from_nanos(left_ns));
        }
        None => thread::sleep(grace),
    }
    let _ = killpg(group, Signal::SIGKILL);
}

/// Reaps zombie children other than the command (orphans re-parented to us) until the command
/// has ended.
fn reap_orphans(me: Pid, command: i32, reaping: &Mutex<()>, command_done: &AtomicBool) {
    loop {
        {
            let _lock = reaping.lock().unwrap_or_else(PoisonError::into_inner);
            if command_done.load(Ordering::SeqCst) {
                return;
            }
            for process in procfs::children_of(me.as_raw()) {
                if process.is_zombie() && process.pid != command {
                    let _ = waitpid(Pid::from_raw(process.pid), Some(WaitPidFlag::WNOHANG));
                }
            }
        }
        thread::sleep(REAP_INTERVAL);
    }
}

/// After the command ended: TERMs what is left of the group (and any descendant that left
/// it), waits up to `grace`, then SIGKILLs each remaining child until none is left. Children's
/// children are re-parented to us as their parents die, so this reaches the whole tree.
fn empty_tree(me: Pid, grace: Duration, reaping: &Mutex<()>) {
    let _lock = reaping.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = killpg(getpgrp(), Signal::SIGTERM);
    for process in procfs::children_of(me.as_raw()) {
        if !process.is_zombie() {
            let _ = kill(Pid::from_raw(process.pid), Signal::SIGTERM);
        }
    }
    let kill_at = Instant::now() + grace;
    loop {
        let children = procfs::children_of(me.as_raw());
        if children.is_empty() {
            return;
        }
        let killing = Instant::now() >= kill_at;
        for process in children {
            let pid = Pid::from_raw(process.pid);
            if process.is_zombie() {
                let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
            } else if killing {
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
        thread::sleep(CLEANUP_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_the_argv_contract() {
        let args = parse(os(&[
            "--grace-ms",
            "1500",
            "--status-fd",
            "5",
            "--",
            "sh",
            "-c",
            "exit 7",
        ]));
        assert_eq!(
            args,
            Ok(Args {
                grace: Duration::from_millis(1500),
                status_fd: 5,
                deadline: None,
                command: os(&["sh", "-c", "exit 7"]),
            })
        );
    }

    #[test]
    fn parses_a_lease_deadline() {
        let args = parse(os(&[
            "--grace-ms",
            "300",
            "--status-fd",
            "5",
            "--deadline-fd",
            "6",
            "--deadline-ns",
            "123456789",
            "--",
            "true",
        ]));
        assert_eq!(args.map(|args| args.deadline), Ok(Some((6, 123_456_789))));
        let alone = os(&[
            "--grace-ms",
            "1",
            "--status-fd",
            "5",
            "--deadline-fd",
            "6",
            "--",
            "x",
        ]);
        assert!(parse(alone).is_err());
    }

    #[test]
    fn refuses_bad_argv() {
        assert!(parse(os(&["--grace-ms", "1", "--status-fd", "5", "--"])).is_err());
        assert!(parse(os(&["--grace-ms", "1", "--status-fd", "1", "--", "x"])).is_err());
        assert!(parse(os(&["--status-fd", "5", "--", "x"])).is_err());
        assert!(parse(os(&["--grace-ms", "x", "--status-fd", "5", "--", "x"])).is_err());
        assert!(parse(os(&["--bogus", "1", "--", "x"])).is_err());
        assert!(parse(os(&["--grace-ms", "1", "--status-fd", "5", "sh"])).is_err());
    }
}
