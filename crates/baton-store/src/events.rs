//! The event feed: the lock table's [`Event`]s, numbered, kept in a bounded window for
//! resumption, and broadcast to subscribers.
//!
//! The [`crate::Engine`] publishes a batch's events only once the batch is durable (right after
//! its commit succeeded, or at once for a volatile store), in batch order, so a subscriber never
//! hears of a change that was not acknowledged and hears of changes in the order they happened.
//! Publishing never waits for a subscriber: the broadcast channel is bounded, and a subscriber
//! that falls more than its capacity behind sees [`broadcast::error::RecvError::Lagged`] (the
//! server then drops it).
//!
//! Events are numbered `1, 2, …` per feed; a feed has a random id ([`EventHub::stream`]) that
//! differs after every restart and every change of active server, so that an event id
//! (`STREAM-SEQ`, [`EventId`]) from an earlier feed is recognised as such rather than read as
//! a position in this one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use baton_core::{Event, JobState, LeaseEnd, QueueExit};
use tokio::sync::broadcast;

/// How many of the newest events a feed keeps for subscribers that resume.
pub const EVENT_WINDOW: usize = 10_000;
/// Most bytes of job output (`output` events' text) the window keeps: output events are the
/// only large ones ([`baton_core::limits::OUTPUT_APPEND_BYTES_MAX`] each), so the window drops
/// its oldest events sooner when they carry much output, and its memory stays bounded.
pub const EVENT_WINDOW_OUTPUT_BYTES_MAX: usize = 8 * 1024 * 1024;
/// How far a subscriber's reader may lag behind the feed before it is told it lagged.
const BROADCAST_CAPACITY: usize = 4_096;

/// An event with its number in the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its number: one more than the event before it in the same feed.
    pub seq: u64,
    /// The event.
    pub event: Event,
}

/// An event id as subscribers see it: the feed's id and the event's number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventId {
    /// The feed ([`EventHub::stream`]).
    pub stream: String,
    /// The number.
    pub seq: u64,
}

impl EventId {
    /// Parses `STREAM-SEQ`; `None` for anything else.
    pub fn parse(text: &str) -> Option<EventId> {
        let (stream, seq) = text.trim().rsplit_once('-')?;
        if stream.is_empty() || !stream.bytes().all(|byte| byte.is_ascii_alphanumeric()) {
            return None;
        }
        Some(EventId {
            stream: stream.to_owned(),
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.stream, self.seq)
    }
}

/// What a new subscriber starts with.
#[derive(Debug)]
pub struct Subscription {
    /// The feed's id.
    pub stream: String,
    /// True when the subscriber asked to resume after an event this feed no longer has (older
    /// than the window, from an earlier feed, or unknown): the events in between are lost to
    /// it, and `backlog` is empty. It should read the state afresh.
    pub missed: bool,
    /// The events after the one it resumed from, oldest first.
    pub backlog: Vec<Arc<Published>>,
    /// Every event published from now on.
    pub live: broadcast::Receiver<Arc<Published>>,
}

struct Window {
    kept: VecDeque<Arc<Published>>,
    /// Bytes of output text in `kept`.
    output_bytes: usize,
    /// The number the next event gets.
    next_seq: u64,
}

/// How many events of each kind a feed has published: what `/metrics` counts as grants,
/// releases, expiries, revocations, queue entries and exits, and job transitions. Counted as
/// the events are published, so only what became durable counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// Leases granted (directly or to a queued waiter).
    pub granted: u64,
    /// Leases released by their holders.
    pub released: u64,
    /// Leases that expired.
    pub expired: u64,
    /// Leases revoked by an administrator.
    pub revoked: u64,
    /// Tickets that joined a queue.
    pub queued: u64,
    /// Tickets that left a queue without a grant, by why: lapsed, cancelled, departed.
    pub left_queue: [u64; 3],
    /// Jobs that entered each state (created, or changed to it), in the order of
    /// [`JobState::ALL`].
    pub jobs: [u64; JobState::ALL.len()],
    /// Appends of running jobs' output.
    pub output: u64,
}

/// The ways a ticket leaves a queue without a grant, in the order of
/// [`EventCounts::left_queue`].
pub const QUEUE_EXITS: [QueueExit; 3] =
    [QueueExit::Lapsed, QueueExit::Cancelled, QueueExit::Departed];

#[derive(Default)]
struct Counters {
    granted: AtomicU64,
    released: AtomicU64,
    expired: AtomicU64,
    revoked: AtomicU64,
    queued: AtomicU64,
    left_queue: [AtomicU64; 3],
    jobs: [AtomicU64; JobState::ALL.len()],
    output: AtomicU64,
}

impl Counters {
    fn count(&self, event: &Event) {
        let counter = match event {
            Event::Granted { .. } => &self.granted,
            Event::Ended(record) => match record.end {
                LeaseEnd::Released => &self.released,
                LeaseEnd::Expired => &self.expired,
                LeaseEnd::Revoked => &self.revoked,
            },
            Event::Queued { .. } => &self.queued,
            Event::LeftQueue { why, .. } => match QUEUE_EXITS.iter().position(|exit| exit == why) {
                Some(index) => &self.left_queue[index],
                None => return,
            },
            Event::Job { job, .. } => {
                match JobState::ALL.iter().position(|state| *state == job.state) {
                    Some(index) => &self.jobs[index],
                    None => return,
                }
            }
            Event::Output { .. } => &self.output,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self) -> EventCounts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        EventCounts {
            granted: load(&self.granted),
            released: load(&self.released),
            expired: load(&self.expired),
            revoked: load(&self.revoked),
            queued: load(&self.queued),
            left_queue: std::array::from_fn(|index| load(&self.left_queue[index])),
            jobs: std::array::from_fn(|index| load(&self.jobs[index])),
            output: load(&self.output),
        }
    }
}

/// The bytes of output text an event carries.
fn output_bytes(event: &Event) -> usize {
    match event {
        Event::Output { text, .. } => text.len(),
        _ => 0,
    }
}

/// One feed. See the module documentation.
pub struct EventHub {
    stream: String,
    window_max: usize,
    window: Mutex<Window>,
    sender: broadcast::Sender<Arc<Published>>,
    counters: Counters,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub")
            .field("stream", &self.stream)
            .finish()
    }
}

impl EventHub {
    /// A feed with id `stream` (letters and digits) keeping the newest `window_max` events.
    pub fn new(stream: String, window_max: usize) -> EventHub {
        EventHub {
            stream,
            window_max: window_max.max(1),
            window: Mutex::new(Window {
                kept: VecDeque::new(),
                output_bytes: 0,
                next_seq: 1,
            }),
            sender: broadcast::channel(BROADCAST_CAPACITY).0,
            counters: Counters::default(),
        }
    }

    /// How many events of each kind this feed has published.
    pub fn counts(&self) -> EventCounts {
        self.counters.read()
    }

    /// The feed's id.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// How many subscribers are connected.
    pub fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }

    /// Numbers, keeps and broadcasts events. Never waits for a subscriber.
    pub fn publish(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        // A poisoned window (a panic while it was held) only loses events for subscribers.
        let Ok(mut window) = self.window.lock() else {
            return;
        };
        for event in events {
            self.counters.count(&event);
            let published = Arc::new(Published {
                seq: window.next_seq,
                event,
            });
            window.next_seq += 1;
            window.output_bytes += output_bytes(&published.event);
            window.kept.push_back(Arc::clone(&published));
            while window.kept.len() > self.window_max
                || (window.output_bytes > EVENT_WINDOW_OUTPUT_BYTES_MAX && window.kept.len() > 1)
            {
                if let Some(oldest) = window.kept.pop_front() {
                    window.output_bytes -= output_bytes(&oldest.event);
                }
            }
            // No receiver is not an error: nobody listens.
            let _ = self.sender.send(published);
        }
    }

    /// Subscribes from now, or after the event `after` when it is still in the window.
    pub fn subscribe(&self, after: Option<&EventId>) -> Subscription {
        let window = match self.window.lock() {
            Ok(window) => window,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Subscribing under the window's mutex: nothing is published between the backlog and
        // the live receiver, so nothing is lost or repeated.
        let live = self.sender.subscribe();
        let (missed, backlog) = match after {
            None => (false, Vec::new()),
            Some(after) => {
                let oldest = window
                    .kept
                    .front()
                    .map_or(window.next_seq, |first| first.seq);
                let known = after.stream == self.stream
                    && after.seq < window.next_seq
                    && after.seq + 1 >= oldest;
                if known {
                    let backlog = window
                        .kept
                        .iter()
                        .filter(|published| published.seq > after.seq)
                        .cloned()
                        .collect();
                    (false, backlog)
                } else {
                    (true, Vec::new())
                }
            }
        };
        Subscription {
            stream: self.stream.clone(),
            missed,
            backlog,
            live,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::{HistoryRecord, LeaseEnd, LeaseId, LockName};

    fn ended(token: u64) -> Event {
        Event::Ended(HistoryRecord {
            mode: baton_core::Mode::Exclusive,
            value: None,
            lease_id: LeaseId([0; 16]),
            request_id: None,
            lock: LockName::new("a").unwrap_or_else(|_| unreachable!()),
            owner: "o".into(),
            token,
            granted_at: 0,
            ended_at: 1,
            end: LeaseEnd::Released,
        })
    }

    fn id(stream: &str, seq: u64) -> EventId {
        EventId {
            stream: stream.into(),
            seq,
        }
    }

    #[test]
    fn resumes_within_the_window_and_reports_what_is_out_of_it() {
        let hub = EventHub::new("s1".into(), 3);
        hub.publish((1..=5).map(ended).collect());
        let resumed = hub.subscribe(Some(&id("s1", 3)));
        assert!(!resumed.missed);
        let seqs: Vec<u64> = resumed.backlog.iter().map(|p| p.seq).collect();
        assert_eq!(seqs, vec![4, 5]);
        // Event 2 is the newest the subscriber saw; 3 is the oldest kept: nothing lost.
        assert!(!hub.subscribe(Some(&id("s1", 2))).missed);
        assert!(hub.subscribe(Some(&id("s1", 1))).missed);
        assert!(hub.subscribe(Some(&id("s0", 4))).missed);
        assert!(hub.subscribe(Some(&id("s1", 6))).missed);
        assert!(hub.subscribe(Some(&id("s1", 5))).backlog.is_empty());
    }

    #[test]
    fn live_events_follow_the_backlog_without_gap() {
        let hub = EventHub::new("s1".into(), 10);
        hub.publish(vec![ended(1)]);
        let mut subscription = hub.subscribe(Some(&id("s1", 0)));
        hub.publish(vec![ended(2)]);
        assert_eq!(subscription.backlog.len(), 1);
        let next = subscription.live.try_recv().map(|p| p.seq);
        assert_eq!(next, Ok(2));
    }

    #[test]
    fn the_window_drops_old_events_when_they_hold_too_much_output() {
        let hub = EventHub::new("s1".into(), 10_000);
        let output = |n: usize| Event::Output {
            job: baton_core::JobChange {
                id: baton_core::JobId([0; 16]),
                name: "j".into(),
                lock: LockName::new("a").unwrap_or_else(|_| unreachable!()),
                state: JobState::Running,
                owner: "o".into(),
                host: None,
                token: Some(1),
                reason: None,
                exit_code: None,
                batch: None,
                created_at: 0,
                started_at: Some(0),
                finished_at: None,
            },
            text: "x".repeat(n),
            offset: 0,
            at: 1,
        };
        let chunk = baton_core::limits::OUTPUT_APPEND_BYTES_MAX;
        let fits = EVENT_WINDOW_OUTPUT_BYTES_MAX / chunk;
        hub.publish((0..fits + 10).map(|_| output(chunk)).collect());
        let kept = hub.subscribe(Some(&id("s1", 0)));
        // Event 1 is gone, so resuming after "0" misses; the window holds what fits.
        assert!(kept.missed);
        let window = hub.window.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!(window.kept.len(), fits);
        assert!(window.output_bytes <= EVENT_WINDOW_OUTPUT_BYTES_MAX);
        assert_eq!(hub.counts().output, (fits + 10) as u64);
    }

    #[test]
    fn event_ids_round_trip() {
        let parsed = EventId::parse("abc12-42");
        assert_eq!(parsed, Some(id("abc12", 42)));
        assert_eq!(id("abc12", 42).to_string(), "abc12-42");
        assert_eq!(EventId::parse("42"), None);
        assert_eq!(EventId::parse("a b-1"), None);
        assert_eq!(EventId::parse("ab-x"), None);
    }
}
