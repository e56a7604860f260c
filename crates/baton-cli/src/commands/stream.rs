//! Job output while it runs: what `baton run` and `baton parallel` send the server as the
//! command prints, so that `baton logs -f`, `baton job ID`, the event stream and the dashboard
//! show it before the job ends.
//!
//! The supervisor's output pumps write each stream through a [`Tee`], which passes the bytes on
//! unchanged and also puts them in the job's [`OutputFeed`]. A streamer task
//! ([`OutputStreamer`]) takes what the feed holds every [`OUTPUT_APPEND_INTERVAL`] and appends
//! it (`POST /v1/jobs/{id}/output`), one call at a time, so a job makes at most four appends a
//! second, each at most [`OUTPUT_APPEND_BYTES_MAX`] bytes. When the command prints faster than
//! that, the feed keeps the end of what is pending (the server keeps only the tail anyway) and
//! the append says how many bytes it skipped, so offsets stay true. Appending is best effort:
//! the output also goes with the job's finish report, as before, so a failed append loses
//! nothing of the tail. The answer to an append carries the server's stop request (a cancel,
//! a replacing run), so a command that prints learns of a cancel sooner than at its next
//! heartbeat.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use baton_client::proto::{AppendOutputRequest, ErrorCode, OUTPUT_APPEND_BYTES_MAX};
use baton_client::{Client, Error};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::keeper::KeeperStop;
use crate::supervise::Control;

/// How often pending output is appended: at most this many appends a second per job is four.
pub const OUTPUT_APPEND_INTERVAL: Duration = Duration::from_millis(250);

/// How long the last append may take once the command ended, before the finish report goes
/// (which carries the tail in any case).
pub const LAST_APPEND_BOUND: Duration = Duration::from_secs(2);

/// Output waiting to be appended: at most [`OUTPUT_APPEND_BYTES_MAX`] bytes, the newest.
#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Bytes dropped from the front since the last take.
    skipped: u64,
}

/// A job's output on its way to the server. Cheap to clone: the clones share one buffer.
#[derive(Debug, Clone, Default)]
pub struct OutputFeed {
    pending: Arc<Mutex<Pending>>,
}

impl OutputFeed {
    /// An empty feed.
    pub fn new() -> OutputFeed {
        OutputFeed::default()
    }

    /// A writer that passes everything to `sink` and into this feed.
    pub fn tee(&self, sink: Box<dyn Write + Send>) -> Box<dyn Write + Send> {
        Box::new(Tee {
            sink,
            feed: self.clone(),
        })
    }

    fn push(&self, chunk: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.bytes.extend_from_slice(chunk);
        let over = pending.bytes.len().saturating_sub(OUTPUT_APPEND_BYTES_MAX);
        if over > 0 {
            pending.bytes.drain(..over);
            pending.skipped += over as u64;
        }
    }

    /// Takes what is pending as text, with the bytes skipped before it; `None` when nothing is.
    /// A UTF-8 sequence cut at the end stays for the next take; other invalid bytes become
    /// U+FFFD (and the text is cut to the bound again should that make it longer).
    fn take(&self) -> Option<(String, u64)> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let complete = pending.bytes.len() - incomplete_suffix(&pending.bytes);
        if complete == 0 && pending.skipped == 0 {
            return None;
        }
        let bytes: Vec<u8> = pending.bytes.drain(..complete).collect();
        let mut skipped = std::mem::take(&mut pending.skipped);
        drop(pending);
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if text.len() > OUTPUT_APPEND_BYTES_MAX {
            let mut cut = text.len() - OUTPUT_APPEND_BYTES_MAX;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            skipped += cut as u64;
            text.drain(..cut);
        }
        Some((text, skipped))
    }
}

/// How many bytes at the end of `bytes` start a UTF-8 sequence that is not complete yet.
fn incomplete_suffix(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let byte = bytes[bytes.len() - back];
        let needed = match byte {
            0x00..=0x7f => return 0,
            0x80..=0xbf => continue,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            _ => 4,
        };
        return if needed > back { back } else { 0 };
    }
    0
}

/// Writes to a sink and into an [`OutputFeed`].
struct Tee {
    sink: Box<dyn Write + Send>,
    feed: OutputFeed,
}

impl Write for Tee {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // The feed takes what the sink took; a sink that fails (stdout closed) still lets the
        // output reach the server.
        let written = self.sink.write(data).unwrap_or(data.len());
        self.feed.push(&data[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}

/// The task that appends a job's output while its command runs. See the module documentation.
pub struct OutputStreamer {
    task: JoinHandle<()>,
    closing: Arc<Notify>,
}

impl OutputStreamer {
    /// Starts appending `feed` to job `job_id`, whose lease is `lease_id`. When an answer says
    /// the runner must stop, `stopped` is told why and the tree is stopped through `control`
    /// with `grace` (as the lease keeper does; the first cause recorded wins).
    pub fn start(
        client: Client,
        job_id: String,
        lease_id: String,
        feed: OutputFeed,
        control: Control,
        grace: Duration,
        stopped: impl Fn(KeeperStop) + Send + 'static,
    ) -> OutputStreamer {
        let closing = Arc::new(Notify::new());
        let task = tokio::spawn(stream(
            client,
            job_id,
            lease_id,
            feed,
            Arc::clone(&closing),
            move |why| {
                stopped(why);
                control.request_stop(grace);
            },
        ));
        OutputStreamer { task, closing }
    }

    /// Appends what is still pending, once, within [`LAST_APPEND_BOUND`], and ends the task.
    pub async fn finish(self) {
        self.closing.notify_one();
        let mut task = self.task;
        if tokio::time::timeout(LAST_APPEND_BOUND, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

async fn stream(
    client: Client,
    job_id: String,
    lease_id: String,
    feed: OutputFeed,
    closing: Arc<Notify>,
    stop: impl Fn(KeeperStop),
) {
    let mut stop_told = false;
    loop {
        let last = tokio::select! {
            () = tokio::time::sleep(OUTPUT_APPEND_INTERVAL) => false,
            () = closing.notified() => true,
        };
        if let Some((text, skipped)) = feed.take() {
            let request = AppendOutputRequest {
                lease_id: lease_id.clone(),
                text,
                skipped_bytes: (skipped > 0).then_some(skipped),
            };
            match client.append_job_output(&job_id, &request).await {
                Ok(answer) => {
                    if let Some(reason) = answer.stop
                        && !stop_told
                    {
                        stop_told = true;
                        stop(KeeperStop::of_stop_request(&reason));
                    }
                }
                // The job no longer runs on the server (lost, revoked): the lease keeper
                // hears of it at its next heartbeat and stops the tree; nothing to append to.
                Err(Error::LeaseLost { .. } | Error::NotFound { .. }) => return,
                Err(Error::Rejected { code, .. }) if code.is(ErrorCode::JobStateConflict) => return,
                // Unreachable or slow server: the output waits in the feed (its end, bounded)
                // for the next round, and goes with the finish report in any case.
                Err(error) => tracing::debug!(%error, "could not append output"),
            }
        }
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feed_keeps_the_end_and_counts_what_it_skipped() {
        let feed = OutputFeed::new();
        assert_eq!(feed.take(), None);
        feed.push(b"hello ");
        feed.push(b"world\n");
        assert_eq!(feed.take(), Some(("hello world\n".to_owned(), 0)));
        assert_eq!(feed.take(), None);
        let big = vec![b'x'; OUTPUT_APPEND_BYTES_MAX + 10];
        feed.push(b"abc");
        feed.push(&big);
        let (text, skipped) = feed.take().unwrap_or_default();
        assert_eq!(text.len(), OUTPUT_APPEND_BYTES_MAX);
        assert_eq!(skipped, 13);
    }

    #[test]
    fn a_cut_utf8_sequence_waits_for_its_end() {
        let feed = OutputFeed::new();
        let euro = "€".as_bytes(); // e2 82 ac
        feed.push(b"a");
        feed.push(&euro[..2]);
        assert_eq!(feed.take(), Some(("a".to_owned(), 0)));
        assert_eq!(feed.take(), None);
        feed.push(&euro[2..]);
        assert_eq!(feed.take(), Some(("€".to_owned(), 0)));
        feed.push(&[0xff, b'b']);
        assert_eq!(feed.take(), Some(("\u{fffd}b".to_owned(), 0)));
    }

    #[test]
    fn incomplete_suffixes() {
        assert_eq!(incomplete_suffix(b""), 0);
        assert_eq!(incomplete_suffix(b"ab"), 0);
        assert_eq!(incomplete_suffix(&[b'a', 0xe2]), 1);
        assert_eq!(incomplete_suffix(&[0xe2, 0x82]), 2);
        assert_eq!(incomplete_suffix("€".as_bytes()), 0);
        assert_eq!(incomplete_suffix(&[0xf0, 0x9f, 0x98]), 3);
        assert_eq!(incomplete_suffix("😀".as_bytes()), 0);
    }
}
