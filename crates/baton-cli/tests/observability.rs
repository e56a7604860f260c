#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `/metrics` and the request log (issue 12, part 5) against a real `baton server` process on
//! the durable (SQLite) store: the series count what happened (requests by route and status,
//! grants, releases, expiries, queue exits, jobs by state and outcome, commits and their
//! latency histogram, connections), no series grows with the lock names, and every request is
//! logged once as JSON with its method, route, status, duration, key id and request id, never
//! with a secret lease id; `--no-request-log` turns the lines off.

mod harness;

use std::collections::HashMap;
use std::time::Duration;

use harness::{Server, assert_code, eventually, lock_path, str_of};
use serde_json::{Value, json};

/// How long anything here may take; only a defect misses it.
const PATIENCE: Duration = Duration::from_secs(20);

/// The scrape as `series{labels} -> value`, with the labels as written.
async fn scrape(server: &Server) -> (String, HashMap<String, f64>) {
    let answer = server
        .http()
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let content_type = answer.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = answer.text().await.unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let values = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect();
    (text, values)
}

fn value(values: &HashMap<String, f64>, series: &str) -> f64 {
    *values
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in {values:#?}"))
}

/// The request log lines (JSON, target `baton::request`) the server printed so far.
fn request_lines(server: &Server) -> Vec<Value> {
    server
        .log_text()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == "baton::request")
        .collect()
}

#[tokio::test]
async fn metrics_count_what_happened_without_a_series_per_lock() {
    let server = Server::start(&["--lock-delay", "0ms", "--ticket-lapse", "300ms"]).await;
    let (_, before) = scrape(&server).await;
    assert_eq!(
        value(&before, "baton_lease_grants_total{store=\"sqlite\"}"),
        0.0
    );

    // A grant and a release on one lock; on another, a holder and a waiter that lapses (it
    // never waits on its ticket).
    let lock = "observability/secret-looking-name";
    let (status, first) = server
        .post(
            &lock_path(lock, "/acquire"),
            json!({"owner": "a", "ttl_ms": 60_000}),
        )
        .await;
    assert_eq!(status, 200, "{first}");
    let lease = str_of(&first["lease"]["id"], "lease.id").to_owned();
    let (status, _) = server
        .post(&format!("/v1/leases/{lease}/release"), json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, held) = server
        .post(
            &lock_path("observability/held", "/acquire"),
            json!({"owner": "x", "ttl_ms": 60_000}),
        )
        .await;
    assert_eq!(status, 200, "{held}");
    let (status, queued) = server
        .post(
            &lock_path("observability/held", "/acquire"),
            json!({"owner": "y", "ttl_ms": 60_000, "wait_ms": 0, "queue": true}),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    // A short lease that expires, on another lock.
    let (status, short) = server
        .post(
            &lock_path("observability/short", "/acquire"),
            json!({"owner": "c", "ttl_ms": 500}),
        )
        .await;
    assert_eq!(status, 200, "{short}");
    // A path no route matches.
    let (status, _) = server.get("/v1/no-such-thing").await;
    assert_eq!(status, 404);
    // Two jobs: one succeeds, one fails.
    let ok = server
        .spawn_baton(&["run", "observability/job", "--", "true"], None)
        .wait(PATIENCE)
        .await;
    assert_code(&ok, 0, "baton run -- true");
    let failed = server
        .spawn_baton(&["run", "observability/job", "--", "false"], None)
        .wait(PATIENCE)
        .await;
    assert_code(&failed, 1, "baton run -- false");

    // The expiry and the lapse happen on the server's clock.
    let (text, values) = eventually("the expiry and the lapse counted", PATIENCE, async || {
        let (text, values) = scrape(&server).await;
        let expired = value(&values, "baton_lease_expiries_total{store=\"sqlite\"}");
        let lapsed = value(
            &values,
            "baton_queue_exits_total{store=\"sqlite\",reason=\"lapsed\"}",
        );
        (expired >= 1.0 && lapsed >= 1.0).then_some((text, values))
    })
    .await;

    // Leases: the first holder, the other lock's holder, the short one, and the two job runs;
    // the waiter that lapsed got none.
    let grants = value(&values, "baton_lease_grants_total{store=\"sqlite\"}");
    assert_eq!(grants, 5.0, "{text}");
    assert_eq!(
        value(&values, "baton_lease_releases_total{store=\"sqlite\"}"),
        3.0,
        "the first holder's and the two runs' releases: {text}"
    );
    assert_eq!(
        value(&values, "baton_queue_joins_total{store=\"sqlite\"}"),
        1.0
    );
    // Jobs by outcome and by state now.
    let transitions = |state: &str| {
        value(
            &values,
            &format!("baton_job_transitions_total{{store=\"sqlite\",state=\"{state}\"}}"),
        )
    };
    assert_eq!(transitions("succeeded"), 1.0, "{text}");
    assert_eq!(transitions("failed"), 1.0, "{text}");
    assert_eq!(transitions("running"), 2.0, "{text}");
    let jobs = |state: &str| {
        value(
            &values,
            &format!("baton_jobs{{store=\"sqlite\",state=\"{state}\"}}"),
        )
    };
    assert_eq!(jobs("succeeded"), 1.0);
    assert_eq!(jobs("failed"), 1.0);
    assert_eq!(jobs("running"), 0.0);
    // Requests by route template and status: the acquire route, not the lock's path.
    assert!(
        value(
            &values,
            "baton_http_requests_total{method=\"POST\",route=\"/v1/locks/{name}/acquire\",status=\"200\"}"
        ) >= 2.0,
        "{text}"
    );
    assert_eq!(
        value(
            &values,
            "baton_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}"
        ),
        1.0
    );
    assert!(
        value(
            &values,
            "baton_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/leases/{id}/release\"}"
        ) >= 1.0
    );
    // Commits: the histogram counts every commit, and they took time.
    let commits = value(&values, "baton_commits_total{store=\"sqlite\"}");
    assert!(commits >= 4.0, "{text}");
    assert_eq!(
        value(
            &values,
            "baton_commit_duration_seconds_count{store=\"sqlite\"}"
        ),
        commits
    );
    assert_eq!(
        value(
            &values,
            "baton_commit_duration_seconds_bucket{le=\"+Inf\",store=\"sqlite\"}"
        ),
        commits
    );
    assert!(
        value(
            &values,
            "baton_commit_duration_seconds_sum{store=\"sqlite\"}"
        ) > 0.0
    );
    // This scrape's own connection is open.
    assert!(value(&values, "baton_connections") >= 1.0);
    // No series names a lock, a lease or an owner.
    assert!(!text.contains("secret-looking-name"), "{text}");
    assert!(!text.contains(&lease), "{text}");
    assert!(!text.contains("observability/"), "{text}");
    let series: std::collections::HashSet<&str> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    assert!(series.len() < 80, "{series:?}");
}

#[tokio::test]
async fn every_request_is_logged_once_as_json_with_its_route_key_and_request_id() {
    let server = Server::start_logging(&["--log-format", "json"], "info").await;
    // The first key turns keys on; the log names it by id, never by secret.
    let (status, key) = server
        .post(
            "/v1/keys",
            json!({"name": "observer", "grants": ["admin:"]}),
        )
        .await;
    assert_eq!(status, 200, "{key}");
    let secret = str_of(&key["secret"], "secret").to_owned();
    let key_id = str_of(&key["key"]["id"], "key.id").to_owned();
    let answer = server
        .http()
        .post(format!(
            "{}{}",
            server.base,
            lock_path("logged/lock", "/acquire")
        ))
        .header("authorization", format!("Bearer {secret}"))
        .header("x-request-id", "test-request-42")
        .json(&json!({"owner": "logger", "ttl_ms": 60_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(answer.headers()["x-request-id"], "test-request-42");
    let body: Value = answer.json().await.unwrap();
    let lease = str_of(&body["lease"]["id"], "lease.id").to_owned();
    let answer = server
        .http()
        .post(format!("{}/v1/leases/{lease}/renew", server.base))
        .header("authorization", format!("Bearer {secret}"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let fresh_id = answer.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!fresh_id.is_empty());
    // Without a key: 401, logged too, with no key id.
    let answer = server
        .http()
        .get(format!("{}/v1/locks", server.base))
        .header("x-request-id", "test-request-401")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 401);

    let lines = eventually("the request lines", PATIENCE, async || {
        let lines = request_lines(&server);
        lines
            .iter()
            .any(|line| line["request_id"] == "test-request-401")
            .then_some(lines)
    })
    .await;
    let acquire: Vec<&Value> = lines
        .iter()
        .filter(|line| line["request_id"] == "test-request-42")
        .collect();
    assert_eq!(acquire.len(), 1, "{lines:#?}");
    let acquire = acquire[0];
    assert_eq!(acquire["method"], "POST");
    assert_eq!(acquire["route"], "/v1/locks/{name}/acquire");
    assert_eq!(acquire["status"], 200);
    assert_eq!(acquire["key"], key_id.as_str());
    assert_eq!(acquire["level"], "INFO");
    assert!(acquire["duration_ms"].as_f64().unwrap() >= 0.0, "{acquire}");
    let renew = lines
        .iter()
        .find(|line| line["request_id"] == fresh_id.as_str())
        .unwrap_or_else(|| panic!("no line for {fresh_id}: {lines:#?}"));
    assert_eq!(renew["route"], "/v1/leases/{id}/renew");
    let refused = lines
        .iter()
        .find(|line| line["request_id"] == "test-request-401")
        .unwrap();
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["key"], "-");
    // Secrets never reach the log: not the lease id (it is in the renewal's path), not the key.
    let log = server.log_text();
    assert!(!log.contains(&lease), "{log}");
    assert!(!log.contains(&secret), "{log}");
}

#[tokio::test]
async fn no_request_log_turns_the_lines_off() {
    let server = Server::start_logging(&["--no-request-log"], "info").await;
    let (status, _) = server.get("/v1/locks").await;
    assert_eq!(status, 200);
    // The server's own start-up lines are there (info is on), the request lines are not.
    let log = server.log_text();
    assert!(log.contains("starting baton server"), "{log}");
    assert!(!log.contains("baton::request"), "{log}");
    assert!(!log.lines().any(|line| line.contains("route=")), "{log}");
}
