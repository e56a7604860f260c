//! The minimal in-memory HTTP/JSON lock server: the peer that PRODUCT.md's "at least half of
//! what a minimal in-memory HTTP/JSON lock server does" refers to.
//!
//! It speaks the same subset of baton's `/v1` contract the bench drives (acquire with optional
//! long-poll and FIFO queueing, ticket wait, release, `/healthz`), with the same JSON bodies,
//! but keeps everything in one `Mutex<HashMap>` and writes nothing to disk. Queued waiters are
//! parked on per-lock FIFO queues of oneshot channels and handed the lease directly on release,
//! so it is a fair, no-polling upper bound for what an HTTP/JSON lock server can do here.
//! Expiry is lazy: an expired holder is only noticed by the next acquire of its lock.
//!
//! The bench runs it as a subprocess of itself (`baton-bench --serve-minimal PORT`) so that its
//! memory and CPU are measured apart from the clients'.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use baton_proto::{
    AcquireRequest, ErrorBody, ErrorDetail, Lease, LeaseResponse, ReleaseResponse, Ticket,
    TicketResponse, WaitRequest,
};
use tokio::sync::oneshot;

/// Time-to-live when the request gives none.
const DEFAULT_TTL_MS: u64 = 30_000;
/// Longest long-poll a request may ask for.
const MAX_WAIT_MS: u64 = 60_000;

/// Serves the minimal lock server on `127.0.0.1:port` until the process is killed.
pub fn serve(port: u16) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("binding 127.0.0.1:{port}"))?;
        axum::serve(listener, router())
            .await
            .context("serving the minimal lock server")
    })
}

/// The server's routes.
fn router() -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/locks/{name}/acquire", post(acquire))
        .route("/v1/tickets/{id}/wait", post(wait))
        .route("/v1/leases/{id}/release", post(release))
        .with_state(Shared::default())
}

/// Shared state behind one mutex.
type Shared = Arc<Mutex<Table>>;

/// Every lock, lease and parked ticket.
#[derive(Default)]
struct Table {
    /// Lock name to holder and queue.
    locks: HashMap<String, LockEntry>,
    /// Lease id to lock name.
    leases: HashMap<u64, String>,
    /// Tickets whose long-poll ended before the grant: the receiver waits for the next wait.
    parked: HashMap<u64, Parked>,
    /// Last lease or ticket id issued.
    next_id: u64,
    /// Last fencing token issued.
    next_token: u64,
}

/// One lock's holder and FIFO queue.
#[derive(Default)]
struct LockEntry {
    /// The current holder, if any.
    holder: Option<HolderRec>,
    /// Waiters, first come first.
    queue: VecDeque<QueuedWaiter>,
}

/// The current holder of a lock.
struct HolderRec {
    /// The holder's lease.
    lease_id: u64,
    /// When the lease ends unless released.
    expires: Instant,
}

/// A waiter in a lock's queue; the grant is sent down `tx`.
struct QueuedWaiter {
    /// The waiter's ticket.
    ticket_id: u64,
    /// Owner label for the lease it will get.
    owner: String,
    /// TTL for the lease it will get.
    ttl_ms: u64,
    /// Where the grant goes.
    tx: oneshot::Sender<Lease>,
}

/// A ticket between two long-polls.
struct Parked {
    /// Where the grant arrives.
    rx: oneshot::Receiver<Lease>,
    /// The lock's name.
    lock: String,
    /// Owner label.
    owner: String,
    /// When the ticket joined the queue.
    queued_at: jiff::Timestamp,
}

impl Table {
    /// Makes a new lease on `name` for `owner` and records it as the holder.
    fn grant(&mut self, name: &str, owner: &str, ttl_ms: u64) -> Lease {
        self.next_id += 1;
        self.next_token += 1;
        let id = self.next_id;
        self.leases.insert(id, name.to_owned());
        let entry = self.locks.entry(name.to_owned()).or_default();
        entry.holder = Some(HolderRec {
            lease_id: id,
            expires: Instant::now() + Duration::from_millis(ttl_ms),
        });
        let now = jiff::Timestamp::now();
        Lease {
            mode: baton_proto::LockMode::Exclusive,
            value: None,
            id: format!("l{id}"),
            lock: name.to_owned(),
            owner: owner.to_owned(),
            owner_key: None,
            token: self.next_token,
            ttl_ms,
            granted_at: now,
            expires_at: now
                .checked_add(jiff::SignedDuration::from_millis(ttl_ms as i64))
                .unwrap_or(now),
            expires_in_ms: ttl_ms,
        }
    }

    /// Ends the current hold of `name` and hands the lock to the first live waiter, if any.
    fn hand_off(&mut self, name: &str) {
        if let Some(entry) = self.locks.get_mut(name)
            && let Some(old) = entry.holder.take()
        {
            self.leases.remove(&old.lease_id);
        }
        loop {
            let Some(waiter) = self.locks.get_mut(name).and_then(|e| e.queue.pop_front()) else {
                return;
            };
            let lease = self.grant(name, &waiter.owner, waiter.ttl_ms);
            match waiter.tx.send(lease) {
                // A parked ticket's receiver keeps the lease until its next wait collects it.
                Ok(()) => return,
                // The waiter went away (its connection closed): undo and try the next one.
                Err(_) => {
                    if let Some(entry) = self.locks.get_mut(name)
                        && let Some(h) = entry.holder.take()
                    {
                        self.leases.remove(&h.lease_id);
                    }
                }
            }
        }
    }
}

/// Locks the table; a poisoned mutex still holds consistent data (no handler panics while
/// holding it), so recover it.
fn table(state: &Shared) -> MutexGuard<'_, Table> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An error answer with baton's error body.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.to_owned(),
            message: message.to_owned(),
        },
        holders: None,
        newest_token: None,
        active: None,
        quota: None,
    };
    (status, axum::Json(body)).into_response()
}

/// Parses an id the server issued (`l123`, `t123`).
fn parse_id(id: &str, prefix: char) -> Option<u64> {
    id.strip_prefix(prefix)?.parse().ok()
}

/// `POST /v1/locks/{name}/acquire`.
async fn acquire(
    State(state): State<Shared>,
    Path(name): Path<String>,
    axum::Json(req): axum::Json<AcquireRequest>,
) -> Response {
    let ttl_ms = req.ttl_ms.unwrap_or(DEFAULT_TTL_MS);
    let wait_ms = req.wait_ms.unwrap_or(0).min(MAX_WAIT_MS);
    let queue = req.queue.unwrap_or(false);
    let (ticket_id, rx, queued_at) = {
        let mut t = table(&state);
        let entry = t.locks.entry(name.clone()).or_default();
        if entry
            .holder
            .as_ref()
            .is_some_and(|h| h.expires <= Instant::now())
        {
            t.hand_off(&name);
        }
        let entry = t.locks.entry(name.clone()).or_default();
        if entry.holder.is_none() && entry.queue.is_empty() {
            let lease = t.grant(&name, &req.owner, ttl_ms);
            return (StatusCode::OK, axum::Json(LeaseResponse { lease })).into_response();
        }
        if !queue && wait_ms == 0 {
            return error(StatusCode::CONFLICT, "busy", "the lock is held");
        }
        t.next_id += 1;
        let ticket_id = t.next_id;
        let (tx, rx) = oneshot::channel();
        if let Some(entry) = t.locks.get_mut(&name) {
            entry.queue.push_back(QueuedWaiter {
                ticket_id,
                owner: req.owner.clone(),
                ttl_ms,
                tx,
            });
        }
        (ticket_id, rx, jiff::Timestamp::now())
    };
    let parked = Parked {
        rx,
        lock: name,
        owner: req.owner,
        queued_at,
    };
    long_poll(&state, ticket_id, parked, wait_ms, queue).await
}

/// Waits up to `wait_ms` for the grant of `ticket_id`; parks the ticket again (202) when the
/// wait ends first and the caller queues, or leaves the queue (409) when it does not.
async fn long_poll(
    state: &Shared,
    ticket_id: u64,
    mut parked: Parked,
    wait_ms: u64,
    queue: bool,
) -> Response {
    match tokio::time::timeout(Duration::from_millis(wait_ms), &mut parked.rx).await {
        Ok(Ok(lease)) => (StatusCode::OK, axum::Json(LeaseResponse { lease })).into_response(),
        Ok(Err(_)) => error(
            StatusCode::GONE,
            "ticket_lapsed",
            "the ticket left the queue",
        ),
        Err(_) => {
            let mut t = table(state);
            // The grant may have arrived after the timeout fired.
            if let Ok(lease) = parked.rx.try_recv() {
                return (StatusCode::OK, axum::Json(LeaseResponse { lease })).into_response();
            }
            let position = t
                .locks
                .get(&parked.lock)
                .and_then(|e| e.queue.iter().position(|w| w.ticket_id == ticket_id))
                .map_or(0, |p| p as u64 + 1);
            if !queue {
                if let Some(e) = t.locks.get_mut(&parked.lock) {
                    e.queue.retain(|w| w.ticket_id != ticket_id);
                }
                return error(StatusCode::CONFLICT, "busy", "the lock is held");
            }
            let ticket = Ticket {
                id: format!("t{ticket_id}"),
                lock: parked.lock.clone(),
                owner: parked.owner.clone(),
                position,
                queued_at: parked.queued_at,
                lapses_in_ms: MAX_WAIT_MS,
            };
            t.parked.insert(ticket_id, parked);
            (StatusCode::ACCEPTED, axum::Json(TicketResponse { ticket })).into_response()
        }
    }
}

/// `POST /v1/tickets/{id}/wait`.
async fn wait(
    State(state): State<Shared>,
    Path(id): Path<String>,
    axum::Json(req): axum::Json<WaitRequest>,
) -> Response {
    let Some(ticket_id) = parse_id(&id, 't') else {
        return error(StatusCode::BAD_REQUEST, "invalid_id", "not a ticket id");
    };
    let Some(parked) = table(&state).parked.remove(&ticket_id) else {
        return error(StatusCode::NOT_FOUND, "ticket_not_found", "no such ticket");
    };
    let wait_ms = req.wait_ms.unwrap_or(0).min(MAX_WAIT_MS);
    long_poll(&state, ticket_id, parked, wait_ms, true).await
}

/// `POST /v1/leases/{id}/release`.
async fn release(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let Some(lease_id) = parse_id(&id, 'l') else {
        return error(StatusCode::BAD_REQUEST, "invalid_id", "not a lease id");
    };
    let mut t = table(&state);
    let Some(name) = t.leases.get(&lease_id).cloned() else {
        return error(StatusCode::NOT_FOUND, "lease_not_found", "no such lease");
    };
    t.hand_off(&name);
    let body = ReleaseResponse {
        released: true,
        reason: None,
    };
    (StatusCode::OK, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// Serves the router on a free loopback port; returns its base URL.
    async fn start() -> Result<String> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, router()).await });
        Ok(base)
    }

    /// POSTs `body` to `url`; returns the status and the JSON answer.
    async fn post(http: &reqwest::Client, url: String, body: Value) -> Result<(u16, Value)> {
        let resp = http.post(url).json(&body).send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await?))
    }

    #[tokio::test]
    async fn queued_waiters_are_granted_in_fifo_order() -> Result<()> {
        let base = start().await?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().no_proxy().build()?;
        let acquire = format!("{base}/v1/locks/a%2Fb/acquire");
        let (s, a) = post(&http, acquire.clone(), json!({"owner": "a"})).await?;
        assert_eq!(s, 200);
        assert_eq!(a["lease"]["lock"], "a/b");
        let (s, _) = post(&http, acquire.clone(), json!({"owner": "x"})).await?;
        assert_eq!(s, 409, "busy without queueing");

        let queued = json!({"owner": "w", "wait_ms": 20, "queue": true});
        let (s, b) = post(&http, acquire.clone(), queued.clone()).await?;
        assert_eq!((s, b["ticket"]["position"].as_u64()), (202, Some(1)));
        let (s, c) = post(&http, acquire.clone(), queued).await?;
        assert_eq!((s, c["ticket"]["position"].as_u64()), (202, Some(2)));

        let lease_a = a["lease"]["id"].as_str().unwrap_or_default();
        let (s, _) = post(
            &http,
            format!("{base}/v1/leases/{lease_a}/release"),
            json!({}),
        )
        .await?;
        assert_eq!(s, 200);

        let wait = |t: &Value| {
            format!(
                "{base}/v1/tickets/{}/wait",
                t["ticket"]["id"].as_str().unwrap_or_default()
            )
        };
        // The head of the queue got the lock; the second is still queued.
        let (s, c2) = post(&http, wait(&c), json!({"wait_ms": 20})).await?;
        assert_eq!((s, c2["ticket"]["position"].as_u64()), (202, Some(1)));
        let (s, b2) = post(&http, wait(&b), json!({"wait_ms": 20})).await?;
        assert_eq!(s, 200);
        let lease_b = b2["lease"]["id"].as_str().unwrap_or_default();
        assert!(b2["lease"]["token"].as_u64() > a["lease"]["token"].as_u64());
        let (s, _) = post(
            &http,
            format!("{base}/v1/leases/{lease_b}/release"),
            json!({}),
        )
        .await?;
        assert_eq!(s, 200);
        let (s, _) = post(&http, wait(&c), json!({"wait_ms": 1000})).await?;
        assert_eq!(s, 200);
        Ok(())
    }
}
