//! API keys over real HTTP (`baton_server::run` on 127.0.0.1:0, in-memory store): every route
//! refuses a missing, wrong or out-of-scope key without changing anything; in-scope keys work;
//! listings are filtered by prefix and never show ids or secrets; revocation counts at once and
//! is audited; the rate limit answers 429 with `Retry-After`; the keys file and the listen rule.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on what it did not expect

use std::collections::BTreeSet;
use std::sync::Arc;

use baton_server::{ServerConfig, StoreKind};
use serde_json::{Value, json};

struct Server {
    base: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(configure: impl FnOnce(&mut ServerConfig)) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut config = ServerConfig::new(address, std::env::temp_dir());
    config.store = StoreKind::Memory;
    // Nothing may lapse or expire while a case compares state before and after.
    config.ticket_lapse_ms = 3_600_000;
    configure(&mut config);
    let store = baton_server::open_store(&config).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready, started) = tokio::sync::oneshot::channel::<Result<(), String>>();
    tokio::spawn(async move {
        let run = baton_server::run(listener, Arc::clone(&store), &config, async move {
            let _ = stopped.await;
        });
        let _ = ready.send(Ok(()));
        if let Err(error) = run.await {
            panic!("the server failed: {error:#}");
        }
    });
    started.await.unwrap().unwrap();
    Server {
        base: format!("http://{address}"),
        _stop: stop,
    }
}

struct Answer {
    status: u16,
    body: Value,
    text: String,
    retry_after: Option<String>,
}

async fn call(
    base: &str,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Answer {
    // reqwest is built without a default TLS provider (see ARCHITECTURE.md).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let mut request = client.request(method.parse().unwrap(), format!("{base}{path}"));
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
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().to_owned());
    // An event stream never ends by itself: its answer is the status and headers.
    let streaming = response
        .headers()
        .get("content-type")
        .is_some_and(|value| value.as_bytes() == b"text/event-stream");
    let text = if streaming {
        String::new()
    } else {
        response.text().await.unwrap()
    };
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
        retry_after,
    }
}

async fn ok(
    base: &str,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Value {
    let answer = call(base, key, method, path, body).await;
    assert!(
        (200..300).contains(&answer.status),
        "{method} {path}: {} {}",
        answer.status,
        answer.text
    );
    answer.body
}

async fn create_key(
    base: &str,
    admin: Option<&str>,
    name: &str,
    grants: &[&str],
    rate: Option<u32>,
) -> (String, String) {
    let mut body = json!({"name": name, "grants": grants});
    if let Some(rate) = rate {
        body["rate_per_sec"] = json!(rate);
    }
    let created = ok(base, admin, "POST", "/v1/keys", Some(&body)).await;
    (
        created["key"]["id"].as_str().unwrap().to_owned(),
        created["secret"].as_str().unwrap().to_owned(),
    )
}

/// Everything a refused call could change, read with an admin key.
async fn snapshot(base: &str, admin: &str) -> String {
    let mut text = String::new();
    for path in [
        "/v1/locks",
        "/v1/jobs?limit=1000",
        "/v1/keys",
        "/v1/audit",
        "/v1/locks/team-a%2Flock/history",
        "/v1/locks/team-a%2Fjob/history",
    ] {
        text.push_str(&ok(base, Some(admin), "GET", path, None).await.to_string());
        text.push('\n');
    }
    text
}

/// The world a case runs in: keys, and a lease, a queued ticket and a running job under
/// `team-a/`.
struct World {
    server: Server,
    admin: String,
    admin_id: String,
    team_a: String,
    team_a_reader: String,
    team_b: String,
    team_b_id: String,
    lease_id: String,
    lease_token: u64,
    ticket_id: String,
    job_id: String,
    job_lease_id: String,
}

async fn world() -> World {
    let server = start(|_| {}).await;
    let base = server.base.as_str();
    // No keys yet: the server is open (loopback), which is how the first admin key is made.
    let (admin_id, admin) = create_key(base, None, "ops", &["admin:"], None).await;
    assert_eq!(
        call(base, None, "GET", "/v1/locks", None).await.status,
        401,
        "keys are now in force"
    );
    let (_, team_a) = create_key(base, Some(&admin), "team a", &["acquire:team-a/"], None).await;
    let (_, team_a_reader) =
        create_key(base, Some(&admin), "team a reader", &["read:team-a/"], None).await;
    let (team_b_id, team_b) =
        create_key(base, Some(&admin), "team b", &["admin:team-b/"], None).await;
    let ttl = json!({"owner": "a1", "ttl_ms": 3_600_000});
    let lease = ok(
        base,
        Some(&team_a),
        "POST",
        "/v1/locks/team-a%2Flock/acquire",
        Some(&ttl),
    )
    .await;
    let queued = call(
        base,
        Some(&team_a),
        "POST",
        "/v1/locks/team-a%2Flock/acquire",
        Some(&json!({"owner": "a2", "ttl_ms": 3_600_000, "queue": true})),
    )
    .await;
    assert_eq!(queued.status, 202, "{}", queued.text);
    let job = ok(
        base,
        Some(&team_a),
        "POST",
        "/v1/jobs",
        Some(
            &json!({"name": "team-a/job", "owner": "a3", "command": ["true"], "ttl_ms": 3_600_000}),
        ),
    )
    .await;
    ok(
        base,
        Some(&team_b),
        "POST",
        "/v1/locks/team-b%2Flock/acquire",
        Some(&json!({"owner": "b1", "ttl_ms": 3_600_000})),
    )
    .await;
    World {
        admin_id,
        admin,
        team_a,
        team_a_reader,
        team_b,
        team_b_id,
        lease_id: lease["lease"]["id"].as_str().unwrap().to_owned(),
        lease_token: lease["lease"]["token"].as_u64().unwrap(),
        ticket_id: queued.body["ticket"]["id"].as_str().unwrap().to_owned(),
        job_id: job["job"]["id"].as_str().unwrap().to_owned(),
        job_lease_id: job["lease"]["id"].as_str().unwrap().to_owned(),
        server,
    }
}

/// One call per route, aimed at team-a's resources.
struct Route {
    method: &'static str,
    /// The path template as the OpenAPI document has it.
    template: &'static str,
    path: String,
    body: Option<Value>,
    /// What a key with no grant under team-a/ gets: 403 for routes naming a lock, 404 for
    /// routes naming an id (an id under another prefix is answered as unknown), 200 for
    /// listings (filtered).
    outsider: u16,
    /// What a key with read only under team-a/ gets.
    reader: u16,
}

fn routes(w: &World) -> Vec<Route> {
    let token = json!({"token": w.lease_token});
    let route = |method, template, path: String, body: Option<Value>, outsider, reader| Route {
        method,
        template,
        path,
        body,
        outsider,
        reader,
    };
    vec![
        route("GET", "/v1/locks", "/v1/locks".into(), None, 200, 200),
        route(
            "GET",
            "/v1/locks/{name}",
            "/v1/locks/team-a%2Flock".into(),
            None,
            403,
            200,
        ),
        route(
            "POST",
            "/v1/locks/{name}/acquire",
            "/v1/locks/team-a%2Flock/acquire".into(),
            Some(json!({"owner": "x", "queue": true})),
            403,
            403,
        ),
        route(
            "POST",
            "/v1/locksets/acquire",
            "/v1/locksets/acquire".into(),
            Some(json!({"locks": ["team-a/lock", "team-a/other"], "owner": "x", "queue": true})),
            403,
            403,
        ),
        route(
            "POST",
            "/v1/locks/{name}/revoke",
            "/v1/locks/team-a%2Flock/revoke".into(),
            Some(token.clone()),
            403,
            403,
        ),
        route(
            "POST",
            "/v1/locks/{name}/fence",
            "/v1/locks/team-a%2Flock/fence".into(),
            Some(json!({"token": w.lease_token + 100})),
            403,
            403,
        ),
        route(
            "GET",
            "/v1/locks/{name}/history",
            "/v1/locks/team-a%2Flock/history".into(),
            None,
            403,
            200,
        ),
        route(
            "POST",
            "/v1/tickets/{id}/wait",
            format!("/v1/tickets/{}/wait", w.ticket_id),
            Some(json!({})),
            404,
            403,
        ),
        route(
            "DELETE",
            "/v1/tickets/{id}",
            format!("/v1/tickets/{}", w.ticket_id),
            None,
            404,
            403,
        ),
        route(
            "POST",
            "/v1/leases/{id}/renew",
            format!("/v1/leases/{}/renew", w.lease_id),
            Some(json!({"ttl_ms": 600_000})),
            404,
            403,
        ),
        route(
            "POST",
            "/v1/leases/{id}/release",
            format!("/v1/leases/{}/release", w.lease_id),
            None,
            404,
            403,
        ),
        route(
            "POST",
            "/v1/jobs",
            "/v1/jobs".into(),
            Some(
                json!({"name": "team-a/job", "owner": "x", "command": ["true"], "policy": "replace"}),
            ),
            403,
            403,
        ),
        route("GET", "/v1/jobs", "/v1/jobs".into(), None, 200, 200),
        route(
            "GET",
            "/v1/jobs/{id}",
            format!("/v1/jobs/{}", w.job_id),
            None,
            404,
            200,
        ),
        route(
            "POST",
            "/v1/jobs/{id}/wait",
            format!("/v1/jobs/{}/wait", w.job_id),
            Some(json!({"ticket_id": format!("ticket_{}", "0".repeat(32))})),
            404,
            403,
        ),
        route(
            "POST",
            "/v1/jobs/{id}/heartbeat",
            format!("/v1/jobs/{}/heartbeat", w.job_id),
            Some(json!({"lease_id": w.job_lease_id, "ttl_ms": 600_000})),
            404,
            403,
        ),
        route(
            "POST",
            "/v1/jobs/{id}/finish",
            format!("/v1/jobs/{}/finish", w.job_id),
            Some(json!({"lease_id": w.job_lease_id, "state": "succeeded", "exit_code": 0})),
            404,
            403,
        ),
        route(
            "POST",
            "/v1/jobs/{id}/output",
            format!("/v1/jobs/{}/output", w.job_id),
            Some(json!({"lease_id": w.job_lease_id, "text": "sneaky\n"})),
            404,
            403,
        ),
        route(
            "POST",
            "/v1/jobs/{id}/cancel",
            format!("/v1/jobs/{}/cancel", w.job_id),
            None,
            404,
            403,
        ),
        route(
            "POST",
            "/v1/keys",
            "/v1/keys".into(),
            Some(json!({"name": "sneaky", "grants": ["admin:"]})),
            403,
            403,
        ),
        route("GET", "/v1/keys", "/v1/keys".into(), None, 403, 403),
        route(
            "DELETE",
            "/v1/keys/{id}",
            format!("/v1/keys/{}", w.admin_id),
            None,
            403,
            403,
        ),
        route("GET", "/v1/audit", "/v1/audit".into(), None, 403, 403),
        // Every key may follow the stream; it carries only what the key may read (see
        // crates/baton-cli/tests/events.rs).
        route("GET", "/v1/events", "/v1/events".into(), None, 200, 200),
        // Not in the OpenAPI document: needs a valid key, any role.
        route("GET", "/metrics", "/metrics".into(), None, 200, 200),
    ]
}

/// The table covers every route of the OpenAPI document, so a new route cannot go unchecked.
#[tokio::test]
async fn the_table_covers_every_documented_route() {
    let w = world().await;
    let base = w.server.base.as_str();
    let document = ok(base, None, "GET", "/v1/openapi.json", None).await;
    let open = ["/healthz", "/readyz"];
    let mut documented = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if !open.contains(&path.as_str()) {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let covered: BTreeSet<(String, String)> = routes(&w)
        .iter()
        .map(|route| (route.method.to_owned(), route.template.to_owned()))
        .collect();
    let missing: Vec<_> = documented.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "routes without an auth case: {missing:?}"
    );
    assert!(
        document["components"]["securitySchemes"]["api_key"].is_object(),
        "the document declares the bearer key"
    );
}

#[tokio::test]
async fn every_route_refuses_missing_wrong_and_out_of_scope_keys_without_changing_state() {
    let w = world().await;
    let base = w.server.base.as_str();
    let wrong = format!("baton_{}", "0".repeat(64));
    for route in routes(&w) {
        let what = format!("{} {}", route.method, route.path);
        let before = snapshot(base, &w.admin).await;
        for (label, key, expected) in [
            ("no key", None, 401),
            ("a wrong key", Some(wrong.as_str()), 401),
            ("a malformed header", Some(""), 401),
            ("team b's key", Some(w.team_b.as_str()), route.outsider),
            (
                "team a's reader",
                Some(w.team_a_reader.as_str()),
                route.reader,
            ),
        ] {
            let answer = call(base, key, route.method, &route.path, route.body.as_ref()).await;
            assert_eq!(
                answer.status, expected,
                "{what} with {label}: {}",
                answer.text
            );
            if expected >= 400 {
                assert!(
                    answer.body["error"]["code"].is_string(),
                    "{what} with {label}: an error body, got {}",
                    answer.text
                );
            }
            if expected == 401 {
                assert_eq!(
                    answer.body["error"]["code"], "unauthorized",
                    "{what} with {label}"
                );
            }
            if expected == 403 {
                assert_eq!(
                    answer.body["error"]["code"], "forbidden",
                    "{what} with {label}"
                );
            }
            assert_eq!(
                snapshot(base, &w.admin).await,
                before,
                "{what} with {label} changed the state"
            );
        }
    }
}

/// A lock set needs the acquire role on every one of its locks: a key with it on some of them
/// only is refused with 403 and nothing is held, queued or created.
#[tokio::test]
async fn a_lock_set_needs_acquire_on_every_lock() {
    let w = world().await;
    let base = w.server.base.as_str();
    let before = snapshot(base, &w.admin).await;
    let body = json!({"locks": ["team-a/set-1", "team-b/set-2"], "owner": "a", "queue": true});
    let answer = call(
        base,
        Some(&w.team_a),
        "POST",
        "/v1/locksets/acquire",
        Some(&body),
    )
    .await;
    assert_eq!(answer.status, 403, "{}", answer.text);
    assert_eq!(answer.body["error"]["code"], "forbidden");
    assert_eq!(
        snapshot(base, &w.admin).await,
        before,
        "a refused set changed the state"
    );
    // With the role on every lock, the set is granted whole.
    let body = json!({"locks": ["team-a/set-1", "team-a/set-2"], "owner": "a"});
    let granted = ok(
        base,
        Some(&w.team_a),
        "POST",
        "/v1/locksets/acquire",
        Some(&body),
    )
    .await;
    assert_eq!(granted["leases"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn in_scope_keys_work_and_listings_are_filtered_by_prefix() {
    let w = world().await;
    let base = w.server.base.as_str();
    // team b sees only team-b/ locks and no team-a jobs.
    let locks = ok(base, Some(&w.team_b), "GET", "/v1/locks", None).await;
    let names: Vec<&str> = locks["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|lock| lock["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["team-b/lock"]);
    let jobs = ok(base, Some(&w.team_b), "GET", "/v1/jobs", None).await;
    assert_eq!(jobs["jobs"], json!([]));
    // team a's reader sees team-a/ only, and reads one lock and a job.
    let locks = ok(base, Some(&w.team_a_reader), "GET", "/v1/locks", None).await;
    let names: Vec<&str> = locks["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|lock| lock["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["team-a/job", "team-a/lock"]);
    let jobs = ok(base, Some(&w.team_a_reader), "GET", "/v1/jobs", None).await;
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1);
    // The admin sees everything.
    let locks = ok(base, Some(&w.admin), "GET", "/v1/locks", None).await;
    assert_eq!(locks["locks"].as_array().unwrap().len(), 3);
    // team a acts on its own lease, ticket and job.
    ok(
        base,
        Some(&w.team_a),
        "POST",
        &format!("/v1/leases/{}/renew", w.lease_id),
        Some(&json!({})),
    )
    .await;
    ok(
        base,
        Some(&w.team_a),
        "POST",
        "/v1/locks/team-a%2Flock/fence",
        Some(&json!({"token": w.lease_token})),
    )
    .await;
    ok(
        base,
        Some(&w.team_a),
        "POST",
        &format!("/v1/jobs/{}/heartbeat", w.job_id),
        Some(&json!({"lease_id": w.job_lease_id})),
    )
    .await;
    ok(
        base,
        Some(&w.team_a),
        "POST",
        &format!("/v1/tickets/{}/wait", w.ticket_id),
        Some(&json!({})),
    )
    .await;
    let released = ok(
        base,
        Some(&w.team_a),
        "POST",
        &format!("/v1/leases/{}/release", w.lease_id),
        None,
    )
    .await;
    assert_eq!(released["released"], true);
    // team b administers team-b/ locks: it may revoke there, and that is audited.
    let token = ok(
        base,
        Some(&w.team_b),
        "GET",
        "/v1/locks/team-b%2Flock",
        None,
    )
    .await["holders"][0]["token"]
        .clone();
    ok(
        base,
        Some(&w.team_b),
        "POST",
        "/v1/locks/team-b%2Flock/revoke",
        Some(&json!({"token": token})),
    )
    .await;
    let audit = ok(base, Some(&w.admin), "GET", "/v1/audit", None).await;
    let newest = &audit["entries"][0];
    assert_eq!(
        (&newest["action"], &newest["actor"], &newest["target"]),
        (
            &json!("lease.revoke"),
            &json!(w.team_b_id),
            &json!("team-b/lock")
        )
    );
}

#[tokio::test]
async fn ids_and_secrets_never_appear_in_listings() {
    let w = world().await;
    let base = w.server.base.as_str();
    let mut listings = String::new();
    for path in [
        "/v1/locks",
        "/v1/locks/team-a%2Flock",
        "/v1/locks/team-a%2Flock/history",
        "/v1/jobs",
        &format!("/v1/jobs/{}", w.job_id),
        "/v1/keys",
        "/v1/audit",
    ] {
        listings.push_str(&call(base, Some(&w.admin), "GET", path, None).await.text);
    }
    let keys = ok(base, Some(&w.admin), "GET", "/v1/keys", None).await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 4);
    for secret in [
        &w.lease_id,
        &w.ticket_id,
        &w.job_lease_id,
        &w.admin,
        &w.team_a,
        &w.team_b,
    ] {
        assert!(
            !listings.contains(secret.as_str()),
            "{secret} is in a listing"
        );
    }
    for secret in [&w.admin, &w.team_a, &w.team_b] {
        let hash = baton_server::auth::hash_secret(secret);
        assert!(!listings.contains(&hash), "a key's hash is in a listing");
    }
    assert!(
        w.admin.starts_with("baton_") && w.admin.len() == 70,
        "32 random bytes in hex"
    );
}

#[tokio::test]
async fn a_revoked_key_is_refused_at_once_and_the_revocation_is_audited() {
    let w = world().await;
    let base = w.server.base.as_str();
    ok(base, Some(&w.team_b), "GET", "/v1/locks", None).await;
    let revoked = ok(
        base,
        Some(&w.admin),
        "DELETE",
        &format!("/v1/keys/{}", w.team_b_id),
        None,
    )
    .await;
    assert_eq!(revoked["revoked"], true);
    assert!(revoked["key"]["revoked_at"].is_string());
    let answer = call(base, Some(&w.team_b), "GET", "/v1/locks", None).await;
    assert_eq!(answer.status, 401, "{}", answer.text);
    let again = ok(
        base,
        Some(&w.admin),
        "DELETE",
        &format!("/v1/keys/{}", w.team_b_id),
        None,
    )
    .await;
    assert_eq!(again["revoked"], false);
    let unknown = call(
        base,
        Some(&w.admin),
        "DELETE",
        "/v1/keys/key_0123456789abcdef",
        None,
    )
    .await;
    assert_eq!(
        (unknown.status, &unknown.body["error"]["code"]),
        (404, &json!("key_not_found"))
    );
    let audit = ok(base, Some(&w.admin), "GET", "/v1/audit", None).await;
    let entries = audit["entries"].as_array().unwrap();
    let newest = &entries[0];
    assert_eq!(
        (&newest["action"], &newest["actor"], &newest["target"]),
        (
            &json!("key.revoke"),
            &json!(w.admin_id),
            &json!(w.team_b_id)
        )
    );
    // Key creations are audited too (the first one by `anonymous`, before keys existed).
    let creations: Vec<&Value> = entries
        .iter()
        .filter(|entry| entry["action"] == "key.create")
        .collect();
    assert_eq!(creations.len(), 4);
    assert_eq!(creations.last().unwrap()["actor"], "anonymous");
    // Paging goes older.
    let seq = newest["seq"].as_u64().unwrap();
    let older = ok(
        base,
        Some(&w.admin),
        "GET",
        &format!("/v1/audit?before={seq}&limit=1"),
        None,
    )
    .await;
    assert_eq!(older["entries"].as_array().unwrap().len(), 1);
    assert!(older["entries"][0]["seq"].as_u64().unwrap() < seq);
}

#[tokio::test]
async fn a_key_over_its_rate_is_answered_429_with_retry_after() {
    let w = world().await;
    let base = w.server.base.as_str();
    let (_, slow) = create_key(base, Some(&w.admin), "slow", &["read:"], Some(1)).await;
    let mut limited = None;
    for _ in 0..50 {
        let answer = call(base, Some(&slow), "GET", "/v1/locks", None).await;
        if answer.status == 429 {
            limited = Some(answer);
            break;
        }
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    let limited = limited.expect("50 requests at once exceed 1 per second");
    assert_eq!(limited.body["error"]["code"], "rate_limited");
    let seconds: u64 = limited.retry_after.expect("Retry-After").parse().unwrap();
    assert!(seconds >= 1);
    // Other keys are not affected.
    ok(base, Some(&w.admin), "GET", "/v1/locks", None).await;
}

#[tokio::test]
async fn bad_key_requests_are_refused() {
    let w = world().await;
    let base = w.server.base.as_str();
    for body in [
        json!({"name": "x", "grants": []}),
        json!({"name": "x", "grants": ["write:"]}),
        json!({"name": "x", "grants": ["read:bad prefix"]}),
        json!({"name": "", "grants": ["read:"]}),
        json!({"name": "x", "grants": ["read:"], "rate_per_sec": 0}),
        json!({"name": "x", "grants": ["read:"], "secret": "mine"}),
    ] {
        let answer = call(base, Some(&w.admin), "POST", "/v1/keys", Some(&body)).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.text);
    }
    let keys = ok(base, Some(&w.admin), "GET", "/v1/keys", None).await;
    assert_eq!(
        keys["keys"].as_array().unwrap().len(),
        4,
        "nothing was created"
    );
}

#[tokio::test]
async fn open_paths_need_no_key() {
    let w = world().await;
    let base = w.server.base.as_str();
    for path in ["/healthz", "/readyz", "/v1/openapi.json"] {
        assert_eq!(
            call(base, None, "GET", path, None).await.status,
            200,
            "{path}"
        );
    }
    let unknown = call(base, None, "GET", "/v1/nothing", None).await;
    assert_eq!(
        unknown.status, 401,
        "unknown paths reveal nothing without a key"
    );
}

/// The dashboard's files are open on a server with keys (a browser cannot send a key for the
/// page itself) and hold no data: what the page shows it reads from the keyed API. They are
/// not in the OpenAPI document (not API), so the route table above does not cover them.
#[tokio::test]
async fn the_dashboard_is_open_holds_no_data_and_forbids_inline_code() {
    let w = world().await;
    let base = w.server.base.as_str();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    for (path, content_type) in [
        ("/", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
        ("/dashboard/favicon.svg", "image/svg+xml"),
    ] {
        let response = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|value| value.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        assert!(header("content-type").starts_with(content_type), "{path}");
        let policy = header("content-security-policy");
        assert!(
            policy.contains("default-src 'none'") && policy.contains("script-src 'self'"),
            "{path}: {policy}"
        );
        assert!(!policy.contains("unsafe"), "{path}: {policy}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        let etag = header("etag");
        let text = response.text().await.unwrap();
        for secret in ["team-a/lock", "team-b/lock", &w.lease_id, &w.job_id] {
            assert!(!text.contains(secret), "{path} carries {secret}");
        }
        // Revalidation: the same file again is a 304.
        let again = client
            .get(format!("{base}{path}"))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status().as_u16(), 304, "{path}");
    }
    // Only those paths: anything else under /dashboard/ needs a key like every other path.
    let other = call(base, None, "GET", "/dashboard/other.js", None).await;
    assert_eq!(other.status, 401, "{}", other.text);
    // The document does not list them.
    let document = ok(base, None, "GET", "/v1/openapi.json", None).await;
    for path in ["/", "/dashboard/app.js"] {
        assert!(
            document["paths"].get(path).is_none(),
            "{path} is documented"
        );
    }
}

#[tokio::test]
async fn keys_from_a_file_authenticate_and_can_be_revoked() {
    let folder = tempfile::tempdir().unwrap();
    let secret = baton_server::auth::generate_secret().unwrap();
    let path = folder.path().join("keys.toml");
    std::fs::write(
        &path,
        format!(
            "# the first administrator\n[[key]]\nname = \"ops\"\nsecret_sha256 = \"{}\"\ngrants = [\"admin:\"]\n",
            baton_server::auth::hash_secret(&secret)
        ),
    )
    .unwrap();
    let keys_file = path.clone();
    let server = start(move |config| config.keys_file = Some(keys_file)).await;
    let base = server.base.as_str();
    assert_eq!(call(base, None, "GET", "/v1/locks", None).await.status, 401);
    let keys = ok(base, Some(&secret), "GET", "/v1/keys", None).await;
    assert_eq!(keys["keys"][0]["source"], "file");
    let (other_id, other) = create_key(base, Some(&secret), "other", &["admin:"], None).await;
    let file_id = keys["keys"][0]["id"].as_str().unwrap().to_owned();
    ok(
        base,
        Some(&other),
        "DELETE",
        &format!("/v1/keys/{file_id}"),
        None,
    )
    .await;
    assert_eq!(
        call(base, Some(&secret), "GET", "/v1/locks", None)
            .await
            .status,
        401
    );
    assert_eq!(
        call(base, Some(&other), "GET", "/v1/keys", None).await.body["keys"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let _ = other_id;
}

#[tokio::test]
async fn a_bad_keys_file_stops_the_server() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("keys.toml");
    std::fs::write(
        &path,
        "[[key]]\nname = \"ops\"\nsecret_sha256 = \"not hex\"\ngrants = [\"admin:\"]\n",
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = ServerConfig::new(listener.local_addr().unwrap(), std::env::temp_dir());
    config.store = StoreKind::Memory;
    config.keys_file = Some(path);
    let store = baton_server::open_store(&config).await.unwrap();
    let error = baton_server::run(listener, store, &config, async {})
        .await
        .unwrap_err();
    assert!(format!("{error:#}").contains("secret_sha256"), "{error:#}");
}

#[tokio::test]
async fn a_non_loopback_address_without_keys_is_refused() {
    let folder = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new("0.0.0.0:0".parse().unwrap(), folder.path().to_owned());
    config.store = StoreKind::Memory;
    let error = baton_server::serve(config, async {}).await.unwrap_err();
    assert!(
        format!("{error:#}").contains("refusing to listen"),
        "{error:#}"
    );
}

/// Two servers over one store (as two servers share a PostgreSQL database): a key made and then
/// revoked through one is accepted and then refused by the other after its next reload.
#[tokio::test]
async fn keys_made_or_revoked_through_another_server_count_after_a_reload() {
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), std::env::temp_dir());
    config.store = StoreKind::Memory;
    config.key_reload_ms = 20;
    let store = baton_server::open_store(&config).await.unwrap();
    let mut bases = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        bases.push(format!("http://{}", listener.local_addr().unwrap()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        let (store, config) = (Arc::clone(&store), config.clone());
        tokio::spawn(async move {
            let _ = baton_server::run(listener, store, &config, async move {
                let _ = stopped.await;
            })
            .await;
        });
    }
    let (a, b) = (bases[0].as_str(), bases[1].as_str());
    // Wait until both answer (they start asynchronously).
    for base in [a, b] {
        eventually(|| async { call(base, None, "GET", "/healthz", None).await.status == 200 })
            .await;
    }
    let (admin_id, admin) = create_key(a, None, "ops", &["admin:"], None).await;
    // b has no keys until it reloads: then it refuses requests without one, and takes a's key.
    eventually(|| async { call(b, None, "GET", "/v1/locks", None).await.status == 401 }).await;
    ok(b, Some(&admin), "GET", "/v1/locks", None).await;
    ok(
        a,
        Some(&admin),
        "DELETE",
        &format!("/v1/keys/{admin_id}"),
        None,
    )
    .await;
    eventually(|| async { call(b, Some(&admin), "GET", "/v1/locks", None).await.status == 401 })
        .await;
}

/// Polls `check` until it holds, failing after a generous bound (liveness, not speed).
async fn eventually<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the condition did not hold within 10 s");
}
