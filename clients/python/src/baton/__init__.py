"""Python client for baton: locks and semaphores across machines, with leases that renew in the
background, fencing tokens and fair FIFO queues.

::

    import baton

    with baton.lock("deploy", ttl=30) as lease:      # queues, waits, renews, releases
        deploy(fencing_token=lease.token)

    async with baton.lock("deploy", ttl=30) as lease:  # the same, on asyncio
        await deploy(fencing_token=lease.token)

Settings come from arguments or the environment: ``BATON_URL`` (comma-separated for
fail-over), ``BATON_API_KEY``, ``BATON_CA_FILE``, ``BATON_OWNER``. Standard library only.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import Any, Dict, Optional, Sequence, Union

from ._core import DEFAULT_URL, LONG_POLL_MAX, NO_RETRY, Granted, RetryPolicy, local_deadline
from .aio import AsyncClient, AsyncLeaseGuard, AsyncLockContext, AsyncOnLost
from .client import Client, LeaseGuard, LockContext, OnLost
from .errors import (
    ERROR_CODES,
    AuthError,
    BatonError,
    Busy,
    ConfigError,
    Forbidden,
    InvalidInput,
    LeaseLost,
    NotFound,
    ProtocolError,
    QuotaExceeded,
    RateLimited,
    Rejected,
    ServerError,
    TimedOut,
    TlsError,
    Unauthorized,
    Unavailable,
)
from .models import (
    CancelResult,
    FenceResult,
    Health,
    History,
    HistoryEntry,
    Holder,
    Job,
    JobDetail,
    Lease,
    LockInfo,
    ReleaseResult,
    RevokeResult,
    Ticket,
    Waiter,
)

__all__ = [
    "AsyncClient", "AsyncLeaseGuard", "AsyncLockContext", "AuthError", "BatonError", "Busy",
    "CancelResult", "Client", "ConfigError", "DEFAULT_URL", "ERROR_CODES", "FenceResult",
    "Forbidden", "Granted", "Health", "History", "HistoryEntry", "Holder", "InvalidInput",
    "Job", "JobDetail", "LONG_POLL_MAX", "Lease", "LeaseGuard", "LeaseLost", "Lock",
    "LockContext", "LockInfo", "NO_RETRY", "NotFound", "ProtocolError", "QuotaExceeded", "RateLimited",
    "Rejected", "ReleaseResult", "RetryPolicy", "RevokeResult", "ServerError", "Ticket",
    "TimedOut", "TlsError", "Unauthorized", "Unavailable", "Waiter", "local_deadline", "lock",
]


class Lock:
    """What :func:`lock` returns: usable with ``with`` (a blocking :class:`Client`) and with
    ``async with`` (an :class:`AsyncClient`), each made for this one hold and closed after."""

    def __init__(self, name: str, ttl: Optional[float], options: Dict[str, Any],
                 client_options: Dict[str, Any], on_lost: Any):
        self._name = name
        self._ttl = ttl
        self._options = options
        self._client_options = client_options
        self._on_lost = on_lost
        self._sync: Optional[LockContext] = None
        self._async: Optional[AsyncLockContext] = None

    def __enter__(self) -> LeaseGuard:
        client = Client(**self._client_options)
        self._sync = LockContext(client, self._name, dict(self._options, ttl=self._ttl),
                                 self._on_lost, owns_client=True)
        return self._sync.__enter__()

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        context, self._sync = self._sync, None
        if context is not None:
            context.__exit__(exc_type, exc, traceback)

    async def __aenter__(self) -> AsyncLeaseGuard:
        client = AsyncClient(**self._client_options)
        self._async = AsyncLockContext(client, self._name, dict(self._options, ttl=self._ttl),
                                       self._on_lost, owns_client=True)
        return await self._async.__aenter__()

    async def __aexit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        context, self._async = self._async, None
        if context is not None:
            await context.__aexit__(exc_type, exc, traceback)


def lock(name: str, ttl: Optional[float] = None, *, timeout: Optional[float] = None,
         owner: Optional[str] = None, owner_key: Optional[str] = None,
         capacity: Optional[int] = None, on_lost: Any = None,
         url: Union[str, Sequence[str], None] = None, api_key: Optional[str] = None,
         ca_file: Optional[str] = None) -> Lock:
    """Holds lock ``name`` for a ``with`` or ``async with`` block.

    Entering queues in the lock's FIFO queue and long-polls until granted (``timeout``
    seconds at most, then :class:`TimedOut`; None waits forever; 0 tries once and raises
    :class:`Busy`). While the block runs, the lease is renewed at a third of ``ttl`` (seconds;
    the server's default, 30 s, when None). Leaving releases it. If the lease is lost,
    ``on_lost(error)`` is called, or without it the block ends with :class:`LeaseLost` (sync:
    when the block exits, or at :meth:`LeaseGuard.check`; asyncio: at once, by cancelling the
    block's task). The guard gives ``lease.token`` (fencing token) and ``lease.id``.
    """
    return Lock(name, ttl,
                dict(timeout=timeout, owner=owner, owner_key=owner_key, capacity=capacity),
                dict(url=url, api_key=api_key, ca_file=ca_file), on_lost)
