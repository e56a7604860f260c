//! Issue 12, parts 2 and 3: a job's output while it runs, `baton logs JOB [-f]`, `baton job ID`
//! showing the running tail, and `baton cancel JOB`.
//!
//! - `baton run` sends the child's output as it comes: `baton logs -f` prints each line while
//!   the child still runs (well within a few seconds of when it was printed), every line once
//!   and in order, and exits 0 when the job ends; `baton job ID` shows the tail so far; the
//!   `output` event arrives on `GET /v1/events`;
//! - `baton cancel` of a running `baton run` ends the child's whole tree (its grandchild too),
//!   records `cancelled`, and `baton run` exits 83; it is audited;
//! - `baton cancel` of a waiting job takes it out of the queue, and its `baton run` exits 83;
//! - `baton cancel` of a job of a `baton parallel` batch stops it; the batch reports it
//!   cancelled;
//! - a key without `acquire` on the job's lock gets 403 (exit 77) and changes nothing;
//! - appended output is in the job record: it survives a restart, on SQLite and PostgreSQL.
//!
//! Real processes and real servers. Every wait is bounded, generously (the machine is shared).

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod harness;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::{
    Server, assert_code, eventually, job_detail, jobs_named, lock_view, process_alive, workdir,
};
use serde_json::{Value, json};

const TEST_TIMEOUT: Duration = Duration::from_secs(180);
/// The bound on one `baton` command finishing, or one condition becoming true.
const PATIENCE: Duration = Duration::from_secs(40);
/// How soon after the child printed a line `baton logs -f` must show it: a defect (output sent
/// only at the end, or only with the heartbeat) misses it; a loaded machine does not.
const LIVE_BOUND: Duration = Duration::from_secs(3);

/// The newest job named `name` once it is in `state`.
async fn job_in_state(server: &Server, name: &str, state: &str) -> Value {
    eventually(&format!("job {name} {state}"), PATIENCE, async || {
        jobs_named(server, name)
            .await
            .into_iter()
            .find(|job| job["state"] == state)
    })
    .await
}

fn id_of(job: &Value) -> String {
    job["id"].as_str().unwrap().to_owned()
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// One request with a key (or none); the status and the JSON body.
async fn call(
    server: &Server,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
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
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Reads `GET /v1/events?prefix=…` until an `output` event of job `job` whose text contains
/// `needle`, and returns its data.
async fn output_event(mut response: reqwest::Response, job: &str, needle: &str) -> Value {
    let mut buffer = String::new();
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if !block.lines().any(|line| line == "event: output") {
                continue;
            }
            let data = block
                .lines()
                .find_map(|line| line.strip_prefix("data: "))
                .expect("an event has data");
            let event: Value = serde_json::from_str(data).unwrap();
            if event["job"]["id"] == job && event["text"].as_str().unwrap().contains(needle) {
                return event;
            }
        }
        let chunk = tokio::time::timeout(PATIENCE, response.chunk())
            .await
            .expect("no output event in time")
            .unwrap()
            .expect("the event stream ended");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_logs_follows_a_running_childs_output_and_job_shows_the_tail_so_far() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let events = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap()
            .get(format!("{}/v1/events?prefix=out/", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(events.status().as_u16(), 200);
        // Each line carries when it was printed (ns since the epoch).
        let lines = 25;
        let script = format!(
            "for i in $(seq 1 {lines}); do echo \"line-$i $(date +%s%N)\"; sleep 0.2; done"
        );
        let run = server.spawn_baton(&["run", "out/logs", "--", "sh", "-c", &script], None);
        let job = id_of(&job_in_state(&server, "out/logs", "running").await);
        let mut logs = server.spawn_baton(&["logs", &job, "-f"], None);

        // The first line `logs -f` shows, shown within LIVE_BOUND of its printing.
        let (first, seen_ns) = eventually("baton logs -f prints a line", PATIENCE, async || {
            let text = logs.stdout_text();
            let line = text
                .lines()
                .find(|line| line.starts_with("line-"))?
                .to_owned();
            Some((line, now_ns()))
        })
        .await;
        let printed_ns: u128 = first.split(' ').nth(1).unwrap().parse().unwrap();
        let lag = Duration::from_nanos(u64::try_from(seen_ns.saturating_sub(printed_ns)).unwrap());
        assert!(
            lag < LIVE_BOUND,
            "{first:?} shown {lag:?} after it was printed"
        );
        assert!(!logs.has_exited(), "logs -f follows until the job ends");

        // `baton job ID` shows the tail while the job runs.
        let shown = server
            .spawn_baton(&["job", &job], None)
            .wait(PATIENCE)
            .await;
        assert_code(&shown, 0, "baton job");
        let text = String::from_utf8_lossy(&shown.stdout).into_owned();
        assert!(
            text.contains("running") && text.contains("line-1 "),
            "{text}"
        );
        assert!(text.contains("so far"), "{text}");

        // The `output` event, with the job and the text.
        let event = output_event(events, &job, "line-").await;
        assert_eq!(event["type"], "output", "{event}");
        assert_eq!(event["lock"], "out/logs", "{event}");
        assert_eq!(event["job"]["state"], "running", "{event}");
        assert!(event["offset"].is_u64(), "{event}");

        let ran = run.wait(PATIENCE).await;
        assert_code(&ran, 0, "baton run");
        let followed = logs.wait(PATIENCE).await;
        assert_code(&followed, 0, "baton logs -f once the job ended");
        let printed: Vec<String> = String::from_utf8_lossy(&followed.stdout)
            .lines()
            .map(|line| line.split(' ').next().unwrap().to_owned())
            .collect();
        let expected: Vec<String> = (1..=lines).map(|i| format!("line-{i}")).collect();
        assert_eq!(printed, expected, "every line once, in order");

        // Without -f: the output kept, and exit 0.
        let all = server
            .spawn_baton(&["logs", &job], None)
            .wait(PATIENCE)
            .await;
        assert_code(&all, 0, "baton logs");
        assert_eq!(String::from_utf8_lossy(&all.stdout).lines().count(), lines);
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_running_baton_run_ends_the_child_tree_and_exits_83() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-cancel-");
        // A quiet child (no output to carry the stop sooner): the heartbeat tells it.
        let run = server.spawn_baton(
            &[
                "run",
                "out/cancel",
                "--ttl",
                "3s",
                "--",
                "sh",
                "-c",
                "sleep 1000 & echo $! > grandchild.pid; wait",
            ],
            Some(dir.path()),
        );
        let pid_file = dir.path().join("grandchild.pid");
        let grandchild: i32 = eventually("the grandchild's pid", PATIENCE, async || {
            std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
        })
        .await;
        assert!(process_alive(grandchild));
        let job = id_of(&job_in_state(&server, "out/cancel", "running").await);

        let cancelled = server
            .spawn_baton(&["--json", "cancel", &job], None)
            .wait(PATIENCE)
            .await;
        assert_code(&cancelled, 0, "baton cancel");
        let answer: Value = serde_json::from_slice(&cancelled.stdout).unwrap();
        assert_eq!(answer["outcome"], "stopping", "{answer}");
        assert_eq!(answer["job"]["stop_requested"], "cancelled", "{answer}");

        let ran = run.wait(PATIENCE).await;
        assert_code(&ran, 83, "baton run of a cancelled job");
        assert!(ran.stderr.contains("cancelled"), "{}", ran.stderr);
        eventually("the grandchild gone", PATIENCE, async || {
            (!process_alive(grandchild)).then_some(())
        })
        .await;
        let detail = job_detail(&server, &job).await;
        assert_eq!(detail["job"]["state"], "cancelled", "{detail}");
        assert!(
            detail["job"]["reason"]
                .as_str()
                .unwrap()
                .contains("baton cancel"),
            "{detail}"
        );
        assert!(
            lock_view(&server, "out/cancel").await["holders"]
                .as_array()
                .unwrap()
                .is_empty()
        );

        // Audited.
        let (status, audit) = server.get("/v1/audit").await;
        assert_eq!(status, 200, "{audit}");
        let entry = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["action"] == "job.cancel")
            .unwrap_or_else(|| panic!("no job.cancel in the audit log: {audit}"))
            .clone();
        assert_eq!(entry["target"], "out/cancel", "{entry}");
        assert!(entry["detail"].as_str().unwrap().contains(&job), "{entry}");

        // A job that ended cannot be cancelled: 409, exit 65, and it stays as it was.
        let again = server
            .spawn_baton(&["cancel", &job], None)
            .wait(PATIENCE)
            .await;
        assert_code(
            &again,
            0,
            "a second cancel of a cancelled job answers the same",
        );
        let finished = server.spawn_baton(&["run", "out/done", "--", "true"], None);
        assert_code(&finished.wait(PATIENCE).await, 0, "baton run true");
        let done = id_of(&jobs_named(&server, "out/done").await[0]);
        let refused = server
            .spawn_baton(&["cancel", &done], None)
            .wait(PATIENCE)
            .await;
        assert_code(&refused, 65, "cancel of a job that succeeded");
        assert!(
            refused.stderr.contains("job_state_conflict"),
            "{}",
            refused.stderr
        );
        assert_eq!(
            job_detail(&server, &done).await["job"]["state"],
            "succeeded"
        );
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_waiting_job_takes_it_out_of_the_queue() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let holder = server.spawn_baton(&["run", "out/queue", "--", "sleep", "1000"], None);
        let holding = id_of(&job_in_state(&server, "out/queue", "running").await);
        let waiter = server.spawn_baton(&["run", "out/queue", "--", "echo", "never"], None);
        let waiting = id_of(&job_in_state(&server, "out/queue", "waiting").await);

        let cancelled = server
            .spawn_baton(&["--json", "cancel", &waiting], None)
            .wait(PATIENCE)
            .await;
        assert_code(&cancelled, 0, "baton cancel of a waiting job");
        let answer: Value = serde_json::from_slice(&cancelled.stdout).unwrap();
        assert_eq!(answer["outcome"], "cancelled", "{answer}");
        assert_eq!(answer["job"]["state"], "cancelled", "{answer}");

        let waited = waiter.wait(PATIENCE).await;
        assert_code(&waited, 83, "the waiting baton run hears it was cancelled");
        assert!(!waited.stderr.contains("never"));
        let view = lock_view(&server, "out/queue").await;
        assert!(view["waiters"].as_array().unwrap().is_empty(), "{view}");
        assert_eq!(
            job_detail(&server, &waiting).await["job"]["started_at"],
            Value::Null
        );

        // The holder is cancelled too (its runner stops `sleep`).
        let stopping = server
            .spawn_baton(&["cancel", &holding], None)
            .wait(PATIENCE)
            .await;
        assert_code(&stopping, 0, "baton cancel of the running holder");
        assert_code(&holder.wait(PATIENCE).await, 83, "the holder's baton run");
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_of_a_parallel_batch_stops_and_is_reported_cancelled() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let dir = workdir("baton-parallel-cancel-");
        let parallel = server.spawn_baton(
            &[
                "parallel",
                "--json",
                "-j",
                "2",
                "--ttl",
                "3s",
                "--name",
                "par",
                "--",
                "sh",
                "-c",
                "echo started $0; sleep $0",
                "{}",
                ":::",
                "1000",
                "0",
            ],
            Some(dir.path()),
        );
        let job = id_of(&job_in_state(&server, "par-1-1000", "running").await);
        // Its output streams too.
        eventually(
            "the parallel job's output on the server",
            PATIENCE,
            async || {
                let detail = job_detail(&server, &job).await;
                detail["output_tail"]
                    .as_str()
                    .unwrap()
                    .contains("started 1000")
                    .then_some(())
            },
        )
        .await;
        let cancelled = server
            .spawn_baton(&["cancel", &job], None)
            .wait(PATIENCE)
            .await;
        assert_code(&cancelled, 0, "baton cancel of a parallel job");
        let exited = parallel.wait(PATIENCE).await;
        assert_code(&exited, 81, "a job of the batch did not succeed");
        let results: Vec<Value> = serde_json::from_slice(&exited.stdout).unwrap();
        let result = results
            .iter()
            .find(|result| result["job_id"] == job.as_str())
            .unwrap_or_else(|| panic!("the cancelled job in {results:#?}"));
        assert_eq!(result["state"], "cancelled", "{result}");
        assert!(
            result["reason"].as_str().unwrap().contains("baton cancel"),
            "{result}"
        );
        let other = results
            .iter()
            .find(|result| result["job_id"] != job.as_str())
            .unwrap();
        assert_eq!(other["state"], "succeeded", "{other}");
        assert_eq!(job_detail(&server, &job).await["job"]["state"], "cancelled");
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_without_acquire_on_the_lock_is_forbidden_and_changes_nothing() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = Server::start(&[]).await;
        let key = async |admin: Option<&str>, name: &str, grants: Value| {
            let (status, body) = call(
                &server,
                admin,
                "POST",
                "/v1/keys",
                Some(json!({"name": name, "grants": grants})),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            body["secret"].as_str().unwrap().to_owned()
        };
        let admin = key(None, "admin", json!(["admin:"])).await;
        let runner = key(Some(&admin), "runner", json!(["acquire:team-a/"])).await;
        let reader = key(Some(&admin), "reader", json!(["read:team-a/"])).await;
        let other = key(Some(&admin), "other", json!(["acquire:team-b/"])).await;

        let (status, created) = call(
            &server,
            Some(&runner),
            "POST",
            "/v1/jobs",
            Some(
                json!({"name": "team-a/nightly", "owner": "r", "command": ["true"],
                        "ttl_ms": 600_000}),
            ),
        )
        .await;
        assert_eq!(status, 200, "{created}");
        let job = created["job"]["id"].as_str().unwrap().to_owned();
        let before = call(
            &server,
            Some(&runner),
            "GET",
            &format!("/v1/jobs/{job}"),
            None,
        )
        .await;

        let (status, answer) = call(
            &server,
            Some(&reader),
            "POST",
            &format!("/v1/jobs/{job}/cancel"),
            None,
        )
        .await;
        assert_eq!(status, 403, "a read-only key: {answer}");
        let (status, answer) = call(
            &server,
            Some(&other),
            "POST",
            &format!("/v1/jobs/{job}/cancel"),
            None,
        )
        .await;
        assert_eq!(
            status, 404,
            "another team's key does not learn of the job: {answer}"
        );
        let refused = server
            .spawn_baton(&["--api-key", &reader, "cancel", &job], None)
            .wait(PATIENCE)
            .await;
        assert_code(&refused, 77, "baton cancel with a read-only key");

        let after = call(
            &server,
            Some(&runner),
            "GET",
            &format!("/v1/jobs/{job}"),
            None,
        )
        .await;
        assert_eq!(after, before, "nothing changed");
        assert_eq!(after.1["job"]["state"], "running");
        let (_, audit) = call(&server, Some(&admin), "GET", "/v1/audit", None).await;
        assert!(!audit.to_string().contains("job.cancel"), "{audit}");

        // The runner's own key may.
        let (status, answer) = call(
            &server,
            Some(&runner),
            "POST",
            &format!("/v1/jobs/{job}/cancel"),
            None,
        )
        .await;
        assert_eq!(
            (status, &answer["outcome"]),
            (200, &json!("stopping")),
            "{answer}"
        );
    })
    .await
    .expect("the test took too long");
}

/// A job created over HTTP, output appended, the server restarted: the output is still there.
async fn output_survives_a_restart(server: &mut Server) {
    let (status, created) = server
        .post(
            "/v1/jobs",
            json!({"name": "out/durable", "owner": "r", "command": ["build"], "ttl_ms": 600_000}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let job = created["job"]["id"].as_str().unwrap().to_owned();
    let lease = created["lease"]["id"].as_str().unwrap().to_owned();
    for text in ["compiling\n", "linking\n"] {
        let (status, answer) = server
            .post(
                &format!("/v1/jobs/{job}/output"),
                json!({"lease_id": lease, "text": text}),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    let detail = job_detail(server, &job).await;
    assert_eq!(detail["output_tail"], "compiling\nlinking\n", "{detail}");
    assert_eq!(detail["job"]["output_total_bytes"], 18, "{detail}");
    let started = Instant::now();
    server.kill9().await;
    server.restart().await;
    let detail = eventually("the job after the restart", PATIENCE, async || {
        let (status, body) = server.get(&format!("/v1/jobs/{job}")).await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(detail["job"]["state"], "running", "{detail}");
    assert_eq!(detail["output_tail"], "compiling\nlinking\n", "{detail}");
    // The lease survived too: the runner goes on appending.
    let (status, answer) = server
        .post(
            &format!("/v1/jobs/{job}/output"),
            json!({"lease_id": lease, "text": "done\n"}),
        )
        .await;
    assert_eq!(
        status,
        200,
        "{answer} ({:?} after the kill)",
        started.elapsed()
    );
    let detail = job_detail(server, &job).await;
    assert_eq!(
        detail["output_tail"], "compiling\nlinking\ndone\n",
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_output_survives_a_restart_on_sqlite() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut server = Server::start(&[]).await;
        output_survives_a_restart(&mut server).await;
    })
    .await
    .expect("the test took too long");
}

/// A PostgreSQL schema of the test's own, dropped at the end (declared before the server).
struct Schema {
    url: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        baton_store_postgres::testing::drop_schema(&self.url, &self.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_output_survives_a_restart_on_postgres() {
    use baton_store_postgres::testing;
    let test = "job_output_survives_a_restart";
    let Some(url) = testing::available(test).await else {
        return;
    };
    let schema = Schema {
        name: testing::schema_for(test),
        url,
    };
    testing::drop_schema(&schema.url, &schema.name);
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut server = Server::start(&[
            "--database",
            schema.url.as_str(),
            "--database-schema",
            schema.name.as_str(),
        ])
        .await;
        output_survives_a_restart(&mut server).await;
    })
    .await
    .expect("the test took too long");
}
