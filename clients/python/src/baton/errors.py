"""The client's exceptions, and the one place that turns an HTTP answer into one.

The classes are chosen by what the caller does next, like the Rust client's ``Error``: retry
later (:class:`Unavailable`), wait or give up (:class:`Busy`, :class:`TimedOut`), stop the
guarded work (:class:`LeaseLost`), fix the input (:class:`Rejected`, :class:`InvalidInput`), fix
the credentials (:class:`Unauthorized`, :class:`Forbidden`). Every exception keeps the server's
stable ``code`` and its ``message`` where the server sent them; match on ``code``, never on the
message.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple, Type

#: Every error code the server sends, with the HTTP status it travels with: the table of
#: ``ErrorCode`` in ``crates/baton-proto/src/lib.rs``. A test checks the two agree.
ERROR_CODES: Dict[str, int] = {
    "invalid_body": 400,
    "body_too_large": 413,
    "body_timeout": 408,
    "host_not_allowed": 403,
    "unsupported_media_type": 415,
    "invalid_name": 400,
    "invalid_owner": 400,
    "invalid_ttl": 400,
    "invalid_wait": 400,
    "invalid_capacity": 400,
    "invalid_value": 400,
    "invalid_lock_set": 400,
    "invalid_request_id": 400,
    "invalid_query": 400,
    "invalid_id": 400,
    "unknown_token": 400,
    "busy": 409,
    "capacity_conflict": 409,
    "mode_conflict": 409,
    "request_id_conflict": 409,
    "stale_token": 409,
    "lease_not_found": 404,
    "ticket_not_found": 404,
    "lock_not_found": 404,
    "holder_not_found": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "lease_lost": 410,
    "revoked": 410,
    "ticket_lapsed": 410,
    "ticket_cancelled": 410,
    "limit_reached": 503,
    "unavailable": 503,
    "not_active": 503,
    "job_not_found": 404,
    "unauthorized": 401,
    "forbidden": 403,
    "rate_limited": 429,
    "quota_exceeded": 429,
    "key_not_found": 404,
    "invalid_key": 400,
    "job_state_conflict": 409,
    "invalid_state": 400,
    "invalid_job": 400,
    "internal": 500,
}

#: How many characters of an answer that is not a baton error body are kept as the message.
RAW_MESSAGE_CHARS_MAX = 200


class BatonError(Exception):
    """Everything a call to a baton server can end with, other than success.

    ``code`` is the server's stable code (``busy``, ``lease_lost``, ``invalid_ttl``, ...) or a
    client-side one (``unavailable``, ``timed_out``, ``protocol``, ``tls``, ``invalid_input``,
    ``config``, ``deadline_exceeded``); ``status`` is the HTTP status when an answer came.
    """

    #: The code used when the server sent none.
    default_code = "error"

    def __init__(self, message: str, *, code: Optional[str] = None, status: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.status = status

    @property
    def retryable(self) -> bool:
        """True when the same request may succeed if sent again later."""
        return False


class Unavailable(BatonError):
    """No server could be reached, or it said it cannot serve now (503, 502-504, 429).

    Requests that are safe to repeat were already retried with backoff on every URL.
    """

    default_code = "unavailable"

    def __init__(self, message: str, *, code: Optional[str] = None, status: Optional[int] = None,
                 retry_after: Optional[float] = None):
        super().__init__(message, code=code, status=status)
        #: Seconds the server asked to wait (``Retry-After`` of a 429), if it said.
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return True


class RateLimited(Unavailable):
    """The API key made more requests per second than it may (429 ``rate_limited``)."""

    default_code = "rate_limited"


class QuotaExceeded(BatonError):
    """The API key already has as many leases, waiters, locks or jobs as its quota allows (429
    ``quota_exceeded``). Not retried: waiting does not lift a quota; release, cancel or finish
    something first, or ask for a larger quota. Other keys are not affected."""

    default_code = "quota_exceeded"

    def __init__(self, message: str, *, quota: Optional[str] = None, limit: Optional[int] = None,
                 code: Optional[str] = None, status: Optional[int] = None):
        super().__init__(message, code=code, status=status)
        #: Which quota: ``leases``, ``waiters``, ``locks`` or ``jobs`` (None if not said).
        self.quota = quota
        #: Its limit for this key (None if not said).
        self.limit = limit


class Busy(BatonError):
    """The lock is held to capacity (or has a queue) and the request did not wait (409 ``busy``)."""

    default_code = "busy"

    def __init__(self, message: str, *, holders: Optional[List[Dict[str, Any]]] = None,
                 code: Optional[str] = None, status: Optional[int] = None):
        super().__init__(message, code=code, status=status)
        #: Who holds the lock now, as the server listed them (``owner``, ``token``, ``since``,
        #: ``expires_at``): plain dictionaries.
        self.holders = holders or []


class TimedOut(BatonError):
    """The client waited as long as it was told to without being granted; it left the queue."""

    default_code = "timed_out"

    def __init__(self, lock: str, waited: float):
        super().__init__(f"timed out after {waited:.1f}s waiting for lock {lock}")
        self.lock = lock
        #: Seconds waited.
        self.waited = waited


class LeaseLost(BatonError):
    """The lease ended: whoever held it must stop the guarded work.

    ``reason`` is ``expired`` (the server answered ``lease_lost`` or no longer knows the lease),
    ``revoked`` (an administrator ended it), or ``deadline_exceeded`` (no renewal succeeded
    before the local deadline; the server may not have noticed yet).
    """

    default_code = "lease_lost"

    def __init__(self, message: str, *, reason: str = "expired", code: Optional[str] = None,
                 status: Optional[int] = None):
        super().__init__(message, code=code or _code_of_reason(reason), status=status)
        self.reason = reason

    @property
    def revoked(self) -> bool:
        """True when an administrator revoked the lease."""
        return self.reason == "revoked"


def _code_of_reason(reason: str) -> str:
    return {"revoked": "revoked", "deadline_exceeded": "deadline_exceeded"}.get(reason, "lease_lost")


class NotFound(BatonError):
    """The lease, ticket, lock, holder or job does not exist (404)."""

    default_code = "not_found"


class AuthError(BatonError):
    """The request lacks credentials, or they do not grant it (401, 403)."""


class Unauthorized(AuthError):
    """No API key was sent, or it is unknown or revoked (401): set ``BATON_API_KEY``."""

    default_code = "unauthorized"


class Forbidden(AuthError):
    """The API key does not grant this call on this lock (403)."""

    default_code = "forbidden"


class Rejected(BatonError):
    """The server refused the request as it is (any other 4xx); sending it again will not help."""


class ServerError(BatonError):
    """The server failed (5xx other than 502-504 and a 503 ``unavailable``)."""

    default_code = "internal"


class ProtocolError(BatonError):
    """An answer the client cannot understand: is the URL a baton server?"""

    default_code = "protocol"


class TlsError(BatonError):
    """The TLS handshake failed with every server (an untrusted certificate, a plain server)."""

    default_code = "tls"


class ConfigError(BatonError, ValueError):
    """The client's settings cannot work: a bad URL, an unreadable CA file, a bad API key."""

    default_code = "config"


class InvalidInput(BatonError, ValueError):
    """An argument the server could never accept (a bad lock name); no request was sent."""

    default_code = "invalid_input"


def error_from_response(url: str, status: int, body: bytes,
                        retry_after: Optional[str] = None) -> BatonError:
    """The exception for a non-2xx answer: by the server's code first, its status second.

    A body that is not a baton error (a proxy's page) still gives an exception by status.
    """
    parsed = _parse_error_body(body)
    if parsed is None:
        message = _raw_message(status, body)
        if 502 <= status <= 504:
            return Unavailable(message, status=status)
        if 500 <= status <= 599:
            return ServerError(message, code=f"http_{status}", status=status)
        return ProtocolError(f"{url}: HTTP {status} without an error body: {message}",
                             status=status)
    code, message, document = parsed
    if code == "busy":
        holders = document.get("holders")
        return Busy(message, holders=holders if isinstance(holders, list) else [], status=status)
    if code == "lease_lost":
        return LeaseLost(message, reason="expired", status=status)
    if code == "revoked":
        return LeaseLost(message, reason="revoked", status=status)
    if code == "quota_exceeded":
        # Before the 429 rule below: a quota is not a rate, and waiting does not lift it.
        detail = document.get("quota")
        detail = detail if isinstance(detail, dict) else {}
        name = detail.get("name")
        limit = detail.get("limit")
        return QuotaExceeded(message, quota=name if isinstance(name, str) else None,
                             limit=limit if isinstance(limit, int) else None, status=status)
    if code == "rate_limited" or status == 429:
        return RateLimited(message, code=code, status=status,
                           retry_after=_seconds(retry_after))
    # A body the server stopped waiting for was cut off on the way: worth another try.
    # A standby that knows no active server did nothing: another server may take it at once.
    if code in ("unavailable", "not_active", "limit_reached", "body_timeout") \
            or 502 <= status <= 504:
        return Unavailable(message, code=code, status=status)
    cls: Type[BatonError]
    if status == 401:
        cls = Unauthorized
    elif status == 403:
        cls = Forbidden
    elif status == 404:
        cls = NotFound
    elif 400 <= status <= 499:
        cls = Rejected
    else:
        cls = ServerError
    return cls(message, code=code, status=status)


def _parse_error_body(body: bytes) -> Optional[Tuple[str, str, Dict[str, Any]]]:
    """``(code, message, document)`` of a ``{"error": {"code", "message"}}`` body, else None."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(document, dict):
        return None
    error = document.get("error")
    if not isinstance(error, dict):
        return None
    code, message = error.get("code"), error.get("message")
    if not isinstance(code, str) or not isinstance(message, str):
        return None
    return code, message, document


def _raw_message(status: int, body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    if not text:
        return f"HTTP {status}"
    if len(text) > RAW_MESSAGE_CHARS_MAX:
        return text[:RAW_MESSAGE_CHARS_MAX] + "…"
    return text


def _seconds(text: Optional[str]) -> Optional[float]:
    if text is None:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        return None
