//! `baton parallel --local` with real processes: the `-j` limit holds, `-j 1` keeps input
//! order, each job's output is printed whole and never interleaved, failures are counted in
//! the exit code (81) and the JSON results, retries, timeouts and `--halt-on-failure now|soon`
//! do what they say, arguments come from `:::`, a file or standard input, jobs from JSON lines
//! or TOML, and `--line-buffer` streams whole lines prefixed by the job's name.
//!
//! Every wait is bounded; no assertion is about how long something took.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod harness;

use std::path::Path;
use std::time::Duration;

use harness::{Exited, Server, assert_code, workdir};
use serde_json::Value;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The bound on one `baton parallel` finishing.
const PATIENCE: Duration = Duration::from_secs(60);

/// `baton parallel --local ARGS…` in `dir`, waited for.
async fn parallel(server: &Server, dir: &Path, args: &[&str]) -> Exited {
    let mut argv = vec!["parallel", "--local"];
    argv.extend_from_slice(args);
    server.spawn_baton(&argv, Some(dir)).wait(PATIENCE).await
}

fn json_results(exited: &Exited) -> Vec<Value> {
    let value: Value = serde_json::from_slice(&exited.stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is not JSON ({error}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&exited.stdout),
            exited.stderr
        )
    });
    value.as_array().expect("a JSON array").clone()
}

fn states(results: &[Value]) -> Vec<String> {
    results
        .iter()
        .map(|result| result["state"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// A shell snippet that logs `S <ns>` when it starts and `E <ns>` when it ends, in `log`.
pub fn logged(log: &Path, body: &str) -> String {
    let log = log.display();
    format!("echo S $(date +%s%N) >> {log}; {body}; echo E $(date +%s%N) >> {log}")
}

/// The most intervals open at once in a log of `S t` / `E t` lines (ends before starts at the
/// same instant). Each logged interval lies inside its process's life, so this never
/// overstates the real overlap.
pub fn max_overlap(lines: &[String]) -> usize {
    let mut events: Vec<(u128, i32)> = lines
        .iter()
        .map(|line| {
            let (kind, time) = line.split_once(' ').expect("`S t` or `E t`");
            let time: u128 = time.trim().parse().expect("nanoseconds");
            (time, if kind == "S" { 1 } else { -1 })
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
async fn never_more_than_j_jobs_run_at_once() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-parallel-");
        let log = dir.path().join("log");
        let script = logged(&log, "sleep 0.3");
        let exited = parallel(
            &server,
            dir.path(),
            &[
                "-j", "3", "--", "sh", "-c", &script, "{}", ":::", "1", "2", "3", "4", "5", "6",
                "7", "8",
            ],
        )
        .await;
        assert_code(&exited, 0, "eight jobs, three at a time");
        let lines = harness::file_lines(&log);
        assert_eq!(lines.len(), 16, "every job logged its start and end");
        let most = max_overlap(&lines);
        assert!(most <= 3, "{most} jobs ran at once with -j 3");
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn j1_runs_the_jobs_one_by_one_in_input_order() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-parallel-");
        let log = dir.path().join("order");
        let script = format!("echo {{}} >> {}", log.display());
        let inputs = ["e", "b", "d", "a", "c", "f"];
        let mut args = vec!["-j", "1", "--", "sh", "-c", &script, ":::"];
        args.extend_from_slice(&inputs);
        let exited = parallel(&server, dir.path(), &args).await;
        assert_code(&exited, 0, "-j 1");
        assert_eq!(harness::file_lines(&log), inputs);
        let headers: Vec<String> = String::from_utf8_lossy(&exited.stdout)
            .lines()
            .filter(|line| line.starts_with("== "))
            .map(|line| line.split_whitespace().nth(1).unwrap_or("").to_owned())
            .collect();
        assert_eq!(
            headers,
            ["sh-1-e", "sh-2-b", "sh-3-d", "sh-4-a", "sh-5-c", "sh-6-f"]
        );
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_jobs_output_is_printed_whole_never_interleaved() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-parallel-");
        let script = "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do echo \"line $0 $i\"; sleep 0.02; done";
        let exited = parallel(
            &server,
            dir.path(),
            &[
                "-j", "4", "--", "sh", "-c", script, "{}", ":::", "a", "b", "c", "d", "e", "f",
            ],
        )
        .await;
        assert_code(&exited, 0, "six chatty jobs");
        let stdout = String::from_utf8_lossy(&exited.stdout).into_owned();
        // The job of each line, in order; each job must form one contiguous run.
        let owners: Vec<&str> = stdout
            .lines()
            .filter_map(|line| line.strip_prefix("line "))
            .map(|rest| rest.split(' ').next().unwrap_or(""))
            .collect();
        assert_eq!(owners.len(), 6 * 15, "every line printed:\n{stdout}");
        let mut runs: Vec<&str> = owners.clone();
        runs.dedup();
        assert_eq!(runs.len(), 6, "each job's lines are contiguous:\n{stdout}");
        // And each run follows its own header.
        let mut current = None;
        for line in stdout.lines() {
            if let Some(header) = line.strip_prefix("== ") {
                current = Some(header.split(' ').next().unwrap_or("").to_owned());
            } else if line.starts_with("line ") {
                assert!(current.is_some(), "output before any header:\n{stdout}");
            }
        }
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_and_the_exit_code_says_so() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-parallel-");
        let exited = parallel(
            &server,
            dir.path(),
            &[
                "--json",
                "-j",
                "2",
                "--",
                "sh",
                "-c",
                "echo out $0; exit $0",
                "{}",
                ":::",
                "0",
                "3",
                "0",
                "5",
            ],
        )
        .await;
        assert_code(&exited, 81, "two of four jobs fail");
        let results = json_results(&exited);
        assert_eq!(
            states(&results),
            ["succeeded", "failed", "succeeded", "failed"]
        );
        let codes: Vec<i64> = results
            .iter()
            .map(|result| result["exit_code"].as_i64().unwrap_or(-1))
            .collect();
        assert_eq!(codes, [0, 3, 0, 5]);
        assert_eq!(results[1]["output_tail"], "out 3\n");
        assert_eq!(results[1]["args"], serde_json::json!(["3"]));

        let all_good = parallel(&server, dir.path(), &["--", "true", ":::", "a", "b"]).await;
        assert_code(&all_good, 0, "every job succeeded");
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_is_retried() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-parallel-");
        // Fails the first time (leaving a marker), succeeds the second.
        let script =
            "if [ -e marker.$0 ]; then echo second; else touch marker.$0; echo first; exit 1; fi";
        let exited = parallel(
            &server,
            dir.path(),
            &[
                "--json",
                "--retries",
                "1",
                "--",
                "sh",
                "-c",
                script,
                "{}",
                ":::",
                "x",
                "y",
            ],
        )
        .await;
        assert_code(&exited, 0, "both succeed on their retry");
        let results = json_results(&exited);
        assert_eq!(states(&results), ["succeeded", "succeeded"]);
        for result in &results {
            assert_eq!(result["attempts"], 2, "{result}");
            assert_eq!(result["output_tail"], "second\n", "{result}");
        }

        let no_retry = parallel(
            &server,
            dir.path(),
            &["--json", "--", "sh", "-c", "exit 1", ":::", "z"],
        )
        .await;
        assert_code(&no_retry, 81, "without --retries a failure stays");
        assert_eq!(json_results(&no_retry)[0]["attempts"], 1);
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_its_timeout_is_stopped() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-parallel-");
        let exited = parallel(
            &server,
            dir.path(),
            &[
                "--json",
                "--timeout",
                "300ms",
                "--grace",
                "1s",
                "--",
                "sh",
                "-c",
                "if [ $0 = slow ]; then sleep 60; fi",
                "{}",
                ":::",
                "slow",
                "fast",
            ],
        )
        .await;
        assert_code(&exited, 81, "one job timed out");
        assert_eq!(states(&json_results(&exited)), ["timed_out", "succeeded"]);
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_on_failure_now_stops_the_running_jobs_and_starts_no_more() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-parallel-");
        // The first job fails once the two sleepers have written their pid files.
        let script = "if [ $0 = bad ]; then while [ ! -e pid.s1 ] || [ ! -e pid.s2 ]; do sleep 0.05; done; exit 1; fi; \
                      sleep 60 & echo $! > pid.$0; wait";
        let exited = parallel(
            &server,
            dir.path(),
            &[
                "--json",
                "-j",
                "3",
                "--grace",
                "2s",
                "--halt-on-failure",
                "now",
                "--",
                "sh",
                "-c",
                script,
                "{}",
                ":::",
                "bad",
                "s1",
                "s2",
                "later1",
                "later2",
            ],
        )
        .await;
        assert_code(&exited, 81, "halted after a failure");
        assert_eq!(
            states(&json_results(&exited)),
            ["failed", "cancelled", "cancelled", "skipped", "skipped"]
        );
        for sleeper in ["s1", "s2"] {
            let pid: i32 = std::fs::read_to_string(dir.path().join(format!("pid.{sleeper}")))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            assert!(
                !harness::process_alive(pid),
                "the grandchild {pid} of {sleeper} is gone"
            );
        }
        assert!(!dir.path().join("pid.later1").exists(), "later1 never ran");
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_come_from_a_file_and_results_are_kept() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-parallel-");
        std::fs::write(dir.path().join("args"), "one\ntwo\n").unwrap();
        let results = dir.path().join("results");
        let exited = parallel(
            &server,
            dir.path(),
            &[
                "--args-file",
                "args",
                "--results",
                results.to_str().unwrap(),
                "--name",
                "greet",
                "--",
                "sh",
                "-c",
                "echo hello $0; echo oops $0 >&2",
                "{}",
            ],
        )
        .await;
        assert_code(&exited, 0, "two jobs from a file");
        let read = |path: &str| std::fs::read_to_string(results.join(path)).unwrap();
        assert_eq!(read("1-greet-1-one/stdout"), "hello one\n");
        assert_eq!(read("1-greet-1-one/stderr"), "oops one\n");
        assert_eq!(read("2-greet-2-two/stdout"), "hello two\n");
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_file_gives_names_commands_and_environments() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-parallel-");
        std::fs::write(
            dir.path().join("jobs"),
            concat!(
                r#"{"name": "first", "command": ["sh", "-c", "echo $GREETING"], "env": {"GREETING": "hi"}}"#,
                "\n\n",
                r#"{"command": ["sh", "-c", "exit 2"]}"#,
                "\n"
            ),
        )
        .unwrap();
        let exited = parallel(&server, dir.path(), &["--json", "--jobs-file", "jobs"]).await;
        assert_code(&exited, 81, "the second job fails");
        let results = json_results(&exited);
        assert_eq!(results[0]["name"], "first");
        assert_eq!(results[0]["output_tail"], "hi\n");
        assert_eq!(results[1]["name"], "sh-2");
        assert_eq!(results[1]["exit_code"], 2);
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_toml_jobs_file_gives_names_commands_and_environments() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-parallel-");
        std::fs::write(
            dir.path().join("jobs.toml"),
            r#"
# Two jobs: one named, with an environment; one not, failing.
[[job]]
name = "first"
command = ["sh", "-c", "echo $GREETING $OTHER"]
env = { GREETING = "hi", OTHER = "there" }

[[job]]
command = ["sh", "-c", "exit 2"]
"#,
        )
        .unwrap();
        let exited = parallel(&server, dir.path(), &["--json", "--jobs-file", "jobs.toml"]).await;
        assert_code(&exited, 81, "the second job fails");
        let results = json_results(&exited);
        assert_eq!(results.len(), 2, "{results:?}");
        assert_eq!(results[0]["name"], "first");
        assert_eq!(results[0]["state"], "succeeded");
        assert_eq!(results[0]["output_tail"], "hi there\n");
        assert_eq!(results[1]["name"], "sh-2");
        assert_eq!(results[1]["exit_code"], 2);

        // The same validation as JSON lines: an empty command names the file and the job.
        std::fs::write(
            dir.path().join("bad.toml"),
            "[[job]]\ncommand = [\"true\"]\n\n[[job]]\nname = \"empty\"\ncommand = []\n",
        )
        .unwrap();
        let bad = parallel(&server, dir.path(), &["--jobs-file", "bad.toml"]).await;
        assert_code(&bad, 64, "an empty command");
        assert!(
            bad.stderr.contains("bad.toml job 2: empty command"),
            "{}",
            bad.stderr
        );
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_buffer_streams_whole_lines_prefixed_by_the_jobs_name() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-parallel-");
        // Each line waits for a go file the test creates once it saw the previous line in
        // baton's output, so the lines of x and y must come out alternately, each while its
        // job still runs. The first line of each is written in two pieces. With `--json` the
        // jobs' output goes to stderr, which the test can read as it arrives.
        let script = "wait_for() { while [ ! -e \"$1\" ]; do sleep 0.02; done; }; \
                      wait_for go.$0.1; printf \"$0 one\"; sleep 0.1; echo ' whole'; \
                      wait_for go.$0.2; echo \"$0 two\" >&2; \
                      wait_for go.$0.3; echo \"$0 three\"";
        let process = server.spawn_baton(
            &[
                "parallel",
                "--local",
                "--json",
                "--line-buffer",
                "--name",
                "w",
                "-j",
                "2",
                "--",
                "sh",
                "-c",
                script,
                "{}",
                ":::",
                "x",
                "y",
            ],
            Some(dir.path()),
        );
        let steps = [
            ("x", 1, "w-1-x: x one whole"),
            ("y", 1, "w-2-y: y one whole"),
            ("x", 2, "w-1-x: x two"),
            ("y", 2, "w-2-y: y two"),
            ("x", 3, "w-1-x: x three"),
            ("y", 3, "w-2-y: y three"),
        ];
        for (job, step, line) in steps {
            std::fs::write(dir.path().join(format!("go.{job}.{step}")), "").unwrap();
            harness::eventually(line, PATIENCE, async || {
                process
                    .stderr_text()
                    .lines()
                    .any(|seen| seen == line)
                    .then_some(())
            })
            .await;
        }
        let exited = process.wait(PATIENCE).await;
        assert_code(&exited, 0, "two streamed jobs");
        assert_eq!(states(&json_results(&exited)), ["succeeded", "succeeded"]);
        // Every line is whole and prefixed; the jobs' lines alternate as they were released.
        let job_lines: Vec<&str> = exited
            .stderr
            .lines()
            .filter(|line| !line.starts_with("baton parallel: "))
            .collect();
        let expected: Vec<&str> = steps.iter().map(|(_, _, line)| *line).collect();
        assert_eq!(job_lines, expected, "stderr:\n{}", exited.stderr);
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_come_from_standard_input() {
    use tokio::io::AsyncWriteExt;
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = workdir("baton-parallel-");
        let mut child = tokio::process::Command::new(harness::BATON)
            .args([
                "parallel",
                "--local",
                "--json",
                "-j",
                "1",
                "--",
                "sh",
                "-c",
                "echo got $0",
                "{}",
            ])
            .env_remove("BATON_URL")
            .env_remove("BATON_API_KEY")
            .env_remove("BATON_OWNER")
            .env_remove("BATON_LOG")
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("baton runs");
        let mut stdin = child.stdin.take().expect("a stdin pipe");
        stdin.write_all(b"alpha\nbeta\n\ngamma\n").await.unwrap();
        drop(stdin);
        let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .expect("baton parallel ended in time")
            .expect("baton parallel was waited for");
        let exited = Exited {
            code: output.status.code(),
            signal: None,
            stdout: output.stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        assert_code(&exited, 0, "three jobs from standard input");
        let results = json_results(&exited);
        let args: Vec<&Value> = results.iter().map(|result| &result["args"]).collect();
        assert_eq!(
            args,
            [
                &serde_json::json!(["alpha"]),
                &serde_json::json!(["beta"]),
                &serde_json::json!(["gamma"])
            ]
        );
        let tails: Vec<&str> = results
            .iter()
            .map(|result| result["output_tail"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(tails, ["got alpha\n", "got beta\n", "got gamma\n"]);
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_on_failure_soon_lets_running_jobs_finish_and_starts_no_more() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-parallel-");
        // `bad` fails once `slow` runs; `slow` ends (successfully) only when the test, having
        // seen baton announce the halt, creates `release`; the others record that they ran.
        let script = "case $0 in \
                      bad) while [ ! -e started.slow ]; do sleep 0.02; done; exit 1;; \
                      slow) touch started.slow; while [ ! -e release ]; do sleep 0.02; done; echo slow done;; \
                      *) touch ran.$0;; esac";
        let process = server.spawn_baton(
            &[
                "parallel",
                "--local",
                "--json",
                "-j",
                "2",
                "--halt-on-failure",
                "soon",
                "--",
                "sh",
                "-c",
                script,
                "{}",
                ":::",
                "bad",
                "slow",
                "later1",
                "later2",
            ],
            Some(dir.path()),
        );
        harness::eventually("the halt to be announced", PATIENCE, async || {
            process
                .stderr_text()
                .contains("starting no more jobs")
                .then_some(())
        })
        .await;
        std::fs::write(dir.path().join("release"), "").unwrap();
        let exited = process.wait(PATIENCE).await;
        assert_code(&exited, 81, "halted after a failure");
        let results = json_results(&exited);
        assert_eq!(
            states(&results),
            ["failed", "succeeded", "skipped", "skipped"]
        );
        assert_eq!(results[1]["exit_code"], 0);
        assert_eq!(results[1]["output_tail"], "slow done\n");
        for later in ["later1", "later2"] {
            assert!(
                !dir.path().join(format!("ran.{later}")).exists(),
                "{later} never ran"
            );
        }
    })
    .await
    .expect("the test finished in time");
}
