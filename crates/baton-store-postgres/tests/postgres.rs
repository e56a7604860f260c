//! What only the PostgreSQL store has: several stores (servers) on one schema, the database's
//! clock, wake-ups through LISTEN/NOTIFY and its safety net, shared expiry, and the fencing epoch
//! that moves tokens ahead after a fail-over. On a real PostgreSQL; each test uses its own schema
//! and drops it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use baton_core::{LeaseEnd, LockName};
use baton_store::{AcquireArgs, AcquireOutcome, Store};
use baton_store_postgres::schema::EPOCH_GAP;
use baton_store_postgres::{PgOptions, PostgresStore, testing};

/// Drops the test's schema however the test ends.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn new(url: &str, key: &str) -> Schema {
        let name = testing::schema_for(key);
        testing::drop_schema(url, &name);
        Schema {
            url: url.to_owned(),
            name,
        }
    }

    async fn open(&self) -> PostgresStore {
        let options = PgOptions {
            schema: self.name.clone(),
            pool_size: 4,
            ..PgOptions::new(self.url.clone())
        };
        PostgresStore::open(options).await.expect("open the store")
    }

    async fn sql(&self, statement: &str) {
        let url = format!(
            "{} options=-csearch_path={}",
            key_value(&self.url),
            self.name
        );
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        let driver = tokio::spawn(connection);
        client.batch_execute(statement).await.expect(statement);
        drop(client);
        let _ = driver.await;
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        testing::drop_schema(&self.url, &self.name);
    }
}

/// The URL as key=value pairs, so an `options` pair can be appended.
fn key_value(url: &str) -> String {
    let config: tokio_postgres::Config = url.parse().expect("a valid URL");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "host={host} port={port} user={} dbname={}",
        config.get_user().unwrap_or("postgres"),
        config.get_dbname().unwrap_or("test")
    )
}

fn args(lock: &str, owner: &str, ttl_ms: u64, wait: Duration) -> AcquireArgs {
    AcquireArgs {
        quota: Default::default(),
        api_key: None,
        lock: LockName::new(lock).unwrap(),
        owner: owner.into(),
        owner_key: None,
        ttl_ms,
        capacity: None,
        wait,
        queue: false,
        request_id: None,
    }
}

async fn grant(store: &PostgresStore, lock: &str, owner: &str) -> baton_core::Lease {
    match store
        .acquire(args(lock, owner, 30_000, Duration::ZERO))
        .await
    {
        Ok(AcquireOutcome::Granted(lease)) => lease,
        other => panic!("expected a grant of {lock}, got {other:?}"),
    }
}

/// A promoted standby runs on a new timeline. Simulated by recording an older timeline than the
/// database's: the next store to connect must move tokens ahead by the epoch gap, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_jump_ahead_after_a_new_timeline() {
    let Some(url) = testing::available("postgres tokens_jump_ahead_after_a_new_timeline").await
    else {
        return;
    };
    let schema = Schema::new(&url, "epoch");
    let store = schema.open().await;
    let before = grant(&store, "epoch", "a").await;
    store.release(before.id).await.unwrap();
    drop(store);

    // Reopening on the same timeline changes nothing.
    let store = schema.open().await;
    let same = grant(&store, "epoch", "b").await;
    assert!(
        same.token > before.token && same.token < before.token + EPOCH_GAP as u64,
        "no jump without a new timeline: {} then {}",
        before.token,
        same.token
    );
    store.release(same.id).await.unwrap();
    drop(store);

    schema
        .sql("UPDATE meta SET value = value - 1 WHERE key = 'timeline'")
        .await;
    let store = schema.open().await;
    let after = grant(&store, "epoch", "c").await;
    assert!(
        after.token >= same.token + EPOCH_GAP as u64,
        "after a new timeline tokens jump ahead by the epoch gap: {} then {}",
        same.token,
        after.token
    );
    drop(store);
    // Only once: a second store on the same (new) timeline does not jump again.
    let store = schema.open().await;
    store.release(after.id).await.unwrap();
    let again = grant(&store, "epoch", "d").await;
    assert!(
        again.token > after.token && again.token < after.token + EPOCH_GAP as u64,
        "one jump per timeline: {} then {}",
        after.token,
        again.token
    );
}

/// A waiter parked on one store is granted when a lease held through another store is released,
/// also after the waiting store's listening connection was cut (the re-check safety net).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_another_store_are_woken_even_after_the_listener_drops() {
    let Some(url) = testing::available(
        "postgres waiters_on_another_store_are_woken_even_after_the_listener_drops",
    )
    .await
    else {
        return;
    };
    let schema = Schema::new(&url, "wake");
    let a = schema.open().await;
    let b = std::sync::Arc::new(schema.open().await);
    for round in 0..2 {
        let held = grant(&a, "wake", "holder").await;
        let waiter = {
            let b = std::sync::Arc::clone(&b);
            tokio::spawn(async move {
                b.acquire(args("wake", "waiter", 30_000, Duration::from_secs(60)))
                    .await
            })
        };
        // Wait until the waiter is queued.
        let mut queued = false;
        for _ in 0..200 {
            if a.lock(LockName::new("wake").unwrap())
                .await
                .unwrap()
                .is_some_and(|view| view.waiters.len() == 1)
            {
                queued = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(queued, "the waiter never queued");
        if round == 1 {
            // Cut every listening connection: notifications sent meanwhile are lost.
            schema
                .sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()",
                )
                .await;
        }
        a.release(held.id).await.unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("the waiter was never granted")
            .unwrap()
            .unwrap();
        let AcquireOutcome::Granted(lease) = outcome else {
            panic!("round {round}: expected a grant, got {outcome:?}");
        };
        assert!(lease.token > held.token);
        b.release(lease.id).await.unwrap();
        // A waiter that was granted leaves no wake-up registered behind.
        assert_eq!(
            b.parked_tickets(),
            0,
            "round {round}: a wake-up was left behind"
        );
    }
    // Nor does one whose wait runs out.
    let held = grant(&a, "wake", "holder").await;
    let outcome = b
        .acquire(args(
            "wake",
            "impatient",
            30_000,
            Duration::from_millis(300),
        ))
        .await
        .unwrap();
    assert!(matches!(outcome, AcquireOutcome::Busy(_)), "{outcome:?}");
    assert_eq!(
        b.parked_tickets(),
        0,
        "a wake-up was left behind by a wait that ran out"
    );
    a.release(held.id).await.unwrap();
}

/// Two stores both run expiry timers: every expired lease ends once, by one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_expire_each_lease_once() {
    let Some(url) = testing::available("postgres two_stores_expire_each_lease_once").await else {
        return;
    };
    let schema = Schema::new(&url, "expiry");
    let a = schema.open().await;
    let b = schema.open().await;
    let locks: Vec<String> = (0..20).map(|i| format!("expiry-{i}")).collect();
    for (i, lock) in locks.iter().enumerate() {
        let store = if i % 2 == 0 { &a } else { &b };
        match store
            .acquire(args(lock, "short", 1_000, Duration::ZERO))
            .await
            .unwrap()
        {
            AcquireOutcome::Granted(_) => {}
            other => panic!("expected a grant, got {other:?}"),
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, leases, _) = a.counts().await;
        if leases == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{leases} leases never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for lock in &locks {
        let history = a.history(LockName::new(lock).unwrap(), 10).await.unwrap();
        assert_eq!(history.len(), 1, "{lock}: one end per lease: {history:?}");
        assert_eq!(history[0].end, LeaseEnd::Expired, "{lock}");
        assert!(
            history[0].ended_at >= history[0].granted_at + 1_000,
            "{lock} ended before its expiry: {:?}",
            history[0]
        );
    }
}
