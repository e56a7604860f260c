//! Issue 10, the "Also" list: what `baton run` and `baton parallel` print for scripts and logs.
//!
//! - `baton run --json`: stdout is the job's record alone (the command's stdout goes to
//!   stderr), and every client command's failure under `--json` is a JSON error on stdout;
//! - `baton parallel` names each job after its argument, marks stderr lines with their job
//!   when stderr is not a terminal, reports each job's run (not its wait) as its duration, and
//!   `--sync` runs the jobs one at a time on baton's own stdout, still recorded;
//! - with the server not answering, `baton run` bounds its attempts to record the job's end and says so.
//!
//! Real processes and a real server (SQLite). Every wait is bounded.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod harness;

use std::time::{Duration, Instant};

use harness::{Server, assert_code, eventually, jobs_named, workdir};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The bound on one `baton` command finishing, or one condition becoming true.
const PATIENCE: Duration = Duration::from_secs(40);

fn json_of(stdout: &[u8]) -> Value {
    serde_json::from_slice(stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is not one JSON document ({error}):\n{}",
            String::from_utf8_lossy(stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_json_prints_the_job_record_alone_on_stdout() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-json-");
        let run = server.spawn_baton(
            &[
                "--json",
                "run",
                "output/json",
                "--",
                "sh",
                "-c",
                "echo child-out; echo child-err >&2; exit 3",
            ],
            Some(dir.path()),
        );
        let exited = run.wait(PATIENCE).await;
        assert_code(&exited, 3, "the command's own code");
        let record = json_of(&exited.stdout);
        assert_eq!(record["job"]["state"], "failed", "{record}");
        assert_eq!(record["job"]["exit_code"], 3, "{record}");
        assert!(
            record["output_tail"]
                .as_str()
                .unwrap()
                .contains("child-out")
        );
        assert!(exited.stderr.contains("child-out") && exited.stderr.contains("child-err"));
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_under_json_are_json_errors_on_stdout() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let cases: [(&[&str], i32, &str); 3] = [
            (
                &["--json", "status", "output/no-such-lock"],
                66,
                "lock_not_found",
            ),
            (&["--json", "jobs", "--state", "bogus"], 64, "usage"),
            (
                &["--json", "run", "output/x", "--ttl", "100ms", "--", "true"],
                64,
                "usage",
            ),
        ];
        for (args, code, error_code) in cases {
            let exited = server.spawn_baton(args, None).wait(PATIENCE).await;
            assert_code(&exited, code, &format!("{args:?}"));
            let error = json_of(&exited.stdout);
            assert_eq!(error["error"]["code"], error_code, "{args:?}: {error}");
            assert_eq!(error["exit_code"], code, "{args:?}: {error}");
            assert!(error["error"]["message"].is_string(), "{error}");
        }
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_names_jobs_after_their_argument_and_marks_stderr_in_logs() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-names-");
        let parallel = server.spawn_baton(
            &[
                "parallel",
                "-j",
                "2",
                "--",
                "sh",
                "-c",
                "echo out $0; echo err $0 >&2",
                ":::",
                "web-1",
                "db 2",
            ],
            Some(dir.path()),
        );
        let exited = parallel.wait(PATIENCE).await;
        assert_code(&exited, 0, "two jobs");
        let stdout = String::from_utf8_lossy(&exited.stdout);
        assert!(stdout.contains("== sh-1-web-1 (exit 0"), "{stdout}");
        assert!(stdout.contains("== sh-2-db_2 (exit 0"), "{stdout}");
        // stderr is a pipe here, as in a log file: each line names its job.
        assert!(
            exited.stderr.contains("sh-1-web-1: err web-1\n"),
            "{}",
            exited.stderr
        );
        assert!(
            exited.stderr.contains("sh-2-db_2: err db 2\n"),
            "{}",
            exited.stderr
        );
        assert_eq!(jobs_named(&server, "sh-1-web-1").await.len(), 1);
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_durations_are_the_runs_not_the_waits_for_a_slot() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-durations-");
        let parallel = server.spawn_baton(
            &[
                "--json",
                "parallel",
                "--slots",
                "output/slot:1",
                "-j",
                "2",
                "--",
                "sh",
                "-c",
                "sleep 3",
                ":::",
                "a",
                "b",
            ],
            Some(dir.path()),
        );
        let exited = parallel.wait(PATIENCE).await;
        assert_code(&exited, 0, "two jobs on one slot");
        let results = json_of(&exited.stdout);
        for result in results.as_array().unwrap() {
            let took = result["duration_ms"].as_u64().unwrap();
            // Each ran 3 s; the second also waited 3 s for the slot, which must not count.
            assert!((3_000..5_000).contains(&took), "{result}");
        }
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_sync_runs_jobs_one_at_a_time_on_batons_own_output_and_records_them() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-sync-");
        let parallel = server.spawn_baton(
            &[
                "parallel",
                "--sync",
                "--name",
                "dbg",
                "--",
                "sh",
                "-c",
                "echo start $0; sleep 0.3; echo end $0",
                ":::",
                "a",
                "b",
            ],
            Some(dir.path()),
        );
        let exited = parallel.wait(PATIENCE).await;
        assert_code(&exited, 0, "--sync");
        let stdout = String::from_utf8_lossy(&exited.stdout);
        let lines: Vec<&str> = stdout
            .lines()
            .filter(|line| line.starts_with("start") || line.starts_with("end"))
            .collect();
        assert_eq!(lines, ["start a", "end a", "start b", "end b"], "{stdout}");
        for name in ["dbg-1-a", "dbg-2-b"] {
            let jobs = jobs_named(&server, name).await;
            assert_eq!(jobs.len(), 1, "{name}: {jobs:?}");
            assert_eq!(jobs[0]["state"], "succeeded");
        }
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_server_not_answering_run_bounds_recording_the_jobs_end_and_says_so() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-gone-");
        let name = "output/gone";
        let run = server.spawn_baton(
            &[
                "run",
                name,
                "--",
                "sh",
                "-c",
                "while [ ! -e go ]; do sleep 0.05; done",
            ],
            Some(dir.path()),
        );
        eventually("the job running", PATIENCE, async || {
            jobs_named(&server, name)
                .await
                .iter()
                .any(|job| job["state"] == "running")
                .then_some(())
        })
        .await;
        // A server that takes connections but never answers (paused, or behind a dead link):
        // every attempt hangs until its timeout, and five used to take 50 s.
        let server_pid = Pid::from_raw(i32::try_from(server.pid().unwrap()).unwrap());
        kill(server_pid, Signal::SIGSTOP).unwrap();
        let stopped = Instant::now();
        std::fs::write(dir.path().join("go"), "").unwrap();
        let exited = run.wait(PATIENCE).await;
        assert_code(
            &exited,
            0,
            "the command's code, though its end is not recorded",
        );
        assert!(
            exited.stderr.contains("could not record the end of job"),
            "{}",
            exited.stderr
        );
        let took = stopped.elapsed();
        kill(server_pid, Signal::SIGCONT).unwrap();
        // About the 5 s bound, far from the 50 s the retries used to take.
        assert!(took < Duration::from_secs(25), "{took:?}");
    })
    .await
    .expect("the test took too long");
}
