#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The event stream (`GET /v1/events`, issue 12) over real HTTP against a real `baton server`
//! process on the durable (SQLite) store: events come in order with increasing ids, only once
//! durable, filtered to the caller's key and `?prefix=`, resumable with `Last-Event-ID`, and a
//! subscriber that never reads is dropped without holding back the server or other subscribers.

mod harness;

use std::time::Duration;

use harness::{Server, lock_path, str_of};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// No single read of the stream may take longer than this.
const READ_LIMIT: Duration = Duration::from_secs(20);

/// One SSE message.
#[derive(Debug, Clone)]
struct Message {
    id: Option<String>,
    event: String,
    data: Value,
}

/// A subscription read message by message.
struct Stream {
    response: reqwest::Response,
    buffer: String,
}

/// A client without the harness's total timeout (a stream lasts as long as the test).
fn streaming_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn subscribe(
    server: &Server,
    query: &str,
    key: Option<&str>,
    last_event_id: Option<&str>,
) -> Stream {
    let mut request = streaming_client().get(format!("{}/v1/events{query}", server.base));
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200, "GET /v1/events{query}");
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    Stream {
        response,
        buffer: String::new(),
    }
}

impl Stream {
    /// The next message (comments skipped), or `None` when the stream ended.
    async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut message = Message {
                    id: None,
                    event: String::new(),
                    data: Value::Null,
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(id) = line.strip_prefix("id: ") {
                        message.id = Some(id.to_owned());
                    } else if let Some(event) = line.strip_prefix("event: ") {
                        message.event = event.to_owned();
                        any = true;
                    } else if let Some(data) = line.strip_prefix("data: ") {
                        message.data = serde_json::from_str(data).unwrap();
                    }
                }
                if any {
                    return Some(message);
                }
                continue;
            }
            let chunk = tokio::time::timeout(READ_LIMIT, self.response.chunk())
                .await
                .expect("the event stream went silent")
                .unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next `count` messages.
    async fn take(&mut self, count: usize) -> Vec<Message> {
        let mut messages = Vec::new();
        while messages.len() < count {
            messages.push(self.next().await.expect("the event stream ended early"));
        }
        messages
    }
}

/// One request with a key (or none).
async fn call(
    server: &Server,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = server
        .http()
        .request(method.parse().unwrap(), format!("{}{path}", server.base));
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn acquire(server: &Server, key: Option<&str>, lock: &str, body: Value) -> (u16, Value) {
    call(
        server,
        key,
        "POST",
        &lock_path(lock, "/acquire"),
        Some(body),
    )
    .await
}

async fn release(server: &Server, key: Option<&str>, lease: &Value) {
    let id = str_of(&lease["lease"]["id"], "lease.id");
    let (status, body) = call(
        server,
        key,
        "POST",
        &format!("/v1/leases/{id}/release"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

fn kinds(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|message| {
            let owner = message.data["owner"].as_str().unwrap_or("");
            match message.data["job"]["state"].as_str() {
                Some(state) => format!("{} {owner} {state}", message.event),
                None => format!("{} {owner}", message.event),
            }
        })
        .collect()
}

/// Every message has an id `STREAM-SEQ` of one stream, its `seq` matches, and seqs increase.
fn check_ids(messages: &[Message]) {
    let mut last = 0;
    let stream = messages[0]
        .id
        .as_deref()
        .unwrap()
        .rsplit_once('-')
        .unwrap()
        .0;
    for message in messages {
        let id = message.id.as_deref().unwrap();
        let (this_stream, seq) = id.rsplit_once('-').unwrap();
        let seq: u64 = seq.parse().unwrap();
        assert_eq!(this_stream, stream);
        assert_eq!(seq, message.data["seq"].as_u64().unwrap(), "{message:?}");
        assert_eq!(message.data["id"], id);
        assert!(seq > last, "ids must increase: {messages:?}");
        last = seq;
    }
}

#[tokio::test]
async fn events_arrive_in_order_for_grants_queues_expiry_and_jobs() {
    let server = Server::start(&["--lock-delay", "0ms"]).await;
    events_in_order(&server).await;
}

#[tokio::test]
async fn events_arrive_in_order_on_postgres() {
    let Some((_schema, server)) =
        postgres_server("events_in_order", &["--lock-delay", "0ms"]).await
    else {
        return;
    };
    events_in_order(&server).await;
}

/// A PostgreSQL schema of the test's own, dropped at the end (declared before the server).
struct Schema {
    url: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        baton_store_postgres::testing::drop_schema(&self.url, &self.name);
    }
}

/// A server on a PostgreSQL schema of the test's own; `None` when PostgreSQL is not available
/// (and not required).
async fn postgres_server(test: &str, extra: &[&str]) -> Option<(Schema, Server)> {
    let schema = postgres_schema(test).await?;
    let server = postgres_server_on(&schema, extra).await;
    Some((schema, server))
}

async fn postgres_schema(test: &str) -> Option<Schema> {
    use baton_store_postgres::testing;
    let url = testing::available(test).await?;
    let name = testing::schema_for(test);
    testing::drop_schema(&url, &name);
    Some(Schema { url, name })
}

async fn postgres_server_on(schema: &Schema, extra: &[&str]) -> Server {
    let mut args = vec![
        "--database",
        schema.url.as_str(),
        "--database-schema",
        schema.name.as_str(),
    ];
    args.extend_from_slice(extra);
    Server::start(&args).await
}

/// Grants, queue changes, an expiry and a job's run, in order, with increasing ids.
async fn events_in_order(server: &Server) {
    let mut stream = subscribe(server, "", None, None).await;

    let (status, first) = acquire(server, None, "ev/a", json!({"owner": "one"})).await;
    assert_eq!(status, 200, "{first}");
    let (status, ticket) = acquire(
        server,
        None,
        "ev/a",
        json!({"owner": "two", "queue": true, "ttl_ms": 500}),
    )
    .await;
    assert_eq!(status, 202, "{ticket}");
    let (status, cancelled) = acquire(
        server,
        None,
        "ev/a",
        json!({"owner": "three", "queue": true}),
    )
    .await;
    assert_eq!(status, 202, "{cancelled}");
    let id = str_of(&cancelled["ticket"]["id"], "ticket.id");
    let (status, _) = call(server, None, "DELETE", &format!("/v1/tickets/{id}"), None).await;
    assert_eq!(status, 200);
    release(server, None, &first).await;
    // "two" is granted by the release; nobody renews its 500 ms lease, so it expires.
    let job = call(
        server,
        None,
        "POST",
        "/v1/jobs",
        Some(json!({"name": "ev/job", "owner": "runner"})),
    )
    .await;
    assert_eq!(job.0, 200, "{}", job.1);
    let job_id = str_of(&job.1["job"]["id"], "job.id");
    let lease_id = str_of(&job.1["lease"]["id"], "lease.id");
    let (status, body) = call(
        server,
        None,
        "POST",
        &format!("/v1/jobs/{job_id}/finish"),
        Some(json!({"lease_id": lease_id, "state": "succeeded", "exit_code": 0})),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let messages = stream.take(11).await;
    check_ids(&messages);
    let mut seen = kinds(&messages);
    // The expiry comes by the timer, at its own time: after the events of "two"'s grant, but
    // among the job's; check it apart.
    let expired = seen
        .iter()
        .position(|kind| kind == "expired two")
        .unwrap_or_else(|| panic!("no expiry: {seen:?}"));
    let granted_two = seen.iter().position(|kind| kind == "granted two").unwrap();
    assert!(expired > granted_two, "{seen:?}");
    seen.remove(expired);
    assert_eq!(
        seen,
        vec![
            "granted one",
            "queued two",
            "queued three",
            "left_queue three",
            "released one",
            "granted two",
            "granted runner",
            "job runner running",
            "released runner",
            "job runner succeeded",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>(),
        "{messages:#?}"
    );
    let by_kind = |kind: &str| {
        messages
            .iter()
            .find(|message| kinds(std::slice::from_ref(message))[0] == kind)
            .unwrap()
            .data
            .clone()
    };
    assert_eq!(by_kind("left_queue three")["reason"], "cancelled");
    assert_eq!(by_kind("queued two")["position"], 1);
    assert_eq!(by_kind("queued three")["position"], 2);
    assert_eq!(by_kind("granted two")["from_queue"], true);
    assert_eq!(by_kind("granted one")["from_queue"], false);
    assert_eq!(by_kind("granted one")["lock"], "ev/a");
    assert_eq!(
        by_kind("granted one")["token"],
        first["lease"]["token"],
        "the event carries the token"
    );
    // Never a lease or ticket id (G8).
    for message in &messages {
        let text = message.data.to_string();
        assert!(!text.contains("lease_"), "{text}");
        assert!(!text.contains("ticket_"), "{text}");
    }

    // `?prefix=` keeps only that range of names.
    let mut only_b = subscribe(server, "?prefix=ev/b", None, None).await;
    let (status, a) = acquire(server, None, "ev/a2", json!({"owner": "x"})).await;
    assert_eq!(status, 200, "{a}");
    let (status, b) = acquire(server, None, "ev/b1", json!({"owner": "y"})).await;
    assert_eq!(status, 200, "{b}");
    let message = only_b.next().await.unwrap();
    assert_eq!(message.data["lock"], "ev/b1", "{message:?}");
}

#[tokio::test]
async fn another_teams_key_sees_none_of_its_events() {
    let server = Server::start(&[]).await;
    let (status, admin) = call(
        &server,
        None,
        "POST",
        "/v1/keys",
        Some(json!({"name": "admin", "grants": ["admin:"]})),
    )
    .await;
    assert_eq!(status, 200, "{admin}");
    let admin = str_of(&admin["secret"], "secret").to_owned();
    let mut keys = Vec::new();
    for (name, grant) in [("team-a", "read:team-a/"), ("team-b", "acquire:team-b/")] {
        let (status, key) = call(
            &server,
            Some(&admin),
            "POST",
            "/v1/keys",
            Some(json!({"name": name, "grants": [grant]})),
        )
        .await;
        assert_eq!(status, 200, "{key}");
        keys.push(str_of(&key["secret"], "secret").to_owned());
    }
    let (team_a, team_b) = (keys[0].clone(), keys[1].clone());
    // Team a reads everything it may, and asks for both teams' prefixes too.
    let mut a_all = subscribe(&server, "", Some(&team_a), None).await;
    let mut a_prying = subscribe(&server, "?prefix=team-", Some(&team_a), None).await;
    let mut admin_all = subscribe(&server, "", Some(&admin), None).await;
    let mut b_all = subscribe(&server, "", Some(&team_b), None).await;

    let (status, secret) =
        acquire(&server, Some(&team_b), "team-b/db", json!({"owner": "b"})).await;
    assert_eq!(status, 200, "{secret}");
    let (status, queued) = acquire(
        &server,
        Some(&team_b),
        "team-b/db",
        json!({"owner": "b2", "queue": true}),
    )
    .await;
    assert_eq!(status, 202, "{queued}");
    release(&server, Some(&team_b), &secret).await;
    let (status, own) = acquire(&server, Some(&admin), "team-a/app", json!({"owner": "a"})).await;
    assert_eq!(status, 200, "{own}");

    // The administrator sees all four, team b its three; team a's streams see only its own
    // lock's grant, whatever came before it.
    let all = admin_all.take(5).await;
    assert_eq!(
        kinds(&all),
        vec![
            "granted b",
            "queued b2",
            "released b",
            "granted b2",
            "granted a"
        ]
    );
    let b_seen = b_all.take(4).await;
    assert_eq!(
        kinds(&b_seen),
        vec!["granted b", "queued b2", "released b", "granted b2"]
    );
    // Events come in order: the first that team a's streams get is its own lock's grant, so
    // none of team b's four before it reached them.
    for stream in [&mut a_all, &mut a_prying] {
        let first = stream.next().await.unwrap();
        assert_eq!(first.data["lock"], "team-a/app", "{first:?}");
        assert_eq!(kinds(std::slice::from_ref(&first)), vec!["granted a"]);
    }
}

#[tokio::test]
async fn lapses_and_revocations_are_told() {
    let server = Server::start(&["--ticket-lapse", "500ms"]).await;
    let mut stream = subscribe(&server, "", None, None).await;
    let (status, held) = acquire(&server, None, "rv/a", json!({"owner": "holder"})).await;
    assert_eq!(status, 200, "{held}");
    // Queued, and nobody waits on the ticket: it lapses.
    let (status, ticket) = acquire(
        &server,
        None,
        "rv/a",
        json!({"owner": "idle", "queue": true}),
    )
    .await;
    assert_eq!(status, 202, "{ticket}");
    let first = stream.take(3).await;
    assert_eq!(
        kinds(&first),
        vec!["granted holder", "queued idle", "left_queue idle"]
    );
    assert_eq!(first[2].data["reason"], "lapsed");
    let token = held["lease"]["token"].clone();
    let (status, body) = call(
        &server,
        None,
        "POST",
        &lock_path("rv/a", "/revoke"),
        Some(json!({"token": token})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let revoked = stream.take(1).await;
    assert_eq!(kinds(&revoked), vec!["revoked holder"]);
    assert_eq!(revoked[0].data["token"], token);
    check_ids(&[first, revoked].concat());
}

#[tokio::test]
async fn revoking_a_key_ends_its_streams() {
    let server = Server::start(&[]).await;
    let (status, admin) = call(
        &server,
        None,
        "POST",
        "/v1/keys",
        Some(json!({"name": "admin", "grants": ["admin:"]})),
    )
    .await;
    assert_eq!(status, 200, "{admin}");
    let admin = str_of(&admin["secret"], "secret").to_owned();
    let (status, reader) = call(
        &server,
        Some(&admin),
        "POST",
        "/v1/keys",
        Some(json!({"name": "reader", "grants": ["read:"]})),
    )
    .await;
    assert_eq!(status, 200, "{reader}");
    let reader_id = str_of(&reader["key"]["id"], "key.id").to_owned();
    let reader = str_of(&reader["secret"], "secret").to_owned();
    let mut stream = subscribe(&server, "", Some(&reader), None).await;
    let (status, lease) = acquire(&server, Some(&admin), "revoked/a", json!({"owner": "r"})).await;
    assert_eq!(status, 200, "{lease}");
    assert_eq!(kinds(&stream.take(1).await), vec!["granted r"]);
    let (status, body) = call(
        &server,
        Some(&admin),
        "DELETE",
        &format!("/v1/keys/{reader_id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The stream ends (within a second or so; bounded by READ_LIMIT) and told nothing more.
    let (status, lease) = acquire(&server, Some(&admin), "revoked/b", json!({"owner": "s"})).await;
    assert_eq!(status, 200, "{lease}");
    let mut after = Vec::new();
    while let Some(message) = stream.next().await {
        after.push(message);
    }
    assert!(
        after
            .iter()
            .all(|message| message.data["lock"] != "revoked/b"),
        "a revoked key was told of a later event: {after:?}"
    );
}

#[tokio::test]
async fn last_event_id_resumes_with_exactly_the_missed_events() {
    let server = Server::start(&[]).await;
    let mut stream = subscribe(&server, "", None, None).await;
    for owner in ["o1", "o2"] {
        let (status, lease) = acquire(
            &server,
            None,
            &format!("resume/{owner}"),
            json!({"owner": owner}),
        )
        .await;
        assert_eq!(status, 200, "{lease}");
    }
    let seen = stream.take(2).await;
    let last_id = seen[1].id.clone().unwrap();
    drop(stream);
    // While nobody listens: three more.
    for owner in ["o3", "o4", "o5"] {
        let (status, lease) = acquire(
            &server,
            None,
            &format!("resume/{owner}"),
            json!({"owner": owner}),
        )
        .await;
        assert_eq!(status, 200, "{lease}");
    }
    let mut resumed = subscribe(&server, "", None, Some(&last_id)).await;
    let missed = resumed.take(3).await;
    assert_eq!(
        kinds(&missed),
        vec!["granted o3", "granted o4", "granted o5"]
    );
    check_ids(&missed);
    let seq = |message: &Message| message.data["seq"].as_u64().unwrap();
    assert_eq!(seq(&missed[0]), seq(&seen[1]) + 1);
    // And then live, without a repeat.
    let (status, lease) = acquire(&server, None, "resume/o6", json!({"owner": "o6"})).await;
    assert_eq!(status, 200, "{lease}");
    let live = resumed.next().await.unwrap();
    assert_eq!(kinds(std::slice::from_ref(&live)), vec!["granted o6"]);
    assert_eq!(seq(&live), seq(&missed[2]) + 1);

    // An id of another stream (a server since restarted) says what was missed, then goes on.
    let mut stale = subscribe(&server, "", None, Some("0123abcd-7")).await;
    let first = stale.next().await.unwrap();
    assert_eq!(first.event, "missed", "{first:?}");
    assert!(first.id.is_none());
    let (status, lease) = acquire(&server, None, "resume/o7", json!({"owner": "o7"})).await;
    assert_eq!(status, 200, "{lease}");
    assert_eq!(kinds(&stale.take(1).await), vec!["granted o7"]);

    // A malformed id is refused.
    let answer = streaming_client()
        .get(format!("{}/v1/events", server.base))
        .header("last-event-id", "not an id")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 400);
}

/// The value of a metric in `/metrics`.
async fn metric(server: &Server, name: &str) -> u64 {
    let text = server
        .http()
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|line| line.starts_with(&format!("{name}{{")))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test]
async fn a_subscriber_that_never_reads_is_dropped_and_others_go_on() {
    let server = Server::start(&["--store", "memory"]).await;
    // A subscriber that sends its request and then reads nothing.
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    slow.write_all(b"GET /v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut fast = subscribe(&server, "", None, None).await;
    // Long names and owners make each event large, so the socket's buffers fill sooner.
    let owner = "o".repeat(250);
    let mut published = 0u64;
    let mut dropped = false;
    // Bounded: at most 40 rounds of 100 grants and releases (8,000 events).
    for round in 0..40 {
        for index in 0..100 {
            let lock = format!("slow/{}/{round}-{index}", "n".repeat(200));
            let (status, lease) = acquire(&server, None, &lock, json!({"owner": owner})).await;
            assert_eq!(status, 200, "{lease}");
            release(&server, None, &lease).await;
            published += 2;
        }
        // The fast subscriber keeps up with everything so far, in order.
        let got = fast.take(200).await;
        check_ids(&got);
        if metric(&server, "baton_event_subscribers_dropped_total").await >= 1 {
            dropped = true;
            break;
        }
    }
    assert!(
        dropped,
        "the slow subscriber was never dropped after {published} events"
    );
    assert_eq!(metric(&server, "baton_event_subscribers").await, 1);
    // The server still serves requests and the fast subscriber.
    let (status, lease) = acquire(&server, None, "slow/after", json!({"owner": "after"})).await;
    assert_eq!(status, 200, "{lease}");
    assert_eq!(kinds(&fast.take(1).await), vec!["granted after"]);
    // Reading the slow one now: what was buffered, then `dropped`, then the end of the body.
    let mut text = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(READ_LIMIT, async {
        loop {
            let read = slow.read(&mut chunk).await.unwrap();
            if read == 0 {
                return;
            }
            text.extend_from_slice(&chunk[..read]);
            // The chunked body's last chunk.
            if text.ends_with(b"\r\n0\r\n\r\n") {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the dropped subscriber's stream did not end");
    let text = String::from_utf8_lossy(&text);
    let last = text
        .rfind("event: ")
        .map(|at| &text[at..])
        .unwrap_or_default();
    assert!(last.starts_with("event: dropped"), "last message: {last}");
}

/// Waits until the server counts `count` subscribers.
async fn subscribers(server: &Server, count: u64) {
    harness::eventually(
        "the subscribers to connect",
        Duration::from_secs(20),
        async || (metric(server, "baton_event_subscribers").await == count).then_some(()),
    )
    .await;
}

#[tokio::test]
async fn the_rust_client_follows_events_and_carries_on_after_a_restart() {
    let mut server = Server::start(&[]).await;
    let client = baton_client::Client::new(&server.base).unwrap();
    let mut stream = client.events(baton_client::EventOptions {
        prefix: Some("client/".into()),
        last_event_id: None,
    });
    // The first `next` connects; the grant comes once the subscriber is there.
    let next = tokio::spawn(async move {
        let event = stream.next().await;
        (stream, event)
    });
    subscribers(&server, 1).await;
    let (status, lease) = acquire(&server, None, "client/a", json!({"owner": "c1"})).await;
    assert_eq!(status, 200, "{lease}");
    let (status, other) = acquire(&server, None, "elsewhere", json!({"owner": "c0"})).await;
    assert_eq!(status, 200, "{other}");
    release(&server, None, &lease).await;
    let (mut stream, event) = tokio::time::timeout(READ_LIMIT, next)
        .await
        .unwrap()
        .unwrap();
    let event = event.unwrap();
    assert_eq!(event.kind, baton_client::proto::EventKind::Granted);
    assert_eq!(event.lock.as_deref(), Some("client/a"));
    assert_eq!(event.owner.as_deref(), Some("c1"));
    let released = tokio::time::timeout(READ_LIMIT, stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(released.kind, baton_client::proto::EventKind::Released);
    assert_eq!(stream.last_event_id(), Some(released.id.as_str()));

    // A restart begins a new stream: the client reconnects with the id it has, hears that
    // events were missed, and follows the new stream.
    server.restart().await;
    let mut missed = None;
    for _ in 0..10 {
        match tokio::time::timeout(READ_LIMIT, stream.next())
            .await
            .unwrap()
        {
            Ok(event) => {
                missed = Some(event);
                break;
            }
            // The server was still starting when the retries ran out: ask again.
            Err(error) => assert!(error.is_retryable(), "{error}"),
        }
    }
    let missed = missed.expect("the client never reconnected");
    assert_eq!(
        missed.kind,
        baton_client::proto::EventKind::Missed,
        "{missed:?}"
    );
    let (status, lease) = acquire(&server, None, "client/b", json!({"owner": "c2"})).await;
    assert_eq!(status, 200, "{lease}");
    let event = tokio::time::timeout(READ_LIMIT, stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.lock.as_deref(), Some("client/b"), "{event:?}");
}

#[tokio::test]
async fn baton_watch_prints_a_grant_and_a_release_and_exits_130_on_ctrl_c() {
    let server = Server::start(&[]).await;
    let human = server.spawn_baton(&["watch", "watch/a"], None);
    let json_lines = server.spawn_baton(&["--json", "watch", "--prefix", "watch/"], None);
    subscribers(&server, 2).await;
    for lock in ["watch/ab", "watch/a"] {
        let (status, lease) = acquire(&server, None, lock, json!({"owner": "w1"})).await;
        assert_eq!(status, 200, "{lease}");
        release(&server, None, &lease).await;
    }
    let text = harness::eventually("baton watch to print", READ_LIMIT, async || {
        let text = human.stdout_text();
        text.contains("released by w1").then_some(text)
    })
    .await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains(" watch/a granted to w1 (token "),
        "{text}"
    );
    assert!(
        lines[1].contains(" watch/a released by w1 (token "),
        "{text}"
    );
    let json_text = harness::eventually("baton watch --json to print", READ_LIMIT, async || {
        let text = json_lines.stdout_text();
        (text.lines().count() >= 4).then_some(text)
    })
    .await;
    let events: Vec<Value> = json_text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let seen: Vec<(String, String)> = events
        .iter()
        .map(|event| {
            (
                event["type"].as_str().unwrap().to_owned(),
                event["lock"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("granted".to_owned(), "watch/ab".to_owned()),
            ("released".to_owned(), "watch/ab".to_owned()),
            ("granted".to_owned(), "watch/a".to_owned()),
            ("released".to_owned(), "watch/a".to_owned()),
        ]
    );
    for process in [human, json_lines] {
        process.signal(nix::sys::signal::Signal::SIGINT);
        let exited = process.wait(READ_LIMIT).await;
        assert_eq!(exited.code, Some(130), "{}", exited.stderr);
    }
}

#[tokio::test]
async fn a_standby_sends_subscribers_to_the_active() {
    let Some(schema) = postgres_schema("events_standby").await else {
        return;
    };
    let active = postgres_server_on(&schema, &[]).await;
    harness::eventually(
        "the first server to lead",
        Duration::from_secs(30),
        async || (metric(&active, "baton_active").await == 1).then_some(()),
    )
    .await;
    let standby = postgres_server_on(&schema, &[]).await;
    assert_eq!(metric(&standby, "baton_active").await, 0);
    let (status, body) = call(&standby, None, "GET", "/v1/events", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "not_active", "{body}");
    assert_eq!(body["active"], active.base.as_str(), "{body}");
    // The Rust client, given the standby first, follows it to the active.
    let client = baton_client::Client::new(&format!("{},{}", standby.base, active.base)).unwrap();
    let mut stream = client.events(baton_client::EventOptions::default());
    let next = tokio::spawn(async move {
        let event = stream.next().await;
        (stream, event)
    });
    subscribers(&active, 1).await;
    let (status, lease) = acquire(&standby, None, "standby/a", json!({"owner": "s1"})).await;
    assert_eq!(status, 200, "{lease}");
    // The first subscriber stays connected while the second comes.
    let (_first, event) = tokio::time::timeout(READ_LIMIT, next)
        .await
        .unwrap()
        .unwrap();
    let event = event.unwrap();
    assert_eq!(event.lock.as_deref(), Some("standby/a"), "{event:?}");
    // Given the standby alone (as behind a load balancer), it goes to the active it names.
    let client = baton_client::Client::new(&standby.base).unwrap();
    let mut stream = client.events(baton_client::EventOptions::default());
    let next = tokio::spawn(async move { stream.next().await });
    subscribers(&active, 2).await;
    let (status, lease) = acquire(&standby, None, "standby/b", json!({"owner": "s2"})).await;
    assert_eq!(status, 200, "{lease}");
    let event = tokio::time::timeout(READ_LIMIT, next)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.lock.as_deref(), Some("standby/b"), "{event:?}");
    drop(standby);
    drop(active);
}
