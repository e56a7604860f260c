//! The readable trace of a run, one line per event.

use std::fmt::Write as _;

use crate::history::{Event, EventKind};
use crate::setup::START_MS;

/// One event as a line: `step t=+ms gen client: what`.
pub fn line(event: &Event) -> String {
    let who = if event.client == usize::MAX {
        "server".to_owned()
    } else {
        format!("client-{}", event.client)
    };
    let at = event.at.saturating_sub(START_MS);
    format!(
        "{:>7} t=+{at:<8} g{} {who:<10} {}",
        event.step,
        event.generation,
        describe(&event.kind)
    )
}

/// What happened, in words.
pub fn describe(kind: &EventKind) -> String {
    match kind {
        EventKind::Granted {
            lease,
            via,
            sent_at,
            request_id,
        } => format!(
            "granted {} token {} ({via:?}, sent +{}, granted +{}, until +{}) request {}",
            lease.lock,
            lease.token,
            rel(*sent_at),
            rel(lease.granted_at),
            rel(lease.expires_at),
            request_id.as_deref().unwrap_or("-")
        ),
        EventKind::Queued {
            lock,
            seq,
            request_id,
            ..
        } => format!(
            "queued on {lock} as #{seq} request {}",
            request_id.as_deref().unwrap_or("-")
        ),
        EventKind::StillQueued {
            ticket,
            lapse_at,
            gone,
        } => format!(
            "still queued: {ticket:?} lapses at +{}{}",
            rel(*lapse_at),
            if *gone { " (waiter gone)" } else { "" }
        ),
        EventKind::TicketLapsed {
            ticket,
            lock,
            at,
            lapse_at,
            gone,
            parked,
        } => format!(
            "{ticket:?} on {lock} LAPSED at +{} (lapse at +{}, waiter gone {gone}, parked {parked})",
            rel(*at),
            rel(*lapse_at)
        ),
        EventKind::TicketGranted { ticket, at } => {
            format!("{ticket:?} granted at +{}", rel(*at))
        }
        EventKind::Busy { lock, .. } => format!("busy: {lock}"),
        EventKind::AcquireRefused { request_id, error } => format!(
            "acquire {} refused: {error}",
            request_id.as_deref().unwrap_or("-")
        ),
        EventKind::Renewed { lease, sent_at } => format!(
            "renewed {} token {} (sent +{}) until +{}",
            lease.lock,
            lease.token,
            rel(*sent_at),
            rel(lease.expires_at)
        ),
        EventKind::Lost { lease, error } => format!("lost {lease:?}: {error}"),
        EventKind::Released { lease, sent_at } => {
            format!("released {lease:?} (sent +{})", rel(*sent_at))
        }
        EventKind::Revoked { lease, sent_at } => format!(
            "revoked {} token {} (sent +{})",
            lease.lock,
            lease.token,
            rel(*sent_at)
        ),
        EventKind::FenceAccepted { lock, token, .. } => format!("fence {lock} {token}: accepted"),
        EventKind::FenceRefused { lock, token } => format!("fence {lock} {token}: stale"),
        EventKind::TicketEnded { ticket, how } => format!("ticket {ticket:?} ended: {how}"),
        EventKind::JobCreated {
            job, policy, state, ..
        } => format!(
            "job {job:?} ({}) created: {}",
            policy.as_str(),
            state.as_str()
        ),
        EventKind::JobFinished { job, .. } => format!("job {job:?} finished"),
        EventKind::Departed {
            ticket,
            request_id,
            still_held,
        } => {
            let mut text = format!(
                "went away mid-wait (ticket {ticket:?}, request {}); grants still held: {}",
                request_id.as_deref().unwrap_or("-"),
                still_held.len()
            );
            for lease in still_held {
                let _ = write!(
                    text,
                    " {}#{} granted +{} via {:?}",
                    lease.lock,
                    lease.token,
                    rel(lease.granted_at),
                    lease.ticket
                );
            }
            text
        }
        EventKind::TryAroundQueue {
            lock,
            before,
            after,
            granted_new,
        } => format!(
            "try on {lock} with {} waiting before, {} after, new grant {granted_new}",
            before.len(),
            after.len()
        ),
        EventKind::IdleWithWaiter { lock, ticket } => {
            format!("{lock} has room while {ticket:?} waits")
        }
        EventKind::JobMismatch { job, what } => format!("job {job:?}: {what}"),
        EventKind::Crash {
            how,
            ending,
            cancelling,
        } if *how == "takeover" => format!(
            "LEADERSHIP CHANGES: {} ends and {} cancels of the old active in flight",
            ending.len(),
            cancelling.len()
        ),
        EventKind::Crash {
            how,
            ending,
            cancelling,
        } => format!(
            "CRASH ({how}), {} ends and {} cancels in flight",
            ending.len(),
            cancelling.len()
        ),
        EventKind::Restarted { leases, tickets } => {
            let mut text = format!(
                "RESTARTED with {} queued tickets and {} leases:",
                tickets.len(),
                leases.len()
            );
            for lease in leases {
                let _ = write!(
                    text,
                    " {}#{}..+{}",
                    lease.lock,
                    lease.token,
                    rel(lease.expires_at)
                );
            }
            text
        }
        EventKind::RecoveryFailed { error } => format!("RECOVERY FAILED: {error}"),
        EventKind::ClockJump { ms } => format!("clock jumps {ms} ms forward"),
        EventKind::Note { what } => what.clone(),
    }
}

fn rel(at: baton_core::Millis) -> u64 {
    at.saturating_sub(START_MS)
}

/// A hash of an event (FNV-1a over its description), for the run's digest.
pub fn fingerprint(kind: &EventKind) -> u64 {
    describe(kind)
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
}
