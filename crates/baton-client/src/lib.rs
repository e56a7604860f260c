//! A typed client for baton, the distributed lock service, async and blocking.
//!
//! - [`Client`] has one method per endpoint of the `/v1` HTTP API and returns the
//!   [`baton_proto`] types; it fails over between several server URLs
//!   (`http://a:7878,http://b:7878`), retries what is safe to retry (see [`RetryPolicy`]),
//!   sends an API key ([`ClientBuilder::api_key`]) and speaks `https://` through rustls,
//!   trusting the system's roots and any private CA given with [`ClientBuilder::ca_file`].
//! - [`Client::lock`] queues for a lock, waits for the grant, and returns a [`LeaseGuard`] that
//!   renews the lease in the background, reports its loss ([`LeaseGuard::lost`]) by the
//!   holder's own clock (guarantee G6), and releases it on drop.
//! - `blocking` (feature `blocking`, on by default) has the same client without async: a thin
//!   wrapper that runs the async [`Client`] on a private current-thread tokio runtime on a
//!   thread of its own, so there is one implementation of the HTTP contract, and whose
//!   `blocking::LeaseGuard` is the async guard (renewing on that thread while the caller's
//!   code runs). The feature adds no dependency; `default-features = false` leaves it out.
//! - [`Client::events`] follows the event stream (`GET /v1/events`): every grant, release,
//!   expiry, queue change and job state change the key may read, reconnecting with
//!   `Last-Event-ID` so nothing in the server's window is lost.
//! - [`Error`] says what the caller should do next; it keeps the server's code and message.
//!
//! The crate's `examples/` hold a complete program for each: `async_lock.rs` and
//! `blocking_lock.rs` (`cargo run -p baton-client --example blocking_lock`).
//!
//! Async, inside a tokio runtime:
//!
//! ```no_run
//! # async fn example() -> baton_client::Result<()> {
//! use baton_client::{Client, LockOptions};
//! use std::time::Duration;
//!
//! let client = Client::from_env()?; // BATON_URL, BATON_API_KEY, BATON_CA_FILE
//! let options = LockOptions { wait: Some(Duration::from_secs(60)), ..LockOptions::default() };
//! let guard = client.lock("team-a/deploy", options).await?;
//! println!("holding with fencing token {}", guard.token());
//! tokio::select! {
//!     reason = guard.lost() => eprintln!("stopping: {reason}"),
//!     () = async { /* the critical section */ } => {}
//! }
//! guard.release().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Blocking, without a runtime of your own:
//!
//! ```no_run
//! # #[cfg(feature = "blocking")]
//! # fn example() -> baton_client::Result<()> {
//! use baton_client::LockOptions;
//! use baton_client::blocking::Client;
//!
//! let client = Client::builder("https://baton-a:7878,https://baton-b:7878")
//!     .api_key("bk_...")
//!     .ca_file("/etc/baton/ca.pem")
//!     .build()?;
//! let guard = client.lock("team-a/deploy", LockOptions::default())?;
//! println!("holding with fencing token {}", guard.token());
//! // The critical section; check guard.is_lost() between its steps.
//! guard.release()?; // or let the guard drop: that releases too
//! # Ok(())
//! # }
//! ```
//!
//! **API boundary**: this crate speaks HTTP to a baton server and nothing else; it depends on
//! no server, store or core crate.

#[cfg(feature = "blocking")]
pub mod blocking;
mod client;
mod error;
mod events;
mod guard;
mod path;
mod retry;
mod sets;

pub use baton_proto as proto;
pub use client::{
    Acquired, Client, ClientBuilder, DEFAULT_URL, Granted, JobQuery, JobStart, LONG_POLL_MAX,
    LockOptions, default_owner, generate_request_id, owner_label,
};
pub use error::{Code, Error, Result};
pub use events::{EventOptions, EventStream};
pub use guard::{
    LeaseGuard, LeaseStatus, LostReason, drift_margin, local_deadline, renewal_instant,
};
pub use path::{LOCK_NAME_CHARS_MAX, encode_segment, validate_lock_name};
pub use retry::RetryPolicy;
pub use sets::AcquiredSet;
