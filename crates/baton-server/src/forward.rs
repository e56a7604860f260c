//! Standbys forward requests to the active server.
//!
//! With a store shared by several servers (PostgreSQL), one server is active and the others
//! standbys ([`baton_store::Leadership`]). A standby that knows the active sends every `/v1`
//! request on to it — method, path, query, body, API key — and returns the active's answer as
//! it came, long-polls included, so a client (or a load balancer) may talk to any server.
//! The exception is `GET /v1/events`: an endless stream is not relayed; the standby answers
//! `503 not_active` naming the active (the feed lives in the active's engine).
//! A request is forwarded once: it carries [`FORWARDED_BY`], and a standby that receives a
//! forwarded request answers `503 not_active` itself instead of forwarding it again (the
//! two servers disagree about who is active; the client tries again). When the active cannot
//! be reached, the standby answers `503 not_active` naming it, and a client with every
//! server's URL goes on by itself.
//!
//! Runs after authentication, so a standby refuses what it would refuse as an active; the
//! active authenticates the forwarded request again. Over TLS the active's certificate must
//! verify against the platform's roots; otherwise clients are sent on with `not_active`.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use baton_proto::ErrorCode;
use baton_store::StoreError;

use crate::error::ApiError;
use crate::extract::{BODY_BYTES_MAX, BodyReadTimeout};
use crate::limits::WAIT_MS_MAX;
use crate::state::AppState;

/// The header a forwarded request carries: the forwarding standby's node id.
pub const FORWARDED_BY: &str = "baton-forwarded-by";
/// The largest answer relayed (the active's answers are bounded far below this).
const ANSWER_BYTES_MAX: usize = 16 * 1024 * 1024;
/// How long a forwarded request may take: the longest wait plus a margin.
const FORWARD_TIMEOUT: Duration = Duration::from_millis(WAIT_MS_MAX + 15_000);
/// How often a forward in flight checks that its target is still the active.
const LEADERSHIP_RECHECK: Duration = Duration::from_millis(100);
/// How long connecting to the active may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

fn http() -> Option<&'static reqwest::Client> {
    static CLIENT: OnceLock<Option<reqwest::Client>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(FORWARD_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|error| tracing::error!(%error, "cannot build the forwarding client"))
                .ok()
        })
        .as_ref()
}

/// The middleware: forwards `/v1` requests while this server is a standby that knows the
/// active; everything else goes to the handlers.
pub async fn forward(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    // The event stream is the active's own (its engine's feed): a standby answers
    // `not_active` naming the active rather than relaying an endless answer.
    if !path.starts_with("/v1/") || path == "/v1/openapi.json" || path == "/v1/events" {
        return next.run(request).await;
    }
    let Some(leadership) = state.store.leadership() else {
        return next.run(request).await;
    };
    if leadership.active || request.headers().contains_key(FORWARDED_BY) {
        return next.run(request).await;
    }
    let (Some(active), Some(client)) = (leadership.active_url, http()) else {
        return next.run(request).await;
    };
    // A forward to an active that stops answering (paused, cut off) must not outlive its
    // leadership: once this server learns of another active (or becomes it), the forward is
    // abandoned and the client sent on. The request may have reached the old active, which
    // can no longer commit it (its epoch is fenced) nor answer it from its table.
    let superseded = async {
        loop {
            tokio::time::sleep(LEADERSHIP_RECHECK).await;
            match state.store.leadership() {
                Some(now) if !now.active && now.active_url.as_deref() == Some(active.as_str()) => {}
                _ => return,
            }
        }
    };
    let relayed = tokio::select! {
        relayed = relay(client, &active, &leadership.node, request) => relayed,
        () = superseded => {
            let active = state.store.leadership().and_then(|now| now.active_url);
            return ApiError::from(StoreError::NotActive { active }).into_response();
        }
    };
    match relayed {
        Ok(response) => response,
        Err(Relay::Answer(error)) => error.into_response(),
        Err(Relay::Unreachable(reason)) => {
            tracing::warn!(%active, %reason, "cannot forward to the active server");
            ApiError::from(StoreError::NotActive {
                active: Some(active),
            })
            .into_response()
        }
    }
}

enum Relay {
    /// The request itself is at fault (its body): this answer, as the handlers would give.
    Answer(ApiError),
    /// The active did not answer.
    Unreachable(String),
}

async fn relay(
    client: &reqwest::Client,
    active: &str,
    node: &str,
    request: Request,
) -> Result<Response, Relay> {
    let body_timeout = request
        .extensions()
        .get::<BodyReadTimeout>()
        .map_or(Duration::from_secs(10), |timeout| timeout.0);
    let (parts, body) = request.into_parts();
    let target = match parts.uri.path_and_query() {
        Some(path) => format!("{}{}", active.trim_end_matches('/'), path.as_str()),
        None => return Err(Relay::Unreachable("the request has no path".into())),
    };
    let bytes = match tokio::time::timeout(body_timeout, axum::body::to_bytes(body, BODY_BYTES_MAX))
        .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return Err(Relay::Answer(ApiError::new(
                ErrorCode::BodyTooLarge,
                format!("the body is larger than {BODY_BYTES_MAX} bytes, or arrived broken"),
            )));
        }
        Err(_) => {
            return Err(Relay::Answer(ApiError::new(
                ErrorCode::BodyTimeout,
                "the request body did not arrive in time",
            )));
        }
    };
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .map_err(|error| Relay::Unreachable(error.to_string()))?;
    let mut outgoing = client.request(method, &target).header(FORWARDED_BY, node);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(value) = parts.headers.get(&name) {
            outgoing = outgoing.header(name.as_str(), value.as_bytes());
        }
    }
    if !bytes.is_empty() {
        outgoing = outgoing.body(bytes);
    }
    let answer = outgoing
        .send()
        .await
        .map_err(|error| Relay::Unreachable(error.to_string()))?;
    let status = StatusCode::from_u16(answer.status().as_u16())
        .map_err(|error| Relay::Unreachable(error.to_string()))?;
    let mut headers = Vec::new();
    for name in [
        header::CONTENT_TYPE,
        header::RETRY_AFTER,
        header::CONNECTION,
    ] {
        if let Some(value) = answer.headers().get(name.as_str())
            && let Ok(value) = HeaderValue::from_bytes(value.as_bytes())
        {
            headers.push((name, value));
        }
    }
    let mut body = Vec::new();
    let mut answer = answer;
    loop {
        match answer.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > ANSWER_BYTES_MAX {
                    return Err(Relay::Unreachable(
                        "the active's answer is too large".into(),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(error) => return Err(Relay::Unreachable(error.to_string())),
        }
    }
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    for (name, value) in headers {
        response.headers_mut().insert(name, value);
    }
    response.headers_mut().insert(
        HeaderName::from_static(FORWARDED_BY),
        HeaderValue::from_str(node).unwrap_or_else(|_| HeaderValue::from_static("standby")),
    );
    Ok(response)
}
