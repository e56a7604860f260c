//! `baton run`'s policies for a busy lock, end to end: real `baton run` processes against a real
//! `baton server`, their commands leaving traces in files of a temporary folder (their working
//! directory), and the job records read back over HTTP.
//!
//! - `--skip`: of two runs racing, one runs and the other exits 0 at once, recorded `skipped`;
//! - `--wait`: ten queued runs run in their arrival order (G4);
//! - `--replace`: the holder's whole tree is gone before the new run starts, never after;
//! - `--coalesce`: however many requests arrive, at most one follow-up run;
//! - `--once-per`: one run per period slot.
//!
//! Commands that must keep the lock while the test looks hold it until the test creates a file
//! `go`, rather than for a guessed time, so no outcome depends on the machine's speed. Every
//! wait is bounded; orderings are asserted from recorded timestamps, never durations.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod harness;

use std::path::Path;
use std::time::Duration;

use harness::{
    ClientProcess, Server, assert_code, eventually, file_lines, jobs_named, lock_path, lock_view,
    process_alive, str_of, workdir,
};
use serde_json::{Value, json};

/// The bound on a whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The bound on one `baton run` finishing, or one condition becoming true.
const PATIENCE: Duration = Duration::from_secs(30);

/// Shell that blocks until the test creates `go` in the working directory.
const HOLD_UNTIL_GO: &str = "while [ ! -e go ]; do sleep 0.05; done";

/// `baton run ARGS… -- sh -c SCRIPT` in `dir`.
fn run_sh(server: &Server, dir: &Path, args: &[&str], script: &str) -> ClientProcess {
    let mut argv = vec!["run"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--", "sh", "-c", script]);
    server.spawn_baton(&argv, Some(dir))
}

fn go(dir: &Path) {
    std::fs::write(dir.join("go"), b"").expect("create go");
}

/// The job of `owner` among `jobs`.
fn job_of<'a>(jobs: &'a [Value], owner: &str) -> &'a Value {
    let found: Vec<&Value> = jobs.iter().filter(|job| job["owner"] == owner).collect();
    assert_eq!(found.len(), 1, "one job of {owner}: {jobs:#?}");
    found[0]
}

fn state(job: &Value) -> &str {
    str_of(&job["state"], "job.state")
}

/// Not (yet) decided: queued or waiting.
fn undecided(job: &Value) -> bool {
    matches!(state(job), "queued" | "waiting")
}

/// Waits until `name` has `count` jobs, none of them still undecided.
async fn settled_jobs(server: &Server, name: &str, count: usize) -> Vec<Value> {
    eventually(
        &format!("{count} settled jobs of {name}"),
        PATIENCE,
        async || {
            let jobs = jobs_named(server, name).await;
            (jobs.len() == count && !jobs.iter().any(undecided)).then_some(jobs)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_skip_runs_racing_run_once_and_the_other_exits_0_skipped() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-run-");
        let name = "run/skip";
        let script = format!("echo \"$BATON_JOB_ID\" >> ran; {HOLD_UNTIL_GO}");
        // Both started at once: which one wins is the server's call.
        let a = run_sh(
            &server,
            dir.path(),
            &[name, "--skip", "--owner", "a"],
            &script,
        );
        let b = run_sh(
            &server,
            dir.path(),
            &[name, "--skip", "--owner", "b"],
            &script,
        );

        // While the winner still runs, both requests are decided.
        let jobs = settled_jobs(&server, name, 2).await;
        let running: Vec<&Value> = jobs.iter().filter(|job| state(job) == "running").collect();
        let skipped: Vec<&Value> = jobs.iter().filter(|job| state(job) == "skipped").collect();
        assert_eq!(
            (running.len(), skipped.len()),
            (1, 1),
            "one runs, one is skipped: {jobs:#?}"
        );
        let winner_id = str_of(&running[0]["id"], "job.id").to_owned();
        let (winner, loser) = if running[0]["owner"] == "a" {
            (a, b)
        } else {
            (b, a)
        };

        // The skipped run exits 0 without waiting for the winner.
        let lost = loser.wait(PATIENCE).await;
        assert_code(&lost, 0, "the skipped run");
        go(dir.path());
        let won = winner.wait(PATIENCE).await;
        assert_code(&won, 0, "the run that got the lock");

        assert_eq!(file_lines(&dir.path().join("ran")), [winner_id.as_str()]);
        let jobs = jobs_named(&server, name).await;
        let states: Vec<&str> = jobs.iter().map(state).collect();
        assert_eq!(jobs.len(), 2, "{jobs:#?}");
        assert!(
            states.contains(&"succeeded") && states.contains(&"skipped"),
            "{jobs:#?}"
        );
        let skipped = jobs.iter().find(|job| state(job) == "skipped").unwrap();
        assert!(skipped.get("started_at").is_none(), "never ran: {skipped}");
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_waiting_runs_run_in_their_arrival_order() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-run-");
        let name = "run/fifo";
        // A blocker holds the lock while the queue forms.
        let (status, blocker) = server
            .post(
                &lock_path(name, "/acquire"),
                json!({"owner": "blocker", "ttl_ms": 120_000}),
            )
            .await;
        assert_eq!(status, 200, "{blocker}");
        let blocker_id = str_of(&blocker["lease"]["id"], "lease.id").to_owned();

        let mut runners = Vec::new();
        for index in 0..10 {
            let owner = format!("runner-{index}");
            let script = format!("echo {index} >> order");
            runners.push(run_sh(
                &server,
                dir.path(),
                &[name, "--wait", "--owner", &owner],
                &script,
            ));
            // Arrival order is known: the next one starts only once this one is queued.
            eventually(&format!("{owner} queued"), PATIENCE, async || {
                let view = lock_view(&server, name).await;
                let waiters = view["waiters"].as_array()?.clone();
                (waiters.len() == index + 1).then_some(())?;
                assert_eq!(waiters[index]["owner"], owner.as_str(), "{view}");
                assert_eq!(waiters[index]["position"], index + 1, "{view}");
                Some(())
            })
            .await;
        }

        let (status, released) = server
            .post(&format!("/v1/leases/{blocker_id}/release"), json!({}))
            .await;
        assert_eq!(status, 200, "{released}");
        for (index, runner) in runners.into_iter().enumerate() {
            let exited = runner.wait(PATIENCE).await;
            assert_code(&exited, 0, &format!("runner {index}"));
        }

        let expected: Vec<String> = (0..10).map(|index| index.to_string()).collect();
        assert_eq!(file_lines(&dir.path().join("order")), expected);
        // The job records agree: each run started after the previous one finished, with a
        // greater token.
        let jobs = jobs_named(&server, name).await;
        let mut previous: Option<&Value> = None;
        for index in 0..10 {
            let job = job_of(&jobs, &format!("runner-{index}"));
            assert_eq!(state(job), "succeeded", "{job}");
            assert!(job.get("waiting_at").is_some(), "it waited: {job}");
            if let Some(previous) = previous {
                assert!(
                    job["token"].as_u64() > previous["token"].as_u64(),
                    "{previous}\n{job}"
                );
                assert!(
                    harness::millis(&job["started_at"])
                        >= harness::millis(&previous["finished_at"]),
                    "{previous}\n{job}"
                );
            }
            previous = Some(job);
        }
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_stops_the_whole_tree_before_the_new_run_starts() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-run-");
        let name = "run/replace";
        // The old command: a grandchild that ignores SIGTERM (so only the KILL after the grace
        // ends it), and a TERM trap that records when the command stopped.
        let old_script = "trap 'echo old-stopped $(date +%s%N) >> log; exit 0' TERM; \
             ( trap '' TERM; exec sleep 1000 ) & echo $! > gc.pid; \
             echo started >> log; wait";
        let old = run_sh(
            &server,
            dir.path(),
            &[name, "--ttl", "3s", "--grace", "500ms", "--owner", "old"],
            old_script,
        );
        eventually("the old command started", PATIENCE, async || {
            let lines = file_lines(&dir.path().join("log"));
            let started = lines.first().is_some_and(|line| line == "started");
            (started && dir.path().join("gc.pid").exists()).then_some(())
        })
        .await;
        let grandchild: i32 = eventually("the grandchild's pid", PATIENCE, async || {
            std::fs::read_to_string(dir.path().join("gc.pid"))
                .ok()?
                .trim()
                .parse()
                .ok()
        })
        .await;
        assert!(process_alive(grandchild), "the grandchild runs");

        // The new command records when it started and whether the grandchild was still there
        // (its /proc state letter, or "gone").
        let new_script = format!(
            "s=$(sed 's/.*) //' /proc/{grandchild}/stat 2>/dev/null | cut -c1); \
             echo new-started $(date +%s%N) gc=${{s:-gone}} >> log"
        );
        let new = run_sh(
            &server,
            dir.path(),
            // A longer ttl than the holder's: the wait for the old tree must fit in the new
            // run's first lease budget (see `a_run_granted_after_a_long_wait_still_runs`).
            &[
                name,
                "--replace",
                "--ttl",
                "10s",
                "--grace",
                "500ms",
                "--owner",
                "new",
            ],
            &new_script,
        );
        let old = old.wait(PATIENCE).await;
        assert_code(&old, 80, "the replaced run");
        let new = new.wait(PATIENCE).await;
        assert_code(&new, 0, "the replacing run");

        let lines = file_lines(&dir.path().join("log"));
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0], "started", "{lines:?}");
        let stamp = |line: &str, prefix: &str| -> u128 {
            let rest = line
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("{prefix:?} expected: {lines:?}"));
            rest.split_whitespace().next().unwrap().parse().unwrap()
        };
        let stopped = stamp(&lines[1], "old-stopped ");
        let started = stamp(&lines[2], "new-started ");
        assert!(
            stopped < started,
            "the old command stopped before the new one started: {lines:?}"
        );
        let gc_state = lines[2].rsplit_once("gc=").map(|(_, state)| state);
        assert!(
            matches!(gc_state, Some("gone" | "Z")),
            "the old tree's grandchild was gone when the new run started: {lines:?}"
        );
        assert!(!process_alive(grandchild), "the grandchild is gone");

        let jobs = jobs_named(&server, name).await;
        let old_job = job_of(&jobs, "old");
        let new_job = job_of(&jobs, "new");
        assert_eq!(state(old_job), "cancelled", "{old_job}");
        assert_eq!(state(new_job), "succeeded", "{new_job}");
        assert!(new_job.get("waiting_at").is_some(), "it waited: {new_job}");
        assert!(
            harness::millis(&new_job["started_at"]) >= harness::millis(&old_job["finished_at"]),
            "granted only after the old run ended:\n{old_job}\n{new_job}"
        );
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesce_keeps_at_most_one_pending_run() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-run-");
        let name = "run/coalesce";
        let first = run_sh(
            &server,
            dir.path(),
            &[name, "--coalesce", "--owner", "first"],
            &format!("echo \"$BATON_JOB_ID\" >> runs; {HOLD_UNTIL_GO}"),
        );
        let jobs = settled_jobs(&server, name, 1).await;
        assert_eq!(state(&jobs[0]), "running", "{jobs:#?}");
        let first_id = str_of(&jobs[0]["id"], "job.id").to_owned();

        // Six more requests at once while the first runs.
        let followers: Vec<(String, ClientProcess)> = (0..6)
            .map(|index| {
                let owner = format!("follower-{index}");
                let runner = run_sh(
                    &server,
                    dir.path(),
                    &[name, "--coalesce", "--owner", &owner],
                    "echo \"$BATON_JOB_ID\" >> runs",
                );
                (owner, runner)
            })
            .collect();
        // All decided while the first still runs: one pending (waiting), five folded into it.
        let jobs = eventually("six followers decided", PATIENCE, async || {
            let jobs = jobs_named(&server, name).await;
            let decided = jobs
                .iter()
                .filter(|job| matches!(state(job), "waiting" | "coalesced" | "running" | "skipped"))
                .count();
            (jobs.len() == 7 && decided == 7).then_some(jobs)
        })
        .await;
        let waiting: Vec<&Value> = jobs.iter().filter(|job| state(job) == "waiting").collect();
        let coalesced: Vec<&Value> = jobs
            .iter()
            .filter(|job| state(job) == "coalesced")
            .collect();
        assert_eq!((waiting.len(), coalesced.len()), (1, 5), "{jobs:#?}");
        let pending_id = str_of(&waiting[0]["id"], "job.id").to_owned();
        for job in &coalesced {
            assert_eq!(job["coalesced_into"], pending_id.as_str(), "{job}");
        }

        // The five folded requests exit 0 at once, while the first still runs.
        let mut pending = None;
        for (owner, runner) in followers {
            if job_of(&jobs, &owner)["id"] == pending_id.as_str() {
                pending = Some(runner);
                continue;
            }
            let exited = runner.wait(PATIENCE).await;
            assert_code(&exited, 0, &format!("coalesced {owner}"));
        }
        go(dir.path());
        assert_code(&first.wait(PATIENCE).await, 0, "the first run");
        let pending = pending.expect("the pending follower's process");
        assert_code(&pending.wait(PATIENCE).await, 0, "the pending run");

        assert_eq!(
            file_lines(&dir.path().join("runs")),
            [first_id.as_str(), pending_id.as_str()],
            "two runs in all: the first and the pending one"
        );
        let jobs = jobs_named(&server, name).await;
        let succeeded: Vec<&str> = jobs
            .iter()
            .filter(|job| state(job) == "succeeded")
            .map(|job| str_of(&job["id"], "job.id"))
            .collect();
        assert_eq!(succeeded.len(), 2, "{jobs:#?}");
        assert!(succeeded.contains(&first_id.as_str()) && succeeded.contains(&pending_id.as_str()));
        assert_eq!(
            jobs.iter().filter(|job| state(job) == "coalesced").count(),
            5,
            "{jobs:#?}"
        );
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_per_runs_once_per_slot_among_runs_started_together() {
    const PERIOD_MS: u128 = 3_600_000;
    // Slots are centred on multiples of the period: they change at half past each hour.
    let slot = || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        (
            (now + PERIOD_MS / 2) / PERIOD_MS,
            (now + PERIOD_MS / 2) % PERIOD_MS,
        )
    };
    let (slot_before, into_slot) = slot();
    if !(5_000..=PERIOD_MS - 60_000).contains(&into_slot) {
        eprintln!("too close to a once-per slot edge (half past the hour): not checked this time");
        return;
    }
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-run-");
        let name = "run/once";
        let args = |owner: &'static str| [name, "--once-per", "1h", "--owner", owner];
        let script = "echo \"$BATON_JOB_ID\" >> runs";
        let runners: Vec<ClientProcess> = ["a", "b", "c", "d"]
            .into_iter()
            .map(|owner| run_sh(&server, dir.path(), &args(owner), script))
            .collect();
        for runner in runners {
            assert_code(&runner.wait(PATIENCE).await, 0, "a once-per run");
        }
        // Later in the same slot, with the lock free: still not again.
        let late = run_sh(&server, dir.path(), &args("late"), script);
        assert_code(&late.wait(PATIENCE).await, 0, "a later once-per run");
        if slot().0 != slot_before {
            eprintln!("crossed a once-per slot edge during the test: not checked this time");
            return;
        }

        let runs = file_lines(&dir.path().join("runs"));
        assert_eq!(runs.len(), 1, "one run in the slot: {runs:?}");
        let jobs = jobs_named(&server, name).await;
        assert_eq!(jobs.len(), 5, "{jobs:#?}");
        let ran: Vec<&Value> = jobs
            .iter()
            .filter(|job| state(job) == "succeeded")
            .collect();
        assert_eq!(ran.len(), 1, "{jobs:#?}");
        assert_eq!(ran[0]["id"], runs[0].as_str(), "{jobs:#?}");
        for job in jobs.iter().filter(|job| state(job) != "succeeded") {
            assert_eq!(state(job), "skipped", "{job}");
            assert!(job.get("started_at").is_none(), "{job}");
        }
        assert_eq!(job_of(&jobs, "late")["state"], "skipped");
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_granted_after_a_long_wait_still_runs() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-run-");
        let name = "run/long-wait";
        let (status, blocker) = server
            .post(
                &lock_path(name, "/acquire"),
                json!({"owner": "blocker", "ttl_ms": 60_000}),
            )
            .await;
        assert_eq!(status, 200, "{blocker}");
        let blocker_id = str_of(&blocker["lease"]["id"], "lease.id").to_owned();
        // ttl 3 s, grace 500 ms: a stop must start within ~1.4 s of the request that was
        // granted being sent. The wait below is longer than that, in one long-poll.
        let runner = run_sh(
            &server,
            dir.path(),
            &[
                name, "--wait", "--ttl", "3s", "--grace", "500ms", "--owner", "waiter",
            ],
            "echo ran >> ran",
        );
        eventually("the run queued", PATIENCE, async || {
            let view = lock_view(&server, name).await;
            (view["waiters"].as_array()?.len() == 1).then_some(())
        })
        .await;
        // Not a measurement: only makes the wait outlast the first lease budget.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let (status, released) = server
            .post(&format!("/v1/leases/{blocker_id}/release"), json!({}))
            .await;
        assert_eq!(status, 200, "{released}");

        let exited = runner.wait(PATIENCE).await;
        assert_code(&exited, 0, "a run granted after a long wait");
        assert_eq!(file_lines(&dir.path().join("ran")), ["ran"]);
        let jobs = jobs_named(&server, name).await;
        assert_eq!(state(job_of(&jobs, "waiter")), "succeeded", "{jobs:#?}");
    })
    .await
    .expect("the test took too long");
}
