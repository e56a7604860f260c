"""The asyncio client: :class:`AsyncClient` over a small HTTP/1.1 client on asyncio streams,
and :class:`AsyncLeaseGuard`, a held lease that a background task renews.

The HTTP/1.1 client speaks exactly what a baton server needs: one request at a time per
connection, ``Content-Length`` or chunked answers, keep-alive with a few idle connections per
server. Fail-over, retries and the meaning of every answer are shared with the blocking client
(``_core.py``).

When the lease of an ``async with`` block is lost and no ``on_lost`` callback was given, the
guard cancels the task running the block and the block ends with :class:`~baton.LeaseLost`
(as ``asyncio.timeout`` turns its cancel into ``TimeoutError``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
import time
from datetime import datetime
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import _core
from ._core import NO_RETRY, Answer, Call, Granted, Number, RetryPolicy, Settings
from .client import REQUEUE_CODES, _list_of
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

#: Header lines an answer may have.
HEADER_LINES_MAX = 100

AsyncOnLost = Callable[[LeaseLost], Union[None, Awaitable[None]]]

_Stream = Tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Stale(Exception):
    """A kept-alive connection turned out closed before any answer."""


class _BadAnswer(Exception):
    """The bytes are not an HTTP/1.1 answer."""


def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
    except Exception:  # closing a transport of a loop that is gone
        pass


async def _read_answer(reader: asyncio.StreamReader, method: str) -> Tuple[int, Dict[str, str], bytes, bool]:
    """Status, headers (lower-case names), body, and whether the server will close."""
    while True:
        line = await reader.readline()
        if not line:
            raise _Stale()
        parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise _BadAnswer(f"not an HTTP/1.1 status line: {line[:80]!r}")
        status = int(parts[1])
        headers: Dict[str, str] = {}
        for _ in range(HEADER_LINES_MAX):
            header = await reader.readline()
            if header in (b"\r\n", b"\n"):
                break
            if not header:
                raise _BadAnswer("the answer ended inside its headers")
            name, _, value = header.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        else:
            raise _BadAnswer(f"more than {HEADER_LINES_MAX} header lines")
        if status >= 200:
            break
        # 1xx interim answer: the real one follows.
    will_close = headers.get("connection", "").lower() == "close"
    if method == "HEAD" or status in (204, 304):
        return status, headers, b"", will_close
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        size_total = 0
        while True:
            size_line = await reader.readline()
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise _BadAnswer(f"bad chunk size {size_line[:40]!r}") from None
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            size_total += size
            if size_total > _core.ANSWER_BYTES_MAX:
                raise ProtocolError(f"answer larger than {_core.ANSWER_BYTES_MAX} bytes")
            chunks.append(await reader.readexactly(size))
            await reader.readline()
        return status, headers, b"".join(chunks), will_close
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise _BadAnswer("bad Content-Length") from None
        if length > _core.ANSWER_BYTES_MAX:
            raise ProtocolError(f"answer larger than {_core.ANSWER_BYTES_MAX} bytes")
        return status, headers, await reader.readexactly(length), will_close
    body = await reader.read(_core.ANSWER_BYTES_MAX + 1)
    if len(body) > _core.ANSWER_BYTES_MAX:
        raise ProtocolError(f"answer larger than {_core.ANSWER_BYTES_MAX} bytes")
    return status, headers, body, True


class _AsyncTransport:
    """Connections, fail-over and retries for one :class:`Settings`, on one event loop."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._idle: Dict[int, List[_Stream]] = {i: [] for i in range(len(settings.bases))}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self.preferred = 0

    def close(self) -> None:
        for idle in self._idle.values():
            for _, writer in idle:
                _close(writer)
            idle.clear()

    async def send(self, call: Call) -> Answer:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # Streams belong to the loop that opened them; one of an earlier asyncio.run is
            # dead. Forget them (closing needs their loop).
            self._idle = {i: [] for i in range(len(self.settings.bases))}
            self._loop = loop
        policy = _core.retry_policy_of(call, self.settings)
        attempt = 1
        while True:
            try:
                answer = await self._attempt(call)
                if answer.status < 300 or not answer.error().retryable:
                    return answer
                outcome: BatonError = answer.error()
            except Unavailable as error:
                outcome = error
            if len(self.settings.bases) > 1:
                self.preferred = (self.preferred + 1) % len(self.settings.bases)
            if attempt >= max(policy.attempts, 1):
                raise outcome
            await asyncio.sleep(policy.backoff(attempt))
            attempt += 1

    async def _attempt(self, call: Call) -> Answer:
        bases = self.settings.bases
        start = self.preferred
        failures: List[str] = []
        tls_failures: List[str] = []
        for offset in range(len(bases)):
            index = (start + offset) % len(bases)
            base = bases[index]
            for fresh in (call.fresh_connection, True):
                try:
                    stream, reused = await self._connection(index, call, fresh)
                except ssl.SSLError as error:
                    tls_failures.append(_core.tls_failure_message(base, error))
                    break
                except (OSError, asyncio.TimeoutError) as error:
                    failures.append(_core.connection_failure_message(
                        base, error if str(error) else Exception("connection timed out")))
                    break
                try:
                    answer = await self._exchange(index, stream, call, reused)
                except _Stale:
                    continue  # the kept-alive connection was closed: once more, fresh
                self.preferred = index
                return answer
        if tls_failures and not failures:
            raise TlsError("; ".join(tls_failures))
        raise Unavailable("cannot reach the baton server (" +
                          "; ".join(failures + tls_failures) + ")")

    async def _connection(self, index: int, call: Call, fresh: bool) -> Tuple[_Stream, bool]:
        idle = self._idle[index]
        while idle and not fresh:
            reader, writer = idle.pop()
            if reader.at_eof() or writer.is_closing():
                _close(writer)
                continue
            return (reader, writer), True
        base = self.settings.bases[index]
        timeout = min(_core.CONNECT_TIMEOUT, call.total_timeout(self.settings))
        if base.https:
            opening = asyncio.open_connection(base.host, base.port,
                                              ssl=self.settings.ssl_context,
                                              server_hostname=base.host)
        else:
            opening = asyncio.open_connection(base.host, base.port)
        return await asyncio.wait_for(opening, timeout), False

    async def _exchange(self, index: int, stream: _Stream, call: Call, reused: bool) -> Answer:
        reader, writer = stream
        base = self.settings.bases[index]
        url = base.url + call.path
        head = f"{call.method} {base.prefix}{call.path} HTTP/1.1\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in self.settings.headers(base, call.body).items()
        ) + "\r\n"
        sent_at = time.monotonic()
        try:
            writer.write(head.encode("latin-1") + (call.body or b""))
            status, headers, body, will_close = await asyncio.wait_for(
                self._drain_and_read(reader, writer, call.method),
                call.total_timeout(self.settings))
        except asyncio.TimeoutError:
            _close(writer)
            raise Unavailable(f"{url}: timed out") from None
        except (_Stale, ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
                asyncio.IncompleteReadError) as error:
            _close(writer)
            if reused and not isinstance(error, asyncio.IncompleteReadError):
                raise _Stale() from None
            raise Unavailable(f"{url}: the connection closed before an answer") from None
        except (OSError, ValueError, _BadAnswer) as error:
            # ValueError: a header line beyond the stream's limit.
            _close(writer)
            raise Unavailable(f"{url}: {error or type(error).__name__}") from None
        except BaseException:
            # Cancelled mid-request: the connection's state is unknown.
            _close(writer)
            raise
        if will_close or call.fresh_connection or len(self._idle[index]) >= IDLE_CONNECTIONS_MAX:
            _close(writer)
        else:
            self._idle[index].append((reader, writer))
        return Answer(status, body, url, sent_at, headers.get("retry-after"))

    @staticmethod
    async def _drain_and_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                              method: str) -> Tuple[int, Dict[str, str], bytes, bool]:
        await writer.drain()
        return await _read_answer(reader, method)


class AsyncClient:
    """The asyncio twin of :class:`baton.Client`: the same settings (``BATON_URL``,
    ``BATON_API_KEY``, ``BATON_CA_FILE``), the same calls as coroutines. Use it from one event
    loop at a time; ``async with AsyncClient() as client`` closes its connections."""

    def __init__(self, url: Union[str, Sequence[str], None] = None, *,
                 api_key: Optional[str] = None, ca_file: Optional[str] = None,
                 retry: Optional[RetryPolicy] = None, request_timeout: Optional[float] = None,
                 owner: Optional[str] = None):
        self.settings = Settings.resolve(url, api_key, ca_file, retry, request_timeout, owner)
        self._transport = _AsyncTransport(self.settings)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Closes the idle connections. The client stays usable."""
        self._transport.close()

    @property
    def base_urls(self) -> List[str]:
        return [base.url for base in self.settings.bases]

    @property
    def current_url(self) -> str:
        """The server tried first: the one that answered last."""
        return self.settings.bases[self._transport.preferred].url

    async def _send(self, call: Call) -> Answer:
        return await self._transport.send(call)

    # ----- locks and leases -------------------------------------------------------------------

    async def acquire(self, name: str, *, ttl: Optional[Number] = None, wait: Number = 0,
                      queue: bool = False, owner: Optional[str] = None,
                      owner_key: Optional[str] = None, capacity: Optional[int] = None,
                      request_id: Optional[str] = None) -> Union[Lease, Ticket]:
        """See :meth:`baton.Client.acquire`."""
        call = _core.acquire_call(name, owner or self.settings.owner, owner_key=owner_key,
                                  ttl=ttl, capacity=capacity, wait=wait, queue=queue,
                                  request_id=request_id or _core.generate_request_id())
        result = _core.lease_or_ticket(await self._send(call))
        return result.lease if isinstance(result, Granted) else result

    async def wait_ticket(self, ticket_id: str,
                          wait: Number = _core.LONG_POLL_MAX) -> Union[Lease, Ticket]:
        """See :meth:`baton.Client.wait_ticket`."""
        answer = await self._send(_core.wait_ticket_call(ticket_id, wait))
        result = _core.lease_or_ticket(answer)
        return result.lease if isinstance(result, Granted) else result

    async def cancel_ticket(self, ticket_id: str) -> CancelResult:
        """Leaves the queue (``DELETE /v1/tickets/{id}``)."""
        answer = await self._send(Call("DELETE", _core.id_path("tickets", ticket_id)))
        return CancelResult.from_json(_core.ok_json(answer))

    async def renew(self, lease_id: str, ttl: Optional[Number] = None) -> Lease:
        """See :meth:`baton.Client.renew`."""
        return (await self._renew(lease_id, ttl, None)).lease

    async def _renew(self, lease_id: str, ttl: Optional[Number],
                     retry: Optional[RetryPolicy], timeout: Optional[float] = None) -> Granted:
        body = {"ttl_ms": None if ttl is None else _core.millis(ttl)}
        answer = await self._send(_core.post(_core.id_path("leases", lease_id, "/renew"), body,
                                             retry=retry, timeout=timeout))
        result = _core.lease_or_ticket(answer)
        if not isinstance(result, Granted):
            raise answer.unexpected()
        return result

    async def release(self, lease_id: str) -> ReleaseResult:
        """See :meth:`baton.Client.release`."""
        answer = await self._send(_core.post(_core.id_path("leases", lease_id, "/release"), {}))
        return ReleaseResult.from_json(_core.ok_json(answer))

    async def wait_for_lease(self, name: str, *, ttl: Optional[Number] = None,
                             timeout: Optional[Number] = None, owner: Optional[str] = None,
                             owner_key: Optional[str] = None, capacity: Optional[int] = None,
                             request_id: Optional[str] = None,
                             poll: Number = _core.LONG_POLL_MAX) -> Granted:
        """See :meth:`baton.Client.wait_for_lease`. A cancelled wait (``task.cancel()``,
        ``asyncio.wait_for``) leaves the queue with ``DELETE`` before the cancel goes on."""
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
                result = _core.lease_or_ticket(await self._send(call))
            except BaseException as error:
                if not isinstance(error, BatonError) or isinstance(error, Unavailable):
                    await _finish(self._undo_acquire(call))
                raise
            if isinstance(result, Granted):
                return result
            ticket: Ticket = result
            try:
                granted = await self._wait_queued(name, ticket, left, poll, started)
            except BaseException:
                # Shielded: a cancelled waiter still leaves the queue.
                await _finish(self._abandon(ticket))
                raise
            if granted is not None:
                return granted
            request_id = _core.generate_request_id()
            if left() == 0.0:
                raise TimedOut(name, time.monotonic() - started)

    async def _wait_queued(self, name: str, ticket: Ticket,
                           left: Callable[[], Optional[float]], poll: float,
                           started: float) -> Optional[Granted]:
        outages = 0
        while True:
            remaining = left()
            if remaining == 0.0:
                raise TimedOut(name, time.monotonic() - started)
            wait = poll if remaining is None else min(poll, remaining)
            try:
                result = _core.lease_or_ticket(
                    await self._send(_core.wait_ticket_call(ticket.id, wait)))
            except Unavailable as error:
                outages += 1
                pause = _core.exponential_step(0.1, _core.TICKET_RETRY_PAUSE_MAX, outages)
                log.debug("server unavailable while queued for %s; retrying: %s", name, error)
                remaining = left()
                await asyncio.sleep(pause if remaining is None else min(pause, remaining))
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

    async def _undo_acquire(self, call: Call) -> None:
        """See :meth:`baton.Client._undo_acquire`."""
        replay = Call(call.method, call.path, call.body, retry=NO_RETRY,
                      timeout=_core.UNDO_TIMEOUT)
        try:
            result = _core.lease_or_ticket(await self._send(replay))
            if isinstance(result, Granted):
                await self.release(result.lease.id)
            else:
                await self._abandon(result)
        except BatonError as error:
            log.debug("cannot undo an unanswered acquire; it ends by itself: %s", error)

    async def _abandon(self, ticket: Ticket) -> None:
        try:
            result = await self.cancel_ticket(ticket.id)
        except BatonError as error:
            log.debug("cannot cancel the ticket for %s; it will lapse: %s", ticket.lock, error)
            return
        if not result.cancelled and result.reason == "already_granted":
            log.warning("gave up waiting for %s, but its lease was already collected; it "
                        "will expire", ticket.lock)

    def lock(self, name: str, ttl: Optional[Number] = None, *,
             timeout: Optional[Number] = None, owner: Optional[str] = None,
             owner_key: Optional[str] = None, capacity: Optional[int] = None,
             on_lost: Optional[AsyncOnLost] = None) -> "AsyncLockContext":
        """An async context manager that acquires ``name`` on entry, renews the lease in a
        background task and releases it on exit::

            async with client.lock("deploy", ttl=30) as lease:
                await deploy(fencing_token=lease.token)

        See :class:`AsyncLeaseGuard` for what happens when the lease is lost.
        """
        return AsyncLockContext(self, name, dict(ttl=ttl, timeout=timeout, owner=owner,
                                                 owner_key=owner_key, capacity=capacity),
                                on_lost)

    # ----- reading ----------------------------------------------------------------------------

    async def locks(self, *, after: Optional[str] = None,
                    limit: Optional[int] = None) -> List[LockInfo]:
        query = []
        if after is not None:
            query.append(f"after={_core.segment(after)}")
        if limit is not None:
            query.append(f"limit={int(limit)}")
        path = "/v1/locks" + ("?" + "&".join(query) if query else "")
        document = _core.ok_json(await self._send(Call("GET", path)))
        return [LockInfo.from_json(item) for item in _list_of(document, "locks")]

    async def lock_info(self, name: str) -> LockInfo:
        answer = await self._send(Call("GET", _core.lock_path(name)))
        return LockInfo.from_json(_core.ok_json(answer))

    async def history(self, name: str, limit: Optional[int] = None) -> History:
        path = _core.lock_path(name, "/history") + (f"?limit={int(limit)}" if limit else "")
        return History.from_json(_core.ok_json(await self._send(Call("GET", path))))

    async def fence(self, name: str, token: int) -> FenceResult:
        answer = await self._send(_core.post(_core.lock_path(name, "/fence"),
                                             {"token": int(token)}))
        return _core.fence_result(answer)

    async def revoke(self, name: str, token: int) -> RevokeResult:
        call = Call("POST", _core.lock_path(name, "/revoke"), _core.to_json({"token": int(token)}),
                    retry=NO_RETRY, fresh_connection=True)
        return RevokeResult.from_json(_core.ok_json(await self._send(call)))

    async def jobs(self, *, name: Optional[str] = None,
                   state: Union[str, Sequence[str], None] = None,
                   since: Union[datetime, str, None] = None,
                   until: Union[datetime, str, None] = None, batch: Optional[str] = None,
                   limit: Optional[int] = None) -> List[Job]:
        path = _core.jobs_path(name, state, since, until, batch, limit)
        document = _core.ok_json(await self._send(Call("GET", path)))
        return [Job.from_json(item) for item in _list_of(document, "jobs")]

    async def job(self, job_id: str) -> JobDetail:
        answer = await self._send(Call("GET", _core.id_path("jobs", job_id)))
        return JobDetail.from_json(_core.ok_json(answer))

    async def health(self) -> Health:
        return Health.from_json(_core.ok_json(await self._send(Call("GET", "/healthz"))))

    async def ready(self) -> Health:
        return Health.from_json(_core.ok_json(await self._send(Call("GET", "/readyz"))))


async def _finish(coroutine: Awaitable[Any]) -> Any:
    """Runs ``coroutine`` to its end even if the calling task is cancelled meanwhile (the
    cancel is re-raised after it)."""
    task = asyncio.ensure_future(coroutine)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


class AsyncLeaseGuard:
    """A held lease that a background task renews at a third of its ttl (see
    :class:`baton.LeaseGuard` for the local deadline).

    When the lease is lost: with ``on_lost``, the callback (a function or a coroutine
    function) is called once with the :class:`LeaseLost`; without it, the task running the
    ``async with`` block is cancelled and the block ends with :class:`LeaseLost`.
    """

    def __init__(self, client: AsyncClient, granted: Granted,
                 on_lost: Optional[AsyncOnLost] = None,
                 task: Optional["asyncio.Task[Any]"] = None):
        self._client = client
        self._on_lost = on_lost
        self._granted = granted
        self._lost_error: Optional[LeaseLost] = None
        self._lost_event = asyncio.Event()
        self._released: Optional[ReleaseResult] = None
        #: The task to cancel on loss (the one running the ``async with`` block).
        self._task = task
        self._cancelled_by_guard = False
        self.id = granted.lease.id
        self.token = granted.lease.token
        self.name = granted.lease.lock
        self._renewer: Optional["asyncio.Task[None]"] = asyncio.ensure_future(self._renew_loop())

    def __repr__(self) -> str:
        return f"AsyncLeaseGuard(lock={self.name!r}, token={self.token}, lost={self.lost})"

    @property
    def lease(self) -> Lease:
        return self._granted.lease

    @property
    def deadline(self) -> float:
        """The local deadline, by ``time.monotonic()``."""
        return self._granted.local_deadline

    @property
    def lost(self) -> bool:
        return self._lost_error is not None or (
            self._released is None and time.monotonic() >= self.deadline)

    @property
    def lost_error(self) -> Optional[LeaseLost]:
        if self._lost_error is None and self.lost:
            return LeaseLost("the lease could not be renewed before its deadline",
                             reason="deadline_exceeded")
        return self._lost_error

    def check(self) -> None:
        """Raises :class:`LeaseLost` if the lease is lost."""
        error = self.lost_error
        if error is not None:
            raise error

    async def wait_lost(self) -> LeaseLost:
        """Returns (does not raise) the :class:`LeaseLost` once the lease is lost."""
        await self._lost_event.wait()
        assert self._lost_error is not None
        return self._lost_error

    async def release(self) -> ReleaseResult:
        """Stops renewing and releases the lease; releasing twice returns the first answer."""
        if self._released is not None:
            return self._released
        self._stop_renewing()
        result = await self._client.release(self.id)
        self._released = result
        if not result.released and result.reason in ("expired", "revoked"):
            await self._lose(LeaseLost(
                f"the lease had ended before its release ({result.reason}); the section did "
                "not run fully protected", reason=result.reason), cancel=False)
        return result

    async def __aenter__(self) -> "AsyncLeaseGuard":
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        self._stop_renewing()
        # Our own cancel may still be pending and land on any await here: the release runs in
        # its own task, so it is never the one cut short.
        releasing = asyncio.ensure_future(self.release())
        try:
            await asyncio.shield(releasing)
        except asyncio.CancelledError:
            if not self._cancelled_by_guard:
                raise
            await asyncio.wait([releasing])
        except BatonError:
            pass
        if releasing.done() and not releasing.cancelled() and releasing.exception() is not None:
            log.warning("cannot release the lease of %s; it will expire: %s", self.name,
                        releasing.exception())
        if self._cancelled_by_guard:
            uncancel = getattr(self._task, "uncancel", None)
            if uncancel is not None:
                uncancel()
            assert self._lost_error is not None
            raise self._lost_error from (exc if isinstance(exc, asyncio.CancelledError) else None)
        if exc_type is None and self._on_lost is None and self.lost_error is not None:
            raise self.lost_error

    def _stop_renewing(self) -> None:
        renewer, self._renewer = self._renewer, None
        if renewer is not None and renewer is not asyncio.current_task():
            renewer.cancel()

    async def _lose(self, error: LeaseLost, cancel: bool = True) -> None:
        if self._lost_error is not None:
            return
        self._lost_error = error
        self._lost_event.set()
        log.warning("lease of %s lost: %s", self.name, error)
        if self._on_lost is not None:
            try:
                outcome = self._on_lost(error)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("on_lost callback of %s failed", self.name)
        elif cancel and self._task is not None and not self._task.done():
            self._cancelled_by_guard = True
            self._task.cancel()

    async def _renew_loop(self) -> None:
        failures = 0
        next_renewal = self._granted.renewal_instant
        while True:
            deadline = self.deadline
            await asyncio.sleep(max(0.0, min(next_renewal, deadline) - time.monotonic()))
            if time.monotonic() >= deadline:
                await self._lose(LeaseLost("the lease could not be renewed before its deadline",
                                           reason="deadline_exceeded"))
                return
            try:
                renewed = await self._client._renew(self.id, None, NO_RETRY,
                                                    timeout=deadline - time.monotonic())
            except LeaseLost as error:
                await self._lose(error)
                return
            except NotFound as error:
                await self._lose(LeaseLost(error.message, reason="expired", status=error.status))
                return
            except BatonError as error:
                failures += 1
                pause = _core.exponential_step(_core.RENEW_RETRY_PAUSE_INITIAL,
                                               _core.RENEW_RETRY_PAUSE_MAX, failures)
                log.warning("renewal of %s failed; retrying in %.1fs: %s", self.name, pause,
                            error)
                next_renewal = time.monotonic() + pause
                continue
            failures = 0
            self._granted = renewed
            next_renewal = renewed.renewal_instant


class AsyncLockContext:
    """What :meth:`AsyncClient.lock` returns: acquires on ``__aenter__``, releases on
    ``__aexit__``; :meth:`acquire` does the same without ``async with`` (then nothing is
    cancelled on loss: check :attr:`AsyncLeaseGuard.lost`)."""

    def __init__(self, client: AsyncClient, name: str, options: Dict[str, Any],
                 on_lost: Optional[AsyncOnLost], owns_client: bool = False):
        self._client = client
        self._name = name
        self._options = options
        self._on_lost = on_lost
        self._owns_client = owns_client
        self._guard: Optional[AsyncLeaseGuard] = None

    async def acquire(self, task: Optional["asyncio.Task[Any]"] = None) -> AsyncLeaseGuard:
        granted = await self._client.wait_for_lease(self._name, **self._options)
        return AsyncLeaseGuard(self._client, granted, self._on_lost, task)

    async def __aenter__(self) -> AsyncLeaseGuard:
        if self._guard is not None:
            raise InvalidInput("this lock context is already entered; call lock() again")
        try:
            self._guard = await self.acquire(asyncio.current_task())
        except BaseException:
            if self._owns_client:
                self._client.close()
            raise
        return self._guard

    async def __aexit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        guard, self._guard = self._guard, None
        try:
            if guard is not None:
                await guard.__aexit__(exc_type, exc, traceback)
        finally:
            if self._owns_client:
                self._client.close()
