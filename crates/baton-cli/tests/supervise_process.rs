//! Acceptance tests of `baton run`'s supervision engine (`src/supervise`) with real processes:
//! process-group stop with grandchildren, SIGKILL after the grace, exit codes, output
//! pass-through and the bounded tail, signal forwarding, no zombies, and `kill -9` of the
//! supervising process leaving nothing running.
//!
//! The module is compiled into this test crate with `#[path]`. Its guardian is normally a
//! re-exec of `baton __guard`; here this test binary plays that part: run with the filter
//! `helper_guard_role` and `BATON_SUPERVISE_TEST_ROLE=guard`, the test of that name calls
//! `guard_main` with the arguments after the first `--`. libtest prints `\nrunning 1 test\n`
//! on stdout first, so that line starts every captured stdout ([`HARNESS_LINE`]). Likewise
//! `helper_host_role` runs a supervisor in a separate process, for the tests that kill it.
//!
//! Every wait is bounded; no assertion depends on how fast the machine is.

#[path = "../src/supervise/mod.rs"]
#[allow(dead_code, unused_imports)]
mod supervise;

use std::ffi::OsString;
use std::fmt::Display;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use supervise::{End, Forwarded, GuardLauncher, Outcome, Spec, Supervisor};
use tempfile::TempDir;

/// What libtest prints on stdout before a helper role runs.
const HARNESS_LINE: &[u8] = b"\nrunning 1 test\n";
/// The environment variable that selects a helper role.
const ROLE: &str = "BATON_SUPERVISE_TEST_ROLE";
/// The bound on every wait for a process to do something (generous: the machine is shared).
const PATIENCE: Duration = Duration::from_secs(30);

fn ok<T, E: Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|error| panic!("{what}: {error}"))
}

/// Libtest arguments that run exactly the test `name` of this binary, quietly.
fn harness_args(name: &str) -> Vec<OsString> {
    [
        name,
        "--exact",
        "--nocapture",
        "--quiet",
        "--test-threads=1",
    ]
    .into_iter()
    .map(OsString::from)
    .collect()
}

/// This test binary in the guardian role.
fn test_guard() -> GuardLauncher {
    let mut args = harness_args("helper_guard_role");
    args.push("--".into());
    GuardLauncher {
        program: ok(std::env::current_exe(), "current_exe"),
        arg0: None,
        args,
        env: vec![(ROLE.into(), "guard".into())],
    }
}

/// The guardian role: `guard_main` with the arguments after libtest's `--`.
#[test]
fn helper_guard_role() {
    if std::env::var(ROLE).as_deref() != Ok("guard") {
        return;
    }
    let args: Vec<OsString> = std::env::args_os()
        .skip_while(|arg| arg != "--")
        .skip(1)
        .collect();
    std::process::exit(i32::from(supervise::guard_main(args)));
}

/// A shared buffer to pass the command's output through to.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Sink {
    fn bytes(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A spec for `sh -c script` with the test guardian, no signal forwarding (the test process is
/// shared by many tests) and output into sinks.
fn sh(script: &str, stdout: &Sink, stderr: &Sink) -> Spec {
    let mut spec = Spec::new(["sh", "-c", script]);
    spec.launcher = test_guard();
    spec.forward_signals = false;
    spec.grace = Duration::from_millis(500);
    spec.stdout = Box::new(stdout.clone());
    spec.stderr = Box::new(stderr.clone());
    spec
}

/// `bytes` without the harness line in front.
fn without_harness_line(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(HARNESS_LINE).unwrap_or(bytes)
}

async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    ok(tokio::time::timeout(PATIENCE, future).await, what)
}

/// Polls `done` until it holds, for at most [`PATIENCE`].
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let give_up = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < give_up, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a pid that a script wrote to `dir/name` (written to a temporary name, then moved).
fn read_pid(dir: &Path, name: &str) -> i32 {
    let path = dir.join(name);
    eventually(&format!("{name} pid file"), || path.exists());
    let text = ok(fs::read_to_string(&path), "read pid file");
    ok(text.trim().parse(), "parse pid")
}

/// Shell to write `$value` to `dir/name` atomically.
fn write_pid(dir: &Path, name: &str, value: &str) -> String {
    let path = dir.join(name).display().to_string();
    format!("echo {value} > '{path}.tmp' && mv '{path}.tmp' '{path}'")
}

/// `/proc/PID/stat` fields: state and process group; `None` when there is no such process.
fn stat(pid: i32) -> Option<(char, i32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let pgrp = fields.nth(1)?.parse().ok()?;
    Some((state, pgrp))
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn running(pid: i32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z')
}

/// Every process, zombies included, in the process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|(_, pgrp)| pgrp == pgid))
        .collect()
}

/// The job is over: each pid is gone (reaped, not a zombie) and nothing at all is left in its
/// group. Checked right after the supervisor returned: that it waited for all of this.
fn assert_all_gone(pgid: u32, pids: &[i32]) {
    let pgid = ok(i32::try_from(pgid), "pgid");
    for pid in pids {
        assert_eq!(stat(*pid), None, "process {pid} is still there");
    }
    assert_eq!(
        group_members(pgid),
        Vec::<i32>::new(),
        "left in group {pgid}"
    );
}

fn temp_dir() -> TempDir {
    ok(
        tempfile::Builder::new()
            .prefix("baton-supervise-")
            .tempdir(),
        "temporary folder",
    )
}

#[tokio::test]
async fn exit_codes_pass_through() {
    let (out, err) = (Sink::default(), Sink::default());
    let mut supervisor = ok(Supervisor::spawn(sh("exit 7", &out, &err)), "spawn");
    let pgid = supervisor.pgid();
    let outcome = ok(bounded("wait", supervisor.wait()).await, "wait");
    assert!(matches!(outcome.end, End::Exited(7)), "{:?}", outcome.end);
    assert_eq!(outcome.end.exit_code(), 7);
    assert!(outcome.stopped.is_none());
    assert!(outcome.started <= outcome.ended);
    assert_all_gone(pgid, &[]);
    assert!(matches!(
        supervisor.wait().await,
        Err(supervise::Error::Finished)
    ));

    let mut supervisor = ok(Supervisor::spawn(sh("true", &out, &err)), "spawn");
    let outcome = ok(bounded("wait", supervisor.wait()).await, "wait");
    assert!(matches!(outcome.end, End::Exited(0)), "{:?}", outcome.end);
}

#[tokio::test]
async fn death_by_a_signal_is_reported() {
    let (out, err) = (Sink::default(), Sink::default());
    for (signal, signo) in [("USR1", 10), ("TERM", 15)] {
        let script = format!("kill -{signal} $$; sleep 1000");
        let mut supervisor = ok(Supervisor::spawn(sh(&script, &out, &err)), "spawn");
        let outcome = ok(bounded("wait", supervisor.wait()).await, "wait");
        assert!(
            matches!(outcome.end, End::Signaled(n) if n == signo),
            "{signal}: {:?}",
            outcome.end
        );
        assert_eq!(outcome.end.exit_code(), 128 + signo as u8);
        assert_all_gone(supervisor.pgid(), &[]);
    }
}

#[tokio::test]
async fn a_command_that_cannot_start_is_spawn_failed() {
    let dir = temp_dir();
    let not_executable = dir.path().join("not-executable");
    ok(fs::write(&not_executable, "#!/bin/sh\n"), "write file");
    let cases: [(PathBuf, io::ErrorKind, u8); 2] = [
        (
            dir.path().join("no-such-command"),
            io::ErrorKind::NotFound,
            127,
        ),
        (not_executable, io::ErrorKind::PermissionDenied, 126),
    ];
    for (program, kind, code) in cases {
        let mut spec = sh("", &Sink::default(), &Sink::default());
        spec.argv = vec![program.into_os_string()];
        let mut supervisor = ok(Supervisor::spawn(spec), "spawn");
        let outcome = ok(bounded("wait", supervisor.wait()).await, "wait");
        assert!(
            matches!(&outcome.end, End::SpawnFailed(error) if error.kind() == kind),
            "{:?}",
            outcome.end
        );
        assert_eq!(outcome.end.exit_code(), code);
        assert_all_gone(supervisor.pgid(), &[]);
    }
    let mut spec = Spec::new(Vec::<OsString>::new());
    spec.launcher = test_guard();
    assert!(matches!(
        Supervisor::spawn(spec),
        Err(supervise::Error::EmptyCommand)
    ));
}

#[tokio::test]
async fn stop_ends_the_child_and_its_grandchildren() {
    let dir = temp_dir();
    let script = format!(
        "sleep 1000 & {}; {}; sleep 1000; wait",
        write_pid(dir.path(), "grandchild", "$!"),
        write_pid(dir.path(), "child", "$$"),
    );
    let (out, err) = (Sink::default(), Sink::default());
    let mut supervisor = ok(Supervisor::spawn(sh(&script, &out, &err)), "spawn");
    let grandchild = read_pid(dir.path(), "grandchild");
    let child = read_pid(dir.path(), "child");
    assert!(running(grandchild) && running(child));
    // A long grace: SIGTERM alone must end this tree.
    let outcome = ok(
        bounded("stop", supervisor.stop(Duration::from_secs(60))).await,
        "stop",
    );
    assert!(
        matches!(outcome.end, End::Signaled(15)),
        "{:?}",
        outcome.end
    );
    assert_eq!(outcome.stopped, Some(supervise::Stopped { killed: false }));
    assert_all_gone(supervisor.pgid(), &[child, grandchild]);
}

#[tokio::test]
async fn a_child_ignoring_sigterm_is_killed_after_the_grace() {
    let dir = temp_dir();
    // `trap '' TERM` is inherited by the background sleep as well.
    let script = format!(
        "trap '' TERM; sleep 1000 & {}; {}; wait",
        write_pid(dir.path(), "grandchild", "$!"),
        write_pid(dir.path(), "child", "$$"),
    );
    let (out, err) = (Sink::default(), Sink::default());
    let mut supervisor = ok(Supervisor::spawn(sh(&script, &out, &err)), "spawn");
    let grandchild = read_pid(dir.path(), "grandchild");
    let child = read_pid(dir.path(), "child");
    let outcome = ok(
        bounded("stop", supervisor.stop(Duration::from_millis(200))).await,
        "stop",
    );
    assert!(matches!(outcome.end, End::Signaled(9)), "{:?}", outcome.end);
    assert_eq!(outcome.stopped, Some(supervise::Stopped { killed: true }));
    assert_all_gone(supervisor.pgid(), &[child, grandchild]);
}

#[tokio::test]
async fn leftovers_get_sigterm_and_die_when_the_command_exits() {
    let dir = temp_dir();
    let term = dir.path().join("term");
    // A background job that outlives the command and exits on SIGTERM, saying so. The command
    // exits once the job's trap is set.
    let ready = dir.path().join("ready");
    let script = format!(
        "(trap 'echo term > {term}; exit 0' TERM; : > {ready}; while :; do sleep 0.05; done) & \
         {pid}; while [ ! -e {ready} ]; do sleep 0.01; done; exit 3",
        term = term.display(),
        ready = ready.display(),
        pid = write_pid(dir.path(), "grandchild", "$!"),
    );
    let (out, err) = (Sink::default(), Sink::default());
    let mut spec = sh(&script, &out, &err);
    spec.grace = Duration::from_secs(60);
    let mut supervisor = ok(Supervisor::spawn(spec), "spawn");
    let outcome = ok(bounded("wait", supervisor.wait()).await, "wait");
    assert!(matches!(outcome.end, End::Exited(3)), "{:?}", outcome.end);
    let grandchild = read_pid(dir.path(), "grandchild");
    assert_all_gone(supervisor.pgid(), &[grandchild]);
    assert_eq!(ok(fs::read_to_string(&term), "the trap's file"), "term\n");
}

#[tokio::test]
async fn a_stop_right_after_the_start_reaches_the_command() {
    // SIGTERM must not be lost while the guardian is still starting the command; with this
    // grace, a lost SIGTERM would make the bounded wait fail.
    for _ in 0..5 {
        let (out, err) = (Sink::default(), Sink::default());
        let mut supervisor = ok(Supervisor::spawn(sh("sleep 1000", &out, &err)), "spawn");
        let outcome = ok(
            bounded("stop", supervisor.stop(Duration::from_secs(600))).await,
            "stop",
        );
        assert!(
            matches!(outcome.end, End::Signaled(15)),
            "{:?}",
            outcome.end
        );
        assert_eq!(outcome.stopped, Some(supervise::Stopped { killed: false }));
        assert_all_gone(supervisor.pgid(), &[]);
    }
}

#[tokio::test]
async fn a_stop_from_another_task_and_a_deadline() {
    let (out, err) = (Sink::default(), Sink::default());
    let mut supervisor = ok(Supervisor::spawn(sh("sleep 1000", &out, &err)), "spawn");
    let control = supervisor.control();
    let stopper = tokio::spawn(async move {
        control.stop(Duration::from_secs(60)).await;
        control.is_finished()
    });
    let outcome = ok(bounded("wait", supervisor.wait()).await, "wait");
    assert!(
        matches!(outcome.end, End::Signaled(15)),
        "{:?}",
        outcome.end
    );
    assert!(ok(bounded("stopper", stopper).await, "stopper task"));

    let mut supervisor = ok(Supervisor::spawn(sh("sleep 1000", &out, &err)), "spawn");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
    let outcome = ok(
        bounded(
            "wait_until",
            supervisor.wait_until(deadline, Duration::from_secs(60)),
        )
        .await,
        "wait_until",
    );
    assert!(
        matches!(outcome.end, End::Signaled(15)),
        "{:?}",
        outcome.end
    );
    assert!(outcome.stopped.is_some());
    assert_all_gone(supervisor.pgid(), &[]);
}

#[tokio::test]
async fn output_passes_through_whole_and_the_tail_keeps_exactly_the_end() {
    // `seq` prints about 1.3 MB; the tail keeps its last 1000 bytes.
    let (out, err) = (Sink::default(), Sink::default());
    let mut spec = sh("seq 1 200000", &out, &err);
    spec.tail_bytes = 1000;
    let mut supervisor = ok(Supervisor::spawn(spec), "spawn");
    let outcome = ok(bounded("wait", supervisor.wait()).await, "wait");
    assert!(matches!(outcome.end, End::Exited(0)), "{:?}", outcome.end);
    let expected: String = (1..=200_000).map(|n| format!("{n}\n")).collect();
    let expected = expected.as_bytes();
    let passed = out.bytes();
    assert!(
        without_harness_line(&passed) == expected,
        "stdout passed through differs ({} bytes, expected {})",
        passed.len(),
        expected.len()
    );
    assert_eq!(outcome.tail.len(), 1000);
    assert_eq!(outcome.tail, expected[expected.len() - 1000..]);
    assert_eq!(outcome.output_bytes, passed.len() as u64);
    assert!(err.bytes().is_empty());
}

#[tokio::test]
async fn binary_output_is_kept_as_bytes_and_stderr_passes_through() {
    // One stream: its bytes reach the tail in order. The tail cuts "€" (e2 82 ac) in half.
    let (out, err) = (Sink::default(), Sink::default());
    let mut spec = sh(r"printf 'a\377\000b'; printf 'x€y'", &out, &err);
    spec.tail_bytes = 3;
    let mut supervisor = ok(Supervisor::spawn(spec), "spawn");
    let outcome = ok(bounded("wait", supervisor.wait()).await, "wait");
    assert!(matches!(outcome.end, End::Exited(0)), "{:?}", outcome.end);
    assert_eq!(
        without_harness_line(&out.bytes()),
        b"a\xff\0bx\xe2\x82\xacy"
    );
    assert_eq!(outcome.tail, b"\x82\xacy");
    assert_eq!(outcome.tail_text(), "y");

    // stderr has its own pipe; how its bytes interleave with stdout's in the tail depends on
    // the scheduler, so only the pass-through and the byte count are checked.
    let (out, err) = (Sink::default(), Sink::default());
    let mut spec = sh(r"printf 'e\377\000' >&2", &out, &err);
    spec.tail_bytes = 1000;
    let mut supervisor = ok(Supervisor::spawn(spec), "spawn");
    let outcome = ok(bounded("wait", supervisor.wait()).await, "wait");
    assert!(matches!(outcome.end, End::Exited(0)), "{:?}", outcome.end);
    assert_eq!(err.bytes(), b"e\xff\0");
    assert_eq!(outcome.output_bytes, (out.bytes().len() + 3) as u64);
    assert_eq!(outcome.tail.len() as u64, outcome.output_bytes);
}

#[tokio::test]
async fn the_command_starts_with_default_signal_handling_and_the_env() {
    let (out, err) = (Sink::default(), Sink::default());
    let spec = sh(
        "grep -E '^Sig(Blk|Ign)' /proc/self/status; echo \"token=$BATON_FENCING_TOKEN\"",
        &out,
        &err,
    )
    .env("BATON_FENCING_TOKEN", "42");
    let mut supervisor = ok(Supervisor::spawn(spec), "spawn");
    let outcome = ok(bounded("wait", supervisor.wait()).await, "wait");
    assert!(matches!(outcome.end, End::Exited(0)), "{:?}", outcome.end);
    let text = String::from_utf8_lossy(&out.bytes()).into_owned();
    let mask = |name: &str| -> u64 {
        let line = text
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {text:?}"));
        ok(
            u64::from_str_radix(line.trim_start_matches(name).trim(), 16),
            "mask",
        )
    };
    assert_eq!(mask("SigBlk:"), 0, "blocked signals");
    let hup_int_term = (1 << (1 - 1)) | (1 << (2 - 1)) | (1 << (15 - 1));
    assert_eq!(
        mask("SigIgn:") & hup_int_term,
        0,
        "HUP, INT or TERM ignored"
    );
    assert!(text.contains("token=42\n"), "{text:?}");
}

/// A supervisor in a separate process, driven by the environment: runs `sh -c $SCRIPT` with
/// the test guardian, writes the job's pgid to `$DIR/pgid`, and the outcome to `$DIR/outcome`
/// when the command ends.
#[test]
fn helper_host_role() {
    if std::env::var(ROLE).as_deref() != Ok("host") {
        return;
    }
    let dir = PathBuf::from(ok(std::env::var("BATON_SUPERVISE_TEST_DIR"), "DIR"));
    let script = ok(std::env::var("BATON_SUPERVISE_TEST_SCRIPT"), "SCRIPT");
    let runtime = ok(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        "runtime",
    );
    runtime.block_on(async {
        let mut spec = Spec::new(["sh", "-c", &script]);
        spec.launcher = test_guard();
        spec.grace = Duration::from_millis(300);
        spec.stdout = Box::new(io::sink());
        spec.stderr = Box::new(io::sink());
        let mut supervisor = ok(Supervisor::spawn(spec), "spawn");
        let pgid = supervisor.pgid().to_string();
        ok(fs::write(dir.join("pgid.tmp"), pgid), "write pgid");
        ok(
            fs::rename(dir.join("pgid.tmp"), dir.join("pgid")),
            "rename pgid",
        );
        let outcome: Outcome = ok(supervisor.wait().await, "wait");
        let summary = format!("{:?} {:?}", outcome.end, outcome.forwarded);
        ok(fs::write(dir.join("outcome.tmp"), summary), "write outcome");
        ok(
            fs::rename(dir.join("outcome.tmp"), dir.join("outcome")),
            "rename outcome",
        );
    });
    std::process::exit(0);
}

/// A host process; dropping it (a failed test) SIGKILLs it and, as a last resort, its job.
struct Host {
    child: std::process::Child,
    dir: PathBuf,
}

impl Host {
    /// Starts the host role on `script` in `dir`.
    fn start(dir: &Path, script: &str) -> Self {
        let child = ok(
            Command::new(ok(std::env::current_exe(), "current_exe"))
                .args(harness_args("helper_host_role"))
                .env(ROLE, "host")
                .env("BATON_SUPERVISE_TEST_DIR", dir)
                .env("BATON_SUPERVISE_TEST_SCRIPT", script)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn(),
            "start the host process",
        );
        Self {
            child,
            dir: dir.to_owned(),
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(ok(i32::try_from(self.child.id()), "pid"))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pgid = fs::read_to_string(self.dir.join("pgid"));
        if let Some(pgid) = pgid.ok().and_then(|pgid| pgid.trim().parse().ok())
            && !group_members(pgid).is_empty()
        {
            let _ = nix::sys::signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

/// SIGKILLs the host (a `baton run`) once its job runs, and checks that the guardian ends the
/// tree: nothing of the job keeps running, and once this process (a subreaper, like `baton`)
/// has reaped what was re-parented to it, nothing is left of the group at all.
fn kill_9_leaves_nothing_running(script_head: &str) {
    nix::sys::prctl::set_child_subreaper(true).unwrap_or_else(|e| panic!("subreaper: {e}"));
    let dir = temp_dir();
    let script = format!(
        "{script_head} sleep 1000 & {}; {}; sleep 1000; wait",
        write_pid(dir.path(), "grandchild", "$!"),
        write_pid(dir.path(), "child", "$$"),
    );
    let mut host = Host::start(dir.path(), &script);
    let grandchild = read_pid(dir.path(), "grandchild");
    let child = read_pid(dir.path(), "child");
    let pgid = read_pid(dir.path(), "pgid");
    assert!(running(grandchild) && running(child) && running(pgid));
    ok(host.child.kill(), "kill -9 the host");
    ok(host.child.wait(), "reap the host");
    eventually("the job's processes to end", || {
        !running(grandchild) && !running(child) && !running(pgid)
    });
    eventually("the job's group to be reaped", || {
        for pid in group_members(pgid) {
            // Zombies re-parented to this process; others' waitpid fails harmlessly.
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
        group_members(pgid).is_empty()
    });
    assert!(!dir.path().join("outcome").exists());
}

#[test]
fn kill_9_of_the_supervisor_ends_the_job() {
    kill_9_leaves_nothing_running("");
}

#[test]
fn kill_9_of_the_supervisor_ends_a_job_that_ignores_sigterm() {
    kill_9_leaves_nothing_running("trap '' TERM;");
}

#[test]
fn signals_to_the_supervisor_are_forwarded_to_the_group() {
    let dir = temp_dir();
    let script = format!(
        "trap 'exit 3' HUP; {}; while :; do sleep 0.05; done",
        write_pid(dir.path(), "child", "$$"),
    );
    let mut host = Host::start(dir.path(), &script);
    let child = read_pid(dir.path(), "child");
    let pgid = read_pid(dir.path(), "pgid");
    ok(kill(host.pid(), Signal::SIGHUP), "SIGHUP the host");
    let outcome = dir.path().join("outcome");
    eventually("the outcome", || outcome.exists());
    assert_eq!(
        ok(fs::read_to_string(&outcome), "read outcome"),
        format!("Exited(3) {:?}", [Forwarded::Hangup])
    );
    let status = ok(host.child.wait(), "host exit");
    assert!(status.success(), "{status:?}");
    assert!(!running(child) && !running(pgid));
}

/// The real `baton` binary as the guardian: `main` dispatches `__guard` to `guard_main`.
#[tokio::test]
async fn the_baton_binary_is_the_guardian() {
    let (out, err) = (Sink::default(), Sink::default());
    let mut spec = sh("echo hello; exit 7", &out, &err);
    spec.launcher = GuardLauncher {
        program: PathBuf::from(env!("CARGO_BIN_EXE_baton")),
        arg0: None,
        args: vec![supervise::GUARD_SUBCOMMAND.into()],
        env: Vec::new(),
    };
    let mut supervisor = ok(Supervisor::spawn(spec), "spawn");
    let outcome = ok(bounded("wait", supervisor.wait()).await, "wait");
    assert!(matches!(outcome.end, End::Exited(7)), "{:?}", outcome.end);
    assert_eq!(out.bytes(), b"hello\n");
    assert_all_gone(supervisor.pgid(), &[]);
}
