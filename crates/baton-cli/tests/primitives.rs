//! The coordination primitives end to end, with the real binary against a real server: a value
//! published with a lease; read-write locks (16 readers and 4 writers on one lock); leader
//! election (three `baton elect` candidates, the leader killed, watchers following).
//!
//! Every wait is bounded; no assertion is about how long something took.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod harness;

use std::time::Duration;

use harness::{Server, assert_code, eventually, lock_view, millis, workdir};

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

/// One hold of a lock, as the server's history tells it.
#[derive(Debug)]
struct Hold {
    owner: String,
    shared: bool,
    granted: i64,
    ended: i64,
}

/// 16 readers and 4 writers run `baton run --lock rw` (readers with `--shared`), arriving
/// interleaved. By the server's own history: no writer's hold overlaps any other hold, readers'
/// holds overlap each other, and by the job records no writer waits behind a reader that
/// arrived after it (FIFO across modes). Each run holds the lock 300 ms: a few seconds in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_share_a_lock_writers_hold_it_alone_in_arrival_order() {
    let server = Server::start(&[]).await;
    let hold = ["sh", "-c", "sleep 0.3"];
    let mut runs = Vec::new();
    for index in 0..20 {
        // Every fifth arrival is a writer: readers on both sides of each writer.
        let writer = index % 5 == 2;
        let (name, owner) = if writer {
            ("rw-write", format!("writer-{index}"))
        } else {
            ("rw-read", format!("reader-{index}"))
        };
        let mut args = vec!["run", name, "--lock", "rw", "--owner", owner.as_str()];
        if !writer {
            args.push("--shared");
        }
        args.push("--");
        args.extend_from_slice(&hold);
        runs.push(server.spawn_baton(&args, None));
        // Arrivals in a known order (each is queued before the next starts).
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    for run in runs {
        let exited = run.wait(Duration::from_secs(120)).await;
        assert_code(&exited, 0, "a baton run on the read-write lock");
    }

    let (status, history) = server.get("/v1/locks/rw/history?limit=100").await;
    assert_eq!(status, 200, "{history}");
    let holds: Vec<Hold> = history["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|entry| Hold {
            owner: entry["owner"].as_str().unwrap_or_default().to_owned(),
            shared: entry["mode"] == "shared",
            granted: millis(&entry["granted_at"]),
            ended: millis(&entry["ended_at"]),
        })
        .collect();
    assert_eq!(holds.len(), 20, "{history}");
    for hold in &holds {
        assert_eq!(
            hold.shared,
            hold.owner.starts_with("reader-"),
            "history records each hold's mode: {hold:?}"
        );
    }
    assert_eq!(holds.iter().filter(|hold| !hold.shared).count(), 4);
    let overlap = |a: &Hold, b: &Hold| a.granted < b.ended && b.granted < a.ended;
    let mut readers_overlapped = false;
    for (i, a) in holds.iter().enumerate() {
        for b in &holds[i + 1..] {
            if overlap(a, b) {
                assert!(
                    a.shared && b.shared,
                    "a writer overlapped another holder: {a:?} and {b:?}"
                );
                readers_overlapped = true;
            }
        }
    }
    assert!(
        readers_overlapped,
        "no two readers held the lock together: {holds:?}"
    );

    // FIFO across modes, by the job records: a reader created after a writer never started
    // before it.
    let jobs = |name: &'static str| {
        let server = &server;
        async move {
            let (status, body) = server.get(&format!("/v1/jobs?name={name}&limit=100")).await;
            assert_eq!(status, 200, "{body}");
            body["jobs"]
                .as_array()
                .expect("jobs")
                .iter()
                .map(|job| (millis(&job["created_at"]), millis(&job["started_at"])))
                .collect::<Vec<(i64, i64)>>()
        }
    };
    let writers = jobs("rw-write").await;
    let readers = jobs("rw-read").await;
    assert_eq!((writers.len(), readers.len()), (4, 16));
    for (writer_created, writer_started) in &writers {
        for (reader_created, reader_started) in &readers {
            assert!(
                reader_created <= writer_created || reader_started >= writer_started,
                "a reader that arrived after a writer (at {reader_created} > {writer_created}) \
                 started first ({reader_started} < {writer_started})"
            );
        }
    }
}

/// Three `baton elect` candidates and three `baton leader --watch` observers. The leader is
/// killed with SIGKILL (no release: its lease must expire): exactly one other candidate becomes
/// the leader, and every observer prints it, with its published value and token, soon after
/// the grant (a generous bound: the machine is shared).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_every_watcher_sees_it() {
    let server = Server::start(&[]).await;
    let mut candidates = Vec::new();
    for index in 0..3 {
        let value = format!("10.0.0.{index}:5432");
        let owner = format!("candidate-{index}");
        let args = [
            "elect", "db", "--value", &value, "--ttl", "2s", "--grace", "500ms", "--owner", &owner,
            "--", "sleep", "600",
        ];
        candidates.push((owner.clone(), server.spawn_baton(&args, None)));
        // Queued in this order.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = eventually("a leader and two candidates queued", PATIENCE, async || {
        let (_, view) = server.get("/v1/locks/db").await;
        let queued = view["waiters"].as_array().map_or(0, Vec::len);
        (queued == 2).then(|| view["holders"][0].clone())
    })
    .await;
    let mut watchers: Vec<_> = (0..3)
        .map(|_| server.spawn_baton(&["leader", "db", "--watch", "--json"], None))
        .collect();
    for watcher in &watchers {
        let old_token = first["token"].to_string();
        eventually("a watcher printing the leader", PATIENCE, async || {
            watcher
                .stdout_text()
                .contains(&format!("\"token\":{old_token}"))
                .then_some(())
        })
        .await;
    }
    let one_shot = server
        .spawn_baton(&["leader", "db"], None)
        .wait(PATIENCE)
        .await;
    assert_code(&one_shot, 0, "baton leader");
    let text = String::from_utf8_lossy(&one_shot.stdout).into_owned();
    assert!(
        text.contains(first["value"].as_str().unwrap_or("?")),
        "{text}"
    );

    let leader_owner = first["owner"].as_str().expect("owner").to_owned();
    let index = candidates
        .iter()
        .position(|(owner, _)| *owner == leader_owner)
        .expect("the leader is a candidate");
    let (_, leader) = candidates.remove(index);
    leader.signal(nix::sys::signal::Signal::SIGKILL);

    let next = eventually("a new leader", Duration::from_secs(60), async || {
        let (_, view) = server.get("/v1/locks/db").await;
        let holders = view["holders"].as_array()?;
        let holder = holders.first()?;
        (holder["owner"] != first["owner"]).then(|| {
            assert_eq!(holders.len(), 1, "one leader at a time: {view}");
            holder.clone()
        })
    })
    .await;
    let seen_at = tokio::time::Instant::now();
    let expected = format!(
        "\"leader\":{{\"value\":{},\"owner\":{},\"token\":{}}}",
        next["value"], next["owner"], next["token"]
    );
    for watcher in &mut watchers {
        eventually(
            "every watcher printing the new leader",
            Duration::from_secs(10),
            async || watcher.stdout_text().contains(&expected).then_some(()),
        )
        .await;
        assert!(!watcher.has_exited(), "a watcher keeps watching");
    }
    // Generous: the machine is shared; the stream delivers the grant as it is committed.
    assert!(seen_at.elapsed() < Duration::from_secs(10));
    let lines: Vec<String> = watchers[0]
        .stdout_text()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        lines.iter().any(|line| line.contains("\"leader\":null")),
        "the watcher saw the old leader's lease end: {lines:?}"
    );
}

/// Makes an API key with `grants` (through `admin`'s key, or none on a keyless server, which
/// turns keys on) and returns its secret.
async fn create_key(server: &Server, admin: Option<&str>, name: &str, grants: &[&str]) -> String {
    let mut request = server
        .http()
        .post(format!("{}/v1/keys", server.base))
        .header("content-type", "application/json")
        .body(serde_json::json!({"name": name, "grants": grants}).to_string());
    if let Some(admin) = admin {
        request = request.header("authorization", format!("Bearer {admin}"));
    }
    let response = request.send().await.expect("POST /v1/keys");
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.expect("a JSON answer");
    body["secret"].as_str().expect("a secret").to_owned()
}

/// Observers need only the `read` role: with a key that may read `db` and nothing else,
/// `baton leader db` prints the leader and `--watch` follows it, while the same key cannot
/// acquire (exit 77).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_needs_only_the_read_role() {
    let server = Server::start(&[]).await;
    let admin = create_key(&server, None, "admin", &["admin:"]).await;
    let reader = create_key(&server, Some(&admin), "observer", &["read:db"]).await;
    let acquired = server
        .spawn_baton(
            &[
                "--api-key",
                &admin,
                "acquire",
                "db",
                "--value",
                "10.0.0.9:5432",
            ],
            None,
        )
        .wait(PATIENCE)
        .await;
    assert_code(&acquired, 0, "baton acquire with the admin key");
    let lease_id = String::from_utf8_lossy(&acquired.stdout).trim().to_owned();
    let shown = server
        .spawn_baton(&["--api-key", &reader, "leader", "db", "--json"], None)
        .wait(PATIENCE)
        .await;
    assert_code(&shown, 0, "baton leader with a read key");
    let answer: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("JSON");
    assert_eq!(answer["leader"]["value"], "10.0.0.9:5432", "{answer}");
    let watcher = server.spawn_baton(
        &["--api-key", &reader, "leader", "db", "--watch", "--json"],
        None,
    );
    eventually("the watcher printing the leader", PATIENCE, async || {
        watcher
            .stdout_text()
            .contains("10.0.0.9:5432")
            .then_some(())
    })
    .await;
    let released = server
        .spawn_baton(&["--api-key", &admin, "release", &lease_id], None)
        .wait(PATIENCE)
        .await;
    assert_code(&released, 0, "baton release");
    eventually("the watcher seeing no leader", PATIENCE, async || {
        watcher
            .stdout_text()
            .contains("\"leader\":null")
            .then_some(())
    })
    .await;
    let refused = server
        .spawn_baton(&["--api-key", &reader, "acquire", "db", "--no-wait"], None)
        .wait(PATIENCE)
        .await;
    assert_code(&refused, 77, "a read key cannot acquire");
    let none = server
        .spawn_baton(&["--api-key", &reader, "leader", "db"], None)
        .wait(PATIENCE)
        .await;
    assert_code(&none, 66, "no leader");
}

/// A lock is either a semaphore or a read-write lock: `--shared` on a semaphore is refused with
/// `mode_conflict`, exit 65, and takes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_on_a_semaphore_exits_65() {
    let server = Server::start(&[]).await;
    let held = server
        .spawn_baton(&["acquire", "pool", "--capacity", "2"], None)
        .wait(PATIENCE)
        .await;
    assert_code(&held, 0, "a semaphore's holder");
    let refused = server
        .spawn_baton(
            &["acquire", "pool", "--shared", "--no-wait", "--json"],
            None,
        )
        .wait(PATIENCE)
        .await;
    assert_code(&refused, 65, "--shared on a semaphore");
    let text = String::from_utf8_lossy(&refused.stdout).into_owned();
    assert!(text.contains("mode_conflict"), "{text}");
    let view = lock_view(&server, "pool").await;
    assert_eq!(view["holders"].as_array().map(Vec::len), Some(1), "{view}");
}
