#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Teams sharing one server (issue 11): a key granted `acquire:team-a/` must not be able to
//! touch, block or starve team-b. Each test runs a real `baton server` process (SQLite, and
//! PostgreSQL where the store's behaviour differs), makes keys for two teams and an attacker,
//! and checks that what team-a does cannot change team-b's outcomes.

mod harness;

use std::time::Duration;

use baton_store_postgres::testing;
use harness::{Server, lock_path};
use serde_json::{Value, json};

/// No test here may take longer than this; a hang fails instead of stalling the run.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A PostgreSQL schema of the test's own, dropped at the end (declared before the server).
struct Schema {
    url: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        testing::drop_schema(&self.url, &self.name);
    }
}

/// A server with an administrator key and a key per team.
struct Tenants {
    server: Server,
    admin: String,
    /// `acquire:team-a/`: the attacker.
    team_a: String,
    /// `acquire:team-b/`: the victim.
    team_b: String,
    _schema: Option<Schema>,
}

/// Which store the server keeps its state in.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Tenants {
    /// Starts a server on `backend` (`None` when PostgreSQL is wanted and not available) and
    /// makes the keys: the first through the keyless server, which turns keys on.
    async fn start(test: &str, backend: Backend, extra: &[&str]) -> Option<Tenants> {
        let (server, schema) = match backend {
            Backend::Sqlite => (Server::start(extra).await, None),
            Backend::Postgres => {
                let url = testing::available(test).await?;
                let name = testing::schema_for(test);
                testing::drop_schema(&url, &name);
                let schema = Schema { url, name };
                let mut args = vec![
                    "--database",
                    schema.url.as_str(),
                    "--database-schema",
                    schema.name.as_str(),
                ];
                args.extend_from_slice(extra);
                (Server::start(&args).await, Some(schema))
            }
        };
        let admin = create_key(&server, None, "admin", &["admin:"]).await;
        let team_a = create_key(&server, Some(&admin), "team-a", &["acquire:team-a/"]).await;
        let team_b = create_key(&server, Some(&admin), "team-b", &["acquire:team-b/"]).await;
        Some(Tenants {
            server,
            admin,
            team_a,
            team_b,
            _schema: schema,
        })
    }
}

/// Makes a key and returns its secret.
async fn create_key(server: &Server, admin: Option<&str>, name: &str, grants: &[&str]) -> String {
    let (status, body) = call(
        server,
        admin,
        "POST",
        "/v1/keys",
        Some(&json!({"name": name, "grants": grants})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["secret"].as_str().unwrap().to_owned()
}

/// One request with a key (or none); the answer's status and JSON body (`null` if not JSON).
async fn call(
    server: &Server,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
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
    let response = request
        .send()
        .await
        .unwrap_or_else(|error| panic!("{method} {path}: {error}\n{}", server.log_text()));
    let status = response.status().as_u16();
    let streaming = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/event-stream"));
    if streaming {
        // An event stream never ends: what it sends within half a second is its answer
        // (checked, as text, for anything of team-b's).
        let mut response = response;
        let mut text = Vec::new();
        let read = async {
            while let Ok(Some(chunk)) = response.chunk().await {
                text.extend_from_slice(&chunk);
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), read).await;
        return (
            status,
            Value::String(String::from_utf8_lossy(&text).into_owned()),
        );
    }
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Creates a job and checks it was accepted; returns the answer.
async fn create_job(server: &Server, key: &str, body: Value) -> Value {
    let (status, answer) = call(server, Some(key), "POST", "/v1/jobs", Some(&body)).await;
    assert_eq!(status, 200, "{body} -> {answer}");
    answer
}

/// Finishes a running job as succeeded.
async fn finish_job(server: &Server, key: &str, created: &Value) {
    let id = created["job"]["id"].as_str().unwrap();
    let lease = created["lease"]["id"].as_str().unwrap();
    let (status, answer) = call(
        server,
        Some(key),
        "POST",
        &format!("/v1/jobs/{id}/finish"),
        Some(&json!({"lease_id": lease, "state": "succeeded", "exit_code": 0})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}

async fn once_per_slots_are_the_locks_and_the_periods_own(backend: Backend) {
    let test = format!("tenants_once_per_{backend:?}").to_lowercase();
    let Some(t) = Tenants::start(&test, backend, &[]).await else {
        return;
    };
    let server = &t.server;
    // team-a names its job after team-b's, on a lock of its own, and finishes it.
    let decoy = create_job(
        server,
        &t.team_a,
        json!({"name": "team-b/nightly", "lock": "team-a/decoy", "owner": "a",
               "once_per_ms": 1000}),
    )
    .await;
    assert_eq!(decoy["job"]["state"], "running", "{decoy}");
    finish_job(server, &t.team_a, &decoy).await;
    // team-b's daily run is not skipped because of it.
    let nightly = create_job(
        server,
        &t.team_b,
        json!({"name": "team-b/nightly", "owner": "b", "once_per_ms": 86_400_000,
               "policy": "skip"}),
    )
    .await;
    assert_eq!(
        nightly["job"]["state"], "running",
        "team-a's job took team-b's once-per slot: {nightly}"
    );
    finish_job(server, &t.team_b, &nightly).await;
    // Within one team, a slot of one period does not block a slot of another.
    let hourly = create_job(
        server,
        &t.team_b,
        json!({"name": "team-b/report", "owner": "b", "once_per_ms": 1000}),
    )
    .await;
    assert_eq!(hourly["job"]["state"], "running", "{hourly}");
    finish_job(server, &t.team_b, &hourly).await;
    let daily = create_job(
        server,
        &t.team_b,
        json!({"name": "team-b/report", "owner": "b", "once_per_ms": 86_400_000}),
    )
    .await;
    assert_eq!(
        daily["job"]["state"], "running",
        "a slot of another period blocked the run: {daily}"
    );
    finish_job(server, &t.team_b, &daily).await;
    // The same lock, name and period still runs once per slot.
    let again = create_job(
        server,
        &t.team_b,
        json!({"name": "team-b/report", "owner": "b", "once_per_ms": 86_400_000}),
    )
    .await;
    assert_eq!(again["job"]["state"], "skipped", "{again}");
}

#[tokio::test]
async fn a_job_named_after_another_teams_does_not_take_its_once_per_slot_sqlite() {
    tokio::time::timeout(
        TEST_TIMEOUT,
        once_per_slots_are_the_locks_and_the_periods_own(Backend::Sqlite),
    )
    .await
    .expect("the test timed out");
}

#[tokio::test]
async fn a_job_named_after_another_teams_does_not_take_its_once_per_slot_postgres() {
    tokio::time::timeout(
        TEST_TIMEOUT,
        once_per_slots_are_the_locks_and_the_periods_own(Backend::Postgres),
    )
    .await
    .expect("the test timed out");
}

async fn request_ids_are_the_keys_own(backend: Backend) {
    let test = format!("tenants_request_ids_{backend:?}").to_lowercase();
    let Some(t) = Tenants::start(&test, backend, &[]).await else {
        return;
    };
    let server = &t.server;
    let acquire = |key: &str, lock: &str, request_id: &str| {
        let key = key.to_owned();
        let path = lock_path(lock, "/acquire");
        let body = json!({"owner": "o", "request_id": request_id, "ttl_ms": 60_000});
        async move { call(server, Some(&key), "POST", &path, Some(&body)).await }
    };
    let (status, deploy) = acquire(&t.team_b, "team-b/deploy", "nightly-2026-12-02").await;
    assert_eq!(status, 200, "{deploy}");
    // team-a's own request with the same id is its own request: granted, and it learns nothing.
    let (status, answer) = acquire(&t.team_a, "team-a/build", "nightly-2026-12-02").await;
    assert_eq!(
        status, 200,
        "team-a could not use an id team-b used: {answer}"
    );
    assert!(!answer.to_string().contains("team-b"), "{answer}");
    assert_ne!(answer["lease"]["id"], deploy["lease"]["id"]);
    // Jobs too.
    let (status, job_b) = call(
        server,
        Some(&t.team_b),
        "POST",
        "/v1/jobs",
        Some(&json!({"name": "team-b/backup", "owner": "b", "request_id": "backup-1"})),
    )
    .await;
    assert_eq!(status, 200, "{job_b}");
    let (status, job_a) = call(
        server,
        Some(&t.team_a),
        "POST",
        "/v1/jobs",
        Some(&json!({"name": "team-a/backup", "owner": "a", "request_id": "backup-1"})),
    )
    .await;
    assert_eq!(status, 200, "{job_a}");
    assert_ne!(job_a["job"]["id"], job_b["job"]["id"]);
    assert!(!job_a.to_string().contains("team-b"), "{job_a}");
    // Within one key, a retry still returns the same lease, and a conflict still refuses.
    let (status, retry) = acquire(&t.team_b, "team-b/deploy", "nightly-2026-12-02").await;
    assert_eq!(status, 200, "{retry}");
    assert_eq!(retry["lease"]["id"], deploy["lease"]["id"]);
    let (status, conflict) = acquire(&t.team_b, "team-b/other", "nightly-2026-12-02").await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["error"]["code"], "request_id_conflict");
    // team-b's lease is untouched, held by team-b alone.
    let (status, view) = call(
        server,
        Some(&t.admin),
        "GET",
        &lock_path("team-b/deploy", ""),
        None,
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["holders"].as_array().map(Vec::len), Some(1), "{view}");
}

#[tokio::test]
async fn a_request_id_of_another_team_is_neither_squatted_nor_leaked_sqlite() {
    tokio::time::timeout(TEST_TIMEOUT, request_ids_are_the_keys_own(Backend::Sqlite))
        .await
        .expect("the test timed out");
}

#[tokio::test]
async fn a_request_id_of_another_team_is_neither_squatted_nor_leaked_postgres() {
    tokio::time::timeout(
        TEST_TIMEOUT,
        request_ids_are_the_keys_own(Backend::Postgres),
    )
    .await
    .expect("the test timed out");
}

async fn listings_show_only_the_keys_prefixes(backend: Backend) {
    let test = format!("tenants_listing_{backend:?}").to_lowercase();
    let Some(t) = Tenants::start(&test, backend, &[]).await else {
        return;
    };
    let server = &t.server;
    for (key, lock) in [
        (&t.team_a, "team-a/x"),
        (&t.team_a, "team-a/y"),
        (&t.team_b, "team-b/x"),
        (&t.admin, "team-a"),
        (&t.admin, "team-a0"),
        (&t.admin, "team-a."),
    ] {
        let (status, answer) = call(
            server,
            Some(key),
            "POST",
            &lock_path(lock, "/acquire"),
            Some(&json!({"owner": "o", "ttl_ms": 60_000})),
        )
        .await;
        assert_eq!(status, 200, "{lock}: {answer}");
    }
    let names = |list: &Value| -> Vec<String> {
        list["locks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|lock| lock["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, list) = call(server, Some(&t.team_a), "GET", "/v1/locks", None).await;
    assert_eq!(names(&list), ["team-a/x", "team-a/y"], "{list}");
    let (_, list) = call(
        server,
        Some(&t.team_a),
        "GET",
        "/v1/locks?after=team-a/x",
        None,
    )
    .await;
    assert_eq!(names(&list), ["team-a/y"], "{list}");
    let (_, list) = call(server, Some(&t.team_b), "GET", "/v1/locks", None).await;
    assert_eq!(names(&list), ["team-b/x"], "{list}");
    let (_, list) = call(server, Some(&t.admin), "GET", "/v1/locks", None).await;
    assert_eq!(names(&list).len(), 6, "{list}");
}

#[tokio::test]
async fn a_restricted_keys_listing_reads_only_its_prefixes_sqlite() {
    tokio::time::timeout(
        TEST_TIMEOUT,
        listings_show_only_the_keys_prefixes(Backend::Sqlite),
    )
    .await
    .expect("the test timed out");
}

#[tokio::test]
async fn a_restricted_keys_listing_reads_only_its_prefixes_postgres() {
    tokio::time::timeout(
        TEST_TIMEOUT,
        listings_show_only_the_keys_prefixes(Backend::Postgres),
    )
    .await
    .expect("the test timed out");
}

// ----- the standing suite: every route, four callers, team-b's state unchanged --------------

/// team-b's resources that the cases aim at, and the callers that aim at them.
struct Victim {
    /// `read:team-b/`.
    reader: String,
    /// Was `admin:team-b/`, revoked.
    revoked: String,
    /// The key id of team-b's key (a target for `DELETE /v1/keys/{id}`).
    team_b_id: String,
    lease_id: String,
    lease_token: u64,
    ticket_id: String,
    job_id: String,
    job_lease_id: String,
}

/// The key id of a secret, from the admin's listing.
async fn key_id(t: &Tenants, name: &str) -> String {
    let (status, keys) = call(&t.server, Some(&t.admin), "GET", "/v1/keys", None).await;
    assert_eq!(status, 200, "{keys}");
    keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["name"] == name)
        .and_then(|key| key["id"].as_str())
        .unwrap_or_else(|| panic!("no key named {name}: {keys}"))
        .to_owned()
}

/// Gives team-b a lease (with a request id), a queued ticket and a running job, plus a
/// read-only key and a revoked one.
async fn victim(t: &Tenants) -> Victim {
    let server = &t.server;
    let reader = create_key(server, Some(&t.admin), "team-b reader", &["read:team-b/"]).await;
    let revoked = create_key(server, Some(&t.admin), "team-b ops", &["admin:team-b/"]).await;
    let revoked_id = key_id(t, "team-b ops").await;
    let (status, answer) = call(
        server,
        Some(&t.admin),
        "DELETE",
        &format!("/v1/keys/{revoked_id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, lease) = call(
        server,
        Some(&t.team_b),
        "POST",
        &lock_path("team-b/deploy", "/acquire"),
        Some(&json!({"owner": "b1", "ttl_ms": 3_600_000, "request_id": "nightly"})),
    )
    .await;
    assert_eq!(status, 200, "{lease}");
    let (status, queued) = call(
        server,
        Some(&t.team_b),
        "POST",
        &lock_path("team-b/deploy", "/acquire"),
        Some(&json!({"owner": "b2", "ttl_ms": 3_600_000, "queue": true})),
    )
    .await;
    assert_eq!(status, 202, "{queued}");
    let job = create_job(
        server,
        &t.team_b,
        json!({"name": "team-b/backup", "owner": "b3", "command": ["true"],
               "ttl_ms": 3_600_000}),
    )
    .await;
    Victim {
        reader,
        revoked,
        team_b_id: key_id(t, "team-b").await,
        lease_id: lease["lease"]["id"].as_str().unwrap().to_owned(),
        lease_token: lease["lease"]["token"].as_u64().unwrap(),
        ticket_id: queued["ticket"]["id"].as_str().unwrap().to_owned(),
        job_id: job["job"]["id"].as_str().unwrap().to_owned(),
        job_lease_id: job["lease"]["id"].as_str().unwrap().to_owned(),
    }
}

/// Everything of team-b's a call could change, read with the admin key.
async fn team_b_state(t: &Tenants) -> String {
    let mut text = String::new();
    for path in [
        lock_path("team-b/deploy", ""),
        lock_path("team-b/backup", ""),
        lock_path("team-b/deploy", "/history"),
        lock_path("team-b/backup", "/history"),
        "/v1/keys".to_owned(),
    ] {
        let (status, body) = call(&t.server, Some(&t.admin), "GET", &path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        text.push_str(&body.to_string());
        text.push('\n');
    }
    let (status, locks) = call(&t.server, Some(&t.admin), "GET", "/v1/locks", None).await;
    assert_eq!(status, 200, "{locks}");
    for lock in locks["locks"].as_array().unwrap() {
        if lock["name"].as_str().unwrap().starts_with("team-b/") {
            text.push_str(&lock.to_string());
        }
    }
    let (status, jobs) = call(
        &t.server,
        Some(&t.admin),
        "GET",
        "/v1/jobs?limit=1000",
        None,
    )
    .await;
    assert_eq!(status, 200, "{jobs}");
    for job in jobs["jobs"].as_array().unwrap() {
        if job["lock"].as_str().unwrap().starts_with("team-b/") {
            text.push_str(&job.to_string());
        }
    }
    text
}

/// One call per route, aimed at team-b.
struct Case {
    method: &'static str,
    /// The path template as the OpenAPI document has it.
    template: &'static str,
    path: String,
    body: Option<Value>,
    /// What the attacker (`acquire:team-a/`) gets: 403 for a lock of team-b's, 404 for an id
    /// of team-b's (an id under a prefix the key cannot read is answered as unknown), 200 for
    /// listings (filtered) and open paths.
    attacker: u16,
    /// What team-b's read-only key gets.
    reader: u16,
    /// Answered without a key (health, readiness, the document).
    open: bool,
}

fn cases(t: &Tenants, v: &Victim) -> Vec<Case> {
    let _ = t;
    let case = |method, template, path: String, body: Option<Value>, attacker, reader| Case {
        method,
        template,
        path,
        body,
        attacker,
        reader,
        open: false,
    };
    let open = |template: &'static str| Case {
        method: "GET",
        template,
        path: template.to_owned(),
        body: None,
        attacker: 200,
        reader: 200,
        open: true,
    };
    let deploy = |suffix: &str| lock_path("team-b/deploy", suffix);
    vec![
        case("GET", "/v1/locks", "/v1/locks".into(), None, 200, 200),
        // The event stream answers every key with what it may read: nothing of team-b's for
        // the attacker, even when it asks for team-b's prefix.
        case(
            "GET",
            "/v1/events",
            "/v1/events?prefix=team-b/".into(),
            None,
            200,
            200,
        ),
        case("GET", "/v1/locks/{name}", deploy(""), None, 403, 200),
        case(
            "POST",
            "/v1/locks/{name}/acquire",
            deploy("/acquire"),
            Some(json!({"owner": "x", "queue": true, "request_id": "nightly"})),
            403,
            403,
        ),
        // A lock set needs the acquire role on every lock: the attacker's own lock beside
        // team-b's is refused whole, and nothing of it is held, queued or created.
        case(
            "POST",
            "/v1/locksets/acquire",
            "/v1/locksets/acquire".into(),
            Some(json!({
                "locks": ["team-a/mine", "team-b/deploy"],
                "owner": "x",
                "queue": true,
                "request_id": "nightly"
            })),
            403,
            403,
        ),
        case(
            "POST",
            "/v1/locks/{name}/revoke",
            deploy("/revoke"),
            Some(json!({"token": v.lease_token})),
            403,
            403,
        ),
        case(
            "POST",
            "/v1/locks/{name}/fence",
            deploy("/fence"),
            Some(json!({"token": v.lease_token + 100})),
            403,
            403,
        ),
        case(
            "GET",
            "/v1/locks/{name}/history",
            deploy("/history"),
            None,
            403,
            200,
        ),
        case(
            "POST",
            "/v1/tickets/{id}/wait",
            format!("/v1/tickets/{}/wait", v.ticket_id),
            Some(json!({})),
            404,
            403,
        ),
        case(
            "DELETE",
            "/v1/tickets/{id}",
            format!("/v1/tickets/{}", v.ticket_id),
            None,
            404,
            403,
        ),
        case(
            "POST",
            "/v1/leases/{id}/renew",
            format!("/v1/leases/{}/renew", v.lease_id),
            Some(json!({"ttl_ms": 600_000})),
            404,
            403,
        ),
        case(
            "POST",
            "/v1/leases/{id}/release",
            format!("/v1/leases/{}/release", v.lease_id),
            None,
            404,
            403,
        ),
        case(
            "POST",
            "/v1/jobs",
            "/v1/jobs".into(),
            Some(
                json!({"name": "team-b/backup", "owner": "x", "command": ["true"],
                        "policy": "replace", "request_id": "nightly"}),
            ),
            403,
            403,
        ),
        case("GET", "/v1/jobs", "/v1/jobs".into(), None, 200, 200),
        case(
            "GET",
            "/v1/jobs/{id}",
            format!("/v1/jobs/{}", v.job_id),
            None,
            404,
            200,
        ),
        case(
            "POST",
            "/v1/jobs/{id}/wait",
            format!("/v1/jobs/{}/wait", v.job_id),
            Some(json!({"ticket_id": v.ticket_id})),
            404,
            403,
        ),
        case(
            "POST",
            "/v1/jobs/{id}/heartbeat",
            format!("/v1/jobs/{}/heartbeat", v.job_id),
            Some(json!({"lease_id": v.job_lease_id, "ttl_ms": 600_000})),
            404,
            403,
        ),
        case(
            "POST",
            "/v1/jobs/{id}/finish",
            format!("/v1/jobs/{}/finish", v.job_id),
            Some(json!({"lease_id": v.job_lease_id, "state": "failed", "exit_code": 1})),
            404,
            403,
        ),
        case(
            "POST",
            "/v1/jobs/{id}/output",
            format!("/v1/jobs/{}/output", v.job_id),
            Some(json!({"lease_id": v.job_lease_id, "text": "forged\n"})),
            404,
            403,
        ),
        case(
            "POST",
            "/v1/jobs/{id}/cancel",
            format!("/v1/jobs/{}/cancel", v.job_id),
            None,
            404,
            403,
        ),
        case(
            "POST",
            "/v1/keys",
            "/v1/keys".into(),
            Some(json!({"name": "sneaky", "grants": ["admin:team-b/"]})),
            403,
            403,
        ),
        case("GET", "/v1/keys", "/v1/keys".into(), None, 403, 403),
        case(
            "DELETE",
            "/v1/keys/{id}",
            format!("/v1/keys/{}", v.team_b_id),
            None,
            403,
            403,
        ),
        case("GET", "/v1/audit", "/v1/audit".into(), None, 403, 403),
        // Not in the OpenAPI document: needs a valid key, any role.
        case("GET", "/metrics", "/metrics".into(), None, 200, 200),
        open("/v1/openapi.json"),
        open("/healthz"),
        open("/readyz"),
        // The dashboard's files: open, not in the document, and holding none of team-b's
        // data (the page reads the API with the user's key).
        open("/"),
        open("/dashboard/app.js"),
    ]
}

/// What team-a may do that names team-b's things without touching team-b's locks: its own
/// requests, on its own locks, with team-b's request id, job names, once-per and coalesce keys.
async fn attack_with_names(t: &Tenants) {
    let server = &t.server;
    let (status, answer) = call(
        server,
        Some(&t.team_a),
        "POST",
        &lock_path("team-a/decoy", "/acquire"),
        Some(&json!({"owner": "a", "request_id": "nightly", "ttl_ms": 60_000})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(!answer.to_string().contains("team-b"), "{answer}");
    let (status, answer) = call(
        server,
        Some(&t.team_a),
        "POST",
        "/v1/jobs",
        Some(
            &json!({"name": "team-b/nightly", "lock": "team-a/once", "owner": "a",
                     "once_per_ms": 1000, "request_id": "nightly-job"}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    finish_job(server, &t.team_a, &answer).await;
    // A pending coalesce run named like team-b's, behind a holder on team-a's lock.
    for owner in ["a-holder", "a-pending", "a-coalesced"] {
        let (status, answer) = call(
            server,
            Some(&t.team_a),
            "POST",
            "/v1/jobs",
            Some(
                &json!({"name": "team-b/report", "lock": "team-a/coalesce", "owner": owner,
                         "policy": "coalesce", "ttl_ms": 60_000}),
            ),
        )
        .await;
        assert!(status == 200 || status == 202, "{answer}");
    }
}

/// team-b's own work still has the outcomes it would have had alone.
async fn team_b_unaffected(t: &Tenants, v: &Victim) {
    let server = &t.server;
    // Its request id still stands for its own lease.
    let (status, retry) = call(
        server,
        Some(&t.team_b),
        "POST",
        &lock_path("team-b/deploy", "/acquire"),
        Some(&json!({"owner": "b1", "ttl_ms": 3_600_000, "request_id": "nightly"})),
    )
    .await;
    assert_eq!(status, 200, "{retry}");
    assert_eq!(retry["lease"]["id"], v.lease_id.as_str());
    // Its once-per job runs.
    let nightly = create_job(
        server,
        &t.team_b,
        json!({"name": "team-b/nightly", "owner": "b", "once_per_ms": 86_400_000,
               "policy": "skip"}),
    )
    .await;
    assert_eq!(nightly["job"]["state"], "running", "{nightly}");
    // Its coalesce run behind its own holder waits: it is not coalesced into team-a's.
    let holder = create_job(
        server,
        &t.team_b,
        json!({"name": "team-b/report", "owner": "b-holder", "policy": "coalesce",
               "ttl_ms": 60_000}),
    )
    .await;
    assert_eq!(holder["job"]["state"], "running", "{holder}");
    let (status, pending) = call(
        server,
        Some(&t.team_b),
        "POST",
        "/v1/jobs",
        Some(
            &json!({"name": "team-b/report", "owner": "b-pending", "policy": "coalesce",
                     "ttl_ms": 60_000}),
        ),
    )
    .await;
    assert_eq!(status, 202, "{pending}");
    assert_eq!(pending["job"]["state"], "waiting", "{pending}");
}

async fn every_route_with_team_b_as_the_target(backend: Backend) {
    let test = format!("tenants_every_route_{backend:?}").to_lowercase();
    // Nothing may lapse while the state is compared before and after.
    let Some(t) = Tenants::start(&test, backend, &["--ticket-lapse", "1h"]).await else {
        return;
    };
    let v = victim(&t).await;
    let cases = cases(&t, &v);
    // The table covers every route of the OpenAPI document.
    let (status, document) = call(&t.server, None, "GET", "/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    let mut missing = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            if !cases
                .iter()
                .any(|case| case.method == method && case.template == path)
            {
                missing.push(format!("{method} {path}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "routes without a tenant case: {missing:?}"
    );

    let before = team_b_state(&t).await;
    for case in &cases {
        let what = format!("{} {}", case.method, case.path);
        for (label, key, expected) in [
            ("the attacker", Some(t.team_a.as_str()), case.attacker),
            ("team-b's reader", Some(v.reader.as_str()), case.reader),
            ("no key", None, if case.open { 200 } else { 401 }),
            (
                "a revoked key",
                Some(v.revoked.as_str()),
                if case.open { 200 } else { 401 },
            ),
        ] {
            let (status, body) =
                call(&t.server, key, case.method, &case.path, case.body.as_ref()).await;
            assert_eq!(status, expected, "{what} with {label}: {body}");
            if status >= 400 {
                assert!(
                    body["error"]["code"].is_string(),
                    "{what} with {label}: {body}"
                );
            }
            // A refusal may repeat what the caller sent, never anything else of team-b's.
            let sent = format!(
                "{what} {} {}",
                case.path.replace("%2F", "/"),
                case.body.clone().unwrap_or(Value::Null)
            );
            let answer = body.to_string();
            for secret in [
                "team-b/deploy",
                "team-b/backup",
                "team-b%2Fdeploy",
                v.lease_id.as_str(),
                v.ticket_id.as_str(),
                v.job_lease_id.as_str(),
                v.job_id.as_str(),
            ] {
                assert!(
                    label == "team-b's reader" || !answer.contains(secret) || sent.contains(secret),
                    "{what} with {label}: learned {secret}: {body}"
                );
            }
            assert_eq!(
                team_b_state(&t).await,
                before,
                "{what} with {label} changed team-b's state"
            );
        }
    }
    attack_with_names(&t).await;
    assert_eq!(
        team_b_state(&t).await,
        before,
        "team-a's own requests naming team-b's things changed team-b's state"
    );
    team_b_unaffected(&t, &v).await;
}

#[tokio::test]
async fn no_route_lets_another_key_touch_team_b_sqlite() {
    tokio::time::timeout(
        TEST_TIMEOUT,
        every_route_with_team_b_as_the_target(Backend::Sqlite),
    )
    .await
    .expect("the test timed out");
}

#[tokio::test]
async fn no_route_lets_another_key_touch_team_b_postgres() {
    tokio::time::timeout(
        TEST_TIMEOUT,
        every_route_with_team_b_as_the_target(Backend::Postgres),
    )
    .await
    .expect("the test timed out");
}

// ----- abuse while a well-behaved client keeps working -----------------------------------------

/// Keeps `count` connections busy with `request` (reconnecting as the server closes them)
/// until `stop` is set.
fn abuse(
    port: u16,
    count: usize,
    request: &'static [u8],
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    (0..count)
        .map(|_| {
            let stop = std::sync::Arc::clone(stop);
            tokio::spawn(async move {
                // Bounded: at most this many connections each, whatever the server does.
                for _ in 0..1_000 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let _ = stream.write_all(request).await;
                    let mut sink = [0u8; 1024];
                    // Hold the connection until the server closes it (or the abuse ends).
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut sink)).await;
                }
            })
        })
        .collect()
}

/// One request by a patient client: retried on 503, 429 and transport errors for up to a
/// minute, which only a server that stopped serving well-behaved clients exhausts.
async fn patiently(server: &Server, key: &str, path: &str, body: Value) -> (u16, Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let answer = server
            .http()
            .post(format!("{}{path}", server.base))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(Duration::from_secs(20))
            .send()
            .await;
        if let Ok(response) = answer {
            let status = response.status().as_u16();
            if status != 503 && status != 429 {
                let value = response.json().await.unwrap_or(Value::Null);
                return (status, value);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path}: the server stopped serving a well-behaved client under abuse"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn abuse_while_team_b_works(backend: Backend) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let test = format!("tenants_abuse_{backend:?}").to_lowercase();
    let Some(t) = Tenants::start(
        &test,
        backend,
        &[
            "--max-connections",
            "64",
            "--body-read-timeout",
            "1s",
            "--header-read-timeout",
            "2s",
        ],
    )
    .await
    else {
        return;
    };
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let mut abusers = Vec::new();
    // Bodies declared and never sent, heads trickled and never finished, oversized heads,
    // garbage, and a body far over the cap.
    abusers.extend(abuse(
        t.server.port,
        24,
        b"POST /v1/locks/team-a%2Fx/acquire HTTP/1.1\r\nhost: 127.0.0.1\r\n\
content-type: application/json\r\ncontent-length: 1000\r\n\r\n{",
        &stop,
    ));
    abusers.extend(abuse(
        t.server.port,
        12,
        b"GET /v1/locks HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: aaaa",
        &stop,
    ));
    abusers.extend(abuse(t.server.port, 4, &[b'a'; 40_000], &stop));
    abusers.extend(abuse(
        t.server.port,
        4,
        b"\x16\x03\x01\x00\xff garbage\r\n\r\n",
        &stop,
    ));
    abusers.extend(abuse(
        t.server.port,
        4,
        b"POST /v1/jobs HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
content-length: 99999999\r\n\r\n",
        &stop,
    ));
    // team-b keeps acquiring and releasing.
    let mut latencies = Vec::new();
    for round in 0..10 {
        let started = tokio::time::Instant::now();
        let (status, lease) = patiently(
            &t.server,
            &t.team_b,
            &lock_path("team-b/steady", "/acquire"),
            json!({"owner": format!("b-{round}"), "ttl_ms": 60_000}),
        )
        .await;
        assert_eq!(status, 200, "{lease}");
        let id = lease["lease"]["id"].as_str().unwrap();
        let (status, released) = patiently(
            &t.server,
            &t.team_b,
            &format!("/v1/leases/{id}/release"),
            json!({}),
        )
        .await;
        assert_eq!(status, 200, "{released}");
        latencies.push(started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for abuser in abusers {
        abuser.abort();
    }
    latencies.sort();
    println!(
        "acquire+release under abuse ({backend:?}): median {:?}, slowest {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_behaved_client_keeps_working_under_connection_body_and_header_abuse_sqlite() {
    tokio::time::timeout(TEST_TIMEOUT, abuse_while_team_b_works(Backend::Sqlite))
        .await
        .expect("the test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_behaved_client_keeps_working_under_connection_body_and_header_abuse_postgres() {
    tokio::time::timeout(TEST_TIMEOUT, abuse_while_team_b_works(Backend::Postgres))
        .await
        .expect("the test timed out");
}

// ----- revocation ends what the key has waiting --------------------------------------------

/// Waiters queued on `lock`, read with the admin key.
async fn waiters(t: &Tenants, lock: &str) -> usize {
    let (status, view) = call(&t.server, Some(&t.admin), "GET", &lock_path(lock, ""), None).await;
    assert_eq!(status, 200, "{view}");
    view["waiters"].as_array().map_or(0, Vec::len)
}

async fn revocation_ends_the_keys_waits(backend: Backend) {
    let test = format!("tenants_revoked_waits_{backend:?}").to_lowercase();
    let Some(t) = Tenants::start(&test, backend, &["--ticket-lapse", "1h"]).await else {
        return;
    };
    let server = &t.server;
    let doomed = create_key(server, Some(&t.admin), "doomed", &["acquire:team-a/"]).await;
    let doomed_id = key_id(&t, "doomed").await;
    let (status, held) = call(
        server,
        Some(&t.team_a),
        "POST",
        &lock_path("team-a/x", "/acquire"),
        Some(&json!({"owner": "holder", "ttl_ms": 600_000})),
    )
    .await;
    assert_eq!(status, 200, "{held}");
    // One ticket left queued (202), one long-poll parked on the same lock.
    let (status, queued) = call(
        server,
        Some(&doomed),
        "POST",
        &lock_path("team-a/x", "/acquire"),
        Some(&json!({"owner": "queued", "ttl_ms": 600_000, "queue": true})),
    )
    .await;
    assert_eq!(status, 202, "{queued}");
    let base = server.base.clone();
    let http = server.http().clone();
    let parked_key = doomed.clone();
    let parked = tokio::spawn(async move {
        let response = http
            .post(format!("{base}{}", lock_path("team-a/x", "/acquire")))
            .header("authorization", format!("Bearer {parked_key}"))
            .header("content-type", "application/json")
            .body(json!({"owner": "parked", "ttl_ms": 600_000, "wait_ms": 60_000}).to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.json::<Value>().await.unwrap_or(Value::Null),
        )
    });
    harness::eventually(
        "the long-poll to park",
        Duration::from_secs(30),
        async || (waiters(&t, "team-a/x").await == 2).then_some(()),
    )
    .await;
    let (status, answer) = call(
        server,
        Some(&t.admin),
        "DELETE",
        &format!("/v1/keys/{doomed_id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    // The parked wait ends now, long before its 60 s, without a lease.
    let (status, answer) = tokio::time::timeout(Duration::from_secs(30), parked)
        .await
        .expect("the revoked key's long-poll stayed parked")
        .unwrap();
    assert_ne!(
        status, 200,
        "the revoked key's long-poll received a lease: {answer}"
    );
    assert_eq!(answer["error"]["code"], "ticket_cancelled", "{answer}");
    assert_eq!(
        waiters(&t, "team-a/x").await,
        0,
        "the revoked key's tickets stay queued"
    );
    // When the holder releases, nothing is granted to the revoked key.
    let id = held["lease"]["id"].as_str().unwrap();
    let (status, answer) = call(
        server,
        Some(&t.team_a),
        "POST",
        &format!("/v1/leases/{id}/release"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, view) = call(
        server,
        Some(&t.admin),
        "GET",
        &lock_path("team-a/x", ""),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(view["holders"], json!([]), "{view}");
}

#[tokio::test]
async fn a_key_revoked_while_its_long_poll_is_parked_receives_no_lease_sqlite() {
    tokio::time::timeout(
        TEST_TIMEOUT,
        revocation_ends_the_keys_waits(Backend::Sqlite),
    )
    .await
    .expect("the test timed out");
}

#[tokio::test]
async fn a_key_revoked_while_its_long_poll_is_parked_receives_no_lease_postgres() {
    tokio::time::timeout(
        TEST_TIMEOUT,
        revocation_ends_the_keys_waits(Backend::Postgres),
    )
    .await
    .expect("the test timed out");
}

// ---------------------------------------------------------------------------------------------
// Per-key quotas (issue 11, part 3): one key filled the global waiter cap and another team then
// got `503 limit_reached` on its own locks. A key at its own quota gets `429 quota_exceeded`
// (naming the quota and its limit), and other keys are untouched.

/// Makes a key with its own quotas (`quotas` holds `leases_max`, `waiters_max`, …) and returns
/// its secret.
async fn create_key_with(
    server: &Server,
    admin: &str,
    name: &str,
    grants: &[&str],
    quotas: Value,
) -> String {
    let mut body = json!({"name": name, "grants": grants});
    if let (Some(body), Some(quotas)) = (body.as_object_mut(), quotas.as_object()) {
        body.extend(quotas.clone());
    }
    let (status, answer) = call(server, Some(admin), "POST", "/v1/keys", Some(&body)).await;
    assert_eq!(status, 200, "{answer}");
    for (field, value) in quotas.as_object().into_iter().flatten() {
        assert_eq!(&answer["key"][field], value, "{answer}");
    }
    answer["secret"].as_str().unwrap().to_owned()
}

/// An acquire of `lock` by `key` (`queue`: join the queue, answer at once).
async fn acquire_as(
    server: &Server,
    key: &str,
    lock: &str,
    owner: &str,
    queue: bool,
) -> (u16, Value) {
    call(
        server,
        Some(key),
        "POST",
        &lock_path(lock, "/acquire"),
        Some(&json!({"owner": owner, "ttl_ms": 600_000, "queue": queue})),
    )
    .await
}

/// Checks a `429 quota_exceeded` answer that names `quota` and `limit`.
#[track_caller]
fn assert_quota(answer: &(u16, Value), quota: &str, limit: u64) {
    let (status, body) = answer;
    assert_eq!(*status, 429, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    assert_eq!(
        body["quota"],
        json!({"name": quota, "limit": limit}),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&limit.to_string()), "{message}");
}

#[tokio::test]
async fn a_key_at_its_own_quota_gets_429_and_another_key_is_untouched_sqlite() {
    a_key_at_its_own_quota_gets_429_and_another_key_is_untouched(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_key_at_its_own_quota_gets_429_and_another_key_is_untouched_postgres() {
    a_key_at_its_own_quota_gets_429_and_another_key_is_untouched(Backend::Postgres).await;
}

async fn a_key_at_its_own_quota_gets_429_and_another_key_is_untouched(backend: Backend) {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let t = Tenants::start("tenants_quotas", backend, &[])
            .await
            .unwrap();
        let server = &t.server;
        let grants = ["acquire:team-a/"];
        // One key per quota, so each is met alone; each quota far below the server's default.
        let leases = create_key_with(
            server,
            &t.admin,
            "a-leases",
            &grants,
            json!({"leases_max": 2}),
        )
        .await;
        let waiters = create_key_with(
            server,
            &t.admin,
            "a-waiters",
            &grants,
            json!({"waiters_max": 2}),
        )
        .await;
        let locks = create_key_with(
            server,
            &t.admin,
            "a-locks",
            &grants,
            json!({"locks_max": 2}),
        )
        .await;
        let jobs =
            create_key_with(server, &t.admin, "a-jobs", &grants, json!({"jobs_max": 2})).await;

        // Leases: two, then 429; releasing one makes room.
        let (status, first) = acquire_as(server, &leases, "team-a/l1", "a", false).await;
        assert_eq!(status, 200, "{first}");
        assert_eq!(
            acquire_as(server, &leases, "team-a/l2", "a", false).await.0,
            200
        );
        let refused = acquire_as(server, &leases, "team-a/l3", "a", false).await;
        assert_quota(&refused, "leases", 2);
        // No Retry-After: waiting does not lift a quota.
        let response = server
            .http()
            .post(format!(
                "{}{}",
                server.base,
                lock_path("team-a/l3", "/acquire")
            ))
            .header("authorization", format!("Bearer {leases}"))
            .header("content-type", "application/json")
            .body(json!({"owner": "a"}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 429);
        assert!(response.headers().get("retry-after").is_none());
        // The refused acquire left no lock behind.
        assert_eq!(
            call(
                server,
                Some(&t.admin),
                "GET",
                &lock_path("team-a/l3", ""),
                None
            )
            .await
            .0,
            404
        );
        for n in 0..5 {
            let (status, body) =
                acquire_as(server, &t.team_b, &format!("team-b/l{n}"), "b", false).await;
            assert_eq!(status, 200, "team-b is not held to team-a's quota: {body}");
        }
        let lease = first["lease"]["id"].as_str().unwrap();
        let (status, body) = call(
            server,
            Some(&leases),
            "POST",
            &format!("/v1/leases/{lease}/release"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            acquire_as(server, &leases, "team-a/l3", "a", false).await.0,
            200
        );

        // Waiters: two tickets on a lock team-a/w holds, then 429; team-b queues on its own.
        let (status, body) = acquire_as(server, &t.team_a, "team-a/w", "holder", false).await;
        assert_eq!(status, 200, "{body}");
        for n in 0..2 {
            let (status, body) =
                acquire_as(server, &waiters, "team-a/w", &format!("w{n}"), true).await;
            assert_eq!(status, 202, "{body}");
        }
        assert_quota(
            &acquire_as(server, &waiters, "team-a/w", "w2", true).await,
            "waiters",
            2,
        );
        assert_eq!(
            acquire_as(server, &t.team_a, "team-a/w", "other-key", true)
                .await
                .0,
            202
        );
        assert_eq!(
            acquire_as(server, &t.team_b, "team-b/l0", "b-waits", true)
                .await
                .0,
            202
        );

        // Locks: two created (released, they stay known while idle), then a third is 429; a
        // lock it already knows, or one another key created, still works.
        for name in ["team-a/k1", "team-a/k2"] {
            let (status, body) = acquire_as(server, &locks, name, "k", false).await;
            assert_eq!(status, 200, "{body}");
            let lease = body["lease"]["id"].as_str().unwrap();
            call(
                server,
                Some(&locks),
                "POST",
                &format!("/v1/leases/{lease}/release"),
                None,
            )
            .await;
        }
        assert_quota(
            &acquire_as(server, &locks, "team-a/k3", "k", false).await,
            "locks",
            2,
        );
        assert_eq!(
            acquire_as(server, &locks, "team-a/k1", "k", false).await.0,
            200
        );
        assert_eq!(
            acquire_as(server, &locks, "team-a/l2", "k", true).await.0,
            202
        );
        assert_eq!(
            acquire_as(server, &t.team_b, "team-b/k3", "b", false)
                .await
                .0,
            200
        );

        // Jobs: two running jobs, then 429; a finished one makes room (its record is pruned).
        let job = |n: u32| {
            json!({"name": format!("team-a/j{n}"), "lock": format!("team-a/j{n}"),
                                   "owner": "runner", "command": ["true"], "policy": "skip"})
        };
        let first = create_job(server, &jobs, job(1)).await;
        create_job(server, &jobs, job(2)).await;
        let refused = call(server, Some(&jobs), "POST", "/v1/jobs", Some(&job(3))).await;
        assert_quota(&refused, "jobs", 2);
        let b_job = json!({"name": "team-b/j", "lock": "team-b/j", "owner": "runner",
                           "command": ["true"], "policy": "skip"});
        create_job(server, &t.team_b, b_job).await;
        finish_job(server, &jobs, &first).await;
        create_job(server, &jobs, job(3)).await;
    })
    .await
    .expect("the test took too long");
}

#[tokio::test]
async fn one_key_with_the_default_quota_cannot_fill_a_global_limit_sqlite() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // Global caps of 30 waiters and 40 leases: the default quotas are a tenth of them.
        let t = Tenants::start(
            "tenants_global_quota",
            Backend::Sqlite,
            &["--max-waiters", "30", "--max-leases", "40"],
        )
        .await
        .unwrap();
        let server = &t.server;
        let (status, body) = acquire_as(server, &t.team_a, "team-a/held", "holder", false).await;
        assert_eq!(status, 200, "{body}");
        // team-a tries to fill the waiter cap: its fourth ticket is its own 429, not the
        // server's 503.
        for n in 0..3 {
            let (status, body) =
                acquire_as(server, &t.team_a, "team-a/held", &format!("a{n}"), true).await;
            assert_eq!(status, 202, "{body}");
        }
        for n in 3..35 {
            let answer = acquire_as(server, &t.team_a, "team-a/held", &format!("a{n}"), true).await;
            assert_quota(&answer, "waiters", 3);
        }
        // Leases likewise: 4 in all (it holds one already).
        for n in 0..3 {
            let (status, body) =
                acquire_as(server, &t.team_a, &format!("team-a/l{n}"), "a", false).await;
            assert_eq!(status, 200, "{body}");
        }
        for n in 3..45 {
            let answer = acquire_as(server, &t.team_a, &format!("team-a/l{n}"), "a", false).await;
            assert_quota(&answer, "leases", 4);
        }
        // team-b still gets its whole share, on its own locks.
        let (status, body) = acquire_as(server, &t.team_b, "team-b/held", "holder", false).await;
        assert_eq!(status, 200, "{body}");
        for n in 0..3 {
            let (status, body) =
                acquire_as(server, &t.team_b, "team-b/held", &format!("b{n}"), true).await;
            assert_eq!(status, 202, "team-b queues despite team-a: {body}");
        }
        for n in 0..3 {
            let (status, body) =
                acquire_as(server, &t.team_b, &format!("team-b/l{n}"), "b", false).await;
            assert_eq!(status, 200, "team-b acquires despite team-a: {body}");
        }
    })
    .await
    .expect("the test took too long");
}

#[tokio::test]
async fn quotas_and_what_counts_against_them_survive_a_restart_sqlite() {
    quotas_and_what_counts_against_them_survive_a_restart(Backend::Sqlite).await;
}

#[tokio::test]
async fn quotas_and_what_counts_against_them_survive_a_restart_postgres() {
    quotas_and_what_counts_against_them_survive_a_restart(Backend::Postgres).await;
}

async fn quotas_and_what_counts_against_them_survive_a_restart(backend: Backend) {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // A server default of 1 lease per key; one key's own quota of 3 overrides it.
        let mut t = Tenants::start("tenants_quota_restart", backend, &["--key-max-leases", "1"])
            .await
            .unwrap();
        let big = create_key_with(
            &t.server,
            &t.admin,
            "big",
            &["acquire:team-a/"],
            json!({"leases_max": 3}),
        )
        .await;
        for n in 0..3 {
            let (status, body) =
                acquire_as(&t.server, &big, &format!("team-a/big{n}"), "big", false).await;
            assert_eq!(status, 200, "its own quota beats the default: {body}");
        }
        assert_eq!(
            acquire_as(&t.server, &t.team_a, "team-a/small0", "a", false)
                .await
                .0,
            200
        );
        assert_quota(
            &acquire_as(&t.server, &t.team_a, "team-a/small1", "a", false).await,
            "leases",
            1,
        );

        t.server.restart().await;

        // The quota is kept with the key, and the leases still count for their keys.
        let (status, keys) = call(&t.server, Some(&t.admin), "GET", "/v1/keys", None).await;
        assert_eq!(status, 200, "{keys}");
        let listed = keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|key| key["name"] == "big")
            .unwrap();
        assert_eq!(listed["leases_max"], 3, "{listed}");
        assert_quota(
            &acquire_as(&t.server, &big, "team-a/big3", "big", false).await,
            "leases",
            3,
        );
        assert_quota(
            &acquire_as(&t.server, &t.team_a, "team-a/small1", "a", false).await,
            "leases",
            1,
        );
        assert_eq!(
            acquire_as(&t.server, &t.team_b, "team-b/x", "b", false)
                .await
                .0,
            200
        );

        // The CLI says which quota and exits with its own code.
        let exited = t
            .server
            .spawn_baton(
                &[
                    "acquire",
                    "team-a/small2",
                    "--no-wait",
                    "--api-key",
                    &t.team_a,
                ],
                None,
            )
            .wait(Duration::from_secs(30))
            .await;
        assert_eq!(exited.code, Some(82), "{}", exited.stderr);
        assert!(exited.stderr.contains("quota"), "{}", exited.stderr);
        // `baton run` too, before running anything.
        let marker = t.server.data_dir().join("ran");
        let marker_text = marker.display().to_string();
        let exited = t
            .server
            .spawn_baton(
                &[
                    "run",
                    "team-a/small3",
                    "--api-key",
                    &t.team_a,
                    "--",
                    "touch",
                    &marker_text,
                ],
                None,
            )
            .wait(Duration::from_secs(30))
            .await;
        assert_eq!(exited.code, Some(82), "{}", exited.stderr);
        assert!(
            !marker.exists(),
            "the command ran although the key was at its quota"
        );
    })
    .await
    .expect("the test took too long");
}
