//! `baton parallel` against a real server: every job is a job record of one batch, `--slots`
//! holds one limit across two `baton parallel` processes, and SIGINT stops every job's process
//! tree (grandchildren included) and records the jobs `cancelled`. With no server answering,
//! the jobs run locally (a note says so), unless `--slots` asks for a fleet-wide limit: then
//! nothing runs and the exit code is 69.
//!
//! Every wait is bounded; no assertion is about how long something took.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod harness;

use std::time::Duration;

use harness::{Exited, Server, assert_code, eventually, workdir};
use nix::sys::signal::Signal;
use serde_json::Value;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The bound on one `baton parallel` finishing, or one condition becoming true.
const PATIENCE: Duration = Duration::from_secs(60);

/// The batch id `baton parallel` announced on stderr.
fn batch_of(stderr: &str) -> String {
    stderr
        .split_whitespace()
        .skip_while(|word| *word != "batch")
        .nth(1)
        .map(|word| word.trim_end_matches(':').to_owned())
        .unwrap_or_else(|| panic!("no batch announced:\n{stderr}"))
}

async fn batch_jobs(server: &Server, batch: &str) -> Vec<Value> {
    let (status, body) = server.get(&format!("/v1/jobs?batch={batch}")).await;
    assert_eq!(status, 200, "{body}");
    body["jobs"].as_array().expect("a jobs array").clone()
}

/// The most intervals open at once in a log of `S t` / `E t` lines.
fn max_overlap(lines: &[String]) -> usize {
    let mut events: Vec<(u128, i32)> = lines
        .iter()
        .map(|line| {
            let (kind, time) = line.split_once(' ').expect("`S t` or `E t`");
            (
                time.trim().parse().expect("nanoseconds"),
                if kind == "S" { 1 } else { -1 },
            )
        })
        .collect();
    events.sort_unstable();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, delta) in events {
        open += delta;
        most = most.max(open);
    }
    usize::try_from(most).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_is_a_record_of_the_batch() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-parallel-");
        let exited = server
            .spawn_baton(
                &[
                    "parallel",
                    "--json",
                    "--name",
                    "rec",
                    "--",
                    "sh",
                    "-c",
                    "echo job $0 token $BATON_FENCING_TOKEN; exit $0",
                    "{}",
                    ":::",
                    "0",
                    "4",
                ],
                Some(dir.path()),
            )
            .wait(PATIENCE)
            .await;
        assert_code(&exited, 81, "one job fails");
        let batch = batch_of(&exited.stderr);
        let results: Vec<Value> = serde_json::from_slice(&exited.stdout).unwrap();
        let jobs = batch_jobs(&server, &batch).await;
        assert_eq!(jobs.len(), 2, "{jobs:#?}");
        for (result, (name, state, code)) in results
            .iter()
            .zip([("rec-1-0", "succeeded", 0), ("rec-2-4", "failed", 4)])
        {
            let id = result["job_id"].as_str().expect("a job id");
            let job = jobs
                .iter()
                .find(|job| job["id"] == id)
                .unwrap_or_else(|| panic!("job {id} in the batch: {jobs:#?}"));
            assert_eq!(job["name"], name);
            assert_eq!(job["state"], state);
            assert_eq!(job["exit_code"], code);
            let detail = harness::job_detail(&server, id).await;
            let tail = detail["output_tail"]
                .as_str()
                .or_else(|| detail["job"]["output_tail"].as_str())
                .unwrap_or_else(|| panic!("an output tail: {detail}"));
            assert!(tail.starts_with("job "), "{tail}");
            assert!(!tail.contains("token \n"), "the job had a token: {tail}");
        }
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_hold_one_limit_across_two_parallel_processes() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-parallel-");
        let log = dir.path().join("log");
        let script = format!(
            "echo S $(date +%s%N) >> {log}; sleep 0.3; echo E $(date +%s%N) >> {log}",
            log = log.display()
        );
        let spawn = |name: &str| {
            server.spawn_baton(
                &[
                    "parallel", "-j", "3", "--slots", "build:2", "--name", name, "--", "sh", "-c",
                    &script, ":::", "1", "2", "3", "4",
                ],
                Some(dir.path()),
            )
        };
        let first = spawn("one");
        let second = spawn("two");
        let first = first.wait(PATIENCE).await;
        let second = second.wait(PATIENCE).await;
        assert_code(&first, 0, "the first batch");
        assert_code(&second, 0, "the second batch");
        let lines = harness::file_lines(&log);
        assert_eq!(lines.len(), 16, "every job logged its start and end");
        let most = max_overlap(&lines);
        assert!(most <= 2, "{most} jobs ran at once under --slots build:2");
        for exited in [&first, &second] {
            let jobs = batch_jobs(&server, &batch_of(&exited.stderr)).await;
            assert_eq!(jobs.len(), 4, "{jobs:#?}");
            assert!(
                jobs.iter().all(|job| job["state"] == "succeeded"),
                "{jobs:#?}"
            );
        }
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_every_jobs_tree_and_records_them_cancelled() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-parallel-");
        let runner = server.spawn_baton(
            &[
                "parallel",
                "-j",
                "2",
                "--slots",
                "sig:2",
                "--grace",
                "2s",
                "--",
                "sh",
                "-c",
                "sleep 300 & echo $! > pid.$0; wait",
                "{}",
                ":::",
                "a",
                "b",
                "c",
            ],
            Some(dir.path()),
        );
        let pids: Vec<i32> =
            eventually("both running jobs wrote their pids", PATIENCE, async || {
                let read = |name: &str| {
                    std::fs::read_to_string(dir.path().join(name))
                        .ok()
                        .and_then(|text| text.trim().parse::<i32>().ok())
                };
                Some(vec![read("pid.a")?, read("pid.b")?])
            })
            .await;
        let batch = batch_of(&runner.stderr_text());
        runner.signal(Signal::SIGINT);
        let exited = runner.wait(PATIENCE).await;
        assert_code(&exited, 130, "interrupted");
        for pid in pids {
            assert!(!harness::process_alive(pid), "the grandchild {pid} is gone");
        }
        assert!(
            !dir.path().join("pid.c").exists(),
            "the third job never ran"
        );
        let jobs = batch_jobs(&server, &batch).await;
        assert_eq!(jobs.len(), 2, "two jobs started: {jobs:#?}");
        assert!(
            jobs.iter().all(|job| job["state"] == "cancelled"),
            "{jobs:#?}"
        );
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_lease_cannot_be_renewed_is_stopped_and_reported_lost() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut server = Server::start(&[]).await;
        let dir = workdir("baton-parallel-");
        let runner = server.spawn_baton(
            &[
                "parallel",
                "--json",
                "--ttl",
                "3s",
                "--grace",
                "500ms",
                "--",
                "sh",
                "-c",
                "sleep 300 & echo $! > pid.$0; wait",
                "{}",
                ":::",
                "a",
            ],
            Some(dir.path()),
        );
        let pid: i32 = eventually("the job wrote its pid", PATIENCE, async || {
            std::fs::read_to_string(dir.path().join("pid.a"))
                .ok()
                .and_then(|text| text.trim().parse().ok())
        })
        .await;
        // Cut off from its server, the job's lease can no longer be renewed.
        server.kill9().await;
        let exited = runner.wait(PATIENCE).await;
        assert_code(&exited, 81, "the job was lost");
        let results: Vec<Value> = serde_json::from_slice(&exited.stdout).unwrap();
        assert_eq!(results[0]["state"], "lost", "{results:#?}");
        assert!(!harness::process_alive(pid), "the grandchild {pid} is gone");
    })
    .await
    .expect("the test finished in time");
}

/// `baton parallel ARGS…` in `dir` with `BATON_URL` pointing where no server answers.
async fn parallel_without_server(dir: &std::path::Path, args: &[&str]) -> Exited {
    let mut command = tokio::process::Command::new(harness::BATON);
    command
        .arg("parallel")
        .args(args)
        .env("BATON_URL", "http://127.0.0.1:1")
        .env_remove("BATON_API_KEY")
        .env_remove("BATON_OWNER")
        .env_remove("BATON_LOG")
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(PATIENCE, command.output())
        .await
        .expect("baton parallel ended in time")
        .expect("baton parallel runs");
    Exited {
        code: output.status.code(),
        signal: None,
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reachable_server_the_jobs_run_locally_and_a_note_says_so() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = workdir("baton-parallel-");
        let exited = parallel_without_server(
            dir.path(),
            &[
                "--json",
                "--",
                "sh",
                "-c",
                "echo ran $0",
                "{}",
                ":::",
                "a",
                "b",
            ],
        )
        .await;
        assert_code(&exited, 0, "local fallback");
        let results: Value = serde_json::from_slice(&exited.stdout).unwrap_or_else(|error| {
            panic!(
                "stdout is not JSON ({error}):\n{}",
                String::from_utf8_lossy(&exited.stdout)
            )
        });
        let results = results.as_array().expect("a JSON array");
        assert_eq!(results.len(), 2);
        for (result, arg) in results.iter().zip(["a", "b"]) {
            assert_eq!(result["state"], "succeeded", "{result}");
            assert_eq!(result["output_tail"], format!("ran {arg}\n"), "{result}");
            assert!(result.get("job_id").is_none(), "no job record: {result}");
        }
        assert_eq!(
            exited.stderr.matches("no baton server at").count(),
            1,
            "one note about the fallback:\n{}",
            exited.stderr
        );
        assert!(
            exited.stderr.contains("running locally"),
            "{}",
            exited.stderr
        );
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_without_a_reachable_server_fail_instead_of_running_unlimited() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = workdir("baton-parallel-");
        let exited = parallel_without_server(
            dir.path(),
            &[
                "--slots", "build:1", "--", "touch", "ran.{}", ":::", "a", "b",
            ],
        )
        .await;
        assert_code(&exited, 69, "--slots needs the server");
        assert!(
            !exited.stderr.contains("running locally"),
            "{}",
            exited.stderr
        );
        for arg in ["a", "b"] {
            assert!(
                !dir.path().join(format!("ran.{arg}")).exists(),
                "job {arg} must not run without its fleet-wide limit"
            );
        }
    })
    .await
    .expect("the test finished in time");
}
