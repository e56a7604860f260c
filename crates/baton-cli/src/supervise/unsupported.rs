//! Systems other than Linux: the same API, refusing to start anything.

use std::ffi::OsString;
use std::io::Write;
use std::time::Duration;

use super::{Error, Outcome, Spec};

/// Refuses to supervise: only Linux is supported.
#[derive(Debug)]
pub struct Supervisor {
    /// No value of this type exists.
    never: std::convert::Infallible,
}

/// A handle to a [`Supervisor`], which cannot exist here.
#[derive(Debug, Clone)]
pub struct Control {
    /// No value of this type exists.
    never: std::convert::Infallible,
}

impl Supervisor {
    /// Always fails with [`Error::Unsupported`].
    pub fn spawn(spec: Spec) -> Result<Self, Error> {
        let _ = spec;
        Err(Error::Unsupported)
    }

    /// The job's process-group id.
    pub fn pgid(&self) -> u32 {
        match self.never {}
    }

    /// A handle to stop the tree from another task.
    pub fn control(&self) -> Control {
        match self.never {}
    }

    /// Waits until the tree is gone.
    pub async fn wait(&mut self) -> Result<Outcome, Error> {
        match self.never {}
    }

    /// Stops the tree.
    pub async fn stop(&mut self, _grace: Duration) -> Result<Outcome, Error> {
        match self.never {}
    }

    /// Waits, stopping the tree at `deadline`.
    pub async fn wait_until(
        &mut self,
        _deadline: tokio::time::Instant,
        _grace: Duration,
    ) -> Result<Outcome, Error> {
        match self.never {}
    }
}

impl Control {
    /// Tells the guardian the lease's new deadline.
    pub fn set_deadline(&self, _deadline: std::time::Instant) {
        match self.never {}
    }

    /// Asks for the tree to be stopped.
    pub fn request_stop(&self, _grace: Duration) {
        match self.never {}
    }

    /// Stops the tree.
    pub async fn stop(&self, _grace: Duration) {
        match self.never {}
    }

    /// Whether the tree is gone.
    pub fn is_finished(&self) -> bool {
        match self.never {}
    }
}

/// The guardian exists on Linux only.
pub fn guard_main<I>(_args: I) -> u8
where
    I: IntoIterator<Item = OsString>,
{
    let _ = writeln!(std::io::stderr(), "baton: {}", Error::Unsupported);
    70
}
