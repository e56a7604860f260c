//! Checkers over a recorded history, each named after the guarantee of PRODUCT.md (G1-G7)
//! it checks. They judge what clients were told (and the few observations the simulator
//! recorded), never the engine's own view of itself, and they are conservative: a lease counts
//! as live only while its holder was promised it, so a lease that recovery kept longer than
//! promised never causes a false alarm.

use std::collections::{BTreeMap, HashMap};

use baton_core::{LeaseId, LockName, Millis, TicketId};

use crate::history::{Event, EventKind, Via};
use crate::setup::{LOCKS, config};

/// One broken guarantee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The guarantee: `G1`, `G2`, `G3`, `G4`, `G5`, `G7`, `jobs` or `recovery`.
    pub guarantee: &'static str,
    /// The step of the event that shows it.
    pub step: u64,
    /// What happened.
    pub message: String,
}

impl Violation {
    /// A run that could not even start.
    pub fn setup(message: String) -> Violation {
        Violation {
            guarantee: "setup",
            step: 0,
            message,
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at step {}: {}",
            self.guarantee, self.step, self.message
        )
    }
}

/// A deadline a lease was given.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    /// When the server decided it.
    at: Millis,
    /// The deadline.
    until: Millis,
    /// The step it was answered (or observed) at.
    step: u64,
    /// Set by recovery (every recovered lease is treated as renewed), never promised to the
    /// holder: it lengthens what the server holds, not what the holder was told.
    recovered: bool,
}

/// A lease as its holders were told of it.
#[derive(Debug, Clone)]
struct Life {
    lock: LockName,
    token: u64,
    granted_at: Millis,
    step: u64,
    /// Every deadline set for it, in the order answered.
    deadlines: Vec<Deadline>,
    /// A clean end (release, finished job) at this time, answered at this step.
    clean_end: Option<(Millis, u64)>,
    /// A revocation at this time, answered at this step.
    revoked: Option<(Millis, u64)>,
}

impl Life {
    /// The deadline the server held it to, following renewals made while the lease was live
    /// and what recovery made of it.
    fn deadline(&self) -> Millis {
        self.deadline_before(u64::MAX, true)
    }

    /// The deadline set by the answers given before `step` (with or without recovery's).
    fn deadline_before(&self, step: u64, recovered: bool) -> Millis {
        let mut deadlines: Vec<Deadline> = self
            .deadlines
            .iter()
            .filter(|deadline| deadline.step < step && (recovered || !deadline.recovered))
            .copied()
            .collect();
        deadlines.sort_by_key(|deadline| deadline.at);
        let mut current = deadlines
            .first()
            .map_or(self.granted_at, |first| first.until);
        for deadline in deadlines.into_iter().skip(1) {
            if deadline.recovered {
                current = current.max(deadline.until);
            } else if deadline.at < current {
                current = deadline.until;
            }
        }
        current
    }

    fn clean_end(&self) -> Option<Millis> {
        self.clean_end.map(|(at, _)| at)
    }

    fn revoked(&self) -> Option<Millis> {
        self.revoked.map(|(at, _)| at)
    }

    /// The end of the interval during which the lease was certainly live.
    fn end(&self) -> Millis {
        let mut end = self.deadline();
        for at in [self.clean_end(), self.revoked()].into_iter().flatten() {
            end = end.min(at);
        }
        end
    }

    /// True when, by the answers given before `step`, its holder was told it holds it and no
    /// clean end or revocation was seen.
    fn open_before(&self, step: u64) -> bool {
        [self.clean_end, self.revoked]
            .into_iter()
            .flatten()
            .all(|(_, answered)| answered >= step)
    }
}

fn capacity(lock: &LockName) -> u32 {
    LOCKS
        .iter()
        .find(|(name, _)| *name == lock.as_str())
        .map_or(1, |(_, capacity)| *capacity)
}

fn lives(events: &[Event]) -> BTreeMap<LeaseId, Life> {
    let mut lives: BTreeMap<LeaseId, Life> = BTreeMap::new();
    for event in events {
        match &event.kind {
            EventKind::Granted { lease, sent_at, .. } => {
                let life = lives.entry(lease.id).or_insert_with(|| Life {
                    lock: lease.lock.clone(),
                    token: lease.token,
                    granted_at: lease.granted_at,
                    step: event.step,
                    deadlines: Vec::new(),
                    clean_end: None,
                    revoked: None,
                });
                // A retry or reentry answers the lease as it is now.
                let decided = if life.deadlines.is_empty() {
                    lease.granted_at
                } else {
                    *sent_at
                };
                life.deadlines.push(Deadline {
                    at: decided,
                    until: lease.expires_at,
                    step: event.step,
                    recovered: false,
                });
            }
            EventKind::Renewed { lease, sent_at } => {
                if let Some(life) = lives.get_mut(&lease.id) {
                    life.deadlines.push(Deadline {
                        at: *sent_at,
                        until: lease.expires_at,
                        step: event.step,
                        recovered: false,
                    });
                }
            }
            EventKind::Released { lease, sent_at } => {
                if let Some(life) = lives.get_mut(lease) {
                    life.clean_end.get_or_insert((*sent_at, event.step));
                }
            }
            EventKind::JobFinished {
                lease: Some(lease),
                sent_at,
                ..
            } => {
                if let Some(life) = lives.get_mut(lease) {
                    life.clean_end.get_or_insert((*sent_at, event.step));
                }
            }
            EventKind::Revoked { lease, sent_at } => {
                if let Some(life) = lives.get_mut(&lease.id) {
                    life.revoked.get_or_insert((*sent_at, event.step));
                }
            }
            EventKind::Restarted { leases, .. } => {
                for lease in leases {
                    if let Some(life) = lives.get_mut(&lease.id) {
                        life.deadlines.push(Deadline {
                            at: event.at,
                            until: lease.expires_at,
                            step: event.step,
                            recovered: true,
                        });
                    }
                }
            }
            EventKind::Crash { ending, .. } => {
                // A revocation or finish cut off by the crash may have ended the lease when it
                // was sent: count it as ended then (fewer live leases, never a false alarm).
                for (lease, sent_at) in ending {
                    // Counted as answered before the crash's step: a second takeover in the
                    // same step must not see the lease as still open.
                    if let Some(life) = lives.get_mut(lease)
                        && life.clean_end.is_none_or(|(at, _)| *sent_at < at)
                    {
                        life.clean_end = Some((*sent_at, event.step.saturating_sub(1)));
                    }
                }
            }
            _ => {}
        }
    }
    lives
}

/// Every checker over one history.
pub fn all(events: &[Event]) -> Vec<Violation> {
    let lives = lives(events);
    let mut found = Vec::new();
    g1_safety(&lives, &mut found);
    g2_durability(events, &lives, &mut found);
    g2_queue_places(events, &mut found);
    g3_fencing(events, &lives, &mut found);
    g4_fairness(events, &lives, &mut found);
    g5_liveness(events, &lives, &mut found);
    g7_idempotency(events, &mut found);
    ticket_lapses(events, &mut found);
    jobs(events, &mut found);
    for event in events {
        if let EventKind::RecoveryFailed { error } = &event.kind {
            found.push(Violation {
                guarantee: "recovery",
                step: event.step,
                message: format!("the engine could not recover from the disk: {error}"),
            });
        }
    }
    found.sort_by_key(|violation| violation.step);
    found
}

/// G1: never more than `capacity` leases a holder was promised at any instant of the server's
/// clock. A sweep over the intervals [granted_at, end) per lock.
fn g1_safety(lives: &BTreeMap<LeaseId, Life>, found: &mut Vec<Violation>) {
    let mut by_lock: BTreeMap<&LockName, Vec<&Life>> = BTreeMap::new();
    for life in lives.values() {
        by_lock.entry(&life.lock).or_default().push(life);
    }
    for (lock, lives) in by_lock {
        let capacity = capacity(lock) as usize;
        // (time, 0 = end before 1 = start at the same instant, life)
        let mut points: Vec<(Millis, u8, &Life)> = Vec::new();
        for life in &lives {
            let end = life.end();
            if end > life.granted_at {
                points.push((life.granted_at, 1, life));
                points.push((end, 0, life));
            }
        }
        points.sort_by_key(|(at, kind, life)| (*at, *kind, life.step));
        let mut live: Vec<&Life> = Vec::new();
        for (at, kind, life) in points {
            if kind == 0 {
                live.retain(|other| other.step != life.step || other.token != life.token);
                continue;
            }
            live.push(life);
            if live.len() > capacity {
                found.push(Violation {
                    guarantee: "G1",
                    step: life.step,
                    message: format!(
                        "{} leases on {lock} (capacity {capacity}) at {at}: tokens {:?}",
                        live.len(),
                        live.iter().map(|life| life.token).collect::<Vec<_>>()
                    ),
                });
                return;
            }
        }
    }
}

/// G2: after every crash, recovery brings back every lease its holder was promised past the
/// crash, with a deadline no earlier than promised and the same token.
fn g2_durability(events: &[Event], lives: &BTreeMap<LeaseId, Life>, found: &mut Vec<Violation>) {
    // The last crash: its step, time, and the ends in flight.
    type Crash = (u64, Millis, Vec<(LeaseId, Millis)>);
    let mut crash: Option<Crash> = None;
    for event in events {
        match &event.kind {
            EventKind::Crash { ending, .. } => crash = Some((event.step, event.at, ending.clone())),
            EventKind::Restarted { leases, .. } => {
                let Some((step, at, ending)) = crash.take() else {
                    continue;
                };
                let recovered: HashMap<LeaseId, &baton_core::Lease> =
                    leases.iter().map(|lease| (lease.id, lease)).collect();
                for (id, life) in lives {
                    if life.step >= step
                        || !life.open_before(step)
                        || ending.iter().any(|(lease, _)| lease == id)
                    {
                        continue;
                    }
                    let promised = life.deadline_before(step, false);
                    if promised <= at {
                        continue;
                    }
                    let problem = match recovered.get(id) {
                        None => format!(
                            "lease token {} on {} (promised until {promised}) is gone after the crash at {at}",
                            life.token, life.lock
                        ),
                        Some(lease) if lease.expires_at < promised => format!(
                            "lease token {} on {} was promised until {promised} but recovered until {}",
                            life.token, life.lock, lease.expires_at
                        ),
                        Some(lease) if lease.token != life.token => format!(
                            "lease on {} came back with token {} instead of {}",
                            life.lock, lease.token, life.token
                        ),
                        Some(_) => continue,
                    };
                    found.push(Violation {
                        guarantee: "G2",
                        step: event.step,
                        message: problem,
                    });
                    return;
                }
            }
            _ => {}
        }
    }
}

/// G2 for queue places: a ticket whose place a client was told of is still queued (or granted)
/// after the next crash, unless it may have ended before: cancelled (or a cancel in flight),
/// its waiter gone, collected as a lease (then G2 for leases judges it), or old enough that it
/// could have lapsed or its grant expired (the crash came after the shortest TTL or ticket
/// lapse from its queuing).
fn g2_queue_places(events: &[Event], found: &mut Vec<Violation>) {
    let shortest = config().ticket_lapse_ms.min(baton_core::limits::TTL_MS_MIN);
    // Tickets told of and not known to have ended: when queued, and the answer's step.
    let mut told: HashMap<TicketId, (Millis, u64, LockName)> = HashMap::new();
    let mut request_tickets: HashMap<&str, TicketId> = HashMap::new();
    for event in events {
        match &event.kind {
            EventKind::Queued { gone: true, .. } => {}
            EventKind::Queued {
                ticket,
                queued_at,
                lock,
                request_id,
                ..
            } => {
                told.entry(*ticket)
                    .or_insert((*queued_at, event.step, lock.clone()));
                if let Some(request_id) = request_id {
                    request_tickets.insert(request_id, *ticket);
                }
            }
            EventKind::TicketEnded { ticket, .. } => {
                told.remove(ticket);
            }
            EventKind::Granted { lease, .. } => {
                if let Some(ticket) = lease.ticket {
                    told.remove(&ticket);
                }
            }
            EventKind::Departed {
                ticket, request_id, ..
            } => {
                if let Some(ticket) = ticket {
                    told.remove(ticket);
                }
                if let Some(ticket) = request_id
                    .as_deref()
                    .and_then(|request_id| request_tickets.get(request_id))
                {
                    told.remove(ticket);
                }
            }
            EventKind::Crash { cancelling, .. } => {
                for ticket in cancelling {
                    told.remove(ticket);
                }
                let at = event.at;
                told.retain(|_, (queued_at, _, _)| at < *queued_at + shortest);
            }
            EventKind::Restarted { leases, tickets } => {
                for (ticket, (_, _, lock)) in &told {
                    let kept = tickets.contains(ticket)
                        || leases.iter().any(|lease| lease.ticket == Some(*ticket));
                    if !kept {
                        found.push(Violation {
                            guarantee: "G2",
                            step: event.step,
                            message: format!(
                                "a place in the queue of {lock} ({ticket:?}) that a client was told of is gone after the crash"
                            ),
                        });
                        return;
                    }
                }
                // Recovery gives every ticket a fresh lapse: judge only the first crash after
                // each answer.
                told.clear();
            }
            _ => {}
        }
    }
}

/// G3: every grant's token is greater than every token granted before it (by the server's
/// clock), no token is used twice, across restarts; a fence check never accepts a token older
/// than one already granted on its lock.
fn g3_fencing(events: &[Event], lives: &BTreeMap<LeaseId, Life>, found: &mut Vec<Violation>) {
    let mut by_token: HashMap<u64, &Life> = HashMap::new();
    for life in lives.values() {
        if let Some(other) = by_token.insert(life.token, life) {
            found.push(Violation {
                guarantee: "G3",
                step: life.step.max(other.step),
                message: format!(
                    "token {} granted twice: on {} at {} and on {} at {}",
                    life.token, other.lock, other.granted_at, life.lock, life.granted_at
                ),
            });
            return;
        }
    }
    let mut ordered: Vec<&Life> = lives.values().collect();
    ordered.sort_by_key(|life| (life.granted_at, life.token));
    let mut before_max = 0u64;
    let mut group_max = 0u64;
    let mut group_at = None;
    for life in &ordered {
        if group_at != Some(life.granted_at) {
            before_max = before_max.max(group_max);
            group_at = Some(life.granted_at);
        }
        if life.token <= before_max {
            found.push(Violation {
                guarantee: "G3",
                step: life.step,
                message: format!(
                    "token {} granted at {} on {} is not greater than token {before_max} granted before",
                    life.token, life.granted_at, life.lock
                ),
            });
            return;
        }
        group_max = group_max.max(life.token);
    }
    let restarts: Vec<Millis> = events
        .iter()
        .filter(|event| matches!(event.kind, EventKind::Restarted { .. }))
        .map(|event| event.at)
        .collect();
    for event in events {
        let EventKind::FenceAccepted {
            lock,
            token,
            sent_at,
            loaded_at,
        } = &event.kind
        else {
            continue;
        };
        // A live holder's token is accepted (a semaphore's holders hold older tokens). Judge
        // only tokens whose lease had certainly ended: before the check, with no restart in
        // between that could have revived it (a release is persisted lazily).
        let Some(own) = ordered
            .iter()
            .find(|life| &life.lock == lock && life.token == *token)
        else {
            continue;
        };
        let ended = own.end();
        // The restarts that count are those up to the load of the engine that answered
        // (another server's takeover does not revive a lease in this one's table).
        let dead = ended < *sent_at
            && !restarts.iter().any(|restart| {
                *restart >= own.granted_at && *restart <= *sent_at && *restart <= *loaded_at
            });
        if !dead {
            continue;
        }
        if let Some(newer) = ordered
            .iter()
            .find(|life| &life.lock == lock && life.token > *token && life.granted_at < *sent_at)
        {
            found.push(Violation {
                guarantee: "G3",
                step: event.step,
                message: format!(
                    "fence on {lock} accepted token {token} (its lease ended at {ended}) at {sent_at} after token {} was granted at {}",
                    newer.token, newer.granted_at
                ),
            });
            return;
        }
    }
}

/// G4: tickets are granted in arrival order, and a try never takes a lock from tickets
/// waiting for it.
fn g4_fairness(events: &[Event], lives: &BTreeMap<LeaseId, Life>, found: &mut Vec<Violation>) {
    let mut seqs: HashMap<TicketId, (u64, Millis)> = HashMap::new();
    let mut grants: HashMap<TicketId, (&Life, u64)> = HashMap::new();
    for event in events {
        match &event.kind {
            EventKind::Queued {
                ticket,
                seq,
                queued_at,
                ..
            } => {
                seqs.insert(*ticket, (*seq, *queued_at));
            }
            EventKind::Granted { lease, .. } => {
                if let (Some(ticket), Some(life)) = (lease.ticket, lives.get(&lease.id)) {
                    grants.entry(ticket).or_insert((life, event.step));
                }
            }
            EventKind::TryAroundQueue {
                lock,
                before,
                after,
                granted_new: true,
            } => {
                if let Some(ticket) = before.iter().find(|ticket| after.contains(ticket)) {
                    found.push(Violation {
                        guarantee: "G4",
                        step: event.step,
                        message: format!(
                            "a try was granted {lock} while ticket {ticket:?} waited in its queue"
                        ),
                    });
                    return;
                }
            }
            _ => {}
        }
    }
    let mut by_lock: BTreeMap<&LockName, Vec<(u64, Millis, &Life)>> = BTreeMap::new();
    for (ticket, (life, _)) in &grants {
        if let Some((seq, queued_at)) = seqs.get(ticket) {
            by_lock
                .entry(&life.lock)
                .or_default()
                .push((*seq, *queued_at, life));
        }
    }
    for (lock, mut granted) in by_lock {
        granted.sort_by_key(|(seq, _, _)| *seq);
        for (index, (seq, queued_at, life)) in granted.iter().enumerate() {
            if let Some((later_seq, _, later)) = granted[index + 1..]
                .iter()
                .find(|(_, _, later)| later.token < life.token && later.granted_at >= *queued_at)
            {
                found.push(Violation {
                    guarantee: "G4",
                    step: life.step.max(later.step),
                    message: format!(
                        "on {lock} ticket #{later_seq} was granted token {} before ticket #{seq}, queued earlier, got token {}",
                        later.token, life.token
                    ),
                });
                return;
            }
        }
    }
}

/// G5: a mutex with room never keeps a waiting ticket waiting; a departed waiter's grant is
/// handed on at once; after an unclean end (expiry, revocation) a mutex grants nothing during
/// its lock-delay.
fn g5_liveness(events: &[Event], lives: &BTreeMap<LeaseId, Life>, found: &mut Vec<Violation>) {
    for event in events {
        match &event.kind {
            EventKind::Departed { still_held, .. } if !still_held.is_empty() => {
                found.push(Violation {
                    guarantee: "G5",
                    step: event.step,
                    message: format!(
                        "a waiter went away but the lease granted for it (token {}) is still held",
                        still_held[0].token
                    ),
                });
                return;
            }
            EventKind::IdleWithWaiter { lock, ticket } => {
                found.push(Violation {
                    guarantee: "G5",
                    step: event.step,
                    message: format!("{lock} had room but ticket {ticket:?} kept waiting"),
                });
                return;
            }
            _ => {}
        }
    }
    let delay = config().lock_delay_ms;
    let mut grants: BTreeMap<&LockName, Vec<&Life>> = BTreeMap::new();
    for life in lives.values() {
        if capacity(&life.lock) == 1 {
            grants.entry(&life.lock).or_default().push(life);
        }
    }
    for list in grants.values_mut() {
        list.sort_by_key(|life| life.granted_at);
    }
    for life in lives.values() {
        if capacity(&life.lock) != 1 {
            continue;
        }
        let deadline = life.deadline();
        let unclean = match (life.clean_end(), life.revoked()) {
            (clean_end, Some(revoked)) if clean_end.is_none_or(|clean| revoked < clean) => {
                Some(revoked.min(deadline))
            }
            (Some(clean), _) if clean < deadline => None,
            _ => Some(deadline),
        };
        let Some(ended) = unclean else {
            continue;
        };
        let Some(list) = grants.get(&life.lock) else {
            continue;
        };
        let start = list.partition_point(|other| other.granted_at < ended);
        if let Some(other) = list[start..]
            .iter()
            .take_while(|other| other.granted_at < ended + delay)
            // Granted after the end (a greater token): grants in the same millisecond
            // before it do not count.
            .find(|other| other.token > life.token)
        {
            found.push(Violation {
                guarantee: "G5",
                step: other.step,
                message: format!(
                    "{} was granted (token {}) at {}, within the lock-delay after token {} ended uncleanly at {ended}",
                    life.lock, other.token, other.granted_at, life.token
                ),
            });
            return;
        }
    }
}

/// G7: a retried acquire with the same request id answers the same lease or ticket.
fn g7_idempotency(events: &[Event], found: &mut Vec<Violation>) {
    #[derive(Clone, Copy)]
    enum First {
        /// The lease, its ticket, and whether it was another request's (an owner key's
        /// reentry answers the lease its key already holds).
        Lease(LeaseId, Option<TicketId>, bool),
        Ticket(TicketId),
    }
    let window = config().ended_retention_ms / 2;
    // Per request id: the outcome to compare with, when it was first answered, and the place
    // in the history of the latest answer.
    let mut first: HashMap<&str, (First, Millis, u64)> = HashMap::new();
    // Tickets seen to end without a lease, and the place of the last restart: a ticket that
    // ended is not a live second ticket, and which tickets ended is not kept across a restart.
    let mut ended: std::collections::HashSet<TicketId> = std::collections::HashSet::new();
    let mut restarted_step = 0;
    for (index, event) in events.iter().enumerate() {
        let index = index as u64;
        match &event.kind {
            EventKind::TicketEnded { ticket, .. } => {
                ended.insert(*ticket);
            }
            EventKind::Restarted { .. } => restarted_step = index,
            _ => {}
        }
        let (request_id, outcome) = match &event.kind {
            EventKind::Granted {
                lease,
                request_id: Some(request_id),
                via: Via::Try | Via::Queue,
                ..
            } => (
                request_id,
                First::Lease(
                    lease.id,
                    lease.ticket,
                    lease.request_id.as_ref() != Some(request_id),
                ),
            ),
            EventKind::Queued {
                ticket,
                request_id: Some(request_id),
                ..
            } => (request_id, First::Ticket(*ticket)),
            _ => continue,
        };
        let Some((earlier, at, step)) = first.get(request_id.as_str()).copied() else {
            first.insert(request_id, (outcome, event.at, index));
            continue;
        };
        // A restart after the answer compared with.
        let restarted = restarted_step > step;
        if event.at > at + window {
            continue;
        }
        if let First::Ticket(ticket) = earlier
            && (ended.contains(&ticket) || restarted)
            && !matches!(outcome, First::Ticket(t) if t == ticket)
        {
            // The ticket ended (or may have, unseen, before a restart): a new outcome is not a
            // second live ticket. Judge later retries against the new one.
            first.insert(request_id, (outcome, event.at, index));
            continue;
        }
        if let First::Lease(_, _, true) = earlier
            && restarted
        {
            // Known gap (docs/simulation.md): which lease answered a reentrant request is kept
            // in memory only, so after a restart its retry is a new request.
            first.insert(request_id, (outcome, event.at, index));
            continue;
        }
        let same = match (earlier, outcome) {
            (First::Lease(a, ..), First::Lease(b, ..)) => a == b,
            (First::Lease(..), First::Ticket(_)) => false,
            (First::Ticket(a), First::Ticket(b)) => a == b,
            (First::Ticket(a), First::Lease(_, ticket, _)) => ticket == Some(a),
        };
        if !same {
            found.push(Violation {
                guarantee: "G7",
                step: event.step,
                message: format!(
                    "request {request_id} was answered a different lease or ticket on retry"
                ),
            });
            return;
        }
        let outcome = if let First::Lease(..) = outcome {
            outcome
        } else {
            earlier
        };
        first.insert(request_id, (outcome, at, index));
    }
}

/// Ticket lapses (G5, and a ticket's definition: it lapses unless its waiter keeps waiting on
/// it): a ticket whose waiter has not gone lapses neither before its own lapse time nor before
/// the lapse time its waiter was last told, nor while a wait is parked on it; and a ticket that
/// lapsed is never granted afterwards. A ticket whose waiter went away lapses as soon as the
/// lock could go to it (by design): those are not judged on time.
fn ticket_lapses(events: &[Event], found: &mut Vec<Violation>) {
    // The latest lapse time each ticket's waiter was told (not counting answers that said the
    // waiter had gone), and the lapses seen.
    let mut told: HashMap<TicketId, Millis> = HashMap::new();
    let mut request_tickets: HashMap<&str, TicketId> = HashMap::new();
    let mut lapsed: HashMap<TicketId, Millis> = HashMap::new();
    let fail = |step: u64, message: String| Violation {
        guarantee: "lapse",
        step,
        message,
    };
    for event in events {
        let problem = match &event.kind {
            EventKind::Queued {
                ticket,
                lapse_at,
                gone: false,
                request_id,
                ..
            } => {
                let entry = told.entry(*ticket).or_insert(*lapse_at);
                *entry = (*entry).max(*lapse_at);
                if let Some(request_id) = request_id {
                    request_tickets.insert(request_id, *ticket);
                }
                None
            }
            EventKind::StillQueued {
                ticket,
                lapse_at,
                gone: false,
            } => {
                let entry = told.entry(*ticket).or_insert(*lapse_at);
                *entry = (*entry).max(*lapse_at);
                None
            }
            EventKind::Departed {
                ticket, request_id, ..
            } => {
                // Its waiter left: the place is kept for one lapse from then, not as told.
                if let Some(ticket) = ticket {
                    told.remove(ticket);
                }
                if let Some(ticket) = request_id
                    .as_deref()
                    .and_then(|request_id| request_tickets.get(request_id))
                {
                    told.remove(ticket);
                }
                None
            }
            EventKind::TicketLapsed {
                ticket,
                lock,
                at,
                lapse_at,
                gone,
                parked,
            } => {
                lapsed.insert(*ticket, *at);
                let told_at = told.get(ticket).copied();
                if *gone {
                    None
                } else if *parked {
                    Some(format!(
                        "{ticket:?} on {lock} lapsed at {at} while a wait was parked on it"
                    ))
                } else if *at < *lapse_at {
                    Some(format!(
                        "{ticket:?} on {lock} lapsed at {at}, before its lapse time {lapse_at}"
                    ))
                } else {
                    told_at.filter(|told_at| at < told_at).map(|told_at| {
                        format!(
                            "{ticket:?} on {lock} lapsed at {at}, before the lapse time {told_at} its waiter was told"
                        )
                    })
                }
            }
            EventKind::TicketGranted { ticket, at } => lapsed
                .get(ticket)
                .map(|when| format!("{ticket:?} was granted at {at} after it lapsed at {when}")),
            EventKind::Granted { lease, .. } => lease
                .ticket
                .and_then(|ticket| lapsed.get(&ticket).map(|when| (ticket, when)))
                .filter(|(_, when)| lease.granted_at >= **when)
                .map(|(ticket, when)| {
                    format!(
                        "{ticket:?} was answered a lease granted at {} after it lapsed at {when}",
                        lease.granted_at
                    )
                }),
            _ => None,
        };
        if let Some(message) = problem {
            found.push(fail(event.step, message));
            return;
        }
    }
}

/// Job invariants: a job's answer and its record agree with its lease and ticket.
fn jobs(events: &[Event], found: &mut Vec<Violation>) {
    use baton_core::JobState;
    for event in events {
        let problem = match &event.kind {
            EventKind::JobMismatch { job, what } => format!("job {job:?}: {what}"),
            EventKind::JobCreated {
                state,
                has_lease,
                has_ticket,
                token,
                lease_token,
                ..
            } => {
                let consistent = match state {
                    JobState::Running => *has_lease && token == lease_token && token.is_some(),
                    JobState::Waiting => !*has_lease && *has_ticket,
                    JobState::Skipped | JobState::Coalesced => !*has_lease && !*has_ticket,
                    _ => !*has_lease,
                };
                if consistent {
                    continue;
                }
                format!(
                    "a job answered {} with lease {has_lease}, ticket {has_ticket}",
                    state.as_str()
                )
            }
            _ => continue,
        };
        found.push(Violation {
            guarantee: "jobs",
            step: event.step,
            message: problem,
        });
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(step: u64, kind: EventKind) -> Event {
        Event {
            step,
            at: 1_000 + step,
            generation: 1,
            client: 0,
            kind,
        }
    }

    fn lock() -> LockName {
        LockName::new("sim-a").unwrap_or_else(|_| unreachable!())
    }

    fn lapsed(step: u64, when: Millis, lapse_at: Millis, gone: bool, parked: bool) -> Event {
        at(
            step,
            EventKind::TicketLapsed {
                ticket: TicketId([1; 16]),
                lock: lock(),
                at: when,
                lapse_at,
                gone,
                parked,
            },
        )
    }

    fn queued(lapse_at: Millis) -> Event {
        at(
            1,
            EventKind::Queued {
                ticket: TicketId([1; 16]),
                lock: lock(),
                seq: 1,
                queued_at: 1_000,
                lapse_at,
                gone: false,
                request_id: None,
            },
        )
    }

    fn judged(events: &[Event]) -> Option<String> {
        let mut found = Vec::new();
        ticket_lapses(events, &mut found);
        found.first().map(|violation| violation.message.clone())
    }

    #[test]
    fn a_ticket_lapses_neither_early_nor_while_waited_on() {
        // In time: lapses at its lapse time.
        assert_eq!(
            judged(&[queued(3_000), lapsed(2, 3_000, 3_000, false, false)]),
            None
        );
        // Before the lapse time its waiter was told, or its own.
        let early = judged(&[queued(3_000), lapsed(2, 2_500, 2_500, false, false)]);
        assert!(early.is_some_and(|m| m.contains("its waiter was told")));
        let early = judged(&[lapsed(2, 2_500, 3_000, false, false)]);
        assert!(early.is_some_and(|m| m.contains("before its lapse time")));
        // While a wait was parked on it.
        let parked = judged(&[queued(3_000), lapsed(2, 3_500, 3_000, false, true)]);
        assert!(parked.is_some_and(|m| m.contains("parked")));
        // Its waiter went away: it may lapse as soon as the lock could go to it.
        assert_eq!(
            judged(&[queued(3_000), lapsed(2, 1_500, 1_500, true, false)]),
            None
        );
    }

    #[test]
    fn a_lapsed_ticket_is_never_granted() {
        let granted = at(
            3,
            EventKind::TicketGranted {
                ticket: TicketId([1; 16]),
                at: 3_100,
            },
        );
        let found = judged(&[
            queued(3_000),
            lapsed(2, 3_000, 3_000, false, false),
            granted,
        ]);
        assert!(found.is_some_and(|m| m.contains("after it lapsed")));
    }
}
