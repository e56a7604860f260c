//! `GET /v1/locks` for a key restricted to prefixes costs what the key can see (issue 11,
//! defect 8): over real HTTP on 127.0.0.1:0 with the in-memory engine holding many locks.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on what it did not expect

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_core::LockName;
use baton_server::{ServerConfig, StoreKind};
use baton_store::{AcquireArgs, Store};
use serde_json::{Value, json};

/// Locks the server holds besides the restricted key's.
const OTHER_LOCKS: usize = 20_000;

/// One client for every call: building one reads the system's certificates, which would cost
/// more than the listings measured.
fn client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    })
}

async fn call(base: &str, key: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = client();
    let url = format!("{base}{path}");
    let request = match body {
        Some(body) => client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string()),
        None => client.get(url),
    };
    let response = request
        .header("authorization", format!("Bearer {key}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn hold(store: &Arc<dyn Store>, name: &str) {
    store
        .acquire(AcquireArgs {
            mode: baton_core::Mode::Exclusive,
            value: None,
            quota: Default::default(),
            api_key: None,
            lock: LockName::new(name).unwrap(),
            owner: "filler".into(),
            owner_key: None,
            ttl_ms: 3_600_000,
            capacity: None,
            wait: Duration::ZERO,
            queue: false,
            request_id: None,
        })
        .await
        .unwrap();
}

fn names(list: &Value) -> Vec<String> {
    list["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|lock| lock["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Time for `rounds` listings of `path` by `key`.
async fn time_listings(base: &str, key: &str, path: &str, rounds: usize) -> Duration {
    let started = Instant::now();
    for _ in 0..rounds {
        let (status, _) = call(base, key, path, None).await;
        assert_eq!(status, 200);
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_keys_lock_listing_costs_what_it_can_see_not_what_the_server_holds() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut config = ServerConfig::new(address, std::env::temp_dir());
    config.store = StoreKind::Memory;
    config.key_rate_limit = 1_000_000;
    let store = baton_server::open_store(&config).await.unwrap();
    for n in 0..OTHER_LOCKS {
        hold(&store, &format!("team-b/lock-{n:05}")).await;
    }
    // Names just outside the prefix on both sides, and one equal to it.
    for name in [
        "team-a",
        "team-a.",
        "team-a0",
        "team-a/",
        "team-a/x",
        "team-a/y/z",
        "zz",
    ] {
        hold(&store, name).await;
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_store = Arc::clone(&store);
    let server = tokio::spawn(async move {
        baton_server::run(listener, server_store, &config, async move {
            let _ = stopped.await;
        })
        .await
    });
    let base = format!("http://{address}");
    let anonymous = |body: Value| {
        let base = base.clone();
        async move {
            let response = client()
                .post(format!("{base}/v1/keys"))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let created: Value = response.json().await.unwrap();
            created["secret"].as_str().unwrap().to_owned()
        }
    };
    let admin = anonymous(json!({"name": "admin", "grants": ["admin:"]})).await;
    let (status, created) = call(
        &base,
        &admin,
        "/v1/keys",
        Some(json!({"name": "team-a", "grants": ["acquire:team-a/", "read:team-a/y/"]})),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let team_a = created["secret"].as_str().unwrap().to_owned();
    let (status, created) = call(
        &base,
        &admin,
        "/v1/keys",
        Some(json!({"name": "nobody", "grants": ["read:nothing-here/"]})),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let nobody = created["secret"].as_str().unwrap().to_owned();

    // What each key sees, and paging through it.
    let (_, list) = call(&base, &team_a, "/v1/locks", None).await;
    assert_eq!(names(&list), ["team-a/", "team-a/x", "team-a/y/z"]);
    let (_, list) = call(&base, &team_a, "/v1/locks?limit=1&after=team-a/", None).await;
    assert_eq!(names(&list), ["team-a/x"]);
    let (_, list) = call(&base, &team_a, "/v1/locks?after=team-a", None).await;
    assert_eq!(names(&list), ["team-a/", "team-a/x", "team-a/y/z"]);
    let (_, list) = call(&base, &nobody, "/v1/locks", None).await;
    assert_eq!(names(&list), Vec::<String>::new());

    // The cost: a key that sees nothing lists far faster than one page of what the server
    // holds is read. Before, it paged through all 20,000 locks on every call.
    let rounds = 20;
    let full_page = time_listings(&base, &admin, "/v1/locks?limit=1000", rounds).await;
    let nothing = time_listings(&base, &nobody, "/v1/locks", rounds).await;
    println!(
        "{rounds} listings: one page of 1,000 locks {full_page:?}; a key that sees nothing {nothing:?}"
    );
    assert!(
        nothing < full_page,
        "a key that sees nothing took {nothing:?} for {rounds} listings, more than reading \
         1,000 locks each time ({full_page:?}): it scans what it cannot see"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
