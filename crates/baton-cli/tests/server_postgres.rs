#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Several real `baton server` processes sharing one PostgreSQL database (`--database URL
//! --database-schema S`): G1 (safety), G3 (fencing) and G4 (fairness) must hold across
//! servers (one is the active server, the others standbys that forward to it), a kill -9 of one
//! server must cost its clients nothing but a fail-over, and a standby whose own clock is off by
//! an hour must still show and renew leases by the active's clock.
//!
//! Every test needs PostgreSQL ([`testing::available`] skips it plainly without one, or fails
//! it under `BATON_REQUIRE_POSTGRES=1`), works in a schema of its own and drops it at the end,
//! passed or failed ([`Schema`]).

mod harness;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_client::proto::AcquireRequest;
use baton_client::{Acquired, Client, Error as ClientError};
use baton_store_postgres::testing;
use harness::{
    Server, acquire_queued, eventually, lock_path, lock_view, millis, random_hex32, str_of, u64_of,
    wait_granted,
};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

/// No test here may take longer than this; a hang fails instead of stalling the run.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Clients per lock in the contended runs.
const CLIENTS: usize = 32;
/// Acquire/hold/release rounds per client.
const ROUNDS: usize = 3;

// ----- set-up ---------------------------------------------------------------------------------

/// The test's own schema, dropped when the test ends (also on a failure or a timeout).
/// Declared before the servers, so that it is dropped after them.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn new(url: &str, key: &str) -> Schema {
        let name = testing::schema_for(key);
        // A schema left by an earlier process with the same id would mix old state in.
        testing::drop_schema(url, &name);
        Schema {
            url: url.to_owned(),
            name,
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        testing::drop_schema(&self.url, &self.name);
    }
}

/// Starts `baton server --database URL --database-schema S EXTRA…`.
async fn start_pg(schema: &Schema, extra: &[&str]) -> Server {
    let mut args = vec![
        "--database",
        schema.url.as_str(),
        "--database-schema",
        schema.name.as_str(),
    ];
    args.extend_from_slice(extra);
    Server::start(&args).await
}

/// Starts three servers on the schema at once (they create its tables concurrently).
async fn start_three(schema: &Schema) -> Vec<Server> {
    let (a, b, c) = tokio::join!(
        start_pg(schema, &[]),
        start_pg(schema, &[]),
        start_pg(schema, &[])
    );
    vec![a, b, c]
}

/// Runs `test` bounded by [`TEST_TIMEOUT`].
async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {TEST_TIMEOUT:?}"));
}

// ----- shared checks --------------------------------------------------------------------------

/// One grant as a client saw it.
#[derive(Debug, Clone)]
struct Grant {
    owner: String,
    token: u64,
    /// When the acquire (or first wait) request was sent.
    sent: Instant,
    /// When the 200 answer carrying the lease was received.
    granted: Instant,
    /// When the release request was sent.
    released: Instant,
}

/// One past hold from a server's history: `[granted_at, ended_at)` in database milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Releases a lease through `server`; the release must end it.
async fn release(server: &Server, lease: &Value) {
    let id = str_of(&lease["id"], "lease.id");
    let (status, body) = server
        .post(&format!("/v1/leases/{id}/release"), json!({}))
        .await;
    assert_eq!(
        (status, &body["released"]),
        (200, &Value::Bool(true)),
        "release through {}: {body}",
        server.base
    );
}

/// The history of `name` as `server` tells it, oldest token first.
async fn history(server: &Server, name: &str) -> Vec<Hold> {
    let (status, body) = server.get(&lock_path(name, "/history?limit=1000")).await;
    assert_eq!(status, 200, "history through {}: {body}", server.base);
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

/// The history of `name` read through every server: all must tell the same one.
async fn agreed_history(servers: &[Arc<Server>], name: &str) -> Vec<Hold> {
    let first = history(&servers[0], name).await;
    for server in &servers[1..] {
        let other = history(server, name).await;
        assert_eq!(
            other, first,
            "{} and {} disagree on the history of {name}",
            server.base, servers[0].base
        );
    }
    first
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
    events.sort();
    let (mut open, mut most) = (0i64, 0i64);
    for (_, step) in events {
        open += i64::from(step);
        most = most.max(open);
    }
    usize::try_from(most).unwrap_or(0)
}

/// Owners of the waiters `lock` lists, in queue order.
fn listed_waiters(lock: &Value) -> Vec<String> {
    lock["waiters"]
        .as_array()
        .unwrap_or_else(|| panic!("no waiters array: {lock}"))
        .iter()
        .map(|waiter| str_of(&waiter["owner"], "owner").to_owned())
        .collect()
}

/// (token, owner, expires_at) of the holders `lock` lists.
fn listed_holders(lock: &Value) -> Vec<(u64, String, i64)> {
    lock["holders"]
        .as_array()
        .unwrap_or_else(|| panic!("no holders array: {lock}"))
        .iter()
        .map(|holder| {
            (
                u64_of(&holder["token"], "token"),
                str_of(&holder["owner"], "owner").to_owned(),
                millis(&holder["expires_at"]),
            )
        })
        .collect()
}

// ----- 1. three servers, one lock --------------------------------------------------------------

/// `CLIENTS` clients, client i on server i % 3, each doing `ROUNDS` acquire → hold → release.
async fn hammer(servers: &[Arc<Server>], name: &str, capacity: u32) -> Vec<Grant> {
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let server = Arc::clone(&servers[client % servers.len()]);
        let name = name.to_owned();
        tasks.push(tokio::spawn(async move {
            let owner = format!("c{client}");
            let mut grants = Vec::new();
            for round in 0..ROUNDS {
                let body = json!({
                    "owner": owner,
                    "ttl_ms": 60_000,
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

/// Checks one contended run: tokens, client-side overlap, the history every server tells.
fn check_run(capacity: usize, grants: &[Grant], holds: &[Hold]) {
    let total = CLIENTS * ROUNDS;
    assert_eq!(grants.len(), total);
    let demand = max_overlap(grants.iter().map(|grant| (grant.sent, grant.released)));
    assert!(
        demand > capacity,
        "at most {demand} clients wanted the lock at once: the run was not contended"
    );
    let mut tokens: Vec<u64> = grants.iter().map(|grant| grant.token).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), total, "a token was granted twice");

    // G1 by the clients' clocks, across servers.
    let client_overlap = max_overlap(grants.iter().map(|grant| (grant.granted, grant.released)));
    assert!(
        client_overlap <= capacity,
        "{client_overlap} clients held the lock at once (capacity {capacity})"
    );

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
    // G1 by the database's clock.
    let server_overlap = max_overlap(holds.iter().map(|hold| (hold.granted_at, hold.ended_at)));
    assert!(
        server_overlap <= capacity,
        "the history shows {server_overlap} leases at once (capacity {capacity})"
    );
    // G3: a greater token is never granted earlier.
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
async fn three_servers_share_one_lock() {
    let Some(url) = testing::available("three_servers_share_one_lock").await else {
        return;
    };
    bounded(async {
        let schema = Schema::new(&url, "share");
        let servers: Vec<Arc<Server>> = start_three(&schema)
            .await
            .into_iter()
            .map(Arc::new)
            .collect();

        // A mutex: one holder at a time whichever server granted it, so the order in which
        // the clients received their grants is the grant order, and tokens rise along it.
        let mut grants = hammer(&servers, "pg/mutex", 1).await;
        let holds = agreed_history(&servers, "pg/mutex").await;
        check_run(1, &grants, &holds);
        grants.sort_by_key(|grant| grant.granted);
        for pair in grants.windows(2) {
            assert!(
                pair[0].token < pair[1].token,
                "grant order {:?} then {:?}: tokens do not increase",
                pair[0],
                pair[1]
            );
        }

        // A semaphore of three.
        let grants = hammer(&servers, "pg/sem", 3).await;
        let holds = agreed_history(&servers, "pg/sem").await;
        check_run(3, &grants, &holds);
        let server_overlap = max_overlap(holds.iter().map(|hold| (hold.granted_at, hold.ended_at)));
        assert_eq!(
            server_overlap, 3,
            "the semaphore never had 3 holders at once: capacity is not being used"
        );
        // The semaphore's tokens continue after the mutex's: one sequence for all servers.
        let mutex_max = grants_max_token(&agreed_history(&servers, "pg/mutex").await);
        assert!(
            holds.iter().all(|hold| hold.token > mutex_max),
            "a semaphore token is not above the mutex's last token {mutex_max}"
        );
    })
    .await;
}

fn grants_max_token(holds: &[Hold]) -> u64 {
    holds.iter().map(|hold| hold.token).max().unwrap_or(0)
}

// ----- 2. FIFO across servers -----------------------------------------------------------------

/// Waiters queued behind the blocker.
const FIFO_WAITERS: usize = 9;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifo_across_servers() {
    let Some(url) = testing::available("fifo_across_servers").await else {
        return;
    };
    bounded(async {
        let schema = Schema::new(&url, "fifo");
        let servers: Vec<Arc<Server>> = start_three(&schema)
            .await
            .into_iter()
            .map(Arc::new)
            .collect();
        let name = "pg/fifo";
        // The blocker holds through server 0; the waiters sit on servers 1 and 2 in turn.
        let (status, body) = servers[0]
            .post(
                &lock_path(name, "/acquire"),
                json!({"owner": "blocker", "ttl_ms": 60_000}),
            )
            .await;
        assert_eq!(status, 200, "blocker: {body}");
        let blocker = body["lease"].clone();
        let blocker_token = u64_of(&blocker["token"], "token");

        let mut waiters = Vec::new();
        let mut expected = Vec::new();
        for index in 0..FIFO_WAITERS {
            let on = 1 + index % 2;
            let owner = format!("q{index}");
            let (status, body) = servers[on]
                .post(
                    &lock_path(name, "/acquire"),
                    json!({"owner": owner, "ttl_ms": 60_000, "queue": true, "wait_ms": 0}),
                )
                .await;
            assert_eq!(status, 202, "enqueue {owner} on server {on}: {body}");
            assert_eq!(
                u64_of(&body["ticket"]["position"], "position"),
                index as u64 + 1,
                "{body}"
            );
            expected.push(owner.clone());
            // Visibly queued, at its place, through another server than its own.
            let other = &servers[(on + 1) % servers.len()];
            assert_eq!(
                listed_waiters(&lock_view(other, name).await),
                expected,
                "the queue as {} lists it",
                other.base
            );
            waiters.push((
                on,
                owner,
                str_of(&body["ticket"]["id"], "ticket.id").to_owned(),
            ));
        }

        let mut tasks = Vec::new();
        for (index, (on, owner, ticket)) in waiters.into_iter().enumerate() {
            let server = Arc::clone(&servers[on]);
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let lease = wait_granted(&server, &ticket).await;
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
        release(&servers[0], &blocker).await;
        let mut grants = Vec::new();
        for task in tasks {
            grants.push(task.await.unwrap_or_else(|error| panic!("waiter: {error}")));
        }
        grants.sort_by_key(|grant| grant.granted);

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
        let holds = agreed_history(&servers, name).await;
        let order: Vec<&str> = holds
            .iter()
            .filter(|hold| hold.owner != "blocker")
            .map(|hold| hold.owner.as_str())
            .collect();
        assert_eq!(order, expected, "the history is not in queue order");
    })
    .await;
}

// ----- 3. kill -9 of one server under load ----------------------------------------------------

/// Clients cycling acquire/release on locks of their own through the servers that stay up.
const LOAD_CLIENTS: usize = 4;
/// Clients cycling acquire/release on locks of their own through the server that is killed.
const VICTIM_LOAD_CLIENTS: usize = 3;
/// Rounds each of them makes at most, so that its lock's whole history fits one read (1000).
const VICTIM_LOAD_ROUNDS_MAX: usize = 900;
/// The server of each queued waiter (0 is the one killed).
const KILL_WAITERS_ON: [usize; 6] = [0, 1, 0, 2, 0, 1];
/// Grants the load clients must receive after the kill.
const LOAD_AFTER_KILL: usize = 20;

/// A client for every server, `own` first (the fail-over order).
fn client_for(bases: &[String], own: usize) -> Client {
    let mut urls = vec![bases[own].clone()];
    urls.extend(
        bases
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != own)
            .map(|(_, base)| base.clone()),
    );
    Client::new(&urls.join(",")).unwrap_or_else(|error| panic!("client: {error}"))
}

/// What one queued waiter of the kill test saw.
#[derive(Debug, Default, Clone)]
struct WaiterLog {
    /// (position, server that answered) of every "still queued" answer.
    queued: Vec<(u64, String)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_one_server_mid_load() {
    let Some(url) = testing::available("kill9_one_server_mid_load").await else {
        return;
    };
    bounded(async {
        let schema = Schema::new(&url, "kill9");
        let mut servers = start_three(&schema).await;
        // The victim is a standby: killing it must cost its clients nothing but moving to
        // another server, and the others nothing at all. (Killing the active costs everyone a
        // fail-over of about a leadership lease: crates/baton-cli/tests/failover.rs.)
        let active = eventually("one active server", Duration::from_secs(30), async || {
            for (index, server) in servers.iter().enumerate() {
                if server.get("/readyz").await.0 == 200 {
                    return Some(index);
                }
            }
            None
        })
        .await;
        servers.swap(0, (active + 1) % 3);
        let bases: Vec<String> = servers.iter().map(|server| server.base.clone()).collect();
        let victim = bases[0].clone();
        let name = "pg/kill";

        // Load on the two servers that stay up, on locks of its own.
        let stop = Arc::new(AtomicBool::new(false));
        let load_errors = Arc::new(Mutex::new(Vec::<String>::new()));
        let (count_tx, count_rx) = watch::channel(0usize);
        let count_tx = Arc::new(count_tx);
        let mut load = Vec::new();
        for index in 0..LOAD_CLIENTS {
            let own = 1 + index % 2;
            let client = client_for(&bases, own);
            let (stop, errors, count_tx) = (
                Arc::clone(&stop),
                Arc::clone(&load_errors),
                Arc::clone(&count_tx),
            );
            let own_url = bases[own].clone();
            load.push(tokio::spawn(async move {
                let lock = format!("pg/load/{index}");
                let request = AcquireRequest {
                    owner: format!("l{index}"),
                    ttl_ms: Some(60_000),
                    ..AcquireRequest::default()
                };
                while !stop.load(Ordering::Relaxed) {
                    let outcome = match client.acquire(&lock, &request).await {
                        Ok(Acquired::Granted(granted)) => {
                            client.release(&granted.lease.id).await.map(|answer| {
                                if !answer.released {
                                    errors
                                        .lock()
                                        .unwrap()
                                        .push(format!("{lock}: release said {answer:?}"));
                                }
                            })
                        }
                        Ok(Acquired::Queued(ticket)) => {
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("{lock}: queued {ticket:?}"));
                            Ok(())
                        }
                        Err(error) => Err(error),
                    };
                    if let Err(error) = outcome {
                        errors.lock().unwrap().push(format!("{lock}: {error}"));
                    }
                    count_tx.send_modify(|count| *count += 1);
                }
                // Never moved off its own server: the kill did not disturb it.
                (own_url, client.current_url().to_owned())
            }));
        }

        // Load through the victim too: these clients must fail over and lose nothing; an
        // acquire whose answer the kill cut off is sent again elsewhere with its request id and
        // must get the same lease back, not `busy` behind an orphan.
        let (victim_tx, victim_rx) = watch::channel(0usize);
        let victim_tx = Arc::new(victim_tx);
        let mut victim_load = Vec::new();
        for index in 0..VICTIM_LOAD_CLIENTS {
            let client = client_for(&bases, 0);
            let (stop, progress) = (Arc::clone(&stop), Arc::clone(&victim_tx));
            victim_load.push(tokio::spawn(async move {
                let lock = format!("pg/victim-load/{index}");
                let request = AcquireRequest {
                    owner: format!("v{index}"),
                    ttl_ms: Some(60_000),
                    ..AcquireRequest::default()
                };
                let (mut tokens, mut errors, mut replayed_releases) = (Vec::new(), Vec::new(), 0);
                for _ in 0..VICTIM_LOAD_ROUNDS_MAX {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match client.acquire(&lock, &request).await {
                        Ok(Acquired::Granted(granted)) => {
                            tokens.push(granted.lease.token);
                            match client.release(&granted.lease.id).await {
                                Ok(answer) if answer.released => {}
                                // The release ended the lease on the victim, the kill cut its
                                // answer off, and the retry found it ended (history checks
                                // that it ended by this release).
                                Ok(_) => replayed_releases += 1,
                                Err(error) => errors.push(format!("release: {error}")),
                            }
                        }
                        Ok(Acquired::Queued(ticket)) => errors.push(format!("queued {ticket:?}")),
                        Err(error) => errors.push(format!("acquire: {error}")),
                    }
                    progress.send_modify(|count| *count += 1);
                }
                (
                    lock,
                    tokens,
                    errors,
                    replayed_releases,
                    client.current_url().to_owned(),
                )
            }));
        }

        // The holder, granted through the victim.
        let holder_client = client_for(&bases, 0);
        let holder = match holder_client
            .acquire(
                name,
                &AcquireRequest {
                    owner: "holder".into(),
                    ttl_ms: Some(60_000),
                    ..AcquireRequest::default()
                },
            )
            .await
        {
            Ok(Acquired::Granted(granted)) => granted.lease,
            other => panic!("holder: {other:?}"),
        };
        assert_eq!(holder_client.current_url(), victim);

        // The waiters, queued one after another, half of them through the victim.
        let mut tickets = Vec::new();
        let mut expected = Vec::new();
        for (index, own) in KILL_WAITERS_ON.into_iter().enumerate() {
            let client = client_for(&bases, own);
            let owner = format!("w{index}");
            let request = AcquireRequest {
                owner: owner.clone(),
                ttl_ms: Some(60_000),
                queue: Some(true),
                wait_ms: Some(0),
                request_id: Some(random_hex32()),
                ..AcquireRequest::default()
            };
            let ticket = match client.acquire(name, &request).await {
                Ok(Acquired::Queued(ticket)) => ticket,
                other => panic!("enqueue {owner}: {other:?}"),
            };
            assert_eq!(ticket.position, index as u64 + 1, "{ticket:?}");
            assert_eq!(client.current_url(), bases[own]);
            expected.push(owner.clone());
            tickets.push((own, owner, client, ticket.id));
        }

        // Each waiter long-polls its own ticket (2 s at a time, so that every "still queued"
        // answer says which server gave it and at which position).
        let logs: Vec<Arc<Mutex<WaiterLog>>> = (0..tickets.len())
            .map(|_| Arc::new(Mutex::new(WaiterLog::default())))
            .collect();
        let mut waiters = Vec::new();
        for (index, (_, owner, client, ticket)) in tickets.into_iter().enumerate() {
            let log = Arc::clone(&logs[index]);
            waiters.push(tokio::spawn(async move {
                let sent = Instant::now();
                let lease = loop {
                    match client.wait_ticket(&ticket, Duration::from_secs(2)).await {
                        Ok(Acquired::Granted(granted)) => break granted.lease,
                        Ok(Acquired::Queued(queued)) => log
                            .lock()
                            .unwrap()
                            .queued
                            .push((queued.position, client.current_url().to_owned())),
                        // Every server unreachable for a moment: the same ticket again.
                        Err(ClientError::Unavailable { .. }) => {}
                        Err(error) => panic!("{owner} lost its place: {error}"),
                    }
                };
                let granted = Instant::now();
                assert_eq!(lease.owner, owner);
                tokio::time::sleep(hold_for(index, 0)).await;
                let released = Instant::now();
                let answer = client
                    .release(&lease.id)
                    .await
                    .unwrap_or_else(|error| panic!("{owner} release: {error}"));
                assert!(answer.released, "{owner} release: {answer:?}");
                Grant {
                    owner,
                    token: lease.token,
                    sent,
                    granted,
                    released,
                }
            }));
        }

        // Last in the queue, the `baton` command line, victim first in its BATON_URL: its
        // acquire long-polls on the victim, and after the kill it retries with the same request
        // id elsewhere, which must give back the same place, not a new one.
        let cli = {
            let mut command = tokio::process::Command::new(harness::BATON);
            command
                .args([
                    "acquire", name, "--owner", "w-cli", "--ttl", "60s", "--json",
                ])
                .env("BATON_URL", bases.join(","))
                .env_remove("BATON_API_KEY")
                .env_remove("BATON_OWNER")
                .env_remove("BATON_LOG")
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            tokio::spawn(async move { command.output().await })
        };
        let mut queue = expected.clone();
        queue.push("w-cli".to_owned());
        eventually(
            "baton acquire queued last",
            Duration::from_secs(30),
            async || (listed_waiters(&lock_view(&servers[2], name).await) == queue).then_some(()),
        )
        .await;

        // Kill the victim while its waiters are polling it and the load runs.
        eventually(
            "every waiter of the victim polling it",
            Duration::from_secs(30),
            async || {
                KILL_WAITERS_ON
                    .iter()
                    .zip(&logs)
                    .filter(|(own, _)| **own == 0)
                    .all(|(_, log)| {
                        log.lock()
                            .unwrap()
                            .queued
                            .iter()
                            .any(|(_, answered)| *answered == victim)
                    })
                    .then_some(())
            },
        )
        .await;
        let mut victim_rx = victim_rx;
        if victim_rx.wait_for(|count| *count >= 10).await.is_err() {
            panic!("the victim's load clients stopped");
        }
        let victim_before = *victim_rx.borrow();
        let mut count_rx = count_rx;
        let before = *count_rx.borrow();
        let logged_before: Vec<usize> = logs
            .iter()
            .map(|log| log.lock().unwrap().queued.len())
            .collect();
        servers[0].kill9().await;

        // If the killed server was the active one, the others answer `not_active` until one of
        // them takes over (about a leadership lease): wait for that, bounded.
        eventually(
            "a live server to answer after the kill",
            Duration::from_secs(30),
            async || {
                let (status, _) = servers[1].get(&lock_path(name, "")).await;
                (status == 200).then_some(())
            },
        )
        .await;
        // The holder's lease lives on, as the others see it, with the same token.
        let view = lock_view(&servers[1], name).await;
        let holders = listed_holders(&view);
        assert_eq!(holders.len(), 1, "{view}");
        assert_eq!(
            (holders[0].0, holders[0].1.as_str()),
            (holder.token, "holder"),
            "{view}"
        );
        assert_eq!(listed_waiters(&view), queue, "{view}");

        // Every waiter was told "still queued" after the kill by a live server, at its place.
        eventually(
            "every waiter answered by a live server after the kill",
            Duration::from_secs(30),
            async || {
                logs.iter()
                    .zip(&logged_before)
                    .all(|(log, before)| {
                        log.lock().unwrap().queued[*before..]
                            .iter()
                            .any(|(_, answered)| *answered != victim)
                    })
                    .then_some(())
            },
        )
        .await;
        for (index, log) in logs.iter().enumerate() {
            let log = log.lock().unwrap();
            for (position, answered) in &log.queued {
                assert_eq!(
                    *position,
                    index as u64 + 1,
                    "w{index} was told position {position} by {answered}: {log:?}"
                );
            }
        }

        // The load on the other servers carries on.
        if count_rx
            .wait_for(|count| *count >= before + LOAD_AFTER_KILL)
            .await
            .is_err()
        {
            panic!("the load clients stopped");
        }
        if victim_rx
            .wait_for(|count| {
                *count
                    >= (victim_before + LOAD_AFTER_KILL)
                        .min(VICTIM_LOAD_CLIENTS * VICTIM_LOAD_ROUNDS_MAX)
            })
            .await
            .is_err()
        {
            panic!("the victim's load clients stopped");
        }

        // The holder renews through a live server, keeping its token, then releases.
        let renewed = holder_client
            .renew(&holder.id, None)
            .await
            .unwrap_or_else(|error| panic!("renew after the kill: {error}"));
        assert_eq!(renewed.lease.token, holder.token);
        assert_ne!(holder_client.current_url(), victim);
        let answer = holder_client
            .release(&holder.id)
            .await
            .unwrap_or_else(|error| panic!("release after the kill: {error}"));
        assert!(answer.released, "{answer:?}");

        let mut grants = Vec::new();
        for waiter in waiters {
            grants.push(
                waiter
                    .await
                    .unwrap_or_else(|error| panic!("waiter: {error}")),
            );
        }
        grants.sort_by_key(|grant| grant.granted);
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
        assert!(grants[0].token > holder.token);

        // The command line was granted last, through a live server, and exited 0.
        let output = tokio::time::timeout(Duration::from_secs(60), cli)
            .await
            .unwrap_or_else(|_| panic!("baton acquire did not exit"))
            .unwrap_or_else(|error| panic!("baton acquire: {error}"))
            .unwrap_or_else(|error| panic!("baton acquire: {error}"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "baton acquire: {stderr}");
        let cli_lease: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!("baton acquire --json printed no lease ({error}): {stderr}")
        });
        assert_eq!(cli_lease["owner"], "w-cli", "{cli_lease}");
        let cli_token = u64_of(&cli_lease["token"], "token");
        let last = grants.last().map_or(0, |grant| grant.token);
        assert!(
            cli_token > last,
            "baton acquire got token {cli_token}, before {last}"
        );
        release(&servers[1], &cli_lease).await;

        stop.store(true, Ordering::Relaxed);
        // A load client of a live server may have been sent to another one while the killed
        // server's leadership ran out (its own answered `not_active`); what matters is that it
        // saw no error.
        for task in load {
            let (_own, _current) = task.await.unwrap_or_else(|error| panic!("load: {error}"));
        }
        let errors = load_errors.lock().unwrap().clone();
        assert!(errors.is_empty(), "the load clients saw errors: {errors:?}");
        let mut replayed = 0;
        for task in victim_load {
            let (lock, tokens, errors, replayed_releases, current) = task
                .await
                .unwrap_or_else(|error| panic!("victim load: {error}"));
            assert!(
                errors.is_empty(),
                "a client of the killed server saw errors on {lock}: {errors:?}"
            );
            assert_ne!(current, victim, "{lock}: the client did not fail over");
            replayed += replayed_releases;
            // Every lease granted on its lock is one the client received, and released.
            let holds = history(&servers[1], &lock).await;
            let recorded: Vec<u64> = holds.iter().map(|hold| hold.token).collect();
            assert_eq!(recorded, tokens, "{lock}: history {holds:?}");
            assert!(
                holds.iter().all(|hold| hold.end == "released"),
                "{lock}: {holds:?}"
            );
            let view = lock_view(&servers[2], &lock).await;
            assert!(listed_holders(&view).is_empty(), "{lock}: {view}");
        }
        eprintln!("releases answered `released: false` after the kill: {replayed}");

        // The restarted server serves the same state.
        servers[0].restart().await;
        let live: Vec<Arc<Server>> = servers.into_iter().map(Arc::new).collect();
        let holds = agreed_history(&live, name).await;
        let order: Vec<&str> = holds.iter().map(|hold| hold.owner.as_str()).collect();
        let mut all = vec!["holder"];
        all.extend(queue.iter().map(String::as_str));
        assert_eq!(order, all, "{holds:?}");
        assert!(holds.iter().all(|hold| hold.end == "released"), "{holds:?}");
        let view_restarted = lock_view(&live[0], name).await;
        let view_other = lock_view(&live[2], name).await;
        assert_eq!(view_restarted, view_other);
        let newest = grants_max_token(&holds);
        assert_eq!(
            u64_of(&view_restarted["newest_token"], "newest_token"),
            newest
        );
        let (status, body) = live[0]
            .post(&lock_path(name, "/acquire"), json!({"owner": "after"}))
            .await;
        assert_eq!(status, 200, "acquire through the restarted server: {body}");
        assert!(u64_of(&body["lease"]["token"], "token") > newest, "{body}");
        let after = body["lease"].clone();

        // A waiter parked on the restarted server is granted by a release through another.
        let (status, body) = live[0]
            .post(
                &lock_path(name, "/acquire"),
                json!({"owner": "after-waiter", "queue": true, "wait_ms": 0}),
            )
            .await;
        assert_eq!(status, 202, "enqueue through the restarted server: {body}");
        let ticket = str_of(&body["ticket"]["id"], "ticket.id").to_owned();
        let parked = {
            let server = Arc::clone(&live[0]);
            tokio::spawn(async move { wait_granted(&server, &ticket).await })
        };
        release(&live[1], &after).await;
        let lease = parked
            .await
            .unwrap_or_else(|error| panic!("after-waiter: {error}"));
        assert_eq!(lease["owner"], "after-waiter", "{lease}");
        release(&live[2], &lease).await;
    })
    .await;
}

// ----- 4. clock skew --------------------------------------------------------------------------

/// An hour, the skew of the servers whose clocks are off.
const HOUR_MS: i64 = 3_600_000;
/// The lease time-to-live of the skew test.
const SKEW_TTL_MS: u64 = 3_000;

/// Acquires `name` through `server` (not queued); the lease.
async fn acquire_now(server: &Server, name: &str, owner: &str, ttl_ms: u64) -> Value {
    let (status, body) = server
        .post(
            &lock_path(name, "/acquire"),
            json!({"owner": owner, "ttl_ms": ttl_ms}),
        )
        .await;
    assert_eq!(
        status, 200,
        "acquire {name} through {}: {body}",
        server.base
    );
    body["lease"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clock_skew_does_not_change_expiry() {
    let Some(url) = testing::available("clock_skew_does_not_change_expiry").await else {
        return;
    };
    bounded(async {
        let schema = Schema::new(&url, "skew");
        let ahead = format!("{HOUR_MS}");
        let behind = format!("-{HOUR_MS}");
        let a = start_pg(&schema, &[]).await;
        let b = start_pg(&schema, &["--clock-skew-ms", &ahead]).await;
        let c = start_pg(&schema, &["--clock-skew-ms", &behind]).await;
        let name = "pg/skew";

        let lease = acquire_now(&a, name, "skewed", SKEW_TTL_MS).await;
        let token = u64_of(&lease["token"], "token");
        let id = str_of(&lease["id"], "id");
        let expires = millis(&lease["expires_at"]);

        // An hour ahead, B must still see the lease held, with A's deadline.
        for server in [&b, &c] {
            let view = lock_view(server, name).await;
            assert_eq!(
                listed_holders(&view),
                vec![(token, "skewed".to_owned(), expires)],
                "{} (skewed clock) does not show the lease as A granted it: {view}",
                server.base
            );
        }

        // Renewals through the skewed servers work and count from the database's time.
        let mut last_expires = expires;
        for server in [&b, &c, &b] {
            let (status, body) = server
                .post(&format!("/v1/leases/{id}/renew"), json!({}))
                .await;
            assert_eq!(status, 200, "renew through {}: {body}", server.base);
            let renewed = &body["lease"];
            assert_eq!(u64_of(&renewed["token"], "token"), token, "{body}");
            let renewed_expires = millis(&renewed["expires_at"]);
            assert!(
                renewed_expires >= last_expires,
                "renewal through {} moved the deadline earlier: {body}",
                server.base
            );
            let left = u64_of(&renewed["expires_in_ms"], "expires_in_ms");
            assert!(
                left > 0 && left <= SKEW_TTL_MS,
                "renewal through {} says {left} ms left of {SKEW_TTL_MS}: {body}",
                server.base
            );
            last_expires = renewed_expires;
        }

        // No more renewals: the lease ends by expiry, as every server records it.
        let expired = eventually("the lease to expire", Duration::from_secs(60), async || {
            let holds = history(&b, name).await;
            holds.into_iter().find(|hold| hold.token == token)
        })
        .await;
        assert_eq!(expired.end, "expired", "{expired:?}");
        assert_eq!(expired.owner, "skewed");
        assert!(
            expired.ended_at >= last_expires,
            "the lease ended at {} before its deadline {last_expires}",
            expired.ended_at
        );
        for server in [&a, &c] {
            let holds = history(server, name).await;
            let seen = holds.iter().find(|hold| hold.token == token);
            assert_eq!(seen, Some(&expired), "history through {}", server.base);
        }

        // Leases granted through the skewed servers carry database times: a ttl after their
        // grant, and within a minute of a grant through A, not an hour off.
        let reference = millis(&acquire_now(&a, "pg/skew-a", "a", 10_000).await["granted_at"]);
        for (server, lock) in [(&b, "pg/skew-b"), (&c, "pg/skew-c")] {
            let lease = acquire_now(server, lock, "s", 10_000).await;
            let granted_at = millis(&lease["granted_at"]);
            let expires_at = millis(&lease["expires_at"]);
            assert!(
                (expires_at - granted_at - 10_000).abs() <= 1_000,
                "through {}: expires_at is {} ms after granted_at, not about 10000: {lease}",
                server.base,
                expires_at - granted_at
            );
            assert!(
                (granted_at - reference).abs() < 60_000,
                "through {} granted_at is {} ms from A's: {lease}",
                server.base,
                granted_at - reference
            );
            let left = u64_of(&lease["expires_in_ms"], "expires_in_ms");
            assert!(left > 0 && left <= 10_000, "{lease}");
        }

        // Tickets queued and parked on the skewed servers neither lapse at once nor miss a
        // release through A.
        for (server, lock) in [(&b, "pg/skew-qb"), (&c, "pg/skew-qc")] {
            let blocker = acquire_now(&a, lock, "blocker", 60_000).await;
            let (status, body) = server
                .post(
                    &lock_path(lock, "/acquire"),
                    json!({"owner": "queued", "ttl_ms": 60_000, "queue": true, "wait_ms": 0}),
                )
                .await;
            assert_eq!(status, 202, "enqueue through {}: {body}", server.base);
            let lapses = u64_of(&body["ticket"]["lapses_in_ms"], "lapses_in_ms");
            assert!(
                lapses > 0 && lapses <= 10_000,
                "through {}: the ticket lapses in {lapses} ms: {body}",
                server.base
            );
            let ticket = str_of(&body["ticket"]["id"], "ticket.id");
            let (granted, ()) = tokio::join!(wait_granted(server, ticket), release(&a, &blocker));
            assert_eq!(granted["owner"], "queued", "{granted}");
            release(server, &granted).await;
        }
    })
    .await;
}
