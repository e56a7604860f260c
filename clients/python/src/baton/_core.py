"""What the sync and asyncio clients share, without any I/O: settings, request building, answer
decoding, retry pauses and the lease deadline arithmetic (guarantee G6).

Each API call is a :class:`Call` (method, path, body, how long the server may hold it open,
whether it may be sent again) and a decoder of the :class:`Answer`; ``client.py`` and ``aio.py``
only move bytes.
"""

from __future__ import annotations

import getpass
import json
import os
import random
import secrets
import socket
import ssl
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import quote, urlsplit

from . import __version__
from .errors import (
    BatonError,
    ConfigError,
    InvalidInput,
    ProtocolError,
    error_from_response,
)
from .models import FenceResult, Lease, Ticket

#: The server address used when neither an argument nor ``BATON_URL`` names one.
DEFAULT_URL = "http://127.0.0.1:7878"

#: The longest ``wait_ms`` asked for in one long-poll, in seconds. The server caps waits at
#: 60 s; staying well below keeps each request clear of proxies' idle timeouts.
LONG_POLL_MAX = 30.0

#: How long a request may take beyond the time the server may hold it open.
REQUEST_TIMEOUT_DEFAULT = 10.0

#: How long a connection attempt to one server may take before the next one is tried.
CONNECT_TIMEOUT = 5.0

#: The largest answer body read; anything longer is a protocol error.
ANSWER_BYTES_MAX = 64 * 1024 * 1024

#: The fixed part of the drift margin (see :func:`drift_margin`).
DRIFT_MARGIN_FIXED = 0.1

#: The first pause after a failed renewal; it doubles after each further failure.
RENEW_RETRY_PAUSE_INITIAL = 0.2

#: The longest pause between renewal attempts while the server is unreachable.
RENEW_RETRY_PAUSE_MAX = 2.0

#: The longest pause between two ticket waits while the server is unreachable: well under a
#: ticket's lapse time (10 s by default), so the ticket survives a short outage.
TICKET_RETRY_PAUSE_MAX = 1.0

#: How long giving up an unanswered acquire may take (see ``Client._undo_acquire``).
UNDO_TIMEOUT = 5.0

#: Lease time-to-live bounds the server accepts, in seconds.
TTL_MIN, TTL_MAX = 0.5, 24 * 3600.0

#: The longest lock name, in characters.
LOCK_NAME_CHARS_MAX = 255

USER_AGENT = f"baton-python/{__version__}"

Number = Union[int, float]


@dataclass(frozen=True)
class RetryPolicy:
    """How often a request that failed with :class:`~baton.Unavailable` is sent again.

    ``attempts`` counts the first one; 1 disables retries. Pauses start at ``backoff_initial``
    seconds and double up to ``backoff_max``, each with "equal jitter" (between half and all of
    the step), so clients cut off by one outage do not come back in lockstep.
    """

    attempts: int = 5
    backoff_initial: float = 0.1
    backoff_max: float = 2.0

    def backoff(self, attempt: int) -> float:
        """The pause after failed attempt number ``attempt`` (1-based)."""
        step = exponential_step(self.backoff_initial, self.backoff_max, attempt)
        return step / 2 + random.uniform(0, step / 2)


#: Sends every request once.
NO_RETRY = RetryPolicy(attempts=1, backoff_initial=0.0, backoff_max=0.0)


def exponential_step(initial: float, maximum: float, attempt: int) -> float:
    """``initial * 2**(attempt-1)``, capped at ``maximum``."""
    return float(min(maximum, initial * (2 ** min(max(attempt - 1, 0), 31))))


def drift_margin(ttl: float) -> float:
    """How much earlier than the server the client gives up a lease of time-to-live ``ttl``
    seconds: 1% of it (clocks drift apart by far less) plus 100 ms, as the Rust client."""
    return ttl / 100 + DRIFT_MARGIN_FIXED


def local_deadline(sent_at: float, expires_in: float, ttl: float) -> float:
    """The monotonic instant after which a holder must assume its lease is gone: ``sent_at``
    (when the request that granted or renewed it was *sent*) + ``expires_in`` (as answered)
    less the :func:`drift_margin`. Never before ``sent_at``."""
    return sent_at + max(0.0, expires_in - drift_margin(ttl))


def renewal_instant(sent_at: float, expires_in: float, ttl: float) -> float:
    """When to renew: a third of the way to expiry, leaving two thirds for retries."""
    return sent_at + min(expires_in, ttl) / 3


def default_owner() -> str:
    """``HOST/USER/PID`` of this process: where a lease came from, for a person reading a list."""
    host = socket.gethostname() or "localhost"
    user = os.environ.get("USER") or os.environ.get("USERNAME") or os.environ.get("LOGNAME")
    if not user:
        try:
            user = getpass.getuser()
        except Exception:  # getuser raises several kinds when nothing names the user
            user = "unknown"
    return f"{host}/{user}/{os.getpid()}"


def generate_request_id() -> str:
    """A fresh request id: 128 random bits as 32 hex digits (G7)."""
    return secrets.token_hex(16)


def millis(seconds: Number) -> int:
    """Whole milliseconds of a duration in seconds, never negative."""
    return max(0, int(round(float(seconds) * 1000)))


def validate_lock_name(name: str) -> None:
    """Refuses a name the server could never accept, before any request (``InvalidInput``)."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("a lock name must be a non-empty string")
    if len(name) > LOCK_NAME_CHARS_MAX:
        raise InvalidInput(f"lock name is {len(name)} characters long; at most "
                           f"{LOCK_NAME_CHARS_MAX} are allowed")
    for char in name:
        if not (char.isascii() and (char.isalnum() or char in "._:/@-")):
            raise InvalidInput(f"lock name {name!r} contains {char!r}; only A-Z a-z 0-9 "
                               ". _ : / @ - are allowed")
    if name in (".", ".."):
        raise InvalidInput(f"{name!r} cannot be a lock name: URLs treat it as a folder step")


def segment(text: str) -> str:
    """Percent-encodes ``text`` as ONE path segment (``team-a/deploy`` → ``team-a%2Fdeploy``)."""
    return quote(text, safe="-._~")


def lock_path(name: str, suffix: str = "") -> str:
    validate_lock_name(name)
    return f"/v1/locks/{segment(name)}{suffix}"


def id_path(collection: str, identifier: str, suffix: str = "") -> str:
    if not isinstance(identifier, str) or identifier in ("", ".", ".."):
        raise InvalidInput(f"{identifier!r} is not an id of {collection}")
    return f"/v1/{collection}/{segment(identifier)}{suffix}"


@dataclass(frozen=True)
class Base:
    """One server: its URL without a trailing slash, split for connecting."""

    url: str
    https: bool
    host: str
    port: int
    #: The path prefix (``""`` normally; ``/baton`` behind a proxy that mounts it there).
    prefix: str


def parse_base_urls(urls: Union[str, Sequence[str]]) -> List[Base]:
    """Splits a comma-separated list (or a sequence) of base URLs and checks each."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    bases = []
    for item in (text.strip() for text in items):
        if not item:
            continue
        try:
            parts = urlsplit(item)
            port = parts.port
        except ValueError as error:
            raise ConfigError(f"server URL {item!r} is not a URL: {error}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"server URL {item!r}: expected http://HOST:PORT or "
                              "https://HOST:PORT")
        if parts.query or parts.fragment:
            raise ConfigError(f"server URL {item!r} must not have a query or fragment")
        https = parts.scheme == "https"
        bases.append(Base(
            url=item.rstrip("/"),
            https=https,
            host=parts.hostname,
            port=port or (443 if https else 80),
            prefix=parts.path.rstrip("/"),
        ))
    if not bases:
        raise ConfigError("no server URL given; set BATON_URL or pass url=")
    return bases


@dataclass
class Settings:
    """A client's settings, resolved from arguments and the environment."""

    bases: List[Base]
    #: ``Bearer KEY``, or None.
    authorization: Optional[str] = field(repr=False)
    #: The TLS context for ``https://`` servers (system roots plus the CA file).
    ssl_context: Optional[ssl.SSLContext]
    retry: RetryPolicy
    request_timeout: float
    owner: str

    @classmethod
    def resolve(cls, url: Union[str, Sequence[str], None], api_key: Optional[str],
                ca_file: Optional[str], retry: Optional[RetryPolicy],
                request_timeout: Optional[float], owner: Optional[str]) -> "Settings":
        """Arguments first, then ``BATON_URL``, ``BATON_API_KEY``, ``BATON_CA_FILE``."""
        if url is None:
            url = os.environ.get("BATON_URL") or DEFAULT_URL
        bases = parse_base_urls(url)
        if api_key is None:
            api_key = os.environ.get("BATON_API_KEY")
        authorization = None
        if api_key:
            if any(ord(char) < 0x21 or ord(char) > 0x7E for char in api_key):
                raise ConfigError("the API key contains characters that cannot travel in an "
                                  "HTTP header")
            authorization = f"Bearer {api_key}"
        if ca_file is None:
            ca_file = os.environ.get("BATON_CA_FILE") or None
        context = None
        if any(base.https for base in bases) or ca_file:
            context = ssl.create_default_context()
            if ca_file:
                try:
                    context.load_verify_locations(cafile=ca_file)
                except (OSError, ssl.SSLError) as error:
                    raise ConfigError(f"cannot use CA file {ca_file}: {error}") from None
        return cls(
            bases=bases,
            authorization=authorization,
            ssl_context=context,
            retry=retry if retry is not None else RetryPolicy(),
            request_timeout=REQUEST_TIMEOUT_DEFAULT if request_timeout is None
            else float(request_timeout),
            owner=owner or os.environ.get("BATON_OWNER") or default_owner(),
        )

    def headers(self, base: Base, body: Optional[bytes]) -> Dict[str, str]:
        """The request headers (``Host`` included) for one server."""
        default_port = 443 if base.https else 80
        host = base.host if ":" not in base.host else f"[{base.host}]"
        headers = {
            "Host": host if base.port == default_port else f"{host}:{base.port}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }
        if self.authorization:
            headers["Authorization"] = self.authorization
        if body is not None:
            headers["Content-Type"] = "application/json"
            headers["Content-Length"] = str(len(body))
        return headers


@dataclass(frozen=True)
class Call:
    """One HTTP request, ready to be sent to any server."""

    method: str
    #: The path after the base URL, query included.
    path: str
    body: Optional[bytes] = None
    #: Seconds the server may hold the request open, on top of the normal timeout.
    wait: float = 0.0
    #: None: the client's policy. Requests that are not safe to repeat pass ``NO_RETRY``.
    retry: Optional[RetryPolicy] = None
    #: Never send on a kept-alive connection: a request that must not be repeated cannot be
    #: retried after a stale connection fails, so it gets a fresh one.
    fresh_connection: bool = False
    #: Seconds the whole exchange may take, instead of the client's request timeout + ``wait``
    #: (a renewal must not outlive the lease's local deadline).
    timeout: Optional[float] = None

    def total_timeout(self, settings: "Settings") -> float:
        if self.timeout is not None:
            return max(0.001, self.timeout)
        return settings.request_timeout + self.wait


@dataclass(frozen=True)
class Answer:
    """An HTTP answer."""

    status: int
    body: bytes
    #: The full URL that answered, for messages.
    url: str
    #: When the answered request was sent, by ``time.monotonic()``.
    sent_at: float
    retry_after: Optional[str] = None

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise ProtocolError(f"{self.url}: cannot decode the answer ({self.status}): "
                                f"{error}") from None

    def error(self) -> BatonError:
        return error_from_response(self.url, self.status, self.body, self.retry_after)

    def unexpected(self) -> ProtocolError:
        return ProtocolError(f"{self.url}: unexpected status {self.status}", status=self.status)


def to_json(document: Dict[str, Any]) -> bytes:
    return json.dumps({key: value for key, value in document.items() if value is not None},
                      separators=(",", ":")).encode("utf-8")


def post(path: str, document: Dict[str, Any], wait: float = 0.0,
         retry: Optional[RetryPolicy] = None, timeout: Optional[float] = None) -> Call:
    return Call("POST", path, to_json(document), wait=wait, retry=retry, timeout=timeout)


@dataclass(frozen=True)
class Granted:
    """A lease with the monotonic instant its granting (or renewing) request was sent."""

    lease: Lease
    sent_at: float

    @property
    def local_deadline(self) -> float:
        return local_deadline(self.sent_at, self.lease.expires_in_ms / 1000,
                              self.lease.ttl_ms / 1000)

    @property
    def renewal_instant(self) -> float:
        return renewal_instant(self.sent_at, self.lease.expires_in_ms / 1000,
                               self.lease.ttl_ms / 1000)


def lease_or_ticket(answer: Answer) -> Union[Granted, Ticket]:
    """A 200 lease or a 202 ticket; anything else is the answer's error."""
    if answer.status == 200:
        document = answer.json()
        return Granted(Lease.from_json(document.get("lease") if isinstance(document, dict)
                                       else None), answer.sent_at)
    if answer.status == 202:
        document = answer.json()
        return Ticket.from_json(document.get("ticket") if isinstance(document, dict) else None)
    if answer.status >= 300:
        raise answer.error()
    raise answer.unexpected()


def ok_json(answer: Answer) -> Any:
    """The JSON of a 200 answer; anything else is the answer's error."""
    if answer.status == 200:
        return answer.json()
    if answer.status >= 300:
        raise answer.error()
    raise answer.unexpected()


def fence_result(answer: Answer) -> FenceResult:
    """A fence check's answer: a 409 ``stale_token`` is an answer (not accepted), not an error."""
    if answer.status == 200:
        document = answer.json()
        if isinstance(document, dict) and isinstance(document.get("newest_token"), int):
            return FenceResult(accepted=bool(document.get("accepted")),
                               newest_token=document["newest_token"])
        raise ProtocolError(f"{answer.url}: fence answer without newest_token")
    error = answer.error()
    if error.code == "stale_token":
        try:
            newest = json.loads(answer.body.decode("utf-8")).get("newest_token")
        except (UnicodeDecodeError, ValueError, AttributeError):
            newest = None
        if isinstance(newest, int):
            return FenceResult(accepted=False, newest_token=newest)
        raise ProtocolError(f"{answer.url}: stale_token answer without newest_token")
    raise error


def acquire_call(name: str, owner: str, *, owner_key: Optional[str], ttl: Optional[Number],
                 capacity: Optional[int], wait: Number, queue: bool,
                 request_id: str) -> Call:
    """``POST /v1/locks/{name}/acquire``, always with a request id (G7: safe to repeat)."""
    if ttl is not None and not (TTL_MIN <= float(ttl) <= TTL_MAX):
        raise InvalidInput(f"ttl {ttl!r}s is outside {TTL_MIN}s..{TTL_MAX:.0f}s")
    return post(lock_path(name, "/acquire"), {
        "owner": owner,
        "owner_key": owner_key,
        "ttl_ms": None if ttl is None else millis(ttl),
        "capacity": capacity,
        "wait_ms": millis(wait),
        "queue": queue,
        "request_id": request_id,
    }, wait=float(wait))


def wait_ticket_call(ticket_id: str, wait: Number) -> Call:
    return post(id_path("tickets", ticket_id, "/wait"), {"wait_ms": millis(wait)},
                wait=float(wait))


def jobs_path(name: Optional[str], state: Union[str, Sequence[str], None],
              since: Union[datetime, str, None], until: Union[datetime, str, None],
              batch: Optional[str], limit: Optional[int]) -> str:
    """``/v1/jobs?...`` with the filters given."""
    pairs: List[Tuple[str, str]] = []
    if name is not None:
        pairs.append(("name", name))
    if state is not None:
        pairs.append(("state", state if isinstance(state, str) else ",".join(state)))
    for key, moment in (("since", since), ("until", until)):
        if moment is not None:
            pairs.append((key, moment if isinstance(moment, str) else _rfc3339(moment)))
    if batch is not None:
        pairs.append(("batch", batch))
    if limit is not None:
        pairs.append(("limit", str(int(limit))))
    query = "&".join(f"{key}={segment(value)}" for key, value in pairs)
    return "/v1/jobs" + (f"?{query}" if query else "")


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise InvalidInput("since/until must be timezone-aware datetimes")
    return moment.isoformat()


def retry_policy_of(call: Call, settings: Settings) -> RetryPolicy:
    return call.retry if call.retry is not None else settings.retry


def connection_failure_message(base: Base, error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return f"{base.url}: {text}"


def tls_failure_message(base: Base, error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return (f"{base.url}: the server's TLS certificate is not trusted "
                f"({error.verify_message or error}); if a private CA signed it, pass "
                "ca_file= or set BATON_CA_FILE")
    return (f"{base.url}: TLS handshake failed ({error}); is the server serving https? For a "
            "plain server use an http:// URL")
