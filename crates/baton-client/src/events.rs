//! Following the event stream (`GET /v1/events`): [`Client::events`] gives an [`EventStream`]
//! whose [`EventStream::next`] returns each event as the server sends it, reconnecting with
//! `Last-Event-ID` when the connection drops (or the server drops a slow subscriber), so that
//! within the server's window no event is lost or repeated. When the gap is too large the
//! server says so with a [`proto::EventKind::Missed`] event, which `next` returns like any other:
//! read the state afresh then.

use std::collections::VecDeque;
use std::time::Duration;

use baton_proto as proto;
use reqwest::StatusCode;
use reqwest::header::AUTHORIZATION;

use crate::client::{Client, describe, read_body, same_base, standby_of};
use crate::error::{Error, Result};
use crate::path::encode_segment;

/// The server sends a comment every 15 s: a connection silent for this long is gone.
const SILENCE_MAX: Duration = Duration::from_secs(45);
/// The largest message accepted.
const MESSAGE_BYTES_MAX: usize = 1024 * 1024;

/// What to follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventOptions {
    /// Only events of locks whose names start with this.
    pub prefix: Option<String>,
    /// Resume after this event id (an [`proto::Event::id`] seen before).
    pub last_event_id: Option<String>,
}

/// A subscription to the event stream. See the module documentation.
#[derive(Debug)]
pub struct EventStream {
    client: Client,
    prefix: Option<String>,
    last_event_id: Option<String>,
    response: Option<(reqwest::Response, String)>,
    buffer: Vec<u8>,
}

impl Client {
    /// Follows the event stream. Nothing is sent before the first [`EventStream::next`].
    pub fn events(&self, options: EventOptions) -> EventStream {
        EventStream {
            client: self.clone(),
            prefix: options.prefix,
            last_event_id: options.last_event_id,
            response: None,
            buffer: Vec::new(),
        }
    }
}

impl EventStream {
    /// Connects now, if not connected yet, instead of at the first [`EventStream::next`]: every
    /// event after this returns is delivered. A caller that reads the state and then follows
    /// its changes (a leader's observer) connects first, then reads, so no change falls in
    /// between.
    pub async fn connected(&mut self) -> Result<()> {
        if self.response.is_none() {
            self.connect().await?;
        }
        Ok(())
    }

    /// The id of the newest event returned (or the one given to resume after).
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// Connects now, unless connected: once this returns, every event the server publishes
    /// from then on is delivered by [`EventStream::next`] (the server subscribes before it
    /// answers). For a follower that reads the state after subscribing, so that nothing
    /// falls between the read and the stream (`baton logs -f`).
    pub async fn subscribe(&mut self) -> Result<()> {
        if self.response.is_none() {
            self.connect().await?;
        }
        Ok(())
    }

    /// The next event. Reconnects (with `Last-Event-ID`) when the connection drops or the
    /// server dropped this subscriber for falling behind, retrying as the client's retry
    /// policy says; an error is returned once that gives up, or for an answer no retry can
    /// change (a key without access: `Unauthorized`/`Rejected`). The stream may be used
    /// again after an error: the next call connects afresh.
    pub async fn next(&mut self) -> Result<proto::Event> {
        loop {
            if let Some(event) = self.buffered()? {
                if event.kind == proto::EventKind::Dropped {
                    // Resume where this subscriber was: within the window, nothing is lost.
                    tracing::debug!("the server dropped this subscriber; resuming");
                    self.disconnect();
                    continue;
                }
                if !event.id.is_empty() {
                    self.last_event_id = Some(event.id.clone());
                }
                return Ok(event);
            }
            let Some((response, url)) = &mut self.response else {
                self.connect().await?;
                continue;
            };
            match tokio::time::timeout(SILENCE_MAX, response.chunk()).await {
                Ok(Ok(Some(chunk))) => {
                    if self.buffer.len() + chunk.len() > MESSAGE_BYTES_MAX {
                        let url = url.clone();
                        self.disconnect();
                        return Err(Error::Protocol {
                            url,
                            message: "an event larger than 1 MiB".into(),
                        });
                    }
                    self.buffer.extend_from_slice(&chunk);
                }
                Ok(Ok(None)) => {
                    tracing::debug!(%url, "the event stream ended; reconnecting");
                    self.disconnect();
                }
                Ok(Err(error)) => {
                    tracing::debug!(%url, error = %describe(&error), "the event stream broke");
                    self.disconnect();
                }
                Err(_) => {
                    tracing::debug!(%url, "the event stream went silent; reconnecting");
                    self.disconnect();
                }
            }
        }
    }

    fn disconnect(&mut self) {
        self.response = None;
        self.buffer.clear();
    }

    /// The next complete message in the buffer, if any (comments skipped).
    fn buffered(&mut self) -> Result<Option<proto::Event>> {
        loop {
            let Some(end) = find_blank_line(&self.buffer) else {
                return Ok(None);
            };
            let message: Vec<u8> = self.buffer.drain(..end.1).collect();
            let text = String::from_utf8_lossy(&message[..end.0]);
            let mut data = String::new();
            for line in text.lines() {
                if let Some(value) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value.strip_prefix(' ').unwrap_or(value));
                }
            }
            if data.is_empty() {
                continue;
            }
            let url = self
                .response
                .as_ref()
                .map(|(_, url)| url.clone())
                .unwrap_or_default();
            return serde_json::from_str(&data)
                .map(Some)
                .map_err(|error| Error::Protocol {
                    url,
                    message: format!("an event that is not an event: {error}"),
                });
        }
    }

    /// Connects to the first server that serves the stream, as [`Client`] picks servers:
    /// the last that answered first, then the others, following a standby to the active it
    /// names; retried with backoff as the retry policy says.
    async fn connect(&mut self) -> Result<()> {
        let mut attempt = 1;
        loop {
            let error = match self.connect_once().await {
                Ok(()) => return Ok(()),
                Err(error) if error.is_retryable() => error,
                Err(error) => return Err(error),
            };
            let (_, _, _, retry, _) = self.client.transport();
            if attempt >= retry.attempts.max(1) {
                return Err(error);
            }
            tokio::time::sleep(retry.backoff(attempt)).await;
            attempt += 1;
        }
    }

    async fn connect_once(&mut self) -> Result<()> {
        let (http, bases, authorization, _, start) = self.client.transport();
        let mut query = String::new();
        if let Some(prefix) = &self.prefix {
            query = format!("?prefix={}", encode_segment(prefix));
        }
        // The servers to try, the preferred first; a standby's answer puts the active it names
        // in front: one of ours, or (behind a load balancer, say) a URL of its own. The stream
        // is served by the active only (standbys do not relay it).
        let mut queue: VecDeque<(String, Option<usize>)> = (0..bases.len())
            .map(|offset| (start + offset) % bases.len())
            .map(|index| (bases[index].clone(), Some(index)))
            .collect();
        let mut tried: Vec<String> = Vec::new();
        let mut failures = Vec::new();
        let mut last_error = None;
        while let Some((base, index)) = queue.pop_front() {
            if tried.iter().any(|done| same_base(done, &base)) {
                continue;
            }
            tried.push(base.clone());
            let url = format!("{}/v1/events{query}", base.trim_end_matches('/'));
            let mut request = http.get(&url).header("accept", "text/event-stream");
            if let Some(authorization) = authorization {
                request = request.header(AUTHORIZATION, authorization.clone());
            }
            if let Some(id) = &self.last_event_id {
                request = request.header("last-event-id", id.as_str());
            }
            match request.send().await {
                Ok(response) if response.status() == StatusCode::OK => {
                    if let Some(index) = index {
                        self.client.prefer(index);
                    }
                    self.buffer.clear();
                    self.response = Some((response, url));
                    return Ok(());
                }
                Ok(response) => {
                    let status = response.status();
                    let body = read_body(response, &url).await?;
                    if let Some(Some(active)) = standby_of(status, &body) {
                        let ours = bases.iter().position(|known| same_base(known, &active));
                        queue.push_front((active, ours));
                    }
                    let error = Error::from_response(&url, status.as_u16(), &body);
                    if !error.is_retryable() {
                        return Err(error);
                    }
                    last_error = Some(error);
                }
                Err(error) => failures.push(format!("{base}: {}", describe(&error))),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Unavailable {
            code: None,
            message: format!("cannot reach the baton server ({})", failures.join("; ")),
        }))
    }
}

/// Where the first message ends: (its length without the blank line, its length with it).
fn find_blank_line(buffer: &[u8]) -> Option<(usize, usize)> {
    let mut index = 0;
    while index < buffer.len() {
        if buffer[index..].starts_with(b"\n\n") {
            return Some((index, index + 2));
        }
        if buffer[index..].starts_with(b"\r\n\r\n") {
            return Some((index, index + 4));
        }
        index += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::find_blank_line;

    #[test]
    fn messages_end_at_a_blank_line() {
        assert_eq!(find_blank_line(b"id: 1\ndata: {}\n\nrest"), Some((14, 16)));
        assert_eq!(find_blank_line(b"data: {}\r\n\r\n"), Some((8, 12)));
        assert_eq!(find_blank_line(b"data: {}\n"), None);
    }
}
