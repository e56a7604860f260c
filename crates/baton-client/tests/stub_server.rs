//! The client against a tiny scripted axum server on `127.0.0.1:0`: the request shapes it
//! sends, fail-over, retries with a stable request id, the queue-and-wait loop and the guard's
//! renewals and losses. The real server's behaviour is tested elsewhere; this pins the client's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use baton_client::{Client, Error, LockOptions, LostReason, RetryPolicy};
use serde_json::{Value, json};

/// One scripted answer.
#[derive(Clone)]
struct Reply {
    status: u16,
    body: Value,
    delay: Duration,
}

fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        body,
        delay: Duration::ZERO,
    }
}

/// One request the stub saw.
#[derive(Debug, Clone)]
struct Seen {
    kind: String,
    path: String,
    body: Value,
    authorization: Option<String>,
}

#[derive(Default)]
struct Script {
    /// Answers per request kind; the last one repeats.
    replies: HashMap<String, VecDeque<Reply>>,
    seen: Vec<Seen>,
}

#[derive(Clone, Default)]
struct Stub(Arc<Mutex<Script>>);

impl Stub {
    fn on(&self, kind: &str, replies: Vec<Reply>) -> &Stub {
        self.0
            .lock()
            .unwrap()
            .replies
            .insert(kind.to_owned(), replies.into());
        self
    }

    fn seen(&self, kind: &str) -> Vec<Seen> {
        let script = self.0.lock().unwrap();
        script
            .seen
            .iter()
            .filter(|seen| seen.kind == kind)
            .cloned()
            .collect()
    }

    /// Serves the stub; returns its base URL.
    async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let stub = self.clone();
        let app = Router::new().fallback(move |method, uri, headers, body| {
            let stub = stub.clone();
            async move { stub.answer(method, uri, headers, body).await }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    async fn answer(&self, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        let path = uri.path().to_owned();
        let last = path.rsplit('/').next().unwrap_or_default().to_owned();
        let kind = match (method.as_str(), last.as_str()) {
            ("DELETE", _) => "cancel".to_owned(),
            ("GET", "locks") => "locks".to_owned(),
            ("GET", _) if path.starts_with("/v1/locks/") && !path.ends_with("/history") => {
                "lock".to_owned()
            }
            (_, kind) => kind.to_owned(),
        };
        let reply = {
            let mut script = self.0.lock().unwrap();
            script.seen.push(Seen {
                kind: kind.clone(),
                path: uri.to_string(),
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                authorization: headers
                    .get("authorization")
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned),
            });
            let queue = script.replies.entry(kind).or_default();
            if queue.len() > 1 {
                queue.pop_front()
            } else {
                queue.front().cloned()
            }
        };
        let Some(reply) = reply else {
            return (StatusCode::NOT_FOUND, "no script").into_response();
        };
        tokio::time::sleep(reply.delay).await;
        let status = StatusCode::from_u16(reply.status).unwrap();
        (status, axum::Json(reply.body)).into_response()
    }
}

fn lease(token: u64, ttl_ms: u64) -> Value {
    json!({"lease": {
        "id": "lease-1", "lock": "team-a/deploy", "owner": "o", "token": token,
        "ttl_ms": ttl_ms, "granted_at": "2024-01-01T00:00:00Z",
        "expires_at": "2024-01-01T00:00:30Z", "expires_in_ms": ttl_ms,
    }})
}

fn ticket(position: u64) -> Value {
    json!({"ticket": {
        "id": "ticket-1", "lock": "team-a/deploy", "owner": "o", "position": position,
        "queued_at": "2024-01-01T00:00:00Z", "lapses_in_ms": 10000,
    }})
}

fn error(code: &str) -> Value {
    json!({"error": {"code": code, "message": format!("stub says {code}")}})
}

/// A URL on which nothing listens: a port just bound and released.
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}")
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(20),
    }
}

#[tokio::test]
async fn lock_queues_waits_renews_and_releases() {
    let stub = Stub::default();
    stub.on("acquire", vec![reply(202, ticket(2))])
        .on(
            "wait",
            vec![reply(202, ticket(1)), reply(200, lease(42, 900))],
        )
        .on("renew", vec![reply(200, lease(42, 900))])
        .on("release", vec![reply(200, json!({"released": true}))]);
    let url = stub.serve().await;
    let client = Client::builder(&url).api_key("k3y").build().unwrap();

    let options = LockOptions {
        owner: "me".into(),
        ttl: Some(Duration::from_millis(900)),
        ..LockOptions::default()
    };
    let guard = client.lock("team-a/deploy", options).await.unwrap();
    assert_eq!(guard.token(), 42);
    assert_eq!(guard.lease_id(), "lease-1");

    // The name travels as one encoded segment, with the options and a request id.
    let acquire = &stub.seen("acquire")[0];
    assert_eq!(acquire.path, "/v1/locks/team-a%2Fdeploy/acquire");
    assert_eq!(acquire.body["owner"], "me");
    assert_eq!(acquire.body["ttl_ms"], 900);
    assert_eq!(acquire.body["queue"], true);
    assert_eq!(acquire.body["request_id"].as_str().map(str::len), Some(32));
    assert_eq!(acquire.authorization.as_deref(), Some("Bearer k3y"));
    let waits = stub.seen("wait");
    assert_eq!(waits.len(), 2);
    assert_eq!(waits[0].path, "/v1/tickets/ticket-1/wait");
    assert!(waits[0].body["wait_ms"].as_u64().unwrap() <= 30_000);

    // A 900 ms lease renews every 300 ms; after a second it is still held.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        stub.seen("renew").len() >= 2,
        "renewals: {:?}",
        stub.seen("renew")
    );
    assert!(!guard.is_lost());

    let lost = guard.lost();
    let released = guard.release().await.unwrap();
    assert!(released.released);
    assert_eq!(lost.await, LostReason::Released);
    assert_eq!(stub.seen("release")[0].path, "/v1/leases/lease-1/release");
}

#[tokio::test]
async fn dropping_the_guard_releases_the_lease() {
    let stub = Stub::default();
    stub.on("acquire", vec![reply(200, lease(7, 30_000))])
        .on("release", vec![reply(200, json!({"released": true}))]);
    let client = Client::new(&stub.serve().await).unwrap();
    let guard = client.lock("x", LockOptions::default()).await.unwrap();
    drop(guard);
    for _ in 0..100 {
        if !stub.seen("release").is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no release after drop");
}

#[tokio::test]
async fn a_revoked_lease_is_reported_lost() {
    let stub = Stub::default();
    stub.on("acquire", vec![reply(200, lease(1, 600))])
        .on("renew", vec![reply(410, error("revoked"))]);
    let client = Client::new(&stub.serve().await).unwrap();
    let guard = client.lock("x", LockOptions::default()).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(2), guard.lost()).await;
    assert_eq!(reason.ok(), Some(LostReason::Revoked));
    assert!(guard.is_lost());
}

#[tokio::test]
async fn a_lease_that_cannot_be_renewed_is_lost_at_the_local_deadline() {
    let stub = Stub::default();
    stub.on("acquire", vec![reply(200, lease(1, 600))]).on(
        "renew",
        vec![Reply {
            status: 200,
            body: lease(1, 600),
            delay: Duration::from_secs(5),
        }],
    );
    let client = Client::new(&stub.serve().await).unwrap();
    let started = tokio::time::Instant::now();
    let guard = client.lock("x", LockOptions::default()).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(2), guard.lost()).await;
    assert_eq!(reason.ok(), Some(LostReason::DeadlineExceeded));
    // 600 ms less the 106 ms margin, counted from before the acquire was sent.
    assert!(started.elapsed() < Duration::from_millis(600));
}

#[tokio::test]
async fn renewals_ride_over_a_short_outage() {
    let stub = Stub::default();
    stub.on("acquire", vec![reply(200, lease(1, 1500))]).on(
        "renew",
        vec![
            reply(503, error("unavailable")),
            reply(503, error("unavailable")),
            reply(200, lease(1, 1500)),
        ],
    );
    let client = Client::new(&stub.serve().await).unwrap();
    let guard = client.lock("x", LockOptions::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(!guard.is_lost(), "{:?}", guard.status());
    assert!(stub.seen("renew").len() >= 3);
}

#[tokio::test]
async fn waiting_gives_up_in_time_and_cancels_the_ticket() {
    let stub = Stub::default();
    stub.on("acquire", vec![reply(202, ticket(3))])
        .on(
            "wait",
            vec![Reply {
                status: 202,
                body: ticket(3),
                delay: Duration::from_millis(50),
            }],
        )
        .on("cancel", vec![reply(200, json!({"cancelled": true}))]);
    let client = Client::new(&stub.serve().await).unwrap();
    let options = LockOptions {
        wait: Some(Duration::from_millis(300)),
        ..LockOptions::default()
    };
    let outcome = client.wait_for_lease("x", &options).await;
    assert!(
        matches!(&outcome, Err(Error::TimedOut { lock, .. }) if lock == "x"),
        "{outcome:?}"
    );
    assert_eq!(stub.seen("cancel")[0].path, "/v1/tickets/ticket-1");
    let first = &stub.seen("acquire")[0];
    assert!(first.body["wait_ms"].as_u64().unwrap() <= 300);
}

#[tokio::test]
async fn a_lapsed_ticket_queues_again_with_a_new_request_id() {
    let stub = Stub::default();
    stub.on(
        "acquire",
        vec![reply(202, ticket(1)), reply(200, lease(9, 30_000))],
    )
    .on("wait", vec![reply(410, error("ticket_lapsed"))]);
    let client = Client::new(&stub.serve().await).unwrap();
    let granted = client
        .wait_for_lease("x", &LockOptions::default())
        .await
        .unwrap();
    assert_eq!(granted.lease.token, 9);
    let acquires = stub.seen("acquire");
    assert_eq!(acquires.len(), 2);
    assert_ne!(
        acquires[0].body["request_id"],
        acquires[1].body["request_id"]
    );
}

#[tokio::test]
async fn try_once_does_not_queue_and_reports_holders() {
    let stub = Stub::default();
    let mut busy = error("busy");
    busy["holders"] = json!([{"owner": "h/1", "token": 5,
        "since": "2024-01-01T00:00:00Z", "expires_at": "2024-01-01T00:00:30Z"}]);
    stub.on("acquire", vec![reply(409, busy)]);
    let client = Client::new(&stub.serve().await).unwrap();
    let options = LockOptions {
        wait: Some(Duration::ZERO),
        ..LockOptions::default()
    };
    match client.wait_for_lease("x", &options).await {
        Err(Error::Busy { holders, message }) => {
            assert_eq!(holders[0].token, 5);
            assert_eq!(message, "stub says busy");
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    let acquire = &stub.seen("acquire")[0];
    assert_eq!(acquire.body["queue"], false);
    assert_eq!(acquire.body["wait_ms"], 0);
}

#[tokio::test]
async fn acquire_retries_with_the_same_request_id() {
    let stub = Stub::default();
    stub.on(
        "acquire",
        vec![
            reply(503, error("unavailable")),
            reply(200, lease(3, 30_000)),
        ],
    );
    let client = Client::builder(&stub.serve().await)
        .retry(fast_retries())
        .build()
        .unwrap();
    let request = baton_client::proto::AcquireRequest {
        owner: "o".into(),
        ..Default::default()
    };
    let acquired = client.acquire("x", &request).await.unwrap();
    assert!(matches!(acquired, baton_client::Acquired::Granted(_)));
    let acquires = stub.seen("acquire");
    assert_eq!(acquires.len(), 2);
    assert_eq!(
        acquires[0].body["request_id"],
        acquires[1].body["request_id"]
    );
}

#[tokio::test]
async fn connection_failures_fail_over_and_the_working_url_is_remembered() {
    let stub = Stub::default();
    stub.on("locks", vec![reply(200, json!({"locks": []}))]);
    let good = stub.serve().await;
    let dead = dead_url().await;
    let client = Client::builder(&format!("{dead},{good}"))
        .retry(RetryPolicy::NONE)
        .build()
        .unwrap();
    let list = client.locks().await.unwrap();
    assert!(list.locks.is_empty());
    assert_eq!(client.current_url(), good);
}

#[tokio::test]
async fn no_server_at_all_is_unavailable() {
    let dead = dead_url().await;
    let client = Client::builder(&dead)
        .retry(fast_retries())
        .build()
        .unwrap();
    let outcome = client.health().await;
    match outcome {
        Err(error @ Error::Unavailable { .. }) => {
            assert!(error.to_string().contains(&dead), "{error}");
            assert_eq!(error.code(), "unavailable");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stale_fence_is_an_answer_not_an_error() {
    let stub = Stub::default();
    let mut stale = error("stale_token");
    stale["newest_token"] = json!(12);
    stub.on("fence", vec![reply(409, stale)]);
    let client = Client::new(&stub.serve().await).unwrap();
    let answer = client.fence("db@primary", 10).await.unwrap();
    assert!(!answer.accepted);
    assert_eq!(answer.newest_token, 12);
    let seen = &stub.seen("fence")[0];
    assert_eq!(seen.path, "/v1/locks/db%40primary/fence");
    assert_eq!(seen.body, json!({"token": 10}));
}

#[tokio::test]
async fn revoke_is_never_retried() {
    let stub = Stub::default();
    stub.on("revoke", vec![reply(503, error("unavailable"))]);
    let client = Client::builder(&stub.serve().await)
        .retry(fast_retries())
        .build()
        .unwrap();
    let outcome = client.revoke("x", 4).await;
    assert!(matches!(outcome, Err(Error::Unavailable { .. })));
    assert_eq!(stub.seen("revoke").len(), 1);
}

#[tokio::test]
async fn history_sends_its_limit() {
    let stub = Stub::default();
    stub.on(
        "history",
        vec![reply(200, json!({"lock": "a:b", "entries": []}))],
    );
    let client = Client::new(&stub.serve().await).unwrap();
    let history = client.history("a:b", Some(5)).await.unwrap();
    assert_eq!(history.lock, "a:b");
    assert_eq!(
        stub.seen("history")[0].path,
        "/v1/locks/a%3Ab/history?limit=5"
    );
}

#[tokio::test]
async fn an_answer_of_the_wrong_shape_is_a_protocol_error() {
    let stub = Stub::default();
    stub.on("locks", vec![reply(200, json!({"something": "else"}))]);
    let client = Client::new(&stub.serve().await).unwrap();
    assert!(matches!(client.locks().await, Err(Error::Protocol { .. })));
}
