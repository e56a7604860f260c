//! G5 (liveness) and G1 (safety) at the ends of leases and tickets, against the real
//! `baton server` binary: a holder that stops renewing loses the lock at its expiry and the next
//! waiter gets it only after the lock-delay; a clean release hands over with no delay; a ticket
//! nobody waits on lapses out of the queue.
//!
//! No assertion here is about speed: server timestamps prove ordering (safety), and waits for
//! things that must happen are bounded by generous timeouts (a broken server fails by timeout).

mod harness;

use std::sync::Arc;
use std::time::Duration;

use harness::{Server, lock_path, millis, str_of, u64_of, wait_granted};
use serde_json::{Value, json};

/// The longest any liveness wait here may take before the test fails.
const LIVENESS: Duration = Duration::from_secs(30);

async fn acquire(server: &Server, name: &str, owner: &str, ttl_ms: u64) -> Value {
    let (status, body) = server
        .post(
            &lock_path(name, "/acquire"),
            json!({"owner": owner, "ttl_ms": ttl_ms}),
        )
        .await;
    assert_eq!(status, 200, "acquire {name} as {owner}: {body}");
    body["lease"].clone()
}

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

/// Waits on `ticket` in the background until granted.
fn wait_in_background(server: &Arc<Server>, ticket: &Value) -> tokio::task::JoinHandle<Value> {
    let server = Arc::clone(server);
    let id = str_of(&ticket["id"], "ticket.id").to_owned();
    tokio::spawn(async move { wait_granted(&server, &id).await })
}

async fn granted_within(task: tokio::task::JoinHandle<Value>, why: &str) -> Value {
    match tokio::time::timeout(LIVENESS, task).await {
        Ok(Ok(lease)) => lease,
        Ok(Err(error)) => panic!("the waiter failed: {error}"),
        Err(_) => panic!("the waiter was not granted within {LIVENESS:?}: {why}"),
    }
}

/// The history entry of `token` on `name`.
async fn history_entry(server: &Server, name: &str, token: u64) -> Value {
    let (status, body) = server.get(&lock_path(name, "/history")).await;
    assert_eq!(status, 200, "history: {body}");
    body["entries"]
        .as_array()
        .and_then(|entries| {
            entries
                .iter()
                .find(|entry| entry["token"].as_u64() == Some(token))
                .cloned()
        })
        .unwrap_or_else(|| panic!("token {token} is not in the history of {name}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrenewed_lease_expires_and_the_waiter_gets_the_lock_after_the_lock_delay() {
    let server = Arc::new(Server::start(&["--lock-delay", "500ms"]).await);
    let name = "exp/mutex";
    let holder = acquire(&server, name, "holder", 1_000).await;
    let holder_token = u64_of(&holder["token"], "token");
    let holder_id = str_of(&holder["id"], "id").to_owned();
    let ticket = enqueue(&server, name, "waiter").await;
    let waiter = wait_in_background(&server, &ticket);

    // The holder never renews: its lease must end and the waiter must get the lock.
    let lease = granted_within(waiter, "an unrenewed lease did not expire").await;
    assert_eq!(lease["owner"], "waiter");
    assert!(u64_of(&lease["token"], "token") > holder_token, "{lease}");

    let ended = history_entry(&server, name, holder_token).await;
    assert_eq!(ended["end"], "expired", "{ended}");
    assert_eq!(ended["owner"], "holder", "{ended}");
    // Safety: the lease did not end before its deadline, and the next grant came no sooner
    // than the lock-delay after the end (server timestamps).
    assert!(
        millis(&ended["ended_at"]) >= millis(&holder["expires_at"]),
        "the lease ended before it expired: {ended} vs {holder}"
    );
    assert!(
        millis(&lease["granted_at"]) >= millis(&ended["ended_at"]) + 500,
        "the waiter was granted within the lock-delay of the expiry: {lease} vs {ended}"
    );

    // The expired holder learns it has lost the lock.
    let (status, body) = server
        .post(&format!("/v1/leases/{holder_id}/renew"), json!({}))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (410, &json!("lease_lost")),
        "{body}"
    );
    let (status, body) = server
        .post(&format!("/v1/leases/{holder_id}/release"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"released": false, "reason": "expired"}));

    // And the waiter really holds it.
    let (status, lock) = server.get(&lock_path(name, "")).await;
    assert_eq!(status, 200, "{lock}");
    let holders = lock["holders"].as_array().cloned().unwrap_or_default();
    assert_eq!(holders.len(), 1, "{lock}");
    assert_eq!(holders[0]["owner"], "waiter", "{lock}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_release_hands_over_without_the_lock_delay() {
    // A lock-delay far longer than the liveness bound: if a clean release started it, the
    // waiter would not be granted in time and the lock would show `delayed_until`.
    let server = Arc::new(Server::start(&["--lock-delay", "10m"]).await);
    let name = "exp/clean";
    let holder = acquire(&server, name, "holder", 30_000).await;
    let holder_token = u64_of(&holder["token"], "token");
    let ticket = enqueue(&server, name, "waiter").await;
    let waiter = wait_in_background(&server, &ticket);

    let id = str_of(&holder["id"], "id");
    let (status, body) = server
        .post(&format!("/v1/leases/{id}/release"), json!({}))
        .await;
    assert_eq!((status, &body["released"]), (200, &json!(true)), "{body}");
    let (status, lock) = server.get(&lock_path(name, "")).await;
    assert_eq!(status, 200, "{lock}");
    assert!(
        lock.get("delayed_until").is_none_or(Value::is_null),
        "a clean release started the lock-delay: {lock}"
    );

    let lease = granted_within(waiter, "a clean release did not hand the lock over").await;
    assert_eq!(lease["owner"], "waiter");
    let ended = history_entry(&server, name, holder_token).await;
    assert_eq!(ended["end"], "released", "{ended}");
    assert!(
        millis(&lease["granted_at"]) >= millis(&ended["ended_at"]),
        "the waiter was granted before the release: {lease} vs {ended}"
    );
    let (status, lock) = server.get(&lock_path(name, "")).await;
    assert_eq!(status, 200, "{lock}");
    assert!(
        lock.get("delayed_until").is_none_or(Value::is_null),
        "{lock}"
    );
    assert_eq!(lock["holders"][0]["owner"], "waiter", "{lock}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_nobody_waits_on_lapses_out_of_the_queue() {
    let server = Arc::new(Server::start(&["--ticket-lapse", "1s"]).await);
    let name = "exp/lapse";
    let holder = acquire(&server, name, "holder", 60_000).await;
    let idle = enqueue(&server, name, "idle").await;
    let active = enqueue(&server, name, "active").await;
    let lapses_in_ms = u64_of(&idle["lapses_in_ms"], "lapses_in_ms");
    assert!(lapses_in_ms <= 1_000, "{idle}");

    // "active" keeps waiting (long-polls longer than the lapse), so it must stay queued.
    let active_id = str_of(&active["id"], "id").to_owned();
    let keeper = {
        let server = Arc::clone(&server);
        let id = active_id.clone();
        tokio::spawn(async move {
            loop {
                let (status, body) = server
                    .post(&format!("/v1/tickets/{id}/wait"), json!({"wait_ms": 3_000}))
                    .await;
                if status != 202 {
                    return (status, body);
                }
            }
        })
    };

    // The lapse has no event to await: sleep until it is due, then look (bounded).
    tokio::time::sleep(Duration::from_millis(lapses_in_ms)).await;
    let deadline = tokio::time::Instant::now() + LIVENESS;
    let lock = loop {
        let (status, lock) = server.get(&lock_path(name, "")).await;
        assert_eq!(status, 200, "{lock}");
        let owners: Vec<&str> = lock["waiters"]
            .as_array()
            .map(|waiters| waiters.iter().filter_map(|w| w["owner"].as_str()).collect())
            .unwrap_or_default();
        if !owners.contains(&"idle") {
            break lock;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle ticket did not lapse within {LIVENESS:?}: {lock}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        lock["waiters"],
        json!([{"position": 1, "owner": "active", "mode": "exclusive", "since": lock["waiters"][0]["since"]}]),
        "the waited-on ticket must stay, at the head: {lock}"
    );

    let idle_id = str_of(&idle["id"], "id");
    let (status, body) = server
        .post(
            &format!("/v1/tickets/{idle_id}/wait"),
            json!({"wait_ms": 0}),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (410, &json!("ticket_lapsed")),
        "{body}"
    );
    let (status, body) = server.delete(&format!("/v1/tickets/{idle_id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"cancelled": false, "reason": "lapsed"}));

    // Cancelling the active ticket ends its waiter's loop.
    let (status, body) = server.delete(&format!("/v1/tickets/{active_id}")).await;
    assert_eq!((status, &body["cancelled"]), (200, &json!(true)), "{body}");
    let (status, body) = match tokio::time::timeout(LIVENESS, keeper).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => panic!("the waiting task failed: {error}"),
        Err(_) => panic!("a wait on a cancelled ticket did not end within {LIVENESS:?}"),
    };
    assert_eq!(
        (status, &body["error"]["code"]),
        (410, &json!("ticket_cancelled")),
        "{body}"
    );

    // No ghost is left in the queue: once the holder releases, the lock is free.
    let id = str_of(&holder["id"], "id");
    let (status, body) = server
        .post(&format!("/v1/leases/{id}/release"), json!({}))
        .await;
    assert_eq!((status, &body["released"]), (200, &json!(true)), "{body}");
    acquire(&server, name, "next", 30_000).await;
}
