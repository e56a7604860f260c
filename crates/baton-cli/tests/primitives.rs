//! The coordination primitives end to end, with the real binary against a real server: a value
//! published with a lease.
//!
//! Every wait is bounded; no assertion is about how long something took.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod harness;

use std::time::Duration;

use harness::{Server, assert_code, eventually, lock_view, workdir};

/// The bound on one `baton` command finishing, or one condition becoming true.
const PATIENCE: Duration = Duration::from_secs(30);

/// A value set by `baton acquire --value` is shown by `baton status --json` and kept by a
/// renewal without one; `baton renew --value` replaces it; history keeps the last one; a value
/// over 1024 bytes is refused (exit 65) and changes nothing; `baton run --value` publishes its
/// value while the command runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_value_is_published_renewed_and_kept_in_history() {
    let server = Server::start(&[]).await;
    let acquire = server
        .spawn_baton(&["acquire", "leader", "--value", "10.0.0.1:7000"], None)
        .wait(PATIENCE)
        .await;
    assert_code(&acquire, 0, "baton acquire --value");
    let lease_id = String::from_utf8_lossy(&acquire.stdout).trim().to_owned();
    let view = lock_view(&server, "leader").await;
    assert_eq!(view["holders"][0]["value"], "10.0.0.1:7000", "{view}");

    let status = server
        .spawn_baton(&["status", "leader"], None)
        .wait(PATIENCE)
        .await;
    assert_code(&status, 0, "baton status");
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        text.contains("VALUE") && text.contains("10.0.0.1:7000"),
        "{text}"
    );

    let too_long = "v".repeat(1025);
    let refused = server
        .spawn_baton(&["renew", &lease_id, "--value", &too_long], None)
        .wait(PATIENCE)
        .await;
    assert_code(&refused, 65, "a value over the bound");
    let kept = server
        .spawn_baton(&["renew", &lease_id], None)
        .wait(PATIENCE)
        .await;
    assert_code(&kept, 0, "baton renew");
    let view = lock_view(&server, "leader").await;
    assert_eq!(view["holders"][0]["value"], "10.0.0.1:7000", "{view}");

    let renewed = server
        .spawn_baton(
            &["renew", &lease_id, "--value", "10.0.0.1:7001", "--json"],
            None,
        )
        .wait(PATIENCE)
        .await;
    assert_code(&renewed, 0, "baton renew --value");
    let lease: serde_json::Value = serde_json::from_slice(&renewed.stdout).expect("JSON");
    assert_eq!(lease["value"], "10.0.0.1:7001");
    let release = server
        .spawn_baton(&["release", &lease_id], None)
        .wait(PATIENCE)
        .await;
    assert_code(&release, 0, "baton release");
    let (status, history) = server.get("/v1/locks/leader/history").await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["entries"][0]["value"], "10.0.0.1:7001", "{history}");

    let dir = workdir("value-run");
    let stop = dir.path().join("stop");
    let script = format!("while [ ! -e {} ]; do sleep 0.05; done", stop.display());
    let run = server.spawn_baton(
        &["run", "job", "--value", "v2", "--", "sh", "-c", &script],
        None,
    );
    let holder = eventually("the run holding job", PATIENCE, async || {
        let (_, view) = server.get("/v1/locks/job").await;
        view["holders"].get(0).cloned()
    })
    .await;
    assert_eq!(holder["value"], "v2", "{holder}");
    std::fs::write(&stop, b"").expect("stop the command");
    let exited = run.wait(PATIENCE).await;
    assert_code(&exited, 0, "baton run --value");
}
