//! Job records over real HTTP against the real `baton server` (SQLite store): create (200
//! running with a lease, 202 waiting with a ticket), wait, heartbeat (with a `replace` asking
//! the holder to stop), finish (the job with its output), listings and their filters, G8 (no
//! lease or ticket id in any listing), bad input, and a kill -9 with a running and a waiting job.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod harness;

use std::time::Duration;

use harness::{Server, encode_segment, lock_path, str_of, u64_of};
use reqwest::Method;
use serde_json::{Value, json};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// `POST /v1/jobs`; returns the status and body.
async fn create(server: &Server, body: Value) -> (u16, Value) {
    server.post("/v1/jobs", body).await
}

/// Creates a job that must run at once; returns (job id, lease id, token).
async fn create_running(server: &Server, body: Value) -> (String, String, u64) {
    let (status, answer) = create(server, body).await;
    assert_eq!(status, 200, "create: {answer}");
    assert_eq!(answer["job"]["state"], "running", "{answer}");
    assert!(answer.get("ticket").is_none(), "{answer}");
    let token = u64_of(&answer["lease"]["token"], "lease.token");
    assert_eq!(answer["job"]["token"], token, "{answer}");
    (
        str_of(&answer["job"]["id"], "job.id").to_owned(),
        str_of(&answer["lease"]["id"], "lease.id").to_owned(),
        token,
    )
}

/// Creates a job that must wait; returns (job id, ticket id).
async fn create_waiting(server: &Server, body: Value) -> (String, String) {
    let (status, answer) = create(server, body).await;
    assert_eq!(status, 202, "create: {answer}");
    assert_eq!(answer["job"]["state"], "waiting", "{answer}");
    assert!(answer.get("lease").is_none(), "{answer}");
    assert!(answer["job"].get("waiting_at").is_some(), "{answer}");
    (
        str_of(&answer["job"]["id"], "job.id").to_owned(),
        str_of(&answer["ticket"]["id"], "ticket.id").to_owned(),
    )
}

async fn get_job(server: &Server, id: &str) -> Value {
    let (status, body) = server.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, 200, "GET job {id}: {body}");
    body
}

async fn list(server: &Server, query: &str) -> Vec<Value> {
    let (status, body) = server.get(&format!("/v1/jobs{query}")).await;
    assert_eq!(status, 200, "GET /v1/jobs{query}: {body}");
    body["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no jobs array: {body}"))
        .clone()
}

fn ids(jobs: &[Value]) -> Vec<&str> {
    jobs.iter()
        .map(|job| str_of(&job["id"], "job.id"))
        .collect()
}

async fn heartbeat(server: &Server, job: &str, lease: &str) -> Value {
    let (status, body) = server
        .post(
            &format!("/v1/jobs/{job}/heartbeat"),
            json!({"lease_id": lease}),
        )
        .await;
    assert_eq!(status, 200, "heartbeat {job}: {body}");
    body
}

async fn finish(server: &Server, job: &str, body: Value) -> Value {
    let (status, answer) = server.post(&format!("/v1/jobs/{job}/finish"), body).await;
    assert_eq!(status, 200, "finish {job}: {answer}");
    answer
}

/// Waits on a job's ticket until it runs; returns the 200 body.
async fn wait_running(server: &Server, job: &str, ticket: &str) -> Value {
    loop {
        let (status, body) = server
            .post(
                &format!("/v1/jobs/{job}/wait"),
                json!({"ticket_id": ticket, "wait_ms": 30_000}),
            )
            .await;
        match status {
            200 => {
                assert_eq!(body["job"]["state"], "running", "{body}");
                return body;
            }
            202 => assert_eq!(body["job"]["state"], "waiting", "{body}"),
            _ => panic!("wait on job {job}: {status} {body}"),
        }
    }
}

/// A bad request: what it is, method, path, JSON body, expected status and error code.
type BadCase = (
    &'static str,
    Method,
    String,
    Option<String>,
    u16,
    &'static str,
);

/// G8: no lease or ticket id appears in `text`, neither one we were given nor any other.
fn assert_no_capabilities(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!text.contains(secret), "{what} shows a capability: {text}");
    }
    assert!(
        !text.contains("lease_") && !text.contains("ticket_"),
        "{what} shows a lease or ticket id: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_wait_heartbeat_replace_finish_and_list_over_http() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let lock = "http/etl";
        let body = |owner: &str, policy: &str| {
            json!({
                "name": lock, "owner": owner, "policy": policy, "host": "host-a",
                "command": ["etl.sh", "--day", "2026-11-21"], "ttl_ms": 60_000
            })
        };

        // 200 running with a lease; 202 waiting with a ticket.
        let (first, first_lease, first_token) =
            create_running(&server, body("runner-1", "wait")).await;
        assert!(first.starts_with("job_"), "{first}");
        let (second, second_ticket) = create_waiting(&server, body("runner-2", "wait")).await;

        // The lock listing names each holder's and waiter's job.
        let (status, view) = server.get(&lock_path(lock, "")).await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["holders"][0]["job"], first.as_str(), "{view}");
        assert_eq!(view["holders"][0]["token"], first_token, "{view}");
        assert_eq!(view["waiters"][0]["job"], second.as_str(), "{view}");
        assert_eq!(view["waiters"][0]["position"], 1, "{view}");

        // The waiter parks on its ticket; the holder finishes; the waiter runs.
        let waiter = {
            let base = server.base.clone();
            let http = server.http().clone();
            let (second, ticket) = (second.clone(), second_ticket.clone());
            tokio::spawn(async move {
                let answer = http
                    .post(format!("{base}/v1/jobs/{second}/wait"))
                    .json(&json!({"ticket_id": ticket, "wait_ms": 30_000}))
                    .send()
                    .await
                    .expect("wait");
                let status = answer.status().as_u16();
                (status, answer.json::<Value>().await.expect("JSON"))
            })
        };
        // Give the wait time to park (not an assertion on speed: it answers 200 either way).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let detail = finish(
            &server,
            &first,
            json!({
                "lease_id": first_lease, "state": "succeeded", "exit_code": 0,
                "output_tail": "line 1\nline 2 ✓\n"
            }),
        )
        .await;
        assert_eq!(detail["job"]["state"], "succeeded", "{detail}");
        assert_eq!(detail["job"]["exit_code"], 0, "{detail}");
        assert_eq!(detail["output_tail"], "line 1\nline 2 ✓\n", "{detail}");
        assert_eq!(
            detail["job"]["output_bytes"],
            "line 1\nline 2 ✓\n".len(),
            "{detail}"
        );
        assert!(detail["job"].get("duration_ms").is_some(), "{detail}");
        let (status, granted) = waiter.await.expect("the wait task");
        assert_eq!(status, 200, "the waiter runs once the holder finished: {granted}");
        assert_eq!(granted["job"]["id"], second.as_str(), "{granted}");
        assert_eq!(granted["job"]["state"], "running", "{granted}");
        let second_lease = str_of(&granted["lease"]["id"], "lease.id").to_owned();
        let second_token = u64_of(&granted["lease"]["token"], "lease.token");
        assert!(second_token > first_token, "{granted}");
        assert_eq!(granted["job"]["token"], second_token, "{granted}");

        // A heartbeat renews and asks nothing, until a replace arrives.
        let beat = heartbeat(&server, &second, &second_lease).await;
        assert!(beat.get("stop").is_none(), "{beat}");
        assert_eq!(beat["lease"]["token"], second_token, "{beat}");
        let (third, third_ticket) = create_waiting(&server, body("runner-3", "replace")).await;
        let beat = heartbeat(&server, &second, &second_lease).await;
        assert_eq!(beat["stop"], "replaced", "{beat}");
        let shown = get_job(&server, &second).await;
        assert_eq!(shown["job"]["stop_requested"], "replaced", "{shown}");
        assert_eq!(shown["job"]["state"], "running", "asked to stop, not stopped: {shown}");
        let (_, view) = server.get(&lock_path(lock, "")).await;
        assert_eq!(view["holders"].as_array().map(Vec::len), Some(1), "{view}");
        // Not granted while the holder runs.
        let (status, still) = server
            .post(
                &format!("/v1/jobs/{third}/wait"),
                json!({"ticket_id": third_ticket, "wait_ms": 200}),
            )
            .await;
        assert_eq!(status, 202, "{still}");
        let detail = finish(
            &server,
            &second,
            json!({
                "lease_id": second_lease, "state": "cancelled", "exit_code": 143,
                "reason": "replaced", "output_tail": "stopping\n"
            }),
        )
        .await;
        assert_eq!(detail["job"]["state"], "cancelled", "{detail}");
        assert_eq!(detail["job"]["reason"], "replaced", "{detail}");
        let granted = wait_running(&server, &third, &third_ticket).await;
        let third_lease = str_of(&granted["lease"]["id"], "lease.id").to_owned();
        finish(
            &server,
            &third,
            json!({"lease_id": third_lease, "state": "failed", "exit_code": 3, "output_tail": "err\n"}),
        )
        .await;

        // Another job name, for the name filter.
        let (other, other_lease, _) = create_running(
            &server,
            json!({"name": "http/other", "owner": "runner-4", "batch": "b-1"}),
        )
        .await;

        // Listings: newest first, filtered.
        let name = format!("?name={}", encode_segment(lock));
        let all = list(&server, "").await;
        assert_eq!(ids(&all), [other.as_str(), &third, &second, &first]);
        assert_eq!(ids(&list(&server, &name).await), [third.as_str(), &second, &first]);
        assert_eq!(
            ids(&list(&server, "?state=succeeded,failed").await),
            [third.as_str(), &first]
        );
        assert_eq!(ids(&list(&server, "?state=running").await), [other.as_str()]);
        assert_eq!(ids(&list(&server, "?limit=2").await), [other.as_str(), &third]);
        assert_eq!(ids(&list(&server, "?batch=b-1").await), [other.as_str()]);
        let since = str_of(&all[1]["created_at"], "created_at").to_owned();
        let since_query = format!("?since={}", encode_segment(&since));
        let recent = list(&server, &since_query).await;
        assert!(
            ids(&recent).starts_with(&[other.as_str(), &third]) && !ids(&recent).contains(&first.as_str()),
            "since {since}: {recent:?}"
        );
        let both = format!("{name}&state=succeeded&limit=5");
        assert_eq!(ids(&list(&server, &both).await), [first.as_str()]);

        // One job, with its output and every timestamp.
        let one = get_job(&server, &first).await;
        assert_eq!(one["output_tail"], "line 1\nline 2 ✓\n", "{one}");
        let job = &one["job"];
        assert_eq!(job["name"], lock, "{job}");
        assert_eq!(job["policy"], "wait", "{job}");
        assert_eq!(job["host"], "host-a", "{job}");
        assert_eq!(job["command"], json!(["etl.sh", "--day", "2026-11-21"]), "{job}");
        for field in ["created_at", "started_at", "finished_at"] {
            assert!(job.get(field).is_some(), "{field}: {job}");
        }
        let waited = get_job(&server, &second).await;
        assert!(waited["job"].get("waiting_at").is_some(), "{waited}");

        // G8: no capability in any listing.
        let secrets = [
            first_lease.as_str(),
            &second_ticket,
            &second_lease,
            &third_ticket,
            &third_lease,
            &other_lease,
        ];
        for path in [
            "/v1/jobs".to_owned(),
            format!("/v1/jobs/{first}"),
            format!("/v1/jobs/{second}"),
            format!("/v1/jobs/{other}"),
            "/v1/locks".to_owned(),
            lock_path("http/other", ""),
        ] {
            let (status, body) = server.get(&path).await;
            assert_eq!(status, 200, "{path}: {body}");
            assert_no_capabilities(&path, &body.to_string(), &secrets);
        }
        // And a lock listing with a waiting job.
        let (_, ticket) = create_waiting(&server, json!({"name": "http/other", "owner": "w"})).await;
        let (_, body) = server.get(&lock_path("http/other", "")).await;
        assert_eq!(body["waiters"].as_array().map(Vec::len), Some(1), "{body}");
        assert_no_capabilities("a lock with a waiting job", &body.to_string(), &[&ticket]);
    })
    .await
    .expect("the test took too long (a hung request?)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_job_input_gets_its_error_and_changes_nothing() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let (job, lease, _) =
            create_running(&server, json!({"name": "bad/job", "owner": "runner"})).await;
        let (waiting, ticket) =
            create_waiting(&server, json!({"name": "bad/job", "owner": "waiter"})).await;
        let finish_path = format!("/v1/jobs/{job}/finish");
        let unknown = format!("job_{}", "0".repeat(32));
        let over_body = json!({
            "lease_id": lease, "state": "succeeded",
            "output_tail": "x".repeat(200 * 1024)
        })
        .to_string();
        let cases: Vec<BadCase> = vec![
            (
                "an unknown policy",
                Method::POST,
                "/v1/jobs".into(),
                Some(r#"{"name":"bad/x","owner":"o","policy":"sometimes"}"#.into()),
                400,
                "invalid_body",
            ),
            (
                "an unknown field",
                Method::POST,
                "/v1/jobs".into(),
                Some(r#"{"name":"bad/x","owner":"o","colour":"red"}"#.into()),
                400,
                "invalid_body",
            ),
            (
                "a name with a space",
                Method::POST,
                "/v1/jobs".into(),
                Some(r#"{"name":"bad name","owner":"o"}"#.into()),
                400,
                "invalid_name",
            ),
            (
                "an empty owner",
                Method::POST,
                "/v1/jobs".into(),
                Some(r#"{"name":"bad/x","owner":""}"#.into()),
                400,
                "invalid_owner",
            ),
            (
                "a min_hold over a day",
                Method::POST,
                "/v1/jobs".into(),
                Some(r#"{"name":"bad/x","owner":"o","min_hold_ms":86400001}"#.into()),
                400,
                "invalid_job",
            ),
            (
                "a finish body over the limit",
                Method::POST,
                finish_path.clone(),
                Some(over_body),
                413,
                "body_too_large",
            ),
            (
                "finish with both a lease and a ticket",
                Method::POST,
                finish_path.clone(),
                Some(
                    json!({"lease_id": lease, "ticket_id": ticket, "state": "succeeded"})
                        .to_string(),
                ),
                400,
                "invalid_body",
            ),
            (
                "finish with neither a lease nor a ticket",
                Method::POST,
                finish_path.clone(),
                Some(r#"{"state":"succeeded"}"#.into()),
                400,
                "invalid_body",
            ),
            (
                "finish reporting running",
                Method::POST,
                finish_path.clone(),
                Some(json!({"lease_id": lease, "state": "running"}).to_string()),
                400,
                "invalid_state",
            ),
            (
                "finish reporting skipped",
                Method::POST,
                finish_path.clone(),
                Some(json!({"lease_id": lease, "state": "skipped"}).to_string()),
                400,
                "invalid_state",
            ),
            (
                "finish with a malformed lease id",
                Method::POST,
                finish_path.clone(),
                Some(json!({"lease_id": "lease_xyz", "state": "succeeded"}).to_string()),
                400,
                "invalid_id",
            ),
            (
                "finish with another job's ticket",
                Method::POST,
                finish_path.clone(),
                Some(json!({"ticket_id": ticket, "state": "cancelled"}).to_string()),
                404,
                "lease_not_found",
            ),
            (
                "a malformed job id",
                Method::GET,
                "/v1/jobs/job_123".into(),
                None,
                400,
                "invalid_id",
            ),
            (
                "a malformed job id in a finish",
                Method::POST,
                "/v1/jobs/nope/finish".into(),
                Some(json!({"lease_id": lease, "state": "succeeded"}).to_string()),
                400,
                "invalid_id",
            ),
            (
                "an unknown job",
                Method::GET,
                format!("/v1/jobs/{unknown}"),
                None,
                404,
                "job_not_found",
            ),
            (
                "a finish of an unknown job",
                Method::POST,
                format!("/v1/jobs/{unknown}/finish"),
                Some(json!({"lease_id": lease, "state": "succeeded"}).to_string()),
                404,
                "job_not_found",
            ),
            (
                "a heartbeat of an unknown job",
                Method::POST,
                format!("/v1/jobs/{unknown}/heartbeat"),
                Some(json!({"lease_id": lease}).to_string()),
                404,
                "job_not_found",
            ),
            (
                "a wait with the wrong ticket",
                Method::POST,
                format!("/v1/jobs/{waiting}/wait"),
                Some(json!({"ticket_id": format!("ticket_{}", "1".repeat(32))}).to_string()),
                404,
                "ticket_not_found",
            ),
            (
                "an unknown state in a listing",
                Method::GET,
                "/v1/jobs?state=bogus".into(),
                None,
                400,
                "invalid_query",
            ),
            (
                "a since that is not a time",
                Method::GET,
                "/v1/jobs?since=yesterday".into(),
                None,
                400,
                "invalid_query",
            ),
        ];
        for (what, method, path, body, status, code) in cases {
            let answer = server
                .try_send(
                    method,
                    &path,
                    body.as_ref().map(|_| "application/json"),
                    body.as_ref().map(String::as_bytes),
                )
                .await
                .unwrap_or_else(|error| panic!("{what}: {error}\n{}", server.log_text()));
            assert_eq!(answer.0, status, "{what}: {}", answer.1);
            assert_eq!(answer.1["error"]["code"], code, "{what}: {}", answer.1);
            assert!(
                answer.1["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{what}: a message a person can act on: {}",
                answer.1
            );
        }

        // Nothing changed: the job still runs with no output, the waiter still waits.
        let one = get_job(&server, &job).await;
        assert_eq!(one["job"]["state"], "running", "{one}");
        assert_eq!(one["output_tail"], "", "{one}");
        assert_eq!(get_job(&server, &waiting).await["job"]["state"], "waiting");
        let jobs = list(&server, "").await;
        assert_eq!(jobs.len(), 2, "no job was created by bad input: {jobs:?}");

        // An output over the kept tail (but within the body limit) is accepted and cut to it.
        let output = format!("{}END", "y".repeat(100 * 1024));
        let detail = finish(
            &server,
            &job,
            json!({"lease_id": lease, "state": "succeeded", "exit_code": 0, "output_tail": output}),
        )
        .await;
        let kept = str_of(&detail["output_tail"], "output_tail");
        assert_eq!(kept.len(), 64 * 1024, "the tail limit");
        assert!(kept.ends_with("END"), "the end is kept");
        // Finishing again with another state: a conflict.
        let (status, body) = server
            .post(
                &finish_path,
                json!({"lease_id": lease, "state": "failed", "exit_code": 1}),
            )
            .await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (409, &json!("job_state_conflict")),
            "{body}"
        );
    })
    .await
    .expect("the test took too long (a hung request?)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_and_waiting_jobs_survive_a_kill_9() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // Tickets must not lapse while the server is down: this test is about durability.
        let mut server = Server::start(&["--ticket-lapse", "5m"]).await;
        let lock = "crash/job";
        let (running, lease, token) = create_running(
            &server,
            json!({"name": lock, "owner": "runner", "ttl_ms": 60_000, "request_id": "crash-1"}),
        )
        .await;
        let (waiting, ticket) = create_waiting(
            &server,
            json!({"name": lock, "owner": "waiter", "ttl_ms": 60_000}),
        )
        .await;
        let before_running = get_job(&server, &running).await;
        let before_waiting = get_job(&server, &waiting).await;

        server.kill9().await;
        server.restart().await;

        assert_eq!(
            get_job(&server, &running).await,
            before_running,
            "the running job survives"
        );
        assert_eq!(
            get_job(&server, &waiting).await,
            before_waiting,
            "the waiting job survives"
        );
        let (status, view) = server.get(&lock_path(lock, "")).await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["holders"][0]["job"], running.as_str(), "{view}");
        assert_eq!(view["holders"][0]["token"], token, "{view}");
        assert_eq!(view["waiters"][0]["job"], waiting.as_str(), "{view}");
        // A retry of the create gets the same job and lease (G7).
        let (status, retry) = create(
            &server,
            json!({"name": lock, "owner": "runner", "ttl_ms": 60_000, "request_id": "crash-1"}),
        )
        .await;
        assert_eq!(status, 200, "{retry}");
        assert_eq!(retry["job"]["id"], running.as_str(), "{retry}");
        assert_eq!(retry["lease"]["id"], lease.as_str(), "{retry}");
        // The running job's lease still works, and the waiting job's ticket still waits.
        let beat = heartbeat(&server, &running, &lease).await;
        assert_eq!(beat["lease"]["token"], token, "{beat}");
        let (status, still) = server
            .post(
                &format!("/v1/jobs/{waiting}/wait"),
                json!({"ticket_id": ticket, "wait_ms": 0}),
            )
            .await;
        assert_eq!(status, 202, "{still}");
        finish(
            &server,
            &running,
            json!({"lease_id": lease, "state": "succeeded", "exit_code": 0, "output_tail": "ok"}),
        )
        .await;
        let granted = wait_running(&server, &waiting, &ticket).await;
        assert!(
            u64_of(&granted["lease"]["token"], "token") > token,
            "{granted}"
        );

        // The finished job's output survives the next crash too.
        server.kill9().await;
        server.restart().await;
        let one = get_job(&server, &running).await;
        assert_eq!(
            (&one["job"]["state"], &one["output_tail"]),
            (&json!("succeeded"), &json!("ok"))
        );
        assert_eq!(get_job(&server, &waiting).await["job"]["state"], "running");
    })
    .await
    .expect("the test took too long (a hung request?)");
}
