//! `GET /v1/events`: the lock table's events as Server-Sent Events.
//!
//! Each subscriber gets a pump task that reads the store's feed ([`baton_store::EventHub`]:
//! events published once durable, in order), keeps the events the caller's key may read (and
//! that match `?prefix=`), and puts them, formatted, into a bounded buffer that the response
//! body drains ([`SUBSCRIBER_BUFFER`] events, at most [`SUBSCRIBER_BUFFER_BYTES_MAX`] bytes:
//! `output` events are large). The pump never waits for the subscriber: when the buffer is full (the client
//! reads too slowly, or not at all) the subscriber is dropped: the pump stops, the body sends
//! what the buffer held, then a final `dropped` event, and ends. So a slow subscriber costs a
//! bounded buffer and never slows the engine or other subscribers.
//!
//! A comment line goes out every [`KEEP_ALIVE`] so proxies keep the connection open. The pump
//! checks that the caller's key is still in force before each event and every second (the
//! stream ends once it is revoked). Resuming: the `Last-Event-ID` header (what browsers' `EventSource` sends when it
//! reconnects) continues after that event if it is still in the feed's window; otherwise the
//! stream starts with one `missed` event. The stream is served by the active server only: a
//! standby answers `503 not_active` naming the active (the feed lives in the active's engine).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use baton_core::{Event, JobChange, LeaseEnd};
use baton_proto::{self as proto, ErrorCode};
use baton_store::{EventId, Published};
use tokio::sync::{broadcast, mpsc};

use crate::auth::{Auth, Caller, KeySet};
use crate::error::ApiError;
use crate::extract::QueryMap;
use crate::state::AppState;
use crate::telemetry::{DROPPED, SUBSCRIBERS};
use crate::wire::timestamp;

/// How often a keep-alive comment is sent.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often a subscriber's key is checked: a revoked key's streams end within this.
const KEY_CHECK: Duration = Duration::from_secs(1);
/// How many events may wait for a subscriber before it is dropped.
pub const SUBSCRIBER_BUFFER: usize = 1_024;
/// How many bytes of formatted events may wait for a subscriber before it is dropped: `output`
/// events carry up to 16 KiB of a job's output each, so a count alone would let a slow
/// subscriber hold far more memory than its buffer of small events does.
pub const SUBSCRIBER_BUFFER_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Follow lock and job events (Server-Sent Events).
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(
        ("prefix" = Option<String>, Query, description = "Only events of locks whose name starts with this"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (`STREAM-SEQ`)"),
    ),
    responses(
        (status = 200, description = "A stream of Server-Sent Events: `event:` the type, `id:` the event id, `data:` the event as JSON; a comment line every 15 s", content_type = "text/event-stream", body = proto::Event),
        (status = 400, description = "invalid_query (a malformed Last-Event-ID, or an unknown query parameter)", body = proto::ErrorBody),
        (status = 503, description = "not_active (a standby: follow the active server)", body = proto::ErrorBody),
    ))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryMap,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    query.only(&["prefix"])?;
    let prefix = query.0.get("prefix").cloned().unwrap_or_default();
    let after = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(EventId::parse)
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidQuery,
                        "Last-Event-ID: expected an event id as the stream sent it (STREAM-SEQ)",
                    )
                })?,
        ),
    };
    let hub = state.store.events()?;
    let subscription = hub.subscribe(after.as_ref());
    // The pump holds the feed's receiver only: when the engine goes (a standby stepping down),
    // the feed's sender goes with it and the stream ends.
    drop(hub);
    let (sender, receiver) = mpsc::channel(SUBSCRIBER_BUFFER);
    let dropped = Arc::new(AtomicBool::new(false));
    let buffered_bytes = Arc::new(AtomicUsize::new(0));
    let pump = Pump {
        key_id: caller.key_id(),
        checked: std::sync::Mutex::new(None),
        caller,
        auth: Arc::clone(&state.auth),
        prefix,
        stream: subscription.stream.clone(),
        sender,
        dropped: Arc::clone(&dropped),
        buffered_bytes: Arc::clone(&buffered_bytes),
    };
    SUBSCRIBERS.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(pump.run(subscription.missed, subscription.backlog, subscription.live));
    let body = futures_util::stream::unfold(
        (receiver, dropped, buffered_bytes, false),
        |(mut receiver, dropped, buffered_bytes, done)| async move {
            if done {
                return None;
            }
            match receiver.recv().await {
                Some(frame) => {
                    buffered_bytes.fetch_sub(frame.len(), Ordering::AcqRel);
                    Some((
                        Ok::<_, std::convert::Infallible>(frame),
                        (receiver, dropped, buffered_bytes, false),
                    ))
                }
                None if dropped.load(Ordering::Acquire) => Some((
                    Ok(notice(
                        proto::EventKind::Dropped,
                        "this subscriber fell too far behind; read the state afresh, then subscribe again",
                    )),
                    (receiver, dropped, buffered_bytes, true),
                )),
                None => None,
            }
        },
    );
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies that buffer answers (nginx) would hold events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

struct Pump {
    caller: Caller,
    /// The caller's key's id (`None` on a server without keys).
    key_id: Option<String>,
    /// The key set last checked, and whether the key was in force in it.
    checked: std::sync::Mutex<Option<(Arc<KeySet>, bool)>>,
    auth: Arc<Auth>,
    prefix: String,
    stream: String,
    sender: mpsc::Sender<String>,
    dropped: Arc<AtomicBool>,
    /// Bytes of frames in `sender`'s buffer (the body subtracts what it takes).
    buffered_bytes: Arc<AtomicUsize>,
}

/// Why a pump stops.
enum Stop {
    /// The client went away, the feed ended, or the key was revoked.
    Ended,
    /// The buffer was full.
    Dropped,
}

impl Pump {
    async fn run(
        self,
        missed: bool,
        backlog: Vec<Arc<Published>>,
        live: broadcast::Receiver<Arc<Published>>,
    ) {
        let Err(stop) = self.pump(missed, backlog, live).await;
        if matches!(stop, Stop::Dropped) {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            self.dropped.store(true, Ordering::Release);
        }
        SUBSCRIBERS.fetch_sub(1, Ordering::Relaxed);
        // Dropping the sender lets the body send what is buffered, then end.
    }

    async fn pump(
        &self,
        missed: bool,
        backlog: Vec<Arc<Published>>,
        mut live: broadcast::Receiver<Arc<Published>>,
    ) -> Result<std::convert::Infallible, Stop> {
        if missed {
            self.offer(notice(
                proto::EventKind::Missed,
                "the events after the one given in Last-Event-ID are no longer kept (too old, or \
                 from before a restart or a change of active server); read the state afresh",
            ))?;
        }
        for published in backlog {
            self.forward(&published)?;
        }
        let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
        keep_alive.tick().await;
        let mut key_check = tokio::time::interval(KEY_CHECK);
        key_check.tick().await;
        loop {
            tokio::select! {
                received = live.recv() => match received {
                    Ok(published) => self.forward(&published)?,
                    // The pump itself fell behind the feed's bound (a starved runtime): the
                    // subscriber has lost events, which is what `dropped` says.
                    Err(broadcast::error::RecvError::Lagged(_)) => return Err(Stop::Dropped),
                    Err(broadcast::error::RecvError::Closed) => return Err(Stop::Ended),
                },
                () = self.sender.closed() => return Err(Stop::Ended),
                _ = keep_alive.tick() => self.offer(": keep-alive\n\n".to_owned())?,
                _ = key_check.tick() => {
                    if !self.key_in_force() {
                        return Err(Stop::Ended);
                    }
                }
            }
        }
    }

    /// Whether the caller's key is still in force: checked before every event, so that an
    /// event published after a revocation answered never reaches the revoked key. Cheap: the
    /// key set is scanned again only when it was replaced since the last check.
    fn key_in_force(&self) -> bool {
        let Some(id) = &self.key_id else {
            return true;
        };
        let current = self.auth.current();
        let mut checked = match self.checked.lock() {
            Ok(checked) => checked,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((set, in_force)) = &*checked
            && Arc::ptr_eq(set, &current)
        {
            return *in_force;
        }
        let in_force = current
            .keys
            .iter()
            .any(|(key, _)| key.id == *id && key.revoked_at.is_none());
        *checked = Some((current, in_force));
        in_force
    }

    fn forward(&self, published: &Published) -> Result<(), Stop> {
        let lock = published.event.lock().as_str();
        if !lock.starts_with(self.prefix.as_str()) || !self.caller.sees(lock) {
            return Ok(());
        }
        if !self.key_in_force() {
            return Err(Stop::Ended);
        }
        let wire = event_wire(&self.stream, published);
        self.offer(frame(&wire))
    }

    fn offer(&self, frame: String) -> Result<(), Stop> {
        let bytes = frame.len();
        if self.buffered_bytes.load(Ordering::Acquire) + bytes > SUBSCRIBER_BUFFER_BYTES_MAX {
            return Err(Stop::Dropped);
        }
        // Counted before the send, so the body never subtracts a frame not yet counted.
        self.buffered_bytes.fetch_add(bytes, Ordering::AcqRel);
        let sent = self.sender.try_send(frame);
        if sent.is_err() {
            self.buffered_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
        match sent {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(Stop::Dropped),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Stop::Ended),
        }
    }
}

/// One SSE message.
fn frame(event: &proto::Event) -> String {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned());
    if event.id.is_empty() {
        format!("event: {}\ndata: {data}\n\n", event.kind.as_str())
    } else {
        format!(
            "id: {}\nevent: {}\ndata: {data}\n\n",
            event.id,
            event.kind.as_str()
        )
    }
}

/// A `missed` or `dropped` message.
fn notice(kind: proto::EventKind, reason: &str) -> String {
    frame(&proto::Event {
        id: String::new(),
        seq: 0,
        kind,
        at: jiff::Timestamp::now(),
        lock: None,
        owner: None,
        token: None,
        granted_at: None,
        expires_at: None,
        from_queue: None,
        position: None,
        reason: Some(reason.to_owned()),
        job: None,
        text: None,
        offset: None,
        value: None,
        mode: None,
    })
}

/// The wire form of a published event.
pub(crate) fn event_wire(stream: &str, published: &Published) -> proto::Event {
    let mut wire = proto::Event {
        id: EventId {
            stream: stream.to_owned(),
            seq: published.seq,
        }
        .to_string(),
        seq: published.seq,
        kind: proto::EventKind::Granted,
        at: timestamp(published.event.at()),
        lock: Some(published.event.lock().to_string()),
        owner: None,
        token: None,
        granted_at: None,
        expires_at: None,
        from_queue: None,
        position: None,
        reason: None,
        job: None,
        text: None,
        offset: None,
        value: None,
        mode: None,
    };
    match &published.event {
        Event::Granted { lease, .. } => {
            wire.owner = Some(lease.owner.clone());
            wire.token = Some(lease.token);
            wire.granted_at = Some(timestamp(lease.granted_at));
            wire.expires_at = Some(timestamp(lease.expires_at));
            wire.from_queue = Some(lease.ticket.is_some());
            wire.value = lease.value.clone();
            wire.mode = Some(crate::wire::mode_wire(lease.mode));
        }
        Event::Ended(record) => {
            wire.kind = match record.end {
                LeaseEnd::Released => proto::EventKind::Released,
                LeaseEnd::Expired => proto::EventKind::Expired,
                LeaseEnd::Revoked => proto::EventKind::Revoked,
            };
            wire.owner = Some(record.owner.clone());
            wire.token = Some(record.token);
            wire.granted_at = Some(timestamp(record.granted_at));
            wire.mode = Some(crate::wire::mode_wire(record.mode));
        }
        Event::Queued { queued, .. } => {
            wire.kind = proto::EventKind::Queued;
            wire.owner = Some(queued.ticket.owner.clone());
            wire.position = Some(queued.position);
            wire.mode = Some(crate::wire::mode_wire(queued.ticket.mode));
        }
        Event::LeftQueue { ticket, why, .. } => {
            wire.kind = proto::EventKind::LeftQueue;
            wire.owner = Some(ticket.owner.clone());
            wire.reason = Some(why.as_str().to_owned());
        }
        Event::Job { job, .. } => {
            wire.kind = proto::EventKind::Job;
            wire.owner = Some(job.owner.clone());
            wire.token = job.token;
            wire.job = Some(job_event_wire(job));
        }
        Event::Output {
            job, text, offset, ..
        } => {
            wire.kind = proto::EventKind::Output;
            wire.owner = Some(job.owner.clone());
            wire.token = job.token;
            wire.job = Some(job_event_wire(job));
            wire.text = Some(text.clone());
            wire.offset = Some(*offset);
        }
    }
    wire
}

fn job_event_wire(job: &JobChange) -> proto::JobEvent {
    proto::JobEvent {
        id: job.id.to_string(),
        name: job.name.clone(),
        state: crate::jobs::state_wire(job.state),
        reason: job.reason.clone(),
        exit_code: job.exit_code,
        host: job.host.clone(),
        batch: job.batch.clone(),
        created_at: timestamp(job.created_at),
        started_at: job.started_at.map(timestamp),
        finished_at: job.finished_at.map(timestamp),
    }
}
