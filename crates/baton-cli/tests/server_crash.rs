//! G2 (durability) and G3 (fencing) across a crash: the real `baton server` with its SQLite
//! store is killed with SIGKILL and restarted on the same data folder and port. Every
//! acknowledged lease and ticket must survive with no deadline shortened and its queue order
//! kept, and no fencing token may ever be granted twice.

mod harness;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{Server, lock_path, millis, str_of, u64_of, wait_granted};
use serde_json::{Value, json};
use tokio::sync::watch;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

async fn acquire(server: &Server, name: &str, body: Value) -> Value {
    let (status, answer) = server.post(&lock_path(name, "/acquire"), body).await;
    assert_eq!(status, 200, "acquire {name}: {answer}");
    answer["lease"].clone()
}

async fn lock(server: &Server, name: &str) -> Value {
    let (status, body) = server.get(&lock_path(name, "")).await;
    assert_eq!(status, 200, "GET lock {name}: {body}");
    body
}

/// Holders of a lock listing by token: expires_at in milliseconds and owner.
fn holders_by_token(lock: &Value) -> BTreeMap<u64, (i64, String)> {
    lock["holders"]
        .as_array()
        .unwrap_or_else(|| panic!("no holders array: {lock}"))
        .iter()
        .map(|holder| {
            (
                u64_of(&holder["token"], "token"),
                (
                    millis(&holder["expires_at"]),
                    str_of(&holder["owner"], "owner").to_owned(),
                ),
            )
        })
        .collect()
}

/// Waiters of a lock listing: (position, owner).
fn waiters(lock: &Value) -> Vec<(u64, String)> {
    lock["waiters"]
        .as_array()
        .unwrap_or_else(|| panic!("no waiters array: {lock}"))
        .iter()
        .map(|waiter| {
            (
                u64_of(&waiter["position"], "position"),
                str_of(&waiter["owner"], "owner").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_tickets_and_tokens_survive_a_kill_9() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // Tickets must not lapse while the server is down and restarting: this test is about
        // durability, not lapse.
        let mut server = Server::start(&["--ticket-lapse", "5m"]).await;
        let sem = "crash/sem";
        let mutex = "crash/mutex";
        let mut leases = Vec::new();
        for owner in ["h1", "h2"] {
            let body = json!({"owner": owner, "ttl_ms": 60_000, "capacity": 2});
            leases.push(acquire(&server, sem, body).await);
        }
        let mut tickets = Vec::new();
        for (index, owner) in ["w1", "w2", "w3"].into_iter().enumerate() {
            let body = json!({
                "owner": owner, "ttl_ms": 60_000, "capacity": 2, "queue": true, "wait_ms": 0
            });
            let (status, answer) = server.post(&lock_path(sem, "/acquire"), body).await;
            assert_eq!(status, 202, "enqueue {owner}: {answer}");
            assert_eq!(answer["ticket"]["position"], json!(index + 1), "{answer}");
            tickets.push(str_of(&answer["ticket"]["id"], "ticket.id").to_owned());
        }
        leases.push(acquire(&server, mutex, json!({"owner": "m1", "ttl_ms": 60_000})).await);
        let max_token = leases
            .iter()
            .map(|lease| u64_of(&lease["token"], "token"))
            .max()
            .unwrap_or(0);
        let sem_before = holders_by_token(&lock(&server, sem).await);
        let mutex_before = holders_by_token(&lock(&server, mutex).await);
        assert_eq!(sem_before.len(), 2);
        assert_eq!(mutex_before.len(), 1);

        server.kill9().await;
        server.restart().await;

        // Holders: the same tokens and owners, no deadline earlier than before the crash
        // (read before any renewal, so a renewal cannot mask a shortened deadline).
        for (name, before) in [(sem, &sem_before), (mutex, &mutex_before)] {
            let after_lock = lock(&server, name).await;
            let after = holders_by_token(&after_lock);
            assert_eq!(
                after.keys().collect::<Vec<_>>(),
                before.keys().collect::<Vec<_>>(),
                "holders of {name} changed across the crash: {after_lock}"
            );
            for (token, (expires_before, owner)) in before.iter() {
                let (expires_after, owner_after) = &after[token];
                assert_eq!(owner, owner_after, "{after_lock}");
                assert!(
                    expires_after >= expires_before,
                    "token {token} of {name}: the deadline moved earlier across the crash \
                     ({expires_before} → {expires_after})"
                );
            }
        }
        let sem_after = lock(&server, sem).await;
        assert_eq!(sem_after["capacity"], 2, "{sem_after}");
        assert_eq!(
            waiters(&sem_after),
            vec![
                (1, "w1".to_owned()),
                (2, "w2".to_owned()),
                (3, "w3".to_owned())
            ],
            "the queue changed across the crash: {sem_after}"
        );

        // Every ticket is still a place in the queue, in order.
        for (index, ticket) in tickets.iter().enumerate() {
            let (status, answer) = server
                .post(&format!("/v1/tickets/{ticket}/wait"), json!({"wait_ms": 0}))
                .await;
            assert_eq!(status, 202, "ticket {index} after the crash: {answer}");
            assert_eq!(answer["ticket"]["position"], json!(index + 1), "{answer}");
        }

        // Every lease still renews with its id, keeping its token and its deadline.
        for lease in &leases {
            let id = str_of(&lease["id"], "id");
            let (status, answer) = server
                .post(&format!("/v1/leases/{id}/renew"), json!({}))
                .await;
            assert_eq!(status, 200, "renew {lease} after the crash: {answer}");
            assert_eq!(answer["lease"]["token"], lease["token"], "{answer}");
            assert!(millis(&answer["lease"]["expires_at"]) >= millis(&lease["expires_at"]));
        }

        // Releasing one semaphore lease grants the head of the queue, with a new token.
        let id = str_of(&leases[0]["id"], "id");
        let (status, answer) = server
            .post(&format!("/v1/leases/{id}/release"), json!({}))
            .await;
        assert_eq!(
            (status, &answer["released"]),
            (200, &json!(true)),
            "{answer}"
        );
        let granted = wait_granted(&server, &tickets[0]).await;
        assert_eq!(granted["owner"], "w1", "{granted}");
        let w1_token = u64_of(&granted["token"], "token");
        assert!(
            w1_token > max_token,
            "token {w1_token} granted after the crash is not above {max_token} from before it"
        );
        let (status, answer) = server
            .post(
                &format!("/v1/tickets/{}/wait", tickets[1]),
                json!({"wait_ms": 0}),
            )
            .await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["ticket"]["position"], 1, "{answer}");

        // A new lock's first grant continues the same sequence.
        let fresh = acquire(&server, "crash/fresh", json!({"owner": "f"})).await;
        assert!(
            u64_of(&fresh["token"], "token") > w1_token,
            "a fresh lock got token {} after {w1_token}",
            fresh["token"]
        );
    })
    .await
    .unwrap_or_else(|_| panic!("the test did not finish within {TEST_TIMEOUT:?}"));
}

/// Clients cycling acquire/release on their own locks.
const LOAD_CLIENTS: usize = 8;
/// Grants the clients must have received, all together, before the kill.
const GRANTS_BEFORE_KILL: usize = 80;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_reused_after_a_kill_9_under_load() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut server = Server::start(&[]).await;
        let shared = Arc::new(server_handle(&server));
        let received = Arc::new(Mutex::new(Vec::<u64>::new()));
        let (count_tx, mut count_rx) = watch::channel(0usize);
        let count_tx = Arc::new(count_tx);
        let mut tasks = Vec::new();
        for client in 0..LOAD_CLIENTS {
            let shared = Arc::clone(&shared);
            let received = Arc::clone(&received);
            let count_tx = Arc::clone(&count_tx);
            tasks.push(tokio::spawn(async move {
                let path = lock_path(&format!("load/{client}"), "/acquire");
                let body = json!({"owner": format!("l{client}"), "ttl_ms": 60_000});
                // Runs until the server dies under it.
                loop {
                    let Ok((status, answer)) = shared.try_post(&path, body.clone()).await else {
                        return;
                    };
                    assert_eq!(status, 200, "acquire before the crash: {answer}");
                    let token = u64_of(&answer["lease"]["token"], "token");
                    if let Ok(mut received) = received.lock() {
                        received.push(token);
                    }
                    count_tx.send_modify(|count| *count += 1);
                    let id = str_of(&answer["lease"]["id"], "id");
                    let release = format!("/v1/leases/{id}/release");
                    match shared.try_post(&release, json!({})).await {
                        Ok((status, answer)) => assert_eq!(status, 200, "{answer}"),
                        Err(_) => return,
                    }
                }
            }));
        }
        // Kill in the middle of the run, once the clients are well under way.
        if count_rx
            .wait_for(|count| *count >= GRANTS_BEFORE_KILL)
            .await
            .is_err()
        {
            panic!("the load clients stopped early:\n{}", server.log_text());
        }
        server.kill9().await;
        for task in tasks {
            task.await
                .unwrap_or_else(|error| panic!("a load client failed: {error}"));
        }
        let before: Vec<u64> = received
            .lock()
            .map(|tokens| tokens.clone())
            .unwrap_or_default();
        assert!(before.len() >= GRANTS_BEFORE_KILL);
        let mut unique = before.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            before.len(),
            "a token was granted twice before the crash"
        );
        let max_before = unique.last().copied().unwrap_or(0);

        server.restart().await;
        let mut after = Vec::new();
        for client in 0..LOAD_CLIENTS {
            // The client's own lock may still be held by a lease granted before the crash
            // (its release never arrived): then it is busy, which is right.
            let (status, answer) = server
                .post(
                    &lock_path(&format!("load/{client}"), "/acquire"),
                    json!({"owner": format!("l{client}")}),
                )
                .await;
            match status {
                200 => after.push(u64_of(&answer["lease"]["token"], "token")),
                409 => assert_eq!(answer["error"]["code"], "busy", "{answer}"),
                _ => panic!("acquire after the crash: {status} {answer}"),
            }
            for round in 0..3 {
                let name = format!("after/{client}/{round}");
                let lease = acquire(&server, &name, json!({"owner": "a"})).await;
                after.push(u64_of(&lease["token"], "token"));
            }
        }
        for token in &after {
            assert!(
                *token > max_before,
                "token {token} granted after the crash was already at or below {max_before}, \
                 the greatest token a client received before it"
            );
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the test did not finish within {TEST_TIMEOUT:?}"));
}

/// A client of `server` that outlives borrows of it: the load tasks must not hold the
/// [`Server`] itself, which the test kills and restarts.
fn server_handle(server: &Server) -> Client {
    Client {
        base: server.base.clone(),
        http: server.http().clone(),
    }
}

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn try_post(&self, path: &str, body: Value) -> Result<(u16, Value), String> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|error| error.to_string())?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|error| error.to_string())?;
        let value = serde_json::from_str(&text)
            .map_err(|error| format!("status {status}, not JSON ({error}): {text:?}"))?;
        Ok((status, value))
    }
}
