//! The OpenAPI document, generated from the handlers' annotations and the wire types, then
//! refined with what the annotations cannot say: the bounds the server checks (name and id
//! patterns, ttl/wait/capacity ranges, query limits, all from `baton_core::limits` and this
//! crate's constants) and the error answers every operation can give (400 invalid input,
//! 413/415 for bodies, 503 when the store cannot commit or a limit is reached, 429 over a key's
//! rate and, where a key's quotas apply, over its quota).
//!
//! A client (or schemathesis, run by `.ci/run`) that keeps to the document is therefore never
//! refused for input the document allows, and every status it can see is documented.
//!
//! `ApiDoc` lists the documented operations (each handler lives with its API) and declares the
//! bearer key; [`openapi`] serves the document at `/v1/openapi.json`.

use std::sync::OnceLock;

use axum::response::{IntoResponse, Response};
use baton_core::limits;
use serde_json::{Map, Value, json};
use utoipa::OpenApi;

use crate::jobs::JOB_LIST_LIMIT_MAX;
use crate::limits::{HISTORY_LIMIT_MAX, LIST_LIMIT_MAX, WAIT_MS_MAX};

/// The document as JSON text, built once.
pub fn document_json() -> String {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT
        .get_or_init(|| {
            let mut document = ApiDoc::openapi();
            document.info.version = env!("CARGO_PKG_VERSION").to_owned();
            serde_json::to_value(&document)
                .map(|mut value| {
                    refine(&mut value);
                    value.to_string()
                })
                .unwrap_or_else(|error| {
                    format!("{{\"error\":{{\"code\":\"internal\",\"message\":\"{error}\"}}}}")
                })
        })
        .clone()
}

/// `GET /v1/openapi.json`: the document, open without a key.
pub(crate) async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        crate::openapi::document_json(),
    )
        .into_response()
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "baton",
        description = "Leases, fencing tokens and fair queues across machines."
    ),
    paths(
        crate::locks::acquire,
        crate::locksets::acquire_set,
        crate::locks::wait_ticket,
        crate::locks::cancel_ticket,
        crate::locks::renew,
        crate::locks::release,
        crate::locks::list_locks,
        crate::locks::get_lock,
        crate::locks::revoke,
        crate::locks::fence,
        crate::locks::history,
        crate::health::healthz,
        crate::health::readyz,
        crate::health::metrics,
        crate::jobs::create,
        crate::jobs::list,
        crate::jobs::get_one,
        crate::jobs::wait,
        crate::jobs::heartbeat,
        crate::jobs::finish,
        crate::jobs::append_output,
        crate::jobs::cancel,
        crate::keys::create,
        crate::keys::list,
        crate::keys::revoke,
        crate::keys::audit,
        crate::events::events
    ),
    modifiers(&BearerAuth)
)]
pub(crate) struct ApiDoc;

/// Declares the bearer API key in the OpenAPI document, required everywhere but the open paths.
struct BearerAuth;

/// The paths answered without a key (see `auth`).
const OPEN_PATHS: &[&str] = &["/healthz", "/readyz", "/v1/openapi.json"];

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`baton_…`), when the server has any. 401 without a valid \
                         one, 403 when it does not grant the call, 429 over its rate limit.",
                    ))
                    .build(),
            ),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "api_key",
            Vec::<String>::new(),
        )]);
        // The open paths need no key: say so per operation (an empty requirement list).
        for path in OPEN_PATHS {
            if let Some(item) = openapi.paths.paths.get_mut(*path) {
                for operation in [&mut item.get, &mut item.post, &mut item.delete]
                    .into_iter()
                    .flatten()
                {
                    operation.security = Some(Vec::new());
                }
            }
        }
    }
}

/// A lock name: 1 to 255 characters of `A-Z a-z 0-9 . _ : / @ -`, but not `.` or `..` (spelled
/// without look-ahead, which not every JSON Schema regex engine has).
fn lock_name_pattern() -> String {
    let max = limits::LOCK_NAME_BYTES_MAX;
    let all = "A-Za-z0-9._:/@-";
    let no_dot = "A-Za-z0-9_:/@-";
    format!(
        "^(?:[{no_dot}][{all}]{{0,{}}}|\\.[{no_dot}][{all}]{{0,{}}}|\\.\\.[{all}]{{1,{}}})$",
        max - 1,
        max - 2,
        max - 2
    )
}

/// An owner label or key: 1 to 255 bytes without control characters. (The document counts
/// characters; the server counts UTF-8 bytes, so a long non-ASCII label can still be refused.)
fn owner_schema() -> Value {
    json!({
        "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]+$",
        "minLength": 1,
        "maxLength": limits::OWNER_BYTES_MAX,
    })
}

fn label_schema(max: usize) -> Value {
    json!({"pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]+$", "minLength": 1, "maxLength": max})
}

fn request_id_schema() -> Value {
    json!({"pattern": format!("^[A-Za-z0-9._:-]{{1,{}}}$", limits::REQUEST_ID_BYTES_MAX)})
}

fn id_schema(prefix: &str) -> Value {
    json!({"pattern": format!("^{prefix}[0-9a-f]{{32}}$")})
}

/// A lease's value: at most [`limits::LEASE_VALUE_BYTES_MAX`] bytes without NUL. (The document
/// counts characters, the server bytes: a long non-ASCII value can still be refused, with 400.)
fn value_schema() -> Value {
    json!({"pattern": "^[^\\x00]*$", "maxLength": limits::LEASE_VALUE_BYTES_MAX})
}

fn range(minimum: u64, maximum: u64) -> Value {
    json!({"minimum": minimum, "maximum": maximum})
}

fn ttl_schema() -> Value {
    range(limits::TTL_MS_MIN, limits::TTL_MS_MAX)
}

fn wait_schema() -> Value {
    range(0, WAIT_MS_MAX)
}

fn capacity_schema() -> Value {
    range(1, u64::from(limits::CAPACITY_MAX))
}

/// Merges `extra` into the object at `target`.
fn merge(target: Option<&mut Value>, extra: Value) {
    if let (Some(Value::Object(target)), Value::Object(extra)) = (target, extra) {
        target.extend(extra);
    }
}

/// Constraints of request body fields, by component and property.
fn body_constraints() -> Vec<(&'static str, &'static str, Value)> {
    let name = json!({"pattern": lock_name_pattern()});
    vec![
        ("AcquireRequest", "owner", owner_schema()),
        ("AcquireRequest", "owner_key", owner_schema()),
        ("AcquireRequest", "ttl_ms", ttl_schema()),
        ("AcquireRequest", "capacity", capacity_schema()),
        ("AcquireRequest", "wait_ms", wait_schema()),
        ("AcquireRequest", "request_id", request_id_schema()),
        ("AcquireRequest", "value", value_schema()),
        ("AcquireSetRequest", "owner", owner_schema()),
        ("AcquireSetRequest", "ttl_ms", ttl_schema()),
        ("AcquireSetRequest", "wait_ms", wait_schema()),
        ("AcquireSetRequest", "request_id", request_id_schema()),
        ("AcquireSetRequest", "value", value_schema()),
        (
            "AcquireSetRequest",
            "locks",
            json!({
                "minItems": 1,
                "maxItems": limits::LOCK_SET_LOCKS_MAX,
                "uniqueItems": true,
                "items": {"type": "string", "pattern": lock_name_pattern()},
            }),
        ),
        ("RenewRequest", "value", value_schema()),
        ("CreateJobRequest", "value", value_schema()),
        ("WaitRequest", "wait_ms", wait_schema()),
        ("RenewRequest", "ttl_ms", ttl_schema()),
        ("CreateJobRequest", "name", name.clone()),
        ("CreateJobRequest", "lock", name),
        ("CreateJobRequest", "capacity", capacity_schema()),
        ("CreateJobRequest", "owner", owner_schema()),
        (
            "CreateJobRequest",
            "host",
            label_schema(limits::HOST_BYTES_MAX),
        ),
        (
            "CreateJobRequest",
            "command",
            json!({"maxItems": limits::COMMAND_ARGS_MAX}),
        ),
        ("CreateJobRequest", "ttl_ms", ttl_schema()),
        ("CreateJobRequest", "wait_ms", wait_schema()),
        ("CreateJobRequest", "request_id", request_id_schema()),
        (
            "CreateJobRequest",
            "min_hold_ms",
            range(0, limits::MIN_HOLD_MS_MAX),
        ),
        (
            "CreateJobRequest",
            "once_per_ms",
            range(limits::ONCE_PER_MS_MIN, limits::ONCE_PER_MS_MAX),
        ),
        (
            "CreateJobRequest",
            "batch",
            label_schema(limits::BATCH_BYTES_MAX),
        ),
        ("HeartbeatRequest", "lease_id", id_schema("lease_")),
        ("HeartbeatRequest", "ttl_ms", ttl_schema()),
        ("FinishJobRequest", "lease_id", id_schema("lease_")),
        ("FinishJobRequest", "ticket_id", id_schema("ticket_")),
        ("FinishJobRequest", "reason", json!({"maxLength": 1_024})),
        // The states a runner may report (`JobState::is_reportable`).
        (
            "FinishJobRequest",
            "state",
            json!({"enum": ["succeeded", "failed", "cancelled", "lost", "timed_out"]}),
        ),
        ("AppendOutputRequest", "lease_id", id_schema("lease_")),
        // The server counts bytes, the document characters (as for the labels).
        (
            "AppendOutputRequest",
            "text",
            json!({"maxLength": limits::OUTPUT_APPEND_BYTES_MAX}),
        ),
        ("JobWaitRequest", "ticket_id", id_schema("ticket_")),
        ("JobWaitRequest", "wait_ms", wait_schema()),
        // The server counts bytes, the document characters (as for the other labels).
        (
            "CreateKeyRequest",
            "name",
            label_schema(crate::auth::KEY_NAME_BYTES_MAX),
        ),
        (
            "CreateKeyRequest",
            "grants",
            json!({
                "minItems": 1,
                "maxItems": crate::auth::GRANTS_MAX,
                "items": {"type": "string", "pattern": format!(
                    "^(read|acquire|admin):[A-Za-z0-9._:/@-]{{0,{}}}$",
                    limits::LOCK_NAME_BYTES_MAX
                )},
            }),
        ),
        (
            "CreateKeyRequest",
            "rate_per_sec",
            json!({"minimum": 1, "maximum": crate::auth::RATE_PER_SEC_MAX}),
        ),
        (
            "CreateKeyRequest",
            "leases_max",
            range(0, crate::auth::QUOTA_MAX),
        ),
        (
            "CreateKeyRequest",
            "waiters_max",
            range(0, crate::auth::QUOTA_MAX),
        ),
        (
            "CreateKeyRequest",
            "locks_max",
            range(0, crate::auth::QUOTA_MAX),
        ),
        (
            "CreateKeyRequest",
            "jobs_max",
            range(0, crate::auth::QUOTA_MAX),
        ),
    ]
}

/// Constraints of a path or query parameter of the operation at `path`.
fn parameter_constraints(path: &str, location: &str, name: &str) -> Option<Value> {
    if path.starts_with("/v1/keys/") && (location, name) == ("path", "id") {
        return Some(json!({"pattern": "^key_[0-9a-f]{16}$"}));
    }
    let id_prefix = if path.starts_with("/v1/leases/") {
        "lease_"
    } else if path.starts_with("/v1/tickets/") {
        "ticket_"
    } else {
        "job_"
    };
    let states = "queued|waiting|running|succeeded|failed|cancelled|lost|timed_out|skipped|\
                  coalesced";
    Some(match (location, name) {
        ("path", "name") => json!({"pattern": lock_name_pattern()}),
        ("path", "id") => id_schema(id_prefix),
        ("query", "after") => json!({"pattern": lock_name_pattern()}),
        ("query", "limit") => {
            let max = match path {
                "/v1/locks" => LIST_LIMIT_MAX,
                "/v1/jobs" => JOB_LIST_LIMIT_MAX,
                "/v1/audit" => crate::keys::AUDIT_LIMIT_MAX,
                _ => HISTORY_LIMIT_MAX,
            };
            json!({"type": "integer", "minimum": 1, "maximum": max})
        }
        ("query", "state") => json!({"pattern": format!("^({states})(,({states}))*$")}),
        ("query", "since" | "until") => json!({"format": "date-time"}),
        ("query", "before") => json!({"type": "integer", "minimum": 0}),
        _ => return None,
    })
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    })
}

fn refine(document: &mut Value) {
    if let Some(schemas) = document
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for (component, property, extra) in body_constraints() {
            merge(
                schemas
                    .get_mut(component)
                    .and_then(|schema| schema.get_mut("properties"))
                    .and_then(|properties| properties.get_mut(property)),
                extra,
            );
        }
    }
    let optional_bodies: Vec<String> = document
        .pointer("/components/schemas")
        .and_then(Value::as_object)
        .map(|schemas| {
            schemas
                .iter()
                .filter(|(_, schema)| {
                    schema.get("properties").is_some()
                        && schema
                            .get("required")
                            .and_then(Value::as_array)
                            .is_none_or(Vec::is_empty)
                })
                .map(|(name, _)| name.clone())
                .collect()
        })
        .unwrap_or_default();
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in item.iter_mut() {
            refine_operation(path, method, operation, &optional_bodies);
        }
    }
}

/// Operations that can answer `429 quota_exceeded`: the ones that create a lease, a ticket, a
/// lock or a job record (a ticket granted from the queue never is).
pub(crate) const QUOTA: [(&str, &str); 3] = [
    ("post", "/v1/locks/{name}/acquire"),
    ("post", "/v1/locksets/acquire"),
    ("post", "/v1/jobs"),
];

/// Operations that can answer 410: a retried request whose lease or ticket ended, a lapsed or
/// cancelled ticket, a lost or revoked lease.
const GONE: [&str; 9] = [
    "/v1/locks/{name}/acquire",
    "/v1/locksets/acquire",
    "/v1/tickets/{id}/wait",
    "/v1/leases/{id}/renew",
    "/v1/jobs",
    "/v1/jobs/{id}/wait",
    "/v1/jobs/{id}/heartbeat",
    "/v1/jobs/{id}/finish",
    "/v1/jobs/{id}/output",
];

fn refine_operation(path: &str, method: &str, operation: &mut Value, optional_bodies: &[String]) {
    // An empty body reads as `{}`, so a body whose fields are all optional may be left out.
    if let Some(body) = operation.get_mut("requestBody") {
        let schema = body
            .pointer("/content/application~1json/schema/$ref")
            .and_then(Value::as_str)
            .and_then(|reference| reference.rsplit('/').next())
            .map(str::to_owned);
        if schema.is_some_and(|name| optional_bodies.contains(&name)) {
            body["required"] = Value::Bool(false);
        }
    }
    if let Some(parameters) = operation
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
    {
        for parameter in parameters.iter_mut() {
            let location = parameter["in"].as_str().unwrap_or_default().to_owned();
            let name = parameter["name"].as_str().unwrap_or_default().to_owned();
            if let Some(extra) = parameter_constraints(path, &location, &name) {
                merge(parameter.get_mut("schema"), extra);
            }
        }
    }
    if !path.starts_with("/v1/") {
        // `/metrics` is outside `/v1` but, unlike the health checks, needs a key where the
        // server has keys: it answers 401, 403 and 429 like every `/v1` route.
        if !crate::auth::OPEN_PATHS.contains(&path)
            && let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
        {
            add_auth_responses(responses, method, path);
        }
        return;
    }
    let has_body = operation.get("requestBody").is_some();
    let has_path_parameter = path.contains('{');
    let Some(responses) = operation
        .get_mut("responses")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let add = |responses: &mut Map<String, Value>, status: &str, description: &str| {
        responses
            .entry(status)
            .or_insert_with(|| error_response(description));
    };
    add(
        responses,
        "400",
        "Invalid input: a name, id, body field or query parameter out of bounds",
    );
    add(
        responses,
        "503",
        "unavailable (the store cannot commit) or limit_reached: try again later",
    );
    if path != "/v1/openapi.json" {
        add_auth_responses(responses, method, path);
    }
    if has_path_parameter {
        add(
            responses,
            "404",
            "Not found: no lock, lease, ticket or job has this name or id (see the code)",
        );
    }
    if GONE.contains(&path) {
        add(
            responses,
            "410",
            "Gone: the lease ended or the ticket lapsed or was cancelled (see the code)",
        );
    }
    if has_body {
        add(
            responses,
            "408",
            "body_timeout: the body did not arrive whole within the server's body read timeout",
        );
        add(
            responses,
            "413",
            "body_too_large (a declared Content-Length over the cap is refused before the body is read)",
        );
        add(
            responses,
            "415",
            "unsupported_media_type: send the body as application/json",
        );
    }
}

/// The answers of a route that needs a key where the server has keys: 401, 403 and 429.
fn add_auth_responses(responses: &mut Map<String, Value>, method: &str, path: &str) {
    let add = |responses: &mut Map<String, Value>, status: &str, description: &str| {
        responses
            .entry(status)
            .or_insert_with(|| error_response(description));
    };
    add(
        responses,
        "401",
        "unauthorized: no valid API key (the server has keys; send Authorization: Bearer KEY)",
    );
    add(
        responses,
        "403",
        "forbidden: the key does not grant this call; or host_not_allowed: a server without \
         keys answers only an IP address, localhost or an --allowed-host name in Host",
    );
    add(
        responses,
        "429",
        if QUOTA.contains(&(method, path)) {
            "rate_limited: over the key's requests per second; try again after Retry-After. \
             Or quota_exceeded: the key already has as many leases, waiters, locks or jobs as \
             its quota allows (`quota` in the body names which, with its limit); other keys \
             are not affected, and no Retry-After: release, cancel or finish something first"
        } else {
            "rate_limited: over the key's requests per second; try again after Retry-After"
        },
    );
}
