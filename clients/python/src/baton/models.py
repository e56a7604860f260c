"""The wire types of the ``/v1`` API as Python dataclasses (``crates/baton-proto`` in Rust).

Times are timezone-aware ``datetime`` objects in UTC; durations keep the wire's whole
milliseconds in fields whose names end in ``_ms``. Fields a newer server adds are ignored, so
an older client keeps working. Every object keeps the decoded JSON it came from in ``raw``.

Lease and ticket ids appear only in :class:`Lease` and :class:`Ticket` (the holder's own
answers); listings (:class:`Holder`, :class:`Waiter`, :class:`HistoryEntry`) carry none (G8).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Optional

from .errors import ProtocolError

_TIMESTAMP = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|z|[+-]\d{2}:\d{2})$"
)


def parse_timestamp(text: Any) -> datetime:
    """An RFC 3339 timestamp as the server sends it (nanoseconds included) as a UTC datetime."""
    match = _TIMESTAMP.match(text) if isinstance(text, str) else None
    if match is None:
        raise ProtocolError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    fraction = (match.group(7) or "0")[:6].ljust(6, "0")
    offset = match.group(8)
    if offset in ("Z", "z"):
        zone = timezone.utc
    else:
        sign = -1 if offset[0] == "-" else 1
        zone = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
    moment = datetime(year, month, day, hour, minute, second, int(fraction), tzinfo=zone)
    return moment.astimezone(timezone.utc)


def _optional_timestamp(value: Any) -> Optional[datetime]:
    return None if value is None else parse_timestamp(value)


def _field(document: Dict[str, Any], name: str, kind: type) -> Any:
    value = document.get(name)
    # bool is an int in Python; the wire never sends one for a number.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"field {name!r} is missing or not a {kind.__name__}: {value!r}")
    return value


def _object(document: Any, what: str) -> Dict[str, Any]:
    if not isinstance(document, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    return document


@dataclass(frozen=True)
class Lease:
    """A granted lease, as its holder sees it."""

    #: The secret id: the only way to renew or release the lease. Keep it out of logs.
    id: str = field(repr=False)
    lock: str
    owner: str
    #: The fencing token: greater than every token granted before it by this store.
    token: int
    ttl_ms: int
    granted_at: datetime
    expires_at: datetime
    #: Milliseconds left when the server answered; the client counts its deadline from when it
    #: sent the request, never from the server's clock.
    expires_in_ms: int
    owner_key: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, document: Any) -> "Lease":
        document = _object(document, "lease")
        return cls(
            id=_field(document, "id", str),
            lock=_field(document, "lock", str),
            owner=_field(document, "owner", str),
            token=_field(document, "token", int),
            ttl_ms=_field(document, "ttl_ms", int),
            granted_at=parse_timestamp(document.get("granted_at")),
            expires_at=parse_timestamp(document.get("expires_at")),
            expires_in_ms=_field(document, "expires_in_ms", int),
            owner_key=document.get("owner_key"),
            raw=document,
        )


@dataclass(frozen=True)
class Ticket:
    """A place in a lock's FIFO queue, as its waiter sees it."""

    #: The secret id: the only way to wait on or cancel the ticket.
    id: str = field(repr=False)
    lock: str
    owner: str
    #: 1 for the head of the queue.
    position: int
    queued_at: datetime
    #: The ticket lapses unless a wait on it arrives within this many milliseconds.
    lapses_in_ms: int
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, document: Any) -> "Ticket":
        document = _object(document, "ticket")
        return cls(
            id=_field(document, "id", str),
            lock=_field(document, "lock", str),
            owner=_field(document, "owner", str),
            position=_field(document, "position", int),
            queued_at=parse_timestamp(document.get("queued_at")),
            lapses_in_ms=_field(document, "lapses_in_ms", int),
            raw=document,
        )


@dataclass(frozen=True)
class Holder:
    """A current holder of a lock, as listings show it (no lease id)."""

    owner: str
    token: int
    since: datetime
    expires_at: datetime
    #: The job it runs, when it is a ``baton run``.
    job: Optional[str] = None

    @classmethod
    def from_json(cls, document: Any) -> "Holder":
        document = _object(document, "holder")
        return cls(
            owner=_field(document, "owner", str),
            token=_field(document, "token", int),
            since=parse_timestamp(document.get("since")),
            expires_at=parse_timestamp(document.get("expires_at")),
            job=document.get("job"),
        )


@dataclass(frozen=True)
class Waiter:
    """A queued waiter, as listings show it (no ticket id)."""

    position: int
    owner: str
    since: datetime
    job: Optional[str] = None

    @classmethod
    def from_json(cls, document: Any) -> "Waiter":
        document = _object(document, "waiter")
        return cls(
            position=_field(document, "position", int),
            owner=_field(document, "owner", str),
            since=parse_timestamp(document.get("since")),
            job=document.get("job"),
        )


@dataclass(frozen=True)
class LockInfo:
    """One lock: its capacity, holders (oldest grant first) and waiters (queue order)."""

    name: str
    capacity: int
    holders: List[Holder]
    waiters: List[Waiter]
    #: The newest fencing token granted on, or accepted by a fence check for, this lock.
    newest_token: int
    #: After an unclean end the lock grants nothing until this time.
    delayed_until: Optional[datetime] = None

    @classmethod
    def from_json(cls, document: Any) -> "LockInfo":
        document = _object(document, "lock")
        return cls(
            name=_field(document, "name", str),
            capacity=_field(document, "capacity", int),
            holders=[Holder.from_json(item) for item in _field(document, "holders", list)],
            waiters=[Waiter.from_json(item) for item in _field(document, "waiters", list)],
            newest_token=_field(document, "newest_token", int),
            delayed_until=_optional_timestamp(document.get("delayed_until")),
        )


@dataclass(frozen=True)
class HistoryEntry:
    """One past hold of a lock."""

    owner: str
    token: int
    granted_at: datetime
    ended_at: datetime
    held_ms: int
    #: ``released``, ``expired`` or ``revoked``.
    end: str

    @classmethod
    def from_json(cls, document: Any) -> "HistoryEntry":
        document = _object(document, "history entry")
        return cls(
            owner=_field(document, "owner", str),
            token=_field(document, "token", int),
            granted_at=parse_timestamp(document.get("granted_at")),
            ended_at=parse_timestamp(document.get("ended_at")),
            held_ms=_field(document, "held_ms", int),
            end=_field(document, "end", str),
        )


@dataclass(frozen=True)
class History:
    """Past holds of a lock, newest first."""

    lock: str
    entries: List[HistoryEntry]

    @classmethod
    def from_json(cls, document: Any) -> "History":
        document = _object(document, "history")
        return cls(
            lock=_field(document, "lock", str),
            entries=[HistoryEntry.from_json(item) for item in _field(document, "entries", list)],
        )


@dataclass(frozen=True)
class ReleaseResult:
    """The answer to a release: ``released`` is False (with ``reason``: ``already_released``,
    ``expired`` or ``revoked``) when the lease had already ended."""

    released: bool
    reason: Optional[str] = None

    @classmethod
    def from_json(cls, document: Any) -> "ReleaseResult":
        document = _object(document, "release answer")
        return cls(released=_field(document, "released", bool), reason=document.get("reason"))


@dataclass(frozen=True)
class CancelResult:
    """The answer to leaving the queue: ``cancelled`` is False (with ``reason``:
    ``already_granted``, ``lapsed`` or ``cancelled``) when the ticket was no longer queued."""

    cancelled: bool
    reason: Optional[str] = None

    @classmethod
    def from_json(cls, document: Any) -> "CancelResult":
        document = _object(document, "cancel answer")
        return cls(cancelled=_field(document, "cancelled", bool), reason=document.get("reason"))


@dataclass(frozen=True)
class FenceResult:
    """A fence check: ``accepted`` when no newer token of the lock was seen; ``newest_token``
    is the newest one the server has seen."""

    accepted: bool
    newest_token: int


@dataclass(frozen=True)
class RevokeResult:
    """The lease an administrator revoked."""

    revoked: bool
    holder: Holder

    @classmethod
    def from_json(cls, document: Any) -> "RevokeResult":
        document = _object(document, "revoke answer")
        return cls(revoked=_field(document, "revoked", bool),
                   holder=Holder.from_json(document.get("holder")))


@dataclass(frozen=True)
class Health:
    """``/healthz`` and ``/readyz``: ``status`` is ``ok`` or what is wrong."""

    status: str
    version: str
    store: str
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, document: Any) -> "Health":
        document = _object(document, "health")
        return cls(status=_field(document, "status", str), version=_field(document, "version", str),
                   store=_field(document, "store", str), raw=document)


@dataclass(frozen=True)
class Job:
    """A job record: one run of a command under baton (``baton run``, ``baton parallel``)."""

    id: str
    name: str
    lock: str
    #: ``wait``, ``skip``, ``fail``, ``replace`` or ``coalesce``.
    policy: str
    owner: str
    command: List[str]
    #: ``queued``, ``waiting``, ``running``, ``succeeded``, ``failed``, ``cancelled``, ``lost``,
    #: ``timed_out``, ``skipped`` or ``coalesced``.
    state: str
    created_at: datetime
    output_bytes: int
    host: Optional[str] = None
    reason: Optional[str] = None
    token: Optional[int] = None
    exit_code: Optional[int] = None
    batch: Optional[str] = None
    coalesced_into: Optional[str] = None
    stop_requested: Optional[str] = None
    waiting_at: Optional[datetime] = None
    started_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None
    duration_ms: Optional[int] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    #: States a job never leaves.
    FINAL_STATES = frozenset(
        ["succeeded", "failed", "cancelled", "lost", "timed_out", "skipped", "coalesced"]
    )

    @property
    def finished(self) -> bool:
        """True once the job is in a final state."""
        return self.state in self.FINAL_STATES

    @classmethod
    def from_json(cls, document: Any) -> "Job":
        document = _object(document, "job")
        return cls(
            id=_field(document, "id", str),
            name=_field(document, "name", str),
            lock=_field(document, "lock", str),
            policy=_field(document, "policy", str),
            owner=_field(document, "owner", str),
            command=list(_field(document, "command", list)),
            state=_field(document, "state", str),
            created_at=parse_timestamp(document.get("created_at")),
            output_bytes=_field(document, "output_bytes", int),
            host=document.get("host"),
            reason=document.get("reason"),
            token=document.get("token"),
            exit_code=document.get("exit_code"),
            batch=document.get("batch"),
            coalesced_into=document.get("coalesced_into"),
            stop_requested=document.get("stop_requested"),
            waiting_at=_optional_timestamp(document.get("waiting_at")),
            started_at=_optional_timestamp(document.get("started_at")),
            finished_at=_optional_timestamp(document.get("finished_at")),
            duration_ms=document.get("duration_ms"),
            raw=document,
        )


@dataclass(frozen=True)
class JobDetail:
    """One job with the tail of its output."""

    job: Job
    output_tail: str

    @classmethod
    def from_json(cls, document: Any) -> "JobDetail":
        document = _object(document, "job detail")
        return cls(job=Job.from_json(document.get("job")),
                   output_tail=_field(document, "output_tail", str))
