//! The `baton run` side: starts the guardian, copies the output, forwards signals, stops the
//! tree on request and reports the outcome.

use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::Poll;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;
use tokio::net::unix::pipe;
use tokio::signal::unix::{self as unix_signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};

use super::tail::Tail;
use super::{End, Error, Forwarded, Outcome, Spec, Stopped, procfs};

/// A fallback for a missed SIGCHLD: how often the guardian's state is checked anyway.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long, at most, orphans left in the group after the guardian died are killed and reaped.
const CLEAR_BOUND: Duration = Duration::from_millis(300);
/// How long, at most, the output is drained once the tree is gone (a process that left the
/// group may still hold the pipes).
const DRAIN_BOUND: Duration = Duration::from_millis(300);

/// A request from a [`Control`] handle to the task that runs [`Supervisor::wait`].
#[derive(Debug)]
enum Request {
    /// Stop the tree with this grace.
    Stop(Duration),
}

/// A stop in progress.
#[derive(Debug, Clone, Copy)]
struct StopState {
    /// When the group gets SIGKILL.
    kill_at: tokio::time::Instant,
    /// SIGKILL was sent.
    killed: bool,
}

/// A cloneable handle to stop the supervised tree from another task (the lease-renewal loop).
/// A stop only makes progress while some task is in [`Supervisor::wait`].
#[derive(Debug, Clone)]
pub struct Control {
    /// Requests to the supervisor.
    requests: mpsc::UnboundedSender<Request>,
    /// Becomes true once the tree is gone and the outcome is known.
    #[allow(dead_code)]
    // Supervision API that `run` does not use (yet); tests/supervise_process.rs does.
    finished: watch::Receiver<bool>,
    /// The write end of the guardian's deadline pipe (non-blocking, close-on-exec), when the
    /// command runs under a lease deadline.
    deadline: Option<Arc<std::fs::File>>,
}

impl Control {
    /// Asks for the tree to be stopped: SIGTERM to the group now, SIGKILL after `grace`. A
    /// second request can only shorten the grace. Does nothing once the tree is gone.
    pub fn request_stop(&self, grace: Duration) {
        // The receiver lives as long as the supervisor; once it is gone there is nothing to stop.
        let _ = self.requests.send(Request::Stop(grace));
    }

    /// Tells the guardian the lease's new local deadline, after a successful renewal: it stops
    /// the tree itself when the deadline (less the grace) comes without a later update. Does
    /// nothing without a [`Spec::lease_deadline`](super::Spec::lease_deadline) or once the
    /// guardian is gone.
    pub fn set_deadline(&self, deadline: Instant) {
        if let Some(pipe) = &self.deadline {
            let line = format!("deadline {}\n", super::clock::ns_of(deadline));
            // A line this short is written whole or not at all. A full pipe (the guardian
            // reads at once, so it never is) or a gone guardian leave nothing to do.
            let _ = (&**pipe).write(line.as_bytes());
        }
    }

    /// Stops the tree and returns once it is gone (at most `grace` +
    /// [`STOP_SLACK`](super::STOP_SLACK) later, given a task in [`Supervisor::wait`]).
    #[allow(dead_code)] // Supervision API that `run` does not use (yet); tests/supervise_process.rs does.
    pub async fn stop(&self, grace: Duration) {
        self.request_stop(grace);
        let mut finished = self.finished.clone();
        // An error means the supervisor was dropped, which kills the tree.
        let _ = finished.wait_for(|finished| *finished).await;
    }

    /// Whether the tree is gone and the outcome known.
    #[allow(dead_code)] // Supervision API that `run` does not use (yet); tests/supervise_process.rs does.
    pub fn is_finished(&self) -> bool {
        *self.finished.borrow()
    }
}

/// One supervised command: its guardian process, output pumps and signal forwarding.
///
/// Dropping it before [`Supervisor::wait`] returned SIGKILLs the whole tree.
#[derive(Debug)]
pub struct Supervisor {
    /// The guardian; its pid is the job's process-group id. Reaped last, in `finish`.
    guardian: Child,
    /// The job's process group.
    pgid: Pid,
    /// The read end of the guardian's status pipe (non-blocking). It is also read directly,
    /// so what is in the pipe is seen even before the reactor noticed it.
    status: pipe::Receiver,
    /// Status bytes read, up to an incomplete line.
    status_buffer: Vec<u8>,
    /// The status pipe reached EOF (or failed): nothing more to read.
    status_eof: bool,
    /// The guardian reported that the command runs: it is in the group.
    command_started: bool,
    /// Signals for the group that wait for the command to start (a signal sent to the group
    /// before the command joined it would never reach the command).
    deferred: Vec<Signal>,
    /// The guardian's report on how the command ended.
    report: Option<End>,
    /// The guardian reported that it stopped the tree at the lease's deadline.
    deadline_passed: bool,
    /// Stop requests from [`Control`] handles.
    requests: mpsc::UnboundedReceiver<Request>,
    /// A handle of our own, to clone out (it also keeps `requests` open).
    control: Control,
    /// Tells [`Control`] handles that the tree is gone.
    finished: watch::Sender<bool>,
    /// Wakes us when a child (the guardian) changes state.
    sigchld: unix_signal::Signal,
    /// The signals to forward, when asked to.
    forward: Vec<(Forwarded, unix_signal::Signal)>,
    /// Signals forwarded so far.
    forwarded: Vec<Forwarded>,
    /// The stop in progress, if any.
    stop: Option<StopState>,
    /// The output tail, shared with the pumps.
    tail: Arc<Mutex<Tail>>,
    /// Each pump says when its stream reached EOF.
    pumps: Vec<oneshot::Receiver<()>>,
    /// When the guardian was started.
    started: Instant,
    /// The same on the wall clock.
    started_at: SystemTime,
    /// The guardian has been reaped: no signal may be sent to `pgid` any more.
    reaped: bool,
}

impl Supervisor {
    /// Starts `spec.argv` under a guardian, in a new process group. Must be called within a
    /// tokio runtime. A command that cannot be started is not an error here: it is reported as
    /// [`End::SpawnFailed`] by [`Supervisor::wait`].
    pub fn spawn(spec: Spec) -> Result<Self, Error> {
        if spec.argv.is_empty() {
            return Err(Error::EmptyCommand);
        }
        become_subreaper();
        let setup = |what| move |source| Error::Setup { what, source };
        // Handlers first: a SIGINT from now on is forwarded, not fatal.
        let sigchld = unix_signal::signal(SignalKind::child()).map_err(setup("SIGCHLD handler"))?;
        let mut forward = Vec::new();
        if spec.forward_signals {
            for (which, kind) in [
                (Forwarded::Interrupt, SignalKind::interrupt()),
                (Forwarded::Terminate, SignalKind::terminate()),
                (Forwarded::Hangup, SignalKind::hangup()),
            ] {
                let stream = unix_signal::signal(kind).map_err(setup("signal handler"))?;
                forward.push((which, stream));
            }
        }

        let (status, status_writer) = io::pipe().map_err(setup("status pipe"))?;
        // The guardian inherits the write end; we keep the (close-on-exec) read end.
        fcntl(&status_writer, FcntlArg::F_SETFD(FdFlag::empty()))
            .map_err(|errno| setup("status pipe")(errno.into()))?;
        let status =
            pipe::Receiver::from_owned_fd(OwnedFd::from(status)).map_err(setup("status pipe"))?;

        // The deadline pipe: the guardian inherits the read end, we keep the write end.
        let deadline = match spec.lease_deadline {
            Some(at) => {
                let (reader, writer) = io::pipe().map_err(setup("deadline pipe"))?;
                fcntl(&reader, FcntlArg::F_SETFD(FdFlag::empty()))
                    .map_err(|errno| setup("deadline pipe")(errno.into()))?;
                let writer = OwnedFd::from(writer);
                fcntl(&writer, FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
                    .map_err(|errno| setup("deadline pipe")(errno.into()))?;
                Some((reader, std::fs::File::from(writer), at))
            }
            None => None,
        };
        let launcher = &spec.launcher;
        let mut command = Command::new(&launcher.program);
        if let Some(arg0) = &launcher.arg0 {
            command.arg0(arg0);
        }
        command
            .args(&launcher.args)
            .arg("--grace-ms")
            .arg(spec.grace.as_millis().to_string())
            .arg("--status-fd")
            .arg(status_writer.as_raw_fd().to_string());
        if let Some((reader, _, at)) = &deadline {
            command
                .arg("--deadline-fd")
                .arg(reader.as_raw_fd().to_string())
                .arg("--deadline-ns")
                .arg(super::clock::ns_of(*at).to_string());
        }
        command
            .arg("--")
            .args(&spec.argv)
            .envs(launcher.env.iter().map(|(key, value)| (key, value)))
            .envs(spec.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::inherit())
            .stdout(output_stdio(spec.inherit_output))
            .stderr(output_stdio(spec.inherit_output))
            .process_group(0);
        let started = Instant::now();
        let started_at = SystemTime::now();
        let mut guardian = command.spawn().map_err(|source| Error::StartGuard {
            program: launcher.program.clone(),
            source,
        })?;
        drop(status_writer);
        let deadline = deadline.map(|(reader, writer, _)| {
            drop(reader);
            Arc::new(writer)
        });
        let stdout = guardian.stdout.take();
        let stderr = guardian.stderr.take();
        let pgid = Pid::from_raw(i32::try_from(guardian.id()).unwrap_or(i32::MAX));

        let (requests_tx, requests) = mpsc::unbounded_channel();
        let (finished, finished_rx) = watch::channel(false);
        let mut supervisor = Self {
            guardian,
            pgid,
            status,
            status_buffer: Vec::new(),
            status_eof: false,
            command_started: false,
            deferred: Vec::new(),
            report: None,
            deadline_passed: false,
            requests,
            control: Control {
                requests: requests_tx,
                finished: finished_rx,
                deadline,
            },
            finished,
            sigchld,
            forward,
            forwarded: Vec::new(),
            stop: None,
            tail: Arc::new(Mutex::new(Tail::new(spec.tail_bytes))),
            pumps: Vec::new(),
            started,
            started_at,
            reaped: false,
        };
        // From here on, an early return drops `supervisor`, which kills the tree.
        if let Some(stdout) = stdout {
            let done = start_pump("baton-stdout", stdout, spec.stdout, &supervisor.tail)
                .map_err(setup("output thread"))?;
            supervisor.pumps.push(done);
        }
        if let Some(stderr) = stderr {
            let done = start_pump("baton-stderr", stderr, spec.stderr, &supervisor.tail)
                .map_err(setup("output thread"))?;
            supervisor.pumps.push(done);
        }
        Ok(supervisor)
    }

    /// The job's process-group id, which is also the guardian's pid.
    #[allow(dead_code)] // Supervision API that `run` does not use (yet); tests/supervise_process.rs does.
    pub fn pgid(&self) -> u32 {
        self.guardian.id()
    }

    /// A handle to stop the tree from another task.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Waits until the whole tree is gone and returns the outcome. Meanwhile it forwards
    /// signals and carries out stops requested through [`Control`]. Cancel-safe: dropping the
    /// future loses nothing, so it can sit in a `select!` next to the lease-renewal loop.
    pub async fn wait(&mut self) -> Result<Outcome, Error> {
        if self.reaped {
            return Err(Error::Finished);
        }
        loop {
            self.read_status();
            if self.guardian_exited() {
                return self.finish().await;
            }
            let kill_at = self
                .stop
                .filter(|stop| !stop.killed)
                .map(|stop| stop.kill_at);
            let status_open = !self.status_eof;
            tokio::select! {
                _ = self.sigchld.recv() => {}
                readable = self.status.readable(), if status_open => {
                    if readable.is_err() {
                        self.status_eof = true;
                    }
                    // Through the reactor, so that its readiness is cleared once drained.
                    self.read_status_with(|status, buffer| status.try_read(buffer));
                }
                Some(request) = self.requests.recv() => match request {
                    Request::Stop(grace) => self.begin_stop(grace),
                },
                which = next_signal(&mut self.forward) => {
                    self.forwarded.push(which);
                    self.send(forwarded_signal(which));
                }
                () = tokio::time::sleep_until(kill_at.unwrap_or_else(tokio::time::Instant::now)),
                    if kill_at.is_some() => self.escalate(),
                () = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }

    /// Stops the tree (SIGTERM to the group, SIGKILL after `grace`) and returns the outcome
    /// once it is gone: at most `grace` + [`STOP_SLACK`](super::STOP_SLACK) from now.
    pub async fn stop(&mut self, grace: Duration) -> Result<Outcome, Error> {
        if !self.reaped {
            self.begin_stop(grace);
        }
        self.wait().await
    }

    /// Waits like [`Supervisor::wait`], but stops the tree with `grace` if it is still running
    /// at `deadline`.
    #[allow(dead_code)] // Supervision API that `run` does not use (yet); tests/supervise_process.rs does.
    pub async fn wait_until(
        &mut self,
        deadline: tokio::time::Instant,
        grace: Duration,
    ) -> Result<Outcome, Error> {
        tokio::select! {
            outcome = self.wait() => return outcome,
            () = tokio::time::sleep_until(deadline) => {}
        }
        self.stop(grace).await
    }

    /// Whether the guardian has exited (not reaped: its pid, the group's id, stays reserved).
    fn guardian_exited(&self) -> bool {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(self.pgid), flags) {
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => false,
            // EINVAL: it died of a signal nix has no name for; ECHILD cannot happen (nobody
            // else reaps it). Either way it is not running.
            Ok(_) | Err(_) => true,
        }
    }

    /// Starts a stop, or shortens the grace of the one in progress.
    fn begin_stop(&mut self, grace: Duration) {
        let kill_at = tokio::time::Instant::now() + grace;
        match &mut self.stop {
            Some(stop) => stop.kill_at = stop.kill_at.min(kill_at),
            None => {
                self.send(Signal::SIGTERM);
                self.stop = Some(StopState {
                    kill_at,
                    killed: false,
                });
            }
        }
    }

    /// The grace of a stop ran out: SIGKILL, whether the command started or not.
    fn escalate(&mut self) {
        self.signal_group(Signal::SIGKILL);
        if let Some(stop) = &mut self.stop {
            stop.killed = true;
        }
    }

    /// Sends `signal` to the job's group once the command is in it.
    fn send(&mut self, signal: Signal) {
        if self.command_started {
            self.signal_group(signal);
        } else if !self.deferred.contains(&signal) {
            self.deferred.push(signal);
        }
    }

    /// Sends `signal` to the job's group, while the guardian is unreaped.
    fn signal_group(&self, signal: Signal) {
        if !self.reaped {
            // ESRCH: the group is already empty.
            let _ = killpg(self.pgid, signal);
        }
    }

    /// Reads what the guardian has written on the status pipe so far, without blocking, and
    /// acts on each complete line.
    fn read_status(&mut self) {
        // Directly: the reactor may not have seen the data yet (the guardian just exited).
        self.read_status_with(|status, buffer| {
            nix::unistd::read(status, buffer).map_err(io::Error::from)
        });
    }

    /// Reads the status pipe with `read` until it would block, then acts on complete lines.
    fn read_status_with(&mut self, read: impl Fn(&pipe::Receiver, &mut [u8]) -> io::Result<usize>) {
        let mut buffer = [0u8; 256];
        while !self.status_eof {
            match read(&self.status, &mut buffer) {
                Ok(0) => self.status_eof = true,
                Ok(n) => self.status_buffer.extend_from_slice(&buffer[..n]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.status_eof = true,
            }
        }
        while let Some(end) = self.status_buffer.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = self.status_buffer.drain(..=end).collect();
            match parse_status(&String::from_utf8_lossy(&line)) {
                Some(Status::Started) => {
                    self.command_started = true;
                    for signal in std::mem::take(&mut self.deferred) {
                        self.signal_group(signal);
                    }
                }
                Some(Status::Ended(end)) => self.report = Some(end),
                Some(Status::Deadline) => self.deadline_passed = true,
                None => {}
            }
        }
    }

    /// The guardian exited: finishes off the group, reaps, drains the output, reports.
    ///
    /// Cancel-safe too: every await comes before the guardian is reaped, and what it does can
    /// be done again.
    async fn finish(&mut self) -> Result<Outcome, Error> {
        self.clear_group().await;
        let ended = Instant::now();
        let ended_at = SystemTime::now();
        // The tree is gone, so the pipes are at EOF unless a process that left the group
        // holds them: bounded.
        let _ = tokio::time::timeout(DRAIN_BOUND, async {
            while let Some(done) = self.pumps.last_mut() {
                let _ = done.await;
                self.pumps.pop();
            }
        })
        .await;
        self.read_status();
        let report = self.report.take();
        let exit = self.guardian.wait();
        self.reaped = true;
        self.finished.send_replace(true);
        let (tail, output_bytes) = self
            .tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .snapshot();
        let end = match report {
            Some(end) => end,
            None => match exit {
                Ok(exit) => match exit.signal() {
                    Some(signo) => End::Signaled(signo),
                    None => {
                        return Err(Error::GuardFailed {
                            status: exit.code().unwrap_or(-1),
                        });
                    }
                },
                Err(source) => {
                    return Err(Error::Setup {
                        what: "waiting for the guardian",
                        source,
                    });
                }
            },
        };
        Ok(Outcome {
            end,
            tail,
            output_bytes,
            started: self.started,
            ended,
            started_at: self.started_at,
            ended_at,
            forwarded: self.forwarded.clone(),
            deadline_passed: self.deadline_passed,
            stopped: self.stop.map(|stop| Stopped {
                killed: stop.killed,
            }),
        })
    }

    /// Kills and reaps what is left of the group once the guardian has exited. Normally
    /// nothing is: the guardian empties the group before it exits. When it was killed,
    /// the rest of the group is re-parented to us (a subreaper) and reaped here. Bounded.
    async fn clear_group(&mut self) {
        let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let pgid = self.pgid.as_raw();
        let give_up = Instant::now() + CLEAR_BOUND;
        loop {
            let members: Vec<_> = procfs::processes()
                .into_iter()
                .filter(|process| process.pgrp == pgid && process.pid != pgid)
                .collect();
            if members.is_empty() {
                return;
            }
            if members.iter().any(|process| !process.is_zombie()) {
                // Safe: the unreaped guardian keeps the group's id from being reused.
                let _ = killpg(self.pgid, Signal::SIGKILL);
            }
            for process in members {
                if process.is_zombie() && process.ppid == me {
                    let _ = waitpid(Pid::from_raw(process.pid), Some(WaitPidFlag::WNOHANG));
                }
            }
            if Instant::now() >= give_up {
                tracing::warn!(pgid, "processes of the job's group are left unreaped");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        let _ = killpg(self.pgid, Signal::SIGKILL);
        // SIGKILL is immediate, except for a process in uninterruptible sleep: bounded.
        let give_up = Instant::now() + Duration::from_millis(200);
        while Instant::now() < give_up {
            if !matches!(self.guardian.try_wait(), Ok(None)) {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        for process in procfs::children_of(me) {
            if process.is_zombie() && process.pgrp == self.pgid.as_raw() {
                let _ = waitpid(Pid::from_raw(process.pid), Some(WaitPidFlag::WNOHANG));
            }
        }
    }
}

/// The guardian's (and so the command's) stdout or stderr: a pipe to copy, or ours.
fn output_stdio(inherit: bool) -> Stdio {
    if inherit {
        Stdio::inherit()
    } else {
        Stdio::piped()
    }
}

/// Makes this process a child subreaper, once: orphans of the job that outlive the guardian
/// come to us to be reaped instead of to PID 1 (which may never reap them).
fn become_subreaper() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if let Err(error) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!(%error, "cannot become a child subreaper; orphans may stay zombies");
        }
    });
}

/// A line the guardian writes on the status pipe.
#[derive(Debug)]
enum Status {
    /// `started PID`: the command runs, in the group.
    Started,
    /// `exit N`, `signal N` or `spawn ERRNO`: how it ended.
    Ended(End),
    /// `deadline`: the lease's deadline came without an update; the guardian stops the tree.
    Deadline,
}

/// Parses one status line; `None` for anything else.
fn parse_status(line: &str) -> Option<Status> {
    if line.trim() == "deadline" {
        return Some(Status::Deadline);
    }
    let (kind, number) = line.trim().split_once(' ')?;
    let number: i32 = number.parse().ok()?;
    let end = match kind {
        "started" => return Some(Status::Started),
        "exit" => End::Exited(number),
        "signal" => End::Signaled(number),
        "spawn" => End::SpawnFailed(io::Error::from_raw_os_error(number)),
        _ => return None,
    };
    Some(Status::Ended(end))
}

/// The signal a [`Forwarded`] stands for.
fn forwarded_signal(which: Forwarded) -> Signal {
    match which {
        Forwarded::Interrupt => Signal::SIGINT,
        Forwarded::Terminate => Signal::SIGTERM,
        Forwarded::Hangup => Signal::SIGHUP,
    }
}

/// The next of the signals to forward (never, when there are none).
async fn next_signal(signals: &mut [(Forwarded, unix_signal::Signal)]) -> Forwarded {
    poll_fn(|context| {
        for (which, stream) in signals.iter_mut() {
            if let Poll::Ready(Some(())) = stream.poll_recv(context) {
                return Poll::Ready(*which);
            }
        }
        Poll::Pending
    })
    .await
}

/// Starts a thread that copies `from` to `sink` as it arrives and into `tail`, and returns a
/// receiver that completes at EOF.
fn start_pump(
    name: &str,
    from: impl Read + Send + 'static,
    sink: Box<dyn Write + Send>,
    tail: &Arc<Mutex<Tail>>,
) -> io::Result<oneshot::Receiver<()>> {
    let (done, done_rx) = oneshot::channel();
    let tail = Arc::clone(tail);
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            pump(from, sink, &tail);
            let _ = done.send(());
        })?;
    Ok(done_rx)
}

/// Copies until EOF. A sink that fails (our stdout closed) is dropped, but reading goes on: the
/// command must not block on a full pipe, and the tail still fills.
fn pump(mut from: impl Read, mut sink: Box<dyn Write + Send>, tail: &Mutex<Tail>) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut sink_ok = true;
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let chunk = &buffer[..n];
        if sink_ok {
            sink_ok = sink.write_all(chunk).and_then(|()| sink.flush()).is_ok();
        }
        tail.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handles_can_move_between_tasks() {
        fn send<T: Send>() {}
        send::<Supervisor>();
        send::<Control>();
    }

    #[test]
    fn parses_status_lines() {
        assert!(matches!(
            parse_status("started 42\n"),
            Some(Status::Started)
        ));
        assert!(matches!(
            parse_status("exit 7\n"),
            Some(Status::Ended(End::Exited(7)))
        ));
        assert!(matches!(
            parse_status("signal 15\n"),
            Some(Status::Ended(End::Signaled(15)))
        ));
        assert!(matches!(
            parse_status("spawn 2\n"),
            Some(Status::Ended(End::SpawnFailed(error))) if error.kind() == io::ErrorKind::NotFound
        ));
        assert!(matches!(parse_status("deadline\n"), Some(Status::Deadline)));
        assert!(parse_status("").is_none());
        assert!(parse_status("exit x").is_none());
        assert!(parse_status("bogus 1").is_none());
    }
}
