//! The router: every route of the server, the fallbacks for unknown paths and methods, and the
//! middleware layers (telemetry outermost, then authentication, then forwarding). Handlers
//! live with their API (`locks`, `jobs`, `keys`, `events`, `health`, `openapi`, `dashboard`);
//! nothing imports from this file but the crate root.

use std::sync::Arc;

use axum::Router;
use axum::routing::{delete, get, post};
use baton_proto::ErrorCode;

use crate::error::ApiError;
use crate::health::{healthz, metrics, readyz};
use crate::locks::{
    acquire, cancel_ticket, fence, get_lock, history, list_locks, release, renew, revoke,
    wait_ticket,
};
use crate::openapi::openapi;
use crate::state::AppState;

/// The `/v1` routes plus health, readiness, the OpenAPI document and the dashboard.
pub fn router(state: AppState) -> Router {
    crate::dashboard::routes(Router::new())
        .route("/v1/locks", get(list_locks))
        .route("/v1/locks/{name}", get(get_lock))
        .route("/v1/locks/{name}/acquire", post(acquire))
        .route("/v1/locks/{name}/revoke", post(revoke))
        .route("/v1/locks/{name}/fence", post(fence))
        .route("/v1/locks/{name}/history", get(history))
        .route("/v1/locksets/acquire", post(crate::locksets::acquire_set))
        .route("/v1/tickets/{id}/wait", post(wait_ticket))
        .route("/v1/tickets/{id}", delete(cancel_ticket))
        .route("/v1/leases/{id}/renew", post(renew))
        .route("/v1/leases/{id}/release", post(release))
        .route("/v1/jobs", post(crate::jobs::create).get(crate::jobs::list))
        .route("/v1/jobs/{id}", get(crate::jobs::get_one))
        .route("/v1/jobs/{id}/wait", post(crate::jobs::wait))
        .route("/v1/jobs/{id}/heartbeat", post(crate::jobs::heartbeat))
        .route("/v1/jobs/{id}/finish", post(crate::jobs::finish))
        .route("/v1/jobs/{id}/output", post(crate::jobs::append_output))
        .route("/v1/jobs/{id}/cancel", post(crate::jobs::cancel))
        .route("/v1/keys", post(crate::keys::create).get(crate::keys::list))
        .route("/v1/keys/{id}", delete(crate::keys::revoke))
        .route("/v1/audit", get(crate::keys::audit))
        .route("/v1/events", get(crate::events::events))
        .route("/v1/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Inside authentication: a standby forwards only what it would itself accept.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::forward::forward,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state.auth),
            crate::auth::authenticate,
        ))
        // Outermost: counts, times and logs every answer, refusals by authentication too.
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state.telemetry),
            crate::telemetry::observe,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such path; the API is described at /v1/openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this path does not take this method",
    )
}
