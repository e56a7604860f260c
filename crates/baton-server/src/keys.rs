//! `/v1/keys` and `/v1/audit`: API key management and the audit log, for administrators of
//! every lock (a key granted `admin:`), or anyone on a server that has no keys yet (that is how
//! the first key is made on a loopback server).

use axum::Json;
use axum::extract::{Path, State};
use baton_proto as proto;
use baton_proto::ErrorCode;
use baton_store::{ApiKey, AuditEntry};

use crate::auth::{self, Caller, KeySource};
use crate::error::ApiError;
use crate::extract::{JsonBody, QueryMap};
use crate::state::AppState;
use crate::wire::timestamp;

/// Most audit entries one `GET /v1/audit` returns.
pub const AUDIT_LIMIT_MAX: usize = 1_000;

async fn record(
    state: &AppState,
    caller: &Caller,
    action: &str,
    target: &str,
    detail: String,
) -> Result<(), ApiError> {
    state
        .store
        .append_audit(AuditEntry {
            seq: 0,
            at: state.store.now_ms(),
            actor: caller.actor().to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail: Some(detail),
        })
        .await?;
    Ok(())
}

fn internal(error: &anyhow::Error) -> ApiError {
    tracing::error!(%error, "cannot make a key");
    ApiError::new(
        ErrorCode::Unavailable,
        "the server cannot make a key right now; see its log",
    )
}

/// Create an API key; its secret is in this answer only.
#[utoipa::path(post, path = "/v1/keys", tag = "keys",
    request_body = proto::CreateKeyRequest,
    responses(
        (status = 200, description = "Created; the secret is shown this once", body = proto::CreatedKey),
        (status = 400, description = "invalid_key", body = proto::ErrorBody),
        (status = 401, description = "unauthorized", body = proto::ErrorBody),
        (status = 403, description = "forbidden: needs admin over every lock", body = proto::ErrorBody),
    ))]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<proto::CreateKeyRequest>,
) -> Result<Json<proto::CreatedKey>, ApiError> {
    caller.require_full_admin()?;
    let grants = auth::validate_key(&request.name, &request.grants, request.rate_per_sec)
        .map_err(|message| ApiError::new(ErrorCode::InvalidKey, message))?;
    let quota = auth::validate_quota(
        request.leases_max,
        request.waiters_max,
        request.locks_max,
        request.jobs_max,
    )
    .map_err(|message| ApiError::new(ErrorCode::InvalidKey, message))?;
    let secret = auth::generate_secret().map_err(|error| internal(&error))?;
    // A put replaces the key with the same id: never reuse one (64 random bits; a collision
    // is all but impossible, but it would silently replace another key).
    state.auth.reload().await?;
    let current = state.auth.current();
    let id = loop {
        let id = auth::generate_key_id().map_err(|error| internal(&error))?;
        if !current.keys.iter().any(|(key, _)| key.id == id) {
            break id;
        }
    };
    let key = ApiKey {
        id,
        name: request.name,
        secret_sha256: auth::hash_secret(&secret),
        grants,
        rate_per_sec: request.rate_per_sec,
        created_at: state.store.now_ms(),
        revoked_at: None,
        quota,
    };
    state.store.put_key(key.clone()).await?;
    state.auth.reload().await?;
    let wire = auth::key_wire(&key, KeySource::Store);
    record(
        &state,
        &caller,
        "key.create",
        &key.id,
        format!("name {:?} grants {}", key.name, wire.grants.join(" ")),
    )
    .await?;
    tracing::info!(key = %key.id, actor = caller.actor(), "API key created");
    Ok(Json(proto::CreatedKey { key: wire, secret }))
}

/// List API keys (never secrets or their hashes).
#[utoipa::path(get, path = "/v1/keys", tag = "keys",
    responses(
        (status = 200, description = "Every key, revoked ones included", body = proto::KeyList),
        (status = 403, description = "forbidden: needs admin over every lock", body = proto::ErrorBody),
    ))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<proto::KeyList>, ApiError> {
    caller.require_full_admin()?;
    // Read afresh, so a key made through another server shows at once.
    state.auth.reload().await?;
    let mut keys: Vec<proto::KeyInfo> = state
        .auth
        .current()
        .keys
        .iter()
        .map(|(key, source)| auth::key_wire(key, *source))
        .collect();
    keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(Json(proto::KeyList { keys }))
}

/// Revoke an API key: it authenticates nothing from now on, on this server at once.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "The key's id, `key_` and 16 hex digits")),
    responses(
        (status = 200, description = "Revoked (or already)", body = proto::RevokeKeyResponse),
        (status = 404, description = "key_not_found", body = proto::ErrorBody),
        (status = 403, description = "forbidden: needs admin over every lock", body = proto::ErrorBody),
    ))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<proto::RevokeKeyResponse>, ApiError> {
    caller.require_full_admin()?;
    let not_found = || ApiError::new(ErrorCode::KeyNotFound, "no API key has this id");
    if !auth::valid_key_id(&id) {
        return Err(not_found());
    }
    state.auth.reload().await?;
    let current = state.auth.current();
    let (key, source) = current
        .keys
        .iter()
        .find(|(key, _)| key.id == id)
        .ok_or_else(not_found)?;
    if key.revoked_at.is_some() {
        // Its tickets were cancelled when it was revoked; again, in case a request in flight
        // then queued one.
        state.store.cancel_tickets_of_key(&id).await?;
        return Ok(Json(proto::RevokeKeyResponse {
            revoked: false,
            key: auth::key_wire(key, *source),
        }));
    }
    let revoked = ApiKey {
        revoked_at: Some(state.store.now_ms()),
        ..ApiKey::clone(key)
    };
    // A file key's revocation is kept in the store, where it overrides the file's entry.
    state.store.put_key(revoked.clone()).await?;
    state.auth.reload().await?;
    // Refused from now on; what it queued ends too, so a parked long-poll of the key answers
    // ticket_cancelled now instead of receiving a lease the key could not renew or release.
    let cancelled = state.store.cancel_tickets_of_key(&revoked.id).await?;
    record(
        &state,
        &caller,
        "key.revoke",
        &revoked.id,
        format!("name {:?}", revoked.name),
    )
    .await?;
    tracing::warn!(
        key = %revoked.id,
        actor = caller.actor(),
        cancelled_tickets = cancelled,
        "API key revoked"
    );
    Ok(Json(proto::RevokeKeyResponse {
        revoked: true,
        key: auth::key_wire(&revoked, KeySource::Store),
    }))
}

/// The audit log, newest first: key creations and revocations, lease revocations.
#[utoipa::path(get, path = "/v1/audit", tag = "keys",
    params(
        ("before" = Option<u64>, Query, description = "Only entries with a smaller seq (the next page)"),
        ("limit" = Option<usize>, Query, description = "At most this many (default 100)"),
    ),
    responses(
        (status = 200, description = "Newest first", body = proto::AuditList),
        (status = 403, description = "forbidden: needs admin over every lock", body = proto::ErrorBody),
    ))]
pub(crate) async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryMap,
) -> Result<Json<proto::AuditList>, ApiError> {
    caller.require_full_admin()?;
    query.only(&["before", "limit"])?;
    let limit = query.limit("limit", 100, AUDIT_LIMIT_MAX)?;
    let before = match query.0.get("before") {
        Some(text) => Some(
            text.parse::<i64>()
                .ok()
                .and_then(|seq| u64::try_from(seq).ok())
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidQuery,
                        "before must be a whole number (a seq)",
                    )
                })?,
        ),
        None => None,
    };
    let entries = state.store.audit(before, limit).await?;
    Ok(Json(proto::AuditList {
        entries: entries
            .into_iter()
            .map(|entry| proto::AuditEntry {
                seq: entry.seq,
                at: timestamp(entry.at),
                actor: entry.actor,
                action: entry.action,
                target: entry.target,
                detail: entry.detail,
            })
            .collect(),
    }))
}
