#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Several real `baton server` processes on one PostgreSQL database: one is the active server,
//! the others standbys (`baton_store_postgres::leader`). These tests fail the active the ways
//! machines fail — kill -9 under load, SIGSTOP for longer than its leadership lease and then
//! SIGCONT, its database connections cut — and check what the issue asks of a fail-over:
//! a standby serves within the leadership lease plus two seconds; no acknowledged grant is
//! lost and no deadline shortened (G2); no two holds overlap (G1); no token is reused (G3);
//! queued waiters keep their places (G4); the resumed old active answers nothing from its
//! stale table; `baton run` children keep running through a fail-over shorter than their TTL.
//!
//! Every test needs PostgreSQL ([`testing::available`] skips it plainly without one, or fails
//! it under `BATON_REQUIRE_POSTGRES=1`) and works in a schema of its own, dropped at the end.

mod cluster;
mod harness;

use std::time::Duration;

use baton_client::proto::AcquireRequest;
use baton_client::{Acquired, RetryPolicy};
use baton_store_postgres::testing;
use cluster::{
    FAILOVER_BOUND, Schema, acquire, active_of, bounded, check_holds, client_of, first_grant_after,
    hammer, holders_of, roles, start_pg_with, start_three,
};
use harness::{Server, lock_path};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_active_and_standbys_send_clients_to_it() {
    let Some(url) = testing::available("one_active_and_standbys_send_clients_to_it").await else {
        return;
    };
    bounded(async {
        let schema = Schema::new(&url, "failover_roles");
        let servers = start_three(&schema).await;
        let all: Vec<&Server> = servers.iter().collect();
        let active = active_of(&all).await;
        let found = roles(&all).await;
        for (index, (status, role, named)) in found.iter().enumerate() {
            if index == active {
                assert_eq!((*status, role.as_str()), (200, "active"), "{found:?}");
            } else {
                assert_eq!((*status, role.as_str()), (503, "standby"), "{found:?}");
                assert_eq!(named, &servers[active].base, "a standby names the active");
            }
        }
        // A standby forwards a request to the active, and relays its answer.
        let standby = &servers[(active + 1) % 3];
        let answer = standby
            .http()
            .post(format!(
                "{}{}",
                standby.base,
                lock_path("roles/y", "/acquire")
            ))
            .json(&json!({"owner": "o", "ttl_ms": 10_000}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 200);
        assert!(
            answer.headers().contains_key("baton-forwarded-by"),
            "the standby answered itself: {:?}",
            answer.headers()
        );
        let (status, body) = servers[active].get(&lock_path("roles/y", "")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["holders"][0]["owner"], "o",
            "the active holds the lease: {body}"
        );
        // A request already forwarded once is not forwarded again: the standby does nothing
        // and names the active.
        let answer = standby
            .http()
            .get(format!("{}{}", standby.base, lock_path("roles/y", "")))
            .header("baton-forwarded-by", "elsewhere")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 503);
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_active", "{body}");
        assert_eq!(body["active"], servers[active].base.as_str(), "{body}");
        // A client whose first URL is a standby is sent on to the active in the same attempt.
        let order = [standby, &servers[active]];
        let client = client_of(&order, RetryPolicy::NONE);
        let lease = acquire(&client, "roles/x", 10_000).await;
        assert!(lease.token > 0);
        let listed = holders_of(&client, "roles/x").await;
        assert_eq!(listed.len(), 1, "{listed:?}");
        // /metrics says who is active.
        let text = servers[active]
            .http()
            .get(format!("{}/metrics", servers[active].base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.contains("baton_active{store=\"postgres\"} 1"),
            "{text}"
        );
        let text = standby
            .http()
            .get(format!("{}/metrics", standby.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.contains("baton_active{store=\"postgres\"} 0"),
            "{text}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_of_the_active_under_load() {
    let Some(url) = testing::available("kill9_of_the_active_under_load").await else {
        return;
    };
    bounded(async {
        let schema = Schema::new(&url, "failover_kill9");
        let mut servers = start_three(&schema).await;
        let all: Vec<&Server> = servers.iter().collect();
        let active = active_of(&all).await;
        let client = client_of(&all, RetryPolicy::default());
        let once = client_of(&all, RetryPolicy::NONE);

        // Acknowledged grants that must survive: long leases on their own locks.
        let mut sentinels = Vec::new();
        for index in 0..5 {
            let name = format!("sentinel/{index}");
            let lease = acquire(&client, &name, 60_000).await;
            let listed = holders_of(&client, &name).await;
            sentinels.push((name, lease, listed));
        }

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (holds, tasks) = hammer(&client, "hot", 8, stop_rx);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let before = holds.lock().unwrap().len();
        assert!(before > 0, "the workers made no progress before the kill");

        let killed_at = Instant::now();
        servers[active].kill9().await;
        let took = first_grant_after(&once, killed_at, "after kill -9 of the active").await;
        assert!(
            took <= FAILOVER_BOUND,
            "a standby served only {took:?} after the active was killed (bound {FAILOVER_BOUND:?})"
        );
        // Load goes on through the new active for a while.
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        stop_tx.send_replace(true);
        for task in tasks {
            task.await.unwrap();
        }
        let holds = holds.lock().unwrap().clone();
        assert!(
            holds.len() > before,
            "no hold after the fail-over ({} before, {} after)",
            before,
            holds.len()
        );
        check_holds(&holds);

        // Every sentinel survived with its token, and no deadline was shortened.
        let live: Vec<&Server> = servers
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != active)
            .map(|(_, server)| server)
            .collect();
        let _ = active_of(&live).await;
        for (name, lease, listed) in &sentinels {
            let now = holders_of(&client, name).await;
            assert_eq!(now.len(), 1, "{name}: {now:?}");
            assert_eq!(now[0].0, lease.owner, "{name}: the same holder");
            assert_eq!(now[0].1, lease.token, "{name}: the same token");
            assert!(
                now[0].2 >= listed[0].2,
                "{name}: the deadline moved from {} to {}",
                listed[0].2,
                now[0].2
            );
            client
                .renew(&lease.id, None)
                .await
                .expect("renew a sentinel");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_active_answers_nothing_from_its_stale_table() {
    let Some(url) =
        testing::available("a_paused_active_answers_nothing_from_its_stale_table").await
    else {
        return;
    };
    bounded(async {
        let schema = Schema::new(&url, "failover_sigstop");
        let servers = start_three(&schema).await;
        let all: Vec<&Server> = servers.iter().collect();
        let active = active_of(&all).await;
        let old = &servers[active];
        let client = client_of(&all, RetryPolicy::default());
        let others: Vec<&Server> = servers
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != active)
            .map(|(_, server)| server)
            .collect();
        // The probe asks the standbys only: a request to the paused server would wait for
        // the client's request timeout, which measures the client, not the fail-over.
        let once = client_of(&others, RetryPolicy::NONE);
        let lease = acquire(&client, "paused/held", 30_000).await;

        let pid = Pid::from_raw(i32::try_from(old.pid().unwrap()).unwrap());
        let stopped_at = Instant::now();
        kill(pid, Signal::SIGSTOP).unwrap();
        // A renewal sent to the paused active sits in its socket until it resumes.
        let renewal = {
            let http = old.http().clone();
            let url = format!("{}/v1/leases/{}/renew", old.base, lease.id);
            tokio::spawn(async move {
                http.post(url)
                    .json(&json!({}))
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await
                    .map(|response| {
                        (
                            response.status().as_u16(),
                            response.headers().contains_key("baton-forwarded-by"),
                        )
                    })
            })
        };
        let took = first_grant_after(&once, stopped_at, "while the active is paused").await;
        assert!(
            took <= FAILOVER_BOUND,
            "a standby served only {took:?} after the active was paused (bound {FAILOVER_BOUND:?})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        kill(pid, Signal::SIGCONT).unwrap();

        // The renewal that waited in the old active's socket is not answered from its table:
        // it gets `not_active`, or (once the old one learned who took over) the new active's
        // answer, forwarded.
        let (status, forwarded) = renewal
            .await
            .unwrap()
            .expect("the queued renewal got an answer");
        assert!(
            status == 503 || forwarded,
            "the resumed old active answered a renewal from its stale table: {status}"
        );
        // Whatever it answers now is either "not active" or the new active's answer,
        // forwarded; never its own table.
        for _ in 0..10 {
            let answer = old
                .http()
                .get(format!("{}{}", old.base, lock_path("paused/held", "")))
                .send()
                .await
                .unwrap();
            let status = answer.status().as_u16();
            let forwarded = answer.headers().contains_key("baton-forwarded-by");
            let body: serde_json::Value = answer.json().await.unwrap();
            assert!(
                forwarded || (status == 503 && body["error"]["code"] == "not_active"),
                "the resumed old active answered from its own table: {status} {body}"
            );
        }
        let new_active = active_of(&others).await;
        // The old one is a standby now and names the new active.
        let found = roles(&[old]).await;
        assert_eq!(found[0].0, 503, "{found:?}");
        assert_eq!(found[0].1, "standby", "{found:?}");
        assert_eq!(found[0].2, others[new_active].base, "{found:?}");
        // The lease held before the pause is still there with its token, and renews.
        let listed = holders_of(&client, "paused/held").await;
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(
            (listed[0].0.as_str(), listed[0].1),
            (lease.owner.as_str(), lease.token)
        );
        client.renew(&lease.id, None).await.expect("renew");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_waiters_keep_their_places_across_a_failover() {
    let Some(url) = testing::available("queued_waiters_keep_their_places_across_a_failover").await
    else {
        return;
    };
    bounded(async {
        let schema = Schema::new(&url, "failover_queue");
        let mut servers = start_three(&schema).await;
        let all: Vec<&Server> = servers.iter().collect();
        let active = active_of(&all).await;
        let client = client_of(&all, RetryPolicy::default());
        let holder = acquire(&client, "queue/x", 30_000).await;
        // Three waiters queue in order through the active.
        let mut tickets = Vec::new();
        for index in 0..3 {
            let request = AcquireRequest {
                owner: format!("waiter-{index}"),
                ttl_ms: Some(30_000),
                queue: Some(true),
                wait_ms: Some(0),
                ..AcquireRequest::default()
            };
            match client.acquire("queue/x", &request).await {
                Ok(Acquired::Queued(ticket)) => tickets.push(ticket.id),
                other => panic!("waiter {index}: {other:?}"),
            }
        }
        servers[active].kill9().await;
        let live: Vec<&Server> = servers
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != active)
            .map(|(_, server)| server)
            .collect();
        let _ = active_of(&live).await;
        // The waiters come back and wait on their tickets; the holder releases.
        for ticket in &tickets {
            match client.wait_ticket(ticket, Duration::ZERO).await {
                Ok(Acquired::Queued(_)) => {}
                other => panic!("ticket {ticket} after the fail-over: {other:?}"),
            }
        }
        client.release(&holder.id).await.expect("release");
        let mut tokens = Vec::new();
        for (index, ticket) in tickets.iter().enumerate() {
            // Only the head is granted; the others are still queued.
            for later in &tickets[index + 1..] {
                match client.wait_ticket(later, Duration::ZERO).await {
                    Ok(Acquired::Queued(_)) => {}
                    other => panic!("ticket {later} jumped the queue: {other:?}"),
                }
            }
            let granted = match client.wait_ticket(ticket, Duration::from_secs(10)).await {
                Ok(Acquired::Granted(granted)) => granted,
                other => panic!("waiter {index} was not granted: {other:?}"),
            };
            assert_eq!(granted.lease.owner, format!("waiter-{index}"));
            tokens.push(granted.lease.token);
            client.release(&granted.lease.id).await.expect("release");
        }
        assert!(
            tokens.windows(2).all(|pair| pair[0] < pair[1]),
            "{tokens:?}"
        );
        assert!(
            tokens[0] > holder.token,
            "{tokens:?} after {}",
            holder.token
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_database_connections_cost_no_grant() {
    let Some(url) = testing::available("cut_database_connections_cost_no_grant").await else {
        return;
    };
    bounded(async {
        let schema = Schema::new(&url, "failover_cut");
        let mut servers = start_three(&schema).await;
        let all: Vec<&Server> = servers.iter().collect();
        let _ = active_of(&all).await;
        let client = client_of(&all, RetryPolicy::default());
        let lease = acquire(&client, "cut/held", 60_000).await;
        // Cut every connection of the test's servers: the leadership connections and the
        // active's store connections alike.
        let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let cut = db
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE pid <> pg_backend_pid() AND datname = current_database() \
                 AND (application_name = 'baton leadership' OR query ILIKE $1)",
                &[&format!("%{}%", schema.name)],
            )
            .await
            .unwrap();
        assert!(!cut.is_empty(), "no connection was cut");
        let once = client_of(&all, RetryPolicy::NONE);
        let took = first_grant_after(&once, Instant::now(), "after the connections were cut").await;
        assert!(took <= FAILOVER_BOUND, "{took:?}");
        let listed = holders_of(&client, "cut/held").await;
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(
            (listed[0].0.as_str(), listed[0].1),
            (lease.owner.as_str(), lease.token)
        );
        // A standby whose connections were cut still takes over when the active dies.
        let active = active_of(&all).await;
        servers[active].kill9().await;
        let took = first_grant_after(&once, Instant::now(), "after the kill").await;
        assert!(took <= FAILOVER_BOUND, "{took:?}");
        let listed = holders_of(&client, "cut/held").await;
        assert_eq!(listed.len(), 1, "{listed:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn baton_run_child_keeps_running_through_a_failover() {
    let Some(url) = testing::available("baton_run_child_keeps_running_through_a_failover").await
    else {
        return;
    };
    bounded(async {
        let schema = Schema::new(&url, "failover_run");
        let mut servers = start_three(&schema).await;
        let all: Vec<&Server> = servers.iter().collect();
        let active = active_of(&all).await;
        let urls: Vec<&str> = servers.iter().map(|server| server.base.as_str()).collect();
        let urls = urls.join(",");
        let dir = harness::workdir("failover-run");
        let marker = dir.path().join("done");
        let script = format!("sleep 6; echo finished > {}", marker.display());
        let run = servers[active].spawn_baton(
            &[
                "--url",
                &urls,
                "run",
                "failover/job",
                "--ttl",
                "20s",
                "--",
                "sh",
                "-c",
                &script,
            ],
            Some(dir.path()),
        );
        // The child is running under its lease.
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = client_of(&all, RetryPolicy::default());
        loop {
            if let Ok(info) = client.lock_info("failover/job").await
                && !info.holders.is_empty()
            {
                break;
            }
            assert!(Instant::now() < deadline, "the run never took its lease");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        servers[active].kill9().await;
        let exited = run.wait(Duration::from_secs(60)).await;
        harness::assert_code(&exited, 0, "baton run through a fail-over");
        let text = std::fs::read_to_string(&marker).expect("the child finished");
        assert_eq!(text.trim(), "finished");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_active_hands_over_at_once() {
    let Some(url) = testing::available("a_stopping_active_hands_over_at_once").await else {
        return;
    };
    bounded(async {
        let schema = Schema::new(&url, "failover_handover");
        // A long leadership lease: a hand-over that waited for it to run out would take 7.5 s
        // at least (it was renewed at most a quarter of it ago).
        let lease = Duration::from_secs(10);
        let first = start_pg_with(&schema, lease).await;
        let second = start_pg_with(&schema, lease).await;
        let servers = [&first, &second];
        assert_eq!(active_of(&servers).await, 0);
        let once = client_of(&[&second], RetryPolicy::NONE);
        let pid = Pid::from_raw(i32::try_from(first.pid().unwrap()).unwrap());
        let stopped = Instant::now();
        kill(pid, Signal::SIGTERM).unwrap();
        let took = first_grant_after(&once, stopped, "after SIGTERM of the active").await;
        assert!(
            took < Duration::from_secs(5),
            "the standby took over only after {took:?}: the stopping active did not resign"
        );
    })
    .await;
}
