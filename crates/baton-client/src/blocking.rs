//! A blocking client: the async [`crate::Client`] behind calls that wait for their answer, for
//! programs that do not run a tokio runtime of their own.
//!
//! **Architecture invariant**: this module holds no HTTP and no lease logic. Every method hands
//! the same call of the async [`crate::Client`] to a private current-thread tokio runtime,
//! which runs on a thread of its own (`baton-client`), and waits for the answer on a channel.
//! So the HTTP contract (fail-over, retries, request ids, error mapping) exists once, and the
//! blocking [`LeaseGuard`] is the async [`crate::LeaseGuard`]: its renewal task runs on that
//! runtime thread while the caller's code runs, and its local deadline is counted from when
//! each grant or renewal was *sent* (guarantee G6), exactly as in the async guard.
//!
//! The runtime thread lives as long as the last clone of the [`Client`] or the last
//! [`LeaseGuard`] made from it, then ends on its own.
//!
//! Calling a blocking method from async code blocks that task's worker thread until the answer
//! comes; inside a tokio runtime, use the async [`crate::Client`] instead.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use baton_proto::{
    AcquireRequest, AcquireSetRequest, CancelResponse, FenceResponse, Health, History, Lease,
    LockInfo, LockList, ReleaseResponse, RevokeResponse,
};
use tokio::sync::oneshot;

use crate::client::{Acquired, Granted, LockOptions};
use crate::error::{Error, Result};
use crate::guard::{LeaseStatus, LostReason};
use crate::retry::RetryPolicy;
use crate::sets::AcquiredSet;

/// The name of the thread that runs the private runtime.
const RUNTIME_THREAD_NAME: &str = "baton-client";

/// The private runtime: a current-thread tokio runtime driven by a thread of its own until the
/// last owner drops this.
#[derive(Debug)]
struct Runtime {
    handle: tokio::runtime::Handle,
    /// Dropping it (with this struct) ends the runtime thread.
    _shutdown: oneshot::Sender<()>,
}

impl Runtime {
    /// Starts the runtime thread and waits until its runtime is ready.
    fn start() -> Result<Runtime> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| Error::Config {
                message: format!("cannot start the blocking client's runtime: {error}"),
            })?;
        let handle = runtime.handle().clone();
        let (shutdown, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(RUNTIME_THREAD_NAME.to_owned())
            .spawn(move || {
                // Drives the IO and timer drivers, and every task spawned on `handle`, until the
                // sender is dropped. Tasks still running then (a spawned release) are dropped.
                let _ = runtime.block_on(stopped);
            })
            .map_err(|error| Error::Config {
                message: format!("cannot start the blocking client's runtime thread: {error}"),
            })?;
        Ok(Runtime {
            handle,
            _shutdown: shutdown,
        })
    }

    /// Runs `future` on the runtime thread and waits for its output.
    fn run<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (sender, receiver) = mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = sender.send(future.await);
        });
        receiver.recv().unwrap_or_else(|_| {
            // The task was dropped unfinished: it panicked, or the runtime is gone.
            Err(Error::Config {
                message: "the blocking client's runtime thread stopped".to_owned(),
            })
        })
    }
}

/// A blocking client for one baton deployment; every method waits for the server's answer.
///
/// It has the methods of the async [`crate::Client`] that a program holding locks needs, with
/// the same behaviour. Cheap to clone: clones share the connection pool and the runtime thread.
#[derive(Debug, Clone)]
pub struct Client {
    inner: crate::Client,
    runtime: Arc<Runtime>,
}

/// Sets up a blocking [`Client`]: the options of [`crate::ClientBuilder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    inner: crate::ClientBuilder,
}

impl ClientBuilder {
    /// See [`crate::ClientBuilder::ca_file`].
    pub fn ca_file(self, path: impl Into<PathBuf>) -> ClientBuilder {
        ClientBuilder {
            inner: self.inner.ca_file(path),
        }
    }

    /// See [`crate::ClientBuilder::api_key`].
    pub fn api_key(self, key: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            inner: self.inner.api_key(key),
        }
    }

    /// See [`crate::ClientBuilder::retry`].
    pub fn retry(self, retry: RetryPolicy) -> ClientBuilder {
        ClientBuilder {
            inner: self.inner.retry(retry),
        }
    }

    /// See [`crate::ClientBuilder::request_timeout`].
    pub fn request_timeout(self, timeout: Duration) -> ClientBuilder {
        ClientBuilder {
            inner: self.inner.request_timeout(timeout),
        }
    }

    /// Checks the settings, builds the client and starts its runtime thread.
    pub fn build(self) -> Result<Client> {
        Client::wrap(self.inner.build()?)
    }
}

impl Client {
    /// A client for the comma-separated base URLs; see [`crate::Client::new`].
    pub fn new(base_urls: &str) -> Result<Client> {
        Client::builder(base_urls).build()
    }

    /// A builder for the comma-separated base URLs.
    pub fn builder(base_urls: &str) -> ClientBuilder {
        ClientBuilder {
            inner: crate::Client::builder(base_urls),
        }
    }

    /// A client for `BATON_URL`, `BATON_API_KEY` and `BATON_CA_FILE`; see
    /// [`crate::Client::from_env`].
    pub fn from_env() -> Result<Client> {
        Client::wrap(crate::Client::from_env()?)
    }

    /// A blocking client that sends its calls through `client` (sharing its connection pool).
    pub fn wrap(client: crate::Client) -> Result<Client> {
        Ok(Client {
            inner: client,
            runtime: Arc::new(Runtime::start()?),
        })
    }

    /// The async client underneath.
    pub fn async_client(&self) -> &crate::Client {
        &self.inner
    }

    /// The base URLs, in the order given.
    pub fn base_urls(&self) -> &[String] {
        self.inner.base_urls()
    }

    /// The base URL that will be tried first: the one that answered last.
    pub fn current_url(&self) -> &str {
        self.inner.current_url()
    }

    /// Runs `call` with a clone of the async client on the runtime thread.
    fn run<T, F>(&self, call: impl FnOnce(crate::Client) -> F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        self.runtime.run(call(self.inner.clone()))
    }

    /// See [`crate::Client::acquire`].
    pub fn acquire(&self, name: &str, request: &AcquireRequest) -> Result<Acquired> {
        let (name, request) = (name.to_owned(), request.clone());
        self.run(|client| async move { client.acquire(&name, &request).await })
    }

    /// See [`crate::Client::wait_ticket`].
    pub fn wait_ticket(&self, ticket_id: &str, wait: Duration) -> Result<Acquired> {
        let ticket_id = ticket_id.to_owned();
        self.run(|client| async move { client.wait_ticket(&ticket_id, wait).await })
    }

    /// See [`crate::Client::cancel_ticket`].
    pub fn cancel_ticket(&self, ticket_id: &str) -> Result<CancelResponse> {
        let ticket_id = ticket_id.to_owned();
        self.run(|client| async move { client.cancel_ticket(&ticket_id).await })
    }

    /// See [`crate::Client::renew`].
    pub fn renew(&self, lease_id: &str, ttl: Option<Duration>) -> Result<Granted> {
        let lease_id = lease_id.to_owned();
        self.run(|client| async move { client.renew(&lease_id, ttl).await })
    }

    /// See [`crate::Client::renew_with_value`].
    pub fn renew_with_value(
        &self,
        lease_id: &str,
        ttl: Option<Duration>,
        value: Option<String>,
    ) -> Result<Granted> {
        let lease_id = lease_id.to_owned();
        self.run(|client| async move { client.renew_with_value(&lease_id, ttl, value).await })
    }

    /// See [`crate::Client::release`].
    pub fn release(&self, lease_id: &str) -> Result<ReleaseResponse> {
        let lease_id = lease_id.to_owned();
        self.run(|client| async move { client.release(&lease_id).await })
    }

    /// See [`crate::Client::wait_for_lease`]: queues and waits, up to `options.wait`.
    pub fn wait_for_lease(&self, name: &str, options: &LockOptions) -> Result<Granted> {
        let (name, options) = (name.to_owned(), options.clone());
        self.run(|client| async move { client.wait_for_lease(&name, &options).await })
    }

    /// Acquires `name` as [`Client::wait_for_lease`] does and returns a guard that renews the
    /// lease on the runtime thread while the caller works, and releases it when dropped.
    pub fn lock(&self, name: &str, options: LockOptions) -> Result<LeaseGuard> {
        let name = name.to_owned();
        // `crate::Client::lock` spawns the renewal task on the runtime it runs on: ours.
        let guard = self.run(|client| async move { client.lock(&name, options).await })?;
        Ok(LeaseGuard {
            inner: Some(guard),
            runtime: Arc::clone(&self.runtime),
        })
    }

    /// See [`crate::Client::acquire_set`].
    pub fn acquire_set(&self, request: &AcquireSetRequest) -> Result<AcquiredSet> {
        let request = request.clone();
        self.run(|client| async move { client.acquire_set(&request).await })
    }

    /// Acquires every lock of `names` together as [`crate::Client::lock_set`] does and returns
    /// one guard per lease, in the order of `names`: each renews its lease on the runtime
    /// thread and releases it when dropped.
    pub fn lock_set(&self, names: &[String], options: LockOptions) -> Result<Vec<LeaseGuard>> {
        let names = names.to_vec();
        let guards = self.run(|client| async move { client.lock_set(&names, options).await })?;
        Ok(guards
            .into_iter()
            .map(|guard| LeaseGuard {
                inner: Some(guard),
                runtime: Arc::clone(&self.runtime),
            })
            .collect())
    }

    /// See [`crate::Client::locks`].
    pub fn locks(&self) -> Result<LockList> {
        self.run(|client| async move { client.locks().await })
    }

    /// See [`crate::Client::lock_info`].
    pub fn lock_info(&self, name: &str) -> Result<LockInfo> {
        let name = name.to_owned();
        self.run(|client| async move { client.lock_info(&name).await })
    }

    /// See [`crate::Client::history`].
    pub fn history(&self, name: &str, limit: Option<u32>) -> Result<History> {
        let name = name.to_owned();
        self.run(|client| async move { client.history(&name, limit).await })
    }

    /// See [`crate::Client::fence`]: a stale token is `Ok` with `accepted: false`.
    pub fn fence(&self, name: &str, token: u64) -> Result<FenceResponse> {
        let name = name.to_owned();
        self.run(|client| async move { client.fence(&name, token).await })
    }

    /// See [`crate::Client::revoke`] (administrators only).
    pub fn revoke(&self, name: &str, token: u64) -> Result<RevokeResponse> {
        let name = name.to_owned();
        self.run(|client| async move { client.revoke(&name, token).await })
    }

    /// See [`crate::Client::health`].
    pub fn health(&self) -> Result<Health> {
        self.run(|client| async move { client.health().await })
    }

    /// See [`crate::Client::ready`].
    pub fn ready(&self) -> Result<Health> {
        self.run(|client| async move { client.ready().await })
    }
}

/// A held lease that renews itself on the client's runtime thread and is released when
/// dropped: the blocking face of [`crate::LeaseGuard`].
///
/// Check [`LeaseGuard::is_lost`] between steps of the guarded work (or wait with
/// [`LeaseGuard::wait_lost`] on another thread) and stop when it says so:
///
/// ```no_run
/// # fn example(client: baton_client::blocking::Client) -> baton_client::Result<()> {
/// let guard = client.lock("deploy", baton_client::LockOptions::default())?;
/// for step in 0..10 {
///     if guard.is_lost() {
///         eprintln!("stopping before step {step}: {:?}", guard.status());
///         break;
///     }
///     // one step of the work, passing guard.token() to the resource as a fencing token
/// }
/// guard.release()?;
/// # Ok(())
/// # }
/// ```
///
/// Dropping the guard stops the renewals and releases the lease before `drop` returns (the
/// client's release, with its retry policy and request timeout as bounds), so the lock goes to
/// the next waiter at once; a lease already lost is not released again. Use
/// [`LeaseGuard::release`] to see the server's answer.
#[derive(Debug)]
pub struct LeaseGuard {
    /// `None` only once released.
    inner: Option<crate::LeaseGuard>,
    /// Keeps the runtime thread, on which the renewal task runs, alive.
    runtime: Arc<Runtime>,
}

impl LeaseGuard {
    /// The async guard; present until `release` or `drop` takes it.
    fn guard(&self) -> &crate::LeaseGuard {
        match &self.inner {
            Some(guard) => guard,
            None => unreachable!("the guard is only taken by release and drop"),
        }
    }

    /// The lease as of its last successful renewal.
    pub fn lease(&self) -> Lease {
        self.guard().lease()
    }

    /// The lease's fencing token: pass it to the resource the lock protects.
    pub fn token(&self) -> u64 {
        self.guard().token()
    }

    /// The lease's secret id.
    pub fn lease_id(&self) -> &str {
        self.guard().lease_id()
    }

    /// The current local deadline, on this process's monotonic clock: the guarded work must
    /// have stopped by then unless a renewal moves it.
    pub fn deadline(&self) -> std::time::Instant {
        self.guard().deadline().into_std()
    }

    /// Held or lost, now.
    pub fn status(&self) -> LeaseStatus {
        self.guard().status()
    }

    /// True once the lease is lost: revoked, expired, or its local deadline passed without a
    /// successful renewal.
    pub fn is_lost(&self) -> bool {
        self.guard().is_lost()
    }

    /// Waits up to `timeout` for the lease to be lost and says why, or `None` if it is still
    /// held when `timeout` has passed.
    pub fn wait_lost(&self, timeout: Duration) -> Option<LostReason> {
        let lost = self.guard().lost();
        self.runtime
            .run(async move { Ok(tokio::time::timeout(timeout, lost).await.ok()) })
            .ok()
            .flatten()
    }

    /// Stops renewing and releases the lease, handing the lock on at once. The answer says
    /// `released: false` (and why) when the lease had already ended.
    pub fn release(mut self) -> Result<ReleaseResponse> {
        match self.inner.take() {
            Some(guard) => self.runtime.run(guard.release()),
            None => unreachable!("the guard is only taken by release and drop"),
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let Some(guard) = self.inner.take() else {
            return;
        };
        if guard.is_lost() {
            // Nothing to hand on; dropping the async guard stops its renewal task.
            drop(guard);
            return;
        }
        match self.runtime.run(guard.release()) {
            Ok(answer) if !answer.released => {
                tracing::warn!(reason = ?answer.reason, "the dropped lease had already ended");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot release a dropped lease; it will expire");
            }
        }
    }
}
