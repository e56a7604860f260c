//! Bad input (PRODUCT.md, "Bad input") and G8 (capability) against the real `baton server`:
//! every malformed, out-of-bounds or forged request gets its specific 4xx JSON error (never a
//! 5xx, never a hang) and changes nothing; lease and ticket ids never leak into listings.

mod harness;

use std::time::Duration;

use harness::{Server, lock_path, random_hex32, str_of};
use reqwest::Method;
use serde_json::{Value, json};

const JSON: Option<&str> = Some("application/json");

/// One bad request and the answer it must get.
struct Case {
    what: &'static str,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
    status: u16,
    /// The expected `error.code`; `None` accepts any code (the status range is still checked).
    code: Option<&'static str>,
}

fn case(
    what: &'static str,
    method: Method,
    path: impl Into<String>,
    content_type: Option<&'static str>,
    body: Option<&[u8]>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        what,
        method,
        path: path.into(),
        content_type,
        body: body.map(<[u8]>::to_vec),
        status,
        code: Some(code),
    }
}

/// `POST path` with a JSON body given as text.
fn post(
    what: &'static str,
    path: impl Into<String>,
    body: &str,
    status: u16,
    code: &'static str,
) -> Case {
    case(
        what,
        Method::POST,
        path,
        JSON,
        Some(body.as_bytes()),
        status,
        code,
    )
}

fn get(what: &'static str, path: impl Into<String>, status: u16, code: &'static str) -> Case {
    case(what, Method::GET, path, None, None, status, code)
}

/// Every lease and ticket id the server gave out must look like this (G8: 128 random bits).
fn assert_id_shape(id: &str, prefix: &str) {
    let hex = id
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{id:?} does not start with {prefix:?}"));
    assert_eq!(hex.len(), 32, "{id:?}");
    assert!(
        hex.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{id:?}"
    );
}

/// Fails if `text` shows any of `ids` (whole or their random part) or has an `id` field.
fn assert_no_ids(what: &str, body: &Value, ids: &[String]) {
    let text = body.to_string();
    for id in ids {
        let random = id.rsplit('_').next().unwrap_or(id);
        assert!(
            !text.contains(random),
            "{what} shows the secret id {id}: {text}"
        );
    }
    fn has_id_field(value: &Value) -> bool {
        match value {
            Value::Object(map) => map
                .iter()
                .any(|(key, value)| key == "id" || key.ends_with("_id") || has_id_field(value)),
            Value::Array(items) => items.iter().any(has_id_field),
            _ => false,
        }
    }
    assert!(!has_id_field(body), "{what} has an id field: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_specific_errors_and_change_nothing() {
    // Long ticket lapse and ttl: nothing may change by itself while the table runs.
    let server = Server::start(&["--ticket-lapse", "10m"]).await;
    let held = "bad/held";
    let (status, answer) = server
        .post(
            &lock_path(held, "/acquire"),
            json!({"owner": "holder", "ttl_ms": 600_000}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let lease_id = str_of(&answer["lease"]["id"], "lease.id").to_owned();
    let token = answer["lease"]["token"].as_u64().unwrap_or(0);
    let (status, answer) = server
        .post(
            &lock_path(held, "/acquire"),
            json!({"owner": "waiter", "queue": true, "wait_ms": 0}),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let ticket_id = str_of(&answer["ticket"]["id"], "ticket.id").to_owned();
    assert_id_shape(&lease_id, "lease_");
    assert_id_shape(&ticket_id, "ticket_");

    let (status, before) = server.get("/v1/locks").await;
    assert_eq!(status, 200, "{before}");

    // A fresh lock name: any bad acquire that slipped through would create it.
    let acquire = lock_path("bad/target", "/acquire");
    let renew = format!("/v1/leases/{lease_id}/renew");
    let release = format!("/v1/leases/{lease_id}/release");
    let wait = format!("/v1/tickets/{ticket_id}/wait");
    let forged_lease = format!("lease_{}", random_hex32());
    let forged_ticket = format!("ticket_{}", random_hex32());
    let long_name = "a".repeat(256);
    let long_owner = "o".repeat(256);
    let huge = format!(r#"{{"owner":"a","owner_key":"{}"}}"#, "k".repeat(17 * 1024));

    let mut cases = vec![
        // Bodies.
        post(
            "malformed JSON",
            &acquire,
            r#"{"owner":"#,
            400,
            "invalid_body",
        ),
        post(
            "a JSON array",
            &acquire,
            r#"[{"owner":"a"}]"#,
            400,
            "invalid_body",
        ),
        post("JSON null", &acquire, "null", 400, "invalid_body"),
        post("a JSON string", &acquire, r#""owner""#, 400, "invalid_body"),
        post(
            "missing owner",
            &acquire,
            r#"{"ttl_ms":5000}"#,
            400,
            "invalid_body",
        ),
        post("empty object", &acquire, "{}", 400, "invalid_body"),
        case(
            "empty body",
            Method::POST,
            &acquire,
            JSON,
            Some(b""),
            400,
            "invalid_body",
        ),
        post(
            "unknown field",
            &acquire,
            r#"{"owner":"a","tll_ms":5}"#,
            400,
            "invalid_body",
        ),
        post(
            "owner is a number",
            &acquire,
            r#"{"owner":5}"#,
            400,
            "invalid_body",
        ),
        post(
            "ttl_ms is a string",
            &acquire,
            r#"{"owner":"a","ttl_ms":"5000"}"#,
            400,
            "invalid_body",
        ),
        post(
            "ttl_ms is negative",
            &acquire,
            r#"{"owner":"a","ttl_ms":-1}"#,
            400,
            "invalid_body",
        ),
        post(
            "ttl_ms overflows u64",
            &acquire,
            r#"{"owner":"a","ttl_ms":18446744073709551616}"#,
            400,
            "invalid_body",
        ),
        post(
            "capacity is fractional",
            &acquire,
            r#"{"owner":"a","capacity":1.5}"#,
            400,
            "invalid_body",
        ),
        post(
            "capacity overflows u32",
            &acquire,
            r#"{"owner":"a","capacity":4294967296}"#,
            400,
            "invalid_body",
        ),
        post(
            "queue is a string",
            &acquire,
            r#"{"owner":"a","queue":"yes"}"#,
            400,
            "invalid_body",
        ),
        post(
            "duplicate field",
            &acquire,
            r#"{"owner":"a","owner":"b"}"#,
            400,
            "invalid_body",
        ),
        case(
            "invalid UTF-8",
            Method::POST,
            &acquire,
            JSON,
            Some(b"{\"owner\":\"\xff\"}"),
            400,
            "invalid_body",
        ),
        case(
            "text/plain with a JSON body",
            Method::POST,
            &acquire,
            Some("text/plain"),
            Some(br#"{"owner":"a"}"#),
            415,
            "unsupported_media_type",
        ),
        case(
            "no content type with a JSON body",
            Method::POST,
            &acquire,
            None,
            Some(br#"{"owner":"a"}"#),
            415,
            "unsupported_media_type",
        ),
        case(
            "form content type",
            Method::POST,
            &acquire,
            Some("application/x-www-form-urlencoded"),
            Some(b"owner=a"),
            415,
            "unsupported_media_type",
        ),
        case(
            "a body over 16 KiB",
            Method::POST,
            &acquire,
            JSON,
            Some(huge.as_bytes()),
            413,
            "body_too_large",
        ),
        // Names.
        post(
            "a space in the name",
            lock_path("a b", "/acquire"),
            r#"{"owner":"a"}"#,
            400,
            "invalid_name",
        ),
        post(
            "a non-ASCII name",
            lock_path("é", "/acquire"),
            r#"{"owner":"a"}"#,
            400,
            "invalid_name",
        ),
        post(
            "a name of 256 characters",
            lock_path(&long_name, "/acquire"),
            r#"{"owner":"a"}"#,
            400,
            "invalid_name",
        ),
        post(
            "a name that is not UTF-8",
            "/v1/locks/%FF/acquire",
            r#"{"owner":"a"}"#,
            400,
            "invalid_name",
        ),
        post(
            "a name with a percent sign",
            "/v1/locks/a%25b/acquire",
            r#"{"owner":"a"}"#,
            400,
            "invalid_name",
        ),
        get(
            "GET a lock with a bad name",
            "/v1/locks/a%20b",
            400,
            "invalid_name",
        ),
        get(
            "history of a bad name",
            "/v1/locks/a%20b/history",
            400,
            "invalid_name",
        ),
        // Bounds.
        post(
            "ttl_ms 0",
            &acquire,
            r#"{"owner":"a","ttl_ms":0}"#,
            400,
            "invalid_ttl",
        ),
        post(
            "ttl_ms 499",
            &acquire,
            r#"{"owner":"a","ttl_ms":499}"#,
            400,
            "invalid_ttl",
        ),
        post(
            "ttl_ms 86400001",
            &acquire,
            r#"{"owner":"a","ttl_ms":86400001}"#,
            400,
            "invalid_ttl",
        ),
        post(
            "wait_ms 60001",
            &acquire,
            r#"{"owner":"a","wait_ms":60001}"#,
            400,
            "invalid_wait",
        ),
        post(
            "capacity 0",
            &acquire,
            r#"{"owner":"a","capacity":0}"#,
            400,
            "invalid_capacity",
        ),
        post(
            "capacity 10001",
            &acquire,
            r#"{"owner":"a","capacity":10001}"#,
            400,
            "invalid_capacity",
        ),
        post(
            "owner empty",
            &acquire,
            r#"{"owner":""}"#,
            400,
            "invalid_owner",
        ),
        post(
            "owner with a newline",
            &acquire,
            r#"{"owner":"a\nb"}"#,
            400,
            "invalid_owner",
        ),
        post(
            "owner of 256 bytes",
            &acquire,
            &format!(r#"{{"owner":"{long_owner}"}}"#),
            400,
            "invalid_owner",
        ),
        post(
            "owner_key with a newline",
            &acquire,
            r#"{"owner":"a","owner_key":"k\n"}"#,
            400,
            "invalid_owner",
        ),
        post(
            "request_id with a space",
            &acquire,
            r#"{"owner":"a","request_id":"r 1"}"#,
            400,
            "invalid_request_id",
        ),
        post(
            "request_id empty",
            &acquire,
            r#"{"owner":"a","request_id":""}"#,
            400,
            "invalid_request_id",
        ),
        // The real lease and ticket, with bad bodies: they must stay as they are.
        post(
            "renew with ttl_ms 499",
            &renew,
            r#"{"ttl_ms":499}"#,
            400,
            "invalid_ttl",
        ),
        post(
            "renew with an unknown field",
            &renew,
            r#"{"ttl":5000}"#,
            400,
            "invalid_body",
        ),
        case(
            "release with text/plain",
            Method::POST,
            &release,
            Some("text/plain"),
            Some(b"please"),
            415,
            "unsupported_media_type",
        ),
        post(
            "release with malformed JSON",
            &release,
            "{",
            400,
            "invalid_body",
        ),
        post(
            "wait with wait_ms 60001",
            &wait,
            r#"{"wait_ms":60001}"#,
            400,
            "invalid_wait",
        ),
        post(
            "wait with an unknown field",
            &wait,
            r#"{"wait":5}"#,
            400,
            "invalid_body",
        ),
        // Forged and misplaced ids.
        post(
            "renew a forged lease id",
            format!("/v1/leases/{forged_lease}/renew"),
            "{}",
            404,
            "lease_not_found",
        ),
        post(
            "release a forged lease id",
            format!("/v1/leases/{forged_lease}/release"),
            "{}",
            404,
            "lease_not_found",
        ),
        post(
            "wait on a forged ticket id",
            format!("/v1/tickets/{forged_ticket}/wait"),
            "{}",
            404,
            "ticket_not_found",
        ),
        case(
            "cancel a forged ticket id",
            Method::DELETE,
            format!("/v1/tickets/{forged_ticket}"),
            None,
            None,
            404,
            "ticket_not_found",
        ),
        post(
            "lease id of the wrong shape",
            "/v1/leases/lease_123/renew",
            "{}",
            400,
            "invalid_id",
        ),
        post(
            "lease id in upper case",
            format!("/v1/leases/{}/renew", lease_id.to_uppercase()),
            "{}",
            400,
            "invalid_id",
        ),
        post(
            "lease id with upper-case hex",
            format!("/v1/leases/lease_{}/release", random_hex32().to_uppercase()),
            "{}",
            400,
            "invalid_id",
        ),
        post(
            "lease id without its prefix",
            format!("/v1/leases/{}/release", random_hex32()),
            "{}",
            400,
            "invalid_id",
        ),
        post(
            "ticket id of the wrong shape",
            "/v1/tickets/ticket_xyz/wait",
            "{}",
            400,
            "invalid_id",
        ),
        post(
            "a ticket id as a lease id (renew)",
            format!("/v1/leases/{ticket_id}/renew"),
            "{}",
            400,
            "invalid_id",
        ),
        post(
            "a ticket id as a lease id (release)",
            format!("/v1/leases/{ticket_id}/release"),
            "{}",
            400,
            "invalid_id",
        ),
        post(
            "a lease id as a ticket id (wait)",
            format!("/v1/tickets/{lease_id}/wait"),
            "{}",
            400,
            "invalid_id",
        ),
        case(
            "a lease id as a ticket id (cancel)",
            Method::DELETE,
            format!("/v1/tickets/{lease_id}"),
            None,
            None,
            400,
            "invalid_id",
        ),
        // Queries.
        get(
            "unknown query parameter",
            "/v1/locks?foo=1",
            400,
            "invalid_query",
        ),
        get("limit=0", "/v1/locks?limit=0", 400, "invalid_query"),
        get(
            "limit not a number",
            "/v1/locks?limit=ten",
            400,
            "invalid_query",
        ),
        get(
            "limit over the maximum",
            "/v1/locks?limit=10001",
            400,
            "invalid_query",
        ),
        get(
            "after with a bad name",
            "/v1/locks?after=a%20b",
            400,
            "invalid_query",
        ),
        get(
            "history limit=0",
            lock_path(held, "/history?limit=0"),
            400,
            "invalid_query",
        ),
        get(
            "history limit over the maximum",
            lock_path(held, "/history?limit=1001"),
            400,
            "invalid_query",
        ),
        get(
            "history unknown parameter",
            lock_path(held, "/history?since=1"),
            400,
            "invalid_query",
        ),
        // Tokens.
        post(
            "fence token 0",
            lock_path(held, "/fence"),
            r#"{"token":0}"#,
            400,
            "unknown_token",
        ),
        post(
            "fence a token never granted",
            lock_path(held, "/fence"),
            r#"{"token":999999999}"#,
            400,
            "unknown_token",
        ),
        post(
            "fence a negative token",
            lock_path(held, "/fence"),
            r#"{"token":-1}"#,
            400,
            "invalid_body",
        ),
        post(
            "fence without a token",
            lock_path(held, "/fence"),
            "{}",
            400,
            "invalid_body",
        ),
        post(
            "revoke an unknown token",
            lock_path(held, "/revoke"),
            r#"{"token":999999999}"#,
            404,
            "holder_not_found",
        ),
        post(
            "revoke on an unknown lock",
            lock_path("bad/none", "/revoke"),
            &format!(r#"{{"token":{token}}}"#),
            404,
            "lock_not_found",
        ),
        get(
            "an unknown lock",
            lock_path("bad/none", ""),
            404,
            "lock_not_found",
        ),
        // Paths and methods.
        get("unknown path", "/v1/nope", 404, "not_found"),
        get("unknown version", "/v2/locks", 404, "not_found"),
        get(
            "unknown path under a lock",
            lock_path(held, "/nope"),
            404,
            "not_found",
        ),
        get("GET on acquire", &acquire, 405, "method_not_allowed"),
        case(
            "DELETE on the lock list",
            Method::DELETE,
            "/v1/locks",
            None,
            None,
            405,
            "method_not_allowed",
        ),
        case(
            "PUT on renew",
            Method::PUT,
            &renew,
            JSON,
            Some(b"{}"),
            405,
            "method_not_allowed",
        ),
        case(
            "DELETE on a lease",
            Method::DELETE,
            format!("/v1/leases/{lease_id}/release"),
            None,
            None,
            405,
            "method_not_allowed",
        ),
    ];
    // An empty name segment may route anywhere in 4xx; only the error shape is checked.
    for (what, method, path) in [
        (
            "an empty name (acquire)",
            Method::POST,
            "/v1/locks//acquire",
        ),
        ("an empty name (history)", Method::GET, "/v1/locks//history"),
        ("an empty lease id", Method::POST, "/v1/leases//renew"),
    ] {
        cases.push(Case {
            what,
            method,
            path: path.to_owned(),
            content_type: JSON,
            body: Some(br#"{"owner":"a"}"#.to_vec()),
            status: 0,
            code: None,
        });
    }

    let mut failures = Vec::new();
    for case in &cases {
        let answer = tokio::time::timeout(
            Duration::from_secs(20),
            server.try_send(
                case.method.clone(),
                &case.path,
                case.content_type,
                case.body.as_deref(),
            ),
        )
        .await;
        let (status, body) = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                failures.push(format!("{}: {error}", case.what));
                continue;
            }
            Err(_) => {
                failures.push(format!("{}: no answer within 20 s", case.what));
                continue;
            }
        };
        let code = body["error"]["code"].as_str();
        let message = body["error"]["message"].as_str().unwrap_or("");
        let shaped = code.is_some_and(|code| !code.is_empty()) && !message.is_empty();
        let status_ok = if case.status == 0 {
            (400..500).contains(&status)
        } else {
            status == case.status
        };
        let code_ok = case.code.is_none_or(|expected| code == Some(expected));
        if !(shaped && status_ok && code_ok) {
            failures.push(format!(
                "{} ({} {}): expected {} {}, got {status} {body}",
                case.what,
                case.method,
                case.path.chars().take(80).collect::<String>(),
                case.status,
                case.code.unwrap_or("(any code)")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad requests were answered wrongly:\n{}\nserver log:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        server.log_text()
    );

    // Nothing changed: same locks, holders (with their deadlines), waiters and tokens.
    let (status, after) = server.get("/v1/locks").await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(before, after, "the bad requests changed the server's state");

    // And the lease and ticket still work.
    let (status, body) = server.post(&renew, json!({})).await;
    assert_eq!(status, 200, "the held lease no longer renews: {body}");
    let (status, body) = server.post(&wait, json!({"wait_ms": 0})).await;
    assert_eq!(status, 202, "the queued ticket no longer waits: {body}");
    assert_eq!(body["ticket"]["position"], 1, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_and_ticket_ids_never_appear_in_listings() {
    let server = Server::start(&["--ticket-lapse", "10m"]).await;
    let name = "g8/lock";
    let mut ids = Vec::new();
    // A past hold (for history), a live semaphore holder pair, and two queued tickets.
    let mut leases = Vec::new();
    for owner in ["past", "h1", "h2"] {
        let (status, body) = server
            .post(
                &lock_path(name, "/acquire"),
                json!({"owner": owner, "owner_key": format!("key-{owner}"), "capacity": 2,
                       "request_id": format!("req-{owner}"), "wait_ms": 0}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let id = str_of(&body["lease"]["id"], "id").to_owned();
        assert_id_shape(&id, "lease_");
        ids.push(id.clone());
        leases.push(id);
        if owner == "past" {
            let (status, body) = server
                .post(&format!("/v1/leases/{}/release", leases[0]), json!({}))
                .await;
            assert_eq!((status, &body["released"]), (200, &json!(true)), "{body}");
        }
    }
    for owner in ["w1", "w2"] {
        let (status, body) = server
            .post(
                &lock_path(name, "/acquire"),
                json!({"owner": owner, "queue": true, "wait_ms": 0}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        let id = str_of(&body["ticket"]["id"], "id").to_owned();
        assert_id_shape(&id, "ticket_");
        ids.push(id);
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "an id was issued twice: {ids:?}");

    let (status, busy) = server
        .post(&lock_path(name, "/acquire"), json!({"owner": "try"}))
        .await;
    assert_eq!(
        (status, &busy["error"]["code"]),
        (409, &json!("busy")),
        "{busy}"
    );
    assert_eq!(busy["holders"].as_array().map(Vec::len), Some(2), "{busy}");

    let (status, list) = server.get("/v1/locks").await;
    assert_eq!(status, 200, "{list}");
    let (status, one) = server.get(&lock_path(name, "")).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["holders"].as_array().map(Vec::len), Some(2), "{one}");
    assert_eq!(one["waiters"].as_array().map(Vec::len), Some(2), "{one}");
    let (status, history) = server.get(&lock_path(name, "/history")).await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["entries"][0]["owner"], "past", "{history}");

    for (what, body) in [
        ("GET /v1/locks", &list),
        ("GET /v1/locks/{name}", &one),
        ("history", &history),
        ("a 409 busy answer", &busy),
    ] {
        assert_no_ids(what, body, &ids);
    }
}
