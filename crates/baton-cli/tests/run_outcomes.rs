//! How a `baton run` ends, end to end against a real server: exit codes (the command's own
//! passes through; 127/126 when it cannot start; 124 for `--timeout`; 75 busy with `--fail` or
//! when `--wait=T` runs out), the output passed through whole while the job keeps a bounded tail,
//! and SIGINT/SIGTERM to `baton run`, forwarded to a running command or, while waiting, ending
//! the wait: the job is recorded `cancelled` and its ticket leaves the queue.
//!
//! Every wait is bounded; no assertion is about how long something took.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod harness;

use std::path::Path;
use std::time::Duration;

use harness::{
    ClientProcess, Server, assert_code, eventually, file_lines, job_detail, jobs_named, lock_path,
    lock_view, str_of, workdir,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The bound on one `baton run` finishing, or one condition becoming true.
const PATIENCE: Duration = Duration::from_secs(30);

/// `baton run NAME ARGS… -- CMD…` in `dir`.
fn run(server: &Server, dir: &Path, name: &str, args: &[&str], command: &[&str]) -> ClientProcess {
    let mut argv = vec!["run", name];
    argv.extend_from_slice(args);
    argv.push("--");
    argv.extend_from_slice(command);
    server.spawn_baton(&argv, Some(dir))
}

/// The only job of `name`.
async fn only_job(server: &Server, name: &str) -> Value {
    let jobs = jobs_named(server, name).await;
    assert_eq!(jobs.len(), 1, "one job of {name}: {jobs:#?}");
    jobs[0].clone()
}

/// Holds `name` with a plain lease; returns its id.
async fn block(server: &Server, name: &str) -> String {
    let (status, answer) = server
        .post(
            &lock_path(name, "/acquire"),
            json!({"owner": "blocker", "ttl_ms": 120_000}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    str_of(&answer["lease"]["id"], "lease.id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_exit_code_passes_through_and_a_command_that_cannot_start_fails() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-run-");
        let not_executable = dir.path().join("not-executable");
        std::fs::write(&not_executable, "#!/bin/sh\necho hi\n").unwrap();
        let not_executable = not_executable.to_str().unwrap().to_owned();
        let cases: [(&str, Vec<&str>, i32, &str); 5] = [
            ("code/zero", vec!["true"], 0, "succeeded"),
            ("code/seven", vec!["sh", "-c", "exit 7"], 7, "failed"),
            (
                "code/term",
                vec!["sh", "-c", "kill -TERM $$"],
                143,
                "failed",
            ),
            (
                "code/missing",
                vec!["baton-test-no-such-command"],
                127,
                "failed",
            ),
            ("code/not-exec", vec![&not_executable], 126, "failed"),
        ];
        for (name, command, code, state) in cases {
            let exited = run(&server, dir.path(), name, &[], &command)
                .wait(PATIENCE)
                .await;
            assert_code(&exited, code, name);
            let job = only_job(&server, name).await;
            assert_eq!(job["state"], state, "{name}: {job}");
            assert_eq!(job["exit_code"], code, "{name}: {job}");
            // It ran under the lock, which is free again.
            assert!(job.get("started_at").is_some(), "{name}: {job}");
            let view = lock_view(&server, name).await;
            assert_eq!(view["holders"].as_array().map(Vec::len), Some(0), "{view}");
        }
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_output_passes_through_and_the_job_keeps_a_bounded_tail() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-run-");
        // `seq 1 35000`: about 200 KB of ASCII.
        let expected: String = (1..=35_000).map(|number| format!("{number}\n")).collect();
        assert!(expected.len() > 190_000);
        for (name, limit) in [("output/1000", Some(1000)), ("output/default", None)] {
            let limit_arg = limit.map(|limit: usize| limit.to_string());
            let args: Vec<&str> = match &limit_arg {
                Some(limit) => vec!["--output-max", limit],
                None => Vec::new(),
            };
            let exited = run(&server, dir.path(), name, &args, &["seq", "1", "35000"])
                .wait(PATIENCE)
                .await;
            assert_code(&exited, 0, name);
            assert!(
                exited.stdout == expected.as_bytes(),
                "{name}: baton run's stdout is the command's whole output ({} bytes, expected {})",
                exited.stdout.len(),
                expected.len()
            );
            let job = only_job(&server, name).await;
            let detail = job_detail(&server, str_of(&job["id"], "job.id")).await;
            let kept = limit.unwrap_or(65_536);
            let tail = str_of(&detail["output_tail"], "output_tail");
            assert_eq!(tail.len(), kept, "{name}: the tail is exactly {kept} bytes");
            assert!(
                tail == &expected[expected.len() - kept..],
                "{name}: the tail is the last {kept} bytes: ...{:?}",
                &tail[tail.len().saturating_sub(40)..]
            );
            assert_eq!(detail["job"]["output_bytes"], kept, "{}", detail["job"]);
        }
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_stops_the_command_with_124_and_a_busy_lock_gives_75() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-run-");

        // --timeout: 124, timed_out.
        let exited = run(
            &server,
            dir.path(),
            "timeout/sleep",
            &["--timeout", "1s", "--grace", "500ms"],
            &["sleep", "100"],
        )
        .wait(PATIENCE)
        .await;
        assert_code(&exited, 124, "--timeout");
        let job = only_job(&server, "timeout/sleep").await;
        assert_eq!(job["state"], "timed_out", "{job}");

        // --fail while busy: 75, the job skipped, the command never run.
        let name = "busy/lock";
        let blocker = block(&server, name).await;
        let exited = run(
            &server,
            dir.path(),
            name,
            &["--fail"],
            &["touch", "ran-fail"],
        )
        .wait(PATIENCE)
        .await;
        assert_code(&exited, 75, "--fail while busy");
        let job = only_job(&server, name).await;
        assert_eq!(job["state"], "skipped", "{job}");

        // --wait=1s while busy: 75 once the time is out, the job cancelled, the queue empty.
        let exited = run(
            &server,
            dir.path(),
            name,
            &["--wait=1s", "--owner", "impatient"],
            &["touch", "ran-wait"],
        )
        .wait(PATIENCE)
        .await;
        assert_code(&exited, 75, "--wait=1s while busy");
        let jobs = jobs_named(&server, name).await;
        let job = jobs
            .iter()
            .find(|job| job["owner"] == "impatient")
            .unwrap_or_else(|| panic!("{jobs:#?}"));
        assert_eq!(job["state"], "cancelled", "{job}");
        let view = lock_view(&server, name).await;
        assert_eq!(view["waiters"].as_array().map(Vec::len), Some(0), "{view}");

        let (status, _) = server
            .post(&format!("/v1/leases/{blocker}/release"), json!({}))
            .await;
        assert_eq!(status, 200);
        assert!(!dir.path().join("ran-fail").exists(), "--fail never ran it");
        assert!(
            !dir.path().join("ran-wait").exists(),
            "--wait=1s never ran it"
        );
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_and_sigterm_are_forwarded_to_a_running_command_and_the_job_is_cancelled() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-run-");
        let script = "trap 'echo got-INT >> log; exit 130' INT; \
             trap 'echo got-TERM >> log; exit 143' TERM; \
             echo ready >> log; while :; do sleep 0.1; done";
        for (signal, code, line) in [
            (Signal::SIGINT, 130, "got-INT"),
            (Signal::SIGTERM, 143, "got-TERM"),
        ] {
            let name = format!("signal/running-{}", signal.as_str());
            let log = dir.path().join("log");
            let _ = std::fs::remove_file(&log);
            let runner = run(
                &server,
                dir.path(),
                &name,
                &["--grace", "500ms"],
                &["sh", "-c", script],
            );
            eventually("the command ready", PATIENCE, async || {
                (file_lines(&log) == ["ready"]).then_some(())
            })
            .await;
            runner.signal(signal);
            let exited = runner.wait(PATIENCE).await;
            assert_code(&exited, code, &format!("{signal} while running"));
            assert_eq!(
                file_lines(&log),
                ["ready", line],
                "the command got {signal}"
            );
            let job = only_job(&server, &name).await;
            assert_eq!(job["state"], "cancelled", "{job}");
            assert_eq!(job["exit_code"], code, "{job}");
        }
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_and_sigterm_while_waiting_cancel_the_job_and_leave_the_queue() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-run-");
        let name = "signal/waiting";
        let blocker = block(&server, name).await;
        for (signal, code) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
            let owner = format!("waiter-{}", signal.as_str());
            let runner = run(
                &server,
                dir.path(),
                name,
                &["--wait", "--owner", &owner],
                &["touch", "ran"],
            );
            eventually(&format!("{owner} queued"), PATIENCE, async || {
                let view = lock_view(&server, name).await;
                let waiters = view["waiters"].as_array()?.clone();
                waiters
                    .iter()
                    .any(|waiter| waiter["owner"] == owner.as_str())
                    .then_some(())
            })
            .await;
            runner.signal(signal);
            let exited = runner.wait(PATIENCE).await;
            assert_code(&exited, code, &format!("{signal} while waiting"));
            // Recorded before baton run exited: no wait needed.
            let jobs = jobs_named(&server, name).await;
            let job = jobs
                .iter()
                .find(|job| job["owner"] == owner.as_str())
                .unwrap_or_else(|| panic!("{jobs:#?}"));
            assert_eq!(job["state"], "cancelled", "{job}");
            let view = lock_view(&server, name).await;
            assert_eq!(
                view["waiters"].as_array().map(Vec::len),
                Some(0),
                "the ticket left the queue: {view}"
            );
        }
        let (status, _) = server
            .post(&format!("/v1/leases/{blocker}/release"), json!({}))
            .await;
        assert_eq!(status, 200);
        let view = lock_view(&server, name).await;
        assert_eq!(view["holders"].as_array().map(Vec::len), Some(0), "{view}");
        assert!(
            !dir.path().join("ran").exists(),
            "a cancelled wait never runs"
        );
    })
    .await
    .expect("the test took too long");
}
