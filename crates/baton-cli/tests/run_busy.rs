//! Issue 10, item 004 and the "Also" list: what a busy lock tells the user.
//!
//! - `POST /v1/jobs` with policy `fail` on a busy lock answers 409 `busy` with the holders, like
//!   an acquire (it was 200 `skipped`), and still records the job `skipped`;
//! - `baton run --fail` exits 75 and `--skip` exits 0, each naming the holder (owner, host,
//!   since);
//! - `baton jobs --state bogus` is a usage error (64).
//!
//! Real HTTP on the SQLite store. Every wait is bounded.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod harness;

use std::time::Duration;

use harness::{ClientProcess, Server, assert_code, eventually, jobs_named, workdir};
use serde_json::json;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The bound on one `baton` command finishing, or one condition becoming true.
const PATIENCE: Duration = Duration::from_secs(40);

/// A `baton run NAME --owner OWNER -- sleep 60` holding `name`, once it runs.
async fn holder(server: &Server, name: &str, dir: &std::path::Path) -> ClientProcess {
    let holder = server.spawn_baton(
        &["run", name, "--owner", "the-holder", "--", "sleep", "60"],
        Some(dir),
    );
    eventually("the holder running", PATIENCE, async || {
        jobs_named(server, name)
            .await
            .iter()
            .any(|job| job["state"] == "running")
            .then_some(())
    })
    .await;
    holder
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_job_on_a_busy_lock_is_answered_409_busy_with_the_holders() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-busy-");
        let name = "busy/http";
        let _holder = holder(&server, name, dir.path()).await;
        let (status, body) = server
            .post(
                "/v1/jobs",
                json!({"name": name, "policy": "fail", "owner": "second", "command": ["true"]}),
            )
            .await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "busy", "{body}");
        assert_eq!(body["holders"][0]["owner"], "the-holder", "{body}");
        assert!(body["holders"][0]["job"].is_string(), "{body}");
        let skipped = jobs_named(&server, name)
            .await
            .into_iter()
            .filter(|job| job["state"] == "skipped" && job["owner"] == "second")
            .count();
        assert_eq!(skipped, 1, "the job is still recorded skipped");
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_and_skip_on_a_busy_lock_name_the_holder() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-busy-");
        let name = "busy/cli";
        let _holder = holder(&server, name, dir.path()).await;
        let host = gethostname();
        for (flag, code) in [("--fail", 75), ("--skip", 0)] {
            let run = server.spawn_baton(&["run", name, flag, "--", "true"], Some(dir.path()));
            let exited = run.wait(PATIENCE).await;
            assert_code(&exited, code, flag);
            assert!(
                exited.stderr.contains("held by the-holder")
                    && exited.stderr.contains(&format!("on {host}"))
                    && exited.stderr.contains(" since "),
                "{flag}: {}",
                exited.stderr
            );
        }
    })
    .await
    .expect("the test took too long");
}

fn gethostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_with_an_unknown_state_is_a_usage_error() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let jobs = server.spawn_baton(&["jobs", "--state", "failed,bogus"], None);
        let exited = jobs.wait(PATIENCE).await;
        assert_code(&exited, 64, "--state bogus");
        assert!(exited.stderr.contains("bogus"), "{}", exited.stderr);
    })
    .await
    .expect("the test took too long");
}
