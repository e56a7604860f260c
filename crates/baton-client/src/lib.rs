//! A typed async client for baton, the distributed lock service.
//!
//! - [`Client`] has one method per endpoint of the `/v1` HTTP API and returns the
//!   [`baton_proto`] types; it fails over between several server URLs and retries what is safe
//!   to retry (see [`RetryPolicy`]).
//! - [`Client::lock`] queues for a lock, waits for the grant, and returns a [`LeaseGuard`] that
//!   renews the lease in the background, reports its loss ([`LeaseGuard::lost`]) by the
//!   holder's own clock (guarantee G6), and releases it on drop.
//! - [`Error`] says what the caller should do next; it keeps the server's code and message.
//!
//! ```no_run
//! # async fn example() -> baton_client::Result<()> {
//! use baton_client::{Client, LockOptions};
//! use std::time::Duration;
//!
//! let client = Client::from_env()?; // BATON_URL, BATON_API_KEY
//! let options = LockOptions { wait: Some(Duration::from_secs(60)), ..LockOptions::default() };
//! let guard = client.lock("team-a/deploy", options).await?;
//! println!("holding with fencing token {}", guard.token());
//! guard.release().await?;
//! # Ok(())
//! # }
//! ```
//!
//! **API boundary**: this crate speaks HTTP to a baton server and nothing else; it depends on
//! no server, store or core crate. Only plain `http://` URLs work for now (no TLS yet).

mod client;
mod error;
mod guard;
mod path;
mod retry;

pub use baton_proto as proto;
pub use client::{
    Acquired, Client, ClientBuilder, DEFAULT_URL, Granted, JobQuery, JobStart, LONG_POLL_MAX,
    LockOptions, default_owner, generate_request_id, owner_label,
};
pub use error::{Code, Error, Result};
pub use guard::{
    LeaseGuard, LeaseStatus, LostReason, drift_margin, local_deadline, renewal_instant,
};
pub use path::{LOCK_NAME_CHARS_MAX, encode_segment, validate_lock_name};
pub use retry::RetryPolicy;
