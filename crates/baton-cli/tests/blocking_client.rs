//! `baton_client::blocking` against the real `baton server` binary: threads that share a
//! counter under blocking guards never overlap, waiters are granted in FIFO order, a guard
//! keeps a short-ttl lease alive for several ttls while its holder's thread sleeps, dropping
//! a guard hands the lock on at once, and a revoked lease or one cut off from its server is
//! reported lost; the client fails over past a dead URL.
//!
//! The test lives here, not in baton-client, because the `baton` binary (and the harness that
//! runs it) is here; baton-client depends on no server crate, not even for its tests. The
//! blocking client is used from plain threads (no runtime of the test's around it); the
//! harness's tokio runtime only starts and stops the server. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on what it did not expect

mod harness;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_client::blocking::Client;
use baton_client::{LockOptions, LostReason};
use harness::Server;

/// How long any one wait in these tests may take before it counts as a defect (generous: the
/// machine is shared).
const LIMIT: Duration = Duration::from_secs(30);

/// A runtime for the harness and a server started on it. Bind as `let (_runtime, server)` so
/// the server is dropped (and killed) before the runtime.
fn start_server() -> (tokio::runtime::Runtime, Server) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(Server::start(&[]));
    (runtime, server)
}

/// Options for a lock held by `owner` with this ttl, waiting at most [`LIMIT`].
fn options(owner: &str, ttl: Duration) -> LockOptions {
    LockOptions {
        ttl: Some(ttl),
        wait: Some(LIMIT),
        ..LockOptions::with_owner(owner)
    }
}

/// Polls `probe` every 20 ms until it is true, failing the test after [`LIMIT`].
fn eventually(what: &str, mut probe: impl FnMut() -> bool) {
    let started = Instant::now();
    while !probe() {
        assert!(started.elapsed() < LIMIT, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `owner` is queued on `name`.
fn is_waiting(client: &Client, name: &str, owner: &str) -> bool {
    client
        .lock_info(name)
        .map(|info| info.waiters.iter().any(|waiter| waiter.owner == owner))
        .unwrap_or(false)
}

#[test]
fn blocking_guards_exclude_each_other_on_a_shared_counter() {
    let (_runtime, server) = start_server();
    let client = Client::new(&server.base).unwrap();
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 5;
    // The counter is read, then written after a pause: two sections that overlapped would lose
    // an increment, and `inside` catches the overlap itself.
    let counter = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let (client, counter, inside) = (client.clone(), counter.clone(), inside.clone());
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    let owner = format!("thread-{thread}-round-{round}");
                    let guard = client
                        .lock("counter", options(&owner, Duration::from_secs(10)))
                        .unwrap();
                    assert!(
                        !inside.swap(true, Ordering::SeqCst),
                        "two guards held the lock at once"
                    );
                    let seen = counter.load(Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(10));
                    counter.store(seen + 1, Ordering::SeqCst);
                    inside.store(false, Ordering::SeqCst);
                    drop(guard);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(counter.load(Ordering::SeqCst), THREADS * ROUNDS);
}

#[test]
fn blocking_waiters_are_granted_in_the_order_they_queued() {
    let (_runtime, server) = start_server();
    let client = Client::new(&server.base).unwrap();
    let first = client
        .lock("fifo", options("first", Duration::from_secs(30)))
        .unwrap();
    let granted = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for index in 0..3 {
        let owner = format!("waiter-{index}");
        let (waiter_client, granted) = (client.clone(), granted.clone());
        let waiter_owner = owner.clone();
        waiters.push(std::thread::spawn(move || {
            let guard = waiter_client
                .lock("fifo", options(&waiter_owner, Duration::from_secs(30)))
                .unwrap();
            granted.lock().unwrap().push(waiter_owner);
            guard.release().unwrap();
        }));
        // The next waiter queues only once this one is in the queue.
        eventually(&format!("{owner} queued"), || {
            is_waiting(&client, "fifo", &owner)
        });
    }
    assert!(first.release().unwrap().released);
    for waiter in waiters {
        waiter.join().unwrap();
    }
    assert_eq!(
        *granted.lock().unwrap(),
        ["waiter-0", "waiter-1", "waiter-2"]
    );
}

#[test]
fn a_renewing_blocking_guard_keeps_a_short_ttl_lease_past_several_ttls() {
    let (_runtime, server) = start_server();
    let client = Client::new(&server.base).unwrap();
    let ttl = Duration::from_secs(1);
    let guard = client.lock("short", options("sleeper", ttl)).unwrap();
    let token = guard.token();
    // The caller's thread does nothing asynchronous for four ttls; the guard renews anyway.
    std::thread::sleep(4 * ttl);
    assert!(
        !guard.is_lost(),
        "lost while renewing: {:?}",
        guard.status()
    );
    let info = client.lock_info("short").unwrap();
    assert_eq!(
        info.holders
            .iter()
            .map(|holder| holder.token)
            .collect::<Vec<_>>(),
        [token],
        "the server no longer lists the guard's lease"
    );
    assert!(client.fence("short", token).unwrap().accepted);
    assert!(guard.lease().expires_in_ms > 0);
    assert!(guard.deadline() > Instant::now());
    assert!(!guard.lease_id().is_empty());
    assert!(guard.release().unwrap().released);
}

#[test]
fn dropping_a_blocking_guard_hands_the_lock_on_at_once() {
    let (_runtime, server) = start_server();
    let client = Client::new(&server.base).unwrap();
    // A ttl far above the bound below: had the drop not released the lease, the waiter would
    // be granted only when it expired.
    let ttl = Duration::from_secs(60);
    let holder = client.lock("handoff", options("holder", ttl)).unwrap();
    let waiter_client = client.clone();
    let waiter = std::thread::spawn(move || {
        let guard = waiter_client
            .lock("handoff", options("waiter", ttl))
            .unwrap();
        (Instant::now(), guard.token())
    });
    eventually("the waiter queued", || {
        is_waiting(&client, "handoff", "waiter")
    });
    let holder_token = holder.token();
    let dropped_at = Instant::now();
    drop(holder);
    let (granted_at, waiter_token) = waiter.join().unwrap();
    let handoff = granted_at.duration_since(dropped_at);
    assert!(
        handoff < Duration::from_secs(10),
        "the waiter was granted {handoff:?} after the drop"
    );
    assert!(waiter_token > holder_token);
}

/// `lock_set` takes two locks together with a guard per lease; an overlapping set waits until
/// both guards are dropped, then gets both locks, each with a newer token.
#[test]
fn blocking_lock_sets_are_granted_whole_and_released_by_their_guards() {
    let (_runtime, server) = start_server();
    let client = Client::new(&server.base).unwrap();
    let ttl = Duration::from_secs(60);
    let names = |list: &[&str]| {
        list.iter()
            .map(|name| (*name).to_owned())
            .collect::<Vec<_>>()
    };
    let held = client
        .lock_set(&names(&["set-1", "set-2"]), options("holder", ttl))
        .unwrap();
    assert_eq!(held.len(), 2);
    assert_eq!(held[0].lease().lock, "set-1");
    assert_eq!(held[1].lease().lock, "set-2");
    let waiter_client = client.clone();
    let waiter = std::thread::spawn(move || {
        waiter_client
            .lock_set(&names(&["set-2", "set-3"]), options("waiter", ttl))
            .unwrap()
            .iter()
            .map(|guard| (guard.lease().lock, guard.token()))
            .collect::<Vec<_>>()
    });
    eventually("the set queued on set-2", || {
        is_waiting(&client, "set-2", "waiter")
    });
    let newest = held.iter().map(|guard| guard.token()).max().unwrap();
    drop(held);
    let granted = waiter.join().unwrap();
    assert_eq!(
        granted
            .iter()
            .map(|(lock, _)| lock.as_str())
            .collect::<Vec<_>>(),
        ["set-2", "set-3"]
    );
    assert!(granted.iter().all(|(_, token)| *token > newest));
}

#[test]
fn a_revoked_lease_is_reported_lost_by_the_blocking_guard() {
    let (_runtime, server) = start_server();
    let client = Client::new(&server.base).unwrap();
    let guard = client
        .lock("revoked", options("victim", Duration::from_secs(3)))
        .unwrap();
    assert_eq!(guard.wait_lost(Duration::from_millis(100)), None);
    assert!(client.revoke("revoked", guard.token()).unwrap().revoked);
    // The next renewal (a third of the ttl on) learns of it.
    assert_eq!(guard.wait_lost(LIMIT), Some(LostReason::Revoked));
    assert!(guard.is_lost());
    // Dropping a lost guard sends nothing and does not hang.
    drop(guard);
}

#[test]
fn a_blocking_guard_cut_off_from_its_server_reports_the_loss_by_its_deadline() {
    let (runtime, mut server) = start_server();
    let client = Client::new(&server.base).unwrap();
    let ttl = Duration::from_secs(2);
    let guard = client.lock("cut-off", options("alone", ttl)).unwrap();
    let deadline = guard.deadline();
    runtime.block_on(server.kill9());
    assert_eq!(guard.wait_lost(LIMIT), Some(LostReason::DeadlineExceeded));
    // Never later than the server's own expiry, counted from before the grant's send.
    assert!(Instant::now() >= deadline);
    drop(guard);
}

#[test]
fn the_blocking_client_fails_over_past_a_dead_url_and_refuses_a_bad_one() {
    let (_runtime, server) = start_server();
    let dead = format!("http://127.0.0.1:{}", harness::free_port());
    let client = Client::builder(&format!("{dead},{}", server.base))
        .request_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let guard = client
        .lock("fail-over", options("fail-over", Duration::from_secs(10)))
        .unwrap();
    assert_eq!(client.current_url(), server.base);
    assert!(guard.release().unwrap().released);
    let refused = Client::new("ftp://127.0.0.1:1").unwrap_err();
    assert!(
        matches!(refused, baton_client::Error::Config { .. }),
        "{refused:?}"
    );
}
