//! `baton logs JOB [-f]`: a job's output, and with `-f` the rest of it as its runner sends it,
//! until the job ends.
//!
//! Following reads the event stream (`GET /v1/events`, `output` events of the job's lock),
//! not a long-poll: the stream is what the server already keeps for every watcher (resumable
//! with `Last-Event-ID`, reconnected by `baton_client`'s `EventStream`), and the job's end
//! arrives on it as a `job` event, so one connection tells both. To lose and repeat nothing
//! between the job's output read now and the stream, the stream is subscribed *first*, then the
//! job is read: its `output_total_bytes` says how far its output went, and each `output`
//! event's `offset` says where its text starts, so text already printed is skipped and text
//! the runner skipped (it sends a bounded amount per append) shows as a gap.

use std::io::Write;

use baton_client::EventOptions;
use baton_client::proto::{EventKind, JobDetail};
use serde::Serialize;

use super::Context;
use super::keeper::Signals;
use crate::args::LogsArgs;
use crate::exit;

/// One chunk of output as `--json` prints it, a JSON object per line.
#[derive(Serialize)]
struct Chunk<'a> {
    /// The job.
    job: &'a str,
    /// How many bytes of the job's output came before `text`.
    offset: u64,
    /// The output.
    text: &'a str,
}

/// `baton logs JOB [-f]`.
pub async fn logs(context: &Context, args: LogsArgs) -> anyhow::Result<u8> {
    let detail = context.client.job(&args.id).await?;
    if !args.follow || detail.job.state.is_final() {
        print_tail(context, &detail)?;
        return Ok(exit::SUCCESS);
    }
    let mut signals = Signals::new()?;
    let mut stream = context.client.events(EventOptions {
        prefix: Some(detail.job.lock.clone()),
        last_event_id: None,
    });
    stream.subscribe().await?;
    // Read after subscribing: whatever is appended from here on arrives on the stream.
    let detail = context.client.job(&args.id).await?;
    print_tail(context, &detail)?;
    if detail.job.state.is_final() {
        return Ok(exit::SUCCESS);
    }
    let mut printed = detail.job.output_total_bytes;
    loop {
        let event = tokio::select! {
            event = stream.next() => event?,
            signal = signals.next() => {
                return Ok(u8::try_from(128 + signal).unwrap_or(exit::INTERRUPTED));
            }
        };
        if event.kind == EventKind::Missed {
            // The server restarted or changed, or this follower fell out of its window: read
            // the job afresh and go on from where its output is now.
            eprintln!("baton logs: events were missed; the output may have a gap here");
            let detail = context.client.job(&args.id).await?;
            if detail.job.state.is_final() {
                return Ok(exit::SUCCESS);
            }
            printed = detail.job.output_total_bytes;
            continue;
        }
        let Some(job) = event.job.as_ref().filter(|job| job.id == args.id) else {
            continue;
        };
        match event.kind {
            EventKind::Output => {
                let (Some(text), Some(offset)) = (event.text.as_deref(), event.offset) else {
                    continue;
                };
                printed = print_new(context, &args.id, printed, offset, text)?;
            }
            EventKind::Job if job.state.is_final() => return Ok(exit::SUCCESS),
            _ => {}
        }
    }
}

/// Prints the part of `text` (which starts at byte `offset` of the job's output) after byte
/// `printed`; returns how far the output printed now goes.
fn print_new(
    context: &Context,
    job: &str,
    printed: u64,
    offset: u64,
    text: &str,
) -> anyhow::Result<u64> {
    let end = offset + text.len() as u64;
    if end <= printed {
        return Ok(printed);
    }
    if offset > printed {
        eprintln!(
            "baton logs: {} bytes of output were not sent by the runner (it prints faster than \
             it may append)",
            offset - printed
        );
    }
    let mut start = usize::try_from(printed.saturating_sub(offset)).unwrap_or(text.len());
    while start < text.len() && !text.is_char_boundary(start) {
        start += 1;
    }
    let new = &text[start..];
    if context.json {
        let chunk = Chunk {
            job,
            offset: offset + start as u64,
            text: new,
        };
        crate::output::print_line(&serde_json::to_string(&chunk)?)?;
    } else {
        write_raw(new)?;
    }
    Ok(end)
}

/// The job's output kept now: raw, or with `--json` the job's record with it.
fn print_tail(context: &Context, detail: &JobDetail) -> anyhow::Result<()> {
    if context.json {
        let offset = detail
            .job
            .output_total_bytes
            .saturating_sub(detail.output_tail.len() as u64);
        let chunk = Chunk {
            job: &detail.job.id,
            offset,
            text: &detail.output_tail,
        };
        return crate::output::print_line(&serde_json::to_string(&chunk)?);
    }
    write_raw(&detail.output_tail)
}

/// Writes output as it is (no newline added). A closed stdout (`| head`) is not an error.
fn write_raw(text: &str) -> anyhow::Result<()> {
    if text.is_empty() {
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(anyhow::Error::new(error).context("cannot write to stdout")),
    }
}
