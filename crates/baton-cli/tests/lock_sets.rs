//! Several locks at once, end to end with the real binary against a real server: 8 clients
//! take overlapping pairs of 4 locks, in random order, with `baton run a,b -- CMD` for a bounded
//! time (10 s). No deadlock (every client completes several rounds, every run exits 0), no
//! overlap (checked by the commands themselves with a directory per lock, and by the server's
//! history), every lock's grants in token order; and `baton acquire a,b` prints every lease.
//!
//! Every wait is bounded; no assertion is about how long something took. A failing run prints
//! the seed of its random pairs (`BATON_TEST_SEED` replays it).

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{Server, assert_code, millis, workdir};

/// The bound on one `baton` command finishing.
const PATIENCE: Duration = Duration::from_secs(60);
/// How long the clients keep starting rounds.
const RUN_FOR: Duration = Duration::from_secs(10);
const LOCKS: [&str; 4] = ["pair-a", "pair-b", "pair-c", "pair-d"];
const CLIENTS: u64 = 8;
/// Every client completes at least this many rounds in [`RUN_FOR`] (no deadlock, no
/// starvation); a generous floor on a shared 2-core machine.
const ROUNDS_MIN: usize = 2;

/// A small deterministic generator (splitmix64), so a seed replays the same pairs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Two distinct locks, in random order.
    fn pair(&mut self) -> (usize, usize) {
        let first = (self.next() % 4) as usize;
        let second = (first + 1 + (self.next() % 3) as usize) % 4;
        (first, second)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_pairs_never_deadlock_never_overlap_and_all_progress() {
    let seed = std::env::var("BATON_TEST_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |elapsed| elapsed.as_nanos() as u64)
        });
    eprintln!("lock sets: seed {seed} (BATON_TEST_SEED={seed} replays it)");
    let server = Arc::new(Server::start(&[]).await);
    let dir = workdir("lock-sets");
    let held = dir.path().to_owned();
    // Each command marks its locks held with a directory per lock: `mkdir` fails if another
    // holder's directory is there, which would be an overlap.
    let script = format!(
        "set -e; cd {}; for l in $(echo \"$BATON_LOCKS\" | tr , ' '); do \
         mkdir \"$l\" 2>/dev/null || {{ echo \"overlap on $l\" >> overlaps; exit 3; }}; done; \
         sleep 0.05; for l in $(echo \"$BATON_LOCKS\" | tr , ' '); do rmdir \"$l\"; done; \
         echo \"$BATON_FENCING_TOKENS\" >> tokens",
        held.display()
    );
    let started = Instant::now();
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let server = Arc::clone(&server);
        let script = script.clone();
        clients.push(tokio::spawn(async move {
            let mut rng = Rng(seed ^ (client + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
            let owner = format!("client-{client}");
            let mut rounds = 0usize;
            while started.elapsed() < RUN_FOR {
                let (first, second) = rng.pair();
                let pair = format!("{},{}", LOCKS[first], LOCKS[second]);
                let exited = server
                    .spawn_baton(
                        &[
                            "run", &pair, "--owner", &owner, "--ttl", "10s", "--", "sh", "-c",
                            &script,
                        ],
                        None,
                    )
                    .wait(PATIENCE)
                    .await;
                assert_code(
                    &exited,
                    0,
                    &format!("{owner}: baton run {pair} (seed {seed})"),
                );
                rounds += 1;
            }
            (owner, rounds)
        }));
    }
    let mut total = 0;
    for client in clients {
        let (owner, rounds) = client.await.expect("a client task");
        assert!(
            rounds >= ROUNDS_MIN,
            "{owner} completed only {rounds} rounds in {RUN_FOR:?}: no progress (seed {seed})"
        );
        eprintln!("{owner}: {rounds} rounds");
        total += rounds;
    }
    assert!(
        !held.join("overlaps").exists(),
        "two holders overlapped: {} (seed {seed})",
        std::fs::read_to_string(held.join("overlaps")).unwrap_or_default()
    );
    let recorded = std::fs::read_to_string(held.join("tokens")).unwrap_or_default();
    assert_eq!(
        recorded.lines().count(),
        total,
        "every run recorded its tokens"
    );

    // By the server's history: on each lock, holds never overlap and tokens grow with time.
    for lock in LOCKS {
        let (status, history) = server
            .get(&format!("/v1/locks/{lock}/history?limit=1000"))
            .await;
        assert_eq!(status, 200, "{history}");
        let mut holds: Vec<(u64, i64, i64, String)> = history["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|entry| {
                (
                    entry["token"].as_u64().expect("token"),
                    millis(&entry["granted_at"]),
                    millis(&entry["ended_at"]),
                    entry["end"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        holds.sort();
        for pair in holds.windows(2) {
            let ((_, _, ended, how), (_, granted, _, _)) = (&pair[0], &pair[1]);
            assert!(
                granted >= ended,
                "{lock}: a hold began before the previous one ended: {pair:?} (seed {seed})"
            );
            assert_eq!(
                how, "released",
                "{lock}: every hold ended cleanly: {pair:?}"
            );
        }
    }
}

/// `baton acquire a,b` takes both locks together and prints each lease id, one per line;
/// `--print env` names every lock and token; a busy set with `--no-wait` exits 75 and takes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_acquire_takes_a_comma_list_together() {
    let server = Server::start(&[]).await;
    let acquired = server
        .spawn_baton(&["acquire", "set-x,set-y", "--print", "env"], None)
        .wait(PATIENCE)
        .await;
    assert_code(&acquired, 0, "baton acquire set-x,set-y");
    let text = String::from_utf8_lossy(&acquired.stdout).into_owned();
    assert!(text.contains("BATON_LOCKS='set-x,set-y'"), "{text}");
    assert!(
        text.contains("BATON_FENCING_TOKENS='set-x=1,set-y=2'"),
        "{text}"
    );

    let busy = server
        .spawn_baton(&["acquire", "set-z,set-y", "--no-wait"], None)
        .wait(PATIENCE)
        .await;
    assert_code(&busy, 75, "a busy set without waiting");
    let (status, view) = server.get("/v1/locks/set-z").await;
    assert_eq!(status, 404, "a refused set leaves no lock behind: {view}");

    let json = server
        .spawn_baton(&["acquire", "set-p,set-q", "--json"], None)
        .wait(PATIENCE)
        .await;
    assert_code(&json, 0, "baton acquire --json");
    let body: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    let leases = body["leases"].as_array().expect("leases");
    assert_eq!(leases.len(), 2, "{body}");
    assert_eq!(leases[0]["lock"], "set-p");
    assert_eq!(leases[1]["lock"], "set-q");
}

/// G6 for a run over several locks: when any one of its leases is lost (here revoked), the
/// command's whole process is stopped and `baton run` exits with the lease-lost code (79), even
/// though its other lease is still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_lease_of_a_set_stops_the_command() {
    let server = Server::start(&[]).await;
    let dir = workdir("baton-set-lost");
    let run = server.spawn_baton(
        &[
            "run",
            "lost-a,lost-b",
            "--ttl",
            "3s",
            "--",
            "sh",
            "-c",
            "echo $$ > pid; exec sleep 120",
        ],
        Some(dir.path()),
    );
    let pid: i32 = harness::eventually("the command's pid", PATIENCE, async || {
        std::fs::read_to_string(dir.path().join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    })
    .await;
    assert!(harness::process_alive(pid), "the command runs");
    let (status, view) = server.get("/v1/locks/lost-b").await;
    assert_eq!(status, 200, "{view}");
    let token = view["holders"][0]["token"].clone();
    let (status, body) = server
        .post(
            "/v1/locks/lost-b/revoke",
            serde_json::json!({"token": token}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let exited = run.wait(PATIENCE).await;
    assert_code(&exited, 79, "baton run a,b after one lease was revoked");
    assert!(!harness::process_alive(pid), "the command is gone");
}
