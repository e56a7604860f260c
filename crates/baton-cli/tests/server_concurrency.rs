//! G1 (safety), G3 (fencing) and G4 (fairness) under real concurrency: many clients over HTTP
//! against the real `baton server` binary with its durable store.
//!
//! Each claim is checked twice where possible: from what the clients saw (a client's interval
//! from receiving its grant to sending its release lies inside its lease, so overlapping client
//! intervals prove overlapping leases), and from the server's own history.

mod harness;

use std::sync::Arc;
use std::time::Duration;

use harness::{Server, acquire_queued, lock_path, millis, str_of, u64_of, wait_granted};
use serde_json::{Value, json};
use tokio::time::Instant;

/// Clients per lock.
const CLIENTS: usize = 32;
/// Acquire/hold/release rounds per client.
const ROUNDS: usize = 3;
/// No test here may take longer than this; a hang fails instead of stalling the run.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// One grant as a client saw it.
#[derive(Debug, Clone)]
struct Grant {
    owner: String,
    token: u64,
    /// When the acquire request was sent.
    sent: Instant,
    /// When the 200 answer carrying the lease was received.
    granted: Instant,
    /// When the release request was sent.
    released: Instant,
}

/// One past hold from the server's history: `[granted_at, ended_at)` in server milliseconds.
#[derive(Debug, Clone)]
struct Hold {
    owner: String,
    token: u64,
    granted_at: i64,
    ended_at: i64,
    end: String,
}

/// A hold time of 1 to 5 ms, varied per client and round.
fn hold_for(client: usize, round: usize) -> Duration {
    Duration::from_millis(1 + ((client * 7 + round * 3) % 5) as u64)
}

/// Releases a lease; the release must end it (a lease that expired while held would make the
/// client intervals meaningless).
async fn release(server: &Server, lease: &Value) {
    let id = str_of(&lease["id"], "lease.id");
    let (status, body) = server
        .post(&format!("/v1/leases/{id}/release"), json!({}))
        .await;
    assert_eq!(
        (status, &body["released"]),
        (200, &Value::Bool(true)),
        "release: {body}"
    );
}

/// Runs `CLIENTS` clients, each doing `ROUNDS` acquire → hold → release on `name`.
/// Returns every grant.
async fn hammer(server: &Arc<Server>, name: &str, capacity: u32) -> Vec<Grant> {
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let server = Arc::clone(server);
        let name = name.to_owned();
        tasks.push(tokio::spawn(async move {
            let owner = format!("c{client}");
            let mut grants = Vec::new();
            for round in 0..ROUNDS {
                let body = json!({
                    "owner": owner,
                    "ttl_ms": 30_000,
                    "capacity": capacity,
                    "queue": true,
                    "wait_ms": 30_000,
                });
                let sent = Instant::now();
                let (lease, _) = acquire_queued(&server, &name, body).await;
                let granted = Instant::now();
                assert_eq!(lease["owner"], owner.as_str(), "{lease}");
                tokio::time::sleep(hold_for(client, round)).await;
                let released = Instant::now();
                release(&server, &lease).await;
                grants.push(Grant {
                    owner: owner.clone(),
                    token: u64_of(&lease["token"], "lease.token"),
                    sent,
                    granted,
                    released,
                });
            }
            grants
        }));
    }
    let mut grants = Vec::new();
    for task in tasks {
        let mut more = task.await.unwrap_or_else(|error| panic!("client: {error}"));
        grants.append(&mut more);
    }
    grants
}

/// The server's history of `name`, oldest token first.
async fn history(server: &Server, name: &str) -> Vec<Hold> {
    let (status, body) = server.get(&lock_path(name, "/history?limit=1000")).await;
    assert_eq!(status, 200, "history: {body}");
    let Some(entries) = body["entries"].as_array() else {
        panic!("history without entries: {body}");
    };
    let mut holds: Vec<Hold> = entries
        .iter()
        .map(|entry| Hold {
            owner: str_of(&entry["owner"], "owner").to_owned(),
            token: u64_of(&entry["token"], "token"),
            granted_at: millis(&entry["granted_at"]),
            ended_at: millis(&entry["ended_at"]),
            end: str_of(&entry["end"], "end").to_owned(),
        })
        .collect();
    holds.sort_by_key(|hold| hold.token);
    holds
}

/// The most intervals open at once, counting `[start, end)` (an end at the same instant as a
/// start closes first).
fn max_overlap<T: Ord + Copy>(intervals: impl IntoIterator<Item = (T, T)>) -> usize {
    let mut events: Vec<(T, i8)> = Vec::new();
    for (start, end) in intervals {
        assert!(start <= end, "an interval ends before it starts");
        events.push((start, 1));
        events.push((end, -1));
    }
    // At equal times the ends (-1) sort before the starts (+1).
    events.sort();
    let (mut open, mut most) = (0i64, 0i64);
    for (_, step) in events {
        open += i64::from(step);
        most = most.max(open);
    }
    usize::try_from(most).unwrap_or(0)
}

/// Checks one contended run: tokens, client-side overlap, server-side overlap, history.
fn check_run(capacity: usize, grants: &[Grant], holds: &[Hold]) {
    let total = CLIENTS * ROUNDS;
    assert_eq!(grants.len(), total);

    // The run must have been contended, or it proves nothing: at some moment more clients
    // wanted the lock (from sending the acquire to sending the release) than it has places.
    let demand = max_overlap(grants.iter().map(|grant| (grant.sent, grant.released)));
    assert!(
        demand > capacity,
        "at most {demand} clients wanted the lock at once: the run was not contended"
    );

    // G3: tokens unique.
    let mut tokens: Vec<u64> = grants.iter().map(|grant| grant.token).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), total, "a token was granted twice");

    // G1 by the clients' clocks: never more than `capacity` clients inside their intervals.
    let client_overlap = max_overlap(grants.iter().map(|grant| (grant.granted, grant.released)));
    assert!(
        client_overlap <= capacity,
        "{client_overlap} clients held the lock at once (capacity {capacity})"
    );

    // The server's record: exactly the grants the clients saw, each released by its client.
    assert_eq!(holds.len(), total, "history has {} holds", holds.len());
    let mut by_token: Vec<(u64, &str)> = grants
        .iter()
        .map(|grant| (grant.token, grant.owner.as_str()))
        .collect();
    by_token.sort_unstable();
    for (hold, (token, owner)) in holds.iter().zip(&by_token) {
        assert_eq!((hold.token, hold.owner.as_str()), (*token, *owner));
        assert_eq!(hold.end, "released", "{hold:?}");
        assert!(hold.granted_at <= hold.ended_at, "{hold:?}");
    }

    // G1 by the server's clock: never more than `capacity` leases at once, [granted, ended).
    let server_overlap = max_overlap(holds.iter().map(|hold| (hold.granted_at, hold.ended_at)));
    assert!(
        server_overlap <= capacity,
        "the server's history shows {server_overlap} leases at once (capacity {capacity})"
    );

    // G3 in grant order by the server's clock: a greater token is never granted earlier.
    for pair in holds.windows(2) {
        assert!(
            pair[0].granted_at <= pair[1].granted_at,
            "token {} was granted after token {}: {:?} / {:?}",
            pair[0].token,
            pair[1].token,
            pair[0],
            pair[1]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_contended_mutex_is_held_by_one_client_at_a_time() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Arc::new(Server::start(&[]).await);
        let mut grants = hammer(&server, "conc/mutex", 1).await;
        let holds = history(&server, "conc/mutex").await;
        check_run(1, &grants, &holds);

        // With one holder at a time the client intervals are disjoint, so the order in which
        // clients received grants is the server's grant order: tokens must rise along it.
        grants.sort_by_key(|grant| grant.granted);
        for pair in grants.windows(2) {
            assert!(
                pair[0].token < pair[1].token,
                "grant order {:?} then {:?}: tokens do not increase",
                pair[0],
                pair[1]
            );
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the test did not finish within {TEST_TIMEOUT:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_semaphore_of_three_never_has_more_than_three_holders() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Arc::new(Server::start(&[]).await);
        let grants = hammer(&server, "conc/sem", 3).await;
        let holds = history(&server, "conc/sem").await;
        check_run(3, &grants, &holds);
        // The semaphore must actually have been used as one: with 32 clients queued on 3
        // places, a server that granted one at a time would pass the bound above.
        let server_overlap = max_overlap(holds.iter().map(|hold| (hold.granted_at, hold.ended_at)));
        assert_eq!(
            server_overlap, 3,
            "the semaphore never had 3 holders at once: capacity is not being used"
        );
    })
    .await
    .unwrap_or_else(|_| panic!("the test did not finish within {TEST_TIMEOUT:?}"));
}

/// Holds `name` as "blocker", and returns the lease.
async fn block(server: &Server, name: &str) -> Value {
    let (status, body) = server
        .post(
            &lock_path(name, "/acquire"),
            json!({"owner": "blocker", "ttl_ms": 60_000}),
        )
        .await;
    assert_eq!(status, 200, "blocker: {body}");
    body["lease"].clone()
}

/// Enqueues one waiter without waiting; returns its ticket.
async fn enqueue(server: &Server, name: &str, owner: &str) -> Value {
    let (status, body) = server
        .post(
            &lock_path(name, "/acquire"),
            json!({"owner": owner, "ttl_ms": 30_000, "queue": true, "wait_ms": 0}),
        )
        .await;
    assert_eq!(status, 202, "enqueue {owner}: {body}");
    body["ticket"].clone()
}

/// Every ticket waits concurrently and the blocker releases (whether or not every wait has
/// reached the server yet: FIFO must hold either way). Each waiter holds briefly and releases.
/// Returns the grants in the order the clients received them.
async fn drain_queue(
    server: &Arc<Server>,
    blocker: &Value,
    tickets: Vec<(String, String)>,
) -> Vec<Grant> {
    let mut tasks = Vec::new();
    for (index, (owner, ticket_id)) in tickets.into_iter().enumerate() {
        let server = Arc::clone(server);
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let lease = wait_granted(&server, &ticket_id).await;
            let granted = Instant::now();
            assert_eq!(lease["owner"], owner.as_str(), "{lease}");
            tokio::time::sleep(hold_for(index, 0)).await;
            let released = Instant::now();
            release(&server, &lease).await;
            Grant {
                owner,
                token: u64_of(&lease["token"], "lease.token"),
                sent,
                granted,
                released,
            }
        }));
    }
    release(server, blocker).await;
    let mut grants = Vec::new();
    for task in tasks {
        grants.push(task.await.unwrap_or_else(|error| panic!("waiter: {error}")));
    }
    grants.sort_by_key(|grant| grant.granted);
    grants
}

/// Grants in `grants` (client order) and in the server's history must both follow `expected`.
async fn check_fifo(
    server: &Server,
    name: &str,
    blocker_token: u64,
    grants: &[Grant],
    expected: &[String],
) {
    // Mutual exclusion first: it is what makes client receive order the grant order.
    let overlap = max_overlap(grants.iter().map(|grant| (grant.granted, grant.released)));
    assert!(overlap <= 1, "{overlap} waiters held the mutex at once");
    let seen: Vec<&str> = grants.iter().map(|grant| grant.owner.as_str()).collect();
    assert_eq!(seen, expected, "grants did not follow the queue order");
    for pair in grants.windows(2) {
        assert!(
            pair[0].token < pair[1].token,
            "tokens out of order: {pair:?}"
        );
    }
    assert!(grants[0].token > blocker_token);

    let holds = history(server, name).await;
    let order: Vec<&str> = holds
        .iter()
        .filter(|hold| hold.owner != "blocker")
        .map(|hold| hold.owner.as_str())
        .collect();
    assert_eq!(
        order, expected,
        "the server's history is not in queue order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_enqueued_one_after_another_are_granted_in_that_order() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Arc::new(Server::start(&[]).await);
        let name = "conc/fifo";
        let blocker = block(&server, name).await;
        let mut tickets = Vec::new();
        let mut expected = Vec::new();
        for index in 0..CLIENTS {
            let owner = format!("q{index:02}");
            let ticket = enqueue(&server, name, &owner).await;
            assert_eq!(
                u64_of(&ticket["position"], "position"),
                index as u64 + 1,
                "{ticket}"
            );
            tickets.push((owner.clone(), str_of(&ticket["id"], "ticket.id").to_owned()));
            expected.push(owner);
        }
        // The listing shows the same queue.
        let (status, lock) = server.get(&lock_path(name, "")).await;
        assert_eq!(status, 200, "{lock}");
        let listed: Vec<&str> = lock["waiters"]
            .as_array()
            .map(|waiters| waiters.iter().filter_map(|w| w["owner"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(listed, expected, "listed waiters: {lock}");

        let blocker_token = u64_of(&blocker["token"], "token");
        let grants = drain_queue(&server, &blocker, tickets).await;
        check_fifo(&server, name, blocker_token, &grants, &expected).await;
    })
    .await
    .unwrap_or_else(|_| panic!("the test did not finish within {TEST_TIMEOUT:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_enqueued_at_once_get_distinct_positions_and_are_granted_by_position() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Arc::new(Server::start(&[]).await);
        let name = "conc/fifo-burst";
        let blocker = block(&server, name).await;
        let mut tasks = Vec::new();
        for index in 0..CLIENTS {
            let server = Arc::clone(&server);
            tasks.push(tokio::spawn(async move {
                let owner = format!("b{index:02}");
                let ticket = enqueue(&server, name, &owner).await;
                (
                    u64_of(&ticket["position"], "position"),
                    owner,
                    str_of(&ticket["id"], "ticket.id").to_owned(),
                )
            }));
        }
        let mut queued = Vec::new();
        for task in tasks {
            queued.push(
                task.await
                    .unwrap_or_else(|error| panic!("enqueue: {error}")),
            );
        }
        queued.sort();
        let positions: Vec<u64> = queued.iter().map(|(position, ..)| *position).collect();
        let all: Vec<u64> = (1..=CLIENTS as u64).collect();
        assert_eq!(
            positions, all,
            "positions are not a permutation of 1..={CLIENTS}"
        );
        let expected: Vec<String> = queued.iter().map(|(_, owner, _)| owner.clone()).collect();

        let (status, lock) = server.get(&lock_path(name, "")).await;
        assert_eq!(status, 200, "{lock}");
        let listed: Vec<&str> = lock["waiters"]
            .as_array()
            .map(|waiters| waiters.iter().filter_map(|w| w["owner"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(
            listed, expected,
            "listed waiters do not match the positions: {lock}"
        );

        let tickets = queued
            .into_iter()
            .map(|(_, owner, id)| (owner, id))
            .collect();
        let blocker_token = u64_of(&blocker["token"], "token");
        let grants = drain_queue(&server, &blocker, tickets).await;
        check_fifo(&server, name, blocker_token, &grants, &expected).await;
    })
    .await
    .unwrap_or_else(|_| panic!("the test did not finish within {TEST_TIMEOUT:?}"));
}
