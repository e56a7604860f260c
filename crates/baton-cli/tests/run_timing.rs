//! Issue 10, parts 1 and 2: `baton run` and `baton parallel` as users time them.
//!
//! - A waiter that waited longer than its TTL still runs: the grant that ends a long-poll is
//!   confirmed with a renewal, not thrown away because the poll was sent long ago (the hot
//!   standby recipe; three standbys after `kill -9` of the active; `baton parallel --slots`).
//! - Every TTL the CLI accepts works (heartbeat, grace and stop slack scale with it), and a TTL
//!   that cannot work is refused up front with exit 64, in the user's units.
//!
//! TTLs of 3 s with a 500 ms grace keep this quick (they also worked before the fix, so the
//! long-wait tests fail for the long wait alone). Every wait is bounded.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod harness;

use std::path::Path;
use std::time::Duration;

use harness::{ClientProcess, Server, assert_code, eventually, file_lines, jobs_named, workdir};
use serde_json::Value;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The bound on one `baton` command finishing, or one condition becoming true.
const PATIENCE: Duration = Duration::from_secs(40);

fn run_sh(server: &Server, dir: &Path, args: &[&str], script: &str) -> ClientProcess {
    let mut argv = vec!["run"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--", "sh", "-c", script]);
    server.spawn_baton(&argv, Some(dir))
}

/// The jobs of `name` in `state`.
async fn jobs_in(server: &Server, name: &str, state: &str) -> Vec<Value> {
    jobs_named(server, name)
        .await
        .into_iter()
        .filter(|job| job["state"] == state)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_standby_that_waited_longer_than_its_ttl_takes_over_and_runs() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-standby-");
        let name = "timing/hot";
        let flags = [name, "--ttl", "3s", "--grace", "500ms"];
        let active = run_sh(&server, dir.path(), &flags, "sleep 6");
        eventually("the active running", PATIENCE, async || {
            (!jobs_in(&server, name, "running").await.is_empty()).then_some(())
        })
        .await;
        let standby = run_sh(&server, dir.path(), &flags, "echo took-over");
        let standby = standby.wait(PATIENCE).await;
        assert_code(
            &standby,
            0,
            "the standby, granted after a wait longer than its ttl",
        );
        assert_eq!(String::from_utf8_lossy(&standby.stdout).trim(), "took-over");
        assert_code(&active.wait(PATIENCE).await, 0, "the active");
        assert!(jobs_in(&server, name, "lost").await.is_empty());
        assert_eq!(jobs_in(&server, name, "succeeded").await.len(), 2);
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_standbys_after_kill_9_of_the_active_exactly_one_runs_and_none_is_lost() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&["--lock-delay", "500ms"]).await;
        let dir = workdir("baton-standbys-");
        let name = "timing/standbys";
        let flags = [name, "--ttl", "3s", "--grace", "500ms"];
        // Each instance, once it runs, stays active (a long-running service).
        let script = "echo \"$BATON_JOB_ID\" >> ran; exec sleep 60";
        let active = run_sh(&server, dir.path(), &flags, script);
        eventually("the active running", PATIENCE, async || {
            (file_lines(&dir.path().join("ran")).len() == 1).then_some(())
        })
        .await;
        let standbys: Vec<ClientProcess> = (0..3)
            .map(|_| run_sh(&server, dir.path(), &flags, script))
            .collect();
        eventually("three standbys waiting", PATIENCE, async || {
            (jobs_in(&server, name, "waiting").await.len() == 3).then_some(())
        })
        .await;
        // kill -9 of the active `baton run`: its lease expires, a standby takes over.
        drop(active);
        eventually("a standby running", PATIENCE, async || {
            (file_lines(&dir.path().join("ran")).len() == 2).then_some(())
        })
        .await;
        // Long enough for the taken-over lease to be renewed several times.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            file_lines(&dir.path().join("ran")).len(),
            2,
            "exactly one standby runs"
        );
        let lost = jobs_in(&server, name, "lost").await;
        assert_eq!(lost.len(), 1, "only the killed active is lost: {lost:?}");
        assert_eq!(jobs_in(&server, name, "running").await.len(), 1);
        assert_eq!(jobs_in(&server, name, "waiting").await.len(), 2);
        for mut standby in standbys {
            assert!(!standby.has_exited(), "{}", standby.stderr_text());
        }
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_jobs_that_waited_for_a_shared_slot_longer_than_their_ttl_run() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-slots-");
        let parallel = server.spawn_baton(
            &[
                "parallel",
                "--slots",
                "timing/inst:1",
                "--ttl",
                "3s",
                "--grace",
                "500ms",
                "-j",
                "2",
                "--",
                "sh",
                "-c",
                "sleep 4; echo done {}",
                ":::",
                "a",
                "b",
            ],
            Some(dir.path()),
        );
        let exited = parallel.wait(PATIENCE).await;
        assert_code(
            &exited,
            0,
            "both jobs, the second after a wait longer than its ttl",
        );
        let stdout = String::from_utf8_lossy(&exited.stdout);
        assert!(
            stdout.contains("done a") && stdout.contains("done b"),
            "{stdout}"
        );
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_second_ttl_runs_a_two_second_command() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-ttl3-");
        let run = run_sh(
            &server,
            dir.path(),
            &["timing/ttl3", "--ttl", "3s"],
            "sleep 2",
        );
        assert_code(&run.wait(PATIENCE).await, 0, "--ttl 3s -- sleep 2");
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smallest_accepted_ttl_keeps_a_command_that_runs_several_ttls() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-ttlmin-");
        let name = "timing/ttl-min";
        let run = run_sh(&server, dir.path(), &[name, "--ttl", "2s"], "sleep 7");
        assert_code(&run.wait(PATIENCE).await, 0, "--ttl 2s -- sleep 7");
        assert_eq!(jobs_in(&server, name, "succeeded").await.len(), 1);
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_below_the_minimum_is_a_usage_error_in_the_users_units() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-ttlbad-");
        let run = run_sh(
            &server,
            dir.path(),
            &["timing/bad", "--ttl", "100ms"],
            "true",
        );
        let exited = run.wait(PATIENCE).await;
        assert_code(&exited, 64, "--ttl 100ms");
        assert!(
            exited
                .stderr
                .contains("--ttl 100ms is below the minimum of 2s"),
            "{}",
            exited.stderr
        );
        let parallel = server.spawn_baton(
            &["parallel", "--ttl", "1500ms", "--", "true", ":::", "a"],
            Some(dir.path()),
        );
        let exited = parallel.wait(PATIENCE).await;
        assert_code(&exited, 64, "parallel --ttl 1500ms");
        assert!(
            exited
                .stderr
                .contains("--ttl 1s 500ms is below the minimum of 2s"),
            "{}",
            exited.stderr
        );
        assert!(jobs_named(&server, "timing/bad").await.is_empty());
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_guard_granted_after_a_wait_longer_than_its_ttl_is_held() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let name = "timing/guard";
        let (holder, _) = harness::acquire_queued(
            &server,
            name,
            serde_json::json!({"owner": "holder", "ttl_ms": 30_000}),
        )
        .await;
        let client = baton_client::Client::new(&server.base).unwrap();
        let options = baton_client::LockOptions {
            ttl: Some(Duration::from_secs(2)),
            ..baton_client::LockOptions::with_owner("waiter")
        };
        let waiter = tokio::spawn(async move { client.lock(name, options).await });
        // The waiter's long-poll outlasts its 2 s ttl before the holder lets go.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let lease_id = harness::str_of(&holder["id"], "lease.id");
        let (status, body) = server
            .post(
                &format!("/v1/leases/{lease_id}/release"),
                serde_json::json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let guard = waiter.await.unwrap().expect("the waiter's grant");
        assert_eq!(guard.status(), baton_client::LeaseStatus::Held);
        assert!(guard.deadline() > tokio::time::Instant::now() + Duration::from_secs(1));
        guard.release().await.unwrap();
    })
    .await
    .expect("the test took too long");
}
