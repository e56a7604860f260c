//! G6 end to end: the command of `baton run` never outlives its lease.
//!
//! - cut off from its server (the server is SIGKILLed), `baton run` stops the command's tree
//!   before the lease's expiry by the server's clock, exits 79 and runs its `--on-lost` hook; the
//!   restarted server records the job `lost`;
//! - `kill -9` of `baton run` itself: its guardian ends the command and a grandchild that ignores
//!   SIGTERM, before the lease expires; the server then records the job `lost`.
//!
//! Short leases (ttl 3 s, grace 500 ms) keep this quick. The server and the commands run on this
//! machine, so the server's timestamps and the commands' `date` share one clock. Every wait is
//! bounded; no assertion is about how long something took.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod harness;

use std::path::Path;
use std::time::Duration;

use harness::{
    ClientProcess, Server, eventually, file_lines, job_detail, jobs_named, lock_view, millis,
    process_alive, process_group, str_of, workdir,
};
use serde_json::Value;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The bound on one `baton run` finishing, or one condition becoming true.
const PATIENCE: Duration = Duration::from_secs(30);

fn run_sh(server: &Server, dir: &Path, args: &[&str], script: &str) -> ClientProcess {
    let mut argv = vec!["run"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--", "sh", "-c", script]);
    server.spawn_baton(&argv, Some(dir))
}

/// A pid the command wrote to `file` in `dir`.
async fn pid_in(dir: &Path, file: &str) -> i32 {
    eventually(&format!("a pid in {file}"), PATIENCE, async || {
        std::fs::read_to_string(dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    })
    .await
}

/// The job of `name`, once it runs.
async fn running_job(server: &Server, name: &str) -> Value {
    eventually(&format!("{name} running"), PATIENCE, async || {
        let jobs = jobs_named(server, name).await;
        jobs.into_iter().find(|job| job["state"] == "running")
    })
    .await
}

/// Waits for the holder's next renewal (its `expires_at` moves) and returns the new expiry in
/// milliseconds: the next renewal is then a third of the ttl away.
async fn fresh_expiry(server: &Server, name: &str) -> i64 {
    let expires = |view: &Value| millis(&view["holders"][0]["expires_at"]);
    let before = expires(&lock_view(server, name).await);
    eventually("a renewal", PATIENCE, async || {
        let now = expires(&lock_view(server, name).await);
        (now > before).then_some(now)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cut_off_from_its_server_stops_its_command_before_the_lease_expires() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut server = Server::start(&[]).await;
        let dir = workdir("baton-run-");
        let name = "run/cut-off";
        let runner = run_sh(
            &server,
            dir.path(),
            &[
                name,
                "--ttl",
                "3s",
                "--grace",
                "500ms",
                "--on-lost",
                "echo \"$BATON_JOB_ID\" > lost-hook",
            ],
            "echo $$ > pid; trap 'date +%s%3N >> stopped; exit 0' TERM; \
             while :; do sleep 0.1; done",
        );
        let job = running_job(&server, name).await;
        let job_id = str_of(&job["id"], "job.id").to_owned();
        let child = pid_in(dir.path(), "pid").await;
        assert!(job.get("started_at").is_some(), "{job}");

        // Right after a renewal, so this is the lease's last expiry: no renewal succeeds after
        // the kill.
        let expires_at = fresh_expiry(&server, name).await;
        server.kill9().await;

        let exited = runner.wait(PATIENCE).await;
        assert_eq!(
            exited.code,
            Some(79),
            "lease lost: exit 79; got {:?} (signal {:?}); stderr:\n{}",
            exited.code,
            exited.signal,
            exited.stderr
        );
        let stopped = file_lines(&dir.path().join("stopped"));
        assert_eq!(
            stopped.len(),
            1,
            "the command got SIGTERM once: {stopped:?}"
        );
        let stopped_at: i64 = stopped[0].parse().expect("a timestamp in ms");
        assert!(
            stopped_at < expires_at,
            "the command stopped at {stopped_at} (ms), before the lease's expiry {expires_at}"
        );
        assert!(!process_alive(child), "the command is gone");
        assert_eq!(
            file_lines(&dir.path().join("lost-hook")),
            [job_id.as_str()],
            "the --on-lost hook ran with the job's id"
        );

        // The server expires the lease (after a restart, recovered leases count as renewed at
        // recovery time) and records the job lost.
        server.restart().await;
        let job = eventually("the job recorded lost", PATIENCE, async || {
            let detail = job_detail(&server, &job_id).await;
            (detail["job"]["state"] == "lost").then_some(detail)
        })
        .await;
        assert!(job["job"].get("finished_at").is_some(), "{job}");
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_baton_run_leaves_nothing_running_and_the_lease_ends() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-run-");
        let name = "run/kill-9";
        // The grandchild ignores SIGTERM: only the guardian's SIGKILL ends it.
        let runner = run_sh(
            &server,
            dir.path(),
            &[name, "--ttl", "3s", "--grace", "500ms"],
            "echo $$ > pid; ( trap '' TERM; exec sleep 1000 ) & echo $! > gc.pid; wait",
        );
        let job = running_job(&server, name).await;
        let job_id = str_of(&job["id"], "job.id").to_owned();
        let child = pid_in(dir.path(), "pid").await;
        let grandchild = pid_in(dir.path(), "gc.pid").await;
        // The guardian leads the command's process group.
        let guardian = process_group(child).expect("the command's process group");
        assert_ne!(
            u32::try_from(guardian).ok(),
            Some(runner.pid),
            "the command runs in its own group, not baton run's"
        );
        for pid in [child, grandchild, guardian] {
            assert!(process_alive(pid), "{pid} runs before the kill");
        }

        let expires_at = fresh_expiry(&server, name).await;
        runner.signal(nix::sys::signal::Signal::SIGKILL);
        let exited = runner.wait(PATIENCE).await;
        assert_eq!(exited.signal, Some(9), "{exited:?}");

        // Bounded: the guardian's grace and some slack.
        let gone_by = eventually("the tree gone", Duration::from_secs(15), async || {
            let alive: Vec<i32> = [child, grandchild, guardian]
                .into_iter()
                .filter(|pid| process_alive(*pid))
                .collect();
            alive
                .is_empty()
                .then(|| jiff::Timestamp::now().as_millisecond())
        })
        .await;
        // Seen gone (a little after it went) before the lease could expire (G6).
        assert!(
            gone_by < expires_at,
            "the tree was gone at {gone_by} (ms), before the lease's expiry {expires_at}"
        );

        let job = eventually("the job recorded lost", PATIENCE, async || {
            let detail = job_detail(&server, &job_id).await;
            (detail["job"]["state"] == "lost").then_some(detail)
        })
        .await;
        assert!(job["job"].get("finished_at").is_some(), "{job}");
        let view = lock_view(&server, name).await;
        assert_eq!(view["holders"].as_array().map(Vec::len), Some(0), "{view}");
    })
    .await
    .expect("the test took too long");
}
