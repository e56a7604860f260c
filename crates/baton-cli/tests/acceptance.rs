//! Acceptance: the scenarios of the field reports (`shared/field-reports/000`–`004`) and the
//! defects users met in them, run the way users run them: shell scripts and `baton` processes
//! against a real `baton server`, with short but realistic timings, and assertions on what the
//! user would check (who ran, overlaps from recorded timestamps, exit codes, job records).
//!
//! | test | field report / defect | what a user would check |
//! | --- | --- | --- |
//! | `token_pass_*` | 000 token pass | a shared counter under `baton acquire`/`release` with a `trap` is exact with one script killed -9 mid-section; the others carry on after ttl + lock-delay |
//! | `single_writer_skip_*`, `single_writer_coalesce_*` | 001 single writer | a job longer than its period on two hosts never overlaps, and every request is accounted for |
//! | `hot_standbys_*` | 001 + defects 1, 2 | standbys at the smallest ttl: exactly one takes over when the active is killed, and keeps running |
//! | `runbook_concurrency_*` | 002 | capacity 2, five jobs: `baton status`/`baton jobs` show two running and the rest waiting with positions, at every sample |
//! | `fan_out_*` | 003 | 30 jobs, `-j 10`: collated output, summary, failures counted; `-j 1` the same records in order |
//! | `singleton_*` | 004 | a second `--fail` run exits 75 naming the holder; the API answers 409 `busy`; the running instance is found |
//! | `standby_that_waited_longer_than_its_ttl_*` | defect 1 | the documented hot-standby recipe runs the standby |
//! | `parallel_slots_*` | defect 1 | `baton parallel --slots inst:1` with jobs waiting longer than the ttl: none `lost` |
//! | `short_ttl_*` | defect 2 | every ttl the CLI accepts works; a smaller one is a usage error |
//! | `waiter_that_left_*` | defect 3 | a waiter interrupted or killed while queued is never granted; the next live waiter is |
//! | `paused_runner_*` | defect 4 | `kill -STOP` of `baton run` past its ttl: its command stops before the lease ends |
//!
//! Every wait is bounded; no assertion is on a duration except generous bounds a defect misses.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod harness;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use harness::{
    BATON, Server, assert_code, eventually, file_lines, jobs_named, lock_path, millis, str_of,
    u64_of, workdir,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// The bound on a whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(150);
/// The bound on one process finishing, or one condition becoming true.
const PATIENCE: Duration = Duration::from_secs(45);
/// The smallest ttl `baton run` accepts (docs/cli.md, "The ttl rule").
const MIN_TTL: &str = "2s";
/// The server's default lock-delay after an unclean end (docs/cli.md).
const LOCK_DELAY_MS: i64 = 1_000;

// ----- shell scripts as hosts ---------------------------------------------------------------

/// A shell script running as one "host": `sh -c SCRIPT` in its own process group, with the
/// `baton` under test first on its `PATH` and `BATON_URL` set. Its output goes to
/// `NAME.out`/`NAME.err` in the working folder, for the failure messages. Dropping it kills
/// its whole group.
struct Script {
    name: String,
    dir: PathBuf,
    child: tokio::process::Child,
    pid: i32,
}

fn path_with_baton() -> String {
    let bin = Path::new(BATON).parent().expect("baton's folder");
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    )
}

fn spawn_script(server: &Server, dir: &Path, name: &str, script: &str) -> Script {
    let out = std::fs::File::create(dir.join(format!("{name}.out"))).expect("stdout file");
    let err = std::fs::File::create(dir.join(format!("{name}.err"))).expect("stderr file");
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("PATH", path_with_baton())
        .env("BATON_URL", &server.base)
        .env("W", name)
        .env_remove("BATON_API_KEY")
        .env_remove("BATON_OWNER")
        .env_remove("BATON_LOG")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    let child = command.spawn().expect("start sh");
    let pid = i32::try_from(child.id().expect("a pid")).expect("pid fits");
    Script {
        name: name.to_owned(),
        dir: dir.to_owned(),
        child,
        pid,
    }
}

impl Script {
    fn output(&self) -> String {
        let read = |suffix: &str| {
            std::fs::read_to_string(self.dir.join(format!("{}.{suffix}", self.name)))
                .unwrap_or_default()
        };
        format!("stdout:\n{}\nstderr:\n{}", read("out"), read("err"))
    }

    /// Waits at most `limit` for the script to exit; returns its exit code.
    async fn wait(&mut self, limit: Duration) -> i32 {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => status.code().unwrap_or(-1),
            Ok(Err(error)) => panic!("cannot wait for script {}: {error}", self.name),
            Err(_) => panic!(
                "script {} did not exit within {limit:?}; {}",
                self.name,
                self.output()
            ),
        }
    }

    /// Sends `signal` to the whole process group (the script and everything it started).
    fn signal_group(&self, signal: Signal) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.pid), signal);
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        self.signal_group(Signal::SIGKILL);
    }
}

// ----- what the user reads back -------------------------------------------------------------

/// `baton ARGS… --json` run to its end against `server`; its exit code and parsed stdout
/// (`Value::Null` when stdout is empty).
async fn baton_json(server: &Server, args: &[&str]) -> (i32, Value, String) {
    let mut argv: Vec<&str> = args.to_vec();
    argv.push("--json");
    let exited = server.spawn_baton(&argv, None).wait(PATIENCE).await;
    let text = String::from_utf8_lossy(&exited.stdout).into_owned();
    let value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("baton {args:?} --json printed {text:?}: {error}"))
    };
    (exited.code.unwrap_or(-1), value, exited.stderr)
}

/// `GET /v1/locks/{name}/history`: past holds, newest first.
async fn history(server: &Server, name: &str) -> Vec<Value> {
    let (status, body) = server.get(&lock_path(name, "/history")).await;
    assert_eq!(status, 200, "history of {name}: {body}");
    body["entries"].as_array().expect("entries").clone()
}

/// Intervals `[start, end]` in nanoseconds from lines `WHO start NS` / `WHO end NS` (a start
/// without its end, e.g. of a killed process, is closed by `open_end`).
fn intervals(lines: &[String], open_end: i128) -> Vec<(String, i128, i128)> {
    let mut open: std::collections::HashMap<String, i128> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for line in lines {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [who, what, at] = parts[..] else {
            panic!("bad trace line {line:?}");
        };
        let at: i128 = at
            .parse()
            .unwrap_or_else(|_| panic!("bad time in {line:?}"));
        match what {
            "start" => {
                assert!(
                    open.insert(who.to_owned(), at).is_none(),
                    "{who} started twice"
                );
            }
            "end" => {
                let start = open
                    .remove(who)
                    .unwrap_or_else(|| panic!("{who} ended unstarted"));
                out.push((who.to_owned(), start, at));
            }
            _ => panic!("bad trace line {line:?}"),
        }
    }
    for (who, start) in open {
        out.push((who, start, open_end));
    }
    out.sort_by_key(|interval| interval.1);
    out
}

/// Fails the test if any two intervals overlap.
fn assert_no_overlap(intervals: &[(String, i128, i128)], what: &str) {
    for pair in intervals.windows(2) {
        assert!(
            pair[0].2 <= pair[1].1,
            "{what}: {} ran until {} but {} started at {} (overlap of {} µs): {intervals:?}",
            pair[0].0,
            pair[0].2,
            pair[1].0,
            pair[1].1,
            (pair[0].2 - pair[1].1) / 1_000
        );
    }
}

fn state(job: &Value) -> &str {
    str_of(&job["state"], "job.state")
}

fn count_state(jobs: &[Value], wanted: &str) -> usize {
    jobs.iter().filter(|job| state(job) == wanted).count()
}

/// Shell that appends `$W start NS` and `$W end NS` around `BODY` to `FILE`.
fn traced(file: &str, body: &str) -> String {
    format!(
        "echo \"$W-$BATON_FENCING_TOKEN start $(date +%s%N)\" >> {file}; {body}; \
         echo \"$W-$BATON_FENCING_TOKEN end $(date +%s%N)\" >> {file}"
    )
}

fn now_nanos() -> i128 {
    i128::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos(),
    )
    .expect("fits")
}

// ----- 000: token pass ----------------------------------------------------------------------

/// Eight scripts each add 1 to a shared counter five times, in a read-modify-write section
/// under `baton acquire`/`release` with a `trap`. One of them is killed with SIGKILL in the
/// middle of its second section (its trap cannot run, its lease is never released). The
/// counter must be exact, and the others carry on once the dead holder's ttl and the
/// lock-delay have passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_pass_counter_is_exact_with_one_script_killed_mid_section() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-accept-000-");
        std::fs::write(dir.path().join("counter"), "0\n").unwrap();
        // A ttl well above the section (as a user would pick it): the section itself takes
        // milliseconds, but eight scripts starting `baton` processes on a loaded 2-core machine
        // can take a second or two between the grant and the release.
        let script = r#"
            n=0
            while [ $n -lt 5 ]; do
                env=$(baton acquire counter --ttl 5s --wait 90s --owner "$W" --print env) || exit 3
                eval "$env"
                trap 'baton release "$BATON_LEASE_ID" >/dev/null 2>&1' EXIT
                echo "$W start $(date +%s%N)" >> sections
                v=$(cat counter)
                if [ "$W" = w0 ] && [ $n = 1 ]; then touch victim-inside; sleep 120; fi
                sleep 0.01
                echo $((v + 1)) > "counter.$W" && mv "counter.$W" counter
                echo "$W $BATON_FENCING_TOKEN" >> increments
                echo "$W end $(date +%s%N)" >> sections
                baton release "$BATON_LEASE_ID" || exit 4
                trap - EXIT
                n=$((n + 1))
            done
        "#;
        let mut scripts: Vec<Script> = (0..8)
            .map(|index| spawn_script(&server, dir.path(), &format!("w{index}"), script))
            .collect();

        eventually("the victim inside its section", PATIENCE, async || {
            dir.path().join("victim-inside").exists().then_some(())
        })
        .await;
        scripts[0].signal_group(Signal::SIGKILL);
        let killed_at = now_nanos();
        let mut victim = scripts.remove(0);
        victim.wait(PATIENCE).await;

        for script in &mut scripts {
            let code = script.wait(PATIENCE * 2).await;
            assert_eq!(
                code,
                0,
                "script {} failed: {}",
                script.name,
                script.output()
            );
        }

        let increments = file_lines(&dir.path().join("increments"));
        let counter: usize = std::fs::read_to_string(dir.path().join("counter"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            counter,
            increments.len(),
            "the counter must count every increment made"
        );
        assert_eq!(
            counter,
            7 * 5 + 1,
            "seven scripts x 5, and the victim's first"
        );
        assert_no_overlap(
            &intervals(&file_lines(&dir.path().join("sections")), killed_at),
            "sections",
        );

        // The dead holder's lease expired; the next grant waited out the lock-delay.
        let holds = history(&server, "counter").await;
        let expired: Vec<&Value> = holds
            .iter()
            .filter(|hold| hold["end"] == "expired")
            .collect();
        assert_eq!(
            expired.len(),
            1,
            "exactly the victim's lease expired: {holds:#?}"
        );
        assert_eq!(expired[0]["owner"], "w0");
        let ended = millis(&expired[0]["ended_at"]);
        let victim_token = u64_of(&expired[0]["token"], "token");
        let next = holds
            .iter()
            .filter(|hold| u64_of(&hold["token"], "token") > victim_token)
            .map(|hold| millis(&hold["granted_at"]))
            .min()
            .expect("a grant after the victim's");
        assert!(
            next >= ended + LOCK_DELAY_MS - 50,
            "the next grant ({next}) came before the lock-delay after the expiry ({ended})"
        );
        assert_eq!(
            holds
                .iter()
                .filter(|hold| hold["end"] == "released")
                .count(),
            36,
            "every other section released its lease: {holds:#?}"
        );
    })
    .await
    .expect("test timed out");
}

// ----- 001: single writer -------------------------------------------------------------------

/// Two hosts fire the same job every 400 ms for about 4 s; the job takes 1 s. Returns the job
/// records once every request is decided and every run over.
async fn two_hosts_fire(server: &Server, dir: &Path, name: &str, policy: &str) -> Vec<Value> {
    let body = traced("runs", "sleep 1");
    let script = format!(
        "i=0; while [ $i -lt 10 ]; do \
             baton run {name} {policy} --owner \"$W\" -- sh -c '{body}' >/dev/null 2>>fire.err & \
             sleep 0.4; i=$((i + 1)); \
         done; wait"
    );
    let mut hosts = [
        spawn_script(server, dir, "host-a", &script),
        spawn_script(server, dir, "host-b", &script),
    ];
    for host in &mut hosts {
        let code = host.wait(PATIENCE).await;
        assert_eq!(code, 0, "host {}: {}", host.name, host.output());
    }
    let jobs = jobs_named(server, name).await;
    assert_eq!(jobs.len(), 20, "every request is a job record: {jobs:#?}");
    jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_writer_skip_on_two_hosts_never_overlaps_and_skips_only_while_busy() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-accept-001s-");
        let jobs = two_hosts_fire(&server, dir.path(), "writer-skip", "--skip").await;
        let runs = intervals(&file_lines(&dir.path().join("runs")), i128::MAX);
        assert_no_overlap(&runs, "skip runs");
        let succeeded: Vec<&Value> = jobs
            .iter()
            .filter(|job| state(job) == "succeeded")
            .collect();
        let skipped: Vec<&Value> = jobs.iter().filter(|job| state(job) == "skipped").collect();
        assert_eq!(
            succeeded.len() + skipped.len(),
            20,
            "each request ran or was skipped: {jobs:#?}"
        );
        assert_eq!(
            runs.len(),
            succeeded.len(),
            "one traced run per succeeded job"
        );
        assert!(succeeded.len() >= 2, "4 s of requests, 1 s jobs: {jobs:#?}");
        // A request was skipped only while another run held the lock.
        for job in &skipped {
            let at = millis(&job["created_at"]);
            let busy = succeeded
                .iter()
                .any(|run| millis(&run["started_at"]) <= at && at <= millis(&run["finished_at"]));
            assert!(
                busy,
                "skipped while nothing ran: {job:#?} among {succeeded:#?}"
            );
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_writer_coalesce_on_two_hosts_never_overlaps_and_folds_into_one_follow_up() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-accept-001c-");
        let jobs = two_hosts_fire(&server, dir.path(), "writer-coalesce", "--coalesce").await;
        let runs = intervals(&file_lines(&dir.path().join("runs")), i128::MAX);
        assert_no_overlap(&runs, "coalesce runs");
        let succeeded: Vec<&Value> = jobs
            .iter()
            .filter(|job| state(job) == "succeeded")
            .collect();
        let coalesced: Vec<&Value> = jobs
            .iter()
            .filter(|job| state(job) == "coalesced")
            .collect();
        assert_eq!(
            succeeded.len() + coalesced.len(),
            20,
            "each request ran or folded: {jobs:#?}"
        );
        assert_eq!(runs.len(), succeeded.len());
        assert!(succeeded.len() >= 2, "{jobs:#?}");
        // Every folded request names a run that started after it was made.
        for job in &coalesced {
            let into = str_of(&job["coalesced_into"], "coalesced_into");
            let target = succeeded
                .iter()
                .find(|run| run["id"] == into)
                .unwrap_or_else(|| panic!("{job:#?} folded into a job that did not run"));
            assert!(millis(&target["started_at"]) >= millis(&job["created_at"]));
        }
        // At most one follow-up: after the last request, at most one run starts.
        let last_request = jobs
            .iter()
            .map(|job| millis(&job["created_at"]))
            .max()
            .unwrap();
        let started_after = succeeded
            .iter()
            .filter(|run| millis(&run["started_at"]) > last_request)
            .count();
        assert!(
            started_after <= 1,
            "{started_after} runs after the last request"
        );
    })
    .await
    .expect("test timed out");
}

/// The active writer and three hot standbys, all at the smallest ttl the CLI accepts. The
/// standbys wait (far longer than their ttl); when the active `baton run` is killed with
/// SIGKILL, exactly one standby takes over, and it keeps the lock through many renewals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_standbys_at_the_smallest_ttl_exactly_one_takes_over_when_the_active_is_killed() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-accept-001h-");
        let body = "echo \"$W\" >> ran; while true; do date +%s%N >> \"beat.$W\"; sleep 0.1; done";
        let run = |who: &str| {
            spawn_script(
                &server,
                dir.path(),
                who,
                &format!("exec baton run writer --ttl {MIN_TTL} --owner {who} -- sh -c '{body}'"),
            )
        };
        let active = run("active");
        eventually("the active running", PATIENCE, async || {
            (file_lines(&dir.path().join("ran")) == ["active"]).then_some(())
        })
        .await;
        let mut standbys = vec![run("s1"), run("s2"), run("s3")];
        eventually("three standbys queued", PATIENCE, async || {
            let lock = harness::lock_view(&server, "writer").await;
            (lock["waiters"].as_array().map(Vec::len) == Some(3)).then_some(())
        })
        .await;
        // Standbys wait several ttls before the active dies: a grant after a long wait.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let active_pid = active.pid;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(active_pid), Signal::SIGKILL).unwrap();

        let took_over = eventually("a standby running", PATIENCE, async || {
            let ran = file_lines(&dir.path().join("ran"));
            (ran.len() >= 2).then(|| ran[1].clone())
        })
        .await;
        // It keeps the lock through several of its ttls, and nobody else runs.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let ran = file_lines(&dir.path().join("ran"));
        assert_eq!(
            ran,
            ["active".to_owned(), took_over.clone()],
            "exactly one took over"
        );
        let beats = file_lines(&dir.path().join(format!("beat.{took_over}")));
        let last: i128 = beats.last().unwrap().parse().unwrap();
        assert!(
            now_nanos() - last < 2_000_000_000,
            "the standby that took over is still running"
        );
        let jobs = jobs_named(&server, "writer").await;
        assert_eq!(
            count_state(&jobs, "lost"),
            1,
            "only the killed active is lost: {jobs:#?}"
        );
        assert_eq!(count_state(&jobs, "running"), 1, "{jobs:#?}");
        assert_eq!(count_state(&jobs, "waiting"), 2, "{jobs:#?}");
        for standby in &mut standbys {
            if standby.name != took_over {
                assert!(
                    standby.child.try_wait().unwrap().is_none(),
                    "{} left",
                    standby.name
                );
            }
        }
    })
    .await
    .expect("test timed out");
}

// ----- 002: runbook concurrency -------------------------------------------------------------

/// What `baton status NAME` and `baton jobs --name NAME` show: (holders, waiter positions,
/// running jobs, waiting jobs).
async fn what_the_operator_sees(server: &Server, name: &str) -> (usize, Vec<u64>, usize, usize) {
    let (code, lock, stderr) = baton_json(server, &["status", name]).await;
    assert_eq!(code, 0, "baton status {name}: {stderr}");
    let (code, list, stderr) = baton_json(server, &["jobs", "--name", name]).await;
    assert_eq!(code, 0, "baton jobs: {stderr}");
    let jobs = list["jobs"].as_array().expect("jobs").clone();
    let positions = lock["waiters"]
        .as_array()
        .expect("waiters")
        .iter()
        .map(|waiter| u64_of(&waiter["position"], "position"))
        .collect();
    (
        lock["holders"].as_array().expect("holders").len(),
        positions,
        count_state(&jobs, "running"),
        count_state(&jobs, "queued") + count_state(&jobs, "waiting"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_concurrency_two_running_and_the_rest_waiting_with_positions() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-accept-002-");
        // Each run holds its slot until the test creates go.TOKEN.
        let body = "touch started.$BATON_FENCING_TOKEN; \
                    while [ ! -e go.$BATON_FENCING_TOKEN ]; do sleep 0.05; done";
        let mut runs = Vec::new();
        for index in 0..5 {
            runs.push(spawn_script(
                &server,
                dir.path(),
                &format!("rb{index}"),
                &format!("exec baton run runbook --capacity 2 -- sh -c '{body}'"),
            ));
            // Arrival order is the order the test started them.
            eventually("the request recorded", PATIENCE, async || {
                (jobs_named(&server, "runbook").await.len() > index).then_some(())
            })
            .await;
        }
        for remaining in (1..=5usize).rev() {
            let running = remaining.min(2);
            let waiting = remaining - running;
            // Sampled until the hand-on settled, and then several more times: always the same.
            let settled = (
                running,
                (1..=waiting as u64).collect::<Vec<_>>(),
                running,
                waiting,
            );
            eventually("the slots handed on", PATIENCE, async || {
                (what_the_operator_sees(&server, "runbook").await == settled).then_some(())
            })
            .await;
            for _ in 0..3 {
                let (holders, positions, running_jobs, waiting_jobs) =
                    what_the_operator_sees(&server, "runbook").await;
                assert_eq!(holders, running, "holders with {remaining} left");
                assert_eq!(running_jobs, running, "running jobs with {remaining} left");
                assert_eq!(waiting_jobs, waiting, "waiting jobs with {remaining} left");
                assert_eq!(
                    positions,
                    (1..=waiting as u64).collect::<Vec<_>>(),
                    "positions with {remaining} left"
                );
            }
            // Let the oldest holder finish.
            let mut started: Vec<u64> = std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|entry| {
                    let name = entry.ok()?.file_name().into_string().ok()?;
                    name.strip_prefix("started.")?.parse().ok()
                })
                .filter(|token| !dir.path().join(format!("go.{token}")).exists())
                .collect();
            started.sort_unstable();
            std::fs::write(dir.path().join(format!("go.{}", started[0])), b"").unwrap();
        }
        for run in &mut runs {
            assert_eq!(run.wait(PATIENCE).await, 0, "{}", run.output());
        }
    })
    .await
    .expect("test timed out");
}

// ----- 003: fan-out -------------------------------------------------------------------------

/// The template of a fake machine bootstrap: prints, takes 0.3 s, fails for m7 and m13.
const BOOTSTRAP: &str = "echo \"bootstrapping $1\"; sleep 0.3; \
                         case $1 in m7|m13) echo \"cannot reach $1\" >&2; exit 3;; esac; \
                         echo \"$1 ready\"";

fn machines() -> Vec<String> {
    (1..=30).map(|index| format!("m{index}")).collect()
}

async fn fan_out(server: &Server, jobs: &str, json: bool) -> harness::Exited {
    let machines = machines();
    let mut argv = vec!["parallel", "-j", jobs, "--name", "bootstrap"];
    if json {
        argv.push("--json");
    }
    argv.extend(["--", "sh", "-c", BOOTSTRAP, "sh", "{}", ":::"]);
    argv.extend(machines.iter().map(String::as_str));
    server.spawn_baton(&argv, None).wait(PATIENCE * 2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_thirty_bootstraps_collated_with_failures_counted_and_in_order_at_j1() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;

        // -j 10, human output: each job's output whole, after its own header.
        let wide = fan_out(&server, "10", false).await;
        assert_code(&wide, 81, "two jobs failed");
        let stdout = String::from_utf8_lossy(&wide.stdout).into_owned();
        for machine in machines() {
            let line = format!("bootstrapping {machine}");
            assert_eq!(
                stdout.lines().filter(|text| *text == line).count(),
                1,
                "{line:?} printed once:\n{stdout}"
            );
            if machine != "m7" && machine != "m13" {
                // Collated: the job's two lines are adjacent, never interleaved with another's.
                let ready = format!("{machine} ready");
                let lines: Vec<&str> = stdout.lines().collect();
                let at = lines.iter().position(|text| *text == line).unwrap();
                assert_eq!(
                    lines.get(at + 1),
                    Some(&ready.as_str()),
                    "collated:\n{stdout}"
                );
            }
        }
        assert!(wide.stderr.contains("cannot reach m7"), "{}", wide.stderr);
        assert!(wide.stderr.contains("cannot reach m13"), "{}", wide.stderr);
        let records = jobs_named_prefix(&server, "bootstrap").await;
        assert_eq!(records.len(), 30, "one record per job");
        assert_eq!(count_state(&records, "failed"), 2);
        assert_eq!(count_state(&records, "succeeded"), 28);
        let most = max_concurrency(&records);
        assert!((2..=10).contains(&most), "-j 10 ran {most} at once");

        // -j 1, JSON: the same outcomes, one at a time, in input order.
        let narrow = fan_out(&server, "1", true).await;
        assert_code(&narrow, 81, "two jobs failed");
        let summary: Value = serde_json::from_slice(&narrow.stdout).expect("JSON summary");
        let summary = summary.as_array().expect("an array");
        assert_eq!(summary.len(), 30);
        for (entry, machine) in summary.iter().zip(machines()) {
            let failed = machine == "m7" || machine == "m13";
            assert_eq!(entry["args"], json!([machine]), "{entry}");
            assert_eq!(entry["state"], if failed { "failed" } else { "succeeded" });
            assert_eq!(entry["exit_code"], if failed { 3 } else { 0 });
        }
        let mut records: Vec<Value> = jobs_named_prefix(&server, "bootstrap")
            .await
            .into_iter()
            .filter(|job| job["batch"] != records[0]["batch"])
            .collect();
        assert_eq!(records.len(), 30);
        records.sort_by_key(|job| millis(&job["started_at"]));
        assert_eq!(max_concurrency(&records), 1, "-j 1 runs one at a time");
        let commands: Vec<Value> = records.iter().map(|job| job["command"].clone()).collect();
        let expected: Vec<Value> = machines()
            .iter()
            .map(|machine| json!(["sh", "-c", BOOTSTRAP, "sh", machine]))
            .collect();
        assert_eq!(commands, expected, "started in input order");
    })
    .await
    .expect("test timed out");
}

/// Every job whose name starts with `prefix` (a `baton parallel` names its jobs after the
/// run's name).
async fn jobs_named_prefix(server: &Server, prefix: &str) -> Vec<Value> {
    let (status, body) = server.get("/v1/jobs?limit=1000").await;
    assert_eq!(status, 200, "{body}");
    body["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter(|job| str_of(&job["name"], "name").starts_with(prefix))
        .cloned()
        .collect()
}

/// The most jobs running at one instant, from their recorded start and finish.
fn max_concurrency(jobs: &[Value]) -> usize {
    let mut edges: Vec<(i64, i32)> = Vec::new();
    for job in jobs {
        edges.push((millis(&job["started_at"]), 1));
        edges.push((millis(&job["finished_at"]), -1));
    }
    // Ends before starts at the same millisecond: touching runs do not overlap.
    edges.sort_unstable();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

// ----- 004: singleton -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn singleton_second_fail_run_exits_75_naming_the_holder_and_the_api_answers_409() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-accept-004-");
        let hold = "touch running; while [ ! -e go ]; do sleep 0.05; done";
        let mut first = spawn_script(
            &server,
            dir.path(),
            "first",
            &format!("exec baton run ingest --fail --owner orchestrator-1 -- sh -c '{hold}'"),
        );
        eventually("the first instance running", PATIENCE, async || {
            dir.path().join("running").exists().then_some(())
        })
        .await;

        let second = server
            .spawn_baton(
                &[
                    "run",
                    "ingest",
                    "--fail",
                    "--owner",
                    "orchestrator-2",
                    "--",
                    "true",
                ],
                None,
            )
            .wait(PATIENCE)
            .await;
        assert_code(&second, 75, "a second instance");
        assert!(
            second.stderr.contains("orchestrator-1"),
            "the refusal names the holder: {}",
            second.stderr
        );

        let (status, body) = server
            .post(
                "/v1/jobs",
                json!({"name": "ingest", "owner": "api", "command": ["true"], "policy": "fail"}),
            )
            .await;
        assert_eq!(status, 409, "policy fail on a busy lock: {body}");
        assert_eq!(body["error"]["code"], "busy", "{body}");
        assert_eq!(body["holders"][0]["owner"], "orchestrator-1", "{body}");

        let (code, list, stderr) =
            baton_json(&server, &["jobs", "--name", "ingest", "--state", "running"]).await;
        assert_eq!(code, 0, "{stderr}");
        let running = list["jobs"].as_array().expect("jobs");
        assert_eq!(running.len(), 1, "{list}");
        assert_eq!(running[0]["owner"], "orchestrator-1");

        std::fs::write(dir.path().join("go"), b"").unwrap();
        assert_eq!(first.wait(PATIENCE).await, 0, "{}", first.output());
    })
    .await
    .expect("test timed out");
}

// ----- defect 1: a grant after a wait longer than the ttl -----------------------------------

/// The documented hot-standby recipe, scaled down: the active writer runs longer than the
/// standby's ttl; the standby must run once the active ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_that_waited_longer_than_its_ttl_runs() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let active = server.spawn_baton(&["run", "hot", "--ttl", "3s", "--", "sleep", "5"], None);
        eventually("the active holding", PATIENCE, async || {
            let (status, lock) = server.get(&lock_path("hot", "")).await;
            (status == 200 && lock["holders"].as_array().map(Vec::len) == Some(1)).then_some(())
        })
        .await;
        let standby = server
            .spawn_baton(
                &["run", "hot", "--ttl", "3s", "--", "echo", "took-over"],
                None,
            )
            .wait(PATIENCE)
            .await;
        assert_code(&standby, 0, "the standby");
        assert_eq!(String::from_utf8_lossy(&standby.stdout), "took-over\n");
        assert_code(&active.wait(PATIENCE).await, 0, "the active");
    })
    .await
    .expect("test timed out");
}

/// `baton parallel --slots inst:1` where later jobs wait far longer than their ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_slots_jobs_that_waited_longer_than_their_ttl_all_succeed() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-accept-slots-");
        let body = traced("runs", "sleep 1.2");
        let argv = [
            "parallel", "-j", "4", "--slots", "inst:1", "--ttl", "2s", "--json", "--", "sh", "-c",
            &body, ":::", "a", "b", "c", "d",
        ];
        let mut command = tokio::process::Command::new(BATON);
        command
            .args(argv)
            .current_dir(dir.path())
            .env("BATON_URL", &server.base)
            .env("W", "job")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(PATIENCE, command.output())
            .await
            .expect("parallel finished")
            .expect("parallel ran");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(0),
            "every job succeeds: {stderr}"
        );
        let summary: Value = serde_json::from_slice(&output.stdout).expect("JSON summary");
        for entry in summary.as_array().expect("array") {
            assert_eq!(entry["state"], "succeeded", "{entry}");
        }
        let runs = intervals(&file_lines(&dir.path().join("runs")), i128::MAX);
        assert_eq!(runs.len(), 4);
        assert_no_overlap(&runs, "slot inst:1");
    })
    .await
    .expect("test timed out");
}

// ----- defect 2: short ttls -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_ttl_every_ttl_the_cli_accepts_works_and_a_smaller_one_is_a_usage_error() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let three = server
            .spawn_baton(&["run", "short", "--ttl", "3s", "--", "sleep", "2"], None)
            .wait(PATIENCE)
            .await;
        assert_code(&three, 0, "--ttl 3s -- sleep 2");
        // The smallest ttl, for a command that outlives several of them.
        let smallest = server
            .spawn_baton(
                &["run", "short", "--ttl", MIN_TTL, "--", "sleep", "5"],
                None,
            )
            .wait(PATIENCE)
            .await;
        assert_code(&smallest, 0, "the smallest ttl, a command of several ttls");
        let too_small = server
            .spawn_baton(&["run", "short", "--ttl", "100ms", "--", "true"], None)
            .wait(PATIENCE)
            .await;
        assert_code(&too_small, 64, "a ttl below the minimum");
        assert!(
            too_small.stderr.contains("100ms") && too_small.stderr.contains(MIN_TTL),
            "the message speaks the user's units: {}",
            too_small.stderr
        );
        let jobs = jobs_named(&server, "short").await;
        assert_eq!(count_state(&jobs, "lost"), 0, "{jobs:#?}");
    })
    .await
    .expect("test timed out");
}

// ----- defect 3: a waiter that went away ----------------------------------------------------

/// A holder; a waiter interrupted with Ctrl-C (SIGINT) and one killed with SIGKILL while
/// queued, both ahead of a live waiter. The holder releases right after they left: the live
/// waiter gets the lock within the ticket lapse (never a departed waiter, whose lease would sit
/// idle for its 5 minute ttl), and no departed waiter is shown as holder or waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_that_left_is_never_granted_and_the_next_live_waiter_is() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // A short lapse, so that "within the lapse" is far below the CLI's 30 s long-polls.
        let server = Server::start(&["--ticket-lapse", "2s"]).await;
        let acquire = |owner: &str| {
            server.spawn_baton(
                &[
                    "acquire", "team-a/x", "--ttl", "5m", "--wait", "60s", "--owner", owner,
                ],
                None,
            )
        };
        let holder = acquire("holder").wait(PATIENCE).await;
        assert_code(&holder, 0, "the holder");
        let lease_id = String::from_utf8_lossy(&holder.stdout).trim().to_owned();

        let queued = |count: usize| {
            let server = &server;
            async move {
                eventually(&format!("{count} waiters"), PATIENCE, async || {
                    let lock = harness::lock_view(server, "team-a/x").await;
                    (lock["waiters"].as_array().map(Vec::len) == Some(count)).then_some(())
                })
                .await;
            }
        };
        let interrupted = acquire("interrupted");
        queued(1).await;
        let killed = acquire("killed");
        queued(2).await;
        let live = acquire("live");
        queued(3).await;

        interrupted.signal(Signal::SIGINT);
        assert_code(
            &interrupted.wait(PATIENCE).await,
            130,
            "Ctrl-C while waiting",
        );
        killed.signal(Signal::SIGKILL);
        killed.wait(PATIENCE).await;

        let release = server
            .spawn_baton(&["release", &lease_id], None)
            .wait(PATIENCE)
            .await;
        assert_code(&release, 0, "release");
        // The lapse (2 s) plus generous slack; a departed waiter's grant would hold 5 minutes.
        let live = live.wait(Duration::from_secs(10)).await;
        assert_code(&live, 0, "the live waiter gets the lock");
        let lock = harness::lock_view(&server, "team-a/x").await;
        assert_eq!(lock["holders"][0]["owner"], "live", "{lock}");
        assert_eq!(lock["holders"].as_array().map(Vec::len), Some(1), "{lock}");
        assert_eq!(lock["waiters"], json!([]), "{lock}");
        let holds = history(&server, "team-a/x").await;
        assert!(
            holds.iter().all(|hold| hold["owner"] == "holder"),
            "no departed waiter ever held the lock: {holds:#?}"
        );
    })
    .await
    .expect("test timed out");
}

// ----- defect 4: a paused `baton run` -------------------------------------------------------

/// `kill -STOP` of `baton run` (what Ctrl-Z does) for longer than its ttl: its command must
/// stop before the lease's end as the server recorded it, while a second runner takes over;
/// the two never overlap. After SIGCONT the paused run reports the lease lost (79).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_runner_command_stops_before_its_lease_ends() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-accept-stop-");
        let beat = "while true; do echo \"$W beat $(date +%s%N)\" >> beats; sleep 0.05; done";
        let first = spawn_script(
            &server,
            dir.path(),
            "first",
            &format!(
                "exec baton run paused --ttl 3s --grace 300ms --owner first -- sh -c '{beat}'"
            ),
        );
        eventually("the first beating", PATIENCE, async || {
            (!file_lines(&dir.path().join("beats")).is_empty()).then_some(())
        })
        .await;
        let mut second = spawn_script(
            &server,
            dir.path(),
            "second",
            "exec baton run paused --ttl 3s --owner second -- \
             sh -c 'echo \"second start $(date +%s%N)\" >> beats'",
        );
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(first.pid), Signal::SIGSTOP).unwrap();
        assert_eq!(second.wait(PATIENCE).await, 0, "{}", second.output());
        // Give a child that outlived its lease time to show it.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let lines = file_lines(&dir.path().join("beats"));
        let second_start: i128 = lines
            .iter()
            .find_map(|line| line.strip_prefix("second start "))
            .expect("the second ran")
            .parse()
            .unwrap();
        let last_beat: i128 = lines
            .iter()
            .filter_map(|line| line.strip_prefix("first beat "))
            .map(|at| at.parse::<i128>().unwrap())
            .max()
            .unwrap();
        assert!(
            last_beat < second_start,
            "the paused run's command beat {} ms after the second started",
            (last_beat - second_start) / 1_000_000
        );
        let holds = history(&server, "paused").await;
        let expired = holds
            .iter()
            .find(|hold| hold["owner"] == "first")
            .expect("the first's hold");
        assert_eq!(expired["end"], "expired", "{holds:#?}");
        assert!(
            last_beat / 1_000_000 < i128::from(millis(&expired["ended_at"])),
            "the command beat after its lease ended"
        );
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(first.pid), Signal::SIGCONT).unwrap();
        let mut first = first;
        assert_eq!(
            first.wait(PATIENCE).await,
            79,
            "lease lost: {}",
            first.output()
        );
    })
    .await
    .expect("test timed out");
}
