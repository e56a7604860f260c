//! [`AppState`]: what every handler and middleware shares (the store, the keys, telemetry and
//! the default TTL). It holds what other modules own and owns nothing itself, so every
//! handler can depend on it without depending on another handler's module.

use std::sync::Arc;

use baton_store::Store;

use crate::auth::Auth;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Lease time-to-live when a request gives none.
    pub default_ttl_ms: u64,
    /// The API keys in force and their rate limits.
    pub auth: Arc<Auth>,
    /// `/metrics` and the request log.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
}
