//! The accept loop: one hyper HTTP/1.1 connection task per socket, with limits that hold when a
//! client misbehaves.
//!
//! - **Connections:** at most `max_connections` are served at once (a semaphore). One more is
//!   accepted, answered `503` with `Retry-After: 1` if the socket takes it at once, and closed;
//!   a warning says so at most once a second. Under TLS it is closed without an answer (a
//!   plain-text `503` means nothing inside a TLS session, and a handshake is what the limit
//!   saves).
//! - **TLS** (when configured): the handshake runs in the connection's task, under its permit,
//!   and must finish within `header_read_timeout`; then hyper reads the first request head with
//!   the usual timeout. A client that connects and never finishes the handshake (or speaks
//!   plain HTTP to the TLS port) is closed; the accept loop never waits on a handshake.
//! - **Header read timeout:** a request head must arrive whole within `header_read_timeout`
//!   (hyper restarts the clock for each request, so it also closes keep-alive connections idle
//!   that long); a client dribbling one byte a second is cut off.
//! - **Header size:** the read buffer is capped at `max_header_bytes`; a longer head is answered
//!   `431` and the connection closed.
//! - **Shutdown:** stop accepting, ask every connection to finish its request in flight and
//!   close, wait up to the grace period, then abort what remains (parked long-polls; their
//!   clients poll again) and wait for the aborted tasks, so none outlives [`serve`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// What a connection over the limit is told before it is closed.
const OVER_LIMIT_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
content-type: text/plain\r\ncontent-length: 27\r\nconnection: close\r\n\r\ntoo many connections; retry";

/// The limits one server applies to its connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub shutdown_grace: Duration,
}

/// The listener's figures for `/metrics`.
#[derive(Debug, Clone)]
pub(crate) struct Counted {
    /// Connections open now.
    pub open: Gauge,
    /// Connections refused at the limit.
    pub refused: Counter,
}

/// A connection's place under the limit: counted as open until it is dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then shuts down as the module says.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    counted: Counted,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut last_warning: Option<Instant> = None;
    let mut refused: u64 = 0;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connections so the set stays as small as what is open.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(error) => {
                        accept_failed(error).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    if tls.is_none() {
                        refuse(&stream);
                    }
                    drop(stream);
                    counted.refused.inc();
                    refused += 1;
                    if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(
                            max_connections = limits.max_connections,
                            refused,
                            "connection limit reached; refusing new connections"
                        );
                        last_warning = Some(Instant::now());
                        refused = 0;
                    }
                    continue;
                };
                counted.open.inc();
                let permit = Slot { _permit: permit, open: counted.open.clone() };
                connections.spawn(connection(
                    stream,
                    tls.clone(),
                    app.clone(),
                    limits,
                    stopping_rx.clone(),
                    permit,
                ));
            }
        }
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            open = connections.len(),
            "grace period over; closing the remaining connections"
        );
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// Serves one connection until it closes, or until shutdown once its request in flight is done.
/// Under TLS, the handshake comes first (see the module).
async fn connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
    _slot: Slot,
) {
    // Answers to long-polls are small and late: send them at once.
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = tls else {
        return serve_http(stream, app, limits, stopping).await;
    };
    let handshake = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
    let stream = tokio::select! {
        finished = handshake => match finished {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!("TLS handshake failed: {error}");
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake not finished within the header read timeout");
                return;
            }
        },
        _ = stopping.wait_for(|stopping| *stopping) => return,
    };
    serve_http(stream, app, limits, stopping).await;
}

/// Speaks HTTP/1.1 on `io` until it closes, or until shutdown once its request in flight is
/// done.
async fn serve_http<I>(io: I, app: Router, limits: Limits, mut stopping: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    let mut conn = std::pin::pin!(builder.serve_connection(TokioIo::new(io), service));
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!("connection ended: {error}");
            }
            return;
        }
        _ = stopping.wait_for(|stopping| *stopping) => {}
    }
    conn.as_mut().graceful_shutdown();
    if let Err(error) = conn.await {
        tracing::debug!("connection ended during shutdown: {error}");
    }
}

/// Tells a connection over the limit why it is closed, if its socket takes the answer at once.
fn refuse(stream: &TcpStream) {
    let _ = stream.try_write(OVER_LIMIT_RESPONSE);
}

/// After a failed accept: a connection reset before it was accepted is nothing; anything else
/// (out of file descriptors, mostly) is logged and waited out, so the loop does not spin.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!("cannot accept a connection: {error}; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
