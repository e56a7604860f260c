"""The asyncio client against a real ``baton server``. Each test runs its own event loop
(``asyncio.run``), so no pytest plugin is needed."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import List

import pytest

import baton
from conftest import Server, free_port


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, timeout=120))


def test_async_lock_renews_and_releases(server: Server, name: str):
    async def main() -> None:
        async with baton.AsyncClient(server.url) as client:
            async with client.lock(name, ttl=1) as lease:
                assert lease.token > 0 and lease.id.startswith("lease_")
                first_deadline = lease.deadline
                await asyncio.sleep(3.5)  # more than three ttls
                assert not lease.lost
                lease.check()
                assert lease.deadline > first_deadline
                info = await client.lock_info(name)
                assert [holder.token for holder in info.holders] == [lease.token]
            assert (await client.lock_info(name)).holders == []
            assert (await client.history(name)).entries[0].end == "released"

    run(main())


def test_async_tasks_never_overlap_on_a_shared_counter(server: Server, name: str):
    counter: List[int] = [0]

    async def work(client: baton.AsyncClient) -> None:
        for _ in range(5):
            async with client.lock(name, ttl=10):
                value = counter[0]
                await asyncio.sleep(0.005)  # a lost update shows if two hold at once
                counter[0] = value + 1

    async def main() -> None:
        clients = [baton.AsyncClient(server.url) for _ in range(4)]
        await asyncio.gather(*(work(client) for client in clients))
        for client in clients:
            client.close()

    run(main())
    assert counter[0] == 20


def test_async_waiters_are_granted_in_arrival_order(server: Server, name: str):
    async def main() -> List[str]:
        client = baton.AsyncClient(server.url)
        order: List[str] = []
        holder = await client.lock(name, ttl=10).acquire()

        async def wait(label: str) -> None:
            async with baton.AsyncClient(server.url).lock(name, ttl=10, owner=label):
                order.append(label)

        tasks = []
        for index in range(3):
            tasks.append(asyncio.ensure_future(wait(f"a{index}")))
            for _ in range(1000):
                if len((await client.lock_info(name)).waiters) == index + 1:
                    break
                await asyncio.sleep(0.02)
        assert (await holder.release()).released
        await asyncio.gather(*tasks)
        return order

    assert run(main()) == ["a0", "a1", "a2"]


def test_async_lease_lost_cancels_the_block_with_lease_lost(server: Server, name: str):
    async def main() -> baton.LeaseLost:
        client = baton.AsyncClient(server.url)
        started = time.monotonic()
        with pytest.raises(baton.LeaseLost) as raised:
            async with client.lock(name, ttl=1) as lease:
                await client.revoke(name, lease.token)
                await asyncio.sleep(60)  # cut short by the guard
        assert time.monotonic() - started < 30
        # The task is usable afterwards: the guard's cancel was taken back.
        await asyncio.sleep(0.01)
        return raised.value

    error = run(main())
    assert error.reason == "revoked"


def test_async_on_lost_coroutine_is_called_instead(server: Server, name: str):
    async def main() -> List[str]:
        client = baton.AsyncClient(server.url)
        seen: List[str] = []
        done = asyncio.Event()

        async def on_lost(error: baton.LeaseLost) -> None:
            seen.append(error.reason)
            done.set()

        async with client.lock(name, ttl=1, on_lost=on_lost) as lease:
            await client.revoke(name, lease.token)
            await asyncio.wait_for(done.wait(), timeout=10)
            assert lease.lost
        return seen

    assert run(main()) == ["revoked"]


def test_an_async_unreachable_server_loses_the_lease_by_its_deadline(start_server, name: str):
    own = start_server()

    async def main() -> baton.LeaseLost:
        client = baton.AsyncClient(own.url, retry=baton.RetryPolicy(attempts=1))
        with pytest.raises(baton.LeaseLost) as raised:
            async with client.lock(name, ttl=2) as lease:
                deadline = lease.deadline
                own.pause()  # a server that hangs: the renewal must not outlive the deadline
                try:
                    await asyncio.sleep(30)
                finally:
                    noticed = time.monotonic()
                    own.resume()
        # Close to the deadline, not a request timeout (10 s) later.
        assert deadline <= noticed < deadline + 3.0
        return raised.value

    assert run(main()).reason == "deadline_exceeded"


def test_a_cancelled_async_waiter_deletes_its_ticket(server: Server, name: str):
    async def main() -> None:
        client = baton.AsyncClient(server.url)
        async with client.lock(name, ttl=30):
            waiter = asyncio.ensure_future(baton.AsyncClient(server.url).wait_for_lease(name))
            for _ in range(1000):
                if (await client.lock_info(name)).waiters:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # well inside its long-poll
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            # Tickets lapse after 60 s here: an empty queue means the waiter said goodbye.
            assert (await client.lock_info(name)).waiters == []
            with pytest.raises(baton.TimedOut):
                await client.wait_for_lease(name, timeout=0.5)
            assert (await client.lock_info(name)).waiters == []
            with pytest.raises(baton.Busy):
                await client.wait_for_lease(name, timeout=0)

    run(main())


def test_async_fail_over_and_the_module_level_lock(server: Server, name: str):
    dead = f"http://127.0.0.1:{free_port()}"

    async def main() -> None:
        client = baton.AsyncClient([dead, server.url])
        async with client.lock(name, ttl=5) as lease:
            assert client.current_url == server.url
            assert lease.token > 0
        async with baton.lock(name, ttl=5, url=f"{dead},{server.url}") as lease:
            assert isinstance(lease, baton.AsyncLeaseGuard)
            first = lease.token
        fence = await client.fence(name, first - 1)
        assert not fence.accepted and fence.newest_token == first
        with pytest.raises(baton.Unavailable):
            await baton.AsyncClient(dead, retry=baton.RetryPolicy(attempts=1)).locks()

    run(main())


def test_async_small_calls_and_errors(server: Server, name: str):
    async def main() -> None:
        client = baton.AsyncClient(server.url)
        lease = await client.acquire(name, ttl=5, request_id="py-async-retry")
        again = await client.acquire(name, ttl=5, request_id="py-async-retry")
        assert isinstance(lease, baton.Lease) and isinstance(again, baton.Lease)
        assert (lease.id, lease.token) == (again.id, again.token)
        renewed = await client.renew(lease.id, ttl=6)
        assert renewed.ttl_ms == 6000 and renewed.token == lease.token
        ticket = await client.acquire(name, queue=True)
        assert isinstance(ticket, baton.Ticket)
        assert (await client.cancel_ticket(ticket.id)).cancelled
        assert (await client.release(lease.id)).released
        with pytest.raises(baton.LeaseLost):
            await client.renew(lease.id)
        with pytest.raises(baton.NotFound):
            await client.job("job_" + "0" * 32)
        assert isinstance(await client.jobs(name=name), list)
        assert (await client.health()).status == "ok"
        assert any(info.name == name for info in await client.locks())

    run(main())


def test_one_async_client_across_event_loops(server: Server, name: str):
    client = baton.AsyncClient(server.url)
    for _ in range(2):
        # Kept-alive connections of the first loop must not be reused in the second.
        assert run(client.health()).status == "ok"
