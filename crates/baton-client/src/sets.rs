//! Several locks at once (`POST /v1/locksets/acquire`): all granted together or none, queued
//! fairly and never deadlocking with another set however they overlap (the server keeps one
//! arrival order across every lock).
//!
//! A queued set is one ticket per lock; waiting on the first keeps them all, and once the set
//! is granted a wait on each ticket returns its lease at once. Each lease is then an ordinary
//! lease: renewed and released on its own (a [`LeaseGuard`] each, from [`Client::lock_set`]).

use std::time::Duration;

use baton_proto::{AcquireSetRequest, LeasesResponse, LockMode, Ticket, TicketsResponse};
use reqwest::{Method, StatusCode};
use tokio::time::Instant;

use crate::client::{
    Acquired, Answer, Call, Client, Granted, LONG_POLL_MAX, LockOptions, TICKET_RETRY_PAUSE_MAX,
    generate_request_id, millis, remaining, to_json,
};
use crate::error::{Code, Error, Result};
use crate::guard::LeaseGuard;
use baton_proto::ErrorCode;

/// The answer to a lock-set acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquiredSet {
    /// 200: every lock is granted; one lease per lock, in the order asked.
    Granted(Vec<Granted>),
    /// 202: still queued; one ticket per lock, in the order asked. Wait on the first at once,
    /// or the set lapses.
    Queued(Vec<Ticket>),
}

fn leases_or_tickets(answer: &Answer) -> Result<AcquiredSet> {
    match answer.status {
        StatusCode::OK => {
            let LeasesResponse { leases } = answer.decode()?;
            Ok(AcquiredSet::Granted(
                leases
                    .into_iter()
                    .map(|lease| Granted {
                        lease,
                        sent_at: answer.sent_at,
                    })
                    .collect(),
            ))
        }
        StatusCode::ACCEPTED => {
            let TicketsResponse { tickets } = answer.decode()?;
            if tickets.is_empty() {
                return Err(answer.unexpected());
            }
            Ok(AcquiredSet::Queued(tickets))
        }
        _ => Err(answer.unexpected()),
    }
}

impl Client {
    /// `POST /v1/locksets/acquire`: one acquire of several locks, long-polling up to
    /// `request.wait_ms`. A request without a `request_id` gets a fresh one, so retries after a
    /// lost answer get the same outcome (G7). Fails with [`Error::Busy`] when a lock is busy
    /// and `queue` is not set (then nothing is held or queued).
    pub async fn acquire_set(&self, request: &AcquireSetRequest) -> Result<AcquiredSet> {
        let mut request = request.clone();
        if request.request_id.is_none() {
            request.request_id = Some(generate_request_id());
        }
        let wait = Duration::from_millis(request.wait_ms.unwrap_or(0));
        let answer = self
            .send(Call {
                method: Method::POST,
                path: "/v1/locksets/acquire",
                body: Some(to_json(&request)?),
                wait,
                retry: self.retry_policy(),
            })
            .await?;
        leases_or_tickets(&answer)
    }

    /// Acquires every lock of `names` together as `options` say (owner, ttl, wait, value,
    /// mode; `capacity` and `owner_key` do not apply to sets), queueing and long-polling until
    /// the whole set is granted, `options.wait` has passed (the set is cancelled:
    /// [`Error::TimedOut`]) or `stop` completes (the set leaves its queues, and a grant that
    /// crossed the stop is released: `Ok(Err(stop's output))`). With `options.wait ==
    /// Some(Duration::ZERO)` it tries once and fails with [`Error::Busy`] unless every lock is
    /// free. The leases are returned in the order of `names`.
    pub async fn wait_for_lease_set_until<S>(
        &self,
        names: &[String],
        options: &LockOptions,
        stop: impl Future<Output = S>,
    ) -> Result<std::result::Result<Vec<Granted>, S>> {
        let mut stop = std::pin::pin!(stop);
        let started = Instant::now();
        let deadline = options.wait.map(|wait| started + wait);
        let poll = options.poll.clamp(Duration::from_millis(1), LONG_POLL_MAX);
        let try_once = options.wait == Some(Duration::ZERO);
        let mut request_id = options
            .request_id
            .clone()
            .unwrap_or_else(generate_request_id);
        let timed_out = || Error::TimedOut {
            lock: names.join(","),
            waited: started.elapsed(),
        };
        loop {
            let request = AcquireSetRequest {
                locks: names.to_vec(),
                owner: options.owner.clone(),
                ttl_ms: options.ttl.map(millis),
                // The first acquire answers at once, so the tickets are known and can be left.
                wait_ms: Some(0),
                queue: Some(!try_once),
                request_id: Some(request_id.clone()),
                value: options.value.clone(),
                mode: (options.mode == LockMode::Shared).then_some(LockMode::Shared),
            };
            let tickets = match self.acquire_set(&request).await? {
                AcquiredSet::Granted(leases) => return self.confirm_all(leases).await.map(Ok),
                AcquiredSet::Queued(tickets) => tickets,
            };
            let mut outage_attempt = 0u32;
            loop {
                let wait = match remaining(deadline) {
                    Some(left) if left.is_zero() => {
                        self.leave_set(&tickets).await;
                        return Err(timed_out());
                    }
                    Some(left) => left.min(poll),
                    None => poll,
                };
                // The first ticket stands for the set: waiting on it keeps every ticket.
                let answer = tokio::select! {
                    answer = self.wait_ticket(&tickets[0].id, wait) => answer,
                    stopped = &mut stop => {
                        self.leave_set(&tickets).await;
                        return Ok(Err(stopped));
                    }
                };
                match answer {
                    Ok(Acquired::Granted(_)) => {
                        let leases = self.collect_set(&tickets).await?;
                        return self.confirm_all(leases).await.map(Ok);
                    }
                    Ok(Acquired::Queued(_)) => outage_attempt = 0,
                    Err(Error::Unavailable { .. }) => {
                        outage_attempt = outage_attempt.saturating_add(1);
                        let pause = crate::retry::exponential_step(
                            Duration::from_millis(100),
                            TICKET_RETRY_PAUSE_MAX,
                            outage_attempt,
                        );
                        match remaining(deadline) {
                            Some(left) => tokio::time::sleep(pause.min(left)).await,
                            None => tokio::time::sleep(pause).await,
                        }
                    }
                    Err(
                        Error::Rejected {
                            code: Code::Known(ErrorCode::TicketLapsed),
                            ..
                        }
                        | Error::NotFound {
                            code: Code::Known(ErrorCode::TicketNotFound),
                            ..
                        },
                    ) => {
                        // The set left its queues while nobody could wait on it: queue again as
                        // a new request.
                        request_id = generate_request_id();
                        if remaining(deadline).is_some_and(|left| left.is_zero()) {
                            return Err(timed_out());
                        }
                        break;
                    }
                    Err(error) => {
                        self.leave_set(&tickets).await;
                        return Err(error);
                    }
                }
            }
        }
    }

    /// [`Client::wait_for_lease_set_until`] with no stop, wrapped in one [`LeaseGuard`] per
    /// lock (each renews its lease in the background and releases it when dropped).
    pub async fn lock_set(
        &self,
        names: &[String],
        options: LockOptions,
    ) -> Result<Vec<LeaseGuard>> {
        let never = std::future::pending::<std::convert::Infallible>();
        let leases = match self
            .wait_for_lease_set_until(names, &options, never)
            .await?
        {
            Ok(leases) => leases,
            Err(never) => match never {},
        };
        Ok(leases
            .into_iter()
            .map(|granted| LeaseGuard::start(self.clone(), granted))
            .collect())
    }

    /// Every lease of a granted set, one wait on each ticket (each answers at once).
    async fn collect_set(&self, tickets: &[Ticket]) -> Result<Vec<Granted>> {
        let mut leases = Vec::with_capacity(tickets.len());
        for ticket in tickets {
            match self.wait_ticket(&ticket.id, Duration::ZERO).await {
                Ok(Acquired::Granted(granted)) => leases.push(granted),
                Ok(Acquired::Queued(_)) => {
                    self.release_all(&leases).await;
                    return Err(Error::Protocol {
                        url: self.current_url().to_owned(),
                        message: format!(
                            "the server granted part of a lock set: {} still queued",
                            ticket.lock
                        ),
                    });
                }
                Err(error) => {
                    self.release_all(&leases).await;
                    return Err(error);
                }
            }
        }
        Ok(leases)
    }

    /// Confirms each grant whose local deadline has aged (see `confirm_grant`).
    async fn confirm_all(&self, leases: Vec<Granted>) -> Result<Vec<Granted>> {
        let mut confirmed = Vec::with_capacity(leases.len());
        for (index, granted) in leases.iter().enumerate() {
            match self.confirm_grant(granted.clone()).await {
                Ok(granted) => confirmed.push(granted),
                Err(error) => {
                    self.release_all(&confirmed).await;
                    self.release_all(&leases[index + 1..]).await;
                    return Err(error);
                }
            }
        }
        Ok(confirmed)
    }

    /// Releases every lease of a set, logging failures (the leases then expire).
    pub async fn release_all(&self, leases: &[Granted]) {
        for granted in leases {
            if let Err(error) = self.release(&granted.lease.id).await {
                tracing::warn!(lock = %granted.lease.lock, %error, "cannot release; the lease will expire");
            }
        }
    }

    /// Leaves the queues of a set (cancelling one ticket cancels all) and releases a grant that
    /// crossed the cancel.
    async fn leave_set(&self, tickets: &[Ticket]) {
        match self.cancel_ticket(&tickets[0].id).await {
            Ok(response) if !response.cancelled => {
                if let Ok(leases) = self.collect_set(tickets).await {
                    self.release_all(&leases).await;
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, "cannot cancel the lock set; it will lapse");
            }
        }
    }
}
