#![allow(clippy::unwrap_used, clippy::expect_used)]
//! G5 for waiters that go away (issue 10, part 3), against the real `baton server` over real
//! HTTP: a client parked on a long-poll (`POST /v1/locks/{name}/acquire` with `queue: true`, or
//! `POST /v1/tickets/{id}/wait`) whose connection closes loses its place: when the lock is
//! released it is not granted (the lock goes to the next live waiter at once, with no
//! lock-delay), the listing stops showing it, and its ticket lapses one ticket lapse after its
//! connection closed, not after the wait it asked for. A waiter that comes back on its ticket
//! in time keeps its place. Each case runs on the embedded store and, when PostgreSQL is
//! reachable, on the PostgreSQL store.
//!
//! The departed clients are raw TCP connections (or a dropped reqwest request) that send a
//! request and close the socket while the server holds it. Waits for what must happen are
//! bounded generously; a server that keeps a departed waiter fails them by a wide margin (its
//! lease would sit for 5 minutes, its ticket for a minute).

mod harness;

use std::time::Duration;

use baton_store_postgres::testing;
use harness::{Server, eventually, lock_path, lock_view, millis, str_of};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The ticket lapse the servers here run with.
const LAPSE: Duration = Duration::from_secs(2);
/// The lock-delay the servers here run with: long, so a grant that waited it out shows.
const LOCK_DELAY: Duration = Duration::from_secs(5);
/// The bound on anything that must happen promptly; far below the departed waiter's TTL
/// (5 minutes) and its requested wait (60 s), so a server that keeps it fails.
const PROMPTLY: Duration = Duration::from_secs(20);
/// Disconnected long-polls in the bulk case.
const BULK: usize = 500;

fn server_args() -> Vec<String> {
    vec![
        "--ticket-lapse".into(),
        format!("{}ms", LAPSE.as_millis()),
        "--lock-delay".into(),
        format!("{}ms", LOCK_DELAY.as_millis()),
    ]
}

/// A server on the embedded store.
async fn embedded() -> Server {
    let args = server_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args).await
}

/// A schema of the test's own, dropped when the test ends (after its server).
struct Schema {
    url: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        testing::drop_schema(&self.url, &self.name);
    }
}

/// A server on the PostgreSQL store, or `None` (said on the terminal) without PostgreSQL.
async fn postgres(key: &str) -> Option<(Server, Schema)> {
    let url = testing::available(key).await?;
    let name = testing::schema_for(key);
    testing::drop_schema(&url, &name);
    let schema = Schema { url, name };
    let mut args = server_args();
    args.extend([
        "--database".into(),
        schema.url.clone(),
        "--database-schema".into(),
        schema.name.clone(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args).await;
    // The server first: a tuple drops its fields in order.
    Some((server, schema))
}

/// Sends one HTTP/1.1 `POST` on a fresh connection and returns the open socket without reading
/// the answer: a client that will go away mid-request.
async fn send_and_hold(server: &Server, path: &str, body: &Value) -> TcpStream {
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n\
         content-length: {length}\r\n\r\n{body}",
        port = server.port,
        length = body.len()
    );
    let mut stream = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap_or_else(|error| panic!("connect to the server: {error}"));
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|error| panic!("send a request: {error}"));
    stream
}

/// Closes a held connection and checks the server had not answered on it.
async fn close(mut stream: TcpStream) {
    let mut buffer = [0u8; 512];
    // Nothing may have arrived: the request is still parked.
    match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buffer)).await {
        Err(_) => {}
        Ok(read) => panic!(
            "the server answered a parked long-poll: {read:?} {}",
            String::from_utf8_lossy(&buffer)
        ),
    }
    drop(stream);
}

async fn acquire(server: &Server, name: &str, owner: &str) -> Value {
    let (status, body) = server
        .post(
            &lock_path(name, "/acquire"),
            json!({"owner": owner, "ttl_ms": 300_000}),
        )
        .await;
    assert_eq!(status, 200, "acquire {name} as {owner}: {body}");
    body["lease"].clone()
}

async fn enqueue(server: &Server, name: &str, owner: &str) -> String {
    let (status, body) = server
        .post(
            &lock_path(name, "/acquire"),
            json!({"owner": owner, "ttl_ms": 300_000, "queue": true, "wait_ms": 0}),
        )
        .await;
    assert_eq!(status, 202, "enqueue {owner}: {body}");
    str_of(&body["ticket"]["id"], "ticket.id").to_owned()
}

async fn release(server: &Server, lease: &Value) {
    let id = str_of(&lease["id"], "lease.id");
    let (status, body) = server
        .post(&format!("/v1/leases/{id}/release"), json!({}))
        .await;
    assert_eq!((status, &body["released"]), (200, &json!(true)), "{body}");
}

fn waiter_owners(view: &Value) -> Vec<String> {
    view["waiters"]
        .as_array()
        .unwrap_or_else(|| panic!("no waiters: {view}"))
        .iter()
        .map(|waiter| str_of(&waiter["owner"], "waiter.owner").to_owned())
        .collect()
}

fn holder_owners(view: &Value) -> Vec<String> {
    view["holders"]
        .as_array()
        .unwrap_or_else(|| panic!("no holders: {view}"))
        .iter()
        .map(|holder| str_of(&holder["owner"], "holder.owner").to_owned())
        .collect()
}

/// Waits until the listing of `name` shows exactly `owners` waiting.
async fn until_waiters(server: &Server, name: &str, owners: &[&str]) {
    eventually(
        &format!("waiters {owners:?} on {name}"),
        PROMPTLY,
        async || {
            let view = lock_view(server, name).await;
            (waiter_owners(&view) == owners).then_some(())
        },
    )
    .await;
}

/// A live waiter: a long-poll acquire on its own task, answered with its lease.
fn live_waiter(server: &Server, name: &str, owner: &str) -> tokio::task::JoinHandle<Value> {
    let http = server.http().clone();
    let url = format!("{}{}", server.base, lock_path(name, "/acquire"));
    let body = json!({"owner": owner, "ttl_ms": 300_000, "queue": true, "wait_ms": 30_000});
    tokio::spawn(async move {
        let response = http.post(url).json(&body).send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "the live waiter: {body}");
        body["lease"].clone()
    })
}

/// After the holder's release, the live waiter holds the lock, granted at once (no lock-delay),
/// and the departed waiter neither holds it, waits for it, nor ever held it.
async fn check_handed_to_live(
    server: &Server,
    name: &str,
    live: tokio::task::JoinHandle<Value>,
    what: &str,
) {
    let lease = tokio::time::timeout(PROMPTLY, live)
        .await
        .unwrap_or_else(|_| panic!("{what}: the live waiter was not granted within {PROMPTLY:?}"))
        .unwrap();
    assert_eq!(str_of(&lease["owner"], "owner"), "live", "{what}");
    let view = lock_view(server, name).await;
    assert_eq!(holder_owners(&view), ["live"], "{what}: {view}");
    assert!(
        waiter_owners(&view).is_empty(),
        "{what}: the departed waiter is still listed: {view}"
    );
    let (status, history) = server.get(&lock_path(name, "/history")).await;
    assert_eq!(status, 200, "{history}");
    let records = history["entries"].as_array().cloned().unwrap_or_default();
    let holder_end = records
        .iter()
        .find(|record| record["owner"] == "holder")
        .map(|record| millis(&record["ended_at"]))
        .unwrap_or_else(|| panic!("{what}: no history of the holder: {history}"));
    let handed_after_ms = millis(&lease["granted_at"]) - holder_end;
    assert!(
        handed_after_ms < LOCK_DELAY.as_millis() as i64,
        "{what}: the lock went to the live waiter {handed_after_ms} ms after the release \
         (a lock-delay, or a departed waiter's grant in between): {history}"
    );
}

// ----- the cases, each run on a given server ---------------------------------------------------

/// A parked `acquire` (`queue: true`, `wait_ms` 60 s) whose socket closes is not granted on
/// release; the next live waiter is.
async fn departed_acquire_long_poll_is_not_granted(server: &Server) {
    let name = "departed/acquire";
    let holder = acquire(server, name, "holder").await;
    let departed = send_and_hold(
        server,
        &lock_path(name, "/acquire"),
        &json!({"owner": "departed", "ttl_ms": 300_000, "queue": true, "wait_ms": 60_000}),
    )
    .await;
    until_waiters(server, name, &["departed"]).await;
    let live = live_waiter(server, name, "live");
    until_waiters(server, name, &["departed", "live"]).await;
    close(departed).await;
    // Give the server a moment to see the socket close (it does at once on loopback); if it
    // were slower, the grant it made would be handed on when it does, which the checks allow.
    tokio::time::sleep(Duration::from_millis(300)).await;
    release(server, &holder).await;
    check_handed_to_live(server, name, live, "a departed acquire").await;
}

/// A parked `POST /v1/tickets/{id}/wait` whose request is dropped by its (reqwest) client is
/// not granted on release; the next live waiter is.
async fn departed_ticket_wait_is_not_granted(server: &Server) {
    let name = "departed/wait";
    let holder = acquire(server, name, "holder").await;
    let ticket = enqueue(server, name, "departed").await;
    // A client of its own, so dropping the request closes its connection.
    let http = reqwest::Client::new();
    let url = format!("{}/v1/tickets/{ticket}/wait", server.base);
    let waiting = tokio::spawn(async move {
        let _ = http
            .post(url)
            .json(&json!({"wait_ms": 60_000}))
            .send()
            .await;
    });
    let live = live_waiter(server, name, "live");
    until_waiters(server, name, &["departed", "live"]).await;
    // Time for the wait to be parked on the server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    waiting.abort();
    let _ = waiting.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    release(server, &holder).await;
    check_handed_to_live(server, name, live, "a departed ticket wait").await;
    let (status, body) = server
        .post(&format!("/v1/tickets/{ticket}/wait"), json!({"wait_ms": 0}))
        .await;
    assert_eq!(status, 410, "the departed waiter lost its place: {body}");
}

/// A waiter whose connection closed and that waits on its ticket again (a retry) before the lock
/// is handed on keeps its place, and is granted.
async fn waiter_that_comes_back_keeps_its_place(server: &Server) {
    let name = "departed/back";
    let holder = acquire(server, name, "holder").await;
    let ticket = enqueue(server, name, "first").await;
    let second = enqueue(server, name, "second").await;
    let departed = send_and_hold(
        server,
        &format!("/v1/tickets/{ticket}/wait"),
        &json!({"wait_ms": 60_000}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    close(departed).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = server
        .post(&format!("/v1/tickets/{ticket}/wait"), json!({"wait_ms": 0}))
        .await;
    assert_eq!(status, 202, "back in time, still queued: {body}");
    assert_eq!(body["ticket"]["position"], 1, "{body}");
    let http = server.http().clone();
    let url = format!("{}/v1/tickets/{ticket}/wait", server.base);
    let back = tokio::spawn(async move {
        let response = http
            .post(url)
            .json(&json!({"wait_ms": 30_000}))
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    release(server, &holder).await;
    let (status, body) = tokio::time::timeout(PROMPTLY, back).await.unwrap().unwrap();
    assert_eq!(status, 200, "the waiter that came back is granted: {body}");
    assert_eq!(body["lease"]["owner"], "first", "{body}");
    let (status, body) = server
        .post(&format!("/v1/tickets/{second}/wait"), json!({"wait_ms": 0}))
        .await;
    assert_eq!(
        (status, &body["ticket"]["position"]),
        (202, &json!(1)),
        "{body}"
    );
}

/// Many long-polls (`wait_ms` 60 s) whose sockets close leave the queue within the ticket lapse
/// (plus slack), not a minute later.
async fn many_departed_long_polls_leave_the_queue_within_the_lapse(server: &Server) {
    let name = "departed/many";
    let _holder = acquire(server, name, "holder").await;
    let body = json!({"owner": "departed", "ttl_ms": 300_000, "queue": true, "wait_ms": 60_000});
    let mut sockets = Vec::with_capacity(BULK);
    for _ in 0..BULK {
        sockets.push(send_and_hold(server, &lock_path(name, "/acquire"), &body).await);
    }
    // Setting up is not what is tested: a generous bound (the PostgreSQL store queues them
    // one transaction at a time on the lock's row).
    eventually(
        &format!("{BULK} waiters on {name}"),
        3 * PROMPTLY,
        async || {
            let view = lock_view(server, name).await;
            (waiter_owners(&view).len() == BULK).then_some(())
        },
    )
    .await;
    let closed_at = Instant::now();
    drop(sockets);
    let bound = LAPSE + PROMPTLY;
    eventually(
        &format!("{BULK} departed waiters leaving the queue of {name}"),
        bound,
        async || {
            let view = lock_view(server, name).await;
            waiter_owners(&view).is_empty().then_some(())
        },
    )
    .await;
    eprintln!(
        "{BULK} departed long-polls left the queue {:?} after their sockets closed (lapse {LAPSE:?})",
        closed_at.elapsed()
    );
}

// ----- the tests --------------------------------------------------------------------------------

#[tokio::test]
async fn departed_acquire_long_poll_is_not_granted_embedded() {
    departed_acquire_long_poll_is_not_granted(&embedded().await).await;
}

#[tokio::test]
async fn departed_ticket_wait_is_not_granted_embedded() {
    departed_ticket_wait_is_not_granted(&embedded().await).await;
}

#[tokio::test]
async fn waiter_that_comes_back_keeps_its_place_embedded() {
    waiter_that_comes_back_keeps_its_place(&embedded().await).await;
}

#[tokio::test]
async fn many_departed_long_polls_leave_the_queue_within_the_lapse_embedded() {
    many_departed_long_polls_leave_the_queue_within_the_lapse(&embedded().await).await;
}

#[tokio::test]
async fn departed_acquire_long_poll_is_not_granted_postgres() {
    if let Some((server, _schema)) = postgres("departed-acquire").await {
        departed_acquire_long_poll_is_not_granted(&server).await;
    }
}

#[tokio::test]
async fn departed_ticket_wait_is_not_granted_postgres() {
    if let Some((server, _schema)) = postgres("departed-wait").await {
        departed_ticket_wait_is_not_granted(&server).await;
    }
}

#[tokio::test]
async fn waiter_that_comes_back_keeps_its_place_postgres() {
    if let Some((server, _schema)) = postgres("departed-back").await {
        waiter_that_comes_back_keeps_its_place(&server).await;
    }
}

#[tokio::test]
async fn many_departed_long_polls_leave_the_queue_within_the_lapse_postgres() {
    if let Some((server, _schema)) = postgres("departed-many").await {
        many_departed_long_polls_leave_the_queue_within_the_lapse(&server).await;
    }
}
