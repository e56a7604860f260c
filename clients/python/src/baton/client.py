"""The blocking client: :class:`Client` over ``http.client``, and :class:`LeaseGuard`, a held
lease that a background thread renews.

The transport keeps a few idle keep-alive connections per server, tries the server that
answered last first, moves on to the next on a connection failure (the request was never
delivered, so that is always safe), and retries :class:`~baton.Unavailable` failures with
backoff. Every call it repeats is safe to repeat: acquires carry a request id (G7), and the
one call that is not (revoke) is sent once, on a fresh connection.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
import time
from datetime import datetime
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import _core
from ._core import (
    NO_RETRY,
    Answer,
    Base,
    Call,
    Granted,
    Number,
    RetryPolicy,
    Settings,
)
from .errors import (
    BatonError,
    InvalidInput,
    LeaseLost,
    NotFound,
    ProtocolError,
    Rejected,
    TimedOut,
    TlsError,
    Unavailable,
)
from .models import (
    CancelResult,
    FenceResult,
    Health,
    History,
    Job,
    JobDetail,
    Lease,
    LockInfo,
    ReleaseResult,
    RevokeResult,
    Ticket,
)

log = logging.getLogger("baton")

#: Idle keep-alive connections kept per server.
IDLE_CONNECTIONS_MAX = 4

#: Errors of a kept-alive connection that the server closed while it sat idle: the request was
#: not read, so it is sent again on a fresh connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
          ConnectionAbortedError, http.client.BadStatusLine)

#: Ticket-wait codes after which the client queues again: the ticket left the queue while it
#: could not wait on it (an outage, a paused process, a server that forgot it).
REQUEUE_CODES = ("ticket_lapsed", "ticket_cancelled", "ticket_not_found")

OnLost = Callable[[LeaseLost], Any]


class _Stale(Exception):
    """A kept-alive connection turned out closed before any answer."""


class _Transport:
    """Connections, fail-over and retries for one :class:`Settings`. Thread-safe."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._idle: Dict[int, List[http.client.HTTPConnection]] = {
            index: [] for index in range(len(settings.bases))
        }
        self._lock = threading.Lock()
        #: Index of the server to try first: the last one that answered.
        self.preferred = 0

    def close(self) -> None:
        with self._lock:
            connections = [conn for idle in self._idle.values() for conn in idle]
            for idle in self._idle.values():
                idle.clear()
        for conn in connections:
            conn.close()

    def send(self, call: Call) -> Answer:
        """Sends ``call``; returns any answer that is not to be retried (2xx or an error
        answer), raising :class:`Unavailable` when every attempt failed."""
        policy = _core.retry_policy_of(call, self.settings)
        attempt = 1
        while True:
            try:
                answer = self._attempt(call)
                if answer.status < 300 or not answer.error().retryable:
                    return answer
                outcome: BatonError = answer.error()
            except Unavailable as error:
                outcome = error
            self._prefer_next()
            if attempt >= max(policy.attempts, 1):
                raise outcome
            pause = policy.backoff(attempt)
            log.debug("retrying %s %s in %.2fs: %s", call.method, call.path, pause, outcome)
            time.sleep(pause)
            attempt += 1

    def _attempt(self, call: Call) -> Answer:
        bases = self.settings.bases
        start = self.preferred
        failures: List[str] = []
        tls_failures: List[str] = []
        for offset in range(len(bases)):
            index = (start + offset) % len(bases)
            base = bases[index]
            try:
                conn, reused = self._connection(index, call, fresh=call.fresh_connection)
            except ssl.SSLError as error:
                tls_failures.append(_core.tls_failure_message(base, error))
                continue
            except OSError as error:
                failures.append(_core.connection_failure_message(base, error))
                continue
            try:
                answer = self._exchange(index, conn, call, reused)
            except _Stale:
                try:
                    conn, _ = self._connection(index, call, fresh=True)
                except ssl.SSLError as error:
                    tls_failures.append(_core.tls_failure_message(base, error))
                    continue
                except OSError as error:
                    failures.append(_core.connection_failure_message(base, error))
                    continue
                answer = self._exchange(index, conn, call, reused=False)
            self.preferred = index
            return answer
        if tls_failures and not failures:
            raise TlsError("; ".join(tls_failures))
        raise Unavailable("cannot reach the baton server (" +
                          "; ".join(failures + tls_failures) + ")")

    def _connection(self, index: int, call: Call,
                    fresh: bool) -> Tuple[http.client.HTTPConnection, bool]:
        if not fresh:
            with self._lock:
                if self._idle[index]:
                    return self._idle[index].pop(), True
        base = self.settings.bases[index]
        connect_timeout = min(_core.CONNECT_TIMEOUT, call.total_timeout(self.settings))
        conn: http.client.HTTPConnection
        if base.https:
            conn = http.client.HTTPSConnection(base.host, base.port, timeout=connect_timeout,
                                               context=self.settings.ssl_context)
        else:
            conn = http.client.HTTPConnection(base.host, base.port, timeout=connect_timeout)
        try:
            conn.connect()
        except BaseException:
            conn.close()
            raise
        return conn, False

    def _exchange(self, index: int, conn: http.client.HTTPConnection, call: Call,
                  reused: bool) -> Answer:
        base = self.settings.bases[index]
        url = base.url + call.path
        timeout = call.total_timeout(self.settings)
        try:
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            sent_at = time.monotonic()
            conn.request(call.method, base.prefix + call.path, body=call.body,
                         headers=self.settings.headers(base, call.body))
            response = conn.getresponse()
            body = response.read(_core.ANSWER_BYTES_MAX + 1)
        except _STALE as error:
            conn.close()
            if reused:
                raise _Stale() from error
            raise Unavailable(f"{url}: {error or type(error).__name__}") from None
        except (OSError, http.client.HTTPException) as error:
            conn.close()
            text = "timed out" if isinstance(error, socket.timeout) else str(error)
            raise Unavailable(f"{url}: {text or type(error).__name__}") from None
        except BaseException:
            # Interrupted mid-request: the connection's state is unknown.
            conn.close()
            raise
        if len(body) > _core.ANSWER_BYTES_MAX:
            conn.close()
            raise ProtocolError(f"{url}: answer larger than {_core.ANSWER_BYTES_MAX} bytes")
        if response.will_close or call.fresh_connection:
            conn.close()
        else:
            with self._lock:
                idle = self._idle[index]
                if len(idle) < IDLE_CONNECTIONS_MAX:
                    idle.append(conn)
                    conn = None  # type: ignore[assignment]
            if conn is not None:
                conn.close()
        return Answer(response.status, body, url, sent_at, response.getheader("Retry-After"))

    def _prefer_next(self) -> None:
        if len(self.settings.bases) > 1:
            self.preferred = (self.preferred + 1) % len(self.settings.bases)


class Client:
    """A blocking client for one baton deployment (one server, or several sharing a store).

    ``url`` is one URL, a comma-separated list or a sequence (default ``BATON_URL``, else
    ``http://127.0.0.1:7878``); ``api_key`` defaults to ``BATON_API_KEY``, ``ca_file`` (a PEM
    of CA certificates trusted on top of the system's) to ``BATON_CA_FILE``, ``owner`` to
    ``BATON_OWNER`` or ``HOST/USER/PID``. Durations are seconds. Thread-safe; close it (or use
    it as a context manager) to drop its idle connections.
    """

    def __init__(self, url: Union[str, Sequence[str], None] = None, *,
                 api_key: Optional[str] = None, ca_file: Optional[str] = None,
                 retry: Optional[RetryPolicy] = None, request_timeout: Optional[float] = None,
                 owner: Optional[str] = None):
        self.settings = Settings.resolve(url, api_key, ca_file, retry, request_timeout, owner)
        self._transport = _Transport(self.settings)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Closes the idle connections. The client stays usable."""
        self._transport.close()

    @property
    def base_urls(self) -> List[str]:
        """The servers, in the order given."""
        return [base.url for base in self.settings.bases]

    @property
    def current_url(self) -> str:
        """The server tried first: the one that answered last."""
        return self.settings.bases[self._transport.preferred].url

    def _send(self, call: Call) -> Answer:
        return self._transport.send(call)

    # ----- locks and leases -------------------------------------------------------------------

    def acquire(self, name: str, *, ttl: Optional[Number] = None, wait: Number = 0,
                queue: bool = False, owner: Optional[str] = None,
                owner_key: Optional[str] = None, capacity: Optional[int] = None,
                request_id: Optional[str] = None) -> Union[Lease, Ticket]:
        """One acquire, long-polling up to ``wait`` seconds (at most 60).

        Returns the :class:`Lease`, or with ``queue=True`` a :class:`Ticket` when still queued
        (wait on it with :meth:`wait_ticket` at once, or it lapses). Raises :class:`Busy` when
        the lock is held and ``queue`` is False. Retried with the same request id, so a lost
        answer never makes a second lease or ticket.
        """
        call = _core.acquire_call(name, owner or self.settings.owner, owner_key=owner_key,
                                  ttl=ttl, capacity=capacity, wait=wait, queue=queue,
                                  request_id=request_id or _core.generate_request_id())
        result = _core.lease_or_ticket(self._send(call))
        return result.lease if isinstance(result, Granted) else result

    def wait_ticket(self, ticket_id: str, wait: Number = _core.LONG_POLL_MAX) -> Union[Lease, Ticket]:
        """Long-polls a ticket up to ``wait`` seconds: its :class:`Lease`, or the ticket with its
        new position (wait again at once)."""
        result = _core.lease_or_ticket(self._send(_core.wait_ticket_call(ticket_id, wait)))
        return result.lease if isinstance(result, Granted) else result

    def cancel_ticket(self, ticket_id: str) -> CancelResult:
        """Leaves the queue (``DELETE /v1/tickets/{id}``)."""
        answer = self._send(Call("DELETE", _core.id_path("tickets", ticket_id)))
        return CancelResult.from_json(_core.ok_json(answer))

    def renew(self, lease_id: str, ttl: Optional[Number] = None) -> Lease:
        """Extends a lease to now + ``ttl`` (its current ttl when None); raises
        :class:`LeaseLost` when it already ended."""
        return self._renew(lease_id, ttl, None).lease

    def _renew(self, lease_id: str, ttl: Optional[Number], retry: Optional[RetryPolicy],
               timeout: Optional[float] = None) -> Granted:
        body = {"ttl_ms": None if ttl is None else _core.millis(ttl)}
        answer = self._send(_core.post(_core.id_path("leases", lease_id, "/renew"), body,
                                       retry=retry, timeout=timeout))
        result = _core.lease_or_ticket(answer)
        if not isinstance(result, Granted):
            raise answer.unexpected()
        return result

    def release(self, lease_id: str) -> ReleaseResult:
        """Ends a lease. A lease that already ended is not an error: ``released`` is False and
        ``reason`` says why (``expired``, ``revoked``, ``already_released``)."""
        answer = self._send(_core.post(_core.id_path("leases", lease_id, "/release"), {}))
        return ReleaseResult.from_json(_core.ok_json(answer))

    def wait_for_lease(self, name: str, *, ttl: Optional[Number] = None,
                       timeout: Optional[Number] = None, owner: Optional[str] = None,
                       owner_key: Optional[str] = None, capacity: Optional[int] = None,
                       request_id: Optional[str] = None,
                       poll: Number = _core.LONG_POLL_MAX) -> Granted:
        """Queues for ``name`` and long-polls the ticket until granted.

        ``timeout`` None waits forever; 0 tries once without queueing (:class:`Busy` when
        held); otherwise :class:`TimedOut` after that many seconds. However it stops waiting (a
        timeout, an error, ``KeyboardInterrupt``), it leaves the queue with ``DELETE`` on its
        ticket, so no lock is ever granted to a waiter that has gone. Each long-poll stays open
        for its whole ``wait_ms`` (the socket timeout is longer), since a waiter that
        disconnects loses its place.
        """
        started = time.monotonic()
        deadline = None if timeout is None else started + float(timeout)
        poll = min(max(float(poll), 0.001), _core.LONG_POLL_MAX)
        try_once = timeout is not None and float(timeout) <= 0
        request_id = request_id or _core.generate_request_id()
        owner = owner or self.settings.owner

        def left() -> Optional[float]:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        while True:
            # The first request does not long-poll: the ticket id comes back at once, so every
            # long wait is on a ticket this waiter can DELETE when it stops waiting.
            call = _core.acquire_call(name, owner, owner_key=owner_key, ttl=ttl,
                                      capacity=capacity, wait=0, queue=not try_once,
                                      request_id=request_id)
            try:
                result = _core.lease_or_ticket(self._send(call))
            except BaseException as error:
                if not isinstance(error, BatonError) or isinstance(error, Unavailable):
                    self._undo_acquire(call)
                raise
            if isinstance(result, Granted):
                return result
            ticket: Ticket = result
            try:
                granted = self._wait_queued(name, ticket, left, poll, started)
            except BaseException:
                self._abandon(ticket)
                raise
            if granted is not None:
                return granted
            # The ticket left the queue: queue again as a new logical acquire (the old request
            # id would replay the lapsed ticket).
            request_id = _core.generate_request_id()
            if left() == 0.0:
                raise TimedOut(name, time.monotonic() - started)

    def _wait_queued(self, name: str, ticket: Ticket, left: Callable[[], Optional[float]],
                     poll: float, started: float) -> Optional[Granted]:
        """Waits on ``ticket`` until granted (the lease) or lapsed (None)."""
        outages = 0
        while True:
            remaining = left()
            if remaining == 0.0:
                raise TimedOut(name, time.monotonic() - started)
            wait = poll if remaining is None else min(poll, remaining)
            try:
                result = _core.lease_or_ticket(
                    self._send(_core.wait_ticket_call(ticket.id, wait)))
            except Unavailable as error:
                outages += 1
                pause = _core.exponential_step(0.1, _core.TICKET_RETRY_PAUSE_MAX, outages)
                log.debug("server unavailable while queued for %s; retrying: %s", name, error)
                remaining = left()
                time.sleep(pause if remaining is None else min(pause, remaining))
                continue
            except (Rejected, NotFound) as error:
                if error.code in REQUEUE_CODES:
                    log.info("ticket for %s left the queue (%s); queueing again", name,
                             error.code)
                    return None
                raise
            if isinstance(result, Granted):
                return result
            ticket, outages = result, 0

    def _undo_acquire(self, call: Call) -> None:
        """After an acquire whose answer never came (an interrupt, an outage): sends it once
        more with the same request id, which answers with the lease or ticket the first one
        made, if it made one (G7), and gives that up."""
        replay = Call(call.method, call.path, call.body, retry=NO_RETRY,
                      timeout=_core.UNDO_TIMEOUT)
        try:
            result = _core.lease_or_ticket(self._send(replay))
            if isinstance(result, Granted):
                self.release(result.lease.id)
            else:
                self._abandon(result)
        except BatonError as error:
            log.debug("cannot undo an unanswered acquire; it ends by itself: %s", error)

    def _abandon(self, ticket: Ticket) -> None:
        """Best-effort DELETE of a ticket we give up on."""
        try:
            result = self.cancel_ticket(ticket.id)
        except BatonError as error:
            log.debug("cannot cancel the ticket for %s; it will lapse: %s", ticket.lock, error)
            return
        if not result.cancelled and result.reason == "already_granted":
            log.warning("gave up waiting for %s, but its lease was already collected; it "
                        "will expire", ticket.lock)

    def lock(self, name: str, ttl: Optional[Number] = None, *,
             timeout: Optional[Number] = None, owner: Optional[str] = None,
             owner_key: Optional[str] = None, capacity: Optional[int] = None,
             on_lost: Optional[OnLost] = None) -> "LockContext":
        """A context manager that acquires ``name`` on entry (as :meth:`wait_for_lease`),
        renews it in the background and releases it on exit::

            with client.lock("deploy", ttl=30) as lease:
                deploy(fencing_token=lease.token)

        See :class:`LeaseGuard` for what happens when the lease is lost.
        """
        return LockContext(self, name, dict(ttl=ttl, timeout=timeout, owner=owner,
                                            owner_key=owner_key, capacity=capacity),
                           on_lost)

    # ----- reading ----------------------------------------------------------------------------

    def locks(self, *, after: Optional[str] = None, limit: Optional[int] = None) -> List[LockInfo]:
        """Every lock the key may read (``GET /v1/locks``), by name."""
        query = []
        if after is not None:
            query.append(f"after={_core.segment(after)}")
        if limit is not None:
            query.append(f"limit={int(limit)}")
        path = "/v1/locks" + ("?" + "&".join(query) if query else "")
        document = _core.ok_json(self._send(Call("GET", path)))
        return [LockInfo.from_json(item) for item in _list_of(document, "locks")]

    def lock_info(self, name: str) -> LockInfo:
        """One lock (``GET /v1/locks/{name}``); :class:`NotFound` (``lock_not_found``) when
        unknown."""
        return LockInfo.from_json(_core.ok_json(self._send(Call("GET", _core.lock_path(name)))))

    def history(self, name: str, limit: Optional[int] = None) -> History:
        """Past holds of a lock, newest first."""
        path = _core.lock_path(name, "/history") + (f"?limit={int(limit)}" if limit else "")
        return History.from_json(_core.ok_json(self._send(Call("GET", path))))

    def fence(self, name: str, token: int) -> FenceResult:
        """Asks whether ``token`` is still the newest of the lock (and records it if so). A
        stale token is an answer (``accepted`` False), not an exception."""
        answer = self._send(_core.post(_core.lock_path(name, "/fence"), {"token": int(token)}))
        return _core.fence_result(answer)

    def revoke(self, name: str, token: int) -> RevokeResult:
        """Ends the lease holding ``token`` (``admin`` role). Sent once: a repeat after a lost
        answer would report ``holder_not_found``."""
        call = Call("POST", _core.lock_path(name, "/revoke"), _core.to_json({"token": int(token)}),
                    retry=NO_RETRY, fresh_connection=True)
        return RevokeResult.from_json(_core.ok_json(self._send(call)))

    def jobs(self, *, name: Optional[str] = None, state: Union[str, Sequence[str], None] = None,
             since: Union[datetime, str, None] = None, until: Union[datetime, str, None] = None,
             batch: Optional[str] = None, limit: Optional[int] = None) -> List[Job]:
        """Job records, newest first, filtered by name, state(s), creation time and batch."""
        path = _core.jobs_path(name, state, since, until, batch, limit)
        document = _core.ok_json(self._send(Call("GET", path)))
        return [Job.from_json(item) for item in _list_of(document, "jobs")]

    def job(self, job_id: str) -> JobDetail:
        """One job with the tail of its output; :class:`NotFound` (``job_not_found``)."""
        path = _core.id_path("jobs", job_id)
        return JobDetail.from_json(_core.ok_json(self._send(Call("GET", path))))

    def health(self) -> Health:
        """``GET /healthz``: the server is up."""
        return Health.from_json(_core.ok_json(self._send(Call("GET", "/healthz"))))

    def ready(self) -> Health:
        """``GET /readyz``: the server can serve (its store commits)."""
        return Health.from_json(_core.ok_json(self._send(Call("GET", "/readyz"))))


def _list_of(document: Any, key: str) -> List[Any]:
    items = document.get(key) if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise ProtocolError(f"answer without a {key!r} list")
    return items


class LeaseGuard:
    """A held lease that a background thread renews at a third of its ttl.

    The guard never believes in the lease longer than the server could: its local
    :attr:`deadline` counts from when the granting or renewing request was *sent*, less a drift
    margin (G6). The lease is lost when a renewal is answered ``lease_lost``/``revoked`` or
    the deadline passes without a successful renewal (the server may be unreachable). Then:

    - with ``on_lost``, the callback is called once with the :class:`LeaseLost` exception,
      from the renewal thread (or the thread that first saw the deadline pass); nothing is
      raised on exit;
    - without it, leaving the ``with`` block raises :class:`LeaseLost`, so code after the block
      never assumes it ran protected. Inside the block, :meth:`check` raises at once and
      :attr:`lost` / :meth:`wait_lost` tell; check before each write the lock protects.

    A release answered ``released: false`` with ``expired`` or ``revoked`` counts as lost too.
    """

    def __init__(self, client: Client, granted: Granted, on_lost: Optional[OnLost] = None):
        self._client = client
        self._on_lost = on_lost
        self._state_lock = threading.Lock()
        self._granted = granted
        self._lost_error: Optional[LeaseLost] = None
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._released: Optional[ReleaseResult] = None
        self.id = granted.lease.id
        self.token = granted.lease.token
        self.name = granted.lease.lock
        self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                        name=f"baton-renew-{self.name}")
        self._thread.start()

    def __repr__(self) -> str:
        return f"LeaseGuard(lock={self.name!r}, token={self.token}, lost={self.lost})"

    @property
    def lease(self) -> Lease:
        """The lease as of its last successful grant or renewal."""
        with self._state_lock:
            return self._granted.lease

    @property
    def deadline(self) -> float:
        """The local deadline, by ``time.monotonic()``: stop the guarded work before it."""
        with self._state_lock:
            return self._granted.local_deadline

    @property
    def lost(self) -> bool:
        """True once the lease is lost (the local deadline passing counts at once)."""
        if self._lost.is_set():
            return True
        if self._released is None and time.monotonic() >= self.deadline:
            self._lose(LeaseLost("the lease could not be renewed before its deadline",
                                 reason="deadline_exceeded"))
            return True
        return False

    @property
    def lost_error(self) -> Optional[LeaseLost]:
        """Why the lease was lost, once it was."""
        return self._lost_error if self.lost else None

    def check(self) -> None:
        """Raises :class:`LeaseLost` if the lease is lost."""
        if self.lost and self._lost_error is not None:
            raise self._lost_error

    def wait_lost(self, timeout: Optional[float] = None) -> bool:
        """Blocks until the lease is lost (True) or ``timeout`` seconds passed (False)."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self.lost:
            until = self.deadline
            if end is not None:
                until = min(until, end)
            if end is not None and time.monotonic() >= end:
                return False
            self._lost.wait(max(0.0, until - time.monotonic()) + 0.001)
        return True

    def release(self) -> ReleaseResult:
        """Stops renewing and releases the lease, handing the lock on at once. Releasing
        twice returns the first answer."""
        if self._released is not None:
            return self._released
        # The renewal thread is not joined: a renewal in flight may take a request timeout,
        # and its outcome is ignored once stopped.
        self._stop.set()
        result = self._client.release(self.id)
        self._released = result
        if not result.released and result.reason in ("expired", "revoked"):
            self._lose(LeaseLost(f"the lease had ended before its release ({result.reason}); "
                                 "the section did not run fully protected",
                                 reason=result.reason))
        return result

    def __enter__(self) -> "LeaseGuard":
        return self

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        try:
            self.release()
        except BatonError as error:
            # Not a safety problem: the lease simply expires, later than it could have.
            log.warning("cannot release the lease of %s; it will expire: %s", self.name, error)
        if exc_type is None and self._on_lost is None and self._lost_error is not None:
            raise self._lost_error

    def _lose(self, error: LeaseLost) -> None:
        with self._state_lock:
            if self._lost_error is not None:
                return
            self._lost_error = error
        self._lost.set()
        log.warning("lease of %s lost: %s", self.name, error)
        if self._on_lost is not None:
            try:
                self._on_lost(error)
            except Exception:
                log.exception("on_lost callback of %s failed", self.name)

    def _renew_loop(self) -> None:
        failures = 0
        next_renewal = self._granted.renewal_instant
        while True:
            deadline = self.deadline
            if self._stop.wait(max(0.0, min(next_renewal, deadline) - time.monotonic())):
                return
            if time.monotonic() >= deadline:
                self._lose(LeaseLost("the lease could not be renewed before its deadline",
                                     reason="deadline_exceeded"))
                return
            try:
                # The request may not outlive the deadline: a renewal that hangs must not keep
                # the holder believing in its lease.
                renewed = self._client._renew(self.id, None, NO_RETRY,
                                              timeout=deadline - time.monotonic())
            except BatonError as error:
                if self._stop.is_set():
                    return  # released meanwhile: the outcome no longer matters
                if isinstance(error, LeaseLost):
                    self._lose(error)
                    return
                if isinstance(error, NotFound):
                    self._lose(LeaseLost(error.message, reason="expired", status=error.status))
                    return
                # Anything else (an outage, a 5xx) may pass: retry until the deadline decides.
                failures += 1
                pause = _core.exponential_step(_core.RENEW_RETRY_PAUSE_INITIAL,
                                               _core.RENEW_RETRY_PAUSE_MAX, failures)
                log.warning("renewal of %s failed; retrying in %.1fs: %s", self.name, pause,
                            error)
                next_renewal = time.monotonic() + pause
                continue
            if self._stop.is_set():
                return
            failures = 0
            with self._state_lock:
                self._granted = renewed
            next_renewal = renewed.renewal_instant


class LockContext:
    """What :meth:`Client.lock` returns: acquires on ``__enter__`` and gives a
    :class:`LeaseGuard`; releases on ``__exit__``. :meth:`acquire` does the same without
    ``with`` (then call :meth:`LeaseGuard.release`)."""

    def __init__(self, client: Client, name: str, options: Dict[str, Any],
                 on_lost: Optional[OnLost], owns_client: bool = False):
        self._client = client
        self._name = name
        self._options = options
        self._on_lost = on_lost
        self._owns_client = owns_client
        self._guard: Optional[LeaseGuard] = None

    def acquire(self) -> LeaseGuard:
        """Waits for the lease and starts renewing it."""
        granted = self._client.wait_for_lease(self._name, **self._options)
        return LeaseGuard(self._client, granted, self._on_lost)

    def __enter__(self) -> LeaseGuard:
        if self._guard is not None:
            raise InvalidInput("this lock context is already entered; call lock() again")
        try:
            self._guard = self.acquire()
        except BaseException:
            if self._owns_client:
                self._client.close()
            raise
        return self._guard

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        guard, self._guard = self._guard, None
        try:
            if guard is not None:
                guard.__exit__(exc_type, exc, traceback)
        finally:
            if self._owns_client:
                self._client.close()
