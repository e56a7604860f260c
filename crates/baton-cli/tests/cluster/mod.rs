//! A cluster of real `baton server` processes on one PostgreSQL schema, and the probes and
//! checks the fail-over tests share (`failover.rs`, `failover_restart.rs`).
#![allow(dead_code)] // Each test binary uses a part.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_client::proto::AcquireRequest;
use baton_client::{Acquired, Client, LockOptions, RetryPolicy};
use baton_store_postgres::testing;
use tokio::time::Instant;

use crate::harness::Server;

/// No test here may take longer than this.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(150);
/// The leadership lease the tests run with (the default is 4 s; a shorter one keeps the tests
/// quick and is still well above the renewal period).
pub const LEADER_TTL: Duration = Duration::from_secs(2);
/// What the issue allows a fail-over: the leadership lease plus two seconds.
pub const FAILOVER_BOUND: Duration = Duration::from_secs(4);

/// The test's own schema, dropped when the test ends. Declared before the servers.
pub struct Schema {
    /// The database.
    pub url: String,
    /// The schema's name.
    pub name: String,
}

impl Schema {
    pub fn new(url: &str, key: &str) -> Schema {
        let name = testing::schema_for(key);
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

pub async fn start_pg(schema: &Schema) -> Server {
    start_pg_with(schema, LEADER_TTL).await
}

pub async fn start_pg_with(schema: &Schema, leader_ttl: Duration) -> Server {
    let ttl = format!("{}ms", leader_ttl.as_millis());
    Server::start(&[
        "--database",
        schema.url.as_str(),
        "--database-schema",
        schema.name.as_str(),
        "--leader-ttl",
        &ttl,
    ])
    .await
}

/// Starts three servers one after the other, so that the first is the active one.
pub async fn start_three(schema: &Schema) -> Vec<Server> {
    let first = start_pg(schema).await;
    let (second, third) = tokio::join!(start_pg(schema), start_pg(schema));
    vec![first, second, third]
}

pub async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {TEST_TIMEOUT:?}"));
}

/// A client given every server's URL, that tries each request once (its own attempt already
/// goes through every server).
pub fn client_of(servers: &[&Server], retry: RetryPolicy) -> Client {
    let urls: Vec<&str> = servers.iter().map(|server| server.base.as_str()).collect();
    Client::builder(&urls.join(","))
        .retry(retry)
        .request_timeout(Duration::from_secs(5))
        .build()
        .expect("a client")
}

/// `GET /readyz` of each server: its role, and the active URL it names.
pub async fn roles(servers: &[&Server]) -> Vec<(u16, String, String)> {
    let mut found = Vec::new();
    for server in servers {
        let answer = server
            .try_send(reqwest::Method::GET, "/readyz", None, None)
            .await;
        found.push(match answer {
            Ok((status, body)) => (
                status,
                body["role"].as_str().unwrap_or("").to_owned(),
                body["active"].as_str().unwrap_or("").to_owned(),
            ),
            Err(error) => (0, format!("unreachable: {error}"), String::new()),
        });
    }
    found
}

/// The index of the one server that says it is active, waiting (bounded) for an election.
pub async fn active_of(servers: &[&Server]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = roles(servers).await;
        let active: Vec<usize> = found
            .iter()
            .enumerate()
            .filter(|(_, (status, role, _))| *status == 200 && role == "active")
            .map(|(index, _)| index)
            .collect();
        if active.len() == 1 {
            return active[0];
        }
        assert!(active.len() <= 1, "two active servers at once: {found:?}");
        assert!(Instant::now() < deadline, "no active server: {found:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Acquires `name` through `client` (no queue) with `ttl_ms`; the lease.
pub async fn acquire(client: &Client, name: &str, ttl_ms: u64) -> baton_client::proto::Lease {
    let request = AcquireRequest {
        owner: "sentinel".into(),
        ttl_ms: Some(ttl_ms),
        ..AcquireRequest::default()
    };
    match client.acquire(name, &request).await {
        Ok(Acquired::Granted(granted)) => granted.lease,
        other => panic!("acquire {name}: {other:?}"),
    }
}

/// Probes until a fresh lock can be taken and given back through `client`; the time it took.
pub async fn first_grant_after(client: &Client, start: Instant, what: &str) -> Duration {
    let deadline = start + Duration::from_secs(30);
    let mut round = 0u64;
    loop {
        round += 1;
        let name = format!("probe/{round}");
        let request = AcquireRequest {
            owner: "probe".into(),
            ttl_ms: Some(5_000),
            ..AcquireRequest::default()
        };
        if let Ok(Acquired::Granted(granted)) = client.acquire(&name, &request).await {
            let took = start.elapsed();
            let _ = client.release(&granted.lease.id).await;
            return took;
        }
        assert!(Instant::now() < deadline, "no grant within 30 s {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One hold as a worker saw it.
#[derive(Debug, Clone)]
pub struct Hold {
    /// The lease's fencing token.
    pub token: u64,
    /// When the grant was received.
    pub granted: Instant,
    /// When the release was sent.
    pub released: Instant,
}

/// Workers that take `name` (capacity 1) in turn until `stop`, recording each hold.
pub fn hammer(
    client: &Client,
    name: &str,
    workers: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (Arc<Mutex<Vec<Hold>>>, Vec<tokio::task::JoinHandle<()>>) {
    let holds = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let client = client.clone();
        let holds = Arc::clone(&holds);
        let name = name.to_owned();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut round = 0u64;
            while !*stop.borrow() {
                round += 1;
                let options = LockOptions {
                    ttl: Some(Duration::from_secs(4)),
                    wait: Some(Duration::from_secs(20)),
                    ..LockOptions::with_owner(format!("worker-{worker}"))
                };
                let Ok(granted) = client.wait_for_lease(&name, &options).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let granted_at = Instant::now();
                tokio::time::sleep(Duration::from_millis(2 + (round % 4))).await;
                let released = Instant::now();
                let _ = client.release(&granted.lease.id).await;
                if let Ok(mut holds) = holds.lock() {
                    holds.push(Hold {
                        token: granted.lease.token,
                        granted: granted_at,
                        released,
                    });
                }
            }
        }));
    }
    (holds, tasks)
}

/// G1 and G3 over the recorded holds: no two overlap, and tokens rise with time, never reused.
pub fn check_holds(holds: &[Hold]) {
    let mut sorted = holds.to_vec();
    sorted.sort_by_key(|hold| hold.granted);
    for pair in sorted.windows(2) {
        assert!(
            pair[1].granted >= pair[0].released,
            "two holds overlap: {:?} and {:?}",
            pair[0],
            pair[1]
        );
        assert!(
            pair[1].token > pair[0].token,
            "a later hold has a token not above the earlier one: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
}

/// The holders of `name` as the active lists them: owner, token and deadline (ms).
pub async fn holders_of(client: &Client, name: &str) -> Vec<(String, u64, i64)> {
    let info = client.lock_info(name).await.expect("the lock's listing");
    info.holders
        .iter()
        .map(|holder| {
            (
                holder.owner.clone(),
                holder.token,
                holder.expires_at.as_millisecond(),
            )
        })
        .collect()
}
