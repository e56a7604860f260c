//! Leader election: `baton elect NAME --value ADDR -- CMD` and `baton leader NAME [--watch]`.
//!
//! There is no election machinery of its own: the leader is the holder of the lock `NAME`.
//! `elect` is `baton run NAME` with the wait policy and the leader's address published as the
//! lease's value, so candidates queue in FIFO order, the leader's command never outlives its
//! lease (G6), and a dead leader's lease expires and passes to the next candidate. `leader`
//! reads the lock's holder (the oldest, if a semaphore has several) and, with `--watch`,
//! follows the lock's `granted`, `released`, `expired` and `revoked` events, which carry the
//! value: it needs only the `read` role.

use baton_client::EventOptions;
use baton_client::proto::{Event, EventKind, Holder, LockInfo};
use serde::Serialize;

use super::Context;
use super::keeper::Signals;
use crate::args::{ElectArgs, LeaderArgs, RunArgs};
use crate::exit;
use crate::output::{self, print_line};

/// `baton elect`: `baton run NAME --wait --value VALUE`.
pub async fn elect(context: &Context, args: ElectArgs) -> anyhow::Result<u8> {
    let run = RunArgs {
        name: args.name,
        command: args.command,
        wait: None,
        skip: false,
        fail: false,
        replace: false,
        coalesce: false,
        lock: Vec::new(),
        capacity: None,
        ttl: args.ttl,
        min_hold: None,
        once_per: None,
        on_lost: args.on_lost,
        owner: args.owner,
        timeout: None,
        grace: args.grace,
        output_max: args.output_max,
        value: Some(args.value),
        shared: false,
    };
    super::run::run(context, run).await
}

/// The leader as `baton leader` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Leader {
    /// The value it published (its address).
    value: Option<String>,
    /// Its owner label.
    owner: String,
    /// Its lease's fencing token.
    token: u64,
}

/// One answer of `baton leader` (one line of `--watch`).
#[derive(Debug, Serialize)]
struct LeaderLine<'a> {
    lock: &'a str,
    /// `null` when the lock has no holder.
    leader: Option<&'a Leader>,
}

fn leader_of(holder: &Holder) -> Leader {
    Leader {
        value: holder.value.clone(),
        owner: holder.owner.clone(),
        token: holder.token,
    }
}

fn current(info: &LockInfo) -> Option<Leader> {
    info.holders.first().map(leader_of)
}

fn show(
    context: &Context,
    lock: &str,
    leader: Option<&Leader>,
    pretty: bool,
) -> anyhow::Result<()> {
    if context.json {
        let line = LeaderLine { lock, leader };
        if pretty {
            return output::print_json(&line);
        }
        return print_line(&serde_json::to_string(&line)?);
    }
    print_line(&match leader {
        Some(leader) => format!(
            "{} (owner {}, token {})",
            leader.value.as_deref().unwrap_or("-"),
            leader.owner,
            leader.token
        ),
        None => format!("no leader of {lock}"),
    })
}

/// The lock's current leader; `None` when it has no holder or is unknown.
async fn read_leader(context: &Context, lock: &str) -> anyhow::Result<Option<Leader>> {
    match context.client.lock_info(lock).await {
        Ok(info) => Ok(current(&info)),
        Err(baton_client::Error::NotFound { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// `baton leader`.
pub async fn leader(context: &Context, args: LeaderArgs) -> anyhow::Result<u8> {
    baton_client::validate_lock_name(&args.name)?;
    if !args.watch {
        let leader = read_leader(context, &args.name).await?;
        show(context, &args.name, leader.as_ref(), true)?;
        return Ok(if leader.is_some() {
            exit::SUCCESS
        } else {
            exit::NOT_FOUND
        });
    }
    let mut signals = Signals::new()?;
    let mut stream = context.client.events(EventOptions {
        prefix: Some(args.name.clone()),
        last_event_id: None,
    });
    // Subscribed before the state is read: a change in between arrives as an event.
    stream.connected().await?;
    let mut leader = read_leader(context, &args.name).await?;
    show(context, &args.name, leader.as_ref(), false)?;
    loop {
        let event = tokio::select! {
            event = stream.next() => event?,
            signal = signals.next() => {
                return Ok(u8::try_from(128 + signal).unwrap_or(exit::INTERRUPTED));
            }
        };
        let next = match next_leader(&args.name, leader.as_ref(), &event) {
            Change::Same => continue,
            Change::To(next) => next,
            // Events were lost to this subscriber: read the state afresh.
            Change::Unknown => read_leader(context, &args.name).await?,
        };
        if next != leader {
            leader = next;
            show(context, &args.name, leader.as_ref(), false)?;
        }
    }
}

/// What an event says of the leader.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// Nothing.
    Same,
    /// The leader is now this (or nobody).
    To(Option<Leader>),
    /// Not known: read the state.
    Unknown,
}

/// The leader after `event`, given the leader before it. A grant with no leader makes its
/// holder the leader; the end of the leader's lease leaves none (until the next grant, which
/// comes as its own event). Other holders of a semaphore come and go unseen.
fn next_leader(lock: &str, leader: Option<&Leader>, event: &Event) -> Change {
    if event.kind == EventKind::Missed {
        return Change::Unknown;
    }
    if event.lock.as_deref() != Some(lock) {
        return Change::Same;
    }
    match event.kind {
        EventKind::Granted if leader.is_none() => match (&event.owner, event.token) {
            (Some(owner), Some(token)) => Change::To(Some(Leader {
                value: event.value.clone(),
                owner: owner.clone(),
                token,
            })),
            _ => Change::Unknown,
        },
        EventKind::Released | EventKind::Expired | EventKind::Revoked
            if leader.is_some_and(|leader| Some(leader.token) == event.token) =>
        {
            Change::To(None)
        }
        _ => Change::Same,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    fn event(kind: EventKind, lock: &str, token: u64) -> Event {
        Event {
            id: format!("s-{token}"),
            seq: token,
            kind,
            at: Timestamp::UNIX_EPOCH,
            lock: Some(lock.to_owned()),
            owner: Some(format!("host-{token}")),
            token: Some(token),
            granted_at: None,
            expires_at: None,
            from_queue: None,
            position: None,
            reason: None,
            job: None,
            value: Some(format!("10.0.0.{token}:7000")),
            mode: None,
            text: None,
            offset: None,
        }
    }

    #[test]
    fn a_grant_makes_a_leader_and_its_end_leaves_none() {
        let granted = next_leader("db", None, &event(EventKind::Granted, "db", 7));
        let Change::To(Some(leader)) = granted else {
            panic!("expected a leader, got {granted:?}");
        };
        assert_eq!(leader.value.as_deref(), Some("10.0.0.7:7000"));
        assert_eq!(
            next_leader("db", Some(&leader), &event(EventKind::Expired, "db", 7)),
            Change::To(None)
        );
        // Another lock whose name starts the same, or another holder's end: no change.
        assert_eq!(
            next_leader("db", Some(&leader), &event(EventKind::Expired, "db2", 7)),
            Change::Same
        );
        assert_eq!(
            next_leader("db", Some(&leader), &event(EventKind::Released, "db", 8)),
            Change::Same
        );
        let mut missed = event(EventKind::Missed, "db", 0);
        missed.lock = None;
        assert_eq!(next_leader("db", Some(&leader), &missed), Change::Unknown);
    }
}
