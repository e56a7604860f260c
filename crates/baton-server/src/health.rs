//! Health, readiness and metrics: `/healthz`, `/readyz` (which also tells a standby from the
//! active) and `/metrics` (the text [`Telemetry`](crate::Telemetry) encodes). Open without a
//! key except `/metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use baton_proto as proto;

use crate::state::AppState;

fn health(state: &AppState, status: &str) -> proto::Health {
    let leadership = state.store.leadership();
    proto::Health {
        status: status.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        store: state.store.kind().to_owned(),
        role: leadership.as_ref().map(|leadership| {
            if leadership.active {
                "active".to_owned()
            } else {
                "standby".to_owned()
            }
        }),
        active: leadership.and_then(|leadership| leadership.active_url),
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", body = proto::Health)))]
pub(crate) async fn healthz(State(state): State<AppState>) -> Json<proto::Health> {
    Json(health(&state, "ok"))
}

/// Readiness: the store takes writes. A standby of a shared database is not ready (its `role`
/// says `standby` and `active` names the active server), so a load balancer sends clients to
/// the active one.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = proto::Health),
        (status = 503, description = "The store cannot commit, or this server is a standby",
            body = proto::Health),
    ))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ready().await {
        Ok(()) => Json(health(&state, "ok")).into_response(),
        Err(baton_store::StoreError::NotActive { .. }) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(health(&state, "standby")),
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(health(&state, "store unavailable")),
            )
                .into_response()
        }
    }
}

/// Prometheus text exposition of the store's counters. Written by hand: a handful of counters
/// and gauges do not justify a metrics library.
/// Prometheus text: the HTTP series, connections, and the store's series (see `telemetry`).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "The server's metrics in the OpenMetrics text \
        format (Prometheus reads it): requests by route and status and their latency \
        histograms, connections, locks, leases, waiters, locks in lock-delay, jobs by state, \
        lease grants, releases, expiries and revocations, queue entries and exits, job \
        transitions by state, the commit latency histogram, event subscribers, leadership. \
        No series has a per-lock label.", content_type = "application/openmetrics-text")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.telemetry.encode(),
    )
        .into_response()
}
