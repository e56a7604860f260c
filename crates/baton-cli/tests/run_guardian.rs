//! Issue 10, parts 3 and 4, with real processes:
//!
//! - a paused `baton run` (SIGSTOP, what Ctrl-Z does) leaves no child running unguarded: the
//!   guardian holds the lease's local deadline and stops the tree before the lease expires by
//!   the server's clock, while a second runner takes the lock; no overlap by the commands' own
//!   timestamps;
//! - a waiting client that gets SIGINT, SIGTERM or SIGHUP leaves the queue before it exits, so
//!   a release goes to the next live waiter at once.
//!
//! The server and the commands share this machine's clock. Every wait is bounded.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod harness;

use std::path::Path;
use std::time::Duration;

use harness::{
    ClientProcess, Server, assert_code, eventually, file_lines, jobs_named, lock_view, millis,
    str_of, workdir,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The bound on one `baton` command finishing, or one condition becoming true.
const PATIENCE: Duration = Duration::from_secs(40);

fn run_sh(server: &Server, dir: &Path, args: &[&str], script: &str) -> ClientProcess {
    let mut argv = vec!["run"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--", "sh", "-c", script]);
    server.spawn_baton(&argv, Some(dir))
}

/// The nanosecond timestamps of the lines `TAG NS` in `file`.
fn stamps(file: &Path, tag: &str) -> Vec<i128> {
    file_lines(file)
        .iter()
        .filter_map(|line| line.strip_prefix(&format!("{tag} ")))
        .filter_map(|ns| ns.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_baton_run_has_its_command_stopped_before_its_lease_expires() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&["--lock-delay", "500ms"]).await;
        let dir = workdir("baton-pause-");
        let file = dir.path().join("stamps");
        let name = "guardian/paused";
        let flags = [name, "--ttl", "3s", "--grace", "300ms"];
        let first = run_sh(
            &server,
            dir.path(),
            &flags,
            "while :; do echo \"a $(date +%s%N)\" >> stamps; sleep 0.05; done",
        );
        eventually("the first command writing", PATIENCE, async || {
            (!stamps(&file, "a").is_empty()).then_some(())
        })
        .await;
        first.signal(Signal::SIGSTOP);
        // A heartbeat in flight when the pause came may still land: read the expiry after it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let view = lock_view(&server, name).await;
        let expires_at_ms = millis(&view["holders"][0]["expires_at"]);
        let second = run_sh(
            &server,
            dir.path(),
            &flags,
            "echo \"b $(date +%s%N)\" >> stamps",
        );
        let second = second.wait(PATIENCE).await;
        assert_code(&second, 0, "the second runner, while the first is paused");
        first.signal(Signal::SIGCONT);
        let first = first.wait(PATIENCE).await;
        assert_code(&first, 79, "the paused runner, its lease lost");

        let a = stamps(&file, "a");
        let b = stamps(&file, "b");
        let last_a = a.iter().copied().max().unwrap();
        let first_b = b.iter().copied().min().unwrap();
        assert!(
            last_a < i128::from(expires_at_ms) * 1_000_000,
            "the paused runner's command wrote {} ms after its lease's expiry",
            (last_a - i128::from(expires_at_ms) * 1_000_000) / 1_000_000
        );
        assert!(last_a < first_b, "the two commands overlapped");
        let jobs = jobs_named(&server, name).await;
        let states: Vec<&str> = jobs
            .iter()
            .map(|job| str_of(&job["state"], "state"))
            .collect();
        assert!(
            states.contains(&"lost") && states.contains(&"succeeded"),
            "{states:?}"
        );
    })
    .await
    .expect("the test took too long");
}

/// The waiters queued on `name`.
async fn waiters(server: &Server, name: &str) -> Vec<Value> {
    lock_view(server, name).await["waiters"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signalled_waiting_acquire_leaves_the_queue_and_the_next_waiter_gets_the_lock() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let name = "guardian/signalled";
        let (holder, _) =
            harness::acquire_queued(&server, name, json!({"owner": "holder", "ttl_ms": 60_000}))
                .await;
        for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            let gone = server.spawn_baton(
                &[
                    "acquire", name, "--owner", "gone", "--ttl", "5m", "--wait", "60s",
                ],
                None,
            );
            eventually("the waiter queued", PATIENCE, async || {
                (waiters(&server, name).await.len() == 1).then_some(())
            })
            .await;
            gone.signal(signal);
            let exited = gone.wait(PATIENCE).await;
            assert_code(&exited, 128 + signal as i32, "the signalled acquire");
            assert!(
                waiters(&server, name).await.is_empty(),
                "the signalled waiter ({signal}) is still queued"
            );
        }
        // `baton run` (wait policy) and `baton parallel --slots` withdraw their jobs too.
        let slots = format!("{name}:1");
        let waiting_runs: [(Signal, Vec<&str>); 2] = [
            (Signal::SIGTERM, vec!["run", name, "--", "true"]),
            (
                Signal::SIGHUP,
                vec!["parallel", "--slots", &slots, "--", "true", ":::", "x"],
            ),
        ];
        for (signal, args) in waiting_runs {
            let gone = server.spawn_baton(&args, None);
            eventually("the job queued", PATIENCE, async || {
                (waiters(&server, name).await.len() == 1).then_some(())
            })
            .await;
            gone.signal(signal);
            let exited = gone.wait(PATIENCE).await;
            assert_code(&exited, 128 + signal as i32, &format!("{args:?}"));
            assert!(
                waiters(&server, name).await.is_empty(),
                "{args:?} is still queued after {signal}"
            );
        }
        // A live waiter behind: the release goes to it at once.
        let live = server.spawn_baton(&["acquire", name, "--owner", "live", "--wait", "60s"], None);
        eventually("the live waiter queued", PATIENCE, async || {
            (waiters(&server, name).await.len() == 1).then_some(())
        })
        .await;
        let lease_id = str_of(&holder["id"], "lease.id");
        let (status, body) = server
            .post(&format!("/v1/leases/{lease_id}/release"), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        let live = live.wait(Duration::from_secs(5)).await;
        assert_code(&live, 0, "the live waiter, granted at the release");
        let view = lock_view(&server, name).await;
        assert_eq!(view["holders"][0]["owner"], "live", "{view}");
    })
    .await
    .expect("the test took too long");
}
