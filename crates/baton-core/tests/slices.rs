//! Slices against the whole table: a store that keeps the table in rows and runs each transition
//! on one lock's slice ([`State::from_slice`] / [`State::to_slice`], as the PostgreSQL store
//! does) must behave exactly like one [`State`] that holds everything.
//!
//! Random interleavings of acquires (try and queue, owner keys, request ids and their retries),
//! waits, cancels, renewals, releases, revocations, fence checks and the passing of time are
//! applied to both. The row store here is a few maps fed only by the slice written back after
//! each transition (what changed) and the history records in the drained changes, and it loads
//! for each request only what the PostgreSQL store loads (the lock's rows, plus the ended leases,
//! ended tickets and request ids the request names, plus the request ids of the lock's tickets).
//! Tokens and ticket numbers come from counters outside the table, handed in as the PostgreSQL
//! store hands in sequence values. After every step the answers must be equal, and so must every
//! lock's view.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};

use baton_core::{
    Acquire, Change, Config, EndedTicketEntry, HistoryRecord, Lease, LeaseId, LockName, LockSlice,
    RequestEntry, RequestTarget, Slice, State, Ticket, TicketId,
};
use proptest::prelude::*;

const T0: u64 = 1_000_000;
const NAMES: [&str; 2] = ["alpha", "beta"];

fn config() -> Config {
    Config {
        lock_delay_ms: 200,
        ticket_lapse_ms: 300,
        history_retention_ms: 1_000_000_000,
        history_per_lock_max: 100_000,
        history_total_max: 100_000,
        ended_retention_ms: 1_000_000_000,
        idle_lock_retention_ms: 1_000,
        ..Config::default()
    }
}

/// What a request names beyond its lock's rows.
#[derive(Default)]
struct Want {
    ended_leases: Vec<LeaseId>,
    ended_tickets: Vec<TicketId>,
    requests: Vec<String>,
    create: Option<u32>,
}

/// The rows a shared store keeps.
#[derive(Default)]
struct Rows {
    locks: BTreeMap<LockName, LockSlice>,
    leases: HashMap<LeaseId, Lease>,
    tickets: HashMap<TicketId, Ticket>,
    ended_tickets: HashMap<TicketId, EndedTicketEntry>,
    requests: HashMap<String, RequestEntry>,
    history: Vec<HistoryRecord>,
    floor: u64,
    next_token: u64,
    next_seq: u64,
}

impl Rows {
    fn transact<T>(
        &mut self,
        lock: &LockName,
        want: Want,
        now: u64,
        f: impl FnOnce(&mut State, u64) -> T,
    ) -> T {
        let mut created = false;
        if let Some(capacity) = want.create
            && !self.locks.contains_key(lock)
        {
            created = true;
            self.locks.insert(
                lock.clone(),
                LockSlice {
                    record: baton_core::LockRecord {
                        api_key: None,
                        name: lock.clone(),
                        capacity,
                        newest_token: 0,
                        newest_granted: 0,
                        delayed_until: None,
                        delayed_slots: 0,
                    },
                    idle_since: now,
                },
            );
        }
        let tickets: Vec<Ticket> = self
            .tickets
            .values()
            .filter(|ticket| ticket.lock == *lock)
            .cloned()
            .collect();
        let leases: Vec<Lease> = self
            .leases
            .values()
            .filter(|lease| lease.lock == *lock)
            .cloned()
            .collect();
        let mut request_ids = want.requests.clone();
        request_ids.extend(
            tickets
                .iter()
                .filter_map(|ticket| ticket.request_id.clone()),
        );
        let requests: Vec<RequestEntry> = request_ids
            .iter()
            .filter_map(|id| self.requests.get(id).cloned())
            .collect();
        let mut ended_lease_ids = want.ended_leases.clone();
        let mut ended_ticket_ids = want.ended_tickets.clone();
        for request in &requests {
            match request.target {
                RequestTarget::Lease(id) => ended_lease_ids.push(id),
                RequestTarget::Ticket(id) => ended_ticket_ids.push(id),
            }
        }
        let ended_leases = self
            .history
            .iter()
            .filter(|record| ended_lease_ids.contains(&record.lease_id))
            .map(|record| baton_core::EndedLease {
                id: record.lease_id,
                end: record.end,
                ended_at: record.ended_at,
            })
            .collect();
        let ended_tickets = ended_ticket_ids
            .iter()
            .filter_map(|id| self.ended_tickets.get(id).copied())
            .collect();
        let before = Slice {
            locks: self.locks.get(lock).cloned().into_iter().collect(),
            leases,
            tickets,
            ended_leases,
            ended_tickets,
            requests,
            jobs: Vec::new(),
            once_slots: Vec::new(),
            forgotten_token_floor: self.floor,
        };
        let capacity = before.locks.first().map_or(1, |l| l.record.capacity);
        let count = u64::from(capacity).min(before.tickets.len() as u64 + 1);
        let tokens: Vec<u64> = (self.next_token..self.next_token + count).collect();
        let mut state = State::from_slice(config(), before.clone(), tokens, self.next_seq, now);
        state.tick(now);
        let out = f(&mut state, now);
        assert!(!state.tokens_exhausted(), "the token pool ran dry");
        let changes = state.drain_changes();
        let mut after = state.to_slice();
        if created {
            after.locks.retain(|kept| {
                kept.record.newest_granted > 0
                    || after.leases.iter().any(|l| l.lock == kept.record.name)
                    || after.tickets.iter().any(|t| t.lock == kept.record.name)
            });
        }
        // Tokens and ticket numbers used are what the sequences gave out.
        let granted = after
            .leases
            .iter()
            .filter(|lease| !self.leases.contains_key(&lease.id))
            .count() as u64;
        self.next_token += granted;
        if after
            .tickets
            .iter()
            .any(|ticket| !self.tickets.contains_key(&ticket.id))
        {
            self.next_seq += 1;
        }
        // Write back the difference.
        self.locks.remove(lock);
        for kept in after.locks {
            self.locks.insert(kept.record.name.clone(), kept);
        }
        self.leases.retain(|_, lease| lease.lock != *lock);
        for lease in after.leases {
            self.leases.insert(lease.id, lease);
        }
        self.tickets.retain(|_, ticket| ticket.lock != *lock);
        for ticket in after.tickets {
            self.tickets.insert(ticket.id, ticket);
        }
        for ended in after.ended_tickets {
            self.ended_tickets.insert(ended.id, ended);
        }
        for loaded in &before.requests {
            if !after
                .requests
                .iter()
                .any(|kept| kept.request_id == loaded.request_id)
            {
                self.requests.remove(&loaded.request_id);
            }
        }
        for request in after.requests {
            self.requests.insert(request.request_id.clone(), request);
        }
        self.floor = self.floor.max(after.forgotten_token_floor);
        for change in changes {
            if let Change::HistoryAppend(record) = change {
                self.history.push(record);
            }
        }
        out
    }

    fn lock_of_lease(&self, id: LeaseId) -> Option<LockName> {
        self.leases.get(&id).map(|l| l.lock.clone()).or_else(|| {
            self.history
                .iter()
                .find(|record| record.lease_id == id)
                .map(|record| record.lock.clone())
        })
    }

    fn view(&self, lock: &LockName, now: u64) -> Option<baton_core::LockView> {
        let slice = Slice {
            locks: self.locks.get(lock).cloned().into_iter().collect(),
            leases: self
                .leases
                .values()
                .filter(|l| l.lock == *lock)
                .cloned()
                .collect(),
            tickets: self
                .tickets
                .values()
                .filter(|t| t.lock == *lock)
                .cloned()
                .collect(),
            ..Slice::default()
        };
        State::from_slice(config(), slice, Vec::new(), 1, now).lock(lock)
    }
}

#[derive(Debug, Clone)]
enum Op {
    Acquire {
        lock: usize,
        client: usize,
        queue: bool,
        key: bool,
        request: Option<usize>,
        capacity: Option<u32>,
    },
    Wait {
        pick: usize,
    },
    Cancel {
        pick: usize,
    },
    Renew {
        pick: usize,
    },
    Release {
        pick: usize,
    },
    Revoke {
        lock: usize,
        pick: usize,
    },
    Fence {
        lock: usize,
        token: u64,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..4usize, any::<bool>(), any::<bool>(), proptest::option::of(0..6usize), proptest::option::of(1..3u32))
            .prop_map(|(lock, client, queue, key, request, capacity)| Op::Acquire { lock, client, queue, key, request, capacity }),
        2 => (0..64usize).prop_map(|pick| Op::Wait { pick }),
        1 => (0..64usize).prop_map(|pick| Op::Cancel { pick }),
        2 => (0..64usize).prop_map(|pick| Op::Renew { pick }),
        3 => (0..64usize).prop_map(|pick| Op::Release { pick }),
        1 => (0..2usize, 0..64usize).prop_map(|(lock, pick)| Op::Revoke { lock, pick }),
        1 => (0..2usize, 0..12u64).prop_map(|(lock, token)| Op::Fence { lock, token }),
        3 => prop_oneof![Just(50u64), Just(250), Just(700), Just(1_500)].prop_map(|ms| Op::Advance { ms }),
    ]
}

fn name(index: usize) -> LockName {
    LockName::new(NAMES[index % NAMES.len()]).unwrap()
}

fn id(counter: &mut u128) -> [u8; 16] {
    *counter += 1;
    counter.to_be_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn slices_behave_like_the_whole_table(ops in proptest::collection::vec(op(), 1..60)) {
        let mut whole = State::new(config(), T0);
        let mut rows = Rows { next_token: 1, next_seq: 1, ..Rows::default() };
        let mut now = T0;
        let mut ids = 0u128;
        let mut leases: Vec<Lease> = Vec::new();
        let mut tickets: Vec<(TicketId, LockName)> = Vec::new();
        for op in ops {
            match op {
                Op::Acquire { lock, client, queue, key, request, capacity } => {
                    let command = Acquire {
                        quota: Default::default(),
                        api_key: None,
                        lock: name(lock),
                        owner: format!("c{client}"),
                        owner_key: key.then(|| format!("key{client}")),
                        ttl_ms: 1_000,
                        capacity,
                        queue,
                        request_id: request.map(|r| format!("r{r}")),
                        lease_id: LeaseId(id(&mut ids)),
                        ticket_id: TicketId(id(&mut ids)),
                    };
                    let expected = whole.acquire(command.clone(), now);
                    let want = Want {
                        requests: command.request_id.iter().cloned().collect(),
                        create: Some(capacity.unwrap_or(1)),
                        ..Want::default()
                    };
                    let got = rows.transact(&command.lock, want, now, |state, now| state.acquire(command.clone(), now));
                    prop_assert_eq!(format!("{got:?}"), format!("{expected:?}"), "acquire");
                    match expected {
                        Ok(baton_core::Acquired::Granted(lease)) => leases.push(lease),
                        Ok(baton_core::Acquired::Queued(q)) => tickets.push((q.ticket.id, q.ticket.lock)),
                        _ => {}
                    }
                }
                Op::Wait { pick } | Op::Cancel { pick } if !tickets.is_empty() => {
                    let (ticket, lock) = tickets[pick % tickets.len()].clone();
                    let want = || Want { ended_tickets: vec![ticket], ..Want::default() };
                    if matches!(op, Op::Wait { .. }) {
                        let keep = Some(now + 500);
                        let expected = whole.wait_ticket(ticket, keep, now);
                        let got = rows.transact(&lock, want(), now, |state, now| state.wait_ticket(ticket, keep, now));
                        prop_assert_eq!(format!("{got:?}"), format!("{expected:?}"), "wait");
                        if let Ok(baton_core::TicketStatus::Granted(lease)) = expected {
                            leases.push(lease);
                        }
                    } else {
                        let expected = whole.cancel_ticket(ticket, false, now);
                        let got = rows.transact(&lock, want(), now, |state, now| state.cancel_ticket(ticket, false, now));
                        prop_assert_eq!(format!("{got:?}"), format!("{expected:?}"), "cancel");
                    }
                }
                Op::Renew { pick } | Op::Release { pick } if !leases.is_empty() => {
                    let lease = leases[pick % leases.len()].clone();
                    let Some(lock) = rows.lock_of_lease(lease.id) else {
                        prop_assert!(false, "the rows lost lease {:?}", lease.id);
                        unreachable!()
                    };
                    let want = Want { ended_leases: vec![lease.id], ..Want::default() };
                    if matches!(op, Op::Renew { .. }) {
                        let expected = whole.renew(lease.id, None, now);
                        let got = rows.transact(&lock, want, now, |state, now| state.renew(lease.id, None, now));
                        prop_assert_eq!(format!("{got:?}"), format!("{expected:?}"), "renew");
                    } else {
                        let expected = whole.release(lease.id, now);
                        let got = rows.transact(&lock, want, now, |state, now| state.release(lease.id, now));
                        prop_assert_eq!(format!("{got:?}"), format!("{expected:?}"), "release");
                    }
                }
                Op::Revoke { lock, pick } if !leases.is_empty() => {
                    let token = leases[pick % leases.len()].token;
                    let lock = name(lock);
                    let expected = whole.revoke(&lock, token, now);
                    let got = rows.transact(&lock, Want::default(), now, |state, now| state.revoke(&lock, token, now));
                    prop_assert_eq!(format!("{got:?}"), format!("{expected:?}"), "revoke");
                }
                Op::Fence { lock, token } => {
                    let lock = name(lock);
                    let expected = whole.fence(&lock, token, now);
                    let got = rows.transact(&lock, Want::default(), now, |state, now| state.fence(&lock, token, now));
                    prop_assert_eq!(format!("{got:?}"), format!("{expected:?}"), "fence");
                }
                Op::Advance { ms } => {
                    now += ms;
                    whole.tick(now);
                    let names: Vec<LockName> = rows.locks.keys().cloned().collect();
                    for lock in names {
                        rows.transact(&lock, Want::default(), now, |_, _| ());
                    }
                }
                _ => {}
            }
            for index in 0..NAMES.len() {
                let lock = name(index);
                prop_assert_eq!(
                    format!("{:?}", rows.view(&lock, now)),
                    format!("{:?}", whole.lock(&lock)),
                    "view of {}", lock
                );
            }
        }
    }
}
