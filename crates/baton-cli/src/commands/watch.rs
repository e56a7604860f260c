//! `baton watch LOCK` and `baton watch --prefix P`: each change of holders and queue (and of
//! jobs) as it happens, from the event stream (`GET /v1/events`), one line per event: human
//! text, or with `--json` one JSON object per line. Runs until interrupted (exit 130 for
//! SIGINT, 128 + the signal's number otherwise), or until the server cannot be reached.

use baton_client::EventOptions;
use baton_client::proto::{Event, EventKind};
use jiff::Timestamp;

use super::Context;
use super::keeper::Signals;
use crate::args::WatchArgs;
use crate::exit;
use crate::output::{self, print_line};

/// `baton watch`.
pub async fn watch(context: &Context, args: WatchArgs) -> anyhow::Result<u8> {
    let (prefix, exact) = match (args.lock, args.prefix) {
        (Some(lock), None) => (lock.clone(), Some(lock)),
        (None, Some(prefix)) => (prefix, None),
        _ => {
            return Ok(context.usage_error("baton watch", "give a LOCK or --prefix P, not both"));
        }
    };
    let mut signals = Signals::new()?;
    let mut stream = context.client.events(EventOptions {
        prefix: Some(prefix).filter(|prefix| !prefix.is_empty()),
        last_event_id: None,
    });
    loop {
        let event = tokio::select! {
            event = stream.next() => event?,
            signal = signals.next() => {
                return Ok(u8::try_from(128 + signal).unwrap_or(exit::INTERRUPTED));
            }
        };
        // `watch LOCK` follows that lock only, not the others its name is a prefix of.
        if let (Some(exact), Some(lock)) = (&exact, &event.lock)
            && lock != exact
        {
            continue;
        }
        if context.json {
            print_line(&serde_json::to_string(&event)?)?;
        } else {
            print_line(&human(&event, Timestamp::now()))?;
        }
    }
}

/// One event as a line: `TIME LOCK WHAT`.
pub fn human(event: &Event, now: Timestamp) -> String {
    let lock = event.lock.as_deref().unwrap_or("-");
    let owner = event.owner.as_deref().unwrap_or("?");
    let token = event
        .token
        .map(|token| format!(" (token {token})"))
        .unwrap_or_default();
    let what = match event.kind {
        EventKind::Granted => {
            let expires = event
                .expires_at
                .map(|at| format!(", expires {}", output::relative(at, now)))
                .unwrap_or_default();
            let queue = if event.from_queue == Some(true) {
                " from the queue"
            } else {
                ""
            };
            format!("granted to {owner}{queue}{token}{expires}")
        }
        EventKind::Released => format!("released by {owner}{token}"),
        EventKind::Expired => format!("expired: {owner}{token} stopped renewing"),
        EventKind::Revoked => format!("revoked: {owner}{token}"),
        EventKind::Queued => match event.position {
            Some(position) => format!("{owner} queued at position {position}"),
            None => format!("{owner} queued"),
        },
        EventKind::LeftQueue => format!(
            "{owner} left the queue ({})",
            event.reason.as_deref().unwrap_or("gone")
        ),
        EventKind::Job => match &event.job {
            Some(job) => {
                // The wire's name of the state (`timed_out`, …).
                let state = serde_json::to_value(job.state)
                    .ok()
                    .and_then(|value| value.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let mut line = format!("job {} {} {state}", job.name, job.id);
                if let Some(code) = job.exit_code {
                    line.push_str(&format!(" (exit {code})"));
                }
                if let Some(reason) = &job.reason {
                    line.push_str(&format!(": {reason}"));
                }
                format!("{line} [{owner}]")
            }
            None => "job changed".to_owned(),
        },
        EventKind::Output => {
            let job = event
                .job
                .as_ref()
                .map(|job| format!("job {} {}", job.name, job.id))
                .unwrap_or_else(|| "job".to_owned());
            let bytes = event.text.as_deref().map_or(0, str::len);
            format!("{job} printed {bytes} bytes [{owner}]")
        }
        EventKind::Missed | EventKind::Dropped => format!(
            "{}: {}",
            event.kind.as_str(),
            event.reason.as_deref().unwrap_or("")
        ),
    };
    format!("{} {lock} {what}", output::absolute(event.at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_client::proto::{JobEvent, JobState};

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn event(kind: EventKind) -> Event {
        Event {
            mode: None,
            value: None,
            id: "s-1".into(),
            seq: 1,
            kind,
            at: at(60),
            lock: Some("deploy".into()),
            owner: Some("ci".into()),
            token: Some(7),
            granted_at: None,
            expires_at: None,
            from_queue: None,
            position: None,
            reason: None,
            job: None,
            text: None,
            offset: None,
        }
    }

    #[test]
    fn each_kind_reads_as_a_sentence() {
        let granted = Event {
            expires_at: Some(at(90)),
            from_queue: Some(true),
            ..event(EventKind::Granted)
        };
        assert_eq!(
            human(&granted, at(60)),
            "1970-01-01 00:01:00Z deploy granted to ci from the queue (token 7), expires in 30s"
        );
        assert_eq!(
            human(&event(EventKind::Released), at(60)),
            "1970-01-01 00:01:00Z deploy released by ci (token 7)"
        );
        let queued = Event {
            position: Some(2),
            token: None,
            ..event(EventKind::Queued)
        };
        assert_eq!(
            human(&queued, at(60)),
            "1970-01-01 00:01:00Z deploy ci queued at position 2"
        );
        let left = Event {
            reason: Some("lapsed".into()),
            ..event(EventKind::LeftQueue)
        };
        assert!(human(&left, at(60)).ends_with("ci left the queue (lapsed)"));
        let job = Event {
            job: Some(JobEvent {
                id: "job_1".into(),
                name: "nightly".into(),
                state: JobState::TimedOut,
                reason: None,
                exit_code: Some(124),
                host: None,
                batch: None,
                created_at: at(0),
                started_at: None,
                finished_at: None,
            }),
            ..event(EventKind::Job)
        };
        assert!(
            human(&job, at(60)).ends_with("job nightly job_1 timed_out (exit 124) [ci]"),
            "{}",
            human(&job, at(60))
        );
        let output = Event {
            kind: EventKind::Output,
            text: Some("line 1\nline 2\n".into()),
            offset: Some(0),
            ..job
        };
        assert!(
            human(&output, at(60)).ends_with("job nightly job_1 printed 14 bytes [ci]"),
            "{}",
            human(&output, at(60))
        );
    }
}
